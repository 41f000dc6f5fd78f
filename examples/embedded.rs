//! Embedding kestra in an application: open the embedded backend (SQLite + local storage in a
//! temporary directory), deploy a flow written in YAML, run it with an input, and print its outputs.
//!
//! Run: `cargo run --example embedded`

use std::time::Duration;

use indexmap::IndexMap;
use kestra::core::inputs::RawInput;

const FLOW: &str = r#"
id: greet
namespace: company.team
inputs:
  - id: name
    type: STRING
    defaults: world
tasks:
  - id: hello
    type: io.kestra.plugin.core.debug.Return
    format: "Hello, {{ inputs.name }}!"
  - id: shout
    type: io.kestra.plugin.core.debug.Return
    format: "{{ outputs.hello.value | upper }}"
outputs:
  - id: greeting
    type: STRING
    value: "{{ outputs.shout.value }}"
"#;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let config =
        kestra::config::Config::from_pairs([("kestra.data-dir", dir.path().display().to_string())]);
    let engine = kestra::engine(&config).await?.start();

    let (flow, _) = engine.deploy(FLOW).await?;
    let mut inputs = IndexMap::new();
    inputs.insert("name".to_string(), RawInput::Text("kestra".into()));
    let execution = engine.execute(&flow.namespace, &flow.id, inputs).await?;
    let done = engine
        .wait_for(&execution.id, Duration::from_secs(30))
        .await?;

    println!("execution {} ended {}", done.id, done.state.current());
    for run in &done.task_run_list {
        println!(
            "  {} -> {} {:?}",
            run.task_id,
            run.state.current(),
            run.outputs
        );
    }
    println!("flow outputs: {}", serde_json::to_string(&done.outputs)?);
    engine.shutdown().await;
    Ok(())
}
