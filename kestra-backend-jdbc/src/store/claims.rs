//! The queue's SQL: publishing rows, claiming them (competing consumers, per-key exclusion,
//! leases), acknowledging, extending leases and dead-lettering, and the wake-ups and polling that
//! tell a waiting receive when to look again.

use super::*;

/// The queue rows of `messages`: one per consumer group of its topic.
fn queue_rows(messages: &[Envelope]) -> Vec<(&Envelope, ConsumerGroup)> {
    messages
        .iter()
        .flat_map(|m| m.topic.groups().iter().map(move |g| (m, *g)))
        .collect()
}

/// The messages of `messages` that also get a broadcast row ([`Topic::broadcast`]).
fn broadcast_rows(messages: &[Envelope]) -> Vec<&Envelope> {
    messages.iter().filter(|m| m.topic.broadcast()).collect()
}

fn push_queue_insert<S: Sql>(qb: &mut S, rows: &[(&Envelope, ConsumerGroup)], now: i64) {
    qb.sql(
        "INSERT INTO queue (topic, group_name, msg_key, payload, visible_at, created_at) VALUES ",
    );
    for (i, (m, g)) in rows.iter().enumerate() {
        qb.sql(if i == 0 { "(" } else { ", (" })
            .text(m.topic.as_str())
            .sql(", ")
            .text(g.as_str())
            .sql(", ")
            .text(&m.key)
            .sql(", ")
            .bytes(&m.payload)
            .sql(", ")
            .int(m.deliver_at.map(to_ms).unwrap_or(now))
            .sql(", ")
            .int(now)
            .sql(")");
    }
}

fn push_broadcast_insert<S: Sql>(qb: &mut S, rows: &[&Envelope], now: i64) {
    qb.sql("INSERT INTO queue_broadcast (topic, msg_key, payload, created_at) VALUES ");
    for (i, m) in rows.iter().enumerate() {
        qb.sql(if i == 0 { "(" } else { ", (" })
            .text(m.topic.as_str())
            .sql(", ")
            .text(&m.key)
            .sql(", ")
            .bytes(&m.payload)
            .sql(", ")
            .int(now)
            .sql(")");
    }
}

/// A publish's queue rows (message, group), broadcast rows and write time.
type PublishRows<'m> = (Vec<(&'m Envelope, ConsumerGroup)>, Vec<&'m Envelope>, i64);

/// The queue rows and broadcast rows of `messages` and the time they are written, when each fits
/// in one statement ([`CHUNK`] rows); `None` otherwise.
fn publish_rows(messages: &[Envelope]) -> Option<PublishRows<'_>> {
    let rows = queue_rows(messages);
    let broadcast = broadcast_rows(messages);
    (rows.len() <= CHUNK && broadcast.len() <= CHUNK).then(|| (rows, broadcast, now_ms()))
}

/// SQLite: push the statements that insert the rows of `messages` (as [`publish_in`]) onto `qb`,
/// each ended by `; ` - sqlx runs each statement of a string in turn, binding the arguments in
/// order, so they go to the connection's thread in one call (every call is a round trip there,
/// two thread wake-ups). Returns how many rows they insert, or `None` (nothing pushed) when the
/// rows do not fit in one statement each: [`publish_in`] them.
pub(super) fn push_publish(qb: &mut Qb, messages: &[Envelope]) -> Option<u64> {
    let (rows, broadcast, now) = publish_rows(messages)?;
    if !rows.is_empty() {
        push_queue_insert(qb, &rows, now);
        qb.push("; ");
    }
    if !broadcast.is_empty() {
        push_broadcast_insert(qb, &broadcast, now);
        qb.push("; ");
    }
    Some((rows.len() + broadcast.len()) as u64)
}

/// PostgreSQL: data-modifying statements joined into one by `WITH` parts, each run to
/// completion whether or not the outer query reads it, in one snapshot (parts must not write the
/// same rows). Sent on its own (autocommit) the statement is its own transaction: one round trip
/// where the separate statements cost one each, plus `BEGIN` and `COMMIT`.
pub(super) struct PgWith {
    qb: Qb,
    parts: usize,
    /// The parts (with a `RETURNING`) whose rows the statement counts, one column each.
    counted: Vec<String>,
}

impl PgWith {
    pub(super) fn new() -> PgWith {
        PgWith {
            qb: Qb::new("WITH "),
            parts: 0,
            counted: Vec::new(),
        }
    }

    /// Open part `name`: push its one statement onto the builder returned.
    pub(super) fn part(&mut self, name: &str) -> &mut Qb {
        if self.parts > 0 {
            self.qb.push("), ");
        }
        self.parts += 1;
        self.qb.push(format!("{name} AS ("));
        &mut self.qb
    }

    /// Open part `name`, whose statement ends with a `RETURNING`: the statement reads how many
    /// rows it returned, in column `name`.
    pub(super) fn counted_part(&mut self, name: &str) -> &mut Qb {
        self.counted.push(name.to_string());
        self.part(name)
    }

    /// The statement (`None` without parts): it reads one row, a column per counted part.
    pub(super) fn finish(mut self) -> Option<Qb> {
        if self.parts == 0 {
            return None;
        }
        let columns: Vec<String> = self
            .counted
            .iter()
            .map(|p| format!("(SELECT COUNT(*) FROM {p}) AS {p}"))
            .collect();
        let columns = if columns.is_empty() {
            "1 AS done".to_string()
        } else {
            columns.join(", ")
        };
        self.qb.push(format!(") SELECT {columns}"));
        Some(self.qb)
    }
}

/// PostgreSQL: push the inserts of [`publish_in`] (their `NOTIFY`s, marked `mark`, included) onto
/// `with` as parts `q` and `b`; `false` (nothing pushed) when the rows do not fit one statement
/// each ([`CHUNK`]).
pub(super) fn push_publish_parts(with: &mut PgWith, messages: &[Envelope], mark: &str) -> bool {
    let Some((rows, broadcast, now)) = publish_rows(messages) else {
        return false;
    };
    // Identical notifications of a transaction are delivered once: a topic with queue and
    // broadcast rows is announced once. The parts are counted so that their `RETURNING` runs.
    let notify = |qb: &mut Qb| {
        qb.push(" RETURNING pg_notify('kestra_queue', topic || ")
            .push_bind(mark.to_string())
            .push(")");
    };
    if !rows.is_empty() {
        let qb = with.counted_part("q");
        push_queue_insert(qb, &rows, now);
        notify(qb);
    }
    if !broadcast.is_empty() {
        let qb = with.counted_part("b");
        push_broadcast_insert(qb, &broadcast, now);
        notify(qb);
    }
    true
}

/// PostgreSQL: one statement that publishes `messages` as [`publish_in`] does and, with `ack`,
/// deletes those deliveries of the group as [`ack_in`] does ([`PgWith`]). `None` when there is
/// nothing to write or the rows do not fit in one statement ([`CHUNK`] per part).
pub(super) fn pg_publish_statement(
    messages: &[Envelope],
    mark: &str,
    ack: Option<(ConsumerGroup, &[DeliveryTag])>,
) -> Option<Qb> {
    let acked = ack.map(|(_, tags)| ids_by_topic(tags)).unwrap_or_default();
    if acked.values().any(|ids| ids.len() > CHUNK) {
        return None;
    }
    let mut with = PgWith::new();
    if !push_publish_parts(&mut with, messages, mark) {
        return None;
    }
    if let Some((group, _)) = ack {
        for (i, (topic, ids)) in acked.iter().enumerate() {
            push_ack_delete(with.part(&format!("d{i}")), group, *topic, ids);
        }
    }
    with.finish()
}

/// SQLite: the write connection in a transaction that sqlx does not know of - begun by a
/// `BEGIN IMMEDIATE` at the start of a call of several statements, ended by a `COMMIT` at the end
/// of another - so that beginning and committing cost no call of their own to the connection's
/// thread (sqlx's transactions take one each). MySQL: a connection of the pool in such a
/// transaction, begun by a `BEGIN` of its own or at the start of a text query and ended by a
/// `COMMIT` at the end of one ([`Text`], [`RawTx::commit_text`]): the writes before the commit
/// go with it in one round trip.
///
/// If a statement fails, the rest of its call (a commit included) is not run and the transaction
/// is rolled back here; if that fails too, or the transaction is dropped before it ended (a
/// cancelled future, an early return), the connection is closed instead of going back to the
/// pool, which rolls the transaction back: the pool never hands out a connection in the middle
/// of a transaction.
pub(super) struct RawTx(Option<sqlx::pool::PoolConnection<Db>>);

impl Drop for RawTx {
    fn drop(&mut self) {
        if let Some(conn) = self.0.as_mut() {
            conn.close_on_drop();
        }
    }
}

impl RawTx {
    /// Take a connection of `pool` (SQLite: its only one, the single writer). The transaction
    /// begins with the first call, which starts with `BEGIN IMMEDIATE; ` (MySQL: `BEGIN`).
    pub(super) async fn acquire(pool: &Pool<Db>) -> Result<RawTx, sqlx::Error> {
        Ok(RawTx(Some(pool.acquire().await?)))
    }

    /// The connection, for statements that are not pushed onto one call.
    pub(super) fn conn(&mut self) -> Result<&mut Conn, sqlx::Error> {
        match self.0.as_mut() {
            Some(conn) => Ok(&mut **conn),
            None => Err(sqlx::Error::PoolClosed),
        }
    }

    /// Run the statements of `qb` and return the rows they read; a failed one rolls back.
    pub(super) async fn fetch(&mut self, qb: &mut Qb) -> Result<Vec<DbRow>, sqlx::Error> {
        let result = qb.build().fetch_all(self.conn()?).await;
        if result.is_err() {
            self.end("ROLLBACK").await;
        }
        result
    }

    /// Run the statements of `qb`; a failed one rolls back.
    pub(super) async fn execute(&mut self, qb: &mut Qb) -> Result<(), sqlx::Error> {
        let result = qb.build().execute(self.conn()?).await;
        if result.is_err() {
            self.end("ROLLBACK").await;
        }
        result.map(|_| ())
    }

    /// Run the statements of `qb` and `COMMIT`; returns the rows they changed. A failed one
    /// rolls back.
    pub(super) async fn commit(mut self, mut qb: Qb) -> Result<u64, sqlx::Error> {
        qb.push("COMMIT");
        let result = qb.build().execute(self.conn()?).await;
        self.ended(result.map(|done| done.rows_affected())).await
    }

    /// MySQL: run the text `sql` (several statements, values inline: [`Text`]), which begins and
    /// commits the transaction, in one round trip; returns the rows they changed. A failed
    /// statement stops the rest, the commit included: the transaction is rolled back here (the
    /// connection closed if that fails too), as for [`RawTx::commit`].
    pub(super) async fn commit_text(mut self, sql: String) -> Result<u64, sqlx::Error> {
        let result = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(self.conn()?)
            .await;
        self.ended(result.map(|done| done.rows_affected())).await
    }

    /// After the call that committed: the connection back to the pool, usable - or, if the call
    /// failed, the transaction rolled back (see [`RawTx::end`]).
    async fn ended(&mut self, result: Result<u64, sqlx::Error>) -> Result<u64, sqlx::Error> {
        match result {
            Ok(n) => {
                drop(self.0.take());
                Ok(n)
            }
            Err(e) => {
                self.end("ROLLBACK").await;
                Err(e)
            }
        }
    }

    /// Roll the transaction back.
    pub(super) async fn rollback(mut self) {
        self.end("ROLLBACK").await;
    }

    /// Run `statement` (which ends the transaction); the connection goes back to the pool if it
    /// succeeded, and is closed when dropped otherwise.
    async fn end(&mut self, statement: &'static str) {
        let Ok(conn) = self.conn() else { return };
        if sqlx::raw_sql(statement).execute(conn).await.is_ok() {
            drop(self.0.take());
        }
    }
}

/// SQLite: run the statements of `qb` - which starts with `BEGIN IMMEDIATE; ` and ends each of
/// its statements with `; ` - and `COMMIT`, in one call to the connection's thread (see
/// [`RawTx`]). Returns the rows they changed.
pub(crate) async fn write_at_once(pool: &Pool<Db>, qb: Qb) -> Result<u64, sqlx::Error> {
    RawTx::acquire(pool).await?.commit(qb).await
}

/// `DELETE` of the acknowledged rows `ids` of `topic` for `group`.
fn push_ack_delete<S: Sql>(qb: &mut S, group: ConsumerGroup, topic: Topic, ids: &[i64]) {
    qb.sql("DELETE FROM queue WHERE group_name = ")
        .text(group.as_str())
        .sql(" AND topic = ")
        .text(topic.as_str())
        .sql(" AND id IN ")
        .ints(ids);
}

/// MySQL: the transaction that inserts the rows of `messages` (as [`publish_in`]) and, with
/// `ack`, deletes the acknowledged rows (as [`ack_in`]), in text - `BEGIN; ...; COMMIT`, one
/// round trip ([`RawTx::commit_text`]). `None` when it does not fit ([`push_text_publish`]).
pub(super) fn text_publish(
    messages: &[Envelope],
    ack: Option<(ConsumerGroup, &[DeliveryTag])>,
) -> Option<String> {
    let mut text = Text("BEGIN; ".to_string());
    if !push_text_publish(&mut text, messages, ack) {
        return None;
    }
    text.sql("COMMIT");
    Some(text.0)
}

/// MySQL: push onto `text` the statements of [`text_publish`] between its `BEGIN` and `COMMIT`,
/// each ended by `; `. False (nothing pushed) when the rows do not fit in one statement per table
/// and topic ([`CHUNK`]) or the text would grow past [`TEXT_MAX`].
pub(super) fn push_text_publish(
    text: &mut Text,
    messages: &[Envelope],
    ack: Option<(ConsumerGroup, &[DeliveryTag])>,
) -> bool {
    let Some((rows, broadcast, now)) = publish_rows(messages) else {
        return false;
    };
    let by_topic = ack.map(|(group, tags)| (group, ids_by_topic(tags)));
    if by_topic
        .as_ref()
        .is_some_and(|(_, by_topic)| by_topic.values().any(|ids| ids.len() > CHUNK))
    {
        return false;
    }
    let size: usize = messages
        .iter()
        .map(|m| m.payload.len() + m.key.len() + 64)
        .sum();
    if text.0.len() + size * 3 > TEXT_MAX {
        return false;
    }
    if !rows.is_empty() {
        push_queue_insert(text, &rows, now);
        text.sql("; ");
    }
    if !broadcast.is_empty() {
        push_broadcast_insert(text, &broadcast, now);
        text.sql("; ");
    }
    if let Some((group, by_topic)) = by_topic {
        for (topic, ids) in &by_topic {
            push_ack_delete(text, group, *topic, ids);
            text.sql("; ");
        }
    }
    true
}

/// SQLite: push the statements that delete the acknowledged rows of `tags` (as [`ack_in`]) onto
/// `qb`, each ended by `; `. False (nothing pushed) when they do not fit in one statement per
/// topic.
pub(super) fn push_ack(qb: &mut Qb, group: ConsumerGroup, tags: &[DeliveryTag]) -> bool {
    let by_topic = ids_by_topic(tags);
    if by_topic.values().any(|ids| ids.len() > CHUNK) {
        return false;
    }
    for (topic, ids) in &by_topic {
        push_ack_delete(qb, group, *topic, ids);
        qb.push("; ");
    }
    true
}

/// Insert the rows of `messages`: one queue row per consumer group of its topic, one broadcast row
/// if its topic is [`Topic::broadcast`], and (PostgreSQL) a `NOTIFY` per topic marked as
/// `notifier`'s ([`Notifier::echo_mark`]), delivered when the transaction commits: sent by the
/// queue insert itself (`RETURNING pg_notify(...)`; PostgreSQL delivers identical notifications
/// of a transaction once), and by one statement for topics without queue rows.
pub(super) async fn publish_in(
    conn: &mut Conn,
    messages: &[Envelope],
    notifier: &Notifier,
) -> Result<(), sqlx::Error> {
    if messages.is_empty() {
        return Ok(());
    }
    let mut together = Qb::new("");
    if FLAVOR == crate::common::Flavor::Sqlite && push_publish(&mut together, messages).is_some() {
        together.build().execute(&mut *conn).await?;
        return Ok(());
    }
    let postgres = FLAVOR == crate::common::Flavor::Postgres;
    let mark = notifier.echo_mark();
    if postgres && let Some(mut qb) = pg_publish_statement(messages, &mark, None) {
        qb.build().execute(&mut *conn).await?;
        return Ok(());
    }
    let now = now_ms();
    let rows = queue_rows(messages);
    for chunk in rows.chunks(CHUNK) {
        let mut qb = Qb::new("");
        push_queue_insert(&mut qb, chunk, now);
        if postgres {
            qb.push(" RETURNING pg_notify('kestra_queue', topic || ")
                .push_bind(mark.clone())
                .push(")");
        }
        qb.build().execute(&mut *conn).await?;
    }
    for chunk in broadcast_rows(messages).chunks(CHUNK) {
        let mut qb = Qb::new("");
        push_broadcast_insert(&mut qb, chunk, now);
        qb.build().execute(&mut *conn).await?;
    }
    if postgres {
        let queued: BTreeSet<Topic> = rows.iter().map(|(m, _)| m.topic).collect();
        let rest: BTreeSet<Topic> = messages
            .iter()
            .map(|m| m.topic)
            .filter(|t| !queued.contains(t))
            .collect();
        if !rest.is_empty() {
            let mut qb = Qb::new("SELECT pg_notify('kestra_queue', v.t || ");
            qb.push_bind(mark).push(") FROM (");
            qb.push_values(rest, |mut b, t| {
                b.push_bind(t.as_str());
            });
            qb.push(") AS v(t)");
            qb.build().execute(&mut *conn).await?;
        }
    }
    Ok(())
}

/// Set a queue row aside as a dead letter (with what is known of it) and delete it.
#[allow(clippy::too_many_arguments)]
pub(super) async fn dead_letter_in(
    conn: &mut Conn,
    id: i64,
    topic: &str,
    group: &str,
    key: Option<&str>,
    payload: Option<&[u8]>,
    reason: &str,
) -> Result<(), sqlx::Error> {
    Qb::new("INSERT INTO queue_dead_letter (original_id, topic, group_name, msg_key, payload, reason, created_at) VALUES (")
        .push_bind(id)
        .push(", ")
        .push_bind(topic.to_string())
        .push(", ")
        .push_bind(group.to_string())
        .push(", ")
        .push_bind(key.map(str::to_string))
        .push(", ")
        .push_bind(payload.map(<[u8]>::to_vec))
        .push(", ")
        .push_bind(reason.to_string())
        .push(", ")
        .push_bind(now_ms())
        .push(")")
        .build()
        .execute(&mut *conn)
        .await?;
    Qb::new("DELETE FROM queue WHERE id = ")
        .push_bind(id)
        .build()
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// A claimable row read by the claim query.
struct Candidate {
    id: i64,
    topic: Topic,
    key: String,
    payload: Vec<u8>,
    attempts: i32,
    /// `visible_at`: when it became deliverable (ms).
    due: i64,
}

/// The keys of `topics` with a live claim of `group` (at most `BLOCKED_KEYS_MAX`).
#[derive(Default)]
struct Blocked {
    /// (topic, key).
    keys: HashSet<(String, String)>,
    /// More than `BLOCKED_KEYS_MAX`: not listed in a claim (the ordering check still applies).
    too_many: bool,
}

/// The keys of `topics` with a live claim of `group`, for every topic at once.
async fn blocked_keys(
    conn: &mut Conn,
    group: ConsumerGroup,
    topics: &[Topic],
    now: i64,
) -> Result<Blocked, sqlx::Error> {
    let mut query = Qb::new("SELECT DISTINCT topic, msg_key FROM queue WHERE topic IN ");
    push_in(&mut query, topics.iter().map(|t| t.as_str().to_string()));
    query
        .push(" AND group_name = ")
        .push_bind(group.as_str())
        .push(" AND claimed_until > ")
        .push_bind(now);
    push_limit(&mut query, (BLOCKED_KEYS_MAX + 1) as i64);
    let mut blocked = Blocked::default();
    for row in query.build().fetch_all(&mut *conn).await? {
        let topic: String = get(&row, "topic")?;
        let key: String = get(&row, "msg_key")?;
        blocked.keys.insert((topic, key));
    }
    blocked.too_many = blocked.keys.len() > BLOCKED_KEYS_MAX;
    Ok(blocked)
}

/// Push the condition of a due, unclaimed row `q` of `topic` for `group` at `now`.
fn push_due(qb: &mut Qb, topic: Topic, group: ConsumerGroup, now: i64) {
    qb.push("q.topic = ")
        .push_bind(topic.as_str())
        .push(" AND q.group_name = ")
        .push_bind(group.as_str())
        .push(" AND q.visible_at <= ")
        .push_bind(now)
        .push(" AND (q.claimed_until IS NULL OR q.claimed_until <= ")
        .push_bind(now)
        .push(")");
}

/// Up to `limit` due, unclaimed rows of each topic of `order` for `group`, leaving out the keys
/// `blocked` lists, locked where there are locks: one statement, a branch per topic (an indexed
/// scan in id order, `SKIP LOCKED` where there are locks) joined by `UNION ALL`. A unit of the
/// executor claims seven topics, most of them empty at any moment: one statement instead of seven.
async fn due_rows(
    conn: &mut Conn,
    group: ConsumerGroup,
    order: &[Topic],
    limit: i64,
    now: i64,
    blocked: &Blocked,
) -> Result<Vec<DbRow>, sqlx::Error> {
    // One topic: a plain statement. Several: one scan per topic (each with its own order and
    // limit) in a `UNION ALL`, each scan parenthesized on MySQL and a derived table on PostgreSQL
    // (which refuses `FOR UPDATE` in a `UNION`). MariaDB materialises a derived table in a
    // temporary table: 0.4 ms a scan where the plain statement takes 0.17 ms (500 runs of each
    // through the `mariadb` client on an empty queue), and a claim is several per task.
    let several = order.len() > 1;
    let mysql = FLAVOR == crate::common::Flavor::MySql;
    let mut qb = Qb::new("");
    for (i, topic) in order.iter().enumerate() {
        let keys: Vec<String> = if blocked.too_many {
            Vec::new()
        } else {
            blocked
                .keys
                .iter()
                .filter(|(t, _)| t == topic.as_str())
                .map(|(_, k)| k.clone())
                .collect()
        };
        if i > 0 {
            qb.push(" UNION ALL ");
        }
        if several {
            qb.push(if mysql { "(" } else { "SELECT * FROM (" });
        }
        qb.push("SELECT q.id, q.topic, q.msg_key, q.payload, q.attempts, q.visible_at");
        if FLAVOR == crate::common::Flavor::Postgres {
            // `prev`: the id of the due row of the same key just before this one, claimed or
            // not, in the statement's committed state (one step back in the `queue_key` index,
            // not locked) - the per-key order check ([`in_key_order`]) without a statement of
            // its own. Not on MySQL: MariaDB reads every row of the key in such a subquery
            // (0.6 s for a claim of 500 rows with 800 queued per key, against 13 ms without).
            qb.push(
                ", (SELECT o.id FROM queue o WHERE o.topic = q.topic \
                 AND o.group_name = q.group_name AND o.msg_key = q.msg_key AND o.id < q.id \
                 AND o.visible_at <= ",
            )
            .push_bind(now)
            .push(" ORDER BY o.id DESC LIMIT 1) AS prev");
        }
        if mysql {
            // `older`: whether any row of the same key, due or not, claimed or not, is older
            // than this one (committed state, not locked: MariaDB's subqueries of a locking read
            // do not lock) - the key's first row in the `queue_key` index is not this one. One
            // index entry read, whatever the key's length: the `prev` of PostgreSQL reads every
            // row of the key on MariaDB, an `EXISTS (... o.id < q.id)` every newer one (and,
            // planned on the statistics of a young table, every older row of the topic: 100 ms
            // a claim in (b) of the engine benchmark). A batch none of whose rows has an older
            // one keeps per-key order as it is ([`key_order`] needs no statement then).
            qb.push(", (SELECT o.id FROM queue o")
                .push(FLAVOR.force_index("queue_key"))
                .push(
                    " WHERE o.topic = q.topic AND o.group_name = q.group_name \
                     AND o.msg_key = q.msg_key ORDER BY o.id LIMIT 1) < q.id AS older",
                );
        }
        qb.push(" FROM queue q")
            .push(FLAVOR.force_index("queue_due"))
            .push(" WHERE ");
        push_due(&mut qb, *topic, group, now);
        if !keys.is_empty() {
            qb.push(" AND q.msg_key NOT IN ");
            push_in(&mut qb, keys);
        }
        qb.push(" ORDER BY q.id");
        push_limit(&mut qb, limit);
        qb.push(FLAVOR.skip_locked("q"));
        if several {
            qb.push(if mysql {
                ")".to_string()
            } else {
                format!(") b{i}")
            });
        }
    }
    qb.build().fetch_all(&mut *conn).await
}

/// The ids of the `rows` (read by [`due_rows`]) that keep per-key order when handed out together:
/// those whose every older due row of the same key (committed state, not locked) is one of
/// `rows`. Older rows claimed elsewhere, locked by another transaction (skipped by the scan) or
/// not read (past the limit) hold back their key's later rows. PostgreSQL: from the scan's
/// `prev` column ([`in_key_order`]); MySQL: when a row read has an older row of its key (the
/// scan's `older` column), one more statement reads the due rows of the keys up to the newest
/// row read; when none has, every row is the oldest of its key and all keep the order.
async fn key_order(
    conn: &mut Conn,
    group: ConsumerGroup,
    rows: &[DbRow],
    now: i64,
) -> Result<HashSet<i64>, sqlx::Error> {
    if FLAVOR == crate::common::Flavor::Postgres {
        return Ok(in_key_order(rows));
    }
    if FLAVOR == crate::common::Flavor::MySql
        && rows
            .iter()
            .all(|row| matches!(get::<i64>(row, "older"), Ok(0)))
    {
        return Ok(rows
            .iter()
            .filter_map(|row| get::<i64>(row, "id").ok())
            .collect());
    }
    let mut by_topic: BTreeMap<String, (BTreeSet<String>, i64)> = BTreeMap::new();
    let mut read: HashSet<i64> = HashSet::new();
    for row in rows {
        let (Ok(topic), Ok(key), Ok(id)) = (
            get::<String>(row, "topic"),
            get::<String>(row, "msg_key"),
            get::<i64>(row, "id"),
        ) else {
            continue;
        };
        read.insert(id);
        let entry = by_topic.entry(topic).or_default();
        entry.0.insert(key);
        entry.1 = entry.1.max(id);
    }
    let mut blocked: HashSet<(String, String)> = HashSet::new();
    let mut accepted: HashSet<i64> = HashSet::new();
    for (topic, (keys, newest)) in by_topic {
        let keys: Vec<String> = keys.into_iter().collect();
        for chunk in keys.chunks(CHUNK) {
            let mut qb = Qb::new("SELECT id, msg_key FROM queue WHERE topic = ");
            qb.push_bind(topic.clone())
                .push(" AND group_name = ")
                .push_bind(group.as_str())
                .push(" AND visible_at <= ")
                .push_bind(now)
                .push(" AND id <= ")
                .push_bind(newest)
                .push(" AND msg_key IN ");
            push_in(&mut qb, chunk.iter().cloned());
            qb.push(" ORDER BY id");
            for row in qb.build().fetch_all(&mut *conn).await? {
                let id: i64 = get(&row, "id")?;
                let slot = (topic.clone(), get::<String>(&row, "msg_key")?);
                if blocked.contains(&slot) {
                    continue;
                }
                if read.contains(&id) {
                    accepted.insert(id);
                } else {
                    blocked.insert(slot);
                }
            }
        }
    }
    Ok(accepted)
}

/// PostgreSQL's [`key_order`]: the rows in id order per key as long as each one's `prev` (the due
/// row of its key just before it) is the row before it here - none for the first.
/// Rows whose topic, key or `prev` cannot be read are not in it (the claim sets them aside).
fn in_key_order(rows: &[DbRow]) -> HashSet<i64> {
    keep_key_order(rows.iter().filter_map(|row| {
        let read = || -> Result<_, sqlx::Error> {
            let key: (String, String) = (get(row, "topic")?, get(row, "msg_key")?);
            Ok((
                key,
                get::<i64>(row, "id")?,
                get::<Option<i64>>(row, "prev")?,
            ))
        };
        read().ok()
    }))
}

/// [`in_key_order`] of rows read as `((topic, key), id, prev)`.
fn keep_key_order(
    rows: impl Iterator<Item = ((String, String), i64, Option<i64>)>,
) -> HashSet<i64> {
    type Key = (String, String);
    let mut by_key: HashMap<Key, Vec<(i64, Option<i64>)>> = HashMap::new();
    for (key, id, prev) in rows {
        by_key.entry(key).or_default().push((id, prev));
    }
    let mut accepted = HashSet::new();
    for mut ids in by_key.into_values() {
        ids.sort_unstable();
        let mut before = None;
        for (id, prev) in ids {
            if prev != before {
                break;
            }
            accepted.insert(id);
            before = Some(id);
        }
    }
    accepted
}

/// A queue row the claim cannot hand out (topic, key or payload unreadable): it is set aside as a
/// dead letter with what is known of it.
struct Unreadable {
    id: i64,
    topic: Option<String>,
    key: Option<String>,
    payload: Option<Vec<u8>>,
    reason: String,
}

/// Read a claimed row (`id, topic, msg_key, payload, attempts, visible_at`). A payload that is not
/// what its consumer expects is the consumer's to dead-letter; a row that cannot even be read
/// (e.g. a key that is not text, a topic this version does not know) is [`Unreadable`].
fn read_row(row: &DbRow) -> Result<Candidate, Unreadable> {
    let id: i64 = get(row, "id").unwrap_or(0);
    let topic: Option<String> = get(row, "topic").ok();
    let key: Option<String> = get(row, "msg_key").ok();
    let payload: Option<Vec<u8>> = get(row, "payload").ok();
    let attempts: i32 = get(row, "attempts").unwrap_or(0);
    let due: i64 = get(row, "visible_at").unwrap_or(0);
    match (topic.as_deref().map(str::parse::<Topic>), key, payload) {
        (Some(Ok(parsed)), Some(key), Some(payload)) => Ok(Candidate {
            id,
            topic: parsed,
            key,
            payload,
            attempts,
            due,
        }),
        (parsed, key, payload) => Err(Unreadable {
            id,
            reason: match parsed {
                Some(Err(e)) => e.to_string(),
                _ => "unreadable queue row (topic, key or payload of the wrong type)".to_string(),
            },
            topic,
            key,
            payload,
        }),
    }
}

/// Set an [`Unreadable`] row aside as a dead letter.
async fn set_aside(
    conn: &mut Conn,
    group: ConsumerGroup,
    row: Unreadable,
) -> Result<(), sqlx::Error> {
    tracing::warn!(id = row.id, reason = %row.reason, group = group.as_str(), "queue row set aside as a dead letter");
    dead_letter_in(
        conn,
        row.id,
        row.topic.as_deref().unwrap_or("?"),
        group.as_str(),
        row.key.as_deref(),
        row.payload.as_deref(),
        &row.reason,
    )
    .await
}

/// Claim up to `max` due rows of `topics` for `group` on `conn`: lock them (`FOR UPDATE SKIP
/// LOCKED`), keep only rows whose older due rows of the same key are claimed here too (per-key
/// ordering), set malformed rows aside as dead letters, and mark the rest claimed by `token` until
/// `now + lease`. PostgreSQL and MySQL: inside the caller's transaction. SQLite: one statement
/// ([`claim_sqlite`]), atomic by itself, so the caller needs no transaction for it.
///
/// Also says whether the claim took every row there was to take (SQLite, where the claim's read
/// is the whole truth, and PostgreSQL, where a row its scan skipped is locked by another
/// consumer's claim; always false on MySQL): no due row of the topics is left unclaimed
/// for this group.
///
/// `begin` (SQLite only): the claim begins the caller's [`RawTx`] (its statement goes to the
/// connection after a `BEGIN IMMEDIATE`, in the same call).
///
/// `mark` (MySQL): the statement that marks the rows claimed is not run but pushed onto it, ended
/// by `; `, for the caller to send with the statements that follow it in the same transaction
/// (one round trip: [`Text`]); the deliveries are returned as if marked.
#[allow(clippy::too_many_arguments)]
pub(super) async fn claim_in(
    conn: &mut Conn,
    group: ConsumerGroup,
    topics: &[Topic],
    max: usize,
    lease: Duration,
    token: &str,
    begin: bool,
    mark: Option<&mut Text>,
) -> Result<(Vec<Delivery>, bool), sqlx::Error> {
    if topics.is_empty() || max == 0 {
        return Ok((Vec::new(), false));
    }
    let now = now_ms();
    // One indexed scan per topic (in id order), filling the batch; the first topic rotates so that
    // no topic of a multi-topic unit starves the others.
    let first = usize::try_from(now).unwrap_or(0) % topics.len();
    let order: Vec<Topic> = (0..topics.len())
        .map(|i| topics[(first + i) % topics.len()])
        .collect();
    if FLAVOR == crate::common::Flavor::Sqlite {
        return claim_sqlite(conn, group, &order, max, now, lease, token, begin).await;
    }
    let limit = i64::try_from(max).unwrap_or(i64::MAX);
    // PostgreSQL: a claim that took every due row it saw says so (`complete`), so that the
    // consumer's next claim waits for a wake-up instead of scanning at once: every publish, in
    // any process, wakes this one (`NOTIFY`), and the poll finds what none announces (a lease
    // that ended, a delay that came due, a claim released elsewhere), as it does while a
    // consumer waits. MySQL has no notification from other processes: never complete there.
    let notified = FLAVOR == crate::common::Flavor::Postgres;
    let mut rows = due_rows(conn, group, &order, limit, now, &Blocked::default()).await?;
    if rows.is_empty() {
        // An empty poll is one statement.
        return Ok((Vec::new(), notified));
    }
    // A topic whose scan filled its limit may have more due rows.
    let full = |rows: &[DbRow]| {
        let mut per_topic: HashMap<String, i64> = HashMap::new();
        for row in rows {
            if let Ok(topic) = get::<String>(row, "topic") {
                *per_topic.entry(topic).or_default() += 1;
            }
        }
        per_topic.values().any(|n| *n >= limit)
    };
    // Per-key order: a row is handed out only if every older due row of its key is handed out in
    // this same batch ([`key_order`]). When a row read must wait for an older one, the keys with
    // a live claim elsewhere are read and the rows read again without them, so that a batch is
    // not filled with rows the check refuses (statements more, only then).
    let mut accepted = key_order(conn, group, &rows, now).await?;
    let hit = accepted.len() < rows.len();
    if hit {
        let blocked = blocked_keys(conn, group, topics, now).await?;
        if !blocked.too_many && !blocked.keys.is_empty() {
            rows = due_rows(conn, group, &order, limit, now, &blocked).await?;
            accepted = key_order(conn, group, &rows, now).await?;
        }
    }
    // Rows left for later (over the limit, of a blocked key, refused below) make it incomplete.
    let mut complete = notified && !hit && !full(&rows);
    // The batch fills topic after topic, the first topic rotating so that no topic of a
    // multi-topic unit starves the others; rows past `max` are left (they stay locked until this
    // claim commits, a few milliseconds). What is left of a topic is newer than what is taken of
    // it: the check above stands for the rows taken.
    let rank = |row: &DbRow| -> (usize, i64) {
        let topic: Option<String> = get(row, "topic").ok();
        let at = topic
            .and_then(|t| order.iter().position(|o| o.as_str() == t))
            .unwrap_or(0);
        (at, get(row, "id").unwrap_or(0))
    };
    rows.sort_by_cached_key(rank);
    complete &= rows.len() <= max;
    rows.truncate(max);

    let mut candidates = Vec::with_capacity(rows.len());
    for row in rows {
        match read_row(&row) {
            Ok(candidate) => candidates.push(candidate),
            Err(unreadable) => set_aside(conn, group, unreadable).await?,
        }
    }
    if candidates.is_empty() {
        return Ok((Vec::new(), false));
    }
    let seen = candidates.len();
    let claimed: Vec<Candidate> = candidates
        .into_iter()
        .filter(|c| accepted.contains(&c.id))
        .collect();
    // A redelivery goes alone (`shrink_after_crash`): the others are left for the next claim.
    let handed = mark_claimed(conn, claimed, token, now, lease, group, mark).await?;
    complete &= handed.len() == seen;
    Ok((handed, complete))
}

/// Mark the accepted `claimed` rows claimed by `token` until `now + lease` (a redelivery alone:
/// [`shrink_after_crash`]) and hand them out; with `text`, the statement is pushed onto it
/// instead of run (see [`claim_in`]).
async fn mark_claimed(
    conn: &mut Conn,
    mut claimed: Vec<Candidate>,
    token: &str,
    now: i64,
    lease: Duration,
    group: ConsumerGroup,
    text: Option<&mut Text>,
) -> Result<Vec<Delivery>, sqlx::Error> {
    if claimed.is_empty() {
        return Ok(Vec::new());
    }
    shrink_after_crash(&mut claimed);
    let ids: Vec<i64> = claimed.iter().map(|c| c.id).collect();
    let until = now + duration_ms(lease);
    if let Some(text) = text {
        push_mark(text, token, until, &ids);
        text.sql("; ");
    } else {
        let mut qb = Qb::new("");
        push_mark(&mut qb, token, until, &ids);
        qb.build().execute(&mut *conn).await?;
    }
    Ok(hand_out(claimed, group))
}

/// The statement that marks the rows `ids` claimed by `token` until `until`.
fn push_mark<S: Sql>(qb: &mut S, token: &str, until: i64, ids: &[i64]) {
    qb.sql("UPDATE queue SET claimed_by = ")
        .text(token)
        .sql(", claimed_until = ")
        .int(until)
        .sql(", attempts = attempts + 1 WHERE id IN ")
        .ints(ids);
}

/// The deliveries of the `claimed` rows.
fn hand_out(claimed: Vec<Candidate>, group: ConsumerGroup) -> Vec<Delivery> {
    tracing::trace!(
        group = group.as_str(),
        rows = claimed.len(),
        topics = ?claimed.iter().map(|c| c.topic.as_str()).collect::<BTreeSet<_>>(),
        "claimed"
    );
    claimed
        .into_iter()
        .map(|c| Delivery {
            tag: DeliveryTag {
                topic: c.topic,
                partition: 0,
                offset: c.id,
            },
            group,
            envelope: Envelope {
                topic: c.topic,
                key: c.key,
                payload: Bytes::from(c.payload),
                deliver_at: None,
            },
            attempt: u32::try_from(c.attempts).unwrap_or(0) + 1,
            published_at: chrono::DateTime::from_timestamp_millis(c.due),
        })
        .collect()
}

/// SQLite's claim ([`claim_in`]): one `UPDATE ... RETURNING` marks and returns the first due,
/// unclaimed rows of each topic of `order` in id order (the batch filled topic after topic, up to
/// `max`), leaving out the keys with a live claim of `group` elsewhere. With SQLite's single writer
/// the statement is atomic, so per-key order needs no further check: an older due row of a
/// returned row's key is not claimed elsewhere (its key would be left out) and comes first in id
/// order, so it is returned too. A second statement in the same call says whether a due, unclaimed
/// row is left (the claim took everything when none is). One call to the connection's thread, no
/// transaction needed (each call costs two thread wake-ups; a claim in a transaction of its own
/// took four calls).
///
/// The rare rows that cannot be handed out are dealt with after: unreadable rows are set aside as
/// dead letters, and a redelivery goes alone ([`shrink_after_crash`]): the claim of the others is
/// released (and their attempt taken back).
#[allow(clippy::too_many_arguments)]
async fn claim_sqlite(
    conn: &mut Conn,
    group: ConsumerGroup,
    order: &[Topic],
    max: usize,
    now: i64,
    lease: Duration,
    token: &str,
    begin: bool,
) -> Result<(Vec<Delivery>, bool), sqlx::Error> {
    let limit = i64::try_from(max).unwrap_or(i64::MAX);
    let mut qb = Qb::new(if begin { "BEGIN IMMEDIATE; " } else { "" });
    qb.push("UPDATE queue SET claimed_by = ");
    qb.push_bind(token.to_string())
        .push(", claimed_until = ")
        .push_bind(now + duration_ms(lease))
        .push(", attempts = attempts + 1 WHERE id IN (SELECT id FROM (");
    for (i, topic) in order.iter().enumerate() {
        if i > 0 {
            qb.push(" UNION ALL ");
        }
        qb.push(format!(
            "SELECT * FROM (SELECT {i} AS rk, q.id AS id FROM queue q WHERE "
        ));
        push_due(&mut qb, *topic, group, now);
        qb.push(" AND q.msg_key NOT IN (SELECT c.msg_key FROM queue c WHERE c.topic = ")
            .push_bind(topic.as_str())
            .push(" AND c.group_name = ")
            .push_bind(group.as_str())
            .push(" AND c.claimed_until > ")
            .push_bind(now)
            .push(") ORDER BY q.id");
        push_limit(&mut qb, limit);
        qb.push(")");
    }
    qb.push(") ORDER BY rk, id");
    push_limit(&mut qb, limit);
    qb.push(
        ") RETURNING id, topic, msg_key, payload, attempts - 1 AS attempts, visible_at; \
             SELECT EXISTS (SELECT 1 FROM queue WHERE topic IN ",
    );
    push_in(&mut qb, order.iter().map(|t| t.as_str().to_string()));
    qb.push(" AND group_name = ")
        .push_bind(group.as_str())
        .push(" AND visible_at <= ")
        .push_bind(now)
        .push(" AND (claimed_until IS NULL OR claimed_until <= ")
        .push_bind(now)
        .push(")) AS remaining");
    let mut remaining = true;
    let mut claimed = Vec::new();
    let mut unreadable = Vec::new();
    for row in qb.build().fetch_all(&mut *conn).await? {
        if let Ok(left) = row.try_get::<i64, _>("remaining") {
            remaining = left != 0;
            continue;
        }
        match read_row(&row) {
            Ok(candidate) => claimed.push(candidate),
            Err(row) => unreadable.push(row),
        }
    }
    let returned = claimed.len() + unreadable.len();
    for row in unreadable {
        set_aside(conn, group, row).await?;
    }
    // RETURNING gives no order: the batch in the claim's order (topic rank, then id).
    claimed.sort_by_key(|c| (order.iter().position(|t| *t == c.topic), c.id));
    let offered: Vec<i64> = claimed.iter().map(|c| c.id).collect();
    shrink_after_crash(&mut claimed);
    if claimed.len() < offered.len() {
        let kept: HashSet<i64> = claimed.iter().map(|c| c.id).collect();
        let mut qb = Qb::new(
            "UPDATE queue SET claimed_by = NULL, claimed_until = NULL, attempts = attempts - 1 \
             WHERE claimed_by = ",
        );
        qb.push_bind(token.to_string()).push(" AND id IN ");
        push_in(
            &mut qb,
            offered.iter().filter(|id| !kept.contains(id)).copied(),
        );
        qb.build().execute(&mut *conn).await?;
        remaining = true;
    }
    // Everything there was is taken: fewer rows than a batch (a full batch may have left some),
    // and no due row left unclaimed (e.g. of a key claimed elsewhere).
    let complete = !remaining && returned < max;
    Ok((hand_out(claimed, group), complete))
}

/// A redelivery (a row claimed before whose claim never ended: its consumer died) is handed out
/// alone, so that a message that crashes its consumer does not take its batch-mates down with it
/// again and each message's `attempts` counts its own crashes: the batch shrinks to the oldest
/// claimed row of the key of the oldest redelivered row (the oldest of its key, so per-key order
/// holds).
fn shrink_after_crash(claimed: &mut Vec<Candidate>) {
    let Some((topic, key)) = claimed
        .iter()
        .filter(|c| c.attempts > 0)
        .min_by_key(|c| c.id)
        .map(|c| (c.topic, c.key.clone()))
    else {
        return;
    };
    let Some(oldest) = claimed
        .iter()
        .filter(|c| c.topic == topic && c.key == key)
        .map(|c| c.id)
        .min()
    else {
        return;
    };
    claimed.retain(|c| c.id == oldest);
}

/// Lock, in the caller's transaction, the rows of `deliveries` that are still claimed by `token`
/// (a claim committed just before; `FOR UPDATE`, nothing on SQLite's single writer) and keep only
/// those: a row whose lease ended meanwhile and was claimed by another consumer is left to it.
pub(super) async fn lock_claimed(
    conn: &mut Conn,
    deliveries: Vec<Delivery>,
    token: &str,
) -> Result<Vec<Delivery>, sqlx::Error> {
    let mut held = HashSet::new();
    let ids: Vec<i64> = deliveries.iter().map(|d| d.tag.offset).collect();
    for chunk in ids.chunks(CHUNK) {
        let mut qb = Qb::new("SELECT id FROM queue WHERE claimed_by = ");
        qb.push_bind(token.to_string()).push(" AND id IN ");
        push_in(&mut qb, chunk.iter().copied());
        qb.push(" ORDER BY id").push(FLAVOR.for_update());
        let rows: Vec<(i64,)> = qb.build_query_as().fetch_all(&mut *conn).await?;
        held.extend(rows.into_iter().map(|(id,)| id));
    }
    Ok(deliveries
        .into_iter()
        .filter(|d| held.contains(&d.tag.offset))
        .collect())
}

/// Release the claim of rows whose unit of work was rolled back (dropped without commit): they
/// are claimable again at once, and the delivery attempt the claim counted is taken back - a
/// rollback is not a crash (a panic or a refusal is the consumer's to count). Rows claimed by
/// another token since are left alone.
pub(super) async fn release_claimed(
    pool: &Pool<Db>,
    ids: &[i64],
    token: &str,
) -> Result<(), sqlx::Error> {
    for chunk in ids.chunks(CHUNK) {
        let mut tx = begin_relaxed(pool).await?;
        let mut qb = Qb::new(
            "UPDATE queue SET claimed_by = NULL, claimed_until = NULL, \
             attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END WHERE claimed_by = ",
        );
        qb.push_bind(token.to_string()).push(" AND id IN ");
        push_in(&mut qb, chunk.iter().copied());
        qb.build().execute(&mut *tx).await?;
        tx.commit().await?;
    }
    Ok(())
}

/// The row ids of `tags` by topic (JDBC tags have partition 0; others are unknown here).
fn ids_by_topic(tags: &[DeliveryTag]) -> BTreeMap<Topic, Vec<i64>> {
    let mut by_topic: BTreeMap<Topic, Vec<i64>> = BTreeMap::new();
    for t in tags.iter().filter(|t| t.partition == 0) {
        by_topic.entry(t.topic).or_default().push(t.offset);
    }
    by_topic
}

/// Delete acknowledged rows (a tag matches its row by topic and id), one statement per batch, in a
/// transaction of their own.
pub(super) async fn ack_rows(
    pool: &Pool<Db>,
    group: ConsumerGroup,
    tags: &[DeliveryTag],
) -> Result<(), sqlx::Error> {
    if tags.is_empty() {
        return Ok(());
    }
    if FLAVOR == crate::common::Flavor::Sqlite {
        let mut qb = Qb::new("BEGIN IMMEDIATE; ");
        if push_ack(&mut qb, group, tags) {
            return write_at_once(pool, qb).await.map(|_| ());
        }
    }
    let mut tx = begin_relaxed(pool).await?;
    ack_in(&mut tx, group, tags).await?;
    tx.commit().await
}

/// Delete acknowledged rows inside the caller's transaction (see [`ack_rows`]).
pub(super) async fn ack_in(
    conn: &mut Conn,
    group: ConsumerGroup,
    tags: &[DeliveryTag],
) -> Result<(), sqlx::Error> {
    let by_topic = ids_by_topic(tags);
    for (topic, ids) in &by_topic {
        for chunk in ids.chunks(CHUNK) {
            let mut qb = Qb::new("");
            push_ack_delete(&mut qb, group, *topic, chunk);
            qb.build().execute(&mut *conn).await?;
        }
    }
    Ok(())
}

/// Move the lease end of claimed rows to `until`; returns the tags that are still queued (held).
pub(super) async fn extend_rows(
    pool: &Pool<Db>,
    group: ConsumerGroup,
    tags: &[DeliveryTag],
    until: i64,
) -> Result<HashSet<DeliveryTag>, sqlx::Error> {
    let mut held = HashSet::new();
    let by_topic = ids_by_topic(tags);
    if by_topic.is_empty() {
        return Ok(held);
    }
    let mut tx = begin_relaxed(pool).await?;
    for (topic, ids) in &by_topic {
        for chunk in ids.chunks(CHUNK) {
            let mut qb = Qb::new("UPDATE queue SET claimed_until = ");
            qb.push_bind(until)
                .push(" WHERE claimed_by IS NOT NULL AND group_name = ")
                .push_bind(group.as_str())
                .push(" AND topic = ")
                .push_bind(topic.as_str())
                .push(" AND id IN ");
            push_in(&mut qb, chunk.iter().copied());
            qb.build().execute(&mut *tx).await?;
            let mut qb = Qb::new("SELECT id FROM queue WHERE group_name = ");
            qb.push_bind(group.as_str())
                .push(" AND topic = ")
                .push_bind(topic.as_str())
                .push(" AND id IN ");
            push_in(&mut qb, chunk.iter().copied());
            let rows: Vec<(i64,)> = qb.build_query_as().fetch_all(&mut *tx).await?;
            held.extend(rows.into_iter().map(|(id,)| DeliveryTag {
                topic: *topic,
                partition: 0,
                offset: id,
            }));
        }
    }
    tx.commit().await?;
    Ok(held)
}

/// A transaction whose commit, on PostgreSQL, does not wait for the WAL flush
/// (`synchronous_commit = off`, set with the `BEGIN`: one round trip). Only for claims and
/// acknowledgements of competing receives, whose loss in a crash means a redelivery (allowed:
/// at-least-once), never for publishes or units of work. A plain transaction elsewhere.
pub(super) async fn begin_relaxed(
    pool: &Pool<Db>,
) -> Result<Transaction<'static, Db>, sqlx::Error> {
    if FLAVOR == crate::common::Flavor::Postgres {
        return pool
            .begin_with("BEGIN; SET LOCAL synchronous_commit = off")
            .await;
    }
    begin_write(pool).await
}

/// Wake-ups of `topics`, armed before a claim attempt so that a publish between the attempt and the
/// wait is not missed.
pub(super) struct Wakeups<'a> {
    waits: Vec<std::pin::Pin<Box<tokio::sync::futures::Notified<'a>>>>,
}

impl<'a> Wakeups<'a> {
    pub(super) fn arm(notifier: &'a Notifier, topics: &[Topic]) -> Wakeups<'a> {
        let mut waits: Vec<_> = topics
            .iter()
            .map(|t| Box::pin(notifier.topic(*t).notified()))
            .collect();
        for w in &mut waits {
            w.as_mut().enable();
        }
        Wakeups { waits }
    }

    /// Wait for a wake-up, at most `timeout`. Returns true if woken.
    pub(super) async fn wait(self, timeout: Duration) -> bool {
        if self.waits.is_empty() {
            tokio::time::sleep(timeout).await;
            return false;
        }
        tokio::select! {
            _ = futures::future::select_all(self.waits) => true,
            _ = tokio::time::sleep(timeout) => false,
        }
    }
}

/// Adaptive polling: 5 ms doubling to 500 ms while idle, back to 5 ms on activity.
pub(super) struct Poll {
    deadline: Instant,
    delay: Duration,
}

impl Poll {
    pub(super) fn new(wait: Duration) -> Poll {
        Poll {
            deadline: Instant::now() + wait,
            delay: POLL_MIN,
        }
    }

    /// Wait for the next attempt; false when the deadline has passed.
    /// Inside [`kestra_core::queue::stoppable`], false as soon as its stop token is cancelled.
    pub(super) async fn next(&mut self, wakeups: Wakeups<'_>) -> bool {
        let now = Instant::now();
        if now >= self.deadline || kestra_core::queue::wait_stop_requested() {
            return false;
        }
        let woken = tokio::select! {
            woken = wakeups.wait(self.delay.min(self.deadline - now)) => woken,
            () = kestra_core::queue::wait_stopped() => return false,
        };
        self.delay = if woken {
            POLL_MIN
        } else {
            (self.delay * 2).min(POLL_MAX)
        };
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(
        topic: &str,
        key: &str,
        id: i64,
        prev: Option<i64>,
    ) -> ((String, String), i64, Option<i64>) {
        ((topic.to_string(), key.to_string()), id, prev)
    }

    #[test]
    fn rows_keep_their_key_order() {
        let accepted = keep_key_order(
            [
                // Key a: the first three due rows of the key, all read here.
                row("execution", "a", 3, Some(1)),
                row("execution", "a", 1, None),
                row("execution", "a", 7, Some(3)),
                // Key b: an older row (id 0) is claimed elsewhere or locked: none of b's.
                row("execution", "b", 2, Some(0)),
                row("execution", "b", 4, Some(2)),
                // Key c: a row between its two rows here (8) was not read: only the first.
                row("execution", "c", 5, None),
                row("execution", "c", 9, Some(8)),
                // The same key on another topic is another key.
                row("worker_job", "a", 6, None),
            ]
            .into_iter(),
        );
        let mut ids: Vec<i64> = accepted.into_iter().collect();
        ids.sort_unstable();
        assert_eq!(ids, vec![1, 3, 5, 6, 7]);
    }
}
