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
use surge_persistence::orders::{HoldSource, ItemTerms, StockHold};

use super::ReserveError;

/// A boxed future: [`StockPath`] is used as a trait object, chosen at start.
pub type PathFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Units of one line held for an order, until the order's write takes them or they are
/// released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    /// Item.
    pub item: ItemId,
    /// Units.
    pub quantity: Quantity,
    /// Where they are held (what the order's write must take).
    pub source: HoldSource,
}

impl Hold {
    /// The hold as the order's write takes it.
    pub fn record(&self) -> StockHold {
        StockHold {
            item_id: self.item.get(),
            quantity: self.quantity.get(),
            source: self.source,
        }
    }
}

/// How an order line takes units of stock.
pub trait StockPath: Debug + Send + Sync + 'static {
    /// An item's price and purchase limit, or `None` when it does not exist.
    fn terms_of(&self, item: ItemId) -> PathFuture<'_, Result<Option<ItemTerms>, ReserveError>>;

    /// Holds `quantity` units of `item` for `order_id`. The order's write takes them (see
    /// [`Hold::record`]); until then nobody else can have them. `within` bounds the wait:
    /// past it the outcome is [`ReserveError::Undetermined`].
    fn hold(
        &self,
        item: ItemId,
        order_id: i64,
        quantity: Quantity,
        within: Duration,
    ) -> PathFuture<'_, Result<Hold, ReserveError>>;

    /// Gives back a hold that its order did not take (the order was refused, or its write
    /// failed before committing). Never for a write whose outcome is unknown.
    fn release(&self, order_id: i64, hold: Hold) -> PathFuture<'_, ()>;

    /// The database refused `hold` (its epoch moved on, or its reservation expired): whoever
    /// gave it must stop selling.
    fn lost(&self, hold: Hold);

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
