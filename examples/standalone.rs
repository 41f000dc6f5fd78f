//! The all-in-one server with no configuration: SQLite (`./data/kestra.db`) and local storage
//! (`./data/storage`), executor + worker + indexer + scheduler and the REST API on
//! `http://127.0.0.1:8080/api/v1/main/` (basic authentication, `admin@kestra.io` / `kestra` unless
//! configured), flows of `./flows` (if present) deployed at start. Ctrl-C stops it gracefully.
//!
//! Run: `cargo run --example standalone`

use std::path::Path;
use std::sync::Arc;

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
    let engine = Arc::new(engine);
    let web = kestra::webserver_from_config(&config, engine.clone())?;
    println!("Kestra API: {}api/v1/main/", web.url);
    if let Some(credentials) = &web.credentials {
        println!("Log in with: {credentials}");
    }
    println!("Kestra UI: {}ui/", web.url);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut server = tokio::spawn(web.webserver.run(shutdown.clone()));
    tracing::info!(
        "kestra standalone running on {}; Ctrl-C to stop",
        config.database_url()?
    );
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        r = &mut server => r??,
    }
    shutdown.cancel();
    if !server.is_finished() {
        server.await??;
    }
    if let Ok(engine) = Arc::try_unwrap(engine) {
        engine.shutdown().await;
    }
    Ok(())
}
