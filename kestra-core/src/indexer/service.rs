//! The indexer service: moves logs and metrics from the queue into the repositories, in batches,
//! and the service instances it hears of on [`Topic::Liveness`] into the service instance
//! repository (it shows liveness; the executor decides it, [`crate::liveness`]), and the execution
//! changes and tombstones of [`Topic::ExecutionChange`] into the execution repository (published
//! only by a queue whose units do not write the repository themselves, e.g. Kafka: see
//! [`QueueCapabilities::repository_in_unit`](crate::queue::QueueCapabilities)).
//! Where the queue's units do not write the repository, it also follows the queue's replayable
//! logs ([`Queue::replay`]): flow revisions into the flow repository
//! ([`FlowRepository::put_revision`]) and trigger states into the trigger repository, so that
//! the executor, the worker and the scheduler never write the repository. Both are replayed from
//! the start at each start of the indexer and applied idempotently; a record the repository
//! refuses (down) is retried until it is stored, in order. Likewise a batch of a topic the
//! repository refuses is kept and retried with a growing pause until it is stored (never left
//! unacknowledged for a redelivery that a queue without lease timers, Kafka, would only make to
//! the next consumer).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::indexer::IndexerLag;
use crate::liveness::{Heartbeat, LivenessConfig, LivenessMessage};
use crate::messages::ExecutionChange;
use crate::model::TriggerState;
use crate::model::{Execution, LogEntry, MetricEntry, ServiceInstance, ServiceType};
use crate::queue::{
    ConsumerGroup, Delivery, DeliveryTag, Queue, QueueError, Replayable, Replayed, Topic,
};
use crate::repository::{
    ExecutionRepository, FlowRecord, FlowRepository, LogRepository, MetricRepository, Repositories,
    RepositoryError, ServiceInstanceRepository, TriggerRepository,
};

/// Batch size and wait of the indexer loops.
#[derive(Debug, Clone)]
pub struct IndexerConfig {
    /// Messages per batch.
    pub batch_size: usize,
    /// How long a receive waits.
    pub poll_wait: Duration,
    /// Lease of a claimed batch.
    pub lease: Duration,
    /// Between two heartbeats of this indexer on the queue (default 3 s).
    pub heartbeat_interval: Duration,
    /// How long the loops of logs, metrics and liveness pause after a batch before they receive
    /// again (50 ms), so that their next batch takes what many tasks published instead of one
    /// message each; they are seen that much later in the repository. Execution changes never
    /// wait. Zero receives at once.
    pub linger: Duration,
}

impl Default for IndexerConfig {
    fn default() -> Self {
        IndexerConfig {
            batch_size: 500,
            poll_wait: Duration::from_millis(500),
            lease: Duration::from_secs(60),
            heartbeat_interval: LivenessConfig::default().heartbeat_interval,
            linger: Duration::from_millis(50),
        }
    }
}

/// The indexer service.
pub struct IndexerService {
    queue: Arc<dyn Queue>,
    executions: Arc<dyn ExecutionRepository>,
    logs: Arc<dyn LogRepository>,
    metrics: Arc<dyn MetricRepository>,
    services: Arc<dyn ServiceInstanceRepository>,
    flows: Arc<dyn FlowRepository>,
    triggers: Arc<dyn TriggerRepository>,
    config: IndexerConfig,
    lag: Arc<IndexerLag>,
    /// Told of each ended execution once stored ([`IndexerService::on_ended`]).
    on_ended: Option<crate::runtime::EndedObserver>,
}

#[derive(Debug, thiserror::Error)]
enum IndexError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Repository(#[from] RepositoryError),
}

impl IndexerService {
    /// An indexer writing into the `repositories` (executions, logs, metrics, service instances).
    pub fn new(queue: Arc<dyn Queue>, repositories: &Repositories, config: IndexerConfig) -> Self {
        IndexerService {
            queue,
            executions: repositories.executions.clone(),
            logs: repositories.logs.clone(),
            metrics: repositories.metrics.clone(),
            services: repositories.services.clone(),
            flows: repositories.flows.clone(),
            triggers: repositories.triggers.clone(),
            config,
            lag: Arc::default(),
            on_ended: None,
        }
    }

    /// How far behind this indexer is, per topic (live: the indexer updates it as it runs).
    pub fn lag(&self) -> Arc<IndexerLag> {
        self.lag.clone()
    }

    /// Tell `observer` of each ended execution this indexer stored, once stored (the engine's
    /// waits, where the repository is written from [`Topic::ExecutionChange`]).
    pub fn on_ended(mut self, observer: crate::runtime::EndedObserver) -> Self {
        self.on_ended = Some(observer);
        self
    }

    /// Store executions ([`ExecutionRepository::save_batch`]), then report the ended ones.
    async fn save_executions(&self, saves: &[Execution]) -> Result<(), RepositoryError> {
        self.executions.save_batch(saves).await?;
        if let Some(observer) = &self.on_ended {
            // The newest version of each execution is the stored one.
            let mut newest: HashMap<&str, &Execution> = HashMap::new();
            for e in saves {
                let slot = newest.entry(e.id.as_str()).or_insert(e);
                if e.metadata.version >= slot.metadata.version {
                    *slot = e;
                }
            }
            newest
                .values()
                .filter(|e| e.state.is_terminated())
                .for_each(|e| observer(e));
        }
        Ok(())
    }

    /// Run until `shutdown`; pending messages are flushed before returning when possible.
    pub async fn run(self, shutdown: CancellationToken) {
        let lag = self.lag.clone();
        let id = format!("indexer-{}", crate::model::new_id());
        lag.set_instance(&id);
        let heartbeat = Heartbeat::start_reporting(
            self.queue.clone(),
            ServiceType::Indexer,
            &id,
            self.config.heartbeat_interval,
            Arc::new(move || lag.props()),
        );
        let this = Arc::new(self);
        let services = {
            let this = this.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move { this.run_topic(Topic::Liveness, shutdown).await })
        };
        let logs = {
            let this = this.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move { this.run_topic(Topic::Log, shutdown).await })
        };
        let metrics = {
            let this = this.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move { this.run_topic(Topic::Metric, shutdown).await })
        };
        // Published only by queues whose units do not write the repository (Kafka); on JDBC this
        // loop finds nothing.
        let executions = {
            let this = this.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move { this.run_topic(Topic::ExecutionChange, shutdown).await })
        };
        // Flows and trigger states: only where they travel through the queue alone.
        let mut replays = Vec::new();
        if !this.queue.capabilities().repository_in_unit {
            for stream in [Replayable::Flows, Replayable::TriggerStates] {
                let this = this.clone();
                let shutdown = shutdown.clone();
                replays.push(tokio::spawn(async move {
                    this.run_replay(stream, shutdown).await
                }));
            }
        }
        let _ = tokio::join!(logs, metrics, services, executions);
        for r in replays {
            let _ = r.await;
        }
        heartbeat.stop().await;
    }

    /// Follow a replayable log into its repository until `shutdown`. A queue that keeps no such
    /// log (the in-memory queue's trigger states) ends the loop with a note.
    async fn run_replay(&self, stream: Replayable, shutdown: CancellationToken) {
        use futures::StreamExt;
        let mut pause = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            let mut records = match self.queue.replay(stream).await {
                Ok(r) => r,
                Err(e) if crate::queue::NotReplayable::is(&e) => {
                    tracing::info!(%stream, "not indexed: {e}");
                    return;
                }
                Err(e) => {
                    error!(%stream, error = %e, "indexer cannot replay; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    next = records.next() => next,
                };
                match next {
                    Some(Ok(Replayed::CaughtUp)) => {
                        pause = Duration::from_millis(100);
                        tracing::debug!(%stream, "indexer caught up");
                    }
                    Some(Ok(Replayed::Record { key, payload })) => {
                        // In order: a record is retried until the repository takes it.
                        let mut wait = Duration::from_millis(100);
                        loop {
                            match self.apply_replayed(stream, &key, payload.as_deref()).await {
                                Ok(()) => break,
                                Err(e) => {
                                    warn!(%stream, %key, error = %e, "indexing failed; retrying");
                                    tokio::select! {
                                        _ = shutdown.cancelled() => return,
                                        _ = tokio::time::sleep(wait) => {}
                                    }
                                    wait = (wait * 2).min(Duration::from_secs(5));
                                }
                            }
                        }
                    }
                    Some(Err(e)) => {
                        error!(%stream, error = %e, "indexer replay broke; starting it again");
                        break;
                    }
                    None => break,
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Store one replayed record; a malformed one is skipped with a warning (a log record cannot
    /// be dead-lettered: it stays in the compacted topic).
    async fn apply_replayed(
        &self,
        stream: Replayable,
        key: &str,
        payload: Option<&[u8]>,
    ) -> Result<(), RepositoryError> {
        match (stream, payload) {
            (Replayable::Flows, Some(payload)) => {
                match serde_json::from_slice::<FlowRecord>(payload) {
                    Ok(record) => self.flows.put_revision(&record).await,
                    Err(e) => {
                        warn!(%key, error = %e, "malformed flow record not indexed");
                        Ok(())
                    }
                }
            }
            (Replayable::Flows, None) => Ok(()),
            (Replayable::TriggerStates, Some(payload)) => {
                match serde_json::from_slice::<TriggerState>(payload) {
                    Ok(state) => self.triggers.save(&state).await,
                    Err(e) => {
                        warn!(%key, error = %e, "malformed trigger state not indexed");
                        Ok(())
                    }
                }
            }
            (Replayable::TriggerStates, None) => match self.triggers.delete(key).await {
                Err(RepositoryError::NotFound { .. }) => Ok(()),
                other => other,
            },
        }
    }

    async fn run_topic(&self, topic: Topic, shutdown: CancellationToken) {
        let linger = match topic {
            Topic::Log | Topic::Metric | Topic::Liveness => self.config.linger,
            _ => Duration::ZERO,
        };
        loop {
            // Once stopped, one more pass without waiting takes what was published meanwhile.
            let draining = shutdown.is_cancelled();
            let wait = if draining {
                Duration::ZERO
            } else {
                self.config.poll_wait
            };
            // Never abandon a receive half-way (claimed rows would wait for their lease to end).
            // Its wait (not a claim) ends at once on shutdown.
            let receive = self.queue.receive(
                ConsumerGroup::Indexer,
                topic,
                self.config.batch_size,
                self.config.lease,
                wait,
            );
            let batch = crate::queue::stoppable(shutdown.clone(), receive).await;
            match batch {
                Ok(batch) if batch.is_empty() => {
                    self.lag.caught_up(topic);
                    if draining {
                        return;
                    }
                }
                Ok(batch) => {
                    self.lag.received(topic, &batch);
                    if !self.index_until_done(topic, batch, &shutdown).await {
                        return;
                    }
                    self.lag.stored(topic, chrono::Utc::now());
                    if !linger.is_zero() && !draining {
                        tokio::select! {
                            _ = shutdown.cancelled() => {}
                            _ = tokio::time::sleep(linger) => {}
                        }
                    }
                }
                Err(e) => {
                    error!(%topic, error = %e, "indexer receive failed");
                    if shutdown.is_cancelled() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// Index `batch` until it is done, retrying the same batch with a growing pause (200 ms to
    /// 5 s) while the repository fails (Elasticsearch down, a database restarting). The batch is
    /// kept, not dropped for a redelivery: on a queue without lease timers (Kafka) a delivery
    /// that is not acknowledged is handed out again only when this consumer is gone, and its key
    /// would hold back every later message of that key meanwhile. Its leases are extended on each
    /// retry (a JDBC lease would otherwise end and hand the batch to another indexer as well); a
    /// delivery the queue says is no longer held is dropped from the retries. Returns `false` when
    /// stopped during a retry: the batch stays unacknowledged and is delivered again to the next
    /// consumer.
    async fn index_until_done(
        &self,
        topic: Topic,
        mut batch: Vec<Delivery>,
        shutdown: &CancellationToken,
    ) -> bool {
        let mut pause = Duration::from_millis(200);
        let mut failures = 0u32;
        loop {
            let mut set_aside = Vec::new();
            let outcome = self.index(topic, &batch, &mut set_aside).await;
            match outcome {
                Ok(()) => {
                    if failures > 0 {
                        info!(%topic, failures, "indexer batch indexed after retries");
                    }
                    return true;
                }
                Err(e) => {
                    failures += 1;
                    error!(%topic, error = %e, failures, retry_in = ?pause, "indexer batch failed; retrying it");
                }
            }
            // Dead-lettered during the failed attempt: never again.
            batch.retain(|d| !set_aside.contains(&d.tag));
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(Duration::from_secs(5));
            let tags: Vec<DeliveryTag> = batch.iter().map(|d| d.tag).collect();
            match self
                .queue
                .extend_lease(ConsumerGroup::Indexer, &tags, self.config.lease)
                .await
            {
                Ok(lost) if !lost.is_empty() => {
                    warn!(%topic, lost = lost.len(), "indexer batch partly taken elsewhere; retrying the rest");
                    batch.retain(|d| !lost.contains(&d.tag));
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(%topic, error = %e, "cannot extend the leases of a batch being retried")
                }
            }
            if batch.is_empty() {
                return true;
            }
        }
    }

    /// Index one batch: decode, write into the repository, acknowledge. A malformed message is
    /// dead-lettered and its tag pushed to `set_aside` (so a retry of the batch skips it).
    async fn index(
        &self,
        topic: Topic,
        batch: &[Delivery],
        set_aside: &mut Vec<DeliveryTag>,
    ) -> Result<(), IndexError> {
        let mut tags: Vec<DeliveryTag> = Vec::with_capacity(batch.len());
        match topic {
            Topic::Log => {
                let mut entries: Vec<LogEntry> = Vec::with_capacity(batch.len());
                for d in batch {
                    match d.envelope.decode::<LogEntry>() {
                        Ok(e) => {
                            entries.push(e);
                            tags.push(d.tag);
                        }
                        Err(e) => {
                            warn!(error = %e, "dead-lettering malformed log message");
                            self.queue.dead_letter(d, &e.to_string()).await?;
                            set_aside.push(d.tag);
                        }
                    }
                }
                self.logs.save_batch(&entries).await?;
            }
            Topic::Liveness => {
                // The last word on each instance in this batch (per-key order: the latest).
                let mut latest: Vec<(ServiceInstance, bool)> = Vec::new();
                // Instances whose retention ended (the executor's purge), unless heard of again.
                let mut purged: Vec<String> = Vec::new();
                for d in batch {
                    match d.envelope.decode::<LivenessMessage>() {
                        // A zombie's heartbeat after the verdict (in this batch) changes nothing.
                        Ok(LivenessMessage::Heartbeat { instance })
                            if latest
                                .iter()
                                .any(|(i, declared)| *declared && i.id == instance.id) => {}
                        Ok(LivenessMessage::Heartbeat { instance }) => {
                            latest.retain(|(i, _)| i.id != instance.id);
                            purged.retain(|id| *id != instance.id);
                            latest.push((instance, false));
                        }
                        Ok(LivenessMessage::Declared { instance, .. }) => {
                            latest.retain(|(i, _)| i.id != instance.id);
                            purged.retain(|id| *id != instance.id);
                            latest.push((instance, true));
                        }
                        Ok(LivenessMessage::Purge { instance_id }) => {
                            latest.retain(|(i, _)| i.id != instance_id);
                            purged.push(instance_id);
                        }
                        // Job records and checks are the executor's business.
                        Ok(_) => {}
                        Err(e) => {
                            warn!(error = %e, "dead-lettering malformed liveness message");
                            self.queue.dead_letter(d, &e.to_string()).await?;
                            set_aside.push(d.tag);
                            continue;
                        }
                    }
                    tags.push(d.tag);
                }
                for (instance, declared) in latest {
                    // A zombie's heartbeat does not undo the executor's verdict.
                    if !declared
                        && let Some(stored) = self.services.find_by_id(&instance.id).await?
                        && stored.state.is_dead()
                    {
                        continue;
                    }
                    self.services.save(&instance).await?;
                }
                for id in purged {
                    match self.services.find_by_id(&id).await? {
                        Some(stored) if !stored.state.is_running() => {
                            match self.services.delete(&id).await {
                                Ok(()) | Err(RepositoryError::NotFound { .. }) => {
                                    info!(instance = %id, state = ?stored.state, "service instance purged after its retention");
                                }
                                Err(e) => return Err(e.into()),
                            }
                        }
                        // Gone already, or running again: nothing to purge.
                        _ => {}
                    }
                }
            }
            Topic::ExecutionChange => {
                // In order per execution (one key, one consumer). Consecutive saves go to the
                // repository as one batch (`save_batch`: one `_bulk` request on Elasticsearch, not a
                // refreshed write per change - a catch-up of thousands of changes took minutes so);
                // its versioned save keeps the newest of each execution. A delete first stores the
                // saves before it, so a save and the delete after it keep their order.
                let mut saves: Vec<Execution> = Vec::new();
                for d in batch {
                    match d.envelope.decode::<ExecutionChange>() {
                        Ok(change) if change.execution_id() != d.envelope.key => {
                            let reason = format!(
                                "execution change of '{}' keyed '{}'",
                                change.execution_id(),
                                d.envelope.key
                            );
                            warn!(%reason, "dead-lettering a mis-keyed execution change");
                            self.queue.dead_letter(d, &reason).await?;
                            set_aside.push(d.tag);
                            continue;
                        }
                        Ok(ExecutionChange::Saved { execution }) => saves.push(*execution),
                        Ok(ExecutionChange::Deleted {
                            tenant_id,
                            execution_id,
                            delete_logs,
                            delete_metrics,
                        }) => {
                            self.save_executions(&saves).await?;
                            saves.clear();
                            // Logs and metrics first, the execution last: whoever waits for
                            // the execution to be gone (the API's delete) then finds its logs
                            // and metrics gone too.
                            if delete_logs {
                                self.logs
                                    .delete_by_execution(&tenant_id, &execution_id)
                                    .await?;
                            }
                            if delete_metrics {
                                self.metrics
                                    .delete_by_execution(&tenant_id, &execution_id)
                                    .await?;
                            }
                            self.executions.delete(&tenant_id, &execution_id).await?;
                        }
                        Err(e) => {
                            warn!(error = %e, "dead-lettering malformed execution change");
                            self.queue.dead_letter(d, &e.to_string()).await?;
                            set_aside.push(d.tag);
                            continue;
                        }
                    }
                    tags.push(d.tag);
                }
                self.save_executions(&saves).await?;
            }
            _ => {
                let mut entries: Vec<MetricEntry> = Vec::with_capacity(batch.len());
                for d in batch {
                    match d.envelope.decode::<MetricEntry>() {
                        Ok(e) => {
                            entries.push(e);
                            tags.push(d.tag);
                        }
                        Err(e) => {
                            warn!(error = %e, "dead-lettering malformed metric message");
                            self.queue.dead_letter(d, &e.to_string()).await?;
                            set_aside.push(d.tag);
                        }
                    }
                }
                self.metrics.save_batch(&entries).await?;
            }
        }
        self.queue.ack(ConsumerGroup::Indexer, &tags).await?;
        Ok(())
    }
}
