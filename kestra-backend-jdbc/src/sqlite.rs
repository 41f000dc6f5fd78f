//! SQLite dialect: WAL mode, `synchronous=NORMAL`, a busy timeout, one writer connection (claims and
//! units of work are serialised by it, `BEGIN IMMEDIATE`) and a small pool of readers. In-process
//! wake-ups only (one writer means one process publishes), polling as the fallback.
//!
//! `sqlite::memory:` (or `mode=memory`) gives a private database in a temporary file that is removed
//! when the store drops: the writer/reader split works the same as with a file, which a real in-memory
//! database cannot offer to several connections without shared-cache table locks.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Pool, Sqlite, Transaction};

use crate::JdbcOptions;
use crate::common::{Flavor, Notifier};
use crate::error::{JdbcError, redact};

pub(crate) type Db = Sqlite;
pub(crate) const FLAVOR: Flavor = Flavor::Sqlite;

// The same file is compiled once per dialect, against this module's `Db`, `FLAVOR` and `begin_write`.
#[allow(clippy::duplicate_mod)]
#[path = "store/mod.rs"]
pub(crate) mod store;

/// Every write transaction takes the write lock up front, so a read-then-write never hits `BUSY`.
pub(crate) async fn begin_write(pool: &Pool<Db>) -> Result<Transaction<'static, Db>, sqlx::Error> {
    pool.begin_with("BEGIN IMMEDIATE").await
}

/// Removes a temporary database file (and its WAL files) when dropped.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.0.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(PathBuf::from(p));
        }
    }
}

/// The first 16 bytes of every SQLite database file.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// Refuses an existing database file that is empty (unless `initialize_empty`) or does not start
/// with the SQLite header. A missing file is fine (it is created). An empty file next to a
/// non-empty write-ahead log is left to SQLite, which recovers it from the log.
fn check_existing_file(path: &std::path::Path, initialize_empty: bool) -> Result<(), JdbcError> {
    use std::io::Read;
    let shown = path.display().to_string();
    let inspect = |source| JdbcError::Inspect {
        path: shown.clone(),
        source,
    };
    let metadata = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(inspect(e)),
    };
    if metadata.len() == 0 {
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let wal_len = std::fs::metadata(PathBuf::from(wal)).map_or(0, |m| m.len());
        if initialize_empty || wal_len > 0 {
            return Ok(());
        }
        return Err(JdbcError::EmptyDatabase { path: shown });
    }
    let mut header = [0u8; 16];
    let mut file = std::fs::File::open(path).map_err(inspect)?;
    let read = file.read(&mut header).map_err(inspect)?;
    if read < header.len() || &header != SQLITE_HEADER {
        return Err(JdbcError::NotADatabase { path: shown });
    }
    Ok(())
}

fn options(
    url: &str,
    initialize_empty: bool,
) -> Result<(SqliteConnectOptions, Option<TempFile>), JdbcError> {
    let in_memory = url.contains(":memory:") || url.contains("mode=memory");
    let (opts, temp) = if in_memory {
        let path = std::env::temp_dir().join(format!("kestra-{}.db", kestra_core::model::new_id()));
        (
            SqliteConnectOptions::new().filename(&path),
            Some(TempFile(path)),
        )
    } else {
        let opts = SqliteConnectOptions::from_str(url).map_err(|source| JdbcError::Connect {
            url: redact(url),
            source,
        })?;
        if let Some(dir) = opts
            .get_filename()
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir).map_err(|source| JdbcError::CreateDir {
                path: dir.display().to_string(),
                source,
            })?;
        }
        check_existing_file(opts.get_filename(), initialize_empty)?;
        (opts, None)
    };
    Ok((
        opts.create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(false),
        temp,
    ))
}

/// Connect, migrate and build the store.
pub(crate) async fn connect(
    url: &str,
    options_: &JdbcOptions,
) -> Result<Arc<store::Store>, JdbcError> {
    let (opts, temp) = options(url, options_.initialize_empty_sqlite)?;
    let connect_err = |source| JdbcError::Connect {
        url: redact(url),
        source,
    };
    let write = crate::common::checked_when_idle(SqlitePoolOptions::new())
        .max_connections(1)
        .acquire_timeout(options_.acquire_timeout)
        .connect_with(opts.clone())
        .await
        .map_err(connect_err)?;
    sqlx::migrate!("migrations/sqlite")
        .run(&write)
        .await
        .map_err(|source| JdbcError::Migrate {
            dialect: "sqlite",
            source,
        })?;
    let read = crate::common::checked_when_idle(SqlitePoolOptions::new())
        .max_connections(options_.max_connections.clamp(1, 8))
        .acquire_timeout(options_.acquire_timeout)
        .connect_with(opts)
        .await
        .map_err(connect_err)?;
    let guard: Option<Box<dyn std::any::Any + Send + Sync>> =
        temp.map(|t| Box::new(t) as Box<dyn std::any::Any + Send + Sync>);
    Ok(store::Store::new(
        write,
        read,
        Arc::new(Notifier::default()),
        guard,
        options_.max_message_bytes,
    ))
}

/// A single connection without migrations (offline maintenance).
pub(crate) async fn connect_raw(url: &str) -> Result<Pool<Db>, JdbcError> {
    let (opts, _temp) = options(url, false)?;
    SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(opts.create_if_missing(false))
        .await
        .map_err(|source| JdbcError::Connect {
            url: redact(url),
            source,
        })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use kestra_core::queue::{ConsumerGroup, Envelope, Queue, Topic};

    use super::Db;
    use super::store::{Qb, write_at_once};

    /// The prepared statements of `conn` that SQLite prepared again since their first preparation,
    /// with how many times (`SQLITE_STMTSTATUS_REPREPARE`), by their SQL.
    #[allow(unsafe_code)]
    async fn reprepared(
        conn: &mut sqlx::SqliteConnection,
    ) -> Result<Vec<(String, i32)>, sqlx::Error> {
        use libsqlite3_sys::{
            SQLITE_STMTSTATUS_REPREPARE, sqlite3_next_stmt, sqlite3_sql, sqlite3_stmt_status,
        };
        let mut handle = conn.lock_handle().await?;
        let db = handle.as_raw_handle().as_ptr();
        let mut found = Vec::new();
        // SAFETY: `db` is the open connection that `handle` keeps locked (no other thread uses it)
        // for the whole loop; the calls only walk its list of prepared statements and read their
        // counters and SQL, which is copied before the next call.
        unsafe {
            let mut stmt = sqlite3_next_stmt(db, std::ptr::null_mut());
            while !stmt.is_null() {
                let count = sqlite3_stmt_status(stmt, SQLITE_STMTSTATUS_REPREPARE, 0);
                let sql = sqlite3_sql(stmt);
                if count > 0 && !sql.is_null() {
                    let sql = std::ffi::CStr::from_ptr(sql).to_string_lossy().into_owned();
                    found.push((sql, count));
                }
                stmt = sqlite3_next_stmt(db, stmt);
            }
        }
        Ok(found)
    }

    /// Claims of different sizes (a worker's free slots, an executor's batch over several topics)
    /// reuse their prepared statements: none is prepared again for the limit bound (SQLite plans a
    /// bare `LIMIT ?` with its bound value and then prepares it again on every bind, see
    /// `store::push_limit`).
    #[tokio::test]
    async fn claims_of_any_size_keep_their_prepared_statements()
    -> Result<(), Box<dyn std::error::Error>> {
        let store = super::connect("sqlite::memory:", &crate::JdbcOptions::default()).await?;
        let mut messages = Vec::new();
        for i in 0..12 {
            messages.push(Envelope::new(Topic::WorkerJob, format!("job-{i}"), "{}"));
            messages.push(Envelope::new(Topic::Execution, format!("exec-{i}"), "{}"));
        }
        store.publish(messages).await?;
        let lease = Duration::from_secs(60);
        for max in [1, 2, 3, 4] {
            let claimed = store
                .receive(
                    ConsumerGroup::Worker,
                    Topic::WorkerJob,
                    max,
                    lease,
                    Duration::ZERO,
                )
                .await?;
            assert_eq!(claimed.len(), max, "a worker claim of {max}");
        }
        let topics = [Topic::Execution, Topic::ExecutionCommand];
        for max in [1, 2, 3] {
            let unit = store
                .begin(ConsumerGroup::Executor, &topics, max, Duration::ZERO)
                .await?
                .ok_or("an executor claim found nothing")?;
            assert_eq!(unit.deliveries().len(), max, "an executor claim of {max}");
            unit.commit().await?;
        }
        // SQLite has one write connection: the one every claim above used. The migrations'
        // statements were prepared again as the migrations changed the schema: not claims.
        let mut conn = store.write.acquire().await?;
        let again: Vec<_> = reprepared(&mut conn)
            .await?
            .into_iter()
            .filter(|(sql, _)| !sql.contains("_sqlx_migrations"))
            .collect();
        assert!(
            again.is_empty(),
            "statements prepared again on the write connection: {again:?}"
        );
        Ok(())
    }

    /// A statement that fails in the middle of [`write_at_once`] leaves nothing of the transaction
    /// written, and the pool's only connection is usable after (still the same in-memory database:
    /// a connection closed instead would have taken the table with it).
    #[tokio::test]
    async fn write_at_once_rolls_back_when_a_statement_fails() -> Result<(), sqlx::Error> {
        let pool = sqlx::pool::PoolOptions::<Db>::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await?;
        sqlx::raw_sql("CREATE TABLE t (v INTEGER NOT NULL)")
            .execute(&pool)
            .await?;
        let failing = Qb::new(
            "BEGIN IMMEDIATE; INSERT INTO t (v) VALUES (1); INSERT INTO t (v) VALUES (NULL); ",
        );
        let refused = write_at_once(&pool, failing).await;
        assert!(
            refused.is_err(),
            "the NOT NULL violation is an error: {refused:?}"
        );
        let ok = Qb::new(
            "BEGIN IMMEDIATE; INSERT INTO t (v) VALUES (2); INSERT INTO t (v) VALUES (3); ",
        );
        assert_eq!(write_at_once(&pool, ok).await?, 2);
        let rows: Vec<(i64,)> = sqlx::query_as("SELECT v FROM t ORDER BY v")
            .fetch_all(&pool)
            .await?;
        assert_eq!(rows, vec![(2,), (3,)]);
        Ok(())
    }
}
