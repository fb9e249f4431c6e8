//! Introspection for operators (ADMIN only).

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use surge_domain::UserId;

use crate::error::{ApiError, ErrorBody};
use crate::extract::{Admin, ApiPath};
use crate::state::AppState;

/// Every live actor: stock actors (with allotment, holds, last check-out and sold-out state),
/// running order sagas and coupon actors (remaining, waiting room); plus the group-commit writer's counters.
#[utoipa::path(get, path = "/api/v1/admin/actors", tag = "admin", security(("bearer" = [])),
    responses((status = 200, description = "{actors: [...], writer: {...}}"), (status = 403, body = ErrorBody)))]
pub async fn actors(State(state): State<AppState>, Admin(_): Admin) -> Json<Value> {
    let stock = state.orders.stock.views();
    let sagas = state.orders.sagas.views();
    let writer = state
        .orders
        .commit_stats
        .lock()
        .map(|s| *s)
        .unwrap_or_default();
    let mut actors: Vec<Value> = stock.into_iter().map(|v| json!(v)).collect();
    actors.extend(sagas.into_iter().map(|v| json!(v)));
    actors.extend(state.coupons.views().into_iter().map(|v| json!(v)));
    Json(json!({
        "node": &*state.node.node_id,
        "actors": actors,
        "writer": {
            "kind": "group-committer",
            "commits": writer.commits,
            "writes": writer.writes,
            "lastBatchSize": writer.last_batch,
            "lastCommitAt": writer.last_commit_at,
            "statementsMicros": writer.statements_us,
            "commitMicros": writer.commit_us,
        }
    }))
}

/// Every circuit breaker: dependency, state and recent failure rate.
#[utoipa::path(get, path = "/api/v1/admin/circuits", tag = "admin", security(("bearer" = [])),
    responses((status = 200, description = "{circuits: [...]}"), (status = 403, body = ErrorBody)))]
pub async fn circuits(State(state): State<AppState>, Admin(_): Admin) -> Json<Value> {
    Json(json!({ "circuits": state.orders.circuits.snapshots() }))
}

/// The outbox relay: where events go (`kafka` or `in-process`), whether this node holds the
/// relay lease, what it delivered, and the lag (events waiting, age of the oldest).
#[utoipa::path(get, path = "/api/v1/admin/outbox", tag = "admin", security(("bearer" = [])),
    responses((status = 200, description = "{sink, leader, published, batches, failures, purged, lagRows, lagAgeMs}"),
              (status = 403, body = ErrorBody)))]
pub async fn outbox(State(state): State<AppState>, Admin(_): Admin) -> Json<Value> {
    Json(json!(state.relay.snapshot()))
}

/// The cluster as this node sees it: members and their states, every shard's owner, epoch
/// and lease, and this node's forwarding counters. A single node shows itself owning every
/// shard.
#[utoipa::path(get, path = "/api/v1/admin/cluster", tag = "admin", security(("bearer" = [])),
    responses((status = 200, description = "{node, shardCount, members: [...], shards: [...]}"),
              (status = 403, body = ErrorBody)))]
pub async fn cluster(State(state): State<AppState>, Admin(_): Admin) -> Json<Value> {
    if let Some(cluster) = &state.node.cluster {
        return Json(cluster.admin());
    }
    let node = &*state.node.node_id;
    let shards: Vec<Value> = (0..state.node.shards)
        .map(|shard| json!({"shard": shard, "owner": node, "epoch": 0, "leaseUntil": null}))
        .collect();
    Json(json!({
        "node": {"nodeId": node, "clusterAddr": null, "startedAt": &*state.node.started_at},
        "shardCount": state.node.shards,
        "members": [{
            "nodeId": node,
            "clusterAddr": null,
            "state": "UP",
            "lastHeartbeatAt": surge_domain::time_fmt::rfc3339(surge_persistence::now_millis()),
            "shardsOwned": state.node.shards,
        }],
        "shards": shards,
    }))
}

/// Which node serializes an item's stock now: its shard, the owner and the lease epoch.
#[utoipa::path(get, path = "/api/v1/admin/cluster/items/{itemId}", tag = "admin",
    security(("bearer" = [])),
    params(("itemId" = i64, Path, description = "Item id")),
    responses((status = 200, description = "{itemId, shard, owner, epoch}"),
              (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody, description = "not an item id (ids are positive)")))]
pub async fn cluster_item(
    State(state): State<AppState>,
    Admin(_): Admin,
    ApiPath(item_id): ApiPath<i64>,
) -> Result<Json<Value>, ApiError> {
    let item_id = surge_domain::ItemId::parse(item_id, "itemId")
        .map_err(|_| ApiError::NotFound("item"))?
        .get();
    if let Some(cluster) = &state.node.cluster {
        return Ok(Json(cluster.view().admin_item(item_id)));
    }
    let shard = surge_persistence::cluster::shard_of(item_id, state.node.shards);
    Ok(Json(json!({
        "itemId": item_id,
        "shard": shard,
        "owner": &*state.node.node_id,
        "epoch": 0,
        "servedHere": true,
    })))
}

/// Marks a member verified (whatever the shop checks): coupons with `verifiedOnly` may then be
/// issued to them. Verifying twice keeps the first time.
#[utoipa::path(post, path = "/api/v1/admin/users/{userId}/verify", tag = "admin",
    security(("bearer" = [])),
    params(("userId" = i64, Path, description = "member id")),
    responses((status = 200, description = "{userId, verifiedAt}"),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn verify_member(
    State(state): State<AppState>,
    Admin(_): Admin,
    ApiPath(user_id): ApiPath<i64>,
) -> Result<Json<Value>, ApiError> {
    let user_id = UserId::parse(user_id, "userId").map_err(|_| ApiError::NotFound("member"))?;
    let verified_at = state
        .db
        .verify_user(user_id)
        .await?
        .ok_or(ApiError::NotFound("member"))?;
    Ok(Json(json!({
        "userId": user_id.get(),
        "verifiedAt": surge_domain::time_fmt::rfc3339(verified_at),
    })))
}
