//! The task and trigger registry: maps a `type` name (and its legacy aliases) to what the engine
//! knows about it - its canonical name, its [`TaskKind`], where its child tasks live
//! ([`ChildSlot`]) and a type-erased validator built from its typed property struct.
//!
//! [`TaskRegistry::default`] holds every core task and trigger; an embedding application adds its
//! own with [`TaskRegistry::register`] / [`TaskRegistry::register_trigger`] and reads typed
//! properties with [`TaskRegistry::decode`] / [`TaskRegistry::decode_trigger`].
//!
//! A trigger type with a [`TriggerType::DEFAULT_INTERVAL`] is a *polling trigger*: the scheduler
//! sends an evaluation of it to the workers every `interval` ([`TaskRegistry::polling_interval`]),
//! and the workers evaluate it with the [`PollingTrigger`](crate::worker::PollingTrigger) registered
//! in their [`RunnerRegistry`](crate::worker::RunnerRegistry).

use std::any::TypeId;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use schemars::{Schema, SchemaGenerator};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::flow::model::{Flow, Task, Trigger};

/// Where a task is decided or run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskKind {
    /// Runs on a worker.
    Runnable,
    /// Decided by the executor from the states of its child tasks.
    Flowable,
    /// Creates other executions (Subflow, ForEachItem), decided by the executor.
    Executable,
    /// Runs inside the executor and changes the execution itself (Labels, Exit).
    ExecutorSide,
}

/// A property of a flowable that holds child tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChildSlot {
    /// A list of tasks: `tasks`, `errors`, `finally`, `then`, `else`, `defaults`.
    List(&'static str),
    /// A map of task lists: Switch `cases.<key>`.
    MapOfLists(&'static str),
    /// A list of `{task, dependsOn}`: Dag `tasks[].task`.
    DagList(&'static str),
}

impl ChildSlot {
    /// The property name.
    pub fn property(&self) -> &'static str {
        match self {
            ChildSlot::List(p) | ChildSlot::MapOfLists(p) | ChildSlot::DagList(p) => p,
        }
    }
}

/// A task type: a serde struct of the type-specific properties (the common ones - `id`, `type`,
/// `retry`, `timeout`, ... - are not part of it). Unknown properties must be rejected
/// (`#[serde(deny_unknown_fields)]`), as Kestra does.
pub trait TaskType: DeserializeOwned + Send + Sync + 'static {
    /// The canonical type name (`io.kestra.plugin.core.log.Log`).
    const TYPE: &'static str;
    /// Other accepted names (legacy spellings).
    const ALIASES: &'static [&'static str] = &[];
    /// Where the task is decided or run.
    const KIND: TaskKind;
    /// Properties holding child tasks.
    const CHILDREN: &'static [ChildSlot] = &[];

    /// The JSON Schema of the type-specific properties, for the flow schema
    /// ([`TaskRegistry::json_schema`]): return `Some(Self::json_schema(generator))` from a
    /// `schemars::JsonSchema` derive (the core types do). The default, `None`, describes the type
    /// as "any object": editors still check `id`, `type` and the common properties.
    fn properties_schema(generator: &mut SchemaGenerator) -> Option<Schema> {
        let _ = generator;
        None
    }
}

/// A trigger type: a serde struct of its type-specific properties (the common ones - `id`, `type`,
/// `conditions`, `disabled`, ... - are not part of it).
pub trait TriggerType: DeserializeOwned + Send + Sync + 'static {
    /// The canonical type name (`io.kestra.plugin.core.trigger.Schedule`).
    const TYPE: &'static str;
    /// Other accepted names (legacy spellings).
    const ALIASES: &'static [&'static str] = &[];
    /// `Some(default interval)` makes this a polling trigger, evaluated on workers every `interval`
    /// (this value when the flow does not set one). `None` (the default): not a polling trigger.
    const DEFAULT_INTERVAL: Option<Duration> = None;

    /// The JSON Schema of the type-specific properties; see [`TaskType::properties_schema`].
    fn properties_schema(generator: &mut SchemaGenerator) -> Option<Schema> {
        let _ = generator;
        None
    }
}

/// Builds the JSON Schema of a type's properties ([`TaskType::properties_schema`]).
pub type SchemaFn = fn(&mut SchemaGenerator) -> Option<Schema>;

/// Checks a property map against a typed struct; the error carries the path inside the map.
pub type PropertyValidator =
    fn(&Value) -> Result<(), serde_path_to_error::Error<serde_json::Error>>;

fn validate_as<T: DeserializeOwned>(
    value: &Value,
) -> Result<(), serde_path_to_error::Error<serde_json::Error>> {
    serde_path_to_error::deserialize::<_, T>(value).map(|_| ())
}

/// What the registry knows about a task type.
#[derive(Debug, Clone)]
pub struct TaskEntry {
    /// Canonical type name.
    pub type_name: &'static str,
    /// Where the task is decided or run.
    pub kind: TaskKind,
    /// Properties holding child tasks.
    pub children: &'static [ChildSlot],
    /// Validates the type-specific properties (common properties removed).
    pub validate: PropertyValidator,
    /// The JSON Schema of the type-specific properties.
    pub schema: SchemaFn,
    rust_type: TypeId,
}

/// What the registry knows about a trigger type.
#[derive(Debug, Clone)]
pub struct TriggerEntry {
    /// Canonical type name.
    pub type_name: &'static str,
    /// Validates the type-specific properties (common properties removed).
    pub validate: PropertyValidator,
    /// A polling trigger's default interval ([`TriggerType::DEFAULT_INTERVAL`]).
    pub default_interval: Option<Duration>,
    /// The JSON Schema of the type-specific properties.
    pub schema: SchemaFn,
    rust_type: TypeId,
}

/// Why typed properties could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The task or trigger's type is not registered.
    #[error("unknown type '{0}'")]
    UnknownType(String),
    /// The type is registered with another Rust type than the one asked for.
    #[error("type '{type_name}' is not decoded by {rust_type}")]
    WrongType {
        /// The `type` of the task or trigger.
        type_name: String,
        /// The Rust type asked for.
        rust_type: &'static str,
    },
    /// The properties do not match the typed struct.
    #[error("{type_name}: {source}")]
    Invalid {
        /// The `type` of the task or trigger.
        type_name: String,
        /// The deserialization error, with its path.
        source: serde_path_to_error::Error<serde_json::Error>,
    },
}

/// Task and trigger types by name (canonical names and aliases).
#[derive(Debug, Clone)]
pub struct TaskRegistry {
    tasks: HashMap<String, Arc<TaskEntry>>,
    triggers: HashMap<String, Arc<TriggerEntry>>,
}

impl Default for TaskRegistry {
    /// A registry with every core task and trigger.
    fn default() -> Self {
        let mut registry = TaskRegistry::empty();
        crate::flow::tasks::register_core_tasks(&mut registry);
        crate::flow::triggers::register_core_triggers(&mut registry);
        registry
    }
}

impl TaskRegistry {
    /// A registry with no type at all.
    pub fn empty() -> Self {
        TaskRegistry {
            tasks: HashMap::new(),
            triggers: HashMap::new(),
        }
    }

    /// Registers a task type under its [`TaskType::TYPE`] and [`TaskType::ALIASES`].
    pub fn register<T: TaskType>(&mut self) -> &mut Self {
        self.register_named::<T>(T::TYPE, T::ALIASES)
    }

    /// Registers a task type under another canonical name (several names can share one property
    /// struct, e.g. the script tasks of each language).
    pub fn register_named<T: TaskType>(
        &mut self,
        type_name: &'static str,
        aliases: &[&'static str],
    ) -> &mut Self {
        let entry = Arc::new(TaskEntry {
            type_name,
            kind: T::KIND,
            children: T::CHILDREN,
            validate: validate_as::<T>,
            schema: T::properties_schema,
            rust_type: TypeId::of::<T>(),
        });
        for name in std::iter::once(&type_name).chain(aliases) {
            self.tasks.insert((*name).to_string(), Arc::clone(&entry));
        }
        self
    }

    /// Registers a trigger type under its [`TriggerType::TYPE`] and [`TriggerType::ALIASES`].
    pub fn register_trigger<T: TriggerType>(&mut self) -> &mut Self {
        let entry = Arc::new(TriggerEntry {
            type_name: T::TYPE,
            validate: validate_as::<T>,
            default_interval: T::DEFAULT_INTERVAL,
            schema: T::properties_schema,
            rust_type: TypeId::of::<T>(),
        });
        for name in std::iter::once(&T::TYPE).chain(T::ALIASES) {
            self.triggers
                .insert((*name).to_string(), Arc::clone(&entry));
        }
        self
    }

    /// Every task type: its canonical name, every name it answers to (canonical first, then the
    /// aliases, sorted) and its schema function; sorted by canonical name.
    pub fn task_types(&self) -> Vec<(&'static str, Vec<&str>, SchemaFn)> {
        grouped(&self.tasks, |e| (e.type_name, e.schema))
    }

    /// Every trigger type, as [`TaskRegistry::task_types`].
    pub fn trigger_types(&self) -> Vec<(&'static str, Vec<&str>, SchemaFn)> {
        grouped(&self.triggers, |e| (e.type_name, e.schema))
    }

    /// The task entry for a type name or alias.
    pub fn resolve(&self, type_name: &str) -> Option<&TaskEntry> {
        self.tasks.get(type_name).map(Arc::as_ref)
    }

    /// The trigger entry for a type name or alias.
    pub fn resolve_trigger(&self, type_name: &str) -> Option<&TriggerEntry> {
        self.triggers.get(type_name).map(Arc::as_ref)
    }

    /// A polling trigger's interval: its `interval` property (ISO-8601 duration) or its type's
    /// default. `None` when the trigger is not a polling trigger (or its type is unknown); `Some(Err)`
    /// when `interval` is not a positive duration.
    pub fn polling_interval(&self, trigger: &Trigger) -> Option<Result<Duration, String>> {
        let default = self
            .resolve_trigger(&trigger.trigger_type)?
            .default_interval?;
        let interval = match trigger.properties.get("interval") {
            None | Some(Value::Null) => Ok(default),
            Some(Value::String(text)) => crate::flow::duration::parse(text)
                .map_err(|e| format!("invalid interval '{text}': {e}")),
            Some(other) => Err(format!(
                "invalid interval {other}: not an ISO-8601 duration"
            )),
        };
        Some(interval.and_then(|d| {
            if d.is_zero() {
                Err("interval must be longer than zero".to_string())
            } else {
                Ok(d)
            }
        }))
    }

    /// The canonical name of a task type, `None` when unknown.
    pub fn canonical(&self, type_name: &str) -> Option<&'static str> {
        self.resolve(type_name).map(|e| e.type_name)
    }

    /// Decodes a task's type-specific properties into `T`, checking that its type is `T`'s.
    pub fn decode<T: TaskType>(&self, task: &Task) -> Result<T, DecodeError> {
        let entry = self
            .resolve(&task.task_type)
            .ok_or_else(|| DecodeError::UnknownType(task.task_type.clone()))?;
        if entry.rust_type != TypeId::of::<T>() {
            return Err(DecodeError::WrongType {
                type_name: task.task_type.clone(),
                rust_type: std::any::type_name::<T>(),
            });
        }
        let value = Value::Object(task.properties.clone().into_iter().collect());
        serde_path_to_error::deserialize(&value).map_err(|source| DecodeError::Invalid {
            type_name: task.task_type.clone(),
            source,
        })
    }

    /// Decodes a trigger's type-specific properties into `T`, checking that its type is `T`'s.
    pub fn decode_trigger<T: TriggerType>(&self, trigger: &Trigger) -> Result<T, DecodeError> {
        let entry = self
            .resolve_trigger(&trigger.trigger_type)
            .ok_or_else(|| DecodeError::UnknownType(trigger.trigger_type.clone()))?;
        if entry.rust_type != TypeId::of::<T>() {
            return Err(DecodeError::WrongType {
                type_name: trigger.trigger_type.clone(),
                rust_type: std::any::type_name::<T>(),
            });
        }
        let value = Value::Object(trigger.properties.clone().into_iter().collect());
        serde_path_to_error::deserialize(&value).map_err(|source| DecodeError::Invalid {
            type_name: trigger.trigger_type.clone(),
            source,
        })
    }
}

/// Entries grouped by canonical name, with every name that maps to them.
fn grouped<E>(
    map: &HashMap<String, Arc<E>>,
    describe: impl Fn(&E) -> (&'static str, SchemaFn),
) -> Vec<(&'static str, Vec<&str>, SchemaFn)> {
    let mut by_canonical: std::collections::BTreeMap<&'static str, (Vec<&str>, SchemaFn)> =
        std::collections::BTreeMap::new();
    for (name, entry) in map {
        let (canonical, schema) = describe(entry);
        by_canonical
            .entry(canonical)
            .or_insert_with(|| (Vec::new(), schema))
            .0
            .push(name.as_str());
    }
    by_canonical
        .into_iter()
        .map(|(canonical, (mut names, schema))| {
            names.sort_unstable();
            names.retain(|n| *n != canonical);
            names.insert(0, canonical);
            (canonical, names, schema)
        })
        .collect()
}

/// A child task of a flowable, with its path relative to the parent (`tasks[0]`, `cases.A[1]`,
/// `tasks[2].task`) and the slot it sits in.
#[derive(Debug, Clone, PartialEq)]
pub struct ChildTask {
    /// The slot property (`tasks`, `errors`, `then`, `cases`, ...).
    pub slot: &'static str,
    /// For `cases`, the case key.
    pub case: Option<String>,
    /// Path relative to the parent task.
    pub path: String,
    /// The child task.
    pub task: Task,
}

/// The child task values of a property map, by slot, as `(slot, case, relative path, value)`.
pub(crate) fn child_values<'a>(
    properties: &'a serde_json::Map<String, Value>,
    slots: &'static [ChildSlot],
) -> Vec<(&'static str, Option<String>, String, &'a Value)> {
    let mut out = Vec::new();
    for slot in slots {
        let name = slot.property();
        let Some(value) = properties.get(name) else {
            continue;
        };
        match slot {
            ChildSlot::List(_) => {
                if let Value::Array(items) = value {
                    for (i, item) in items.iter().enumerate() {
                        out.push((name, None, format!("{name}[{i}]"), item));
                    }
                }
            }
            ChildSlot::MapOfLists(_) => {
                if let Value::Object(cases) = value {
                    for (key, list) in cases {
                        if let Value::Array(items) = list {
                            for (i, item) in items.iter().enumerate() {
                                out.push((
                                    name,
                                    Some(key.clone()),
                                    format!("{name}.{key}[{i}]"),
                                    item,
                                ));
                            }
                        }
                    }
                }
            }
            ChildSlot::DagList(_) => {
                if let Value::Array(items) = value {
                    for (i, item) in items.iter().enumerate() {
                        if let Some(task) = item.get("task") {
                            out.push((name, None, format!("{name}[{i}].task"), task));
                        }
                    }
                }
            }
        }
    }
    out
}

impl Task {
    /// The direct child tasks of this task (empty for non-flowables and unknown types). Children
    /// that are not valid tasks are skipped: a flow returned by the parser has none.
    pub fn children(&self, registry: &TaskRegistry) -> Vec<ChildTask> {
        let Some(entry) = registry.resolve(&self.task_type) else {
            return Vec::new();
        };
        let properties: serde_json::Map<String, Value> = self
            .properties
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        child_values(&properties, entry.children)
            .into_iter()
            .filter_map(|(slot, case, path, value)| {
                serde_json::from_value::<Task>(value.clone())
                    .ok()
                    .map(|task| ChildTask {
                        slot,
                        case,
                        path,
                        task,
                    })
            })
            .collect()
    }
}

/// A task anywhere in a flow, with its full path (`tasks[1].then[0]`).
#[derive(Debug, Clone, PartialEq)]
pub struct FlowTask {
    /// Full path from the flow root.
    pub path: String,
    /// Path of the parent flowable, `None` for the flow's own lists.
    pub parent: Option<String>,
    /// The task.
    pub task: Task,
}

impl Flow {
    /// Every task of the flow, depth-first in document order: `tasks`, `errors`, `finally`,
    /// `afterExecution`, and the children of every flowable.
    pub fn all_tasks(&self, registry: &TaskRegistry) -> Vec<FlowTask> {
        fn walk(
            task: &Task,
            path: String,
            parent: Option<String>,
            registry: &TaskRegistry,
            out: &mut Vec<FlowTask>,
        ) {
            let children = task.children(registry);
            out.push(FlowTask {
                path: path.clone(),
                parent,
                task: task.clone(),
            });
            for child in children {
                let child_path = format!("{path}.{}", child.path);
                walk(&child.task, child_path, Some(path.clone()), registry, out);
            }
        }
        let mut out = Vec::new();
        for (name, list) in [
            ("tasks", &self.tasks),
            ("errors", &self.errors),
            ("finally", &self.finally),
            ("afterExecution", &self.after_execution),
        ] {
            for (i, task) in list.iter().enumerate() {
                walk(task, format!("{name}[{i}]"), None, registry, &mut out);
            }
        }
        out
    }
}
