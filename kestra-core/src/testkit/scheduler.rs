//! Scheduler scenarios every backend runs: several [`SchedulerService`]s sharing one backend create
//! exactly one execution per cron slot, also when one of them dies between queueing an execution and
//! recording it; and they send one polling-trigger evaluation per due date and start one execution
//! per evaluation result.
//!
//! All take the backend's [`Repositories`] and [`Queue`]; they drive the schedulers step by step with
//! a [`ManualClock`] standing in January 1995 (no other suite's trigger is due then), count the
//! executions through a broadcast subscription to [`Topic::Execution`], work in a tenant of their own
//! and delete their flows and trigger states at the end. They need no executor.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::StreamExt;

use crate::executor::messages::{WorkerJob, WorkerTriggerResult};
use crate::expression::ExpressionEngine;
use crate::flow::parse::parse_flow;
use crate::flow::registry::TaskRegistry;
use crate::model::{Execution, Label, new_id};
use crate::queue::{
    ConsumerGroup, Delivery, DeliveryTag, Envelope, Queue, QueueError, Subscription, Topic,
    UnitOfWork,
};
use crate::repository::{FlowRecord, Repositories};
use crate::scheduler::{ManualClock, SchedulerConfig, SchedulerService};

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

async fn cleanup(repos: &Repositories, tenant: &str, namespace: &str, flows: &[String]) {
    for id in flows {
        let _ = repos.flows.delete(tenant, namespace, id).await;
    }
    if let Ok(states) = repos.triggers.find_all(tenant).await {
        for s in states {
            let _ = repos.triggers.delete(&s.uid()).await;
        }
    }
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
            lock_grace: Duration::from_secs(60),
            ..SchedulerConfig::default()
        },
        clock,
        repos.flows.clone(),
        repos.triggers.clone(),
        repos.executions.clone(),
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
    let b = scheduler("sched-b", &tenant, clock.clone(), repos, queue, registry);

    let mut fired = 0;
    for step in 0..=MINUTES {
        if step > 0 {
            clock.advance(chrono::Duration::minutes(1));
        }
        let (ra, rb) = tokio::join!(a.tick(), b.tick());
        let ra = ra.unwrap_or_else(|e| panic!("scheduler a step {step}: {e}"));
        let rb = rb.unwrap_or_else(|e| panic!("scheduler b step {step}: {e}"));
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
    cleanup(repos, &tenant, namespace, &flows).await;
}

/// A queue that dies on the `crash_at`-th publish: the messages are published, then the call never
/// returns, as a process killed before it could record what it did.
struct CrashingQueue {
    inner: Arc<dyn Queue>,
    publishes: AtomicUsize,
    crash_at: usize,
    crashed: AtomicBool,
    notify: tokio::sync::Notify,
}

#[async_trait]
impl Queue for CrashingQueue {
    async fn publish(&self, messages: Vec<Envelope>) -> Result<(), QueueError> {
        self.inner.publish(messages).await?;
        if self.publishes.fetch_add(1, Ordering::SeqCst) + 1 >= self.crash_at {
            self.crashed.store(true, Ordering::SeqCst);
            self.notify.notify_one();
            std::future::pending::<()>().await;
        }
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
    async fn ack(&self, group: ConsumerGroup, tags: &[DeliveryTag]) -> Result<(), QueueError> {
        self.inner.ack(group, tags).await
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
}

/// Two schedulers share one backend; one of them is killed right after queueing an execution, before
/// recording it in the trigger state. Once its claims expire the survivor takes over and re-queues the
/// killed scheduler's unrecorded slots with the *same* execution ids: every (flow, minute) slot still
/// has exactly one execution id, and at least one id was queued twice (which the executor ignores).
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
    let crashing = Arc::new(CrashingQueue {
        inner: queue.clone(),
        publishes: AtomicUsize::new(0),
        crash_at: 7,
        crashed: AtomicBool::new(false),
        notify: tokio::sync::Notify::new(),
    });
    let victim = Arc::new(scheduler(
        "victim",
        &tenant,
        clock.clone(),
        repos,
        crashing.clone(),
        registry.clone(),
    ));
    let survivor = scheduler("survivor", &tenant, clock.clone(), repos, queue, registry);

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
                () = crashing.notify.notified() => {
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
        crashing.crashed.load(Ordering::SeqCst),
        "the victim scheduler published enough to be killed"
    );
    // The triggers the victim held lag behind by the lease: let the survivor catch up (ALL recovery)
    // without moving the clock.
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
    assert!(
        messages.values().any(|n| *n > 1),
        "the slots the killed scheduler queued but never recorded were queued again (same ids)"
    );
    let labels_ok = executions.iter().all(|e| {
        e.labels
            .contains(&Label::new("system.correlationId", e.id.clone()))
    });
    assert!(labels_ok, "every execution carries its own correlation id");
    cleanup(repos, &tenant, namespace, &flows).await;
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
        let ra = ra.unwrap_or_else(|e| panic!("scheduler a step {step}: {e}"));
        let rb = rb.unwrap_or_else(|e| panic!("scheduler b step {step}: {e}"));
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
                    tenant_id: job.tenant_id.clone(),
                    namespace: job.namespace.clone(),
                    flow_id: job.flow_id.clone(),
                    flow_revision: job.flow_revision,
                    trigger_id: job.trigger.id.clone(),
                    evaluation_date: job.evaluation_date,
                    variables: Some(variables),
                    error: None,
                    worker_id: Some("testkit-worker".into()),
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
    cleanup(repos, &tenant, namespace, &flows).await;
}
