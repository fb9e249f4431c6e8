//! The comparison stock strategies (`SURGE_STOCK_STRATEGY`) keep the same guarantees as the
//! actor path, so `surge bench compare` compares like with like: a small flash sale sells
//! exactly the stock, and a cancelled order gives its units back.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, TestDatabase, redis_settings, send};

const UNITS: i64 = 40;
const ATTEMPTS: usize = 300;

async fn sale(backend: Backend, strategy: &str, redis: bool) {
    let mut db = TestDatabase::create(backend).await;
    if redis {
        db.settings = redis_settings();
    }
    db.settings
        .push(("SURGE_STOCK_STRATEGY", strategy.to_owned()));
    let app = TestApp::spawn_on(db).await;
    let admin = app.admin().await;
    let item = app.create_item(&admin, "Compared", 100, UNITS).await["itemId"]
        .as_i64()
        .unwrap();
    let buyers = app.members(30).await;
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..ATTEMPTS {
        let request = app
            .post("/api/v1/orders")
            .bearer_auth(&buyers[n % buyers.len()].access)
            .json(&json!({ "lines": [{ "itemId": item, "quantity": 1 }] }));
        tasks.spawn(send(request));
    }
    let mut sold = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (status, body) = joined.unwrap();
        match status {
            StatusCode::CREATED => sold.push(body["orderId"].as_i64().unwrap()),
            _ => assert_eq!(body["code"], "OUT_OF_STOCK", "{strategy}: {status} {body}"),
        }
    }
    assert_eq!(sold.len() as i64, UNITS, "{strategy} sold the wrong amount");
    let stock = |app: &TestApp| {
        let request = app.get(&format!("/api/v1/items/{item}"));
        async move { send(request).await.1["stock"].as_i64().unwrap() }
    };
    assert_eq!(stock(&app).await, 0);
    let buyer_of_first = app
        .count("SELECT user_id FROM orders WHERE id = $1", sold[0])
        .await;
    let owner = buyers.iter().find(|b| b.user_id == buyer_of_first).unwrap();
    let (status, cancelled): (StatusCode, Value) = send(
        app.post(&format!("/api/v1/orders/{}/cancel", sold[0]))
            .bearer_auth(&owner.access),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(
        stock(&app).await,
        1,
        "{strategy}: the cancelled unit is back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_lock_sells_exactly_the_stock_on_sqlite() {
    sale(Backend::Sqlite, "row-lock", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_lock_sells_exactly_the_stock_on_postgres() {
    sale(Backend::Postgres, "row-lock", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_update_sells_exactly_the_stock_on_sqlite() {
    sale(Backend::Sqlite, "conditional-update", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_update_sells_exactly_the_stock_on_postgres() {
    sale(Backend::Postgres, "conditional-update", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_decr_sells_exactly_the_stock_on_postgres() {
    sale(Backend::Postgres, "redis-decr", true).await;
}
