//! The executor service: feeds [`process`](fn@crate::executor::process::process) from the queue's units of work.
//!
//! Each loop claims a batch of messages (executions, commands, worker results) in one
//! [`UnitOfWork`], processes them in order (per execution, the queue hands
//! them out in publish order), saves the executions that changed, stages every emitted message, and
//! commits - all or nothing. A malformed message is dead-lettered and the loop goes on.
//!
//! Flows come from a [`FlowSource`](crate::runtime::flows::FlowSource), which may lag behind a
//! deploy: an event whose flow revision the source does not show yet is put back on its topic,
//! delayed, and consumed; only after [`ExecutorConfig::flow_grace`] does its execution fail with
//! "flow ... not found". A source error rolls the unit back (it is delivered again), also when the
//! list of flows with Flow triggers cannot be read: those triggers are never skipped.
//!
//! Around `process`, inside the same unit of work, the service also:
//! - completes Subflow requests: resolves the child flow revision ([`FlowCache::flow`]), validates
//!   the inputs and composes the labels, then publishes the child execution - or a failed
//!   [`SubflowExecutionResult`](crate::messages::SubflowExecutionResult) for the parent when that
//!   is impossible;
//! - publishes the result for the parent when a subflow child ends, `Kill` commands for the
//!   children of a killed Subflow task run, `Restart` commands for the failed children of a
//!   restarted ForEachItem, and new executions (CREATE_NEW_EXECUTION retries);
//! - publishes the slot requests of executions of limited flows ([`SlotMessage`], keyed by flow);
//! - when an execution ends (or pauses), starts the flows whose Flow trigger it fires
//!   ([`crate::executor::flow_trigger`]), and publishes a [`PreconditionMessage`] (keyed by
//!   trigger) for each trigger with several precondition conditions;
//! - when an execution a schedule or polling trigger started ends, tells the schedulers with a
//!   [`TriggerEvent::ExecutionEnded`] keyed by the trigger (its lock and `stopAfter`).
//!
//! State that belongs to a flow or a trigger has its own keyed stage, consumed by the same
//! executor group in the same loop but keyed by that flow or trigger, so a unit of work only ever
//! loads and saves state under the keys of the messages it claimed (the queue refuses other keys):
//! - [`Topic::ConcurrencySlot`]: the unit that claimed a flow's slot requests loads the flow's
//!   slots ([`crate::executor::concurrency`]), applies the requests in order, saves the slots and
//!   publishes the `Start` / `ConcurrencyLimited` commands, keyed by execution;
//! - [`Topic::FlowPrecondition`]: the unit that claimed a trigger's checks loads the trigger's
//!   results ([`crate::executor::preconditions`]), applies the checks in order, saves the results
//!   and publishes the triggered execution when a set is complete.
//!
//! [`Topic::Liveness`] (heartbeats, the jobs workers take and finish, the executor's own checks,
//! keyed by service instance) is claimed by a second loop of the same service, which pauses
//! [`ExecutorConfig::liveness_linger`] after each unit: two liveness messages per task then cost a
//! unit per linger, not two units per task on the way of every execution.
//!
//! Refused units ([`UnitOutcome`]):
//! - [`QueueError::Fenced`] (this instance is a zombie: another one owns the messages now): the
//!   unit's work is dropped without backoff or error, the new owner processes the messages again.
//! - [`QueueError::TooLarge`] (a message it staged, or an execution it saved, is over the queue's
//!   maximum size): the unit is dropped and the execution whose processing produced that message is
//!   remembered; when its messages come back (here, or on another executor, which finds the same
//!   refusal) it is FAILED instead - from its last committed state, with its unfinished task runs
//!   FAILED, a kill broadcast, an ERROR log naming the topic, key and size, its parent's result and
//!   its Flow triggers - so the queue never stalls on it. If even that is refused, its messages are
//!   dead-lettered with the reason.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info_span, warn};

use crate::executor::concurrency::{
    self, ConcurrencySlots, SlotMessage, SlotRequest, apply_slot_request,
};
use crate::executor::flow_trigger::{PreconditionMessage, TriggeredExecution, plan_flow_triggers};
use crate::executor::preconditions::{self, PreconditionState};
use crate::executor::process::{RunPositions, Walk, process_walking};
use crate::executor::subflow::{SubflowRequest, complete_child, result_for_parent};
use crate::expression::ExpressionEngine;
use crate::inputs::{ExecutionRef, RawInput, resolve_inputs};
use crate::liveness::{
    self, Heartbeat, LivenessConfig, LivenessMessage, LivenessState, ResubmitConfig,
};
use crate::messages::{
    ExecutionChange, ExecutionCommand, ExecutionKilled, ExecutorEvent, TriggerEvent, WorkerJob,
    execution_envelope,
};
use crate::model::{Execution, Level, LogEntry, ServiceType, State, StateType};
use crate::queue::{
    ConsumerGroup, Delivery, Envelope, ExecutionStamp, LoadedExecution, Queue, QueueError, Topic,
    UnitOfWork,
};
use crate::runtime::flows::{FlowCache, FlowCacheError};

/// Executor settings.
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// Messages claimed per unit of work.
    pub batch_size: usize,
    /// How long one `begin` waits for messages before looping (shutdown latency).
    pub poll_wait: Duration,
    /// How long an event waits for its flow revision to become visible in the
    /// [`FlowSource`](crate::runtime::flows::FlowSource) (a flow source may lag behind a deploy)
    /// before its execution fails with "flow ... not found" (60 s). Counted by each executor from
    /// the first time it misses that revision; meanwhile the event is put back on its topic,
    /// delayed (100 ms, growing with the wait up to 5 s).
    pub flow_grace: Duration,
    /// Heartbeats of this executor, and how long a silent instance lives before the executor
    /// declares it dead ([`crate::liveness`]).
    pub liveness: LivenessConfig,
    /// What happens to the task jobs of a worker declared dead ([`liveness::resubmit_commands`]).
    pub resubmit: ResubmitConfig,
    /// How many times a message may be delivered to the executor without its unit of work ever
    /// ending - each time the process died while processing it (abort, stack overflow, OOM kill) -
    /// before it is set aside as a dead letter and its execution failed with the reason (3;
    /// `kestra.queue.max-delivery-attempts`). Counted by the queue backend
    /// ([`Delivery::attempt`]: JDBC exactly; Kafka from the first delivery handed out alone, so
    /// one crash more there); 0 turns the limit off.
    pub max_delivery_attempts: u32,
    /// The most task runs one execution may have (10,000; `kestra.limits.execution.max-task-runs`);
    /// a flowable that would create more fails the execution naming the limit and the task
    /// ([`crate::executor::task_run_limit`]). 0 turns the limit off.
    pub max_task_runs: usize,
    /// How long the executor's liveness loop pauses after a unit it committed before it claims
    /// again (50 ms): the jobs taken and done of every task run in that time are then applied in
    /// one unit instead of one unit each. Liveness verdicts are counted in seconds, so the pause
    /// delays none; zero claims at once.
    pub liveness_linger: Duration,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        ExecutorConfig {
            batch_size: 200,
            poll_wait: Duration::from_millis(500),
            flow_grace: Duration::from_secs(60),
            liveness: LivenessConfig::default(),
            resubmit: ResubmitConfig::default(),
            max_delivery_attempts: 3,
            max_task_runs: crate::executor::task_run_limit::DEFAULT_MAX_TASK_RUNS,
            liveness_linger: Duration::from_millis(50),
        }
    }
}

/// The topics the executor consumes: those keyed by execution, then the keyed stages of flows
/// (concurrency slots) and triggers (preconditions), and liveness. [`ExecutorService::run`]
/// claims them in two loops: [`Topic::Liveness`] alone (lingering, see
/// [`ExecutorConfig::liveness_linger`]) and the others together.
pub const EXECUTOR_TOPICS: &[Topic] = &[
    Topic::Execution,
    Topic::ExecutionCommand,
    Topic::WorkerTaskResult,
    Topic::SubflowExecutionResult,
    Topic::ConcurrencySlot,
    Topic::FlowPrecondition,
    Topic::Liveness,
];

/// The topics of the executor's main loop: every one of [`EXECUTOR_TOPICS`] but the last,
/// [`Topic::Liveness`], which has its own loop so that the jobs a worker takes and finishes (two
/// liveness messages per task) do not cost the critical path of every execution a unit each.
const MAIN_TOPICS: &[Topic] = EXECUTOR_TOPICS.split_at(EXECUTOR_TOPICS.len() - 1).0;

/// The state of the flow- and trigger-keyed stages in one unit of work: loaded once per key (under
/// the key of a claimed message), updated in claim order, saved before the commit.
#[derive(Default)]
struct KeyedState {
    /// Flow key -> its slots and whether they changed.
    slots: HashMap<String, (ConcurrencySlots, bool)>,
    /// Trigger key -> its precondition results and whether they changed.
    preconditions: HashMap<String, (Option<PreconditionState>, bool)>,
    /// Instance id -> what is known of its liveness and whether it changed.
    liveness: HashMap<String, (Option<LivenessState>, bool)>,
}

/// Saves the changed entries `(key, value, changed)` of one kind of keyed state in `unit` (`None`
/// deletes the entry); `topic` names the stage in an encoding error.
async fn save_changed<'a, T: serde::Serialize + 'a>(
    unit: &mut dyn UnitOfWork,
    kind: &str,
    topic: Topic,
    entries: impl Iterator<Item = (&'a String, Option<&'a T>, bool)>,
) -> Result<(), QueueError> {
    for (key, value, changed) in entries {
        if changed {
            let value = value
                .map(serde_json::to_value)
                .transpose()
                .map_err(|source| QueueError::Encode { topic, source })?;
            unit.save_state(kind, key, value.as_ref()).await?;
        }
    }
    Ok(())
}

/// A flow revision: (tenant, namespace, id, revision).
type FlowRevision = (String, String, String, i32);

/// The executor service.
pub struct ExecutorService {
    queue: Arc<dyn Queue>,
    flows: Arc<FlowCache>,
    expr: Arc<ExpressionEngine>,
    config: ExecutorConfig,
    /// Flow revisions the source did not show, with when this executor first and last missed
    /// each ([`ExecutorConfig::flow_grace`] is counted from the first); forgotten once found or
    /// given up, restarted when not missed for a whole grace period (another executor found it).
    missing_flows: Mutex<HashMap<FlowRevision, (Instant, Instant)>>,
    /// Executions whose processing produced a message the queue refused as too large.
    oversized: Mutex<HashMap<String, Oversized>>,
    /// The executions this executor saved last, reused while the stored copy is the one it wrote.
    saved: Mutex<SavedExecutions>,
    /// Told of each ended execution once its unit committed ([`ExecutorService::on_ended`]).
    on_ended: Option<crate::runtime::EndedObserver>,
}

/// How often [`ExecutorService`] reused an execution it saved instead of decoding the stored copy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExecutionCacheStats {
    /// Loads answered from the executor's own copy (the stored document was the one it wrote),
    /// counted once their unit committed.
    pub hits: u64,
    /// Loads of an execution the executor had a copy of, but whose stored document had changed
    /// (another executor, the repository, a restart of the process): decoded again. A backend may
    /// check the copy only at commit ([`UnitOfWork::load_execution_unless`]): the loads from the
    /// copy of a unit refused as fenced count here.
    pub misses: u64,
}

/// At most this many executions are kept by [`SavedExecutions`]: enough for every execution in
/// flight of a busy executor (with 64, a burst of 2,000 executions decoded two loads of three
/// again, task runs read from the database included).
const SAVED_ENTRIES: usize = 4096;
/// At most this many bytes of stored documents are kept by [`SavedExecutions`] (the decoded
/// executions take a small multiple of it).
const SAVED_BYTES: usize = 16 * 1024 * 1024;

/// The last execution this executor saved, per execution id, with the stamp of what it stored
/// ([`UnitOfWork::save_execution_stamped`]) and the positions of its task runs. A unit of work takes
/// the entry out when it loads the execution and uses it only if the backend reports the stored
/// execution unchanged ([`LoadedExecution::Unchanged`], checked under the unit's lock on the
/// execution); entries go back in only when their unit committed. Bounded in entries and bytes:
/// the oldest entries go first.
#[derive(Default)]
struct SavedExecutions {
    entries: HashMap<String, SavedExecution>,
    /// Insertion order -> id, to evict the oldest without a scan.
    by_order: BTreeMap<u64, String>,
    bytes: usize,
    next: u64,
    stats: ExecutionCacheStats,
}

struct SavedExecution {
    execution: Execution,
    positions: RunPositions,
    stamp: ExecutionStamp,
    /// Insertion order (the oldest is evicted first).
    order: u64,
}

impl SavedExecutions {
    fn take(&mut self, id: &str) -> Option<SavedExecution> {
        let entry = self.entries.remove(id)?;
        self.by_order.remove(&entry.order);
        self.bytes = self.bytes.saturating_sub(entry.stamp.len());
        Some(entry)
    }

    fn insert(
        &mut self,
        id: String,
        execution: Execution,
        positions: RunPositions,
        stamp: ExecutionStamp,
    ) {
        self.take(&id);
        if stamp.len() > SAVED_BYTES {
            return;
        }
        while self.entries.len() >= SAVED_ENTRIES || self.bytes + stamp.len() > SAVED_BYTES {
            let Some((_, oldest)) = self.by_order.pop_first() else {
                break;
            };
            self.take(&oldest);
        }
        self.bytes += stamp.len();
        self.next += 1;
        self.by_order.insert(self.next, id.clone());
        self.entries.insert(
            id,
            SavedExecution {
                execution,
                positions,
                stamp,
                order: self.next,
            },
        );
    }
}

/// What became of a unit of work handed to [`ExecutorService::handle_unit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitOutcome {
    /// Committed.
    Committed,
    /// Refused with [`QueueError::Fenced`]: nothing was applied, the instance that owns the
    /// messages now processes them again.
    Fenced,
    /// Refused with [`QueueError::TooLarge`]: nothing was applied; the execution that produced the
    /// oversized message fails when its messages come back.
    TooLarge,
}

/// An execution that produced an oversized message, or whose processing panicked: fail it when its
/// unit comes again; if failing it was refused as too large too (the FAILED execution is a little
/// larger than the last one saved), fail it compacted ([`compact_for_failure`]); if that was refused
/// too, dead-letter its messages. Each carries the error message.
#[derive(Debug, Clone)]
enum Oversized {
    Fail(String),
    Compact(String),
    Abandon(String),
}

impl ExecutorService {
    /// An executor over `queue`, reading flows from `flows`.
    pub fn new(
        queue: Arc<dyn Queue>,
        flows: Arc<FlowCache>,
        expr: Arc<ExpressionEngine>,
        config: ExecutorConfig,
    ) -> Self {
        ExecutorService {
            queue,
            flows,
            expr,
            config,
            missing_flows: Mutex::new(HashMap::new()),
            oversized: Mutex::new(HashMap::new()),
            saved: Mutex::new(SavedExecutions::default()),
            on_ended: None,
        }
    }

    /// Tell `observer` of each execution this executor saved ended, once its unit committed (the
    /// engine's waits, where the unit writes the row the repository reads).
    pub fn on_ended(mut self, observer: crate::runtime::EndedObserver) -> Self {
        self.on_ended = Some(observer);
        self
    }

    /// How often this executor reused an execution it had saved (see [`ExecutionCacheStats`]).
    pub fn execution_cache_stats(&self) -> ExecutionCacheStats {
        self.saved
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stats
    }

    /// Load an execution in `unit`: the copy this executor saved last when the stored execution is
    /// still that copy (its task-run positions go to `positions`), else the stored one, decoded.
    async fn load_execution(
        &self,
        unit: &mut dyn UnitOfWork,
        id: &str,
        positions: &mut HashMap<String, RunPositions>,
        hits: &mut u64,
    ) -> Result<Option<Execution>, QueueError> {
        let saved = self
            .saved
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take(id);
        let loaded = unit
            .load_execution_unless(id, saved.as_ref().map(|s| &s.stamp))
            .await?;
        let cache = || self.saved.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(match (loaded, saved) {
            (LoadedExecution::Missing, saved) => {
                if saved.is_some() {
                    cache().stats.misses += 1;
                }
                None
            }
            (LoadedExecution::Unchanged, Some(saved)) => {
                // Counted once the unit committed (see `ExecutionCacheStats::misses`).
                *hits += 1;
                positions.insert(id.to_string(), saved.positions);
                Some(saved.execution)
            }
            // A backend that reports an unknown stamp unchanged: load as usual.
            (LoadedExecution::Unchanged, None) => unit.load_execution(id).await?,
            (LoadedExecution::Loaded(execution, _), saved) => {
                if saved.is_some() {
                    cache().stats.misses += 1;
                }
                Some(*execution)
            }
        })
    }

    /// Run until `shutdown` is cancelled, then drain: keep processing until no message is due, so
    /// that results published by a draining worker are still applied. Backend errors are logged and
    /// retried with a backoff.
    pub async fn run(self, shutdown: CancellationToken) {
        // Flow changes (broadcast) invalidate the cached list of flows with triggers.
        let watcher = {
            let queue = self.queue.clone();
            let flows = self.flows.clone();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                use futures::StreamExt;
                let Ok(mut changes) = queue.subscribe(Topic::Flow).await else {
                    warn!(
                        "cannot follow flow changes; flow triggers see new flows within a second"
                    );
                    return;
                };
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        next = changes.next() => match next {
                            Some(_) => flows.invalidate_trigger_flows(),
                            None => return,
                        },
                    }
                }
            })
        };
        let heartbeat = Heartbeat::start(
            self.queue.clone(),
            ServiceType::Executor,
            &format!("executor-{}", crate::model::new_id()),
            self.config.liveness.heartbeat_interval,
        );
        // The liveness loop claims nothing before the main loop's first round (a unit processed,
        // an empty poll or an error) is over. A process restarted onto a message that kills it
        // (abort, stack overflow, OOM) claims that message at once; a liveness message claimed in
        // the same instant would be counted as a delivery that crashed too, and - its lease
        // ending with the culprit's - be redelivered next to it each time, until it is set aside
        // as a dead letter with it (a worker's jobs or heartbeat lost). Delivered alone, only the
        // culprit counts its crashes.
        let main_round = CancellationToken::new();
        tokio::join!(
            self.run_loop(
                MAIN_TOPICS,
                Duration::ZERO,
                shutdown.clone(),
                Some(&main_round)
            ),
            async {
                tokio::select! {
                    _ = main_round.cancelled() => {}
                    _ = shutdown.cancelled() => {}
                }
                self.run_loop(
                    &[Topic::Liveness],
                    self.config.liveness_linger,
                    shutdown.clone(),
                    None,
                )
                .await
            },
        );
        watcher.abort();
        heartbeat.stop().await;
    }

    /// Claim and process units of `topics` until `shutdown`, then drain them; after each
    /// committed unit, pause `linger` (unless draining) so the next unit takes more at once.
    /// `first_round` is cancelled when the first claim has been processed (or came back empty,
    /// or failed).
    async fn run_loop(
        &self,
        topics: &[Topic],
        linger: Duration,
        shutdown: CancellationToken,
        first_round: Option<&CancellationToken>,
    ) {
        let mut backoff = Duration::from_millis(50);
        let mut begun = false;
        loop {
            if begun && let Some(first) = first_round {
                first.cancel();
            }
            let draining = shutdown.is_cancelled();
            // The claim is never abandoned half-way (a dropped `begin` could leave rows locked by an
            // unfinished transaction, which a draining executor would then skip): shutdown is
            // noticed between claims, within `poll_wait`.
            let wait = if draining {
                Duration::ZERO
            } else {
                self.config.poll_wait
            };
            // The wait (not a claim) ends at once on shutdown: the drain starts without delay.
            let begin = crate::queue::stoppable(
                shutdown.clone(),
                self.queue.begin(
                    ConsumerGroup::Executor,
                    topics,
                    self.config.batch_size,
                    wait,
                ),
            )
            .await;
            begun = true;
            let result = match begin {
                Ok(None) if draining => return,
                Ok(None) => continue,
                Ok(Some(unit)) => self.handle_unit(unit).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(_) => {
                    backoff = Duration::from_millis(50);
                    if !linger.is_zero() && !draining {
                        tokio::select! {
                            _ = shutdown.cancelled() => {}
                            _ = tokio::time::sleep(linger) => {}
                        }
                    }
                }
                Err(e) => {
                    error!(error = %e, "executor unit of work failed; retrying");
                    if draining {
                        return;
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Process one unit of work and commit it. A fenced or too-large refusal is handled (see the
    /// module documentation) and reported as its [`UnitOutcome`]; other errors are returned (the
    /// unit was dropped: its messages come back).
    pub async fn handle_unit(&self, unit: Box<dyn UnitOfWork>) -> Result<UnitOutcome, QueueError> {
        let oversized = self
            .oversized
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut produced: Vec<(Topic, String, String)> = Vec::new();
        let mut hits = 0;
        match self
            .process_unit(unit, &oversized, &mut produced, &mut hits)
            .await
        {
            Ok(()) => {
                if !oversized.is_empty() {
                    let mut map = self
                        .oversized
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    map.retain(|id, o| {
                        matches!(o, Oversized::Abandon(_))
                            || !produced.iter().any(|(_, _, origin)| origin == id)
                    });
                }
                Ok(UnitOutcome::Committed)
            }
            Err(QueueError::Fenced { detail }) => {
                self.saved
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .stats
                    .misses += hits;
                warn!(%detail, "unit of work fenced: its messages belong to another executor now; its work is dropped");
                Ok(UnitOutcome::Fenced)
            }
            Err(QueueError::TooLarge {
                topic,
                key,
                size,
                max,
            }) => {
                let Some(id) = produced
                    .iter()
                    .find(|(t, k, _)| *t == topic && *k == key)
                    .map(|(_, _, id)| id.clone())
                else {
                    return Err(QueueError::TooLarge {
                        topic,
                        key,
                        size,
                        max,
                    });
                };
                let message = format!(
                    "execution failed: a message it produced is too large for the queue \
                     (topic {topic}, key {key}, {size} bytes, maximum {max} bytes)"
                );
                error!(execution_id = %id, "{message}");
                let mut map = self
                    .oversized
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                let next = match map.get(&id) {
                    None => Oversized::Fail(message),
                    Some(Oversized::Fail(first)) => Oversized::Compact(format!(
                        "{first}; failing the execution was refused too ({message})"
                    )),
                    Some(Oversized::Compact(first) | Oversized::Abandon(first)) => {
                        Oversized::Abandon(format!(
                            "{first}; failing it with its task runs compacted was refused too \
                             ({message})"
                        ))
                    }
                };
                map.insert(id, next);
                Ok(UnitOutcome::TooLarge)
            }
            Err(e) => Err(e),
        }
    }

    /// The work of [`ExecutorService::handle_unit`]: `produced` receives (topic, key, execution
    /// id) of every message staged and execution saved, so a refusal can be traced to the
    /// execution that produced it; the executions of `oversized` are failed (or dead-lettered).
    async fn process_unit(
        &self,
        mut unit: Box<dyn UnitOfWork>,
        oversized: &HashMap<String, Oversized>,
        produced: &mut Vec<(Topic, String, String)>,
        hits: &mut u64,
    ) -> Result<(), QueueError> {
        let deliveries = unit.deliveries().to_vec();
        // Tests only: the process aborts at one step of a unit (`testkit::faults::UnitFault`).
        #[cfg(feature = "testkit")]
        let fault = crate::testkit::faults::UnitFault::new(&deliveries);
        #[cfg(feature = "testkit")]
        fault.at(crate::testkit::faults::UnitStep::Claimed);
        let mut executions: HashMap<String, Option<Execution>> = HashMap::new();
        // The version of each execution as this unit loaded it (0: none stored).
        let mut loaded_versions: HashMap<String, u64> = HashMap::new();
        let mut dirty: Vec<String> = Vec::new();
        // The positions of each execution's task runs as the last `process` of this unit left
        // them (valid for the execution that call returned; dropped when it is replaced).
        let mut positions: HashMap<String, RunPositions> = HashMap::new();
        // The task runs of each execution changed in place since this unit loaded it (`None`:
        // unknown), so that a save compares and writes only those.
        let mut changed_runs: HashMap<String, Option<BTreeSet<usize>>> = HashMap::new();
        let mut keyed = KeyedState::default();
        let mut outgoing: Vec<Envelope> = Vec::new();
        let walk_later = self.walks_left_to_later(&deliveries, oversized);
        // The executions of this unit's messages, with the stamp of the copy this executor holds
        // (if any): the backend may read them together (one query instead of one per execution).
        let prefetch: Vec<(String, Option<ExecutionStamp>)> = {
            let saved = self.saved.lock().unwrap_or_else(PoisonError::into_inner);
            let mut seen = HashSet::new();
            deliveries
                .iter()
                .filter(|d| {
                    !matches!(
                        d.envelope.topic,
                        Topic::ConcurrencySlot | Topic::FlowPrecondition | Topic::Liveness
                    )
                })
                .map(|d| &d.envelope.key)
                .filter(|k| seen.insert(*k))
                .map(|k| (k.clone(), saved.entries.get(k).map(|s| s.stamp.clone())))
                .collect()
        };
        if !prefetch.is_empty() {
            unit.prefetch_executions(&prefetch).await?;
        }
        for (position, delivery) in deliveries.into_iter().enumerate() {
            if matches!(
                delivery.envelope.topic,
                Topic::ConcurrencySlot | Topic::FlowPrecondition | Topic::Liveness
            ) {
                let key = delivery.envelope.key.clone();
                if let Some(reason) = self.crashed_too_often(&delivery) {
                    error!(topic = %delivery.envelope.topic, %key, %reason, "dead-lettering a message that crashed the executor");
                    unit.dead_letter(delivery.tag, &reason).await?;
                    continue;
                }
                // A stage message whose processing produced a message the queue refused as too
                // large cannot be failed like an execution: it is set aside with the reason.
                if let Some(
                    Oversized::Fail(reason)
                    | Oversized::Compact(reason)
                    | Oversized::Abandon(reason),
                ) = oversized.get(&key)
                {
                    error!(topic = %delivery.envelope.topic, %key, %reason, "dead-lettering a message whose processing produced a message too large for the queue");
                    unit.dead_letter(delivery.tag, reason).await?;
                    produced.push((delivery.envelope.topic, String::new(), key));
                    continue;
                }
                let staged_before = outgoing.len();
                match delivery.envelope.topic {
                    Topic::ConcurrencySlot => {
                        self.slot_request(unit.as_mut(), &mut keyed, &mut outgoing, &delivery)
                            .await?
                    }
                    Topic::FlowPrecondition => {
                        self.precondition_check(unit.as_mut(), &mut keyed, &mut outgoing, &delivery)
                            .await?
                    }
                    _ => {
                        self.liveness_message(unit.as_mut(), &mut keyed, &mut outgoing, &delivery)
                            .await?
                    }
                }
                for e in &outgoing[staged_before..] {
                    produced.push((e.topic, e.key.clone(), key.clone()));
                }
                continue;
            }
            let event = match ExecutorEvent::decode(&delivery.envelope) {
                Ok(e) if e.execution_id() == delivery.envelope.key => e,
                Ok(e) => {
                    let reason = format!(
                        "message keyed '{}' concerns execution {}",
                        delivery.envelope.key,
                        e.execution_id()
                    );
                    dead_letter(unit.as_mut(), &delivery, &reason).await?;
                    continue;
                }
                Err(e) => {
                    dead_letter(unit.as_mut(), &delivery, &e.to_string()).await?;
                    continue;
                }
            };
            let id = event.execution_id().to_string();
            let span = info_span!("executor.process", execution_id = %id, topic = %delivery.envelope.topic);
            let staged_before = outgoing.len();
            // A message that crashed the process too often: set aside, its execution failed (by
            // the oversized path), unless failing it crashed the process too.
            let crashed = self.crashed_too_often(&delivery).map(|reason| {
                if delivery.attempt > self.config.max_delivery_attempts.saturating_add(1) {
                    Oversized::Abandon(format!(
                        "{reason}; failing its execution crashed the executor too"
                    ))
                } else {
                    Oversized::Fail(reason)
                }
            });
            if let Some(Oversized::Fail(reason)) = &crashed {
                error!(execution_id = %id, %reason, "dead-lettering a message that crashed the executor; failing its execution");
                unit.dead_letter(delivery.tag, reason).await?;
            }
            match crashed.as_ref().or_else(|| oversized.get(&id)) {
                None => {}
                Some(Oversized::Abandon(reason)) => {
                    error!(execution_id = %id, %reason, "dead-lettering a message of an execution that cannot be saved");
                    unit.dead_letter(delivery.tag, reason).await?;
                    continue;
                }
                Some(stage @ (Oversized::Fail(reason) | Oversized::Compact(reason))) => {
                    let compact = matches!(stage, Oversized::Compact(_));
                    if !executions.contains_key(&id) {
                        let loaded = self
                            .load_execution(unit.as_mut(), &id, &mut positions, hits)
                            .await?;
                        loaded_versions.insert(id.clone(), loaded_version(&loaded));
                        executions.insert(id.clone(), loaded);
                        changed_runs.insert(id.clone(), Some(BTreeSet::new()));
                    }
                    let current = executions.get(&id).cloned().flatten();
                    let reference = current.or_else(|| match &event {
                        ExecutorEvent::Execution(e) => Some((**e).clone()),
                        _ => None,
                    });
                    let failed = match reference {
                        Some(reference) => fail_oversized(&reference, reason, compact)?,
                        None => None,
                    };
                    // Handled once this unit commits, whatever follows (the entry is dropped).
                    produced.push((Topic::Execution, String::new(), id.clone()));
                    if let Some((failed, messages)) = failed {
                        outgoing.extend(messages);
                        outgoing.extend(self.release_slot(&failed).await?);
                        if let Some(event) = TriggerEvent::execution_ended(&failed) {
                            outgoing.push(event.envelope()?);
                        }
                        outgoing.extend(self.flow_triggered(&failed).await?);
                        positions.remove(&id);
                        changed_runs.insert(id.clone(), None);
                        executions.insert(id.clone(), Some(failed));
                        if !dirty.contains(&id) {
                            dirty.push(id.clone());
                        }
                        for e in &outgoing[staged_before..] {
                            produced.push((e.topic, e.key.clone(), id.clone()));
                        }
                        continue;
                    }
                    if crashed.is_some() {
                        // Set aside above; its execution ended already (or is unknown).
                        continue;
                    }
                    // It ended already (or is unknown): this message is processed as usual.
                }
            }
            async {
                if !executions.contains_key(&id) {
                    let loaded = self
                        .load_execution(unit.as_mut(), &id, &mut positions, hits)
                        .await?;
                    loaded_versions.insert(id.clone(), loaded_version(&loaded));
                    executions.insert(id.clone(), loaded);
                    changed_runs.insert(id.clone(), Some(BTreeSet::new()));
                    #[cfg(feature = "testkit")]
                    fault.at(crate::testkit::faults::UnitStep::Loaded);
                }
                // Borrowed, not cloned: an execution is copied at most once per unit (when loaded).
                let current = executions.get(&id).and_then(Option::as_ref);
                let Some(reference) = current.or(match &event {
                    ExecutorEvent::Execution(e) => Some(&**e),
                    _ => None,
                }) else {
                    debug!("event for an unknown execution; dropped");
                    return Ok::<(), QueueError>(());
                };
                // A restart and a change of labels apply to an ended execution too.
                let restart = matches!(
                    &event,
                    ExecutorEvent::Command(
                        ExecutionCommand::Restart { .. } | ExecutionCommand::SetLabels { .. }
                    )
                );
                if !restart && current.as_ref().is_some_and(|c| c.state.is_terminated()) {
                    debug!("event for a terminated execution; dropped");
                    // A worker started a stale copy of an attempt (resubmitted, or of an
                    // execution killed while its worker died): stop it.
                    if let (ExecutorEvent::WorkerResult(r), Some(c)) = (&event, current)
                        && let Some(key) = stale_attempt_started(c, r)
                    {
                        outgoing.push(
                            ExecutionKilled {
                                execution_id: id.clone(),
                                attempt: Some(key),
                            }
                            .envelope()?,
                        );
                    }
                    return Ok(());
                }
                let index = match self
                    .flows
                    .index(
                        &reference.tenant_id,
                        &reference.namespace,
                        &reference.flow_id,
                        reference.flow_revision,
                    )
                    .await
                {
                    Ok(i) => {
                        self.flow_found(reference);
                        i
                    }
                    // A backend failure is transient: roll the unit back, it is delivered again.
                    Err(FlowCacheError::Source(e)) => {
                        return Err(QueueError::backend("load the flow of an execution", e));
                    }
                    Err(e) => {
                        // Not visible yet (the source may lag behind a deploy): put the event
                        // back, delayed, until the grace period ends.
                        if matches!(e, FlowCacheError::NotFound { .. })
                            && let Some(delay) = self.wait_for_flow(reference)
                        {
                            debug!(flow = %reference.flow_id, namespace = %reference.namespace,
                                revision = reference.flow_revision, ?delay,
                                "flow revision not visible yet; event retried later");
                            let at = Utc::now()
                                + chrono::Duration::from_std(delay)
                                    .unwrap_or(chrono::Duration::MAX);
                            outgoing.push(delivery.envelope.clone().delayed_until(at));
                            return Ok(());
                        }
                        self.flow_found(reference);
                        // The execution cannot run (its flow revision is missing or invalid): fail
                        // it with a visible reason, and tell its parent, if any, that it ended.
                        if let Some((failed, messages)) = fail_unrunnable(reference, &e)? {
                            outgoing.extend(messages);
                            outgoing.extend(self.release_slot(&failed).await?);
                            if let Some(event) = TriggerEvent::execution_ended(&failed) {
                                outgoing.push(event.envelope()?);
                            }
                            positions.remove(&id);
                            changed_runs.insert(id.clone(), None);
                            executions.insert(id.clone(), Some(failed));
                            if !dirty.contains(&id) {
                                dirty.push(id.clone());
                            }
                        }
                        return Ok(());
                    }
                };
                let was_terminated = current.is_some_and(|c| c.state.is_terminated());
                let previous_state = current.map(|c| c.state.current());
                let previous_history = current.map_or(0, |c| c.state.histories().len());
                // `process` takes the execution and gives it back (changed or not) in its outcome.
                let taken = executions.get_mut(&id).and_then(Option::take);
                // A panic while processing (a bug, never expected) must not kill the executor nor
                // loop: the unit is rolled back and, when it comes again, the execution is failed
                // with the reason (the path of an oversized execution), its message consumed.
                let kept = positions.entry(id.clone()).or_default();
                let processed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    #[cfg(feature = "testkit")]
                    crate::testkit::faults::executor_panic_point(taken.as_ref(), &event);
                    let walk = if walk_later[position] {
                        Walk::Later
                    } else {
                        Walk::Now
                    };
                    process_walking(&index, &self.expr, Utc::now(), taken, &event, kept, walk)
                }));
                let processed = match processed {
                    Ok(processed) => processed,
                    Err(panic) => {
                        let reason = format!(
                            "execution failed: the executor could not process one of its messages \
                             (topic {}): panic: {}",
                            delivery.envelope.topic,
                            panic_message(panic.as_ref())
                        );
                        error!(execution_id = %id, "{reason}");
                        self.oversized
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .entry(id.clone())
                            .or_insert(Oversized::Fail(reason.clone()));
                        return Err(QueueError::backend(
                            "process a message of an execution",
                            std::io::Error::other(reason),
                        ));
                    }
                };
                if let Some(outcome) = processed {
                    let mut by_call = kept.take_changed();
                    let count = outcome.execution.task_run_list.len();
                    let outcome = crate::executor::task_run_limit::cap_task_runs(
                        outcome,
                        self.config.max_task_runs,
                    );
                    if outcome.execution.task_run_list.len() != count {
                        // Cut and failed in place, outside the positions' tracking.
                        by_call = None;
                    }
                    let entry = changed_runs.entry(id.clone()).or_insert(None);
                    match (entry.as_mut(), by_call) {
                        (Some(known), Some(positions)) => known.extend(positions),
                        _ => *entry = None,
                    }
                    if let Some(reason) = &outcome.ignored {
                        debug!(%reason, "event ignored");
                    }
                    for task in outcome.worker_tasks {
                        outgoing.push(WorkerJob::Task(Box::new(task)).envelope()?);
                    }
                    for delay in outcome.delays {
                        outgoing.push(delay.command.envelope()?.delayed_until(delay.at));
                    }
                    if outcome.kill_broadcast {
                        outgoing.push(
                            ExecutionKilled {
                                execution_id: id.clone(),
                                attempt: None,
                            }
                            .envelope()?,
                        );
                    }
                    for key in &outcome.stale_attempts {
                        debug!(job = %key, "a worker started a resubmitted attempt: stopping it");
                        outgoing.push(
                            ExecutionKilled {
                                execution_id: id.clone(),
                                attempt: Some(key.clone()),
                            }
                            .envelope()?,
                        );
                    }
                    for log in &outcome.logs {
                        outgoing.push(Envelope::json(Topic::Log, &id, log)?);
                    }
                    for child in &outcome.kill_executions {
                        outgoing.push(
                            ExecutionCommand::Kill {
                                execution_id: child.clone(),
                            }
                            .envelope()?,
                        );
                    }
                    for child in &outcome.restart_executions {
                        outgoing.push(
                            ExecutionCommand::Restart {
                                execution_id: child.clone(),
                            }
                            .envelope()?,
                        );
                    }
                    for next in &outcome.new_executions {
                        outgoing.push(execution_envelope(next)?);
                    }
                    for request in &outcome.subflow_requests {
                        outgoing.push(self.subflow_envelope(request).await?);
                    }
                    // The flow's slots belong to the flow's keyed stage: ask it.
                    if outcome.slot != SlotRequest::None
                        && let Some(limit) = &index.flow.concurrency
                    {
                        let execution = &outcome.execution;
                        outgoing.push(
                            SlotMessage {
                                tenant_id: execution.tenant_id.clone(),
                                namespace: execution.namespace.clone(),
                                flow_id: execution.flow_id.clone(),
                                execution_id: id.clone(),
                                request: outcome.slot,
                                concurrency: limit.clone(),
                            }
                            .envelope()?,
                        );
                    }
                    if outcome.changed && !dirty.contains(&id) {
                        dirty.push(id.clone());
                    }
                    executions.insert(id.clone(), Some(outcome.execution));
                }
                let current = executions.get(&id).and_then(Option::as_ref);
                // Ended in this unit: it was running, or a restart in this unit already ended it
                // again (e.g. refused by a concurrency limit): its parent waits for the result.
                let ended_again = was_terminated
                    && current.is_some_and(|c| c.state.histories().len() > previous_history);
                if (!was_terminated || ended_again)
                    && let Some(result) = current.and_then(result_for_parent)
                {
                    outgoing.push(result.envelope()?);
                }
                // The trigger that started it (schedule, polling) is told, keyed by the trigger:
                // the scheduler releases its lock and applies `stopAfter`.
                if (!was_terminated || ended_again)
                    && let Some(event) = current.and_then(TriggerEvent::execution_ended)
                {
                    outgoing.push(event.envelope()?);
                }
                if let Some(now) = current
                    && Some(now.state.current()) != previous_state
                    && (now.state.is_terminated() || now.state.current() == StateType::Paused)
                {
                    outgoing.extend(self.flow_triggered(now).await?);
                }
                Ok(())
            }
            .instrument(span)
            .await?;
            for e in &outgoing[staged_before..] {
                produced.push((e.topic, e.key.clone(), id.clone()));
            }
        }
        #[cfg(feature = "testkit")]
        fault.at(crate::testkit::faults::UnitStep::Processed);
        let index_changes = !self.queue.capabilities().repository_in_unit;
        for id in &dirty {
            produced.push((Topic::Execution, id.clone(), id.clone()));
            if index_changes {
                produced.push((Topic::ExecutionChange, id.clone(), id.clone()));
            }
        }
        // The stamps of the executions saved, for the cache once the unit committed.
        let mut stamps: Vec<(String, ExecutionStamp)> = Vec::new();
        for id in &dirty {
            if let Some(Some(e)) = executions.get_mut(id) {
                // One more than the stored version (a replacing event may carry any version).
                let stored = loaded_versions.get(id).copied().unwrap_or(0);
                e.metadata.version = stored.max(e.metadata.version) + 1;
                let changed: Option<Vec<usize>> = changed_runs
                    .get(id)
                    .cloned()
                    .flatten()
                    .map(|known| known.into_iter().collect());
                if let Some(stamp) = unit.save_execution_changed(e, changed.as_deref()).await? {
                    stamps.push((id.clone(), stamp));
                }
                if index_changes {
                    let change = ExecutionChange::Saved {
                        execution: Box::new(e.clone()),
                    };
                    outgoing.push(change.envelope()?);
                }
            }
        }
        let slots = keyed.slots.iter().map(|(k, (v, c))| (k, Some(v), *c));
        save_changed(
            unit.as_mut(),
            concurrency::STATE_KIND,
            Topic::ConcurrencySlot,
            slots,
        )
        .await?;
        let results = keyed
            .preconditions
            .iter()
            .map(|(k, (v, c))| (k, v.as_ref(), *c));
        save_changed(
            unit.as_mut(),
            preconditions::STATE_KIND,
            Topic::FlowPrecondition,
            results,
        )
        .await?;
        let liveness = keyed.liveness.iter().map(|(k, (v, c))| (k, v.as_ref(), *c));
        save_changed(
            unit.as_mut(),
            liveness::STATE_KIND,
            Topic::Liveness,
            liveness,
        )
        .await?;
        #[cfg(feature = "testkit")]
        fault.at(crate::testkit::faults::UnitStep::Saved);
        if !outgoing.is_empty() {
            unit.publish(outgoing).await?;
        }
        #[cfg(feature = "testkit")]
        fault.at(crate::testkit::faults::UnitStep::Published);
        unit.commit().await?;
        #[cfg(feature = "testkit")]
        fault.at(crate::testkit::faults::UnitStep::Committed);
        if let Some(observer) = &self.on_ended {
            for id in &dirty {
                if let Some(Some(e)) = executions.get(id)
                    && e.state.is_terminated()
                {
                    observer(e);
                }
            }
        }
        // Committed: what was saved is what is stored. An ended execution is rarely processed
        // again; it is not kept.
        let mut saved = self.saved.lock().unwrap_or_else(PoisonError::into_inner);
        saved.stats.hits += std::mem::take(hits);
        for (id, stamp) in stamps {
            match executions.remove(&id).flatten() {
                Some(e) if !e.state.is_terminated() => {
                    let kept = positions.remove(&id).unwrap_or_default();
                    saved.insert(id, e, kept, stamp);
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The liveness stage: one [`LivenessMessage`] applied to its instance's state (loaded once
    /// per unit under the instance's key, which this unit claimed) with [`liveness::apply`]; its
    /// delayed checks and verdicts are staged in the unit.
    async fn liveness_message(
        &self,
        unit: &mut dyn UnitOfWork,
        keyed: &mut KeyedState,
        outgoing: &mut Vec<Envelope>,
        delivery: &Delivery,
    ) -> Result<(), QueueError> {
        let key = &delivery.envelope.key;
        let message: LivenessMessage = match delivery.envelope.decode() {
            Ok(m) => m,
            Err(e) => return dead_letter(unit, delivery, &e.to_string()).await,
        };
        if message.instance_id() != key {
            let reason = format!(
                "liveness message of instance '{}' keyed '{key}'",
                message.instance_id()
            );
            return dead_letter(unit, delivery, &reason).await;
        }
        if !keyed.liveness.contains_key(key) {
            let stored = match unit.load_state(liveness::STATE_KIND, key).await? {
                Some(v) => serde_json::from_value(v).unwrap_or_else(|e| {
                    warn!(instance = %key, error = %e, "unreadable liveness state; starting over");
                    None
                }),
                None => None,
            };
            keyed.liveness.insert(key.clone(), (stored, false));
        }
        let Some((state, changed)) = keyed.liveness.get_mut(key) else {
            return Ok(());
        };
        let now = Utc::now();
        let decision = liveness::apply(state, message, now, &self.config.liveness);
        *changed |= decision.changed;
        if let Some(dead) = &decision.declared_dead {
            let resubmits = liveness::resubmit_commands(dead, &self.config.resubmit, now);
            warn!(
                instance = %key,
                service = ?dead.instance.type_,
                silent_since = %dead.last_seen,
                held_jobs = dead.jobs.len(),
                jobs = ?dead.jobs.keys().collect::<Vec<_>>(),
                strategy = ?self.config.resubmit.strategy,
                resubmitted = resubmits.len(),
                "service instance declared dead: no heartbeat within the liveness timeout"
            );
            for (command, at) in resubmits {
                let envelope = command.envelope()?;
                outgoing.push(match at {
                    Some(at) => envelope.delayed_until(at),
                    None => envelope,
                });
            }
        }
        for (message, at) in decision.messages {
            let envelope = message.envelope()?;
            outgoing.push(match at {
                Some(at) => envelope.delayed_until(at),
                None => envelope,
            });
        }
        Ok(())
    }
}

impl ExecutorService {
    /// The flow's keyed stage: one slot request applied to the flow's slots (loaded once per unit,
    /// under the flow's key, which this unit claimed), and the resulting `Start` /
    /// `ConcurrencyLimited` commands, keyed by execution.
    async fn slot_request(
        &self,
        unit: &mut dyn UnitOfWork,
        keyed: &mut KeyedState,
        outgoing: &mut Vec<Envelope>,
        delivery: &Delivery,
    ) -> Result<(), QueueError> {
        let key = &delivery.envelope.key;
        let message: SlotMessage = match delivery.envelope.decode() {
            Ok(m) => m,
            Err(e) => return dead_letter(unit, delivery, &e.to_string()).await,
        };
        if message.key() != *key {
            let reason = format!("slot request of flow '{}' keyed '{key}'", message.key());
            return dead_letter(unit, delivery, &reason).await;
        }
        let span = info_span!("executor.slot", namespace = %message.namespace, flow = %message.flow_id, execution_id = %message.execution_id);
        async {
            if !keyed.slots.contains_key(key) {
                let slots = match unit.load_state(concurrency::STATE_KIND, key).await? {
                    Some(v) => serde_json::from_value(v).unwrap_or_else(|e| {
                        warn!(%key, error = %e, "unreadable concurrency slots; starting over");
                        ConcurrencySlots::default()
                    }),
                    None => ConcurrencySlots::default(),
                };
                keyed.slots.insert(key.clone(), (slots, false));
            }
            let Some((slots, changed)) = keyed.slots.get_mut(key) else {
                return Ok(());
            };
            let decision = apply_slot_request(
                slots,
                message.request,
                &message.execution_id,
                &message.concurrency,
            );
            *changed |= decision.changed;
            for command in decision.follow_up.into_iter().chain(decision.start) {
                debug!(command = ?command, "slot decision");
                outgoing.push(command.envelope()?);
            }
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// The trigger's keyed stage: one precondition check applied to the trigger's results (loaded
    /// once per unit, under the trigger's key, which this unit claimed); the triggered execution is
    /// published when the set is complete.
    async fn precondition_check(
        &self,
        unit: &mut dyn UnitOfWork,
        keyed: &mut KeyedState,
        outgoing: &mut Vec<Envelope>,
        delivery: &Delivery,
    ) -> Result<(), QueueError> {
        let key = &delivery.envelope.key;
        let message: PreconditionMessage = match delivery.envelope.decode() {
            Ok(m) => m,
            Err(e) => return dead_letter(unit, delivery, &e.to_string()).await,
        };
        if message.trigger.key != *key {
            let reason = format!(
                "precondition check of trigger '{}' keyed '{key}'",
                message.trigger.key
            );
            return dead_letter(unit, delivery, &reason).await;
        }
        let span = info_span!("executor.preconditions", trigger = %key);
        async {
            if !keyed.preconditions.contains_key(key) {
                let stored: Option<PreconditionState> = unit
                    .load_state(preconditions::STATE_KIND, key)
                    .await?
                    .and_then(|v| match serde_json::from_value(v) {
                        Ok(s) => Some(s),
                        Err(e) => {
                            warn!(%key, error = %e, "unreadable precondition state; starting over");
                            None
                        }
                    });
                keyed.preconditions.insert(key.clone(), (stored, false));
            }
            let Some((state, changed)) = keyed.preconditions.get_mut(key) else {
                return Ok(());
            };
            let decision = preconditions::apply(state.take(), &message.trigger.check, message.at);
            if let Some(why) = &decision.skipped {
                debug!(%why, "precondition not counted");
            }
            *state = decision.state;
            *changed |= decision.changed;
            if decision.fire
                && let Some(execution) = self.start_triggered(message.trigger.triggered).await?
            {
                outgoing.push(execution_envelope(&execution)?);
            }
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// The reason to set `delivery` aside when it was delivered more than
    /// [`ExecutorConfig::max_delivery_attempts`] times (each earlier delivery crashed the process
    /// before its unit ended), naming the count and the key.
    /// For each delivery of a unit, whether its walk can be left to a later delivery of the same
    /// unit ([`Walk::Later`]): a worker's final result of the same execution that will be
    /// processed (it decodes, is keyed by its execution, is not set aside) and walks. The last
    /// such result of an execution walks; an all-at-once ForEach whose n results come in one unit
    /// walks its tree once instead of n times.
    fn walks_left_to_later(
        &self,
        deliveries: &[Delivery],
        oversized: &HashMap<String, Oversized>,
    ) -> Vec<bool> {
        let mut later = vec![false; deliveries.len()];
        // Executions with a walking final result after the position being looked at.
        let mut walks_after: HashSet<&str> = HashSet::new();
        for (position, delivery) in deliveries.iter().enumerate().rev() {
            if delivery.envelope.topic != Topic::WorkerTaskResult {
                continue;
            }
            let key = delivery.envelope.key.as_str();
            if walks_after.contains(key) {
                later[position] = true;
                continue;
            }
            let walks = self.crashed_too_often(delivery).is_none()
                && !oversized.contains_key(key)
                && matches!(
                    ExecutorEvent::decode(&delivery.envelope),
                    Ok(ExecutorEvent::WorkerResult(r))
                        if r.execution_id == key && r.state.is_terminated()
                );
            if walks {
                walks_after.insert(key);
            }
        }
        later
    }

    fn crashed_too_often(&self, delivery: &Delivery) -> Option<String> {
        let max = self.config.max_delivery_attempts;
        if max == 0 || delivery.attempt <= max {
            return None;
        }
        Some(format!(
            "execution failed: one of its messages (topic {}, key {}) crashed the executor {} \
             times; it is set aside as a dead letter (kestra.queue.max-delivery-attempts: {max})",
            delivery.envelope.topic,
            delivery.envelope.key,
            delivery.attempt - 1
        ))
    }

    /// The flow revision of `execution` was found (or given up on): forget when it was missed.
    fn flow_found(&self, execution: &Execution) {
        let mut missing = self.missing_flows.lock().unwrap_or_else(|e| e.into_inner());
        if !missing.is_empty() {
            missing.remove(&flow_revision(execution));
        }
    }

    /// The flow revision of `execution` is not visible: how long to wait before trying again, or
    /// `None` when [`ExecutorConfig::flow_grace`] has passed since this executor first missed it.
    fn wait_for_flow(&self, execution: &Execution) -> Option<Duration> {
        let grace = self.config.flow_grace;
        let now = Instant::now();
        let mut missing = self.missing_flows.lock().unwrap_or_else(|e| e.into_inner());
        let (first, last) = missing
            .entry(flow_revision(execution))
            .or_insert((now, now));
        if now.duration_since(*last) > grace {
            *first = now;
        }
        *last = now;
        let waited = now.duration_since(*first);
        if waited >= grace {
            missing.remove(&flow_revision(execution));
            return None;
        }
        Some((waited / 2).clamp(Duration::from_millis(100), Duration::from_secs(5)))
    }

    /// The [`SlotRequest::Release`] of `failed`, an execution the executor failed outside
    /// `process` (oversized, panicked, unrunnable), when its flow revision limits concurrency: the
    /// slot it held (or its place in the queue) goes to the next queued execution. `None` when the
    /// flow has no limit or its revision cannot be read (a flow that was deleted has no queue to
    /// unblock). A release of an execution that held nothing changes nothing.
    async fn release_slot(&self, failed: &Execution) -> Result<Option<Envelope>, QueueError> {
        let index = match self
            .flows
            .index(
                &failed.tenant_id,
                &failed.namespace,
                &failed.flow_id,
                failed.flow_revision,
            )
            .await
        {
            Ok(index) => index,
            Err(FlowCacheError::Source(e)) => {
                return Err(QueueError::backend("load the flow of an execution", e));
            }
            Err(_) => return Ok(None),
        };
        let Some(limit) = &index.flow.concurrency else {
            return Ok(None);
        };
        Ok(Some(
            SlotMessage {
                tenant_id: failed.tenant_id.clone(),
                namespace: failed.namespace.clone(),
                flow_id: failed.flow_id.clone(),
                execution_id: failed.id.clone(),
                request: SlotRequest::Release,
                concurrency: limit.clone(),
            }
            .envelope()?,
        ))
    }

    /// What the Flow triggers make of `ended`, which reached its state: the executions of the
    /// triggers that fire now (inputs resolved; a trigger whose inputs are invalid is skipped with
    /// a warning), and a [`PreconditionMessage`] for the stage of each trigger whose preconditions
    /// decide with their stored results.
    async fn flow_triggered(&self, ended: &Execution) -> Result<Vec<Envelope>, QueueError> {
        // A list that cannot be read fails the unit (retried), never skips the triggers.
        let flows = self
            .flows
            .flows_with_triggers(&ended.tenant_id)
            .await
            .map_err(|e| QueueError::backend("list the flows with triggers", e))?;
        if flows.is_empty() {
            return Ok(Vec::new());
        }
        let plan = plan_flow_triggers(ended, &flows, self.flows.registry(), &self.expr, Utc::now());
        for p in &plan.problems {
            warn!(execution_id = %ended.id, "flow trigger: {p}");
        }
        let mut out = Vec::new();
        for t in plan.ready {
            if let Some(execution) = self.start_triggered(t).await? {
                out.push(execution_envelope(&execution)?);
            }
        }
        for pending in plan.pending {
            debug!(trigger = %pending.key, "precondition check sent to the trigger's stage");
            out.push(
                PreconditionMessage {
                    at: plan.at,
                    trigger: pending,
                }
                .envelope()?,
            );
        }
        Ok(out)
    }

    /// The execution a fired Flow trigger starts, its inputs resolved against its flow; `None`
    /// (with a warning) when the flow is gone or the inputs are invalid. A flow source error fails
    /// the unit (retried).
    async fn start_triggered(
        &self,
        t: TriggeredExecution,
    ) -> Result<Option<Execution>, QueueError> {
        let mut execution = t.execution;
        let flow = match self
            .flows
            .flow(
                &execution.tenant_id,
                &execution.namespace,
                &execution.flow_id,
                Some(execution.flow_revision),
            )
            .await
        {
            Ok(f) => f,
            Err(FlowCacheError::Source(e)) => {
                return Err(QueueError::backend(
                    "load a flow started by a flow trigger",
                    e,
                ));
            }
            Err(e) => {
                warn!(error = %e, "flow trigger: flow vanished");
                return Ok(None);
            }
        };
        let raw = t
            .inputs
            .into_iter()
            .map(|(k, v)| (k, RawInput::Json(v)))
            .collect();
        match resolve_inputs(
            &flow,
            raw,
            ExecutionRef::of(&execution),
            None,
            self.expr.as_ref(),
        )
        .await
        {
            Ok(inputs) => execution.inputs = inputs,
            Err(e) => {
                warn!(flow = %flow.id, namespace = %flow.namespace, "flow trigger: invalid inputs: {e}");
                return Ok(None);
            }
        }
        debug!(triggered = %execution.id, flow = %flow.id, "flow trigger fired");
        Ok(Some(execution))
    }

    /// The child execution of a Subflow request, or a failed result for its parent.
    async fn subflow_envelope(&self, request: &SubflowRequest) -> Result<Envelope, QueueError> {
        let child = &request.execution;
        let failure = |message: String| {
            warn!(child = %child.id, %message, "subflow execution not created");
            request.failure(message).envelope()
        };
        let flow = match self
            .flows
            .flow(
                &child.tenant_id,
                &child.namespace,
                &child.flow_id,
                request.revision,
            )
            .await
        {
            Ok(f) => f,
            Err(FlowCacheError::Source(e)) => {
                return Err(QueueError::backend("load the flow of a subflow", e));
            }
            Err(e) => return failure(e.to_string()),
        };
        if flow.disabled {
            return failure(format!(
                "flow {}.{} is disabled",
                child.namespace, child.flow_id
            ));
        }
        let mut execution = complete_child(request, &flow);
        let raw = request
            .inputs
            .iter()
            .map(|(k, v)| (k.clone(), RawInput::Json(v.clone())))
            .collect();
        match resolve_inputs(
            &flow,
            raw,
            ExecutionRef::of(&execution),
            None,
            self.expr.as_ref(),
        )
        .await
        {
            Ok(inputs) => execution.inputs = inputs,
            Err(e) => return failure(format!("invalid inputs: {e}")),
        }
        execution_envelope(&execution)
    }
}

fn flow_revision(execution: &Execution) -> FlowRevision {
    (
        execution.tenant_id.clone(),
        execution.namespace.clone(),
        execution.flow_id.clone(),
        execution.flow_revision,
    )
}

/// An execution whose flow revision cannot run (missing, or not indexable): the execution FAILED
/// with the reason, and the messages that tell the world: an ERROR log line and, for a subflow
/// child, the result its parent waits for. `None` when the execution cannot move to FAILED.
fn fail_unrunnable(
    execution: &Execution,
    reason: &FlowCacheError,
) -> Result<Option<(Execution, Vec<Envelope>)>, QueueError> {
    let mut failed = execution.clone();
    if failed.state.transition(StateType::Failed).is_err() {
        return Ok(None);
    }
    let mut messages = vec![log_envelope(
        &failed,
        &format!("execution failed: {reason}"),
    )?];
    if let Some(result) = result_for_parent(&failed) {
        messages.push(result.envelope()?);
    }
    Ok(Some((failed, messages)))
}

/// The job key of `r` when it is a worker's RUNNING for an attempt of `execution` (which has
/// ended) that must not run: a stale copy of an attempt that was resubmitted, or the job of a
/// worker that died while the execution was being killed, delivered again by the queue after the
/// execution ended (to a worker that never saw the kill signal). Stopping an attempt that is not
/// running (a duplicate RUNNING of a finished one) changes nothing on the worker.
fn stale_attempt_started(
    execution: &Execution,
    r: &crate::messages::WorkerTaskResult,
) -> Option<String> {
    if r.state != StateType::Running || !execution.state.is_terminated() {
        return None;
    }
    let run = execution
        .task_run_list
        .iter()
        .find(|t| t.id == r.task_run_id)?;
    run.attempts.get(r.attempt.checked_sub(1)? as usize)?;
    Some(format!("{}/{}", r.task_run_id, r.attempt))
}

/// Stage setting aside a message the executor cannot handle (malformed, or keyed unlike what it
/// concerns); the unit goes on with the others.
async fn dead_letter(
    unit: &mut dyn UnitOfWork,
    delivery: &Delivery,
    reason: &str,
) -> Result<(), QueueError> {
    warn!(topic = %delivery.envelope.topic, key = %delivery.envelope.key, %reason, "dead-lettering a message");
    unit.dead_letter(delivery.tag, reason).await
}

/// The text of a panic's payload (`panic!` with a literal or a formatted message).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// An execution whose processing produced a message too large for the queue (or panicked), failed
/// from `execution` (its last committed state): the execution and its unfinished task runs FAILED,
/// and the messages that tell the world: a kill broadcast (its running attempts stop), an ERROR log
/// with `reason` and, for a subflow child, its parent's result. `None` when it already ended. (Its
/// concurrency slot is released by the caller: [`ExecutorService::release_slot`].) With `compact`,
/// the execution is compacted first ([`compact_for_failure`]) and the log says so.
fn fail_oversized(
    execution: &Execution,
    reason: &str,
    compact: bool,
) -> Result<Option<(Execution, Vec<Envelope>)>, QueueError> {
    let mut failed = execution.clone();
    if failed.state.transition(StateType::Failed).is_err() {
        return Ok(None);
    }
    for task_run in failed.task_run_list.iter_mut() {
        if !task_run.state.is_terminated() {
            // Unfinished task runs end with their execution (a refused transition keeps its state).
            let _ = task_run.state.transition(StateType::Failed);
        }
    }
    let compacted;
    let reason = if compact {
        compact_for_failure(&mut failed);
        compacted = format!(
            "{reason}; to fit, the outputs, attempts and intermediate states of its task runs \
             were dropped from the execution"
        );
        compacted.as_str()
    } else {
        reason
    };
    let mut messages = vec![
        ExecutionKilled {
            execution_id: failed.id.clone(),
            attempt: None,
        }
        .envelope()?,
        log_envelope(&failed, reason)?,
    ];
    if let Some(result) = result_for_parent(&failed) {
        messages.push(result.envelope()?);
    }
    Ok(Some((failed, messages)))
}

/// Shrink an execution that is too large to be saved even as FAILED: every task run loses its
/// outputs, its attempts and the intermediate entries of its state history (its first and last
/// states, so its start, end and duration, are kept). About half of a small task run's document
/// (a `Return` in a ForEach: ~880 bytes, ~490 after); the execution's own state, inputs,
/// variables and labels are kept.
fn compact_for_failure(execution: &mut Execution) {
    for task_run in execution.task_run_list.iter_mut() {
        task_run.outputs = None;
        task_run.attempts.clear();
        let histories = task_run.state.histories();
        if histories.len() > 2
            && let (Some(first), Some(last)) = (histories.first(), histories.last())
            && let Some(ends) = State::from_histories(vec![first.clone(), last.clone()])
        {
            task_run.state = ends;
        }
    }
}

fn log_envelope(execution: &Execution, message: &str) -> Result<Envelope, QueueError> {
    let entry = LogEntry {
        id: crate::model::new_id(),
        tenant_id: execution.tenant_id.clone(),
        namespace: execution.namespace.clone(),
        flow_id: execution.flow_id.clone(),
        task_id: None,
        execution_id: Some(execution.id.clone()),
        task_run_id: None,
        attempt_number: None,
        trigger_id: None,
        timestamp: Utc::now(),
        level: Level::Error,
        thread: Some("executor".into()),
        message: message.to_string(),
    };
    Envelope::json(Topic::Log, &execution.id, &entry)
}

/// The version of an execution as loaded (0 when none is stored).
fn loaded_version(loaded: &Option<Execution>) -> u64 {
    loaded.as_ref().map_or(0, |e| e.metadata.version)
}

#[cfg(test)]
mod tests {
    use serde_json::{Map, json};

    use super::*;
    use crate::executor::subflow::SUBFLOW_TRIGGER_TYPE;
    use crate::model::{ExecutionTrigger, TaskRun, TaskRunAttempt};

    #[test]
    fn the_two_loops_claim_every_executor_topic_once() {
        // The liveness loop claims `Topic::Liveness` alone; the main loop every other topic.
        assert_eq!(EXECUTOR_TOPICS.last(), Some(&Topic::Liveness));
        assert!(!MAIN_TOPICS.contains(&Topic::Liveness));
        assert_eq!(MAIN_TOPICS.len() + 1, EXECUTOR_TOPICS.len());
        for t in Topic::ALL {
            let consumed = t.groups().contains(&ConsumerGroup::Executor);
            assert_eq!(EXECUTOR_TOPICS.contains(&t), consumed, "{t}");
        }
    }

    fn not_found() -> FlowCacheError {
        FlowCacheError::NotFound {
            namespace: "tests".into(),
            id: "gone".into(),
            revision: Some(3),
        }
    }

    #[test]
    fn an_unrunnable_subflow_child_fails_and_answers_its_parent() -> Result<(), QueueError> {
        let mut child = Execution::new("tests", "gone", 3);
        child.parent_id = Some("parent-1".into());
        let mut variables = Map::new();
        variables.insert("taskRunId".into(), json!("taskrun-9"));
        child.trigger = Some(ExecutionTrigger {
            id: "call".into(),
            type_: SUBFLOW_TRIGGER_TYPE.into(),
            variables,
        });
        let Some((failed, messages)) = fail_unrunnable(&child, &not_found())? else {
            panic!("a CREATED execution can fail");
        };
        assert_eq!(failed.state.current(), StateType::Failed);
        let log = messages
            .iter()
            .find(|m| m.topic == Topic::Log)
            .map(|m| m.decode::<LogEntry>())
            .transpose()?;
        let log = log.map(|l| l.message).unwrap_or_default();
        assert!(
            log.contains("flow tests.gone revision Some(3) not found"),
            "{log}"
        );
        let result = messages
            .iter()
            .find(|m| m.topic == Topic::SubflowExecutionResult)
            .map(|m| m.decode::<crate::messages::SubflowExecutionResult>())
            .transpose()?;
        let Some(result) = result else {
            panic!("no result for the parent in {messages:?}");
        };
        assert_eq!(result.parent_execution_id, "parent-1");
        assert_eq!(result.parent_task_run_id, "taskrun-9");
        assert_eq!(result.child_execution_id, child.id);
        assert_eq!(result.state, StateType::Failed);
        Ok(())
    }

    /// A running execution with `n` task runs: half SUCCESS (an attempt, an output, three
    /// states), half RUNNING.
    fn grown(n: usize) -> Execution {
        let mut execution = Execution::new("tests", "big", 1);
        assert!(execution.state.transition(StateType::Running).is_ok());
        for i in 0..n {
            let mut run = TaskRun::new(&execution, "r");
            assert!(run.state.transition(StateType::Running).is_ok());
            if i % 2 == 0 {
                run.attempts.push(TaskRunAttempt {
                    state: run.state.clone(),
                    log_file: None,
                    worker_id: Some("worker-1".into()),
                });
                assert!(run.state.transition(StateType::Success).is_ok());
                let mut outputs = Map::new();
                outputs.insert("value".into(), json!(format!("value {i}")));
                run.outputs = Some(outputs);
            }
            execution.task_run_list.push(run);
        }
        execution
    }

    #[test]
    fn failing_compacted_keeps_every_task_run_and_its_ends_and_shrinks_the_document()
    -> Result<(), QueueError> {
        let execution = grown(100);
        let size = |e: &Execution| serde_json::to_vec(e).map(|v| v.len()).unwrap_or(0);
        let Some((plain, _)) = fail_oversized(&execution, "too large", false)? else {
            panic!("a RUNNING execution can fail");
        };
        let Some((compacted, messages)) = fail_oversized(&execution, "too large", true)? else {
            panic!("a RUNNING execution can fail");
        };
        // Failing adds a state to every unfinished task run: the FAILED execution is larger than
        // the one saved before it (why a failure can be refused when the last save was not).
        assert!(size(&plain) > size(&execution));
        // Here half the task runs had an attempt and an output (a real ForEach of `Return`s, all
        // ended: ~55 %).
        assert!(
            size(&compacted) * 5 < size(&execution) * 4,
            "compacted {} bytes, before {} bytes",
            size(&compacted),
            size(&execution)
        );
        assert_eq!(compacted.state.current(), StateType::Failed);
        assert_eq!(compacted.task_run_list.len(), 100, "no task run is dropped");
        for (before, after) in execution.task_run_list.iter().zip(&compacted.task_run_list) {
            assert_eq!(after.id, before.id);
            assert!(after.outputs.is_none() && after.attempts.is_empty());
            let expected = if before.state.is_terminated() {
                before.state.current()
            } else {
                StateType::Failed
            };
            assert_eq!(after.state.current(), expected);
            let (h, b) = (after.state.histories(), before.state.histories());
            assert_eq!(h.len(), 2, "first and last states: {h:?}");
            assert_eq!(h[0], b[0], "its start is kept");
        }
        let log = messages
            .iter()
            .find(|m| m.topic == Topic::Log)
            .map(|m| m.decode::<LogEntry>())
            .transpose()?
            .map(|l| l.message)
            .unwrap_or_default();
        assert!(
            log.starts_with("too large; to fit, the outputs, attempts and intermediate states"),
            "{log}"
        );
        Ok(())
    }

    #[test]
    fn an_unrunnable_top_level_execution_only_fails() -> Result<(), QueueError> {
        let execution = Execution::new("tests", "gone", 3);
        let Some((failed, messages)) = fail_unrunnable(&execution, &not_found())? else {
            panic!("a CREATED execution can fail");
        };
        assert_eq!(failed.state.current(), StateType::Failed);
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].topic, Topic::Log);
        // An execution that already ended cannot fail again.
        assert!(fail_unrunnable(&failed, &not_found())?.is_none());
        Ok(())
    }
}
