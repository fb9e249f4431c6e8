//! Durability under `kill -9`: a real `surge` process is killed mid-sale several times and
//! restarted on the same database; no acknowledged order may be lost and no unit oversold or
//! stranded. And a node in Redis mode is killed while coupon issues are still draining from
//! the stream into the database; the next node takes them over and loses or doubles none.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::Connection;

#[path = "support/services.rs"]
#[allow(
    dead_code,
    reason = "shared by the test binaries; this one needs only Redis"
)]
mod services;
use services::redis_url;

const UNITS: i64 = 2_000;
const BUYERS: usize = 12;
const KILLS: usize = 4;

struct Node {
    child: Child,
    base: String,
}

/// The returned node is always killed and waited for by `kill_9`; if the node never becomes
/// ready the test panics and the process ends with it.
#[allow(clippy::zombie_processes)]
fn start(dir: &std::path::Path) -> Node {
    start_with(dir, &[])
}

/// Starts a node with extra `SURGE_*` settings.
#[allow(clippy::zombie_processes)]
fn start_with(dir: &std::path::Path, settings: &[(&str, String)]) -> Node {
    let mut command = Command::new(env!("CARGO_BIN_EXE_surge"));
    command.env_clear();
    for (name, value) in settings {
        command.env(name, value);
    }
    let mut child = command
        .current_dir(dir)
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SURGE_HTTP_ADDR", "127.0.0.1:0")
        .env("SURGE_BOOTSTRAP_ADMIN_LOGIN_ID", "crash_admin")
        .env("SURGE_BOOTSTRAP_ADMIN_PASSWORD", "crash-admin-password")
        .env("SURGE_RESERVATION_TTL_MS", "1500")
        .env("SURGE_RATE_LIMITS", "off")
        .env("SURGE_MAX_CONNECTIONS_PER_IP", "0")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    // Keep draining the pipe for the whole life of the child so it never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let line = rx
            .recv_timeout(deadline - Instant::now())
            .expect("node never became ready");
        if let Some(rest) = line.split("addr=").nth(1) {
            let addr = rest.split_whitespace().next().unwrap();
            return Node {
                child,
                base: format!("http://{addr}"),
            };
        }
    }
}

fn kill_9(node: &mut Node) {
    let status = Command::new("kill")
        .args(["-KILL", &node.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    node.child.wait().unwrap();
}

/// A small deterministic generator: the kill moments vary but a failure can be replayed.
struct Lcg(u64);
impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// POSTs JSON (with a token when given) and returns the JSON answer.
async fn post(client: &reqwest::Client, url: String, token: Option<&str>, body: Value) -> Value {
    let mut request = client.post(url).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap().json().await.unwrap()
}

async fn login(client: &reqwest::Client, base: &str, login: &str, password: &str) -> String {
    let body = post(
        client,
        format!("{base}/api/v1/auth/login"),
        None,
        json!({ "loginId": login, "password": password }),
    )
    .await;
    body["accessToken"].as_str().unwrap().to_owned()
}

/// Buys one unit at a time with every buyer until told to stop; returns acknowledged order ids
/// and whether a sold-out answer was seen.
async fn buy(
    base: String,
    tokens: Vec<String>,
    item: i64,
    stop_at: Option<Instant>,
) -> (Vec<i64>, bool) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for token in tokens {
        let client = client.clone();
        let url = format!("{base}/api/v1/orders");
        tasks.spawn(async move {
            let mut acked = Vec::new();
            let mut sold_out = false;
            while stop_at.is_none_or(|t| Instant::now() < t) && !sold_out {
                let sent = client
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&json!({ "lines": [{ "itemId": item, "quantity": 1 }] }))
                    .send()
                    .await;
                let Ok(response) = sent else { break };
                let status = response.status().as_u16();
                let Ok(body) = response.json::<Value>().await else {
                    break;
                };
                match status {
                    201 => acked.push(body["orderId"].as_i64().unwrap()),
                    409 => sold_out = true,
                    _ => {}
                }
            }
            (acked, sold_out)
        });
    }
    let mut all = Vec::new();
    let mut sold_out = false;
    while let Some(joined) = tasks.join_next().await {
        let (acked, s) = joined.unwrap();
        all.extend(acked);
        sold_out |= s;
    }
    (all, sold_out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_sale_loses_no_acknowledged_order_and_strands_nothing() {
    let dir = std::env::temp_dir().join(format!("surge-crash-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let client = reqwest::Client::new();
    let mut node = start(&dir);

    let admin = login(&client, &node.base, "crash_admin", "crash-admin-password").await;
    let item = post(
        &client,
        format!("{}/api/v1/items", node.base),
        Some(&admin),
        json!({ "name": "Crash item", "price": 10, "stock": UNITS }),
    )
    .await;
    let item = item["itemId"].as_i64().unwrap();
    let mut tokens = Vec::new();
    for i in 0..BUYERS {
        let login_id = format!("crash_buyer_{i}");
        post(
            &client,
            format!("{}/api/v1/users", node.base),
            None,
            json!({ "loginId": login_id, "password": "buyer-password", "name": "B" }),
        )
        .await;
        tokens.push(login(&client, &node.base, &login_id, "buyer-password").await);
    }

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("kill schedule seed: {seed}");
    let mut rng = Lcg(seed);
    let mut acknowledged = Vec::new();
    for _ in 0..KILLS {
        let run_for = Duration::from_millis(150 + rng.below(500));
        let buyers = tokio::spawn(buy(
            node.base.clone(),
            tokens.clone(),
            item,
            Some(Instant::now() + run_for + Duration::from_secs(2)),
        ));
        tokio::time::sleep(run_for).await;
        kill_9(&mut node);
        let (acked, _) = buyers.await.unwrap();
        eprintln!(
            "killed after {run_for:?}; {} orders acknowledged before the kill",
            acked.len()
        );
        acknowledged.extend(acked);
        node = start(&dir);
    }
    // Drain the rest of the sale on the last node.
    let (acked, sold_out) = buy(node.base.clone(), tokens.clone(), item, None).await;
    acknowledged.extend(acked);
    assert!(sold_out, "the sale never sold out");
    // Wait (with a deadline) for every reservation deadline to pass and the sweeper to run.
    sqlx::any::install_default_drivers();
    let url = format!("sqlite://{}/surge-data/surge.db", dir.display());
    let mut db = sqlx::AnyConnection::connect(&url).await.unwrap();
    let one = |sql: &'static str| sqlx::query_as::<_, (i64,)>(sql).bind(item);
    let settled = Instant::now() + Duration::from_secs(30);
    loop {
        let (held,) = one("SELECT COALESCE(SUM(quantity), 0) FROM reservations WHERE item_id = $1 AND status = 'HELD'")
            .fetch_one(&mut db)
            .await
            .unwrap();
        let (processing,) = one("SELECT COUNT(*) FROM orders o JOIN order_lines l ON l.order_id = o.id WHERE l.item_id = $1 AND o.status = 'PROCESSING'")
            .fetch_one(&mut db)
            .await
            .unwrap();
        if held == 0 && processing == 0 || Instant::now() > settled {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (available,) = one("SELECT available FROM items WHERE id = $1")
        .fetch_one(&mut db)
        .await
        .unwrap();
    let (allotted,) =
        one("SELECT COALESCE(SUM(units), 0) FROM stock_allotments WHERE item_id = $1")
            .fetch_one(&mut db)
            .await
            .unwrap();
    let (sold,) = one("SELECT COALESCE(SUM(quantity), 0) FROM reservations WHERE item_id = $1 AND status = 'CONFIRMED'").fetch_one(&mut db).await.unwrap();
    let (held,) = one("SELECT COALESCE(SUM(quantity), 0) FROM reservations WHERE item_id = $1 AND status = 'HELD'").fetch_one(&mut db).await.unwrap();
    let (succeeded,) = one("SELECT COUNT(*) FROM orders o JOIN order_lines l ON l.order_id = o.id WHERE l.item_id = $1 AND o.status = 'SUCCEEDED'").fetch_one(&mut db).await.unwrap();
    assert!(available >= 0 && allotted >= 0 && sold >= 0 && held >= 0);
    assert_eq!(
        sold + available + allotted + held,
        UNITS,
        "units are conserved"
    );
    assert_eq!(held, 0, "nothing stays held after the deadlines");
    assert_eq!(sold, UNITS, "nothing is stranded: the sale sold every unit");
    assert_eq!(succeeded, sold, "one SUCCEEDED order per unit sold");
    for id in &acknowledged {
        let (status,): (String,) = sqlx::query_as("SELECT status FROM orders WHERE id = $1")
            .bind(id)
            .fetch_one(&mut db)
            .await
            .unwrap();
        assert_eq!(status, "SUCCEEDED", "acknowledged order {id} was lost");
    }
    assert!(acknowledged.len() as i64 <= UNITS);
    let _ = db.close().await;
    kill_9(&mut node);
    std::fs::remove_dir_all(dir).unwrap();
}

/// Writes `n` members straight into the node's database and signs their tokens with the
/// node's own key (argon2 for a thousand sign-ups would dominate the test).
async fn bulk_members(dir: &std::path::Path, n: usize) -> Vec<(i64, String)> {
    sqlx::any::install_default_drivers();
    let url = format!("sqlite://{}/surge-data/surge.db", dir.display());
    let mut db = sqlx::AnyConnection::connect(&url).await.unwrap();
    let mut tx = db.begin().await.unwrap();
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO users (login_id, password_hash, name, role, created_at) \
             VALUES ($1, 'not-a-hash', 'Bulk', 'USER', 0) RETURNING id",
        )
        .bind(format!("bulk_{i}"))
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        ids.push(id);
    }
    tx.commit().await.unwrap();
    let _ = db.close().await;
    let secret = std::fs::read_to_string(dir.join("surge-data/jwt-secret")).unwrap();
    let key = jsonwebtoken::EncodingKey::from_secret(secret.trim().as_bytes());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    ids.into_iter()
        .map(|id| {
            let claims = json!({"sub": id.to_string(), "sid": format!("bulk-{id}"),
                "role": "USER", "iat": now, "exp": now + 3_600, "jti": id.to_string()});
            let token = jsonwebtoken::encode(
                &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                &claims,
                &key,
            )
            .unwrap();
            (id, token)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_coupon_issues_drain_loses_and_doubles_none() {
    use redis::AsyncCommands;
    const QUANTITY: i64 = 100;
    const USERS: usize = 1_000;
    const REQUESTS: usize = 5_000;
    let dir = std::env::temp_dir().join(format!("surge-crash-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let prefix = format!(
        "surge-crash-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let settings = |node: &str| {
        vec![
            ("SURGE_REDIS_URL", redis_url()),
            ("SURGE_REDIS_KEY_PREFIX", prefix.clone()),
            ("SURGE_REDIS_TIMEOUT_MS", "10000".to_owned()),
            ("SURGE_COUPON_ANSWER_TIMEOUT_MS", "30000".to_owned()),
            ("SURGE_NODE_ID", node.to_owned()),
            ("SURGE_COUPON_CLAIM_IDLE_MS", "500".to_owned()),
        ]
    };
    let client = reqwest::Client::new();
    let mut node = start_with(&dir, &settings("node-a"));
    let admin = login(&client, &node.base, "crash_admin", "crash-admin-password").await;
    let coupon = post(
        &client,
        format!("{}/api/v1/coupons", node.base),
        Some(&admin),
        json!({ "name": "Crash coupon", "discountRate": 10, "quantity": QUANTITY }),
    )
    .await["couponId"]
        .as_i64()
        .unwrap();
    let members = bulk_members(&dir, USERS).await;

    // Hold SQLite's write lock: the stream writer cannot store anything, so the issues pile up
    // in the stream (read by node-a's consumer, or not yet read) while Redis keeps answering.
    let url = format!("sqlite://{}/surge-data/surge.db", dir.display());
    let mut blocker = sqlx::AnyConnection::connect(&url).await.unwrap();
    sqlx::raw_sql("BEGIN IMMEDIATE")
        .execute(&mut blocker)
        .await
        .unwrap();

    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..REQUESTS {
        let (user, token) = members[n % USERS].clone();
        let url = format!("{}/api/v1/coupons/{coupon}/issue", node.base);
        let client = client.clone();
        tasks.spawn(async move {
            let response = client.post(url).bearer_auth(token).send().await.unwrap();
            (user, response.status().as_u16())
        });
    }
    let mut acknowledged = std::collections::BTreeSet::new();
    while let Some(joined) = tasks.join_next().await {
        let (user, status) = joined.unwrap();
        match status {
            201 => assert!(acknowledged.insert(user), "user {user} issued twice"),
            409 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(acknowledged.len() as i64, QUANTITY);
    let mut redis = redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let stream = format!("{prefix}:coupon-issues");
    let backlog: i64 = redis.xlen(&stream).await.unwrap();
    assert_eq!(
        backlog, QUANTITY,
        "every issue is still waiting in the stream"
    );
    // Some of them node-a's consumer had already taken (pending under its name): only a
    // claim by another consumer can move those.
    let pending: redis::Value = redis::cmd("XPENDING")
        .arg(&stream)
        .arg("coupon-writers")
        .query_async(&mut redis)
        .await
        .unwrap();
    let taken_by_a = match &pending {
        redis::Value::Array(parts) => match parts.first() {
            Some(redis::Value::Int(n)) => *n,
            _ => 0,
        },
        _ => 0,
    };
    assert!(
        taken_by_a > 0,
        "node-a's consumer held no entries: {pending:?}"
    );
    eprintln!("node-a held {taken_by_a} entries read but unacknowledged when killed");

    // Mid-drain: kill the node, let the database go, start a node under another name.
    kill_9(&mut node);
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut blocker)
        .await
        .unwrap();
    let _ = blocker.close().await;
    let mut node = start_with(&dir, &settings("node-b"));

    let mut db = sqlx::AnyConnection::connect(&url).await.unwrap();
    let mut stored: Vec<i64> = Vec::new();
    for _ in 0..300 {
        stored = sqlx::query_as::<_, (i64,)>(
            "SELECT user_id FROM coupon_issues WHERE coupon_id = $1 ORDER BY user_id",
        )
        .bind(coupon)
        .fetch_all(&mut db)
        .await
        .unwrap()
        .into_iter()
        .map(|(u,)| u)
        .collect();
        let left: i64 = redis.xlen(&stream).await.unwrap();
        if stored.len() as i64 == QUANTITY && left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        stored,
        acknowledged.iter().copied().collect::<Vec<_>>(),
        "the database holds exactly the acknowledged issues"
    );
    let left: i64 = redis.xlen(&stream).await.unwrap();
    assert_eq!(left, 0, "the stream drained");
    let remaining: i64 = redis
        .hget(format!("{prefix}:coupon:{coupon}"), "remaining")
        .await
        .unwrap();
    assert_eq!(remaining, 0);
    let read = client
        .get(format!("{}/api/v1/coupons/{coupon}", node.base))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(read["remaining"], 0);
    let _ = db.close().await;
    kill_9(&mut node);
    std::fs::remove_dir_all(dir).unwrap();
}

/// `kill -9` of a node while its outbox relay publishes to Kafka (and its consumer applies):
/// after restarts every event written is on the broker at least once, and the read model
/// counted each change exactly once (a member's `ordersSucceeded` equals their SUCCEEDED orders).
#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_the_relay_publishes_loses_no_event_and_counts_each_change_once() {
    use surge_domain::Event;
    use surge_persistence::kafka::KafkaSubscriber;
    const BUYERS_HERE: usize = 6;

    let brokers =
        std::env::var("SURGE_TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let prefix = format!("crash{}.", uuid::Uuid::new_v4().simple());
    let settings = [
        ("SURGE_KAFKA_BROKERS", brokers.clone()),
        ("SURGE_KAFKA_TOPIC_PREFIX", prefix.clone()),
    ];
    let dir = std::env::temp_dir().join(format!("surge-crash-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let client = reqwest::Client::new();
    let mut node = start_with(&dir, &settings);
    let admin = login(&client, &node.base, "crash_admin", "crash-admin-password").await;
    let item = post(
        &client,
        format!("{}/api/v1/items", node.base),
        Some(&admin),
        json!({ "name": "Relay crash item", "price": 10, "stock": 1_000_000 }),
    )
    .await["itemId"]
        .as_i64()
        .unwrap();
    let mut buyers = Vec::new();
    for i in 0..BUYERS_HERE {
        let login_id = format!("relay_buyer_{i}");
        let user = post(
            &client,
            format!("{}/api/v1/users", node.base),
            None,
            json!({ "loginId": login_id, "password": "buyer-password", "name": "B" }),
        )
        .await;
        let token = login(&client, &node.base, &login_id, "buyer-password").await;
        buyers.push((user["userId"].as_i64().unwrap(), token));
    }
    let tokens: Vec<String> = buyers.iter().map(|(_, t)| t.clone()).collect();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("kill schedule seed: {seed}");
    let mut rng = Lcg(seed);
    for _ in 0..3 {
        let run_for = Duration::from_millis(300 + rng.below(700));
        let load = tokio::spawn(buy(
            node.base.clone(),
            tokens.clone(),
            item,
            Some(Instant::now() + run_for + Duration::from_secs(2)),
        ));
        tokio::time::sleep(run_for).await;
        kill_9(&mut node);
        let (acked, _) = load.await.unwrap();
        eprintln!(
            "killed after {run_for:?}; {} orders acknowledged",
            acked.len()
        );
        node = start_with(&dir, &settings);
    }
    // The last node delivers everything.
    let admin = login(&client, &node.base, "crash_admin", "crash-admin-password").await;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let relay: Value = client
            .get(format!("{}/api/v1/admin/outbox", node.base))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if relay["lagRows"] == 0 && relay["leader"] == true {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the outbox never drained: {relay}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sqlx::any::install_default_drivers();
    let url = format!("sqlite://{}/surge-data/surge.db", dir.display());
    let mut db = sqlx::AnyConnection::connect(&url).await.unwrap();
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT payload FROM outbox WHERE event_id IS NOT NULL ORDER BY id")
            .fetch_all(&mut db)
            .await
            .unwrap();
    let written: std::collections::HashSet<String> = rows
        .iter()
        .map(|(p,)| Event::from_json(p).unwrap().event_id)
        .collect();
    eprintln!("{} events written", written.len());
    // Every event is on the broker at least once.
    let reader = KafkaSubscriber::connect(&brokers, &prefix, "crash-reader").unwrap();
    let mut on_broker = std::collections::HashSet::new();
    let mut copies = 0usize;
    let deadline = Instant::now() + Duration::from_secs(90);
    while !written.is_subset(&on_broker) {
        assert!(
            Instant::now() < deadline,
            "{} events never reached the broker",
            written.difference(&on_broker).count()
        );
        if let Ok(batch) =
            tokio::time::timeout(Duration::from_secs(5), reader.next_batch(1_000)).await
        {
            for event in batch.unwrap().events {
                copies += 1;
                on_broker.insert(event.event_id);
            }
        }
    }
    eprintln!("{copies} records read for {} events", on_broker.len());
    // The read model applied each order once: its count equals the orders table's.
    for (user_id, token) in &buyers {
        let (succeeded,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM orders WHERE user_id = $1 AND status = 'SUCCEEDED'",
        )
        .bind(user_id)
        .fetch_one(&mut db)
        .await
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let page: Value = client
                .get(format!("{}/api/v1/my-page", node.base))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if page["source"] == "read-model" {
                assert_eq!(
                    page["stats"]["ordersSucceeded"], succeeded,
                    "member {user_id}: the read model counted a change twice or missed one"
                );
                break;
            }
            if Instant::now() >= deadline {
                let (unapplied,): (i64,) = sqlx::query_as(
                    "SELECT COUNT(*) FROM outbox WHERE user_id = $1 AND applied_at IS NULL",
                )
                .bind(user_id)
                .fetch_one(&mut db)
                .await
                .unwrap();
                let (processed,): (i64,) =
                    sqlx::query_as("SELECT COUNT(*) FROM outbox WHERE applied_at IS NOT NULL")
                        .fetch_one(&mut db)
                        .await
                        .unwrap();
                panic!(
                    "member {user_id}'s page never caught up: {unapplied} of their events unapplied, \
                     {processed} events applied in all; {page}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let _ = db.close().await;
    kill_9(&mut node);
    std::fs::remove_dir_all(dir).unwrap();
}
