//! Order status streams (issue 13 item 3): capped per member and per node, closed when their
//! order does not change for the idle timeout, so a script cannot pin the node's memory with
//! thousands of streams.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{Backend, TestApp, TestUser, assert_error, poll_until};

const IDLE_MS: u64 = 2_000;

/// An order of `user` left `PROCESSING` (its stream stays open until it changes).
async fn processing_order(app: &TestApp, user: &TestUser) -> i64 {
    let id = 900_000_000 + user.user_id;
    // Recent, so the sweeper of stale orders leaves it alone.
    let now_ms = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    sqlx::any::install_default_drivers();
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&app.db.url)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO orders (id, user_id, status, total_price, discount, created_at, updated_at) \
         VALUES ($1, $2, 'PROCESSING', 0, 0, $3, $3)",
    )
    .bind(id)
    .bind(user.user_id)
    .bind(now_ms)
    .execute(&mut conn)
    .await
    .unwrap();
    id
}

/// Opens a stream; on success waits for its first event (the current status).
async fn open(
    app: &TestApp,
    user: &TestUser,
    order: i64,
) -> Result<reqwest::Response, (StatusCode, Value)> {
    let mut response = reqwest::Client::new()
        .get(format!("{}/api/v1/orders/{order}/events", app.base))
        .bearer_auth(&user.access)
        .send()
        .await
        .unwrap();
    let status = response.status();
    if status != StatusCode::OK {
        return Err((status, response.json().await.unwrap()));
    }
    let first = response.chunk().await.unwrap().unwrap();
    let first = String::from_utf8_lossy(&first).into_owned();
    assert!(first.contains("PROCESSING"), "{first:?}");
    Ok(response)
}

#[tokio::test]
async fn streams_are_capped_per_member_and_per_node_and_closed_when_idle() {
    let idle = IDLE_MS.to_string();
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        &[
            ("SURGE_MAX_STREAMS_PER_MEMBER", "5"),
            ("SURGE_MAX_STREAMS", "8"),
            ("SURGE_STREAM_IDLE_TIMEOUT_MS", &idle),
            // The fixture orders stay PROCESSING for the whole test.
            ("SURGE_RESERVATION_TTL_MS", "3600000"),
        ],
    )
    .await;
    let fan = app.new_user().await;
    let other = app.new_user().await;
    let fans_order = processing_order(&app, &fan).await;
    let others_order = processing_order(&app, &other).await;

    let mut fans = Vec::new();
    for _ in 0..5 {
        fans.push(
            open(&app, &fan, fans_order)
                .await
                .expect("within the member's cap"),
        );
    }
    let refused = open(&app, &fan, fans_order).await.unwrap_err();
    assert_error(&refused, 429, "RATE_LIMITED");
    let mut others = Vec::new();
    for _ in 0..3 {
        others.push(
            open(&app, &other, others_order)
                .await
                .expect("within the node's cap"),
        );
    }
    let refused = open(&app, &other, others_order).await.unwrap_err();
    assert_error(&refused, 503, "OVERLOADED");

    // Nothing changes: after the idle timeout every stream ends by itself...
    for mut stream in fans.into_iter().chain(others) {
        let ended = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(_chunk) = stream.chunk().await.unwrap() {}
        })
        .await;
        assert!(ended.is_ok(), "an idle stream stays open");
    }
    // ... and gives its slot back.
    poll_until(
        Duration::from_secs(10),
        "the member's slots to come back",
        || async { open(&app, &fan, fans_order).await.ok() },
    )
    .await;
    app.stop().await;
}
