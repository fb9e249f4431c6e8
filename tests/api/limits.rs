//! Rate limits (issue 13 item 4): guessing passwords, making accounts, placing orders and
//! taking coupons are limited per address, per account and per member; a refusal is 429
//! `RATE_LIMITED` with `Retry-After` and writes nothing. Limits are in the node's memory, so
//! one back end is enough.

use std::net::IpAddr;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::coupons::{create_coupon, issue};
use crate::helpers::{Backend, TestApp, assert_error, created_else, send};

/// A client whose connections come from `ip` (any 127.0.0.0/8 address reaches the node).
fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

fn retry_after(app_answer: &reqwest::Response) -> u64 {
    app_answer
        .headers()
        .get("retry-after")
        .expect("a 429 says when to come back")
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

async fn login_from(
    client: &reqwest::Client,
    app: &TestApp,
    login_id: &str,
    password: &str,
) -> reqwest::Response {
    client
        .post(format!("{}/api/v1/auth/login", app.base))
        .json(&json!({ "loginId": login_id, "password": password }))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn failed_logins_make_the_account_back_off_whatever_the_address() {
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        &[
            ("SURGE_RATE_LIMITS", "on"),
            ("SURGE_LOGIN_FAILURES_BEFORE_BACKOFF", "3"),
        ],
    )
    .await;
    let victim = app.new_user().await;
    let bystander = app.new_user().await;
    let attacker = client_from("127.0.0.2");
    for _ in 0..3 {
        let answer = login_from(&attacker, &app, &victim.login_id, "wrong-guess-1").await;
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
    }
    // The account now waits, even for the right password and from another address; the
    // answer says when to come back.
    let held = login_from(&app.client, &app, &victim.login_id, &victim.password).await;
    assert_eq!(held.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait = retry_after(&held);
    assert!(
        (1..=2).contains(&wait),
        "first back-off is about 1 s: {wait}"
    );
    let body: serde_json::Value = held.json().await.unwrap();
    assert_eq!(body["code"], "RATE_LIMITED", "{body}");
    // Another account is not held back.
    let (status, _) = app.login(&bystander.login_id, &bystander.password).await;
    assert_eq!(status, StatusCode::OK);
    // A made-up login id backs off like a real one: the limit is no oracle.
    for _ in 0..3 {
        let answer = login_from(&attacker, &app, "nobody_here", "wrong-guess-1").await;
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
    }
    let answer = login_from(&attacker, &app, "nobody_here", "wrong-guess-1").await;
    assert_eq!(answer.status(), StatusCode::TOO_MANY_REQUESTS);
    // After the wait the right password works, and a success ends the streak.
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let (status, body) = app.login(&victim.login_id, &victim.password).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let answer = login_from(&attacker, &app, &victim.login_id, "wrong-guess-2").await;
    assert_eq!(
        answer.status(),
        StatusCode::UNAUTHORIZED,
        "the streak starts over"
    );
    app.stop().await;
}

#[tokio::test]
async fn sign_ups_and_logins_are_limited_per_address() {
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        &[
            ("SURGE_RATE_LIMITS", "on"),
            ("SURGE_LIMIT_SIGNUPS_PER_IP", "3/h"),
            ("SURGE_LIMIT_LOGIN_PER_IP", "4/h"),
        ],
    )
    .await;
    let farm = client_from("127.0.0.3");
    let sign_up = |login: String| {
        let farm = farm.clone();
        let url = format!("{}/api/v1/users", app.base);
        async move {
            farm.post(url)
                .header("x-forwarded-for", format!("198.51.100.{}", login.len()))
                .json(&json!({"loginId": login, "password": "farm-password-1", "name": "Farm"}))
                .send()
                .await
                .unwrap()
        }
    };
    for i in 0..3 {
        let answer = sign_up(format!("farm_a{i}")).await;
        assert_eq!(answer.status(), StatusCode::CREATED);
    }
    // The fourth from the same address is refused before anything is written; a forged
    // X-Forwarded-For does not help (the node was not told to trust it).
    let refused = sign_up("farm_a3_longer".to_owned()).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(retry_after(&refused) >= 1);
    let (status, _) = app.login("farm_a3_longer", "farm-password-1").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "no account was made");
    // Another address signs up.
    let answer = client_from("127.0.0.4")
        .post(format!("{}/api/v1/users", app.base))
        .json(&json!({"loginId": "elsewhere", "password": "farm-password-1", "name": "B"}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::CREATED);

    // Credential stuffing: many accounts, one address.
    let stuffer = client_from("127.0.0.5");
    for i in 0..4 {
        let answer = login_from(&stuffer, &app, &format!("farm_a{i}"), "guess-123456").await;
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
    }
    let answer = login_from(&stuffer, &app, "farm_a0", "farm-password-1").await;
    assert_eq!(answer.status(), StatusCode::TOO_MANY_REQUESTS);
    let (status, _) = app.login("farm_a0", "farm-password-1").await;
    assert_eq!(status, StatusCode::OK, "the account itself is not locked");
    app.stop().await;
}

#[tokio::test]
async fn behind_a_balancer_the_forwarded_address_is_the_client() {
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        &[
            ("SURGE_RATE_LIMITS", "on"),
            ("SURGE_LIMIT_SIGNUPS_PER_IP", "1/h"),
            ("SURGE_CLIENT_IP_HEADER", "x-forwarded-for"),
        ],
    )
    .await;
    let sign_up = |login: &str, forwarded: &str| {
        app.post("/api/v1/users")
            .header("x-forwarded-for", forwarded)
            .json(&json!({"loginId": login, "password": "proxy-password-1", "name": "P"}))
    };
    // The balancer appends the client's address last; what the client wrote before it is
    // ignored.
    let (status, _) = send(sign_up("behind_1", "203.0.113.9, 192.0.2.1")).await;
    assert_eq!(status, StatusCode::CREATED);
    let answer = send(sign_up("behind_2", "203.0.113.10, 192.0.2.1")).await;
    assert_error(&answer, 429, "RATE_LIMITED");
    let (status, _) = send(sign_up("behind_3", "192.0.2.2")).await;
    assert_eq!(status, StatusCode::CREATED);
    app.stop().await;
}

#[tokio::test]
async fn orders_and_coupon_issues_are_limited_per_member_across_connections() {
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        &[
            ("SURGE_RATE_LIMITS", "on"),
            ("SURGE_LIMIT_ORDERS_PER_MEMBER", "3/h"),
            ("SURGE_LIMIT_ISSUES_PER_MEMBER", "2/h"),
        ],
    )
    .await;
    let admin = app.admin().await;
    let item = app.create_item(&admin, "Limited", 100, 1_000).await["itemId"]
        .as_i64()
        .unwrap();
    let hoarder = app.new_user().await;
    // Ten orders at once, each on its own connection: the limit is shared by the node, so
    // exactly three pass.
    let answers = app
        .orders_at_once(
            &hoarder,
            json!({"lines": [{"itemId": item, "quantity": 1}]}),
            10,
        )
        .await;
    assert_eq!(created_else(&answers, 429, "RATE_LIMITED"), 3);
    let rows = app
        .count(
            "SELECT COUNT(*) FROM orders WHERE user_id = $1",
            hoarder.user_id,
        )
        .await;
    assert_eq!(rows, 3, "a refused order wrote nothing");
    // Another member is not affected.
    let other = app.new_user().await;
    let (status, _) = app
        .place_order(&other, json!({"lines": [{"itemId": item, "quantity": 1}]}))
        .await;
    assert_eq!(status, StatusCode::CREATED);

    let first = create_coupon(
        &app,
        &admin,
        json!({"name": "A", "discountRate": 10, "quantity": 5}),
    )
    .await["couponId"]
        .as_i64()
        .unwrap();
    let second = create_coupon(
        &app,
        &admin,
        json!({"name": "B", "discountRate": 10, "quantity": 5}),
    )
    .await["couponId"]
        .as_i64()
        .unwrap();
    let third = create_coupon(
        &app,
        &admin,
        json!({"name": "C", "discountRate": 10, "quantity": 5}),
    )
    .await["couponId"]
        .as_i64()
        .unwrap();
    assert_eq!(issue(&app, &other, first).await.0, StatusCode::CREATED);
    assert_eq!(issue(&app, &other, second).await.0, StatusCode::CREATED);
    let answer = issue(&app, &other, third).await;
    assert_error(&answer, 429, "RATE_LIMITED");
    let (_, coupon) = send(app.get(&format!("/api/v1/coupons/{third}"))).await;
    assert_eq!(coupon["remaining"], 5, "the refused issue took nothing");
    app.stop().await;
}
