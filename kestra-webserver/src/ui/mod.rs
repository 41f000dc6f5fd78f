//! The Web UI: server-rendered pages ([maud](https://maud.lambda.xyz), which escapes every
//! interpolated value) under `/ui/`, made live with htmx 2 and its SSE extension (vendored under
//! `static/`, served from the binary: no Node build to run or test it).
//!
//! | page | what |
//! | --- | --- |
//! | `/ui/` | dashboard: executions by state and day over the last week, recent executions |
//! | `/ui/login` | login form (the API's user and password); `/ui/logout` ends the session |
//! | `/ui/flows` | flows, searchable by text and namespace |
//! | `/ui/flows/new`, `/ui/flows/{ns}/{id}/edit` | the editor: validates as you type (the API's validate route), marks errors at their line, saves |
//! | `/ui/flows/{ns}/{id}` | a flow: description, labels, inputs, topology of its tasks, source |
//! | `/ui/flows/{ns}/{id}/run` | a form built from the flow's inputs (files included); runs it |
//! | `/ui/executions` | executions, filtered by namespace, flow and state |
//! | `/ui/executions/{id}` | an execution: task-run tree, Gantt, live logs (SSE), outputs and files; kill, restart, replay, resume |
//! | `/ui/executions/{id}/file` | a preview of one of the execution's files, with its download link |
//! | `/ui/logs` | log search: text, namespace, minimum level |
//! | `/ui/triggers` | triggers with their last and next dates; enable, disable, unlock, backfill a schedule (inputs, labels), pause, resume or delete its backfill |
//! | `/ui/namespaces`, `/ui/namespaces/{ns}` | namespaces, their flows and KV entries; set and delete a key |
//!
//! Authentication: a login page rather than the browser's basic-auth prompt, so that a user can log
//! out, the page is styled, and scripts of the UI get a clear "log in again" instead of a prompt; see
//! [`session`]. User strings (flow sources, descriptions, labels, inputs, outputs, log lines) are
//! always escaped, and the UI renders no link from user data: its links are its own routes with
//! percent-encoded parts, so a `javascript:` value is only ever text.

mod executions;
mod flows;
mod namespaces;
pub mod session;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Form, Query, RawQuery, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use kestra_core::model::{Label, StateType};
use maud::{DOCTYPE, Markup, html};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;

use crate::auth::Auth;
use crate::{ApiError, AppState};

/// htmx, vendored from npm (`htmx.org`, BSD-0).
const HTMX: &[u8] = include_bytes!("../../static/htmx-2.0.11.min.js");
/// htmx's SSE extension, vendored from npm (`htmx-ext-sse`, BSD-0).
const HTMX_SSE: &[u8] = include_bytes!("../../static/htmx-ext-sse-2.2.4.min.js");
/// The UI's style sheet.
const CSS: &[u8] = include_bytes!("../../static/app.css");
/// The UI's own script (tabs, the editor).
const APP_JS: &[u8] = include_bytes!("../../static/app.js");

/// The static files: path, content type, cache lifetime in seconds.
const STATIC_FILES: &[(&str, &str, &[u8], u32)] = &[
    (
        "/ui/static/htmx-2.0.11.min.js",
        "text/javascript; charset=utf-8",
        HTMX,
        31_536_000,
    ),
    (
        "/ui/static/htmx-ext-sse-2.2.4.min.js",
        "text/javascript; charset=utf-8",
        HTMX_SSE,
        31_536_000,
    ),
    ("/ui/static/app.css", "text/css; charset=utf-8", CSS, 3600),
    (
        "/ui/static/app.js",
        "text/javascript; charset=utf-8",
        APP_JS,
        3600,
    ),
];

/// Whether a UI request may pass without a session: the login page and the static files, matched
/// exactly on the raw path (as [`crate::auth::is_public`] does).
pub fn is_public(method: &Method, raw_path: &str) -> bool {
    if raw_path == "/ui/login" {
        return method == Method::GET || method == Method::HEAD || method == Method::POST;
    }
    (method == Method::GET || method == Method::HEAD)
        && STATIC_FILES.iter().any(|(path, ..)| *path == raw_path)
}

/// For a browser's request of a UI page without a session: the way to the login page (a redirect,
/// or `HX-Redirect` for htmx). `None` for any other request (the API answers 401).
pub(crate) fn login_redirect(request: &Request) -> Option<Response> {
    let path = request.uri().path();
    let is_page = path == "/" || path == "/ui" || path.starts_with("/ui/");
    if !is_page {
        return None;
    }
    let target = format!(
        "/ui/login?next={}",
        utf8_percent_encode(
            request
                .uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/ui/"),
            COMPONENT
        )
    );
    if request.headers().contains_key("hx-request") {
        let mut response = StatusCode::UNAUTHORIZED.into_response();
        if let Ok(value) = HeaderValue::from_str(&target) {
            response.headers_mut().insert("hx-redirect", value);
        }
        return Some(response);
    }
    if request.method() == Method::GET || request.method() == Method::HEAD {
        return Some(Redirect::to(&target).into_response());
    }
    None
}

/// The UI's routes.
pub(crate) fn router(upload_limit: usize) -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(dashboard))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/static/{file}", get(static_file))
        .route("/ui/flows", get(flows::list))
        .route("/ui/flows/new", get(flows::new_flow))
        .route("/ui/flows/{namespace}/{id}", get(flows::show))
        .route("/ui/flows/{namespace}/{id}/edit", get(flows::edit))
        .route(
            "/ui/flows/{namespace}/{id}/run",
            get(flows::run_form)
                .post(flows::run)
                .layer(axum::extract::DefaultBodyLimit::max(upload_limit)),
        )
        .route("/ui/executions", get(executions::list))
        .route("/ui/executions/{id}", get(executions::show))
        .route("/ui/executions/{id}/live", get(executions::live))
        .route("/ui/executions/{id}/logs", get(executions::logs))
        .route("/ui/executions/{id}/file", get(executions::file))
        .route("/ui/executions/{id}/kill", post(executions::kill))
        .route("/ui/executions/{id}/restart", post(executions::restart))
        .route("/ui/executions/{id}/resume", post(executions::resume))
        .route("/ui/executions/{id}/replay", post(executions::replay))
        .route("/ui/logs", get(log_search))
        .route("/ui/triggers", get(namespaces::triggers))
        .route(
            "/ui/triggers/{namespace}/{flow_id}/{trigger_id}/enable",
            post(namespaces::enable_trigger),
        )
        .route(
            "/ui/triggers/{namespace}/{flow_id}/{trigger_id}/disable",
            post(namespaces::disable_trigger),
        )
        .route(
            "/ui/triggers/{namespace}/{flow_id}/{trigger_id}/unlock",
            post(namespaces::unlock_trigger),
        )
        .route(
            "/ui/triggers/{namespace}/{flow_id}/{trigger_id}/backfill",
            post(namespaces::backfill_trigger),
        )
        .route(
            "/ui/triggers/{namespace}/{flow_id}/{trigger_id}/backfill/pause",
            post(namespaces::pause_backfill),
        )
        .route(
            "/ui/triggers/{namespace}/{flow_id}/{trigger_id}/backfill/unpause",
            post(namespaces::unpause_backfill),
        )
        .route(
            "/ui/triggers/{namespace}/{flow_id}/{trigger_id}/backfill/delete",
            post(namespaces::delete_backfill),
        )
        .route("/ui/namespaces", get(namespaces::list))
        .route("/ui/namespaces/{namespace}", get(namespaces::show))
        .route("/ui/namespaces/{namespace}/kv", post(namespaces::kv_set))
        .route(
            "/ui/namespaces/{namespace}/kv/delete",
            post(namespaces::kv_delete),
        )
}

/// Characters percent-encoded in a path segment or query value.
pub(crate) const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// A path segment or query value, percent-encoded.
pub(crate) fn enc(part: &str) -> String {
    utf8_percent_encode(part, COMPONENT).to_string()
}

/// An error shown as a page.
pub(crate) struct UiError(pub(crate) ApiError);

impl From<ApiError> for UiError {
    fn from(e: ApiError) -> UiError {
        UiError(e)
    }
}

impl From<kestra_core::repository::RepositoryError> for UiError {
    fn from(e: kestra_core::repository::RepositoryError) -> UiError {
        UiError(e.into())
    }
}

impl From<kestra_core::runtime::EngineError> for UiError {
    fn from(e: kestra_core::runtime::EngineError) -> UiError {
        UiError(e.into())
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let status = self.0.status;
        let title = status.canonical_reason().unwrap_or("Error");
        let body = page(
            title,
            Nav::None,
            html! {
                div.card.error-card {
                    h1 { (status.as_u16()) " · " (title) }
                    p { (self.0.message) }
                    @for e in &self.0.errors {
                        p.mono { (e) }
                    }
                    p { a href="/ui/" { "Back to the dashboard" } }
                }
            },
        );
        (status, body).into_response()
    }
}

/// Which menu entry is current.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nav {
    None,
    Dashboard,
    Flows,
    Executions,
    Logs,
    Triggers,
    Namespaces,
}

/// A whole page: head, menu, content.
pub(crate) fn page(title: &str, nav: Nav, content: Markup) -> Markup {
    let version = env!("CARGO_PKG_VERSION");
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Kestra" }
                link rel="stylesheet" href={ "/ui/static/app.css?v=" (version) };
                script src="/ui/static/htmx-2.0.11.min.js" {}
                script src="/ui/static/htmx-ext-sse-2.2.4.min.js" {}
                script src={ "/ui/static/app.js?v=" (version) } defer {}
            }
            body hx-headers=r#"{"X-Kestra-UI": "1"}"# {
                @if nav != Nav::None {
                    header.topbar {
                        a.brand href="/ui/" { span.logo { "K" } "Kestra" }
                        nav {
                            a.active[nav == Nav::Dashboard] href="/ui/" { "Dashboard" }
                            a.active[nav == Nav::Flows] href="/ui/flows" { "Flows" }
                            a.active[nav == Nav::Executions] href="/ui/executions" { "Executions" }
                            a.active[nav == Nav::Logs] href="/ui/logs" { "Logs" }
                            a.active[nav == Nav::Triggers] href="/ui/triggers" { "Triggers" }
                            a.active[nav == Nav::Namespaces] href="/ui/namespaces" { "Namespaces" }
                        }
                        button.link.logout hx-post="/ui/logout" { "Log out" }
                    }
                }
                main { (content) }
            }
        }
    }
}

/// A state as a coloured badge.
pub(crate) fn badge(state: StateType) -> Markup {
    let s = state.as_str();
    html! { span class={ "state state-" (s.to_ascii_lowercase()) } { (s) } }
}

/// Labels as chips (text only).
pub(crate) fn labels(labels: &[Label]) -> Markup {
    html! {
        @for l in labels {
            span.chip { span.k { (l.key) } ":" span.v { (l.value) } }
        }
    }
}

/// Labels typed in a form's textarea `field`: one `key:value` per line (blank lines skipped). A
/// line without `:`, an empty key or a `system.` key (set by Kestra only) is a 400 naming the line.
pub(crate) fn form_labels(field: &str, text: &str) -> Result<Vec<Label>, ApiError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let n = i + 1;
        let Some((key, value)) = line.split_once(':') else {
            return Err(ApiError::bad_request(format!(
                "field '{field}', line {n}: '{line}' is not key:value"
            )));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(ApiError::bad_request(format!(
                "field '{field}', line {n}: the key is empty"
            )));
        }
        if key.starts_with("system.") {
            return Err(ApiError::bad_request(format!(
                "field '{field}', line {n}: '{key}' is a system label, set by Kestra only"
            )));
        }
        out.push(Label::new(key, value.trim()));
    }
    Ok(out)
}

/// A date as `YYYY-MM-DD HH:MM:SS` (UTC).
pub(crate) fn date(d: DateTime<Utc>) -> String {
    d.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// A duration in words: `850ms`, `12.3s`, `4m 05s`, `2h 03m`.
pub(crate) fn duration(d: chrono::TimeDelta) -> String {
    let ms = d.num_milliseconds().max(0);
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{}m {:02}s", ms / 60_000, (ms / 1000) % 60)
    } else {
        format!("{}h {:02}m", ms / 3_600_000, (ms / 60_000) % 60)
    }
}

/// The value to put in an input field for a query parameter.
pub(crate) fn field(value: &Option<String>) -> &str {
    value.as_deref().unwrap_or("")
}

async fn static_file(request: Request) -> Response {
    let path = request.uri().path();
    match STATIC_FILES.iter().find(|(p, ..)| *p == path) {
        Some((_, content_type, bytes, max_age)) => (
            [
                (header::CONTENT_TYPE, content_type.to_string()),
                (header::CACHE_CONTROL, format!("public, max-age={max_age}")),
            ],
            *bytes,
        )
            .into_response(),
        None => UiError(ApiError::not_found(format!("no file {path}"))).into_response(),
    }
}

#[derive(Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

/// Where to go after login: only a path of the UI, never another site.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with("/ui/")
                && !n.contains("//")
                && !n.contains('\\')
                && !n.chars().any(|c| c.is_control()) =>
        {
            n.to_string()
        }
        _ => "/ui/".to_string(),
    }
}

fn login_form(next: &str, error: Option<&str>) -> Markup {
    page(
        "Log in",
        Nav::None,
        html! {
            div.login {
                div.card {
                    div.brand.big { span.logo { "K" } "Kestra" }
                    @if let Some(error) = error {
                        p.alert.alert-error { (error) }
                    }
                    form method="post" action="/ui/login" {
                        input type="hidden" name="next" value=(next);
                        label { "User" input #username type="text" name="username" autocomplete="username" autofocus required; }
                        label { "Password" input #password type="password" name="password" autocomplete="current-password" required; }
                        button #login.primary type="submit" { "Log in" }
                    }
                }
            }
        },
    )
}

async fn login_page(
    State(state): State<Arc<AppState>>,
    Query(query): Query<LoginQuery>,
) -> Response {
    let next = safe_next(query.next.as_deref());
    match &state.config.auth {
        Auth::Disabled => Redirect::to(&next).into_response(),
        Auth::Unconfigured => login_form(
            &next,
            Some("No user is configured on this server: set kestra.server.basic-auth.username and .password."),
        )
        .into_response(),
        Auth::Basic(_) => login_form(&next, None).into_response(),
    }
}

#[derive(Deserialize)]
struct LoginForm {
    username: String,
    password: String,
    next: Option<String>,
}

async fn login(State(state): State<Arc<AppState>>, Form(form): Form<LoginForm>) -> Response {
    use base64::Engine as _;
    let next = safe_next(form.next.as_deref());
    let Auth::Basic(user) = state.config.auth.clone() else {
        return Redirect::to("/ui/login").into_response();
    };
    let header_value = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", form.username, form.password))
    );
    let ok = tokio::task::spawn_blocking(move || user.verify(header_value.as_bytes()))
        .await
        .unwrap_or(false);
    if !ok {
        tracing::info!(user = %form.username, "UI login refused");
        return (
            StatusCode::UNAUTHORIZED,
            login_form(&next, Some("Wrong user or password.")),
        )
            .into_response();
    }
    let token = state.sessions.create();
    let mut response = Redirect::to(&next).into_response();
    if let Ok(value) = HeaderValue::from_str(&session::set_cookie(&token)) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

async fn logout(State(state): State<Arc<AppState>>, request: Request) -> Response {
    if let Some(token) = session::cookie_token(request.headers()) {
        state.sessions.remove(&token);
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Ok(value) = HeaderValue::from_str(&session::clear_cookie()) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
        .headers_mut()
        .insert("hx-redirect", HeaderValue::from_static("/ui/login"));
    response
}

/// How many executions the dashboard reads at most.
const DASHBOARD_LIMIT: u32 = 5000;

/// `/ui/`: executions by state and day over the last 7 days, and the latest ones.
async fn dashboard(State(state): State<Arc<AppState>>) -> Result<Markup, UiError> {
    use kestra_core::repository::{ExecutionQuery, Pageable};
    let today = Utc::now().date_naive();
    let first = today - chrono::Days::new(6);
    let since = first
        .and_hms_opt(0, 0, 0)
        .map(|d| d.and_utc())
        .unwrap_or_else(Utc::now);
    let query = ExecutionQuery {
        start_date: Some(since),
        ..ExecutionQuery::default()
    };
    let found = state
        .engine
        .repositories()
        .executions
        .search(&query, &Pageable::new(1, DASHBOARD_LIMIT))
        .await?;
    let days: Vec<chrono::NaiveDate> = (0..7).map(|i| first + chrono::Days::new(i)).collect();
    let mut by_day: Vec<std::collections::BTreeMap<&'static str, u64>> =
        vec![Default::default(); 7];
    let mut totals: std::collections::BTreeMap<&'static str, u64> = Default::default();
    for e in &found.results {
        let start = e
            .state
            .histories()
            .first()
            .map(|h| h.date.date_naive())
            .unwrap_or(today);
        let s = e.current().as_str();
        *totals.entry(s).or_default() += 1;
        if let Some(i) = days.iter().position(|d| *d == start) {
            *by_day[i].entry(s).or_default() += 1;
        }
    }
    let max = by_day
        .iter()
        .map(|m| m.values().sum::<u64>())
        .max()
        .unwrap_or(0)
        .max(1);
    let recent = &found.results[..found.results.len().min(10)];
    Ok(page(
        "Dashboard",
        Nav::Dashboard,
        html! {
            h1 { "Dashboard" }
            div.cards {
                div.card.stat { div.n { (found.total) } div.l { "executions, last 7 days" } }
                @for (s, n) in &totals {
                    div.card.stat { div.n { (n) } div.l { span class={ "dot state-" (s.to_ascii_lowercase()) } {} (s) } }
                }
            }
            div.card {
                h2 { "Executions by day" }
                @if found.total > u64::from(DASHBOARD_LIMIT) {
                    p.muted { "Counted over the latest " (DASHBOARD_LIMIT) " executions." }
                }
                div.chart {
                    @for (i, day) in days.iter().enumerate() {
                        div.col {
                            div.stack title=(day) {
                                @for (s, n) in &by_day[i] {
                                    div class={ "seg state-" (s.to_ascii_lowercase()) }
                                        style={ "height:" (format!("{:.2}", *n as f64 * 100.0 / max as f64)) "%" }
                                        title={ (s) ": " (n) } {}
                                }
                            }
                            div.day { (day.format("%a %d")) }
                        }
                    }
                }
            }
            div.card {
                h2 { "Latest executions" }
                (executions::table(recent))
            }
        },
    ))
}

/// `/ui/logs`: search log lines by text, namespace and minimum level.
async fn log_search(
    State(state): State<Arc<AppState>>,
    RawQuery(raw): RawQuery,
) -> Result<Markup, UiError> {
    use kestra_core::model::Level;
    use kestra_core::repository::{LogQuery, Pageable};
    let params = crate::api::Params::parse(raw.as_deref(), &["q", "namespace", "level"])?;
    let q = params.one("q").map(str::to_string);
    let namespace = params.one("namespace").map(str::to_string);
    let level = params.one("level").map(str::to_string);
    let min_level = match level.as_deref() {
        None => None,
        Some(l) => Some(l.parse::<Level>().map_err(|_| {
            ApiError::bad_request(format!(
                "level '{l}' is not one of TRACE, DEBUG, INFO, WARN, ERROR"
            ))
        })?),
    };
    let query = LogQuery {
        q: q.clone(),
        namespace: namespace.clone(),
        min_level,
        ..LogQuery::default()
    };
    let found = state
        .engine
        .repositories()
        .logs
        .search(&query, &Pageable::new(1, 200))
        .await?;
    Ok(page(
        "Logs",
        Nav::Logs,
        html! {
            h1 { "Logs" }
            form.filters method="get" action="/ui/logs" {
                input type="search" name="q" placeholder="Search messages" value=(field(&q));
                input type="text" name="namespace" placeholder="Namespace" value=(field(&namespace));
                select name="level" {
                    option value="" { "Any level" }
                    @for l in Level::ALL {
                        option value=(l.as_str()) selected[level.as_deref() == Some(l.as_str())] { (l.as_str()) }
                    }
                }
                button type="submit" { "Search" }
            }
            p.muted { (found.total) " lines" @if found.total > 200 { " (the latest 200 shown)" } }
            div.card.logs {
                @for entry in &found.results {
                    (executions::log_line(entry, true))
                }
            }
        },
    ))
}

/// Render a JSON value for reading: strings as text, `kestra:///` strings as links to the
/// execution's file preview (when `execution` is given), objects and arrays as nested lists.
pub(crate) fn value(v: &serde_json::Value, execution: Option<&str>) -> Markup {
    use serde_json::Value;
    match v {
        Value::String(s) if s.starts_with("kestra:///") && execution.is_some() => {
            let id = execution.unwrap_or_default();
            html! {
                a.file href={ "/ui/executions/" (enc(id)) "/file?path=" (enc(s)) } { (s) }
            }
        }
        Value::String(s) => html! { span.str { (s) } },
        Value::Object(map) if !map.is_empty() => html! {
            dl.kv {
                @for (k, v) in map {
                    dt { (k) }
                    dd { (value(v, execution)) }
                }
            }
        },
        Value::Array(items) if !items.is_empty() => html! {
            ol.arr {
                @for v in items { li { (value(v, execution)) } }
            }
        },
        other => html! { span.mono { (other.to_string()) } },
    }
}
