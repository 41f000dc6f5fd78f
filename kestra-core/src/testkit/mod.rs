//! Conformance suites for the three seams (feature `testkit`), in the pattern of object_store's
//! `integration.rs`: public async functions that take a backend as a trait object and check every
//! documented contract. Every backend's tests call them, so "works on SQLite" and "works on Kafka" mean
//! the same thing, and a third-party backend can run the suite too.

pub mod faults;
pub mod flows;
pub mod memory;
pub mod queue;
pub mod repository;
pub mod scheduler;
pub mod storage;
pub mod triggers;
pub mod unavailable;
