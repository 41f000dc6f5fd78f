//! `kestra server standalone` as a real process on Kafka + Elasticsearch (`KESTRA_QUEUE_TYPE=kafka`,
//! `KESTRA_REPOSITORY_TYPE=elasticsearch`): a flow deployed from `--flows` is run through the REST
//! API to SUCCESS, and the execution is then found through the API (served from Elasticsearch, fed
//! by the indexer). Needs `KESTRA_TEST_KAFKA_BROKERS` and `KESTRA_TEST_ELASTICSEARCH_URL` (required
//! under CI=true).
#![cfg(all(feature = "kafka", feature = "webserver"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use kestra::core::model::new_id;

/// The server process, killed when dropped (also when an assertion fails).
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One HTTP/1.1 request (empty body); returns (status, body), or the I/O error (a server that is
/// still starting may reset the connection).
fn try_http(method: &str, address: &str, path: &str, auth: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(90)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: {auth}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {answer}")))?;
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// One HTTP/1.1 request with a JSON body; returns (status, body).
fn http_json(method: &str, address: &str, path: &str, auth: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(90)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// GET `path` until `check` accepts the body (60 s at most).
fn until(
    address: &str,
    path: &str,
    auth: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = http("GET", address, path, auth);
        if status == 200
            && let Ok(value) = serde_json::from_str::<serde_json::Value>(&body)
            && check(&value)
        {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "GET {path} never as expected: {status} {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn http(method: &str, address: &str, path: &str, auth: &str) -> (u16, String) {
    try_http(method, address, path, auth)
        .unwrap_or_else(|e| panic!("{method} {path} on {address}: {e}"))
}

#[test]
fn standalone_on_kafka_and_elasticsearch_runs_a_flow_found_through_the_api() {
    let Some(brokers) = common::service_url("KESTRA_TEST_KAFKA_BROKERS") else {
        return;
    };
    let Some(es) = common::service_url("KESTRA_TEST_ELASTICSEARCH_URL") else {
        return;
    };
    let run = new_id().to_lowercase();
    let prefix = format!("kestra_cli_{run}_");
    let dir = tempfile::tempdir().unwrap();
    let flows = dir.path().join("flows");
    std::fs::create_dir(&flows).unwrap();
    std::fs::write(
        flows.join("hi.yaml"),
        "id: hi\nnamespace: tests.es\ntriggers:\n  - id: yearly\n    type: io.kestra.plugin.core.trigger.Schedule\n    cron: \"0 0 1 1 *\"\ntasks:\n  - id: a\n    type: io.kestra.plugin.core.log.Log\n    message: one\n  - id: b\n    type: io.kestra.plugin.core.log.Log\n    message: two\n",
    )
    .unwrap();
    let log = dir.path().join("server.log");
    let child = Command::new(env!("CARGO_BIN_EXE_kestra"))
        .args(["server", "standalone", "--flows"])
        .arg(&flows)
        .env("KESTRA_DATA_DIR", dir.path().join("data"))
        .env("KESTRA_SERVER_PORT", "0")
        .env("KESTRA_QUEUE_TYPE", "kafka")
        .env("KESTRA_REPOSITORY_TYPE", "elasticsearch")
        .env("KESTRA_KAFKA_BROKERS", &brokers)
        .env("KESTRA_KAFKA_TOPIC_PREFIX", &prefix)
        .env("KESTRA_KAFKA_PARTITIONS", "2")
        .env("KESTRA_ELASTICSEARCH_URL", &es)
        .env("KESTRA_ELASTICSEARCH_INDEX_PREFIX", &prefix)
        .env_remove("KESTRA_SERVER_BASIC_AUTH_PASSWORD")
        .env_remove("KESTRA_SERVER_BASIC_AUTH_USERNAME")
        .env_remove("KESTRA_SERVER_BASIC_AUTH_ENABLED")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut server = Server(child);
    // Kept open until the end: the server prints more to stdout, and a closed pipe would kill it.
    let mut stdout = BufReader::new(server.0.stdout.take().unwrap()).lines();
    let url_line = match stdout.next() {
        Some(Ok(l)) => l,
        other => panic!(
            "no URL line ({other:?}); server log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        ),
    };
    let address = url_line
        .trim_start_matches("Kestra API: http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("admin@kestra.io:kestra")
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = try_http(
            "GET",
            &address,
            "/api/v1/main/flows/search?namespace=tests.es",
            &auth,
        )
        .unwrap_or_else(|e| (0, e.to_string()));
        if status == 200 && body.contains("\"id\":\"hi\"") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the deployed flow never showed in the API ({status} {body}); server log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let (status, body) = http(
        "POST",
        &address,
        "/api/v1/main/executions/tests.es/hi?wait=true",
        &auth,
    );
    assert_eq!(status, 200, "{body}");
    let execution: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(execution["state"]["current"], "SUCCESS", "{body}");
    let id = execution["id"].as_str().unwrap().to_string();

    let (status, body) = http(
        "GET",
        &address,
        &format!("/api/v1/main/executions/{id}"),
        &auth,
    );
    assert_eq!(status, 200, "{body}");
    let found: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(found["state"]["current"], "SUCCESS", "{body}");
    assert_eq!(
        found["taskRunList"].as_array().map(Vec::len),
        Some(2),
        "{body}"
    );
    let (status, body) = http(
        "GET",
        &address,
        "/api/v1/main/executions/search?namespace=tests.es",
        &auth,
    );
    assert_eq!(status, 200, "{body}");
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["total"], 1, "{body}");
    assert_eq!(page["results"][0]["id"], id.as_str(), "{body}");

    // Trigger writes go through the Kafka trigger unit; the API reads the state back from
    // Elasticsearch (fed by the indexer).
    let search = "/api/v1/main/triggers/search?namespace=tests.es";
    until(&address, search, &auth, |v| v["total"] == 1);
    let (status, body) = http_json(
        "POST",
        &address,
        "/api/v1/main/triggers/set-disabled/by-triggers",
        &auth,
        r#"{"triggers": [{"namespace": "tests.es", "flowId": "hi", "triggerId": "yearly"}], "disabled": true}"#,
    );
    assert_eq!(status, 200, "{body}");
    until(&address, search, &auth, |v| {
        v["results"][0]["triggerContext"]["disabled"] == true
    });
    let (status, body) = http(
        "POST",
        &address,
        "/api/v1/main/triggers/tests.es/hi/yearly/unlock",
        &auth,
    );
    assert_eq!(status, 409, "{body}");
    // Labels through the Kafka executor, read back from Elasticsearch.
    let (status, body) = http_json(
        "POST",
        &address,
        &format!("/api/v1/main/executions/{id}/labels"),
        &auth,
        r#"[{"key": "env", "value": "kafka"}]"#,
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#"{"key":"env","value":"kafka"}"#), "{body}");
    let (status, body) = http("GET", &address, "/metrics", &auth);
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("kestra_executions{state=\"SUCCESS\"} 1\n"),
        "{body}"
    );
    drop(server);
    drop(stdout);

    // Clean up this run's topics and indices.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let options = kestra::kafka::KafkaOptions::new(&brokers).with_prefix(&prefix);
        kestra::kafka::KafkaQueue::delete_topics(&options)
            .await
            .unwrap();
        let elastic = kestra::kafka::elastic::ElasticRepositories::connect(
            kestra::kafka::elastic::ElasticOptions::new(&es).with_index_prefix(&prefix),
        )
        .await
        .unwrap();
        let stored = elastic
            .repositories()
            .executions
            .find_by_id("main", &id)
            .await
            .unwrap();
        assert!(
            stored.is_some_and(|e| e.state.current().to_string() == "SUCCESS"),
            "the execution the API served is the one in this run's Elasticsearch indices"
        );
        elastic.delete_indices().await.unwrap();
    });
}
