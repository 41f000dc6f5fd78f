//! The soak (issue 14): a mixed flow set run through 2 executors, 3 workers, 2 schedulers and an
//! indexer, each a separate `kestra server <component>` process on one database, while a random
//! process is SIGKILLed (and restarted) or SIGSTOPped (and SIGCONTed) every few seconds. At the
//! end it waits for every execution to end and checks the invariants: every execution reached one
//! terminal state once, no task run or task-run attempt has two terminal results, nothing started
//! was lost (every execution published is in the repository, ended SUCCESS, none appeared from
//! nowhere), one execution per schedule slot (none lost), the concurrency limit held. A progress
//! display while it runs, a summary at the end; the exit code is 1 on any violation.
//!
//! A command, not a CI test (`test = false` in Cargo.toml: `cargo test` does not run it):
//!
//! ```sh
//! scripts/soak.sh --db sqlite --executions 10000
//! scripts/soak.sh --db postgres --executions 10000 --kill-interval 5 --seed 42
//! ```
//!
//! (`cargo test --all-features --test soak -- --help` lists the options.) It shares the fault
//! suite's harness (`tests/faults/harness.rs`: processes, signals, a database per run, the
//! execution invariants).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)] // the soak uses part of the tests' common module
mod common;
#[path = "faults/harness.rs"]
#[allow(dead_code)] // the soak uses part of the fault suite's harness
mod harness;

use std::collections::{BTreeMap, HashSet};
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kestra::core::messages::execution_envelope;
use kestra::core::model::{Execution, StateType};
use kestra::core::repository::{ExecutionQuery, Pageable};

use harness::{Cluster, Signal, invariant_violations, most_at_once};

/// Namespace of the executions the soak starts.
const RUN_NS: &str = "soak.run";
/// Namespace of the schedule-triggered flow.
const SCHEDULE_NS: &str = "soak.schedule";
/// The schedule's period (its cron fires every 2 s).
const SCHEDULE_PERIOD: i64 = 2;
/// The concurrency limit of the `limited` flow.
const LIMIT: usize = 2;

/// The database the soak runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Db {
    Sqlite,
    Postgres,
    Mysql,
}

impl Db {
    fn kind(self) -> &'static str {
        match self {
            Db::Sqlite => "sqlite",
            Db::Postgres => "postgres",
            Db::Mysql => "mysql",
        }
    }
}

/// The soak: executions through separate processes under random kills and stops.
#[derive(Debug, Parser)]
#[command(name = "soak")]
struct Args {
    /// The database.
    #[arg(long, value_enum, default_value = "sqlite")]
    db: Db,
    /// The database to run on, used as it is (it should be empty). Without it: a new SQLite
    /// file, or a new database on the server of KESTRA_TEST_POSTGRES_URL / KESTRA_TEST_MYSQL_URL,
    /// dropped at the end.
    #[arg(long)]
    url: Option<String>,
    /// Executions to start.
    #[arg(long, default_value_t = 10_000)]
    executions: usize,
    /// Mean seconds between two faults (each one a SIGKILL + restart or a SIGSTOP + SIGCONT);
    /// 0 for none.
    #[arg(long, default_value_t = 5.0)]
    kill_interval: f64,
    /// Seed of the flow mix and the fault schedule (default: from the clock; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Executions started and not ended at most at once.
    #[arg(long, default_value_t = 200)]
    in_flight: usize,
    /// Seconds to wait, once everything is started and the faults stop, for every execution to end.
    #[arg(long, default_value_t = 900)]
    drain_timeout: u64,
}

/// A small seeded generator (splitmix64): the run's choices are reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(n).expect("a small n")).expect("below n")
    }

    /// A number in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        // 53 random bits: exact in an f64.
        #[allow(clippy::cast_precision_loss)]
        let bits = (self.next() >> 11) as f64;
        bits / (1u64 << 53) as f64
    }

    /// A duration of `mean` seconds times `0.5..1.5`.
    fn around(&mut self, mean: f64) -> Duration {
        Duration::from_secs_f64(mean * (0.5 + self.unit()))
    }
}

/// The flows the soak starts, with their weight in the mix.
const FLOWS: &[(&str, usize, &str)] = &[
    (
        "logs",
        3,
        r#"tasks:
  - id: hello
    type: io.kestra.plugin.core.log.Log
    message: "hello {{ execution.id }}"
  - id: bye
    type: io.kestra.plugin.core.log.Log
    message: "bye {{ execution.id }}"
"#,
    ),
    (
        "sleepy",
        2,
        r#"tasks:
  - id: nap
    type: io.kestra.plugin.core.flow.Sleep
    duration: PT0.2S
  - id: after
    type: io.kestra.plugin.core.debug.Return
    format: "{{ execution.id }}"
"#,
    ),
    (
        "script",
        1,
        r#"tasks:
  - id: sh
    type: io.kestra.plugin.scripts.shell.Commands
    taskRunner:
      type: io.kestra.plugin.core.runner.Process
    commands:
      - sleep 0.1
      - echo "{{ execution.id }}"
"#,
    ),
    (
        "fanout",
        2,
        r#"tasks:
  - id: each
    type: io.kestra.plugin.core.flow.ForEach
    values: ["a", "b", "c"]
    concurrencyLimit: 2
    tasks:
      - id: item
        type: io.kestra.plugin.core.debug.Return
        format: "{{ taskrun.value }}"
  - id: both
    type: io.kestra.plugin.core.flow.Parallel
    tasks:
      - id: left
        type: io.kestra.plugin.core.log.Log
        message: left
      - id: right
        type: io.kestra.plugin.core.log.Log
        message: right
"#,
    ),
    (
        "flaky",
        1,
        r#"tasks:
  - id: flaky
    type: io.kestra.plugin.core.execution.Fail
    condition: "{{ taskrun.attemptsCount == 0 }}"
    errorMessage: the first attempt fails
    retry:
      type: constant
      interval: PT0.5S
      maxAttempts: 3
"#,
    ),
    (
        "limited",
        1,
        r#"concurrency:
  limit: 2
  behavior: QUEUE
tasks:
  - id: hold
    type: io.kestra.plugin.core.flow.Sleep
    duration: PT0.1S
"#,
    ),
];

/// The schedule-triggered flow.
const TICKING: &str = r#"id: ticking
namespace: soak.schedule
triggers:
  - id: every2s
    type: io.kestra.plugin.core.trigger.Schedule
    cron: "*/2 * * * * *"
    withSeconds: true
    recoverMissedSchedules: ALL
tasks:
  - id: tick
    type: io.kestra.plugin.core.debug.Return
    format: "{{ trigger.date }}"
"#;

/// The processes of the soak, one slot each (a killed process is replaced in its slot).
const LAYOUT: &[&str] = &[
    "executor",
    "executor",
    "worker",
    "worker",
    "worker",
    "scheduler",
    "scheduler",
    "indexer",
];

/// A fault in progress.
enum Fault {
    /// The slot's process was SIGKILLed; it restarts at the instant.
    Killed(usize, Instant),
    /// The slot's process is SIGSTOPped; it resumes at the instant.
    Stopped(usize, Instant),
}

/// What happened during the run.
#[derive(Default)]
struct Tally {
    kills: BTreeMap<&'static str, usize>,
    stops: BTreeMap<&'static str, usize>,
    /// Processes that exited without being killed (restarted too).
    exits: Vec<String>,
}

impl Tally {
    fn total(map: &BTreeMap<&'static str, usize>) -> usize {
        map.values().sum()
    }
}

fn terminal_states() -> Vec<StateType> {
    vec![
        StateType::Success,
        StateType::Warning,
        StateType::Failed,
        StateType::Killed,
        StateType::Cancelled,
        StateType::Retried,
        StateType::Skipped,
    ]
}

/// How many executions of `namespace` are in the repository (ended ones when `ended`).
async fn count(c: &Cluster, namespace: &str, ended: bool) -> Result<u64, String> {
    let query = ExecutionQuery {
        namespace: Some(namespace.to_string()),
        states: if ended { terminal_states() } else { Vec::new() },
        ..ExecutionQuery::default()
    };
    let page = Pageable {
        page: 1,
        size: 1,
        ..Pageable::default()
    };
    c.repositories()
        .executions
        .search(&query, &page)
        .await
        .map(|p| p.total)
        .map_err(|e| e.to_string())
}

/// Every execution of `namespace`, page by page.
async fn all_of(c: &Cluster, namespace: &str) -> Vec<Execution> {
    let query = ExecutionQuery {
        namespace: Some(namespace.to_string()),
        ..ExecutionQuery::default()
    };
    let mut out = Vec::new();
    for page in 1.. {
        let pageable = Pageable {
            page,
            size: 500,
            ..Pageable::default()
        };
        let results = c
            .repositories()
            .executions
            .search(&query, &pageable)
            .await
            .unwrap_or_else(|e| panic!("read the executions of {namespace}: {e}"))
            .results;
        let last = results.len() < 500;
        out.extend(results);
        if last {
            break;
        }
    }
    out
}

/// The slot (`trigger.date`) of a scheduled execution.
fn slot(e: &Execution) -> Result<chrono::DateTime<chrono::Utc>, String> {
    let date = e
        .trigger
        .as_ref()
        .and_then(|t| t.variables.get("date"))
        .and_then(|d| d.as_str())
        .ok_or_else(|| format!("execution {} has no trigger.date", e.id))?;
    chrono::DateTime::parse_from_rfc3339(date)
        .map(|d| d.with_timezone(&chrono::Utc))
        .map_err(|err| format!("trigger.date '{date}' of {}: {err}", e.id))
}

/// Counts of the log lines an operator watches for, over every process's log.
fn log_signals(c: &Cluster) -> Vec<(&'static str, usize)> {
    let markers: &[(&'static str, &str)] = &[
        ("WARN lines", " WARN "),
        ("ERROR lines", " ERROR "),
        ("declared dead", "service instance declared dead"),
        ("dead-lettered", "dead-lettering a message"),
        ("fenced units", "unit of work fenced"),
        ("lost leases", "leases of running jobs were lost"),
        ("stale copies stopped", "stopping a resubmitted attempt"),
    ];
    let mut counts = vec![0usize; markers.len() + 1];
    for p in &c.procs {
        for line in p.log().lines() {
            for (n, (_, marker)) in markers.iter().enumerate() {
                if line.contains(marker) {
                    counts[n] += 1;
                }
            }
            // The executor says how many jobs of a dead worker it resubmitted.
            if let Some((_, rest)) = line.split_once(" resubmitted=") {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                counts[markers.len()] += digits.parse::<usize>().unwrap_or(0);
            }
        }
    }
    markers
        .iter()
        .map(|(name, _)| *name)
        .chain(["resubmissions sent"])
        .zip(counts)
        .collect()
}

/// `url` without its password, for printing.
fn redacted(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((credentials, host)) => {
                let user = credentials.split(':').next().unwrap_or_default();
                format!("{scheme}://{user}:***@{host}")
            }
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(soak(args)) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("soak: {e}");
            ExitCode::from(2)
        }
    }
}

/// The soak; the number of violations.
#[allow(clippy::too_many_lines)]
async fn soak(args: Args) -> Result<usize, String> {
    if args.executions == 0 || args.in_flight == 0 {
        return Err("--executions and --in-flight must be at least 1".into());
    }
    if !(args.kill_interval.is_finite() && args.kill_interval >= 0.0) {
        return Err(format!(
            "--kill-interval must be a number of seconds, 0 or more: {}",
            args.kill_interval
        ));
    }
    if let Some(url) = &args.url {
        let schemes: &[&str] = match args.db {
            Db::Sqlite => &["sqlite:"],
            Db::Postgres => &["postgres://", "postgresql://"],
            Db::Mysql => &["mysql://", "mariadb://"],
        };
        if !schemes.iter().any(|s| url.starts_with(s)) {
            return Err(format!(
                "--url {} is not a {} URL (it starts with {})",
                redacted(url),
                args.db.kind(),
                schemes.join(" or ")
            ));
        }
        // A clear error rather than the harness's panic when the database cannot be reached.
        let backend = kestra::jdbc::JdbcBackend::connect(url)
            .await
            .map_err(|e| format!("--url: {e}"))?;
        backend.close().await;
    }
    let seed = args.seed.unwrap_or_else(|| {
        u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
                % u128::from(u64::MAX),
        )
        .unwrap_or(1)
    });
    let mut rng = Rng(seed);
    let kind = args.db.kind();
    let mut c = match (&args.url, args.db) {
        (Some(url), _) => Cluster::at(kind, url).await,
        (None, Db::Sqlite) => Cluster::sqlite().await,
        (None, db) => {
            let var = if db == Db::Postgres {
                "KESTRA_TEST_POSTGRES_URL"
            } else {
                "KESTRA_TEST_MYSQL_URL"
            };
            let base = std::env::var(var)
                .ok()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("--db {kind} needs --url or {var}"))?;
            Cluster::server(kind, &base).await
        }
    };
    harness::set_quiet(true);
    println!(
        "soak: {} executions on {kind} ({}), seed {seed}, a fault every ~{}s, at most {} in flight; processes: {}; logs in {}",
        args.executions,
        redacted(&c.url),
        args.kill_interval,
        args.in_flight,
        LAYOUT.join(", "),
        c.dir.path().display()
    );

    // The flows, deployed by the first executor.
    let total_weight: usize = FLOWS.iter().map(|(_, w, _)| w).sum();
    for (id, _, body) in FLOWS {
        c.flow(id, &format!("id: {id}\nnamespace: {RUN_NS}\n{body}"));
    }
    c.flow("ticking", TICKING);
    let mut slots: Vec<usize> = Vec::new();
    for (n, component) in LAYOUT.iter().enumerate() {
        slots.push(c.start(component, n == 0));
        if n == 0 {
            for (id, _, _) in FLOWS {
                c.wait_flow(RUN_NS, id).await;
            }
            c.wait_flow(SCHEDULE_NS, "ticking").await;
        }
    }

    let bar = ProgressBar::with_draw_target(
        Some(u64::try_from(args.executions).expect("a count")),
        if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{wide_bar}] {pos}/{len} ended ({per_sec}) {msg}",
        )
        .expect("a progress template"),
    );
    let plain = bar.is_hidden();

    // SIGINT (Ctrl-C) or SIGTERM: no more executions are started; those started are drained and
    // checked as usual (the summary says so).
    let interrupted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let interrupted = interrupted.clone();
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("a SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            interrupted.store(true, std::sync::atomic::Ordering::Relaxed);
        });
    }
    let mut goal = args.executions;

    let started_at = Instant::now();
    let mut published: Vec<String> = Vec::with_capacity(args.executions);
    let mut by_flow: BTreeMap<&str, usize> = BTreeMap::new();
    let mut ended: u64 = 0;
    let mut tally = Tally::default();
    let mut fault: Option<Fault> = None;
    let faults_on = args.kill_interval > 0.0;
    let mut next_fault = Instant::now() + rng.around(args.kill_interval.max(0.1));
    let mut last_fault = String::from("none yet");
    let mut last_line = Instant::now();
    let mut last_poll = Instant::now() - Duration::from_secs(10);
    let mut poll_errors = 0usize;
    let drain_deadline: Option<Instant>;
    let mut all_started: Option<Instant> = None;

    loop {
        let now = Instant::now();
        if goal > published.len() && interrupted.load(std::sync::atomic::Ordering::Relaxed) {
            goal = published.len();
            bar.set_length(u64::try_from(goal).expect("a count"));
            let line = format!(
                "[{:>6.0}s] interrupted: no more executions started, {goal} to drain and check",
                started_at.elapsed().as_secs_f64()
            );
            if plain {
                println!("{line}");
            } else {
                bar.println(line);
            }
        }
        let starting = published.len() < goal;
        if !starting && all_started.is_none() {
            all_started = Some(now);
        }
        // Faults: one at a time, while executions are being started or running (bounded by the
        // drain timeout once all are started).
        let active = ended < u64::try_from(goal).expect("a count")
            && all_started
                .is_none_or(|at| now.duration_since(at) < Duration::from_secs(args.drain_timeout));
        match fault.take() {
            Some(Fault::Killed(slot, at)) if now >= at || !active => {
                let component = LAYOUT[slot];
                slots[slot] = c.start(component, false);
            }
            Some(Fault::Stopped(slot, at)) if now >= at || !active => {
                c.procs[slots[slot]].signal(Signal::Cont);
            }
            other => fault = other,
        }
        // A process that exited on its own (not the one killed) is noted and restarted.
        for (slot, component) in LAYOUT.iter().enumerate() {
            let killed = matches!(fault, Some(Fault::Killed(s, _)) if s == slot);
            if !killed && !c.procs[slots[slot]].alive() {
                tally.exits.push(c.procs[slots[slot]].name.clone());
                slots[slot] = c.start(component, false);
            }
        }
        if faults_on && active && fault.is_none() && now >= next_fault {
            let slot = rng.below(LAYOUT.len());
            let component = LAYOUT[slot];
            let pid = slots[slot];
            if rng.unit() < 0.6 {
                c.procs[pid].kill();
                *tally.kills.entry(component).or_default() += 1;
                fault = Some(Fault::Killed(
                    slot,
                    now + Duration::from_secs_f64(0.2 + 1.8 * rng.unit()),
                ));
                last_fault = format!("SIGKILL {}", c.procs[pid].name);
            } else {
                c.procs[pid].signal(Signal::Stop);
                *tally.stops.entry(component).or_default() += 1;
                fault = Some(Fault::Stopped(
                    slot,
                    now + Duration::from_secs_f64(0.5 + 4.5 * rng.unit()),
                ));
                last_fault = format!("SIGSTOP {}", c.procs[pid].name);
            }
            next_fault = now + rng.around(args.kill_interval);
        }

        // While a process is frozen the soak itself stays off the database: the frozen process
        // may hold a lock (SQLite's write lock, a row lock) that the soak would wait for while it
        // owes the SIGCONT that releases it.
        let frozen = matches!(fault, Some(Fault::Stopped(..)));

        // Progress: ended executions, polled from the repository.
        if !frozen && now.duration_since(last_poll) >= Duration::from_millis(500) {
            last_poll = now;
            match count(&c, RUN_NS, true).await {
                Ok(n) => ended = n,
                // A stopped process may hold a lock: the next poll will tell.
                Err(_) => poll_errors += 1,
            }
        }
        let in_flight = published.len()
            - usize::try_from(ended)
                .unwrap_or(usize::MAX)
                .min(published.len());

        // Start executions up to the in-flight bound, in batches.
        if !frozen && starting && in_flight < args.in_flight {
            let n = (args.in_flight - in_flight)
                .min(goal - published.len())
                .min(50);
            let mut batch = Vec::with_capacity(n);
            let mut ids = Vec::with_capacity(n);
            let mut flows = Vec::with_capacity(n);
            for _ in 0..n {
                let mut pick = rng.below(total_weight);
                let (flow, _, _) = FLOWS
                    .iter()
                    .find(|(_, w, _)| {
                        if pick < *w {
                            true
                        } else {
                            pick -= w;
                            false
                        }
                    })
                    .expect("a flow of the mix");
                let execution = Execution::new(RUN_NS, *flow, 1);
                batch.push(execution_envelope(&execution).map_err(|e| e.to_string())?);
                ids.push(execution.id);
                flows.push(*flow);
            }
            // A publication that failed (a busy database) is retried on the next round.
            if c.queue().publish(batch).await.is_ok() {
                published.extend(ids);
                for f in flows {
                    *by_flow.entry(f).or_default() += 1;
                }
            } else {
                poll_errors += 1;
            }
        }

        let message = format!(
            "started {}, in flight {in_flight}, kills {}, stops {}, last fault: {last_fault}",
            published.len(),
            Tally::total(&tally.kills),
            Tally::total(&tally.stops)
        );
        bar.set_position(ended);
        bar.set_message(message.clone());
        if plain && last_line.elapsed() >= Duration::from_secs(15) {
            last_line = Instant::now();
            println!(
                "[{:>6.0}s] ended {ended}/{} - {message}",
                started_at.elapsed().as_secs_f64(),
                goal
            );
        }
        if !active && fault.is_none() {
            drain_deadline = Some(Instant::now() + Duration::from_secs(args.drain_timeout));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let faults_ended = started_at.elapsed();

    // Drain: no more faults; every started execution must end.
    let deadline = drain_deadline.expect("set when the loop ends");
    let mut drained = false;
    while Instant::now() < deadline {
        if let Ok(n) = count(&c, RUN_NS, true).await {
            ended = n;
        }
        bar.set_position(ended);
        bar.set_message(format!(
            "draining: {} in flight, faults over",
            goal - usize::try_from(ended).unwrap_or(0).min(goal)
        ));
        if plain && last_line.elapsed() >= Duration::from_secs(15) {
            last_line = Instant::now();
            println!(
                "[{:>6.0}s] ended {ended}/{} - draining",
                started_at.elapsed().as_secs_f64(),
                goal
            );
        }
        if ended >= u64::try_from(goal).expect("a count") {
            drained = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let elapsed = started_at.elapsed();
    bar.finish_and_clear();

    // The schedulers stop; the slots they fired end.
    let schedulers_stopped = chrono::Utc::now();
    for (slot, component) in LAYOUT.iter().enumerate() {
        if *component == "scheduler" {
            c.procs[slots[slot]].kill();
        }
    }
    let schedule_deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < schedule_deadline {
        match (
            count(&c, SCHEDULE_NS, false).await,
            count(&c, SCHEDULE_NS, true).await,
        ) {
            (Ok(all), Ok(done)) if all == done => break,
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }

    // The invariants.
    let mut violations: Vec<String> = Vec::new();
    let runs = all_of(&c, RUN_NS).await;
    let ticks = all_of(&c, SCHEDULE_NS).await;
    if !drained {
        violations.push(format!(
            "{} of {} executions had not ended {}s after the faults stopped",
            goal - usize::try_from(ended).unwrap_or(0).min(goal),
            goal,
            args.drain_timeout
        ));
    }
    violations.extend(invariant_violations(&runs));
    violations.extend(invariant_violations(&ticks));
    // Nothing started was lost, nothing appeared from nowhere, each ended SUCCESS.
    let found: HashSet<&str> = runs.iter().map(|e| e.id.as_str()).collect();
    for id in &published {
        if !found.contains(id.as_str()) {
            violations.push(format!(
                "execution {id} was started and is not in the repository"
            ));
        }
    }
    let mine: HashSet<&str> = published.iter().map(String::as_str).collect();
    let mut final_states: BTreeMap<String, usize> = BTreeMap::new();
    for e in &runs {
        *final_states
            .entry(format!("{:?}", e.state.current()))
            .or_default() += 1;
        if !mine.contains(e.id.as_str()) {
            violations.push(format!(
                "execution {} ({}) was never started by the soak",
                e.id, e.flow_id
            ));
        } else if e.state.current() != StateType::Success {
            violations.push(format!(
                "execution {} ({}) ended {:?}, not SUCCESS",
                e.id,
                e.flow_id,
                e.state.current()
            ));
        }
        if e.flow_id == "flaky" && e.state.current() == StateType::Success {
            let attempts = e.task_run_list.first().map_or(0, |r| r.attempts.len());
            if attempts < 2 {
                violations.push(format!(
                    "execution {} (flaky) succeeded with {attempts} attempt(s): its first attempt must fail",
                    e.id
                ));
            }
        }
    }
    let resubmitted_attempts: usize = runs
        .iter()
        .chain(&ticks)
        .flat_map(|e| &e.task_run_list)
        .flat_map(|r| &r.attempts)
        .filter(|a| a.state.current() == StateType::Resubmitted)
        .count();
    // The concurrency limit held.
    let limited: Vec<Execution> = runs
        .iter()
        .filter(|e| e.flow_id == "limited")
        .cloned()
        .collect();
    let most = most_at_once(&limited);
    if most > LIMIT {
        violations.push(format!(
            "{most} executions of the limited flow ran at once (limit {LIMIT})"
        ));
    }
    // One execution per schedule slot, none lost between the first and the last.
    let mut fired = Vec::new();
    for e in &ticks {
        match slot(e) {
            Ok(d) => fired.push(d),
            Err(v) => violations.push(v),
        }
    }
    fired.sort();
    for pair in fired.windows(2) {
        let gap = pair[1] - pair[0];
        if gap == chrono::Duration::zero() {
            violations.push(format!("schedule slot {} fired twice", pair[0]));
        } else if gap != chrono::Duration::seconds(SCHEDULE_PERIOD) {
            violations.push(format!(
                "schedule slot(s) between {} and {} lost",
                pair[0], pair[1]
            ));
        }
    }
    let ticks_not_success = ticks
        .iter()
        .filter(|e| e.state.current() != StateType::Success)
        .count();
    if ticks_not_success > 0 {
        violations.push(format!(
            "{ticks_not_success} scheduled executions did not end SUCCESS"
        ));
    }
    if fired.is_empty() {
        violations.push("the schedule never fired".into());
    }

    // The summary.
    let secs = elapsed.as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    let rate = runs.len() as f64 / secs.max(0.001);
    let signals = log_signals(&c);
    println!("\n===== soak summary =====");
    println!("database:            {kind} ({})", redacted(&c.url));
    println!("seed:                {seed}");
    println!(
        "executions:          {} started, {} in the repository, {} ended ({final_states:?})",
        published.len(),
        runs.len(),
        ended
    );
    if goal < args.executions {
        println!(
            "interrupted:         {goal} of the {} executions asked for were started",
            args.executions
        );
    }
    println!("flow mix:            {by_flow:?}");
    println!(
        "duration:            {secs:.1} s ({:.1} s with faults, then the drain)",
        faults_ended.as_secs_f64()
    );
    println!("throughput:          {rate:.1} executions/s (started flows, end to end)");
    println!(
        "faults survived:     {} SIGKILL + restart {:?}, {} SIGSTOP/SIGCONT {:?}",
        Tally::total(&tally.kills),
        tally.kills,
        Tally::total(&tally.stops),
        tally.stops
    );
    println!(
        "schedule:            {} slots fired ({} s period), most limited executions at once: {most} (limit {LIMIT})",
        fired.len(),
        SCHEDULE_PERIOD
    );
    if let (Some(first), Some(last)) = (fired.first(), fired.last()) {
        println!(
            "schedule lag:        the last slot fired was {} s before the schedulers stopped (first slot {first}); a slot's execution ends before the next one fires",
            (schedulers_stopped - *last).num_seconds()
        );
    }
    println!(
        "exited on their own: {} {:?} (restarted)",
        tally.exits.len(),
        tally.exits
    );
    println!("failed polls:        {poll_errors} (the soak's own reads and publications; retried)");
    for (name, n) in &signals {
        println!("{:<21}{n}", format!("{name}:"));
    }
    println!("RESUBMITTED attempts: {resubmitted_attempts} (in the executions)");
    println!("violations:          {}", violations.len());
    for v in violations.iter().take(20) {
        println!("  - {v}");
    }
    if violations.len() > 20 {
        println!("  ... and {} more", violations.len() - 20);
    }
    if !violations.is_empty() {
        println!("{}", c.logs());
        // The run's folder goes with the cluster: its logs are kept for the investigation.
        let kept = std::env::temp_dir().join(format!("kestra-soak-{seed}"));
        let copied = std::fs::create_dir_all(&kept).and_then(|()| {
            for entry in std::fs::read_dir(c.dir.path())? {
                let path = entry?.path();
                if path.extension().is_some_and(|e| e == "log") {
                    std::fs::copy(&path, kept.join(path.file_name().expect("a file name")))?;
                }
            }
            Ok(())
        });
        match copied {
            Ok(()) => println!("process logs kept in {}", kept.display()),
            Err(e) => println!("could not keep the process logs in {}: {e}", kept.display()),
        }
    }
    c.finish().await;
    Ok(violations.len())
}
