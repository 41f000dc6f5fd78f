//! The indexer: a component beside the executor, the workers and the schedulers that moves what
//! travels on the queue (logs, metrics, service instances) into the repositories.
//!
//! - [`service`]: the [`IndexerService`] loop and its [`IndexerConfig`];
//! - [`lag`]: how far behind it is ([`IndexerLag`]), reported in its heartbeat and by `/metrics`.

pub mod lag;
pub mod service;

pub use lag::IndexerLag;
pub use service::{IndexerConfig, IndexerService};
