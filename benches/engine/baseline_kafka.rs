//! The raw baseline of the engine benchmark on Kafka (issue 15): the minimum records one execution
//! of each shape needs on the broker the engine is measured on, done by a tight loop of plain
//! rdkafka calls (topics of its own, `kestra_bench_raw_<id>_*`, one partition each, deleted at the
//! end).
//!
//! The model is the engine's on Kafka ([`kestra::kafka`]), with nothing else:
//! - **emit**: one record produced by an idempotent producer (`acks=all`), waited for;
//! - **executor unit**: one record polled by the executor's consumer (a consumer group,
//!   `read_committed`), then one transaction of a transactional producer holding the execution's
//!   state record (1 KiB, compacted topic), the jobs the unit starts and the consumed offset
//!   (`send_offsets_to_transaction`); the state is read from memory, as the engine's local store
//!   reads it;
//! - **worker**: one job polled by the worker's consumer (its own group, `read_committed`), its
//!   result produced and waited for, the consumed offset committed without waiting.
//!
//! A sequential flow of `k` tasks is one emit, `k` times (executor unit starting a job, worker
//! task) and a final executor unit; a fan-out of width `w` is one emit, one executor unit starting
//! `w` jobs, `w` worker tasks and `w` executor units - the same steps as the SQL baseline
//! (`baseline.rs`). No expression, no flow, no logs, no batching across executions, no indexer,
//! records of fixed size (1 KiB state, 256-byte messages).
//!
//! Blocking calls (librdkafka's transactional API blocks): run it from a blocking thread. Written
//! by hand because it is the thing measured.

use std::time::{Duration, Instant};

use kestra::kafka::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use kestra::kafka::rdkafka::client::DefaultClientContext;
use kestra::kafka::rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use kestra::kafka::rdkafka::error::KafkaError;
use kestra::kafka::rdkafka::message::Message;
use kestra::kafka::rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use kestra::kafka::rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// Bytes of an execution's state record.
const STATE: usize = 1024;
/// Bytes of a message (execution, job, result).
const MESSAGE: usize = 256;
/// How long a poll may wait for a record the model knows is coming.
const WAIT: Duration = Duration::from_secs(20);
/// The baseline's topics (after its prefix).
const TOPICS: [&str; 4] = ["execution", "result", "job", "state"];

/// Wait until every record `producer` sent is acknowledged, serving its delivery reports.
///
/// rust-rdkafka's `flush` (which `commit_transaction` calls first) polls for the whole time left
/// when a delivery report is late, so that a flush often took 100 ms or more; polling in short
/// steps here returns as soon as the last report is in (the engine does the same).
fn settle(producer: &BaseProducer) -> Result<(), KafkaError> {
    let start = Instant::now();
    while producer.in_flight_count() > 0 {
        if start.elapsed() > WAIT {
            return Err(KafkaError::Flush(
                kestra::kafka::rdkafka::types::RDKafkaErrorCode::MessageTimedOut,
            ));
        }
        producer.poll(Duration::from_micros(200));
    }
    Ok(())
}

/// The clients of the Kafka baseline and the names of its topics.
pub struct RawKafka {
    brokers: String,
    prefix: String,
    emitter: BaseProducer,
    txn: BaseProducer,
    executor: BaseConsumer,
    worker: BaseConsumer,
}

impl RawKafka {
    /// Create the baseline's topics on `brokers`, its producers (the transactional one
    /// initialised) and its two consumers, and wait until both consumers have their partitions.
    pub fn connect(brokers: &str) -> Result<RawKafka, KafkaError> {
        let prefix = format!(
            "kestra_bench_raw_{}_",
            kestra::core::model::new_id().to_lowercase()
        );
        let base = |c: &mut ClientConfig| {
            c.set("bootstrap.servers", brokers).set("log_level", "4");
        };
        let admin: AdminClient<DefaultClientContext> = {
            let mut c = ClientConfig::new();
            base(&mut c);
            c.create()?
        };
        let names: Vec<String> = TOPICS.iter().map(|t| format!("{prefix}{t}")).collect();
        let topics: Vec<NewTopic<'_>> = names
            .iter()
            .map(|name| {
                let topic = NewTopic::new(name, 1, TopicReplication::Fixed(1));
                if name.ends_with("state") {
                    topic.set("cleanup.policy", "compact")
                } else {
                    topic
                }
            })
            .collect();
        let created =
            futures::executor::block_on(admin.create_topics(&topics, &AdminOptions::new()))?;
        for r in created {
            r.map_err(|(_topic, code)| KafkaError::AdminOp(code))?;
        }
        let producer = |transactional: Option<String>| -> Result<BaseProducer, KafkaError> {
            let mut c = ClientConfig::new();
            base(&mut c);
            c.set("enable.idempotence", "true")
                .set("acks", "all")
                .set("linger.ms", "0");
            if let Some(id) = transactional {
                // The engine's setting (`KafkaOptions::transactional_config`): back-to-back
                // units (a fan-out's) are refused `CONCURRENT_TRANSACTIONS` until the previous
                // commit's markers are written, and retried after this.
                c.set("transactional.id", id).set("retry.backoff.ms", "1");
            }
            c.create()
        };
        let emitter = producer(None)?;
        let txn = producer(Some(format!("{prefix}executor")))?;
        txn.init_transactions(WAIT)?;
        let consumer = |group: &str, topics: &[&str]| -> Result<BaseConsumer, KafkaError> {
            let mut c = ClientConfig::new();
            base(&mut c);
            let consumer: BaseConsumer = c
                .set("group.id", format!("{prefix}{group}"))
                .set("enable.auto.commit", "false")
                .set("auto.offset.reset", "earliest")
                .set("isolation.level", "read_committed")
                .set("fetch.wait.max.ms", "50")
                .create()?;
            let names: Vec<String> = topics.iter().map(|t| format!("{prefix}{t}")).collect();
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            consumer.subscribe(&names)?;
            Ok(consumer)
        };
        let executor = consumer("executor", &["execution", "result"])?;
        let worker = consumer("worker", &["job"])?;
        let start = Instant::now();
        for c in [&executor, &worker] {
            while c.assignment().map(|a| a.count()).unwrap_or(0) == 0 {
                if start.elapsed() > WAIT {
                    return Err(KafkaError::Subscription(
                        "the raw baseline's consumers got no partition".to_string(),
                    ));
                }
                // Nothing is produced before both are assigned: a poll here returns no record.
                if let Some(Err(e)) = c.poll(Duration::from_millis(50)) {
                    return Err(e);
                }
            }
        }
        Ok(RawKafka {
            brokers: brokers.to_string(),
            prefix,
            emitter,
            txn,
            executor,
            worker,
        })
    }

    fn topic(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Produce one message on `topic` and wait until the broker has it.
    fn emit(&self, topic: &str, key: &str) -> Result<(), KafkaError> {
        let payload = [b'm'; MESSAGE];
        let name = self.topic(topic);
        self.emitter
            .send(BaseRecord::to(&name).key(key).payload(&payload[..]))
            .map_err(|(e, _)| e)?;
        settle(&self.emitter)
    }

    /// The next record of `consumer` as (topic, partition, offset), waiting for it.
    fn next(consumer: &BaseConsumer) -> Result<(String, i32, i64), KafkaError> {
        let start = Instant::now();
        while start.elapsed() < WAIT {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => return Ok((m.topic().to_string(), m.partition(), m.offset())),
                Some(Err(e)) => return Err(e),
                None => {}
            }
        }
        Err(KafkaError::NoMessageReceived)
    }

    /// One executor unit: take the next record of the executor's topics and, in one transaction,
    /// write the execution's state, start `jobs` jobs and commit the consumed offset.
    fn unit(&self, execution: &str, jobs: usize) -> Result<(), KafkaError> {
        let (topic, partition, offset) = Self::next(&self.executor)?;
        let state = [b's'; STATE];
        let job = [b'j'; MESSAGE];
        let (state_topic, job_topic) = (self.topic("state"), self.topic("job"));
        self.txn.begin_transaction()?;
        let written = (|| {
            self.txn
                .send(
                    BaseRecord::to(&state_topic)
                        .key(execution)
                        .payload(&state[..]),
                )
                .map_err(|(e, _)| e)?;
            for _ in 0..jobs {
                self.txn
                    .send(BaseRecord::to(&job_topic).key(execution).payload(&job[..]))
                    .map_err(|(e, _)| e)?;
            }
            let mut offsets = TopicPartitionList::new();
            offsets.add_partition_offset(&topic, partition, Offset::Offset(offset + 1))?;
            let metadata = self
                .executor
                .group_metadata()
                .ok_or_else(|| KafkaError::Subscription("no group metadata".to_string()))?;
            self.txn
                .send_offsets_to_transaction(&offsets, &metadata, WAIT)?;
            settle(&self.txn)?;
            self.txn.commit_transaction(WAIT)
        })();
        if written.is_err() {
            let _ = self.txn.abort_transaction(WAIT);
        }
        written
    }

    /// One task of the model: the worker takes a job, hands its result back and commits its offset.
    fn task(&self, execution: &str) -> Result<(), KafkaError> {
        let (topic, partition, offset) = Self::next(&self.worker)?;
        self.emit("result", execution)?;
        let mut done = TopicPartitionList::new();
        done.add_partition_offset(&topic, partition, Offset::Offset(offset + 1))?;
        self.worker.commit(&done, CommitMode::Async)
    }

    /// One execution of a flow of `tasks` sequential tasks, from its creation to its end.
    pub fn sequential(&self, tasks: usize) -> Result<Duration, KafkaError> {
        let execution = kestra::core::model::new_id();
        let start = Instant::now();
        self.emit("execution", &execution)?;
        self.unit(&execution, 1)?;
        for i in 0..tasks {
            self.task(&execution)?;
            self.unit(&execution, usize::from(i + 1 < tasks))?;
        }
        Ok(start.elapsed())
    }

    /// One execution of a fan-out of `width` tasks (ForEach, Parallel), from its creation to its
    /// end.
    pub fn fan_out(&self, width: usize) -> Result<Duration, KafkaError> {
        let execution = kestra::core::model::new_id();
        let start = Instant::now();
        self.emit("execution", &execution)?;
        self.unit(&execution, width)?;
        for _ in 0..width {
            self.task(&execution)?;
        }
        for _ in 0..width {
            self.unit(&execution, 0)?;
        }
        Ok(start.elapsed())
    }

    /// Delete the baseline's topics.
    pub fn delete_topics(self) -> Result<(), KafkaError> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("log_level", "4");
        let admin: AdminClient<DefaultClientContext> = c.create()?;
        let names: Vec<String> = TOPICS.iter().map(|t| self.topic(t)).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        drop((self.executor, self.worker));
        futures::executor::block_on(admin.delete_topics(&names, &AdminOptions::new()))?;
        Ok(())
    }
}
