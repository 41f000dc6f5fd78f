//! # kestra
//!
//! Kestra's orchestration architecture as an embeddable Rust library. This facade picks the backends
//! with cargo features (`sqlite` (default), `postgres`, `mysql`; each brings only its own database driver;
//! Kafka + Elasticsearch, cloud storages and the webserver come with features of their own)
//! and wires them from a [`Config`](config::Config):
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let config = kestra::config::Config::default(); // SQLite + local storage under ./data
//! let engine = kestra::engine(&config).await?.start();
//! engine.deploy("id: hello\nnamespace: demo\ntasks:\n  - id: hi\n    type: io.kestra.plugin.core.log.Log\n    message: hi\n").await?;
//! let execution = engine.execute("demo", "hello", Default::default()).await?;
//! let done = engine.wait_for(&execution.id, std::time::Duration::from_secs(30)).await?;
//! println!("{}", done.state.current());
//! engine.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! The building blocks are re-exported: [`core`] (model, flow language, engine logic and the seams),
//! [`jdbc`] (queue + repositories on a database) and [`storage`] (internal storage).

pub mod config;

use std::sync::Arc;

pub use kestra_backend_jdbc as jdbc;
pub use kestra_core as core;
pub use kestra_core::runtime::{Components, Engine, EngineBuilder, EngineError, ExecuteOptions};
pub use kestra_storage as storage;

use kestra_core::queue::Queue;
use kestra_core::repository::Repositories;
use kestra_core::storage::InternalStorage;

/// Why the backend could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Configuration problem.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The database could not be opened or migrated.
    #[error("cannot open the {kind} backend: {source}")]
    Database {
        /// Backend type.
        kind: String,
        /// Cause.
        #[source]
        source: kestra_backend_jdbc::JdbcError,
    },
    /// The storage could not be opened.
    #[error("cannot open the local storage: {0}")]
    Storage(#[from] kestra_storage::LocalStorageError),
    /// A directory could not be created.
    #[error("cannot create {path}: {source}")]
    Io {
        /// Path.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// An opened backend: queue, repositories and internal storage.
#[derive(Clone)]
pub struct Backend {
    /// The queue.
    pub queue: Arc<dyn Queue>,
    /// The repositories.
    pub repositories: Repositories,
    /// The internal storage.
    pub storage: Arc<dyn InternalStorage>,
}

/// Open the backend and storage the configuration names (creating the data directory for SQLite).
pub async fn connect(config: &config::Config) -> Result<Backend, StartError> {
    let kind = config.backend_type();
    if kind == "sqlite" && config.get(&format!("datasources.{kind}.url")).is_none() {
        let dir = config.data_dir();
        std::fs::create_dir_all(&dir).map_err(|source| StartError::Io {
            path: dir.clone(),
            source,
        })?;
    }
    let url = config.database_url()?;
    let jdbc = kestra_backend_jdbc::JdbcBackend::connect(&url)
        .await
        .map_err(|source| StartError::Database {
            kind: kind.clone(),
            source,
        })?;
    let storage = kestra_storage::LocalStorage::new(config.storage_path()?)?;
    Ok(Backend {
        queue: jdbc.queue(),
        repositories: jdbc.repositories(),
        storage: Arc::new(storage),
    })
}

/// An [`EngineBuilder`] over the configured backend, with the configuration's worker settings.
pub async fn engine(config: &config::Config) -> Result<EngineBuilder, StartError> {
    let backend = connect(config).await?;
    let mut worker = kestra_core::worker::WorkerConfig::default();
    if let Some(threads) = config.get("kestra.worker.threads") {
        worker.concurrency = threads
            .trim()
            .parse()
            .map_err(|_| config::ConfigError::Invalid {
                key: "kestra.worker.threads".into(),
                message: format!("'{threads}' is not a positive integer"),
            })?;
    }
    Ok(Engine::builder(backend.queue, backend.repositories, backend.storage).worker_config(worker))
}
