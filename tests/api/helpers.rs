//! Boots a real node on port 0 against a fresh database (a new SQLite file, or a new
//! PostgreSQL database) and talks to it over HTTP with typed helpers.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Once;

use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{Value, json};
use sqlx::Connection;
use surge::{Application, Config, StopHandle};
use tokio::task::JoinHandle;

/// The bootstrap admin every test node gets.
pub const ADMIN_LOGIN: &str = "root_admin";
pub const ADMIN_PASSWORD: &str = "admin-password-for-tests";
/// The signing key handed to PostgreSQL nodes (embedded ones generate their own).
pub const PG_JWT_SECRET: &str = "test-only-signing-key-0123456789abcdef";

/// Which database a test node runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

static LOGGING: Once = Once::new();

fn init_logging() {
    LOGGING.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            surge::telemetry::init_logging("info,sqlx=warn");
        }
    });
}

#[path = "../support/services.rs"]
mod services;
use services::with_database;
pub use services::{pg_admin_url, redis_url};

#[path = "../support/poll.rs"]
mod poll;
pub use poll::poll_until;

/// A database for one test.
#[derive(Debug, Clone)]
pub struct TestDatabase {
    pub backend: Backend,
    pub url: String,
    /// The SQLite file's directory.
    pub dir: Option<PathBuf>,
    /// Extra node settings (`SURGE_*`), kept across restarts; they win over the defaults.
    pub settings: Vec<(&'static str, String)>,
}

impl TestDatabase {
    pub async fn create(backend: Backend) -> Self {
        let unique = uuid::Uuid::new_v4().simple().to_string();
        match backend {
            Backend::Sqlite => {
                let dir = std::env::temp_dir().join(format!("surge-test-{unique}"));
                std::fs::create_dir_all(&dir).unwrap();
                let url = format!("sqlite://{}/surge.db", dir.display());
                Self {
                    backend,
                    url,
                    dir: Some(dir),
                    settings: Vec::new(),
                }
            }
            Backend::Postgres => {
                sqlx::any::install_default_drivers();
                let admin = pg_admin_url();
                let name = format!("surge_test_{unique}");
                let mut conn = sqlx::AnyConnection::connect(&admin).await.expect(
                    "PostgreSQL must be reachable at SURGE_TEST_PG_URL (run scripts/test.sh)",
                );
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await
                    .unwrap();
                let _ = conn.close().await;
                Self {
                    backend,
                    url: with_database(&admin, &name),
                    dir: None,
                    settings: Vec::new(),
                }
            }
        }
    }

    /// Node configuration for this database.
    pub fn config(&self) -> Config {
        let mut vars = self.settings.clone();
        vars.extend([
            ("SURGE_HTTP_ADDR", "127.0.0.1:0".to_owned()),
            ("SURGE_DATABASE_URL", self.url.clone()),
            ("SURGE_BOOTSTRAP_ADMIN_LOGIN_ID", ADMIN_LOGIN.to_owned()),
            ("SURGE_BOOTSTRAP_ADMIN_PASSWORD", ADMIN_PASSWORD.to_owned()),
            // Debug builds on two shared cores are slow; a test that wants 202 sets its own.
            ("SURGE_ORDER_ANSWER_TIMEOUT_MS", "30000".to_owned()),
            ("SURGE_COUPON_ANSWER_TIMEOUT_MS", "30000".to_owned()),
            // Tests sign up and order from one address, with up to thousands of connections at
            // once; the rate-limit and connection tests set their own limits.
            ("SURGE_RATE_LIMITS", "off".to_owned()),
            ("SURGE_MAX_CONNECTIONS_PER_IP", "0".to_owned()),
        ]);
        if self.backend == Backend::Postgres {
            vars.push(("SURGE_JWT_SECRET", PG_JWT_SECRET.to_owned()));
        }
        Config::from_lookup(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.clone())
        })
        .unwrap()
    }

    /// The key the node signs with.
    pub fn jwt_secret(&self) -> String {
        match &self.dir {
            Some(dir) => std::fs::read_to_string(dir.join("jwt-secret"))
                .unwrap()
                .trim()
                .to_owned(),
            None => PG_JWT_SECRET.to_owned(),
        }
    }
}

/// A real outage of a test node's PostgreSQL database: new connections are refused and the
/// open ones are cut, until [`PgOutage::end`].
pub struct PgOutage {
    admin: sqlx::AnyConnection,
    database: String,
}

impl PgOutage {
    pub async fn begin(db: &TestDatabase) -> Self {
        assert_eq!(
            db.backend,
            Backend::Postgres,
            "outages are made on PostgreSQL"
        );
        let database = db
            .url
            .split('?')
            .next()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap()
            .to_owned();
        let mut admin = sqlx::AnyConnection::connect(&pg_admin_url()).await.unwrap();
        for sql in [
            format!("ALTER DATABASE {database} ALLOW_CONNECTIONS false"),
            format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}'"
            ),
        ] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut admin)
                .await
                .unwrap();
        }
        Self { admin, database }
    }

    pub async fn end(mut self) {
        let sql = format!("ALTER DATABASE {} ALLOW_CONNECTIONS true", self.database);
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut self.admin)
            .await
            .unwrap();
        let _ = self.admin.close().await;
    }
}

/// Bursts of thousands of concurrent connections, one test at a time: each costs two file
/// descriptors per connection (client and server side, same process), and two bursts at once
/// would pass the process's descriptor limit.
pub static BURST: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// Node settings for Redis mode with a fresh key prefix.
pub fn redis_settings() -> Vec<(&'static str, String)> {
    // Debug builds under a 5,000-request burst on two cores answer slowly.
    redis_settings_for(&redis_url(), 10_000)
}

/// Redis-mode settings for a Redis at `url` with a per-call timeout.
pub fn redis_settings_for(url: &str, timeout_ms: u64) -> Vec<(&'static str, String)> {
    let prefix = format!(
        "surge-test-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    vec![
        ("SURGE_REDIS_URL", url.to_owned()),
        ("SURGE_REDIS_KEY_PREFIX", prefix),
        ("SURGE_REDIS_TIMEOUT_MS", timeout_ms.to_string()),
    ]
}

/// One of the extra settings a test node was given.
pub fn setting(db: &TestDatabase, name: &str) -> Option<String> {
    db.settings
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.clone())
}

/// A connection to the test Redis.
pub async fn redis_connection() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// A running node and a client for it.
#[derive(Debug)]
pub struct TestApp {
    pub base: String,
    pub db: TestDatabase,
    pub client: reqwest::Client,
    stop: StopHandle,
    task: JoinHandle<std::io::Result<()>>,
}

/// A signed-in member.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub user_id: i64,
    pub login_id: String,
    pub password: String,
    pub access: String,
    pub refresh: String,
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> Self {
        Self::spawn_on(TestDatabase::create(backend).await).await
    }

    /// A node with extra settings, e.g. `[("SURGE_MAX_INFLIGHT_ORDERS", "1")]`.
    pub async fn spawn_with(backend: Backend, settings: &[(&'static str, &str)]) -> Self {
        let mut db = TestDatabase::create(backend).await;
        db.settings = settings
            .iter()
            .map(|(k, v)| (*k, (*v).to_owned()))
            .collect();
        Self::spawn_on(db).await
    }

    pub async fn spawn_on(db: TestDatabase) -> Self {
        init_logging();
        let app = Application::build(db.config()).await.unwrap();
        let addr = app.local_addr().unwrap();
        let stop = app.stop_handle();
        let task = tokio::spawn(app.run_until_stopped());
        Self {
            base: format!("http://{addr}"),
            db,
            client: reqwest::Client::builder().build().unwrap(),
            stop,
            task,
        }
    }

    /// Stops the node gracefully and waits for it.
    pub async fn stop(self) -> TestDatabase {
        self.stop.stop();
        self.task.await.unwrap().unwrap();
        self.db
    }

    /// Stops the node and starts a new one on the same database.
    pub async fn restart(self) -> Self {
        let db = self.stop().await;
        Self::spawn_on(db).await
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, format!("{}{path}", self.base))
    }

    pub fn get(&self, path: &str) -> RequestBuilder {
        self.request(Method::GET, path)
    }

    pub fn post(&self, path: &str) -> RequestBuilder {
        self.request(Method::POST, path)
    }

    pub async fn sign_up(&self, login_id: &str, password: &str, name: &str) -> (StatusCode, Value) {
        send(self.post("/api/v1/users").json(&json!({
            "loginId": login_id, "password": password, "name": name
        })))
        .await
    }

    pub async fn login(&self, login_id: &str, password: &str) -> (StatusCode, Value) {
        send(
            self.post("/api/v1/auth/login")
                .json(&json!({ "loginId": login_id, "password": password })),
        )
        .await
    }

    /// Signs up a new USER with a unique login id and logs in.
    pub async fn new_user(&self) -> TestUser {
        let login_id = format!("u{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let password = "password-123".to_owned();
        let (status, body) = self.sign_up(&login_id, &password, "Test Buyer").await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        self.logged_in(&login_id, &password, body["userId"].as_i64().unwrap())
            .await
    }

    /// Logs in as the bootstrap admin.
    pub async fn admin(&self) -> TestUser {
        let (status, body) = self.login(ADMIN_LOGIN, ADMIN_PASSWORD).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (_, me) = send(
            self.get("/api/v1/users/me")
                .bearer_auth(body["accessToken"].as_str().unwrap()),
        )
        .await;
        tokens_of(
            ADMIN_LOGIN,
            ADMIN_PASSWORD,
            me["userId"].as_i64().unwrap(),
            &body,
        )
    }

    async fn logged_in(&self, login_id: &str, password: &str, user_id: i64) -> TestUser {
        let (status, body) = self.login(login_id, password).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        tokens_of(login_id, password, user_id, &body)
    }

    /// `n` members for load-shaped tests. Their rows are written straight to the database and
    /// their access tokens signed with the node's own key, so a test with a thousand buyers
    /// does not spend a minute in argon2; sign-up and login themselves are tested in `auth`.
    pub async fn members(&self, n: usize) -> Vec<TestUser> {
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&self.db.url).await.unwrap();
        let mut tx = conn.begin().await.unwrap();
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..10];
        let mut users = Vec::with_capacity(n);
        for i in 0..n {
            let login_id = format!("m{tag}{i}");
            let (user_id,): (i64,) = sqlx::query_as(
                "INSERT INTO users (login_id, password_hash, name, role, created_at) \
                 VALUES ($1, 'not-a-hash', 'Bulk Buyer', 'USER', 0) RETURNING id",
            )
            .bind(&login_id)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
            users.push((user_id, login_id));
        }
        tx.commit().await.unwrap();
        let _ = conn.close().await;
        let key = jsonwebtoken::EncodingKey::from_secret(self.db.jwt_secret().as_bytes());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        users
            .into_iter()
            .map(|(user_id, login_id)| {
                let claims = json!({
                    "sub": user_id.to_string(), "sid": format!("bulk-{login_id}"),
                    "role": "USER", "iat": now, "exp": now + 3_600, "jti": login_id,
                });
                let access = jsonwebtoken::encode(
                    &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                    &claims,
                    &key,
                )
                .unwrap();
                TestUser {
                    user_id,
                    login_id,
                    password: String::new(),
                    access,
                    refresh: String::new(),
                }
            })
            .collect()
    }

    /// Runs one SQL query returning a count against the node's database, with one bound id.
    pub async fn count(&self, sql: &str, id: i64) -> i64 {
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&self.db.url).await.unwrap();
        let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(sql.to_owned()))
            .bind(id)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        let _ = conn.close().await;
        n
    }

    /// Places an order (`body` is the request JSON) as `user`.
    pub async fn place_order(&self, user: &TestUser, body: Value) -> (StatusCode, Value) {
        send(
            self.post("/api/v1/orders")
                .bearer_auth(&user.access)
                .json(&body),
        )
        .await
    }

    /// `n` identical orders by `user` sent at once, each on a connection of its own; their
    /// answers in no particular order.
    pub async fn orders_at_once(
        &self,
        user: &TestUser,
        body: Value,
        n: usize,
    ) -> Vec<(StatusCode, Value)> {
        let attempts: Vec<_> = (0..n)
            .map(|_| {
                let request = reqwest::Client::new()
                    .post(format!("{}/api/v1/orders", self.base))
                    .bearer_auth(&user.access)
                    .json(&body);
                tokio::spawn(send(request))
            })
            .collect();
        let mut answers = Vec::with_capacity(n);
        for attempt in attempts {
            answers.push(attempt.await.unwrap());
        }
        answers
    }

    /// Creates an item as the admin and returns its JSON.
    pub async fn create_item(&self, admin: &TestUser, name: &str, price: i64, stock: i64) -> Value {
        let (status, body) = send(
            self.post("/api/v1/items")
                .bearer_auth(&admin.access)
                .json(&json!({ "name": name, "price": price, "stock": stock })),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }
}

fn tokens_of(login_id: &str, password: &str, user_id: i64, body: &Value) -> TestUser {
    TestUser {
        user_id,
        login_id: login_id.to_owned(),
        password: password.to_owned(),
        access: body["accessToken"].as_str().unwrap().to_owned(),
        refresh: body["refreshToken"].as_str().unwrap().to_owned(),
    }
}

/// Sends a request and returns the status and the JSON body (Null when there is none).
pub async fn send(request: RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.unwrap();
    let status = response.status();
    let bytes = response.bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("not JSON ({status}): {}", String::from_utf8_lossy(&bytes)))
    };
    (status, body)
}

/// How many of `answers` are 201; asserts every other one is the refusal `status`/`code`.
#[track_caller]
pub fn created_else(answers: &[(StatusCode, Value)], status: u16, code: &str) -> usize {
    answers
        .iter()
        .filter(|answer| {
            let created = answer.0 == StatusCode::CREATED;
            if !created {
                assert_error(answer, status, code);
            }
            created
        })
        .count()
}

/// Asserts an error answer: status, code, and that it has a message.
#[track_caller]
pub fn assert_error(actual: &(StatusCode, Value), status: u16, code: &str) {
    let (got_status, body) = actual;
    assert_eq!(got_status.as_u16(), status, "body: {body}");
    assert_eq!(body["code"], code, "body: {body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error without a message: {body}"
    );
}

/// Runs a test body once on SQLite and once on PostgreSQL, each with a fresh node.
#[macro_export]
macro_rules! on_both_backends {
    ($(async fn $name:ident($app:ident: TestApp) $body:block)*) => {
        $(
            mod $name {
                #[allow(unused_imports)]
                use super::*;
                #[allow(unused_imports)]
                use $crate::helpers::*;

                async fn run($app: TestApp) $body

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    run(TestApp::spawn(Backend::Sqlite).await).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    run(TestApp::spawn(Backend::Postgres).await).await;
                }
            }
        )*
    };
}

#[path = "../support/tcp_cut.rs"]
mod tcp_cut;
pub use tcp_cut::TcpCut;
