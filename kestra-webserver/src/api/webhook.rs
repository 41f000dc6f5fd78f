//! The Webhook trigger's route, public (the key in the path is the secret):
//! `GET|POST|PUT /executions/webhook/{namespace}/{flowId}/{key}`.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use kestra_core::runtime::WebhookRequest;
use serde_json::{Map, Value};

use crate::{ApiError, AppState};

/// Name -> list of values, as Kestra exposes headers and query parameters to `trigger.*`.
fn push(map: &mut Map<String, Value>, name: String, value: String) {
    match map.entry(name).or_insert_with(|| Value::Array(Vec::new())) {
        Value::Array(values) => values.push(Value::String(value)),
        other => *other = Value::Array(vec![Value::String(value)]),
    }
}

/// Start an execution of the flow whose enabled Webhook trigger has this key; the request's body
/// (JSON when it parses, else text), headers and query parameters are the trigger's variables.
/// Answers the execution at once, or, for a trigger with `wait: true`, at its end (its `outputs`
/// alone with `returnOutputs: true`). 404 when no trigger of the flow has this key.
#[utoipa::path(
    method(get, post, put),
    path = "/api/v1/main/executions/webhook/{namespace}/{flowId}/{key}",
    tag = "Executions",
    operation_id = "webhookTrigger",
    params(
        ("namespace" = String, Path, description = "Namespace of the flow"),
        ("flowId" = String, Path, description = "Flow id"),
        ("key" = String, Path, description = "The Webhook trigger's key (the secret)"),
    ),
    request_body(content = String, description = "Any body: JSON when it parses, else text (trigger.body)"),
    security(()),
    responses(
        (status = 200, description = "The execution (or, with wait, its end or outputs)", body = crate::api::openapi::ExecutionBody),
        (status = 404, description = "No enabled Webhook trigger of this flow has this key", body = crate::api::openapi::ErrorBody),
    )
)]
pub(crate) async fn webhook(
    State(state): State<Arc<AppState>>,
    Path((namespace, flow_id, key)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut parameters = Map::new();
    for (k, v) in form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
        push(&mut parameters, k.into_owned(), v.into_owned());
    }
    let mut header_map = Map::new();
    for (name, value) in &headers {
        // Credentials never reach the flow's variables.
        if name == axum::http::header::AUTHORIZATION || name == axum::http::header::COOKIE {
            continue;
        }
        push(
            &mut header_map,
            name.as_str().to_string(),
            String::from_utf8_lossy(value.as_bytes()).into_owned(),
        );
    }
    let body = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()))
    };
    let request = WebhookRequest {
        body,
        headers: header_map,
        parameters,
    };
    let (execution, answer) = state
        .engine
        .webhook(&namespace, &flow_id, &key, request)
        .await?;
    if !answer.wait {
        return Ok(Json(execution).into_response());
    }
    let done = tokio::select! {
        done = state.engine.wait_for(&execution.id, state.config.wait_timeout) => done?,
        () = state.shutdown.cancelled() => {
            return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the server is shutting down"));
        }
    };
    if answer.return_outputs {
        return Ok(Json(Value::Object(done.outputs)).into_response());
    }
    Ok(Json(done).into_response())
}
