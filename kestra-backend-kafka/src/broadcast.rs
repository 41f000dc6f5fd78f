//! Broadcast subscriptions: a consumer per subscriber, assigned (no group) at the end offsets of the
//! topic's partitions read when it subscribes, so it sees every message published afterwards and
//! none from before.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use kestra_core::queue::{Envelope, QueueError, Subscription, Topic};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tracing::debug;

use crate::queue::{KafkaOptions, Shared};

/// Messages a subscriber may lag behind before it loses some (and is told with `Lagged`).
const CAPACITY: usize = 10_000;

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
        let metadata = consumer
            .fetch_metadata(Some(&name), Duration::from_secs(10))
            .map_err(|e| Shared::backend("subscribe (metadata)", e))?;
        let mut tpl = TopicPartitionList::new();
        for t in metadata.topics() {
            for p in t.partitions() {
                let (_, high) = consumer
                    .fetch_watermarks(&name, p.id(), Duration::from_secs(10))
                    .map_err(|e| Shared::backend("subscribe (end offsets)", e))?;
                tpl.add_partition_offset(&name, p.id(), Offset::Offset(high))
                    .map_err(|e| Shared::backend("subscribe", e))?;
            }
        }
        if tpl.count() == 0 {
            return Err(QueueError::backend(
                "subscribe",
                std::io::Error::other(format!("topic {name} has no partitions")),
            ));
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
