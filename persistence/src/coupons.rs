//! Coupons and the coupons members hold.

use sqlx::{AnyConnection, FromRow};
use surge_domain::{CouponStatus, Event, EventType};

use crate::outbox;
use crate::{Database, PersistenceError, now_millis};

/// A coupon definition as the admin creates it (and as stored, with its id: [`CouponRecord`]).
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct NewCoupon {
    /// Unique name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// The item it discounts; `None` discounts the whole order.
    pub item_id: Option<i64>,
    /// Rate in tenths of a percent.
    pub discount_tenths: i64,
    /// How many may be issued.
    pub quantity: i64,
    /// Unix ms from which it may be issued.
    pub opens_at: i64,
    /// Waiting-room admission rate per second, if one fronts the coupon.
    pub admit_per_second: Option<i64>,
    /// Youngest account (ms since sign-up) that may be issued the coupon; `None`: anyone.
    pub min_account_age_ms: Option<i64>,
    /// 1: only members an ADMIN verified may be issued it; 0: anyone.
    pub verified_only: i64,
}

/// A coupon definition as stored.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct CouponRecord {
    /// Id.
    pub id: i64,
    /// The definition.
    #[sqlx(flatten)]
    pub def: NewCoupon,
}

const ISSUE_COLUMNS: &str = "coupon_id, user_id, status, issued_at, idem_key";

const COUPON_COLUMNS: &str = "id, name, description, item_id, discount_tenths, quantity, opens_at, admit_per_second, \
     min_account_age_ms, verified_only";

/// One coupon handed to one member, to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewIssue {
    /// Coupon.
    pub coupon_id: i64,
    /// Member.
    pub user_id: i64,
    /// When it was issued (Unix ms), as the issuing authority recorded it.
    pub issued_at: i64,
    /// The Idempotency-Key of the request that got it, if any.
    pub idem_key: Option<String>,
}

/// A coupon a member holds, joined with its definition.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct HeldCoupon {
    /// Coupon.
    pub coupon_id: i64,
    /// Its name.
    pub name: String,
    /// Rate in tenths of a percent.
    pub discount_tenths: i64,
    /// The item it discounts.
    pub item_id: Option<i64>,
    /// Whether an order has spent it.
    #[sqlx(try_from = "String")]
    pub status: CouponStatus,
    /// Unix ms.
    pub issued_at: i64,
}

/// One member's issue of one coupon.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct IssueRecord {
    /// Coupon.
    pub coupon_id: i64,
    /// Member.
    pub user_id: i64,
    /// Whether an order has spent it.
    #[sqlx(try_from = "String")]
    pub status: CouponStatus,
    /// Unix ms.
    pub issued_at: i64,
    /// The Idempotency-Key of the request that got it.
    pub idem_key: Option<String>,
}

/// Writes issues; an issue already stored (same coupon and member) is left as it is, so a
/// redelivered or retried write changes nothing. Returns how many rows were new.
pub(crate) async fn insert_issues(
    conn: &mut AnyConnection,
    issues: &[NewIssue],
) -> Result<u64, sqlx::Error> {
    let mut inserted = 0;
    for issue in issues {
        let new = sqlx::query(
            "INSERT INTO coupon_issues (coupon_id, user_id, status, idem_key, issued_at) \
             VALUES ($1, $2, 'UNUSED', $3, $4) ON CONFLICT (coupon_id, user_id) DO NOTHING",
        )
        .bind(issue.coupon_id)
        .bind(issue.user_id)
        .bind(issue.idem_key.as_deref())
        .bind(issue.issued_at)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if new == 1 {
            let payload = serde_json::json!({
                "couponId": issue.coupon_id,
                "userId": issue.user_id,
                "status": CouponStatus::Unused.as_str(),
                "issuedAt": surge_domain::time_fmt::rfc3339(issue.issued_at),
            });
            let event = Event::new(
                EventType::CouponIssued,
                issue.coupon_id,
                Some(issue.user_id),
                issue.issued_at,
                payload,
            );
            outbox::append(conn, &event).await?;
        }
        inserted += new;
    }
    Ok(inserted)
}

/// Why an order could not take its coupon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CouponRefusal {
    /// The member was never issued this coupon.
    NotIssued,
    /// The member's coupon is already used by another order.
    AlreadyUsed,
}

/// Marks the member's coupon USED by `order_id`, only if it is UNUSED: of two orders racing for
/// one coupon, exactly one matches the row.
pub(crate) async fn take_for_order(
    conn: &mut AnyConnection,
    coupon_id: i64,
    user_id: i64,
    order_id: i64,
) -> Result<Result<(), CouponRefusal>, sqlx::Error> {
    let taken = sqlx::query(
        "UPDATE coupon_issues SET status = 'USED', order_id = $1 \
         WHERE coupon_id = $2 AND user_id = $3 AND status = 'UNUSED'",
    )
    .bind(order_id)
    .bind(coupon_id)
    .bind(user_id)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if taken == 1 {
        return Ok(Ok(()));
    }
    let held: Option<(String,)> =
        sqlx::query_as("SELECT status FROM coupon_issues WHERE coupon_id = $1 AND user_id = $2")
            .bind(coupon_id)
            .bind(user_id)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(Err(match held {
        Some(_) => CouponRefusal::AlreadyUsed,
        None => CouponRefusal::NotIssued,
    }))
}

/// Gives back the coupon an order used (failed or cancelled order). Idempotent. Returns the
/// coupon and its holder when one went back.
pub(crate) async fn give_back(
    conn: &mut AnyConnection,
    order_id: i64,
) -> Result<Option<(i64, i64)>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE coupon_issues SET status = 'UNUSED', order_id = NULL \
         WHERE order_id = $1 AND status = 'USED' RETURNING coupon_id, user_id",
    )
    .bind(order_id)
    .fetch_optional(&mut *conn)
    .await
}

impl Database {
    /// Creates a coupon. A taken name: [`PersistenceError::Conflict`]; an unknown item:
    /// [`PersistenceError::NotFound`].
    pub async fn insert_coupon(&self, c: &NewCoupon) -> Result<CouponRecord, PersistenceError> {
        if let Some(item) = c.item_id {
            let exists: Option<(i64,)> = sqlx::query_as("SELECT id FROM items WHERE id = $1")
                .bind(item)
                .fetch_optional(self.pool())
                .await?;
            if exists.is_none() {
                return Err(PersistenceError::NotFound);
            }
        }
        let row: CouponRecord = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "INSERT INTO coupons (name, description, item_id, discount_tenths, quantity, opens_at, \
             admit_per_second, created_at, min_account_age_ms, verified_only) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             RETURNING {COUPON_COLUMNS}"
        )))
        .bind(&c.name)
        .bind(&c.description)
        .bind(c.item_id)
        .bind(c.discount_tenths)
        .bind(c.quantity)
        .bind(c.opens_at)
        .bind(c.admit_per_second)
        .bind(now_millis())
        .bind(c.min_account_age_ms)
        .bind(c.verified_only)
        .fetch_one(self.pool())
        .await?;
        Ok(row)
    }

    /// The coupon with this id, if any.
    pub async fn coupon_by_id(&self, id: i64) -> Result<Option<CouponRecord>, PersistenceError> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COUPON_COLUMNS} FROM coupons WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(self.pool())
        .await?)
    }

    /// Every member holding this coupon, with the key of the request that got it: what an
    /// embedded coupon actor loads at start, and what seeds Redis when its keys are missing.
    pub async fn coupon_holders(
        &self,
        coupon_id: i64,
    ) -> Result<Vec<IssueRecord>, PersistenceError> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {ISSUE_COLUMNS} FROM coupon_issues WHERE coupon_id = $1"
        )))
        .bind(coupon_id)
        .fetch_all(self.pool())
        .await?)
    }

    /// One member's issue of one coupon.
    pub async fn issue_of(
        &self,
        coupon_id: i64,
        user_id: i64,
    ) -> Result<Option<IssueRecord>, PersistenceError> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {ISSUE_COLUMNS} FROM coupon_issues WHERE coupon_id = $1 AND user_id = $2"
        )))
        .bind(coupon_id)
        .bind(user_id)
        .fetch_optional(self.pool())
        .await?)
    }

    /// The issue a member got with this Idempotency-Key, whatever the coupon.
    pub async fn issue_by_key(
        &self,
        user_id: i64,
        key: &str,
    ) -> Result<Option<IssueRecord>, PersistenceError> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {ISSUE_COLUMNS} FROM coupon_issues WHERE user_id = $1 AND idem_key = $2"
        )))
        .bind(user_id)
        .bind(key)
        .fetch_optional(self.pool())
        .await?)
    }

    /// The coupons a member holds, newest first.
    pub async fn coupons_of_user(&self, user_id: i64) -> Result<Vec<HeldCoupon>, PersistenceError> {
        Ok(sqlx::query_as(
            "SELECT i.coupon_id, c.name, c.discount_tenths, c.item_id, i.status, i.issued_at \
             FROM coupon_issues i JOIN coupons c ON c.id = i.coupon_id \
             WHERE i.user_id = $1 ORDER BY i.issued_at DESC, i.coupon_id DESC",
        )
        .bind(user_id)
        .fetch_all(self.pool())
        .await?)
    }
}
