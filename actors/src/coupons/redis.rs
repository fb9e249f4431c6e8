//! Redis mode: Redis is the authority. The actor sends the requests that arrived while the
//! previous pipeline was in flight as one pipeline of issue-script calls (one round trip), behind
//! the Redis breaker; the [`super::issue_writer`] moves the issues into the database.

use std::sync::Arc;
use std::time::Duration;

use ractor::ActorRef;
use surge_persistence::Database;
use surge_persistence::coupons::CouponRecord;
use surge_persistence::redis_coupons::{RedisCoupons, RedisIssue};
use surge_supervisors::{CallError, CircuitBreaker};

use super::actor::{CouponMsg, IssueCall};
use super::{CouponError, IssueOutcome};

/// Runs a batch's pipeline and tells the actor when Redis answered.
pub(super) fn spawn_batch(
    db: Database,
    redis: RedisCoupons,
    breaker: Arc<CircuitBreaker>,
    me: ActorRef<CouponMsg>,
    coupon: CouponRecord,
    batch: Vec<IssueCall>,
) {
    tokio::spawn(async move {
        let calls: Vec<(i64, Option<String>)> =
            batch.iter().map(|c| (c.user_id, c.key.clone())).collect();
        let answers = redis_batch(&db, &redis, &breaker, &coupon, &calls).await;
        let results = batch.into_iter().zip(answers).collect();
        let _ = me.cast(CouponMsg::BatchDone(results));
    });
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

pub(super) fn breaker_open(retry_after: Duration) -> CouponError {
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
    let pipeline = || async {
        let answers = redis.issue_batch(coupon.id, calls).await?;
        if !answers.iter().any(|r| matches!(r, Ok(RedisIssue::Unknown))) {
            return Ok(answers);
        }
        // Redis lost the coupon (restart without persistence, eviction): seed it from the
        // database and ask once more.
        let seeded = match db.coupon_holders(coupon.id).await {
            Ok(holders) => redis
                .seed(coupon, &holders)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match seeded {
            Ok(()) => redis.issue_batch(coupon.id, calls).await,
            Err(e) => {
                tracing::warn!(coupon = coupon.id, error = %e, "seeding a coupon into Redis failed");
                Ok(answers)
            }
        }
    };
    match breaker.call(pipeline).await {
        Ok(answers) => answers
            .into_iter()
            .zip(calls)
            .map(|(a, (_, key))| match a {
                Ok(RedisIssue::Unknown) => Err(CouponError::Unavailable(
                    "the coupon is not in Redis".into(),
                )),
                Ok(a) => Ok(redis_outcome(a, key.as_deref(), coupon.def.opens_at)),
                Err(e) => Err(CouponError::Unavailable(e.to_string())),
            })
            .collect(),
        Err(CallError::Open { retry_after }) => calls
            .iter()
            .map(|_| Err(breaker_open(retry_after)))
            .collect(),
        Err(CallError::Inner(e)) => {
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

#[cfg(test)]
mod tests {
    use super::*;

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
