//! Operations on a Kafka deployment, without starting the engine: [`purge`] (the Kafka form of
//! `kestra sys purge-queue`) and dead-letter inspection ([`dead_letters`]).
//!
//! **Purge.** Kafka keeps records until their topic's retention ends; a purge deletes them
//! earlier (`DeleteRecords`, which moves each partition's log start offset). With
//! [`PurgeScope::Consumed`] it deletes, in each message topic, the records every consumer group
//! of the deployment (the groups named with its prefix) has committed past: nothing a consumer
//! still has to read is lost. A partition no group has committed on is left alone, and so are
//! the topics that hold state rather than messages (flows, executor state, trigger states: they
//! are compacted) and the broadcast-only topic (its subscribers commit nothing; it expires by
//! retention), and the dead letters (inspect them first). [`PurgeScope::All`] deletes every record
//! of the message topics and the dead letters, consumed or not: stop every instance first.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use kestra_core::queue::Topic;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError as RdError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::queue::{H_GROUP, H_ORIGIN, H_ORIGIN_TOPIC, H_REASON, KafkaError, KafkaOptions};

const TIMEOUT: Duration = Duration::from_secs(10);

/// What [`purge`] deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurgeScope {
    /// The records of the message topics that every consumer group has committed past.
    Consumed,
    /// Every record of the message topics and the dead letters (stop every instance first).
    All,
}

/// What [`purge`] did to one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPurge {
    /// The topic's full name.
    pub topic: String,
    /// Records deleted (sum over partitions of the log start offset's move).
    pub deleted: i64,
    /// Records left (end offset minus the new log start offset, over partitions).
    pub remaining: i64,
    /// The consumer groups whose committed offsets bounded the deletion (scope `Consumed`).
    pub groups: Vec<String>,
    /// Why the topic was left alone, if it was.
    pub skipped: Option<String>,
}

/// The report of a [`purge`], printed as a table by its `Display`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeReport {
    /// The scope asked for.
    pub scope: PurgeScope,
    /// One line per topic of the deployment.
    pub topics: Vec<TopicPurge>,
}

impl PurgeReport {
    /// Records deleted over every topic.
    pub fn deleted(&self) -> i64 {
        self.topics.iter().map(|t| t.deleted).sum()
    }
}

impl fmt::Display for PurgeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self
            .topics
            .iter()
            .map(|t| t.topic.len())
            .max()
            .unwrap_or(5)
            .max(5);
        writeln!(
            f,
            "{:<width$}  {:>9}  {:>9}  NOTE",
            "TOPIC", "DELETED", "REMAINING"
        )?;
        for t in &self.topics {
            let note = match (&t.skipped, t.groups.is_empty()) {
                (Some(why), _) => format!("kept: {why}"),
                (None, false) => format!("up to the offsets of {}", t.groups.join(", ")),
                (None, true) => String::new(),
            };
            writeln!(
                f,
                "{:<width$}  {:>9}  {:>9}  {note}",
                t.topic, t.deleted, t.remaining
            )?;
        }
        write!(
            f,
            "{} records deleted ({})",
            self.deleted(),
            match self.scope {
                PurgeScope::Consumed => "consumed by every consumer group",
                PurgeScope::All => "all records of the message topics and the dead letters",
            }
        )
    }
}

/// One record of the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetter {
    /// Partition of the dead-letter topic.
    pub partition: i32,
    /// Offset in that partition.
    pub offset: i64,
    /// When it was set aside (milliseconds since the epoch), if known.
    pub timestamp: Option<i64>,
    /// The topic the message came from (`worker_job`, ...).
    pub origin_topic: Option<String>,
    /// The consumer group that set it aside.
    pub group: Option<String>,
    /// `partition/offset` of the original record.
    pub origin: Option<String>,
    /// Why it was set aside.
    pub reason: Option<String>,
    /// The message key.
    pub key: String,
    /// The payload, as text (invalid UTF-8 replaced).
    pub payload: String,
}

fn client_error(options: &KafkaOptions, operation: &'static str) -> impl Fn(RdError) -> KafkaError {
    let brokers = options.brokers.clone();
    move |source| KafkaError::Client {
        operation,
        brokers: brokers.clone(),
        source,
    }
}

fn reader(options: &KafkaOptions, group: &str) -> Result<BaseConsumer, KafkaError> {
    options
        .client_config()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create()
        .map_err(client_error(options, "admin consumer creation"))
}

/// (partition, low, high) of every partition of `topic`; empty when the topic does not exist.
fn watermarks(
    consumer: &BaseConsumer,
    options: &KafkaOptions,
    topic: &str,
) -> Result<Vec<(i32, i64, i64)>, KafkaError> {
    let metadata = consumer
        .fetch_metadata(Some(topic), TIMEOUT)
        .map_err(client_error(options, "topic metadata"))?;
    let mut out = Vec::new();
    for t in metadata.topics() {
        if t.error().is_some() {
            continue;
        }
        for p in t.partitions() {
            let (low, high) = consumer
                .fetch_watermarks(topic, p.id(), TIMEOUT)
                .map_err(client_error(options, "partition offsets"))?;
            out.push((p.id(), low, high));
        }
    }
    out.sort();
    Ok(out)
}

/// The message topics of a deployment and why a `Consumed` purge keeps some.
fn message_topics(options: &KafkaOptions) -> Vec<(String, Option<&'static str>)> {
    let mut out: Vec<(String, Option<&'static str>)> = Topic::ALL
        .iter()
        .map(|t| {
            let keep = match t {
                Topic::Flow => Some("flows (compacted state, never purged)"),
                _ if t.groups().is_empty() => {
                    Some("broadcast only (no committed offsets); expires by retention")
                }
                _ => None,
            };
            (options.topic_name(*t), keep)
        })
        .collect();
    out.push((
        options.dead_letter_topic(),
        Some("dead letters (inspect them; purged with --all)"),
    ));
    out
}

/// Delete records of the deployment's topics (see the module documentation for what each
/// [`PurgeScope`] deletes and keeps). Returns a line per topic.
pub async fn purge(options: &KafkaOptions, scope: PurgeScope) -> Result<PurgeReport, KafkaError> {
    let admin: AdminClient<DefaultClientContext> = options
        .client_config()
        .create()
        .map_err(client_error(options, "admin client creation"))?;
    let opts = options.clone();
    // The plan: per topic, the offsets to delete up to (blocking reads of offsets).
    type Plan = Vec<(
        String,
        Vec<(i32, i64, i64, i64)>,
        Vec<String>,
        Option<String>,
    )>;
    let plan = tokio::task::spawn_blocking(move || -> Result<Plan, KafkaError> {
        let options = opts;
        let probe = reader(&options, &format!("{}purge-probe", options.prefix))?;
        let groups: Vec<String> = probe
            .fetch_group_list(None, TIMEOUT)
            .map_err(client_error(&options, "consumer group list"))?
            .groups()
            .iter()
            .map(|g| g.name().to_string())
            .filter(|g| g.starts_with(&options.prefix))
            .collect();
        let mut plan = Vec::new();
        for (topic, keep) in message_topics(&options) {
            let marks = watermarks(&probe, &options, &topic)?;
            let keep = match scope {
                PurgeScope::Consumed => keep,
                PurgeScope::All => keep.filter(|_| topic == options.topic_name(Topic::Flow)),
            };
            if let Some(why) = keep {
                plan.push((
                    topic,
                    marks.iter().map(|(p, l, h)| (*p, *l, *h, *l)).collect(),
                    Vec::new(),
                    Some(why.to_string()),
                ));
                continue;
            }
            if scope == PurgeScope::All {
                plan.push((
                    topic,
                    marks.iter().map(|(p, l, h)| (*p, *l, *h, *h)).collect(),
                    Vec::new(),
                    None,
                ));
                continue;
            }
            // The bound of each partition: the lowest committed offset among the groups that
            // committed on this topic (a group with none on a partition holds it at its start).
            let mut bound: BTreeMap<i32, i64> = marks.iter().map(|(p, _, h)| (*p, *h)).collect();
            let mut consumers = Vec::new();
            for group in &groups {
                let mut tpl = TopicPartitionList::new();
                for (p, _, _) in &marks {
                    tpl.add_partition(&topic, *p);
                }
                let member = reader(&options, group)?;
                let committed = member
                    .committed_offsets(tpl, TIMEOUT)
                    .map_err(client_error(&options, "committed offsets"))?;
                let offsets: Vec<(i32, Option<i64>)> = committed
                    .elements_for_topic(&topic)
                    .iter()
                    .map(|e| match e.offset() {
                        Offset::Offset(o) => (e.partition(), Some(o)),
                        _ => (e.partition(), None),
                    })
                    .collect();
                if offsets.iter().all(|(_, o)| o.is_none()) {
                    continue;
                }
                consumers.push(group.clone());
                for (p, o) in offsets {
                    let low = marks.iter().find(|m| m.0 == p).map_or(0, |m| m.1);
                    let b = bound.entry(p).or_insert(low);
                    *b = (*b).min(o.unwrap_or(low));
                }
            }
            if consumers.is_empty() {
                plan.push((
                    topic,
                    marks.iter().map(|(p, l, h)| (*p, *l, *h, *l)).collect(),
                    Vec::new(),
                    Some("no consumer group has committed on it".to_string()),
                ));
                continue;
            }
            plan.push((
                topic,
                marks
                    .iter()
                    .map(|(p, l, h)| (*p, *l, *h, bound.get(p).copied().unwrap_or(*l).max(*l)))
                    .collect(),
                consumers,
                None,
            ));
        }
        Ok(plan)
    })
    .await
    .map_err(|e| KafkaError::Operation {
        operation: "purge",
        detail: e.to_string(),
    })??;

    let mut topics = Vec::new();
    for (topic, parts, groups, skipped) in plan {
        let mut tpl = TopicPartitionList::new();
        for (p, low, _, to) in &parts {
            if to > low {
                tpl.add_partition_offset(&topic, *p, Offset::Offset(*to))
                    .map_err(client_error(options, "purge"))?;
            }
        }
        let mut deleted = 0;
        let mut remaining: i64 = parts.iter().map(|(_, l, h, _)| h - l).sum();
        if tpl.count() > 0 {
            let result = admin
                .delete_records(
                    &tpl,
                    &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
                )
                .await
                .map_err(client_error(options, "delete records"))?;
            for e in result.elements() {
                if let Err(err) = e.error() {
                    return Err(client_error(options, "delete records")(err));
                }
                let Some((_, low, high, _)) = parts.iter().find(|x| x.0 == e.partition()) else {
                    continue;
                };
                if let Offset::Offset(new_low) = e.offset() {
                    deleted += new_low - low;
                    remaining -= new_low - low;
                    let _ = high;
                }
            }
        }
        topics.push(TopicPurge {
            topic,
            deleted,
            remaining,
            groups,
            skipped,
        });
    }
    Ok(PurgeReport { scope, topics })
}

/// Every record of the dead-letter topic, oldest first per partition (at most `limit`).
pub async fn dead_letters(
    options: &KafkaOptions,
    limit: usize,
) -> Result<Vec<DeadLetter>, KafkaError> {
    let options = options.clone();
    tokio::task::spawn_blocking(move || -> Result<Vec<DeadLetter>, KafkaError> {
        let topic = options.dead_letter_topic();
        let consumer = reader(
            &options,
            &format!(
                "{}dead-letters-{}",
                options.prefix,
                kestra_core::model::new_id()
            ),
        )?;
        let marks = watermarks(&consumer, &options, &topic)?;
        let mut tpl = TopicPartitionList::new();
        let mut remaining = std::collections::BTreeSet::new();
        for (p, low, high) in &marks {
            if high > low {
                tpl.add_partition_offset(&topic, *p, Offset::Offset(*low))
                    .map_err(client_error(&options, "dead letters"))?;
                remaining.insert(*p);
            }
        }
        let mut out = Vec::new();
        if remaining.is_empty() {
            return Ok(out);
        }
        consumer
            .assign(&tpl)
            .map_err(client_error(&options, "dead letters"))?;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !remaining.is_empty() && out.len() < limit && std::time::Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(500)) {
                Some(Ok(m)) => {
                    let header = |name: &str| {
                        m.headers().and_then(|h| {
                            h.iter()
                                .find(|x| x.key == name)
                                .and_then(|x| x.value)
                                .map(|v| String::from_utf8_lossy(v).into_owned())
                        })
                    };
                    out.push(DeadLetter {
                        partition: m.partition(),
                        offset: m.offset(),
                        timestamp: m.timestamp().to_millis(),
                        origin_topic: header(H_ORIGIN_TOPIC),
                        group: header(H_GROUP),
                        origin: header(H_ORIGIN),
                        reason: header(H_REASON),
                        key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                        payload: String::from_utf8_lossy(m.payload().unwrap_or_default())
                            .into_owned(),
                    });
                }
                Some(Err(RdError::PartitionEOF(p))) => {
                    remaining.remove(&p);
                }
                Some(Err(e)) => return Err(client_error(&options, "dead letters")(e)),
                None => {}
            }
        }
        out.sort_by_key(|d| (d.partition, d.offset));
        Ok(out)
    })
    .await
    .map_err(|e| KafkaError::Operation {
        operation: "dead letters",
        detail: e.to_string(),
    })?
}

/// How many dead letters there are (sum over partitions of end minus start offsets: records
/// deleted by a purge are not counted).
pub async fn count_dead_letters(options: &KafkaOptions) -> Result<i64, KafkaError> {
    let options = options.clone();
    tokio::task::spawn_blocking(move || -> Result<i64, KafkaError> {
        let consumer = reader(
            &options,
            &format!(
                "{}dead-letters-{}",
                options.prefix,
                kestra_core::model::new_id()
            ),
        )?;
        let marks = watermarks(&consumer, &options, &options.dead_letter_topic())?;
        Ok(marks.iter().map(|(_, l, h)| h - l).sum())
    })
    .await
    .map_err(|e| KafkaError::Operation {
        operation: "count dead letters",
        detail: e.to_string(),
    })?
}
