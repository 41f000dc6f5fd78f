//! Workers through the real engine, on SQLite always and on PostgreSQL and MariaDB when their URLs
//! are set (required under CI=true):
//! - a wide ForEach spreads over three Worker services on one backend: each runs some of its
//!   iterations, never more at once than its slots, and iterations run on several workers at once
//!   (worker jobs are keyed by task run, not by execution, so the jobs of one execution never wait
//!   for one another);
//! - a task run is RUNNING when a worker starts it: with one worker slot busy, the task queued
//!   behind goes RUNNING about the wait after its CREATED date.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use indexmap::IndexMap;
use kestra::core::model::StateType;
use kestra::core::worker::WorkerConfig;
use kestra::jdbc::JdbcBackend;
use kestra::storage::LocalStorage;
use kestra::{Components, Engine};

/// When an attempt started and ended on its worker.
type Interval = (DateTime<Utc>, DateTime<Utc>);

/// 12 iterations of a 2 s sleep, all at once, over three workers of two slots each.
async fn for_each_spreads_over_three_workers(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let ns = format!("workers.f{}", kestra::core::model::new_id().to_lowercase());
    let backend = JdbcBackend::connect(url).await.unwrap();
    let storage = Arc::new(LocalStorage::new(dir.path()).unwrap());
    let none = Components::none();
    let front = Engine::builder(backend.queue(), backend.repositories(), storage.clone())
        .components(Components {
            executor: true,
            indexer: true,
            ..none
        })
        .start();
    let mut workers = Vec::new();
    for name in ["worker-a", "worker-b", "worker-c"] {
        let config = WorkerConfig {
            id: name.to_string(),
            concurrency: 2,
            ..Default::default()
        };
        workers.push(
            Engine::builder(backend.queue(), backend.repositories(), storage.clone())
                .components(Components {
                    worker: true,
                    ..none
                })
                .worker_config(config)
                .start(),
        );
    }
    front
        .deploy(&format!("id: wide\nnamespace: {ns}\ntasks:\n  - id: each\n    type: io.kestra.plugin.core.flow.ForEach\n    values: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]\n    concurrencyLimit: 0\n    tasks:\n      - id: nap\n        type: io.kestra.plugin.core.flow.Sleep\n        duration: PT2S\n"))
        .await
        .unwrap();
    let e = front.execute(&ns, "wide", IndexMap::new()).await.unwrap();
    let done = front
        .wait_for(&e.id, Duration::from_secs(90))
        .await
        .unwrap();
    assert_eq!(done.state.current(), StateType::Success);

    // Per worker, the intervals (started, ended) of the attempts it ran.
    let mut by_worker: BTreeMap<String, Vec<Interval>> = BTreeMap::new();
    let naps: Vec<_> = done
        .task_run_list
        .iter()
        .filter(|r| r.task_id == "nap")
        .collect();
    assert_eq!(naps.len(), 12);
    for run in naps {
        assert_eq!(run.current(), StateType::Success);
        assert_eq!(run.attempts.len(), 1);
        let attempt = &run.attempts[0];
        let worker = attempt
            .worker_id
            .clone()
            .expect("the attempt names its worker");
        let started = attempt.state.last_date_of(StateType::Running).unwrap();
        let ended = attempt.state.end_date().unwrap();
        by_worker.entry(worker).or_default().push((started, ended));
    }
    let names: BTreeSet<&str> = by_worker.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        BTreeSet::from(["worker-a", "worker-b", "worker-c"]),
        "each worker gets work: {by_worker:?}"
    );
    // No worker ran more attempts at once than its two slots (a claim may take more jobs than
    // the free slots: those wait for a slot).
    for (w, mine) in &by_worker {
        for (started, _) in mine {
            let running = mine
                .iter()
                .filter(|(s, e)| s <= started && started < e)
                .count();
            assert!(
                running <= 2,
                "{w} ran {running} attempts at once with 2 slots: {mine:?}"
            );
        }
    }
    // Several workers ran iterations of this one execution at the same time (keyed by execution,
    // one worker at a time held its jobs).
    let overlapping = by_worker.iter().any(|(w, mine)| {
        by_worker.iter().any(|(other, theirs)| {
            other != w
                && mine
                    .iter()
                    .any(|a| theirs.iter().any(|b| a.0 < b.1 && b.0 < a.1))
        })
    });
    assert!(
        overlapping,
        "iterations never ran on two workers at once: {by_worker:?}"
    );

    for w in workers {
        w.shutdown().await;
    }
    front.shutdown().await;
}

/// One worker with one slot: the second of two 2 s sleeps waits for the first.
async fn queued_task_runs_when_a_worker_starts_it(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let ns = format!("workers.q{}", kestra::core::model::new_id().to_lowercase());
    let backend = JdbcBackend::connect(url).await.unwrap();
    let storage = Arc::new(LocalStorage::new(dir.path()).unwrap());
    let engine = Engine::builder(backend.queue(), backend.repositories(), storage)
        .worker_config(WorkerConfig {
            id: "only-worker".into(),
            concurrency: 1,
            ..Default::default()
        })
        .start();
    engine
        .deploy(&format!("id: queued\nnamespace: {ns}\ntasks:\n  - id: par\n    type: io.kestra.plugin.core.flow.Parallel\n    tasks:\n      - id: first\n        type: io.kestra.plugin.core.flow.Sleep\n        duration: PT2S\n      - id: second\n        type: io.kestra.plugin.core.flow.Sleep\n        duration: PT2S\n"))
        .await
        .unwrap();
    let e = engine
        .execute(&ns, "queued", IndexMap::new())
        .await
        .unwrap();
    let done = engine
        .wait_for(&e.id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(done.state.current(), StateType::Success);
    let mut waits = Vec::new();
    for id in ["first", "second"] {
        let run = done.task_run_list.iter().find(|r| r.task_id == id).unwrap();
        let kinds: Vec<StateType> = run.state.histories().iter().map(|h| h.state).collect();
        assert_eq!(
            kinds,
            vec![StateType::Created, StateType::Running, StateType::Success],
            "{id}"
        );
        let created = run.state.start_date().unwrap();
        let running = run.state.last_date_of(StateType::Running).unwrap();
        assert!(running >= created, "{id}: RUNNING before CREATED");
        // The task run's RUNNING is its attempt's start on the worker.
        let attempt = &run.attempts[0];
        assert_eq!(attempt.worker_id.as_deref(), Some("only-worker"));
        assert_eq!(
            attempt.state.last_date_of(StateType::Running),
            Some(running)
        );
        waits.push((running - created).num_milliseconds());
    }
    waits.sort();
    // Both were dispatched together; the one queued behind the busy slot started ~2 s later.
    assert!(
        waits[1] >= 1_500,
        "the queued task went RUNNING {} ms after its creation, expected about 2000: {waits:?}",
        waits[1]
    );
    assert!(
        waits[0] < 1_500,
        "the first task went RUNNING {} ms after its creation",
        waits[0]
    );
    engine.shutdown().await;
}

common::on_each_database!(
    workers:
    for_each_spreads_over_three_workers,
    queued_task_runs_when_a_worker_starts_it
);
