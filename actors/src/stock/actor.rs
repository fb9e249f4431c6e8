//! The stock actor of one item: sells from its checked-out allotment in memory and hands its
//! reservations to the group committer in batches (one batch in flight; the next fills
//! meanwhile). A batch fenced by a newer epoch stops the actor: another owner took the item.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use surge_persistence::committer::GroupCommitter;
use surge_persistence::stock::{ReserveBatch, ReserveOutcome};
use surge_persistence::{Database, PersistenceError, now_millis};

use super::registry::RegistryCell;
use super::{ReserveError, StockConfig};

/// Counters an actor shares with the admin endpoint.
#[derive(Debug, Default)]
pub struct StockStats {
    /// The item is known sold out (allotment empty, row seen empty, nothing came back since):
    /// a saga reading it may refuse an order without asking the actor or the database.
    ///
    /// Concurrency decision: written only by the actor, read by sagas without a message; a
    /// stale `false` costs one message to the actor, a stale `true` lasts at most until the
    /// actor's next wake-up (a release it hears of, or its background re-check).
    pub(super) sold_out: AtomicBool,
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
    /// Time for the background re-check of a row seen empty.
    Recheck,
    /// The background re-check's plain read: units in the item row now.
    RowSeen(i64),
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
    /// The item row was seen empty and nothing is known to have come back since: a request
    /// the allotment cannot cover is refused from memory, with no database trip and no write.
    pub(super) row_empty: bool,
    /// A background re-check's read is in flight (at most one).
    pub(super) rechecking: bool,
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
                state.row_empty = left == 0;
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
        myself.send_interval(self.config.sold_out_recheck, || StockMsg::Recheck);
        Ok(StockState {
            item_id: args.item_id,
            epoch: args.epoch,
            allotment: 0,
            pending: Vec::new(),
            row_empty: false,
            rechecking: false,
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
                // Check units out only while the row may still have some: a row seen empty is
                // not asked again until something says units came back.
                if state.allotment < quantity
                    && !state.row_empty
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
                Self::publish_sold_out(state);
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
                        Self::publish_sold_out(state);
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
                state.row_empty = false;
                Self::publish_sold_out(state);
            }
            StockMsg::Recheck => {
                // Units can come back without this node hearing of it (the sweeper releases
                // expired reservations, another node cancels): look with a plain read, off the
                // handler, never a write lock inside it.
                if state.row_empty && !state.rechecking {
                    state.rechecking = true;
                    let db = self.db.clone();
                    let item_id = state.item_id;
                    let me = myself.clone();
                    tokio::spawn(async move {
                        let available = match db.price_and_available(item_id).await {
                            Ok(found) => found.map_or(0, |(_, available)| available),
                            Err(e) => {
                                tracing::debug!(item = item_id, error = %e, "stock re-check failed");
                                0
                            }
                        };
                        let _ = me.cast(StockMsg::RowSeen(available));
                    });
                }
            }
            StockMsg::RowSeen(available) => {
                state.rechecking = false;
                if available > 0 {
                    state.row_empty = false;
                    Self::publish_sold_out(state);
                }
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
    /// Shares "sold out" (nothing allotted, row seen empty) with the sagas.
    fn publish_sold_out(state: &StockState) {
        state
            .stats
            .sold_out
            .store(state.row_empty && state.allotment == 0, Ordering::Relaxed);
    }

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
