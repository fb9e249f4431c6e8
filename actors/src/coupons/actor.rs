//! The coupon actor: decides issue requests one message at a time, with at most one batch in
//! flight (written by the group committer in embedded mode, pipelined to Redis in Redis mode);
//! everything that arrives meanwhile forms the next batch.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use surge_persistence::Database;
use surge_persistence::committer::GroupCommitter;
use surge_persistence::coupons::CouponRecord;

use super::waiting_room::WaitingRoom;
use super::{
    ADMIT_TICK, CouponConfig, CouponError, CouponStore, IssueOutcome, MAX_EMBEDDED_BATCH,
    MAX_PIPELINE, QueueStatus, embedded, redis,
};

/// Who learns the outcome of an issue.
#[derive(Debug)]
pub enum Answer {
    /// An HTTP request.
    Caller(RpcReplyPort<Result<IssueOutcome, CouponError>>),
    /// A member admitted from the waiting room (the answer goes to the room's records).
    Room,
}

/// An issue request being decided.
#[derive(Debug)]
pub struct IssueCall {
    pub(super) user_id: i64,
    pub(super) key: Option<String>,
    pub(super) answer: Answer,
}

/// Messages of a coupon actor.
#[derive(Debug)]
pub enum CouponMsg {
    /// Issue the coupon to a member (or queue the member when a waiting room is in force).
    Issue {
        /// Member.
        user_id: i64,
        /// Idempotency-Key.
        key: Option<String>,
        /// Answer.
        reply: RpcReplyPort<Result<IssueOutcome, CouponError>>,
    },
    /// A member's standing.
    Status {
        /// Member.
        user_id: i64,
        /// Answer.
        reply: RpcReplyPort<QueueStatus>,
    },
    /// Coupons left (embedded authority; Redis mode reads Redis).
    Remaining(RpcReplyPort<i64>),
    /// A batch finished: its calls and what each got.
    BatchDone(Vec<(IssueCall, Result<IssueOutcome, CouponError>)>),
    /// Admit the next members from the waiting room.
    Admit,
}
/// What a member holds, as far as the embedded actor knows.
#[derive(Debug, Clone)]
pub(super) struct Holding {
    pub(super) issued_at: i64,
    pub(super) key: Option<String>,
}
/// State of one coupon actor.
#[derive(Debug)]
pub struct CouponState {
    pub(super) coupon: CouponRecord,
    /// Embedded mode: coupons left, counting issues whose batch is still being committed
    /// (they are decided; only a failed commit gives them back). Redis mode: unused.
    pub(super) remaining: i64,
    /// Embedded mode: every holder, including issues still being committed.
    pub(super) holders: HashMap<i64, Holding>,
    /// Requests waiting for the next batch.
    pub(super) queued: Vec<IssueCall>,
    /// Whether a batch is being written (embedded) or is in Redis (Redis mode). One at a
    /// time: the next batch collects everything that arrives meanwhile.
    pub(super) in_flight: bool,
    /// Set once the coupon is known to be gone; the waiting room then tells everyone.
    pub(super) sold_out: bool,
    pub(super) room: Option<WaitingRoom>,
    pub(super) stats: Arc<CouponStats>,
}

/// Counters a coupon actor shares with the admin endpoint.
#[derive(Debug, Default)]
pub struct CouponStats {
    pub(super) remaining: AtomicI64,
    pub(super) room_size: AtomicUsize,
    pub(super) last_batch: AtomicUsize,
}

/// The actor.
#[derive(Debug)]
pub struct CouponActor {
    pub(super) db: Database,
    pub(super) committer: GroupCommitter,
    pub(super) store: CouponStore,
    pub(super) config: CouponConfig,
}

/// Startup arguments.
#[derive(Debug)]
pub struct CouponArgs {
    pub(super) coupon: CouponRecord,
    pub(super) stats: Arc<CouponStats>,
}
pub(super) fn reply_to(call: IssueCall, result: Result<IssueOutcome, CouponError>) {
    if let Answer::Caller(port) = call.answer {
        let _ = port.send(result);
    }
}

impl CouponActor {
    /// Sends the waiting requests off as one batch, unless one is in flight.
    fn start_batch(&self, myself: &ActorRef<CouponMsg>, state: &mut CouponState) {
        if state.in_flight || state.queued.is_empty() {
            return;
        }
        let limit = match self.store {
            CouponStore::Embedded => MAX_EMBEDDED_BATCH,
            CouponStore::Redis { .. } => MAX_PIPELINE,
        };
        let take = state.queued.len().min(limit);
        let batch: Vec<IssueCall> = state.queued.drain(..take).collect();
        state.in_flight = true;
        state.stats.last_batch.store(batch.len(), Ordering::Relaxed);
        let me = myself.clone();
        let db = self.db.clone();
        let coupon = state.coupon.clone();
        match &self.store {
            CouponStore::Embedded => {
                embedded::spawn_batch(&self.committer, me, coupon, &state.holders, batch);
            }
            CouponStore::Redis { redis, breaker } => {
                redis::spawn_batch(db, (**redis).clone(), breaker.clone(), me, coupon, batch);
            }
        }
    }
    pub(super) fn take_request(
        &self,
        myself: &ActorRef<CouponMsg>,
        state: &mut CouponState,
        call: IssueCall,
    ) {
        if let CouponStore::Embedded = self.store
            && let Some(outcome) = Self::decide_embedded(state, &call)
        {
            self.record_room_outcome(state, call.user_id, &Ok(outcome.clone()));
            reply_to(call, Ok(outcome));
            return;
        }
        state.queued.push(call);
        self.start_batch(myself, state);
    }

    pub(super) fn record_room_outcome(
        &self,
        state: &mut CouponState,
        user_id: i64,
        result: &Result<IssueOutcome, CouponError>,
    ) {
        if matches!(result, Ok(IssueOutcome::SoldOut)) {
            state.sold_out = true;
        }
        if let Some(room) = state.room.as_mut() {
            let status = match result {
                Ok(IssueOutcome::Issued { .. } | IssueOutcome::Replayed { .. })
                | Ok(IssueOutcome::AlreadyIssued) => QueueStatus::Issued,
                Ok(IssueOutcome::SoldOut) => QueueStatus::SoldOut,
                _ => return,
            };
            room.admitted.insert(user_id, status);
        }
    }
    pub(super) fn status_of(state: &CouponState, user_id: i64) -> QueueStatus {
        if state.holders.contains_key(&user_id) {
            return QueueStatus::Issued;
        }
        if let Some(room) = &state.room {
            if let Some(status) = room.admitted.get(&user_id) {
                return *status;
            }
            if let Some(position) = room.position(user_id) {
                return if state.sold_out {
                    QueueStatus::SoldOut
                } else {
                    QueueStatus::Queued(position)
                };
            }
        }
        if state.sold_out {
            QueueStatus::SoldOut
        } else {
            QueueStatus::NotQueued
        }
    }
}

impl Actor for CouponActor {
    type Msg = CouponMsg;
    type State = CouponState;
    type Arguments = CouponArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<CouponMsg>,
        args: CouponArgs,
    ) -> Result<CouponState, ActorProcessingErr> {
        if let CouponStore::Embedded = self.store {
            // A predecessor that failed may have issues queued in the writer. An empty write
            // commits after them (the writer keeps queue order), so the holders read next
            // include them and the count cannot be handed out twice.
            self.committer.issue_coupons(Vec::new()).await?;
        }
        let holders = self.db.coupon_holders(args.coupon.id).await?;
        let issued = i64::try_from(holders.len()).unwrap_or(i64::MAX);
        if let CouponStore::Redis { redis, .. } = &self.store {
            redis.seed(&args.coupon, &holders).await?;
        }
        let remaining = (args.coupon.def.quantity - issued).max(0);
        args.stats.remaining.store(remaining, Ordering::Relaxed);
        let room = args.coupon.def.admit_per_second.map(|rate| {
            myself.send_interval(ADMIT_TICK, || CouponMsg::Admit);
            WaitingRoom {
                // Rates are at most 100,000, exactly representable.
                rate: rate as f64,
                ..WaitingRoom::default()
            }
        });
        let holders = match self.store {
            CouponStore::Embedded => holders
                .into_iter()
                .map(|h| {
                    (
                        h.user_id,
                        Holding {
                            issued_at: h.issued_at,
                            key: h.idem_key,
                        },
                    )
                })
                .collect(),
            // Redis holds the holders; the actor never decides from memory in this mode.
            CouponStore::Redis { .. } => HashMap::new(),
        };
        Ok(CouponState {
            coupon: args.coupon,
            remaining,
            holders,
            queued: Vec::new(),
            in_flight: false,
            sold_out: false,
            room,
            stats: args.stats,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<CouponMsg>,
        msg: CouponMsg,
        state: &mut CouponState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            CouponMsg::Issue {
                user_id,
                key,
                reply,
            } => {
                let call = IssueCall {
                    user_id,
                    key,
                    answer: Answer::Caller(reply),
                };
                if state.room.is_some() {
                    let max = self.config.max_room_size;
                    let outcome = Self::join_room(state, call_without_answer(&call), max);
                    reply_to(call, outcome);
                } else {
                    self.take_request(&myself, state, call);
                }
            }
            CouponMsg::Status { user_id, reply } => {
                let _ = reply.send(Self::status_of(state, user_id));
            }
            CouponMsg::Remaining(reply) => {
                let _ = reply.send(state.remaining);
            }
            CouponMsg::BatchDone(results) => {
                state.in_flight = false;
                for (call, result) in results {
                    if let CouponStore::Embedded = self.store
                        && result.is_err()
                        && state.holders.remove(&call.user_id).is_some()
                    {
                        // The write failed: the issue never happened.
                        state.remaining += 1;
                        state.sold_out = false;
                    }
                    self.record_room_outcome(state, call.user_id, &result);
                    if matches!(call.answer, Answer::Room)
                        && result.is_err()
                        && let Some(room) = state.room.as_mut()
                    {
                        // Admitted but the store failed: back to the front of the room.
                        room.admitted.remove(&call.user_id);
                        let place = room
                            .queue
                            .front()
                            .map_or(room.next_place, |(p, _, _)| p.saturating_sub(1));
                        room.places.insert(call.user_id, place);
                        room.queue
                            .push_front((place, call.user_id, call.key.clone()));
                    }
                    reply_to(call, result);
                }
                self.start_batch(&myself, state);
            }
            CouponMsg::Admit => self.admit(&myself, state),
        }
        state
            .stats
            .remaining
            .store(state.remaining, Ordering::Relaxed);
        Ok(())
    }
}
/// A copy of a call's member and key, for deciding a room entry while the original keeps the
/// reply port.
pub(super) fn call_without_answer(call: &IssueCall) -> IssueCall {
    IssueCall {
        user_id: call.user_id,
        key: call.key.clone(),
        answer: Answer::Room,
    }
}
