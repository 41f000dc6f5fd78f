//! The ForEach walk: one iteration of the body per value, at most `concurrencyLimit` of them
//! running at once (0: all), started in the order of the values; once every iteration ended, the
//! ForEach's own `errors` (if one failed) and `finally`.
//!
//! Cost: the values are resolved on the first walk of the ForEach task run and kept with the
//! execution's task run positions ([`ForEachMemo`]), with what the last walk saw of each started
//! iteration ([`IterationSeen`]). A later walk reads the state of each task run an iteration
//! depended on (by position: no lookup, no copy) and walks again only the iterations where one
//! changed, then starts the next values without looking each one up. A walk thus costs O(changed)
//! lookups, not O(n) (a ForEach over n values is walked on every event of the execution: O(n^2)
//! over it). Without a memo that can be trusted (repeated values, the execution being killed or
//! exited) every value is looked up, which gives the same outcome.

use super::lookup::{ForEachMemo, IterationSeen};
use super::*;

/// The iterations walked so far.
struct Tally {
    /// The worst state of the iterations that ended.
    state: StateType,
    /// Iterations running.
    running: u32,
    /// An iteration failed or was killed: no further one starts.
    failed: bool,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            state: StateType::Success,
            running: 0,
            failed: false,
        }
    }

    /// Count one iteration: running (`None`) or ended in a state.
    fn add(&mut self, ended: Option<StateType>) {
        match ended {
            None => self.running += 1,
            Some(s) => {
                self.state = worst(self.state, s);
                self.failed |= matches!(s, StateType::Failed | StateType::Killed);
            }
        }
    }
}

fn ended(status: &Status) -> Option<StateType> {
    match status {
        Status::Running => None,
        Status::Done(s) => Some(*s),
    }
}

impl Run<'_> {
    /// The ForEach task run `run_id` (its own value `own_value`), iterating over `values` (a
    /// list, a JSON string or an expression), at most `limit` iterations at once (0: all).
    pub(super) fn walk_for_each(
        &mut self,
        run_id: &str,
        own_value: Option<&str>,
        values: &Value,
        group: &Group,
        limit: u32,
    ) -> Status {
        let (memo, generation) = self.runs.take_for_each(run_id);
        let mut memo = match memo {
            Some(memo) => memo,
            None => {
                // A literal list needs no context (building it costs O(n)).
                let ctx = match values {
                    Value::String(s) if is_expression(s) => self.context_for(run_id),
                    _ => Value::Null,
                };
                match self.loop_values(values, &ctx) {
                    Ok(list) => ForEachMemo::new(list),
                    Err(e) => return self.fail_run(run_id, format!("forEach values: {e}")),
                }
            }
        };
        let body = Group {
            tasks: group.tasks.clone(),
            errors: Vec::new(),
            finally: Vec::new(),
        };
        let iterations = self.walk_iterations(run_id, &mut memo, &body, limit);
        self.runs.put_for_each(run_id, memo, generation);
        let Some(state) = iterations else {
            return Status::Running;
        };
        // Iterations done: the ForEach's own errors and finally (keyed by the ForEach's own value).
        if state == StateType::Failed
            && !group.errors.is_empty()
            && !self.killing()
            && let Status::Running = self.walk_sequence(Some(run_id), own_value, &group.errors)
        {
            return Status::Running;
        }
        if !group.finally.is_empty()
            && !self.killing()
            && let Status::Running = self.walk_sequence(Some(run_id), own_value, &group.finally)
        {
            return Status::Running;
        }
        Status::Done(state)
    }

    /// Walk the iterations and start the next ones the limit allows. Returns `None` while an
    /// iteration runs or remains to start, else the worst state of the iterations.
    fn walk_iterations(
        &mut self,
        run_id: &str,
        memo: &mut ForEachMemo,
        body: &Group,
        limit: u32,
    ) -> Option<StateType> {
        let values = memo.values.clone();
        let mut tally = Tally::new();
        let trusted = memo.distinct && !self.killing() && self.exit.is_none();
        let not_started: Vec<usize> = if trusted {
            self.walk_started(run_id, memo, body, &mut tally);
            let started = memo.seen.len();
            if self.runs.values_of(&self.exec.task_run_list, run_id) == started {
                // The ForEach's children have exactly the values known started: the others have
                // not started (no lookup needed).
                let room = match limit {
                    0 => usize::MAX,
                    l => l.saturating_sub(tally.running) as usize,
                };
                // At least one when some remain (none may start: the walk still runs).
                (started..values.len()).take(room.max(1)).collect()
            } else {
                // Another value has children (the ForEach's own errors or finally ran, or the
                // positions are new): each remaining value is looked up.
                self.scan_values(
                    run_id,
                    &values,
                    started,
                    body,
                    Some(&mut memo.seen),
                    &mut tally,
                )
            }
        } else {
            memo.seen.clear();
            memo.forget_done();
            self.scan_values(run_id, &values, 0, body, None, &mut tally)
        };
        if !not_started.is_empty() && !tally.failed && !self.killing() && self.exit.is_none() {
            for i in not_started {
                if limit > 0 && tally.running >= limit {
                    break;
                }
                let Some(value) = values.get(i) else { break };
                self.walk_group(Some(run_id), Some(value), body, Mode::Sequential);
                tally.running += 1;
                if trusted && memo.seen.len() == i {
                    memo.seen.push(None);
                }
            }
            return None;
        }
        if tally.running > 0 {
            return None;
        }
        Some(tally.state)
    }

    /// Walk the iterations known started (`memo.seen`), skipping those whose task runs did not
    /// change since the last walk.
    fn walk_started(
        &mut self,
        run_id: &str,
        memo: &mut ForEachMemo,
        body: &Group,
        tally: &mut Tally,
    ) {
        // A running iteration of runnable tasks only moves when one of its task runs changes; a
        // flowable's walk depends on its own children, so such iterations are walked each time.
        let runnable = body.tasks.iter().all(|t| {
            matches!(
                self.index.node(t).map(|n| &n.kind),
                Some(NodeKind::Runnable)
            )
        });
        // The iterations known ended are trusted while none of their task runs changed in
        // place since the last walk (then all are walked again).
        if memo.done > 0
            && self
                .runs
                .changed_since(memo.log_mark, |i| memo.done_runs.contains(&i))
        {
            memo.forget_done();
        }
        memo.log_mark = self.runs.log_mark();
        if memo.done > 0 {
            tally.add(Some(memo.done_state));
            tally.failed |= memo.done_failed;
        }
        let values = memo.values.clone();
        for (i, value) in values
            .iter()
            .enumerate()
            .take(memo.seen.len())
            .skip(memo.done)
        {
            if let Some(Some(seen)) = memo.seen.get(i)
                && (seen.ended.is_some() || runnable)
                && !self.killing()
                && self.exit.is_none()
                && seen.unchanged(&self.exec.task_run_list)
            {
                tally.add(seen.ended);
                continue;
            }
            let status = self.walk_group(Some(run_id), Some(value), body, Mode::Sequential);
            tally.add(ended(&status));
            if let Some(slot) = memo.seen.get_mut(i) {
                *slot = self.iteration_seen(run_id, value, body, &status);
            }
        }
        // Extend the iterations known ended.
        while let Some(Some(seen)) = memo.seen.get(memo.done)
            && let Some(state) = seen.ended
        {
            memo.done_state = worst(memo.done_state, state);
            memo.done_failed |= matches!(state, StateType::Failed | StateType::Killed);
            memo.done_runs.extend(seen.runs.iter().map(|&(i, _)| i));
            memo.done += 1;
        }
    }

    /// Walk the iterations of `values[from..]` that started, each value looked up; `seen`, when
    /// given, is extended while the started values follow the known ones. Returns the positions
    /// of the values not started.
    fn scan_values(
        &mut self,
        run_id: &str,
        values: &[String],
        from: usize,
        body: &Group,
        mut seen: Option<&mut Vec<Option<IterationSeen>>>,
        tally: &mut Tally,
    ) -> Vec<usize> {
        let mut not_started = Vec::new();
        for (i, value) in values.iter().enumerate().skip(from) {
            if !self
                .runs
                .has_value(&self.exec.task_run_list, Some(run_id), Some(value))
            {
                not_started.push(i);
                continue;
            }
            let status = self.walk_group(Some(run_id), Some(value), body, Mode::Sequential);
            tally.add(ended(&status));
            if let Some(seen) = seen.as_deref_mut()
                && seen.len() == i
            {
                seen.push(self.iteration_seen(run_id, value, body, &status));
            }
        }
        not_started
    }

    /// What a walk of one iteration saw, to be trusted by the next walk (`None` while the
    /// execution is killed or exited: the walk's outcome then depends on more than the states).
    fn iteration_seen(
        &self,
        run_id: &str,
        value: &str,
        body: &Group,
        status: &Status,
    ) -> Option<IterationSeen> {
        if self.killing() || self.exit.is_some() {
            return None;
        }
        let list = &self.exec.task_run_list;
        let runs = body
            .tasks
            .iter()
            .filter_map(|task_id| {
                let i = self
                    .runs
                    .find(list, task_id, Some(run_id), Some(value), self.iteration)?;
                Some((i, list.get(i)?.current()))
            })
            .collect();
        Some(IterationSeen {
            ended: ended(status),
            runs,
        })
    }
}
