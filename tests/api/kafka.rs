//! Events through a real Kafka-protocol broker (tansu): every event published once with its
//! key, read back by a real consumer; the read model fed from the broker; a broker outage
//! (a TCP forwarder the test cuts) that orders ride out while the outbox grows, the breaker
//! opens, and everything drains in order after the cut heals.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use surge_domain::{Event, Topic};
use surge_persistence::kafka::KafkaSubscriber;

use crate::events::{assert_every_change, every_change, outbox_events, read_model_page};
use crate::helpers::{Backend, TcpCut, TestApp, send};

fn brokers() -> String {
    std::env::var("SURGE_TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// A topic prefix of this test's own (the broker is shared).
fn fresh_prefix() -> String {
    format!("t{}.", uuid::Uuid::new_v4().simple())
}

async fn spawn_on_kafka(backend: Backend, brokers: &str, prefix: &str) -> TestApp {
    TestApp::spawn_with(
        backend,
        &[
            ("SURGE_KAFKA_BROKERS", brokers),
            ("SURGE_KAFKA_TOPIC_PREFIX", prefix),
        ],
    )
    .await
}

/// Reads the topics under `prefix` as a new consumer group until every event id of
/// `expected` has been seen (or the deadline passes); returns each record with its origin.
async fn read_back(
    brokers: &str,
    prefix: &str,
    expected: &[Event],
    deadline: Duration,
) -> Vec<(String, Option<String>, Event)> {
    let group = format!("test-{}", uuid::Uuid::new_v4().simple());
    let subscriber = KafkaSubscriber::connect(brokers, prefix, &group).unwrap();
    let mut records = Vec::new();
    let start = Instant::now();
    let missing = |records: &Vec<(String, Option<String>, Event)>| {
        expected
            .iter()
            .filter(|e| !records.iter().any(|(_, _, r)| r.event_id == e.event_id))
            .count()
    };
    while missing(&records) > 0 {
        let left = deadline.saturating_sub(start.elapsed());
        assert!(
            !left.is_zero(),
            "{} of {} events never reached the broker",
            missing(&records),
            expected.len()
        );
        if let Ok(batch) = tokio::time::timeout(left, subscriber.next_batch(500)).await {
            let batch = batch.unwrap();
            for ((topic, key), event) in batch.origins.into_iter().zip(batch.events) {
                records.push((topic, key, event));
            }
        }
    }
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_published_once_with_its_key_and_feeds_the_read_model() {
    let prefix = fresh_prefix();
    let app = spawn_on_kafka(Backend::Postgres, &brokers(), &prefix).await;
    let admin = app.admin().await;
    let buyer = app.new_user().await;
    let ids = every_change(&app, &admin, &buyer).await;
    let (status, _) = send(app.post("/api/v1/auth/logout").bearer_auth(&buyer.access)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let written = outbox_events(&app).await;
    assert_every_change(&written, &buyer, ids);
    let records = read_back(&brokers(), &prefix, &written, Duration::from_secs(60)).await;
    // Once each, on its type's topic, keyed by its aggregate, with the JSON the outbox holds.
    let mut copies: HashMap<&str, usize> = HashMap::new();
    for (topic, key, event) in &records {
        *copies.entry(event.event_id.as_str()).or_default() += 1;
        assert_eq!(topic, &format!("{prefix}{}", event.kind.topic().suffix()));
        assert_eq!(
            key.as_deref(),
            Some(event.aggregate_id.to_string().as_str())
        );
        let original = written
            .iter()
            .find(|w| w.event_id == event.event_id)
            .unwrap();
        assert_eq!(event, original);
    }
    assert!(copies.values().all(|&n| n == 1), "{copies:?}");
    assert_eq!(copies.len(), written.len());
    assert_every_change(
        &records.into_iter().map(|(_, _, e)| e).collect::<Vec<_>>(),
        &buyer,
        ids,
    );
    // The read model is fed from the broker: the member's page shows the cancelled order.
    let buyer = crate::helpers::TestUser {
        access: app.login(&buyer.login_id, &buyer.password).await.1["accessToken"]
            .as_str()
            .unwrap()
            .to_owned(),
        ..buyer
    };
    let (status, relay) = send(app.get("/api/v1/admin/outbox").bearer_auth(&admin.access)).await;
    assert_eq!((status, &relay["sink"]), (StatusCode::OK, &json!("kafka")));
    let (page, _) = read_model_page(&app, &buyer, Duration::from_secs(30), |p| {
        p["recentOrders"][0]["orderId"] == ids.2 && p["recentOrders"][0]["status"] == "CANCELLED"
    })
    .await;
    assert_eq!(page["stats"]["ordersSucceeded"], 0);
    assert_eq!(page["stats"]["couponsUnused"], 1);
}

/// A tansu broker of this test's own, reached through a forwarder the test can cut: the
/// broker advertises the forwarder's address, so every connection of the node goes through it.
struct CuttableBroker {
    process: Child,
    cut: TcpCut,
}

impl CuttableBroker {
    async fn start() -> Self {
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let cut = TcpCut::start(&format!("127.0.0.1:{port}")).await;
        let tansu = std::env::var("SURGE_TEST_TANSU").unwrap_or_else(|_| "tansu".into());
        let process = Command::new(tansu)
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://127.0.0.1:{port}"),
                "--advertised-listener-url",
                &format!("tcp://{}", cut.addr),
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu must be installed (scripts/ensure-services.sh kafka)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "tansu did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self { process, cut }
    }

    fn address(&self) -> String {
        self.cut.addr.to_string()
    }
}

impl Drop for CuttableBroker {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_stops_nothing_and_the_outbox_drains_in_order_afterwards() {
    let mut broker = CuttableBroker::start().await;
    let prefix = fresh_prefix();
    let app = spawn_on_kafka(Backend::Postgres, &broker.address(), &prefix).await;
    let admin = app.admin().await;
    let buyer = app.new_user().await;
    let item = app.create_item(&admin, "Outage", 10, 1_000).await["itemId"]
        .as_i64()
        .unwrap();
    let order = |app: &TestApp| {
        let app_client = app.client.clone();
        let url = format!("{}/api/v1/orders", app.base);
        let token = buyer.access.clone();
        async move {
            let response = app_client
                .post(url)
                .bearer_auth(token)
                .json(&json!({"lines": [{"itemId": item, "quantity": 1}]}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::CREATED);
            let body: serde_json::Value = response.json().await.unwrap();
            body["orderId"].as_i64().unwrap()
        }
    };
    // Healthy: events flow.
    order(&app).await;
    let relay = |app: &TestApp| {
        let request = app.get("/api/v1/admin/outbox").bearer_auth(&admin.access);
        async move { send(request).await.1 }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while relay(&app).await["lagRows"] != 0 || relay(&app).await["published"].as_i64() < Some(4) {
        assert!(
            Instant::now() < deadline,
            "events never flowed: {}",
            relay(&app).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    broker.cut.cut().await;
    // Cut: orders keep succeeding, the outbox grows, the breaker opens.
    let mut during = Vec::new();
    for _ in 0..30 {
        during.push(order(&app).await);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, circuits) =
            send(app.get("/api/v1/admin/circuits").bearer_auth(&admin.access)).await;
        let kafka = circuits["circuits"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["dependency"] == "kafka")
            .cloned()
            .unwrap_or_default();
        let lag = relay(&app).await;
        if kafka["state"] == "open" && lag["lagRows"].as_i64() >= Some(30) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "breaker never opened or the outbox did not grow: {kafka} {lag}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Healed: everything drains, in order per key.
    broker.cut.restore().await;
    let deadline = Instant::now() + Duration::from_secs(90);
    while relay(&app).await["lagRows"] != 0 {
        assert!(
            Instant::now() < deadline,
            "the outbox never drained: {}",
            relay(&app).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let written = outbox_events(&app).await;
    let records = read_back(
        &broker.address(),
        &prefix,
        &written,
        Duration::from_secs(60),
    )
    .await;
    let orders_topic = format!("{prefix}{}", Topic::Orders.suffix());
    let placed: Vec<i64> = records
        .iter()
        .filter(|(topic, _, _)| *topic == orders_topic)
        .map(|(_, _, e)| e.aggregate_id)
        .collect();
    for id in &during {
        assert!(placed.contains(id), "order {id}'s event is missing");
    }
    // Per topic and key, the first copy of each event comes in outbox order (a batch sent again
    // after the outage may repeat events; a consumer skips those by event id).
    let position = |id: &str| written.iter().position(|w| w.event_id == id).unwrap();
    let mut seen = std::collections::HashSet::new();
    let mut last_per_key: HashMap<(String, Option<String>), usize> = HashMap::new();
    for (topic, key, event) in &records {
        if !seen.insert(event.event_id.clone()) {
            continue;
        }
        let at = position(&event.event_id);
        if let Some(before) = last_per_key.insert((topic.clone(), key.clone()), at) {
            assert!(before < at, "{topic} key {key:?} out of order");
        }
    }
}
