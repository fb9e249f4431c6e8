//! Introspection for operators (ADMIN only).

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::error::ErrorBody;
use crate::extract::Admin;
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
