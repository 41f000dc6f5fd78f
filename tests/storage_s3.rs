//! A standalone engine configured the Kestra way with `kestra.storage.type: s3` (MinIO started by
//! `scripts/services/storage.sh`): a flow whose shell task writes output files runs, and the files
//! land in the bucket under `<prefix>/<tenant>/<namespace>/<flow>/executions/<id>/...`; plus the
//! configuration errors of the storage keys. Needs `KESTRA_TEST_S3_ENDPOINT` (skipped loudly without
//! it, a failure under `CI=true`).
#![cfg(feature = "s3")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)] // sqlite_url is for the engine tests
mod common;

use std::time::Duration;

use indexmap::IndexMap;
use kestra::config::Config;
use kestra::core::model::StateType;
use kestra::core::storage::{InternalStorageExt, StoragePath};
use kestra::storage::object::object_store::ObjectStoreExt;
use kestra::storage::object::object_store::path::Path as ObjectPath;

fn s3_pairs(data_dir: &std::path::Path, prefix: &str) -> Option<Vec<(String, String)>> {
    let endpoint = common::service_url("KESTRA_TEST_S3_ENDPOINT")?;
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    Some(
        [
            ("kestra.data-dir", data_dir.display().to_string()),
            ("kestra.storage.type", "s3".into()),
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
            ("kestra.storage.s3.prefix", prefix.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
    )
}

const FLOW: &str = r#"
id: s3-output-files
namespace: company.team
tasks:
  - id: sh
    type: io.kestra.plugin.scripts.shell.Commands
    taskRunner:
      type: io.kestra.plugin.core.runner.Process
    outputFiles:
      - out.txt
      - "reports/*.csv"
    commands:
      - printf 'written by a shell task' > out.txt
      - mkdir -p reports && printf 'a,b\n1,2\n' > reports/r.csv
  - id: use
    type: io.kestra.plugin.core.debug.Return
    format: "{{ read(outputs.sh.outputFiles['out.txt']) }}"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shell_task_output_file_lands_in_the_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("engine-{}", uuid_like());
    let Some(pairs) = s3_pairs(dir.path(), &prefix) else {
        return;
    };
    let config = Config::from_pairs(pairs);
    assert_eq!(config.storage_type().unwrap(), "s3");
    let engine = kestra::engine(&config).await.expect("engine on S3").start();
    let (flow, _) = engine.deploy(FLOW).await.expect("deploy");
    let created = engine
        .execute(&flow.namespace, &flow.id, IndexMap::new())
        .await
        .expect("execute");
    let execution = engine
        .wait_for(&created.id, Duration::from_secs(60))
        .await
        .expect("wait");
    assert_eq!(
        execution.state.current(),
        StateType::Success,
        "{execution:#?}"
    );
    let use_run = execution
        .task_run_list
        .iter()
        .find(|r| r.task_id == "use")
        .expect("the use task ran");
    assert_eq!(
        use_run.outputs.as_ref().and_then(|o| o.get("value")),
        Some(&serde_json::json!("written by a shell task")),
        "read() of the output file goes through S3"
    );
    let sh_run = execution
        .task_run_list
        .iter()
        .find(|r| r.task_id == "sh")
        .expect("the shell task ran");
    let files = sh_run
        .outputs
        .as_ref()
        .and_then(|o| o.get("outputFiles"))
        .and_then(|f| f.as_object())
        .expect("outputFiles")
        .clone();
    assert_eq!(files.len(), 2, "{files:?}");

    // The engine's storage is the S3 one: the files are objects of the bucket under the prefix.
    let storage = kestra::open_storage(&config)
        .await
        .expect("open the same S3 storage");
    let raw = kestra::storage::object::S3Config {
        options: kestra::storage::object::ObjectOptions::default(),
        ..config.s3_storage().unwrap()
    }
    .connect()
    .await
    .expect("connect without a prefix");
    for (name, uri) in &files {
        let uri = uri.as_str().expect("a URI");
        let path = StoragePath::parse(uri).expect("a kestra:// URI");
        assert!(
            path.as_str().starts_with(&format!(
                "company/team/s3-output-files/executions/{}/",
                execution.id
            )),
            "{name}: {uri}"
        );
        let key = format!("{prefix}/main/{}", path.as_str());
        let meta = raw
            .object_store()
            .head(&ObjectPath::from(key.as_str()))
            .await
            .unwrap_or_else(|e| panic!("{name} is not the object {key} of the bucket: {e}"));
        let content = storage.get_bytes("main", &path).await.expect("get");
        assert_eq!(meta.size, content.len() as u64);
    }
    let out = files["out.txt"].as_str().unwrap();
    let content = storage
        .get_bytes("main", &StoragePath::parse(out).unwrap())
        .await
        .unwrap();
    assert_eq!(&content[..], b"written by a shell task");

    // Purging the execution's files empties its prefix in the bucket.
    let root = StoragePath::execution("company.team", "s3-output-files", &execution.id).unwrap();
    assert_eq!(storage.delete_prefix("main", &root).await.unwrap(), 2);
    engine.shutdown().await;
}

#[tokio::test]
async fn storage_configuration_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::from_pairs([
        ("kestra.data-dir", dir.path().display().to_string()),
        ("kestra.storage.type", "s3".to_string()),
    ]);
    let error = kestra::open_storage(&config)
        .await
        .err()
        .expect("no bucket");
    assert!(
        error.to_string().contains("kestra.storage.s3.bucket"),
        "{error}"
    );

    let config = Config::from_pairs([("kestra.storage.type", "ftp")]);
    let error = kestra::open_storage(&config).await.err().expect("unknown");
    assert!(
        error.to_string().contains("unknown storage type 'ftp'"),
        "{error}"
    );

    let config = Config::from_pairs([
        ("kestra.storage.type", "s3"),
        ("kestra.storage.s3.bucket", "b"),
        ("kestra.storage.s3.accessKey", "only-the-key"),
    ]);
    let error = kestra::open_storage(&config)
        .await
        .err()
        .expect("half credentials");
    assert!(error.to_string().contains("secretKey"), "{error}");
}

#[tokio::test]
async fn a_missing_bucket_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut pairs) = s3_pairs(dir.path(), "p") else {
        return;
    };
    let bucket = format!("kestra-missing-{}", uuid_like());
    for (k, v) in &mut pairs {
        if k == "kestra.storage.s3.bucket" {
            *v = bucket.clone();
        }
    }
    let error = kestra::open_storage(&Config::from_pairs(pairs))
        .await
        .err()
        .expect("a missing bucket is refused");
    let message = error.to_string();
    assert!(
        message.contains(&bucket) && message.contains("does not exist"),
        "{message}"
    );
}

fn uuid_like() -> String {
    kestra::core::model::new_id().to_ascii_lowercase()
}

const NAMESPACE_FILES_FLOW: &str = r#"
id: s3-namespace-files
namespace: company.team
tasks:
  - id: read
    type: io.kestra.plugin.core.debug.Return
    format: "{{ read(fileURI('data/greeting.txt')) }}"
  - id: remember
    type: io.kestra.plugin.core.kv.Set
    key: greeting
    value: "{{ outputs.read.value }} again"
  - id: recall
    type: io.kestra.plugin.core.debug.Return
    format: "{{ kv('greeting') }}"
"#;

/// Namespace files (`<namespace>/_files/...`) and KV values live in the bucket: a namespace file
/// written through another storage client (as from another machine) is read by a flow with
/// `read(fileURI(...))`, and the KV value the flow sets is an object of the bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_files_and_kv_live_in_the_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("nsfiles-{}", uuid_like());
    let Some(pairs) = s3_pairs(dir.path(), &prefix) else {
        return;
    };
    let config = Config::from_pairs(pairs);
    // Another client of the same bucket writes the namespace file.
    let writer = kestra::open_storage(&config)
        .await
        .expect("open the S3 storage");
    let file = StoragePath::parse("kestra:///company/team/_files/data/greeting.txt").unwrap();
    writer
        .put_bytes("main", &file, bytes_of("hello from the bucket"))
        .await
        .expect("write the namespace file");

    let engine = kestra::engine(&config).await.expect("engine on S3").start();
    let (flow, _) = engine.deploy(NAMESPACE_FILES_FLOW).await.expect("deploy");
    let created = engine
        .execute(&flow.namespace, &flow.id, IndexMap::new())
        .await
        .expect("execute");
    let execution = engine
        .wait_for(&created.id, Duration::from_secs(60))
        .await
        .expect("wait");
    assert_eq!(
        execution.state.current(),
        StateType::Success,
        "{execution:#?}"
    );
    let output = |task: &str| {
        execution
            .task_run_list
            .iter()
            .find(|r| r.task_id == task)
            .and_then(|r| r.outputs.as_ref())
            .and_then(|o| o.get("value"))
            .cloned()
    };
    assert_eq!(
        output("read"),
        Some(serde_json::json!("hello from the bucket"))
    );
    assert_eq!(
        output("recall"),
        Some(serde_json::json!("hello from the bucket again"))
    );

    // Both are objects of the bucket under the configured prefix.
    let raw = kestra::storage::object::S3Config {
        options: kestra::storage::object::ObjectOptions::default(),
        ..config.s3_storage().unwrap()
    }
    .connect()
    .await
    .expect("connect without a prefix");
    for key in [
        format!("{prefix}/main/company/team/_files/data/greeting.txt"),
        format!("{prefix}/main/company/team/_kv/greeting.json"),
    ] {
        raw.object_store()
            .head(&ObjectPath::from(key.as_str()))
            .await
            .unwrap_or_else(|e| panic!("{key} is not an object of the bucket: {e}"));
    }
    let namespace = StoragePath::namespace("company.team").unwrap();
    writer
        .delete_prefix("main", &namespace)
        .await
        .expect("clean the test prefix");
    engine.shutdown().await;
}

fn bytes_of(text: &str) -> axum::body::Bytes {
    axum::body::Bytes::copy_from_slice(text.as_bytes())
}
