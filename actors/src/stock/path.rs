//! [`StockPath`]: how an order line takes units of stock, chosen once at start.
//!
//! The product path is [`StockActors`](super::StockActors). The conventional strategies of
//! [`comparison`](super::comparison) implement the same trait so that `surge bench compare` can
//! measure against them; the saga never branches on which one it has.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use surge_domain::{ItemId, Quantity};

use super::ReserveError;

/// A boxed future: [`StockPath`] is used as a trait object, chosen at start.
pub type PathFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How an order line takes units of stock.
pub trait StockPath: Debug + Send + Sync + 'static {
    /// An item's unit price, or `None` when it does not exist.
    fn price_of(&self, item: ItemId) -> PathFuture<'_, Result<Option<i64>, ReserveError>>;

    /// Holds `quantity` units of `item` for `order_id`; returns once the hold is durable.
    /// `within` bounds the wait: past it the outcome is [`ReserveError::Undetermined`].
    fn reserve(
        &self,
        item: ItemId,
        order_id: i64,
        quantity: Quantity,
        within: Duration,
    ) -> PathFuture<'_, Result<(), ReserveError>>;

    /// Whether the item is known to be sold out right now, without asking anyone (a saga may
    /// then refuse at once). Paths that cannot know answer `false`.
    fn known_sold_out(&self, item: ItemId) -> bool {
        let _ = item;
        false
    }

    /// Units of `item` went back to its row (a release or cancellation): look again before
    /// refusing. Only call it when units really came back.
    fn replenished(&self, item: ItemId) {
        let _ = item;
    }
}
