//! Stock actor life cycle: passivation, the reservation sweeper, bounded admission.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use sqlx::Connection;

use crate::helpers::{Backend, TestApp, send};

async fn db(app: &TestApp) -> sqlx::AnyConnection {
    sqlx::any::install_default_drivers();
    sqlx::AnyConnection::connect(&app.db.url).await.unwrap()
}

async fn stock_of(app: &TestApp, item: i64) -> i64 {
    send(app.get(&format!("/api/v1/items/{item}"))).await.1["stock"]
        .as_i64()
        .unwrap()
}

async fn stock_actor(app: &TestApp, admin: &str, item: i64) -> Option<serde_json::Value> {
    let (_, actors) = send(app.get("/api/v1/admin/actors").bearer_auth(admin)).await;
    actors["actors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "stock" && a["key"] == item)
        .cloned()
}

async fn passivation_gives_the_allotment_back(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("SURGE_STOCK_PASSIVATE_MS", "300")]).await;
    let admin = app.admin().await;
    let item = app.create_item(&admin, "Idle", 10, 50).await["itemId"]
        .as_i64()
        .unwrap();
    let buyer = app.new_user().await;
    let buy = || {
        app.place_order(
            &buyer,
            json!({ "lines": [{ "itemId": item, "quantity": 2 }] }),
        )
    };
    assert_eq!(buy().await.0, StatusCode::CREATED);
    let first = stock_actor(&app, &admin.access, item)
        .await
        .expect("the item has an actor");
    assert_eq!(first["allotmentLeft"], 48);

    // The actor leaves the registry first, then writes its allotment back: wait for both.
    let mut conn = db(&app).await;
    let mut state = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let gone = stock_actor(&app, &admin.access, item).await.is_none();
        let (units,): (i64,) =
            sqlx::query_as("SELECT units FROM stock_allotments WHERE item_id = $1")
                .bind(item)
                .fetch_one(&mut conn)
                .await
                .unwrap();
        let (available,): (i64,) = sqlx::query_as("SELECT available FROM items WHERE id = $1")
            .bind(item)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        state = Some((gone, units, available));
        if gone && units == 0 {
            break;
        }
    }
    assert_eq!(
        state,
        Some((true, 0, 48)),
        "the idle actor stopped and its unsold allotment is back in the item row"
    );
    assert_eq!(stock_of(&app, item).await, 48);

    // The next order starts a new owner under a higher epoch.
    assert_eq!(buy().await.0, StatusCode::CREATED);
    let second = stock_actor(&app, &admin.access, item).await.unwrap();
    assert!(second["epoch"].as_i64().unwrap() > first["epoch"].as_i64().unwrap());
    assert_eq!(stock_of(&app, item).await, 46);
    let _ = conn.close().await;
}

async fn the_sweeper_releases_what_a_dead_saga_held(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.admin().await;
    let item = app.create_item(&admin, "Held", 10, 10).await["itemId"]
        .as_i64()
        .unwrap();
    // What a saga that died after reserving leaves behind: units out of the item row, held by
    // a reservation whose deadline has passed.
    let mut conn = db(&app).await;
    let past = 1_i64;
    sqlx::query("UPDATE items SET available = available - 3 WHERE id = $1")
        .bind(item)
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("INSERT INTO reservations (order_id, item_id, quantity, status, epoch, deadline_at, created_at, updated_at) \
                 VALUES (987654, $1, 3, 'HELD', 0, $2, $2, $2)")
        .bind(item).bind(past).execute(&mut conn).await.unwrap();
    // ... and its order, left PROCESSING long ago.
    sqlx::query(
        "INSERT INTO orders (id, user_id, status, total_price, discount, created_at, updated_at) \
                 VALUES (987654, $1, 'PROCESSING', 30, 0, $2, $2)",
    )
    .bind(admin.user_id)
    .bind(past)
    .execute(&mut conn)
    .await
    .unwrap();
    assert_eq!(stock_of(&app, item).await, 7);
    let mut released = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if stock_of(&app, item).await == 10 {
            released = true;
            break;
        }
    }
    assert!(released, "the expired reservation was never released");
    let (status,): (String,) =
        sqlx::query_as("SELECT status FROM reservations WHERE order_id = 987654")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(status, "RELEASED");
    let mut failed = false;
    for _ in 0..50 {
        let (status,): (String,) = sqlx::query_as("SELECT status FROM orders WHERE id = 987654")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        if status == "FAILED" {
            failed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(failed, "the stale PROCESSING order was never failed");
    assert_eq!(stock_of(&app, item).await, 10, "units are released once");
    let _ = conn.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_stock_actor_passivates_and_returns_its_allotment_sqlite() {
    passivation_gives_the_allotment_back(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_stock_actor_passivates_and_returns_its_allotment_postgres() {
    passivation_gives_the_allotment_back(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_reservations_are_swept_back_into_stock_sqlite() {
    the_sweeper_releases_what_a_dead_saga_held(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_reservations_are_swept_back_into_stock_postgres() {
    the_sweeper_releases_what_a_dead_saga_held(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_node_sheds_orders_with_503_and_retry_after() {
    let app = TestApp::spawn_with(Backend::Sqlite, &[("SURGE_MAX_INFLIGHT_ORDERS", "1")]).await;
    sheds_with_503_and_retry_after(app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_item_sheds_orders_with_503_and_retry_after() {
    let app = TestApp::spawn_with(Backend::Sqlite, &[("SURGE_MAX_WAITING_PER_ITEM", "1")]).await;
    sheds_with_503_and_retry_after(app).await;
}

/// 40 concurrent orders against a bound of 1: some are shed with 503 and Retry-After, the
/// rest succeed, and the stock matches exactly what succeeded.
async fn sheds_with_503_and_retry_after(app: TestApp) {
    let admin = app.admin().await;
    let item = app.create_item(&admin, "Busy", 10, 100).await["itemId"]
        .as_i64()
        .unwrap();
    let buyer = app.new_user().await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let request = app
            .post("/api/v1/orders")
            .bearer_auth(&buyer.access)
            .json(&json!({ "lines": [{ "itemId": item, "quantity": 1 }] }));
        tasks.spawn(async move {
            let response = request.send().await.unwrap();
            let retry_after = response.headers().get("retry-after").cloned();
            let status = response.status();
            let body: serde_json::Value = response.json().await.unwrap();
            (status, retry_after, body)
        });
    }
    let (mut created, mut shed) = (0, 0);
    while let Some(joined) = tasks.join_next().await {
        let (status, retry_after, body) = joined.unwrap();
        match status {
            StatusCode::CREATED => created += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(body["code"], "OVERLOADED");
                assert!(retry_after.is_some(), "503 without Retry-After");
                shed += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(
        shed > 0,
        "a bound of one and 40 concurrent orders, yet nothing was shed"
    );
    assert_eq!(created + shed, 40);
    assert_eq!(stock_of(&app, item).await, 100 - created);
    app.stop().await;
}
