//! Health, metrics, OpenAPI.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use utoipa::OpenApi;

use crate::error::{ApiError, ErrorBody};
use crate::extract::Admin;
use crate::state::AppState;

/// How long readiness waits for the database before calling it down.
const READY_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health/live", tag = "operations",
    responses((status = 200, description = "alive")))]
pub async fn live() -> Json<serde_json::Value> {
    Json(json!({ "status": "UP" }))
}

/// Readiness: the dependencies answer.
#[utoipa::path(get, path = "/health/ready", tag = "operations",
    responses((status = 200, description = "ready"),
              (status = 503, description = "a dependency is down", body = ErrorBody)))]
pub async fn ready(State(state): State<AppState>) -> Response {
    let db_ok = matches!(
        tokio::time::timeout(READY_CHECK_TIMEOUT, state.db.ping()).await,
        Ok(Ok(()))
    );
    if db_ok {
        Json(json!({ "status": "UP", "checks": { "database": "UP" } })).into_response()
    } else {
        let body = ErrorBody {
            code: "NOT_READY",
            message: "the database is not reachable".into(),
            details: Some(json!({ "failing": ["database"] })),
        };
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

fn prometheus_text(state: &AppState) -> Response {
    state.metrics.observe_relay(&state.relay.snapshot());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// Prometheus metrics (ADMIN on the API listener; open on the admin listener).
#[utoipa::path(get, path = "/metrics", tag = "operations", security(("bearer" = [])),
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain"),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn metrics_for_admin(State(state): State<AppState>, Admin(_): Admin) -> Response {
    prometheus_text(&state)
}

/// Metrics on the admin listener, which only operators can reach.
pub async fn metrics_open(State(state): State<AppState>) -> Response {
    prometheus_text(&state)
}

/// The OpenAPI document of this API.
pub async fn openapi() -> Response {
    match crate::ApiDoc::openapi().to_json() {
        Ok(doc) => ([(header::CONTENT_TYPE, "application/json")], doc).into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}
