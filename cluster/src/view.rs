//! [`ClusterView`]: what this node knows of the cluster right now: the shards it serves (each
//! with the instant, by its own monotonic clock, at which it must stop), who owns the others,
//! and the members. Written by the [`ShardLease`](crate::lease::ShardLease) loop, read on every
//! stock operation.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use serde::Serialize;
use surge_actors::ShardOwnership;
use surge_domain::time_fmt::rfc3339;
use surge_persistence::cluster::{ClusterSnapshot, ShardFence, shard_of};
use tokio::time::Instant;

/// A member as the admin page shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MemberView {
    /// `SURGE_NODE_ID`.
    pub node_id: String,
    /// Where peers reach it.
    pub cluster_addr: String,
    /// `UP`, `SUSPECT` (a heartbeat is late), `DOWN` (none within a lease) or `LEAVING`.
    pub state: &'static str,
    /// RFC 3339.
    pub last_heartbeat_at: String,
    /// Shards it holds a running lease on.
    pub shards_owned: usize,
}

/// A shard as the admin page shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ShardView {
    /// Shard number.
    pub shard: i64,
    /// Owner with a running lease, `None` when free or expired.
    pub owner: Option<String>,
    /// Lease epoch.
    pub epoch: i64,
    /// RFC 3339, `None` when free.
    pub lease_until: Option<String>,
}

/// A lease this node holds.
#[derive(Debug, Clone, Copy)]
struct Held {
    epoch: i64,
    /// This node stops serving the shard at this instant unless a renewal moves it on. It is
    /// the instant *before* the renewal was sent plus the lease minus the safety margin, so it
    /// falls before the lease ends in the database by at least the margin.
    serve_until: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    held: HashMap<i64, Held>,
    /// Per shard: owner with a running lease at the last snapshot.
    owners: Vec<Option<(String, i64)>>,
    /// Node id → advertise address.
    addrs: HashMap<String, String>,
    members: Vec<MemberView>,
    shards: Vec<ShardView>,
}

/// This node's view of the cluster. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ClusterView {
    node_id: Arc<str>,
    advertise_addr: Arc<str>,
    started_at: Arc<str>,
    shard_count: i64,
    lease: Duration,
    /// Concurrency decision: a std lock held for a map lookup, never across an await; read
    /// on every stock operation, written by the lease loop a few times a second.
    inner: Arc<RwLock<Inner>>,
}

impl ClusterView {
    /// An empty view (no shard held yet).
    pub fn new(node_id: &str, advertise_addr: &str, shard_count: i64, lease: Duration) -> Self {
        Self {
            node_id: node_id.into(),
            advertise_addr: advertise_addr.into(),
            started_at: rfc3339(surge_persistence::now_millis()).into(),
            shard_count,
            lease,
            inner: Arc::default(),
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Shards in the cluster.
    pub fn shard_count(&self) -> i64 {
        self.shard_count
    }

    /// The shard of an item.
    pub fn shard_of(&self, item_id: i64) -> i64 {
        shard_of(item_id, self.shard_count)
    }

    /// The lease length.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The epoch under which this node serves `shard` now, by its own clock.
    pub fn serves(&self, shard: i64) -> Option<i64> {
        let now = Instant::now();
        self.read()
            .held
            .get(&shard)
            .filter(|h| now < h.serve_until)
            .map(|h| h.epoch)
    }

    /// The owner of `shard` as last seen (this node included), with its address.
    pub fn owner_of(&self, shard: i64) -> Option<(String, String)> {
        if self.serves(shard).is_some() {
            return Some((self.node_id.to_string(), self.advertise_addr.to_string()));
        }
        let inner = self.read();
        let shard = usize::try_from(shard).ok()?;
        let (owner, _) = inner.owners.get(shard)?.as_ref()?;
        let addr = inner.addrs.get(owner)?;
        Some((owner.clone(), addr.clone()))
    }

    /// The address of a member.
    pub fn addr_of(&self, node_id: &str) -> Option<String> {
        self.read().addrs.get(node_id).cloned()
    }

    /// Shards held now (with their epochs).
    pub fn held(&self) -> Vec<(i64, i64)> {
        let mut held: Vec<(i64, i64)> = self
            .read()
            .held
            .iter()
            .map(|(s, h)| (*s, h.epoch))
            .collect();
        held.sort_unstable();
        held
    }

    /// A lease was taken (or renewed) under `epoch`; `sent_at` is when the statement was sent.
    pub(crate) fn hold(&self, shard: i64, epoch: i64, sent_at: Instant, margin: Duration) {
        let serve_until = sent_at + self.lease.saturating_sub(margin);
        self.write().held.insert(shard, Held { epoch, serve_until });
    }

    /// Stops serving `shard`; returns whether it was held.
    pub(crate) fn drop_shard(&self, shard: i64) -> bool {
        self.write().held.remove(&shard).is_some()
    }

    /// Shards whose serving time ran out (a renewal did not come back in time): dropped.
    pub(crate) fn drop_expired(&self) -> Vec<i64> {
        let now = Instant::now();
        let mut inner = self.write();
        let expired: Vec<i64> = inner
            .held
            .iter()
            .filter(|(_, h)| now >= h.serve_until)
            .map(|(s, _)| *s)
            .collect();
        for shard in &expired {
            inner.held.remove(shard);
        }
        expired
    }

    /// Takes in what the database says: owners, addresses and the admin view.
    pub(crate) fn observe(&self, snapshot: &ClusterSnapshot, suspect_after: Duration) {
        let lease_ms = i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX);
        let suspect_ms = i64::try_from(suspect_after.as_millis()).unwrap_or(i64::MAX);
        let owners: Vec<Option<(String, i64)>> = snapshot
            .leases
            .iter()
            .map(|l| {
                l.owner
                    .clone()
                    .filter(|_| l.lease_until > snapshot.db_now)
                    .map(|o| (o, l.epoch))
            })
            .collect();
        let members = snapshot
            .members
            .iter()
            .map(|m| {
                let age = snapshot.db_now - m.heartbeat_at;
                let state = if age > lease_ms || m.state == "DOWN" {
                    "DOWN"
                } else if m.state == "LEAVING" {
                    "LEAVING"
                } else if age > suspect_ms {
                    "SUSPECT"
                } else {
                    "UP"
                };
                MemberView {
                    node_id: m.node_id.clone(),
                    cluster_addr: m.advertise_addr.clone(),
                    state,
                    last_heartbeat_at: rfc3339(m.heartbeat_at),
                    shards_owned: owners
                        .iter()
                        .filter(|o| o.as_ref().is_some_and(|(n, _)| *n == m.node_id))
                        .count(),
                }
            })
            .collect();
        let shards = snapshot
            .leases
            .iter()
            .map(|l| ShardView {
                shard: l.shard,
                owner: l.owner.clone().filter(|_| l.lease_until > snapshot.db_now),
                epoch: l.epoch,
                lease_until: l
                    .owner
                    .as_ref()
                    .filter(|_| l.lease_until > 0)
                    .map(|_| rfc3339(l.lease_until)),
            })
            .collect();
        let addrs = snapshot
            .members
            .iter()
            .map(|m| (m.node_id.clone(), m.advertise_addr.clone()))
            .collect();
        let mut inner = self.write();
        inner.owners = owners;
        inner.addrs = addrs;
        inner.members = members;
        inner.shards = shards;
    }

    /// `GET /api/v1/admin/cluster`.
    pub fn admin(&self) -> serde_json::Value {
        let inner = self.read();
        serde_json::json!({
            "node": {
                "nodeId": &*self.node_id,
                "clusterAddr": &*self.advertise_addr,
                "startedAt": &*self.started_at,
            },
            "shardCount": self.shard_count,
            "members": inner.members,
            "shards": inner.shards,
        })
    }

    /// `GET /api/v1/admin/cluster/items/{itemId}`.
    pub fn admin_item(&self, item_id: i64) -> serde_json::Value {
        let shard = self.shard_of(item_id);
        let (owner, epoch) = match self.serves(shard) {
            Some(epoch) => (Some(self.node_id.to_string()), Some(epoch)),
            None => {
                let inner = self.read();
                usize::try_from(shard)
                    .ok()
                    .and_then(|s| inner.owners.get(s).cloned().flatten())
                    .map_or((None, None), |(o, e)| (Some(o), Some(e)))
            }
        };
        serde_json::json!({
            "itemId": item_id,
            "shard": shard,
            "owner": owner,
            "epoch": epoch,
            "servedHere": self.serves(shard).is_some(),
        })
    }
}

impl ShardOwnership for ClusterView {
    fn fence_for(&self, item_id: i64) -> Option<ShardFence> {
        let shard = self.shard_of(item_id);
        self.serves(shard).map(|epoch| ShardFence {
            shard,
            owner: self.node_id.to_string(),
            epoch,
        })
    }
}
