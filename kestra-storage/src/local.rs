//! Local-filesystem [`InternalStorage`]: owns the on-disk layout, atomic writes and the symlink guard.
//!
//! # Layout
//!
//! A file `kestra:///a/b/c.txt` of tenant `main` lives at `<root>/main/a/b/c.txt`. Directories are
//! created on write and removed again when the last file under them is deleted, so that listings match
//! the object stores' (a "directory" exists only while something is in it).
//!
//! # Writes are atomic
//!
//! [`LocalStorage::put`](InternalStorage::put) streams into a temporary file named
//! `.kestra-upload-<uuid>` in the target's directory, syncs it, then renames it over the target. A
//! reader sees either the old content or the new one, never a half-written file; if the input stream
//! fails, the temporary file is removed and the old content stays. Temporary names are reserved: paths
//! with a segment starting with `.kestra-upload-` are refused, and listings never show them. A process
//! killed mid-write may leave such a file behind; it stays invisible.
//!
//! # Symlinks
//!
//! [`StoragePath`] already refuses `..` and friends, so a path can only leave the root through a
//! symlink placed inside it. Before every operation each existing component of
//! `<root>/<tenant>/<path>` is checked with `symlink_metadata`; a symlink is allowed only if it resolves
//! inside the tenant's directory (for the tenant directory itself: inside the root). Listings and
//! `delete_prefix` check every symlink they meet the same way, and never follow one into a recursive
//! walk. A refused operation fails with [`StorageError::Backend`] whose source is
//! [`LocalStorageError::SymlinkEscape`] (or [`LocalStorageError::UnresolvableSymlink`] for a dangling
//! link). The check and the open are separate system calls: someone able to swap a component for a
//! symlink between the two can still win that race (closing it needs `openat2(RESOLVE_BENEATH)`).
//!
//! # Tenants
//!
//! A tenant id must be non-empty, made of ASCII letters, digits, `-`, `_` and `.`, and must not start
//! with `.`; anything else is [`StorageError::InvalidUri`].

use async_trait::async_trait;
use futures::StreamExt;
use kestra_core::storage::{
    Attributes, ByteStream, FileAttributes, FileKind, InternalStorage, StorageError, StoragePath,
};
use std::io;
use std::path::{Component, Path, PathBuf};
use tokio::io::AsyncWriteExt;
use tokio_util::io::ReaderStream;

/// Prefix of the temporary files `put` writes before renaming them into place.
pub const TEMP_PREFIX: &str = ".kestra-upload-";

/// Size of the chunks `get` streams.
pub const READ_CHUNK_SIZE: usize = 64 * 1024;

/// Errors specific to the local filesystem, returned by [`LocalStorage::new`] or carried as the source
/// of [`StorageError::Backend`].
#[derive(Debug, thiserror::Error)]
pub enum LocalStorageError {
    /// The root directory could not be created or resolved.
    #[error("cannot create or resolve the storage root '{root}': {source}")]
    Root {
        /// The root as given.
        root: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A component of the path is a symlink that leads outside the storage area.
    #[error("'{link}' is a symlink to '{target}', outside '{boundary}': refusing to go through it")]
    SymlinkEscape {
        /// The symlink.
        link: PathBuf,
        /// Where it resolves to.
        target: PathBuf,
        /// The directory it had to stay in.
        boundary: PathBuf,
    },
    /// A component of the path is a symlink that cannot be resolved (dangling, or a loop).
    #[error("'{link}' is a symlink that cannot be resolved ({source}): refusing to go through it")]
    UnresolvableSymlink {
        /// The symlink.
        link: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// [`InternalStorage`] on a local directory. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LocalStorage {
    root: PathBuf,
}

/// A resolved, checked location.
#[derive(Debug)]
struct Location {
    /// `<root>/<tenant>`.
    tenant_dir: PathBuf,
    /// `<root>/<tenant>/<path>`.
    file: PathBuf,
}

impl LocalStorage {
    /// Use `root` (created if missing) as the storage root. The root is canonicalised, so it may
    /// itself be reached through a symlink.
    pub fn new(root: impl Into<PathBuf>) -> Result<LocalStorage, LocalStorageError> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(|source| LocalStorageError::Root {
            root: root.clone(),
            source,
        })?;
        let canonical = std::fs::canonicalize(&root)
            .map_err(|source| LocalStorageError::Root { root, source })?;
        tracing::debug!(root = %canonical.display(), "local storage ready");
        Ok(LocalStorage { root: canonical })
    }

    /// The canonical root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Validate the tenant and the path, build `<root>/<tenant>/<path>` and check its symlinks.
    async fn locate(
        &self,
        operation: &'static str,
        tenant: &str,
        path: &StoragePath,
    ) -> Result<Location, StorageError> {
        validate_tenant(tenant, path)?;
        let tenant_dir = self.root.join(tenant);
        let mut file = tenant_dir.clone();
        for segment in path.segments() {
            if segment.starts_with(TEMP_PREFIX) {
                return Err(StorageError::InvalidUri {
                    uri: path.to_uri(),
                    reason: format!("segments starting with '{TEMP_PREFIX}' are reserved"),
                });
            }
            // A segment that the platform would not read as one plain name (a drive prefix on
            // Windows, say) must not reach `push`.
            let mut components = Path::new(segment).components();
            match (components.next(), components.next()) {
                (Some(Component::Normal(name)), None) if name == segment => file.push(segment),
                _ => {
                    return Err(StorageError::InvalidUri {
                        uri: path.to_uri(),
                        reason: format!("segment '{segment}' is not a plain file name here"),
                    });
                }
            }
        }
        let location = Location { tenant_dir, file };
        let root = self.root.clone();
        let path_for_check = path.clone();
        blocking(operation, path, move || {
            check_location(&root, &location)
                .map_err(|e| e.into_storage(operation, &path_for_check))?;
            Ok(location)
        })
        .await
    }
}

/// Refuse a tenant id that is not one plain path segment (shared by every store of this crate).
pub(crate) fn validate_tenant(tenant: &str, path: &StoragePath) -> Result<(), StorageError> {
    let reason = if tenant.is_empty() {
        Some("is empty")
    } else if tenant.starts_with('.') {
        Some("starts with '.'")
    } else if !tenant
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        Some("may only contain ASCII letters, digits, '-', '_' and '.'")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(StorageError::InvalidUri {
            uri: path.to_uri(),
            reason: format!("tenant id {tenant:?} {reason}"),
        }),
    }
}

/// Why a blocking filesystem step failed.
enum FsError {
    Io(io::Error),
    Local(LocalStorageError),
}

impl From<io::Error> for FsError {
    fn from(value: io::Error) -> Self {
        FsError::Io(value)
    }
}

impl From<LocalStorageError> for FsError {
    fn from(value: LocalStorageError) -> Self {
        FsError::Local(value)
    }
}

impl FsError {
    fn into_storage(self, operation: &'static str, path: &StoragePath) -> StorageError {
        match self {
            FsError::Io(e) => io_error(operation, path, e),
            FsError::Local(e) => StorageError::backend(operation, path, e),
        }
    }

    /// Like [`FsError::into_storage`], but a vanished file is a backend error too (for walks, where
    /// the operation itself has no "not found" outcome).
    fn into_backend(self, operation: &'static str, path: &StoragePath) -> StorageError {
        match self {
            FsError::Io(e) => StorageError::backend(operation, path, e),
            FsError::Local(e) => StorageError::backend(operation, path, e),
        }
    }
}

/// `NotFound` (and "a component is not a directory") become [`StorageError::NotFound`]; anything else
/// is a backend error.
fn io_error(operation: &'static str, path: &StoragePath, e: io::Error) -> StorageError {
    match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => {
            StorageError::NotFound { uri: path.to_uri() }
        }
        _ => StorageError::backend(operation, path, e),
    }
}

fn is_missing(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

/// Run blocking filesystem work off the async threads.
async fn blocking<T, F>(
    operation: &'static str,
    path: &StoragePath,
    work: F,
) -> Result<T, StorageError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StorageError> + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StorageError::backend(operation, path, e))?
}

/// If `component` is a symlink, require it to resolve under `boundary`. Returns whether `component`
/// exists.
fn check_component(component: &Path, boundary: &Path) -> Result<bool, FsError> {
    match std::fs::symlink_metadata(component) {
        Err(e) if is_missing(&e) => Ok(false),
        Err(e) => Err(FsError::Io(e)),
        Ok(meta) if meta.file_type().is_symlink() => {
            let target = std::fs::canonicalize(component).map_err(|source| {
                LocalStorageError::UnresolvableSymlink {
                    link: component.to_path_buf(),
                    source,
                }
            })?;
            if target.starts_with(boundary) {
                Ok(true)
            } else {
                Err(LocalStorageError::SymlinkEscape {
                    link: component.to_path_buf(),
                    target,
                    boundary: boundary.to_path_buf(),
                }
                .into())
            }
        }
        Ok(_) => Ok(true),
    }
}

/// The directory symlinks below the tenant directory must stay in: the tenant directory, resolved.
fn tenant_boundary(root: &Path, tenant_dir: &Path) -> Result<Option<PathBuf>, FsError> {
    if !check_component(tenant_dir, root)? {
        return Ok(None);
    }
    Ok(Some(std::fs::canonicalize(tenant_dir)?))
}

/// Check every existing component of `location.file` below the root.
fn check_location(root: &Path, location: &Location) -> Result<(), FsError> {
    let Some(boundary) = tenant_boundary(root, &location.tenant_dir)? else {
        return Ok(());
    };
    let Ok(relative) = location.file.strip_prefix(&location.tenant_dir) else {
        return Ok(());
    };
    let mut current = location.tenant_dir.clone();
    for component in relative.components() {
        current.push(component);
        if !check_component(&current, &boundary)? {
            break;
        }
    }
    Ok(())
}

/// Remove `dir` and its parents while they are empty, stopping at (and keeping) `stop`.
fn prune_empty_dirs(mut dir: &Path, stop: &Path) {
    while dir != stop && dir.starts_with(stop) {
        if std::fs::remove_dir(dir).is_err() {
            return;
        }
        match dir.parent() {
            Some(parent) => dir = parent,
            None => return,
        }
    }
}

/// Removes a temporary upload file unless disarmed (a failed or cancelled `put`).
struct TempFile {
    path: Option<PathBuf>,
}

impl TempFile {
    fn disarm(&mut self) {
        self.path = None;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.path.take()
            && let Err(e) = std::fs::remove_file(&path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "could not remove a temporary upload file");
        }
    }
}

/// Entries of one directory, checked and converted.
fn list_dir(
    boundary: &Path,
    dir: &Path,
    prefix: &StoragePath,
) -> Result<Vec<FileAttributes>, FsError> {
    let read = match std::fs::read_dir(dir) {
        Ok(read) => read,
        Err(e) if is_missing(&e) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut entries = Vec::new();
    for entry in read {
        let entry = entry?;
        let os_name = entry.file_name();
        let Some(name) = os_name.to_str() else {
            tracing::warn!(dir = %dir.display(), name = ?os_name, "skipping a file name that is not UTF-8");
            continue;
        };
        if name.starts_with(TEMP_PREFIX) {
            continue;
        }
        let child = match prefix.join(name) {
            Ok(child) if child.file_name() == name => child,
            _ => {
                tracing::warn!(dir = %dir.display(), name, "skipping a file name that is not a valid storage path segment");
                continue;
            }
        };
        let entry_path = entry.path();
        if entry.file_type()?.is_symlink() {
            check_component(&entry_path, boundary)?;
        }
        let meta = match std::fs::metadata(&entry_path) {
            Ok(meta) => meta,
            // Deleted while we were listing.
            Err(e) if is_missing(&e) => continue,
            Err(e) => return Err(e.into()),
        };
        entries.push(if meta.is_dir() {
            FileAttributes {
                path: child,
                size: 0,
                directory: true,
            }
        } else {
            FileAttributes {
                path: child,
                size: meta.len(),
                directory: false,
            }
        });
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(entries)
}

/// Delete every file under `target` (or `target` itself if it is a file), after checking every
/// symlink met; returns how many files were deleted.
fn delete_tree(boundary: &Path, location: &Location) -> Result<u64, FsError> {
    let target = &location.file;
    // A symlink to a directory inside the boundary is followed as the prefix itself (it was checked
    // by `locate`), but never during the walk.
    let meta = match std::fs::metadata(target) {
        Ok(meta) => meta,
        Err(e) if is_missing(&e) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    if meta.is_dir() {
        let mut pending = vec![target.clone()];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir)? {
                let entry = entry?;
                let file_type = entry.file_type()?;
                let entry_path = entry.path();
                if file_type.is_dir() {
                    pending.push(entry_path);
                } else {
                    if file_type.is_symlink() {
                        check_component(&entry_path, boundary)?;
                    }
                    let is_temp = entry
                        .file_name()
                        .to_str()
                        .is_some_and(|n| n.starts_with(TEMP_PREFIX));
                    if !is_temp {
                        files.push(entry_path);
                    }
                }
            }
            dirs.push(dir);
        }
    } else {
        files.push(target.clone());
    }

    let mut deleted = 0;
    for file in &files {
        match std::fs::remove_file(file) {
            Ok(()) => deleted += 1,
            Err(e) if is_missing(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    // Children were discovered after their parents: remove the deepest first. A directory still
    // holding an in-flight upload stays.
    for dir in dirs.iter().rev() {
        if !std::fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink()) {
            let _ = std::fs::remove_dir(dir);
        }
    }
    if let Some(parent) = target.parent() {
        prune_empty_dirs(parent, &location.tenant_dir);
    }
    Ok(deleted)
}

#[async_trait]
impl InternalStorage for LocalStorage {
    #[tracing::instrument(level = "debug", name = "storage.put", skip_all, fields(tenant = %tenant, path = %path))]
    async fn put(
        &self,
        tenant: &str,
        path: &StoragePath,
        mut data: ByteStream,
    ) -> Result<u64, StorageError> {
        let location = self.locate("put", tenant, path).await?;
        let backend = |e: io::Error| StorageError::backend("put", path, e);
        let Some(dir) = location.file.parent().map(Path::to_path_buf) else {
            return Err(StorageError::InvalidUri {
                uri: path.to_uri(),
                reason: "no parent directory".to_string(),
            });
        };
        let temp_path = dir.join(format!("{TEMP_PREFIX}{}", uuid::Uuid::new_v4().simple()));
        // A concurrent delete may prune the directory between its creation and the temporary
        // file's: retry a few times.
        let mut attempt = 0;
        let mut file = loop {
            tokio::fs::create_dir_all(&dir).await.map_err(backend)?;
            match tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&temp_path)
                .await
            {
                Ok(file) => break file,
                Err(e) if e.kind() == io::ErrorKind::NotFound && attempt < 3 => attempt += 1,
                Err(e) => return Err(backend(e)),
            }
        };
        let mut temp = TempFile {
            path: Some(temp_path.clone()),
        };

        let result: Result<u64, StorageError> = async {
            let mut written = 0u64;
            while let Some(chunk) = data.next().await {
                let chunk = chunk?;
                file.write_all(&chunk).await.map_err(backend)?;
                written += chunk.len() as u64;
            }
            file.flush().await.map_err(backend)?;
            file.sync_all().await.map_err(backend)?;
            Ok(written)
        }
        .await;
        drop(file);

        let written = match result {
            Ok(written) => written,
            Err(e) => {
                drop(temp);
                let (dir, stop) = (dir, location.tenant_dir);
                let _ = tokio::task::spawn_blocking(move || prune_empty_dirs(&dir, &stop)).await;
                return Err(e);
            }
        };
        tokio::fs::rename(&temp_path, &location.file)
            .await
            .map_err(backend)?;
        temp.disarm();
        // Make the rename itself durable.
        let sync_dir = location.file.parent().map(Path::to_path_buf);
        let path_for_sync = path.clone();
        blocking("put", path, move || match sync_dir {
            Some(dir) => std::fs::File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| StorageError::backend("put", &path_for_sync, e)),
            None => Ok(()),
        })
        .await?;
        tracing::debug!(bytes = written, "stored");
        Ok(written)
    }

    #[tracing::instrument(level = "debug", name = "storage.get", skip_all, fields(tenant = %tenant, path = %path))]
    async fn get(&self, tenant: &str, path: &StoragePath) -> Result<ByteStream, StorageError> {
        let location = self.locate("get", tenant, path).await?;
        let file = tokio::fs::File::open(&location.file)
            .await
            .map_err(|e| io_error("get", path, e))?;
        let meta = file
            .metadata()
            .await
            .map_err(|e| io_error("get", path, e))?;
        if meta.is_dir() {
            return Err(StorageError::NotFound { uri: path.to_uri() });
        }
        let path = path.clone();
        Ok(ReaderStream::with_capacity(file, READ_CHUNK_SIZE)
            .map(move |chunk| chunk.map_err(|e| StorageError::backend("read", &path, e)))
            .boxed())
    }

    #[tracing::instrument(level = "debug", name = "storage.size", skip_all, fields(tenant = %tenant, path = %path))]
    async fn size(&self, tenant: &str, path: &StoragePath) -> Result<u64, StorageError> {
        let location = self.locate("size", tenant, path).await?;
        let meta = tokio::fs::metadata(&location.file)
            .await
            .map_err(|e| io_error("size", path, e))?;
        if meta.is_dir() {
            return Err(StorageError::NotFound { uri: path.to_uri() });
        }
        Ok(meta.len())
    }

    #[tracing::instrument(level = "debug", name = "storage.exists", skip_all, fields(tenant = %tenant, path = %path))]
    async fn exists(&self, tenant: &str, path: &StoragePath) -> Result<bool, StorageError> {
        let location = self.locate("exists", tenant, path).await?;
        match tokio::fs::metadata(&location.file).await {
            Ok(meta) => Ok(meta.is_file()),
            Err(e) if is_missing(&e) => Ok(false),
            Err(e) => Err(StorageError::backend("exists", path, e)),
        }
    }

    #[tracing::instrument(level = "debug", name = "storage.delete", skip_all, fields(tenant = %tenant, path = %path))]
    async fn delete(&self, tenant: &str, path: &StoragePath) -> Result<bool, StorageError> {
        let location = self.locate("delete", tenant, path).await?;
        let path_for_work = path.clone();
        blocking("delete", path, move || {
            let backend = |e: io::Error| StorageError::backend("delete", &path_for_work, e);
            match std::fs::symlink_metadata(&location.file) {
                Err(e) if is_missing(&e) => return Ok(false),
                Err(e) => return Err(backend(e)),
                Ok(meta) if meta.is_dir() => return Ok(false),
                Ok(_) => {}
            }
            match std::fs::remove_file(&location.file) {
                Ok(()) => {}
                Err(e) if is_missing(&e) => return Ok(false),
                Err(e) => return Err(backend(e)),
            }
            if let Some(parent) = location.file.parent() {
                prune_empty_dirs(parent, &location.tenant_dir);
            }
            Ok(true)
        })
        .await
    }

    #[tracing::instrument(level = "debug", name = "storage.list", skip_all, fields(tenant = %tenant, prefix = %prefix))]
    async fn list(
        &self,
        tenant: &str,
        prefix: &StoragePath,
    ) -> Result<Vec<FileAttributes>, StorageError> {
        let location = self.locate("list", tenant, prefix).await?;
        let root = self.root.clone();
        let prefix_for_work = prefix.clone();
        blocking("list", prefix, move || {
            let work = || -> Result<Vec<FileAttributes>, FsError> {
                let Some(boundary) = tenant_boundary(&root, &location.tenant_dir)? else {
                    return Ok(Vec::new());
                };
                list_dir(&boundary, &location.file, &prefix_for_work)
            };
            work().map_err(|e| e.into_backend("list", &prefix_for_work))
        })
        .await
    }

    #[tracing::instrument(level = "debug", name = "storage.delete_prefix", skip_all, fields(tenant = %tenant, prefix = %prefix))]
    async fn delete_prefix(&self, tenant: &str, prefix: &StoragePath) -> Result<u64, StorageError> {
        let location = self.locate("delete_prefix", tenant, prefix).await?;
        let root = self.root.clone();
        let prefix_for_work = prefix.clone();
        let deleted = blocking("delete_prefix", prefix, move || {
            let work = || -> Result<u64, FsError> {
                let Some(boundary) = tenant_boundary(&root, &location.tenant_dir)? else {
                    return Ok(0);
                };
                delete_tree(&boundary, &location)
            };
            work().map_err(|e| e.into_backend("delete_prefix", &prefix_for_work))
        })
        .await?;
        tracing::debug!(deleted, "deleted prefix");
        Ok(deleted)
    }

    #[tracing::instrument(level = "debug", name = "storage.attributes", skip_all, fields(tenant = %tenant, path = %path))]
    async fn attributes(
        &self,
        tenant: &str,
        path: &StoragePath,
    ) -> Result<Attributes, StorageError> {
        let location = self.locate("attributes", tenant, path).await?;
        let path_for_work = path.clone();
        blocking("attributes", path, move || {
            let path = path_for_work;
            let meta =
                std::fs::metadata(&location.file).map_err(|e| io_error("attributes", &path, e))?;
            let last_modified = meta
                .modified()
                .ok()
                .map(chrono::DateTime::<chrono::Utc>::from);
            if meta.is_file() {
                return Ok(Attributes {
                    path,
                    kind: FileKind::File,
                    size: meta.len(),
                    last_modified,
                });
            }
            // A directory counts while something visible is in it (as an object-store prefix).
            let entries =
                std::fs::read_dir(&location.file).map_err(|e| io_error("attributes", &path, e))?;
            let visible = entries
                .filter_map(Result::ok)
                .any(|entry| !entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX));
            if !meta.is_dir() || !visible {
                return Err(StorageError::NotFound { uri: path.to_uri() });
            }
            Ok(Attributes {
                path,
                kind: FileKind::Directory,
                size: 0,
                last_modified,
            })
        })
        .await
    }

    #[tracing::instrument(level = "debug", name = "storage.move", skip_all, fields(tenant = %tenant, from = %from, to = %to))]
    async fn move_file(
        &self,
        tenant: &str,
        from: &StoragePath,
        to: &StoragePath,
    ) -> Result<(), StorageError> {
        let source = self.locate("move", tenant, from).await?;
        let target = self.locate("move", tenant, to).await?;
        let (from_for_work, to_for_work) = (from.clone(), to.clone());
        blocking("move", from, move || {
            let (from, to) = (from_for_work, to_for_work);
            match std::fs::symlink_metadata(&source.file) {
                Err(e) => return Err(io_error("move", &from, e)),
                Ok(meta) if meta.is_dir() => {
                    return Err(StorageError::NotFound { uri: from.to_uri() });
                }
                Ok(_) => {}
            }
            if source.file == target.file {
                return Ok(());
            }
            let backend = |e: io::Error| StorageError::backend("move", &to, e);
            let Some(dir) = target.file.parent() else {
                return Err(StorageError::InvalidUri {
                    uri: to.to_uri(),
                    reason: "no parent directory".to_string(),
                });
            };
            // A concurrent delete may prune the target's directory between its creation and the
            // rename: retry a few times, as `put` does.
            let mut attempt = 0;
            loop {
                std::fs::create_dir_all(dir).map_err(backend)?;
                match std::fs::rename(&source.file, &target.file) {
                    Ok(()) => break,
                    Err(e) if is_missing(&e) && attempt < 3 && source.file.exists() => {
                        attempt += 1;
                    }
                    Err(e) if is_missing(&e) => return Err(io_error("move", &from, e)),
                    Err(e) => return Err(backend(e)),
                }
            }
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(backend)?;
            if let Some(parent) = source.file.parent() {
                prune_empty_dirs(parent, &source.tenant_dir);
            }
            Ok(())
        })
        .await?;
        tracing::debug!("moved");
        Ok(())
    }
}
