//! [`InternalStorage`] on object stores (S3 and compatibles, Google Cloud Storage, Azure Blob Storage),
//! one adapter over the [`object_store`] crate.
//!
//! # Layout
//!
//! A file `kestra:///a/b/c.txt` of tenant `main` is the object `<prefix>/main/a/b/c.txt` of the
//! configured bucket (container on Azure); `<prefix>` is optional. Each segment of the key is the
//! segment of the canonical [`StoragePath`], percent-encoded where object stores advise against a
//! character (`%`, `#`, `?`, `\`, `{`, ... - see [`object_store::path::PathPart`]); listing decodes
//! them again. Since every path went through [`StoragePath::parse`] (no `..`, `.`, empty segment,
//! backslash or NUL) and the tenant is one plain segment, no key can leave `<prefix>/<tenant>/`.
//!
//! Directories do not exist on object stores: a "directory" is listed while some object lies under it,
//! which is the behaviour the conformance suite asks of every store.
//!
//! # Streaming
//!
//! `put` reads its input stream up to [`ObjectOptions::part_size`]: a smaller file is sent as one
//! `PUT`; a larger one becomes a multipart upload (S3 multipart, GCS XML multipart, Azure block list)
//! with at most [`ObjectOptions::upload_concurrency`] parts in flight, so memory stays around
//! `part_size x (upload_concurrency + 1)` whatever the file's size. An object only becomes visible when
//! the upload completes: if the input stream fails the upload is aborted and the previous content (or
//! nothing) stays. A `put` whose future is dropped mid-way leaves an incomplete multipart upload that
//! is never visible (S3 and GCS keep its parts until a lifecycle rule removes them; Azure drops
//! uncommitted blocks after a week). `get` streams the object's body as it arrives.
//!
//! # Errors and retries
//!
//! Transient failures (connection errors, timeouts, 5xx, 429) are retried with exponential backoff by
//! `object_store` ([`ObjectOptions::max_retries`], [`ObjectOptions::retry_timeout`]).
//! `connect` (of [`S3Config`], ...) lists the prefix once ([`ObjectStorage::check`]), so a missing bucket
//! ([`ObjectStorageError::MissingBucket`]) or refused credentials
//! ([`ObjectStorageError::Credentials`]) are reported at start, naming the bucket and the store,
//! rather than at the first task.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use kestra_core::storage::{
    Attributes, ByteStream, FileAttributes, FileKind, InternalStorage, StorageError, StoragePath,
};
pub use object_store;

#[cfg(feature = "gcs")]
mod gcs_upload;
#[cfg(feature = "gcs")]
pub use gcs_upload::UploadError as GcsUploadError;

use object_store::path::{Path as ObjectPath, PathPart};
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
    WriteMultipart,
};

/// Default size of a multipart upload's part (and the threshold above which `put` uses one).
pub const DEFAULT_PART_SIZE: usize = 8 * 1024 * 1024;
/// Default number of parts uploaded at once.
pub const DEFAULT_UPLOAD_CONCURRENCY: usize = 2;

/// The smallest part S3 accepts (except for the last one).
const MIN_PART_SIZE: usize = 5 * 1024 * 1024;

/// Which kind of object store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// Amazon S3 or an S3-compatible store (MinIO, ...).
    S3,
    /// Google Cloud Storage.
    Gcs,
    /// Azure Blob Storage.
    Azure,
}

impl StoreKind {
    /// `S3`, `GCS`, `Azure Blob`.
    pub fn name(self) -> &'static str {
        match self {
            StoreKind::S3 => "S3",
            StoreKind::Gcs => "GCS",
            StoreKind::Azure => "Azure Blob",
        }
    }

    fn bucket_word(self) -> &'static str {
        match self {
            StoreKind::Azure => "container",
            _ => "bucket",
        }
    }
}

/// Where a store points: its kind and bucket (container), shown in every error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreLocation {
    /// The kind of store.
    pub kind: StoreKind,
    /// The bucket (S3, GCS) or container (Azure).
    pub bucket: String,
}

impl fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} '{}'",
            self.kind.name(),
            self.kind.bucket_word(),
            self.bucket
        )
    }
}

/// Errors of the object stores: returned by the constructors, or carried as the source of
/// [`StorageError::Backend`].
#[derive(Debug, thiserror::Error)]
pub enum ObjectStorageError {
    /// The configuration is incomplete or contradictory.
    #[error("invalid {kind} storage configuration: {message}", kind = .kind.name())]
    Config {
        /// The store.
        kind: StoreKind,
        /// What is wrong, naming the setting.
        message: String,
    },
    /// `object_store` refused to build the client (bad URL, unreadable credentials, ...).
    #[error("cannot set up {store}: {source}")]
    Build {
        /// The store.
        store: StoreLocation,
        /// Cause.
        #[source]
        source: object_store::Error,
    },
    /// The bucket (container) does not exist.
    #[error("{store} does not exist (create it, or fix the {word} name): {source}", word = .store.kind.bucket_word())]
    MissingBucket {
        /// The store.
        store: StoreLocation,
        /// Cause.
        #[source]
        source: object_store::Error,
    },
    /// The credentials were refused, or lack a permission.
    #[error(
        "{store} refused the credentials (check the access key and secret, or the role's permissions): {source}"
    )]
    Credentials {
        /// The store.
        store: StoreLocation,
        /// Cause.
        #[source]
        source: object_store::Error,
    },
    /// Any other failure of a request (after retries for transient ones).
    #[error("request to {store} failed: {source}")]
    Request {
        /// The store.
        store: StoreLocation,
        /// Cause.
        #[source]
        source: object_store::Error,
    },
}

/// Settings shared by every object store.
#[derive(Debug, Clone)]
pub struct ObjectOptions {
    /// Key prefix inside the bucket (`a/b`), none by default. Checked like a storage path.
    pub prefix: Option<String>,
    /// Size of a multipart upload's part, and the size above which `put` uses a multipart upload
    /// (at least 5 MiB, S3's minimum part size). Default [`DEFAULT_PART_SIZE`].
    pub part_size: usize,
    /// Parts uploaded at once by one `put` (at least 1). Default [`DEFAULT_UPLOAD_CONCURRENCY`].
    pub upload_concurrency: usize,
    /// Retries of a transient failure (default 10; 0 disables retries).
    pub max_retries: usize,
    /// No retry starts later than this after the first attempt (default 3 minutes).
    pub retry_timeout: Duration,
    /// Timeout of one request (default 5 minutes: a part upload on a slow link must fit).
    pub request_timeout: Duration,
    /// Timeout to establish a connection (default 5 seconds).
    pub connect_timeout: Duration,
}

impl Default for ObjectOptions {
    fn default() -> Self {
        ObjectOptions {
            prefix: None,
            part_size: DEFAULT_PART_SIZE,
            upload_concurrency: DEFAULT_UPLOAD_CONCURRENCY,
            max_retries: 10,
            retry_timeout: Duration::from_secs(180),
            request_timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl ObjectOptions {
    fn retry(&self) -> RetryConfig {
        RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(15),
                base: 2.0,
            },
            max_retries: self.max_retries,
            retry_timeout: self.retry_timeout,
        }
    }

    fn client(&self, endpoint: Option<&str>) -> ClientOptions {
        ClientOptions::new()
            .with_timeout(self.request_timeout)
            .with_connect_timeout(self.connect_timeout)
            .with_allow_http(endpoint.is_some_and(|e| e.starts_with("http://")))
    }
}

/// Install rustls' ring provider as the process default, unless one is installed already (the
/// cloud features build rustls without aws-lc-rs).
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// [`InternalStorage`] on an object store. Cheap to clone.
#[derive(Clone)]
pub struct ObjectStorage {
    store: Arc<dyn ObjectStore>,
    location: StoreLocation,
    /// Segments of the configured prefix.
    prefix: Vec<PathPart<'static>>,
    part_size: usize,
    upload_concurrency: usize,
    /// GCS writes through resumable uploads (see `gcs_upload`).
    #[cfg(feature = "gcs")]
    gcs_uploader: Option<gcs_upload::ResumableUploader>,
}

impl fmt::Debug for ObjectStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectStorage")
            .field("location", &self.location)
            .field("prefix", &self.base().to_string())
            .field("part_size", &self.part_size)
            .field("upload_concurrency", &self.upload_concurrency)
            .finish_non_exhaustive()
    }
}

impl ObjectStorage {
    /// Wrap an already configured `object_store` (no check is made; see [`ObjectStorage::check`]).
    pub fn from_store(
        store: Arc<dyn ObjectStore>,
        location: StoreLocation,
        options: &ObjectOptions,
    ) -> Result<ObjectStorage, ObjectStorageError> {
        let config_error = |message: String| ObjectStorageError::Config {
            kind: location.kind,
            message,
        };
        let prefix = match options.prefix.as_deref().map(str::trim) {
            None | Some("") | Some("/") => Vec::new(),
            Some(p) => StoragePath::parse(p.trim_end_matches('/'))
                .map_err(|e| config_error(format!("prefix: {e}")))?
                .segments()
                .map(|s| PathPart::from(s.to_string()))
                .collect(),
        };
        if options.part_size < MIN_PART_SIZE {
            return Err(config_error(format!(
                "part size {} is below the 5 MiB minimum of multipart uploads",
                options.part_size
            )));
        }
        if options.upload_concurrency == 0 {
            return Err(config_error("upload concurrency must be at least 1".into()));
        }
        Ok(ObjectStorage {
            store,
            location,
            prefix,
            part_size: options.part_size,
            upload_concurrency: options.upload_concurrency,
            #[cfg(feature = "gcs")]
            gcs_uploader: None,
        })
    }

    /// The underlying `object_store` (keys include the prefix and the tenant: see the module doc).
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Where this store points.
    pub fn location(&self) -> &StoreLocation {
        &self.location
    }

    /// List the prefix once: a missing bucket is [`ObjectStorageError::MissingBucket`], refused
    /// credentials [`ObjectStorageError::Credentials`].
    pub async fn check(&self) -> Result<(), ObjectStorageError> {
        let base = self.base();
        let base = if self.prefix.is_empty() {
            None
        } else {
            Some(&base)
        };
        match self.store.list_with_delimiter(base).await {
            Ok(_) => {
                tracing::debug!(store = %self.location, "object storage reachable");
                Ok(())
            }
            Err(source) => Err(self.classify(source, true)),
        }
    }

    /// The configured prefix as a key.
    fn base(&self) -> ObjectPath {
        self.prefix.iter().cloned().collect()
    }

    /// The object key of `path` in `tenant`, after checking the tenant.
    fn key(&self, tenant: &str, path: &StoragePath) -> Result<ObjectPath, StorageError> {
        crate::local::validate_tenant(tenant, path)?;
        Ok(self
            .prefix
            .iter()
            .cloned()
            .chain(std::iter::once(PathPart::from(tenant)))
            .chain(path.segments().map(PathPart::from))
            .collect())
    }

    /// Number of key segments before a storage path: prefix + tenant.
    fn base_len(&self) -> usize {
        self.prefix.len() + 1
    }

    /// The storage path of an object key listed under this store, if it decodes to a valid one.
    fn storage_path(&self, key: &ObjectPath) -> Option<StoragePath> {
        let segments: Vec<String> = key
            .parts()
            .skip(self.base_len())
            .map(|part| {
                percent_encoding::percent_decode_str(part.as_ref())
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .collect();
        match StoragePath::from_segments(&segments) {
            // A name that canonicalises to something else (say `%41`) cannot be addressed: skip it.
            Ok(path) if path.segments().eq(segments.iter().map(String::as_str)) => Some(path),
            _ => {
                tracing::warn!(store = %self.location, key = %key, "skipping an object whose key is not a valid storage path");
                None
            }
        }
    }

    /// Sort an `object_store` error: missing bucket (for listings, where a 404 can only be the
    /// bucket), refused credentials, anything else.
    fn classify(
        &self,
        source: object_store::Error,
        not_found_is_bucket: bool,
    ) -> ObjectStorageError {
        let store = self.location.clone();
        // Some listings (Azure's) wrap the HTTP status in a generic error: read it from the chain.
        let status = http_status(&source);
        match source {
            object_store::Error::NotFound { .. } if not_found_is_bucket => {
                ObjectStorageError::MissingBucket { store, source }
            }
            _ if not_found_is_bucket && status == Some(404) => {
                ObjectStorageError::MissingBucket { store, source }
            }
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => {
                ObjectStorageError::Credentials { store, source }
            }
            _ if matches!(status, Some(401 | 403)) => {
                ObjectStorageError::Credentials { store, source }
            }
            source => ObjectStorageError::Request { store, source },
        }
    }

    /// An `object_store` error of an operation on one object: a 404 is [`StorageError::NotFound`].
    fn object_error(
        &self,
        operation: &'static str,
        path: &StoragePath,
        source: object_store::Error,
    ) -> StorageError {
        match source {
            object_store::Error::NotFound { .. } => StorageError::NotFound { uri: path.to_uri() },
            source => StorageError::backend(operation, path, self.classify(source, false)),
        }
    }

    /// An `object_store` error of a listing: a 404 means the bucket is gone.
    fn listing_error(
        &self,
        operation: &'static str,
        path: &StoragePath,
        source: object_store::Error,
    ) -> StorageError {
        StorageError::backend(operation, path, self.classify(source, true))
    }

    /// Store one object in one request. A refusal (403) is asked once more after a short pause:
    /// MinIO's single-drive layout keeps every prefix as a directory and removes the directories a
    /// delete empties, so a PUT renaming into a prefix that a concurrent delete just emptied is
    /// answered `AccessDenied` (a race of the store, seen once in CI when two conformance runs
    /// shared a prefix). Credentials that are really refused are refused twice and reported as such.
    async fn put_object(
        &self,
        key: &ObjectPath,
        path: &StoragePath,
        payload: PutPayload,
    ) -> Result<(), StorageError> {
        match self.store.put(key, payload.clone()).await {
            Ok(_) => return Ok(()),
            Err(e) if is_refusal(&e) => {
                tracing::debug!(store = %self.location, uri = %path, error = %e, "a put was refused; asking once more");
            }
            Err(e) => return Err(self.object_error("put", path, e)),
        }
        tokio::time::sleep(REFUSED_PUT_PAUSE).await;
        self.store
            .put(key, payload)
            .await
            .map(drop)
            .map_err(|e| self.object_error("put", path, e))
    }

    /// Upload a stream that turned out larger than one part.
    async fn put_multipart(
        &self,
        key: &ObjectPath,
        path: &StoragePath,
        first: Vec<Bytes>,
        mut written: u64,
        mut data: ByteStream,
    ) -> Result<u64, StorageError> {
        let upload = self
            .store
            .put_multipart(key)
            .await
            .map_err(|e| self.object_error("put", path, e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, self.part_size);
        for chunk in first {
            writer.put(chunk);
        }
        loop {
            if let Err(e) = writer.wait_for_capacity(self.upload_concurrency).await {
                // The writer's upload failed; abort what was uploaded.
                return Err(self.object_error("put", path, e));
            }
            match data.next().await {
                Some(Ok(chunk)) => {
                    written += chunk.len() as u64;
                    writer.put(chunk);
                }
                Some(Err(e)) => {
                    if let Err(abort) = writer.abort().await {
                        tracing::warn!(store = %self.location, uri = %path, error = %abort, "could not abort a failed multipart upload; its parts stay invisible until the store's lifecycle removes them");
                    }
                    return Err(e);
                }
                None => break,
            }
        }
        writer
            .finish()
            .await
            .map_err(|e| self.object_error("put", path, e))?;
        Ok(written)
    }
}

#[async_trait]
impl InternalStorage for ObjectStorage {
    async fn put(
        &self,
        tenant: &str,
        path: &StoragePath,
        mut data: ByteStream,
    ) -> Result<u64, StorageError> {
        let key = self.key(tenant, path)?;
        #[cfg(feature = "gcs")]
        if let Some(uploader) = &self.gcs_uploader {
            let written = match uploader.upload(key.as_ref(), data).await {
                Ok(result) => result?,
                // A 404 when starting the upload is the bucket.
                Err(e) => return Err(StorageError::backend("put", path, self.classify(e, true))),
            };
            tracing::debug!(store = %self.location, uri = %path, bytes = written, "stored (resumable upload)");
            return Ok(written);
        }
        let mut buffered: Vec<Bytes> = Vec::new();
        let mut written: u64 = 0;
        while written < self.part_size as u64 {
            match data.next().await {
                Some(Ok(chunk)) => {
                    written += chunk.len() as u64;
                    if !chunk.is_empty() {
                        buffered.push(chunk);
                    }
                }
                Some(Err(e)) => return Err(e),
                None => {
                    self.put_object(&key, path, PutPayload::from_iter(buffered))
                        .await?;
                    tracing::debug!(store = %self.location, uri = %path, bytes = written, "stored");
                    return Ok(written);
                }
            }
        }
        let written = self
            .put_multipart(&key, path, buffered, written, data)
            .await?;
        tracing::debug!(store = %self.location, uri = %path, bytes = written, "stored (multipart)");
        Ok(written)
    }

    async fn get(&self, tenant: &str, path: &StoragePath) -> Result<ByteStream, StorageError> {
        let key = self.key(tenant, path)?;
        let result = self
            .store
            .get(&key)
            .await
            .map_err(|e| self.object_error("get", path, e))?;
        let this = self.clone();
        let path = path.clone();
        Ok(result
            .into_stream()
            .map_err(move |e| this.object_error("get", &path, e))
            .boxed())
    }

    async fn size(&self, tenant: &str, path: &StoragePath) -> Result<u64, StorageError> {
        let key = self.key(tenant, path)?;
        let meta = self
            .store
            .head(&key)
            .await
            .map_err(|e| self.object_error("size", path, e))?;
        Ok(meta.size)
    }

    async fn exists(&self, tenant: &str, path: &StoragePath) -> Result<bool, StorageError> {
        match self.size(tenant, path).await {
            Ok(_) => Ok(true),
            Err(StorageError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn delete(&self, tenant: &str, path: &StoragePath) -> Result<bool, StorageError> {
        // Object stores delete missing keys without complaint: ask first, to answer "did it exist".
        if !self.exists(tenant, path).await? {
            return Ok(false);
        }
        let key = self.key(tenant, path)?;
        match self.store.delete(&key).await {
            Ok(()) => Ok(true),
            // Deleted by someone else in between.
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.object_error("delete", path, e)),
        }
    }

    async fn list(
        &self,
        tenant: &str,
        prefix: &StoragePath,
    ) -> Result<Vec<FileAttributes>, StorageError> {
        let key = self.key(tenant, prefix)?;
        let listing = self
            .store
            .list_with_delimiter(Some(&key))
            .await
            .map_err(|e| self.listing_error("list", prefix, e))?;
        let mut entries: Vec<FileAttributes> = listing
            .common_prefixes
            .iter()
            .filter_map(|dir| self.storage_path(dir))
            .map(|path| FileAttributes {
                path,
                size: 0,
                directory: true,
            })
            .chain(
                listing
                    .objects
                    .iter()
                    // A "directory marker" object named like the prefix itself is not a child.
                    .filter(|meta| meta.location != key)
                    .filter_map(|meta| {
                        self.storage_path(&meta.location)
                            .map(|path| FileAttributes {
                                path,
                                size: meta.size,
                                directory: false,
                            })
                    }),
            )
            .filter(|entry| entry.path.starts_with(prefix) && entry.path != *prefix)
            .collect();
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        entries.dedup_by(|a, b| a.path == b.path);
        Ok(entries)
    }

    async fn delete_prefix(&self, tenant: &str, prefix: &StoragePath) -> Result<u64, StorageError> {
        let key = self.key(tenant, prefix)?;
        // Everything under `prefix/` (object_store matches prefixes segment-wise), and `prefix`
        // itself when it is a file, as the local store does.
        let under = self
            .store
            .list(Some(&key))
            .map_ok(|meta| meta.location)
            .try_collect::<Vec<_>>()
            .await
            .map_err(|e| self.listing_error("delete_prefix", prefix, e))?;
        let mut keys = under;
        if self.exists(tenant, prefix).await? {
            keys.push(key);
        }
        if keys.is_empty() {
            return Ok(0);
        }
        let mut deleted = 0u64;
        let mut results = self
            .store
            .delete_stream(futures::stream::iter(keys.into_iter().map(Ok)).boxed());
        while let Some(result) = results.next().await {
            match result {
                Ok(_) => deleted += 1,
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    return Err(StorageError::backend(
                        "delete_prefix",
                        prefix,
                        self.classify(e, false),
                    ));
                }
            }
        }
        tracing::debug!(store = %self.location, uri = %prefix, deleted, "deleted prefix");
        Ok(deleted)
    }

    async fn attributes(
        &self,
        tenant: &str,
        path: &StoragePath,
    ) -> Result<Attributes, StorageError> {
        let key = self.key(tenant, path)?;
        match self.store.head(&key).await {
            Ok(meta) => {
                return Ok(Attributes {
                    path: path.clone(),
                    kind: FileKind::File,
                    size: meta.size,
                    last_modified: Some(meta.last_modified),
                });
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(self.object_error("attributes", path, e)),
        }
        // Not an object: a directory-like prefix if anything is stored under `key/`.
        let first = self
            .store
            .list(Some(&key))
            .try_filter(|meta| futures::future::ready(meta.location != key))
            .next()
            .await;
        match first {
            Some(Ok(_)) => Ok(Attributes {
                path: path.clone(),
                kind: FileKind::Directory,
                size: 0,
                last_modified: None,
            }),
            Some(Err(e)) => Err(self.listing_error("attributes", path, e)),
            None => Err(StorageError::NotFound { uri: path.to_uri() }),
        }
    }

    async fn move_file(
        &self,
        tenant: &str,
        from: &StoragePath,
        to: &StoragePath,
    ) -> Result<(), StorageError> {
        let source = self.key(tenant, from)?;
        let target = self.key(tenant, to)?;
        // `rename` of a missing key is a NotFound from the copy; a directory-like prefix has no
        // object of its own, so it is one too.
        if source == target {
            self.size(tenant, from).await?;
            return Ok(());
        }
        #[cfg(feature = "gcs")]
        if self.gcs_uploader.is_some() {
            // object_store copies on GCS with the XML API's `x-goog-copy-source`, which
            // fake-gcs-server refuses; stream the object through this store's own resumable
            // upload instead (memory stays at one part), then delete the source.
            let data = self.get(tenant, from).await?;
            self.put(tenant, to, data).await?;
            self.store
                .delete(&source)
                .await
                .map_err(|e| self.object_error("move", from, e))?;
            tracing::debug!(store = %self.location, from = %from, to = %to, "moved (streamed copy)");
            return Ok(());
        }
        self.store
            .rename(&source, &target)
            .await
            .map_err(|e| self.object_error("move", from, e))?;
        tracing::debug!(store = %self.location, from = %from, to = %to, "moved");
        Ok(())
    }
}

/// How long a refused put waits before it is asked once more ([`ObjectStorage::put_object`]).
const REFUSED_PUT_PAUSE: Duration = Duration::from_millis(100);

/// Whether a store refused a request (403, or `object_store`'s permission error).
fn is_refusal(error: &object_store::Error) -> bool {
    matches!(error, object_store::Error::PermissionDenied { .. }) || http_status(error) == Some(403)
}

/// The HTTP status of a failed request, found in the error's chain of causes. `object_store` maps a
/// status to a variant for single-object requests, but some listings carry it only inside a generic
/// error whose cause type is private: its message (`Server returned non-2xx status code: 404 ...`)
/// is the one stable handle.
fn http_status(error: &object_store::Error) -> Option<u16> {
    const MARK: &str = "non-2xx status code: ";
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        let message = e.to_string();
        if let Some(at) = message.find(MARK) {
            let digits: String = message[at + MARK.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            return digits.parse().ok();
        }
        current = e.source();
    }
    None
}

/// A setting that may hold a secret: shown as `********` in `Debug`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"********\"")
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_string())
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

fn non_empty_secret(value: &Option<Secret>) -> Option<&str> {
    value.as_ref().map(|s| s.0.trim()).filter(|v| !v.is_empty())
}

/// Amazon S3 or an S3-compatible store (Kestra's `kestra.storage.s3.*`).
///
/// Credentials: `access_key` + `secret_key` when given, else the AWS chain (`AWS_ACCESS_KEY_ID` /
/// `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`, web identity, ECS task role, EC2 instance metadata).
/// Other `AWS_*` variables (`AWS_REGION`, `AWS_ENDPOINT`, ...) apply when the setting is not given.
#[cfg(feature = "s3")]
#[derive(Debug, Clone, Default)]
pub struct S3Config {
    /// The bucket (required).
    pub bucket: String,
    /// The region (`us-east-1` when neither this nor `AWS_REGION` is set).
    pub region: Option<String>,
    /// Endpoint of an S3-compatible store (`http://127.0.0.1:9000`); `http://` is allowed.
    pub endpoint: Option<String>,
    /// Access key id.
    pub access_key: Option<String>,
    /// Secret access key.
    pub secret_key: Option<Secret>,
    /// Session token of temporary credentials.
    pub session_token: Option<Secret>,
    /// Use virtual-hosted-style URLs (`https://bucket.host/key`) instead of path-style ones; off by
    /// default when an endpoint is set (what MinIO and most compatibles expect).
    pub virtual_hosted_style: Option<bool>,
    /// Shared settings.
    pub options: ObjectOptions,
}

#[cfg(feature = "s3")]
impl S3Config {
    /// Build the store and check the bucket (see [`ObjectStorage::check`]).
    pub async fn connect(&self) -> Result<ObjectStorage, ObjectStorageError> {
        let storage = self.build()?;
        storage.check().await?;
        Ok(storage)
    }

    /// Build the store without any request.
    pub fn build(&self) -> Result<ObjectStorage, ObjectStorageError> {
        use object_store::aws::AmazonS3Builder;
        install_crypto_provider();
        let kind = StoreKind::S3;
        let bucket = self.bucket.trim();
        if bucket.is_empty() {
            return Err(ObjectStorageError::Config {
                kind,
                message: "the bucket is required (kestra.storage.s3.bucket)".into(),
            });
        }
        let location = StoreLocation {
            kind,
            bucket: bucket.to_string(),
        };
        let endpoint = non_empty(&self.endpoint);
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_retry(self.options.retry())
            .with_client_options(self.options.client(endpoint));
        if let Some(region) = non_empty(&self.region) {
            builder = builder.with_region(region);
        }
        if let Some(endpoint) = endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_virtual_hosted_style_request(self.virtual_hosted_style.unwrap_or(false));
        } else if let Some(virtual_hosted) = self.virtual_hosted_style {
            builder = builder.with_virtual_hosted_style_request(virtual_hosted);
        }
        match (
            non_empty(&self.access_key),
            non_empty_secret(&self.secret_key),
        ) {
            (Some(key), Some(secret)) => {
                builder = builder
                    .with_access_key_id(key)
                    .with_secret_access_key(secret);
                if let Some(token) = non_empty_secret(&self.session_token) {
                    builder = builder.with_token(token);
                }
            }
            (None, None) => {}
            (Some(_), None) => {
                return Err(ObjectStorageError::Config {
                    kind,
                    message: "accessKey is set but secretKey is not".into(),
                });
            }
            (None, Some(_)) => {
                return Err(ObjectStorageError::Config {
                    kind,
                    message: "secretKey is set but accessKey is not".into(),
                });
            }
        }
        let store = builder
            .build()
            .map_err(|source| ObjectStorageError::Build {
                store: location.clone(),
                source,
            })?;
        ObjectStorage::from_store(Arc::new(store), location, &self.options)
    }
}

/// Google Cloud Storage (Kestra's `kestra.storage.gcs.*`).
///
/// Credentials: `service_account` (the JSON key itself) when given, else `GOOGLE_SERVICE_ACCOUNT` /
/// `GOOGLE_APPLICATION_CREDENTIALS`, else application default credentials (gcloud's file, then the
/// metadata server of GCE/GKE).
#[cfg(feature = "gcs")]
#[derive(Debug, Clone, Default)]
pub struct GcsConfig {
    /// The bucket (required).
    pub bucket: String,
    /// The project id (informational: a bucket name is global).
    pub project_id: Option<String>,
    /// The service account key, as JSON.
    pub service_account: Option<Secret>,
    /// Base URL of the JSON/XML APIs (`https://storage.googleapis.com` by default; an emulator's
    /// `http://127.0.0.1:4443`).
    pub endpoint: Option<String>,
    /// Send unauthenticated requests (an emulator such as fake-gcs-server); overrides
    /// `service_account`.
    pub anonymous: bool,
    /// Shared settings.
    pub options: ObjectOptions,
}

#[cfg(feature = "gcs")]
impl GcsConfig {
    /// Build the store and check the bucket (see [`ObjectStorage::check`]).
    pub async fn connect(&self) -> Result<ObjectStorage, ObjectStorageError> {
        let storage = self.build()?;
        storage.check().await?;
        Ok(storage)
    }

    /// Build the store without any request.
    pub fn build(&self) -> Result<ObjectStorage, ObjectStorageError> {
        use object_store::gcp::GoogleCloudStorageBuilder;
        install_crypto_provider();
        let kind = StoreKind::Gcs;
        let bucket = self.bucket.trim();
        if bucket.is_empty() {
            return Err(ObjectStorageError::Config {
                kind,
                message: "the bucket is required (kestra.storage.gcs.bucket)".into(),
            });
        }
        let location = StoreLocation {
            kind,
            bucket: bucket.to_string(),
        };
        let endpoint = non_empty(&self.endpoint);
        let base_url = endpoint
            .unwrap_or("https://storage.googleapis.com")
            .trim_end_matches('/')
            .to_string();
        let mut builder = GoogleCloudStorageBuilder::from_env()
            .with_bucket_name(bucket)
            .with_retry(self.options.retry())
            .with_client_options(self.options.client(endpoint));
        if endpoint.is_some() {
            builder = builder.with_base_url(&base_url);
        }
        if let Some(key) = non_empty_secret(&self.service_account) {
            builder = builder.with_service_account_key(key);
        }
        if self.anonymous {
            // object_store's way to an emulator: a key that turns OAuth off (requests go unsigned).
            builder = builder
                .with_service_account_key(
                    r#"{"disable_oauth":true,"client_email":"","private_key":"","private_key_id":""}"#,
                )
                .with_skip_signature(true);
        }
        let store = builder
            .build()
            .map_err(|source| ObjectStorageError::Build {
                store: location.clone(),
                source,
            })?;
        let uploader = gcs_upload::ResumableUploader::new(
            &base_url,
            bucket,
            Arc::clone(store.credentials()),
            self.options.part_size,
            self.options.max_retries,
            self.options.request_timeout,
            self.options.connect_timeout,
        )
        .map_err(|e| ObjectStorageError::Build {
            store: location.clone(),
            source: object_store::Error::Generic {
                store: "GCS",
                source: Box::new(e),
            },
        })?;
        let mut storage = ObjectStorage::from_store(Arc::new(store), location, &self.options)?;
        storage.gcs_uploader = Some(uploader);
        Ok(storage)
    }
}

/// Azure Blob Storage (Kestra's `kestra.storage.azure.*`).
///
/// Credentials, first found: `connection_string` (`AccountName=...;AccountKey=...;BlobEndpoint=...`
/// or `...;SharedAccessSignature=...`), `shared_key_account_name` + `shared_key_account_access_key`,
/// `sas_token`, else the Azure chain (`AZURE_STORAGE_*` variables, workload identity, managed
/// identity, Azure CLI).
#[cfg(feature = "azure")]
#[derive(Debug, Clone, Default)]
pub struct AzureConfig {
    /// The container (required).
    pub container: String,
    /// The blob endpoint (`https://<account>.blob.core.windows.net`, or Azurite's
    /// `http://127.0.0.1:10000/devstoreaccount1`).
    pub endpoint: Option<String>,
    /// A storage connection string.
    pub connection_string: Option<Secret>,
    /// The account name of a shared key.
    pub shared_key_account_name: Option<String>,
    /// The account key of a shared key.
    pub shared_key_account_access_key: Option<Secret>,
    /// A SAS token (`sv=...&sig=...`).
    pub sas_token: Option<Secret>,
    /// Shared settings.
    pub options: ObjectOptions,
}

/// The parts of an Azure storage connection string this store reads.
#[cfg(feature = "azure")]
#[derive(Debug, Default, PartialEq, Eq)]
struct ConnectionString {
    account_name: Option<String>,
    account_key: Option<String>,
    blob_endpoint: Option<String>,
    sas: Option<String>,
    protocol: Option<String>,
    suffix: Option<String>,
}

#[cfg(feature = "azure")]
fn parse_connection_string(value: &str) -> Result<ConnectionString, String> {
    let mut parsed = ConnectionString::default();
    for pair in value.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((name, val)) = pair.split_once('=') else {
            return Err(format!(
                "connection-string: '{}' is not a Name=value pair",
                pair.chars().take(20).collect::<String>()
            ));
        };
        let val = val.trim().to_string();
        match name.trim() {
            "AccountName" => parsed.account_name = Some(val),
            "AccountKey" => parsed.account_key = Some(val),
            "BlobEndpoint" => parsed.blob_endpoint = Some(val),
            "SharedAccessSignature" => parsed.sas = Some(val),
            "DefaultEndpointsProtocol" => parsed.protocol = Some(val),
            "EndpointSuffix" => parsed.suffix = Some(val),
            "UseDevelopmentStorage" if val.eq_ignore_ascii_case("true") => {
                // Azurite's well-known account.
                parsed.account_name = Some("devstoreaccount1".into());
                parsed.account_key = Some("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==".into());
                parsed.blob_endpoint = Some("http://127.0.0.1:10000/devstoreaccount1".into());
            }
            // Queue, table and file endpoints, and anything else, are not used here.
            _ => {}
        }
    }
    Ok(parsed)
}

#[cfg(feature = "azure")]
impl AzureConfig {
    /// Build the store and check the container (see [`ObjectStorage::check`]).
    pub async fn connect(&self) -> Result<ObjectStorage, ObjectStorageError> {
        let storage = self.build()?;
        storage.check().await?;
        Ok(storage)
    }

    /// Build the store without any request.
    pub fn build(&self) -> Result<ObjectStorage, ObjectStorageError> {
        use object_store::azure::MicrosoftAzureBuilder;
        install_crypto_provider();
        let kind = StoreKind::Azure;
        let config_error = |message: String| ObjectStorageError::Config { kind, message };
        let container = self.container.trim();
        if container.is_empty() {
            return Err(config_error(
                "the container is required (kestra.storage.azure.container)".into(),
            ));
        }
        let location = StoreLocation {
            kind,
            bucket: container.to_string(),
        };
        let connection = match non_empty_secret(&self.connection_string) {
            Some(value) => parse_connection_string(value).map_err(config_error)?,
            None => ConnectionString::default(),
        };
        let account = connection
            .account_name
            .clone()
            .or_else(|| non_empty(&self.shared_key_account_name).map(str::to_string));
        let endpoint = non_empty(&self.endpoint)
            .map(str::to_string)
            .or_else(|| connection.blob_endpoint.clone())
            .or_else(|| {
                let account = account.as_deref()?;
                let protocol = connection.protocol.as_deref().unwrap_or("https");
                let suffix = connection.suffix.as_deref()?;
                Some(format!("{protocol}://{account}.blob.{suffix}"))
            });
        // `https://<account>.blob.core.windows.net` names its account.
        let account = account.or_else(|| {
            let host = endpoint
                .as_deref()?
                .split("://")
                .nth(1)?
                .split('/')
                .next()?;
            host.split_once(".blob.").map(|(a, _)| a.to_string())
        });
        let endpoint = endpoint.map(|e| e.trim_end_matches('/').to_string());
        let mut builder = MicrosoftAzureBuilder::from_env()
            .with_container_name(container)
            .with_retry(self.options.retry())
            .with_client_options(self.options.client(endpoint.as_deref()));
        if let Some(account) = &account {
            builder = builder.with_account(account);
        }
        if let Some(endpoint) = &endpoint {
            builder = builder.with_endpoint(endpoint.clone());
        }
        let key = connection
            .account_key
            .clone()
            .or_else(|| non_empty_secret(&self.shared_key_account_access_key).map(str::to_string));
        let sas = connection
            .sas
            .clone()
            .or_else(|| non_empty_secret(&self.sas_token).map(str::to_string));
        if let Some(key) = key {
            if account.is_none() {
                return Err(config_error(
                    "an account key is set but no account name (shared-key-account-name, or AccountName in the connection string)".into(),
                ));
            }
            builder = builder.with_access_key(key);
        } else if let Some(sas) = sas {
            let pairs = sas
                .trim_start_matches('?')
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    let decode = |s: &str| {
                        percent_encoding::percent_decode_str(s)
                            .decode_utf8_lossy()
                            .into_owned()
                    };
                    (decode(k), decode(v))
                })
                .collect::<Vec<_>>();
            builder = builder.with_sas_authorization(pairs);
        }
        let store = builder
            .build()
            .map_err(|source| ObjectStorageError::Build {
                store: location.clone(),
                source,
            })?;
        ObjectStorage::from_store(Arc::new(store), location, &self.options)
    }
}

#[cfg(all(test, feature = "azure"))]
mod tests {
    use super::*;

    #[test]
    fn connection_strings_are_parsed() {
        let parsed = parse_connection_string(
            "DefaultEndpointsProtocol=http;AccountName=acct;AccountKey=a2V5;BlobEndpoint=http://127.0.0.1:10000/acct;",
        );
        assert_eq!(
            parsed,
            Ok(ConnectionString {
                account_name: Some("acct".into()),
                account_key: Some("a2V5".into()),
                blob_endpoint: Some("http://127.0.0.1:10000/acct".into()),
                sas: None,
                protocol: Some("http".into()),
                suffix: None,
            })
        );
        assert!(parse_connection_string("AccountName").is_err());
    }
}
