//! [`ShardLease`]: the loop that keeps this node a member and its fair share of shards.
//!
//! Every tick (a sixth of the lease): heartbeat, renew every held lease in one statement, read
//! members and leases, then take free or expired shards up to this node's fair share, or hand
//! extras over (their actors give their allotments back first). A shard whose renewal did not
//! come back in time stops being served by this node's own clock, before the lease ends in
//! the database (see [`SAFETY_MARGIN_DIVISOR`]).

use std::sync::Arc;
use std::time::Duration;

use surge_actors::StockActors;
use surge_persistence::Database;
use surge_persistence::cluster::{ClusterSnapshot, HeldLease};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::view::ClusterView;

/// Ticks per lease: a lease survives five missed ticks before it ends.
pub const TICKS_PER_LEASE: u32 = 6;

/// The safety margin is this fraction of the lease (1 s of the default 3 s). A node stops
/// serving a shard at (instant it *sent* the renewal) + lease − margin by its own monotonic
/// clock, while the database ends the lease at (its clock when it *ran* the renewal) + lease,
/// which is later. The margin absorbs clock rate drift between the node and the database and
/// the time between a "do I own it" check and the write it guards (writes are fenced by
/// epochs anyway, so a check that comes late can cost a refused write, never an oversell).
pub const SAFETY_MARGIN_DIVISOR: u32 = 3;

/// A member whose heartbeat is older than this many ticks is shown `SUSPECT`.
const SUSPECT_AFTER_TICKS: u32 = 3;

/// Who this node is in the cluster.
#[derive(Debug, Clone)]
pub struct Identity {
    /// `SURGE_NODE_ID`.
    pub node_id: String,
    /// A random id of this process, so a second process with the same node id is told apart.
    pub incarnation: String,
}

/// The lease loop's handle.
#[derive(Debug, Clone)]
pub struct ShardLease {
    db: Database,
    view: ClusterView,
    stock: StockActors,
    identity: Arc<Identity>,
    leaving: watch::Sender<bool>,
}

impl ShardLease {
    /// A loop for `view`'s node (not started).
    pub fn new(db: Database, view: ClusterView, stock: StockActors, identity: Identity) -> Self {
        Self {
            db,
            view,
            stock,
            identity: Arc::new(identity),
            leaving: watch::Sender::new(false),
        }
    }

    fn lease_ms(&self) -> i64 {
        i64::try_from(self.view.lease().as_millis()).unwrap_or(i64::MAX)
    }

    fn margin(&self) -> Duration {
        self.view.lease() / SAFETY_MARGIN_DIVISOR
    }

    fn tick(&self) -> Duration {
        self.view.lease() / TICKS_PER_LEASE
    }

    /// Runs until `stop` says so (then returns without handing anything over: see
    /// [`Self::leave`]). `evicted` is told when another process took this node id over.
    pub async fn run(self, mut stop: watch::Receiver<bool>, evicted: impl Fn() + Send) {
        let mut ticker = tokio::time::interval(self.tick());
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            match self.round().await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::error!(node = %self.identity.node_id,
                        "another process took this node id over; serving no shard");
                    self.lose(self.view.held().into_iter().map(|(s, _)| s).collect());
                    evicted();
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "cluster round failed"),
            }
            let expired = self.view.drop_expired();
            if !expired.is_empty() {
                tracing::warn!(
                    ?expired,
                    "shard leases not renewed in time: stopped serving them"
                );
                self.lose(expired);
            }
        }
    }

    /// One round; `Ok(false)` when this process no longer holds its member row.
    async fn round(&self) -> Result<bool, surge_persistence::PersistenceError> {
        let leaving = *self.leaving.borrow();
        let state = if leaving { "LEAVING" } else { "UP" };
        let sent_at = Instant::now();
        if !self
            .db
            .heartbeat(&self.identity.node_id, &self.identity.incarnation, state)
            .await?
        {
            return Ok(false);
        }
        let renewed = self
            .db
            .renew_shards(&self.identity.node_id, self.lease_ms())
            .await?;
        let mut lost = Vec::new();
        for (shard, epoch) in self.view.held() {
            match renewed.iter().find(|h| h.shard == shard) {
                Some(h) if h.epoch == epoch => self.view.hold(shard, epoch, sent_at, self.margin()),
                _ => {
                    self.view.drop_shard(shard);
                    lost.push(shard);
                }
            }
        }
        if !lost.is_empty() {
            tracing::warn!(?lost, "shards taken by another node");
            self.lose(lost);
        }
        let snapshot = self.db.cluster_snapshot().await?;
        self.view
            .observe(&snapshot, self.tick() * SUSPECT_AFTER_TICKS);
        if !leaving {
            self.rebalance(&snapshot).await?;
        }
        Ok(true)
    }

    /// Takes free shards up to this node's fair share, or hands extras over.
    async fn rebalance(
        &self,
        snapshot: &ClusterSnapshot,
    ) -> Result<(), surge_persistence::PersistenceError> {
        let target = fair_share(snapshot, &self.identity.node_id, self.lease_ms());
        let held = self.view.held();
        if held.len() > target {
            for &(shard, epoch) in held.iter().rev().take(held.len() - target) {
                self.hand_over(HeldLease { shard, epoch }).await?;
            }
            return Ok(());
        }
        let mut want = target - held.len();
        // Start looking at a place of this node's own, so nodes joining together seldom
        // race for the same shard.
        let count = snapshot.leases.len();
        let start =
            usize::try_from(hash(&self.identity.node_id) % count.max(1) as u64).unwrap_or(0);
        for i in 0..count {
            if want == 0 {
                break;
            }
            let lease = &snapshot.leases[(start + i) % count];
            if lease.owner.is_some() && lease.lease_until >= snapshot.db_now {
                continue;
            }
            let sent_at = Instant::now();
            if let Some(taken) = self
                .db
                .take_shard(
                    lease.shard,
                    self.view.shard_count(),
                    &self.identity.node_id,
                    self.lease_ms(),
                )
                .await?
            {
                self.view
                    .hold(taken.shard, taken.epoch, sent_at, self.margin());
                tracing::info!(shard = taken.shard, epoch = taken.epoch, "took shard");
                want -= 1;
            }
        }
        Ok(())
    }

    /// Stops serving a held shard, lets its actors give their allotments back, and frees the
    /// lease for the next owner.
    async fn hand_over(&self, lease: HeldLease) -> Result<(), surge_persistence::PersistenceError> {
        self.view.drop_shard(lease.shard);
        let view = self.view.clone();
        self.stock
            .drain_items(|item| view.shard_of(item) == lease.shard)
            .await;
        self.db.release_shard(&self.identity.node_id, lease).await?;
        tracing::info!(shard = lease.shard, "handed shard over");
        Ok(())
    }

    /// Shards this node may no longer serve: their actors stop without writing.
    fn lose(&self, shards: Vec<i64>) {
        for shard in &shards {
            self.view.drop_shard(*shard);
        }
        let view = self.view.clone();
        self.stock
            .abandon_items(move |item| shards.contains(&view.shard_of(item)));
    }

    /// Graceful leave: shown `LEAVING`, every shard handed over, then the member row freed.
    pub async fn leave(&self) {
        self.leaving.send_replace(true);
        if let Err(e) = self
            .db
            .heartbeat(
                &self.identity.node_id,
                &self.identity.incarnation,
                "LEAVING",
            )
            .await
        {
            tracing::warn!(error = %e, "could not mark this node LEAVING");
        }
        for (shard, epoch) in self.view.held() {
            if let Err(e) = self.hand_over(HeldLease { shard, epoch }).await {
                tracing::warn!(shard, error = %e, "could not hand a shard over; it moves when its lease ends");
            }
        }
        if let Err(e) = self
            .db
            .leave_cluster(&self.identity.node_id, &self.identity.incarnation)
            .await
        {
            tracing::warn!(error = %e, "could not leave the cluster table");
        }
    }
}

/// This node's fair share: live members that are not leaving, sorted by id, split the shards
/// as evenly as they go (the first `shards % members` get one more).
pub fn fair_share(snapshot: &ClusterSnapshot, node_id: &str, lease_ms: i64) -> usize {
    if snapshot
        .members
        .iter()
        .any(|m| m.node_id == node_id && m.state == "LEAVING")
    {
        return 0;
    }
    let mut live: Vec<&str> = snapshot
        .members
        .iter()
        .filter(|m| m.state == "UP" && snapshot.db_now - m.heartbeat_at <= lease_ms)
        .map(|m| m.node_id.as_str())
        .collect();
    // This node counts itself even before its own heartbeat is seen.
    live.push(node_id);
    live.sort_unstable();
    live.dedup();
    let shards = snapshot.leases.len();
    let members = live.len();
    let index = live.iter().position(|n| *n == node_id).unwrap_or(0);
    shards / members + usize::from(index < shards % members)
}

/// A stable hash of a node id (FNV-1a), to spread where nodes start looking for shards.
fn hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use surge_persistence::cluster::{LeaseRow, MemberRow};

    fn snapshot(members: &[(&str, &str, i64)], shards: i64) -> ClusterSnapshot {
        ClusterSnapshot {
            db_now: 10_000,
            members: members
                .iter()
                .map(|(id, state, heartbeat_at)| MemberRow {
                    node_id: (*id).into(),
                    advertise_addr: String::new(),
                    state: (*state).into(),
                    started_at: 0,
                    heartbeat_at: *heartbeat_at,
                })
                .collect(),
            leases: (0..shards)
                .map(|shard| LeaseRow {
                    shard,
                    owner: None,
                    epoch: 0,
                    lease_until: 0,
                })
                .collect(),
        }
    }

    #[test]
    fn live_members_split_every_shard_between_them() {
        let s = snapshot(
            &[("a", "UP", 9_900), ("b", "UP", 9_900), ("c", "UP", 9_900)],
            64,
        );
        let shares: Vec<usize> = ["a", "b", "c"]
            .iter()
            .map(|n| fair_share(&s, n, 3_000))
            .collect();
        assert_eq!(shares, vec![22, 21, 21]);
        assert_eq!(shares.iter().sum::<usize>(), 64);
    }

    #[test]
    fn dead_and_leaving_members_get_no_share() {
        let s = snapshot(
            &[
                ("a", "UP", 9_900),
                ("b", "UP", 1_000),
                ("c", "LEAVING", 9_900),
            ],
            64,
        );
        assert_eq!(fair_share(&s, "a", 3_000), 64);
        assert_eq!(fair_share(&s, "c", 3_000), 0);
    }

    #[test]
    fn a_node_counts_itself_before_its_first_heartbeat_is_seen() {
        let s = snapshot(&[("a", "UP", 9_900)], 10);
        assert_eq!(fair_share(&s, "b", 3_000), 5);
        // "a" has not seen "b" yet: it keeps everything until it does.
        assert_eq!(fair_share(&s, "a", 3_000), 10);
    }
}
