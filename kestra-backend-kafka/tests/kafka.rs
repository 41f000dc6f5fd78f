//! The Kafka backend against a real broker (`scripts/services.sh` starts one and prints
//! `KESTRA_TEST_KAFKA_BROKERS`): the queue conformance suite of `kestra_core::testkit::queue`.
//!
//! Each run uses its own topic prefix, so runs never see each other's messages. The consumers of the
//! multi-consumer checks are separate [`KafkaQueue`] handles (separate group members), so a dropped
//! handle is a dead consumer.
//!
//! Every check of `run_all_with` runs, except (skipped by the suite itself, loudly):
//! - `lease_expiry_and_ack`, `lease_extension`: capability `lease_timers`, which Kafka does not
//!   declare (redelivery comes when a consumer is gone, not when a lease ends).
//!
//! Also here: the scheduler's trigger unit suite (`testkit::triggers`) and a Kafka-specific check
//! (a rebalance in the middle of a unit fences the zombie). Not here yet (issue 10): a consumer
//! paused past its session timeout, broker restarts under load, state restore under load.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::brokers;

use std::sync::Arc;
use std::time::{Duration, Instant};

use kestra_backend_kafka::{KafkaOptions, KafkaQueue};
use kestra_core::model::new_id;
use kestra_core::queue::{ConsumerGroup, Envelope, Queue, QueueError, Topic, UnitOfWork};
use kestra_core::testkit::queue as suite;
use serde_json::json;

/// The brokers from `KESTRA_TEST_KAFKA_BROKERS`; `None` (with a loud message) when unset, a panic
/// under `CI=true`.
async fn fresh(brokers: &str) -> KafkaOptions {
    let options = KafkaOptions::new(brokers)
        .with_prefix(format!("kestra_test_{}_", new_id()))
        .with_partitions(4);
    KafkaQueue::connect(options.clone())
        .await
        .expect("connect to the Kafka broker and create the topics");
    options
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queue_conformance() {
    let Some(brokers) = brokers() else { return };
    let options = fresh(&brokers).await;
    let options_for_cleanup = options.clone();
    let factory = move || -> Arc<dyn Queue> {
        Arc::new(KafkaQueue::open(options.clone()).expect("a new Kafka queue handle"))
    };
    let capabilities = factory().capabilities();
    assert!(!capabilities.lease_timers, "Kafka has no lease timers");
    let start = Instant::now();
    // Every check of the suite, in its order (new checks join automatically).
    suite::run_all_with(&factory).await;
    eprintln!(
        "queue conformance on Kafka: whole suite in {:?}",
        start.elapsed()
    );
    KafkaQueue::delete_topics(&options_for_cleanup)
        .await
        .expect("delete this run's topics");
}

/// `begin` on `queue` (wait 200 ms) and return the unit if it holds `key`; units without it are
/// committed (they hold other keys of this run's topics: none here).
async fn unit_with(queue: &dyn Queue, key: &str) -> Option<Box<dyn UnitOfWork>> {
    let unit = queue
        .begin(
            ConsumerGroup::Executor,
            &[Topic::Execution],
            10,
            Duration::from_millis(200),
        )
        .await
        .expect("begin")?;
    if unit.deliveries().iter().any(|d| d.envelope.key == key) {
        Some(unit)
    } else {
        unit.commit()
            .await
            .expect("commit of a unit without the key");
        None
    }
}

/// A rebalance in the middle of a unit of work: another executor joins while a unit holds a key;
/// once the partition was taken from the holder (after the revoke grace), the key is delivered again
/// (to the new owner or, re-assigned, to the same instance), the old unit's commit is refused with
/// `Fenced`, and nothing it staged (state, messages) is visible.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebalance_fences_a_zombie_unit() {
    let Some(brokers) = brokers() else { return };
    let mut options = fresh(&brokers).await;
    options.revoke_grace = Duration::from_secs(1);
    let a = KafkaQueue::open(options.clone()).unwrap();
    let key = format!("zombie-{}", new_id());
    a.publish(vec![
        Envelope::json(Topic::Execution, &key, &json!({"seq": 1})).unwrap(),
    ])
    .await
    .unwrap();
    let start = Instant::now();
    let mut zombie = loop {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the message never arrived"
        );
        if let Some(u) = unit_with(&a, &key).await {
            break u;
        }
    };
    zombie
        .save_state(suite::STATE_KIND, &key, Some(&json!({"by": "zombie"})))
        .await
        .unwrap();
    zombie
        .publish(vec![
            Envelope::json(Topic::Log, format!("{key}-zombie"), &json!({"seq": 2})).unwrap(),
        ])
        .await
        .unwrap();

    // A second executor joins the group: a rebalance takes the partitions away from `a`.
    let b = KafkaQueue::open(options.clone()).unwrap();
    let start = Instant::now();
    let mut owner = loop {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the key was not delivered again after the rebalance"
        );
        if let Some(u) = unit_with(&b, &key).await {
            break u;
        }
        if let Some(u) = unit_with(&a, &key).await {
            break u;
        }
    };
    match zombie.commit().await {
        Err(QueueError::Fenced { detail }) => eprintln!("zombie fenced: {detail}"),
        other => panic!("the zombie unit's commit must be refused with Fenced, got {other:?}"),
    }
    assert_eq!(
        owner.load_state(suite::STATE_KIND, &key).await.unwrap(),
        None,
        "the zombie's staged state must not be visible"
    );
    owner
        .save_state(suite::STATE_KIND, &key, Some(&json!({"by": "owner"})))
        .await
        .unwrap();
    owner.commit().await.expect("the new owner commits");

    // The zombie's message was never published.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        let got = a
            .receive(
                ConsumerGroup::Indexer,
                Topic::Log,
                100,
                Duration::from_secs(30),
                Duration::from_millis(250),
            )
            .await
            .unwrap();
        assert!(
            got.iter().all(|d| !d.envelope.key.ends_with("-zombie")),
            "a message staged by the fenced unit was published"
        );
    }
    drop((a, b));
    KafkaQueue::delete_topics(&options)
        .await
        .expect("delete this run's topics");
}

/// The scheduler's trigger unit conformance suite (`testkit::triggers`) on a prefix of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn trigger_unit_conformance() {
    let Some(brokers) = brokers() else { return };
    let options = fresh(&brokers).await;
    let queue: Arc<dyn Queue> = Arc::new(KafkaQueue::open(options.clone()).unwrap());
    let start = Instant::now();
    kestra_core::testkit::triggers::run_all(queue.clone()).await;
    eprintln!(
        "trigger unit conformance on Kafka passed in {:?}",
        start.elapsed()
    );
    drop(queue);
    KafkaQueue::delete_topics(&options)
        .await
        .expect("delete this run's topics");
}
