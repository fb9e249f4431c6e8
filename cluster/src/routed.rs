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
use surge_persistence::orders::{HoldSource, ItemTerms};
use tokio::time::Instant;

use crate::peers::Peers;
use crate::rpc::{OpAnswer, Refusal, ShardOp};
use crate::view::ClusterView;

/// How long a remote "out of stock" lets this node refuse the item from memory. The owner
/// keeps the authoritative answer; this only spares it (and the wire) a flood of refusals.
pub const REMOTE_SOLD_OUT_FOR: Duration = Duration::from_millis(250);
/// Pause before asking again when no node holds the item's shard yet (a failover).
const NO_OWNER_PAUSE: Duration = Duration::from_millis(50);

/// Where an operation for a shard went.
#[derive(Debug)]
pub(crate) enum Routed {
    /// This node serves the shard now: use the local actor.
    Local,
    /// The owner's answer.
    Answer(OpAnswer),
    /// No node could be asked before the deadline.
    NoOwner,
}

/// Finds the owner of an id's shard and asks it, following "not owner" answers.
#[derive(Debug, Clone)]
pub(crate) struct OwnerRoute {
    pub(crate) view: ClusterView,
    pub(crate) peers: Peers,
}

impl OwnerRoute {
    /// Whether this node serves `id`'s shard now.
    pub(crate) fn serves(&self, id: i64) -> bool {
        self.view.serves(self.view.shard_of(id)).is_some()
    }

    /// The owner to send `id`'s operations to: `hint` (a "not owner" answer named it) or the
    /// owner last seen. `None` while nobody holds the shard, or only this node's lapsed lease
    /// names it.
    fn target(&self, id: i64, hint: Option<String>) -> Option<(String, String)> {
        if let Some(node) = hint
            && node != self.view.node_id()
            && let Some(addr) = self.view.addr_of(&node)
        {
            return Some((node, addr));
        }
        self.view
            .owner_of(self.view.shard_of(id))
            .filter(|(node, _)| node != self.view.node_id())
    }

    /// Tells the owner without waiting (releases, notices); dropped when no owner is known.
    pub(crate) fn tell(&self, id: i64, op: ShardOp) {
        if let Some((node, addr)) = self.target(id, None) {
            self.peers.tell(&node, &addr, op);
        }
    }

    /// Sends the operation `op(time left)` to the owner of `id`'s shard, following "not
    /// owner" answers and waiting out a shard with no owner (a failover), until `deadline`.
    pub(crate) async fn ask(
        &self,
        id: i64,
        deadline: Instant,
        op: impl Fn(Duration) -> ShardOp,
    ) -> Routed {
        let mut hint: Option<String> = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Routed::NoOwner;
            }
            if self.serves(id) {
                return Routed::Local;
            }
            let Some((node, addr)) = self.target(id, hint.take()) else {
                tokio::time::sleep(NO_OWNER_PAUSE.min(left)).await;
                continue;
            };
            match self.peers.send(&node, &addr, op(left)).await {
                OpAnswer::Refused(Refusal::NotOwner { owner }) => {
                    if owner.is_none() {
                        tokio::time::sleep(NO_OWNER_PAUSE.min(left)).await;
                    }
                    hint = owner;
                }
                answer => return Routed::Answer(answer),
            }
        }
    }
}

/// Stock operations routed to each item's owner.
#[derive(Debug, Clone)]
pub struct RoutedStock {
    local: StockActors,
    route: OwnerRoute,
    db: Database,
    /// Unit prices of items owned elsewhere. Prices never change once an item exists
    /// (there is no price update), so a price read once is good for the node's life.
    prices: Arc<RwLock<HashMap<i64, ItemTerms>>>,
    /// Items an owner recently answered "out of stock" for, until when.
    sold_out: Arc<Mutex<HashMap<i64, Instant>>>,
}

impl RoutedStock {
    /// Routes between `local` and the peers by `view`.
    pub fn new(local: StockActors, view: ClusterView, peers: Peers, db: Database) -> Self {
        Self {
            local,
            route: OwnerRoute { view, peers },
            db,
            prices: Arc::default(),
            sold_out: Arc::default(),
        }
    }

    fn serves(&self, item: i64) -> bool {
        self.route.serves(item)
    }

    async fn terms(&self, item: ItemId) -> Result<Option<ItemTerms>, ReserveError> {
        if self.serves(item.get()) {
            return self.local.terms_of(item).await;
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
            .item_terms(item.get())
            .await
            .map_err(|e| ReserveError::Unavailable(e.to_string()))?;
        if let Some(terms) = found {
            self.prices
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(item.get(), terms);
        }
        Ok(found)
    }

    async fn hold_anywhere(
        &self,
        item: ItemId,
        order_id: i64,
        quantity: Quantity,
        within: Duration,
    ) -> Result<Hold, ReserveError> {
        let deadline = Instant::now() + within;
        loop {
            let routed = self
                .route
                .ask(item.get(), deadline, |left| ShardOp::Hold {
                    item: item.get(),
                    quantity: quantity.get(),
                    within_ms: u64::try_from(left.as_millis()).unwrap_or(u64::MAX),
                })
                .await;
            let answer = match routed {
                Routed::Local => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let result = self.local.hold(item, order_id, quantity, left).await;
                    // Lost the shard while asking: the new owner decides.
                    if matches!(result, Err(ReserveError::Unavailable(_)))
                        && !self.serves(item.get())
                        && Instant::now() < deadline
                    {
                        continue;
                    }
                    return result;
                }
                Routed::NoOwner => {
                    return Err(ReserveError::Unavailable(
                        "no node could serve the item in time; retry".into(),
                    ));
                }
                Routed::Answer(answer) => answer,
            };
            return match answer {
                OpAnswer::Held { epoch } => Ok(Hold {
                    item,
                    quantity,
                    source: HoldSource::Allotment { epoch },
                }),
                OpAnswer::Refused(Refusal::OutOfStock) => {
                    self.sold_out
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(item.get(), Instant::now() + REMOTE_SOLD_OUT_FOR);
                    Err(ReserveError::OutOfStock)
                }
                OpAnswer::Refused(Refusal::ItemNotFound) => Err(ReserveError::ItemNotFound),
                OpAnswer::Refused(Refusal::Overloaded) => Err(ReserveError::Overloaded),
                OpAnswer::Refused(Refusal::Undetermined { message }) => {
                    Err(ReserveError::Undetermined(message))
                }
                OpAnswer::Refused(Refusal::Unavailable { message }) => {
                    Err(ReserveError::Unavailable(message))
                }
                other => Err(ReserveError::Unavailable(format!(
                    "a malformed answer: {other:?}"
                ))),
            };
        }
    }
}

impl StockPath for RoutedStock {
    fn terms_of(&self, item: ItemId) -> PathFuture<'_, Result<Option<ItemTerms>, ReserveError>> {
        Box::pin(self.terms(item))
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
            self.route.tell(
                hold.item.get(),
                ShardOp::Release {
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
            self.route.tell(
                hold.item.get(),
                ShardOp::Lost {
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
            self.route
                .tell(item.get(), ShardOp::Replenished { item: item.get() });
        }
    }
}
