//! PostgreSQL dialect: one pool for reads and writes, `FOR UPDATE SKIP LOCKED` claims, and a
//! `LISTEN kestra_queue` task (sqlx `PgListener`) that turns the `NOTIFY` sent by every publish (in
//! any process) into in-process wake-ups; polling stays as the fallback.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::{Pool, Postgres, Transaction};

use crate::JdbcOptions;
use crate::common::{Flavor, Notifier};
use crate::error::{JdbcError, redact};

pub(crate) type Db = Postgres;
pub(crate) const FLAVOR: Flavor = Flavor::Postgres;

// The same file is compiled once per dialect, against this module's `Db`, `FLAVOR` and `begin_write`.
#[allow(clippy::duplicate_mod)]
#[path = "store/mod.rs"]
pub(crate) mod store;

/// A plain transaction (`READ COMMITTED`); claims lock their rows.
pub(crate) async fn begin_write(pool: &Pool<Db>) -> Result<Transaction<'static, Db>, sqlx::Error> {
    pool.begin().await
}

/// Connect, migrate, build the store and start the `LISTEN` task.
pub(crate) async fn connect(
    url: &str,
    options: &JdbcOptions,
) -> Result<Arc<store::Store>, JdbcError> {
    let pool = crate::common::checked_when_idle(PgPoolOptions::new())
        .max_connections(options.max_connections)
        .acquire_timeout(options.acquire_timeout)
        .connect(url)
        .await
        .map_err(|source| JdbcError::Connect {
            url: redact(url),
            source,
        })?;
    sqlx::migrate!("migrations/postgres")
        .run(&pool)
        .await
        .map_err(|source| JdbcError::Migrate {
            dialect: "postgres",
            source,
        })?;
    let notifier = Arc::new(Notifier::default());
    let store = store::Store::new(
        pool.clone(),
        pool.clone(),
        notifier.clone(),
        None,
        options.max_message_bytes,
    );
    store.add_task(tokio::spawn(listen(pool, notifier)));
    Ok(store)
}

/// Forward `NOTIFY kestra_queue, '<topic>'` to the in-process notifier, reconnecting on errors.
async fn listen(pool: Pool<Db>, notifier: Arc<Notifier>) {
    loop {
        match PgListener::connect_with(&pool).await {
            Ok(mut listener) => match listener.listen("kestra_queue").await {
                Ok(()) => loop {
                    match listener.recv().await {
                        // This store's own notifications are skipped: its publishers woke its
                        // consumers when they committed (a second wake-up was a claim that
                        // found nothing).
                        Ok(n) => match notifier.announced(n.payload()) {
                            Ok(Some(topic)) => notifier.notify(topic),
                            Ok(None) => {}
                            Err(()) => notifier.notify_all(),
                        },
                        Err(error) => {
                            tracing::warn!(%error, "LISTEN connection lost; polling until it is back");
                            notifier.notify_all();
                            break;
                        }
                    }
                },
                Err(error) => tracing::warn!(%error, "cannot LISTEN kestra_queue"),
            },
            Err(error) => tracing::warn!(%error, "cannot open the LISTEN connection"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A small pool without migrations (offline maintenance).
pub(crate) async fn connect_raw(url: &str) -> Result<Pool<Db>, JdbcError> {
    PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .map_err(|source| JdbcError::Connect {
            url: redact(url),
            source,
        })
}
