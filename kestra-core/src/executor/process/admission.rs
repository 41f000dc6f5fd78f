//! When an execution may start: `scheduleDate` in the future keeps it CREATED until a
//! [`ExecutionCommand::ScheduledStart`] timer; a flow concurrency limit keeps it CREATED (then
//! QUEUED) until the runtime grants a slot (see `executor::concurrency`); so does a restarted
//! execution of such a flow (RESTARTED, then QUEUED or RUNNING). Also the retry behavior
//! CREATE_NEW_EXECUTION, which ends an execution RETRIED and starts its successor.

use super::*;
use crate::flow::model::{ConcurrencyBehavior, RetryBehavior};

impl Run<'_> {
    /// Whether the walk must wait: future `scheduleDate`, or no concurrency slot yet.
    pub(super) fn hold_before_start(&mut self, event: &ExecutorEvent, is_new: bool) -> bool {
        let state = self.exec.current();
        if !matches!(
            state,
            StateType::Created | StateType::Queued | StateType::Restarted
        ) {
            return false;
        }
        if state == StateType::Created
            && let Some(at) = self.exec.schedule_date
            && at > self.now
        {
            if is_new && matches!(event, ExecutorEvent::Execution(_)) {
                self.delays.push(Delay {
                    at,
                    command: ExecutionCommand::ScheduledStart {
                        execution_id: self.exec.id.clone(),
                    },
                });
            }
            return true;
        }
        if self.index.flow.concurrency.is_some() {
            // A restarted execution of a limited flow takes a slot again, like a new one.
            if matches!(state, StateType::Created | StateType::Restarted) {
                self.slot = SlotRequest::Acquire;
            }
            return true;
        }
        false
    }

    /// `ScheduledStart` (a wake-up), `Start` (slot granted), `ConcurrencyLimited`.
    pub(super) fn admission_command(&mut self, cmd: &ExecutionCommand) {
        let state = self.exec.current();
        match cmd {
            ExecutionCommand::ScheduledStart { .. } if state != StateType::Created => {
                self.ignored = Some(format!("scheduled start: execution is {state}"));
            }
            ExecutionCommand::Start { .. } => {
                if matches!(
                    state,
                    StateType::Created | StateType::Queued | StateType::Restarted
                ) {
                    self.set_exec_state(StateType::Running);
                    // A restarted execution that waited for its slot: its task runs go on now.
                    self.start_restarted_task_runs();
                } else {
                    self.ignored = Some(format!("start: execution is {state}"));
                }
            }
            ExecutionCommand::ConcurrencyLimited { behavior, .. } => {
                if !matches!(state, StateType::Created | StateType::Restarted) {
                    self.ignored = Some(format!("concurrency limit: execution is {state}"));
                    return;
                }
                match behavior {
                    ConcurrencyBehavior::Queue => self.set_exec_state(StateType::Queued),
                    ConcurrencyBehavior::Cancel => {
                        self.log(
                            None,
                            Level::Warn,
                            "flow concurrency limit reached: execution cancelled".into(),
                        );
                        self.end_restarted_task_runs(StateType::Cancelled);
                        self.set_exec_state(StateType::Cancelled);
                    }
                    ConcurrencyBehavior::Fail => {
                        self.log(
                            None,
                            Level::Error,
                            "flow concurrency limit reached: execution failed".into(),
                        );
                        self.end_restarted_task_runs(StateType::Failed);
                        self.set_exec_state(StateType::Failed);
                    }
                }
            }
            _ => {}
        }
    }

    /// A restarted execution refused by the concurrency limit: its task runs waiting to restart
    /// end with it.
    fn end_restarted_task_runs(&mut self, state: StateType) {
        let waiting: Vec<String> = self
            .exec
            .task_run_list
            .iter()
            .filter(|r| r.current() == StateType::Restarted)
            .map(|r| r.id.clone())
            .collect();
        for id in waiting {
            self.set_run_state(&id, state);
        }
    }

    /// After the walk: an execution of a limited flow that ended in this call releases its slot,
    /// whatever it holds (a slot, a place in the queue, or a grant still on its way): every end
    /// path releases, and releasing what is not held is a no-op.
    pub(super) fn slot_after(&mut self) {
        if self.index.flow.concurrency.is_some()
            && self.slot == SlotRequest::None
            && !self.was_terminated
            && self.exec.state.is_terminated()
        {
            self.slot = SlotRequest::Release;
        }
    }

    /// Retry behavior CREATE_NEW_EXECUTION for a failed task run: the execution ends RETRIED and a
    /// successor (labelled `system.replay`, `attemptNumber + 1`, scheduled after the retry delay)
    /// is emitted; once the policy is exhausted the task run simply fails. Returns whether the
    /// failure was handled here (the policy has this behavior).
    pub(super) fn retry_as_new_execution(&mut self, task_id: &str, run_id: &str) -> bool {
        let Some(retry) = self.index.retry_for(task_id) else {
            return false;
        };
        if retry.behavior != RetryBehavior::CreateNewExecution {
            return false;
        }
        let attempts = self.exec.metadata.attempt_number;
        let first = self.exec.metadata.original_created_date;
        let Some(delay) = retry_delay(retry, attempts, first, self.now, &self.exec.id) else {
            let (af, aw) = self
                .index
                .node(task_id)
                .map(|n| (n.task.allow_failure, n.task.allow_warning))
                .unwrap_or((false, false));
            self.set_run_state(run_id, allow_transform(StateType::Failed, af, aw));
            return true;
        };
        let mut next = self.exec.clone();
        next.id = task_run_id(
            &self.exec.id,
            None,
            "\u{0}retry",
            Some(&attempts.to_string()),
        );
        next.task_run_list.clear();
        next.outputs.clear();
        next.state = State::new_at(StateType::Created, self.now);
        next.metadata.attempt_number = attempts + 1;
        next.original_id = Some(
            self.exec
                .original_id
                .clone()
                .unwrap_or_else(|| self.exec.id.clone()),
        );
        next.schedule_date = (delay > chrono::Duration::zero()).then(|| self.now + delay);
        next.labels.retain(|l| l.key != system_labels::REPLAY);
        next.labels
            .push(Label::new(system_labels::REPLAY, self.exec.id.clone()));
        self.new_executions.push(next);
        self.log(
            None,
            Level::Warn,
            format!(
                "task '{task_id}' failed: retrying as a new execution (attempt {})",
                attempts + 1
            ),
        );
        self.set_run_state(run_id, StateType::Failed);
        let open: Vec<String> = self
            .exec
            .task_run_list
            .iter()
            .filter(|r| !r.state.is_terminated())
            .map(|r| r.id.clone())
            .collect();
        if !open.is_empty() {
            self.kill_broadcast = true;
        }
        for id in open {
            self.set_run_state(&id, StateType::Killed);
        }
        self.exit = Some(StateType::Retried);
        true
    }
}
