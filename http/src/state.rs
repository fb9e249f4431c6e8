use std::sync::Arc;
use std::time::Duration;

use surge_actors::events::{MyPageProjection, RelayStats};
use surge_actors::{
    CouponActors, CouponError, IssueOutcome, OrderSagas, QueueStatus, StockActors, StockPath,
};
use surge_cluster::ClusterNode;
use surge_persistence::Database;
use surge_persistence::committer::{CommitStats, GroupCommitter};
use surge_supervisors::{CircuitBreaker, CircuitRegistry};
use tokio::sync::Semaphore;

use crate::auth::AuthService;
use crate::item_cache::LastKnownItems;
use crate::metrics::Metrics;
use crate::slots::Slots;

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The node's database.
    pub db: Database,
    /// Tokens, passwords, denylist.
    pub auth: Arc<AuthService>,
    /// Metric registry.
    pub metrics: Arc<Metrics>,
    /// Orders: sagas, stock actors and the writer behind them.
    pub orders: OrderServices,
    /// Coupon actors (and, in Redis mode, the store behind them).
    pub coupons: CouponActors,
    /// Item records last read, served while the database is down.
    pub items: Arc<LastKnownItems>,
    /// The outbox relay's figures.
    pub relay: Arc<RelayStats>,
    /// The my-page read model (main database or MongoDB).
    pub my_page: MyPageProjection,
    /// Which node this is, and its cluster (if any).
    pub node: NodeInfo,
    /// `SURGE_CORS_ORIGINS`: browser origins allowed to call the API (empty: CORS off).
    pub cors_origins: Arc<[String]>,
    /// Rate limits on login, sign-up, orders and coupon issues; one set per node, shared by
    /// every connection.
    pub limits: Arc<crate::limits::RateLimits>,
    /// `SURGE_BODY_TIMEOUT_MS`: a request body must arrive whole within this (408 otherwise).
    pub body_timeout: Duration,
    /// Order status streams (SSE) open on this node.
    pub streams: Arc<OrderStreams>,
}

/// Order status streams (SSE): each holds a connection and a subscription for as long as the
/// client keeps it, so they are capped per member and per node, and closed when idle.
#[derive(Debug)]
pub struct OrderStreams {
    /// Open streams per member (`SURGE_MAX_STREAMS_PER_MEMBER`) and on the node
    /// (`SURGE_MAX_STREAMS`).
    pub slots: Arc<Slots<i64>>,
    /// `SURGE_STREAM_IDLE_TIMEOUT_MS`: a stream whose order did not change for this long is
    /// closed (an `EventSource` reconnects and reads the current status first).
    pub idle_timeout: Duration,
}

/// Which node answers, for `x-surge-node` and the admin pages.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// `SURGE_NODE_ID`.
    pub node_id: Arc<str>,
    /// `SURGE_SHARDS`.
    pub shards: i64,
    /// When this process started (RFC 3339).
    pub started_at: Arc<str>,
    /// The cluster this node belongs to; `None` on a single node.
    pub cluster: Option<ClusterNode>,
}

/// The order machinery as the HTTP layer sees it.
#[derive(Debug, Clone)]
pub struct OrderServices {
    /// Saga starter.
    pub sagas: OrderSagas,
    /// Stock actors of this node.
    pub stock: StockActors,
    /// The stock path sagas use (in a cluster: routed to each item's owner).
    pub stock_path: Arc<dyn StockPath>,
    /// The group-commit writer.
    pub committer: GroupCommitter,
    /// Its counters.
    pub commit_stats: Arc<std::sync::Mutex<CommitStats>>,
    /// Every circuit breaker of the node.
    pub circuits: CircuitRegistry,
    /// The database's breaker: open means writes fail fast.
    pub db_breaker: Arc<CircuitBreaker>,
    /// Orders being worked on at once. A permit is taken per request and a full node answers
    /// 503 at once instead of queueing without bound.
    pub admission: Arc<Semaphore>,
    /// How long a client waits for a saga before getting 202 PROCESSING.
    pub answer_deadline: Duration,
}

impl AppState {
    /// Issues a coupon: on the coupon's owner in a cluster, else here.
    pub async fn issue_coupon(
        &self,
        coupon_id: i64,
        user_id: i64,
        key: Option<String>,
    ) -> Result<IssueOutcome, CouponError> {
        match &self.node.cluster {
            Some(cluster) => cluster.coupons().issue(coupon_id, user_id, key).await,
            None => self.coupons.issue(coupon_id, user_id, key).await,
        }
    }

    /// A member's standing in a coupon's waiting room: on the coupon's owner in a cluster.
    pub async fn coupon_status(
        &self,
        coupon_id: i64,
        user_id: i64,
    ) -> Result<QueueStatus, CouponError> {
        match &self.node.cluster {
            Some(cluster) => cluster.coupons().status(coupon_id, user_id).await,
            None => self.coupons.status(coupon_id, user_id).await,
        }
    }
}
