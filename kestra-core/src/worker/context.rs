//! The [`RunContext`] a runnable task runs with: who it is (execution, task run, attempt), the
//! expression variables and rendering helpers, a [`TaskLogger`] and metrics going to a
//! [`TelemetrySink`], internal storage scoped to the execution's namespace, a lazily created working
//! directory and the [`CancellationToken`] that kill and `timeout` fire.
//!
//! Tests and embedders build one with [`RunContext::builder`] (or [`RunContext::for_test`], which
//! collects logs and metrics in a [`MemorySink`]).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use chrono::Utc;
use futures::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use crate::expression::{ExpressionEngine, ExpressionHost};
use crate::flow::model::{LogLevel, Task};
use crate::flow::property::Property;
use crate::flow::registry::TaskRegistry;
use crate::model::{Level, LogEntry, MetricEntry, MetricType, State, StateType, TaskRun};
use crate::storage::{ByteStream, InternalStorage, InternalStorageExt, StorageError, StoragePath};
use crate::worker::kv::KvStore;
use crate::worker::runner::{RunnerRegistry, TaskError};
use crate::worker::services::ExecutionServices;

/// Where task logs and metrics go. The worker's sink batches them onto the queue; tests use a
/// [`MemorySink`].
pub trait TelemetrySink: Send + Sync {
    /// One log line (already filtered by the task's `logLevel`).
    fn log(&self, entry: LogEntry);
    /// One metric point.
    fn metric(&self, entry: MetricEntry);
}

/// A sink that keeps everything in memory (tests, embedding without a queue).
#[derive(Debug, Clone, Default)]
pub struct MemorySink {
    logs: Arc<Mutex<Vec<LogEntry>>>,
    metrics: Arc<Mutex<Vec<MetricEntry>>>,
}

impl MemorySink {
    /// A new empty sink.
    pub fn new() -> MemorySink {
        MemorySink::default()
    }

    /// Every log line received so far.
    pub fn logs(&self) -> Vec<LogEntry> {
        self.logs.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Every metric received so far.
    pub fn metrics(&self) -> Vec<MetricEntry> {
        self.metrics.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Whether a log line at `level` contains `needle`.
    pub fn has_log(&self, level: Level, needle: &str) -> bool {
        self.logs()
            .iter()
            .any(|l| l.level == level && l.message.contains(needle))
    }
}

impl TelemetrySink for MemorySink {
    fn log(&self, entry: LogEntry) {
        if let Ok(mut logs) = self.logs.lock() {
            logs.push(entry);
        }
    }
    fn metric(&self, entry: MetricEntry) {
        if let Ok(mut metrics) = self.metrics.lock() {
            metrics.push(entry);
        }
    }
}

/// Who is running: the identity stamped on every log line and metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunIdentity {
    /// Tenant.
    pub tenant_id: String,
    /// Flow namespace.
    pub namespace: String,
    /// Flow id.
    pub flow_id: String,
    /// Execution id.
    pub execution_id: String,
    /// Task id.
    pub task_id: String,
    /// Task run id.
    pub task_run_id: String,
    /// Attempt number, from 1.
    pub attempt: u32,
}

/// Converts a flow `logLevel` to a log [`Level`].
pub fn level_of(level: LogLevel) -> Level {
    match level {
        LogLevel::Trace => Level::Trace,
        LogLevel::Debug => Level::Debug,
        LogLevel::Info => Level::Info,
        LogLevel::Warn => Level::Warn,
        LogLevel::Error => Level::Error,
    }
}

/// The logger of one task run attempt: lines below the task's `logLevel` are dropped, the others
/// go to the sink stamped with the run's identity.
#[derive(Clone)]
pub struct TaskLogger {
    identity: Arc<RunIdentity>,
    min_level: Level,
    sink: Arc<dyn TelemetrySink>,
}

impl std::fmt::Debug for TaskLogger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskLogger")
            .field("identity", &self.identity)
            .field("min_level", &self.min_level)
            .finish_non_exhaustive()
    }
}

impl TaskLogger {
    /// A logger for `identity` keeping lines at `min_level` and above.
    pub fn new(identity: Arc<RunIdentity>, min_level: Level, sink: Arc<dyn TelemetrySink>) -> Self {
        TaskLogger {
            identity,
            min_level,
            sink,
        }
    }

    /// Log a line at `level`.
    pub fn log(&self, level: Level, message: impl Into<String>) {
        if level < self.min_level {
            return;
        }
        // a Log task or a script may hand over megabytes in one line: keep at most MAX_LOG_LINE
        let message = crate::limits::truncate_log_line(message.into());
        tracing::debug!(
            execution_id = %self.identity.execution_id,
            task_run_id = %self.identity.task_run_id,
            task_id = %self.identity.task_id,
            level = %level,
            "{message}"
        );
        self.sink.log(LogEntry {
            id: crate::model::new_id(),
            tenant_id: self.identity.tenant_id.clone(),
            namespace: self.identity.namespace.clone(),
            flow_id: self.identity.flow_id.clone(),
            task_id: Some(self.identity.task_id.clone()),
            execution_id: Some(self.identity.execution_id.clone()),
            task_run_id: Some(self.identity.task_run_id.clone()),
            attempt_number: Some(self.identity.attempt.saturating_sub(1)),
            trigger_id: None,
            timestamp: Utc::now(),
            level,
            thread: None,
            message,
        });
    }

    /// TRACE.
    pub fn trace(&self, message: impl Into<String>) {
        self.log(Level::Trace, message);
    }
    /// DEBUG.
    pub fn debug(&self, message: impl Into<String>) {
        self.log(Level::Debug, message);
    }
    /// INFO.
    pub fn info(&self, message: impl Into<String>) {
        self.log(Level::Info, message);
    }
    /// WARN.
    pub fn warn(&self, message: impl Into<String>) {
        self.log(Level::Warn, message);
    }
    /// ERROR.
    pub fn error(&self, message: impl Into<String>) {
        self.log(Level::Error, message);
    }
}

/// The working directory of an attempt.
#[derive(Debug)]
enum WorkDir {
    /// Not created yet.
    Unset,
    /// Created for this attempt; removed when the context is dropped.
    Owned(tempfile::TempDir),
    /// Owned by someone else (a WorkingDirectory parent); kept.
    Shared(PathBuf),
}

/// Runs a storage future from synchronous code (expression functions): on a multi-threaded Tokio
/// runtime through `block_in_place`, elsewhere on a helper thread with its own small runtime.
fn block_on_storage<F>(fut: F) -> Result<F::Output, String>
where
    F: Future + Send,
    F::Output: Send,
{
    if let Ok(handle) = tokio::runtime::Handle::try_current()
        && handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
    {
        return Ok(tokio::task::block_in_place(|| handle.block_on(fut)));
    }
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map(|rt| rt.block_on(fut))
                    .map_err(|e| format!("cannot start a runtime for storage access: {e}"))
            })
            .join()
            .map_err(|_| "storage access panicked".to_string())?
    })
}

/// The [`ExpressionHost`] of a task run: `read()`, `fileSize()`, `fileExists()` on internal storage
/// (only under the execution's namespace) and `kv()` from the [`KvStore`].
pub struct WorkerHost {
    storage: Arc<dyn InternalStorage>,
    tenant: String,
    namespace: String,
    kv: KvStore,
}

impl WorkerHost {
    /// A host for runs of `namespace` in `tenant`.
    pub fn new(storage: Arc<dyn InternalStorage>, tenant: &str, namespace: &str) -> WorkerHost {
        WorkerHost {
            kv: KvStore::new(storage.clone(), tenant),
            storage,
            tenant: tenant.to_string(),
            namespace: namespace.to_string(),
        }
    }

    fn path(&self, uri: &str) -> Result<StoragePath, String> {
        readable_path(&self.namespace, uri).map_err(|e| e.to_string())
    }
}

/// Parses `uri` and checks it lies under `namespace`'s storage prefix.
pub fn readable_path(namespace: &str, uri: &str) -> Result<StoragePath, StorageError> {
    let path = StoragePath::parse(uri.trim())?;
    let scope = StoragePath::namespace(namespace)?;
    if !path.starts_with(&scope) {
        return Err(StorageError::Forbidden {
            uri: uri.to_string(),
            scope: format!("namespace '{namespace}' ({})", scope.to_uri()),
        });
    }
    Ok(path)
}

impl ExpressionHost for WorkerHost {
    fn read_file(&self, uri: &str) -> Result<String, String> {
        let path = self.path(uri)?;
        let bytes = block_on_storage(self.storage.get_bytes(&self.tenant, &path))?
            .map_err(|e| e.to_string())?;
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("file '{uri}' is not UTF-8 text"))
    }

    fn file_size(&self, uri: &str) -> Result<u64, String> {
        let path = self.path(uri)?;
        block_on_storage(self.storage.size(&self.tenant, &path))?.map_err(|e| e.to_string())
    }

    fn file_exists(&self, uri: &str) -> Result<bool, String> {
        let path = self.path(uri)?;
        block_on_storage(self.storage.exists(&self.tenant, &path))?.map_err(|e| e.to_string())
    }

    fn file_uri(&self, path: &str) -> Result<String, String> {
        let ns = StoragePath::namespace(&self.namespace).map_err(|e| e.to_string())?;
        let file = ns
            .join("_files")
            .and_then(|p| p.join(path))
            .map_err(|e| e.to_string())?;
        Ok(file.to_uri())
    }

    fn kv(&self, namespace: Option<&str>, key: &str) -> Result<Option<Value>, String> {
        let ns = namespace.unwrap_or(&self.namespace).to_string();
        block_on_storage(self.kv.get(&ns, key))?
            .map(|entry| entry.map(|e| e.value))
            .map_err(|e| e.to_string())
    }

    fn error_logs(&self) -> Result<Vec<Value>, String> {
        Err("errorLogs() is not available on workers".into())
    }
}

/// Sets a top-level variable (turning a non-object context into an object first).
pub fn set_variable(variables: &mut Value, key: &str, value: Value) {
    if !variables.is_object() {
        *variables = Value::Object(Map::new());
    }
    if let Value::Object(map) = variables {
        map.insert(key.to_string(), value);
    }
}

/// Everything a task attempt runs with. See the module documentation.
pub struct RunContext {
    identity: Arc<RunIdentity>,
    task: Task,
    task_run: TaskRun,
    variables: Value,
    expr: Arc<ExpressionEngine>,
    storage: Arc<dyn InternalStorage>,
    host: Arc<dyn ExpressionHost>,
    logger: TaskLogger,
    sink: Arc<dyn TelemetrySink>,
    workdir: WorkDir,
    cancel: CancellationToken,
    task_registry: Arc<TaskRegistry>,
    runners: Arc<RunnerRegistry>,
    worker_id: Option<String>,
    services: Option<Arc<dyn ExecutionServices>>,
}

impl std::fmt::Debug for RunContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunContext")
            .field("identity", &self.identity)
            .field("task_type", &self.task.task_type)
            .field("workdir", &self.workdir)
            .finish_non_exhaustive()
    }
}

/// Builds a [`RunContext`]; every part but the task, its task run, the variables and the storage
/// has a default (a default expression engine, a [`MemorySink`], a fresh cancellation token, the
/// core registries, attempt 1).
pub struct RunContextBuilder {
    task: Task,
    task_run: TaskRun,
    variables: Value,
    storage: Arc<dyn InternalStorage>,
    expr: Option<Arc<ExpressionEngine>>,
    sink: Option<Arc<dyn TelemetrySink>>,
    cancel: Option<CancellationToken>,
    task_registry: Option<Arc<TaskRegistry>>,
    runners: Option<Arc<RunnerRegistry>>,
    attempt: u32,
    shared_dir: Option<PathBuf>,
    worker_id: Option<String>,
    services: Option<Arc<dyn ExecutionServices>>,
}

impl RunContextBuilder {
    /// The expression engine.
    pub fn expression_engine(mut self, expr: Arc<ExpressionEngine>) -> Self {
        self.expr = Some(expr);
        self
    }
    /// Where logs and metrics go.
    pub fn sink(mut self, sink: Arc<dyn TelemetrySink>) -> Self {
        self.sink = Some(sink);
        self
    }
    /// The token that kill / timeout cancel.
    pub fn cancellation(mut self, token: CancellationToken) -> Self {
        self.cancel = Some(token);
        self
    }
    /// The task registry (property decoding) and runner registry (WorkingDirectory children).
    pub fn registries(mut self, tasks: Arc<TaskRegistry>, runners: Arc<RunnerRegistry>) -> Self {
        self.task_registry = Some(tasks);
        self.runners = Some(runners);
        self
    }
    /// The attempt number (from 1).
    pub fn attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt.max(1);
        self
    }
    /// Use an existing directory as working directory (kept after the run).
    pub fn working_dir(mut self, dir: PathBuf) -> Self {
        self.shared_dir = Some(dir);
        self
    }
    /// The worker's id.
    pub fn worker_id(mut self, id: impl Into<String>) -> Self {
        self.worker_id = Some(id.into());
        self
    }

    /// Access to other executions, logs and triggers (tasks that read the repository need it).
    pub fn services(mut self, services: Option<Arc<dyn ExecutionServices>>) -> Self {
        self.services = services;
        self
    }

    /// Builds the context.
    pub fn build(self) -> RunContext {
        let identity = Arc::new(RunIdentity {
            tenant_id: self.task_run.tenant_id.clone(),
            namespace: self.task_run.namespace.clone(),
            flow_id: self.task_run.flow_id.clone(),
            execution_id: self.task_run.execution_id.clone(),
            task_id: self.task_run.task_id.clone(),
            task_run_id: self.task_run.id.clone(),
            attempt: self.attempt,
        });
        let sink: Arc<dyn TelemetrySink> = self
            .sink
            .unwrap_or_else(|| Arc::new(MemorySink::new()) as Arc<dyn TelemetrySink>);
        let min_level = self.task.log_level.map(level_of).unwrap_or(Level::Trace);
        let host: Arc<dyn ExpressionHost> = Arc::new(WorkerHost::new(
            self.storage.clone(),
            &identity.tenant_id,
            &identity.namespace,
        ));
        let mut variables = match self.variables {
            Value::Object(m) => Value::Object(m),
            _ => Value::Object(Map::new()),
        };
        let workdir = match self.shared_dir {
            Some(dir) => {
                set_variable(&mut variables, "workingDir", json!(dir.to_string_lossy()));
                WorkDir::Shared(dir)
            }
            None => WorkDir::Unset,
        };
        RunContext {
            logger: TaskLogger::new(identity.clone(), min_level, sink.clone()),
            identity,
            task: self.task,
            task_run: self.task_run,
            variables,
            expr: self.expr.unwrap_or_default(),
            storage: self.storage,
            host,
            sink,
            workdir,
            cancel: self.cancel.unwrap_or_default(),
            task_registry: self.task_registry.unwrap_or_default(),
            runners: self
                .runners
                .unwrap_or_else(|| Arc::new(RunnerRegistry::core())),
            worker_id: self.worker_id,
            services: self.services,
        }
    }
}

/// Namespace of the runs built by [`RunContext::for_test`].
pub const TEST_NAMESPACE: &str = "company.team";
/// Flow id of the runs built by [`RunContext::for_test`].
pub const TEST_FLOW_ID: &str = "test-flow";

impl RunContext {
    /// A builder for a run of `task` as `task_run`, rendering with `variables` (a JSON object: flow,
    /// execution, taskrun, outputs, inputs, ...) and storing files in `storage`.
    pub fn builder(
        task: Task,
        task_run: TaskRun,
        variables: Value,
        storage: Arc<dyn InternalStorage>,
    ) -> RunContextBuilder {
        RunContextBuilder {
            task,
            task_run,
            variables,
            storage,
            expr: None,
            sink: None,
            cancel: None,
            task_registry: None,
            runners: None,
            attempt: 1,
            shared_dir: None,
            worker_id: None,
            services: None,
        }
    }

    /// A context for tests: `task` runs as a fresh task run of a new execution of flow
    /// [`TEST_FLOW_ID`] in namespace [`TEST_NAMESPACE`] (tenant `main`), with the usual variables
    /// (`flow`, `execution`, `task`, `taskrun`, empty `outputs`/`inputs`/`vars`/`labels`) merged with
    /// `extra` (a JSON object; its keys win). Logs and metrics go to the returned [`MemorySink`].
    pub fn for_test(
        task: Task,
        extra: Value,
        storage: Arc<dyn InternalStorage>,
    ) -> (RunContext, MemorySink) {
        let execution_id = crate::model::new_id();
        let task_run = TaskRun {
            id: crate::model::new_id(),
            tenant_id: crate::model::DEFAULT_TENANT.to_string(),
            execution_id: execution_id.clone(),
            namespace: TEST_NAMESPACE.to_string(),
            flow_id: TEST_FLOW_ID.to_string(),
            task_id: task.id.clone(),
            parent_task_run_id: None,
            value: None,
            iteration: None,
            attempts: Vec::new(),
            outputs: None,
            state: State::new_at(StateType::Running, Utc::now()),
            dynamic: false,
        };
        let mut variables = json!({
            "flow": {"id": TEST_FLOW_ID, "namespace": TEST_NAMESPACE, "revision": 1, "tenantId": "main"},
            "execution": {"id": execution_id, "startDate": Utc::now(), "state": "RUNNING", "originalId": execution_id},
            "task": {"id": task.id, "type": task.task_type},
            "taskrun": {"id": task_run.id, "startDate": Utc::now(), "attemptsCount": 1},
            "outputs": {}, "inputs": {}, "vars": {}, "labels": {}, "tasks": {}, "parents": [],
        });
        if let (Value::Object(base), Value::Object(extra)) = (&mut variables, extra) {
            for (k, v) in extra {
                base.insert(k, v);
            }
        }
        let sink = MemorySink::new();
        let ctx = RunContext::builder(task, task_run, variables, storage)
            .sink(Arc::new(sink.clone()))
            .build();
        (ctx, sink)
    }

    /// A context for a child task of a WorkingDirectory: same execution, storage, sink, registries,
    /// cancellation and working directory; its own task, task run and variables.
    pub fn child(&self, task: Task, task_run: TaskRun, variables: Value) -> RunContext {
        let mut builder = RunContext::builder(task, task_run, variables, self.storage.clone())
            .expression_engine(self.expr.clone())
            .sink(self.sink.clone())
            .cancellation(self.cancel.clone())
            .registries(self.task_registry.clone(), self.runners.clone());
        if let Some(dir) = self.working_dir_if_created() {
            builder = builder.working_dir(dir.to_path_buf());
        }
        if let Some(id) = &self.worker_id {
            builder = builder.worker_id(id.clone());
        }
        builder.services(self.services.clone()).build()
    }

    // ----- identity -------------------------------------------------------------------------

    /// Access to other executions, logs and triggers; an error naming the task when this context
    /// has none (a worker started without [`Worker::with_services`](crate::worker::Worker::with_services)).
    pub fn services(&self) -> Result<&Arc<dyn ExecutionServices>, TaskError> {
        self.services.as_ref().ok_or_else(|| {
            TaskError::Failed(format!(
                "task '{}' ({}) needs access to the repository, and this worker has none",
                self.task.id, self.task.task_type
            ))
        })
    }

    /// Who is running.
    pub fn identity(&self) -> &RunIdentity {
        &self.identity
    }
    /// The task definition.
    pub fn task(&self) -> &Task {
        &self.task
    }
    /// The task run.
    pub fn task_run(&self) -> &TaskRun {
        &self.task_run
    }
    /// The expression variables.
    pub fn variables(&self) -> &Value {
        &self.variables
    }
    /// Mutable expression variables (WorkingDirectory adds its children's outputs).
    pub fn variables_mut(&mut self) -> &mut Value {
        &mut self.variables
    }
    /// The worker's id, if any.
    pub fn worker_id(&self) -> Option<&str> {
        self.worker_id.as_deref()
    }
    /// The task registry.
    pub fn task_registry(&self) -> &Arc<TaskRegistry> {
        &self.task_registry
    }
    /// The runner registry.
    pub fn runners(&self) -> &Arc<RunnerRegistry> {
        &self.runners
    }
    /// The cancellation token: cancelled on kill and timeout.
    pub fn cancellation(&self) -> &CancellationToken {
        &self.cancel
    }
    /// Replace the cancellation token (the worker gives each attempt a child token).
    pub fn set_cancellation(&mut self, token: CancellationToken) {
        self.cancel = token;
    }
    /// The logger.
    pub fn logger(&self) -> &TaskLogger {
        &self.logger
    }
    /// The telemetry sink.
    pub fn sink(&self) -> &Arc<dyn TelemetrySink> {
        &self.sink
    }

    /// Emit a metric point.
    pub fn metric(
        &self,
        name: &str,
        type_: MetricType,
        value: f64,
        tags: std::collections::BTreeMap<String, String>,
    ) {
        self.sink.metric(MetricEntry {
            id: crate::model::new_id(),
            tenant_id: self.identity.tenant_id.clone(),
            namespace: self.identity.namespace.clone(),
            flow_id: self.identity.flow_id.clone(),
            task_id: Some(self.identity.task_id.clone()),
            execution_id: self.identity.execution_id.clone(),
            task_run_id: Some(self.identity.task_run_id.clone()),
            name: name.to_string(),
            type_,
            value,
            tags,
            timestamp: Utc::now(),
        });
    }

    // ----- rendering --------------------------------------------------------------------------

    /// Render a template to a string.
    pub fn render(&self, template: &str) -> Result<String, TaskError> {
        Ok(self
            .expr
            .render_with_host(template, &self.variables, &self.host)?)
    }

    /// Render a template; a lone `{{ expr }}` keeps its type.
    pub fn render_typed(&self, template: &str) -> Result<Value, TaskError> {
        Ok(self
            .expr
            .render_typed_with_host(template, &self.variables, &self.host)?)
    }

    /// Render every string inside a JSON value (typed or as strings).
    pub fn render_value(&self, value: &Value, typed: bool) -> Result<Value, TaskError> {
        Ok(self
            .expr
            .render_value_with_host(value, &self.variables, typed, &self.host)?)
    }

    /// Evaluate a condition with Kestra's truthiness.
    pub fn evaluate_condition(&self, expr: &str) -> Result<bool, TaskError> {
        Ok(self
            .expr
            .evaluate_condition_with_host(expr, &self.variables, &self.host)?)
    }

    /// Render a JSON property to a string: strings are rendered, other values written as JSON.
    pub fn render_to_string(&self, value: &Value) -> Result<String, TaskError> {
        match value {
            Value::String(s) => self.render(s),
            Value::Null => Ok(String::new()),
            other => match self.render_value(other, false)? {
                Value::String(s) => Ok(s),
                v => Ok(v.to_string()),
            },
        }
    }

    /// Render a dynamic property to its type: a literal value has the strings inside it rendered;
    /// an expression is rendered typed, and a string result is also tried as JSON (`"3"` -> 3).
    pub fn render_property<T: Serialize + DeserializeOwned>(
        &self,
        name: &str,
        property: &Property<T>,
    ) -> Result<T, TaskError> {
        match property {
            Property::Value(v) => {
                let raw =
                    serde_json::to_value(v).map_err(|e| TaskError::invalid(name, e.to_string()))?;
                let rendered = self.render_value(&raw, false)?;
                serde_json::from_value(rendered)
                    .map_err(|e| TaskError::invalid(name, e.to_string()))
            }
            Property::Expression(template) => {
                let rendered = self.render_typed(template)?;
                self.decode_rendered(name, rendered)
            }
        }
    }

    /// [`render_property`](Self::render_property) of an optional property.
    pub fn render_opt_property<T: Serialize + DeserializeOwned>(
        &self,
        name: &str,
        property: &Option<Property<T>>,
    ) -> Result<Option<T>, TaskError> {
        property
            .as_ref()
            .map(|p| self.render_property(name, p))
            .transpose()
    }

    /// Render a free-form JSON property (typed) and decode it as `T`, trying strings as JSON too.
    pub fn render_json<T: DeserializeOwned>(
        &self,
        name: &str,
        value: &Value,
    ) -> Result<T, TaskError> {
        let rendered = self.render_value(value, true)?;
        self.decode_rendered(name, rendered)
    }

    fn decode_rendered<T: DeserializeOwned>(
        &self,
        name: &str,
        value: Value,
    ) -> Result<T, TaskError> {
        match serde_json::from_value::<T>(value.clone()) {
            Ok(v) => Ok(v),
            Err(first) => match &value {
                Value::String(s) => serde_json::from_str::<T>(s.trim())
                    .map_err(|_| TaskError::invalid(name, format!("{first} (rendered: {s})"))),
                _ => Err(TaskError::invalid(name, first.to_string())),
            },
        }
    }

    // ----- storage ----------------------------------------------------------------------------

    /// The internal storage.
    pub fn storage(&self) -> &Arc<dyn InternalStorage> {
        &self.storage
    }

    /// The tenant.
    pub fn tenant(&self) -> &str {
        &self.identity.tenant_id
    }

    /// Root of the execution's files: `<ns>/<flow>/executions/<id>`.
    pub fn execution_path(&self) -> Result<StoragePath, StorageError> {
        StoragePath::execution(
            &self.identity.namespace,
            &self.identity.flow_id,
            &self.identity.execution_id,
        )
    }

    /// Directory of this task run's files: `.../executions/<id>/tasks/<task>/<task run>`.
    pub fn task_run_path(&self) -> Result<StoragePath, StorageError> {
        StoragePath::task_run(
            &self.identity.namespace,
            &self.identity.flow_id,
            &self.identity.execution_id,
            &self.identity.task_id,
            &self.identity.task_run_id,
        )
    }

    /// Checks that `uri` may be read from this run (under the execution's namespace).
    pub fn readable(&self, uri: &str) -> Result<StoragePath, StorageError> {
        readable_path(&self.identity.namespace, uri)
    }

    /// Store bytes as `name` in the task run's directory; returns the `kestra:///` URI.
    pub async fn put_file(&self, name: &str, data: Bytes) -> Result<String, StorageError> {
        let path = self.task_run_path()?.join(name)?;
        self.storage.put_bytes(self.tenant(), &path, data).await?;
        Ok(path.to_uri())
    }

    /// Store a stream as `name` in the task run's directory; returns the URI and the size.
    pub async fn put_stream(
        &self,
        name: &str,
        data: ByteStream,
    ) -> Result<(String, u64), StorageError> {
        let path = self.task_run_path()?.join(name)?;
        let size = self.storage.put(self.tenant(), &path, data).await?;
        Ok((path.to_uri(), size))
    }

    /// Store a local file (streamed) as `name` in the task run's directory; returns the URI.
    pub async fn put_local_file(&self, name: &str, local: &Path) -> Result<String, TaskError> {
        let file = tokio::fs::File::open(local)
            .await
            .map_err(|e| TaskError::io(format!("cannot open '{}'", local.display()), e))?;
        let uri_hint = name.to_string();
        let stream = tokio_util::io::ReaderStream::new(file)
            .map(move |chunk| {
                chunk.map_err(|e| StorageError::Backend {
                    operation: "read local file",
                    uri: uri_hint.clone(),
                    source: Box::new(e),
                })
            })
            .boxed();
        Ok(self.put_stream(name, stream).await?.0)
    }

    /// Open a readable file as a stream.
    pub async fn get_file(&self, uri: &str) -> Result<ByteStream, StorageError> {
        let path = self.readable(uri)?;
        self.storage.get(self.tenant(), &path).await
    }

    /// Read a readable file into memory.
    pub async fn read_file(&self, uri: &str) -> Result<Bytes, StorageError> {
        let path = self.readable(uri)?;
        self.storage.get_bytes(self.tenant(), &path).await
    }

    /// Copy a readable file to a local path (streamed).
    pub async fn download_to(&self, uri: &str, local: &Path) -> Result<u64, TaskError> {
        use tokio::io::AsyncWriteExt;
        let mut stream = self.get_file(uri).await?;
        if let Some(parent) = local.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| TaskError::io(format!("cannot create '{}'", parent.display()), e))?;
        }
        let mut file = tokio::fs::File::create(local)
            .await
            .map_err(|e| TaskError::io(format!("cannot create '{}'", local.display()), e))?;
        let mut total = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            total += chunk.len() as u64;
            file.write_all(&chunk)
                .await
                .map_err(|e| TaskError::io(format!("cannot write '{}'", local.display()), e))?;
        }
        file.flush()
            .await
            .map_err(|e| TaskError::io(format!("cannot write '{}'", local.display()), e))?;
        Ok(total)
    }

    /// The KV store of this tenant.
    pub fn kv(&self) -> KvStore {
        KvStore::new(self.storage.clone(), self.tenant())
    }

    // ----- working directory ------------------------------------------------------------------

    /// The working directory, created on first use (a temporary directory removed after the
    /// attempt, unless it belongs to an enclosing WorkingDirectory). Sets the `workingDir` variable.
    pub fn working_dir(&mut self) -> Result<PathBuf, TaskError> {
        if let Some(dir) = self.working_dir_if_created() {
            return Ok(dir.to_path_buf());
        }
        let dir = tempfile::Builder::new()
            .prefix("kestra-wd-")
            .tempdir()
            .map_err(|e| TaskError::io("cannot create a working directory", e))?;
        let path = dir.path().to_path_buf();
        set_variable(
            &mut self.variables,
            "workingDir",
            json!(path.to_string_lossy()),
        );
        self.workdir = WorkDir::Owned(dir);
        Ok(path)
    }

    /// The working directory if it exists already.
    pub fn working_dir_if_created(&self) -> Option<&Path> {
        match &self.workdir {
            WorkDir::Unset => None,
            WorkDir::Owned(d) => Some(d.path()),
            WorkDir::Shared(p) => Some(p),
        }
    }
}
