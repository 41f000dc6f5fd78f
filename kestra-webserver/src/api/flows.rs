//! Flow routes: create and update from YAML, get (with source), delete, search, revisions,
//! validate, distinct namespaces.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use kestra_core::flow::{parse_flow, parse_flows};
use kestra_core::model::DEFAULT_TENANT;
use kestra_core::repository::{FlowQuery, FlowRecord};
use serde_json::{Value, json};

use super::Params;
use crate::error::flow_errors_json;
use crate::{ApiError, AppState};

/// A stored flow as the API answers it: the flow's JSON with its revision, and its YAML source
/// when asked.
pub(crate) fn flow_json(record: &FlowRecord, with_source: bool) -> Value {
    let mut flow = match &record.flow {
        Value::Object(map) => map.clone(),
        _ => serde_json::Map::new(),
    };
    flow.insert("id".into(), json!(record.id));
    flow.insert("namespace".into(), json!(record.namespace));
    flow.insert("tenantId".into(), json!(record.tenant_id));
    flow.insert("revision".into(), json!(record.revision));
    flow.insert("disabled".into(), json!(record.disabled));
    flow.insert("deleted".into(), json!(record.deleted));
    flow.insert("updated".into(), json!(record.updated));
    if with_source {
        flow.insert("source".into(), json!(record.source));
    }
    Value::Object(flow)
}

async fn stored(
    state: &AppState,
    namespace: &str,
    id: &str,
    revision: Option<i32>,
) -> Result<FlowRecord, ApiError> {
    state
        .engine
        .repositories()
        .flows
        .find(DEFAULT_TENANT, namespace, id, revision)
        .await?
        .ok_or_else(|| match revision {
            Some(r) => ApiError::not_found(format!("flow {namespace}.{id} revision {r} not found")),
            None => ApiError::not_found(format!("flow {namespace}.{id} not found")),
        })
}

/// `POST /flows`: create a flow from its YAML source; 409 when it exists, 422 when invalid.
#[utoipa::path(
    post,
    path = "/api/v1/main/flows",
    tag = "Flows",
    operation_id = "createFlow",
    request_body(content = String, content_type = "application/x-yaml", description = "The flow's YAML source"),
    responses(
        (status = 200, description = "The created flow, with its source", body = crate::api::openapi::FlowBody),
        (status = 409, description = "The flow exists: update it with PUT", body = crate::api::openapi::ErrorBody),
        (status = 413, description = "The body is over the limit", body = crate::api::openapi::ErrorBody),
        (status = 422, description = "Invalid flow: one error per problem, with path, line and column", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong credentials", body = crate::api::openapi::ErrorBody),
    )
)]
pub(crate) async fn create(
    State(state): State<Arc<AppState>>,
    body: String,
) -> Result<Json<Value>, ApiError> {
    let flow =
        parse_flow(&body, state.engine.registry()).map_err(|e| ApiError::invalid_flow(&e))?;
    if state
        .engine
        .repositories()
        .flows
        .find(&flow.tenant_id, &flow.namespace, &flow.id, None)
        .await?
        .is_some()
    {
        return Err(ApiError::conflict(format!(
            "flow {}.{} already exists: update it with PUT /api/v1/main/flows/{}/{}",
            flow.namespace, flow.id, flow.namespace, flow.id
        )));
    }
    state.engine.deploy(&body).await?;
    let record = stored(&state, &flow.namespace, &flow.id, None).await?;
    Ok(Json(flow_json(&record, true)))
}

/// `PUT /flows/{namespace}/{id}`: a new revision from YAML (unchanged source: same revision); the
/// source must name the same flow; 404 when the flow does not exist.
#[utoipa::path(
    put,
    path = "/api/v1/main/flows/{namespace}/{id}",
    tag = "Flows",
    operation_id = "updateFlow",
    params(
        ("namespace" = String, Path, description = "Namespace of the flow"),
        ("id" = String, Path, description = "Flow id"),
    ),
    request_body(content = String, content_type = "application/x-yaml", description = "The flow's YAML source"),
    responses(
        (status = 200, description = "The flow (a new revision when the source changed)", body = crate::api::openapi::FlowBody),
        (status = 404, description = "No such flow", body = crate::api::openapi::ErrorBody),
        (status = 422, description = "Invalid flow, or it names another flow", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong credentials", body = crate::api::openapi::ErrorBody),
    )
)]
pub(crate) async fn update(
    State(state): State<Arc<AppState>>,
    Path((namespace, id)): Path<(String, String)>,
    body: String,
) -> Result<Json<Value>, ApiError> {
    let flow =
        parse_flow(&body, state.engine.registry()).map_err(|e| ApiError::invalid_flow(&e))?;
    if flow.namespace != namespace || flow.id != id {
        return Err(ApiError::unprocessable(format!(
            "the source defines flow {}.{}, not {namespace}.{id}: a flow's id and namespace cannot change",
            flow.namespace, flow.id
        )));
    }
    stored(&state, &namespace, &id, None).await?;
    state.engine.deploy(&body).await?;
    let record = stored(&state, &namespace, &id, None).await?;
    Ok(Json(flow_json(&record, true)))
}

/// `GET /flows/{namespace}/{id}`: `source=true` adds the YAML, `revision=N` reads an older revision.
#[utoipa::path(
    get,
    path = "/api/v1/main/flows/{namespace}/{id}",
    tag = "Flows",
    operation_id = "getFlow",
    params(
        ("namespace" = String, Path, description = "Namespace of the flow"),
        ("id" = String, Path, description = "Flow id"),
        ("source" = Option<bool>, Query, description = "true: include the YAML source"),
        ("revision" = Option<i32>, Query, description = "An older revision"),
    ),
    responses(
        (status = 200, description = "The flow", body = crate::api::openapi::FlowBody),
        (status = 400, description = "Invalid query parameter", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "No such flow or revision", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong credentials", body = crate::api::openapi::ErrorBody),
    )
)]
pub(crate) async fn get_flow(
    State(state): State<Arc<AppState>>,
    Path((namespace, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let params = Params::parse(query.as_deref(), &["source", "revision"])?;
    let with_source = params.bool("source", false)?;
    let revision = match params.one("revision") {
        None => None,
        Some(r) => Some(r.parse::<i32>().map_err(|_| {
            ApiError::bad_request(format!(
                "query parameter 'revision': '{r}' is not an integer"
            ))
        })?),
    };
    let record = stored(&state, &namespace, &id, revision).await?;
    Ok(Json(flow_json(&record, with_source)))
}

/// `DELETE /flows/{namespace}/{id}`: 204; 404 when absent.
#[utoipa::path(
    delete,
    path = "/api/v1/main/flows/{namespace}/{id}",
    tag = "Flows",
    operation_id = "deleteFlow",
    params(
        ("namespace" = String, Path, description = "Namespace of the flow"),
        ("id" = String, Path, description = "Flow id"),
    ),
    responses(
        (status = 204, description = "Deleted (its revisions stay)"),
        (status = 404, description = "No such flow", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong credentials", body = crate::api::openapi::ErrorBody),
    )
)]
pub(crate) async fn delete_flow(
    State(state): State<Arc<AppState>>,
    Path((namespace, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state.engine.delete_flow(&namespace, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /flows/{namespace}/{id}/revisions`: every revision, oldest first, with its source.
#[utoipa::path(
    get,
    path = "/api/v1/main/flows/{namespace}/{id}/revisions",
    tag = "Flows",
    operation_id = "listFlowRevisions",
    params(
        ("namespace" = String, Path, description = "Namespace of the flow"),
        ("id" = String, Path, description = "Flow id"),
    ),
    responses(
        (status = 200, description = "Every revision, oldest first, with its source", body = [crate::api::openapi::FlowBody]),
        (status = 404, description = "No such flow", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong credentials", body = crate::api::openapi::ErrorBody),
    )
)]
pub(crate) async fn revisions(
    State(state): State<Arc<AppState>>,
    Path((namespace, id)): Path<(String, String)>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let records = state
        .engine
        .repositories()
        .flows
        .revisions(DEFAULT_TENANT, &namespace, &id)
        .await?;
    if records.is_empty() {
        return Err(ApiError::not_found(format!(
            "flow {namespace}.{id} not found"
        )));
    }
    Ok(Json(records.iter().map(|r| flow_json(r, true)).collect()))
}

/// `GET /flows/search`: `{"results": [...], "total": N}`.
#[utoipa::path(
    get,
    path = "/api/v1/main/flows/search",
    tag = "Flows",
    operation_id = "searchFlows",
    params(
        ("q" = Option<String>, Query, description = "Text in the id or namespace"),
        ("namespace" = Option<String>, Query, description = "Namespace, with its children"),
        ("labels" = Option<String>, Query, description = "key:value, repeatable"),
        ("page" = Option<u32>, Query, description = "Page, from 1 (default 1)"),
        ("size" = Option<u32>, Query, description = "Page size, 1 to 10000 (default 25)"),
        ("sort" = Option<String>, Query, description = "field:asc or field:desc, repeatable"),
    ),
    responses(
        (status = 200, description = "A page of flows", body = crate::api::openapi::PagedFlowsBody),
        (status = 400, description = "Unknown or invalid query parameter, or sort field", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong credentials", body = crate::api::openapi::ErrorBody),
    )
)]
pub(crate) async fn search(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let params = Params::parse(
        query.as_deref(),
        &["q", "namespace", "labels", "page", "size", "sort"],
    )?;
    let page = params.pageable()?;
    let query = FlowQuery {
        tenant_id: None,
        q: params.one("q").map(str::to_string),
        namespace: params.one("namespace").map(str::to_string),
        labels: params.labels()?,
    };
    let found = state
        .engine
        .repositories()
        .flows
        .search(&query, &page)
        .await?;
    Ok(Json(json!({
        "results": found.results.iter().map(|r| flow_json(r, false)).collect::<Vec<_>>(),
        "total": found.total,
    })))
}

/// `GET /flows/distinct-namespaces`: sorted namespaces that hold flows.
#[utoipa::path(
    get,
    path = "/api/v1/main/flows/distinct-namespaces",
    tag = "Flows",
    operation_id = "listDistinctNamespaces",
    responses(
        (status = 200, description = "Sorted namespaces that hold flows", body = [String]),
        (status = 401, description = "Missing or wrong credentials", body = crate::api::openapi::ErrorBody),
    )
)]
pub(crate) async fn distinct_namespaces(
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<String>>, ApiError> {
    Ok(Json(
        state
            .engine
            .repositories()
            .flows
            .distinct_namespaces(DEFAULT_TENANT)
            .await?,
    ))
}

/// `POST /flows/validate`: one report per YAML document, Kestra's shape (`index`, `flow`,
/// `namespace`, `constraints` as one text, or absent when valid) plus `errors` with line, column and
/// path of each problem. Always 200: the reports say what is wrong.
#[utoipa::path(
    post,
    path = "/api/v1/main/flows/validate",
    tag = "Flows",
    operation_id = "validateFlows",
    request_body(content = String, content_type = "application/x-yaml", description = "One or more YAML flow documents separated by ---"),
    responses(
        (status = 200, description = "One report per document (always 200)", body = [crate::api::openapi::ValidateReportBody]),
        (status = 401, description = "Missing or wrong credentials", body = crate::api::openapi::ErrorBody),
    )
)]
pub(crate) async fn validate(State(state): State<Arc<AppState>>, body: String) -> Json<Vec<Value>> {
    let reports = parse_flows(&body, state.engine.registry())
        .into_iter()
        .enumerate()
        .map(|(index, result)| match result {
            Ok(flow) => json!({
                "index": index,
                "flow": flow.id,
                "namespace": flow.namespace,
                "outdated": false,
                "deprecationPaths": [],
                "warnings": [],
                "infos": [],
                "errors": [],
            }),
            Err(errors) => json!({
                "index": index,
                "outdated": false,
                "deprecationPaths": [],
                "warnings": [],
                "infos": [],
                "constraints": errors.to_string(),
                "errors": flow_errors_json(&errors),
            }),
        })
        .collect();
    Json(reports)
}
