//! Hostile files (issue 16): a flow or configuration path that is a device, a FIFO or a link to
//! one, or a huge file, is refused with a clear error instead of being read without limit (or
//! waited on forever).

#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs the binary with a deadline: a hung read fails the test instead of hanging it.
fn kestra(args: &[&std::ffi::OsStr]) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kestra"))
        .args(args)
        .env(
            "KESTRA_DATA_DIR",
            std::env::temp_dir().join("kestra-hostile-unused"),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(_status) = child.try_wait().unwrap() {
            break;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("kestra {args:?} did not return within 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

#[test]
fn validating_dev_zero_or_a_link_to_it_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("zero.yml");
    std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
    for path in [std::path::Path::new("/dev/zero"), link.as_path()] {
        let (code, out) = kestra(&["flow".as_ref(), "validate".as_ref(), path.as_os_str()]);
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("not a regular file (a device)"), "{out}");
    }
}

#[test]
fn validating_a_fifo_is_refused_without_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("flow.yml");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let (code, out) = kestra(&["flow".as_ref(), "validate".as_ref(), fifo.as_os_str()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not a regular file (a FIFO)"), "{out}");
}

#[test]
fn a_flow_file_over_the_size_limit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("huge.yml");
    let size = kestra::core::limits::MAX_SOURCE_FILE_SIZE + 1;
    let f = std::fs::File::create(&file).unwrap();
    f.set_len(size).unwrap();
    let (code, out) = kestra(&["flow".as_ref(), "validate".as_ref(), file.as_os_str()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("file too large"), "{out}");
}

#[test]
fn a_configuration_file_linked_to_dev_zero_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("config.yml");
    std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
    let (code, out) = kestra(&[
        "sys".as_ref(),
        "purge-queue".as_ref(),
        "--config".as_ref(),
        link.as_os_str(),
    ]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("not a regular file (a device)"), "{out}");
}
