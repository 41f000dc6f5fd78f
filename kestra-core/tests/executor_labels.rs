//! [`ExecutionCommand::SetLabels`] in the pure executor: user labels are replaced, `system.*` ones
//! kept (and never set), on running and ended executions, and nothing else of the execution moves.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use chrono::Utc;
use kestra_core::executor::process::process;
use kestra_core::executor::{FlowIndex, Outcome};
use kestra_core::expression::ExpressionEngine;
use kestra_core::flow::parse::parse_flow;
use kestra_core::flow::registry::TaskRegistry;
use kestra_core::messages::{ExecutionCommand, ExecutorEvent};
use kestra_core::model::{Execution, Label};

const FLOW: &str = "id: f\nnamespace: tests.labels\ntasks:\n  - id: a\n    type: io.kestra.plugin.core.log.Log\n    message: x\n";

fn step(index: &FlowIndex, current: Option<&Execution>, event: ExecutorEvent) -> Outcome {
    process(
        index,
        &ExpressionEngine::default(),
        Utc::now(),
        current.cloned(),
        &event,
    )
    .expect("an outcome")
}

fn set_labels(index: &FlowIndex, current: &Execution, labels: Vec<Label>) -> Outcome {
    step(
        index,
        Some(current),
        ExecutorEvent::Command(ExecutionCommand::SetLabels {
            execution_id: current.id.clone(),
            labels,
        }),
    )
}

#[test]
fn set_labels_replaces_user_labels_and_changes_nothing_else() {
    let registry = TaskRegistry::default();
    let flow = parse_flow(FLOW, &registry).unwrap();
    let index = FlowIndex::new(Arc::new(flow), &registry).unwrap();
    let mut created = Execution::new("tests.labels", "f", 1);
    created.labels = vec![
        Label::new("system.correlationId", "c1"),
        Label::new("team", "a"),
    ];
    let started = step(&index, None, ExecutorEvent::Execution(Box::new(created)));
    assert_eq!(
        started.worker_tasks.len(),
        1,
        "the Log task is sent to a worker"
    );
    let running = started.execution;
    assert!(!running.state.is_terminated());

    // While it runs: labels replaced, system ones kept, no job, the same state.
    let out = set_labels(
        &index,
        &running,
        vec![Label::new("env", "prod"), Label::new("system.forged", "x")],
    );
    assert!(out.changed);
    assert!(out.worker_tasks.is_empty());
    assert_eq!(
        out.execution.labels,
        vec![
            Label::new("system.correlationId", "c1"),
            Label::new("env", "prod")
        ]
    );
    assert_eq!(out.execution.state, running.state);
    assert_eq!(out.execution.task_run_list, running.task_run_list);

    // The same labels again: unchanged.
    let again = set_labels(&index, &out.execution, vec![Label::new("env", "prod")]);
    assert!(!again.changed);

    // An ended execution: labels change, its state does not, nothing new is started.
    let mut ended = out.execution.clone();
    ended
        .state
        .transition(kestra_core::model::StateType::Failed)
        .unwrap();
    let out = set_labels(&index, &ended, vec![Label::new("k", "v")]);
    assert!(out.changed);
    assert_eq!(out.execution.state, ended.state);
    assert!(out.new_executions.is_empty() && out.worker_tasks.is_empty());
    assert_eq!(
        out.execution.labels,
        vec![
            Label::new("system.correlationId", "c1"),
            Label::new("k", "v")
        ]
    );
}
