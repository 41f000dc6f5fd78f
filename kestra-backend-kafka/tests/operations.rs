//! Kafka operations against a real broker (`KESTRA_TEST_KAFKA_BROKERS`, required under CI=true):
//! the purge of consumed records (the Kafka form of `kestra sys purge-queue`), the purge of
//! everything, dead-letter inspection, and the replay of the flow topic and the trigger states
//! (what the engine's flow store and the indexer follow).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures::StreamExt;
use kestra_backend_kafka::admin::{PurgeScope, count_dead_letters, dead_letters, purge};
use kestra_backend_kafka::{KafkaOptions, KafkaQueue};
use kestra_core::model::new_id;
use kestra_core::queue::{ConsumerGroup, Envelope, Queue, Replayable, Replayed, Topic};

fn brokers() -> Option<String> {
    match std::env::var("KESTRA_TEST_KAFKA_BROKERS") {
        Ok(b) if !b.is_empty() => Some(b),
        _ => {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(
                !ci,
                "KESTRA_TEST_KAFKA_BROKERS is not set under CI=true: run `eval \"$(scripts/services.sh)\"` first"
            );
            eprintln!(
                "\n!!!!! SKIPPED: KESTRA_TEST_KAFKA_BROKERS is not set; run `eval \"$(scripts/services.sh)\"` to test the Kafka backend !!!!!\n"
            );
            None
        }
    }
}

async fn fresh(brokers: &str) -> KafkaOptions {
    let options = KafkaOptions::new(brokers)
        .with_prefix(format!("kestra_ops_{}_", new_id()))
        .with_partitions(2);
    KafkaQueue::connect(options.clone())
        .await
        .expect("connect to the Kafka broker and create the topics");
    options
}

fn line<'a>(
    report: &'a kestra_backend_kafka::admin::PurgeReport,
    topic: &str,
) -> &'a kestra_backend_kafka::admin::TopicPurge {
    report
        .topics
        .iter()
        .find(|t| t.topic == topic)
        .unwrap_or_else(|| panic!("no line for {topic} in\n{report}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn purge_deletes_what_every_group_consumed_and_dead_letters_are_listed() {
    let Some(brokers) = brokers() else { return };
    let options = fresh(&brokers).await;
    let queue = KafkaQueue::open(options.clone()).unwrap();
    let log = options.topic_name(Topic::Log);
    // 10 log messages; the indexer group takes and acknowledges 6 of them (per key in order: one
    // key, one partition), dead-letters 1, and leaves the rest.
    let messages: Vec<Envelope> = (0..10)
        .map(|i| Envelope::new(Topic::Log, "k", format!("{{\"n\":{i}}}")))
        .collect();
    queue.publish(messages).await.unwrap();
    let mut taken = Vec::new();
    while taken.len() < 7 {
        let batch = queue
            .receive(
                ConsumerGroup::Indexer,
                Topic::Log,
                7 - taken.len(),
                Duration::from_secs(30),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        assert!(!batch.is_empty(), "the 10 log messages were delivered");
        taken.extend(batch);
    }
    let tags: Vec<_> = taken[..6].iter().map(|d| d.tag).collect();
    queue.ack(ConsumerGroup::Indexer, &tags).await.unwrap();
    queue
        .dead_letter(&taken[6], "not a log line: test")
        .await
        .unwrap();
    // Offsets are committed in the background: wait until the purge sees 7 consumed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let report = loop {
        let report = purge(&options, PurgeScope::Consumed).await.unwrap();
        if line(&report, &log).deleted == 7 {
            break report;
        }
        assert!(
            line(&report, &log).deleted == 0,
            "deleted more than consumed:\n{report}"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "the purge never saw the committed offsets:\n{report}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    eprintln!("{report}");
    let l = line(&report, &log);
    assert_eq!((l.deleted, l.remaining), (7, 3), "{report}");
    assert!(
        l.groups.iter().any(|g| g.contains("indexer")),
        "bounded by the indexer group: {report}"
    );
    let dlt = line(&report, &options.dead_letter_topic());
    assert_eq!(
        (dlt.deleted, dlt.remaining),
        (0, 1),
        "dead letters are kept"
    );
    assert!(dlt.skipped.is_some());
    let text = report.to_string();
    assert!(text.contains("7 records deleted"), "{text}");
    // A second purge finds nothing more to delete; the 3 unconsumed are still delivered.
    let again = purge(&options, PurgeScope::Consumed).await.unwrap();
    assert_eq!(again.deleted(), 0, "{again}");
    drop(queue);

    // Dead letters: listed with their origin and reason, and counted.
    assert_eq!(count_dead_letters(&options).await.unwrap(), 1);
    let letters = dead_letters(&options, 100).await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!(letter.origin_topic.as_deref(), Some("log"));
    assert_eq!(letter.group.as_deref(), Some("indexer"));
    assert_eq!(letter.reason.as_deref(), Some("not a log line: test"));
    assert_eq!(letter.key, "k");
    assert_eq!(letter.payload, "{\"n\":6}");

    // Everything: the 3 unconsumed logs and the dead letter go; flows (compacted) stay.
    let all = purge(&options, PurgeScope::All).await.unwrap();
    eprintln!("{all}");
    let l = line(&all, &log);
    assert_eq!((l.deleted, l.remaining), (3, 0), "{all}");
    let dlt = line(&all, &options.dead_letter_topic());
    assert_eq!((dlt.deleted, dlt.remaining), (1, 0), "{all}");
    assert!(
        line(&all, &options.topic_name(Topic::Flow))
            .skipped
            .is_some()
    );
    assert_eq!(count_dead_letters(&options).await.unwrap(), 0);
    assert!(dead_letters(&options, 100).await.unwrap().is_empty());
    KafkaQueue::delete_topics(&options).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_flow_topic_is_replayed_from_its_start_then_followed() {
    let Some(brokers) = brokers() else { return };
    let options = fresh(&brokers).await;
    let queue = KafkaQueue::open(options.clone()).unwrap();
    // Nothing yet: caught up at once.
    let mut empty = queue.replay(Replayable::Flows).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(20), empty.next())
        .await
        .unwrap();
    assert!(matches!(first, Some(Ok(Replayed::CaughtUp))), "{first:?}");
    let before: Vec<Envelope> = (0..5)
        .map(|i| {
            Envelope::new(
                Topic::Flow,
                format!("main/ns/f{i}/1"),
                format!("{{\"i\":{i}}}"),
            )
        })
        .collect();
    queue.publish(before).await.unwrap();
    let mut replay = queue.replay(Replayable::Flows).await.unwrap();
    let mut keys = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(20), replay.next())
            .await
            .unwrap()
        {
            Some(Ok(Replayed::Record { key, payload })) => {
                assert!(payload.is_some());
                keys.push(key);
            }
            Some(Ok(Replayed::CaughtUp)) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    keys.sort();
    assert_eq!(
        keys,
        (0..5)
            .map(|i| format!("main/ns/f{i}/1"))
            .collect::<Vec<_>>(),
        "every record published before the replay, before CaughtUp"
    );
    queue
        .publish(vec![Envelope::new(Topic::Flow, "main/ns/late/1", "{}")])
        .await
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(20), replay.next())
        .await
        .unwrap();
    assert!(
        matches!(&next, Some(Ok(Replayed::Record { key, .. })) if key == "main/ns/late/1"),
        "then followed: {next:?}"
    );
    // The early subscription follows too.
    let mut seen = 0;
    while seen < 6 {
        match tokio::time::timeout(Duration::from_secs(20), empty.next())
            .await
            .unwrap()
        {
            Some(Ok(Replayed::Record { .. })) => seen += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    KafkaQueue::delete_topics(&options).await.unwrap();
}
