//! Cancelling a SUCCEEDED order: one transaction moves it to CANCELLED, releases its confirmed
//! units to the items and gives its coupon back; then SSE streams and the stock actors hear.

use surge_domain::{ItemId, OrderStatus};
use surge_persistence::PersistenceError;
use surge_persistence::committer::GroupCommitter;
use surge_persistence::orders::{CancelOutcome, OrderRecord};

use super::OrderSagas;

impl OrderSagas {
    /// Cancels `order` (read by the caller, who checked who may cancel it).
    pub async fn cancel(
        &self,
        committer: &GroupCommitter,
        order: &OrderRecord,
    ) -> Result<CancelOutcome, PersistenceError> {
        let outcome = committer.cancel(order.id).await?;
        if outcome == CancelOutcome::Cancelled {
            self.inner.publish(order.id, OrderStatus::Cancelled);
            for line in &order.lines {
                self.inner.stock.replenished(ItemId::from_db(line.item_id));
            }
        }
        Ok(outcome)
    }
}
