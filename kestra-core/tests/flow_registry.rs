//! The task registry: core types and aliases, custom types registered by an embedding application,
//! typed decoding, child navigation, plugin defaults on nested tasks.

#![allow(clippy::unwrap_used)]

use kestra_core::flow::tasks::{EACH_PARALLEL, EachLegacy, Subflow};
use kestra_core::flow::{
    ChildSlot, Property, TaskKind, TaskRegistry, TaskType, apply_plugin_defaults, parse_flow,
};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Greet {
    who: String,
    times: Option<Property<u32>>,
}

impl TaskType for Greet {
    const TYPE: &'static str = "com.acme.Greet";
    const ALIASES: &'static [&'static str] = &["acme.Greet"];
    const KIND: TaskKind = TaskKind::Runnable;
}

#[test]
fn core_types_and_legacy_aliases_resolve() {
    let registry = TaskRegistry::default();
    let canonical = |t: &str| registry.canonical(t);
    assert_eq!(
        canonical("io.kestra.core.tasks.log.Log"),
        Some("io.kestra.plugin.core.log.Log")
    );
    assert_eq!(
        canonical("io.kestra.core.tasks.flows.Flow"),
        Some("io.kestra.plugin.core.flow.Subflow")
    );
    assert_eq!(
        canonical("io.kestra.plugin.core.flow.WaitFor"),
        Some("io.kestra.plugin.core.flow.WaitFor")
    );
    assert_eq!(canonical(EACH_PARALLEL), Some(EACH_PARALLEL));
    assert_eq!(
        canonical("io.kestra.plugin.scripts.python.Script"),
        Some("io.kestra.plugin.scripts.python.Script")
    );
    assert_eq!(canonical("io.kestra.plugin.core.log.Nope"), None);
    assert_eq!(
        registry
            .resolve("io.kestra.plugin.core.execution.Labels")
            .unwrap()
            .kind,
        TaskKind::ExecutorSide
    );
    assert_eq!(
        registry
            .resolve("io.kestra.plugin.core.flow.Subflow")
            .unwrap()
            .kind,
        TaskKind::Executable
    );
    let dag = registry.resolve("io.kestra.plugin.core.flow.Dag").unwrap();
    assert_eq!(dag.kind, TaskKind::Flowable);
    assert_eq!(dag.children[0], ChildSlot::DagList("tasks"));
    assert!(
        registry
            .resolve_trigger("io.kestra.core.models.triggers.types.Schedule")
            .is_some()
    );
}

#[test]
fn an_application_registers_its_own_task() {
    let source = "id: a\nnamespace: b\ntasks:\n  - id: g\n    type: acme.Greet\n    who: world\n    times: \"{{ inputs.n }}\"\n";
    assert!(parse_flow(source, &TaskRegistry::default()).is_err());
    let mut registry = TaskRegistry::default();
    registry.register::<Greet>();
    let flow = parse_flow(source, &registry).unwrap();
    let greet: Greet = registry.decode(&flow.tasks[0]).unwrap();
    assert_eq!(greet.who, "world");
    assert_eq!(
        greet.times,
        Some(Property::Expression("{{ inputs.n }}".into()))
    );

    let bad = source.replace("who: world", "who: world\n    whom: x");
    let err = parse_flow(&bad, &registry).unwrap_err();
    assert_eq!(
        err.to_string(),
        "7:5: tasks[0].whom: unknown property 'whom'"
    );
}

#[test]
fn legacy_loops_map_to_for_each() {
    let source = "\
id: a
namespace: b
tasks:
  - id: each
    type: io.kestra.core.tasks.flows.EachParallel
    value: '[\"a\", \"b\"]'
    tasks:
      - id: inner
        type: io.kestra.core.tasks.debugs.Return
        format: '{{ taskrun.value }}'
";
    let registry = TaskRegistry::default();
    let flow = parse_flow(source, &registry).unwrap();
    let each: EachLegacy = registry.decode(&flow.tasks[0]).unwrap();
    let for_each = each.to_for_each(true);
    assert_eq!(for_each.concurrency_limit, Some(Property::Value(0)));
    assert_eq!(for_each.tasks[0].id, "inner");
    assert_eq!(
        each.to_for_each(false).concurrency_limit,
        Some(Property::Value(1))
    );
}

#[test]
fn legacy_flow_task_decodes_as_subflow() {
    let source = "id: a\nnamespace: b\ntasks:\n  - id: call\n    type: io.kestra.core.tasks.flows.Flow\n    namespace: b\n    flowId: other\n    wait: true\n";
    let registry = TaskRegistry::default();
    let flow = parse_flow(source, &registry).unwrap();
    let subflow: Subflow = registry.decode(&flow.tasks[0]).unwrap();
    assert_eq!(subflow.flow_id, "other");
    assert_eq!(subflow.wait, Some(Property::Value(true)));
}

#[test]
fn defaults_reach_nested_tasks_and_triggers() {
    let source = "\
id: a
namespace: b
tasks:
  - id: if
    type: io.kestra.plugin.core.flow.If
    condition: '{{ true }}'
    then:
      - id: nested
        type: io.kestra.plugin.core.log.Log
triggers:
  - id: s
    type: io.kestra.plugin.core.trigger.Schedule
taskDefaults:
  - type: io.kestra.core.tasks.log.Log
    values:
      message: legacy name matches the canonical type
  - type: io.kestra.plugin.core.trigger.Schedule
    values:
      cron: '@daily'
";
    let registry = TaskRegistry::default();
    let flow = parse_flow(source, &registry).unwrap_or_else(|e| panic!("{e}"));
    let applied = apply_plugin_defaults(&flow, &registry).unwrap();
    let nested = &applied.all_tasks(&registry)[1];
    assert_eq!(nested.path, "tasks[0].then[0]");
    assert_eq!(nested.parent.as_deref(), Some("tasks[0]"));
    assert_eq!(
        nested.task.properties["message"],
        "legacy name matches the canonical type"
    );
    assert_eq!(applied.triggers[0].properties["cron"], "@daily");
}
