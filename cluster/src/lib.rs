//! The cluster: many nodes on one PostgreSQL, one owner per item at a time.
//!
//! - [`lease`]: [`ShardLease`], membership (a heartbeat row per node) and the shard leases with
//!   epochs, taken and handed over for a fair share per live member;
//! - [`view`]: [`ClusterView`], what this node knows now: the shards it serves (and until when,
//!   by its own clock), who owns the others;
//! - [`rpc`]: the internal listener, which serves forwarded stock operations to this node's
//!   actors, authenticated by the cluster secret;
//! - [`peers`]: [`Peers`], the batching client of the other nodes' listeners, a breaker each;
//! - [`routed`]: [`RoutedStock`], the stock path of a cluster node: local actors for owned
//!   items, the owner's for the rest;
//! - [`coupons`]: [`RoutedCoupons`], coupon issues and waiting rooms on each coupon's owner.
//!
//! Everything cross-node goes through the database (leases, fencing, reservations) or the
//! internal listener; there is no gossip. See `docs/ARCHITECTURE.md`.

pub mod coupons;
pub mod lease;
pub mod peers;
pub mod routed;
pub mod rpc;
pub mod view;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use secrecy::SecretString;
use surge_actors::{CouponActors, StockActors};
use surge_persistence::Database;
use surge_persistence::cluster::JoinError;
use surge_supervisors::CircuitRegistry;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use coupons::RoutedCoupons;
pub use lease::{Identity, ShardLease};
pub use peers::Peers;
pub use routed::RoutedStock;
pub use rpc::RpcStats;
pub use view::ClusterView;

/// A node's cluster settings (`SURGE_CLUSTER_*`, `SURGE_SHARDS`, `SURGE_LEASE_MS`).
#[derive(Debug)]
pub struct ClusterSettings {
    /// `SURGE_NODE_ID`.
    pub node_id: String,
    /// `SURGE_CLUSTER_ADDR`: the internal listener.
    pub listen: SocketAddr,
    /// `SURGE_CLUSTER_ADVERTISE_ADDR`: how peers reach it (defaults to `listen`).
    pub advertise: Option<String>,
    /// `SURGE_CLUSTER_SECRET`.
    pub secret: SecretString,
    /// `SURGE_SHARDS`.
    pub shards: i64,
    /// `SURGE_LEASE_MS`.
    pub lease: Duration,
}

/// Why a node could not join.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Refused by the cluster's records (shard count, duplicate id) or the database failed.
    #[error(transparent)]
    Join(#[from] JoinError),
    /// The internal listener could not be bound.
    #[error("cluster listener: {0}")]
    Listen(std::io::Error),
    /// The peer client could not be built.
    #[error("cluster client: {0}")]
    Client(String),
}

impl ClusterError {
    /// Whether the node was refused by a setting (exit 2) rather than a failure.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Self::Join(JoinError::ShardCountMismatch { .. } | JoinError::DuplicateNode(_))
        )
    }
}

/// A node that joined: its view, identity and bound internal listener. Stock actors are
/// started next (with the view as their ownership), then [`ClusterNode::start`].
#[derive(Debug)]
pub struct Joined {
    /// This node's view (no shard held yet).
    pub view: ClusterView,
    identity: Identity,
    listener: TcpListener,
    secret: SecretString,
}

/// How often a node that found its id live looks again, while waiting for a crashed
/// predecessor's heartbeat to age past the lease.
const JOIN_RETRY: Duration = Duration::from_millis(250);

/// Joins the cluster recorded in `db`: fixes (or checks) the shard count, binds the internal
/// listener and takes this node id's member row. A row heartbeated by another live process
/// is waited on for one lease (a crashed predecessor stops heartbeating), then refused.
pub async fn join(db: &Database, settings: ClusterSettings) -> Result<Joined, ClusterError> {
    db.fix_shard_count(settings.shards).await?;
    let listener = TcpListener::bind(settings.listen)
        .await
        .map_err(ClusterError::Listen)?;
    let advertise = match settings.advertise {
        Some(addr) => addr,
        None => listener
            .local_addr()
            .map_err(ClusterError::Listen)?
            .to_string(),
    };
    let identity = Identity {
        node_id: settings.node_id.clone(),
        incarnation: uuid::Uuid::new_v4().to_string(),
    };
    let lease_ms = i64::try_from(settings.lease.as_millis()).unwrap_or(i64::MAX);
    let give_up = tokio::time::Instant::now() + settings.lease + JOIN_RETRY;
    loop {
        match db
            .join_cluster(
                &identity.node_id,
                &advertise,
                &identity.incarnation,
                lease_ms,
            )
            .await
        {
            Ok(()) => break,
            Err(JoinError::DuplicateNode(_)) if tokio::time::Instant::now() < give_up => {
                tokio::time::sleep(JOIN_RETRY).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    tracing::info!(node = %identity.node_id, %advertise, shards = settings.shards, "joined the cluster");
    Ok(Joined {
        view: ClusterView::new(
            &settings.node_id,
            &advertise,
            settings.shards,
            settings.lease,
        ),
        identity,
        listener,
        secret: settings.secret,
    })
}

/// A running cluster node: lease loop, internal listener, routed stock path.
#[derive(Debug, Clone)]
pub struct ClusterNode {
    view: ClusterView,
    lease: ShardLease,
    routed: RoutedStock,
    coupons: RoutedCoupons,
    local_coupons: CouponActors,
    peers: Peers,
    rpc_stats: Arc<RpcStats>,
    listener: Arc<std::sync::Mutex<Option<TcpListener>>>,
    secret: Arc<SecretString>,
    stock: StockActors,
}

impl ClusterNode {
    /// Wires the node (nothing runs until [`Self::run`]).
    pub fn start(
        db: Database,
        joined: Joined,
        stock: StockActors,
        coupons: CouponActors,
        circuits: CircuitRegistry,
    ) -> Result<Self, ClusterError> {
        let peers = Peers::new(joined.secret.clone(), circuits).map_err(ClusterError::Client)?;
        let routed = RoutedStock::new(
            stock.clone(),
            joined.view.clone(),
            peers.clone(),
            db.clone(),
        );
        let routed_coupons = RoutedCoupons::new(
            coupons.clone(),
            routed::OwnerRoute {
                view: joined.view.clone(),
                peers: peers.clone(),
            },
        );
        let lease = ShardLease::new(db, joined.view.clone(), stock.clone(), joined.identity);
        Ok(Self {
            view: joined.view,
            lease,
            routed,
            coupons: routed_coupons,
            local_coupons: coupons,
            peers,
            rpc_stats: Arc::default(),
            listener: Arc::new(std::sync::Mutex::new(Some(joined.listener))),
            secret: Arc::new(joined.secret),
            stock,
        })
    }

    /// The stock path for sagas.
    pub fn routed(&self) -> RoutedStock {
        self.routed.clone()
    }

    /// Coupon issues and standings, answered on each coupon's owner.
    pub fn coupons(&self) -> &RoutedCoupons {
        &self.coupons
    }

    /// This node's view.
    pub fn view(&self) -> &ClusterView {
        &self.view
    }

    /// The internal listener's address.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listener
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// Runs the lease loop until `stop`, and the internal listener until `listener_stop`
    /// (which the node sends after it handed its shards over, so peers' forwards keep being
    /// answered while it leaves). `evicted` is called if another process takes this node id.
    pub fn run(
        &self,
        stop: watch::Receiver<bool>,
        mut listener_stop: watch::Receiver<bool>,
        evicted: impl Fn() + Send + 'static,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = vec![tokio::spawn(self.lease.clone().run(stop, evicted))];
        let taken = self
            .listener
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(listener) = taken {
            let router = rpc::router(
                self.view.clone(),
                self.stock.clone(),
                self.local_coupons.clone(),
                &self.secret,
                self.rpc_stats.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let stopped = async move {
                    let _ = listener_stop.wait_for(|s| *s).await;
                };
                if let Err(e) = axum::serve(listener, router)
                    .with_graceful_shutdown(stopped)
                    .await
                {
                    tracing::warn!(error = %e, "the cluster listener failed");
                }
            }));
        }
        tasks
    }

    /// Graceful leave: every shard handed over (allotments given back, leases freed).
    pub async fn leave(&self) {
        self.lease.leave().await;
    }

    /// `GET /api/v1/admin/cluster`: the view plus forwarding counters.
    pub fn admin(&self) -> serde_json::Value {
        let mut body = self.view.admin();
        let peers = self.peers.stats();
        body["forwarding"] = serde_json::json!({
            "opsSent": peers.ops_sent.load(Ordering::Relaxed),
            "batchesSent": peers.batches_sent.load(Ordering::Relaxed),
            "batchesFailed": peers.batches_failed.load(Ordering::Relaxed),
            "batchesServed": self.rpc_stats.batches_served.load(Ordering::Relaxed),
            "holdsServedForPeers": self.rpc_stats.holds_served.load(Ordering::Relaxed),
            "couponOpsServedForPeers": self.rpc_stats.coupon_ops_served.load(Ordering::Relaxed),
            "notOwnerAnswers": self.rpc_stats.not_owner.load(Ordering::Relaxed),
            "refusedUnauthenticated": self.rpc_stats.refused_unauthenticated.load(Ordering::Relaxed),
        });
        body
    }
}
