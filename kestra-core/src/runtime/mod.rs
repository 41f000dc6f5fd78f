//! Runtime services around the pure logic: the executor service (units of work -> `process`), the
//! indexer, the flow cache, and [`Engine`], which wires them with a worker over one backend.

pub mod engine;
pub mod executor;
pub mod flows;
pub mod indexer;
pub use engine::{
    Components, Engine, EngineBuilder, EngineError, ExecuteOptions, WebhookRequest, WebhookResponse,
};
