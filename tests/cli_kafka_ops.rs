//! `kestra sys purge-queue` and `kestra sys dead-letters` find a Kafka deployment from the
//! configuration file (`kestra.queue.type: kafka`, `kestra.kafka.brokers`, `.topic-prefix`) as
//! well as from `--kafka-brokers`, on a real broker (`KESTRA_TEST_KAFKA_BROKERS`, required under
//! CI=true); `--all` on a JDBC deployment is refused with the reason.
#![cfg(feature = "kafka")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
mod common;

use std::process::Command;
use std::time::Duration;

use kestra::core::model::new_id;
use kestra::core::queue::{ConsumerGroup, Envelope, Queue, Topic};
use kestra::kafka::{KafkaOptions, KafkaQueue};

/// Runs the binary with no `KESTRA_*` variable of the caller's; (exit code, stdout, stderr).
fn kestra(args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kestra"));
    for (var, _) in std::env::vars() {
        if var.starts_with("KESTRA_") || var.starts_with("DATASOURCES_") {
            cmd.env_remove(var);
        }
    }
    let output = cmd.args(args).output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The line of `topic` in a purge report: (deleted, remaining).
fn counts(report: &str, topic: &str) -> (u64, u64) {
    let line = report
        .lines()
        .find(|l| l.split_whitespace().next() == Some(topic))
        .unwrap_or_else(|| panic!("no line for {topic} in\n{report}"));
    let mut cols = line.split_whitespace().skip(1);
    let deleted = cols.next().unwrap().parse().unwrap();
    let remaining = cols.next().unwrap().parse().unwrap();
    (deleted, remaining)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_find_the_kafka_queue_in_the_configuration() {
    let Some(brokers) = common::service_url("KESTRA_TEST_KAFKA_BROKERS") else {
        return;
    };
    let prefix = format!("kestra_cliops_{}_", new_id().to_lowercase());
    let options = KafkaOptions::new(&brokers)
        .with_prefix(&prefix)
        .with_partitions(1);
    KafkaQueue::connect(options.clone()).await.unwrap();
    let queue = KafkaQueue::open(options.clone()).unwrap();
    let messages: Vec<Envelope> = (0..3)
        .map(|i| Envelope::new(Topic::Log, "k", format!("{{\"n\":{i}}}")))
        .collect();
    queue.publish(messages).await.unwrap();
    let taken = queue
        .receive(
            ConsumerGroup::Indexer,
            Topic::Log,
            1,
            Duration::from_secs(30),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    queue
        .dead_letter(&taken[0], "not a log line: cli test")
        .await
        .unwrap();
    drop(queue);

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kafka.yml");
    std::fs::write(
        &config,
        format!(
            "kestra:\n  queue:\n    type: kafka\n  repository:\n    type: elasticsearch\n  kafka:\n    brokers: {brokers}\n    topic-prefix: {prefix}\n"
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();

    // Dead letters through the configuration: counted, then listed with their reason.
    let (code, out, err) = kestra(&["sys", "dead-letters", "-c", config, "--count"]);
    assert_eq!((code, out.trim()), (0, "1"), "{out}\n{err}");
    let (code, out, err) = kestra(&["sys", "dead-letters", "-c", config]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("not a log line: cli test"), "{out}");

    // Purge of everything through the configuration: the prefix's log topic and dead letters.
    let (code, out, err) = kestra(&["sys", "purge-queue", "-c", config, "--all"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(
        counts(&out, &options.topic_name(Topic::Log)),
        (3, 0),
        "{out}"
    );
    assert_eq!(counts(&out, &options.dead_letter_topic()), (1, 0), "{out}");
    let (code, out, err) = kestra(&["sys", "dead-letters", "-c", config, "--count"]);
    assert_eq!((code, out.trim()), (0, "0"), "{out}\n{err}");

    // --kafka-brokers with --kafka-prefix names the same deployment without a file.
    let (code, out, err) = kestra(&[
        "sys",
        "dead-letters",
        "--kafka-brokers",
        &brokers,
        "--kafka-prefix",
        &prefix,
        "--count",
    ]);
    assert_eq!((code, out.trim()), (0, "0"), "{out}\n{err}");
    KafkaQueue::delete_topics(&options).await.unwrap();
}

#[test]
fn all_is_refused_on_a_jdbc_queue_and_dead_letters_need_a_kafka_queue() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sqlite.yml");
    std::fs::write(
        &config,
        format!(
            "kestra:\n  repository:\n    type: sqlite\ndatasources:\n  sqlite:\n    url: sqlite://{}/kestra.db?mode=rwc\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let (code, out, err) = kestra(&["sys", "purge-queue", "-c", config, "--all"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(err.contains("--all applies to a Kafka queue"), "{err}");
    let (code, out, err) = kestra(&["sys", "dead-letters", "-c", config]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(err.contains("no Kafka queue named"), "{err}");
}
