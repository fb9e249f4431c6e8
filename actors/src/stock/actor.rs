//! The stock actor of one item: sells from its checked-out allotment in memory, one message at a
//! time. A sale is a **hold**: units taken from the allotment in memory, tagged with the
//! actor's epoch. The order that got the hold takes the units durably in its own write (one
//! group-committed transaction per order: the allotment row decremented under that epoch, the
//! order, its lines and its event). A hold the order did not take comes back with `Release`; a
//! hold whose epoch was refused by the database means another owner took the item over: the
//! actor stops (`Lost`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use surge_persistence::{Database, PersistenceError, now_millis};
use tokio::sync::oneshot;

use super::registry::RegistryCell;
use super::{ReserveError, StockConfig};

/// Counters an actor shares with the admin endpoint and with sagas.
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
    /// Holds given since the actor started.
    pub(super) holds: AtomicU64,
    /// Unix ms of the last check-out from the item row.
    pub(super) last_check_out_at: AtomicI64,
    /// Units moved by the last check-out.
    pub(super) last_check_out: AtomicUsize,
}

/// Messages of a stock actor.
#[derive(Debug)]
pub enum StockMsg {
    /// Hold `quantity` units for an order; answered with the actor's epoch, which the order's
    /// write names when it takes the units.
    Hold {
        /// Units.
        quantity: i64,
        /// Answer: the epoch. A plain oneshot (not a ractor call) so a caller that stops
        /// waiting can still learn of a late hold and give it back.
        reply: oneshot::Sender<Result<i64, ReserveError>>,
    },
    /// A hold its order did not take (refused, or its write failed before committing): the
    /// units are this actor's to sell again.
    Release {
        /// Units.
        quantity: i64,
        /// The epoch the hold was given under (a hold of an earlier incarnation is ignored:
        /// its units were reclaimed with the takeover).
        epoch: i64,
    },
    /// The database refused a hold of this epoch: another owner took the item over.
    Lost {
        /// The refused epoch.
        epoch: i64,
    },
    /// Units went back to the item row: look again before refusing.
    Replenished,
    /// Time for the background re-check of a row seen empty.
    Recheck,
    /// The background re-check's plain read: units in the item row now.
    RowSeen(i64),
    /// Passivate if idle.
    IdleCheck,
    /// Give the allotment back and stop (graceful shutdown).
    Drain(RpcReplyPort<()>),
}

/// The actor.
#[derive(Debug)]
pub struct StockActor {
    pub(super) db: Database,
    pub(super) config: StockConfig,
    /// The registry that started this actor, to leave it when passivated or fenced.
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
    item_id: i64,
    epoch: i64,
    /// Units checked out and not promised to anyone: the only units this actor may sell.
    allotment: i64,
    /// The item row was seen empty and nothing is known to have come back since: a request
    /// the allotment cannot cover is refused from memory, with no database trip and no write.
    row_empty: bool,
    /// A background re-check's read is in flight (at most one).
    rechecking: bool,
    /// Units held since the last check-out, and when it was: the rate of sales that sizes the
    /// next check-out.
    held_since_check_out: i64,
    last_check_out: tokio::time::Instant,
    last_activity: tokio::time::Instant,
    stats: Arc<StockStats>,
}

/// Most units one check-out asks for, whatever the rate of sales: an allotment is stock other
/// owners cannot sell until it is given back.
const MAX_CHECK_OUT: i64 = 100_000;

/// Why a check-out moved nothing.
enum CheckOutError {
    /// The allotment row carries a newer epoch: another owner has the item.
    Fenced,
    /// The database failed; nothing moved.
    Failed(String),
}

impl StockActor {
    /// Checks units out of the item row: what this request needs, and at least about one
    /// second of sales at the recent rate (and at least the configured chunk), so a hot item
    /// goes to the database about once a second rather than every few hundred units.
    async fn check_out(&self, state: &mut StockState, need: i64) -> Result<(), CheckOutError> {
        let elapsed_ms = i64::try_from(state.last_check_out.elapsed().as_millis())
            .unwrap_or(i64::MAX)
            .max(1);
        let per_second = state.held_since_check_out.saturating_mul(1_000) / elapsed_ms;
        let want = need
            .max(self.config.allotment_chunk)
            .max(per_second.min(MAX_CHECK_OUT));
        state.held_since_check_out = 0;
        state.last_check_out = tokio::time::Instant::now();
        match self
            .db
            .check_out_units(state.item_id, state.epoch, want)
            .await
        {
            Ok((moved, left)) => {
                state.allotment += moved;
                state.row_empty = left == 0;
                state
                    .stats
                    .last_check_out_at
                    .store(now_millis(), Ordering::Relaxed);
                state
                    .stats
                    .last_check_out
                    .store(usize::try_from(moved).unwrap_or(0), Ordering::Relaxed);
                Ok(())
            }
            Err(PersistenceError::Conflict) => Err(CheckOutError::Fenced),
            Err(e) => Err(CheckOutError::Failed(e.to_string())),
        }
    }

    /// Shares the allotment and "sold out" (nothing allotted, row seen empty) with the sagas
    /// and the admin page.
    fn publish(state: &StockState) {
        state
            .stats
            .allotment
            .store(state.allotment, Ordering::Relaxed);
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
        Self::publish(state);
    }

    /// Leaves the registry and stops: another owner has the item.
    fn fenced(&self, myself: &ActorRef<StockMsg>, state: &StockState) {
        if let Some(registry) = self.registry.get() {
            registry.forget(state.item_id, myself.get_id());
        }
        myself.stop(Some("fenced".into()));
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
        let state = StockState {
            item_id: args.item_id,
            epoch: args.epoch,
            allotment: 0,
            row_empty: false,
            rechecking: false,
            held_since_check_out: 0,
            last_check_out: tokio::time::Instant::now(),
            last_activity: tokio::time::Instant::now(),
            stats: args.stats,
        };
        // The stats outlive a failed predecessor: what it knew (sold out) is not known now.
        Self::publish(&state);
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<StockMsg>,
        message: StockMsg,
        state: &mut StockState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            StockMsg::Hold { quantity, reply } => {
                state.last_activity = tokio::time::Instant::now();
                // Check units out only while the row may still have some: a row seen empty is
                // not asked again until something says units came back.
                if state.allotment < quantity && !state.row_empty {
                    match self.check_out(state, quantity - state.allotment).await {
                        Ok(()) => {}
                        Err(CheckOutError::Fenced) => {
                            let _ = reply.send(Err(ReserveError::Unavailable(
                                "this node no longer owns the item".into(),
                            )));
                            self.fenced(&myself, state);
                            return Ok(());
                        }
                        Err(CheckOutError::Failed(cause)) => {
                            let _ = reply.send(Err(ReserveError::Unavailable(cause)));
                            return Ok(());
                        }
                    }
                }
                if state.allotment < quantity {
                    let _ = reply.send(Err(ReserveError::OutOfStock));
                } else {
                    state.allotment -= quantity;
                    state.held_since_check_out += quantity;
                    state.stats.holds.fetch_add(1, Ordering::Relaxed);
                    let _ = reply.send(Ok(state.epoch));
                }
                Self::publish(state);
            }
            StockMsg::Release { quantity, epoch } => {
                if epoch == state.epoch {
                    state.allotment += quantity;
                    Self::publish(state);
                }
            }
            StockMsg::Lost { epoch } => {
                if epoch == state.epoch {
                    self.fenced(&myself, state);
                }
            }
            StockMsg::Replenished => {
                state.row_empty = false;
                Self::publish(state);
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
                    Self::publish(state);
                }
            }
            StockMsg::IdleCheck => {
                let idle = state.last_activity.elapsed() >= self.config.passivate_after;
                if idle
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
                self.give_back(state).await;
                if let Some(registry) = self.registry.get() {
                    registry.forget(state.item_id, myself.get_id());
                }
                let _ = reply.send(());
                myself.stop(Some("drained".into()));
            }
        }
        Ok(())
    }
}
