//! How far behind the indexer is: per topic it consumes, the age of the oldest message it holds
//! and has not stored yet (a batch being written, or retried while the repository is down), or,
//! between batches, how long the last batch waited; zero once a receive found the topic empty.
//!
//! Read by the webserver's `/metrics` (`kestra_indexer_lag_seconds`) for an indexer in its own
//! process, and published in the indexer's heartbeat (`props.lagSeconds`) for the others, so
//! `kestra sys services --json` shows it too. Ages come from [`Delivery::published_at`]; a
//! backend that does not know it gives no lag for its messages.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock, PoisonError};

use chrono::{DateTime, Utc};

use crate::queue::{Delivery, Topic};

#[derive(Debug, Default, Clone, Copy)]
struct TopicLag {
    /// The publish time of the oldest message received and not stored yet.
    pending: Option<DateTime<Utc>>,
    /// How long the last stored batch waited (its oldest message), or zero once caught up.
    last: f64,
}

/// The indexer's lag per topic (see the module documentation). Shared between the indexer's
/// loops and whoever reports it.
#[derive(Debug, Default)]
pub struct IndexerLag {
    topics: Mutex<BTreeMap<Topic, TopicLag>>,
    instance: OnceLock<String>,
}

impl IndexerLag {
    /// The service instance id of the indexer this is the lag of, once it runs.
    pub fn instance(&self) -> Option<&str> {
        self.instance.get().map(String::as_str)
    }

    /// Record the instance id (the first one given is kept).
    pub(crate) fn set_instance(&self, id: &str) {
        let _ = self.instance.set(id.to_string());
    }

    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<Topic, TopicLag>) -> R) -> R {
        f(&mut self.topics.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// A receive of `topic` found nothing: caught up.
    pub fn caught_up(&self, topic: Topic) {
        self.with(|t| {
            *t.entry(topic).or_default() = TopicLag::default();
        });
    }

    /// A batch of `topic` was received and is being stored.
    pub fn received(&self, topic: Topic, batch: &[Delivery]) {
        let oldest = batch.iter().filter_map(|d| d.published_at).min();
        self.with(|t| t.entry(topic).or_default().pending = oldest);
    }

    /// The batch of `topic` received last is stored (or set aside) at `now`.
    pub fn stored(&self, topic: Topic, now: DateTime<Utc>) {
        self.with(|t| {
            let lag = t.entry(topic).or_default();
            lag.last = lag.pending.take().map_or(0.0, |p| seconds(now - p));
        });
    }

    /// The lag of each topic seen so far at `now`, in seconds.
    pub fn seconds_at(&self, now: DateTime<Utc>) -> BTreeMap<Topic, f64> {
        self.with(|t| {
            t.iter()
                .map(|(topic, lag)| {
                    let value = lag.pending.map_or(lag.last, |p| seconds(now - p));
                    (*topic, value)
                })
                .collect()
        })
    }

    /// The lag of each topic seen so far, in seconds.
    pub fn seconds(&self) -> BTreeMap<Topic, f64> {
        self.seconds_at(Utc::now())
    }

    /// The heartbeat properties that carry it: `{"lagSeconds": {"<topic>": seconds, ...}}`.
    pub fn props(&self) -> serde_json::Map<String, serde_json::Value> {
        let by_topic: serde_json::Map<String, serde_json::Value> = self
            .seconds()
            .into_iter()
            .map(|(topic, s)| (topic.to_string(), serde_json::json!(s)))
            .collect();
        let mut props = serde_json::Map::new();
        props.insert("lagSeconds".into(), serde_json::Value::Object(by_topic));
        props
    }
}

/// A duration in seconds, never negative (clocks of two machines may disagree).
fn seconds(d: chrono::Duration) -> f64 {
    (d.num_milliseconds().max(0) as f64) / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{ConsumerGroup, DeliveryTag, Envelope};

    fn delivery(published_at: Option<DateTime<Utc>>) -> Delivery {
        Delivery {
            tag: DeliveryTag {
                topic: Topic::Log,
                partition: 0,
                offset: 1,
            },
            group: ConsumerGroup::Indexer,
            envelope: Envelope::new(Topic::Log, "k", bytes::Bytes::from_static(b"{}")),
            attempt: 1,
            published_at,
        }
    }

    #[test]
    fn lag_grows_while_a_batch_waits_and_falls_once_caught_up() {
        let lag = IndexerLag::default();
        let t0 = Utc::now();
        let s = chrono::Duration::seconds;
        assert!(lag.seconds_at(t0).is_empty(), "nothing seen yet");
        lag.received(
            Topic::Log,
            &[
                delivery(Some(t0 + s(2))),
                delivery(Some(t0)),
                delivery(None),
            ],
        );
        // The oldest message of the batch counts, and the lag grows while it is not stored.
        assert_eq!(lag.seconds_at(t0 + s(5))[&Topic::Log], 5.0);
        assert_eq!(lag.seconds_at(t0 + s(30))[&Topic::Log], 30.0);
        lag.stored(Topic::Log, t0 + s(31));
        // Between batches: how long the last one waited, not growing.
        assert_eq!(lag.seconds_at(t0 + s(40))[&Topic::Log], 31.0);
        lag.caught_up(Topic::Log);
        assert_eq!(lag.seconds_at(t0 + s(41))[&Topic::Log], 0.0);
        // A clock behind the publisher's is no negative lag.
        lag.received(Topic::Metric, &[delivery(Some(t0 + s(60)))]);
        assert_eq!(lag.seconds_at(t0)[&Topic::Metric], 0.0);
        let props = lag.props();
        assert!(props["lagSeconds"].get("log").is_some(), "{props:?}");
    }
}
