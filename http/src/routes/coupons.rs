//! Coupons: create (ADMIN), read, issue first come first served, waiting-room standing, and
//! the coupons a member holds.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use surge_actors::{CouponError, IssueOutcome, QueueStatus};
use surge_domain::{
    AdmitRate, CouponDescription, CouponId, CouponName, CouponQuantity, CouponStatus, DiscountRate,
    ItemId, UserId, ValidationError,
};
use surge_persistence::coupons::{CouponRecord, HeldCoupon, NewCoupon};
use surge_persistence::{PersistenceError, now_millis};
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorBody};
use crate::extract::{Admin, ApiJson, ApiPath, Authenticated};
use crate::routes::orders::idempotency_key;
use crate::state::AppState;
use crate::time_fmt::{parse_rfc3339, rfc3339};

/// A waiting room in front of a coupon.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WaitingRoomSettings {
    /// Members admitted (and issued, while any are left) per second, 1–100,000.
    #[schema(example = 200, minimum = 1, maximum = 100_000)]
    admit_per_second: i64,
}

/// A new coupon.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateCouponRequest {
    /// Unique, 1–100 characters.
    #[schema(example = "Black Friday 15%", min_length = 1, max_length = 100)]
    name: String,
    /// Up to 1,000 characters.
    #[schema(max_length = 1_000)]
    description: Option<String>,
    /// The item it discounts (that item's whole line); absent: the whole order.
    #[schema(minimum = 1)]
    item_id: Option<i64>,
    /// 0–100, at most one decimal.
    #[schema(example = 15.5, minimum = 0, maximum = 100, multiple_of = 0.1)]
    discount_rate: f64,
    /// How many may be issued, 0 to 100,000,000.
    #[schema(example = 100, minimum = 0, maximum = 100_000_000)]
    quantity: i64,
    /// RFC 3339; issuing starts then (default: now).
    #[schema(format = DateTime)]
    opens_at: Option<String>,
    /// Queue members and admit them at a fixed rate (for demand far above supply).
    waiting_room: Option<WaitingRoomSettings>,
    /// Only members whose account is at least this old (0–31,536,000 s) may be issued it;
    /// younger ones are refused 403 `NOT_ELIGIBLE` (accounts made in bulk for a drop).
    #[schema(minimum = 0, maximum = 31_536_000)]
    min_account_age_seconds: Option<i64>,
    /// Only members an ADMIN verified (`POST /admin/users/{id}/verify`) may be issued it;
    /// others are refused 403 `NOT_ELIGIBLE`.
    verified_only: Option<bool>,
}

/// A coupon as clients see it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CouponResponse {
    coupon_id: i64,
    name: String,
    description: String,
    item_id: Option<i64>,
    discount_rate: f64,
    quantity: i64,
    /// Still to be issued.
    remaining: i64,
    opens_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    waiting_room: Option<WaitingRoomSettings>,
    #[serde(skip_serializing_if = "Option::is_none")]
    min_account_age_seconds: Option<i64>,
    /// Only verified members may be issued it.
    verified_only: bool,
}

impl CouponResponse {
    fn new(c: CouponRecord, remaining: i64) -> Self {
        Self {
            coupon_id: c.id,
            name: c.def.name,
            description: c.def.description,
            item_id: c.def.item_id,
            discount_rate: rate_of(c.def.discount_tenths).as_percent(),
            quantity: c.def.quantity,
            remaining,
            opens_at: rfc3339(c.def.opens_at),
            waiting_room: c
                .def
                .admit_per_second
                .map(|admit_per_second| WaitingRoomSettings { admit_per_second }),
            min_account_age_seconds: c.def.min_account_age_ms.map(|ms| ms / 1_000),
            verified_only: c.def.verified_only != 0,
        }
    }
}

/// A coupon handed to a member.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssueResponse {
    coupon_id: i64,
    user_id: i64,
    /// Always ISSUED.
    status: &'static str,
    issued_at: String,
}

/// A member's place in a waiting room.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueResponse {
    /// QUEUED, ISSUED, SOLD_OUT or NOT_QUEUED.
    status: &'static str,
    /// 1 = next; only while QUEUED.
    #[serde(skip_serializing_if = "Option::is_none")]
    position: Option<u64>,
}

/// A coupon the caller holds.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeldCouponResponse {
    coupon_id: i64,
    name: String,
    discount_rate: f64,
    item_id: Option<i64>,
    /// UNUSED or USED.
    #[schema(value_type = String)]
    status: CouponStatus,
    issued_at: String,
}

impl From<HeldCoupon> for HeldCouponResponse {
    fn from(h: HeldCoupon) -> Self {
        Self {
            coupon_id: h.coupon_id,
            name: h.name,
            discount_rate: rate_of(h.discount_tenths).as_percent(),
            item_id: h.item_id,
            status: h.status,
            issued_at: rfc3339(h.issued_at),
        }
    }
}

/// The coupons a member holds (all of them: a member holds few).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeldCouponList {
    items: Vec<HeldCouponResponse>,
    /// Always null: the list is never paged.
    next_cursor: Option<String>,
}

fn rate_of(tenths: i64) -> DiscountRate {
    DiscountRate::from_tenths(u16::try_from(tenths.clamp(0, 1000)).unwrap_or(0))
}

fn coupon_error(e: CouponError) -> ApiError {
    match e {
        CouponError::NotFound => ApiError::NotFound("coupon"),
        CouponError::Overloaded { retry_after_secs } => ApiError::Overloaded {
            message: "coupons are busy; try again shortly".into(),
            retry_after_secs,
        },
        CouponError::Unavailable(cause) => {
            tracing::warn!(%cause, "coupon store unavailable");
            ApiError::Overloaded {
                message: "coupons are unavailable right now; nothing was issued".into(),
                retry_after_secs: 1,
            }
        }
        CouponError::Undetermined(cause) => {
            tracing::warn!(%cause, "coupon issue outcome unknown");
            ApiError::Overloaded {
                message: "the issue did not finish in time and may still happen; retry with the \
                          same Idempotency-Key to learn its outcome"
                    .into(),
                retry_after_secs: 1,
            }
        }
    }
}

fn coupon_id(raw: i64) -> Result<i64, ApiError> {
    CouponId::parse(raw, "couponId")
        .map(CouponId::get)
        .map_err(|_| ApiError::NotFound("coupon"))
}

/// Creates a coupon; it can be issued from `opensAt` on with nothing else to do.
#[utoipa::path(post, path = "/api/v1/coupons", tag = "coupons", security(("bearer" = [])),
    request_body = CreateCouponRequest,
    responses((status = 201, body = CouponResponse),
        (status = 400, body = ErrorBody, description = "VALIDATION_FAILED"),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "itemId names no item"),
        (status = 409, body = ErrorBody, description = "DUPLICATE_COUPON_NAME")))]
pub async fn create(
    State(state): State<AppState>,
    Admin(_): Admin,
    ApiJson(req): ApiJson<CreateCouponRequest>,
) -> Result<(StatusCode, Json<CouponResponse>), ApiError> {
    let name = CouponName::parse(&req.name)?;
    let description = CouponDescription::parse(req.description.as_deref().unwrap_or(""))?;
    let rate = DiscountRate::parse(req.discount_rate)?;
    let quantity = CouponQuantity::parse(req.quantity)?;
    let item_id = req
        .item_id
        .map(|i| ItemId::parse(i, "itemId").map(ItemId::get))
        .transpose()?;
    let opens_at = match &req.opens_at {
        None => now_millis(),
        Some(text) => parse_rfc3339(text).ok_or_else(|| {
            ValidationError::new(
                "opensAt",
                "must be an RFC 3339 time like 2026-12-01T09:00:00Z",
            )
        })?,
    };
    let admit_per_second = req
        .waiting_room
        .as_ref()
        .map(|w| AdmitRate::parse(w.admit_per_second).map(AdmitRate::get))
        .transpose()?;
    let min_account_age_ms = req
        .min_account_age_seconds
        .map(|secs| {
            if (0..=MAX_MIN_ACCOUNT_AGE_SECS).contains(&secs) {
                Ok(secs * 1_000)
            } else {
                Err(ValidationError::new(
                    "minAccountAgeSeconds",
                    format!("must be between 0 and {MAX_MIN_ACCOUNT_AGE_SECS}"),
                ))
            }
        })
        .transpose()?;
    let record = state
        .db
        .insert_coupon(&NewCoupon {
            name: name.as_str().to_owned(),
            description: description.as_str().to_owned(),
            item_id,
            discount_tenths: i64::from(rate.tenths()),
            quantity: quantity.get(),
            opens_at,
            admit_per_second,
            min_account_age_ms,
            verified_only: i64::from(req.verified_only.unwrap_or(false)),
        })
        .await
        .map_err(|e| match e {
            PersistenceError::Conflict => {
                ApiError::conflict("DUPLICATE_COUPON_NAME", "a coupon with this name exists")
            }
            PersistenceError::NotFound => ApiError::NotFound("item"),
            other => other.into(),
        })?;
    // Put it in service now (in Redis mode: seed its counters). If that fails the coupon is
    // still created; the first issue request seeds it.
    if let Err(e) = state.coupons.open(record.id).await {
        tracing::warn!(coupon = record.id, error = %e, "coupon created but not yet in service");
    }
    let remaining = record.def.quantity;
    Ok((
        StatusCode::CREATED,
        Json(CouponResponse::new(record, remaining)),
    ))
}

/// One coupon with the number still to be issued.
#[utoipa::path(get, path = "/api/v1/coupons/{couponId}", tag = "coupons",
    params(("couponId" = i64, Path)),
    responses((status = 200, body = CouponResponse), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(raw): ApiPath<i64>,
) -> Result<Json<CouponResponse>, ApiError> {
    let id = coupon_id(raw)?;
    let coupon = state.coupons.definition(id).await.map_err(coupon_error)?;
    // Before it opens a coupon exists only for ADMINs: nobody else learns of a drop early.
    if coupon.def.opens_at > now_millis() && !caller_is_admin(&state, &headers) {
        return Err(ApiError::NotFound("coupon"));
    }
    let remaining = state.coupons.remaining(id).await.map_err(coupon_error)?;
    Ok(Json(CouponResponse::new(coupon, remaining)))
}

/// Longest account age a coupon may ask for (a year).
const MAX_MIN_ACCOUNT_AGE_SECS: i64 = 365 * 24 * 3_600;

/// Refuses a member whose account is younger than the coupon asks, before anything is held or
/// written: 403 `NOT_ELIGIBLE`. Costs a read only for coupons that have the rule.
async fn check_eligible(state: &AppState, coupon_id: i64, user_id: UserId) -> Result<(), ApiError> {
    let coupon = state
        .coupons
        .definition(coupon_id)
        .await
        .map_err(coupon_error)?;
    let not_eligible = |message: String| ApiError::Refused {
        status: StatusCode::FORBIDDEN,
        code: "NOT_ELIGIBLE",
        message,
        details: None,
    };
    if coupon.def.verified_only != 0 && state.db.verified_at(user_id).await?.is_none() {
        return Err(not_eligible(
            "this coupon is for members the shop has verified".into(),
        ));
    }
    let Some(min_age) = coupon.def.min_account_age_ms else {
        return Ok(());
    };
    let member = state
        .db
        .user_by_id(user_id)
        .await?
        .ok_or(ApiError::Unauthenticated("this member no longer exists"))?;
    if now_millis() - member.created_at < min_age {
        return Err(not_eligible(format!(
            "this coupon is for accounts at least {} seconds old",
            min_age / 1_000
        )));
    }
    Ok(())
}

/// Whether the request carries a valid ADMIN access token (the route itself is public).
fn caller_is_admin(state: &AppState, headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|token| state.auth.verify(token).ok())
        .is_some_and(|caller| caller.role.is_admin())
}

/// Issues the coupon to the caller, first come first served; with a waiting room, queues the
/// caller instead.
#[utoipa::path(post, path = "/api/v1/coupons/{couponId}/issue", tag = "coupons", security(("bearer" = [])),
    params(("couponId" = i64, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "retry key: a retry replays the 201")),
    responses((status = 201, body = IssueResponse),
        (status = 202, body = QueueResponse, description = "QUEUED in the waiting room"),
        (status = 404, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "NOT_ELIGIBLE: the account is younger than the coupon's minAccountAgeSeconds, or the coupon is for verified members"),
        (status = 409, body = ErrorBody, description = "SOLD_OUT or ALREADY_ISSUED"),
        (status = 422, body = ErrorBody, description = "IDEMPOTENCY_KEY_REUSED"),
        (status = 429, body = ErrorBody, description = "RATE_LIMITED, with Retry-After: too many coupon requests from this member in a short time"),
        (status = 503, body = ErrorBody, description = "OVERLOADED")))]
pub async fn issue(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(raw): ApiPath<i64>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = coupon_id(raw)?;
    let key = idempotency_key(&headers)?;
    let user_id = caller.user_id.get();
    state.limits.check_issue(user_id)?;
    if let Some(key) = &key
        && let Some(first) = state.db.issue_by_key(user_id, key.as_str()).await?
        && first.coupon_id != id
    {
        return Err(ApiError::idempotency_key_reused(
            "this Idempotency-Key was used for another coupon",
        ));
    }
    check_eligible(&state, id, caller.user_id).await?;
    let outcome = state
        .issue_coupon(id, user_id, key.map(|k| k.as_str().to_owned()))
        .await
        .map_err(coupon_error)?;
    match outcome {
        IssueOutcome::Issued { issued_at } | IssueOutcome::Replayed { issued_at } => Ok((
            StatusCode::CREATED,
            Json(IssueResponse {
                coupon_id: id,
                user_id,
                status: "ISSUED",
                issued_at: rfc3339(issued_at),
            }),
        )
            .into_response()),
        IssueOutcome::Queued { position } => Ok((
            StatusCode::ACCEPTED,
            Json(QueueResponse {
                status: "QUEUED",
                position: Some(position),
            }),
        )
            .into_response()),
        IssueOutcome::SoldOut => Err(ApiError::conflict("SOLD_OUT", "no coupons are left")),
        IssueOutcome::AlreadyIssued => Err(ApiError::conflict(
            "ALREADY_ISSUED",
            "you already hold this coupon",
        )),
        // Before it opens a coupon is hidden from members: it answers like a missing one.
        IssueOutcome::NotOpen { .. } => Err(ApiError::NotFound("coupon")),
    }
}

/// The caller's standing: queued (with place), issued, sold out or not queued.
#[utoipa::path(get, path = "/api/v1/coupons/{couponId}/queue/me", tag = "coupons", security(("bearer" = [])),
    params(("couponId" = i64, Path)),
    responses((status = 200, body = QueueResponse), (status = 404, body = ErrorBody)))]
pub async fn queue_me(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(raw): ApiPath<i64>,
) -> Result<Json<QueueResponse>, ApiError> {
    let id = coupon_id(raw)?;
    let status = state
        .coupon_status(id, caller.user_id.get())
        .await
        .map_err(coupon_error)?;
    Ok(Json(match status {
        QueueStatus::Queued(position) => QueueResponse {
            status: "QUEUED",
            position: Some(position),
        },
        QueueStatus::Issued => QueueResponse {
            status: "ISSUED",
            position: None,
        },
        QueueStatus::SoldOut => QueueResponse {
            status: "SOLD_OUT",
            position: None,
        },
        QueueStatus::NotQueued => QueueResponse {
            status: "NOT_QUEUED",
            position: None,
        },
    }))
}

/// The coupons the caller holds, newest first. In Redis mode an issue shows here once the
/// stream writer has stored it, normally within milliseconds of the 201.
#[utoipa::path(get, path = "/api/v1/users/me/coupons", tag = "coupons", security(("bearer" = [])),
    responses((status = 200, body = HeldCouponList), (status = 401, body = ErrorBody)))]
pub async fn mine(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
) -> Result<Json<HeldCouponList>, ApiError> {
    let held = state.db.coupons_of_user(caller.user_id.get()).await?;
    Ok(Json(HeldCouponList {
        items: held.into_iter().map(Into::into).collect(),
        next_cursor: None,
    }))
}
