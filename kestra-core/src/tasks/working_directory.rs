//! flow.WorkingDirectory, run entirely on the worker: its children (`tasks`, then `errors` when
//! one of them failed, then `finally`) run one after the other in ONE directory, each as a child
//! [`TaskRun`] (parent = the WorkingDirectory's task run, same loop `value`) returned in
//! `child_task_runs` with its state, attempt and outputs.
//!
//! - `disabled` children create no task run; `runIf` false-ish gives SKIPPED; `allowFailure` /
//!   `allowWarning` turn a child's FAILED into WARNING and WARNING into SUCCESS; each child's
//!   `timeout` applies to it.
//! - Each child renders with the WorkingDirectory's variables plus the outputs and states of the
//!   children before it (`outputs.<id>`, `tasks.<id>.state`, keyed by loop values like the
//!   executor does), its own `task`/`taskrun`/`parent`/`parents`, `workingDir`, and
//!   `workerTaskrun` (the WorkingDirectory's `taskrun`). `parent` is the WorkingDirectory's entry,
//!   `{"taskrun": {"value": <its loop value>}}`, as Kestra renders it.
//! - The WorkingDirectory's state is the worst of its main children's (KILLED > FAILED > WARNING >
//!   SUCCESS); `errors` and `finally` never change it. `inputFiles` are written before the first
//!   child; `outputFiles` are collected after the last (output `outputFiles`).
//! - Children must be runnable tasks: a flowable child fails with a message.

use async_trait::async_trait;
use chrono::Utc;
use serde_json::{Map, Value, json};

use crate::flow::model::Task;
use crate::flow::tasks::WorkingDirectory;
use crate::model::{State, StateType, TaskRun, TaskRunAttempt};
use crate::worker::attempt::{AttemptEnd, CANCEL_GRACE, run_attempt};
use crate::worker::context::{RunContext, set_variable};
use crate::worker::files::{collect_output_files, write_input_files};
use crate::worker::runner::{RunnableTask, TaskError, TaskOutput};

fn severity(state: StateType) -> u8 {
    match state {
        StateType::Killed => 4,
        StateType::Failed => 3,
        StateType::Warning => 2,
        _ => 1,
    }
}

/// The loop values of the WorkingDirectory's children, outermost first (as the executor keys
/// outputs): the task run's value and its parents' values, consecutive repeats removed.
fn loop_keys(variables: &Value) -> Vec<String> {
    let mut values: Vec<String> = Vec::new();
    if let Some(v) = variables.pointer("/taskrun/value").and_then(Value::as_str) {
        values.push(v.to_string());
    }
    if let Some(Value::Array(parents)) = variables.get("parents") {
        for p in parents {
            if let Some(v) = p.pointer("/taskrun/value").and_then(Value::as_str) {
                values.push(v.to_string());
            }
        }
    }
    values.reverse();
    values.dedup();
    values
}

fn insert_nested(target: &mut Map<String, Value>, id: &str, keys: &[String], leaf: Value) {
    let mut cur = target
        .entry(id.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    if keys.is_empty() {
        *cur = leaf;
        return;
    }
    for k in keys {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        let Value::Object(m) = cur else { return };
        cur = m
            .entry(k.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    *cur = leaf;
}

/// Runs the children and keeps the variables they add.
struct Children<'a> {
    parent: &'a RunContext,
    variables: Value,
    keys: Vec<String>,
    runs: Vec<TaskRun>,
}

impl Children<'_> {
    fn record(&mut self, run: &TaskRun) {
        let keys = self.keys.clone();
        for (name, leaf) in [
            ("outputs", run.outputs.clone().map(Value::Object)),
            (
                "tasks",
                Some(json!({"state": run.state.current().as_str()})),
            ),
        ] {
            let Some(leaf) = leaf else { continue };
            let mut map = match self.variables.get(name) {
                Some(Value::Object(m)) => m.clone(),
                _ => Map::new(),
            };
            insert_nested(&mut map, &run.task_id, &keys, leaf);
            set_variable(&mut self.variables, name, Value::Object(map));
        }
    }

    /// Runs one child; `None` for a disabled child, else its task run's final state.
    async fn run(&mut self, task: &Task) -> Option<StateType> {
        if task.disabled {
            return None;
        }
        let parent_run = self.parent.task_run();
        let now = Utc::now();
        let mut run = TaskRun {
            id: crate::model::new_id(),
            tenant_id: parent_run.tenant_id.clone(),
            execution_id: parent_run.execution_id.clone(),
            namespace: parent_run.namespace.clone(),
            flow_id: parent_run.flow_id.clone(),
            task_id: task.id.clone(),
            parent_task_run_id: Some(parent_run.id.clone()),
            value: parent_run.value.clone(),
            iteration: None,
            attempts: Vec::new(),
            outputs: None,
            state: State::new_at(StateType::Created, now),
            dynamic: false,
        };
        let mut variables = self.variables.clone();
        let mut taskrun =
            json!({"id": run.id, "startDate": now, "attemptsCount": 0, "parentId": parent_run.id});
        if let Some(v) = &run.value {
            taskrun["value"] = json!(v);
        }
        set_variable(
            &mut variables,
            "task",
            json!({"id": task.id, "type": task.task_type}),
        );
        set_variable(&mut variables, "taskrun", taskrun);
        // Kestra's parent entry: `{"taskrun": {"value": ...}}` (the WorkingDirectory's loop
        // value), its outputs only once it has some (never while its children run).
        let mut parent_entry = json!({"taskrun": {}});
        if let Some(v) = &parent_run.value {
            parent_entry["taskrun"]["value"] = json!(v);
        }
        // `workerTaskrun`: the WorkingDirectory's own `taskrun` (Kestra's
        // `RunContextInitializer.forWorkingDirectory`).
        if let Some(worker_taskrun) = self.parent.variables().get("taskrun") {
            set_variable(&mut variables, "workerTaskrun", worker_taskrun.clone());
        }
        let mut parents = vec![parent_entry.clone()];
        if let Some(Value::Array(more)) = self.parent.variables().get("parents") {
            parents.extend(more.iter().cloned());
        }
        set_variable(&mut variables, "parent", parent_entry);
        set_variable(&mut variables, "parents", Value::Array(parents));

        let ctx = self.parent.child(task.clone(), run.clone(), variables);
        let logger = ctx.logger().clone();

        if let Some(condition) = &task.run_if {
            match ctx.evaluate_condition(condition) {
                Ok(true) => {}
                Ok(false) => {
                    let _ = run.state.transition(StateType::Skipped);
                    self.record(&run);
                    self.runs.push(run);
                    return Some(StateType::Skipped);
                }
                Err(e) => {
                    logger.error(format!("cannot evaluate runIf: {e}"));
                    let _ = run.state.transition(StateType::Failed);
                    self.record(&run);
                    self.runs.push(run);
                    return Some(StateType::Failed);
                }
            }
        }

        let _ = run.state.transition(StateType::Running);
        let mut attempt_state = State::new_at(StateType::Running, Utc::now());
        let runners = self.parent.runners().clone();
        let end = match runners.build(task, self.parent.task_registry()) {
            Ok(runnable) => run_attempt(runnable, ctx, task.timeout.as_ref(), CANCEL_GRACE).await,
            Err(e) => AttemptEnd::Errored(TaskError::Failed(format!(
                "{e} (only runnable tasks can run inside a WorkingDirectory)"
            ))),
        };
        let result = end.into_result(&logger);
        let _ = attempt_state.transition(result.state);
        let mut state = result.state;
        if state == StateType::Failed && task.allow_failure {
            state = StateType::Warning;
        }
        if state == StateType::Warning && task.allow_warning {
            state = StateType::Success;
        }
        run.attempts.push(TaskRunAttempt {
            state: attempt_state,
            log_file: None,
            worker_id: self.parent.worker_id().map(str::to_string),
        });
        run.outputs = result.outputs;
        let _ = run.state.transition(state);
        self.record(&run);
        self.runs.push(run);
        self.runs.extend(result.child_task_runs);
        Some(state)
    }
}

#[async_trait]
impl RunnableTask for WorkingDirectory {
    async fn run(&self, ctx: &mut RunContext) -> Result<TaskOutput, TaskError> {
        let dir = ctx.working_dir()?;
        if let Some(files) = &self.input_files {
            write_input_files(ctx, &dir, files).await?;
        }
        if self.namespace_files.is_some() {
            ctx.logger()
                .warn("namespaceFiles are not supported by this worker and were not copied");
        }
        if self.cache.is_some() {
            ctx.logger().warn(
                "the WorkingDirectory cache is not supported by this worker; running without it",
            );
        }
        let output_patterns = ctx
            .render_opt_property("outputFiles", &self.output_files)?
            .unwrap_or_default();
        let cancel = ctx.cancellation().clone();
        let mut children = Children {
            parent: ctx,
            variables: ctx.variables().clone(),
            keys: loop_keys(ctx.variables()),
            runs: Vec::new(),
        };
        let mut state = StateType::Success;
        let mut failed = false;
        for task in &self.tasks {
            if cancel.is_cancelled() {
                break;
            }
            let Some(child_state) = children.run(task).await else {
                continue;
            };
            if severity(child_state) > severity(state) {
                state = child_state;
            }
            if matches!(child_state, StateType::Failed | StateType::Killed) {
                failed = true;
                break;
            }
        }
        if cancel.is_cancelled() {
            return Err(TaskError::Cancelled);
        }
        if failed {
            for task in &self.errors {
                if cancel.is_cancelled() {
                    break;
                }
                children.run(task).await;
            }
        }
        for task in &self.finally {
            if cancel.is_cancelled() {
                break;
            }
            children.run(task).await;
        }
        let runs = std::mem::take(&mut children.runs);
        let mut outputs = Map::new();
        if self.output_files.is_some() {
            let files = collect_output_files(ctx, &dir, &output_patterns).await?;
            outputs.insert("outputFiles".into(), Value::Object(files));
        }
        Ok(TaskOutput {
            state: Some(state),
            outputs,
            child_task_runs: runs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loop_keys_follow_the_executor() {
        let vars = json!({
            "taskrun": {"value": "b"},
            "parents": [{"taskrun": {"value": "b"}}, {"taskrun": {"value": "a"}}, {"taskrun": {}}],
        });
        assert_eq!(loop_keys(&vars), vec!["a".to_string(), "b".to_string()]);
        let mut m = Map::new();
        insert_nested(&mut m, "t", &["a".into(), "b".into()], json!({"x": 1}));
        assert_eq!(Value::Object(m), json!({"t": {"a": {"b": {"x": 1}}}}));
    }
}
