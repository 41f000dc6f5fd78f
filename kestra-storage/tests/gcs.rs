//! ObjectStorage on Google Cloud Storage (fake-gcs-server started by `scripts/services/storage.sh`): the
//! storage conformance suite, multipart uploads, key layout, traversal matrix and missing bucket.
//! fake-gcs-server does not check credentials, so refused credentials are tested on S3 and Azure only.
//! Needs `KESTRA_TEST_GCS_ENDPOINT` (+ `_BUCKET`); skipped loudly without it, a failure under `CI=true`.
#![cfg(feature = "gcs")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use kestra_storage::object::{GcsConfig, ObjectStorage};

fn config() -> Option<GcsConfig> {
    let endpoint = common::service_var("KESTRA_TEST_GCS_ENDPOINT")?;
    Some(GcsConfig {
        bucket: std::env::var("KESTRA_TEST_GCS_BUCKET").unwrap_or_else(|_| "kestra-test".into()),
        endpoint: Some(endpoint),
        anonymous: true,
        options: common::options(),
        ..GcsConfig::default()
    })
}

async fn store() -> Option<(ObjectStorage, String)> {
    let config = config()?;
    let prefix = config.options.prefix.clone().expect("a test prefix");
    let storage = config
        .connect()
        .await
        .expect("connect to the GCS test bucket");
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

/// Real GCS answers a listing of a missing bucket with 404 (`MissingBucket`, as S3 and Azure are
/// tested); fake-gcs-server answers 500 "no bucket named ...", so here `connect` must fail, after its
/// retries, with an error naming the bucket.
#[tokio::test]
async fn a_missing_bucket_fails_connect() {
    let Some(mut config) = config() else { return };
    config.bucket = format!("kestra-missing-{}", uuid::Uuid::new_v4().simple());
    config.options.max_retries = 0;
    let bucket = config.bucket.clone();
    match config.connect().await {
        Err(e) => assert!(
            e.to_string().contains(&bucket),
            "the error names the bucket: {e}"
        ),
        Ok(storage) => panic!("connect to a missing bucket succeeded: {storage:?}"),
    }
}

#[tokio::test]
async fn an_unparsable_service_account_is_a_clear_error() {
    let Some(mut config) = config() else { return };
    config.anonymous = false;
    config.service_account = Some("{not json".into());
    let error = config
        .build()
        .expect_err("a broken service account key is refused");
    assert!(error.to_string().contains("GCS bucket"), "{error}");
}
