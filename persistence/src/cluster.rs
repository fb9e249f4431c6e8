//! The cluster's durable state: members with heartbeats, and one lease per stock shard.
//!
//! Invariant protected: **one owner per item**. An item belongs to shard
//! `item_id % shard_count` ([`shard_of`]). A node serves a shard only while it holds the shard's
//! lease; every change of hands moves the shard's **epoch** on, and taking a shard over bumps
//! the allotment epoch of every item in it in the same transaction, so whatever the previous
//! owner still writes under its old epochs changes zero rows ([`crate::stock`]). Starting an
//! item's stock actor (the claim) is itself conditioned on the shard lease
//! ([`Database::claim_allotment_in_shard`]).
//!
//! Lease times are the **database's clock**: a node never compares its own clock with another
//! node's, only measures on its own monotonic clock how long it may still serve (see the
//! cluster crate), so only clock *rate* drift matters, not offsets.

use sqlx::Row as _;

use crate::{Backend, Database, PersistenceError};

/// The shard an item (or coupon) belongs to: a stable function of its id.
pub fn shard_of(id: i64, shard_count: i64) -> i64 {
    id.rem_euclid(shard_count.max(1))
}

/// A member row as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRow {
    /// `SURGE_NODE_ID`.
    pub node_id: String,
    /// Where peers reach it.
    pub advertise_addr: String,
    /// `UP` or `LEAVING` as the node wrote it (the reader derives `SUSPECT`/`DOWN` from age).
    pub state: String,
    /// Unix ms (database clock).
    pub started_at: i64,
    /// Unix ms (database clock).
    pub heartbeat_at: i64,
}

/// A shard lease as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRow {
    /// Shard number.
    pub shard: i64,
    /// Owner node, `None` when free.
    pub owner: Option<String>,
    /// Moves on at every change of hands.
    pub epoch: i64,
    /// Unix ms (database clock).
    pub lease_until: i64,
}

/// Everything a node needs to decide its next lease moves, read at one moment.
#[derive(Debug, Clone)]
pub struct ClusterSnapshot {
    /// The database clock when read (Unix ms).
    pub db_now: i64,
    /// Every member row, by node id.
    pub members: Vec<MemberRow>,
    /// Every shard lease, by shard.
    pub leases: Vec<LeaseRow>,
}

/// A lease the caller holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldLease {
    /// Shard.
    pub shard: i64,
    /// Its epoch.
    pub epoch: i64,
}

/// What a stock actor's claim must prove: its node holds the item's shard under this epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardFence {
    /// The item's shard.
    pub shard: i64,
    /// The node that holds it.
    pub owner: String,
    /// The lease's epoch.
    pub epoch: i64,
}

/// Why a node may not join.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The cluster was first started with another number of shards.
    #[error("the cluster has {recorded} shards; this node was started with {configured}")]
    ShardCountMismatch {
        /// What the database records.
        recorded: i64,
        /// What this node was given.
        configured: i64,
    },
    /// Another live process heartbeats this node id.
    #[error("node id {0} is in use by a live node")]
    DuplicateNode(String),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] PersistenceError),
}

/// The database clock in Unix ms, as an SQL expression of `backend`.
const fn db_now_sql(backend: Backend) -> &'static str {
    match backend {
        Backend::Postgres => "(CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT))",
        Backend::Sqlite => "(CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))",
    }
}

/// Most shard rows created by one statement.
const SHARD_ROWS_PER_STATEMENT: i64 = 512;

impl Database {
    /// The database clock in Unix ms, as an SQL expression.
    fn db_now(&self) -> &'static str {
        db_now_sql(self.backend())
    }

    /// Records the shard count at the cluster's first start (and creates the lease rows);
    /// refuses a node started with another count.
    pub async fn fix_shard_count(&self, shards: i64) -> Result<(), JoinError> {
        let mut tx = self.begin_write().await.map_err(PersistenceError::from)?;
        sqlx::query(
            "INSERT INTO cluster_meta (name, value) VALUES ('shards', $1) ON CONFLICT (name) DO NOTHING",
        )
        .bind(shards)
        .execute(&mut *tx)
        .await
        .map_err(PersistenceError::from)?;
        let (recorded,): (i64,) =
            sqlx::query_as("SELECT value FROM cluster_meta WHERE name = 'shards'")
                .fetch_one(&mut *tx)
                .await
                .map_err(PersistenceError::from)?;
        if recorded != shards {
            return Err(JoinError::ShardCountMismatch {
                recorded,
                configured: shards,
            });
        }
        let mut start = 0;
        while start < shards {
            let end = (start + SHARD_ROWS_PER_STATEMENT).min(shards);
            let values: Vec<String> = (start..end).map(|s| format!("({s}, NULL, 0, 0)")).collect();
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO shard_leases (shard, owner, epoch, lease_until) VALUES {} \
                 ON CONFLICT (shard) DO NOTHING",
                values.join(", ")
            )))
            .execute(&mut *tx)
            .await
            .map_err(PersistenceError::from)?;
            start = end;
        }
        tx.commit().await.map_err(PersistenceError::from)?;
        Ok(())
    }

    /// Joins as `node_id`: takes the member row unless another process heartbeated it within
    /// `lease_ms`, and frees the leases a previous process of this node id left (their
    /// allotments were reclaimed at start; a later take moves each epoch on).
    pub async fn join_cluster(
        &self,
        node_id: &str,
        advertise_addr: &str,
        incarnation: &str,
        lease_ms: i64,
    ) -> Result<(), JoinError> {
        let now = self.db_now();
        let mut tx = self.begin_write().await.map_err(PersistenceError::from)?;
        let taken = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO cluster_members \
               (node_id, advertise_addr, incarnation, state, started_at, heartbeat_at) \
             VALUES ($1, $2, $3, 'UP', {now}, {now}) \
             ON CONFLICT (node_id) DO UPDATE SET advertise_addr = $2, incarnation = $3, \
               state = 'UP', started_at = {now}, heartbeat_at = {now} \
             WHERE cluster_members.heartbeat_at < {now} - $4"
        )))
        .bind(node_id)
        .bind(advertise_addr)
        .bind(incarnation)
        .bind(lease_ms)
        .execute(&mut *tx)
        .await
        .map_err(PersistenceError::from)?
        .rows_affected();
        if taken == 0 {
            return Err(JoinError::DuplicateNode(node_id.to_owned()));
        }
        sqlx::query("UPDATE shard_leases SET owner = NULL, lease_until = 0 WHERE owner = $1")
            .bind(node_id)
            .execute(&mut *tx)
            .await
            .map_err(PersistenceError::from)?;
        tx.commit().await.map_err(PersistenceError::from)?;
        Ok(())
    }

    /// Heartbeats this process's member row with `state` (`UP` or `LEAVING`); `false` when
    /// the row belongs to another process now (this one was taken for dead).
    pub async fn heartbeat(
        &self,
        node_id: &str,
        incarnation: &str,
        state: &str,
    ) -> Result<bool, PersistenceError> {
        let now = self.db_now();
        let n = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE cluster_members SET heartbeat_at = {now}, state = $3 \
             WHERE node_id = $1 AND incarnation = $2"
        )))
        .bind(node_id)
        .bind(incarnation)
        .bind(state)
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Leaves for good (graceful stop, after the leases were released): the row reads `DOWN`
    /// at once and the node id is free for a new process.
    pub async fn leave_cluster(
        &self,
        node_id: &str,
        incarnation: &str,
    ) -> Result<(), PersistenceError> {
        sqlx::query(
            "UPDATE cluster_members SET heartbeat_at = 0, state = 'DOWN' \
             WHERE node_id = $1 AND incarnation = $2",
        )
        .bind(node_id)
        .bind(incarnation)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Members and leases, with the database clock.
    pub async fn cluster_snapshot(&self) -> Result<ClusterSnapshot, PersistenceError> {
        let (db_now,): (i64,) =
            sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {}", self.db_now())))
                .fetch_one(self.pool())
                .await?;
        let members = sqlx::query(
            "SELECT node_id, advertise_addr, state, started_at, heartbeat_at \
             FROM cluster_members ORDER BY node_id",
        )
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(|r| {
            Ok(MemberRow {
                node_id: r.try_get(0)?,
                advertise_addr: r.try_get(1)?,
                state: r.try_get(2)?,
                started_at: r.try_get(3)?,
                heartbeat_at: r.try_get(4)?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let leases =
            sqlx::query("SELECT shard, owner, epoch, lease_until FROM shard_leases ORDER BY shard")
                .fetch_all(self.pool())
                .await?
                .iter()
                .map(|r| {
                    Ok(LeaseRow {
                        shard: r.try_get(0)?,
                        owner: r.try_get(1)?,
                        epoch: r.try_get(2)?,
                        lease_until: r.try_get(3)?,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok(ClusterSnapshot {
            db_now,
            members,
            leases,
        })
    }

    /// Takes a free or expired shard for `node_id` with a new epoch, and in the same
    /// transaction gives every unit of the shard's allotments back to the items and moves
    /// their epochs on: whatever the previous owner still writes is fenced, and its unsold
    /// allotments are reconciled (an allotment holds exactly the units no order has taken;
    /// an order takes its units out of it in the transaction that writes the order).
    /// `None` when someone else holds it.
    pub async fn take_shard(
        &self,
        shard: i64,
        shard_count: i64,
        node_id: &str,
        lease_ms: i64,
    ) -> Result<Option<HeldLease>, PersistenceError> {
        let now = self.db_now();
        let mut tx = self.begin_write().await?;
        let taken: Option<(i64,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "UPDATE shard_leases SET owner = $1, epoch = epoch + 1, lease_until = {now} + $2 \
             WHERE shard = $3 AND (owner IS NULL OR lease_until < {now}) RETURNING epoch"
        )))
        .bind(node_id)
        .bind(lease_ms)
        .bind(shard)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((epoch,)) = taken else {
            return Ok(None);
        };
        let in_shard = "item_id % $2 = $3";
        let ms = crate::now_millis();
        // Lock first: an order write of the old owner either committed (its units are gone
        // from the allotment) or waits and is then fenced by the new epoch.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE stock_allotments SET updated_at = $1 WHERE {in_shard}"
        )))
        .bind(ms)
        .bind(shard_count)
        .bind(shard)
        .execute(&mut *tx)
        .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE items SET available = available + \
               (SELECT units FROM stock_allotments a WHERE a.item_id = items.id), updated_at = $1 \
             WHERE id IN (SELECT item_id FROM stock_allotments WHERE {in_shard} AND units > 0)"
        )))
        .bind(ms)
        .bind(shard_count)
        .bind(shard)
        .execute(&mut *tx)
        .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE stock_allotments SET units = 0, epoch = epoch + 1, owner = $4, updated_at = $1 \
             WHERE {in_shard}"
        )))
        .bind(ms)
        .bind(shard_count)
        .bind(shard)
        .bind(node_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(HeldLease { shard, epoch }))
    }

    /// Renews every lease `node_id` holds, in one statement; returns them. A lease missing
    /// from the answer was taken by another node.
    pub async fn renew_shards(
        &self,
        node_id: &str,
        lease_ms: i64,
    ) -> Result<Vec<HeldLease>, PersistenceError> {
        let now = self.db_now();
        let rows: Vec<(i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "UPDATE shard_leases SET lease_until = {now} + $2 WHERE owner = $1 \
             RETURNING shard, epoch"
        )))
        .bind(node_id)
        .bind(lease_ms)
        .fetch_all(self.pool())
        .await?;
        let mut held: Vec<HeldLease> = rows
            .into_iter()
            .map(|(shard, epoch)| HeldLease { shard, epoch })
            .collect();
        held.sort_by_key(|h| h.shard);
        Ok(held)
    }

    /// Frees a shard this node holds under `epoch` (rebalance, graceful leave), after its
    /// actors gave their allotments back: the next owner need not wait for the lease to end.
    pub async fn release_shard(
        &self,
        node_id: &str,
        lease: HeldLease,
    ) -> Result<bool, PersistenceError> {
        let n = sqlx::query(
            "UPDATE shard_leases SET owner = NULL, lease_until = 0 \
             WHERE shard = $1 AND owner = $2 AND epoch = $3",
        )
        .bind(lease.shard)
        .bind(node_id)
        .bind(lease.epoch)
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(n == 1)
    }
}

/// Locks the shard lease row named by `fence` inside a transaction, if it is still the
/// owner's with a running lease; `false` otherwise (nothing locked).
pub(crate) async fn lock_lease(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
    fence: &ShardFence,
) -> Result<bool, sqlx::Error> {
    let now = db_now_sql(backend);
    let n = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE shard_leases SET epoch = epoch \
         WHERE shard = $1 AND owner = $2 AND epoch = $3 AND lease_until > {now}"
    )))
    .bind(fence.shard)
    .bind(&fence.owner)
    .bind(fence.epoch)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(n == 1)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::testing::ScratchDb;

    const LEASE_MS: i64 = 3_000;

    #[test]
    fn every_id_has_one_shard_in_range() {
        for id in [-7, 0, 1, 63, 64, 65, i64::MAX] {
            let s = shard_of(id, 64);
            assert!((0..64).contains(&s), "{id} → {s}");
        }
        assert_eq!(shard_of(65, 64), 1);
        assert_eq!(shard_of(5, 0), 0);
    }

    #[tokio::test]
    async fn the_shard_count_is_fixed_at_the_first_start() {
        let scratch = ScratchDb::sqlite().await.unwrap();
        scratch.db.fix_shard_count(8).await.unwrap();
        scratch.db.fix_shard_count(8).await.unwrap();
        let err = scratch.db.fix_shard_count(16).await.unwrap_err();
        assert!(matches!(
            err,
            JoinError::ShardCountMismatch {
                recorded: 8,
                configured: 16
            }
        ));
        assert_eq!(scratch.db.cluster_snapshot().await.unwrap().leases.len(), 8);
    }

    #[tokio::test]
    async fn a_live_node_id_cannot_join_twice() {
        let scratch = ScratchDb::sqlite().await.unwrap();
        let db = &scratch.db;
        db.fix_shard_count(4).await.unwrap();
        db.join_cluster("a", "127.0.0.1:1", "first", LEASE_MS)
            .await
            .unwrap();
        let err = db
            .join_cluster("a", "127.0.0.1:2", "second", LEASE_MS)
            .await
            .unwrap_err();
        assert!(matches!(err, JoinError::DuplicateNode(_)));
        assert!(db.heartbeat("a", "first", "UP").await.unwrap());
        assert!(!db.heartbeat("a", "second", "UP").await.unwrap());
        // After a graceful leave the id is free.
        db.leave_cluster("a", "first").await.unwrap();
        db.join_cluster("a", "127.0.0.1:2", "second", LEASE_MS)
            .await
            .unwrap();
        assert!(!db.heartbeat("a", "first", "UP").await.unwrap());
    }

    #[tokio::test]
    async fn a_held_shard_is_not_taken_and_a_take_over_fences_the_old_allotments() {
        let scratch = ScratchDb::sqlite().await.unwrap();
        let db = &scratch.db;
        db.fix_shard_count(4).await.unwrap();
        let item = scratch.item(100, 50).await.unwrap();
        let shard = shard_of(item, 4);
        let first = db
            .take_shard(shard, 4, "a", LEASE_MS)
            .await
            .unwrap()
            .unwrap();
        assert!(
            db.take_shard(shard, 4, "b", LEASE_MS)
                .await
                .unwrap()
                .is_none()
        );
        // "a" claims the item under its lease and checks 20 units out.
        let fence_a = ShardFence {
            shard,
            owner: "a".into(),
            epoch: first.epoch,
        };
        let claim = db
            .claim_allotment_in_shard(item, "a", Some(&fence_a))
            .await
            .unwrap()
            .unwrap();
        db.check_out_units(item, claim.epoch, 20).await.unwrap();
        // "a" releases; "b" takes the shard with a newer epoch and reclaims the 20 units.
        assert!(db.release_shard("a", first).await.unwrap());
        let second = db
            .take_shard(shard, 4, "b", LEASE_MS)
            .await
            .unwrap()
            .unwrap();
        assert!(second.epoch > first.epoch);
        let (_, available) = db.price_and_available(item).await.unwrap().unwrap();
        assert_eq!(available, 50, "the old owner's unsold allotment went back");
        // The old owner's item epoch is fenced, and its shard fence refuses a new claim.
        assert!(matches!(
            db.check_out_units(item, claim.epoch, 5).await,
            Err(PersistenceError::Conflict)
        ));
        assert!(matches!(
            db.claim_allotment_in_shard(item, "a", Some(&fence_a)).await,
            Err(PersistenceError::Conflict)
        ));
        // The renewal names only the leases still held.
        assert_eq!(db.renew_shards("a", LEASE_MS).await.unwrap(), vec![]);
        assert_eq!(db.renew_shards("b", LEASE_MS).await.unwrap(), vec![second]);
    }
}
