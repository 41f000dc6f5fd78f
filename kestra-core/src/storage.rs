//! The InternalStorage seam: files addressed by `kestra:///` URIs.
//!
//! # Layout (Kestra's)
//!
//! `kestra:///<namespace as path>/<flow id>/executions/<execution id>/...`:
//! - task outputs: `.../executions/<id>/tasks/<task id>/<task run id>/<file>`
//! - FILE inputs: `.../executions/<id>/inputs/<input id>/<file>`
//! - trigger files: `.../executions/<id>/trigger/<trigger id>/<file>`
//!
//! and per namespace: `kestra:///<namespace as path>/_files/...` (namespace files),
//! `kestra:///<namespace as path>/_kv/<key>.ion` (key-value store), `<ns>[/<flow>]/states/...` (state
//! store, see [`crate::tasks::state`]). A namespace `company.team` becomes the path `company/team`.
//!
//! # Canonicalisation
//!
//! Every path goes through [`StoragePath::parse`] before any backend sees it: the path is
//! percent-decoded repeatedly until stable (so `%2E%2E` and `%252E%252E` are both `..`), then refused if
//! any segment is `.`, `..` or empty, or if it contains a backslash, a NUL or another control character.
//! A valid [`StoragePath`] therefore can never leave the root it is joined to, and
//! [`StoragePath::starts_with`] is a sound containment check (segment-wise, so `a/bc` is not inside
//! `a/b`). Backends must still refuse to follow symlinks out of their root (local storage checks it).
//!
//! # Contract (checked by the conformance suite in `testkit`)
//!
//! `put` then `get` returns the same bytes; `put` replaces; `size`, `exists`, `delete` (true if
//! something was deleted), `list` (direct children of a directory-like prefix), `delete_prefix`
//! (everything under a prefix), `attributes` (kind, size, last modification of a file or of a
//! directory-like prefix), `move_file` (a file to another path of the same tenant); a missing file is [`StorageError::NotFound`], and so is `get`/`size` of
//! a directory-like prefix. A failed or cancelled `put` leaves the previous content (or nothing)
//! visible, never a half-written file. A directory emptied by `delete`/`delete_prefix` disappears from
//! `list`, as on object stores. Every operation is scoped by tenant; an invalid tenant id (empty,
//! containing `/`, `\\`, NUL, or starting with `.`) is [`StorageError::InvalidUri`]. Reads and writes
//! are streams of bytes, so large files never sit in memory.

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use std::fmt;

/// URI scheme of internal storage.
pub const SCHEME: &str = "kestra://";

/// Errors of the storage seam.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The URI is not a valid `kestra:///` URI or would escape its root.
    #[error("invalid storage URI '{uri}': {reason}")]
    InvalidUri {
        /// The URI as given.
        uri: String,
        /// Why it was refused.
        reason: String,
    },
    /// No such file.
    #[error("file not found: {uri}")]
    NotFound {
        /// The URI.
        uri: String,
    },
    /// The caller may not access this URI from where it runs.
    #[error("access to '{uri}' is not allowed from {scope}")]
    Forbidden {
        /// The URI.
        uri: String,
        /// The allowed scope.
        scope: String,
    },
    /// The backend failed.
    #[error("storage error during {operation} on '{uri}': {source}")]
    Backend {
        /// What was being done.
        operation: &'static str,
        /// The URI.
        uri: String,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl StorageError {
    /// Wrap a backend error.
    pub fn backend(
        operation: &'static str,
        uri: &StoragePath,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> StorageError {
        StorageError::Backend {
            operation,
            uri: uri.to_uri(),
            source: Box::new(source),
        }
    }
}

/// A canonical, relative storage path (`company/team/flow/executions/...`), safe to join to a root.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StoragePath(String);

impl TryFrom<String> for StoragePath {
    type Error = StorageError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        StoragePath::parse(&value)
    }
}

impl From<StoragePath> for String {
    fn from(value: StoragePath) -> Self {
        value.to_uri()
    }
}

fn invalid(uri: &str, reason: impl Into<String>) -> StorageError {
    StorageError::InvalidUri {
        uri: uri.to_string(),
        reason: reason.into(),
    }
}

impl StoragePath {
    /// Parse and canonicalise a `kestra:///a/b` URI or a plain `a/b` / `/a/b` path.
    pub fn parse(input: &str) -> Result<StoragePath, StorageError> {
        let rest = match input.strip_prefix(SCHEME) {
            Some(r) => r,
            None if input.contains("://") => {
                return Err(invalid(input, "only kestra:// URIs are internal storage"));
            }
            None => input,
        };
        // Decode until stable, so that double (or deeper) encoding cannot smuggle `..` through.
        let mut decoded = rest.to_string();
        for _ in 0..8 {
            let next = percent_encoding::percent_decode_str(&decoded)
                .decode_utf8()
                .map_err(|_| invalid(input, "not valid UTF-8 once percent-decoded"))?
                .into_owned();
            if next == decoded {
                break;
            }
            decoded = next;
        }
        if decoded.contains('%')
            && percent_encoding::percent_decode_str(&decoded)
                .decode_utf8()
                .ok()
                .as_deref()
                != Some(decoded.as_str())
        {
            return Err(invalid(input, "too many levels of percent-encoding"));
        }
        if decoded.chars().any(|c| c == '\0' || c.is_control()) {
            return Err(invalid(input, "contains a NUL or control character"));
        }
        if decoded.contains('\\') {
            return Err(invalid(input, "contains a backslash"));
        }
        let trimmed = decoded.trim_start_matches('/');
        if trimmed.is_empty() {
            return Err(invalid(input, "empty path"));
        }
        for segment in trimmed.split('/') {
            match segment {
                "" => return Err(invalid(input, "contains an empty segment ('//')")),
                "." | ".." => {
                    return Err(invalid(input, format!("contains a '{segment}' segment")));
                }
                _ => {}
            }
        }
        Ok(StoragePath(trimmed.to_string()))
    }

    /// Build a path from segments, each checked (no `/` inside a segment).
    pub fn from_segments<I, S>(segments: I) -> Result<StoragePath, StorageError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let parts: Vec<String> = segments
            .into_iter()
            .map(|s| s.as_ref().to_string())
            .collect();
        for p in &parts {
            if p.contains('/') {
                return Err(invalid(
                    &parts.join("/"),
                    format!("segment '{p}' contains '/'"),
                ));
            }
        }
        StoragePath::parse(&parts.join("/"))
    }

    /// The relative path (`a/b/c`).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `kestra:///a/b/c` URI.
    pub fn to_uri(&self) -> String {
        format!("{SCHEME}/{}", self.0)
    }

    /// Segments.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// Last segment (the file name).
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// Append a relative path (checked like any other).
    pub fn join(&self, relative: &str) -> Result<StoragePath, StorageError> {
        let rel = StoragePath::parse(relative)?;
        Ok(StoragePath(format!("{}/{}", self.0, rel.0)))
    }

    /// Segment-wise prefix check (`a/b` contains `a/b/c`, not `a/bc`).
    pub fn starts_with(&self, prefix: &StoragePath) -> bool {
        self.0 == prefix.0 || self.0.starts_with(&format!("{}/", prefix.0))
    }

    /// `company/team` for namespace `company.team`.
    pub fn namespace(namespace: &str) -> Result<StoragePath, StorageError> {
        StoragePath::from_segments(namespace.split('.'))
    }

    /// Root of an execution's files: `<ns>/<flow>/executions/<id>`.
    pub fn execution(
        namespace: &str,
        flow_id: &str,
        execution_id: &str,
    ) -> Result<StoragePath, StorageError> {
        let ns = StoragePath::namespace(namespace)?;
        ns.join(&StoragePath::from_segments([flow_id, "executions", execution_id])?.0)
    }

    /// Directory of a task run's output files: `.../executions/<id>/tasks/<task>/<task run>`.
    pub fn task_run(
        namespace: &str,
        flow_id: &str,
        execution_id: &str,
        task_id: &str,
        task_run_id: &str,
    ) -> Result<StoragePath, StorageError> {
        StoragePath::execution(namespace, flow_id, execution_id)?
            .join(&StoragePath::from_segments(["tasks", task_id, task_run_id])?.0)
    }

    /// A FILE input: `.../executions/<id>/inputs/<input id>/<file name>`.
    pub fn input_file(
        namespace: &str,
        flow_id: &str,
        execution_id: &str,
        input_id: &str,
        file_name: &str,
    ) -> Result<StoragePath, StorageError> {
        StoragePath::execution(namespace, flow_id, execution_id)?
            .join(&StoragePath::from_segments(["inputs", input_id, file_name])?.0)
    }
}

impl fmt::Display for StoragePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_uri())
    }
}

/// A stream of file content.
pub type ByteStream = BoxStream<'static, Result<Bytes, StorageError>>;

/// An entry returned by [`InternalStorage::list`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileAttributes {
    /// Its path.
    pub path: StoragePath,
    /// Size in bytes (0 for directories).
    pub size: u64,
    /// A directory-like prefix rather than a file.
    pub directory: bool,
}

/// What a path is, as [`InternalStorage::attributes`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum FileKind {
    /// A file.
    File,
    /// A directory-like prefix: something is stored under it.
    Directory,
}

/// Attributes of one path (Kestra's `FileAttributes`): kind, size, last modification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attributes {
    /// The path asked about.
    pub path: StoragePath,
    /// File or directory-like prefix.
    pub kind: FileKind,
    /// Size in bytes (0 for a directory).
    pub size: u64,
    /// When the file was last written (for a directory: the local store gives its directory's
    /// time, object stores have no such thing and give `None`).
    pub last_modified: Option<chrono::DateTime<chrono::Utc>>,
}

/// The internal storage seam. See the module documentation for the contract.
#[async_trait]
pub trait InternalStorage: Send + Sync + 'static {
    /// Write (or replace) a file from a stream; returns the number of bytes written.
    async fn put(
        &self,
        tenant: &str,
        path: &StoragePath,
        data: ByteStream,
    ) -> Result<u64, StorageError>;
    /// Read a file as a stream.
    async fn get(&self, tenant: &str, path: &StoragePath) -> Result<ByteStream, StorageError>;
    /// Size of a file.
    async fn size(&self, tenant: &str, path: &StoragePath) -> Result<u64, StorageError>;
    /// Whether a file exists.
    async fn exists(&self, tenant: &str, path: &StoragePath) -> Result<bool, StorageError>;
    /// Delete a file; true if it existed.
    async fn delete(&self, tenant: &str, path: &StoragePath) -> Result<bool, StorageError>;
    /// Direct children of a directory-like prefix, sorted by path; empty if none.
    async fn list(
        &self,
        tenant: &str,
        prefix: &StoragePath,
    ) -> Result<Vec<FileAttributes>, StorageError>;
    /// Delete every file under a prefix; returns how many files were deleted.
    async fn delete_prefix(&self, tenant: &str, prefix: &StoragePath) -> Result<u64, StorageError>;
    /// Kind, size and last modification of a file or of a directory-like prefix (a prefix with
    /// something stored under it); [`StorageError::NotFound`] when it is neither.
    async fn attributes(
        &self,
        tenant: &str,
        path: &StoragePath,
    ) -> Result<Attributes, StorageError>;
    /// Kestra's `move`: move the file `from` to `to` within the same tenant, replacing `to` if it
    /// exists; afterwards `from` is gone and `to` has its content. Files only: a missing `from`, or
    /// one that is a directory-like prefix, is [`StorageError::NotFound`] (and nothing changes).
    /// Both are [`StoragePath`]s, so neither can leave the tenant; callers confine them to a
    /// namespace or an execution as they do for every other operation. Moving a file onto itself
    /// keeps it. On the local store it is one rename (atomic); on object stores it is a server-side
    /// copy then a delete, so for a moment both exist.
    async fn move_file(
        &self,
        tenant: &str,
        from: &StoragePath,
        to: &StoragePath,
    ) -> Result<(), StorageError>;
}

/// Convenience: whole-buffer helpers over any [`InternalStorage`].
#[async_trait]
pub trait InternalStorageExt: InternalStorage {
    /// Write a buffer.
    async fn put_bytes(
        &self,
        tenant: &str,
        path: &StoragePath,
        data: Bytes,
    ) -> Result<u64, StorageError> {
        self.put(
            tenant,
            path,
            futures::stream::once(async move { Ok(data) }).boxed(),
        )
        .await
    }
    /// Read a whole file into memory.
    async fn get_bytes(&self, tenant: &str, path: &StoragePath) -> Result<Bytes, StorageError> {
        let mut stream = self.get(tenant, path).await?;
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(Bytes::from(out))
    }
}

impl<T: InternalStorage + ?Sized> InternalStorageExt for T {}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(s: &str) -> bool {
        StoragePath::parse(s).is_err()
    }

    #[test]
    fn canonical_paths() -> Result<(), StorageError> {
        let p = StoragePath::parse("kestra:///company/team/flow/executions/abc/file.txt")?;
        assert_eq!(p.as_str(), "company/team/flow/executions/abc/file.txt");
        assert_eq!(
            p.to_uri(),
            "kestra:///company/team/flow/executions/abc/file.txt"
        );
        assert_eq!(p.file_name(), "file.txt");
        assert_eq!(StoragePath::parse("/a/b")?.as_str(), "a/b");
        assert_eq!(StoragePath::parse("a%20b/c")?.as_str(), "a b/c");
        Ok(())
    }

    #[test]
    fn traversal_is_refused() {
        for bad in [
            "kestra:///a/../b",
            "kestra:///a/%2E%2E/b",
            "kestra:///a/%2e%2e/b",
            "kestra:///a/%252E%252E/b",
            "kestra:///a/%25252E%25252E/b",
            "kestra:///a/..\\b",
            "kestra:///a/b\\..\\..\\c",
            "kestra:///a/./b",
            "kestra:///a//b",
            "kestra:///a/b\0c",
            "kestra:///a/%00/b",
            "kestra:///",
            "",
            "..",
            "file:///etc/passwd",
            "s3://bucket/key",
        ] {
            assert!(refused(bad), "{bad:?} must be refused");
        }
    }

    #[test]
    fn containment_is_segment_wise() -> Result<(), StorageError> {
        let root = StoragePath::execution("company.team", "flow", "exec1")?;
        assert_eq!(root.as_str(), "company/team/flow/executions/exec1");
        let inside = root.join("tasks/t/tr/out.txt")?;
        assert!(inside.starts_with(&root));
        let sibling = StoragePath::parse("company/team/flow/executions/exec10/x")?;
        assert!(!sibling.starts_with(&root));
        assert!(root.join("../exec2/x").is_err());
        assert!(StoragePath::from_segments(["a/b"]).is_err());
        let input = StoragePath::input_file("ns", "f", "e", "file", "data.csv")?;
        assert_eq!(input.as_str(), "ns/f/executions/e/inputs/file/data.csv");
        Ok(())
    }
}
