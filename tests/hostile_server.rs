//! Issue 16's "done when": a real `kestra server standalone` survives a scheduled flow whose
//! expression nests 2,000 deep - the depth comes from a string built at run time and given to
//! `render()`, so flow validation cannot see it (a literal that deep is refused at deploy, see
//! kestra-core/tests/hostile.rs). Each fire's execution ends FAILED with the depth named, the next
//! schedule still fires, another flow still runs, and the server process stays up. Before the depth
//! limit this overflowed the stack and killed the server at each fire (a crash loop).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kestra::core::model::{Execution, StateType};
use kestra::core::repository::{ExecutionQuery, Pageable};

/// The server process, killed when dropped (also when an assertion fails).
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const DEEP: &str = r#"id: deep
namespace: company.hostile
triggers:
  - id: every2s
    type: io.kestra.plugin.core.trigger.Schedule
    cron: "*/2 * * * * *"
    withSeconds: true
tasks:
  - id: r
    type: io.kestra.plugin.core.debug.Return
    format: "{{ render('{{ ' ~ ('(' * 2000) ~ '1' ~ (')' * 2000) ~ ' }}') }}"
"#;

const FINE: &str = r#"id: fine
namespace: company.hostile
triggers:
  - id: every2s
    type: io.kestra.plugin.core.trigger.Schedule
    cron: "*/2 * * * * *"
    withSeconds: true
tasks:
  - id: r
    type: io.kestra.plugin.core.debug.Return
    format: "{{ render('{{ ' ~ ('(' * 20) ~ '1' ~ (')' * 20) ~ ' }}') }}"
"#;

async fn executions(repos: &kestra::core::repository::Repositories, flow: &str) -> Vec<Execution> {
    repos
        .executions
        .search(
            &ExecutionQuery {
                flow_id: Some(flow.into()),
                ..ExecutionQuery::default()
            },
            &Pageable {
                size: 100,
                ..Pageable::default()
            },
        )
        .await
        .map(|page| page.results)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_survives_a_scheduled_flow_that_nests_too_deep() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let flows = dir.path().join("flows");
    std::fs::create_dir_all(&flows).unwrap();
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(flows.join("deep.yml"), DEEP).unwrap();
    std::fs::write(flows.join("fine.yml"), FINE).unwrap();
    let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_kestra"))
        .args(["server", "standalone", "--flows"])
        .arg(&flows)
        .env("KESTRA_DATA_DIR", &data)
        .env("KESTRA_SERVER_PORT", "0")
        .env_remove("KESTRA_CONFIG")
        .env_remove("KESTRA_REPOSITORY_TYPE")
        .env_remove("KESTRA_QUEUE_TYPE")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut server = Server(child);
    let server_log = || std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();

    // The database appears once the server has started.
    let url = format!("sqlite://{}/kestra.db", data.display());
    let deadline = Instant::now() + Duration::from_secs(60);
    let backend = loop {
        if data.join("kestra.db").exists()
            && let Ok(backend) = kestra::jdbc::JdbcBackend::connect(&url).await
        {
            break backend;
        }
        assert!(
            server.0.try_wait().unwrap().is_none(),
            "the server exited while starting:\n{}",
            server_log()
        );
        assert!(Instant::now() < deadline, "no database:\n{}", server_log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let repos = backend.repositories();

    // Three fires of the deep flow ended FAILED (and the fine flow succeeded meanwhile).
    let deadline = Instant::now() + Duration::from_secs(90);
    let (deep, fine) = loop {
        assert!(
            server.0.try_wait().unwrap().is_none(),
            "the server died:\n{}",
            server_log()
        );
        let deep: Vec<Execution> = executions(&repos, "deep")
            .await
            .into_iter()
            .filter(|e| e.state.current().is_terminated())
            .collect();
        let fine: Vec<Execution> = executions(&repos, "fine")
            .await
            .into_iter()
            .filter(|e| e.state.current().is_terminated())
            .collect();
        if deep.len() >= 3 && !fine.is_empty() {
            break (deep, fine);
        }
        assert!(
            Instant::now() < deadline,
            "the schedules did not go on firing: {} deep, {} fine ended\n{}",
            deep.len(),
            fine.len(),
            server_log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    for e in &deep {
        assert_eq!(e.state.current(), StateType::Failed, "{e:?}");
    }
    for e in &fine {
        assert_eq!(e.state.current(), StateType::Success, "{e:?}");
    }
    let logs = repos
        .logs
        .find_by_execution("main", &deep[0].id, None, None)
        .await
        .unwrap();
    assert!(
        logs.iter().any(|l| l.message.contains("nested too deeply")),
        "the failure names the depth: {logs:?}"
    );
    assert!(
        server.0.try_wait().unwrap().is_none(),
        "the server is still running:\n{}",
        server_log()
    );
    backend.close().await;
}
