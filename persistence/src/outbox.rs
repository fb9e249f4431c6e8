//! The transactional outbox: events written in the same transaction as the change they describe
//! ([`append`]), read in order by the one relay holding the relay lease, marked published once
//! the broker (or the in-process consumers) took them, and purged after the retention.
//!
//! Rows are read by `published_at IS NULL ORDER BY id`, not "after the last id": on PostgreSQL
//! two transactions can commit their ids out of order, and a cursor would skip the late one. The
//! events of one aggregate are written by transactions that follow each other (an order is
//! placed before it is cancelled), so id order is their order.

use sqlx::AnyConnection;
use surge_domain::Event;

use crate::{Database, PersistenceError};

/// Writes `event` in the caller's transaction.
pub(crate) async fn append(conn: &mut AnyConnection, event: &Event) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO outbox (topic, event_key, payload, created_at, event_id, user_id, applied_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(event.topic().suffix())
    .bind(event.key())
    .bind(event.to_json())
    .bind(event.occurred_at)
    .bind(&event.event_id)
    .bind(event.user_id)
    // An event about no member changes no page: written applied, it never enters the index of
    // rows the read model still has to apply.
    .bind(event.user_id.is_none().then_some(event.occurred_at))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// One event waiting to be relayed.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxRow {
    /// Position in the outbox.
    pub id: i64,
    /// Topic suffix ([`surge_domain::Topic::suffix`]).
    pub topic: String,
    /// Message key (the aggregate id).
    pub event_key: String,
    /// The envelope's JSON.
    pub payload: String,
}

/// How far the relay is behind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxLag {
    /// Events not yet published.
    pub rows: i64,
    /// Unix ms of the oldest of them.
    pub oldest_at: Option<i64>,
}

impl Database {
    /// Takes or renews the relay lease `name` for `holder` until `now + lease_ms`. Returns the
    /// lease's epoch when `holder` has it now, `None` when another holder's lease still runs.
    /// The epoch moves on whenever the lease changes hands.
    pub async fn take_relay_lease(
        &self,
        name: &str,
        holder: &str,
        now: i64,
        lease_ms: i64,
    ) -> Result<Option<i64>, PersistenceError> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO outbox_relay_lease (name, holder, epoch, lease_until) VALUES ($1, $2, 0, 0) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(holder)
        .execute(&mut *tx)
        .await?;
        let epoch: Option<(i64,)> = sqlx::query_as(
            "UPDATE outbox_relay_lease SET \
               epoch = CASE WHEN holder = $2 AND lease_until >= $3 THEN epoch ELSE epoch + 1 END, \
               holder = $2, lease_until = $4 \
             WHERE name = $1 AND (holder = $2 OR lease_until < $3) RETURNING epoch",
        )
        .bind(name)
        .bind(holder)
        .bind(now)
        .bind(now + lease_ms)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(epoch.map(|(e,)| e))
    }

    /// Gives the relay lease up (graceful stop), so another node need not wait for it to end.
    pub async fn release_relay_lease(
        &self,
        name: &str,
        holder: &str,
    ) -> Result<(), PersistenceError> {
        sqlx::query(
            "UPDATE outbox_relay_lease SET lease_until = 0 WHERE name = $1 AND holder = $2",
        )
        .bind(name)
        .bind(holder)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Up to `limit` unpublished events, oldest first.
    pub async fn unpublished_events(&self, limit: i64) -> Result<Vec<OutboxRow>, PersistenceError> {
        Ok(sqlx::query_as(
            "SELECT id, topic, event_key, payload FROM outbox \
             WHERE published_at IS NULL ORDER BY id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }

    /// Marks events published (the broker acknowledged them).
    pub async fn mark_published(&self, ids: &[i64], now: i64) -> Result<(), PersistenceError> {
        if ids.is_empty() {
            return Ok(());
        }
        let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
        // The ids are integers we read ourselves; nothing from a client is spliced in.
        let mut tx = self.begin_write().await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE outbox SET published_at = $1 WHERE id IN ({list}) AND published_at IS NULL"
        )))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Deletes events published before `before`. Returns how many outbox rows went.
    pub async fn purge_published(&self, before: i64) -> Result<u64, PersistenceError> {
        let mut tx = self.begin_write().await?;
        let purged =
            sqlx::query("DELETE FROM outbox WHERE published_at IS NOT NULL AND published_at < $1")
                .bind(before)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        tx.commit().await?;
        Ok(purged)
    }

    /// Events waiting to be relayed.
    pub async fn outbox_lag(&self) -> Result<OutboxLag, PersistenceError> {
        let (rows, oldest_at): (i64, Option<i64>) = sqlx::query_as(
            "SELECT COUNT(*), MIN(created_at) FROM outbox WHERE published_at IS NULL",
        )
        .fetch_one(self.pool())
        .await?;
        Ok(OutboxLag { rows, oldest_at })
    }

    /// Every outbox row's envelope, oldest first (tests and tools).
    pub async fn outbox_events(&self) -> Result<Vec<Event>, PersistenceError> {
        let rows: Vec<(String,)> = sqlx::query_as("SELECT payload FROM outbox ORDER BY id")
            .fetch_all(self.pool())
            .await?;
        rows.into_iter()
            .map(|(p,)| Event::from_json(&p).map_err(|e| PersistenceError::Corrupt(e.to_string())))
            .collect()
    }
}
