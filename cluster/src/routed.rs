//! [`RoutedStock`]: the [`StockPath`] of a cluster node. An item whose shard this node serves
//! goes to its local [`StockActors`]; any other item's operations go to the owner over the
//! internal listener ([`Peers`]). Sagas stay on the node that took the request: only the
//! stock operations travel, and the order is written by this node's writer, fenced by the
//! epoch the owner's actor gave.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use surge_actors::stock::path::{Hold, PathFuture};
use surge_actors::{ReserveError, StockActors, StockPath};
use surge_domain::{ItemId, Quantity};
use surge_persistence::Database;
use surge_persistence::orders::HoldSource;
use tokio::time::Instant;

use crate::peers::Peers;
use crate::rpc::{OpAnswer, Refusal, StockOp};
use crate::view::ClusterView;

/// How long a remote "out of stock" lets this node refuse the item from memory. The owner
/// keeps the authoritative answer; this only spares it (and the wire) a flood of refusals.
pub const REMOTE_SOLD_OUT_FOR: Duration = Duration::from_millis(250);
/// Pause before asking again when no node holds the item's shard yet (a failover).
const NO_OWNER_PAUSE: Duration = Duration::from_millis(50);

/// Stock operations routed to each item's owner.
#[derive(Debug, Clone)]
pub struct RoutedStock {
    local: StockActors,
    view: ClusterView,
    peers: Peers,
    db: Database,
    /// Unit prices of items owned elsewhere. Prices never change once an item exists
    /// (there is no price update), so a price read once is good for the node's life.
    prices: Arc<RwLock<HashMap<i64, i64>>>,
    /// Items an owner recently answered "out of stock" for, until when.
    sold_out: Arc<Mutex<HashMap<i64, Instant>>>,
}

impl RoutedStock {
    /// Routes between `local` and the peers by `view`.
    pub fn new(local: StockActors, view: ClusterView, peers: Peers, db: Database) -> Self {
        Self {
            local,
            view,
            peers,
            db,
            prices: Arc::default(),
            sold_out: Arc::default(),
        }
    }

    fn serves(&self, item: i64) -> bool {
        self.view.serves(self.view.shard_of(item)).is_some()
    }

    /// The owner to send `item`'s operations to: `hint` (a "not owner" answer named it) or
    /// the owner last seen. `None` while nobody holds the shard, or only this node's lapsed
    /// lease names it.
    fn target(&self, item: i64, hint: Option<String>) -> Option<(String, String)> {
        if let Some(node) = hint
            && node != self.view.node_id()
            && let Some(addr) = self.view.addr_of(&node)
        {
            return Some((node, addr));
        }
        self.view
            .owner_of(self.view.shard_of(item))
            .filter(|(node, _)| node != self.view.node_id())
    }

    fn tell_owner(&self, item: i64, op: StockOp) {
        if let Some((node, addr)) = self.target(item, None) {
            self.peers.tell(&node, &addr, op);
        }
    }

    async fn price(&self, item: ItemId) -> Result<Option<i64>, ReserveError> {
        if self.serves(item.get()) {
            return self.local.price_of(item).await;
        }
        if let Some(price) = self
            .prices
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&item.get())
        {
            return Ok(Some(*price));
        }
        let found = self
            .db
            .price_and_available(item.get())
            .await
            .map_err(|e| ReserveError::Unavailable(e.to_string()))?;
        if let Some((price, _)) = found {
            self.prices
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(item.get(), price);
        }
        Ok(found.map(|(price, _)| price))
    }

    async fn hold_anywhere(
        &self,
        item: ItemId,
        order_id: i64,
        quantity: Quantity,
        within: Duration,
    ) -> Result<Hold, ReserveError> {
        let deadline = Instant::now() + within;
        let mut hint: Option<String> = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ReserveError::Unavailable(
                    "no node could serve the item in time; retry".into(),
                ));
            }
            if self.serves(item.get()) {
                let result = self.local.hold(item, order_id, quantity, left).await;
                // Lost the shard while asking: the new owner decides.
                if matches!(result, Err(ReserveError::Unavailable(_))) && !self.serves(item.get()) {
                    continue;
                }
                return result;
            }
            let Some((node, addr)) = self.target(item.get(), hint.take()) else {
                tokio::time::sleep(NO_OWNER_PAUSE.min(left)).await;
                continue;
            };
            let op = StockOp::Hold {
                item: item.get(),
                quantity: quantity.get(),
                within_ms: u64::try_from(left.as_millis()).unwrap_or(u64::MAX),
            };
            match self.peers.send(&node, &addr, op).await {
                OpAnswer::Held { epoch } => {
                    return Ok(Hold {
                        item,
                        quantity,
                        source: HoldSource::Allotment { epoch },
                    });
                }
                OpAnswer::Refused(Refusal::NotOwner { owner }) => {
                    if owner.is_none() {
                        tokio::time::sleep(NO_OWNER_PAUSE.min(left)).await;
                    }
                    hint = owner;
                }
                OpAnswer::Refused(Refusal::OutOfStock) => {
                    self.sold_out
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(item.get(), Instant::now() + REMOTE_SOLD_OUT_FOR);
                    return Err(ReserveError::OutOfStock);
                }
                OpAnswer::Refused(Refusal::ItemNotFound) => return Err(ReserveError::ItemNotFound),
                OpAnswer::Refused(Refusal::Overloaded) => return Err(ReserveError::Overloaded),
                OpAnswer::Refused(Refusal::Unavailable { message }) => {
                    return Err(ReserveError::Unavailable(message));
                }
                OpAnswer::Refused(Refusal::Undetermined { message }) => {
                    return Err(ReserveError::Undetermined(message));
                }
                OpAnswer::Done => {
                    return Err(ReserveError::Unavailable("a malformed answer".into()));
                }
            }
        }
    }
}

impl StockPath for RoutedStock {
    fn price_of(&self, item: ItemId) -> PathFuture<'_, Result<Option<i64>, ReserveError>> {
        Box::pin(self.price(item))
    }

    fn hold(
        &self,
        item: ItemId,
        order_id: i64,
        quantity: Quantity,
        within: Duration,
    ) -> PathFuture<'_, Result<Hold, ReserveError>> {
        Box::pin(self.hold_anywhere(item, order_id, quantity, within))
    }

    fn release(&self, order_id: i64, hold: Hold) -> PathFuture<'_, ()> {
        if self.serves(hold.item.get()) {
            return self.local.release(order_id, hold);
        }
        if let HoldSource::Allotment { epoch } = hold.source {
            self.tell_owner(
                hold.item.get(),
                StockOp::Release {
                    item: hold.item.get(),
                    quantity: hold.quantity.get(),
                    epoch,
                },
            );
        }
        Box::pin(std::future::ready(()))
    }

    fn lost(&self, hold: Hold) {
        if self.serves(hold.item.get()) {
            self.local.lost(hold);
        } else if let HoldSource::Allotment { epoch } = hold.source {
            self.tell_owner(
                hold.item.get(),
                StockOp::Lost {
                    item: hold.item.get(),
                    epoch,
                },
            );
        }
    }

    fn known_sold_out(&self, item: ItemId) -> bool {
        if self.serves(item.get()) {
            return self.local.known_sold_out(item);
        }
        let mut sold_out = self.sold_out.lock().unwrap_or_else(PoisonError::into_inner);
        match sold_out.get(&item.get()) {
            Some(until) if Instant::now() < *until => true,
            Some(_) => {
                sold_out.remove(&item.get());
                false
            }
            None => false,
        }
    }

    fn replenished(&self, item: ItemId) {
        self.sold_out
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&item.get());
        if self.serves(item.get()) {
            self.local.replenished(item);
        } else {
            self.tell_owner(item.get(), StockOp::Replenished { item: item.get() });
        }
    }
}
