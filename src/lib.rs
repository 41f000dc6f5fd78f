//! # kestra
//!
//! Kestra's orchestration architecture as an embeddable Rust library. This facade picks the backends
//! with cargo features (`sqlite` (default), `postgres`, `mysql`; each brings only its own database driver;
//! `webserver` (default) adds the REST API; `kafka` adds the queue on Apache Kafka; `s3`, `gcs`,
//! `azure` add the object stores as internal storage; the Elasticsearch repositories come with `kafka`)
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
//! [`jdbc`] (queue + repositories on a database), [`storage`] (internal storage) and, with the
//! `webserver` feature, `webserver` (the REST API; [`webserver_from_config`] builds it from the
//! configuration), and with the `kafka` feature, `kafka` (the queue on Apache Kafka and, in
//! `kafka::elastic`, the repositories on Elasticsearch: `kestra.queue.type: kafka` with
//! `kestra.repository.type: elasticsearch`).

pub mod config;

use std::sync::Arc;

pub use kestra_backend_jdbc as jdbc;
#[cfg(feature = "kafka")]
pub use kestra_backend_kafka as kafka;
pub use kestra_core as core;
pub use kestra_core::runtime::{Components, Engine, EngineBuilder, EngineError, ExecuteOptions};
pub use kestra_storage as storage;
#[cfg(feature = "webserver")]
pub use kestra_webserver as webserver;

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
    /// The Kafka queue could not be opened.
    #[cfg(feature = "kafka")]
    #[error("cannot open the Kafka queue: {0}")]
    Kafka(#[from] kestra_backend_kafka::KafkaError),
    /// The Elasticsearch repositories could not be opened.
    #[cfg(feature = "kafka")]
    #[error("cannot open the Elasticsearch repositories: {0}")]
    Elasticsearch(#[source] kestra_core::repository::RepositoryError),
    /// The storage could not be opened.
    #[error("cannot open the local storage: {0}")]
    Storage(#[from] kestra_storage::LocalStorageError),
    /// The object storage (S3, GCS, Azure) could not be opened.
    #[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
    #[error("cannot open the internal storage: {0}")]
    ObjectStorage(#[from] kestra_storage::object::ObjectStorageError),
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
    let queue_kind = config.queue_type();
    if queue_kind == "kafka" || kind == "elasticsearch" {
        return connect_kafka(config, &queue_kind, &kind).await;
    }
    if kind == "sqlite" && config.get(&format!("datasources.{kind}.url")).is_none() {
        let dir = config.data_dir();
        std::fs::create_dir_all(&dir).map_err(|source| StartError::Io {
            path: dir.clone(),
            source,
        })?;
    }
    let url = config.database_url()?;
    let defaults = kestra_backend_jdbc::JdbcOptions::default();
    let options = kestra_backend_jdbc::JdbcOptions {
        max_message_bytes: config
            .get_size("kestra.queue.max-message-size", defaults.max_message_bytes)?,
        initialize_empty_sqlite: config
            .get_bool("kestra.repository.sqlite.initialize-empty", false)?,
        ..defaults
    };
    let jdbc = kestra_backend_jdbc::JdbcBackend::connect_with(&url, options)
        .await
        .map_err(|source| StartError::Database {
            kind: kind.clone(),
            source,
        })?;
    let storage = open_storage(config).await?;
    Ok(Backend {
        queue: jdbc.queue(),
        repositories: jdbc.repositories(),
        storage,
    })
}

/// The Kafka queue with the Elasticsearch repositories (the only pairing of either).
#[cfg(feature = "kafka")]
async fn connect_kafka(
    config: &config::Config,
    queue_kind: &str,
    kind: &str,
) -> Result<Backend, StartError> {
    if queue_kind != "kafka" || kind != "elasticsearch" {
        return Err(config::ConfigError::Invalid {
            key: "kestra.repository.type".into(),
            message: format!(
                "queue type '{queue_kind}' with repository type '{kind}': the Kafka queue goes with \
                 the Elasticsearch repositories (kestra.queue.type: kafka, \
                 kestra.repository.type: elasticsearch)"
            ),
        }
        .into());
    }
    let mut kafka = config.kafka_options()?;
    kafka.max_message_bytes =
        config.get_size("kestra.queue.max-message-size", kafka.max_message_bytes)?;
    let elastic = config.elastic_options()?;
    let queue = kestra_backend_kafka::KafkaQueue::connect(kafka).await?;
    let repositories = kestra_backend_kafka::elastic::ElasticRepositories::connect(elastic)
        .await
        .map_err(StartError::Elasticsearch)?
        .repositories();
    let storage = open_storage(config).await?;
    tracing::info!("backend ready: Kafka queue, Elasticsearch repositories");
    Ok(Backend {
        queue: Arc::new(queue),
        repositories,
        storage,
    })
}

/// Without the `kafka` feature: a clear error naming the feature.
#[cfg(not(feature = "kafka"))]
async fn connect_kafka(
    _config: &config::Config,
    queue_kind: &str,
    kind: &str,
) -> Result<Backend, StartError> {
    Err(config::ConfigError::Invalid {
        key: "kestra.queue.type".into(),
        message: format!(
            "queue type '{queue_kind}' / repository type '{kind}' need the `kafka` feature of this build"
        ),
    }
    .into())
}

/// Open the internal storage `kestra.storage.type` names: the local directory, or an object store
/// (checked at once: a missing bucket or refused credentials fail here, naming the bucket).
pub async fn open_storage(config: &config::Config) -> Result<Arc<dyn InternalStorage>, StartError> {
    let kind = config.storage_type()?;
    let storage: Arc<dyn InternalStorage> = match kind.as_str() {
        #[cfg(feature = "s3")]
        "s3" => Arc::new(config.s3_storage()?.connect().await?),
        #[cfg(feature = "gcs")]
        "gcs" => Arc::new(config.gcs_storage()?.connect().await?),
        #[cfg(feature = "azure")]
        "azure" => Arc::new(config.azure_storage()?.connect().await?),
        _ => Arc::new(kestra_storage::LocalStorage::new(config.storage_path()?)?),
    };
    tracing::info!(storage = %kind, "internal storage ready");
    Ok(storage)
}

/// An [`EngineBuilder`] over the configured backend, with the configuration's worker settings.
pub async fn engine(config: &config::Config) -> Result<EngineBuilder, StartError> {
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
    worker.max_output_size =
        config.get_size("kestra.limits.task.max-output-size", worker.max_output_size)?;
    let mut expression = kestra_core::expression::ExpressionOptions::default();
    expression.max_value_size = config.get_size(
        "kestra.limits.expression.max-value-size",
        expression.max_value_size,
    )?;
    if config.get("kestra.limits.expression.fuel").is_some() {
        let fuel = config.get_u64("kestra.limits.expression.fuel", 0)?;
        if fuel == 0 {
            return Err(config::ConfigError::Invalid {
                key: "kestra.limits.expression.fuel".into(),
                message: "must be a positive number of template steps".into(),
            }
            .into());
        }
        expression.fuel = Some(fuel);
    }
    let key = "kestra.queue.max-delivery-attempts";
    let attempts = config.get_u64(key, 3)?;
    let max_delivery_attempts =
        u32::try_from(attempts).map_err(|_| config::ConfigError::Invalid {
            key: key.into(),
            message: format!("{attempts} is too large"),
        })?;
    worker.max_delivery_attempts = max_delivery_attempts;
    let liveness = liveness_config(config)?;
    worker.heartbeat_interval = liveness.heartbeat_interval;
    worker.lease = config.get_duration("kestra.worker.lease", worker.lease)?;
    // Renew well within the lease: a quarter of it, at most the default 30 s.
    worker.lease_renewal = worker.lease_renewal.min(worker.lease / 4);
    worker.drain_timeout =
        config.get_duration("kestra.server.terminationGracePeriod", worker.drain_timeout)?;
    let key = "kestra.limits.execution.max-task-runs";
    let default_runs = kestra_core::executor::task_run_limit::DEFAULT_MAX_TASK_RUNS;
    let runs = config.get_u64(key, default_runs as u64)?;
    let max_task_runs = usize::try_from(runs).map_err(|_| config::ConfigError::Invalid {
        key: key.into(),
        message: format!("{runs} is too large"),
    })?;
    let executor = kestra_core::executor::ExecutorConfig {
        liveness,
        resubmit: resubmit_config(config)?,
        max_delivery_attempts,
        max_task_runs,
        ..kestra_core::executor::ExecutorConfig::default()
    };
    let scheduler = kestra_core::scheduler::SchedulerConfig {
        heartbeat_interval: liveness.heartbeat_interval,
        ..kestra_core::scheduler::SchedulerConfig::default()
    };
    let indexer = kestra_core::indexer::service::IndexerConfig {
        heartbeat_interval: liveness.heartbeat_interval,
        ..kestra_core::indexer::service::IndexerConfig::default()
    };
    // Settings first: a bad key is reported before any database is touched.
    let backend = connect(config).await?;
    Ok(
        Engine::builder(backend.queue, backend.repositories, backend.storage)
            .worker_config(worker)
            .expression(expression)
            .executor_config(executor)
            .scheduler_config(scheduler)
            .indexer_config(indexer),
    )
}

/// How the executor resubmits a dead worker's task jobs:
/// `kestra.server.worker-task-restart-strategy` (`IMMEDIATELY`, `AFTER_TERMINATION_GRACE_PERIOD`
/// by default, or `NEVER`), `kestra.server.terminationGracePeriod` (the delay of the default
/// strategy, 1 min) and `kestra.server.worker-task-max-resubmissions` (3).
pub fn resubmit_config(
    config: &config::Config,
) -> Result<kestra_core::liveness::ResubmitConfig, config::ConfigError> {
    let defaults = kestra_core::liveness::ResubmitConfig::default();
    let key = "kestra.server.worker-task-restart-strategy";
    let strategy = match config.get(key) {
        Some(value) => value
            .parse()
            .map_err(|message| config::ConfigError::Invalid {
                key: key.into(),
                message,
            })?,
        None => defaults.strategy,
    };
    let key = "kestra.server.worker-task-max-resubmissions";
    let max = config.get_u64(key, u64::from(defaults.max_resubmissions))?;
    let max_resubmissions = u32::try_from(max).map_err(|_| config::ConfigError::Invalid {
        key: key.into(),
        message: format!("{max} is too large"),
    })?;
    Ok(kestra_core::liveness::ResubmitConfig {
        strategy,
        grace_period: config.get_duration(
            "kestra.server.terminationGracePeriod",
            defaults.grace_period,
        )?,
        max_resubmissions,
    })
}

/// The liveness settings of every component: `kestra.server.liveness.heartbeatInterval` (default
/// 3 s), `kestra.server.liveness.timeout` (default 45 s, at least two heartbeats) and
/// `kestra.server.service.purge.retention` (default 30 days: how long a stopped instance stays
/// listed).
pub fn liveness_config(
    config: &config::Config,
) -> Result<kestra_core::liveness::LivenessConfig, config::ConfigError> {
    let defaults = kestra_core::liveness::LivenessConfig::default();
    let heartbeat_interval = config.get_duration(
        "kestra.server.liveness.heartbeatInterval",
        defaults.heartbeat_interval,
    )?;
    let timeout = config.get_duration("kestra.server.liveness.timeout", defaults.timeout)?;
    let retention =
        config.get_duration("kestra.server.service.purge.retention", defaults.retention)?;
    if timeout < heartbeat_interval * 2 {
        return Err(config::ConfigError::Invalid {
            key: "kestra.server.liveness.timeout".into(),
            message: format!(
                "{timeout:?} is shorter than two heartbeats ({heartbeat_interval:?} each): every instance would be declared dead"
            ),
        });
    }
    let grace_period = config.get_duration(
        "kestra.server.terminationGracePeriod",
        defaults.grace_period,
    )?;
    Ok(kestra_core::liveness::LivenessConfig {
        heartbeat_interval,
        timeout,
        grace_period,
        retention,
    })
}

/// The webserver's settings from the configuration, with what to tell the user at start.
#[cfg(feature = "webserver")]
pub struct WebserverSettings {
    /// The webserver, ready to run.
    pub webserver: kestra_webserver::Webserver,
    /// `http://host:port/`.
    pub url: String,
    /// How to log in, for the start banner: `user / password` when the default password is in use,
    /// else the user alone; `None` when authentication is off.
    pub credentials: Option<String>,
}

/// Build the webserver from the configuration: `kestra.server.host` (default `127.0.0.1`),
/// `kestra.server.port` (default `8080`, Kestra's `micronaut.server.port` also read),
/// `kestra.server.basic-auth.enabled` (default `true`), `.username` (default `admin@kestra.io`),
/// `.password` (default `kestra`; a `$argon2...` PHC string is taken as the hash) and
/// `kestra.server.max-request-size` (bytes, default 100 MiB),
/// `kestra.server.multipart.max-file-size` (bytes or `10GB`-like, default 10 GiB: the limit of a request that
/// uploads files, which are streamed into internal storage; Kestra's
/// `micronaut.server.multipart.max-file-size` also read), `kestra.server.metrics.public`
/// (default `false`: `GET /metrics` needs credentials like every route); the webserver beats every
/// `kestra.server.liveness.heartbeatInterval` like every component.
#[cfg(feature = "webserver")]
pub fn webserver_from_config(
    config: &config::Config,
    engine: Arc<Engine>,
) -> Result<WebserverSettings, config::ConfigError> {
    use kestra_webserver::{Auth, BasicAuth, Webserver};
    let invalid = |key: &str, message: String| config::ConfigError::Invalid {
        key: key.into(),
        message,
    };
    let host = config
        .get("kestra.server.host")
        .unwrap_or_else(|| "127.0.0.1".into());
    let port_key = if config.get("kestra.server.port").is_some() {
        "kestra.server.port"
    } else {
        "micronaut.server.port"
    };
    let port = config.get_u64(port_key, 8080)?;
    let port =
        u16::try_from(port).map_err(|_| invalid(port_key, format!("{port} is not a port")))?;
    let ip: std::net::IpAddr = host.trim().parse().map_err(|_| {
        invalid(
            "kestra.server.host",
            format!("'{host}' is not an IP address"),
        )
    })?;
    let bind = std::net::SocketAddr::new(ip, port);
    let max_body = config.get_u64(
        "kestra.server.max-request-size",
        kestra_webserver::DEFAULT_MAX_BODY as u64,
    )?;
    let max_body = usize::try_from(max_body).map_err(|_| {
        invalid(
            "kestra.server.max-request-size",
            format!("{max_body} is too large"),
        )
    })?;
    let upload_key = if config
        .get("kestra.server.multipart.max-file-size")
        .is_some()
    {
        "kestra.server.multipart.max-file-size"
    } else {
        "micronaut.server.multipart.max-file-size"
    };
    let max_upload = config.get_size(
        upload_key,
        usize::try_from(kestra_webserver::DEFAULT_MAX_UPLOAD).unwrap_or(usize::MAX),
    )? as u64;
    let metrics_public = config.get_bool("kestra.server.metrics.public", false)?;
    let heartbeat = liveness_config(config)?.heartbeat_interval;
    let (auth, credentials) = if config.get_bool("kestra.server.basic-auth.enabled", true)? {
        let username = config
            .get("kestra.server.basic-auth.username")
            .unwrap_or_else(|| "admin@kestra.io".into());
        let password = config.get("kestra.server.basic-auth.password");
        let credentials = match &password {
            None => format!("{username} / kestra"),
            Some(_) => format!("{username} / (the configured password)"),
        };
        let user = BasicAuth::new(&username, password.as_deref().unwrap_or("kestra"))
            .map_err(|e| invalid("kestra.server.basic-auth", e.to_string()))?;
        (Auth::Basic(user), Some(credentials))
    } else {
        (Auth::Disabled, None)
    };
    let shown_host = if ip.is_unspecified() {
        "127.0.0.1".to_string()
    } else if ip.is_ipv6() {
        format!("[{ip}]")
    } else {
        ip.to_string()
    };
    Ok(WebserverSettings {
        webserver: Webserver::builder(engine)
            .bind(bind)
            .auth(auth)
            .max_body_bytes(max_body)
            .max_upload_bytes(max_upload)
            .metrics_public(metrics_public)
            .heartbeat(Some(heartbeat))
            .build(),
        url: format!("http://{shown_host}:{port}/"),
        credentials,
    })
}
