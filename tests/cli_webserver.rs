//! `kestra server standalone` as a real process serves the REST API: it prints the URL and the
//! credentials, answers `/health` without them, refuses the API without them, and with them lists
//! the flows deployed from `--flows`. SIGTERM stops it.

#![cfg(feature = "webserver")]
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;

/// The server process, killed when dropped (also when an assertion fails).
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One HTTP/1.1 request; returns (status, body).
fn http(address: &str, path: &str, auth: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer.split(' ').nth(1).unwrap().parse().unwrap();
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn standalone_serves_the_api_and_prints_url_and_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let flows = dir.path().join("flows");
    std::fs::create_dir(&flows).unwrap();
    std::fs::write(
        flows.join("hi.yaml"),
        "id: hi\nnamespace: tests.web\ntasks:\n  - id: hi\n    type: io.kestra.plugin.core.log.Log\n    message: hi\n",
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_kestra"))
        .args(["server", "standalone", "--flows"])
        .arg(&flows)
        .env("KESTRA_DATA_DIR", dir.path().join("data"))
        .env("KESTRA_SERVER_PORT", "0")
        .env_remove("KESTRA_SERVER_BASIC_AUTH_PASSWORD")
        .env_remove("KESTRA_SERVER_BASIC_AUTH_USERNAME")
        .env_remove("KESTRA_SERVER_BASIC_AUTH_ENABLED")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut server = Server(child);
    let stdout = BufReader::new(server.0.stdout.take().unwrap());
    let mut lines = stdout.lines();
    let url_line = lines.next().unwrap().unwrap();
    let credentials_line = lines.next().unwrap().unwrap();
    assert!(
        url_line.starts_with("Kestra API: http://127.0.0.1:"),
        "{url_line}"
    );
    assert_eq!(credentials_line, "Log in with: admin@kestra.io / kestra");
    let address = url_line
        .trim_start_matches("Kestra API: http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok((200, body)) = std::panic::catch_unwind(|| http(&address, "/health", None)) {
            assert!(body.contains("UP"), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "the API never answered");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(http(&address, "/api/v1/main/flows/search", None).0, 401);
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("admin@kestra.io:kestra")
    );
    let (status, body) = http(
        &address,
        "/api/v1/main/flows/search?namespace=tests.web",
        Some(&auth),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"id\":\"hi\""), "{body}");

    let pid = server.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "SIGTERM did not stop the server");
        std::thread::sleep(Duration::from_millis(100));
    }
}
