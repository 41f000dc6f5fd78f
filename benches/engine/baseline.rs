//! The raw baseline of the engine benchmark (issue 15): the minimum reads and writes one execution of
//! each shape needs on a JDBC database, done by a tight loop of plain sqlx calls in the same database
//! as the engine it is compared with (tables of its own, `bench_raw_queue` and `bench_raw_state`).
//!
//! The model is the engine's, with nothing else:
//! - **emit**: a message is one row inserted in a queue table (autocommit);
//! - **executor unit**: one transaction that claims one message, reads the execution's state row,
//!   writes it back, inserts the jobs it starts (one multi-row insert) and deletes the claimed row;
//! - **worker**: one transaction that claims a job (`FOR UPDATE SKIP LOCKED` where the database has
//!   it) and marks it leased, then one that inserts the result and deletes the job.
//!
//! A sequential flow of `k` tasks is one emit, `k` times (executor unit starting a job, worker claim,
//! worker result) and a final executor unit; a fan-out of width `w` (ForEach, Parallel) is one emit,
//! one executor unit starting `w` jobs, `w` worker claims and results, and `w` executor units. No
//! expression, no flow, no logs, no batching across executions, messages of fixed size (a 1 KiB
//! state, 256-byte messages): what any engine built on a SQL queue pays at least.
//!
//! Written by hand because it is the thing measured: a crate would add its own cost.

use std::time::{Duration, Instant};

use sqlx::{AssertSqlSafe, Connection};

/// A connection of the baseline, on one of the three databases.
pub enum RawDb {
    #[cfg(feature = "sqlite")]
    Sqlite(sqlx::SqliteConnection),
    #[cfg(feature = "postgres")]
    Postgres(sqlx::PgConnection),
    #[cfg(feature = "mysql")]
    MySql(sqlx::MySqlConnection),
}

/// Expand `$body` once per database, with `$conn` bound to that database's connection, `$numbered`
/// to its placeholder style (`true`: `$1`, `false`: `?`) and `$skip` to the suffix of a claim.
macro_rules! each_db {
    ($db:expr, |$conn:ident, $numbered:ident, $skip:ident| $body:block) => {
        match $db {
            #[cfg(feature = "sqlite")]
            RawDb::Sqlite($conn) => {
                // One writer: nothing to skip.
                let ($numbered, $skip) = (false, "");
                $body
            }
            #[cfg(feature = "postgres")]
            RawDb::Postgres($conn) => {
                let ($numbered, $skip) = (true, " FOR UPDATE SKIP LOCKED");
                $body
            }
            #[cfg(feature = "mysql")]
            RawDb::MySql($conn) => {
                let ($numbered, $skip) = (false, " FOR UPDATE SKIP LOCKED");
                $body
            }
        }
    };
}

/// `n` placeholders starting at `from` (1-based), comma-separated, in the database's style.
fn marks(numbered: bool, from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| {
            if numbered {
                format!("${i}")
            } else {
                "?".to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

const MESSAGE: usize = 256;
const STATE: usize = 1024;

impl RawDb {
    /// Connect to `url` (the engine's database) and (re)create the baseline's tables.
    pub async fn connect(url: &str) -> Result<RawDb, sqlx::Error> {
        let mut db = if url.starts_with("sqlite:") {
            #[cfg(feature = "sqlite")]
            {
                use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
                use std::str::FromStr;
                // The engine's settings (kestra-backend-jdbc/src/sqlite.rs).
                let options = SqliteConnectOptions::from_str(url)?
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(10));
                RawDb::Sqlite(sqlx::SqliteConnection::connect_with(&options).await?)
            }
            #[cfg(not(feature = "sqlite"))]
            return Err(sqlx::Error::Configuration("sqlite feature off".into()));
        } else if url.starts_with("postgres") {
            #[cfg(feature = "postgres")]
            {
                RawDb::Postgres(sqlx::PgConnection::connect(url).await?)
            }
            #[cfg(not(feature = "postgres"))]
            return Err(sqlx::Error::Configuration("postgres feature off".into()));
        } else {
            #[cfg(feature = "mysql")]
            {
                RawDb::MySql(sqlx::MySqlConnection::connect(url).await?)
            }
            #[cfg(not(feature = "mysql"))]
            return Err(sqlx::Error::Configuration("mysql feature off".into()));
        };
        db.create().await?;
        Ok(db)
    }

    async fn create(&mut self) -> Result<(), sqlx::Error> {
        let (id, blob, text) = match self {
            #[cfg(feature = "sqlite")]
            RawDb::Sqlite(_) => ("INTEGER PRIMARY KEY AUTOINCREMENT", "BLOB", "TEXT"),
            #[cfg(feature = "postgres")]
            RawDb::Postgres(_) => ("BIGSERIAL PRIMARY KEY", "BYTEA", "VARCHAR(64)"),
            #[cfg(feature = "mysql")]
            RawDb::MySql(_) => (
                "BIGINT AUTO_INCREMENT PRIMARY KEY",
                "LONGBLOB",
                "VARCHAR(64)",
            ),
        };
        let statements = [
            "DROP TABLE IF EXISTS bench_raw_queue".to_string(),
            "DROP TABLE IF EXISTS bench_raw_state".to_string(),
            format!(
                "CREATE TABLE bench_raw_queue (id {id}, topic {text} NOT NULL, msg_key {text} NOT NULL, \
                 payload {blob} NOT NULL, leased_until BIGINT)"
            ),
            "CREATE INDEX bench_raw_queue_topic ON bench_raw_queue (topic, leased_until, id)"
                .to_string(),
            format!(
                "CREATE TABLE bench_raw_state (id {text} PRIMARY KEY, body {blob} NOT NULL, version BIGINT NOT NULL)"
            ),
        ];
        for sql in statements {
            each_db!(self, |conn, _numbered, _skip| {
                sqlx::query(AssertSqlSafe(sql)).execute(&mut *conn).await?;
            });
        }
        Ok(())
    }

    /// Insert one message (autocommit).
    async fn emit(&mut self, topic: &str, key: &str) -> Result<(), sqlx::Error> {
        let payload = vec![b'm'; MESSAGE];
        each_db!(self, |conn, numbered, _skip| {
            let sql = format!(
                "INSERT INTO bench_raw_queue (topic, msg_key, payload) VALUES ({})",
                marks(numbered, 1, 3)
            );
            sqlx::query(AssertSqlSafe(sql))
                .bind(topic)
                .bind(key)
                .bind(payload)
                .execute(&mut *conn)
                .await?;
        });
        Ok(())
    }

    /// One executor unit: claim one message of `topic`, read and write the execution's state,
    /// start `jobs` jobs, delete the claimed message; one transaction. False if nothing was there.
    async fn executor_unit(
        &mut self,
        topic: &str,
        execution: &str,
        jobs: usize,
    ) -> Result<bool, sqlx::Error> {
        let state = vec![b's'; STATE];
        let job = vec![b'j'; MESSAGE];
        each_db!(self, |conn, numbered, skip| {
            let mut tx = conn.begin().await?;
            let claim = format!(
                "SELECT id FROM bench_raw_queue WHERE topic = {} AND leased_until IS NULL ORDER BY id LIMIT 1{skip}",
                marks(numbered, 1, 1)
            );
            let Some((id,)): Option<(i64,)> = sqlx::query_as(AssertSqlSafe(claim))
                .bind(topic)
                .fetch_optional(&mut *tx)
                .await?
            else {
                return Ok(false);
            };
            let read = format!(
                "SELECT version FROM bench_raw_state WHERE id = {}",
                marks(numbered, 1, 1)
            );
            let version: Option<(i64,)> = sqlx::query_as(AssertSqlSafe(read))
                .bind(execution)
                .fetch_optional(&mut *tx)
                .await?;
            let write = match version {
                Some(_) => format!(
                    "UPDATE bench_raw_state SET body = {}, version = version + 1 WHERE id = {}",
                    marks(numbered, 1, 1),
                    marks(numbered, 2, 1)
                ),
                None => format!(
                    "INSERT INTO bench_raw_state (body, id, version) VALUES ({}, 1)",
                    marks(numbered, 1, 2)
                ),
            };
            sqlx::query(AssertSqlSafe(write))
                .bind(state)
                .bind(execution)
                .execute(&mut *tx)
                .await?;
            if jobs > 0 {
                let rows: Vec<String> = (0..jobs)
                    .map(|i| format!("({})", marks(numbered, 1 + i * 3, 3)))
                    .collect();
                let sql = format!(
                    "INSERT INTO bench_raw_queue (topic, msg_key, payload) VALUES {}",
                    rows.join(", ")
                );
                let mut insert = sqlx::query(AssertSqlSafe(sql));
                for _ in 0..jobs {
                    insert = insert.bind("job").bind(execution).bind(job.clone());
                }
                insert.execute(&mut *tx).await?;
            }
            let delete = format!(
                "DELETE FROM bench_raw_queue WHERE id = {}",
                marks(numbered, 1, 1)
            );
            sqlx::query(AssertSqlSafe(delete))
                .bind(id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        Ok(true)
    }

    /// A worker's claim: lease one job (one transaction); its id, `None` when there is none.
    async fn worker_claim(&mut self) -> Result<Option<i64>, sqlx::Error> {
        let until = chrono_like_now() + 120_000;
        each_db!(self, |conn, numbered, skip| {
            let mut tx = conn.begin().await?;
            let claim = format!(
                "SELECT id FROM bench_raw_queue WHERE topic = 'job' AND leased_until IS NULL ORDER BY id LIMIT 1{skip}"
            );
            let Some((id,)): Option<(i64,)> = sqlx::query_as(AssertSqlSafe(claim))
                .fetch_optional(&mut *tx)
                .await?
            else {
                return Ok(None);
            };
            let lease = format!(
                "UPDATE bench_raw_queue SET leased_until = {} WHERE id = {}",
                marks(numbered, 1, 1),
                marks(numbered, 2, 1)
            );
            sqlx::query(AssertSqlSafe(lease))
                .bind(until)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(Some(id))
        })
    }

    /// A worker's result: insert it and delete the job, one transaction.
    async fn worker_result(&mut self, job: i64, execution: &str) -> Result<(), sqlx::Error> {
        let payload = vec![b'r'; MESSAGE];
        each_db!(self, |conn, numbered, _skip| {
            let mut tx = conn.begin().await?;
            let insert = format!(
                "INSERT INTO bench_raw_queue (topic, msg_key, payload) VALUES ('result', {})",
                marks(numbered, 1, 2)
            );
            sqlx::query(AssertSqlSafe(insert))
                .bind(execution)
                .bind(payload)
                .execute(&mut *tx)
                .await?;
            let delete = format!(
                "DELETE FROM bench_raw_queue WHERE id = {}",
                marks(numbered, 1, 1)
            );
            sqlx::query(AssertSqlSafe(delete))
                .bind(job)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// One task of the model: a worker claims a job and hands its result back.
    async fn task(&mut self, execution: &str) -> Result<(), sqlx::Error> {
        let job = self.worker_claim().await?.ok_or_else(lost)?;
        self.worker_result(job, execution).await
    }

    /// One executor unit that must find its message.
    async fn unit(&mut self, topic: &str, execution: &str, jobs: usize) -> Result<(), sqlx::Error> {
        if self.executor_unit(topic, execution, jobs).await? {
            Ok(())
        } else {
            Err(lost())
        }
    }

    /// One execution of a flow of `tasks` sequential tasks, from its creation to its end.
    pub async fn sequential(&mut self, tasks: usize) -> Result<Duration, sqlx::Error> {
        let execution = new_execution_id();
        let start = Instant::now();
        self.emit("execution", &execution).await?;
        self.unit("execution", &execution, 1).await?;
        for i in 0..tasks {
            self.task(&execution).await?;
            let next = usize::from(i + 1 < tasks);
            self.unit("result", &execution, next).await?;
        }
        Ok(start.elapsed())
    }

    /// One execution of a fan-out of `width` tasks (ForEach, Parallel), from its creation to its end.
    pub async fn fan_out(&mut self, width: usize) -> Result<Duration, sqlx::Error> {
        let execution = new_execution_id();
        let start = Instant::now();
        self.emit("execution", &execution).await?;
        self.unit("execution", &execution, width).await?;
        for _ in 0..width {
            self.task(&execution).await?;
        }
        for _ in 0..width {
            self.unit("result", &execution, 0).await?;
        }
        Ok(start.elapsed())
    }

    /// Drop the baseline's tables.
    pub async fn drop_tables(&mut self) -> Result<(), sqlx::Error> {
        for sql in [
            "DROP TABLE IF EXISTS bench_raw_queue",
            "DROP TABLE IF EXISTS bench_raw_state",
        ] {
            each_db!(self, |conn, _numbered, _skip| {
                sqlx::query(sql).execute(&mut *conn).await?;
            });
        }
        Ok(())
    }
}

fn lost() -> sqlx::Error {
    sqlx::Error::Protocol("the raw baseline lost a message (a claim found nothing)".into())
}

fn new_execution_id() -> String {
    kestra::core::model::new_id()
}

/// Milliseconds since the epoch (a lease's end).
fn chrono_like_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
