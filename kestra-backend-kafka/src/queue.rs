//! [`KafkaQueue`]: options, topic creation, publish, and the [`Queue`] implementation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use kestra_core::model::Execution;
use kestra_core::queue::{
    ConsumerGroup, Delivery, DeliveryTag, Envelope, Queue, QueueCapabilities, QueueError, Recorder,
    ReplayStream, Replayable, Subscription, Topic, TriggerUnit, UnitOfWork, check_publish,
};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tracing::{debug, info};

use crate::consumer::GroupConsumer;
use crate::partitioner::partition_for;

/// Header of a dead letter: the topic its message came from.
pub(crate) const H_ORIGIN_TOPIC: &str = "kestra.topic";
/// Header of a dead letter: the consumer group that set it aside.
pub(crate) const H_GROUP: &str = "kestra.group";
/// Header of a dead letter: why.
pub(crate) const H_REASON: &str = "kestra.reason";
/// Header of a dead letter: partition and offset of the original record.
pub(crate) const H_ORIGIN: &str = "kestra.origin";

/// Room left above [`KafkaOptions::max_message_bytes`] for keys, headers and batch overhead in the
/// topics' `max.message.bytes` and the producers' `message.max.bytes`.
const HEADROOM: usize = 64 * 1024;

/// Errors building a [`KafkaQueue`].
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// A setting is out of range.
    #[error("invalid Kafka option {option}: {reason}")]
    InvalidOption {
        /// The option's name.
        option: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The client could not be created or the brokers answered with an error.
    #[error("Kafka {operation} failed (brokers {brokers}): {source}")]
    Client {
        /// What was being done.
        operation: &'static str,
        /// The bootstrap servers.
        brokers: String,
        /// Underlying error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// A topic could not be deleted.
    #[error("cannot delete Kafka topic {topic}: {code}")]
    DeleteTopic {
        /// The topic's full name.
        topic: String,
        /// The broker's answer.
        code: RDKafkaErrorCode,
    },
    /// An operation could not run to its end (its thread failed).
    #[error("Kafka {operation} failed: {detail}")]
    Operation {
        /// What was being done.
        operation: &'static str,
        /// What went wrong.
        detail: String,
    },
    /// A topic could not be created.
    #[error("cannot create Kafka topic {topic}: {code}")]
    CreateTopic {
        /// The topic's full name.
        topic: String,
        /// The broker's answer.
        code: RDKafkaErrorCode,
    },
}

/// Settings of the Kafka queue.
#[derive(Debug, Clone)]
pub struct KafkaOptions {
    /// Bootstrap servers, `host:port[,host:port...]`.
    pub brokers: String,
    /// Prefix of every topic and consumer group name (default `kestra_`).
    pub prefix: String,
    /// Partitions of every topic created at start (default 8): equal for all topics, so the
    /// executor topics and the state changelog are co-partitioned. Existing topics are kept.
    pub partitions: i32,
    /// Replication factor of the topics created at start (default 1).
    pub replication: i32,
    /// The largest payload accepted (default 1 MiB, Kafka's default record size).
    pub max_message_bytes: usize,
    /// Consumer session timeout: a consumer silent this long is thrown out of its group and its
    /// partitions (with their unacknowledged deliveries) go to another member (default 10 s; the
    /// broker accepts 6 s to 5 min by default).
    pub session_timeout: Duration,
    /// How long a consumer whose partitions are being revoked waits for the deliveries it handed
    /// out to be acknowledged before it lets them go (default 10 s).
    pub revoke_grace: Duration,
    /// Messages a consumer buffers ahead of `receive` before it pauses fetching (default 2,000).
    pub prefetch: usize,
}

impl KafkaOptions {
    /// Defaults for `brokers`.
    pub fn new(brokers: impl Into<String>) -> KafkaOptions {
        KafkaOptions {
            brokers: brokers.into(),
            prefix: "kestra_".to_string(),
            partitions: 8,
            replication: 1,
            max_message_bytes: QueueCapabilities::KAFKA_DEFAULT_MAX_MESSAGE_BYTES,
            session_timeout: Duration::from_secs(10),
            revoke_grace: Duration::from_secs(10),
            prefetch: 2_000,
        }
    }

    /// The same options with another topic prefix.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> KafkaOptions {
        self.prefix = prefix.into();
        self
    }

    /// The same options with another partition count.
    pub fn with_partitions(mut self, partitions: i32) -> KafkaOptions {
        self.partitions = partitions;
        self
    }

    fn validate(&self) -> Result<(), KafkaError> {
        let bad = |option, reason: &str| {
            Err(KafkaError::InvalidOption {
                option,
                reason: reason.to_string(),
            })
        };
        if self.brokers.trim().is_empty() {
            return bad("brokers", "no bootstrap server given");
        }
        if !(1..=10_000).contains(&self.partitions) {
            return bad("partitions", "must be between 1 and 10000");
        }
        if self.replication < 1 {
            return bad("replication", "must be at least 1");
        }
        if self.max_message_bytes == 0 || self.max_message_bytes > 512 * 1024 * 1024 {
            return bad("max_message_bytes", "must be between 1 byte and 512 MiB");
        }
        if self
            .prefix
            .chars()
            .any(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return bad(
                "prefix",
                "may hold only ASCII letters, digits, '.', '_' and '-' (Kafka topic names)",
            );
        }
        Ok(())
    }

    /// The full name of `topic`.
    pub fn topic_name(&self, topic: Topic) -> String {
        format!("{}{}", self.prefix, topic.as_str())
    }

    /// The dead-letter topic's full name.
    pub fn dead_letter_topic(&self) -> String {
        format!("{}dead_letter", self.prefix)
    }

    /// The executor state changelog's full name (compacted).
    pub fn state_topic(&self) -> String {
        format!("{}executor_state", self.prefix)
    }

    /// The trigger state changelog's full name (compacted, keyed by trigger uid).
    pub fn trigger_state_topic(&self) -> String {
        format!("{}trigger_state", self.prefix)
    }

    /// The delivery-attempts topic's full name (compacted, one partition, keyed by consumer
    /// group, topic and partition): where an executor consumer notes the committed offset it
    /// starts from, so that the next owner of the partition can tell a redelivery after a crash.
    pub fn delivery_attempts_topic(&self) -> String {
        format!("{}delivery_attempts", self.prefix)
    }

    pub(crate) fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", format!("{}kestra-rs", self.prefix))
            .set("log_level", "4");
        c
    }

    /// The configuration of a transactional producer named `id` (units of work, recorded
    /// receives, trigger units). A coordinator request the broker refuses for now
    /// (`CONCURRENT_TRANSACTIONS`: the previous transaction's markers are still being written,
    /// as they are between back-to-back transactions) is retried after 1 ms (librdkafka's backoff
    /// then doubles), not librdkafka's default 100 ms: `send_offsets_to_transaction` right after
    /// a commit took ~100 ms at the default, ~13 ms at 10 ms and ~3 ms at 1 ms
    /// (`examples/txn_latency.rs`).
    pub(crate) fn transactional_config(&self, id: String) -> ClientConfig {
        let mut c = self.producer_config();
        c.set("transactional.id", id)
            .set("retry.backoff.ms", TXN_RETRY_BACKOFF_MS);
        c
    }

    /// The configuration of the idempotent producer (publishes); transactional producers start
    /// from it. `linger.ms` 0: a record leaves at once (librdkafka still batches what queues
    /// while a request is in flight). Every publish and commit waits for its records, so a
    /// linger is paid on the way of every task: at 2 ms, 40 sequential tasks took 0.95 / 0.88 s
    /// against 0.68 / 0.69 s at 0, with the same throughput (docs/benchmarks, session 25).
    pub(crate) fn producer_config(&self) -> ClientConfig {
        let mut c = self.client_config();
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "0")
            .set("partitioner", "murmur2_random")
            .set(
                "message.max.bytes",
                (self.max_message_bytes + HEADROOM).to_string(),
            );
        c
    }
}

/// `retry.backoff.ms` of the transactional producers ([`KafkaOptions::transactional_config`]).
const TXN_RETRY_BACKOFF_MS: &str = "1";

/// Commit the open transaction of `producer` (from a blocking thread), within `timeout`.
///
/// rust-rdkafka's `commit_transaction` flushes first, and its flush, when a message is still in
/// flight, polls the producer's event queue for a fixed 100 ms - a `FutureProducer`'s own thread
/// serves that queue, so the poll never ends early: every transaction took at least 100 ms
/// (`examples/txn_latency.rs` measures it). Waiting here until librdkafka holds no message any
/// more (every record of the transaction acknowledged by its partition leader) lets that flush
/// return at once; the commit then costs its broker round trips only.
pub(crate) fn commit_transaction(producer: &FutureProducer, timeout: Duration) -> KafkaResult<()> {
    let deadline = std::time::Instant::now() + timeout;
    while producer.in_flight_count() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_micros(500));
    }
    producer.commit_transaction(deadline.saturating_duration_since(std::time::Instant::now()))
}

/// Shared by a queue handle, its consumers and its units.
pub(crate) struct Shared {
    pub(crate) options: KafkaOptions,
    pub(crate) producer: FutureProducer,
    /// The transactional producer of recorded receives, created on first use.
    records: Mutex<Option<FutureProducer>>,
}

impl Shared {
    pub(crate) fn backend(operation: &'static str, e: rdkafka::error::KafkaError) -> QueueError {
        QueueError::backend(operation, e)
    }

    /// Produce `messages` and wait until each is acknowledged by the broker.
    pub(crate) async fn produce_all(&self, messages: &[Envelope]) -> Result<(), QueueError> {
        let mut pending = Vec::with_capacity(messages.len());
        for m in messages {
            let name = self.options.topic_name(m.topic);
            let partition = partition_for(&m.key, self.options.partitions);
            let record = FutureRecord::to(&name)
                .key(m.key.as_bytes())
                .payload(m.payload.as_ref())
                .partition(partition);
            let fut = self
                .producer
                .send_result(record)
                .map_err(|(e, _)| Shared::backend("publish", e))?;
            pending.push(fut);
        }
        for fut in pending {
            match fut.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(Shared::backend("publish", e)),
                Err(_) => {
                    return Err(QueueError::backend(
                        "publish",
                        std::io::Error::other("the producer dropped the record"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Produce `messages` in one transaction (all or none), with the handle's records producer.
    /// One record is all or none by itself: it goes through the idempotent producer, without a
    /// transaction's round trips (a worker records the jobs it takes as one message per claim, so
    /// this is on the way of every task).
    pub(crate) async fn produce_in_transaction(
        self: &Arc<Self>,
        messages: Vec<Envelope>,
    ) -> Result<(), QueueError> {
        if messages.len() <= 1 {
            return self.produce_all(&messages).await;
        }
        let shared = self.clone();
        tokio::task::spawn_blocking(move || -> Result<(), QueueError> {
            let options = &shared.options;
            let mut slot = shared
                .records
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if slot.is_none() {
                let p: FutureProducer = options
                    .transactional_config(format!(
                        "{}records-{}",
                        options.prefix,
                        kestra_core::model::new_id()
                    ))
                    .create()
                    .map_err(|e| Shared::backend("recorded receive (producer)", e))?;
                p.init_transactions(Duration::from_secs(30))
                    .map_err(|e| Shared::backend("recorded receive (init transactions)", e))?;
                *slot = Some(p);
            }
            let Some(producer) = slot.as_ref() else {
                return Err(QueueError::Closed);
            };
            producer
                .begin_transaction()
                .map_err(|e| Shared::backend("recorded receive (begin)", e))?;
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
                        .map_err(|(e, _)| Shared::backend("recorded receive (produce)", e))?;
                }
                commit_transaction(producer, Duration::from_secs(30))
                    .map_err(|e| Shared::backend("recorded receive (commit)", e))
            };
            let result = write();
            if result.is_err() {
                if let Err(e) = producer.abort_transaction(Duration::from_secs(30)) {
                    tracing::warn!(error = %e, "aborting a recorded receive's transaction failed");
                }
                // A producer in an unknown state is replaced on next use.
                *slot = None;
            }
            result
        })
        .await
        .map_err(|e| QueueError::backend("recorded receive", e))?
    }

    /// Produce a dead letter of `delivery` and wait for it.
    pub(crate) async fn produce_dead_letter(
        &self,
        delivery: &Delivery,
        reason: &str,
    ) -> Result<(), QueueError> {
        let name = self.options.dead_letter_topic();
        let origin = format!("{}/{}", delivery.tag.partition, delivery.tag.offset);
        let headers = dead_letter_headers(delivery, reason, &origin);
        let record = FutureRecord::to(&name)
            .key(delivery.envelope.key.as_bytes())
            .payload(delivery.envelope.payload.as_ref())
            .headers(headers);
        self.producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| Shared::backend("dead_letter", e))?;
        Ok(())
    }
}

pub(crate) fn dead_letter_headers(delivery: &Delivery, reason: &str, origin: &str) -> OwnedHeaders {
    OwnedHeaders::new()
        .insert(Header {
            key: H_ORIGIN_TOPIC,
            value: Some(delivery.envelope.topic.as_str()),
        })
        .insert(Header {
            key: H_GROUP,
            value: Some(delivery.group.as_str()),
        })
        .insert(Header {
            key: H_ORIGIN,
            value: Some(origin),
        })
        .insert(Header {
            key: H_REASON,
            value: Some(reason),
        })
}

/// Competing consumers of a handle, by (group, topics).
type ConsumerMap = HashMap<(ConsumerGroup, Vec<Topic>), Arc<GroupConsumer>>;

/// The queue on Kafka. Each handle is one member of each consumer group it receives for: a handle
/// dropped leaves its groups, and its unacknowledged deliveries go to the remaining members.
pub struct KafkaQueue {
    shared: Arc<Shared>,
    /// Competing consumers, by (group, topics) - one topic for `receive`, the unit's topics for
    /// `begin`.
    consumers: Mutex<ConsumerMap>,
    /// Triggers held by this handle's live trigger units.
    claims: crate::triggers::Claims,
}

impl std::fmt::Debug for KafkaQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaQueue")
            .field("options", &self.shared.options)
            .finish_non_exhaustive()
    }
}

impl KafkaQueue {
    /// Connect to the brokers and create the topics that are missing.
    pub async fn connect(options: KafkaOptions) -> Result<KafkaQueue, KafkaError> {
        options.validate()?;
        let client_err = |operation| {
            let brokers = options.brokers.clone();
            move |source| KafkaError::Client {
                operation,
                brokers,
                source,
            }
        };
        let admin: AdminClient<DefaultClientContext> = options
            .client_config()
            .create()
            .map_err(client_err("admin client creation"))?;
        let topic_config = (options.max_message_bytes + HEADROOM).to_string();
        let mut names: Vec<String> = Topic::ALL.iter().map(|t| options.topic_name(*t)).collect();
        names.push(options.dead_letter_topic());
        let state = options.state_topic();
        let triggers = options.trigger_state_topic();
        let attempts = options.delivery_attempts_topic();
        // The flow topic is the flows' only record on Kafka (every revision has its own key):
        // compacted, never expired.
        let flow_topic = options.topic_name(Topic::Flow);
        let mut new_topics: Vec<NewTopic<'_>> = names
            .iter()
            .map(|n| {
                let t = NewTopic::new(
                    n,
                    options.partitions,
                    TopicReplication::Fixed(options.replication),
                )
                .set("max.message.bytes", &topic_config);
                if *n == flow_topic {
                    t.set("cleanup.policy", "compact")
                } else {
                    t
                }
            })
            .collect();
        new_topics.push(
            NewTopic::new(
                &state,
                options.partitions,
                TopicReplication::Fixed(options.replication),
            )
            .set("max.message.bytes", &topic_config)
            .set("cleanup.policy", "compact"),
        );
        new_topics.push(
            NewTopic::new(
                &triggers,
                options.partitions,
                TopicReplication::Fixed(options.replication),
            )
            .set("max.message.bytes", &topic_config)
            .set("cleanup.policy", "compact"),
        );
        new_topics.push(
            NewTopic::new(&attempts, 1, TopicReplication::Fixed(options.replication))
                .set("cleanup.policy", "compact"),
        );
        let results = admin
            .create_topics(
                &new_topics,
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
            )
            .await
            .map_err(client_err("topic creation"))?;
        for r in results {
            match r {
                Ok(topic) => debug!(topic, "created Kafka topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => return Err(KafkaError::CreateTopic { topic, code }),
            }
        }
        info!(brokers = %options.brokers, prefix = %options.prefix, partitions = options.partitions, "Kafka topics ready");
        KafkaQueue::open(options)
    }

    /// Another handle on topics that exist (created by [`KafkaQueue::connect`]): a new producer and
    /// new consumer-group members, without talking to the brokers yet. Each handle is a separate
    /// consumer instance (what several executors or workers are).
    pub fn open(options: KafkaOptions) -> Result<KafkaQueue, KafkaError> {
        options.validate()?;
        let producer: FutureProducer =
            options
                .producer_config()
                .create()
                .map_err(|source| KafkaError::Client {
                    operation: "producer creation",
                    brokers: options.brokers.clone(),
                    source,
                })?;
        Ok(KafkaQueue {
            shared: Arc::new(Shared {
                options,
                producer,
                records: Mutex::new(None),
            }),
            consumers: Mutex::new(HashMap::new()),
            claims: Arc::default(),
        })
    }

    /// Delete every topic of `options`' prefix that this backend creates (the message topics, the
    /// dead letters and the executor state): everything queued and all executor state is lost.
    /// For tests and for an operator who drops a deployment; stop every instance first.
    pub async fn delete_topics(options: &KafkaOptions) -> Result<(), KafkaError> {
        let admin: AdminClient<DefaultClientContext> =
            options
                .client_config()
                .create()
                .map_err(|source| KafkaError::Client {
                    operation: "admin client creation",
                    brokers: options.brokers.clone(),
                    source,
                })?;
        let mut names: Vec<String> = Topic::ALL.iter().map(|t| options.topic_name(*t)).collect();
        names.push(options.dead_letter_topic());
        names.push(options.state_topic());
        names.push(options.trigger_state_topic());
        names.push(options.delivery_attempts_topic());
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let results = admin
            .delete_topics(
                &refs,
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
            )
            .await
            .map_err(|source| KafkaError::Client {
                operation: "topic deletion",
                brokers: options.brokers.clone(),
                source,
            })?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                Err((topic, code)) => return Err(KafkaError::DeleteTopic { topic, code }),
            }
        }
        Ok(())
    }

    /// Every execution as last committed in the executor state changelog (all partitions, read
    /// from the start): the orchestration's source of truth on Kafka, readable while the
    /// repositories are down. For inspection and tests; it reads the whole changelog.
    pub async fn executions(options: &KafkaOptions) -> Result<Vec<Execution>, QueueError> {
        let options = options.clone();
        tokio::task::spawn_blocking(move || -> Result<Vec<Execution>, QueueError> {
            let all = (0..options.partitions).collect();
            let (store, _) =
                crate::consumer::read_changelog(&options, &options.state_topic(), &all)
                    .map_err(|e| Shared::backend("read the executor state", e))?;
            let prefix = format!(
                "{}{}",
                crate::consumer::EXECUTION_KIND,
                crate::consumer::SEP
            );
            store
                .into_values()
                .flat_map(|m| m.into_iter())
                .filter(|(k, _)| k.starts_with(&prefix))
                .map(|(_, v)| {
                    serde_json::from_value(v)
                        .map_err(|e| QueueError::backend("read the executor state (document)", e))
                })
                .collect()
        })
        .await
        .map_err(|e| QueueError::backend("read the executor state", e))?
    }

    /// The options this queue runs with.
    pub fn options(&self) -> &KafkaOptions {
        &self.shared.options
    }

    fn consumer(
        &self,
        group: ConsumerGroup,
        topics: &[Topic],
        units: bool,
    ) -> Result<Arc<GroupConsumer>, QueueError> {
        let mut topics = topics.to_vec();
        topics.sort();
        topics.dedup();
        let mut map = self
            .consumers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = map.get(&(group, topics.clone())) {
            return Ok(c.clone());
        }
        let c = Arc::new(GroupConsumer::start(
            self.shared.clone(),
            group,
            topics.clone(),
            units,
        )?);
        map.insert((group, topics), c.clone());
        Ok(c)
    }

    /// The member of `{prefix}scheduler.store` that owns some of the trigger states (the key
    /// with no topic in the consumer map).
    fn trigger_store(&self) -> Result<Arc<GroupConsumer>, QueueError> {
        let key = (ConsumerGroup::Scheduler, Vec::new());
        let mut map = self
            .consumers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = map.get(&key) {
            return Ok(c.clone());
        }
        let c = Arc::new(GroupConsumer::start_store(
            self.shared.clone(),
            ConsumerGroup::Scheduler,
            self.shared.options.trigger_state_topic(),
        )?);
        map.insert(key, c.clone());
        Ok(c)
    }

    fn consumers_of(&self, group: ConsumerGroup) -> Vec<Arc<GroupConsumer>> {
        self.consumers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|((g, _), _)| *g == group)
            .map(|(_, c)| c.clone())
            .collect()
    }
}

impl Drop for KafkaQueue {
    fn drop(&mut self) {
        for c in self
            .consumers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
        {
            c.stop();
        }
    }
}

#[async_trait]
impl Queue for KafkaQueue {
    fn capabilities(&self) -> QueueCapabilities {
        QueueCapabilities {
            lease_timers: false,
            max_message_bytes: self.shared.options.max_message_bytes,
            // Executions live in the state changelog; a repository follows through the indexer
            // (the executor stages an ExecutionChange per save).
            repository_in_unit: false,
        }
    }

    async fn publish(&self, messages: Vec<Envelope>) -> Result<(), QueueError> {
        check_publish(&messages, self.shared.options.max_message_bytes)?;
        self.shared.produce_all(&messages).await
    }

    async fn receive(
        &self,
        group: ConsumerGroup,
        topic: Topic,
        max: usize,
        _lease: Duration,
        wait: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        let consumer = self.consumer(group, &[topic], false)?;
        consumer.take_waiting(&[topic], max, wait).await
    }

    async fn receive_recorded(
        &self,
        group: ConsumerGroup,
        topic: Topic,
        max: usize,
        _lease: Duration,
        wait: Duration,
        record: &Recorder,
    ) -> Result<Vec<Delivery>, QueueError> {
        let consumer = self.consumer(group, &[topic], false)?;
        let taken = consumer.take_waiting(&[topic], max, wait).await?;
        if taken.is_empty() {
            return Ok(taken);
        }
        let records = match record(&taken)
            .and_then(|r| check_publish(&r, self.shared.options.max_message_bytes).map(|()| r))
        {
            Ok(r) => r,
            Err(e) => {
                consumer.release(&taken);
                return Err(e);
            }
        };
        if let Err(e) = self.shared.produce_in_transaction(records).await {
            consumer.release(&taken);
            return Err(e);
        }
        Ok(taken)
    }

    async fn ack(&self, group: ConsumerGroup, tags: &[DeliveryTag]) -> Result<(), QueueError> {
        if tags.is_empty() {
            return Ok(());
        }
        for c in self.consumers_of(group) {
            c.ack(tags)?;
        }
        Ok(())
    }

    async fn extend_lease(
        &self,
        group: ConsumerGroup,
        tags: &[DeliveryTag],
        _lease: Duration,
    ) -> Result<Vec<DeliveryTag>, QueueError> {
        let consumers = self.consumers_of(group);
        Ok(tags
            .iter()
            .filter(|t| !consumers.iter().any(|c| c.holds(t)))
            .copied()
            .collect())
    }

    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<(), QueueError> {
        self.shared.produce_dead_letter(delivery, reason).await?;
        self.ack(delivery.group, &[delivery.tag]).await
    }

    async fn subscribe(&self, topic: Topic) -> Result<Subscription, QueueError> {
        kestra_core::queue::check_broadcast(topic)?;
        crate::broadcast::subscribe(&self.shared.options, topic).await
    }

    async fn replay(&self, stream: Replayable) -> Result<ReplayStream, QueueError> {
        crate::broadcast::replay(&self.shared.options, stream).await
    }

    async fn begin(
        &self,
        group: ConsumerGroup,
        topics: &[Topic],
        max: usize,
        wait: Duration,
    ) -> Result<Option<Box<dyn UnitOfWork>>, QueueError> {
        let all: Vec<Topic> = Topic::ALL
            .into_iter()
            .filter(|t| t.groups().contains(&group))
            .collect();
        if let Some(t) = topics.iter().find(|t| !all.contains(t)) {
            return Err(QueueError::backend(
                "begin",
                std::io::Error::other(format!("group {group} does not consume topic {t}")),
            ));
        }
        let consumer = self.consumer(group, &all, true)?;
        let taken = consumer.take_waiting(topics, max, wait).await?;
        if taken.is_empty() {
            return Ok(None);
        }
        Ok(Some(Box::new(crate::unit::KafkaUnit::new(
            self.shared.clone(),
            consumer,
            taken,
        ))))
    }

    async fn begin_triggers(&self) -> Result<Box<dyn TriggerUnit>, QueueError> {
        let store = self.trigger_store()?;
        if !store.wait_assigned(Duration::from_secs(30)).await {
            return Err(QueueError::backend(
                "begin_triggers",
                std::io::Error::other(
                    "no partition of the trigger states was assigned to this scheduler within 30 s",
                ),
            ));
        }
        let receivers = self
            .consumers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|((g, topics), _)| *g == ConsumerGroup::Scheduler && !topics.is_empty())
            .map(|(_, c)| c.clone())
            .collect();
        Ok(Box::new(crate::triggers::KafkaTriggerUnit::new(
            self.shared.clone(),
            store,
            receivers,
            self.claims.clone(),
        )))
    }
}
