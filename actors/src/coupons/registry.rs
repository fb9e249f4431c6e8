//! [`CouponActors`]: the node's coupon actors, one per live coupon, started on first use by the
//! generic [`ActorRegistry`](surge_supervisors::ActorRegistry) and supervised: a failed actor
//! is restarted from durable state (the database, and Redis in Redis mode) within the restart
//! intensity; past it the coupon answers 503 until the window lets it go.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use ractor::ActorRef;
use serde::Serialize;
use surge_persistence::Database;
use surge_persistence::committer::GroupCommitter;
use surge_persistence::coupons::{CouponRecord, NewIssue};
use surge_supervisors::{
    ActorFactory, ActorRegistry, Admission, RegistryError, RegistryLimits, RestartIntensity,
    StartError,
};

use super::actor::{CouponActor, CouponArgs, CouponMsg, CouponStats};
use super::redis::breaker_open;
use super::{CouponConfig, CouponError, CouponStore, IssueOutcome, QUERY_TIMEOUT, QueueStatus};

/// What a coupon's slot keeps across actor restarts.
#[derive(Debug, Default)]
pub struct CouponShared {
    stats: Arc<CouponStats>,
    /// The coupon's definition, read when its first actor started (immutable once created).
    coupon: OnceLock<CouponRecord>,
}

/// Starts a coupon's actor from the database.
#[derive(Debug)]
pub(super) struct CouponFactory {
    db: Database,
    committer: GroupCommitter,
    store: CouponStore,
    config: CouponConfig,
}

impl ActorFactory for CouponFactory {
    type Key = i64;
    type Actor = CouponActor;
    type Shared = CouponShared;

    fn shared(&self, _coupon_id: i64) -> CouponShared {
        CouponShared::default()
    }

    async fn start(
        &self,
        coupon_id: i64,
        shared: Arc<CouponShared>,
    ) -> Result<(CouponActor, CouponArgs), StartError> {
        let coupon = self
            .db
            .coupon_by_id(coupon_id)
            .await
            .map_err(|e| StartError::Unavailable(e.to_string()))?
            .ok_or(StartError::NotFound)?;
        let _ = shared.coupon.set(coupon.clone());
        Ok((
            CouponActor {
                db: self.db.clone(),
                committer: self.committer.clone(),
                store: self.store.clone(),
                config: self.config.clone(),
            },
            CouponArgs {
                coupon,
                stats: shared.stats.clone(),
            },
        ))
    }
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
    /// Marked failed by the restart-intensity limit: the coupon answers 503 for now.
    pub failed: bool,
    /// Coupons left as the actor knows it (embedded mode; Redis mode shows the count at start).
    pub remaining: i64,
    /// Members in the waiting room.
    pub waiting_room: usize,
    /// Size of the last batch.
    pub last_batch_size: usize,
}

/// Every coupon actor of the node, started on first use and supervised.
#[derive(Debug, Clone)]
pub struct CouponActors {
    db: Database,
    committer: GroupCommitter,
    store: CouponStore,
    config: CouponConfig,
    registry: ActorRegistry<CouponFactory>,
}

fn refused(e: RegistryError) -> CouponError {
    match e {
        RegistryError::NotFound => CouponError::NotFound,
        RegistryError::Overloaded => CouponError::Overloaded {
            retry_after_secs: 1,
        },
        RegistryError::Failed { retry_after } => CouponError::Overloaded {
            retry_after_secs: u32::try_from(retry_after.as_secs().max(1)).unwrap_or(u32::MAX),
        },
        RegistryError::Unavailable(cause) => CouponError::Unavailable(cause),
    }
}

impl CouponActors {
    /// Starts the registry and its supervisor.
    pub async fn start(
        db: Database,
        committer: GroupCommitter,
        store: CouponStore,
        config: CouponConfig,
    ) -> Result<Self, ractor::SpawnErr> {
        let factory = CouponFactory {
            db: db.clone(),
            committer: committer.clone(),
            store: store.clone(),
            config: config.clone(),
        };
        let limits = RegistryLimits {
            max_waiting_per_key: config.max_waiting_per_coupon,
            intensity: RestartIntensity::default(),
        };
        let registry = ActorRegistry::start("coupon", factory, limits).await?;
        Ok(Self {
            db,
            committer,
            store,
            config,
            registry,
        })
    }

    /// The coupon's actor (started from durable state if needed), with the caller's place in
    /// its queue: held until the caller drops it.
    async fn actor(
        &self,
        coupon_id: i64,
    ) -> Result<(Admission<CouponFactory>, ActorRef<CouponMsg>), CouponError> {
        let admission = self.registry.admit(coupon_id).map_err(refused)?;
        let actor = admission.actor().await.map_err(refused)?;
        Ok((admission, actor))
    }

    /// A coupon's definition (immutable once created, so kept for the slot's lifetime).
    pub async fn definition(&self, coupon_id: i64) -> Result<CouponRecord, CouponError> {
        let (admission, _) = self.actor(coupon_id).await?;
        admission
            .shared()
            .coupon
            .get()
            .cloned()
            .ok_or_else(|| CouponError::Unavailable("the coupon's definition is missing".into()))
    }

    /// Puts a new coupon in service at once (in Redis mode its counters are seeded now, so
    /// issuing needs no loading step).
    pub async fn open(&self, coupon_id: i64) -> Result<(), CouponError> {
        // A new coupon starts from its definition alone: whatever keys Redis holds under its
        // id are not this coupon's.
        if let CouponStore::Redis { redis, .. } = &self.store {
            redis
                .forget_coupon(coupon_id)
                .await
                .map_err(|e| CouponError::Unavailable(e.to_string()))?;
        }
        self.actor(coupon_id).await.map(|_| ())
    }

    /// Issues a coupon to a member (or queues the member in the coupon's waiting room).
    pub async fn issue(
        &self,
        coupon_id: i64,
        user_id: i64,
        key: Option<String>,
    ) -> Result<IssueOutcome, CouponError> {
        // Fail fast while Redis is known down, before taking a place in the queue. The calls
        // themselves go through the breaker in the actor's pipeline.
        if let CouponStore::Redis { breaker, .. } = &self.store
            && let Err(rejected) = breaker.check()
        {
            return Err(breaker_open(rejected.retry_after));
        }
        let (_admission, actor) = self.actor(coupon_id).await?;
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
        self.registry
            .views()
            .into_iter()
            .filter(|v| v.started || v.failed)
            .map(|v| CouponActorView {
                kind: "coupon",
                key: v.key,
                mailbox_len: v.waiting,
                restarts: v.restarts,
                last_error: v.last_error,
                failed: v.failed,
                remaining: v.shared.stats.remaining.load(Ordering::Relaxed),
                waiting_room: v.shared.stats.room_size.load(Ordering::Relaxed),
                last_batch_size: v.shared.stats.last_batch.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Stops every coupon actor. Embedded batches in flight finish first (the writer is
    /// drained after the actors), so no answered issue is lost.
    pub fn stop(&self) {
        self.registry.stop();
    }
}
