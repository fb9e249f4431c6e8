//! The nodes `surge bench` starts itself: one when it is given no `--url`, and one per stock
//! strategy for `surge bench compare`.
//!
//! The `surge` binary builds and runs them through [`Launcher`] (this crate cannot depend on
//! the node's crate, which depends on it); this module decides what differs from `surge serve`:
//! a fresh database (a temporary SQLite directory, or a scratch PostgreSQL database), a loopback
//! port chosen by the system, a known ADMIN and, for a comparison, the stock strategy and a
//! fresh Redis key prefix. It also removes that data again once the node has stopped.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use sqlx::Connection as _;

use crate::cli::{ADMIN_LOGIN_ID_VAR, ADMIN_PASSWORD_VAR};
use crate::compare::Strategy;
use crate::error::BenchError;
use crate::scenarios::AdminCredentials;

/// The ADMIN login id of an embedded node when none is given.
pub const DEFAULT_ADMIN_LOGIN_ID: &str = "bench_admin";
/// Name prefix of the scratch PostgreSQL databases; the rest is a random UUID.
pub const SCRATCH_DATABASE_PREFIX: &str = "surge_bench_";
/// Prefix of the Redis key prefixes a comparison gives its nodes; the rest is a random UUID
/// (44 characters in all, within the node's limit of 64).
pub const SCRATCH_REDIS_PREFIX: &str = "surge-bench-";
/// The longest wait for one clean-up step (dropping a database, deleting Redis keys): a server
/// that stopped answering must not hang the end of a run.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Keys asked for per Redis `SCAN` step when a prefix is deleted.
const SCAN_BATCH: usize = 1_000;

/// Starts and stops nodes inside this process. The `surge` binary implements it with
/// `surge::Application`.
pub trait Launcher {
    /// A node that is serving.
    type Running;

    /// Builds a node whose `SURGE_*` settings `lookup` gives (`None`: unset), starts serving
    /// and returns it with its base URL (`http://127.0.0.1:<port>`).
    fn start(
        &self,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> impl Future<Output = Result<(Self::Running, String), LaunchError>>;

    /// Stops the node and waits until it has (in-flight requests finished, database closed);
    /// the error says what went wrong while it served or stopped.
    fn stop(&self, node: Self::Running) -> impl Future<Output = Result<(), String>>;
}

/// Why an embedded node did not start.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// A setting (from the environment, usually) the node refuses; the same for every node.
    #[error("invalid configuration for the embedded node: {0}")]
    Config(String),
    /// The node could not open its database, bind its port, reach Redis, ….
    #[error("the embedded node could not start: {0}")]
    Start(String),
}

/// The database of an embedded node.
#[derive(Debug)]
pub enum NodeDatabase {
    /// A new directory under the system's temporary directory holding the SQLite file and the
    /// signing key the node generates; removed afterwards.
    Sqlite { data_dir: PathBuf },
    /// A scratch database on a PostgreSQL server, dropped afterwards. Such a node needs a
    /// signing key from outside: a random one, made for this node alone.
    Postgres {
        database: ScratchDatabase,
        jwt_secret: String,
    },
}

impl NodeDatabase {
    /// A fresh temporary SQLite directory (the node creates it).
    pub fn sqlite() -> Self {
        let unique = uuid::Uuid::new_v4().simple();
        Self::Sqlite {
            data_dir: std::env::temp_dir().join(format!("surge-bench-{unique}")),
        }
    }

    /// `database` with a random signing key: two v4 UUIDs, 64 hex digits carrying 244 random
    /// bits from the operating system's generator (the node wants at least 32 bytes).
    pub fn postgres(database: ScratchDatabase) -> Self {
        let jwt_secret = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        Self::Postgres {
            database,
            jwt_secret,
        }
    }

    /// `sqlite` or `postgres`, for reports.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Sqlite { .. } => "sqlite",
            Self::Postgres { .. } => "postgres",
        }
    }
}

/// A database `surge bench` created on a PostgreSQL server for one node.
#[derive(Debug)]
pub struct ScratchDatabase {
    /// The server URL it was created through (its own database is the maintenance one).
    server_url: String,
    name: String,
}

impl ScratchDatabase {
    /// Creates `surge_bench_<random>` on the server `server_url` points at.
    pub async fn create(server_url: &str) -> Result<Self, BenchError> {
        let name = format!("{SCRATCH_DATABASE_PREFIX}{}", uuid::Uuid::new_v4().simple());
        let what = format!("creating the PostgreSQL database {name}");
        execute_on_server(server_url, format!("CREATE DATABASE {name}"), &what).await?;
        Ok(Self {
            server_url: server_url.to_owned(),
            name,
        })
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The URL a node connects with: the server URL with this database in its path.
    pub fn url(&self) -> String {
        with_database(&self.server_url, &self.name)
    }

    /// Drops the database, cutting any connection still open to it (PostgreSQL 13 or later).
    pub async fn drop_database(&self) -> Result<(), BenchError> {
        let what = format!("dropping the PostgreSQL database {}", self.name);
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        execute_on_server(&self.server_url, sql, &what).await
    }
}

/// Runs one statement on the server's maintenance database, within [`CLEANUP_TIMEOUT`].
async fn execute_on_server(server_url: &str, sql: String, what: &str) -> Result<(), BenchError> {
    let scratch = |detail: String| BenchError::Scratch {
        what: what.to_owned(),
        detail,
    };
    let work = async {
        let mut conn = sqlx::PgConnection::connect(server_url)
            .await
            .map_err(|e| scratch(e.to_string()))?;
        let done = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .map(drop)
            .map_err(|e| scratch(e.to_string()));
        let _ = conn.close().await;
        done
    };
    tokio::time::timeout(CLEANUP_TIMEOUT, work)
        .await
        .map_err(|_| scratch(format!("no answer within {CLEANUP_TIMEOUT:?}")))?
}

/// `url` with its database (the path) replaced by `name`, keeping user, host and parameters.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let (scheme, rest) = base.split_once("://").unwrap_or(("postgres", base));
    let authority = rest
        .split_once('/')
        .map_or(rest, |(authority, _)| authority);
    match query {
        Some(q) => format!("{scheme}://{authority}/{name}?{q}"),
        None => format!("{scheme}://{authority}/{name}"),
    }
}

/// A Redis server and a key prefix no other node uses; its keys are deleted afterwards.
#[derive(Debug, Clone)]
pub struct RedisNamespace {
    url: String,
    prefix: String,
}

impl RedisNamespace {
    /// A fresh prefix `surge-bench-<random>` on the Redis at `url`.
    pub fn fresh(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            prefix: format!("{SCRATCH_REDIS_PREFIX}{}", uuid::Uuid::new_v4().simple()),
        }
    }

    /// Deletes every key under the prefix (`<prefix>:*`), within [`CLEANUP_TIMEOUT`].
    pub async fn delete_keys(&self) -> Result<(), BenchError> {
        let scratch = |detail: String| BenchError::Scratch {
            what: format!("deleting the Redis keys {}:*", self.prefix),
            detail,
        };
        let work = async {
            let client = redis::Client::open(self.url.as_str())?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            let pattern = format!("{}:*", self.prefix);
            let mut cursor: u64 = 0;
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(SCAN_BATCH)
                    .query_async(&mut conn)
                    .await?;
                if !keys.is_empty() {
                    let _: u64 = redis::cmd("UNLINK")
                        .arg(&keys)
                        .query_async(&mut conn)
                        .await?;
                }
                if next == 0 {
                    return Ok::<(), redis::RedisError>(());
                }
                cursor = next;
            }
        };
        tokio::time::timeout(CLEANUP_TIMEOUT, work)
            .await
            .map_err(|_| scratch(format!("no answer within {CLEANUP_TIMEOUT:?}")))?
            .map_err(|e| scratch(e.to_string()))
    }
}

/// The plan of an embedded node.
#[derive(Debug)]
pub struct EmbeddedNode {
    pub database: NodeDatabase,
    /// The given ADMIN, or [`DEFAULT_ADMIN_LOGIN_ID`] with a random password.
    pub admin: AdminCredentials,
    /// `SURGE_STOCK_STRATEGY` of a comparison run; `None`: as the environment says.
    pub stock_strategy: Option<Strategy>,
    /// `SURGE_REDIS_URL` and a fresh `SURGE_REDIS_KEY_PREFIX` of a comparison run; `None`: as
    /// the environment says.
    pub redis: Option<RedisNamespace>,
}

impl EmbeddedNode {
    /// A node on a fresh temporary SQLite database, everything else from the environment.
    pub fn plan(admin: Option<AdminCredentials>) -> Self {
        Self::on(NodeDatabase::sqlite(), admin)
    }

    /// A node on `database`.
    pub fn on(database: NodeDatabase, admin: Option<AdminCredentials>) -> Self {
        let admin = admin.unwrap_or_else(|| AdminCredentials {
            login_id: DEFAULT_ADMIN_LOGIN_ID.to_owned(),
            password: uuid::Uuid::new_v4().simple().to_string(),
        });
        Self {
            database,
            admin,
            stock_strategy: None,
            redis: None,
        }
    }

    /// The same node with `strategy`, and with Redis in a namespace of its own when given.
    pub fn with_strategy(mut self, strategy: Strategy, redis: Option<RedisNamespace>) -> Self {
        self.stock_strategy = Some(strategy);
        self.redis = redis;
        self
    }

    /// The value of node setting `name` where it differs from `surge serve`; `None` means
    /// "as the environment says" (so `SURGE_FLUSH_TICK_MS` and the like still apply), and an
    /// empty value means unset. `SURGE_ADMIN_ADDR` is always unset: a fixed operators' port
    /// could collide.
    pub fn setting(&self, name: &str) -> Option<String> {
        match name {
            "SURGE_HTTP_ADDR" => Some("127.0.0.1:0".to_owned()),
            "SURGE_DATABASE_URL" => Some(match &self.database {
                NodeDatabase::Sqlite { data_dir } => {
                    format!("sqlite://{}/surge.db", data_dir.display())
                }
                NodeDatabase::Postgres { database, .. } => database.url(),
            }),
            "SURGE_JWT_SECRET" => match &self.database {
                NodeDatabase::Sqlite { .. } => None,
                NodeDatabase::Postgres { jwt_secret, .. } => Some(jwt_secret.clone()),
            },
            "SURGE_ADMIN_ADDR" => Some(String::new()),
            "SURGE_STOCK_STRATEGY" => self.stock_strategy.map(|s| s.name().to_owned()),
            "SURGE_REDIS_URL" => self.redis.as_ref().map(|r| r.url.clone()),
            "SURGE_REDIS_KEY_PREFIX" => self.redis.as_ref().map(|r| r.prefix.clone()),
            ADMIN_LOGIN_ID_VAR => Some(self.admin.login_id.clone()),
            ADMIN_PASSWORD_VAR => Some(self.admin.password.clone()),
            _ => None,
        }
    }

    /// Removes what the node stored (call after it stopped): its SQLite directory or its
    /// scratch database, and its Redis keys. Every step is tried; the first failure is
    /// returned.
    pub async fn discard(&self) -> Result<(), BenchError> {
        let database = match &self.database {
            NodeDatabase::Sqlite { data_dir } => match std::fs::remove_dir_all(data_dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(BenchError::Scratch {
                    what: format!("removing {}", data_dir.display()),
                    detail: e.to_string(),
                }),
                _ => Ok(()),
            },
            NodeDatabase::Postgres { database, .. } => database.drop_database().await,
        };
        let redis = match &self.redis {
            Some(namespace) => namespace.delete_keys().await,
            None => Ok(()),
        };
        database.and(redis)
    }
}

/// Starts `node` through `launcher`, runs `work` against its URL with its ADMIN, stops it and
/// discards its data, whatever `work` found. Trouble stopping or cleaning up is reported on
/// stderr rather than returned: the run's result stands.
pub async fn with_node<L: Launcher, T>(
    launcher: &L,
    node: &EmbeddedNode,
    work: impl AsyncFnOnce(&str, &AdminCredentials) -> T,
) -> Result<T, LaunchError> {
    let lookup = |name: &str| node.setting(name).or_else(|| std::env::var(name).ok());
    let outcome = match launcher.start(&lookup).await {
        Ok((running, url)) => {
            let found = work(&url, &node.admin).await;
            if let Err(e) = launcher.stop(running).await {
                eprintln!("surge bench: the embedded node stopped with an error: {e}");
            }
            Ok(found)
        }
        Err(e) => Err(e),
    };
    if let Err(e) = node.discard().await {
        eprintln!("surge bench: {e}");
    }
    outcome
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn data_dir(node: &EmbeddedNode) -> &PathBuf {
        match &node.database {
            NodeDatabase::Sqlite { data_dir } => data_dir,
            NodeDatabase::Postgres { .. } => panic!("not SQLite"),
        }
    }

    #[test]
    fn each_plan_gets_its_own_directory_and_a_loopback_port() {
        let a = EmbeddedNode::plan(None);
        let b = EmbeddedNode::plan(None);
        assert_ne!(data_dir(&a), data_dir(&b));
        assert_ne!(a.admin.password, b.admin.password);
        assert_eq!(a.admin.login_id, DEFAULT_ADMIN_LOGIN_ID);
        assert_eq!(a.setting("SURGE_HTTP_ADDR").as_deref(), Some("127.0.0.1:0"));
        assert!(
            a.setting("SURGE_DATABASE_URL")
                .is_some_and(|u| u.starts_with("sqlite://") && u.contains("surge-bench-"))
        );
        assert_eq!(a.setting("SURGE_FLUSH_TICK_MS"), None);
        // Not a comparison: the strategy, Redis and the signing key are the environment's.
        for name in [
            "SURGE_STOCK_STRATEGY",
            "SURGE_REDIS_URL",
            "SURGE_REDIS_KEY_PREFIX",
            "SURGE_JWT_SECRET",
        ] {
            assert_eq!(a.setting(name), None, "{name}");
        }
        assert_eq!(a.database.kind(), "sqlite");
    }

    #[test]
    fn given_credentials_become_the_bootstrap_admin() {
        let node = EmbeddedNode::plan(Some(AdminCredentials {
            login_id: "ops".into(),
            password: "a long password".into(),
        }));
        assert_eq!(node.setting(ADMIN_LOGIN_ID_VAR).as_deref(), Some("ops"));
        assert_eq!(
            node.setting(ADMIN_PASSWORD_VAR).as_deref(),
            Some("a long password")
        );
    }

    #[test]
    fn a_comparison_node_gets_its_strategy_and_a_redis_prefix_of_its_own() {
        let redis = "redis://127.0.0.1:6379/9";
        let node = |strategy| {
            EmbeddedNode::plan(None).with_strategy(strategy, Some(RedisNamespace::fresh(redis)))
        };
        let a = node(Strategy::RedisDecr);
        let b = node(Strategy::RowLock);
        assert_eq!(
            a.setting("SURGE_STOCK_STRATEGY").as_deref(),
            Some("redis-decr")
        );
        assert_eq!(
            b.setting("SURGE_STOCK_STRATEGY").as_deref(),
            Some("row-lock")
        );
        assert_eq!(a.setting("SURGE_REDIS_URL").as_deref(), Some(redis));
        let prefix = a.setting("SURGE_REDIS_KEY_PREFIX").unwrap();
        assert!(prefix.starts_with(SCRATCH_REDIS_PREFIX) && prefix.len() <= 64);
        assert_ne!(Some(prefix), b.setting("SURGE_REDIS_KEY_PREFIX"));
    }

    #[test]
    fn a_postgres_node_gets_the_scratch_database_and_a_signing_key_of_its_own() {
        let scratch = |name: &str| ScratchDatabase {
            server_url: "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable".into(),
            name: name.into(),
        };
        let a = EmbeddedNode::on(NodeDatabase::postgres(scratch("surge_bench_a")), None);
        let b = EmbeddedNode::on(NodeDatabase::postgres(scratch("surge_bench_b")), None);
        assert_eq!(
            a.setting("SURGE_DATABASE_URL").as_deref(),
            Some("postgres://postgres@127.0.0.1:5432/surge_bench_a?sslmode=disable")
        );
        let key = a.setting("SURGE_JWT_SECRET").unwrap();
        assert!(key.len() >= 32, "{key}");
        assert_ne!(Some(key), b.setting("SURGE_JWT_SECRET"));
        assert_eq!(a.database.kind(), "postgres");
    }

    #[test]
    fn the_database_name_replaces_the_path_only() {
        for (server, expected) in [
            (
                "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable",
                "postgres://postgres@127.0.0.1:5432/db?sslmode=disable",
            ),
            (
                "postgresql://u:p@db.example:5433/template1",
                "postgresql://u:p@db.example:5433/db",
            ),
            ("postgres://u@host", "postgres://u@host/db"),
            (
                "postgres://u@host?sslmode=require",
                "postgres://u@host/db?sslmode=require",
            ),
        ] {
            assert_eq!(with_database(server, "db"), expected, "{server}");
        }
    }
}
