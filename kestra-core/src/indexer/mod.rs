//! The indexer: a component beside the executor, the workers and the schedulers that moves what
//! travels on the queue (logs, metrics, service instances) into the repositories.
//!
//! - [`service`]: the [`IndexerService`] loop and its [`IndexerConfig`].

pub mod service;

pub use service::{IndexerConfig, IndexerService};
