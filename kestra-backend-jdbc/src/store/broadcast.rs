//! Broadcast topics (every subscriber sees every message): a table read by position, with gap
//! handling for rows committed out of order.

use super::*;

/// How long a PostgreSQL/MySQL subscriber re-reads recent offsets: ids come from a sequence, and a
/// transaction that took a lower id may commit after one that took a higher id (a busy executor unit
/// of work can take seconds). Rows committed later than this after a higher id are missed, which is
/// why kill signals are also repeated by the executor.
const GAP_WINDOW: Duration = Duration::from_secs(5);
const BROADCAST_PAGE: usize = 1000;

pub(super) struct Broadcast {
    pub(super) pool: Pool<Db>,
    pub(super) notifier: Arc<Notifier>,
    pub(super) topic: Topic,
    /// Every row at or below this offset has been seen (or given up on).
    pub(super) floor: i64,
    /// Offsets above `floor` already delivered.
    pub(super) delivered: BTreeSet<i64>,
    /// When each offset above `floor` was delivered.
    pub(super) window: VecDeque<(Instant, i64)>,
    pub(super) buffer: VecDeque<Envelope>,
    pub(super) last_fetch: Instant,
    pub(super) delay: Duration,
}

impl Broadcast {
    pub(super) async fn next(&mut self) -> Option<Result<Envelope, QueueError>> {
        loop {
            if let Some(e) = self.buffer.pop_front() {
                return Some(Ok(e));
            }
            let lagged = self.last_fetch.elapsed() > BROADCAST_RETENTION;
            let notifier = self.notifier.clone();
            let wakeups = Wakeups::arm(&notifier, &[self.topic]);
            match self.fetch().await {
                Ok(_) if lagged => return Some(Err(QueueError::Lagged { missed: 0 })),
                Ok(0) => {}
                Ok(_) => {
                    self.delay = POLL_MIN;
                    continue;
                }
                Err(sqlx::Error::PoolClosed) => return None,
                Err(e) => return Some(Err(queue_err("subscribe")(e))),
            }
            let woken = wakeups.wait(self.delay).await;
            self.delay = if woken {
                POLL_MIN
            } else {
                (self.delay * 2).min(POLL_MAX)
            };
        }
    }

    /// Read new rows into the buffer; returns how many.
    async fn fetch(&mut self) -> Result<usize, sqlx::Error> {
        self.last_fetch = Instant::now();
        let windowed = FLAVOR != crate::common::Flavor::Sqlite;
        if windowed {
            while let Some((at, id)) = self.window.front().copied() {
                if at.elapsed() < GAP_WINDOW {
                    break;
                }
                self.floor = self.floor.max(id);
                self.window.pop_front();
            }
            self.delivered = self.delivered.split_off(&(self.floor + 1));
        }
        let mut page_floor = self.floor;
        let mut count = 0;
        loop {
            let rows = Qb::new("SELECT id, msg_key, payload FROM queue_broadcast WHERE topic = ")
                .push_bind(self.topic.as_str())
                .push(" AND id > ")
                .push_bind(page_floor)
                .push(" ORDER BY id LIMIT ")
                .push_bind(BROADCAST_PAGE as i64)
                .build()
                .fetch_all(&self.pool)
                .await?;
            let n = rows.len();
            for row in rows {
                let id: i64 = get(&row, "id")?;
                page_floor = page_floor.max(id);
                if windowed && !self.delivered.insert(id) {
                    continue;
                }
                if windowed {
                    self.window.push_back((Instant::now(), id));
                }
                let key: String = get(&row, "msg_key")?;
                let payload: Vec<u8> = get(&row, "payload")?;
                self.buffer
                    .push_back(Envelope::new(self.topic, key, payload));
                count += 1;
            }
            if n < BROADCAST_PAGE {
                break;
            }
        }
        if !windowed {
            self.floor = page_floor;
        }
        Ok(count)
    }
}
