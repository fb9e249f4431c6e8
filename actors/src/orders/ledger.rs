//! [`OrderLedger`]: the durable writes an order saga makes, as a trait so the saga's steps can
//! be tested with faults injected at each one. Production uses the group committer, which
//! batches these writes across sagas into one transaction per tick.

use std::fmt::Debug;

use surge_persistence::PersistenceError;
use surge_persistence::committer::GroupCommitter;
use surge_persistence::orders::{BeginOutcome, NewOrder, OrderResolution, ResolveOutcome};

use crate::stock::path::PathFuture;

/// The durable writes of an order saga.
pub trait OrderLedger: Debug + Send + Sync + 'static {
    /// Records a new order (PROCESSING, or FAILED from a refusal) and claims its idempotency
    /// key and coupon; returns after the commit.
    fn begin(&self, order: NewOrder) -> PathFuture<'_, Result<BeginOutcome, PersistenceError>>;

    /// Writes an order's final status (confirming or releasing what it holds); returns after
    /// the commit.
    fn resolve(
        &self,
        resolution: OrderResolution,
    ) -> PathFuture<'_, Result<ResolveOutcome, PersistenceError>>;
}

impl OrderLedger for GroupCommitter {
    fn begin(&self, order: NewOrder) -> PathFuture<'_, Result<BeginOutcome, PersistenceError>> {
        Box::pin(self.begin_order(order))
    }

    fn resolve(
        &self,
        resolution: OrderResolution,
    ) -> PathFuture<'_, Result<ResolveOutcome, PersistenceError>> {
        Box::pin(GroupCommitter::resolve(self, resolution))
    }
}
