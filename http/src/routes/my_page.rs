//! "My page": the member, their newest orders, their coupons and their totals.
//!
//! Served from the read model when it holds every change about the caller (the events of
//! their last 2xx included); otherwise composed from the sources in parallel, each part with
//! its own timeout. An optional part that fails or is slow is left out and named in
//! `degraded`; without the member part the answer is 503 OVERLOADED.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use serde_json::Value;
use surge_domain::{PageStats, RECENT_ORDERS, time_fmt::rfc3339};
use surge_persistence::now_millis;
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorBody};
use crate::extract::Authenticated;
use crate::routes::coupons::HeldCouponResponse;
use crate::routes::orders::OrderResponse;
use crate::routes::users::UserResponse;
use crate::state::AppState;

/// How long each source may take before its part is left out (and the read model's own check
/// before the page is composed instead).
pub const PART_TIMEOUT: Duration = Duration::from_millis(500);

/// Totals on the page.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatsResponse {
    /// Orders now SUCCEEDED.
    orders_succeeded: i64,
    /// Sum of their totals.
    total_spent: i64,
    /// Coupons not used yet.
    coupons_unused: i64,
}

impl From<PageStats> for StatsResponse {
    fn from(s: PageStats) -> Self {
        Self {
            orders_succeeded: s.orders_succeeded,
            total_spent: s.total_spent,
            coupons_unused: s.coupons_unused,
        }
    }
}

/// The page.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MyPageResponse {
    /// `{userId, loginId, name, role}`.
    #[schema(value_type = Object)]
    user: Value,
    /// The 5 newest orders, newest first (the order shape).
    #[schema(value_type = Vec<Object>)]
    recent_orders: Vec<Value>,
    /// The member's coupons, unused first.
    #[schema(value_type = Vec<Object>)]
    coupons: Vec<Value>,
    /// Totals; absent when degraded.
    #[serde(skip_serializing_if = "Option::is_none")]
    stats: Option<StatsResponse>,
    /// Parts left out: `orders`, `coupons`, `stats`.
    degraded: Vec<&'static str>,
    /// When the data was true (the read model's last change, or now when composed).
    as_of: String,
    /// `read-model` or `composed`.
    source: &'static str,
}

/// The caller's page.
#[utoipa::path(get, path = "/api/v1/my-page", tag = "members", security(("bearer" = [])),
    responses((status = 200, body = MyPageResponse),
              (status = 401, body = ErrorBody),
              (status = 503, description = "the member part is unavailable (OVERLOADED, Retry-After)", body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
) -> Result<Json<MyPageResponse>, ApiError> {
    let user_id = caller.user_id.get();
    match tokio::time::timeout(PART_TIMEOUT, state.my_page.current_page(user_id)).await {
        Ok(Ok(Some(stored))) => {
            if let Some(user) = stored.page.user {
                return Ok(Json(MyPageResponse {
                    user,
                    recent_orders: stored.page.recent_orders,
                    coupons: stored.page.coupons,
                    stats: Some(stored.page.stats.into()),
                    degraded: Vec::new(),
                    as_of: rfc3339(stored.updated_at),
                    source: "read-model",
                }));
            }
        }
        Ok(Ok(None)) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "reading the my-page read model failed; composing")
        }
        Err(_) => tracing::warn!("the my-page read model was slow; composing"),
    }
    compose(&state, caller.user_id).await.map(Json)
}

/// The page from the sources, in parallel.
async fn compose(
    state: &AppState,
    user_id: surge_domain::UserId,
) -> Result<MyPageResponse, ApiError> {
    let id = user_id.get();
    let limit = u32::try_from(RECENT_ORDERS).unwrap_or(5);
    let (user, orders, coupons, stats) = tokio::join!(
        tokio::time::timeout(PART_TIMEOUT, state.db.user_by_id(user_id)),
        tokio::time::timeout(PART_TIMEOUT, state.db.orders_of_user(id, None, limit)),
        tokio::time::timeout(PART_TIMEOUT, state.db.coupons_of_user(id)),
        tokio::time::timeout(PART_TIMEOUT, state.db.member_stats(id)),
    );
    let as_of = rfc3339(now_millis());
    let user = match user {
        Ok(Ok(Some(user))) => to_value(UserResponse::from(user)),
        Ok(Ok(None)) => return Err(ApiError::Unauthenticated("this member no longer exists")),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "my page: the member part failed");
            return Err(member_unavailable());
        }
        Err(_) => {
            tracing::warn!("my page: the member part timed out");
            return Err(member_unavailable());
        }
    };
    let mut degraded = Vec::new();
    let recent_orders = part("orders", orders, &mut degraded).map(|orders| {
        orders
            .into_iter()
            .map(|o| to_value(OrderResponse::from(o)))
            .collect()
    });
    let coupons = part("coupons", coupons, &mut degraded).map(|mut held| {
        held.sort_by_key(|c| (c.status != surge_domain::CouponStatus::Unused, c.coupon_id));
        held.into_iter()
            .map(|c| to_value(HeldCouponResponse::from(c)))
            .collect()
    });
    let stats = part("stats", stats, &mut degraded).map(StatsResponse::from);
    Ok(MyPageResponse {
        user,
        recent_orders: recent_orders.unwrap_or_default(),
        coupons: coupons.unwrap_or_default(),
        stats,
        degraded,
        as_of,
        source: "composed",
    })
}

/// An optional part: its value, or `None` and its name in `degraded`.
fn part<T>(
    name: &'static str,
    result: Result<Result<T, surge_persistence::PersistenceError>, tokio::time::error::Elapsed>,
    degraded: &mut Vec<&'static str>,
) -> Option<T> {
    match result {
        Ok(Ok(value)) => Some(value),
        Ok(Err(e)) => {
            tracing::warn!(part = name, error = %e, "my page: a part failed; left out");
            degraded.push(name);
            None
        }
        Err(_) => {
            tracing::warn!(part = name, "my page: a part timed out; left out");
            degraded.push(name);
            None
        }
    }
}

fn member_unavailable() -> ApiError {
    ApiError::Overloaded {
        message: "the member part of the page is unavailable; retry shortly".into(),
        retry_after_secs: 1,
    }
}

fn to_value(v: impl Serialize) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}
