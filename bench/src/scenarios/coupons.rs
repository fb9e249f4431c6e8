//! `coupon-rush`: members race for a first-come-first-served coupon; afterwards every attempt's
//! outcome is settled and each member's coupons are read back through the API.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rand::Rng;
use reqwest::Method;
use serde_json::Value;
use tokio::time::Instant;

use super::attempt_rng;
use crate::api::Api;
use crate::concurrent::bounded;
use crate::driver::Workload;
use crate::error::BenchError;
use crate::invariants::{CouponCount, FollowUp, InvariantCheck, coupon_checks};
use crate::stats::Reply;
use crate::users::BenchUser;

/// How long after the run an attempt with an unknown outcome (queued, no answer, 5xx) is
/// followed up before it counts as unsettled.
const SETTLE_DEADLINE: Duration = Duration::from_secs(60);
/// The pause between two follow-ups of one attempt.
const SETTLE_RETRY_PAUSE: Duration = Duration::from_millis(200);
/// Follow-ups and coupon-list reads in flight at once after the run.
const READ_BACK_CONCURRENCY: usize = 16;

/// What an issue answer means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IssueFate {
    /// 201 `ISSUED`.
    Issued,
    /// 409 `SOLD_OUT`.
    SoldOut,
    /// `ALREADY_ISSUED`, another 4xx, or 503 `OVERLOADED`: nothing issued by this attempt.
    Refused,
    /// 202 `QUEUED`: the waiting room will decide; ask `queue/me`.
    Queued,
    /// Another 5xx or no answer: ask again with the same key.
    Unknown,
}

fn fate(reply: &Reply, replaying: bool) -> IssueFate {
    match (reply.status, reply.code.as_deref()) {
        (Some(201), _) => IssueFate::Issued,
        (Some(202), _) => IssueFate::Queued,
        (Some(409), Some("SOLD_OUT")) => IssueFate::SoldOut,
        (Some(s), _) if (400..500).contains(&s) => IssueFate::Refused,
        // A replay refused for load says nothing about the first attempt: ask again.
        (Some(503), Some("OVERLOADED")) if !replaying => IssueFate::Refused,
        _ => IssueFate::Unknown,
    }
}

#[derive(Debug, Clone)]
struct PendingIssue {
    user: usize,
    key: String,
    queued: bool,
}

#[derive(Debug)]
struct IssueBook {
    /// ISSUED answers per member.
    issued: Vec<u64>,
    sold_out_seen: bool,
    pending: Vec<PendingIssue>,
}

/// Issues one coupon to random members.
#[derive(Debug)]
pub struct CouponWorkload {
    api: Api,
    users: Arc<[BenchUser]>,
    coupon_id: i64,
    quantity: u64,
    seed: u64,
    run_tag: String,
    book: Mutex<IssueBook>,
}

impl CouponWorkload {
    pub fn new(
        api: Api,
        users: Arc<[BenchUser]>,
        coupon_id: i64,
        quantity: u64,
        seed: u64,
        run_tag: String,
    ) -> Self {
        let book = IssueBook {
            issued: vec![0; users.len()],
            sold_out_seen: false,
            pending: Vec::new(),
        };
        Self {
            api,
            users,
            coupon_id,
            quantity,
            seed,
            run_tag,
            book: Mutex::new(book),
        }
    }

    fn book(&self) -> std::sync::MutexGuard<'_, IssueBook> {
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Books a final outcome; returns the attempt back when it is still open.
    fn record(&self, fate: IssueFate, mut issue: PendingIssue) -> Option<PendingIssue> {
        let mut book = self.book();
        match fate {
            // `queue/me` speaks for the member, not for one attempt: a member already
            // answered ISSUED is not counted again.
            IssueFate::Issued if issue.queued => {
                let held = &mut book.issued[issue.user];
                *held = (*held).max(1);
            }
            IssueFate::Issued => book.issued[issue.user] += 1,
            IssueFate::SoldOut => book.sold_out_seen = true,
            IssueFate::Refused => {}
            IssueFate::Queued => {
                issue.queued = true;
                return Some(issue);
            }
            IssueFate::Unknown => return Some(issue),
        }
        None
    }

    async fn issue(&self, issue: &PendingIssue) -> Reply {
        let request = self
            .api
            .request(
                Method::POST,
                &format!("/api/v1/coupons/{}/issue", self.coupon_id),
            )
            .bearer_auth(&self.users[issue.user].access_token)
            .header("Idempotency-Key", &issue.key);
        self.api.call(request).await.0
    }

    /// A queued attempt's state from `GET /coupons/{id}/queue/me`.
    async fn queue_state(&self, user: usize) -> IssueFate {
        let request = self
            .api
            .request(
                Method::GET,
                &format!("/api/v1/coupons/{}/queue/me", self.coupon_id),
            )
            .bearer_auth(&self.users[user].access_token);
        let (_, body) = self.api.call(request).await;
        match body
            .as_ref()
            .and_then(|b| b.get("status"))
            .and_then(Value::as_str)
        {
            Some("ISSUED") => IssueFate::Issued,
            Some("SOLD_OUT") => IssueFate::SoldOut,
            Some("NOT_QUEUED") => IssueFate::Refused,
            Some("QUEUED") => IssueFate::Queued,
            _ => IssueFate::Unknown,
        }
    }

    /// Follows every open attempt to its end (replaying its key, or watching the waiting
    /// room), then reads the coupon and every member's coupon list.
    pub async fn settle_and_check(self: &Arc<Self>) -> Result<Vec<InvariantCheck>, BenchError> {
        let pending = std::mem::take(&mut self.book().pending);
        let open = pending.len() as u64;
        let deadline = Instant::now() + SETTLE_DEADLINE;
        let unsettled: u64 = bounded(pending, READ_BACK_CONCURRENCY, |mut issue| {
            let this = Arc::clone(self);
            async move {
                loop {
                    let fate = if issue.queued {
                        this.queue_state(issue.user).await
                    } else {
                        fate(&this.issue(&issue).await, true)
                    };
                    match this.record(fate, issue) {
                        None => return 0u64,
                        Some(_) if Instant::now() >= deadline => return 1,
                        Some(open) => {
                            issue = open;
                            tokio::time::sleep(SETTLE_RETRY_PAUSE).await;
                        }
                    }
                }
            }
        })
        .await
        .into_iter()
        .sum();
        let held = bounded(0..self.users.len(), READ_BACK_CONCURRENCY, |user| {
            let this = Arc::clone(self);
            async move {
                this.api
                    .coupons_held(&this.users[user].access_token, this.coupon_id)
                    .await
            }
        })
        .await
        .into_iter()
        .collect::<Result<Vec<u64>, BenchError>>()?;
        let remaining = self.api.coupon_remaining(self.coupon_id).await?;
        let book = self.book();
        Ok(coupon_checks(&CouponCount {
            coupon_id: self.coupon_id,
            quantity: self.quantity,
            issued_answers: book.issued.clone(),
            held,
            sold_out_seen: book.sold_out_seen,
            remaining,
            follow_up: FollowUp { open, unsettled },
        }))
    }
}

impl Workload for CouponWorkload {
    async fn attempt(&self, index: u64) -> Reply {
        let mut rng = attempt_rng(self.seed, index);
        let issue = PendingIssue {
            user: rng.gen_range(0..self.users.len()),
            key: format!("{}-{index}", self.run_tag),
            queued: false,
        };
        let reply = self.issue(&issue).await;
        if let Some(open) = self.record(fate(&reply, false), issue) {
            self.book().pending.push(open);
        }
        reply
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: Option<u16>, code: Option<&str>) -> Reply {
        Reply {
            status,
            code: code.map(str::to_owned),
        }
    }

    #[test]
    fn issue_answers_are_read_by_the_contract() {
        assert_eq!(fate(&reply(Some(201), None), false), IssueFate::Issued);
        assert_eq!(fate(&reply(Some(202), None), false), IssueFate::Queued);
        assert_eq!(
            fate(&reply(Some(409), Some("SOLD_OUT")), false),
            IssueFate::SoldOut
        );
        assert_eq!(
            fate(&reply(Some(409), Some("ALREADY_ISSUED")), false),
            IssueFate::Refused
        );
        assert_eq!(
            fate(&reply(Some(503), Some("OVERLOADED")), false),
            IssueFate::Refused
        );
        assert_eq!(
            fate(&reply(Some(503), Some("OVERLOADED")), true),
            IssueFate::Unknown
        );
        assert_eq!(fate(&reply(None, None), false), IssueFate::Unknown);
    }
}
