//! The runtime around the components: [`Engine`], which wires the executor, worker, scheduler and
//! indexer services over one backend, and the flow source and cache they read flows from
//! ([`flows`]).

pub mod engine;
pub mod flows;
mod waiters;
pub use engine::{
    Components, Engine, EngineBuilder, EngineError, ExecuteOptions, WebhookRequest, WebhookResponse,
};
pub use waiters::EndedObserver;
