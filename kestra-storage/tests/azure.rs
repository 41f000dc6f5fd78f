//! ObjectStorage on Azure Blob Storage (Azurite started by `scripts/services/storage.sh`): the storage
//! conformance suite, multipart (block list) uploads, key layout, traversal matrix, missing container
//! and refused credentials, with a shared key and with a connection string.
//! Needs `KESTRA_TEST_AZURE_ENDPOINT` (+ `_CONTAINER`, `_ACCOUNT`, `_ACCESS_KEY`); skipped loudly
//! without it, a failure under `CI=true`.
#![cfg(feature = "azure")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use kestra_storage::object::{AzureConfig, ObjectStorage};

fn config() -> Option<AzureConfig> {
    let endpoint = common::service_var("KESTRA_TEST_AZURE_ENDPOINT")?;
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    Some(AzureConfig {
        container: var("KESTRA_TEST_AZURE_CONTAINER").unwrap_or_else(|| "kestra-test".into()),
        endpoint: Some(endpoint),
        shared_key_account_name: var("KESTRA_TEST_AZURE_ACCOUNT"),
        shared_key_account_access_key: var("KESTRA_TEST_AZURE_ACCESS_KEY").map(Into::into),
        options: common::options(),
        ..AzureConfig::default()
    })
}

async fn store() -> Option<(ObjectStorage, String)> {
    let config = config()?;
    let prefix = config.options.prefix.clone().expect("a test prefix");
    let storage = config
        .connect()
        .await
        .expect("connect to the Azure test container");
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
async fn a_connection_string_works_like_a_shared_key() {
    let Some(config) = config() else { return };
    let connection = format!(
        "DefaultEndpointsProtocol=http;AccountName={};AccountKey={};BlobEndpoint={};",
        config.shared_key_account_name.clone().expect("account"),
        config.shared_key_account_access_key.clone().expect("key").0,
        config.endpoint.clone().expect("endpoint"),
    );
    let by_connection = AzureConfig {
        container: config.container.clone(),
        connection_string: Some(connection.into()),
        options: common::options(),
        ..AzureConfig::default()
    }
    .connect()
    .await
    .expect("connect with a connection string");
    kestra_core::testkit::storage::put_get_round_trip(&by_connection).await;
}

#[tokio::test]
async fn a_missing_container_is_reported_at_connect() {
    let Some(mut config) = config() else { return };
    config.container = format!("kestra-missing-{}", uuid::Uuid::new_v4().simple());
    let container = config.container.clone();
    common::assert_missing_bucket(config.connect().await, &container);
}

#[tokio::test]
async fn refused_credentials_are_reported_at_connect() {
    let Some(mut config) = config() else { return };
    // A well-formed key that is not the account's.
    config.shared_key_account_access_key =
        Some("bm90LXRoZS1hY2NvdW50LWtleS1ub3QtdGhlLWFjY291bnQta2V5LTEyMzQ=".into());
    common::assert_bad_credentials(config.connect().await);
}
