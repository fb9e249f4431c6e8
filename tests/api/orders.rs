//! Orders through real HTTP: the flash sale, all or nothing, idempotency, cancellation, SSE.
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, TestUser, assert_error, send};
use crate::on_both_backends;

async fn order(app: &TestApp, user: &TestUser, lines: Value) -> (StatusCode, Value) {
    app.place_order(user, json!({ "lines": lines })).await
}

async fn stock_of(app: &TestApp, item: i64) -> i64 {
    send(app.get(&format!("/api/v1/items/{item}"))).await.1["stock"]
        .as_i64()
        .unwrap()
}

async fn users(app: &TestApp, n: usize) -> Vec<TestUser> {
    let mut out = Vec::with_capacity(n);
    for _ in (0..n).step_by(16) {
        let left = (n - out.len()).min(16);
        out.extend(futures_util::future::join_all((0..left).map(|_| app.new_user())).await);
    }
    out
}

on_both_backends! {
    async fn a_flash_sale_sells_exactly_the_stock(app: TestApp) {
        const UNITS: i64 = 100;
        const USERS: usize = 200;
        const ATTEMPTS: usize = 2_000;
        let admin = app.admin().await;
        let item = app.create_item(&admin, "Flash item", 1_000, UNITS).await["itemId"].as_i64().unwrap();
        let buyers = users(&app, USERS).await;
        let burst = crate::helpers::BURST.acquire().await.unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for attempt in 0..ATTEMPTS {
            let client = app.client.clone();
            let url = format!("{}/api/v1/orders", app.base);
            let token = buyers[attempt % USERS].access.clone();
            tasks.spawn(async move {
                let response = client
                    .post(url)
                    .bearer_auth(token)
                    .json(&json!({ "lines": [{ "itemId": item, "quantity": 1 }] }))
                    .send()
                    .await
                    .unwrap();
                let status = response.status();
                let body: Value = response.json().await.unwrap();
                (status, body)
            });
        }
        let mut created = 0;
        let mut out_of_stock = 0;
        let mut other = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let (status, body) = joined.unwrap();
            match status {
                StatusCode::CREATED => {
                    assert_eq!(body["status"], "SUCCEEDED");
                    created += 1;
                }
                StatusCode::CONFLICT => {
                    assert_eq!(body["code"], "OUT_OF_STOCK");
                    out_of_stock += 1;
                }
                _ => other.push((status, body)),
            }
        }
        drop(burst);
        assert!(other.is_empty(), "{} unexpected answers: {:?}", other.len(), other.iter().take(3).map(|(s, b)| (s.as_u16(), b["code"].clone(), b["message"].clone())).collect::<Vec<_>>());
        assert_eq!(created, UNITS);
        assert_eq!(out_of_stock, ATTEMPTS as i64 - UNITS);
        assert_eq!(stock_of(&app, item).await, 0);
        let succeeded = app.count("SELECT COUNT(*) FROM orders o JOIN order_lines l ON l.order_id = o.id \
             WHERE o.status = 'SUCCEEDED' AND l.item_id = $1", item).await;
        assert_eq!(succeeded, UNITS);
        let sold = app.count("SELECT CAST(COALESCE(SUM(quantity), 0) AS BIGINT) FROM reservations \
             WHERE status = 'CONFIRMED' AND item_id = $1", item).await;
        assert_eq!(sold, UNITS);
        // No refusal was recorded: the only orders are the ones that sold.
        let orders = app.count("SELECT COUNT(*) FROM orders o JOIN order_lines l ON l.order_id = o.id \
             WHERE l.item_id = $1", item).await;
        assert_eq!(orders, UNITS, "a refusal that changed nothing records nothing");
        // Once sold out, a refusal names the line and has no order id.
        let late = order(&app, &buyers[0], json!([{ "itemId": item, "quantity": 1 }])).await;
        assert_error(&late, 409, "OUT_OF_STOCK");
        assert_eq!(late.1["details"]["lines"][0]["status"], "OUT_OF_STOCK", "{}", late.1);
        assert_eq!(late.1["details"]["lines"][0]["itemId"], item, "{}", late.1);
        assert!(late.1["details"].get("orderId").is_none(), "{}", late.1);
    }

    async fn an_order_is_all_or_nothing(app: TestApp) {
        let admin = app.admin().await;
        let plenty = app.create_item(&admin, "Plenty", 500, 10).await["itemId"].as_i64().unwrap();
        let scarce = app.create_item(&admin, "Scarce", 900, 1).await["itemId"].as_i64().unwrap();
        let buyer = app.new_user().await;

        let refused = order(&app, &buyer, json!([
            { "itemId": plenty, "quantity": 3 }, { "itemId": scarce, "quantity": 2 }
        ])).await;
        assert_error(&refused, 409, "OUT_OF_STOCK");
        let details = &refused.1["details"];
        assert!(details.get("orderId").is_none(), "nothing was recorded: {details}");
        assert_eq!(details["lines"][0]["status"], "RELEASED");
        assert_eq!(details["lines"][1]["status"], "OUT_OF_STOCK");
        assert_eq!(details["lines"][1]["quantity"], 2);
        assert_eq!(stock_of(&app, plenty).await, 10);
        assert_eq!(stock_of(&app, scarce).await, 1);

        let unknown = order(&app, &buyer, json!([
            { "itemId": plenty, "quantity": 3 }, { "itemId": 999_999, "quantity": 1 }
        ])).await;
        assert_error(&unknown, 404, "NOT_FOUND");
        assert_eq!(unknown.1["details"]["lines"][1]["status"], "ITEM_NOT_FOUND");
        assert!(unknown.1["details"].get("orderId").is_none());
        assert_eq!(stock_of(&app, plenty).await, 10);
        // Neither refusal wrote anything.
        let (_, mine) = send(app.get("/api/v1/orders").bearer_auth(&buyer.access)).await;
        assert_eq!(mine["items"], json!([]));

        let (status, ok) = order(&app, &buyer, json!([
            { "itemId": plenty, "quantity": 3 }, { "itemId": scarce, "quantity": 1 }
        ])).await;
        assert_eq!(status, StatusCode::CREATED, "{ok}");
        assert_eq!(ok["status"], "SUCCEEDED");
        assert_eq!(ok["totalPrice"], 3 * 500 + 900);
        assert_eq!(ok["lines"][0]["unitPrice"], 500);
        assert_eq!(ok["lines"][1]["status"], "RESERVED");
        assert_eq!(stock_of(&app, plenty).await, 7);
        assert_eq!(stock_of(&app, scarce).await, 0);
    }

    async fn one_idempotency_key_makes_one_order(app: TestApp) {
        let admin = app.admin().await;
        let item = app.create_item(&admin, "Once", 100, 10).await["itemId"].as_i64().unwrap();
        let buyer = app.new_user().await;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let request = app.post("/api/v1/orders")
                .bearer_auth(&buyer.access)
                .header("Idempotency-Key", "buy-once-123")
                .json(&json!({ "lines": [{ "itemId": item, "quantity": 2 }] }));
            tasks.spawn(async move { send(request).await });
        }
        let mut ids = std::collections::HashSet::new();
        while let Some(joined) = tasks.join_next().await {
            let (status, body) = joined.unwrap();
            assert_eq!(status, StatusCode::CREATED, "{body}");
            ids.insert(body["orderId"].as_i64().unwrap());
        }
        assert_eq!(ids.len(), 1, "every answer is the same order");
        assert_eq!(stock_of(&app, item).await, 8);
        let (_, mine) = send(app.get("/api/v1/orders").bearer_auth(&buyer.access)).await;
        assert_eq!(mine["items"].as_array().unwrap().len(), 1);

        let reused = send(app.post("/api/v1/orders")
            .bearer_auth(&buyer.access)
            .header("Idempotency-Key", "buy-once-123")
            .json(&json!({ "lines": [{ "itemId": item, "quantity": 3 }] }))).await;
        assert_error(&reused, 422, "IDEMPOTENCY_KEY_REUSED");
        // The same key from another member is another order.
        let other = app.new_user().await;
        let theirs = send(app.post("/api/v1/orders")
            .bearer_auth(&other.access)
            .header("Idempotency-Key", "buy-once-123")
            .json(&json!({ "lines": [{ "itemId": item, "quantity": 2 }] }))).await;
        assert_eq!(theirs.0, StatusCode::CREATED);
        assert!(!ids.contains(&theirs.1["orderId"].as_i64().unwrap()));
        assert_eq!(stock_of(&app, item).await, 6);
    }

    async fn cancel_returns_stock_once_and_only_for_the_owner(app: TestApp) {
        let admin = app.admin().await;
        let item = app.create_item(&admin, "Returnable", 100, 5).await["itemId"].as_i64().unwrap();
        let buyer = app.new_user().await;
        let stranger = app.new_user().await;
        let (status, placed) = order(&app, &buyer, json!([{ "itemId": item, "quantity": 4 }])).await;
        assert_eq!(status, StatusCode::CREATED);
        let id = placed["orderId"].as_i64().unwrap();
        assert_eq!(stock_of(&app, item).await, 1);

        let path = format!("/api/v1/orders/{id}");
        // Another member's order answers exactly like a missing one.
        let missing = send(app.get("/api/v1/orders/999999999").bearer_auth(&stranger.access)).await;
        assert_error(&missing, 404, "NOT_FOUND");
        assert_eq!(send(app.get(&path).bearer_auth(&stranger.access)).await, missing);
        assert_error(&send(app.post(&format!("{path}/cancel")).bearer_auth(&stranger.access)).await, 404, "NOT_FOUND");
        assert_eq!(stock_of(&app, item).await, 1);

        let first = send(app.post(&format!("{path}/cancel")).bearer_auth(&buyer.access)).await;
        assert_eq!(first.0, StatusCode::OK, "{}", first.1);
        assert_eq!(first.1["status"], "CANCELLED");
        assert_eq!(stock_of(&app, item).await, 5);
        let second = send(app.post(&format!("{path}/cancel")).bearer_auth(&buyer.access)).await;
        assert_eq!(second.0, StatusCode::OK);
        assert_eq!(second.1["status"], "CANCELLED");
        assert_eq!(stock_of(&app, item).await, 5);
        // The returned units sell again.
        let (status, _) = order(&app, &stranger, json!([{ "itemId": item, "quantity": 5 }])).await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(stock_of(&app, item).await, 0);
        let by_admin = send(app.get(&path).bearer_auth(&admin.access)).await;
        assert_eq!(by_admin.1["status"], "CANCELLED");
    }

    async fn order_events_stream_ends_at_a_final_status(app: TestApp) {
        let admin = app.admin().await;
        let item = app.create_item(&admin, "Streamed", 100, 5).await["itemId"].as_i64().unwrap();
        let buyer = app.new_user().await;
        let (_, placed) = order(&app, &buyer, json!([{ "itemId": item, "quantity": 1 }])).await;
        let id = placed["orderId"].as_i64().unwrap();
        let response = app.get(&format!("/api/v1/orders/{id}/events")).bearer_auth(&buyer.access).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
        // The stream closes by itself at SUCCEEDED.
        let text = tokio::time::timeout(std::time::Duration::from_secs(10), response.text()).await.unwrap().unwrap();
        assert!(text.contains("event: status"), "{text}");
        assert!(text.contains(r#""status":"SUCCEEDED""#), "{text}");
        let other = app.new_user().await;
        assert_error(&send(app.get(&format!("/api/v1/orders/{id}/events")).bearer_auth(&other.access)).await, 404, "NOT_FOUND");
    }

    async fn my_orders_come_newest_first_with_their_own_lines(app: TestApp) {
        let admin = app.admin().await;
        let a = app.create_item(&admin, "A", 10, 50).await["itemId"].as_i64().unwrap();
        let b = app.create_item(&admin, "B", 20, 50).await["itemId"].as_i64().unwrap();
        let buyer = app.new_user().await;
        let other = app.new_user().await;
        let mut placed = Vec::new();
        for lines in [
            json!([{ "itemId": a, "quantity": 1 }]),
            json!([{ "itemId": a, "quantity": 2 }, { "itemId": b, "quantity": 3 }]),
            json!([{ "itemId": b, "quantity": 4 }]),
        ] {
            let (status, body) = order(&app, &buyer, lines).await;
            assert_eq!(status, StatusCode::CREATED);
            placed.push(body);
            // Someone else's order in between must not show up or lend its lines.
            assert_eq!(order(&app, &other, json!([{ "itemId": a, "quantity": 1 }])).await.0, StatusCode::CREATED);
        }
        let (status, first) = send(app.get("/api/v1/orders?limit=2").bearer_auth(&buyer.access)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(first["items"], json!([placed[2], placed[1]]));
        let cursor = first["nextCursor"].as_str().unwrap();
        let (_, second) = send(app.get(&format!("/api/v1/orders?limit=2&cursor={cursor}")).bearer_auth(&buyer.access)).await;
        assert_eq!(second["items"], json!([placed[0]]));
        assert!(second["nextCursor"].is_null());
    }

    async fn bad_orders_are_refused_without_side_effects(app: TestApp) {
        let admin = app.admin().await;
        let item = app.create_item(&admin, "Guarded", 100, 5).await["itemId"].as_i64().unwrap();
        let buyer = app.new_user().await;
        for (lines, what) in [
            (json!([]), "no lines"),
            (json!([{ "itemId": item, "quantity": 0 }]), "zero quantity"),
            (json!([{ "itemId": item, "quantity": 1001 }]), "quantity above 1000"),
            (json!([{ "itemId": -4, "quantity": 1 }]), "negative item"),
            (json!([{ "itemId": item, "quantity": 1 }, { "itemId": item, "quantity": 1 }]), "same item twice"),
            (json!((0..51).map(|i| json!({ "itemId": i + 1, "quantity": 1 })).collect::<Vec<_>>()), "51 lines"),
        ] {
            let answer = order(&app, &buyer, lines).await;
            assert_eq!(answer.0, StatusCode::BAD_REQUEST, "{what}: {}", answer.1);
            assert_eq!(answer.1["code"], "VALIDATION_FAILED", "{what}");
        }
        let bad_key = send(app.post("/api/v1/orders").bearer_auth(&buyer.access)
            .header("Idempotency-Key", "has space")
            .json(&json!({ "lines": [{ "itemId": item, "quantity": 1 }] }))).await;
        assert_error(&bad_key, 400, "VALIDATION_FAILED");
        // Coupons come with their own issue; until then an order naming one is refused.
        let with_coupon = send(app.post("/api/v1/orders").bearer_auth(&buyer.access)
            .json(&json!({ "lines": [{ "itemId": item, "quantity": 1 }], "couponId": 1 }))).await;
        assert_error(&with_coupon, 404, "NOT_FOUND");
        let anonymous = send(app.post("/api/v1/orders").json(&json!({ "lines": [{ "itemId": item, "quantity": 1 }] }))).await;
        assert_error(&anonymous, 401, "UNAUTHENTICATED");
        assert_eq!(stock_of(&app, item).await, 5);
        let (_, mine) = send(app.get("/api/v1/orders").bearer_auth(&buyer.access)).await;
        assert_eq!(mine["items"], json!([]));
    }

    async fn admin_sees_stock_actors_and_circuits(app: TestApp) {
        let admin = app.admin().await;
        let item = app.create_item(&admin, "Watched", 100, 50).await["itemId"].as_i64().unwrap();
        let buyer = app.new_user().await;
        assert_eq!(order(&app, &buyer, json!([{ "itemId": item, "quantity": 2 }])).await.0, StatusCode::CREATED);
        let (status, actors) = send(app.get("/api/v1/admin/actors").bearer_auth(&admin.access)).await;
        assert_eq!(status, StatusCode::OK);
        let stock = actors["actors"].as_array().unwrap().iter()
            .find(|a| a["kind"] == "stock" && a["key"] == item).cloned().unwrap();
        assert_eq!(stock["allotmentLeft"], 48);
        assert_eq!(stock["holds"], 1);
        assert_eq!(stock["soldOut"], false);
        assert!(stock["lastCheckOutAt"].as_i64().unwrap() > 0);
        assert_eq!(stock["lastCheckOut"], 50);
        assert!(actors["writer"]["commits"].as_u64().unwrap() >= 1, "{actors}");
        let (status, circuits) = send(app.get("/api/v1/admin/circuits").bearer_auth(&admin.access)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(circuits["circuits"][0]["dependency"], "database");
        assert_eq!(circuits["circuits"][0]["state"], "closed");
        assert_error(&send(app.get("/api/v1/admin/actors").bearer_auth(&buyer.access)).await, 403, "FORBIDDEN");
        assert_error(&send(app.get("/api/v1/admin/circuits").bearer_auth(&buyer.access)).await, 403, "FORBIDDEN");
        // What the actor holds is still for sale: the item shows it.
        assert_eq!(stock_of(&app, item).await, 48);
    }
}

on_both_backends! {
    async fn a_repeated_idempotency_key_header_is_refused_and_writes_nothing(app: TestApp) {
        let admin = app.admin().await;
        let buyer = app.new_user().await;
        let item = app.create_item(&admin, "Twice keyed", 10, 5).await["itemId"].as_i64().unwrap();
        let answer = send(
            app.post("/api/v1/orders")
                .bearer_auth(&buyer.access)
                .header("Idempotency-Key", "first")
                .header("Idempotency-Key", "second")
                .json(&json!({"lines": [{"itemId": item, "quantity": 1}]})),
        )
        .await;
        assert_error(&answer, 400, "VALIDATION_FAILED");
        assert!(answer.1["message"].as_str().unwrap().contains("Idempotency-Key"), "{}", answer.1);
        assert_eq!(app.count("SELECT COUNT(*) FROM orders WHERE user_id = $1", buyer.user_id).await, 0);
        let (_, coupon) = send(app.post("/api/v1/coupons").bearer_auth(&admin.access)
            .json(&json!({"name": "Keyed twice", "discountRate": 5, "quantity": 3}))).await;
        let coupon = coupon["couponId"].as_i64().unwrap();
        let answer = send(
            app.post(&format!("/api/v1/coupons/{coupon}/issue"))
                .bearer_auth(&buyer.access)
                .header("Idempotency-Key", "a")
                .header("Idempotency-Key", "b"),
        )
        .await;
        assert_error(&answer, 400, "VALIDATION_FAILED");
        assert_eq!(app.count("SELECT COUNT(*) FROM coupon_issues WHERE user_id = $1", buyer.user_id).await, 0);
    }
}
