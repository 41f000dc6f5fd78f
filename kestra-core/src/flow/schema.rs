//! The JSON Schema of the flow language, for editors (VS Code's YAML extension, Kestra's UI) and for
//! `GET /api/v1/main/plugins/schemas/flow`: [`TaskRegistry::json_schema`] builds it from the typed
//! property structs of every registered task and trigger type.
//!
//! Shape (draft-07, like Kestra's): the root is the flow document; `#/definitions/Task` is an
//! `anyOf` with one branch per registered task type (the type's own properties plus the common
//! ones - `id`, `type`, `retry`, `timeout`, ... - with `type` as a `const`, or an `enum` of the
//! canonical name and its legacy aliases), `#/definitions/Trigger` the same for triggers. Only `id`
//! and `type` are required there: `pluginDefaults` may give the others (they are listed under
//! `x-required`; the parser checks them once the defaults are applied). Unknown
//! properties are refused where the engine refuses them. A property the engine also accepts as an
//! expression ([`Property<T>`]) is `anyOf` its type and an expression string (one holding `{{` or
//! `{%`).
//!
//! A task type gets into the schema through [`TaskType::properties_schema`](crate::flow::TaskType::properties_schema): the core types return
//! their `schemars` derive; an embedder's type that does not override it is described as "any
//! object" (its `type`, `id` and the common properties are still checked and completed):
//!
//! ```
//! use kestra_core::flow::{TaskKind, TaskRegistry, TaskType};
//! use schemars::JsonSchema;
//!
//! /// My task.
//! #[derive(serde::Deserialize, JsonSchema)]
//! #[serde(deny_unknown_fields)]
//! struct Hello {
//!     /// Who to greet.
//!     name: String,
//! }
//! impl TaskType for Hello {
//!     const TYPE: &'static str = "com.example.Hello";
//!     const KIND: TaskKind = TaskKind::Runnable;
//!     fn properties_schema(
//!         generator: &mut schemars::SchemaGenerator,
//!     ) -> Option<schemars::Schema> {
//!         Some(Hello::json_schema(generator))
//!     }
//! }
//! let mut registry = TaskRegistry::default();
//! registry.register::<Hello>();
//! let schema = registry.json_schema();
//! assert!(schema["definitions"]["com.example.Hello"]["properties"]["name"].is_object());
//! ```

use std::borrow::Cow;
use std::collections::BTreeMap;

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde_json::{Map, Value, json};

use crate::flow::duration::IsoDuration;
use crate::flow::model::{
    Flow, INPUT_TYPE_NAMES, InputType, LogLevel, Retry, STATE_NAMES, Task, Trigger, WorkerGroup,
};
use crate::flow::property::Property;
use crate::flow::registry::TaskRegistry;

/// The regex (unanchored) of a string holding a Pebble expression or tag, as
/// [`is_expression`](crate::flow::property::is_expression) decides.
pub const EXPRESSION_PATTERN: &str = r"\{\{|\{%";

/// The `$id` of the flow schema.
pub const FLOW_SCHEMA_ID: &str = "https://kestra.io/schemas/kestra-rs/flow.schema.json";

/// A string that holds an expression (rendered at run time).
fn expression_schema() -> Schema {
    json_schema!({
        "type": "string",
        "pattern": EXPRESSION_PATTERN,
        "description": "An expression ({{ ... }}) rendered at run time"
    })
}

impl<T: JsonSchema> JsonSchema for Property<T> {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        format!("Property_{}", T::schema_name()).into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        json_schema!({ "anyOf": [generator.subschema_for::<T>(), expression_schema()] })
    }
}

impl JsonSchema for IsoDuration {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "IsoDuration".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^[Pp]",
            "description": "An ISO-8601 duration (PT30S, PT5M, P1D, P1DT2H)"
        })
    }
}

impl JsonSchema for InputType {
    fn schema_name() -> Cow<'static, str> {
        "InputType".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "enum": INPUT_TYPE_NAMES,
            "description": "Input type (BOOLEAN and ENUM are legacy names of BOOL and SELECT)"
        })
    }
}

/// Labels: a map (`env: prod`) or a list of `{key, value}`; scalar values become strings.
pub struct LabelsSchema;

impl JsonSchema for LabelsSchema {
    fn schema_name() -> Cow<'static, str> {
        "Labels".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Labels: a map of key to value, or a list of {key, value}",
            "anyOf": [
                { "type": "object", "additionalProperties": { "type": ["string", "number", "boolean", "null"] } },
                {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "key": { "type": ["string", "number", "boolean"] },
                            "value": { "type": ["string", "number", "boolean", "null"] }
                        },
                        "required": ["key"],
                        "additionalProperties": false
                    }
                },
                { "type": "null" }
            ]
        })
    }
}

/// A task of any registered type: `#/definitions/Task`, replaced by the `anyOf` of every type in
/// [`TaskRegistry::json_schema`].
impl JsonSchema for Task {
    fn schema_name() -> Cow<'static, str> {
        "Task".into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let mut schema = any_type_schema(&common_task_properties(generator));
        schema.insert("title".into(), json!("Task"));
        schema
    }
}

/// A trigger of any registered type: `#/definitions/Trigger`, replaced like [`Task`]'s.
impl JsonSchema for Trigger {
    fn schema_name() -> Cow<'static, str> {
        "Trigger".into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let mut schema = any_type_schema(&common_trigger_properties(generator));
        schema.insert("title".into(), json!("Trigger"));
        schema
    }
}

/// An object with `id`, `type` and the common properties, any other property allowed.
fn any_type_schema(common: &Map<String, Value>) -> Schema {
    json_schema!({
        "type": "object",
        "properties": common,
        "required": ["id", "type"]
    })
}

fn id_schema() -> Value {
    json!({ "type": "string", "pattern": "^[a-zA-Z0-9][a-zA-Z0-9_-]*$", "description": "Id, unique within the flow" })
}

/// The properties every task accepts (see [`COMMON_TASK_PROPERTIES`](crate::flow::model::COMMON_TASK_PROPERTIES)).
fn common_task_properties(generator: &mut SchemaGenerator) -> Map<String, Value> {
    let mut p = Map::new();
    p.insert("id".into(), id_schema());
    p.insert(
        "type".into(),
        json!({ "type": "string", "description": "Task type" }),
    );
    p.insert(
        "description".into(),
        json!({ "type": "string", "description": "Free-text description" }),
    );
    p.insert(
        "retry".into(),
        generator.subschema_for::<Retry>().to_value(),
    );
    p.insert(
        "timeout".into(),
        with_description(
            generator.subschema_for::<IsoDuration>(),
            "Maximum duration of one attempt",
        ),
    );
    p.insert(
        "disabled".into(),
        json!({ "type": "boolean", "description": "A disabled task creates no task run" }),
    );
    p.insert(
        "logLevel".into(),
        generator.subschema_for::<LogLevel>().to_value(),
    );
    p.insert(
        "logToFile".into(),
        json!({ "type": "boolean", "description": "Write the logs to a file in internal storage" }),
    );
    p.insert(
        "allowFailure".into(),
        json!({ "type": "boolean", "description": "A FAILED run of this task counts as WARNING" }),
    );
    p.insert(
        "allowWarning".into(),
        json!({ "type": "boolean", "description": "A WARNING run of this task counts as SUCCESS" }),
    );
    p.insert(
        "runIf".into(),
        json!({ "type": "string", "description": "Expression; a false-ish result gives a SKIPPED task run" }),
    );
    p.insert(
        "workerGroup".into(),
        generator.subschema_for::<WorkerGroup>().to_value(),
    );
    p
}

/// The properties every trigger accepts (see [`COMMON_TRIGGER_PROPERTIES`](crate::flow::model::COMMON_TRIGGER_PROPERTIES)).
fn common_trigger_properties(generator: &mut SchemaGenerator) -> Map<String, Value> {
    let mut p = Map::new();
    p.insert("id".into(), id_schema());
    p.insert(
        "type".into(),
        json!({ "type": "string", "description": "Trigger type" }),
    );
    p.insert(
        "description".into(),
        json!({ "type": "string", "description": "Free-text description" }),
    );
    p.insert(
        "conditions".into(),
        json!({
            "type": "array",
            "items": { "type": "object", "properties": { "type": { "type": "string" } }, "required": ["type"] },
            "description": "Conditions that must all hold for the trigger to fire"
        }),
    );
    p.insert(
        "disabled".into(),
        json!({ "type": "boolean", "description": "A disabled trigger never fires" }),
    );
    p.insert(
        "labels".into(),
        generator.subschema_for::<LabelsSchema>().to_value(),
    );
    p.insert(
        "stopAfter".into(),
        json!({ "type": "array", "items": { "type": "string", "enum": STATE_NAMES }, "description": "States after which the trigger disables itself" }),
    );
    p.insert(
        "allowConcurrent".into(),
        json!({ "type": "boolean", "description": "Start a new execution even while the previous one still runs" }),
    );
    p.insert(
        "logLevel".into(),
        generator.subschema_for::<LogLevel>().to_value(),
    );
    p.insert("logToFile".into(), json!({ "type": "boolean" }));
    p.insert(
        "workerGroup".into(),
        generator.subschema_for::<WorkerGroup>().to_value(),
    );
    p
}

fn with_description(schema: Schema, description: &str) -> Value {
    let mut value = schema.to_value();
    if let Value::Object(map) = &mut value {
        map.insert("description".into(), json!(description));
    }
    value
}

/// One type's branch: its own properties (or any object) merged with the common ones, `type` as a
/// const (or an enum with the legacy aliases), `id` and `type` required.
fn type_branch(
    own: Option<Schema>,
    common: &Map<String, Value>,
    names: &[&str],
    kind: &str,
) -> Value {
    let mut branch = match own.map(Schema::to_value) {
        Some(Value::Object(map)) => map,
        _ => {
            let mut map = Map::new();
            map.insert("type".into(), json!("object"));
            map
        }
    };
    let known = branch.contains_key("properties");
    let mut properties = match branch.remove("properties") {
        Some(Value::Object(map)) => map,
        _ => Map::new(),
    };
    for (name, schema) in common {
        properties.entry(name.clone()).or_insert(schema.clone());
    }
    let type_schema = if names.len() == 1 {
        json!({ "const": names[0] })
    } else {
        json!({ "enum": names })
    };
    properties.insert("type".into(), type_schema);
    // The type's own required properties are not required here: `pluginDefaults` may give them
    // (the parser checks them once the defaults are applied). They are listed as `x-required`.
    let required = vec![json!("id"), json!("type")];
    if let Some(own_required) = branch.remove("required") {
        branch.insert("x-required".into(), own_required);
    }
    branch.insert("type".into(), json!("object"));
    branch.insert("title".into(), json!(names[0]));
    if !branch.contains_key("description") {
        branch.insert(
            "description".into(),
            json!(if known {
                format!("{kind} {}", names[0])
            } else {
                format!(
                    "{kind} {} (its type declares no schema: any property accepted)",
                    names[0]
                )
            }),
        );
    }
    branch.insert("properties".into(), Value::Object(properties));
    branch.insert("required".into(), Value::Array(required));
    Value::Object(branch)
}

/// Adds, for each property marked `x-aliases`, the same schema under each alias (serde's
/// `alias`, which schemars does not describe); then drops the marks.
fn expand_aliases(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::Object(properties)) = map.get_mut("properties") {
                let mut extra = Vec::new();
                for property in properties.values_mut() {
                    if let Value::Object(p) = property
                        && let Some(Value::Array(aliases)) = p.remove("x-aliases")
                    {
                        for alias in aliases {
                            if let Value::String(alias) = alias {
                                extra.push((alias, Value::Object(p.clone())));
                            }
                        }
                    }
                }
                for (alias, schema) in extra {
                    properties.entry(alias).or_insert(schema);
                }
            }
            for child in map.values_mut() {
                expand_aliases(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(expand_aliases),
        _ => {}
    }
}

impl TaskRegistry {
    /// The JSON Schema (draft-07) of a flow document with every registered task and trigger type:
    /// what editors use to validate and complete flow files (see the [module](self) docs). Stable
    /// output: types are sorted by name.
    pub fn json_schema(&self) -> Value {
        let mut generator = SchemaGenerator::new(SchemaSettings::draft07().for_deserialize());
        let mut root = generator.root_schema_for::<Flow>().to_value();

        let common_tasks = common_task_properties(&mut generator);
        let common_triggers = common_trigger_properties(&mut generator);

        let mut task_branches = BTreeMap::new();
        for (canonical, names, schema) in self.task_types() {
            let own = schema(&mut generator);
            task_branches.insert(
                canonical.to_string(),
                type_branch(own, &common_tasks, &names, "Task"),
            );
        }
        let mut trigger_branches = BTreeMap::new();
        for (canonical, names, schema) in self.trigger_types() {
            let own = schema(&mut generator);
            trigger_branches.insert(
                canonical.to_string(),
                type_branch(own, &common_triggers, &names, "Trigger"),
            );
        }

        let mut definitions = generator.take_definitions(true);
        let any_of = |branches: &BTreeMap<String, Value>| -> Vec<Value> {
            branches
                .keys()
                .map(|name| json!({ "$ref": format!("#/definitions/{name}") }))
                .collect()
        };
        definitions.insert(
            "Task".into(),
            json!({ "title": "Task", "description": "A task: one branch per registered type", "anyOf": any_of(&task_branches) }),
        );
        definitions.insert(
            "Trigger".into(),
            json!({ "title": "Trigger", "description": "A trigger: one branch per registered type", "anyOf": any_of(&trigger_branches) }),
        );
        for (name, branch) in task_branches.into_iter().chain(trigger_branches) {
            definitions.insert(name, branch);
        }

        if let Value::Object(map) = &mut root {
            map.insert("$id".into(), json!(FLOW_SCHEMA_ID));
            map.insert("title".into(), json!("Kestra flow"));
            // `tasks` is required and not empty (the validator says so too).
            if let Some(Value::Object(properties)) = map.get_mut("properties")
                && let Some(Value::Object(tasks)) = properties.get_mut("tasks")
            {
                tasks.insert("minItems".into(), json!(1));
            }
            let required = map.entry("required").or_insert_with(|| json!([]));
            if let Value::Array(required) = required
                && !required.contains(&json!("tasks"))
            {
                required.push(json!("tasks"));
            }
            // An input may be named with the deprecated `name` instead of `id`.
            if let Some(Value::Object(input)) = definitions.get_mut("Input") {
                if let Some(Value::Array(required)) = input.get_mut("required") {
                    required.retain(|r| r != "id");
                }
                input.insert(
                    "anyOf".into(),
                    json!([{ "required": ["id"] }, { "required": ["name"] }]),
                );
            }
            map.insert("definitions".into(), Value::Object(definitions));
        }
        expand_aliases(&mut root);
        root
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::flow::model::{COMMON_TASK_PROPERTIES, COMMON_TRIGGER_PROPERTIES};

    #[test]
    fn common_properties_match_the_model_lists() {
        let mut generator = SchemaGenerator::new(SchemaSettings::draft07());
        let tasks: Vec<String> = common_task_properties(&mut generator)
            .keys()
            .cloned()
            .collect();
        assert_eq!(tasks, COMMON_TASK_PROPERTIES);
        let triggers: Vec<String> = common_trigger_properties(&mut generator)
            .keys()
            .cloned()
            .collect();
        assert_eq!(triggers, COMMON_TRIGGER_PROPERTIES);
    }

    #[test]
    fn every_type_and_alias_has_a_branch() {
        let registry = TaskRegistry::default();
        let schema = registry.json_schema();
        let log = &schema["definitions"]["io.kestra.plugin.core.log.Log"];
        assert_eq!(
            log["properties"]["type"]["enum"],
            json!([
                "io.kestra.plugin.core.log.Log",
                "io.kestra.core.tasks.log.Log"
            ])
        );
        assert_eq!(log["additionalProperties"], json!(false));
        assert_eq!(log["required"], json!(["id", "type"]));
        assert_eq!(log["x-required"], json!(["message"]));
        let schedule = &schema["definitions"]["io.kestra.plugin.core.trigger.Schedule"];
        assert!(schedule["properties"]["cron"].is_object(), "{schedule}");
        // Aliases of properties are described too.
        assert!(schema["definitions"]["Retry"]["properties"]["maxAttempt"].is_object());
        assert!(schema["properties"]["taskDefaults"].is_object());
    }
}
