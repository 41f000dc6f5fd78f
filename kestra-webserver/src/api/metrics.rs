//! `GET /metrics`: Prometheus text exposition (version 0.0.4).
//!
//! - `kestra_executions{state}` (gauge): executions in the repository by current state, read at
//!   each scrape (one count per state) - the terminal states give the executions ended by state;
//! - `kestra_executions_created_total{namespace, flow_id}`: executions created (by the API, the
//!   schedulers, subflows...) since this webserver started, from the execution topic's broadcast;
//! - `kestra_taskruns_attempt_duration_seconds{namespace, flow_id, state}` (histogram): the duration of
//!   each task-run attempt a worker ended (SUCCESS, WARNING, FAILED, KILLED), from the worker
//!   results' broadcast (flowable tasks, decided by the executor, take no worker time and are not
//!   in it); `namespace` and `flow_id` are empty for an execution created before this webserver
//!   started;
//! - `kestra_queue_execution_lag_seconds` (histogram): from an execution's creation to its message
//!   reaching this webserver - the queue's delivery lag as the webserver can tell it;
//! - `kestra_indexer_lag_seconds{instance, topic}` (gauge): per running indexer and topic, how long
//!   the oldest message it has not stored yet has waited (0 once caught up; it grows while the
//!   repository is down) - this process's indexer live, the others from their last heartbeat;
//! - `kestra_metrics_subscription_lagged_total`: times a broadcast dropped messages because this
//!   webserver read too slowly (counters are then low).
//!
//! The executor keeps execution updates in its own unit of work (they are not broadcast), hence the
//! repository gauge for states rather than a counter of ends. Counters are per process, as
//! Prometheus expects (a restart starts them again at zero).
//!
//! Why a hand-written encoder rather than `metrics` + `metrics-exporter-prometheus`: the exporter
//! wants a process-wide recorder, while a webserver here is a library value (several may run in one
//! process, tests start many); a few counters and histograms in a mutex are simpler and exact.
//!
//! Authentication: behind basic authentication like every route, unless the webserver is built with
//! [`WebserverBuilder::metrics_public`](crate::WebserverBuilder::metrics_public) (configuration key
//! `kestra.server.metrics.public`), when `GET /metrics` (exactly) is public.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, OnceLock};

use axum::extract::{RawQuery, State};
use axum::http::header;
use axum::response::IntoResponse;
use chrono::Utc;
use futures::StreamExt;
use kestra_core::messages::WorkerTaskResult;
use kestra_core::model::{DEFAULT_TENANT, Execution, ServiceState, ServiceType, StateType};
use kestra_core::queue::{QueueError, Topic};
use kestra_core::repository::{ExecutionQuery, Pageable};

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
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
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
    created: BTreeMap<(String, String), u64>,
    attempts: BTreeMap<(String, String, String), Histogram>,
    lag: Histogram,
    lagged: u64,
    /// Namespace and flow of the executions created since start (bounded like `seen`).
    flows: HashMap<String, (String, String)>,
    seen_created: Seen,
    seen_attempts: Seen,
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
    /// Count a created execution.
    fn observe_created(&self, execution: &Execution) {
        let now = Utc::now();
        let Ok(mut c) = self.counts.lock() else {
            return;
        };
        if !c.seen_created.insert(execution.id.clone()) {
            return;
        }
        if let Some(first) = execution.state.histories().first() {
            let lag = (now - first.date).num_milliseconds().max(0) as f64 / 1000.0;
            c.lag.observe(lag);
        }
        let key = (execution.namespace.clone(), execution.flow_id.clone());
        if c.flows.len() >= REMEMBERED {
            c.flows.clear();
        }
        c.flows.insert(execution.id.clone(), key.clone());
        *c.created.entry(key).or_default() += 1;
    }

    /// Count an attempt a worker ended.
    fn observe_result(&self, result: &WorkerTaskResult) {
        if !result.state.is_terminated() {
            return;
        }
        let Ok(mut c) = self.counts.lock() else {
            return;
        };
        if !c.seen_attempts.insert(format!(
            "{}/{}/{}",
            result.execution_id, result.task_run_id, result.attempt
        )) {
            return;
        }
        let seconds = result
            .attempt_state
            .duration(Utc::now())
            .num_milliseconds()
            .max(0) as f64
            / 1000.0;
        let (namespace, flow_id) = c
            .flows
            .get(&result.execution_id)
            .cloned()
            .unwrap_or_default();
        c.attempts
            .entry((namespace, flow_id, result.state.to_string()))
            .or_default()
            .observe(seconds);
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
            let subscribe = async |topic| match queue.subscribe(topic).await {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, ?topic, "/metrics cannot follow a topic: its counters stay at zero");
                    None
                }
            };
            let (Some(mut executions), Some(mut results)) = (
                subscribe(Topic::Execution).await,
                subscribe(Topic::WorkerTaskResult).await,
            ) else {
                return;
            };
            drop(queue);
            let lagged = |metrics: &Metrics| {
                if let Ok(mut c) = metrics.counts.lock() {
                    c.lagged += 1;
                }
            };
            loop {
                tokio::select! {
                    message = executions.next() => match message {
                        Some(Ok(envelope)) => {
                            if let Ok(execution) = envelope.decode::<Execution>() {
                                metrics.observe_created(&execution);
                            }
                        }
                        Some(Err(QueueError::Lagged { .. })) => lagged(&metrics),
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "/metrics lost its execution subscription");
                            return;
                        }
                        None => return,
                    },
                    message = results.next() => match message {
                        Some(Ok(envelope)) => {
                            if let Ok(result) = envelope.decode::<WorkerTaskResult>() {
                                metrics.observe_result(&result);
                            }
                        }
                        Some(Err(QueueError::Lagged { .. })) => lagged(&metrics),
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "/metrics lost its worker result subscription");
                            return;
                        }
                        None => return,
                    },
                    () = shutdown.cancelled() => return,
                }
            }
        });
    }

    /// The text exposition, with `states` the executions by state from the repository and `lags`
    /// the indexers' lags (instance, topic, seconds).
    fn render(&self, states: &[(StateType, u64)], lags: &[(String, String, f64)]) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP kestra_build_info The version of this server.\n# TYPE kestra_build_info gauge\nkestra_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        out.push_str("# HELP kestra_executions Executions in the repository by current state.\n# TYPE kestra_executions gauge\n");
        for (state, n) in states {
            let _ = writeln!(out, "kestra_executions{{state=\"{state}\"}} {n}");
        }
        out.push_str("# HELP kestra_indexer_lag_seconds How long the oldest message an indexer has not stored yet has waited, per topic (0: caught up).\n# TYPE kestra_indexer_lag_seconds gauge\n");
        for (instance, topic, seconds) in lags {
            let _ = writeln!(
                out,
                "kestra_indexer_lag_seconds{{instance=\"{}\",topic=\"{}\"}} {seconds}",
                escape(instance),
                escape(topic)
            );
        }
        let Ok(c) = self.counts.lock() else {
            return out;
        };
        out.push_str("# HELP kestra_executions_created_total Executions created since this webserver started.\n# TYPE kestra_executions_created_total counter\n");
        for ((ns, flow), n) in &c.created {
            let _ = writeln!(
                out,
                "kestra_executions_created_total{{namespace=\"{}\",flow_id=\"{}\"}} {n}",
                escape(ns),
                escape(flow)
            );
        }
        out.push_str("# HELP kestra_taskruns_attempt_duration_seconds Duration of the task-run attempts workers ended.\n# TYPE kestra_taskruns_attempt_duration_seconds histogram\n");
        for ((ns, flow, state), h) in &c.attempts {
            let labels = format!(
                "namespace=\"{}\",flow_id=\"{}\",state=\"{}\"",
                escape(ns),
                escape(flow),
                escape(state)
            );
            h.write(
                &mut out,
                "kestra_taskruns_attempt_duration_seconds",
                &labels,
            );
        }
        out.push_str("# HELP kestra_queue_execution_lag_seconds From an execution's creation to its message reaching this webserver.\n# TYPE kestra_queue_execution_lag_seconds histogram\n");
        c.lag
            .write(&mut out, "kestra_queue_execution_lag_seconds", "");
        let _ = writeln!(
            out,
            "# HELP kestra_metrics_subscription_lagged_total Times a broadcast dropped messages this webserver read too slowly.\n# TYPE kestra_metrics_subscription_lagged_total counter\nkestra_metrics_subscription_lagged_total {}",
            c.lagged
        );
        out
    }
}

/// The lag of every running indexer, in seconds per topic, labelled by instance: this process's own
/// indexer live, the others from their last heartbeat in the repository (`props.lagSeconds`).
async fn indexer_lags(state: &AppState) -> Vec<(String, String, f64)> {
    let mut lags = Vec::new();
    let own = state.engine.indexer_lag();
    if let Some(lag) = own {
        let instance = lag.instance().unwrap_or_default().to_string();
        for (topic, seconds) in lag.seconds() {
            lags.push((instance.clone(), topic.to_string(), seconds));
        }
    }
    let own_id = own.and_then(|l| l.instance());
    // The repository may be down (Elasticsearch): the other indexers are then left out.
    let others = state
        .engine
        .repositories()
        .services
        .find_all()
        .await
        .unwrap_or_default();
    for instance in others {
        if instance.type_ != ServiceType::Indexer
            || instance.state != ServiceState::Running
            || Some(instance.id.as_str()) == own_id
        {
            continue;
        }
        let Some(by_topic) = instance.props.get("lagSeconds").and_then(|v| v.as_object()) else {
            continue;
        };
        for (topic, seconds) in by_topic {
            if let Some(seconds) = seconds.as_f64() {
                lags.push((instance.id.clone(), topic.clone(), seconds));
            }
        }
    }
    lags
}

/// Executions by current state, one repository count per state.
async fn states(state: &AppState) -> Result<Vec<(StateType, u64)>, ApiError> {
    let repository = &state.engine.repositories().executions;
    let counts = futures::future::join_all(StateType::ALL.into_iter().map(|s| async move {
        let query = ExecutionQuery {
            tenant_id: Some(DEFAULT_TENANT.to_string()),
            states: vec![s],
            ..ExecutionQuery::default()
        };
        repository
            .search(&query, &Pageable::new(1, 1))
            .await
            .map(|page| (s, page.total))
    }))
    .await;
    Ok(counts.into_iter().collect::<Result<Vec<_>, _>>()?)
}

/// `GET /metrics`.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "Metrics",
    operation_id = "prometheusMetrics",
    responses(
        (status = 200, description = "Prometheus text format (version 0.0.4)", content_type = "text/plain"),
        (status = 401, description = "Missing or wrong credentials", body = crate::api::openapi::ErrorBody),
    )
)]
pub(crate) async fn metrics(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
) -> Result<impl IntoResponse, ApiError> {
    Params::parse(query.as_deref(), &[])?;
    Metrics::start(&state);
    let states = states(&state).await?;
    let lags = indexer_lags(&state).await;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(&states, &lags),
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
