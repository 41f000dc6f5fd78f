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
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
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

/// Validates one file; returns one line per problem (empty when the file is valid).
pub fn validate_file(file: &Path, registry: &TaskRegistry) -> Vec<String> {
    let name = file.display();
    let source = match std::fs::read_to_string(file) {
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
