//! Group commit of [`Queue::publish`]: the publishes that arrive while one is being written wait
//! and go out together in the next transaction.
//!
//! Every publish on its own is a transaction (SQLite: a call to the write connection's thread;
//! PostgreSQL and MySQL: begin, insert, commit round trips), and every writer of the database
//! queues for the one write connection (SQLite) or for the rows' locks. Sixteen clients starting
//! executions at once used to cost sixteen transactions in a row; grouped, they cost one or two.
//! Written by hand: no crate offers a group commit over a sqlx pool.
//!
//! Guarantees, as for a publish alone: a publish returns once its messages are committed (or with
//! the error that kept them out); each publish's messages are written all or none; the messages of
//! one publish keep their order, and a publish that returned comes before any publish started
//! after it. When a group's transaction fails, each publish of the group is written again on its
//! own, so that one publish's failure is not another's. The group is written by a spawned task:
//! a caller that stops waiting (a cancelled future) cancels neither its publish nor the others'.

use super::*;
use tokio::sync::oneshot;

/// Payload bytes after which a group takes no further publish (the next group will): a
/// statement inserts all the rows of a group, and MySQL refuses a statement larger than its
/// `max_allowed_packet` (16 MiB by default on MariaDB). A single publish is never split.
const GROUP_BYTES: usize = 1 << 20;

/// The publishes waiting for the next group, and whether a task is writing groups.
#[derive(Default)]
pub(super) struct PublishGroups {
    state: std::sync::Mutex<GroupState>,
}

#[derive(Default)]
struct GroupState {
    pending: VecDeque<Pending>,
    /// A writer task runs: it takes `pending` when its current group is written.
    writing: bool,
}

struct Pending {
    messages: Vec<Envelope>,
    done: oneshot::Sender<Result<(), sqlx::Error>>,
}

impl PublishGroups {
    fn lock(&self) -> std::sync::MutexGuard<'_, GroupState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The next group: publishes from the front of the queue up to [`GROUP_BYTES`] (at least
    /// one); `None` (and the writer marked gone) when none is waiting.
    fn next_group(&self) -> Option<Vec<Pending>> {
        let mut st = self.lock();
        let mut bytes = 0;
        let mut group = Vec::new();
        while let Some(p) = st.pending.front() {
            let size: usize = p.messages.iter().map(|m| m.payload.len()).sum();
            if !group.is_empty() && bytes + size > GROUP_BYTES {
                break;
            }
            bytes += size;
            group.extend(st.pending.pop_front());
        }
        if group.is_empty() {
            st.writing = false;
            return None;
        }
        Some(group)
    }
}

/// Ends the writer's turn if its task stops without finishing (a panic, the runtime shutting
/// down): the waiting publishes are answered with an error (their senders dropped) rather than
/// left waiting for a writer that is gone.
struct WriterGone<'a>(&'a PublishGroups, bool);

impl Drop for WriterGone<'_> {
    fn drop(&mut self) {
        if !self.1 {
            let mut st = self.0.lock();
            st.writing = false;
            st.pending.clear();
        }
    }
}

impl Store {
    /// Publish `messages` in the next group (see the module documentation); retried on a
    /// transient error.
    pub(super) async fn publish_grouped(&self, messages: Vec<Envelope>) -> Result<(), QueueError> {
        let (done, answer) = oneshot::channel();
        let start = {
            let mut st = self.publishes.lock();
            st.pending.push_back(Pending { messages, done });
            !std::mem::replace(&mut st.writing, true)
        };
        if start {
            tokio::spawn(write_groups(
                self.publishes.clone(),
                self.write.clone(),
                self.notifier.clone(),
            ));
        }
        match answer.await {
            Ok(result) => result.map_err(queue_err("publish")),
            Err(_) => Err(QueueError::backend(
                "publish",
                std::io::Error::other(
                    "the task writing published messages ended before it committed them",
                ),
            )),
        }
    }
}

/// The writer: takes groups until none is waiting.
async fn write_groups(groups: Arc<PublishGroups>, pool: Pool<Db>, notifier: Arc<Notifier>) {
    let mut turn = WriterGone(&groups, false);
    while let Some(group) = groups.next_group() {
        let together: Vec<Envelope> = group
            .iter()
            .flat_map(|p| p.messages.iter().cloned())
            .collect();
        let result = publish_retrying(&pool, &together, &notifier).await;
        if result.is_ok() {
            super::queue::wake_topics(&notifier, together.iter().map(|m| m.topic));
        }
        match result {
            Ok(()) => {
                for p in group {
                    let _ = p.done.send(Ok(()));
                }
            }
            Err(e) if group.len() == 1 => {
                if let Some(p) = group.into_iter().next() {
                    let _ = p.done.send(Err(e));
                }
            }
            Err(e) => {
                tracing::debug!(
                    error = %e,
                    publishes = group.len(),
                    "a group of publishes failed; writing each on its own"
                );
                for p in group {
                    let result = publish_retrying(&pool, &p.messages, &notifier).await;
                    if result.is_ok() {
                        super::queue::wake_topics(&notifier, p.messages.iter().map(|m| m.topic));
                    }
                    let _ = p.done.send(result);
                }
            }
        }
    }
    turn.1 = true;
}

/// One transaction inserting `messages`, retried on a transient error.
async fn publish_retrying(
    pool: &Pool<Db>,
    messages: &[Envelope],
    notifier: &Notifier,
) -> Result<(), sqlx::Error> {
    let mut attempt = 0;
    loop {
        match publish_once(pool, messages, notifier).await {
            Ok(()) => return Ok(()),
            Err(e) if attempt < RETRIES && is_transient(&e) => {
                attempt += 1;
                backoff(attempt).await;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn publish_once(
    pool: &Pool<Db>,
    messages: &[Envelope],
    notifier: &Notifier,
) -> Result<(), sqlx::Error> {
    if FLAVOR == crate::common::Flavor::Sqlite {
        let mut qb = Qb::new("BEGIN IMMEDIATE; ");
        if push_publish(&mut qb, messages).is_some() {
            return write_at_once(pool, qb).await.map(|_| ());
        }
    }
    if FLAVOR == crate::common::Flavor::Postgres
        && let Some(mut qb) = pg_publish_statement(messages, &notifier.echo_mark(), None)
    {
        // One statement: its own transaction.
        return qb.build().execute(pool).await.map(|_| ());
    }
    if FLAVOR == crate::common::Flavor::MySql
        && let Some(sql) = text_publish(messages, None)
    {
        // One round trip for the transaction.
        return RawTx::acquire(pool)
            .await?
            .commit_text(sql)
            .await
            .map(|_| ());
    }
    let mut tx = begin_write(pool).await?;
    publish_in(&mut tx, messages, notifier).await?;
    tx.commit().await
}
