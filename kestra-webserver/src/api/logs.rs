//! Log routes: an execution's logs.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use kestra_core::model::{DEFAULT_TENANT, Level, LogEntry};

use super::Params;
use crate::{ApiError, AppState};

/// `GET /logs/{executionId}`: the execution's log lines in emission order; `minLevel` (`TRACE` ..
/// `ERROR`) keeps that level and more severe, `taskRunId` one task run's.
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
