//! The my-page read model in MongoDB, over the wire (the mongoeco server): the page follows
//! each change from its documents, a redelivered event changes nothing, and the page the read
//! model serves is the page composition gives.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use surge_domain::{Event, EventType};
use surge_persistence::mongo_pages::MongoPages;

use crate::events::{execute, my_page, read_model_page};
use crate::helpers::{Backend, TestApp, send};

/// A database of this test's own on the shared server.
fn fresh_url() -> String {
    let base = std::env::var("SURGE_TEST_MONGO_URL")
        .unwrap_or_else(|_| "mongodb://127.0.0.1:27117/?directConnection=true".into());
    let (server, query) = base.split_once("/?").unwrap_or((base.as_str(), ""));
    let server = server.trim_end_matches('/');
    format!("{server}/t{}?{query}", uuid::Uuid::new_v4().simple())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_lives_in_mongodb_and_follows_each_change() {
    let url = fresh_url();
    let app = TestApp::spawn_with(Backend::Postgres, &[("SURGE_MONGO_URL", &url)]).await;
    let admin = app.admin().await;
    let buyer = app.new_user().await;
    let item = app.create_item(&admin, "Mongo item", 250, 10).await["itemId"]
        .as_i64()
        .unwrap();
    let (status, order) = app
        .place_order(&buyer, json!({"lines": [{"itemId": item, "quantity": 2}]}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let order_id = order["orderId"].as_i64().unwrap();
    let (page, took) = read_model_page(&app, &buyer, Duration::from_secs(1), |p| {
        p["recentOrders"][0]["orderId"] == order_id
    })
    .await;
    eprintln!("the order was on the MongoDB page after {took:?}");
    assert_eq!(page["stats"]["ordersSucceeded"], 1);
    assert_eq!(page["stats"]["totalSpent"], 500);
    assert_eq!(page["recentOrders"][0], order);
    let (status, _) = send(
        app.post(&format!("/api/v1/orders/{order_id}/cancel"))
            .bearer_auth(&buyer.access),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (page, _) = read_model_page(&app, &buyer, Duration::from_secs(1), |p| {
        p["stats"]["ordersSucceeded"] == 0
    })
    .await;
    assert_eq!(page["recentOrders"][0]["status"], "CANCELLED");
    // The document is in MongoDB (read over the wire), not in the main database.
    let pages = MongoPages::connect(&url).await.unwrap();
    let stored = pages
        .page(buyer.user_id)
        .await
        .unwrap()
        .expect("a document");
    assert_eq!(stored.page.stats.orders_succeeded, 0);
    assert_eq!(stored.page.recent_orders.len(), 1);
    assert_eq!(
        app.count(
            "SELECT COUNT(*) FROM my_page WHERE user_id = $1",
            buyer.user_id
        )
        .await,
        0
    );
    // A redelivered event changes nothing; a new one is applied once.
    let again = Event::new(
        EventType::OrderSucceeded,
        999,
        Some(buyer.user_id),
        0,
        json!({"orderId": 999, "totalPrice": 7}),
    );
    assert_eq!(
        pages
            .apply_member(buyer.user_id, &[(&again, None)], 0)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        pages
            .apply_member(buyer.user_id, &[(&again, None)], 0)
            .await
            .unwrap(),
        0
    );
    let stored = pages.page(buyer.user_id).await.unwrap().unwrap();
    assert_eq!(stored.page.stats.orders_succeeded, 1);
    assert_eq!(stored.page.stats.total_spent, 7);
    // Composition (the page forced out of date) gives what the read model gave.
    execute(
        &app,
        &[&format!(
            "INSERT INTO outbox (topic, event_key, payload, created_at, event_id, user_id) \
         VALUES ('orders', 'x', '{{}}', 0, 'never-applied', {})",
            buyer.user_id
        )],
    )
    .await;
    let (_, composed) = my_page(&app, &buyer).await;
    assert_eq!(composed["source"], "composed");
    for part in ["user", "recentOrders", "coupons", "stats"] {
        assert_eq!(composed[part], page[part], "{part}");
    }
}
