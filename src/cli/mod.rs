//! The clap command tree of the `kestra` binary and the code behind each subcommand.
//!
//! Layout: `kestra <group> <action>`, e.g. `kestra flow validate`. Later groups (`server
//! standalone|executor|worker|scheduler|webserver`) and actions (`flow test`) are new variants of
//! [`Command`] and [`FlowCommand`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kestra_core::flow::{TaskRegistry, parse_flows};

pub mod commands;

/// Kestra: YAML workflow orchestration.
#[derive(Debug, Parser)]
#[command(name = "kestra", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level command groups.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Work with flow files.
    #[command(subcommand)]
    Flow(FlowCommand),
    /// Run server components.
    #[command(subcommand)]
    Server(ServerCommand),
    /// Maintenance that works even when the engine cannot start.
    #[command(subcommand)]
    Sys(SysCommand),
}

/// Options shared by the server commands.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Configuration file (YAML, Kestra's keys); every key can also be set by an environment
    /// variable (`kestra.queue.type` -> `KESTRA_QUEUE_TYPE`). Without it: SQLite + ./data.
    #[arg(short, long, env = "KESTRA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Deploy every flow file of this directory at start.
    #[arg(long)]
    pub flows: Option<PathBuf>,
}

/// `kestra server ...`
#[derive(Debug, Subcommand)]
pub enum ServerCommand {
    /// Everything in one process: executor, worker, indexer, scheduler (the webserver as it lands).
    Standalone(ServerArgs),
    /// Only the scheduler (several may run at once: claims on due triggers).
    Scheduler(ServerArgs),
    /// Only the executor.
    Executor(ServerArgs),
    /// Only a worker.
    Worker(ServerArgs),
    /// Only the indexer.
    Indexer(ServerArgs),
}

/// `kestra sys ...`
#[derive(Debug, Subcommand)]
pub enum SysCommand {
    /// Offline queue maintenance: delete dead letters and expired broadcast rows, compact. Works
    /// without starting the engine.
    PurgeQueue {
        /// Configuration file.
        #[arg(short, long, env = "KESTRA_CONFIG")]
        config: Option<PathBuf>,
    },
}

/// `kestra flow ...`
#[derive(Debug, Subcommand)]
pub enum FlowCommand {
    /// Check flow files; print compiler-style errors (`file:line:col: error: path: message`) or
    /// `file: OK`; exit with status 1 when any file is invalid.
    Validate {
        /// Flow files (YAML; several flows per file may be separated by `---`).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run one flow in a throwaway local engine (SQLite and storage in a temporary directory) and
    /// print the final execution as JSON; exit 0 only if it ends SUCCESS or WARNING.
    Test {
        /// The flow file.
        file: PathBuf,
        /// Deploy the flows of this directory first (subflows, flow triggers).
        #[arg(long)]
        flows: Option<PathBuf>,
        /// An input, `KEY=VALUE` (repeatable). VALUE is parsed like a form field.
        #[arg(long = "input", value_name = "KEY=VALUE")]
        inputs: Vec<String>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Flow(FlowCommand::Test {
            file,
            flows,
            inputs,
            timeout,
        }) => runtime_then(|| crate::cli::commands::flow_test(file, flows, inputs, timeout)),
        Command::Server(cmd) => runtime_then(|| crate::cli::commands::server(cmd)),
        Command::Sys(SysCommand::PurgeQueue { config }) => {
            runtime_then(|| crate::cli::commands::purge_queue(config))
        }
        Command::Flow(FlowCommand::Validate { files }) => {
            let registry = TaskRegistry::default();
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            let mut all_valid = true;
            for file in &files {
                let report = validate_file(file, &registry);
                all_valid &= report.is_empty();
                let written = if report.is_empty() {
                    writeln!(out, "{}: OK", file.display())
                } else {
                    report.iter().try_for_each(|line| writeln!(out, "{line}"))
                };
                if written.is_err() {
                    return ExitCode::from(2);
                }
            }
            if all_valid {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Run an async command on a multi-threaded runtime; errors are printed and exit with 1.
fn runtime_then<F, Fut>(f: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<ExitCode, String>>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(f()) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Validates one file; returns one line per problem (empty when the file is valid).
pub fn validate_file(file: &Path, registry: &TaskRegistry) -> Vec<String> {
    let name = file.display();
    let source = match kestra::core::limits::read_text_file(
        file,
        kestra::core::limits::MAX_SOURCE_FILE_SIZE,
    ) {
        Ok(source) => source,
        Err(e) => return vec![format!("{name}: error: cannot read the file: {e}")],
    };
    let mut lines = Vec::new();
    for result in parse_flows(&source, registry) {
        if let Err(errors) = result {
            for e in &errors.errors {
                if e.path.is_empty() {
                    lines.push(format!(
                        "{name}:{}:{}: error: {}",
                        e.line, e.column, e.message
                    ));
                } else {
                    lines.push(format!(
                        "{name}:{}:{}: error: {}: {}",
                        e.line, e.column, e.path, e.message
                    ));
                }
            }
        }
    }
    lines
}
