//! LoopUntil and WaitFor: the body runs as iterations 0, 1, ... (task runs carry `iteration`,
//! which is part of their identity); after each successful iteration `condition` is checked in the
//! loop's context (the latest iteration's outputs). LoopUntil ends in SUCCESS when it is true,
//! WaitFor when it is false. Otherwise, when `checkFrequency.maxIterations` (100) or
//! `maxDuration` (PT1H, from the loop's start) is reached, the loop ends SUCCESS, or FAILED with
//! `failOnMaxReached`; else the next iteration starts after `checkFrequency.interval` (PT1S)
//! through a [`ExecutionCommand::LoopIterationDue`] timer. A failed iteration ends the loop (then
//! its `errors` and `finally`). Output `iterationCount`: the 1-based number of the current
//! iteration, as Kestra's (1 during the first one); it is raised when the next iteration is
//! decided, which also marks that its timer has been emitted and keeps `process` idempotent.

use super::*;
use crate::executor::index::LoopSpec;
use crate::flow::duration::IsoDuration;

/// Kestra's `checkFrequency` defaults.
const DEFAULT_INTERVAL_SECONDS: i64 = 1;
const DEFAULT_MAX_ITERATIONS: u32 = 100;
const DEFAULT_MAX_DURATION_SECONDS: i64 = 3600;

impl Run<'_> {
    pub(super) fn loop_iteration_due(&mut self, task_run_id: &str, iteration: u32) {
        let running = lookup::task_run(&self.exec, &self.runs, task_run_id)
            .is_some_and(|r| r.current() == StateType::Running);
        let started = self.exec.task_run_list.iter().any(|r| {
            r.parent_task_run_id.as_deref() == Some(task_run_id) && r.iteration == Some(iteration)
        });
        if !running || started || self.killing() {
            self.ignored = Some(format!(
                "stale loop timer for task run {task_run_id} iteration {iteration}"
            ));
            return;
        }
        self.due_loops.push((task_run_id.to_string(), iteration));
        self.touch();
    }

    fn walk_iteration(
        &mut self,
        run_id: &str,
        value: Option<&str>,
        body: &Group,
        iteration: u32,
    ) -> Status {
        let saved = self.iteration.replace(iteration);
        let status = self.walk_group(Some(run_id), value, body, Mode::Sequential);
        self.iteration = saved;
        status
    }

    fn loop_end(
        &mut self,
        run_id: &str,
        value: Option<&str>,
        state: StateType,
        group: &Group,
    ) -> Status {
        let saved = self.iteration.take();
        let mut status = Status::Done(state);
        if state == StateType::Failed
            && !group.errors.is_empty()
            && !self.killing()
            && let Status::Running = self.walk_sequence(Some(run_id), value, &group.errors)
        {
            status = Status::Running;
        }
        if matches!(status, Status::Done(_))
            && !group.finally.is_empty()
            && !self.killing()
            && let Status::Running = self.walk_sequence(Some(run_id), value, &group.finally)
        {
            status = Status::Running;
        }
        self.iteration = saved;
        status
    }

    fn set_iteration_count(&mut self, run_id: &str, count: u32) {
        let current = lookup::task_run(&self.exec, &self.runs, run_id)
            .and_then(|r| r.outputs.as_ref())
            .and_then(|o| o.get("iterationCount"))
            .and_then(Value::as_u64);
        if current == Some(u64::from(count)) {
            return;
        }
        if let Some(r) = lookup::task_run_mut(&mut self.exec, &self.runs, run_id) {
            let mut o = r.outputs.clone().unwrap_or_default();
            o.insert("iterationCount".into(), json!(count));
            r.outputs = Some(o);
        }
        self.touch();
    }

    pub(super) fn walk_loop(
        &mut self,
        run_id: &str,
        value: Option<&str>,
        spec: &LoopSpec,
        group: &Group,
    ) -> Status {
        let body = Group {
            tasks: group.tasks.clone(),
            errors: Vec::new(),
            finally: Vec::new(),
        };
        let latest = self
            .exec
            .task_run_list
            .iter()
            .filter(|r| r.parent_task_run_id.as_deref() == Some(run_id))
            .filter_map(|r| r.iteration)
            .max();
        let Some(i) = latest else {
            self.set_iteration_count(run_id, 1);
            return self.walk_iteration(run_id, value, &body, 0);
        };
        let state = match self.walk_iteration(run_id, value, &body, i) {
            Status::Running => return Status::Running,
            Status::Done(s) => s,
        };
        let completed = i + 1;
        if matches!(
            state,
            StateType::Failed | StateType::Killed | StateType::Cancelled
        ) || self.killing()
        {
            return self.loop_end(run_id, value, state, group);
        }
        let count = lookup::task_run(&self.exec, &self.runs, run_id)
            .and_then(|r| r.outputs.as_ref())
            .and_then(|o| o.get("iterationCount"))
            .and_then(Value::as_u64);
        if count == Some(u64::from(completed) + 1) {
            // Decided already: the next iteration waits for its timer.
            let due = self
                .due_loops
                .iter()
                .any(|(id, it)| id == run_id && *it == completed);
            if due {
                return self.walk_iteration(run_id, value, &body, completed);
            }
            return Status::Running;
        }
        let ctx = self.context_for(run_id);
        let condition = match self.condition(&spec.condition, &ctx) {
            Ok(b) => b,
            Err(e) => {
                let Status::Done(s) = self.fail_run(run_id, format!("loop condition: {e}")) else {
                    return Status::Running;
                };
                return self.loop_end(run_id, value, s, group);
            }
        };
        // WaitFor runs again while the condition holds, LoopUntil until it holds.
        if condition != spec.wait_for {
            return self.loop_end(run_id, value, state, group);
        }
        let check = spec.check_frequency.clone();
        let max_iterations = match check.as_ref().and_then(|c| c.max_iterations.clone()) {
            None => DEFAULT_MAX_ITERATIONS,
            Some(p) => match self.render_prop(run_id, &p) {
                Ok(n) => n,
                Err(e) => return self.fail_run(run_id, format!("invalid maxIterations: {e}")),
            },
        };
        let max_duration = match check.as_ref().and_then(|c| c.max_duration.clone()) {
            None => chrono::Duration::seconds(DEFAULT_MAX_DURATION_SECONDS),
            Some(p) => match self.render_prop::<IsoDuration>(run_id, &p) {
                Ok(d) => chrono::Duration::from_std(d.duration()).unwrap_or(chrono::Duration::MAX),
                Err(e) => return self.fail_run(run_id, format!("invalid maxDuration: {e}")),
            },
        };
        let interval = match check.as_ref().and_then(|c| c.interval.clone()) {
            None => chrono::Duration::seconds(DEFAULT_INTERVAL_SECONDS),
            Some(p) => match self.render_prop::<IsoDuration>(run_id, &p) {
                Ok(d) => chrono::Duration::from_std(d.duration()).unwrap_or(chrono::Duration::MAX),
                Err(e) => return self.fail_run(run_id, format!("invalid interval: {e}")),
            },
        };
        let started = lookup::task_run(&self.exec, &self.runs, run_id)
            .and_then(|r| r.state.start_date())
            .unwrap_or(self.now);
        // Kestra's WaitFor stops once `iterationCount >= maxIterations`, its LoopUntil once
        // `iterationCount > maxIterations` (one more iteration).
        let over_iterations = if spec.wait_for {
            completed >= max_iterations
        } else {
            completed > max_iterations
        };
        let over_duration = self.now - started > max_duration;
        if over_iterations || over_duration {
            let fail = match spec.fail_on_max_reached.clone() {
                None => false,
                Some(p) => match self.render_prop(run_id, &p) {
                    Ok(b) => b,
                    Err(e) => {
                        return self.fail_run(run_id, format!("invalid failOnMaxReached: {e}"));
                    }
                },
            };
            let run = lookup::task_run(&self.exec, &self.runs, run_id).cloned();
            let reached = if over_iterations {
                "Max iterations reached"
            } else {
                "Max duration reached"
            };
            self.log(run.as_ref(), Level::Warn, reached.to_string());
            let s = if fail { StateType::Failed } else { state };
            return self.loop_end(run_id, value, s, group);
        }
        // The next iteration's count is visible from now on (Kestra increments it when it
        // schedules the next iteration); it also marks the timer as emitted.
        self.set_iteration_count(run_id, completed + 1);
        if interval <= chrono::Duration::zero() {
            return self.walk_iteration(run_id, value, &body, completed);
        }
        self.delays.push(Delay {
            at: self.now + interval,
            command: ExecutionCommand::LoopIterationDue {
                execution_id: self.exec.id.clone(),
                task_run_id: run_id.to_string(),
                iteration: completed,
            },
        });
        Status::Running
    }
}
