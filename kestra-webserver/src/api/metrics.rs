//! `GET /metrics`: Prometheus text exposition (version 0.0.4) of what this webserver observes.
//!
//! The webserver follows the execution topic (the queue's broadcast, as the follow routes do) and
//! counts, from the moment it starts:
//!
//! - `kestra_executions_started_total{namespace, flow_id}`: executions seen RUNNING for the first time;
//! - `kestra_executions_ended_total{namespace, flow_id, state}`: executions seen in a terminal state
//!   for the first time (SUCCESS, WARNING, FAILED, KILLED, CANCELLED, ...);
//! - `kestra_taskruns_duration_seconds{namespace, flow_id, state}` (histogram): the duration of each
//!   task run that ended, from its first to its last state;
//! - `kestra_queue_execution_lag_seconds` (histogram): from an execution's last state change to its
//!   message reaching this webserver - the queue's delivery lag as the webserver can tell it;
//! - `kestra_metrics_subscription_lagged_total`: messages the broadcast dropped because this
//!   webserver read too slowly (counts above are then low by that much).
//!
//! Counters are per process, as Prometheus expects (a restart starts them again at zero).
//!
//! Why a hand-written encoder rather than `metrics` + `metrics-exporter-prometheus`: the exporter
//! wants a process-wide recorder, while a webserver here is a library value (several may run in one
//! process, tests start many); a few counters and histograms in a mutex are simpler and exact.
//!
//! Authentication: behind basic authentication like every route, unless the webserver is built with
//! [`WebserverBuilder::metrics_public`](crate::WebserverBuilder::metrics_public) (configuration key
//! `kestra.server.metrics.public`), when `GET /metrics` (exactly) is public.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, OnceLock};

use axum::extract::{RawQuery, State};
use axum::http::header;
use axum::response::IntoResponse;
use chrono::Utc;
use futures::StreamExt;
use kestra_core::model::{Execution, StateType};
use kestra_core::queue::{QueueError, Topic};

use super::Params;
use crate::{ApiError, AppState};

/// Upper bounds of the histogram buckets, in seconds.
const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// How many execution and task-run ids are remembered to count each start and end once.
const REMEMBERED: usize = 100_000;

#[derive(Debug, Clone, Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS.len()];
        }
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                self.counts[i] += 1;
            }
        }
        self.sum += seconds;
        self.count += 1;
    }

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, bound) in BUCKETS.iter().enumerate() {
            let n = self.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {n}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", self.count);
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// A bounded set: the oldest ids are forgotten past [`REMEMBERED`].
#[derive(Debug, Default)]
struct Seen {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl Seen {
    /// True when `id` is new.
    fn insert(&mut self, id: String) -> bool {
        if self.set.contains(&id) {
            return false;
        }
        if self.order.len() >= REMEMBERED
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        self.set.insert(id.clone());
        self.order.push_back(id);
        true
    }
}

#[derive(Debug, Default)]
struct Counts {
    started: BTreeMap<(String, String), u64>,
    ended: BTreeMap<(String, String, String), u64>,
    task_runs: BTreeMap<(String, String, String), Histogram>,
    lag: Histogram,
    lagged: u64,
    seen_started: Seen,
    seen_ended: Seen,
    seen_task_runs: Seen,
}

/// What the webserver counts for `/metrics` (one per webserver).
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    counts: Mutex<Counts>,
    collector: OnceLock<()>,
}

/// A Prometheus label value, escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// Count what one execution message tells.
    fn observe(&self, execution: &Execution) {
        let now = Utc::now();
        let Ok(mut c) = self.counts.lock() else {
            return;
        };
        let key = (execution.namespace.clone(), execution.flow_id.clone());
        if let Some(last) = execution.state.histories().last() {
            let lag = (now - last.date).num_milliseconds().max(0) as f64 / 1000.0;
            c.lag.observe(lag);
        }
        let was_running = execution
            .state
            .histories()
            .iter()
            .any(|h| h.state == StateType::Running);
        if was_running && c.seen_started.insert(execution.id.clone()) {
            *c.started.entry(key.clone()).or_default() += 1;
        }
        if execution.state.is_terminated() && c.seen_ended.insert(execution.id.clone()) {
            let state = execution.state.current().to_string();
            *c.ended
                .entry((key.0.clone(), key.1.clone(), state))
                .or_default() += 1;
        }
        for run in &execution.task_run_list {
            if run.state.is_terminated()
                && c.seen_task_runs
                    .insert(format!("{}/{}/{}", execution.id, run.id, run.attempts.len()))
            {
                let seconds = run.state.duration(now).num_milliseconds().max(0) as f64 / 1000.0;
                let state = run.state.current().to_string();
                c.task_runs
                    .entry((key.0.clone(), key.1.clone(), state))
                    .or_default()
                    .observe(seconds);
            }
        }
    }

    /// Start following the execution topic (once; needs a Tokio runtime). The task holds the
    /// queue and these counters only, not the engine, and ends with the webserver.
    pub(crate) fn start(state: &AppState) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        if state.metrics.collector.set(()).is_err() {
            return;
        }
        let metrics = state.metrics.clone();
        let queue = state.engine.queue().clone();
        let shutdown = state.shutdown.clone();
        tokio::spawn(async move {
            let mut subscription = match queue.subscribe(Topic::Execution).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "/metrics cannot follow the execution topic: execution counters stay at zero");
                    return;
                }
            };
            drop(queue);
            loop {
                tokio::select! {
                    message = subscription.next() => match message {
                        Some(Ok(envelope)) => {
                            if let Ok(execution) = envelope.decode::<Execution>() {
                                metrics.observe(&execution);
                            }
                        }
                        Some(Err(QueueError::Lagged { .. })) => {
                            if let Ok(mut c) = metrics.counts.lock() {
                                c.lagged += 1;
                            }
                        }
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "/metrics lost its execution subscription");
                            return;
                        }
                        None => return,
                    },
                    () = shutdown.cancelled() => return,
                }
            }
        });
    }

    /// The text exposition.
    fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP kestra_build_info The version of this server.\n# TYPE kestra_build_info gauge\nkestra_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        let Ok(c) = self.counts.lock() else {
            return out;
        };
        out.push_str("# HELP kestra_executions_started_total Executions seen RUNNING for the first time.\n# TYPE kestra_executions_started_total counter\n");
        for ((ns, flow), n) in &c.started {
            let _ = writeln!(
                out,
                "kestra_executions_started_total{{namespace=\"{}\",flow_id=\"{}\"}} {n}",
                escape(ns),
                escape(flow)
            );
        }
        out.push_str("# HELP kestra_executions_ended_total Executions seen ended, by terminal state.\n# TYPE kestra_executions_ended_total counter\n");
        for ((ns, flow, state), n) in &c.ended {
            let _ = writeln!(
                out,
                "kestra_executions_ended_total{{namespace=\"{}\",flow_id=\"{}\",state=\"{}\"}} {n}",
                escape(ns),
                escape(flow),
                escape(state)
            );
        }
        out.push_str("# HELP kestra_taskruns_duration_seconds Duration of ended task runs.\n# TYPE kestra_taskruns_duration_seconds histogram\n");
        for ((ns, flow, state), h) in &c.task_runs {
            let labels = format!(
                "namespace=\"{}\",flow_id=\"{}\",state=\"{}\"",
                escape(ns),
                escape(flow),
                escape(state)
            );
            h.write(&mut out, "kestra_taskruns_duration_seconds", &labels);
        }
        out.push_str("# HELP kestra_queue_execution_lag_seconds From an execution's last state change to its message reaching this webserver.\n# TYPE kestra_queue_execution_lag_seconds histogram\n");
        c.lag
            .write(&mut out, "kestra_queue_execution_lag_seconds", "");
        let _ = writeln!(
            out,
            "# HELP kestra_metrics_subscription_lagged_total Times the execution broadcast dropped messages this webserver read too slowly.\n# TYPE kestra_metrics_subscription_lagged_total counter\nkestra_metrics_subscription_lagged_total {}",
            c.lagged
        );
        out
    }
}

/// `GET /metrics`.
pub(crate) async fn metrics(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
) -> Result<impl IntoResponse, ApiError> {
    Params::parse(query.as_deref(), &[])?;
    Metrics::start(&state);
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative() {
        let mut h = Histogram::default();
        h.observe(0.2);
        h.observe(3.0);
        let mut out = String::new();
        h.write(&mut out, "x", "a=\"b\"");
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.25\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"5\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"+Inf\"} 2\n"), "{out}");
        assert!(out.contains("x_count{a=\"b\"} 2\n"), "{out}");
        assert_eq!(escape("a\"b\\c"), "a\\\"b\\\\c");
    }
}
