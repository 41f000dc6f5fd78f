//! `kestra flow test FILE`: runs a flow in a throwaway engine, prints the final execution as JSON in
//! Kestra's shape, and exits 0 only on SUCCESS/WARNING.

#![allow(clippy::unwrap_used)]

use std::process::Command;

fn flow_test(flow: &str, extra: &[&str]) -> (i32, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flow.yaml");
    std::fs::write(&file, flow).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_kestra"))
        .args(["flow", "test"])
        .arg(&file)
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let json = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.code().unwrap_or(-1), json)
}

#[test]
fn successful_flow_prints_the_execution_and_exits_zero() {
    let (code, e) = flow_test(
        "id: greet\nnamespace: cli.test\ninputs:\n  - id: name\n    type: STRING\ntasks:\n  - id: hello\n    type: io.kestra.plugin.core.debug.Return\n    format: \"hi {{ inputs.name }}\"\noutputs:\n  - id: out\n    type: STRING\n    value: \"{{ outputs.hello.value }}\"\n",
        &["--input", "name=bob"],
    );
    assert_eq!(code, 0, "{e}");
    assert_eq!(e["state"]["current"], "SUCCESS");
    assert_eq!(e["id"].as_str().unwrap().len(), 22);
    assert_eq!(e["taskRunList"][0]["taskId"], "hello");
    assert_eq!(e["taskRunList"][0]["state"]["current"], "SUCCESS");
    assert_eq!(e["taskRunList"][0]["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(e["taskRunList"][0]["outputs"]["value"], "hi bob");
    assert_eq!(e["outputs"]["out"], "hi bob");
}

#[test]
fn failed_flow_exits_non_zero() {
    let (code, e) = flow_test(
        "id: boom\nnamespace: cli.test\ntasks:\n  - id: fail\n    type: io.kestra.plugin.core.execution.Fail\n",
        &[],
    );
    assert_eq!(code, 1);
    assert_eq!(e["state"]["current"], "FAILED");
}
