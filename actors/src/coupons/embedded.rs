//! Embedded mode: the actor is the authority. The count and the holders live in its memory
//! (loaded from the database when it starts); a request is decided at once, and answered only
//! after the group-commit writer has committed the batch it went into.

use std::collections::HashMap;

use ractor::ActorRef;
use surge_persistence::committer::GroupCommitter;
use surge_persistence::coupons::{CouponRecord, NewIssue};
use surge_persistence::{PersistenceError, now_millis};

use super::actor::{CouponActor, CouponMsg, CouponState, Holding, IssueCall};
use super::{CouponError, IssueOutcome};

impl CouponActor {
    /// Decides a request in embedded mode. `Some` is a final answer; `None` means the issue
    /// was taken and is waiting for its batch.
    pub(super) fn decide_embedded(
        state: &mut CouponState,
        call: &IssueCall,
    ) -> Option<IssueOutcome> {
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
}

/// Hands a decided batch to the writer and tells the actor when it committed. The write is
/// queued before this returns (before the actor's handler ends), so a successor actor's barrier
/// write (see `pre_start`) commits after it.
pub(super) fn spawn_batch(
    committer: &GroupCommitter,
    me: ActorRef<CouponMsg>,
    coupon: CouponRecord,
    holders: &HashMap<i64, Holding>,
    batch: Vec<IssueCall>,
) {
    let issues: Vec<NewIssue> = batch
        .iter()
        .map(|c| NewIssue {
            coupon_id: coupon.id,
            user_id: c.user_id,
            issued_at: holders.get(&c.user_id).map_or(0, |h| h.issued_at),
            idem_key: c.key.clone(),
        })
        .collect();
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

fn embedded_failure(e: &PersistenceError) -> CouponError {
    match e {
        PersistenceError::Overloaded => CouponError::Overloaded {
            retry_after_secs: 1,
        },
        other => CouponError::Unavailable(other.to_string()),
    }
}
