//! The async subcommands: `server ...`, `flow test`, `sys purge-queue`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use indexmap::IndexMap;
use kestra_core::inputs::RawInput;
use kestra_core::model::StateType;
use tracing::info;

use crate::cli::{ServerArgs, ServerCommand};
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
    for file in &files {
        let source =
            kestra::core::limits::read_text_file(file, kestra::core::limits::MAX_SOURCE_FILE_SIZE)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        engine
            .deploy(&source)
            .await
            .map_err(|e| format!("{}: {e}", file.display()))?;
    }
    Ok(files.len())
}

/// `kestra flow test FILE`.
pub async fn flow_test(
    file: PathBuf,
    flows: Option<PathBuf>,
    inputs: Vec<String>,
    timeout: u64,
) -> Result<ExitCode, String> {
    let source =
        kestra::core::limits::read_text_file(&file, kestra::core::limits::MAX_SOURCE_FILE_SIZE)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let mut raw = IndexMap::new();
    for pair in inputs {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("--input '{pair}': expected KEY=VALUE"))?;
        raw.insert(k.to_string(), RawInput::Text(v.to_string()));
    }
    let dir =
        tempfile::tempdir().map_err(|e| format!("cannot create a temporary directory: {e}"))?;
    let config = Config::from_pairs([("kestra.data-dir", dir.path().display().to_string())]);
    let engine = kestra::engine(&config)
        .await
        .map_err(|e| e.to_string())?
        .start();
    let outcome = async {
        if let Some(dir) = &flows {
            deploy_dir(&engine, dir).await?;
        }
        let (flow, _) = engine
            .deploy(&source)
            .await
            .map_err(|e| format!("{}: {e}", file.display()))?;
        let execution = engine
            .execute(&flow.namespace, &flow.id, raw)
            .await
            .map_err(|e| e.to_string())?;
        engine
            .wait_for(&execution.id, Duration::from_secs(timeout))
            .await
            .map_err(|e| e.to_string())
    }
    .await;
    engine.shutdown().await;
    let execution = outcome?;
    let json = serde_json::to_string_pretty(&execution).map_err(|e| e.to_string())?;
    println!("{json}");
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
        ServerCommand::Scheduler(a) => (
            a,
            Components {
                scheduler: true,
                ..none
            },
            "scheduler",
        ),
    };
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
    info!(server = name, backend = %config.backend_type(), "kestra server running; Ctrl-C or SIGTERM to stop");
    stop_signal().await?;
    info!("shutting down: draining running tasks");
    engine.shutdown().await;
    Ok(ExitCode::SUCCESS)
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

/// `kestra sys purge-queue`.
pub async fn purge_queue(config: Option<PathBuf>) -> Result<ExitCode, String> {
    let config = Config::load(config.as_deref()).map_err(|e| e.to_string())?;
    let url = config.database_url().map_err(|e| e.to_string())?;
    let report = kestra::jdbc::purge_queue(&url)
        .await
        .map_err(|e| e.to_string())?;
    println!("{report:?}");
    Ok(ExitCode::SUCCESS)
}
