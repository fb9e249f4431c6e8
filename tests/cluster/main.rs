//! The cluster with real processes: several `surge` nodes on loopback against one fresh
//! PostgreSQL database and Redis, killed with `kill -9`, stopped with SIGTERM, cut off from the
//! database through a TCP forwarder.

#![allow(clippy::unwrap_used)]

mod harness;
mod partition;
#[path = "../support/poll.rs"]
mod poll;
#[path = "../support/services.rs"]
mod services;
#[path = "../support/tcp_cut.rs"]
mod tcp_cut;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::Connection as _;

use harness::{Api, CLUSTER_SECRET, ClusterEnv, LEASE_MS, Node, poll_until, wait_for_spread};

/// Units sold, left on the item row, and checked out to owners, from the database.
async fn units(env: &ClusterEnv, item: i64) -> (i64, i64, i64) {
    let mut db = env.sql().await;
    let (sold,): (i64,) = sqlx::query_as(
        "SELECT CAST(COALESCE(SUM(l.quantity), 0) AS BIGINT) FROM order_lines l JOIN orders o ON o.id = l.order_id \
         WHERE l.item_id = $1 AND o.status = 'SUCCEEDED'",
    )
    .bind(item)
    .fetch_one(&mut db)
    .await
    .unwrap();
    let (available,): (i64,) = sqlx::query_as("SELECT available FROM items WHERE id = $1")
        .bind(item)
        .fetch_one(&mut db)
        .await
        .unwrap();
    let (allotted,): (i64,) = sqlx::query_as(
        "SELECT CAST(COALESCE(SUM(units), 0) AS BIGINT) FROM stock_allotments WHERE item_id = $1",
    )
    .bind(item)
    .fetch_one(&mut db)
    .await
    .unwrap();
    let _ = db.close().await;
    (sold, available, allotted)
}

fn node_by_id<'a>(nodes: &'a [Node], id: &str) -> &'a Node {
    nodes.iter().find(|n| n.id == id).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_split_the_shards_and_an_order_on_a_non_owner_is_served_by_the_owner() {
    let env = ClusterEnv::create().await;
    let api = Api::new();
    let nodes = [env.start("n1"), env.start("n2"), env.start("n3")];
    let admin = api.admin_token(&nodes[0].base).await;
    wait_for_spread(&api, &nodes.iter().collect::<Vec<_>>(), &admin, 3).await;

    // Every node sees the same owners.
    let item = api.item(&nodes[0].base, &admin, 50).await;
    let mut owners = Vec::new();
    for node in &nodes {
        owners.push(api.owner_of(&node.base, &admin, item).await.unwrap());
    }
    assert!(owners.iter().all(|o| *o == owners[0]), "{owners:?}");
    let owner = node_by_id(&nodes, &owners[0]);
    let other = nodes.iter().find(|n| n.id != owner.id).unwrap();

    // An order placed on a node that does not own the item.
    let buyer = api.member(&other.base, "cluster_buyer").await;
    let (status, order) = api.order(&other.base, &buyer, item, 3).await.unwrap();
    assert_eq!(status, 201, "{order}");
    assert_eq!(order["status"], "SUCCEEDED");

    // Served by the owner's actor: the owner has the item's stock actor and counts a hold
    // given to a peer; the node that took the request has no actor for it and forwarded.
    let (_, actors, answered_by) = api
        .get(format!("{}/api/v1/admin/actors", owner.base), &admin)
        .await;
    assert_eq!(answered_by.as_deref(), Some(owner.id.as_str()));
    assert_eq!(actors["node"], owner.id.as_str());
    let actor = actors["actors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "stock" && a["key"] == item)
        .unwrap_or_else(|| panic!("no stock actor for {item} on the owner: {actors}"));
    assert!(actor["holds"].as_u64().unwrap() >= 1);
    let owner_view = api.cluster(&owner.base, &admin).await;
    assert!(
        owner_view["forwarding"]["holdsServedForPeers"]
            .as_u64()
            .unwrap()
            >= 1
    );
    let (_, other_actors, _) = api
        .get(format!("{}/api/v1/admin/actors", other.base), &admin)
        .await;
    assert!(
        !other_actors["actors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["kind"] == "stock" && a["key"] == item),
        "the non-owner started its own actor: {other_actors}"
    );
    let other_view = api.cluster(&other.base, &admin).await;
    assert!(other_view["forwarding"]["opsSent"].as_u64().unwrap() >= 1);
    assert_eq!(units(&env, item).await.0, 3);

    // Members and shards are visible on every node, and every answer names its node.
    for node in &nodes {
        let (_, view, answered_by) = api
            .get(format!("{}/api/v1/admin/cluster", node.base), &admin)
            .await;
        assert_eq!(answered_by.as_deref(), Some(node.id.as_str()));
        assert_eq!(view["node"]["nodeId"], node.id.as_str());
        assert_eq!(view["shardCount"], 64);
        assert_eq!(view["members"].as_array().unwrap().len(), 3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_owner_mid_sale_moves_its_items_within_seconds_and_oversells_nothing() {
    const STOCK: i64 = 2_000;
    let env = ClusterEnv::create().await;
    let api = Api::new();
    let mut nodes = [env.start("n1"), env.start("n2"), env.start("n3")];
    let admin = api.admin_token(&nodes[0].base).await;
    wait_for_spread(&api, &nodes.iter().collect::<Vec<_>>(), &admin, 3).await;
    let item = api.item(&nodes[0].base, &admin, STOCK).await;
    let owner_id = api.owner_of(&nodes[0].base, &admin, item).await.unwrap();
    let survivors: Vec<String> = nodes
        .iter()
        .filter(|n| n.id != owner_id)
        .map(|n| n.base.clone())
        .collect();
    let mut tokens = Vec::new();
    for i in 0..6 {
        tokens.push(api.member(&survivors[i % 2], &format!("buyer_{i}")).await);
    }

    // Buyers on the two other nodes, one unit at a time, until the item is sold out.
    // (sent, answered, order id) of every 201.
    let acknowledged: Arc<Mutex<Vec<(Instant, Instant, i64)>>> = Arc::default();
    let started = Instant::now();
    let mut buyers = Vec::new();
    for (i, token) in tokens.into_iter().enumerate() {
        let api = api.clone();
        let bases = survivors.clone();
        let acknowledged = acknowledged.clone();
        buyers.push(tokio::spawn(async move {
            let mut n = i;
            while started.elapsed() < Duration::from_secs(40) {
                n += 1;
                let sent = Instant::now();
                match api.order(&bases[n % 2], &token, item, 1).await {
                    Some((201, body)) => acknowledged.lock().unwrap().push((
                        sent,
                        Instant::now(),
                        body["orderId"].as_i64().unwrap(),
                    )),
                    Some((409, body)) if body["code"] == "OUT_OF_STOCK" => return,
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before_kill = acknowledged.lock().unwrap().len();
    assert!(before_kill > 0, "orders sold before the kill");
    let killed_at = Instant::now();
    let owner = nodes.iter_mut().find(|n| n.id == owner_id).unwrap();
    owner.kill_9();
    for buyer in buyers {
        buyer.await.unwrap();
    }

    // The item sold again through the others soon after the kill.
    let acknowledged = acknowledged.lock().unwrap().clone();
    let first_after = acknowledged
        .iter()
        .filter(|(sent, _, _)| *sent > killed_at)
        .map(|(_, answered, _)| *answered)
        .min()
        .expect("the item never sold again after its owner died");
    let failover = first_after - killed_at;
    eprintln!(
        "failover: {} ms (lease {LEASE_MS} ms); {} orders before the kill, {} in all",
        failover.as_millis(),
        before_kill,
        acknowledged.len()
    );
    assert!(
        failover < Duration::from_secs(5),
        "failover took {failover:?}"
    );

    // Every acknowledged order is SUCCEEDED, nothing is oversold, and every unit is in
    // exactly one place: sold, on the item row, or checked out to the new owner.
    let mut db = env.sql().await;
    for (_, _, id) in &acknowledged {
        let (status,): (String,) = sqlx::query_as("SELECT status FROM orders WHERE id = $1")
            .bind(id)
            .fetch_one(&mut db)
            .await
            .unwrap();
        assert_eq!(status, "SUCCEEDED", "acknowledged order {id}");
    }
    let _ = db.close().await;
    let (sold, available, allotted) = units(&env, item).await;
    assert!(sold <= STOCK);
    assert_eq!(sold, i64::try_from(acknowledged.len()).unwrap());
    assert_eq!(sold + available + allotted, STOCK, "units are conserved");
    assert_eq!(
        sold, STOCK,
        "the sale sold out: nothing stranded with the dead owner"
    );

    // The killed node comes back (once its heartbeat aged past a lease) and takes shards.
    let restarted = env.start(&owner_id);
    let live: Vec<&Node> = nodes
        .iter()
        .filter(|n| n.id != owner_id)
        .chain(std::iter::once(&restarted))
        .collect();
    wait_for_spread(&api, &live, &admin, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_cut_off_from_the_database_stops_serving_before_its_lease_ends_and_is_fenced() {
    let env = ClusterEnv::create().await;
    let api = Api::new();
    // "a" reaches PostgreSQL only through a forwarder the test cuts.
    let pg = pg_host_port(&env.db_url);
    let mut cut = tcp_cut::TcpCut::start(&pg).await;
    let a_url = env.db_url.replacen(&pg, &cut.addr.to_string(), 1);
    let a = env.start_with("a", &[("SURGE_DATABASE_URL", a_url)]);
    let b = env.start("b");
    let admin = api.admin_token(&b.base).await;
    wait_for_spread(&api, &[&a, &b], &admin, 2).await;
    // An item "a" owns.
    let mut item = 0;
    for _ in 0..64 {
        let id = api.item(&b.base, &admin, 100).await;
        if api.owner_of(&b.base, &admin, id).await.as_deref() == Some("a") {
            item = id;
            break;
        }
    }
    assert!(item > 0, "no item landed on a shard of a");
    let buyer = api.member(&b.base, "cut_buyer").await;
    let (status, _) = api.order(&b.base, &buyer, item, 1).await.unwrap();
    assert_eq!(status, 201);
    let shard = item.rem_euclid(64);
    let mut db = env.sql().await;
    let (old_epoch, lease_until): (i64, i64) =
        sqlx::query_as("SELECT epoch, lease_until FROM shard_leases WHERE shard = $1")
            .bind(shard)
            .fetch_one(&mut db)
            .await
            .unwrap();
    let (item_epoch,): (i64,) =
        sqlx::query_as("SELECT epoch FROM stock_allotments WHERE item_id = $1")
            .bind(item)
            .fetch_one(&mut db)
            .await
            .unwrap();

    // Cut "a" off. Its last renewal set `lease_until` (or a later one may still land before
    // the cut; read it again after).
    cut.cut().await;
    let cut_at_ms = now_ms();
    let (_, lease_until_after): (i64, i64) =
        sqlx::query_as("SELECT epoch, lease_until FROM shard_leases WHERE shard = $1")
            .bind(shard)
            .fetch_one(&mut db)
            .await
            .unwrap();
    let lease_end = lease_until.max(lease_until_after);

    // "a" stops serving the shard by its own clock: its admin view (no database needed)
    // stops naming itself, and that happens before the lease ends in the database.
    let stopped_at_ms = poll_until(Duration::from_secs(10), "a to stop serving", || async {
        let (_, body, _) = api
            .get(
                format!("{}/api/v1/admin/cluster/items/{item}", a.base),
                &admin,
            )
            .await;
        (body["servedHere"] == false).then(now_ms)
    })
    .await;
    eprintln!(
        "cut at {cut_at_ms}, a stopped serving at {stopped_at_ms}, lease ended at {lease_end} \
         ({} ms before)",
        lease_end - stopped_at_ms
    );
    assert!(
        stopped_at_ms < lease_end,
        "a served until {stopped_at_ms}, past its lease's end {lease_end}"
    );

    // "b" takes the shard over with a newer epoch and sells the item.
    let (status, body) = poll_until(Duration::from_secs(10), "b to sell the item", || async {
        api.order(&b.base, &buyer, item, 1)
            .await
            .filter(|(s, _)| *s == 201)
    })
    .await;
    assert_eq!((status, body["status"].clone()), (201, json!("SUCCEEDED")));
    let (new_epoch, owner): (i64, String) =
        sqlx::query_as("SELECT epoch, owner FROM shard_leases WHERE shard = $1")
            .bind(shard)
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!(owner, "b");
    assert!(new_epoch > old_epoch);

    // The stale owner's writes are fenced: its allotment epoch and its shard lease no longer
    // match, so the very statements it would run change zero rows.
    let late = sqlx::query(
        "UPDATE stock_allotments SET units = units - 1 WHERE item_id = $1 AND epoch = $2",
    )
    .bind(item)
    .bind(item_epoch)
    .execute(&mut db)
    .await
    .unwrap();
    assert_eq!(
        late.rows_affected(),
        0,
        "a late write of the stale owner landed"
    );
    let late_lease = sqlx::query(
        "UPDATE shard_leases SET epoch = epoch WHERE shard = $1 AND owner = 'a' AND epoch = $2",
    )
    .bind(shard)
    .bind(old_epoch)
    .execute(&mut db)
    .await
    .unwrap();
    assert_eq!(late_lease.rows_affected(), 0);

    // When "a" reaches the database again it neither sells the item nor oversells: the
    // units add up.
    cut.restore().await;
    wait_for_spread(&api, &[&a, &b], &admin, 2).await;
    let (sold, available, allotted) = units(&env, item).await;
    assert_eq!(sold + available + allotted, 100);
    let _ = db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_internal_listener_refuses_a_missing_or_forged_secret() {
    let env = ClusterEnv::create().await;
    let api = Api::new();
    let node = env.start("solo");
    let admin = api.admin_token(&node.base).await;
    let view = api.cluster(&node.base, &admin).await;
    let addr = view["node"]["clusterAddr"].as_str().unwrap().to_owned();
    let url = format!("http://{addr}/internal/v1/shard-ops");
    let batch = json!({"ops": [{"op": "replenished", "item": 1}]});
    let missing = api.http.post(&url).json(&batch).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["code"], "UNAUTHENTICATED");
    let forged = api
        .http
        .post(&url)
        .header("x-surge-cluster-secret", "x".repeat(CLUSTER_SECRET.len()))
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    let genuine = api
        .http
        .post(&url)
        .header("x-surge-cluster-secret", CLUSTER_SECRET)
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(genuine.status(), 200);
    let view = api.cluster(&node.base, &admin).await;
    assert_eq!(view["forwarding"]["refusedUnauthenticated"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_is_refused_for_a_wrong_shard_count_a_live_duplicate_id_sqlite_or_no_secret() {
    let env = ClusterEnv::create().await;
    let node = env.start("first");
    let (code, log) = env.run_to_exit("second", &[("SURGE_SHARDS", "32".into())]);
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("64 shards"), "{log}");
    let (code, log) = env.run_to_exit("first", &[]);
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("in use by a live node"), "{log}");
    let (code, log) = env.run_to_exit(
        "third",
        &[(
            "SURGE_DATABASE_URL",
            "sqlite://cluster-refused/surge.db".into(),
        )],
    );
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("SURGE_CLUSTER_ADDR"), "{log}");
    let (code, log) = env.run_to_exit("third", &[("SURGE_CLUSTER_SECRET", String::new())]);
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("SURGE_CLUSTER_SECRET"), "{log}");
    drop(node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_on_one_node_is_refused_on_every_node_within_a_second() {
    let env = ClusterEnv::create().await;
    let api = Api::new();
    let nodes = [env.start("r1"), env.start("r2")];
    let token = api.member(&nodes[0].base, "leaving_member").await;
    for node in &nodes {
        let (status, _, _) = api
            .get(format!("{}/api/v1/users/me", node.base), &token)
            .await;
        assert_eq!(status, 200);
    }
    let logout = api
        .http
        .post(format!("{}/api/v1/auth/logout", nodes[0].base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert!(logout.status().is_success(), "{}", logout.status());
    let logged_out = Instant::now();
    poll_until(
        Duration::from_secs(5),
        "the other node to refuse the token",
        || async {
            let (status, _, _) = api
                .get(format!("{}/api/v1/users/me", nodes[1].base), &token)
                .await;
            (status == 401).then_some(())
        },
    )
    .await;
    let took = logged_out.elapsed();
    eprintln!(
        "revocation reached the other node in {} ms",
        took.as_millis()
    );
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_fails_no_request_that_is_retried_once_elsewhere() {
    let env = ClusterEnv::create().await;
    let api = Api::new();
    let mut nodes = [env.start("w1"), env.start("w2"), env.start("w3")];
    let admin = api.admin_token(&nodes[0].base).await;
    wait_for_spread(&api, &nodes.iter().collect::<Vec<_>>(), &admin, 3).await;
    let mut items = Vec::new();
    for _ in 0..6 {
        items.push(api.item(&nodes[0].base, &admin, 100_000).await);
    }
    let mut tokens = Vec::new();
    for i in 0..4 {
        tokens.push(api.member(&nodes[0].base, &format!("roller_{i}")).await);
    }
    let bases: Arc<Mutex<Vec<String>>> =
        Arc::new(Mutex::new(nodes.iter().map(|n| n.base.clone()).collect()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let done: Arc<std::sync::atomic::AtomicU64> = Arc::default();
    let mut clients = Vec::new();
    for (i, token) in tokens.into_iter().enumerate() {
        let (api, bases, stop, failures, done, items) = (
            api.clone(),
            bases.clone(),
            stop.clone(),
            failures.clone(),
            done.clone(),
            items.clone(),
        );
        clients.push(tokio::spawn(async move {
            let mut n = i;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let item = items[n % items.len()];
                let targets = bases.lock().unwrap().clone();
                let first = &targets[n % targets.len()];
                let second = &targets[(n + 1) % targets.len()];
                let started = Instant::now();
                let first_outcome = api.order(first, &token, item, 1).await;
                let mut outcome = first_outcome.clone();
                if !matches!(outcome, Some((201, _))) {
                    // A client of a shop retries once, on another node.
                    outcome = api.order(second, &token, item, 1).await;
                }
                match outcome {
                    Some((201, _)) => {
                        done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    other => failures.lock().unwrap().push(format!(
                        "{first}: {first_outcome:?}, then {second}: {other:?} after {} ms",
                        started.elapsed().as_millis()
                    )),
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..nodes.len() {
        let id = nodes[i].id.clone();
        let code = nodes[i].terminate();
        assert_eq!(code, 0, "{id} stopped cleanly");
        nodes[i] = env.start(&id);
        bases.lock().unwrap()[i] = nodes[i].base.clone();
        wait_for_spread(&api, &nodes.iter().collect::<Vec<_>>(), &admin, 3).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    let done = done.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("rolling restart: {done} orders, {} failed", failures.len());
    assert!(done > 50, "the load ran: {done}");
    assert!(failures.is_empty(), "failed after one retry: {failures:?}");
    for item in items {
        let (sold, available, allotted) = units(&env, item).await;
        assert_eq!(sold + available + allotted, 100_000);
    }
}

fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// `host:port` of a PostgreSQL URL.
fn pg_host_port(url: &str) -> String {
    let after = url.split("://").nth(1).unwrap();
    let host = after.split('/').next().unwrap();
    host.rsplit('@').next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coupon_has_one_waiting_room_and_one_count_across_the_cluster() {
    let env = ClusterEnv::create().await;
    let api = Api::new();
    let nodes = [env.start("k1"), env.start("k2"), env.start("k3")];
    let admin = api.admin_token(&nodes[0].base).await;
    wait_for_spread(&api, &nodes.iter().collect::<Vec<_>>(), &admin, 3).await;
    let create = |name: &str, quantity: i64, room: Option<i64>| {
        let mut body = json!({"name": name, "discountRate": 10, "quantity": quantity});
        if let Some(rate) = room {
            body["waitingRoom"] = json!({"admitPerSecond": rate});
        }
        body
    };
    let post = |base: &str, token: &str, path: String, body: Option<Value>| {
        let mut request = api
            .http
            .post(format!("{base}{path}"))
            .bearer_auth(token.to_owned());
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send()
    };

    // A waiting room admitting one member a second: three members joining through three
    // different nodes get three different places in the one room of the coupon's owner.
    let room: Value = post(
        &nodes[0].base,
        &admin,
        "/api/v1/coupons".into(),
        Some(create("One room", 10, Some(1))),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let room_id = room["couponId"].as_i64().unwrap();
    let mut members = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        members.push(api.member(&node.base, &format!("roomer_{i}")).await);
    }
    let mut positions = Vec::new();
    for (node, token) in nodes.iter().zip(&members) {
        let answer = post(
            &node.base,
            token,
            format!("/api/v1/coupons/{room_id}/issue"),
            None,
        )
        .await
        .unwrap();
        let status = answer.status().as_u16();
        let body: Value = answer.json().await.unwrap();
        if status == 202 {
            positions.push(body["position"].as_u64().unwrap());
        } else {
            // The first one may be admitted at once by the room's first tick.
            assert_eq!(status, 201, "{body}");
            positions.push(0);
        }
    }
    let mut distinct = positions.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "one room, three places: {positions:?}");
    // Each member's standing reads the same room from any node.
    for (i, token) in members.iter().enumerate() {
        let other = &nodes[(i + 1) % 3];
        let (status, body, _) = api
            .get(
                format!("{}/api/v1/coupons/{room_id}/queue/me", other.base),
                token,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_ne!(body["status"], "NOT_QUEUED", "{body}");
    }
    // The coupon's shard is served by exactly one node, which answered the others' members.
    let shard = usize::try_from(room_id.rem_euclid(64)).unwrap();
    let mut owner = None;
    for node in &nodes {
        let view = api.cluster(&node.base, &admin).await;
        if view["shards"][shard]["owner"] == node.id.as_str() {
            owner = Some(node);
        }
    }
    let owner = owner.expect("the coupon's shard has an owner");
    let view = api.cluster(&owner.base, &admin).await;
    assert!(
        view["forwarding"]["couponOpsServedForPeers"]
            .as_u64()
            .unwrap()
            >= 2,
        "{view}"
    );

    // A first-come-first-served rush through all three nodes: exactly the quantity, nobody
    // twice.
    let rush: Value = post(
        &nodes[1].base,
        &admin,
        "/api/v1/coupons".into(),
        Some(create("Rush", 20, None)),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let rush_id = rush["couponId"].as_i64().unwrap();
    let mut tokens = Vec::new();
    for i in 0..30 {
        tokens.push(api.member(&nodes[i % 3].base, &format!("rusher_{i}")).await);
    }
    let mut tasks = Vec::new();
    for (i, token) in tokens.into_iter().enumerate() {
        let http = api.http.clone();
        let bases: Vec<String> = nodes.iter().map(|n| n.base.clone()).collect();
        tasks.push(tokio::spawn(async move {
            let mut issued = 0;
            for attempt in 0..2 {
                let base = &bases[(i + attempt) % 3];
                let answer = http
                    .post(format!("{base}/api/v1/coupons/{rush_id}/issue"))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .unwrap();
                if answer.status() == 201 {
                    issued += 1;
                }
            }
            issued
        }));
    }
    let mut issued = 0;
    for task in tasks {
        let n = task.await.unwrap();
        assert!(n <= 1, "a member got the coupon twice");
        issued += n;
    }
    assert_eq!(issued, 20, "exactly the quantity was issued");
    let (_, coupon, _) = api
        .get(
            format!("{}/api/v1/coupons/{rush_id}", nodes[2].base),
            &admin,
        )
        .await;
    assert_eq!(coupon["remaining"], 0, "{coupon}");
}

/// A member's orders on two nodes at once cannot pass the item's `maxPerMember` together: the
/// count is taken in each order's own write, under the database's row lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purchase_limit_holds_across_nodes() {
    let env = ClusterEnv::create().await;
    let api = Api::new();
    let nodes = [env.start("p1"), env.start("p2")];
    let admin = api.admin_token(&nodes[0].base).await;
    wait_for_spread(&api, &nodes.iter().collect::<Vec<_>>(), &admin, 2).await;
    let item = api
        .item_with(
            &nodes[0].base,
            &admin,
            json!({"name": "Three per fan", "price": 100, "stock": 1_000, "maxPerMember": 3}),
        )
        .await;
    let fan = api.member(&nodes[1].base, "limit_fan").await;
    // Twenty orders of one unit at once, half on each node.
    let attempts: Vec<_> = (0..20)
        .map(|i| {
            let base = nodes[i % 2].base.clone();
            let fan = fan.clone();
            let api = Api::new();
            tokio::spawn(async move { api.order(&base, &fan, item, 1).await })
        })
        .collect();
    let mut created = 0;
    for attempt in attempts {
        let (status, body) = attempt.await.unwrap().expect("both nodes answer");
        match status {
            201 => created += 1,
            409 => assert_eq!(body["code"], "PURCHASE_LIMIT", "{body}"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(created, 3, "exactly the limit passes");
    assert_eq!(units(&env, item).await.0, 3, "three units sold to the fan");
}
