//! Queue maintenance: the periodic purge of old broadcast rows, row counts, and the offline purge
//! (`kestra sys` commands run it without an engine).

use super::*;

impl Store {
    /// Delete broadcast rows older than the retention; returns how many.
    pub(crate) async fn purge_broadcast(&self) -> Result<u64, sqlx::Error> {
        let cutoff = now_ms() - duration_ms(BROADCAST_RETENTION);
        let done = Qb::new("DELETE FROM queue_broadcast WHERE created_at < ")
            .push_bind(cutoff)
            .build()
            .execute(&self.write)
            .await?;
        Ok(done.rows_affected())
    }

    /// Row counts of the queue tables.
    pub(crate) async fn stats(&self) -> Result<crate::QueueStats, sqlx::Error> {
        let mut counts = [0u64; 3];
        for (slot, table) in
            counts
                .iter_mut()
                .zip(["queue", "queue_dead_letter", "queue_broadcast"])
        {
            let row = Qb::new(format!("SELECT COUNT(*) AS c FROM {table}"))
                .build()
                .fetch_one(&self.read)
                .await?;
            *slot = u64::try_from(get::<i64>(&row, "c")?).unwrap_or(0);
        }
        Ok(crate::QueueStats {
            queued: counts[0],
            dead_letters: counts[1],
            broadcast: counts[2],
        })
    }
}

/// Offline queue maintenance on a raw pool (no migrations, no engine): drop dead letters, expired
/// broadcast rows and rows of unknown topics or groups, then compact the tables.
pub(crate) async fn purge_offline(pool: &Pool<Db>) -> Result<crate::PurgeReport, sqlx::Error> {
    let dead_letters = Qb::new("DELETE FROM queue_dead_letter")
        .build()
        .execute(pool)
        .await?
        .rows_affected();
    let broadcast = Qb::new("DELETE FROM queue_broadcast WHERE created_at < ")
        .push_bind(now_ms() - duration_ms(BROADCAST_RETENTION))
        .build()
        .execute(pool)
        .await?
        .rows_affected();
    let mut qb = Qb::new("DELETE FROM queue WHERE topic NOT IN ");
    push_in(&mut qb, Topic::ALL.iter().map(|t| t.as_str()));
    qb.push(" OR group_name NOT IN ");
    push_in(&mut qb, ConsumerGroup::ALL.iter().map(|g| g.as_str()));
    let unroutable = qb.build().execute(pool).await?.rows_affected();
    let compact = match FLAVOR {
        crate::common::Flavor::Sqlite => "VACUUM",
        crate::common::Flavor::Postgres => {
            "VACUUM ANALYZE queue, queue_broadcast, queue_dead_letter"
        }
        crate::common::Flavor::MySql => "OPTIMIZE TABLE queue, queue_broadcast, queue_dead_letter",
    };
    Qb::new(compact).build().execute(pool).await?;
    Ok(crate::PurgeReport {
        dead_letters,
        broadcast,
        unroutable,
    })
}

pub(super) async fn maintenance(store: Weak<Store>) {
    loop {
        tokio::time::sleep(MAINTENANCE_EVERY).await;
        let Some(store) = store.upgrade() else { return };
        if let Err(error) = store.purge_broadcast().await {
            tracing::warn!(%error, "cannot purge old broadcast rows");
        }
    }
}
