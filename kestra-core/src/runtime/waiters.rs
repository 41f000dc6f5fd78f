//! The waits of an [`Engine`](super::Engine) for executions to end ([`Engine::wait_for`]), served
//! together: no waiter reads the repository itself.
//!
//! - **Notified** where this process learns that an execution ended as the repository shows it:
//!   where the queue's units write the repository (JDBC), the engine's executor reports each ended
//!   execution once its unit committed; otherwise (Kafka + Elasticsearch) the engine's indexer
//!   reports it once it stored it ([`Waiters::ended`]). A waiter then returns at once, with no
//!   query.
//! - **Polled** by one task per engine as the fallback (an execution run by another process's
//!   executor, an engine without executor or indexer, a lost notification): the ids of every
//!   pending wait in one [`ExecutionRepository::find_by_ids`] call per interval, whatever the
//!   number of waiters, plus one call for the waits that registered within [`FRESH_BATCH`] of
//!   each other (at once for an execution this process saw end recently: its report came before
//!   the wait). So correctness never depends on the notification.
//!
//! The task starts with the first wait and ends with the engine (or when the engine is dropped); a
//! wait that ends (result, timeout, or its future dropped) unregisters its id once no other wait
//! shares it.
//!
//! [`Engine::wait_for`]: super::Engine::wait_for

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::model::Execution;
use crate::repository::{ExecutionRepository, RepositoryError};

/// What the waits of one execution know of it.
#[derive(Debug, Clone)]
enum Seen {
    /// Not seen ended yet (the state reported on a timeout is read then).
    Unknown,
    /// Ended, as the repository shows it.
    Ended(Arc<Execution>),
    /// The repository failed to answer (the wait fails as a direct read would).
    Failed(Arc<str>),
}

/// The waits of one execution.
struct Pending {
    seen: watch::Sender<Seen>,
    /// Registered since the last poll: checked at once.
    fresh: bool,
}

/// New waits are read together: the first waits this long for others to register (an engine
/// starting executions flat out registered one wait per execution, each its own read). A wait
/// for an execution ended elsewhere, before the wait, is answered this much later.
pub(crate) const FRESH_BATCH: Duration = Duration::from_millis(10);

/// How many ended executions [`Recent`] remembers.
const RECENT_ENDED: usize = 4096;

/// The ids of the executions reported ended most recently, whose new waits are read at once.
#[derive(Default)]
struct Recent {
    order: VecDeque<String>,
    ids: HashSet<String>,
}

impl Recent {
    fn remember(&mut self, id: &str) {
        if !self.ids.insert(id.to_string()) {
            return;
        }
        self.order.push_back(id.to_string());
        if self.order.len() > RECENT_ENDED
            && let Some(oldest) = self.order.pop_front()
        {
            self.ids.remove(&oldest);
        }
    }
}

struct Shared {
    executions: Arc<dyn ExecutionRepository>,
    tenant: String,
    pending: Mutex<HashMap<String, Pending>>,
    recent: Mutex<Recent>,
    /// A new wait is for an execution of `recent`: the poll task reads without waiting for others.
    urgent: AtomicBool,
}

impl Shared {
    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The registry of an engine's waits and its poll task.
pub(crate) struct Waiters {
    shared: Arc<Shared>,
    poll: Duration,
    /// New waits registered: the poll task checks them at once.
    fresh: Arc<Notify>,
    started: std::sync::Once,
    shutdown: CancellationToken,
}

/// How a wait ended.
pub(crate) enum Waited {
    /// Ended, as the repository shows it.
    Ended(Box<Execution>),
    /// Not ended within the wait: the last state known (`None`: not found).
    TimedOut(Option<String>),
}

impl Waiters {
    /// Waits over the executions of `tenant` in `executions`, polled every `poll`.
    pub(crate) fn new(
        executions: Arc<dyn ExecutionRepository>,
        tenant: &str,
        poll: Duration,
    ) -> Waiters {
        Waiters {
            shared: Arc::new(Shared {
                executions,
                tenant: tenant.to_string(),
                pending: Mutex::new(HashMap::new()),
                recent: Mutex::new(Recent::default()),
                urgent: AtomicBool::new(false),
            }),
            poll: poll.max(Duration::from_millis(1)),
            fresh: Arc::new(Notify::new()),
            started: std::sync::Once::new(),
            shutdown: CancellationToken::new(),
        }
    }

    /// The report of ended executions to give the executor or the indexer of this engine: a wait
    /// for `execution` (if any, and if it ended) returns it at once.
    pub(crate) fn observer(&self) -> EndedObserver {
        let shared = Arc::downgrade(&self.shared);
        Arc::new(move |execution: &Execution| {
            if let Some(shared) = shared.upgrade() {
                ended(&shared, execution);
            }
        })
    }

    /// How many executions are waited for now.
    pub(crate) fn pending(&self) -> usize {
        self.shared.pending().len()
    }

    /// Stop the poll task (waits still registered time out).
    pub(crate) fn stop(&self) {
        self.shutdown.cancel();
    }

    /// Wait until the execution `id` ended or `timeout` passed.
    pub(crate) async fn wait(
        &self,
        id: &str,
        timeout: Duration,
    ) -> Result<Waited, RepositoryError> {
        self.start();
        let mut registration = self.register(id);
        let seen = {
            let ended = tokio::time::timeout(
                timeout,
                registration
                    .seen
                    .wait_for(|s| matches!(s, Seen::Ended(_) | Seen::Failed(_))),
            )
            .await;
            match ended {
                Ok(Ok(seen)) => Some(seen.clone()),
                // Timed out (a closed channel is not reached: the sender outlives registrations).
                Ok(Err(_)) | Err(_) => None,
            }
        };
        let seen = seen.unwrap_or_else(|| registration.seen.borrow().clone());
        drop(registration);
        match seen {
            Seen::Ended(e) => Ok(Waited::Ended(Box::new(Arc::unwrap_or_clone(e)))),
            Seen::Failed(message) => Err(RepositoryError::backend(
                "read executions waited for",
                std::io::Error::other(message.to_string()),
            )),
            // Timed out: one last direct read (a zero timeout still looks once; the state reported
            // is the latest).
            Seen::Unknown => {
                match self
                    .shared
                    .executions
                    .find_by_id(&self.shared.tenant, id)
                    .await?
                {
                    Some(e) if e.state.is_terminated() => Ok(Waited::Ended(Box::new(e))),
                    Some(e) => Ok(Waited::TimedOut(Some(e.state.current().to_string()))),
                    None => Ok(Waited::TimedOut(None)),
                }
            }
        }
    }

    fn register(&self, id: &str) -> Registration {
        let mut pending = self.shared.pending();
        let entry = pending.entry(id.to_string()).or_insert_with(|| Pending {
            seen: watch::channel(Seen::Unknown).0,
            fresh: true,
        });
        // A failed read is not this wait's answer: it reads again.
        if matches!(*entry.seen.borrow(), Seen::Failed(_)) {
            entry.seen.send_replace(Seen::Unknown);
            entry.fresh = true;
        }
        let seen = entry.seen.subscribe();
        drop(pending);
        if self
            .shared
            .recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .ids
            .contains(id)
        {
            self.shared.urgent.store(true, Ordering::SeqCst);
        }
        self.fresh.notify_one();
        Registration {
            shared: self.shared.clone(),
            id: id.to_string(),
            seen,
        }
    }

    fn start(&self) {
        self.started.call_once(|| {
            tokio::spawn(poll(
                Arc::downgrade(&self.shared),
                self.fresh.clone(),
                self.poll,
                self.shutdown.clone(),
            ));
        });
    }
}

impl Drop for Waiters {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Reports an execution saved where the repository shows it; see `Waiters::observer` (the engine
/// hands it to the executor and the indexer).
pub type EndedObserver = Arc<dyn Fn(&Execution) + Send + Sync>;

fn ended(shared: &Shared, execution: &Execution) {
    if !execution.state.is_terminated() {
        return;
    }
    shared
        .recent
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remember(&execution.id);
    let pending = shared.pending();
    if let Some(p) = pending.get(&execution.id) {
        p.seen
            .send_replace(Seen::Ended(Arc::new(execution.clone())));
    }
}

/// One wait's hold on its execution's entry: the entry goes with the last one.
struct Registration {
    shared: Arc<Shared>,
    id: String,
    seen: watch::Receiver<Seen>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut pending = self.shared.pending();
        // This registration's receiver is still alive here.
        if pending
            .get(&self.id)
            .is_some_and(|p| p.seen.receiver_count() <= 1)
        {
            pending.remove(&self.id);
        }
    }
}

/// The poll task: the new waits at once, every wait each `interval`, one query each time.
async fn poll(
    shared: Weak<Shared>,
    fresh: Arc<Notify>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    // The first full poll one interval after the start (new waits are read at once anyway).
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let all = tokio::select! {
            () = shutdown.cancelled() => return,
            () = fresh.notified() => false,
            _ = tick.tick() => true,
        };
        let urgent = shared
            .upgrade()
            .is_some_and(|s| s.urgent.swap(false, Ordering::SeqCst));
        if !all && !urgent {
            // The waits registering meanwhile are read with this one.
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(FRESH_BATCH) => {}
            }
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let ids: Vec<String> = shared
            .pending()
            .iter_mut()
            .filter(|(_, p)| all || p.fresh)
            .map(|(id, p)| {
                p.fresh = false;
                id.clone()
            })
            .collect();
        if ids.is_empty() {
            continue;
        }
        let found = shared.executions.find_by_ids(&shared.tenant, &ids).await;
        let pending = shared.pending();
        match found {
            Ok(found) => {
                for e in found {
                    let Some(p) = pending.get(&e.id) else {
                        continue;
                    };
                    if e.state.is_terminated() {
                        p.seen.send_replace(Seen::Ended(Arc::new(e)));
                    }
                }
            }
            Err(error) => {
                warn!(%error, waits = ids.len(), "reading the executions waited for failed");
                let message: Arc<str> = error.to_string().into();
                for id in &ids {
                    if let Some(p) = pending.get(id) {
                        p.seen.send_replace(Seen::Failed(message.clone()));
                    }
                }
            }
        }
    }
}
