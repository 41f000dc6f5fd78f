//! An executor paused (SIGSTOP) past its session timeout is fenced when it resumes (issue 10,
//! "Done when"), against the broker of `KESTRA_TEST_KAFKA_BROKERS` (required under CI=true).
//!
//! The paused executor is a child process (this test binary, running the ignored test
//! `paused_executor_child`): it holds a unit of work over a key with staged state and a staged
//! message, says so, and waits. The parent stops it with SIGSTOP, so its consumer stops
//! heartbeating; after the session timeout the group gives its partitions to an executor of the
//! parent, which processes the key again and commits. The child is then continued and commits:
//! the commit must be refused with `Fenced`, and nothing it staged may be visible.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kestra_backend_kafka::{KafkaOptions, KafkaQueue};
use kestra_core::model::new_id;
use kestra_core::queue::{ConsumerGroup, Envelope, Queue, QueueError, Topic, UnitOfWork};
use kestra_core::testkit::queue as suite;
use serde_json::json;

const CHILD_ENV: &str = "KESTRA_TEST_PAUSED_CHILD";

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

fn options(brokers: &str, prefix: &str) -> KafkaOptions {
    let mut o = KafkaOptions::new(brokers)
        .with_prefix(prefix)
        .with_partitions(2);
    // The broker's minimum (group.min.session.timeout.ms): the pause need not last long.
    o.session_timeout = Duration::from_secs(6);
    o.revoke_grace = Duration::from_secs(1);
    o
}

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

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{sig} {pid} failed");
}

/// The paused executor (run by the parent test only: ignored otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child process of paused_executor_is_fenced_when_it_resumes"]
async fn paused_executor_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (brokers, prefix, key) = {
        let mut parts = spec.splitn(3, ' ');
        (
            parts.next().unwrap().to_string(),
            parts.next().unwrap().to_string(),
            parts.next().unwrap().to_string(),
        )
    };
    let queue = KafkaQueue::open(options(&brokers, &prefix)).unwrap();
    let start = Instant::now();
    let mut unit = loop {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "child: no message"
        );
        if let Some(u) = unit_with(&queue, &key).await {
            break u;
        }
    };
    unit.save_state(suite::STATE_KIND, &key, Some(&json!({"by": "zombie"})))
        .await
        .unwrap();
    unit.publish(vec![
        Envelope::json(
            Topic::Log,
            format!("{key}-zombie"),
            &json!({"by": "zombie"}),
        )
        .unwrap(),
    ])
    .await
    .unwrap();
    println!("HOLDING");
    std::io::stdout().flush().unwrap();
    // Wait for the parent's word (it stops and continues this process meanwhile).
    tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).unwrap();
    })
    .await
    .unwrap();
    match unit.commit().await {
        Err(QueueError::Fenced { detail }) => println!("FENCED {detail}"),
        Ok(()) => println!("COMMITTED"),
        Err(e) => println!("ERROR {e}"),
    }
    std::io::stdout().flush().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paused_executor_is_fenced_when_it_resumes() {
    let Some(brokers) = brokers() else { return };
    let prefix = format!("kestra_paused_{}_", new_id());
    let options = options(&brokers, &prefix);
    KafkaQueue::connect(options.clone()).await.unwrap();
    let key = format!("paused-{}", new_id());
    let parent = KafkaQueue::open(options.clone()).unwrap();
    parent
        .publish(vec![
            Envelope::json(Topic::Execution, &key, &json!({"seq": 1})).unwrap(),
        ])
        .await
        .unwrap();

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "paused_executor_child",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_ENV, format!("{brokers} {prefix} {key}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let wait_line = |prefixes: &[&str], timeout: Duration| -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if prefixes.iter().any(|p| line.starts_with(p)) => return line,
                Ok(_) => {}
                Err(e) => panic!("the child never printed one of {prefixes:?}: {e}"),
            }
        }
    };
    wait_line(&["HOLDING"], Duration::from_secs(90));

    // Paused: its consumer stops heartbeating; past the session timeout the group moves on.
    signal(pid, "STOP");
    let paused = Instant::now();
    let start = Instant::now();
    let mut owner = loop {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "the key was not delivered to another executor while the holder was paused"
        );
        if let Some(u) = unit_with(&parent, &key).await {
            break u;
        }
    };
    eprintln!(
        "the key was taken over {:?} after the pause",
        paused.elapsed()
    );
    assert_eq!(
        owner.load_state(suite::STATE_KIND, &key).await.unwrap(),
        None,
        "the paused executor's staged state is not visible"
    );
    owner
        .save_state(suite::STATE_KIND, &key, Some(&json!({"by": "owner"})))
        .await
        .unwrap();
    owner.commit().await.expect("the new owner commits");

    // Resumed: its commit must be refused.
    signal(pid, "CONT");
    child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"commit\n")
        .unwrap();
    let outcome = wait_line(&["FENCED", "COMMITTED", "ERROR"], Duration::from_secs(90));
    eprintln!("the resumed executor: {outcome}");
    let status = child.wait().unwrap();
    assert!(
        outcome.starts_with("FENCED"),
        "the resumed executor's commit must be fenced, got: {outcome}"
    );
    assert!(status.success(), "the child test failed: {status}");

    // Nothing it staged is visible: the state is the owner's, its message was never published.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        let got = parent
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
            "a message staged by the fenced executor was published"
        );
    }
    drop(parent);
    KafkaQueue::delete_topics(&options).await.unwrap();
}
