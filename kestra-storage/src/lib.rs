//! InternalStorage implementations for kestra.
//!
//! This crate owns the backends of the [`InternalStorage`](kestra_core::storage::InternalStorage)
//! seam defined in `kestra-core`:
//!
//! - [`local`]: the local filesystem ([`LocalStorage`]), always available; the embedded default.
//! - [`object`] (features `s3`, `gcs`, `azure`): Amazon S3 and S3-compatible stores, Google Cloud
//!   Storage and Azure Blob Storage, one adapter over the `object_store` crate
//!   ([`object::ObjectStorage`], built from [`object::S3Config`], [`object::GcsConfig`] or
//!   [`object::AzureConfig`]).
//!
//! Every backend passes the conformance suite `kestra_core::testkit::storage` (feature `testkit` of
//! `kestra-core`); see `tests/local.rs`.

pub mod local;
#[cfg(feature = "object-store")]
pub mod object;

pub use local::{LocalStorage, LocalStorageError};
