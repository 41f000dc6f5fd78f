//! Shared tests of the object stores (S3 on MinIO, GCS on fake-gcs-server, Azure Blob on Azurite): the
//! storage conformance suite plus the object-store-only rules (multipart uploads, key layout, missing
//! bucket, refused credentials). Each test file defines `config(options) -> Option<Config>` and calls
//! [`object_store_tests!`].
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use futures::StreamExt;
use kestra_core::storage::{
    ByteStream, InternalStorage, InternalStorageExt, StorageError, StoragePath,
};
use kestra_storage::object::object_store::ObjectStoreExt;
use kestra_storage::object::object_store::path::Path as ObjectPath;
use kestra_storage::object::{ObjectOptions, ObjectStorage, ObjectStorageError};

/// The value of a service variable; `None` (with a loud message) when unset, a panic under `CI=true`.
pub fn service_var(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(value) if !value.is_empty() => Some(value),
        _ => {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(
                !ci,
                "{var} is not set under CI=true: run `eval \"$(scripts/services.sh)\"` first"
            );
            eprintln!(
                "\n!!!!! SKIPPED: {var} is not set; run `eval \"$(scripts/services.sh)\"` to test this object store !!!!!\n"
            );
            None
        }
    }
}

/// Options of a test store: its own prefix `test-<uuid>`, 5 MiB parts (so the suite's 5 MiB + 12 KiB
/// file is a multipart upload), few retries so that a failure shows quickly.
pub fn options() -> ObjectOptions {
    ObjectOptions {
        prefix: Some(format!("test-{}", uuid::Uuid::new_v4().simple())),
        part_size: 5 * 1024 * 1024,
        max_retries: 2,
        ..ObjectOptions::default()
    }
}

pub fn p(s: &str) -> StoragePath {
    StoragePath::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn pseudo_random(len: usize, mut state: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A file of three parts and a bit (multipart with a short last part) reads back identical, and the
/// byte count is right.
pub async fn multipart_round_trip(storage: &ObjectStorage) {
    let data = pseudo_random(3 * 5 * 1024 * 1024 + 4321, 42);
    let path = p("multipart/big.bin");
    let chunks: Vec<Result<Bytes, StorageError>> = data
        .chunks(1024 * 1024 + 7)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let written = storage
        .put("main", &path, futures::stream::iter(chunks).boxed())
        .await
        .expect("multipart put");
    assert_eq!(written, data.len() as u64);
    assert_eq!(
        storage.size("main", &path).await.ok(),
        Some(data.len() as u64)
    );
    let back = storage.get_bytes("main", &path).await.expect("get");
    assert!(back == data, "the multipart file read back differs");
    assert_eq!(
        storage.delete_prefix("main", &p("multipart")).await.ok(),
        Some(1)
    );
}

/// A multipart `put` whose input fails after more than a part keeps the previous content, and a
/// fresh one leaves nothing.
pub async fn failed_multipart_put_is_invisible(storage: &ObjectStorage) {
    let failing = |uri: String| -> ByteStream {
        let part = Bytes::from(vec![7u8; 3 * 1024 * 1024]);
        futures::stream::iter(vec![
            Ok(part.clone()),
            Ok(part.clone()),
            Ok(part),
            Err(StorageError::Backend {
                operation: "produce input",
                uri,
                source: "the producer failed".into(),
            }),
        ])
        .boxed()
    };
    let existing = p("failed-multipart/existing.bin");
    storage
        .put_bytes("main", &existing, Bytes::from_static(b"previous"))
        .await
        .expect("put");
    let result = storage
        .put("main", &existing, failing(existing.to_uri()))
        .await;
    assert!(result.is_err(), "the put must fail, got {result:?}");
    assert_eq!(
        storage.get_bytes("main", &existing).await.expect("get"),
        &b"previous"[..],
        "a failed multipart put keeps the previous content"
    );
    let fresh = p("failed-multipart/fresh.bin");
    assert!(
        storage
            .put("main", &fresh, failing(fresh.to_uri()))
            .await
            .is_err()
    );
    assert_eq!(storage.exists("main", &fresh).await.ok(), Some(false));
    assert_eq!(
        storage
            .delete_prefix("main", &p("failed-multipart"))
            .await
            .ok(),
        Some(1)
    );
}

/// Keys are `<prefix>/<tenant>/<path>`, percent-encoding only what object stores advise against, and
/// nothing is written outside `<prefix>/<tenant>/` whatever the (legal) names.
pub async fn keys_live_under_prefix_and_tenant(storage: &ObjectStorage, prefix: &str) {
    let names = [
        "plain.txt",
        "données/été ✓.csv",
        "a%b",
        "...",
        "x#y?z",
        "[br]{ce}",
    ];
    for name in names {
        let path = p("layout").join(&name.replace('%', "%25")).expect("path");
        storage
            .put_bytes("main", &path, Bytes::from(name.as_bytes().to_vec()))
            .await
            .unwrap_or_else(|e| panic!("put {name}: {e}"));
        assert_eq!(
            storage.get_bytes("main", &path).await.expect("get"),
            name.as_bytes()
        );
    }
    let raw = storage.object_store();
    raw.head(&ObjectPath::from(
        format!("{prefix}/main/layout/plain.txt").as_str(),
    ))
    .await
    .expect("the object is at <prefix>/<tenant>/<path>");
    let keys: Vec<String> = raw
        .list(Some(&ObjectPath::from(prefix)))
        .map(|m| m.expect("raw listing").location.to_string())
        .collect()
        .await;
    assert_eq!(keys.len(), names.len(), "one object per file: {keys:?}");
    for key in &keys {
        assert!(
            key.starts_with(&format!("{prefix}/main/layout/")),
            "{key} must lie under {prefix}/main/layout/"
        );
    }
    let mut listed: Vec<String> = storage
        .list("main", &p("layout"))
        .await
        .expect("list")
        .into_iter()
        .map(|e| e.path.as_str().trim_start_matches("layout/").to_string())
        .collect();
    listed.sort();
    let mut expected = vec!["plain.txt", "données", "a%b", "...", "x#y?z", "[br]{ce}"];
    expected.sort();
    assert_eq!(
        listed, expected,
        "listing decodes the keys back to the names"
    );
    assert_eq!(
        storage.delete_prefix("main", &p("layout")).await.ok(),
        Some(names.len() as u64)
    );
}

/// The traversal matrix: none of these can become a path, so none reaches the store; legal odd
/// names stay inside the tenant.
pub async fn traversal_matrix_is_refused(storage: &ObjectStorage) {
    for raw in [
        "../x",
        "a/../../x",
        "%2E%2E/x",
        "a/%2e%2e/%2e%2e/x",
        "%252E%252E/x",
        "..\\x",
        "a\\..\\..\\x",
        "kestra:///../../etc/passwd",
        "file:///etc/passwd",
        "s3://other-bucket/key",
        "a/\0b",
        "a/%00b",
    ] {
        assert!(StoragePath::parse(raw).is_err(), "{raw:?} must be refused");
        assert!(
            p("base").join(raw).is_err(),
            "join({raw:?}) must be refused"
        );
    }
    // An absolute path is relative to the tenant's root.
    let absolute = p("/etc/passwd");
    storage
        .put_bytes("main", &absolute, Bytes::from_static(b"not the host's"))
        .await
        .expect("put");
    assert_eq!(
        storage.list("main", &p("etc")).await.expect("list").len(),
        1
    );
    assert!(storage.delete("main", &absolute).await.expect("delete"));
    for tenant in ["..", "../other", "a/b", "a\\b", "", ".hidden", "a\0b"] {
        assert!(
            matches!(
                storage
                    .put_bytes(tenant, &p("x"), Bytes::from_static(b"x"))
                    .await,
                Err(StorageError::InvalidUri { .. })
            ),
            "tenant {tenant:?} must be refused"
        );
    }
}

/// `connect` on a bucket that does not exist fails with `MissingBucket`, naming the bucket.
pub fn assert_missing_bucket(result: Result<ObjectStorage, ObjectStorageError>, bucket: &str) {
    match result {
        Err(e @ ObjectStorageError::MissingBucket { .. }) => {
            let message = e.to_string();
            assert!(
                message.contains(bucket),
                "the error names the bucket: {message}"
            );
            assert!(message.contains("does not exist"), "{message}");
        }
        other => panic!("expected MissingBucket for {bucket}, got {other:?}"),
    }
}

/// `connect` with refused credentials fails with `Credentials`.
pub fn assert_bad_credentials(result: Result<ObjectStorage, ObjectStorageError>) {
    match result {
        Err(e @ ObjectStorageError::Credentials { .. }) => {
            assert!(e.to_string().contains("refused the credentials"), "{e}");
        }
        other => panic!("expected Credentials, got {other:?}"),
    }
}

/// The conformance suite and the shared object-store tests, for a file that defines
/// `async fn store() -> Option<(ObjectStorage, String)>` (the store and its prefix).
#[macro_export]
macro_rules! object_store_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                let Some((storage, _)) = store().await else { return };
                kestra_core::testkit::storage::$name(&storage).await;
            }
        )*

        #[tokio::test]
        async fn run_all_twice_concurrently_on_one_store() {
            let Some((storage, _)) = store().await else { return };
            tokio::join!(
                kestra_core::testkit::storage::run_all(&storage),
                kestra_core::testkit::storage::run_all(&storage)
            );
        }

        #[tokio::test]
        async fn multipart_round_trip() {
            let Some((storage, _)) = store().await else { return };
            common::multipart_round_trip(&storage).await;
        }

        #[tokio::test]
        async fn failed_multipart_put_is_invisible() {
            let Some((storage, _)) = store().await else { return };
            common::failed_multipart_put_is_invisible(&storage).await;
        }

        #[tokio::test]
        async fn keys_live_under_prefix_and_tenant() {
            let Some((storage, prefix)) = store().await else { return };
            common::keys_live_under_prefix_and_tenant(&storage, &prefix).await;
        }

        #[tokio::test]
        async fn traversal_matrix_is_refused() {
            let Some((storage, _)) = store().await else { return };
            common::traversal_matrix_is_refused(&storage).await;
        }
    };
}
