//! Conformance suite for the queue seam: one public async function per contract point of
//! [`crate::queue`], each taking the backend as `Arc<dyn Queue>` (or a [`QueueFactory`] when several
//! consumers should be several connections or instances) and panicking with a clear message on any
//! violation. [`run_all`] runs everything.
//!
//! # Running it against a backend
//!
//! ```ignore
//! #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
//! async fn queue_conformance() {
//!     let queue: Arc<dyn Queue> = Arc::new(MyQueue::connect(url).await?);
//!     kestra_core::testkit::queue::run_all(queue).await;
//! }
//! ```
//!
//! Every function publishes messages whose keys start with a fresh unique prefix and only counts those,
//! so the store does not have to be empty. Messages that a function receives but did not publish
//! (leftovers of an earlier, interrupted run) are acknowledged and ignored, which is why the functions
//! must not run *concurrently* against one shared store: run them one at a time (as [`run_all`] does) or
//! give each its own store. Waits are generous (seconds) so that slow CI databases pass; a correct backend
//! finishes each function in a few seconds.
//!
//! Message payloads are JSON objects `{"seq": n}`; the unit-of-work functions store executor state under
//! the kind [`STATE_KIND`].
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde_json::json;
use tokio::task::JoinHandle;

use crate::model::{Execution, Label, State, StateType, new_id};
use crate::queue::{
    ConsumerGroup, Delivery, DeliveryTag, Envelope, LoadedExecution, Queue, QueueCapabilities,
    QueueError, Recorder, Subscription, Topic, UnitOfWork,
};

/// Builds a new handle on the same store (a new connection, client or instance), so that "several
/// consumers" in the multi-consumer checks are really several. `&|| queue.clone()` is the trivial factory.
pub type QueueFactory = dyn Fn() -> Arc<dyn Queue> + Send + Sync;

/// The executor-state kind the unit-of-work checks read and write.
pub const STATE_KIND: &str = "testkit";

/// Lease used where no redelivery is expected.
const LEASE: Duration = Duration::from_secs(30);
/// How long to wait for something that must happen.
const DEADLINE: Duration = Duration::from_secs(30);
/// Wait passed to one `receive`/`begin` call inside polling loops.
const POLL: Duration = Duration::from_millis(250);

// ---------------------------------------------------------------------------------------------------
// helpers

fn prefix(test: &str) -> String {
    format!("tk-{test}-{}", new_id())
}

fn seq_payload(seq: u64) -> Bytes {
    Bytes::from(serde_json::to_vec(&json!({ "seq": seq })).expect("a JSON object serialises"))
}

fn msg(topic: Topic, key: &str, seq: u64) -> Envelope {
    Envelope::new(topic, key, seq_payload(seq))
}

fn seq_of(d: &Delivery) -> u64 {
    let v: serde_json::Value = d.envelope.decode().unwrap_or_else(|e| {
        panic!(
            "delivery {:?} of key {} does not carry the JSON payload that was published: {e}",
            d.tag, d.envelope.key
        )
    });
    v["seq"].as_u64().unwrap_or_else(|| {
        panic!(
            "delivery {:?} of key {}: payload {v} has no `seq` (payload altered?)",
            d.tag, d.envelope.key
        )
    })
}

fn is_own(d: &Delivery, prefix: &str) -> bool {
    d.envelope.key.starts_with(prefix)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn publish(queue: &dyn Queue, messages: Vec<Envelope>) {
    let n = messages.len();
    queue
        .publish(messages)
        .await
        .unwrap_or_else(|e| panic!("publish of {n} message(s) failed: {e}"));
}

async fn ack(queue: &dyn Queue, group: ConsumerGroup, tags: &[DeliveryTag]) {
    if tags.is_empty() {
        return;
    }
    queue
        .ack(group, tags)
        .await
        .unwrap_or_else(|e| panic!("ack of {} tag(s) for {group} failed: {e}", tags.len()));
}

/// One `receive`; deliveries that this run did not publish are acknowledged and dropped; the returned
/// deliveries are checked for group and topic.
async fn receive_own(
    queue: &dyn Queue,
    group: ConsumerGroup,
    topic: Topic,
    prefix: &str,
    max: usize,
    lease: Duration,
    wait: Duration,
) -> Vec<Delivery> {
    let batch = queue
        .receive(group, topic, max, lease, wait)
        .await
        .unwrap_or_else(|e| panic!("receive({group}, {topic}) failed: {e}"));
    assert!(
        batch.len() <= max,
        "receive({group}, {topic}, max={max}) returned {} deliveries",
        batch.len()
    );
    let (own, foreign): (Vec<Delivery>, Vec<Delivery>) =
        batch.into_iter().partition(|d| is_own(d, prefix));
    let foreign_tags: Vec<DeliveryTag> = foreign.iter().map(|d| d.tag).collect();
    ack(queue, group, &foreign_tags).await;
    for d in &own {
        assert_eq!(
            d.group, group,
            "delivery of key {} received by group {group} says group {}",
            d.envelope.key, d.group
        );
        assert_eq!(
            d.envelope.topic, topic,
            "receive on topic {topic} returned a message of topic {}",
            d.envelope.topic
        );
        assert!(d.attempt >= 1, "attempt starts at 1, got {}", d.attempt);
    }
    own
}

/// Receive until at least `want` own deliveries arrived (not acknowledged), or panic after `timeout`.
#[allow(clippy::too_many_arguments)]
async fn receive_own_until(
    queue: &dyn Queue,
    group: ConsumerGroup,
    topic: Topic,
    prefix: &str,
    want: usize,
    max: usize,
    lease: Duration,
    timeout: Duration,
) -> Vec<Delivery> {
    let start = Instant::now();
    let mut got = Vec::new();
    while got.len() < want {
        let elapsed = start.elapsed();
        assert!(
            elapsed < timeout,
            "waited {elapsed:?} on ({group}, {topic}) for {want} message(s) published by this check, \
             got {}: {:?}",
            got.len(),
            got.iter()
                .map(|d: &Delivery| (&d.envelope.key, seq_of(d)))
                .collect::<Vec<_>>()
        );
        let wait = POLL.min(timeout - elapsed);
        got.extend(receive_own(queue, group, topic, prefix, max, lease, wait).await);
    }
    got
}

/// Keep receiving for `during`; panic if any delivery of this run shows up.
async fn assert_no_own(
    queue: &dyn Queue,
    group: ConsumerGroup,
    topic: Topic,
    prefix: &str,
    during: Duration,
    why: &str,
) {
    let start = Instant::now();
    while start.elapsed() < during {
        let wait = POLL.min(during.saturating_sub(start.elapsed()));
        let own = receive_own(queue, group, topic, prefix, 100, LEASE, wait).await;
        if let Some(d) = own.first() {
            panic!(
                "({group}, {topic}): {why}, but got key {} seq {} (attempt {}) after {:?}",
                d.envelope.key,
                seq_of(d),
                d.attempt,
                start.elapsed()
            );
        }
    }
}

/// `begin` until a unit holds at least one delivery of this run; units with only foreign deliveries
/// are committed (acknowledging them). Returns the unit and this run's deliveries in it.
async fn begin_own(
    queue: &dyn Queue,
    topics: &[Topic],
    prefix: &str,
    timeout: Duration,
) -> (Box<dyn UnitOfWork>, Vec<Delivery>) {
    let start = Instant::now();
    loop {
        let elapsed = start.elapsed();
        assert!(
            elapsed < timeout,
            "begin(executor, {topics:?}) did not hand out the messages published by this check \
             within {elapsed:?}"
        );
        let unit = queue
            .begin(
                ConsumerGroup::Executor,
                topics,
                10,
                POLL.min(timeout - elapsed),
            )
            .await
            .unwrap_or_else(|e| panic!("begin(executor, {topics:?}) failed: {e}"));
        let Some(unit) = unit else { continue };
        assert!(
            !unit.deliveries().is_empty(),
            "begin returned a unit of work without deliveries (it must return None instead)"
        );
        let own: Vec<Delivery> = unit
            .deliveries()
            .iter()
            .filter(|d| is_own(d, prefix))
            .cloned()
            .collect();
        if own.is_empty() {
            unit.commit()
                .await
                .unwrap_or_else(|e| panic!("commit of a unit with leftover messages failed: {e}"));
            continue;
        }
        for d in &own {
            assert_eq!(d.group, ConsumerGroup::Executor, "unit delivery group");
            assert!(
                topics.contains(&d.envelope.topic),
                "begin over {topics:?} claimed a message of topic {}",
                d.envelope.topic
            );
        }
        return (unit, own);
    }
}

/// `begin` for `during`; panic if a unit holds a delivery of this run. Foreign units are committed.
async fn assert_no_own_units(queue: &dyn Queue, topics: &[Topic], prefix: &str, during: Duration) {
    let start = Instant::now();
    while start.elapsed() < during {
        let wait = POLL.min(during.saturating_sub(start.elapsed()));
        let unit = queue
            .begin(ConsumerGroup::Executor, topics, 100, wait)
            .await
            .unwrap_or_else(|e| panic!("begin(executor, {topics:?}) failed: {e}"));
        let Some(unit) = unit else { continue };
        if let Some(d) = unit.deliveries().iter().find(|d| is_own(d, prefix)) {
            panic!(
                "message key {} seq {} on {} was delivered again (attempt {}) although the unit that \
                 consumed it committed",
                d.envelope.key,
                seq_of(d),
                d.envelope.topic,
                d.attempt
            );
        }
        unit.commit()
            .await
            .unwrap_or_else(|e| panic!("commit of a unit with leftover messages failed: {e}"));
    }
}

async fn commit(unit: Box<dyn UnitOfWork>) {
    unit.commit()
        .await
        .unwrap_or_else(|e| panic!("unit of work commit failed: {e}"));
}

async fn join_all(handles: Vec<JoinHandle<()>>) {
    for h in handles {
        if let Err(e) = h.await {
            if e.is_panic() {
                std::panic::resume_unwind(e.into_panic());
            }
            panic!("a consumer task was cancelled: {e}");
        }
    }
}

fn ms(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).expect("a current date is in range")
}

/// An execution with id `id` in `state`, with millisecond timestamps (exact through any backend).
fn execution(id: &str, namespace: &str, state: StateType) -> Execution {
    let start = ms(Utc::now());
    let mut e = Execution::new(namespace, "testkit-flow", 1);
    e.id = id.to_string();
    e.labels.clear();
    e.metadata.original_created_date = start;
    e.state = State::new_at(StateType::Created, start);
    let mut at = start;
    for s in [StateType::Running, state] {
        if s != e.current() {
            at += chrono::Duration::milliseconds(10);
            e.state
                .transition_at(s, at)
                .expect("testkit builds valid transitions");
        }
    }
    e
}

// ---------------------------------------------------------------------------------------------------
// competing receive

/// Publish then receive one message: the payload bytes are exactly the published ones, the delivery
/// names its group and topic, it is the first attempt, it carries its publish time, and once
/// acknowledged it is not delivered again.
pub async fn publish_receive_round_trip(queue: Arc<dyn Queue>) {
    let q = &*queue;
    let p = prefix("round-trip");
    let key = format!("{p}-k");
    let before = Utc::now();
    // Exact bytes: key order, spacing and non-ASCII must survive (no JSON normalisation).
    let body: &[u8] = "{\"b\": 2,  \"a\": \"\u{e9}t\u{e9} \u{2713}\", \"n\": [1, 2.50]}".as_bytes();
    publish(
        q,
        vec![Envelope::new(
            Topic::WorkerJob,
            key.clone(),
            Bytes::copy_from_slice(body),
        )],
    )
    .await;
    let got = receive_own_until(
        q,
        ConsumerGroup::Worker,
        Topic::WorkerJob,
        &p,
        1,
        10,
        LEASE,
        DEADLINE,
    )
    .await;
    assert_eq!(got.len(), 1, "one message published, got {got:?}");
    let d = &got[0];
    assert_eq!(d.envelope.key, key, "key");
    assert_eq!(
        d.envelope.payload.as_ref(),
        body,
        "payload bytes must round-trip exactly"
    );
    assert_eq!(d.envelope.deliver_at, None, "deliver_at was not set");
    assert_eq!(d.attempt, 1, "first delivery has attempt 1");
    assert_published_between(d, before, Utc::now());
    ack(q, ConsumerGroup::Worker, &[d.tag]).await;
    assert_no_own(
        q,
        ConsumerGroup::Worker,
        Topic::WorkerJob,
        &p,
        Duration::from_millis(500),
        "the message was acknowledged",
    )
    .await;
}

/// Many publishers at once (as API clients starting executions are): 24 tasks, each publishing 5
/// times in a row 3 messages of its own key. Every message arrives exactly once and, per key, in
/// publish order - a backend that writes concurrent publishes together (JDBC's group commit) keeps
/// each publish whole and a publisher's publishes in the order they returned.
pub async fn concurrent_publishes(queue: Arc<dyn Queue>) {
    const PUBLISHERS: u64 = 24;
    const ROUNDS: u64 = 5;
    const PER_PUBLISH: u64 = 3;
    let (group, topic) = (ConsumerGroup::Worker, Topic::WorkerJob);
    let p = prefix("concurrent-publishes");
    let mut handles = Vec::new();
    for k in 0..PUBLISHERS {
        let (q, key) = (queue.clone(), format!("{p}-k{k}"));
        handles.push(tokio::spawn(async move {
            for round in 0..ROUNDS {
                let messages = (0..PER_PUBLISH)
                    .map(|i| msg(topic, &key, round * PER_PUBLISH + i))
                    .collect();
                publish(&*q, messages).await;
            }
        }));
    }
    join_all(handles).await;
    let total = (PUBLISHERS * ROUNDS * PER_PUBLISH) as usize;
    // Received and acknowledged batch after batch (a key held unacknowledged is not delivered
    // further), so the order of receipt is the order of processing.
    let mut by_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut received = 0;
    let start = Instant::now();
    while received < total {
        assert!(
            start.elapsed() < DEADLINE,
            "concurrent publishes: {received} of {total} messages received within {DEADLINE:?}"
        );
        let got = receive_own(&*queue, group, topic, &p, 100, LEASE, POLL).await;
        for d in &got {
            by_key
                .entry(d.envelope.key.clone())
                .or_default()
                .push(seq_of(d));
        }
        received += got.len();
        let tags: Vec<DeliveryTag> = got.iter().map(|d| d.tag).collect();
        ack(&*queue, group, &tags).await;
    }
    for k in 0..PUBLISHERS {
        let key = format!("{p}-k{k}");
        let expected: Vec<u64> = (0..ROUNDS * PER_PUBLISH).collect();
        assert_eq!(
            by_key.get(&key),
            Some(&expected),
            "key {key}: every message of its 5 publishes, once each, in publish order"
        );
    }
    assert_eq!(received, total, "each message delivered once");
}

/// Every consumer group that [`Topic::groups`] lists for a topic receives each message of it once;
/// publishing to a broadcast-only topic (no group) succeeds.
pub async fn fan_out_to_every_group(queue: Arc<dyn Queue>) {
    let q = &*queue;
    let p = prefix("fan-out");
    let messages: Vec<Envelope> = Topic::ALL
        .iter()
        .enumerate()
        .map(|(i, t)| msg(*t, &format!("{p}-{t}"), i as u64))
        .collect();
    publish(q, messages).await;
    for (i, topic) in Topic::ALL.into_iter().enumerate() {
        for &group in topic.groups() {
            let got = receive_own_until(q, group, topic, &p, 1, 10, LEASE, DEADLINE).await;
            assert_eq!(
                got.len(),
                1,
                "({group}, {topic}) must get the message exactly once"
            );
            assert_eq!(got[0].envelope.key, format!("{p}-{topic}"));
            assert_eq!(seq_of(&got[0]), i as u64);
            ack(q, group, &[got[0].tag]).await;
        }
    }
    for topic in Topic::ALL {
        for &group in topic.groups() {
            assert_no_own(
                q,
                group,
                topic,
                &p,
                Duration::from_millis(200),
                "each group gets a message once",
            )
            .await;
        }
    }
}

/// [`competing_consumers_with`] with four clones of one handle.
pub async fn competing_consumers(queue: Arc<dyn Queue>) {
    competing_consumers_with(&move || queue.clone()).await;
}

/// Four concurrent consumers of one group share 500 messages over 50 keys: acknowledged promptly,
/// every message is delivered exactly once overall and none is lost.
pub async fn competing_consumers_with(factory: &QueueFactory) {
    const TOTAL: u64 = 500;
    const KEYS: u64 = 50;
    const CONSUMERS: usize = 4;
    let (group, topic) = (ConsumerGroup::Worker, Topic::WorkerJob);
    let publisher = factory();
    let p = prefix("competing");
    let messages: Vec<Envelope> = (0..TOTAL)
        .map(|i| msg(topic, &format!("{p}-k{}", i % KEYS), i))
        .collect();
    for chunk in messages.chunks(100) {
        publish(&*publisher, chunk.to_vec()).await;
    }

    let counts: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
    let distinct = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..CONSUMERS {
        let (q, p, counts, distinct) = (factory(), p.clone(), counts.clone(), distinct.clone());
        handles.push(tokio::spawn(async move {
            while distinct.load(Ordering::SeqCst) < TOTAL as usize {
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "competing consumers: only {} of {TOTAL} messages arrived within 60 s",
                    distinct.load(Ordering::SeqCst)
                );
                let own = receive_own(&*q, group, topic, &p, 10, LEASE, POLL).await;
                for d in &own {
                    let mut c = lock(&counts);
                    let n = c.entry(seq_of(d)).or_default();
                    *n += 1;
                    if *n == 1 {
                        distinct.fetch_add(1, Ordering::SeqCst);
                    }
                }
                let tags: Vec<DeliveryTag> = own.iter().map(|d| d.tag).collect();
                ack(&*q, group, &tags).await;
            }
        }));
    }
    join_all(handles).await;
    assert_no_own(
        &*publisher,
        group,
        topic,
        &p,
        Duration::from_secs(1),
        "all 500 messages were delivered and acknowledged",
    )
    .await;
    let counts = lock(&counts);
    let missing: Vec<u64> = (0..TOTAL).filter(|s| !counts.contains_key(s)).collect();
    let duplicated: Vec<(u64, u32)> = counts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(s, n)| (*s, *n))
        .collect();
    assert!(missing.is_empty(), "messages never delivered: {missing:?}");
    assert!(
        duplicated.is_empty(),
        "messages delivered more than once although acknowledged promptly (seq, times): {duplicated:?}"
    );
}

/// [`per_key_ordering_with`] with three clones of one handle.
pub async fn per_key_ordering(queue: Arc<dyn Queue>) {
    per_key_ordering_with(&move || queue.clone()).await;
}

/// Three concurrent consumers of one group over 10 keys x 20 messages: per key, messages are processed
/// in publish order, and no consumer receives a message while an earlier one of the same key is held
/// unacknowledged by another consumer.
pub async fn per_key_ordering_with(factory: &QueueFactory) {
    const KEYS: u64 = 10;
    const PER_KEY: u64 = 20;
    const CONSUMERS: usize = 3;
    let (group, topic) = (ConsumerGroup::Scheduler, Topic::WorkerTriggerResult);
    let publisher = factory();
    let p = prefix("per-key");
    // Interleaved keys; seq = publish position, so per key the expected order is ascending seq.
    let messages: Vec<Envelope> = (0..KEYS * PER_KEY)
        .map(|i| msg(topic, &format!("{p}-k{}", i % KEYS), i))
        .collect();
    for chunk in messages.chunks(50) {
        publish(&*publisher, chunk.to_vec()).await;
    }

    // key -> (holding consumer, number of held deliveries)
    let in_flight: Arc<Mutex<HashMap<String, (usize, usize)>>> = Arc::default();
    let processed: Arc<Mutex<BTreeMap<String, Vec<u64>>>> = Arc::default();
    let done = Arc::new(AtomicUsize::new(0));
    let total = (KEYS * PER_KEY) as usize;
    let start = Instant::now();
    let mut handles = Vec::new();
    for me in 0..CONSUMERS {
        let (q, p) = (factory(), p.clone());
        let (in_flight, processed, done) = (in_flight.clone(), processed.clone(), done.clone());
        handles.push(tokio::spawn(async move {
            while done.load(Ordering::SeqCst) < total {
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "per-key ordering: only {} of {total} messages processed within 60 s",
                    done.load(Ordering::SeqCst)
                );
                let own = receive_own(&*q, group, topic, &p, 5, LEASE, POLL).await;
                if own.is_empty() {
                    continue;
                }
                {
                    let mut held = lock(&in_flight);
                    for d in &own {
                        let entry = held.entry(d.envelope.key.clone()).or_insert((me, 0));
                        assert_eq!(
                            entry.0,
                            me,
                            "consumer {me} received key {} seq {} while consumer {} still holds an \
                             unacknowledged earlier message of that key",
                            d.envelope.key,
                            seq_of(d),
                            entry.0
                        );
                        entry.1 += 1;
                    }
                }
                // Let the other consumers race for the held keys.
                tokio::time::sleep(Duration::from_millis(3)).await;
                {
                    let mut log = lock(&processed);
                    for d in &own {
                        log.entry(d.envelope.key.clone())
                            .or_default()
                            .push(seq_of(d));
                    }
                }
                // Release before acknowledging: once acked, another consumer may legitimately get the key.
                {
                    let mut held = lock(&in_flight);
                    for d in &own {
                        if let Some(entry) = held.get_mut(&d.envelope.key) {
                            entry.1 -= 1;
                            if entry.1 == 0 {
                                held.remove(&d.envelope.key);
                            }
                        }
                    }
                }
                let tags: Vec<DeliveryTag> = own.iter().map(|d| d.tag).collect();
                ack(&*q, group, &tags).await;
                done.fetch_add(own.len(), Ordering::SeqCst);
            }
        }));
    }
    join_all(handles).await;
    let log = lock(&processed);
    for k in 0..KEYS {
        let key = format!("{p}-k{k}");
        let expected: Vec<u64> = (0..PER_KEY).map(|j| j * KEYS + k).collect();
        assert_eq!(
            log.get(&key),
            Some(&expected),
            "key {key}: processing order must equal publish order, each message once"
        );
    }
}

/// Acknowledgement is final and tags are checked: a delivery whose consumer is gone without
/// acknowledging it is delivered again (to another consumer, with the same key and payload); once
/// acknowledged it is never delivered again; acknowledging unknown tags (or none) is `Ok` and
/// harmless. Every backend: with lease timers the redelivery comes after the 1 s lease, without
/// them when the consumer's handle is dropped (Kafka: it leaves its group).
pub async fn redelivery_after_consumer_dies_with(factory: &QueueFactory) {
    let (group, topic) = (ConsumerGroup::Indexer, Topic::Metric);
    let p = prefix("consumer-dies");
    let key = format!("{p}-k");
    let survivor = factory();
    {
        let doomed = factory();
        publish(&*doomed, vec![msg(topic, &key, 1)]).await;
        let first = receive_own_until(
            &*doomed,
            group,
            topic,
            &p,
            1,
            10,
            Duration::from_secs(1),
            DEADLINE,
        )
        .await;
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].attempt, 1, "first delivery has attempt 1");
        // The consumer dies here: its handle is dropped without acknowledging.
    }
    let again = receive_own_until(&*survivor, group, topic, &p, 1, 10, LEASE, DEADLINE).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].envelope.key, key);
    assert_eq!(
        seq_of(&again[0]),
        1,
        "the redelivery carries the same message"
    );
    ack(&*survivor, group, &[again[0].tag]).await;
    assert_no_own(
        &*survivor,
        group,
        topic,
        &p,
        Duration::from_secs(3),
        "the redelivery was acknowledged (waited past the 1 s lease of the first delivery)",
    )
    .await;

    let q = &*survivor;
    let unknown = [
        DeliveryTag {
            topic,
            partition: 0,
            offset: i64::MAX - 7,
        },
        DeliveryTag {
            topic,
            partition: 9_999,
            offset: 1,
        },
    ];
    q.ack(group, &unknown)
        .await
        .unwrap_or_else(|e| panic!("ack of unknown tags must be Ok (ignored), got {e}"));
    q.ack(group, &[])
        .await
        .unwrap_or_else(|e| panic!("ack of no tags must be Ok, got {e}"));
    // ... and harmless: a message published afterwards is still delivered.
    let key2 = format!("{p}-after");
    publish(q, vec![msg(topic, &key2, 2)]).await;
    let after = receive_own_until(q, group, topic, &p, 1, 10, LEASE, DEADLINE).await;
    assert_eq!(after[0].envelope.key, key2);
    ack(q, group, &[after[0].tag]).await;
}

/// [`redelivery_after_consumer_dies_with`] with clones of one handle.
pub async fn redelivery_after_consumer_dies(queue: Arc<dyn Queue>) {
    redelivery_after_consumer_dies_with(&move || queue.clone()).await;
}

/// Capability [`QueueCapabilities::lease_timers`]: a delivery not acknowledged before its lease
/// ends is delivered again with `attempt` 2 - not before the lease ends, and although its consumer
/// is alive.
pub async fn lease_expiry_and_ack(queue: Arc<dyn Queue>) {
    let q = &*queue;
    let (group, topic) = (ConsumerGroup::Indexer, Topic::Metric);
    let p = prefix("lease");
    let key = format!("{p}-k");
    let lease = Duration::from_secs(2);
    publish(q, vec![msg(topic, &key, 1)]).await;
    let first = receive_own_until(q, group, topic, &p, 1, 10, lease, DEADLINE).await;
    let claimed_at = Instant::now();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].attempt, 1, "first delivery has attempt 1");
    assert_no_own(
        q,
        group,
        topic,
        &p,
        Duration::from_millis(800),
        "the message is leased (2 s) and must not be delivered again before the lease ends",
    )
    .await;
    let second = receive_own_until(q, group, topic, &p, 1, 10, lease, DEADLINE).await;
    assert!(
        claimed_at.elapsed() >= Duration::from_millis(1500),
        "redelivered after {:?}, before the 2 s lease ended",
        claimed_at.elapsed()
    );
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].envelope.key, key);
    assert_eq!(seq_of(&second[0]), 1);
    assert_eq!(
        second[0].attempt, 2,
        "a redelivery after lease expiry has attempt 2"
    );
    ack(q, group, &[second[0].tag]).await;
    assert_no_own(
        q,
        group,
        topic,
        &p,
        Duration::from_secs(3),
        "the redelivery was acknowledged (waited past its lease)",
    )
    .await;
}

/// `publish_and_ack`: the results are delivered and the handled job is acknowledged (not delivered
/// again once its lease has ended, on a backend with lease timers); a refused publish (too large)
/// acknowledges nothing: the job is still held, and handed out again after its lease. Every
/// backend.
pub async fn publish_and_ack_together(queue: Arc<dyn Queue>) {
    let q = &*queue;
    let (group, topic) = (ConsumerGroup::Worker, Topic::WorkerJob);
    let p = prefix("publish-ack");
    let lease = Duration::from_secs(1);
    let timers = q.capabilities().lease_timers;
    publish(q, vec![msg(topic, &format!("{p}-job"), 1)]).await;
    let job = receive_own_until(q, group, topic, &p, 1, 10, lease, DEADLINE).await;
    assert_eq!(job.len(), 1);
    let result = msg(Topic::Metric, &format!("{p}-result"), 2);
    match q.publish_and_ack(vec![result], group, &[job[0].tag]).await {
        Ok(None) => {}
        Ok(Some(e)) => panic!("publish_and_ack published but did not acknowledge: {e}"),
        Err(e) => panic!("publish_and_ack failed: {e}"),
    }
    let got = receive_own_until(
        q,
        ConsumerGroup::Indexer,
        Topic::Metric,
        &p,
        1,
        10,
        LEASE,
        DEADLINE,
    )
    .await;
    assert_eq!(
        seq_of(&got[0]),
        2,
        "the result published with the acknowledgement"
    );
    ack(q, ConsumerGroup::Indexer, &[got[0].tag]).await;
    assert_no_own(
        q,
        group,
        topic,
        &p,
        Duration::from_millis(1500),
        "the job was acknowledged by publish_and_ack (waited past its 1 s lease)",
    )
    .await;

    // A refused publish acknowledges nothing.
    let max = q.capabilities().max_message_bytes;
    publish(q, vec![msg(topic, &format!("{p}-job2"), 3)]).await;
    let job = receive_own_until(q, group, topic, &p, 1, 10, lease, DEADLINE).await;
    let over = Envelope::new(
        Topic::Metric,
        format!("{p}-over"),
        padded_payload(4, max + 1),
    );
    match q.publish_and_ack(vec![over], group, &[job[0].tag]).await {
        Err(QueueError::TooLarge { .. }) => {}
        other => panic!("publish_and_ack of a message over the maximum size: {other:?}"),
    }
    if timers {
        let again = receive_own_until(q, group, topic, &p, 1, 10, LEASE, DEADLINE).await;
        assert_eq!(
            seq_of(&again[0]),
            3,
            "the job whose results were refused is still held: handed out again after its lease"
        );
        ack(q, group, &[again[0].tag]).await;
    } else {
        ack(q, group, &[job[0].tag]).await;
    }
    assert_no_own(
        q,
        ConsumerGroup::Indexer,
        Topic::Metric,
        &p,
        Duration::from_millis(300),
        "the refused publish published nothing",
    )
    .await;
}

/// `extend_lease` reports which deliveries are no longer held: none while held, the acknowledged
/// and unknown ones afterwards, nothing for no tags. Every backend.
pub async fn extend_lease_reports_what_is_no_longer_held(queue: Arc<dyn Queue>) {
    let q = &*queue;
    let (group, topic) = (ConsumerGroup::Indexer, Topic::Metric);
    let p = prefix("extend-report");
    publish(q, vec![msg(topic, &format!("{p}-k"), 1)]).await;
    let first = receive_own_until(q, group, topic, &p, 1, 10, LEASE, DEADLINE).await;
    let tag = first[0].tag;
    let lost = q
        .extend_lease(group, &[tag], LEASE)
        .await
        .unwrap_or_else(|e| panic!("extend_lease failed: {e}"));
    assert!(
        lost.is_empty(),
        "a held delivery is reported lost: {lost:?}"
    );
    ack(q, group, &[tag]).await;
    let unknown = DeliveryTag {
        topic,
        partition: 0,
        offset: i64::MAX - 11,
    };
    let lost = q
        .extend_lease(group, &[tag, unknown], LEASE)
        .await
        .unwrap_or_else(|e| panic!("extend_lease failed: {e}"));
    assert_eq!(
        lost,
        vec![tag, unknown],
        "acknowledged and unknown deliveries are no longer held"
    );
    assert!(
        q.extend_lease(group, &[], LEASE)
            .await
            .unwrap_or_else(|e| panic!("extend_lease of no tags failed: {e}"))
            .is_empty()
    );
}

/// Capability [`QueueCapabilities::lease_timers`]: a delivery whose lease is extended before it
/// ends is not delivered again when the original lease would have ended; `extend_lease` reports
/// acknowledged and unknown tags as no longer held.
pub async fn lease_extension(queue: Arc<dyn Queue>) {
    let q = &*queue;
    let (group, topic) = (ConsumerGroup::Indexer, Topic::Metric);
    let p = prefix("extend");
    let key = format!("{p}-k");
    let lease = Duration::from_secs(1);
    publish(q, vec![msg(topic, &key, 1)]).await;
    let first = receive_own_until(q, group, topic, &p, 1, 10, lease, DEADLINE).await;
    assert_eq!(first.len(), 1);
    let tag = first[0].tag;
    // Keep extending by 1 s, every 400 ms, for 2.4 s: well past the original 1 s lease.
    for _ in 0..6 {
        let lost = q
            .extend_lease(group, &[tag], lease)
            .await
            .unwrap_or_else(|e| panic!("extend_lease failed: {e}"));
        assert!(
            lost.is_empty(),
            "a held delivery is reported lost: {lost:?}"
        );
        assert_no_own(
            q,
            group,
            topic,
            &p,
            Duration::from_millis(400),
            "an extended lease must not be delivered again",
        )
        .await;
    }
    ack(q, group, &[tag]).await;
    let unknown = DeliveryTag {
        topic,
        partition: 0,
        offset: i64::MAX - 11,
    };
    let lost = q
        .extend_lease(group, &[tag, unknown], lease)
        .await
        .unwrap_or_else(|e| panic!("extend_lease failed: {e}"));
    assert_eq!(
        lost,
        vec![tag, unknown],
        "acknowledged and unknown deliveries are no longer held"
    );
    assert!(
        q.extend_lease(group, &[], lease)
            .await
            .unwrap_or_else(|e| panic!("extend_lease of no tags failed: {e}"))
            .is_empty()
    );
}

/// `begin` units for `during`, committing each; returns this run's deliveries they held.
async fn own_in_units(
    queue: &dyn Queue,
    topics: &[Topic],
    prefix: &str,
    during: Duration,
) -> Vec<Delivery> {
    let start = Instant::now();
    let mut got = Vec::new();
    while start.elapsed() < during {
        let wait = POLL.min(during.saturating_sub(start.elapsed()));
        let unit = queue
            .begin(ConsumerGroup::Executor, topics, 100, wait)
            .await
            .unwrap_or_else(|e| panic!("begin(executor, {topics:?}) failed: {e}"));
        let Some(unit) = unit else { continue };
        got.extend(
            unit.deliveries()
                .iter()
                .filter(|d| is_own(d, prefix))
                .cloned(),
        );
        commit(unit).await;
    }
    got
}

/// Messages staged by a unit of work with `deliver_at` 1.5 s ahead (on executor topics) are not
/// handed out before that time and are handed out after; a later message of the same key that is
/// already due is handed out meanwhile (ordering per key counts only due messages).
pub async fn delayed_delivery(queue: Arc<dyn Queue>) {
    let q = &*queue;
    let p = prefix("delayed");
    let key = format!("{p}-k");
    let other = format!("{p}-other");
    publish(q, vec![msg(Topic::Execution, &format!("{p}-src"), 100)]).await;
    let (mut unit, _) = begin_own(q, &UOW_TOPICS, &p, DEADLINE).await;
    let due = Utc::now() + chrono::Duration::milliseconds(1500);
    unit.publish(vec![
        msg(Topic::ExecutionCommand, &key, 0).delayed_until(due),
        msg(Topic::ExecutionCommand, &key, 1),
        msg(Topic::WorkerTaskResult, &other, 2).delayed_until(due),
    ])
    .await
    .unwrap_or_else(|e| panic!("a unit must stage delayed messages on executor topics: {e}"));
    commit(unit).await;
    let topics = [Topic::ExecutionCommand, Topic::WorkerTaskResult];
    // Until shortly before `due`, only seq 1 may arrive (and it must).
    let early_end = due - chrono::Duration::milliseconds(300);
    let window = (early_end - Utc::now()).to_std().unwrap_or_default();
    let early = own_in_units(q, &topics, &p, window).await;
    for d in &early {
        assert_eq!(
            seq_of(d),
            1,
            "key {} seq {} delivered {} ms before its deliver_at",
            d.envelope.key,
            seq_of(d),
            (due - Utc::now()).num_milliseconds()
        );
    }
    assert_eq!(
        early.len(),
        1,
        "the due message (seq 1) must be delivered while an earlier, delayed message of the same key \
         is not due yet"
    );
    let mut late = Vec::new();
    while late.len() < 2 {
        let (unit, own) = begin_own(q, &topics, &p, DEADLINE).await;
        late.extend(own);
        commit(unit).await;
    }
    let now = Utc::now();
    assert!(
        now >= due - chrono::Duration::milliseconds(250),
        "delayed messages delivered at {now}, before their deliver_at {due}"
    );
    let mut seqs: Vec<u64> = late.iter().map(seq_of).collect();
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        vec![0, 2],
        "both delayed messages, once each, after their date"
    );
    for d in &late {
        assert_eq!(
            d.attempt, 1,
            "a delayed message's first delivery is attempt 1"
        );
        // A delayed message became deliverable at its due time, not when it was staged.
        assert_published_between(d, due, now);
    }
    assert_no_own_units(q, &topics, &p, Duration::from_millis(500)).await;
}

/// `d` carries a publish time between `from` and `to` (with 1 s of slack for the clocks of a
/// broker or a database server, which may stamp it).
fn assert_published_between(d: &Delivery, from: DateTime<Utc>, to: DateTime<Utc>) {
    let slack = chrono::Duration::seconds(1);
    let at = d.published_at.unwrap_or_else(|| {
        panic!(
            "delivery of key {} carries no publish time (Delivery::published_at)",
            d.envelope.key
        )
    });
    assert!(
        at >= from - slack && at <= to + slack,
        "key {}: published_at {at} is not between the publish ({from}) and the receive ({to})",
        d.envelope.key
    );
}

/// Stage `messages` in a unit holding a message of this run, then commit; the refusal may come
/// from `publish` or from `commit`. Returns that refusal (`None` if both succeeded).
async fn stage_and_commit(
    queue: &dyn Queue,
    prefix: &str,
    messages: Vec<Envelope>,
    execution: Option<&Execution>,
) -> Option<QueueError> {
    let (mut unit, _) = begin_own(queue, &UOW_TOPICS, prefix, DEADLINE).await;
    if let Some(e) = execution
        && let Err(e) = unit.save_execution(e).await
    {
        return Some(e);
    }
    if let Err(e) = unit.publish(messages).await {
        return Some(e);
    }
    unit.commit().await.err()
}

/// A delayed message is refused with [`QueueError::DelayNotAllowed`] naming its topic and key
/// when it is published directly ([`Queue::publish`], any topic) or staged in a unit on a topic the
/// executor does not consume; the whole call is refused (nothing of it is delivered), and a refused
/// unit applies nothing and gives its messages back.
pub async fn delays_only_in_units_on_executor_topics(queue: Arc<dyn Queue>) {
    let q = &*queue;
    let p = prefix("delay-refused");
    let later = Utc::now() + chrono::Duration::seconds(1);
    for topic in [Topic::WorkerJob, Topic::ExecutionCommand] {
        let key = format!("{p}-{topic}");
        let refused = q
            .publish(vec![
                msg(Topic::WorkerJob, &format!("{p}-ok"), 1),
                msg(topic, &key, 2).delayed_until(later),
            ])
            .await;
        match refused {
            Err(QueueError::DelayNotAllowed {
                topic: t, key: k, ..
            }) => {
                assert_eq!(
                    (t, k),
                    (topic, key),
                    "the refusal names the delayed message"
                );
            }
            other => panic!(
                "Queue::publish of a delayed message on {topic} must be refused with \
                 DelayNotAllowed (delays are staged in a unit of work), got {other:?}"
            ),
        }
    }
    assert_no_own(
        q,
        ConsumerGroup::Worker,
        Topic::WorkerJob,
        &p,
        Duration::from_millis(500),
        "a publish refused for its delayed message publishes nothing",
    )
    .await;

    publish(q, vec![msg(Topic::Execution, &format!("{p}-src"), 3)]).await;
    let key = format!("{p}-job");
    let refused = stage_and_commit(
        q,
        &p,
        vec![msg(Topic::WorkerJob, &key, 4).delayed_until(later)],
        None,
    )
    .await;
    match refused {
        Some(QueueError::DelayNotAllowed { topic, key: k, .. }) => {
            assert_eq!((topic, k), (Topic::WorkerJob, key));
        }
        other => panic!(
            "a unit staging a delayed message on worker_job (not an executor topic) must be \
             refused with DelayNotAllowed, got {other:?}"
        ),
    }
    // The refused unit's message comes back; nothing it staged was published.
    let (unit, own) = begin_own(q, &UOW_TOPICS, &p, DEADLINE).await;
    assert_eq!(own.iter().map(seq_of).collect::<Vec<_>>(), vec![3]);
    commit(unit).await;
    assert_no_own(
        q,
        ConsumerGroup::Worker,
        Topic::WorkerJob,
        &p,
        Duration::from_millis(2000),
        "the refused unit's staged message is never published (waited past its date)",
    )
    .await;
}

/// A JSON payload `{"seq":n,"pad":"xx..."}` of exactly `size` bytes.
fn padded_payload(seq: u64, size: usize) -> Bytes {
    let base = format!("{{\"seq\":{seq},\"pad\":\"\"}}");
    let pad = "x".repeat(size.saturating_sub(base.len()));
    let body = format!("{{\"seq\":{seq},\"pad\":\"{pad}\"}}");
    assert_eq!(body.len(), size, "payload of {size} bytes");
    Bytes::from(body)
}

/// Size, against the backend's [`QueueCapabilities::max_message_bytes`]: a payload of exactly the
/// maximum is delivered intact; one byte more is refused with [`QueueError::TooLarge`] naming the
/// topic, key, size and maximum, and nothing of that publish is delivered; a unit that stages a
/// message over the maximum, or saves an execution whose document is over it, is refused with
/// `TooLarge` (at staging or at commit), applies nothing and gives its messages back.
pub async fn too_large_is_refused(queue: Arc<dyn Queue>) {
    let q = &*queue;
    let max = q.capabilities().max_message_bytes;
    let (group, topic) = (ConsumerGroup::Indexer, Topic::Log);
    let p = prefix("too-large");
    let fits = format!("{p}-fits");
    publish(
        q,
        vec![Envelope::new(topic, fits.clone(), padded_payload(1, max))],
    )
    .await;
    let got = receive_own_until(q, group, topic, &p, 1, 10, LEASE, DEADLINE).await;
    assert_eq!(got[0].envelope.key, fits);
    assert_eq!(
        got[0].envelope.payload.len(),
        max,
        "a message of exactly max_message_bytes is delivered intact"
    );
    ack(q, group, &[got[0].tag]).await;

    let over = format!("{p}-over");
    let refused = q
        .publish(vec![
            msg(topic, &format!("{p}-small"), 2),
            Envelope::new(topic, over.clone(), padded_payload(3, max + 1)),
        ])
        .await;
    match refused {
        Err(QueueError::TooLarge {
            topic: t,
            key,
            size,
            max: m,
        }) => {
            assert_eq!((t, key, size, m), (topic, over.clone(), max + 1, max));
        }
        other => panic!(
            "a message of max_message_bytes + 1 = {} bytes must be refused with TooLarge, got \
             {other:?}",
            max + 1
        ),
    }
    assert_no_own(
        q,
        group,
        topic,
        &p,
        Duration::from_millis(500),
        "a publish refused for one oversized message publishes nothing",
    )
    .await;

    // In a unit: an oversized staged message, then an oversized execution.
    publish(q, vec![msg(Topic::Execution, &format!("{p}-src"), 4)]).await;
    let job = format!("{p}-job");
    let refused = stage_and_commit(
        q,
        &p,
        vec![Envelope::new(
            Topic::WorkerJob,
            job.clone(),
            padded_payload(5, max + 1),
        )],
        None,
    )
    .await;
    match refused {
        Some(QueueError::TooLarge { topic, key, .. }) => {
            assert_eq!((topic, key), (Topic::WorkerJob, job));
        }
        other => panic!(
            "a unit staging an oversized message must be refused with TooLarge, got {other:?}"
        ),
    }
    // Keyed like the claimed message: a unit saves only executions it claimed (point 11).
    let id = format!("{p}-src");
    let mut big = execution(&id, "testkit.too-large", StateType::Running);
    big.inputs
        .insert("pad".into(), serde_json::Value::String("x".repeat(max)));
    let refused = stage_and_commit(q, &p, Vec::new(), Some(&big)).await;
    match refused {
        Some(QueueError::TooLarge { topic, key, .. }) => {
            assert_eq!((topic, key), (Topic::Execution, id.clone()));
        }
        other => panic!(
            "a unit saving an execution whose document is over max_message_bytes must be refused \
             with TooLarge(execution, its id), got {other:?}"
        ),
    }
    let (mut unit, own) = begin_own(q, &UOW_TOPICS, &p, DEADLINE).await;
    assert_eq!(
        own.iter().map(seq_of).collect::<Vec<_>>(),
        vec![4],
        "the refused units' message comes back"
    );
    let loaded = unit
        .load_execution(&id)
        .await
        .unwrap_or_else(|e| panic!("load_execution failed: {e}"));
    assert_eq!(loaded, None, "the refused execution was not saved");
    commit(unit).await;
    assert_no_own(
        q,
        ConsumerGroup::Worker,
        Topic::WorkerJob,
        &p,
        Duration::from_millis(500),
        "the refused unit's oversized message is never published",
    )
    .await;
}

/// Tags name their topic: a message on [`Topic::Execution`] and one on [`Topic::ExecutionCommand`],
/// received by the executor group, have different tags that carry their topics; acknowledging the
/// first leaves the second held (not acknowledged with it), and then it is acknowledged on its own.
/// A queue whose tags are (partition, offset) only - offsets counted per topic, as on Kafka -
/// fails here.
pub async fn tags_of_two_topics(queue: Arc<dyn Queue>) {
    let q = &*queue;
    let group = ConsumerGroup::Executor;
    let p = prefix("two-topics");
    let (a, b) = (Topic::Execution, Topic::ExecutionCommand);
    publish(
        q,
        vec![msg(a, &format!("{p}-a"), 1), msg(b, &format!("{p}-b"), 2)],
    )
    .await;
    let got_a = receive_own_until(q, group, a, &p, 1, 10, LEASE, DEADLINE).await;
    let got_b = receive_own_until(q, group, b, &p, 1, 10, LEASE, DEADLINE).await;
    let (tag_a, tag_b) = (got_a[0].tag, got_b[0].tag);
    assert_ne!(
        tag_a, tag_b,
        "tags of two topics collide: a tag must name its topic"
    );
    assert_eq!(
        (tag_a.topic, tag_b.topic),
        (a, b),
        "a delivery's tag names the topic it came from"
    );
    ack(q, group, &[tag_a]).await;
    let lost = q
        .extend_lease(group, &[tag_b], LEASE)
        .await
        .unwrap_or_else(|e| panic!("extend_lease failed: {e}"));
    assert!(
        lost.is_empty(),
        "acknowledging the {a} delivery also released the {b} one: tags of two topics collide"
    );
    ack(q, group, &[tag_b]).await;
    let lost = q
        .extend_lease(group, &[tag_a, tag_b], LEASE)
        .await
        .unwrap_or_else(|e| panic!("extend_lease failed: {e}"));
    assert_eq!(lost, vec![tag_a, tag_b], "both are acknowledged now");
}

/// Contract point 12: [`Queue::receive_recorded`] claims and publishes the records in one step.
/// The records of claimed messages are published (and received by the groups of their topic); a
/// record refused as too large, or a recorder that fails, leaves the message unclaimed (another
/// receive gets it at once, not after a lease) and publishes no record.
pub async fn recorded_receive(queue: Arc<dyn Queue>) {
    let q = &*queue;
    let (group, topic) = (ConsumerGroup::Worker, Topic::WorkerJob);
    let p = prefix("recorded");
    let record_of = |d: &Delivery| {
        Envelope::new(
            Topic::Liveness,
            d.envelope.key.clone(),
            d.envelope.payload.clone(),
        )
    };
    // Foreign deliveries (other tests' jobs on a shared store) are recorded too, then acknowledged.
    let recorder = move |ds: &[Delivery]| Ok(ds.iter().map(record_of).collect());
    publish(q, vec![msg(topic, &format!("{p}-a"), 1)]).await;
    let start = Instant::now();
    let taken = loop {
        assert!(
            start.elapsed() < DEADLINE,
            "receive_recorded never returned the published job"
        );
        let got = q
            .receive_recorded(group, topic, 10, LEASE, POLL, &recorder)
            .await
            .unwrap_or_else(|e| panic!("receive_recorded({group}, {topic}) failed: {e}"));
        let (own, foreign): (Vec<Delivery>, Vec<Delivery>) =
            got.into_iter().partition(|d| is_own(d, &p));
        ack(q, group, &foreign.iter().map(|d| d.tag).collect::<Vec<_>>()).await;
        if !own.is_empty() {
            break own;
        }
    };
    assert_eq!(taken.len(), 1);
    let records = receive_own_until(
        q,
        ConsumerGroup::Executor,
        Topic::Liveness,
        &p,
        1,
        10,
        LEASE,
        DEADLINE,
    )
    .await;
    assert_eq!(
        records[0].envelope.key, taken[0].envelope.key,
        "the record of the claimed job"
    );
    assert_eq!(seq_of(&records[0]), 1);
    ack(q, ConsumerGroup::Executor, &[records[0].tag]).await;
    let shown = receive_own_until(
        q,
        ConsumerGroup::Indexer,
        Topic::Liveness,
        &p,
        1,
        10,
        LEASE,
        DEADLINE,
    )
    .await;
    ack(q, ConsumerGroup::Indexer, &[shown[0].tag]).await;
    ack(q, group, &[taken[0].tag]).await;

    // Refused records: the job stays unclaimed and no record is published.
    let max = q.capabilities().max_message_bytes;
    let oversized = move |ds: &[Delivery]| {
        Ok(ds
            .iter()
            .map(|d| Envelope::new(Topic::Liveness, d.envelope.key.clone(), vec![b'x'; max + 1]))
            .collect())
    };
    let failing = |_: &[Delivery]| {
        Err(QueueError::backend(
            "record",
            std::io::Error::other("the recorder failed"),
        ))
    };
    for (seq, what, recorder) in [
        (2, "a record over the maximum size", &oversized as &Recorder),
        (3, "a failing recorder", &failing as &Recorder),
    ] {
        publish(q, vec![msg(topic, &format!("{p}-{seq}"), seq)]).await;
        let start = Instant::now();
        let refused = loop {
            assert!(
                start.elapsed() < DEADLINE,
                "receive_recorded with {what} never refused"
            );
            match q
                .receive_recorded(group, topic, 10, LEASE, POLL, recorder)
                .await
            {
                // Nothing due yet on a busy store: try again.
                Ok(got) if got.is_empty() => {}
                Ok(got) => panic!(
                    "receive_recorded claimed {} job(s) although {what} was refused",
                    got.len()
                ),
                Err(e) => break e,
            }
        };
        if seq == 2 {
            assert!(
                matches!(
                    refused,
                    QueueError::TooLarge {
                        topic: Topic::Liveness,
                        ..
                    }
                ),
                "an oversized record is refused as TooLarge on its topic, got: {refused}"
            );
        }
        // Not claimed: a plain receive gets it at once, long before its lease would have ended.
        let again = receive_own_until(q, group, topic, &p, 1, 10, LEASE, LEASE / 3).await;
        assert_eq!(
            seq_of(&again[0]),
            seq,
            "the job refused with {what} is still there"
        );
        ack(q, group, &[again[0].tag]).await;
    }
    assert_no_own(
        q,
        ConsumerGroup::Executor,
        Topic::Liveness,
        &p,
        POLL,
        "a refused recorded receive published no record",
    )
    .await;
}

/// A malformed payload is received, dead-lettered, never delivered again, and the next message of the
/// same key is delivered afterwards.
pub async fn dead_letter(queue: Arc<dyn Queue>) {
    let q = &*queue;
    let (group, topic) = (ConsumerGroup::Scheduler, Topic::Trigger);
    let p = prefix("dead-letter");
    let key = format!("{p}-k");
    publish(
        q,
        vec![
            Envelope::new(topic, key.clone(), &b"{not json"[..]),
            msg(topic, &key, 1),
        ],
    )
    .await;
    let bad = receive_own_until(q, group, topic, &p, 1, 1, Duration::from_secs(1), DEADLINE).await;
    assert_eq!(bad.len(), 1);
    assert_eq!(
        bad[0].envelope.payload.as_ref(),
        b"{not json",
        "per-key order: the malformed message (published first) comes first"
    );
    assert!(
        bad[0].envelope.decode::<serde_json::Value>().is_err(),
        "the malformed payload does not decode"
    );
    q.dead_letter(&bad[0], "testkit: malformed payload")
        .await
        .unwrap_or_else(|e| panic!("dead_letter failed: {e}"));
    let good = receive_own_until(q, group, topic, &p, 1, 1, LEASE, DEADLINE).await;
    assert_eq!(
        seq_of(&good[0]),
        1,
        "after the dead letter, the next message of the key"
    );
    ack(q, group, &[good[0].tag]).await;
    assert_no_own(
        q,
        group,
        topic,
        &p,
        Duration::from_secs(3),
        "the malformed message was dead-lettered (waited past its 1 s lease)",
    )
    .await;
}

/// [`receive`](Queue::receive) waits up to `wait` and returns an empty batch when nothing is due, and
/// wakes up promptly (well under `wait`) when a message is published meanwhile.
pub async fn receive_wait_and_wakeup(queue: Arc<dyn Queue>) {
    let (group, topic) = (ConsumerGroup::Indexer, Topic::Metric);
    drain(&*queue, group, topic).await;
    let start = Instant::now();
    let batch = queue
        .receive(group, topic, 10, LEASE, Duration::from_secs(1))
        .await
        .unwrap_or_else(|e| panic!("receive failed: {e}"));
    let elapsed = start.elapsed();
    assert!(
        batch.is_empty(),
        "nothing was due but receive returned {batch:?}"
    );
    assert!(
        elapsed < Duration::from_secs(3),
        "receive with wait 1 s returned after {elapsed:?}"
    );

    let p = prefix("receive-wakeup");
    let key = format!("{p}-k");
    let publisher = queue.clone();
    let k = key.clone();
    let pub_task = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        publish(&*publisher, vec![msg(topic, &k, 1)]).await;
    });
    let start = Instant::now();
    let mut got = Vec::new();
    while got.is_empty() && start.elapsed() < Duration::from_secs(5) {
        let wait = Duration::from_secs(5).saturating_sub(start.elapsed());
        got = receive_own(&*queue, group, topic, &p, 10, LEASE, wait).await;
    }
    let elapsed = start.elapsed();
    join_all(vec![pub_task]).await;
    assert_eq!(got.len(), 1, "the message published meanwhile is received");
    assert!(
        elapsed < Duration::from_secs(2),
        "receive(wait 5 s) returned {elapsed:?} after start for a message published after 200 ms: \
         wake-ups must not wait for the full timeout"
    );
    ack(&*queue, group, &[got[0].tag]).await;
}

/// Receive and acknowledge whatever is due on (group, topic), so that timing checks start quiescent.
async fn drain(queue: &dyn Queue, group: ConsumerGroup, topic: Topic) {
    for _ in 0..100 {
        let batch = queue
            .receive(group, topic, 100, LEASE, Duration::from_millis(100))
            .await
            .unwrap_or_else(|e| panic!("receive({group}, {topic}) failed: {e}"));
        if batch.is_empty() {
            return;
        }
        let tags: Vec<DeliveryTag> = batch.iter().map(|d| d.tag).collect();
        ack(queue, group, &tags).await;
    }
    panic!("({group}, {topic}) still hands out leftover messages after 100 drained batches");
}

// ---------------------------------------------------------------------------------------------------
// broadcast

/// [`broadcast_with`] with two clones of one handle.
pub async fn broadcast(queue: Arc<dyn Queue>) {
    broadcast_with(&move || queue.clone()).await;
}

/// Two subscribers (on two handles) both get every message published after they subscribed, in
/// order per key; a message published before subscribing is not replayed.
pub async fn broadcast_with(factory: &QueueFactory) {
    let topic = Topic::ExecutionKilled;
    let publisher = factory();
    let p = prefix("broadcast");
    let (k1, k2) = (format!("{p}-a"), format!("{p}-b"));
    publish(&*publisher, vec![msg(topic, &k1, 0)]).await;
    let (sa, sb) = (factory(), factory());
    let mut subs = Vec::new();
    for s in [&sa, &sb] {
        subs.push(
            s.subscribe(topic)
                .await
                .unwrap_or_else(|e| panic!("subscribe({topic}) failed: {e}")),
        );
    }
    publish(
        &*publisher,
        vec![msg(topic, &k1, 1), msg(topic, &k2, 2), msg(topic, &k1, 3)],
    )
    .await;
    publish(&*publisher, vec![msg(topic, &k2, 4), msg(topic, &k1, 5)]).await;
    for (i, mut sub) in subs.into_iter().enumerate() {
        let mut got: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        let mut n = 0;
        while n < 5 {
            let next = tokio::time::timeout(DEADLINE, sub.next())
                .await
                .unwrap_or_else(|_| {
                    panic!("subscriber {i}: only {n} of 5 broadcast messages within {DEADLINE:?}: {got:?}")
                })
                .unwrap_or_else(|| panic!("subscriber {i}: subscription ended after {n} messages"))
                .unwrap_or_else(|e| panic!("subscriber {i}: subscription error: {e}"));
            assert_eq!(
                next.topic, topic,
                "subscription to {topic} yielded another topic"
            );
            if !next.key.starts_with(&p) {
                continue;
            }
            let v: serde_json::Value = next
                .decode()
                .expect("broadcast payload is the published JSON");
            let seq = v["seq"].as_u64().expect("broadcast payload has seq");
            assert_ne!(
                seq, 0,
                "subscriber {i} got a message published before it subscribed (no replay allowed)"
            );
            got.entry(next.key.clone()).or_default().push(seq);
            n += 1;
        }
        assert_eq!(
            got.get(&k1),
            Some(&vec![1, 3, 5]),
            "subscriber {i}, key a, in order"
        );
        assert_eq!(
            got.get(&k2),
            Some(&vec![2, 4]),
            "subscriber {i}, key b, in order"
        );
    }
}

/// The key of the next message of `sub` whose key starts with `prefix`, or `None` after `wait`.
async fn next_own(sub: &mut Subscription, prefix: &str, wait: Duration) -> Option<String> {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        let next = tokio::time::timeout(left, sub.next())
            .await
            .ok()?
            .unwrap_or_else(|| panic!("subscription ended"))
            .unwrap_or_else(|e| panic!("subscription failed: {e}"));
        if next.key.starts_with(prefix) {
            return Some(next.key);
        }
    }
}

/// `subscribe` serves exactly the topics that are [`Topic::broadcast`]: the others are refused
/// with [`QueueError::NotBroadcast`] naming the topic (their messages go to consumer groups only).
pub async fn subscribe_only_broadcast_topics(queue: Arc<dyn Queue>) {
    for topic in Topic::ALL {
        match queue.subscribe(topic).await {
            Ok(_) => assert!(
                topic.broadcast(),
                "subscribe({topic}) accepted a topic that is not broadcast"
            ),
            Err(QueueError::NotBroadcast { topic: refused }) => {
                assert!(
                    !topic.broadcast(),
                    "subscribe({topic}) refused a broadcast topic"
                );
                assert_eq!(refused, topic, "the refusal names the topic asked for");
            }
            Err(e) => panic!("subscribe({topic}) failed: {e}"),
        }
    }
}

/// A broadcast message staged in a unit of work that commits after a later message of the same
/// topic was published (and possibly already seen) is still delivered, once, to a subscriber
/// (JDBC: its row id is below one already read, a gap the subscriber must look back into).
pub async fn broadcast_committed_late(queue: Arc<dyn Queue>) {
    let q = &*queue;
    let topic = Topic::ExecutionKilled;
    let p = prefix("broadcast-late");
    let (early, late) = (format!("{p}-early"), format!("{p}-late"));
    let mut sub = q
        .subscribe(topic)
        .await
        .unwrap_or_else(|e| panic!("subscribe({topic}) failed: {e}"));
    let id = format!("{p}-exec");
    publish(q, vec![msg(Topic::Execution, &id, 1)]).await;
    let (mut unit, _) = begin_own(q, &UOW_TOPICS, &p, DEADLINE).await;
    unit.publish(vec![msg(topic, &early, 1)])
        .await
        .unwrap_or_else(|e| panic!("unit publish of a broadcast message failed: {e}"));
    // Published while the unit is open (on a single-writer backend this waits for its commit).
    let publisher = queue.clone();
    let direct = {
        let late = late.clone();
        tokio::spawn(async move {
            publisher
                .publish(vec![msg(topic, &late, 2)])
                .await
                .map_err(|e| e.to_string())
        })
    };
    let mut got: Vec<String> = Vec::new();
    // Give the direct publish time to commit and be seen first where it can.
    if let Some(key) = next_own(&mut sub, &p, Duration::from_millis(500)).await {
        got.push(key);
    }
    commit(unit).await;
    direct
        .await
        .expect("publish task")
        .unwrap_or_else(|e| panic!("publish failed: {e}"));
    while got.len() < 2 {
        match next_own(&mut sub, &p, DEADLINE).await {
            Some(key) => got.push(key),
            None => panic!(
                "only {got:?} of the two broadcast messages within {DEADLINE:?}: the one \
                 committed late by a unit of work was lost"
            ),
        }
    }
    // Past the JDBC subscribers' look-back period for gaps: nothing is delivered twice.
    if let Some(key) = next_own(&mut sub, &p, Duration::from_millis(300)).await {
        got.push(key);
    }
    got.sort();
    assert_eq!(
        got,
        vec![early, late],
        "each broadcast message delivered exactly once"
    );
}

// ---------------------------------------------------------------------------------------------------
// unit of work

const UOW_TOPICS: [Topic; 2] = [Topic::Execution, Topic::ExecutionCommand];

/// A unit of work claims deliveries over several topics; `load_execution` and `load_state` return
/// `None` for unknown ids; what it stages (execution, state, messages) is visible after `commit` (in
/// the next unit and to receivers), and the consumed deliveries are not delivered again. Saving a state
/// to `None` deletes it.
pub async fn unit_of_work_commit(queue: Arc<dyn Queue>) {
    let q = &*queue;
    let p = prefix("uow-commit");
    let id = format!("{p}-exec");
    let ns = "testkit.uow";
    let state_value = json!({ "slots": 1, "by": id });
    publish(q, vec![msg(Topic::Execution, &id, 1)]).await;

    let (mut unit, own) = begin_own(q, &UOW_TOPICS, &p, DEADLINE).await;
    assert_eq!(own.len(), 1, "one message published: {own:?}");
    assert_eq!(own[0].envelope.topic, Topic::Execution);
    assert_eq!(seq_of(&own[0]), 1);
    assert_eq!(own[0].attempt, 1);
    let loaded = unit
        .load_execution(&id)
        .await
        .unwrap_or_else(|e| panic!("load_execution failed: {e}"));
    assert_eq!(loaded, None, "load_execution of an unknown id is None");
    let st = unit
        .load_state(STATE_KIND, &id)
        .await
        .unwrap_or_else(|e| panic!("load_state failed: {e}"));
    assert_eq!(st, None, "load_state of an unknown key is None");
    let running = execution(&id, ns, StateType::Running);
    unit.save_execution(&running)
        .await
        .unwrap_or_else(|e| panic!("save_execution failed: {e}"));
    unit.save_state(STATE_KIND, &id, Some(&state_value))
        .await
        .unwrap_or_else(|e| panic!("save_state failed: {e}"));
    unit.publish(vec![
        msg(Topic::WorkerJob, &id, 10),
        msg(Topic::ExecutionCommand, &id, 2),
    ])
    .await
    .unwrap_or_else(|e| panic!("unit publish failed: {e}"));
    commit(unit).await;

    // The staged worker job is receivable.
    let jobs = receive_own_until(
        q,
        ConsumerGroup::Worker,
        Topic::WorkerJob,
        &p,
        1,
        10,
        LEASE,
        DEADLINE,
    )
    .await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(seq_of(&jobs[0]), 10);
    ack(q, ConsumerGroup::Worker, &[jobs[0].tag]).await;

    // The next unit gets the staged command (second topic), not the consumed message, and sees the
    // committed execution and state.
    let (mut unit, own) = begin_own(q, &UOW_TOPICS, &p, DEADLINE).await;
    let seqs: Vec<(Topic, u64)> = own.iter().map(|d| (d.envelope.topic, seq_of(d))).collect();
    assert_eq!(
        seqs,
        vec![(Topic::ExecutionCommand, 2)],
        "the next unit holds exactly the committed command (the consumed message is gone)"
    );
    let loaded = unit
        .load_execution(&id)
        .await
        .unwrap_or_else(|e| panic!("load_execution failed: {e}"));
    assert_eq!(
        loaded.as_ref(),
        Some(&running),
        "the committed execution loads unchanged"
    );
    let st = unit
        .load_state(STATE_KIND, &id)
        .await
        .unwrap_or_else(|e| panic!("load_state failed: {e}"));
    assert_eq!(
        st.as_ref(),
        Some(&state_value),
        "the committed state value loads"
    );
    let success = {
        let mut e = running.clone();
        let at = e
            .state
            .histories()
            .last()
            .map(|h| h.date)
            .expect("a state has a history");
        e.state
            .transition_at(StateType::Success, at + chrono::Duration::milliseconds(10))
            .expect("RUNNING -> SUCCESS");
        e
    };
    unit.save_execution(&success)
        .await
        .unwrap_or_else(|e| panic!("save_execution failed: {e}"));
    unit.save_state(STATE_KIND, &id, None)
        .await
        .unwrap_or_else(|e| panic!("save_state(None) failed: {e}"));
    commit(unit).await;

    publish(q, vec![msg(Topic::Execution, &id, 3)]).await;
    let (mut unit, own) = begin_own(q, &UOW_TOPICS, &p, DEADLINE).await;
    let seqs: Vec<u64> = own.iter().map(seq_of).collect();
    assert_eq!(seqs, vec![3]);
    let loaded = unit
        .load_execution(&id)
        .await
        .unwrap_or_else(|e| panic!("load_execution failed: {e}"));
    assert_eq!(
        loaded.as_ref(),
        Some(&success),
        "the second commit replaced the execution"
    );
    let st = unit
        .load_state(STATE_KIND, &id)
        .await
        .unwrap_or_else(|e| panic!("load_state failed: {e}"));
    assert_eq!(st, None, "save_state(None) deleted the entry");
    commit(unit).await;
    assert_no_own_units(q, &UOW_TOPICS, &p, Duration::from_secs(1)).await;
}

/// A unit holding the two messages of this run (a unit that got one is dropped: both come back).
async fn both_in_one_unit(q: &dyn Queue, p: &str) -> Box<dyn UnitOfWork> {
    let start = Instant::now();
    loop {
        let (unit, own) = begin_own(q, &UOW_TOPICS, p, DEADLINE).await;
        if own.len() == 2 {
            return unit;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "no unit held both messages of this run within {DEADLINE:?}"
        );
        drop(unit);
    }
}

/// [`UnitOfWork::prefetch_executions`] is a hint: after it, a stored execution loads as stored
/// and an unknown one as `None`, as without it; an id that is not the key of a claimed message is
/// refused with [`QueueError::NotClaimed`]; an execution prefetched as unknown and saved in the
/// unit is stored at commit. Prefetched with a stamp: a load given the stamp of the stored
/// execution answers `Unchanged` (or loads it), and given an older stamp never takes it for the
/// stored execution - it loads the stored one, or answers `Unchanged` and the unit is refused at
/// commit ([`QueueError::Fenced`], the deferred unit of [`UnitOfWork::load_execution_unless`]).
pub async fn unit_of_work_prefetch(queue: Arc<dyn Queue>) {
    let q = &*queue;
    let p = prefix("uow-prefetch");
    let (stored_id, new_id) = (format!("{p}-stored"), format!("{p}-new"));
    let ns = "testkit.uow";
    publish(q, vec![msg(Topic::Execution, &stored_id, 1)]).await;
    let (mut unit, _) = begin_own(q, &UOW_TOPICS, &p, DEADLINE).await;
    let stored = execution(&stored_id, ns, StateType::Running);
    let old_stamp = unit
        .save_execution_stamped(&mut stored.clone())
        .await
        .unwrap_or_else(|e| panic!("save_execution failed: {e}"));
    commit(unit).await;

    publish(
        q,
        vec![
            msg(Topic::Execution, &stored_id, 2),
            msg(Topic::Execution, &new_id, 3),
        ],
    )
    .await;
    let mut unit = both_in_one_unit(q, &p).await;
    let foreign = format!("{p}-not-claimed");
    let refused = unit
        .prefetch_executions(&[(stored_id.clone(), None), (foreign.clone(), None)])
        .await;
    assert!(
        matches!(refused, Err(QueueError::NotClaimed { .. })),
        "prefetching an execution whose key no claimed message has is refused: {refused:?}"
    );
    drop(unit);
    let mut unit = both_in_one_unit(q, &p).await;
    unit.prefetch_executions(&[(stored_id.clone(), None), (new_id.clone(), None)])
        .await
        .unwrap_or_else(|e| panic!("prefetch_executions failed: {e}"));
    let loaded = unit
        .load_execution(&stored_id)
        .await
        .unwrap_or_else(|e| panic!("load_execution failed: {e}"));
    assert_eq!(
        loaded.as_ref(),
        Some(&stored),
        "a prefetched stored execution loads as stored"
    );
    let loaded = unit
        .load_execution(&new_id)
        .await
        .unwrap_or_else(|e| panic!("load_execution failed: {e}"));
    assert_eq!(loaded, None, "a prefetched unknown execution loads as None");
    let created = execution(&new_id, ns, StateType::Running);
    unit.save_execution(&created)
        .await
        .unwrap_or_else(|e| panic!("save_execution failed: {e}"));
    // The stored execution changes: the stamp of its first save is stale from now on.
    let mut changed = stored.clone();
    changed.labels.push(Label::new("saved", "twice"));
    let stamp = unit
        .save_execution_stamped(&mut changed.clone())
        .await
        .unwrap_or_else(|e| panic!("save_execution failed: {e}"));
    commit(unit).await;

    publish(q, vec![msg(Topic::Execution, &new_id, 4)]).await;
    let (mut unit, _) = begin_own(q, &UOW_TOPICS, &p, DEADLINE).await;
    let loaded = unit
        .load_execution(&new_id)
        .await
        .unwrap_or_else(|e| panic!("load_execution failed: {e}"));
    assert_eq!(
        loaded.as_ref(),
        Some(&created),
        "the execution saved after a prefetch found it unknown is stored"
    );
    commit(unit).await;

    // A stale stamp is never taken for the stored execution.
    publish(q, vec![msg(Topic::Execution, &stored_id, 5)]).await;
    let (mut unit, _) = begin_own(q, &UOW_TOPICS, &p, DEADLINE).await;
    unit.prefetch_executions(&[(stored_id.clone(), old_stamp.clone())])
        .await
        .unwrap_or_else(|e| panic!("prefetch_executions failed: {e}"));
    let loaded = unit
        .load_execution_unless(&stored_id, old_stamp.as_ref())
        .await
        .unwrap_or_else(|e| panic!("load_execution_unless failed: {e}"));
    match loaded {
        LoadedExecution::Loaded(execution, _) => {
            assert_eq!(
                *execution, changed,
                "a stale stamp: the stored execution is loaded"
            );
            commit(unit).await;
            publish(q, vec![msg(Topic::Execution, &stored_id, 6)]).await;
        }
        LoadedExecution::Unchanged => {
            assert!(
                old_stamp.is_some(),
                "Unchanged answers a stamp, and none was given"
            );
            let refused = unit.commit().await;
            assert!(
                matches!(refused, Err(QueueError::Fenced { .. })),
                "a unit that took a stale stamp for the stored execution is refused: {refused:?}"
            );
        }
        LoadedExecution::Missing => panic!("a stored execution loaded as missing"),
    }
    // The current stamp describes the stored execution.
    let (mut unit, _) = begin_own(q, &UOW_TOPICS, &p, DEADLINE).await;
    unit.prefetch_executions(&[(stored_id.clone(), stamp.clone())])
        .await
        .unwrap_or_else(|e| panic!("prefetch_executions failed: {e}"));
    let loaded = unit
        .load_execution_unless(&stored_id, stamp.as_ref())
        .await
        .unwrap_or_else(|e| panic!("load_execution_unless failed: {e}"));
    match loaded {
        LoadedExecution::Unchanged => assert!(stamp.is_some(), "Unchanged with no stamp given"),
        LoadedExecution::Loaded(execution, _) => assert_eq!(
            *execution, changed,
            "the current stamp: unchanged, or the stored execution"
        ),
        LoadedExecution::Missing => panic!("a stored execution loaded as missing"),
    }
    commit(unit).await;
    assert_no_own_units(q, &UOW_TOPICS, &p, Duration::from_secs(1)).await;
}

/// Everything staged in a unit that is dropped without commit is discarded (execution unchanged, state
/// absent, staged messages never published) and its claimed messages are delivered again; when the
/// retry commits, the message has been processed once in total.
pub async fn unit_of_work_rollback_on_drop(queue: Arc<dyn Queue>) {
    let q = &*queue;
    let p = prefix("uow-drop");
    let id = format!("{p}-exec");
    let running = execution(&id, "testkit.uow", StateType::Running);
    // Baseline: a committed execution.
    publish(q, vec![msg(Topic::Execution, &id, 1)]).await;
    let (mut unit, _) = begin_own(q, &UOW_TOPICS, &p, DEADLINE).await;
    unit.save_execution(&running)
        .await
        .unwrap_or_else(|e| panic!("save_execution failed: {e}"));
    commit(unit).await;

    publish(q, vec![msg(Topic::Execution, &id, 2)]).await;
    let (mut unit, own) = begin_own(q, &UOW_TOPICS, &p, DEADLINE).await;
    assert_eq!(own.iter().map(seq_of).collect::<Vec<_>>(), vec![2]);
    let mut failed = running.clone();
    failed
        .state
        .transition(StateType::Failed)
        .expect("RUNNING -> FAILED");
    unit.save_execution(&failed)
        .await
        .unwrap_or_else(|e| panic!("save_execution failed: {e}"));
    unit.save_state(STATE_KIND, &id, Some(&json!({ "staged": true })))
        .await
        .unwrap_or_else(|e| panic!("save_state failed: {e}"));
    unit.publish(vec![
        msg(Topic::WorkerJob, &id, 20),
        msg(Topic::ExecutionCommand, &id, 21),
    ])
    .await
    .unwrap_or_else(|e| panic!("unit publish failed: {e}"));
    drop(unit);

    assert_no_own(
        q,
        ConsumerGroup::Worker,
        Topic::WorkerJob,
        &p,
        Duration::from_secs(1),
        "the unit that staged this message was dropped without commit",
    )
    .await;
    retry_after_abort(q, &p, &id, Some(&running), 2).await;
}

/// A unit of work running in a task that is aborted between claim and commit (a crash) applies
/// nothing; its messages are delivered again and processed once when the retry commits.
pub async fn unit_of_work_crash_before_commit(queue: Arc<dyn Queue>) {
    let p = prefix("uow-crash");
    let id = format!("{p}-exec");
    publish(&*queue, vec![msg(Topic::Execution, &id, 1)]).await;
    let (claimed_tx, claimed_rx) = tokio::sync::oneshot::channel::<Vec<u64>>();
    let task = {
        let (q, p, id) = (queue.clone(), p.clone(), id.clone());
        tokio::spawn(async move {
            let (mut unit, own) = begin_own(&*q, &UOW_TOPICS, &p, DEADLINE).await;
            unit.save_execution(&execution(&id, "testkit.uow", StateType::Running))
                .await
                .unwrap_or_else(|e| panic!("save_execution failed: {e}"));
            unit.save_state(STATE_KIND, &id, Some(&json!({ "staged": true })))
                .await
                .unwrap_or_else(|e| panic!("save_state failed: {e}"));
            unit.publish(vec![
                msg(Topic::WorkerJob, &id, 20),
                msg(Topic::ExecutionCommand, &id, 21),
            ])
            .await
            .unwrap_or_else(|e| panic!("unit publish failed: {e}"));
            let _ = claimed_tx.send(own.iter().map(seq_of).collect());
            // The "crash" happens here: the task is aborted while it holds the uncommitted unit.
            std::future::pending::<()>().await;
            commit(unit).await;
        })
    };
    let claimed = match tokio::time::timeout(DEADLINE, claimed_rx).await {
        Ok(Ok(seqs)) => seqs,
        _ => {
            task.abort();
            match task.await {
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                _ => panic!("the unit of work task did not claim the message"),
            }
        }
    };
    assert_eq!(claimed, vec![1]);
    task.abort();
    let res = task.await;
    assert!(
        matches!(&res, Err(e) if e.is_cancelled()),
        "the task was aborted"
    );
    assert_no_own(
        &*queue,
        ConsumerGroup::Worker,
        Topic::WorkerJob,
        &p,
        Duration::from_secs(1),
        "the unit that staged this message crashed before commit",
    )
    .await;
    retry_after_abort(&*queue, &p, &id, None, 1).await;
}

/// After an aborted unit: the claimed message (seq `seq`) comes back, nothing staged is visible, the
/// retry commits and the message is then processed once in total.
async fn retry_after_abort(
    q: &dyn Queue,
    p: &str,
    id: &str,
    committed: Option<&Execution>,
    seq: u64,
) {
    let (mut unit, own) = begin_own(q, &UOW_TOPICS, p, DEADLINE).await;
    let seqs: Vec<(Topic, u64)> = own.iter().map(|d| (d.envelope.topic, seq_of(d))).collect();
    assert_eq!(
        seqs,
        vec![(Topic::Execution, seq)],
        "the aborted unit's message is delivered again, and its staged command was never published"
    );
    assert!(own[0].attempt >= 1);
    let loaded = unit
        .load_execution(id)
        .await
        .unwrap_or_else(|e| panic!("load_execution failed: {e}"));
    assert_eq!(
        loaded.as_ref(),
        committed,
        "the aborted unit's execution was not applied"
    );
    let st = unit
        .load_state(STATE_KIND, id)
        .await
        .unwrap_or_else(|e| panic!("load_state failed: {e}"));
    assert_eq!(st, None, "the aborted unit's state was not applied");
    unit.publish(vec![msg(Topic::WorkerJob, id, 30)])
        .await
        .unwrap_or_else(|e| panic!("unit publish failed: {e}"));
    commit(unit).await;
    let jobs = receive_own_until(
        q,
        ConsumerGroup::Worker,
        Topic::WorkerJob,
        p,
        1,
        10,
        LEASE,
        DEADLINE,
    )
    .await;
    assert_eq!(
        jobs.iter().map(seq_of).collect::<Vec<_>>(),
        vec![30],
        "only the retry's message"
    );
    ack(q, ConsumerGroup::Worker, &[jobs[0].tag]).await;
    assert_no_own(
        q,
        ConsumerGroup::Worker,
        Topic::WorkerJob,
        p,
        Duration::from_millis(500),
        "the retry's message was acknowledged",
    )
    .await;
    assert_no_own_units(q, &UOW_TOPICS, p, Duration::from_secs(1)).await;
}

/// A malformed message set aside with [`UnitOfWork::dead_letter`] is never delivered again once the
/// unit commits, and the next message of the key follows.
pub async fn unit_of_work_dead_letter(queue: Arc<dyn Queue>) {
    let q = &*queue;
    let p = prefix("uow-dead-letter");
    let id = format!("{p}-exec");
    publish(
        q,
        vec![
            Envelope::new(Topic::ExecutionCommand, id.clone(), &b"{not json"[..]),
            msg(Topic::ExecutionCommand, &id, 1),
        ],
    )
    .await;
    let mut seen_good = false;
    let mut dead = 0;
    let start = Instant::now();
    while !seen_good {
        assert!(
            start.elapsed() < DEADLINE,
            "the message after the dead letter never came"
        );
        let (mut unit, own) = begin_own(q, &UOW_TOPICS, &p, DEADLINE).await;
        for d in &own {
            if d.envelope.decode::<serde_json::Value>().is_err() {
                assert!(
                    !seen_good,
                    "per-key order: the malformed message comes first"
                );
                dead += 1;
                unit.dead_letter(d.tag, "testkit: malformed payload")
                    .await
                    .unwrap_or_else(|e| panic!("unit dead_letter failed: {e}"));
            } else {
                assert_eq!(seq_of(d), 1);
                seen_good = true;
            }
        }
        commit(unit).await;
    }
    assert_eq!(
        dead, 1,
        "the malformed message was delivered once and dead-lettered"
    );
    assert_no_own_units(q, &UOW_TOPICS, &p, Duration::from_secs(1)).await;
}

/// A unit of work loads and saves executions and executor state only under the keys of the messages
/// it claimed: any other key is refused with [`QueueError::NotClaimed`] before anything is read or
/// staged; the claimed key works in the same unit, which still commits; and nothing refused was
/// applied (a later unit that claims the other key finds neither execution nor state).
pub async fn unit_of_work_keyed_state(queue: Arc<dyn Queue>) {
    let q = &*queue;
    let p = prefix("uow-keyed");
    let mine = format!("{p}-mine");
    let other = format!("{p}-other");
    let ns = "testkit.uow";
    publish(q, vec![msg(Topic::ExecutionCommand, &mine, 1)]).await;
    let (mut unit, own) = begin_own(q, &UOW_TOPICS, &p, DEADLINE).await;
    assert_eq!(own.len(), 1, "one message published: {own:?}");
    let refused = |what: &str, result: Result<(), QueueError>| match result {
        Err(QueueError::NotClaimed { key, .. }) => {
            assert_eq!(key, other, "{what}: NotClaimed must name the refused key")
        }
        other_result => panic!(
            "{what} under a key no claimed message carries must be refused with \
             QueueError::NotClaimed (the state of that key belongs to its own consumer), got \
             {other_result:?}"
        ),
    };
    refused(
        "load_execution",
        unit.load_execution(&other).await.map(|_| ()),
    );
    refused(
        "save_execution",
        unit.save_execution(&execution(&other, ns, StateType::Running))
            .await,
    );
    refused(
        "load_state",
        unit.load_state(STATE_KIND, &other).await.map(|_| ()),
    );
    refused(
        "save_state",
        unit.save_state(STATE_KIND, &other, Some(&json!({ "foreign": true })))
            .await,
    );
    // The claimed key works in the same unit, which still commits.
    let st = unit
        .load_state(STATE_KIND, &mine)
        .await
        .unwrap_or_else(|e| panic!("load_state under the claimed key failed: {e}"));
    assert_eq!(st, None);
    unit.save_execution(&execution(&mine, ns, StateType::Running))
        .await
        .unwrap_or_else(|e| panic!("save_execution under the claimed key failed: {e}"));
    unit.save_state(STATE_KIND, &mine, Some(&json!({ "mine": true })))
        .await
        .unwrap_or_else(|e| panic!("save_state under the claimed key failed: {e}"));
    commit(unit).await;

    // The owner of the other key sees nothing of the refused writes.
    publish(q, vec![msg(Topic::ExecutionCommand, &other, 2)]).await;
    let (mut unit, own) = begin_own(q, &UOW_TOPICS, &p, DEADLINE).await;
    assert_eq!(
        own.iter()
            .map(|d| d.envelope.key.as_str())
            .collect::<Vec<_>>(),
        vec![other.as_str()]
    );
    let loaded = unit
        .load_execution(&other)
        .await
        .unwrap_or_else(|e| panic!("load_execution under the claimed key failed: {e}"));
    assert_eq!(loaded, None, "a refused save_execution was applied");
    let st = unit
        .load_state(STATE_KIND, &other)
        .await
        .unwrap_or_else(|e| panic!("load_state under the claimed key failed: {e}"));
    assert_eq!(st, None, "a refused save_state was applied");
    commit(unit).await;
    assert_no_own_units(q, &UOW_TOPICS, &p, Duration::from_secs(1)).await;
}

/// [`unit_of_work_serialized_per_key_with`] with three clones of one handle.
pub async fn unit_of_work_serialized_per_key(queue: Arc<dyn Queue>) {
    unit_of_work_serialized_per_key_with(&move || queue.clone()).await;
}

/// Three concurrent executors taking units of work over 5 keys x 12 messages: two units never hold
/// messages of the same key at once, per key the messages are processed in publish order, each once.
pub async fn unit_of_work_serialized_per_key_with(factory: &QueueFactory) {
    const KEYS: u64 = 5;
    const PER_KEY: u64 = 12;
    const EXECUTORS: usize = 3;
    let topic = Topic::Execution;
    let publisher = factory();
    let p = prefix("uow-serial");
    let messages: Vec<Envelope> = (0..KEYS * PER_KEY)
        .map(|i| msg(topic, &format!("{p}-k{}", i % KEYS), i))
        .collect();
    publish(&*publisher, messages).await;

    let in_flight: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let processed: Arc<Mutex<BTreeMap<String, Vec<u64>>>> = Arc::default();
    let done = Arc::new(AtomicUsize::new(0));
    let total = (KEYS * PER_KEY) as usize;
    let start = Instant::now();
    let mut handles = Vec::new();
    for me in 0..EXECUTORS {
        let (q, p) = (factory(), p.clone());
        let (in_flight, processed, done) = (in_flight.clone(), processed.clone(), done.clone());
        handles.push(tokio::spawn(async move {
            while done.load(Ordering::SeqCst) < total {
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "units of work: only {} of {total} messages processed within 60 s",
                    done.load(Ordering::SeqCst)
                );
                let unit = q
                    .begin(ConsumerGroup::Executor, &[topic], 5, POLL)
                    .await
                    .unwrap_or_else(|e| panic!("begin failed: {e}"));
                let Some(unit) = unit else { continue };
                let own: Vec<Delivery> = unit
                    .deliveries()
                    .iter()
                    .filter(|d| is_own(d, &p))
                    .cloned()
                    .collect();
                let mut keys: Vec<String> = own.iter().map(|d| d.envelope.key.clone()).collect();
                keys.sort();
                keys.dedup();
                {
                    let mut held = lock(&in_flight);
                    for k in &keys {
                        if let Some(other) = held.insert(k.clone(), me) {
                            panic!(
                                "unit of executor {me} claimed key {k} while the unit of executor \
                                 {other} still holds messages of that key"
                            );
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(3)).await;
                {
                    let mut log = lock(&processed);
                    for d in &own {
                        log.entry(d.envelope.key.clone())
                            .or_default()
                            .push(seq_of(d));
                    }
                }
                {
                    let mut held = lock(&in_flight);
                    for k in &keys {
                        held.remove(k);
                    }
                }
                commit(unit).await;
                done.fetch_add(own.len(), Ordering::SeqCst);
            }
        }));
    }
    join_all(handles).await;
    let log = lock(&processed);
    for k in 0..KEYS {
        let key = format!("{p}-k{k}");
        let expected: Vec<u64> = (0..PER_KEY).map(|j| j * KEYS + k).collect();
        assert_eq!(
            log.get(&key),
            Some(&expected),
            "key {key}: units must process messages in publish order, each once"
        );
    }
}

/// `begin` waits up to `wait` and returns `None` when nothing is due; it returns promptly (well under
/// `wait`) when a message is published meanwhile.
pub async fn begin_wait_and_wakeup(queue: Arc<dyn Queue>) {
    let q = &*queue;
    // Drain leftovers so that "nothing is due" holds.
    let executor_topics: Vec<Topic> = Topic::ALL
        .into_iter()
        .filter(|t| t.groups().contains(&ConsumerGroup::Executor))
        .collect();
    let mut drained = 0;
    while let Some(unit) = q
        .begin(
            ConsumerGroup::Executor,
            &executor_topics,
            100,
            Duration::from_millis(100),
        )
        .await
        .unwrap_or_else(|e| panic!("begin failed: {e}"))
    {
        commit(unit).await;
        drained += 1;
        assert!(
            drained < 100,
            "begin still hands out leftovers after 100 units"
        );
    }
    let start = Instant::now();
    let unit = q
        .begin(
            ConsumerGroup::Executor,
            &UOW_TOPICS,
            10,
            Duration::from_secs(1),
        )
        .await
        .unwrap_or_else(|e| panic!("begin failed: {e}"));
    let elapsed = start.elapsed();
    assert!(
        unit.is_none(),
        "nothing was due but begin returned a unit with {:?}",
        unit.as_ref().map(|u| u.deliveries().to_vec())
    );
    assert!(
        elapsed < Duration::from_secs(3),
        "begin with wait 1 s returned after {elapsed:?}"
    );

    let p = prefix("begin-wakeup");
    let id = format!("{p}-exec");
    let publisher = queue.clone();
    let k = id.clone();
    let pub_task = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        publish(&*publisher, vec![msg(Topic::ExecutionCommand, &k, 1)]).await;
    });
    let start = Instant::now();
    let unit = q
        .begin(
            ConsumerGroup::Executor,
            &UOW_TOPICS,
            10,
            Duration::from_secs(5),
        )
        .await
        .unwrap_or_else(|e| panic!("begin failed: {e}"));
    let elapsed = start.elapsed();
    join_all(vec![pub_task]).await;
    let unit = unit.unwrap_or_else(|| {
        panic!("begin(wait 5 s) returned None after {elapsed:?} although a message was published after 200 ms")
    });
    assert!(
        elapsed < Duration::from_secs(2),
        "begin(wait 5 s) returned after {elapsed:?} for a message published after 200 ms: wake-ups \
         must not wait for the full timeout"
    );
    let own: Vec<u64> = unit
        .deliveries()
        .iter()
        .filter(|d| is_own(d, &p))
        .map(seq_of)
        .collect();
    assert_eq!(
        own,
        vec![1],
        "the unit holds the message published meanwhile"
    );
    commit(unit).await;
}

// ---------------------------------------------------------------------------------------------------
// load

/// Publish `n` messages in batches of 100 and consume them in batches of up to 100 (acknowledging each
/// batch); checks every message arrived exactly once and returns the elapsed time. Afterwards the
/// backend's queue storage for (indexer, log) should be (nearly) empty: the caller checks that.
pub async fn drain_many(queue: Arc<dyn Queue>, n: usize) -> Duration {
    let q = &*queue;
    let (group, topic) = (ConsumerGroup::Indexer, Topic::Log);
    let p = prefix("drain");
    let start = Instant::now();
    let mut seen = vec![0u32; n];
    let mut received = 0usize;
    let mut next = 0usize;
    let timeout = Duration::from_secs(60) + Duration::from_millis(n as u64 * 20);
    while received < n {
        assert!(
            start.elapsed() < timeout,
            "drain_many: {received} of {n} messages consumed within {timeout:?}"
        );
        if next < n {
            let end = (next + 100).min(n);
            let batch: Vec<Envelope> = (next..end)
                .map(|i| msg(topic, &format!("{p}-k{}", i % 16), i as u64))
                .collect();
            publish(q, batch).await;
            next = end;
        }
        let wait = if next < n { Duration::ZERO } else { POLL };
        let own = receive_own(q, group, topic, &p, 100, LEASE, wait).await;
        for d in &own {
            let s = seq_of(d) as usize;
            assert!(s < n, "unexpected seq {s}");
            seen[s] += 1;
            assert_eq!(seen[s], 1, "message {s} delivered twice");
        }
        received += own.len();
        let tags: Vec<DeliveryTag> = own.iter().map(|d| d.tag).collect();
        ack(q, group, &tags).await;
    }
    start.elapsed()
}

// ---------------------------------------------------------------------------------------------------
// everything

/// Every check above, one after the other, with clones of `queue` as the several consumers (a
/// backend without [`QueueCapabilities::lease_timers`] needs [`run_all_with`] and a factory of new
/// consumers, so that a dropped consumer is a dead one).
pub async fn run_all(queue: Arc<dyn Queue>) {
    let q = queue.clone();
    run_all_with(&move || q.clone()).await;
}

/// Every check above, one after the other; the multi-consumer checks take their consumers from
/// `factory` (e.g. one connection or client each). The checks of a capability the backend does not
/// declare ([`Queue::capabilities`]) are skipped, and the skip is printed.
pub async fn run_all_with(factory: &QueueFactory) {
    let capabilities = factory().capabilities();
    publish_receive_round_trip(factory()).await;
    concurrent_publishes(factory()).await;
    fan_out_to_every_group(factory()).await;
    tags_of_two_topics(factory()).await;
    competing_consumers_with(factory).await;
    per_key_ordering_with(factory).await;
    redelivery_after_consumer_dies_with(factory).await;
    extend_lease_reports_what_is_no_longer_held(factory()).await;
    publish_and_ack_together(factory()).await;
    if capabilities.lease_timers {
        lease_expiry_and_ack(factory()).await;
        lease_extension(factory()).await;
    } else {
        skipped("lease_timers", &["lease_expiry_and_ack", "lease_extension"]);
    }
    delayed_delivery(factory()).await;
    delays_only_in_units_on_executor_topics(factory()).await;
    too_large_is_refused(factory()).await;
    recorded_receive(factory()).await;
    dead_letter(factory()).await;
    receive_wait_and_wakeup(factory()).await;
    broadcast_with(factory).await;
    broadcast_committed_late(factory()).await;
    subscribe_only_broadcast_topics(factory()).await;
    unit_of_work_commit(factory()).await;
    unit_of_work_prefetch(factory()).await;
    unit_of_work_rollback_on_drop(factory()).await;
    unit_of_work_crash_before_commit(factory()).await;
    unit_of_work_dead_letter(factory()).await;
    unit_of_work_keyed_state(factory()).await;
    unit_of_work_serialized_per_key_with(factory).await;
    begin_wait_and_wakeup(factory()).await;
    drain_many(factory(), 1_000).await;
}

/// Say loudly which checks a backend's capabilities skip (nothing is skipped silently).
fn skipped(capability: &str, checks: &[&str]) {
    eprintln!(
        "\n!!!!! queue conformance: the backend does not declare `{capability}`: SKIPPED {checks:?} !!!!!\n"
    );
    tracing::warn!(capability, ?checks, "queue conformance checks skipped");
}

// ---------------------------------------------------------------------------------------------------
// fencing

/// A queue whose next `n` units of work are a zombie's: their commit is refused with
/// [`QueueError::Fenced`] and nothing they staged is applied (the inner unit is dropped, so its
/// messages are delivered again), as when another instance took the partition over before the
/// commit. Everything else goes to the inner queue unchanged. For testing that consumers of units
/// (the executor) drop a fenced unit's work and go on.
pub struct FencingQueue {
    inner: Arc<dyn Queue>,
    remaining: Arc<AtomicUsize>,
    fenced: Arc<AtomicUsize>,
}

impl FencingQueue {
    /// Fence the next `n` commits of units begun through this queue.
    pub fn new(inner: Arc<dyn Queue>, n: usize) -> FencingQueue {
        FencingQueue {
            inner,
            remaining: Arc::new(AtomicUsize::new(n)),
            fenced: Arc::default(),
        }
    }

    /// How many commits were fenced so far.
    pub fn fenced(&self) -> usize {
        self.fenced.load(Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl Queue for FencingQueue {
    fn capabilities(&self) -> QueueCapabilities {
        self.inner.capabilities()
    }
    async fn publish(&self, messages: Vec<Envelope>) -> Result<(), QueueError> {
        self.inner.publish(messages).await
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
        record: &Recorder,
    ) -> Result<Vec<Delivery>, QueueError> {
        self.inner
            .receive_recorded(group, topic, max, lease, wait, record)
            .await
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
    async fn replay(
        &self,
        stream: crate::queue::Replayable,
    ) -> Result<crate::queue::ReplayStream, QueueError> {
        self.inner.replay(stream).await
    }
    async fn begin_triggers(&self) -> Result<Box<dyn crate::queue::TriggerUnit>, QueueError> {
        self.inner.begin_triggers().await
    }
    async fn begin(
        &self,
        group: ConsumerGroup,
        topics: &[Topic],
        max: usize,
        wait: Duration,
    ) -> Result<Option<Box<dyn UnitOfWork>>, QueueError> {
        let unit = self.inner.begin(group, topics, max, wait).await?;
        Ok(unit.map(|inner| {
            Box::new(FencedUnit {
                inner,
                remaining: self.remaining.clone(),
                fenced: self.fenced.clone(),
            }) as Box<dyn UnitOfWork>
        }))
    }
}

struct FencedUnit {
    inner: Box<dyn UnitOfWork>,
    remaining: Arc<AtomicUsize>,
    fenced: Arc<AtomicUsize>,
}

#[async_trait::async_trait]
impl UnitOfWork for FencedUnit {
    fn deliveries(&self) -> &[Delivery] {
        self.inner.deliveries()
    }
    async fn load_execution(&mut self, id: &str) -> Result<Option<Execution>, QueueError> {
        self.inner.load_execution(id).await
    }
    async fn save_execution(&mut self, execution: &Execution) -> Result<(), QueueError> {
        self.inner.save_execution(execution).await
    }
    async fn load_execution_unless(
        &mut self,
        id: &str,
        known: Option<&crate::queue::ExecutionStamp>,
    ) -> Result<crate::queue::LoadedExecution, QueueError> {
        self.inner.load_execution_unless(id, known).await
    }
    async fn save_execution_stamped(
        &mut self,
        execution: &mut Execution,
    ) -> Result<Option<crate::queue::ExecutionStamp>, QueueError> {
        self.inner.save_execution_stamped(execution).await
    }
    async fn load_state(
        &mut self,
        kind: &str,
        key: &str,
    ) -> Result<Option<serde_json::Value>, QueueError> {
        self.inner.load_state(kind, key).await
    }
    async fn save_state(
        &mut self,
        kind: &str,
        key: &str,
        value: Option<&serde_json::Value>,
    ) -> Result<(), QueueError> {
        self.inner.save_state(kind, key, value).await
    }
    async fn publish(&mut self, messages: Vec<Envelope>) -> Result<(), QueueError> {
        self.inner.publish(messages).await
    }
    async fn dead_letter(&mut self, tag: DeliveryTag, reason: &str) -> Result<(), QueueError> {
        self.inner.dead_letter(tag, reason).await
    }
    async fn commit(self: Box<Self>) -> Result<(), QueueError> {
        let fence = self
            .remaining
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if fence {
            self.fenced.fetch_add(1, Ordering::SeqCst);
            // Dropping the inner unit rolls it back: its messages come back to the "new owner".
            drop(self.inner);
            return Err(QueueError::Fenced {
                detail: "testkit FencingQueue: another instance owns the partition".into(),
            });
        }
        self.inner.commit().await
    }
}

/// A minimal in-memory queue, only to run the suite on itself (not shipped): it shows the checks pass
/// The suite run on the testkit's own [`MemoryQueue`](crate::testkit::memory::MemoryQueue): the checks
/// pass on a correct implementation and fail on deliberately broken ones ([`Flaws`]).
#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::memory::MemoryQueue as MemQueue;
    use crate::testkit::memory::queue::{Flaws, MEM_MAX};
    use async_trait::async_trait;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_correct_in_memory_queue_passes_the_whole_suite() {
        let queue = MemQueue::default();
        run_all_with(&move || Arc::new(queue.clone()) as Arc<dyn Queue>).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_queue_without_lease_timers_passes_the_suite_with_those_checks_skipped() {
        let queue = MemQueue::with(Flaws {
            no_lease_timers: true,
            ..Flaws::default()
        });
        run_all_with(&move || Arc::new(queue.consumer()) as Arc<dyn Queue>).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[should_panic(expected = "waited")]
    async fn a_queue_that_claims_without_records_fails_recorded_receive() {
        // The refused job stays claimed: the plain receive that must get it at once times out.
        recorded_receive(Arc::new(MemQueue::with(Flaws {
            claims_without_records: true,
            ..Flaws::default()
        })))
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[should_panic(expected = "tags of two topics collide")]
    async fn a_queue_whose_tags_do_not_name_their_topic_fails_tags_of_two_topics() {
        tags_of_two_topics(Arc::new(MemQueue::with(Flaws {
            tags_without_topic: true,
            ..Flaws::default()
        })))
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[should_panic(expected = "must be refused with DelayNotAllowed")]
    async fn a_queue_accepting_delays_anywhere_fails_the_delay_check() {
        delays_only_in_units_on_executor_topics(Arc::new(MemQueue::with(Flaws {
            delay_anywhere: true,
            ..Flaws::default()
        })))
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[should_panic(expected = "must be refused with TooLarge")]
    async fn a_queue_without_a_size_limit_fails_too_large_is_refused() {
        let queue = MemQueue::with(Flaws {
            no_size_limit: true,
            ..Flaws::default()
        });
        // It declares no limit, so check against the size a correct one refuses.
        struct Declares(MemQueue);
        #[async_trait]
        impl Queue for Declares {
            fn capabilities(&self) -> QueueCapabilities {
                QueueCapabilities {
                    lease_timers: true,
                    max_message_bytes: MEM_MAX,
                    repository_in_unit: false,
                }
            }
            async fn publish(&self, m: Vec<Envelope>) -> Result<(), QueueError> {
                self.0.publish(m).await
            }
            async fn receive(
                &self,
                g: ConsumerGroup,
                t: Topic,
                max: usize,
                lease: Duration,
                wait: Duration,
            ) -> Result<Vec<Delivery>, QueueError> {
                self.0.receive(g, t, max, lease, wait).await
            }
            async fn receive_recorded(
                &self,
                g: ConsumerGroup,
                t: Topic,
                max: usize,
                lease: Duration,
                wait: Duration,
                record: &Recorder,
            ) -> Result<Vec<Delivery>, QueueError> {
                self.0
                    .receive_recorded(g, t, max, lease, wait, record)
                    .await
            }
            async fn ack(&self, g: ConsumerGroup, tags: &[DeliveryTag]) -> Result<(), QueueError> {
                self.0.ack(g, tags).await
            }
            async fn extend_lease(
                &self,
                g: ConsumerGroup,
                tags: &[DeliveryTag],
                lease: Duration,
            ) -> Result<Vec<DeliveryTag>, QueueError> {
                self.0.extend_lease(g, tags, lease).await
            }
            async fn dead_letter(&self, d: &Delivery, reason: &str) -> Result<(), QueueError> {
                self.0.dead_letter(d, reason).await
            }
            async fn subscribe(&self, t: Topic) -> Result<Subscription, QueueError> {
                self.0.subscribe(t).await
            }
            async fn begin(
                &self,
                g: ConsumerGroup,
                topics: &[Topic],
                max: usize,
                wait: Duration,
            ) -> Result<Option<Box<dyn UnitOfWork>>, QueueError> {
                self.0.begin(g, topics, max, wait).await
            }
        }
        too_large_is_refused(Arc::new(Declares(queue))).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_fencing_queue_refuses_the_commit_and_gives_the_messages_back() {
        let mem = MemQueue::default();
        let fencing = FencingQueue::new(Arc::new(mem.clone()), 1);
        let p = prefix("fencing");
        publish(&fencing, vec![msg(Topic::Execution, &format!("{p}-e"), 1)]).await;
        let (mut unit, _) = begin_own(&fencing, &UOW_TOPICS, &p, DEADLINE).await;
        unit.publish(vec![msg(Topic::WorkerJob, &format!("{p}-job"), 2)])
            .await
            .unwrap();
        let refused = unit.commit().await;
        assert!(
            matches!(refused, Err(QueueError::Fenced { .. })),
            "{refused:?}"
        );
        assert_eq!(fencing.fenced(), 1);
        let (unit, own) = begin_own(&fencing, &UOW_TOPICS, &p, DEADLINE).await;
        assert_eq!(own.iter().map(seq_of).collect::<Vec<_>>(), vec![1]);
        commit(unit).await;
        assert_no_own(
            &fencing,
            ConsumerGroup::Worker,
            Topic::WorkerJob,
            &p,
            Duration::from_millis(300),
            "the fenced unit's staged message is never published",
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn drain_many_consumes_everything_it_published() {
        let queue = MemQueue::default();
        let elapsed = drain_many(Arc::new(queue.clone()), 2_000).await;
        assert!(elapsed < Duration::from_secs(30));
        assert!(queue.pending() == 0, "every row was acknowledged");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[should_panic(expected = "before its deliver_at")]
    async fn a_queue_ignoring_deliver_at_fails_delayed_delivery() {
        delayed_delivery(Arc::new(MemQueue::with(Flaws {
            ignore_delay: true,
            ..Flaws::default()
        })))
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[should_panic(expected = "still holds an unacknowledged earlier message")]
    async fn a_queue_without_key_exclusion_fails_per_key_ordering() {
        per_key_ordering(Arc::new(MemQueue::with(Flaws {
            no_key_exclusion: true,
            ..Flaws::default()
        })))
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[should_panic(expected = "an extended lease must not be delivered again")]
    async fn a_queue_ignoring_lease_extensions_fails_lease_extension() {
        lease_extension(Arc::new(MemQueue::with(Flaws {
            ignore_lease_extension: true,
            ..Flaws::default()
        })))
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[should_panic(expected = "claimed key")]
    async fn a_queue_without_key_exclusion_fails_unit_of_work_serialization() {
        unit_of_work_serialized_per_key(Arc::new(MemQueue::with(Flaws {
            no_key_exclusion: true,
            ..Flaws::default()
        })))
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[should_panic(expected = "must be refused with QueueError::NotClaimed")]
    async fn a_unit_reaching_state_of_unclaimed_keys_fails_keyed_state() {
        unit_of_work_keyed_state(Arc::new(MemQueue::with(Flaws {
            unscoped_state: true,
            ..Flaws::default()
        })))
        .await;
    }
}
