//! Coupons through real HTTP, in embedded mode (SQLite, the actor is the authority) and in
//! Redis mode (PostgreSQL + the real Redis on 6379, database 9, a key prefix per test).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use redis::AsyncCommands;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    BURST, Backend, TestApp, TestDatabase, TestUser, assert_error, redis_connection,
    redis_settings, send, setting,
};

/// Which coupon store a test node runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// SQLite, no Redis.
    Embedded,
    /// PostgreSQL and Redis.
    Redis,
}

pub async fn spawn(store: Store) -> TestApp {
    match store {
        Store::Embedded => TestApp::spawn(Backend::Sqlite).await,
        Store::Redis => {
            let mut db = TestDatabase::create(Backend::Postgres).await;
            db.settings = redis_settings();
            TestApp::spawn_on(db).await
        }
    }
}

/// Runs a test body once per coupon store, each with a fresh node.
#[macro_export]
macro_rules! on_both_coupon_stores {
    ($(async fn $name:ident($app:ident: TestApp) $body:block)*) => {
        $(
            mod $name {
                #[allow(unused_imports)]
                use super::*;

                async fn run($app: TestApp) $body

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn embedded() {
                    run(spawn(Store::Embedded).await).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn redis() {
                    run(spawn(Store::Redis).await).await;
                }
            }
        )*
    };
}

pub async fn create_coupon(app: &TestApp, admin: &TestUser, body: Value) -> Value {
    let (status, coupon) = send(
        app.post("/api/v1/coupons")
            .bearer_auth(&admin.access)
            .json(&body),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{coupon}");
    coupon
}

pub async fn issue(app: &TestApp, user: &TestUser, coupon: i64) -> (StatusCode, Value) {
    send(
        app.post(&format!("/api/v1/coupons/{coupon}/issue"))
            .bearer_auth(&user.access),
    )
    .await
}

async fn queue_me(app: &TestApp, user: &TestUser, coupon: i64) -> Value {
    let (status, body) = send(
        app.get(&format!("/api/v1/coupons/{coupon}/queue/me"))
            .bearer_auth(&user.access),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// Rows of this coupon in the database, once the Redis stream has drained into it.
pub async fn stored_issues(app: &TestApp, coupon: i64, expected: i64) -> i64 {
    let sql = "SELECT COUNT(*) FROM coupon_issues WHERE coupon_id = $1";
    for _ in 0..200 {
        let n = app.count(sql, coupon).await;
        if n == expected {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.count(sql, coupon).await
}

fn prefix_of(app: &TestApp) -> Option<String> {
    setting(&app.db, "SURGE_REDIS_KEY_PREFIX")
}

/// The live count Redis holds for a coupon (Redis mode only).
pub async fn redis_remaining(app: &TestApp, coupon: i64) -> Option<i64> {
    let prefix = prefix_of(app)?;
    let mut redis = redis_connection().await;
    redis
        .hget(format!("{prefix}:coupon:{coupon}"), "remaining")
        .await
        .unwrap()
}

on_both_coupon_stores! {
    async fn a_coupon_rush_issues_exactly_the_quantity(app: TestApp) {
        const QUANTITY: i64 = 100;
        const USERS: usize = 1_000;
        const REQUESTS: usize = 5_000;
        let admin = app.admin().await;
        let coupon = create_coupon(&app, &admin, json!({
            "name": "Rush 10%", "discountRate": 10, "quantity": QUANTITY
        })).await["couponId"].as_i64().unwrap();
        let members = app.members(USERS).await;
        let by_id: HashMap<i64, &TestUser> = members.iter().map(|u| (u.user_id, u)).collect();
        let burst = BURST.acquire().await.unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..REQUESTS {
            let client = app.client.clone();
            let url = format!("{}/api/v1/coupons/{coupon}/issue", app.base);
            let user = &members[n % USERS];
            let (token, user_id) = (user.access.clone(), user.user_id);
            tasks.spawn(async move {
                let response = client.post(url).bearer_auth(token).send().await.unwrap();
                let status = response.status();
                let body: Value = response.json().await.unwrap();
                (user_id, status, body)
            });
        }
        let mut issued = HashSet::new();
        let mut answers: HashMap<String, usize> = HashMap::new();
        while let Some(joined) = tasks.join_next().await {
            let (user_id, status, body) = joined.unwrap();
            if status == StatusCode::CREATED {
                assert_eq!(body["userId"], user_id);
                assert_eq!(body["status"], "ISSUED");
                assert!(issued.insert(user_id), "user {user_id} was issued twice");
                *answers.entry("ISSUED".into()).or_default() += 1;
            } else {
                assert_eq!(status, StatusCode::CONFLICT, "{body}");
                let code = body["code"].as_str().unwrap().to_owned();
                assert!(code == "SOLD_OUT" || code == "ALREADY_ISSUED", "{body}");
                *answers.entry(code).or_default() += 1;
            }
        }
        drop(burst);
        assert_eq!(issued.len() as i64, QUANTITY, "{answers:?}");
        assert_eq!(stored_issues(&app, coupon, QUANTITY).await, QUANTITY);
        let (_, read) = send(app.get(&format!("/api/v1/coupons/{coupon}"))).await;
        assert_eq!(read["remaining"], 0, "{read}");
        if prefix_of(&app).is_some() {
            assert_eq!(redis_remaining(&app, coupon).await, Some(0));
        }
        // Every 201 is in the database under its member, and shows on their page.
        let holders = app.count(
            "SELECT COUNT(DISTINCT user_id) FROM coupon_issues WHERE coupon_id = $1", coupon).await;
        assert_eq!(holders, QUANTITY);
        let (_, actors) = send(app.get("/api/v1/admin/actors").bearer_auth(&admin.access)).await;
        let view = actors["actors"].as_array().unwrap().iter()
            .find(|a| a["kind"] == "coupon" && a["key"] == coupon).cloned().unwrap();
        assert!(view["lastBatchSize"].as_u64().unwrap() >= 1, "{view}");
        let winner = by_id[issued.iter().next().unwrap()];
        let (_, mine) = send(app.get("/api/v1/users/me/coupons").bearer_auth(&winner.access)).await;
        assert_eq!(mine["items"][0]["couponId"], coupon, "{mine}");
        assert_eq!(mine["items"][0]["status"], "UNUSED");
        assert_eq!(mine["items"][0]["discountRate"], 10.0);
    }

    async fn an_issue_is_replayed_for_its_key_and_refused_for_another_coupon(app: TestApp) {
        let admin = app.admin().await;
        let a = create_coupon(&app, &admin, json!({"name": "A", "discountRate": 5, "quantity": 3}))
            .await["couponId"].as_i64().unwrap();
        let b = create_coupon(&app, &admin, json!({"name": "B", "discountRate": 5, "quantity": 3}))
            .await["couponId"].as_i64().unwrap();
        let user = app.new_user().await;
        let with_key = |coupon: i64, key: &str| {
            app.post(&format!("/api/v1/coupons/{coupon}/issue"))
                .bearer_auth(&user.access)
                .header("Idempotency-Key", key.to_owned())
        };
        let first = send(with_key(a, "issue-key-1")).await;
        assert_eq!(first.0, StatusCode::CREATED, "{}", first.1);
        let again = send(with_key(a, "issue-key-1")).await;
        assert_eq!(again, first, "the retry replays the first answer");
        assert_error(&send(with_key(a, "issue-key-2")).await, 409, "ALREADY_ISSUED");
        assert_error(&issue(&app, &user, a).await, 409, "ALREADY_ISSUED");
        // The key is now bound to coupon A (in Redis mode, once the stream wrote it).
        stored_issues(&app, a, 1).await;
        assert_error(&send(with_key(b, "issue-key-1")).await, 422, "IDEMPOTENCY_KEY_REUSED");
        let (_, read) = send(app.get(&format!("/api/v1/coupons/{a}"))).await;
        assert_eq!(read["remaining"], 2, "{read}");
    }

    async fn coupons_refuse_bad_input_with_documented_codes(app: TestApp) {
        let admin = app.admin().await;
        let user = app.new_user().await;
        let create = |body: Value| {
            send(app.post("/api/v1/coupons").bearer_auth(&admin.access).json(&body))
        };
        for (body, field) in [
            (json!({"name": "x", "discountRate": 100.5, "quantity": 1}), "discountRate"),
            (json!({"name": "x", "discountRate": -1, "quantity": 1}), "discountRate"),
            (json!({"name": "x", "discountRate": 10.25, "quantity": 1}), "discountRate"),
            (json!({"name": "x", "discountRate": 10, "quantity": -1}), "quantity"),
            (json!({"name": "  ", "discountRate": 10, "quantity": 1}), "name"),
            (json!({"name": "x", "discountRate": 10, "quantity": 1, "opensAt": "soon"}), "opensAt"),
            (json!({"name": "x", "discountRate": 10, "quantity": 1, "itemId": 0}), "itemId"),
            (json!({"name": "x", "discountRate": 10, "quantity": 1,
                    "waitingRoom": {"admitPerSecond": 0}}), "waitingRoom.admitPerSecond"),
        ] {
            let answer = create(body.clone()).await;
            assert_error(&answer, 400, "VALIDATION_FAILED");
            assert_eq!(answer.1["details"]["field"], field, "{body}");
        }
        assert_error(&create(json!({"name": "x", "discountRate": "10", "quantity": 1})).await,
            400, "VALIDATION_FAILED");
        assert_error(&create(json!({"name": "x", "discountRate": 10, "quantity": 1, "itemId": 999}))
            .await, 404, "NOT_FOUND");
        let forbidden = send(app.post("/api/v1/coupons").bearer_auth(&user.access)
            .json(&json!({"name": "x", "discountRate": 10, "quantity": 1}))).await;
        assert_error(&forbidden, 403, "FORBIDDEN");
        create_coupon(&app, &admin, json!({"name": "Unique", "discountRate": 12.5, "quantity": 1})).await;
        assert_error(&create(json!({"name": "Unique", "discountRate": 1, "quantity": 1})).await,
            409, "DUPLICATE_COUPON_NAME");
        // Unknown coupons, and ids that cannot be ids.
        assert_error(&issue(&app, &user, 999).await, 404, "NOT_FOUND");
        assert_error(&send(app.get("/api/v1/coupons/999")).await, 404, "NOT_FOUND");
        assert_error(&send(app.get("/api/v1/coupons/0")).await, 404, "NOT_FOUND");
        assert_error(&send(app.get("/api/v1/coupons/abc")).await, 400, "VALIDATION_FAILED");
        assert_error(&send(app.post("/api/v1/coupons/1/issue")).await, 401, "UNAUTHENTICATED");
        // Not open yet: hidden from members (404, like a missing one), and nothing issued.
        let later = create_coupon(&app, &admin, json!({
            "name": "Tomorrow", "discountRate": 20, "quantity": 5, "opensAt": "2099-01-01T00:00:00Z"
        })).await;
        assert_eq!(later["opensAt"], "2099-01-01T00:00:00.000Z");
        let id = later["couponId"].as_i64().unwrap();
        let early = issue(&app, &user, id).await;
        assert_error(&early, 404, "NOT_FOUND");
        assert_error(&send(app.get(&format!("/api/v1/coupons/{id}"))).await, 404, "NOT_FOUND");
        let (_, read) = send(app.get(&format!("/api/v1/coupons/{id}")).bearer_auth(&admin.access)).await;
        assert_eq!(read["remaining"], 5);
        // A coupon of quantity 0 is sold out from the start.
        let none = create_coupon(&app, &admin, json!({"name": "Zero", "discountRate": 1, "quantity": 0}))
            .await["couponId"].as_i64().unwrap();
        assert_error(&issue(&app, &user, none).await, 409, "SOLD_OUT");
    }

    async fn a_waiting_room_admits_in_arrival_order(app: TestApp) {
        const QUEUED: usize = 12;
        let admin = app.admin().await;
        let coupon = create_coupon(&app, &admin, json!({
            "name": "Room", "discountRate": 30, "quantity": 8,
            "waitingRoom": {"admitPerSecond": 20}
        })).await["couponId"].as_i64().unwrap();
        let members = app.members(QUEUED).await;
        // One at a time, so arrival order is known.
        for (i, user) in members.iter().enumerate() {
            let (status, body) = issue(&app, user, coupon).await;
            assert_eq!(status, StatusCode::ACCEPTED, "{body}");
            assert_eq!(body["status"], "QUEUED");
            let position = body["position"].as_u64().unwrap();
            assert!(position <= i as u64 + 1, "position {position} for arrival {i}");
        }
        // Joining again keeps the place (or reports the outcome if already admitted).
        let again = issue(&app, &members[QUEUED - 1], coupon).await;
        assert!(again.0 == StatusCode::ACCEPTED || again.0 == StatusCode::CONFLICT, "{}", again.1);
        // Everyone is decided within a second or so at 20 per second.
        let mut statuses = Vec::new();
        for _ in 0..100 {
            statuses.clear();
            for user in &members {
                statuses.push(queue_me(&app, user, coupon).await["status"].as_str().unwrap().to_owned());
            }
            if statuses.iter().all(|s| s != "QUEUED") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let expected: Vec<&str> = (0..QUEUED).map(|i| if i < 8 { "ISSUED" } else { "SOLD_OUT" }).collect();
        assert_eq!(statuses, expected, "the first 8 arrivals get it, in order");
        assert_eq!(stored_issues(&app, coupon, 8).await, 8);
        // Issued in arrival order: issue times never go backwards along the queue.
        let mut last = String::new();
        for user in &members[..8] {
            let (_, mine) = send(app.get("/api/v1/users/me/coupons").bearer_auth(&user.access)).await;
            let at = mine["items"][0]["issuedAt"].as_str().unwrap().to_owned();
            assert!(at >= last, "{at} before {last}");
            last = at;
        }
        let late = app.new_user().await;
        assert_error(&issue(&app, &late, coupon).await, 409, "SOLD_OUT");
        assert_eq!(queue_me(&app, &late, coupon).await["status"], "SOLD_OUT");
    }

    async fn a_queued_member_sees_the_place_move_up(app: TestApp) {
        let admin = app.admin().await;
        let coupon = create_coupon(&app, &admin, json!({
            "name": "Slow room", "discountRate": 30, "quantity": 100,
            "waitingRoom": {"admitPerSecond": 2}
        })).await["couponId"].as_i64().unwrap();
        let members = app.members(6).await;
        for user in &members {
            assert_eq!(issue(&app, user, coupon).await.0, StatusCode::ACCEPTED);
        }
        let last = &members[5];
        let first_look = queue_me(&app, last, coupon).await;
        assert_eq!(first_look["status"], "QUEUED", "{first_look}");
        let before = first_look["position"].as_u64().unwrap();
        // Re-joining keeps the place rather than going to the back.
        let (status, rejoin) = issue(&app, last, coupon).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert!(rejoin["position"].as_u64().unwrap() <= before);
        // Admission moves the place up (2 a second): poll for it, with a deadline.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let later = loop {
            let later = queue_me(&app, last, coupon).await;
            let moved = later["position"].as_u64().map_or(0, |p| p);
            if later["status"] == "ISSUED" || moved < before {
                break later;
            }
            assert!(std::time::Instant::now() < deadline, "{first_look} then {later}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(later["status"] == "ISSUED" || later["position"].as_u64() < Some(before));
        let outsider = app.new_user().await;
        assert_eq!(queue_me(&app, &outsider, coupon).await["status"], "NOT_QUEUED");
    }
}

/// Redis loses the coupon (its keys deleted, as after a restart without persistence) and its
/// script cache (`SCRIPT FLUSH`): the next issue re-seeds the coupon from the database,
/// reloads the script, and the member issued before still holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coupon_redis_forgot_is_seeded_again_from_the_database() {
    let app = spawn(Store::Redis).await;
    let admin = app.admin().await;
    let coupon = create_coupon(
        &app,
        &admin,
        json!({ "name": "Forgotten", "discountRate": 5, "quantity": 5 }),
    )
    .await["couponId"]
        .as_i64()
        .unwrap();
    let members = app.members(3).await;
    assert_eq!(
        issue(&app, &members[0], coupon).await.0,
        StatusCode::CREATED
    );
    assert_eq!(stored_issues(&app, coupon, 1).await, 1);
    let prefix = prefix_of(&app).unwrap();
    let mut redis = redis_connection().await;
    let _: () = redis
        .del(&[
            format!("{prefix}:coupon:{coupon}"),
            format!("{prefix}:coupon:{coupon}:holders"),
        ])
        .await
        .unwrap();
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_error(
        &issue(&app, &members[0], coupon).await,
        409,
        "ALREADY_ISSUED",
    );
    assert_eq!(
        issue(&app, &members[1], coupon).await.0,
        StatusCode::CREATED
    );
    assert_eq!(redis_remaining(&app, coupon).await, Some(3));
    assert_eq!(stored_issues(&app, coupon, 2).await, 2);
}
