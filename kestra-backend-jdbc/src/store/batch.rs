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
        let mut saves = std::mem::take(&mut self.saves);
        self.ids.clear();
        if saves.is_empty() {
            return Ok(());
        }
        saves.sort_by(|a, b| a.row.id().cmp(b.row.id()));
        let err = queue_err("commit");
        let mut created = Vec::new();
        let mut replaced = Vec::new();
        let mut labels_deleted = Vec::new();
        let mut labels = Vec::new();
        let mut truncated = Vec::new();
        let mut runs = Vec::new();
        for save in saves {
            let id = save.row.id().to_string();
            if let Some((stored, list)) = save.labels {
                if stored {
                    labels_deleted.push(id.clone());
                }
                let tenant = save.row.tenant().to_string();
                labels.extend(list.into_iter().map(|l| (id.clone(), tenant.clone(), l)));
            }
            if let Some(from) = save.truncate {
                truncated.push((id.clone(), from));
            }
            runs.extend(
                save.runs
                    .into_iter()
                    .map(|(pos, doc)| (id.clone(), pos, doc)),
            );
            if save.created {
                created.push(save.row);
            } else {
                replaced.push(save.row);
            }
        }
        for rows in batches(created, ExecutionRow::len) {
            let ids: Vec<String> = rows.iter().map(|r| r.id().to_string()).collect();
            let mut qb = Qb::new("");
            push_execution_rows(&mut qb, rows, false);
            match qb.build().execute(&mut *conn).await {
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                    return Err(QueueError::Fenced {
                        detail: format!(
                            "one of the executions {} was stored by another writer (an API call) \
                             after this unit found it not stored",
                            ids.join(", ")
                        ),
                    });
                }
                other => other.map_err(&err)?,
            };
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
            let mut qb = Qb::new("DELETE FROM execution_task_runs WHERE ");
            let mut or = qb.separated(" OR ");
            for (id, from) in chunk {
                or.push("(execution_id = ")
                    .push_bind_unseparated(id.clone())
                    .push_unseparated(" AND pos >= ")
                    .push_bind_unseparated(*from)
                    .push_unseparated(")");
            }
            qb.build().execute(&mut *conn).await.map_err(&err)?;
        }
        for rows in batches(runs, |(_, _, doc)| doc.len() + 64) {
            let mut qb = Qb::new("INSERT INTO execution_task_runs (execution_id, pos, doc) ");
            qb.push_values(rows, |mut b, (id, pos, doc)| {
                b.push_bind(id)
                    .push_bind(i64::try_from(pos).unwrap_or(i64::MAX))
                    .push_bind(doc);
            });
            qb.push(FLAVOR.upsert(&["execution_id", "pos"], &["doc"]));
            qb.build().execute(&mut *conn).await.map_err(&err)?;
        }
        Ok(())
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
