//! Broadcast topics (every subscriber sees every message): a table read by position, with gap
//! handling for rows committed out of order.

use super::*;

/// How long a PostgreSQL/MySQL subscriber re-reads recent offsets: ids come from a sequence, and a
/// transaction that took a lower id may commit after one that took a higher id (a busy executor unit
/// of work can take seconds). Rows committed later than this after a higher id are missed, which is
/// why kill signals are also repeated by the executor.
const GAP_WINDOW: Duration = Duration::from_secs(5);
const BROADCAST_PAGE: usize = 1000;
/// How often a PostgreSQL/MySQL subscriber counts the rows of its gap window (see `fetch`).
const GAP_CHECK: Duration = Duration::from_millis(50);

pub(super) struct Broadcast {
    pub(super) pool: Pool<Db>,
    pub(super) notifier: Arc<Notifier>,
    pub(super) topic: Topic,
    /// Every row at or below this offset has been seen (or given up on).
    pub(super) floor: i64,
    /// The highest offset delivered (PostgreSQL/MySQL; SQLite keeps `floor` only).
    pub(super) high: i64,
    /// When the gap window was last counted.
    pub(super) last_gap_check: Instant,
    /// Offsets above `floor` already delivered.
    pub(super) delivered: BTreeSet<i64>,
    /// When each offset above `floor` was delivered.
    pub(super) window: VecDeque<(Instant, i64)>,
    pub(super) buffer: VecDeque<Envelope>,
    pub(super) last_fetch: Instant,
    pub(super) delay: Duration,
    /// The topic's in-process generation ([`Notifier::generation`](crate::common::Notifier)) read
    /// before the last fetch, which read every row there was; `None` after a poll timed out.
    pub(super) fetched_at: Option<u64>,
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
            let generation = notifier.generation(self.topic);
            if self.fetched_at == Some(generation) && !lagged {
                // Nothing was published on the topic in this process since a fetch that read
                // everything (a fetch right after one that found rows was an empty read per
                // message): wait for a wake-up, or the poll (rows of other processes).
                let woken = wakeups.wait(self.delay).await;
                self.delay = if woken {
                    POLL_MIN
                } else {
                    self.fetched_at = None;
                    (self.delay * 2).min(POLL_MAX)
                };
                continue;
            }
            match self.fetch().await {
                Ok(_) if lagged => return Some(Err(QueueError::Lagged { missed: 0 })),
                Ok(n) => {
                    self.fetched_at = Some(generation);
                    if n > 0 {
                        self.delay = POLL_MIN;
                    }
                }
                Err(sqlx::Error::PoolClosed) => return None,
                Err(e) => return Some(Err(queue_err("subscribe")(e))),
            }
        }
    }

    /// Read new rows into the buffer; returns how many.
    ///
    /// PostgreSQL/MySQL: rows above the highest offset delivered are read with their payloads;
    /// rows committed late below it (a gap) are looked for by counting the rows of the gap window
    /// (an index-only count, at most every [`GAP_CHECK`]) and read only when the count shows more
    /// rows than were delivered there. Reading the whole window each time instead cost hundreds
    /// of rows per fetch on a busy topic (the liveness topic under load).
    async fn fetch(&mut self) -> Result<usize, sqlx::Error> {
        self.last_fetch = Instant::now();
        if FLAVOR == crate::common::Flavor::Sqlite {
            // One writer: rows commit in offset order, so there are no gaps to look back for.
            let (count, high) = self.read(self.floor, None).await?;
            self.floor = high;
            return Ok(count);
        }
        while let Some((at, id)) = self.window.front().copied() {
            if at.elapsed() < GAP_WINDOW {
                break;
            }
            self.floor = self.floor.max(id);
            self.window.pop_front();
        }
        self.delivered = self.delivered.split_off(&(self.floor + 1));
        let high = self.high.max(self.floor);
        let (mut count, new_high) = self.read(high, None).await?;
        self.high = new_high;
        if self.floor < high && self.last_gap_check.elapsed() >= GAP_CHECK {
            self.last_gap_check = Instant::now();
            let (stored,): (i64,) = Qb::new("SELECT COUNT(*) FROM queue_broadcast")
                .push(FLAVOR.force_index("queue_broadcast_topic"))
                .push(" WHERE topic = ")
                .push_bind(self.topic.as_str())
                .push(" AND id > ")
                .push_bind(self.floor)
                .push(" AND id <= ")
                .push_bind(high)
                .build_query_as()
                .fetch_one(&self.pool)
                .await?;
            let delivered = self.delivered.range(..=high).count();
            if usize::try_from(stored).unwrap_or(0) > delivered {
                count += self.read(self.floor, Some(high)).await?.0;
            }
        }
        Ok(count)
    }

    /// Read the rows above offset `after` (up to `up_to`), page by page, into the buffer, skipping
    /// those already delivered; returns how many were buffered and the highest offset read (at
    /// least `after`).
    async fn read(&mut self, after: i64, up_to: Option<i64>) -> Result<(usize, i64), sqlx::Error> {
        let windowed = FLAVOR != crate::common::Flavor::Sqlite;
        let mut page_floor = after;
        let mut count = 0;
        loop {
            let mut qb = Qb::new("SELECT id, msg_key, payload FROM queue_broadcast");
            qb.push(FLAVOR.force_index("queue_broadcast_topic"))
                .push(" WHERE topic = ")
                .push_bind(self.topic.as_str())
                .push(" AND id > ")
                .push_bind(page_floor);
            if let Some(up_to) = up_to {
                qb.push(" AND id <= ").push_bind(up_to);
            }
            qb.push(" ORDER BY id");
            push_limit(&mut qb, BROADCAST_PAGE as i64);
            let rows = qb.build().fetch_all(&self.pool).await?;
            let n = rows.len();
            for row in rows {
                let id: i64 = get(&row, "id")?;
                page_floor = page_floor.max(id);
                if windowed {
                    if !self.delivered.insert(id) {
                        continue;
                    }
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
        Ok((count, page_floor))
    }
}
