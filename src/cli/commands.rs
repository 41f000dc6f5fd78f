//! The async subcommands: `server ...`, `flow test`, `sys purge-queue`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kestra_core::flow::parse_flow;
use kestra_core::model::{DEFAULT_TENANT, Execution, Level, LogEntry, StateType};
use kestra_core::queue::{Subscription, Topic};
use kestra_core::worker::WorkerConfig;
use tokio::task::JoinHandle;
use tracing::info;

use crate::cli::output::{self, LogFormat};
use crate::cli::{FlowTestArgs, GlobalArgs, OutputFormat, ServerArgs, ServerCommand};
use kestra::config::Config;
use kestra::{Components, Engine};

/// Deploy every `*.yml` / `*.yaml` file of `dir` (sorted by name); errors name the file.
async fn deploy_dir(engine: &Engine, dir: &Path) -> Result<usize, String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read flows directory {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yml" | "yaml")))
        .collect();
    files.sort();
    let mut sources = Vec::with_capacity(files.len());
    // Two files defining one flow would deploy as two revisions of it, the later file silently
    // winning: refuse before deploying anything.
    let mut defined: HashMap<(String, String), &Path> = HashMap::new();
    for file in &files {
        let source =
            kestra::core::limits::read_text_file(file, kestra::core::limits::MAX_SOURCE_FILE_SIZE)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        if let Ok(flow) = parse_flow(&source, engine.registry()) {
            let key = (flow.namespace.clone(), flow.id.clone());
            if let Some(first) = defined.insert(key, file) {
                return Err(format!(
                    "{} and {} both define flow {}.{}",
                    first.display(),
                    file.display(),
                    flow.namespace,
                    flow.id
                ));
            }
        }
        sources.push(source);
    }
    for (file, source) in files.iter().zip(&sources) {
        engine
            .deploy(source)
            .await
            .map_err(|e| format!("{}: {e}", file.display()))?;
    }
    Ok(files.len())
}

/// A log line already printed: (task run, level, message, time in ms). The live stream and the
/// repository's copy of a line compare equal whatever precision the database keeps.
type Printed = (Option<String>, Level, String, i64);

fn fingerprint(entry: &LogEntry) -> Printed {
    (
        entry.task_run_id.clone(),
        entry.level,
        entry.message.clone(),
        entry.timestamp.timestamp_millis(),
    )
}

/// Writes execution log lines to stderr (text or JSON lines), around the progress indicator,
/// each line once.
#[derive(Clone)]
struct LogPrinter {
    format: LogFormat,
    progress: ProgressBar,
    printed: Arc<Mutex<HashSet<Printed>>>,
}

impl LogPrinter {
    fn print(&self, entry: &LogEntry) {
        let Ok(mut printed) = self.printed.lock() else {
            return;
        };
        if !printed.insert(fingerprint(entry)) {
            return;
        }
        let line = match self.format {
            LogFormat::Text => output::log_line(entry),
            LogFormat::Json => match serde_json::to_string(entry) {
                Ok(json) => json,
                Err(e) => format!("cannot encode a log line: {e}"),
            },
        };
        self.progress.suspend(|| anstream::eprintln!("{line}"));
    }
}

/// Print the log lines of `execution_id` as the queue broadcasts them (until aborted).
async fn follow_logs(mut logs: Subscription, execution_id: String, printer: LogPrinter) {
    while let Some(message) = logs.next().await {
        match message.and_then(|m| m.decode::<LogEntry>()) {
            Ok(entry) if entry.execution_id.as_deref() == Some(execution_id.as_str()) => {
                printer.print(&entry)
            }
            Ok(_) => {}
            // Lagging or a malformed line: the repository's copy is printed at the end.
            Err(e) => tracing::debug!(error = %e, "log follow"),
        }
    }
}

/// A spinner on stderr with the execution's progress, drawn only on a terminal.
fn progress_bar(global: &GlobalArgs) -> ProgressBar {
    if !output::stderr_progress() || global.log_format == LogFormat::Json {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg}") {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// Why a run ended without its execution's end.
#[derive(Debug)]
enum RunError {
    /// A problem, said in words.
    Failed(String),
    /// Ctrl-C or SIGTERM.
    Interrupted,
}

impl From<String> for RunError {
    fn from(message: String) -> Self {
        RunError::Failed(message)
    }
}

/// Set to `true` when Ctrl-C or SIGTERM arrives.
type StopFlag = tokio::sync::watch::Receiver<bool>;

/// Listen for Ctrl-C and SIGTERM from now on (instead of dying at once, which would leave the
/// temporary database and storage behind). A second one ends the process at once.
fn stop_flag() -> StopFlag {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        match stop_signal().await {
            Ok(()) => {
                let _ = tx.send(true);
                if stop_signal().await.is_ok() {
                    std::process::exit(130);
                }
            }
            Err(e) => tracing::warn!(error = %e, "Ctrl-C will not stop the run cleanly"),
        }
    });
    rx
}

/// Wait until the execution ends (polling the repository), showing its progress.
async fn wait_for_end(
    engine: &Engine,
    id: &str,
    timeout: Duration,
    progress: &ProgressBar,
    stop: &mut StopFlag,
) -> Result<Execution, RunError> {
    let started = tokio::time::Instant::now();
    // The end comes from the engine (its executor reports each execution that ended: no read
    // per wait). The execution is read only to show progress, when a progress bar is shown, every
    // half second - or ten times as long as reading it took (reading parses the whole execution),
    // so that showing progress costs the engine at most about a tenth of its time.
    let ended = engine.wait_for(id, timeout);
    tokio::pin!(ended);
    let mut pause = Duration::from_millis(500);
    let mut listening = true;
    loop {
        tokio::select! {
            result = &mut ended => {
                return match result {
                    Ok(e) => Ok(e),
                    Err(kestra::core::runtime::EngineError::Timeout { state, .. }) => {
                        Err(RunError::Failed(format!(
                            "execution {id} did not finish within {}s (last state {state}); it was killed",
                            timeout.as_secs()
                        )))
                    }
                    Err(e) => Err(RunError::Failed(e.to_string())),
                };
            }
            changed = stop.changed(), if listening => {
                if changed.is_err() {
                    listening = false;
                }
                if *stop.borrow() {
                    return Err(RunError::Interrupted);
                }
            }
            () = tokio::time::sleep(pause), if !progress.is_hidden() => {
                let read_started = tokio::time::Instant::now();
                if let Some(e) = engine.execution(id).await.map_err(|e| e.to_string())? {
                    let done = e
                        .task_run_list
                        .iter()
                        .filter(|t| t.state.is_terminated())
                        .count();
                    progress.set_message(format!(
                        "{}.{} {}: {done}/{} task runs done, {:.1}s",
                        e.namespace,
                        e.flow_id,
                        e.state.current(),
                        e.task_run_list.len(),
                        started.elapsed().as_secs_f64()
                    ));
                }
                pause = (read_started.elapsed() * 10)
                    .clamp(Duration::from_millis(500), Duration::from_secs(5));
            }
        }
    }
}

/// The worker settings of `flow test`: quick to notice a shutdown and to give up on killed tasks,
/// so that `--timeout` and Ctrl-C end the command within about a second (over the configured
/// settings, which are kept).
fn flow_test_worker(worker: &mut WorkerConfig) {
    worker.poll_wait = Duration::from_millis(200);
    worker.drain_timeout = Duration::from_secs(1);
    worker.cancel_grace = Duration::from_millis(500);
}

/// `kestra flow test FILE [--watch]`.
pub async fn flow_test(args: FlowTestArgs, global: GlobalArgs) -> Result<ExitCode, String> {
    let mut stop = stop_flag();
    if !args.watch {
        return match test_once(&args, &global, &mut stop).await {
            Ok(code) => Ok(code),
            Err(RunError::Failed(message)) => Err(message),
            Err(RunError::Interrupted) => {
                let w = output::WARN;
                anstream::eprintln!("{w}interrupted{w:#}: the execution was killed");
                Ok(ExitCode::from(130))
            }
        };
    }
    let file = &args.file;
    let dim = output::DIM;
    loop {
        let ran = read_watched(file);
        match test_once(&args, &global, &mut stop).await {
            Ok(_) => {}
            Err(RunError::Failed(message)) => {
                let e = output::ERROR;
                anstream::eprintln!("{e}error{e:#}: {message}");
            }
            Err(RunError::Interrupted) => return Ok(ExitCode::SUCCESS),
        }
        anstream::eprintln!(
            "{dim}watching {} for changes (Ctrl-C to stop){dim:#}",
            file.display()
        );
        if !wait_for_change(file, ran.as_deref(), &mut stop).await {
            return Ok(ExitCode::SUCCESS);
        }
        anstream::eprintln!("{dim}{} changed: running it again{dim:#}", file.display());
    }
}

/// The watched file's content (size-capped; `None` if it cannot be read).
fn read_watched(file: &Path) -> Option<Vec<u8>> {
    kestra::core::limits::read_text_file(file, kestra::core::limits::MAX_SOURCE_FILE_SIZE)
        .ok()
        .map(String::into_bytes)
}

/// Wait until the content of `file` differs from `ran` and has stayed the same for a moment (an
/// editor's save may take several writes). False when stopped.
async fn wait_for_change(file: &Path, ran: Option<&[u8]>, stop: &mut StopFlag) -> bool {
    let pause = Duration::from_millis(250);
    let mut seen: Option<Vec<u8>> = None;
    loop {
        if *stop.borrow() {
            return false;
        }
        let now = read_watched(file);
        if now.as_deref() != ran {
            if seen.is_some() && seen == now {
                return true;
            }
            seen = now;
        } else {
            seen = None;
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => {}
        }
    }
}

/// One run of `kestra flow test FILE`: the run, then the summary (or JSON) on stdout. The
/// temporary directory is removed on every way out, the execution killed when it did not end.
async fn test_once(
    args: &FlowTestArgs,
    global: &GlobalArgs,
    stop: &mut StopFlag,
) -> Result<ExitCode, RunError> {
    let file = &args.file;
    let source =
        kestra::core::limits::read_text_file(file, kestra::core::limits::MAX_SOURCE_FILE_SIZE)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let dir =
        tempfile::tempdir().map_err(|e| format!("cannot create a temporary directory: {e}"))?;
    let config = Config::from_pairs([("kestra.data-dir", dir.path().display().to_string())]);
    let engine = kestra::engine(&config)
        .await
        .map_err(|e| e.to_string())?
        // Only the timings change: limits set by environment variables (e.g.
        // KESTRA_LIMITS_EXECUTION_MAX_TASK_RUNS) apply to `flow test` too.
        .map_worker_config(flow_test_worker)
        .map_executor_config(|e| e.poll_wait = Duration::from_millis(200))
        .map_indexer_config(|i| i.poll_wait = Duration::from_millis(200))
        // The engine's executor reports the end: the fallback read of the execution waited for
        // (the whole execution) is rare.
        .wait_poll_interval(Duration::from_secs(1))
        .start();
    let repositories = engine.repositories().clone();
    let progress = progress_bar(global);
    let printer = LogPrinter {
        format: global.log_format,
        progress: progress.clone(),
        printed: Arc::default(),
    };
    let mut execution_id: Option<String> = None;
    let mut follower: Option<JoinHandle<()>> = None;
    let outcome = async {
        if let Some(dir) = &args.flows {
            deploy_dir(&engine, dir).await?;
        }
        let (flow, _) = engine
            .deploy(&source)
            .await
            .map_err(|e| format!("{}: {e}", file.display()))?;
        let raw = crate::cli::inputs::raw_inputs(&flow, &args.inputs, args.inputs_file.as_deref())?;
        // Subscribed before the execution exists: no line of it can be missed.
        let logs = engine
            .queue()
            .subscribe(Topic::Log)
            .await
            .map_err(|e| format!("cannot follow the logs: {e}"))?;
        let execution = engine
            .execute(&flow.namespace, &flow.id, raw)
            .await
            .map_err(|e| e.to_string())?;
        execution_id = Some(execution.id.clone());
        follower = Some(tokio::spawn(follow_logs(
            logs,
            execution.id.clone(),
            printer.clone(),
        )));
        wait_for_end(
            &engine,
            &execution.id,
            Duration::from_secs(args.timeout),
            &progress,
            stop,
        )
        .await
    }
    .await;
    progress.finish_and_clear();
    if outcome.is_err()
        && let Some(id) = &execution_id
        && let Err(e) = engine.kill(id).await
    {
        tracing::warn!(error = %e, "cannot kill the execution");
    }
    // The worker drains and flushes its last log lines, the indexer stores them.
    engine.shutdown().await;
    if let Some(follower) = follower {
        follower.abort();
    }
    // Lines the live stream did not deliver (a lagging subscriber) come from the repository.
    let mut logs = Vec::new();
    if let Some(id) = &execution_id {
        match repositories
            .logs
            .find_by_execution(DEFAULT_TENANT, id, None, None)
            .await
        {
            Ok(stored) => logs = stored,
            Err(e) => tracing::warn!(error = %e, "cannot read the execution's logs"),
        }
    }
    for entry in &logs {
        printer.print(entry);
    }
    let execution = outcome?;
    drop(dir); // removed now, before the output (also on every error above, when dropped)
    match args.output() {
        OutputFormat::Json => {
            let json = serde_json::to_string_pretty(&execution).map_err(|e| e.to_string())?;
            write_stdout(&format!("{json}\n"))?;
        }
        OutputFormat::Text => write_stdout(&output::summary(&execution, &logs))?,
    }
    Ok(match execution.state.current() {
        StateType::Success | StateType::Warning => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    })
}

/// `kestra server standalone|executor|worker|indexer|scheduler`.
pub async fn server(cmd: ServerCommand) -> Result<ExitCode, String> {
    let none = Components::none();
    let (args, components, name): (ServerArgs, Components, &str) = match cmd {
        ServerCommand::Standalone(a) => (a, Components::default(), "standalone"),
        ServerCommand::Executor(a) => (
            a,
            Components {
                executor: true,
                ..none
            },
            "executor",
        ),
        ServerCommand::Worker(a) => (
            a,
            Components {
                worker: true,
                ..none
            },
            "worker",
        ),
        ServerCommand::Indexer(a) => (
            a,
            Components {
                indexer: true,
                ..none
            },
            "indexer",
        ),
        ServerCommand::Webserver(a) => (a, none, "webserver"),
        ServerCommand::Scheduler(a) => (
            a,
            Components {
                scheduler: true,
                ..none
            },
            "scheduler",
        ),
    };
    #[cfg(not(feature = "webserver"))]
    if name == "webserver" {
        return Err("this build has no webserver (cargo feature `webserver`)".into());
    }
    let config = Config::load(args.config.as_deref()).map_err(|e| e.to_string())?;
    let engine = kestra::engine(&config)
        .await
        .map_err(|e| e.to_string())?
        .components(components)
        .start();
    if let Some(dir) = &args.flows {
        let n = deploy_dir(&engine, dir).await?;
        info!(count = n, dir = %dir.display(), "flows deployed");
    }
    let engine = std::sync::Arc::new(engine);
    #[cfg(feature = "webserver")]
    let web = if matches!(name, "standalone" | "webserver") {
        Some(web::start(&config, engine.clone()).await?)
    } else {
        None
    };
    info!(server = name, backend = %config.backend_type(), "kestra server running; Ctrl-C or SIGTERM to stop");
    let mut code = ExitCode::SUCCESS;
    tokio::select! {
        stop = stop_signal() => {
            stop?;
            info!("shutting down: draining running tasks");
        }
        () = engine.stopped_on_its_own() => {
            tracing::error!("a component stopped on its own (see above): shutting the server down, exit code 1");
            code = ExitCode::FAILURE;
        }
    }
    #[cfg(feature = "webserver")]
    if let Some(web) = web {
        web.stop().await;
    }
    match std::sync::Arc::try_unwrap(engine) {
        Ok(engine) => engine.shutdown().await,
        Err(_) => tracing::warn!("the engine is still in use: stopping without draining"),
    }
    Ok(code)
}

/// The webserver of `server standalone` and `server webserver`.
#[cfg(feature = "webserver")]
mod web {
    use std::sync::Arc;

    use kestra::Engine;
    use kestra::config::Config;
    use tokio::task::JoinHandle;
    use tokio_util::sync::CancellationToken;

    /// A running webserver.
    pub(super) struct Running {
        shutdown: CancellationToken,
        handle: JoinHandle<()>,
    }

    /// Bind the configured address (an error if it is taken), serve in the background, and print
    /// the URL and how to log in.
    pub(super) async fn start(config: &Config, engine: Arc<Engine>) -> Result<Running, String> {
        let settings = kestra::webserver_from_config(config, engine).map_err(|e| e.to_string())?;
        let bind = settings.webserver.config().bind;
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .map_err(|e| format!("webserver cannot listen on {bind}: {e}"))?;
        let url = match listener.local_addr() {
            Ok(address) if bind.port() == 0 => {
                settings
                    .url
                    .replacen(":0/", &format!(":{}/", address.port()), 1)
            }
            _ => settings.url.clone(),
        };
        println!("Kestra API: {url}api/v1/main/ (health: {url}health)");
        match &settings.credentials {
            Some(credentials) => println!("Log in with: {credentials}"),
            None => println!("Authentication is DISABLED (kestra.server.basic-auth.enabled=false)"),
        }
        println!("Kestra UI: {url}ui/");
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let handle = tokio::spawn(async move {
            if let Err(e) = settings.webserver.serve(listener, token).await {
                tracing::error!(error = %e, "webserver stopped");
            }
        });
        Ok(Running { shutdown, handle })
    }

    impl Running {
        /// Stop serving (open connections are drained).
        pub(super) async fn stop(self) {
            self.shutdown.cancel();
            if let Err(e) = self.handle.await {
                tracing::error!(error = %e, "webserver ended abnormally");
            }
        }
    }
}

/// Wait for Ctrl-C (SIGINT) or, on Unix, SIGTERM (what service managers and container runtimes
/// send).
async fn stop_signal() -> Result<(), String> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())
            .map_err(|e| format!("cannot listen for SIGTERM: {e}"))?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.map_err(|e| format!("cannot listen for Ctrl-C: {e}")),
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c()
            .await
            .map_err(|e| format!("cannot listen for Ctrl-C: {e}"))
    }
}

/// `kestra sys purge-queue`: the Kafka form when `--kafka-brokers` is given or the configuration's
/// queue type is `kafka`, else the JDBC form.
pub async fn purge(
    config: Option<PathBuf>,
    brokers: Option<String>,
    prefix: Option<String>,
    all: bool,
) -> Result<ExitCode, String> {
    match kafka_target(config.clone(), brokers, prefix)? {
        #[cfg(feature = "kafka")]
        Some(options) => purge_kafka_queue(options, all).await,
        #[cfg(not(feature = "kafka"))]
        Some(never) => match never {},
        None if all => Err(
            "--all applies to a Kafka queue (give --kafka-brokers, or a configuration whose \
             kestra.queue.type is kafka); the JDBC purge always keeps what is not yet consumed"
                .into(),
        ),
        None => purge_queue(config).await,
    }
}

/// `kestra sys purge-queue` on a JDBC queue.
async fn purge_queue(config: Option<PathBuf>) -> Result<ExitCode, String> {
    let config = Config::load(config.as_deref()).map_err(|e| e.to_string())?;
    let url = config.database_url().map_err(|e| e.to_string())?;
    let report = kestra::jdbc::purge_queue(&url)
        .await
        .map_err(|e| e.to_string())?;
    println!("{report:?}");
    Ok(ExitCode::SUCCESS)
}

/// The Kafka deployment an operations command works on: the one named by `--kafka-brokers`
/// (with `--kafka-prefix`, default `kestra_`), else the configuration's `kestra.kafka.*` when its
/// queue type is `kafka`; `None` for a deployment on another queue.
#[cfg(feature = "kafka")]
fn kafka_target(
    config: Option<PathBuf>,
    brokers: Option<String>,
    prefix: Option<String>,
) -> Result<Option<kestra::kafka::KafkaOptions>, String> {
    let options = match brokers.filter(|b| !b.trim().is_empty()) {
        Some(brokers) => kestra::kafka::KafkaOptions::new(brokers.trim()),
        None => {
            let config = Config::load(config.as_deref()).map_err(|e| e.to_string())?;
            if config.queue_type() != "kafka" {
                return Ok(None);
            }
            config.kafka_options().map_err(|e| e.to_string())?
        }
    };
    Ok(Some(match prefix {
        Some(prefix) => options.with_prefix(prefix),
        None => options,
    }))
}

/// Without Kafka in the build, a Kafka deployment named anywhere is an error.
#[cfg(not(feature = "kafka"))]
fn kafka_target(
    config: Option<PathBuf>,
    brokers: Option<String>,
    _prefix: Option<String>,
) -> Result<Option<std::convert::Infallible>, String> {
    let named = brokers.is_some_and(|b| !b.trim().is_empty())
        || Config::load(config.as_deref())
            .map_err(|e| e.to_string())?
            .queue_type()
            == "kafka";
    if named {
        return Err("this kestra was built without the `kafka` feature: no Kafka queue".into());
    }
    Ok(None)
}

/// `kestra sys purge-queue` on a Kafka queue (see the command's help).
#[cfg(feature = "kafka")]
async fn purge_kafka_queue(
    options: kestra::kafka::KafkaOptions,
    all: bool,
) -> Result<ExitCode, String> {
    use kestra::kafka::admin::{PurgeScope, purge};
    let scope = if all {
        PurgeScope::All
    } else {
        PurgeScope::Consumed
    };
    let report = purge(&options, scope)
        .await
        .map_err(|e| format!("cannot purge the Kafka queue: {e}"))?;
    println!("{report}");
    Ok(ExitCode::SUCCESS)
}

/// `kestra sys dead-letters`: list (table or JSON) or count the dead letters of a Kafka queue.
#[cfg(feature = "kafka")]
pub async fn dead_letters(
    config: Option<PathBuf>,
    brokers: Option<String>,
    prefix: Option<String>,
    count: bool,
    limit: usize,
    json: bool,
) -> Result<ExitCode, String> {
    use kestra::kafka::admin::{count_dead_letters, dead_letters};
    let options = kafka_target(config, brokers, prefix)?.ok_or_else(|| {
        "no Kafka queue named: give --kafka-brokers, or a configuration whose \
         kestra.queue.type is kafka (with kestra.kafka.brokers)"
            .to_string()
    })?;
    if count {
        let n = count_dead_letters(&options)
            .await
            .map_err(|e| format!("cannot count the dead letters: {e}"))?;
        println!("{n}");
        return Ok(ExitCode::SUCCESS);
    }
    let letters = dead_letters(&options, limit)
        .await
        .map_err(|e| format!("cannot read the dead letters: {e}"))?;
    if json {
        let text = serde_json::to_string_pretty(&letters)
            .map_err(|e| format!("cannot encode the dead letters: {e}"))?;
        println!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    if letters.is_empty() {
        println!("no dead letter in {}", options.dead_letter_topic());
        return Ok(ExitCode::SUCCESS);
    }
    for d in &letters {
        let or = |v: &Option<String>| v.clone().unwrap_or_else(|| "?".into());
        println!(
            "{}/{}  from {} ({}) by {}: {}\n  key {}: {}",
            d.partition,
            d.offset,
            or(&d.origin_topic),
            or(&d.origin),
            or(&d.group),
            or(&d.reason),
            d.key,
            d.payload
        );
    }
    println!("{} dead letters shown", letters.len());
    Ok(ExitCode::SUCCESS)
}

/// `kestra sys dead-letters` in a build without Kafka.
#[cfg(not(feature = "kafka"))]
pub async fn dead_letters(
    config: Option<PathBuf>,
    brokers: Option<String>,
    prefix: Option<String>,
    _: bool,
    _: usize,
    _: bool,
) -> Result<ExitCode, String> {
    kafka_target(config, brokers, prefix)?;
    Err("no Kafka queue named: give --kafka-brokers, or a configuration whose kestra.queue.type is kafka".into())
}

/// `kestra sys services`: the service instances of the repository (what the indexer saw on the
/// liveness topic), a table sorted by type then start, or JSON.
pub async fn services(config: Option<PathBuf>, json: bool) -> Result<ExitCode, String> {
    let config = Config::load(config.as_deref()).map_err(|e| e.to_string())?;
    let backend = kestra::connect(&config).await.map_err(|e| e.to_string())?;
    let mut instances = backend
        .repositories
        .services
        .find_all()
        .await
        .map_err(|e| format!("cannot read the service instances: {e}"))?;
    instances.sort_by(|a, b| {
        (format!("{:?}", a.type_), a.created_date).cmp(&(format!("{:?}", b.type_), b.created_date))
    });
    if json {
        let text = serde_json::to_string_pretty(&instances)
            .map_err(|e| format!("cannot encode the service instances: {e}"))?;
        println!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    if instances.is_empty() {
        println!("no service instance seen yet (the indexer records them from their heartbeats)");
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<[String; 6]> = instances
        .iter()
        .map(|i| {
            [
                i.id.clone(),
                wire_name(&i.type_),
                wire_name(&i.state),
                i.hostname.clone(),
                i.created_date.format("%Y-%m-%d %H:%M:%S").to_string(),
                i.updated_date.format("%Y-%m-%d %H:%M:%S").to_string(),
            ]
        })
        .collect();
    let header = ["ID", "TYPE", "STATE", "HOST", "STARTED", "LAST HEARTBEAT"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 6]| {
        cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    println!("{}", line(header));
    for row in &rows {
        println!("{}", line(row.each_ref().map(String::as_str)));
    }
    Ok(ExitCode::SUCCESS)
}

/// `kestra trigger unlock`: claim the trigger's state (waiting a few seconds for a scheduler that
/// holds it in a unit of work), clear its running execution and evaluation, save.
pub async fn trigger_unlock(
    config: Option<PathBuf>,
    tenant: &str,
    namespace: &str,
    flow_id: &str,
    trigger_id: &str,
) -> Result<ExitCode, String> {
    let config = Config::load(config.as_deref()).map_err(|e| e.to_string())?;
    let backend = kestra::connect(&config).await.map_err(|e| e.to_string())?;
    let uid = kestra_core::model::trigger_uid(tenant, namespace, flow_id, trigger_id);
    let started = std::time::Instant::now();
    loop {
        let mut unit = backend
            .queue
            .begin_triggers()
            .await
            .map_err(|e| format!("cannot open the trigger states: {e}"))?;
        let Some(mut state) = unit
            .claim(&uid)
            .await
            .map_err(|e| format!("cannot claim trigger {uid}: {e}"))?
        else {
            drop(unit);
            let exists = backend
                .repositories
                .triggers
                .find(&uid)
                .await
                .map_err(|e| format!("cannot read trigger {uid}: {e}"))?
                .is_some();
            if !exists {
                return Err(format!(
                    "no trigger '{trigger_id}' of flow {namespace}.{flow_id} (tenant {tenant}) has a state: is the flow deployed and its scheduler started?"
                ));
            }
            if started.elapsed() > std::time::Duration::from_secs(10) {
                return Err(format!(
                    "trigger {uid} is held by a scheduler's unit of work for more than 10 s; try again"
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            continue;
        };
        let was = (
            state.execution_id.take(),
            state.evaluate_running_date.take(),
            state.worker_id.take(),
        );
        if was == (None, None, None) {
            println!("trigger {namespace}.{flow_id}.{trigger_id} is not locked");
            return Ok(ExitCode::SUCCESS);
        }
        state.updated_date = chrono::Utc::now();
        unit.save(&state)
            .await
            .map_err(|e| format!("cannot save trigger {uid}: {e}"))?;
        unit.commit()
            .await
            .map_err(|e| format!("cannot save trigger {uid}: {e}"))?;
        let mut released = Vec::new();
        if let Some(id) = was.0 {
            released.push(format!("execution {id}"));
        }
        if was.1.is_some() || was.2.is_some() {
            released.push(format!(
                "evaluation by worker {}",
                was.2.as_deref().unwrap_or("?")
            ));
        }
        tracing::info!(trigger = %uid, released = ?released, "trigger unlocked");
        println!(
            "trigger {namespace}.{flow_id}.{trigger_id} unlocked (released: {})",
            released.join(", ")
        );
        return Ok(ExitCode::SUCCESS);
    }
}

/// `kestra sys resubmit`: publish an [`ExecutionCommand::Resubmit`] for each task run of the
/// execution whose current attempt is unfinished and waits for or runs on a worker. The executor
/// applies them (and ignores one that went stale meanwhile).
pub async fn resubmit(
    config: Option<PathBuf>,
    tenant: &str,
    execution_id: &str,
) -> Result<ExitCode, String> {
    use kestra_core::messages::ExecutionCommand;
    let config = Config::load(config.as_deref()).map_err(|e| e.to_string())?;
    let max_resubmissions = kestra::resubmit_config(&config)
        .map_err(|e| e.to_string())?
        .max_resubmissions;
    let backend = kestra::connect(&config).await.map_err(|e| e.to_string())?;
    let execution = backend
        .repositories
        .executions
        .find_by_id(tenant, execution_id)
        .await
        .map_err(|e| format!("cannot read execution {execution_id}: {e}"))?
        .ok_or_else(|| format!("no execution '{execution_id}' (tenant {tenant})"))?;
    let state = execution.current();
    if execution.state.is_terminated() || state == StateType::Killing {
        return Err(format!(
            "execution {execution_id} is {state}: nothing to resubmit"
        ));
    }
    let mut commands = Vec::new();
    let mut lines = Vec::new();
    for run in &execution.task_run_list {
        let waiting = matches!(
            run.current(),
            StateType::Created
                | StateType::Retrying
                | StateType::Restarted
                | StateType::Resubmitted
                | StateType::Running
        );
        let Some(last) = run.attempts.last() else {
            continue;
        };
        if !waiting || last.state.is_terminated() {
            continue;
        }
        let attempt = run.attempts.len() as u32;
        let envelope = ExecutionCommand::Resubmit {
            execution_id: execution.id.clone(),
            task_run_id: run.id.clone(),
            attempt: Some(attempt),
            worker_id: last.worker_id.clone(),
            max_resubmissions,
        }
        .envelope()
        .map_err(|e| format!("cannot encode the resubmission of task run {}: {e}", run.id))?;
        commands.push(envelope);
        lines.push(format!(
            "  {} (task {}, attempt {attempt}, {}, worker {})",
            run.id,
            run.task_id,
            run.current(),
            last.worker_id.as_deref().unwrap_or("none")
        ));
    }
    if commands.is_empty() {
        println!(
            "execution {execution_id} ({state}) has no task attempt waiting for or running on a worker: nothing to resubmit"
        );
        return Ok(ExitCode::SUCCESS);
    }
    backend.queue.publish(commands).await.map_err(|e| {
        format!("cannot publish the resubmissions of execution {execution_id}: {e}")
    })?;
    tracing::info!(execution_id, count = lines.len(), "resubmissions published");
    println!(
        "resubmitted {} task attempt(s) of execution {execution_id} (applied by the executor when it runs):\n{}",
        lines.len(),
        lines.join("\n")
    );
    Ok(ExitCode::SUCCESS)
}

/// An enum's name as Kestra's JSON spells it (`EXECUTOR`, `NOT_RUNNING`).
fn wire_name<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        _ => String::new(),
    }
}

/// `kestra config show`: one line per key, `key = value  (source)`, aligned; then the unknown keys
/// of the file.
pub fn config_show(file: Option<&Path>) -> Result<(), String> {
    let config = Config::load(file).map_err(|e| e.to_string())?;
    let settings = config.effective();
    let rows: Vec<(String, String)> = settings
        .iter()
        .map(|s| {
            (
                format!("{} = {}", s.key, s.value.as_deref().unwrap_or("(not set)")),
                s.source.to_string(),
            )
        })
        .collect();
    let width = rows
        .iter()
        .map(|(l, _)| l.chars().count())
        .max()
        .unwrap_or(0);
    let dim = output::DIM;
    let mut out = String::new();
    for (line, source) in rows {
        out.push_str(&format!("{line:<width$}  {dim}({source}){dim:#}\n"));
    }
    let unknown = config.unknown_keys();
    if !unknown.is_empty() {
        let w = output::WARN;
        out.push_str(&format!("\n{w}Unknown keys{w:#} (ignored)\n"));
        for u in unknown {
            match u.suggestion {
                Some(s) => out.push_str(&format!("  {}: did you mean '{s}'?\n", u.key)),
                None => out.push_str(&format!("  {}\n", u.key)),
            }
        }
    }
    anstream::print!("{out}");
    Ok(())
}

/// Write `text` to stdout (colours stripped when it is not a terminal). A reader that closed the
/// pipe early (`kestra flow test --json F | head`) is not an error: the rest is dropped, no panic.
fn write_stdout(text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut out = anstream::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(format!("cannot write to stdout: {e}")),
    }
}
