//! The key-value store (`kv.Set/Get/Delete` tasks and the `kv()` expression function), kept in
//! internal storage at `kestra:///<namespace as path>/_kv/<key>.json` as a JSON document
//! `{"value": ..., "type": ..., "expirationDate": ..., "updateDate": ...}`. Expired entries read as
//! missing (and are deleted when read).

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::storage::{InternalStorage, InternalStorageExt, StorageError, StoragePath};

/// Errors of the KV store.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The key is not valid (`^[a-zA-Z0-9][a-zA-Z0-9._-]*$`).
    #[error(
        "invalid KV key '{0}': keys start with a letter or digit and contain only letters, digits, '.', '_' and '-'"
    )]
    InvalidKey(String),
    /// Storage failed.
    #[error("{0}")]
    Storage(#[from] StorageError),
    /// A stored entry is not valid JSON.
    #[error("KV entry '{key}' in namespace '{namespace}' is corrupt: {source}")]
    Corrupt {
        /// Namespace.
        namespace: String,
        /// Key.
        key: String,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
}

/// One stored KV entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KvEntry {
    /// The value.
    pub value: Value,
    /// Declared type (STRING, NUMBER, BOOLEAN, DATETIME, DATE, DURATION, JSON), if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#type: Option<String>,
    /// When the entry expires, if it has a TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration_date: Option<DateTime<Utc>>,
    /// Last write.
    pub update_date: DateTime<Utc>,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// The KV store of one tenant over internal storage.
#[derive(Clone)]
pub struct KvStore {
    storage: Arc<dyn InternalStorage>,
    tenant: String,
}

impl std::fmt::Debug for KvStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvStore")
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

/// Whether `key` is a valid KV key.
pub fn valid_key(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

impl KvStore {
    /// The store of `tenant`.
    pub fn new(storage: Arc<dyn InternalStorage>, tenant: &str) -> KvStore {
        KvStore {
            storage,
            tenant: tenant.to_string(),
        }
    }

    /// Where a key is stored.
    pub fn path(namespace: &str, key: &str) -> Result<StoragePath, KvError> {
        if !valid_key(key) {
            return Err(KvError::InvalidKey(key.to_string()));
        }
        Ok(StoragePath::namespace(namespace)?.join(&format!("_kv/{key}.json"))?)
    }

    /// Read a key; `None` if missing or expired.
    pub async fn get(&self, namespace: &str, key: &str) -> Result<Option<KvEntry>, KvError> {
        let path = KvStore::path(namespace, key)?;
        let bytes = match self.storage.get_bytes(&self.tenant, &path).await {
            Ok(b) => b,
            Err(StorageError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let entry: KvEntry = serde_json::from_slice(&bytes).map_err(|source| KvError::Corrupt {
            namespace: namespace.to_string(),
            key: key.to_string(),
            source,
        })?;
        if entry.expiration_date.is_some_and(|at| at <= Utc::now()) {
            self.storage.delete(&self.tenant, &path).await?;
            return Ok(None);
        }
        Ok(Some(entry))
    }

    /// Write a key (replacing it).
    pub async fn set(&self, namespace: &str, key: &str, entry: &KvEntry) -> Result<(), KvError> {
        let path = KvStore::path(namespace, key)?;
        let body = serde_json::to_vec(entry).map_err(|source| KvError::Corrupt {
            namespace: namespace.to_string(),
            key: key.to_string(),
            source,
        })?;
        self.storage
            .put_bytes(&self.tenant, &path, Bytes::from(body))
            .await?;
        Ok(())
    }

    /// Every live key of a namespace (not of its children) with its entry, sorted by key; expired
    /// entries are left out (and deleted, as [`KvStore::get`] does).
    pub async fn list(&self, namespace: &str) -> Result<Vec<(String, KvEntry)>, KvError> {
        let dir = StoragePath::namespace(namespace)?.join("_kv")?;
        let mut out = Vec::new();
        for file in self.storage.list(&self.tenant, &dir).await? {
            if file.directory {
                continue;
            }
            let Some(key) = file.path.file_name().strip_suffix(".json") else {
                continue;
            };
            if !valid_key(key) {
                continue;
            }
            if let Some(entry) = self.get(namespace, key).await? {
                out.push((key.to_string(), entry));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Delete a key; true if it existed (and had not expired).
    pub async fn delete(&self, namespace: &str, key: &str) -> Result<bool, KvError> {
        let existed = self.get(namespace, key).await?.is_some();
        let path = KvStore::path(namespace, key)?;
        self.storage.delete(&self.tenant, &path).await?;
        Ok(existed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_validated_and_mapped_under_the_namespace() {
        assert!(valid_key("my_key.v-1"));
        assert!(!valid_key(""));
        assert!(!valid_key(".hidden"));
        assert!(!valid_key("a/b"));
        assert!(!valid_key("a b"));
        let p = KvStore::path("company.team", "k1").map(|p| p.to_uri()).ok();
        assert_eq!(p.as_deref(), Some("kestra:///company/team/_kv/k1.json"));
        assert!(KvStore::path("company.team", "../x").is_err());
    }
}
