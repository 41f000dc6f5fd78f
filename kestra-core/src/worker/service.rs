//! The [`Worker`] service: receives [`WorkerJob`]s from the queue (competing with other workers),
//! runs each task attempt or polling-trigger evaluation with bounded concurrency, publishes one
//! [`WorkerTaskResult`] (or [`WorkerTriggerResult`]) per job and only then acknowledges it
//! (at-least-once), follows kill broadcasts, and shuts down gracefully.
//!
//! When it starts a task attempt, the worker first publishes a RUNNING [`WorkerTaskResult`] (its
//! start date and id; Kestra's worker does the same), without waiting for it: it goes out through
//! the same ordered, batched publisher as the final result, so it is never published after it,
//! and waits there up to [`WorkerConfig::telemetry_linger`] for a result to share a publish with
//! (a short task's RUNNING and result go out together).
//!
//! Leases: a received job is leased for [`WorkerConfig::lease`] (2 min); while it runs, the worker
//! extends the leases of all its jobs every [`WorkerConfig::lease_renewal`] (30 s), so a long task
//! is never delivered to a second worker, while the jobs of a worker that died are delivered again
//! about one lease after its last renewal.
//!
//! A result the queue refuses as too large ([`QueueError::TooLarge`], e.g. task outputs over the
//! maximum message size) is replaced by a FAILED result of the same attempt without outputs, and
//! an ERROR log line of the task run names the topic, key and size; an oversized log line or metric
//! is dropped with an error. Neither stops the worker or the other results of its batch.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::expression::ExpressionEngine;
use crate::flow::registry::TaskRegistry;
use crate::liveness::{Heartbeat, LivenessConfig, LivenessMessage, record_taken_jobs};
use crate::messages::{
    ExecutionKilled, WorkerJob, WorkerTask, WorkerTaskResult, WorkerTrigger, WorkerTriggerResult,
};
use crate::model::{Level, LogEntry, MetricEntry, ServiceType, State, StateHistory, StateType};
use crate::queue::{ConsumerGroup, Delivery, DeliveryTag, Envelope, Queue, QueueError, Topic};
use crate::storage::InternalStorage;
use crate::worker::attempt::{AttemptEnd, run_attempt};
use crate::worker::context::{RunContext, TelemetrySink};
use crate::worker::polling::{TriggerEvaluator, evaluate_trigger};
use crate::worker::runner::{RunnerRegistry, TaskError};
use crate::worker::services::ExecutionServices;

/// Jobs received and not yet acknowledged, per slot of [`WorkerConfig::concurrency`]: a job's slot
/// is free once it has run, while its result waits for the publisher.
const UNACKED_PER_SLOT: usize = 4;

/// Settings of a [`Worker`].
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// This worker's id (stamped on results and attempts).
    pub id: String,
    /// Jobs run at once (default: 8 per CPU, as Kestra's `--thread`).
    pub concurrency: usize,
    /// Lease of a received job (default 2 min): an unacknowledged job whose lease is not renewed
    /// (its worker died) is delivered again after it.
    pub lease: Duration,
    /// How often the leases of running jobs are extended (default 30 s; keep it well below
    /// `lease`).
    pub lease_renewal: Duration,
    /// How long one `receive` waits for a job (default 1 s; also the shutdown reaction time).
    pub poll_wait: Duration,
    /// How long a shutdown waits for running jobs before abandoning them (default 60 s). Abandoned
    /// jobs are not acknowledged, so another worker runs them again.
    pub drain_timeout: Duration,
    /// How long a cancelled task gets to stop before it is aborted (default 5 s).
    pub cancel_grace: Duration,
    /// How long killed execution ids are remembered, to answer KILLED to late jobs (default 5 min).
    pub killed_memory: Duration,
    /// Logs and metrics are published in batches of at most this many (default 200).
    pub telemetry_batch: usize,
    /// ... or after this delay (default 200 ms).
    pub telemetry_linger: Duration,
    /// How long one polling-trigger evaluation may run before it is stopped and answered with an
    /// error (default 5 min, the scheduler's default `evaluation_timeout`).
    pub evaluation_timeout: Duration,
    /// Between two heartbeats on the queue (default 3 s, [`crate::liveness`]).
    pub heartbeat_interval: Duration,
    /// The largest outputs one task attempt may return, as JSON bytes (default 10 MiB): larger
    /// outputs fail the attempt with their size (they would travel in a queue message and the
    /// execution row).
    pub max_output_size: usize,
    /// How many times a task job may be delivered without being acknowledged - its worker died
    /// while running it (abort, OOM kill), or abandoned it at shutdown - before the next delivery
    /// fails its task run with the reason and sets the job aside as a dead letter (3;
    /// `kestra.queue.max-delivery-attempts`). Counted by the queue backend
    /// ([`Delivery::attempt`]: JDBC exactly; Kafka from the first delivery handed out alone, so
    /// one crash more there); 0 turns the limit off.
    pub max_delivery_attempts: u32,
}

/// Default of [`WorkerConfig::max_output_size`]: 10 MiB.
pub const DEFAULT_MAX_OUTPUT_SIZE: usize = 10 * 1024 * 1024;

/// Counts the bytes written to it.
struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 = self.0.saturating_add(buf.len());
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The size of `value` as compact JSON, without building the JSON.
fn json_size(value: &impl serde::Serialize) -> usize {
    let mut counter = ByteCounter(0);
    match serde_json::to_writer(&mut counter, value) {
        Ok(()) => counter.0,
        Err(_) => usize::MAX,
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        WorkerConfig {
            id: format!("worker-{}", crate::model::new_id()),
            concurrency: cpus * 8,
            lease: Duration::from_secs(120),
            lease_renewal: Duration::from_secs(30),
            poll_wait: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(60),
            cancel_grace: Duration::from_secs(5),
            killed_memory: Duration::from_secs(5 * 60),
            telemetry_batch: 200,
            telemetry_linger: Duration::from_millis(200),
            evaluation_timeout: Duration::from_secs(5 * 60),
            heartbeat_interval: LivenessConfig::default().heartbeat_interval,
            max_output_size: DEFAULT_MAX_OUTPUT_SIZE,
            max_delivery_attempts: 3,
        }
    }
}

/// A worker: see the module documentation.
pub struct Worker {
    config: WorkerConfig,
    queue: Arc<dyn Queue>,
    storage: Arc<dyn InternalStorage>,
    expr: Arc<ExpressionEngine>,
    task_registry: Arc<TaskRegistry>,
    runners: Arc<RunnerRegistry>,
    services: Option<Arc<dyn ExecutionServices>>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

enum Telemetry {
    Log(LogEntry),
    Metric(MetricEntry),
    Flush(oneshot::Sender<()>),
}

/// The worker's sink: log lines and metrics go through a channel to a task that publishes them in
/// batches on [`Topic::Log`] / [`Topic::Metric`].
struct ChannelSink {
    tx: mpsc::UnboundedSender<Telemetry>,
}

impl TelemetrySink for ChannelSink {
    fn log(&self, entry: LogEntry) {
        let _ = self.tx.send(Telemetry::Log(entry));
    }
    fn metric(&self, entry: MetricEntry) {
        let _ = self.tx.send(Telemetry::Metric(entry));
    }
}

/// Publish, retrying transient errors a few times. A refusal that a retry cannot cure
/// ([`QueueError::TooLarge`], [`QueueError::DelayNotAllowed`]) is returned at once.
async fn publish_with_retry(
    queue: &dyn Queue,
    messages: Vec<Envelope>,
    what: &str,
) -> Result<(), QueueError> {
    publish_acking_with_retry(queue, messages, &[], what)
        .await
        .map(|_| ())
}

/// [`publish_with_retry`] that also acknowledges the jobs `acked` once the messages are published
/// ([`Queue::publish_and_ack`]: one transaction on JDBC). `Ok(Some(e))`: published, but the jobs
/// could not be acknowledged (not retried: the publish is done).
async fn publish_acking_with_retry(
    queue: &dyn Queue,
    messages: Vec<Envelope>,
    acked: &[DeliveryTag],
    what: &str,
) -> Result<Option<QueueError>, QueueError> {
    let mut delay = Duration::from_millis(100);
    let mut attempt = 1;
    loop {
        match queue
            .publish_and_ack(messages.clone(), ConsumerGroup::Worker, acked)
            .await
        {
            Ok(not_acked) => return Ok(not_acked),
            Err(e @ (QueueError::TooLarge { .. } | QueueError::DelayNotAllowed { .. })) => {
                return Err(e);
            }
            Err(e) if attempt >= 5 => return Err(e),
            Err(e) => {
                tracing::warn!(attempt, "cannot publish {what}: {e}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
                attempt += 1;
            }
        }
    }
}

/// Publish `messages`; if the batch is refused as too large, publish them one by one and drop
/// the oversized ones (logged). False when they could not be published.
async fn publish_telemetry(queue: &dyn Queue, messages: Vec<Envelope>) -> bool {
    match publish_with_retry(queue, messages.clone(), "logs and metrics").await {
        Ok(()) => true,
        Err(QueueError::TooLarge { .. }) => {
            for m in messages {
                match publish_with_retry(queue, vec![m], "logs and metrics").await {
                    Ok(()) => {}
                    Err(e @ QueueError::TooLarge { .. }) => {
                        tracing::error!("log line or metric dropped: {e}");
                    }
                    Err(e) => {
                        tracing::error!("cannot publish logs and metrics: {e}");
                        return false;
                    }
                }
            }
            true
        }
        Err(e) => {
            tracing::error!("cannot publish logs and metrics: {e}");
            false
        }
    }
}

async fn telemetry_loop(
    queue: Arc<dyn Queue>,
    mut rx: mpsc::UnboundedReceiver<Telemetry>,
    batch: usize,
    linger: Duration,
) {
    let mut buffer: Vec<Envelope> = Vec::new();
    let flush = |buffer: &mut Vec<Envelope>| {
        let messages = std::mem::take(buffer);
        let queue = queue.clone();
        async move {
            if !messages.is_empty() {
                let n = messages.len();
                if !publish_telemetry(queue.as_ref(), messages).await {
                    tracing::error!("dropped {n} log lines / metrics: the queue refused them");
                }
            }
        }
    };
    loop {
        let next = if buffer.is_empty() {
            rx.recv().await
        } else {
            match tokio::time::timeout(linger, rx.recv()).await {
                Ok(m) => m,
                Err(_) => {
                    flush(&mut buffer).await;
                    continue;
                }
            }
        };
        match next {
            None => {
                flush(&mut buffer).await;
                return;
            }
            Some(Telemetry::Log(entry)) => {
                let key = entry.execution_id.clone().unwrap_or_default();
                match Envelope::json(Topic::Log, key, &entry) {
                    Ok(e) => buffer.push(e),
                    Err(e) => tracing::warn!("cannot encode a log line: {e}"),
                }
            }
            Some(Telemetry::Metric(entry)) => {
                match Envelope::json(Topic::Metric, entry.execution_id.clone(), &entry) {
                    Ok(e) => buffer.push(e),
                    Err(e) => tracing::warn!("cannot encode a metric: {e}"),
                }
            }
            Some(Telemetry::Flush(done)) => {
                flush(&mut buffer).await;
                let _ = done.send(());
            }
        }
        if buffer.len() >= batch {
            flush(&mut buffer).await;
        }
    }
}

/// State shared by the worker's jobs.
struct Shared {
    results: mpsc::UnboundedSender<Outgoing>,
    config: WorkerConfig,
    queue: Arc<dyn Queue>,
    storage: Arc<dyn InternalStorage>,
    expr: Arc<ExpressionEngine>,
    task_registry: Arc<TaskRegistry>,
    runners: Arc<RunnerRegistry>,
    services: Option<Arc<dyn ExecutionServices>>,
    telemetry: mpsc::UnboundedSender<Telemetry>,
    sink: Arc<ChannelSink>,
    /// Cancelled when a shutdown gives up waiting: running jobs stop and are not acknowledged.
    abandon: CancellationToken,
    kills: Mutex<Kills>,
    next_job: AtomicU64,
    /// Jobs received and not yet acknowledged (or abandoned): their leases are renewed.
    held: Mutex<HashSet<DeliveryTag>>,
}

/// Removes a job from [`Shared::held`] when its handling ends, whichever way it ends.
struct Held<'a> {
    shared: &'a Shared,
    tag: DeliveryTag,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if let Ok(mut held) = self.shared.held.lock() {
            held.remove(&self.tag);
        }
    }
}

#[derive(Default)]
struct Kills {
    /// Running jobs by execution id: their job key and kill token.
    running: HashMap<String, HashMap<u64, (String, CancellationToken)>>,
    /// Killed execution ids and when the kill arrived.
    killed: HashMap<String, Instant>,
}

impl Shared {
    /// Stop the running job of `execution_id` with key `attempt` (a stale copy of a resubmitted
    /// attempt); the execution's other jobs go on.
    fn kill_attempt(&self, execution_id: &str, attempt: &str) {
        let Ok(kills) = self.kills.lock() else {
            return;
        };
        for (key, token) in kills
            .running
            .get(execution_id)
            .into_iter()
            .flat_map(|j| j.values())
        {
            if key == attempt {
                tracing::info!(execution_id, job = %key, "stopping a resubmitted attempt or one of an ended execution");
                token.cancel();
            }
        }
    }

    fn mark_killed(&self, execution_id: &str) {
        let Ok(mut kills) = self.kills.lock() else {
            return;
        };
        let memory = self.config.killed_memory;
        kills.killed.retain(|_, at| at.elapsed() < memory);
        kills
            .killed
            .insert(execution_id.to_string(), Instant::now());
        if let Some(jobs) = kills.running.get(execution_id) {
            tracing::info!(
                execution_id,
                jobs = jobs.len(),
                "killing running task attempts"
            );
            for (_, token) in jobs.values() {
                token.cancel();
            }
        }
    }

    /// Registers a job of `execution_id`; `None` if the execution was killed already.
    fn register(&self, execution_id: &str, key: &str) -> Option<(u64, CancellationToken)> {
        let mut kills = self.kills.lock().ok()?;
        let memory = self.config.killed_memory;
        if kills
            .killed
            .get(execution_id)
            .is_some_and(|at| at.elapsed() < memory)
        {
            return None;
        }
        let id = self.next_job.fetch_add(1, Ordering::Relaxed);
        let token = self.abandon.child_token();
        kills
            .running
            .entry(execution_id.to_string())
            .or_default()
            .insert(id, (key.to_string(), token.clone()));
        Some((id, token))
    }

    fn unregister(&self, execution_id: &str, id: u64) {
        if let Ok(mut kills) = self.kills.lock()
            && let Some(jobs) = kills.running.get_mut(execution_id)
        {
            jobs.remove(&id);
            if jobs.is_empty() {
                kills.running.remove(execution_id);
            }
        }
    }

    fn was_killed(&self, execution_id: &str) -> bool {
        self.kills
            .lock()
            .map(|k| k.killed.contains_key(execution_id))
            .unwrap_or(false)
    }

    /// Runs one task attempt; `None` when the job was abandoned by a shutdown.
    async fn run_task(&self, job: WorkerTask) -> Option<WorkerTaskResult> {
        let execution_id = job.task_run.execution_id.clone();
        let task_run_id = job.task_run.id.clone();
        let mut attempt_state = State::new_at(StateType::Running, Utc::now());
        let finish = |state: StateType, attempt_state: &mut State, outputs, child_task_runs| {
            let _ = attempt_state.transition(state);
            WorkerTaskResult {
                execution_id: execution_id.clone(),
                task_run_id: task_run_id.clone(),
                attempt: job.attempt,
                state,
                attempt_state: attempt_state.clone(),
                outputs,
                child_task_runs,
                worker_id: Some(self.config.id.clone()),
            }
        };
        let Some((job_id, token)) = self.register(&execution_id, &job.key()) else {
            tracing::info!(%execution_id, %task_run_id, "execution already killed: not running the job");
            return Some(finish(
                StateType::Killed,
                &mut attempt_state,
                None,
                Vec::new(),
            ));
        };
        let running =
            WorkerTaskResult::running(&job, attempt_state.clone(), Some(self.config.id.clone()));
        self.publish_started(running.envelope());
        let ctx = RunContext::builder(
            job.task.clone(),
            job.task_run.clone(),
            job.context.clone(),
            self.storage.clone(),
        )
        .expression_engine(self.expr.clone())
        .sink(self.sink.clone())
        .cancellation(token)
        .registries(self.task_registry.clone(), self.runners.clone())
        .attempt(job.attempt)
        .worker_id(self.config.id.clone())
        .services(self.services.clone())
        .build();
        let logger = ctx.logger().clone();
        let end = match self.runners.build(&job.task, &self.task_registry) {
            Ok(runnable) => {
                run_attempt(
                    runnable,
                    ctx,
                    job.task.timeout.as_ref(),
                    self.config.cancel_grace,
                )
                .await
            }
            Err(e) => AttemptEnd::Errored(TaskError::Failed(e.to_string())),
        };
        self.unregister(&execution_id, job_id);
        if matches!(end, AttemptEnd::Killed)
            && self.abandon.is_cancelled()
            && !self.was_killed(&execution_id)
        {
            tracing::warn!(%execution_id, %task_run_id, "job abandoned by shutdown; it will be delivered again");
            return None;
        }
        let mut result = end.into_result(&logger);
        if let Some(outputs) = &result.outputs {
            let size = json_size(outputs);
            if size > self.config.max_output_size {
                logger.error(format!(
                    "the task's outputs are too large: {size} bytes, over the limit of {} bytes \
                     (kestra.limits.task.max-output-size)",
                    self.config.max_output_size
                ));
                result.state = StateType::Failed;
                result.outputs = None;
            }
        }
        Some(finish(
            result.state,
            &mut attempt_state,
            result.outputs,
            result.child_task_runs,
        ))
    }

    async fn flush_telemetry(&self) {
        let (tx, rx) = oneshot::channel();
        if self.telemetry.send(Telemetry::Flush(tx)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(10), rx).await;
        }
    }

    fn hold(&self, tag: DeliveryTag) -> Held<'_> {
        if let Ok(mut held) = self.held.lock() {
            held.insert(tag);
        }
        Held { shared: self, tag }
    }

    /// Run one received job and publish its result. `permit` (a slot of
    /// [`WorkerConfig::concurrency`]) is given back once the job has run and its result is handed
    /// to the publisher: waiting for the result's publication does not take a slot from the next
    /// job. The job's lease is renewed until its result is published.
    async fn handle(&self, delivery: Delivery, permit: Option<OwnedSemaphorePermit>) {
        let _held = self.hold(delivery.tag);
        let job: WorkerJob = match delivery.envelope.decode() {
            Ok(job) => job,
            Err(e) => {
                tracing::error!(key = %delivery.envelope.key, "malformed worker job, dead-lettered: {e}");
                if let Err(e) = self.queue.dead_letter(&delivery, &e.to_string()).await {
                    tracing::error!("cannot dead-letter a malformed worker job: {e}");
                    return;
                }
                let done = LivenessMessage::JobsDone {
                    instance_id: self.config.id.clone(),
                    keys: vec![delivery.envelope.key.clone()],
                };
                if let Err(e) = async { self.queue.publish(vec![done.envelope()?]).await }.await {
                    tracing::warn!("cannot record the end of a malformed job: {e}");
                }
                return;
            }
        };
        let task = match job {
            WorkerJob::Task(task) => task,
            WorkerJob::Trigger(trigger) => {
                let max = self.config.max_delivery_attempts;
                if max > 0 && delivery.attempt > max {
                    return self.give_up_trigger(&trigger, &delivery, max, permit).await;
                }
                let envelope = self.evaluate(*trigger).await.envelope();
                return self.publish_result(envelope, &delivery, None, permit).await;
            }
        };
        let log_context = LogEntry {
            id: String::new(),
            tenant_id: task.task_run.tenant_id.clone(),
            namespace: task.task_run.namespace.clone(),
            flow_id: task.task_run.flow_id.clone(),
            task_id: Some(task.task_run.task_id.clone()),
            execution_id: Some(task.task_run.execution_id.clone()),
            task_run_id: Some(task.task_run.id.clone()),
            attempt_number: Some(task.attempt),
            trigger_id: None,
            timestamp: Utc::now(),
            level: Level::Error,
            thread: Some(self.config.id.clone()),
            message: String::new(),
        };
        let span = tracing::info_span!(
            "worker_job",
            execution_id = %task.task_run.execution_id,
            task_run_id = %task.task_run.id,
            task_id = %task.task_run.task_id,
            attempt = task.attempt,
        );
        let max = self.config.max_delivery_attempts;
        if max > 0 && delivery.attempt > max {
            let reason = format!(
                "task run failed: its job was delivered {} times and its worker died (or \
                 abandoned it) each time; it is set aside as a dead letter \
                 (kestra.queue.max-delivery-attempts: {max})",
                delivery.attempt - 1
            );
            let give_up = self.give_up(&task, &delivery, log_context, reason, permit);
            return tracing::Instrument::instrument(give_up, span).await;
        }
        #[cfg(feature = "testkit")]
        crate::testkit::faults::worker_abort_point(&task);
        let Some(result) = tracing::Instrument::instrument(self.run_task(*task), span).await else {
            return;
        };
        self.publish_result(result.envelope(), &delivery, Some(log_context), permit)
            .await;
    }

    /// A task job delivered too often ([`WorkerConfig::max_delivery_attempts`]): set aside as a
    /// dead letter, and its task run FAILED with `reason` in its logs.
    async fn give_up(
        &self,
        task: &WorkerTask,
        delivery: &Delivery,
        log_context: LogEntry,
        reason: String,
        permit: Option<OwnedSemaphorePermit>,
    ) {
        tracing::error!(%reason, "dead-lettering a task job that its workers never finished");
        if let Err(e) = self.queue.dead_letter(delivery, &reason).await {
            // Left to be delivered again (and given up on then).
            tracing::error!("cannot dead-letter a task job: {e}");
            return;
        }
        let log = LogEntry {
            id: crate::model::new_id(),
            timestamp: Utc::now(),
            message: reason,
            ..log_context.clone()
        };
        if let Err(e) = async {
            self.queue
                .publish(vec![Envelope::json(
                    Topic::Log,
                    &task.task_run.execution_id,
                    &log,
                )?])
                .await
        }
        .await
        {
            tracing::warn!("cannot log why a task run failed: {e}");
        }
        let now = Utc::now();
        let mut attempt_state = State::new_at(StateType::Running, now);
        let _ = attempt_state.transition(StateType::Failed);
        let result = WorkerTaskResult {
            execution_id: task.task_run.execution_id.clone(),
            task_run_id: task.task_run.id.clone(),
            attempt: task.attempt,
            state: StateType::Failed,
            attempt_state,
            outputs: None,
            child_task_runs: Vec::new(),
            worker_id: Some(self.config.id.clone()),
        };
        // Acknowledging the dead-lettered job is a no-op; the result is what counts.
        self.publish_result(result.envelope(), delivery, Some(log_context), permit)
            .await;
    }

    /// A polling-trigger evaluation delivered too often ([`WorkerConfig::max_delivery_attempts`]:
    /// it killed or was abandoned by its worker each time): set aside as a dead letter and answered
    /// with an error, so that the scheduler releases the trigger and evaluates it again at its next
    /// interval instead of the worker crash-looping on it.
    async fn give_up_trigger(
        &self,
        job: &WorkerTrigger,
        delivery: &Delivery,
        max: u32,
        permit: Option<OwnedSemaphorePermit>,
    ) {
        let reason = format!(
            "the trigger evaluation was delivered {} times and its worker died (or abandoned \
             it) each time; it is set aside as a dead letter (kestra.queue.max-delivery-attempts: \
             {max})",
            delivery.attempt - 1
        );
        tracing::error!(trigger = %job.uid(), %reason, "dead-lettering a trigger evaluation that its workers never finished");
        if let Err(e) = self.queue.dead_letter(delivery, &reason).await {
            // Left to be delivered again (and given up on then).
            tracing::error!("cannot dead-letter a trigger evaluation: {e}");
            return;
        }
        let result = trigger_failure(job, Some(self.config.id.clone()), reason);
        self.publish_result(result.envelope(), delivery, None, permit)
            .await;
    }

    /// Evaluates one polling trigger; a panicking evaluation, or one that outlives
    /// [`WorkerConfig::evaluation_timeout`], answers an error.
    async fn evaluate(&self, job: WorkerTrigger) -> WorkerTriggerResult {
        let span = tracing::info_span!(
            "worker_trigger",
            namespace = %job.namespace,
            flow = %job.flow_id,
            trigger_id = %job.trigger.id,
        );
        let evaluator = TriggerEvaluator {
            storage: self.storage.clone(),
            expr: self.expr.clone(),
            task_registry: self.task_registry.clone(),
            runners: self.runners.clone(),
            sink: self.sink.clone(),
            cancel: self.abandon.clone(),
            worker_id: Some(self.config.id.clone()),
        };
        let uid = job.uid();
        let failed = |error: String| trigger_failure(&job, Some(self.config.id.clone()), error);
        let mut spawned = tokio::spawn({
            let job = job.clone();
            tracing::Instrument::instrument(
                async move { evaluate_trigger(&job, &evaluator).await },
                span,
            )
        });
        let timeout = self.config.evaluation_timeout;
        match tokio::time::timeout(timeout, &mut spawned).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => {
                tracing::error!(trigger = %uid, "trigger evaluation panicked: {e}");
                failed(format!("the evaluation panicked: {e}"))
            }
            Err(_) => {
                spawned.abort();
                let error = format!(
                    "the evaluation did not end within {}",
                    crate::flow::duration::format(timeout)
                );
                tracing::error!(trigger = %uid, "{error}");
                failed(error)
            }
        }
    }

    /// Hands a RUNNING message to the publisher without waiting: it is published in order with
    /// the results (so before this attempt's own result). If it is lost, the final result still
    /// records RUNNING (at the attempt's start date).
    fn publish_started(&self, envelope: Result<Envelope, QueueError>) {
        match envelope {
            Ok(envelope) => {
                let started = Outgoing {
                    envelope,
                    tag: None,
                    job: None,
                    log_context: None,
                    done: None,
                };
                if self.results.send(started).is_err() {
                    tracing::warn!("result publisher stopped; RUNNING not published");
                }
            }
            Err(e) => tracing::error!("cannot encode a RUNNING message: {e}"),
        }
    }

    /// Hands a result to the publisher and waits until it is published and its job acknowledged.
    /// `log_context` (a task's) is where an ERROR line goes if the result is too large.
    async fn publish_result(
        &self,
        envelope: Result<Envelope, QueueError>,
        job: &Delivery,
        log_context: Option<LogEntry>,
        permit: Option<OwnedSemaphorePermit>,
    ) {
        let envelope = match envelope {
            Ok(e) => e,
            Err(e) => {
                tracing::error!("cannot encode a worker result: {e}");
                return;
            }
        };
        let (done, acked) = oneshot::channel();
        if self
            .results
            .send(Outgoing {
                envelope,
                tag: Some(job.tag),
                job: Some(job.envelope.key.clone()),
                log_context,
                done: Some(done),
            })
            .is_err()
        {
            tracing::error!(
                "result publisher stopped; the job is left unacknowledged to run again"
            );
            return;
        }
        // The job has run: its slot goes to the next one.
        drop(permit);
        // Wait until the result is published (and the job acknowledged) so that a draining worker
        // only stops once its results are out.
        let _ = acked.await;
    }
}

/// Run `delivery` on its slot `permit`; its unacknowledged slot `ack` is given back once its
/// result is published.
fn spawn_job(
    jobs: &mut JoinSet<()>,
    shared: &Arc<Shared>,
    delivery: Delivery,
    permit: OwnedSemaphorePermit,
    ack: OwnedSemaphorePermit,
) {
    let shared = shared.clone();
    jobs.spawn(async move {
        shared.handle(delivery, Some(permit)).await;
        drop(ack);
    });
}

/// A message waiting to be published with others in one batch: a finished job's result (with the
/// job to acknowledge and the handler to wake), or a RUNNING message (neither).
struct Outgoing {
    envelope: Envelope,
    tag: Option<DeliveryTag>,
    /// The finished job's queue key (its [`LivenessMessage::JobsDone`] record goes with the result).
    job: Option<String>,
    /// A task result's log context (for the ERROR line of an oversized result).
    log_context: Option<LogEntry>,
    done: Option<oneshot::Sender<()>>,
}

/// The result that replaces `result` when the queue refused it as too large (`error`): a task
/// attempt FAILED without outputs (its ERROR log line, from `log_context`, says why), a trigger
/// evaluation answered with the error. `None` if it cannot be decoded (then it is dropped).
fn shrink_result(
    result: &Envelope,
    error: &QueueError,
    log_context: Option<&LogEntry>,
) -> Option<(Envelope, Option<LogEntry>)> {
    let reason = format!("the result could not be sent to the executor: {error}");
    match result.topic {
        Topic::WorkerTaskResult => {
            let mut r: WorkerTaskResult = result.decode().ok()?;
            r.outputs = None;
            r.child_task_runs.clear();
            r.state = StateType::Failed;
            let mut histories: Vec<StateHistory> = r.attempt_state.histories().to_vec();
            if histories.last().is_some_and(|h| h.state.is_terminated()) {
                histories.pop();
            }
            histories.push(StateHistory {
                state: StateType::Failed,
                date: Utc::now(),
            });
            r.attempt_state = State::from_histories(histories)?;
            let log = log_context.map(|c| LogEntry {
                id: crate::model::new_id(),
                timestamp: Utc::now(),
                message: reason,
                ..c.clone()
            });
            Some((r.envelope().ok()?, log))
        }
        Topic::WorkerTriggerResult => {
            let mut r: WorkerTriggerResult = result.decode().ok()?;
            r.variables = None;
            r.error = Some(reason);
            Some((r.envelope().ok()?, None))
        }
        _ => None,
    }
}

/// Publishes results in batches, in the order they were handed over: logs and metrics are flushed
/// first (so a task's logs are queued before its result; not for a batch of RUNNING messages
/// only), then every pending message goes out and the finished jobs are acknowledged in one
/// [`Queue::publish_and_ack`] (one transaction on JDBC). Under load this turns two transactions per
/// job into two per batch.
/// A batch of RUNNING messages only waits up to `linger` for a result to join it.
async fn results_loop(
    worker_id: String,
    queue: Arc<dyn Queue>,
    telemetry: mpsc::UnboundedSender<Telemetry>,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    max_batch: usize,
    linger: Duration,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        // RUNNING messages alone wait up to `linger` for a result to go out with: a short task's
        // RUNNING and result then cost one publish (and one unit of work of the executor). The
        // RUNNING carries the worker's start date, so waiting does not change it.
        let deadline = tokio::time::Instant::now() + linger;
        loop {
            while batch.len() < max_batch {
                match rx.try_recv() {
                    Ok(o) => batch.push(o),
                    Err(_) => break,
                }
            }
            if batch.len() >= max_batch || batch.iter().any(|o| o.tag.is_some()) {
                break;
            }
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(o)) => batch.push(o),
                Ok(None) | Err(_) => break,
            }
        }
        let tags: Vec<DeliveryTag> = batch.iter().filter_map(|o| o.tag).collect();
        if !tags.is_empty() {
            let (tx, flushed) = oneshot::channel();
            if telemetry.send(Telemetry::Flush(tx)).is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(10), flushed).await;
            }
        }
        let mut envelopes: Vec<Envelope> = batch.iter().map(|o| o.envelope.clone()).collect();
        envelopes.extend(jobs_done(&worker_id, batch.iter()));
        // The results and the acknowledgement of their jobs in one step; a batch refused as too
        // large goes out one by one, then its jobs are acknowledged.
        let not_acked =
            match publish_acking_with_retry(queue.as_ref(), envelopes, &tags, "worker results")
                .await
            {
                Ok(not_acked) => not_acked,
                Err(QueueError::TooLarge { .. }) => {
                    let published =
                        publish_one_by_one(&worker_id, queue.as_ref(), &telemetry, &batch).await;
                    if published.is_empty() {
                        None
                    } else {
                        queue.ack(ConsumerGroup::Worker, &published).await.err()
                    }
                }
                Err(e) => {
                    tracing::error!(
                        count = batch.len(),
                        "cannot publish worker results ({e}); their jobs are left unacknowledged \
                     to run again"
                    );
                    None
                }
            };
        if let Some(e) = not_acked {
            tracing::warn!("cannot acknowledge worker jobs (they may run again): {e}");
        }
        for o in batch {
            if let Some(done) = o.done {
                let _ = done.send(());
            }
        }
    }
}

/// The [`LivenessMessage::JobsDone`] record of the finished jobs among `batch`, published with
/// their results (none if the batch holds only RUNNING messages).
fn jobs_done<'a>(
    worker_id: &str,
    batch: impl IntoIterator<Item = &'a Outgoing>,
) -> Option<Envelope> {
    let keys: Vec<String> = batch.into_iter().filter_map(|o| o.job.clone()).collect();
    if keys.is_empty() {
        return None;
    }
    let done = LivenessMessage::JobsDone {
        instance_id: worker_id.to_string(),
        keys,
    };
    match done.envelope() {
        Ok(e) => Some(e),
        Err(e) => {
            tracing::error!("cannot encode the record of finished jobs: {e}");
            None
        }
    }
}

/// A batch refused as too large: each result on its own; an oversized one is replaced by its
/// [`shrink_result`] (after its ERROR log line is flushed). Returns the tags of the jobs whose
/// result (or replacement) is out.
async fn publish_one_by_one(
    worker_id: &str,
    queue: &dyn Queue,
    telemetry: &mpsc::UnboundedSender<Telemetry>,
    batch: &[Outgoing],
) -> Vec<DeliveryTag> {
    let mut published = Vec::new();
    for o in batch {
        let refused = match publish_with_retry(
            queue,
            std::iter::once(o.envelope.clone())
                .chain(jobs_done(worker_id, [o]))
                .collect(),
            "a worker result",
        )
        .await
        {
            Ok(()) => {
                published.extend(o.tag);
                continue;
            }
            Err(e @ QueueError::TooLarge { .. }) => e,
            Err(e) => {
                tracing::error!("cannot publish a worker result ({e}); its job will run again");
                continue;
            }
        };
        tracing::error!(key = %o.envelope.key, "worker result refused: {refused}");
        let Some((replacement, log)) = shrink_result(&o.envelope, &refused, o.log_context.as_ref())
        else {
            tracing::error!(key = %o.envelope.key, "an oversized worker result was dropped");
            published.extend(o.tag);
            continue;
        };
        if let Some(log) = log {
            let (tx, flushed) = oneshot::channel();
            if telemetry.send(Telemetry::Log(log)).is_ok()
                && telemetry.send(Telemetry::Flush(tx)).is_ok()
            {
                let _ = tokio::time::timeout(Duration::from_secs(10), flushed).await;
            }
        }
        let messages = std::iter::once(replacement)
            .chain(jobs_done(worker_id, [o]))
            .collect();
        match publish_with_retry(queue, messages, "a worker result").await {
            Ok(()) => published.extend(o.tag),
            Err(e) => {
                tracing::error!("cannot publish a worker result ({e}); its job will run again")
            }
        }
    }
    published
}

/// Every `lease_renewal`, extend the leases of the jobs this worker holds. A job reported as no
/// longer held was delivered again elsewhere (this worker was too slow to renew): it may run twice,
/// and the executor keeps the first result.
async fn renew_leases(shared: Arc<Shared>, stop: CancellationToken) {
    let every = shared.config.lease_renewal.max(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let tags: Vec<DeliveryTag> = match shared.held.lock() {
            Ok(held) => held.iter().copied().collect(),
            Err(_) => return,
        };
        if tags.is_empty() {
            continue;
        }
        match shared
            .queue
            .extend_lease(ConsumerGroup::Worker, &tags, shared.config.lease)
            .await
        {
            Ok(lost) => {
                // Jobs acknowledged between the snapshot and the renewal are expected here.
                let still_held: Vec<DeliveryTag> = match shared.held.lock() {
                    Ok(held) => lost.into_iter().filter(|t| held.contains(t)).collect(),
                    Err(_) => return,
                };
                if !still_held.is_empty() {
                    tracing::warn!(
                        jobs = still_held.len(),
                        "leases of running jobs were lost: they may run twice"
                    );
                }
                tracing::debug!(jobs = tags.len(), "job leases renewed");
            }
            Err(e) => tracing::warn!(jobs = tags.len(), "cannot renew job leases: {e}"),
        }
    }
}

/// Follow the kill signals, from `first` (the subscription taken before the worker claimed its
/// first job) while it lasts, then from new subscriptions.
async fn follow_kills(
    shared: Arc<Shared>,
    stop: CancellationToken,
    mut first: Option<crate::queue::Subscription>,
) {
    loop {
        let subscribed = match first.take() {
            Some(s) => Ok(s),
            None => shared.queue.subscribe(Topic::ExecutionKilled).await,
        };
        let mut subscription = match subscribed {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot subscribe to kill signals: {e}");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return,
                n = subscription.next() => n,
            };
            match next {
                Some(Ok(envelope)) => match envelope.decode::<ExecutionKilled>() {
                    Ok(ExecutionKilled {
                        execution_id,
                        attempt: Some(attempt),
                    }) => shared.kill_attempt(&execution_id, &attempt),
                    Ok(k) => shared.mark_killed(&k.execution_id),
                    Err(e) => tracing::warn!("malformed kill signal ignored: {e}"),
                },
                Some(Err(QueueError::Lagged { missed })) => {
                    tracing::warn!(missed, "kill signal subscription lagged");
                }
                Some(Err(e)) => {
                    tracing::warn!("kill signal subscription failed: {e}");
                    break;
                }
                None => break,
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

/// How long the worker waits between two reads of the liveness verdicts (see `follow_verdicts`).
const VERDICT_PAUSE: Duration = Duration::from_millis(250);

/// Follow the executor's verdicts on the liveness topic: one that declares this worker dead (it
/// was not heard from within the liveness timeout - frozen, cut off - so its jobs are being
/// resubmitted elsewhere) makes it abandon its running jobs at once, without results, and stop:
/// a late copy must not run beside the new attempt. `stop` is the worker's own shutdown.
async fn follow_verdicts(
    shared: Arc<Shared>,
    stop: CancellationToken,
    declared_dead: CancellationToken,
    done: CancellationToken,
) {
    loop {
        let subscription = match shared.queue.subscribe(Topic::Liveness).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot subscribe to liveness verdicts: {e}");
                tokio::select! {
                    _ = done.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        // What is there, in batches, then a pause: the topic carries two messages per task (the
        // jobs a worker takes and finishes), and a verdict is counted in seconds (the liveness
        // timeout), so one read per pause instead of one per message.
        let mut batches = subscription.ready_chunks(1024);
        'follow: loop {
            let next = tokio::select! {
                _ = done.cancelled() => return,
                n = batches.next() => n,
            };
            let Some(batch) = next else {
                break;
            };
            for item in batch {
                match item {
                    Ok(envelope) if envelope.key == shared.config.id => {
                        if let Ok(LivenessMessage::Declared { instance, jobs }) =
                            envelope.decode::<LivenessMessage>()
                            && instance.state.is_dead()
                            && !declared_dead.is_cancelled()
                        {
                            tracing::error!(
                                worker_id = %shared.config.id,
                                state = ?instance.state,
                                held_jobs = jobs.len(),
                                "this worker was declared dead by the executor (no heartbeat \
                                 within the liveness timeout): abandoning its running jobs, \
                                 which run elsewhere, and stopping"
                            );
                            declared_dead.cancel();
                            shared.abandon.cancel();
                            stop.cancel();
                        }
                    }
                    Ok(_) => {}
                    Err(QueueError::Lagged { missed }) => {
                        tracing::warn!(missed, "liveness verdict subscription lagged");
                    }
                    Err(e) => {
                        tracing::warn!("liveness verdict subscription failed: {e}");
                        break 'follow;
                    }
                }
            }
            tokio::select! {
                _ = done.cancelled() => return,
                _ = tokio::time::sleep(VERDICT_PAUSE) => {}
            }
        }
        tokio::select! {
            _ = done.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

impl Worker {
    /// A worker over `queue` and `storage`, rendering with `expr`, decoding with `task_registry` and
    /// running the types of `runners`.
    pub fn new(
        config: WorkerConfig,
        queue: Arc<dyn Queue>,
        storage: Arc<dyn InternalStorage>,
        expr: Arc<ExpressionEngine>,
        task_registry: Arc<TaskRegistry>,
        runners: Arc<RunnerRegistry>,
    ) -> Worker {
        Worker {
            config,
            queue,
            storage,
            expr,
            task_registry,
            runners,
            services: None,
        }
    }

    /// Gives the tasks this worker runs access to other executions, logs and triggers
    /// ([`ExecutionServices`]): log.Fetch, execution.Count/PurgeExecutions/Resume and
    /// trigger.Toggle fail without it. The [`Engine`](crate::runtime::Engine) sets it.
    pub fn with_services(mut self, services: Arc<dyn ExecutionServices>) -> Worker {
        self.services = Some(services);
        self
    }

    /// This worker's id.
    pub fn id(&self) -> &str {
        &self.config.id
    }

    /// Runs until `shutdown` is cancelled (queue errors are logged and retried with backoff), then stops receiving, lets running jobs finish (at most
    /// `drain_timeout`), publishes their results and returns. Needs a multi-threaded Tokio runtime
    /// (expression functions read storage with `block_in_place`).
    pub async fn run(self, shutdown: CancellationToken) {
        // Cancelled by `shutdown`, or by the executor's verdict that this worker is dead.
        let shutdown = shutdown.child_token();
        let concurrency = self.config.concurrency.max(1);
        let heartbeat = Heartbeat::start(
            self.queue.clone(),
            ServiceType::Worker,
            &self.config.id,
            self.config.heartbeat_interval,
        );
        let worker_id = self.config.id.clone();
        let recorder = move |taken: &[Delivery]| record_taken_jobs(&worker_id, taken);
        let (tx, rx) = mpsc::unbounded_channel();
        let telemetry = tokio::spawn(telemetry_loop(
            self.queue.clone(),
            rx,
            self.config.telemetry_batch.max(1),
            self.config.telemetry_linger,
        ));
        let (results_tx, results_rx) = mpsc::unbounded_channel();
        let results = tokio::spawn(results_loop(
            self.config.id.clone(),
            self.queue.clone(),
            tx.clone(),
            results_rx,
            self.config.telemetry_batch.max(1),
            self.config.telemetry_linger,
        ));
        let shared = Arc::new(Shared {
            results: results_tx,
            sink: Arc::new(ChannelSink { tx: tx.clone() }),
            telemetry: tx,
            config: self.config,
            queue: self.queue,
            storage: self.storage,
            expr: self.expr,
            task_registry: self.task_registry,
            runners: self.runners,
            services: self.services,
            abandon: CancellationToken::new(),
            kills: Mutex::new(Kills::default()),
            next_job: AtomicU64::new(0),
            held: Mutex::new(HashSet::new()),
        });
        let stop_kills = CancellationToken::new();
        // Subscribed before the first claim: a subscription reads from the log's end when it is
        // taken, so one taken later (by the spawned task, on a loaded machine) could start after
        // the signal that stops a job this worker claimed meanwhile - the stop of a job of an
        // ended execution (sent once, when the worker reports the job started) was missed so.
        let first = tokio::select! {
            biased;
            _ = shutdown.cancelled() => None,
            subscribed = shared.queue.subscribe(Topic::ExecutionKilled) => match subscribed {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!("cannot subscribe to kill signals: {e}");
                    None
                }
            },
        };
        let kills = tokio::spawn(follow_kills(shared.clone(), stop_kills.clone(), first));
        let declared_dead = CancellationToken::new();
        let verdicts = tokio::spawn(follow_verdicts(
            shared.clone(),
            shutdown.clone(),
            declared_dead.clone(),
            stop_kills.clone(),
        ));
        let renewals = tokio::spawn(renew_leases(shared.clone(), stop_kills.clone()));
        tracing::info!(worker_id = %shared.config.id, concurrency, "worker started");

        let semaphore = Arc::new(Semaphore::new(concurrency));
        // A job's slot is given back once it has run; its result may wait a little longer for the
        // publisher. Jobs received and not yet acknowledged are bounded too.
        let unacked = Arc::new(Semaphore::new(concurrency.saturating_mul(UNACKED_PER_SLOT)));
        let mut jobs = JoinSet::new();
        // Jobs claimed beyond the free slots, in claim order, each with its unacknowledged slot
        // and its lease held: they take the next slots freed, before any new claim.
        let mut pending: VecDeque<(Delivery, OwnedSemaphorePermit, Held<'_>)> = VecDeque::new();
        let mut backoff = Duration::from_millis(100);
        loop {
            while jobs.try_join_next().is_some() {}
            let first = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                p = semaphore.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            if let Some((delivery, ack, held)) = pending.pop_front() {
                // Its lease is renewed again as soon as `handle` holds it.
                drop(held);
                spawn_job(&mut jobs, &shared, delivery, first, ack);
                continue;
            }
            let mut permits = vec![first];
            while let Ok(p) = semaphore.clone().try_acquire_owned() {
                permits.push(p);
            }
            // A claim takes up to twice the free slots (at most `concurrency` jobs): the jobs
            // beyond them wait here for the slots that jobs ending meanwhile free, without a
            // claim's round trip each time (the slots, not the claims, bound the jobs running).
            let wanted = permits.len().saturating_mul(2).min(concurrency);
            let first_unacked = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                p = unacked.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let mut acks = vec![first_unacked];
            while acks.len() < wanted
                && let Ok(p) = unacked.clone().try_acquire_owned()
            {
                acks.push(p);
            }
            permits.truncate(acks.len());
            // Each job taken is recorded (JobsTaken, for liveness) in the same step as the claim.
            // The wait (not a claim) ends at once on shutdown.
            let receive = shared.queue.receive_recorded(
                ConsumerGroup::Worker,
                Topic::WorkerJob,
                acks.len(),
                shared.config.lease,
                shared.config.poll_wait,
                &recorder,
            );
            let deliveries = match crate::queue::stoppable(shutdown.clone(), receive).await {
                Ok(d) => {
                    backoff = Duration::from_millis(100);
                    d
                }
                Err(e) => {
                    tracing::warn!("cannot receive worker jobs: {e}");
                    drop(permits);
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            // A redelivery (its previous worker died with it in hand; the queue hands it out
            // alone) runs alone: once the jobs running here have ended, and before more are
            // received, so that if it kills this worker too no other job goes down - and is
            // counted - with it. Its lease is renewed meanwhile.
            if deliveries.iter().any(|d| d.attempt > 1) {
                drop(permits);
                drop(acks);
                let holds: Vec<Held<'_>> = deliveries.iter().map(|d| shared.hold(d.tag)).collect();
                let all = u32::try_from(concurrency).unwrap_or(u32::MAX);
                let alone = tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break,
                    p = semaphore.clone().acquire_many_owned(all) => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                };
                drop(holds);
                let shared = shared.clone();
                jobs.spawn(async move {
                    for delivery in deliveries {
                        shared.handle(delivery, None).await;
                    }
                    drop(alone);
                });
                continue;
            }
            let mut permits = permits.into_iter();
            for (delivery, ack) in deliveries.into_iter().zip(acks) {
                match permits.next() {
                    Some(permit) => spawn_job(&mut jobs, &shared, delivery, permit, ack),
                    None => {
                        let held = shared.hold(delivery.tag);
                        pending.push_back((delivery, ack, held));
                    }
                }
            }
        }
        // Jobs claimed and not started: they run in the drain, each once a slot is free.
        for (delivery, ack, held) in pending.drain(..) {
            drop(held);
            let shared = shared.clone();
            let semaphore = semaphore.clone();
            jobs.spawn(async move {
                let held = shared.hold(delivery.tag);
                let Ok(permit) = semaphore.acquire_owned().await else {
                    return;
                };
                drop(held);
                shared.handle(delivery, Some(permit)).await;
                drop(ack);
            });
        }
        drop(pending);

        tracing::info!(
            running = jobs.len(),
            "worker stopping: draining running jobs"
        );
        if !declared_dead.is_cancelled() {
            heartbeat
                .set_state(crate::model::ServiceState::TerminatingGracefully)
                .await;
        }
        let drain = async { while jobs.join_next().await.is_some() {} };
        if tokio::time::timeout(shared.config.drain_timeout, drain)
            .await
            .is_err()
        {
            tracing::warn!(
                running = jobs.len(),
                "drain timeout reached: abandoning running jobs"
            );
            shared.abandon.cancel();
            let rest = async { while jobs.join_next().await.is_some() {} };
            if tokio::time::timeout(shared.config.cancel_grace * 2, rest)
                .await
                .is_err()
            {
                jobs.abort_all();
            }
        }
        let forced = shared.abandon.is_cancelled();
        stop_kills.cancel();
        let _ = kills.await;
        let _ = renewals.await;
        let _ = verdicts.await;
        shared.flush_telemetry().await;
        drop(shared);
        if tokio::time::timeout(Duration::from_secs(30), results)
            .await
            .is_err()
        {
            tracing::warn!("result publisher did not stop in time");
        }
        if tokio::time::timeout(Duration::from_secs(10), telemetry)
            .await
            .is_err()
        {
            tracing::warn!("log publisher did not stop in time");
        }
        if forced {
            // Jobs were abandoned (drain limit, or declared dead): the queue delivers them again.
            heartbeat
                .stop_as(crate::model::ServiceState::TerminatedForced)
                .await;
        } else {
            heartbeat.stop().await;
        }
        if declared_dead.is_cancelled() {
            tracing::error!("worker stopped: it was declared dead (see above)");
        } else {
            tracing::info!("worker stopped");
        }
    }
}

/// The error answer to the polling-trigger evaluation `job`.
fn trigger_failure(
    job: &WorkerTrigger,
    worker_id: Option<String>,
    error: String,
) -> WorkerTriggerResult {
    WorkerTriggerResult {
        error: Some(error),
        ..WorkerTriggerResult::answering(job, worker_id)
    }
}
