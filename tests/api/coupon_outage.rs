//! A Redis outage, through a TCP forwarder the test cuts: the Redis breaker opens, coupon
//! issues get 503 fast, and when Redis is back nothing was issued twice or lost.

use std::collections::HashSet;
use std::time::Duration;

use redis::AsyncCommands;
use reqwest::StatusCode;
use serde_json::json;

use crate::coupons::{create_coupon, issue, stored_issues};
use crate::helpers::{
    Backend, TcpCut, TestApp, TestDatabase, assert_error, redis_connection, redis_settings_for,
    redis_url, send, setting,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_breaker_opens_fails_fast_and_nothing_is_issued_twice() {
    const QUANTITY: i64 = 30;
    let server = redis_url();
    let host_port = server
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let mut forwarder = TcpCut::start(&host_port).await;
    let mut db = TestDatabase::create(Backend::Sqlite).await;
    // A short call timeout, so a hung call fails well inside the test.
    db.settings = redis_settings_for(&format!("redis://{}/9", forwarder.addr), 1_000);
    let prefix = setting(&db, "SURGE_REDIS_KEY_PREFIX").unwrap();
    let app = TestApp::spawn_on(db).await;
    let admin = app.admin().await;
    let coupon = create_coupon(
        &app,
        &admin,
        json!({
            "name": "Outage", "discountRate": 10, "quantity": QUANTITY
        }),
    )
    .await["couponId"]
        .as_i64()
        .unwrap();
    let members = app.members(60).await;
    let mut issued = HashSet::new();
    for user in &members[..10] {
        let (status, body) = issue(&app, user, coupon).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        issued.insert(user.user_id);
    }

    forwarder.cut().await;
    // The first failures open the breaker; from then on the breaker itself refuses (without
    // trying Redis): 503 "busy".
    let mut fast = 0;
    for user in &members[10..40] {
        let answer = issue(&app, user, coupon).await;
        assert_error(&answer, 503, "OVERLOADED");
        if answer.1["message"] == "coupons are busy; try again shortly" {
            fast += 1;
        }
    }
    assert!(
        fast >= 20,
        "only {fast} of 30 refusals came from the breaker"
    );
    let (_, circuits) = send(app.get("/api/v1/admin/circuits").bearer_auth(&admin.access)).await;
    let redis_circuit = circuits["circuits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["dependency"] == "redis")
        .cloned()
        .unwrap();
    assert_eq!(redis_circuit["state"], "open", "{circuits}");

    forwarder.restore().await;
    // Back by itself: the breaker lets a trial through after it has been open a while.
    let mut recovered = false;
    for _ in 0..60 {
        let (status, _) = issue(&app, &members[40], coupon).await;
        if status == StatusCode::CREATED {
            issued.insert(members[40].user_id);
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(recovered, "coupons never came back after Redis did");
    // Everyone asks (again); the ones issued before keep theirs, nobody gets two.
    for user in &members {
        let (status, body) = issue(&app, user, coupon).await;
        match status {
            StatusCode::CREATED => assert!(issued.insert(user.user_id), "issued twice: {body}"),
            _ => assert!(
                body["code"] == "ALREADY_ISSUED" || body["code"] == "SOLD_OUT",
                "{status} {body}"
            ),
        }
    }
    assert_eq!(issued.len() as i64, QUANTITY);
    assert_eq!(stored_issues(&app, coupon, QUANTITY).await, QUANTITY);
    let mut redis = redis_connection().await;
    let remaining: i64 = redis
        .hget(format!("{prefix}:coupon:{coupon}"), "remaining")
        .await
        .unwrap();
    assert_eq!(remaining, 0, "the database's count equals Redis's");
}
