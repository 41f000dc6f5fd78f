//! End-to-end engine benchmark (issue 15, "Performance on every backend"): executor + worker +
//! indexer on a real backend, every figure beside a raw baseline measured in the same run and the
//! same database.
//!
//! Run: `cargo bench --all-features --bench engine` (SQLite), with `KESTRA_BENCH_POSTGRES_URL` /
//! `KESTRA_BENCH_MYSQL_URL` (or the `KESTRA_TEST_*` ones) set to also measure PostgreSQL / MariaDB, and
//! `KESTRA_BENCH_KAFKA_BROKERS` + `KESTRA_BENCH_ELASTICSEARCH_URL` (or the `KESTRA_TEST_*` ones) for
//! Kafka + Elasticsearch (topics and indices of their own per run). Scenarios:
//! - (a) one flow of 40 sequential Log/Return tasks: wall time from trigger to SUCCESS;
//! - (b) a 2-task flow: sustained executions per second (N started at once by 16 clients);
//! - (latency) the same flow started at a fixed 25 executions/s: p50/p95/p99 from trigger to SUCCESS;
//! - (c) a ForEach over 200 values, all at once: wall time;
//! - (d) a 10-task flow: executions per second (N started at once);
//! - (e) 10 sequential CPU-bound shell tasks: wall time, beside the same compute run directly;
//! - (f) a Parallel fan-out of 100 tasks: wall time;
//! - (g) 1,000 executions queued while no executor runs, then drained: executions per second;
//! - (h) a wide ForEach (600 values, all at once) over 3 workers: wall time.
//!
//! Each figure comes with the CPU time of the benchmark process and its peak resident memory
//! during the scenario (Linux), and the figure of the **raw baseline** and the ratio to it: the
//! minimum one execution of that shape needs on the same database or broker, by plain sqlx
//! (`engine/baseline.rs`) or plain rdkafka (`engine/baseline_kafka.rs`). "SUCCESS" is seen where the API sees it: in the repository
//! (`Engine::wait_for`), so on Kafka the figures include the indexer's delay into Elasticsearch.
//!
//! Output: a Markdown table on stdout (progress on stderr), and `engine.json` + `engine.svg` (the
//! ratios as a bar chart) in `docs/benchmarks/` (or `KESTRA_BENCH_OUT`): one command regenerates
//! them. A run filtered to some backends writes only those.
//!
//! **Smoke mode**: run without `--bench` (as `cargo test --all-features --bench engine` does, which
//! `scripts/test.sh` runs in CI) or with `KESTRA_BENCH_SMOKE=1`, every scenario and its baseline run
//! once with tiny sizes on SQLite only (a few seconds) and the files go to a temporary directory,
//! so the benchmark never rots; its figures mean nothing. With `KESTRA_TEST_KAFKA_BROKERS` set (as
//! in CI), the Kafka raw baseline runs once too.
//!
//! Filters (full mode): `KESTRA_BENCH_BACKENDS` (comma list of `sqlite`, `postgres`, `mysql`, `kafka`)
//! and `KESTRA_BENCH_SCENARIOS` (comma list of `a`, `b`, `latency`, `c`, `d`, `e`, `f`, `g`, `h`) run
//! only those; unset = all. On a backend whose repository is written after the unit (Kafka), (b)
//! and (latency) also report their figure as the executor published it (terminal state seen on
//! the `ExecutionChange` topic, before the indexer): the Kafka raw baseline has no indexer, so
//! that row is the one to compare with it.

#[path = "engine/baseline.rs"]
mod baseline;
#[cfg(feature = "kafka")]
#[path = "engine/baseline_kafka.rs"]
mod baseline_kafka;
#[path = "engine/report.rs"]
mod report;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use indexmap::IndexMap;
use indicatif::{ProgressBar, ProgressStyle};
use kestra::config::Config;
use kestra::jdbc::JdbcBackend;
use kestra::storage::LocalStorage;
use kestra::{Components, Engine, EngineBuilder};

use report::{Kind, Measure, UsageMark, pct};

/// How much each scenario does.
#[derive(Clone, Copy)]
struct Sizes {
    /// (a) runs of the 40-task flow (median reported).
    sequential_runs: usize,
    /// (b) executions started at once for the throughput.
    throughput: usize,
    /// (latency) executions started at 25/s.
    latency: usize,
    /// (c) runs of the ForEach (median reported).
    each_runs: usize,
    /// (d) executions of the 10-task flow started at once.
    ten: usize,
    /// (e) runs of the CPU-bound flow, and the iterations of each task's shell loop.
    cpu_runs: usize,
    cpu_loop: usize,
    /// (f) runs of the Parallel fan-out.
    parallel_runs: usize,
    /// (g) executions queued, then drained.
    drain: usize,
    /// (h) runs of the wide ForEach, and its values.
    wide_runs: usize,
    wide_values: usize,
    /// Runs of each raw baseline (median reported).
    baseline_runs: usize,
}

const FULL: Sizes = Sizes {
    sequential_runs: 5,
    throughput: 2000,
    latency: 250,
    each_runs: 3,
    ten: 300,
    cpu_runs: 3,
    cpu_loop: 100_000,
    parallel_runs: 3,
    drain: 1000,
    wide_runs: 3,
    wide_values: 600,
    baseline_runs: 9,
};

const SMOKE: Sizes = Sizes {
    sequential_runs: 1,
    throughput: 20,
    latency: 10,
    each_runs: 1,
    ten: 5,
    cpu_runs: 1,
    cpu_loop: 100,
    parallel_runs: 1,
    drain: 20,
    wide_runs: 1,
    wide_values: 10,
    baseline_runs: 1,
};

/// The measures a smoke run gives on SQLite (one per scenario).
const SMOKE_MEASURES: usize = 9;

const TWO: &str = "id: two\nnamespace: bench\ntasks:\n  - id: a\n    type: io.kestra.plugin.core.debug.Return\n    format: \"{{ execution.id }}\"\n  - id: b\n    type: io.kestra.plugin.core.log.Log\n    message: \"{{ outputs.a.value }}\"\n";

/// A ForEach of Return tasks over `n` values, all at once.
fn for_each(id: &str, n: usize) -> String {
    let values: Vec<String> = (1..=n).map(|i| i.to_string()).collect();
    format!(
        "id: {id}\nnamespace: bench\ntasks:\n  - id: each\n    type: io.kestra.plugin.core.flow.ForEach\n    values: [{}]\n    concurrencyLimit: 0\n    tasks:\n      - id: r\n        type: io.kestra.plugin.core.debug.Return\n        format: \"{{{{ taskrun.value }}}}\"\n",
        values.join(", ")
    )
}

/// `n` sequential tasks, Log and Return in turn (each Return reads the previous task's output).
fn sequential(id: &str, n: usize) -> String {
    let mut s = format!("id: {id}\nnamespace: bench\ntasks:\n");
    for i in 0..n {
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

/// The shell loop of one CPU-bound task.
fn cpu_command(iterations: usize) -> String {
    format!("i=0; while [ $i -lt {iterations} ]; do i=$((i+1)); done")
}

/// 10 sequential shell tasks, each running [`cpu_command`].
fn cpu10(iterations: usize) -> String {
    let mut s = "id: cpu10\nnamespace: bench\ntasks:\n".to_string();
    for i in 0..10 {
        s.push_str(&format!(
            "  - id: c{i}\n    type: io.kestra.plugin.scripts.shell.Commands\n    commands:\n      - '{}'\n",
            cpu_command(iterations)
        ));
    }
    s
}

/// A Parallel of `n` Return tasks.
fn parallel(n: usize) -> String {
    let mut s = format!(
        "id: parallel{n}\nnamespace: bench\ntasks:\n  - id: p\n    type: io.kestra.plugin.core.flow.Parallel\n    tasks:\n"
    );
    for i in 0..n {
        s.push_str(&format!(
            "      - id: p{i}\n        type: io.kestra.plugin.core.debug.Return\n        format: \"{i}\"\n"
        ));
    }
    s
}

fn progress(len: u64, label: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>32} [{bar:30}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_prefix(label.to_string());
    bar
}

async fn run_once(engine: &Engine, flow: &str, timeout: Duration) -> Duration {
    run_timed(engine, flow, timeout).await.2
}

/// One run of `flow`: its id, when it was triggered and how long until it ended.
async fn run_timed(engine: &Engine, flow: &str, timeout: Duration) -> (String, Instant, Duration) {
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
    (e.id, start, start.elapsed())
}

/// `runs` runs of `flow` one after the other, sorted durations.
async fn runs_of(engine: &Engine, flow: &str, runs: usize, label: &str) -> Vec<Duration> {
    let bar = progress(runs as u64, label);
    let mut all = Vec::new();
    for _ in 0..runs {
        all.push(run_once(engine, flow, Duration::from_secs(600)).await);
        bar.inc(1);
    }
    bar.finish();
    all.sort();
    all
}

/// Start `n` executions of `flow` by 16 concurrent clients (as API calls or schedules would) and
/// wait for all of them; their ids.
async fn flat_out(engine: &Arc<Engine>, flow: &str, n: usize, label: &str) -> Vec<String> {
    let bar = progress(n as u64, label);
    let ids: Vec<String> = futures::stream::iter(0..n)
        .map(|_| {
            let engine = engine.clone();
            async move {
                engine
                    .execute("bench", flow, IndexMap::new())
                    .await
                    .expect("execute")
                    .id
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    wait_all(engine, &ids, &bar).await;
    ids
}

async fn wait_all(engine: &Engine, ids: &[String], bar: &ProgressBar) {
    for id in ids {
        let done = engine
            .wait_for(id, Duration::from_secs(600))
            .await
            .expect("wait");
        assert_eq!(done.state.current().as_str(), "SUCCESS", "execution {id}");
        bar.inc(1);
    }
    bar.finish();
}

/// Whether the comma list in `var` names `item` (an unset or empty variable names everything).
fn wanted(var: &str, item: &str) -> bool {
    match std::env::var(var) {
        Ok(list) if !list.trim().is_empty() => list.split(',').any(|i| i.trim() == item),
        _ => true,
    }
}

fn scenario(item: &str) -> bool {
    wanted("KESTRA_BENCH_SCENARIOS", item)
}

/// Follow the `ExecutionChange` topic and note when each execution is first seen terminal (the
/// executor's view, before the indexer).
async fn follow_ended(
    engine: &Engine,
) -> Option<Arc<std::sync::Mutex<std::collections::HashMap<String, Instant>>>> {
    use kestra::core::messages::ExecutionChange;
    use kestra::core::queue::Topic;
    if engine.queue().capabilities().repository_in_unit {
        return None;
    }
    let mut changes = engine
        .queue()
        .subscribe(Topic::ExecutionChange)
        .await
        .ok()?;
    let ended = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let seen = ended.clone();
    tokio::spawn(async move {
        while let Some(Ok(envelope)) = changes.next().await {
            if let Ok(ExecutionChange::Saved { execution }) =
                serde_json::from_slice::<ExecutionChange>(&envelope.payload)
                && execution.state.is_terminated()
                && let Ok(mut seen) = seen.lock()
            {
                seen.entry(execution.id.clone())
                    .or_insert_with(Instant::now);
            }
        }
    });
    Some(ended)
}

fn env_first(vars: &[&str]) -> Option<String> {
    vars.iter()
        .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
}

/// A backend under test: engines are built on it as often as a scenario needs.
enum Target {
    Jdbc {
        url: String,
        backend: JdbcBackend,
        storage: Arc<LocalStorage>,
    },
    Kafka {
        config: Config,
        brokers: String,
        elasticsearch: String,
        /// The run's topic and index prefix.
        prefix: String,
    },
}

impl Target {
    /// A JDBC database, with local storage under `dir`.
    async fn jdbc(url: &str, dir: &std::path::Path) -> Target {
        Target::Jdbc {
            url: url.to_string(),
            backend: JdbcBackend::connect(url).await.expect("connect"),
            storage: Arc::new(LocalStorage::new(dir.join("storage")).expect("storage")),
        }
    }

    /// Kafka + Elasticsearch as `kestra.queue.type: kafka` configures it, with topics and indices of
    /// this run (prefix `kestra_bench_<id>_`) and local storage under `dir`.
    fn kafka(brokers: String, elasticsearch: String, dir: &std::path::Path) -> Target {
        let prefix = format!(
            "kestra_bench_{}_",
            kestra::core::model::new_id().to_lowercase()
        );
        Target::Kafka {
            brokers: brokers.clone(),
            elasticsearch: elasticsearch.clone(),
            prefix: prefix.clone(),
            config: Config::from_pairs([
                ("kestra.queue.type", "kafka".to_string()),
                ("kestra.repository.type", "elasticsearch".to_string()),
                ("kestra.kafka.brokers", brokers),
                ("kestra.kafka.topic-prefix", prefix.clone()),
                ("kestra.elasticsearch.url", elasticsearch),
                ("kestra.elasticsearch.index-prefix", prefix),
                ("kestra.data-dir", dir.display().to_string()),
            ]),
        }
    }

    async fn builder(&self) -> EngineBuilder {
        match self {
            Target::Jdbc {
                backend, storage, ..
            } => Engine::builder(backend.queue(), backend.repositories(), storage.clone()),
            Target::Kafka { config, .. } => kestra::engine(config)
                .await
                .expect("engine on Kafka + Elasticsearch (build with --all-features)"),
        }
    }

    /// Delete what the run left on a shared broker and cluster (Kafka: the run's topics and
    /// indices, so that runs do not pile up partitions on the broker); a failure is reported,
    /// not fatal. JDBC runs use a database of their own.
    async fn cleanup(&self) {
        #[cfg(feature = "kafka")]
        if let Target::Kafka {
            brokers,
            elasticsearch,
            prefix,
            ..
        } = self
        {
            use kestra::kafka::elastic::{ElasticOptions, ElasticRepositories};
            use kestra::kafka::{KafkaOptions, KafkaQueue};
            let options = KafkaOptions::new(brokers.clone()).with_prefix(prefix.clone());
            if let Err(e) = KafkaQueue::delete_topics(&options).await {
                eprintln!("bench: cannot delete the topics of prefix {prefix}: {e}");
            }
            let options =
                ElasticOptions::new(elasticsearch.clone()).with_index_prefix(prefix.clone());
            let deleted = async {
                ElasticRepositories::connect(options)
                    .await?
                    .delete_indices()
                    .await
            };
            if let Err(e) = deleted.await {
                eprintln!("bench: cannot delete the indices of prefix {prefix}: {e}");
            }
        }
    }

    /// The raw baseline of every shape on this backend's database or broker.
    async fn baselines(&self, sizes: Sizes, label: &str) -> Baselines {
        match self {
            Target::Jdbc { url, .. } => baselines(url, sizes, label).await,
            #[cfg(feature = "kafka")]
            Target::Kafka { brokers, .. } => baselines_kafka(brokers, sizes, label).await,
            #[cfg(not(feature = "kafka"))]
            Target::Kafka { .. } => Baselines::default(),
        }
    }
}

/// The raw baseline of every shape on `url` (medians, seconds per execution).
#[derive(Default)]
struct Baselines {
    two: Option<f64>,
    ten: Option<f64>,
    forty: Option<f64>,
    fan100: Option<f64>,
    fan200: Option<f64>,
    fan_wide: Option<f64>,
}

#[derive(Clone, Copy)]
enum Shape {
    Sequential(usize),
    FanOut(usize),
}

/// The baseline shapes the scenarios selected by `KESTRA_BENCH_SCENARIOS` compare with, each
/// with the slot of `b` its figure goes to.
fn needed_shapes(sizes: Sizes, b: &mut Baselines) -> Vec<(Shape, &mut Option<f64>)> {
    let any = |names: &[&str]| names.iter().any(|n| scenario(n));
    let all = [
        (
            Shape::Sequential(2),
            any(&["b", "latency", "g"]),
            &mut b.two,
        ),
        (Shape::Sequential(10), any(&["d", "e"]), &mut b.ten),
        (Shape::Sequential(40), any(&["a"]), &mut b.forty),
        (Shape::FanOut(100), any(&["f"]), &mut b.fan100),
        (Shape::FanOut(200), any(&["c"]), &mut b.fan200),
        (
            Shape::FanOut(sizes.wide_values),
            any(&["h"]),
            &mut b.fan_wide,
        ),
    ];
    all.into_iter()
        .filter(|(_, needed, _)| *needed)
        .map(|(shape, _, slot)| (shape, slot))
        .collect()
}

/// The median duration of `runs` raw executions of `shape`, seconds.
async fn raw_median(
    db: &mut baseline::RawDb,
    runs: usize,
    shape: Shape,
    bar: &ProgressBar,
) -> Option<f64> {
    let mut all = Vec::new();
    for _ in 0..runs {
        let d = match shape {
            Shape::Sequential(n) => db.sequential(n).await,
            Shape::FanOut(n) => db.fan_out(n).await,
        }
        .expect("raw baseline");
        all.push(d);
        bar.inc(1);
    }
    all.sort();
    Some(pct(&all, 0.5).as_secs_f64())
}

async fn baselines(url: &str, sizes: Sizes, label: &str) -> Baselines {
    let mut db = baseline::RawDb::connect(url)
        .await
        .expect("raw baseline: connect");
    let runs = sizes.baseline_runs;
    let mut b = Baselines::default();
    let shapes = needed_shapes(sizes, &mut b);
    let bar = progress(
        (runs * shapes.len()) as u64,
        &format!("{label} raw baseline"),
    );
    for (shape, slot) in shapes {
        *slot = raw_median(&mut db, runs, shape, &bar).await;
    }
    bar.finish();
    db.drop_tables().await.expect("raw baseline: drop tables");
    b
}

/// The raw baseline of every shape on the Kafka broker `brokers` (`engine/baseline_kafka.rs`),
/// from a blocking thread (librdkafka's transactional calls block).
#[cfg(feature = "kafka")]
async fn baselines_kafka(brokers: &str, sizes: Sizes, label: &str) -> Baselines {
    let brokers = brokers.to_string();
    let runs = sizes.baseline_runs;
    let shapes = needed_shapes(sizes, &mut Baselines::default()).len();
    let bar = progress((runs * shapes) as u64, &format!("{label} raw baseline"));
    let counted = bar.clone();
    let b = tokio::task::spawn_blocking(move || {
        let raw = baseline_kafka::RawKafka::connect(&brokers).expect("raw baseline: connect");
        let median = |shape: Shape| -> Option<f64> {
            let mut all: Vec<Duration> = (0..runs)
                .map(|_| {
                    let d = match shape {
                        Shape::Sequential(n) => raw.sequential(n),
                        Shape::FanOut(n) => raw.fan_out(n),
                    }
                    .expect("raw baseline");
                    counted.inc(1);
                    d
                })
                .collect();
            all.sort();
            Some(pct(&all, 0.5).as_secs_f64())
        };
        let mut b = Baselines::default();
        for (shape, slot) in needed_shapes(sizes, &mut b) {
            *slot = median(shape);
        }
        raw.delete_topics().expect("raw baseline: delete topics");
        b
    })
    .await
    .expect("raw baseline thread");
    bar.finish();
    b
}

async fn bench(label: &str, target: Target, sizes: Sizes) -> Vec<Measure> {
    let base = target.baselines(sizes, label).await;
    let per_second = |t: Option<f64>| t.map(|t| 1.0 / t);
    let engine = Arc::new(target.builder().await.start());
    let wide = format!("each{}", sizes.wide_values);
    for f in [
        sequential("seq40", 40),
        sequential("ten", 10),
        TWO.to_string(),
        for_each("each200", 200),
        for_each(&wide, sizes.wide_values),
        cpu10(sizes.cpu_loop),
        parallel(100),
    ] {
        engine.deploy(&f).await.expect("deploy");
    }
    let mut rows = Vec::new();
    let mut push = |m: Measure| {
        println!("{}", m.row());
        rows.push(m);
    };
    // warm-up
    run_once(&engine, "two", Duration::from_secs(60)).await;

    if scenario("a") {
        let mark = UsageMark::start();
        let a = runs_of(
            &engine,
            "seq40",
            sizes.sequential_runs,
            &format!("{label} (a) 40 tasks"),
        )
        .await;
        push(
            Measure::new(
                label,
                "a",
                format!("(a) 40 sequential tasks, wall time (median of {})", a.len()),
                Kind::Seconds,
                pct(&a, 0.5).as_secs_f64(),
            )
            .percentiles(&a)
            .usage(mark.end())
            .baseline(base.forty)
            .target(if label == "sqlite" { "< 0.2 s" } else { "-" }),
        );
    }

    if scenario("b") {
        let ended = follow_ended(&engine).await;
        let mark = UsageMark::start();
        let start = Instant::now();
        let n = sizes.throughput;
        let ids = flat_out(&engine, "two", n, &format!("{label} (b) throughput")).await;
        let tput = n as f64 / start.elapsed().as_secs_f64();
        push(
            Measure::new(
                label,
                "b",
                format!("(b) 2-task flow, sustained executions/s ({n} started at once)"),
                Kind::PerSecond,
                tput,
            )
            .usage(mark.end())
            .baseline(per_second(base.two))
            .target(if label == "sqlite" {
                ">= 1,000 /s"
            } else {
                ">= 500 /s"
            }),
        );
        if let Some(ended) = ended {
            let ended = ended.lock().map(|e| e.clone()).unwrap_or_default();
            let last = ids.iter().filter_map(|id| ended.get(id)).max().copied();
            if let (Some(last), true) = (last, ids.iter().all(|id| ended.contains_key(id))) {
                let tput = n as f64 / (last - start).as_secs_f64();
                push(
                    Measure::new(
                        label,
                        "b",
                        "(b) same, terminal as the executor published it (ExecutionChange topic)"
                            .into(),
                        Kind::PerSecond,
                        tput,
                    )
                    .baseline(per_second(base.two)),
                );
            }
        }
    }

    if scenario("latency") {
        let ended = follow_ended(&engine).await;
        let count = sizes.latency;
        let mark = UsageMark::start();
        let bar = progress(count as u64, &format!("{label} (latency) @25/s"));
        let mut handles = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(40));
        for _ in 0..count {
            tick.tick().await;
            let engine = engine.clone();
            let bar = bar.clone();
            handles.push(tokio::spawn(async move {
                let d = run_timed(&engine, "two", Duration::from_secs(60)).await;
                bar.inc(1);
                d
            }));
        }
        let mut lat = Vec::new();
        let mut triggered = Vec::new();
        for h in handles {
            let (id, start, d) = h.await.expect("join");
            lat.push(d);
            triggered.push((id, start));
        }
        bar.finish();
        lat.sort();
        push(
            Measure::new(
                label,
                "latency",
                format!("(latency) 2-task flow at 25 executions/s, trigger to end, p50 ({count} executions)"),
                Kind::Seconds,
                pct(&lat, 0.5).as_secs_f64(),
            )
            .percentiles(&lat)
            .usage(mark.end())
            .baseline(base.two)
            .target(if label == "sqlite" { "p50 < 10 ms" } else { "p50 < 20 ms" }),
        );
        // Where the repository is written after the unit (Kafka): the same executions, from
        // trigger to the terminal state the executor published (before the indexer).
        if let Some(ended) = ended {
            let ended = ended.lock().map(|e| e.clone()).unwrap_or_default();
            let mut exec: Vec<Duration> = triggered
                .iter()
                .filter_map(|(id, start)| ended.get(id).map(|at| at.duration_since(*start)))
                .collect();
            exec.sort();
            if exec.len() == triggered.len() {
                push(
                    Measure::new(
                        label,
                        "latency",
                        "(latency) same, to the terminal state the executor published (ExecutionChange topic), p50".into(),
                        Kind::Seconds,
                        pct(&exec, 0.5).as_secs_f64(),
                    )
                    .percentiles(&exec)
                    .baseline(base.two),
                );
            }
        }
    }

    if scenario("c") {
        let mark = UsageMark::start();
        let c = runs_of(
            &engine,
            "each200",
            sizes.each_runs,
            &format!("{label} (c) ForEach 200"),
        )
        .await;
        push(
            Measure::new(
                label,
                "c",
                format!(
                    "(c) ForEach over 200 values, wall time (median of {})",
                    c.len()
                ),
                Kind::Seconds,
                pct(&c, 0.5).as_secs_f64(),
            )
            .percentiles(&c)
            .usage(mark.end())
            .baseline(base.fan200)
            .target("< 0.5 s"),
        );
    }

    if scenario("d") {
        let mark = UsageMark::start();
        let start = Instant::now();
        let n = sizes.ten;
        flat_out(&engine, "ten", n, &format!("{label} (d) 10-task flow")).await;
        push(
            Measure::new(
                label,
                "d",
                format!("(d) 10-task flow, executions/s ({n} started at once)"),
                Kind::PerSecond,
                n as f64 / start.elapsed().as_secs_f64(),
            )
            .usage(mark.end())
            .baseline(per_second(base.ten)),
        );
    }

    if scenario("e") {
        // The compute alone: the same shell loop run directly, 10 times in a row (median of as
        // many rounds as the flow's runs).
        let command = cpu_command(sizes.cpu_loop);
        let mut rounds = Vec::new();
        for _ in 0..sizes.cpu_runs {
            let start = Instant::now();
            for _ in 0..10 {
                let status = std::process::Command::new("/bin/sh")
                    .args(["-c", &command])
                    .status()
                    .expect("run /bin/sh");
                assert!(status.success(), "the CPU loop failed: {status}");
            }
            rounds.push(start.elapsed());
        }
        rounds.sort();
        let compute = pct(&rounds, 0.5).as_secs_f64();
        let mark = UsageMark::start();
        let e = runs_of(
            &engine,
            "cpu10",
            sizes.cpu_runs,
            &format!("{label} (e) CPU-bound"),
        )
        .await;
        let wall = pct(&e, 0.5).as_secs_f64();
        push(
            Measure::new(
                label,
                "e",
                format!(
                    "(e) 10 sequential CPU-bound shell tasks, wall time (median of {}; compute alone {compute:.3} s, overhead {:.3} s)",
                    e.len(),
                    wall - compute
                ),
                Kind::Seconds,
                wall,
            )
            .percentiles(&e)
            .usage(mark.end())
            .baseline(base.ten.map(|t| t + compute)),
        );
    }

    if scenario("f") {
        let mark = UsageMark::start();
        let f = runs_of(
            &engine,
            "parallel100",
            sizes.parallel_runs,
            &format!("{label} (f) Parallel 100"),
        )
        .await;
        push(
            Measure::new(
                label,
                "f",
                format!(
                    "(f) Parallel fan-out of 100 tasks, wall time (median of {})",
                    f.len()
                ),
                Kind::Seconds,
                pct(&f, 0.5).as_secs_f64(),
            )
            .percentiles(&f)
            .usage(mark.end())
            .baseline(base.fan100),
        );
    }

    if scenario("h") {
        // Two more workers beside the engine's own: three compete for the ForEach's jobs.
        let mut extra = Vec::new();
        for _ in 0..2 {
            extra.push(
                target
                    .builder()
                    .await
                    .components(Components {
                        worker: true,
                        ..Components::none()
                    })
                    .start(),
            );
        }
        let mark = UsageMark::start();
        let h = runs_of(
            &engine,
            &wide,
            sizes.wide_runs,
            &format!("{label} (h) wide ForEach"),
        )
        .await;
        push(
            Measure::new(
                label,
                "h",
                format!(
                    "(h) ForEach over {} values over 3 workers, wall time (median of {})",
                    sizes.wide_values,
                    h.len()
                ),
                Kind::Seconds,
                pct(&h, 0.5).as_secs_f64(),
            )
            .percentiles(&h)
            .usage(mark.end())
            .baseline(base.fan_wide),
        );
        for e in extra {
            e.shutdown().await;
        }
    }

    if let Ok(engine) = Arc::try_unwrap(engine) {
        engine.shutdown().await;
    }

    if scenario("g") {
        // Executions created while no executor runs (a client engine with no component), then
        // an engine started to drain them.
        let client = target
            .builder()
            .await
            .components(Components::none())
            .start();
        let n = sizes.drain;
        let bar = progress(n as u64, &format!("{label} (g) queue {n}"));
        let mut ids = Vec::new();
        for _ in 0..n {
            ids.push(
                client
                    .execute("bench", "two", IndexMap::new())
                    .await
                    .expect("execute")
                    .id,
            );
            bar.inc(1);
        }
        bar.finish();
        let mark = UsageMark::start();
        let start = Instant::now();
        let server = target.builder().await.start();
        wait_all(
            &server,
            &ids,
            &progress(n as u64, &format!("{label} (g) drain {n}")),
        )
        .await;
        let rate = n as f64 / start.elapsed().as_secs_f64();
        push(
            Measure::new(
                label,
                "g",
                format!("(g) {n} queued executions of the 2-task flow drained, executions/s"),
                Kind::PerSecond,
                rate,
            )
            .usage(mark.end())
            .baseline(per_second(base.two)),
        );
        server.shutdown().await;
        client.shutdown().await;
    }
    target.cleanup().await;
    rows
}

fn main() {
    // `cargo bench` passes `--bench`; without it (`cargo test --bench engine`) this is a smoke run.
    let smoke = !std::env::args().any(|a| a == "--bench")
        || std::env::var("KESTRA_BENCH_SMOKE").is_ok_and(|v| v == "1" || v == "true");
    let sizes = if smoke { SMOKE } else { FULL };
    // `RUST_LOG=kestra_backend_kafka=debug` (for example) shows the backends' own timings.
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        if smoke {
            eprintln!("smoke run: tiny sizes on SQLite only, the figures mean nothing");
        }
        println!("{}", report::HEADER);
        let mut rows = Vec::new();
        let dir = tempfile::tempdir().expect("tempdir");
        if smoke || wanted("KESTRA_BENCH_BACKENDS", "sqlite") {
            let sqlite = format!("sqlite://{}/bench.db?mode=rwc", dir.path().display());
            let target = Target::jdbc(&sqlite, &dir.path().join("sqlite")).await;
            rows.extend(bench("sqlite", target, sizes).await);
        }
        if !smoke {
            for (label, vars) in [
                (
                    "postgres",
                    ["KESTRA_BENCH_POSTGRES_URL", "KESTRA_TEST_POSTGRES_URL"],
                ),
                ("mysql", ["KESTRA_BENCH_MYSQL_URL", "KESTRA_TEST_MYSQL_URL"]),
            ] {
                if !wanted("KESTRA_BENCH_BACKENDS", label) {
                    continue;
                }
                if let Some(url) = env_first(&vars) {
                    let target = Target::jdbc(&url, &dir.path().join(label)).await;
                    rows.extend(bench(label, target, sizes).await);
                } else {
                    eprintln!("{label}: skipped ({} not set)", vars[0]);
                }
            }
            let brokers = env_first(&["KESTRA_BENCH_KAFKA_BROKERS", "KESTRA_TEST_KAFKA_BROKERS"]);
            let elasticsearch = env_first(&[
                "KESTRA_BENCH_ELASTICSEARCH_URL",
                "KESTRA_TEST_ELASTICSEARCH_URL",
            ]);
            match (brokers, elasticsearch) {
                _ if !wanted("KESTRA_BENCH_BACKENDS", "kafka") => {}
                (Some(brokers), Some(elasticsearch)) => {
                    let target = Target::kafka(brokers, elasticsearch, &dir.path().join("kafka"));
                    rows.extend(bench("kafka+es", target, sizes).await);
                }
                _ => eprintln!(
                    "kafka+es: skipped (KESTRA_BENCH_KAFKA_BROKERS / _ELASTICSEARCH_URL not set)"
                ),
            }
        }
        let out = match std::env::var_os("KESTRA_BENCH_OUT") {
            Some(out) => std::path::PathBuf::from(out),
            None if smoke => dir.path().join("report"),
            None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/benchmarks"),
        };
        let command = "cargo bench --all-features --bench engine";
        report::write(&out, command, &rows).expect("write the report");
        eprintln!(
            "done: {} measures; {} and {}",
            rows.len(),
            out.join("engine.json").display(),
            out.join("engine.svg").display()
        );
        if smoke {
            assert_eq!(rows.len(), SMOKE_MEASURES, "every scenario gave its figure");
            assert!(
                rows.iter().filter(|m| m.ratio.is_some()).count() >= SMOKE_MEASURES,
                "every scenario has its raw baseline on SQLite"
            );
            let json: serde_json::Value = serde_json::from_slice(
                &std::fs::read(out.join("engine.json")).expect("read engine.json"),
            )
            .expect("engine.json is JSON");
            assert_eq!(
                json["measures"].as_array().map(Vec::len),
                Some(SMOKE_MEASURES),
                "engine.json holds every measure"
            );
            let svg = std::fs::read_to_string(out.join("engine.svg")).expect("read engine.svg");
            assert_eq!(
                svg.matches("<rect ").count(),
                SMOKE_MEASURES + 1,
                "engine.svg has a bar per measure (and its background)"
            );
            #[cfg(feature = "kafka")]
            if let Some(brokers) =
                env_first(&["KESTRA_BENCH_KAFKA_BROKERS", "KESTRA_TEST_KAFKA_BROKERS"])
            {
                let b = baselines_kafka(&brokers, sizes, "kafka").await;
                assert!(
                    [b.two, b.ten, b.forty, b.fan100, b.fan200, b.fan_wide]
                        .iter()
                        .all(|f| f.is_some_and(|f| f > 0.0)),
                    "the Kafka raw baseline has a figure for every shape"
                );
                eprintln!(
                    "smoke run: Kafka raw baseline done (40 sequential: {:.3} s)",
                    b.forty.unwrap_or_default()
                );
            }
            eprintln!("smoke run done: {} measures", rows.len());
        }
    });
}
