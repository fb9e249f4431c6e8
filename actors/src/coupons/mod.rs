//! Coupons issued first come, first served: one [`CouponActor`] per live coupon.
//!
//! Invariant protected: **a coupon is never issued twice to a member, nor beyond its
//! quantity**, and an issue that was answered 201 is durable.
//!
//! - [`actor`]: the actor: one message at a time, one batch in flight, requests that arrive
//!   meanwhile wait for the next batch.
//! - [`embedded`]: embedded mode, where the actor is the authority: the count and the holders
//!   live in its memory (loaded from the database at start) and it answers after the
//!   group-commit writer committed the batch.
//! - [`redis`]: Redis mode, where Redis is the authority: one pipelined round trip of the issue
//!   script per batch, behind the Redis breaker.
//! - [`issue_writer`]: Redis mode: moves issues from the Redis stream into the database.
//! - [`waiting_room`]: places in arrival order, admitted at the coupon's rate.
//! - [`registry`]: [`CouponActors`], the node's coupon actors, started on first use and
//!   supervised (a replaced actor reloads from durable state).

mod actor;
mod embedded;
pub mod issue_writer;
mod redis;
mod registry;
mod waiting_room;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use surge_persistence::redis_coupons::RedisCoupons;
use surge_supervisors::CircuitBreaker;

pub use actor::{CouponActor, CouponMsg};
pub use issue_writer::{IssueWriter, IssueWriterConfig};
pub use registry::{CouponActorView, CouponActors};

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

/// How an issue request ended (serializable: a cluster node asks the coupon's owner).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "camelCase")]
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
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "kind", content = "detail", rename_all = "camelCase")]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
