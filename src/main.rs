//! The `kestra` command line: `kestra flow validate|test`, `kestra server standalone|executor|worker|indexer`,
//! `kestra sys purge-queue`. Logs go to stderr (`RUST_LOG` sets the level, default `info`; `warn` for
//! `flow` commands so that their stdout stays clean), coloured only on a terminal (`--color`,
//! `--no-color`, `NO_COLOR`), as text or as JSON lines (`--log-format json`).

mod cli;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use cli::output::{self, LogFormat};

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    args.global.color().apply();
    let default = match args.command {
        cli::Command::Flow(_) => "warn",
        _ => "info",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.global.log_format {
        LogFormat::Text => logs.with_ansi(output::stderr_colored()).init(),
        LogFormat::Json => logs.json().with_ansi(false).init(),
    }
    cli::run(args)
}
