//! `kestra sys services` shows the service instances the indexer recorded from their heartbeats on
//! the queue: with `kestra server standalone` running on a data directory, the executor, worker,
//! indexer, scheduler and webserver show up RUNNING; on a fresh data directory it says none was seen
//! yet.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The server process, killed when dropped (also when an assertion fails).
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn services(data: &Path, json: bool) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kestra"));
    command.args(["sys", "services"]);
    if json {
        command.arg("--json");
    }
    command
        .env("KESTRA_DATA_DIR", data)
        .env_remove("KESTRA_CONFIG")
        .env_remove("KESTRA_REPOSITORY_TYPE")
        .output()
        .unwrap()
}

#[test]
fn a_fresh_data_directory_has_seen_no_service() {
    let dir = tempfile::tempdir().unwrap();
    let out = services(&dir.path().join("data"), false);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "no service instance seen yet (the indexer records them from their heartbeats)"
    );
}

#[test]
fn standalone_components_show_up_running() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let child = Command::new(env!("CARGO_BIN_EXE_kestra"))
        .args(["server", "standalone"])
        .env("KESTRA_DATA_DIR", &data)
        .env("KESTRA_SERVER_PORT", "0")
        .env_remove("KESTRA_CONFIG")
        .env_remove("KESTRA_REPOSITORY_TYPE")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _server = Server(child);
    let wanted = ["EXECUTOR", "WORKER", "INDEXER", "SCHEDULER", "WEBSERVER"];
    let deadline = Instant::now() + Duration::from_secs(60);
    let instances = loop {
        std::thread::sleep(Duration::from_millis(500));
        // The database may not exist yet while the server starts.
        let out = services(&data, true);
        if out.status.success() {
            let instances: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
            let running = |t: &str| {
                instances
                    .iter()
                    .any(|i| i["type"] == t && i["state"] == "RUNNING")
            };
            if wanted.iter().all(|t| running(t)) {
                break instances;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the components never all showed up RUNNING: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    };
    for i in &instances {
        assert!(i["id"].as_str().is_some_and(|id| !id.is_empty()), "{i}");
        assert!(i["hostname"].as_str().is_some(), "{i}");
    }
    // The table: a header, then one line per instance, type and state in Kestra's spelling.
    let out = services(&data, false);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("ID") && header.contains("TYPE") && header.contains("LAST HEARTBEAT"),
        "{header}"
    );
    for t in wanted {
        assert!(
            lines
                .clone()
                .any(|l| l.contains(t) && l.contains("RUNNING")),
            "no RUNNING {t} line in:\n{text}"
        );
    }
}
