//! Dialect-independent helpers: the SQL flavour, epoch-millisecond dates, `LIKE` patterns, sort-field
//! to column maps and the in-process wake-up notifier.

use chrono::{DateTime, TimeZone, Utc};
use kestra_core::model::Level;
use kestra_core::queue::Topic;
use kestra_core::repository::{RepoResult, RepositoryError, Sort};
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

/// The SQL dialect a store speaks; selects the few statements that differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// SQLite: one writer, no `SKIP LOCKED`.
    #[allow(dead_code)]
    Sqlite,
    /// PostgreSQL.
    #[allow(dead_code)]
    Postgres,
    /// MySQL / MariaDB.
    #[allow(dead_code)]
    MySql,
}

impl Flavor {
    /// Suffix of a competing claim: lock the rows and skip those another transaction holds.
    pub(crate) fn skip_locked(self, alias: &str) -> String {
        match self {
            Flavor::Sqlite => String::new(),
            Flavor::Postgres => format!(" FOR UPDATE OF {alias} SKIP LOCKED"),
            Flavor::MySql => " FOR UPDATE SKIP LOCKED".to_string(),
        }
    }

    /// Index hint after a table name in `FROM` (MySQL / MariaDB: `FORCE INDEX`; nothing elsewhere).
    /// For scans that read a queue table in index order with a `LIMIT`: with enough rows,
    /// MariaDB's optimizer prefers walking the primary key in `id` order and filtering, which
    /// examines (and, in a locking read, briefly locks) every row of every other topic on the
    /// way - the other consumers' rows then look locked to their own `SKIP LOCKED` claims.
    pub(crate) fn force_index(self, index: &str) -> String {
        match self {
            Flavor::Sqlite | Flavor::Postgres => String::new(),
            Flavor::MySql => format!(" FORCE INDEX ({index})"),
        }
    }

    /// Suffix that locks the rows read (`SELECT ... FOR UPDATE`); SQLite's single writer needs none.
    pub(crate) fn for_update(self) -> &'static str {
        match self {
            Flavor::Sqlite => "",
            Flavor::Postgres | Flavor::MySql => " FOR UPDATE",
        }
    }

    /// The `ON CONFLICT` / `ON DUPLICATE KEY` clause that updates `columns` on a key conflict.
    pub(crate) fn upsert(self, key: &[&str], columns: &[&str]) -> String {
        match self {
            Flavor::Sqlite | Flavor::Postgres => {
                let sets: Vec<String> = columns
                    .iter()
                    .map(|c| format!("{c} = excluded.{c}"))
                    .collect();
                format!(
                    " ON CONFLICT ({}) DO UPDATE SET {}",
                    key.join(", "),
                    sets.join(", ")
                )
            }
            Flavor::MySql => {
                let sets: Vec<String> = columns
                    .iter()
                    .map(|c| format!("{c} = VALUES({c})"))
                    .collect();
                format!(" ON DUPLICATE KEY UPDATE {}", sets.join(", "))
            }
        }
    }
}

/// How long a connection may have sat idle in a pool before the pool checks it (a ping) as it
/// hands it out. Under load a pool's connections are back in use within milliseconds (no ping);
/// a database that went down and came back took longer than this, so the connections it closed
/// are found out by the ping and replaced, as sqlx does by default (found by the fault suite's
/// `database_restart_under_load` with 10 s: the first read of a repository after a 4 s restart
/// failed on a dead connection).
pub(crate) const PING_IF_IDLE_FOR: std::time::Duration = std::time::Duration::from_secs(1);

/// `options` with sqlx's check on every acquire (a ping: a round trip to the server, a hand-off
/// to SQLite's connection thread - several per task on the hot path) replaced by a check of the
/// connections that sat idle [`PING_IF_IDLE_FOR`] or longer: those a server restart or an idle
/// timeout may have closed. A connection that dies within that time of its last use (a restart
/// quicker than it) fails its next statement, as one that died between the ping and the statement
/// always could: the components retry or redeliver; a repository read (the API) fails once.
pub(crate) fn checked_when_idle<DB: sqlx::Database>(
    options: sqlx::pool::PoolOptions<DB>,
) -> sqlx::pool::PoolOptions<DB> {
    options
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_IF_IDLE_FOR {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
}

/// Now, in epoch milliseconds.
pub(crate) fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// A date in epoch milliseconds.
pub(crate) fn to_ms(date: DateTime<Utc>) -> i64 {
    date.timestamp_millis()
}

/// Epoch milliseconds as a date (out-of-range values clamp to the epoch).
pub(crate) fn from_ms(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// A duration in milliseconds, saturating.
pub(crate) fn duration_ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

/// The escape character of every `LIKE` this crate writes (`ESCAPE '!'`: the same on all dialects,
/// unlike a backslash, which MySQL string literals treat specially).
pub(crate) const LIKE_ESCAPE: &str = " ESCAPE '!'";

fn escape_like(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    for c in s.chars() {
        if matches!(c, '!' | '%' | '_') {
            out.push('!');
        }
        out.push(c);
    }
    out
}

/// Pattern for a case-insensitive substring match against `LOWER(column)`.
pub(crate) fn like_contains(q: &str) -> String {
    format!("%{}%", escape_like(&q.to_lowercase()))
}

/// Pattern matching the children of a namespace (`company` -> `company.%`).
pub(crate) fn like_children(namespace: &str) -> String {
    format!("{}.%", escape_like(namespace))
}

/// Numeric rank of a log level (`TRACE` = 0 ... `ERROR` = 4), stored for `min_level` filters.
pub(crate) fn level_rank(level: Level) -> i32 {
    match level {
        Level::Trace => 0,
        Level::Debug => 1,
        Level::Info => 2,
        Level::Warn => 3,
        Level::Error => 4,
    }
}

/// A sortable column: the column name and whether it may be NULL (NULLs always sort last, the same on
/// every dialect).
pub(crate) type SortColumn = (&'static str, bool);

/// Map allow-listed sort fields to `ORDER BY` terms; errors on any other field.
pub(crate) fn order_by(
    sort: &[Sort],
    allowed: &'static [&'static str],
    map: fn(&str) -> Option<SortColumn>,
    default: &'static str,
    tie_breaker: &'static str,
) -> RepoResult<String> {
    if sort.is_empty() {
        return Ok(format!(" ORDER BY {default}"));
    }
    let mut terms = Vec::new();
    for s in sort {
        s.check(allowed)?;
        let (column, nullable) = map(&s.field).ok_or_else(|| RepositoryError::InvalidSort {
            field: s.field.clone(),
            allowed,
        })?;
        let dir = if s.descending { "DESC" } else { "ASC" };
        if nullable {
            terms.push(format!(
                "CASE WHEN {column} IS NULL THEN 1 ELSE 0 END ASC, {column} {dir}"
            ));
        } else {
            terms.push(format!("{column} {dir}"));
        }
    }
    terms.push(tie_breaker.to_string());
    Ok(format!(" ORDER BY {}", terms.join(", ")))
}

/// Columns of [`kestra_core::repository::EXECUTION_SORT_FIELDS`].
pub(crate) fn execution_sort_column(field: &str) -> Option<SortColumn> {
    Some(match field {
        "id" => ("e.id", false),
        "namespace" => ("e.namespace", false),
        "flowId" => ("e.flow_id", false),
        "state.current" => ("e.state_current", false),
        "state.startDate" => ("e.start_date", false),
        "state.endDate" => ("e.end_date", true),
        _ => return None,
    })
}

/// Columns of [`kestra_core::repository::FLOW_SORT_FIELDS`].
pub(crate) fn flow_sort_column(field: &str) -> Option<SortColumn> {
    Some(match field {
        "id" => ("f.flow_id", false),
        "namespace" => ("f.namespace", false),
        "updated" => ("f.updated", false),
        _ => return None,
    })
}

/// Columns of [`kestra_core::repository::LOG_SORT_FIELDS`].
pub(crate) fn log_sort_column(field: &str) -> Option<SortColumn> {
    Some(match field {
        "timestamp" => ("l.ts", false),
        "level" => ("l.lvl", false),
        "namespace" => ("l.namespace", false),
        "flowId" => ("l.flow_id", false),
        _ => return None,
    })
}

/// Columns of [`kestra_core::repository::TRIGGER_SORT_FIELDS`].
pub(crate) fn trigger_sort_column(field: &str) -> Option<SortColumn> {
    Some(match field {
        "triggerId" => ("t.trigger_id", false),
        "flowId" => ("t.flow_id", false),
        "namespace" => ("t.namespace", false),
        "nextExecutionDate" => ("t.next_execution_date", true),
        "updatedDate" => ("t.updated", false),
        _ => return None,
    })
}

/// In-process wake-ups, one per topic: publishers of this process (and, on PostgreSQL, the
/// `LISTEN` task) wake the consumers waiting on a topic.
#[derive(Debug)]
pub(crate) struct Notifier {
    topics: [Notify; Topic::ALL.len()],
    /// How many wake-ups each topic has had: a waiter that read the topic when it stood at some
    /// value knows, while it has not moved, that nothing was published in this process since.
    generations: [AtomicU64; Topic::ALL.len()],
    /// PostgreSQL: this store's mark in the `NOTIFY` payloads it sends (`<topic>@<instance>`), so
    /// that its `LISTEN` task skips its own (its publishers woke its consumers already).
    instance: String,
}

impl Default for Notifier {
    fn default() -> Self {
        Notifier {
            topics: Default::default(),
            generations: Default::default(),
            instance: kestra_core::model::new_id(),
        }
    }
}

impl Notifier {
    /// The payload suffix of this store's `NOTIFY`s (`@<instance>`).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn echo_mark(&self) -> String {
        format!("@{}", self.instance)
    }

    /// The topic a `NOTIFY` payload announces (`<topic>` or `<topic>@<instance>`): `Ok(None)`
    /// when this store sent it, `Err(())` when the topic is unknown (wake every topic).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn announced(&self, payload: &str) -> Result<Option<Topic>, ()> {
        let (topic, instance) = payload.split_once('@').unwrap_or((payload, ""));
        if instance == self.instance {
            return Ok(None);
        }
        topic.parse::<Topic>().map(Some).map_err(|_| ())
    }

    fn index(topic: Topic) -> usize {
        Topic::ALL.iter().position(|t| *t == topic).unwrap_or(0)
    }

    /// The wake-up of a topic.
    pub(crate) fn topic(&self, topic: Topic) -> &Notify {
        &self.topics[Self::index(topic)]
    }

    /// Wake every waiter of `topic` (its generation moves first).
    pub(crate) fn notify(&self, topic: Topic) {
        self.generations[Self::index(topic)].fetch_add(1, Ordering::SeqCst);
        self.topic(topic).notify_waiters();
    }

    /// The wake-ups `topic` has had so far (read it after arming a wait: a wake-up between the two
    /// is then either seen here or delivered to the wait).
    pub(crate) fn generation(&self, topic: Topic) -> u64 {
        self.generations[Self::index(topic)].load(Ordering::SeqCst)
    }

    /// The wake-ups of `topics` together (a sum: it moves when one of theirs does).
    pub(crate) fn generation_of(&self, topics: &[Topic]) -> u64 {
        topics
            .iter()
            .map(|t| self.generation(*t))
            .fold(0, u64::wrapping_add)
    }

    /// Wake every waiter of every topic (e.g. after a lost `LISTEN` connection).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn notify_all(&self) {
        for (n, g) in self.topics.iter().zip(&self.generations) {
            g.fetch_add(1, Ordering::SeqCst);
            n.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_skips_its_own_notifications_only() {
        let (mine, other) = (Notifier::default(), Notifier::default());
        let own = format!("execution{}", mine.echo_mark());
        assert_eq!(mine.announced(&own), Ok(None), "its own: skipped");
        assert_eq!(other.announced(&own), Ok(Some(Topic::Execution)));
        assert_eq!(
            mine.announced("worker_task_result"),
            Ok(Some(Topic::WorkerTaskResult)),
            "no mark (an older version): announced"
        );
        assert_eq!(mine.announced("no-such-topic@x"), Err(()));
    }

    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(like_contains("50%_Off!"), "%50!%!_off!!%");
        assert_eq!(like_children("company"), "company.%");
        assert_eq!(like_children("a_b"), "a!_b.%");
    }

    #[test]
    fn order_by_rejects_unknown_fields_and_puts_nulls_last() {
        let bad = order_by(
            &[Sort::parse("nope:desc")],
            kestra_core::repository::EXECUTION_SORT_FIELDS,
            execution_sort_column,
            "e.start_date DESC",
            "e.id ASC",
        );
        assert!(matches!(bad, Err(RepositoryError::InvalidSort { .. })));
        let ok = order_by(
            &[Sort::parse("state.endDate:desc")],
            kestra_core::repository::EXECUTION_SORT_FIELDS,
            execution_sort_column,
            "e.start_date DESC",
            "e.id ASC",
        );
        assert_eq!(
            ok.ok().as_deref(),
            Some(
                " ORDER BY CASE WHEN e.end_date IS NULL THEN 1 ELSE 0 END ASC, e.end_date DESC, e.id ASC"
            )
        );
    }

    #[test]
    fn dates_round_trip_through_milliseconds() {
        let d = from_ms(1_700_000_000_123);
        assert_eq!(to_ms(d), 1_700_000_000_123);
    }
}
