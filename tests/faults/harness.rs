//! The fault suite's harness: a database of its own per scenario, real `kestra server <component>`
//! processes on it with short liveness settings, real signals, and the invariants read back from
//! the repository.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kestra::core::messages::execution_envelope;
use kestra::core::model::{Execution, StateType};
use kestra::core::queue::Queue;
use kestra::core::repository::{ExecutionQuery, Pageable, Repositories};
use kestra::jdbc::JdbcBackend;

/// Heartbeat of every process.
pub const HEARTBEAT: &str = "200ms";
/// Liveness timeout: a silent instance is declared dead after it.
pub const LIVENESS_TIMEOUT: Duration = Duration::from_secs(2);
/// A worker's job lease: a dead worker's job is delivered again about one lease after its last
/// renewal (a quarter lease).
pub const LEASE: Duration = Duration::from_secs(3);

static QUIET: AtomicBool = AtomicBool::new(false);

/// Silence the harness's own messages (process started, signal sent): the soak (`tests/soak.rs`)
/// draws a progress display on the terminal instead and counts them.
#[allow(dead_code)] // the fault suite keeps the messages
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// A harness message on stderr, unless [`set_quiet`].
fn say(message: std::fmt::Arguments<'_>) {
    if !QUIET.load(Ordering::Relaxed) {
        eprintln!("[faults] {message}");
    }
}

/// A signal sent to a process.
#[derive(Debug, Clone, Copy)]
pub enum Signal {
    /// No goodbye, no drain.
    Kill,
    /// Frozen (a long GC pause, a VM stall).
    Stop,
    /// Thawed.
    Cont,
    /// Graceful stop.
    Term,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Signal::Kill => "KILL",
            Signal::Stop => "STOP",
            Signal::Cont => "CONT",
            Signal::Term => "TERM",
        }
    }
}

/// Send `signal` to `pid` with kill(1) (the crate forbids `unsafe`, so no libc call).
fn send(pid: u32, signal: Signal) -> std::io::Result<ExitStatus> {
    Command::new("kill")
        .arg(format!("-{}", signal.name()))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .status()
}

/// One `kestra server <component>` process.
pub struct Proc {
    /// `executor`, `worker`, ...
    pub name: String,
    child: Child,
    log: PathBuf,
    exited: Option<ExitStatus>,
}

impl Proc {
    /// Send `signal` to the process.
    pub fn signal(&mut self, signal: Signal) {
        // Our own child: its pid is not reused until we wait for it.
        let pid = self.child.id();
        let status = send(pid, signal);
        assert!(
            status.as_ref().is_ok_and(|s| s.success()),
            "kill -{} {pid} ({}): {status:?}",
            signal.name(),
            self.name
        );
        say(format_args!("{signal:?} -> {} (pid {pid})", self.name));
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        self.signal(Signal::Kill);
        self.exited = self.child.wait().ok();
    }

    /// Wait up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exited = Some(status);
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Whether it is still running.
    pub fn alive(&mut self) -> bool {
        self.exited.is_none() && matches!(self.child.try_wait(), Ok(None))
    }

    /// Its log (stderr) so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited.is_none() {
            // A stopped process must be resumed to die cleanly.
            let _ = send(self.child.id(), Signal::Cont);
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A scenario's world: its database, its data directory (local storage shared by the processes),
/// its flows, its processes, and a connection of the test's own for publishing and checking.
pub struct Cluster {
    /// `sqlite`, `postgres` or `mysql`.
    pub kind: &'static str,
    /// The database URL.
    pub url: String,
    /// The scenario's own server database (none on SQLite), dropped by [`Cluster::finish`].
    server: Option<crate::common::ServerDatabase>,
    /// The scenario's folder (data, flows, logs, task markers).
    pub dir: tempfile::TempDir,
    /// The processes started so far.
    pub procs: Vec<Proc>,
    /// The test's own backend on the database.
    pub backend: JdbcBackend,
    started: usize,
    /// Settings (environment variables) of the processes started from now on.
    env: Vec<(String, String)>,
}

impl Cluster {
    /// A fresh SQLite file.
    pub async fn sqlite() -> Cluster {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let url = crate::common::sqlite_url(&dir);
        Cluster::open("sqlite", url, None, dir).await
    }

    /// A fresh database on the server of `base` (PostgreSQL when `kind` is `postgres`,
    /// MySQL/MariaDB when `mysql`), dropped at the end.
    pub async fn server(kind: &'static str, base: &str) -> Cluster {
        let db = crate::common::fresh_database(base).await;
        let dir = tempfile::tempdir().expect("a temporary directory");
        Cluster::open(kind, db.url.clone(), Some(db), dir).await
    }

    /// The database of `url` as it is (`kind`: `sqlite`, `postgres` or `mysql`), with a fresh
    /// folder; [`Cluster::finish`] leaves the database in place (e.g. on a server of the
    /// scenario's own, which it stops and starts itself, or the soak's database).
    pub async fn at(kind: &'static str, url: &str) -> Cluster {
        let dir = tempfile::tempdir().expect("a temporary directory");
        Cluster::open(kind, url.to_string(), None, dir).await
    }

    async fn open(
        kind: &'static str,
        url: String,
        server: Option<crate::common::ServerDatabase>,
        dir: tempfile::TempDir,
    ) -> Cluster {
        std::fs::create_dir_all(dir.path().join("flows")).expect("flows folder");
        std::fs::create_dir_all(dir.path().join("marks")).expect("marks folder");
        let backend = JdbcBackend::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("connect {url}: {e}"));
        Cluster {
            kind,
            url,
            server,
            dir,
            procs: Vec::new(),
            backend,
            started: 0,
            env: Vec::new(),
        }
    }

    /// Where tasks leave their marks.
    pub fn marks(&self) -> PathBuf {
        self.dir.path().join("marks")
    }

    /// Add a flow file (deployed by the next process started with the flows).
    pub fn flow(&self, id: &str, source: &str) {
        std::fs::write(
            self.dir.path().join("flows").join(format!("{id}.yml")),
            source,
        )
        .expect("write a flow");
    }

    /// Set `key=value` in the environment of the processes started from now on (over the
    /// harness's own settings).
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.push((key.to_string(), value.to_string()));
    }

    /// Start `kestra server <component>`; `deploy` passes the flows folder. Returns its index.
    pub fn start(&mut self, component: &str, deploy: bool) -> usize {
        self.start_logging(component, deploy, "info")
    }

    /// [`Cluster::start`] with its own `RUST_LOG`.
    pub fn start_logging(&mut self, component: &str, deploy: bool, rust_log: &str) -> usize {
        self.started += 1;
        let name = format!("{component}-{}", self.started);
        let log = self.dir.path().join(format!("{name}.log"));
        let mut command = Command::new(env!("CARGO_BIN_EXE_kestra"));
        command.args(["server", component]);
        if deploy {
            command.arg("--flows").arg(self.dir.path().join("flows"));
        }
        // Only this scenario's settings: none inherited from the shell running the tests.
        for (key, _) in std::env::vars() {
            if key.starts_with("KESTRA_") || key.starts_with("DATASOURCES_") {
                command.env_remove(key);
            }
        }
        let datasource = format!("DATASOURCES_{}_URL", self.kind.to_ascii_uppercase());
        command
            .env("KESTRA_REPOSITORY_TYPE", self.kind)
            .env(datasource, &self.url)
            .env("KESTRA_DATA_DIR", self.dir.path().join("data"))
            .env("KESTRA_SERVER_LIVENESS_HEARTBEATINTERVAL", HEARTBEAT)
            .env(
                "KESTRA_SERVER_LIVENESS_TIMEOUT",
                format!("{}ms", LIVENESS_TIMEOUT.as_millis()),
            )
            .env("KESTRA_WORKER_LEASE", format!("{}ms", LEASE.as_millis()))
            .env("KESTRA_SERVER_TERMINATIONGRACEPERIOD", "20s")
            .env("KESTRA_WORKER_THREADS", "4")
            .env("RUST_LOG", rust_log)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("a log file"));
        let child = command.spawn().expect("spawn kestra");
        say(format_args!("started {name} (pid {})", child.id()));
        self.procs.push(Proc {
            name,
            child,
            log,
            exited: None,
        });
        self.procs.len() - 1
    }

    /// The repositories of the test's own connection.
    pub fn repositories(&self) -> Repositories {
        self.backend.repositories()
    }

    /// The test's own queue.
    pub fn queue(&self) -> Arc<dyn Queue> {
        self.backend.queue()
    }

    /// Every process's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for p in &self.procs {
            let log = p.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            out.push_str(&format!("\n----- {} (last lines) -----\n", p.name));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// Wait until the deployed flow `id` of `namespace` is in the repository.
    pub async fn wait_flow(&self, namespace: &str, id: &str) {
        let start = Instant::now();
        loop {
            if let Ok(Some(_)) = self
                .repositories()
                .flows
                .find("main", namespace, id, None)
                .await
            {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "flow {namespace}.{id} never deployed{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Create an execution of `namespace.id` (revision 1) through the queue; its id.
    pub async fn execute(&self, namespace: &str, id: &str) -> String {
        let execution = Execution::new(namespace, id, 1);
        self.queue()
            .publish(vec![execution_envelope(&execution).expect("an envelope")])
            .await
            .expect("publish an execution");
        execution.id
    }

    /// The execution `id` from the repository.
    pub async fn execution(&self, id: &str) -> Option<Execution> {
        self.repositories()
            .executions
            .find_by_id("main", id)
            .await
            .unwrap_or_else(|e| panic!("read execution {id}: {e}"))
    }

    /// Wait until every execution of `ids` has ended; their final states.
    pub async fn wait_ended(&self, ids: &[String], timeout: Duration) -> Vec<Execution> {
        let start = Instant::now();
        loop {
            let mut ended = Vec::new();
            let mut pending = Vec::new();
            for id in ids {
                match self.execution(id).await {
                    Some(e) if e.state.is_terminated() => ended.push(e),
                    Some(e) => pending.push(format!("{id}: {:?}", e.state.current())),
                    None => pending.push(format!("{id}: not in the repository")),
                }
            }
            if pending.is_empty() {
                return ended;
            }
            assert!(
                start.elapsed() < timeout,
                "{} of {} executions not ended after {timeout:?}: {pending:?}{}",
                pending.len(),
                ids.len(),
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Wait until execution `id` has ended (see [`Cluster::wait_ended`]) and return it.
    pub async fn wait_one(&self, id: &str, timeout: Duration) -> Execution {
        self.wait_ended(&[id.to_string()], timeout)
            .await
            .swap_remove(0)
    }

    /// Every execution of `namespace` in the repository.
    pub async fn executions_of(&self, namespace: &str) -> Vec<Execution> {
        let query = ExecutionQuery {
            namespace: Some(namespace.to_string()),
            ..ExecutionQuery::default()
        };
        let page = Pageable {
            page: 1,
            size: 1000,
            ..Pageable::default()
        };
        self.repositories()
            .executions
            .search(&query, &page)
            .await
            .unwrap_or_else(|e| panic!("search executions: {e}"))
            .results
    }

    /// The invariants every scenario ends with, on `executions` as stored: each reached exactly one
    /// terminal state (once: one terminal entry in its history); no task run and no task-run
    /// attempt has two terminal entries; every task run of an ended execution has ended. Panics
    /// with the first violation ([`invariant_violations`] lists them all).
    pub fn check_invariants(&self, executions: &[Execution]) {
        if let Some(first) = invariant_violations(executions).into_iter().next() {
            panic!("{first}");
        }
    }

    /// The lines of a mark file (`<marks>/<name>`), none when missing.
    pub fn mark_lines(&self, name: &str) -> Vec<String> {
        read_lines(&self.marks().join(name))
    }

    /// Wait until the mark file `name` has at least `n` lines.
    pub async fn wait_mark(&self, name: &str, n: usize, timeout: Duration) -> Vec<String> {
        let start = Instant::now();
        loop {
            let lines = self.mark_lines(name);
            if lines.len() >= n {
                return lines;
            }
            assert!(
                start.elapsed() < timeout,
                "mark {name} has {} lines, expected {n}, after {timeout:?}{}",
                lines.len(),
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stop every process (SIGKILL), close the connection, drop a server database.
    pub async fn finish(mut self) {
        for p in &mut self.procs {
            if p.alive() {
                p.signal(Signal::Cont);
                p.kill();
            }
        }
        self.backend.close().await;
        if let Some(db) = self.server.take() {
            db.remove().await;
        }
    }
}

/// Every violation of [`Cluster::check_invariants`]'s invariants in `executions`, one message each.
pub fn invariant_violations(executions: &[Execution]) -> Vec<String> {
    let mut out = Vec::new();
    for e in executions {
        let terminal = terminal_entries(e.state.histories());
        if !(e.state.is_terminated() && terminal == 1) {
            out.push(format!(
                "execution {} must reach one terminal state once: {:?}",
                e.id,
                e.state.histories()
            ));
        }
        for run in &e.task_run_list {
            if !run.state.is_terminated() {
                out.push(format!(
                    "task run {} ({}) of ended execution {} is {:?}",
                    run.id,
                    run.task_id,
                    e.id,
                    run.state.current()
                ));
            }
            if terminal_entries(run.state.histories()) > 1 {
                out.push(format!(
                    "task run {} ({}) of {} ended twice: {:?}",
                    run.id,
                    run.task_id,
                    e.id,
                    run.state.histories()
                ));
            }
            for (n, attempt) in run.attempts.iter().enumerate() {
                if terminal_entries(attempt.state.histories()) > 1 {
                    out.push(format!(
                        "attempt {n} of task run {} ({}) of {} has two terminal results: {:?}",
                        run.id,
                        run.task_id,
                        e.id,
                        attempt.state.histories()
                    ));
                }
            }
        }
    }
    out
}

fn terminal_entries(histories: &[kestra::core::model::StateHistory]) -> usize {
    histories.iter().filter(|h| h.state.is_terminated()).count()
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

/// States of `executions` by execution id, for messages.
pub fn states(executions: &[Execution]) -> BTreeMap<String, StateType> {
    executions
        .iter()
        .map(|e| (e.id.clone(), e.state.current()))
        .collect()
}

/// The RUNNING interval of an execution: from its first RUNNING to its end.
pub fn running_interval(
    e: &Execution,
) -> Option<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)> {
    let start = e
        .state
        .histories()
        .iter()
        .find(|h| h.state == StateType::Running)?
        .date;
    Some((start, e.state.end_date()?))
}

/// The most executions of `executions` running at one instant (ends sort before starts at the
/// same instant: an execution admitted as another one ends).
pub fn most_at_once(executions: &[Execution]) -> usize {
    let mut edges: Vec<(chrono::DateTime<chrono::Utc>, i32)> = Vec::new();
    for (start, end) in executions.iter().filter_map(running_interval) {
        edges.push((start, 1));
        edges.push((end, -1));
    }
    edges.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        most = most.max(now);
    }
    usize::try_from(most).unwrap_or(0)
}
