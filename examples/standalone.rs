//! The all-in-one server with no configuration: SQLite (`./data/kestra.db`) and local storage
//! (`./data/storage`), executor + worker + indexer in one process, flows of `./flows` (if present)
//! deployed at start. Ctrl-C stops it gracefully. (The web server and UI join when they land.)
//!
//! Run: `cargo run --example standalone`

use std::path::Path;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let config = kestra::config::Config::load(None)?;
    let engine = kestra::engine(&config).await?.start();
    let flows = Path::new("flows");
    if flows.is_dir() {
        for entry in std::fs::read_dir(flows)? {
            let path = entry?.path();
            if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yml" | "yaml")
            ) {
                let (flow, _) = engine.deploy(&std::fs::read_to_string(&path)?).await?;
                tracing::info!(flow = %flow.id, namespace = %flow.namespace, "deployed");
            }
        }
    }
    tracing::info!(
        "kestra standalone running on {}; Ctrl-C to stop",
        config.database_url()?
    );
    tokio::signal::ctrl_c().await?;
    engine.shutdown().await;
    Ok(())
}
