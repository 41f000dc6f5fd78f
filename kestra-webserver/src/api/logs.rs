//! Log routes: an execution's logs.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use kestra_core::model::{DEFAULT_TENANT, Level, LogEntry};

use super::Params;
use crate::{ApiError, AppState};

/// `GET /logs/{executionId}`: the execution's log lines in emission order; `minLevel` (`TRACE` ..
/// `ERROR`) keeps that level and more severe, `taskRunId` one task run's.
#[utoipa::path(
    get,
    path = "/api/v1/main/logs/{executionId}",
    tag = "Logs",
    operation_id = "listLogsFromExecution",
    params(
        ("executionId" = String, Path, description = "Execution id"),
        ("minLevel" = Option<String>, Query, description = "TRACE, DEBUG, INFO, WARN or ERROR"),
        ("taskRunId" = Option<String>, Query, description = "One task run's lines"),
    ),
    responses(
        (status = 200, description = "The log lines in emission order", body = [crate::api::openapi::LogEntryBody]),
        (status = 400, description = "Invalid query parameter", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "No such execution", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong credentials", body = crate::api::openapi::ErrorBody),
    )
)]
pub(crate) async fn by_execution(
    State(state): State<Arc<AppState>>,
    Path(execution_id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Vec<LogEntry>>, ApiError> {
    let params = Params::parse(query.as_deref(), &["minLevel", "taskRunId"])?;
    let min_level = params
        .one("minLevel")
        .map(|l| {
            l.parse::<Level>().map_err(|_| {
                ApiError::bad_request(format!(
                    "query parameter 'minLevel': '{l}' is not one of TRACE, DEBUG, INFO, WARN, ERROR"
                ))
            })
        })
        .transpose()?;
    let logs = state
        .engine
        .repositories()
        .logs
        .find_by_execution(
            DEFAULT_TENANT,
            &execution_id,
            min_level,
            params.one("taskRunId"),
        )
        .await?;
    Ok(Json(logs))
}

/// Where a log follow stands.
struct LogFollow {
    state: Arc<AppState>,
    execution_id: String,
    min_level: Option<Level>,
    subscription: kestra_core::queue::Subscription,
    seen: std::collections::HashSet<String>,
    pending: std::collections::VecDeque<LogEntry>,
    /// When the execution was first seen ended: the follow closes a little after.
    ended_at: Option<tokio::time::Instant>,
    /// When the stored lines were last read.
    stored_at: tokio::time::Instant,
    /// Whether a line came through the subscription yet.
    live: bool,
}

/// After the execution has ended, how long a follow still waits for log lines in flight.
const END_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// While the execution runs, how often a follow reads the stored lines again: a line a worker
/// emitted just before the follow subscribed, and that the indexer stored just after the follow's
/// first read, is found this way (duplicates are dropped).
const STORED_REFRESH: std::time::Duration = std::time::Duration::from_secs(1);

fn identity(entry: &LogEntry) -> String {
    format!(
        "{}|{}|{}|{:?}|{}",
        entry.task_run_id.as_deref().unwrap_or(""),
        entry.attempt_number.unwrap_or(0),
        entry.timestamp.timestamp_nanos_opt().unwrap_or(0),
        entry.level,
        entry.message
    )
}

impl LogFollow {
    fn keep(&mut self, entry: LogEntry) {
        if self.min_level.is_some_and(|min| entry.level < min) {
            return;
        }
        if self.seen.insert(identity(&entry)) {
            self.pending.push_back(entry);
        }
    }
}

/// The stored lines of an execution (read at the start, and again after a lag of the subscription).
async fn stored_lines(
    state: Arc<AppState>,
    execution_id: String,
    min_level: Option<Level>,
) -> Vec<LogEntry> {
    match state
        .engine
        .repositories()
        .logs
        .find_by_execution(DEFAULT_TENANT, &execution_id, min_level, None)
        .await
    {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(%execution_id, error = %e, "log follow cannot read stored logs");
            Vec::new()
        }
    }
}

async fn execution_ended(state: Arc<AppState>, execution_id: String) -> bool {
    matches!(
        state
            .engine
            .repositories()
            .executions
            .find_by_id(DEFAULT_TENANT, &execution_id)
            .await,
        Ok(Some(e)) if e.state.is_terminated()
    )
}

/// `GET /logs/{executionId}/follow`: server-sent events (`id: progress`, data: a log line), the
/// stored lines first, then new ones as workers emit them (live, from the queue's broadcast), until
/// a moment after the execution has ended. `minLevel` filters.
#[utoipa::path(
    get,
    path = "/api/v1/main/logs/{executionId}/follow",
    tag = "Logs",
    operation_id = "followLogsFromExecution",
    params(
        ("executionId" = String, Path, description = "Execution id"),
        ("minLevel" = Option<String>, Query, description = "TRACE, DEBUG, INFO, WARN or ERROR"),
    ),
    responses(
        (status = 200, description = "Server-sent events: one log line per event (id: progress) until the execution ends", content_type = "text/event-stream"),
        (status = 400, description = "Invalid query parameter", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "No such execution", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong credentials", body = crate::api::openapi::ErrorBody),
    )
)]
pub(crate) async fn follow(
    State(state): State<Arc<AppState>>,
    Path(execution_id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<
    axum::response::sse::Sse<
        impl futures::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>,
    >,
    ApiError,
> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use futures::StreamExt;
    let params = Params::parse(query.as_deref(), &["minLevel"])?;
    let min_level = params
        .one("minLevel")
        .map(|l| {
            l.parse::<Level>().map_err(|_| {
                ApiError::bad_request(format!(
                    "query parameter 'minLevel': '{l}' is not one of TRACE, DEBUG, INFO, WARN, ERROR"
                ))
            })
        })
        .transpose()?;
    let events = follow_entries(state, execution_id, min_level)
        .await?
        .map(|entry| {
            let data = serde_json::to_string(&entry).unwrap_or_default();
            Ok(Event::default().id("progress").data(data))
        });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// An execution's log lines: the stored ones first, then new ones as workers emit them, without
/// duplicates, until a moment after the execution has ended (or the server shuts down).
pub(crate) async fn follow_entries(
    state: Arc<AppState>,
    execution_id: String,
    min_level: Option<Level>,
) -> Result<impl futures::Stream<Item = LogEntry> + Send + 'static, ApiError> {
    use futures::StreamExt;
    // Subscribe before reading the stored lines: nothing falls between the two.
    let subscription = state
        .engine
        .queue()
        .subscribe(kestra_core::queue::Topic::Log)
        .await
        .map_err(|e| ApiError::internal(format!("cannot follow logs: {e}")))?;
    let mut start = LogFollow {
        state,
        execution_id,
        min_level,
        subscription,
        seen: std::collections::HashSet::new(),
        pending: std::collections::VecDeque::new(),
        ended_at: None,
        stored_at: tokio::time::Instant::now(),
        live: false,
    };
    for entry in stored_lines(start.state.clone(), start.execution_id.clone(), min_level).await {
        start.keep(entry);
    }
    Ok(futures::stream::unfold(start, |mut f| async move {
        loop {
            if let Some(entry) = f.pending.pop_front() {
                return Some((entry, f));
            }
            if let Some(at) = f.ended_at
                && at.elapsed() >= END_GRACE
            {
                return None;
            }
            let poll = f.state.config.follow_poll;
            tokio::select! {
                message = f.subscription.next() => match message {
                    Some(Ok(envelope)) => {
                        if envelope.key == f.execution_id
                            && let Ok(entry) = envelope.decode::<LogEntry>()
                            && entry.execution_id.as_deref() == Some(f.execution_id.as_str())
                        {
                            // Before the first live line, the stored ones again: a line emitted
                            // just before the subscription, and stored since the first read,
                            // comes before it (it came after it when only the periodic refresh
                            // found it; seen on Kafka + Elasticsearch, where the indexer stores
                            // lines a moment after they are published).
                            let mut lines = Vec::new();
                            if !std::mem::replace(&mut f.live, true) {
                                f.stored_at = tokio::time::Instant::now();
                                lines = stored_lines(f.state.clone(), f.execution_id.clone(), f.min_level).await;
                            }
                            lines.push(entry);
                            lines.sort_by_key(|l| l.timestamp);
                            for line in lines {
                                f.keep(line);
                            }
                        }
                    }
                    Some(Err(kestra_core::queue::QueueError::Lagged { .. })) => {
                        for entry in stored_lines(f.state.clone(), f.execution_id.clone(), f.min_level).await {
                            f.keep(entry);
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(execution_id = %f.execution_id, error = %e, "log follow lost its subscription");
                        return None;
                    }
                    None => return None,
                },
                () = tokio::time::sleep(poll) => {
                    let mut refresh = f.ended_at.is_none() && f.stored_at.elapsed() >= STORED_REFRESH;
                    if f.ended_at.is_none() && execution_ended(f.state.clone(), f.execution_id.clone()).await {
                        f.ended_at = Some(tokio::time::Instant::now());
                        refresh = true;
                    }
                    if refresh {
                        f.stored_at = tokio::time::Instant::now();
                        for entry in stored_lines(f.state.clone(), f.execution_id.clone(), f.min_level).await {
                            f.keep(entry);
                        }
                    }
                }
                () = f.state.shutdown.cancelled() => return None,
            }
        }
    }))
}
