//! Real `surge` processes in a cluster on loopback: one fresh PostgreSQL database and Redis
//! key prefix per test, a node per process, typed helpers for the calls the tests make.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::Connection;

pub const ADMIN_LOGIN: &str = "cluster_admin";
pub const ADMIN_PASSWORD: &str = "cluster-admin-password";
pub const CLUSTER_SECRET: &str = "test-cluster-secret-test-cluster-secret-0123";
/// Short leases keep the tests short; the default is 3000.
pub const LEASE_MS: u64 = 1_500;

pub use crate::poll::poll_until;
pub use crate::services::{pg_admin_url, redis_url, with_database};

/// A fresh database and Redis prefix shared by the nodes of one test.
pub struct ClusterEnv {
    pub db_url: String,
    pub redis_prefix: String,
}

impl ClusterEnv {
    pub async fn create() -> Self {
        sqlx::any::install_default_drivers();
        let unique = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("surge_cluster_{unique}");
        let admin = pg_admin_url();
        let mut conn = sqlx::AnyConnection::connect(&admin)
            .await
            .expect("PostgreSQL must be reachable at SURGE_TEST_PG_URL (run scripts/test.sh)");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        let _ = conn.close().await;
        Self {
            db_url: with_database(&admin, &name),
            redis_prefix: format!("cl{}", &unique[..12]),
        }
    }

    /// The settings every node of this cluster shares, for node `id`.
    pub fn settings(&self, id: &str) -> Vec<(String, String)> {
        [
            ("SURGE_DATABASE_URL", self.db_url.clone()),
            ("SURGE_REDIS_URL", redis_url()),
            ("SURGE_REDIS_KEY_PREFIX", self.redis_prefix.clone()),
            (
                "SURGE_JWT_SECRET",
                "cluster-test-jwt-secret-cluster-test-jwt".into(),
            ),
            ("SURGE_CLUSTER_SECRET", CLUSTER_SECRET.into()),
            ("SURGE_CLUSTER_ADDR", "127.0.0.1:0".into()),
            ("SURGE_NODE_ID", id.into()),
            ("SURGE_LEASE_MS", LEASE_MS.to_string()),
            ("SURGE_BOOTSTRAP_ADMIN_LOGIN_ID", ADMIN_LOGIN.into()),
            ("SURGE_BOOTSTRAP_ADMIN_PASSWORD", ADMIN_PASSWORD.into()),
            ("SURGE_RESERVATION_TTL_MS", "1500".into()),
            ("SURGE_RATE_LIMITS", "off".into()),
            ("SURGE_MAX_CONNECTIONS_PER_IP", "0".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// Starts node `id` and waits until it is ready.
    pub fn start(&self, id: &str) -> Node {
        self.start_with(id, &[])
    }

    /// Starts node `id` with extra or replaced settings.
    pub fn start_with(&self, id: &str, extra: &[(&str, String)]) -> Node {
        self.start_in(None, id, extra)
    }

    /// Starts node `id` inside the network namespace `netns` (when given).
    pub fn start_in(&self, netns: Option<&str>, id: &str, extra: &[(&str, String)]) -> Node {
        let mut settings: HashMap<String, String> = self.settings(id).into_iter().collect();
        for (k, v) in extra {
            settings.insert((*k).to_owned(), v.clone());
        }
        Node::spawn(id, &settings, netns)
    }

    /// Runs the node to its exit (a node that must refuse to start); returns its exit code
    /// and what it wrote.
    pub fn run_to_exit(&self, id: &str, extra: &[(&str, String)]) -> (i32, String) {
        let mut settings: HashMap<String, String> = self.settings(id).into_iter().collect();
        for (k, v) in extra {
            settings.insert((*k).to_owned(), v.clone());
        }
        let output = command(&settings, None)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// A connection to the test's database.
    pub async fn sql(&self) -> sqlx::AnyConnection {
        sqlx::AnyConnection::connect(&self.db_url).await.unwrap()
    }
}

fn command(settings: &HashMap<String, String>, netns: Option<&str>) -> Command {
    let mut command = match netns {
        None => Command::new(env!("CARGO_BIN_EXE_surge")),
        Some(ns) => {
            // `ip netns exec` enters the namespace and execs the node (same pid).
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_surge")]);
            c
        }
    };
    command.env_clear();
    command
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SURGE_HTTP_ADDR", "127.0.0.1:0")
        .env(
            "RUST_LOG",
            std::env::var("TEST_LOG").map_or_else(|_| "info".to_owned(), |_| "debug".to_owned()),
        )
        .stdin(Stdio::null());
    for (k, v) in settings {
        command.env(k, v);
    }
    command
}

/// A running node.
pub struct Node {
    pub id: String,
    pub child: Child,
    pub base: String,
}

impl Node {
    #[allow(clippy::zombie_processes)]
    fn spawn(id: &str, settings: &HashMap<String, String>, netns: Option<&str>) -> Self {
        let mut child = command(settings, netns)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let echo = std::env::var("TEST_LOG").is_ok();
        let tag = id.to_owned();
        // Drain the pipe for the child's whole life so it never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if echo {
                    eprintln!("[{tag}] {line}");
                }
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("node {id} never became ready"));
            if line.contains("surge ready")
                && let Some(rest) = line.split("addr=").nth(1)
            {
                let addr = rest.split_whitespace().next().unwrap();
                return Self {
                    id: id.to_owned(),
                    child,
                    base: format!("http://{addr}"),
                };
            }
        }
    }

    pub fn kill_9(&mut self) {
        let status = Command::new("kill")
            .args(["-KILL", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        self.child.wait().unwrap();
    }

    /// SIGTERM, then waits for the exit; returns the exit code.
    pub fn terminate(&mut self) -> i32 {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        self.child.wait().unwrap().code().unwrap_or(-1)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client of the public API.
#[derive(Clone)]
pub struct Api {
    pub http: reqwest::Client,
}

impl Api {
    pub fn new() -> Self {
        Self {
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        }
    }

    pub async fn login(&self, base: &str, login: &str, password: &str) -> String {
        let body: Value = self
            .http
            .post(format!("{base}/api/v1/auth/login"))
            .json(&json!({"loginId": login, "password": password}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["accessToken"]
            .as_str()
            .unwrap_or_else(|| panic!("login failed: {body}"))
            .to_owned()
    }

    pub async fn admin_token(&self, base: &str) -> String {
        self.login(base, ADMIN_LOGIN, ADMIN_PASSWORD).await
    }

    /// Signs a member up and logs in; returns the access token.
    pub async fn member(&self, base: &str, login: &str) -> String {
        let password = "member-password-1";
        let response = self
            .http
            .post(format!("{base}/api/v1/users"))
            .json(&json!({"loginId": login, "password": password, "name": "Buyer"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "sign-up of {login}");
        self.login(base, login, password).await
    }

    pub async fn get(&self, url: String, token: &str) -> (u16, Value, Option<String>) {
        let response = self.http.get(url).bearer_auth(token).send().await.unwrap();
        let status = response.status().as_u16();
        let node = response
            .headers()
            .get("x-surge-node")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        (status, response.json().await.unwrap_or(Value::Null), node)
    }

    pub async fn item(&self, base: &str, admin: &str, stock: i64) -> i64 {
        self.item_with(
            base,
            admin,
            json!({"name": "Limited drop", "price": 1000, "stock": stock}),
        )
        .await
    }

    /// Creates an item from `body` (the request JSON); returns its id.
    pub async fn item_with(&self, base: &str, admin: &str, body: Value) -> i64 {
        let body: Value = self
            .http
            .post(format!("{base}/api/v1/items"))
            .bearer_auth(admin)
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["itemId"].as_i64().unwrap()
    }

    /// Places an order of `quantity` units of `item`; returns the status and body, or `None`
    /// when the node could not be reached.
    pub async fn order(
        &self,
        base: &str,
        token: &str,
        item: i64,
        quantity: i64,
    ) -> Option<(u16, Value)> {
        let response = self
            .http
            .post(format!("{base}/api/v1/orders"))
            .bearer_auth(token)
            .json(&json!({"lines": [{"itemId": item, "quantity": quantity}]}))
            .send()
            .await
            .ok()?;
        let status = response.status().as_u16();
        Some((status, response.json().await.unwrap_or(Value::Null)))
    }

    pub async fn cluster(&self, base: &str, admin: &str) -> Value {
        self.get(format!("{base}/api/v1/admin/cluster"), admin)
            .await
            .1
    }

    pub async fn owner_of(&self, base: &str, admin: &str, item: i64) -> Option<String> {
        let (_, body, _) = self
            .get(format!("{base}/api/v1/admin/cluster/items/{item}"), admin)
            .await;
        body["owner"].as_str().map(str::to_owned)
    }
}

/// Waits until every node sees `members` UP members that split every shard between them
/// (each within one of the fair share) with none free.
pub async fn wait_for_spread(api: &Api, nodes: &[&Node], admin: &str, members: usize) {
    for node in nodes {
        poll_until(Duration::from_secs(20), "the shards to spread", || async {
            let view = api.cluster(&node.base, admin).await;
            let up: Vec<i64> = view["members"]
                .as_array()?
                .iter()
                .filter(|m| m["state"] == "UP")
                .map(|m| m["shardsOwned"].as_i64().unwrap_or(0))
                .collect();
            let shards = view["shardCount"].as_i64()?;
            let free = view["shards"]
                .as_array()?
                .iter()
                .filter(|s| s["owner"].is_null())
                .count();
            let fair = shards / i64::try_from(members).ok()?;
            let spread = up.len() == members
                && free == 0
                && up.iter().sum::<i64>() == shards
                && up.iter().all(|n| (*n - fair).abs() <= 1);
            spread.then_some(())
        })
        .await;
    }
}
