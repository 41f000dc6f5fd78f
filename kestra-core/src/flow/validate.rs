//! Flow validation: walks the JSON form of a document (with its positions) and reports every
//! problem at once - unknown or missing properties, wrong types, ids, duplicate ids, unknown task
//! and trigger types, durations, cron expressions, time zones, self-referencing subflows and Flow
//! triggers, input declarations.
//!
//! Each part (a top-level property, a task, a trigger, an input) is checked on its own with
//! `serde_path_to_error`, so one bad task does not hide the problems of the next. Plugin defaults
//! are merged into each task before its properties are checked, so a required property may come from
//! `pluginDefaults`. Child tasks are replaced by placeholders while their parent's typed properties
//! are checked, and checked themselves afterwards, so each problem is reported once.

use std::collections::HashMap;
use std::sync::LazyLock;

use chrono::Utc;
use regex::Regex;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::flow::defaults::{merge_defaults, pointer_mut};
use crate::flow::duration::IsoDuration;
use crate::flow::model::{
    COMMON_TASK_PROPERTIES, COMMON_TRIGGER_PROPERTIES, Check, Concurrency, Flow, FlowOutput,
    INPUT_TYPE_NAMES, Input, InputType, LogLevel, PluginDefault, Retry, RetryType, STATE_NAMES,
    Sla, SlaType, deserialize_labels, json_type_name,
};
use crate::flow::parse::{FlowError, FlowErrorKind, FlowErrors};
use crate::flow::registry::{ChildSlot, TaskKind, TaskRegistry, child_values};
use crate::flow::tasks::{Dag, ForEachItem, Subflow, Switch, WorkingDirectory};
use crate::flow::triggers::{FlowTrigger, Schedule, ScheduleOnDates};
use crate::flow::yaml::{Positions, join_index, join_key};

/// Maximum length of a flow id.
pub const MAX_FLOW_ID_LENGTH: usize = 100;
/// Maximum length of a namespace.
pub const MAX_NAMESPACE_LENGTH: usize = 150;

#[allow(clippy::expect_used)] // constant patterns
static FLOW_ID: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-zA-Z0-9][a-zA-Z0-9._-]*$").expect("valid regex"));
#[allow(clippy::expect_used)]
static NAMESPACE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-z0-9][a-z0-9._-]*$").expect("valid regex"));
#[allow(clippy::expect_used)]
static TASK_ID: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-zA-Z0-9][a-zA-Z0-9_-]*$").expect("valid regex"));
#[allow(clippy::expect_used)]
static INPUT_ID: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-zA-Z0-9][.a-zA-Z0-9_-]*$").expect("valid regex"));

/// The top-level properties of a flow.
const FLOW_PROPERTIES: &[&str] = &[
    "id",
    "namespace",
    "revision",
    "tenantId",
    "description",
    "labels",
    "inputs",
    "variables",
    "tasks",
    "errors",
    "finally",
    "afterExecution",
    "triggers",
    "pluginDefaults",
    "taskDefaults",
    "concurrency",
    "outputs",
    "retry",
    "checks",
    "sla",
    "disabled",
    "deleted",
];

const PLACEHOLDER: &str = "__kestra_child_placeholder";

/// Where an error points: at a value, or at the key of a mapping entry.
#[derive(Clone, Copy)]
enum At {
    Value,
    Key,
}

/// Collects the problems of one document.
pub(crate) struct Validator<'a> {
    registry: &'a TaskRegistry,
    positions: &'a Positions,
    errors: Vec<FlowError>,
    task_ids: HashMap<String, String>,
    flow_id: Option<String>,
    namespace: Option<String>,
    defaults: Vec<PluginDefault>,
}

impl<'a> Validator<'a> {
    pub(crate) fn new(registry: &'a TaskRegistry, positions: &'a Positions) -> Self {
        Validator {
            registry,
            positions,
            errors: Vec::new(),
            task_ids: HashMap::new(),
            flow_id: None,
            namespace: None,
            defaults: Vec::new(),
        }
    }

    fn error(&mut self, path: &str, at: At, kind: FlowErrorKind, message: impl Into<String>) {
        let position = match at {
            At::Value => self.positions.value(path),
            At::Key => self.positions.key(path),
        };
        self.errors.push(FlowError {
            path: path.to_string(),
            line: position.line,
            column: position.column,
            message: message.into(),
            kind,
        });
    }

    /// Deserializes `value` (found at `path`) into `T`, reporting a failure with its exact path.
    fn check<T: DeserializeOwned>(&mut self, value: &Value, path: &str) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(v) => Some(v),
            Err(e) => {
                let inner = e.path().to_string();
                let full = if inner == "." || inner.is_empty() {
                    path.to_string()
                } else if path.is_empty() {
                    inner
                } else if inner.starts_with('[') {
                    format!("{path}{inner}")
                } else {
                    format!("{path}.{inner}")
                };
                self.report_serde(&full, &e.into_inner().to_string());
                None
            }
        }
    }

    /// Turns a serde message into a [`FlowError`] at the right place.
    fn report_serde(&mut self, path: &str, message: &str) {
        if let Some(field) = message
            .strip_prefix("unknown field `")
            .and_then(|r| r.split('`').next())
        {
            let field_path = if path.ends_with(&format!(".{field}")) || path == field {
                path.to_string()
            } else {
                join_key(path, field)
            };
            self.error(
                &field_path,
                At::Key,
                FlowErrorKind::UnknownProperty,
                format!("unknown property '{field}'"),
            );
        } else if let Some(field) = message
            .strip_prefix("missing field `")
            .and_then(|r| r.split('`').next())
        {
            let position = self.positions.value(path);
            self.errors.push(FlowError {
                path: join_key(path, field),
                line: position.line,
                column: position.column,
                message: format!("missing required property '{field}'"),
                kind: FlowErrorKind::MissingProperty,
            });
        } else if message.starts_with("invalid ISO-8601 duration") {
            self.error(path, At::Value, FlowErrorKind::InvalidDuration, message);
        } else {
            self.error(path, At::Value, FlowErrorKind::InvalidValue, message);
        }
    }

    fn invalid_type(&mut self, path: &str, value: &Value, expected: &str) {
        let message = format!("invalid type: {}, expected {expected}", describe(value));
        self.error(path, At::Value, FlowErrorKind::InvalidValue, message);
    }

    pub(crate) fn validate_flow(mut self, root: &Value) -> Result<Flow, FlowErrors> {
        let root = &with_deprecated_input_names(root);
        let Value::Object(map) = root else {
            let message = match root {
                Value::Null => "empty document, expected a flow".to_string(),
                other => format!(
                    "invalid type: {}, expected a flow (a YAML mapping)",
                    describe(other)
                ),
            };
            self.error("", At::Value, FlowErrorKind::NotAMapping, message);
            return Err(FlowErrors::new(self.errors));
        };

        for key in map.keys() {
            if !FLOW_PROPERTIES.contains(&key.as_str()) {
                self.error(
                    key,
                    At::Key,
                    FlowErrorKind::UnknownProperty,
                    format!("unknown property '{key}'"),
                );
            }
        }

        self.flow_id = self.check_identifier(map, "id", &FLOW_ID, MAX_FLOW_ID_LENGTH);
        self.namespace = self.check_identifier(map, "namespace", &NAMESPACE, MAX_NAMESPACE_LENGTH);

        if let Some(v) = map.get("revision") {
            self.check::<i32>(v, "revision");
        }
        for key in ["tenantId", "description"] {
            if let Some(v) = map.get(key) {
                self.check::<String>(v, key);
            }
        }
        for key in ["disabled", "deleted"] {
            if let Some(v) = map.get(key) {
                self.check::<bool>(v, key);
            }
        }
        if let Some(v) = map.get("labels")
            && let Err(e) = deserialize_labels(v)
        {
            self.report_serde("labels", &e.to_string());
        }
        if let Some(v) = map.get("variables") {
            self.check::<Map<String, Value>>(v, "variables");
        }
        if let Some(v) = map.get("concurrency") {
            self.check::<Concurrency>(v, "concurrency");
        }
        if let Some(v) = map.get("retry") {
            self.check_retry(v, "retry");
        }
        if let Some(v) = map.get("checks") {
            self.check::<Vec<Check>>(v, "checks");
        }
        if let Some(v) = map.get("sla") {
            self.validate_sla(v);
        }
        if let Some(v) = map.get("outputs") {
            self.check_list(v, "outputs", |this, item, path| {
                this.check::<FlowOutput>(item, path);
            });
        }
        if map.contains_key("pluginDefaults") && map.contains_key("taskDefaults") {
            self.error(
                "taskDefaults",
                At::Key,
                FlowErrorKind::InvalidValue,
                "'taskDefaults' is the old name of 'pluginDefaults': use only one",
            );
        }
        for key in ["pluginDefaults", "taskDefaults"] {
            if let Some(v) = map.get(key)
                && let Some(defaults) = self.check::<Vec<PluginDefault>>(v, key)
            {
                self.defaults.extend(defaults);
            }
        }
        if let Some(v) = map.get("inputs") {
            self.validate_inputs(v);
        }

        match map.get("tasks") {
            None => self.missing("", "tasks"),
            Some(Value::Array(items)) if items.is_empty() => {
                self.error(
                    "tasks",
                    At::Value,
                    FlowErrorKind::InvalidValue,
                    "'tasks' must not be empty",
                );
            }
            Some(v) => self.validate_task_list(v, "tasks"),
        }
        for key in ["errors", "finally", "afterExecution"] {
            if let Some(v) = map.get(key) {
                self.validate_task_list(v, key);
            }
        }
        if let Some(v) = map.get("triggers") {
            self.validate_triggers(v);
        }
        self.check_expression_depths(root);

        if !self.errors.is_empty() {
            return Err(FlowErrors::new(self.errors));
        }
        match serde_path_to_error::deserialize::<_, Flow>(root) {
            Ok(flow) => Ok(flow),
            Err(e) => {
                let path = e.path().to_string();
                let path = if path == "." { String::new() } else { path };
                self.report_serde(&path, &e.into_inner().to_string());
                Err(FlowErrors::new(self.errors))
            }
        }
    }

    /// Refuses every string of the document holding an expression nested deeper than
    /// [`crate::expression::MAX_EXPRESSION_DEPTH`], naming its path and line: such a template
    /// would be refused at every render (walked without recursion).
    fn check_expression_depths(&mut self, root: &Value) {
        let mut stack: Vec<(String, &Value)> = vec![(String::new(), root)];
        while let Some((path, value)) = stack.pop() {
            match value {
                Value::String(s) => {
                    if let Err((message, line)) = crate::expression::check_template_depth(s) {
                        let mut position = self.positions.value(&path);
                        position.line += line.saturating_sub(1);
                        self.errors.push(FlowError {
                            path: path.clone(),
                            line: position.line,
                            column: position.column,
                            message: format!("invalid expression: {message}"),
                            kind: FlowErrorKind::InvalidValue,
                        });
                    }
                }
                Value::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        stack.push((join_index(&path, i), item));
                    }
                }
                Value::Object(map) => {
                    for (key, item) in map {
                        stack.push((join_key(&path, key), item));
                    }
                }
                _ => {}
            }
        }
    }

    /// Checks `id` or `namespace`; returns its value when it is a string.
    fn check_identifier(
        &mut self,
        map: &Map<String, Value>,
        key: &str,
        pattern: &Regex,
        max_length: usize,
    ) -> Option<String> {
        let Some(value) = map.get(key) else {
            self.missing("", key);
            return None;
        };
        let Value::String(text) = value else {
            self.invalid_type(key, value, "a string");
            return None;
        };
        if !pattern.is_match(text) {
            let message = format!(
                "invalid {key} '{text}': must match {}",
                pattern.as_str().trim_end_matches('$')
            );
            self.error(key, At::Value, FlowErrorKind::InvalidId, message);
        } else if text.chars().count() > max_length {
            let message = format!("invalid {key} '{text}': longer than {max_length} characters");
            self.error(key, At::Value, FlowErrorKind::InvalidId, message);
        }
        Some(text.clone())
    }

    /// Checks that `value` is a list and calls `each` on every element.
    fn check_list(
        &mut self,
        value: &Value,
        path: &str,
        mut each: impl FnMut(&mut Self, &Value, &str),
    ) {
        match value {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    each(self, item, &join_index(path, i));
                }
            }
            other => self.invalid_type(path, other, "a sequence"),
        }
    }

    // ---------------------------------------------------------------------------------------------
    // Tasks
    // ---------------------------------------------------------------------------------------------

    fn validate_task_list(&mut self, value: &Value, path: &str) {
        self.check_list(value, path, |this, item, item_path| {
            this.validate_task(item, item_path)
        });
    }

    fn validate_task(&mut self, value: &Value, path: &str) {
        let Value::Object(written) = value else {
            self.invalid_type(path, value, "a task (a mapping with id and type)");
            return;
        };
        let mut map = written.clone();
        let entry = map
            .get("type")
            .and_then(Value::as_str)
            .and_then(|t| self.registry.resolve(t))
            .cloned();
        merge_defaults(
            &mut map,
            entry.as_ref().map(|e| e.type_name),
            &self.defaults,
            self.registry,
        );

        // Common properties.
        let id = self.check_task_id(&map, path);
        let mut type_name = None;
        match map.get("type") {
            None => self.missing(path, "type"),
            Some(Value::String(t)) => type_name = Some(t.clone()),
            Some(other) => self.invalid_type(&join_key(path, "type"), other, "a string"),
        }
        for (key, v) in &map {
            let p = join_key(path, key);
            match key.as_str() {
                "description" | "runIf" => {
                    self.check::<String>(v, &p);
                }
                "retry" => {
                    self.check_retry(v, &p);
                }
                "timeout" => {
                    self.check::<IsoDuration>(v, &p);
                }
                "disabled" | "logToFile" | "allowFailure" | "allowWarning" => {
                    self.check::<bool>(v, &p);
                }
                "logLevel" => {
                    self.check::<LogLevel>(v, &p);
                }
                "workerGroup" => self.enterprise_worker_group(&p),
                _ => {}
            }
        }
        if let Some(id) = id {
            let id_path = join_key(path, "id");
            if let Some(first) = self.task_ids.get(&id) {
                let message = format!("duplicate task id '{id}' (first used at {first})");
                self.error(&id_path, At::Value, FlowErrorKind::DuplicateId, message);
            } else {
                self.task_ids.insert(id, path.to_string());
            }
        }

        let Some(type_name) = type_name else { return };
        let Some(entry) = entry else {
            let message = format!("unknown task type '{type_name}'");
            self.error(
                &join_key(path, "type"),
                At::Value,
                FlowErrorKind::UnknownType,
                message,
            );
            return;
        };

        // Type-specific properties, children replaced by placeholders.
        let mut properties: Map<String, Value> = map
            .iter()
            .filter(|(k, _)| !COMMON_TASK_PROPERTIES.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let child_paths: Vec<String> = child_values(&properties, entry.children)
            .into_iter()
            .filter(|(_, _, _, v)| v.is_object())
            .map(|(_, _, p, _)| p)
            .collect();
        for child_path in &child_paths {
            if let Some(slot) = pointer_mut(&mut properties, child_path) {
                *slot = serde_json::json!({"id": PLACEHOLDER, "type": PLACEHOLDER});
            }
        }
        let typed_ok = (entry.validate)(&Value::Object(properties.clone()));
        if let Err(e) = typed_ok {
            let inner = e.path().to_string();
            let full = if inner == "." {
                path.to_string()
            } else {
                join_key(path, &inner)
            };
            self.report_serde(&full, &e.into_inner().to_string());
        } else {
            self.check_task_semantics(entry.type_name, &properties, path);
            if entry.type_name == <Dag as crate::flow::registry::TaskType>::TYPE {
                self.check_dag(&map, path);
            }
            if entry.type_name == <Switch as crate::flow::registry::TaskType>::TYPE {
                self.check_switch(&map, path);
            }
            if entry.type_name == <WorkingDirectory as crate::flow::registry::TaskType>::TYPE {
                self.check_working_directory(&map, path);
            }
        }
        for slot in entry.children {
            if let (ChildSlot::List(name) | ChildSlot::DagList(name), Some(Value::Array(items))) =
                (slot, properties.get(slot.property()))
                && items.is_empty()
                && matches!(*name, "tasks" | "then")
            {
                let p = join_key(path, name);
                self.error(
                    &p,
                    At::Value,
                    FlowErrorKind::InvalidValue,
                    format!("'{name}' must not be empty"),
                );
            }
        }

        // Children, checked on the written values (defaults are merged again in each child).
        for (_, _, child_path, child) in child_values(&map, entry.children) {
            if child.is_object() {
                self.validate_task(child, &join_key(path, &child_path));
            }
        }
    }

    /// A retry policy: its type-specific durations are required, as in Kestra (`constant` needs
    /// `interval`; `exponential` `interval` and `maxInterval`; `random` `minInterval` and `maxInterval`).
    fn check_retry(&mut self, value: &Value, path: &str) {
        let Some(retry) = self.check::<Retry>(value, path) else {
            return;
        };
        let required: &[(&str, bool)] = match retry.retry_type {
            RetryType::Constant => &[("interval", retry.interval.is_some())],
            RetryType::Exponential => &[
                ("interval", retry.interval.is_some()),
                ("maxInterval", retry.max_interval.is_some()),
            ],
            RetryType::Random => &[
                ("minInterval", retry.min_interval.is_some()),
                ("maxInterval", retry.max_interval.is_some()),
            ],
        };
        for (field, present) in required {
            if !present {
                self.missing(path, field);
            }
        }
    }

    fn missing(&mut self, path: &str, field: &str) {
        let position = self.positions.value(path);
        self.errors.push(FlowError {
            path: join_key(path, field),
            line: position.line,
            column: position.column,
            message: format!("missing required property '{field}'"),
            kind: FlowErrorKind::MissingProperty,
        });
    }

    fn check_task_id(&mut self, map: &Map<String, Value>, path: &str) -> Option<String> {
        match map.get("id") {
            None => {
                self.missing(path, "id");
                None
            }
            Some(Value::String(id)) => {
                if TASK_ID.is_match(id) {
                    Some(id.clone())
                } else {
                    let message =
                        format!("invalid id '{id}': must match ^[a-zA-Z0-9][a-zA-Z0-9_-]*");
                    self.error(
                        &join_key(path, "id"),
                        At::Value,
                        FlowErrorKind::InvalidId,
                        message,
                    );
                    None
                }
            }
            Some(other) => {
                self.invalid_type(&join_key(path, "id"), other, "a string");
                None
            }
        }
    }

    fn check_task_semantics(
        &mut self,
        type_name: &str,
        properties: &Map<String, Value>,
        path: &str,
    ) {
        let value = Value::Object(properties.clone());
        let target = if type_name == <Subflow as crate::flow::registry::TaskType>::TYPE {
            serde_json::from_value::<Subflow>(value)
                .ok()
                .map(|s| (s.namespace, s.flow_id))
        } else if type_name == <ForEachItem as crate::flow::registry::TaskType>::TYPE {
            serde_json::from_value::<ForEachItem>(value)
                .ok()
                .map(|s| (s.namespace, s.flow_id))
        } else {
            None
        };
        if let Some((namespace, flow_id)) = target
            && self.is_self(&namespace, &flow_id)
        {
            let message =
                format!("a subflow task cannot call its own flow '{namespace}.{flow_id}'");
            self.error(
                &join_key(path, "flowId"),
                At::Value,
                FlowErrorKind::SelfReference,
                message,
            );
        }
    }

    /// Refuses `workerGroup`: an Enterprise Edition property the open-source edition refuses too.
    fn enterprise_worker_group(&mut self, path: &str) {
        self.error(
            path,
            At::Key,
            FlowErrorKind::UnknownProperty,
            "Worker Group is an Enterprise Edition functionality",
        );
    }

    /// Switch: at least one case or a `defaults` list with tasks (Kestra's `SwitchTaskValidation`).
    fn check_switch(&mut self, map: &Map<String, Value>, path: &str) {
        let has_cases = match map.get("cases") {
            Some(Value::Object(cases)) => !cases.is_empty(),
            _ => false,
        };
        let has_defaults = match map.get("defaults") {
            Some(Value::Array(defaults)) => !defaults.is_empty(),
            _ => false,
        };
        if !has_cases && !has_defaults {
            self.error(
                path,
                At::Value,
                FlowErrorKind::MissingProperty,
                "No task defined, neither cases or default have any tasks",
            );
        }
    }

    /// WorkingDirectory: every child runs on the worker, so only runnable tasks are allowed
    /// (Kestra's `WorkingDirectoryTaskValidation`).
    fn check_working_directory(&mut self, map: &Map<String, Value>, path: &str) {
        let Some(Value::Array(children)) = map.get("tasks") else {
            return;
        };
        for (i, child) in children.iter().enumerate() {
            let kind = child
                .get("type")
                .and_then(Value::as_str)
                .and_then(|t| self.registry.resolve(t))
                .map(|entry| entry.kind);
            if let Some(kind) = kind
                && kind != TaskKind::Runnable
            {
                let p = join_index(&join_key(path, "tasks"), i);
                self.error(
                    &join_key(&p, "type"),
                    At::Value,
                    FlowErrorKind::InvalidValue,
                    "Only runnable tasks are allowed as children of a WorkingDirectory task",
                );
            }
        }
    }

    /// Dag: every `dependsOn` names a task of the Dag, and the dependencies have no cycle.
    fn check_dag(&mut self, map: &Map<String, Value>, path: &str) {
        let Some(Value::Array(nodes)) = map.get("tasks") else {
            return;
        };
        let id_of = |node: &Value| {
            node.get("task")
                .and_then(|t| t.get("id"))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let ids: Vec<Option<String>> = nodes.iter().map(id_of).collect();
        let mut edges: HashMap<String, Vec<String>> = HashMap::new();
        for (i, node) in nodes.iter().enumerate() {
            let Some(Value::Array(deps)) = node.get("dependsOn") else {
                continue;
            };
            for (j, dep) in deps.iter().enumerate() {
                let Some(dep) = dep.as_str() else { continue };
                if ids.iter().flatten().any(|id| id == dep) {
                    if let Some(id) = &ids[i] {
                        edges.entry(id.clone()).or_default().push(dep.to_string());
                    }
                } else {
                    let p = join_index(
                        &join_key(&join_index(&join_key(path, "tasks"), i), "dependsOn"),
                        j,
                    );
                    let message =
                        format!("dependsOn names '{dep}', which is not a task of this Dag");
                    self.error(&p, At::Value, FlowErrorKind::InvalidValue, message);
                }
            }
        }
        // Depth-first search for a cycle.
        fn visit(
            id: &str,
            edges: &HashMap<String, Vec<String>>,
            state: &mut HashMap<String, u8>,
        ) -> bool {
            match state.get(id) {
                Some(1) => return true,
                Some(2) => return false,
                _ => {}
            }
            state.insert(id.to_string(), 1);
            let cyclic = edges
                .get(id)
                .is_some_and(|deps| deps.iter().any(|d| visit(d, edges, state)));
            state.insert(id.to_string(), 2);
            cyclic
        }
        let mut state = HashMap::new();
        let cyclic = ids.iter().flatten().any(|id| visit(id, &edges, &mut state));
        if cyclic {
            self.error(
                &join_key(path, "tasks"),
                At::Value,
                FlowErrorKind::InvalidValue,
                "the Dag's dependsOn form a cycle",
            );
        }
    }

    fn is_self(&self, namespace: &str, flow_id: &str) -> bool {
        self.namespace.as_deref() == Some(namespace) && self.flow_id.as_deref() == Some(flow_id)
    }

    // ---------------------------------------------------------------------------------------------
    // Triggers
    // ---------------------------------------------------------------------------------------------

    fn validate_triggers(&mut self, value: &Value) {
        let mut ids: HashMap<String, String> = HashMap::new();
        self.check_list(value, "triggers", |this, item, path| {
            if let Some(id) = this.validate_trigger(item, path) {
                if let Some(first) = ids.get(&id) {
                    let message = format!("duplicate trigger id '{id}' (first used at {first})");
                    this.error(
                        &join_key(path, "id"),
                        At::Value,
                        FlowErrorKind::DuplicateId,
                        message,
                    );
                } else {
                    ids.insert(id, path.to_string());
                }
            }
        });
    }

    fn validate_trigger(&mut self, value: &Value, path: &str) -> Option<String> {
        let Value::Object(written) = value else {
            self.invalid_type(path, value, "a trigger (a mapping with id and type)");
            return None;
        };
        let mut map = written.clone();
        let entry = map
            .get("type")
            .and_then(Value::as_str)
            .and_then(|t| self.registry.resolve_trigger(t))
            .cloned();
        merge_defaults(
            &mut map,
            entry.as_ref().map(|e| e.type_name),
            &self.defaults,
            self.registry,
        );

        let id = self.check_task_id(&map, path);
        let mut type_name = None;
        match map.get("type") {
            None => self.missing(path, "type"),
            Some(Value::String(t)) => type_name = Some(t.clone()),
            Some(other) => self.invalid_type(&join_key(path, "type"), other, "a string"),
        }
        for (key, v) in &map {
            let p = join_key(path, key);
            match key.as_str() {
                "description" => {
                    self.check::<String>(v, &p);
                }
                "disabled" | "allowConcurrent" | "logToFile" => {
                    self.check::<bool>(v, &p);
                }
                "logLevel" => {
                    self.check::<LogLevel>(v, &p);
                }
                "workerGroup" => self.enterprise_worker_group(&p),
                "labels" => {
                    if let Err(e) = deserialize_labels(v) {
                        self.report_serde(&p, &e.to_string());
                    }
                }
                "stopAfter" => self.check_states(v, &p),
                "conditions" => self.check_list(v, &p, |this, c, cp| match c.get("type") {
                    Some(Value::String(_)) => {}
                    Some(other) => this.invalid_type(&join_key(cp, "type"), other, "a string"),
                    None if c.is_object() => this.missing(cp, "type"),
                    None => this.invalid_type(cp, c, "a condition (a mapping with a type)"),
                }),
                _ => {}
            }
        }

        let type_name = type_name?;
        let Some(entry) = entry else {
            let message = format!("unknown trigger type '{type_name}'");
            self.error(
                &join_key(path, "type"),
                At::Value,
                FlowErrorKind::UnknownType,
                message,
            );
            return id;
        };
        let properties: Map<String, Value> = map
            .iter()
            .filter(|(k, _)| !COMMON_TRIGGER_PROPERTIES.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let properties = Value::Object(properties);
        if let Err(e) = (entry.validate)(&properties) {
            let inner = e.path().to_string();
            let full = if inner == "." {
                path.to_string()
            } else {
                join_key(path, &inner)
            };
            self.report_serde(&full, &e.into_inner().to_string());
            return id;
        }
        match entry.type_name {
            t if t == <Schedule as crate::flow::registry::TriggerType>::TYPE => {
                if let Ok(schedule) = serde_json::from_value::<Schedule>(properties) {
                    self.check_schedule(&schedule, path);
                }
            }
            t if t == <ScheduleOnDates as crate::flow::registry::TriggerType>::TYPE => {
                if let Ok(s) = serde_json::from_value::<ScheduleOnDates>(properties)
                    && let Some(tz) = &s.timezone
                {
                    self.check_timezone(tz, &join_key(path, "timezone"));
                }
            }
            t if t == <FlowTrigger as crate::flow::registry::TriggerType>::TYPE => {
                if let Ok(trigger) = serde_json::from_value::<FlowTrigger>(properties.clone()) {
                    self.check_flow_trigger(&trigger, &map, &properties, path);
                }
            }
            _ => {}
        }
        id
    }

    fn check_states(&mut self, value: &Value, path: &str) {
        if let Some(states) = self.check::<Vec<String>>(value, path) {
            for (i, state) in states.iter().enumerate() {
                if !STATE_NAMES.contains(&state.as_str()) {
                    let message = format!(
                        "unknown state '{state}', expected one of {}",
                        STATE_NAMES.join(", ")
                    );
                    self.error(
                        &join_index(path, i),
                        At::Value,
                        FlowErrorKind::InvalidValue,
                        message,
                    );
                }
            }
        }
    }

    fn check_timezone(&mut self, timezone: &str, path: &str) -> Option<chrono_tz::Tz> {
        match timezone.parse::<chrono_tz::Tz>() {
            Ok(tz) => Some(tz),
            Err(_) => {
                let message = format!("unknown time zone '{timezone}'");
                self.error(path, At::Value, FlowErrorKind::InvalidTimezone, message);
                None
            }
        }
    }

    fn check_schedule(&mut self, schedule: &Schedule, path: &str) {
        let tz = match &schedule.timezone {
            Some(tz) => self.check_timezone(tz, &join_key(path, "timezone")),
            None => Some(chrono_tz::UTC),
        };
        let cron_path = join_key(path, "cron");
        let cron = match parse_cron(&schedule.cron, schedule.with_seconds) {
            Ok(cron) => cron,
            Err(message) => {
                self.error(&cron_path, At::Value, FlowErrorKind::InvalidCron, message);
                return;
            }
        };
        let Some(tz) = tz else { return };
        let now = Utc::now().with_timezone(&tz);
        let horizon = now + chrono::Duration::days(366 * 10);
        let fires = matches!(cron.find_next_occurrence(&now, false), Ok(next) if next <= horizon);
        if !fires {
            let message = format!(
                "cron expression '{}' never fires (no occurrence in the next 10 years)",
                schedule.cron
            );
            self.error(&cron_path, At::Value, FlowErrorKind::InvalidCron, message);
        }
    }

    fn check_flow_trigger(
        &mut self,
        trigger: &FlowTrigger,
        map: &Map<String, Value>,
        properties: &Value,
        path: &str,
    ) {
        if let Some(states) = properties.get("states") {
            self.check_states(states, &join_key(path, "states"));
        }
        if let Some(Value::Array(conditions)) = map.get("conditions") {
            for (i, condition) in conditions.iter().enumerate() {
                let kind = condition
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let short = kind.rsplit('.').next().unwrap_or_default();
                if matches!(short, "ExecutionFlow" | "ExecutionFlowCondition") {
                    let namespace = condition
                        .get("namespace")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    let flow_id = condition
                        .get("flowId")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    if self.is_self(namespace, flow_id) {
                        let p = join_index(&join_key(path, "conditions"), i);
                        self.error(
                            &p,
                            At::Value,
                            FlowErrorKind::SelfReference,
                            "a Flow trigger cannot fire on executions of its own flow",
                        );
                    }
                }
            }
        }
        if let Some(flows) = trigger
            .preconditions
            .as_ref()
            .and_then(|p| p.flows.as_ref())
        {
            for (i, upstream) in flows.iter().enumerate() {
                if let Some(flow_id) = &upstream.flow_id
                    && self.is_self(&upstream.namespace, flow_id)
                {
                    let p = join_index(&join_key(path, "preconditions.flows"), i);
                    self.error(
                        &p,
                        At::Value,
                        FlowErrorKind::SelfReference,
                        "a Flow trigger cannot fire on executions of its own flow",
                    );
                }
                if let Some(states) = &upstream.states {
                    let p = join_key(
                        &join_index(&join_key(path, "preconditions.flows"), i),
                        "states",
                    );
                    self.check_states(&Value::from(states.clone()), &p);
                }
            }
        }
        if let Some(pre) = &trigger.preconditions {
            self.check_preconditions(pre, &join_key(path, "preconditions"));
        }
    }

    /// `timeWindow` (type-specific properties, positive window, times of day) and `where` groups
    /// (at least one filter, the value/values rules, regexes).
    fn check_preconditions(&mut self, pre: &crate::flow::triggers::Preconditions, path: &str) {
        use crate::flow::preconditions::{WindowSpec, check_filter};
        if let Some(window) = &pre.time_window
            && let Err((prop, message)) = WindowSpec::from_config(Some(window))
        {
            let p = join_key(&join_key(path, "timeWindow"), prop);
            self.error(&p, At::Value, FlowErrorKind::InvalidValue, message);
        }
        for (i, group) in pre.where_filters.iter().flatten().enumerate() {
            let group_path = join_index(&join_key(path, "where"), i);
            if group.filters.is_empty() {
                let p = join_key(&group_path, "filters");
                self.error(&p, At::Value, FlowErrorKind::InvalidValue, "no filters");
            }
            for (j, filter) in group.filters.iter().enumerate() {
                if let Err(message) = check_filter(filter) {
                    let p = join_index(&join_key(&group_path, "filters"), j);
                    self.error(&p, At::Value, FlowErrorKind::InvalidValue, message);
                }
            }
        }
    }

    // ---------------------------------------------------------------------------------------------
    // SLA
    // ---------------------------------------------------------------------------------------------

    /// `sla`: a list of SLAs with unique ids, each with the property its type needs (`duration`
    /// for MAX_DURATION, `assert` for EXECUTION_ASSERTION).
    fn validate_sla(&mut self, value: &Value) {
        let mut ids: HashMap<String, String> = HashMap::new();
        self.check_list(value, "sla", |this, item, path| {
            let Some(sla) = this.check::<Sla>(item, path) else {
                return;
            };
            let required = match sla.sla_type {
                SlaType::MaxDuration => ("duration", sla.duration.is_some()),
                SlaType::ExecutionAssertion => ("assert", sla.assert.is_some()),
            };
            if !required.1 {
                this.missing(path, required.0);
            }
            if let Some(first) = ids.get(&sla.id) {
                let message = format!("duplicate SLA id '{}' (first used at {first})", sla.id);
                this.error(
                    &join_key(path, "id"),
                    At::Value,
                    FlowErrorKind::DuplicateId,
                    message,
                );
            } else {
                ids.insert(sla.id, path.to_string());
            }
        });
    }

    // ---------------------------------------------------------------------------------------------
    // Inputs
    // ---------------------------------------------------------------------------------------------

    fn validate_inputs(&mut self, value: &Value) {
        let mut ids: HashMap<String, String> = HashMap::new();
        self.check_list(value, "inputs", |this, item, path| {
            let Value::Object(map) = item else {
                this.invalid_type(path, item, "an input (a mapping with id and type)");
                return;
            };
            let mut ok = true;
            match map.get("id") {
                None => {
                    this.missing(path, "id");
                    ok = false;
                }
                Some(Value::String(id)) => {
                    if !INPUT_ID.is_match(id) {
                        let message = format!(
                            "invalid input id '{id}': must match ^[a-zA-Z0-9][.a-zA-Z0-9_-]*"
                        );
                        this.error(
                            &join_key(path, "id"),
                            At::Value,
                            FlowErrorKind::InvalidId,
                            message,
                        );
                    } else if let Some(first) = ids.get(id) {
                        let message = format!("duplicate input id '{id}' (first used at {first})");
                        this.error(
                            &join_key(path, "id"),
                            At::Value,
                            FlowErrorKind::DuplicateId,
                            message,
                        );
                    } else {
                        ids.insert(id.clone(), path.to_string());
                    }
                }
                Some(other) => {
                    this.invalid_type(&join_key(path, "id"), other, "a string");
                    ok = false;
                }
            }
            let type_path = join_key(path, "type");
            match map.get("type") {
                None => {
                    this.missing(path, "type");
                    ok = false;
                }
                Some(Value::String(t)) if INPUT_TYPE_NAMES.contains(&t.as_str()) => {}
                Some(Value::String(t)) => {
                    let message = format!("unknown input type '{t}'");
                    this.error(&type_path, At::Value, FlowErrorKind::UnknownType, message);
                    ok = false;
                }
                Some(other) => {
                    this.invalid_type(&type_path, other, "a string");
                    ok = false;
                }
            }
            if !ok {
                return;
            }
            let Some(input) = this.check::<Input>(item, path) else {
                return;
            };
            if matches!(input.input_type, InputType::Select | InputType::Multiselect)
                && input.values.is_none()
                && input.expression.is_none()
            {
                let message = format!("a {} input needs 'values' or 'expression'", type_name(map));
                this.error(path, At::Value, FlowErrorKind::MissingProperty, message);
            }
            if let Some(validator) = &input.validator
                && let Err(e) = Regex::new(validator)
            {
                let message = format!(
                    "invalid validator regex: {}",
                    e.to_string().lines().last().unwrap_or_default().trim()
                );
                this.error(
                    &join_key(path, "validator"),
                    At::Value,
                    FlowErrorKind::InvalidValue,
                    message,
                );
            }
            if input.input_type == InputType::File && map.contains_key("defaults") {
                this.error(
                    &join_key(path, "defaults"),
                    At::Key,
                    FlowErrorKind::InvalidValue,
                    "a FILE input cannot have 'defaults'",
                );
            }
            if input.input_type == InputType::Array && input.item_type == Some(InputType::Array) {
                this.error(
                    &join_key(path, "itemType"),
                    At::Value,
                    FlowErrorKind::InvalidValue,
                    "Invalid input definition: `itemType` cannot be `ARRAY`",
                );
            }
            if input.input_type == InputType::Duration {
                for key in ["min", "max"] {
                    if let Some(v) = map.get(key) {
                        this.check::<IsoDuration>(v, &join_key(path, key));
                    }
                }
            }
        });
    }
}

/// Kestra's inputs once had a `name` instead of an `id` (still accepted, deprecated): an input
/// with a `name` and no `id` gets its `id` from the `name`, which is kept as written.
fn with_deprecated_input_names(root: &Value) -> Value {
    let mut root = root.clone();
    if let Some(Value::Array(inputs)) = root.get_mut("inputs") {
        for input in inputs.iter_mut() {
            if let Value::Object(map) = input
                && !map.contains_key("id")
                && let Some(name) = map.get("name").cloned()
            {
                map.insert("id".to_string(), name);
            }
        }
    }
    root
}

fn type_name(map: &Map<String, Value>) -> String {
    map.get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// Describes a value the way serde does in "invalid type" messages.
fn describe(value: &Value) -> String {
    match value {
        Value::String(s) => format!("string {s:?}"),
        Value::Bool(b) => format!("boolean `{b}`"),
        Value::Number(n) if n.is_f64() => format!("floating point `{n}`"),
        Value::Number(n) => format!("integer `{n}`"),
        other => json_type_name(other).to_string(),
    }
}

/// Parses a Kestra cron expression: 5 fields (6 with `withSeconds`) or a nickname (`@hourly`).
pub fn parse_cron(expression: &str, with_seconds: bool) -> Result<croner::Cron, String> {
    use croner::parser::{CronParser, Seconds, Year};
    // `@midnight` is Kestra's (cron-utils') alias of `@daily`; croner does not know it.
    let trimmed = match expression.trim() {
        "@midnight" => "@daily",
        other => other,
    };
    if !trimmed.starts_with('@') {
        let fields = trimmed.split_whitespace().count();
        let expected = if with_seconds { 6 } else { 5 };
        if fields != expected {
            let hint = if with_seconds {
                ""
            } else {
                " (set withSeconds: true for 6 fields)"
            };
            return Err(format!(
                "invalid cron expression '{expression}': expected {expected} fields, found {fields}{hint}"
            ));
        }
    }
    let seconds = if with_seconds {
        Seconds::Required
    } else {
        Seconds::Disallowed
    };
    CronParser::builder()
        .seconds(seconds)
        .year(Year::Disallowed)
        .build()
        .parse(trimmed)
        .map_err(|e| format!("invalid cron expression '{expression}': {e}"))
}
