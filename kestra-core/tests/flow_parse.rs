//! Parsing and validation of flows: positions, paths and messages of the reported errors.

#![allow(clippy::unwrap_used)]

use kestra_core::flow::tasks::{ForEach, Log, Switch};
use kestra_core::flow::triggers::Schedule;
use kestra_core::flow::{
    FlowErrorKind, FlowErrors, TaskRegistry, apply_plugin_defaults, parse_flow, parse_flows,
};

fn errors(source: &str) -> Vec<String> {
    match parse_flow(source, &TaskRegistry::default()) {
        Ok(_) => Vec::new(),
        Err(FlowErrors { errors }) => errors.iter().map(ToString::to_string).collect(),
    }
}

const RICH: &str = r#"
id: rich
namespace: company.team
description: A flow using most features
labels:
  env: prod
  team: data
inputs:
  - id: name
    type: STRING
    defaults: world
  - id: choice
    type: ENUM
    values: [a, b]
  - id: nested.value
    type: INT
    required: false
variables:
  greeting: "hello {{ inputs.name }}"
tasks:
  - id: hello
    type: io.kestra.plugin.core.log.Log
    message: "{{ vars.greeting }}"
    retry:
      type: constant
      interval: PT1S
      maxAttempt: 3
  - id: par
    type: io.kestra.plugin.core.flow.Parallel
    concurrent: 2
    tasks:
      - id: p1
        type: io.kestra.plugin.core.debug.Return
        format: one
      - id: each
        type: io.kestra.plugin.core.flow.ForEach
        values: ["a", "b"]
        concurrencyLimit: "{{ inputs.n }}"
        tasks:
          - id: inner
            type: io.kestra.plugin.core.log.Log
            message: "{{ taskrun.value }}"
  - id: sw
    type: io.kestra.plugin.core.flow.Switch
    value: "{{ inputs.choice }}"
    cases:
      a:
        - id: case_a
          type: io.kestra.plugin.scripts.shell.Commands
          commands:
            - echo a
      b:
        - id: case_b
          type: io.kestra.plugin.core.flow.Sleep
          duration: PT0.5S
    defaults:
      - id: dflt
        type: io.kestra.core.tasks.log.Log
        message: none
  - id: dag
    type: io.kestra.plugin.core.flow.Dag
    tasks:
      - task:
          id: d1
          type: io.kestra.plugin.core.log.Log
          message: d1
      - task:
          id: d2
          type: io.kestra.plugin.core.log.Log
          message: d2
        dependsOn: [d1]
errors:
  - id: on_error
    type: io.kestra.plugin.core.log.Log
    message: failed
    level: ERROR
finally:
  - id: always
    type: io.kestra.plugin.core.output.OutputValues
    values:
      a: 1
triggers:
  - id: daily
    type: io.kestra.plugin.core.trigger.Schedule
    cron: "0 9 * * *"
    timezone: Europe/Paris
  - id: upstream
    type: io.kestra.plugin.core.trigger.Flow
    states: [SUCCESS]
    preconditions:
      id: up
      flows:
        - namespace: company.other
          flowId: producer
          states: [SUCCESS]
pluginDefaults:
  - type: io.kestra.plugin.core.log
    values:
      level: INFO
concurrency:
  limit: 2
  behavior: CANCEL
outputs:
  - id: out
    type: STRING
    value: "{{ outputs.p1.value }}"
"#;

#[test]
fn rich_flow_parses() {
    let registry = TaskRegistry::default();
    let flow = parse_flow(RICH, &registry).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(flow.id, "rich");
    assert_eq!(flow.tenant_id, "main");
    assert_eq!(flow.labels.len(), 2);
    assert_eq!(flow.tasks.len(), 4);
    let all: Vec<String> = flow
        .all_tasks(&registry)
        .into_iter()
        .map(|t| t.path)
        .collect();
    assert_eq!(
        all,
        vec![
            "tasks[0]",
            "tasks[1]",
            "tasks[1].tasks[0]",
            "tasks[1].tasks[1]",
            "tasks[1].tasks[1].tasks[0]",
            "tasks[2]",
            "tasks[2].cases.a[0]",
            "tasks[2].cases.b[0]",
            "tasks[2].defaults[0]",
            "tasks[3]",
            "tasks[3].tasks[0].task",
            "tasks[3].tasks[1].task",
            "errors[0]",
            "finally[0]",
        ]
    );
    let each: ForEach = registry.decode(&flow.all_tasks(&registry)[3].task).unwrap();
    assert!(
        each.concurrency_limit
            .is_some_and(|c| c.as_value().is_none())
    );
    let switch: Switch = registry.decode(&flow.tasks[2]).unwrap();
    assert_eq!(switch.cases.map(|c| c.len()), Some(2));
    let log: Log = registry.decode(&flow.tasks[0]).unwrap();
    assert_eq!(log.message, "{{ vars.greeting }}");
    assert!(registry.decode::<Log>(&flow.tasks[1]).is_err());
    let schedule: Schedule = registry.decode_trigger(&flow.triggers[0]).unwrap();
    assert_eq!(schedule.cron, "0 9 * * *");
}

#[test]
fn json_round_trip_is_exact() {
    let registry = TaskRegistry::default();
    let flow = parse_flow(RICH, &registry).unwrap();
    let json = serde_json::to_value(&flow).unwrap();
    let back: kestra_core::flow::Flow = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(back, flow);
    assert_eq!(serde_json::to_value(&back).unwrap(), json);
    // labels are serialized as a list of {key, value}
    assert_eq!(
        json["labels"][0],
        serde_json::json!({"key": "env", "value": "prod"})
    );
}

#[test]
fn yaml_syntax_error_has_its_position() {
    assert_eq!(
        errors("id: a\nnamespace: b\ntasks: [\n"),
        vec!["3:8: unclosed bracket '['"]
    );
}

#[test]
fn duplicate_keys_are_rejected() {
    let e = parse_flow("id: a\nnamespace: b\nid: c\n", &TaskRegistry::default()).unwrap_err();
    assert_eq!(e.errors.len(), 1);
    assert_eq!(e.errors[0].kind, FlowErrorKind::DuplicateKey);
    assert_eq!(e.to_string(), "3:1: duplicate key 'id'");
}

#[test]
fn non_mapping_document() {
    assert_eq!(
        errors("- a\n- b\n"),
        vec!["1:1: invalid type: sequence, expected a flow (a YAML mapping)"]
    );
    assert_eq!(errors(""), vec!["1:1: empty document, expected a flow"]);
}

#[test]
fn every_problem_is_reported_sorted_by_position() {
    let source = "\
id: pause
namespace: Bad_NS
owner: me
tasks:
  - id: a
    type: io.kestra.plugin.core.log.Log
  - id: a
    type: io.kestra.plugin.core.log.Nope
    message: x
  - id: c
    type: io.kestra.plugin.core.flow.ForEach
    values: [1]
    concurrencyLimit: [1]
    timeout: 5 minutes
    tasks:
      - id: d
        type: io.kestra.plugin.core.log.Log
        message: hi
        extra: 1
";
    assert_eq!(
        errors(source),
        vec![
            "2:12: namespace: invalid namespace 'Bad_NS': must match ^[a-z0-9][a-z0-9._-]*",
            "3:1: owner: unknown property 'owner'",
            "5:5: tasks[0].message: missing required property 'message'",
            "7:9: tasks[1].id: duplicate task id 'a' (first used at tasks[0])",
            "8:11: tasks[1].type: unknown task type 'io.kestra.plugin.core.log.Nope'",
            "13:23: tasks[2].concurrencyLimit: invalid type: sequence, expected u32",
            "14:14: tasks[2].timeout: invalid ISO-8601 duration '5 minutes': must start with 'P'",
            "19:9: tasks[2].tasks[0].extra: unknown property 'extra'",
        ]
    );
}

#[test]
fn missing_and_empty_tasks() {
    assert_eq!(
        errors("id: a\nnamespace: b\n"),
        vec!["1:1: tasks: missing required property 'tasks'"]
    );
    assert_eq!(
        errors("id: a\nnamespace: b\ntasks: []\n"),
        vec!["3:8: tasks: 'tasks' must not be empty"]
    );
}

#[test]
fn wrong_types_name_the_expected_type() {
    let source = "id: a\nnamespace: b\ntasks:\n  - id: s\n    type: io.kestra.plugin.core.storage.Split\n    from: x\n    rows: abc\n";
    assert_eq!(
        errors(source),
        vec!["7:11: tasks[0].rows: invalid type: string \"abc\", expected u32"]
    );
}

#[test]
fn plugin_defaults_supply_required_properties() {
    let source = "\
id: a
namespace: b
tasks:
  - id: l
    type: io.kestra.plugin.core.log.Log
pluginDefaults:
  - type: io.kestra.plugin.core.log.Log
    values:
      message: from defaults
";
    let registry = TaskRegistry::default();
    let flow = parse_flow(source, &registry).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        flow.tasks[0].properties.get("message").is_none(),
        "the parsed flow stays as written"
    );
    let applied = apply_plugin_defaults(&flow, &registry).unwrap();
    assert_eq!(applied.tasks[0].properties["message"], "from defaults");
}

#[test]
fn forced_defaults_override_and_maps_merge() {
    let source = "\
id: a
namespace: b
tasks:
  - id: r
    type: io.kestra.plugin.core.http.Request
    uri: http://x
    method: GET
    options:
      connectTimeout: PT1S
pluginDefaults:
  - type: io.kestra.plugin.core.http
    forced: true
    values:
      method: POST
  - type: io.kestra.plugin.core.http.Request
    values:
      options:
        readTimeout: PT5S
        connectTimeout: PT9S
";
    let registry = TaskRegistry::default();
    let flow = parse_flow(source, &registry).unwrap_or_else(|e| panic!("{e}"));
    let applied = apply_plugin_defaults(&flow, &registry).unwrap();
    let props = &applied.tasks[0].properties;
    assert_eq!(props["method"], "POST");
    assert_eq!(
        props["options"],
        serde_json::json!({"connectTimeout": "PT1S", "readTimeout": "PT5S"})
    );
}

#[test]
fn cron_and_timezone_are_checked() {
    let source = "\
id: a
namespace: b
tasks:
  - id: l
    type: io.kestra.plugin.core.log.Log
    message: hi
triggers:
  - id: t1
    type: io.kestra.plugin.core.trigger.Schedule
    cron: 0 0 30 2 *
  - id: t2
    type: io.kestra.plugin.core.trigger.Schedule
    cron: '* * * *'
  - id: t3
    type: io.kestra.core.models.triggers.types.Schedule
    cron: '@hourly'
    timezone: Mars/Olympus
  - id: t4
    type: io.kestra.plugin.core.trigger.Schedule
    cron: '*/5 * * * * *'
    withSeconds: true
  - id: t4
    type: io.kestra.plugin.core.trigger.Nope
";
    assert_eq!(
        errors(source),
        vec![
            "10:11: triggers[0].cron: cron expression '0 0 30 2 *' never fires (no occurrence in the next 10 years)",
            "13:11: triggers[1].cron: invalid cron expression '* * * *': expected 5 fields, found 4 (set withSeconds: true for 6 fields)",
            "17:15: triggers[2].timezone: unknown time zone 'Mars/Olympus'",
            "22:9: triggers[4].id: duplicate trigger id 't4' (first used at triggers[3])",
            "23:11: triggers[4].type: unknown trigger type 'io.kestra.plugin.core.trigger.Nope'",
        ]
    );
}

#[test]
fn self_references_are_rejected() {
    let source = "\
id: me
namespace: company
tasks:
  - id: call
    type: io.kestra.core.tasks.flows.Flow
    namespace: company
    flowId: me
triggers:
  - id: loop
    type: io.kestra.plugin.core.trigger.Flow
    conditions:
      - type: io.kestra.plugin.core.condition.ExecutionFlow
        namespace: company
        flowId: me
    preconditions:
      flows:
        - namespace: company
          flowId: me
";
    assert_eq!(
        errors(source),
        vec![
            "7:13: tasks[0].flowId: a subflow task cannot call its own flow 'company.me'",
            "12:9: triggers[0].conditions[0]: a Flow trigger cannot fire on executions of its own flow",
            "17:11: triggers[0].preconditions.flows[0]: a Flow trigger cannot fire on executions of its own flow",
        ]
    );
}

#[test]
fn input_declarations_are_checked() {
    let source = "\
id: a
namespace: b
inputs:
  - id: x
    type: STRIN
  - id: s
    type: SELECT
  - id: s
    type: BOOLEAN
  - id: d
    type: DURATION
    min: 5
  - id: v
    type: STRING
    validator: '[a-'
tasks:
  - id: l
    type: io.kestra.plugin.core.log.Log
    message: hi
";
    assert_eq!(
        errors(source),
        vec![
            "5:11: inputs[0].type: unknown input type 'STRIN'",
            "6:5: inputs[1]: a SELECT input needs 'values' or 'expression'",
            "8:9: inputs[2].id: duplicate input id 's' (first used at inputs[1])",
            "12:10: inputs[3].min: invalid type: integer `5`, expected an ISO-8601 duration such as PT1M",
            "15:16: inputs[4].validator: invalid validator regex: error: unclosed character class",
        ]
    );
}

#[test]
fn multi_document_streams() {
    let source = "id: a\nnamespace: b\ntasks:\n  - id: l\n    type: io.kestra.plugin.core.log.Log\n    message: hi\n---\nid: c\nnamespace: b\n";
    let results = parse_flows(source, &TaskRegistry::default());
    assert_eq!(results.len(), 2);
    assert!(results[0].is_ok());
    let err = results[1].as_ref().unwrap_err();
    assert_eq!(
        err.to_string(),
        "8:1: tasks: missing required property 'tasks'"
    );
}

#[test]
fn strict_scalars_keep_strings() {
    let source = "id: a\nnamespace: b\ntasks:\n  - id: l\n    type: io.kestra.plugin.core.log.Log\n    message: 0755\n  - id: m\n    type: io.kestra.plugin.core.log.Log\n    message: yes\n";
    let flow = parse_flow(source, &TaskRegistry::default()).unwrap();
    assert_eq!(flow.tasks[0].properties["message"], "0755");
    assert_eq!(flow.tasks[1].properties["message"], "yes");
}

#[test]
fn dag_dependencies_are_checked() {
    let source = "\
id: a
namespace: b
tasks:
  - id: dag
    type: io.kestra.plugin.core.flow.Dag
    tasks:
      - task: {id: x, type: io.kestra.plugin.core.log.Log, message: x}
        dependsOn: [y]
      - task: {id: y, type: io.kestra.plugin.core.log.Log, message: y}
        dependsOn: [x, nope]
";
    assert_eq!(
        errors(source),
        vec![
            "7:7: tasks[0].tasks: the Dag's dependsOn form a cycle",
            "10:24: tasks[0].tasks[1].dependsOn[1]: dependsOn names 'nope', which is not a task of this Dag",
        ]
    );
}

#[test]
fn cron_nicknames_include_midnight() {
    for nickname in [
        "@hourly",
        "@daily",
        "@midnight",
        "@weekly",
        "@monthly",
        "@yearly",
        "@annually",
    ] {
        let source = format!(
            "id: n\nnamespace: t\ntasks:\n  - id: a\n    type: io.kestra.plugin.core.log.Log\n    message: x\ntriggers:\n  - id: s\n    type: io.kestra.plugin.core.trigger.Schedule\n    cron: \"{nickname}\"\n"
        );
        assert_eq!(errors(&source), Vec::<String>::new(), "{nickname}");
    }
}

// Kestra fidelity (issue 13): what Kestra accepts and what it refuses.

#[test]
fn kestra_has_no_reserved_flow_ids() {
    for id in ["pause", "executions", "search", "force-run"] {
        let source = format!(
            "id: {id}\nnamespace: a\ntasks:\n  - id: t\n    type: io.kestra.plugin.core.log.Log\n    message: x\n"
        );
        assert_eq!(errors(&source), Vec::<String>::new(), "flow id {id}");
    }
}

#[test]
fn deprecated_input_name_is_the_id() {
    let source = "\
id: f
namespace: a
inputs:
  - name: user
    type: STRING
tasks:
  - id: t
    type: io.kestra.plugin.core.log.Log
    message: x
";
    let flow = parse_flow(source, &TaskRegistry::default()).unwrap();
    assert_eq!(flow.inputs[0].id, "user");
    // `id` wins when both are given.
    let both = source.replace("  - name: user\n", "  - id: login\n    name: user\n");
    let flow = parse_flow(&both, &TaskRegistry::default()).unwrap();
    assert_eq!(flow.inputs[0].id, "login");
}

#[test]
fn label_values_may_be_numbers_and_booleans() {
    let source = "\
id: f
namespace: a
labels:
  n: 1
  b: true
tasks:
  - id: t
    type: io.kestra.plugin.core.log.Log
    message: x
";
    let flow = parse_flow(source, &TaskRegistry::default()).unwrap();
    let values: Vec<&str> = flow.labels.iter().map(|l| l.value.as_str()).collect();
    assert_eq!(values, ["1", "true"]);
}

#[test]
fn flow_sla_is_parsed_and_kept() {
    let source = "\
id: f
namespace: a
sla:
  - id: long
    type: MAX_DURATION
    behavior: CANCEL
    duration: PT5M
    labels:
      sla: missed
  - id: ok
    type: EXECUTION_ASSERTION
    behavior: NONE
    assert: \"{{ true }}\"
tasks:
  - id: t
    type: io.kestra.plugin.core.log.Log
    message: x
";
    let flow = parse_flow(source, &TaskRegistry::default()).unwrap();
    assert_eq!(flow.sla.len(), 2);
    assert_eq!(flow.sla[0].behavior, kestra_core::flow::SlaBehavior::Cancel);
    assert_eq!(flow.sla[0].labels[0].value, "missed");
    assert_eq!(flow.sla[1].assert.as_deref(), Some("{{ true }}"));
    let json = serde_json::to_value(&flow).unwrap();
    let back: kestra_core::flow::Flow = serde_json::from_value(json).unwrap();
    assert_eq!(back, flow);

    let missing = source.replace("    assert: \"{{ true }}\"\n", "");
    assert_eq!(
        errors(&missing),
        vec!["10:5: sla[1].assert: missing required property 'assert'"]
    );
    let bad = source.replace("behavior: NONE", "behavior: WARN");
    assert_eq!(errors(&bad).len(), 1, "{:?}", errors(&bad));
    assert!(errors(&bad)[0].starts_with("12:15: sla[1].behavior: unknown variant `WARN`"));
}

#[test]
fn kestra_refusals_name_the_problem_and_where() {
    let log = "    type: io.kestra.plugin.core.log.Log\n    message: x\n";
    let cases = [
        (
            format!("id: f\nnamespace: a\ninputs:\n  - id: up\n    type: FILE\n    defaults: x\ntasks:\n  - id: t\n{log}"),
            "6:5: inputs[0].defaults: a FILE input cannot have 'defaults'",
        ),
        (
            format!("id: f\nnamespace: a\ninputs:\n  - id: m\n    type: ARRAY\n    itemType: ARRAY\ntasks:\n  - id: t\n{log}"),
            "6:15: inputs[0].itemType: Invalid input definition: `itemType` cannot be `ARRAY`",
        ),
        (
            "id: f\nnamespace: a\ntasks:\n  - id: s\n    type: io.kestra.plugin.core.flow.Switch\n    value: x\n".to_string(),
            "4:5: tasks[0]: No task defined, neither cases or default have any tasks",
        ),
        (
            "id: f\nnamespace: a\ntasks:\n  - id: s\n    type: io.kestra.plugin.core.flow.Switch\n    value: x\n    cases: {}\n    defaults: []\n".to_string(),
            "4:5: tasks[0]: No task defined, neither cases or default have any tasks",
        ),
        (
            "id: f\nnamespace: a\ntasks:\n  - id: wd\n    type: io.kestra.plugin.core.flow.WorkingDirectory\n    tasks:\n      - id: p\n        type: io.kestra.plugin.core.flow.Pause\n".to_string(),
            "8:15: tasks[0].tasks[0].type: Only runnable tasks are allowed as children of a WorkingDirectory task",
        ),
        (
            format!("id: f\nnamespace: a\ntasks:\n  - id: t\n    workerGroup:\n      key: gpu\n{log}"),
            "5:5: tasks[0].workerGroup: Worker Group is an Enterprise Edition functionality",
        ),
    ];
    for (source, expected) in cases {
        assert_eq!(errors(&source), vec![expected.to_string()], "{source}");
    }
    // A Switch with only defaults, or a WorkingDirectory of runnable tasks, is fine.
    assert_eq!(
        errors(
            "id: f\nnamespace: a\ntasks:\n  - id: s\n    type: io.kestra.plugin.core.flow.Switch\n    value: x\n    defaults:\n      - id: t\n        type: io.kestra.plugin.core.log.Log\n        message: x\n"
        ),
        Vec::<String>::new()
    );
}
