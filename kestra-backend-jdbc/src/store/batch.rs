//! PostgreSQL and MySQL: the executions a unit of work saves, written together when it commits.
//!
//! Every statement is a round trip to the server. Written at each save, an execution cost two to
//! four (its row, its labels on its first save, its task runs); a unit of the executor saves
//! several executions (under load, about four per unit of twenty messages). Staged here and
//! written at commit, the unit's executions cost one statement per table: the new rows, the
//! rows replaced, the labels, the task runs (`UnitOfWork` holds the claim of every execution it
//! saves, and PostgreSQL/MySQL lock the stored rows when they are loaded, so nothing else writes
//! them meanwhile).
//!
//! A row the unit found not stored is inserted, not upserted: if another writer (an API call)
//! stored it in between, the insert fails on the key and the unit is refused
//! ([`QueueError::Fenced`]) instead of overwriting it - its messages come back, and the next unit
//! loads what that writer stored.

use super::executions::{ExecutionRow, push_execution_rows, push_label_rows};
use super::*;
use kestra_core::model::Label;

/// Bytes bound by one statement of several rows, about (MySQL's `max_allowed_packet` is 16 MiB
/// by default on MariaDB, 64 MiB on MySQL 8; a single row over it goes alone).
const BATCH_BYTES: usize = 1 << 20;

/// One execution's staged write (see [`super::task_runs::stage_write`]).
pub(super) struct PendingSave {
    pub(super) row: ExecutionRow,
    /// The unit found the execution not stored: its row is inserted, not replaced.
    pub(super) created: bool,
    /// The labels, when they are rewritten, and whether rows of them may be stored (deleted
    /// first).
    pub(super) labels: Option<(bool, Vec<Label>)>,
    /// Task run rows from this position on are deleted (the list may have been longer).
    pub(super) truncate: Option<i64>,
    /// `(position, document)` of each task run written.
    pub(super) runs: Vec<(usize, String)>,
}

/// The executions a unit saved and has not written yet, at most one write per execution (a
/// second save of one is preceded by [`PendingSaves::write`]).
#[derive(Default)]
pub(super) struct PendingSaves {
    saves: Vec<PendingSave>,
    /// The ids of `saves` (every load and save of the unit asks).
    ids: HashSet<String>,
}

impl PendingSaves {
    /// Whether a write of execution `id` is staged.
    pub(super) fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.saves.is_empty()
    }

    /// Stage `save`; the caller wrote any earlier write of the same execution first.
    pub(super) fn push(&mut self, save: PendingSave) {
        let fresh = self.ids.insert(save.row.id().to_string());
        debug_assert!(fresh, "one staged write per execution");
        self.saves.push(save);
    }

    /// Write everything staged in the caller's transaction, one statement per table (per
    /// [`CHUNK`] rows or [`BATCH_BYTES`]), rows first (every writer locks an execution's row
    /// before its task runs), in id order. A new row stored meanwhile by another writer refuses
    /// the unit with [`QueueError::Fenced`].
    pub(super) async fn write(&mut self, conn: &mut Conn) -> Result<(), QueueError> {
        let Some(staged) = self.take() else {
            return Ok(());
        };
        let err = queue_err("commit");
        let Staged {
            created,
            replaced,
            labels_deleted,
            labels,
            truncated,
            runs,
        } = staged;
        for rows in batches(created, ExecutionRow::len) {
            let ids: Vec<String> = rows.iter().map(|r| r.id().to_string()).collect();
            let mut qb = Qb::new("");
            push_execution_rows(&mut qb, rows, false);
            let done = qb.build().execute(&mut *conn).await;
            done.map_err(|e| fenced_if_stored(e, &ids).unwrap_or_else(&err))?;
        }
        for rows in batches(replaced, ExecutionRow::len) {
            let mut qb = Qb::new("");
            push_execution_rows(&mut qb, rows, true);
            qb.build().execute(&mut *conn).await.map_err(&err)?;
        }
        for ids in labels_deleted.chunks(CHUNK) {
            let mut qb = Qb::new("DELETE FROM execution_labels WHERE execution_id IN ");
            push_in(&mut qb, ids.iter().cloned());
            qb.build().execute(&mut *conn).await.map_err(&err)?;
        }
        for rows in batches(labels, |(_, _, l)| l.key.len() + l.value.len() + 64) {
            let mut qb = Qb::new("");
            push_label_rows(&mut qb, rows);
            qb.build().execute(&mut *conn).await.map_err(&err)?;
        }
        for chunk in truncated.chunks(CHUNK) {
            let mut qb = Qb::new("");
            push_truncate(&mut qb, chunk);
            qb.build().execute(&mut *conn).await.map_err(&err)?;
        }
        for rows in batches(runs, |(_, _, doc)| doc.len() + 64) {
            let mut qb = Qb::new("");
            push_run_rows(&mut qb, rows);
            qb.build().execute(&mut *conn).await.map_err(&err)?;
        }
        Ok(())
    }

    /// PostgreSQL: push everything staged onto `with`, one part per table, and forget it (it is
    /// written when that statement runs; a unique violation of the statement then means a new row
    /// was stored meanwhile, [`fenced_if_stored`] with the ids returned). `None`, with nothing
    /// pushed or forgotten, when the writes must run in order (labels or task runs of a stored
    /// execution deleted before theirs are written) or a table's rows need several statements.
    pub(super) fn push_parts(&mut self, with: &mut PgWith) -> Option<Vec<String>> {
        let ordered = self
            .saves
            .iter()
            .any(|s| s.truncate.is_some() || s.labels.as_ref().is_some_and(|(stored, _)| *stored));
        let runs: usize = self.saves.iter().map(|s| s.runs.len()).sum();
        let labels: usize = self
            .saves
            .iter()
            .filter_map(|s| s.labels.as_ref().map(|(_, l)| l.len()))
            .sum();
        if ordered || self.saves.len() > CHUNK || runs > CHUNK || labels > CHUNK {
            return None;
        }
        let Staged {
            created,
            replaced,
            labels,
            runs,
            ..
        } = self.take()?;
        let ids = created.iter().map(|r| r.id().to_string()).collect();
        if !created.is_empty() {
            push_execution_rows(with.part("created"), created, false);
        }
        if !replaced.is_empty() {
            push_execution_rows(with.part("replaced"), replaced, true);
        }
        if !labels.is_empty() {
            push_label_rows(with.part("labels"), labels);
        }
        if !runs.is_empty() {
            push_run_rows(with.part("runs"), runs);
        }
        Some(ids)
    }

    /// MySQL: push everything staged onto `text`, a statement per table ended by `; `, in the
    /// order [`PendingSaves::write`] runs them, and forget it (it is written when `text` runs; a
    /// unique violation then means a new row was stored meanwhile, [`fenced_if_stored`] with the
    /// ids returned). `None`, with nothing pushed or forgotten, when a table's rows need several
    /// statements or the text would grow past [`TEXT_MAX`].
    pub(super) fn push_text(&mut self, text: &mut Text) -> Option<Vec<String>> {
        let runs: usize = self.saves.iter().map(|s| s.runs.len()).sum();
        let labels: usize = self
            .saves
            .iter()
            .filter_map(|s| s.labels.as_ref().map(|(_, l)| l.len()))
            .sum();
        let bytes: usize = self
            .saves
            .iter()
            .map(|s| {
                s.row.len()
                    + s.runs.iter().map(|(_, doc)| doc.len() + 64).sum::<usize>()
                    + s.labels.as_ref().map_or(0, |(_, l)| {
                        l.iter().map(|l| l.key.len() + l.value.len() + 64).sum()
                    })
            })
            .sum();
        if self.saves.len() > CHUNK
            || runs > CHUNK
            || labels > CHUNK
            || text.0.len() + bytes * 2 + 1024 > TEXT_MAX
        {
            return None;
        }
        let Staged {
            created,
            replaced,
            labels_deleted,
            labels,
            truncated,
            runs,
        } = self.take()?;
        let ids = created.iter().map(|r| r.id().to_string()).collect();
        if !created.is_empty() {
            push_execution_rows(text, created, false);
            text.sql("; ");
        }
        if !replaced.is_empty() {
            push_execution_rows(text, replaced, true);
            text.sql("; ");
        }
        if !labels_deleted.is_empty() {
            text.sql("DELETE FROM execution_labels WHERE execution_id IN ")
                .texts(&labels_deleted)
                .sql("; ");
        }
        if !labels.is_empty() {
            push_label_rows(text, labels);
            text.sql("; ");
        }
        if !truncated.is_empty() {
            push_truncate(text, &truncated);
            text.sql("; ");
        }
        if !runs.is_empty() {
            push_run_rows(text, runs);
            text.sql("; ");
        }
        Some(ids)
    }

    /// Take everything staged, grouped by statement (`None`: nothing staged).
    fn take(&mut self) -> Option<Staged> {
        let mut saves = std::mem::take(&mut self.saves);
        self.ids.clear();
        if saves.is_empty() {
            return None;
        }
        saves.sort_by(|a, b| a.row.id().cmp(b.row.id()));
        let mut staged = Staged::default();
        for save in saves {
            let id = save.row.id().to_string();
            if let Some((stored, list)) = save.labels {
                if stored {
                    staged.labels_deleted.push(id.clone());
                }
                let tenant = save.row.tenant().to_string();
                staged
                    .labels
                    .extend(list.into_iter().map(|l| (id.clone(), tenant.clone(), l)));
            }
            if let Some(from) = save.truncate {
                staged.truncated.push((id.clone(), from));
            }
            staged.runs.extend(
                save.runs
                    .into_iter()
                    .map(|(pos, doc)| (id.clone(), pos, doc)),
            );
            if save.created {
                staged.created.push(save.row);
            } else {
                staged.replaced.push(save.row);
            }
        }
        Some(staged)
    }
}

/// A unit's staged saves grouped by statement, in id order.
#[derive(Default)]
struct Staged {
    /// Rows inserted (the unit found them not stored).
    created: Vec<ExecutionRow>,
    /// Rows replaced.
    replaced: Vec<ExecutionRow>,
    /// Executions whose stored labels are deleted first.
    labels_deleted: Vec<String>,
    /// `(execution id, tenant, label)` rows inserted.
    labels: Vec<(String, String, Label)>,
    /// `(execution id, position)`: task runs from there on deleted first.
    truncated: Vec<(String, i64)>,
    /// `(execution id, position, document)` task runs upserted.
    runs: Vec<(String, usize, String)>,
}

/// `INSERT` (upsert) of task run rows.
fn push_run_rows<S: Sql>(qb: &mut S, rows: Vec<(String, usize, String)>) {
    qb.sql("INSERT INTO execution_task_runs (execution_id, pos, doc) VALUES ");
    for (i, (id, pos, doc)) in rows.into_iter().enumerate() {
        qb.sql(if i == 0 { "(" } else { ", (" })
            .text(&id)
            .sql(", ")
            .int(i64::try_from(pos).unwrap_or(i64::MAX))
            .sql(", ")
            .text(&doc)
            .sql(")");
    }
    qb.sql(&FLAVOR.upsert(&["execution_id", "pos"], &["doc"]));
}

/// `DELETE` of the task runs of each `(execution id, position)` from that position on.
fn push_truncate<S: Sql>(qb: &mut S, chunk: &[(String, i64)]) {
    qb.sql("DELETE FROM execution_task_runs WHERE ");
    for (i, (id, from)) in chunk.iter().enumerate() {
        qb.sql(if i == 0 { "(" } else { " OR (" })
            .sql("execution_id = ")
            .text(id)
            .sql(" AND pos >= ")
            .int(*from)
            .sql(")");
    }
}

/// A unique violation of a statement that inserted the new rows `ids`: another writer (an API
/// call) stored one of them after the unit found it not stored - the unit is refused
/// ([`QueueError::Fenced`]). Any other error is given back.
pub(super) fn fenced_if_stored(
    error: sqlx::Error,
    ids: &[String],
) -> Result<QueueError, sqlx::Error> {
    match error {
        sqlx::Error::Database(e) if e.is_unique_violation() && !ids.is_empty() => {
            Ok(QueueError::Fenced {
                detail: format!(
                    "one of the executions {} was stored by another writer (an API call) after \
                     this unit found it not stored",
                    ids.join(", ")
                ),
            })
        }
        other => Err(other),
    }
}

/// `items` in runs of at most [`CHUNK`] items and about [`BATCH_BYTES`] bytes as `len` counts
/// them (an item over that goes alone), in order.
fn batches<T>(items: Vec<T>, len: impl Fn(&T) -> usize) -> Vec<Vec<T>> {
    let mut out: Vec<Vec<T>> = Vec::new();
    let mut bytes = 0;
    for item in items {
        let n = len(&item);
        match out.last_mut() {
            Some(last) if last.len() < CHUNK && bytes + n <= BATCH_BYTES => {
                bytes += n;
                last.push(item);
            }
            _ => {
                bytes = n;
                out.push(vec![item]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_keep_order_and_bound_count_and_bytes() {
        let sizes: Vec<usize> = (0..1200).map(|_| 10).collect();
        let by_count = batches(sizes, |n| *n);
        assert_eq!(
            by_count.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![CHUNK, CHUNK, 200]
        );
        let big = BATCH_BYTES / 2 + 1;
        let by_bytes = batches(vec![1, big, big, BATCH_BYTES * 2, 3], |n| *n);
        assert_eq!(
            by_bytes,
            vec![vec![1, big], vec![big], vec![BATCH_BYTES * 2], vec![3]],
            "a run stops before it passes the bytes; an item over them goes alone"
        );
        assert!(batches(Vec::<usize>::new(), |n| *n).is_empty());
    }
}
