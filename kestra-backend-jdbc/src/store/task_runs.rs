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
    /// The row's indexed columns as stored (`None`: not known): a write that keeps them sets
    /// only the others ([`push_execution_update`]).
    pub(super) indexed: Option<IndexedColumns>,
}

impl StoredRuns {
    /// What is stored of an execution that has no row (read missing): no task runs, no labels,
    /// indexed columns unknown (its first write inserts the row).
    pub(super) fn nothing() -> StoredRuns {
        StoredRuns {
            revision: String::new(),
            runs: Vec::new(),
            sizes: Vec::new(),
            labels: Some(Vec::new()),
            indexed: None,
        }
    }

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
    /// Whether label rows may be stored (they are deleted before the new ones are written).
    labels_stored: bool,
    /// The row's indexed columns (boxed: `Encoded` is handed back by value when it does not fit
    /// in one call), and whether they are those stored (the row exists): then the row is updated
    /// without them.
    indexed: Box<IndexedColumns>,
    indexed_kept: bool,
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
    match (before, changed) {
        // The positions that may differ are listed: the others are copied as a block (pointers
        // and sizes, no per-position work).
        (Some(b), Some(listed)) if b.runs.len() == b.sizes.len() => {
            let kept = b.runs.len().min(e.task_run_list.len());
            let copy = StoredRuns {
                revision: String::new(),
                runs: b.runs[..kept].to_vec(),
                sizes: b.sizes[..kept].to_vec(),
                labels: b.labels.clone(),
                indexed: b.indexed.clone(),
            };
            encode_listed(e, copy, b.runs.len() > kept, listed)
        }
        _ => {
            let head = encode_head(e)?;
            let mut written = Vec::new();
            let mut sizes = Vec::with_capacity(e.task_run_list.len());
            let mut runs = Vec::with_capacity(e.task_run_list.len());
            for (pos, run) in e.task_run_list.iter().enumerate() {
                match before.and_then(|b| Some((b.runs.get(pos)?, *b.sizes.get(pos)?))) {
                    Some((stored, size)) if **stored == *run => {
                        sizes.push(size);
                        runs.push(stored.clone());
                    }
                    _ => {
                        let doc = serde_json::to_string(run)?;
                        sizes.push(doc.len());
                        written.push((pos, doc));
                        runs.push(Arc::new(run.clone()));
                    }
                }
            }
            let truncate = before.is_none_or(|b| b.runs.len() > e.task_run_list.len());
            let (labels, indexed) = match before {
                Some(b) => (b.labels.as_ref(), b.indexed.as_ref()),
                None => (None, None),
            };
            Ok(finish(
                e, head, written, sizes, runs, truncate, labels, indexed,
            ))
        }
    }
}

/// [`encode`] given what is stored by value: when the caller held the only reference and the
/// changed positions are listed, its task runs are updated in place (a save then costs
/// O(changed), not a copy of the execution's n task runs).
pub(super) fn encode_owned(
    e: &mut Execution,
    before: Option<Arc<StoredRuns>>,
    changed: Option<&[usize]>,
) -> serde_json::Result<Encoded> {
    match (before, changed) {
        (Some(b), Some(listed)) => match Arc::try_unwrap(b) {
            Ok(mut owned) if owned.runs.len() == owned.sizes.len() => {
                let len = e.task_run_list.len();
                let truncate = owned.runs.len() > len;
                owned.runs.truncate(len);
                owned.sizes.truncate(len);
                encode_listed(e, owned, truncate, listed)
            }
            Ok(owned) => encode(e, Some(&owned), changed),
            Err(shared) => encode(e, Some(&shared), changed),
        },
        (before, changed) => encode(e, before.as_deref(), changed),
    }
}

/// The document of `e` without its task runs (taken out while it is encoded, then put back).
fn encode_head(e: &mut Execution) -> serde_json::Result<String> {
    let runs = std::mem::take(&mut e.task_run_list);
    let head = serde_json::to_string(&*e);
    e.task_run_list = runs;
    head
}

/// Encode `e` from `base`, the stored task runs up to `e`'s length (no further), given the
/// positions (ascending) that may differ: only those, and the positions past `base`'s end, are
/// compared and encoded. `truncate`: rows past `e`'s length are stored.
fn encode_listed(
    e: &mut Execution,
    base: StoredRuns,
    truncate: bool,
    listed: &[usize],
) -> serde_json::Result<Encoded> {
    let head = encode_head(e)?;
    let StoredRuns {
        mut runs,
        mut sizes,
        labels,
        indexed,
        ..
    } = base;
    let kept = runs.len();
    #[cfg(debug_assertions)]
    for (pos, (stored, run)) in runs.iter().zip(&e.task_run_list).enumerate() {
        debug_assert!(
            listed.binary_search(&pos).is_ok() || **stored == *run,
            "task run {pos} ({}) of execution {} changed but was not listed as changed",
            run.task_id,
            e.id
        );
    }
    let mut written = Vec::new();
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
    Ok(finish(
        e,
        head,
        written,
        sizes,
        runs,
        truncate,
        labels.as_ref(),
        indexed.as_ref(),
    ))
}

/// The [`Encoded`] of `e`, given what is stored of its labels and indexed columns.
#[allow(clippy::too_many_arguments)]
fn finish(
    e: &Execution,
    head: String,
    written: Vec<(usize, String)>,
    sizes: Vec<usize>,
    runs: Vec<Arc<TaskRun>>,
    truncate: bool,
    labels: Option<&Vec<Label>>,
    indexed: Option<&IndexedColumns>,
) -> Encoded {
    let labels_changed = labels.is_none_or(|stored| *stored != e.labels);
    let labels_stored = labels.is_none_or(|stored| !stored.is_empty());
    let columns = IndexedColumns::of(e);
    let indexed_kept = indexed == Some(&columns);
    Encoded {
        head,
        changed: written,
        sizes,
        runs,
        truncate,
        labels_changed,
        labels_stored,
        indexed: Box::new(columns),
        indexed_kept,
    }
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
/// pushed) when they do not fit in one call: more changed task runs or labels than one statement
/// takes.
pub(super) fn push_write(
    qb: &mut Qb,
    e: &Execution,
    encoded: Encoded,
) -> Result<StoredRuns, Encoded> {
    if encoded.changed.len() > CHUNK || (encoded.labels_changed && e.labels.len() > CHUNK) {
        return Err(encoded);
    }
    let Encoded {
        head,
        changed,
        sizes,
        runs,
        truncate,
        labels_changed,
        labels_stored,
        indexed,
        indexed_kept,
    } = encoded;
    let revision = new_revision();
    let len = i64::try_from(sizes.len()).unwrap_or(i64::MAX);
    if indexed_kept {
        push_execution_update(qb, e, head, Some(len), &revision);
    } else {
        push_execution_upsert(qb, e, head, Some(len), &revision);
    }
    qb.push("; ");
    // An execution's first save rewrites its labels here too: one call instead of five (row,
    // labels deleted, labels, task runs deleted, task runs).
    if labels_changed {
        if labels_stored {
            qb.push("DELETE FROM execution_labels WHERE execution_id = ")
                .push_bind(e.id.clone())
                .push("; ");
        }
        if !e.labels.is_empty() {
            push_labels_insert(qb, e, &e.labels);
            qb.push("; ");
        }
    }
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
        indexed: Some(*indexed),
    })
}

/// PostgreSQL and MySQL: stage the writes of [`write_in`] in `pending`, written when the unit
/// commits together with those of the other executions it saved ([`super::batch`]). `created`:
/// the unit found the execution not stored, so its row is inserted (one stored meanwhile refuses
/// the unit). Returns what is stored once the unit commits.
pub(super) fn stage_write(
    pending: &mut PendingSaves,
    e: &Execution,
    encoded: Encoded,
    created: bool,
) -> StoredRuns {
    let Encoded {
        head,
        changed,
        sizes,
        runs,
        truncate,
        labels_changed,
        labels_stored,
        indexed,
        indexed_kept: _,
    } = encoded;
    let revision = new_revision();
    let len = i64::try_from(sizes.len()).unwrap_or(i64::MAX);
    pending.push(PendingSave {
        row: ExecutionRow::with(e, (*indexed).clone(), head, Some(len), &revision),
        created,
        labels: labels_changed.then(|| (labels_stored, e.labels.clone())),
        truncate: truncate.then_some(len),
        runs: changed,
    });
    StoredRuns {
        revision,
        runs,
        sizes,
        labels: Some(e.labels.clone()),
        indexed: Some(*indexed),
    }
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
        labels_stored,
        indexed,
        indexed_kept,
    } = encoded;
    let revision = new_revision();
    let len = i64::try_from(sizes.len()).unwrap_or(i64::MAX);
    // The row first: every writer locks it before its task runs (a unit holds it `FOR UPDATE`).
    if indexed_kept && !labels_changed {
        let mut qb = Qb::new("");
        push_execution_update(&mut qb, e, head, Some(len), &revision);
        qb.build().execute(&mut *conn).await?;
    } else {
        upsert_execution_in(
            conn,
            e,
            head,
            Some(len),
            &revision,
            labels_changed,
            labels_stored,
        )
        .await?;
    }
    let stored = |runs, sizes| StoredRuns {
        revision: revision.clone(),
        runs,
        sizes,
        labels: Some(e.labels.clone()),
        indexed: Some(*indexed),
    };
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
                indexed: None,
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
    // Every write of the row computes its indexed columns from the execution it stores.
    let indexed = Some(IndexedColumns::of(&execution));
    Ok((
        execution,
        StoredRuns {
            revision,
            runs,
            sizes,
            labels,
            indexed,
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
            indexed: None,
        }
    }

    /// Owned (updated in place), shared (copied) and unlisted (compared one by one): the same
    /// writes and the same stored task runs.
    #[test]
    fn a_save_encodes_the_same_whether_what_is_stored_is_owned_or_shared() -> serde_json::Result<()>
    {
        let mut e = execution(6);
        let before = stored(&encode(&mut e, None, None)?);
        e.task_run_list[1].value = Some("changed".into());
        e.task_run_list[4].value = Some("changed too".into());
        e.task_run_list.truncate(5);
        let listed = [1, 2, 4];
        let positions = |x: &Encoded| x.changed.iter().map(|(p, _)| *p).collect::<Vec<_>>();
        let compared = encode(&mut e, Some(&before), None)?;
        let copy = |b: &StoredRuns| StoredRuns {
            revision: b.revision.clone(),
            runs: b.runs.clone(),
            sizes: b.sizes.clone(),
            labels: None,
            indexed: None,
        };
        let shared = Arc::new(copy(&before));
        let held = shared.clone();
        let from_shared = encode_owned(&mut e, Some(shared), Some(&listed))?;
        let owned = encode_owned(&mut e, Some(Arc::new(copy(&before))), Some(&listed))?;
        for x in [&from_shared, &owned] {
            assert_eq!(positions(x), vec![1, 4]);
            assert_eq!(x.changed, compared.changed);
            assert_eq!(x.sizes, compared.sizes);
            assert!(
                x.truncate,
                "shorter than stored at position 5: rows past the end go"
            );
            assert_eq!(x.document_len(), serde_json::to_string(&e)?.len());
            let runs: Vec<&TaskRun> = x.runs.iter().map(|r| &**r).collect();
            assert_eq!(runs, e.task_run_list.iter().collect::<Vec<_>>());
        }
        assert_eq!(held.runs.len(), 6, "a shared one is left as it was");
        assert!(
            Arc::ptr_eq(&from_shared.runs[0], &held.runs[0]),
            "unchanged: shared"
        );
        // Appended (nothing listed): only the new one is written, nothing truncated.
        let before = stored(&owned);
        let run = TaskRun::new(&e, "t-new");
        e.task_run_list.push(run);
        let appended = encode_owned(&mut e, Some(Arc::new(before)), Some(&[]))?;
        assert_eq!(positions(&appended), vec![5]);
        assert!(!appended.truncate);
        assert_eq!(appended.runs.len(), 6);
        Ok(())
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

        // The row's indexed columns: set only when they differ from those stored (or are not
        // known).
        assert!(
            !encode(&mut e, Some(&known), None)?.indexed_kept,
            "not known"
        );
        let indexed = StoredRuns {
            indexed: Some(IndexedColumns::of(&e)),
            ..stored(&first)
        };
        assert!(encode(&mut e, Some(&indexed), None)?.indexed_kept);
        let state = e.state.clone();
        e.state
            .transition(kestra_core::model::StateType::Running)
            .expect("CREATED -> RUNNING");
        assert!(
            !encode(&mut e, Some(&indexed), None)?.indexed_kept,
            "the state changed: the indexed columns are written"
        );
        e.state = state;

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
