//! The executor's unit of work on Kafka: one transaction of the consumer instance's transactional
//! producer carrying the staged messages, the executor state records (compacted changelog), the
//! dead letters and the consumed offsets.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use kestra_core::model::Execution;
use kestra_core::queue::{
    Delivery, DeliveryTag, Envelope, QueueError, Topic, UnitOfWork, check_claimed,
    check_execution_size, check_staged,
};
use rdkafka::error::{KafkaError as RdError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureRecord, Producer};
use serde_json::Value;
use tracing::{debug, warn};

use crate::consumer::{DELAYED_KIND, DelayedEntry, EXECUTION_KIND, GroupConsumer, record_key};
use crate::partitioner::partition_for;
use crate::queue::{Shared, dead_letter_headers};

pub(crate) struct KafkaUnit {
    shared: Arc<Shared>,
    consumer: Arc<GroupConsumer>,
    deliveries: Vec<Delivery>,
    generations: Vec<(Topic, i32, Option<u64>)>,
    /// record key -> (partition, new value or deletion)
    staged: BTreeMap<String, (i32, Option<Value>)>,
    messages: Vec<Envelope>,
    dead: Vec<(DeliveryTag, String)>,
    finished: bool,
}

impl KafkaUnit {
    pub(crate) fn new(
        shared: Arc<Shared>,
        consumer: Arc<GroupConsumer>,
        deliveries: Vec<Delivery>,
    ) -> KafkaUnit {
        let mut generations: Vec<(Topic, i32, Option<u64>)> = Vec::new();
        for d in &deliveries {
            let (t, p) = (d.tag.topic, d.tag.partition);
            if !generations.iter().any(|(gt, gp, _)| *gt == t && *gp == p) {
                generations.push((t, p, consumer.generation_of(t, p)));
            }
        }
        KafkaUnit {
            shared,
            consumer,
            deliveries,
            generations,
            staged: BTreeMap::new(),
            messages: Vec::new(),
            dead: Vec::new(),
            finished: false,
        }
    }

    fn partitions(&self) -> i32 {
        self.shared.options.partitions
    }

    fn load(&self, kind: &str, key: &str) -> Option<Value> {
        let rk = record_key(kind, key);
        if let Some((_, v)) = self.staged.get(&rk) {
            return v.clone();
        }
        self.consumer
            .store_get(partition_for(key, self.partitions()), &rk)
    }

    fn stage(&mut self, kind: &str, key: &str, value: Option<Value>) {
        let p = partition_for(key, self.partitions());
        self.staged.insert(record_key(kind, key), (p, value));
    }

    /// The unit's partitions still belong to the assignment it was begun in.
    fn check_owned(&self) -> Result<(), QueueError> {
        for (t, p, g) in &self.generations {
            let now = self.consumer.generation_of(*t, *p);
            if g.is_none() || now != *g {
                return Err(QueueError::Fenced {
                    detail: format!(
                        "partition {p} of topic {t} was revoked from this consumer before the commit"
                    ),
                });
            }
        }
        Ok(())
    }
}

/// `topic:count` pairs of `topics`, in their first order (a debug line's field).
fn topic_counts(topics: impl Iterator<Item = Topic>) -> String {
    let mut counts: Vec<(Topic, usize)> = Vec::new();
    for t in topics {
        match counts.iter_mut().find(|(c, _)| *c == t) {
            Some((_, n)) => *n += 1,
            None => counts.push((t, 1)),
        }
    }
    counts
        .iter()
        .map(|(t, n)| format!("{t}:{n}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn is_fencing(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::IllegalGeneration
            | RDKafkaErrorCode::UnknownMemberId
            | RDKafkaErrorCode::RebalanceInProgress
            | RDKafkaErrorCode::FencedInstanceId
    )
}

fn txn_error(operation: &'static str, e: RdError) -> QueueError {
    if let Some(code) = e.rdkafka_error_code()
        && is_fencing(code)
    {
        return QueueError::Fenced {
            detail: format!("{operation}: {e}"),
        };
    }
    QueueError::backend(operation, e)
}

#[async_trait]
impl UnitOfWork for KafkaUnit {
    fn deliveries(&self) -> &[Delivery] {
        &self.deliveries
    }

    async fn load_execution(&mut self, id: &str) -> Result<Option<Execution>, QueueError> {
        check_claimed(&self.deliveries, || "load execution".to_string(), id)?;
        match self.load(EXECUTION_KIND, id) {
            None => Ok(None),
            Some(v) => serde_json::from_value(v)
                .map(Some)
                .map_err(|e| QueueError::backend("load_execution (stored document)", e)),
        }
    }

    async fn save_execution(&mut self, execution: &Execution) -> Result<(), QueueError> {
        check_claimed(
            &self.deliveries,
            || "save execution".to_string(),
            &execution.id,
        )?;
        let doc = serde_json::to_vec(execution).map_err(|source| QueueError::Encode {
            topic: Topic::Execution,
            source,
        })?;
        check_execution_size(&execution.id, &doc, self.shared.options.max_message_bytes)?;
        let value: Value = serde_json::from_slice(&doc).map_err(|source| QueueError::Encode {
            topic: Topic::Execution,
            source,
        })?;
        self.stage(EXECUTION_KIND, &execution.id, Some(value));
        Ok(())
    }

    async fn load_state(&mut self, kind: &str, key: &str) -> Result<Option<Value>, QueueError> {
        check_claimed(&self.deliveries, || format!("load state {kind}"), key)?;
        Ok(self.load(&format!("state.{kind}"), key))
    }

    async fn save_state(
        &mut self,
        kind: &str,
        key: &str,
        value: Option<&Value>,
    ) -> Result<(), QueueError> {
        check_claimed(&self.deliveries, || format!("save state {kind}"), key)?;
        self.stage(&format!("state.{kind}"), key, value.cloned());
        Ok(())
    }

    async fn publish(&mut self, messages: Vec<Envelope>) -> Result<(), QueueError> {
        check_staged(&messages, self.shared.options.max_message_bytes)?;
        self.messages.extend(messages);
        Ok(())
    }

    async fn dead_letter(&mut self, tag: DeliveryTag, reason: &str) -> Result<(), QueueError> {
        if self.deliveries.iter().any(|d| d.tag == tag) {
            self.dead.push((tag, reason.to_string()));
        }
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<(), QueueError> {
        self.finished = true;
        let result = self.commit_inner().await;
        if result.is_err() {
            self.consumer.release(&self.deliveries);
        }
        result
    }
}

impl KafkaUnit {
    async fn commit_inner(&mut self) -> Result<(), QueueError> {
        self.check_owned()?;
        let tags: Vec<DeliveryTag> = self.deliveries.iter().map(|d| d.tag).collect();
        let offsets = self.consumer.positions_after(&tags);
        let metadata = self
            .consumer
            .group_metadata()
            .ok_or_else(|| QueueError::Fenced {
                detail: "the consumer left its group before the commit".to_string(),
            })?;
        let options = self.shared.options.clone();
        let now = Utc::now();
        // What the transaction writes.
        let mut plain: Vec<Envelope> = Vec::new();
        let mut delayed: Vec<(i32, DelayedEntry)> = Vec::new();
        for m in self.messages.drain(..) {
            if m.deliver_at.is_some_and(|at| at > now) {
                let p = partition_for(&m.key, options.partitions);
                let rk = record_key(
                    DELAYED_KIND,
                    &format!("{}{}{}", m.key, '\u{1f}', kestra_core::model::new_id()),
                );
                delayed.push((
                    p,
                    DelayedEntry {
                        record_key: rk,
                        envelope: m,
                    },
                ));
            } else {
                plain.push(Envelope {
                    deliver_at: None,
                    ..m
                });
            }
        }
        let changes: Vec<(i32, String, Option<Value>)> = self
            .staged
            .iter()
            .map(|(k, (p, v))| (*p, k.clone(), v.clone()))
            .collect();
        let dead: Vec<(Delivery, String)> = self
            .dead
            .iter()
            .filter_map(|(tag, reason)| {
                self.deliveries
                    .iter()
                    .find(|d| d.tag == *tag)
                    .map(|d| (d.clone(), reason.clone()))
            })
            .collect();
        let consumer = self.consumer.clone();
        let (changes_w, delayed_w) = (changes.clone(), delayed.clone());
        let tags_count = tags.len();
        // What the unit carried, by topic, for the debug line of its transaction (counted only
        // when that line is on).
        let (delivered, written) = if tracing::enabled!(tracing::Level::DEBUG) {
            (
                topic_counts(self.deliveries.iter().map(|d| d.tag.topic)),
                topic_counts(plain.iter().map(|m| m.topic)),
            )
        } else {
            (String::new(), String::new())
        };
        tokio::task::spawn_blocking(move || -> Result<(), QueueError> {
            let Some(txn) = &consumer.inner.txn else {
                return Err(QueueError::backend(
                    "commit",
                    std::io::Error::other("this consumer has no transactional producer"),
                ));
            };
            let producer = txn.lock().unwrap_or_else(PoisonError::into_inner);
            let started = std::time::Instant::now();
            producer
                .begin_transaction()
                .map_err(|e| txn_error("commit (begin transaction)", e))?;
            let write = || -> Result<(), QueueError> {
                let state_topic = options.state_topic();
                let dlq = options.dead_letter_topic();
                let send = |r: FutureRecord<'_, [u8], [u8]>| {
                    producer
                        .send_result(r)
                        .map(drop)
                        .map_err(|(e, _)| txn_error("commit (produce)", e))
                };
                for m in &plain {
                    let name = options.topic_name(m.topic);
                    send(
                        FutureRecord::to(&name)
                            .key(m.key.as_bytes())
                            .payload(m.payload.as_ref())
                            .partition(partition_for(&m.key, options.partitions)),
                    )?;
                }
                for (p, e) in &delayed_w {
                    let doc =
                        serde_json::to_vec(&e.to_json()).map_err(|source| QueueError::Encode {
                            topic: e.envelope.topic,
                            source,
                        })?;
                    send(
                        FutureRecord::to(&state_topic)
                            .key(e.record_key.as_bytes())
                            .payload(&doc[..])
                            .partition(*p),
                    )?;
                }
                for (p, k, v) in &changes_w {
                    let doc = match v {
                        Some(v) => {
                            Some(serde_json::to_vec(v).map_err(|source| QueueError::Encode {
                                topic: Topic::Execution,
                                source,
                            })?)
                        }
                        None => None,
                    };
                    let mut r = FutureRecord::to(&state_topic)
                        .key(k.as_bytes())
                        .partition(*p);
                    if let Some(doc) = &doc {
                        r = r.payload(&doc[..]);
                    }
                    send(r)?;
                }
                for (d, reason) in &dead {
                    let origin = format!("{}/{}", d.tag.partition, d.tag.offset);
                    let headers: OwnedHeaders = dead_letter_headers(d, reason, &origin);
                    send(
                        FutureRecord::to(&dlq)
                            .key(d.envelope.key.as_bytes())
                            .payload(d.envelope.payload.as_ref())
                            .headers(headers),
                    )?;
                }
                if offsets.count() > 0 {
                    producer
                        .send_offsets_to_transaction(&offsets, &metadata, Duration::from_secs(30))
                        .map_err(|e| txn_error("commit (send offsets)", e))?;
                }
                let sent = started.elapsed();
                let committed =
                    crate::queue::commit_transaction(&producer, Duration::from_secs(30))
                        .map_err(|e| txn_error("commit", e));
                debug!(
                    deliveries = tags_count,
                    %delivered,
                    %written,
                    records = plain.len() + delayed_w.len() + changes_w.len() + dead.len(),
                    produce_and_offsets_ms = sent.as_secs_f64() * 1000.0,
                    total_ms = started.elapsed().as_secs_f64() * 1000.0,
                    "unit of work transaction"
                );
                committed
            };
            let result = write();
            if let Err(e) = &result {
                if let Err(abort) = producer.abort_transaction(Duration::from_secs(30)) {
                    warn!(error = %abort, "aborting a failed unit-of-work transaction failed");
                }
                debug!(error = %e, "unit of work transaction aborted");
            }
            result
        })
        .await
        .map_err(|e| QueueError::backend("commit", e))??;
        self.consumer.store_apply(&changes, &delayed);
        self.consumer.acked_by_transaction(&tags);
        Ok(())
    }
}

impl Drop for KafkaUnit {
    fn drop(&mut self) {
        if !self.finished {
            self.consumer.release(&self.deliveries);
        }
    }
}
