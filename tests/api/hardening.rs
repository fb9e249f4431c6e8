//! The public edge (issue 13): unknown fields, plain error messages, signed cursors, no
//! existence oracle, coupons hidden before they open.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_error, poll_until, send};
use crate::on_both_backends;

on_both_backends! {
    async fn unknown_fields_are_refused_naming_the_field_and_change_nothing(app: TestApp) {
        // A sign-up that tries to choose its own role.
        let login = format!("r{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let answer = send(app.post("/api/v1/users").json(&json!({
            "loginId": login, "password": "password-123", "name": "Mallory", "role": "ADMIN"
        })))
        .await;
        assert_error(&answer, 400, "VALIDATION_FAILED");
        assert_eq!(answer.1["details"]["field"], "role", "{}", answer.1);
        assert!(answer.1["message"].as_str().unwrap().contains("`role` is not a field"), "{}", answer.1);
        let (status, _) = app.login(&login, "password-123").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "nothing was created");

        let admin = app.admin().await;
        let item = app.create_item(&admin, "Strict", 100, 5).await["itemId"].as_i64().unwrap();
        let buyer = app.new_user().await;
        let answer = app
            .place_order(&buyer, json!({"lines": [{"itemId": item, "qty": 1}]}))
            .await;
        assert_error(&answer, 400, "VALIDATION_FAILED");
        assert_eq!(answer.1["details"]["field"], "lines[0].qty", "{}", answer.1);
        let restock = send(
            app.post(&format!("/api/v1/items/{item}/restock"))
                .bearer_auth(&admin.access)
                .json(&json!({"quantity": 5, "price": 1})),
        )
        .await;
        assert_error(&restock, 400, "VALIDATION_FAILED");
        assert_eq!(restock.1["details"]["field"], "price");
        let (_, item_now) = send(app.get(&format!("/api/v1/items/{item}"))).await;
        assert_eq!(item_now["stock"], 5, "a refused restock added nothing");
    }

    async fn a_wrong_type_is_explained_without_rust_type_names(app: TestApp) {
        let buyer = app.new_user().await;
        let answer = app
            .place_order(&buyer, json!({"lines": [{"itemId": 1, "quantity": "two"}]}))
            .await;
        assert_error(&answer, 400, "VALIDATION_FAILED");
        let message = answer.1["message"].as_str().unwrap();
        assert_eq!(answer.1["details"]["field"], "lines[0].quantity", "{message}");
        assert!(message.contains("whole number"), "{message}");
        for rust in ["i64", "u64", "i32", "struct", "Vec<"] {
            assert!(!message.contains(rust), "{message}");
        }
        let missing = send(app.post("/api/v1/auth/login").json(&json!({"loginId": "someone"}))).await;
        assert_error(&missing, 400, "VALIDATION_FAILED");
        assert_eq!(missing.1["details"]["field"], "password", "{}", missing.1);
    }

    async fn a_forged_cursor_is_refused_and_a_genuine_one_pages_on(app: TestApp) {
        let admin = app.admin().await;
        let item = app.create_item(&admin, "Paged", 100, 10).await["itemId"].as_i64().unwrap();
        let buyer = app.new_user().await;
        for _ in 0..3 {
            let (status, _) = app
                .place_order(&buyer, json!({"lines": [{"itemId": item, "quantity": 1}]}))
                .await;
            assert_eq!(status, StatusCode::CREATED);
        }
        let (status, first) = send(app.get("/api/v1/orders?limit=1").bearer_auth(&buyer.access)).await;
        assert_eq!(status, StatusCode::OK);
        let cursor = first["nextCursor"].as_str().unwrap().to_owned();
        let (status, second) = send(
            app.get(&format!("/api/v1/orders?limit=1&cursor={cursor}"))
                .bearer_auth(&buyer.access),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{second}");
        assert_ne!(second["items"][0]["orderId"], first["items"][0]["orderId"]);
        // The old, unsigned form and an edited payload are refused.
        use base64::Engine as _;
        let unsigned = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("order:999999");
        for forged in [unsigned.clone(), format!("{unsigned}.{}", cursor.split_once('.').unwrap().1)] {
            let answer = send(
                app.get(&format!("/api/v1/orders?limit=1&cursor={forged}"))
                    .bearer_auth(&buyer.access),
            )
            .await;
            assert_error(&answer, 400, "VALIDATION_FAILED");
            assert_eq!(answer.1["details"]["field"], "cursor");
        }
        let items = send(app.get(&format!("/api/v1/items?limit=1&cursor={unsigned}"))).await;
        assert_error(&items, 400, "VALIDATION_FAILED");
    }

    async fn a_coupon_is_hidden_from_everyone_but_admins_until_it_opens(app: TestApp) {
        let admin = app.admin().await;
        let (status, coupon) = send(app.post("/api/v1/coupons").bearer_auth(&admin.access).json(&json!({
            "name": format!("Tomorrow {}", uuid::Uuid::new_v4().simple()),
            "discountRate": 20,
            "quantity": 10,
            "opensAt": "2099-01-01T00:00:00Z",
        })))
        .await;
        assert_eq!(status, StatusCode::CREATED, "{coupon}");
        let id = coupon["couponId"].as_i64().unwrap();
        let path = format!("/api/v1/coupons/{id}");
        let missing = send(app.get("/api/v1/coupons/999999999")).await;
        assert_error(&missing, 404, "NOT_FOUND");
        assert_eq!(send(app.get(&path)).await, missing, "anonymous");
        let buyer = app.new_user().await;
        assert_eq!(send(app.get(&path).bearer_auth(&buyer.access)).await, missing, "a member");
        let (status, seen): (StatusCode, Value) = send(app.get(&path).bearer_auth(&admin.access)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(seen["couponId"], id);
    }

    async fn prices_stay_below_what_javascript_reads_exactly(app: TestApp) {
        let admin = app.admin().await;
        let too_dear = send(app.post("/api/v1/items").bearer_auth(&admin.access).json(&json!({
            "name": "Too dear", "price": 100_000_000_001_i64, "stock": 1
        })))
        .await;
        assert_error(&too_dear, 400, "VALIDATION_FAILED");
        assert_eq!(too_dear.1["details"]["field"], "price");
        // The dearest item at the largest quantity: its total is exact in a double.
        let item = app.create_item(&admin, "Dearest", 100_000_000_000, 1_000).await["itemId"].as_i64().unwrap();
        let buyer = app.new_user().await;
        let (status, order) = app
            .place_order(&buyer, json!({"lines": [{"itemId": item, "quantity": 1000}]}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{order}");
        let total = order["totalPrice"].as_i64().unwrap();
        assert_eq!(total, 100_000_000_000_000);
        assert!(total < (1_i64 << 53));
        #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
        let through_a_double = total as f64 as i64;
        assert_eq!(through_a_double, total);
    }

    async fn sign_up_refuses_look_alike_ids_common_passwords_and_hidden_characters(app: TestApp) {
        let (status, _) = app.sign_up("carol_k", "a long passphrase", "Carol").await;
        assert_eq!(status, StatusCode::CREATED);
        // The same id in other case is the same id.
        assert_error(&app.sign_up("CAROL_K", "a long passphrase", "Carol").await, 409, "DUPLICATE_LOGIN_ID");
        assert_error(&app.sign_up("Carol_K", "a long passphrase", "Carol").await, 409, "DUPLICATE_LOGIN_ID");
        for (login, password, name, field) in [
            ("dave_k", "password1", "Dave", "password"),
            ("dave_k", "Qwertyuiop", "Dave", "password"),
            ("dave_k", "my-dave_k-secret", "Dave", "password"),
            ("dave_k", "pass\u{202E}word-xyz", "Dave", "password"),
            ("dave_k", "a long passphrase", "Da\u{202E}ve", "name"),
            ("dave_k", "a long passphrase", "\u{200B}Dave", "name"),
        ] {
            let answer = app.sign_up(login, password, name).await;
            assert_error(&answer, 400, "VALIDATION_FAILED");
            assert_eq!(answer.1["details"]["field"], field, "{password:?} {name:?}: {}", answer.1);
        }
        let (status, _) = app.login("dave_k", "a long passphrase").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "no refused sign-up created a member");
    }

    async fn a_coupon_for_established_accounts_refuses_new_ones(app: TestApp) {
        let admin = app.admin().await;
        let create = |name: String, age: i64| {
            app.post("/api/v1/coupons").bearer_auth(&admin.access).json(&json!({
                "name": name, "discountRate": 10, "quantity": 5, "minAccountAgeSeconds": age
            }))
        };
        let (status, coupon) = send(create(format!("Loyal {}", uuid::Uuid::new_v4().simple()), 3_600)).await;
        assert_eq!(status, StatusCode::CREATED, "{coupon}");
        assert_eq!(coupon["minAccountAgeSeconds"], 3_600);
        let id = coupon["couponId"].as_i64().unwrap();
        let fresh = app.new_user().await;
        let refused = send(app.post(&format!("/api/v1/coupons/{id}/issue")).bearer_auth(&fresh.access)).await;
        assert_error(&refused, 403, "NOT_ELIGIBLE");
        let (_, after) = send(app.get(&format!("/api/v1/coupons/{id}"))).await;
        assert_eq!(after["remaining"], 5, "a refusal issues nothing");
        // One second old is old enough for a one-second rule.
        let (_, short) = send(create(format!("Short {}", uuid::Uuid::new_v4().simple()), 1)).await;
        let short = short["couponId"].as_i64().unwrap();
        let member = app.new_user().await;
        // Refused while younger than a second, issued once it is not.
        poll_until(std::time::Duration::from_secs(10), "the account to be a second old", || async {
            let answer = send(app.post(&format!("/api/v1/coupons/{short}/issue")).bearer_auth(&member.access)).await;
            if answer.0 == StatusCode::CREATED {
                Some(())
            } else {
                assert_error(&answer, 403, "NOT_ELIGIBLE");
                None
            }
        })
        .await;
        let bad = send(create("Negative".into(), -1)).await;
        assert_error(&bad, 400, "VALIDATION_FAILED");
        assert_eq!(bad.1["details"]["field"], "minAccountAgeSeconds");
    }

    async fn a_coupon_for_verified_members_refuses_the_others(app: TestApp) {
        let admin = app.admin().await;
        let (status, coupon) = send(app.post("/api/v1/coupons").bearer_auth(&admin.access).json(&json!({
            "name": format!("Verified {}", uuid::Uuid::new_v4().simple()),
            "discountRate": 10, "quantity": 5, "verifiedOnly": true
        })))
        .await;
        assert_eq!(status, StatusCode::CREATED, "{coupon}");
        assert_eq!(coupon["verifiedOnly"], true);
        let id = coupon["couponId"].as_i64().unwrap();
        let member = app.new_user().await;
        let issue = || send(app.post(&format!("/api/v1/coupons/{id}/issue")).bearer_auth(&member.access));
        assert_error(&issue().await, 403, "NOT_ELIGIBLE");
        // Only an ADMIN verifies; then the member is eligible.
        let path = format!("/api/v1/admin/users/{}/verify", member.user_id);
        assert_error(&send(app.post(&path).bearer_auth(&member.access)).await, 403, "FORBIDDEN");
        assert_error(&send(app.post("/api/v1/admin/users/999999999/verify").bearer_auth(&admin.access)).await, 404, "NOT_FOUND");
        let (status, verified) = send(app.post(&path).bearer_auth(&admin.access)).await;
        assert_eq!(status, StatusCode::OK, "{verified}");
        assert_eq!(verified["userId"], member.user_id);
        let (status, issued) = issue().await;
        assert_eq!(status, StatusCode::CREATED, "{issued}");
    }
}

/// The OpenAPI document lists, for every operation, the statuses any route of its kind can
/// answer, and names every operation once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_every_status_and_unique_operation_ids() {
    let app = TestApp::spawn(crate::helpers::Backend::Sqlite).await;
    let (status, doc) = send(app.get("/openapi.json")).await;
    assert_eq!(status, StatusCode::OK);
    let mut ids = std::collections::HashSet::new();
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            operations += 1;
            let id = operation["operationId"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            assert!(!id.is_empty(), "{method} {path} has no operationId");
            assert!(ids.insert(id.clone()), "operationId {id} twice");
            let answers = operation["responses"].as_object().unwrap();
            let has = |s: &str| answers.contains_key(s);
            if operation
                .get("security")
                .and_then(Value::as_array)
                .is_some_and(|s| !s.is_empty())
            {
                assert!(has("401"), "{method} {path} lacks 401");
            }
            if operation.get("requestBody").is_some() {
                for s in ["400", "413", "415"] {
                    assert!(has(s), "{method} {path} lacks {s}");
                }
            }
            if path.contains('{') {
                assert!(has("400"), "{method} {path} lacks 400");
            }
            if !path.starts_with("/health") {
                assert!(has("503"), "{method} {path} lacks 503");
            }
        }
    }
    assert!(operations >= 29, "{operations} operations");
}

/// A refresh by cookie from another site's page is refused before the token is spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_refresh_from_another_origin_is_refused() {
    use crate::helpers::Backend;
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        &[("SURGE_CORS_ORIGINS", "https://shop.example")],
    )
    .await;
    let user = app.new_user().await;
    let cookie = format!("refresh_token={}", user.refresh);
    let refresh = |origin: Option<&str>| {
        let mut request = app
            .post("/api/v1/auth/refresh")
            .header("cookie", cookie.clone());
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        send(request)
    };
    assert_error(
        &refresh(Some("https://evil.example")).await,
        403,
        "FORBIDDEN",
    );
    // The refused attempt spent nothing: a configured origin refreshes with the same cookie.
    let (status, body) = refresh(Some("https://shop.example")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["accessToken"].is_string());
}

/// CORS is off unless origins are configured, and then answers only those origins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_answers_only_the_configured_origins() {
    use crate::helpers::Backend;
    let preflight = |app: &TestApp, origin: &str| {
        app.request(reqwest::Method::OPTIONS, "/api/v1/orders")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type,idempotency-key",
            )
            .send()
    };
    let off = TestApp::spawn(Backend::Sqlite).await;
    let answer = preflight(&off, "https://shop.example").await.unwrap();
    assert!(
        answer
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    let plain = off
        .get("/health/live")
        .header("origin", "https://shop.example")
        .send()
        .await
        .unwrap();
    assert!(plain.headers().get("access-control-allow-origin").is_none());

    let on = TestApp::spawn_with(
        Backend::Sqlite,
        &[("SURGE_CORS_ORIGINS", "https://shop.example")],
    )
    .await;
    let allowed = preflight(&on, "https://shop.example").await.unwrap();
    assert!(allowed.status().is_success(), "{}", allowed.status());
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://shop.example"
    );
    assert_eq!(
        allowed.headers()["access-control-allow-credentials"],
        "true"
    );
    let methods = allowed.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(methods.contains("POST"), "{methods}");
    let other = preflight(&on, "https://evil.example").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
    let read = on
        .get("/health/live")
        .header("origin", "https://shop.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        read.headers()["access-control-allow-origin"],
        "https://shop.example"
    );
    let exposed = read.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(exposed.contains("x-surge-node"), "{exposed}");
}

/// A node on a fresh database pointed at a Redis prefix that holds another database's coupons
/// refuses to start, unless told to take it over; then its coupons start clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_keys_belong_to_one_database() {
    use crate::helpers::{Backend, TestDatabase, redis_settings};
    let shared = redis_settings();
    let with = |extra: &[(&'static str, String)]| {
        let mut settings = shared.clone();
        settings.extend_from_slice(extra);
        settings
    };
    // The first database fills coupon 1 under the prefix.
    let mut first_db = TestDatabase::create(Backend::Sqlite).await;
    first_db.settings = with(&[]);
    let first = TestApp::spawn_on(first_db).await;
    let admin = first.admin().await;
    let (status, coupon) = send(
        first
            .post("/api/v1/coupons")
            .bearer_auth(&admin.access)
            .json(&json!({
                "name": "Drop", "discountRate": 10, "quantity": 3
            })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{coupon}");
    let id = coupon["couponId"].as_i64().unwrap();
    for _ in 0..3 {
        let member = first.new_user().await;
        let (status, body) = send(
            first
                .post(&format!("/api/v1/coupons/{id}/issue"))
                .bearer_auth(&member.access),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    first.stop().await;

    // A fresh database, the same prefix: refused, and nothing under the prefix changed.
    let mut second_db = TestDatabase::create(Backend::Sqlite).await;
    second_db.settings = with(&[]);
    let refused = surge::Application::build(second_db.config()).await;
    let err = refused.expect_err("a node on another database must not start on this prefix");
    assert!(err.is_refusal(), "{err}");
    assert!(err.to_string().contains("SURGE_REDIS_TAKE_OVER"), "{err}");

    // Told to take it over: coupon 1 of the new database is its own, not sold out, no phantom
    // holders.
    second_db.settings = with(&[("SURGE_REDIS_TAKE_OVER", "true".into())]);
    let second = TestApp::spawn_on(second_db).await;
    let admin = second.admin().await;
    let (status, coupon) = send(
        second
            .post("/api/v1/coupons")
            .bearer_auth(&admin.access)
            .json(&json!({
                "name": "Fresh drop", "discountRate": 10, "quantity": 3
            })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{coupon}");
    assert_eq!(coupon["couponId"], id, "the new database reuses the id");
    for _ in 0..3 {
        let member = second.new_user().await;
        let (status, body) = send(
            second
                .post(&format!("/api/v1/coupons/{id}/issue"))
                .bearer_auth(&member.access),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let (_, read) = send(second.get(&format!("/api/v1/coupons/{id}"))).await;
    assert_eq!(read["remaining"], 0);
}
