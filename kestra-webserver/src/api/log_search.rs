//! Log routes across executions: `GET /logs/search` (paged) and `GET /logs/{executionId}/download`
//! (plain text, one line per entry, streamed page by page from the repository).

use std::sync::Arc;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use kestra_core::model::{DEFAULT_TENANT, Level, LogEntry};
use kestra_core::repository::{LogQuery, Pageable, Sort};
use serde_json::{Value, json};

use super::Params;
use crate::{ApiError, AppState};

/// How many entries a download reads from the repository at a time.
pub const DOWNLOAD_PAGE: u32 = 1_000;

fn min_level(params: &Params) -> Result<Option<Level>, ApiError> {
    params
        .one("minLevel")
        .map(|l| {
            l.parse::<Level>().map_err(|_| {
                ApiError::bad_request(format!(
                    "query parameter 'minLevel': '{l}' is not one of TRACE, DEBUG, INFO, WARN, ERROR"
                ))
            })
        })
        .transpose()
}

/// `GET /logs/search`: `q` (in the message), `namespace` (and children), `flowId`, `minLevel`,
/// `startDate`, `endDate`, `page`, `size`, `sort` (`timestamp`, `level`, `namespace`, `flowId`;
/// newest first by default) → `{"results": [log entries], "total"}`.
#[utoipa::path(
    get,
    path = "/api/v1/main/logs/search",
    tag = "Logs",
    operation_id = "searchLogs",
    params(
        ("q" = Option<String>, Query, description = "Text to find"),
        ("namespace" = Option<String>, Query, description = "Namespace"),
        ("flowId" = Option<String>, Query, description = "Flow id"),
        ("minLevel" = Option<String>, Query, description = "TRACE, DEBUG, INFO, WARN or ERROR"),
        ("startDate" = Option<String>, Query, description = "From (ISO-8601)"),
        ("endDate" = Option<String>, Query, description = "To (ISO-8601)"),
        ("page" = Option<u32>, Query, description = "Page number, from 1"),
        ("size" = Option<u32>, Query, description = "Page size"),
        ("sort" = Option<String>, Query, description = "Sort, e.g. `date:desc`"),
    ),
    responses(
        (status = 200, description = "`{\"results\": [log lines], \"total\"}`", content_type = "application/json"),
        (status = 400, description = "Invalid query parameter", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong credentials", body = crate::api::openapi::ErrorBody),
    )
)]
pub(crate) async fn search(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let params = Params::parse(
        query.as_deref(),
        &[
            "q",
            "namespace",
            "flowId",
            "minLevel",
            "startDate",
            "endDate",
            "page",
            "size",
            "sort",
        ],
    )?;
    let query = LogQuery {
        tenant_id: Some(DEFAULT_TENANT.to_string()),
        q: params.one("q").map(str::to_string),
        namespace: params.one("namespace").map(str::to_string),
        flow_id: params.one("flowId").map(str::to_string),
        execution_id: None,
        task_run_id: None,
        min_level: min_level(&params)?,
        start_date: params.date("startDate")?,
        end_date: params.date("endDate")?,
    };
    let page = params.pageable()?;
    let found = state
        .engine
        .repositories()
        .logs
        .search(&query, &page)
        .await?;
    Ok(Json(
        json!({ "results": found.results, "total": found.total }),
    ))
}

/// One entry as a line of a download: `timestamp LEVEL [taskId] message`, the message's line breaks
/// written `\n` so that every entry is one line.
fn line(entry: &LogEntry) -> String {
    let task = entry
        .task_id
        .as_deref()
        .map(|t| format!(" [{t}]"))
        .unwrap_or_default();
    let message = entry
        .message
        .replace('\\', "\\\\")
        .replace('\r', "\\r")
        .replace('\n', "\\n");
    format!(
        "{} {}{task} {message}\n",
        entry
            .timestamp
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        entry.level
    )
}

/// `GET /logs/{executionId}/download`: the execution's logs as `text/plain`, one line per entry in
/// emission order (`minLevel`, `taskRunId` filter), read and sent [`DOWNLOAD_PAGE`] entries at a
/// time; 404 when the execution does not exist.
#[utoipa::path(
    get,
    path = "/api/v1/main/logs/{executionId}/download",
    tag = "Logs",
    operation_id = "downloadLogsFromExecution",
    params(
        ("executionId" = String, Path, description = "Execution id"),
        ("minLevel" = Option<String>, Query, description = "TRACE, DEBUG, INFO, WARN or ERROR"),
        ("taskRunId" = Option<String>, Query, description = "One task run's lines"),
    ),
    responses(
        (status = 200, description = "The logs as text, one line per entry", content_type = "text/plain"),
        (status = 400, description = "Invalid query parameter", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "No such execution", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong credentials", body = crate::api::openapi::ErrorBody),
    )
)]
pub(crate) async fn download(
    State(state): State<Arc<AppState>>,
    Path(execution_id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(query.as_deref(), &["minLevel", "taskRunId"])?;
    if state.engine.execution(&execution_id).await?.is_none() {
        return Err(ApiError::not_found(format!(
            "execution '{execution_id}' not found"
        )));
    }
    let query = LogQuery {
        tenant_id: Some(DEFAULT_TENANT.to_string()),
        execution_id: Some(execution_id.clone()),
        task_run_id: params.one("taskRunId").map(str::to_string),
        min_level: min_level(&params)?,
        ..LogQuery::default()
    };
    // Pages in emission order (timestamp, then entry id: the order of `GET /logs/{id}`).
    let pages = futures::stream::unfold(Some(1u32), move |page| {
        let state = state.clone();
        let query = query.clone();
        async move {
            let number = page?;
            let mut pageable = Pageable::new(number, DOWNLOAD_PAGE);
            pageable.sort.push(Sort::parse("timestamp:asc"));
            match state
                .engine
                .repositories()
                .logs
                .search(&query, &pageable)
                .await
            {
                Ok(found) => {
                    let last = (found.results.len() as u32) < DOWNLOAD_PAGE
                        || u64::from(number) * u64::from(DOWNLOAD_PAGE) >= found.total;
                    let text: String = found.results.iter().map(line).collect();
                    let next = if last { None } else { Some(number + 1) };
                    Some((Ok::<Bytes, std::io::Error>(Bytes::from(text)), next))
                }
                Err(e) => {
                    tracing::warn!(execution_id = ?query.execution_id, error = %e, "log download failed mid-way");
                    Some((Err(std::io::Error::other(e.to_string())), None))
                }
            }
        }
    });
    let file_name = format!("{execution_id}.log");
    Ok((
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                "text/plain; charset=utf-8".to_string(),
            ),
            (
                header::CONTENT_DISPOSITION,
                format!(
                    "attachment; filename=\"{}\"",
                    file_name.replace(['"', '\\', '\r', '\n'], "_")
                ),
            ),
        ],
        Body::from_stream(pages),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_download_line_is_one_line_per_entry() {
        let entry: LogEntry = serde_json::from_value(json!({
            "id": "1", "tenantId": "main", "namespace": "n", "flowId": "f", "taskId": "t",
            "timestamp": "2026-01-31T10:00:00Z", "level": "WARN", "message": "a\nb\\c"
        }))
        .unwrap();
        assert_eq!(
            line(&entry),
            "2026-01-31T10:00:00.000Z WARN [t] a\\nb\\\\c\n"
        );
    }
}
