//! [`OrderLedger`]: the durable writes an order saga makes, as a trait so the saga's steps can
//! be tested with faults injected at each one. Production uses the group committer, which
//! batches these writes across sagas into one transaction per tick.

use std::fmt::Debug;

use surge_persistence::PersistenceError;
use surge_persistence::committer::GroupCommitter;
use surge_persistence::orders::{FailOutcome, NewOrder, PlaceOutcome};

use crate::stock::path::PathFuture;

/// The durable writes of an order saga.
pub trait OrderLedger: Debug + Send + Sync + 'static {
    /// Writes the order once, in its final state, with its idempotency claim, its coupon and
    /// the units of its holds (fenced); returns after the commit.
    fn place(&self, order: NewOrder) -> PathFuture<'_, Result<PlaceOutcome, PersistenceError>>;

    /// Fails an order left `PROCESSING`, releasing what it held; returns after the commit.
    fn fail(
        &self,
        order_id: i64,
        reason: String,
    ) -> PathFuture<'_, Result<FailOutcome, PersistenceError>>;
}

impl OrderLedger for GroupCommitter {
    fn place(&self, order: NewOrder) -> PathFuture<'_, Result<PlaceOutcome, PersistenceError>> {
        Box::pin(GroupCommitter::place(self, order))
    }

    fn fail(
        &self,
        order_id: i64,
        reason: String,
    ) -> PathFuture<'_, Result<FailOutcome, PersistenceError>> {
        Box::pin(GroupCommitter::fail(self, order_id, reason))
    }
}
