//! LocalStorage: the storage conformance suite on a temporary root, plus the local-only rules (layout,
//! atomic writes, symlinks leading out of the root).

use bytes::Bytes;
use futures::StreamExt;
use kestra_core::storage::{InternalStorage, InternalStorageExt, StorageError, StoragePath};
use kestra_core::testkit::storage as suite;
use kestra_storage::{LocalStorage, LocalStorageError};
use std::path::Path;
use std::time::Duration;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn store() -> Result<(tempfile::TempDir, LocalStorage), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let storage = LocalStorage::new(dir.path().join("storage"))?;
    Ok((dir, storage))
}

fn p(s: &str) -> StoragePath {
    StoragePath::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() -> TestResult {
                let (_dir, storage) = store()?;
                suite::$name(&storage).await;
                Ok(())
            }
        )*
    };
}

conformance!(
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
async fn run_all_twice_concurrently_on_one_store() -> TestResult {
    let (_dir, storage) = store()?;
    tokio::join!(suite::run_all(&storage), suite::run_all(&storage));
    Ok(())
}

#[tokio::test]
async fn new_creates_and_canonicalises_the_root() -> TestResult {
    let dir = tempfile::tempdir()?;
    let storage = LocalStorage::new(dir.path().join("a/b/../c"))?;
    assert!(dir.path().join("a/c").is_dir(), "the root is created");
    assert_eq!(
        storage.root(),
        std::fs::canonicalize(dir.path().join("a/c"))?
    );

    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x")?;
    assert!(
        matches!(
            LocalStorage::new(&file),
            Err(LocalStorageError::Root { .. })
        ),
        "a root that is a file is refused"
    );
    Ok(())
}

#[tokio::test]
async fn files_live_at_root_tenant_path() -> TestResult {
    let (_dir, storage) = store()?;
    storage
        .put_bytes(
            "main",
            &p("kestra:///company/team/flow/f.txt"),
            Bytes::from("m"),
        )
        .await?;
    storage
        .put_bytes("acme", &p("company/team/flow/f.txt"), Bytes::from("a"))
        .await?;
    let root = storage.root();
    assert_eq!(
        std::fs::read(root.join("main/company/team/flow/f.txt"))?,
        b"m"
    );
    assert_eq!(
        std::fs::read(root.join("acme/company/team/flow/f.txt"))?,
        b"a"
    );

    // Deleting the last file removes its now-empty directories, but not the tenant directory.
    assert!(
        storage
            .delete("main", &p("company/team/flow/f.txt"))
            .await?
    );
    assert!(!root.join("main/company").exists());
    assert!(root.join("main").is_dir());
    Ok(())
}

#[tokio::test]
async fn reserved_temporary_names_are_refused() -> TestResult {
    let (_dir, storage) = store()?;
    let reserved = p("a/.kestra-upload-123");
    let result = storage.put_bytes("main", &reserved, Bytes::from("x")).await;
    assert!(
        matches!(result, Err(StorageError::InvalidUri { .. })),
        "{result:?}"
    );
    assert!(matches!(
        storage.get("main", &reserved).await,
        Err(StorageError::InvalidUri { .. })
    ));
    Ok(())
}

fn temp_files_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| n.starts_with(kestra_storage::local::TEMP_PREFIX))
                .collect()
        })
        .unwrap_or_default()
}

async fn wait_for_temp_file(dir: &Path) -> Vec<String> {
    for _ in 0..200 {
        let temps = temp_files_in(dir);
        if !temps.is_empty() {
            return temps;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Vec::new()
}

#[tokio::test]
async fn an_in_flight_put_is_invisible_until_renamed() -> TestResult {
    let (_dir, storage) = store()?;
    let path = p("flow/out.txt");
    storage
        .put_bytes("main", &path, Bytes::from("old content"))
        .await?;

    let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Bytes, StorageError>>();
    let writer = storage.clone();
    let write_path = path.clone();
    let task = tokio::spawn(async move { writer.put("main", &write_path, rx.boxed()).await });

    tx.unbounded_send(Ok(Bytes::from("new ")))?;
    let dir = storage.root().join("main/flow");
    let temps = wait_for_temp_file(&dir).await;
    assert_eq!(
        temps.len(),
        1,
        "the upload goes to one temporary file in the target's directory"
    );

    assert_eq!(storage.get_bytes("main", &path).await?, "old content");
    let listed = storage.list("main", &p("flow")).await?;
    assert_eq!(
        listed.len(),
        1,
        "the temporary file is not listed: {listed:?}"
    );
    assert_eq!(listed[0].path, path);

    tx.unbounded_send(Ok(Bytes::from("content")))?;
    drop(tx);
    assert_eq!(task.await??, 11);
    assert_eq!(storage.get_bytes("main", &path).await?, "new content");
    assert!(
        temp_files_in(&dir).is_empty(),
        "the temporary file was renamed"
    );
    Ok(())
}

#[tokio::test]
async fn a_cancelled_put_leaves_nothing_behind() -> TestResult {
    let (_dir, storage) = store()?;
    let path = p("flow/cancelled.txt");
    let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Bytes, StorageError>>();
    let writer = storage.clone();
    let write_path = path.clone();
    let task = tokio::spawn(async move { writer.put("main", &write_path, rx.boxed()).await });
    tx.unbounded_send(Ok(Bytes::from("partial")))?;
    let dir = storage.root().join("main/flow");
    assert_eq!(wait_for_temp_file(&dir).await.len(), 1);

    task.abort();
    assert!(task.await.is_err_and(|e| e.is_cancelled()));
    assert!(
        temp_files_in(&dir).is_empty(),
        "the temporary file is removed on cancel"
    );
    assert!(!storage.exists("main", &path).await?);
    Ok(())
}

/// A store with a directory outside its root holding `secret.txt`, and symlinks inside the root
/// leading there.
struct Escape {
    _dir: tempfile::TempDir,
    storage: LocalStorage,
    outside: std::path::PathBuf,
}

fn escape_fixture() -> Result<Escape, Box<dyn std::error::Error>> {
    let (dir, storage) = store()?;
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&outside)?;
    std::fs::write(outside.join("secret.txt"), b"secret")?;
    let root = storage.root();
    std::fs::create_dir_all(root.join("main/ns/d"))?;
    std::fs::write(root.join("main/ns/d/inside.txt"), b"inside")?;
    // A directory symlink, a file symlink, a whole tenant, and a dangling one.
    std::os::unix::fs::symlink(&outside, root.join("main/ns/esc"))?;
    std::os::unix::fs::symlink(
        outside.join("secret.txt"),
        root.join("main/ns/d/secret.txt"),
    )?;
    std::os::unix::fs::symlink(&outside, root.join("evil"))?;
    std::os::unix::fs::symlink(outside.join("missing"), root.join("main/ns/dangling"))?;
    Ok(Escape {
        _dir: dir,
        storage,
        outside,
    })
}

fn assert_refused<T: std::fmt::Debug>(result: Result<T, StorageError>, what: &str) {
    match &result {
        Err(StorageError::Backend { source, .. })
            if matches!(
                source.downcast_ref::<LocalStorageError>(),
                Some(
                    LocalStorageError::SymlinkEscape { .. }
                        | LocalStorageError::UnresolvableSymlink { .. }
                )
            ) =>
        {
            let message = result
                .as_ref()
                .err()
                .map(ToString::to_string)
                .unwrap_or_default();
            assert!(
                message.contains("symlink") && message.contains("refusing"),
                "{what}: the error says why: {message}"
            );
        }
        other => panic!("{what}: expected a symlink refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn every_operation_through_an_escaping_symlink_is_refused() -> TestResult {
    let fx = escape_fixture()?;
    let s = &fx.storage;

    for (tenant, file, dir) in [
        ("main", "ns/esc/secret.txt", "ns/esc"),
        ("main", "ns/d/secret.txt", "ns/d/secret.txt"),
        ("evil", "secret.txt", "sub"),
        ("main", "ns/dangling/x.txt", "ns/dangling"),
    ] {
        let file = p(file);
        let dir = p(dir);
        let at = |op: &str| format!("{op} {tenant}:{file}");
        assert_refused(s.get(tenant, &file).await.map(drop), &at("get"));
        assert_refused(s.size(tenant, &file).await, &at("size"));
        assert_refused(s.exists(tenant, &file).await, &at("exists"));
        assert_refused(s.delete(tenant, &file).await, &at("delete"));
        assert_refused(
            s.put_bytes(tenant, &file, Bytes::from("overwritten")).await,
            &at("put"),
        );
        assert_refused(
            s.put_bytes(tenant, &dir.join("new.txt")?, Bytes::from("new"))
                .await,
            &at("put new"),
        );
        assert_refused(s.list(tenant, &dir).await, &at("list"));
        assert_refused(s.delete_prefix(tenant, &dir).await, &at("delete_prefix"));
        assert_refused(s.attributes(tenant, &file).await, &at("attributes"));
        // A move neither takes a file out through the symlink nor puts one in through it.
        assert_refused(
            s.move_file(tenant, &file, &p("ns/d/taken.txt")).await,
            &at("move from"),
        );
        if tenant == "main" {
            assert_refused(
                s.move_file(tenant, &p("ns/d/inside.txt"), &dir.join("moved.txt")?)
                    .await,
                &at("move into"),
            );
        }
    }
    assert_eq!(
        std::fs::read(s.root().join("main/ns/d/inside.txt"))?,
        b"inside",
        "a refused move leaves its source in place"
    );

    // Walks meet the symlinks as children and refuse too, deleting nothing.
    assert_refused(
        s.list("main", &p("ns")).await,
        "list of the parent of a symlink",
    );
    assert_refused(
        s.delete_prefix("main", &p("ns")).await,
        "delete_prefix of the parent of a symlink",
    );
    assert_eq!(
        std::fs::read(s.root().join("main/ns/d/inside.txt"))?,
        b"inside",
        "a refused delete_prefix deletes nothing, not even inside files"
    );

    // Outside the root nothing changed.
    let mut outside: Vec<String> = std::fs::read_dir(&fx.outside)?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    outside.sort();
    assert_eq!(outside, vec!["secret.txt"]);
    assert_eq!(std::fs::read(fx.outside.join("secret.txt"))?, b"secret");
    Ok(())
}

#[tokio::test]
async fn symlinks_staying_inside_the_tenant_are_followed() -> TestResult {
    let (_dir, storage) = store()?;
    storage
        .put_bytes("main", &p("real/data.txt"), Bytes::from("data"))
        .await?;
    let root = storage.root();
    std::os::unix::fs::symlink(root.join("main/real"), root.join("main/alias"))?;
    assert_eq!(
        storage.get_bytes("main", &p("alias/data.txt")).await?,
        "data"
    );
    assert_eq!(storage.size("main", &p("alias/data.txt")).await?, 4);
    let listed = storage.list("main", &p("alias")).await?;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].path, p("alias/data.txt"));

    // A symlink into another tenant's directory leaves this tenant: refused.
    storage
        .put_bytes("other", &p("private.txt"), Bytes::from("p"))
        .await?;
    std::os::unix::fs::symlink(root.join("other"), root.join("main/peek"))?;
    assert_refused(
        storage.get("main", &p("peek/private.txt")).await.map(drop),
        "get through a symlink into another tenant",
    );
    Ok(())
}

#[tokio::test]
async fn get_streams_in_64_kib_chunks() -> TestResult {
    let (_dir, storage) = store()?;
    let data = vec![7u8; 200 * 1024];
    storage
        .put_bytes("main", &p("big.bin"), Bytes::from(data))
        .await?;
    let sizes: Vec<usize> = storage
        .get("main", &p("big.bin"))
        .await?
        .map(|c| c.map(|b| b.len()).unwrap_or(0))
        .collect()
        .await;
    assert_eq!(sizes.iter().sum::<usize>(), 200 * 1024);
    assert!(sizes.len() >= 4, "{sizes:?}");
    assert!(sizes.iter().all(|&n| n <= 64 * 1024), "{sizes:?}");
    Ok(())
}
