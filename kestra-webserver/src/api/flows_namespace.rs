//! Flows of one namespace: `GET /flows/{namespace}` (the namespace's flows, not its children's) and
//! `POST /flows/{namespace}` (bulk update from a multi-document YAML body).
//!
//! The bulk update is all-or-nothing on validation: every document is parsed first, and any invalid
//! document, a flow of another namespace, or the same id twice is a 422 naming the document (its
//! index, from 0) and changes nothing. Then each flow is deployed (a new revision only when its
//! source changed) and, unless `delete=false`, the namespace's flows missing from the body are
//! deleted (their revisions stay), as Kestra does.

use std::collections::HashSet;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use kestra_core::flow::parse_flow;
use kestra_core::model::DEFAULT_TENANT;
use kestra_core::repository::{FlowQuery, FlowRecord, Pageable};
use serde_json::{Value, json};

use super::Params;
use super::flows::flow_json;
use crate::error::flow_errors_json;
use crate::{ApiError, AppState};

/// The documents of a multi-document YAML text, each with its own source: split at `---` lines
/// (a line that is `---`, or starts with `--- `, at column 0 can only be a document marker) and at
/// `...` document ends; documents holding only blanks and comments are left out.
pub(crate) fn split_documents(source: &str) -> Vec<String> {
    let mut documents = Vec::new();
    let mut current = String::new();
    let mut flush = |current: &mut String| {
        let meaningful = current.lines().any(|l| {
            let t = l.trim();
            !t.is_empty() && !t.starts_with('#')
        });
        if meaningful {
            documents.push(std::mem::take(current));
        } else {
            current.clear();
        }
    };
    for line in source.split_inclusive('\n') {
        let bare = line.trim_end();
        if bare == "---" || bare == "..." {
            flush(&mut current);
        } else if let Some(rest) = bare.strip_prefix("--- ") {
            flush(&mut current);
            current.push_str(rest.trim_start());
            current.push('\n');
        } else {
            current.push_str(line);
        }
    }
    flush(&mut current);
    documents
}

/// Every stored flow of exactly `namespace` (not its children), sorted by id.
async fn flows_of(state: &AppState, namespace: &str) -> Result<Vec<FlowRecord>, ApiError> {
    let query = FlowQuery {
        tenant_id: Some(DEFAULT_TENANT.to_string()),
        q: None,
        namespace: Some(namespace.to_string()),
        labels: Vec::new(),
    };
    let size = 500;
    let mut out = Vec::new();
    let mut page = 1;
    loop {
        let found = state
            .engine
            .repositories()
            .flows
            .search(&query, &Pageable::new(page, size))
            .await?;
        let count = found.results.len() as u64;
        out.extend(
            found
                .results
                .into_iter()
                .filter(|r| r.namespace == namespace),
        );
        if count < u64::from(size) || u64::from(page) * u64::from(size) >= found.total {
            break;
        }
        page += 1;
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// `GET /flows/{namespace}`: the namespace's flows (without source).
#[utoipa::path(
    get,
    path = "/api/v1/main/flows/{namespace}",
    tag = "Flows",
    operation_id = "listFlowsByNamespace",
    params(
        ("namespace" = String, Path, description = "The namespace"),
    ),
    responses(
        (status = 200, description = "The namespace's flows", content_type = "application/json"),
        (status = 400, description = "Invalid query parameter", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong credentials", body = crate::api::openapi::ErrorBody),
    )
)]
pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    Path(namespace): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Vec<Value>>, ApiError> {
    Params::parse(query.as_deref(), &[])?;
    Ok(Json(
        flows_of(&state, &namespace)
            .await?
            .iter()
            .map(|r| flow_json(r, false))
            .collect(),
    ))
}

/// `POST /flows/{namespace}`: create or update every flow of the body, then (unless `delete=false`)
/// delete the namespace's other flows. Answers the namespace's flows in the body, with source.
#[utoipa::path(
    post,
    path = "/api/v1/main/flows/{namespace}",
    tag = "Flows",
    operation_id = "updateFlowsInNamespaceFromYaml",
    params(
        ("namespace" = String, Path, description = "The namespace"),
        ("delete" = Option<bool>, Query, description = "Delete the namespace's flows missing from the body (default true)"),
    ),
    request_body(content_type = "application/x-yaml", description = "Flows as multi-document YAML"),
    responses(
        (status = 200, description = "The namespace's flows after the update", content_type = "application/json"),
        (status = 400, description = "Invalid query parameter", body = crate::api::openapi::ErrorBody),
        (status = 422, description = "A document is not a valid flow of this namespace", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong credentials", body = crate::api::openapi::ErrorBody),
    )
)]
pub(crate) async fn update(
    State(state): State<Arc<AppState>>,
    Path(namespace): Path<String>,
    RawQuery(query): RawQuery,
    body: String,
) -> Result<Json<Vec<Value>>, ApiError> {
    let params = Params::parse(query.as_deref(), &["delete"])?;
    let delete_missing = params.bool("delete", true)?;
    let documents = split_documents(&body);
    let mut ids = HashSet::new();
    let mut errors = Vec::new();
    for (index, document) in documents.iter().enumerate() {
        match parse_flow(document, state.engine.registry()) {
            Ok(flow) if flow.namespace != namespace => errors.push(json!({
                "path": format!("[{index}].namespace"),
                "message": format!(
                    "document {index}: flow {} is in namespace '{}', not '{namespace}'",
                    flow.id, flow.namespace
                ),
            })),
            Ok(flow) => {
                if !ids.insert(flow.id.clone()) {
                    errors.push(json!({
                        "path": format!("[{index}].id"),
                        "message": format!("document {index}: flow id '{}' appears twice", flow.id),
                    }));
                }
            }
            Err(e) => {
                for mut error in flow_errors_json(&e) {
                    error["message"] = json!(format!(
                        "document {index}: {}",
                        error["message"].as_str().unwrap_or_default()
                    ));
                    errors.push(error);
                }
            }
        }
    }
    if !errors.is_empty() {
        let summary = errors
            .iter()
            .filter_map(|e| e["message"].as_str())
            .collect::<Vec<_>>()
            .join("; ");
        return Err(ApiError {
            status: axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            message: format!("Invalid entity: {summary}"),
            errors,
        });
    }
    for document in &documents {
        state.engine.deploy(document).await?;
    }
    let mut deleted = Vec::new();
    let stored = flows_of(&state, &namespace).await?;
    if delete_missing {
        for record in stored.iter().filter(|r| !ids.contains(&r.id)) {
            state.engine.delete_flow(&namespace, &record.id).await?;
            deleted.push(record.id.clone());
        }
    }
    tracing::info!(%namespace, updated = ids.len(), ?deleted, "namespace flows updated through the API");
    Ok(Json(
        stored
            .iter()
            .filter(|r| ids.contains(&r.id))
            .map(|r| flow_json(r, true))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_split_at_markers_only() {
        let text = "id: a\nnamespace: n\ntasks:\n  - id: t\n    script: |\n      ---\n      x\n---\n# only a comment\n---\nid: b\n...\n--- id: c\nnamespace: n\n";
        let docs = split_documents(text);
        assert_eq!(docs.len(), 3, "{docs:?}");
        assert!(docs[0].contains("      ---\n"));
        assert_eq!(docs[1], "id: b\n");
        assert_eq!(docs[2], "id: c\nnamespace: n\n");
    }
}
