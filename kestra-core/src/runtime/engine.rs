//! [`Engine`]: the components of Kestra wired over one backend (queue + repositories) and one internal
//! storage, for embedding in an application, for the standalone server and for `kestra flow test`.
//!
//! ```no_run
//! # async fn demo(queue: std::sync::Arc<dyn kestra_core::queue::Queue>,
//! #   repositories: kestra_core::repository::Repositories,
//! #   storage: std::sync::Arc<dyn kestra_core::storage::InternalStorage>) -> Result<(), Box<dyn std::error::Error>> {
//! use kestra_core::runtime::Engine;
//! let engine = Engine::builder(queue, repositories, storage).start();
//! engine.deploy("id: hello\nnamespace: demo\ntasks:\n  - id: hi\n    type: io.kestra.plugin.core.log.Log\n    message: hi\n").await?;
//! let execution = engine.execute("demo", "hello", Default::default()).await?;
//! let done = engine.wait_for(&execution.id, std::time::Duration::from_secs(30)).await?;
//! println!("{}", done.state.current());
//! engine.shutdown().await;
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use indexmap::IndexMap;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::executor::replay::replay_execution;
use crate::executor::{ExecutorConfig, ExecutorService};
use crate::expression::{ExpressionEngine, ExpressionOptions};
use crate::flow::model::Flow;
use crate::flow::parse::{FlowErrors, parse_flow};
use crate::flow::registry::TaskRegistry;
use crate::indexer::{IndexerConfig, IndexerLag, IndexerService};
use crate::inputs::{ExecutionRef, InputErrors, RawInput, resolve_inputs};
use crate::messages::{ExecutionCommand, execution_envelope};
use crate::model::execution::system_labels;
use crate::model::{Execution, Label};
use crate::queue::{Queue, QueueError};
use crate::repository::{FlowRecord, Repositories, RepositoryError, SaveOutcome};
use crate::runtime::flows::{
    FlowCache, FlowSource, FlowStore, RepositoryFlowSource, flow_envelope, follow_flows,
};
use crate::runtime::waiters::{Waited, Waiters};
use crate::scheduler::{SchedulerConfig, SchedulerService, SystemClock};
use crate::storage::{InternalStorage, StoragePath};
use crate::worker::{RunnerRegistry, Worker, WorkerConfig};

/// Errors of the engine's API.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The flow source is invalid.
    #[error("invalid flow:\n{0}")]
    InvalidFlow(FlowErrors),
    /// The flow does not exist.
    #[error("flow {namespace}.{id} not found")]
    FlowNotFound {
        /// Namespace.
        namespace: String,
        /// Id.
        id: String,
    },
    /// The flow is disabled.
    #[error("flow {namespace}.{id} is disabled")]
    FlowDisabled {
        /// Namespace.
        namespace: String,
        /// Id.
        id: String,
    },
    /// Inputs were rejected.
    #[error("invalid inputs: {0}")]
    InvalidInputs(InputErrors),
    /// A backfill request was refused (range, trigger type, one already running).
    #[error("backfill refused: {0}")]
    Backfill(String),
    /// No enabled Webhook trigger of the flow has this key.
    #[error("no webhook trigger of flow {namespace}.{id} has this key")]
    WebhookNotFound {
        /// Namespace.
        namespace: String,
        /// Id.
        id: String,
    },
    /// The execution does not exist.
    #[error("execution {0} not found")]
    ExecutionNotFound(String),
    /// The task run does not exist in the execution.
    #[error("task run {task_run_id} not found in execution {execution_id}")]
    TaskRunNotFound {
        /// Execution.
        execution_id: String,
        /// Task run.
        task_run_id: String,
    },
    /// Waiting for an execution timed out.
    #[error("execution {id} did not finish within {timeout:?} (last state {state})")]
    Timeout {
        /// Execution.
        id: String,
        /// The wait.
        timeout: Duration,
        /// Its last known state.
        state: String,
    },
    /// Queue failure.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// Repository failure.
    #[error(transparent)]
    Repository(#[from] RepositoryError),
    /// Serialization failure.
    #[error("serialization: {0}")]
    Serialization(#[from] serde_json::Error),
}

/// Which components an engine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Components {
    /// Executor.
    pub executor: bool,
    /// Worker.
    pub worker: bool,
    /// Indexer.
    pub indexer: bool,
    /// Scheduler (schedules, polling triggers and backfills).
    pub scheduler: bool,
}

impl Default for Components {
    fn default() -> Self {
        Components {
            executor: true,
            worker: true,
            indexer: true,
            scheduler: true,
        }
    }
}

impl Components {
    /// No component (build on it: `Components { worker: true, ..Components::none() }`).
    pub fn none() -> Self {
        Components {
            executor: false,
            worker: false,
            indexer: false,
            scheduler: false,
        }
    }
}

/// Builds an [`Engine`].
pub struct EngineBuilder {
    queue: Arc<dyn Queue>,
    repositories: Repositories,
    storage: Arc<dyn InternalStorage>,
    registry: TaskRegistry,
    runners: RunnerRegistry,
    expression: ExpressionOptions,
    components: Components,
    executor: ExecutorConfig,
    worker: WorkerConfig,
    indexer: IndexerConfig,
    scheduler: SchedulerConfig,
    flow_source: Option<Arc<dyn FlowSource>>,
    wait_poll: Duration,
}

impl EngineBuilder {
    /// How often [`Engine::wait_for`] reads the repository for every pending wait at once (one
    /// query per interval, whatever the number of waits), the fallback to the notification of
    /// this engine's executor or indexer (an execution run by another process is seen so).
    /// Default: [`Engine::DEFAULT_WAIT_POLL`].
    pub fn wait_poll_interval(mut self, interval: Duration) -> Self {
        self.wait_poll = interval;
        self
    }
    /// Where the executor and the scheduler read flows. Default: a [`RepositoryFlowSource`] over
    /// the repositories' flows where the queue's units write the repository (JDBC, where they are
    /// the queue backend's database); otherwise (Kafka, in-memory) the engine's [`FlowStore`]
    /// replayed from the flow topic, so that nothing in the orchestration path reads the
    /// repository. With a source that does not read the repository, the scheduler runs without it.
    pub fn flow_source(mut self, source: Arc<dyn FlowSource>) -> Self {
        self.flow_source = Some(source);
        self
    }
    /// Scheduler settings.
    pub fn scheduler_config(mut self, config: SchedulerConfig) -> Self {
        self.scheduler = config;
        self
    }
    /// The task registry (default: every core task).
    pub fn registry(mut self, registry: TaskRegistry) -> Self {
        self.registry = registry;
        self
    }
    /// The worker's runnable tasks (default: every core runnable).
    pub fn runners(mut self, runners: RunnerRegistry) -> Self {
        self.runners = runners;
        self
    }
    /// Expression options.
    pub fn expression(mut self, options: ExpressionOptions) -> Self {
        self.expression = options;
        self
    }
    /// Which components to run (default: executor, worker, indexer).
    pub fn components(mut self, components: Components) -> Self {
        self.components = components;
        self
    }
    /// Executor settings.
    pub fn executor_config(mut self, config: ExecutorConfig) -> Self {
        self.executor = config;
        self
    }
    /// Worker settings.
    pub fn worker_config(mut self, config: WorkerConfig) -> Self {
        self.worker = config;
        self
    }
    /// Indexer settings.
    pub fn indexer_config(mut self, config: IndexerConfig) -> Self {
        self.indexer = config;
        self
    }
    /// Change some executor settings, keeping the others as set so far (e.g. from configuration).
    pub fn map_executor_config(mut self, change: impl FnOnce(&mut ExecutorConfig)) -> Self {
        change(&mut self.executor);
        self
    }
    /// Change some worker settings, keeping the others as set so far.
    pub fn map_worker_config(mut self, change: impl FnOnce(&mut WorkerConfig)) -> Self {
        change(&mut self.worker);
        self
    }
    /// Change some indexer settings, keeping the others as set so far.
    pub fn map_indexer_config(mut self, change: impl FnOnce(&mut IndexerConfig)) -> Self {
        change(&mut self.indexer);
        self
    }

    /// Start the selected components on the current tokio runtime.
    pub fn start(self) -> Engine {
        let registry = Arc::new(self.registry);
        let expr = Arc::new(ExpressionEngine::new(self.expression));
        let shutdown = CancellationToken::new();
        let mut tasks: Vec<(&'static str, JoinHandle<()>)> = Vec::new();
        // Where the queue's units do not write the repository, flows travel through the queue
        // alone: the engine follows the flow topic into its own store (deploys, executions and,
        // by default, the executor and the scheduler read it).
        let flow_store = (!self.queue.capabilities().repository_in_unit)
            .then(|| Arc::new(FlowStore::replaying()));
        let flow_source: Arc<dyn FlowSource> = match (self.flow_source, &flow_store) {
            (Some(source), _) => source,
            (None, Some(store)) => store.clone(),
            (None, None) => Arc::new(RepositoryFlowSource::new(self.repositories.flows.clone())),
        };
        // Waits are told of ended executions by whoever makes them visible in the repository:
        // the executor's units where they write it (JDBC), else the indexer.
        let waiters = Waiters::new(
            self.repositories.executions.clone(),
            crate::model::DEFAULT_TENANT,
            self.wait_poll,
        );
        let repository_in_unit = self.queue.capabilities().repository_in_unit;
        let mut executor_flows = None;
        if self.components.executor {
            let flows = Arc::new(FlowCache::new(flow_source.clone(), registry.clone()));
            executor_flows = Some(flows.clone());
            let mut service =
                ExecutorService::new(self.queue.clone(), flows, expr.clone(), self.executor);
            if repository_in_unit {
                service = service.on_ended(waiters.observer());
            }
            let token = shutdown.clone();
            tasks.push(("executor", tokio::spawn(service.run(token))));
        }
        if let Some(store) = &flow_store {
            let on_change: Option<Arc<dyn Fn() + Send + Sync>> =
                executor_flows.clone().map(|flows| {
                    Arc::new(move || flows.invalidate_trigger_flows())
                        as Arc<dyn Fn() + Send + Sync>
                });
            tasks.push((
                "flows",
                tokio::spawn(follow_flows(
                    self.queue.clone(),
                    store.clone(),
                    on_change,
                    shutdown.clone(),
                )),
            ));
        }
        let worker_shutdown = CancellationToken::new();
        let indexer_shutdown = CancellationToken::new();
        let stopped = CancellationToken::new();
        if self.components.worker {
            let worker = Worker::new(
                self.worker,
                self.queue.clone(),
                self.storage.clone(),
                expr.clone(),
                registry.clone(),
                Arc::new(self.runners),
            )
            .with_services(Arc::new(crate::worker::BackendServices::new(
                self.queue.clone(),
                self.repositories.clone(),
                flow_source.clone(),
            )));
            // A worker also stops on its own when the executor declared it dead.
            let (token, stopped) = (worker_shutdown.clone(), stopped.clone());
            tasks.push((
                "worker",
                tokio::spawn(async move {
                    worker.run(token.clone()).await;
                    if !token.is_cancelled() {
                        stopped.cancel();
                    }
                }),
            ));
        }
        let mut indexer_lag = None;
        if self.components.indexer {
            let mut service =
                IndexerService::new(self.queue.clone(), &self.repositories, self.indexer);
            indexer_lag = Some(service.lag());
            if !repository_in_unit {
                service = service.on_ended(waiters.observer());
            }
            tasks.push((
                "indexer",
                tokio::spawn(service.run(indexer_shutdown.clone())),
            ));
        }
        let scheduler_shutdown = CancellationToken::new();
        if self.components.scheduler {
            let service = SchedulerService::new(
                self.scheduler,
                Arc::new(SystemClock),
                flow_source.clone(),
                self.queue.clone(),
                registry.clone(),
                expr.clone(),
            );
            tasks.push((
                "scheduler",
                tokio::spawn(service.run(scheduler_shutdown.clone())),
            ));
        }
        info!(components = ?self.components, "engine started");
        Engine {
            queue: self.queue,
            repositories: self.repositories,
            storage: self.storage,
            registry,
            expr,
            executor_flows,
            flow_source,
            flow_store,
            shutdown,
            worker_shutdown,
            indexer_shutdown,
            indexer_lag,
            scheduler_shutdown,
            stopped,
            tasks,
            waiters,
        }
    }
}

/// What a webhook call carries.
#[derive(Debug, Clone, Default)]
pub struct WebhookRequest {
    /// Request body (JSON if it parses, else a string).
    pub body: serde_json::Value,
    /// Request headers (name -> list of values, as Kestra exposes them).
    pub headers: serde_json::Map<String, serde_json::Value>,
    /// Query parameters (name -> list of values).
    pub parameters: serde_json::Map<String, serde_json::Value>,
}

/// How the HTTP layer should answer a webhook call (the trigger's settings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookResponse {
    /// Answer only when the execution has ended.
    pub wait: bool,
    /// With `wait`, answer with the flow outputs.
    pub return_outputs: bool,
    /// Content type of the answer, if set.
    pub response_content_type: Option<String>,
}

/// Options of a new execution.
#[derive(Debug, Clone, Default)]
pub struct ExecuteOptions {
    /// Extra labels.
    pub labels: Vec<Label>,
    /// Flow revision (default: latest).
    pub revision: Option<i32>,
    /// Do not start before.
    pub schedule_date: Option<chrono::DateTime<Utc>>,
    /// The id of the new execution, chosen by the caller (e.g. a webserver that streams FILE inputs
    /// into the execution's storage folder before creating it, see [`RawInput::Stored`]); a new id
    /// when `None`. It must be 1 to 64 ASCII letters, digits, `-` or `_`.
    pub execution_id: Option<String>,
}

/// Running engine components plus the API to deploy flows and run executions.
pub struct Engine {
    queue: Arc<dyn Queue>,
    repositories: Repositories,
    storage: Arc<dyn InternalStorage>,
    registry: Arc<TaskRegistry>,
    expr: Arc<ExpressionEngine>,
    /// The flow cache of this engine's executor, if it runs one (invalidated by `deploy` at once;
    /// executors of other processes follow the Flow topic).
    executor_flows: Option<Arc<FlowCache>>,
    /// Where flows are read (backfills).
    flow_source: Arc<dyn FlowSource>,
    /// The store replayed from the flow topic where the queue's units do not write the
    /// repository: deploys and new executions use it instead of the repository.
    flow_store: Option<Arc<FlowStore>>,
    shutdown: CancellationToken,
    worker_shutdown: CancellationToken,
    /// Stops the indexer, last: it stores what the others published while they stopped.
    indexer_shutdown: CancellationToken,
    /// The lag of this engine's indexer, if it runs one.
    indexer_lag: Option<Arc<IndexerLag>>,
    /// Cancelled when a component stopped without being asked (a worker declared dead).
    stopped: CancellationToken,
    scheduler_shutdown: CancellationToken,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
    /// The pending [`Engine::wait_for`] calls, served together.
    waiters: Waiters,
}

impl Engine {
    /// The default of [`EngineBuilder::wait_poll_interval`]: 100 ms.
    pub const DEFAULT_WAIT_POLL: Duration = Duration::from_millis(100);

    /// A builder over a backend and a storage.
    pub fn builder(
        queue: Arc<dyn Queue>,
        repositories: Repositories,
        storage: Arc<dyn InternalStorage>,
    ) -> EngineBuilder {
        EngineBuilder {
            queue,
            repositories,
            storage,
            registry: TaskRegistry::default(),
            runners: RunnerRegistry::core(),
            expression: ExpressionOptions::default(),
            components: Components::default(),
            executor: ExecutorConfig::default(),
            worker: WorkerConfig::default(),
            indexer: IndexerConfig::default(),
            scheduler: SchedulerConfig::default(),
            flow_source: None,
            wait_poll: Engine::DEFAULT_WAIT_POLL,
        }
    }

    /// The queue.
    pub fn queue(&self) -> &Arc<dyn Queue> {
        &self.queue
    }
    /// The repositories.
    pub fn repositories(&self) -> &Repositories {
        &self.repositories
    }
    /// The internal storage.
    pub fn storage(&self) -> &Arc<dyn InternalStorage> {
        &self.storage
    }
    /// The task registry.
    pub fn registry(&self) -> &Arc<TaskRegistry> {
        &self.registry
    }

    /// Parse, validate and store a flow (a new revision if its source changed).
    pub async fn deploy(&self, source: &str) -> Result<(Flow, SaveOutcome), EngineError> {
        let flow = parse_flow(source, &self.registry).map_err(EngineError::InvalidFlow)?;
        let record = FlowRecord {
            tenant_id: flow.tenant_id.clone(),
            namespace: flow.namespace.clone(),
            id: flow.id.clone(),
            revision: 0,
            flow: serde_json::to_value(&flow)?,
            source: source.to_string(),
            labels: flow
                .labels
                .iter()
                .map(|l| Label::new(l.key.clone(), l.value.clone()))
                .collect(),
            disabled: flow.disabled,
            deleted: false,
            updated: Utc::now(),
        };
        let (stored, outcome) = match &self.flow_store {
            Some(store) => {
                let store = self.caught_up_store(store).await?;
                let latest =
                    store.latest_revision(&record.tenant_id, &record.namespace, &record.id);
                match latest {
                    Some(l) if !l.deleted && l.source == record.source => {
                        (l, SaveOutcome::Unchanged)
                    }
                    latest => {
                        let outcome = if latest.is_some() {
                            SaveOutcome::Updated
                        } else {
                            SaveOutcome::Created
                        };
                        let mut record = record;
                        record.revision = latest.map_or(1, |l| l.revision + 1);
                        (record, outcome)
                    }
                }
            }
            None => self.repositories.flows.save(record).await?,
        };
        if outcome != SaveOutcome::Unchanged {
            // This process's executor sees the change at once (a Flow trigger on the new flow
            // fires for an execution that ends right after the deploy returns).
            if let Some(flows) = &self.executor_flows {
                flows.invalidate_trigger_flows();
            }
            // Publish the stored revision on the flow topic: flow sources fed by it learn the
            // flow, executors' caches of flows with triggers are invalidated. Without a
            // repository in the queue's units the topic is the flow's only record (the indexer
            // copies it into the repository); this engine's store learns it at once.
            self.queue.publish(vec![flow_envelope(&stored)?]).await?;
            if let Some(store) = &self.flow_store {
                store.apply(stored.clone());
                self.store_published_revision(&stored).await;
            }
        }
        let mut flow = flow;
        flow.revision = Some(stored.revision);
        Ok((flow, outcome))
    }

    /// Delete a flow: the repository records a deletion revision (the history stays) and the
    /// deletion is published on the flow topic, so that flow sources and caches forget the flow.
    /// Errors with [`RepositoryError::NotFound`] when there is no such flow.
    pub async fn delete_flow(&self, namespace: &str, id: &str) -> Result<FlowRecord, EngineError> {
        let tenant = crate::model::DEFAULT_TENANT;
        let record = match &self.flow_store {
            Some(store) => {
                let store = self.caught_up_store(store).await?;
                let Some(mut latest) = store
                    .latest_revision(tenant, namespace, id)
                    .filter(|l| !l.deleted)
                else {
                    return Err(RepositoryError::NotFound {
                        entity: "flow",
                        id: id.to_string(),
                    }
                    .into());
                };
                latest.revision += 1;
                latest.deleted = true;
                latest.updated = Utc::now();
                latest
            }
            None => {
                self.repositories
                    .flows
                    .delete(tenant, namespace, id)
                    .await?
            }
        };
        if let Some(flows) = &self.executor_flows {
            flows.invalidate_trigger_flows();
        }
        self.queue.publish(vec![flow_envelope(&record)?]).await?;
        if let Some(store) = &self.flow_store {
            store.apply(record.clone());
            self.store_published_revision(&record).await;
        }
        Ok(record)
    }

    /// Where flows travel through the queue, also write the revision just published into the
    /// repository, so that a read right after the deploy or deletion (the API's answer, a search)
    /// sees it: read-your-writes, as Kestra's webserver writes its flow repository directly. The
    /// indexer stores the same revision again from the topic ([`FlowRepository::put_revision`] is
    /// idempotent); a failure here is only logged, since the topic holds the revision and the
    /// indexer copies it.
    ///
    /// [`FlowRepository::put_revision`]: crate::repository::FlowRepository::put_revision
    async fn store_published_revision(&self, record: &FlowRecord) {
        if let Err(e) = self.repositories.flows.put_revision(record).await {
            tracing::warn!(
                namespace = %record.namespace, id = %record.id, revision = record.revision,
                error = %e,
                "flow revision published, but not yet in the repository (the indexer stores it)"
            );
        }
    }

    /// The engine's flow store once it has caught up with the flow topic (waits up to 30 s).
    async fn caught_up_store<'a>(
        &self,
        store: &'a Arc<FlowStore>,
    ) -> Result<&'a FlowStore, EngineError> {
        if store.wait_caught_up(Duration::from_secs(30)).await {
            return Ok(store);
        }
        Err(RepositoryError::backend(
            "read the flow store",
            std::io::Error::other(
                "the flow store did not catch up with the flow topic within 30 s (queue down?)",
            ),
        )
        .into())
    }

    /// Create an execution of the latest revision of a flow with raw inputs, and queue it.
    pub async fn execute(
        &self,
        namespace: &str,
        flow_id: &str,
        inputs: IndexMap<String, RawInput>,
    ) -> Result<Execution, EngineError> {
        self.execute_with(namespace, flow_id, inputs, ExecuteOptions::default())
            .await
    }

    /// [`Engine::execute`] with options. Files given as [`RawInput::Stored`] that do not end up as
    /// an input's value (unknown input, invalid inputs, missing flow...) are deleted from storage, so a
    /// refused request leaves nothing behind.
    pub async fn execute_with(
        &self,
        namespace: &str,
        flow_id: &str,
        inputs: IndexMap<String, RawInput>,
        options: ExecuteOptions,
    ) -> Result<Execution, EngineError> {
        let stored: Vec<StoragePath> = inputs
            .values()
            .filter_map(|raw| match raw {
                RawInput::Stored { path, .. } => Some(path.clone()),
                _ => None,
            })
            .collect();
        let result = self
            .execute_inner(namespace, flow_id, inputs, options)
            .await;
        if !stored.is_empty() {
            let mut used = std::collections::HashSet::new();
            if let Ok(execution) = &result {
                collect_strings(
                    &serde_json::Value::Object(execution.inputs.clone()),
                    &mut used,
                );
            }
            for path in stored {
                if used.contains(&path.to_uri()) {
                    continue;
                }
                if let Err(e) = self
                    .storage
                    .delete(crate::model::DEFAULT_TENANT, &path)
                    .await
                {
                    tracing::warn!(path = %path, error = %e, "cannot delete an unused uploaded file");
                }
            }
        }
        result
    }

    async fn execute_inner(
        &self,
        namespace: &str,
        flow_id: &str,
        inputs: IndexMap<String, RawInput>,
        options: ExecuteOptions,
    ) -> Result<Execution, EngineError> {
        let (flow, mut execution) = self
            .new_execution(namespace, flow_id, options.revision)
            .await?;
        if let Some(id) = options.execution_id {
            let valid = !id.is_empty()
                && id.len() <= 64
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid {
                return Err(EngineError::InvalidInputs(InputErrors(vec![
                    crate::inputs::InputError {
                        input: "(execution id)".into(),
                        message: format!(
                            "'{id}' is not a valid execution id: 1 to 64 letters, digits, '-' or '_'"
                        ),
                    },
                ])));
            }
            for l in execution.labels.iter_mut() {
                if l.key == system_labels::CORRELATION_ID && l.value == execution.id {
                    l.value = id.clone();
                }
            }
            execution.id = id;
        }
        for l in options.labels {
            if l.key.starts_with("system.") && l.key != system_labels::CORRELATION_ID {
                continue;
            }
            match execution.labels.iter_mut().find(|x| x.key == l.key) {
                Some(x) => x.value = l.value,
                None => execution.labels.push(l),
            }
        }
        execution.schedule_date = options.schedule_date;
        execution.inputs = resolve_inputs(
            &flow,
            inputs,
            ExecutionRef::of(&execution),
            Some(self.storage.as_ref()),
            self.expr.as_ref(),
        )
        .await
        .map_err(EngineError::InvalidInputs)?;
        self.queue
            .publish(vec![execution_envelope(&execution)?])
            .await?;
        Ok(execution)
    }

    /// A new CREATED execution of a flow revision (latest when `revision` is `None`), labelled with
    /// the flow's labels; errors if the flow is missing or disabled.
    async fn new_execution(
        &self,
        namespace: &str,
        flow_id: &str,
        revision: Option<i32>,
    ) -> Result<(Flow, Execution), EngineError> {
        let tenant = crate::model::DEFAULT_TENANT;
        let found = match &self.flow_store {
            Some(store) => {
                self.caught_up_store(store)
                    .await?
                    .find(tenant, namespace, flow_id, revision)
                    .await?
            }
            None => {
                self.repositories
                    .flows
                    .find(tenant, namespace, flow_id, revision)
                    .await?
            }
        };
        let record = found.ok_or_else(|| EngineError::FlowNotFound {
            namespace: namespace.to_string(),
            id: flow_id.to_string(),
        })?;
        let flow: Flow = serde_json::from_value(record.flow.clone())?;
        if flow.disabled {
            return Err(EngineError::FlowDisabled {
                namespace: namespace.to_string(),
                id: flow_id.to_string(),
            });
        }
        let mut execution = Execution::new(namespace, flow_id, record.revision);
        for l in &flow.labels {
            execution
                .labels
                .push(Label::new(l.key.clone(), l.value.clone()));
        }
        Ok((flow, execution))
    }

    /// Start an execution from a Webhook trigger (`POST|GET|PUT
    /// /api/v1/main/executions/webhook/{namespace}/{flowId}/{key}` once the webserver serves it):
    /// finds the flow's enabled Webhook trigger with this `key` (an expression key is rendered with
    /// `flow.*` and the expression functions, e.g. `secret()`), and queues an execution whose
    /// `trigger` variables are `body`, `headers` and `parameters`; the trigger's `inputs` are rendered
    /// with them. Returns the execution and the trigger's `wait` / `returnOutputs` settings.
    pub async fn webhook(
        &self,
        namespace: &str,
        flow_id: &str,
        key: &str,
        request: WebhookRequest,
    ) -> Result<(Execution, WebhookResponse), EngineError> {
        use crate::flow::triggers::Webhook;
        let (flow, mut execution) = self.new_execution(namespace, flow_id, None).await?;
        // A key may be an expression (`{{ secret('WEBHOOK_KEY') }}`, `{{ flow.id }}-hook`),
        // rendered with the flow's variables; one that does not render matches nothing.
        let key_ctx = serde_json::json!({
            "flow": {"id": flow.id, "namespace": flow.namespace, "revision": flow.revision},
        });
        let found = flow.triggers.iter().filter(|t| !t.disabled).find_map(|t| {
            let spec: Webhook = self.registry.decode_trigger(t).ok()?;
            let expected = if spec.key.contains("{{") || spec.key.contains("{%") {
                match self.expr.render(&spec.key, &key_ctx) {
                    Ok(k) => k,
                    Err(e) => {
                        tracing::warn!(flow = %flow.id, namespace = %flow.namespace, trigger = %t.id, error = %e, "webhook key does not render");
                        return None;
                    }
                }
            } else {
                spec.key.clone()
            };
            (expected == key).then(|| (t.clone(), spec))
        });
        let Some((trigger, spec)) = found else {
            return Err(EngineError::WebhookNotFound {
                namespace: namespace.to_string(),
                id: flow_id.to_string(),
            });
        };
        let mut variables = serde_json::Map::new();
        variables.insert("body".into(), request.body);
        variables.insert("headers".into(), serde_json::Value::Object(request.headers));
        variables.insert(
            "parameters".into(),
            serde_json::Value::Object(request.parameters),
        );
        for l in &trigger.labels {
            execution
                .labels
                .push(Label::new(l.key.clone(), l.value.clone()));
        }
        let ctx = serde_json::json!({ "trigger": serde_json::Value::Object(variables.clone()) });
        let mut raw = IndexMap::new();
        for (k, v) in spec.inputs.iter().flatten() {
            let rendered = self.expr.render_value(v, &ctx, true).map_err(|e| {
                EngineError::InvalidInputs(InputErrors(vec![crate::inputs::InputError {
                    input: k.clone(),
                    message: e.to_string(),
                }]))
            })?;
            raw.insert(k.clone(), RawInput::Json(rendered));
        }
        execution.trigger = Some(crate::model::ExecutionTrigger {
            id: trigger.id.clone(),
            type_: "io.kestra.plugin.core.trigger.Webhook".to_string(),
            variables,
        });
        execution.inputs = resolve_inputs(
            &flow,
            raw,
            ExecutionRef::of(&execution),
            Some(self.storage.as_ref()),
            self.expr.as_ref(),
        )
        .await
        .map_err(EngineError::InvalidInputs)?;
        self.queue
            .publish(vec![execution_envelope(&execution)?])
            .await?;
        let response = WebhookResponse {
            wait: spec.wait.unwrap_or(false),
            return_outputs: spec.return_outputs.unwrap_or(false),
            response_content_type: spec.response_content_type.clone(),
        };
        Ok((execution, response))
    }

    /// Backfill a past range of a Schedule trigger (the API behind `PUT /triggers`): the scheduler then
    /// fires every slot of `[start, end)` in order, with the request's inputs and labels.
    pub async fn backfill(
        &self,
        namespace: &str,
        flow_id: &str,
        trigger_id: &str,
        request: crate::scheduler::BackfillRequest,
    ) -> Result<crate::model::TriggerState, EngineError> {
        crate::scheduler::backfill(
            self.flow_source.as_ref(),
            self.queue.as_ref(),
            &self.registry,
            chrono::Utc::now(),
            crate::model::DEFAULT_TENANT,
            namespace,
            flow_id,
            trigger_id,
            request,
        )
        .await
        .map_err(|e| EngineError::Backfill(e.to_string()))
    }

    /// How far behind this engine's indexer is, per topic, if the engine runs one (see
    /// [`IndexerLag`]; indexers of other processes report theirs in their heartbeats).
    pub fn indexer_lag(&self) -> Option<&Arc<IndexerLag>> {
        self.indexer_lag.as_ref()
    }

    /// The stored execution, if the executor has seen it.
    pub async fn execution(&self, id: &str) -> Result<Option<Execution>, EngineError> {
        Ok(self
            .repositories
            .executions
            .find_by_id(crate::model::DEFAULT_TENANT, id)
            .await?)
    }

    /// Wait until an execution is terminal as the repository shows it, and return it; after
    /// `timeout`, [`EngineError::Timeout`] with its last state ("not created yet" when the
    /// repository does not show it), and a repository failure as [`EngineError::Repository`].
    ///
    /// No wait reads the repository on its own: this engine's executor (JDBC) or indexer (Kafka +
    /// Elasticsearch) reports each execution that ended, and one task reads every pending wait's
    /// execution with one query when waits register and every
    /// [`wait_poll_interval`](EngineBuilder::wait_poll_interval) (an execution run by another
    /// process is seen so).
    pub async fn wait_for(&self, id: &str, timeout: Duration) -> Result<Execution, EngineError> {
        match self.waiters.wait(id, timeout).await? {
            Waited::Ended(e) => Ok(*e),
            Waited::TimedOut(state) => Err(EngineError::Timeout {
                id: id.to_string(),
                timeout,
                state: state.unwrap_or_else(|| "not created yet".into()),
            }),
        }
    }

    /// How many executions the pending [`Engine::wait_for`] calls wait for (diagnostics; a wait
    /// that ended or timed out no longer counts).
    pub fn pending_waits(&self) -> usize {
        self.waiters.pending()
    }

    /// Ask the executor to kill an execution.
    pub async fn kill(&self, id: &str) -> Result<(), EngineError> {
        let cmd = ExecutionCommand::Kill {
            execution_id: id.to_string(),
        };
        self.queue.publish(vec![cmd.envelope()?]).await?;
        Ok(())
    }

    /// Ask the executor to replace an execution's labels (its `system.*` labels stay; `system.*`
    /// entries of `labels` are ignored), running or ended.
    pub async fn set_labels(
        &self,
        id: &str,
        labels: Vec<crate::model::Label>,
    ) -> Result<(), EngineError> {
        let cmd = ExecutionCommand::SetLabels {
            execution_id: id.to_string(),
            labels,
        };
        self.queue.publish(vec![cmd.envelope()?]).await?;
        Ok(())
    }

    /// Ask the executor to restart a failed or killed execution (same id, failed task runs again).
    pub async fn restart(&self, id: &str) -> Result<(), EngineError> {
        let cmd = ExecutionCommand::Restart {
            execution_id: id.to_string(),
        };
        self.queue.publish(vec![cmd.envelope()?]).await?;
        Ok(())
    }

    /// Resume a paused execution (every paused Pause task run) with values for the Pauses'
    /// `onResume` inputs; the executor checks them and refuses (logs, stays paused) invalid ones.
    pub async fn resume(
        &self,
        id: &str,
        inputs: serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), EngineError> {
        let cmd = ExecutionCommand::Resume {
            execution_id: id.to_string(),
            task_run_id: None,
            inputs,
        };
        self.queue.publish(vec![cmd.envelope()?]).await?;
        Ok(())
    }

    /// Delete an execution (soft: it disappears from lookups and searches), with its logs and
    /// metrics when asked. Where the queue's units write the repository (JDBC) the rows are deleted
    /// here; otherwise (Kafka + Elasticsearch) a tombstone
    /// ([`ExecutionChange::Deleted`](crate::messages::ExecutionChange)) travels through the queue
    /// to the indexer, and this waits (up to 5 s) until the repository no longer shows it.
    /// Callers check that the execution has ended first.
    pub async fn delete_execution(
        &self,
        id: &str,
        delete_logs: bool,
        delete_metrics: bool,
    ) -> Result<(), EngineError> {
        use crate::worker::ServicesError;
        crate::worker::services::delete_execution(
            self.queue.as_ref(),
            &self.repositories,
            crate::model::DEFAULT_TENANT,
            id,
            delete_logs,
            delete_metrics,
        )
        .await
        .map_err(|e| match e {
            ServicesError::Repository(e) => EngineError::from(e),
            ServicesError::Queue(e) => EngineError::from(e),
            other => EngineError::from(RepositoryError::backend(
                "delete an execution",
                std::io::Error::other(other.to_string()),
            )),
        })
    }

    /// Replay an execution from one of its task runs: a new execution that keeps what ran before it.
    pub async fn replay(&self, id: &str, task_run_id: &str) -> Result<Execution, EngineError> {
        let original = self
            .execution(id)
            .await?
            .ok_or_else(|| EngineError::ExecutionNotFound(id.to_string()))?;
        let replay = replay_execution(&original, task_run_id).ok_or_else(|| {
            EngineError::TaskRunNotFound {
                execution_id: id.to_string(),
                task_run_id: task_run_id.to_string(),
            }
        })?;
        self.queue
            .publish(vec![execution_envelope(&replay)?])
            .await?;
        Ok(replay)
    }

    /// Resolves when a component of this engine stopped without being asked to: a worker the
    /// executor declared dead (it was frozen or cut off past the liveness timeout) abandons its
    /// jobs and stops, as Kestra's do. A server then exits with an error, for its supervisor to
    /// start it again; never resolves otherwise.
    pub async fn stopped_on_its_own(&self) {
        self.stopped.cancelled().await;
    }

    /// Stop: the scheduler first, then the worker drains (its last results still reach the executor),
    /// then the executor, then the indexer.
    pub async fn shutdown(self) {
        // Order: the scheduler stops creating executions, the worker drains (its last results still
        // reach the queue), the executor applies what is due, then the indexer stores what they
        // published. Their waits for messages end at once (`queue::stoppable`).
        self.waiters.stop();
        let mut tasks = self.tasks;
        for (token, component) in [
            (&self.scheduler_shutdown, "scheduler"),
            (&self.worker_shutdown, "worker"),
            (&self.shutdown, "executor"),
            (&self.indexer_shutdown, "indexer"),
        ] {
            token.cancel();
            if let Some(i) = tasks.iter().position(|(name, _)| *name == component) {
                let (_, handle) = tasks.remove(i);
                if let Err(e) = handle.await {
                    tracing::error!(component, error = %e, "component ended abnormally");
                }
            }
        }
        self.shutdown.cancel();
        self.indexer_shutdown.cancel();
        for (name, handle) in tasks {
            if let Err(e) = handle.await {
                tracing::error!(component = name, error = %e, "component ended abnormally");
            }
        }
    }
}

/// Every string inside a JSON value (the URIs of FILE inputs, however nested).
fn collect_strings(value: &serde_json::Value, out: &mut std::collections::HashSet<String>) {
    match value {
        serde_json::Value::String(s) => {
            out.insert(s.clone());
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_strings(v, out)),
        serde_json::Value::Object(map) => map.values().for_each(|v| collect_strings(v, out)),
        _ => {}
    }
}
