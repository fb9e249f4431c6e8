//! Stock: one [`StockActor`] per item sells its units in memory, one message at a time.
//!
//! Invariant protected: **no oversell**. An actor sells only units it has checked out of the
//! item row into its allotment, under its **epoch**, as in-memory holds; the order that got a
//! hold takes its units durably in its own write, fenced by that epoch
//! ([`surge_persistence::stock`] holds every fenced statement), so a hold from an owner that
//! lost the item is refused by the database and the order is not written.
//!
//! - [`actor`]: the actor (allotment check-out, holds, sold-out knowledge, passivation, drain);
//! - [`registry`]: [`StockActors`], the node's actors, started on first use and supervised;
//! - [`path`]: [`StockPath`], how an order line takes stock: the actors ([`StockActors`]) in
//!   production, or one of the conventional [`comparison`] strategies chosen at start for
//!   `surge bench compare`.

pub mod actor;
pub mod comparison;
pub mod path;
pub mod registry;

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use surge_persistence::cluster::ShardFence;

pub use actor::StockActor;
pub use comparison::{BaselineStock, StockStrategy};
pub use path::StockPath;
pub use registry::{StockActorView, StockActors};

/// Tuning of stock actors.
#[derive(Debug, Clone)]
pub struct StockConfig {
    /// While the item row was seen empty, a plain read (no lock, off the actor's handler) looks
    /// again this often: units can come back without this node hearing of it (reservations
    /// the sweeper expired, another node's cancellation). Releases this node makes wake the
    /// actor at once.
    pub sold_out_recheck: Duration,
    /// Fewest units checked out of the item row at a time (a hot item checks out about one
    /// second of sales at its recent rate, up to 100,000). Larger means fewer writes to the item row;
    /// smaller leaves more for other nodes. Everything unsold goes back on passivation.
    pub allotment_chunk: i64,
    /// An actor idle this long returns its allotment and stops.
    pub passivate_after: Duration,
    /// Most hold requests that may wait on one item. Beyond it the node answers 503
    /// instead of letting a queue grow without bound in front of a hot item.
    pub max_waiting_per_item: usize,
    /// Who owns allotments taken by this node.
    pub owner: String,
    /// In a cluster: which items this node may serve now (its shard leases). An actor starts
    /// only under a current lease, and its claim is conditioned on that lease in the database.
    /// `None`: a single node serves every item.
    pub ownership: Option<Arc<dyn ShardOwnership>>,
}

/// Which items a node of a cluster serves now (the cluster's view of its own shard leases).
pub trait ShardOwnership: Debug + Send + Sync + 'static {
    /// The lease under which this node serves `item_id`'s shard now, or `None` when it does
    /// not (another node owns it, or this node's lease may have ended by its own clock).
    fn fence_for(&self, item_id: i64) -> Option<ShardFence>;
}

impl Default for StockConfig {
    fn default() -> Self {
        Self {
            sold_out_recheck: Duration::from_millis(250),
            allotment_chunk: 256,
            passivate_after: Duration::from_secs(60),
            max_waiting_per_item: 10_000,
            owner: "node-1".into(),
            ownership: None,
        }
    }
}

/// Why a hold was not given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReserveError {
    /// Not enough units.
    #[error("out of stock")]
    OutOfStock,
    /// No such item.
    #[error("item not found")]
    ItemNotFound,
    /// Too much work is already waiting on this item.
    #[error("too many requests are waiting for this item")]
    Overloaded,
    /// The database failed or the owner changed, and nothing was written; retrying may succeed.
    #[error("stock unavailable: {0}")]
    Unavailable(String),
    /// No answer in time: the hold may or may not have been given, so it is not retried (a
    /// retry could hold the units twice) nor released; the order is refused, and the units
    /// are an undersell until the owner's allotment is given back.
    #[error("hold outcome unknown: {0}")]
    Undetermined(String),
}

#[cfg(test)]
mod tests;
