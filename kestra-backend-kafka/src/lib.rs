//! Kafka backend of kestra-rs: the [`Queue`](kestra_core::queue::Queue) seam on Apache Kafka
//! topics, with librdkafka (built statically by `rdkafka`).
//!
//! How each point of the queue contract (see `kestra_core::queue`) is met:
//!
//! - **Topics.** One topic per [`Topic`](kestra_core::queue::Topic), named `{prefix}{topic}`
//!   (prefix `kestra_` by default), created at start with [`KafkaOptions::partitions`] partitions
//!   (the same count everywhere, so the executor topics are co-partitioned), plus
//!   `{prefix}dead_letter` and the compacted `{prefix}executor_state` changelog. Every record is
//!   placed by Kafka's own `murmur2` partitioner ([`partition_for`]), the one the Java clients use,
//!   so a key lands on the same partition in every topic and every producer.
//! - **Competing receive** ([`KafkaQueue`]'s `receive`): one Kafka consumer per (group, topic) of a
//!   queue instance, in the consumer group `{prefix}{group}.{topic}`, `range` assignment,
//!   `read_committed`, polled by a background thread that buffers what it fetches (so a busy
//!   caller never misses a poll and is never thrown out of its group). A key held by a delivery
//!   that is not acknowledged yet is not handed out again by that consumer (one committing unit per
//!   key); a revoked partition waits (up to [`KafkaOptions::revoke_grace`]) for its handed-out
//!   deliveries to be acknowledged before the rebalance goes on, so a rebalance among live
//!   consumers redelivers nothing.
//! - **Acknowledgement** commits offsets: per partition the contiguous acknowledged prefix only.
//!   Leases are hints (no lease timers): redelivery happens when a consumer is gone (its handle
//!   dropped, or its session timed out).
//! - **Dead letters** go to `{prefix}dead_letter` (headers: origin topic, group, partition,
//!   offset, reason) and the delivery is acknowledged.
//! - **Broadcast** is a consumer per subscriber, assigned (no group) at the partitions' end
//!   offsets read when it subscribes.
//! - **Unit of work** (executor): a Kafka transaction of a transactional producer per consumer
//!   instance: the staged messages, the executor state records and the consumed offsets
//!   (`send_offsets_to_transaction` with the consumer's group metadata) commit together.
//!   Executor state (executions, keyed state, delayed messages) lives in the compacted changelog
//!   keyed like the messages, with an in-memory store per assigned partition restored when the
//!   partition is assigned. Delayed messages are held in that store and produced, when due, by the
//!   partition's owner in a transaction that also deletes them from the changelog. A unit whose
//!   partitions were revoked before its commit (or whose transaction the broker fences) is refused
//!   with `Fenced`.
//! - **Size.** Payloads over [`KafkaOptions::max_message_bytes`] are refused with `TooLarge`
//!   before anything is produced; topics and producers accept that size plus headroom for keys
//!   and headers.
//!
//! - **Trigger states** (the scheduler's `TriggerUnit`) live in the compacted
//!   `{prefix}trigger_state` topic keyed by trigger uid; each handle owns the partitions a
//!   store-only member of `{prefix}scheduler.store` is assigned, restored on assignment, and a
//!   unit is a transaction of that member's producer (states, messages, acknowledged offsets).

pub mod admin;
#[cfg(feature = "elasticsearch")]
pub mod elastic;

mod broadcast;
mod consumer;
mod partitioner;
mod queue;
mod triggers;
mod unit;

pub use partitioner::partition_for;
pub use queue::{KafkaError, KafkaOptions, KafkaQueue};

/// The `rdkafka` crate this backend is built on (same version and features), for callers that need
/// a plain Kafka client beside the queue - the engine benchmark's raw baseline does.
pub use rdkafka;
