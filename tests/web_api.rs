//! The REST API of the webserver over a real engine, on SQLite and, when their URLs are set, on
//! PostgreSQL and MariaDB, and (feature `kafka`) on Kafka + Elasticsearch (the same checks; module
//! `kafka_elasticsearch`): flows, executions (multipart inputs and files, `wait`, labels, follow as
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
    /// On Kafka + Elasticsearch: this run's topics and indices, deleted by [`Api::stop`].
    #[cfg(feature = "kafka")]
    kafka: Option<kestra::config::Config>,
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
        Api::over(engine, dir)
    }

    /// The API over the engine on Kafka + Elasticsearch, with topics and indices of its own (a
    /// prefix per call), deleted by [`Api::stop`].
    #[cfg(feature = "kafka")]
    async fn start_kafka(brokers: &str, elasticsearch: &str) -> Api {
        let dir = tempfile::tempdir().unwrap();
        let prefix = format!(
            "kestra_webapi_{}_",
            kestra::core::model::new_id().to_lowercase()
        );
        let config = kestra::config::Config::from_pairs([
            ("kestra.queue.type", "kafka".to_string()),
            ("kestra.repository.type", "elasticsearch".to_string()),
            ("kestra.kafka.brokers", brokers.to_string()),
            ("kestra.kafka.topic-prefix", prefix.clone()),
            ("kestra.kafka.partitions", "2".to_string()),
            ("kestra.elasticsearch.url", elasticsearch.to_string()),
            ("kestra.elasticsearch.index-prefix", prefix),
            ("kestra.data-dir", dir.path().display().to_string()),
        ]);
        let engine = Arc::new(kestra::engine(&config).await.unwrap().start());
        let mut api = Api::over(engine, dir);
        api.kafka = Some(config);
        api
    }

    fn over(engine: Arc<Engine>, dir: tempfile::TempDir) -> Api {
        let webserver = Webserver::builder(engine.clone())
            .auth(Auth::Basic(BasicAuth::new(USER, PASSWORD).unwrap()))
            .max_body_bytes(MAX_BODY)
            .max_upload_bytes(MAX_BODY as u64)
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
            #[cfg(feature = "kafka")]
            kafka: None,
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
        #[cfg(feature = "kafka")]
        if let Some(config) = self.kafka {
            kestra::kafka::KafkaQueue::delete_topics(&config.kafka_options().unwrap())
                .await
                .unwrap();
            kestra::kafka::elastic::ElasticRepositories::connect(config.elastic_options().unwrap())
                .await
                .unwrap()
                .delete_indices()
                .await
                .unwrap();
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
        "/api/v1/main/plugins",
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
    // The plugin list: every registered type once as a current element, in its package's group.
    let plugins = api.get("/api/v1/main/plugins").await;
    assert_eq!(plugins.status, StatusCode::OK);
    let plugins = plugins.json();
    let current = |kind: &str| -> Vec<String> {
        let mut names: Vec<String> = plugins
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|p| p[kind].as_array().unwrap().clone())
            .filter(|e| e["deprecated"] == false)
            .map(|e| e["cls"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        names
    };
    let registry = kestra::core::flow::TaskRegistry::default();
    let mut tasks: Vec<String> = registry
        .task_types()
        .into_iter()
        .map(|(name, _, _)| name.to_string())
        .collect();
    tasks.sort();
    assert_eq!(current("tasks"), tasks);
    let mut triggers: Vec<String> = registry
        .trigger_types()
        .into_iter()
        .map(|(name, _, _)| name.to_string())
        .collect();
    triggers.sort();
    assert_eq!(current("triggers"), triggers);
    let log = plugins
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["group"] == "io.kestra.plugin.core.log")
        .expect("the core log plugin group");
    assert!(
        log["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["cls"] == "io.kestra.plugin.core.log.Log"),
        "{log}"
    );
    assert_eq!(
        api.get("/api/v1/main/plugins?x=1").await.status,
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
    checks(Api::start(url).await).await;
}

/// The checks of [`suite`] on one API (stopped at the end).
async fn checks(api: Api) {
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

// ---- Triggers, KV, log search and download, namespace flows, /metrics ----

impl Api {
    async fn json_call(&self, method: Method, path: &str, body: Value) -> Answer {
        self.call(
            method,
            path,
            "application/json",
            Body::from(body.to_string()),
        )
        .await
    }

    async fn text(
        &self,
        method: Method,
        path: &str,
        text: &str,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, basic(USER, PASSWORD))
            .header(header::CONTENT_TYPE, "text/plain");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.send(request.body(Body::from(text.to_string())).unwrap())
            .await
    }

    async fn anonymous(&self, method: Method, path: &str) -> StatusCode {
        self.send(
            Request::builder()
                .method(method)
                .uri(path)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .status
    }
}

/// The one trigger state of `flow` in the search, once the scheduler has created it.
async fn trigger_state(api: &Api, flow: &str, until: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let found = api
            .get(&format!(
                "/api/v1/main/triggers/search?namespace={}&flowId={flow}",
                api.ns
            ))
            .await;
        assert_eq!(found.status, StatusCode::OK);
        let body = found.json();
        if let Some(first) = body["results"].as_array().and_then(|r| r.first())
            && until(first)
        {
            return first.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "trigger of {flow} never as expected: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Search, disable/enable, unlock and backfill of a Schedule trigger, all through the trigger
/// seam, with their error cases.
async fn triggers(api: &Api) {
    let ns = &api.ns;
    let flow = format!(
        "id: nightly\nnamespace: {ns}\ntriggers:\n  - id: every-night\n    type: io.kestra.plugin.core.trigger.Schedule\n    cron: \"0 0 * * *\"\ntasks:\n  - id: hold\n    type: io.kestra.plugin.core.flow.Pause\n    pauseDuration: PT10M\n"
    );
    assert_eq!(
        api.yaml(Method::POST, "/api/v1/main/flows", &flow)
            .await
            .status,
        StatusCode::OK
    );
    let found = trigger_state(api, "nightly", |t| {
        !t["triggerContext"]["nextExecutionDate"].is_null()
    })
    .await;
    assert_eq!(found["abstractTrigger"]["id"], "every-night", "{found}");
    assert_eq!(found["abstractTrigger"]["cron"], "0 0 * * *", "{found}");
    assert_eq!(found["triggerContext"]["triggerId"], "every-night");
    assert_eq!(found["triggerContext"]["disabled"], false);
    assert_eq!(found["triggerContext"]["locked"], false);
    let q = api
        .get(&format!(
            "/api/v1/main/triggers/search?q=every-night&namespace={ns}"
        ))
        .await
        .json();
    assert_eq!(q["total"], 1, "{q}");
    let none = api
        .get(&format!(
            "/api/v1/main/triggers/search?q=nothing-like-it&namespace={ns}"
        ))
        .await
        .json();
    assert_eq!(none["total"], 0, "{none}");
    let of_flow = api
        .get(&format!("/api/v1/main/triggers/{ns}/nightly"))
        .await
        .json();
    assert_eq!(of_flow["total"], 1, "{of_flow}");
    let unknown = api.get("/api/v1/main/triggers/search?state=x").await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert!(
        unknown.json()["message"]
            .as_str()
            .unwrap()
            .contains("'state'")
    );
    let bad_sort = api
        .get("/api/v1/main/triggers/search?sort=password:asc")
        .await;
    assert_eq!(bad_sort.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        api.anonymous(Method::GET, "/api/v1/main/triggers/search")
            .await,
        StatusCode::UNAUTHORIZED
    );

    // Disable, then enable again.
    let reference =
        serde_json::json!({"namespace": ns, "flowId": "nightly", "triggerId": "every-night"});
    let disabled = api
        .json_call(
            Method::POST,
            "/api/v1/main/triggers/set-disabled/by-triggers",
            serde_json::json!({"triggers": [reference.clone()], "disabled": true}),
        )
        .await;
    assert_eq!(disabled.status, StatusCode::OK);
    assert_eq!(disabled.json()["count"], 1);
    trigger_state(api, "nightly", |t| t["triggerContext"]["disabled"] == true).await;
    let mut enable = reference.clone();
    enable["disabled"] = Value::Bool(false);
    let enabled = api
        .json_call(Method::PUT, "/api/v1/main/triggers", enable)
        .await;
    assert_eq!(
        enabled.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&enabled.body)
    );
    assert_eq!(enabled.json()["disabled"], false);
    trigger_state(api, "nightly", |t| t["triggerContext"]["disabled"] == false).await;
    let missing = api
        .json_call(
            Method::POST,
            "/api/v1/main/triggers/set-disabled/by-triggers",
            serde_json::json!({"triggers": [{"namespace": ns, "flowId": "nightly", "triggerId": "nope"}], "disabled": true}),
        )
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(
        missing.json()["message"]
            .as_str()
            .unwrap()
            .contains("'nope'")
    );
    let malformed = api
        .json_call(
            Method::POST,
            "/api/v1/main/triggers/set-disabled/by-triggers",
            serde_json::json!({"triggers": [{"namespace": ns}], "disabled": true}),
        )
        .await;
    assert_eq!(malformed.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        malformed.json()["message"]
            .as_str()
            .unwrap()
            .contains("flowId")
    );
    let neither = api
        .json_call(Method::PUT, "/api/v1/main/triggers", reference.clone())
        .await;
    assert_eq!(neither.status, StatusCode::UNPROCESSABLE_ENTITY);

    // Unlock: not locked yet; an unknown trigger is a 404.
    let unlock_path = format!("/api/v1/main/triggers/{ns}/nightly/every-night/unlock");
    let not_locked = api
        .call(Method::POST, &unlock_path, "", Body::empty())
        .await;
    assert_eq!(not_locked.status, StatusCode::CONFLICT);
    assert!(
        not_locked.json()["message"]
            .as_str()
            .unwrap()
            .contains("not locked")
    );
    let nowhere = api
        .call(
            Method::POST,
            &format!("/api/v1/main/triggers/{ns}/nightly/nope/unlock"),
            "",
            Body::empty(),
        )
        .await;
    assert_eq!(nowhere.status, StatusCode::NOT_FOUND);

    // Backfill one past night: its execution pauses, holding the trigger's lock.
    let day = chrono::Utc::now().date_naive() - chrono::Duration::days(3);
    let start = day.and_hms_opt(0, 0, 0).unwrap().and_utc();
    let mut backfill = reference.clone();
    backfill["backfill"] = serde_json::json!({
        "start": start.to_rfc3339(),
        "end": (start + chrono::Duration::hours(1)).to_rfc3339(),
        "labels": [{"key": "origin", "value": "api-test"}],
    });
    let started = api
        .json_call(Method::PUT, "/api/v1/main/triggers", backfill.clone())
        .await;
    assert_eq!(
        started.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&started.body)
    );
    assert!(started.json()["backfill"].is_object(), "{}", started.json());
    let mut reversed = backfill.clone();
    reversed["backfill"]["end"] = Value::String((start - chrono::Duration::days(1)).to_rfc3339());
    let invalid = api
        .json_call(Method::PUT, "/api/v1/main/triggers", reversed)
        .await;
    assert_eq!(invalid.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        invalid.json()["message"]
            .as_str()
            .unwrap()
            .contains("before its end")
    );
    let mut elsewhere = backfill.clone();
    elsewhere["triggerId"] = Value::String("nope".into());
    assert_eq!(
        api.json_call(Method::PUT, "/api/v1/main/triggers", elsewhere)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let locked = trigger_state(api, "nightly", |t| t["triggerContext"]["locked"] == true).await;
    let execution_id = locked["triggerContext"]["executionId"]
        .as_str()
        .unwrap()
        .to_string();
    let paused = wait_state(api, &execution_id, "PAUSED").await;
    assert!(
        paused["labels"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["key"] == "origin" && l["value"] == "api-test"),
        "{paused}"
    );
    let unlocked = api
        .call(Method::POST, &unlock_path, "", Body::empty())
        .await;
    assert_eq!(
        unlocked.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&unlocked.body)
    );
    assert!(unlocked.json()["executionId"].is_null());
    assert_eq!(unlocked.json()["locked"], false);
    trigger_state(api, "nightly", |t| t["triggerContext"]["locked"] == false).await;
    // No backfill runs any more: pausing one is a conflict naming it.
    let mut body = reference.clone();
    body["backfill"] = Value::Null;
    let no_backfill = trigger_state(api, "nightly", |t| {
        t["triggerContext"]["backfill"].is_null()
    })
    .await;
    assert!(no_backfill["triggerContext"]["backfill"].is_null());
    let pause = api
        .json_call(Method::PUT, "/api/v1/main/triggers/backfill/pause", body)
        .await;
    assert_eq!(pause.status, StatusCode::CONFLICT);
    assert!(
        pause.json()["message"]
            .as_str()
            .unwrap()
            .contains("no backfill")
    );
    assert_eq!(
        api.delete(&format!("/api/v1/main/executions/{execution_id}/kill"))
            .await
            .status,
        StatusCode::ACCEPTED
    );
    wait_state(api, &execution_id, "KILLED").await;
}

/// KV per namespace: typed values, TTL, list, delete, errors; the store is the one flows use.
async fn kv(api: &Api) {
    let ns = &api.ns;
    let path = |key: &str| format!("/api/v1/main/namespaces/{ns}/kv/{key}");
    assert_eq!(
        api.text(Method::PUT, &path("answer"), "42", &[])
            .await
            .status,
        StatusCode::OK
    );
    let answer = api.get(&path("answer")).await.json();
    assert_eq!(answer, serde_json::json!({"type": "NUMBER", "value": 42}));
    api.text(
        Method::PUT,
        &path("greeting"),
        "hello world",
        &[("ttl", "PT1H")],
    )
    .await;
    assert_eq!(
        api.get(&path("greeting")).await.json(),
        serde_json::json!({"type": "STRING", "value": "hello world"})
    );
    api.text(Method::PUT, &path("doc"), "{\"a\": [1, 2]}", &[])
        .await;
    assert_eq!(api.get(&path("doc")).await.json()["type"], "JSON");
    let list = api
        .get(&format!("/api/v1/main/namespaces/{ns}/kv"))
        .await
        .json();
    let keys: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["answer", "doc", "greeting"], "{list}");
    let greeting = list
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["key"] == "greeting")
        .unwrap();
    assert!(greeting["expirationDate"].is_string(), "{list}");
    assert!(list[0]["expirationDate"].is_null(), "{list}");

    // A flow's kv.Set writes where the API reads.
    let setter = format!(
        "id: kvset\nnamespace: {ns}\ntasks:\n  - id: set\n    type: io.kestra.plugin.core.kv.Set\n    key: from_flow\n    value: \"{{{{ execution.id }}}}\"\n"
    );
    api.yaml(Method::POST, "/api/v1/main/flows", &setter).await;
    let run = api
        .call(
            Method::POST,
            &format!("/api/v1/main/executions/{ns}/kvset?wait=true"),
            "",
            Body::empty(),
        )
        .await
        .json();
    assert_eq!(run["state"]["current"], "SUCCESS", "{run}");
    assert_eq!(api.get(&path("from_flow")).await.json()["value"], run["id"]);

    // Errors.
    let bad_ttl = api
        .text(Method::PUT, &path("x"), "1", &[("ttl", "soon")])
        .await;
    assert_eq!(bad_ttl.status, StatusCode::BAD_REQUEST);
    assert!(bad_ttl.json()["message"].as_str().unwrap().contains("ttl"));
    let bad_key = api.text(Method::PUT, &path(".hidden"), "1", &[]).await;
    assert_eq!(bad_key.status, StatusCode::BAD_REQUEST);
    assert!(
        bad_key.json()["message"]
            .as_str()
            .unwrap()
            .contains(".hidden")
    );
    let missing = api.get(&path("missing")).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(
        missing.json()["message"]
            .as_str()
            .unwrap()
            .contains("'missing'")
    );
    assert_eq!(
        api.anonymous(Method::GET, &path("answer")).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        api.anonymous(Method::DELETE, &path("answer")).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        api.get(&format!("{}?x=1", path("answer"))).await.status,
        StatusCode::BAD_REQUEST
    );

    // Delete: true, then false; the key is gone.
    assert_eq!(api.delete(&path("answer")).await.json(), Value::Bool(true));
    assert_eq!(api.delete(&path("answer")).await.json(), Value::Bool(false));
    assert_eq!(api.get(&path("answer")).await.status, StatusCode::NOT_FOUND);
}

/// Log search across executions and the plain-text download of one execution's logs.
async fn log_search(api: &Api) {
    let ns = &api.ns;
    let flow = format!(
        "id: chatty\nnamespace: {ns}\ntasks:\n  - id: say\n    type: io.kestra.plugin.core.log.Log\n    message: \"needle-{{{{ execution.id }}}}\"\n  - id: warn\n    type: io.kestra.plugin.core.log.Log\n    level: WARN\n    message: \"two\\nlines\"\n"
    );
    api.yaml(Method::POST, "/api/v1/main/flows", &flow).await;
    let run = api
        .call(
            Method::POST,
            &format!("/api/v1/main/executions/{ns}/chatty?wait=true"),
            "",
            Body::empty(),
        )
        .await
        .json();
    assert_eq!(run["state"]["current"], "SUCCESS", "{run}");
    let id = run["id"].as_str().unwrap();
    let stored = async || api.get(&format!("/api/v1/main/logs/{id}")).await.json();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while stored().await.as_array().unwrap().len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "logs never stored");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let entries = stored().await;
    let found = api
        .get(&format!(
            "/api/v1/main/logs/search?namespace={ns}&flowId=chatty&q=needle-{id}"
        ))
        .await;
    assert_eq!(found.status, StatusCode::OK);
    let found = found.json();
    assert_eq!(found["total"], 1, "{found}");
    assert_eq!(found["results"][0]["message"], format!("needle-{id}"));
    let warnings = api
        .get(&format!(
            "/api/v1/main/logs/search?namespace={ns}&minLevel=WARN&size=5&page=1"
        ))
        .await
        .json();
    assert!(
        warnings["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["level"] == "WARN" || l["level"] == "ERROR"),
        "{warnings}"
    );
    assert!(warnings["total"].as_u64().unwrap() >= 1);
    let future = api
        .get(&format!(
            "/api/v1/main/logs/search?namespace={ns}&startDate={}",
            form_urlencoded_path(&(chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339())
        ))
        .await
        .json();
    assert_eq!(future["total"], 0, "{future}");
    for bad in [
        "minLevel=LOUD",
        "startDate=yesterday",
        "executionId=x",
        "sort=message:asc",
    ] {
        let answer = api.get(&format!("/api/v1/main/logs/search?{bad}")).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{bad}");
    }

    // Download: text, one line per entry, in order, multi-line messages on one line.
    let download = api.get(&format!("/api/v1/main/logs/{id}/download")).await;
    assert_eq!(download.status, StatusCode::OK);
    assert!(
        download.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = String::from_utf8(download.body.clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), entries.as_array().unwrap().len(), "{text}");
    for (line, entry) in lines.iter().zip(entries.as_array().unwrap()) {
        assert!(line.contains(entry["level"].as_str().unwrap()), "{line}");
        assert!(
            line.ends_with(&entry["message"].as_str().unwrap().replace('\n', "\\n")),
            "{line} / {entry}"
        );
    }
    assert!(text.contains("two\\nlines"), "{text}");
    let warn_only = api
        .get(&format!("/api/v1/main/logs/{id}/download?minLevel=WARN"))
        .await;
    assert!(
        String::from_utf8_lossy(&warn_only.body)
            .lines()
            .all(|l| l.contains(" WARN ") || l.contains(" ERROR "))
    );
    assert_eq!(
        api.get("/api/v1/main/logs/no-such-execution/download")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.anonymous(Method::GET, &format!("/api/v1/main/logs/{id}/download"))
            .await,
        StatusCode::UNAUTHORIZED
    );
}

/// `GET|POST /flows/{namespace}`: bulk update, deletion of the missing flows (or not), errors.
async fn namespace_flows(api: &Api) {
    let ns = format!("{}.bulk", api.ns);
    let flow = |id: &str| {
        format!(
            "id: {id}\nnamespace: {ns}\ntasks:\n  - id: t\n    type: io.kestra.plugin.core.log.Log\n    message: {id}\n"
        )
    };
    let path = format!("/api/v1/main/flows/{ns}");
    let both = api
        .yaml(
            Method::POST,
            &path,
            &format!("{}---\n{}", flow("a"), flow("b")),
        )
        .await;
    assert_eq!(
        both.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&both.body)
    );
    assert_eq!(both.json().as_array().unwrap().len(), 2);
    assert!(both.json()[0]["source"].as_str().unwrap().contains("id: a"));
    let ids = async || {
        api.get(&path)
            .await
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["id"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids().await, ["a", "b"]);
    // `b` is missing from the body: deleted; `a` unchanged keeps its revision.
    let only_a = api.yaml(Method::POST, &path, &flow("a")).await.json();
    assert_eq!(only_a[0]["revision"], 1, "{only_a}");
    assert_eq!(ids().await, ["a"]);
    api.yaml(Method::POST, &format!("{path}?delete=false"), &flow("c"))
        .await;
    assert_eq!(ids().await, ["a", "c"]);
    // Invalid: nothing changes, the error names the document.
    let invalid = api
        .yaml(
            Method::POST,
            &path,
            &format!("{}---\nid: broken\nnamespace: {ns}\ntasks: 3\n", flow("d")),
        )
        .await;
    assert_eq!(invalid.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        invalid.json()["message"]
            .as_str()
            .unwrap()
            .contains("document 1"),
        "{}",
        invalid.json()
    );
    let elsewhere = api
        .yaml(Method::POST, &path, &flow("e").replace(&ns, "some.other"))
        .await;
    assert_eq!(elsewhere.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        elsewhere.json()["message"]
            .as_str()
            .unwrap()
            .contains("some.other")
    );
    let twice = api
        .yaml(
            Method::POST,
            &path,
            &format!("{}---\n{}", flow("f"), flow("f")),
        )
        .await;
    assert_eq!(twice.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(ids().await, ["a", "c"]);
    assert_eq!(
        api.get(&format!("{path}?delete=x")).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        api.yaml(Method::POST, &format!("{path}?delete=maybe"), &flow("a"))
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        api.anonymous(Method::GET, &path).await,
        StatusCode::UNAUTHORIZED
    );
}

/// `/metrics`: Prometheus text with the executions this webserver saw end and their task runs;
/// behind authentication unless configured public.
async fn metrics(api: &Api) {
    let ns = &api.ns;
    let flow = format!(
        "id: counted\nnamespace: {ns}\ntasks:\n  - id: t\n    type: io.kestra.plugin.core.log.Log\n    message: hi\n"
    );
    api.yaml(Method::POST, "/api/v1/main/flows", &flow).await;
    let run = api
        .call(
            Method::POST,
            &format!("/api/v1/main/executions/{ns}/counted?wait=true"),
            "",
            Body::empty(),
        )
        .await
        .json();
    assert_eq!(run["state"]["current"], "SUCCESS", "{run}");
    let attempts = format!(
        "kestra_taskruns_attempt_duration_seconds_count{{namespace=\"{ns}\",flow_id=\"counted\",state=\"SUCCESS\"}} 1\n"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let text = loop {
        let answer = api.get("/metrics").await;
        assert_eq!(answer.status, StatusCode::OK);
        assert!(
            answer.headers[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/plain; version=0.0.4")
        );
        let text = String::from_utf8(answer.body).unwrap();
        if text.contains(&attempts) {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{attempts} never in:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        text.contains(&format!(
            "kestra_executions_created_total{{namespace=\"{ns}\",flow_id=\"counted\"}} 1\n"
        )),
        "{text}"
    );
    let successes: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("kestra_executions{state=\"SUCCESS\"} "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no SUCCESS gauge in {text}"));
    assert!(successes >= 1, "{text}");
    assert!(
        text.contains("kestra_executions{state=\"PAUSED\"} "),
        "{text}"
    );
    assert!(
        text.contains("kestra_queue_execution_lag_seconds_count "),
        "{text}"
    );
    // The engine runs an indexer: its lag on the log topic (the Log task's line went through it).
    assert!(
        text.lines().any(
            |l| l.starts_with("kestra_indexer_lag_seconds{instance=\"indexer-")
                && l.contains(",topic=\"log\"} ")
        ),
        "{text}"
    );
    assert_eq!(
        api.anonymous(Method::GET, "/metrics").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        api.get("/metrics?format=json").await.status,
        StatusCode::BAD_REQUEST
    );

    // Configured public: exactly `GET /metrics` passes without credentials.
    let public = Webserver::builder(api.engine.clone())
        .auth(Auth::Basic(BasicAuth::new(USER, PASSWORD).unwrap()))
        .metrics_public(true)
        .build()
        .router(api.shutdown.clone());
    let status = |method: Method, path: &str| {
        let router = public.clone();
        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .unwrap();
        async move { router.oneshot(request).await.unwrap().status() }
    };
    assert_eq!(status(Method::GET, "/metrics").await, StatusCode::OK);
    assert_eq!(
        status(Method::GET, "/metrics/").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status(Method::GET, "/METRICS").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status(Method::POST, "/metrics").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status(Method::GET, "/api/v1/main/flows/search").await,
        StatusCode::UNAUTHORIZED
    );
}

/// `POST /executions/{id}/labels`: replaces the labels of an ended and of a paused execution
/// through the executor; system labels stay and cannot be set.
async fn execution_labels(api: &Api) {
    let ns = &api.ns;
    let flow = format!(
        "id: labelled\nnamespace: {ns}\ntasks:\n  - id: t\n    type: io.kestra.plugin.core.log.Log\n    message: hi\n"
    );
    api.yaml(Method::POST, "/api/v1/main/flows", &flow).await;
    let ended = api
        .call(
            Method::POST,
            &format!("/api/v1/main/executions/{ns}/labelled?wait=true&labels=team:a"),
            "",
            Body::empty(),
        )
        .await
        .json();
    assert_eq!(ended["state"]["current"], "SUCCESS", "{ended}");
    let id = ended["id"].as_str().unwrap();
    let path = format!("/api/v1/main/executions/{id}/labels");
    let set = api
        .json_call(
            Method::POST,
            &path,
            serde_json::json!([{"key": "env", "value": "prod"}, {"key": "owner", "value": "me"}]),
        )
        .await;
    assert_eq!(
        set.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&set.body)
    );
    let labels = set.json()["labels"].as_array().unwrap().clone();
    let plain: Vec<(String, String)> = labels
        .iter()
        .filter(|l| !l["key"].as_str().unwrap().starts_with("system."))
        .map(|l| {
            (
                l["key"].as_str().unwrap().into(),
                l["value"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        plain,
        [
            ("env".to_string(), "prod".to_string()),
            ("owner".to_string(), "me".to_string())
        ],
        "{labels:?}"
    );
    for system in ended["labels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["key"].as_str().unwrap().starts_with("system."))
    {
        assert!(labels.contains(system), "{system} lost: {labels:?}");
    }
    let stored = api
        .get(&format!("/api/v1/main/executions/{id}"))
        .await
        .json();
    assert_eq!(stored["labels"], Value::Array(labels));
    assert_eq!(stored["state"]["current"], "SUCCESS");
    let searched = api
        .get(&format!(
            "/api/v1/main/executions/search?namespace={ns}&labels=env:prod"
        ))
        .await
        .json();
    assert_eq!(searched["total"], 1, "{searched}");

    // Errors.
    let system = api
        .json_call(
            Method::POST,
            &path,
            serde_json::json!([{"key": "system.x", "value": "1"}]),
        )
        .await;
    assert_eq!(system.status, StatusCode::BAD_REQUEST);
    assert!(
        system.json()["message"]
            .as_str()
            .unwrap()
            .contains("system.x")
    );
    let empty = api
        .json_call(
            Method::POST,
            &path,
            serde_json::json!([{"key": "", "value": "1"}]),
        )
        .await;
    assert_eq!(empty.status, StatusCode::UNPROCESSABLE_ENTITY);
    let not_a_list = api
        .json_call(Method::POST, &path, serde_json::json!({"env": "prod"}))
        .await;
    assert_eq!(not_a_list.status, StatusCode::UNPROCESSABLE_ENTITY);
    let nowhere = api
        .json_call(
            Method::POST,
            "/api/v1/main/executions/no-such-execution/labels",
            serde_json::json!([]),
        )
        .await;
    assert_eq!(nowhere.status, StatusCode::NOT_FOUND);
    assert_eq!(
        api.anonymous(Method::POST, &path).await,
        StatusCode::UNAUTHORIZED
    );

    // A paused execution: its labels change, it stays paused.
    let hold = format!(
        "id: held\nnamespace: {ns}\ntasks:\n  - id: wait\n    type: io.kestra.plugin.core.flow.Pause\n"
    );
    api.yaml(Method::POST, "/api/v1/main/flows", &hold).await;
    let created = api
        .call(
            Method::POST,
            &format!("/api/v1/main/executions/{ns}/held"),
            "",
            Body::empty(),
        )
        .await
        .json();
    let held = created["id"].as_str().unwrap();
    wait_state(api, held, "PAUSED").await;
    let set = api
        .json_call(
            Method::POST,
            &format!("/api/v1/main/executions/{held}/labels"),
            serde_json::json!([{"key": "why", "value": "review"}]),
        )
        .await;
    assert_eq!(set.status, StatusCode::OK);
    assert_eq!(set.json()["state"]["current"], "PAUSED");
    assert!(
        set.json()["labels"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["key"] == "why" && l["value"] == "review")
    );
    api.delete(&format!("/api/v1/main/executions/{held}/kill"))
        .await;
    wait_state(api, held, "KILLED").await;
}

async fn suite_more(url: &str) {
    checks_more(Api::start(url).await).await;
}

/// The checks of [`suite_more`] on one API (stopped at the end).
async fn checks_more(api: Api) {
    triggers(&api).await;
    kv(&api).await;
    log_search(&api).await;
    namespace_flows(&api).await;
    execution_labels(&api).await;
    metrics(&api).await;
    api.stop().await;
}

common::on_each_database!(api_more_on: suite_more);

/// The same checks on Kafka + Elasticsearch: the queue on Kafka, the repositories on
/// Elasticsearch fed by the indexer, topics and indices of their own per check. Needs
/// `KESTRA_TEST_KAFKA_BROKERS` and `KESTRA_TEST_ELASTICSEARCH_URL` (skipped with a message when
/// unset, a failure under CI=true).
#[cfg(feature = "kafka")]
mod kafka_elasticsearch {
    use super::{Api, checks, checks_more};

    async fn start() -> Option<Api> {
        let brokers = crate::common::service_url("KESTRA_TEST_KAFKA_BROKERS")?;
        let elasticsearch = crate::common::service_url("KESTRA_TEST_ELASTICSEARCH_URL")?;
        Some(Api::start_kafka(&brokers, &elasticsearch).await)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn api_on() {
        if let Some(api) = start().await {
            checks(api).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn api_more_on() {
        if let Some(api) = start().await {
            checks_more(api).await;
        }
    }
}
