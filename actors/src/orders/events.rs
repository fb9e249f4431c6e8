//! Order status changes as they are committed, for SSE streams and for requests waiting on a
//! saga. In-process only: a subscriber that lags re-reads the order from the database.

use surge_domain::OrderStatus;

/// A status change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderEvent {
    /// Order.
    pub order_id: i64,
    /// New status.
    pub status: OrderStatus,
}
