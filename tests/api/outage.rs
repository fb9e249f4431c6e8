//! A database outage: the breaker opens, orders fail fast with 503, and service comes back by
//! itself when the database does.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{Backend, PgOutage, TestApp, send};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_breaker_opens_fails_fast_and_recovers() {
    let app = TestApp::spawn(Backend::Postgres).await;
    let admin = app.admin().await;
    let item = app.create_item(&admin, "Outage item", 10, 1_000).await["itemId"]
        .as_i64()
        .unwrap();
    let buyer = app.new_user().await;
    let buy = || {
        app.place_order(
            &buyer,
            json!({ "lines": [{ "itemId": item, "quantity": 1 }] }),
        )
    };
    assert_eq!(buy().await.0, StatusCode::CREATED);
    let (_, before) = send(app.get(&format!("/api/v1/items/{item}"))).await;
    assert_eq!(before["stock"], 999);

    // Take the database away: refuse new connections and cut the open ones.
    let outage = PgOutage::begin(&app.db).await;

    // Failures open the breaker; from then on orders are refused by the breaker itself (without
    // trying the database): 503 with Retry-After.
    let mut fast = 0;
    for _ in 0..40 {
        let response = app
            .post("/api/v1/orders")
            .bearer_auth(&buyer.access)
            .json(&json!({ "lines": [{ "itemId": item, "quantity": 1 }] }))
            .send()
            .await
            .unwrap();
        assert_ne!(
            response.status(),
            StatusCode::CREATED,
            "no order can succeed without the database"
        );
        assert!(response.status().is_server_error() || response.status() == StatusCode::ACCEPTED);
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            assert!(response.headers().contains_key("retry-after"));
            let body: serde_json::Value = response.json().await.unwrap();
            assert_eq!(body["code"], "OVERLOADED");
            if body["message"] == "the database is failing; orders are refused until it recovers" {
                fast += 1;
                if fast == 10 {
                    break;
                }
            }
        }
    }
    assert_eq!(fast, 10, "the breaker never refused orders by itself");
    let (_, circuits) = send(app.get("/api/v1/admin/circuits").bearer_auth(&admin.access)).await;
    assert_ne!(circuits["circuits"][0]["state"], "closed", "{circuits}");
    // Item reads keep working from memory, marked stale, without waiting on the database.
    let read = app
        .get(&format!("/api/v1/items/{item}"))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(read.headers()["x-surge-stale"], "true");
    let body: serde_json::Value = read.json().await.unwrap();
    assert_eq!(body["itemId"], item, "{body}");

    outage.end().await;
    let mut recovered = false;
    for _ in 0..100 {
        if buy().await.0 == StatusCode::CREATED {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "orders did not come back after the database did");
    let (_, circuits) = send(app.get("/api/v1/admin/circuits").bearer_auth(&admin.access)).await;
    assert_eq!(circuits["circuits"][0]["state"], "closed");
    app.stop().await;
}
