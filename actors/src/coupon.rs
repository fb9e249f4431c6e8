//! Coupon actors: one per live coupon, issuing first come, first served.
//!
//! - **Embedded mode**: the actor is the authority. It keeps the count and the holders in
//!   memory (loaded from the database when it starts), decides each request in arrival order,
//!   and answers only after the issue is committed by the group-commit writer.
//! - **Redis mode**: Redis is the authority. The actor batches the requests that arrive while a
//!   pipeline is in flight into the next pipeline of issue-script calls (one round trip for
//!   the whole batch), and [`IssueWriter`] moves issues from the Redis stream into the database.
//!
//! A coupon created with a waiting room queues its requests instead: members get a place in
//! arrival order and are issued at the coupon's admission rate.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;
use surge_persistence::committer::GroupCommitter;
use surge_persistence::coupons::{CouponRecord, NewIssue};
use surge_persistence::redis_coupons::{RedisCoupons, RedisIssue};
use surge_persistence::{Database, PersistenceError, now_millis};
use surge_supervisors::CircuitBreaker;
use tokio::sync::OnceCell;

use crate::supervision::{Failures, actor_name, start_supervisor};

/// Most issue calls in one Redis pipeline. Redis runs a pipeline's scripts back to back, so a
/// bigger batch only delays the first answer of the next batch.
const MAX_PIPELINE: usize = 256;
/// Most issues an embedded actor hands to the writer in one batch.
const MAX_EMBEDDED_BATCH: usize = 512;
/// How often a waiting room admits the next members.
const ADMIT_TICK: Duration = Duration::from_millis(50);
/// Longest a status or count query waits for its coupon actor.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Tuning of coupon actors.
#[derive(Debug, Clone)]
pub struct CouponConfig {
    /// Most requests that may wait on one coupon (its mailbox and its batch in flight). Beyond
    /// it the node answers 503 instead of letting a queue grow without bound.
    pub max_waiting_per_coupon: usize,
    /// Most members one waiting room holds; a full room answers 503.
    pub max_room_size: usize,
    /// How long an issue request waits for its answer. Past it the outcome is unknown (the
    /// issue may still commit), and the caller is told so.
    pub answer_timeout: Duration,
}

impl Default for CouponConfig {
    fn default() -> Self {
        Self {
            max_waiting_per_coupon: 10_000,
            max_room_size: 1_000_000,
            answer_timeout: Duration::from_secs(5),
        }
    }
}

/// Where the live count lives.
#[derive(Debug, Clone)]
pub enum CouponStore {
    /// In the actor's memory, made durable through the group-commit writer.
    Embedded,
    /// In Redis, behind a breaker.
    Redis {
        /// The store (boxed: it is large and the embedded variant is empty).
        redis: Box<RedisCoupons>,
        /// Breaker around every Redis call.
        breaker: Arc<CircuitBreaker>,
    },
}

/// How an issue request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IssueOutcome {
    /// Issued now, durably.
    Issued {
        /// Unix ms.
        issued_at: i64,
    },
    /// This member got it earlier with this same Idempotency-Key: replay the first answer.
    Replayed {
        /// Unix ms.
        issued_at: i64,
    },
    /// The member holds it already.
    AlreadyIssued,
    /// None left.
    SoldOut,
    /// Before `opens_at`.
    NotOpen {
        /// Unix ms.
        opens_at: i64,
    },
    /// A waiting room fronts the coupon: the member's place.
    Queued {
        /// 1 = next to be admitted.
        position: u64,
    },
}

/// Why an issue request could not be decided.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CouponError {
    /// No such coupon.
    #[error("coupon not found")]
    NotFound,
    /// Too many requests waiting, or the Redis breaker is open.
    #[error("overloaded")]
    Overloaded {
        /// Seconds to wait.
        retry_after_secs: u32,
    },
    /// A dependency failed; nothing was issued.
    #[error("coupon store unavailable: {0}")]
    Unavailable(String),
    /// No answer in time: the issue may or may not have happened.
    #[error("issue outcome unknown: {0}")]
    Undetermined(String),
}

/// A member's standing in a coupon's waiting room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum QueueStatus {
    /// Waiting, at this place.
    Queued(u64),
    /// Holds the coupon.
    Issued,
    /// None left for this member.
    SoldOut,
    /// Not in the room.
    NotQueued,
}

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
    user_id: i64,
    key: Option<String>,
    answer: Answer,
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
struct Holding {
    issued_at: i64,
    key: Option<String>,
}

/// A waiting room: places in arrival order, admitted at a fixed rate.
#[derive(Debug, Default)]
struct WaitingRoom {
    /// Members per second.
    rate: f64,
    /// Admissions earned but not yet spent (a token bucket without burst beyond one tick).
    tokens: f64,
    queue: VecDeque<(u64, i64, Option<String>)>,
    /// Place number of every member still queued; a member joins at most once.
    places: HashMap<i64, u64>,
    next_place: u64,
    /// Members admitted and how it ended for them.
    admitted: HashMap<i64, QueueStatus>,
}

impl WaitingRoom {
    fn position(&self, user_id: i64) -> Option<u64> {
        let place = *self.places.get(&user_id)?;
        let front = self.queue.front().map_or(place, |(p, _, _)| *p);
        Some(place - front + 1)
    }
}

/// State of one coupon actor.
#[derive(Debug)]
pub struct CouponState {
    coupon: CouponRecord,
    /// Embedded mode: coupons left, counting issues whose batch is still being committed
    /// (they are decided; only a failed commit gives them back). Redis mode: unused.
    remaining: i64,
    /// Embedded mode: every holder, including issues still being committed.
    holders: HashMap<i64, Holding>,
    /// Requests waiting for the next batch.
    queued: Vec<IssueCall>,
    /// Whether a batch is being written (embedded) or is in Redis (Redis mode). One at a
    /// time: the next batch collects everything that arrives meanwhile.
    in_flight: bool,
    /// Set once the coupon is known to be gone; the waiting room then tells everyone.
    sold_out: bool,
    room: Option<WaitingRoom>,
    stats: Arc<CouponStats>,
}

/// Counters a coupon actor shares with the admin endpoint.
#[derive(Debug, Default)]
pub struct CouponStats {
    remaining: AtomicI64,
    room_size: AtomicUsize,
    last_batch: AtomicUsize,
}

/// The actor.
#[derive(Debug)]
pub struct CouponActor {
    db: Database,
    committer: GroupCommitter,
    store: CouponStore,
    config: CouponConfig,
}

/// Startup arguments.
#[derive(Debug)]
pub struct CouponArgs {
    coupon: CouponRecord,
    stats: Arc<CouponStats>,
}

fn reply_to(call: IssueCall, result: Result<IssueOutcome, CouponError>) {
    if let Answer::Caller(port) = call.answer {
        let _ = port.send(result);
    }
}

/// Maps Redis's answer to the member's outcome (a replay when the keys match).
fn redis_outcome(answer: RedisIssue, key: Option<&str>, opens_at: i64) -> IssueOutcome {
    match answer {
        RedisIssue::Issued { issued_at } => IssueOutcome::Issued { issued_at },
        RedisIssue::AlreadyIssued {
            issued_at,
            key: first,
        } if key.is_some() && first.as_deref() == key => IssueOutcome::Replayed { issued_at },
        RedisIssue::AlreadyIssued { .. } => IssueOutcome::AlreadyIssued,
        RedisIssue::SoldOut | RedisIssue::Unknown => IssueOutcome::SoldOut,
        RedisIssue::NotOpen => IssueOutcome::NotOpen { opens_at },
    }
}

fn breaker_open(retry_after: Duration) -> CouponError {
    CouponError::Overloaded {
        retry_after_secs: u32::try_from(retry_after.as_secs().max(1)).unwrap_or(u32::MAX),
    }
}

/// Runs one Redis pipeline for `calls`, seeding the coupon first if Redis does not know it.
async fn redis_batch(
    db: &Database,
    redis: &RedisCoupons,
    breaker: &CircuitBreaker,
    coupon: &CouponRecord,
    calls: &[(i64, Option<String>)],
) -> Vec<Result<IssueOutcome, CouponError>> {
    let permit = match breaker.try_acquire() {
        Ok(p) => p,
        Err(rejected) => {
            return calls
                .iter()
                .map(|_| Err(breaker_open(rejected.retry_after)))
                .collect();
        }
    };
    let mut answers = redis.issue_batch(coupon.id, calls).await;
    let unknown =
        matches!(&answers, Ok(a) if a.iter().any(|r| matches!(r, Ok(RedisIssue::Unknown))));
    if unknown {
        // Redis lost the coupon (restart without persistence, eviction): seed it from the
        // database and ask once more.
        let seeded = match db.coupon_holders(coupon.id).await {
            Ok(holders) => redis
                .seed(coupon, &holders)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        answers = match seeded {
            Ok(()) => redis.issue_batch(coupon.id, calls).await,
            Err(e) => {
                tracing::warn!(coupon = coupon.id, error = %e, "seeding a coupon into Redis failed");
                answers
            }
        };
    }
    match answers {
        Ok(answers) => {
            permit.success();
            answers
                .into_iter()
                .zip(calls)
                .map(|(a, (_, key))| match a {
                    Ok(RedisIssue::Unknown) => Err(CouponError::Unavailable(
                        "the coupon is not in Redis".into(),
                    )),
                    Ok(a) => Ok(redis_outcome(a, key.as_deref(), coupon.def.opens_at)),
                    Err(e) => Err(CouponError::Unavailable(e.to_string())),
                })
                .collect()
        }
        Err(e) => {
            permit.failure();
            tracing::warn!(coupon = coupon.id, error = %e, "redis issue pipeline failed");
            // The pipeline may have reached Redis before the connection failed or the answer
            // timed out: its scripts may have run. Only a retry (same key) can tell.
            calls
                .iter()
                .map(|_| Err(CouponError::Undetermined(e.to_string())))
                .collect()
        }
    }
}

impl CouponActor {
    /// Decides a request in embedded mode. `Some` is a final answer; `None` means the issue
    /// was taken and is waiting for its batch.
    fn decide_embedded(state: &mut CouponState, call: &IssueCall) -> Option<IssueOutcome> {
        let now = now_millis();
        if now < state.coupon.def.opens_at {
            return Some(IssueOutcome::NotOpen {
                opens_at: state.coupon.def.opens_at,
            });
        }
        if let Some(h) = state.holders.get(&call.user_id) {
            return Some(if call.key.is_some() && h.key == call.key {
                IssueOutcome::Replayed {
                    issued_at: h.issued_at,
                }
            } else {
                IssueOutcome::AlreadyIssued
            });
        }
        if state.remaining <= 0 {
            state.sold_out = true;
            return Some(IssueOutcome::SoldOut);
        }
        state.remaining -= 1;
        state.holders.insert(
            call.user_id,
            Holding {
                issued_at: now,
                key: call.key.clone(),
            },
        );
        None
    }

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
                let committer = self.committer.clone();
                let issues: Vec<NewIssue> = batch
                    .iter()
                    .map(|c| NewIssue {
                        coupon_id: coupon.id,
                        user_id: c.user_id,
                        issued_at: state.holders.get(&c.user_id).map_or(0, |h| h.issued_at),
                        idem_key: c.key.clone(),
                    })
                    .collect();
                // Queued before this handler returns, so a successor actor's barrier write (see
                // `pre_start`) commits after it.
                let queued = committer.submit_issues(issues.clone());
                tokio::spawn(async move {
                    let written = match queued {
                        Ok(rx) => rx.await.unwrap_or(Err(PersistenceError::Closed)),
                        Err(e) => Err(e),
                    };
                    let results = batch
                        .into_iter()
                        .zip(issues)
                        .map(|(call, issue)| {
                            let result = match &written {
                                Ok(_) => Ok(IssueOutcome::Issued {
                                    issued_at: issue.issued_at,
                                }),
                                Err(e) => Err(embedded_failure(e)),
                            };
                            (call, result)
                        })
                        .collect();
                    let _ = me.cast(CouponMsg::BatchDone(results));
                });
            }
            CouponStore::Redis { redis, breaker } => {
                let redis = redis.clone();
                let breaker = breaker.clone();
                tokio::spawn(async move {
                    let calls: Vec<(i64, Option<String>)> =
                        batch.iter().map(|c| (c.user_id, c.key.clone())).collect();
                    let answers = redis_batch(&db, &redis, &breaker, &coupon, &calls).await;
                    let results = batch.into_iter().zip(answers).collect();
                    let _ = me.cast(CouponMsg::BatchDone(results));
                });
            }
        }
    }

    fn take_request(&self, myself: &ActorRef<CouponMsg>, state: &mut CouponState, call: IssueCall) {
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

    fn record_room_outcome(
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

    fn join_room(
        state: &mut CouponState,
        call: IssueCall,
        max_room_size: usize,
    ) -> Result<IssueOutcome, CouponError> {
        let now = now_millis();
        if now < state.coupon.def.opens_at {
            return Ok(IssueOutcome::NotOpen {
                opens_at: state.coupon.def.opens_at,
            });
        }
        let sold_out = state.sold_out;
        let Some(room) = state.room.as_mut() else {
            return Err(CouponError::Unavailable("no waiting room".into()));
        };
        if let Some(position) = room.position(call.user_id) {
            return Ok(IssueOutcome::Queued { position });
        }
        match room.admitted.get(&call.user_id) {
            Some(QueueStatus::Issued) => return Ok(IssueOutcome::AlreadyIssued),
            Some(QueueStatus::SoldOut) => return Ok(IssueOutcome::SoldOut),
            _ => {}
        }
        if state.holders.contains_key(&call.user_id) {
            return Ok(IssueOutcome::AlreadyIssued);
        }
        if sold_out {
            return Ok(IssueOutcome::SoldOut);
        }
        if room.queue.len() >= max_room_size {
            return Err(CouponError::Overloaded {
                retry_after_secs: 1,
            });
        }
        let place = room.next_place;
        room.next_place += 1;
        room.places.insert(call.user_id, place);
        room.queue.push_back((place, call.user_id, call.key));
        state
            .stats
            .room_size
            .store(room.queue.len(), Ordering::Relaxed);
        Ok(IssueOutcome::Queued {
            position: room.position(call.user_id).unwrap_or(1),
        })
    }

    fn status_of(state: &CouponState, user_id: i64) -> QueueStatus {
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

fn embedded_failure(e: &PersistenceError) -> CouponError {
    match e {
        PersistenceError::Overloaded => CouponError::Overloaded {
            retry_after_secs: 1,
        },
        other => CouponError::Unavailable(other.to_string()),
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
fn call_without_answer(call: &IssueCall) -> IssueCall {
    IssueCall {
        user_id: call.user_id,
        key: call.key.clone(),
        answer: Answer::Room,
    }
}

impl CouponActor {
    fn admit(&self, myself: &ActorRef<CouponMsg>, state: &mut CouponState) {
        let sold_out = state.sold_out;
        let in_flight = state.in_flight;
        let Some(room) = state.room.as_mut() else {
            return;
        };
        if sold_out {
            // Nobody queued can get one: tell them all at once.
            for (_, user, _) in room.queue.drain(..) {
                room.places.remove(&user);
                room.admitted.insert(user, QueueStatus::SoldOut);
            }
            state.stats.room_size.store(0, Ordering::Relaxed);
            return;
        }
        let per_tick = room.rate * ADMIT_TICK.as_secs_f64();
        room.tokens = (room.tokens + per_tick).min(per_tick.max(1.0) * 2.0);
        if in_flight || room.queue.is_empty() {
            return;
        }
        // Whole admissions earned; the fraction carries to the next tick.
        let n = room.tokens.floor().max(0.0) as usize;
        let mut admitted = Vec::with_capacity(n.min(room.queue.len()));
        for _ in 0..n {
            let Some((_, user, key)) = room.queue.pop_front() else {
                break;
            };
            room.places.remove(&user);
            admitted.push(IssueCall {
                user_id: user,
                key,
                answer: Answer::Room,
            });
        }
        room.tokens -= admitted.len() as f64;
        state
            .stats
            .room_size
            .store(room.queue.len(), Ordering::Relaxed);
        for call in admitted {
            self.take_request(myself, state, call);
        }
    }
}

/// A coupon actor as the registry holds it.
#[derive(Debug)]
struct Slot {
    actor: OnceCell<ActorRef<CouponMsg>>,
    /// Requests on their way to or inside the actor: the admission bound.
    waiting: Arc<AtomicUsize>,
    stats: Arc<CouponStats>,
    coupon: OnceCell<CouponRecord>,
}

/// What the admin endpoint shows of a coupon actor.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CouponActorView {
    /// Always "coupon".
    pub kind: &'static str,
    /// Coupon id.
    pub key: i64,
    /// Requests waiting on the actor.
    pub mailbox_len: usize,
    /// Times an actor of this coupon failed and was replaced.
    pub restarts: u64,
    /// The last failure.
    pub last_error: Option<String>,
    /// Coupons left as the actor knows it (embedded mode; Redis mode shows the count at start).
    pub remaining: i64,
    /// Members in the waiting room.
    pub waiting_room: usize,
    /// Size of the last batch.
    pub last_batch_size: usize,
}

/// Gives back the slot's waiting count when an issue request ends, however it ends.
struct Waiting(Arc<AtomicUsize>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Every coupon actor of the node, started on first use and supervised.
#[derive(Debug, Clone)]
pub struct CouponActors {
    db: Database,
    committer: GroupCommitter,
    store: CouponStore,
    config: CouponConfig,
    slots: Arc<Mutex<HashMap<i64, Arc<Slot>>>>,
    /// Failures per coupon. A failed actor is dropped from the registry; the next request
    /// starts a fresh one from durable state (the database, or Redis).
    failures: Failures,
    supervisor: ActorRef<()>,
}

impl CouponActors {
    /// Starts the supervisor.
    pub async fn start(
        db: Database,
        committer: GroupCommitter,
        store: CouponStore,
        config: CouponConfig,
    ) -> Result<Self, ractor::SpawnErr> {
        let slots: Arc<Mutex<HashMap<i64, Arc<Slot>>>> = Arc::default();
        let failures = Failures::default();
        let registry = slots.clone();
        let supervisor = start_supervisor(
            "coupon",
            failures.clone(),
            Box::new(move |coupon_id, id| {
                if let Ok(mut map) = registry.lock()
                    && map
                        .get(&coupon_id)
                        .and_then(|s| s.actor.get())
                        .is_some_and(|a| a.get_id() == id)
                {
                    map.remove(&coupon_id);
                }
            }),
        )
        .await?;
        Ok(Self {
            db,
            committer,
            store,
            config,
            slots,
            failures,
            supervisor,
        })
    }

    fn slot(&self, coupon_id: i64) -> Result<Arc<Slot>, CouponError> {
        let mut map = self
            .slots
            .lock()
            .map_err(|_| CouponError::Unavailable("registry poisoned".into()))?;
        Ok(map
            .entry(coupon_id)
            .or_insert_with(|| {
                Arc::new(Slot {
                    actor: OnceCell::new(),
                    waiting: Arc::default(),
                    stats: Arc::default(),
                    coupon: OnceCell::new(),
                })
            })
            .clone())
    }

    /// A coupon's definition (immutable once created, so cached for the actor's lifetime).
    pub async fn definition(&self, coupon_id: i64) -> Result<CouponRecord, CouponError> {
        let slot = self.slot(coupon_id)?;
        let found = slot
            .coupon
            .get_or_try_init(|| async {
                self.db
                    .coupon_by_id(coupon_id)
                    .await
                    .map_err(|e| CouponError::Unavailable(e.to_string()))?
                    .ok_or(CouponError::NotFound)
            })
            .await;
        match found {
            Ok(c) => Ok(c.clone()),
            Err(CouponError::NotFound) => {
                if let Ok(mut map) = self.slots.lock()
                    && map.get(&coupon_id).is_some_and(|s| s.actor.get().is_none())
                {
                    map.remove(&coupon_id);
                }
                Err(CouponError::NotFound)
            }
            Err(e) => Err(e),
        }
    }

    async fn actor(&self, coupon_id: i64) -> Result<(Arc<Slot>, ActorRef<CouponMsg>), CouponError> {
        let coupon = self.definition(coupon_id).await?;
        let slot = self.slot(coupon_id)?;
        let actor = slot
            .actor
            .get_or_try_init(|| async {
                let (actor, _) = Actor::spawn_linked(
                    Some(actor_name("coupon", coupon_id)),
                    CouponActor {
                        db: self.db.clone(),
                        committer: self.committer.clone(),
                        store: self.store.clone(),
                        config: self.config.clone(),
                    },
                    CouponArgs {
                        coupon,
                        stats: slot.stats.clone(),
                    },
                    self.supervisor.get_cell(),
                )
                .await
                .map_err(|e| CouponError::Unavailable(e.to_string()))?;
                Ok::<_, CouponError>(actor)
            })
            .await?
            .clone();
        Ok((slot, actor))
    }

    /// Puts a new coupon in service at once (in Redis mode its counters are seeded now, so
    /// issuing needs no loading step).
    pub async fn open(&self, coupon_id: i64) -> Result<(), CouponError> {
        self.actor(coupon_id).await.map(|_| ())
    }

    /// Issues a coupon to a member (or queues the member in the coupon's waiting room).
    pub async fn issue(
        &self,
        coupon_id: i64,
        user_id: i64,
        key: Option<String>,
    ) -> Result<IssueOutcome, CouponError> {
        if let CouponStore::Redis { breaker, .. } = &self.store
            && let Err(rejected) = breaker.try_acquire()
        {
            return Err(breaker_open(rejected.retry_after));
        }
        let (slot, actor) = self.actor(coupon_id).await?;
        if slot.waiting.fetch_add(1, Ordering::AcqRel) >= self.config.max_waiting_per_coupon {
            slot.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(CouponError::Overloaded {
                retry_after_secs: 1,
            });
        }
        let _waiting = Waiting(slot.waiting.clone());
        let answer = actor
            .call(
                |reply| CouponMsg::Issue {
                    user_id,
                    key,
                    reply,
                },
                Some(self.config.answer_timeout),
            )
            .await;
        match answer {
            Ok(ractor::rpc::CallResult::Success(result)) => result,
            Ok(ractor::rpc::CallResult::Timeout) => Err(CouponError::Undetermined(
                "the coupon actor did not answer in time".into(),
            )),
            Ok(ractor::rpc::CallResult::SenderError) | Err(_) => {
                Err(CouponError::Unavailable("the coupon actor stopped".into()))
            }
        }
    }

    /// A member's standing for a coupon.
    pub async fn status(&self, coupon_id: i64, user_id: i64) -> Result<QueueStatus, CouponError> {
        let (_, actor) = self.actor(coupon_id).await?;
        let status = match actor
            .call(
                |reply| CouponMsg::Status { user_id, reply },
                Some(QUERY_TIMEOUT),
            )
            .await
        {
            Ok(ractor::rpc::CallResult::Success(s)) => s,
            _ => return Err(CouponError::Unavailable("the coupon actor stopped".into())),
        };
        match (&self.store, status) {
            (CouponStore::Redis { redis, .. }, QueueStatus::NotQueued | QueueStatus::SoldOut) => {
                if redis
                    .holder(coupon_id, user_id)
                    .await
                    .map_err(|e| CouponError::Unavailable(e.to_string()))?
                    .is_some()
                {
                    return Ok(QueueStatus::Issued);
                }
                let left = self.remaining(coupon_id).await?;
                Ok(if left == 0 {
                    QueueStatus::SoldOut
                } else {
                    status
                })
            }
            _ => Ok(status),
        }
    }

    /// Coupons left.
    pub async fn remaining(&self, coupon_id: i64) -> Result<i64, CouponError> {
        let (_, actor) = self.actor(coupon_id).await?;
        match &self.store {
            CouponStore::Redis { redis, .. } => redis
                .remaining(coupon_id)
                .await
                .map_err(|e| CouponError::Unavailable(e.to_string()))?
                .ok_or_else(|| CouponError::Unavailable("the coupon is not in Redis".into())),
            CouponStore::Embedded => {
                match actor.call(CouponMsg::Remaining, Some(QUERY_TIMEOUT)).await {
                    Ok(ractor::rpc::CallResult::Success(n)) => Ok(n),
                    _ => Err(CouponError::Unavailable("the coupon actor stopped".into())),
                }
            }
        }
    }

    /// Makes sure the database has the member's issue before an order uses it. In Redis mode
    /// an issue reaches the database through the stream a moment after the member's 201; an
    /// order placed in that moment writes the row itself (the same idempotent write).
    pub async fn ensure_recorded(&self, coupon_id: i64, user_id: i64) -> Result<(), CouponError> {
        let CouponStore::Redis { redis, .. } = &self.store else {
            return Ok(());
        };
        let unavailable = |e: String| CouponError::Unavailable(e);
        if self
            .db
            .issue_of(coupon_id, user_id)
            .await
            .map_err(|e| unavailable(e.to_string()))?
            .is_some()
        {
            return Ok(());
        }
        if let Some((issued_at, idem_key)) = redis
            .holder(coupon_id, user_id)
            .await
            .map_err(|e| unavailable(e.to_string()))?
        {
            self.committer
                .issue_coupons(vec![NewIssue {
                    coupon_id,
                    user_id,
                    issued_at,
                    idem_key,
                }])
                .await
                .map_err(|e| unavailable(e.to_string()))?;
        }
        Ok(())
    }

    /// Every live coupon actor, for the admin endpoint.
    pub fn views(&self) -> Vec<CouponActorView> {
        let slots: Vec<(i64, Arc<Slot>)> = self
            .slots
            .lock()
            .map(|m| m.iter().map(|(k, v)| (*k, v.clone())).collect())
            .unwrap_or_default();
        let mut views: Vec<CouponActorView> = slots
            .into_iter()
            .filter(|(_, s)| s.actor.initialized())
            .map(|(coupon_id, s)| {
                let failure = self.failures.of(coupon_id);
                CouponActorView {
                    kind: "coupon",
                    key: coupon_id,
                    mailbox_len: s.waiting.load(Ordering::Relaxed),
                    restarts: failure.restarts,
                    last_error: failure.last_error,
                    remaining: s.stats.remaining.load(Ordering::Relaxed),
                    waiting_room: s.stats.room_size.load(Ordering::Relaxed),
                    last_batch_size: s.stats.last_batch.load(Ordering::Relaxed),
                }
            })
            .collect();
        views.sort_by_key(|v| v.key);
        views
    }

    /// Stops every coupon actor. Embedded batches in flight finish first (the writer is
    /// drained after the actors), so no answered issue is lost.
    pub fn stop(&self) {
        self.supervisor.stop(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_positions_count_from_the_front() {
        let mut room = WaitingRoom::default();
        for (place, user) in [(0, 10), (1, 11), (2, 12)] {
            room.places.insert(user, place);
            room.queue.push_back((place, user, None));
        }
        assert_eq!(room.position(10), Some(1));
        assert_eq!(room.position(12), Some(3));
        let (_, first, _) = room.queue.pop_front().unwrap();
        room.places.remove(&first);
        assert_eq!(room.position(10), None);
        assert_eq!(room.position(11), Some(1));
        assert_eq!(room.position(12), Some(2));
    }

    #[test]
    fn redis_answers_replay_only_for_the_same_key() {
        let already = |key: Option<&str>| RedisIssue::AlreadyIssued {
            issued_at: 5,
            key: key.map(str::to_owned),
        };
        assert_eq!(
            redis_outcome(already(Some("k1")), Some("k1"), 0),
            IssueOutcome::Replayed { issued_at: 5 }
        );
        assert_eq!(
            redis_outcome(already(Some("k1")), Some("k2"), 0),
            IssueOutcome::AlreadyIssued
        );
        assert_eq!(
            redis_outcome(already(None), None, 0),
            IssueOutcome::AlreadyIssued
        );
        assert_eq!(
            redis_outcome(RedisIssue::NotOpen, None, 9),
            IssueOutcome::NotOpen { opens_at: 9 }
        );
    }
}
