//! Issue 10, "Done when": with Elasticsearch stopped, executions are started and all finish
//! (observed from Kafka, the source of truth); when it returns, the indexer catches up and the
//! repository searches the API serves list every one of them with its logs.
//!
//! The node is NOT the shared one of `scripts/services.sh` (other tests use it): the test starts
//! an Elasticsearch node of its own from the distribution `scripts/services/elasticsearch.sh`
//! caches (`$KESTRA_SERVICES_DIR/elasticsearch/elasticsearch-*`, default `/var/tmp/kestra-services`),
//! on a free port with its data in a temporary directory (as the unprivileged user `kestra-es` when
//! run as root: Elasticsearch refuses root), kills it with SIGKILL - no goodbye - and starts it again
//! on the same data. Kafka is the shared broker (`KESTRA_TEST_KAFKA_BROKERS`, topics of its own).
//! Missing distribution, java or broker: skipped loudly, a failure under CI=true. The run's size is
//! `KESTRA_TEST_ES_DOWN_EXECUTIONS` (default 1,000).
#![cfg(feature = "kafka")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
mod common;

use std::collections::HashSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kestra::core::model::{StateType, new_id};
use kestra::core::repository::{ExecutionQuery, LogQuery, Pageable};
use kestra::kafka::KafkaQueue;
use kestra::kafka::elastic::ElasticRepositories;

const ES_USER: &str = "kestra-es";

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The cached Elasticsearch distribution (an `elasticsearch-*` folder holding `.complete`) and the
/// Java home to run it, or `None` (loudly; a panic under CI=true).
fn distribution() -> Option<(PathBuf, PathBuf)> {
    let base = std::env::var("KESTRA_SERVICES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("/var/tmp/kestra-services"))
        .join("elasticsearch");
    let home = std::fs::read_dir(&base).ok().and_then(|entries| {
        entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("elasticsearch-"))
                    && p.join(".complete").exists()
            })
            .max()
    });
    // The JDK of `java` on the PATH (what the services script runs the shared node with).
    let java_home = Command::new("sh")
        .args(["-c", "readlink -f \"$(command -v java)\""])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .and_then(|java| java.parent()?.parent().map(Path::to_path_buf));
    match (home, java_home) {
        (Some(home), Some(java)) => Some((home, java)),
        _ => {
            assert!(
                !ci(),
                "no cached Elasticsearch distribution under {} (or no java) under CI=true: scripts/services.sh fetches it",
                base.display()
            );
            eprintln!(
                "SKIPPED: no cached Elasticsearch distribution under {} (or no java); run scripts/services.sh",
                base.display()
            );
            None
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// An Elasticsearch node of this test: its own port, configuration and data directory.
struct OwnNode {
    home: PathBuf,
    java_home: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl OwnNode {
    fn start(home: PathBuf, java_home: PathBuf) -> OwnNode {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config");
        std::fs::create_dir_all(&config).unwrap();
        for entry in std::fs::read_dir(home.join("config")).unwrap().flatten() {
            let path = entry.path();
            if path.is_file() {
                std::fs::copy(&path, config.join(entry.file_name())).unwrap();
            }
        }
        let port = free_port();
        std::fs::write(
            config.join("elasticsearch.yml"),
            format!(
                "cluster.name: kestra-es-down\nnode.name: es-down-1\npath.data: {data}\npath.logs: {logs}\n\
                 network.host: 127.0.0.1\nhttp.port: {port}\ntransport.port: 0\n\
                 discovery.type: single-node\nxpack.security.enabled: false\n\
                 action.destructive_requires_name: false\n\
                 cluster.routing.allocation.disk.threshold_enabled: false\n",
                data = dir.path().join("data").display(),
                logs = dir.path().join("logs").display(),
            ),
        )
        .unwrap();
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", ES_USER])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success(), "chown the node's directory to {ES_USER}");
        }
        let mut node = OwnNode {
            home,
            java_home,
            dir,
            port,
            child: None,
        };
        node.run();
        node
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts the node (on the data it has) and waits until its cluster is at least yellow.
    fn run(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("node.out")).unwrap();
        let mut command = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", ES_USER, "--", "env"]);
            c
        } else {
            Command::new("env")
        };
        command
            .arg(format!(
                "ES_PATH_CONF={}",
                self.dir.path().join("config").display()
            ))
            .arg(format!("ES_JAVA_HOME={}", self.java_home.display()))
            .arg("ES_JAVA_OPTS=-Xms256m -Xmx256m")
            .arg(self.home.join("bin/elasticsearch"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // Its own process group: the kill reaches the JVM behind runuser and the launcher.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let started = Instant::now();
        self.child = Some(command.spawn().unwrap());
        let health = format!(
            "{}/_cluster/health?wait_for_status=yellow&timeout=1s",
            self.url()
        );
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!(
                    "the Elasticsearch node exited ({status}):\n{}",
                    self.output()
                );
            }
            if probe::healthy(&health) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(180),
                "the Elasticsearch node did not become healthy in 180 s:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        eprintln!(
            "[es-down] node on {} healthy in {:?}",
            self.url(),
            started.elapsed()
        );
    }

    fn output(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("node.out")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// SIGKILL to the node's whole process group, then reaped.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A blocking health probe (the node is started from a blocking thread): one HTTP/1.1 request over
/// a plain TCP stream to the node on loopback.
mod probe {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    /// Whether `url` answers 200 with a green or yellow cluster status.
    pub fn healthy(url: &str) -> bool {
        {
            let Some(rest) = url.strip_prefix("http://") else {
                return false;
            };
            let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
            let Ok(mut stream) = TcpStream::connect(host) else {
                return false;
            };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
            let request =
                format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
            if stream.write_all(request.as_bytes()).is_err() {
                return false;
            }
            let mut body = String::new();
            let _ = stream.read_to_string(&mut body);
            body.starts_with("HTTP/1.1 200")
                && (body.contains("\"status\":\"green\"") || body.contains("\"status\":\"yellow\""))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn executions_finish_while_elasticsearch_is_down_and_the_indexer_catches_up() {
    let Some(brokers) = common::service_url("KESTRA_TEST_KAFKA_BROKERS") else {
        return;
    };
    let Some((home, java_home)) = distribution() else {
        return;
    };
    let n: usize = std::env::var("KESTRA_TEST_ES_DOWN_EXECUTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    let mut node = tokio::task::spawn_blocking(move || OwnNode::start(home, java_home))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let run = new_id().to_lowercase();
    let config = kestra::config::Config::from_pairs([
        ("kestra.queue.type", "kafka".to_string()),
        ("kestra.repository.type", "elasticsearch".to_string()),
        ("kestra.kafka.brokers", brokers),
        ("kestra.kafka.topic-prefix", format!("kestra_esdown_{run}_")),
        ("kestra.kafka.partitions", "2".to_string()),
        ("kestra.elasticsearch.url", node.url()),
        (
            "kestra.elasticsearch.index-prefix",
            format!("kestra_esdown_{run}_"),
        ),
        ("kestra.data-dir", dir.path().display().to_string()),
    ]);
    let options = config.kafka_options().unwrap();
    let engine = kestra::engine(&config).await.unwrap().start();
    engine
        .deploy("id: two\nnamespace: company.esdown\ntasks:\n  - id: a\n    type: io.kestra.plugin.core.log.Log\n    message: first line\n  - id: b\n    type: io.kestra.plugin.core.log.Log\n    message: second line\n")
        .await
        .unwrap();

    // Elasticsearch goes away, without a goodbye.
    node.kill();
    let down = Instant::now();
    let mut ids = HashSet::new();
    for _ in 0..n {
        let execution = engine
            .execute("company.esdown", "two", Default::default())
            .await
            .unwrap();
        ids.insert(execution.id);
    }
    eprintln!("[es-down] {n} executions started in {:?}", down.elapsed());
    // Observed from Kafka: the executor's committed state, not the (unreachable) repository.
    let deadline = Instant::now() + Duration::from_secs(300);
    let finished = loop {
        let executions = KafkaQueue::executions(&options).await.unwrap();
        let ended: Vec<_> = executions
            .iter()
            .filter(|e| ids.contains(&e.id) && e.state.is_terminated())
            .collect();
        if ended.len() == n {
            let not_success: Vec<_> = ended
                .iter()
                .filter(|e| e.state.current() != StateType::Success || e.task_run_list.len() != 2)
                .map(|e| (e.id.clone(), e.state.current()))
                .collect();
            assert!(
                not_success.is_empty(),
                "every execution SUCCESS with its two task runs: {not_success:?}"
            );
            break down.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "with Elasticsearch down, {} of {n} executions ended within 300 s",
            ended.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!("[es-down] {n} executions ended with Elasticsearch down, {finished:?} after it went");

    // It comes back on the data it had: the indexer resumes where it stopped.
    let node = tokio::task::spawn_blocking(move || {
        node.run();
        node
    })
    .await
    .unwrap();
    let back = Instant::now();
    let repos = engine.repositories();
    let page = Pageable {
        size: 1,
        ..Pageable::default()
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    let (executions, logs) = loop {
        // The searches the API serves (GET /executions/search, GET /logs/search).
        let executions = repos
            .executions
            .search(
                &ExecutionQuery {
                    namespace: Some("company.esdown".into()),
                    flow_id: Some("two".into()),
                    states: vec![StateType::Success],
                    ..Default::default()
                },
                &page,
            )
            .await
            .map(|p| p.total)
            .unwrap_or(0);
        let logs = repos
            .logs
            .search(
                &LogQuery {
                    namespace: Some("company.esdown".into()),
                    q: Some("line".into()),
                    ..Default::default()
                },
                &page,
            )
            .await
            .map(|p| p.total)
            .unwrap_or(0);
        if executions == n as u64 && logs == 2 * n as u64 {
            break (executions, logs);
        }
        assert!(
            Instant::now() < deadline,
            "the indexer did not catch up within 300 s of Elasticsearch's return: {executions} of {n} SUCCESS executions, {logs} of {} log lines",
            2 * n
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!(
        "[es-down] indexer caught up {:?} after Elasticsearch returned: {executions} executions, {logs} log lines",
        back.elapsed()
    );
    // Each one is found with its own logs, none doubled (spot checks).
    for id in ids.iter().take(20) {
        let lines = repos
            .logs
            .find_by_execution("main", id, None, None)
            .await
            .unwrap();
        let task_lines: Vec<_> = lines
            .iter()
            .filter(|l| l.message.contains("line"))
            .map(|l| l.message.clone())
            .collect();
        assert_eq!(
            task_lines.len(),
            2,
            "execution {id} has its two log lines once: {task_lines:?}"
        );
    }
    engine.shutdown().await;
    KafkaQueue::delete_topics(&options).await.unwrap();
    ElasticRepositories::connect(config.elastic_options().unwrap())
        .await
        .unwrap()
        .delete_indices()
        .await
        .unwrap();
    drop(node);
}
