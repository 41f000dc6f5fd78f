//! The Web UI: its login sessions (redirects, cookie, the header a change needs, logout), the
//! escaping of user strings in every page (an `<img onerror>` description, a `javascript:` label,
//! a `<script>` log line, input and KV value), and, in headless Chromium driven over WebDriver, a user's path through
//! it: log in, write a flow in the editor and see its error at the right line, fix it, save, run it
//! with an input, watch it reach SUCCESS with its logs arriving live, open the Gantt view and an
//! output file; screenshots go to `target/ui-screenshots/`.
//!
//! The browser test needs `KESTRA_TEST_CHROMEDRIVER` (scripts/services/browser.sh prints it): it
//! skips loudly without it, and fails under `CI=true`.

#![cfg(feature = "webserver")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use common::{service_url, sqlite_url};
use kestra::Engine;
use kestra::jdbc::JdbcBackend;
use kestra::storage::LocalStorage;
use kestra::webserver::{Auth, BasicAuth, Webserver};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

const USER: &str = "admin@kestra.io";
const PASSWORD: &str = "k3stra-ui-test";

struct Ui {
    router: Router,
    engine: Arc<Engine>,
    shutdown: CancellationToken,
    ns: String,
    _dir: tempfile::TempDir,
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

impl Ui {
    async fn start() -> Ui {
        let dir = tempfile::tempdir().unwrap();
        let backend = JdbcBackend::connect(&sqlite_url(&dir)).await.unwrap();
        let storage = Arc::new(LocalStorage::new(dir.path().join("storage")).unwrap());
        let engine =
            Arc::new(Engine::builder(backend.queue(), backend.repositories(), storage).start());
        let webserver = Webserver::builder(engine.clone())
            .auth(Auth::Basic(BasicAuth::new(USER, PASSWORD).unwrap()))
            .follow_poll(Duration::from_millis(50))
            .build();
        let shutdown = CancellationToken::new();
        let router = webserver.router(shutdown.clone());
        let ns = format!("ui.t{}", kestra::core::model::new_id().to_lowercase());
        Ui {
            router,
            engine,
            shutdown,
            ns,
            _dir: dir,
        }
    }

    async fn send(&self, request: Request<Body>) -> Answer {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    /// A request with the session cookie (and the UI's header when `ui_header`).
    async fn with_cookie(
        &self,
        method: Method,
        path: &str,
        cookie: &str,
        ui_header: bool,
        body: Body,
    ) -> Answer {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::COOKIE, cookie);
        if ui_header {
            request = request.header("X-Kestra-UI", "1");
        }
        self.send(request.body(body).unwrap()).await
    }

    async fn login(&self, user: &str, password: &str, next: &str) -> Answer {
        let form = format!(
            "username={}&password={}&next={}",
            enc(user),
            enc(password),
            enc(next)
        );
        self.send(
            Request::builder()
                .method(Method::POST)
                .uri("/ui/login")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(form))
                .unwrap(),
        )
        .await
    }

    /// Log in and answer the `Cookie` header value of the session.
    async fn session(&self) -> String {
        let answer = self.login(USER, PASSWORD, "/ui/flows").await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
        let set_cookie = answer.headers[header::SET_COOKIE].to_str().unwrap();
        assert!(set_cookie.contains("HttpOnly"), "{set_cookie}");
        assert!(set_cookie.contains("SameSite=Strict"), "{set_cookie}");
        set_cookie.split(';').next().unwrap().to_string()
    }

    async fn page(&self, cookie: &str, path: &str) -> String {
        let answer = self
            .with_cookie(Method::GET, path, cookie, false, Body::empty())
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{path}: {}", answer.body);
        answer.body
    }

    async fn stop(self) {
        self.shutdown.cancel();
        drop(self.router);
        match Arc::try_unwrap(self.engine) {
            Ok(engine) => engine.shutdown().await,
            Err(_) => panic!("the engine is still shared after the router is dropped"),
        }
    }
}

fn enc(s: &str) -> String {
    url_encode(s)
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Without a session, a page sends the browser to the login page (keeping where it was going); a
/// wrong password is refused; a login gives an HttpOnly SameSite=Strict cookie that opens pages and
/// the API; a change with the cookie alone is refused unless it carries the UI's header; `next`
/// never leads off the UI; logout ends the session; the static files and login page are public.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ui_login_sessions() {
    let ui = Ui::start().await;
    let anonymous = ui
        .send(Request::get("/ui/flows?q=a").body(Body::empty()).unwrap())
        .await;
    assert_eq!(anonymous.status, StatusCode::SEE_OTHER);
    assert_eq!(
        anonymous.headers[header::LOCATION],
        "/ui/login?next=%2Fui%2Fflows%3Fq%3Da"
    );
    let root = ui
        .send(Request::get("/").body(Body::empty()).unwrap())
        .await;
    assert_eq!(root.status, StatusCode::SEE_OTHER);
    // The API still answers 401 (no redirect) without credentials.
    let api = ui
        .send(
            Request::get("/api/v1/main/flows/search")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(api.status, StatusCode::UNAUTHORIZED);
    for path in [
        "/ui/login",
        "/ui/static/app.css",
        "/ui/static/htmx-2.0.11.min.js",
    ] {
        let answer = ui
            .send(Request::get(path).body(Body::empty()).unwrap())
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{path} is public");
    }
    let css = ui
        .send(
            Request::get("/ui/static/app.css")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert!(
        css.headers[header::CACHE_CONTROL]
            .to_str()
            .unwrap()
            .contains("max-age")
    );
    // Variants of the public paths are not public.
    for path in ["/ui/static//app.css", "/ui/static/../flows", "/UI/login"] {
        let answer = ui
            .send(Request::get(path).body(Body::empty()).unwrap())
            .await;
        assert_ne!(answer.status, StatusCode::OK, "{path} must not be public");
    }

    let wrong = ui.login(USER, "not-the-password", "/ui/flows").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.body.contains("Wrong user or password"));
    assert!(!wrong.headers.contains_key(header::SET_COOKIE));

    let cookie = ui.session().await;
    let flows = ui.page(&cookie, "/ui/flows").await;
    assert!(flows.contains("<h1>Flows</h1>"), "{flows}");
    let forged = ui
        .with_cookie(
            Method::GET,
            "/ui/flows",
            "kestra_session=00000000000000000000000000000000000000000000000000000000000000aa",
            false,
            Body::empty(),
        )
        .await;
    assert_eq!(forged.status, StatusCode::SEE_OTHER);

    // The API with the cookie: reads pass; a change needs the UI's header.
    let yaml = format!(
        "id: cookie\nnamespace: {}\ntasks:\n  - id: a\n    type: io.kestra.plugin.core.log.Log\n    message: hi\n",
        ui.ns
    );
    let search = ui
        .with_cookie(
            Method::GET,
            "/api/v1/main/flows/search",
            &cookie,
            false,
            Body::empty(),
        )
        .await;
    assert_eq!(search.status, StatusCode::OK);
    let mut create = Request::post("/api/v1/main/flows")
        .header(header::COOKIE, &cookie)
        .header(header::CONTENT_TYPE, "application/x-yaml")
        .body(Body::from(yaml.clone()))
        .unwrap();
    let refused = ui.send(create).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    assert!(refused.body.contains("X-Kestra-UI"));
    create = Request::post("/api/v1/main/flows")
        .header(header::COOKIE, &cookie)
        .header("X-Kestra-UI", "1")
        .header(header::CONTENT_TYPE, "application/x-yaml")
        .body(Body::from(yaml))
        .unwrap();
    assert_eq!(ui.send(create).await.status, StatusCode::OK);

    // `next` stays on the UI.
    for next in [
        "//evil.example/x",
        "https://evil.example/",
        "/ui//evil.example",
        "/api/v1/flows",
    ] {
        let answer = ui.login(USER, PASSWORD, next).await;
        assert_eq!(answer.headers[header::LOCATION], "/ui/", "next={next}");
    }

    let logout = ui
        .with_cookie(Method::POST, "/ui/logout", &cookie, true, Body::empty())
        .await;
    assert_eq!(logout.status, StatusCode::NO_CONTENT);
    assert!(
        logout.headers[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let after = ui
        .with_cookie(Method::GET, "/ui/flows", &cookie, false, Body::empty())
        .await;
    assert_eq!(after.status, StatusCode::SEE_OTHER, "the session has ended");
    ui.stop().await;
}

/// A flow whose description carries `<img onerror>`, whose label is a `javascript:` URL, and whose
/// log line and input carry a `<script>`: every page shows them as text, never as markup or links.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ui_escapes_user_strings() {
    let ui = Ui::start().await;
    let cookie = ui.session().await;
    let img = "<img src=x onerror=alert(1)>";
    let script = "<script>alert('log')</script>";
    let yaml = format!(
        r#"id: xss
namespace: {ns}
description: "{img}"
labels:
  link: "javascript:alert(1)"
inputs:
  - id: who
    type: STRING
tasks:
  - id: say
    type: io.kestra.plugin.core.log.Log
    message: "{script} {{{{ inputs.who }}}}"
  - id: remember
    type: io.kestra.plugin.core.kv.Set
    key: note
    value: "<script>alert('kv')</script>"
"#,
        ns = ui.ns
    );
    ui.engine.deploy(&yaml).await.unwrap();
    let mut inputs = indexmap::IndexMap::new();
    inputs.insert(
        "who".to_string(),
        kestra::core::inputs::RawInput::Text("<b onmouseover=alert(2)>x</b>".into()),
    );
    let execution = ui
        .engine
        .execute_with(&ui.ns, "xss", inputs, Default::default())
        .await
        .unwrap();
    let done = ui
        .engine
        .wait_for(&execution.id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(done.current().as_str(), "SUCCESS");

    let pages = [
        format!("/ui/flows/{}/xss", ui.ns),
        format!("/ui/flows/{}/xss/edit", ui.ns),
        format!("/ui/flows/{}/xss/run", ui.ns),
        format!("/ui/flows?namespace={}", ui.ns),
        format!("/ui/executions/{}", execution.id),
        format!("/ui/executions?namespace={}", ui.ns),
        format!("/ui/logs?namespace={}", ui.ns),
        format!("/ui/executions/{}/logs", execution.id),
        format!("/ui/namespaces/{}", ui.ns),
        "/ui/namespaces".to_string(),
        format!("/ui/triggers?namespace={}", ui.ns),
        "/ui/".to_string(),
    ];
    let mut seen_img = false;
    let mut seen_label = false;
    let mut seen_script = false;
    let mut seen_input = false;
    let mut seen_kv = false;
    for path in &pages {
        let body = ui.page(&cookie, path).await;
        for raw in [
            "<img",
            "<script>alert",
            "<b onmouseover",
            "href=\"javascript:",
            "href='javascript:",
            "src=\"javascript:",
        ] {
            assert!(
                !body.contains(raw),
                "{path} renders {raw:?} unescaped:\n{body}"
            );
        }
        seen_img |= body.contains("&lt;img src=x onerror=alert(1)&gt;");
        seen_label |= body.contains("javascript:alert(1)");
        seen_script |= body.contains("&lt;script&gt;alert('log')&lt;/script&gt;")
            || body.contains("&lt;script&gt;alert(&#39;log&#39;)&lt;/script&gt;");
        seen_input |= body.contains("&lt;b onmouseover=alert(2)&gt;x&lt;/b&gt;");
        seen_kv |= body.contains("&lt;script&gt;alert(&#39;kv&#39;)&lt;/script&gt;")
            || body.contains("&lt;script&gt;alert('kv')&lt;/script&gt;");
    }
    assert!(seen_img, "the description is shown, escaped");
    assert!(seen_label, "the label is shown as text");
    assert!(seen_script, "the log line is shown, escaped");
    assert!(seen_input, "the input is shown, escaped");
    assert!(seen_kv, "the KV value is shown, escaped");
    ui.stop().await;
}

/// The chromedriver, started on a free port for this test and stopped with it.
struct Driver {
    child: tokio::process::Child,
    url: String,
}

async fn start_driver(path: &str) -> Driver {
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let child = tokio::process::Command::new(path)
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {path}: {e}"));
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("{url}/status")).send().await
            && r.status().is_success()
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "chromedriver did not answer on {url} within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Driver { child, url }
}

/// Poll `check` (a JavaScript expression returning a truthy value when done) until it holds.
async fn wait_js(client: &fantoccini::Client, what: &str, check: &str, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let value = client
            .execute(&format!("return !!({check});"), vec![])
            .await
            .unwrap_or(serde_json::Value::Bool(false));
        if value == serde_json::Value::Bool(true) {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            let html = client.source().await.unwrap_or_default();
            panic!("timed out waiting for {what} ({check}); page:\n{html}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn shot(client: &fantoccini::Client, dir: &std::path::Path, name: &str) {
    let png = client.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a screenshot is a PNG");
    std::fs::write(dir.join(name), png).unwrap();
}

async fn js_string(client: &fantoccini::Client, expression: &str) -> String {
    client
        .execute(&format!("return String({expression});"), vec![])
        .await
        .unwrap()
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The user's path through the UI in headless Chromium.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ui_in_a_real_browser() {
    let Some(driver_path) = service_url("KESTRA_TEST_CHROMEDRIVER") else {
        return;
    };
    let browser_binary =
        std::env::var("KESTRA_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let shots = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ui-screenshots");
    std::fs::create_dir_all(&shots).unwrap();

    let ui = Ui::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = Webserver::builder(ui.engine.clone())
        .auth(Auth::Basic(BasicAuth::new(USER, PASSWORD).unwrap()))
        .follow_poll(Duration::from_millis(50))
        .build();
    let serving = tokio::spawn(server.serve(listener, ui.shutdown.clone()));

    let mut driver = start_driver(&driver_path).await;
    let profile = tempfile::tempdir().unwrap();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": browser_binary,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1400,1000",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        }),
    );
    let client =
        fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&driver.url)
            .await
            .expect("a Chromium session through chromedriver");
    let run = browse(&client, &base, &ui.ns, &shots).await;
    let _ = client.close().await;
    let _ = driver.child.kill().await;
    ui.shutdown.cancel();
    let _ = serving.await;
    ui.stop().await;
    run.unwrap_or_else(|e| panic!("{e}"));
}

async fn browse(
    client: &fantoccini::Client,
    base: &str,
    ns: &str,
    shots: &std::path::Path,
) -> Result<(), String> {
    use fantoccini::Locator;
    let long = Duration::from_secs(60);

    // Log in: a page without a session leads to the login form, which leads back.
    client.goto(&format!("{base}/ui/flows")).await.unwrap();
    wait_js(
        client,
        "the login page",
        "document.getElementById('username')",
        long,
    )
    .await;
    shot(client, shots, "01-login.png").await;
    client
        .find(Locator::Id("username"))
        .await
        .unwrap()
        .send_keys(USER)
        .await
        .unwrap();
    client
        .find(Locator::Id("password"))
        .await
        .unwrap()
        .send_keys(PASSWORD)
        .await
        .unwrap();
    client
        .find(Locator::Id("login"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_js(
        client,
        "the flows page",
        "location.pathname === '/ui/flows' && document.querySelector('h1').textContent === 'Flows'",
        long,
    )
    .await;

    // Write a flow with a mistake on line 11 (an unknown task type).
    client.goto(&format!("{base}/ui/flows/new")).await.unwrap();
    wait_js(
        client,
        "the editor",
        "document.getElementById('gutter').children.length > 0",
        long,
    )
    .await;
    let good = format!(
        "id: greet_ui\nnamespace: {ns}\ndescription: Greets someone, slowly\ninputs:\n  - id: name\n    type: STRING\ntasks:\n  - id: hello\n    type: io.kestra.plugin.core.log.Log\n    message: \"Hello, {{{{ inputs.name }}}}!\"\n  - id: pause\n    type: io.kestra.plugin.core.flow.Sleep\n    duration: PT5S\n  - id: write\n    type: io.kestra.plugin.core.storage.Write\n    content: \"Greetings to {{{{ inputs.name }}}}\"\n  - id: bye\n    type: io.kestra.plugin.core.log.Log\n    message: \"Done with {{{{ inputs.name }}}}\"\n"
    );
    let bad = good.replace(
        "    type: io.kestra.plugin.core.flow.Sleep",
        "    type: io.kestra.plugin.core.flow.Sleeep",
    );
    let bad_line = bad.lines().position(|l| l.contains("Sleeep")).unwrap() + 1;
    let source = client.find(Locator::Id("source")).await.unwrap();
    source.clear().await.unwrap();
    source.send_keys(&bad).await.unwrap();
    let typed = js_string(client, "document.getElementById('source').value").await;
    if typed != bad {
        return Err(format!("the editor holds {typed:?}, not what was typed"));
    }
    wait_js(
        client,
        "the error marked at its line",
        &format!("document.querySelector('#gutter .ln.err[data-line=\"{bad_line}\"]') && document.querySelector('#problems').textContent.includes('line {bad_line}')"),
        long,
    )
    .await;
    let marked = js_string(
        client,
        "Array.from(document.querySelectorAll('#gutter .ln.err')).map(e => e.dataset.line).join(',')",
    )
    .await;
    if marked != bad_line.to_string() {
        return Err(format!(
            "lines marked as wrong: {marked}, expected {bad_line}"
        ));
    }
    shot(client, shots, "02-editor-error.png").await;

    // Fix it (retype the line's type) and save.
    source.clear().await.unwrap();
    source.send_keys(&good).await.unwrap();
    wait_js(
        client,
        "the flow valid",
        "document.querySelector('#problems.ok') && !document.querySelector('#gutter .ln.err')",
        long,
    )
    .await;
    shot(client, shots, "03-editor-valid.png").await;
    client
        .find(Locator::Id("save"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_js(
        client,
        "the saved flow's page",
        &format!(
            "location.pathname === '/ui/flows/{ns}/greet_ui' && document.getElementById('topology')"
        ),
        long,
    )
    .await;
    let topology = js_string(client, "document.getElementById('topology').textContent").await;
    for task in ["hello", "pause", "write", "bye"] {
        if !topology.contains(task) {
            return Err(format!("task {task} missing from the topology: {topology}"));
        }
    }
    shot(client, shots, "04-flow.png").await;

    // Run it with an input.
    client
        .find(Locator::Id("run-flow"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_js(
        client,
        "the run form",
        "document.getElementById('input-name')",
        long,
    )
    .await;
    client
        .find(Locator::Id("input-name"))
        .await
        .unwrap()
        .send_keys("Ada")
        .await
        .unwrap();
    shot(client, shots, "05-run-form.png").await;
    client
        .find(Locator::Id("execute"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_js(
        client,
        "the execution page",
        "location.pathname.startsWith('/ui/executions/') && document.getElementById('exec-state')",
        long,
    )
    .await;
    client
        .find(Locator::Id("tab-logs"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // Logs arrive while it runs: the first line before the last, without reloading the page.
    wait_js(
        client,
        "the first log line",
        "document.getElementById('logs').textContent.includes('Hello, Ada!')",
        long,
    )
    .await;
    let state_then = js_string(client, "document.getElementById('exec-state').textContent").await;
    let logs_then = js_string(client, "document.getElementById('logs').textContent").await;
    client
        .execute("window.__samePage = true; return 1;", vec![])
        .await
        .unwrap();
    if state_then.contains("SUCCESS") || logs_then.contains("Done with Ada") {
        return Err(format!(
            "the first log line came only after the execution had ended ({state_then}): not live"
        ));
    }
    shot(client, shots, "06-logs-live.png").await;
    wait_js(
        client,
        "SUCCESS",
        "document.getElementById('exec-state').textContent.includes('SUCCESS')",
        long,
    )
    .await;
    wait_js(client, "the last log line, live", "document.getElementById('logs').textContent.includes('Done with Ada') && window.__samePage === true", long).await;
    shot(client, shots, "07-logs-success.png").await;
    client
        .find(Locator::Css("[data-tab-to=overview]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_js(
        client,
        "the task-run tree",
        "document.querySelectorAll('table.taskruns .state-success').length === 4",
        long,
    )
    .await;
    shot(client, shots, "07b-overview.png").await;

    // The Gantt view: one bar per task run.
    client
        .find(Locator::Id("tab-gantt"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_js(client, "the Gantt bars", "document.querySelectorAll('#gantt .gbar').length === 4 && document.getElementById('gantt').offsetParent !== null", long).await;
    shot(client, shots, "08-gantt.png").await;

    // An output file: from the outputs tab to its preview.
    client
        .find(Locator::Id("tab-outputs"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_js(
        client,
        "the output file link",
        "document.querySelector('#outputs a.file')",
        long,
    )
    .await;
    shot(client, shots, "09-outputs.png").await;
    client
        .find(Locator::Css("#outputs a.file"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_js(client, "the file preview", "document.getElementById('file-content') && document.getElementById('file-content').textContent.includes('Greetings to Ada')", long).await;
    let download = js_string(
        client,
        "document.getElementById('download').getAttribute('href')",
    )
    .await;
    if !download.starts_with("/api/v1/main/executions/") {
        return Err(format!("download link {download}"));
    }
    shot(client, shots, "10-file.png").await;

    // The dashboard counts it.
    client.goto(&format!("{base}/ui/")).await.unwrap();
    wait_js(
        client,
        "the dashboard",
        "document.querySelector('.chart .seg.state-success')",
        long,
    )
    .await;
    shot(client, shots, "11-dashboard.png").await;
    Ok(())
}

/// The execution page's buttons and the run form, as htmx sends them: kill a running execution,
/// restart it, replay it from a task run (a new execution), refuse a restart of a successful one;
/// a run with a missing required input answers the error as a fragment and creates nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ui_execution_actions() {
    let ui = Ui::start().await;
    let cookie = ui.session().await;
    let yaml = format!(
        "id: slow\nnamespace: {}\ninputs:\n  - id: who\n    type: STRING\ntasks:\n  - id: first\n    type: io.kestra.plugin.core.log.Log\n    message: \"hi {{{{ inputs.who }}}}\"\n  - id: nap\n    type: io.kestra.plugin.core.flow.Sleep\n    duration: PT60S\n",
        ui.ns
    );
    ui.engine.deploy(&yaml).await.unwrap();
    let htmx = |method: Method, path: String, content_type: Option<&str>, body: Body| {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::COOKIE, &cookie)
            .header("HX-Request", "true");
        if let Some(ct) = content_type {
            request = request.header(header::CONTENT_TYPE, ct);
        }
        request.body(body).unwrap()
    };
    let boundary = "XyZboundary";
    let multipart = |fields: &[(&str, &str)]| {
        let mut body = String::new();
        for (name, value) in fields {
            body.push_str(&format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            ));
        }
        body.push_str(&format!("--{boundary}--\r\n"));
        body
    };
    let content_type = format!("multipart/form-data; boundary={boundary}");

    // A missing required input: the error comes back in the form, no execution is created.
    let missing = ui
        .send(htmx(
            Method::POST,
            format!("/ui/flows/{}/slow/run", ui.ns),
            Some(&content_type),
            Body::from(multipart(&[("who", "")])),
        ))
        .await;
    assert_eq!(missing.status, StatusCode::OK);
    assert!(missing.body.contains("alert-error"), "{}", missing.body);
    assert!(missing.body.contains("who"), "{}", missing.body);
    assert!(!missing.headers.contains_key("hx-redirect"));

    // Labels: a line that is not key:value, or a system label, comes back in the form (escaped).
    for (labels, expected) in [
        ("team:ui\n<img src=x onerror=alert(1)>", "line 2"),
        ("system.restarted:true", "is a system label"),
    ] {
        let refused = ui
            .send(htmx(
                Method::POST,
                format!("/ui/flows/{}/slow/run", ui.ns),
                Some(&content_type),
                Body::from(multipart(&[("who", "Grace"), ("_labels", labels)])),
            ))
            .await;
        assert_eq!(refused.status, StatusCode::OK);
        assert!(
            refused.body.contains("alert-error") && refused.body.contains(expected),
            "{labels}: {}",
            refused.body
        );
        assert!(!refused.body.contains("<img"), "{}", refused.body);
        assert!(!refused.headers.contains_key("hx-redirect"));
    }
    let form = ui
        .page(&cookie, &format!("/ui/flows/{}/slow/run", ui.ns))
        .await;
    assert!(form.contains("name=\"_labels\""), "{form}");

    let run = ui
        .send(htmx(
            Method::POST,
            format!("/ui/flows/{}/slow/run", ui.ns),
            Some(&content_type),
            Body::from(multipart(&[
                ("who", "Grace"),
                ("_labels", "team: ui\r\n\r\nenv:test"),
            ])),
        ))
        .await;
    assert_eq!(run.status, StatusCode::NO_CONTENT, "{}", run.body);
    let target = run.headers["hx-redirect"].to_str().unwrap().to_string();
    let id = target.strip_prefix("/ui/executions/").unwrap().to_string();
    let page = ui.page(&cookie, &target).await;
    assert!(page.contains("Grace"), "the input shows on the page");
    let created = ui.engine.execution(&id).await.unwrap().unwrap();
    for (key, value) in [("team", "ui"), ("env", "test")] {
        assert!(
            created
                .labels
                .iter()
                .any(|l| l.key == key && l.value == value),
            "{key}:{value} in {:?}",
            created.labels
        );
    }
    assert!(
        !created.inputs.contains_key("_labels"),
        "{:?}",
        created.inputs
    );

    // Kill while it sleeps.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let e = ui.engine.execution(&id).await.unwrap().unwrap();
        if e.task_run_list.iter().any(|t| t.task_id == "nap") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "nap never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let live = ui.page(&cookie, &format!("/ui/executions/{id}/live")).await;
    assert!(
        live.contains("id=\"kill\""),
        "a running execution offers Kill"
    );
    assert!(
        live.contains("every 1s"),
        "a running execution's part is polled"
    );
    let kill = ui
        .send(htmx(
            Method::POST,
            format!("/ui/executions/{id}/kill"),
            None,
            Body::empty(),
        ))
        .await;
    assert_eq!(kill.status, StatusCode::NO_CONTENT, "{}", kill.body);
    assert_eq!(
        kill.headers["hx-redirect"],
        format!("/ui/executions/{id}").as_str()
    );
    let killed = ui
        .engine
        .wait_for(&id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(killed.current().as_str(), "KILLED");
    let live = ui.page(&cookie, &format!("/ui/executions/{id}/live")).await;
    assert!(
        live.contains("id=\"restart\""),
        "a killed execution offers Restart"
    );
    assert!(
        !live.contains("every 1s"),
        "an ended execution is not polled"
    );

    // Replay from the first task run: a new execution, and the browser is sent to it.
    let first = killed
        .task_run_list
        .iter()
        .find(|t| t.task_id == "first")
        .unwrap()
        .id
        .clone();
    let replay = ui
        .send(htmx(
            Method::POST,
            format!("/ui/executions/{id}/replay?taskRunId={first}"),
            None,
            Body::empty(),
        ))
        .await;
    assert_eq!(replay.status, StatusCode::NO_CONTENT, "{}", replay.body);
    let replayed = replay.headers["hx-redirect"].to_str().unwrap().to_string();
    assert!(replayed.starts_with("/ui/executions/") && !replayed.ends_with(&id));
    let replayed_id = replayed.trim_start_matches("/ui/executions/").to_string();
    let replayed_page = ui.page(&cookie, &replayed).await;
    assert!(replayed_page.contains("Replay of"), "{replayed_page}");

    // Restart the killed one: accepted; it runs again.
    let restart = ui
        .send(htmx(
            Method::POST,
            format!("/ui/executions/{id}/restart"),
            None,
            Body::empty(),
        ))
        .await;
    assert_eq!(restart.status, StatusCode::NO_CONTENT, "{}", restart.body);
    // Resume is refused for an execution that is not PAUSED, with a page naming why.
    let resume = ui
        .send(htmx(
            Method::POST,
            format!("/ui/executions/{id}/resume"),
            None,
            Body::empty(),
        ))
        .await;
    assert_eq!(resume.status, StatusCode::CONFLICT);
    assert!(
        resume
            .body
            .contains("only a PAUSED execution can be resumed")
    );
    for running in [&id, &replayed_id] {
        let _ = ui.engine.kill(running).await;
    }
    ui.stop().await;
}

fn img_text() -> &'static str {
    "<img src=x onerror=alert(1)>"
}

/// A request as htmx sends it (session cookie and `HX-Request`), with a form body.
fn htmx_post(path: &str, cookie: Option<&str>, hx: bool, form: &str) -> Request<Body> {
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, cookie);
    }
    if hx {
        request = request.header("HX-Request", "true");
    }
    request.body(Body::from(form.to_string())).unwrap()
}

/// The triggers page's buttons as htmx sends them: disable and enable a trigger (its row comes
/// back with the new state, and the repository holds it), unlock a locked one, show "not locked"
/// inline for one that is not, backfill a Schedule (a reversed range or a bad date shown inline, a
/// valid one fires its slot); a request without the session cookie or without the UI's header
/// changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ui_trigger_actions() {
    let ui = Ui::start().await;
    let cookie = ui.session().await;
    let yaml = format!(
        "id: sched\nnamespace: {}\ntasks:\n  - id: hi\n    type: io.kestra.plugin.core.log.Log\n    message: hi\ntriggers:\n  - id: yearly\n    type: io.kestra.plugin.core.trigger.Schedule\n    cron: \"0 3 1 1 *\"\n",
        ui.ns
    );
    ui.engine.deploy(&yaml).await.unwrap();
    let uid = kestra::core::model::trigger_uid("main", &ui.ns, "sched", "yearly");
    let stored = || async { ui.engine.repositories().triggers.find(&uid).await.unwrap() };
    let base = format!("/ui/triggers/{}/sched/yearly", ui.ns);

    // Refused without the cookie, and with the cookie but without the UI's header.
    let anonymous = ui
        .send(htmx_post(&format!("{base}/disable"), None, true, ""))
        .await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    let forged = ui
        .send(htmx_post(
            &format!("{base}/disable"),
            Some(&cookie),
            false,
            "",
        ))
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN, "{}", forged.body);
    assert!(
        !stored().await.is_some_and(|t| t.disabled),
        "a refused request disables nothing"
    );

    let disable = ui
        .send(htmx_post(
            &format!("{base}/disable"),
            Some(&cookie),
            true,
            "",
        ))
        .await;
    assert_eq!(disable.status, StatusCode::OK, "{}", disable.body);
    assert!(disable.body.starts_with("<tr"), "the row: {}", disable.body);
    assert!(disable.body.contains(">disabled<"), "{}", disable.body);
    assert!(
        disable.body.contains(&format!("hx-post=\"{base}/enable\"")),
        "a disabled trigger offers Enable: {}",
        disable.body
    );
    assert!(stored().await.unwrap().disabled);
    let page = ui
        .page(&cookie, &format!("/ui/triggers?namespace={}", ui.ns))
        .await;
    assert!(
        page.contains(&format!("hx-post=\"{base}/enable\"")),
        "{page}"
    );

    let enable = ui
        .send(htmx_post(
            &format!("{base}/enable"),
            Some(&cookie),
            true,
            "",
        ))
        .await;
    assert_eq!(enable.status, StatusCode::OK, "{}", enable.body);
    assert!(enable.body.contains(">enabled<"), "{}", enable.body);
    assert!(enable.body.contains(&format!("hx-post=\"{base}/disable\"")));
    assert!(!stored().await.unwrap().disabled);

    // Not locked: the row comes back with the error inline.
    let not_locked = ui
        .send(htmx_post(
            &format!("{base}/unlock"),
            Some(&cookie),
            true,
            "",
        ))
        .await;
    assert_eq!(not_locked.status, StatusCode::OK, "{}", not_locked.body);
    assert!(
        not_locked.body.contains("alert-error") && not_locked.body.contains("is not locked"),
        "{}",
        not_locked.body
    );

    // Locked by a lost execution (as a scheduler that died would leave it): Unlock releases it.
    let mut unit = ui.engine.queue().begin_triggers().await.unwrap();
    let mut locked = unit
        .claim(&uid)
        .await
        .unwrap()
        .expect("the trigger is free");
    locked.execution_id = Some("lost-execution".into());
    locked.worker_id = Some("worker-gone".into());
    unit.save(&locked).await.unwrap();
    unit.commit().await.unwrap();
    let page = ui
        .page(&cookie, &format!("/ui/triggers?namespace={}", ui.ns))
        .await;
    assert!(page.contains(">locked<"), "{page}");
    let unlock = ui
        .send(htmx_post(
            &format!("{base}/unlock"),
            Some(&cookie),
            true,
            "",
        ))
        .await;
    assert_eq!(unlock.status, StatusCode::OK, "{}", unlock.body);
    assert!(!unlock.body.contains("alert-error"), "{}", unlock.body);
    assert!(!unlock.body.contains(">locked<"), "{}", unlock.body);
    let after = stored().await.unwrap();
    assert_eq!(after.execution_id, None);
    assert_eq!(after.worker_id, None);

    // Backfill a Schedule: the form is on its row; a reversed range and a bad date are shown
    // inline; a valid range starts it and its slot fires an execution labelled with the backfill.
    assert!(
        unlock
            .body
            .contains(&format!("hx-post=\"{base}/backfill\"")),
        "a Schedule offers Backfill: {}",
        unlock.body
    );
    let reversed = ui
        .send(htmx_post(
            &format!("{base}/backfill"),
            Some(&cookie),
            true,
            "start=2020-01-02T00%3A00&end=2020-01-01T00%3A00",
        ))
        .await;
    assert_eq!(reversed.status, StatusCode::OK, "{}", reversed.body);
    assert!(
        reversed.body.contains("before its end"),
        "{}",
        reversed.body
    );
    let bad_date = ui
        .send(htmx_post(
            &format!("{base}/backfill"),
            Some(&cookie),
            true,
            &format!("start={}", enc(img_text())),
        ))
        .await;
    assert!(!bad_date.body.contains("<img"), "{}", bad_date.body);
    assert!(
        bad_date.body.contains("field &#39;start&#39;") || bad_date.body.contains("field 'start'"),
        "{}",
        bad_date.body
    );
    assert!(
        stored().await.unwrap().backfill.is_none(),
        "nothing started"
    );
    let forged = ui
        .send(htmx_post(
            &format!("{base}/backfill"),
            Some(&cookie),
            false,
            "start=2020-01-01T00%3A00&end=2020-01-02T00%3A00",
        ))
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    let backfill = ui
        .send(htmx_post(
            &format!("{base}/backfill"),
            Some(&cookie),
            true,
            "start=2020-01-01T00%3A00&end=2020-01-02T00%3A00%3A00",
        ))
        .await;
    assert_eq!(backfill.status, StatusCode::OK, "{}", backfill.body);
    assert!(!backfill.body.contains("alert-error"), "{}", backfill.body);
    assert!(
        backfill.body.contains("backfill at 2020-01-01 03:00:00"),
        "{}",
        backfill.body
    );
    let query = kestra::core::repository::ExecutionQuery {
        namespace: Some(ui.ns.clone()),
        flow_id: Some("sched".into()),
        ..Default::default()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let found = ui
            .engine
            .repositories()
            .executions
            .search(&query, &kestra::core::repository::Pageable::new(1, 10))
            .await
            .unwrap();
        if let Some(e) = found.results.first() {
            assert!(
                e.labels.iter().any(|l| l.key == "system.backfillId"),
                "{:?}",
                e.labels
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the backfill's slot never fired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A backfill with the flow's inputs and labels, on a flow whose execution holds the trigger
    // (a Pause): its slot fires an execution with them; the running backfill's row offers Pause,
    // then Resume, and Delete, each stored through the trigger seam.
    let held_yaml = format!(
        "id: held\nnamespace: {}\ninputs:\n  - id: who\n    type: STRING\n    defaults: nobody\n  - id: doc\n    type: FILE\n    required: false\ntasks:\n  - id: wait\n    type: io.kestra.plugin.core.flow.Pause\n    pauseDuration: PT10M\ntriggers:\n  - id: daily\n    type: io.kestra.plugin.core.trigger.Schedule\n    cron: \"0 3 * * *\"\n",
        ui.ns
    );
    ui.engine.deploy(&held_yaml).await.unwrap();
    let held_uid = kestra::core::model::trigger_uid("main", &ui.ns, "held", "daily");
    let held = || async {
        ui.engine
            .repositories()
            .triggers
            .find(&held_uid)
            .await
            .unwrap()
    };
    let held_base = format!("/ui/triggers/{}/held/daily", ui.ns);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while held().await.is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the scheduler never stored the trigger of 'held'"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let page = ui
        .page(&cookie, &format!("/ui/triggers?namespace={}", ui.ns))
        .await;
    assert!(
        page.contains(&format!("hx-post=\"{held_base}/backfill\"")),
        "{page}"
    );
    assert!(
        page.contains("name=\"inputs.who\"") && page.contains("value=\"nobody\""),
        "the backfill form offers the flow's inputs with their defaults: {page}"
    );
    assert!(
        !page.contains("name=\"inputs.doc\""),
        "no FILE input in a backfill form: {page}"
    );
    assert!(page.contains("name=\"labels\""), "{page}");
    let bad_labels = ui
        .send(htmx_post(
            &format!("{held_base}/backfill"),
            Some(&cookie),
            true,
            &format!(
                "start=2020-01-01T00%3A00&end=2020-01-03T00%3A00&labels={}",
                enc("ok:1\n<img src=x onerror=alert(1)>")
            ),
        ))
        .await;
    assert_eq!(bad_labels.status, StatusCode::OK, "{}", bad_labels.body);
    assert!(!bad_labels.body.contains("<img"), "{}", bad_labels.body);
    assert!(
        bad_labels.body.contains("line 2") && bad_labels.body.contains("is not key:value"),
        "{}",
        bad_labels.body
    );
    assert!(held().await.unwrap().backfill.is_none(), "nothing started");
    let system = ui
        .send(htmx_post(
            &format!("{held_base}/backfill"),
            Some(&cookie),
            true,
            "start=2020-01-01T00%3A00&labels=system.backfillId%3Ax",
        ))
        .await;
    assert!(system.body.contains("is a system label"), "{}", system.body);
    assert!(held().await.unwrap().backfill.is_none(), "nothing started");
    let started = ui
        .send(htmx_post(
            &format!("{held_base}/backfill"),
            Some(&cookie),
            true,
            &format!(
                "start=2020-01-01T00%3A00&end=2020-01-03T00%3A00&inputs.who=backfiller&labels={}",
                enc("origin: ui-backfill\n\nteam:data")
            ),
        ))
        .await;
    assert_eq!(started.status, StatusCode::OK, "{}", started.body);
    assert!(!started.body.contains("alert-error"), "{}", started.body);
    assert!(
        started
            .body
            .contains(&format!("hx-post=\"{held_base}/backfill/pause\"")),
        "a running backfill offers Pause: {}",
        started.body
    );
    assert!(
        started
            .body
            .contains(&format!("hx-post=\"{held_base}/backfill/delete\"")),
        "{}",
        started.body
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let execution_id = loop {
        let t = held().await.unwrap();
        if let Some(id) = t.execution_id {
            break id;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the backfill's first slot never fired: {t:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let execution = loop {
        if let Some(e) = ui.engine.execution(&execution_id).await.unwrap() {
            break e;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the backfilled execution {execution_id} never reached the repository"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for (key, value) in [("origin", "ui-backfill"), ("team", "data")] {
        assert!(
            execution
                .labels
                .iter()
                .any(|l| l.key == key && l.value == value),
            "{key}:{value} in {:?}",
            execution.labels
        );
    }
    assert_eq!(
        execution.inputs["who"], "backfiller",
        "{:?}",
        execution.inputs
    );

    let forged = ui
        .send(htmx_post(
            &format!("{held_base}/backfill/pause"),
            Some(&cookie),
            false,
            "",
        ))
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    assert!(!held().await.unwrap().backfill.unwrap().paused);
    let paused = ui
        .send(htmx_post(
            &format!("{held_base}/backfill/pause"),
            Some(&cookie),
            true,
            "",
        ))
        .await;
    assert_eq!(paused.status, StatusCode::OK, "{}", paused.body);
    assert!(!paused.body.contains("alert-error"), "{}", paused.body);
    assert!(paused.body.contains("backfill paused"), "{}", paused.body);
    assert!(
        paused
            .body
            .contains(&format!("hx-post=\"{held_base}/backfill/unpause\"")),
        "a paused backfill offers Resume: {}",
        paused.body
    );
    assert!(held().await.unwrap().backfill.unwrap().paused);
    let resumed = ui
        .send(htmx_post(
            &format!("{held_base}/backfill/unpause"),
            Some(&cookie),
            true,
            "",
        ))
        .await;
    assert_eq!(resumed.status, StatusCode::OK, "{}", resumed.body);
    assert!(!resumed.body.contains("alert-error"), "{}", resumed.body);
    assert!(
        resumed
            .body
            .contains(&format!("hx-post=\"{held_base}/backfill/pause\"")),
        "{}",
        resumed.body
    );
    assert!(!held().await.unwrap().backfill.unwrap().paused);
    let deleted = ui
        .send(htmx_post(
            &format!("{held_base}/backfill/delete"),
            Some(&cookie),
            true,
            "",
        ))
        .await;
    assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.body);
    assert!(!deleted.body.contains("alert-error"), "{}", deleted.body);
    // Deleted: it ends at its current slot (the scheduler clears it at its next step once the
    // trigger is free).
    let after = held().await.unwrap();
    let b = after
        .backfill
        .expect("cleared at the scheduler's next step");
    assert_eq!(b.end, Some(b.current_date), "{b:?}");
    ui.engine.kill(&execution_id).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let t = held().await.unwrap();
        if t.backfill.is_none() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the deleted backfill was never cleared: {t:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // No backfill runs any more: its buttons are gone, and a late Pause says why, inline.
    let late = ui
        .send(htmx_post(
            &format!("{held_base}/backfill/pause"),
            Some(&cookie),
            true,
            "",
        ))
        .await;
    assert_eq!(late.status, StatusCode::OK, "{}", late.body);
    assert!(
        late.body.contains("alert-error") && late.body.contains("no backfill runs"),
        "{}",
        late.body
    );
    assert!(!late.body.contains("/backfill/pause\""), "{}", late.body);

    // An unknown trigger: the error, inline and escaped.
    let unknown = ui
        .send(htmx_post(
            &format!(
                "/ui/triggers/{}/sched/{}/disable",
                ui.ns,
                enc("<img src=x onerror=alert(1)>")
            ),
            Some(&cookie),
            true,
            "",
        ))
        .await;
    assert_eq!(unknown.status, StatusCode::OK, "{}", unknown.body);
    assert!(!unknown.body.contains("<img"), "{}", unknown.body);
    assert!(
        unknown
            .body
            .contains("no trigger '&lt;img src=x onerror=alert(1)&gt;'"),
        "{}",
        unknown.body
    );
    ui.stop().await;
}

/// The namespace page's KV card as htmx sends it: set a key (typed as the API types it, with a
/// ttl), show a hostile value and a hostile key's error escaped, refuse a bad ttl inline, delete a
/// key; a request without the session cookie or without the UI's header changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ui_kv_actions() {
    let ui = Ui::start().await;
    let cookie = ui.session().await;
    let store = kestra::core::worker::KvStore::new(ui.engine.storage().clone(), "main");
    let set = format!("/ui/namespaces/{}/kv", ui.ns);
    let delete = format!("{set}/delete");
    let img = "<img src=x onerror=alert(1)>";

    let anonymous = ui
        .send(htmx_post(&set, None, true, "key=answer&value=42"))
        .await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    let forged = ui
        .send(htmx_post(&set, Some(&cookie), false, "key=answer&value=42"))
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN, "{}", forged.body);
    assert!(store.get(&ui.ns, "answer").await.unwrap().is_none());

    let answer = ui
        .send(htmx_post(
            &set,
            Some(&cookie),
            true,
            "key=answer&value=42&ttl=",
        ))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert!(
        answer.body.starts_with("<div class=\"card\" id=\"kv\""),
        "{}",
        answer.body
    );
    let entry = store.get(&ui.ns, "answer").await.unwrap().unwrap();
    assert_eq!(entry.value, serde_json::json!(42));
    assert_eq!(entry.r#type.as_deref(), Some("NUMBER"));
    assert_eq!(entry.expiration_date, None);

    let hostile = ui
        .send(htmx_post(
            &set,
            Some(&cookie),
            true,
            &format!("key=note&value={}&ttl=PT1H", enc(img)),
        ))
        .await;
    assert_eq!(hostile.status, StatusCode::OK, "{}", hostile.body);
    assert!(!hostile.body.contains("<img"), "{}", hostile.body);
    assert!(
        hostile.body.contains("&lt;img src=x onerror=alert(1)&gt;"),
        "{}",
        hostile.body
    );
    let note = store.get(&ui.ns, "note").await.unwrap().unwrap();
    assert_eq!(note.value, serde_json::json!(img));
    let expires = note.expiration_date.expect("the ttl sets an expiration");
    let in_an_hour = chrono::Utc::now() + chrono::Duration::hours(1);
    assert!((in_an_hour - expires).num_seconds().abs() < 60, "{expires}");
    let page = ui.page(&cookie, &format!("/ui/namespaces/{}", ui.ns)).await;
    assert!(!page.contains("<img"), "{page}");
    assert!(page.contains("id=\"kv-set\""), "the page has the form");

    let bad_key = ui
        .send(htmx_post(
            &set,
            Some(&cookie),
            true,
            &format!("key={}&value=1", enc(img)),
        ))
        .await;
    assert_eq!(bad_key.status, StatusCode::OK, "{}", bad_key.body);
    assert!(!bad_key.body.contains("<img"), "{}", bad_key.body);
    assert!(
        bad_key.body.contains("alert-error")
            && bad_key
                .body
                .contains("invalid KV key '&lt;img src=x onerror=alert(1)&gt;'"),
        "{}",
        bad_key.body
    );

    let bad_ttl = ui
        .send(htmx_post(
            &set,
            Some(&cookie),
            true,
            "key=later&value=x&ttl=soon",
        ))
        .await;
    assert_eq!(bad_ttl.status, StatusCode::OK, "{}", bad_ttl.body);
    assert!(
        bad_ttl.body.contains("field &#39;ttl&#39;") || bad_ttl.body.contains("field 'ttl'"),
        "{}",
        bad_ttl.body
    );
    assert!(store.get(&ui.ns, "later").await.unwrap().is_none());

    // Delete: refused without the header; then gone.
    let forged = ui
        .send(htmx_post(&delete, Some(&cookie), false, "key=answer"))
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    assert!(store.get(&ui.ns, "answer").await.unwrap().is_some());
    let deleted = ui
        .send(htmx_post(&delete, Some(&cookie), true, "key=answer"))
        .await;
    assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.body);
    assert!(!deleted.body.contains("alert-error"), "{}", deleted.body);
    assert!(store.get(&ui.ns, "answer").await.unwrap().is_none());
    assert!(
        store.get(&ui.ns, "note").await.unwrap().is_some(),
        "only that key"
    );
    let again = ui
        .send(htmx_post(&delete, Some(&cookie), true, "key=answer"))
        .await;
    assert!(
        again.body.contains("no key &#39;answer&#39; to delete")
            || again.body.contains("no key 'answer' to delete"),
        "{}",
        again.body
    );
    ui.stop().await;
}
