//! Namespaces (their flows and KV entries) and triggers: pages over the repositories and internal
//! storage, with htmx actions that call the same code as the API: enable, disable and unlock a
//! trigger (through the queue's trigger unit, under the trigger's claim), start a backfill on a
//! `Schedule` (the engine's backfill, with inputs and labels), pause, resume or delete a running
//! backfill (the API's code), set and delete a KV entry.
//! An action answers the changed fragment (a trigger's row, the KV card) with any error shown
//! inline, escaped, and with status 200 so that htmx swaps it in.

use std::sync::Arc;

use axum::extract::{Form, Path, RawQuery, State};
use chrono::{DateTime, NaiveDateTime, Utc};
use kestra_core::flow::registry::TriggerType;
use kestra_core::flow::triggers::Schedule;
use kestra_core::model::{DEFAULT_TENANT, TriggerState, trigger_uid};
use kestra_core::repository::{FlowQuery, Pageable, TriggerQuery};
use kestra_core::storage::StoragePath;
use kestra_core::worker::KvStore;
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::Value;

use super::{Nav, UiError, date, enc, field, page, value};
use crate::api::triggers::BackfillAction;
use crate::api::{Params, kv, triggers};
use crate::{ApiError, AppState};

/// Most KV entries a namespace page reads.
const KV_LIMIT: usize = 500;

/// `/ui/namespaces`: every namespace that holds flows, with how many.
pub(crate) async fn list(State(state): State<Arc<AppState>>) -> Result<Markup, UiError> {
    let repositories = state.engine.repositories();
    let namespaces = repositories
        .flows
        .distinct_namespaces(DEFAULT_TENANT)
        .await?;
    let mut rows = Vec::with_capacity(namespaces.len());
    for ns in namespaces {
        let query = FlowQuery {
            namespace: Some(ns.clone()),
            ..FlowQuery::default()
        };
        let count = repositories
            .flows
            .search(&query, &Pageable::new(1, 1))
            .await?
            .total;
        rows.push((ns, count));
    }
    Ok(page(
        "Namespaces",
        Nav::Namespaces,
        html! {
            h1 { "Namespaces" }
            div.card {
                table {
                    thead { tr { th { "Namespace" } th { "Flows (with children)" } } }
                    tbody {
                        @for (ns, count) in &rows {
                            tr {
                                td { a.strong.mono href={ "/ui/namespaces/" (enc(ns)) } { (ns) } }
                                td { (count) }
                            }
                        }
                    }
                }
            }
        },
    ))
}

/// `/ui/namespaces/{namespace}`: its flows and its KV entries.
pub(crate) async fn show(
    State(state): State<Arc<AppState>>,
    Path(namespace): Path<String>,
) -> Result<Markup, UiError> {
    let flows = state
        .engine
        .repositories()
        .flows
        .search(
            &FlowQuery {
                namespace: Some(namespace.clone()),
                ..FlowQuery::default()
            },
            &Pageable::new(1, 200),
        )
        .await?;
    let kv = kv_card(&state, &namespace, None).await?;
    Ok(page(
        &namespace,
        Nav::Namespaces,
        html! {
            div.crumbs { a href="/ui/namespaces" { "Namespaces" } }
            h1.mono { (namespace) }
            div.grid2 {
                div.card {
                    h2 { "Flows" }
                    table {
                        tbody {
                            @for r in &flows.results {
                                tr {
                                    td { a.strong href={ "/ui/flows/" (enc(&r.namespace)) "/" (enc(&r.id)) } { (r.id) } }
                                    td.mono.muted { (r.namespace) }
                                }
                            }
                        }
                    }
                }
                (kv)
            }
        },
    ))
}

/// The KV card of a namespace page: its entries, each with a Delete button, a form to set a key,
/// and `error` (of the last action) inline.
async fn kv_card(
    state: &AppState,
    namespace: &str,
    error: Option<&str>,
) -> Result<Markup, UiError> {
    let kv_root = StoragePath::namespace(namespace)
        .and_then(|p| p.join("_kv"))
        .map_err(|e| ApiError::bad_request(format!("namespace '{namespace}': {e}")))?;
    let storage = state.engine.storage().clone();
    let files = storage
        .list(DEFAULT_TENANT, &kv_root)
        .await
        .map_err(|e| ApiError::internal(format!("cannot list the KV of {namespace}: {e}")))?;
    let store = KvStore::new(storage, DEFAULT_TENANT);
    let mut entries = Vec::new();
    for file in files.iter().filter(|f| !f.directory).take(KV_LIMIT) {
        let Some(key) = file.path.file_name().strip_suffix(".json") else {
            continue;
        };
        match store.get(namespace, key).await {
            Ok(Some(entry)) => entries.push((key.to_string(), Ok(entry))),
            Ok(None) => {}
            Err(e) => entries.push((key.to_string(), Err(e.to_string()))),
        }
    }
    let url = format!("/ui/namespaces/{}/kv", enc(namespace));
    Ok(html! {
        div.card #kv {
            h2 { "KV store" }
            @if let Some(error) = error { div.alert.alert-error.action-error { (error) } }
            @if entries.is_empty() { p.muted { "No keys." } }
            @else {
                table {
                    thead { tr { th { "Key" } th { "Value" } th { "Type" } th { "Updated" } th { "Expires" } th {} } }
                    tbody {
                        @for (key, entry) in &entries {
                            tr {
                                td.mono { (key) }
                                @match entry {
                                    Ok(e) => {
                                        td { (value(&e.value, None)) }
                                        td { (e.r#type.as_deref().unwrap_or("")) }
                                        td { (date(e.update_date)) }
                                        td { (e.expiration_date.map(date).unwrap_or_default()) }
                                    }
                                    Err(message) => { td.alert-error colspan="4" { (message) } }
                                }
                                td {
                                    form.kv-delete hx-post={ (url) "/delete" } hx-target="#kv" hx-swap="outerHTML" {
                                        input type="hidden" name="key" value=(key);
                                        button type="submit" { "Delete" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            form #kv-set.filters hx-post=(url) hx-target="#kv" hx-swap="outerHTML" {
                input type="text" name="key" placeholder="Key" required;
                input type="text" name="value" placeholder="Value (number, true, JSON, date, text...)";
                input type="text" name="ttl" placeholder="TTL, e.g. PT1H (optional)";
                button type="submit" { "Set" }
            }
        }
    })
}

/// The form of the KV card's Set.
#[derive(Deserialize)]
pub(crate) struct KvSetForm {
    key: String,
    #[serde(default)]
    value: String,
    #[serde(default)]
    ttl: Option<String>,
}

/// The form of a KV entry's Delete.
#[derive(Deserialize)]
pub(crate) struct KvDeleteForm {
    key: String,
}

/// `POST /ui/namespaces/{namespace}/kv` (form: `key`, `value`, `ttl`): set a key as the API's PUT
/// does (the value typed as Kestra types it); answers the KV card.
pub(crate) async fn kv_set(
    State(state): State<Arc<AppState>>,
    Path(namespace): Path<String>,
    Form(form): Form<KvSetForm>,
) -> Result<Markup, UiError> {
    let ttl = form.ttl.as_deref().map(str::trim).filter(|t| !t.is_empty());
    let result = kv::set_value(
        &state,
        &namespace,
        &form.key,
        &form.value,
        ttl,
        "field 'ttl'",
    )
    .await;
    let error = match result {
        Ok((_, kind)) => {
            tracing::info!(%namespace, key = %form.key, r#type = kind, "KV entry set in the UI");
            None
        }
        Err(e) => Some(format!("cannot set key '{}': {}", form.key, e.message)),
    };
    kv_card(&state, &namespace, error.as_deref()).await
}

/// `POST /ui/namespaces/{namespace}/kv/delete` (form: `key`); answers the KV card.
pub(crate) async fn kv_delete(
    State(state): State<Arc<AppState>>,
    Path(namespace): Path<String>,
    Form(form): Form<KvDeleteForm>,
) -> Result<Markup, UiError> {
    let error = match kv::delete_value(&state, &namespace, &form.key).await {
        Ok(true) => {
            tracing::info!(%namespace, key = %form.key, "KV entry deleted in the UI");
            None
        }
        Ok(false) => Some(format!("no key '{}' to delete", form.key)),
        Err(e) => Some(format!("cannot delete key '{}': {}", form.key, e.message)),
    };
    kv_card(&state, &namespace, error.as_deref()).await
}

/// `/ui/triggers`: `q`, `namespace`.
pub(crate) async fn triggers(
    State(state): State<Arc<AppState>>,
    RawQuery(raw): RawQuery,
) -> Result<Markup, UiError> {
    let params = Params::parse(raw.as_deref(), &["q", "namespace"])?;
    let q = params.one("q").map(str::to_string);
    let namespace = params.one("namespace").map(str::to_string);
    let query = TriggerQuery {
        q: q.clone(),
        namespace: namespace.clone(),
        ..TriggerQuery::default()
    };
    let found = state
        .engine
        .repositories()
        .triggers
        .search(&query, &Pageable::new(1, 200))
        .await?;
    let mut rows = Vec::with_capacity(found.results.len());
    for t in &found.results {
        let schedule = schedule_inputs(&state, &t.namespace, &t.flow_id, &t.trigger_id).await;
        rows.push(trigger_row(t, schedule.as_deref(), None));
    }
    Ok(page(
        "Triggers",
        Nav::Triggers,
        html! {
            h1 { "Triggers" }
            form.filters method="get" action="/ui/triggers" {
                input type="search" name="q" placeholder="Flow or trigger id" value=(field(&q));
                input type="text" name="namespace" placeholder="Namespace" value=(field(&namespace));
                button type="submit" { "Search" }
            }
            div.card {
                p.muted { (found.total) " triggers" }
                table {
                    thead { tr { th { "Trigger" } th { "Flow" } th { "Last" } th { "Next" } th { "Execution" } th { "Status" } th { "Actions" } } }
                    tbody {
                        @for row in rows { (row) }
                    }
                }
            }
        },
    ))
}

/// When a trigger is defined, in the current revision of its flow, as a `Schedule` (the only kind
/// a backfill runs on): the flow's input declarations (for the backfill form); otherwise `None`.
async fn schedule_inputs(
    state: &AppState,
    namespace: &str,
    flow_id: &str,
    trigger_id: &str,
) -> Option<Vec<Value>> {
    let record = state
        .engine
        .repositories()
        .flows
        .find(DEFAULT_TENANT, namespace, flow_id, None)
        .await
        .ok()??;
    let schedule = record
        .flow
        .get("triggers")
        .and_then(Value::as_array)?
        .iter()
        .find(|t| t.get("id").and_then(Value::as_str) == Some(trigger_id))?
        .get("type")
        .and_then(Value::as_str)
        .and_then(|t| state.engine.registry().resolve_trigger(t))
        .is_some_and(|e| e.type_name == Schedule::TYPE);
    schedule.then(|| super::flows::inputs(&record))
}

/// A trigger's row of the triggers page, with its actions and `error` (of the last action) inline.
/// On a `Schedule` (`schedule`: its flow's inputs): a backfill form (range, inputs, labels) when
/// no backfill runs, Pause or Resume and Delete when one does.
fn trigger_row(t: &TriggerState, schedule: Option<&[Value]>, error: Option<&str>) -> Markup {
    let url = format!(
        "/ui/triggers/{}/{}/{}",
        enc(&t.namespace),
        enc(&t.flow_id),
        enc(&t.trigger_id)
    );
    let locked =
        t.execution_id.is_some() || t.evaluate_running_date.is_some() || t.worker_id.is_some();
    html! {
        tr.trigger {
            td.mono { (t.trigger_id) }
            td { span.muted { (t.namespace) "." } a.strong href={ "/ui/flows/" (enc(&t.namespace)) "/" (enc(&t.flow_id)) } { (t.flow_id) } }
            td { (t.date.map(date).unwrap_or_default()) }
            td { (t.next_execution_date.map(date).unwrap_or_default()) }
            td.mono { @if let Some(e) = &t.execution_id { a href={ "/ui/executions/" (enc(e)) } { (e.chars().take(8).collect::<String>()) } } }
            td {
                @if t.disabled { span.tag { "disabled" } } @else { span.tag { "enabled" } }
                @if locked { " " span.tag { "locked" } }
                @if t.evaluate_running_date.is_some() { " " span.tag { "evaluating" } }
                @if let Some(b) = &t.backfill {
                    " " span.tag.backfill { @if b.paused { "backfill paused" } @else { "backfill" } " at " (date(b.current_date)) }
                }
                @if let Some(err) = &t.error { div.alert.alert-error { (err) } }
            }
            td.actions {
                @if t.disabled {
                    button.toggle hx-post={ (url) "/enable" } hx-target="closest tr" hx-swap="outerHTML" { "Enable" }
                } @else {
                    button.toggle hx-post={ (url) "/disable" } hx-target="closest tr" hx-swap="outerHTML" { "Disable" }
                }
                " "
                button.unlock hx-post={ (url) "/unlock" } hx-target="closest tr" hx-swap="outerHTML" { "Unlock" }
                @if let Some(b) = &t.backfill {
                    " "
                    @if b.paused {
                        button.backfill-unpause hx-post={ (url) "/backfill/unpause" } hx-target="closest tr" hx-swap="outerHTML" { "Resume backfill" }
                    } @else {
                        button.backfill-pause hx-post={ (url) "/backfill/pause" } hx-target="closest tr" hx-swap="outerHTML" { "Pause backfill" }
                    }
                    " "
                    button.backfill-delete hx-post={ (url) "/backfill/delete" } hx-target="closest tr" hx-swap="outerHTML"
                        hx-confirm="Delete this backfill? No further slot of it runs." { "Delete backfill" }
                } @else if let Some(inputs) = schedule {
                    details.backfill-box {
                        summary { "Backfill" }
                        form.backfill hx-post={ (url) "/backfill" } hx-target="closest tr" hx-swap="outerHTML" {
                            label { "From (UTC) " input type="datetime-local" name="start" step="1" required; }
                            label { " to " input type="datetime-local" name="end" step="1"; }
                            @for i in inputs.iter().filter(|i| !is_file(i)) {
                                (super::flows::input_field(i, BACKFILL_INPUT, &format!("bf-{}-", t.uid()), false))
                            }
                            label.field {
                                span.fname { "Labels" span.ftype { "key:value, one per line" } }
                                textarea name="labels" rows="2" placeholder="origin:backfill" {}
                            }
                            button type="submit" { "Backfill" }
                        }
                    }
                }
                @if let Some(error) = error { div.alert.alert-error.action-error { (error) } }
            }
        }
    }
}

/// The answer of a trigger action: the row after the change, or the row as stored with the error.
async fn trigger_answer(
    state: &AppState,
    namespace: &str,
    flow_id: &str,
    trigger_id: &str,
    result: Result<TriggerState, ApiError>,
) -> Markup {
    match result {
        Ok(after) => trigger_row(
            &after,
            schedule_inputs(state, namespace, flow_id, trigger_id)
                .await
                .as_deref(),
            None,
        ),
        Err(e) => {
            tracing::info!(%namespace, %flow_id, %trigger_id, error = %e.message, "trigger action refused in the UI");
            let uid = trigger_uid(DEFAULT_TENANT, namespace, flow_id, trigger_id);
            match state.engine.repositories().triggers.find(&uid).await {
                Ok(Some(current)) => trigger_row(
                    &current,
                    schedule_inputs(state, namespace, flow_id, trigger_id)
                        .await
                        .as_deref(),
                    Some(&e.message),
                ),
                _ => html! {
                    tr.trigger {
                        td.mono { (trigger_id) }
                        td { span.muted { (namespace) "." } (flow_id) }
                        td colspan="5" { div.alert.alert-error.action-error { (e.message) } }
                    }
                },
            }
        }
    }
}

/// `POST /ui/triggers/{namespace}/{flowId}/{triggerId}/enable`.
pub(crate) async fn enable_trigger(
    State(state): State<Arc<AppState>>,
    Path((namespace, flow_id, trigger_id)): Path<(String, String, String)>,
) -> Markup {
    let result =
        triggers::set_trigger_disabled(&state, &namespace, &flow_id, &trigger_id, false).await;
    if result.is_ok() {
        tracing::info!(%namespace, %flow_id, %trigger_id, "trigger enabled in the UI");
    }
    trigger_answer(&state, &namespace, &flow_id, &trigger_id, result).await
}

/// `POST /ui/triggers/{namespace}/{flowId}/{triggerId}/disable`.
pub(crate) async fn disable_trigger(
    State(state): State<Arc<AppState>>,
    Path((namespace, flow_id, trigger_id)): Path<(String, String, String)>,
) -> Markup {
    let result =
        triggers::set_trigger_disabled(&state, &namespace, &flow_id, &trigger_id, true).await;
    if result.is_ok() {
        tracing::info!(%namespace, %flow_id, %trigger_id, "trigger disabled in the UI");
    }
    trigger_answer(&state, &namespace, &flow_id, &trigger_id, result).await
}

/// `POST /ui/triggers/{namespace}/{flowId}/{triggerId}/unlock`.
pub(crate) async fn unlock_trigger(
    State(state): State<Arc<AppState>>,
    Path((namespace, flow_id, trigger_id)): Path<(String, String, String)>,
) -> Markup {
    let result = triggers::unlock_trigger(&state, &namespace, &flow_id, &trigger_id).await;
    if result.is_ok() {
        tracing::info!(%namespace, %flow_id, %trigger_id, "trigger unlocked in the UI");
    }
    trigger_answer(&state, &namespace, &flow_id, &trigger_id, result).await
}

/// The prefix of an input's field in the backfill form (`inputs.{id}`: never `start`, `end` or
/// `labels`).
const BACKFILL_INPUT: &str = "inputs.";

/// Whether an input declaration is a FILE (not offered in the backfill form: a backfill's inputs
/// are values, not uploads).
fn is_file(input: &Value) -> bool {
    input
        .get("type")
        .and_then(Value::as_str)
        .is_some_and(|t| t.eq_ignore_ascii_case("FILE"))
}

/// A date of the backfill form; `field` names it in the error.
fn form_date(field: &str, text: &str) -> Result<DateTime<Utc>, ApiError> {
    let text = text.trim();
    if let Ok(d) = DateTime::parse_from_rfc3339(text) {
        return Ok(d.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M"] {
        if let Ok(d) = NaiveDateTime::parse_from_str(text, format) {
            return Ok(d.and_utc());
        }
    }
    Err(ApiError::bad_request(format!(
        "field '{field}': '{text}' is not a date-time (YYYY-MM-DDTHH:MM[:SS], UTC)"
    )))
}

/// `POST /ui/triggers/{namespace}/{flowId}/{triggerId}/backfill` (form: `start`, `end` as a
/// `datetime-local` input sends them (UTC, with or without seconds) or RFC 3339, empty `end`: now;
/// `inputs.{id}` for the flow's inputs, empty ones left out; `labels`, `key:value` lines): start a
/// backfill on a `Schedule` trigger, as the API's `PUT /triggers` does (the engine's backfill).
pub(crate) async fn backfill_trigger(
    State(state): State<Arc<AppState>>,
    Path((namespace, flow_id, trigger_id)): Path<(String, String, String)>,
    Form(form): Form<Vec<(String, String)>>,
) -> Markup {
    let result = async {
        let one = |name: &str| {
            form.iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.trim())
        };
        let start = form_date(
            "start",
            one("start").ok_or_else(|| ApiError::bad_request("field 'start' is required"))?,
        )?;
        let end = match one("end") {
            None | Some("") => None,
            Some(end) => Some(form_date("end", end)?),
        };
        let labels = super::form_labels("labels", one("labels").unwrap_or(""))?;
        let mut inputs = serde_json::Map::new();
        for (key, value) in &form {
            if let Some(id) = key.strip_prefix(BACKFILL_INPUT)
                && !value.is_empty()
            {
                inputs.insert(id.to_string(), Value::String(value.clone()));
            }
        }
        let request = kestra_core::scheduler::BackfillRequest {
            start,
            end,
            inputs,
            labels,
        };
        let started = state
            .engine
            .backfill(&namespace, &flow_id, &trigger_id, request)
            .await?;
        tracing::info!(%namespace, %flow_id, %trigger_id, %start, "backfill started in the UI");
        Ok::<_, ApiError>(started)
    }
    .await;
    trigger_answer(&state, &namespace, &flow_id, &trigger_id, result).await
}

/// A change to a trigger's running backfill from its row; answers the row.
async fn backfill_change(
    state: &AppState,
    namespace: &str,
    flow_id: &str,
    trigger_id: &str,
    action: BackfillAction,
) -> Markup {
    let result = triggers::change_backfill(state, namespace, flow_id, trigger_id, action).await;
    if result.is_ok() {
        tracing::info!(%namespace, %flow_id, %trigger_id, action = action.verb(), "backfill changed in the UI");
    }
    trigger_answer(state, namespace, flow_id, trigger_id, result).await
}

/// `POST /ui/triggers/{namespace}/{flowId}/{triggerId}/backfill/pause`.
pub(crate) async fn pause_backfill(
    State(state): State<Arc<AppState>>,
    Path((namespace, flow_id, trigger_id)): Path<(String, String, String)>,
) -> Markup {
    backfill_change(
        &state,
        &namespace,
        &flow_id,
        &trigger_id,
        BackfillAction::Pause,
    )
    .await
}

/// `POST /ui/triggers/{namespace}/{flowId}/{triggerId}/backfill/unpause`.
pub(crate) async fn unpause_backfill(
    State(state): State<Arc<AppState>>,
    Path((namespace, flow_id, trigger_id)): Path<(String, String, String)>,
) -> Markup {
    backfill_change(
        &state,
        &namespace,
        &flow_id,
        &trigger_id,
        BackfillAction::Unpause,
    )
    .await
}

/// `POST /ui/triggers/{namespace}/{flowId}/{triggerId}/backfill/delete`.
pub(crate) async fn delete_backfill(
    State(state): State<Arc<AppState>>,
    Path((namespace, flow_id, trigger_id)): Path<(String, String, String)>,
) -> Markup {
    backfill_change(
        &state,
        &namespace,
        &flow_id,
        &trigger_id,
        BackfillAction::Delete,
    )
    .await
}
