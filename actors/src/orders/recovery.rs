//! Recovery at start: orders a previous process left `PROCESSING` are compensated (their held
//! units released, their coupon given back) and recorded `FAILED`, before the node serves.

use surge_persistence::orders::OrderResolution;
use surge_persistence::{Database, PersistenceError};

use super::OrderLedger;

/// Compensates every order left `PROCESSING`; returns how many.
pub async fn recover(db: &Database, ledger: &dyn OrderLedger) -> Result<usize, PersistenceError> {
    let stuck = db.processing_orders().await?;
    for order_id in &stuck {
        ledger
            .resolve(OrderResolution {
                order_id: *order_id,
                line_statuses: Vec::new(),
                failure: Some("the node stopped before the order completed".into()),
            })
            .await?;
    }
    Ok(stuck.len())
}
