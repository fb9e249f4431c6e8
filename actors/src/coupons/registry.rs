//! [`CouponActors`]: the node's coupon actors, one per live coupon, started on first use and
//! supervised; the entry point the HTTP layer and the order saga call.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use ractor::{Actor, ActorRef};
use serde::Serialize;
use surge_persistence::Database;
use surge_persistence::committer::GroupCommitter;
use surge_persistence::coupons::{CouponRecord, NewIssue};
use tokio::sync::OnceCell;

use super::actor::{CouponActor, CouponArgs, CouponMsg, CouponStats};
use super::redis::breaker_open;
use super::{CouponConfig, CouponError, CouponStore, IssueOutcome, QUERY_TIMEOUT, QueueStatus};
use crate::supervision::{Failures, actor_name, start_supervisor};

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
