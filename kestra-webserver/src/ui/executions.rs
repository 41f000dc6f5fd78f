//! Execution pages: list with filters, the detail page (task-run tree, Gantt, live logs, outputs and
//! files, actions), a file preview.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderValue;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use futures::{Stream, StreamExt};
use kestra_core::model::{Execution, LogEntry, StateType, TaskRun};
use kestra_core::repository::{ExecutionQuery, Pageable};
use maud::{Markup, html};
use serde_json::Value;

use super::{Nav, UiError, badge, date, duration, enc, field, labels, page, value};
use crate::api::Params;
use crate::api::executions::find;
use crate::{ApiError, AppState};

/// How long a page waits for an execution that was just created and is not stored yet.
const APPEAR_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// An execution, waiting a little for one just created (the executor stores it a moment after the
/// engine hands back its id); 404 after [`APPEAR_WAIT`].
pub(crate) async fn find_soon(state: &AppState, id: &str) -> Result<Execution, ApiError> {
    let deadline = tokio::time::Instant::now() + APPEAR_WAIT;
    loop {
        if let Some(found) = state
            .engine
            .repositories()
            .executions
            .find_by_id(kestra_core::model::DEFAULT_TENANT, id)
            .await?
        {
            return Ok(found);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::not_found(format!("execution {id} not found")));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn execution_url(id: &str) -> String {
    format!("/ui/executions/{}", enc(id))
}

/// When an execution or task run started and ended (now while it runs).
fn span(state: &kestra_core::model::State) -> (chrono::DateTime<Utc>, chrono::DateTime<Utc>) {
    let histories = state.histories();
    let start = histories.first().map(|h| h.date).unwrap_or_else(Utc::now);
    let end = if state.is_terminated() {
        histories.last().map(|h| h.date).unwrap_or(start)
    } else {
        Utc::now()
    };
    (start, end)
}

/// A table of executions.
pub(crate) fn table(executions: &[Execution]) -> Markup {
    html! {
        table.executions {
            thead { tr { th { "Id" } th { "Flow" } th { "Start" } th { "Duration" } th { "State" } th { "Labels" } } }
            tbody {
                @for e in executions {
                    @let (start, end) = span(&e.state);
                    tr {
                        td.mono { a href=(execution_url(&e.id)) { (e.id.chars().take(8).collect::<String>()) } }
                        td { span.muted { (e.namespace) "." } a.strong href={ "/ui/flows/" (enc(&e.namespace)) "/" (enc(&e.flow_id)) } { (e.flow_id) } }
                        td { (date(start)) }
                        td { (duration(end - start)) }
                        td { (badge(e.current())) }
                        td { (labels(&e.labels.iter().filter(|l| !l.key.starts_with("system.")).cloned().collect::<Vec<_>>())) }
                    }
                }
            }
        }
    }
}

/// `/ui/executions`: `namespace`, `flowId`, `state`, `q`, `page`.
pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    RawQuery(raw): RawQuery,
) -> Result<Markup, UiError> {
    let params = Params::parse(
        raw.as_deref(),
        &["namespace", "flowId", "state", "q", "page"],
    )?;
    let namespace = params.one("namespace").map(str::to_string);
    let flow_id = params.one("flowId").map(str::to_string);
    let q = params.one("q").map(str::to_string);
    let selected = params.one("state").map(str::to_string);
    let states = match selected.as_deref() {
        None => Vec::new(),
        Some(s) => vec![
            s.parse::<StateType>()
                .map_err(|_| ApiError::bad_request(format!("state '{s}' is not a state")))?,
        ],
    };
    let page_number = params
        .one("page")
        .and_then(|p| p.parse::<u32>().ok())
        .unwrap_or(1)
        .max(1);
    let query = ExecutionQuery {
        q: q.clone(),
        namespace: namespace.clone(),
        flow_id: flow_id.clone(),
        states,
        ..ExecutionQuery::default()
    };
    let found = state
        .engine
        .repositories()
        .executions
        .search(&query, &Pageable::new(page_number, 50))
        .await?;
    Ok(page(
        "Executions",
        Nav::Executions,
        html! {
            h1 { "Executions" }
            form.filters method="get" action="/ui/executions"
                hx-get="/ui/executions" hx-target="#execution-table" hx-select="#execution-table" hx-swap="outerHTML"
                hx-trigger="input changed delay:300ms from:find input, change from:find select" hx-push-url="true" {
                input type="search" name="q" placeholder="Search" value=(field(&q));
                input type="text" name="namespace" placeholder="Namespace" value=(field(&namespace));
                input type="text" name="flowId" placeholder="Flow" value=(field(&flow_id));
                select name="state" {
                    option value="" { "Any state" }
                    @for s in ALL_STATES {
                        option value=(s.as_str()) selected[selected.as_deref() == Some(s.as_str())] { (s.as_str()) }
                    }
                }
                button type="submit" { "Filter" }
            }
            div #execution-table.card {
                p.muted { (found.total) " executions" }
                (table(&found.results))
                @if found.total > u64::from(page_number) * 50 {
                    a.button href={ "/ui/executions?page=" (page_number + 1) "&namespace=" (enc(field(&namespace))) "&flowId=" (enc(field(&flow_id))) "&state=" (enc(field(&selected))) "&q=" (enc(field(&q))) } { "Next page" }
                }
            }
        },
    ))
}

/// States offered in the filter.
const ALL_STATES: [StateType; 12] = [
    StateType::Created,
    StateType::Queued,
    StateType::Running,
    StateType::Paused,
    StateType::Restarted,
    StateType::Killing,
    StateType::Success,
    StateType::Warning,
    StateType::Failed,
    StateType::Killed,
    StateType::Cancelled,
    StateType::Retrying,
];

/// The task runs in tree order with their depth.
fn tree(execution: &Execution) -> Vec<(usize, &TaskRun)> {
    let mut children: HashMap<Option<&str>, Vec<&TaskRun>> = HashMap::new();
    for tr in &execution.task_run_list {
        children
            .entry(tr.parent_task_run_id.as_deref())
            .or_default()
            .push(tr);
    }
    let known: std::collections::HashSet<&str> = execution
        .task_run_list
        .iter()
        .map(|t| t.id.as_str())
        .collect();
    let mut out = Vec::new();
    fn walk<'a>(
        parent: Option<&str>,
        depth: usize,
        children: &HashMap<Option<&str>, Vec<&'a TaskRun>>,
        out: &mut Vec<(usize, &'a TaskRun)>,
    ) {
        if let Some(list) = children.get(&parent) {
            for tr in list {
                out.push((depth, *tr));
                walk(Some(tr.id.as_str()), depth + 1, children, out);
            }
        }
    }
    walk(None, 0, &children, &mut out);
    // Orphans (a parent not in the list) still show, at the top level.
    for tr in &execution.task_run_list {
        if let Some(p) = tr.parent_task_run_id.as_deref()
            && !known.contains(p)
        {
            out.push((0, tr));
        }
    }
    out
}

fn task_label(tr: &TaskRun) -> Markup {
    html! {
        span.tid { (tr.task_id) }
        @if let Some(v) = &tr.value { span.tval { " [" (v) "]" } }
    }
}

/// The parts of the detail page that change while the execution runs; polled every second until
/// it has ended.
fn live_fragment(execution: &Execution) -> Markup {
    let url = execution_url(&execution.id);
    let running = !execution.state.is_terminated();
    let (start, end) = span(&execution.state);
    let total_ms = (end - start).num_milliseconds().max(1) as f64;
    let rows = tree(execution);
    let current = execution.current();
    html! {
        div #live hx-get=[running.then(|| format!("{url}/live"))] hx-trigger=[running.then_some("every 1s")] hx-swap="outerHTML" {
            div.titlebar {
                div {
                    div.crumbs {
                        a href="/ui/executions" { "Executions" } " / "
                        a href={ "/ui/flows/" (enc(&execution.namespace)) "/" (enc(&execution.flow_id)) } { (execution.namespace) "." (execution.flow_id) }
                    }
                    h1 { span.mono { (execution.id) } " " span #exec-state { (badge(current)) } }
                }
                div.buttons {
                    @if running {
                        button #kill.danger hx-post={ (url) "/kill" } hx-confirm="Kill this execution?" { "Kill" }
                    }
                    @if current == StateType::Paused {
                        button #resume.primary hx-post={ (url) "/resume" } { "Resume" }
                    }
                    @if matches!(current, StateType::Failed | StateType::Killed) {
                        button #restart hx-post={ (url) "/restart" } { "Restart" }
                    }
                    @if !running {
                        @if let Some(first) = execution.task_run_list.first() {
                            button #replay hx-post={ (url) "/replay?taskRunId=" (enc(&first.id)) } { "Replay" }
                        }
                    }
                }
            }
            div data-section="overview" {
                div.card {
                    dl.meta.wide {
                        dt { "Flow" } dd { (execution.namespace) "." (execution.flow_id) " (revision " (execution.flow_revision) ")" }
                        dt { "Started" } dd { (date(start)) }
                        dt { "Duration" } dd #exec-duration { (duration(end - start)) }
                        @if let Some(o) = &execution.original_id { dt { "Replay of" } dd { a href=(execution_url(o)) { (o) } } }
                        @if let Some(p) = &execution.parent_id { dt { "Parent" } dd { a href=(execution_url(p)) { (p) } } }
                        @if !execution.labels.is_empty() { dt { "Labels" } dd #exec-labels { (labels(&execution.labels)) } }
                        @if !execution.inputs.is_empty() { dt { "Inputs" } dd #exec-inputs { (value(&Value::Object(execution.inputs.clone()), Some(&execution.id))) } }
                    }
                }
                div.card {
                    h2 { "Task runs" }
                    table.taskruns {
                        thead { tr { th { "Task" } th { "State" } th { "Attempts" } th { "Duration" } th {} } }
                        tbody {
                            @for (depth, tr) in &rows {
                                @let (s, e) = span(&tr.state);
                                tr {
                                    td style={ "padding-left:" (0.75 + *depth as f64 * 1.5) "rem" } { @if *depth > 0 { span.muted { "└ " } } (task_label(tr)) }
                                    td { (badge(tr.current())) }
                                    td { (tr.attempts.len()) }
                                    td { (duration(e - s)) }
                                    td.actions {
                                        @if !running {
                                            button.small hx-post={ (url) "/replay?taskRunId=" (enc(&tr.id)) } title="A new execution from this task run" { "Replay from here" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            div data-section="gantt" {
                div.card #gantt {
                    h2 { "Gantt" }
                    div.gantt {
                        @for (depth, tr) in &rows {
                            @let (s, e) = span(&tr.state);
                            @let left = ((s - start).num_milliseconds().max(0) as f64 / total_ms * 100.0).min(100.0);
                            @let width = ((e - s).num_milliseconds().max(0) as f64 / total_ms * 100.0).clamp(0.4, 100.0 - left.min(99.6));
                            div.grow {
                                div.glabel style={ "padding-left:" (*depth as f64 * 1.0) "rem" } { (task_label(tr)) }
                                div.gtrack {
                                    div class={ "gbar state-" (tr.current().as_str().to_ascii_lowercase()) }
                                        style={ "left:" (format!("{left:.2}")) "%;width:" (format!("{width:.2}")) "%" }
                                        title={ (tr.task_id) ": " (tr.current().as_str()) ", " (duration(e - s)) } {}
                                }
                                div.gdur { (duration(e - s)) }
                            }
                        }
                    }
                }
            }
            div data-section="outputs" {
                div.card #outputs {
                    h2 { "Outputs" }
                    @if !execution.outputs.is_empty() {
                        h3 { "Flow outputs" }
                        (value(&Value::Object(execution.outputs.clone()), Some(&execution.id)))
                    }
                    @let with_outputs: Vec<&TaskRun> = execution.task_run_list.iter().filter(|t| t.outputs.as_ref().is_some_and(|o| !o.is_empty())).collect();
                    @if with_outputs.is_empty() && execution.outputs.is_empty() { p.muted { "No outputs yet." } }
                    @for tr in with_outputs {
                        h3 { (task_label(tr)) }
                        (value(&Value::Object(tr.outputs.clone().unwrap_or_default()), Some(&execution.id)))
                    }
                }
            }
        }
    }
}

/// `/ui/executions/{id}`.
pub(crate) async fn show(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Markup, UiError> {
    let execution = find_soon(&state, &id).await?;
    let url = execution_url(&execution.id);
    Ok(page(
        &format!("Execution {}", execution.id),
        Nav::Executions,
        html! {
            div #tabs data-tab="overview" {
                (live_fragment(&execution))
                div.tabbar {
                    button.tab data-tab-to="overview" { "Overview" }
                    button.tab #tab-gantt data-tab-to="gantt" { "Gantt" }
                    button.tab #tab-logs data-tab-to="logs" { "Logs" }
                    button.tab #tab-outputs data-tab-to="outputs" { "Outputs" }
                }
                div data-section="logs" {
                    div.card {
                        h2 { "Logs" }
                        div #logs.logs hx-ext="sse" sse-connect={ (url) "/logs" } sse-swap="log,end" hx-swap="beforeend" sse-close="end" {}
                    }
                }
            }
        },
    ))
}

/// `/ui/executions/{id}/live`: the changing part of the detail page.
pub(crate) async fn live(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Markup, UiError> {
    Ok(live_fragment(&find(&state, &id).await?))
}

/// One log line.
pub(crate) fn log_line(entry: &LogEntry, with_execution: bool) -> Markup {
    let level = entry.level.as_str();
    html! {
        div class={ "log level-" (level.to_ascii_lowercase()) } {
            span.ts { (entry.timestamp.format("%H:%M:%S%.3f")) }
            span.lvl { (level) }
            @if with_execution {
                @if let Some(e) = &entry.execution_id { a.lexec.mono href=(execution_url(e)) { (e.chars().take(8).collect::<String>()) } }
                span.lflow { (entry.namespace) "." (entry.flow_id) }
            }
            @if let Some(t) = &entry.task_id { span.ltask { (t) } }
            span.msg { (entry.message) }
        }
    }
}

/// `/ui/executions/{id}/logs`: server-sent events for htmx: `log` events carry a rendered line
/// (stored lines first, then live ones), a last `end` event once the execution has ended.
pub(crate) async fn logs(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, UiError> {
    find(&state, &id).await?;
    let lines = crate::api::logs::follow_entries(state, id, None)
        .await?
        .map(|entry| {
            Ok::<_, Infallible>(
                Event::default()
                    .event("log")
                    .data(log_line(&entry, false).into_string()),
            )
        });
    let end = futures::stream::once(async {
        Ok(Event::default()
            .event("end")
            .data(html! { div.log-end { "— end of the execution —" } }.into_string()))
    });
    Ok(Sse::new(lines.chain(end)).keep_alive(KeepAlive::default()))
}

/// Largest part of a file the preview shows.
const PREVIEW_BYTES: usize = 256 * 1024;

/// `/ui/executions/{id}/file?path=kestra:///...`: the first part of a file of this execution as
/// text, with its download link (the API's route, which checks the owner again).
pub(crate) async fn file(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Markup, UiError> {
    let params = Params::parse(raw.as_deref(), &["path"])?;
    let Some(path) = params.one("path") else {
        return Err(UiError(ApiError::bad_request(
            "query parameter 'path' is required: the kestra:/// URI of the file",
        )));
    };
    let crate::api::executions::OwnedFile {
        path: canonical,
        size,
        mut stream,
    } = crate::api::executions::owned_file(&state, &id, path).await?;
    let mut head = Vec::new();
    while head.len() < PREVIEW_BYTES {
        match stream.next().await {
            Some(Ok(chunk)) => head.extend_from_slice(&chunk),
            Some(Err(e)) => return Err(UiError(ApiError::internal(e.to_string()))),
            None => break,
        }
    }
    head.truncate(PREVIEW_BYTES);
    let text = String::from_utf8_lossy(&head);
    let binary = head.contains(&0);
    let uri = canonical.to_uri();
    Ok(page(
        canonical.file_name(),
        Nav::Executions,
        html! {
            div.titlebar {
                div {
                    div.crumbs { a href="/ui/executions" { "Executions" } " / " a href=(execution_url(&id)) { (id) } }
                    h1 { (canonical.file_name()) }
                }
                div.buttons {
                    a.button.primary #download href={ "/api/v1/main/executions/" (enc(&id)) "/file?path=" (enc(&uri)) } { "Download" }
                }
            }
            div.card {
                p.muted.mono { (uri) " · " (size) " bytes" @if size as usize > PREVIEW_BYTES { " (the first " (PREVIEW_BYTES / 1024) " KiB shown)" } }
                @if binary { p.muted { "A binary file: download it to read it." } }
                @else { pre.source #file-content { (text) } }
            }
        },
    ))
}

/// Where htmx goes after an action.
fn go(url: &str) -> Response {
    let mut response = axum::http::StatusCode::NO_CONTENT.into_response();
    if let Ok(value) = HeaderValue::from_str(url) {
        response.headers_mut().insert("hx-redirect", value);
    }
    response
}

/// `POST /ui/executions/{id}/kill`.
pub(crate) async fn kill(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    let execution = find(&state, &id).await?;
    if !execution.state.is_terminated() {
        state.engine.kill(&id).await?;
    }
    Ok(go(&execution_url(&id)))
}

/// `POST /ui/executions/{id}/restart`.
pub(crate) async fn restart(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    let execution = find(&state, &id).await?;
    let current = execution.current();
    if !matches!(current, StateType::Failed | StateType::Killed) {
        return Err(UiError(ApiError::conflict(format!(
            "execution {id} is {current}: only a FAILED or KILLED execution can be restarted"
        ))));
    }
    state.engine.restart(&id).await?;
    Ok(go(&execution_url(&id)))
}

/// `POST /ui/executions/{id}/resume` (without `onResume` inputs).
pub(crate) async fn resume(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    let execution = find(&state, &id).await?;
    if execution.current() != StateType::Paused {
        return Err(UiError(ApiError::conflict(format!(
            "execution {id} is {}: only a PAUSED execution can be resumed",
            execution.current()
        ))));
    }
    state.engine.resume(&id, serde_json::Map::new()).await?;
    Ok(go(&execution_url(&id)))
}

/// `POST /ui/executions/{id}/replay?taskRunId=...`: goes to the new execution.
pub(crate) async fn replay(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, UiError> {
    let params = Params::parse(raw.as_deref(), &["taskRunId"])?;
    let Some(task_run_id) = params.one("taskRunId") else {
        return Err(UiError(ApiError::bad_request(
            "query parameter 'taskRunId' is required",
        )));
    };
    let execution = find(&state, &id).await?;
    if !execution.state.is_terminated() {
        return Err(UiError(ApiError::conflict(format!(
            "execution {id} is still {}: only an ended execution can be replayed",
            execution.current()
        ))));
    }
    let replayed = state.engine.replay(&id, task_run_id).await?;
    find_soon(&state, &replayed.id).await?;
    Ok(go(&execution_url(&replayed.id)))
}
