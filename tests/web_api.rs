//! The REST API of the webserver over a real engine, on SQLite and, when their URLs are set, on
//! PostgreSQL and MariaDB: flows, executions (multipart inputs and files, `wait`, labels, follow as
//! server-sent events, kill, delete), logs, configs, the error bodies and status codes, the body
//! limit, and basic authentication (including raw-path bypass attempts over a real socket).

#![cfg(feature = "webserver")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use base64::Engine as _;
use common::sqlite_url;
use kestra::Engine;
use kestra::jdbc::JdbcBackend;
use kestra::storage::LocalStorage;
use kestra::webserver::{Auth, BasicAuth, Webserver};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

const USER: &str = "admin@kestra.io";
const PASSWORD: &str = "k3stra-test";
const MAX_BODY: usize = 64 * 1024;

struct Api {
    router: Router,
    engine: Arc<Engine>,
    shutdown: CancellationToken,
    ns: String,
    _dir: tempfile::TempDir,
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {} {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

impl Api {
    async fn start(url: &str) -> Api {
        let dir = tempfile::tempdir().unwrap();
        let backend = JdbcBackend::connect(url).await.unwrap();
        let storage = Arc::new(LocalStorage::new(dir.path().join("storage")).unwrap());
        let engine =
            Arc::new(Engine::builder(backend.queue(), backend.repositories(), storage).start());
        let webserver = Webserver::builder(engine.clone())
            .auth(Auth::Basic(BasicAuth::new(USER, PASSWORD).unwrap()))
            .max_body_bytes(MAX_BODY)
            .follow_poll(Duration::from_millis(50))
            .build();
        let shutdown = CancellationToken::new();
        let router = webserver.router(shutdown.clone());
        let ns = format!("web.t{}", kestra::core::model::new_id().to_lowercase());
        Api {
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
            .unwrap()
            .to_vec();
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn call(&self, method: Method, path: &str, content_type: &str, body: Body) -> Answer {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, basic(USER, PASSWORD));
        if !content_type.is_empty() {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        self.send(request.body(body).unwrap()).await
    }

    async fn get(&self, path: &str) -> Answer {
        self.call(Method::GET, path, "", Body::empty()).await
    }

    async fn yaml(&self, method: Method, path: &str, yaml: &str) -> Answer {
        self.call(
            method,
            path,
            "application/x-yaml",
            Body::from(yaml.to_string()),
        )
        .await
    }

    async fn delete(&self, path: &str) -> Answer {
        self.call(Method::DELETE, path, "", Body::empty()).await
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

/// A query-string value, percent-encoded.
fn form_urlencoded_path(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A multipart body with text fields and files.
fn multipart(fields: &[(&str, &str)], files: &[(&str, &str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "kestra-test-boundary-7d1f";
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    for (name, file_name, content) in files {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{file_name}\"\r\nContent-Type: application/octet-stream\r\n\r\n")
                .as_bytes(),
        );
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

async fn flows(api: &Api) {
    let ns = &api.ns;
    let hello = format!(
        "id: hello\nnamespace: {ns}\ndescription: says hello\nlabels:\n  team: data\ntasks:\n  - id: hi\n    type: io.kestra.plugin.core.log.Log\n    message: hi\n"
    );

    // Create; a second create is a conflict.
    let created = api.yaml(Method::POST, "/api/v1/main/flows", &hello).await;
    assert_eq!(created.status, StatusCode::OK, "{:?}", created.json());
    let body = created.json();
    assert_eq!(body["id"], "hello");
    assert_eq!(body["namespace"], ns.as_str());
    assert_eq!(body["revision"], 1);
    assert_eq!(body["source"], hello.as_str());
    assert_eq!(body["tasks"][0]["id"], "hi");
    let again = api.yaml(Method::POST, "/api/v1/main/flows", &hello).await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert!(
        again.json()["message"]
            .as_str()
            .unwrap()
            .contains("already exists")
    );

    // An invalid flow: 422 naming the line, column and path of the problem.
    let invalid = format!(
        "id: broken\nnamespace: {ns}\ntasks:\n  - id: hi\n    type: io.kestra.plugin.core.log.Nope\n    message: hi\n"
    );
    let refused = api.yaml(Method::POST, "/api/v1/main/flows", &invalid).await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    let errors = refused.json()["_embedded"]["errors"].clone();
    assert_eq!(errors[0]["line"], 5, "{errors}");
    assert_eq!(errors[0]["path"], "tasks[0].type", "{errors}");
    assert!(
        errors[0]["message"].as_str().unwrap().contains("Nope"),
        "{errors}"
    );
    let not_yaml = api
        .yaml(Method::POST, "/api/v1/main/flows", "id: [unclosed\n")
        .await;
    assert_eq!(not_yaml.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(not_yaml.json()["_embedded"]["errors"][0]["line"], 1);

    // Get, through the tenant path and the older alias; the source only when asked.
    let got = api.get(&format!("/api/v1/flows/{ns}/hello")).await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(got.json().get("source").is_none());
    assert_eq!(got.json()["description"], "says hello");
    let got = api
        .get(&format!("/api/v1/main/flows/{ns}/hello?source=true"))
        .await;
    assert_eq!(got.json()["source"], hello.as_str());
    assert_eq!(
        api.get(&format!("/api/v1/main/flows/{ns}/missing"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.get(&format!("/api/v1/main/flows/{ns}/hello?source=maybe"))
            .await
            .status,
        StatusCode::BAD_REQUEST
    );

    // Update: a new revision; the same source keeps it; the id cannot change; unknown flow is 404.
    let changed = hello.replace("message: hi", "message: hello again");
    let updated = api
        .yaml(
            Method::PUT,
            &format!("/api/v1/main/flows/{ns}/hello"),
            &changed,
        )
        .await;
    assert_eq!(updated.status, StatusCode::OK, "{:?}", updated.json());
    assert_eq!(updated.json()["revision"], 2);
    let same = api
        .yaml(
            Method::PUT,
            &format!("/api/v1/main/flows/{ns}/hello"),
            &changed,
        )
        .await;
    assert_eq!(same.json()["revision"], 2);
    let renamed = api
        .yaml(
            Method::PUT,
            &format!("/api/v1/main/flows/{ns}/other"),
            &changed,
        )
        .await;
    assert_eq!(renamed.status, StatusCode::UNPROCESSABLE_ENTITY);
    let unknown = api
        .yaml(
            Method::PUT,
            &format!("/api/v1/main/flows/{ns}/ghost"),
            &changed.replace("id: hello", "id: ghost"),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let old = api
        .get(&format!(
            "/api/v1/main/flows/{ns}/hello?revision=1&source=true"
        ))
        .await;
    assert_eq!(old.json()["source"], hello.as_str());

    // Revisions, oldest first.
    let revisions = api
        .get(&format!("/api/v1/main/flows/{ns}/hello/revisions"))
        .await
        .json();
    let revisions = revisions.as_array().unwrap();
    assert_eq!(revisions.len(), 2);
    assert_eq!(revisions[0]["revision"], 1);
    assert_eq!(revisions[1]["source"], changed.as_str());

    // Search: filters, paging, allow-listed sort and parameters.
    let second = format!(
        "id: second\nnamespace: {ns}.child\ntasks:\n  - id: hi\n    type: io.kestra.plugin.core.log.Log\n    message: hi\n"
    );
    assert_eq!(
        api.yaml(Method::POST, "/api/v1/main/flows", &second)
            .await
            .status,
        StatusCode::OK
    );
    let found = api
        .get(&format!(
            "/api/v1/main/flows/search?namespace={ns}&sort=id:asc&size=1"
        ))
        .await
        .json();
    assert_eq!(found["total"], 2);
    assert_eq!(found["results"].as_array().unwrap().len(), 1);
    assert_eq!(found["results"][0]["id"], "hello");
    let page2 = api
        .get(&format!(
            "/api/v1/main/flows/search?namespace={ns}&sort=id:asc&size=1&page=2"
        ))
        .await
        .json();
    assert_eq!(page2["results"][0]["id"], "second");
    let labelled = api
        .get(&format!(
            "/api/v1/main/flows/search?namespace={ns}&labels=team:data"
        ))
        .await
        .json();
    assert_eq!(labelled["total"], 1);
    let by_text = api
        .get(&format!(
            "/api/v1/main/flows/search?namespace={ns}&q=SECOND"
        ))
        .await
        .json();
    assert_eq!(by_text["total"], 1);
    for bad in [
        "sort=source:asc",
        "sort=id:sideways",
        "size=0",
        "page=0",
        "size=100000",
        "page=x",
        "labels=nocolon",
        "filter=anything",
    ] {
        let answer = api.get(&format!("/api/v1/main/flows/search?{bad}")).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(answer.json()["message"].as_str().is_some(), "{bad}");
    }

    // Distinct namespaces.
    let namespaces = api
        .get("/api/v1/main/flows/distinct-namespaces")
        .await
        .json();
    let namespaces: Vec<&str> = namespaces
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(namespaces.contains(&ns.as_str()), "{namespaces:?}");
    assert!(namespaces.contains(&format!("{ns}.child").as_str()));

    // Validate several documents: one report each, the invalid one with its positions.
    let reports = api
        .yaml(
            Method::POST,
            "/api/v1/main/flows/validate",
            &format!("{hello}---\n{invalid}"),
        )
        .await;
    assert_eq!(reports.status, StatusCode::OK);
    let reports = reports.json();
    assert_eq!(reports[0]["flow"], "hello");
    assert!(reports[0].get("constraints").is_none());
    assert!(reports[1]["constraints"].as_str().unwrap().contains("Nope"));
    assert_eq!(reports[1]["errors"][0]["path"], "tasks[0].type");
    assert!(reports[1]["errors"][0]["line"].as_u64().unwrap() >= 5);

    // Delete: 204, then gone (history kept), a second delete is 404.
    assert_eq!(
        api.delete(&format!("/api/v1/main/flows/{ns}.child/second"))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        api.get(&format!("/api/v1/main/flows/{ns}.child/second"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.delete(&format!("/api/v1/main/flows/{ns}.child/second"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let history = api
        .get(&format!("/api/v1/main/flows/{ns}.child/second/revisions"))
        .await
        .json();
    assert_eq!(history.as_array().unwrap().last().unwrap()["deleted"], true);
    // A deleted flow cannot be run.
    assert_eq!(
        api.call(
            Method::POST,
            &format!("/api/v1/main/executions/{ns}.child/second"),
            "",
            Body::empty()
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
}

async fn executions(api: &Api) {
    let ns = &api.ns;
    let greet = format!(
        r#"id: greet
namespace: {ns}
inputs:
  - id: name
    type: STRING
  - id: doc
    type: FILE
    required: false
tasks:
  - id: say
    type: io.kestra.plugin.core.log.Log
    message: "Hello {{{{ inputs.name }}}}"
  - id: out
    type: io.kestra.plugin.core.debug.Return
    format: "{{{{ inputs.name }}}}"
"#
    );
    assert_eq!(
        api.yaml(Method::POST, "/api/v1/main/flows", &greet)
            .await
            .status,
        StatusCode::OK
    );

    // Trigger with a text input and a file, wait for the end, with labels.
    let (content_type, body) = multipart(&[("name", "web")], &[("doc", "notes.txt", b"file body")]);
    let done = api
        .call(
            Method::POST,
            &format!(
                "/api/v1/main/executions/{ns}/greet?wait=true&labels=team:data&labels=env:test"
            ),
            &content_type,
            Body::from(body),
        )
        .await;
    assert_eq!(done.status, StatusCode::OK, "{:?}", done.json());
    let done = done.json();
    assert_eq!(done["state"]["current"], "SUCCESS", "{done}");
    assert_eq!(done["inputs"]["name"], "web");
    let file = done["inputs"]["doc"].as_str().unwrap();
    assert!(file.starts_with("kestra:///"), "{file}");
    assert!(file.ends_with("notes.txt"), "{file}");
    let labels = done["labels"].as_array().unwrap();
    assert!(
        labels
            .iter()
            .any(|l| l["key"] == "team" && l["value"] == "data")
    );
    assert!(
        labels
            .iter()
            .any(|l| l["key"] == "env" && l["value"] == "test")
    );
    let id = done["id"].as_str().unwrap().to_string();

    // Without wait: at once, CREATED.
    let (content_type, body) = multipart(&[("name", "quick")], &[]);
    let created = api
        .call(
            Method::POST,
            &format!("/api/v1/executions/{ns}/greet"),
            &content_type,
            Body::from(body),
        )
        .await;
    assert_eq!(created.status, StatusCode::OK);
    assert_eq!(created.json()["state"]["current"], "CREATED");
    let quick = created.json()["id"].as_str().unwrap().to_string();

    // Download the uploaded file through its execution, and only through it.
    wait_state(api, &quick, "SUCCESS").await;
    let encoded: String = form_urlencoded_path(file);
    let downloaded = api
        .get(&format!("/api/v1/main/executions/{id}/file?path={encoded}"))
        .await;
    assert_eq!(downloaded.status, StatusCode::OK);
    assert_eq!(downloaded.body, b"file body");
    assert!(
        downloaded.headers[header::CONTENT_DISPOSITION]
            .to_str()
            .unwrap()
            .contains("notes.txt")
    );
    let elsewhere = api
        .get(&format!(
            "/api/v1/main/executions/{quick}/file?path={encoded}"
        ))
        .await;
    assert_eq!(
        elsewhere.status,
        StatusCode::FORBIDDEN,
        "another execution's file"
    );
    let own_root = file.split("/inputs/").next().unwrap();
    let quick_root = own_root.replace(&id, &quick);
    for (path, status) in [
        (
            format!("{quick_root}/../{id}/inputs/doc/notes.txt"),
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("{quick_root}/%2e%2e/{id}/inputs/doc/notes.txt"),
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("{quick_root}/inputs/doc/missing.txt"),
            StatusCode::NOT_FOUND,
        ),
        (quick_root.clone(), StatusCode::FORBIDDEN),
        ("https://example.com/x".to_string(), StatusCode::BAD_REQUEST),
    ] {
        let answer = api
            .get(&format!(
                "/api/v1/main/executions/{quick}/file?path={}",
                form_urlencoded_path(&path)
            ))
            .await;
        assert_eq!(answer.status, status, "{path}");
    }
    assert_eq!(
        api.get(&format!("/api/v1/main/executions/{id}/file"))
            .await
            .status,
        StatusCode::BAD_REQUEST
    );

    // Get.
    let got = api.get(&format!("/api/v1/main/executions/{id}")).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.json()["id"], id.as_str());
    assert_eq!(got.json()["flowId"], "greet");
    let missing = api.get("/api/v1/main/executions/nope").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.json()["message"].as_str().unwrap().contains("nope"));

    // Follow: events until the end, the last one `id: end` with the ended execution.
    let followed = api
        .get(&format!("/api/v1/main/executions/{quick}/follow"))
        .await;
    assert_eq!(followed.status, StatusCode::OK);
    assert!(
        followed.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let text = String::from_utf8(followed.body).unwrap();
    let events: Vec<(String, Value)> = text
        .split("\n\n")
        .filter(|e| e.contains("data:"))
        .map(|e| {
            let id = e
                .lines()
                .find_map(|l| l.strip_prefix("id:"))
                .unwrap()
                .trim()
                .to_string();
            let data = e
                .lines()
                .find_map(|l| l.strip_prefix("data:"))
                .unwrap()
                .trim();
            (id, serde_json::from_str(data).unwrap())
        })
        .collect();
    let (last_id, last) = events.last().expect("at least one event");
    assert_eq!(last_id, "end", "{text}");
    assert_eq!(last["state"]["current"], "SUCCESS");
    assert!(
        events[..events.len() - 1]
            .iter()
            .all(|(i, _)| i == "progress")
    );
    let follow_missing = api.get("/api/v1/main/executions/nope/follow").await;
    assert_eq!(follow_missing.status, StatusCode::NOT_FOUND);

    // Search with filters, paging and sort.
    let found = api
        .get(&format!(
            "/api/v1/main/executions/search?namespace={ns}&flowId=greet&state=SUCCESS&sort=state.startDate:desc&size=10"
        ))
        .await;
    assert_eq!(found.status, StatusCode::OK, "{:?}", found.json());
    assert_eq!(found.json()["total"], 2);
    let by_label = api
        .get(&format!(
            "/api/v1/main/executions/search?namespace={ns}&labels=env:test"
        ))
        .await
        .json();
    assert_eq!(by_label["total"], 1);
    assert_eq!(by_label["results"][0]["id"], id.as_str());
    let none = api
        .get(&format!(
            "/api/v1/main/executions/search?namespace={ns}&state=FAILED,KILLED"
        ))
        .await
        .json();
    assert_eq!(none["total"], 0);
    for bad in [
        "state=BOGUS",
        "sort=inputs:asc",
        "startDate=yesterday",
        "flow=greet",
    ] {
        assert_eq!(
            api.get(&format!("/api/v1/main/executions/search?{bad}"))
                .await
                .status,
            StatusCode::BAD_REQUEST,
            "{bad}"
        );
    }

    // Logs of the execution.
    let logs = api.get(&format!("/api/v1/main/logs/{id}")).await;
    assert_eq!(logs.status, StatusCode::OK);
    let logs = logs.json();
    assert!(
        logs.as_array()
            .unwrap()
            .iter()
            .any(|l| l["message"] == "Hello web" && l["taskId"] == "say"),
        "{logs}"
    );
    let errors_only = api
        .get(&format!("/api/v1/main/logs/{id}?minLevel=ERROR"))
        .await
        .json();
    assert_eq!(errors_only.as_array().unwrap().len(), 0);
    assert_eq!(
        api.get(&format!("/api/v1/main/logs/{id}?minLevel=LOUD"))
            .await
            .status,
        StatusCode::BAD_REQUEST
    );

    // Errors of a trigger: a missing required input, an unknown flow, a disabled flow, a body that
    // is not a form, a bad scheduleDate.
    let no_name = api
        .call(
            Method::POST,
            &format!("/api/v1/main/executions/{ns}/greet"),
            "",
            Body::empty(),
        )
        .await;
    assert_eq!(no_name.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        no_name.json()["_embedded"]["errors"][0]["path"],
        "inputs.name"
    );
    assert_eq!(
        api.call(
            Method::POST,
            &format!("/api/v1/main/executions/{ns}/ghost"),
            "",
            Body::empty()
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
    let off = format!(
        "id: off\nnamespace: {ns}\ndisabled: true\ntasks:\n  - id: hi\n    type: io.kestra.plugin.core.log.Log\n    message: hi\n"
    );
    assert_eq!(
        api.yaml(Method::POST, "/api/v1/main/flows", &off)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        api.call(
            Method::POST,
            &format!("/api/v1/main/executions/{ns}/off"),
            "",
            Body::empty()
        )
        .await
        .status,
        StatusCode::CONFLICT
    );
    assert_eq!(
        api.call(
            Method::POST,
            &format!("/api/v1/main/executions/{ns}/greet"),
            "application/json",
            Body::from(r#"{"name":"json"}"#)
        )
        .await
        .status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    assert_eq!(
        api.call(
            Method::POST,
            &format!("/api/v1/main/executions/{ns}/greet?scheduleDate=tomorrow"),
            "",
            Body::empty()
        )
        .await
        .status,
        StatusCode::BAD_REQUEST
    );

    // An upload over the limit: 413 from its declared length, and from its real size without one.
    let (content_type, body) = multipart(
        &[("name", "big")],
        &[("doc", "big.bin", &vec![b'x'; MAX_BODY + 1])],
    );
    let too_big = api
        .send(
            Request::builder()
                .method(Method::POST)
                .uri(format!("/api/v1/main/executions/{ns}/greet"))
                .header(header::AUTHORIZATION, basic(USER, PASSWORD))
                .header(header::CONTENT_TYPE, &content_type)
                .header(header::CONTENT_LENGTH, body.len())
                .body(Body::from(body.clone()))
                .unwrap(),
        )
        .await;
    assert_eq!(too_big.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        too_big.json()["message"]
            .as_str()
            .unwrap()
            .contains("limit")
    );
    let streamed = futures::stream::iter(
        body.chunks(8192)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let too_big = api
        .call(
            Method::POST,
            &format!("/api/v1/main/executions/{ns}/greet"),
            &content_type,
            Body::from_stream(streamed),
        )
        .await;
    assert_eq!(too_big.status, StatusCode::PAYLOAD_TOO_LARGE);

    // Kill a running execution: 202, it ends KILLED; a second kill is a conflict. Delete: not while
    // it runs; once ended, 204 and gone with its logs.
    let sleepy = format!(
        "id: sleepy\nnamespace: {ns}\ntasks:\n  - id: nap\n    type: io.kestra.plugin.core.flow.Sleep\n    duration: PT60S\n"
    );
    assert_eq!(
        api.yaml(Method::POST, "/api/v1/main/flows", &sleepy)
            .await
            .status,
        StatusCode::OK
    );
    let started = api
        .call(
            Method::POST,
            &format!("/api/v1/main/executions/{ns}/sleepy"),
            "",
            Body::empty(),
        )
        .await
        .json();
    let sleeping = started["id"].as_str().unwrap().to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let e = api
            .get(&format!("/api/v1/main/executions/{sleeping}"))
            .await;
        if e.status == StatusCode::OK && e.json()["state"]["current"] == "RUNNING" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never RUNNING");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let running_delete = api
        .delete(&format!("/api/v1/main/executions/{sleeping}"))
        .await;
    assert_eq!(running_delete.status, StatusCode::CONFLICT);
    assert_eq!(
        api.delete(&format!("/api/v1/main/executions/{sleeping}/kill"))
            .await
            .status,
        StatusCode::ACCEPTED
    );
    let killed = api
        .engine
        .wait_for(&sleeping, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(killed.state.current().to_string(), "KILLED");
    assert_eq!(
        api.delete(&format!("/api/v1/main/executions/{sleeping}/kill"))
            .await
            .status,
        StatusCode::CONFLICT
    );
    assert_eq!(
        api.delete("/api/v1/main/executions/nope/kill").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.delete(&format!("/api/v1/main/executions/{id}"))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        api.get(&format!("/api/v1/main/executions/{id}"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let gone_logs = api.get(&format!("/api/v1/main/logs/{id}")).await.json();
    assert_eq!(gone_logs.as_array().unwrap().len(), 0);
    assert_eq!(
        api.delete(&format!("/api/v1/main/executions/{id}"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

async fn misc(api: &Api) {
    let health = api
        .send(Request::get("/health").body(Body::empty()).unwrap())
        .await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.json()["status"], "UP");
    let configs = api.get("/api/v1/configs").await;
    assert_eq!(configs.status, StatusCode::OK);
    assert_eq!(configs.json()["isBasicAuthEnabled"], true);
    openapi_and_schemas(api).await;
    let nowhere = api.get("/api/v1/main/nowhere").await;
    assert_eq!(nowhere.status, StatusCode::NOT_FOUND);
    assert!(
        nowhere.json()["message"]
            .as_str()
            .unwrap()
            .contains("/api/v1/main/nowhere")
    );
}

/// The OpenAPI document (JSON at `/api/v1/main/openapi.json` and the alias, YAML at Kestra's
/// `/swagger/kestra.yml`) and the flow JSON Schema, all behind authentication; every operation the
/// document lists is served (no 404 "no route" and no 405 for its method).
async fn openapi_and_schemas(api: &Api) {
    let document = api.get("/api/v1/main/openapi.json").await;
    assert_eq!(document.status, StatusCode::OK);
    let document = document.json();
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    let expected = kestra::webserver::api::openapi::openapi();
    if document != expected {
        let served = serde_json::to_string_pretty(&document).unwrap();
        let generated = serde_json::to_string_pretty(&expected).unwrap();
        let (line, (a, b)) = served
            .lines()
            .zip(generated.lines())
            .enumerate()
            .find(|(_, (a, b))| a != b)
            .unwrap_or((0, ("", "")));
        panic!("the served document differs from openapi() at line {line}: {a} != {b}");
    }
    assert_eq!(api.get("/api/v1/openapi.json").await.json(), document);
    let yaml = api.get("/swagger/kestra.yml").await;
    assert_eq!(yaml.status, StatusCode::OK);
    assert_eq!(yaml.headers[header::CONTENT_TYPE], "application/yaml");
    let parsed: Value = serde_saphyr::from_slice(&yaml.body).unwrap();
    assert_eq!(parsed["paths"], document["paths"]);
    for path in [
        "/api/v1/main/openapi.json",
        "/swagger/kestra.yml",
        "/api/v1/main/plugins/schemas/flow",
    ] {
        let anonymous = api
            .send(Request::get(path).body(Body::empty()).unwrap())
            .await;
        assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED, "{path}");
    }
    // Every documented operation has a route: probe it with placeholder parameters.
    for (path, item) in document["paths"].as_object().unwrap() {
        let concrete = path
            .split('/')
            .map(|segment| {
                if segment.starts_with('{') {
                    "x"
                } else {
                    segment
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        for method in item.as_object().unwrap().keys() {
            if path.ends_with("/follow") {
                continue; // waits for an execution to appear
            }
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let answer = api.call(method.clone(), &concrete, "", Body::empty()).await;
            assert_ne!(
                answer.status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}"
            );
            if answer.status == StatusCode::NOT_FOUND {
                let message = answer.json()["message"].as_str().unwrap_or("").to_string();
                assert!(
                    !message.starts_with("no route"),
                    "{method} {path}: {message}"
                );
            }
        }
    }
    let schema = api.get("/api/v1/main/plugins/schemas/flow").await;
    assert_eq!(schema.status, StatusCode::OK);
    let schema = schema.json();
    assert_eq!(
        schema,
        kestra::core::flow::TaskRegistry::default().json_schema()
    );
    assert!(schema["definitions"]["io.kestra.plugin.core.log.Log"].is_object());
    let list = api
        .get("/api/v1/main/plugins/schemas/flow?arrayOf=true")
        .await
        .json();
    assert_eq!(list["type"], "array");
    assert_eq!(
        api.get("/api/v1/main/plugins/schemas/flow?kind=x")
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
}

/// The Webhook trigger's route: public, the key is the secret; the body, headers and parameters
/// reach the flow; `wait` + `returnOutputs` answer with the outputs.
async fn webhook(api: &Api) {
    let ns = &api.ns;
    let hooked = format!(
        r#"id: hooked
namespace: {ns}
inputs:
  - id: who
    type: STRING
tasks:
  - id: h
    type: io.kestra.plugin.core.debug.Return
    format: "{{{{ inputs.who }}}} {{{{ trigger.parameters.p[0] }}}} {{{{ trigger.headers['x-tag'][0] }}}} {{{{ trigger.headers.authorization ?? 'no-credentials' }}}}"
outputs:
  - id: said
    type: STRING
    value: "{{{{ outputs.h.value }}}}"
triggers:
  - id: hook
    type: io.kestra.plugin.core.trigger.Webhook
    key: s3cr3t-key
    wait: true
    returnOutputs: true
    inputs:
      who: "{{{{ trigger.body.name }}}}"
"#
    );
    let created = api.yaml(Method::POST, "/api/v1/main/flows", &hooked).await;
    assert_eq!(created.status, StatusCode::OK, "{:?}", created.json());
    // No credentials needed; the Authorization header of a caller is not given to the flow.
    let answer = api
        .send(
            Request::post(format!(
                "/api/v1/main/executions/webhook/{ns}/hooked/s3cr3t-key?p=param"
            ))
            .header(header::CONTENT_TYPE, "application/json")
            .header("x-tag", "tagged")
            .header(header::AUTHORIZATION, "Bearer not-for-the-flow")
            .body(Body::from(r#"{"name":"hook"}"#))
            .unwrap(),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.json());
    assert_eq!(
        answer.json()["said"],
        "hook param tagged no-credentials",
        "{:?}",
        answer.json()
    );
    // A wrong key: 404, still without credentials; the alias path works too.
    let wrong = api
        .send(
            Request::post(format!("/api/v1/executions/webhook/{ns}/hooked/wrong"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(wrong.status, StatusCode::NOT_FOUND);
    // Variants of the path are not public.
    for path in [
        format!("/api/v1/main/executions/webhook/{ns}/hooked/s3cr3t-key/"),
        format!("/api/v1/main/executions/webhook/{ns}/hooked"),
        format!("/api/v1/main/executions//webhook/{ns}/hooked/s3cr3t-key"),
        format!("/api/v1/main/executions/webhook/{ns}/../flows/search"),
    ] {
        let answer = api
            .send(Request::post(&path).body(Body::empty()).unwrap())
            .await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{path}");
    }
    let delete = api
        .send(
            Request::delete(format!(
                "/api/v1/main/executions/webhook/{ns}/hooked/s3cr3t-key"
            ))
            .body(Body::empty())
            .unwrap(),
        )
        .await;
    assert_eq!(delete.status, StatusCode::UNAUTHORIZED);
}

async fn wait_state(api: &Api, id: &str, state: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let e = api.get(&format!("/api/v1/main/executions/{id}")).await;
        if e.status == StatusCode::OK && e.json()["state"]["current"] == state {
            return e.json();
        }
        assert!(tokio::time::Instant::now() < deadline, "{id} never {state}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Restart, replay and resume.
async fn actions(api: &Api) {
    let ns = &api.ns;
    let flag = api._dir.path().join("flag");
    let flaky = format!(
        "id: flaky\nnamespace: {ns}\ntasks:\n  - id: first\n    type: io.kestra.plugin.core.log.Log\n    message: first\n  - id: check\n    type: io.kestra.plugin.scripts.shell.Commands\n    taskRunner:\n      type: io.kestra.plugin.core.runner.Process\n    commands: [\"test -f {}\"]\n",
        flag.display()
    );
    assert_eq!(
        api.yaml(Method::POST, "/api/v1/main/flows", &flaky)
            .await
            .status,
        StatusCode::OK
    );
    let failed = api
        .call(
            Method::POST,
            &format!("/api/v1/main/executions/{ns}/flaky?wait=true"),
            "",
            Body::empty(),
        )
        .await
        .json();
    assert_eq!(failed["state"]["current"], "FAILED", "{failed}");
    let id = failed["id"].as_str().unwrap().to_string();

    // Restart: once the cause is fixed, the same execution ends SUCCESS.
    std::fs::write(&flag, "").unwrap();
    assert_eq!(
        api.call(
            Method::POST,
            &format!("/api/v1/main/executions/{id}/restart"),
            "",
            Body::empty()
        )
        .await
        .status,
        StatusCode::ACCEPTED
    );
    let restarted = wait_state(api, &id, "SUCCESS").await;
    assert!(
        restarted["labels"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["key"] == "system.restarted")
    );
    let again = api
        .call(
            Method::POST,
            &format!("/api/v1/main/executions/{id}/restart"),
            "",
            Body::empty(),
        )
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(
        api.call(
            Method::POST,
            "/api/v1/main/executions/nope/restart",
            "",
            Body::empty()
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );

    // Replay from a task run: a new execution.
    let check_run = restarted["taskRunList"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["taskId"] == "check")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let replay = api
        .call(
            Method::POST,
            &format!("/api/v1/main/executions/{id}/replay?taskRunId={check_run}"),
            "",
            Body::empty(),
        )
        .await;
    assert_eq!(replay.status, StatusCode::OK, "{:?}", replay.json());
    let replay_id = replay.json()["id"].as_str().unwrap().to_string();
    assert_ne!(replay_id, id);
    wait_state(api, &replay_id, "SUCCESS").await;
    for (query, status) in [
        ("", StatusCode::BAD_REQUEST),
        ("?taskRunId=unknown", StatusCode::NOT_FOUND),
    ] {
        assert_eq!(
            api.call(
                Method::POST,
                &format!("/api/v1/main/executions/{id}/replay{query}"),
                "",
                Body::empty()
            )
            .await
            .status,
            status,
            "{query}"
        );
    }

    // Resume a paused execution with an onResume input.
    let paused = format!(
        "id: approval\nnamespace: {ns}\ntasks:\n  - id: wait\n    type: io.kestra.plugin.core.flow.Pause\n    onResume:\n      - id: approved\n        type: BOOLEAN\n  - id: after\n    type: io.kestra.plugin.core.log.Log\n    message: \"approved={{{{ outputs.wait.onResume.approved }}}}\"\n"
    );
    let created = api.yaml(Method::POST, "/api/v1/main/flows", &paused).await;
    assert_eq!(created.status, StatusCode::OK, "{:?}", created.json());
    let started = api
        .call(
            Method::POST,
            &format!("/api/v1/main/executions/{ns}/approval"),
            "",
            Body::empty(),
        )
        .await
        .json();
    let pid = started["id"].as_str().unwrap().to_string();
    let not_paused = api
        .call(
            Method::POST,
            &format!("/api/v1/main/executions/{id}/resume"),
            "",
            Body::empty(),
        )
        .await;
    assert_eq!(not_paused.status, StatusCode::CONFLICT);
    wait_state(api, &pid, "PAUSED").await;
    let (content_type, body) = multipart(&[("approved", "true")], &[]);
    assert_eq!(
        api.call(
            Method::POST,
            &format!("/api/v1/main/executions/{pid}/resume"),
            &content_type,
            Body::from(body)
        )
        .await
        .status,
        StatusCode::NO_CONTENT
    );
    wait_state(api, &pid, "SUCCESS").await;
    let logs = api.get(&format!("/api/v1/main/logs/{pid}")).await.json();
    assert!(
        logs.as_array()
            .unwrap()
            .iter()
            .any(|l| l["message"] == "approved=true"),
        "{logs}"
    );
}

/// Data of the server-sent events of a body.
fn sse_data(body: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(body)
        .split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data:")))
        .map(|d| serde_json::from_str(d.trim()).unwrap())
        .collect()
}

/// Log follow: the stored lines, then the live ones, until the execution has ended.
async fn log_follow(api: &Api) {
    let ns = &api.ns;
    let chatty = format!(
        "id: chatty\nnamespace: {ns}\ntasks:\n  - id: one\n    type: io.kestra.plugin.core.log.Log\n    message: line one\n  - id: nap\n    type: io.kestra.plugin.core.flow.Sleep\n    duration: PT1S\n  - id: two\n    type: io.kestra.plugin.core.log.Log\n    level: WARN\n    message: line two\n"
    );
    assert_eq!(
        api.yaml(Method::POST, "/api/v1/main/flows", &chatty)
            .await
            .status,
        StatusCode::OK
    );
    let started = api
        .call(
            Method::POST,
            &format!("/api/v1/main/executions/{ns}/chatty"),
            "",
            Body::empty(),
        )
        .await
        .json();
    let id = started["id"].as_str().unwrap().to_string();
    let followed = api.get(&format!("/api/v1/main/logs/{id}/follow")).await;
    assert_eq!(followed.status, StatusCode::OK);
    let messages: Vec<String> = sse_data(&followed.body)
        .iter()
        .map(|l| l["message"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        messages,
        ["line one", "line two"],
        "live lines in order, once each"
    );
    // An ended execution: its stored lines, then the end.
    let again = api
        .get(&format!("/api/v1/main/logs/{id}/follow?minLevel=WARN"))
        .await;
    let messages: Vec<Value> = sse_data(&again.body);
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0]["message"], "line two");
    assert_eq!(
        api.get(&format!("/api/v1/main/logs/{id}/follow?minLevel=LOUD"))
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
}

async fn suite(url: &str) {
    let api = Api::start(url).await;
    misc(&api).await;
    flows(&api).await;
    executions(&api).await;
    webhook(&api).await;
    actions(&api).await;
    log_follow(&api).await;
    api.stop().await;
}

common::on_each_database!(api_on: suite);

/// Sends one raw request line (the path exactly as given, no client-side normalisation) and
/// returns the status code.
async fn raw_status(address: std::net::SocketAddr, request: &str) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 1024];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buffer).await.unwrap();
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buffer[..n]);
    }
    let text = String::from_utf8_lossy(&answer);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"))
}

/// Over a real socket, with paths sent byte for byte: only `GET /health` passes without
/// credentials; encoded, doubled, trailing-slash, case and dot-segment variants of it and of API
/// paths are refused, as are wrong credentials; right credentials pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_cannot_be_bypassed() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(&sqlite_url(&dir)).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = Webserver::builder(api.engine.clone())
        .auth(Auth::Basic(BasicAuth::new(USER, PASSWORD).unwrap()))
        .build();
    let shutdown = CancellationToken::new();
    let serving = tokio::spawn(server.serve(listener, shutdown.clone()));

    let get = |path: &str, auth: Option<String>| {
        let auth = auth
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n")
    };
    assert_eq!(raw_status(address, &get("/health", None)).await, 200);
    assert_eq!(
        raw_status(address, &get("/health?probe=1", None)).await,
        200
    );
    for path in [
        "/health/",
        "//health",
        "/HEALTH",
        "/Health",
        "/%68ealth",
        "/health%2F",
        "/health/..",
        "/health/../api/v1/main/flows/search",
        "/./health",
        "/api/v1/main/flows/search",
        "/api/v1/flows/search",
        "//api/v1/main/flows/search",
        "/api/v1/main//flows/search",
        "/API/v1/main/flows/search",
        "/api/v1/main/flows/search/",
        "/api/v1/main/%66lows/search",
        "/api/v1/configs",
        "/api/v1/main/executions/search",
    ] {
        assert_eq!(raw_status(address, &get(path, None)).await, 401, "{path}");
    }
    for bad in [
        basic(USER, "wrong"),
        basic("someone", PASSWORD),
        basic(USER, ""),
        format!("Bearer {}", basic(USER, PASSWORD)),
        "Basic".to_string(),
        "Basic %%%".to_string(),
    ] {
        assert_eq!(
            raw_status(
                address,
                &get("/api/v1/main/flows/search", Some(bad.clone()))
            )
            .await,
            401,
            "{bad}"
        );
    }
    let unauthorized = "POST /api/v1/main/flows HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-yaml\r\nContent-Length: 2\r\nConnection: close\r\n\r\nx\n";
    assert_eq!(raw_status(address, unauthorized).await, 401);
    let good = Some(basic(USER, PASSWORD));
    assert_eq!(
        raw_status(address, &get("/api/v1/main/flows/search", good.clone())).await,
        200
    );
    // Not an alias: with credentials, the variants are simply not routes.
    assert_eq!(
        raw_status(address, &get("/api/v1/main/flows/search/", good.clone())).await,
        404
    );
    assert_eq!(
        raw_status(address, &get("/API/v1/main/flows/search", good)).await,
        404
    );

    // The 401 says how to authenticate.
    let answer = api
        .send(
            Request::get("/api/v1/main/flows/search")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        answer.headers[header::WWW_AUTHENTICATE],
        "Basic realm=\"Kestra\""
    );
    assert!(answer.json()["message"].as_str().is_some());

    shutdown.cancel();
    serving.await.unwrap().unwrap();
    api.stop().await;
}

/// Authentication is off only when configured so; with nothing configured every API route is
/// refused.
#[tokio::test]
async fn disabled_and_unconfigured_auth() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(&sqlite_url(&dir)).await;
    let open = Webserver::builder(api.engine.clone())
        .auth(Auth::Disabled)
        .build()
        .router(CancellationToken::new());
    let answer = open
        .oneshot(
            Request::get("/api/v1/main/flows/search")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let closed = Webserver::builder(api.engine.clone())
        .build()
        .router(CancellationToken::new());
    let answer = closed
        .clone()
        .oneshot(
            Request::get("/api/v1/main/flows/search")
                .header(header::AUTHORIZATION, basic(USER, PASSWORD))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
    let health = closed
        .oneshot(Request::get("/health").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    api.stop().await;
}
