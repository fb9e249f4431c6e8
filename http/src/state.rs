use std::sync::Arc;
use std::time::Duration;

use surge_actors::events::{MyPageProjection, RelayStats};
use surge_actors::{CouponActors, OrderSagas, StockActors};
use surge_persistence::Database;
use surge_persistence::committer::{CommitStats, GroupCommitter};
use surge_supervisors::{CircuitBreaker, CircuitRegistry};
use tokio::sync::Semaphore;

use crate::auth::AuthService;
use crate::item_cache::LastKnownItems;
use crate::metrics::Metrics;

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
}

/// The order machinery as the HTTP layer sees it.
#[derive(Debug, Clone)]
pub struct OrderServices {
    /// Saga starter.
    pub sagas: OrderSagas,
    /// Stock actors.
    pub stock: StockActors,
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
