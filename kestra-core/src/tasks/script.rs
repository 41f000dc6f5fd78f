//! Script tasks (`io.kestra.plugin.scripts.<shell|python|node>.<Commands|Script>`) on the Process
//! task runner: a real process in the attempt's working directory.
//!
//! - `Commands`: `beforeCommands` and `commands` joined with newlines (preceded by `set -e` when
//!   `failFast`, the default, and the interpreter is a shell) run by `interpreter`
//!   (`/bin/sh -c` by default).
//! - `Script`: the rendered script is written to a file in the working directory and run with the
//!   language's program (`sh`, `python3` or else `python`, `node`) after `beforeCommands`.
//! - `env` is rendered and added to the worker's environment (plus `WORKING_DIR`); `inputFiles` are
//!   written first; `outputFiles` globs are uploaded after the run (output `outputFiles`).
//! - stdout lines are INFO logs and stderr lines ERROR logs, except lines of Kestra's protocol
//!   `::{"outputs":{...}}::` (merged into output `vars`), `::{"metrics":[...]}::` (metrics) and
//!   `::{"logs":[{"level","message"}]}::`.
//! - Output `exitCode`; a non-zero exit ends the attempt FAILED (with its outputs); stderr output
//!   alone changes nothing unless `warningOnStdErr` (then WARNING).
//! - Kill and timeout stop the whole process group (SIGTERM, then SIGKILL after 500 ms).
//! - `taskRunner` types other than `io.kestra.plugin.core.runner.Process` (and `containerImage`) are
//!   not available: the task runs as a process and says so in a WARN log.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use indexmap::IndexMap;
use serde_json::{Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio_util::sync::CancellationToken;

use crate::flow::tasks::{ScriptCommands, ScriptInline};
use crate::limits::{MAX_LOG_LINE, cut_with_marker};
use crate::model::{Level, MetricType, StateType};
use crate::worker::context::RunContext;
use crate::worker::files::{collect_output_files, write_input_files};
use crate::worker::runner::{RunnableTask, TaskError, TaskOutput};

/// The process task runner's type name.
pub const PROCESS_RUNNER: &str = "io.kestra.plugin.core.runner.Process";

/// A script language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    /// `io.kestra.plugin.scripts.shell.*`.
    Shell,
    /// `io.kestra.plugin.scripts.python.*`.
    Python,
    /// `io.kestra.plugin.scripts.node.*`.
    Node,
}

impl Language {
    /// Every language.
    pub const ALL: [Language; 3] = [Language::Shell, Language::Python, Language::Node];

    /// `shell`, `python`, `node`.
    pub fn name(self) -> &'static str {
        match self {
            Language::Shell => "shell",
            Language::Python => "python",
            Language::Node => "node",
        }
    }

    /// `io.kestra.plugin.scripts.<lang>.Commands`.
    pub fn commands_type(self) -> String {
        format!("io.kestra.plugin.scripts.{}.Commands", self.name())
    }

    /// `io.kestra.plugin.scripts.<lang>.Script`.
    pub fn script_type(self) -> String {
        format!("io.kestra.plugin.scripts.{}.Script", self.name())
    }

    fn extension(self) -> &'static str {
        match self {
            Language::Shell => "sh",
            Language::Python => "py",
            Language::Node => "js",
        }
    }

    /// The program that runs a script file of this language.
    pub fn program(self) -> String {
        match self {
            Language::Shell => "sh".into(),
            Language::Python => {
                if find_on_path("python3").is_some() {
                    "python3".into()
                } else {
                    "python".into()
                }
            }
            Language::Node => "node".into(),
        }
    }
}

/// The first executable file named `program` on `PATH`.
pub fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// A `Commands` task of a language.
#[derive(Debug, Clone)]
pub struct CommandsTask {
    /// Properties.
    pub props: ScriptCommands,
    /// Language.
    pub language: Language,
}

/// A `Script` task of a language.
#[derive(Debug, Clone)]
pub struct ScriptTask {
    /// Properties.
    pub props: ScriptInline,
    /// Language.
    pub language: Language,
}

/// What a script run needs once its properties are rendered.
struct ProcessSpec {
    interpreter: Vec<String>,
    script: String,
    env: Vec<(String, String)>,
    output_files: Vec<String>,
    warning_on_stderr: bool,
}

fn check_runner(ctx: &RunContext, task_runner: &Option<Value>, runner: &Option<String>) {
    let kind = task_runner
        .as_ref()
        .and_then(|r| r.get("type"))
        .and_then(Value::as_str);
    if let Some(kind) = kind
        && kind != PROCESS_RUNNER
        && !kind.ends_with(".Process")
    {
        ctx.logger().warn(format!(
            "task runner '{kind}' is not available on this worker; running as a local process"
        ));
    }
    if let Some(r) = runner
        && !r.eq_ignore_ascii_case("PROCESS")
    {
        ctx.logger().warn(format!(
            "runner '{r}' is not available on this worker; running as a local process"
        ));
    }
}

fn env_strings(env: Option<IndexMap<String, Value>>) -> Vec<(String, String)> {
    env.into_iter()
        .flatten()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => s,
                Value::Null => String::new(),
                other => other.to_string(),
            };
            (k, v)
        })
        .collect()
}

fn is_shell(interpreter: &[String]) -> bool {
    interpreter.first().is_some_and(|p| {
        let name = Path::new(p)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        matches!(
            name.as_str(),
            "sh" | "bash" | "dash" | "zsh" | "ash" | "ksh"
        )
    })
}

fn default_interpreter() -> Vec<String> {
    vec!["/bin/sh".to_string(), "-c".to_string()]
}

#[async_trait]
impl RunnableTask for CommandsTask {
    async fn run(&self, ctx: &mut RunContext) -> Result<TaskOutput, TaskError> {
        let p = &self.props;
        check_runner(ctx, &p.task_runner, &p.runner);
        let dir = ctx.working_dir()?;
        if let Some(files) = &p.input_files {
            write_input_files(ctx, &dir, files).await?;
        }
        let interpreter = ctx
            .render_opt_property("interpreter", &p.interpreter)?
            .filter(|i| !i.is_empty())
            .unwrap_or_else(default_interpreter);
        let fail_fast = ctx
            .render_opt_property("failFast", &p.fail_fast)?
            .unwrap_or(true);
        let mut lines = Vec::new();
        if fail_fast && is_shell(&interpreter) {
            lines.push("set -e".to_string());
        }
        lines.extend(
            ctx.render_opt_property("beforeCommands", &p.before_commands)?
                .unwrap_or_default(),
        );
        lines.extend(ctx.render_property("commands", &p.commands)?);
        let spec = ProcessSpec {
            interpreter,
            script: lines.join("\n"),
            env: env_strings(ctx.render_opt_property("env", &p.env)?),
            output_files: ctx
                .render_opt_property("outputFiles", &p.output_files)?
                .unwrap_or_default(),
            warning_on_stderr: ctx
                .render_opt_property("warningOnStdErr", &p.warning_on_std_err)?
                .unwrap_or(false),
        };
        run_process(ctx, &dir, spec, p.output_files.is_some()).await
    }
}

#[async_trait]
impl RunnableTask for ScriptTask {
    async fn run(&self, ctx: &mut RunContext) -> Result<TaskOutput, TaskError> {
        let p = &self.props;
        check_runner(ctx, &p.task_runner, &p.runner);
        let dir = ctx.working_dir()?;
        if let Some(files) = &p.input_files {
            write_input_files(ctx, &dir, files).await?;
        }
        let source = ctx.render(&p.script)?;
        let file_name = format!(
            ".kestra-script-{}.{}",
            ctx.identity().task_run_id,
            self.language.extension()
        );
        let script_path = dir.join(&file_name);
        tokio::fs::write(&script_path, source.as_bytes())
            .await
            .map_err(|e| TaskError::io(format!("cannot write '{}'", script_path.display()), e))?;
        let interpreter = ctx
            .render_opt_property("interpreter", &p.interpreter)?
            .filter(|i| !i.is_empty())
            .unwrap_or_else(default_interpreter);
        let mut lines = Vec::new();
        let before = ctx
            .render_opt_property("beforeCommands", &p.before_commands)?
            .unwrap_or_default();
        if !before.is_empty() && is_shell(&interpreter) {
            lines.push("set -e".to_string());
        }
        lines.extend(before);
        lines.push(format!("{} {file_name}", self.language.program()));
        let spec = ProcessSpec {
            interpreter,
            script: lines.join("\n"),
            env: env_strings(ctx.render_opt_property("env", &p.env)?),
            output_files: ctx
                .render_opt_property("outputFiles", &p.output_files)?
                .unwrap_or_default(),
            warning_on_stderr: ctx
                .render_opt_property("warningOnStdErr", &p.warning_on_std_err)?
                .unwrap_or(false),
        };
        let result = run_process(ctx, &dir, spec, p.output_files.is_some()).await;
        let _ = tokio::fs::remove_file(&script_path).await;
        result
    }
}

/// A parsed `::{...}::` line.
fn protocol_message(line: &str) -> Option<Map<String, Value>> {
    let t = line.trim();
    let inner = t.strip_prefix("::")?.strip_suffix("::")?;
    if !inner.starts_with('{') {
        return None;
    }
    match serde_json::from_str::<Value>(inner) {
        Ok(Value::Object(m))
            if m.contains_key("outputs") || m.contains_key("metrics") || m.contains_key("logs") =>
        {
            Some(m)
        }
        _ => None,
    }
}

fn apply_protocol(ctx: &RunContext, message: Map<String, Value>, vars: &Mutex<Map<String, Value>>) {
    if let Some(Value::Object(outputs)) = message.get("outputs")
        && let Ok(mut vars) = vars.lock()
    {
        for (k, v) in outputs {
            vars.insert(k.clone(), v.clone());
        }
    }
    if let Some(Value::Array(metrics)) = message.get("metrics") {
        for metric in metrics {
            let name = metric.get("name").and_then(Value::as_str);
            let value = metric.get("value").and_then(Value::as_f64);
            let kind = match metric.get("type").and_then(Value::as_str) {
                Some(t) if t.eq_ignore_ascii_case("timer") => MetricType::Timer,
                _ => MetricType::Counter,
            };
            let tags: BTreeMap<String, String> = metric
                .get("tags")
                .and_then(Value::as_object)
                .map(|t| {
                    t.iter()
                        .map(|(k, v)| {
                            let v = v
                                .as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| v.to_string());
                            (k.clone(), v)
                        })
                        .collect()
                })
                .unwrap_or_default();
            match (name, value) {
                (Some(name), Some(value)) => ctx.metric(name, kind, value, tags),
                _ => ctx.logger().warn(format!(
                    "ignored a malformed metric from the script: {metric}"
                )),
            }
        }
    }
    if let Some(Value::Array(logs)) = message.get("logs") {
        for log in logs {
            let level = log
                .get("level")
                .and_then(Value::as_str)
                .and_then(|l| l.parse::<Level>().ok())
                .unwrap_or(Level::Info);
            let text = log
                .get("message")
                .map(|m| {
                    m.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| m.to_string())
                })
                .unwrap_or_default();
            ctx.logger().log(level, text);
        }
    }
}

/// Reads one line into `buf`, keeping at most `cap` bytes of it (the rest of the line is read and
/// dropped, so a script printing without newlines cannot fill the memory). Returns the line's full
/// length without its newline, or `None` at the end of the stream.
async fn next_line<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    buf: &mut Vec<u8>,
    cap: usize,
) -> std::io::Result<Option<usize>> {
    buf.clear();
    let mut total = 0usize;
    let mut any = false;
    loop {
        let chunk = reader.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(any.then_some(total));
        }
        any = true;
        let (take, done) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (i, true),
            None => (chunk.len(), false),
        };
        let room = cap.saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..take.min(room)]);
        total = total.saturating_add(take);
        reader.consume(take + usize::from(done));
        if done {
            return Ok(Some(total));
        }
    }
}

/// Reads lines until EOF or `stop`; returns how many plain lines were read. A line longer than
/// [`MAX_LOG_LINE`] is logged truncated with a marker; a `::{...}::` message that long is not
/// applied and recorded in `oversize` (the task fails with it).
async fn read_lines<R: AsyncRead + Unpin>(
    ctx: &RunContext,
    reader: R,
    stderr: bool,
    vars: &Mutex<Map<String, Value>>,
    oversize: &Mutex<Option<String>>,
    stop: &CancellationToken,
) -> usize {
    let mut reader = BufReader::new(reader);
    let mut bytes = Vec::new();
    let mut plain = 0;
    loop {
        let next = tokio::select! {
            biased;
            s = next_line(&mut reader, &mut bytes, MAX_LOG_LINE) => s,
            _ = stop.cancelled() => break,
        };
        let total = match next {
            Ok(Some(total)) => total,
            Ok(None) => break,
            Err(e) => {
                ctx.logger()
                    .warn(format!("cannot read the script's output: {e}"));
                break;
            }
        };
        let line = String::from_utf8_lossy(&bytes);
        if total > MAX_LOG_LINE {
            if line.trim_start().starts_with("::{") {
                if let Ok(mut slot) = oversize.lock() {
                    slot.get_or_insert(format!(
                        "a `::{{...}}::` message of {total} bytes is over the limit of \
                         {MAX_LOG_LINE} bytes"
                    ));
                }
                continue;
            }
            plain += 1;
            let message = cut_with_marker(line.into_owned(), total);
            if stderr {
                ctx.logger().error(message);
            } else {
                ctx.logger().info(message);
            }
            continue;
        }
        let line = line.strip_suffix('\r').unwrap_or(&line);
        if let Some(message) = protocol_message(line) {
            apply_protocol(ctx, message, vars);
            continue;
        }
        plain += 1;
        if stderr {
            ctx.logger().error(line.to_string());
        } else {
            ctx.logger().info(line.to_string());
        }
    }
    plain
}

fn signal_group(pid: u32, signal: nix::sys::signal::Signal) {
    if let Ok(raw) = i32::try_from(pid) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(raw), signal);
    }
}

/// The script's process is killed when the worker process dies, even by SIGKILL (Linux:
/// `PR_SET_PDEATHSIG`), so a killed worker leaves no script running on that machine while its job
/// runs again elsewhere. Processes the script itself started in the background do not inherit this;
/// they are in the script's process group, which the worker kills on every exit it lives through
/// (end, timeout, kill, shutdown).
///
/// The signal is tied to the thread that spawns the child: the worker spawns from its runtime's
/// threads, which live as long as the worker.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn die_with_the_worker(command: &mut tokio::process::Command) {
    // SAFETY: the closure runs in the forked child before exec and only makes the prctl(2)
    // system call, which is async-signal-safe; it allocates nothing and takes no lock.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_the_worker(_command: &mut tokio::process::Command) {}

async fn run_process(
    ctx: &RunContext,
    dir: &Path,
    spec: ProcessSpec,
    declared_output_files: bool,
) -> Result<TaskOutput, TaskError> {
    let Some((program, args)) = spec.interpreter.split_first() else {
        return Err(TaskError::invalid("interpreter", "must not be empty"));
    };
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .arg(&spec.script)
        .current_dir(dir)
        .env("WORKING_DIR", dir)
        .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    die_with_the_worker(&mut command);
    let mut child = command
        .spawn()
        .map_err(|e| TaskError::io(format!("cannot start `{program}`"), e))?;
    let pid = child.id();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let vars = Mutex::new(Map::new());
    let oversize = Mutex::new(None);
    let stop_readers = CancellationToken::new();
    let cancel = ctx.cancellation().clone();

    let waiter = async {
        let outcome = tokio::select! {
            status = child.wait() => status.map_err(|e| TaskError::io("cannot wait for the script", e)),
            _ = cancel.cancelled() => {
                if let Some(pid) = pid {
                    signal_group(pid, nix::sys::signal::Signal::SIGTERM);
                    if tokio::time::timeout(Duration::from_millis(500), child.wait()).await.is_err() {
                        signal_group(pid, nix::sys::signal::Signal::SIGKILL);
                    }
                    // whatever is left of the group
                    signal_group(pid, nix::sys::signal::Signal::SIGKILL);
                }
                let _ = child.kill().await;
                stop_readers.cancel();
                return Err(TaskError::Cancelled);
            }
        };
        // background processes the script left behind do not outlive it (nor hold its pipes)
        if let Some(pid) = pid {
            signal_group(pid, nix::sys::signal::Signal::SIGKILL);
        }
        // let the readers drain what is buffered; background processes holding the pipes open
        // do not keep the task running
        let stop = stop_readers.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            stop.cancel();
        });
        outcome
    };
    let out_reader = async {
        match stdout {
            Some(s) => read_lines(ctx, s, false, &vars, &oversize, &stop_readers).await,
            None => 0,
        }
    };
    let err_reader = async {
        match stderr {
            Some(s) => read_lines(ctx, s, true, &vars, &oversize, &stop_readers).await,
            None => 0,
        }
    };
    let (status, _, stderr_lines) = tokio::join!(waiter, out_reader, err_reader);
    let status = status?;
    if let Some(message) = oversize.into_inner().ok().flatten() {
        return Err(TaskError::Failed(message));
    }
    let exit_code = status.code().unwrap_or_else(|| {
        use std::os::unix::process::ExitStatusExt;
        status.signal().map(|s| 128 + s).unwrap_or(-1)
    });

    let mut outputs = Map::new();
    outputs.insert("exitCode".into(), Value::from(exit_code));
    outputs.insert(
        "vars".into(),
        Value::Object(vars.into_inner().unwrap_or_default()),
    );
    if declared_output_files {
        let files = collect_output_files(ctx, dir, &spec.output_files).await?;
        outputs.insert("outputFiles".into(), Value::Object(files));
    }
    let mut output = TaskOutput::with_outputs(outputs);
    if exit_code != 0 {
        ctx.logger()
            .error(format!("Command failed with exit code {exit_code}"));
        output = output.in_state(StateType::Failed);
    } else if spec.warning_on_stderr && stderr_lines > 0 {
        output = output.in_state(StateType::Warning);
    }
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_lines_are_recognised() {
        let m = protocol_message(r#"::{"outputs":{"a":1}}::"#);
        assert_eq!(
            m.and_then(|m| m.get("outputs").cloned()),
            Some(serde_json::json!({"a":1}))
        );
        assert!(protocol_message("  ::{\"metrics\":[]}::  ").is_some());
        assert!(protocol_message("::{not json}::").is_none());
        assert!(protocol_message("::{\"other\":1}::").is_none());
        assert!(protocol_message("plain line").is_none());
    }
}
