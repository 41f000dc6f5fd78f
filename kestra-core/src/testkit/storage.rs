//! Conformance suite for the storage seam: public async checks of the [`InternalStorage`] contract.
//!
//! Every backend's tests call [`run_all`] (or the individual functions) with their own store, in the
//! pattern of object_store's `integration.rs`. Each function works under a fresh, unique prefix, so a
//! store shared with other tests (or a long-lived bucket) can be used: nothing outside that prefix is
//! touched, except in the tenants named by [`TENANT`] and [`OTHER_TENANT`].
//!
//! The functions panic with a message naming the broken rule; they are test code.
//!
//! Besides the contract written in the module documentation of [`crate::storage`], the suite checks two
//! rules every backend must keep: a failed `put` (the input stream errors) leaves the previous content in
//! place and nothing half-written visible, and tenant ids that cannot be a single path segment (empty,
//! `.`, `..`, `a/b`, `a\b`) are refused with [`StorageError::InvalidUri`].

use crate::storage::{
    ByteStream, FileAttributes, FileKind, InternalStorage, InternalStorageExt, StorageError,
    StoragePath,
};
use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest, Sha256};

/// The tenant the suite writes to.
pub const TENANT: &str = "main";
/// A second tenant, for the isolation checks.
pub const OTHER_TENANT: &str = "conformance-other";

/// Size of the large file written by [`large_file_streams_both_ways`]: a bit over 5 MiB, not a multiple
/// of any usual chunk size.
pub const LARGE_FILE_SIZE: usize = 5 * 1024 * 1024 + 12_345;
/// Size of each chunk of the large file's input stream.
pub const LARGE_FILE_CHUNK: usize = 37_000;

/// A fresh prefix `conformance/<test>/<uuid>` so that calls never see each other's files.
fn unique_prefix(test: &str) -> StoragePath {
    StoragePath::from_segments([
        "conformance",
        test,
        &uuid::Uuid::new_v4().simple().to_string(),
    ])
    .expect("a uuid is a valid path segment")
}

fn path(prefix: &StoragePath, relative: &str) -> StoragePath {
    prefix
        .join(relative)
        .unwrap_or_else(|e| panic!("test path {relative:?} must be valid: {e}"))
}

fn stream_of(chunks: Vec<Bytes>) -> ByteStream {
    futures::stream::iter(chunks.into_iter().map(Ok)).boxed()
}

async fn put(storage: &dyn InternalStorage, tenant: &str, p: &StoragePath, data: &[u8]) {
    let written = storage
        .put_bytes(tenant, p, Bytes::copy_from_slice(data))
        .await
        .unwrap_or_else(|e| panic!("put {p} in tenant {tenant}: {e}"));
    assert_eq!(
        written,
        data.len() as u64,
        "put {p} must return the number of bytes written"
    );
}

async fn get(storage: &dyn InternalStorage, tenant: &str, p: &StoragePath) -> Bytes {
    storage
        .get_bytes(tenant, p)
        .await
        .unwrap_or_else(|e| panic!("get {p} in tenant {tenant}: {e}"))
}

async fn list(storage: &dyn InternalStorage, tenant: &str, p: &StoragePath) -> Vec<FileAttributes> {
    storage
        .list(tenant, p)
        .await
        .unwrap_or_else(|e| panic!("list {p} in tenant {tenant}: {e}"))
}

fn assert_not_found<T: std::fmt::Debug>(result: Result<T, StorageError>, what: &str) {
    match result {
        Err(StorageError::NotFound { .. }) => {}
        other => panic!("{what}: expected StorageError::NotFound, got {other:?}"),
    }
}

/// Deterministic pseudo-random bytes (xorshift), so the large file is not trivially compressible or
/// periodic and a misplaced chunk changes the hash.
fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
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

/// Small, empty and binary files round-trip through `put` and `get`, and `put` returns the byte count.
pub async fn put_get_round_trip(storage: &dyn InternalStorage) {
    let prefix = unique_prefix("round-trip");

    let small = path(&prefix, "small.txt");
    put(storage, TENANT, &small, b"hello kestra").await;
    assert_eq!(get(storage, TENANT, &small).await, &b"hello kestra"[..]);

    let empty = path(&prefix, "empty.bin");
    put(storage, TENANT, &empty, b"").await;
    assert!(
        get(storage, TENANT, &empty).await.is_empty(),
        "an empty file must read back empty"
    );
    assert_eq!(
        storage.size(TENANT, &empty).await.ok(),
        Some(0),
        "size of an empty file"
    );
    assert_eq!(
        storage.exists(TENANT, &empty).await.ok(),
        Some(true),
        "an empty file exists"
    );

    let binary: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    let bin = path(&prefix, "nested/deeper/all-bytes.bin");
    put(storage, TENANT, &bin, &binary).await;
    assert_eq!(get(storage, TENANT, &bin).await, binary);

    let unicode = path(&prefix, "données/été 2024 ✓.csv");
    put(storage, TENANT, &unicode, "a,b\n1,2\n".as_bytes()).await;
    assert_eq!(
        get(storage, TENANT, &unicode).await,
        "a,b\n1,2\n".as_bytes()
    );

    // A multi-chunk input stream is written as the concatenation of its chunks.
    let chunked = path(&prefix, "chunked.txt");
    let written = storage
        .put(
            TENANT,
            &chunked,
            stream_of(vec![
                Bytes::from_static(b"one,"),
                Bytes::new(),
                Bytes::from_static(b"two,"),
                Bytes::from_static(b"three"),
            ]),
        )
        .await
        .unwrap_or_else(|e| panic!("put {chunked}: {e}"));
    assert_eq!(written, 13);
    assert_eq!(get(storage, TENANT, &chunked).await, &b"one,two,three"[..]);

    storage
        .delete_prefix(TENANT, &prefix)
        .await
        .unwrap_or_else(|e| panic!("cleanup {prefix}: {e}"));
}

/// A multi-MiB file written as a stream of many chunks reads back, as a stream of more than one chunk,
/// with the same SHA-256.
pub async fn large_file_streams_both_ways(storage: &dyn InternalStorage) {
    let prefix = unique_prefix("large");
    let p = path(&prefix, "large.bin");
    let data = pseudo_random_bytes(LARGE_FILE_SIZE, 0x6b65_7374_7261);
    let expected_hash = Sha256::digest(&data);

    let chunks: Vec<Bytes> = data
        .chunks(LARGE_FILE_CHUNK)
        .map(Bytes::copy_from_slice)
        .collect();
    assert!(chunks.len() > 100, "the input must be many chunks");
    let written = storage
        .put(TENANT, &p, stream_of(chunks))
        .await
        .unwrap_or_else(|e| panic!("put large {p}: {e}"));
    assert_eq!(written, LARGE_FILE_SIZE as u64, "bytes written");
    drop(data);

    assert_eq!(
        storage.size(TENANT, &p).await.ok(),
        Some(LARGE_FILE_SIZE as u64),
        "size of the large file"
    );

    let mut stream = storage
        .get(TENANT, &p)
        .await
        .unwrap_or_else(|e| panic!("get large {p}: {e}"));
    let mut hasher = Sha256::new();
    let mut read = 0usize;
    let mut chunk_count = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap_or_else(|e| panic!("reading large {p}: {e}"));
        read += chunk.len();
        chunk_count += 1;
        hasher.update(&chunk);
    }
    assert_eq!(read, LARGE_FILE_SIZE, "bytes read back");
    assert!(
        chunk_count > 1,
        "a {LARGE_FILE_SIZE}-byte file must be read as a stream of chunks, got {chunk_count} chunk"
    );
    assert_eq!(
        hasher.finalize(),
        expected_hash,
        "the large file read back has a different SHA-256"
    );

    assert_eq!(
        storage.delete_prefix(TENANT, &prefix).await.ok(),
        Some(1),
        "cleanup of the large file"
    );
}

/// `put` on an existing file replaces its content (a shorter content leaves no tail of the old one).
pub async fn put_replaces(storage: &dyn InternalStorage) {
    let prefix = unique_prefix("replace");
    let p = path(&prefix, "file.txt");
    put(storage, TENANT, &p, b"first version, quite long").await;
    put(storage, TENANT, &p, b"second").await;
    assert_eq!(get(storage, TENANT, &p).await, &b"second"[..]);
    assert_eq!(
        storage.size(TENANT, &p).await.ok(),
        Some(6),
        "size after replace"
    );
    assert_eq!(
        list(storage, TENANT, &prefix).await.len(),
        1,
        "replacing a file must not leave a second entry"
    );
    storage
        .delete_prefix(TENANT, &prefix)
        .await
        .unwrap_or_else(|e| panic!("cleanup {prefix}: {e}"));
}

/// A `put` whose input stream fails returns that error, keeps the previous content, and leaves no
/// half-written file (nor any temporary file) visible.
pub async fn failed_put_is_invisible(storage: &dyn InternalStorage) {
    let prefix = unique_prefix("failed-put");
    let existing = path(&prefix, "existing.txt");
    put(storage, TENANT, &existing, b"previous content").await;

    let failing = |p: &StoragePath| -> ByteStream {
        let uri = p.to_uri();
        futures::stream::iter(vec![
            Ok(Bytes::from_static(b"partial ")),
            Ok(Bytes::from_static(b"content")),
            Err(StorageError::Backend {
                operation: "produce input",
                uri,
                source: "the producer failed".into(),
            }),
        ])
        .boxed()
    };

    let result = storage.put(TENANT, &existing, failing(&existing)).await;
    assert!(
        result.is_err(),
        "put must fail when its input stream fails, got {result:?}"
    );
    assert_eq!(
        get(storage, TENANT, &existing).await,
        &b"previous content"[..],
        "a failed put must keep the previous content"
    );

    let fresh = path(&prefix, "fresh.txt");
    let result = storage.put(TENANT, &fresh, failing(&fresh)).await;
    assert!(result.is_err(), "put must fail, got {result:?}");
    assert_eq!(
        storage.exists(TENANT, &fresh).await.ok(),
        Some(false),
        "a failed put must not leave a file"
    );

    let entries = list(storage, TENANT, &prefix).await;
    let names: Vec<&str> = entries.iter().map(|e| e.path.file_name()).collect();
    assert_eq!(
        names,
        vec!["existing.txt"],
        "only the previous file is visible after failed puts"
    );
    storage
        .delete_prefix(TENANT, &prefix)
        .await
        .unwrap_or_else(|e| panic!("cleanup {prefix}: {e}"));
}

/// `size`, `exists` and `delete` (true, then false) behave as documented.
pub async fn size_exists_delete(storage: &dyn InternalStorage) {
    let prefix = unique_prefix("size-exists-delete");
    let p = path(&prefix, "dir/file.txt");
    assert_eq!(
        storage.exists(TENANT, &p).await.ok(),
        Some(false),
        "exists before put"
    );
    put(storage, TENANT, &p, b"12345").await;
    assert_eq!(storage.size(TENANT, &p).await.ok(), Some(5), "size");
    assert_eq!(
        storage.exists(TENANT, &p).await.ok(),
        Some(true),
        "exists after put"
    );

    // A directory-like prefix is not a file.
    let dir = path(&prefix, "dir");
    assert_eq!(
        storage.exists(TENANT, &dir).await.ok(),
        Some(false),
        "a directory-like prefix is not a file"
    );
    assert_not_found(
        storage.get(TENANT, &dir).await.map(drop),
        "get of a directory-like prefix",
    );
    assert_not_found(
        storage.size(TENANT, &dir).await,
        "size of a directory-like prefix",
    );

    assert_eq!(
        storage.delete(TENANT, &p).await.ok(),
        Some(true),
        "delete of an existing file"
    );
    assert_eq!(
        storage.exists(TENANT, &p).await.ok(),
        Some(false),
        "exists after delete"
    );
    assert_eq!(
        storage.delete(TENANT, &p).await.ok(),
        Some(false),
        "second delete of the same file"
    );
    assert_not_found(storage.get(TENANT, &p).await.map(drop), "get after delete");
    assert!(
        list(storage, TENANT, &prefix).await.is_empty(),
        "a directory left without files must not be listed"
    );
}

/// `get` and `size` of a missing file are [`StorageError::NotFound`]; `exists` is false; `delete` is
/// false; `list` and `delete_prefix` of a missing prefix are empty and 0.
pub async fn missing_is_not_found(storage: &dyn InternalStorage) {
    let prefix = unique_prefix("missing");
    let p = path(&prefix, "nope/missing.txt");
    assert_not_found(
        storage.get(TENANT, &p).await.map(drop),
        "get of a missing file",
    );
    assert_not_found(storage.size(TENANT, &p).await, "size of a missing file");
    assert_eq!(
        storage.exists(TENANT, &p).await.ok(),
        Some(false),
        "exists of a missing file"
    );
    assert_eq!(
        storage.delete(TENANT, &p).await.ok(),
        Some(false),
        "delete of a missing file"
    );
    assert!(
        list(storage, TENANT, &prefix).await.is_empty(),
        "list of a missing prefix"
    );
    assert_eq!(
        storage.delete_prefix(TENANT, &prefix).await.ok(),
        Some(0),
        "delete_prefix of a missing prefix"
    );
}

/// `list` returns the direct children only, sorted by path, directories flagged with size 0 and files
/// with their size; listing a file or a missing prefix is empty.
pub async fn list_direct_children(storage: &dyn InternalStorage) {
    let prefix = unique_prefix("list");
    put(storage, TENANT, &path(&prefix, "b.txt"), b"bb").await;
    put(storage, TENANT, &path(&prefix, "a.txt"), b"a").await;
    put(storage, TENANT, &path(&prefix, "c/deep/x.txt"), b"xxx").await;
    put(storage, TENANT, &path(&prefix, "c/y.txt"), b"yyyy").await;
    put(storage, TENANT, &path(&prefix, "ab/z.txt"), b"z").await;

    let expected = vec![
        FileAttributes {
            path: path(&prefix, "a.txt"),
            size: 1,
            directory: false,
        },
        FileAttributes {
            path: path(&prefix, "ab"),
            size: 0,
            directory: true,
        },
        FileAttributes {
            path: path(&prefix, "b.txt"),
            size: 2,
            directory: false,
        },
        FileAttributes {
            path: path(&prefix, "c"),
            size: 0,
            directory: true,
        },
    ];
    assert_eq!(
        list(storage, TENANT, &prefix).await,
        expected,
        "list of {prefix}"
    );

    let c = list(storage, TENANT, &path(&prefix, "c")).await;
    assert_eq!(
        c,
        vec![
            FileAttributes {
                path: path(&prefix, "c/deep"),
                size: 0,
                directory: true,
            },
            FileAttributes {
                path: path(&prefix, "c/y.txt"),
                size: 4,
                directory: false,
            },
        ],
        "list of a sub-directory"
    );

    assert!(
        list(storage, TENANT, &path(&prefix, "a.txt"))
            .await
            .is_empty(),
        "listing a file gives no children"
    );
    assert!(
        list(storage, TENANT, &path(&prefix, "a")).await.is_empty(),
        "'a' is a string prefix of 'a.txt' and 'ab' but not a directory: no children"
    );

    assert_eq!(
        storage.delete_prefix(TENANT, &prefix).await.ok(),
        Some(5),
        "cleanup of the list fixture"
    );
}

/// `delete_prefix` deletes every file under the prefix and counts them, and nothing else: not `a/bc`
/// when deleting `a/b`, not the parent's files.
pub async fn delete_prefix_is_scoped(storage: &dyn InternalStorage) {
    let prefix = unique_prefix("delete-prefix");
    let inside = [
        "a/b/one.txt",
        "a/b/two.txt",
        "a/b/sub/three.txt",
        "a/b/sub/deeper/four.txt",
    ];
    let outside = ["a/bc/keep.txt", "a/b.txt", "a/keep.txt", "ab/b/keep.txt"];
    for rel in inside.iter().chain(outside.iter()) {
        put(storage, TENANT, &path(&prefix, rel), rel.as_bytes()).await;
    }

    let deleted = storage
        .delete_prefix(TENANT, &path(&prefix, "a/b"))
        .await
        .unwrap_or_else(|e| panic!("delete_prefix a/b: {e}"));
    assert_eq!(deleted, inside.len() as u64, "files deleted under a/b");

    for rel in inside {
        assert_eq!(
            storage.exists(TENANT, &path(&prefix, rel)).await.ok(),
            Some(false),
            "{rel} must be deleted"
        );
    }
    for rel in outside {
        assert_eq!(
            get(storage, TENANT, &path(&prefix, rel)).await,
            rel.as_bytes(),
            "{rel} is outside a/b and must be untouched"
        );
    }
    let names: Vec<String> = list(storage, TENANT, &path(&prefix, "a"))
        .await
        .into_iter()
        .map(|e| e.path.file_name().to_string())
        .collect();
    assert_eq!(
        names,
        vec!["b.txt", "bc", "keep.txt"],
        "a/b is gone from the listing of a"
    );

    assert_eq!(
        storage
            .delete_prefix(TENANT, &path(&prefix, "a/b"))
            .await
            .ok(),
        Some(0),
        "a second delete_prefix finds nothing"
    );
    assert_eq!(
        storage.delete_prefix(TENANT, &prefix).await.ok(),
        Some(outside.len() as u64),
        "cleanup"
    );
    assert!(
        list(storage, TENANT, &prefix).await.is_empty(),
        "nothing left after deleting the whole prefix"
    );
}

/// The same path in two tenants is two different files: content, existence, listing and deletion are
/// independent.
pub async fn tenants_are_isolated(storage: &dyn InternalStorage) {
    let prefix = unique_prefix("tenants");
    let p = path(&prefix, "shared/name.txt");
    put(storage, TENANT, &p, b"tenant one").await;
    assert_eq!(
        storage.exists(OTHER_TENANT, &p).await.ok(),
        Some(false),
        "a file of one tenant is not visible in another"
    );
    assert_not_found(
        storage.get(OTHER_TENANT, &p).await.map(drop),
        "get from the other tenant",
    );
    assert!(
        list(storage, OTHER_TENANT, &prefix).await.is_empty(),
        "the other tenant lists nothing"
    );

    put(storage, OTHER_TENANT, &p, b"tenant two, longer").await;
    assert_eq!(get(storage, TENANT, &p).await, &b"tenant one"[..]);
    assert_eq!(
        get(storage, OTHER_TENANT, &p).await,
        &b"tenant two, longer"[..]
    );
    assert_eq!(
        storage.size(TENANT, &p).await.ok(),
        Some(10),
        "size in tenant one"
    );

    assert_eq!(
        storage.delete(OTHER_TENANT, &p).await.ok(),
        Some(true),
        "delete in tenant two"
    );
    assert_eq!(
        get(storage, TENANT, &p).await,
        &b"tenant one"[..],
        "deleting in one tenant keeps the other's file"
    );

    put(storage, OTHER_TENANT, &p, b"again").await;
    assert_eq!(
        storage.delete_prefix(TENANT, &prefix).await.ok(),
        Some(1),
        "delete_prefix counts only the tenant's own files"
    );
    assert_eq!(
        get(storage, OTHER_TENANT, &p).await,
        &b"again"[..],
        "delete_prefix in one tenant keeps the other's files"
    );
    assert_eq!(
        storage.delete_prefix(OTHER_TENANT, &prefix).await.ok(),
        Some(1),
        "cleanup of the other tenant"
    );
}

/// Tenant ids that are not a single plain path segment are refused with
/// [`StorageError::InvalidUri`] by every operation, and nothing is written.
pub async fn invalid_tenants_are_refused(storage: &dyn InternalStorage) {
    let prefix = unique_prefix("bad-tenant");
    let p = path(&prefix, "f.txt");
    for tenant in ["", ".", "..", "a/b", "../main", "a\\b", "a\0b"] {
        let what = |op: &str| format!("{op} with tenant {tenant:?}");
        let refused = |r: Result<(), StorageError>, op: &str| match r {
            Err(StorageError::InvalidUri { .. }) => {}
            other => panic!("{}: expected InvalidUri, got {other:?}", what(op)),
        };
        refused(
            storage
                .put_bytes(tenant, &p, Bytes::from_static(b"x"))
                .await
                .map(drop),
            "put",
        );
        refused(storage.get(tenant, &p).await.map(drop), "get");
        refused(storage.size(tenant, &p).await.map(drop), "size");
        refused(storage.exists(tenant, &p).await.map(drop), "exists");
        refused(storage.delete(tenant, &p).await.map(drop), "delete");
        refused(storage.list(tenant, &prefix).await.map(drop), "list");
        refused(
            storage.delete_prefix(tenant, &prefix).await.map(drop),
            "delete_prefix",
        );
    }
    assert!(
        list(storage, TENANT, &prefix).await.is_empty(),
        "nothing was written by the refused calls"
    );
}

/// Traversal attempts never reach a backend: raw strings that would escape are refused by
/// [`StoragePath::parse`] and [`StoragePath::join`], and legal names that merely look odd (`...`,
/// `..x`, `x..`, `.hidden`) are ordinary files that stay under their prefix.
pub async fn traversal_is_refused(storage: &dyn InternalStorage) {
    for raw in [
        "../x",
        "%2E%2E/x",
        "%2e%2e/x",
        "%252E%252E/x",
        "..\\x",
        "a\\..\\..\\x",
        "/etc/passwd/..",
        "a/\0b",
        "a/%00b",
        "./x",
        "a//b",
        "file:///etc/passwd",
        "kestra:///../x",
        "kestra:///a/%2E%2E/%2E%2E/x",
    ] {
        assert!(
            StoragePath::parse(raw).is_err(),
            "StoragePath::parse({raw:?}) must be refused"
        );
    }
    // An absolute path is taken relative to the storage root, never as a host path.
    let absolute = StoragePath::parse("/etc/passwd").unwrap_or_else(|e| panic!("parse: {e}"));
    assert_eq!(
        absolute.as_str(),
        "etc/passwd",
        "a leading '/' is relative to the root"
    );

    let prefix = unique_prefix("traversal");
    for rel in [
        "../x",
        "%2E%2E/x",
        "%252E%252E/x",
        "..\\x",
        "a/../../x",
        "/../x",
    ] {
        assert!(prefix.join(rel).is_err(), "join({rel:?}) must be refused");
    }
    assert!(
        StoragePath::from_segments(["a", "..", "x"]).is_err(),
        "a '..' segment must be refused"
    );
    assert!(
        StoragePath::from_segments(["a", "b/../../x"]).is_err(),
        "a segment with '/' must be refused"
    );

    let odd = ["...", "..x", "x..", ".hidden", "a%b"];
    for name in odd {
        put(storage, TENANT, &path(&prefix, name), name.as_bytes()).await;
    }
    let mut listed: Vec<String> = list(storage, TENANT, &prefix)
        .await
        .into_iter()
        .map(|e| e.path.file_name().to_string())
        .collect();
    listed.sort();
    let mut expected: Vec<String> = odd.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(
        listed, expected,
        "odd but legal names stay under their prefix"
    );
    for name in odd {
        assert_eq!(
            get(storage, TENANT, &path(&prefix, name)).await,
            name.as_bytes()
        );
    }
    assert_eq!(
        storage.delete_prefix(TENANT, &prefix).await.ok(),
        Some(odd.len() as u64),
        "cleanup of odd names"
    );
}

/// `attributes`: a file is a FILE with its size and a last modification close to now (a `put` moves
/// it forward); a prefix with files under it is a DIRECTORY of size 0; a missing path (and a
/// directory emptied by `delete`) is [`StorageError::NotFound`]; tenants are separate.
pub async fn attributes_of_files_and_directories(storage: &dyn InternalStorage) {
    let prefix = unique_prefix("attributes");
    let p = path(&prefix, "dir/file.txt");
    assert_not_found(
        storage.attributes(TENANT, &p).await,
        "attributes of a missing file",
    );
    let before = chrono::Utc::now() - chrono::Duration::minutes(5);
    put(storage, TENANT, &p, b"123456789").await;
    let file = storage
        .attributes(TENANT, &p)
        .await
        .unwrap_or_else(|e| panic!("attributes of {p}: {e}"));
    assert_eq!(file.path, p, "attributes name the path asked about");
    assert_eq!(file.kind, FileKind::File, "a stored file is a FILE");
    assert_eq!(file.size, 9, "the size of the file");
    let modified = file
        .last_modified
        .unwrap_or_else(|| panic!("a file has a last modification time: {file:?}"));
    let after = chrono::Utc::now() + chrono::Duration::minutes(5);
    assert!(
        before <= modified && modified <= after,
        "last modification {modified} of a file just written is not now (clocks 5 min apart?)"
    );

    let dir = path(&prefix, "dir");
    let directory = storage
        .attributes(TENANT, &dir)
        .await
        .unwrap_or_else(|e| panic!("attributes of the directory-like prefix {dir}: {e}"));
    assert_eq!(
        directory.kind,
        FileKind::Directory,
        "a prefix with files under it"
    );
    assert_eq!(directory.size, 0, "a directory's size is 0");
    assert_not_found(
        storage.attributes(OTHER_TENANT, &p).await,
        "attributes of a file of another tenant",
    );
    assert_not_found(
        storage.attributes(TENANT, &path(&prefix, "di")).await,
        "attributes of a prefix that is not segment-wise (`di` of `dir`)",
    );

    assert_eq!(storage.delete(TENANT, &p).await.ok(), Some(true), "delete");
    assert_not_found(
        storage.attributes(TENANT, &p).await,
        "attributes after delete",
    );
    assert_not_found(
        storage.attributes(TENANT, &dir).await,
        "attributes of a directory emptied by delete",
    );
}

/// `move_file`: the content moves to the new path (replacing what was there), the old path is gone,
/// the emptied directory disappears; a missing source or a directory-like one is
/// [`StorageError::NotFound`] and changes nothing; a move onto itself keeps the file; a move in one
/// tenant leaves the other tenant's same paths alone.
pub async fn move_file_moves(storage: &dyn InternalStorage) {
    let prefix = unique_prefix("move");
    let from = path(&prefix, "a/from.txt");
    let to = path(&prefix, "b/c/to.txt");
    put(storage, TENANT, &from, b"moved content").await;
    put(storage, OTHER_TENANT, &from, b"other tenant").await;
    storage
        .move_file(TENANT, &from, &to)
        .await
        .unwrap_or_else(|e| panic!("move {from} to {to}: {e}"));
    assert_eq!(
        get(storage, TENANT, &to).await,
        &b"moved content"[..],
        "content at the target"
    );
    assert_eq!(
        storage.exists(TENANT, &from).await.ok(),
        Some(false),
        "the source is gone after a move"
    );
    assert_eq!(
        get(storage, OTHER_TENANT, &from).await,
        &b"other tenant"[..],
        "a move in one tenant leaves another tenant's file alone"
    );
    assert_eq!(
        storage.exists(OTHER_TENANT, &to).await.ok(),
        Some(false),
        "a move in one tenant creates nothing in another"
    );
    let names: Vec<String> = list(storage, TENANT, &prefix)
        .await
        .into_iter()
        .map(|e| e.path.file_name().to_string())
        .collect();
    assert_eq!(
        names,
        vec!["b".to_string()],
        "the emptied source directory disappears"
    );

    // Onto an existing file: replaced.
    let other = path(&prefix, "b/other.txt");
    put(storage, TENANT, &other, b"replacement").await;
    storage
        .move_file(TENANT, &other, &to)
        .await
        .unwrap_or_else(|e| panic!("move {other} onto {to}: {e}"));
    assert_eq!(
        get(storage, TENANT, &to).await,
        &b"replacement"[..],
        "the target is replaced"
    );
    assert_eq!(storage.exists(TENANT, &other).await.ok(), Some(false));

    // Onto itself: kept.
    storage
        .move_file(TENANT, &to, &to)
        .await
        .unwrap_or_else(|e| panic!("move {to} onto itself: {e}"));
    assert_eq!(
        get(storage, TENANT, &to).await,
        &b"replacement"[..],
        "a move onto itself keeps the file"
    );

    // A missing source, or a directory-like one: NotFound, nothing changes.
    let missing = path(&prefix, "a/missing.txt");
    let elsewhere = path(&prefix, "z/target.txt");
    assert_not_found(
        storage.move_file(TENANT, &missing, &elsewhere).await,
        "move of a missing file",
    );
    assert_not_found(
        storage
            .move_file(TENANT, &path(&prefix, "b"), &elsewhere)
            .await,
        "move of a directory-like prefix",
    );
    assert_eq!(
        storage.exists(TENANT, &elsewhere).await.ok(),
        Some(false),
        "a refused move creates nothing"
    );
    assert_eq!(
        get(storage, TENANT, &to).await,
        &b"replacement"[..],
        "a refused move changes nothing"
    );

    // An invalid tenant is refused, as for every operation.
    match storage.move_file("a/b", &to, &elsewhere).await {
        Err(StorageError::InvalidUri { .. }) => {}
        other => panic!("move with tenant \"a/b\" must be InvalidUri, got {other:?}"),
    }

    for tenant in [TENANT, OTHER_TENANT] {
        storage
            .delete_prefix(tenant, &prefix)
            .await
            .unwrap_or_else(|e| panic!("cleanup of {prefix} in {tenant}: {e}"));
    }
}

/// Run every check of the suite, one after the other.
pub async fn run_all(storage: &dyn InternalStorage) {
    put_get_round_trip(storage).await;
    large_file_streams_both_ways(storage).await;
    put_replaces(storage).await;
    failed_put_is_invisible(storage).await;
    size_exists_delete(storage).await;
    missing_is_not_found(storage).await;
    list_direct_children(storage).await;
    delete_prefix_is_scoped(storage).await;
    tenants_are_isolated(storage).await;
    invalid_tenants_are_refused(storage).await;
    traversal_is_refused(storage).await;
    attributes_of_files_and_directories(storage).await;
    move_file_moves(storage).await;
}
