//! Runtime services around the pure logic: the executor service (units of work -> `process`), the
//! indexer, the flow cache, and [`Engine`], which wires them with a worker over one backend.

// WIP: pub mod engine; (needs the worker module)
pub mod executor;
pub mod flows;
pub mod indexer;
