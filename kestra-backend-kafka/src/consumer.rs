//! A competing consumer: one Kafka consumer-group member for (group, topics), polled by a background
//! thread that buffers records per partition, with the acknowledgement bookkeeping (only the
//! contiguous acknowledged prefix of a partition is committed) and, for the executor's units of
//! work, the partition-local state store restored from the changelog on assignment and the delayed
//! messages fired when due.
//!
//! Delivery attempts (executor units, and the workers' competing receive of their jobs): a message
//! whose processing kills the process is not acknowledged, so the next owner of its partition gets
//! it again. On assignment, the consumer
//! reads the partition's committed offset O, its high watermark and its record in the compacted
//! `{prefix}delivery_attempts` topic (keyed by consumer group, topic and partition;
//! [`AttemptRecord::on_assignment`]). A batch-mode record for the same O means a batch from O was
//! handed out and never committed: the partition is then handed out one message per unit up to the
//! high watermark (past anything that batch held), so a poison message is isolated; the record is
//! rewritten (flushed, outside the unit's transaction) before each message handed out alone, with
//! that delivery's number, which the next owner raises by one if it finds the record at its
//! committed offset. Otherwise the consumer writes a batch-mode record for O before the first batch:
//! one write per assignment, none per message on the normal path. A record written by a zombie can
//! only start a single-message run early or count a delivery it did not see.
//!
//! A unit commits its offsets in its transaction; a competing receive commits them asynchronously
//! when it is acknowledged. So in a single-message run of a competing receive, the position of the
//! message about to be handed out is committed synchronously before its record is written (the
//! record's offset is then the committed one if the process dies with it): one more round trip per
//! message of the run, none on the normal path.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use kestra_core::queue::{ConsumerGroup, Delivery, DeliveryTag, Envelope, QueueError, Topic};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, ConsumerGroupMetadata, Rebalance,
};
use rdkafka::error::KafkaError as RdError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde_json::Value;
use tracing::{debug, info, warn};

use crate::partitioner::partition_for;
use crate::queue::{KafkaOptions, Shared};

/// Record-key separator in the state changelog: `{kind}\x1f{key}`.
pub(crate) const SEP: char = '\u{1f}';
/// Kind of the executions in the state changelog.
pub(crate) const EXECUTION_KIND: &str = "execution";
/// Kind of the delayed messages in the state changelog.
pub(crate) const DELAYED_KIND: &str = "delayed";

pub(crate) fn record_key(kind: &str, key: &str) -> String {
    format!("{kind}{SEP}{key}")
}

/// A delivery handed out and not yet acknowledged (or acknowledged, until the prefix before it is).
struct Held {
    key: String,
    acked: bool,
}

/// One assigned partition of one topic.
struct Part {
    /// Fetched, not handed out yet, in offset order.
    buffered: VecDeque<Delivery>,
    /// Handed out, by offset.
    outstanding: BTreeMap<i64, Held>,
    /// The offset after the last fetched record.
    next_fetch: Option<i64>,
    /// The last committed position.
    committed: i64,
    /// Being revoked: hand nothing out any more.
    revoking: bool,
    /// The assignment generation it belongs to (units are fenced when it changed).
    generation: u64,
    /// Counting consumers only: set after a crash, the partition is handed out one message at a
    /// time until this run's end.
    recovery: Option<Recovery>,
}

/// A partition's record in the delivery-attempts topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AttemptRecord {
    /// The offset whose delivery is counted.
    pub(crate) offset: i64,
    /// Deliveries of `offset` so far (this one included).
    pub(crate) attempts: u32,
    /// The end (exclusive) of the single-message run; `offset` when there is none.
    pub(crate) end: i64,
}

impl AttemptRecord {
    fn to_json(self) -> Vec<u8> {
        serde_json::json!({"offset": self.offset, "attempts": self.attempts, "end": self.end})
            .to_string()
            .into_bytes()
    }

    fn from_json(bytes: &[u8]) -> Option<AttemptRecord> {
        let v: Value = serde_json::from_slice(bytes).ok()?;
        Some(AttemptRecord {
            offset: v["offset"].as_i64()?,
            attempts: u32::try_from(v["attempts"].as_u64()?).ok()?,
            end: v["end"].as_i64()?,
        })
    }

    /// Whether the partition is in a single-message run (`end` past `offset`).
    pub(crate) fn single(self) -> bool {
        self.end > self.offset
    }

    /// What the owner of a partition starting at `committed` (high watermark `high`) counts, given
    /// the partition's last record: in a single-message run, the record to write when the
    /// message at `committed` is handed out (`attempts` is that delivery's number); otherwise
    /// the record to write before the first batch.
    pub(crate) fn on_assignment(
        last: Option<AttemptRecord>,
        committed: i64,
        high: i64,
    ) -> AttemptRecord {
        let batch = AttemptRecord {
            offset: committed,
            attempts: 1,
            end: committed,
        };
        let Some(r) = last else {
            return batch;
        };
        if high <= committed {
            // Nothing to redeliver.
            return batch;
        }
        match (r.single(), r.offset == committed) {
            // The message at `committed` was handed out alone `r.attempts` times and never
            // acknowledged: each time, the process died with it (or gave it up unfinished).
            (true, true) => AttemptRecord {
                offset: committed,
                attempts: r.attempts.saturating_add(1),
                end: r.end,
            },
            // A single-message run stopped half-way (a rebalance): it goes on.
            (true, false) if r.offset < committed && committed < r.end => AttemptRecord {
                offset: committed,
                attempts: 1,
                end: r.end,
            },
            // A batch from `committed` may have been handed out and crashed the process: its
            // messages, up to the high watermark (past anything it held), go one at a time. That
            // delivery is not counted (it may not have happened): a poison message costs at most
            // max-delivery-attempts + 1 crashes, never fewer than max-delivery-attempts.
            (false, true) => AttemptRecord {
                offset: committed,
                attempts: 1,
                end: high,
            },
            _ => batch,
        }
    }
}

/// What [`GroupConsumer::take`] hands out: the deliveries, the delivery-attempts records to write
/// first, and the positions (topic, partition, offset) to commit before those records.
type Taken = (
    Vec<Delivery>,
    Vec<(String, AttemptRecord)>,
    Vec<(Topic, i32, i64)>,
);

/// Per assigned partition: its key in the delivery-attempts topic and what its owner counts.
type Counted = HashMap<(Topic, i32), (String, AttemptRecord)>;

/// A single-message run after a crash: the record as last written.
struct Recovery {
    /// The record key in the delivery-attempts topic.
    key: String,
    record: AttemptRecord,
    /// Whether the brokers have `record`.
    written: bool,
}

impl Part {
    fn new(generation: u64) -> Part {
        Part {
            buffered: VecDeque::new(),
            outstanding: BTreeMap::new(),
            next_fetch: None,
            committed: -1,
            revoking: false,
            generation,
            recovery: None,
        }
    }

    /// The position to commit: the first offset not acknowledged yet, if it moved.
    fn advance(&mut self) -> Option<i64> {
        while let Some(e) = self.outstanding.first_entry() {
            if e.get().acked {
                e.remove();
            } else {
                break;
            }
        }
        let next = self.next_fetch?;
        let mut pos = next;
        if let Some((o, _)) = self.outstanding.first_key_value() {
            pos = pos.min(*o);
        }
        if let Some(d) = self.buffered.front() {
            pos = pos.min(d.tag.offset);
        }
        (pos > self.committed).then_some(pos)
    }
}

/// A delayed message held in the state store until it is due.
#[derive(Clone)]
pub(crate) struct DelayedEntry {
    pub(crate) record_key: String,
    pub(crate) envelope: Envelope,
}

impl DelayedEntry {
    pub(crate) fn to_json(&self) -> Value {
        let mut v = serde_json::json!({
            "topic": self.envelope.topic.as_str(),
            "key": self.envelope.key,
            "deliverAt": self.envelope.deliver_at.map(|d| d.timestamp_millis()),
        });
        match std::str::from_utf8(&self.envelope.payload) {
            Ok(s) => v["payload"] = Value::String(s.to_string()),
            Err(_) => v["bytes"] = Value::from(self.envelope.payload.to_vec()),
        }
        v
    }

    fn from_json(record_key: &str, v: &Value) -> Option<DelayedEntry> {
        let topic: Topic = v["topic"].as_str()?.parse().ok()?;
        let key = v["key"].as_str()?.to_string();
        let payload = match v["payload"].as_str() {
            Some(s) => Bytes::from(s.to_string()),
            None => Bytes::from(
                v["bytes"]
                    .as_array()?
                    .iter()
                    .map(|b| b.as_u64().map(|b| b as u8))
                    .collect::<Option<Vec<u8>>>()?,
            ),
        };
        let at = DateTime::from_timestamp_millis(v["deliverAt"].as_i64()?)?;
        let mut envelope = Envelope::new(topic, key, payload);
        envelope.deliver_at = Some(at);
        Some(DelayedEntry {
            record_key: record_key.to_string(),
            envelope,
        })
    }
}

#[derive(Default)]
struct State {
    parts: HashMap<(Topic, i32), Part>,
    /// Every assigned partition number, with the generation it was assigned in.
    owned: BTreeMap<i32, u64>,
    generation: u64,
    paused: bool,
    /// Units only: the executor state of each owned partition number (record key -> value).
    store: HashMap<i32, HashMap<String, Value>>,
    /// Units only: delayed messages of each owned partition number (record key -> entry).
    delayed: HashMap<i32, BTreeMap<String, DelayedEntry>>,
}

pub(crate) struct Inner {
    shared: Arc<Shared>,
    group: ConsumerGroup,
    topics: Vec<Topic>,
    names: HashMap<String, Topic>,
    /// The topic names subscribed to.
    subscription: Vec<String>,
    /// The consumer group id on the brokers.
    group_id: String,
    /// Units only: the compacted changelog its state store is restored from.
    state_topic: Option<String>,
    /// Subscribed only to own partitions of the changelog (a store, no messages): paused.
    store_only: bool,
    units: bool,
    /// Whether deliveries are counted through the delivery-attempts topic: the executor's units
    /// and the workers' receive of their jobs (the consumers that act on [`Delivery::attempt`]).
    counts: bool,
    state: Mutex<State>,
    cond: Condvar,
    notify: tokio::sync::Notify,
    stop: AtomicBool,
    consumer: Mutex<Option<Arc<BaseConsumer<Ctx>>>>,
    /// Units only: the transactional producer of this consumer instance, one transaction at a time.
    pub(crate) txn: Option<Mutex<FutureProducer>>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Consumer context: the rebalance callbacks.
pub(crate) struct Ctx {
    inner: std::sync::Weak<Inner>,
}

impl ClientContext for Ctx {}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        if let Rebalance::Revoke(tpl) = rebalance {
            inner.revoke(consumer, tpl);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        match rebalance {
            Rebalance::Assign(tpl) => inner.assign(consumer, tpl),
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => warn!(group = %inner.group, error = %e, "Kafka rebalance error"),
        }
    }
}

/// How long counting the delivery attempts of newly assigned partitions is tried before giving
/// up (each try waits up to 10 s for the broker). A broker holding many partitions has been seen
/// to answer metadata requests with timeouts for ~30 s after a restart of its clients; the budget
/// outlasts that, and stays well under the group's `max.poll.interval.ms` (the callback blocks).
const COUNT_BUDGET: Duration = Duration::from_secs(75);

impl Inner {
    fn parts_of(&self, tpl: &TopicPartitionList) -> Vec<(Topic, i32)> {
        tpl.elements()
            .iter()
            .filter_map(|e| Some((*self.names.get(e.topic())?, e.partition())))
            .collect()
    }

    /// Partitions are being revoked: stop handing them out, wait (bounded) for the deliveries
    /// handed out to be acknowledged, commit, forget them.
    fn revoke(&self, consumer: &BaseConsumer<Ctx>, tpl: &TopicPartitionList) {
        let parts = self.parts_of(tpl);
        let stopping = self.stop.load(Ordering::SeqCst);
        let mut st = self.lock();
        for p in &parts {
            if let Some(part) = st.parts.get_mut(p) {
                part.revoking = true;
            }
        }
        if !stopping {
            let deadline = Instant::now() + self.shared.options.revoke_grace;
            loop {
                let pending = parts.iter().any(|p| {
                    st.parts
                        .get(p)
                        .is_some_and(|part| part.outstanding.values().any(|h| !h.acked))
                });
                let now = Instant::now();
                if !pending || now >= deadline {
                    if pending {
                        warn!(group = %self.group, "partitions revoked with deliveries still unacknowledged after the grace period: they will be delivered again");
                    }
                    break;
                }
                st = self
                    .cond
                    .wait_timeout(st, deadline - now)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            let mut commit = TopicPartitionList::new();
            for p in &parts {
                if let Some(part) = st.parts.get_mut(p)
                    && let Some(pos) = part.advance()
                {
                    let _ = commit.add_partition_offset(
                        &self.shared.options.topic_name(p.0),
                        p.1,
                        Offset::Offset(pos),
                    );
                    part.committed = pos;
                }
            }
            if commit.count() > 0
                && let Err(e) = consumer.commit(&commit, CommitMode::Sync)
            {
                warn!(group = %self.group, error = %e, "offset commit on revocation failed");
            }
        }
        for p in &parts {
            st.parts.remove(p);
        }
        for e in tpl.elements() {
            st.owned.remove(&e.partition());
        }
        let owned: BTreeSet<i32> = st.owned.keys().copied().collect();
        st.store.retain(|p, _| owned.contains(p));
        st.delayed.retain(|p, _| owned.contains(p));
        st.generation += 1;
        debug!(group = %self.group, revoked = parts.len(), "partitions revoked");
    }

    fn assign(&self, consumer: &BaseConsumer<Ctx>, tpl: &TopicPartitionList) {
        let parts = self.parts_of(tpl);
        let numbers: BTreeSet<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        if self.store_only
            && let Err(e) = consumer.pause(tpl)
        {
            warn!(group = %self.group, error = %e, "pausing a store-only consumer failed");
        }
        let counted = if self.counts {
            // A transient failure (the group coordinator busy with the rebalance: "Meta data
            // fetch error") is tried again: given up, redeliveries after a crash count as first
            // deliveries and a message that kills the process gets crashes more than its limit.
            // The reads are tried again, the write of the records (once the reads succeeded) is
            // not: written twice, a crash would be counted twice.
            let deadline = Instant::now() + COUNT_BUDGET;
            let mut tries = 1;
            let read = loop {
                match self.count_attempts(tpl) {
                    Ok(c) => break Ok(c),
                    Err(e) if Instant::now() < deadline && !self.stop.load(Ordering::SeqCst) => {
                        warn!(group = %self.group, error = %e, tries, "counting the delivery attempts of the assigned partitions failed; trying again");
                        tries += 1;
                        std::thread::sleep(Duration::from_secs(1));
                    }
                    Err(e) => break Err(e),
                }
            };
            match read.and_then(|c| self.write_counted(&c).map(|()| c)) {
                Ok(c) => c,
                Err(e) => {
                    warn!(group = %self.group, error = %e, "counting the delivery attempts of the assigned partitions failed: redeliveries after a crash are counted as first deliveries");
                    HashMap::new()
                }
            }
        } else {
            HashMap::new()
        };
        let restored = if self.units {
            match self.restore(&numbers) {
                Ok(r) => Some(r),
                Err(e) => {
                    warn!(group = %self.group, error = %e, "restoring the executor state failed");
                    None
                }
            }
        } else {
            None
        };
        let mut st = self.lock();
        st.generation += 1;
        st.paused = false;
        let generation = st.generation;
        for p in &parts {
            let mut part = Part::new(generation);
            if let Some((key, record)) = counted.get(p)
                && record.single()
            {
                warn!(group = %self.group, topic = %p.0, partition = p.1, offset = record.offset, attempts = record.attempts, end = record.end, "redelivery after a crash: handing this partition out one message at a time");
                part.recovery = Some(Recovery {
                    key: key.clone(),
                    record: *record,
                    written: false,
                });
            }
            st.parts.insert(*p, part);
        }
        for n in &numbers {
            st.owned.insert(*n, generation);
        }
        if let Some((store, delayed)) = restored {
            st.store.extend(store);
            st.delayed.extend(delayed);
        }
        info!(group = %self.group, topics = ?self.topics, partitions = parts.len(), "partitions assigned");
        drop(st);
        self.notify.notify_waiters();
    }

    /// For each assigned partition: its committed offset, its last delivery-attempts record, and
    /// the record this owner writes (by [`Inner::write_counted`], before anything is handed out).
    /// Reads only: may be tried again.
    fn count_attempts(&self, tpl: &TopicPartitionList) -> Result<Counted, QueueError> {
        let rd = |operation| move |e| Shared::backend(operation, e);
        let options = &self.shared.options;
        let parts = self.parts_of(tpl);
        if parts.is_empty() {
            return Ok(HashMap::new());
        }
        let timeout = Duration::from_secs(10);
        // Same group id (for its committed offsets), never subscribed, never committing.
        let reader: BaseConsumer = options
            .client_config()
            .set("group.id", &self.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .create()
            .map_err(rd("delivery attempts (reader)"))?;
        let mut asked = TopicPartitionList::new();
        for (t, p) in &parts {
            asked.add_partition(&options.topic_name(*t), *p);
        }
        let committed = reader
            .committed_offsets(asked, timeout)
            .map_err(rd("delivery attempts (committed offsets)"))?;
        // The watermarks before the read: once the reader is assigned, each query waits on it.
        let mut marks = Vec::with_capacity(parts.len());
        for (t, p) in parts {
            let name = options.topic_name(t);
            let (low, high) = reader
                .fetch_watermarks(&name, p, timeout)
                .map_err(rd("delivery attempts (watermarks)"))?;
            marks.push((t, p, name, low, high));
        }
        let last = read_attempts(&reader, &options.delivery_attempts_topic(), &self.group_id)
            .map_err(rd("delivery attempts (read)"))?;
        let mut out = HashMap::new();
        for (t, p, name, low, high) in marks {
            let start = match committed.find_partition(&name, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => low,
            };
            let key = attempts_key(&self.group_id, &name, p);
            let record = AttemptRecord::on_assignment(last.get(&key).copied(), start, high);
            out.insert((t, p), (key, record));
        }
        Ok(out)
    }

    /// Write the attempt records of `counted` ([`Inner::count_attempts`]); a single-message run
    /// writes its record when it hands its message out.
    fn write_counted(&self, counted: &Counted) -> Result<(), QueueError> {
        let records: Vec<(String, AttemptRecord)> = counted
            .values()
            .filter(|(_, r)| !r.single())
            .cloned()
            .collect();
        futures::executor::block_on(write_attempts(&self.shared, &records))
    }

    /// Read this consumer's changelog partitions `numbers` from the start into a store.
    #[allow(clippy::type_complexity)]
    fn restore(
        &self,
        numbers: &BTreeSet<i32>,
    ) -> Result<
        (
            HashMap<i32, HashMap<String, Value>>,
            HashMap<i32, BTreeMap<String, DelayedEntry>>,
        ),
        RdError,
    > {
        let Some(name) = self.state_topic.clone() else {
            return Ok((HashMap::new(), HashMap::new()));
        };
        read_changelog(&self.shared.options, &name, numbers)
    }

    fn on_record(&self, m: &rdkafka::message::BorrowedMessage<'_>) {
        let Some(topic) = self.names.get(m.topic()).copied() else {
            return;
        };
        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
        let payload = Bytes::copy_from_slice(m.payload().unwrap_or_default());
        let (p, offset) = (m.partition(), m.offset());
        let published_at = m
            .timestamp()
            .to_millis()
            .and_then(chrono::DateTime::from_timestamp_millis);
        tracing::trace!(
            group = %self.group,
            %topic,
            partition = p,
            offset,
            age_ms = published_at.map(|at| (Utc::now() - at).num_milliseconds()),
            "record fetched"
        );
        let mut st = self.lock();
        let Some(part) = st.parts.get_mut(&(topic, p)) else {
            return;
        };
        if part.next_fetch.is_some_and(|n| offset < n) {
            return;
        }
        part.next_fetch = Some(offset + 1);
        part.buffered.push_back(Delivery {
            tag: DeliveryTag {
                topic,
                partition: p,
                offset,
            },
            group: self.group,
            envelope: Envelope::new(topic, key, payload),
            attempt: 1,
            published_at,
        });
    }

    fn buffered(&self) -> usize {
        self.lock().parts.values().map(|p| p.buffered.len()).sum()
    }

    /// Fire the delayed messages that are due, in a transaction that deletes them from the store.
    fn fire_due(&self) {
        let Some(txn) = &self.txn else { return };
        let now = Utc::now();
        let due: Vec<(i32, DelayedEntry)> = {
            let st = self.lock();
            st.delayed
                .iter()
                .flat_map(|(p, m)| m.values().map(move |e| (*p, e)))
                .filter(|(_, e)| e.envelope.deliver_at.is_some_and(|at| at <= now))
                .map(|(p, e)| (p, e.clone()))
                .collect()
        };
        if due.is_empty() {
            return;
        }
        let options = &self.shared.options;
        let Some(state_topic) = self.state_topic.clone() else {
            return;
        };
        let producer = txn.lock().unwrap_or_else(PoisonError::into_inner);
        let result = (|| -> Result<(), RdError> {
            producer.begin_transaction()?;
            for (p, e) in &due {
                let name = options.topic_name(e.envelope.topic);
                producer
                    .send_result(
                        FutureRecord::to(&name)
                            .key(e.envelope.key.as_bytes())
                            .payload(e.envelope.payload.as_ref())
                            .partition(partition_for(&e.envelope.key, options.partitions)),
                    )
                    .map_err(|(e, _)| e)?;
                producer
                    .send_result(
                        FutureRecord::<[u8], [u8]>::to(&state_topic)
                            .key(e.record_key.as_bytes())
                            .partition(*p),
                    )
                    .map_err(|(e, _)| e)?;
            }
            crate::queue::commit_transaction(&producer, Duration::from_secs(30))
        })();
        match result {
            Ok(()) => {
                let mut st = self.lock();
                for (p, e) in &due {
                    if let Some(m) = st.delayed.get_mut(p) {
                        m.remove(&e.record_key);
                    }
                }
                debug!(fired = due.len(), "delayed messages produced");
            }
            Err(e) => {
                let _ = producer.abort_transaction(Duration::from_secs(30));
                warn!(error = %e, "producing due delayed messages failed; retried later");
            }
        }
    }

    fn run(self: Arc<Self>, consumer: Arc<BaseConsumer<Ctx>>) {
        let options = &self.shared.options;
        let refs: Vec<&str> = self.subscription.iter().map(String::as_str).collect();
        if let Err(e) = consumer.subscribe(&refs) {
            warn!(group = %self.group, error = %e, "Kafka subscribe failed");
        }
        // While the consumer joins its group (in librdkafka's threads).
        if let Some(txn) = &self.txn {
            let producer = txn.lock().unwrap_or_else(PoisonError::into_inner);
            if let Err(e) = producer.init_transactions(Duration::from_secs(30)) {
                warn!(error = %e, "init_transactions failed: units of work of this consumer will fail");
            }
        }
        let mut last_fire = Instant::now();
        while !self.stop.load(Ordering::SeqCst) {
            match consumer.poll(Duration::from_millis(50)) {
                Some(Ok(m)) => {
                    self.on_record(&m);
                    // Drain what is already fetched before waking the receivers.
                    while let Some(Ok(m)) = consumer.poll(Duration::ZERO) {
                        self.on_record(&m);
                    }
                    self.notify.notify_waiters();
                }
                Some(Err(e)) => debug!(group = %self.group, error = %e, "Kafka consumer error"),
                None => {}
            }
            let buffered = self.buffered();
            let paused = self.lock().paused;
            if !paused && buffered >= options.prefetch {
                if let Ok(a) = consumer.assignment()
                    && consumer.pause(&a).is_ok()
                {
                    self.lock().paused = true;
                }
            } else if paused
                && buffered < options.prefetch / 2
                && let Ok(a) = consumer.assignment()
                && consumer.resume(&a).is_ok()
            {
                self.lock().paused = false;
            }
            if self.units && last_fire.elapsed() >= Duration::from_millis(100) {
                self.fire_due();
                last_fire = Instant::now();
            }
        }
        *self.consumer.lock().unwrap_or_else(PoisonError::into_inner) = None;
        consumer.unsubscribe();
        drop(consumer);
        debug!(group = %self.group, topics = ?self.topics, "Kafka consumer closed");
    }
}

/// A competing consumer of (group, topics) for one queue handle.
pub(crate) struct GroupConsumer {
    pub(crate) inner: Arc<Inner>,
}

impl GroupConsumer {
    pub(crate) fn start(
        shared: Arc<Shared>,
        group: ConsumerGroup,
        topics: Vec<Topic>,
        units: bool,
    ) -> Result<GroupConsumer, QueueError> {
        let subscription = topics
            .iter()
            .map(|t| shared.options.topic_name(*t))
            .collect();
        let state_topic = units.then(|| shared.options.state_topic());
        GroupConsumer::start_with(shared, group, topics, subscription, state_topic, units)
    }

    /// A store-only member of `{prefix}{group}.store`: subscribed to the compacted `state_topic`
    /// only to own some of its partitions (restored on assignment, never consumed as messages),
    /// with a transactional producer for the units that write it.
    pub(crate) fn start_store(
        shared: Arc<Shared>,
        group: ConsumerGroup,
        state_topic: String,
    ) -> Result<GroupConsumer, QueueError> {
        GroupConsumer::start_with(
            shared,
            group,
            Vec::new(),
            vec![state_topic.clone()],
            Some(state_topic),
            true,
        )
    }

    fn start_with(
        shared: Arc<Shared>,
        group: ConsumerGroup,
        topics: Vec<Topic>,
        subscription: Vec<String>,
        state_topic: Option<String>,
        units: bool,
    ) -> Result<GroupConsumer, QueueError> {
        let store_only = topics.is_empty();
        let options = &shared.options;
        // Units: one group member over every topic of the group (co-partitioned), which owns the
        // state of its partitions; receive: a group per (group, topic).
        let topic_part = if store_only {
            "store".to_string()
        } else if units {
            "units".to_string()
        } else {
            topics
                .iter()
                .map(|t| t.as_str())
                .collect::<Vec<_>>()
                .join("+")
        };
        let group_id = format!("{}{}.{}", options.prefix, group.as_str(), topic_part);
        let txn = if units {
            let producer: FutureProducer = options
                .transactional_config(format!("{group_id}-{}", kestra_core::model::new_id()))
                .set("transaction.timeout.ms", "60000")
                .create()
                .map_err(|e| Shared::backend("transactional producer creation", e))?;
            Some(Mutex::new(producer))
        } else {
            None
        };
        let inner = Arc::new(Inner {
            group_id: group_id.clone(),
            names: topics
                .iter()
                .map(|t| (options.topic_name(*t), *t))
                .collect(),
            subscription,
            state_topic,
            store_only,
            shared: shared.clone(),
            group,
            counts: !store_only && (units || group == ConsumerGroup::Worker),
            topics,
            units,
            state: Mutex::new(State::default()),
            cond: Condvar::new(),
            notify: tokio::sync::Notify::new(),
            stop: AtomicBool::new(false),
            consumer: Mutex::new(None),
            txn,
        });
        let session = options.session_timeout.as_millis().to_string();
        let heartbeat = (options.session_timeout.as_millis() / 5)
            .max(100)
            .to_string();
        let consumer: BaseConsumer<Ctx> = options
            .client_config()
            .set("group.id", &group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("partition.assignment.strategy", "range")
            .set("session.timeout.ms", &session)
            .set("heartbeat.interval.ms", &heartbeat)
            .set("fetch.wait.max.ms", "50")
            .set("allow.auto.create.topics", "false")
            .create_with_context(Ctx {
                inner: Arc::downgrade(&inner),
            })
            .map_err(|e| Shared::backend("consumer creation", e))?;
        let consumer = Arc::new(consumer);
        *inner
            .consumer
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(consumer.clone());
        let runner = inner.clone();
        std::thread::Builder::new()
            .name(format!("kafka-{group_id}"))
            .spawn(move || runner.run(consumer))
            .map_err(|e| QueueError::backend("consumer thread", e))?;
        Ok(GroupConsumer { inner })
    }

    pub(crate) fn stop(&self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        self.inner.cond.notify_all();
    }

    /// Hand out up to `max` deliveries: per partition in offset order, skipping keys this consumer
    /// holds from an earlier call. A partition in a single-message run after a crash goes first,
    /// alone, one message at a time; the record to write before handing it out comes with it, and
    /// for a competing receive the position to commit before that record is written.
    fn take(&self, max: usize, topics: &[Topic]) -> Taken {
        let mut st = self.inner.lock();
        let mut writes = Vec::new();
        let mut commits = Vec::new();
        // A unit's transaction has committed everything before the front already.
        let commit_first = !self.inner.units;
        for ((topic, p), part) in st.parts.iter_mut() {
            let Some(recovery) = &mut part.recovery else {
                continue;
            };
            if part.outstanding.values().any(|h| !h.acked) {
                continue;
            }
            let Some(front) = part.buffered.front().map(|d| d.tag.offset) else {
                continue;
            };
            if !recovery.record.single() || front >= recovery.record.end {
                // The run is over: batches again, once the record says so.
                if recovery.written && !recovery.record.single() {
                    part.recovery = None;
                } else {
                    recovery.record = AttemptRecord {
                        offset: front,
                        attempts: 1,
                        end: front,
                    };
                    recovery.written = false;
                    writes.push((recovery.key.clone(), recovery.record));
                    if commit_first {
                        commits.push((*topic, *p, front));
                    }
                }
                continue;
            }
            if part.revoking || !topics.contains(topic) || !writes.is_empty() {
                continue;
            }
            let Some(mut d) = part.buffered.pop_front() else {
                continue;
            };
            if front != recovery.record.offset {
                // The next message of the run: its first delivery alone.
                recovery.record = AttemptRecord {
                    offset: front,
                    attempts: 1,
                    end: recovery.record.end,
                };
                recovery.written = false;
            }
            if !recovery.written {
                writes.push((recovery.key.clone(), recovery.record));
                if commit_first {
                    commits.push((*topic, *p, front));
                }
            }
            d.attempt = recovery.record.attempts;
            part.outstanding.insert(
                front,
                Held {
                    key: d.envelope.key.clone(),
                    acked: false,
                },
            );
            return (vec![d], writes, commits);
        }
        if !writes.is_empty() {
            return (Vec::new(), writes, commits);
        }
        let mut out = Vec::new();
        for ((topic, _), part) in st.parts.iter_mut() {
            if part.recovery.is_some() {
                continue;
            }
            if out.len() >= max {
                break;
            }
            if part.revoking || part.buffered.is_empty() || !topics.contains(topic) {
                continue;
            }
            let mut held: HashSet<String> = part
                .outstanding
                .values()
                .filter(|h| !h.acked)
                .map(|h| h.key.clone())
                .collect();
            let mut now_taken: HashSet<String> = HashSet::new();
            let mut i = 0;
            while i < part.buffered.len() && out.len() < max {
                let key = &part.buffered[i].envelope.key;
                if held.contains(key) && !now_taken.contains(key) {
                    i += 1;
                    continue;
                }
                let Some(d) = part.buffered.remove(i) else {
                    break;
                };
                let key = d.envelope.key.clone();
                part.outstanding.insert(
                    d.tag.offset,
                    Held {
                        key: key.clone(),
                        acked: false,
                    },
                );
                held.insert(key.clone());
                now_taken.insert(key);
                out.push(d);
            }
        }
        (out, writes, commits)
    }

    /// [`GroupConsumer::take`], waiting up to `wait` for the first delivery.
    pub(crate) async fn take_waiting(
        &self,
        topics: &[Topic],
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let got = self.take_counted(max, topics).await?;
            if !got.is_empty() {
                return Ok(got);
            }
            if self.inner.stop.load(Ordering::SeqCst) {
                return Err(QueueError::Closed);
            }
            // Wake up at least every 100 ms: a key released by an acknowledgement frees messages
            // that no fetch announces.
            let step = (tokio::time::Instant::now() + Duration::from_millis(100)).min(deadline);
            if tokio::time::timeout_at(step, notified).await.is_err()
                && tokio::time::Instant::now() >= deadline
            {
                return self.take_counted(max, topics).await;
            }
        }
    }

    /// [`GroupConsumer::take`], with the delivery-attempts record of a message handed out alone
    /// written before it is handed out (and, for a competing receive, its position committed
    /// before that).
    async fn take_counted(
        &self,
        max: usize,
        topics: &[Topic],
    ) -> Result<Vec<Delivery>, QueueError> {
        loop {
            let (got, writes, commits) = self.take(max, topics);
            if writes.is_empty() {
                return Ok(got);
            }
            if let Err(e) = self.commit_now(&commits).await {
                self.release(&got);
                return Err(e);
            }
            if let Err(e) = write_attempts(&self.inner.shared, &writes).await {
                self.release(&got);
                return Err(e);
            }
            let mut st = self.inner.lock();
            for part in st.parts.values_mut() {
                if let Some(r) = &mut part.recovery
                    && writes.contains(&(r.key.clone(), r.record))
                {
                    r.written = true;
                }
            }
            drop(st);
            if !got.is_empty() {
                return Ok(got);
            }
        }
    }

    /// Commit the positions `commits` (topic, partition, offset) and wait until the group
    /// coordinator has them (a single-message run of a competing receive, whose acknowledgements
    /// commit asynchronously).
    async fn commit_now(&self, commits: &[(Topic, i32, i64)]) -> Result<(), QueueError> {
        if commits.is_empty() {
            return Ok(());
        }
        let Some(consumer) = self
            .inner
            .consumer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        else {
            return Err(QueueError::Closed);
        };
        let mut tpl = TopicPartitionList::new();
        for (topic, p, offset) in commits {
            tpl.add_partition_offset(
                &self.inner.shared.options.topic_name(*topic),
                *p,
                Offset::Offset(*offset),
            )
            .map_err(|e| Shared::backend("delivery attempts (offset commit)", e))?;
        }
        tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync))
            .await
            .map_err(|e| QueueError::backend("delivery attempts (offset commit)", e))?
            .map_err(|e| Shared::backend("delivery attempts (offset commit)", e))
    }

    /// Put deliveries handed out back in front of their partitions (a refused recorded receive, a
    /// unit dropped without commit): they are handed out again.
    pub(crate) fn release(&self, deliveries: &[Delivery]) {
        let mut st = self.inner.lock();
        for d in deliveries.iter().rev() {
            let Some(part) = st.parts.get_mut(&(d.tag.topic, d.tag.partition)) else {
                continue;
            };
            if part.outstanding.remove(&d.tag.offset).is_none() {
                continue;
            }
            let at = part
                .buffered
                .partition_point(|b| b.tag.offset < d.tag.offset);
            part.buffered.insert(at, d.clone());
        }
        drop(st);
        self.inner.notify.notify_waiters();
    }

    /// Mark `tags` acknowledged; returns the positions to commit.
    fn mark_acked(&self, st: &mut State, tags: &[DeliveryTag]) -> TopicPartitionList {
        let mut touched = BTreeSet::new();
        for t in tags {
            if let Some(part) = st.parts.get_mut(&(t.topic, t.partition))
                && let Some(h) = part.outstanding.get_mut(&t.offset)
            {
                h.acked = true;
                touched.insert((t.topic, t.partition));
            }
        }
        let mut tpl = TopicPartitionList::new();
        for (topic, p) in touched {
            if let Some(part) = st.parts.get_mut(&(topic, p))
                && let Some(pos) = part.advance()
            {
                let _ = tpl.add_partition_offset(
                    &self.inner.shared.options.topic_name(topic),
                    p,
                    Offset::Offset(pos),
                );
                part.committed = pos;
            }
        }
        tpl
    }

    /// Acknowledge: mark, then commit the contiguous acknowledged prefix of each partition.
    pub(crate) fn ack(&self, tags: &[DeliveryTag]) -> Result<(), QueueError> {
        let tpl = {
            let mut st = self.inner.lock();
            self.mark_acked(&mut st, tags)
        };
        self.inner.cond.notify_all();
        self.inner.notify.notify_waiters();
        if tpl.count() == 0 {
            return Ok(());
        }
        let consumer = self
            .inner
            .consumer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(c) = consumer {
            c.commit(&tpl, CommitMode::Async)
                .map_err(|e| Shared::backend("ack (offset commit)", e))?;
        }
        Ok(())
    }

    /// Mark deliveries whose offsets a committed transaction carried as acknowledged.
    pub(crate) fn acked_by_transaction(&self, tags: &[DeliveryTag]) {
        {
            let mut st = self.inner.lock();
            let _ = self.mark_acked(&mut st, tags);
        }
        self.inner.cond.notify_all();
        self.inner.notify.notify_waiters();
    }

    /// The positions to commit if `tags` were acknowledged (for `send_offsets_to_transaction`).
    pub(crate) fn positions_after(&self, tags: &[DeliveryTag]) -> TopicPartitionList {
        let st = self.inner.lock();
        let mut tpl = TopicPartitionList::new();
        let touched: BTreeSet<(Topic, i32)> = tags.iter().map(|t| (t.topic, t.partition)).collect();
        let mine: HashSet<(Topic, i32, i64)> = tags
            .iter()
            .map(|t| (t.topic, t.partition, t.offset))
            .collect();
        for (topic, p) in touched {
            let Some(part) = st.parts.get(&(topic, p)) else {
                continue;
            };
            let Some(next) = part.next_fetch else {
                continue;
            };
            let mut pos = next;
            if let Some((o, _)) = part
                .outstanding
                .iter()
                .find(|(o, h)| !h.acked && !mine.contains(&(topic, p, **o)))
            {
                pos = pos.min(*o);
            }
            if let Some(d) = part.buffered.front() {
                pos = pos.min(d.tag.offset);
            }
            let _ = tpl.add_partition_offset(
                &self.inner.shared.options.topic_name(topic),
                p,
                Offset::Offset(pos),
            );
        }
        tpl
    }

    /// Whether this consumer holds `tag` (handed out, not acknowledged, partition still owned).
    pub(crate) fn holds(&self, tag: &DeliveryTag) -> bool {
        self.inner
            .lock()
            .parts
            .get(&(tag.topic, tag.partition))
            .and_then(|p| p.outstanding.get(&tag.offset))
            .is_some_and(|h| !h.acked)
    }

    /// The assignment generation of a partition this consumer owns.
    pub(crate) fn generation_of(&self, topic: Topic, partition: i32) -> Option<u64> {
        let st = self.inner.lock();
        st.parts
            .get(&(topic, partition))
            .filter(|p| !p.revoking)
            .map(|p| p.generation)
    }

    /// The consumer's group metadata (for `send_offsets_to_transaction`).
    pub(crate) fn group_metadata(&self) -> Option<ConsumerGroupMetadata> {
        self.inner
            .consumer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .and_then(|c| c.group_metadata())
    }

    /// The generation a partition number was assigned in, if this member owns it.
    pub(crate) fn owned_generation(&self, partition: i32) -> Option<u64> {
        self.inner.lock().owned.get(&partition).copied()
    }

    /// Wait (up to `timeout`) until this member owns at least one partition.
    pub(crate) async fn wait_assigned(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.inner.lock().owned.is_empty() {
                return true;
            }
            let step = (tokio::time::Instant::now() + Duration::from_millis(100)).min(deadline);
            if tokio::time::timeout_at(step, notified).await.is_err()
                && tokio::time::Instant::now() >= deadline
            {
                return false;
            }
        }
    }

    /// Every value of the state store whose record key starts with `prefix`.
    pub(crate) fn store_values(&self, prefix: &str) -> Vec<(i32, String, Value)> {
        let st = self.inner.lock();
        st.store
            .iter()
            .flat_map(|(p, m)| {
                m.iter()
                    .filter(|(k, _)| k.starts_with(prefix))
                    .map(move |(k, v)| (*p, k.clone(), v.clone()))
            })
            .collect()
    }

    /// A value of the state store (`None` when the partition is not owned or the key unknown).
    pub(crate) fn store_get(&self, partition: i32, record_key: &str) -> Option<Value> {
        self.inner
            .lock()
            .store
            .get(&partition)
            .and_then(|m| m.get(record_key))
            .cloned()
    }

    /// Apply committed changes to the state store.
    pub(crate) fn store_apply(
        &self,
        changes: &[(i32, String, Option<Value>)],
        delayed: &[(i32, DelayedEntry)],
    ) {
        let mut st = self.inner.lock();
        for (p, k, v) in changes {
            let map = st.store.entry(*p).or_default();
            match v {
                Some(v) => {
                    map.insert(k.clone(), v.clone());
                }
                None => {
                    map.remove(k);
                }
            }
        }
        for (p, e) in delayed {
            st.delayed
                .entry(*p)
                .or_default()
                .insert(e.record_key.clone(), e.clone());
        }
    }
}

impl Drop for GroupConsumer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The key of a partition's record in the delivery-attempts topic.
fn attempts_key(group_id: &str, topic: &str, partition: i32) -> String {
    format!("{group_id}{SEP}{topic}{SEP}{partition}")
}

/// The records of consumer group `group_id` in the delivery-attempts topic `name` (one partition,
/// compacted), read from the start to the end with `reader`.
fn read_attempts(
    reader: &BaseConsumer,
    name: &str,
    group_id: &str,
) -> Result<HashMap<String, AttemptRecord>, RdError> {
    let mut out = HashMap::new();
    let (low, high) = reader.fetch_watermarks(name, 0, Duration::from_secs(10))?;
    if high <= low {
        return Ok(out);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(name, 0, Offset::Beginning)?;
    reader.assign(&tpl)?;
    let mine = format!("{group_id}{SEP}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match reader.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                let Some(key) = m.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                    continue;
                };
                if !key.starts_with(&mine) {
                    continue;
                }
                match m.payload().and_then(AttemptRecord::from_json) {
                    Some(r) => out.insert(key.to_string(), r),
                    None => out.remove(key),
                };
                if m.offset() + 1 >= high {
                    break;
                }
            }
            Some(Err(RdError::PartitionEOF(_))) => break,
            Some(Err(e)) => warn!(error = %e, "reading the delivery attempts"),
            None => {}
        }
    }
    Ok(out)
}

/// Write delivery-attempts records and wait until the brokers have them.
pub(crate) async fn write_attempts(
    shared: &Shared,
    records: &[(String, AttemptRecord)],
) -> Result<(), QueueError> {
    let name = shared.options.delivery_attempts_topic();
    let mut pending = Vec::with_capacity(records.len());
    for (key, record) in records {
        let doc = record.to_json();
        let fut = shared
            .producer
            .send_result(
                FutureRecord::to(&name)
                    .key(key.as_bytes())
                    .payload(&doc[..])
                    .partition(0),
            )
            .map_err(|(e, _)| Shared::backend("delivery attempts (write)", e))?;
        pending.push(fut);
    }
    for fut in pending {
        match fut.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => return Err(Shared::backend("delivery attempts (write)", e)),
            Err(_) => {
                return Err(QueueError::backend(
                    "delivery attempts (write)",
                    std::io::Error::other("the producer dropped the record"),
                ));
            }
        }
    }
    Ok(())
}

/// Read the partitions `numbers` of the compacted changelog `name` from the start (committed
/// records only) into a store (record key -> JSON value) and the delayed messages it holds.
#[allow(clippy::type_complexity)]
pub(crate) fn read_changelog(
    options: &KafkaOptions,
    name: &str,
    numbers: &BTreeSet<i32>,
) -> Result<
    (
        HashMap<i32, HashMap<String, Value>>,
        HashMap<i32, BTreeMap<String, DelayedEntry>>,
    ),
    RdError,
> {
    let mut store: HashMap<i32, HashMap<String, Value>> =
        numbers.iter().map(|p| (*p, HashMap::new())).collect();
    let mut delayed: HashMap<i32, BTreeMap<String, DelayedEntry>> =
        numbers.iter().map(|p| (*p, BTreeMap::new())).collect();
    if numbers.is_empty() {
        return Ok((store, delayed));
    }
    let reader: BaseConsumer = options
        .client_config()
        .set(
            "group.id",
            format!("{}restore-{}", options.prefix, kestra_core::model::new_id()),
        )
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    let mut remaining = BTreeSet::new();
    for p in numbers {
        let (low, high) = reader.fetch_watermarks(name, *p, Duration::from_secs(10))?;
        if high > low {
            tpl.add_partition_offset(name, *p, Offset::Beginning)?;
            remaining.insert(*p);
        }
    }
    if remaining.is_empty() {
        return Ok((store, delayed));
    }
    reader.assign(&tpl)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut records = 0usize;
    while !remaining.is_empty() && Instant::now() < deadline {
        match reader.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                records += 1;
                let Some(key) = m.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                    continue;
                };
                let p = m.partition();
                let value = m
                    .payload()
                    .and_then(|b| serde_json::from_slice::<Value>(b).ok());
                if key.starts_with(&format!("{DELAYED_KIND}{SEP}")) {
                    let map = delayed.entry(p).or_default();
                    match value.as_ref().and_then(|v| DelayedEntry::from_json(key, v)) {
                        Some(e) => {
                            map.insert(key.to_string(), e);
                        }
                        None => {
                            map.remove(key);
                        }
                    }
                } else {
                    let map = store.entry(p).or_default();
                    match value {
                        Some(v) => {
                            map.insert(key.to_string(), v);
                        }
                        None => {
                            map.remove(key);
                        }
                    }
                }
            }
            Some(Err(RdError::PartitionEOF(p))) => {
                remaining.remove(&p);
            }
            Some(Err(e)) => warn!(error = %e, "reading the executor state changelog"),
            None => {}
        }
    }
    if !remaining.is_empty() {
        warn!(partitions = ?remaining, "executor state restore did not reach the end of the changelog within 60 s");
    }
    debug!(
        partitions = numbers.len(),
        records, "executor state restored"
    );
    Ok((store, delayed))
}

#[cfg(test)]
mod tests {
    use super::AttemptRecord;

    fn record(offset: i64, attempts: u32, end: i64) -> AttemptRecord {
        AttemptRecord {
            offset,
            attempts,
            end,
        }
    }

    #[test]
    fn delivery_attempts_on_assignment() {
        let on = AttemptRecord::on_assignment;
        // No record, another offset, or nothing to redeliver: batches, the record rewritten.
        assert_eq!(on(None, 5, 9), record(5, 1, 5));
        assert_eq!(on(Some(record(3, 1, 3)), 5, 9), record(5, 1, 5));
        assert_eq!(on(Some(record(5, 1, 5)), 5, 5), record(5, 1, 5));
        // A batch from 5 was handed out and never acknowledged: one at a time up to the high
        // watermark, the first delivery alone being the first counted.
        assert_eq!(on(Some(record(5, 1, 5)), 5, 9), record(5, 1, 9));
        // The message at 5 was handed out alone twice and never acknowledged: the third.
        assert_eq!(on(Some(record(5, 2, 9)), 5, 12), record(5, 3, 9));
        // A run interrupted after 5 was acknowledged goes on from 6.
        assert_eq!(on(Some(record(5, 2, 9)), 6, 12), record(6, 1, 9));
        // ... and ends at its end.
        assert_eq!(on(Some(record(8, 1, 9)), 9, 12), record(9, 1, 9));
        assert!(!record(9, 1, 9).single() && record(5, 1, 9).single());
        // The record survives a round trip.
        let r = record(7, 3, 11);
        assert_eq!(AttemptRecord::from_json(&r.to_json()), Some(r));
    }
}
