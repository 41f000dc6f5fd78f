//! An in-memory queue ([`MemoryQueue`]) for tests.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::StreamExt;

use crate::model::Execution;
use crate::queue::{
    ConsumerGroup, Delivery, DeliveryTag, Envelope, Queue, QueueCapabilities, QueueError, Recorder,
    ReplayStream, Replayable, Replayed, Subscription, Topic, UnitOfWork, check_claimed,
    check_execution_size, check_publish, check_staged,
};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The maximum message size of the in-memory queue.
pub(crate) const MEM_MAX: usize = 64 * 1024;

/// Deliberate bugs, only for the conformance suite's own tests: each shows that the suite catches
/// it. A [`MemoryQueue`] made with [`MemoryQueue::new`] has none.
#[derive(Default, Clone, Copy)]
pub(crate) struct Flaws {
    pub(crate) ignore_lease_extension: bool,
    pub(crate) ignore_delay: bool,
    pub(crate) no_key_exclusion: bool,
    pub(crate) unscoped_state: bool,
    /// Offsets are counted per topic (as on Kafka) but tags do not name their topic.
    pub(crate) tags_without_topic: bool,
    /// Delayed messages accepted anywhere (from `publish`, on any topic).
    pub(crate) delay_anywhere: bool,
    /// No maximum size.
    pub(crate) no_size_limit: bool,
    /// A refused record of a recorded receive leaves its messages claimed.
    pub(crate) claims_without_records: bool,
    /// Not a flaw: Kafka's model. Leases never expire; a consumer's deliveries come back when
    /// its handle ([`MemoryQueue::consumer`]) is dropped.
    pub(crate) no_lease_timers: bool,
}

struct Row {
    offset: i64,
    group: ConsumerGroup,
    envelope: Envelope,
    attempts: u32,
    leased_until: Option<Instant>,
    /// The consumer holding it (without lease timers).
    holder: Option<u64>,
    unit: Option<u64>,
    /// When it became deliverable (publish time or due time).
    published_at: DateTime<Utc>,
}

#[derive(Default)]
struct Inner {
    /// Offsets per topic, as on Kafka: the tags of two topics differ only by their topic.
    next_offset: HashMap<Topic, i64>,
    next_unit: u64,
    next_consumer: u64,
    rows: Vec<Row>,
    executions: HashMap<String, Execution>,
    state: HashMap<(String, String), serde_json::Value>,
    subscribers: Vec<(Topic, tokio::sync::mpsc::UnboundedSender<Envelope>)>,
    /// Every message ever published (also by units and recorded receives), in order.
    published: Vec<Envelope>,
    /// Every acknowledgement, in order.
    acknowledged: Vec<(ConsumerGroup, DeliveryTag)>,
    /// Every dead letter with its reason, in order.
    dead_letters: Vec<(Delivery, String)>,
}

/// One consumer (without lease timers, dropping its last handle releases what it holds).
struct Consumer {
    id: u64,
    inner: Arc<Mutex<Inner>>,
    notify: Arc<tokio::sync::Notify>,
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let mut inner = lock(&self.inner);
        for r in inner.rows.iter_mut().filter(|r| r.holder == Some(self.id)) {
            r.holder = None;
            r.leased_until = None;
        }
        self.notify.notify_waiters();
    }
}

/// A queue in memory, for tests. It honours the queue contract of [`crate::queue`] and passes the
/// whole conformance suite ([`crate::testkit::queue`]): competing consumers per group, per-key
/// exclusion, leases with timers, delayed delivery on executor topics, units of work with keyed
/// state, broadcast subscriptions, a maximum message size ([`MemoryQueue::MAX_MESSAGE_BYTES`]).
/// Clones share the store; [`consumer`](MemoryQueue::consumer) is another consumer on it.
///
/// Besides the [`Queue`] methods, it lets a test see what went through it: [`published`](Self::published),
/// [`acknowledged`](Self::acknowledged), [`dead_letters`](Self::dead_letters).
#[derive(Clone)]
pub struct MemoryQueue {
    inner: Arc<Mutex<Inner>>,
    notify: Arc<tokio::sync::Notify>,
    flaws: Flaws,
    consumer: Arc<Consumer>,
}

impl Default for MemoryQueue {
    fn default() -> Self {
        MemoryQueue::with(Flaws::default())
    }
}

impl MemoryQueue {
    /// The largest message (and execution document) accepted, in bytes.
    pub const MAX_MESSAGE_BYTES: usize = MEM_MAX;

    /// An empty queue.
    pub fn new() -> MemoryQueue {
        MemoryQueue::default()
    }

    /// Every message published so far (by `publish`, committed units and recorded receives), in
    /// publish order, acknowledged or not.
    pub fn published(&self) -> Vec<Envelope> {
        lock(&self.inner).published.clone()
    }

    /// How many deliveries (one per message and consumer group) are not acknowledged yet.
    pub fn pending(&self) -> usize {
        lock(&self.inner).rows.len()
    }

    /// Every acknowledgement made with [`Queue::ack`] so far, in order.
    pub fn acknowledged(&self) -> Vec<(ConsumerGroup, DeliveryTag)> {
        lock(&self.inner).acknowledged.clone()
    }

    /// Every delivery dead-lettered with [`Queue::dead_letter`] so far, with its reason.
    pub fn dead_letters(&self) -> Vec<(Delivery, String)> {
        lock(&self.inner).dead_letters.clone()
    }

    /// A queue with deliberate bugs (for the suite's own tests).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn with(flaws: Flaws) -> MemoryQueue {
        let inner: Arc<Mutex<Inner>> = Arc::default();
        let notify: Arc<tokio::sync::Notify> = Arc::default();
        MemoryQueue {
            consumer: Arc::new(Consumer {
                id: 0,
                inner: inner.clone(),
                notify: notify.clone(),
            }),
            inner,
            notify,
            flaws,
        }
    }

    /// A new consumer on the same store: without lease timers (a flaw-free queue has them), what it
    /// holds is released when its last handle drops.
    pub fn consumer(&self) -> MemoryQueue {
        let id = {
            let mut inner = lock(&self.inner);
            inner.next_consumer += 1;
            inner.next_consumer
        };
        MemoryQueue {
            consumer: Arc::new(Consumer {
                id,
                inner: self.inner.clone(),
                notify: self.notify.clone(),
            }),
            ..self.clone()
        }
    }

    fn max(&self) -> usize {
        if self.flaws.no_size_limit {
            usize::MAX
        } else {
            MEM_MAX
        }
    }

    fn matches(&self, row: &Row, group: ConsumerGroup, tag: &DeliveryTag) -> bool {
        row.group == group
            && row.offset == tag.offset
            && (self.flaws.tags_without_topic || row.envelope.topic == tag.topic)
    }

    fn append(&self, inner: &mut Inner, messages: Vec<Envelope>) {
        for e in messages {
            for &group in e.topic.groups() {
                let offset = inner.next_offset.entry(e.topic).or_default();
                *offset += 1;
                let offset = *offset;
                inner.rows.push(Row {
                    offset,
                    group,
                    envelope: e.clone(),
                    attempts: 0,
                    leased_until: None,
                    holder: None,
                    unit: None,
                    published_at: e.deliver_at.unwrap_or_else(Utc::now),
                });
            }
            inner
                .subscribers
                .retain(|(t, tx)| *t != e.topic || tx.send(e.clone()).is_ok());
            inner.published.push(e);
        }
        self.notify.notify_waiters();
    }

    fn claim(
        &self,
        group: ConsumerGroup,
        topics: &[Topic],
        max: usize,
        lease: Option<Duration>,
        unit: Option<u64>,
    ) -> Vec<Delivery> {
        let mut inner = lock(&self.inner);
        let (now, wall) = (Instant::now(), Utc::now());
        let mut blocked: HashSet<(Topic, String)> = HashSet::new();
        let mut out = Vec::new();
        for row in inner.rows.iter_mut() {
            if out.len() >= max {
                break;
            }
            if row.group != group || !topics.contains(&row.envelope.topic) {
                continue;
            }
            let k = (row.envelope.topic, row.envelope.key.clone());
            let held = row.unit.is_some()
                || row.holder.is_some()
                || row.leased_until.is_some_and(|t| t > now);
            if held {
                if !self.flaws.no_key_exclusion {
                    blocked.insert(k);
                }
                continue;
            }
            let due = self.flaws.ignore_delay || row.envelope.deliver_at.is_none_or(|d| d <= wall);
            if !due || blocked.contains(&k) {
                continue;
            }
            row.attempts += 1;
            if self.flaws.no_lease_timers {
                row.holder = lease.map(|_| self.consumer.id);
            } else {
                row.leased_until = lease.map(|l| now + l);
            }
            row.unit = unit;
            out.push(Delivery {
                tag: DeliveryTag {
                    topic: if self.flaws.tags_without_topic {
                        Topic::Execution
                    } else {
                        row.envelope.topic
                    },
                    partition: 0,
                    offset: row.offset,
                },
                group,
                envelope: row.envelope.clone(),
                attempt: row.attempts,
                published_at: Some(row.published_at),
            });
        }
        out
    }

    async fn wait_for(&self, wait: Duration, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + wait;
        loop {
            let notified = self.notify.notified();
            if f() || Instant::now() >= deadline {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let _ = tokio::time::timeout(left.min(Duration::from_millis(50)), notified).await;
        }
    }
}

#[async_trait]
impl Queue for MemoryQueue {
    fn capabilities(&self) -> QueueCapabilities {
        QueueCapabilities {
            lease_timers: !self.flaws.no_lease_timers,
            max_message_bytes: self.max(),
            // Its units keep executions to themselves: a repository follows through the indexer.
            repository_in_unit: false,
        }
    }

    async fn publish(&self, messages: Vec<Envelope>) -> Result<(), QueueError> {
        if !self.flaws.delay_anywhere {
            check_publish(&messages, self.max())?;
        } else {
            let undelayed: Vec<Envelope> = messages
                .iter()
                .cloned()
                .map(|mut m| {
                    m.deliver_at = None;
                    m
                })
                .collect();
            check_publish(&undelayed, self.max())?;
        }
        let mut inner = lock(&self.inner);
        self.append(&mut inner, messages);
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
        let mut got = Vec::new();
        self.wait_for(wait, || {
            got = self.claim(group, &[topic], max, Some(lease), None);
            !got.is_empty()
        })
        .await;
        Ok(got)
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
        let got = self.receive(group, topic, max, lease, wait).await?;
        if got.is_empty() {
            return Ok(got);
        }
        match record(&got).and_then(|r| check_publish(&r, self.max()).map(|()| r)) {
            Ok(records) => {
                let mut inner = lock(&self.inner);
                self.append(&mut inner, records);
                Ok(got)
            }
            Err(e) => {
                if !self.flaws.claims_without_records {
                    let mut inner = lock(&self.inner);
                    for row in inner.rows.iter_mut() {
                        if got.iter().any(|d| self.matches(row, group, &d.tag)) {
                            row.leased_until = None;
                            row.holder = None;
                            row.attempts -= 1;
                        }
                    }
                    self.notify.notify_waiters();
                }
                Err(e)
            }
        }
    }

    async fn ack(&self, group: ConsumerGroup, tags: &[DeliveryTag]) -> Result<(), QueueError> {
        let mut inner = lock(&self.inner);
        inner
            .rows
            .retain(|r| !tags.iter().any(|t| self.matches(r, group, t)));
        inner.acknowledged.extend(tags.iter().map(|t| (group, *t)));
        drop(inner);
        self.notify.notify_waiters();
        Ok(())
    }

    async fn extend_lease(
        &self,
        group: ConsumerGroup,
        tags: &[DeliveryTag],
        lease: Duration,
    ) -> Result<Vec<DeliveryTag>, QueueError> {
        let mut inner = lock(&self.inner);
        let until = Instant::now() + lease;
        let mut lost = Vec::new();
        for tag in tags {
            match inner.rows.iter_mut().find(|r| self.matches(r, group, tag)) {
                Some(row) => {
                    if !self.flaws.ignore_lease_extension && row.leased_until.is_some() {
                        row.leased_until = Some(until);
                    }
                }
                None => lost.push(*tag),
            }
        }
        Ok(lost)
    }

    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<(), QueueError> {
        let mut inner = lock(&self.inner);
        inner
            .rows
            .retain(|r| !self.matches(r, delivery.group, &delivery.tag));
        inner
            .dead_letters
            .push((delivery.clone(), reason.to_string()));
        drop(inner);
        self.notify.notify_waiters();
        Ok(())
    }

    async fn subscribe(&self, topic: Topic) -> Result<Subscription, QueueError> {
        crate::queue::check_broadcast(topic)?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        lock(&self.inner).subscribers.push((topic, tx));
        Ok(futures::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) },
        )
        .boxed())
    }

    /// Flows only (this queue keeps no trigger state): every flow message published so far, then
    /// the new ones (snapshot and subscription taken under one lock, so none is missed).
    async fn replay(&self, stream: Replayable) -> Result<ReplayStream, QueueError> {
        if stream != Replayable::Flows {
            return Err(QueueError::backend(
                "replay",
                crate::queue::NotReplayable { stream },
            ));
        }
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let backlog: Vec<Result<Replayed, QueueError>> = {
            let mut inner = lock(&self.inner);
            inner.subscribers.push((Topic::Flow, tx));
            inner
                .published
                .iter()
                .filter(|e| e.topic == Topic::Flow)
                .map(|e| {
                    Ok(Replayed::Record {
                        key: e.key.clone(),
                        payload: Some(e.payload.clone()),
                    })
                })
                .chain(std::iter::once(Ok(Replayed::CaughtUp)))
                .collect()
        };
        let follow = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|e: Envelope| {
                (
                    Ok(Replayed::Record {
                        key: e.key,
                        payload: Some(e.payload),
                    }),
                    rx,
                )
            })
        });
        Ok(futures::stream::iter(backlog).chain(follow).boxed())
    }

    async fn begin(
        &self,
        group: ConsumerGroup,
        topics: &[Topic],
        max: usize,
        wait: Duration,
    ) -> Result<Option<Box<dyn UnitOfWork>>, QueueError> {
        let id = {
            let mut inner = lock(&self.inner);
            inner.next_unit += 1;
            inner.next_unit
        };
        let mut got = Vec::new();
        self.wait_for(wait, || {
            got = self.claim(group, topics, max, None, Some(id));
            !got.is_empty()
        })
        .await;
        if got.is_empty() {
            return Ok(None);
        }
        Ok(Some(Box::new(MemoryUnit {
            scoped: !self.flaws.unscoped_state,
            queue: self.clone(),
            refused: None,
            id,
            deliveries: got,
            executions: Vec::new(),
            state: Vec::new(),
            messages: Vec::new(),
            done: false,
        })))
    }
}

struct MemoryUnit {
    scoped: bool,
    queue: MemoryQueue,
    /// A refusal reported at commit (as a Kafka producer reports it).
    refused: Option<QueueError>,
    id: u64,
    deliveries: Vec<Delivery>,
    executions: Vec<Execution>,
    state: Vec<((String, String), Option<serde_json::Value>)>,
    messages: Vec<Envelope>,
    done: bool,
}

impl Drop for MemoryUnit {
    fn drop(&mut self) {
        if !self.done {
            let mut inner = lock(&self.queue.inner);
            for r in inner.rows.iter_mut().filter(|r| r.unit == Some(self.id)) {
                r.unit = None;
                // A rollback is not a crash: the delivery does not count (`Delivery::attempt`).
                r.attempts = r.attempts.saturating_sub(1);
            }
            self.queue.notify.notify_waiters();
        }
    }
}

impl MemoryUnit {
    fn check(&self, key: &str) -> Result<(), QueueError> {
        if self.scoped {
            check_claimed(&self.deliveries, || "use".into(), key)
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl UnitOfWork for MemoryUnit {
    fn deliveries(&self) -> &[Delivery] {
        &self.deliveries
    }
    async fn load_execution(&mut self, id: &str) -> Result<Option<Execution>, QueueError> {
        self.check(id)?;
        Ok(lock(&self.queue.inner).executions.get(id).cloned())
    }
    async fn save_execution(&mut self, execution: &Execution) -> Result<(), QueueError> {
        self.check(&execution.id)?;
        let doc = serde_json::to_vec(execution).map_err(|source| QueueError::Encode {
            topic: Topic::Execution,
            source,
        })?;
        if let Err(e) = check_execution_size(&execution.id, &doc, self.queue.max()) {
            self.refused.get_or_insert(e);
        }
        self.executions.push(execution.clone());
        Ok(())
    }
    async fn load_state(
        &mut self,
        kind: &str,
        key: &str,
    ) -> Result<Option<serde_json::Value>, QueueError> {
        self.check(key)?;
        let k = (kind.to_string(), key.to_string());
        Ok(lock(&self.queue.inner).state.get(&k).cloned())
    }
    async fn save_state(
        &mut self,
        kind: &str,
        key: &str,
        value: Option<&serde_json::Value>,
    ) -> Result<(), QueueError> {
        self.check(key)?;
        self.state
            .push(((kind.to_string(), key.to_string()), value.cloned()));
        Ok(())
    }
    async fn publish(&mut self, messages: Vec<Envelope>) -> Result<(), QueueError> {
        if !self.queue.flaws.delay_anywhere {
            check_staged(&messages, self.queue.max())?;
        }
        self.messages.extend(messages);
        Ok(())
    }
    async fn dead_letter(&mut self, _tag: DeliveryTag, _reason: &str) -> Result<(), QueueError> {
        Ok(())
    }
    async fn commit(mut self: Box<Self>) -> Result<(), QueueError> {
        if let Some(refused) = self.refused.take() {
            return Err(refused);
        }
        self.done = true;
        let queue = self.queue.clone();
        let mut inner = lock(&queue.inner);
        let id = self.id;
        inner.rows.retain(|r| r.unit != Some(id));
        for e in self.executions.drain(..) {
            inner.executions.insert(e.id.clone(), e);
        }
        for (k, v) in self.state.drain(..) {
            match v {
                Some(v) => inner.state.insert(k, v),
                None => inner.state.remove(&k),
            };
        }
        let messages = std::mem::take(&mut self.messages);
        queue.append(&mut inner, messages);
        Ok(())
    }
}
