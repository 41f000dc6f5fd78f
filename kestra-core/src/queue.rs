//! The Queue seam: typed, keyed messages between components.
//!
//! Components never call each other; they publish [`Envelope`]s to a [`Topic`] and receive them in
//! one of two ways:
//!
//! - **competing** ([`Queue::receive`]): each message of a topic is delivered to one instance of
//!   each consumer group that [`Topic::groups`] lists (executor, worker, scheduler, indexer). Several
//!   instances of one group share the work.
//! - **broadcast** ([`Queue::subscribe`]): every live subscriber of a topic sees every message published
//!   after it subscribed (kill signals to workers, SSE follow of executions and logs, flow caches).
//!
//! The executor uses a third, transactional way: [`Queue::begin`] returns a [`UnitOfWork`] over a batch
//! of claimed messages in which it loads and saves executions and executor state and stages the messages
//! it emits; [`UnitOfWork::commit`] applies all of it, including the acknowledgement of the claimed
//! messages, or nothing (the atomicity rule of DESIGN.md).
//!
//! # Contract (checked by the conformance suite in `testkit`, run by every backend)
//!
//! The contract is what a log-based queue (Kafka: partitions, consumer groups, transactions) can
//! honour as well as a database table. What only some backends offer is declared in
//! [`QueueCapabilities`] ([`Queue::capabilities`]); the suite checks it where declared and prints
//! what it skips.
//!
//! 1. **Durability.** When [`Queue::publish`] returns `Ok`, the messages survive a crash of the publisher
//!    and of the consumers.
//! 2. **Delivery.** At-least-once per consumer group: a delivery that is never acknowledged is
//!    delivered again once its consumer is gone, and the claimed messages of a unit of work dropped
//!    without commit are delivered again (a crash before commit means redelivery, never loss).
//!    Consumers are idempotent: the executor drops duplicate and stale results by (execution id, task
//!    run id, attempt).
//! 3. **Leases are a hint.** The `lease` given to [`Queue::receive`] and [`Queue::extend_lease`] says
//!    how long the consumer expects to need; it is not a per-message timer every backend runs. A
//!    backend with [`QueueCapabilities::lease_timers`] (JDBC) redelivers a delivery whose lease ended
//!    even though its consumer is alive, and `extend_lease` moves that end; without it (Kafka),
//!    redelivery happens when the consumer is gone (session timeout, rebalance) and `extend_lease`
//!    only reports which deliveries this consumer no longer holds.
//! 4. **One committing unit per key.** Within one (topic, group), messages with the same key are
//!    handed out in the order they were published, and at most one consumer holds the messages of a
//!    key at a time: a message is not handed out to another consumer while an earlier message of its
//!    key is claimed and not yet acknowledged or committed. So at most one unit of work can commit for
//!    a key at a time (Kafka: the one owner of the key's partition). Messages to the executor are
//!    keyed by execution id, so all of them for one execution are processed in order, one at a time;
//!    worker jobs are keyed by task run attempt, so the jobs of one execution never wait for one
//!    another. Messages with different keys have no relative order.
//! 5. **Delay, on executor topics, staged in a unit of work.** A message with
//!    [`Envelope::deliver_at`] in the future is not handed out before that time (retries, pause
//!    timeouts, scheduled starts); ordering per key counts only messages already due. Only the
//!    executor delays messages, so a delayed message is accepted only from
//!    [`UnitOfWork::publish`] and only on an executor topic ([`Topic::accepts_delay`]);
//!    [`Queue::publish`] of a delayed message, or a delayed message on another topic, is refused
//!    with [`QueueError::DelayNotAllowed`] ([`check_publish`] / [`check_staged`]).
//! 6. **Tags name their topic.** A [`DeliveryTag`] carries the topic, partition and offset of the
//!    delivery: the tags of two topics consumed by one group never collide, and acknowledging one
//!    never acknowledges the other.
//! 7. **Size.** A message whose payload exceeds [`QueueCapabilities::max_message_bytes`] is refused
//!    with [`QueueError::TooLarge`] naming its topic and key, and nothing of the call (or of the
//!    unit of work) is applied. A unit of work also refuses an execution whose JSON document exceeds
//!    the maximum (it is a message of the executor's state topic on Kafka). The executor fails the
//!    execution whose processing produced it; the queue never stalls on it.
//! 8. **Fenced.** A unit of work whose consumer lost the ownership of its messages before it could
//!    commit (a zombie: another instance owns the partition now) is refused with
//!    [`QueueError::Fenced`]: nothing it staged is applied, the new owner processes its messages
//!    again. The executor drops the unit's work and goes on.
//! 9. **Dead letters.** A message a consumer cannot decode is set aside with [`Queue::dead_letter`]
//!    (or [`UnitOfWork::dead_letter`]) and never delivered again; the consumer keeps going.
//! 10. **Broadcast** is live only: no replay of messages published before the subscription, best
//!     effort while subscribed (a subscriber that lags too far may lose messages and is told so with
//!     [`QueueError::Lagged`]).
//! 11. **State keyed like the messages.** A [`UnitOfWork`] loads and saves executions and executor
//!     state only under the keys of the messages it claimed ([`Delivery`] keys, any topic); any other
//!     key is refused with [`QueueError::NotClaimed`], before anything is read or staged, and the
//!     unit stays usable. State that belongs to a flow or a trigger is therefore reached through a
//!     message keyed by that flow or trigger ([`Topic::ConcurrencySlot`],
//!     [`Topic::FlowPrecondition`]), so each piece of state has exactly one writer: the consumer that
//!     owns its key.
//! 12. **Recorded receive.** [`Queue::receive_recorded`] claims messages and publishes the records
//!     its consumer derives from them in one step: either both happen or neither (a record refused
//!     as too large leaves the messages unclaimed). A worker records the jobs it holds this way, so
//!     no job is ever held without its record ([`crate::liveness`]).
//!
//! # How the backends meet it
//!
//! - **JDBC** (SQLite, PostgreSQL, MySQL): a queue table with one row per (message, consumer group) and a
//!   monotonically increasing offset (the row id; tags carry the topic, partition 0 and the id).
//!   Competing receive claims rows with `FOR UPDATE SKIP LOCKED` (SQLite: one writer,
//!   `UPDATE ... RETURNING`), excluding keys that have an older unacknowledged row: that exclusion is
//!   the one committing unit per key. Leases are timers (`claimed_until`), so it declares
//!   [`QueueCapabilities::lease_timers`]; acknowledged rows are deleted in batches. A unit's claim
//!   (with its delivery count) commits in a short transaction of its own, so the count survives a
//!   crash of the process; a claim that meets a redelivery hands it out alone. A unit of work is
//!   one database transaction: claimed rows stay locked by it, the execution row is read
//!   `FOR UPDATE`, and the deletes of consumed rows, the new execution state and the emitted rows
//!   commit together; a delayed row has a future `visible_at`. The maximum message size is
//!   `JdbcOptions::max_message_bytes` (8 MiB by default), checked before anything is written. A
//!   JDBC unit is never fenced (the transaction holds the row locks until it ends). A recorded
//!   receive inserts its records in the claim's transaction. Wake-ups use
//!   `LISTEN/NOTIFY` on PostgreSQL and in-process notification on SQLite, polling as the fallback.
//!   Broadcast reads a short-lived table by offset.
//! - **Kafka**: one topic per [`Topic`], partitioned by key, so one consumer of a group owns a key
//!   at a time (one committing unit per key); each consumer group is a Kafka consumer group and a tag
//!   is (topic, partition, offset) - offsets are per partition of a topic, so the topic is needed.
//!   Acknowledgement commits offsets (the contiguous acknowledged prefix); there are no lease timers:
//!   the lease only sizes `max.poll.interval.ms`, and redelivery happens on rebalance after the
//!   consumer leaves or misses its session timeout. A unit of work is a Kafka transaction
//!   (consume -> process -> produce -> `send_offsets_to_transaction` -> commit) with `read_committed`
//!   consumers; executor state is a compacted topic plus a local store rebuilt on partition
//!   assignment; delayed messages are held in a partition-local store of the executor and produced
//!   when due by the partition's owner, inside a transaction. The executor topics are co-partitioned
//!   (same partition count, same partitioner), so the owner of key K's partition in one topic owns K
//!   in every executor topic and every state store: the key rule (11) means a unit never writes
//!   state of a partition it does not own. A producer fenced by a newer instance
//!   (`ProducerFenced`, or a commit after the partition was revoked) returns [`QueueError::Fenced`];
//!   a record over the producer's `max.request.size` / the topic's `max.message.bytes` (1 MiB by
//!   default) returns [`QueueError::TooLarge`] with the record's topic and key, and the transaction
//!   is aborted. A recorded receive produces its records in a transaction before it hands the
//!   messages out (their offsets are committed at acknowledgement, as for any receive: a consumer
//!   that dies before the records commit leaves its messages uncommitted, so they come back).
//!   Broadcast uses a consumer per subscriber starting at the log end.

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::model::{Execution, TriggerState};

/// A message stream: what the components exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topic {
    /// Executions to process: new executions (API, scheduler, subflows) and executor updates.
    Execution,
    /// Commands and timers on an execution for the executor: kill, resume, restart, retry due, pause
    /// elapsed, scheduled start.
    ExecutionCommand,
    /// Kill signals broadcast to workers (running attempts of an execution must stop).
    ExecutionKilled,
    /// Jobs for workers: a task attempt or a polling trigger evaluation.
    WorkerJob,
    /// Results of task attempts, from workers to the executor.
    WorkerTaskResult,
    /// Results of polling trigger evaluations, from workers to the scheduler.
    WorkerTriggerResult,
    /// A subflow execution ended: the result for its parent execution.
    SubflowExecutionResult,
    /// Log lines, for the indexer (and live follow).
    Log,
    /// Metrics, for the indexer.
    Metric,
    /// Flow changes (caches in executors and schedulers).
    Flow,
    /// Events about a trigger for the schedulers, keyed by trigger uid
    /// ([`TriggerEvent`](crate::messages::TriggerEvent): an execution it started ended).
    Trigger,
    /// Slot requests and releases of flows with a concurrency limit, for the executor; keyed by flow
    /// (`tenant|namespace|flow`), so one unit at a time owns a flow's slots.
    ConcurrencySlot,
    /// Precondition checks of Flow triggers with several conditions, for the executor; keyed by
    /// trigger (`tenant|namespace|flow|trigger`), so one unit at a time owns a trigger's results.
    FlowPrecondition,
    /// Liveness of service instances, keyed by instance id
    /// ([`LivenessMessage`](crate::liveness::LivenessMessage)): heartbeats, the jobs a worker
    /// holds, the executor's delayed checks and its verdicts. Consumed by the executor (which owns
    /// liveness) and the indexer (which shows it).
    Liveness,
    /// Execution changes and tombstones for a repository written asynchronously, keyed by
    /// execution id ([`ExecutionChange`](crate::messages::ExecutionChange)), consumed by the
    /// indexer. Used only where [`QueueCapabilities::repository_in_unit`] is false.
    ExecutionChange,
}

/// A kind of consumer; instances of one group compete for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConsumerGroup {
    /// Executors.
    Executor,
    /// Workers.
    Worker,
    /// Schedulers.
    Scheduler,
    /// Indexers (logs and metrics into the repository).
    Indexer,
}

impl Topic {
    /// Every topic.
    pub const ALL: [Topic; 15] = [
        Topic::Execution,
        Topic::ExecutionCommand,
        Topic::ExecutionKilled,
        Topic::WorkerJob,
        Topic::WorkerTaskResult,
        Topic::WorkerTriggerResult,
        Topic::SubflowExecutionResult,
        Topic::Log,
        Topic::Metric,
        Topic::Flow,
        Topic::Trigger,
        Topic::ConcurrencySlot,
        Topic::FlowPrecondition,
        Topic::Liveness,
        Topic::ExecutionChange,
    ];

    /// Stable name used in tables, topic names and logs (`worker_job`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Topic::Execution => "execution",
            Topic::ExecutionCommand => "execution_command",
            Topic::ExecutionKilled => "execution_killed",
            Topic::WorkerJob => "worker_job",
            Topic::WorkerTaskResult => "worker_task_result",
            Topic::WorkerTriggerResult => "worker_trigger_result",
            Topic::SubflowExecutionResult => "subflow_execution_result",
            Topic::Log => "log",
            Topic::Metric => "metric",
            Topic::Flow => "flow",
            Topic::Trigger => "trigger",
            Topic::ConcurrencySlot => "concurrency_slot",
            Topic::FlowPrecondition => "flow_precondition",
            Topic::Liveness => "liveness",
            Topic::ExecutionChange => "execution_change",
        }
    }

    /// The consumer groups that each receive every message of this topic (competing within a group).
    /// Topics with no group are broadcast-only.
    pub fn groups(self) -> &'static [ConsumerGroup] {
        match self {
            Topic::Execution
            | Topic::ExecutionCommand
            | Topic::WorkerTaskResult
            | Topic::SubflowExecutionResult
            | Topic::ConcurrencySlot
            | Topic::FlowPrecondition => &[ConsumerGroup::Executor],
            Topic::WorkerJob => &[ConsumerGroup::Worker],
            Topic::WorkerTriggerResult | Topic::Trigger => &[ConsumerGroup::Scheduler],
            Topic::Log | Topic::Metric | Topic::ExecutionChange => &[ConsumerGroup::Indexer],
            Topic::Liveness => &[ConsumerGroup::Executor, ConsumerGroup::Indexer],
            Topic::ExecutionKilled | Topic::Flow => &[],
        }
    }

    /// Whether [`Queue::subscribe`] serves this topic: the topics something follows live (kill
    /// signals, liveness verdicts, flow changes for caches, executions and task results for
    /// metrics, logs for live follow, metrics, execution changes). The others (worker jobs,
    /// commands, trigger events and results, subflow results, concurrency slots, preconditions)
    /// go to their consumer groups only: a backend keeps no copy of them for subscribers (JDBC
    /// writes no broadcast row, half the rows of a job) and refuses to subscribe to them
    /// ([`QueueError::NotBroadcast`]).
    pub fn broadcast(self) -> bool {
        match self {
            Topic::Execution
            | Topic::ExecutionKilled
            | Topic::WorkerTaskResult
            | Topic::Log
            | Topic::Metric
            | Topic::Flow
            | Topic::Liveness
            | Topic::ExecutionChange => true,
            Topic::ExecutionCommand
            | Topic::WorkerJob
            | Topic::WorkerTriggerResult
            | Topic::SubflowExecutionResult
            | Topic::Trigger
            | Topic::ConcurrencySlot
            | Topic::FlowPrecondition => false,
        }
    }

    /// Whether a message of this topic may be delayed ([`Envelope::deliver_at`]): only on the topics
    /// the executor consumes, whose delays (retries, pause timers, scheduled starts) a Kafka backend
    /// holds in a partition-local store of the executor.
    pub fn accepts_delay(self) -> bool {
        self.groups().contains(&ConsumerGroup::Executor)
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Topic {
    type Err = QueueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Topic::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| QueueError::UnknownTopic(s.to_string()))
    }
}

impl ConsumerGroup {
    /// Every group.
    pub const ALL: [ConsumerGroup; 4] = [
        ConsumerGroup::Executor,
        ConsumerGroup::Worker,
        ConsumerGroup::Scheduler,
        ConsumerGroup::Indexer,
    ];

    /// Stable name (`executor`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ConsumerGroup::Executor => "executor",
            ConsumerGroup::Worker => "worker",
            ConsumerGroup::Scheduler => "scheduler",
            ConsumerGroup::Indexer => "indexer",
        }
    }
}

impl fmt::Display for ConsumerGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ConsumerGroup {
    type Err = QueueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ConsumerGroup::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| QueueError::UnknownGroup(s.to_string()))
    }
}

/// One message: a topic, a key (the execution id wherever one exists) and a JSON payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Topic.
    pub topic: Topic,
    /// Ordering key.
    pub key: String,
    /// Serialized payload (JSON).
    pub payload: Bytes,
    /// Not delivered before this date (delayed message), if set.
    pub deliver_at: Option<DateTime<Utc>>,
}

impl Envelope {
    /// A message with raw bytes.
    pub fn new(topic: Topic, key: impl Into<String>, payload: impl Into<Bytes>) -> Envelope {
        Envelope {
            topic,
            key: key.into(),
            payload: payload.into(),
            deliver_at: None,
        }
    }

    /// A message whose payload is `value` as JSON.
    pub fn json<T: Serialize + ?Sized>(
        topic: Topic,
        key: impl Into<String>,
        value: &T,
    ) -> Result<Envelope, QueueError> {
        let payload =
            serde_json::to_vec(value).map_err(|source| QueueError::Encode { topic, source })?;
        Ok(Envelope::new(topic, key, payload))
    }

    /// The same message, delayed until `at`. Only a unit of work may stage it, and only on an
    /// executor topic (see the module documentation, point 5).
    pub fn delayed_until(mut self, at: DateTime<Utc>) -> Envelope {
        self.deliver_at = Some(at);
        self
    }

    /// The payload's size in bytes: what [`QueueCapabilities::max_message_bytes`] limits.
    pub fn size(&self) -> usize {
        self.payload.len()
    }

    /// Decode the JSON payload.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, QueueError> {
        serde_json::from_slice(&self.payload).map_err(|source| QueueError::Decode {
            topic: self.topic,
            key: self.key.clone(),
            source,
        })
    }
}

/// Identifies one delivery for acknowledgement: topic, partition (0 on JDBC) and offset. Offsets
/// are per partition of a topic on Kafka, so the tags of two topics consumed by one group differ
/// only by their topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeliveryTag {
    /// The topic the delivery came from.
    pub topic: Topic,
    /// Partition (Kafka) or 0.
    pub partition: i32,
    /// Offset within the partition (JDBC: the row id).
    pub offset: i64,
}

/// A message handed to a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Acknowledgement handle.
    pub tag: DeliveryTag,
    /// The consumer group it was delivered to.
    pub group: ConsumerGroup,
    /// The message.
    pub envelope: Envelope,
    /// 1 for the first delivery, more for redeliveries where the backend counts them. A delivery
    /// whose unit of work was rolled back does not count; one whose consumer died before the unit
    /// ended does, so the executor can set aside a message that crashes it again and again
    /// (`ExecutorConfig::max_delivery_attempts`). JDBC counts every delivery (a claim is committed
    /// with its attempt before the unit starts). Kafka counts the executor's units only: a
    /// consumer that takes a partition over finds, in the `delivery_attempts` topic, whether the
    /// batch at the committed offset was handed out and never committed; it then hands that
    /// partition out one message per unit and counts each delivery alone (the batch delivery
    /// itself is not counted: it may not have happened). Competing receives on Kafka (workers)
    /// always see 1.
    pub attempt: u32,
    /// When the message became deliverable, on the publishing side's clock: its publish time, or
    /// its due time for a delayed message (JDBC: the row's `visible_at`; Kafka: the record's
    /// timestamp, a delayed message being published when due). Every backend sets it (the queue
    /// conformance suite checks it); `None` only in deliveries built by hand. Consumers use it to
    /// tell how far behind they are (the indexer's lag); never for ordering.
    pub published_at: Option<DateTime<Utc>>,
}

/// Errors of the queue seam.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The backend failed (database, broker, network).
    #[error("queue backend error during {operation}: {source}")]
    Backend {
        /// What was being done.
        operation: &'static str,
        /// Underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A payload could not be serialized.
    #[error("cannot encode a message for topic {topic}: {source}")]
    Encode {
        /// Topic.
        topic: Topic,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// A payload could not be decoded (malformed or unknown message: dead-letter it).
    #[error("malformed message on topic {topic} (key {key}): {source}")]
    Decode {
        /// Topic.
        topic: Topic,
        /// Message key.
        key: String,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// A stored topic name is unknown.
    #[error("unknown topic '{0}'")]
    UnknownTopic(String),
    /// A stored consumer group name is unknown.
    #[error("unknown consumer group '{0}'")]
    UnknownGroup(String),
    /// The delivery is no longer held by this consumer (lease expired and redelivered elsewhere).
    #[error("delivery {tag:?} is no longer held by this consumer")]
    LeaseLost {
        /// The delivery.
        tag: DeliveryTag,
    },
    /// A broadcast subscriber fell too far behind and missed `missed` messages.
    #[error("broadcast subscriber lagged and missed {missed} messages")]
    Lagged {
        /// How many were missed (0 if unknown).
        missed: u64,
    },
    /// A unit of work was asked to load or save state under a key none of its claimed messages
    /// carries: that state belongs to the consumer of another key (contract point 11).
    #[error(
        "unit of work refused to {access} '{key}': it claimed no message with that key (state is \
         loaded and saved only under the keys of the claimed messages)"
    )]
    NotClaimed {
        /// What was asked (`load execution`, `save state concurrency`, ...).
        access: String,
        /// The key that was refused.
        key: String,
    },
    /// The queue was shut down.
    #[error("queue is closed")]
    Closed,
    /// [`Queue::subscribe`] to a topic that is not broadcast ([`Topic::broadcast`]).
    #[error(
        "topic {topic} is not broadcast: its messages go to its consumer groups only and cannot be subscribed to"
    )]
    NotBroadcast {
        /// The topic asked for.
        topic: Topic,
    },
    /// A unit of work was refused because its consumer no longer owns its messages (a zombie:
    /// after a rebalance or a missed session timeout another instance owns the partition and
    /// processes them again). Nothing the unit staged is applied.
    #[error("unit of work fenced: another instance owns its messages now ({detail})")]
    Fenced {
        /// What the backend said.
        detail: String,
    },
    /// A message (or an execution saved by a unit of work) is over the backend's maximum size;
    /// nothing of the call or unit is applied.
    #[error(
        "message too large for the queue: topic {topic}, key {key}, {size} bytes (maximum {max} bytes, kestra.queue.max-message-size)"
    )]
    TooLarge {
        /// Topic of the message ([`Topic::Execution`] for an execution a unit saves).
        topic: Topic,
        /// Its key (the execution id for an execution a unit saves).
        key: String,
        /// Its size in bytes.
        size: usize,
        /// The backend's maximum in bytes.
        max: usize,
    },
    /// A delayed message where delays are not allowed (see the module documentation, point 5).
    #[error("delayed message on topic {topic} (key {key}) refused: {reason}")]
    DelayNotAllowed {
        /// Topic.
        topic: Topic,
        /// Key.
        key: String,
        /// Why.
        reason: &'static str,
    },
}

impl QueueError {
    /// Wrap a backend error.
    pub fn backend(
        operation: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> QueueError {
        QueueError::Backend {
            operation,
            source: Box::new(source),
        }
    }
}

/// [`QueueError::NotBroadcast`] unless `topic` is [`Topic::broadcast`]: the check of every
/// [`Queue::subscribe`].
pub fn check_broadcast(topic: Topic) -> Result<(), QueueError> {
    if topic.broadcast() {
        Ok(())
    } else {
        Err(QueueError::NotBroadcast { topic })
    }
}

/// Refuses `key` unless one of `deliveries` carries it (contract point 11); backends call it at the
/// top of [`UnitOfWork::load_execution`], [`UnitOfWork::save_execution`],
/// [`UnitOfWork::load_state`] and [`UnitOfWork::save_state`].
pub fn check_claimed(
    deliveries: &[Delivery],
    access: impl FnOnce() -> String,
    key: &str,
) -> Result<(), QueueError> {
    if deliveries.iter().any(|d| d.envelope.key == key) {
        Ok(())
    } else {
        Err(QueueError::NotClaimed {
            access: access(),
            key: key.to_string(),
        })
    }
}

/// What a backend offers beyond the contract every backend honours, and its limits. The
/// conformance suite consults it and prints what it skips.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueCapabilities {
    /// Leases are per-delivery timers: an unacknowledged delivery is handed out again soon after
    /// its lease ends although its consumer is alive, and [`Queue::extend_lease`] moves that end
    /// (JDBC). Without it, redelivery happens only when the consumer is gone (Kafka).
    pub lease_timers: bool,
    /// The largest payload accepted, in bytes; a larger one is refused with
    /// [`QueueError::TooLarge`].
    pub max_message_bytes: usize,
    /// The unit of work's [`UnitOfWork::save_execution`] writes the very row the execution
    /// repository reads, in the same transaction (JDBC: one database is queue and repository).
    /// Without it (Kafka + Elasticsearch) the repository is written asynchronously by the
    /// indexer: the executor stages an [`ExecutionChange`](crate::messages::ExecutionChange) for
    /// each execution it saves, and a delete travels as a tombstone on
    /// [`Topic::ExecutionChange`].
    pub repository_in_unit: bool,
}

impl QueueCapabilities {
    /// Kafka's default maximum record size (`max.message.bytes`): 1 MiB.
    pub const KAFKA_DEFAULT_MAX_MESSAGE_BYTES: usize = 1024 * 1024;
}

impl Default for QueueCapabilities {
    /// The least a backend offers: no lease timers, Kafka's default 1 MiB maximum.
    fn default() -> Self {
        QueueCapabilities {
            lease_timers: false,
            max_message_bytes: QueueCapabilities::KAFKA_DEFAULT_MAX_MESSAGE_BYTES,
            repository_in_unit: false,
        }
    }
}

fn check_size(message: &Envelope, max: usize) -> Result<(), QueueError> {
    if message.size() > max {
        return Err(QueueError::TooLarge {
            topic: message.topic,
            key: message.key.clone(),
            size: message.size(),
            max,
        });
    }
    Ok(())
}

/// What a backend checks before [`Queue::publish`] writes anything: no delayed message (delays are
/// staged in a unit of work), no payload over `max_message_bytes`.
pub fn check_publish(messages: &[Envelope], max_message_bytes: usize) -> Result<(), QueueError> {
    for m in messages {
        if m.deliver_at.is_some() {
            return Err(QueueError::DelayNotAllowed {
                topic: m.topic,
                key: m.key.clone(),
                reason: "delayed messages are staged in a unit of work (UnitOfWork::publish), not \
                         published directly",
            });
        }
        check_size(m, max_message_bytes)?;
    }
    Ok(())
}

/// What a backend checks before [`UnitOfWork::publish`] stages anything: delays only on executor
/// topics ([`Topic::accepts_delay`]), no payload over `max_message_bytes`.
pub fn check_staged(messages: &[Envelope], max_message_bytes: usize) -> Result<(), QueueError> {
    for m in messages {
        if m.deliver_at.is_some() && !m.topic.accepts_delay() {
            return Err(QueueError::DelayNotAllowed {
                topic: m.topic,
                key: m.key.clone(),
                reason: "only messages to the executor can be delayed",
            });
        }
        check_size(m, max_message_bytes)?;
    }
    Ok(())
}

/// What a unit of work checks before it saves an execution: its JSON document `doc` is not over
/// `max_message_bytes` (on Kafka it is a record of the executor's state topic).
pub fn check_execution_size(
    execution_id: &str,
    doc: &[u8],
    max_message_bytes: usize,
) -> Result<(), QueueError> {
    check_execution_len(execution_id, doc.len(), max_message_bytes)
}

/// [`check_execution_size`] for a backend that knows the document's length without holding it
/// whole (e.g. JDBC, which stores the task runs apart from the execution's row): `len` bytes is
/// not over `max_message_bytes`.
pub fn check_execution_len(
    execution_id: &str,
    len: usize,
    max_message_bytes: usize,
) -> Result<(), QueueError> {
    if len > max_message_bytes {
        return Err(QueueError::TooLarge {
            topic: Topic::Execution,
            key: execution_id.to_string(),
            size: len,
            max: max_message_bytes,
        });
    }
    Ok(())
}

tokio::task_local! {
    static WAIT_STOP: tokio_util::sync::CancellationToken;
}

/// Run `fut` (a consumer's [`Queue::receive`], [`Queue::receive_recorded`] or [`Queue::begin`])
/// so that its wait for messages ends as soon as `stop` is cancelled, as if `wait` had elapsed: a
/// component that shuts down does not sit out its poll. Only the wait is cut short, never a claim
/// in progress (a half-done claim could leave rows locked). Backends that do not look at it
/// ([`wait_stopped`]) wait as before.
pub async fn stoppable<F: std::future::Future>(
    stop: tokio_util::sync::CancellationToken,
    fut: F,
) -> F::Output {
    WAIT_STOP.scope(stop, fut).await
}

/// For backends: resolves when the stop token of the current [`stoppable`] call is cancelled
/// (at once if it already is); never outside of one.
pub async fn wait_stopped() {
    match WAIT_STOP.try_with(Clone::clone) {
        Ok(token) => token.cancelled_owned().await,
        Err(_) => std::future::pending().await,
    }
}

/// For backends: whether the stop token of the current [`stoppable`] call is cancelled.
pub fn wait_stop_requested() -> bool {
    WAIT_STOP
        .try_with(tokio_util::sync::CancellationToken::is_cancelled)
        .unwrap_or(false)
}

/// Derives the records of claimed deliveries, for [`Queue::receive_recorded`].
pub type Recorder = dyn Fn(&[Delivery]) -> Result<Vec<Envelope>, QueueError> + Send + Sync;

/// A stream of broadcast messages.
pub type Subscription = BoxStream<'static, Result<Envelope, QueueError>>;

/// A compacted stream of state a backend keeps in its log and replays from its beginning
/// ([`Queue::replay`]): what a component needs to run without the repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Replayable {
    /// Flow revisions, as published on [`Topic::Flow`] (key `tenant/namespace/id/revision`,
    /// payload a [`FlowRecord`](crate::repository::FlowRecord)).
    Flows,
    /// Trigger states as the schedulers commit them (key: trigger uid, payload a
    /// [`TriggerState`], `None` when the state was deleted).
    TriggerStates,
}

impl fmt::Display for Replayable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Replayable::Flows => "flows",
            Replayable::TriggerStates => "trigger states",
        })
    }
}

/// The source of the [`QueueError::Backend`] of a [`Queue::replay`] by a queue that keeps no log
/// of that stream.
#[derive(Debug, thiserror::Error)]
#[error("this queue keeps no replayable log of {stream}")]
pub struct NotReplayable {
    /// The stream asked for.
    pub stream: Replayable,
}

impl NotReplayable {
    /// Whether `error` says that the queue keeps no such log (not a transient failure).
    pub fn is(error: &QueueError) -> bool {
        matches!(error, QueueError::Backend { source, .. } if source.downcast_ref::<NotReplayable>().is_some())
    }
}

/// One item of a [`Queue::replay`] stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replayed {
    /// A record: its key and payload (`None`: a tombstone, the keyed state was deleted).
    Record {
        /// Key.
        key: String,
        /// Payload (JSON), `None` for a deletion.
        payload: Option<Bytes>,
    },
    /// Every record published before the replay started has been yielded (sent once); what
    /// follows was published since.
    CaughtUp,
}

/// A replay of a [`Replayable`] stream: its records from the beginning, [`Replayed::CaughtUp`]
/// once, then the records published afterwards, as they come.
pub type ReplayStream = BoxStream<'static, Result<Replayed, QueueError>>;

/// The queue seam. See the module documentation for the contract.
#[async_trait]
pub trait Queue: Send + Sync + 'static {
    /// What this backend offers beyond the common contract, and its limits. The default is the
    /// least: no lease timers, a 1 MiB maximum; a backend that offers more says so (wrappers
    /// forward their inner queue's).
    fn capabilities(&self) -> QueueCapabilities {
        QueueCapabilities::default()
    }

    /// Publish messages durably, in order. Each is delivered to every group of its topic and to the
    /// topic's live broadcast subscribers. All or nothing: a delayed message
    /// ([`QueueError::DelayNotAllowed`]) or one over the maximum size ([`QueueError::TooLarge`])
    /// refuses the whole call ([`check_publish`]).
    async fn publish(&self, messages: Vec<Envelope>) -> Result<(), QueueError>;

    /// Competing receive: claim up to `max` due messages of `topic` for `group`, waiting up to `wait`
    /// for the first one to arrive (returns an empty batch on timeout). `lease` is a hint of how long
    /// the consumer needs them: with [`QueueCapabilities::lease_timers`] an unacknowledged delivery
    /// is handed out again after it ends; otherwise when the consumer is gone.
    async fn receive(
        &self,
        group: ConsumerGroup,
        topic: Topic,
        max: usize,
        lease: Duration,
        wait: Duration,
    ) -> Result<Vec<Delivery>, QueueError>;

    /// [`Queue::receive`] that records what it took (contract point 12): `record` derives, from
    /// the claimed deliveries, messages published in the same step as the claim - both happen or
    /// neither. The records are checked as by [`Queue::publish`] ([`check_publish`]): a refused
    /// record leaves the messages unclaimed and returns the error. JDBC: the claim's transaction;
    /// Kafka: the records are produced (several in one transaction, a single one by the idempotent
    /// producer) before the deliveries are handed out.
    async fn receive_recorded(
        &self,
        group: ConsumerGroup,
        topic: Topic,
        max: usize,
        lease: Duration,
        wait: Duration,
        record: &Recorder,
    ) -> Result<Vec<Delivery>, QueueError>;

    /// Acknowledge deliveries: they are never delivered again. Unknown tags are ignored.
    async fn ack(&self, group: ConsumerGroup, tags: &[DeliveryTag]) -> Result<(), QueueError>;

    /// Publish `messages` ([`Queue::publish`]), then acknowledge `tags` of `group`
    /// ([`Queue::ack`]): what a consumer does with the results of the deliveries it handled. The
    /// acknowledgement never comes before the publish. `Err`: nothing was published and nothing
    /// acknowledged (the publish's error, e.g. [`QueueError::TooLarge`]); `Ok(Some(e))`: the
    /// messages are published but the deliveries could not be acknowledged (they may be
    /// delivered again); `Ok(None)`: both done.
    ///
    /// The default publishes, then acknowledges. JDBC does both in one transaction (the
    /// results and the acknowledgement commit together, one commit instead of two).
    async fn publish_and_ack(
        &self,
        messages: Vec<Envelope>,
        group: ConsumerGroup,
        tags: &[DeliveryTag],
    ) -> Result<Option<QueueError>, QueueError> {
        if !messages.is_empty() {
            self.publish(messages).await?;
        }
        if tags.is_empty() {
            return Ok(None);
        }
        Ok(self.ack(group, tags).await.err())
    }

    /// Extend the leases of deliveries still being worked on (a long task attempt). Returns the tags
    /// that are no longer held (acknowledged, dead-lettered or unknown; on Kafka also those of
    /// partitions this consumer lost): their work may already be done elsewhere. With
    /// [`QueueCapabilities::lease_timers`] each held one is held until `now + lease` instead of its
    /// current end, so it is not delivered again meanwhile; a lease that ended and was claimed again
    /// is extended for its new holder (tags do not name a consumer), which only delays a
    /// redelivery.
    async fn extend_lease(
        &self,
        group: ConsumerGroup,
        tags: &[DeliveryTag],
        lease: Duration,
    ) -> Result<Vec<DeliveryTag>, QueueError>;

    /// Set a delivery aside as a dead letter with the reason; it is never delivered again.
    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<(), QueueError>;

    /// Broadcast receive: every message of `topic` published from now on. Only topics that are
    /// [`Topic::broadcast`]; others are refused with [`QueueError::NotBroadcast`]
    /// ([`check_broadcast`]).
    async fn subscribe(&self, topic: Topic) -> Result<Subscription, QueueError>;

    /// Transactional receive for `group` (the executor): claim up to `max` due messages of `topics`,
    /// waiting up to `wait` for the first. Returns `None` on timeout.
    async fn begin(
        &self,
        group: ConsumerGroup,
        topics: &[Topic],
        max: usize,
        wait: Duration,
    ) -> Result<Option<Box<dyn UnitOfWork>>, QueueError>;

    /// The scheduler's unit of work over trigger states (see [`TriggerUnit`]): trigger state lives
    /// behind the queue backend, not the repository, so that schedulers go on while the repository
    /// (Elasticsearch on Kafka) is down. A queue that keeps no trigger state (a test double of the
    /// other seams) answers [`QueueError::Backend`], which is the default.
    async fn begin_triggers(&self) -> Result<Box<dyn TriggerUnit>, QueueError> {
        Err(QueueError::backend(
            "begin_triggers",
            std::io::Error::other("this queue keeps no trigger state"),
        ))
    }

    /// Replay a compacted state stream from its beginning and follow it ([`ReplayStream`]):
    /// where the repository is not written in the queue's units
    /// ([`QueueCapabilities::repository_in_unit`] false), the executor's and scheduler's flow
    /// store and the indexer (flows, trigger states) follow the queue this way. Records may come
    /// again (after a reconnection): consumers apply them idempotently. The default answers
    /// [`QueueError::Backend`] (a queue that keeps no such log, e.g. JDBC, whose repository is
    /// the source itself).
    async fn replay(&self, stream: Replayable) -> Result<ReplayStream, QueueError> {
        Err(QueueError::backend("replay", NotReplayable { stream }))
    }
}

/// The scheduler's transaction over trigger states ([`Queue::begin_triggers`]).
///
/// # Contract (checked by the `testkit` suite `triggers::run_all` on every backend)
///
/// - **Claims.** A unit holds the triggers it claimed ([`TriggerUnit::claim_due`],
///   [`TriggerUnit::claim`]) or created ([`TriggerUnit::create`]) until it commits or is dropped;
///   no other unit can claim them meanwhile (it skips them: claims never wait). A unit never hands
///   out the same trigger twice.
/// - **Writes only under claims.** [`TriggerUnit::save`] and [`TriggerUnit::delete`] refuse a
///   trigger the unit does not hold. Staged writes are visible to the unit's own later reads.
/// - **All or nothing.** [`TriggerUnit::commit`] applies the staged trigger states, the staged
///   messages ([`TriggerUnit::publish`]: the executions and evaluation jobs the scheduler starts)
///   and the acknowledgements of the scheduler's deliveries ([`TriggerUnit::ack`]) together, or
///   none of them; a dropped unit applies nothing and releases its claims.
/// - **What the API reads.** Committed states are what
///   [`TriggerRepository`](crate::repository::TriggerRepository) finds and searches (JDBC: the same
///   table; Kafka: the indexer's copy, which may lag).
///
/// # How the backends meet it
///
/// - **JDBC**: one database transaction; claims are `SELECT ... FOR UPDATE SKIP LOCKED` on the
///   `triggers` rows (SQLite: the single writer holds the unit), so a claim lasts exactly as long
///   as the transaction: no owner column, no wall-clock lease. Messages and acknowledgements are
///   rows of the same transaction.
/// - **Kafka**: trigger state is a compacted topic keyed by trigger uid, read by the scheduler
///   group; a scheduler instance owns the partitions it is assigned and holds them in a local
///   store (restored on assignment). A unit is a Kafka transaction of that instance: it claims the
///   due triggers of its own partitions (a claim of another instance's trigger answers `None`),
///   produces the new states, the executions and the consumed offsets, and commits; a fenced
///   (rebalanced-away) instance's commit is refused and nothing it staged is visible.
#[async_trait]
pub trait TriggerUnit: Send {
    /// Every trigger state of `tenant` as last committed (or staged by this unit), not claimed.
    async fn states(&mut self, tenant: &str) -> Result<Vec<TriggerState>, QueueError>;

    /// Claim up to `limit` enabled triggers due at `now` (`nextExecutionDate <= now`) that no other
    /// unit holds and this unit has not claimed yet, earliest first.
    async fn claim_due(
        &mut self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<TriggerState>, QueueError>;

    /// Claim one trigger by uid, due or not (disabled too). `None` when it does not exist or
    /// another unit holds it. Claiming a trigger this unit holds returns its staged state.
    async fn claim(&mut self, uid: &str) -> Result<Option<TriggerState>, QueueError>;

    /// Create the state of a trigger that has none yet, held by this unit from now on. Returns false
    /// (and changes nothing) when a state with this uid exists (another scheduler created it).
    async fn create(&mut self, state: &TriggerState) -> Result<bool, QueueError>;

    /// Stage the new state of a held trigger.
    async fn save(&mut self, state: &TriggerState) -> Result<(), QueueError>;

    /// Stage deleting a held trigger's state.
    async fn delete(&mut self, uid: &str) -> Result<(), QueueError>;

    /// Stage messages to publish when the unit commits. As [`Queue::publish`]: a delayed message
    /// is refused with [`QueueError::DelayNotAllowed`] and one over the maximum size with
    /// [`QueueError::TooLarge`] ([`check_publish`]).
    async fn publish(&mut self, messages: Vec<Envelope>) -> Result<(), QueueError>;

    /// Stage the acknowledgement of deliveries received by the scheduler group
    /// ([`ConsumerGroup::Scheduler`]): evaluation results and trigger events.
    async fn ack(&mut self, tags: &[DeliveryTag]) -> Result<(), QueueError>;

    /// Apply everything staged, atomically, and release the claims.
    async fn commit(self: Box<Self>) -> Result<(), QueueError>;
}

/// A [`TriggerUnit`] write refused because the unit does not hold the trigger.
#[derive(Debug, thiserror::Error)]
#[error("trigger '{uid}' is not held by this unit of work")]
pub struct TriggerNotHeld {
    /// The trigger's uid.
    pub uid: String,
}

/// What a backend stored for an execution, in a form it compares exactly with what it stores
/// now ([`UnitOfWork::load_execution_unless`]). Opaque to the executor, which only keeps it beside
/// the execution it saved: each backend puts in it what it needs (on JDBC, the random revision
/// written with the row and the task runs as stored, so that the next save writes only the task
/// runs that changed). [`ExecutionStamp::len`] is the approximate memory it stands for.
#[derive(Clone)]
pub struct ExecutionStamp {
    value: std::sync::Arc<dyn std::any::Any + Send + Sync>,
    len: usize,
}

impl ExecutionStamp {
    /// A stamp holding `value`, accounted as `len` bytes (what a cache of stamps counts).
    pub fn new<T: std::any::Any + Send + Sync>(
        value: std::sync::Arc<T>,
        len: usize,
    ) -> ExecutionStamp {
        ExecutionStamp { value, len }
    }

    /// The value of a stamp made by [`ExecutionStamp::new`] with a `T` (`None`: another type).
    pub fn get<T: std::any::Any + Send + Sync>(&self) -> Option<std::sync::Arc<T>> {
        self.value.clone().downcast::<T>().ok()
    }

    /// The bytes it is accounted as (what a cache of stamps holds).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is accounted as nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl fmt::Debug for ExecutionStamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ExecutionStamp({} bytes)", self.len)
    }
}

/// What [`UnitOfWork::load_execution_unless`] found.
#[derive(Debug)]
pub enum LoadedExecution {
    /// No execution is stored under the id.
    Missing,
    /// The stored execution is the one the given stamp describes.
    Unchanged,
    /// The stored execution, decoded, with its stamp when the backend gives one.
    Loaded(Box<Execution>, Option<ExecutionStamp>),
}

/// A transaction over claimed messages: load, process, stage, commit all or nothing.
///
/// Dropping a unit without [`UnitOfWork::commit`] rolls it back: nothing staged is applied and the
/// claimed messages are delivered again. After an error from any of its methods, drop the unit (a
/// Kafka transaction that failed a produce can only be aborted).
#[async_trait]
pub trait UnitOfWork: Send {
    /// The claimed messages, in claim order (per key in publish order).
    fn deliveries(&self) -> &[Delivery];

    /// Load an execution's current state and lock it for this unit (JDBC: `SELECT ... FOR UPDATE`).
    /// `id` must be the key of a claimed message, else [`QueueError::NotClaimed`].
    async fn load_execution(&mut self, id: &str) -> Result<Option<Execution>, QueueError>;

    /// Stage the new state of an execution. Its id must be the key of a claimed message, else
    /// [`QueueError::NotClaimed`]. An execution whose JSON document is over the maximum message
    /// size is refused with [`QueueError::TooLarge`] (topic [`Topic::Execution`], key = its id),
    /// here or at commit.
    async fn save_execution(&mut self, execution: &Execution) -> Result<(), QueueError>;

    /// [`UnitOfWork::load_execution`] that can skip decoding: when `known` is the stamp of the
    /// stored execution (what this backend stored, compared under the same lock as a load), the
    /// answer is [`LoadedExecution::Unchanged`] and the caller's copy is the stored execution.
    /// A backend may also answer `Unchanged` for a stamp it stored without reading, and check at
    /// commit, under its write lock, that the stamp is still the stored one: a unit that assumed
    /// wrong is refused with [`QueueError::Fenced`] and nothing of it is applied (SQLite's
    /// deferred unit). A caller that keeps stamps must then not give the same stamp to the unit
    /// that processes the messages of a fenced one.
    /// Any other stored value, whoever wrote it, is loaded. The default never recognises a stamp:
    /// it loads, and gives no stamp.
    async fn load_execution_unless(
        &mut self,
        id: &str,
        known: Option<&ExecutionStamp>,
    ) -> Result<LoadedExecution, QueueError> {
        let _ = known;
        Ok(match self.load_execution(id).await? {
            None => LoadedExecution::Missing,
            Some(execution) => LoadedExecution::Loaded(Box::new(execution), None),
        })
    }

    /// Say which executions this unit is about to load, each with the stamp of the copy the
    /// caller holds (`None`: it holds none), so that a backend that reads each load on its own may
    /// read them together. JDBC finds, in one query, those not stored yet (an execution's first
    /// message), whose loads then answer [`LoadedExecution::Missing`] without reading again
    /// (SQLite's deferred unit checks at commit, under the write lock, that they are still
    /// missing); on PostgreSQL and MySQL the same query locks the stored ones and reads their
    /// revisions, so that a load given a stamp of that revision answers
    /// [`LoadedExecution::Unchanged`] without a read of its own. Every id must be the key of a
    /// claimed message, else [`QueueError::NotClaimed`]. A hint: loads answer the same with or
    /// without it. The default only checks the ids.
    async fn prefetch_executions(
        &mut self,
        executions: &[(String, Option<ExecutionStamp>)],
    ) -> Result<(), QueueError> {
        for (id, _) in executions {
            check_claimed(self.deliveries(), || "prefetch executions".into(), id)?;
        }
        Ok(())
    }

    /// [`UnitOfWork::save_execution`], giving the stamp of what will be stored once the unit
    /// commits, for a later [`UnitOfWork::load_execution_unless`] (`None`: this backend gives no
    /// stamps). The stamp is valid only if the commit succeeds.
    ///
    /// The execution is lent mutably only so that a backend that stores its parts apart can encode
    /// them apart without copying it (JDBC takes the task runs out while it encodes the rest): it
    /// is given back unchanged, on success and on error.
    async fn save_execution_stamped(
        &mut self,
        execution: &mut Execution,
    ) -> Result<Option<ExecutionStamp>, QueueError> {
        self.save_execution(execution).await.map(|()| None)
    }

    /// [`UnitOfWork::save_execution_stamped`], told which task runs may differ from the execution
    /// as this unit loaded it: `changed` lists their positions in `task_run_list` (ascending),
    /// besides those past the end of the loaded list (new ones); `None` means any may. A backend
    /// that stores task runs apart then compares and writes only those (an execution of n task
    /// runs is not compared n times per save); the others ignore it (the default).
    ///
    /// A caller that lists fewer task runs than it changed loses the changes of the others: only
    /// a caller that tracks every change (the executor, through
    /// [`crate::executor::process::RunPositions::take_changed`]) passes a list.
    async fn save_execution_changed(
        &mut self,
        execution: &mut Execution,
        changed: Option<&[usize]>,
    ) -> Result<Option<ExecutionStamp>, QueueError> {
        let _ = changed;
        self.save_execution_stamped(execution).await
    }

    /// Load and lock an entry of executor state (`kind` names the table/store: de-duplication,
    /// concurrency slots, flow-trigger preconditions, ...). `key` must be the key of a claimed
    /// message, else [`QueueError::NotClaimed`].
    async fn load_state(
        &mut self,
        kind: &str,
        key: &str,
    ) -> Result<Option<serde_json::Value>, QueueError>;

    /// Stage a new value of an executor state entry (`None` deletes it). `key` must be the key of a
    /// claimed message, else [`QueueError::NotClaimed`].
    async fn save_state(
        &mut self,
        kind: &str,
        key: &str,
        value: Option<&serde_json::Value>,
    ) -> Result<(), QueueError>;

    /// Stage messages to publish when the unit commits. Delayed messages are allowed on executor
    /// topics only ([`check_staged`]); a refused message ([`QueueError::DelayNotAllowed`],
    /// [`QueueError::TooLarge`]) may be reported here or by [`UnitOfWork::commit`], and leaves the
    /// unit to be dropped.
    async fn publish(&mut self, messages: Vec<Envelope>) -> Result<(), QueueError>;

    /// Stage setting a claimed delivery aside as a dead letter (instead of acknowledging it).
    async fn dead_letter(&mut self, tag: DeliveryTag, reason: &str) -> Result<(), QueueError>;

    /// Apply everything staged and acknowledge the claimed deliveries, atomically. A zombie's commit
    /// (another instance owns the messages now) is refused with [`QueueError::Fenced`]; a message
    /// over the maximum size with [`QueueError::TooLarge`]; either way nothing is applied.
    async fn commit(self: Box<Self>) -> Result<(), QueueError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for t in Topic::ALL {
            assert_eq!(t.as_str().parse::<Topic>().ok(), Some(t));
        }
        for g in ConsumerGroup::ALL {
            assert_eq!(g.as_str().parse::<ConsumerGroup>().ok(), Some(g));
        }
        assert!("nope".parse::<Topic>().is_err());
    }

    #[test]
    fn delays_are_staged_on_executor_topics_only() {
        let later = Utc::now() + chrono::Duration::seconds(5);
        let executor: Vec<Topic> = Topic::ALL
            .into_iter()
            .filter(|t| t.accepts_delay())
            .collect();
        assert_eq!(
            executor,
            vec![
                Topic::Execution,
                Topic::ExecutionCommand,
                Topic::WorkerTaskResult,
                Topic::SubflowExecutionResult,
                Topic::ConcurrencySlot,
                Topic::FlowPrecondition,
                Topic::Liveness
            ]
        );
        let delayed = |t: Topic| Envelope::new(t, "k", &b"{}"[..]).delayed_until(later);
        for t in Topic::ALL {
            assert!(
                matches!(
                    check_publish(&[delayed(t)], 100),
                    Err(QueueError::DelayNotAllowed { topic, .. }) if topic == t
                ),
                "Queue::publish refuses a delayed message on {t}"
            );
            assert_eq!(
                check_staged(&[delayed(t)], 100).is_ok(),
                t.accepts_delay(),
                "a unit stages a delayed message on {t} only if it is an executor topic"
            );
        }
        assert!(check_publish(&[Envelope::new(Topic::Log, "k", &b"{}"[..])], 100).is_ok());
    }

    #[test]
    fn sizes_over_the_maximum_are_refused_with_topic_key_and_size() {
        let at_max = Envelope::new(Topic::Log, "k", vec![b'x'; 10]);
        assert!(check_publish(std::slice::from_ref(&at_max), 10).is_ok());
        assert!(check_staged(std::slice::from_ref(&at_max), 10).is_ok());
        let over = Envelope::new(Topic::WorkerJob, "job-1", vec![b'x'; 11]);
        for refused in [
            check_publish(&[at_max.clone(), over.clone()], 10),
            check_staged(&[at_max, over], 10),
        ] {
            let e = refused.err();
            assert!(
                matches!(&e, Some(QueueError::TooLarge { topic: Topic::WorkerJob, key, size: 11, max: 10 }) if key == "job-1"),
                "{e:?}"
            );
            let text = e.map(|e| e.to_string()).unwrap_or_default();
            assert!(
                text.contains("worker_job") && text.contains("job-1") && text.contains("11 bytes"),
                "{text}"
            );
        }
        assert!(check_execution_size("e1", &[b'x'; 10], 10).is_ok());
        assert!(matches!(
            check_execution_size("e1", &[b'x'; 11], 10),
            Err(QueueError::TooLarge { topic: Topic::Execution, ref key, .. }) if key == "e1"
        ));
    }

    #[test]
    fn envelope_json_round_trip_and_malformed_payload() -> Result<(), QueueError> {
        let e = Envelope::json(Topic::Log, "k", &serde_json::json!({"a": 1}))?;
        let v: serde_json::Value = e.decode()?;
        assert_eq!(v["a"], 1);
        let bad = Envelope::new(Topic::Log, "k", &b"{not json"[..]);
        let err = bad.decode::<serde_json::Value>().err();
        assert!(
            matches!(
                err,
                Some(QueueError::Decode {
                    topic: Topic::Log,
                    ..
                })
            ),
            "{err:?}"
        );
        Ok(())
    }
}
