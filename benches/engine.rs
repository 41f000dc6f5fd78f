//! End-to-end engine benchmark (issues "The engine", "Kafka + Elasticsearch", "Linear speed"):
//! executor + worker + indexer on a real backend.
//!
//! Run: `cargo bench --all-features --bench engine` (SQLite), with `KESTRA_BENCH_POSTGRES_URL` /
//! `KESTRA_BENCH_MYSQL_URL` (or the `KESTRA_TEST_*` ones) set to also measure PostgreSQL / MariaDB, and
//! `KESTRA_BENCH_KAFKA_BROKERS` + `KESTRA_BENCH_ELASTICSEARCH_URL` (or the `KESTRA_TEST_*` ones) for
//! Kafka + Elasticsearch (topics and indices of their own per run). Scenarios:
//! - (a) one flow of 40 sequential Log/Return tasks: wall time from trigger to SUCCESS;
//! - (b) a 2-task flow: sustained executions per second (N started at once), then latency p50/p99 from
//!   trigger to SUCCESS at a fixed 25 executions/s;
//! - (c) a ForEach over 200 values: wall time.
//!
//! "SUCCESS" is seen where the API sees it: in the repository (`Engine::wait_for`), so on Kafka the
//! figures include the indexer's delay into Elasticsearch.
//!
//! **Smoke mode**: run without `--bench` (as `cargo test --all-features --bench engine` does, which
//! `scripts/test.sh` runs in CI) or with `KESTRA_BENCH_SMOKE=1`, every scenario runs once with tiny
//! sizes on SQLite only (a few seconds), so the benchmark never rots; its figures mean nothing.
//!
//! **Selection** (full runs): `KESTRA_BENCH_SCENARIOS` (comma list of `a`, `throughput`, `latency`,
//! `c`; default all) and `KESTRA_BENCH_BACKENDS` (comma list of `sqlite`, `postgres`, `mysql`,
//! `kafka+es`; default every configured one), e.g. only the latency phase on the JDBC databases:
//! `KESTRA_BENCH_SCENARIOS=latency KESTRA_BENCH_BACKENDS=sqlite,postgres,mysql`.
//!
//! Progress goes to stderr; the results table to stdout.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use indexmap::IndexMap;
use indicatif::{ProgressBar, ProgressStyle};
use kestra::Engine;
use kestra::config::Config;
use kestra::jdbc::JdbcBackend;
use kestra::storage::LocalStorage;

/// How much each scenario does.
#[derive(Clone, Copy)]
struct Sizes {
    /// (a) runs of the 40-task flow (median reported).
    sequential_runs: usize,
    /// (b) executions started at once for the throughput.
    throughput: usize,
    /// (b) executions started at 25/s for the latency.
    latency: usize,
    /// (c) runs of the ForEach (median reported).
    each_runs: usize,
}

const FULL: Sizes = Sizes {
    sequential_runs: 5,
    throughput: 2000,
    latency: 250,
    each_runs: 3,
};

const SMOKE: Sizes = Sizes {
    sequential_runs: 1,
    throughput: 20,
    latency: 10,
    each_runs: 1,
};

const SEQ40: &str = "id: seq40\nnamespace: bench\ntasks:\n";
const TWO: &str = "id: two\nnamespace: bench\ntasks:\n  - id: a\n    type: io.kestra.plugin.core.debug.Return\n    format: \"{{ execution.id }}\"\n  - id: b\n    type: io.kestra.plugin.core.log.Log\n    message: \"{{ outputs.a.value }}\"\n";
fn each200() -> String {
    let values: Vec<String> = (1..=200).map(|i| i.to_string()).collect();
    format!(
        "id: each200\nnamespace: bench\ntasks:\n  - id: each\n    type: io.kestra.plugin.core.flow.ForEach\n    values: [{}]\n    concurrencyLimit: 0\n    tasks:\n      - id: r\n        type: io.kestra.plugin.core.debug.Return\n        format: \"{{{{ taskrun.value }}}}\"\n",
        values.join(", ")
    )
}

fn seq40() -> String {
    let mut s = SEQ40.to_string();
    for i in 0..40 {
        if i % 2 == 0 {
            s.push_str(&format!(
                "  - id: t{i}\n    type: io.kestra.plugin.core.log.Log\n    message: step {i}\n"
            ));
        } else {
            s.push_str(&format!("  - id: t{i}\n    type: io.kestra.plugin.core.debug.Return\n    format: \"{{{{ outputs.t{} }}}}\"\n", i - 1));
        }
    }
    s
}

fn progress(len: u64, label: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>28} [{bar:30}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_prefix(label.to_string());
    bar
}

async fn run_once(engine: &Engine, flow: &str, timeout: Duration) -> Duration {
    let start = Instant::now();
    let e = engine
        .execute("bench", flow, IndexMap::new())
        .await
        .expect("execute");
    let done = engine.wait_for(&e.id, timeout).await.expect("wait");
    assert!(
        done.state.current().as_str() == "SUCCESS",
        "{flow} ended {}",
        done.state.current()
    );
    start.elapsed()
}

/// Print a result row at once (so that a later failure keeps the figures) and keep it.
fn push(rows: &mut Vec<String>, row: String) {
    println!("{row}");
    rows.push(row);
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// An engine on the JDBC database of `url`, with local storage under `dir`.
async fn jdbc_engine(url: &str, dir: &std::path::Path) -> Engine {
    let backend = JdbcBackend::connect(url).await.expect("connect");
    let storage = Arc::new(LocalStorage::new(dir.join("storage")).expect("storage"));
    Engine::builder(backend.queue(), backend.repositories(), storage).start()
}

/// An engine on Kafka + Elasticsearch as `kestra.queue.type: kafka` configures it, with topics and
/// indices of this run (prefix `kestra_bench_<id>_`) and local storage under `dir`.
async fn kafka_engine(brokers: String, elasticsearch: String, dir: &std::path::Path) -> Engine {
    let prefix = format!(
        "kestra_bench_{}_",
        kestra::core::model::new_id().to_lowercase()
    );
    let config = Config::from_pairs([
        ("kestra.queue.type", "kafka".to_string()),
        ("kestra.repository.type", "elasticsearch".to_string()),
        ("kestra.kafka.brokers", brokers),
        ("kestra.kafka.topic-prefix", prefix.clone()),
        ("kestra.elasticsearch.url", elasticsearch),
        ("kestra.elasticsearch.index-prefix", prefix),
        ("kestra.data-dir", dir.display().to_string()),
    ]);
    kestra::engine(&config)
        .await
        .expect("engine on Kafka + Elasticsearch (build with --all-features)")
        .start()
}

/// Whether `name` is selected by the comma list in the environment variable `var` (all when unset).
fn selected(var: &str, name: &str) -> bool {
    match std::env::var(var) {
        Ok(list) if !list.trim().is_empty() => list.split(',').any(|s| s.trim() == name),
        _ => true,
    }
}

fn env_first(vars: &[&str]) -> Option<String> {
    vars.iter()
        .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
}

async fn bench(label: &str, engine: Engine, sizes: Sizes) -> Vec<String> {
    let engine = Arc::new(engine);
    for f in [seq40(), TWO.to_string(), each200()] {
        engine.deploy(&f).await.expect("deploy");
    }
    let mut rows = Vec::new();
    // warm-up
    run_once(&engine, "two", Duration::from_secs(60)).await;

    // (a)
    let runs = if selected("KESTRA_BENCH_SCENARIOS", "a") {
        sizes.sequential_runs
    } else {
        0
    };
    let bar = progress(runs as u64, &format!("{label} (a) 40 sequential"));
    let mut a = Vec::new();
    for _ in 0..runs {
        a.push(run_once(&engine, "seq40", Duration::from_secs(120)).await);
        bar.inc(1);
    }
    bar.finish();
    a.sort();
    if runs > 0 {
        push(
            &mut rows,
            format!(
                "| {label} | (a) 40 sequential tasks, wall time (median of {runs}) | {:.3} s |",
                pct(&a, 0.5).as_secs_f64()
            ),
        );
    }

    // (b) throughput: N executions started at once, until all SUCCESS
    let n = if selected("KESTRA_BENCH_SCENARIOS", "throughput") {
        sizes.throughput
    } else {
        0
    };
    let bar = progress(n as u64, &format!("{label} (b) throughput"));
    let start = Instant::now();
    // Executions are created by 16 concurrent clients, as API calls or schedules would.
    let ids: Vec<String> = futures::stream::iter(0..n)
        .map(|_| {
            let engine = engine.clone();
            async move {
                engine
                    .execute("bench", "two", IndexMap::new())
                    .await
                    .expect("execute")
                    .id
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    for id in &ids {
        engine
            .wait_for(id, Duration::from_secs(600))
            .await
            .expect("wait");
        bar.inc(1);
    }
    bar.finish();
    let tput = n as f64 / start.elapsed().as_secs_f64();
    if n > 0 {
        push(
            &mut rows,
            format!(
                "| {label} | (b) 2-task flow, sustained executions/s ({n} executions) | {tput:.0} /s |"
            ),
        );
    }

    // (b) latency at 25/s
    let count = if selected("KESTRA_BENCH_SCENARIOS", "latency") {
        sizes.latency
    } else {
        0
    };
    let bar = progress(count as u64, &format!("{label} (b) latency @25/s"));
    let mut handles = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(40));
    for _ in 0..count {
        tick.tick().await;
        let engine = engine.clone();
        let bar = bar.clone();
        handles.push(tokio::spawn(async move {
            let d = run_once(&engine, "two", Duration::from_secs(60)).await;
            bar.inc(1);
            d
        }));
    }
    let mut lat = Vec::new();
    for h in handles {
        lat.push(h.await.expect("join"));
    }
    bar.finish();
    lat.sort();
    if count > 0 {
        push(
            &mut rows,
            format!(
                "| {label} | (b) latency at 25 executions/s: p50 / p99 | {:.1} ms / {:.1} ms |",
                pct(&lat, 0.5).as_secs_f64() * 1000.0,
                pct(&lat, 0.99).as_secs_f64() * 1000.0
            ),
        );
    }

    // (c)
    let runs = if selected("KESTRA_BENCH_SCENARIOS", "c") {
        sizes.each_runs
    } else {
        0
    };
    let bar = progress(runs as u64, &format!("{label} (c) ForEach 200"));
    let mut c = Vec::new();
    for _ in 0..runs {
        c.push(run_once(&engine, "each200", Duration::from_secs(300)).await);
        bar.inc(1);
    }
    bar.finish();
    c.sort();
    if runs > 0 {
        push(
            &mut rows,
            format!(
                "| {label} | (c) ForEach over 200 values, wall time (median of {runs}) | {:.3} s |",
                pct(&c, 0.5).as_secs_f64()
            ),
        );
    }
    if let Ok(engine) = Arc::try_unwrap(engine) {
        engine.shutdown().await;
    }
    rows
}

fn main() {
    // `cargo bench` passes `--bench`; without it (`cargo test --bench engine`) this is a smoke run.
    let smoke = !std::env::args().any(|a| a == "--bench")
        || std::env::var("KESTRA_BENCH_SMOKE").is_ok_and(|v| v == "1" || v == "true");
    let sizes = if smoke { SMOKE } else { FULL };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        if smoke {
            eprintln!("smoke run: tiny sizes on SQLite only, the figures mean nothing");
        }
        println!("| backend | measure | result |\n| --- | --- | --- |");
        let mut rows = Vec::new();
        let dir = tempfile::tempdir().expect("tempdir");
        if smoke || selected("KESTRA_BENCH_BACKENDS", "sqlite") {
            let sqlite = format!("sqlite://{}/bench.db?mode=rwc", dir.path().display());
            let engine = jdbc_engine(&sqlite, &dir.path().join("sqlite")).await;
            rows.extend(bench("sqlite", engine, sizes).await);
        }
        if smoke {
            assert_eq!(rows.len(), 4, "every scenario gave its figure");
            eprintln!("smoke run done: {} measures", rows.len());
            return;
        }
        for (label, vars) in [
            (
                "postgres",
                ["KESTRA_BENCH_POSTGRES_URL", "KESTRA_TEST_POSTGRES_URL"],
            ),
            ("mysql", ["KESTRA_BENCH_MYSQL_URL", "KESTRA_TEST_MYSQL_URL"]),
        ] {
            if !selected("KESTRA_BENCH_BACKENDS", label) {
                eprintln!("{label}: not selected (KESTRA_BENCH_BACKENDS)");
            } else if let Some(url) = env_first(&vars) {
                let engine = jdbc_engine(&url, &dir.path().join(label)).await;
                rows.extend(bench(label, engine, sizes).await);
            } else {
                eprintln!("{label}: skipped ({} not set)", vars[0]);
            }
        }
        let brokers = env_first(&["KESTRA_BENCH_KAFKA_BROKERS", "KESTRA_TEST_KAFKA_BROKERS"]);
        let elasticsearch = env_first(&[
            "KESTRA_BENCH_ELASTICSEARCH_URL",
            "KESTRA_TEST_ELASTICSEARCH_URL",
        ]);
        if !selected("KESTRA_BENCH_BACKENDS", "kafka+es") {
            eprintln!("kafka+es: not selected (KESTRA_BENCH_BACKENDS)");
        } else if let (Some(brokers), Some(elasticsearch)) = (brokers, elasticsearch) {
            let engine = kafka_engine(brokers, elasticsearch, &dir.path().join("kafka")).await;
            rows.extend(bench("kafka+es", engine, sizes).await);
        } else {
            eprintln!(
                "kafka+es: skipped (KESTRA_BENCH_KAFKA_BROKERS / _ELASTICSEARCH_URL not set)"
            );
        }
        eprintln!("done: {} measures", rows.len());
    });
}
