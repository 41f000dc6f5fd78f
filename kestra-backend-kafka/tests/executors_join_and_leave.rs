//! Issue 10, "Done when": an executor instance added and another removed during a run. Three
//! engines share one Kafka prefix (topics of this test on the shared broker of
//! `scripts/services.sh`): the first runs an executor and the worker, the second an executor; a
//! third executor joins once a quarter of the run has ended, and the second leaves (a graceful
//! shutdown) at half. The executor topics' partitions move between them twice; every execution
//! still ends once, SUCCESS, with each task run SUCCESS once, and none is created twice. The run's
//! size is `KESTRA_TEST_JOIN_EXECUTIONS` (default 600).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kestra_backend_kafka::{KafkaOptions, KafkaQueue};
use kestra_core::model::new_id;
use kestra_core::runtime::{Components, Engine};
use kestra_core::testkit::memory::{MemoryRepositories, MemoryStorage};

const FLOW: &str = "id: two\nnamespace: company.join\ntasks:\n  - id: a\n    type: io.kestra.plugin.core.log.Log\n    message: a\n  - id: b\n    type: io.kestra.plugin.core.debug.Return\n    format: b\n";

/// Wait until at least `count` of `ids` have ended, as the executor state on Kafka says.
async fn until_ended(options: &KafkaOptions, ids: &HashSet<String>, count: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let done = common::ended(&KafkaQueue::executions(options).await.unwrap(), ids);
        if done >= count {
            eprintln!("{done} of {} ended: {what}", ids.len());
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {done} of {} executions ended (waiting for {count}: {what})",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn executors_join_and_leave_during_a_run() {
    let Some(brokers) = common::brokers() else {
        return;
    };
    let n: usize = std::env::var("KESTRA_TEST_JOIN_EXECUTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    let options = KafkaOptions::new(brokers)
        .with_prefix(format!("kestra_join_{}_", new_id().to_lowercase()))
        .with_partitions(4);
    let repositories = MemoryRepositories::new().repositories();
    let storage = Arc::new(MemoryStorage::new());
    // An engine on a queue handle of its own: its own consumer group members.
    let instance = |worker: bool| {
        let options = options.clone();
        let repositories = repositories.clone();
        let storage = storage.clone();
        async move {
            let queue = Arc::new(KafkaQueue::connect(options).await.unwrap());
            Engine::builder(queue, repositories, storage)
                .components(Components {
                    executor: true,
                    worker,
                    ..Components::none()
                })
                .start()
        }
    };
    let first = instance(true).await;
    let second = instance(false).await;
    first.deploy(FLOW).await.unwrap();
    let start = Instant::now();
    let mut ids = HashSet::new();
    for _ in 0..n {
        let e = first
            .execute("company.join", "two", Default::default())
            .await
            .unwrap();
        ids.insert(e.id);
    }
    eprintln!("{n} executions started in {:?}", start.elapsed());
    until_ended(&options, &ids, n / 4, "a third executor joins").await;
    let third = instance(false).await;
    until_ended(&options, &ids, n / 2, "the second executor leaves").await;
    second.shutdown().await;
    until_ended(&options, &ids, n, "all").await;
    eprintln!("{n} executions ended in {:?}", start.elapsed());
    let executions = KafkaQueue::executions(&options).await.unwrap();
    third.shutdown().await;
    first.shutdown().await;

    common::assert_each_ended_once(&executions, &ids, n);
    KafkaQueue::delete_topics(&options).await.unwrap();
}
