//! [`RoutedCoupons`]: coupon issues and waiting-room standings of a cluster node, answered by
//! the coupon's actor on the owner of the coupon's shard (`coupon_id % SURGE_SHARDS`), so each
//! coupon has one actor and one waiting room in the whole cluster. Redis stays the authority
//! for counts and holders; reads that need no actor (definition, remaining) stay local.

use std::time::Duration;

use surge_actors::{CouponActors, CouponError, IssueOutcome, QueueStatus};
use tokio::time::Instant;

use crate::routed::{OwnerRoute, Routed};
use crate::rpc::{OpAnswer, Refusal, ShardOp};

/// How long finding the coupon's owner may take (a failover moves a shard within a lease
/// and a tick); past it the member hears "unavailable, retry".
const FIND_OWNER_WITHIN: Duration = Duration::from_secs(5);

/// Coupon operations routed to each coupon's owner.
#[derive(Debug, Clone)]
pub struct RoutedCoupons {
    local: CouponActors,
    route: OwnerRoute,
}

fn refusal(answer: OpAnswer) -> CouponError {
    match answer {
        OpAnswer::Refused(Refusal::Undetermined { message }) => CouponError::Undetermined(message),
        OpAnswer::Refused(Refusal::Overloaded) => CouponError::Overloaded {
            retry_after_secs: 1,
        },
        OpAnswer::Refused(Refusal::Unavailable { message }) => CouponError::Unavailable(message),
        other => CouponError::Unavailable(format!("a malformed answer: {other:?}")),
    }
}

impl RoutedCoupons {
    pub(crate) fn new(local: CouponActors, route: OwnerRoute) -> Self {
        Self { local, route }
    }

    /// Issues `coupon` to `user` on the coupon's owner.
    pub async fn issue(
        &self,
        coupon: i64,
        user: i64,
        key: Option<String>,
    ) -> Result<IssueOutcome, CouponError> {
        let deadline = Instant::now() + FIND_OWNER_WITHIN;
        let op = |_| ShardOp::IssueCoupon {
            coupon,
            user,
            key: key.clone(),
        };
        match self.route.ask(coupon, deadline, op).await {
            Routed::Local => self.local.issue(coupon, user, key.clone()).await,
            Routed::Answer(OpAnswer::CouponIssue { outcome }) => outcome,
            Routed::Answer(other) => Err(refusal(other)),
            Routed::NoOwner => Err(CouponError::Unavailable(
                "no node serves the coupon right now; retry".into(),
            )),
        }
    }

    /// `user`'s standing in `coupon`'s waiting room, on the coupon's owner.
    pub async fn status(&self, coupon: i64, user: i64) -> Result<QueueStatus, CouponError> {
        let deadline = Instant::now() + FIND_OWNER_WITHIN;
        let op = |_| ShardOp::CouponStatus { coupon, user };
        match self.route.ask(coupon, deadline, op).await {
            Routed::Local => self.local.status(coupon, user).await,
            Routed::Answer(OpAnswer::CouponQueue { status }) => status,
            Routed::Answer(other) => Err(refusal(other)),
            Routed::NoOwner => Err(CouponError::Unavailable(
                "no node serves the coupon right now; retry".into(),
            )),
        }
    }
}
