//! Hostile files (issue 16): a flow or configuration path, an entry of `--flows` or a local file
//! given to a FILE input that is a device, a FIFO or a link to one, or a huge file, is refused with
//! a clear error instead of being read without limit (or waited on forever). And a flow file whose
//! expression nests 2,000 deep is refused by `flow validate` and `flow test` naming its line, and
//! one that builds such an expression at run time fails its execution: no stack overflow (exit
//! 134) either way.

#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs the binary with a deadline: a hung read fails the test instead of hanging it.
/// Each run has a data folder of its own: the tests run in parallel, and a run that finds the
/// SQLite file another one is creating (still empty) refuses it.
fn kestra(args: &[&std::ffi::OsStr]) -> (i32, String) {
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kestra"))
        .args(args)
        .env("KESTRA_DATA_DIR", data.path())
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

/// A directory `flows` in `dir` holding one valid flow and `entry`, made by `make`.
fn flows_with(
    dir: &std::path::Path,
    entry: &str,
    make: impl FnOnce(&std::path::Path),
) -> std::path::PathBuf {
    let flows = dir.join("flows");
    std::fs::create_dir(&flows).unwrap();
    std::fs::write(
        flows.join("a.yml"),
        "id: a\nnamespace: hostile.files\ntasks:\n  - id: t\n    type: io.kestra.plugin.core.log.Log\n    message: hi\n",
    )
    .unwrap();
    make(&flows.join(entry));
    flows
}

/// A flow to run with `flow test`, written to `dir/flow.yml`.
fn flow_file(dir: &std::path::Path, source: &str) -> std::path::PathBuf {
    let file = dir.join("flow.yml");
    std::fs::write(&file, source).unwrap();
    file
}

const HELLO: &str = "id: hello\nnamespace: hostile.files\ntasks:\n  - id: t\n    type: io.kestra.plugin.core.debug.Return\n    format: hi\n";

#[test]
fn a_flows_entry_linked_to_dev_zero_or_a_fifo_is_refused() {
    /// An entry's name, the refusal expected, and how to make it.
    type Case = (&'static str, &'static str, fn(&std::path::Path));
    let cases: [Case; 2] = [
        ("zero.yml", "not a regular file (a device)", |p| {
            std::os::unix::fs::symlink("/dev/zero", p).unwrap()
        }),
        ("pipe.yml", "not a regular file (a FIFO)", |p| {
            assert!(Command::new("mkfifo").arg(p).status().unwrap().success())
        }),
    ];
    for (entry, expected, make) in cases {
        let dir = tempfile::tempdir().unwrap();
        let flows = flows_with(dir.path(), entry, make);
        let file = flow_file(dir.path(), HELLO);
        let (code, out) = kestra(&[
            "flow".as_ref(),
            "test".as_ref(),
            file.as_os_str(),
            "--flows".as_ref(),
            flows.as_os_str(),
        ]);
        assert_eq!(code, 1, "{entry}: {out}");
        assert!(
            out.contains(entry) && out.contains(expected),
            "{entry}: {out}"
        );
    }
}

#[test]
fn a_file_input_from_a_device_or_a_fifo_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("input.fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let file = flow_file(
        dir.path(),
        "id: upload\nnamespace: hostile.files\ninputs:\n  - id: data\n    type: FILE\ntasks:\n  - id: t\n    type: io.kestra.plugin.core.debug.Return\n    format: \"{{ inputs.data }}\"\n",
    );
    for (path, expected) in [
        ("/dev/zero".to_string(), "not a regular file (a device)"),
        (fifo.display().to_string(), "not a regular file (a FIFO)"),
    ] {
        let input = format!("data=@{path}");
        let (code, out) = kestra(&[
            "flow".as_ref(),
            "test".as_ref(),
            file.as_os_str(),
            "--input".as_ref(),
            input.as_ref(),
        ]);
        assert_eq!(code, 1, "{path}: {out}");
        assert!(
            out.contains("input 'data'") && out.contains(expected),
            "{path}: {out}"
        );
    }
}

#[test]
fn a_2000_deep_expression_is_refused_by_validate_and_test_naming_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let deep = format!("{}1{}", "(".repeat(2000), ")".repeat(2000));
    let file = flow_file(
        dir.path(),
        &format!(
            "id: deep\nnamespace: hostile.files\ntasks:\n  - id: t\n    type: io.kestra.plugin.core.debug.Return\n    format: \"{{{{ {deep} }}}}\"\n"
        ),
    );
    for command in ["validate", "test"] {
        let (code, out) = kestra(&["flow".as_ref(), command.as_ref(), file.as_os_str()]);
        assert_eq!(code, 1, "flow {command}: {out}");
        assert!(
            out.contains("nested too deeply") && out.contains("6:13:"),
            "flow {command}: {out}"
        );
    }
}

#[test]
fn flow_test_fails_an_expression_built_2000_deep_at_run_time() {
    let dir = tempfile::tempdir().unwrap();
    let file = flow_file(
        dir.path(),
        "id: deep\nnamespace: hostile.files\ntasks:\n  - id: t\n    type: io.kestra.plugin.core.debug.Return\n    format: \"{{ render('{{ ' ~ ('(' * 2000) ~ '1' ~ (')' * 2000) ~ ' }}') }}\"\n",
    );
    let (code, out) = kestra(&["flow".as_ref(), "test".as_ref(), file.as_os_str()]);
    assert_eq!(code, 1, "a FAILED execution, not an abort (134): {out}");
    assert!(out.contains("nested too deeply"), "{out}");
    assert!(out.contains("FAILED"), "{out}");
}
