//! # kestra-backend-jdbc
//!
//! Kestra's JDBC backend: the [`Queue`] and every repository of [`Repositories`] on SQLite (the
//! embedded default), PostgreSQL and MySQL/MariaDB, with sqlx.
//!
//! ```no_run
//! # async fn run() -> Result<(), kestra_backend_jdbc::JdbcError> {
//! let backend = kestra_backend_jdbc::JdbcBackend::connect("sqlite://data/kestra.db?mode=rwc").await?;
//! let queue = backend.queue();
//! let repositories = backend.repositories();
//! # let _ = (queue, repositories);
//! # Ok(()) }
//! ```
//!
//! - The dialect comes from the URL scheme: `sqlite:`, `postgres:`/`postgresql:`, `mysql:`/`mariadb:`
//!   (cargo features `sqlite`, `postgres`, `mysql`). The schema (one migration folder per dialect under
//!   `migrations/`) is embedded and applied by [`JdbcBackend::connect`].
//! - Queue: a table with one row per (message, consumer group), claimed with `FOR UPDATE SKIP LOCKED`
//!   (SQLite: its single writer), leased with `claimed_by`/`claimed_until`, deleted on
//!   acknowledgement; per-key ordering; delayed rows have a future `visible_at`; malformed rows go to
//!   `queue_dead_letter`; broadcast reads `queue_broadcast` by offset (rows kept 60 s). Wake-ups:
//!   `LISTEN/NOTIFY` on PostgreSQL, in-process notification, adaptive polling (5 ms doubling to
//!   500 ms) as the fallback and the only cross-process way on MySQL.
//! - A [`UnitOfWork`](kestra_core::queue::UnitOfWork) is one database transaction that holds a pooled
//!   connection for its whole life: size [`JdbcOptions::max_connections`] above the number of
//!   concurrent units plus the other traffic (PostgreSQL's listener keeps one more). It loads and
//!   saves executions and `executor_state` rows only under the keys of the rows it claimed (anything
//!   else is refused with `QueueError::NotClaimed` before any SQL runs), so a state row is written
//!   by a unit that holds its key; the row locks (`FOR UPDATE`) serialise units that hold one key
//!   on two topics (an execution's command and a worker result, claimed by two executors).
//! - Messages are at most [`JdbcOptions::max_message_bytes`] (8 MiB by default): a larger payload,
//!   or a larger execution document saved by a unit of work, is refused with
//!   [`QueueError::TooLarge`](kestra_core::queue::QueueError::TooLarge) before anything is written.
//!   Delayed messages are accepted only from a unit of work, on executor topics. Leases are timers
//!   (`claimed_until`): the queue declares `lease_timers` in its
//!   [`QueueCapabilities`](kestra_core::queue::QueueCapabilities). A unit of work is never fenced.
//! - [`purge_queue`] cleans the queue tables offline, when the engine cannot start.

// Without a dialect feature nothing uses the shared helpers.
#[cfg_attr(
    not(any(feature = "sqlite", feature = "postgres", feature = "mysql")),
    allow(dead_code)
)]
mod common;
mod error;
#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(feature = "testkit")]
pub mod testkit;

use std::sync::Arc;
use std::time::Duration;

use kestra_core::queue::Queue;
use kestra_core::repository::Repositories;

pub use error::JdbcError;

/// The database family behind a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite (`sqlite:`).
    Sqlite,
    /// PostgreSQL (`postgres:`, `postgresql:`).
    Postgres,
    /// MySQL or MariaDB (`mysql:`, `mariadb:`).
    MySql,
}

impl Dialect {
    /// The dialect of a database URL, from its scheme.
    pub fn from_url(url: &str) -> Result<Dialect, JdbcError> {
        let scheme = url.split(':').next().unwrap_or("").to_ascii_lowercase();
        match scheme.as_str() {
            "sqlite" => Ok(Dialect::Sqlite),
            "postgres" | "postgresql" => Ok(Dialect::Postgres),
            "mysql" | "mariadb" => Ok(Dialect::MySql),
            _ => Err(JdbcError::UnsupportedUrl {
                url: error::redact(url),
            }),
        }
    }
}

/// Connection settings.
#[derive(Debug, Clone)]
pub struct JdbcOptions {
    /// Pool size (PostgreSQL, MySQL; SQLite readers, at most 8 - SQLite always has one writer).
    /// Every open unit of work holds one connection.
    pub max_connections: u32,
    /// How long to wait for a pooled connection before failing.
    pub acquire_timeout: Duration,
    /// The largest message payload the queue accepts, in bytes (also the largest execution
    /// document a unit of work saves): a larger one is refused with
    /// [`QueueError::TooLarge`](kestra_core::queue::QueueError::TooLarge). Default
    /// [`DEFAULT_MAX_MESSAGE_BYTES`] (8 MiB).
    pub max_message_bytes: usize,
    /// SQLite: accept an existing but empty (0-byte) database file and initialise it as a new
    /// database (default `false`: such a file is refused, as it usually means a lost or truncated
    /// database - see [`JdbcError::EmptyDatabase`]).
    pub initialize_empty_sqlite: bool,
}

/// The default [`JdbcOptions::max_message_bytes`]: 8 MiB. Larger than Kafka's 1 MiB default, so
/// that a wide ForEach's execution document fits, and half of MariaDB's default
/// `max_allowed_packet` (16 MiB), which bounds one statement: a message published alone always
/// fits in it. A deployment that must behave as its Kafka one sets both to the same value.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

impl Default for JdbcOptions {
    fn default() -> Self {
        JdbcOptions {
            max_connections: 20,
            acquire_timeout: Duration::from_secs(30),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            initialize_empty_sqlite: false,
        }
    }
}

/// Row counts of the queue tables.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Rows waiting or claimed in `queue`.
    pub queued: u64,
    /// Rows in `queue_dead_letter`.
    pub dead_letters: u64,
    /// Rows in `queue_broadcast` (not yet purged).
    pub broadcast: u64,
}

/// What [`purge_queue`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeReport {
    /// Dead letters deleted.
    pub dead_letters: u64,
    /// Expired broadcast rows deleted.
    pub broadcast: u64,
    /// Queue rows of unknown topics or consumer groups deleted.
    pub unroutable: u64,
}

#[derive(Clone)]
enum Store {
    #[cfg(feature = "sqlite")]
    Sqlite(Arc<sqlite::store::Store>),
    #[cfg(feature = "postgres")]
    Postgres(Arc<postgres::store::Store>),
    #[cfg(feature = "mysql")]
    MySql(Arc<mysql::store::Store>),
}

/// Run `$body` with `$s` bound to the dialect's store.
macro_rules! with_store {
    ($store:expr, $s:ident => $body:expr) => {
        match *$store {
            #[cfg(feature = "sqlite")]
            Store::Sqlite(ref $s) => $body,
            #[cfg(feature = "postgres")]
            Store::Postgres(ref $s) => $body,
            #[cfg(feature = "mysql")]
            Store::MySql(ref $s) => $body,
        }
    };
}

/// The JDBC backend: a queue and repositories over one database. Cheap to clone.
#[derive(Clone)]
pub struct JdbcBackend {
    dialect: Dialect,
    store: Store,
}

impl std::fmt::Debug for JdbcBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JdbcBackend")
            .field("dialect", &self.dialect)
            .finish_non_exhaustive()
    }
}

#[allow(unused_variables, unreachable_code)]
fn feature_disabled(url: &str, feature: &'static str) -> JdbcError {
    JdbcError::FeatureDisabled {
        feature,
        url: error::redact(url),
    }
}

// Without any dialect feature the crate still compiles (every connect fails with FeatureDisabled).
#[cfg_attr(
    not(any(feature = "sqlite", feature = "postgres", feature = "mysql")),
    allow(unreachable_code, unused_variables)
)]
impl JdbcBackend {
    /// Connect to the database of `url` with default options and apply the migrations.
    pub async fn connect(url: &str) -> Result<JdbcBackend, JdbcError> {
        JdbcBackend::connect_with(url, JdbcOptions::default()).await
    }

    /// Connect to the database of `url` and apply the migrations.
    pub async fn connect_with(url: &str, options: JdbcOptions) -> Result<JdbcBackend, JdbcError> {
        let dialect = Dialect::from_url(url)?;
        let store = match dialect {
            #[cfg(feature = "sqlite")]
            Dialect::Sqlite => Store::Sqlite(sqlite::connect(url, &options).await?),
            #[cfg(feature = "postgres")]
            Dialect::Postgres => Store::Postgres(postgres::connect(url, &options).await?),
            #[cfg(feature = "mysql")]
            Dialect::MySql => Store::MySql(mysql::connect(url, &options).await?),
            #[allow(unreachable_patterns)]
            other => {
                return Err(feature_disabled(
                    url,
                    match other {
                        Dialect::Sqlite => "sqlite",
                        Dialect::Postgres => "postgres",
                        Dialect::MySql => "mysql",
                    },
                ));
            }
        };
        tracing::info!(?dialect, "JDBC backend connected and migrated");
        Ok(JdbcBackend { dialect, store })
    }

    /// The database family.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The queue.
    pub fn queue(&self) -> Arc<dyn Queue> {
        with_store!(&self.store, s => s.clone() as Arc<dyn Queue>)
    }

    /// Every repository.
    pub fn repositories(&self) -> Repositories {
        with_store!(&self.store, s => Repositories {
            flows: s.clone(),
            executions: s.clone(),
            logs: s.clone(),
            metrics: s.clone(),
            triggers: s.clone(),
            services: s.clone(),
        })
    }

    /// Row counts of the queue tables (monitoring, tests).
    pub async fn queue_stats(&self) -> Result<QueueStats, JdbcError> {
        let stats: Result<QueueStats, sqlx::Error> = with_store!(&self.store, s => s.stats().await);
        stats.map_err(|source| JdbcError::Database {
            operation: "queue stats",
            source,
        })
    }

    /// Delete broadcast rows older than the retention now (a background task also does it every
    /// 10 s); returns how many.
    pub async fn purge_broadcast(&self) -> Result<u64, JdbcError> {
        let purged: Result<u64, sqlx::Error> =
            with_store!(&self.store, s => s.purge_broadcast().await);
        purged.map_err(|source| JdbcError::Database {
            operation: "purge broadcast",
            source,
        })
    }

    /// Close the connection pools.
    pub async fn close(&self) {
        with_store!(&self.store, s => s.close().await)
    }
}

/// Offline queue maintenance, for when the engine cannot start (e.g. a queue full of poison
/// messages): connects without migrating, deletes dead letters, expired broadcast rows and rows of
/// unknown topics or consumer groups, then compacts the queue tables (`VACUUM` / `OPTIMIZE TABLE`).
#[cfg_attr(
    not(any(feature = "sqlite", feature = "postgres", feature = "mysql")),
    allow(unused_variables)
)]
pub async fn purge_queue(url: &str) -> Result<PurgeReport, JdbcError> {
    let db = |source| JdbcError::Database {
        operation: "purge queue",
        source,
    };
    match Dialect::from_url(url)? {
        #[cfg(feature = "sqlite")]
        Dialect::Sqlite => {
            let pool = sqlite::connect_raw(url).await?;
            let report = sqlite::store::purge_offline(&pool).await.map_err(db);
            pool.close().await;
            report
        }
        #[cfg(feature = "postgres")]
        Dialect::Postgres => {
            let pool = postgres::connect_raw(url).await?;
            let report = postgres::store::purge_offline(&pool).await.map_err(db);
            pool.close().await;
            report
        }
        #[cfg(feature = "mysql")]
        Dialect::MySql => {
            let pool = mysql::connect_raw(url).await?;
            let report = mysql::store::purge_offline(&pool).await.map_err(db);
            pool.close().await;
            report
        }
        #[allow(unreachable_patterns)]
        other => Err(feature_disabled(
            url,
            match other {
                Dialect::Sqlite => "sqlite",
                Dialect::Postgres => "postgres",
                Dialect::MySql => "mysql",
            },
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialect_from_url_scheme() {
        assert_eq!(
            Dialect::from_url("sqlite::memory:").ok(),
            Some(Dialect::Sqlite)
        );
        assert_eq!(
            Dialect::from_url("postgresql://h/db").ok(),
            Some(Dialect::Postgres)
        );
        assert_eq!(
            Dialect::from_url("mariadb://h/db").ok(),
            Some(Dialect::MySql)
        );
        assert!(matches!(
            Dialect::from_url("redis://u:pw@h"),
            Err(JdbcError::UnsupportedUrl { url }) if url == "redis://u:***@h"
        ));
    }
}
