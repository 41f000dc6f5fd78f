//! Liveness through the queue: service instances heartbeat, workers record the jobs they hold,
//! and the executor declares the silent ones dead.
//!
//! Nothing here reads or writes the repository, so a repository outage (an Elasticsearch that is
//! down, a JDBC repository table that is locked) never makes the services look dead:
//!
//! - every component ([`Worker`](crate::worker::Worker), [`ExecutorService`](crate::executor::service::ExecutorService),
//!   [`SchedulerService`](crate::scheduler::SchedulerService),
//!   [`IndexerService`](crate::indexer::service::IndexerService)) runs a [`Heartbeat`]: a
//!   [`LivenessMessage::Heartbeat`] with its [`ServiceInstance`] on [`Topic::Liveness`], keyed by
//!   its instance id, every [`LivenessConfig::heartbeat_interval`], and a last one with
//!   [`ServiceState::TerminatedGracefully`] when it stops;
//! - a worker records the jobs it takes in the same step as it takes them
//!   ([`Queue::receive_recorded`] with
//!   [`record_taken_jobs`]: a [`LivenessMessage::JobsTaken`]), and publishes
//!   [`LivenessMessage::JobsDone`] with the results of those jobs, in the same publish;
//! - the executor group owns liveness: a keyed stage (state kind [`STATE_KIND`], one
//!   [`LivenessState`] per instance, loaded and saved under the instance's key, which the unit
//!   claimed) applies the messages with the pure [`apply`]. It checks an instance with a delayed
//!   [`LivenessMessage::Check`] to itself - one pending per instance, due
//!   [`LivenessConfig::timeout`] after the last sign of life - instead of scanning every instance,
//!   so on Kafka the owner of an instance's partition checks it from its local store. An instance
//!   silent for the whole timeout is declared [`ServiceState::Disconnected`]
//!   ([`LivenessMessage::Declared`], which the indexer shows, and which a worker that hears of it
//!   obeys by stopping), with the jobs it held for the executor to resubmit, then
//!   [`ServiceState::NotRunning`] one [`LivenessConfig::grace_period`] later; a stopped or dead
//!   instance is forgotten [`LivenessConfig::retention`] later ([`LivenessMessage::Purge`]);
//! - the indexer consumes the same topic and saves the instances it hears of in the
//!   [`ServiceInstanceRepository`](crate::repository::ServiceInstanceRepository), for
//!   `kestra sys services`, the API and the UI. It shows liveness; it does not decide it.
//!
//! Times are the executor's clock when it applies a message, not the sender's: clocks of other
//! machines may drift.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::messages::ExecutionCommand;
use crate::model::{ServiceInstance, ServiceState, ServiceType};
use crate::queue::{Delivery, Envelope, Queue, QueueError, Topic};

/// The kind of executor state that holds one [`LivenessState`] per service instance.
pub const STATE_KIND: &str = "liveness";

/// How often instances heartbeat and how long a silent one lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LivenessConfig {
    /// Between two heartbeats of an instance (Kestra's `kestra.server.liveness.heartbeatInterval`,
    /// 3 s).
    pub heartbeat_interval: Duration,
    /// An instance not heard from for this long is declared dead (Kestra's
    /// `kestra.server.liveness.timeout`, 45 s). Keep it several heartbeats long.
    pub timeout: Duration,
    /// How long a `DISCONNECTED` instance stays so before it is declared `NOT_RUNNING` (Kestra's
    /// `kestra.server.terminationGracePeriod`, 1 min: it may still be draining somewhere we
    /// cannot hear from).
    pub grace_period: Duration,
    /// How long an instance that stopped (gracefully or declared dead) is remembered before a
    /// [`LivenessMessage::Purge`] forgets it: the executor's state of it and its row in the
    /// service instance repository (Kestra's `kestra.server.service.purge.retention`, 30 days).
    pub retention: Duration,
}

/// The default [`LivenessConfig::retention`]: 30 days.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

impl Default for LivenessConfig {
    fn default() -> Self {
        LivenessConfig {
            heartbeat_interval: Duration::from_secs(3),
            timeout: Duration::from_secs(45),
            grace_period: Duration::from_secs(60),
            retention: DEFAULT_RETENTION,
        }
    }
}

/// What happens to the jobs of a worker declared dead (Kestra's
/// `kestra.server.worker-task-restart-strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RestartStrategy {
    /// Resubmit them as soon as the worker is declared dead.
    Immediately,
    /// Resubmit them one termination grace period after the worker is declared dead (it may still
    /// be draining somewhere we cannot hear from).
    #[default]
    AfterTerminationGracePeriod,
    /// Never resubmit them: only the queue's lease delivers them again, as the same attempt.
    Never,
}

impl std::str::FromStr for RestartStrategy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_uppercase().replace('-', "_").as_str() {
            "IMMEDIATELY" => Ok(RestartStrategy::Immediately),
            "AFTER_TERMINATION_GRACE_PERIOD" => Ok(RestartStrategy::AfterTerminationGracePeriod),
            "NEVER" => Ok(RestartStrategy::Never),
            _ => Err(format!(
                "unknown worker task restart strategy '{s}' (expected IMMEDIATELY, AFTER_TERMINATION_GRACE_PERIOD or NEVER)"
            )),
        }
    }
}

/// How the executor resubmits the task jobs of a worker it declared dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResubmitConfig {
    /// When (or whether) they are resubmitted.
    pub strategy: RestartStrategy,
    /// The delay of [`RestartStrategy::AfterTerminationGracePeriod`]
    /// (`kestra.server.terminationGracePeriod`, 1 min).
    pub grace_period: Duration,
    /// Resubmissions of one task run before it fails instead (3).
    pub max_resubmissions: u32,
}

impl Default for ResubmitConfig {
    fn default() -> Self {
        ResubmitConfig {
            strategy: RestartStrategy::default(),
            grace_period: Duration::from_secs(60),
            max_resubmissions: 3,
        }
    }
}

/// The [`ExecutionCommand::Resubmit`] of each task job `dead` held, with its due time (`None`:
/// now), per `config` (none for [`RestartStrategy::Never`], none for trigger evaluations or keys
/// that are not `<task run id>/<attempt>`). Pure.
pub fn resubmit_commands(
    dead: &LivenessState,
    config: &ResubmitConfig,
    now: DateTime<Utc>,
) -> Vec<(ExecutionCommand, Option<DateTime<Utc>>)> {
    let at = match config.strategy {
        RestartStrategy::Never => return Vec::new(),
        RestartStrategy::Immediately => None,
        RestartStrategy::AfterTerminationGracePeriod => Some(
            now + chrono::Duration::from_std(config.grace_period).unwrap_or(chrono::Duration::MAX),
        ),
    };
    dead.jobs
        .values()
        .filter_map(|job| {
            let execution_id = job.execution_id.clone()?;
            let (task_run_id, attempt) = job.key.rsplit_once('/')?;
            let attempt: u32 = attempt.parse().ok()?;
            Some((
                ExecutionCommand::Resubmit {
                    execution_id,
                    task_run_id: task_run_id.to_string(),
                    attempt: Some(attempt),
                    worker_id: Some(dead.instance.id.clone()),
                    max_resubmissions: config.max_resubmissions,
                },
                at,
            ))
        })
        .collect()
}

/// A job a worker holds: its queue key (a task job: `<task run id>/<attempt>`), and the execution
/// it belongs to (none for a trigger evaluation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeldJob {
    /// The job's queue key.
    pub key: String,
    /// The execution of a task job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<String>,
    /// When the worker took it (the worker's clock).
    pub taken_at: DateTime<Utc>,
}

/// A message on [`Topic::Liveness`], keyed by the instance it concerns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LivenessMessage {
    /// An instance is alive (or, with a terminal state, stopped).
    Heartbeat {
        /// The instance as it describes itself.
        instance: ServiceInstance,
    },
    /// A worker took these jobs (published in the same step as the claim).
    JobsTaken {
        /// The worker's instance id.
        #[serde(rename = "instanceId")]
        instance_id: String,
        /// The jobs.
        jobs: Vec<HeldJob>,
    },
    /// A worker published the results of these jobs (in the same publish as the results).
    JobsDone {
        /// The worker's instance id.
        #[serde(rename = "instanceId")]
        instance_id: String,
        /// The jobs' queue keys.
        keys: Vec<String>,
    },
    /// The executor's own delayed check of an instance.
    Check {
        /// The instance to check.
        #[serde(rename = "instanceId")]
        instance_id: String,
        /// When the check was due. A check applied much later than that (the executors were down
        /// or behind) proves nothing about the instance: the heartbeats queued behind it have not
        /// been applied yet.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        due: Option<DateTime<Utc>>,
    },
    /// The executor's own delayed purge of an instance that stopped, due
    /// [`LivenessConfig::retention`] after it stopped: the executor forgets its state and the
    /// indexer deletes its row from the service instance repository (neither if the instance
    /// runs again). A zombie heard of after it is a new instance to them.
    Purge {
        /// The instance to forget.
        #[serde(rename = "instanceId")]
        instance_id: String,
    },
    /// The executor's verdict on an instance (declared dead), for the indexer (and, with the jobs
    /// it held, for whoever resubmits them).
    Declared {
        /// The instance with its new state.
        instance: ServiceInstance,
        /// The jobs it held when it was declared dead.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        jobs: Vec<HeldJob>,
    },
}

impl LivenessMessage {
    /// The instance this message concerns (its queue key).
    pub fn instance_id(&self) -> &str {
        match self {
            LivenessMessage::Heartbeat { instance }
            | LivenessMessage::Declared { instance, .. } => &instance.id,
            LivenessMessage::JobsTaken { instance_id, .. }
            | LivenessMessage::JobsDone { instance_id, .. }
            | LivenessMessage::Check { instance_id, .. }
            | LivenessMessage::Purge { instance_id } => instance_id,
        }
    }

    /// As a queue message on [`Topic::Liveness`], keyed by [`LivenessMessage::instance_id`].
    pub fn envelope(&self) -> Result<Envelope, QueueError> {
        Envelope::json(Topic::Liveness, self.instance_id(), self)
    }
}

/// What the executor knows of one instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LivenessState {
    /// The instance: as it last described itself, or as declared.
    pub instance: ServiceInstance,
    /// Its last sign of life (a heartbeat or a job record), on the executor's clock.
    pub last_seen: DateTime<Utc>,
    /// The jobs it holds (workers), by queue key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub jobs: BTreeMap<String, HeldJob>,
    /// Whether a [`LivenessMessage::Check`] of it is on its way.
    pub check_pending: bool,
}

impl LivenessState {
    fn alive(&self) -> bool {
        self.instance.state.is_running()
    }
}

/// What [`apply`] decided: whether the state changed, and the messages to publish (a delayed
/// check carries its due time).
#[derive(Debug, Default, PartialEq)]
pub struct LivenessDecision {
    /// The state must be saved.
    pub changed: bool,
    /// Messages to publish, each with its due time when delayed.
    pub messages: Vec<(LivenessMessage, Option<DateTime<Utc>>)>,
    /// An instance declared dead by this message, with the jobs it held.
    pub declared_dead: Option<LivenessState>,
}

/// Apply one liveness message to an instance's state at `now` (the executor's clock). Pure.
///
/// - A heartbeat records the instance and its sign of life; a heartbeat of an instance already
///   declared dead changes nothing (a zombie stays dead; its jobs are someone else's now).
/// - Job records add and remove held jobs (a sign of life too).
/// - A check declares an instance dead ([`ServiceState::Disconnected`]) when it has been silent
///   for `timeout`, else re-arms itself for `timeout` after the last sign of life; a check of a
///   disconnected instance one `config.grace_period` after the verdict declares it
///   [`ServiceState::NotRunning`] (a second [`LivenessMessage::Declared`], naming no job: they
///   were resubmitted at the first). One check is pending per living instance. A check
///   applied more than half a `timeout` after it was due means the executors were not consuming
///   (down, or behind a backlog): the instance's heartbeats may be queued behind it, so it re-arms
///   for a whole `timeout` from now instead of declaring anything.
/// - A stop (a heartbeat with [`ServiceState::TerminatedGracefully`], or
///   [`ServiceState::TerminatedForced`] when the drain limit abandoned jobs) holds no job any more
///   (what it did not finish goes back to the queue); its state is forgotten at its next check. A
///   dead instance's state is kept, with the jobs it held.
/// - Both a stop (at that check) and the `NOT_RUNNING` verdict arm a [`LivenessMessage::Purge`]
///   due `config.retention` later, which forgets a dead instance's state (and, in the indexer,
///   the instance's row).
pub fn apply(
    state: &mut Option<LivenessState>,
    message: LivenessMessage,
    now: DateTime<Utc>,
    config: &LivenessConfig,
) -> LivenessDecision {
    let timeout = chrono::Duration::from_std(config.timeout).unwrap_or(chrono::Duration::MAX);
    // Far enough in the future is never: a purge due past chrono's range is not armed.
    let purge_at = chrono::Duration::from_std(config.retention)
        .ok()
        .and_then(|r| now.checked_add_signed(r));
    let grace = chrono::Duration::from_std(config.grace_period).unwrap_or(chrono::Duration::MAX);
    let purge = |id: &str| {
        purge_at.map(|at| {
            (
                LivenessMessage::Purge {
                    instance_id: id.to_string(),
                },
                Some(at),
            )
        })
    };
    let mut decision = LivenessDecision::default();
    let id = message.instance_id().to_string();
    match message {
        LivenessMessage::Heartbeat { instance } => {
            match state {
                Some(s) if s.instance.state.is_dead() => return decision,
                Some(s) => {
                    s.instance = instance;
                    s.last_seen = now;
                    // A forced stop's abandoned jobs come back through the queue (their lease).
                    if matches!(
                        s.instance.state,
                        ServiceState::TerminatedGracefully | ServiceState::TerminatedForced
                    ) {
                        s.jobs.clear();
                    }
                }
                None => {
                    *state = Some(LivenessState {
                        instance,
                        last_seen: now,
                        jobs: BTreeMap::new(),
                        check_pending: false,
                    })
                }
            }
            decision.changed = true;
        }
        LivenessMessage::JobsTaken { jobs, .. } => {
            let s = state.get_or_insert_with(|| LivenessState {
                // Its first heartbeat was lost or is late: a worker, as far as we know.
                instance: ServiceInstance {
                    id: id.clone(),
                    type_: ServiceType::Worker,
                    state: ServiceState::Running,
                    hostname: String::new(),
                    created_date: now,
                    updated_date: now,
                    props: serde_json::Map::new(),
                },
                last_seen: now,
                jobs: BTreeMap::new(),
                check_pending: false,
            });
            for job in jobs {
                s.jobs.insert(job.key.clone(), job);
            }
            if !s.instance.state.is_dead() {
                s.last_seen = now;
            }
            decision.changed = true;
        }
        LivenessMessage::JobsDone { keys, .. } => {
            let Some(s) = state else { return decision };
            for key in &keys {
                s.jobs.remove(key);
            }
            if !s.instance.state.is_dead() {
                s.last_seen = now;
            }
            decision.changed = true;
        }
        LivenessMessage::Check { due, .. } => {
            let Some(s) = state else { return decision };
            if matches!(
                s.instance.state,
                ServiceState::TerminatedGracefully | ServiceState::TerminatedForced
            ) {
                // Stopped for good, holding nothing: forget it; its row goes after the retention.
                *state = None;
                decision.changed = true;
                decision.messages.extend(purge(&id));
                return decision;
            }
            if s.instance.state == ServiceState::Disconnected {
                let dead_at = s.instance.updated_date.checked_add_signed(grace);
                match dead_at {
                    Some(at) if now >= at => {
                        s.instance.state = ServiceState::NotRunning;
                        s.instance.updated_date = now;
                        s.check_pending = false;
                        decision.changed = true;
                        // Its jobs were resubmitted at the first verdict: none named again.
                        decision.messages.push((
                            LivenessMessage::Declared {
                                instance: s.instance.clone(),
                                jobs: Vec::new(),
                            },
                            None,
                        ));
                        decision.messages.extend(purge(&id));
                    }
                    Some(at) => decision.messages.push((
                        LivenessMessage::Check {
                            instance_id: id,
                            due: Some(at),
                        },
                        Some(at),
                    )),
                    // A grace period past chrono's range: disconnected for good.
                    None => {
                        decision.changed = s.check_pending;
                        s.check_pending = false;
                    }
                }
                return decision;
            }
            if !s.alive() {
                decision.changed = s.check_pending;
                s.check_pending = false;
                return decision;
            }
            if due.is_some_and(|due| now > due + timeout / 2) {
                decision.messages.push((
                    LivenessMessage::Check {
                        instance_id: id,
                        due: Some(now + timeout),
                    },
                    Some(now + timeout),
                ));
                return decision;
            }
            if now >= s.last_seen + timeout {
                s.instance.state = ServiceState::Disconnected;
                s.instance.updated_date = now;
                decision.changed = true;
                decision.messages.push((
                    LivenessMessage::Declared {
                        instance: s.instance.clone(),
                        jobs: s.jobs.values().cloned().collect(),
                    },
                    None,
                ));
                // NOT_RUNNING once the grace period has passed (checked then).
                s.check_pending = false;
                if let Some(at) = now.checked_add_signed(grace) {
                    s.check_pending = true;
                    decision.messages.push((
                        LivenessMessage::Check {
                            instance_id: id,
                            due: Some(at),
                        },
                        Some(at),
                    ));
                }
                decision.declared_dead = Some(s.clone());
            } else {
                decision.messages.push((
                    LivenessMessage::Check {
                        instance_id: id,
                        due: Some(s.last_seen + timeout),
                    },
                    Some(s.last_seen + timeout),
                ));
            }
            return decision;
        }
        LivenessMessage::Declared { .. } => return decision,
        LivenessMessage::Purge { .. } => {
            let Some(s) = state else { return decision };
            // The jobs a dead instance held were resubmitted at the verdict (the commands are
            // in the queue, delayed or not): nothing reads them after it.
            if !s.alive() {
                *state = None;
                decision.changed = true;
            }
            return decision;
        }
    }
    // A living instance always has one check on its way.
    if let Some(s) = state
        && s.alive()
        && !s.check_pending
    {
        s.check_pending = true;
        decision.changed = true;
        decision.messages.push((
            LivenessMessage::Check {
                instance_id: id,
                due: Some(now + timeout),
            },
            Some(now + timeout),
        ));
    }
    decision
}

/// The [`Recorder`](crate::queue::Recorder) of a worker's recorded receive: one
/// [`LivenessMessage::JobsTaken`] with every job taken (the execution id is read from a task
/// job's payload without decoding the whole job; a job it cannot read is recorded by key).
pub fn record_taken_jobs(
    instance_id: &str,
    deliveries: &[Delivery],
) -> Result<Vec<Envelope>, QueueError> {
    /// The head of a worker job: only what the record needs (the rest is skipped, not built).
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct JobHead {
        task_run: Option<RunHead>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct RunHead {
        execution_id: String,
    }
    let now = Utc::now();
    let jobs = deliveries
        .iter()
        .map(|d| HeldJob {
            key: d.envelope.key.clone(),
            execution_id: serde_json::from_slice::<JobHead>(&d.envelope.payload)
                .ok()
                .and_then(|h| h.task_run)
                .map(|r| r.execution_id),
            taken_at: now,
        })
        .collect();
    Ok(vec![
        LivenessMessage::JobsTaken {
            instance_id: instance_id.to_string(),
            jobs,
        }
        .envelope()?,
    ])
}

/// What a heartbeat carries as its instance's `props`, computed at each beat.
pub type Report = Arc<dyn Fn() -> serde_json::Map<String, serde_json::Value> + Send + Sync>;

/// A component's heartbeat: publishes its instance on [`Topic::Liveness`] now and every
/// `interval` until [`Heartbeat::stop`], which publishes the final state. A failed publish is
/// logged and tried again at the next beat. Dropped without `stop` (the component crashed or was
/// aborted), it just falls silent, and the executor declares the instance dead after its timeout.
pub struct Heartbeat {
    queue: Arc<dyn Queue>,
    instance: ServiceInstance,
    /// The state each beat carries (RUNNING, then TERMINATING while draining).
    state: Arc<std::sync::Mutex<ServiceState>>,
    report: Option<Report>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Heartbeat {
    /// Start beating for a new instance of `type_` with id `id`. Needs a Tokio runtime.
    pub fn start(
        queue: Arc<dyn Queue>,
        type_: ServiceType,
        id: &str,
        interval: Duration,
    ) -> Heartbeat {
        Heartbeat::start_with(queue, type_, id, interval, None)
    }

    /// [`Heartbeat::start`], each beat carrying what `report` returns as the instance's `props`
    /// (a component's own figures, e.g. the indexer's lag).
    pub fn start_reporting(
        queue: Arc<dyn Queue>,
        type_: ServiceType,
        id: &str,
        interval: Duration,
        report: Report,
    ) -> Heartbeat {
        Heartbeat::start_with(queue, type_, id, interval, Some(report))
    }

    fn start_with(
        queue: Arc<dyn Queue>,
        type_: ServiceType,
        id: &str,
        interval: Duration,
        report: Option<Report>,
    ) -> Heartbeat {
        let now = Utc::now();
        let instance = ServiceInstance {
            id: id.to_string(),
            type_,
            state: ServiceState::Running,
            hostname: hostname(),
            created_date: now,
            updated_date: now,
            props: serde_json::Map::new(),
        };
        let stop = CancellationToken::new();
        let state = Arc::new(std::sync::Mutex::new(ServiceState::Running));
        let task = tokio::spawn(beat(
            queue.clone(),
            instance.clone(),
            state.clone(),
            interval.max(Duration::from_millis(10)),
            stop.clone(),
            report.clone(),
        ));
        Heartbeat {
            queue,
            instance,
            state,
            report,
            stop,
            task: Some(task),
        }
    }

    /// The instance id.
    pub fn id(&self) -> &str {
        &self.instance.id
    }

    /// The instance as it would beat now.
    fn current(&self) -> ServiceInstance {
        let mut now = self.instance.clone();
        if let Some(report) = &self.report {
            now.props = report();
        }
        now.state = *self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        now.updated_date = Utc::now();
        now
    }

    /// Beat with `state` from now on (e.g. [`ServiceState::TerminatingGracefully`] while a
    /// component drains), publishing it at once.
    pub async fn set_state(&self, state: ServiceState) {
        *self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = state;
        publish(self.queue.as_ref(), self.current()).await;
    }

    /// Stop beating and publish the instance's last state
    /// ([`ServiceState::TerminatedGracefully`]).
    pub async fn stop(self) {
        self.stop_as(ServiceState::TerminatedGracefully).await;
    }

    /// Stop beating and publish `last` as the instance's last state (e.g.
    /// [`ServiceState::TerminatedForced`] after a drain that abandoned jobs).
    pub async fn stop_as(mut self, last: ServiceState) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.set_state(last).await;
    }
}

async fn beat(
    queue: Arc<dyn Queue>,
    mut instance: ServiceInstance,
    state: Arc<std::sync::Mutex<ServiceState>>,
    interval: Duration,
    stop: CancellationToken,
    report: Option<Report>,
) {
    loop {
        instance.updated_date = Utc::now();
        instance.state = *state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(report) = &report {
            instance.props = report();
        }
        publish(queue.as_ref(), instance.clone()).await;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

async fn publish(queue: &dyn Queue, instance: ServiceInstance) {
    let (id, type_) = (instance.id.clone(), instance.type_);
    let sent = match (LivenessMessage::Heartbeat { instance }).envelope() {
        Ok(envelope) => queue.publish(vec![envelope]).await,
        Err(e) => Err(e),
    };
    if let Err(e) = sent {
        tracing::warn!(instance = %id, ?type_, "cannot publish a heartbeat: {e}");
    }
}

/// This machine's name, for the instance record (`HOSTNAME`, else the kernel's, else `localhost`).
fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(45);
    const RETENTION: Duration = Duration::from_secs(3600);
    const CONFIG: LivenessConfig = LivenessConfig {
        heartbeat_interval: Duration::from_secs(3),
        timeout: TIMEOUT,
        grace_period: Duration::from_secs(60),
        retention: RETENTION,
    };

    fn instance(id: &str, state: ServiceState) -> ServiceInstance {
        let now = Utc::now();
        ServiceInstance {
            id: id.into(),
            type_: ServiceType::Worker,
            state,
            hostname: "h".into(),
            created_date: now,
            updated_date: now,
            props: serde_json::Map::new(),
        }
    }

    fn heartbeat(id: &str) -> LivenessMessage {
        LivenessMessage::Heartbeat {
            instance: instance(id, ServiceState::Running),
        }
    }

    /// A check as the executor arms it (due at `due`).
    fn check_due(id: &str, due: DateTime<Utc>) -> LivenessMessage {
        LivenessMessage::Check {
            instance_id: id.into(),
            due: Some(due),
        }
    }

    fn secs(s: i64) -> chrono::Duration {
        chrono::Duration::seconds(s)
    }

    #[test]
    fn a_first_heartbeat_arms_one_check_due_after_the_timeout() {
        let t0 = Utc::now();
        let mut state = None;
        let d = apply(&mut state, heartbeat("w"), t0, &CONFIG);
        assert!(d.changed);
        assert_eq!(
            d.messages,
            vec![(check_due("w", t0 + secs(45)), Some(t0 + secs(45)))],
            "one delayed check"
        );
        // Later heartbeats do not arm more checks.
        let d = apply(&mut state, heartbeat("w"), t0 + secs(3), &CONFIG);
        assert!(d.changed);
        assert!(d.messages.is_empty(), "a check is already pending");
        assert_eq!(state.as_ref().map(|s| s.last_seen), Some(t0 + secs(3)));
    }

    #[test]
    fn a_check_after_a_recent_heartbeat_rearms_for_the_last_sign_of_life() {
        let t0 = Utc::now();
        let mut state = None;
        apply(&mut state, heartbeat("w"), t0, &CONFIG);
        apply(&mut state, heartbeat("w"), t0 + secs(30), &CONFIG);
        let d = apply(
            &mut state,
            check_due("w", t0 + secs(45)),
            t0 + secs(45),
            &CONFIG,
        );
        assert_eq!(
            d.messages,
            vec![(check_due("w", t0 + secs(75)), Some(t0 + secs(75)))]
        );
        assert!(d.declared_dead.is_none());
        assert_eq!(
            state.as_ref().map(|s| s.instance.state),
            Some(ServiceState::Running)
        );
    }

    #[test]
    fn a_silent_instance_is_declared_dead_with_the_jobs_it_held() {
        let t0 = Utc::now();
        let mut state = None;
        apply(&mut state, heartbeat("w"), t0, &CONFIG);
        let job = |k: &str| HeldJob {
            key: k.into(),
            execution_id: Some("e".into()),
            taken_at: t0,
        };
        apply(
            &mut state,
            LivenessMessage::JobsTaken {
                instance_id: "w".into(),
                jobs: vec![job("a/1"), job("b/1")],
            },
            t0 + secs(1),
            &CONFIG,
        );
        apply(
            &mut state,
            LivenessMessage::JobsDone {
                instance_id: "w".into(),
                keys: vec!["a/1".into()],
            },
            t0 + secs(2),
            &CONFIG,
        );
        let d = apply(
            &mut state,
            check_due("w", t0 + secs(45)),
            t0 + secs(47),
            &CONFIG,
        );
        let dead = d.declared_dead.expect("declared dead");
        assert_eq!(dead.instance.state, ServiceState::Disconnected);
        assert_eq!(
            dead.jobs.keys().collect::<Vec<_>>(),
            vec!["b/1"],
            "the job it still held"
        );
        let grace = secs(CONFIG.grace_period.as_secs() as i64);
        let not_running_at = t0 + secs(47) + grace;
        assert!(
            matches!(
                d.messages.as_slice(),
                [(LivenessMessage::Declared { instance, jobs }, None), (check, Some(at))]
                    if instance.state == ServiceState::Disconnected && jobs.len() == 1
                        && *check == check_due("w", not_running_at) && *at == not_running_at
            ),
            "the verdict, and the check that makes it NOT_RUNNING after the grace period: {:?}",
            d.messages
        );
        // A zombie's heartbeat does not bring it back.
        let d = apply(&mut state, heartbeat("w"), t0 + secs(50), &CONFIG);
        assert_eq!(d, LivenessDecision::default());
        assert_eq!(
            state.as_ref().map(|s| s.instance.state),
            Some(ServiceState::Disconnected)
        );
        // An early check re-arms; the one after the grace period declares it NOT_RUNNING (no job
        // named again: they were resubmitted at the first verdict) and arms its purge.
        let d = apply(
            &mut state,
            check_due("w", t0 + secs(60)),
            t0 + secs(60),
            &CONFIG,
        );
        assert_eq!(
            d.messages,
            vec![(check_due("w", not_running_at), Some(not_running_at))]
        );
        let d = apply(
            &mut state,
            check_due("w", not_running_at),
            not_running_at,
            &CONFIG,
        );
        assert!(
            d.declared_dead.is_none(),
            "resubmitted once, at the first verdict"
        );
        assert!(
            matches!(
                d.messages.as_slice(),
                [(LivenessMessage::Declared { instance, jobs }, None), (LivenessMessage::Purge { .. }, Some(_))]
                    if instance.state == ServiceState::NotRunning && jobs.is_empty()
            ),
            "{:?}",
            d.messages
        );
        assert_eq!(
            state.as_ref().map(|s| s.instance.state),
            Some(ServiceState::NotRunning)
        );
        let d = apply(&mut state, heartbeat("w"), t0 + secs(200), &CONFIG);
        assert_eq!(d, LivenessDecision::default(), "still a zombie");
    }

    #[test]
    fn a_graceful_stop_is_never_declared_dead() {
        let t0 = Utc::now();
        let mut state = None;
        apply(&mut state, heartbeat("w"), t0, &CONFIG);
        apply(
            &mut state,
            LivenessMessage::JobsTaken {
                instance_id: "w".into(),
                jobs: vec![HeldJob {
                    key: "a/1".into(),
                    execution_id: None,
                    taken_at: t0,
                }],
            },
            t0,
            &CONFIG,
        );
        apply(
            &mut state,
            LivenessMessage::Heartbeat {
                instance: instance("w", ServiceState::TerminatedGracefully),
            },
            t0 + secs(1),
            &CONFIG,
        );
        assert_eq!(
            state.as_ref().map(|s| s.jobs.len()),
            Some(0),
            "a graceful stop holds no job (unfinished ones went back to the queue)"
        );
        let d = apply(
            &mut state,
            check_due("w", t0 + secs(45)),
            t0 + secs(46),
            &CONFIG,
        );
        assert!(d.declared_dead.is_none());
        assert!(
            matches!(
                d.messages.as_slice(),
                [(LivenessMessage::Purge { .. }, Some(_))]
            ),
            "no further check, only the purge after the retention: {:?}",
            d.messages
        );
        assert!(d.changed);
        assert!(
            state.is_none(),
            "a stopped instance is forgotten at its check"
        );
    }

    #[test]
    fn a_check_applied_late_rearms_instead_of_declaring() {
        // The executors were down for five minutes: the check due at 45 s is applied at 300 s,
        // before the heartbeats queued behind it.
        let t0 = Utc::now();
        let mut state = None;
        apply(&mut state, heartbeat("w"), t0, &CONFIG);
        let d = apply(
            &mut state,
            check_due("w", t0 + secs(45)),
            t0 + secs(300),
            &CONFIG,
        );
        assert!(d.declared_dead.is_none(), "a late check declares nothing");
        assert_eq!(
            d.messages,
            vec![(check_due("w", t0 + secs(345)), Some(t0 + secs(345)))]
        );
        // The queued heartbeat comes in; the next check finds the instance alive.
        apply(&mut state, heartbeat("w"), t0 + secs(301), &CONFIG);
        let d = apply(
            &mut state,
            check_due("w", t0 + secs(345)),
            t0 + secs(345),
            &CONFIG,
        );
        assert!(d.declared_dead.is_none());
        assert_eq!(
            state.as_ref().map(|s| s.instance.state),
            Some(ServiceState::Running)
        );
    }

    #[test]
    fn the_record_of_taken_jobs_names_each_job_and_its_execution() {
        let task = Envelope::new(
            Topic::WorkerJob,
            "tr1/1",
            br#"{"type":"task","taskRun":{"id":"tr1","executionId":"ex1","x":[1,2]},"context":{"big":{}},"attempt":1}"#.to_vec(),
        );
        let trigger = Envelope::new(Topic::WorkerJob, "trig", br#"{"type":"trigger"}"#.to_vec());
        let deliveries: Vec<Delivery> = [task, trigger]
            .into_iter()
            .enumerate()
            .map(|(i, envelope)| Delivery {
                tag: crate::queue::DeliveryTag {
                    topic: Topic::WorkerJob,
                    partition: 0,
                    offset: i as i64,
                },
                group: crate::queue::ConsumerGroup::Worker,
                envelope,
                attempt: 1,
                published_at: None,
            })
            .collect();
        let records = record_taken_jobs("w1", &deliveries).expect("records");
        assert_eq!(records.len(), 1);
        assert_eq!(
            (records[0].topic, records[0].key.as_str()),
            (Topic::Liveness, "w1")
        );
        let LivenessMessage::JobsTaken { instance_id, jobs } =
            records[0].decode::<LivenessMessage>().expect("decodes")
        else {
            panic!("a JobsTaken record");
        };
        assert_eq!(instance_id, "w1");
        let got: Vec<(String, Option<String>)> =
            jobs.into_iter().map(|j| (j.key, j.execution_id)).collect();
        assert_eq!(
            got,
            vec![("tr1/1".into(), Some("ex1".into())), ("trig".into(), None)]
        );
    }

    #[test]
    fn stopped_and_dead_instances_are_purged_after_the_retention() {
        let t0 = Utc::now();
        let purge = |id: &str| LivenessMessage::Purge {
            instance_id: id.into(),
        };
        let retention = secs(RETENTION.as_secs() as i64);
        // Declared dead: NOT_RUNNING after the grace period arms a purge one retention later.
        let mut dead = None;
        apply(&mut dead, heartbeat("d"), t0, &CONFIG);
        let d = apply(
            &mut dead,
            check_due("d", t0 + secs(45)),
            t0 + secs(45),
            &CONFIG,
        );
        assert!(d.declared_dead.is_some());
        let t1 = t0 + secs(45) + secs(CONFIG.grace_period.as_secs() as i64);
        let d = apply(&mut dead, check_due("d", t1), t1, &CONFIG);
        assert!(
            d.messages.contains(&(purge("d"), Some(t1 + retention))),
            "{:?}",
            d.messages
        );
        // A zombie's heartbeat meanwhile changes nothing; the purge forgets the state.
        apply(&mut dead, heartbeat("d"), t1 + secs(5), &CONFIG);
        let d = apply(&mut dead, purge("d"), t1 + retention, &CONFIG);
        assert!(d.changed && dead.is_none(), "{dead:?}");
        // Stopped gracefully: forgotten at its check, which arms the purge of its row.
        let mut stopped = None;
        apply(&mut stopped, heartbeat("g"), t0, &CONFIG);
        apply(
            &mut stopped,
            LivenessMessage::Heartbeat {
                instance: instance("g", ServiceState::TerminatedGracefully),
            },
            t0 + secs(1),
            &CONFIG,
        );
        let d = apply(
            &mut stopped,
            check_due("g", t0 + secs(45)),
            t0 + secs(45),
            &CONFIG,
        );
        assert!(stopped.is_none());
        assert_eq!(
            d.messages,
            vec![(purge("g"), Some(t0 + secs(45) + retention))]
        );
        // A living instance is never purged (a purge for it is a stale one).
        let mut alive = None;
        apply(&mut alive, heartbeat("a"), t0, &CONFIG);
        let d = apply(&mut alive, purge("a"), t0 + secs(2), &CONFIG);
        assert!(!d.changed && alive.is_some());
        // A retention past chrono's range arms nothing (never purged).
        let forever = LivenessConfig {
            retention: Duration::MAX,
            ..CONFIG
        };
        let mut kept = None;
        apply(&mut kept, heartbeat("k"), t0, &forever);
        let d = apply(
            &mut kept,
            check_due("k", t0 + secs(45)),
            t0 + secs(45),
            &forever,
        );
        assert!(d.declared_dead.is_some());
        let d = apply(&mut kept, check_due("k", t1), t1, &forever);
        assert_eq!(
            kept.as_ref().map(|s| s.instance.state),
            Some(ServiceState::NotRunning)
        );
        assert!(
            !d.messages
                .iter()
                .any(|(m, _)| matches!(m, LivenessMessage::Purge { .. })),
            "{:?}",
            d.messages
        );
    }
}
