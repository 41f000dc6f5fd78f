//! ForEachItem in the walk (the contract is in `executor::for_each_item`): the ForEachItem task
//! run runs `<id>_split`, `<id>_items`, `<id>_merge` in sequence and then takes their outputs;
//! `<id>_items` requests one child execution per batch on its first visit, records each child's
//! result by iteration, and ends once all have ended (or at once without `wait`). Killing the
//! parent kills the children that have not ended.

use super::subflow::ChildSpec;
use super::*;
use crate::executor::for_each_item::{
    self as fei, BATCH_OUTPUTS, BATCH_STATES, batch_uri, final_state, iteration_counts,
    state_letter,
};
use crate::flow::tasks;
use crate::messages::SubflowExecutionResult;

impl Run<'_> {
    /// The ForEachItem task run itself: its internal tasks in sequence, then its outputs.
    pub(super) fn walk_for_each_item(
        &mut self,
        run_id: &str,
        value: Option<&str>,
        group: &Group,
    ) -> Status {
        let status = self.walk_group(Some(run_id), value, group, Mode::Sequential);
        if let Status::Done(_) = status {
            let mut outputs = Map::new();
            let items = group
                .tasks
                .get(1)
                .and_then(|t| self.find_run(t, Some(run_id), value));
            if let Some(o) = items.and_then(|r| r.outputs.as_ref()) {
                for key in ["numberOfBatches", "iterations"] {
                    if let Some(v) = o.get(key) {
                        outputs.insert(key.into(), v.clone());
                    }
                }
            }
            let merge = group
                .tasks
                .get(2)
                .and_then(|t| self.find_run(t, Some(run_id), value));
            if let Some(uri) = merge
                .and_then(|r| r.outputs.as_ref())
                .and_then(|o| o.get("subflowOutputs"))
            {
                outputs.insert("uri".into(), uri.clone());
            }
            let changed = lookup::task_run(&self.exec, &self.runs, run_id)
                .is_some_and(|r| r.outputs.as_ref() != Some(&outputs));
            if changed && !outputs.is_empty() {
                if let Some(r) = lookup::task_run_mut(&mut self.exec, &self.runs, run_id) {
                    r.outputs = Some(outputs);
                }
                self.touch();
            }
        }
        status
    }

    /// The `_split` sibling of an `_items` (or `_merge`) task run.
    fn sibling(&self, run_id: &str, suffix: &str, own_suffix: &str) -> Option<&TaskRun> {
        let run = lookup::task_run(&self.exec, &self.runs, run_id)?;
        let base = run.task_id.strip_suffix(own_suffix)?;
        let task_id = format!("{base}{suffix}");
        self.exec.task_run_list.iter().find(|r| {
            r.task_id == task_id
                && r.parent_task_run_id == run.parent_task_run_id
                && r.value == run.value
                && r.iteration == run.iteration
        })
    }

    /// The id of the child execution of batch `iteration` of an `_items` task run, created
    /// during execution attempt `attempt` (1 for the first creation; later ones are NEW_EXECUTION
    /// restarts).
    fn batch_child_id(&self, run_id: &str, iteration: u32, attempt: u32) -> String {
        let value = if attempt <= 1 {
            iteration.to_string()
        } else {
            format!("{iteration}\u{1}{attempt}")
        };
        task_run_id(
            &self.exec.id,
            Some(run_id),
            "\u{0}foreachitem",
            Some(&value),
        )
    }

    /// Every id the child of batch `iteration` may have (one per execution attempt so far).
    fn batch_child_ids(&self, run_id: &str, iteration: u32) -> Vec<String> {
        (1..=self.exec.metadata.attempt_number.max(1))
            .map(|a| self.batch_child_id(run_id, iteration, a))
            .collect()
    }

    /// `<id>_items`: one child execution per batch.
    pub(super) fn walk_for_each_item_batches(
        &mut self,
        run_id: &str,
        task: &tasks::ForEachItem,
    ) -> Status {
        // Only the batch states are read (the collected outputs can be large).
        let requested = lookup::task_run(&self.exec, &self.runs, run_id)
            .and_then(|r| r.outputs.as_ref())
            .filter(|o| o.contains_key("numberOfBatches"))
            .map(|o| {
                o.get(BATCH_STATES)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            });
        let transmit_failed = match self.bool_prop(run_id, &task.transmit_failed, true) {
            Ok(b) => b,
            Err(e) => return self.fail_run(run_id, format!("invalid transmitFailed: {e}")),
        };
        if let Some(states) = requested {
            // Children requested: waiting for their results.
            if self.killing() {
                for (i, s) in fei::batch_states(&states).enumerate() {
                    if !s.is_terminated() {
                        // Killing an execution that does not exist or has ended is a no-op.
                        let children = self.batch_child_ids(run_id, i as u32);
                        self.kill_executions.extend(children);
                    }
                }
                return Status::Done(StateType::Killed);
            }
            if fei::batch_states(&states).all(|s| s.is_terminated()) {
                return Status::Done(final_state(&states, transmit_failed));
            }
            return Status::Running;
        }
        if self.killing() {
            return Status::Done(StateType::Killed);
        }
        let split = self
            .sibling(run_id, fei::SPLIT_SUFFIX, fei::ITEMS_SUFFIX)
            .and_then(|r| r.outputs.clone())
            .unwrap_or_default();
        let count = split.get("numberOfBatches").and_then(Value::as_u64);
        let prefix = split.get("batchUriPrefix").and_then(Value::as_str);
        let suffix = split
            .get("batchUriSuffix")
            .and_then(Value::as_str)
            .unwrap_or("");
        let (count, prefix) = match (count, prefix) {
            (Some(0), _) => (0, ""),
            (Some(c), Some(p)) => match u32::try_from(c) {
                Ok(c) => (c, p),
                Err(_) => return self.fail_run(run_id, format!("too many batches ({c})")),
            },
            _ => {
                return self.fail_run(
                    run_id,
                    "the split task gave no batches (outputs numberOfBatches / batchUriPrefix missing)"
                        .into(),
                );
            }
        };
        let wait = match self.bool_prop(run_id, &task.wait, true) {
            Ok(b) => b,
            Err(e) => return self.fail_run(run_id, format!("invalid wait: {e}")),
        };
        let spec = ChildSpec {
            namespace: &task.namespace,
            flow_id: &task.flow_id,
            revision: &task.revision,
            inputs: &task.inputs,
            labels: &task.labels,
            inherit_labels: &task.inherit_labels,
            schedule_date: &task.schedule_date,
            outputs: None,
        };
        let mut requests = Vec::with_capacity(count as usize);
        for iteration in 0..count {
            let uri = batch_uri(prefix, iteration, suffix);
            match self.child_request(run_id, &spec, Some((iteration, &uri))) {
                Ok(r) => requests.push(r),
                Err(e) => return self.fail_run(run_id, format!("batch {iteration}: {e}")),
            }
        }
        self.subflow_requests.extend(requests);
        let states: String = std::iter::repeat_n('C', count as usize).collect();
        let mut o = Map::new();
        o.insert("numberOfBatches".into(), json!(count));
        o.insert(
            "iterations".into(),
            Value::Object(iteration_counts(&states)),
        );
        if wait {
            o.insert(BATCH_STATES.into(), json!(states));
            o.insert(BATCH_OUTPUTS.into(), Value::Object(Map::new()));
        }
        if let Some(r) = lookup::task_run_mut(&mut self.exec, &self.runs, run_id) {
            r.outputs = Some(o);
        }
        self.touch();
        if wait && count > 0 {
            Status::Running
        } else {
            Status::Done(StateType::Success)
        }
    }

    /// A child of an `_items` task run ended (or could not be created): record its state and
    /// outputs once.
    pub(super) fn apply_batch_result(&mut self, r: &SubflowExecutionResult) {
        let run_id = r.parent_task_run_id.clone();
        let Some(run) = lookup::task_run(&self.exec, &self.runs, &run_id) else {
            return;
        };
        let terminated = run.state.is_terminated();
        let states = run
            .outputs
            .as_ref()
            .and_then(|o| o.get(BATCH_STATES))
            .and_then(Value::as_str)
            .map(str::to_string);
        let known = r.iteration.is_some_and(|i| {
            self.batch_child_ids(&run_id, i)
                .contains(&r.child_execution_id)
        });
        let (Some(mut states), Some(index), true) =
            (states, r.iteration.map(|i| i as usize), known)
        else {
            self.ignored = Some(format!(
                "stale ForEachItem result for task run {run_id} (child {})",
                r.child_execution_id
            ));
            return;
        };
        if terminated || states.chars().nth(index).is_none_or(|c| c != 'C') {
            self.ignored = Some(format!(
                "duplicate ForEachItem result for task run {run_id} (child {})",
                r.child_execution_id
            ));
            return;
        }
        let letter = match state_letter(r.state) {
            _ if r.error.is_some() => fei::NOT_CREATED,
            // A non-terminal result cannot happen, but must not leave the batch pending forever.
            'C' => 'F',
            letter => letter,
        };
        states.replace_range(index..index + 1, &letter.to_string());
        if let Some(error) = &r.error {
            let run = lookup::task_run(&self.exec, &self.runs, &run_id).cloned();
            self.log(
                run.as_ref(),
                Level::Error,
                format!("batch {index}: subflow execution not created: {error}"),
            );
        }
        // Updated in place: the collected outputs can be large.
        if let Some(outputs) = lookup::task_run_mut(&mut self.exec, &self.runs, &run_id)
            .and_then(|tr| tr.outputs.as_mut())
        {
            if !r.outputs.is_empty()
                && let Some(Value::Object(all)) = outputs.get_mut(BATCH_OUTPUTS)
            {
                all.insert(index.to_string(), Value::Object(r.outputs.clone()));
            }
            outputs.insert(
                "iterations".into(),
                Value::Object(iteration_counts(&states)),
            );
            outputs.insert(BATCH_STATES.into(), json!(states));
        }
        self.touch();
    }

    /// A restarted `_items` task run: its failed batches run again (see `executor::for_each_item`).
    pub(super) fn restart_batches(&mut self, run_id: &str) {
        let Some(run) = lookup::task_run(&self.exec, &self.runs, run_id) else {
            return;
        };
        let spec = match self.index.node(&run.task_id).map(|n| &n.kind) {
            Some(NodeKind::Flowable(f)) => match &**f {
                Flowable::ForEachItemBatches(spec) => spec.clone(),
                _ => return,
            },
            _ => return,
        };
        let Some(states) = run
            .outputs
            .as_ref()
            .and_then(|o| o.get(BATCH_STATES))
            .and_then(Value::as_str)
            .map(str::to_string)
        else {
            return;
        };
        let new_execution = spec.restart_behavior == Some(tasks::RestartBehavior::NewExecution);
        let attempt = self.exec.metadata.attempt_number;
        let (prefix, suffix) = {
            let split = self
                .sibling(run_id, fei::SPLIT_SUFFIX, fei::ITEMS_SUFFIX)
                .and_then(|r| r.outputs.as_ref());
            let get = |k: &str| {
                split
                    .and_then(|o| o.get(k))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            (get("batchUriPrefix"), get("batchUriSuffix"))
        };
        let child_spec = ChildSpec {
            namespace: &spec.namespace,
            flow_id: &spec.flow_id,
            revision: &spec.revision,
            inputs: &spec.inputs,
            labels: &spec.labels,
            inherit_labels: &spec.inherit_labels,
            schedule_date: &spec.schedule_date,
            outputs: None,
        };
        let mut next = String::with_capacity(states.len());
        for (i, c) in states.chars().enumerate() {
            let iteration = i as u32;
            match c {
                'F' | 'K' if !new_execution => {
                    self.restart_executions
                        .push(self.batch_child_id(run_id, iteration, 1));
                    next.push('C');
                }
                'F' | 'K' | 'X' | fei::NOT_CREATED => {
                    let uri = batch_uri(&prefix, iteration, &suffix);
                    match self.child_request(run_id, &child_spec, Some((iteration, &uri))) {
                        Ok(mut request) => {
                            // A new id, except for a batch whose child was never created
                            // under RETRY_FAILED (only first-attempt ids are used then).
                            if new_execution || c != fei::NOT_CREATED {
                                request.execution.id =
                                    self.batch_child_id(run_id, iteration, attempt);
                            }
                            self.subflow_requests.push(request);
                            next.push('C');
                        }
                        Err(e) => {
                            let run = lookup::task_run(&self.exec, &self.runs, run_id).cloned();
                            self.log(run.as_ref(), Level::Error, format!("batch {i}: {e}"));
                            next.push(c);
                        }
                    }
                }
                other => next.push(other),
            }
        }
        if let Some(outputs) = lookup::task_run_mut(&mut self.exec, &self.runs, run_id)
            .and_then(|tr| tr.outputs.as_mut())
        {
            outputs.insert("iterations".into(), Value::Object(iteration_counts(&next)));
            outputs.insert(BATCH_STATES.into(), json!(next));
        }
        self.touch();
    }

    /// The merge job's extra property: the children's outputs collected by `_items`.
    pub(super) fn merge_job_outputs(&self, run_id: &str) -> Value {
        self.sibling(run_id, fei::ITEMS_SUFFIX, fei::MERGE_SUFFIX)
            .and_then(|r| r.outputs.as_ref())
            .and_then(|o| o.get(BATCH_OUTPUTS))
            .cloned()
            .unwrap_or_else(|| Value::Object(Map::new()))
    }
}

/// Whether `task_id` is an `_items` task (its subflow results are per batch).
pub(super) fn is_batches_task(index: &FlowIndex, task_id: &str) -> bool {
    matches!(
        index.node(task_id).map(|n| &n.kind),
        Some(NodeKind::Flowable(f)) if matches!(**f, Flowable::ForEachItemBatches(_))
    )
}
