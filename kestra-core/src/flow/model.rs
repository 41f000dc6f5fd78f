//! The flow document model: [`Flow`] and what it is made of ([`Task`], [`Trigger`], [`Input`],
//! [`Retry`], [`Label`], [`PluginDefault`], ...), serialized as camelCase JSON like Kestra's API.
//!
//! [`Task`] and [`Trigger`] are generic and lossless: their common properties are typed fields and
//! every type-specific property is kept as JSON in `properties`; the
//! [`TaskRegistry`](crate::flow::registry::TaskRegistry) decodes them into typed structs. Empty fields
//! are skipped when serializing, and `Flow -> JSON -> Flow` is exact.

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::flow::duration::IsoDuration;

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_true(b: &bool) -> bool {
    *b
}

fn default_true() -> bool {
    true
}

fn default_tenant() -> String {
    DEFAULT_TENANT.to_string()
}

/// The tenant every entity belongs to unless told otherwise.
pub const DEFAULT_TENANT: &str = "main";

/// The names of the states (`CREATED` ... `RESUBMITTED`), used to validate `stopAfter` and Flow
/// trigger `states` without depending on the execution model.
pub const STATE_NAMES: &[&str] = &[
    "CREATED",
    "QUEUED",
    "RUNNING",
    "PAUSED",
    "RESTARTED",
    "KILLING",
    "SUCCESS",
    "WARNING",
    "FAILED",
    "KILLED",
    "CANCELLED",
    "RETRYING",
    "RETRIED",
    "SKIPPED",
    "RESUBMITTED",
];

/// A flow: the YAML document users write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Flow {
    /// Flow id, unique within its namespace.
    #[schemars(
        regex(pattern = r"^[a-zA-Z0-9][a-zA-Z0-9._-]*$"),
        length(min = 1, max = 100)
    )]
    pub id: String,
    /// Dot-separated namespace (`company.team`).
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9._-]*$"), length(min = 1, max = 150))]
    pub namespace: String,
    /// Revision, managed by the server (bumped on each change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i32>,
    /// Tenant id (`main` by default).
    #[serde(default = "default_tenant")]
    pub tenant_id: String,
    /// Free-text description (Markdown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Labels given to every execution of the flow.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "deserialize_labels"
    )]
    #[schemars(with = "crate::flow::schema::LabelsSchema")]
    pub labels: Vec<Label>,
    /// Input declarations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<Input>,
    /// Variables, exposed as `vars` (not rendered until `render()` is called).
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub variables: IndexMap<String, Value>,
    /// The main task list, run sequentially (required, non-empty).
    #[serde(default)]
    pub tasks: Vec<Task>,
    /// Tasks run when a task of `tasks` fails.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<Task>,
    /// Tasks run after `tasks` (and `errors`) whatever happened.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finally: Vec<Task>,
    /// Tasks run once the final state of the execution is known.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after_execution: Vec<Task>,
    /// Triggers that start executions of this flow.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub triggers: Vec<Trigger>,
    /// Default property values for tasks and triggers by type (`taskDefaults` is the old name).
    #[serde(default, skip_serializing_if = "Vec::is_empty", alias = "taskDefaults")]
    #[schemars(extend("x-aliases" = ["taskDefaults"]))]
    pub plugin_defaults: Vec<PluginDefault>,
    /// Concurrency limit across the executions of this flow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<Concurrency>,
    /// Flow outputs, computed when the execution ends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<FlowOutput>,
    /// Flow-wide retry policy, used by tasks without one of their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// Checks evaluated before an execution is created.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<Check>,
    /// Service level agreements of the executions of this flow, parsed and kept as written
    /// (not evaluated yet: see `docs/compatibility.md`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sla: Vec<Sla>,
    /// A disabled flow cannot be executed and its triggers do not fire.
    #[serde(default, skip_serializing_if = "is_false")]
    pub disabled: bool,
    /// Whether this revision is a deletion marker.
    #[serde(default, skip_serializing_if = "is_false")]
    pub deleted: bool,
}

/// A `key: value` label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Label {
    /// Label key.
    pub key: String,
    /// Label value.
    pub value: String,
}

/// Deserializes labels given as a map (`{env: prod}`) or a list (`[{key: env, value: prod}]`);
/// scalar values (numbers, booleans) are turned into strings.
pub fn deserialize_labels<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<Label>, D::Error> {
    fn scalar(value: Value) -> Result<String, String> {
        match value {
            Value::String(s) => Ok(s),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            Value::Null => Ok(String::new()),
            other => Err(format!("invalid label value {other}, expected a string")),
        }
    }
    match Value::deserialize(deserializer)? {
        Value::Null => Ok(Vec::new()),
        Value::Object(map) => map
            .into_iter()
            .map(|(key, value)| {
                Ok(Label {
                    key,
                    value: scalar(value).map_err(D::Error::custom)?,
                })
            })
            .collect(),
        Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                Value::Object(mut map) => {
                    let key = map
                        .remove("key")
                        .ok_or_else(|| D::Error::custom("missing field `key`"))?;
                    let value = map.remove("value").unwrap_or(Value::Null);
                    if let Some(extra) = map.keys().next() {
                        return Err(D::Error::custom(format!("unknown property '{extra}'")));
                    }
                    Ok(Label {
                        key: scalar(key).map_err(D::Error::custom)?,
                        value: scalar(value).map_err(D::Error::custom)?,
                    })
                }
                other => Err(D::Error::custom(format!(
                    "invalid label {other}, expected a {{key, value}} map"
                ))),
            })
            .collect(),
        other => Err(D::Error::custom(format!(
            "invalid type: {}, expected a map or a list of {{key, value}}",
            json_type_name(&other)
        ))),
    }
}

/// The JSON type name of a value, as serde words it (`string`, `sequence`, `map`, ...).
pub fn json_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "sequence",
        Value::Object(_) => "map",
    }
}

/// A task: common properties typed, type-specific ones kept as JSON in `properties`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    /// Task id, unique across the whole flow.
    pub id: String,
    /// Task type (`io.kestra.plugin.core.log.Log`), resolved by the registry.
    #[serde(rename = "type")]
    pub task_type: String,
    /// Free-text description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Retry policy of this task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// Maximum duration of one attempt (ISO-8601).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<IsoDuration>,
    /// A disabled task creates no task run.
    #[serde(default, skip_serializing_if = "is_false")]
    pub disabled: bool,
    /// Minimum level of the logs kept for this task (`TRACE` ... `ERROR`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<LogLevel>,
    /// Write the logs to a file in internal storage instead of the log store.
    #[serde(default, skip_serializing_if = "is_false")]
    pub log_to_file: bool,
    /// A FAILED run of this task counts as WARNING.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_failure: bool,
    /// A WARNING run of this task counts as SUCCESS.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_warning: bool,
    /// Expression; a false-ish result gives a SKIPPED task run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_if: Option<String>,
    /// Worker group the task must run on (`{key, fallback}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_group: Option<WorkerGroup>,
    /// Type-specific properties, decoded with [`TaskRegistry::decode`](crate::flow::registry::TaskRegistry::decode).
    #[serde(flatten)]
    pub properties: IndexMap<String, Value>,
}

/// The property names every task accepts whatever its type.
pub const COMMON_TASK_PROPERTIES: &[&str] = &[
    "id",
    "type",
    "description",
    "retry",
    "timeout",
    "disabled",
    "logLevel",
    "logToFile",
    "allowFailure",
    "allowWarning",
    "runIf",
    "workerGroup",
];

/// Log levels.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum LogLevel {
    /// Most verbose.
    Trace,
    /// Debugging details.
    Debug,
    /// Normal messages.
    Info,
    /// Warnings.
    Warn,
    /// Errors.
    Error,
}

/// The worker group a task is pinned to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkerGroup {
    /// Worker group key.
    pub key: String,
    /// What to do when no worker of the group is available: `WAIT`, `FAIL` or `CANCEL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
}

/// A retry policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retry {
    /// How the delay between attempts grows.
    #[serde(rename = "type")]
    pub retry_type: RetryType,
    /// Delay between attempts (`constant`), first delay (`exponential`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<IsoDuration>,
    /// Upper bound of the delay (`exponential`, `random`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_interval: Option<IsoDuration>,
    /// Growth factor of the delay (`exponential`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_factor: Option<f64>,
    /// Lower bound of the delay (`random`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_interval: Option<IsoDuration>,
    /// Maximum number of attempts, counting the first one (alias `maxAttempt`).
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "maxAttempt")]
    #[schemars(extend("x-aliases" = ["maxAttempt"]))]
    pub max_attempts: Option<u32>,
    /// Maximum total duration of the attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_duration: Option<IsoDuration>,
    /// A task that succeeded after retries ends in WARNING.
    #[serde(default, skip_serializing_if = "is_false")]
    pub warning_on_retry: bool,
    /// Retry on the same task run or in a new execution.
    #[serde(default, skip_serializing_if = "RetryBehavior::is_default")]
    pub behavior: RetryBehavior,
}

/// How the delay between attempts is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RetryType {
    /// Fixed `interval`.
    Constant,
    /// `interval * delayFactor^n`, bounded by `maxInterval`.
    Exponential,
    /// Uniform between `minInterval` and `maxInterval`.
    Random,
}

/// Where a retry happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RetryBehavior {
    /// A new attempt of the same task run (the default).
    #[default]
    RetryFailedTask,
    /// The execution ends RETRIED and a new one starts.
    CreateNewExecution,
}

impl RetryBehavior {
    fn is_default(&self) -> bool {
        *self == RetryBehavior::RetryFailedTask
    }
}

/// A trigger: common properties typed, type-specific ones kept as JSON in `properties`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Trigger {
    /// Trigger id, unique within the flow.
    pub id: String,
    /// Trigger type (`io.kestra.plugin.core.trigger.Schedule`).
    #[serde(rename = "type")]
    pub trigger_type: String,
    /// Free-text description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Conditions (each a map with a `type`), all of which must hold for the trigger to fire.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Value>,
    /// A disabled trigger never fires.
    #[serde(default, skip_serializing_if = "is_false")]
    pub disabled: bool,
    /// Labels added to the executions this trigger starts.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "deserialize_labels"
    )]
    pub labels: Vec<Label>,
    /// States (names from [`STATE_NAMES`]) after which the trigger disables itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop_after: Vec<String>,
    /// Start a new execution even while the previous one of this trigger still runs.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_concurrent: bool,
    /// Type-specific properties, decoded with [`TaskRegistry::decode_trigger`](crate::flow::registry::TaskRegistry::decode_trigger).
    #[serde(flatten)]
    pub properties: IndexMap<String, Value>,
}

/// The property names every trigger accepts whatever its type.
pub const COMMON_TRIGGER_PROPERTIES: &[&str] = &[
    "id",
    "type",
    "description",
    "conditions",
    "disabled",
    "labels",
    "stopAfter",
    "allowConcurrent",
    "logLevel",
    "logToFile",
    "workerGroup",
];

/// Default property values for the tasks and triggers of a type (or of a type prefix).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PluginDefault {
    /// A full type name or a prefix of one (`io.kestra.plugin.core.log`).
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// The values to merge into the matching tasks and triggers.
    #[serde(default)]
    pub values: IndexMap<String, Value>,
    /// When true, these values override the ones written in the task.
    #[serde(default, skip_serializing_if = "is_false")]
    pub forced: bool,
}

/// A flow's concurrency limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Concurrency {
    /// Maximum number of running (or paused) executions.
    pub limit: u32,
    /// What happens to an execution over the limit.
    #[serde(default)]
    pub behavior: ConcurrencyBehavior,
}

/// What happens to an execution over the concurrency limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum ConcurrencyBehavior {
    /// Wait in state QUEUED for a free slot (the default).
    #[default]
    Queue,
    /// End CANCELLED at once.
    Cancel,
    /// End FAILED at once.
    Fail,
}

/// A flow output, computed from an expression when the execution ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlowOutput {
    /// Output id.
    pub id: String,
    /// Output type (same names as input types).
    #[serde(rename = "type")]
    pub output_type: InputType,
    /// The value, usually an expression.
    pub value: Value,
    /// Free-text description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Name shown in the UI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Whether the output must be present (default true).
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub required: bool,
    /// Other properties, kept as written.
    #[serde(flatten)]
    pub extra: IndexMap<String, Value>,
}

/// A flow-level SLA: a limit an execution must respect (`MAX_DURATION`) or a condition it must
/// meet when it ends (`EXECUTION_ASSERTION`), and what happens when it does not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Sla {
    /// SLA id, unique within the flow.
    pub id: String,
    /// What the SLA checks.
    #[serde(rename = "type")]
    pub sla_type: SlaType,
    /// What happens to an execution that breaks it.
    pub behavior: SlaBehavior,
    /// `MAX_DURATION`: the longest an execution may run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<IsoDuration>,
    /// `EXECUTION_ASSERTION`: an expression that must be true for the execution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assert: Option<String>,
    /// Labels added to an execution that breaks the SLA.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "deserialize_labels"
    )]
    #[schemars(with = "crate::flow::schema::LabelsSchema")]
    pub labels: Vec<Label>,
}

/// What a flow-level [`Sla`] checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SlaType {
    /// The execution must end within `duration`.
    MaxDuration,
    /// `assert` must hold for the execution.
    ExecutionAssertion,
}

/// What happens to an execution that breaks an [`Sla`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum SlaBehavior {
    /// The execution ends FAILED.
    Fail,
    /// The execution ends CANCELLED.
    Cancel,
    /// Only the labels are added.
    None,
}

/// A check evaluated before an execution is created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Check {
    /// Expression that must be true.
    pub condition: String,
    /// Message shown when it is false.
    pub message: String,
    /// How the message is shown (`ERROR`, `SUCCESS`, `WARNING`, `INFO`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub style: Option<String>,
    /// What happens when it is false (`BLOCK_EXECUTION`, `FAIL_EXECUTION`, `CREATE_EXECUTION`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behavior: Option<String>,
}

/// Input types (`BOOLEAN` and `ENUM` are accepted as aliases of `BOOL` and `SELECT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum InputType {
    /// Text; `validator` regex.
    String,
    /// Integer; `min`, `max`.
    Int,
    /// Floating point; `min`, `max`.
    Float,
    /// Boolean.
    #[serde(alias = "BOOLEAN")]
    Bool,
    /// Date and time (ISO-8601); `after`, `before`.
    Datetime,
    /// Date; `after`, `before`.
    Date,
    /// Time of day; `after`, `before`.
    Time,
    /// ISO-8601 duration; `min`, `max`.
    Duration,
    /// One of `values` (or of the list `expression` renders to).
    #[serde(alias = "ENUM")]
    Select,
    /// Several of `values`.
    Multiselect,
    /// A list of `itemType` values.
    Array,
    /// Any JSON value.
    Json,
    /// A YAML document.
    Yaml,
    /// A URI.
    Uri,
    /// An e-mail address.
    Email,
    /// An uploaded file, stored in internal storage.
    File,
    /// A secret string, masked in logs and the UI.
    Secret,
}

/// The names accepted for [`InputType`], aliases included.
pub const INPUT_TYPE_NAMES: &[&str] = &[
    "STRING",
    "INT",
    "FLOAT",
    "BOOL",
    "BOOLEAN",
    "DATETIME",
    "DATE",
    "TIME",
    "DURATION",
    "SELECT",
    "ENUM",
    "MULTISELECT",
    "ARRAY",
    "JSON",
    "YAML",
    "URI",
    "EMAIL",
    "FILE",
    "SECRET",
];

/// An input declaration. The value given for it is checked against these fields when an execution is
/// created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Input {
    /// Input id; dots make nested inputs (`a.b` is `inputs.a.b`).
    pub id: String,
    /// The input's type.
    #[serde(rename = "type")]
    pub input_type: InputType,
    /// Free-text description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Name shown in the UI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// A missing required input (with no `defaults`) rejects the execution. Default true.
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub required: bool,
    /// Default value (rendered with Pebble).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<Value>,
    /// Value shown pre-filled in the UI form; unlike `defaults`, not used when the input is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefill: Option<Value>,
    /// Ids of the inputs this one depends on (and a `condition`), as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depends_on: Option<Value>,
    /// STRING: regex the whole value must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validator: Option<String>,
    /// INT/FLOAT: minimum number; DURATION: minimum duration (ISO-8601 string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<Value>,
    /// INT/FLOAT: maximum number; DURATION: maximum duration (ISO-8601 string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<Value>,
    /// DATETIME/DATE/TIME: the value must be after this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// DATETIME/DATE/TIME: the value must be before this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    /// SELECT/MULTISELECT: the allowed values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<Value>>,
    /// SELECT/MULTISELECT: an expression rendering to the list of allowed values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expression: Option<String>,
    /// SELECT/MULTISELECT: accept values outside `values`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_custom_value: bool,
    /// SELECT: preselect the first value.
    #[serde(default, skip_serializing_if = "is_false")]
    pub auto_select_first: bool,
    /// ARRAY: type of the items.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item_type: Option<InputType>,
    /// FILE: accepted extensions (`.csv`), any when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_file_extensions: Option<Vec<String>>,
    /// Other properties, kept as written.
    #[serde(flatten)]
    pub extra: IndexMap<String, Value>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn labels_accept_map_and_list() {
        #[derive(Deserialize)]
        struct L {
            #[serde(deserialize_with = "deserialize_labels")]
            labels: Vec<Label>,
        }
        let a: L = serde_json::from_str(r#"{"labels":{"env":"prod","n":1}}"#).unwrap();
        let b: L = serde_json::from_str(
            r#"{"labels":[{"key":"env","value":"prod"},{"key":"n","value":"1"}]}"#,
        )
        .unwrap();
        assert_eq!(a.labels, b.labels);
        assert_eq!(
            a.labels[1],
            Label {
                key: "n".into(),
                value: "1".into()
            }
        );
    }

    #[test]
    fn task_keeps_unknown_properties_and_round_trips() {
        let json = serde_json::json!({"id": "a", "type": "x.Y", "timeout": "PT1M", "message": "hi", "n": [1, 2]});
        let task: Task = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(task.properties.len(), 2);
        assert_eq!(serde_json::to_value(&task).unwrap(), json);
    }

    #[test]
    fn input_type_aliases() {
        let t: InputType = serde_json::from_str("\"BOOLEAN\"").unwrap();
        assert_eq!(t, InputType::Bool);
        let t: InputType = serde_json::from_str("\"ENUM\"").unwrap();
        assert_eq!(t, InputType::Select);
    }
}
