//! Replay: a new execution that starts again from a chosen task run of an existing one.
//!
//! The new execution keeps the task runs created before the chosen one (with their states and
//! outputs), drops the chosen task run and everything created after it, and puts the chosen run's
//! ancestors back to RUNNING so that the executor continues from there. It is labelled
//! `system.replay` (the original id) and `originalId` points to the original.

use chrono::Utc;

use crate::model::execution::system_labels;
use crate::model::{Execution, Label, State, StateType, new_id};

/// Build the replay execution, or `None` if the task run is not in `original`.
pub fn replay_execution(original: &Execution, task_run_id: &str) -> Option<Execution> {
    let position = original
        .task_run_list
        .iter()
        .position(|r| r.id == task_run_id)?;
    let mut ancestors = Vec::new();
    let mut cur = original.task_run_list[position].parent_task_run_id.clone();
    while let Some(id) = cur {
        cur = original
            .task_run(&id)
            .and_then(|r| r.parent_task_run_id.clone());
        ancestors.push(id);
    }
    let now = Utc::now();
    let mut replay = original.clone();
    replay.id = new_id();
    replay.original_id = Some(
        original
            .original_id
            .clone()
            .unwrap_or_else(|| original.id.clone()),
    );
    replay.state = State::new_at(StateType::Created, now);
    replay.outputs.clear();
    replay.metadata.attempt_number = 1;
    replay.metadata.original_created_date = now;
    replay.metadata.version = 0;
    replay.task_run_list = original.task_run_list[..position]
        .iter()
        .cloned()
        .map(|mut r| {
            r.execution_id = replay.id.clone();
            if ancestors.contains(&r.id) && r.state.is_terminated() {
                let _ = r.state.transition_at(StateType::Restarted, now);
                let _ = r.state.transition_at(StateType::Running, now);
            }
            r
        })
        .collect();
    for l in &mut replay.labels {
        if l.key == system_labels::CORRELATION_ID {
            l.value = replay.id.clone();
        }
    }
    replay
        .labels
        .retain(|l| l.key != system_labels::REPLAY && l.key != system_labels::RESTARTED);
    replay
        .labels
        .push(Label::new(system_labels::REPLAY, original.id.clone()));
    Some(replay)
}
