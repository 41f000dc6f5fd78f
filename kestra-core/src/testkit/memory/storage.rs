//! In-memory internal storage ([`MemoryStorage`]) for tests.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use chrono::{DateTime, Utc};

use crate::storage::{
    Attributes, ByteStream, FileAttributes, FileKind, InternalStorage, StorageError, StoragePath,
};

/// Files in memory, keyed by (tenant, path). It passes the storage conformance suite
/// ([`crate::testkit::storage`]): a failed `put` keeps the previous content, `list` gives the
/// direct children (directories flagged), tenant ids that are not one plain segment are refused.
/// The real backends live in `kestra-storage`.
#[derive(Default)]
pub struct MemoryStorage {
    files: Mutex<BTreeMap<(String, String), Bytes>>,
    modified: Mutex<BTreeMap<(String, String), DateTime<Utc>>>,
}

impl MemoryStorage {
    /// An empty store.
    pub fn new() -> MemoryStorage {
        MemoryStorage::default()
    }

    /// How many files the store holds (every tenant).
    pub fn len(&self) -> usize {
        self.files().len()
    }

    /// Whether the store holds no file.
    pub fn is_empty(&self) -> bool {
        self.files().is_empty()
    }

    fn files(&self) -> MutexGuard<'_, BTreeMap<(String, String), Bytes>> {
        self.files.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn modified(&self) -> MutexGuard<'_, BTreeMap<(String, String), DateTime<Utc>>> {
        self.modified.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The key of a file, once the tenant is known to be one plain segment (as the local storage checks).
fn key(tenant: &str, path: &StoragePath) -> Result<(String, String), StorageError> {
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
        None => Ok((tenant.to_string(), path.as_str().to_string())),
        Some(reason) => Err(StorageError::InvalidUri {
            uri: path.to_uri(),
            reason: format!("tenant id {tenant:?} {reason}"),
        }),
    }
}

/// Size of the chunks `get` streams.
const CHUNK: usize = 64 * 1024;

fn not_found(path: &StoragePath) -> StorageError {
    StorageError::NotFound { uri: path.to_uri() }
}

#[async_trait]
impl InternalStorage for MemoryStorage {
    async fn put(
        &self,
        tenant: &str,
        path: &StoragePath,
        mut data: ByteStream,
    ) -> Result<u64, StorageError> {
        let key = key(tenant, path)?;
        let mut buf = Vec::new();
        while let Some(chunk) = data.next().await {
            buf.extend_from_slice(&chunk?);
        }
        let n = buf.len() as u64;
        self.files().insert(key.clone(), Bytes::from(buf));
        self.modified().insert(key, Utc::now());
        Ok(n)
    }

    async fn get(&self, tenant: &str, path: &StoragePath) -> Result<ByteStream, StorageError> {
        let data = self
            .files()
            .get(&key(tenant, path)?)
            .cloned()
            .ok_or_else(|| not_found(path))?;
        // A stream of chunks, as a real store reads a large file.
        let chunks: Vec<Result<Bytes, StorageError>> = (0..data.len().max(1))
            .step_by(CHUNK)
            .map(|at| Ok(data.slice(at..data.len().min(at + CHUNK))))
            .collect();
        Ok(futures::stream::iter(chunks).boxed())
    }

    async fn size(&self, tenant: &str, path: &StoragePath) -> Result<u64, StorageError> {
        self.files()
            .get(&key(tenant, path)?)
            .map(|b| b.len() as u64)
            .ok_or_else(|| not_found(path))
    }

    async fn exists(&self, tenant: &str, path: &StoragePath) -> Result<bool, StorageError> {
        Ok(self.files().contains_key(&key(tenant, path)?))
    }

    async fn delete(&self, tenant: &str, path: &StoragePath) -> Result<bool, StorageError> {
        let key = key(tenant, path)?;
        self.modified().remove(&key);
        Ok(self.files().remove(&key).is_some())
    }

    async fn list(
        &self,
        tenant: &str,
        prefix: &StoragePath,
    ) -> Result<Vec<FileAttributes>, StorageError> {
        let (tenant, _) = key(tenant, prefix)?;
        let depth = prefix.segments().count();
        let mut files = Vec::new();
        let mut directories = BTreeSet::new();
        for ((t, p), data) in self.files().iter() {
            if *t != tenant {
                continue;
            }
            let path = StoragePath::parse(p)?;
            if path == *prefix || !path.starts_with(prefix) {
                continue;
            }
            let segments: Vec<&str> = path.segments().collect();
            if segments.len() == depth + 1 {
                files.push(FileAttributes {
                    path: path.clone(),
                    size: data.len() as u64,
                    directory: false,
                });
            } else {
                directories.insert(StoragePath::from_segments(&segments[..=depth])?);
            }
        }
        let mut out: Vec<FileAttributes> = directories
            .into_iter()
            .map(|path| FileAttributes {
                path,
                size: 0,
                directory: true,
            })
            .chain(files)
            .collect();
        out.sort_by(|a, b| a.path.as_str().cmp(b.path.as_str()));
        Ok(out)
    }

    async fn delete_prefix(&self, tenant: &str, prefix: &StoragePath) -> Result<u64, StorageError> {
        let (tenant, _) = key(tenant, prefix)?;
        let mut files = self.files();
        let before = files.len();
        files.retain(|(t, p), _| {
            !(*t == tenant && StoragePath::parse(p).is_ok_and(|path| path.starts_with(prefix)))
        });
        Ok((before - files.len()) as u64)
    }

    async fn attributes(
        &self,
        tenant: &str,
        path: &StoragePath,
    ) -> Result<Attributes, StorageError> {
        let key = key(tenant, path)?;
        if let Some(data) = self.files().get(&key) {
            return Ok(Attributes {
                path: path.clone(),
                kind: FileKind::File,
                size: data.len() as u64,
                last_modified: self.modified().get(&key).copied(),
            });
        }
        let has_children = self.files().keys().any(|(t, p)| {
            *t == key.0 && StoragePath::parse(p).is_ok_and(|f| f.starts_with(path) && f != *path)
        });
        if has_children {
            Ok(Attributes {
                path: path.clone(),
                kind: FileKind::Directory,
                size: 0,
                last_modified: None,
            })
        } else {
            Err(not_found(path))
        }
    }

    async fn move_file(
        &self,
        tenant: &str,
        from: &StoragePath,
        to: &StoragePath,
    ) -> Result<(), StorageError> {
        let source = key(tenant, from)?;
        let target = key(tenant, to)?;
        let mut files = self.files();
        let data = files.remove(&source).ok_or_else(|| not_found(from))?;
        files.insert(target.clone(), data);
        drop(files);
        let mut modified = self.modified();
        let when = modified.remove(&source).unwrap_or_else(Utc::now);
        modified.insert(target, when);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_in_memory_storage_passes_the_whole_suite() {
        crate::testkit::storage::run_all(&MemoryStorage::new()).await;
    }
}
