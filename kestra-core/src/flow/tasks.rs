//! Typed property structs of the core tasks (declarations, defaults and validation only; their
//! runtime behaviour lives elsewhere) and [`register_core_tasks`].
//!
//! Each struct holds the type-specific properties of one task type, in camelCase, rejecting unknown
//! properties. Properties that may be written as an expression (`"{{ inputs.n }}"`) but otherwise
//! have a non-string type are [`Property<T>`]; plain strings stay `String` and are rendered at run time.

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::flow::duration::IsoDuration;
use crate::flow::model::{Input, LogLevel, Task};
use crate::flow::property::Property;
use crate::flow::registry::{ChildSlot, TaskKind, TaskRegistry, TaskType};

macro_rules! task_type {
    ($t:ty, $name:expr, $kind:ident $(, aliases = [$($a:expr),* $(,)?])? $(, children = [$($c:expr),* $(,)?])?) => {
        impl TaskType for $t {
            const TYPE: &'static str = $name;
            const ALIASES: &'static [&'static str] = &[$($($a),*)?];
            const KIND: TaskKind = TaskKind::$kind;
            const CHILDREN: &'static [ChildSlot] = &[$($($c),*)?];
            fn properties_schema(
                generator: &mut schemars::SchemaGenerator,
            ) -> Option<schemars::Schema> {
                Some(<$t as JsonSchema>::json_schema(generator))
            }
        }
    };
}

const SEQ_CHILDREN: [ChildSlot; 3] = [
    ChildSlot::List("tasks"),
    ChildSlot::List("errors"),
    ChildSlot::List("finally"),
];

// ---------------------------------------------------------------------------------------------
// Runnable tasks
// ---------------------------------------------------------------------------------------------

/// `io.kestra.plugin.core.log.Log`: logs a message (or a list of messages).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Log {
    /// A message or a list of messages.
    pub message: Value,
    /// Level (INFO by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<Property<LogLevel>>,
}
task_type!(
    Log,
    "io.kestra.plugin.core.log.Log",
    Runnable,
    aliases = ["io.kestra.core.tasks.log.Log"]
);

/// `io.kestra.plugin.core.debug.Return`: renders `format` into the output `value`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Return {
    /// The text to render.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
}
task_type!(
    Return,
    "io.kestra.plugin.core.debug.Return",
    Runnable,
    aliases = ["io.kestra.core.tasks.debugs.Return"]
);

/// `io.kestra.plugin.core.debug.Echo` (deprecated Log).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Echo {
    /// The text to log.
    pub format: String,
    /// Level (INFO by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<Property<LogLevel>>,
}
task_type!(
    Echo,
    "io.kestra.plugin.core.debug.Echo",
    Runnable,
    aliases = ["io.kestra.core.tasks.debugs.Echo"]
);

/// `io.kestra.plugin.core.output.OutputValues`: output `values` (rendered).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutputValues {
    /// The values to output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<IndexMap<String, Value>>,
}
task_type!(
    OutputValues,
    "io.kestra.plugin.core.output.OutputValues",
    Runnable,
    aliases = ["io.kestra.core.tasks.outputs.OutputValues"]
);

/// `io.kestra.plugin.core.execution.Fail`: fails (when `condition` holds, if given).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fail {
    /// Expression; fail only when it is true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<Value>,
    /// Error message ("Task failure" by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
}
task_type!(
    Fail,
    "io.kestra.plugin.core.execution.Fail",
    Runnable,
    aliases = ["io.kestra.core.tasks.executions.Fail"]
);

/// The states an Exit task can end an execution in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum ExitState {
    /// Success.
    Success,
    /// Warning.
    Warning,
    /// Killed.
    Killed,
    /// Failed.
    Failed,
    /// Cancelled.
    Cancelled,
}

/// `io.kestra.plugin.core.execution.Exit`: ends the execution early in `state`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Exit {
    /// Final state (SUCCESS by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<Property<ExitState>>,
}
task_type!(Exit, "io.kestra.plugin.core.execution.Exit", ExecutorSide);

/// `io.kestra.plugin.core.execution.Assert`: fails unless every condition is true.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Assert {
    /// Expressions that must all be true.
    pub conditions: Property<Vec<Value>>,
    /// Error message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
}
task_type!(Assert, "io.kestra.plugin.core.execution.Assert", Runnable);

/// `io.kestra.plugin.core.flow.Sleep`: waits `duration`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Sleep {
    /// How long to wait.
    pub duration: Property<IsoDuration>,
}
task_type!(
    Sleep,
    "io.kestra.plugin.core.flow.Sleep",
    Runnable,
    aliases = ["io.kestra.core.tasks.flows.Sleep"]
);

/// `io.kestra.plugin.core.http.Request`: one HTTP request; outputs `code`, `headers`, `body`, `uri`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRequest {
    /// The URI.
    pub uri: String,
    /// HTTP method (GET by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Request body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// Form data (sent as form or multipart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub form_data: Option<Value>,
    /// Content type (application/json by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Request headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Property<IndexMap<String, Value>>>,
    /// Timeouts, auth, redirects, `allowFailed`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<Value>,
    /// Deprecated spelling of `options.allowFailed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_failed: Option<Property<bool>>,
    /// TLS options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl_options: Option<Value>,
    /// Encrypt the body output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypt_body: Option<Property<bool>>,
    /// Fail when the response is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_on_empty_response: Option<Property<bool>>,
}
task_type!(
    HttpRequest,
    "io.kestra.plugin.core.http.Request",
    Runnable,
    aliases = ["io.kestra.plugin.fs.http.Request"]
);

/// `io.kestra.plugin.core.http.Download`: downloads a URI into internal storage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpDownload {
    /// The URI.
    pub uri: String,
    /// HTTP method (GET by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Request body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// Form data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub form_data: Option<Value>,
    /// Content type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Request headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Property<IndexMap<String, Value>>>,
    /// Timeouts, auth, redirects, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<Value>,
    /// TLS options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl_options: Option<Value>,
    /// Fail when the response is empty (true by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_on_empty_response: Option<Property<bool>>,
    /// File name to save as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub save_as: Option<String>,
}
task_type!(
    HttpDownload,
    "io.kestra.plugin.core.http.Download",
    Runnable,
    aliases = ["io.kestra.plugin.fs.http.Download"]
);

/// Script tasks' common properties (`io.kestra.plugin.scripts.<lang>.Commands`): commands run by an
/// interpreter in a working directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScriptCommands {
    /// The commands (a list, or an expression rendering to one).
    pub commands: Property<Vec<String>>,
    /// Commands run before `commands`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before_commands: Option<Property<Vec<String>>>,
    /// The interpreter (`["/bin/sh", "-c"]` by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interpreter: Option<Property<Vec<String>>>,
    /// Environment variables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Property<IndexMap<String, Value>>>,
    /// Files written to the working directory first (a map of path to content, or a URI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_files: Option<Value>,
    /// Glob patterns of files to keep as outputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_files: Option<Property<Vec<String>>>,
    /// Namespace files to copy into the working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_files: Option<Value>,
    /// Container image (ignored by the process runner).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_image: Option<String>,
    /// Task runner (`{type: ...Process}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_runner: Option<Value>,
    /// Deprecated runner choice (`PROCESS`, `DOCKER`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner: Option<String>,
    /// Deprecated Docker options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker: Option<Value>,
    /// A line on stderr makes the task WARNING.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning_on_std_err: Option<Property<bool>>,
    /// Stop at the first failing command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_fast: Option<Property<bool>>,
    /// Target operating system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_os: Option<String>,
}
task_type!(
    ScriptCommands,
    "io.kestra.plugin.scripts.shell.Commands",
    Runnable,
    aliases = ["io.kestra.core.tasks.scripts.Bash"]
);

/// Script tasks' `Script` variant (`io.kestra.plugin.scripts.<lang>.Script`): one inline script.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScriptInline {
    /// The script source.
    pub script: String,
    /// Commands run before the script.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before_commands: Option<Property<Vec<String>>>,
    /// The interpreter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interpreter: Option<Property<Vec<String>>>,
    /// Environment variables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Property<IndexMap<String, Value>>>,
    /// Files written to the working directory first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_files: Option<Value>,
    /// Glob patterns of files to keep as outputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_files: Option<Property<Vec<String>>>,
    /// Namespace files to copy into the working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_files: Option<Value>,
    /// Container image (ignored by the process runner).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_image: Option<String>,
    /// Task runner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_runner: Option<Value>,
    /// Deprecated runner choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner: Option<String>,
    /// Deprecated Docker options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker: Option<Value>,
    /// A line on stderr makes the task WARNING.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning_on_std_err: Option<Property<bool>>,
    /// Target operating system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_os: Option<String>,
}
task_type!(
    ScriptInline,
    "io.kestra.plugin.scripts.shell.Script",
    Runnable
);

/// `io.kestra.plugin.core.kv.Set`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KvSet {
    /// Key.
    pub key: String,
    /// Value.
    pub value: Value,
    /// Namespace (the flow's by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Overwrite an existing key (true by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overwrite: Option<Property<bool>>,
    /// Time to live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Property<IsoDuration>>,
    /// Value type (STRING, NUMBER, BOOLEAN, DATETIME, DATE, DURATION, JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_type: Option<String>,
    /// Description of the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}
task_type!(KvSet, "io.kestra.plugin.core.kv.Set", Runnable);

/// `io.kestra.plugin.core.kv.Get` (and `Delete`, same properties).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KvKey {
    /// Key.
    pub key: String,
    /// Namespace (the flow's by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Fail on a missing key (Get: false; Delete: false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_on_missing: Option<Property<bool>>,
}
task_type!(KvKey, "io.kestra.plugin.core.kv.Get", Runnable);

/// `io.kestra.plugin.core.storage.LocalFiles` (deprecated for WorkingDirectory's `inputFiles`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalFiles {
    /// Files to create (path -> content).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Value>,
    /// Glob patterns of files to send to internal storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Property<Vec<String>>>,
}
task_type!(
    LocalFiles,
    "io.kestra.plugin.core.storage.LocalFiles",
    Runnable,
    aliases = ["io.kestra.core.tasks.storages.LocalFiles"]
);

/// `io.kestra.plugin.core.storage.Concat`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Concat {
    /// Files (a list of URIs or an expression rendering to one).
    pub files: Value,
    /// Separator written between files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub separator: Option<String>,
    /// Extension of the result (`.tmp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension: Option<String>,
}
task_type!(
    Concat,
    "io.kestra.plugin.core.storage.Concat",
    Runnable,
    aliases = ["io.kestra.core.tasks.storages.Concat"]
);

/// `io.kestra.plugin.core.storage.Split`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Split {
    /// The file to split.
    pub from: String,
    /// Split by size (`10MB`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<String>,
    /// Split into this many files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<Property<u32>>,
    /// Split every this many rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<Property<u32>>,
    /// Row separator (`\n`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub separator: Option<String>,
}
task_type!(
    Split,
    "io.kestra.plugin.core.storage.Split",
    Runnable,
    aliases = ["io.kestra.core.tasks.storages.Split"]
);

/// `io.kestra.plugin.core.storage.Size`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Size {
    /// The file.
    pub uri: String,
}
task_type!(
    Size,
    "io.kestra.plugin.core.storage.Size",
    Runnable,
    aliases = ["io.kestra.core.tasks.storages.Size"]
);

/// `io.kestra.plugin.core.storage.Delete`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StorageDelete {
    /// The file.
    pub uri: String,
    /// Fail when the file does not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_on_missing: Option<Property<bool>>,
}
task_type!(
    StorageDelete,
    "io.kestra.plugin.core.storage.Delete",
    Runnable,
    aliases = ["io.kestra.core.tasks.storages.Delete"]
);

/// `io.kestra.plugin.core.storage.PurgeCurrentExecutionFiles` (no properties).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PurgeCurrentExecutionFiles {}
task_type!(
    PurgeCurrentExecutionFiles,
    "io.kestra.plugin.core.storage.PurgeCurrentExecutionFiles",
    Runnable,
    aliases = [
        "io.kestra.core.tasks.storages.PurgeCurrentExecutionFiles",
        "io.kestra.plugin.core.storage.PurgeExecution"
    ]
);

/// `io.kestra.plugin.core.storage.Write`: writes `content` to a file in internal storage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Write {
    /// The content.
    pub content: String,
    /// Extension of the file (`.ion`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension: Option<String>,
}
task_type!(Write, "io.kestra.plugin.core.storage.Write", Runnable);

/// `io.kestra.plugin.core.state.Set`: merges `data` into a JSON state of the flow (or namespace).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StateSet {
    /// State name (`default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The data to merge into the state (a map, or an expression rendering to one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    /// Share the state across the namespace instead of the flow (false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<Property<bool>>,
    /// Key the state by the task run's value too (true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taskrun_value: Option<Property<bool>>,
}
task_type!(
    StateSet,
    "io.kestra.plugin.core.state.Set",
    Runnable,
    aliases = ["io.kestra.core.tasks.states.Set"]
);

/// `io.kestra.plugin.core.state.Get` (and `Delete`, same properties): reads (deletes) a state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StateKey {
    /// State name (`default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Share the state across the namespace instead of the flow (false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<Property<bool>>,
    /// Key the state by the task run's value too (true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taskrun_value: Option<Property<bool>>,
    /// Fail when the state does not exist (false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_on_missing: Option<Property<bool>>,
}
task_type!(
    StateKey,
    "io.kestra.plugin.core.state.Get",
    Runnable,
    aliases = ["io.kestra.core.tasks.states.Get"]
);

/// `io.kestra.plugin.core.log.Fetch`: an execution's logs into a file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogFetch {
    /// Namespace of the execution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Flow id of the execution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_id: Option<String>,
    /// Execution id (the current one by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<String>,
    /// Only the logs of these tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks_id: Option<Property<Vec<String>>>,
    /// Minimum level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<Property<LogLevel>>,
}
task_type!(
    LogFetch,
    "io.kestra.plugin.core.log.Fetch",
    Runnable,
    aliases = ["io.kestra.core.tasks.log.Fetch"]
);

/// `io.kestra.plugin.core.execution.Count`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecutionCount {
    /// Namespaces to count in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<Property<Vec<String>>>,
    /// Flows (`[{namespace, flowId}]`) to count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flows: Option<Value>,
    /// States to count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub states: Option<Property<Vec<String>>>,
    /// Start of the range.
    pub start_date: String,
    /// End of the range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_date: Option<String>,
    /// Expression on `count` selecting the flows to output.
    pub expression: String,
}
task_type!(
    ExecutionCount,
    "io.kestra.plugin.core.execution.Count",
    Runnable,
    aliases = ["io.kestra.core.tasks.executions.Counts"]
);

/// `io.kestra.plugin.core.execution.Resume`: resumes a paused execution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecutionResume {
    /// Namespace of the execution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Flow id of the execution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_id: Option<String>,
    /// Execution id (the current one by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<String>,
    /// `onResume` inputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<IndexMap<String, Value>>,
}
task_type!(
    ExecutionResume,
    "io.kestra.plugin.core.execution.Resume",
    Runnable
);

/// `io.kestra.plugin.core.execution.PurgeExecutions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PurgeExecutions {
    /// Namespace filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Flow id filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_id: Option<String>,
    /// Start of the range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_date: Option<String>,
    /// End of the range.
    pub end_date: String,
    /// States filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub states: Option<Property<Vec<String>>>,
    /// Purge executions (true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purge_execution: Option<Property<bool>>,
    /// Purge logs (true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purge_log: Option<Property<bool>>,
    /// Purge metrics (true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purge_metric: Option<Property<bool>>,
    /// Purge internal storage files (true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purge_storage: Option<Property<bool>>,
    /// Executions read per repository query (100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<Property<i64>>,
}
task_type!(
    PurgeExecutions,
    "io.kestra.plugin.core.execution.PurgeExecutions",
    Runnable,
    aliases = [
        "io.kestra.core.tasks.storages.Purge",
        "io.kestra.plugin.core.storage.Purge"
    ]
);

/// `io.kestra.plugin.core.trigger.Toggle`: enables or disables a trigger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TriggerToggle {
    /// Namespace of the flow (the current one by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Flow id (the current one by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_id: Option<String>,
    /// Trigger id.
    pub trigger: String,
    /// Enable (true) or disable (false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<Property<bool>>,
}
task_type!(
    TriggerToggle,
    "io.kestra.plugin.core.trigger.Toggle",
    Runnable,
    aliases = ["io.kestra.core.tasks.trigger.Toggle"]
);

/// `io.kestra.plugin.core.templating.TemplatedTask`: renders `spec` into a task and runs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TemplatedTask {
    /// The YAML of the task to run, rendered first.
    pub spec: String,
}
task_type!(
    TemplatedTask,
    "io.kestra.plugin.core.templating.TemplatedTask",
    Runnable
);

/// `io.kestra.plugin.core.execution.Labels`: updates the execution's labels (in the executor).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecutionLabels {
    /// A map, a list of `{key, value}`, or an expression rendering to one.
    pub labels: Value,
}
task_type!(
    ExecutionLabels,
    "io.kestra.plugin.core.execution.Labels",
    ExecutorSide
);

// ---------------------------------------------------------------------------------------------
// Flowable tasks
// ---------------------------------------------------------------------------------------------

/// `io.kestra.plugin.core.flow.Sequential` (and `AllowFailure`, same properties).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Sequential {
    /// Child tasks, run one after the other.
    pub tasks: Vec<Task>,
    /// Run when a child fails.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<Task>,
    /// Run after the children whatever happened.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finally: Vec<Task>,
}
task_type!(
    Sequential,
    "io.kestra.plugin.core.flow.Sequential",
    Flowable,
    aliases = ["io.kestra.core.tasks.flows.Sequential"],
    children = [SEQ_CHILDREN[0], SEQ_CHILDREN[1], SEQ_CHILDREN[2]]
);

/// `io.kestra.plugin.core.flow.AllowFailure`: a Sequential whose failure counts as WARNING.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AllowFailure {
    /// Child tasks.
    pub tasks: Vec<Task>,
    /// Run when a child fails.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<Task>,
    /// Run after the children whatever happened.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finally: Vec<Task>,
}
task_type!(
    AllowFailure,
    "io.kestra.plugin.core.flow.AllowFailure",
    Flowable,
    aliases = ["io.kestra.core.tasks.flows.AllowFailure"],
    children = [SEQ_CHILDREN[0], SEQ_CHILDREN[1], SEQ_CHILDREN[2]]
);

/// `io.kestra.plugin.core.flow.Parallel`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Parallel {
    /// Child tasks, run concurrently.
    pub tasks: Vec<Task>,
    /// Maximum number of children running at once (0 = unlimited, the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrent: Option<Property<u32>>,
    /// Run when a child fails.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<Task>,
    /// Run after the children whatever happened.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finally: Vec<Task>,
}
task_type!(
    Parallel,
    "io.kestra.plugin.core.flow.Parallel",
    Flowable,
    aliases = ["io.kestra.core.tasks.flows.Parallel"],
    children = [SEQ_CHILDREN[0], SEQ_CHILDREN[1], SEQ_CHILDREN[2]]
);

/// `io.kestra.plugin.core.flow.Switch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Switch {
    /// The value (rendered) selecting a case.
    pub value: Value,
    /// Task lists by case key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cases: Option<IndexMap<String, Vec<Task>>>,
    /// Tasks run when no case matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<Vec<Task>>,
    /// Run when a child fails.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<Task>,
    /// Run after the children whatever happened.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finally: Vec<Task>,
}
task_type!(
    Switch,
    "io.kestra.plugin.core.flow.Switch",
    Flowable,
    aliases = ["io.kestra.core.tasks.flows.Switch"],
    children = [
        ChildSlot::MapOfLists("cases"),
        ChildSlot::List("defaults"),
        ChildSlot::List("errors"),
        ChildSlot::List("finally")
    ]
);

/// `io.kestra.plugin.core.flow.If`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct If {
    /// The condition (an expression, or a boolean).
    pub condition: Value,
    /// Tasks run when the condition is true.
    pub then: Vec<Task>,
    /// Tasks run when it is false.
    #[serde(default, rename = "else", skip_serializing_if = "Option::is_none")]
    pub else_tasks: Option<Vec<Task>>,
    /// Run when a child fails.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<Task>,
    /// Run after the children whatever happened.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finally: Vec<Task>,
}
task_type!(
    If,
    "io.kestra.plugin.core.flow.If",
    Flowable,
    aliases = ["io.kestra.core.tasks.flows.If"],
    children = [
        ChildSlot::List("then"),
        ChildSlot::List("else"),
        ChildSlot::List("errors"),
        ChildSlot::List("finally")
    ]
);

/// `io.kestra.plugin.core.flow.ForEach`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ForEach {
    /// The values (a list, or a JSON string / expression rendering to one).
    pub values: Value,
    /// Iterations running at once (1 by default, 0 = unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_limit: Option<Property<u32>>,
    /// Tasks run for each value.
    pub tasks: Vec<Task>,
    /// Run when a child fails.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<Task>,
    /// Run after the children whatever happened.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finally: Vec<Task>,
}
task_type!(
    ForEach,
    "io.kestra.plugin.core.flow.ForEach",
    Flowable,
    children = [SEQ_CHILDREN[0], SEQ_CHILDREN[1], SEQ_CHILDREN[2]]
);

/// Legacy `EachSequential` / `EachParallel` (`value` instead of `values`); see [`EachLegacy::to_for_each`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EachLegacy {
    /// The values (a list, or a JSON string / expression rendering to one).
    pub value: Value,
    /// EachParallel: iterations running at once (0 = unlimited, the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrent: Option<Property<u32>>,
    /// Tasks run for each value.
    pub tasks: Vec<Task>,
    /// Run when a child fails.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<Task>,
    /// Run after the children whatever happened.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finally: Vec<Task>,
}

/// The legacy name of sequential loops.
pub const EACH_SEQUENTIAL: &str = "io.kestra.core.tasks.flows.EachSequential";
/// The legacy name of parallel loops.
pub const EACH_PARALLEL: &str = "io.kestra.core.tasks.flows.EachParallel";

impl EachLegacy {
    /// The equivalent ForEach: EachSequential runs one value at a time, EachParallel `concurrent`
    /// at a time (unlimited by default).
    pub fn to_for_each(&self, parallel: bool) -> ForEach {
        let concurrency_limit = if parallel {
            Some(self.concurrent.clone().unwrap_or(Property::Value(0)))
        } else {
            Some(Property::Value(1))
        };
        ForEach {
            values: self.value.clone(),
            concurrency_limit,
            tasks: self.tasks.clone(),
            errors: self.errors.clone(),
            finally: self.finally.clone(),
        }
    }
}
task_type!(
    EachLegacy,
    EACH_SEQUENTIAL,
    Flowable,
    aliases = ["io.kestra.plugin.core.flow.EachSequential"],
    children = [SEQ_CHILDREN[0], SEQ_CHILDREN[1], SEQ_CHILDREN[2]]
);

/// One node of a Dag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DagTask {
    /// The task.
    pub task: Task,
    /// Ids of the tasks that must end first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depends_on: Option<Vec<String>>,
}

/// `io.kestra.plugin.core.flow.Dag`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Dag {
    /// The nodes.
    pub tasks: Vec<DagTask>,
    /// Maximum number of tasks running at once (0 = unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrent: Option<Property<u32>>,
    /// Run when a child fails.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<Task>,
    /// Run after the children whatever happened.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finally: Vec<Task>,
}
task_type!(
    Dag,
    "io.kestra.plugin.core.flow.Dag",
    Flowable,
    aliases = ["io.kestra.core.tasks.flows.Dag"],
    children = [
        ChildSlot::DagList("tasks"),
        ChildSlot::List("errors"),
        ChildSlot::List("finally")
    ]
);

/// What a Pause does when its `pauseDuration` elapses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum PauseBehavior {
    /// Resume (SUCCESS).
    Resume,
    /// End WARNING.
    Warn,
    /// End FAILED.
    Fail,
    /// Cancel the execution.
    Cancel,
}

/// `io.kestra.plugin.core.flow.Pause`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Pause {
    /// How long to pause (alias `delay`); forever (until resumed) when absent.
    #[serde(default, alias = "delay", skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-aliases" = ["delay"]))]
    pub pause_duration: Option<Property<IsoDuration>>,
    /// What happens when `pauseDuration` elapses (RESUME by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behavior: Option<Property<PauseBehavior>>,
    /// Inputs expected on resume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_resume: Option<Vec<Input>>,
    /// Deprecated: tasks run after the pause.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks: Option<Vec<Task>>,
}
task_type!(
    Pause,
    "io.kestra.plugin.core.flow.Pause",
    Flowable,
    aliases = ["io.kestra.core.tasks.flows.Pause"],
    children = [ChildSlot::List("tasks")]
);

/// The `checkFrequency` of LoopUntil and WaitFor (Kestra's defaults: interval PT1S,
/// maxIterations 100, maxDuration PT1H).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckFrequency {
    /// Delay between iterations (PT1S by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Property<IsoDuration>>,
    /// Maximum number of iterations (100 by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_iterations: Option<Property<u32>>,
    /// Maximum total duration (PT1H by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_duration: Option<Property<IsoDuration>>,
}

/// `io.kestra.plugin.core.flow.LoopUntil`, and (registered under its own name, see
/// [`WAIT_FOR`]) `io.kestra.plugin.core.flow.WaitFor`, whose `condition` reads the other way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoopUntil {
    /// Checked after each run of `tasks`: LoopUntil ends when it is true, WaitFor when it is
    /// false.
    pub condition: Value,
    /// The body, run at least once.
    pub tasks: Vec<Task>,
    /// Interval and limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_frequency: Option<CheckFrequency>,
    /// Fail when a limit is reached (false by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_on_max_reached: Option<Property<bool>>,
    /// Run when a child fails.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<Task>,
    /// Run after the children whatever happened.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finally: Vec<Task>,
}
task_type!(
    LoopUntil,
    "io.kestra.plugin.core.flow.LoopUntil",
    Flowable,
    children = [SEQ_CHILDREN[0], SEQ_CHILDREN[1], SEQ_CHILDREN[2]]
);

/// `io.kestra.plugin.core.flow.WaitFor`: the properties of [`LoopUntil`]; its tasks run again
/// while `condition` is true (Kestra's `WaitFor`).
pub const WAIT_FOR: &str = "io.kestra.plugin.core.flow.WaitFor";

/// WorkingDirectory's `cache`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cache {
    /// Glob patterns of the cached files.
    pub patterns: Vec<String>,
    /// How long the cache lives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<IsoDuration>,
}

/// `io.kestra.plugin.core.flow.WorkingDirectory`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkingDirectory {
    /// Children, run on one worker in one directory.
    pub tasks: Vec<Task>,
    /// Files written to the directory first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_files: Option<Value>,
    /// Glob patterns of files to keep as outputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_files: Option<Property<Vec<String>>>,
    /// Namespace files to copy into the directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_files: Option<Value>,
    /// Cache of files between executions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<Cache>,
    /// Run when a child fails.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<Task>,
    /// Run after the children whatever happened.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finally: Vec<Task>,
}
task_type!(
    WorkingDirectory,
    "io.kestra.plugin.core.flow.WorkingDirectory",
    Flowable,
    aliases = ["io.kestra.core.tasks.flows.WorkingDirectory"],
    children = [SEQ_CHILDREN[0], SEQ_CHILDREN[1], SEQ_CHILDREN[2]]
);

/// How a restarted Subflow task behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RestartBehavior {
    /// Restart the failed child execution.
    RetryFailed,
    /// Start a new child execution.
    NewExecution,
}

/// `io.kestra.plugin.core.flow.Subflow` (legacy `io.kestra.core.tasks.flows.Flow`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subflow {
    /// Namespace of the flow to run.
    pub namespace: String,
    /// Id of the flow to run.
    pub flow_id: String,
    /// Revision (the latest by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<Property<i32>>,
    /// Inputs of the child execution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<IndexMap<String, Value>>,
    /// Labels of the child execution (map or list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Value>,
    /// Wait for the child to end (true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<Property<bool>>,
    /// Fail when the child fails (true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transmit_failed: Option<Property<bool>>,
    /// Give the child the parent's labels (false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inherit_labels: Option<Property<bool>>,
    /// When the child should start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_date: Option<String>,
    /// Restart behaviour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_behavior: Option<RestartBehavior>,
    /// Deprecated: outputs computed from the child.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<IndexMap<String, Value>>,
}
task_type!(
    Subflow,
    "io.kestra.plugin.core.flow.Subflow",
    Executable,
    aliases = [
        "io.kestra.core.tasks.flows.Subflow",
        "io.kestra.core.tasks.flows.Flow"
    ]
);

/// ForEachItem's `batch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Batch {
    /// Rows per batch (1 by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<Property<u32>>,
    /// Bytes per batch (`10MB`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<String>,
    /// Number of batches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<Property<u32>>,
    /// Row separator (`\n`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub separator: Option<String>,
}

/// `io.kestra.plugin.core.flow.ForEachItem`: a subflow execution per batch of `items`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ForEachItem {
    /// A storage URI.
    pub items: String,
    /// How to cut the file into batches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<Batch>,
    /// Namespace of the flow to run.
    pub namespace: String,
    /// Id of the flow to run.
    pub flow_id: String,
    /// Revision (the latest by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<Property<i32>>,
    /// Inputs of each child execution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<IndexMap<String, Value>>,
    /// Labels of the child executions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Value>,
    /// Wait for the children to end (true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<Property<bool>>,
    /// Fail when a child fails (true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transmit_failed: Option<Property<bool>>,
    /// Give the children the parent's labels (false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inherit_labels: Option<Property<bool>>,
    /// When the children should start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_date: Option<String>,
    /// Restart behaviour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_behavior: Option<RestartBehavior>,
    /// Run when the ForEachItem fails.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<Task>,
    /// Run after the ForEachItem whatever happened.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finally: Vec<Task>,
}
task_type!(
    ForEachItem,
    "io.kestra.plugin.core.flow.ForEachItem",
    Executable,
    aliases = ["io.kestra.core.tasks.flows.ForEachItem"],
    children = [SEQ_CHILDREN[1], SEQ_CHILDREN[2]]
);

/// The script languages whose `Commands` / `Script` tasks run like the shell ones, with an
/// interpreter in a process.
pub const SCRIPT_LANGUAGES: &[&str] = &["shell", "python", "node"];

/// Registers every core task (and legacy alias) in `registry`.
pub fn register_core_tasks(registry: &mut TaskRegistry) {
    registry
        .register::<Log>()
        .register::<Return>()
        .register::<Echo>()
        .register::<OutputValues>()
        .register::<Fail>()
        .register::<Exit>()
        .register::<Assert>()
        .register::<Sleep>()
        .register::<HttpRequest>()
        .register::<HttpDownload>()
        .register::<ScriptCommands>()
        .register::<ScriptInline>()
        .register_named::<ScriptCommands>("io.kestra.plugin.scripts.python.Commands", &[])
        .register_named::<ScriptInline>("io.kestra.plugin.scripts.python.Script", &[])
        .register_named::<ScriptCommands>("io.kestra.plugin.scripts.node.Commands", &[])
        .register_named::<ScriptInline>("io.kestra.plugin.scripts.node.Script", &[])
        .register::<KvSet>()
        .register::<KvKey>()
        .register_named::<KvKey>("io.kestra.plugin.core.kv.Delete", &[])
        .register::<LocalFiles>()
        .register::<Concat>()
        .register::<Split>()
        .register::<Size>()
        .register::<StorageDelete>()
        .register::<PurgeCurrentExecutionFiles>()
        .register::<Write>()
        .register::<StateSet>()
        .register::<StateKey>()
        .register_named::<StateKey>(
            "io.kestra.plugin.core.state.Delete",
            &["io.kestra.core.tasks.states.Delete"],
        )
        .register::<LogFetch>()
        .register::<ExecutionCount>()
        .register::<ExecutionResume>()
        .register::<PurgeExecutions>()
        .register::<TriggerToggle>()
        .register::<TemplatedTask>()
        .register::<ExecutionLabels>()
        .register::<Sequential>()
        .register::<AllowFailure>()
        .register::<Parallel>()
        .register::<Switch>()
        .register::<If>()
        .register::<ForEach>()
        .register::<EachLegacy>()
        .register_named::<EachLegacy>(EACH_PARALLEL, &["io.kestra.plugin.core.flow.EachParallel"])
        .register::<Dag>()
        .register::<Pause>()
        .register::<LoopUntil>()
        .register_named::<LoopUntil>(WAIT_FOR, &[])
        .register::<WorkingDirectory>()
        .register::<Subflow>()
        .register::<ForEachItem>();
}
