//! InternalStorage implementations for kestra.
//!
//! This crate owns the backends of the [`InternalStorage`](kestra_core::storage::InternalStorage)
//! seam defined in `kestra-core`:
//!
//! - [`local`]: the local filesystem ([`LocalStorage`]), always available; the embedded default.
//! - S3, GCS and Azure Blob Storage will come behind cargo features (`s3`, `gcs`, `azure`), each a
//!   module of its own built on the `object_store` crate. None exists yet.
//!
//! Every backend passes the conformance suite `kestra_core::testkit::storage` (feature `testkit` of
//! `kestra-core`); see `tests/local.rs`.

pub mod local;

pub use local::{LocalStorage, LocalStorageError};
