//! FILE inputs uploaded through `POST /api/v1/main/executions/{namespace}/{flowId}` are streamed
//! straight into internal storage: a 150 MB file (over the old 100 MiB body cap) sent as a streamed
//! body arrives intact (sha256 of the download equals the upload's), and refused uploads (over
//! `max_upload_bytes`, a body that breaks off, invalid inputs, an undeclared file field) leave no
//! file behind. On the local store always, and on S3 (MinIO) when `KESTRA_TEST_S3_ENDPOINT` is set
//! (skipped loudly without it, a failure under `CI=true`).
#![cfg(feature = "webserver")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)] // only service_url is used here
mod common;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::body::Bytes;
use axum::http::{Method, Request, StatusCode, header};
use futures::StreamExt;
use kestra::Engine;
use kestra::config::Config;
use kestra::core::storage::StoragePath;
use kestra::webserver::{Auth, Webserver};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

const BOUNDARY: &str = "kestra-upload-test-boundary";
const MIB: u64 = 1024 * 1024;
/// Over the old 100 MiB request cap, so only a streamed upload passes.
const BIG: u64 = 150 * 1000 * 1000;

struct Server {
    router: Router,
    engine: Arc<Engine>,
    shutdown: CancellationToken,
    ns: String,
    _dir: tempfile::TempDir,
}

impl Server {
    /// An engine configured from `pairs` (plus a data dir), with the webserver over it.
    async fn start(
        mut pairs: Vec<(String, String)>,
        dir: tempfile::TempDir,
        upload: u64,
    ) -> Server {
        pairs.push(("kestra.data-dir".into(), dir.path().display().to_string()));
        let config = Config::from_pairs(pairs);
        let engine = Arc::new(kestra::engine(&config).await.expect("engine").start());
        let webserver = Webserver::builder(engine.clone())
            .auth(Auth::Disabled)
            .max_body_bytes(MIB as usize)
            .max_upload_bytes(upload)
            .build();
        let shutdown = CancellationToken::new();
        let router = webserver.router(shutdown.clone());
        let ns = format!("upload.t{}", kestra::core::model::new_id().to_lowercase());
        let server = Server {
            router,
            engine,
            shutdown,
            ns,
            _dir: dir,
        };
        let flow = format!(
            r#"id: upload
namespace: {}
inputs:
  - id: file
    type: FILE
    allowedFileExtensions: [".bin"]
  - id: name
    type: STRING
    required: false
tasks:
  - id: log
    type: io.kestra.plugin.core.log.Log
    message: "{{{{ inputs.file }}}}"
"#,
            server.ns
        );
        server.engine.deploy(&flow).await.expect("deploy");
        server
    }

    async fn send(&self, request: Request<Body>) -> (StatusCode, Bytes) {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, body)
    }

    /// POST a streamed multipart body to the flow's execution route.
    async fn upload(&self, body: Body, length: Option<u64>) -> (StatusCode, Value) {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(format!("/api/v1/main/executions/{}/upload", self.ns))
            .header(
                header::CONTENT_TYPE,
                format!("multipart/form-data; boundary={BOUNDARY}"),
            );
        if let Some(length) = length {
            request = request.header(header::CONTENT_LENGTH, length);
        }
        let (status, body) = self.send(request.body(body).unwrap()).await;
        let json = serde_json::from_slice(&body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {status} {}",
                String::from_utf8_lossy(&body)
            )
        });
        (status, json)
    }

    /// Every file stored under the namespace, recursively.
    async fn files(&self) -> Vec<String> {
        let storage = self.engine.storage().clone();
        let mut out = Vec::new();
        let mut todo = vec![StoragePath::namespace(&self.ns).unwrap()];
        while let Some(dir) = todo.pop() {
            for entry in storage.list("main", &dir).await.unwrap() {
                if entry.directory {
                    todo.push(entry.path);
                } else {
                    out.push(entry.path.to_uri());
                }
            }
        }
        out.sort();
        out
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

/// `len` deterministic pseudo-random bytes, generated 64 KiB at a time (never all in memory).
fn content(len: u64) -> impl futures::Stream<Item = Bytes> {
    futures::stream::unfold(
        (0u64, 0x9E37_79B9_7F4A_7C15u64),
        move |(done, mut x)| async move {
            if done >= len {
                return None;
            }
            let n = (len - done).min(64 * 1024) as usize;
            let mut chunk = Vec::with_capacity(n + 8);
            while chunk.len() < n {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                chunk.extend_from_slice(&x.to_le_bytes());
            }
            chunk.truncate(n);
            Some((Bytes::from(chunk), (done + n as u64, x)))
        },
    )
}

async fn sha256_of(stream: impl futures::Stream<Item = Bytes>) -> String {
    let mut hasher = Sha256::new();
    let mut stream = std::pin::pin!(stream);
    while let Some(chunk) = stream.next().await {
        hasher.update(&chunk);
    }
    hex::encode(hasher.finalize())
}

/// A multipart body: a text field `name`, then a file part `field`/`file_name` with `len` bytes of
/// [`content`], then the closing boundary; with `break_after`, the body fails after that many bytes
/// of the file instead. Returns the body and its exact length.
fn multipart(field: &str, file_name: &str, len: u64, break_after: Option<u64>) -> (Body, u64) {
    let head = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nbig\r\n\
         --{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{file_name}\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    );
    let tail = format!("\r\n--{BOUNDARY}--\r\n");
    let total = head.len() as u64 + len + tail.len() as u64;
    let file = content(break_after.unwrap_or(len)).map(Ok::<_, std::io::Error>);
    let end: futures::stream::BoxStream<'static, Result<Bytes, std::io::Error>> = match break_after
    {
        None => futures::stream::once(async move { Ok(Bytes::from(tail)) }).boxed(),
        Some(_) => futures::stream::once(async {
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "client went away",
            ))
        })
        .boxed(),
    };
    let body = futures::stream::once(async move { Ok(Bytes::from(head)) })
        .chain(file)
        .chain(end);
    (Body::from_stream(body), total)
}

/// The whole check on one store.
async fn uploads_stream_into(pairs: Vec<(String, String)>) {
    // A 150 MB file with a 200 MB upload limit (and a 1 MiB limit for every other body).
    let server = Server::start(pairs.clone(), tempfile::tempdir().unwrap(), 200 * MIB).await;
    let (body, _) = multipart("file", "big.bin", BIG, None);
    let (status, execution) = server.upload(body, None).await;
    assert_eq!(status, StatusCode::OK, "{execution}");
    let id = execution["id"].as_str().unwrap().to_string();
    let uri = execution["inputs"]["file"].as_str().unwrap().to_string();
    assert_eq!(
        uri,
        format!(
            "kestra:///{}/upload/executions/{id}/inputs/file/big.bin",
            server.ns.replace('.', "/")
        )
    );
    assert_eq!(execution["inputs"]["name"], "big");
    let correlation = execution["labels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["key"] == "system.correlationId")
        .map(|l| l["value"].clone());
    assert_eq!(correlation, Some(Value::String(id.clone())));

    // Once the execution is stored (it ran), download the file through the API: the same bytes.
    let ended = server
        .engine
        .wait_for(&id, std::time::Duration::from_secs(60))
        .await
        .expect("the execution ends");
    assert_eq!(ended.state.current().to_string(), "SUCCESS");
    let path: String = uri
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let response = server
        .router
        .clone()
        .oneshot(
            Request::builder()
                .uri(format!("/api/v1/main/executions/{id}/file?path={path}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_LENGTH],
        BIG.to_string().as_str()
    );
    let downloaded = sha256_of(
        response
            .into_body()
            .into_data_stream()
            .map(|chunk| chunk.unwrap()),
    )
    .await;
    assert_eq!(downloaded, sha256_of(content(BIG)).await);
    let before = server.files().await;
    assert_eq!(before, vec![uri.clone()]);
    server.stop().await;

    // Refusals, with a 1 MiB upload limit: nothing is left in storage after any of them.
    let server = Server::start(pairs, tempfile::tempdir().unwrap(), MIB).await;
    let (body, length) = multipart("file", "big.bin", 2 * MIB, None);
    let (status, error) = server.upload(body, Some(length)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "declared: {error}");
    assert!(
        error["message"].as_str().unwrap().contains("limit"),
        "{error}"
    );
    let (body, _) = multipart("file", "big.bin", 2 * MIB, None);
    let (status, error) = server.upload(body, None).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "streamed: {error}");
    assert_eq!(server.files().await, Vec::<String>::new(), "over the limit");

    let (body, _) = multipart("file", "big.bin", 512 * 1024, Some(300 * 1024));
    let (status, error) = server.upload(body, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "broken body: {error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("invalid multipart body"),
        "{error}"
    );
    assert_eq!(server.files().await, Vec::<String>::new(), "broken body");

    // Stored, then refused by input validation (wrong extension): deleted again.
    let (body, _) = multipart("file", "notes.txt", 1000, None);
    let (status, error) = server.upload(body, None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
    assert!(
        error["message"].as_str().unwrap().contains("extensions"),
        "{error}"
    );
    assert_eq!(server.files().await, Vec::<String>::new(), "invalid input");

    // A file for a field the flow does not declare: the required FILE input is missing (422),
    // and the stray file is not kept either.
    let (body, _) = multipart("other", "x.bin", 1000, None);
    let (status, error) = server.upload(body, None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
    assert_eq!(
        server.files().await,
        Vec::<String>::new(),
        "undeclared field"
    );

    // A file name cannot climb out of the inputs folder: only its last segment is kept.
    let (body, _) = multipart("file", "../../../../evil.bin", 10, None);
    let (status, execution) = server.upload(body, None).await;
    assert_eq!(status, StatusCode::OK, "{execution}");
    let uri = execution["inputs"]["file"].as_str().unwrap();
    assert!(uri.ends_with("/inputs/file/evil.bin"), "{uri}");
    assert_eq!(server.files().await, vec![uri.to_string()]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_stream_into_local_storage() {
    uploads_stream_into(Vec::new()).await;
}

#[cfg(feature = "s3")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_stream_into_s3() {
    let Some(endpoint) = common::service_url("KESTRA_TEST_S3_ENDPOINT") else {
        return;
    };
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let prefix = format!(
        "upload-{}",
        kestra::core::model::new_id().to_ascii_lowercase()
    );
    let pairs = [
        ("kestra.storage.type", "s3".to_string()),
        ("kestra.storage.s3.endpoint", endpoint),
        ("kestra.storage.s3.bucket", var("KESTRA_TEST_S3_BUCKET")),
        ("kestra.storage.s3.region", var("KESTRA_TEST_S3_REGION")),
        (
            "kestra.storage.s3.accessKey",
            var("KESTRA_TEST_S3_ACCESS_KEY"),
        ),
        (
            "kestra.storage.s3.secretKey",
            var("KESTRA_TEST_S3_SECRET_KEY"),
        ),
        ("kestra.storage.s3.prefix", prefix),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    uploads_stream_into(pairs).await;
}
