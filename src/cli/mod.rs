//! The clap command tree of the `kestra` binary and the code behind each subcommand.
//!
//! Layout: `kestra <group> <action>`, e.g. `kestra flow validate`. Later groups (`server
//! standalone|executor|worker|scheduler|webserver`) and actions (`flow test`) are new variants of
//! [`Command`] and [`FlowCommand`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kestra_core::flow::{TaskRegistry, parse_flow, parse_flows};

pub mod commands;
pub mod inputs;
pub mod output;

use output::{ColorWhen, LogFormat};

/// Kestra: YAML workflow orchestration.
#[derive(Debug, Parser)]
#[command(name = "kestra", version, about, propagate_version = true)]
pub struct Cli {
    /// Options of every command.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes (before or after the subcommand).
#[derive(Debug, Clone, clap::Args)]
pub struct GlobalArgs {
    /// When to colour the output: auto (on a terminal, unless NO_COLOR is set), always, never.
    #[arg(long, global = true, value_enum, default_value_t = ColorWhen::Auto, value_name = "WHEN")]
    pub color: ColorWhen,
    /// No colour (same as `--color never`).
    #[arg(long, global = true)]
    pub no_color: bool,
    /// Format of the logs on stderr: text, or json (one object per line, for log collectors).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t = LogFormat::Text,
        env = "KESTRA_LOG_FORMAT",
        value_name = "FORMAT"
    )]
    pub log_format: LogFormat,
}

impl GlobalArgs {
    /// The colour choice, `--no-color` winning over `--color`.
    pub fn color(&self) -> ColorWhen {
        if self.no_color {
            ColorWhen::Never
        } else {
            self.color
        }
    }
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
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Work with the triggers' stored states (works without a running engine).
    #[command(subcommand)]
    Trigger(TriggerCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(after_help = "Examples:
  kestra completion bash > ~/.local/share/bash-completion/completions/kestra
  kestra completion zsh > \"${fpath[1]}/_kestra\"
  kestra completion fish > ~/.config/fish/completions/kestra.fish")]
    Completion {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// `kestra config ...`
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration: every key, its value (secrets masked) and where it
    /// comes from (environment, file, default); unknown keys of the file are reported.
    #[command(after_help = "Examples:
  kestra config show
  kestra config show -c application.yml
  KESTRA_REPOSITORY_TYPE=postgres kestra config show")]
    Show {
        /// Configuration file.
        #[arg(short, long, env = "KESTRA_CONFIG")]
        config: Option<PathBuf>,
    },
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
    /// Everything in one process: executor, worker, indexer, scheduler and the webserver (REST API on
    /// 127.0.0.1:8080 by default; the URL and credentials are printed at start).
    #[command(after_help = "Examples:
  kestra server standalone --flows ./flows
  kestra server standalone -c application.yml
  KESTRA_DATA_DIR=/var/lib/kestra kestra server standalone --log-format json")]
    Standalone(ServerArgs),
    /// Only the webserver (REST API): it reads the repositories and publishes to the queue.
    #[command(after_help = "Examples:
  kestra server webserver -c application.yml
  KESTRA_SERVER_PORT=9090 kestra server webserver -c application.yml")]
    Webserver(ServerArgs),
    /// Only the scheduler (several may run at once: claims on due triggers).
    #[command(after_help = "Examples:
  kestra server scheduler -c application.yml")]
    Scheduler(ServerArgs),
    /// Only the executor.
    #[command(after_help = "Examples:
  kestra server executor -c application.yml")]
    Executor(ServerArgs),
    /// Only a worker.
    #[command(after_help = "Examples:
  kestra server worker -c application.yml
  KESTRA_WORKER_THREADS=16 kestra server worker -c application.yml")]
    Worker(ServerArgs),
    /// Only the indexer.
    #[command(after_help = "Examples:
  kestra server indexer -c application.yml")]
    Indexer(ServerArgs),
}

/// `kestra sys ...`
#[derive(Debug, Subcommand)]
pub enum SysCommand {
    /// Offline queue maintenance. JDBC: delete dead letters and expired broadcast rows, compact.
    /// Kafka (`--kafka-brokers`): delete the records of the message topics that every consumer
    /// group of the deployment has committed past (flows, executor and trigger state and dead
    /// letters are kept), or with `--all` every record of the message topics and the dead letters
    /// (stop every instance first); prints what it deleted per topic. Works without starting the
    /// engine.
    #[command(after_help = "Examples:
  kestra sys purge-queue -c application.yml
  kestra sys purge-queue --kafka-brokers 127.0.0.1:9092
  kestra sys purge-queue --kafka-brokers 127.0.0.1:9092 --kafka-prefix kestra_ --all
  kestra sys purge-queue -c kafka.yml   # kestra.queue.type: kafka, kestra.kafka.brokers: ...")]
    PurgeQueue {
        /// Configuration file (its `kestra.queue.type: kafka` with `kestra.kafka.*` selects the
        /// Kafka form without `--kafka-brokers`).
        #[arg(short, long, env = "KESTRA_CONFIG")]
        config: Option<PathBuf>,
        /// Kafka form: the bootstrap servers of the deployment's Kafka queue (default: the
        /// configuration's `kestra.kafka.brokers` when its queue type is `kafka`).
        #[arg(long, env = "KESTRA_KAFKA_BROKERS")]
        kafka_brokers: Option<String>,
        /// Kafka form: the topic prefix of the deployment (default: the configuration's
        /// `kestra.kafka.topic-prefix`, else `kestra_`).
        #[arg(long)]
        kafka_prefix: Option<String>,
        /// Kafka form: delete every record of the message topics and the dead letters, consumed
        /// or not.
        #[arg(long)]
        all: bool,
    },
    /// The dead letters of a Kafka queue (messages a consumer could not decode): origin topic,
    /// consumer group, original partition/offset, reason, key and payload; or only their count.
    #[command(after_help = "Examples:
  kestra sys dead-letters --kafka-brokers 127.0.0.1:9092
  kestra sys dead-letters --kafka-brokers 127.0.0.1:9092 --count
  kestra sys dead-letters --kafka-brokers 127.0.0.1:9092 --json --limit 10
  kestra sys dead-letters -c kafka.yml --count")]
    DeadLetters {
        /// Configuration file: its `kestra.kafka.*` keys name the queue when `--kafka-brokers`
        /// is not given.
        #[arg(short, long, env = "KESTRA_CONFIG")]
        config: Option<PathBuf>,
        /// The bootstrap servers of the deployment's Kafka queue (default: the configuration's
        /// `kestra.kafka.brokers`).
        #[arg(long, env = "KESTRA_KAFKA_BROKERS")]
        kafka_brokers: Option<String>,
        /// The topic prefix of the deployment (default: the configuration's
        /// `kestra.kafka.topic-prefix`, else `kestra_`).
        #[arg(long)]
        kafka_prefix: Option<String>,
        /// Print only how many there are.
        #[arg(long)]
        count: bool,
        /// List at most this many (oldest first per partition).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print them as a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Resubmit the running task attempts of an execution (their worker died or hangs): each
    /// current attempt waiting for or held by a worker ends RESUBMITTED and a new attempt is sent
    /// to the workers, applied by the executor when it runs (a task run resubmitted
    /// `kestra.server.worker-task-max-resubmissions` times fails instead). Only publishes
    /// commands on the queue: works with no engine running.
    #[command(after_help = "Examples:
  kestra sys resubmit 4wjtkzwVGBM9yKnjm3yv8r
  kestra sys resubmit 4wjtkzwVGBM9yKnjm3yv8r -c application.yml --tenant main")]
    Resubmit {
        /// The execution's id.
        execution_id: String,
        /// The tenant.
        #[arg(long, default_value = "main")]
        tenant: String,
        /// Configuration file.
        #[arg(short, long, env = "KESTRA_CONFIG")]
        config: Option<PathBuf>,
    },
    /// The service instances the indexer has seen (executors, workers, schedulers, indexers): id,
    /// type, state, host, start and last heartbeat. The executor decides liveness; this shows it.
    #[command(after_help = "Examples:
  kestra sys services
  kestra sys services -c application.yml --json")]
    Services {
        /// Configuration file.
        #[arg(short, long, env = "KESTRA_CONFIG")]
        config: Option<PathBuf>,
        /// Print the instances as a JSON array (Kestra's ServiceInstance shape).
        #[arg(long)]
        json: bool,
    },
}

/// `kestra trigger ...`
#[derive(Debug, Subcommand)]
pub enum TriggerCommand {
    /// Release a trigger's lock: the running execution it waits for (a trigger that does not allow
    /// concurrent executions) and the evaluation a worker holds (a polling trigger). For a trigger
    /// stuck after its execution or worker was lost; the scheduler fires it again at its next
    /// slot. Works on the database directly, with or without a running scheduler.
    #[command(after_help = "Examples:
  kestra trigger unlock company.team my-flow every-minute
  kestra trigger unlock company.team my-flow every-minute -c application.yml --tenant main")]
    Unlock {
        /// The flow's namespace.
        namespace: String,
        /// The flow's id.
        flow_id: String,
        /// The trigger's id in the flow.
        trigger_id: String,
        /// The tenant.
        #[arg(long, default_value = "main")]
        tenant: String,
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
    #[command(after_help = "Examples:
  kestra flow validate flows/hello.yaml
  kestra flow validate flows/*.yaml")]
    Validate {
        /// Flow files (YAML; several flows per file may be separated by `---`).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run one flow in a throwaway local engine (SQLite and storage in a temporary directory):
    /// stream its logs to stderr as they arrive, then print a summary (task runs, outputs, the
    /// error of a failure) or, with `--json`, the final execution as JSON; exit 0 only if it ends
    /// SUCCESS or WARNING.
    #[command(after_help = "Examples:
  kestra flow test flows/hello.yaml --input name=you
  kestra flow test etl.yaml --input data=@local.csv --inputs inputs.yaml
  kestra flow test parent.yaml --flows ./flows --json | jq .state.current
  kestra flow test --watch flows/hello.yaml")]
    Test(FlowTestArgs),
    /// Print the JSON Schema of the flow language (every core task and trigger type) to stdout:
    /// point an editor's YAML extension at it to validate and complete flow files.
    #[command(after_help = "Examples:
  kestra flow schema --pretty > flow.schema.json
  # then, first line of a flow file: # yaml-language-server: $schema=./flow.schema.json")]
    Schema {
        /// Indent the JSON.
        #[arg(long)]
        pretty: bool,
    },
}

/// How `flow test` prints the final execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    /// A summary for people.
    #[default]
    Text,
    /// The execution as JSON, in Kestra's shape (for scripts).
    Json,
}

/// `kestra flow test` options.
#[derive(Debug, Clone, clap::Args)]
pub struct FlowTestArgs {
    /// The flow file.
    pub file: PathBuf,
    /// Deploy the flows of this directory first (subflows, flow triggers).
    #[arg(long)]
    pub flows: Option<PathBuf>,
    /// An input, `KEY=VALUE` (repeatable). VALUE is parsed like a form field; for a FILE input,
    /// `KEY=@path` uploads a local file.
    #[arg(long = "input", value_name = "KEY=VALUE")]
    pub inputs: Vec<String>,
    /// Inputs from a YAML file (`name: value` per input; `@path` for a FILE input, relative to
    /// the file); `--input` wins over it.
    #[arg(long = "inputs", value_name = "FILE")]
    pub inputs_file: Option<PathBuf>,
    /// Give up after this many seconds (the execution is killed).
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// What to print on stdout at the end: text (a summary) or json (the execution).
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Text, value_name = "FORMAT")]
    pub output: OutputFormat,
    /// Same as `-o json`.
    #[arg(long)]
    pub json: bool,
    /// Run the flow again each time the file changes, until Ctrl-C.
    #[arg(long)]
    pub watch: bool,
}

impl FlowTestArgs {
    /// The output format, `--json` winning.
    pub fn output(&self) -> OutputFormat {
        if self.json {
            OutputFormat::Json
        } else {
            self.output
        }
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    let global = cli.global;
    match cli.command {
        Command::Flow(FlowCommand::Test(args)) => {
            runtime_then(|| crate::cli::commands::flow_test(args, global))
        }
        Command::Server(cmd) => runtime_then(|| crate::cli::commands::server(cmd)),
        Command::Sys(SysCommand::PurgeQueue {
            config,
            kafka_brokers,
            kafka_prefix,
            all,
        }) => {
            runtime_then(|| crate::cli::commands::purge(config, kafka_brokers, kafka_prefix, all))
        }
        Command::Sys(SysCommand::DeadLetters {
            config,
            kafka_brokers,
            kafka_prefix,
            count,
            limit,
            json,
        }) => runtime_then(|| {
            crate::cli::commands::dead_letters(
                config,
                kafka_brokers,
                kafka_prefix,
                count,
                limit,
                json,
            )
        }),
        Command::Sys(SysCommand::Resubmit {
            execution_id,
            tenant,
            config,
        }) => runtime_then(|| crate::cli::commands::resubmit(config, &tenant, &execution_id)),
        Command::Sys(SysCommand::Services { config, json }) => {
            runtime_then(|| crate::cli::commands::services(config, json))
        }
        Command::Trigger(TriggerCommand::Unlock {
            namespace,
            flow_id,
            trigger_id,
            tenant,
            config,
        }) => runtime_then(|| {
            crate::cli::commands::trigger_unlock(config, &tenant, &namespace, &flow_id, &trigger_id)
        }),
        Command::Completion { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command, "kestra", &mut script);
            match std::io::stdout().write_all(&script) {
                Ok(()) => ExitCode::SUCCESS,
                // `kestra completion bash | head`: the reader is gone, nothing to say.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                Err(e) => {
                    let r = output::ERROR;
                    anstream::eprintln!("{r}error{r:#}: cannot write the script: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Config(ConfigCommand::Show { config }) => {
            match crate::cli::commands::config_show(config.as_deref()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(message) => {
                    let e = output::ERROR;
                    anstream::eprintln!("{e}error{e:#}: {message}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Flow(FlowCommand::Schema { pretty }) => {
            let schema = TaskRegistry::default().json_schema();
            let text = if pretty {
                serde_json::to_string_pretty(&schema)
            } else {
                serde_json::to_string(&schema)
            };
            match text.map(|t| writeln!(std::io::stdout().lock(), "{t}")) {
                Ok(Ok(())) => ExitCode::SUCCESS,
                Ok(Err(_)) => ExitCode::from(2),
                Err(e) => {
                    eprintln!("error: cannot serialise the flow schema: {e}");
                    ExitCode::FAILURE
                }
            }
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
            let e = output::ERROR;
            anstream::eprintln!("{e}error{e:#}: {message}");
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
    let results = parse_flows(&source, registry);
    // No document at all (an empty file, comments only, a lone `---`) is no flow: the error
    // `flow test` gives for it.
    let results = if results.is_empty() {
        vec![parse_flow(&source, registry)]
    } else {
        results
    };
    for result in results {
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Every command that does something (a leaf of the tree) shows examples in its `--help`.
    #[test]
    fn every_subcommand_help_has_examples() {
        fn leaves(cmd: &clap::Command, path: String, out: &mut Vec<(String, clap::Command)>) {
            let subs: Vec<&clap::Command> = cmd
                .get_subcommands()
                .filter(|c| c.get_name() != "help")
                .collect();
            if subs.is_empty() {
                out.push((path.clone(), cmd.clone()));
            }
            for sub in subs {
                leaves(sub, format!("{path} {}", sub.get_name()), out);
            }
        }
        let mut all = Vec::new();
        leaves(&Cli::command(), "kestra".into(), &mut all);
        assert!(all.len() >= 10, "{}", all.len());
        for (path, mut cmd) in all {
            let help = cmd.render_help().to_string();
            let examples = help
                .split_once("Examples:\n")
                .map(|(_, e)| e)
                .unwrap_or_else(|| panic!("`{path} --help` shows no example:\n{help}"));
            assert!(
                examples.trim_start().starts_with(&path),
                "{path}: {examples}"
            );
        }
    }
}
