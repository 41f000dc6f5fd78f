//! Flow trigger `preconditions`, pure: several upstream flows, `where` filters, time windows and
//! `resetOnSuccess`, evaluated with explicit timestamps against an in-memory state map (what the
//! executor keeps in its unit of work).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use kestra_core::executor::flow_trigger::triggered_executions;
use kestra_core::executor::preconditions::{
    self, PreconditionCheck, PreconditionState, WindowSpec, filter_context, where_matches,
};
use kestra_core::expression::ExpressionEngine;
use kestra_core::flow::model::Flow;
use kestra_core::flow::parse::parse_flow;
use kestra_core::flow::registry::TaskRegistry;
use kestra_core::flow::triggers::WhereFilter;
use kestra_core::model::{Execution, Label, State, StateType};
use serde_json::json;

const TASKS: &str = "tasks:\n  - id: a\n    type: io.kestra.plugin.core.log.Log\n    message: x\n";

fn flow(yaml: &str) -> Arc<Flow> {
    let mut f = parse_flow(yaml, &TaskRegistry::default()).unwrap_or_else(|e| panic!("{e}"));
    f.revision = Some(1);
    Arc::new(f)
}

/// A downstream flow `down` in `ns` whose Flow trigger has these `preconditions` (YAML, indented
/// under `preconditions:`).
fn downstream(preconditions: &str) -> Arc<Flow> {
    flow(&format!(
        "id: down\nnamespace: ns\n{TASKS}triggers:\n  - id: t\n    type: io.kestra.plugin.core.trigger.Flow\n    preconditions:\n{preconditions}"
    ))
}

fn at(day: u32, hour: u32, minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, day, hour, minute, 0).unwrap()
}

/// An execution of `ns.<id>` that reached `state` at `when`.
fn ended_at(id: &str, state: StateType, when: DateTime<Utc>) -> Execution {
    let mut e = Execution::new("ns", id, 1);
    e.state = State::new_at(StateType::Created, when);
    e.state.transition_at(StateType::Running, when).unwrap();
    e.state.transition_at(state, when).unwrap();
    e
}

/// Evaluation of the Flow triggers of `flows` for one ended execution, against `states`.
struct Harness {
    flows: Vec<Arc<Flow>>,
    states: HashMap<String, PreconditionState>,
}

impl Harness {
    fn new(flows: Vec<Arc<Flow>>) -> Self {
        Harness {
            flows,
            states: HashMap::new(),
        }
    }

    /// How many executions of `down` an execution of `id` ending in `state` at `when` starts.
    fn end(&mut self, id: &str, state: StateType, when: DateTime<Utc>) -> usize {
        self.end_execution(&ended_at(id, state, when))
    }

    fn end_execution(&mut self, e: &Execution) -> usize {
        let (out, problems) = triggered_executions(
            e,
            &self.flows,
            &TaskRegistry::default(),
            &ExpressionEngine::default(),
            Utc::now(),
            &mut self.states,
        );
        assert!(problems.is_empty(), "{problems:?}");
        out.iter().filter(|t| t.execution.flow_id == "down").count()
    }
}

const A_AND_B: &str = "      id: both\n      flows:\n        - namespace: ns\n          flowId: a\n        - namespace: ns\n          flowId: b\n";

#[test]
fn two_upstream_flows_fire_once_after_both_and_reset() {
    let mut h = Harness::new(vec![downstream(A_AND_B)]);
    assert_eq!(h.end("a", StateType::Success, at(2, 10, 0)), 0);
    assert_eq!(
        h.end("a", StateType::Success, at(2, 10, 1)),
        0,
        "A twice is not B"
    );
    assert_eq!(
        h.end("b", StateType::Failed, at(2, 10, 2)),
        0,
        "B must SUCCEED (the default states)"
    );
    assert_eq!(
        h.end("b", StateType::Success, at(2, 10, 3)),
        1,
        "A then B fires"
    );
    assert!(h.states.is_empty(), "resetOnSuccess clears the results");
    assert_eq!(
        h.end("b", StateType::Success, at(2, 10, 4)),
        0,
        "after the reset B alone does not fire"
    );
    assert_eq!(
        h.end("a", StateType::Success, at(2, 10, 5)),
        1,
        "a second full set fires again"
    );
    // An unrelated flow meets no condition and changes nothing.
    assert_eq!(h.end("c", StateType::Success, at(2, 10, 6)), 0);
    assert!(h.states.is_empty());
}

#[test]
fn reset_on_success_false_keeps_the_window_satisfied_until_it_ends() {
    let pre = format!("{A_AND_B}      resetOnSuccess: false\n");
    let mut h = Harness::new(vec![downstream(&pre)]);
    assert_eq!(h.end("a", StateType::Success, at(2, 10, 0)), 0);
    assert_eq!(h.end("b", StateType::Success, at(2, 11, 0)), 1);
    assert_eq!(
        h.end("a", StateType::Success, at(2, 12, 0)),
        1,
        "the window stays satisfied: every further match fires"
    );
    assert_eq!(h.end("b", StateType::Success, at(2, 23, 59)), 1);
    // The default window is one day (UTC): the next day starts empty.
    assert_eq!(h.end("a", StateType::Success, at(3, 0, 1)), 0);
    assert_eq!(h.end("b", StateType::Success, at(3, 0, 2)), 1);
}

#[test]
fn upstream_states_and_labels_are_part_of_a_condition() {
    let pre = "      id: p\n      flows:\n        - namespace: ns\n          flowId: a\n          states: [FAILED, WARNING]\n        - namespace: ns\n          flowId: b\n          labels:\n            env: prod\n";
    let mut h = Harness::new(vec![downstream(pre)]);
    assert_eq!(h.end("a", StateType::Success, at(2, 9, 0)), 0);
    assert_eq!(
        h.end("b", StateType::Success, at(2, 9, 1)),
        0,
        "b lacks the label"
    );
    let mut b = ended_at("b", StateType::Success, at(2, 9, 2));
    b.labels.push(Label::new("env", "prod"));
    assert_eq!(h.end_execution(&b), 0, "a has not FAILED yet");
    assert_eq!(h.end("a", StateType::Failed, at(2, 9, 3)), 1);
}

/// A `where` group written in YAML (one list item), read through the flow parser.
fn group(yaml: &str) -> WhereFilter {
    let f = downstream(&format!("      id: p\n      where:\n{yaml}"));
    let written = f.triggers[0].properties["preconditions"]["where"][0].clone();
    serde_json::from_value(written).unwrap_or_else(|e| panic!("{e}: {yaml}"))
}

fn matches(group_yaml: &str, e: &Execution) -> bool {
    let g = group(group_yaml);
    let ctx = filter_context(e, &json!({"flowId": e.flow_id}));
    where_matches(&g, e, &ctx, &ExpressionEngine::default()).unwrap()
}

#[test]
fn where_filter_types_and_operands() {
    let mut e = ended_at("orders_extract", StateType::Warning, at(2, 9, 0));
    e.namespace = "company.sales".into();
    e.labels.push(Label::new("env", "prod"));
    let one = |field: &str, ty: &str, value: &str| {
        format!(
            "        - id: g\n          filters:\n            - field: {field}\n              type: {ty}\n              {value}\n"
        )
    };
    let cases: &[(&str, &str, &str, bool)] = &[
        ("FLOW_ID", "EQUAL_TO", "value: orders_extract", true),
        ("FLOW_ID", "EQUAL_TO", "value: orders", false),
        ("FLOW_ID", "NOT_EQUAL_TO", "value: orders", true),
        ("NAMESPACE", "STARTS_WITH", "value: company", true),
        ("NAMESPACE", "STARTS_WITH", "value: sales", false),
        ("NAMESPACE", "ENDS_WITH", "value: .sales", true),
        ("FLOW_ID", "CONTAINS", "value: ers_ex", true),
        ("FLOW_ID", "REGEX", "value: \"orders_.*\"", true),
        ("FLOW_ID", "REGEX", "value: orders", false),
        ("STATE", "IN", "values: [SUCCESS, WARNING]", true),
        ("STATE", "NOT_IN", "values: [SUCCESS, WARNING]", false),
        ("STATE", "NOT_IN", "values: [FAILED]", true),
        ("LABEL", "EQUAL_TO", "value: \"env:prod\"", true),
        ("LABEL", "EQUAL_TO", "value: \"env:dev\"", false),
        ("LABEL", "IS_NOT_NULL", "value: env", true),
        ("LABEL", "IS_NULL", "value: team", true),
        ("LABEL", "IS_NULL", "value: env", false),
        (
            "EXPRESSION",
            "IS_TRUE",
            "value: \"{{ labels.env == 'prod' }}\"",
            true,
        ),
        (
            "EXPRESSION",
            "IS_FALSE",
            "value: \"{{ flow.namespace == 'company.sales' }}\"",
            false,
        ),
        (
            "EXPRESSION",
            "IS_TRUE",
            "value: \"{{ execution.state == 'SUCCESS' }}\"",
            false,
        ),
    ];
    for (field, ty, value, expected) in cases {
        assert_eq!(
            matches(&one(field, ty, value), &e),
            *expected,
            "{field} {ty} {value}"
        );
    }
    // AND (the default) needs every filter, OR one of them.
    let two = |operand: &str| {
        format!(
            "        - id: g\n          operand: {operand}\n          filters:\n            - field: FLOW_ID\n              type: EQUAL_TO\n              value: orders_extract\n            - field: STATE\n              type: EQUAL_TO\n              value: SUCCESS\n"
        )
    };
    assert!(!matches(&two("AND"), &e));
    assert!(matches(&two("OR"), &e));
    assert!(!matches(
        &two("AND").replace("          operand: AND\n", ""),
        &e
    ));
}

#[test]
fn where_groups_are_conditions_of_the_set() {
    // Two where groups (one OR, one AND) plus one upstream flow: three conditions. As in Kestra,
    // group ids need not be unique: conditions are numbered (condition_2_g, condition_3_g).
    let pre = "      id: p\n      flows:\n        - namespace: ns\n          flowId: a\n      where:\n        - id: g\n          operand: OR\n          filters:\n            - field: FLOW_ID\n              type: EQUAL_TO\n              value: b\n            - field: FLOW_ID\n              type: EQUAL_TO\n              value: c\n        - id: g\n          filters:\n            - field: FLOW_ID\n              type: EQUAL_TO\n              value: d\n            - field: STATE\n              type: EQUAL_TO\n              value: FAILED\n";
    let mut h = Harness::new(vec![downstream(pre)]);
    assert_eq!(h.end("a", StateType::Success, at(2, 8, 0)), 0);
    assert_eq!(h.end("c", StateType::Success, at(2, 8, 1)), 0);
    assert_eq!(
        h.end("d", StateType::Success, at(2, 8, 2)),
        0,
        "d must FAIL"
    );
    assert_eq!(h.end("d", StateType::Failed, at(2, 8, 3)), 1);
}

fn window(yaml: &str) -> String {
    format!("{A_AND_B}      timeWindow:\n{yaml}")
}

#[test]
fn duration_window_is_fixed_and_aligned() {
    let mut h = Harness::new(vec![downstream(&window(
        "        type: DURATION_WINDOW\n        window: PT1H\n",
    ))]);
    assert_eq!(h.end("a", StateType::Success, at(2, 10, 50)), 0);
    assert_eq!(
        h.end("b", StateType::Success, at(2, 11, 5)),
        0,
        "10:50 and 11:05 are in different hourly windows"
    );
    // A late execution from the 10:00 window does not count in the 11:00 window.
    assert_eq!(h.end("a", StateType::Success, at(2, 10, 59)), 0);
    assert_eq!(h.end("a", StateType::Success, at(2, 11, 20)), 1);

    let mut h = Harness::new(vec![downstream(&window(
        "        window: PT1H\n        windowAdvance: PT30M\n",
    ))]);
    assert_eq!(h.end("a", StateType::Success, at(2, 10, 40)), 0);
    assert_eq!(
        h.end("b", StateType::Success, at(2, 11, 20)),
        1,
        "windowAdvance PT30M: one window from 10:30 to 11:30"
    );
    assert_eq!(h.end("a", StateType::Success, at(2, 11, 29)), 0);
    assert_eq!(
        h.end("b", StateType::Success, at(2, 11, 30)),
        0,
        "11:30 opens a new window"
    );
}

#[test]
fn sliding_window_expires_old_results() {
    let mut h = Harness::new(vec![downstream(&window(
        "        type: SLIDING_WINDOW\n        window: PT1H\n",
    ))]);
    assert_eq!(h.end("a", StateType::Success, at(2, 10, 0)), 0);
    assert_eq!(
        h.end("b", StateType::Success, at(2, 10, 59)),
        1,
        "59 minutes apart, across an hour boundary"
    );
    assert_eq!(h.end("a", StateType::Success, at(2, 12, 0)), 0);
    assert_eq!(
        h.end("b", StateType::Success, at(2, 13, 1)),
        0,
        "a (12:00) is more than an hour older than b (13:01)"
    );
    let key = preconditions::state_key("main", "ns", "down", "t");
    assert_eq!(
        h.states[&key].results.keys().collect::<Vec<_>>(),
        vec!["condition_2"],
        "the expired result is dropped"
    );
    assert_eq!(h.end("a", StateType::Success, at(2, 13, 30)), 1);
}

#[test]
fn daily_time_deadline_counts_until_the_deadline_each_day() {
    let mut h = Harness::new(vec![downstream(&window(
        "        type: DAILY_TIME_DEADLINE\n        deadline: \"09:00:00\"\n",
    ))]);
    assert_eq!(h.end("a", StateType::Success, at(2, 8, 0)), 0);
    assert_eq!(
        h.end("b", StateType::Success, at(2, 9, 30)),
        0,
        "after the deadline"
    );
    assert_eq!(
        h.end("b", StateType::Success, at(3, 8, 30)),
        0,
        "a new day: yesterday's a does not count"
    );
    assert_eq!(h.end("a", StateType::Success, at(3, 8, 59)), 1);
}

#[test]
fn daily_time_window_ignores_executions_outside() {
    let mut h = Harness::new(vec![downstream(&window(
        "        type: DAILY_TIME_WINDOW\n        startTime: \"06:00\"\n        endTime: \"18:00:00\"\n",
    ))]);
    assert_eq!(h.end("a", StateType::Success, at(2, 5, 59)), 0);
    assert_eq!(
        h.end("b", StateType::Success, at(2, 7, 0)),
        0,
        "a at 05:59 did not count"
    );
    assert_eq!(
        h.end("a", StateType::Success, at(2, 18, 0)),
        0,
        "18:00 is outside"
    );
    assert_eq!(h.end("a", StateType::Success, at(2, 17, 59)), 1);
}

#[test]
fn single_upstream_flow_fires_every_time_inside_its_window() {
    let one = "      id: one\n      flows:\n        - namespace: ns\n          flowId: a\n";
    let mut h = Harness::new(vec![downstream(one)]);
    assert_eq!(h.end("a", StateType::Success, at(2, 1, 0)), 1);
    assert_eq!(h.end("a", StateType::Success, at(2, 1, 1)), 1);
    assert_eq!(h.end("a", StateType::Failed, at(2, 1, 2)), 0);
    assert!(h.states.is_empty(), "one condition needs no state");
    let windowed = format!(
        "{one}      timeWindow:\n        type: DAILY_TIME_WINDOW\n        startTime: \"08:00:00\"\n        endTime: \"09:00:00\"\n"
    );
    let mut h = Harness::new(vec![downstream(&windowed)]);
    assert_eq!(h.end("a", StateType::Success, at(2, 7, 0)), 0);
    assert_eq!(h.end("a", StateType::Success, at(2, 8, 30)), 1);
}

#[test]
fn results_of_edited_preconditions_are_dropped() {
    let check = |fingerprint: &str, matched: &str| PreconditionCheck {
        conditions: vec!["condition_1".into(), "condition_2".into()],
        matched: vec![matched.into()],
        window: WindowSpec::from_config(None).unwrap(),
        reset_on_success: true,
        fingerprint: fingerprint.into(),
    };
    let first = preconditions::apply(None, &check("v1", "condition_1"), at(2, 10, 0));
    assert!(first.changed && !first.fire);
    let edited = preconditions::apply(
        first.state.clone(),
        &check("v2", "condition_2"),
        at(2, 10, 1),
    );
    assert!(
        !edited.fire,
        "condition_1 was met under other preconditions"
    );
    let same = preconditions::apply(first.state, &check("v1", "condition_2"), at(2, 10, 1));
    assert!(same.fire && same.state.is_none() && same.changed);
}
