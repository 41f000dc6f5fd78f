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
        let source = std::fs::read_to_string(file)
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
    let source = std::fs::read_to_string(&file)
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
    stop_signal().await?;
    info!("shutting down: draining running tasks");
    #[cfg(feature = "webserver")]
    if let Some(web) = web {
        web.stop().await;
    }
    match std::sync::Arc::try_unwrap(engine) {
        Ok(engine) => engine.shutdown().await,
        Err(_) => tracing::warn!("the engine is still in use: stopping without draining"),
    }
    Ok(ExitCode::SUCCESS)
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
