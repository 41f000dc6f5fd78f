//! `POST /executions/{id}/labels`: replace an execution's labels (Kestra's body: a list of
//! `{"key", "value"}`), running or ended. The executor owns the execution, so the change is an
//! [`ExecutionCommand::SetLabels`](kestra_core::messages::ExecutionCommand::SetLabels) it applies;
//! the route answers the execution once the repository shows the new labels (200), or 202 when that
//! takes longer than [`LABELS_WAIT`] (the executor applies it later).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use kestra_core::model::Label;
use serde_json::{Value, json};

use super::Params;
use super::executions::execution_json;
use crate::{ApiError, AppState};

/// How long the route waits for the executor to apply the labels.
pub const LABELS_WAIT: Duration = Duration::from_secs(10);

/// The labels an execution has after the change (as the executor computes them).
fn expected(current: &[Label], given: &[Label]) -> Vec<Label> {
    let mut next: Vec<Label> = current
        .iter()
        .filter(|l| l.key.starts_with("system."))
        .cloned()
        .collect();
    for label in given {
        next.retain(|l| l.key != label.key);
        next.push(label.clone());
    }
    next
}

/// `POST /executions/{id}/labels`.
#[utoipa::path(
    post,
    path = "/api/v1/main/executions/{executionId}/labels",
    tag = "Executions",
    operation_id = "setLabelsOnTerminatedExecution",
    params(
        ("executionId" = String, Path, description = "Execution id"),
    ),
    request_body(content_type = "application/json", description = "`[{\"key\", \"value\"}]`"),
    responses(
        (status = 200, description = "The execution with its new labels (202 when not stored within 10 s)", content_type = "application/json"),
        (status = 400, description = "Invalid labels", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "No such execution", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong credentials", body = crate::api::openapi::ErrorBody),
    )
)]
pub(crate) async fn set_labels(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    body: Result<Json<Vec<Label>>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    Params::parse(query.as_deref(), &[])?;
    let Json(labels) = body?;
    for (i, label) in labels.iter().enumerate() {
        if label.key.trim().is_empty() {
            return Err(ApiError::unprocessable(format!(
                "label {i}: the key is empty"
            )));
        }
        if label.key.starts_with("system.") {
            return Err(ApiError::bad_request(format!(
                "label {i}: '{}' is a system label, set by Kestra only",
                label.key
            )));
        }
    }
    let current = state
        .engine
        .execution(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("execution '{id}' not found")))?;
    let want = expected(&current.labels, &labels);
    state.engine.set_labels(&id, labels).await?;
    tracing::info!(execution_id = %id, "execution labels set through the API");
    let deadline = tokio::time::Instant::now() + LABELS_WAIT;
    loop {
        if let Some(execution) = state.engine.execution(&id).await?
            && execution.labels == want
        {
            return Ok((StatusCode::OK, Json(execution_json(&execution)?)));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok((
                StatusCode::ACCEPTED,
                Json(json!({
                    "message": format!(
                        "the executor has not applied the labels of execution '{id}' within {} s; it will",
                        LABELS_WAIT.as_secs()
                    )
                })),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
