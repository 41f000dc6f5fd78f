//! ObjectStorage on S3 (MinIO started by `scripts/services/storage.sh`): the storage conformance suite,
//! multipart uploads, key layout, traversal matrix, missing bucket and refused credentials.
//! Needs `KESTRA_TEST_S3_ENDPOINT` (+ `_BUCKET`, `_ACCESS_KEY`, `_SECRET_KEY`); skipped loudly without it,
//! a failure under `CI=true`.
#![cfg(feature = "s3")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use kestra_storage::object::{ObjectStorage, S3Config};

fn config() -> Option<S3Config> {
    let endpoint = common::service_var("KESTRA_TEST_S3_ENDPOINT")?;
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    Some(S3Config {
        bucket: var("KESTRA_TEST_S3_BUCKET").unwrap_or_else(|| "kestra-test".into()),
        region: var("KESTRA_TEST_S3_REGION"),
        endpoint: Some(endpoint),
        access_key: var("KESTRA_TEST_S3_ACCESS_KEY"),
        secret_key: var("KESTRA_TEST_S3_SECRET_KEY").map(Into::into),
        options: common::options(),
        ..S3Config::default()
    })
}

async fn store() -> Option<(ObjectStorage, String)> {
    let config = config()?;
    let prefix = config.options.prefix.clone().expect("a test prefix");
    let storage = config
        .connect()
        .await
        .expect("connect to the S3 test bucket");
    Some((storage, prefix))
}

object_store_tests!(
    put_get_round_trip,
    large_file_streams_both_ways,
    put_replaces,
    failed_put_is_invisible,
    size_exists_delete,
    missing_is_not_found,
    list_direct_children,
    delete_prefix_is_scoped,
    tenants_are_isolated,
    invalid_tenants_are_refused,
    traversal_is_refused,
    attributes_of_files_and_directories,
    move_file_moves,
);

#[tokio::test]
async fn a_missing_bucket_is_reported_at_connect() {
    let Some(mut config) = config() else { return };
    config.bucket = format!("kestra-missing-{}", uuid::Uuid::new_v4().simple());
    let bucket = config.bucket.clone();
    common::assert_missing_bucket(config.connect().await, &bucket);
}

#[tokio::test]
async fn refused_credentials_are_reported_at_connect() {
    let Some(mut config) = config() else { return };
    config.secret_key = Some("not-the-secret-key".into());
    common::assert_bad_credentials(config.connect().await);
    let Some(mut config) = self::config() else {
        return;
    };
    config.access_key = Some("no-such-access-key".into());
    common::assert_bad_credentials(config.connect().await);
}

#[tokio::test]
async fn half_given_credentials_are_a_configuration_error() {
    let Some(mut config) = config() else { return };
    config.secret_key = None;
    let error = config
        .build()
        .expect_err("an access key without a secret is refused");
    assert!(
        error.to_string().contains("secretKey is set")
            || error.to_string().contains("secretKey is not"),
        "{error}"
    );
}

/// A put whose credentials are refused is reported as refused, after the one more ask a refused put
/// gets (`ObjectStorage` asks again because of MinIO's emptied-directory race).
#[tokio::test]
async fn a_refused_put_is_reported_as_refused_credentials() {
    use kestra_core::storage::InternalStorageExt;
    let Some(mut config) = config() else { return };
    config.secret_key = Some("not-the-secret-key".into());
    let storage = config.build().expect("building makes no request");
    let error = storage
        .put_bytes(
            "main",
            &common::p("refused/file.txt"),
            bytes::Bytes::from_static(b"x"),
        )
        .await
        .expect_err("a put with a wrong secret is refused");
    assert!(
        error.to_string().contains("refused the credentials"),
        "{error}"
    );
}
