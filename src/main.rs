//! The `kestra` command line: `kestra flow validate FILE...` (more subcommands slot into [`cli`]).

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    cli::run(args)
}
