//! Broadcast subscriptions: a consumer per subscriber, assigned (no group) at the end offsets of the
//! topic's partitions read when it subscribes, so it sees every message published afterwards and
//! none from before.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use kestra_core::queue::{
    Envelope, QueueError, ReplayStream, Replayable, Replayed, Subscription, Topic,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tracing::debug;

use crate::queue::{KafkaOptions, Shared};

/// Messages a subscriber may lag behind before it loses some (and is told with `Lagged`).
const CAPACITY: usize = 10_000;

/// The partitions of topic `name` as the cluster's metadata lists them, asked again (every 200 ms, at
/// most 10 s) while the topic is listed without partitions or with an error: right after a topic's
/// creation a broker's metadata may not know it yet. Blocking: call it from a blocking thread.
fn partitions_of(
    consumer: &BaseConsumer,
    name: &str,
    operation: &'static str,
) -> Result<Vec<i32>, QueueError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metadata = consumer
            .fetch_metadata(Some(name), Duration::from_secs(10))
            .map_err(|e| Shared::backend(operation, e))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == name && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if !partitions.is_empty() {
            return Ok(partitions);
        }
        if std::time::Instant::now() >= deadline {
            return Err(QueueError::backend(
                operation,
                std::io::Error::other(format!("topic {name} has no partitions")),
            ));
        }
        debug!(topic = %name, "partitions not known yet; asking again");
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub(crate) async fn subscribe(
    options: &KafkaOptions,
    topic: Topic,
) -> Result<Subscription, QueueError> {
    let options = options.clone();
    let consumer = tokio::task::spawn_blocking(move || -> Result<BaseConsumer, QueueError> {
        let name = options.topic_name(topic);
        let consumer: BaseConsumer = options
            .client_config()
            .set(
                "group.id",
                format!(
                    "{}broadcast-{}",
                    options.prefix,
                    kestra_core::model::new_id()
                ),
            )
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("fetch.wait.max.ms", "50")
            .create()
            .map_err(|e| Shared::backend("subscribe", e))?;
        let mut tpl = TopicPartitionList::new();
        for p in partitions_of(&consumer, &name, "subscribe (metadata)")? {
            let (_, high) = consumer
                .fetch_watermarks(&name, p, Duration::from_secs(10))
                .map_err(|e| Shared::backend("subscribe (end offsets)", e))?;
            tpl.add_partition_offset(&name, p, Offset::Offset(high))
                .map_err(|e| Shared::backend("subscribe", e))?;
        }
        consumer
            .assign(&tpl)
            .map_err(|e| Shared::backend("subscribe (assign)", e))?;
        Ok(consumer)
    })
    .await
    .map_err(|e| QueueError::backend("subscribe", e))??;

    let (tx, mut rx) = mpsc::channel::<Result<Envelope, QueueError>>(CAPACITY);
    std::thread::Builder::new()
        .name(format!("kafka-broadcast-{topic}"))
        .spawn(move || {
            let mut missed: u64 = 0;
            while !tx.is_closed() {
                if missed > 0 && tx.try_send(Err(QueueError::Lagged { missed })).is_ok() {
                    missed = 0;
                }
                match consumer.poll(Duration::from_millis(100)) {
                    Some(Ok(m)) => {
                        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                        let payload = Bytes::copy_from_slice(m.payload().unwrap_or_default());
                        if tx.try_send(Ok(Envelope::new(topic, key, payload))).is_err() {
                            missed += 1;
                        }
                    }
                    Some(Err(e)) => debug!(%topic, error = %e, "broadcast consumer error"),
                    None => {}
                }
            }
            debug!(%topic, "broadcast subscription closed");
        })
        .map_err(|e| QueueError::backend("subscribe (thread)", e))?;
    Ok(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed())
}

/// Messages a replay may buffer ahead of its reader (the reader is waited for: nothing is lost).
const REPLAY_CAPACITY: usize = 1_000;

/// A replay of a compacted log ([`Replayable`]): a consumer per replay, assigned (no group) at the
/// beginning of every partition; [`Replayed::CaughtUp`] once it reached the end of every partition
/// that held records when it started (partition EOF, read committed), then it follows the log.
pub(crate) async fn replay(
    options: &KafkaOptions,
    stream: Replayable,
) -> Result<ReplayStream, QueueError> {
    let options = options.clone();
    let name = match stream {
        Replayable::Flows => options.topic_name(Topic::Flow),
        Replayable::TriggerStates => options.trigger_state_topic(),
    };
    let (consumer, mut remaining) = tokio::task::spawn_blocking(
        move || -> Result<(BaseConsumer, std::collections::BTreeSet<i32>), QueueError> {
            let consumer: BaseConsumer = options
                .client_config()
                .set(
                    "group.id",
                    format!("{}replay-{}", options.prefix, kestra_core::model::new_id()),
                )
                .set("enable.auto.commit", "false")
                .set("isolation.level", "read_committed")
                .set("fetch.wait.max.ms", "50")
                .set("enable.partition.eof", "true")
                .create()
                .map_err(|e| Shared::backend("replay", e))?;
            let mut tpl = TopicPartitionList::new();
            let mut ends = std::collections::BTreeSet::new();
            for p in partitions_of(&consumer, &name, "replay (metadata)")? {
                // Right after the topic's creation its leader may not be known yet.
                let mut tries = 0;
                let (low, high) = loop {
                    match consumer.fetch_watermarks(&name, p, Duration::from_secs(10)) {
                        Ok(marks) => break marks,
                        Err(e) if tries < 50 => {
                            tries += 1;
                            debug!(topic = %name, error = %e, "replay: end offsets not known yet");
                            std::thread::sleep(Duration::from_millis(200));
                        }
                        Err(e) => return Err(Shared::backend("replay (end offsets)", e)),
                    }
                };
                if high > low {
                    ends.insert(p);
                }
                tpl.add_partition_offset(&name, p, Offset::Beginning)
                    .map_err(|e| Shared::backend("replay", e))?;
            }
            consumer
                .assign(&tpl)
                .map_err(|e| Shared::backend("replay (assign)", e))?;
            Ok((consumer, ends))
        },
    )
    .await
    .map_err(|e| QueueError::backend("replay", e))??;

    let trigger_prefix = format!("{}{}", crate::triggers::TRIGGER_KIND, crate::consumer::SEP);
    let (tx, mut rx) = mpsc::channel::<Result<Replayed, QueueError>>(REPLAY_CAPACITY);
    std::thread::Builder::new()
        .name(format!("kafka-replay-{stream}"))
        .spawn(move || {
            let mut caught_up = false;
            if remaining.is_empty() {
                caught_up = true;
                if tx.blocking_send(Ok(Replayed::CaughtUp)).is_err() {
                    return;
                }
            }
            while !tx.is_closed() {
                match consumer.poll(Duration::from_millis(100)) {
                    Some(Ok(m)) => {
                        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                        let key = match stream {
                            Replayable::Flows => key,
                            Replayable::TriggerStates => match key.strip_prefix(&trigger_prefix) {
                                Some(uid) => uid.to_string(),
                                None => continue,
                            },
                        };
                        let payload = m.payload().map(Bytes::copy_from_slice);
                        if tx
                            .blocking_send(Ok(Replayed::Record { key, payload }))
                            .is_err()
                        {
                            break;
                        }
                    }
                    Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                        remaining.remove(&p);
                    }
                    Some(Err(e)) => debug!(%stream, error = %e, "replay consumer error"),
                    None => {}
                }
                if !caught_up && remaining.is_empty() {
                    caught_up = true;
                    if tx.blocking_send(Ok(Replayed::CaughtUp)).is_err() {
                        break;
                    }
                }
            }
            debug!(%stream, "replay closed");
        })
        .map_err(|e| QueueError::backend("replay (thread)", e))?;
    Ok(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed())
}
