//! What the CLI writes for people: the colour decision, the styles, execution log lines and the
//! end-of-run summary of `kestra flow test`.
//!
//! Text is written with [`anstyle`] styles through [`anstream`] streams, which pass the escape
//! codes to a terminal and strip them everywhere else (files, pipes) and when `NO_COLOR` is set or
//! `--no-color` / `--color never` is given ([`ColorWhen::apply`]); `CLICOLOR_FORCE=1` forces them,
//! as in cargo and ripgrep.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::IsTerminal;

use anstyle::{AnsiColor, Style};
use kestra_core::model::{Execution, Level, LogEntry, StateType, TaskRun};

/// ERROR lines and failures.
pub const ERROR: Style = AnsiColor::Red.on_default().bold();
/// WARN lines.
pub const WARN: Style = AnsiColor::Yellow.on_default();
/// Success.
pub const GOOD: Style = AnsiColor::Green.on_default();
/// Timestamps, DEBUG/TRACE lines and other secondary text.
pub const DIM: Style = Style::new().dimmed();
/// Headings and task ids.
pub const BOLD: Style = Style::new().bold();

/// When to colour (`--color`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ColorWhen {
    /// On a terminal, unless `NO_COLOR` is set.
    #[default]
    Auto,
    /// Always (also in files and pipes).
    Always,
    /// Never.
    Never,
}

impl ColorWhen {
    /// Make this the process-wide choice of every [`anstream`] stream.
    pub fn apply(self) {
        let choice = match self {
            ColorWhen::Auto => anstream::ColorChoice::Auto,
            ColorWhen::Always => anstream::ColorChoice::Always,
            ColorWhen::Never => anstream::ColorChoice::Never,
        };
        choice.write_global();
    }
}

/// Whether escape codes go to stderr (after [`ColorWhen::apply`]): the answer for the tracing
/// logs, which do not write through [`anstream`].
pub fn stderr_colored() -> bool {
    anstream::AutoStream::choice(&std::io::stderr()) != anstream::ColorChoice::Never
}

/// Whether a progress indicator may be drawn on stderr: only on a terminal that is not `dumb`.
pub fn stderr_progress() -> bool {
    std::io::stderr().is_terminal() && std::env::var("TERM").map_or(true, |t| t != "dumb")
}

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One line of text per event.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The style of a log level.
fn level_style(level: Level) -> Style {
    match level {
        Level::Error => ERROR,
        Level::Warn => WARN,
        Level::Info => GOOD,
        Level::Debug | Level::Trace => DIM,
    }
}

/// One execution log line: local time, task id (`execution` for the executor's own lines), level,
/// message. ERROR lines are red as a whole, so that they stand out.
pub fn log_line(entry: &LogEntry) -> String {
    let time = entry
        .timestamp
        .with_timezone(&chrono::Local)
        .format("%H:%M:%S%.3f");
    let task = entry.task_id.as_deref().unwrap_or("execution");
    let level = level_style(entry.level);
    let message = match entry.level {
        Level::Error => ERROR,
        Level::Debug | Level::Trace => DIM,
        _ => Style::new(),
    };
    format!(
        "{DIM}{time}{DIM:#} {BOLD}{task}{BOLD:#} {level}{:<5}{level:#} {message}{}{message:#}",
        entry.level.as_str(),
        entry.message
    )
}

/// The style of a state.
fn state_style(state: StateType) -> Style {
    match state {
        StateType::Success => GOOD,
        StateType::Warning | StateType::Paused | StateType::Retrying | StateType::Retried => WARN,
        StateType::Failed | StateType::Killed | StateType::Cancelled => ERROR,
        _ => Style::new(),
    }
}

/// A duration the way people read it: `12ms`, `1.24s`, `2m03s`, `1h02m`.
pub fn human_duration(d: chrono::Duration) -> String {
    let ms = d.num_milliseconds().max(0);
    if ms < 1_000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.2}s", ms as f64 / 1_000.0)
    } else if ms < 3_600_000 {
        format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1_000)
    } else {
        format!("{}h{:02}m", ms / 3_600_000, (ms % 3_600_000) / 60_000)
    }
}

/// A JSON value on one line, cut at `max` characters.
fn compact(value: &serde_json::Value, max: usize) -> String {
    let text = value.to_string();
    if text.chars().count() <= max {
        text
    } else {
        let cut: String = text.chars().take(max.saturating_sub(3)).collect();
        format!("{cut}...")
    }
}

/// The task run that explains a failure: the first failed task run none of whose children failed
/// (the leaf, not the flowable around it).
pub fn failing_task_run(execution: &Execution) -> Option<&TaskRun> {
    let failed = |t: &TaskRun| t.state.current() == StateType::Failed;
    execution.task_run_list.iter().find(|t| {
        failed(t)
            && !execution
                .task_run_list
                .iter()
                .any(|c| c.parent_task_run_id.as_deref() == Some(t.id.as_str()) && failed(c))
    })
}

/// The end-of-run summary: the execution's state and duration, the task-run tree with states,
/// attempts, durations and outputs, the flow outputs and, for a failure, the failing task with its
/// error message (its last ERROR log line, else the execution's last one).
pub fn summary(execution: &Execution, logs: &[LogEntry]) -> String {
    let mut out = String::new();
    let now = chrono::Utc::now();
    let state = execution.state.current();
    let s = state_style(state);
    let _ = writeln!(
        out,
        "{BOLD}Execution{BOLD:#} {} of {}.{} (revision {}): {s}{state}{s:#} in {}",
        execution.id,
        execution.namespace,
        execution.flow_id,
        execution.flow_revision,
        human_duration(execution.state.duration(now)),
    );

    // Task-run tree: children follow their parent, indented; list order otherwise.
    let ids: std::collections::HashSet<&str> = execution
        .task_run_list
        .iter()
        .map(|t| t.id.as_str())
        .collect();
    let mut children: HashMap<Option<&str>, Vec<&TaskRun>> = HashMap::new();
    for t in &execution.task_run_list {
        let parent = t
            .parent_task_run_id
            .as_deref()
            .filter(|p| ids.contains(p) && *p != t.id);
        children.entry(parent).or_default().push(t);
    }
    let mut rows: Vec<(usize, &TaskRun)> = Vec::new();
    let mut stack: Vec<(usize, &TaskRun)> = children
        .get(&None)
        .map(|v| v.iter().rev().map(|t| (0, *t)).collect())
        .unwrap_or_default();
    while let Some((depth, t)) = stack.pop() {
        if rows.len() > execution.task_run_list.len() {
            break; // a cycle in corrupt data: stop rather than loop
        }
        rows.push((depth, t));
        if let Some(kids) = children.get(&Some(t.id.as_str())) {
            stack.extend(kids.iter().rev().map(|k| (depth + 1, *k)));
        }
    }
    if !rows.is_empty() {
        let label = |depth: usize, t: &TaskRun| {
            let mut l = format!("{}{}", "  ".repeat(depth), t.task_id);
            if let Some(v) = &t.value {
                let _ = write!(l, " [{v}]");
            }
            l
        };
        let width = rows
            .iter()
            .map(|(d, t)| label(*d, t).chars().count())
            .max()
            .unwrap_or(0);
        let _ = writeln!(out, "\n{BOLD}Task runs{BOLD:#}");
        for (depth, t) in &rows {
            let state = t.state.current();
            let s = state_style(state);
            let attempts = match t.attempts.len() {
                1 => "1 attempt".to_string(),
                n => format!("{n} attempts"),
            };
            let _ = write!(
                out,
                "  {:<width$}  {s}{:<9}{s:#} {:<10} {DIM}{:>8}{DIM:#}",
                label(*depth, t),
                state.as_str(),
                attempts,
                human_duration(t.state.duration(now)),
            );
            if let Some(outputs) = t.outputs.as_ref().filter(|o| !o.is_empty()) {
                let shown: Vec<String> = outputs
                    .iter()
                    .map(|(k, v)| format!("{k}={}", compact(v, 60)))
                    .collect();
                let _ = write!(out, "  {DIM}{}{DIM:#}", shown.join(" "));
            }
            out.push('\n');
        }
    }
    if !execution.outputs.is_empty() {
        let _ = writeln!(out, "\n{BOLD}Outputs{BOLD:#}");
        for (k, v) in &execution.outputs {
            let _ = writeln!(out, "  {k} = {}", compact(v, 200));
        }
    }
    if state.is_failed() || state == StateType::Killed {
        let last_error = |task_run: Option<&str>| {
            logs.iter()
                .rev()
                .find(|l| {
                    l.level == Level::Error
                        && (task_run.is_none() || l.task_run_id.as_deref() == task_run)
                })
                .map(|l| l.message.as_str())
        };
        let failing = failing_task_run(execution);
        let message = failing
            .and_then(|t| last_error(Some(t.id.as_str())))
            .or_else(|| last_error(None));
        let what = match failing {
            Some(t) => format!("task '{}' failed", t.task_id),
            None => format!("the execution ended {state}"),
        };
        let _ = writeln!(
            out,
            "\n{ERROR}error{ERROR:#}: {what}: {}",
            message.unwrap_or("no error message was logged")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn strip(s: &str) -> String {
        anstream::adapter::strip_str(s).to_string()
    }

    #[test]
    fn durations_read_like_people_write_them() {
        let ms = chrono::Duration::milliseconds;
        assert_eq!(human_duration(ms(12)), "12ms");
        assert_eq!(human_duration(ms(1_240)), "1.24s");
        assert_eq!(human_duration(ms(123_000)), "2m03s");
        assert_eq!(human_duration(ms(3_720_000)), "1h02m");
    }

    #[test]
    fn error_lines_are_red_and_carry_time_task_level_message() {
        let entry = LogEntry {
            id: "line-1".into(),
            tenant_id: "main".into(),
            namespace: "n".into(),
            flow_id: "f".into(),
            task_id: Some("boom".into()),
            execution_id: Some("e".into()),
            task_run_id: Some("t".into()),
            attempt_number: Some(0),
            trigger_id: None,
            timestamp: chrono::Utc::now(),
            level: Level::Error,
            thread: None,
            message: "exit code 3".into(),
        };
        let line = log_line(&entry);
        assert!(
            line.contains(&format!("{ERROR}exit code 3{ERROR:#}")),
            "{line:?}"
        );
        let plain = strip(&line);
        let parts: Vec<&str> = plain.splitn(4, ' ').collect();
        assert_eq!(parts[0].len(), "12:00:00.000".len(), "{plain}");
        assert_eq!(&parts[1..], ["boom", "ERROR", "exit code 3"]);
    }
}
