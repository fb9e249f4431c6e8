//! [`StockActors`]: the node's stock actors, one per item, started on first use (claiming the
//! item with a new epoch) and supervised; the entry point order sagas call.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorId, ActorRef};
use serde::Serialize;
use surge_persistence::committer::GroupCommitter;
use surge_persistence::{Database, now_millis};
use tokio::sync::OnceCell;

use surge_domain::{ItemId, Quantity};

use super::actor::{StockActor, StockArgs, StockMsg, StockStats};
use super::path::{PathFuture, StockPath};
use super::{ReserveError, StockConfig};
use crate::supervision::{Failures, actor_name, start_supervisor};

/// One item's place in the registry.
#[derive(Debug)]
struct Slot {
    actor: OnceCell<ActorRef<StockMsg>>,
    /// Reservation requests in flight for this item: the admission bound, and the guard that
    /// keeps an actor from passivating while someone holds its reference.
    waiting: AtomicUsize,
    stats: Arc<StockStats>,
    epoch: AtomicI64,
    /// Unit price read when the actor took the item over (prices do not change while it lives).
    price: AtomicI64,
}

#[derive(Debug, Clone, Default)]
pub(super) struct Slots(Arc<Mutex<HashMap<i64, Arc<Slot>>>>);

impl Slots {
    /// Removes the item's slot if it still holds the actor `id`: a newer actor that already
    /// took the item over keeps its place.
    pub(super) fn remove_actor(&self, item_id: i64, id: ActorId) {
        if let Ok(mut map) = self.0.lock()
            && map
                .get(&item_id)
                .and_then(|slot| slot.actor.get())
                .is_some_and(|actor| actor.get_id() == id)
        {
            map.remove(&item_id);
        }
    }

    /// Removes a slot whose actor never started (its item does not exist).
    fn remove_unstarted(&self, item_id: i64) {
        if let Ok(mut map) = self.0.lock()
            && map
                .get(&item_id)
                .is_some_and(|slot| slot.actor.get().is_none())
        {
            map.remove(&item_id);
        }
    }

    /// Removes the slot only when nobody is waiting on it, atomically with respect to callers
    /// taking a reference (both happen under the map lock).
    pub(super) fn remove_if_idle(&self, item_id: i64) -> bool {
        let Ok(mut map) = self.0.lock() else {
            return false;
        };
        match map.get(&item_id) {
            Some(slot) if slot.waiting.load(Ordering::Acquire) == 0 => {
                map.remove(&item_id);
                true
            }
            _ => false,
        }
    }
}

/// What the admin endpoint shows of a stock actor.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StockActorView {
    /// Always "stock".
    pub kind: &'static str,
    /// Item id.
    pub key: i64,
    /// Requests waiting on the actor (its mailbox and its uncommitted batch).
    pub mailbox_len: usize,
    /// Times an actor of this item failed and was replaced.
    pub restarts: u64,
    /// The last failure.
    pub last_error: Option<String>,
    /// Units checked out and unsold.
    pub allotment_left: i64,
    /// Reservations waiting for the next batch.
    pub pending_reservations: usize,
    /// Unix ms of the last commit of a batch, 0 if none.
    pub last_flush_at: i64,
    /// Size of the last batch.
    pub last_batch_size: usize,
    /// Ownership epoch.
    pub epoch: i64,
}

/// All stock actors of the node, created on first use and supervised.
#[derive(Debug, Clone)]
pub struct StockActors {
    db: Database,
    committer: GroupCommitter,
    config: StockConfig,
    slots: Slots,
    /// Failures per item, kept across actor restarts. The supervisor drops a failed actor
    /// from the registry; the next request for its item starts a fresh one under a new epoch,
    /// which reclaims whatever the failed one had checked out.
    failures: Failures,
    supervisor: ActorRef<()>,
}

/// Gives back the slot's waiting count when a reservation attempt ends.
struct Waiting(Arc<Slot>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

impl StockActors {
    /// Starts the supervisor. `instance` makes actor names unique when several nodes share a
    /// process (tests).
    pub async fn start(
        db: Database,
        committer: GroupCommitter,
        config: StockConfig,
    ) -> Result<Self, ractor::SpawnErr> {
        let slots = Slots::default();
        let failures = Failures::default();
        let registry = slots.clone();
        let supervisor = start_supervisor(
            "stock",
            failures.clone(),
            Box::new(move |item_id, id| registry.remove_actor(item_id, id)),
        )
        .await?;
        Ok(Self {
            db,
            committer,
            config,
            slots,
            failures,
            supervisor,
        })
    }

    fn slot(&self, item_id: i64) -> Result<Waiting, ReserveError> {
        let mut map = self
            .slots
            .0
            .lock()
            .map_err(|_| ReserveError::Unavailable("registry poisoned".into()))?;
        let slot = map
            .entry(item_id)
            .or_insert_with(|| {
                Arc::new(Slot {
                    actor: OnceCell::new(),
                    waiting: AtomicUsize::new(0),
                    stats: Arc::new(StockStats::default()),
                    epoch: AtomicI64::new(0),
                    price: AtomicI64::new(0),
                })
            })
            .clone();
        if slot.waiting.fetch_add(1, Ordering::AcqRel) >= self.config.max_waiting_per_item {
            slot.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(ReserveError::Overloaded);
        }
        Ok(Waiting(slot))
    }

    async fn actor(&self, item_id: i64, slot: &Slot) -> Result<ActorRef<StockMsg>, ReserveError> {
        let actor = slot
            .actor
            .get_or_try_init(|| async {
                let claim = self
                    .db
                    .claim_allotment(item_id, &self.config.owner)
                    .await
                    .map_err(|e| ReserveError::Unavailable(e.to_string()))?
                    .ok_or(ReserveError::ItemNotFound)?;
                slot.epoch.store(claim.epoch, Ordering::Relaxed);
                slot.price.store(claim.price, Ordering::Relaxed);
                let (actor, _) = Actor::spawn_linked(
                    Some(actor_name("stock", item_id)),
                    StockActor {
                        db: self.db.clone(),
                        committer: self.committer.clone(),
                        config: self.config.clone(),
                        slots: self.slots.clone(),
                    },
                    StockArgs {
                        item_id,
                        epoch: claim.epoch,
                        stats: slot.stats.clone(),
                    },
                    self.supervisor.get_cell(),
                )
                .await
                .map_err(|e| ReserveError::Unavailable(e.to_string()))?;
                Ok::<_, ReserveError>(actor)
            })
            .await;
        match actor {
            Ok(a) => Ok(a.clone()),
            Err(ReserveError::ItemNotFound) => {
                self.slots.remove_unstarted(item_id);
                Err(ReserveError::ItemNotFound)
            }
            Err(e) => Err(e),
        }
    }

    /// Reserves units of an item for an order; returns after the reservation is durable.
    async fn reserve_units(
        &self,
        item_id: i64,
        order_id: i64,
        quantity: i64,
        timeout: Duration,
    ) -> Result<(), ReserveError> {
        let waiting = self.slot(item_id)?;
        let actor = self.actor(item_id, &waiting.0).await?;
        let answer = actor
            .call(
                |reply| StockMsg::Reserve {
                    order_id,
                    quantity,
                    reply,
                },
                Some(timeout),
            )
            .await;
        match answer {
            Ok(ractor::rpc::CallResult::Success(result)) => result,
            Ok(ractor::rpc::CallResult::Timeout) => Err(ReserveError::Undetermined(
                "the stock actor did not answer in time".into(),
            )),
            Ok(ractor::rpc::CallResult::SenderError) | Err(_) => {
                // The actor stopped (passivated, fenced or failed): drop it so a retry starts
                // a fresh one.
                if let Ok(mut map) = self.slots.0.lock()
                    && map
                        .get(&item_id)
                        .is_some_and(|s| Arc::ptr_eq(s, &waiting.0))
                {
                    map.remove(&item_id);
                }
                Err(ReserveError::Unavailable("the stock actor stopped".into()))
            }
        }
    }

    /// An item's unit price, or `None` when it does not exist. Starts the item's actor, which
    /// the order will need next anyway.
    async fn price(&self, item_id: i64) -> Result<Option<i64>, ReserveError> {
        let waiting = self.slot(item_id)?;
        match self.actor(item_id, &waiting.0).await {
            Ok(_) => Ok(Some(waiting.0.price.load(Ordering::Relaxed))),
            Err(ReserveError::ItemNotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether the item is known to be sold out right now (its actor saw the row empty within
    /// the recheck window and holds no units), without asking anyone.
    fn sold_out_now(&self, item_id: i64) -> bool {
        self.slots
            .0
            .lock()
            .ok()
            .and_then(|m| m.get(&item_id).cloned())
            .is_some_and(|slot| slot.stats.sold_out_until.load(Ordering::Relaxed) > now_millis())
    }

    /// Tells an item's actor that units went back to its row.
    fn wake(&self, item_id: i64) {
        let actor = self
            .slots
            .0
            .lock()
            .ok()
            .and_then(|m| m.get(&item_id).and_then(|s| s.actor.get().cloned()));
        if let Some(actor) = actor {
            let _ = actor.cast(StockMsg::Replenished);
        }
    }

    /// Every live stock actor, for the admin endpoint.
    pub fn views(&self) -> Vec<StockActorView> {
        let slots: Vec<(i64, Arc<Slot>)> = self
            .slots
            .0
            .lock()
            .map(|m| m.iter().map(|(k, v)| (*k, v.clone())).collect())
            .unwrap_or_default();
        let mut views: Vec<StockActorView> = slots
            .into_iter()
            .filter(|(_, slot)| slot.actor.initialized())
            .map(|(item_id, slot)| {
                let failure = self.failures.of(item_id);
                StockActorView {
                    kind: "stock",
                    key: item_id,
                    mailbox_len: slot.waiting.load(Ordering::Relaxed),
                    restarts: failure.restarts,
                    last_error: failure.last_error,
                    allotment_left: slot.stats.allotment.load(Ordering::Relaxed),
                    pending_reservations: slot.stats.pending.load(Ordering::Relaxed),
                    last_flush_at: slot.stats.last_flush_at.load(Ordering::Relaxed),
                    last_batch_size: slot.stats.last_batch.load(Ordering::Relaxed),
                    epoch: slot.epoch.load(Ordering::Relaxed),
                }
            })
            .collect();
        views.sort_by_key(|v| v.key);
        views
    }

    /// Graceful shutdown: every actor commits its last batch and gives its allotment back.
    pub async fn drain(&self) {
        let actors: Vec<ActorRef<StockMsg>> = self
            .slots
            .0
            .lock()
            .map(|m| m.values().filter_map(|s| s.actor.get().cloned()).collect())
            .unwrap_or_default();
        for actor in actors {
            let _ = actor
                .call(StockMsg::Drain, Some(Duration::from_secs(10)))
                .await;
        }
        self.supervisor.stop(None);
    }
}

impl StockPath for StockActors {
    fn price_of(&self, item: ItemId) -> PathFuture<'_, Result<Option<i64>, ReserveError>> {
        Box::pin(self.price(item.get()))
    }

    fn reserve(
        &self,
        item: ItemId,
        order_id: i64,
        quantity: Quantity,
        within: Duration,
    ) -> PathFuture<'_, Result<(), ReserveError>> {
        Box::pin(self.reserve_units(item.get(), order_id, quantity.get(), within))
    }

    fn known_sold_out(&self, item: ItemId) -> bool {
        self.sold_out_now(item.get())
    }

    fn replenished(&self, item: ItemId) {
        self.wake(item.get());
    }
}
