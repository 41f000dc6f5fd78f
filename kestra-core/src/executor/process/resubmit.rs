//! Resubmission of a task attempt whose worker died ([`ExecutionCommand::Resubmit`], issue 14):
//! the attempt ends RESUBMITTED, the task run goes RESUBMITTED and a new attempt is sent to the
//! workers (a late result of the old attempt is then stale and dropped by [`Run::apply_result`]).
//! Past `max_resubmissions` resubmissions of one task run, the task run fails with an error that
//! says so instead of killing worker after worker. Never for an execution that ended or is being
//! killed, nor for an attempt that already ended or is not the current one, nor for an attempt
//! another worker took over (the queue delivered its job again first).

use super::*;

impl Run<'_> {
    /// Apply a [`ExecutionCommand::Resubmit`] (see the module documentation).
    pub(super) fn resubmit(
        &mut self,
        task_run_id: &str,
        attempt: Option<u32>,
        worker_id: Option<&str>,
        max_resubmissions: u32,
    ) {
        if self.exec.state.is_terminated() || self.killing() {
            self.ignored = Some(format!(
                "resubmit of task run {task_run_id}: execution is {}",
                self.exec.current()
            ));
            return;
        }
        let Some(run) = lookup::task_run(&self.exec, &self.runs, task_run_id) else {
            self.ignored = Some(format!("resubmit of unknown task run {task_run_id}"));
            return;
        };
        let current = run.attempts.len() as u32;
        let runnable = matches!(
            self.index.node(&run.task_id).map(|n| &n.kind),
            Some(NodeKind::Runnable)
        );
        let waiting = awaits_worker(run.current()) || run.current() == StateType::Running;
        let open = run
            .attempts
            .last()
            .is_some_and(|a| !a.state.is_terminated());
        if !runnable || !waiting || !open || attempt.is_some_and(|a| a != current) {
            self.ignored = Some(format!(
                "stale resubmit of attempt {} of task run {task_run_id} (task run {}, current attempt {current})",
                attempt.map_or_else(|| "current".to_string(), |a| a.to_string()),
                run.current()
            ));
            return;
        }
        if let (Some(dead), Some(holder)) = (
            worker_id,
            run.attempts.last().and_then(|a| a.worker_id.as_deref()),
        ) && dead != holder
        {
            // The queue delivered the job again to a living worker first: it runs it.
            self.ignored = Some(format!(
                "resubmit of attempt {current} of task run {task_run_id}: taken over by worker {holder} (not {dead})"
            ));
            return;
        }
        let resubmitted = run
            .attempts
            .iter()
            .filter(|a| a.state.current() == StateType::Resubmitted)
            .count() as u32;
        let worker = worker_id
            .map(str::to_string)
            .or_else(|| run.attempts.last().and_then(|a| a.worker_id.clone()))
            .unwrap_or_else(|| "unknown".to_string());
        let now = self.now;
        if resubmitted >= max_resubmissions {
            if let Some(last) = lookup::task_run_mut(&mut self.exec, &self.runs, task_run_id)
                .and_then(|r| r.attempts.last_mut())
            {
                let _ = last.state.transition_at(StateType::Failed, now);
            }
            self.touch();
            let message = format!(
                "task run {task_run_id} failed: its worker {worker} died holding attempt {current}, \
                 and it was already resubmitted {resubmitted} time(s) after its workers died \
                 (maximum {max_resubmissions}, kestra.server.worker-task-max-resubmissions); \
                 not resubmitting it again"
            );
            if let Status::Done(s) = self.fail_run(task_run_id, message) {
                self.set_run_state(task_run_id, s);
            }
            return;
        }
        if let Some(last) = lookup::task_run_mut(&mut self.exec, &self.runs, task_run_id)
            .and_then(|r| r.attempts.last_mut())
        {
            let _ = last.state.transition_at(StateType::Resubmitted, now);
        }
        self.set_run_state(task_run_id, StateType::Resubmitted);
        let run = lookup::task_run(&self.exec, &self.runs, task_run_id).cloned();
        self.log(
            run.as_ref(),
            Level::Warn,
            format!(
                "worker {worker} died holding attempt {current} of task run {task_run_id}: \
                 resubmitted as attempt {}",
                current + 1
            ),
        );
        self.start_attempt(task_run_id);
    }
}
