//! The stock actor of one item: sells from its checked-out allotment in memory and hands its
//! reservations to the group committer in batches (one batch in flight; the next fills
//! meanwhile). A batch fenced by a newer epoch stops the actor: another owner took the item.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use surge_persistence::committer::GroupCommitter;
use surge_persistence::stock::{ReserveBatch, ReserveOutcome};
use surge_persistence::{Database, PersistenceError, now_millis};

use super::registry::RegistryCell;
use super::{ReserveError, StockConfig};

/// Counters an actor shares with the admin endpoint.
#[derive(Debug, Default)]
pub struct StockStats {
    /// Unix ms until which the item is known sold out (allotment empty, row seen empty): a
    /// saga reading it may fail an order without asking the actor or the database.
    pub(super) sold_out_until: AtomicI64,
    pub(super) allotment: AtomicI64,
    pub(super) pending: AtomicUsize,
    pub(super) last_flush_at: AtomicI64,
    pub(super) last_batch: AtomicUsize,
    pub(super) flushes: AtomicU64,
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
    pub(super) order_id: i64,
    pub(super) quantity: i64,
    pub(super) reply: RpcReplyPort<Result<(), ReserveError>>,
}

/// The actor.
#[derive(Debug)]
pub struct StockActor {
    pub(super) db: Database,
    pub(super) committer: GroupCommitter,
    pub(super) config: StockConfig,
    /// The registry that started this actor, to leave it when fenced or passivated.
    pub(super) registry: RegistryCell,
}

/// Startup arguments: the ownership just claimed.
#[derive(Debug)]
pub struct StockArgs {
    pub(super) item_id: i64,
    pub(super) epoch: i64,
    pub(super) stats: Arc<StockStats>,
}

/// The actor's state.
#[derive(Debug)]
pub struct StockState {
    pub(super) item_id: i64,
    pub(super) epoch: i64,
    /// Units checked out and not promised to anyone: the only units this actor may sell.
    pub(super) allotment: i64,
    /// Reservations waiting for the next batch.
    pub(super) pending: Vec<Pending>,
    /// When the item row was last seen empty.
    pub(super) row_empty_since: Option<tokio::time::Instant>,
    /// Whether a batch is being committed. One at a time per item keeps the allotment
    /// arithmetic simple; the next batch fills meanwhile.
    pub(super) flushing: bool,
    pub(super) last_activity: tokio::time::Instant,
    pub(super) draining: Option<RpcReplyPort<()>>,
    pub(super) stats: Arc<StockStats>,
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
                        if let Some(registry) = self.registry.get() {
                            registry.forget(state.item_id, myself.get_id());
                        }
                        myself.stop(Some("fenced".into()));
                        return Ok(());
                    }
                    Err(PersistenceError::Unknown(cause)) => {
                        // The batch may be durable: its units must not be sold again. They stay
                        // out of the allotment; if the commit did not land, the allotment row
                        // still counts them and they come back when it is given back or
                        // reclaimed (an undersell until then, never an oversell).
                        for p in batch {
                            let _ = p.reply.send(Err(ReserveError::Undetermined(cause.clone())));
                        }
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
                    && self
                        .registry
                        .get()
                        .is_some_and(|r| r.passivate(state.item_id, myself.get_id()))
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
