//! The nodes `surge bench` starts itself: one when it is given no `--url`, and one per stock
//! strategy for `surge bench compare`.
//!
//! Each is a child process of this same binary, `surge serve`, with the `SURGE_*` variables of
//! this process except those this module decides: a fresh database (a temporary SQLite file,
//! or a scratch PostgreSQL database), a free loopback port, no operators' listener, a known
//! ADMIN and, for a comparison, the stock strategy and a fresh Redis key prefix. The bench
//! waits for `GET /health/ready`, runs, stops the node with SIGTERM (SIGKILL if it has not
//! stopped after [`STOP_TIMEOUT`]) and removes its data. The node's output goes to `node.log`
//! in its temporary directory, deleted with it, unless `RUST_LOG` is set: then it is left on
//! this process's stderr.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use sqlx::Connection as _;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::api::Api;
use crate::error::{BenchError, LaunchError};
use crate::node::{ADMIN_LOGIN_ID_VAR, ADMIN_PASSWORD_VAR, Strategy};
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
/// The longest wait for a started node to answer `GET /health/ready` (it migrates its
/// database and, on PostgreSQL, recovers the previous run first).
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a node may take to stop after SIGTERM (finishing in-flight requests, flushing)
/// before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a starting node is asked whether it is ready.
const READY_POLL: Duration = Duration::from_millis(50);
/// Attempts at starting a node when another process took its port first.
const PORT_ATTEMPTS: usize = 3;
/// The node's settings this module decides (besides `SURGE_HTTP_ADDR`); see
/// [`EmbeddedNode::setting`].
const DECIDED: [&str; 10] = [
    "SURGE_DATABASE_URL",
    "SURGE_JWT_SECRET",
    "SURGE_ADMIN_ADDR",
    "SURGE_RATE_LIMITS",
    "SURGE_MAX_CONNECTIONS_PER_IP",
    "SURGE_STOCK_STRATEGY",
    "SURGE_REDIS_URL",
    "SURGE_REDIS_KEY_PREFIX",
    ADMIN_LOGIN_ID_VAR,
    ADMIN_PASSWORD_VAR,
];
/// The name of the node's log in its directory.
const LOG_FILE: &str = "node.log";

/// The database of an embedded node.
#[derive(Debug)]
pub enum NodeDatabase {
    /// A SQLite file in the node's temporary directory, next to the signing key the node
    /// generates; removed with it.
    Sqlite,
    /// A scratch database on a PostgreSQL server, dropped afterwards. Such a node needs a
    /// signing key from outside: a random one, made for this node alone.
    Postgres {
        database: ScratchDatabase,
        jwt_secret: String,
    },
}

impl NodeDatabase {
    /// A fresh SQLite file in the node's directory.
    pub fn sqlite() -> Self {
        Self::Sqlite
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
            Self::Sqlite => "sqlite",
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
    /// A new directory under the system's temporary directory, holding the node's log and,
    /// on SQLite, its database; removed afterwards.
    pub dir: PathBuf,
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
        let unique = uuid::Uuid::new_v4().simple();
        Self {
            dir: std::env::temp_dir().join(format!("surge-bench-{unique}")),
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
    /// could collide. (`SURGE_HTTP_ADDR` is a free port chosen at each start.)
    pub fn setting(&self, name: &str) -> Option<String> {
        match name {
            "SURGE_DATABASE_URL" => Some(match &self.database {
                NodeDatabase::Sqlite => format!("sqlite://{}/surge.db", self.dir.display()),
                NodeDatabase::Postgres { database, .. } => database.url(),
            }),
            "SURGE_JWT_SECRET" => match &self.database {
                NodeDatabase::Sqlite => None,
                NodeDatabase::Postgres { jwt_secret, .. } => Some(jwt_secret.clone()),
            },
            "SURGE_ADMIN_ADDR" => Some(String::new()),
            // A load test is one machine making thousands of members and orders.
            "SURGE_RATE_LIMITS" => Some("off".to_owned()),
            "SURGE_MAX_CONNECTIONS_PER_IP" => Some("0".to_owned()),
            "SURGE_STOCK_STRATEGY" => self.stock_strategy.map(|s| s.name().to_owned()),
            "SURGE_REDIS_URL" => self.redis.as_ref().map(|r| r.url.clone()),
            "SURGE_REDIS_KEY_PREFIX" => self.redis.as_ref().map(|r| r.prefix.clone()),
            ADMIN_LOGIN_ID_VAR => Some(self.admin.login_id.clone()),
            ADMIN_PASSWORD_VAR => Some(self.admin.password.clone()),
            _ => None,
        }
    }

    /// Removes what the node stored (call after it stopped): its directory, its scratch
    /// database, and its Redis keys. Every step is tried; the first failure is returned.
    pub async fn discard(&self) -> Result<(), BenchError> {
        let dir = match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(BenchError::Scratch {
                what: format!("removing {}", self.dir.display()),
                detail: e.to_string(),
            }),
            _ => Ok(()),
        };
        let database = match &self.database {
            NodeDatabase::Sqlite => Ok(()),
            NodeDatabase::Postgres { database, .. } => database.drop_database().await,
        };
        let redis = match &self.redis {
            Some(namespace) => namespace.delete_keys().await,
            None => Ok(()),
        };
        dir.and(database).and(redis)
    }

    /// Starts the node: `program serve` with this plan's settings on a free loopback port,
    /// its output in [`LOG_FILE`] (unless `RUST_LOG` is set), and waits until it is ready.
    /// A node that lost its port to another process before binding it is started again on
    /// another.
    async fn start(&self, program: &Path) -> Result<RunningNode, LaunchError> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| LaunchError::Start(format!("creating {}: {e}", self.dir.display())))?;
        let mut attempt = 1;
        loop {
            match self.start_once(program).await {
                Err(Started::PortTaken(_)) if attempt < PORT_ATTEMPTS => attempt += 1,
                Err(Started::PortTaken(detail)) => return Err(LaunchError::Start(detail)),
                Err(Started::Failed(e)) => return Err(e),
                Ok(node) => return Ok(node),
            }
        }
    }

    async fn start_once(&self, program: &Path) -> Result<RunningNode, Started> {
        let port =
            free_port().map_err(|e| LaunchError::Start(format!("finding a free port: {e}")))?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut command = Command::new(program);
        command
            .arg("serve")
            .env("SURGE_HTTP_ADDR", addr.to_string())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        for name in DECIDED {
            match self.setting(name) {
                Some(value) if value.is_empty() => {
                    command.env_remove(name);
                }
                Some(value) => {
                    command.env(name, value);
                }
                None => {}
            }
        }
        let log = self.dir.join(LOG_FILE);
        let logged = std::env::var_os("RUST_LOG").is_none();
        if logged {
            let file = std::fs::File::create(&log)
                .map_err(|e| LaunchError::Start(format!("creating {}: {e}", log.display())))?;
            let copy = file
                .try_clone()
                .map_err(|e| LaunchError::Start(format!("opening {}: {e}", log.display())))?;
            command.stdout(file).stderr(copy);
        } else {
            command.stdout(Stdio::null());
        }
        let mut child = command
            .spawn()
            .map_err(|e| LaunchError::Start(format!("running {} serve: {e}", program.display())))?;
        let url = format!("http://{addr}");
        let api = Api::new(&url).map_err(|e| LaunchError::Start(e.to_string()))?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = child
                .try_wait()
                .map_err(|e| LaunchError::Start(format!("watching the node: {e}")))?
            {
                let said = if logged {
                    last_lines(&log)
                } else {
                    "its log is above".to_owned()
                };
                return Err(exited_early(status, said));
            }
            if api.ready().await.is_ok() {
                return Ok(RunningNode { child, url });
            }
            if Instant::now() >= deadline {
                let _ = child.kill().await;
                return Err(Started::Failed(LaunchError::Start(format!(
                    "not ready within {START_TIMEOUT:?}"
                ))));
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }
}

/// Why one attempt at starting a node failed.
#[derive(Debug)]
enum Started {
    /// Another process bound the chosen port first: worth another attempt.
    PortTaken(String),
    Failed(LaunchError),
}

impl From<LaunchError> for Started {
    fn from(e: LaunchError) -> Self {
        Self::Failed(e)
    }
}

/// What a node that exited before it was ready said: exit code 2 is a setting it refused
/// (its one line says which), anything else a failure to start.
fn exited_early(status: ExitStatus, said: String) -> Started {
    if status.code() == Some(2) {
        let line = said.lines().last().unwrap_or_default();
        let line = line.strip_prefix("surge: ").unwrap_or(line);
        let line = line.strip_prefix("invalid configuration: ").unwrap_or(line);
        return Started::Failed(LaunchError::Config(line.to_owned()));
    }
    let detail = format!("it exited ({status}): {said}");
    if said.contains("Address already in use") || said.contains("address in use") {
        Started::PortTaken(detail)
    } else {
        Started::Failed(LaunchError::Start(detail))
    }
}

/// The last few lines of a node's log, on one line.
fn last_lines(log: &Path) -> String {
    const LINES: usize = 3;
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return "it wrote nothing".to_owned();
    }
    lines[lines.len().saturating_sub(LINES)..].join(" / ")
}

/// A loopback port that was free a moment ago: bound, read and released. Another process
/// could take it before the node binds it; [`EmbeddedNode::start`] tries again then.
fn free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// A node that answered ready: its process and its base URL.
#[derive(Debug)]
struct RunningNode {
    child: Child,
    url: String,
}

impl RunningNode {
    /// SIGTERM, then waits for the node to stop (in-flight requests finished, database
    /// closed); SIGKILL after [`STOP_TIMEOUT`]. The error says what went wrong.
    async fn stop(mut self) -> Result<(), String> {
        terminate(&self.child);
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => Err(format!("it exited with {status}")),
            Ok(Err(e)) => Err(format!("waiting for it: {e}")),
            Err(_) => {
                let _ = self.child.kill().await;
                Err(format!(
                    "it did not stop within {STOP_TIMEOUT:?} and was killed"
                ))
            }
        }
    }
}

/// Asks the node to stop: SIGTERM on Unix, a kill elsewhere.
fn terminate(child: &Child) {
    #[cfg(unix)]
    if let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    #[cfg(not(unix))]
    let _ = child.start_kill();
}

/// Until dropped: SIGINT or SIGTERM to this process is passed on to the node as SIGTERM, so
/// an interrupted bench does not leave it running (the run then fails fast and the node's
/// data is removed as usual).
struct ForwardStop(tokio::task::JoinHandle<()>);

impl ForwardStop {
    fn new(child: &Child) -> Self {
        let pid = child.id();
        Self(tokio::spawn(async move {
            surge_supervisors::shutdown::stop_signal().await;
            #[cfg(unix)]
            if let Some(pid) = pid.and_then(|id| i32::try_from(id).ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            #[cfg(not(unix))]
            let _ = pid;
        }))
    }
}

impl Drop for ForwardStop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The program bench nodes run: this very binary (`surge`), as `surge serve`.
pub fn node_program() -> Result<PathBuf, LaunchError> {
    std::env::current_exe()
        .map_err(|e| LaunchError::Start(format!("finding this program to run as the node: {e}")))
}

/// Starts `node` as `program serve`, runs `work` against its URL with its ADMIN, stops it and
/// discards its data, whatever `work` found. Trouble stopping or cleaning up is reported on
/// stderr rather than returned: the run's result stands.
pub async fn with_node<T>(
    program: &Path,
    node: &EmbeddedNode,
    work: impl AsyncFnOnce(&str, &AdminCredentials) -> T,
) -> Result<T, LaunchError> {
    let outcome = match node.start(program).await {
        Ok(running) => {
            let forward = ForwardStop::new(&running.child);
            let found = work(&running.url, &node.admin).await;
            drop(forward);
            if let Err(e) = running.stop().await {
                eprintln!("surge bench: the bench's node stopped with an error: {e}");
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
        &node.dir
    }

    #[test]
    fn each_plan_gets_its_own_directory_and_a_loopback_port() {
        let a = EmbeddedNode::plan(None);
        let b = EmbeddedNode::plan(None);
        assert_ne!(data_dir(&a), data_dir(&b));
        assert_ne!(a.admin.password, b.admin.password);
        assert_eq!(a.admin.login_id, DEFAULT_ADMIN_LOGIN_ID);
        assert_eq!(
            a.setting("SURGE_HTTP_ADDR"),
            None,
            "a free port, chosen at start"
        );
        assert_eq!(a.setting("SURGE_ADMIN_ADDR").as_deref(), Some(""));
        assert!(
            a.setting("SURGE_DATABASE_URL")
                .is_some_and(|u| u.starts_with("sqlite://")
                    && u.contains("surge-bench-")
                    && u.ends_with("/surge.db"))
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

    #[cfg(unix)]
    #[test]
    fn a_node_that_exits_early_says_why() {
        use std::os::unix::process::ExitStatusExt as _;
        let refused = exited_early(
            ExitStatus::from_raw(2 << 8),
            "surge: invalid configuration: SURGE_FLUSH_TICK_MS: must be a whole number".into(),
        );
        assert!(
            matches!(&refused, Started::Failed(LaunchError::Config(m))
                if m == "SURGE_FLUSH_TICK_MS: must be a whole number"),
            "{refused:?}"
        );
        let taken = exited_early(
            ExitStatus::from_raw(1 << 8),
            "surge could not start: Address already in use (os error 98)".into(),
        );
        assert!(matches!(taken, Started::PortTaken(_)), "{taken:?}");
        let other = exited_early(ExitStatus::from_raw(1 << 8), "disk full".into());
        assert!(matches!(other, Started::Failed(LaunchError::Start(_))));
        assert!(free_port().unwrap() > 0);
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
