//! The first step of placing an order: price every line from its stock path and work out the
//! coupon's discount. Nothing is written here; whether the member really holds the coupon
//! unused is decided atomically by the order's first write.

use surge_domain::{DiscountRate, ItemId, Quantity};
use surge_persistence::orders::NewOrderLine;

use super::{CouponProblem, Inner};
use crate::coupons::CouponError;
use crate::stock::ReserveError;

/// The lines, priced, and which of them name an item that does not exist.
#[derive(Debug)]
pub(super) struct Priced {
    pub(super) lines: Vec<NewOrderLine>,
    pub(super) missing: Vec<bool>,
    pub(super) total: i64,
}

/// Prices every line (an unknown item prices at 0 and is marked missing).
pub(super) async fn price_lines(
    inner: &Inner,
    lines: &[(ItemId, Quantity)],
) -> Result<Priced, ReserveError> {
    let mut priced = Vec::with_capacity(lines.len());
    let mut missing = Vec::with_capacity(lines.len());
    for &(item, quantity) in lines {
        let terms = inner.stock.terms_of(item).await?;
        missing.push(terms.is_none());
        priced.push(NewOrderLine {
            item_id: item.get(),
            quantity: quantity.get(),
            unit_price: terms.map_or(0, |t| t.price),
            max_per_member: terms.and_then(|t| t.max_per_member),
        });
    }
    let total = priced
        .iter()
        .map(|l| l.unit_price.saturating_mul(l.quantity))
        .fold(0_i64, i64::saturating_add);
    Ok(Priced {
        lines: priced,
        missing,
        total,
    })
}

/// The discount an order gets from its coupon, or why the coupon cannot be used (`Err(Ok)`),
/// or a dependency failure (`Err(Err)`).
pub(super) async fn coupon_discount(
    inner: &Inner,
    coupon_id: i64,
    user_id: i64,
    lines: &[NewOrderLine],
    total: i64,
) -> Result<i64, Result<CouponProblem, String>> {
    let coupon = match inner.coupons.definition(coupon_id).await {
        Ok(c) => c,
        Err(CouponError::NotFound) => return Err(Ok(CouponProblem::NotFound)),
        Err(e) => return Err(Err(e.to_string())),
    };
    let base = match coupon.def.item_id {
        None => total,
        Some(item) => match lines.iter().find(|l| l.item_id == item) {
            Some(line) => line.unit_price.saturating_mul(line.quantity),
            None => return Err(Ok(CouponProblem::NotApplicable)),
        },
    };
    inner
        .coupons
        .ensure_recorded(coupon_id, user_id)
        .await
        .map_err(|e| Err(e.to_string()))?;
    let rate = DiscountRate::from_tenths(u16::try_from(coupon.def.discount_tenths).unwrap_or(0));
    Ok(rate.discount_on(base))
}
