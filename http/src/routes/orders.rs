//! Orders: place (through a saga), read, list, follow over SSE, cancel.

use std::collections::HashSet;
use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use surge_actors::{CouponProblem, OrderRequest, SagaError, SagaOutcome};
use surge_domain::{
    IdempotencyKey, ItemId, LineStatus, MAX_ORDER_LINES, OrderStatus, PageLimit, Quantity,
    ValidationError,
};
use surge_persistence::orders::OrderRecord;
use utoipa::{IntoParams, ToSchema};

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiPath, ApiQuery, Authenticated};
use crate::slots::{Slot, SlotRefused};
use crate::state::AppState;
use crate::time_fmt::rfc3339;

/// One requested line.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OrderLineRequest {
    #[schema(minimum = 1)]
    item_id: i64,
    /// 1–1,000.
    #[schema(minimum = 1, maximum = 1_000)]
    quantity: i64,
}

/// A new order.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateOrderRequest {
    /// 1–50 lines, each item at most once (a rule beyond this schema: a 400 names the line).
    #[schema(min_items = 1, max_items = 50)]
    lines: Vec<OrderLineRequest>,
    /// A coupon the caller was issued.
    #[schema(minimum = 1)]
    coupon_id: Option<i64>,
}

/// An order line as clients see it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderLineResponse {
    item_id: i64,
    quantity: i64,
    unit_price: i64,
    /// PROCESSING, RESERVED, OUT_OF_STOCK, ITEM_NOT_FOUND or RELEASED.
    #[schema(value_type = String)]
    status: LineStatus,
}

/// The 202 answer: an order that exists and is still `PROCESSING` (its `status`); the same
/// fields as an order. Its `Location` header is the order's URL.
#[derive(Debug, Serialize, ToSchema)]
pub struct PendingOrderResponse {
    #[serde(flatten)]
    order: OrderResponse,
}

/// An order as clients see it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderResponse {
    order_id: i64,
    user_id: i64,
    /// PROCESSING, SUCCEEDED, FAILED or CANCELLED.
    #[schema(value_type = String)]
    status: OrderStatus,
    lines: Vec<OrderLineResponse>,
    coupon_id: Option<i64>,
    total_price: i64,
    discount: i64,
    /// Why it failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    failure_reason: Option<String>,
    created_at: String,
    updated_at: String,
}

impl From<OrderRecord> for OrderResponse {
    fn from(o: OrderRecord) -> Self {
        Self {
            order_id: o.id,
            user_id: o.user_id,
            status: o.status,
            lines: o
                .lines
                .into_iter()
                .map(|l| OrderLineResponse {
                    item_id: l.item_id,
                    quantity: l.quantity,
                    unit_price: l.unit_price,
                    status: l.status,
                })
                .collect(),
            coupon_id: o.coupon_id,
            total_price: o.total_price,
            discount: o.discount,
            failure_reason: o.failure_reason,
            created_at: rfc3339(o.created_at),
            updated_at: rfc3339(o.updated_at),
        }
    }
}

/// One page of orders.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderPage {
    items: Vec<OrderResponse>,
    next_cursor: Option<String>,
}

/// Paging of my orders.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OrderQuery {
    /// 1–100, default 20.
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// From the previous page.
    cursor: Option<String>,
}

const IDEMPOTENCY_HEADER: &str = "idempotency-key";

fn validate(req: &CreateOrderRequest) -> Result<Vec<(ItemId, Quantity)>, ApiError> {
    if req.lines.is_empty() || req.lines.len() > MAX_ORDER_LINES {
        return Err(ValidationError::new("lines", "must have 1 to 50 lines").into());
    }
    let mut seen = HashSet::with_capacity(req.lines.len());
    let mut lines = Vec::with_capacity(req.lines.len());
    for line in &req.lines {
        let item = ItemId::parse(line.item_id, "itemId")?;
        let quantity = Quantity::parse(line.quantity)?;
        if !seen.insert(item) {
            return Err(
                ValidationError::new("lines", "each item may appear in one line only").into(),
            );
        }
        lines.push((item, quantity));
    }
    if let Some(coupon) = req.coupon_id {
        surge_domain::CouponId::parse(coupon, "couponId")?;
    }
    Ok(lines)
}

fn request_hash(lines: &[(ItemId, Quantity)], coupon: Option<i64>) -> String {
    let mut hasher = Sha256::new();
    for (item, quantity) in lines {
        hasher.update(format!("{item}x{};", quantity.get()));
    }
    hasher.update(format!("coupon={coupon:?}"));
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    // Two keys on one request: which one a proxy or the server would honour is a guess, so
    // neither is.
    if headers.get_all(IDEMPOTENCY_HEADER).iter().nth(1).is_some() {
        return Err(
            ValidationError::new("Idempotency-Key", "must be sent once, not repeated").into(),
        );
    }
    headers
        .get(IDEMPOTENCY_HEADER)
        .map(|v| {
            v.to_str()
                .map_err(|_| ValidationError::new("Idempotency-Key", "must be visible ASCII"))
                .and_then(IdempotencyKey::parse)
        })
        .transpose()
        .map_err(Into::into)
}

async fn load(state: &AppState, order_id: i64) -> Result<OrderRecord, ApiError> {
    state
        .db
        .order_by_id(order_id)
        .await?
        .ok_or(ApiError::NotFound("order"))
}

fn created(order: OrderRecord) -> Response {
    let location = format!("/api/v1/orders/{}", order.id);
    let status = if order.status == OrderStatus::Processing {
        StatusCode::ACCEPTED
    } else {
        StatusCode::CREATED
    };
    let order = OrderResponse::from(order);
    let mut response = if status == StatusCode::ACCEPTED {
        (status, Json(PendingOrderResponse { order })).into_response()
    } else {
        (status, Json(order)).into_response()
    };
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// The answer when the saga has not said how its order ended (it is still running, or its
/// write's outcome is unknown): the order as stored if it exists; otherwise 503 "outcome
/// pending", never a 202 pointing at an order that may never exist.
async fn still_processing(state: &AppState, order_id: i64) -> Response {
    match state.db.order_by_id(order_id).await {
        Ok(Some(order)) => answer_for(order).unwrap_or_else(IntoResponse::into_response),
        _ => ApiError::Overloaded {
            message: "the order's outcome is not known yet; retry with the same \
                      Idempotency-Key to learn it"
                .into(),
            retry_after_secs: 1,
        }
        .into_response(),
    }
}

fn refused(order: OrderRecord, status: StatusCode, code: &'static str, message: &str) -> ApiError {
    let body = OrderResponse::from(order);
    ApiError::Refused {
        status,
        code,
        message: message.to_owned(),
        details: Some(json!({ "orderId": body.order_id, "lines": body.lines })),
    }
}

/// Answers for an order by its current status (used for replays and for sagas that finished).
fn answer_for(order: OrderRecord) -> Result<Response, ApiError> {
    match order.status {
        OrderStatus::Failed => {
            let not_found = order
                .lines
                .iter()
                .any(|l| l.status == LineStatus::ItemNotFound);
            let out_of_stock = order
                .lines
                .iter()
                .any(|l| l.status == LineStatus::OutOfStock);
            Err(if not_found {
                refused(
                    order,
                    StatusCode::NOT_FOUND,
                    "NOT_FOUND",
                    "an item of this order does not exist",
                )
            } else if out_of_stock {
                refused(
                    order,
                    StatusCode::CONFLICT,
                    "OUT_OF_STOCK",
                    "not enough stock for a line; nothing was reserved",
                )
            } else {
                refused(
                    order,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "OVERLOADED",
                    "the order could not be completed; nothing was reserved",
                )
            })
        }
        _ => Ok(created(order)),
    }
}

/// Waits (within `deadline`) for an order to leave PROCESSING, then answers for it.
async fn answer_when_final(
    state: &AppState,
    order_id: i64,
    deadline: tokio::time::Instant,
) -> Result<Response, ApiError> {
    let mut events = state.orders.sagas.subscribe();
    loop {
        let order = load(state, order_id).await?;
        if order.status != OrderStatus::Processing {
            return answer_for(order);
        }
        let wait = tokio::time::timeout_at(deadline, async {
            loop {
                match events.recv().await {
                    Ok(e) if e.order_id == order_id => return,
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        return;
                    }
                }
            }
        })
        .await;
        if wait.is_err() {
            return answer_for(load(state, order_id).await?);
        }
    }
}

/// Place an order: every line is reserved or none is.
#[utoipa::path(post, path = "/api/v1/orders", tag = "orders", security(("bearer" = [])),
    request_body = CreateOrderRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "retry key; same key + same body replays the first outcome")),
    responses((status = 201, body = OrderResponse), (status = 202, description = "the order exists and is still PROCESSING (a replay of an order whose saga runs on): follow it at Location or its events", body = PendingOrderResponse, headers(("Location" = String, description = "the order's URL"))),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, description = "unknown item (details.lines)", body = ErrorBody),
              (status = 409, description = "OUT_OF_STOCK (details.lines; nothing written, no orderId); PURCHASE_LIMIT (details.itemId, details.maxPerMember: the member's live orders of the item would pass its limit; nothing written); COUPON_NOT_ISSUED, COUPON_ALREADY_USED, COUPON_NOT_APPLICABLE (nothing written)", body = ErrorBody),
              (status = 422, description = "IDEMPOTENCY_KEY_REUSED", body = ErrorBody),
              (status = 429, description = "RATE_LIMITED, with Retry-After: too many orders from this member in a short time", body = ErrorBody),
              (status = 503, description = "OVERLOADED, with Retry-After: the node is full, the database breaker is open, or the outcome is not known yet (retry with the same Idempotency-Key)", body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    headers: HeaderMap,
    ApiJson(req): ApiJson<CreateOrderRequest>,
) -> Result<Response, ApiError> {
    state.limits.check_order(caller.user_id.get())?;
    let key = idempotency_key(&headers)?;
    let lines = validate(&req)?;
    let deadline = tokio::time::Instant::now() + state.orders.answer_deadline;
    let permit = state
        .orders
        .admission
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::Overloaded {
            message: "too many orders in progress; try again shortly".into(),
            retry_after_secs: 1,
        })?;
    if let Err(rejected) = state.orders.db_breaker.check() {
        return Err(ApiError::Overloaded {
            message: "the database is failing; orders are refused until it recovers".into(),
            retry_after_secs: u32::try_from(rejected.retry_after.as_secs())
                .unwrap_or(u32::MAX)
                .max(1),
        });
    }
    let request = OrderRequest {
        user_id: caller.user_id.get(),
        idempotency: key.map(|k| (k.as_str().to_owned(), request_hash(&lines, req.coupon_id))),
        lines,
        coupon_id: req.coupon_id,
    };
    let (order_id, outcome) = state
        .orders
        .sagas
        .start_order(request, Some(permit))
        .await
        .map_err(|e| match e {
            SagaError::Overloaded { retry_after_secs } => ApiError::Overloaded {
                message: "too many orders in progress".into(),
                retry_after_secs,
            },
            SagaError::Unavailable(cause) => {
                tracing::warn!(%cause, "could not start an order saga");
                ApiError::Overloaded {
                    message: "orders are unavailable right now".into(),
                    retry_after_secs: 1,
                }
            }
        })?;
    let outcome = match tokio::time::timeout_at(deadline, outcome).await {
        Ok(Ok(outcome)) => outcome,
        // Still running (or the saga died): 202 and where to look.
        Ok(Err(_)) | Err(_) => return Ok(still_processing(&state, order_id).await),
    };
    match outcome {
        // Answered from what was written: no read-back.
        SagaOutcome::Succeeded(order) => Ok(created(order)),
        SagaOutcome::OutOfStock(statuses) => Err(refused_lines(
            &req,
            &statuses,
            StatusCode::CONFLICT,
            "OUT_OF_STOCK",
            "not enough stock for a line; nothing was reserved",
        )),
        SagaOutcome::ItemNotFound(statuses) => Err(refused_lines(
            &req,
            &statuses,
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "an item of this order does not exist",
        )),
        SagaOutcome::Replay(id) => answer_when_final(&state, id, deadline).await,
        SagaOutcome::KeyReused => Err(ApiError::idempotency_key_reused(
            "this Idempotency-Key was used with a different request",
        )),
        SagaOutcome::CouponRefused(problem) => Err(coupon_refusal(problem)),
        SagaOutcome::PurchaseLimit { item_id, limit } => Err(ApiError::conflict(
            "PURCHASE_LIMIT",
            format!(
                "a member may hold at most {limit} units of item {item_id} in live orders; \
                 this order would pass that"
            ),
        )
        .with_details(serde_json::json!({"itemId": item_id, "maxPerMember": limit}))),
        SagaOutcome::Undetermined(id, cause) => {
            tracing::warn!(order_id = id, %cause, "order outcome unknown; answering 202");
            Ok(still_processing(&state, id).await)
        }
        SagaOutcome::Failed(cause) => {
            tracing::warn!(order_id, %cause, "order failed on a dependency");
            Err(ApiError::Overloaded {
                message: "the order could not be completed; nothing was reserved".into(),
                retry_after_secs: 1,
            })
        }
    }
}

/// A refusal that changed nothing: every line with its status, and no `orderId` (nothing was
/// recorded, so nothing is replayed for its Idempotency-Key either).
fn refused_lines(
    req: &CreateOrderRequest,
    statuses: &[LineStatus],
    status: StatusCode,
    code: &'static str,
    message: &str,
) -> ApiError {
    let lines: Vec<serde_json::Value> = req
        .lines
        .iter()
        .zip(statuses)
        .map(|(line, status)| {
            json!({ "itemId": line.item_id, "quantity": line.quantity, "status": status })
        })
        .collect();
    ApiError::Refused {
        status,
        code,
        message: message.to_owned(),
        details: Some(json!({ "lines": lines })),
    }
}

/// Why the order's coupon was refused; nothing was written.
fn coupon_refusal(problem: CouponProblem) -> ApiError {
    let (code, message) = match problem {
        CouponProblem::NotFound => return ApiError::NotFound("coupon"),
        CouponProblem::NotIssued => ("COUPON_NOT_ISSUED", "you were not issued this coupon"),
        CouponProblem::AlreadyUsed => (
            "COUPON_ALREADY_USED",
            "this coupon is already used by another order",
        ),
        CouponProblem::NotApplicable => (
            "COUPON_NOT_APPLICABLE",
            "this coupon is for an item the order does not contain",
        ),
    };
    ApiError::conflict(code, message)
}

fn order_id(raw: i64) -> Result<i64, ApiError> {
    if raw > 0 {
        Ok(raw)
    } else {
        Err(ApiError::NotFound("order"))
    }
}

async fn readable(state: &AppState, caller: &Caller, id: i64) -> Result<OrderRecord, ApiError> {
    let order = load(state, order_id(id)?).await?;
    // Another member's order answers exactly like a missing one (no existence oracle).
    if order.user_id != caller.user_id.get() && !caller.role.is_admin() {
        return Err(ApiError::NotFound("order"));
    }
    Ok(order)
}

/// Read an order (its owner or an ADMIN).
#[utoipa::path(get, path = "/api/v1/orders/{orderId}", tag = "orders", security(("bearer" = [])),
    params(("orderId" = i64, Path, description = "order id")),
    responses((status = 200, body = OrderResponse), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "no such order, or another member's")))]
pub async fn get(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<OrderResponse>, ApiError> {
    Ok(Json(readable(&state, &caller, id).await?.into()))
}

/// My orders, newest first.
#[utoipa::path(get, path = "/api/v1/orders", tag = "orders", security(("bearer" = [])), params(OrderQuery),
    responses((status = 200, body = OrderPage), (status = 400, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiQuery(query): ApiQuery<OrderQuery>,
) -> Result<Json<OrderPage>, ApiError> {
    let limit = PageLimit::parse(query.limit)?;
    let before = query
        .cursor
        .as_deref()
        .filter(|c| !c.is_empty())
        .map(|c| state.auth.cursors().open("order", c))
        .transpose()?;
    let mut orders = state
        .db
        .orders_of_user(caller.user_id.get(), before, limit.get() + 1)
        .await?;
    let page = usize::try_from(limit.get()).unwrap_or(usize::MAX);
    let next_cursor = if orders.len() > page {
        orders.truncate(page);
        orders
            .last()
            .map(|o| state.auth.cursors().sign("order", o.id))
    } else {
        None
    };
    Ok(Json(OrderPage {
        items: orders.into_iter().map(Into::into).collect(),
        next_cursor,
    }))
}

/// Cancel a SUCCEEDED order (its owner or an ADMIN); its stock is available again. Cancelling
/// a cancelled order answers the same.
#[utoipa::path(post, path = "/api/v1/orders/{orderId}/cancel", tag = "orders", security(("bearer" = [])),
    params(("orderId" = i64, Path, description = "order id")),
    responses((status = 200, body = OrderResponse), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody, description = "no such order, or another member's"),
              (status = 409, description = "ORDER_NOT_CANCELLABLE", body = ErrorBody)))]
pub async fn cancel(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<OrderResponse>, ApiError> {
    let order = readable(&state, &caller, id).await?;
    state
        .orders
        .sagas
        .cancel(&state.orders.committer, &order)
        .await
        .map_err(|e| ApiError::Overloaded {
            message: format!("the cancellation could not be written: {}", short(&e)),
            retry_after_secs: 1,
        })?;
    let order = load(&state, order.id).await?;
    if order.status == OrderStatus::Cancelled {
        Ok(Json(order.into()))
    } else {
        Err(ApiError::conflict(
            "ORDER_NOT_CANCELLABLE",
            format!("an order in status {} cannot be cancelled", order.status),
        )
        .with_details(json!({ "status": order.status })))
    }
}

fn short(e: &surge_persistence::PersistenceError) -> &'static str {
    match e {
        surge_persistence::PersistenceError::Overloaded => "the writer is busy",
        _ => "the database failed",
    }
}

/// Follow an order's status (its owner): one event per status change, ending at a final one.
#[utoipa::path(get, path = "/api/v1/orders/{orderId}/events", tag = "orders", security(("bearer" = [])),
    params(("orderId" = i64, Path, description = "order id")),
    responses((status = 200, description = "text/event-stream of `status` events", content_type = "text/event-stream"),
              (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody, description = "no such order, or not the caller's"),
              (status = 429, body = ErrorBody, description = "RATE_LIMITED, with Retry-After: the member has as many streams open as allowed"),
              (status = 503, body = ErrorBody, description = "OVERLOADED, with Retry-After: the node has as many streams open as allowed")))]
pub async fn events(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(id): ApiPath<i64>,
) -> Result<Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>>, ApiError> {
    // Subscribe before reading, so no change between the read and the subscription is lost.
    let rx = state.orders.sagas.subscribe();
    let order = readable(&state, &caller, id).await?;
    if order.user_id != caller.user_id.get() {
        return Err(ApiError::NotFound("order"));
    }
    let slot = state
        .streams
        .slots
        .take(caller.user_id.get())
        .map_err(|refused| match refused {
            SlotRefused::Key => ApiError::RateLimited {
                message: "too many order streams open for this member; close one first",
                retry_after_secs: 1,
            },
            SlotRefused::Total => ApiError::Overloaded {
                message: "the node has too many order streams open; try again shortly".into(),
                retry_after_secs: 1,
            },
        })?;
    let idle_timeout = state.streams.idle_timeout;
    let follow = Follow {
        _slot: slot,
        rx,
        db: state.db.clone(),
        order_id: order.id,
        next: Some(order.status),
        last: None,
        done: false,
    };
    let stream = futures_util::stream::unfold(follow, move |mut f| async move {
        // No change for the idle timeout: the stream ends (and its slot is given back).
        let status = tokio::time::timeout(idle_timeout, f.next_status())
            .await
            .ok()??;
        f.done = status.is_decided();
        let event = Event::default()
            .event("status")
            .json_data(json!({ "orderId": f.order_id, "status": status }))
            .unwrap_or_default();
        f.last = Some(status);
        Some((Ok::<_, Infallible>(event), f))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// The state of one SSE stream.
struct Follow {
    /// The member's stream slot, held as long as the stream lives.
    _slot: Slot<i64>,
    rx: tokio::sync::broadcast::Receiver<surge_actors::orders::OrderEvent>,
    db: surge_persistence::Database,
    order_id: i64,
    next: Option<OrderStatus>,
    last: Option<OrderStatus>,
    done: bool,
}

impl Follow {
    async fn next_status(&mut self) -> Option<OrderStatus> {
        if self.done {
            return None;
        }
        if let Some(status) = self.next.take() {
            return Some(status);
        }
        loop {
            match self.rx.recv().await {
                Ok(e) if e.order_id == self.order_id && Some(e.status) != self.last => {
                    return Some(e.status);
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    // Missed events: the database knows the current status.
                    if let Ok(Some(o)) = self.db.order_by_id(self.order_id).await
                        && Some(o.status) != self.last
                    {
                        return Some(o.status);
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}
