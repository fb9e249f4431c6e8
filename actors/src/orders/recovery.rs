//! Recovery at start: orders left `PROCESSING` (by a version of Surge that wrote orders in
//! several steps) are compensated (their held units released, their coupon given back) and
//! recorded `FAILED`, before the node serves. Orders written today are never `PROCESSING`:
//! each is written once, in its final state.

use surge_persistence::{Database, PersistenceError};

use super::OrderLedger;

/// Compensates every order left `PROCESSING`; returns how many.
pub async fn recover(db: &Database, ledger: &dyn OrderLedger) -> Result<usize, PersistenceError> {
    let stuck = db.processing_orders().await?;
    for order_id in &stuck {
        ledger
            .fail(
                *order_id,
                "the node stopped before the order completed".into(),
            )
            .await?;
    }
    Ok(stuck.len())
}
