//! Coupons used in orders: the discount lands on the right line, a failed or cancelled order
//! gives the coupon back, nobody uses a coupon they were not issued, and of two concurrent
//! orders with one coupon exactly one wins.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::coupons::{Store, create_coupon, issue, spawn};
use crate::helpers::{TestApp, TestUser, assert_error, send};
use crate::on_both_coupon_stores;

async fn order(app: &TestApp, user: &TestUser, lines: Value, coupon: i64) -> (StatusCode, Value) {
    app.place_order(user, json!({ "lines": lines, "couponId": coupon }))
        .await
}

async fn my_coupon_status(app: &TestApp, user: &TestUser, coupon: i64) -> String {
    let (_, mine) = send(
        app.get("/api/v1/users/me/coupons")
            .bearer_auth(&user.access),
    )
    .await;
    mine["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["couponId"] == coupon)
        .map(|c| c["status"].as_str().unwrap().to_owned())
        .unwrap_or_else(|| "MISSING".into())
}

/// An admin, a buyer holding one issued coupon, and two items.
struct Shop {
    admin: TestUser,
    buyer: TestUser,
    shoes: i64,
    socks: i64,
}

async fn shop(app: &TestApp) -> Shop {
    let admin = app.admin().await;
    let shoes = app.create_item(&admin, "Shoes", 10_000, 5).await["itemId"]
        .as_i64()
        .unwrap();
    let socks = app.create_item(&admin, "Socks", 999, 50).await["itemId"]
        .as_i64()
        .unwrap();
    let buyer = app.new_user().await;
    Shop {
        admin,
        buyer,
        shoes,
        socks,
    }
}

on_both_coupon_stores! {
    async fn an_item_coupon_discounts_only_its_line(app: TestApp) {
        let s = shop(&app).await;
        let coupon = create_coupon(&app, &s.admin, json!({
            "name": "Shoes 12.5%", "discountRate": 12.5, "quantity": 10, "itemId": s.shoes
        })).await["couponId"].as_i64().unwrap();
        assert_eq!(issue(&app, &s.buyer, coupon).await.0, StatusCode::CREATED);
        // No waiting for the stream: the order records the issue itself if it must.
        let (status, placed) = order(&app, &s.buyer, json!([
            { "itemId": s.shoes, "quantity": 3 }, { "itemId": s.socks, "quantity": 2 }
        ]), coupon).await;
        assert_eq!(status, StatusCode::CREATED, "{placed}");
        // Shoes line 30,000 at 12.5% = 3,750; the socks line (1,998) is not discounted.
        assert_eq!(placed["discount"], 3_750);
        assert_eq!(placed["totalPrice"], 30_000 + 1_998 - 3_750);
        assert_eq!(placed["couponId"], coupon);
        assert_eq!(my_coupon_status(&app, &s.buyer, coupon).await, "USED");
        // Used: a second order cannot use it again.
        let again = order(&app, &s.buyer, json!([{ "itemId": s.shoes, "quantity": 1 }]), coupon).await;
        assert_error(&again, 409, "COUPON_ALREADY_USED");
        // Cancelling gives it back, and it works again.
        let id = placed["orderId"].as_i64().unwrap();
        let (status, _) = send(app.post(&format!("/api/v1/orders/{id}/cancel")).bearer_auth(&s.buyer.access)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(my_coupon_status(&app, &s.buyer, coupon).await, "UNUSED");
        let (status, reused) = order(&app, &s.buyer, json!([{ "itemId": s.shoes, "quantity": 1 }]), coupon).await;
        assert_eq!(status, StatusCode::CREATED, "{reused}");
        assert_eq!(reused["discount"], 1_250);
    }

    async fn an_order_coupon_discounts_the_total_rounding_down(app: TestApp) {
        let s = shop(&app).await;
        let coupon = create_coupon(&app, &s.admin, json!({
            "name": "All 33.3%", "discountRate": 33.3, "quantity": 10
        })).await["couponId"].as_i64().unwrap();
        issue(&app, &s.buyer, coupon).await;
        let (status, placed) = order(&app, &s.buyer, json!([{ "itemId": s.socks, "quantity": 1 }]), coupon).await;
        assert_eq!(status, StatusCode::CREATED, "{placed}");
        // 999 × 33.3% = 332.667, rounded down.
        assert_eq!(placed["discount"], 332);
        assert_eq!(placed["totalPrice"], 999 - 332);
    }

    async fn a_failed_order_gives_the_coupon_back(app: TestApp) {
        let s = shop(&app).await;
        let coupon = create_coupon(&app, &s.admin, json!({
            "name": "Back", "discountRate": 10, "quantity": 10
        })).await["couponId"].as_i64().unwrap();
        issue(&app, &s.buyer, coupon).await;
        let refused = order(&app, &s.buyer, json!([
            { "itemId": s.socks, "quantity": 1 }, { "itemId": s.shoes, "quantity": 6 }
        ]), coupon).await;
        assert_error(&refused, 409, "OUT_OF_STOCK");
        assert_eq!(my_coupon_status(&app, &s.buyer, coupon).await, "UNUSED");
        let (status, _) = order(&app, &s.buyer, json!([{ "itemId": s.shoes, "quantity": 5 }]), coupon).await;
        assert_eq!(status, StatusCode::CREATED);
    }

    async fn coupons_not_issued_or_not_applicable_are_refused(app: TestApp) {
        let s = shop(&app).await;
        let shoes_only = create_coupon(&app, &s.admin, json!({
            "name": "Shoes only", "discountRate": 50, "quantity": 10, "itemId": s.shoes
        })).await["couponId"].as_i64().unwrap();
        let stranger = app.new_user().await;
        issue(&app, &s.buyer, shoes_only).await;
        let socks = json!([{ "itemId": s.socks, "quantity": 1 }]);
        assert_error(&order(&app, &s.buyer, socks.clone(), shoes_only).await, 409, "COUPON_NOT_APPLICABLE");
        let shoes = json!([{ "itemId": s.shoes, "quantity": 1 }]);
        assert_error(&order(&app, &stranger, shoes.clone(), shoes_only).await, 409, "COUPON_NOT_ISSUED");
        assert_error(&order(&app, &s.buyer, shoes.clone(), 9_999).await, 404, "NOT_FOUND");
        assert_error(&order(&app, &s.buyer, shoes, 0).await, 400, "VALIDATION_FAILED");
        // Refusals write nothing and take no stock.
        let (_, item) = send(app.get(&format!("/api/v1/items/{}", s.shoes))).await;
        assert_eq!(item["stock"], 5);
        assert_eq!(my_coupon_status(&app, &s.buyer, shoes_only).await, "UNUSED");
    }

    async fn two_concurrent_orders_with_one_coupon_one_wins(app: TestApp) {
        const RACERS: usize = 8;
        let s = shop(&app).await;
        let coupon = create_coupon(&app, &s.admin, json!({
            "name": "Once", "discountRate": 20, "quantity": 1
        })).await["couponId"].as_i64().unwrap();
        issue(&app, &s.buyer, coupon).await;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..RACERS {
            let client = app.client.clone();
            let url = format!("{}/api/v1/orders", app.base);
            let token = s.buyer.access.clone();
            let socks = s.socks;
            tasks.spawn(async move {
                let response = client.post(url).bearer_auth(token)
                    .json(&json!({ "lines": [{ "itemId": socks, "quantity": 1 }], "couponId": coupon }))
                    .send().await.unwrap();
                let status = response.status();
                (status, response.json::<Value>().await.unwrap())
            });
        }
        let mut won = 0;
        while let Some(joined) = tasks.join_next().await {
            let (status, body) = joined.unwrap();
            match status {
                StatusCode::CREATED => won += 1,
                _ => assert_eq!(body["code"], "COUPON_ALREADY_USED", "{status} {body}"),
            }
        }
        assert_eq!(won, 1);
        let (_, item) = send(app.get(&format!("/api/v1/items/{}", s.socks))).await;
        assert_eq!(item["stock"], 49, "only the winner took stock");
    }
}
