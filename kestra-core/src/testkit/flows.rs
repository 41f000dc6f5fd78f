//! [`TestFlowSource`]: a [`FlowSource`] wrapper that behaves like a source fed by a lagging or
//! failing flow topic, for tests of the orchestration path (executor, scheduler) against the
//! [`FlowSource`] contract: a flow it hides is "not visible yet", a list it fails is a backend
//! error.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::repository::{FlowRecord, RepositoryError};
use crate::runtime::flows::FlowSource;

/// The error of a failed list.
#[derive(Debug, thiserror::Error)]
#[error("flow list failed on purpose (TestFlowSource::fail_lists)")]
pub struct InjectedFailure;

/// A [`FlowSource`] over another one that can hide flows for a while ([`TestFlowSource::hide`])
/// and fail the next lists ([`TestFlowSource::fail_lists`]), counting what it did.
pub struct TestFlowSource {
    inner: Arc<dyn FlowSource>,
    /// (namespace, id, hidden until).
    hidden: Mutex<Vec<(String, String, Instant)>>,
    lists_to_fail: AtomicUsize,
    hidden_answers: AtomicUsize,
    failed_lists: AtomicUsize,
}

impl TestFlowSource {
    /// A source showing what `inner` shows.
    pub fn new(inner: Arc<dyn FlowSource>) -> Self {
        TestFlowSource {
            inner,
            hidden: Mutex::new(Vec::new()),
            lists_to_fail: AtomicUsize::new(0),
            hidden_answers: AtomicUsize::new(0),
            failed_lists: AtomicUsize::new(0),
        }
    }

    /// Hide every revision of a flow, in lookups and lists, for `duration` from now: a source
    /// that has not seen its publication yet.
    pub fn hide(&self, namespace: &str, id: &str, duration: Duration) {
        let mut hidden = self.hidden.lock().unwrap_or_else(|e| e.into_inner());
        hidden.push((
            namespace.to_string(),
            id.to_string(),
            Instant::now() + duration,
        ));
    }

    /// The next `n` calls to [`FlowSource::find_all`] fail with a backend error.
    pub fn fail_lists(&self, n: usize) {
        self.lists_to_fail.store(n, Ordering::SeqCst);
    }

    /// How many lookups answered "not found" because the flow was hidden.
    pub fn hidden_answers(&self) -> usize {
        self.hidden_answers.load(Ordering::SeqCst)
    }

    /// How many lists failed on purpose.
    pub fn failed_lists(&self) -> usize {
        self.failed_lists.load(Ordering::SeqCst)
    }

    fn is_hidden(&self, namespace: &str, id: &str) -> bool {
        let now = Instant::now();
        let hidden = self.hidden.lock().unwrap_or_else(|e| e.into_inner());
        hidden
            .iter()
            .any(|(n, i, until)| n == namespace && i == id && now < *until)
    }
}

#[async_trait]
impl FlowSource for TestFlowSource {
    async fn find(
        &self,
        tenant: &str,
        namespace: &str,
        id: &str,
        revision: Option<i32>,
    ) -> Result<Option<FlowRecord>, RepositoryError> {
        if self.is_hidden(namespace, id) {
            self.hidden_answers.fetch_add(1, Ordering::SeqCst);
            return Ok(None);
        }
        self.inner.find(tenant, namespace, id, revision).await
    }

    async fn find_all(&self, tenant: &str) -> Result<Vec<FlowRecord>, RepositoryError> {
        let fail = self
            .lists_to_fail
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if fail {
            self.failed_lists.fetch_add(1, Ordering::SeqCst);
            return Err(RepositoryError::backend("list flows", InjectedFailure));
        }
        let mut all = self.inner.find_all(tenant).await?;
        all.retain(|r| !self.is_hidden(&r.namespace, &r.id));
        Ok(all)
    }
}
