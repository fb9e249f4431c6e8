//! The internal listener (`SURGE_CLUSTER_ADDR`): operations forwarded by peers to the actors
//! of the shards this node owns (stock holds and releases, coupon issues and waiting-room
//! standings), in batches, authenticated by `SURGE_CLUSTER_SECRET`.
//!
//! One route, `POST /internal/v1/shard-ops`, takes `{"ops": [...]}` and answers one result per
//! operation, in order. An operation for a shard this node does not serve is answered
//! [`Refusal::NotOwner`] with the owner it knows, and the caller retries there.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures_util::future::join_all;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use surge_actors::stock::path::Hold;
use surge_actors::{
    CouponActors, CouponError, IssueOutcome, QueueStatus, ReserveError, StockActors, StockPath,
};
use surge_domain::{ItemId, Quantity};
use surge_persistence::orders::HoldSource;

use crate::view::ClusterView;

/// The header that carries the cluster secret.
pub const SECRET_HEADER: &str = "x-surge-cluster-secret";
/// The route of forwarded operations.
pub const SHARD_OPS_ROUTE: &str = "/internal/v1/shard-ops";
/// Most operations in one batch (a sender splits larger runs).
pub const MAX_OPS_PER_BATCH: usize = 512;
/// Longest wait a forwarded hold may ask for.
const MAX_HOLD_WAIT: Duration = Duration::from_secs(10);
/// Largest batch body accepted.
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// An operation sent to the owner of an item's (or a coupon's) shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum ShardOp {
    /// Hold units in the owner's actor, waiting at most `within_ms`.
    #[serde(rename_all = "camelCase")]
    Hold {
        /// Item.
        item: i64,
        /// Units.
        quantity: i64,
        /// How long the owner may take.
        within_ms: u64,
    },
    /// Give back a hold its order did not take.
    Release {
        /// Item.
        item: i64,
        /// Units.
        quantity: i64,
        /// Epoch the hold was given under.
        epoch: i64,
    },
    /// The database refused a hold of this epoch.
    Lost {
        /// Item.
        item: i64,
        /// The refused epoch.
        epoch: i64,
    },
    /// Units came back to the item row.
    Replenished {
        /// Item.
        item: i64,
    },
    /// Issue a coupon to a member (or queue the member in the coupon's waiting room).
    IssueCoupon {
        /// Coupon.
        coupon: i64,
        /// Member.
        user: i64,
        /// The request's Idempotency-Key.
        key: Option<String>,
    },
    /// A member's standing in a coupon's waiting room.
    CouponStatus {
        /// Coupon.
        coupon: i64,
        /// Member.
        user: i64,
    },
}

impl ShardOp {
    /// The id whose shard decides the owner (an item's or a coupon's).
    pub fn sharded_id(&self) -> i64 {
        match *self {
            Self::Hold { item, .. }
            | Self::Release { item, .. }
            | Self::Lost { item, .. }
            | Self::Replenished { item } => item,
            Self::IssueCoupon { coupon, .. } | Self::CouponStatus { coupon, .. } => coupon,
        }
    }
}

/// Why an operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Refusal {
    /// This node does not serve the item's shard; `owner` is who does, as far as it knows.
    NotOwner {
        /// The owner's node id.
        owner: Option<String>,
    },
    /// Not enough units.
    OutOfStock,
    /// No such item.
    ItemNotFound,
    /// Too much work waits on the item.
    Overloaded,
    /// Nothing was held; retrying may succeed.
    Unavailable {
        /// Why.
        message: String,
    },
    /// The hold may or may not have been given.
    Undetermined {
        /// Why.
        message: String,
    },
}

impl From<ReserveError> for Refusal {
    fn from(e: ReserveError) -> Self {
        match e {
            ReserveError::OutOfStock => Self::OutOfStock,
            ReserveError::ItemNotFound => Self::ItemNotFound,
            ReserveError::Overloaded => Self::Overloaded,
            ReserveError::Unavailable(message) => Self::Unavailable { message },
            ReserveError::Undetermined(message) => Self::Undetermined { message },
        }
    }
}

/// The answer to one operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "camelCase")]
pub enum OpAnswer {
    /// Units held under this epoch.
    Held {
        /// The owner actor's epoch.
        epoch: i64,
    },
    /// Done (release, lost, replenished).
    Done,
    /// A coupon issue's answer from the coupon's actor on its owner.
    CouponIssue {
        /// What the actor answered.
        outcome: Result<IssueOutcome, CouponError>,
    },
    /// A member's standing in the coupon's waiting room on its owner.
    CouponQueue {
        /// What the actor answered.
        status: Result<QueueStatus, CouponError>,
    },
    /// Refused.
    Refused(Refusal),
}

/// A batch on the wire.
#[derive(Debug, Serialize, Deserialize)]
pub struct Batch {
    /// Operations, answered in this order.
    pub ops: Vec<ShardOp>,
}

/// Answers on the wire.
#[derive(Debug, Serialize, Deserialize)]
pub struct Answers {
    /// One per operation.
    pub answers: Vec<OpAnswer>,
}

/// Counters of the internal listener.
#[derive(Debug, Default)]
pub struct RpcStats {
    /// Batches this node served for peers.
    pub batches_served: AtomicU64,
    /// Holds this node's actors gave to peers' orders.
    pub holds_served: AtomicU64,
    /// Coupon issues and standings this node's coupon actors answered for peers.
    pub coupon_ops_served: AtomicU64,
    /// Operations answered "not owner".
    pub not_owner: AtomicU64,
    /// Requests refused for a missing or wrong secret.
    pub refused_unauthenticated: AtomicU64,
}

#[derive(Debug, Clone)]
struct Internal {
    view: ClusterView,
    stock: StockActors,
    coupons: CouponActors,
    secret_digest: Arc<[u8; 32]>,
    stats: Arc<RpcStats>,
}

fn digest(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

/// The internal listener's router.
pub fn router(
    view: ClusterView,
    stock: StockActors,
    coupons: CouponActors,
    secret: &SecretString,
    stats: Arc<RpcStats>,
) -> Router {
    let state = Internal {
        view,
        stock,
        coupons,
        secret_digest: Arc::new(digest(secret.expose_secret().as_bytes())),
        stats,
    };
    Router::new()
        .route(SHARD_OPS_ROUTE, post(stock_ops))
        .layer(DefaultBodyLimit::max(MAX_BATCH_BYTES))
        .with_state(state)
}

fn refuse(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(serde_json::json!({"code": code, "message": message})),
    )
        .into_response()
}

async fn stock_ops(
    State(state): State<Internal>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    // Compare digests: equal-length values, so the comparison's time says nothing about how
    // much of a guess was right.
    let given = headers.get(SECRET_HEADER).map(|v| digest(v.as_bytes()));
    if given.as_ref() != Some(&*state.secret_digest) {
        state
            .stats
            .refused_unauthenticated
            .fetch_add(1, Ordering::Relaxed);
        return refuse(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "a missing or wrong cluster secret",
        );
    }
    let batch: Batch = match serde_json::from_slice(&body) {
        Ok(batch) => batch,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "VALIDATION_FAILED",
                &format!("not a batch of stock operations: {e}"),
            );
        }
    };
    if batch.ops.len() > MAX_OPS_PER_BATCH {
        return refuse(
            StatusCode::BAD_REQUEST,
            "VALIDATION_FAILED",
            "too many operations in one batch",
        );
    }
    state.stats.batches_served.fetch_add(1, Ordering::Relaxed);
    let answers = join_all(batch.ops.into_iter().map(|op| serve(&state, op))).await;
    axum::Json(Answers { answers }).into_response()
}

/// Serves one forwarded operation with this node's actors.
async fn serve(state: &Internal, op: ShardOp) -> OpAnswer {
    let item = op.sharded_id();
    let shard = state.view.shard_of(item);
    if state.view.serves(shard).is_none() {
        state.stats.not_owner.fetch_add(1, Ordering::Relaxed);
        let owner = state
            .view
            .owner_of(shard)
            .map(|(node, _)| node)
            .filter(|node| node != state.view.node_id());
        return OpAnswer::Refused(Refusal::NotOwner { owner });
    }
    let item_id = ItemId::from_db(item);
    match op {
        ShardOp::Hold {
            quantity,
            within_ms,
            ..
        } => {
            let Ok(quantity) = Quantity::parse(quantity) else {
                return OpAnswer::Refused(Refusal::Unavailable {
                    message: "bad quantity".into(),
                });
            };
            let within = Duration::from_millis(within_ms).min(MAX_HOLD_WAIT);
            match state.stock.hold(item_id, 0, quantity, within).await {
                Ok(hold) => match hold.source {
                    HoldSource::Allotment { epoch } => {
                        state.stats.holds_served.fetch_add(1, Ordering::Relaxed);
                        OpAnswer::Held { epoch }
                    }
                    HoldSource::Reservation => OpAnswer::Refused(Refusal::Unavailable {
                        message: "not an actor hold".into(),
                    }),
                },
                Err(e) => OpAnswer::Refused(e.into()),
            }
        }
        ShardOp::Release {
            quantity, epoch, ..
        } => {
            if let Some(hold) = allotment_hold(item_id, quantity, epoch) {
                state.stock.release(0, hold).await;
            }
            OpAnswer::Done
        }
        ShardOp::Lost { epoch, .. } => {
            if let Some(hold) = allotment_hold(item_id, 1, epoch) {
                state.stock.lost(hold);
            }
            OpAnswer::Done
        }
        ShardOp::Replenished { .. } => {
            state.stock.replenished(item_id);
            OpAnswer::Done
        }
        ShardOp::IssueCoupon { coupon, user, key } => {
            state
                .stats
                .coupon_ops_served
                .fetch_add(1, Ordering::Relaxed);
            OpAnswer::CouponIssue {
                outcome: state.coupons.issue(coupon, user, key).await,
            }
        }
        ShardOp::CouponStatus { coupon, user } => {
            state
                .stats
                .coupon_ops_served
                .fetch_add(1, Ordering::Relaxed);
            OpAnswer::CouponQueue {
                status: state.coupons.status(coupon, user).await,
            }
        }
    }
}

fn allotment_hold(item: ItemId, quantity: i64, epoch: i64) -> Option<Hold> {
    Some(Hold {
        item,
        quantity: Quantity::parse(quantity).ok()?,
        source: HoldSource::Allotment { epoch },
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn coupon_answers_cross_the_wire_intact() {
        for answer in [
            OpAnswer::CouponIssue {
                outcome: Ok(IssueOutcome::Queued { position: 3 }),
            },
            OpAnswer::CouponIssue {
                outcome: Err(CouponError::Overloaded {
                    retry_after_secs: 2,
                }),
            },
            OpAnswer::CouponIssue {
                outcome: Ok(IssueOutcome::AlreadyIssued),
            },
            OpAnswer::CouponQueue {
                status: Ok(QueueStatus::Queued(7)),
            },
            OpAnswer::CouponQueue {
                status: Err(CouponError::NotFound),
            },
        ] {
            let text = serde_json::to_string(&answer).unwrap();
            assert_eq!(
                serde_json::from_str::<OpAnswer>(&text).unwrap(),
                answer,
                "{text}"
            );
        }
    }

    #[test]
    fn operations_and_answers_have_a_stable_wire_form() {
        let op = ShardOp::Hold {
            item: 7,
            quantity: 2,
            within_ms: 900,
        };
        let text = serde_json::to_string(&op).unwrap();
        assert_eq!(
            text,
            r#"{"op":"hold","item":7,"quantity":2,"withinMs":900}"#
        );
        assert_eq!(serde_json::from_str::<ShardOp>(&text).unwrap(), op);
        let answer = OpAnswer::Refused(Refusal::NotOwner {
            owner: Some("node-2".into()),
        });
        let text = serde_json::to_string(&answer).unwrap();
        assert_eq!(
            text,
            r#"{"result":"refused","kind":"notOwner","owner":"node-2"}"#
        );
        assert_eq!(serde_json::from_str::<OpAnswer>(&text).unwrap(), answer);
    }
}
