//! The `kestra` command line: `kestra flow validate|test`, `kestra server standalone|executor|worker|indexer`,
//! `kestra sys purge-queue`. Logs go to stderr (`RUST_LOG` sets the level, default `info`; `warn` for
//! `flow` commands so that their stdout stays clean).

mod cli;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    let default = match args.command {
        cli::Command::Flow(_) => "warn",
        _ => "info",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    cli::run(args)
}
