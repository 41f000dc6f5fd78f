//! The Pause task: its task run goes PAUSED (and the execution PAUSED) until a
//! [`ExecutionCommand::Resume`] or, when it has a `pauseDuration` (alias `delay`; the legacy
//! `timeout` acts as a duration with behavior FAIL), until the [`ExecutionCommand::PauseElapsed`]
//! timer applies `behavior`: RESUME (SUCCESS), WARN (WARNING), FAIL (FAILED) or CANCEL (the
//! execution ends CANCELLED). A resume checks the values against the `onResume` inputs and exposes
//! them as output `onResume`. A timer that fires after a resume is ignored. Deprecated `tasks`
//! run after the pause.

use serde::de::DeserializeOwned;

use super::*;
use crate::executor::index::PauseSpec;
use crate::flow::tasks::PauseBehavior;
use crate::inputs::{RawInput, parse_input_value};

impl Run<'_> {
    /// Render a typed property in the context of a task run.
    pub(super) fn render_prop<T: DeserializeOwned + Clone>(
        &mut self,
        run_id: &str,
        p: &Property<T>,
    ) -> Result<T, String> {
        match p {
            Property::Value(v) => Ok(v.clone()),
            Property::Expression(e) => {
                let ctx = self.context_for(run_id);
                let v = self.expr.render_typed(e, &ctx).map_err(|e| e.to_string())?;
                match serde_json::from_value::<T>(v.clone()) {
                    Ok(t) => Ok(t),
                    Err(err) => match &v {
                        Value::String(s) => {
                            serde_json::from_value::<T>(Value::String(s.trim().to_string()))
                                .or_else(|_| serde_json::from_str::<T>(s.trim()))
                                .map_err(|_| format!("'{s}': {err}"))
                        }
                        other => serde_json::from_value::<T>(Value::String(value_to_string(other)))
                            .map_err(|_| format!("'{other}': {err}")),
                    },
                }
            }
        }
    }

    fn paused_runs(&self) -> Vec<String> {
        self.exec
            .task_run_list
            .iter()
            .filter(|r| r.current() == StateType::Paused)
            .map(|r| r.id.clone())
            .collect()
    }

    fn unpause_execution(&mut self) {
        if self.exec.current() == StateType::Paused && self.paused_runs().is_empty() {
            self.set_exec_state(StateType::Running);
        }
    }

    pub(super) fn walk_pause(
        &mut self,
        run_id: &str,
        value: Option<&str>,
        spec: &PauseSpec,
        group: &Group,
    ) -> Status {
        let already_paused = lookup::task_run(&self.exec, &self.runs, run_id).is_some_and(|r| {
            r.state
                .histories()
                .iter()
                .any(|h| h.state == StateType::Paused)
        });
        if !already_paused {
            let duration = match &spec.duration {
                None => None,
                Some(p) => match self.render_prop(run_id, p) {
                    Ok(d) => Some(d),
                    Err(e) => return self.fail_run(run_id, format!("invalid pauseDuration: {e}")),
                },
            };
            if let Some(b) = &spec.behavior
                && let Err(e) = self.render_prop(run_id, b)
            {
                return self.fail_run(run_id, format!("invalid behavior: {e}"));
            }
            self.set_run_state(run_id, StateType::Paused);
            if self.exec.current() == StateType::Running {
                self.set_exec_state(StateType::Paused);
            }
            if let Some(d) = duration {
                let d = chrono::Duration::from_std(d.duration()).unwrap_or(chrono::Duration::MAX);
                self.delays.push(Delay {
                    at: self
                        .now
                        .checked_add_signed(d)
                        .unwrap_or(DateTime::<Utc>::MAX_UTC),
                    command: ExecutionCommand::PauseElapsed {
                        execution_id: self.exec.id.clone(),
                        task_run_id: run_id.to_string(),
                    },
                });
            }
            return Status::Running;
        }
        if group.tasks.is_empty() {
            return Status::Done(StateType::Success);
        }
        self.walk_group(Some(run_id), value, group, Mode::Sequential)
    }

    fn pause_spec(&self, run_id: &str) -> Option<PauseSpec> {
        let run = lookup::task_run(&self.exec, &self.runs, run_id)?;
        match &self.index.node(&run.task_id)?.kind {
            NodeKind::Flowable(f) => match &**f {
                Flowable::Pause { spec, .. } => Some(spec.clone()),
                _ => None,
            },
            _ => None,
        }
    }

    pub(super) fn resume(&mut self, task_run_id: Option<&str>, inputs: &Map<String, Value>) {
        let targets: Vec<String> = match task_run_id {
            Some(id) => vec![id.to_string()],
            None => self.paused_runs(),
        };
        let targets: Vec<String> = targets
            .into_iter()
            .filter(|id| {
                lookup::task_run(&self.exec, &self.runs, id)
                    .is_some_and(|r| r.current() == StateType::Paused)
                    && self.pause_spec(id).is_some()
            })
            .collect();
        if targets.is_empty() || self.killing() || self.exec.state.is_terminated() {
            self.ignored = Some("resume: no paused task run".into());
            return;
        }
        for id in targets {
            let Some(spec) = self.pause_spec(&id) else {
                continue;
            };
            let mut values = Map::new();
            let mut errors = Vec::new();
            for input in &spec.on_resume {
                let raw = inputs
                    .get(&input.id)
                    .cloned()
                    .or_else(|| input.defaults.clone())
                    .unwrap_or(Value::Null);
                match parse_input_value(input, RawInput::Json(raw)) {
                    Ok(v) => {
                        values.insert(input.id.clone(), v);
                    }
                    Err(e) => errors.push(e.to_string()),
                }
            }
            if !errors.is_empty() {
                let run = lookup::task_run(&self.exec, &self.runs, &id).cloned();
                let message = format!("resume refused: {}", errors.join("; "));
                self.log(run.as_ref(), Level::Error, message.clone());
                self.ignored = Some(message);
                continue;
            }
            if !spec.on_resume.is_empty()
                && let Some(r) = lookup::task_run_mut(&mut self.exec, &self.runs, &id)
            {
                let mut outputs = r.outputs.clone().unwrap_or_default();
                outputs.insert("onResume".into(), Value::Object(values));
                r.outputs = Some(outputs);
            }
            self.set_run_state(&id, StateType::Running);
        }
        self.unpause_execution();
    }

    pub(super) fn pause_elapsed(&mut self, task_run_id: &str) {
        let paused = lookup::task_run(&self.exec, &self.runs, task_run_id)
            .is_some_and(|r| r.current() == StateType::Paused);
        let Some(spec) = self.pause_spec(task_run_id).filter(|_| paused) else {
            self.ignored = Some(format!("stale pause timer for task run {task_run_id}"));
            return;
        };
        if self.killing() || self.exec.state.is_terminated() {
            self.ignored = Some("pause timer: execution is ending".into());
            return;
        }
        let default = if spec.from_timeout {
            PauseBehavior::Fail
        } else {
            PauseBehavior::Resume
        };
        let behavior = match &spec.behavior {
            None => default,
            Some(b) => self.render_prop(task_run_id, b).unwrap_or(default),
        };
        match behavior {
            PauseBehavior::Resume => self.set_run_state(task_run_id, StateType::Running),
            // As Kestra's ExecutionService.markAs: the Pause goes from PAUSED straight to the
            // behavior's state, with no RUNNING in between.
            PauseBehavior::Warn => self.set_run_state(task_run_id, StateType::Warning),
            PauseBehavior::Fail => {
                let run = lookup::task_run(&self.exec, &self.runs, task_run_id).cloned();
                self.log(
                    run.as_ref(),
                    Level::Error,
                    "pause duration elapsed (behavior FAIL)".into(),
                );
                self.set_run_state(task_run_id, StateType::Failed);
            }
            PauseBehavior::Cancel => {
                self.set_run_state(task_run_id, StateType::Running);
                self.exit_execution(task_run_id, StateType::Cancelled);
            }
        }
        self.unpause_execution();
    }
}
