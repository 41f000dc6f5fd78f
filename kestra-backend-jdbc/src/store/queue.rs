//! The [`Queue`] implementation over the claim SQL of [`super::claims`].

use super::*;

/// Wake the in-process waiters of each of `topics` once.
pub(super) fn wake_topics(notifier: &Notifier, topics: impl IntoIterator<Item = Topic>) {
    let distinct: BTreeSet<Topic> = topics.into_iter().collect();
    for t in distinct {
        notifier.notify(t);
    }
}

/// A claim's deliveries and whether it took every row there was (see [`claim_in`]).
type ClaimedRows = (Vec<Delivery>, bool);

/// The transaction of a unit begun with its claim ([`Store::claim_and_begin`]), with the ids of
/// the claimed rows it locked already (MySQL; `None`: not locked yet).
type OpenUnit = (Transaction<'static, Db>, Option<HashSet<i64>>);

impl Store {
    /// Claim in a transaction of its own: the claim (and the delivery attempt it counts) is
    /// committed before the consumer processes anything. `fault`: the testkit's (executor claims).
    async fn claim_once(
        &self,
        group: ConsumerGroup,
        topics: &[Topic],
        max: usize,
        lease: Duration,
        token: &str,
        fault: Fault,
    ) -> Result<(Vec<Delivery>, bool), sqlx::Error> {
        if FLAVOR == crate::common::Flavor::Sqlite {
            // One statement, atomic by itself: no transaction (two calls to the connection's
            // thread less per claim).
            let mut conn = self.write.acquire().await?;
            #[cfg(feature = "testkit")]
            if fault == Some(crate::testkit::TxnPoint::Claim) {
                // The claim fails before its statement: nothing is claimed, as when it is rolled
                // back.
                super::faults::inject(&mut conn, crate::testkit::TxnPoint::Claim).await?;
            }
            return claim_in(&mut conn, group, topics, max, lease, token, false, None).await;
        }
        let (got, tx) = self
            .claim_open(group, topics, max, lease, token, fault, None)
            .await?;
        tx.commit().await?;
        Ok(got)
    }

    /// PostgreSQL and MySQL: [`Self::claim_once`] up to its commit, which is left to the caller -
    /// with the transaction the claim ran in (and, with `mark`, the statement that marks the rows
    /// claimed: see [`claim_in`]).
    #[allow(clippy::too_many_arguments)]
    async fn claim_open(
        &self,
        group: ConsumerGroup,
        topics: &[Topic],
        max: usize,
        lease: Duration,
        token: &str,
        fault: Fault,
        mark: Option<&mut Text>,
    ) -> Result<((Vec<Delivery>, bool), Transaction<'static, Db>), sqlx::Error> {
        let mut tx = begin_relaxed(&self.write).await?;
        let got = claim_in(&mut tx, group, topics, max, lease, token, false, mark).await?;
        #[cfg(feature = "testkit")]
        if fault == Some(crate::testkit::TxnPoint::Claim) {
            super::faults::inject(&mut tx, crate::testkit::TxnPoint::Claim).await?;
        }
        #[cfg(not(feature = "testkit"))]
        let () = fault;
        Ok((got, tx))
    }

    /// A unit's claim (PostgreSQL and MySQL): [`Self::claim_once`], and when it claimed rows,
    /// the transaction of the unit begun on the same connection - `COMMIT; BEGIN` in one round
    /// trip instead of a commit and a begin of their own (MySQL: with the statement that marks
    /// the rows claimed before them, in text). The claim is committed before the unit's
    /// transaction begins, as with two transactions (see `begin`).
    async fn claim_and_begin(
        &self,
        group: ConsumerGroup,
        topics: &[Topic],
        max: usize,
        lease: Duration,
        token: &str,
        fault: Fault,
    ) -> Result<(ClaimedRows, Option<OpenUnit>), sqlx::Error> {
        let mysql = FLAVOR == crate::common::Flavor::MySql;
        let mut mark = Text::default();
        let (got, mut tx) = self
            .claim_open(
                group,
                topics,
                max,
                lease,
                token,
                fault,
                mysql.then_some(&mut mark),
            )
            .await?;
        if got.0.is_empty() {
            tx.commit().await?;
            return Ok((got, None));
        }
        // The `Transaction` stays open for sqlx (its depth is one, as the server's): what it
        // commits or rolls back from here on is the unit's transaction.
        mark.sql("COMMIT; BEGIN");
        let ids: Vec<i64> = got.0.iter().map(|d| d.tag.offset).collect();
        let lock = mysql && ids.len() <= CHUNK;
        if lock {
            // MySQL: and the unit's lock of its rows (`lock_claimed`) in the same query.
            mark.sql("; SELECT id FROM queue WHERE claimed_by = ")
                .text(token)
                .sql(" AND id IN ")
                .ints(&ids)
                .sql(" ORDER BY id")
                .sql(FLAVOR.for_update());
        }
        let rows = sqlx::raw_sql(sqlx::AssertSqlSafe(mark.0))
            .fetch_all(&mut *tx)
            .await
            .and_then(|rows| {
                rows.iter()
                    .map(|row| get::<i64>(row, "id"))
                    .collect::<Result<HashSet<i64>, _>>()
            });
        match rows {
            Ok(held) => Ok((got, Some((tx, lock.then_some(held))))),
            Err(e) => {
                // The claim may have committed before the statement that failed: release it
                // (rows still claimed by this token only), or its messages would wait for the
                // end of its lease - as when the lock of a unit's rows fails (`begin`).
                drop(tx);
                if let Err(error) = release_claimed(&self.write, &ids, token).await {
                    tracing::debug!(%error, "cannot release a claim whose unit could not begin; its messages come back when the lease ends");
                }
                Err(e)
            }
        }
    }

    /// One attempt of a recorded claim (contract point 12): claim, derive and check the records,
    /// publish them and commit, in one transaction. A refused record rolls the claim back (the
    /// inner error); a database error is the outer one.
    async fn claim_recorded_once(
        &self,
        group: ConsumerGroup,
        topic: Topic,
        max: usize,
        lease: Duration,
        token: &str,
        record: &Recorder,
    ) -> Result<Result<(Vec<Delivery>, bool), QueueError>, sqlx::Error> {
        if FLAVOR != crate::common::Flavor::Postgres {
            return self
                .claim_recorded_raw(group, topic, max, lease, token, record)
                .await;
        }
        let mut tx = begin_write(&self.write).await?;
        let (got, complete) =
            claim_in(&mut tx, group, &[topic], max, lease, token, false, None).await?;
        if got.is_empty() {
            // Nothing claimed, but rows the claim set aside as dead letters stay set aside (as in
            // `claim_once`).
            tx.commit().await?;
            return Ok(Ok((got, complete)));
        }
        let records = match self.records_of(&got, record) {
            Ok(r) => r,
            Err(e) => {
                tx.rollback().await?;
                return Ok(Err(e));
            }
        };
        publish_in(&mut tx, &records, &self.notifier).await?;
        tx.commit().await?;
        self.wake(records.iter().map(|m| m.topic));
        Ok(Ok((got, complete)))
    }

    /// SQLite's and MySQL's [`Store::claim_recorded_once`]: the same transaction on a [`RawTx`].
    /// SQLite: two calls to the connection's thread - the claim after its `BEGIN IMMEDIATE`, then
    /// the records before the `COMMIT` - instead of four. MySQL: three round trips (four when the
    /// per-key order needs its statement) instead of six or seven - `BEGIN`, the scan, then the
    /// statement that marks the rows claimed, the records' inserts and the `COMMIT` in one text
    /// query ([`RawTx::commit_text`]). A failed statement rolls back or closes the connection.
    async fn claim_recorded_raw(
        &self,
        group: ConsumerGroup,
        topic: Topic,
        max: usize,
        lease: Duration,
        token: &str,
        record: &Recorder,
    ) -> Result<Result<(Vec<Delivery>, bool), QueueError>, sqlx::Error> {
        let sqlite = FLAVOR == crate::common::Flavor::Sqlite;
        let mut raw = RawTx::acquire(&self.write).await?;
        if !sqlite {
            sqlx::raw_sql("BEGIN").execute(raw.conn()?).await?;
        }
        // MySQL: the mark, the records and the `COMMIT`, in text; SQLite: the records.
        let mut text = Text::default();
        let mut qb = Qb::new("");
        let mark = (!sqlite).then_some(&mut text);
        let (got, complete) = claim_in(
            raw.conn()?,
            group,
            &[topic],
            max,
            lease,
            token,
            sqlite,
            mark,
        )
        .await?;
        // Nothing claimed: rows the claim set aside as dead letters stay set aside.
        let records = if got.is_empty() {
            Vec::new()
        } else {
            match self.records_of(&got, record) {
                Ok(r) => r,
                Err(e) => {
                    raw.rollback().await;
                    return Ok(Err(e));
                }
            }
        };
        let together = if sqlite {
            push_publish(&mut qb, &records).is_some()
        } else {
            push_text_publish(&mut text, &records, None)
        };
        if !together {
            publish_in(raw.conn()?, &records, &self.notifier).await?;
        }
        if sqlite {
            raw.commit(qb).await?;
        } else {
            text.sql("COMMIT");
            raw.commit_text(text.0).await?;
        }
        self.wake(records.iter().map(|m| m.topic));
        Ok(Ok((got, complete)))
    }

    /// The records of the deliveries `got` (contract point 12), checked as a publish is.
    fn records_of(&self, got: &[Delivery], record: &Recorder) -> Result<Vec<Envelope>, QueueError> {
        record(got).and_then(|r| check_publish(&r, self.max_message_bytes).map(|()| r))
    }

    /// Whether the first claim of a `begin`/`receive` (with a wait) can wait for a wake-up instead:
    /// SQLite or PostgreSQL, and the last claim of `group` on `topics` took everything there was
    /// when the topics' wake-up count was `generation` (read after arming the wake-ups, before
    /// this claim), so nothing was published since - in this process, and on PostgreSQL in any
    /// (their `NOTIFY` moves the count). Rows of another process sharing a SQLite file, leases
    /// that end and delays that come due are the poll's, as before. Never on MySQL: other
    /// processes' publishes wake no one there.
    fn caught_up(&self, group: ConsumerGroup, topics: &[Topic], generation: u64) -> bool {
        FLAVOR != crate::common::Flavor::MySql
            && self
                .caught_up
                .lock()
                .is_ok_and(|memo| memo.get(&(group, topics.to_vec())) == Some(&generation))
    }

    /// Remember (or forget) that a claim of `group` on `topics` started at `generation` took
    /// everything there was.
    fn note_claim(&self, group: ConsumerGroup, topics: &[Topic], generation: u64, complete: bool) {
        if FLAVOR == crate::common::Flavor::MySql {
            return;
        }
        if let Ok(mut memo) = self.caught_up.lock() {
            if complete {
                memo.insert((group, topics.to_vec()), generation);
            } else {
                memo.remove(&(group, topics.to_vec()));
            }
        }
    }

    fn wake(&self, topics: impl IntoIterator<Item = Topic>) {
        wake_topics(&self.notifier, topics);
    }
}

#[async_trait]
impl Queue for Store {
    fn capabilities(&self) -> QueueCapabilities {
        QueueCapabilities {
            lease_timers: true,
            max_message_bytes: self.max_message_bytes,
            // The unit writes the executions row the repository reads, in its transaction.
            repository_in_unit: true,
        }
    }

    async fn publish(&self, messages: Vec<Envelope>) -> Result<(), QueueError> {
        if messages.is_empty() {
            return Ok(());
        }
        check_publish(&messages, self.max_message_bytes)?;
        self.publish_grouped(messages).await
    }

    async fn receive(
        &self,
        group: ConsumerGroup,
        topic: Topic,
        max: usize,
        lease: Duration,
        wait: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        let token = kestra_core::model::new_id();
        let mut poll = Poll::new(wait);
        let mut attempt = 0;
        let mut first = !wait.is_zero();
        loop {
            let wakeups = Wakeups::arm(&self.notifier, &[topic]);
            let generation = self.notifier.generation_of(&[topic]);
            if std::mem::take(&mut first) && self.caught_up(group, &[topic], generation) {
                if !poll.next(wakeups).await {
                    return Ok(Vec::new());
                }
                continue;
            }
            let claimed = self
                .claim_once(group, &[topic], max, lease, &token, Fault::default())
                .await;
            if let Ok((_, complete)) = &claimed {
                self.note_claim(group, &[topic], generation, *complete);
            }
            match claimed.map(|(got, _)| got) {
                Ok(got) if !got.is_empty() => return Ok(got),
                // Consecutive transient failures are bounded (see `begin`).
                Ok(_) => attempt = 0,
                Err(e) if attempt < RETRIES && is_transient(&e) => attempt += 1,
                Err(e) => return Err(queue_err("receive")(e)),
            }
            if !poll.next(wakeups).await {
                return Ok(Vec::new());
            }
        }
    }

    async fn receive_recorded(
        &self,
        group: ConsumerGroup,
        topic: Topic,
        max: usize,
        lease: Duration,
        wait: Duration,
        record: &Recorder,
    ) -> Result<Vec<Delivery>, QueueError> {
        let token = kestra_core::model::new_id();
        let mut poll = Poll::new(wait);
        let mut attempt = 0;
        let mut first = !wait.is_zero();
        loop {
            let wakeups = Wakeups::arm(&self.notifier, &[topic]);
            let generation = self.notifier.generation_of(&[topic]);
            if std::mem::take(&mut first) && self.caught_up(group, &[topic], generation) {
                if !poll.next(wakeups).await {
                    return Ok(Vec::new());
                }
                continue;
            }
            let claimed = self
                .claim_recorded_once(group, topic, max, lease, &token, record)
                .await;
            if let Ok(Ok((_, complete))) = &claimed {
                self.note_claim(group, &[topic], generation, *complete);
            }
            match claimed.map(|r| r.map(|(got, _)| got)) {
                Ok(Ok(got)) if !got.is_empty() => return Ok(got),
                // Consecutive transient failures are bounded (see `begin`).
                Ok(Ok(_)) => attempt = 0,
                Ok(Err(refused)) => return Err(refused),
                Err(e) if attempt < RETRIES && is_transient(&e) => attempt += 1,
                Err(e) => return Err(queue_err("receive_recorded")(e)),
            }
            if !poll.next(wakeups).await {
                return Ok(Vec::new());
            }
        }
    }

    async fn ack(&self, group: ConsumerGroup, tags: &[DeliveryTag]) -> Result<(), QueueError> {
        let mut attempt = 0;
        loop {
            match ack_rows(&self.write, group, tags).await {
                Ok(()) => return Ok(()),
                Err(e) if attempt < RETRIES && is_transient(&e) => {
                    attempt += 1;
                    backoff(attempt).await;
                }
                Err(e) => return Err(queue_err("ack")(e)),
            }
        }
    }

    /// One transaction: the messages are published and the deliveries acknowledged together.
    async fn publish_and_ack(
        &self,
        messages: Vec<Envelope>,
        group: ConsumerGroup,
        tags: &[DeliveryTag],
    ) -> Result<Option<QueueError>, QueueError> {
        if tags.is_empty() {
            return self.publish(messages).await.map(|()| None);
        }
        if messages.is_empty() {
            return Ok(self.ack(group, tags).await.err());
        }
        check_publish(&messages, self.max_message_bytes)?;
        let mut attempt = 0;
        loop {
            let once = async {
                if FLAVOR == crate::common::Flavor::Sqlite {
                    let mut qb = Qb::new("BEGIN IMMEDIATE; ");
                    if push_publish(&mut qb, &messages).is_some() && push_ack(&mut qb, group, tags)
                    {
                        return write_at_once(&self.write, qb).await.map(|_| ());
                    }
                }
                if FLAVOR == crate::common::Flavor::Postgres
                    && let Some(mut qb) = pg_publish_statement(
                        &messages,
                        &self.notifier.echo_mark(),
                        Some((group, tags)),
                    )
                {
                    // One statement: its own transaction.
                    return qb.build().execute(&self.write).await.map(|_| ());
                }
                if FLAVOR == crate::common::Flavor::MySql
                    && let Some(sql) = text_publish(&messages, Some((group, tags)))
                {
                    // One round trip for the transaction.
                    let raw = RawTx::acquire(&self.write).await?;
                    return raw.commit_text(sql).await.map(|_| ());
                }
                let mut tx = begin_write(&self.write).await?;
                publish_in(&mut tx, &messages, &self.notifier).await?;
                ack_in(&mut tx, group, tags).await?;
                tx.commit().await
            };
            match once.await {
                Ok(()) => break,
                Err(e) if attempt < RETRIES && is_transient(&e) => {
                    attempt += 1;
                    backoff(attempt).await;
                }
                Err(e) => return Err(queue_err("publish and acknowledge")(e)),
            }
        }
        self.wake(messages.iter().map(|m| m.topic));
        Ok(None)
    }

    async fn extend_lease(
        &self,
        group: ConsumerGroup,
        tags: &[DeliveryTag],
        lease: Duration,
    ) -> Result<Vec<DeliveryTag>, QueueError> {
        let mut attempt = 0;
        let held = loop {
            match extend_rows(&self.write, group, tags, now_ms() + duration_ms(lease)).await {
                Ok(held) => break held,
                Err(e) if attempt < RETRIES && is_transient(&e) => {
                    attempt += 1;
                    backoff(attempt).await;
                }
                Err(e) => return Err(queue_err("extend_lease")(e)),
            }
        };
        Ok(tags.iter().filter(|t| !held.contains(t)).copied().collect())
    }

    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<(), QueueError> {
        let err = queue_err("dead_letter");
        let mut tx = begin_write(&self.write).await.map_err(&err)?;
        dead_letter_in(
            &mut tx,
            delivery.tag.offset,
            delivery.envelope.topic.as_str(),
            delivery.group.as_str(),
            Some(&delivery.envelope.key),
            Some(&delivery.envelope.payload),
            reason,
        )
        .await
        .map_err(&err)?;
        tx.commit().await.map_err(&err)
    }

    async fn subscribe(&self, topic: Topic) -> Result<Subscription, QueueError> {
        kestra_core::queue::check_broadcast(topic)?;
        let start: i64 = Qb::new("SELECT COALESCE(MAX(id), 0) AS m FROM queue_broadcast")
            .build()
            .fetch_one(&self.write)
            .await
            .and_then(|row| get(&row, "m"))
            .map_err(queue_err("subscribe"))?;
        let state = Broadcast {
            pool: self.read.clone(),
            notifier: self.notifier.clone(),
            topic,
            floor: start,
            high: start,
            last_gap_check: Instant::now(),
            delivered: BTreeSet::new(),
            window: VecDeque::new(),
            buffer: VecDeque::new(),
            last_fetch: Instant::now(),
            delay: POLL_MIN,
            fetched_at: None,
        };
        Ok(futures::stream::unfold(state, |mut st| async move {
            let item = st.next().await?;
            Some((item, st))
        })
        .boxed())
    }

    async fn begin(
        &self,
        group: ConsumerGroup,
        topics: &[Topic],
        max: usize,
        wait: Duration,
    ) -> Result<Option<Box<dyn UnitOfWork>>, QueueError> {
        let err = queue_err("begin");
        let token = kestra_core::model::new_id();
        let mut poll = Poll::new(wait);
        let mut attempt = 0;
        let mut first = !wait.is_zero();
        loop {
            let wakeups = Wakeups::arm(&self.notifier, topics);
            let generation = self.notifier.generation_of(topics);
            if std::mem::take(&mut first) && self.caught_up(group, topics, generation) {
                if !poll.next(wakeups).await {
                    return Ok(None);
                }
                continue;
            }
            // The claim commits first, on its own: its delivery attempt is counted even if this
            // process dies while it processes the messages (the unit's transaction would take the
            // count with it), so a message that crashes the executor again and again reaches
            // the executor's limit instead of looping.
            let fault = plan_fault();
            let (claim, mut open) = if FLAVOR == crate::common::Flavor::Sqlite {
                let claim = self
                    .claim_once(group, topics, max, UOW_LEASE, &token, fault)
                    .await;
                (claim, None)
            } else {
                match self
                    .claim_and_begin(group, topics, max, UOW_LEASE, &token, fault)
                    .await
                {
                    Ok((got, tx)) => (Ok(got), tx),
                    Err(e) => (Err(e), None),
                }
            };
            if let Ok((_, complete)) = &claim {
                self.note_claim(group, topics, generation, *complete);
            }
            match claim.map(|(got, _)| got) {
                Ok(claimed) if !claimed.is_empty() && FLAVOR == crate::common::Flavor::Sqlite => {
                    // SQLite: the unit is deferred (see `unit`): no transaction until it commits,
                    // whose checks (its claim, what it read) run under the write lock.
                    #[cfg(feature = "testkit")]
                    if fault == Some(crate::testkit::TxnPoint::Lock) {
                        let ids: Vec<i64> = claimed.iter().map(|d| d.tag.offset).collect();
                        if let Err(error) = release_claimed(&self.write, &ids, &token).await {
                            tracing::debug!(%error, "cannot release a claim; its messages come back when the lease ends");
                        }
                        let e = super::faults::injected(crate::testkit::TxnPoint::Lock);
                        if attempt < RETRIES && is_transient(&e) {
                            attempt += 1;
                            backoff(attempt).await;
                            continue;
                        }
                        return Err(err(e));
                    }
                    return Ok(Some(Box::new(JdbcUnit {
                        max_message_bytes: self.max_message_bytes,
                        notifier: self.notifier.clone(),
                        write: self.write.clone(),
                        read: self.read.clone(),
                        tx: None,
                        deferred: Some(Deferred::new()),
                        token,
                        committed: false,
                        deliveries: claimed,
                        dead: HashSet::new(),
                        published: BTreeSet::new(),
                        staged: Vec::new(),
                        stored: HashMap::new(),
                        fault,
                        missing: HashSet::new(),
                        revisions: HashMap::new(),
                        created: HashSet::new(),
                        pending: PendingSaves::default(),
                    })));
                }
                Ok(claimed) if !claimed.is_empty() => {
                    let ids: Vec<i64> = claimed.iter().map(|d| d.tag.offset).collect();
                    let (mut tx, held) = match open.take() {
                        Some(open) => open,
                        None => (begin_write(&self.write).await.map_err(&err)?, None),
                    };
                    let locked = match held {
                        Some(held) => Ok(claimed
                            .into_iter()
                            .filter(|d| held.contains(&d.tag.offset))
                            .collect()),
                        None => lock_claimed(&mut tx, claimed, &token).await,
                    };
                    let locked = match locked {
                        #[cfg(feature = "testkit")]
                        Ok(_) if fault == Some(crate::testkit::TxnPoint::Lock) => {
                            super::faults::inject(&mut tx, crate::testkit::TxnPoint::Lock)
                                .await
                                .map(|()| Vec::new())
                        }
                        other => other,
                    };
                    let deliveries = match locked {
                        Ok(d) => d,
                        Err(e) => {
                            // The claim is committed: release it, or its messages would wait for
                            // the end of its lease; a deadlock or busy error is retried at once.
                            drop(tx);
                            if let Err(error) = release_claimed(&self.write, &ids, &token).await {
                                tracing::debug!(%error, "cannot release a claim whose rows could not be locked; its messages come back when the lease ends");
                            }
                            if attempt < RETRIES && is_transient(&e) {
                                attempt += 1;
                                backoff(attempt).await;
                                continue;
                            }
                            return Err(err(e));
                        }
                    };
                    if !deliveries.is_empty() {
                        return Ok(Some(Box::new(JdbcUnit {
                            max_message_bytes: self.max_message_bytes,
                            notifier: self.notifier.clone(),
                            write: self.write.clone(),
                            read: self.read.clone(),
                            tx: Some(tx),
                            deferred: None,
                            token,
                            committed: false,
                            deliveries,
                            dead: HashSet::new(),
                            published: BTreeSet::new(),
                            staged: Vec::new(),
                            stored: HashMap::new(),
                            fault,
                            missing: HashSet::new(),
                            revisions: HashMap::new(),
                            created: HashSet::new(),
                            pending: PendingSaves::default(),
                        })));
                    }
                    // Every row was claimed elsewhere meanwhile (its lease ended): look again.
                    tx.commit().await.map_err(&err)?;
                    attempt = 0;
                    continue;
                }
                // `RETRIES` bounds consecutive transient failures: a claim that worked (nothing
                // was due) starts the count again. Counted over the whole wait instead, a long
                // wait of many wake-ups gave up on the sixth transient failure however far apart
                // (seen under the testkit's injected faults: a `begin` failed by a deadlock).
                Ok(_) => attempt = 0,
                Err(e) if attempt < RETRIES && is_transient(&e) => attempt += 1,
                Err(e) => return Err(err(e)),
            }
            if !poll.next(wakeups).await {
                return Ok(None);
            }
        }
    }

    async fn begin_triggers(&self) -> Result<Box<dyn TriggerUnit>, QueueError> {
        let tx = begin_write(&self.write)
            .await
            .map_err(queue_err("begin_triggers"))?;
        Ok(Box::new(JdbcTriggerUnit {
            max_message_bytes: self.max_message_bytes,
            notifier: self.notifier.clone(),
            tx: Some(tx),
            held: BTreeSet::new(),
            published: BTreeSet::new(),
        }))
    }
}
