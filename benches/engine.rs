//! End-to-end engine benchmark (issue "The engine"): executor + worker + indexer on a real backend.
//!
//! Run: `cargo bench --all-features --bench engine` (SQLite), with `KESTRA_BENCH_POSTGRES_URL` / `KESTRA_BENCH_MYSQL_URL`
//! (or the `KESTRA_TEST_*` ones) set to also measure PostgreSQL / MariaDB. Scenarios:
//! - (a) one flow of 40 sequential Log/Return tasks: wall time from trigger to SUCCESS;
//! - (b) a 2-task flow: sustained executions per second (N started at once), then latency p50/p99 from
//!   trigger to SUCCESS at a fixed 25 executions/s;
//! - (c) a ForEach over 200 values: wall time.
//!
//! Progress goes to stderr; the results table to stdout.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use indexmap::IndexMap;
use indicatif::{ProgressBar, ProgressStyle};
use kestra::Engine;
use kestra::jdbc::JdbcBackend;
use kestra::storage::LocalStorage;

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

async fn bench(label: &str, url: &str) -> Vec<String> {
    let backend = JdbcBackend::connect(url).await.expect("connect");
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = Arc::new(LocalStorage::new(dir.path().join("storage")).expect("storage"));
    let engine =
        Arc::new(Engine::builder(backend.queue(), backend.repositories(), storage).start());
    for f in [seq40(), TWO.to_string(), each200()] {
        engine.deploy(&f).await.expect("deploy");
    }
    let mut rows = Vec::new();
    // warm-up
    run_once(&engine, "two", Duration::from_secs(60)).await;

    // (a)
    let bar = progress(5, &format!("{label} (a) 40 sequential"));
    let mut a = Vec::new();
    for _ in 0..5 {
        a.push(run_once(&engine, "seq40", Duration::from_secs(120)).await);
        bar.inc(1);
    }
    bar.finish();
    a.sort();
    push(
        &mut rows,
        format!(
            "| {label} | (a) 40 sequential tasks, wall time (median of 5) | {:.3} s |",
            pct(&a, 0.5).as_secs_f64()
        ),
    );

    // (b) throughput: N executions started at once, until all SUCCESS
    let n = 2000usize;
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
    push(
        &mut rows,
        format!(
            "| {label} | (b) 2-task flow, sustained executions/s ({n} executions) | {tput:.0} /s |"
        ),
    );

    // (b) latency at 25/s
    let count = 250usize;
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
    push(
        &mut rows,
        format!(
            "| {label} | (b) latency at 25 executions/s: p50 / p99 | {:.1} ms / {:.1} ms |",
            pct(&lat, 0.5).as_secs_f64() * 1000.0,
            pct(&lat, 0.99).as_secs_f64() * 1000.0
        ),
    );

    // (c)
    let bar = progress(3, &format!("{label} (c) ForEach 200"));
    let mut c = Vec::new();
    for _ in 0..3 {
        c.push(run_once(&engine, "each200", Duration::from_secs(300)).await);
        bar.inc(1);
    }
    bar.finish();
    c.sort();
    push(
        &mut rows,
        format!(
            "| {label} | (c) ForEach over 200 values, wall time (median of 3) | {:.3} s |",
            pct(&c, 0.5).as_secs_f64()
        ),
    );
    if let Ok(engine) = Arc::try_unwrap(engine) {
        engine.shutdown().await;
    }
    rows
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        println!("| database | measure | result |\n| --- | --- | --- |");
        let mut rows = Vec::new();
        let dir = tempfile::tempdir().expect("tempdir");
        let sqlite = format!("sqlite://{}/bench.db?mode=rwc", dir.path().display());
        rows.extend(bench("sqlite", &sqlite).await);
        for (label, vars) in [
            (
                "postgres",
                ["KESTRA_BENCH_POSTGRES_URL", "KESTRA_TEST_POSTGRES_URL"],
            ),
            ("mysql", ["KESTRA_BENCH_MYSQL_URL", "KESTRA_TEST_MYSQL_URL"]),
        ] {
            if let Some(url) = vars
                .iter()
                .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
            {
                rows.extend(bench(label, &url).await);
            } else {
                eprintln!("{label}: skipped ({} not set)", vars[0]);
            }
        }
        eprintln!("done: {} measures", rows.len());
    });
}
