//! Scheduler scenarios every backend runs, all through [`run_all`].
//!
//! - Several [`SchedulerService`]s sharing one backend create exactly one execution per cron slot,
//!   also when one of them dies between queueing an execution and recording it; and they send one
//!   polling-trigger evaluation per due date and start one execution per evaluation result. These
//!   drive the schedulers step by step with a [`ManualClock`] standing in January 1995 (no other
//!   suite's trigger is due then) and count the executions through a broadcast subscription to
//!   [`Topic::Execution`].
//! - The service, behaviour by behaviour (from [`fires_once_per_slot_with_variables_labels_and_inputs`]
//!   on): cron slots with their variables, labels and inputs, the lock held while the previous
//!   execution runs and released on every end (deletion too), `stopAfter`, broken triggers disabled
//!   with a visible error, disable/enable with recovery, recovery after downtime, conditions,
//!   `ScheduleOnDates`, backfills, flow changes, the run loop, and polling triggers (the scenario
//!   plays the worker). These run in 2024 on a [`ManualClock`], read what the schedulers published
//!   from the queue as its consumers would ([`ConsumerGroup::Executor`] for executions,
//!   [`ConsumerGroup::Worker`] for evaluation jobs), and store execution states through the
//!   execution repository as the executor would.
//!
//! All take the backend's [`Repositories`] and [`Queue`], work in a tenant of their own (their
//! schedulers sync only that tenant) and delete their flows and trigger states at the end. They need
//! no executor and no worker; as they consume the executor's and the workers' messages (their own
//! tenant's), run them on a backend of their own, one at a time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::expression::ExpressionEngine;
use crate::flow::parse::parse_flow;
use crate::flow::registry::TaskRegistry;
use crate::messages::{TriggerEvent, WorkerJob, WorkerTrigger, WorkerTriggerResult};
use crate::model::{Execution, Label, State, StateType, TriggerState, new_id, trigger_uid};
use crate::queue::{
    ConsumerGroup, Delivery, DeliveryTag, Envelope, Queue, QueueError, Subscription, Topic,
    TriggerUnit, UnitOfWork,
};
use crate::repository::{FlowRecord, Repositories};
use crate::runtime::flows::RepositoryFlowSource;
use crate::scheduler::schedule::slot_execution_id;
use crate::scheduler::{
    BackfillRequest, ManualClock, SchedulerConfig, SchedulerError, SchedulerService, TickReport,
    backfill,
};

/// 1995-01-01T00:00:00Z.
fn start_time() -> DateTime<Utc> {
    DateTime::from_timestamp(788_918_400, 0).expect("fixed date is in range")
}

fn flow_source(namespace: &str, id: &str) -> String {
    format!(
        r#"id: {id}
namespace: {namespace}
tasks:
  - id: hello
    type: io.kestra.plugin.core.log.Log
    message: "{{{{ trigger.date }}}}"
triggers:
  - id: every-minute
    type: io.kestra.plugin.core.trigger.Schedule
    cron: "* * * * *"
    allowConcurrent: true
"#
    )
}

/// Save `count` flows with a per-minute schedule in `tenant`; returns their ids.
async fn save_flows(
    repos: &Repositories,
    registry: &TaskRegistry,
    tenant: &str,
    namespace: &str,
    count: usize,
) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..count {
        let id = format!("scheduled-{i}");
        let source = flow_source(namespace, &id);
        let mut flow =
            parse_flow(&source, registry).unwrap_or_else(|e| panic!("test flow parses: {e:?}"));
        flow.tenant_id = tenant.to_string();
        let record = FlowRecord {
            tenant_id: tenant.to_string(),
            namespace: namespace.to_string(),
            id: id.clone(),
            revision: 0,
            flow: serde_json::to_value(&flow).expect("a flow serializes"),
            source,
            labels: Vec::new(),
            disabled: false,
            deleted: false,
            updated: start_time(),
        };
        repos
            .flows
            .save(record)
            .await
            .unwrap_or_else(|e| panic!("save flow {id}: {e}"));
        ids.push(id);
    }
    ids
}

async fn cleanup(
    repos: &Repositories,
    queue: &dyn Queue,
    tenant: &str,
    namespace: &str,
    flows: &[String],
) {
    for id in flows {
        let _ = repos.flows.delete(tenant, namespace, id).await;
    }
    delete_states(queue, tenant).await;
}

/// Delete the trigger states of `tenant` (through the queue backend, which keeps them).
async fn delete_states(queue: &dyn Queue, tenant: &str) {
    let Ok(mut unit) = queue.begin_triggers().await else {
        return;
    };
    if let Ok(states) = unit.states(tenant).await {
        for s in states {
            if let Ok(Some(_)) = unit.claim(&s.uid()).await {
                let _ = unit.delete(&s.uid()).await;
            }
        }
    }
    let _ = unit.commit().await;
}

/// The committed state of a trigger (read through the queue backend, in a unit that is dropped).
async fn committed_state(queue: &dyn Queue, tenant: &str, uid: &str) -> Option<TriggerState> {
    let mut unit = queue.begin_triggers().await.unwrap();
    unit.states(tenant)
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.uid() == uid)
}

/// `first`, the result of a tick of one of two schedulers ticking together, or the result of
/// ticking `s` again when the database chose that step as a deadlock victim or refused it as a
/// serialization failure (MariaDB: the two schedulers' locks on the trigger table's rows and its
/// `next_execution_date` index): nothing of it was applied, and the scheduler service does the
/// same on its next tick. Any other error, or three refusals in a row, fails the check.
async fn tick_again_if_refused(
    s: &SchedulerService,
    first: Result<TickReport, SchedulerError>,
    who: &str,
    step: u32,
) -> TickReport {
    let mut result = first;
    for _ in 0..3 {
        match result {
            Ok(report) => return report,
            Err(e) if is_lock_refusal(&e.to_string()) => {
                eprintln!(
                    "scheduler {who} step {step}: refused by the database, ticking again: {e}"
                );
                result = s.tick().await;
            }
            Err(e) => panic!("scheduler {who} step {step}: {e}"),
        }
    }
    result.unwrap_or_else(|e| panic!("scheduler {who} step {step}, refused three times: {e}"))
}

/// A deadlock or serialization failure reported by PostgreSQL or MySQL/MariaDB.
fn is_lock_refusal(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("deadlock") || m.contains("could not serialize") || m.contains("(40001)")
}

fn scheduler(
    name: &str,
    tenant: &str,
    clock: Arc<ManualClock>,
    repos: &Repositories,
    queue: Arc<dyn Queue>,
    registry: Arc<TaskRegistry>,
) -> SchedulerService {
    SchedulerService::new(
        SchedulerConfig {
            id: format!("{name}-{}", new_id()),
            tick: Duration::from_millis(10),
            lease: Duration::from_secs(30),
            batch: 2,
            tenants: vec![tenant.to_string()],
            ..SchedulerConfig::default()
        },
        clock,
        Arc::new(RepositoryFlowSource::new(repos.flows.clone())),
        queue,
        registry,
        Arc::new(ExpressionEngine::default()),
    )
}

/// Executions of `tenant` seen on the subscription until `expected` arrived and nothing more came for
/// a while (so that duplicates are seen too).
async fn collect(sub: &mut Subscription, tenant: &str, expected: usize) -> Vec<Execution> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let idle = if seen.len() >= expected {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(10)
        };
        let wait = idle.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        match tokio::time::timeout(wait, sub.next()).await {
            Ok(Some(Ok(envelope))) => {
                let execution: Execution = envelope
                    .decode()
                    .unwrap_or_else(|e| panic!("an execution message decodes: {e}"));
                if execution.tenant_id == tenant {
                    seen.push(execution);
                }
            }
            Ok(Some(Err(e))) => panic!("execution subscription failed: {e}"),
            Ok(None) | Err(_) => return seen,
        }
    }
}

/// (flow id, slot date) of an execution.
fn slot_of(e: &Execution) -> (String, String) {
    let date = e
        .trigger
        .as_ref()
        .and_then(|t| t.variables.get("date"))
        .and_then(|d| d.as_str())
        .unwrap_or_else(|| panic!("execution {} has no trigger.date", e.id))
        .to_string();
    (e.flow_id.clone(), date)
}

/// Checks that the executions cover every (flow, minute) slot in `(start, start + minutes]` with
/// exactly one distinct execution id each; returns the number of messages per id.
fn check_one_per_slot(
    executions: &[Execution],
    flows: &[String],
    minutes: i64,
) -> BTreeMap<String, usize> {
    let mut ids_by_slot: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    let mut messages: BTreeMap<String, usize> = BTreeMap::new();
    for e in executions {
        ids_by_slot
            .entry(slot_of(e))
            .or_default()
            .insert(e.id.clone());
        *messages.entry(e.id.clone()).or_default() += 1;
    }
    let mut expected = BTreeSet::new();
    for flow in flows {
        for m in 1..=minutes {
            let slot = start_time() + chrono::Duration::minutes(m);
            expected.insert((
                flow.clone(),
                slot.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            ));
        }
    }
    let got: BTreeSet<(String, String)> = ids_by_slot.keys().cloned().collect();
    let missing: Vec<_> = expected.difference(&got).collect();
    let extra: Vec<_> = got.difference(&expected).collect();
    assert!(missing.is_empty(), "slots that never fired: {missing:?}");
    assert!(
        extra.is_empty(),
        "executions for unexpected slots: {extra:?}"
    );
    for (slot, ids) in &ids_by_slot {
        assert_eq!(
            ids.len(),
            1,
            "slot {slot:?} got {} different executions: {ids:?}",
            ids.len()
        );
    }
    messages
}

/// Two schedulers share one backend and a clock that jumps one minute per step: 5 flows with a
/// per-minute cron over 40 minutes give exactly 200 executions, one per slot, each queued once.
pub async fn two_schedulers_one_execution_per_slot(repos: &Repositories, queue: Arc<dyn Queue>) {
    const FLOWS: usize = 5;
    const MINUTES: i64 = 40;
    let tenant = format!("tk-sched-{}", new_id());
    let namespace = "testkit.scheduler";
    let registry = Arc::new(TaskRegistry::default());
    let flows = save_flows(repos, &registry, &tenant, namespace, FLOWS).await;
    let clock = Arc::new(ManualClock::new(start_time()));
    let mut sub = queue
        .subscribe(Topic::Execution)
        .await
        .unwrap_or_else(|e| panic!("subscribe to executions: {e}"));
    let a = scheduler(
        "sched-a",
        &tenant,
        clock.clone(),
        repos,
        queue.clone(),
        registry.clone(),
    );
    let b = scheduler(
        "sched-b",
        &tenant,
        clock.clone(),
        repos,
        queue.clone(),
        registry,
    );

    let mut fired = 0;
    for step in 0..=MINUTES {
        if step > 0 {
            clock.advance(chrono::Duration::minutes(1));
        }
        let (ra, rb) = tokio::join!(a.tick(), b.tick());
        let ra = tick_again_if_refused(&a, ra, "a", step as u32).await;
        let rb = tick_again_if_refused(&b, rb, "b", step as u32).await;
        fired += ra.fired.len() + rb.fired.len();
    }
    assert_eq!(
        fired,
        FLOWS * MINUTES as usize,
        "the two schedulers together fired one slot per flow and minute"
    );
    let executions = collect(&mut sub, &tenant, FLOWS * MINUTES as usize).await;
    let messages = check_one_per_slot(&executions, &flows, MINUTES);
    assert_eq!(messages.len(), FLOWS * MINUTES as usize);
    let repeated: Vec<_> = messages.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.is_empty(),
        "executions queued more than once without any crash: {repeated:?}"
    );
    cleanup(repos, queue.as_ref(), &tenant, namespace, &flows).await;
}

/// The real queue as a scheduler sees it, observed by the scenarios: it records the
/// acknowledgements its schedulers commit, and with `crash_at` it dies on that publish staged in a
/// trigger unit (the messages are staged, then the call never returns, as a process killed before its
/// unit could commit). Everything else goes through to the backend unchanged.
struct TestQueue {
    inner: Arc<dyn Queue>,
    observed: Arc<Observed>,
}

/// What a [`TestQueue`] saw.
struct Observed {
    publishes: AtomicUsize,
    crash_at: Option<usize>,
    crashed: AtomicBool,
    notify: tokio::sync::Notify,
    acked: Mutex<Vec<(ConsumerGroup, DeliveryTag)>>,
}

impl TestQueue {
    fn new(inner: Arc<dyn Queue>, crash_at: Option<usize>) -> TestQueue {
        TestQueue {
            inner,
            observed: Arc::new(Observed {
                publishes: AtomicUsize::new(0),
                crash_at,
                crashed: AtomicBool::new(false),
                notify: tokio::sync::Notify::new(),
                acked: Mutex::new(Vec::new()),
            }),
        }
    }
}

impl Observed {
    /// Count a publish; past `crash_at`, never return.
    async fn published(&self) {
        let n = self.publishes.fetch_add(1, Ordering::SeqCst) + 1;
        if self.crash_at.is_some_and(|at| n >= at) {
            self.crashed.store(true, Ordering::SeqCst);
            self.notify.notify_one();
            std::future::pending::<()>().await;
        }
    }
}

#[async_trait]
impl Queue for TestQueue {
    fn capabilities(&self) -> crate::queue::QueueCapabilities {
        self.inner.capabilities()
    }
    async fn publish(&self, messages: Vec<Envelope>) -> Result<(), QueueError> {
        self.inner.publish(messages).await?;
        self.observed.published().await;
        Ok(())
    }
    async fn receive(
        &self,
        group: ConsumerGroup,
        topic: Topic,
        max: usize,
        lease: Duration,
        wait: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        self.inner.receive(group, topic, max, lease, wait).await
    }
    async fn receive_recorded(
        &self,
        group: ConsumerGroup,
        topic: Topic,
        max: usize,
        lease: Duration,
        wait: Duration,
        record: &crate::queue::Recorder,
    ) -> Result<Vec<Delivery>, QueueError> {
        let got = self
            .inner
            .receive_recorded(group, topic, max, lease, wait, record)
            .await?;
        self.observed.published().await;
        Ok(got)
    }
    async fn ack(&self, group: ConsumerGroup, tags: &[DeliveryTag]) -> Result<(), QueueError> {
        self.inner.ack(group, tags).await?;
        self.observed
            .acked
            .lock()
            .unwrap()
            .extend(tags.iter().map(|t| (group, *t)));
        Ok(())
    }
    async fn extend_lease(
        &self,
        group: ConsumerGroup,
        tags: &[DeliveryTag],
        lease: Duration,
    ) -> Result<Vec<DeliveryTag>, QueueError> {
        self.inner.extend_lease(group, tags, lease).await
    }
    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<(), QueueError> {
        self.inner.dead_letter(delivery, reason).await
    }
    async fn subscribe(&self, topic: Topic) -> Result<Subscription, QueueError> {
        self.inner.subscribe(topic).await
    }
    async fn begin(
        &self,
        group: ConsumerGroup,
        topics: &[Topic],
        max: usize,
        wait: Duration,
    ) -> Result<Option<Box<dyn UnitOfWork>>, QueueError> {
        self.inner.begin(group, topics, max, wait).await
    }
    async fn begin_triggers(&self) -> Result<Box<dyn TriggerUnit>, QueueError> {
        Ok(Box::new(TestUnit {
            inner: self.inner.begin_triggers().await?,
            observed: self.observed.clone(),
            acks: Vec::new(),
        }))
    }
}

/// A trigger unit of a [`TestQueue`].
struct TestUnit {
    inner: Box<dyn TriggerUnit>,
    observed: Arc<Observed>,
    acks: Vec<DeliveryTag>,
}

#[async_trait]
impl TriggerUnit for TestUnit {
    async fn states(&mut self, tenant: &str) -> Result<Vec<TriggerState>, QueueError> {
        self.inner.states(tenant).await
    }
    async fn claim_due(
        &mut self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<TriggerState>, QueueError> {
        self.inner.claim_due(now, limit).await
    }
    async fn claim(&mut self, uid: &str) -> Result<Option<TriggerState>, QueueError> {
        self.inner.claim(uid).await
    }
    async fn create(&mut self, state: &TriggerState) -> Result<bool, QueueError> {
        self.inner.create(state).await
    }
    async fn save(&mut self, state: &TriggerState) -> Result<(), QueueError> {
        self.inner.save(state).await
    }
    async fn delete(&mut self, uid: &str) -> Result<(), QueueError> {
        self.inner.delete(uid).await
    }
    async fn publish(&mut self, messages: Vec<Envelope>) -> Result<(), QueueError> {
        self.inner.publish(messages).await?;
        self.observed.published().await;
        Ok(())
    }
    async fn ack(&mut self, tags: &[DeliveryTag]) -> Result<(), QueueError> {
        self.inner.ack(tags).await?;
        self.acks.extend_from_slice(tags);
        Ok(())
    }
    async fn commit(self: Box<Self>) -> Result<(), QueueError> {
        let TestUnit {
            inner,
            observed,
            acks,
        } = *self;
        inner.commit().await?;
        observed
            .acked
            .lock()
            .unwrap()
            .extend(acks.into_iter().map(|t| (ConsumerGroup::Scheduler, t)));
        Ok(())
    }
}

/// Two schedulers share one backend; one of them is killed in the middle of a step, after staging
/// executions in its trigger unit and before committing it. Nothing it staged is published, its
/// claims end with it, and the survivor fires those slots at its next step: every (flow, minute)
/// slot has exactly one execution, queued exactly once.
pub async fn scheduler_killed_mid_run(repos: &Repositories, queue: Arc<dyn Queue>) {
    const FLOWS: usize = 4;
    const MINUTES: i64 = 20;
    let tenant = format!("tk-sched-kill-{}", new_id());
    let namespace = "testkit.scheduler";
    let registry = Arc::new(TaskRegistry::default());
    let flows = save_flows(repos, &registry, &tenant, namespace, FLOWS).await;
    let clock = Arc::new(ManualClock::new(start_time()));
    let mut sub = queue
        .subscribe(Topic::Execution)
        .await
        .unwrap_or_else(|e| panic!("subscribe to executions: {e}"));
    let crashing = Arc::new(TestQueue::new(queue.clone(), Some(7)));
    let victim = Arc::new(scheduler(
        "victim",
        &tenant,
        clock.clone(),
        repos,
        crashing.clone(),
        registry.clone(),
    ));
    let survivor = scheduler(
        "survivor",
        &tenant,
        clock.clone(),
        repos,
        queue.clone(),
        registry,
    );

    // The two alternate who goes first at each step, so that both fire slots; the victim dies during
    // its third step.
    let mut victim_alive = true;
    for step in 0..=MINUTES {
        if step > 0 {
            clock.advance(chrono::Duration::minutes(1));
        }
        let survivor_first = step % 2 == 1;
        if survivor_first {
            survivor
                .tick()
                .await
                .unwrap_or_else(|e| panic!("survivor step {step}: {e}"));
        }
        if victim_alive {
            let v = victim.clone();
            let mut handle = tokio::spawn(async move { v.tick().await });
            tokio::select! {
                result = &mut handle => match result {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => panic!("victim step {step}: {e}"),
                    Err(e) => panic!("victim step {step} panicked: {e}"),
                },
                () = crashing.observed.notify.notified() => {
                    handle.abort();
                    victim_alive = false;
                }
            }
        }
        if !survivor_first {
            survivor
                .tick()
                .await
                .unwrap_or_else(|e| panic!("survivor step {step}: {e}"));
        }
    }
    assert!(
        crashing.observed.crashed.load(Ordering::SeqCst),
        "the victim scheduler published enough to be killed"
    );
    // Let the survivor catch up on anything still due (ALL recovery) without moving the clock.
    for _ in 0..10 {
        let report = survivor
            .tick()
            .await
            .unwrap_or_else(|e| panic!("survivor catch-up step: {e}"));
        if report.fired.is_empty() {
            break;
        }
    }

    let executions = collect(&mut sub, &tenant, FLOWS * MINUTES as usize).await;
    let messages = check_one_per_slot(&executions, &flows, MINUTES);
    assert_eq!(messages.len(), FLOWS * MINUTES as usize);
    let repeated: Vec<_> = messages.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.is_empty(),
        "the killed scheduler's staged executions were never published: {repeated:?}"
    );
    let labels_ok = executions.iter().all(|e| {
        e.labels
            .contains(&Label::new("system.correlationId", e.id.clone()))
    });
    assert!(labels_ok, "every execution carries its own correlation id");
    cleanup(repos, queue.as_ref(), &tenant, namespace, &flows).await;
}

/// Two schedulers share one backend and a clock that moves 20 s per step; 3 flows have an
/// `http.Trigger` polled every minute. The test plays the worker: it receives every evaluation job
/// from the queue ([`Topic::WorkerJob`], so run it on a backend of its own) and answers "start". Each
/// (trigger, due date) gets exactly one evaluation, never two at once for a trigger, and every
/// applied result starts exactly one execution.
pub async fn two_schedulers_one_evaluation_per_due_date(
    repos: &Repositories,
    queue: Arc<dyn Queue>,
) {
    const FLOWS: usize = 3;
    const STEPS: usize = 30;
    let tenant = format!("tk-poll-{}", new_id());
    let namespace = "testkit.polling";
    let registry = Arc::new(TaskRegistry::default());
    let mut flows = Vec::new();
    for i in 0..FLOWS {
        let id = format!("polled-{i}");
        let source = format!(
            "id: {id}\nnamespace: {namespace}\ntasks:\n  - id: hello\n    type: io.kestra.plugin.core.log.Log\n    message: \"{{{{ trigger.body }}}}\"\ntriggers:\n  - id: poll\n    type: io.kestra.plugin.core.http.Trigger\n    uri: http://127.0.0.1:1/status\n    interval: PT1M\n    allowConcurrent: true\n"
        );
        let mut flow =
            parse_flow(&source, &registry).unwrap_or_else(|e| panic!("test flow parses: {e:?}"));
        flow.tenant_id = tenant.clone();
        repos
            .flows
            .save(FlowRecord {
                tenant_id: tenant.clone(),
                namespace: namespace.to_string(),
                id: id.clone(),
                revision: 0,
                flow: serde_json::to_value(&flow).expect("a flow serializes"),
                source,
                labels: Vec::new(),
                disabled: false,
                deleted: false,
                updated: start_time(),
            })
            .await
            .unwrap_or_else(|e| panic!("save flow {id}: {e}"));
        flows.push(id);
    }
    let clock = Arc::new(ManualClock::new(start_time()));
    let mut sub = queue
        .subscribe(Topic::Execution)
        .await
        .unwrap_or_else(|e| panic!("subscribe to executions: {e}"));
    let a = scheduler(
        "poll-a",
        &tenant,
        clock.clone(),
        repos,
        queue.clone(),
        registry.clone(),
    );
    let b = scheduler(
        "poll-b",
        &tenant,
        clock.clone(),
        repos,
        queue.clone(),
        registry,
    );

    let mut evaluations: BTreeSet<(String, DateTime<Utc>)> = BTreeSet::new();
    let mut sent = 0;
    let (mut applied, mut fired) = (0, 0);
    for step in 0..STEPS {
        if step > 0 {
            clock.advance(chrono::Duration::seconds(20));
        }
        let (ra, rb) = tokio::join!(a.tick(), b.tick());
        let ra = tick_again_if_refused(&a, ra, "a", step as u32).await;
        let rb = tick_again_if_refused(&b, rb, "b", step as u32).await;
        sent += ra.evaluations.len() + rb.evaluations.len();
        applied += ra.results + rb.results;
        fired += ra.fired.len() + rb.fired.len();
        assert_eq!(ra.stale_results + rb.stale_results, 0, "step {step}");

        // The worker: answer every evaluation sent in this step.
        let mut running: BTreeSet<String> = BTreeSet::new();
        let jobs = queue
            .receive(
                ConsumerGroup::Worker,
                Topic::WorkerJob,
                100,
                Duration::from_secs(30),
                Duration::from_millis(200),
            )
            .await
            .unwrap_or_else(|e| panic!("receive evaluation jobs: {e}"));
        let mut results = Vec::new();
        for delivery in &jobs {
            let job = match delivery.envelope.decode::<WorkerJob>() {
                Ok(WorkerJob::Trigger(job)) => *job,
                other => panic!("not an evaluation job: {other:?}"),
            };
            assert!(
                running.insert(job.uid()),
                "two evaluations of {} at once",
                job.uid()
            );
            assert!(
                evaluations.insert((job.uid(), job.evaluation_date)),
                "{} evaluated twice for {}",
                job.uid(),
                job.evaluation_date
            );
            let mut variables = serde_json::Map::new();
            variables.insert("body".into(), serde_json::json!(job.evaluation_date));
            variables.insert("code".into(), serde_json::json!(200));
            results.push(
                WorkerTriggerResult {
                    variables: Some(variables),
                    ..WorkerTriggerResult::answering(&job, Some("testkit-worker".into()))
                }
                .envelope()
                .unwrap_or_else(|e| panic!("encode a result: {e}")),
            );
        }
        assert_eq!(
            jobs.len(),
            ra.evaluations.len() + rb.evaluations.len(),
            "step {step}: every evaluation sent reached the worker queue"
        );
        queue
            .publish(results)
            .await
            .unwrap_or_else(|e| panic!("publish results: {e}"));
        let tags: Vec<DeliveryTag> = jobs.iter().map(|d| d.tag).collect();
        queue
            .ack(ConsumerGroup::Worker, &tags)
            .await
            .unwrap_or_else(|e| panic!("ack jobs: {e}"));
    }
    // 10 minutes of a one-minute interval: every trigger was evaluated again and again.
    assert_eq!(evaluations.len(), sent);
    assert!(
        sent >= FLOWS * 8,
        "{sent} evaluations for {FLOWS} triggers over 10 minutes"
    );
    assert_eq!(fired, applied, "every applied result started an execution");
    assert!(
        applied + FLOWS >= sent,
        "results are applied ({applied} of {sent})"
    );
    let executions = collect(&mut sub, &tenant, fired).await;
    let ids: BTreeSet<&str> = executions.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(
        ids.len(),
        fired,
        "one distinct execution per applied result"
    );
    assert_eq!(executions.len(), fired, "each execution queued once");
    cleanup(repos, queue.as_ref(), &tenant, namespace, &flows).await;
}

/// Every scenario of this module, one after the other, on one backend (of their own: they consume
/// the executor's and the workers' messages of their tenants). Prints how long each took.
pub async fn run_all(repos: &Repositories, queue: Arc<dyn Queue>) {
    let mut times = Vec::new();
    macro_rules! run {
        ($($scenario:ident),* $(,)?) => {$(
            let started = std::time::Instant::now();
            $scenario(repos, queue.clone()).await;
            times.push((stringify!($scenario), started.elapsed()));
        )*};
    }
    run!(
        fires_once_per_slot_with_variables_labels_and_inputs,
        two_schedulers_never_fire_a_slot_twice,
        lock_is_held_while_the_execution_runs,
        lock_is_released_by_the_end_of_its_execution_only,
        stop_after_disables_the_trigger,
        broken_triggers_are_disabled_with_an_error_once,
        disabled_then_enabled_recovers_and_never_skips_the_next_slot,
        recovery_after_downtime_through_the_service,
        conditions_skip_slots_in_the_service,
        schedule_on_dates_in_the_service,
        backfill_fires_every_slot_in_order_then_clears,
        removed_triggers_lose_their_state_and_cron_changes_reschedule,
        run_loop_ticks_until_shutdown,
        polling_trigger_sends_one_evaluation_per_due_date_and_waits_for_its_result,
        polling_result_starts_one_execution_with_trigger_variables,
        polling_conditions_false_start_nothing,
        polling_lock_holds_evaluations_while_the_execution_runs,
        polling_evaluation_errors_are_kept_in_the_state_and_abandoned_evaluations_resent,
        polling_trigger_whose_inputs_cannot_render_is_disabled_with_an_error,
        two_schedulers_send_one_evaluation_per_due_date,
        polling_stop_after_disables_the_trigger,
        polling_trigger_with_a_zero_interval_is_disabled_with_an_error,
        two_schedulers_one_execution_per_slot,
        scheduler_killed_mid_run,
        two_schedulers_one_evaluation_per_due_date,
    );
    for (scenario, took) in times {
        eprintln!("scheduler scenario {scenario}: {took:?}");
    }
}

// ------------------------------------------------------------------------------------------------
// The service, step by step: one scenario per behaviour of the scheduler (cron slots, lock, recovery,
// conditions, ScheduleOnDates, backfill, stopAfter, broken triggers, disable/enable, polling
// triggers). Each works in a tenant of its own (its schedulers sync only that tenant), reads the
// executions and evaluation jobs the schedulers published from the real queue (competing groups
// [`ConsumerGroup::Executor`] and [`ConsumerGroup::Worker`]: it keeps and acknowledges the messages of
// its tenant, so run them on a backend of their own, one at a time), stores the executions' states
// through the execution repository as the executor would, and deletes its flows and trigger states at
// the end.

/// `y-mo-d h:mi:s` UTC.
fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
}

/// One scenario's world: a tenant of its own on the backend, a manual clock, and what its schedulers
/// published so far.
struct World<'a> {
    repos: &'a Repositories,
    /// The backend's queue.
    queue: Arc<dyn Queue>,
    /// The same, as given to the schedulers.
    counting: Arc<TestQueue>,
    clock: Arc<ManualClock>,
    registry: Arc<TaskRegistry>,
    tenant: String,
    /// Executions of the tenant received from the queue, in order.
    executions: Mutex<Vec<Execution>>,
    /// Evaluation jobs of the tenant received from the queue, in order.
    jobs: Mutex<Vec<WorkerTrigger>>,
    /// (namespace, flow id) deployed.
    flows: Mutex<BTreeSet<(String, String)>>,
}

const NAMESPACE: &str = "company";
/// How long the messages a world reads are held (it acknowledges its own at once).
const READ_LEASE: Duration = Duration::from_secs(60);

impl<'a> World<'a> {
    fn new(repos: &'a Repositories, queue: &Arc<dyn Queue>, now: DateTime<Utc>) -> World<'a> {
        World {
            repos,
            queue: queue.clone(),
            counting: Arc::new(TestQueue::new(queue.clone(), None)),
            clock: Arc::new(ManualClock::new(now)),
            registry: Arc::new(TaskRegistry::default()),
            tenant: format!("tk-svc-{}", new_id()),
            executions: Mutex::new(Vec::new()),
            jobs: Mutex::new(Vec::new()),
            flows: Mutex::new(BTreeSet::new()),
        }
    }

    fn config(&self, name: &str) -> SchedulerConfig {
        SchedulerConfig {
            id: format!("{name}-{}", new_id()),
            batch: 3,
            tenants: vec![self.tenant.clone()],
            ..SchedulerConfig::default()
        }
    }

    fn service(&self, config: SchedulerConfig) -> SchedulerService {
        SchedulerService::new(
            config,
            self.clock.clone(),
            Arc::new(RepositoryFlowSource::new(self.repos.flows.clone())),
            self.counting.clone(),
            self.registry.clone(),
            Arc::new(ExpressionEngine::default()),
        )
    }

    fn scheduler(&self, name: &str) -> SchedulerService {
        self.service(self.config(name))
    }

    fn now(&self) -> DateTime<Utc> {
        crate::scheduler::Clock::now(self.clock.as_ref())
    }

    fn at(&self, t: DateTime<Utc>) {
        self.clock.set(t);
    }

    /// Save a flow revision in the world's tenant; returns its revision.
    async fn deploy(&self, source: &str) -> i32 {
        let mut flow = parse_flow(source, &self.registry)
            .unwrap_or_else(|e| panic!("test flow parses: {e:?}"));
        flow.tenant_id = self.tenant.clone();
        self.flows
            .lock()
            .unwrap()
            .insert((flow.namespace.clone(), flow.id.clone()));
        let record = FlowRecord {
            tenant_id: self.tenant.clone(),
            namespace: flow.namespace.clone(),
            id: flow.id.clone(),
            revision: 0,
            flow: serde_json::to_value(&flow).unwrap(),
            source: source.to_string(),
            labels: Vec::new(),
            disabled: false,
            deleted: false,
            updated: self.now(),
        };
        self.repos.flows.save(record).await.unwrap().0.revision
    }

    fn uid(&self, flow: &str, trigger: &str) -> String {
        trigger_uid(&self.tenant, NAMESPACE, flow, trigger)
    }

    async fn state(&self, flow: &str, trigger: &str) -> TriggerState {
        committed_state(self.queue.as_ref(), &self.tenant, &self.uid(flow, trigger))
            .await
            .unwrap_or_else(|| panic!("no state for trigger {flow}.{trigger}"))
    }

    /// Receive what is waiting for `group` on `topic`; acknowledge and return the messages of this
    /// world's tenant (those `decode` reads and `tenant` says are of the tenant), leave the others.
    async fn read<T>(
        &self,
        group: ConsumerGroup,
        topic: Topic,
        decode: impl Fn(&Envelope) -> Option<T>,
        tenant: impl Fn(&T) -> &str,
    ) -> Vec<T> {
        let mut mine = Vec::new();
        loop {
            let got = self
                .queue
                .receive(group, topic, 100, READ_LEASE, Duration::ZERO)
                .await
                .unwrap_or_else(|e| panic!("receive {topic} for {group}: {e}"));
            if got.is_empty() {
                return mine;
            }
            let mut tags = Vec::new();
            for delivery in &got {
                if let Some(message) = decode(&delivery.envelope)
                    && tenant(&message) == self.tenant
                {
                    tags.push(delivery.tag);
                    mine.push(message);
                }
            }
            self.queue
                .ack(group, &tags)
                .await
                .unwrap_or_else(|e| panic!("ack {topic} for {group}: {e}"));
        }
    }

    /// Every execution the schedulers queued so far, in order.
    async fn executions(&self) -> Vec<Execution> {
        let new = self
            .read(
                ConsumerGroup::Executor,
                Topic::Execution,
                |e| e.decode::<Execution>().ok(),
                |e| e.tenant_id.as_str(),
            )
            .await;
        let mut all = self.executions.lock().unwrap();
        all.extend(new);
        all.clone()
    }

    /// Every polling-trigger evaluation the schedulers sent to the workers so far, in order.
    async fn trigger_jobs(&self) -> Vec<WorkerTrigger> {
        let new = self
            .read(
                ConsumerGroup::Worker,
                Topic::WorkerJob,
                |e| match e.decode::<WorkerJob>() {
                    Ok(WorkerJob::Trigger(t)) => Some(*t),
                    _ => None,
                },
                |t| t.tenant_id.as_str(),
            )
            .await;
        let mut all = self.jobs.lock().unwrap();
        all.extend(new);
        all.clone()
    }

    /// How many deliveries the schedulers acknowledged.
    fn acked(&self) -> usize {
        self.counting.observed.acked.lock().unwrap().len()
    }

    /// The execution reached this state: when it is terminal, tell the schedulers as the executor
    /// would ([`TriggerEvent::ExecutionEnded`] on [`Topic::Trigger`]). The repository is not told:
    /// the scheduler never reads it.
    async fn set_execution_state(&self, id: &str, state: StateType) {
        let mut e = self
            .executions()
            .await
            .into_iter()
            .find(|e| e.id == id)
            .unwrap_or_else(|| panic!("execution {id} was not queued"));
        e.state = State::new_at(state, self.now());
        if let Some(event) = TriggerEvent::execution_ended(&e) {
            self.queue
                .publish(vec![event.envelope().unwrap()])
                .await
                .unwrap();
        }
    }

    /// A worker's answer to `job`: `variables` start an execution, `error` is a failed evaluation.
    async fn answer(&self, job: &WorkerTrigger, variables: Option<Value>, error: Option<&str>) {
        let result = WorkerTriggerResult {
            tenant_id: job.tenant_id.clone(),
            namespace: job.namespace.clone(),
            flow_id: job.flow_id.clone(),
            flow_revision: job.flow_revision,
            trigger_id: job.trigger.id.clone(),
            evaluation_date: job.evaluation_date,
            variables: variables.map(|v| v.as_object().unwrap().clone()),
            error: error.map(str::to_string),
            worker_id: Some("w1".into()),
        };
        self.queue
            .publish(vec![result.envelope().unwrap()])
            .await
            .unwrap();
    }

    /// Delete the world's flows, trigger states and executions; consume what is left of its
    /// messages.
    async fn cleanup(&self) {
        let executions = self.executions().await;
        self.trigger_jobs().await;
        for e in &executions {
            let _ = self.repos.executions.purge(&self.tenant, &e.id).await;
        }
        let flows: Vec<(String, String)> = self.flows.lock().unwrap().iter().cloned().collect();
        for (namespace, id) in flows {
            let _ = self.repos.flows.delete(&self.tenant, &namespace, &id).await;
        }
        delete_states(self.queue.as_ref(), &self.tenant).await;
    }
}

fn flow(id: &str, trigger: &str) -> String {
    format!(
        r#"id: {id}
namespace: {NAMESPACE}
labels:
  team: data
inputs:
  - id: day
    type: STRING
tasks:
  - id: hello
    type: io.kestra.plugin.core.log.Log
    message: hi
triggers:
{trigger}"#
    )
}

const HOURLY: &str = r#"  - id: hourly
    type: io.kestra.plugin.core.trigger.Schedule
    cron: "0 * * * *"
    labels:
      source: cron
    inputs:
      day: "{{ trigger.date | date('yyyy-MM-dd') }}"
"#;

const LOCKED: &str = r#"  - id: hourly
    type: io.kestra.plugin.core.trigger.Schedule
    cron: "0 * * * *"
    inputs:
      day: x
"#;

/// A new hourly `Schedule` fires nothing for the past, then each slot once, with the trigger variables
/// (`date`, `next`, `previous`), the flow and trigger labels, a correlation id and rendered inputs.
pub async fn fires_once_per_slot_with_variables_labels_and_inputs(
    repos: &Repositories,
    queue: Arc<dyn Queue>,
) {
    let w = World::new(repos, &queue, utc(2024, 1, 1, 10, 30, 0));
    w.deploy(&flow("f", &format!("{HOURLY}    allowConcurrent: true\n")))
        .await;
    let s = w.scheduler("s1");

    let r = s.tick().await.unwrap();
    assert_eq!(r.created, 1);
    assert!(r.fired.is_empty(), "no firing for the past on creation");
    assert_eq!(
        w.state("f", "hourly").await.next_execution_date,
        Some(utc(2024, 1, 1, 11, 0, 0))
    );

    w.at(utc(2024, 1, 1, 11, 0, 0));
    let r = s.tick().await.unwrap();
    assert_eq!(r.fired.len(), 1);
    assert_eq!(s.tick().await.unwrap().fired.len(), 0, "a slot fires once");
    w.at(utc(2024, 1, 1, 11, 59, 59));
    assert_eq!(s.tick().await.unwrap().fired.len(), 0);
    w.at(utc(2024, 1, 1, 12, 0, 0));
    assert_eq!(s.tick().await.unwrap().fired.len(), 1);

    let executions = w.executions().await;
    assert_eq!(executions.len(), 2);
    let e = &executions[0];
    assert_eq!(
        e.id,
        slot_execution_id(
            &w.tenant,
            NAMESPACE,
            "f",
            "hourly",
            utc(2024, 1, 1, 11, 0, 0),
            None
        )
    );
    assert_eq!(e.current(), StateType::Created);
    assert_eq!(e.flow_revision, 1);
    let trigger = e.trigger.as_ref().unwrap();
    assert_eq!(trigger.id, "hourly");
    assert_eq!(trigger.type_, "io.kestra.plugin.core.trigger.Schedule");
    assert_eq!(trigger.variables["date"], "2024-01-01T11:00:00Z");
    assert_eq!(trigger.variables["next"], "2024-01-01T12:00:00Z");
    assert_eq!(trigger.variables["previous"], "2024-01-01T10:00:00Z");
    assert_eq!(e.label("team"), Some("data"));
    assert_eq!(e.label("source"), Some("cron"));
    assert_eq!(e.label("system.correlationId"), Some(e.id.as_str()));
    assert_eq!(e.inputs["day"], "2024-01-01");
    let state = w.state("f", "hourly").await;
    assert_eq!(state.date, Some(utc(2024, 1, 1, 12, 0, 0)));
    assert_eq!(state.next_execution_date, Some(utc(2024, 1, 1, 13, 0, 0)));
    w.cleanup().await;
}

/// Two schedulers stepping together over 6 per-minute crons for 30 minutes queue each slot exactly once.
pub async fn two_schedulers_never_fire_a_slot_twice(repos: &Repositories, queue: Arc<dyn Queue>) {
    let w = World::new(repos, &queue, utc(2024, 1, 1, 0, 0, 0));
    for i in 0..6 {
        w.deploy(&flow(
            &format!("f{i}"),
            "  - id: m\n    type: io.kestra.plugin.core.trigger.Schedule\n    cron: \"* * * * *\"\n    allowConcurrent: true\n    inputs:\n      day: x\n",
        ))
        .await;
    }
    let (a, b) = (w.scheduler("a"), w.scheduler("b"));
    let mut fired = 0;
    for step in 0..=30 {
        if step > 0 {
            w.clock.advance(chrono::Duration::minutes(1));
        }
        let (ra, rb) = tokio::join!(a.tick(), b.tick());
        let ra = tick_again_if_refused(&a, ra, "a", step).await;
        let rb = tick_again_if_refused(&b, rb, "b", step).await;
        fired += ra.fired.len() + rb.fired.len();
    }
    assert_eq!(fired, 6 * 30);
    let executions = w.executions().await;
    let mut ids: Vec<&str> = executions.iter().map(|e| e.id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(executions.len(), 180, "each slot queued exactly once");
    assert_eq!(ids.len(), 180);
    w.cleanup().await;
}

/// Without `allowConcurrent`, a running execution holds the trigger: the slot is kept and fires once
/// the execution ended (SUCCESS, FAILED, KILLED).
pub async fn lock_is_held_while_the_execution_runs(repos: &Repositories, queue: Arc<dyn Queue>) {
    for ended in [StateType::Success, StateType::Failed, StateType::Killed] {
        let w = World::new(repos, &queue, utc(2024, 1, 1, 10, 30, 0));
        w.deploy(&flow("f", LOCKED)).await;
        let s = w.scheduler("s");
        s.tick().await.unwrap();
        w.at(utc(2024, 1, 1, 11, 0, 0));
        let first = s.tick().await.unwrap().fired[0].execution_id.clone();
        assert_eq!(
            w.state("f", "hourly").await.execution_id.as_deref(),
            Some(first.as_str())
        );
        w.set_execution_state(&first, StateType::Running).await;

        w.at(utc(2024, 1, 1, 12, 0, 0));
        let r = s.tick().await.unwrap();
        assert!(
            r.fired.is_empty(),
            "no new execution while the previous one runs"
        );
        assert_eq!(r.locked, 1);
        w.at(utc(2024, 1, 1, 12, 20, 0));
        assert!(s.tick().await.unwrap().fired.is_empty());

        w.set_execution_state(&first, ended).await;
        w.at(utc(2024, 1, 1, 12, 30, 0));
        let r = s.tick().await.unwrap();
        assert_eq!(r.fired.len(), 1, "fires once free after {ended:?}");
        assert_eq!(
            r.fired[0].slot,
            utc(2024, 1, 1, 12, 0, 0),
            "the kept slot fires"
        );
        let state = w.state("f", "hourly").await;
        assert_eq!(
            state.execution_id.as_deref(),
            Some(r.fired[0].execution_id.as_str())
        );
        assert_eq!(state.next_execution_date, Some(utc(2024, 1, 1, 13, 0, 0)));
        w.cleanup().await;
    }
}

/// The lock is released by the executor's report of the end of the execution that holds it, and only
/// by that: the scheduler reads no repository, so an execution it queued that is not stored anywhere
/// yet holds the lock, and the end of another execution of the flow (an older one, a duplicate
/// report) changes nothing.
pub async fn lock_is_released_by_the_end_of_its_execution_only(
    repos: &Repositories,
    queue: Arc<dyn Queue>,
) {
    let w = World::new(repos, &queue, utc(2024, 1, 1, 10, 30, 0));
    w.deploy(&flow("f", LOCKED)).await;
    let s = w.scheduler("s");
    s.tick().await.unwrap();
    w.at(utc(2024, 1, 1, 11, 0, 0));
    let first = s.tick().await.unwrap().fired[0].execution_id.clone();
    // Never stored in the repository: still locked, hours later.
    w.at(utc(2024, 1, 1, 15, 0, 0));
    let r = s.tick().await.unwrap();
    assert!(
        r.fired.is_empty(),
        "an execution not stored anywhere holds the lock"
    );
    assert_eq!(r.locked, 1);

    // The end of another execution of the same trigger does not release it.
    let other = TriggerEvent::ExecutionEnded {
        tenant_id: w.tenant.clone(),
        namespace: NAMESPACE.to_string(),
        flow_id: "f".to_string(),
        trigger_id: "hourly".to_string(),
        execution_id: "some-older-execution".to_string(),
        state: StateType::Success,
    };
    w.queue
        .publish(vec![other.envelope().unwrap()])
        .await
        .unwrap();
    let r = s.tick().await.unwrap();
    assert!(
        r.fired.is_empty(),
        "the end of another execution changes nothing"
    );
    assert_eq!((r.events, r.locked), (1, 1));

    w.set_execution_state(&first, StateType::Success).await;
    let r = s.tick().await.unwrap();
    assert_eq!(r.events, 1);
    assert_eq!(
        r.fired.len(),
        1,
        "the end of its execution releases the lock"
    );
    let second = r.fired[0].execution_id.clone();
    assert_eq!(
        w.state("f", "hourly").await.execution_id.as_deref(),
        Some(second.as_str())
    );
    // A duplicate report of the first end is stale: the second execution keeps the lock.
    w.set_execution_state(&first, StateType::Success).await;
    w.at(utc(2024, 1, 1, 16, 0, 0));
    let r = s.tick().await.unwrap();
    assert!(r.fired.is_empty());
    assert_eq!((r.events, r.locked), (1, 1));
    w.cleanup().await;
}

/// `stopAfter: [FAILED]`: an execution ending FAILED disables the trigger for good.
pub async fn stop_after_disables_the_trigger(repos: &Repositories, queue: Arc<dyn Queue>) {
    let w = World::new(repos, &queue, utc(2024, 1, 1, 10, 30, 0));
    w.deploy(&flow("f", &format!("{LOCKED}    stopAfter: [FAILED]\n")))
        .await;
    let s = w.scheduler("s");
    s.tick().await.unwrap();
    w.at(utc(2024, 1, 1, 11, 0, 0));
    let first = s.tick().await.unwrap().fired[0].execution_id.clone();
    w.set_execution_state(&first, StateType::Success).await;
    w.at(utc(2024, 1, 1, 12, 0, 0));
    let second = s.tick().await.unwrap().fired[0].execution_id.clone();
    w.set_execution_state(&second, StateType::Failed).await;
    w.at(utc(2024, 1, 1, 13, 0, 0));
    let r = s.tick().await.unwrap();
    assert!(r.fired.is_empty());
    assert_eq!(r.disabled.len(), 1);
    assert!(r.disabled[0].1.contains("FAILED"));
    let state = w.state("f", "hourly").await;
    assert!(state.disabled);
    assert_eq!(state.execution_id, None);
    w.at(utc(2024, 1, 1, 15, 0, 0));
    assert!(s.tick().await.unwrap().fired.is_empty(), "stays disabled");
    w.cleanup().await;
}

/// An unsupported condition (at sync) and inputs that do not render (at fire time) disable the trigger
/// with a visible error, reported once; a new flow revision enables it again.
pub async fn broken_triggers_are_disabled_with_an_error_once(
    repos: &Repositories,
    queue: Arc<dyn Queue>,
) {
    let w = World::new(repos, &queue, utc(2024, 1, 1, 10, 30, 0));
    w.deploy(&flow(
        "f",
        &format!("{LOCKED}    conditions:\n      - type: io.kestra.plugin.core.condition.ExecutionStatus\n        in: [SUCCESS]\n"),
    ))
    .await;
    // Inputs that cannot render: disabled when it first fires.
    w.deploy(&flow(
        "g",
        "  - id: hourly\n    type: io.kestra.plugin.core.trigger.Schedule\n    cron: \"0 * * * *\"\n    inputs:\n      day: \"{{ nope.missing }}\"\n",
    ))
    .await;
    let s = w.scheduler("s");
    let r = s.tick().await.unwrap();
    assert_eq!(
        r.disabled.len(),
        1,
        "unsupported condition detected on sync"
    );
    let f = w.state("f", "hourly").await;
    assert!(f.disabled);
    assert!(f.error.as_deref().unwrap().contains("ExecutionStatus"));

    w.at(utc(2024, 1, 1, 11, 0, 0));
    let r = s.tick().await.unwrap();
    assert!(r.fired.is_empty());
    assert_eq!(r.disabled.len(), 1);
    let g = w.state("g", "hourly").await;
    assert!(g.disabled);
    assert!(g.error.as_deref().unwrap().contains("day"), "{:?}", g.error);
    w.at(utc(2024, 1, 1, 12, 0, 0));
    let r = s.tick().await.unwrap();
    assert!(r.disabled.is_empty(), "reported once, not every step");
    assert!(w.executions().await.is_empty());

    // Fixing the flow enables the trigger again.
    w.deploy(&flow("f", LOCKED)).await;
    s.tick().await.unwrap();
    let f = w.state("f", "hourly").await;
    assert!(!f.disabled);
    assert_eq!(f.error, None);
    assert_eq!(f.next_execution_date, Some(utc(2024, 1, 1, 13, 0, 0)));
    w.cleanup().await;
}

/// Disabling then enabling a trigger never skips the next slot, and the slots of the disabled period
/// follow the recovery policy (`LAST`).
pub async fn disabled_then_enabled_recovers_and_never_skips_the_next_slot(
    repos: &Repositories,
    queue: Arc<dyn Queue>,
) {
    let w = World::new(repos, &queue, utc(2024, 1, 1, 10, 30, 0));
    let with = |extra: &str| flow("f", &format!("{LOCKED}    allowConcurrent: true\n{extra}"));
    w.deploy(&with("")).await;
    let s = w.scheduler("s");
    s.tick().await.unwrap();
    w.at(utc(2024, 1, 1, 11, 0, 0));
    assert_eq!(s.tick().await.unwrap().fired.len(), 1);

    // Disabled from 11:10 to 11:30: nothing due meanwhile; the 12:00 slot still fires.
    w.at(utc(2024, 1, 1, 11, 10, 0));
    w.deploy(&with("    disabled: true\n")).await;
    s.tick().await.unwrap();
    w.at(utc(2024, 1, 1, 11, 30, 0));
    w.deploy(&with("")).await;
    s.tick().await.unwrap();
    w.at(utc(2024, 1, 1, 12, 0, 0));
    let r = s.tick().await.unwrap();
    assert_eq!(r.fired.len(), 1);
    assert_eq!(r.fired[0].slot, utc(2024, 1, 1, 12, 0, 0));

    // Disabled across 13:00 and 14:00 with LAST: enabling at 14:30 fires 14:00 only, then 15:00.
    w.deploy(&with(
        "    disabled: true\n    recoverMissedSchedules: LAST\n",
    ))
    .await;
    for h in [13, 14] {
        w.at(utc(2024, 1, 1, h, 0, 0));
        assert!(s.tick().await.unwrap().fired.is_empty());
    }
    assert_eq!(w.state("f", "hourly").await.next_execution_date, None);
    w.at(utc(2024, 1, 1, 14, 30, 0));
    w.deploy(&with("    recoverMissedSchedules: LAST\n")).await;
    s.tick().await.unwrap(); // sync restores the pending slot (13:00)
    let r = s.tick().await.unwrap();
    assert_eq!(r.fired.len(), 1);
    assert_eq!(r.fired[0].slot, utc(2024, 1, 1, 14, 0, 0));
    w.at(utc(2024, 1, 1, 15, 0, 0));
    assert_eq!(
        s.tick().await.unwrap().fired[0].slot,
        utc(2024, 1, 1, 15, 0, 0)
    );
    w.cleanup().await;
}

/// After three hours of downtime, `recoverMissedSchedules` ALL fires every missed slot, LAST the last
/// one, NONE none; the schedule resumes at the next slot.
pub async fn recovery_after_downtime_through_the_service(
    repos: &Repositories,
    queue: Arc<dyn Queue>,
) {
    for (policy, expected) in [
        ("ALL", vec![11, 12, 13]),
        ("LAST", vec![13]),
        ("NONE", vec![]),
    ] {
        let w = World::new(repos, &queue, utc(2024, 1, 1, 10, 30, 0));
        w.deploy(&flow(
            "f",
            &format!("{LOCKED}    allowConcurrent: true\n    recoverMissedSchedules: {policy}\n"),
        ))
        .await;
        let s = w.scheduler("s");
        s.tick().await.unwrap();
        w.at(utc(2024, 1, 1, 13, 30, 0)); // scheduler down 10:30 -> 13:30
        let mut slots = Vec::new();
        for _ in 0..5 {
            slots.extend(s.tick().await.unwrap().fired.iter().map(|f| f.slot));
        }
        let expected: Vec<_> = expected.iter().map(|h| utc(2024, 1, 1, *h, 0, 0)).collect();
        assert_eq!(slots, expected, "{policy}");
        assert_eq!(
            w.state("f", "hourly").await.next_execution_date,
            Some(utc(2024, 1, 1, 14, 0, 0))
        );
        w.cleanup().await;
    }
}

/// Conditions (`Not Weekend`) skip the slots where they are false.
pub async fn conditions_skip_slots_in_the_service(repos: &Repositories, queue: Arc<dyn Queue>) {
    // 2024-01-05 is a Friday, 06 Saturday, 07 Sunday, 08 Monday.
    let w = World::new(repos, &queue, utc(2024, 1, 4, 12, 0, 0));
    w.deploy(&flow(
        "f",
        "  - id: daily\n    type: io.kestra.plugin.core.trigger.Schedule\n    cron: \"0 9 * * *\"\n    allowConcurrent: true\n    inputs:\n      day: x\n    conditions:\n      - type: io.kestra.plugin.core.condition.Not\n        conditions:\n          - type: io.kestra.plugin.core.condition.Weekend\n",
    ))
    .await;
    let s = w.scheduler("s");
    let mut fired = Vec::new();
    for day in 4..=9 {
        w.at(utc(2024, 1, day, 12, 0, 0));
        fired.extend(s.tick().await.unwrap().fired.iter().map(|f| f.slot));
    }
    assert_eq!(
        fired,
        vec![
            utc(2024, 1, 5, 9, 0, 0),
            utc(2024, 1, 8, 9, 0, 0),
            utc(2024, 1, 9, 9, 0, 0)
        ]
    );
    w.cleanup().await;
}

/// `ScheduleOnDates` fires each date once (time zone applied) and then has no next date.
pub async fn schedule_on_dates_in_the_service(repos: &Repositories, queue: Arc<dyn Queue>) {
    let w = World::new(repos, &queue, utc(2024, 1, 1, 0, 0, 0));
    w.deploy(&flow(
        "f",
        "  - id: dates\n    type: io.kestra.plugin.core.trigger.ScheduleOnDates\n    timezone: Europe/Paris\n    inputs:\n      day: x\n    dates:\n      - \"2024-01-02T10:00:00\"\n      - \"2024-01-03T10:00:00+01:00\"\n",
    ))
    .await;
    let s = w.scheduler("s");
    s.tick().await.unwrap();
    assert_eq!(
        w.state("f", "dates").await.next_execution_date,
        Some(utc(2024, 1, 2, 9, 0, 0))
    );
    w.at(utc(2024, 1, 2, 9, 0, 0));
    assert_eq!(s.tick().await.unwrap().fired.len(), 1);
    let first = w.executions().await[0].clone();
    w.set_execution_state(&first.id, StateType::Success).await;
    w.at(utc(2024, 1, 3, 9, 0, 0));
    assert_eq!(s.tick().await.unwrap().fired.len(), 1);
    assert_eq!(w.state("f", "dates").await.next_execution_date, None);
    assert_eq!(
        first.trigger.as_ref().unwrap().type_,
        "io.kestra.plugin.core.trigger.ScheduleOnDates"
    );
    assert_eq!(
        first.trigger.unwrap().variables["date"],
        "2024-01-02T10:00:00+01:00"
    );
    w.cleanup().await;
}

/// A backfill is validated, fires its slots in order (one per step) with its inputs and labels, clears
/// itself and lets the regular schedule resume; backfilling a slot that already ran makes a new execution.
pub async fn backfill_fires_every_slot_in_order_then_clears(
    repos: &Repositories,
    queue: Arc<dyn Queue>,
) {
    let w = World::new(repos, &queue, utc(2024, 1, 1, 10, 30, 0));
    w.deploy(&flow("f", &format!("{HOURLY}    allowConcurrent: true\n")))
        .await;
    let s = w.scheduler("s");
    s.tick().await.unwrap();
    w.at(utc(2024, 1, 1, 11, 0, 0));
    assert_eq!(s.tick().await.unwrap().fired.len(), 1);
    w.at(utc(2024, 1, 1, 11, 10, 0));

    let now = utc(2024, 1, 1, 11, 10, 0);
    let req = |start, end| BackfillRequest {
        start,
        end,
        inputs: serde_json::Map::from_iter([("day".to_string(), json!("backfilled"))]),
        labels: vec![Label::new("why", "replay")],
    };
    let flows = RepositoryFlowSource::new(w.repos.flows.clone());
    let call = |r| {
        backfill(
            &flows,
            w.queue.as_ref(),
            &w.registry,
            now,
            &w.tenant,
            NAMESPACE,
            "f",
            "hourly",
            r,
        )
    };
    assert!(matches!(
        call(req(
            utc(2024, 1, 1, 5, 0, 0),
            Some(utc(2024, 1, 1, 4, 0, 0))
        ))
        .await,
        Err(SchedulerError::InvalidRequest(_))
    ));
    assert!(matches!(
        call(req(
            utc(2024, 1, 1, 5, 0, 0),
            Some(utc(2024, 1, 1, 12, 0, 0))
        ))
        .await,
        Err(SchedulerError::InvalidRequest(_)),
    ));
    call(req(
        utc(2024, 1, 1, 0, 30, 0),
        Some(utc(2024, 1, 1, 3, 0, 0)),
    ))
    .await
    .unwrap();
    assert!(matches!(
        call(req(utc(2024, 1, 1, 0, 0, 0), None)).await,
        Err(SchedulerError::Conflict(_))
    ));

    let mut backfilled = Vec::new();
    for _ in 0..5 {
        let r = s.tick().await.unwrap();
        assert!(r.fired.len() <= 1, "one backfill slot per step");
        backfilled.extend(r.fired.iter().filter(|f| f.backfill).map(|f| f.slot));
    }
    assert_eq!(
        backfilled,
        vec![utc(2024, 1, 1, 1, 0, 0), utc(2024, 1, 1, 2, 0, 0)],
        "slots in [start, end) in order"
    );
    let state = w.state("f", "hourly").await;
    assert_eq!(state.backfill, None, "the backfill cleared itself");
    assert_eq!(
        state.next_execution_date,
        Some(utc(2024, 1, 1, 12, 0, 0)),
        "regular schedule resumes"
    );
    let executions = w.executions().await;
    let b = executions
        .iter()
        .find(|e| e.label("system.backfill").is_some())
        .unwrap();
    assert_eq!(b.label("system.backfill"), Some("true"));
    assert_eq!(b.label("why"), Some("replay"));
    assert_eq!(b.label("team"), Some("data"));
    assert_eq!(b.inputs["day"], "backfilled");
    assert_eq!(
        b.trigger.as_ref().unwrap().variables["date"],
        "2024-01-01T01:00:00Z"
    );

    // Backfilling a slot that already ran creates a new execution (a backfill id is in its id).
    call(req(utc(2024, 1, 1, 11, 0, 0), None)).await.unwrap();
    let r = s.tick().await.unwrap();
    assert_eq!(r.fired.len(), 1);
    let regular = slot_execution_id(
        &w.tenant,
        NAMESPACE,
        "f",
        "hourly",
        utc(2024, 1, 1, 11, 0, 0),
        None,
    );
    assert_ne!(r.fired[0].execution_id, regular);
    w.at(utc(2024, 1, 1, 12, 0, 0));
    let r = s.tick().await.unwrap();
    assert_eq!(r.fired.len(), 1);
    assert_eq!(r.fired[0].slot, utc(2024, 1, 1, 12, 0, 0));
    assert!(!r.fired[0].backfill);
    w.cleanup().await;
}

/// A changed cron reschedules from now; a deleted flow loses its trigger states.
pub async fn removed_triggers_lose_their_state_and_cron_changes_reschedule(
    repos: &Repositories,
    queue: Arc<dyn Queue>,
) {
    let w = World::new(repos, &queue, utc(2024, 1, 1, 10, 30, 0));
    w.deploy(&flow("f", LOCKED)).await;
    let s = w.scheduler("s");
    s.tick().await.unwrap();
    w.deploy(&flow(
        "f",
        "  - id: hourly\n    type: io.kestra.plugin.core.trigger.Schedule\n    cron: \"45 * * * *\"\n    inputs:\n      day: x\n",
    ))
    .await;
    s.tick().await.unwrap();
    let state = w.state("f", "hourly").await;
    assert_eq!(state.flow_revision, Some(2));
    assert_eq!(state.next_execution_date, Some(utc(2024, 1, 1, 10, 45, 0)));
    w.repos
        .flows
        .delete(&w.tenant, NAMESPACE, "f")
        .await
        .unwrap();
    let r = s.tick().await.unwrap();
    assert_eq!(r.removed, 1);
    assert!(
        committed_state(w.queue.as_ref(), &w.tenant, &state.uid())
            .await
            .is_none()
    );
    w.cleanup().await;
}

/// [`SchedulerService::run`] steps until shutdown and fires a slot once (real sleeps: tens of milliseconds).
pub async fn run_loop_ticks_until_shutdown(repos: &Repositories, queue: Arc<dyn Queue>) {
    let w = World::new(repos, &queue, utc(2024, 1, 1, 10, 30, 0));
    w.deploy(&flow("f", &format!("{HOURLY}    allowConcurrent: true\n")))
        .await;
    let s = w.service(SchedulerConfig {
        tick: Duration::from_millis(5),
        ..w.config("looping")
    });
    let shutdown = tokio_util::sync::CancellationToken::new();
    let handle = tokio::spawn(s.run(shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(w.executions().await.is_empty());
    w.at(utc(2024, 1, 1, 11, 0, 0));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while w.executions().await.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), handle)
        .await
        .expect("run stops on shutdown")
        .unwrap();
    assert_eq!(
        w.executions().await.len(),
        1,
        "the loop fired the 11:00 slot once"
    );
    w.cleanup().await;
}

const POLL: &str = r#"  - id: poll
    type: io.kestra.plugin.core.http.Trigger
    uri: http://127.0.0.1:1/status
    interval: PT1M
    labels:
      source: http
    inputs:
      day: "{{ trigger.body }}"
"#;

/// What an `http.Trigger` evaluation returns.
fn response(body: &str) -> Value {
    json!({"uri": "http://127.0.0.1:1/status", "code": 200, "headers": {"x": ["y"]}, "body": body})
}

/// A polling trigger (`http.Trigger`) is first evaluated one interval after creation; no second evaluation
/// is sent while one runs; the next is due one interval after the evaluation; results are acknowledged.
pub async fn polling_trigger_sends_one_evaluation_per_due_date_and_waits_for_its_result(
    repos: &Repositories,
    queue: Arc<dyn Queue>,
) {
    let t0 = utc(2024, 1, 1, 10, 0, 0);
    let w = World::new(repos, &queue, t0);
    w.deploy(&flow("f", POLL)).await;
    let s = w.scheduler("s");

    let r = s.tick().await.unwrap();
    assert_eq!(r.created, 1);
    assert!(
        r.evaluations.is_empty(),
        "first evaluation one interval later"
    );
    assert_eq!(
        w.state("f", "poll").await.next_execution_date,
        Some(t0 + chrono::Duration::minutes(1))
    );
    w.at(utc(2024, 1, 1, 10, 0, 59));
    assert!(s.tick().await.unwrap().evaluations.is_empty());

    let due = utc(2024, 1, 1, 10, 1, 0);
    w.at(due);
    let r = s.tick().await.unwrap();
    assert_eq!(r.evaluations, vec![w.uid("f", "poll")]);
    let jobs = w.trigger_jobs().await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].evaluation_date, due);
    assert_eq!(jobs[0].trigger.id, "poll");
    assert_eq!(jobs[0].flow_revision, 1);
    assert_eq!(jobs[0].context["flow"]["id"], "f");
    assert_eq!(w.state("f", "poll").await.evaluate_running_date, Some(due));

    // The evaluation runs: nothing more is sent, even once the interval has passed.
    for at in [utc(2024, 1, 1, 10, 1, 1), utc(2024, 1, 1, 10, 3, 0)] {
        w.at(at);
        let r = s.tick().await.unwrap();
        assert!(r.evaluations.is_empty(), "no second evaluation at {at}");
        assert_eq!(w.state("f", "poll").await.evaluate_running_date, Some(due));
    }
    assert_eq!(w.trigger_jobs().await.len(), 1);

    // The result arrives (nothing to start): the next evaluation is due one interval after the last.
    w.answer(&jobs[0], None, None).await;
    w.at(utc(2024, 1, 1, 10, 3, 10));
    let r = s.tick().await.unwrap();
    assert_eq!(r.results, 1);
    assert!(r.fired.is_empty());
    // 10:02 is past: the overdue evaluation is sent in the same step.
    assert_eq!(r.evaluations.len(), 1);
    assert_eq!(w.acked(), 1, "the applied result is acknowledged");
    let jobs = w.trigger_jobs().await;
    assert_eq!(jobs.len(), 2);
    w.answer(&jobs[1], None, None).await;
    let r = s.tick().await.unwrap();
    assert_eq!(r.results, 1);
    assert!(r.evaluations.is_empty());
    let state = w.state("f", "poll").await;
    assert_eq!(state.evaluate_running_date, None);
    assert_eq!(state.worker_id.as_deref(), Some("w1"));
    assert_eq!(
        state.next_execution_date,
        Some(utc(2024, 1, 1, 10, 4, 10)),
        "evaluation date + interval"
    );
    w.cleanup().await;
}

/// A result with variables starts one execution (id derived from the evaluation) with the trigger
/// variables, rendered inputs and labels; the same result delivered again is stale.
pub async fn polling_result_starts_one_execution_with_trigger_variables(
    repos: &Repositories,
    queue: Arc<dyn Queue>,
) {
    let w = World::new(repos, &queue, utc(2024, 1, 1, 10, 0, 0));
    w.deploy(&flow("f", &format!("{POLL}    allowConcurrent: true\n")))
        .await;
    let s = w.scheduler("s");
    s.tick().await.unwrap();
    w.at(utc(2024, 1, 1, 10, 1, 0));
    s.tick().await.unwrap();
    let job = w.trigger_jobs().await.remove(0);

    w.answer(&job, Some(response("2024-01-01")), None).await;
    // The same result delivered twice (a worker redelivery): the second one is stale.
    w.answer(&job, Some(response("2024-01-01")), None).await;
    let r = s.tick().await.unwrap();
    assert_eq!(r.results, 1);
    assert_eq!(r.stale_results, 1);
    assert_eq!(r.fired.len(), 1);
    let executions = w.executions().await;
    assert_eq!(executions.len(), 1, "one execution per evaluation");
    let e = &executions[0];
    assert_eq!(e.id, r.fired[0].execution_id);
    assert_eq!(
        e.id,
        slot_execution_id(&w.tenant, NAMESPACE, "f", "poll", job.evaluation_date, None),
        "the execution id is derived from the evaluation"
    );
    let trigger = e.trigger.as_ref().unwrap();
    assert_eq!(trigger.id, "poll");
    assert_eq!(trigger.type_, "io.kestra.plugin.core.http.Trigger");
    assert_eq!(trigger.variables["body"], "2024-01-01");
    assert_eq!(trigger.variables["code"], 200);
    assert_eq!(trigger.variables["headers"]["x"], json!(["y"]));
    assert_eq!(trigger.variables["uri"], "http://127.0.0.1:1/status");
    assert_eq!(
        e.inputs["day"], "2024-01-01",
        "inputs rendered with trigger"
    );
    assert_eq!(e.label("source"), Some("http"));
    assert_eq!(e.label("team"), Some("data"));
    assert_eq!(e.current(), StateType::Created);
    assert_eq!(w.acked(), 2, "both results acknowledged");
    w.cleanup().await;
}

/// A polling result whose conditions are false starts nothing; the next one that holds starts one.
pub async fn polling_conditions_false_start_nothing(repos: &Repositories, queue: Arc<dyn Queue>) {
    let w = World::new(repos, &queue, utc(2024, 1, 1, 10, 0, 0));
    let trigger = format!(
        "{POLL}    conditions:\n      - type: io.kestra.plugin.core.condition.Expression\n        expression: \"{{{{ trigger.body == 'go' }}}}\"\n"
    );
    w.deploy(&flow("f", &trigger)).await;
    let s = w.scheduler("s");
    s.tick().await.unwrap();
    w.at(utc(2024, 1, 1, 10, 1, 0));
    s.tick().await.unwrap();
    let job = w.trigger_jobs().await.remove(0);
    w.answer(&job, Some(response("wait")), None).await;
    let r = s.tick().await.unwrap();
    assert_eq!(r.results, 1);
    assert_eq!(r.skipped, 1);
    assert!(
        w.executions().await.is_empty(),
        "condition false: nothing starts"
    );

    w.at(utc(2024, 1, 1, 10, 2, 0));
    s.tick().await.unwrap();
    let job = w.trigger_jobs().await.remove(1);
    w.answer(&job, Some(response("go")), None).await;
    let r = s.tick().await.unwrap();
    assert_eq!(r.fired.len(), 1);
    assert_eq!(w.executions().await.len(), 1);
    w.cleanup().await;
}

/// While the execution a polling trigger started runs, no evaluation is sent; once it ended, one is.
pub async fn polling_lock_holds_evaluations_while_the_execution_runs(
    repos: &Repositories,
    queue: Arc<dyn Queue>,
) {
    let w = World::new(repos, &queue, utc(2024, 1, 1, 10, 0, 0));
    w.deploy(&flow("f", POLL)).await;
    let s = w.scheduler("s");
    s.tick().await.unwrap();
    w.at(utc(2024, 1, 1, 10, 1, 0));
    s.tick().await.unwrap();
    let job = w.trigger_jobs().await.remove(0);
    w.answer(&job, Some(response("x")), None).await;
    let first = s.tick().await.unwrap().fired[0].execution_id.clone();
    assert_eq!(
        w.state("f", "poll").await.execution_id.as_deref(),
        Some(first.as_str())
    );
    w.set_execution_state(&first, StateType::Running).await;

    for at in [utc(2024, 1, 1, 10, 2, 0), utc(2024, 1, 1, 10, 5, 0)] {
        w.at(at);
        let r = s.tick().await.unwrap();
        assert!(r.evaluations.is_empty(), "no evaluation while {first} runs");
        assert_eq!(r.locked, 1);
    }
    assert_eq!(w.trigger_jobs().await.len(), 1);

    w.set_execution_state(&first, StateType::Success).await;
    w.at(utc(2024, 1, 1, 10, 6, 0));
    let r = s.tick().await.unwrap();
    assert_eq!(
        r.evaluations.len(),
        1,
        "free again: the next evaluation is sent"
    );
    assert_eq!(w.state("f", "poll").await.execution_id, None);
    w.cleanup().await;
}

/// An evaluation error is kept in the trigger state (still enabled); an evaluation without a result is
/// sent again after `evaluation_timeout`, and its late result is ignored.
pub async fn polling_evaluation_errors_are_kept_in_the_state_and_abandoned_evaluations_resent(
    repos: &Repositories,
    queue: Arc<dyn Queue>,
) {
    let w = World::new(repos, &queue, utc(2024, 1, 1, 10, 0, 0));
    w.deploy(&flow("f", POLL)).await;
    let s = w.scheduler("s");
    s.tick().await.unwrap();
    w.at(utc(2024, 1, 1, 10, 1, 0));
    s.tick().await.unwrap();
    let job = w.trigger_jobs().await.remove(0);
    w.answer(
        &job,
        None,
        Some("invalid property `uri`: 'nope': relative URL"),
    )
    .await;
    let r = s.tick().await.unwrap();
    assert_eq!(r.results, 1);
    assert!(r.fired.is_empty());
    let state = w.state("f", "poll").await;
    assert_eq!(
        state.error.as_deref(),
        Some("invalid property `uri`: 'nope': relative URL"),
        "the error is visible"
    );
    assert!(
        !state.disabled,
        "a failed evaluation does not disable the trigger"
    );

    // The next evaluation is lost with its worker: after the timeout a new one is sent, and the
    // late result of the abandoned one is ignored.
    w.at(utc(2024, 1, 1, 10, 2, 0));
    s.tick().await.unwrap();
    let lost = w.trigger_jobs().await.remove(1);
    w.at(utc(2024, 1, 1, 10, 6, 59));
    assert!(s.tick().await.unwrap().evaluations.is_empty());
    w.at(utc(2024, 1, 1, 10, 7, 0));
    let r = s.tick().await.unwrap();
    assert_eq!(
        r.evaluations.len(),
        1,
        "resent after evaluation_timeout (5 min)"
    );
    w.answer(&lost, Some(response("late")), None).await;
    let r = s.tick().await.unwrap();
    assert_eq!(r.stale_results, 1);
    assert!(
        w.executions().await.is_empty(),
        "a stale result starts nothing"
    );
    let resent = w.trigger_jobs().await.remove(2);
    w.answer(&resent, Some(response("ok")), None).await;
    let r = s.tick().await.unwrap();
    assert_eq!(r.fired.len(), 1);
    assert_eq!(
        w.state("f", "poll").await.error,
        None,
        "a good evaluation clears the error"
    );
    w.cleanup().await;
}

/// A polling trigger whose inputs do not render with the result is disabled with an error; fixing the
/// flow enables it again.
pub async fn polling_trigger_whose_inputs_cannot_render_is_disabled_with_an_error(
    repos: &Repositories,
    queue: Arc<dyn Queue>,
) {
    let w = World::new(repos, &queue, utc(2024, 1, 1, 10, 0, 0));
    let trigger = POLL.replace("{{ trigger.body }}", "{{ trigger.nothing }}");
    w.deploy(&flow("f", &trigger)).await;
    let s = w.scheduler("s");
    s.tick().await.unwrap();
    w.at(utc(2024, 1, 1, 10, 1, 0));
    s.tick().await.unwrap();
    let job = w.trigger_jobs().await.remove(0);
    w.answer(&job, Some(response("x")), None).await;
    let r = s.tick().await.unwrap();
    assert_eq!(r.disabled.len(), 1);
    assert!(r.disabled[0].1.contains("nothing"), "{:?}", r.disabled);
    let state = w.state("f", "poll").await;
    assert!(state.disabled);
    assert!(state.error.unwrap().contains("cannot render input 'day'"));
    assert!(w.executions().await.is_empty());

    // Fixing the flow enables it again.
    w.deploy(&flow("f", POLL)).await;
    s.tick().await.unwrap();
    let state = w.state("f", "poll").await;
    assert!(!state.disabled);
    assert_eq!(state.error, None);
    w.cleanup().await;
}

/// Two schedulers share 5 polling triggers: one evaluation per trigger and due date, one execution per
/// started result.
pub async fn two_schedulers_send_one_evaluation_per_due_date(
    repos: &Repositories,
    queue: Arc<dyn Queue>,
) {
    let w = World::new(repos, &queue, utc(2024, 1, 1, 10, 0, 0));
    for i in 0..5 {
        w.deploy(&flow(
            &format!("f{i}"),
            &format!("{POLL}    allowConcurrent: true\n"),
        ))
        .await;
    }
    let (a, b) = (w.scheduler("a"), w.scheduler("b"));
    let mut sent = 0;
    let mut started = 0;
    for _ in 0..20 {
        w.clock.advance(chrono::Duration::seconds(30));
        let (ra, rb) = tokio::join!(a.tick(), b.tick());
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        sent += ra.evaluations.len() + rb.evaluations.len();
        started += ra.fired.len() + rb.fired.len();
        // Play the worker: answer every evaluation sent in this step.
        let jobs = w.trigger_jobs().await;
        for job in &jobs[jobs.len() - ra.evaluations.len() - rb.evaluations.len()..] {
            w.answer(job, Some(response("x")), None).await;
        }
    }
    let jobs = w.trigger_jobs().await;
    assert_eq!(jobs.len(), sent);
    let mut keys: Vec<(String, DateTime<Utc>)> = jobs
        .iter()
        .map(|j| (j.flow_id.clone(), j.evaluation_date))
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(
        keys.len(),
        jobs.len(),
        "one evaluation per trigger and due date"
    );
    assert!(sent >= 5 * 5, "every trigger kept being evaluated ({sent})");
    let executions = w.executions().await;
    assert_eq!(executions.len(), started);
    let mut ids: Vec<&str> = executions.iter().map(|e| e.id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), executions.len());
    w.cleanup().await;
}

/// `stopAfter` on a polling trigger: its execution ending FAILED disables it.
pub async fn polling_stop_after_disables_the_trigger(repos: &Repositories, queue: Arc<dyn Queue>) {
    let w = World::new(repos, &queue, utc(2024, 1, 1, 10, 0, 0));
    w.deploy(&flow("f", &format!("{POLL}    stopAfter: [FAILED]\n")))
        .await;
    let s = w.scheduler("s");
    s.tick().await.unwrap();
    w.at(utc(2024, 1, 1, 10, 1, 0));
    s.tick().await.unwrap();
    let job = w.trigger_jobs().await.remove(0);
    w.answer(&job, Some(response("x")), None).await;
    let id = s.tick().await.unwrap().fired[0].execution_id.clone();
    w.set_execution_state(&id, StateType::Failed).await;
    w.at(utc(2024, 1, 1, 10, 2, 0));
    let r = s.tick().await.unwrap();
    assert!(r.evaluations.is_empty());
    assert_eq!(r.disabled.len(), 1);
    assert!(r.disabled[0].1.starts_with("stopAfter"), "{:?}", r.disabled);
    assert!(w.state("f", "poll").await.disabled);
    w.cleanup().await;
}

/// A polling trigger with a zero interval is disabled with a visible error and never evaluated.
pub async fn polling_trigger_with_a_zero_interval_is_disabled_with_an_error(
    repos: &Repositories,
    queue: Arc<dyn Queue>,
) {
    let w = World::new(repos, &queue, utc(2024, 1, 1, 10, 0, 0));
    w.deploy(&flow("f", &POLL.replace("PT1M", "PT0S"))).await;
    let s = w.scheduler("s");
    let r = s.tick().await.unwrap();
    assert_eq!(r.disabled.len(), 1, "{r:?}");
    let state = w.state("f", "poll").await;
    assert!(state.disabled);
    assert_eq!(
        state.error.as_deref(),
        Some("interval must be longer than zero")
    );
    w.at(utc(2024, 1, 1, 11, 0, 0));
    assert!(s.tick().await.unwrap().evaluations.is_empty());
    assert!(w.trigger_jobs().await.is_empty());
    w.cleanup().await;
}
