//! Per-member purchase limits (issue 13 item 6): `maxPerMember` on an item, counted over the
//! member's live orders, enforced in the order's own write so that concurrent orders of one
//! member cannot pass it together; a refusal is 409 `PURCHASE_LIMIT` and writes nothing.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, TestUser, assert_error, created_else, send};
use crate::on_both_backends;

async fn limited_item(app: &TestApp, admin: &TestUser, stock: i64, max: i64) -> i64 {
    let (status, item) = send(
        app.post("/api/v1/items")
            .bearer_auth(&admin.access)
            .json(&json!({
                "name": "One per fan", "price": 500, "stock": stock, "maxPerMember": max
            })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{item}");
    assert_eq!(item["maxPerMember"], max);
    item["itemId"].as_i64().unwrap()
}

async fn order(app: &TestApp, user: &TestUser, lines: Value) -> (StatusCode, Value) {
    app.place_order(user, json!({ "lines": lines })).await
}

async fn stock_of(app: &TestApp, item: i64) -> i64 {
    let (_, body) = send(app.get(&format!("/api/v1/items/{item}"))).await;
    body["stock"].as_i64().unwrap()
}

on_both_backends! {
    async fn a_member_holds_at_most_max_per_member_units_in_live_orders(app: TestApp) {
        let admin = app.admin().await;
        let bad = send(app.post("/api/v1/items").bearer_auth(&admin.access).json(&json!({
            "name": "Broken", "price": 1, "stock": 1, "maxPerMember": 0
        })))
        .await;
        assert_error(&bad, 400, "VALIDATION_FAILED");
        assert_eq!(bad.1["details"]["field"], "maxPerMember");
        let item = limited_item(&app, &admin, 100, 2).await;
        let (_, read) = send(app.get(&format!("/api/v1/items/{item}"))).await;
        assert_eq!(read["maxPerMember"], 2);
        let plain = app.create_item(&admin, "Unlimited", 10, 50).await["itemId"].as_i64().unwrap();
        let (_, plain_read) = send(app.get(&format!("/api/v1/items/{plain}"))).await;
        assert_eq!(plain_read["maxPerMember"], Value::Null);

        let fan = app.new_user().await;
        // One line over the limit by itself: refused before anything is held or written.
        let answer = order(&app, &fan, json!([{"itemId": item, "quantity": 3}])).await;
        assert_error(&answer, 409, "PURCHASE_LIMIT");
        assert_eq!(answer.1["details"]["itemId"], item);
        assert_eq!(answer.1["details"]["maxPerMember"], 2);
        // Two orders of one unit pass; the third passes the limit with the live ones.
        for _ in 0..2 {
            let (status, body) = order(&app, &fan, json!([{"itemId": item, "quantity": 1}])).await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
        }
        let answer = order(&app, &fan, json!([{"itemId": item, "quantity": 1}])).await;
        assert_error(&answer, 409, "PURCHASE_LIMIT");
        // All or nothing: the refused order's other line took nothing.
        let answer = order(
            &app,
            &fan,
            json!([{"itemId": plain, "quantity": 5}, {"itemId": item, "quantity": 1}]),
        )
        .await;
        assert_error(&answer, 409, "PURCHASE_LIMIT");
        assert_eq!(stock_of(&app, plain).await, 50);
        assert_eq!(stock_of(&app, item).await, 98, "refusals gave their units back");
        let rows = app.count("SELECT COUNT(*) FROM orders WHERE user_id = $1", fan.user_id).await;
        assert_eq!(rows, 2, "a refusal records no order");
        // Another member has their own allowance.
        let other = app.new_user().await;
        let (status, _) = order(&app, &other, json!([{"itemId": item, "quantity": 2}])).await;
        assert_eq!(status, StatusCode::CREATED);
        // Cancelling a live order gives its units back to the member's allowance.
        let (_, list) = send(app.get("/api/v1/orders").bearer_auth(&fan.access)).await;
        let first = list["items"][0]["orderId"].as_i64().unwrap();
        let (status, _) = send(
            app.post(&format!("/api/v1/orders/{first}/cancel")).bearer_auth(&fan.access),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let (status, body) = order(&app, &fan, json!([{"itemId": item, "quantity": 1}])).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let answer = order(&app, &fan, json!([{"itemId": item, "quantity": 1}])).await;
        assert_error(&answer, 409, "PURCHASE_LIMIT");
    }

    async fn concurrent_orders_of_one_member_do_not_pass_the_limit_together(app: TestApp) {
        let admin = app.admin().await;
        let item = limited_item(&app, &admin, 1_000, 3).await;
        let hoarder = app.new_user().await;
        // Twenty orders at once, each on its own connection, each within the limit by itself.
        let answers = app
            .orders_at_once(&hoarder, json!({"lines": [{"itemId": item, "quantity": 1}]}), 20)
            .await;
        assert_eq!(created_else(&answers, 409, "PURCHASE_LIMIT"), 3);
        let units = app
            .count(
                "SELECT CAST(COALESCE(SUM(l.quantity), 0) AS BIGINT) FROM order_lines l JOIN orders o ON o.id = l.order_id \
                 WHERE o.user_id = $1 AND o.status = 'SUCCEEDED'",
                hoarder.user_id,
            )
            .await;
        assert_eq!(units, 3);
        assert_eq!(stock_of(&app, item).await, 997, "no unit is lost in a refused hold");
    }
}
