//! Flow pages: list and search, a flow (topology, source), the editor, the run form.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, Request, State};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use kestra_core::model::DEFAULT_TENANT;
use kestra_core::repository::{FlowQuery, FlowRecord, Pageable};
use kestra_core::runtime::ExecuteOptions;
use maud::{Markup, html};
use serde_json::Value;

use super::{Nav, UiError, enc, field, labels, page};
use crate::api::Params;
use crate::{ApiError, AppState};

/// What a new flow starts from in the editor.
const NEW_FLOW: &str = "id: hello\nnamespace: company.team\n\ninputs:\n  - id: name\n    type: STRING\n    defaults: world\n\ntasks:\n  - id: greet\n    type: io.kestra.plugin.core.log.Log\n    message: \"Hello, {{ inputs.name }}!\"\n";

async fn stored(state: &AppState, namespace: &str, id: &str) -> Result<FlowRecord, UiError> {
    state
        .engine
        .repositories()
        .flows
        .find(DEFAULT_TENANT, namespace, id, None)
        .await?
        .ok_or_else(|| {
            UiError(ApiError::not_found(format!(
                "flow {namespace}.{id} not found"
            )))
        })
}

fn flow_url(namespace: &str, id: &str) -> String {
    format!("/ui/flows/{}/{}", enc(namespace), enc(id))
}

fn description(record: &FlowRecord) -> Option<&str> {
    record.flow.get("description").and_then(Value::as_str)
}

/// `/ui/flows`: `q`, `namespace`, `page`.
pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    RawQuery(raw): RawQuery,
) -> Result<Markup, UiError> {
    let params = Params::parse(raw.as_deref(), &["q", "namespace", "page"])?;
    let q = params.one("q").map(str::to_string);
    let namespace = params.one("namespace").map(str::to_string);
    let page_number = params
        .one("page")
        .and_then(|p| p.parse::<u32>().ok())
        .unwrap_or(1)
        .max(1);
    let query = FlowQuery {
        q: q.clone(),
        namespace: namespace.clone(),
        ..FlowQuery::default()
    };
    let repositories = state.engine.repositories();
    let found = repositories
        .flows
        .search(&query, &Pageable::new(page_number, 50))
        .await?;
    let namespaces = repositories
        .flows
        .distinct_namespaces(DEFAULT_TENANT)
        .await?;
    Ok(page(
        "Flows",
        Nav::Flows,
        html! {
            div.titlebar {
                h1 { "Flows" }
                a.button.primary #new-flow href="/ui/flows/new" { "+ Create" }
            }
            form.filters method="get" action="/ui/flows"
                hx-get="/ui/flows" hx-target="#flow-table" hx-select="#flow-table" hx-swap="outerHTML"
                hx-trigger="input changed delay:300ms from:find input, change from:find select" hx-push-url="true" {
                input type="search" name="q" placeholder="Search flows" value=(field(&q));
                select name="namespace" {
                    option value="" { "All namespaces" }
                    @for ns in &namespaces {
                        option value=(ns) selected[namespace.as_deref() == Some(ns.as_str())] { (ns) }
                    }
                }
                button type="submit" { "Search" }
            }
            div #flow-table.card {
                p.muted { (found.total) " flows" }
                table {
                    thead { tr { th { "Id" } th { "Namespace" } th { "Revision" } th { "Labels" } th { "Description" } th {} } }
                    tbody {
                        @for r in &found.results {
                            tr {
                                td { a.strong href=(flow_url(&r.namespace, &r.id)) { (r.id) } @if r.disabled { " " span.tag { "disabled" } } }
                                td.mono { (r.namespace) }
                                td { (r.revision) }
                                td { (labels(&r.labels)) }
                                td.desc { (description(r).unwrap_or("")) }
                                td.actions { a.button.small href={ (flow_url(&r.namespace, &r.id)) "/run" } { "Run" } }
                            }
                        }
                    }
                }
                @if found.total > u64::from(page_number) * 50 {
                    a.button href={ "/ui/flows?page=" (page_number + 1) "&q=" (enc(field(&q))) "&namespace=" (enc(field(&namespace))) } { "Next page" }
                }
            }
        },
    ))
}

/// A list of tasks (nested): id, type, and each branch of a flowable task.
fn topology(tasks: &[Value]) -> Markup {
    html! {
        ul.topology {
            @for task in tasks {
                li {
                    div.node {
                        span.tid { (task.get("id").and_then(Value::as_str).unwrap_or("?")) }
                        span.ttype { (short_type(task.get("type").and_then(Value::as_str).unwrap_or(""))) }
                    }
                    @for (branch, children) in branches(task) {
                        div.branch {
                            span.blabel { (branch) }
                            (topology(&children))
                        }
                    }
                }
            }
        }
    }
}

/// `io.kestra.plugin.core.log.Log` -> `log.Log` (the full type in the title).
fn short_type(t: &str) -> String {
    let parts: Vec<&str> = t.rsplitn(3, '.').collect();
    match parts.as_slice() {
        [name, package, _] => format!("{package}.{name}"),
        _ => t.to_string(),
    }
}

/// The child task lists of a task: any property that is a list of tasks (objects with `id` and
/// `type`), and each case of a map of such lists (Switch's `cases`).
fn branches(task: &Value) -> Vec<(String, Vec<Value>)> {
    let is_tasks = |v: &Value| {
        v.as_array().is_some_and(|a| {
            !a.is_empty()
                && a.iter()
                    .all(|t| t.get("id").is_some() && t.get("type").is_some())
        })
    };
    let mut out = Vec::new();
    if let Some(map) = task.as_object() {
        for (key, v) in map {
            if is_tasks(v) {
                out.push((key.clone(), v.as_array().cloned().unwrap_or_default()));
            } else if let Some(cases) = v.as_object() {
                for (case, list) in cases {
                    if is_tasks(list) {
                        out.push((
                            format!("{key}.{case}"),
                            list.as_array().cloned().unwrap_or_default(),
                        ));
                    }
                }
            }
        }
    }
    out
}

/// The flow's inputs from its JSON.
pub(crate) fn inputs(record: &FlowRecord) -> Vec<Value> {
    record
        .flow
        .get("inputs")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// `/ui/flows/{namespace}/{id}`.
pub(crate) async fn show(
    State(state): State<Arc<AppState>>,
    Path((namespace, id)): Path<(String, String)>,
) -> Result<Markup, UiError> {
    let record = stored(&state, &namespace, &id).await?;
    let url = flow_url(&record.namespace, &record.id);
    let root = Value::Object(
        record
            .flow
            .as_object()
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| {
                        matches!(
                            k.as_str(),
                            "tasks" | "errors" | "finally" | "afterExecution"
                        )
                    })
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default(),
    );
    let inputs = inputs(&record);
    Ok(page(
        &format!("{}.{}", record.namespace, record.id),
        Nav::Flows,
        html! {
            div.titlebar {
                div {
                    div.crumbs { a href="/ui/flows" { "Flows" } " / " a href={ "/ui/flows?namespace=" (enc(&record.namespace)) } { (record.namespace) } }
                    h1 { (record.id) @if record.disabled { " " span.tag { "disabled" } } }
                }
                div.buttons {
                    a.button href={ "/ui/executions?namespace=" (enc(&record.namespace)) "&flowId=" (enc(&record.id)) } { "Executions" }
                    a.button #edit-flow href={ (url) "/edit" } { "Edit" }
                    a.button.primary #run-flow href={ (url) "/run" } { "Run" }
                }
            }
            div.grid2 {
                div.card {
                    h2 { "Overview" }
                    dl.meta {
                        dt { "Revision" } dd { (record.revision) }
                        dt { "Updated" } dd { (super::date(record.updated)) }
                        @if let Some(d) = description(&record) { dt { "Description" } dd #flow-description { (d) } }
                        @if !record.labels.is_empty() { dt { "Labels" } dd #flow-labels { (labels(&record.labels)) } }
                    }
                    @if !inputs.is_empty() {
                        h3 { "Inputs" }
                        table {
                            thead { tr { th { "Id" } th { "Type" } th { "Required" } th { "Default" } th { "Description" } } }
                            tbody {
                                @for i in &inputs {
                                    tr {
                                        td.mono { (i.get("id").and_then(Value::as_str).unwrap_or("")) }
                                        td { (i.get("type").and_then(Value::as_str).unwrap_or("")) }
                                        td { (if i.get("required").and_then(Value::as_bool).unwrap_or(true) { "yes" } else { "no" }) }
                                        td.mono { (i.get("defaults").map(|d| d.to_string()).unwrap_or_default()) }
                                        td { (i.get("description").and_then(Value::as_str).unwrap_or("")) }
                                    }
                                }
                            }
                        }
                    }
                    h3 { "Topology" }
                    div #topology {
                        @for (branch, tasks) in branches(&root) {
                            div.branch.top { span.blabel { (branch) } (topology(&tasks)) }
                        }
                    }
                }
                div.card {
                    h2 { "Source" }
                    pre.source #flow-source { (record.source) }
                }
            }
        },
    ))
}

fn editor(title: &str, source: &str, existing: Option<&FlowRecord>) -> Markup {
    let (mode, namespace, id) = match existing {
        Some(r) => ("update", r.namespace.as_str(), r.id.as_str()),
        None => ("create", "", ""),
    };
    page(
        title,
        Nav::Flows,
        html! {
            div.titlebar {
                div {
                    div.crumbs { a href="/ui/flows" { "Flows" } @if let Some(r) = existing { " / " a href=(flow_url(&r.namespace, &r.id)) { (r.namespace) "." (r.id) } } }
                    h1 { (title) }
                }
                div.buttons {
                    span #editor-status.muted { "" }
                    button #save.primary type="button" { "Save" }
                }
            }
            div #editor.editor data-mode=(mode) data-namespace=(namespace) data-id=(id) {
                div.gutter #gutter aria-hidden="true" {}
                textarea #source spellcheck="false" autocapitalize="off" autocomplete="off" wrap="off" { (source) }
            }
            div #problems.card.problems {
                p.muted { "Validating as you type." }
            }
        },
    )
}

/// `/ui/flows/new`: the editor with a starter flow.
pub(crate) async fn new_flow() -> Markup {
    editor("New flow", NEW_FLOW, None)
}

/// `/ui/flows/{namespace}/{id}/edit`.
pub(crate) async fn edit(
    State(state): State<Arc<AppState>>,
    Path((namespace, id)): Path<(String, String)>,
) -> Result<Markup, UiError> {
    let record = stored(&state, &namespace, &id).await?;
    Ok(editor(
        &format!("Edit {}", record.id),
        &record.source,
        Some(&record),
    ))
}

/// One field of a form from an input's declaration: named `{name_prefix}{id}`, with the HTML id
/// `{id_prefix}{id}` (unique on its page), marked required when the input is and `enforce_required`
/// (the backfill form does not: the trigger may give the input). The run form and the backfill
/// form use it.
pub(crate) fn input_field(
    input: &Value,
    name_prefix: &str,
    id_prefix: &str,
    enforce_required: bool,
) -> Markup {
    let id = input.get("id").and_then(Value::as_str).unwrap_or("");
    let kind = input
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("STRING")
        .to_ascii_uppercase();
    let required = input
        .get("required")
        .and_then(Value::as_bool)
        .unwrap_or(true)
        && input.get("defaults").is_none()
        && enforce_required;
    let prefill = input
        .get("prefill")
        .or_else(|| input.get("defaults"))
        .map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .unwrap_or_default();
    let values: Vec<String> = input
        .get("values")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|v| v.as_str().map(str::to_string).unwrap_or(v.to_string()))
                .collect()
        })
        .unwrap_or_default();
    let shown = id;
    let name = format!("{id_prefix}{id}");
    let id = format!("{name_prefix}{id}");
    let id = id.as_str();
    html! {
        label.field {
            span.fname { (shown) @if required { span.req { " *" } } span.ftype { (kind) } }
            @if let Some(d) = input.get("description").and_then(Value::as_str) { span.fdesc { (d) } }
            @match kind.as_str() {
                "FILE" => { input id=(name) type="file" name=(id) required[required]; }
                "BOOL" | "BOOLEAN" => {
                    select id=(name) name=(id) {
                        @if !required { option value="" { "(default)" } }
                        option value="true" selected[prefill == "true"] { "true" }
                        option value="false" selected[prefill == "false"] { "false" }
                    }
                }
                "SELECT" | "ENUM" if !values.is_empty() => {
                    select id=(name) name=(id) required[required] {
                        @if !required { option value="" { "(default)" } }
                        @for v in &values { option value=(v) selected[*v == prefill] { (v) } }
                    }
                }
                "INT" | "FLOAT" => { input id=(name) type="number" step="any" name=(id) value=(prefill) required[required]; }
                "JSON" | "YAML" | "ARRAY" | "MULTISELECT" => { textarea id=(name) name=(id) rows="4" required[required] { (prefill) } }
                _ => { input id=(name) type="text" name=(id) value=(prefill) required[required]; }
            }
        }
    }
}

/// `/ui/flows/{namespace}/{id}/run`: a form from the flow's inputs.
pub(crate) async fn run_form(
    State(state): State<Arc<AppState>>,
    Path((namespace, id)): Path<(String, String)>,
) -> Result<Markup, UiError> {
    let record = stored(&state, &namespace, &id).await?;
    let url = flow_url(&record.namespace, &record.id);
    let inputs = inputs(&record);
    Ok(page(
        &format!("Run {}", record.id),
        Nav::Flows,
        html! {
            div.titlebar {
                div {
                    div.crumbs { a href="/ui/flows" { "Flows" } " / " a href=(url) { (record.namespace) "." (record.id) } }
                    h1 { "Run " (record.id) }
                }
            }
            div.card.narrow {
                form #run-form hx-post={ (url) "/run" } hx-encoding="multipart/form-data" hx-target="#run-errors" {
                    @if inputs.is_empty() { p.muted { "This flow has no inputs." } }
                    @for i in &inputs { (input_field(i, "", "input-", true)) }
                    label.field {
                        span.fname { "Labels" span.ftype { "key:value, one per line" } }
                        textarea #run-labels name=(RUN_LABELS) rows="2" placeholder="team:data" {}
                    }
                    div #run-errors {}
                    button #execute.primary type="submit" { "Execute" }
                }
            }
        },
    ))
}

/// The run form's labels field: a name no input id can take (ids start with a letter or digit).
const RUN_LABELS: &str = "_labels";

/// `POST /ui/flows/{namespace}/{id}/run` (multipart, from htmx): create the execution with its
/// labels (field `_labels`, `key:value` lines) and go to its page; invalid inputs or labels come
/// back as a message in the form.
pub(crate) async fn run(
    State(state): State<Arc<AppState>>,
    Path((namespace, id)): Path<(String, String)>,
    request: Request,
) -> Response {
    let target = crate::api::executions::UploadTarget::new(&namespace, &id);
    let mut inputs = match crate::api::executions::form_inputs(&state, request, Some(&target)).await
    {
        Ok(inputs) => inputs,
        Err(e) => return problem(&e),
    };
    let labels = match inputs.shift_remove(RUN_LABELS) {
        Some(kestra_core::inputs::RawInput::Text(text)) => {
            match super::form_labels("labels", &text) {
                Ok(labels) => labels,
                Err(e) => return problem(&e),
            }
        }
        Some(_) => return problem(&ApiError::bad_request("field 'labels' is text, not a file")),
        None => Vec::new(),
    };
    // Untouched file fields are already left out.
    let inputs = inputs
        .into_iter()
        .filter(|(_, v)| !matches!(v, kestra_core::inputs::RawInput::Text(t) if t.is_empty()))
        .collect();
    let options = ExecuteOptions {
        execution_id: Some(target.execution_id.clone()),
        labels,
        ..ExecuteOptions::default()
    };
    match state
        .engine
        .execute_with(&namespace, &id, inputs, options)
        .await
    {
        Ok(execution) => {
            if let Err(e) = super::executions::find_soon(&state, &execution.id).await {
                return problem(&e);
            }
            let mut response = axum::http::StatusCode::NO_CONTENT.into_response();
            if let Ok(value) =
                HeaderValue::from_str(&format!("/ui/executions/{}", enc(&execution.id)))
            {
                response.headers_mut().insert("hx-redirect", value);
            }
            response
        }
        Err(e) => problem(&ApiError::from(e)),
    }
}

/// An error as a fragment for htmx (answered 200 so that htmx swaps it in).
fn problem(e: &ApiError) -> Response {
    html! {
        div.alert.alert-error {
            p { (e.message) }
            @for err in &e.errors {
                p.mono { (err.get("path").and_then(Value::as_str).unwrap_or("")) ": " (err.get("message").and_then(Value::as_str).unwrap_or("")) }
            }
        }
    }
    .into_response()
}
