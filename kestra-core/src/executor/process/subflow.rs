//! The Subflow task in the walk: the first visit emits a [`SubflowRequest`] (see
//! `executor::subflow`) and records output `executionId`; with `wait: false` the task run ends
//! SUCCESS at once, otherwise it waits for the child's [`SubflowExecutionResult`], which sets
//! outputs `state` and `outputs` and the task run's state (`transmitFailed` rules). Killing the
//! parent kills the child (`Outcome.kill_executions`) and ends the task run KILLED.

use super::*;
use crate::executor::for_each_item as fei;
use crate::executor::subflow::{
    MAX_SUBFLOW_DEPTH, SUBFLOW_OUTPUTS_VARIABLE, SUBFLOW_TRIGGER_TYPE, depth, parent_state,
};
use crate::flow::tasks;
use crate::messages::SubflowExecutionResult;
use crate::model::ExecutionTrigger;
use indexmap::IndexMap;

/// What a child execution is made of: the properties Subflow and ForEachItem share.
pub(super) struct ChildSpec<'t> {
    pub namespace: &'t str,
    pub flow_id: &'t str,
    pub revision: &'t Option<Property<i32>>,
    pub inputs: &'t Option<IndexMap<String, Value>>,
    pub labels: &'t Option<Value>,
    pub inherit_labels: &'t Option<Property<bool>>,
    pub schedule_date: &'t Option<String>,
    /// The Subflow task's (deprecated) `outputs` mapping, rendered by the child when it ends.
    pub outputs: Option<&'t IndexMap<String, Value>>,
}

impl Run<'_> {
    pub(super) fn render_str(&mut self, run_id: &str, s: &str) -> Result<String, String> {
        if !is_expression(s) {
            return Ok(s.to_string());
        }
        let ctx = self.context_for(run_id);
        self.expr.render(s, &ctx).map_err(|e| e.to_string())
    }

    pub(super) fn bool_prop(
        &mut self,
        run_id: &str,
        p: &Option<Property<bool>>,
        default: bool,
    ) -> Result<bool, String> {
        match p {
            None => Ok(default),
            Some(p) => self.render_prop(run_id, p),
        }
    }

    /// The Subflow task's walk; once it ends, its task run carries one attempt in its final
    /// state, as Kestra's (`TaskRunAttempt.builder().state(new State().withState(state))`).
    pub(super) fn walk_subflow(&mut self, run_id: &str, task: &tasks::Subflow) -> Status {
        let status = self.walk_subflow_task(run_id, task);
        if let Status::Done(state) = status {
            let now = self.now;
            if let Some(r) = lookup::task_run_mut(&mut self.exec, &self.runs, run_id)
                // One attempt per child: the failed ones a retry left behind, then this one
                // (a restarted task run ends again without a new child, hence no new attempt).
                && (r.attempts.is_empty() || !r.state.histories().iter().any(|h| h.state == StateType::Restarted))
            {
                let mut attempt = State::new_at(StateType::Created, now);
                // CREATED -> any other state is allowed; a CREATED end keeps its one entry.
                attempt.transition_at(state, now).ok();
                r.attempts.push(TaskRunAttempt {
                    state: attempt,
                    log_file: None,
                    worker_id: None,
                });
            }
        }
        status
    }

    fn walk_subflow_task(&mut self, run_id: &str, task: &tasks::Subflow) -> Status {
        let outputs = lookup::task_run(&self.exec, &self.runs, run_id)
            .and_then(|r| r.outputs.clone())
            .unwrap_or_default();
        let transmit_failed = match self.bool_prop(run_id, &task.transmit_failed, true) {
            Ok(b) => b,
            Err(e) => return self.fail_run(run_id, format!("invalid transmitFailed: {e}")),
        };
        if let Some(child) = outputs.get("executionId").and_then(Value::as_str) {
            if let Some(error) = outputs.get("error").and_then(Value::as_str) {
                return self.fail_run(run_id, format!("subflow execution not created: {error}"));
            }
            if let Some(state) = outputs
                .get("state")
                .and_then(Value::as_str)
                .and_then(|s| s.parse::<StateType>().ok())
            {
                let state = parent_state(state, transmit_failed);
                if state == StateType::Failed && self.retry_subflow(run_id) {
                    return Status::Running;
                }
                return Status::Done(self.warning_on_retry(run_id, state));
            }
            if self.killing() {
                self.kill_executions.push(child.to_string());
                return Status::Done(StateType::Killed);
            }
            return Status::Running;
        }
        if self.killing() {
            return Status::Done(StateType::Killed);
        }
        match self.subflow_request(run_id, task) {
            Ok(request) => {
                let wait = request.1;
                let child_id = request.0.execution.id.clone();
                self.subflow_requests.push(request.0);
                if let Some(r) = lookup::task_run_mut(&mut self.exec, &self.runs, run_id) {
                    let mut o = r.outputs.clone().unwrap_or_default();
                    o.insert("executionId".into(), json!(child_id));
                    r.outputs = Some(o);
                }
                self.touch();
                if wait {
                    Status::Running
                } else {
                    Status::Done(StateType::Success)
                }
            }
            Err(e) => self.fail_run(run_id, e),
        }
    }

    /// A failed child with the task's `retry` policy not exhausted: the child counts as a
    /// FAILED attempt of the Subflow task run, which goes RETRYING until a
    /// [`ExecutionCommand::RetryDue`] timer starts the next child (Kestra: one child per attempt,
    /// `taskrun.attemptsCount` counts them). Returns whether a retry was scheduled.
    fn retry_subflow(&mut self, run_id: &str) -> bool {
        if self.killing() {
            return false;
        }
        let Some(run) = lookup::task_run(&self.exec, &self.runs, run_id) else {
            return false;
        };
        let Some(retry) = self.index.retry_for(&run.task_id) else {
            return false;
        };
        // The child that just failed is one more attempt than those recorded.
        let attempts = run.attempts.len() as u32 + 1;
        let first_start = run.state.start_date().unwrap_or(self.now);
        let Some(delay) = retry_delay(retry, attempts, first_start, self.now, run_id) else {
            return false;
        };
        let now = self.now;
        let child = run
            .outputs
            .as_ref()
            .and_then(|o| o.get("executionId"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if let Some(r) = lookup::task_run_mut(&mut self.exec, &self.runs, run_id) {
            let mut attempt = State::new_at(StateType::Created, now);
            attempt.transition_at(StateType::Failed, now).ok();
            r.attempts.push(TaskRunAttempt {
                state: attempt,
                log_file: None,
                worker_id: None,
            });
            // The next child's outputs replace this one's.
            r.outputs = None;
        }
        let run = lookup::task_run(&self.exec, &self.runs, run_id).cloned();
        self.log(
            run.as_ref(),
            Level::Warn,
            format!(
                "subflow execution {child} failed (attempt {attempts}): retrying with a new execution"
            ),
        );
        self.set_run_state(run_id, StateType::Retrying);
        self.delays.push(Delay {
            at: now + delay,
            command: ExecutionCommand::RetryDue {
                execution_id: self.exec.id.clone(),
                task_run_id: run_id.to_string(),
                attempt: attempts + 1,
            },
        });
        self.touch();
        true
    }

    /// `warningOnRetry`: a Subflow task that succeeded after retries ends WARNING.
    fn warning_on_retry(&self, run_id: &str, state: StateType) -> StateType {
        let retried = lookup::task_run(&self.exec, &self.runs, run_id).is_some_and(|r| {
            !r.attempts.is_empty()
                && self
                    .index
                    .retry_for(&r.task_id)
                    .is_some_and(|p| p.warning_on_retry)
        });
        if state == StateType::Success && retried {
            StateType::Warning
        } else {
            state
        }
    }

    /// A Subflow task run whose retry is due (RETRYING): it runs again and its walk starts a new
    /// child. Returns false when the task run is not a Subflow's.
    pub(super) fn retry_subflow_due(&mut self, run_id: &str) -> bool {
        let is_subflow = lookup::task_run(&self.exec, &self.runs, run_id).is_some_and(|r| {
            matches!(
                self.index.node(&r.task_id).map(|n| &n.kind),
                Some(NodeKind::Flowable(f)) if matches!(**f, Flowable::Subflow(_))
            )
        });
        if is_subflow {
            self.set_run_state(run_id, StateType::Running);
        }
        is_subflow
    }

    fn subflow_request(
        &mut self,
        run_id: &str,
        task: &tasks::Subflow,
    ) -> Result<(SubflowRequest, bool), String> {
        let wait = self
            .bool_prop(run_id, &task.wait, true)
            .map_err(|e| format!("invalid wait: {e}"))?;
        let spec = ChildSpec {
            namespace: &task.namespace,
            flow_id: &task.flow_id,
            revision: &task.revision,
            inputs: &task.inputs,
            labels: &task.labels,
            inherit_labels: &task.inherit_labels,
            schedule_date: &task.schedule_date,
            outputs: task.outputs.as_ref().filter(|_| wait),
        };
        Ok((self.child_request(run_id, &spec, None)?, wait))
    }

    /// The child execution a Subflow task run (`batch: None`) or one batch of a ForEachItem's
    /// `_items` task run (`batch: Some((iteration, batch URI))`) asks for.
    pub(super) fn child_request(
        &mut self,
        run_id: &str,
        task: &ChildSpec<'_>,
        batch: Option<(u32, &str)>,
    ) -> Result<SubflowRequest, String> {
        let child_depth = depth(&self.exec) + 1;
        if child_depth > MAX_SUBFLOW_DEPTH {
            return Err(format!(
                "subflow depth limit reached: this execution is already {} levels deep (max {MAX_SUBFLOW_DEPTH})",
                child_depth - 1
            ));
        }
        let Some(run) = lookup::task_run(&self.exec, &self.runs, run_id).cloned() else {
            return Err("task run not found".into());
        };
        let namespace = self.render_str(run_id, task.namespace)?;
        let flow_id = self.render_str(run_id, task.flow_id)?;
        let revision = match task.revision {
            None => None,
            Some(p) => Some(
                self.render_prop(run_id, p)
                    .map_err(|e| format!("invalid revision: {e}"))?,
            ),
        };
        let inherit = self
            .bool_prop(run_id, task.inherit_labels, false)
            .map_err(|e| format!("invalid inheritLabels: {e}"))?;
        let mut ctx = self.context_for(run_id);
        if let Some((iteration, uri)) = batch
            && let Some(taskrun) = ctx.get_mut("taskrun")
        {
            taskrun["items"] = json!(uri);
            taskrun["iteration"] = json!(iteration);
        }
        let mut inputs = Map::new();
        for (k, v) in task.inputs.iter().flatten() {
            let rendered = self
                .expr
                .render_value(v, &ctx, true)
                .map_err(|e| format!("input '{k}': {e}"))?;
            inputs.insert(k.clone(), rendered);
        }
        let task_labels = match task.labels {
            None => Vec::new(),
            Some(l) => {
                let rendered = self
                    .expr
                    .render_value(l, &ctx, true)
                    .map_err(|e| format!("labels: {e}"))?;
                labels_of(&rendered)?
            }
        };
        let schedule_date = match task.schedule_date {
            None => None,
            Some(s) => {
                let s = self.render_str(run_id, s)?;
                Some(
                    DateTime::parse_from_rfc3339(s.trim())
                        .map_err(|e| format!("invalid scheduleDate '{s}': {e}"))?
                        .with_timezone(&Utc),
                )
            }
        };
        let child_id = match batch {
            // A retried Subflow task starts one child per attempt.
            None if !run.attempts.is_empty() => task_run_id(
                &self.exec.id,
                Some(run_id),
                "\u{0}subflow",
                Some(&format!("attempt-{}", run.attempts.len() + 1)),
            ),
            None => task_run_id(&self.exec.id, Some(run_id), "\u{0}subflow", None),
            Some((iteration, _)) => task_run_id(
                &self.exec.id,
                Some(run_id),
                "\u{0}foreachitem",
                Some(&iteration.to_string()),
            ),
        };
        let mut child = Execution::new(namespace, flow_id, revision.unwrap_or(0));
        child.id = child_id;
        child.tenant_id = self.exec.tenant_id.clone();
        child.state = State::new_at(StateType::Created, self.now);
        child.metadata.original_created_date = self.now;
        child.parent_id = Some(self.exec.id.clone());
        child.schedule_date = schedule_date;
        child.kind = self.exec.kind;
        child.labels = self
            .exec
            .labels
            .iter()
            .filter(|l| inherit || l.key.starts_with("system."))
            .filter(|l| {
                l.key != system_labels::RESTARTED
                    && l.key != system_labels::REPLAY
                    && l.key != system_labels::REPLAYED
            })
            .cloned()
            .collect();
        if child.label(system_labels::CORRELATION_ID).is_none() {
            child.labels.push(Label::new(
                system_labels::CORRELATION_ID,
                self.exec.id.clone(),
            ));
        }
        let mut variables = Map::new();
        variables.insert("executionId".into(), json!(self.exec.id));
        variables.insert("namespace".into(), json!(self.exec.namespace));
        variables.insert("flowId".into(), json!(self.exec.flow_id));
        variables.insert("flowRevision".into(), json!(self.exec.flow_revision));
        variables.insert("taskRunId".into(), json!(run.id));
        variables.insert("taskId".into(), json!(run.task_id));
        if let Some(v) = &run.value {
            variables.insert("taskRunValue".into(), json!(v));
        }
        let iteration = batch.map(|(i, _)| i).or(run.iteration);
        if let Some(i) = iteration {
            variables.insert("taskRunIteration".into(), json!(i));
        }
        variables.insert("subflowDepth".into(), json!(child_depth));
        if let Some(outputs) = task.outputs {
            variables.insert(SUBFLOW_OUTPUTS_VARIABLE.into(), json!(outputs));
        }
        let trigger_type = if batch.is_some() {
            fei::ITEMS_TYPE
        } else {
            SUBFLOW_TRIGGER_TYPE
        };
        child.trigger = Some(ExecutionTrigger {
            id: run.task_id.clone(),
            type_: trigger_type.into(),
            variables,
        });
        Ok(SubflowRequest {
            execution: child,
            revision,
            inputs,
            task_labels,
            parent_task_run_id: run_id.to_string(),
        })
    }

    pub(super) fn apply_subflow_result(&mut self, r: &SubflowExecutionResult) {
        let Some(run) = lookup::task_run(&self.exec, &self.runs, &r.parent_task_run_id) else {
            self.ignored = Some(format!(
                "subflow result for unknown task run {}",
                r.parent_task_run_id
            ));
            return;
        };
        if super::for_each_item::is_batches_task(self.index, &run.task_id) {
            self.apply_batch_result(r);
            return;
        }
        let known = run
            .outputs
            .as_ref()
            .and_then(|o| o.get("executionId"))
            .and_then(Value::as_str)
            == Some(r.child_execution_id.as_str());
        if run.state.is_terminated() || !known {
            self.ignored = Some(format!(
                "stale subflow result for task run {} (child {})",
                r.parent_task_run_id, r.child_execution_id
            ));
            return;
        }
        let wait = match self.index.node(&run.task_id).map(|n| &n.kind) {
            Some(NodeKind::Flowable(f)) => match &**f {
                Flowable::Subflow(t) => t.wait.clone(),
                _ => None,
            },
            _ => None,
        };
        let run_id = r.parent_task_run_id.clone();
        let wait = self.bool_prop(&run_id, &wait, true).unwrap_or(true);
        if let Some(tr) = lookup::task_run_mut(&mut self.exec, &self.runs, &run_id) {
            let mut o = tr.outputs.clone().unwrap_or_default();
            o.insert("state".into(), json!(r.state.as_str()));
            if wait {
                o.insert("outputs".into(), Value::Object(r.outputs.clone()));
            }
            if let Some(e) = &r.error {
                o.insert("error".into(), json!(e));
            }
            tr.outputs = Some(o);
        }
        self.touch();
    }
}

fn labels_of(v: &Value) -> Result<Vec<Label>, String> {
    match v {
        Value::Object(m) => Ok(m
            .iter()
            .map(|(k, v)| Label::new(k.clone(), value_to_string(v)))
            .collect()),
        Value::Array(a) => a
            .iter()
            .map(|l| {
                let k = l
                    .get("key")
                    .map(value_to_string)
                    .ok_or("label without 'key'")?;
                let v = l
                    .get("value")
                    .map(value_to_string)
                    .ok_or("label without 'value'")?;
                Ok(Label::new(k, v))
            })
            .collect(),
        Value::Null => Ok(Vec::new()),
        other => Err(format!(
            "labels must be a map or a list of {{key, value}}, not {other}"
        )),
    }
}
