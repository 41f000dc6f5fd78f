//! One in-memory backend for tests: a [`MemoryQueue`], [`MemoryRepositories`] and a
//! [`MemoryStorage`]. Each passes its conformance suite ([`crate::testkit::queue`],
//! [`crate::testkit::repository`], [`crate::testkit::storage`]), so a test written against them
//! exercises the documented contracts, not the quirks of a hand-written copy. Nothing is persisted.

pub mod queue;
pub mod repository;
pub mod storage;

pub use queue::MemoryQueue;
pub use repository::MemoryRepositories;
pub use storage::MemoryStorage;
