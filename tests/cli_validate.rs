//! `kestra flow validate`: output and exit status on valid and invalid files.

#![allow(clippy::unwrap_used)]

use std::process::Command;

const VALID: &str = "id: hello\nnamespace: company.team\ntasks:\n  - id: log\n    type: io.kestra.plugin.core.log.Log\n    message: hi\n";
const INVALID: &str = "id: hello\nnamespace: company.team\ntasks:\n  - id: log\n    type: io.kestra.plugin.core.log.Nope\n  - id: log\n    type: io.kestra.plugin.core.log.Log\n    message: hi\n";

fn kestra(args: &[&std::ffi::OsStr]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_kestra"))
        .args(args)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[test]
fn valid_file_prints_ok_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("valid.yaml");
    std::fs::write(&file, VALID).unwrap();
    let (code, out) = kestra(&["flow".as_ref(), "validate".as_ref(), file.as_os_str()]);
    assert_eq!(code, 0);
    assert_eq!(out, format!("{}: OK\n", file.display()));
}

#[test]
fn invalid_file_prints_every_error_and_exits_one() {
    let dir = tempfile::tempdir().unwrap();
    let valid = dir.path().join("valid.yaml");
    let invalid = dir.path().join("invalid.yaml");
    std::fs::write(&valid, VALID).unwrap();
    std::fs::write(&invalid, INVALID).unwrap();
    let (code, out) = kestra(&[
        "flow".as_ref(),
        "validate".as_ref(),
        valid.as_os_str(),
        invalid.as_os_str(),
    ]);
    assert_eq!(code, 1);
    let i = invalid.display();
    assert_eq!(
        out,
        format!(
            "{}: OK\n{i}:5:11: error: tasks[0].type: unknown task type 'io.kestra.plugin.core.log.Nope'\n\
             {i}:6:9: error: tasks[1].id: duplicate task id 'log' (first used at tasks[0])\n",
            valid.display()
        )
    );
}

#[test]
fn missing_file_is_an_error() {
    let (code, out) = kestra(&[
        "flow".as_ref(),
        "validate".as_ref(),
        "/nonexistent/flow.yaml".as_ref(),
    ]);
    assert_eq!(code, 1);
    assert!(
        out.starts_with("/nonexistent/flow.yaml: error: cannot read the file"),
        "{out}"
    );
}

#[test]
fn no_file_is_a_usage_error() {
    let (code, _) = kestra(&["flow".as_ref(), "validate".as_ref()]);
    assert_eq!(code, 2);
}

/// The README's first command deploys `./flows`: the folder exists in the repository and its flows are
/// valid, so `kestra server standalone --flows ./flows` works on a fresh clone.
#[test]
fn the_readme_example_flows_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("flows");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no flow", dir.display());
    let args: Vec<&std::ffi::OsStr> = ["flow".as_ref(), "validate".as_ref()]
        .into_iter()
        .chain(files.iter().map(|f| f.as_os_str()))
        .collect();
    let (code, out) = kestra(&args);
    assert_eq!(code, 0, "{out}");
}

/// An empty file, a file of comments and a lone `---` hold no flow: invalid, as `flow test` says.
#[test]
fn a_file_without_a_flow_is_invalid() {
    let dir = tempfile::tempdir().unwrap();
    for (name, content, position) in [
        ("empty.yaml", "", "1:1"),
        ("comments.yaml", "# nothing here\n", "2:1"),
        ("dashes.yaml", "---\n", "1:4"),
    ] {
        let file = dir.path().join(name);
        std::fs::write(&file, content).unwrap();
        let (code, out) = kestra(&["flow".as_ref(), "validate".as_ref(), file.as_os_str()]);
        assert_eq!(code, 1, "{name}: {out}");
        assert_eq!(
            out,
            format!(
                "{}:{position}: error: empty document, expected a flow\n",
                file.display()
            ),
            "{name}"
        );
    }
}

/// `kestra flow schema`: the flow JSON Schema on stdout (compact, or indented with `--pretty`),
/// the same as the committed `docs/flow.schema.json`.
#[test]
fn flow_schema_prints_the_json_schema() {
    let (code, out) = kestra(&["flow".as_ref(), "schema".as_ref()]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 1);
    let schema: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
    assert!(schema["definitions"]["io.kestra.plugin.core.flow.If"].is_object());
    let (code, pretty) = kestra(&["flow".as_ref(), "schema".as_ref(), "--pretty".as_ref()]);
    assert_eq!(code, 0);
    let committed = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/flow.schema.json"),
    )
    .unwrap();
    assert_eq!(pretty, committed);
}
