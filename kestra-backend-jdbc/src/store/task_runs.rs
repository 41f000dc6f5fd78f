//! Task runs stored apart from their execution, so that an event costs the size of what it
//! changed, not the size of the execution (issue "Performance": a ForEach over n values used to
//! read, encode and write its whole document n times, O(n^2) over the execution).
//!
//! Layout (migration `0004_task_runs_apart`): an execution row's `doc` holds the execution without
//! its task runs (`"taskRunList":[]`) and `task_runs` their number; each task run is a row of
//! `execution_task_runs` keyed by `(execution_id, pos)`, its position in the list. Rows written
//! before that migration have `task_runs` NULL and their task runs in `doc`: they are read as before
//! and split when next written. Every write of an execution row, whoever makes it (the executor's
//! unit of work, the repository's `save` and `delete`), writes a new random `revision`.
//!
//! The executor's unit of work keeps what it stored ([`StoredRuns`], in its
//! [`ExecutionStamp`]): its next unit compares the revision, read under the row lock, instead of
//! reading the task runs again, and writes only the positions whose task run differs from the
//! stored one (compared as values, so no mutation path of the executor can be missed). Readers
//! outside a unit read a row and its task runs in one statement ([`fetch_executions`]): one
//! snapshot on every dialect, even under `READ COMMITTED`.

use super::*;
use kestra_core::model::{Label, TaskRun};

/// An execution's task runs as stored, with the revision written with them: what a unit of work
/// compares and diffs against (kept in the executor's [`ExecutionStamp`]).
pub(super) struct StoredRuns {
    /// The `revision` column written with them.
    pub(super) revision: String,
    /// The task runs, in position order (shared with the stamps of earlier saves: a save copies
    /// only the task runs it changed).
    pub(super) runs: Vec<Arc<TaskRun>>,
    /// The encoded size of each, in bytes (the size limit counts the whole execution).
    pub(super) sizes: Vec<usize>,
    /// The execution's labels as stored in `execution_labels` (`None`: not known).
    pub(super) labels: Option<Vec<Label>>,
}

impl StoredRuns {
    /// The stamp that carries them, accounted as the size of the execution's document.
    pub(super) fn stamp(self: Arc<Self>, document_len: usize) -> ExecutionStamp {
        ExecutionStamp::new(self, document_len)
    }
}

/// An execution encoded for a write: its row's document and the task runs to write.
pub(super) struct Encoded {
    head: String,
    /// `(position, document)` of each task run to write.
    changed: Vec<(usize, String)>,
    /// The encoded size of every task run, written or kept.
    sizes: Vec<usize>,
    /// Every task run as it will be stored (unchanged ones shared with `before`).
    runs: Vec<Arc<TaskRun>>,
    /// Whether rows at positions past the new length may exist (stored length unknown or longer).
    truncate: bool,
    /// Whether the labels differ from those stored (or those are not known): rows rewritten.
    labels_changed: bool,
}

impl Encoded {
    /// The size of the execution as one JSON document (what the maximum message size bounds).
    pub(super) fn document_len(&self) -> usize {
        self.head.len() + self.sizes.iter().sum::<usize>() + self.sizes.len().saturating_sub(1)
    }

    /// How many task runs it writes (the rest are unchanged).
    #[cfg(test)]
    pub(super) fn changed(&self) -> usize {
        self.changed.len()
    }
}

/// Encode `e` for a write: its document without task runs, and each task run that differs from
/// the one `before` holds at its position (every task run when `before` is `None`). The task runs
/// are taken out of `e` while its head is encoded and put back before this returns.
///
/// `changed`, when given, lists (ascending) the positions of the task runs that may differ from
/// `before` besides those past its end (`UnitOfWork::save_execution_changed`): the others are
/// taken as unchanged without being compared (a comparison of every task run on every save costs
/// O(n) deep comparisons per save of an execution of n task runs). Debug builds check that claim.
pub(super) fn encode(
    e: &mut Execution,
    before: Option<&StoredRuns>,
    changed: Option<&[usize]>,
) -> serde_json::Result<Encoded> {
    let runs = std::mem::take(&mut e.task_run_list);
    let head = serde_json::to_string(&*e);
    e.task_run_list = runs;
    let head = head?;
    let mut written = Vec::new();
    let (sizes, stored_runs) = match (before, changed) {
        // The positions that may differ are listed: the others are copied as a block (pointers
        // and sizes; no per-position work: a save costs O(changed) besides two copies).
        (Some(b), Some(listed)) if b.runs.len() == b.sizes.len() => {
            let len = e.task_run_list.len();
            let kept = b.runs.len().min(len);
            let mut sizes = Vec::with_capacity(len);
            sizes.extend_from_slice(&b.sizes[..kept]);
            let mut runs = Vec::with_capacity(len);
            runs.extend_from_slice(&b.runs[..kept]);
            #[cfg(debug_assertions)]
            for (pos, (stored, run)) in b.runs.iter().zip(&e.task_run_list).enumerate() {
                debug_assert!(
                    listed.binary_search(&pos).is_ok() || **stored == *run,
                    "task run {pos} ({}) of execution {} changed but was not listed as changed",
                    run.task_id,
                    e.id
                );
            }
            for &pos in listed.iter().filter(|&&p| p < kept) {
                let run = &e.task_run_list[pos];
                if *runs[pos] != *run {
                    let doc = serde_json::to_string(run)?;
                    sizes[pos] = doc.len();
                    written.push((pos, doc));
                    runs[pos] = Arc::new(run.clone());
                }
            }
            for (pos, run) in e.task_run_list.iter().enumerate().skip(kept) {
                let doc = serde_json::to_string(run)?;
                sizes.push(doc.len());
                written.push((pos, doc));
                runs.push(Arc::new(run.clone()));
            }
            (sizes, runs)
        }
        _ => {
            let mut sizes = Vec::with_capacity(e.task_run_list.len());
            let mut stored_runs = Vec::with_capacity(e.task_run_list.len());
            for (pos, run) in e.task_run_list.iter().enumerate() {
                match before.and_then(|b| Some((b.runs.get(pos)?, *b.sizes.get(pos)?))) {
                    Some((stored, size)) if **stored == *run => {
                        sizes.push(size);
                        stored_runs.push(stored.clone());
                    }
                    _ => {
                        let doc = serde_json::to_string(run)?;
                        sizes.push(doc.len());
                        written.push((pos, doc));
                        stored_runs.push(Arc::new(run.clone()));
                    }
                }
            }
            (sizes, stored_runs)
        }
    };
    let truncate = before.is_none_or(|b| b.runs.len() > e.task_run_list.len());
    let labels_changed = before
        .and_then(|b| b.labels.as_ref())
        .is_none_or(|stored| *stored != e.labels);
    Ok(Encoded {
        head,
        changed: written,
        sizes,
        runs: stored_runs,
        truncate,
        labels_changed,
    })
}

/// [`encode`] for a caller that holds the execution by reference (the repository's writes, off
/// the executor's path): it is copied once.
pub(super) fn encode_all(e: &Execution) -> serde_json::Result<Encoded> {
    encode(&mut e.clone(), None, None)
}

/// A new random revision (22 base62 characters).
pub(super) fn new_revision() -> String {
    kestra_core::model::new_id()
}

/// SQLite: push the statements of [`write_in`] onto `qb`, each ended by `; ` (run later, in one
/// call with others). Returns what is stored once they commit, or gives `encoded` back (nothing
/// pushed) when they do not fit in one call: labels changed (their rows are rewritten apart), or
/// more changed task runs than one statement takes.
pub(super) fn push_write(
    qb: &mut Qb,
    e: &Execution,
    encoded: Encoded,
) -> Result<StoredRuns, Encoded> {
    if encoded.labels_changed || encoded.changed.len() > CHUNK {
        return Err(encoded);
    }
    let Encoded {
        head,
        changed,
        sizes,
        runs,
        truncate,
        labels_changed: _,
    } = encoded;
    let revision = new_revision();
    let len = i64::try_from(sizes.len()).unwrap_or(i64::MAX);
    push_execution_upsert(qb, e, head, Some(len), &revision);
    qb.push("; ");
    if truncate {
        qb.push("DELETE FROM execution_task_runs WHERE execution_id = ")
            .push_bind(e.id.clone())
            .push(" AND pos >= ")
            .push_bind(len)
            .push("; ");
    }
    if !changed.is_empty() {
        qb.push("INSERT INTO execution_task_runs (execution_id, pos, doc) ");
        qb.push_values(&changed, |mut b, (pos, doc)| {
            b.push_bind(e.id.clone())
                .push_bind(i64::try_from(*pos).unwrap_or(i64::MAX))
                .push_bind(doc.clone());
        });
        qb.push(FLAVOR.upsert(&["execution_id", "pos"], &["doc"]))
            .push("; ");
    }
    Ok(StoredRuns {
        revision,
        runs,
        sizes,
        labels: Some(e.labels.clone()),
    })
}

/// Write `e`'s row (with `encoded`'s document and a new revision) and the task runs `encoded`
/// carries; rows past the new length are deleted. Returns what is stored once the transaction
/// commits.
pub(super) async fn write_in(
    conn: &mut Conn,
    e: &Execution,
    encoded: Encoded,
) -> Result<StoredRuns, sqlx::Error> {
    // SQLite (labels unchanged, the task runs in one statement): the row and its task runs in one
    // call of several statements (see `claims::push_publish`).
    let encoded = if FLAVOR == crate::common::Flavor::Sqlite {
        let mut qb = Qb::new("");
        match push_write(&mut qb, e, encoded) {
            Ok(stored) => {
                qb.build().execute(&mut *conn).await?;
                return Ok(stored);
            }
            Err(encoded) => encoded,
        }
    } else {
        encoded
    };
    let Encoded {
        head,
        changed,
        sizes,
        runs,
        truncate,
        labels_changed,
    } = encoded;
    let revision = new_revision();
    let len = i64::try_from(sizes.len()).unwrap_or(i64::MAX);
    let stored = |runs, sizes| StoredRuns {
        revision: revision.clone(),
        runs,
        sizes,
        labels: Some(e.labels.clone()),
    };
    // The row first: every writer locks it before its task runs (a unit holds it `FOR UPDATE`).
    upsert_execution_in(conn, e, head, Some(len), &revision, labels_changed).await?;
    if truncate {
        Qb::new("DELETE FROM execution_task_runs WHERE execution_id = ")
            .push_bind(e.id.clone())
            .push(" AND pos >= ")
            .push_bind(len)
            .build()
            .execute(&mut *conn)
            .await?;
    }
    for chunk in changed.chunks(CHUNK) {
        let mut qb = Qb::new("INSERT INTO execution_task_runs (execution_id, pos, doc) ");
        qb.push_values(chunk, |mut b, (pos, doc)| {
            b.push_bind(e.id.clone())
                .push_bind(i64::try_from(*pos).unwrap_or(i64::MAX))
                .push_bind(doc.clone());
        });
        qb.push(FLAVOR.upsert(&["execution_id", "pos"], &["doc"]));
        qb.build().execute(&mut *conn).await?;
    }
    Ok(stored(runs, sizes))
}

/// A row or task run that cannot be decoded, or task runs missing from their execution.
pub(super) enum ReadError {
    Database(sqlx::Error),
    Decode {
        id: String,
        source: serde_json::Error,
    },
}

impl From<sqlx::Error> for ReadError {
    fn from(e: sqlx::Error) -> Self {
        ReadError::Database(e)
    }
}

impl ReadError {
    pub(super) fn into_repo(self, operation: &'static str) -> RepositoryError {
        match self {
            ReadError::Database(e) => repo_err(operation)(e),
            ReadError::Decode { id, source } => RepositoryError::Corrupt {
                entity: "execution",
                id,
                source,
            },
        }
    }

    pub(super) fn into_queue(self, operation: &'static str) -> QueueError {
        match self {
            ReadError::Database(e) => queue_err(operation)(e),
            ReadError::Decode { id, source } => QueueError::Decode {
                topic: Topic::Execution,
                key: id,
                source,
            },
        }
    }
}

fn decode_error(id: &str) -> impl FnOnce(serde_json::Error) -> ReadError {
    let id = id.to_string();
    move |source| ReadError::Decode { id, source }
}

fn missing(id: &str, pos: usize, count: usize) -> ReadError {
    ReadError::Decode {
        id: id.to_string(),
        source: <serde_json::Error as serde::de::Error>::custom(format!(
            "task run at position {pos} of {count} is missing from execution_task_runs"
        )),
    }
}

/// Decode an execution row's document; `count` (its `task_runs` column) task runs are to be added.
fn decode_head(id: &str, doc: &str) -> Result<Execution, ReadError> {
    serde_json::from_str(doc).map_err(decode_error(id))
}

/// Read, inside a unit's transaction that holds the execution's row lock, the `count` task runs of
/// execution `id` stored apart: the execution is completed with them and [`StoredRuns`] returned.
/// A row written before migration 0004 (`count` `None`) already holds its task runs.
pub(super) async fn complete_in(
    conn: &mut Conn,
    id: &str,
    doc: &str,
    count: Option<i64>,
    revision: String,
) -> Result<(Execution, StoredRuns), ReadError> {
    let mut execution = decode_head(id, doc)?;
    let Some(count) = count else {
        // Not split yet: its next write writes every task run (no sizes known).
        let runs = execution
            .task_run_list
            .iter()
            .map(|r| Arc::new(r.clone()))
            .collect();
        return Ok((
            execution,
            StoredRuns {
                revision: String::new(),
                runs,
                sizes: Vec::new(),
                labels: None,
            },
        ));
    };
    let count = usize::try_from(count).unwrap_or(0);
    let rows = Qb::new("SELECT pos, doc FROM execution_task_runs WHERE execution_id = ")
        .push_bind(id.to_string())
        .push(" ORDER BY pos")
        .build()
        .fetch_all(&mut *conn)
        .await?;
    let mut sizes = Vec::with_capacity(count);
    execution.task_run_list = Vec::with_capacity(count);
    // Rows come in position order and must be exactly 0..count; rows past `count` are left over
    // from a longer list and ignored.
    for row in &rows {
        let at = execution.task_run_list.len();
        if at == count {
            break;
        }
        let pos: i64 = get(row, "pos")?;
        if usize::try_from(pos).ok() != Some(at) {
            return Err(missing(id, at, count));
        }
        let run: String = get(row, "doc")?;
        sizes.push(run.len());
        execution
            .task_run_list
            .push(serde_json::from_str(&run).map_err(decode_error(id))?);
    }
    if execution.task_run_list.len() != count {
        return Err(missing(id, execution.task_run_list.len(), count));
    }
    let runs = execution
        .task_run_list
        .iter()
        .map(|r| Arc::new(r.clone()))
        .collect();
    let labels = Some(execution.labels.clone());
    Ok((
        execution,
        StoredRuns {
            revision,
            runs,
            sizes,
            labels,
        },
    ))
}

/// The executions `ids` of `tenant` (not deleted), each with its task runs, read in one
/// statement (one snapshot on every dialect). The order is the ids' order in the database (by id).
pub(super) async fn fetch_executions<'c, E>(
    executor: E,
    tenant: &str,
    ids: &[String],
) -> Result<Vec<Execution>, ReadError>
where
    E: sqlx::Executor<'c, Database = Db>,
{
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    // The row's document comes once per execution (with its first task run, or alone).
    let mut qb = Qb::new(
        "SELECT e.id AS id, e.task_runs AS task_runs, \
         CASE WHEN r.pos IS NULL OR r.pos = 0 THEN e.doc END AS doc, r.pos AS pos, r.doc AS run \
         FROM executions e LEFT JOIN execution_task_runs r \
         ON r.execution_id = e.id AND e.task_runs IS NOT NULL AND r.pos < e.task_runs \
         WHERE e.deleted = FALSE AND e.tenant_id = ",
    );
    qb.push_bind(tenant.to_string()).push(" AND e.id IN ");
    push_in(&mut qb, ids.iter().cloned());
    qb.push(" ORDER BY e.id, r.pos");
    let rows = qb.build().fetch_all(executor).await?;
    let mut found: Vec<(Execution, Option<usize>)> = Vec::new();
    for row in &rows {
        let id: String = get(row, "id")?;
        let doc: Option<String> = get(row, "doc")?;
        if let Some(doc) = doc {
            let count: Option<i64> = get(row, "task_runs")?;
            let execution = decode_head(&id, &doc)?;
            found.push((execution, count.map(|c| usize::try_from(c).unwrap_or(0))));
        }
        let Some((execution, count)) = found.last_mut().filter(|(e, _)| e.id == id) else {
            // Task runs without the row's document: position 0 is missing.
            return Err(missing(&id, 0, 1));
        };
        let run: Option<String> = get(row, "run")?;
        if let (Some(run), Some(count)) = (run, *count) {
            let pos: i64 = get(row, "pos")?;
            let at = execution.task_run_list.len();
            if usize::try_from(pos).ok() != Some(at) {
                return Err(missing(&id, at, count));
            }
            execution
                .task_run_list
                .push(serde_json::from_str(&run).map_err(decode_error(&id))?);
        }
    }
    found
        .into_iter()
        .map(|(execution, count)| match count {
            Some(count) if execution.task_run_list.len() != count => {
                Err(missing(&execution.id, execution.task_run_list.len(), count))
            }
            _ => Ok(execution),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn execution(runs: usize) -> Execution {
        let mut e = Execution::new("ns", "flow", 1);
        for i in 0..runs {
            let run = TaskRun::new(&e, format!("t{i}"));
            e.task_run_list.push(run);
        }
        e
    }

    fn stored(encoded: &Encoded) -> StoredRuns {
        StoredRuns {
            revision: new_revision(),
            runs: encoded.runs.clone(),
            sizes: encoded.sizes.clone(),
            labels: None,
        }
    }

    #[test]
    fn only_the_task_runs_that_changed_are_encoded_again() -> serde_json::Result<()> {
        let mut e = execution(5);
        let first = encode(&mut e, None, None)?;
        assert_eq!(
            first.changed(),
            5,
            "nothing stored: every task run is written"
        );
        assert!(first.truncate);
        assert_eq!(e.task_run_list.len(), 5, "the task runs are given back");
        let head: serde_json::Value = serde_json::from_str(&first.head)?;
        assert_eq!(head["taskRunList"], serde_json::json!([]));
        let whole = serde_json::to_string(&e)?;
        assert_eq!(
            first.document_len(),
            whole.len(),
            "the size of the whole document"
        );

        let before = stored(&first);
        assert_eq!(encode(&mut e, Some(&before), None)?.changed(), 0);
        assert!(
            encode(&mut e, Some(&before), None)?.labels_changed,
            "stored labels not known: written"
        );
        let known = StoredRuns {
            labels: Some(e.labels.clone()),
            ..stored(&first)
        };
        assert!(
            !encode(&mut e, Some(&known), None)?.labels_changed,
            "the labels stored: not written again"
        );
        e.labels.push(Label::new("team", "data"));
        assert!(
            encode(&mut e, Some(&known), None)?.labels_changed,
            "a label added: written"
        );
        e.labels.pop();

        e.task_run_list[3].value = Some("changed".into());
        let run = TaskRun::new(&e, "t5");
        e.task_run_list.push(run);
        let next = encode(&mut e, Some(&before), None)?;
        let positions: Vec<usize> = next.changed.iter().map(|(p, _)| *p).collect();
        assert_eq!(positions, vec![3, 5]);
        assert!(!next.truncate, "longer than stored: no row past the end");
        assert_eq!(next.document_len(), serde_json::to_string(&e)?.len());

        assert!(
            Arc::ptr_eq(&next.runs[0], &before.runs[0]),
            "unchanged: shared"
        );
        assert_eq!(*next.runs[3], e.task_run_list[3]);
        let before = stored(&next);
        e.task_run_list.truncate(2);
        let shorter = encode(&mut e, Some(&before), None)?;
        assert_eq!(shorter.changed(), 0);
        assert!(
            shorter.truncate,
            "shorter than stored: the rows past the end go"
        );
        Ok(())
    }
}
