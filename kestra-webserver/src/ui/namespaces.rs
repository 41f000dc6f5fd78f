//! Namespaces (their flows and KV entries) and triggers: read-only pages over the repositories and
//! internal storage (the engine has no route yet to toggle or unlock a trigger, or to write KV).

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use kestra_core::model::DEFAULT_TENANT;
use kestra_core::repository::{FlowQuery, Pageable, TriggerQuery};
use kestra_core::storage::StoragePath;
use kestra_core::worker::KvStore;
use maud::{Markup, html};

use super::{Nav, UiError, date, enc, field, page, value};
use crate::api::Params;
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
    let kv_root = StoragePath::namespace(&namespace)
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
        match store.get(&namespace, key).await {
            Ok(Some(entry)) => entries.push((key.to_string(), Ok(entry))),
            Ok(None) => {}
            Err(e) => entries.push((key.to_string(), Err(e.to_string()))),
        }
    }
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
                div.card #kv {
                    h2 { "KV store" }
                    @if entries.is_empty() { p.muted { "No keys." } }
                    @else {
                        table {
                            thead { tr { th { "Key" } th { "Value" } th { "Type" } th { "Updated" } th { "Expires" } } }
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
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    ))
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
                    thead { tr { th { "Trigger" } th { "Flow" } th { "Last" } th { "Next" } th { "Execution" } th { "Status" } } }
                    tbody {
                        @for t in &found.results {
                            tr {
                                td.mono { (t.trigger_id) }
                                td { span.muted { (t.namespace) "." } a.strong href={ "/ui/flows/" (enc(&t.namespace)) "/" (enc(&t.flow_id)) } { (t.flow_id) } }
                                td { (t.date.map(date).unwrap_or_default()) }
                                td { (t.next_execution_date.map(date).unwrap_or_default()) }
                                td.mono { @if let Some(e) = &t.execution_id { a href={ "/ui/executions/" (enc(e)) } { (e.chars().take(8).collect::<String>()) } } }
                                td {
                                    @if t.disabled { span.tag { "disabled" } } @else { span.tag { "enabled" } }
                                    @if t.evaluate_running_date.is_some() { " " span.tag { "evaluating" } }
                                    @if let Some(err) = &t.error { div.alert.alert-error { (err) } }
                                }
                            }
                        }
                    }
                }
            }
        },
    ))
}
