//! Per-item stock actors.
//!
//! An actor owns its item's stock under an epoch. It sells from an allotment of units checked
//! out of the item row, one message at a time, so a decrement never waits for a row lock.
//! Reservations are handed to the group committer in batches: while one batch is being
//! committed the next one fills, and a saga hears "reserved" only after its batch committed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;
use surge_persistence::committer::GroupCommitter;
use surge_persistence::orders::{ReserveBatch, ReserveOutcome};
use surge_persistence::{Database, PersistenceError, now_millis};
use tokio::sync::OnceCell;

use crate::supervision::{Failures, actor_name, start_supervisor};

/// Tuning of stock actors.
#[derive(Debug, Clone)]
pub struct StockConfig {
    /// While the item row was empty at the last look, a refusal needs no database round trip
    /// for this long. Units that come back (cancellations, expiries) are seen at the latest
    /// after it; releases made by this node also wake the actor at once.
    pub sold_out_recheck: Duration,
    /// Units checked out of the item row at a time. Larger means fewer writes to the item row;
    /// smaller leaves more for other nodes. Everything unsold goes back on passivation.
    pub allotment_chunk: i64,
    /// How long an unconfirmed reservation lives before the sweeper releases it. Far longer
    /// than any saga needs, so only a dead saga's reservations expire.
    pub reservation_ttl: Duration,
    /// An actor idle this long returns its allotment and stops.
    pub passivate_after: Duration,
    /// Most reservation requests that may wait on one item. Beyond it the node answers 503
    /// instead of letting a queue grow without bound in front of a hot item.
    pub max_waiting_per_item: usize,
    /// Who owns allotments taken by this node.
    pub owner: String,
}

impl Default for StockConfig {
    fn default() -> Self {
        Self {
            sold_out_recheck: Duration::from_millis(50),
            allotment_chunk: 256,
            reservation_ttl: Duration::from_secs(30),
            passivate_after: Duration::from_secs(60),
            max_waiting_per_item: 10_000,
            owner: "node-1".into(),
        }
    }
}

/// Why a reservation was not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReserveError {
    /// Not enough units.
    #[error("out of stock")]
    OutOfStock,
    /// No such item.
    #[error("item not found")]
    ItemNotFound,
    /// Too much work is already waiting on this item.
    #[error("too many requests are waiting for this item")]
    Overloaded,
    /// The database failed or the owner changed, and nothing was written; retrying may succeed.
    #[error("stock unavailable: {0}")]
    Unavailable(String),
    /// No answer in time: the reservation may or may not have been written, so it must not be
    /// retried (a retry could hold the units twice); the order is failed and compensated, which
    /// releases it if it exists.
    #[error("reservation outcome unknown: {0}")]
    Undetermined(String),
}

/// Counters an actor shares with the admin endpoint.
#[derive(Debug, Default)]
pub struct StockStats {
    /// Unix ms until which the item is known sold out (allotment empty, row seen empty): a
    /// saga reading it may fail an order without asking the actor or the database.
    sold_out_until: AtomicI64,
    allotment: AtomicI64,
    pending: AtomicUsize,
    last_flush_at: AtomicI64,
    last_batch: AtomicUsize,
    flushes: AtomicU64,
}

/// Messages of a stock actor.
#[derive(Debug)]
pub enum StockMsg {
    /// Hold `quantity` units for `order_id`; answered after the hold is durable.
    Reserve {
        /// Order.
        order_id: i64,
        /// Units.
        quantity: i64,
        /// Answer.
        reply: RpcReplyPort<Result<(), ReserveError>>,
    },
    /// A batch's commit finished.
    Flushed {
        /// The batch.
        batch: Vec<Pending>,
        /// The committer's answer.
        result: Result<ReserveOutcome, PersistenceError>,
    },
    /// Units went back to the item row: look again before refusing.
    Replenished,
    /// Passivate if idle.
    IdleCheck,
    /// Flush, give the allotment back and stop (graceful shutdown).
    Drain(RpcReplyPort<()>),
}

/// A reservation waiting for its batch to commit.
#[derive(Debug)]
pub struct Pending {
    order_id: i64,
    quantity: i64,
    reply: RpcReplyPort<Result<(), ReserveError>>,
}

/// The actor.
#[derive(Debug)]
pub struct StockActor {
    db: Database,
    committer: GroupCommitter,
    config: StockConfig,
    slots: Slots,
}

/// Startup arguments: the ownership just claimed.
#[derive(Debug)]
pub struct StockArgs {
    item_id: i64,
    epoch: i64,
    stats: Arc<StockStats>,
}

/// The actor's state.
#[derive(Debug)]
pub struct StockState {
    item_id: i64,
    epoch: i64,
    /// Units checked out and not promised to anyone: the only units this actor may sell.
    allotment: i64,
    /// Reservations waiting for the next batch.
    pending: Vec<Pending>,
    /// When the item row was last seen empty.
    row_empty_since: Option<tokio::time::Instant>,
    /// Whether a batch is being committed. One at a time per item keeps the allotment
    /// arithmetic simple; the next batch fills meanwhile.
    flushing: bool,
    last_activity: tokio::time::Instant,
    draining: Option<RpcReplyPort<()>>,
    stats: Arc<StockStats>,
}

impl StockActor {
    fn start_flush(&self, myself: &ActorRef<StockMsg>, state: &mut StockState) {
        if state.flushing || state.pending.is_empty() {
            return;
        }
        state.flushing = true;
        let batch = std::mem::take(&mut state.pending);
        let write = ReserveBatch {
            item_id: state.item_id,
            epoch: state.epoch,
            deadline_at: now_millis()
                + i64::try_from(self.config.reservation_ttl.as_millis()).unwrap_or(i64::MAX),
            reservations: batch.iter().map(|p| (p.order_id, p.quantity)).collect(),
        };
        state.stats.last_batch.store(batch.len(), Ordering::Relaxed);
        state.stats.pending.store(0, Ordering::Relaxed);
        let committer = self.committer.clone();
        let me = myself.clone();
        tokio::spawn(async move {
            let result = committer.reserve(write).await;
            if let Err(e) = me.cast(StockMsg::Flushed { batch, result }) {
                tracing::warn!(error = %e, "stock actor stopped before its batch committed");
            }
        });
    }

    async fn check_out(&self, state: &mut StockState, need: i64) -> Result<(), ReserveError> {
        let want = need.max(self.config.allotment_chunk);
        match self
            .db
            .check_out_units(state.item_id, state.epoch, want)
            .await
        {
            Ok((moved, left)) => {
                state.allotment += moved;
                state.row_empty_since = (left == 0).then(tokio::time::Instant::now);
                let until = if left == 0 && state.allotment == 0 {
                    now_millis()
                        + i64::try_from(self.config.sold_out_recheck.as_millis()).unwrap_or(0)
                } else {
                    0
                };
                state.stats.sold_out_until.store(until, Ordering::Relaxed);
                Ok(())
            }
            Err(PersistenceError::Conflict) => Err(ReserveError::Unavailable(
                "this node no longer owns the item".into(),
            )),
            Err(e) => Err(ReserveError::Unavailable(e.to_string())),
        }
    }
}

impl Actor for StockActor {
    type Msg = StockMsg;
    type State = StockState;
    type Arguments = StockArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<StockMsg>,
        args: StockArgs,
    ) -> Result<StockState, ActorProcessingErr> {
        myself.send_interval(self.config.passivate_after / 2, || StockMsg::IdleCheck);
        Ok(StockState {
            item_id: args.item_id,
            epoch: args.epoch,
            allotment: 0,
            pending: Vec::new(),
            row_empty_since: None,
            flushing: false,
            last_activity: tokio::time::Instant::now(),
            draining: None,
            stats: args.stats,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<StockMsg>,
        message: StockMsg,
        state: &mut StockState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            StockMsg::Reserve {
                order_id,
                quantity,
                reply,
            } => {
                state.last_activity = tokio::time::Instant::now();
                if state.draining.is_some() {
                    let _ = reply.send(Err(ReserveError::Unavailable("shutting down".into())));
                    return Ok(());
                }
                // The row was seen empty a moment ago: refuse from memory, no database trip.
                let row_known_empty = state
                    .row_empty_since
                    .is_some_and(|t| t.elapsed() < self.config.sold_out_recheck);
                if state.allotment < quantity
                    && !row_known_empty
                    && let Err(e) = self.check_out(state, quantity - state.allotment).await
                {
                    let _ = reply.send(Err(e));
                    return Ok(());
                }
                if state.allotment < quantity {
                    let _ = reply.send(Err(ReserveError::OutOfStock));
                } else {
                    state.allotment -= quantity;
                    state.pending.push(Pending {
                        order_id,
                        quantity,
                        reply,
                    });
                    state
                        .stats
                        .pending
                        .store(state.pending.len(), Ordering::Relaxed);
                    self.start_flush(&myself, state);
                }
                state
                    .stats
                    .allotment
                    .store(state.allotment, Ordering::Relaxed);
            }
            StockMsg::Flushed { batch, result } => {
                state.flushing = false;
                state
                    .stats
                    .last_flush_at
                    .store(now_millis(), Ordering::Relaxed);
                state.stats.flushes.fetch_add(1, Ordering::Relaxed);
                match result {
                    Ok(ReserveOutcome::Written) => {
                        for p in batch {
                            let _ = p.reply.send(Ok(()));
                        }
                    }
                    Ok(ReserveOutcome::Fenced) => {
                        for p in batch {
                            let _ = p.reply.send(Err(ReserveError::Unavailable(
                                "this node no longer owns the item".into(),
                            )));
                        }
                        self.slots.remove_actor(state.item_id, myself.get_id());
                        myself.stop(Some("fenced".into()));
                        return Ok(());
                    }
                    Err(e) => {
                        // Nothing was written: the units are still ours to sell.
                        state.allotment += batch.iter().map(|p| p.quantity).sum::<i64>();
                        state.stats.sold_out_until.store(0, Ordering::Relaxed);
                        for p in batch {
                            let _ = p.reply.send(Err(ReserveError::Unavailable(e.to_string())));
                        }
                    }
                }
                state
                    .stats
                    .allotment
                    .store(state.allotment, Ordering::Relaxed);
                self.start_flush(&myself, state);
                if !state.flushing
                    && let Some(reply) = state.draining.take()
                {
                    self.give_back(state).await;
                    let _ = reply.send(());
                    myself.stop(Some("drained".into()));
                }
            }
            StockMsg::Replenished => {
                state.row_empty_since = None;
                state.stats.sold_out_until.store(0, Ordering::Relaxed);
            }
            StockMsg::IdleCheck => {
                let idle = state.last_activity.elapsed() >= self.config.passivate_after;
                if idle
                    && !state.flushing
                    && state.pending.is_empty()
                    && self.slots.remove_if_idle(state.item_id)
                {
                    self.give_back(state).await;
                    myself.stop(Some("passivated".into()));
                }
            }
            StockMsg::Drain(reply) => {
                self.start_flush(&myself, state);
                if state.flushing {
                    state.draining = Some(reply);
                } else {
                    self.give_back(state).await;
                    let _ = reply.send(());
                    myself.stop(Some("drained".into()));
                }
            }
        }
        Ok(())
    }
}

impl StockActor {
    async fn give_back(&self, state: &mut StockState) {
        match self.db.return_allotment(state.item_id, state.epoch).await {
            Ok(_) => state.allotment = 0,
            Err(e) => tracing::warn!(item = state.item_id, error = %e,
                "could not return the allotment; the next owner reclaims it"),
        }
        state
            .stats
            .allotment
            .store(state.allotment, Ordering::Relaxed);
    }
}

// ---- registry and supervision -------------------------------------------------------------

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
struct Slots(Arc<Mutex<HashMap<i64, Arc<Slot>>>>);

impl Slots {
    /// Removes the item's slot if it still holds the actor `id`: a newer actor that already
    /// took the item over keeps its place.
    fn remove_actor(&self, item_id: i64, id: ActorId) {
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
    fn remove_if_idle(&self, item_id: i64) -> bool {
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
    pub async fn reserve(
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
    pub async fn price_of(&self, item_id: i64) -> Result<Option<i64>, ReserveError> {
        let waiting = self.slot(item_id)?;
        match self.actor(item_id, &waiting.0).await {
            Ok(_) => Ok(Some(waiting.0.price.load(Ordering::Relaxed))),
            Err(ReserveError::ItemNotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether the item is known to be sold out right now (its actor saw the row empty within
    /// the recheck window and holds no units), without asking anyone.
    pub fn known_sold_out(&self, item_id: i64) -> bool {
        self.slots
            .0
            .lock()
            .ok()
            .and_then(|m| m.get(&item_id).cloned())
            .is_some_and(|slot| slot.stats.sold_out_until.load(Ordering::Relaxed) > now_millis())
    }

    /// Tells an item's actor that units went back to its row.
    pub fn replenished(&self, item_id: i64) {
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
