//! MySQL / MariaDB dialect: one pool whose sessions run `READ COMMITTED` (no gap locks between claims
//! and inserts), `FOR UPDATE SKIP LOCKED` claims (MariaDB 10.6+, MySQL 8+), and adaptive polling as the
//! only cross-process wake-up (in-process publishes still wake local consumers at once).

use std::sync::Arc;

use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::{Executor, MySql, Pool, Transaction};

use crate::JdbcOptions;
use crate::common::{Flavor, Notifier};
use crate::error::{JdbcError, redact};

pub(crate) type Db = MySql;
pub(crate) const FLAVOR: Flavor = Flavor::MySql;

// The same file is compiled once per dialect, against this module's `Db`, `FLAVOR` and `begin_write`.
#[allow(clippy::duplicate_mod)]
#[path = "store/mod.rs"]
pub(crate) mod store;

/// A plain transaction (`READ COMMITTED`, set per session); claims lock their rows.
pub(crate) async fn begin_write(pool: &Pool<Db>) -> Result<Transaction<'static, Db>, sqlx::Error> {
    pool.begin().await
}

fn pool_options(max: u32) -> MySqlPoolOptions {
    crate::common::checked_when_idle(MySqlPoolOptions::new())
        .max_connections(max)
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                    .await?;
                Ok(())
            })
        })
}

fn connect_options(url: &str) -> Result<MySqlConnectOptions, JdbcError> {
    // `mariadb://` is accepted as an alias of `mysql://`.
    let url = match url.strip_prefix("mariadb:") {
        Some(rest) => format!("mysql:{rest}"),
        None => url.to_string(),
    };
    url.parse::<MySqlConnectOptions>()
        .map_err(|source| JdbcError::Connect {
            url: redact(&url),
            source,
        })
}

/// Connect, migrate and build the store.
pub(crate) async fn connect(
    url: &str,
    options: &JdbcOptions,
) -> Result<Arc<store::Store>, JdbcError> {
    let pool = pool_options(options.max_connections)
        .acquire_timeout(options.acquire_timeout)
        .connect_with(connect_options(url)?)
        .await
        .map_err(|source| JdbcError::Connect {
            url: redact(url),
            source,
        })?;
    sqlx::migrate!("migrations/mysql")
        .run(&pool)
        .await
        .map_err(|source| JdbcError::Migrate {
            dialect: "mysql",
            source,
        })?;
    Ok(store::Store::new(
        pool.clone(),
        pool,
        Arc::new(Notifier::default()),
        None,
        options.max_message_bytes,
    ))
}

/// A small pool without migrations (offline maintenance).
pub(crate) async fn connect_raw(url: &str) -> Result<Pool<Db>, JdbcError> {
    pool_options(1)
        .connect_with(connect_options(url)?)
        .await
        .map_err(|source| JdbcError::Connect {
            url: redact(url),
            source,
        })
}
