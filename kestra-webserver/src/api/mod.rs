//! The routes of the REST API, served under `/api/v1/main` (tenant `main`) and under the `/api/v1`
//! alias, plus `/health`:
//!
//! | method and path | what |
//! | --- | --- |
//! | `GET /health` | liveness, public: `{"status": "UP"}` |
//! | `GET /configs` | server settings the UI and clients read |
//! | `POST /flows` | create a flow from its YAML (`application/x-yaml`); 409 if it exists |
//! | `POST /flows/validate` | validate YAML (several documents), one report per document |
//! | `GET /flows/search` | `q`, `namespace`, `labels`, `page`, `size`, `sort` |
//! | `GET /flows/distinct-namespaces` | namespaces that hold flows |
//! | `GET /flows/{namespace}/{id}` | a flow; `source=true` adds its YAML, `revision=N` an old one |
//! | `PUT /flows/{namespace}/{id}` | update from YAML (a new revision when the source changed) |
//! | `DELETE /flows/{namespace}/{id}` | delete (revisions stay) |
//! | `GET /flows/{namespace}/{id}/revisions` | every revision, with source |
//! | `POST /executions/{namespace}/{flowId}` | trigger: multipart inputs and files, `wait`, `labels`, `scheduleDate`, `revision` |
//! | `GET /executions/search` | `q`, `namespace`, `flowId`, `state`, `startDate`, `endDate`, `labels`, `page`, `size`, `sort` |
//! | `GET /executions/{id}` | an execution |
//! | `GET /executions/{id}/follow` | server-sent events of the execution until it ends |
//! | `DELETE /executions/{id}/kill` | ask for a kill (202); 409 if it already ended |
//! | `DELETE /executions/{id}` | delete an ended execution (and its logs and metrics) |
//! | `POST /executions/{id}/restart` | run the failed task runs again (202); 409 unless FAILED or KILLED |
//! | `POST /executions/{id}/replay` | `taskRunId`: a new execution from that task run; 409 while running |
//! | `POST /executions/{id}/resume` | resume a PAUSED execution, multipart `onResume` inputs (204) |
//! | `GET /executions/{id}/file` | `path=kestra:///...`: a file of this execution only (403 for others) |
//! | `GET /logs/{executionId}` | an execution's logs: `minLevel`, `taskRunId` |
//! | `GET /logs/{executionId}/follow` | server-sent events: stored lines, then live ones until the execution ends; `minLevel` |
//! | `GET\|POST\|PUT /executions/webhook/{namespace}/{flowId}/{key}` | the Webhook trigger, public: the key is the secret |
//! | `POST /executions/{id}/labels` | replace its labels (`[{"key", "value"}]`; `system.*` stay), running or ended |
//! | `GET /flows/{namespace}` | the namespace's flows (not its children's) |
//! | `POST /flows/{namespace}` | bulk update from multi-document YAML; deletes the namespace's other flows unless `delete=false` |
//! | `GET /logs/search` | `q`, `namespace`, `flowId`, `minLevel`, `startDate`, `endDate`, `page`, `size`, `sort` |
//! | `GET /logs/{executionId}/download` | the execution's logs as text, one line per entry, streamed: `minLevel`, `taskRunId` |
//! | `GET /triggers/search` | `q`, `namespace`, `flowId`, `page`, `size`, `sort`: `{"abstractTrigger", "triggerContext"}` each |
//! | `GET /triggers/{namespace}/{flowId}` | the trigger states of a flow |
//! | `PUT /triggers` | one trigger: `disabled`, or start a `backfill` ({start, end, inputs, labels}) |
//! | `POST /triggers/set-disabled/by-triggers` | `{"triggers": [...], "disabled": bool}` → `{"count"}` |
//! | `POST /triggers/{namespace}/{flowId}/{triggerId}/unlock` | release its running execution and evaluation; 409 if not locked |
//! | `PUT /triggers/backfill/pause`, `PUT /triggers/backfill/unpause`, `POST /triggers/backfill/delete` | a trigger's backfill |
//! | `GET /namespaces/{namespace}/kv` | the namespace's KV keys |
//! | `GET\|PUT\|DELETE /namespaces/{namespace}/kv/{key}` | a KV value: `{"type", "value"}`; PUT body = value, header `ttl` |
//! | `GET /metrics` (root, not under `/api/v1`) | Prometheus text ([`metrics`]); authenticated unless configured public |
//! | `GET /openapi.json` | the OpenAPI document of this API ([`openapi`]); also `GET /swagger/kestra.yml` as YAML |
//! | `GET /plugins` | the task and trigger types, grouped by package: `[{"name", "group", "tasks": [{"cls", "deprecated"}], "triggers"}]` |
//! | `GET /plugins/schemas/flow` | the JSON Schema of the flow language (every registered task and trigger type) |
//!
//! Query parameters are allow-listed per route: an unknown one is a 400 naming the allowed ones, so
//! a filter is never silently ignored.

pub mod execution_labels;
pub mod executions;
pub mod flows;
pub mod flows_namespace;
pub mod kv;
pub mod log_search;
pub mod logs;
pub mod metrics;
pub mod openapi;
pub mod triggers;
pub mod webhook;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use chrono::{DateTime, Utc};
use kestra_core::model::Label;
use kestra_core::repository::{Pageable, Sort};
use serde_json::{Value, json};

use crate::auth::{Auth, require_auth};
use crate::{ApiError, AppState};

/// Largest page size a search accepts.
pub const MAX_PAGE_SIZE: u32 = 10_000;

/// The API's routes (without prefix).
fn routes(upload_limit: usize) -> Router<Arc<AppState>> {
    Router::new()
        .route("/configs", get(configs))
        .route("/flows", post(flows::create))
        .route("/flows/validate", post(flows::validate))
        .route("/flows/search", get(flows::search))
        .route(
            "/flows/distinct-namespaces",
            get(flows::distinct_namespaces),
        )
        .route(
            "/flows/{namespace}/{id}",
            get(flows::get_flow)
                .put(flows::update)
                .delete(flows::delete_flow),
        )
        .route("/flows/{namespace}/{id}/revisions", get(flows::revisions))
        .route("/executions/search", get(executions::search))
        .route(
            "/executions/{id}",
            get(executions::get_execution).delete(executions::delete_execution),
        )
        .route("/executions/{id}/follow", get(executions::follow))
        .route("/executions/{id}/kill", delete(executions::kill))
        .route("/executions/{id}/restart", post(executions::restart))
        .route("/executions/{id}/replay", post(executions::replay))
        .route("/executions/{id}/resume", post(executions::resume))
        .route("/executions/{id}/file", get(executions::file))
        // `{id}` is the namespace here: matchit needs one name per position.
        .route(
            "/executions/{id}/{flow_id}",
            post(executions::trigger).layer(DefaultBodyLimit::max(upload_limit)),
        )
        .route(
            "/executions/webhook/{namespace}/{flow_id}/{key}",
            get(webhook::webhook)
                .post(webhook::webhook)
                .put(webhook::webhook),
        )
        .route("/logs/{execution_id}", get(logs::by_execution))
        .route("/logs/{execution_id}/follow", get(logs::follow))
        // Namespace flows, log search and download, triggers, KV (issue 11, second part).
        .route(
            "/flows/{namespace}",
            get(flows_namespace::list).post(flows_namespace::update),
        )
        .route("/logs/search", get(log_search::search))
        .route("/logs/{execution_id}/download", get(log_search::download))
        .route("/triggers", put(triggers::update))
        .route("/triggers/search", get(triggers::search))
        .route(
            "/triggers/set-disabled/by-triggers",
            post(triggers::set_disabled_by_triggers),
        )
        .route("/triggers/backfill/pause", put(triggers::pause_backfill))
        .route(
            "/triggers/backfill/unpause",
            put(triggers::unpause_backfill),
        )
        .route("/triggers/backfill/delete", post(triggers::delete_backfill))
        .route("/triggers/{namespace}/{flow_id}", get(triggers::of_flow))
        .route(
            "/triggers/{namespace}/{flow_id}/{trigger_id}/unlock",
            post(triggers::unlock),
        )
        .route(
            "/executions/{id}/labels",
            post(execution_labels::set_labels),
        )
        .route("/namespaces/{namespace}/kv", get(kv::list))
        .route(
            "/namespaces/{namespace}/kv/{key}",
            get(kv::get_key).put(kv::put_key).delete(kv::delete_key),
        )
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/plugins/schemas/flow", get(openapi::flow_schema))
        .route("/plugins", get(openapi::plugins))
}

/// Every route with authentication and the body limit.
pub(crate) fn router(state: Arc<AppState>) -> Router {
    let upload_limit = usize::try_from(state.config.max_upload_bytes).unwrap_or(usize::MAX);
    let api = routes(upload_limit);
    metrics::Metrics::start(&state);
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics::metrics))
        .route("/swagger/kestra.yml", get(openapi::swagger_yaml))
        .nest("/api/v1/main", api.clone())
        .nest("/api/v1", api)
        .merge(crate::ui::router(upload_limit))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(from_fn_with_state(state.clone(), reject_oversized))
        .layer(from_fn_with_state(state.clone(), require_auth))
        .with_state(state)
}

/// 413 at once for a body whose declared length is over the limit (before it is read); a body
/// without a declared length is cut at the limit by the extractors (also 413).
async fn reject_oversized(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // A multipart POST may upload files (streamed into storage): its limit is the upload one; the
    // routes that do not stream files still cut the body at `max_body_bytes` as they read it.
    let multipart = request.method() == axum::http::Method::POST
        && request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/form-data"));
    let limit = if multipart {
        state
            .config
            .max_upload_bytes
            .max(state.config.max_body_bytes as u64)
    } else {
        state.config.max_body_bytes as u64
    };
    if let Some(length) = declared
        && length > limit
    {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body of {length} bytes is over the limit of {limit} bytes"),
        )
        .into_response();
    }
    next.run(request).await
}

#[utoipa::path(
    get,
    path = "/health",
    tag = "Misc",
    operation_id = "health",
    security(()),
    responses(
        (status = 200, description = "The server is up", body = crate::api::openapi::HealthBody),
    )
)]
async fn health() -> Json<Value> {
    Json(json!({ "status": "UP" }))
}

async fn not_found(request: Request) -> ApiError {
    ApiError::not_found(format!(
        "no route for {} {}",
        request.method(),
        request.uri().path()
    ))
}

/// `GET /configs`: what Kestra's UI and clients read about the server.
#[utoipa::path(
    get,
    path = "/api/v1/main/configs",
    tag = "Misc",
    operation_id = "getConfigs",
    responses(
        (status = 200, description = "Server settings", body = crate::api::openapi::ConfigsBody),
        (status = 401, description = "Missing or wrong credentials", body = crate::api::openapi::ErrorBody),
    )
)]
async fn configs(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "isBasicAuthEnabled": matches!(state.config.auth, Auth::Basic(_)),
        "isAnonymousUsageEnabled": false,
        "isTaskRunEnabled": false,
        "isUiAnonymousUsageEnabled": false,
        "systemNamespace": "system",
        "hiddenLabelsPrefixes": [],
        "tenants": { "storage": false, "secret": false },
    }))
}

/// Query parameters of a request, checked against the route's allow-list.
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    /// Parse a raw query string; a name outside `allowed` is a 400.
    pub(crate) fn parse(raw: Option<&str>, allowed: &[&str]) -> Result<Params, ApiError> {
        let pairs: Vec<(String, String)> = form_urlencoded::parse(raw.unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if let Some((name, _)) = pairs.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
            return Err(ApiError::bad_request(format!(
                "unknown query parameter '{name}': allowed are {}",
                allowed.join(", ")
            )));
        }
        Ok(Params(pairs))
    }

    /// The last value of a parameter, if given and not empty.
    pub(crate) fn one(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// Every non-empty value of a parameter, in order (`state=A&state=B`, or `state=A,B`).
    pub(crate) fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect()
    }

    /// A boolean parameter.
    pub(crate) fn bool(&self, name: &str, default: bool) -> Result<bool, ApiError> {
        match self.one(name) {
            None => Ok(default),
            Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
            Some(v) if v.eq_ignore_ascii_case("false") => Ok(false),
            Some(v) => Err(ApiError::bad_request(format!(
                "query parameter '{name}': '{v}' is not true or false"
            ))),
        }
    }

    /// A positive integer parameter.
    pub(crate) fn u32(&self, name: &str, default: u32) -> Result<u32, ApiError> {
        match self.one(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| {
                ApiError::bad_request(format!(
                    "query parameter '{name}': '{v}' is not a non-negative integer"
                ))
            }),
        }
    }

    /// An ISO-8601 date-time parameter (`2026-01-31T10:00:00Z`, offsets allowed).
    pub(crate) fn date(&self, name: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
        self.one(name)
            .map(|v| {
                DateTime::parse_from_rfc3339(v)
                    .map(|d| d.with_timezone(&Utc))
                    .map_err(|e| {
                        ApiError::bad_request(format!(
                            "query parameter '{name}': '{v}' is not an ISO-8601 date-time: {e}"
                        ))
                    })
            })
            .transpose()
    }

    /// `labels=key:value` (repeatable).
    pub(crate) fn labels(&self) -> Result<Vec<Label>, ApiError> {
        self.0
            .iter()
            .filter(|(k, _)| k == "labels")
            .map(|(_, v)| match v.split_once(':') {
                Some((key, value)) if !key.is_empty() => Ok(Label::new(key, value)),
                _ => Err(ApiError::bad_request(format!(
                    "query parameter 'labels': '{v}' is not key:value"
                ))),
            })
            .collect()
    }

    /// `page` (from 1, default 1), `size` (1..=[`MAX_PAGE_SIZE`], default 25) and `sort`
    /// (`field:asc|desc`, repeatable; fields are checked by the repository's allow-list).
    pub(crate) fn pageable(&self) -> Result<Pageable, ApiError> {
        let page = self.u32("page", 1)?;
        let size = self.u32("size", 25)?;
        if page == 0 {
            return Err(ApiError::bad_request("query parameter 'page' starts at 1"));
        }
        if size == 0 || size > MAX_PAGE_SIZE {
            return Err(ApiError::bad_request(format!(
                "query parameter 'size' must be between 1 and {MAX_PAGE_SIZE} (got {size})"
            )));
        }
        let mut pageable = Pageable::new(page, size);
        for sort in self.all("sort") {
            let parsed = Sort::parse(sort);
            if let Some((_, dir)) = sort.rsplit_once(':')
                && !dir.eq_ignore_ascii_case("asc")
                && !dir.eq_ignore_ascii_case("desc")
            {
                return Err(ApiError::bad_request(format!(
                    "query parameter 'sort': '{sort}' must be field, field:asc or field:desc"
                )));
            }
            pageable.sort.push(parsed);
        }
        Ok(pageable)
    }
}
