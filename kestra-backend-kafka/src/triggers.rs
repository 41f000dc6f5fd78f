//! The scheduler's unit of work over trigger states on Kafka ([`TriggerUnit`]).
//!
//! Trigger states live in the compacted topic `{prefix}trigger_state`, keyed by trigger uid. Each
//! queue handle has a store-only member of the consumer group `{prefix}scheduler.store` on that
//! topic: the partitions it is assigned are the triggers it owns, restored into memory on
//! assignment. A unit claims only triggers of owned partitions (a claim of another instance's
//! trigger answers `None`, `states` lists the owned ones), and claims are exclusive among the units
//! of the handle. The commit is a transaction of the member's transactional producer: the new
//! states, the staged messages and the offsets of the acknowledged scheduler deliveries. A unit
//! whose partitions were reassigned before the commit is refused with `Fenced`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use kestra_core::model::TriggerState;
use kestra_core::queue::{
    DeliveryTag, Envelope, QueueError, TriggerNotHeld, TriggerUnit, check_publish,
};
use rdkafka::producer::{FutureRecord, Producer};
use serde_json::Value;
use tracing::warn;

use crate::consumer::{GroupConsumer, SEP, record_key};
use crate::partitioner::partition_for;
use crate::queue::Shared;

/// Kind of the trigger states in their changelog.
pub(crate) const TRIGGER_KIND: &str = "trigger";

/// Trigger uids held by the live units of one queue handle.
pub(crate) type Claims = Arc<Mutex<HashSet<String>>>;

pub(crate) struct KafkaTriggerUnit {
    shared: Arc<Shared>,
    store: Arc<GroupConsumer>,
    /// Consumers of the scheduler group whose deliveries this unit may acknowledge.
    receivers: Vec<Arc<GroupConsumer>>,
    claims: Claims,
    /// uid -> (partition, generation at claim)
    held: HashMap<String, (i32, u64)>,
    staged: BTreeMap<String, Option<TriggerState>>,
    messages: Vec<Envelope>,
    acks: Vec<DeliveryTag>,
}

fn decode(v: Value) -> Result<TriggerState, QueueError> {
    serde_json::from_value(v).map_err(|e| QueueError::backend("trigger state (stored document)", e))
}

fn not_held(operation: &'static str, uid: &str) -> QueueError {
    QueueError::backend(
        operation,
        TriggerNotHeld {
            uid: uid.to_string(),
        },
    )
}

impl KafkaTriggerUnit {
    pub(crate) fn new(
        shared: Arc<Shared>,
        store: Arc<GroupConsumer>,
        receivers: Vec<Arc<GroupConsumer>>,
        claims: Claims,
    ) -> KafkaTriggerUnit {
        KafkaTriggerUnit {
            shared,
            store,
            receivers,
            claims,
            held: HashMap::new(),
            staged: BTreeMap::new(),
            messages: Vec::new(),
            acks: Vec::new(),
        }
    }

    fn claims(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.claims.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Committed states of the owned partitions.
    fn committed(&self) -> Result<Vec<(i32, TriggerState)>, QueueError> {
        self.store
            .store_values(&format!("{TRIGGER_KIND}{SEP}"))
            .into_iter()
            .map(|(p, _, v)| decode(v).map(|s| (p, s)))
            .collect()
    }

    fn stored(&self, uid: &str) -> Result<Option<TriggerState>, QueueError> {
        let p = partition_for(uid, self.shared.options.partitions);
        self.store
            .store_get(p, &record_key(TRIGGER_KIND, uid))
            .map(decode)
            .transpose()
    }

    /// Hold `uid` (of partition `p`) if no other unit does.
    fn try_hold(&mut self, uid: &str) -> bool {
        let p = partition_for(uid, self.shared.options.partitions);
        let Some(generation) = self.store.owned_generation(p) else {
            return false;
        };
        if !self.claims().insert(uid.to_string()) {
            return false;
        }
        self.held.insert(uid.to_string(), (p, generation));
        true
    }

    fn trigger_topic(&self) -> String {
        format!("{}trigger_state", self.shared.options.prefix)
    }
}

#[async_trait]
impl TriggerUnit for KafkaTriggerUnit {
    async fn states(&mut self, tenant: &str) -> Result<Vec<TriggerState>, QueueError> {
        let mut by_uid: BTreeMap<String, TriggerState> = BTreeMap::new();
        for (_, s) in self.committed()? {
            by_uid.insert(s.uid(), s);
        }
        for (uid, s) in &self.staged {
            match s {
                Some(s) => {
                    by_uid.insert(uid.clone(), s.clone());
                }
                None => {
                    by_uid.remove(uid);
                }
            }
        }
        Ok(by_uid
            .into_values()
            .filter(|s| s.tenant_id == tenant)
            .collect())
    }

    async fn claim_due(
        &mut self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<TriggerState>, QueueError> {
        let mut due: Vec<TriggerState> = self
            .committed()?
            .into_iter()
            .map(|(_, s)| s)
            .filter(|s| !s.disabled && s.next_execution_date.is_some_and(|n| n <= now))
            .filter(|s| !self.held.contains_key(&s.uid()))
            .collect();
        due.sort_by_key(|s| s.next_execution_date);
        let mut out = Vec::new();
        for s in due {
            if out.len() >= limit {
                break;
            }
            if self.try_hold(&s.uid()) {
                out.push(s);
            }
        }
        Ok(out)
    }

    async fn claim(&mut self, uid: &str) -> Result<Option<TriggerState>, QueueError> {
        if self.held.contains_key(uid) {
            return Ok(match self.staged.get(uid) {
                Some(staged) => staged.clone(),
                None => self.stored(uid)?,
            });
        }
        let Some(state) = self.stored(uid)? else {
            return Ok(None);
        };
        Ok(self.try_hold(uid).then_some(state))
    }

    async fn create(&mut self, state: &TriggerState) -> Result<bool, QueueError> {
        let uid = state.uid();
        if self.held.contains_key(&uid) || self.stored(&uid)?.is_some() {
            return Ok(false);
        }
        if !self.try_hold(&uid) {
            return Ok(false);
        }
        self.staged.insert(uid, Some(state.clone()));
        Ok(true)
    }

    async fn save(&mut self, state: &TriggerState) -> Result<(), QueueError> {
        let uid = state.uid();
        if !self.held.contains_key(&uid) {
            return Err(not_held("save trigger", &uid));
        }
        self.staged.insert(uid, Some(state.clone()));
        Ok(())
    }

    async fn delete(&mut self, uid: &str) -> Result<(), QueueError> {
        if !self.held.contains_key(uid) {
            return Err(not_held("delete trigger", uid));
        }
        self.staged.insert(uid.to_string(), None);
        Ok(())
    }

    async fn publish(&mut self, messages: Vec<Envelope>) -> Result<(), QueueError> {
        check_publish(&messages, self.shared.options.max_message_bytes)?;
        self.messages.extend(messages);
        Ok(())
    }

    async fn ack(&mut self, tags: &[DeliveryTag]) -> Result<(), QueueError> {
        self.acks.extend_from_slice(tags);
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<(), QueueError> {
        for (uid, (p, generation)) in &self.held {
            if self.store.owned_generation(*p) != Some(*generation) {
                return Err(QueueError::Fenced {
                    detail: format!(
                        "partition {p} of the trigger states (trigger {uid}) was reassigned before the commit"
                    ),
                });
            }
        }
        let options = self.shared.options.clone();
        let topic = self.trigger_topic();
        let mut changes: Vec<(i32, String, Option<Value>)> = Vec::new();
        for (uid, s) in &self.staged {
            let p = partition_for(uid, options.partitions);
            let v = match s {
                Some(s) => Some(
                    serde_json::to_value(s).map_err(|source| QueueError::Encode {
                        topic: kestra_core::queue::Topic::Trigger,
                        source,
                    })?,
                ),
                None => None,
            };
            changes.push((p, record_key(TRIGGER_KIND, uid), v));
        }
        // Offsets of the acknowledged deliveries, per receiving consumer (one group each).
        let mut acked = Vec::new();
        let mut offsets_w = Vec::new();
        for r in &self.receivers {
            let mine: Vec<DeliveryTag> = self.acks.iter().filter(|t| r.holds(t)).copied().collect();
            if mine.is_empty() {
                continue;
            }
            let Some(metadata) = r.group_metadata() else {
                continue;
            };
            offsets_w.push((r.positions_after(&mine), metadata));
            acked.push((r.clone(), mine));
        }
        let messages = std::mem::take(&mut self.messages);
        let store = self.store.clone();
        let changes_w = changes.clone();
        tokio::task::spawn_blocking(move || -> Result<(), QueueError> {
            let Some(txn) = &store.inner.txn else {
                return Err(QueueError::backend(
                    "commit triggers",
                    std::io::Error::other("the trigger store has no transactional producer"),
                ));
            };
            let producer = txn.lock().unwrap_or_else(PoisonError::into_inner);
            let be = |op: &'static str| move |e| QueueError::backend(op, e);
            producer
                .begin_transaction()
                .map_err(be("commit triggers (begin)"))?;
            let write = || -> Result<(), QueueError> {
                for m in &messages {
                    let name = options.topic_name(m.topic);
                    producer
                        .send_result(
                            FutureRecord::to(&name)
                                .key(m.key.as_bytes())
                                .payload(m.payload.as_ref())
                                .partition(partition_for(&m.key, options.partitions)),
                        )
                        .map_err(|(e, _)| QueueError::backend("commit triggers (produce)", e))?;
                }
                for (p, k, v) in &changes_w {
                    let doc = v.as_ref().map(|v| v.to_string());
                    let mut r = FutureRecord::<[u8], [u8]>::to(&topic)
                        .key(k.as_bytes())
                        .partition(*p);
                    if let Some(doc) = &doc {
                        r = r.payload(doc.as_bytes());
                    }
                    producer
                        .send_result(r)
                        .map_err(|(e, _)| QueueError::backend("commit triggers (produce)", e))?;
                }
                for (tpl, md) in &offsets_w {
                    producer
                        .send_offsets_to_transaction(tpl, md, Duration::from_secs(30))
                        .map_err(be("commit triggers (send offsets)"))?;
                }
                crate::queue::commit_transaction(&producer, Duration::from_secs(30))
                    .map_err(be("commit triggers"))
            };
            let result = write();
            if result.is_err()
                && let Err(e) = producer.abort_transaction(Duration::from_secs(30))
            {
                warn!(error = %e, "aborting a failed trigger transaction failed");
            }
            result
        })
        .await
        .map_err(|e| QueueError::backend("commit triggers", e))??;
        self.store.store_apply(&changes, &[]);
        for (r, tags) in &acked {
            r.acked_by_transaction(tags);
        }
        Ok(())
    }
}

impl Drop for KafkaTriggerUnit {
    fn drop(&mut self) {
        let mut claims = self.claims.lock().unwrap_or_else(PoisonError::into_inner);
        for uid in self.held.keys() {
            claims.remove(uid);
        }
    }
}
