//! Stock: one [`StockActor`] per item sells its units in memory, one message at a time.
//!
//! Invariant protected: **no oversell**. An actor sells only units it has checked out of the
//! item row into its allotment, under its **epoch**; its reservations become durable in batches
//! through the group committer, each batch fenced by that epoch
//! ([`surge_persistence::stock`] holds every fenced statement). A saga hears "reserved" only
//! after its batch committed.
//!
//! - [`actor`]: the actor (allotment check-out, batches, sold-out window, passivation, drain);
//! - [`registry`]: [`StockActors`], the node's actors, started on first use and supervised;
//! - [`path`]: [`StockPath`], how an order line takes stock: the actors ([`StockActors`]) in
//!   production, or one of the conventional [`comparison`] strategies chosen at start for
//!   `surge bench compare`.

pub mod actor;
pub mod comparison;
pub mod path;
pub mod registry;

use std::time::Duration;

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
    /// Units checked out of the item row at a time. Larger means fewer writes to the item row;
    /// smaller leaves more for other nodes. Everything unsold goes back on passivation.
    pub allotment_chunk: i64,
    /// How long an unconfirmed reservation lives before the sweeper releases it. Far longer
    /// than any saga needs, so only a dead saga's reservations expire.
    pub reservation_ttl: Duration,
    /// An actor idle this long returns its allotment and stops.
    pub passivate_after: Duration,
    /// Most reservation requests that may wait on one item. Beyond it the node answers 503
    /// instead of letting a queue grow without bound in front of a hot item.
    pub max_waiting_per_item: usize,
    /// Who owns allotments taken by this node.
    pub owner: String,
}

impl Default for StockConfig {
    fn default() -> Self {
        Self {
            sold_out_recheck: Duration::from_millis(250),
            allotment_chunk: 256,
            reservation_ttl: Duration::from_secs(30),
            passivate_after: Duration::from_secs(60),
            max_waiting_per_item: 10_000,
            owner: "node-1".into(),
        }
    }
}

/// Why a reservation was not made.
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
    /// No answer in time: the reservation may or may not have been written, so it must not be
    /// retried (a retry could hold the units twice); the order is failed and compensated, which
    /// releases it if it exists.
    #[error("reservation outcome unknown: {0}")]
    Undetermined(String),
}
#[cfg(test)]
mod tests;
