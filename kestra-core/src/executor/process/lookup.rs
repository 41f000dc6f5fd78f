//! Positions of an execution's task runs, so that the walk finds a task run by id, by identity
//! (task, parent, value, iteration) or by (parent, value) without scanning the whole list: a walk
//! over an execution of n task runs costs O(n), not O(n^2) (a ForEach over 1,000 values visits
//! every iteration on every event).
//!
//! The index follows `task_run_list` as it grows (new entries are indexed on the next lookup). A
//! hit is always checked against the list, so a stale position is never returned; code that
//! removes task runs calls [`RunIndex::reset`] (a shorter list is noticed too).

use std::cell::{Cell, RefCell, RefMut};
use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use crate::model::{Execution, StateType, TaskRun};

/// The positions of the task runs of one execution (see the module documentation).
#[derive(Default)]
pub(super) struct RunIndex {
    inner: RefCell<Positions>,
    /// Bumped whenever the positions are dropped: a [`ForEachMemo`] taken out before is not put
    /// back (its positions may no longer be those of the list).
    generation: Cell<u64>,
    /// The task runs changed in place through [`task_run_mut`] since [`RunIndex::take_changed`]
    /// (`None`: unknown, the list was replaced or shortened since).
    changed: RefCell<Option<Vec<usize>>>,
    /// Every position changed in place through [`task_run_mut`], in order, since the positions
    /// were last dropped (or the log last emptied): a ForEach walk reads what changed since its
    /// last walk from here ([`RunIndex::changed_since`]).
    log: RefCell<Vec<usize>>,
}

/// What the walks of one ForEach task run learned, kept with the positions so that a walk visits
/// only the iterations whose task runs changed since the last one (a ForEach over n values would
/// otherwise cost O(n) lookups per event, O(n^2) over the execution).
pub(super) struct ForEachMemo {
    /// The values, resolved on the first walk of the task run.
    pub(super) values: Arc<[String]>,
    /// No value appears twice (a repeated value is one iteration, found by value: the memo is
    /// not used then).
    pub(super) distinct: bool,
    /// What the last walk of each iteration saw, for `values[..seen.len()]`: those have started
    /// (iterations start in the order of the values).
    pub(super) seen: Vec<Option<IterationSeen>>,
    /// The iterations `..done` ended, and none of their task runs changed since: a walk neither
    /// visits nor checks them (without it, a walk checks every started iteration: O(n) per
    /// event, O(n^2) over a ForEach of n values). Emptied when one of them changes.
    pub(super) done: usize,
    /// The worst state of the iterations `..done`, and whether one of them failed or was killed.
    pub(super) done_state: StateType,
    pub(super) done_failed: bool,
    /// Position of each task run of the iterations `..done`.
    pub(super) done_runs: HashSet<usize>,
    /// Where the change log stood when the last walk began ([`RunIndex::log_mark`]).
    pub(super) log_mark: usize,
}

impl ForEachMemo {
    pub(super) fn new(values: Vec<String>) -> ForEachMemo {
        let mut unique = HashSet::with_capacity(values.len());
        let distinct = values.iter().all(|v| unique.insert(v.as_str()));
        ForEachMemo {
            values: values.into(),
            distinct,
            seen: Vec::new(),
            done: 0,
            done_state: StateType::Success,
            done_failed: false,
            done_runs: HashSet::new(),
            log_mark: 0,
        }
    }

    /// Forget the iterations known ended (they are walked again).
    pub(super) fn forget_done(&mut self) {
        self.done = 0;
        self.done_state = StateType::Success;
        self.done_failed = false;
        self.done_runs.clear();
    }
}

/// One iteration as a walk left it: its outcome and the states of the task runs of the body it
/// found (by position). While those states are unchanged, walking it again gives the same
/// outcome (for a running iteration, when the body holds runnable tasks only: a flowable's walk
/// depends on its children).
pub(super) struct IterationSeen {
    /// `Some` once the iteration ended, with its state.
    pub(super) ended: Option<StateType>,
    /// Position and state of each task run of the body that existed.
    pub(super) runs: Vec<(usize, StateType)>,
}

impl IterationSeen {
    /// Whether every task run it saw is still at its position in the same state.
    pub(super) fn unchanged(&self, list: &[TaskRun]) -> bool {
        self.runs
            .iter()
            .all(|&(i, state)| list.get(i).is_some_and(|r| r.current() == state))
    }
}

#[derive(Default)]
struct Positions {
    /// How many entries of the list are indexed.
    indexed: usize,
    /// The id of the last indexed entry (checked when positions are reused for another call).
    last_id: Option<String>,
    /// Task run id -> position (the first one with that id).
    by_id: HashMap<String, usize>,
    /// Hash of (task id, parent, value, iteration) -> positions, in list order.
    by_identity: HashMap<u64, Vec<usize>>,
    /// Hash of (parent, value) -> positions, in list order.
    by_value: HashMap<u64, Vec<usize>>,
    /// Hash of a parent -> how many distinct values its children have.
    values_of: HashMap<u64, usize>,
    /// ForEach task run id -> what its walks learned.
    for_each: HashMap<String, ForEachMemo>,
}

fn identity_hash(
    task_id: &str,
    parent: Option<&str>,
    value: Option<&str>,
    iteration: Option<u32>,
) -> u64 {
    let mut h = DefaultHasher::new();
    (task_id, parent, value, iteration).hash(&mut h);
    h.finish()
}

fn value_hash(parent: Option<&str>, value: Option<&str>) -> u64 {
    let mut h = DefaultHasher::new();
    (parent, value).hash(&mut h);
    h.finish()
}

fn parent_hash(parent: &str) -> u64 {
    let mut h = DefaultHasher::new();
    parent.hash(&mut h);
    h.finish()
}

impl Positions {
    fn add(&mut self, list: &[TaskRun]) {
        for (i, r) in list.iter().enumerate().skip(self.indexed) {
            self.by_id.entry(r.id.clone()).or_insert(i);
            let parent = r.parent_task_run_id.as_deref();
            let value = r.value.as_deref();
            self.by_identity
                .entry(identity_hash(&r.task_id, parent, value, r.iteration))
                .or_default()
                .push(i);
            let same_value = self.by_value.entry(value_hash(parent, value)).or_default();
            if same_value.is_empty()
                && let Some(parent) = parent
            {
                *self.values_of.entry(parent_hash(parent)).or_default() += 1;
            }
            same_value.push(i);
        }
        self.indexed = list.len();
        self.last_id = list.last().map(|r| r.id.clone());
    }
}

impl RunIndex {
    /// Forget every position (after task runs were removed from the list).
    pub(super) fn reset(&self) {
        self.clear(&mut self.inner.borrow_mut());
    }

    /// Drop every position (and what the ForEach walks learned with them). The task runs changed
    /// since are unknown from then on.
    fn clear(&self, p: &mut Positions) {
        *p = Positions::default();
        self.generation.set(self.generation.get().wrapping_add(1));
        *self.changed.borrow_mut() = None;
        self.log.borrow_mut().clear();
    }

    /// Where the log of changes in place stands (see [`RunIndex::changed_since`]).
    pub(super) fn log_mark(&self) -> usize {
        self.log.borrow().len()
    }

    /// Whether a position for which `watched` holds was changed in place since `mark` (a
    /// [`RunIndex::log_mark`] taken under the same generation). `None` when that is unknown.
    pub(super) fn changed_since(&self, mark: usize, watched: impl Fn(usize) -> bool) -> bool {
        let log = self.log.borrow();
        match log.get(mark..) {
            Some(since) => since.iter().any(|&i| watched(i)),
            None => true,
        }
    }

    /// The positions of the task runs changed in place (through [`task_run_mut`]) since the last
    /// call, ascending; `None` when that is unknown (the positions were dropped: the list was
    /// replaced, shortened or reordered, or never tracked). Task runs added at the end of the list
    /// are not listed. Tracking starts again from here.
    pub(super) fn take_changed(&self) -> Option<Vec<usize>> {
        let taken = self.changed.replace(Some(Vec::new()));
        taken.map(|mut positions| {
            positions.sort_unstable();
            positions.dedup();
            positions
        })
    }

    /// Drop the positions unless they still fit `list` (kept from an earlier call): not longer
    /// than the list, and the last indexed entry unchanged. Other changes in place are caught by
    /// the check of every hit.
    pub(super) fn check(&self, list: &[TaskRun]) {
        let mut p = self.inner.borrow_mut();
        let fits = p.indexed <= list.len()
            && match p.indexed.checked_sub(1) {
                None => true,
                Some(last) => list.get(last).map(|r| &r.id) == p.last_id.as_ref(),
            };
        if !fits {
            self.clear(&mut p);
        }
    }

    fn synced(&self, list: &[TaskRun]) -> RefMut<'_, Positions> {
        let mut p = self.inner.borrow_mut();
        if list.len() < p.indexed {
            self.clear(&mut p);
        }
        if list.len() > p.indexed {
            p.add(list);
        }
        p
    }

    /// The position of the task run `id`.
    pub(super) fn position(&self, list: &[TaskRun], id: &str) -> Option<usize> {
        let mut p = self.synced(list);
        let found = p.by_id.get(id).copied()?;
        if list.get(found).is_some_and(|r| r.id == id) {
            return Some(found);
        }
        // Stale (the list was changed in place): index it again.
        self.clear(&mut p);
        p.add(list);
        p.by_id
            .get(id)
            .copied()
            .filter(|&i| list.get(i).is_some_and(|r| r.id == id))
    }

    /// The first task run of this identity.
    pub(super) fn find(
        &self,
        list: &[TaskRun],
        task_id: &str,
        parent: Option<&str>,
        value: Option<&str>,
        iteration: Option<u32>,
    ) -> Option<usize> {
        let p = self.synced(list);
        let candidates = p
            .by_identity
            .get(&identity_hash(task_id, parent, value, iteration))?;
        candidates.iter().copied().find(|&i| {
            list.get(i).is_some_and(|r| {
                r.task_id == task_id
                    && r.parent_task_run_id.as_deref() == parent
                    && r.value.as_deref() == value
                    && r.iteration == iteration
            })
        })
    }

    /// Whether a task run has this parent and value (any task, any iteration).
    pub(super) fn has_value(
        &self,
        list: &[TaskRun],
        parent: Option<&str>,
        value: Option<&str>,
    ) -> bool {
        let p = self.synced(list);
        p.by_value
            .get(&value_hash(parent, value))
            .is_some_and(|candidates| {
                candidates.iter().any(|&i| {
                    list.get(i).is_some_and(|r| {
                        r.parent_task_run_id.as_deref() == parent && r.value.as_deref() == value
                    })
                })
            })
    }
}

impl RunIndex {
    /// How many distinct values the children of the task run `parent` have.
    pub(super) fn values_of(&self, list: &[TaskRun], parent: &str) -> usize {
        let p = self.synced(list);
        p.values_of.get(&parent_hash(parent)).copied().unwrap_or(0)
    }

    /// Log a change in place at position `i` of a list of `len` task runs. The log is bounded: past
    /// a few entries per task run it is emptied and what the ForEach walks learned is dropped
    /// with it (the next walks look again: O(n) once per O(n) changes).
    fn logged(&self, i: usize, len: usize) {
        let mut log = self.log.borrow_mut();
        if log.len() >= 4 * len + 1024 {
            log.clear();
            self.inner.borrow_mut().for_each.clear();
            self.generation.set(self.generation.get().wrapping_add(1));
        }
        log.push(i);
    }

    /// Take what the walks of the ForEach task run `run_id` learned, with the generation to give
    /// back to [`RunIndex::put_for_each`].
    pub(super) fn take_for_each(&self, run_id: &str) -> (Option<ForEachMemo>, u64) {
        let memo = self.inner.borrow_mut().for_each.remove(run_id);
        (memo, self.generation.get())
    }

    /// Keep `memo` for the next walk of `run_id`, unless the positions were dropped since it was
    /// taken (at `generation`).
    pub(super) fn put_for_each(&self, run_id: &str, memo: ForEachMemo, generation: u64) {
        if self.generation.get() == generation {
            self.inner
                .borrow_mut()
                .for_each
                .insert(run_id.to_string(), memo);
        }
    }
}

/// The task run `id` of `exec`, found through `runs`.
pub(super) fn task_run<'e>(exec: &'e Execution, runs: &RunIndex, id: &str) -> Option<&'e TaskRun> {
    let i = runs.position(&exec.task_run_list, id)?;
    exec.task_run_list.get(i)
}

/// The task run `id` of `exec`, mutable, found through `runs`.
pub(super) fn task_run_mut<'e>(
    exec: &'e mut Execution,
    runs: &RunIndex,
    id: &str,
) -> Option<&'e mut TaskRun> {
    let i = runs.position(&exec.task_run_list, id)?;
    if let Some(changed) = runs.changed.borrow_mut().as_mut() {
        changed.push(i);
    }
    runs.logged(i, exec.task_run_list.len());
    exec.task_run_list.get_mut(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(
        exec: &Execution,
        id: &str,
        task: &str,
        parent: Option<&str>,
        value: Option<&str>,
    ) -> TaskRun {
        let mut r = TaskRun::new(exec, task);
        r.id = id.to_string();
        r.parent_task_run_id = parent.map(str::to_string);
        r.value = value.map(str::to_string);
        r
    }

    #[test]
    fn positions_kept_from_an_earlier_call_are_dropped_when_they_no_longer_fit() {
        let mut exec = Execution::new("ns", "f", 1);
        let runs = RunIndex::default();
        exec.task_run_list.push(run(&exec, "a", "each", None, None));
        exec.task_run_list
            .push(run(&exec, "b", "r", Some("a"), Some("1")));
        assert_eq!(runs.position(&exec.task_run_list, "b"), Some(1));
        // Grown since: kept, the new entry is indexed on the next lookup.
        exec.task_run_list
            .push(run(&exec, "c", "r", Some("a"), Some("2")));
        runs.check(&exec.task_run_list);
        assert_eq!(runs.inner.borrow().indexed, 2);
        assert_eq!(
            runs.find(&exec.task_run_list, "r", Some("a"), Some("2"), None),
            Some(2)
        );
        // Another list of the same length (its last entry differs): dropped, then rebuilt.
        exec.task_run_list[2] = run(&exec, "d", "r", Some("a"), Some("3"));
        runs.check(&exec.task_run_list);
        assert_eq!(runs.inner.borrow().indexed, 0);
        assert_eq!(
            runs.find(&exec.task_run_list, "r", Some("a"), Some("3"), None),
            Some(2)
        );
        assert_eq!(
            runs.find(&exec.task_run_list, "r", Some("a"), Some("2"), None),
            None
        );
        // A shorter list: dropped.
        exec.task_run_list.truncate(1);
        runs.check(&exec.task_run_list);
        assert_eq!(runs.inner.borrow().indexed, 0);
        assert!(!runs.has_value(&exec.task_run_list, Some("a"), Some("1")));
    }

    #[test]
    fn the_change_log_lists_changes_in_place_since_a_mark_and_drops_memos_when_full() {
        let mut exec = Execution::new("ns", "f", 1);
        let runs = RunIndex::default();
        exec.task_run_list.push(run(&exec, "a", "each", None, None));
        exec.task_run_list
            .push(run(&exec, "b", "r", Some("a"), Some("1")));
        let mark = runs.log_mark();
        assert!(!runs.changed_since(mark, |_| true), "nothing changed yet");
        assert!(task_run_mut(&mut exec, &runs, "b").is_some());
        assert!(runs.changed_since(mark, |i| i == 1));
        assert!(
            !runs.changed_since(mark, |i| i == 0),
            "only position 1 changed"
        );
        assert!(!runs.changed_since(runs.log_mark(), |_| true));
        // A memo taken out while the log fills up is not put back.
        runs.put_for_each(
            "a",
            ForEachMemo::new(vec!["1".into()]),
            runs.generation.get(),
        );
        let (memo, generation) = runs.take_for_each("a");
        for _ in 0..(4 * exec.task_run_list.len() + 1024) {
            task_run_mut(&mut exec, &runs, "a");
        }
        runs.put_for_each("a", memo.expect("a memo"), generation);
        assert!(runs.take_for_each("a").0.is_none(), "dropped with the log");
        // Dropped positions empty the log.
        task_run_mut(&mut exec, &runs, "a");
        runs.reset();
        assert_eq!(runs.log_mark(), 0);
    }

    #[test]
    fn finds_runs_added_after_the_first_lookup_and_after_a_reset() {
        let mut exec = Execution::new("ns", "f", 1);
        let runs = RunIndex::default();
        exec.task_run_list.push(run(&exec, "a", "each", None, None));
        assert_eq!(runs.position(&exec.task_run_list, "a"), Some(0));
        assert_eq!(runs.position(&exec.task_run_list, "b"), None);
        assert!(!runs.has_value(&exec.task_run_list, Some("a"), Some("1")));
        // Pushed after the index was built: found on the next lookup.
        exec.task_run_list
            .push(run(&exec, "b", "r", Some("a"), Some("1")));
        exec.task_run_list
            .push(run(&exec, "c", "r", Some("a"), Some("2")));
        assert_eq!(
            task_run(&exec, &runs, "c").map(|r| r.id.as_str()),
            Some("c")
        );
        assert_eq!(
            runs.find(&exec.task_run_list, "r", Some("a"), Some("2"), None),
            Some(2)
        );
        assert_eq!(
            runs.find(&exec.task_run_list, "r", Some("a"), Some("3"), None),
            None
        );
        assert_eq!(
            runs.find(&exec.task_run_list, "r", Some("a"), Some("2"), Some(1)),
            None
        );
        assert!(runs.has_value(&exec.task_run_list, Some("a"), Some("1")));
        // Removed (as a restart drops errors/finally runs): a reset forgets the positions.
        exec.task_run_list.remove(1);
        runs.reset();
        assert_eq!(runs.position(&exec.task_run_list, "b"), None);
        assert_eq!(runs.position(&exec.task_run_list, "c"), Some(1));
        assert!(!runs.has_value(&exec.task_run_list, Some("a"), Some("1")));
        // Changed in place without a reset: a stale hit is never returned.
        exec.task_run_list[1].id = "d".into();
        exec.task_run_list.push(run(&exec, "c", "r", None, None));
        assert_eq!(runs.position(&exec.task_run_list, "c"), Some(2));
        if let Some(r) = task_run_mut(&mut exec, &runs, "d") {
            r.value = Some("9".into());
        }
        assert_eq!(exec.task_run_list[1].value.as_deref(), Some("9"));
    }
}
