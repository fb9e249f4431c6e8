//! A network partition between nodes, made with a network namespace and veth pairs.
//!
//! Node "c" runs in its own namespace with two links to the host: one that reaches PostgreSQL
//! and Redis (through forwarders the test runs on the host side) and carries the test's own
//! calls, and one that carries cluster traffic to and from "a" and "b". Taking the cluster
//! link down partitions the nodes while every node still reaches the database: "c" keeps its
//! leases (it can renew them), so it must stay the only owner of its shards; "a" must not sell
//! "c"'s items (it cannot reach the owner) and must refuse fast once the peer's breaker opens.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Api, ClusterEnv, poll_until, wait_for_spread};
use crate::tcp_cut::TcpCut;
use crate::units;

/// A namespace and its two veth pairs, removed on drop (even when the test fails).
struct Netns {
    name: String,
    db_host_if: String,
    cluster_host_if: String,
    /// 10.A.B.0/30: the database link; 10.A.B.4/30: the cluster link.
    prefix: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

impl Netns {
    fn create() -> Result<Self, String> {
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..6];
        let random = u32::from_str_radix(tag, 16).unwrap_or(0);
        let ns = Self {
            name: format!("surge-pt-{tag}"),
            db_host_if: format!("vhd{tag}"),
            cluster_host_if: format!("vhc{tag}"),
            prefix: format!("10.{}.{}", 200 + random % 50, (random >> 8) % 256),
        };
        ip(&["netns", "add", &ns.name])?;
        let p = &ns.prefix;
        for (host_if, peer_if, host_ip, peer_ip) in [
            (
                ns.db_host_if.clone(),
                format!("vnd{tag}"),
                format!("{p}.1/30"),
                format!("{p}.2/30"),
            ),
            (
                ns.cluster_host_if.clone(),
                format!("vnc{tag}"),
                format!("{p}.5/30"),
                format!("{p}.6/30"),
            ),
        ] {
            ip(&[
                "link", "add", &host_if, "type", "veth", "peer", "name", &peer_if,
            ])?;
            ip(&["link", "set", &peer_if, "netns", &ns.name])?;
            ip(&["addr", "add", &host_ip, "dev", &host_if])?;
            ip(&["link", "set", &host_if, "up"])?;
            ip(&[
                "netns", "exec", &ns.name, "ip", "addr", "add", &peer_ip, "dev", &peer_if,
            ])?;
            ip(&[
                "netns", "exec", &ns.name, "ip", "link", "set", &peer_if, "up",
            ])?;
        }
        ip(&["netns", "exec", &ns.name, "ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    fn db_host(&self) -> String {
        format!("{}.1", self.prefix)
    }
    fn db_peer(&self) -> String {
        format!("{}.2", self.prefix)
    }
    fn cluster_host(&self) -> String {
        format!("{}.5", self.prefix)
    }
    fn cluster_peer(&self) -> String {
        format!("{}.6", self.prefix)
    }

    /// Cuts (or heals) the cluster link: no packet between "c" and the other nodes.
    fn cluster_link(&self, up: bool) {
        ip(&[
            "link",
            "set",
            &self.cluster_host_if,
            if up { "up" } else { "down" },
        ])
        .unwrap();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.db_host_if]);
        let _ = ip(&["link", "del", &self.cluster_host_if]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// `host:port` after the scheme and credentials of a URL.
fn host_port(url: &str) -> String {
    let after = url.split("://").nth(1).unwrap();
    let host = after.split(['/', '?']).next().unwrap();
    host.rsplit('@').next().unwrap().to_owned()
}

async fn circuit_state(api: &Api, base: &str, admin: &str, peer: &str) -> Option<String> {
    let (_, body, _) = api
        .get(format!("{base}/api/v1/admin/circuits"), admin)
        .await;
    body["circuits"]
        .as_array()?
        .iter()
        .find(|c| {
            c["dependency"]
                .as_str()
                .is_some_and(|d| d.starts_with(&format!("{peer}@")))
        })
        .and_then(|c| c["state"].as_str().map(str::to_owned))
}

async fn lease_of(env: &ClusterEnv, shard: i64) -> (String, i64) {
    let mut db = env.sql().await;
    let row: (String, i64) =
        sqlx::query_as("SELECT owner, epoch FROM shard_leases WHERE shard = $1")
            .bind(shard)
            .fetch_one(&mut db)
            .await
            .unwrap();
    let _ = sqlx::Connection::close(db).await;
    row
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_between_nodes_never_makes_two_owners_and_heals() {
    // Root can make namespaces here; where it cannot, this test fails with the reason
    // rather than pass without having run.
    let ns = Netns::create().unwrap_or_else(|e| {
        panic!("cannot make a network namespace (root and iproute2 are needed): {e}")
    });
    let env = ClusterEnv::create().await;
    let api = Api::new();
    // "c" reaches PostgreSQL and Redis through forwarders on the host end of its database link.
    let pg = TcpCut::start_on(&format!("{}:0", ns.db_host()), &host_port(&env.db_url)).await;
    let redis_target = host_port(&crate::harness::redis_url());
    let redis = TcpCut::start_on(&format!("{}:0", ns.db_host()), &redis_target).await;
    let c_db = env
        .db_url
        .replacen(&host_port(&env.db_url), &pg.addr.to_string(), 1);
    let c_redis = crate::harness::redis_url().replacen(&redis_target, &redis.addr.to_string(), 1);
    let cluster_on_host = format!("{}:0", ns.cluster_host());
    let a = env.start_with("a", &[("SURGE_CLUSTER_ADDR", cluster_on_host.clone())]);
    let b = env.start_with("b", &[("SURGE_CLUSTER_ADDR", cluster_on_host)]);
    let c = env.start_in(
        Some(&ns.name),
        "c",
        &[
            ("SURGE_DATABASE_URL", c_db),
            ("SURGE_REDIS_URL", c_redis),
            ("SURGE_HTTP_ADDR", format!("{}:0", ns.db_peer())),
            ("SURGE_CLUSTER_ADDR", format!("{}:0", ns.cluster_peer())),
        ],
    );
    let admin = api.admin_token(&a.base).await;
    wait_for_spread(&api, &[&a, &b, &c], &admin, 3).await;

    // One item owned by "c", one by "a".
    let (mut on_c, mut on_a) = (0, 0);
    while on_c == 0 || on_a == 0 {
        let item = api.item(&a.base, &admin, 1_000).await;
        match api.owner_of(&a.base, &admin, item).await.as_deref() {
            Some("c") if on_c == 0 => on_c = item,
            Some("a") if on_a == 0 => on_a = item,
            _ => {}
        }
    }
    let buyer = api.member(&a.base, "partitioned_buyer").await;
    let (status, _) = api.order(&a.base, &buyer, on_c, 1).await.unwrap();
    assert_eq!(status, 201, "forwarded to c before the partition");
    let shard = on_c.rem_euclid(64);
    let before = lease_of(&env, shard).await;
    assert_eq!(before.0, "c");

    ns.cluster_link(false);
    let partitioned = Instant::now();
    let mut refused = 0;
    // For at least three leases, and until "a"'s breaker for "c" has opened: "c" keeps
    // selling its item, "a" keeps selling its own, and "a" never sells "c"'s item (it cannot
    // reach the owner, and nobody else may own it).
    loop {
        let (status, body) = api.order(&c.base, &buyer, on_c, 1).await.unwrap();
        assert_eq!(status, 201, "the owner sells its own item: {body}");
        let (status, _) = api.order(&a.base, &buyer, on_a, 1).await.unwrap();
        assert_eq!(status, 201, "a sells its own item");
        let (status, body) = api.order(&a.base, &buyer, on_c, 1).await.unwrap();
        assert_ne!(status, 201, "a sold c's item across the partition: {body}");
        assert_eq!(status, 503, "{body}");
        refused += 1;
        let open = circuit_state(&api, &a.base, &admin, "peer:c")
            .await
            .as_deref()
            == Some("open");
        if open && partitioned.elapsed() >= Duration::from_millis(3 * crate::harness::LEASE_MS) {
            break;
        }
        assert!(
            partitioned.elapsed() < Duration::from_secs(60),
            "a's breaker for c never opened"
        );
    }
    assert_eq!(
        lease_of(&env, shard).await,
        before,
        "the shard changed hands while its owner could still renew it"
    );
    let sent = Instant::now();
    let (status, _) = api.order(&a.base, &buyer, on_c, 1).await.unwrap();
    let open_refusal = sent.elapsed();
    assert_eq!(status, 503);
    eprintln!(
        "partition: {refused} orders for c's item refused on a in {} ms; with the breaker open \
         a refusal takes {} ms",
        partitioned.elapsed().as_millis(),
        open_refusal.as_millis()
    );

    // Heal: "a" sells "c"'s item again through "c".
    ns.cluster_link(true);
    poll_until(
        Duration::from_secs(15),
        "a to sell c's item again",
        || async {
            api.order(&a.base, &buyer, on_c, 1)
                .await
                .filter(|(s, _)| *s == 201)
        },
    )
    .await;
    for item in [on_c, on_a] {
        let (sold, available, allotted) = units(&env, item).await;
        assert_eq!(
            sold + available + allotted,
            1_000,
            "units of {item} conserved"
        );
    }
    let view: Value = api.cluster(&c.base, &admin).await;
    assert_eq!(view["node"]["nodeId"], "c");
    drop((a, b, c));
}
