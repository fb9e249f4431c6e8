//! Items: create, read, search, restock.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use surge_domain::{
    ItemId, ItemName, Money, PageLimit, PurchaseLimit, RestockQuantity, StockLevel, ValidationError,
};
use surge_persistence::PersistenceError;
use surge_persistence::items::{ItemRecord, ItemSearch};
use utoipa::{IntoParams, ToSchema};

use crate::cursor::Cursors;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Admin, ApiJson, ApiPath, ApiQuery};
use crate::state::AppState;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use surge_supervisors::CircuitState;

/// New item.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateItemRequest {
    /// 1–200 characters.
    #[schema(example = "Limited sneakers", min_length = 1, max_length = 200)]
    name: String,
    /// Unit price in the smallest currency unit, 0 to 100,000,000,000.
    #[schema(example = 129000, minimum = 0, maximum = 100_000_000_000_i64)]
    price: i64,
    /// Initial units, 0 to 1,000,000,000.
    #[schema(example = 100, minimum = 0, maximum = 1_000_000_000)]
    stock: i64,
    /// Units one member may hold in live orders of this item, ≥ 1 (omitted: no limit). An
    /// order past it is refused 409 PURCHASE_LIMIT.
    #[schema(example = 2, minimum = 1, maximum = 1_000_000_000)]
    max_per_member: Option<i64>,
}

/// Units to add.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestockRequest {
    /// 1 to 1,000,000,000 (the item's stock may not pass 1,000,000,000: 409).
    #[schema(example = 50, minimum = 1, maximum = 1_000_000_000)]
    quantity: i64,
}

/// An item as clients see it; `stock` is the units still available to buyers.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ItemResponse {
    #[schema(value_type = i64)]
    item_id: ItemId,
    name: String,
    price: i64,
    stock: i64,
    /// Units one member may hold in live orders; null: no limit.
    max_per_member: Option<i64>,
}

impl From<ItemRecord> for ItemResponse {
    fn from(item: ItemRecord) -> Self {
        Self {
            item_id: item.id,
            name: item.name,
            price: item.price,
            stock: item.available,
            max_per_member: item.max_per_member,
        }
    }
}

/// One page of items.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ItemPage {
    items: Vec<ItemResponse>,
    /// Pass as `cursor` for the next page; null on the last page.
    next_cursor: Option<String>,
}

/// Search filters and paging.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ItemQuery {
    /// Name contains this text.
    #[param(max_length = 200)]
    q: Option<String>,
    /// Lowest price, inclusive.
    #[param(minimum = 0, maximum = 100_000_000_000_i64)]
    min_price: Option<i64>,
    /// Highest price, inclusive.
    #[param(minimum = 0, maximum = 100_000_000_000_i64)]
    max_price: Option<i64>,
    /// Page size, 1–100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// Opaque cursor from the previous page (empty: the first page).
    cursor: Option<String>,
}

/// Longest accepted search text, in characters.
const MAX_QUERY_CHARS: usize = 200;

fn item_id(raw: i64) -> Result<ItemId, ApiError> {
    ItemId::parse(raw, "itemId").map_err(|_| ApiError::NotFound("item"))
}

/// The kind of id an item list's cursor names.
const CURSOR_KIND: &str = "item";

fn decode_cursor(cursors: &Cursors, cursor: &str) -> Result<ItemId, ValidationError> {
    let id = cursors.open(CURSOR_KIND, cursor)?;
    ItemId::parse(id, "cursor")
}

/// Create an item (ADMIN).
#[utoipa::path(post, path = "/api/v1/items", tag = "items", security(("bearer" = [])),
    request_body = CreateItemRequest,
    responses((status = 201, body = ItemResponse), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    Admin(_admin): Admin,
    ApiJson(req): ApiJson<CreateItemRequest>,
) -> Result<(StatusCode, Json<ItemResponse>), ApiError> {
    let name = ItemName::parse(&req.name)?;
    let price = Money::parse(req.price, "price")?;
    let stock = StockLevel::parse(req.stock)?;
    let limit = req.max_per_member.map(PurchaseLimit::parse).transpose()?;
    let item = state.db.insert_item(&name, price, stock, limit).await?;
    Ok((StatusCode::CREATED, Json(item.into())))
}

/// Read one item.
#[utoipa::path(get, path = "/api/v1/items/{itemId}", tag = "items",
    params(("itemId" = i64, Path, description = "item id")),
    responses((status = 200, body = ItemResponse, description = "with `x-surge-stale: true` when served from memory during a database outage"), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Response, ApiError> {
    let id = item_id(id)?;
    let stale = |item: ItemRecord| {
        let mut response = Json(ItemResponse::from(item)).into_response();
        response
            .headers_mut()
            .insert(STALE_HEADER, HeaderValue::from_static("true"));
        response
    };
    // While the database's breaker is open, do not wait on it: answer from memory.
    if state.orders.db_breaker.snapshot().state == CircuitState::Open
        && let Some(item) = state.items.recall(id.get())
    {
        return Ok(stale(item));
    }
    match state.db.item_by_id(id).await {
        Ok(Some(item)) => {
            state.items.remember(&item);
            Ok(Json(ItemResponse::from(item)).into_response())
        }
        Ok(None) => Err(ApiError::NotFound("item")),
        Err(e) => match state.items.recall(id.get()) {
            Some(item) => {
                tracing::warn!(error = %e, item = id.get(), "item read failed; answering from memory");
                Ok(stale(item))
            }
            None => Err(e.into()),
        },
    }
}

/// Set on item answers served from memory while the database is unreachable.
const STALE_HEADER: &str = "x-surge-stale";

/// Search items by name and price range, in id order, with cursor paging.
#[utoipa::path(get, path = "/api/v1/items", tag = "items", params(ItemQuery),
    responses((status = 200, body = ItemPage), (status = 400, body = ErrorBody)))]
pub async fn search(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ItemQuery>,
) -> Result<Json<ItemPage>, ApiError> {
    let limit = PageLimit::parse(query.limit)?;
    let min_price = query
        .min_price
        .map(|p| Money::parse(p, "minPrice"))
        .transpose()?;
    let max_price = query
        .max_price
        .map(|p| Money::parse(p, "maxPrice"))
        .transpose()?;
    if let (Some(min), Some(max)) = (min_price, max_price)
        && min > max
    {
        return Err(ValidationError::new("minPrice", "must not be greater than maxPrice").into());
    }
    if query
        .q
        .as_ref()
        .is_some_and(|q| q.chars().count() > MAX_QUERY_CHARS)
    {
        return Err(ValidationError::new("q", "must be at most 200 characters").into());
    }
    let after = query
        .cursor
        .as_deref()
        .filter(|c| !c.is_empty())
        .map(|c| decode_cursor(state.auth.cursors(), c))
        .transpose()?;
    let mut rows = state
        .db
        .search_items(&ItemSearch {
            name_contains: query.q,
            min_price,
            max_price,
            after,
            limit: limit.get() + 1,
        })
        .await?;
    let page_size = usize::try_from(limit.get()).unwrap_or(usize::MAX);
    let next_cursor = if rows.len() > page_size {
        rows.truncate(page_size);
        rows.last()
            .map(|item| state.auth.cursors().sign(CURSOR_KIND, item.id.get()))
    } else {
        None
    };
    Ok(Json(ItemPage {
        items: rows.into_iter().map(Into::into).collect(),
        next_cursor,
    }))
}

/// Add units to an item (ADMIN).
#[utoipa::path(post, path = "/api/v1/items/{itemId}/restock", tag = "items",
    security(("bearer" = [])), request_body = RestockRequest,
    params(("itemId" = i64, Path, description = "item id")),
    responses((status = 200, body = ItemResponse), (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody, description = "STOCK_LIMIT: the item's stock would pass 1,000,000,000 units")))]
pub async fn restock(
    State(state): State<AppState>,
    Admin(_admin): Admin,
    ApiPath(id): ApiPath<i64>,
    ApiJson(req): ApiJson<RestockRequest>,
) -> Result<Json<ItemResponse>, ApiError> {
    let id = item_id(id)?;
    let quantity = RestockQuantity::parse(req.quantity)?;
    let item = state
        .db
        .restock_item(id, quantity)
        .await
        .map_err(|e| match e {
            PersistenceError::NotFound => ApiError::NotFound("item"),
            PersistenceError::LimitExceeded => ApiError::conflict(
                "STOCK_LIMIT",
                "this restock would take the item's stock above 1000000000 units",
            ),
            other => other.into(),
        })?;
    // Units came back: an actor that knew the item sold out looks again.
    state.orders.stock_path.replenished(id);
    Ok(Json(item.into()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let cursors = Cursors::new(&[7; 40]);
        let id = ItemId::from_db(42);
        let cursor = cursors.sign(CURSOR_KIND, id.get());
        assert_eq!(decode_cursor(&cursors, &cursor).unwrap(), id);
        assert!(decode_cursor(&cursors, "not-a-cursor").is_err());
        assert!(decode_cursor(&cursors, &cursors.sign(CURSOR_KIND, -3)).is_err());
    }
}
