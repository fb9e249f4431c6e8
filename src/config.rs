//! Typed configuration, read once at start from `SURGE_*` environment variables (or the
//! matching `surge serve --…` options).
//!
//! [`ServeArgs`] is the one parser: every variable is a clap argument with its environment
//! name, default and value parser, and [`ServeArgs::into_config`] adds the rules that span
//! several variables. Every variable has a safe default, and a blank value counts as unset; a
//! bad value stops the node with a message naming the variable (see [`ConfigError`]), before
//! anything listens or connects.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::time::Duration;

use axum::http::HeaderName;
use clap::{Arg, ArgMatches, Args, Command, FromArgMatches as _};
use secrecy::SecretString;
use surge_actors::StockStrategy;
use surge_cluster::ClusterSettings;
use surge_domain::{LoginId, Password};
use surge_http::connections::ConnectionLimits;
use surge_http::{Rate, RateLimitSettings};
use surge_persistence::Backend;
/// Where the API listens unless `SURGE_HTTP_ADDR` says otherwise.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8080";
/// The embedded database unless `SURGE_DATABASE_URL` says otherwise.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://surge-data/surge.db";

/// A variable with a value the node cannot use.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {message}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub variable: &'static str,
    /// What is wrong with it.
    pub message: String,
}

fn invalid(variable: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        variable,
        message: message.into(),
    }
}

impl ConfigError {
    /// The variable and message of a clap error about one of [`ServeArgs`]' values (a value
    /// its parser refused); `None` for any other error (an unknown option, `--help`, …), which
    /// clap reports itself. The refused value is left out: it may be a secret.
    pub fn from_clap(error: &clap::Error) -> Option<Self> {
        use clap::error::{ContextKind, ContextValue, ErrorKind};
        if !matches!(
            error.kind(),
            ErrorKind::ValueValidation | ErrorKind::InvalidValue
        ) {
            return None;
        }
        // "--http-addr <HTTP_ADDR>": the option, then its value's name.
        let ContextValue::String(arg) = error.get(ContextKind::InvalidArg)? else {
            return None;
        };
        let long = arg.split_whitespace().next()?.strip_prefix("--")?;
        let command = ServeArgs::augment_args(Command::new("serve"));
        let env = command
            .get_arguments()
            .find(|a| a.get_long() == Some(long))?
            .get_env()?;
        let variable = VARIABLES.iter().copied().find(|v| env == *v)?;
        let message = std::error::Error::source(error)
            .map_or_else(|| "is not a valid value".to_owned(), ToString::to_string);
        Some(invalid(variable, message))
    }
}

/// The first ADMIN, created at start when no member has that login id.
#[derive(Debug)]
pub struct BootstrapAdmin {
    /// Its login id.
    pub login_id: LoginId,
    /// Its password (never logged).
    pub password: Password,
}

/// A node's configuration.
#[derive(Debug)]
pub struct Config {
    /// `SURGE_HTTP_ADDR`: the API listener.
    pub http_addr: SocketAddr,
    /// `SURGE_ADMIN_ADDR`: an optional operators' listener with health and metrics unauthenticated.
    pub admin_addr: Option<SocketAddr>,
    /// `SURGE_DATABASE_URL`.
    pub database_url: String,
    /// The back end the URL names.
    pub backend: Backend,
    /// `SURGE_JWT_SECRET`; when unset in embedded mode a key is generated once and kept next
    /// to the database file.
    pub jwt_secret: Option<SecretString>,
    /// `SURGE_BOOTSTRAP_ADMIN_LOGIN_ID` and `SURGE_BOOTSTRAP_ADMIN_PASSWORD`.
    pub bootstrap_admin: Option<BootstrapAdmin>,
    /// `SURGE_NODE_ID`: owner name of the allotments this node takes.
    pub node_id: String,
    /// `SURGE_ORDER_ANSWER_TIMEOUT_MS`: how long a client waits before 202 PROCESSING.
    pub order_answer_timeout: Duration,
    /// `SURGE_FLUSH_TICK_MS`: how long the group-commit writer lingers for companions.
    pub flush_tick: Duration,
    /// `SURGE_MAX_INFLIGHT_ORDERS`: orders worked on at once before 503.
    pub max_inflight_orders: usize,
    /// `SURGE_RESERVATION_TTL_MS`: an unconfirmed reservation's lifetime.
    pub reservation_ttl: Duration,
    /// `SURGE_STOCK_PASSIVATE_MS`: a stock actor idle this long gives its allotment back.
    pub stock_passivate_after: Duration,
    /// `SURGE_MAX_WAITING_PER_ITEM`: reservation requests that may wait on one item before 503.
    pub max_waiting_per_item: usize,
    /// `SURGE_STOCK_STRATEGY`: `actor` (Surge's design) or a conventional strategy kept for
    /// `surge bench compare`.
    pub stock_strategy: StockStrategy,
    /// `SURGE_COUPON_ANSWER_TIMEOUT_MS`: how long a coupon issue request waits for its answer.
    pub coupon_answer_timeout: Duration,
    /// `SURGE_REDIS_URL` and friends: Redis holds the live coupon counts. `None`: embedded.
    pub redis: Option<RedisSettings>,
    /// `SURGE_KAFKA_BROKERS` and `SURGE_KAFKA_TOPIC_PREFIX`: the relay publishes to Kafka and
    /// the consumers read from it. `None`: events go from the outbox to the consumers in-process.
    pub kafka: Option<KafkaSettings>,
    /// `SURGE_OUTBOX_RETENTION_S`: published events are purged after this.
    pub outbox_retention: Duration,
    /// `SURGE_MONGO_URL`: the my-page read model lives in MongoDB. `None`: the main database.
    pub mongo_url: Option<SecretString>,
    /// `SURGE_CLUSTER_*`, `SURGE_SHARDS`, `SURGE_LEASE_MS`: this node joins the cluster
    /// recorded in the database. `None`: a single node.
    pub cluster: Option<ClusterSettings>,
    /// `SURGE_SHARDS` (shown by `/admin/cluster` on a single node too).
    pub shards: i64,
    /// `SURGE_CORS_ORIGINS`: browser origins allowed to call the API; empty: CORS off.
    pub cors_origins: Vec<String>,
    /// `SURGE_RATE_LIMITS`, `SURGE_LIMIT_*` and `SURGE_CLIENT_IP_HEADER`.
    pub rate_limits: RateLimitSettings,
    /// `SURGE_MAX_CONNECTIONS*` and `SURGE_*_TIMEOUT_MS` of the listener.
    pub connections: ConnectionLimits,
    /// `SURGE_MAX_STREAMS_PER_MEMBER`: order status streams one member may keep open.
    pub max_streams_per_member: usize,
    /// `SURGE_MAX_STREAMS`: order status streams open on the node.
    pub max_streams: usize,
    /// `SURGE_STREAM_IDLE_TIMEOUT_MS`: a stream without a change for this long is closed.
    pub stream_idle_timeout: Duration,
}

/// Where events are published.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// `host:port,…`.
    pub brokers: String,
    /// Put before each topic's name (`surge.` makes `surge.orders`).
    pub topic_prefix: String,
}

/// Where the coupon store lives in scaled mode.
#[derive(Debug)]
pub struct RedisSettings {
    /// `SURGE_REDIS_URL` (may carry a password, so never logged).
    pub url: SecretString,
    /// `SURGE_REDIS_KEY_PREFIX`: every key this node writes starts with it, so several
    /// deployments (or test runs) can share one Redis.
    pub key_prefix: String,
    /// `SURGE_COUPON_CLAIM_IDLE_MS`: stream entries another consumer left unacknowledged this
    /// long are taken over.
    pub claim_idle: Duration,
    /// `SURGE_REDIS_TIMEOUT_MS`: a Redis call slower than this fails (and counts against the
    /// breaker).
    pub timeout: Duration,
    /// `SURGE_REDIS_TAKE_OVER`: the prefix's keys belong to another database; delete them and
    /// use the prefix for this one (without it such a node refuses to start).
    pub take_over: bool,
}

/// Shortest accepted `SURGE_CLUSTER_SECRET`: a key that authenticates stock operations must
/// not be guessable.
const MIN_CLUSTER_SECRET_BYTES: usize = 32;

/// Longest accepted `SURGE_REDIS_KEY_PREFIX`.
const MAX_KEY_PREFIX: usize = 64;

/// Every variable [`ServeArgs`] reads, so that an error can name it with a `&'static str`.
const VARIABLES: [&str; 46] = [
    "SURGE_HTTP_ADDR",
    "SURGE_ADMIN_ADDR",
    "SURGE_DATABASE_URL",
    "SURGE_JWT_SECRET",
    "SURGE_BOOTSTRAP_ADMIN_LOGIN_ID",
    "SURGE_BOOTSTRAP_ADMIN_PASSWORD",
    "SURGE_NODE_ID",
    "SURGE_ORDER_ANSWER_TIMEOUT_MS",
    "SURGE_FLUSH_TICK_MS",
    "SURGE_MAX_INFLIGHT_ORDERS",
    "SURGE_RESERVATION_TTL_MS",
    "SURGE_STOCK_PASSIVATE_MS",
    "SURGE_MAX_WAITING_PER_ITEM",
    "SURGE_STOCK_STRATEGY",
    "SURGE_COUPON_ANSWER_TIMEOUT_MS",
    "SURGE_REDIS_URL",
    "SURGE_REDIS_KEY_PREFIX",
    "SURGE_COUPON_CLAIM_IDLE_MS",
    "SURGE_REDIS_TIMEOUT_MS",
    "SURGE_KAFKA_BROKERS",
    "SURGE_KAFKA_TOPIC_PREFIX",
    "SURGE_OUTBOX_RETENTION_S",
    "SURGE_MONGO_URL",
    "SURGE_CLUSTER_ADDR",
    "SURGE_CLUSTER_ADVERTISE_ADDR",
    "SURGE_CLUSTER_SECRET",
    "SURGE_SHARDS",
    "SURGE_LEASE_MS",
    "SURGE_CORS_ORIGINS",
    "SURGE_REDIS_TAKE_OVER",
    "SURGE_RATE_LIMITS",
    "SURGE_LIMIT_LOGIN_PER_IP",
    "SURGE_LIMIT_LOGIN_PER_ACCOUNT",
    "SURGE_LOGIN_FAILURES_BEFORE_BACKOFF",
    "SURGE_LIMIT_SIGNUPS_PER_IP",
    "SURGE_LIMIT_ORDERS_PER_MEMBER",
    "SURGE_LIMIT_ISSUES_PER_MEMBER",
    "SURGE_CLIENT_IP_HEADER",
    "SURGE_MAX_CONNECTIONS",
    "SURGE_MAX_CONNECTIONS_PER_IP",
    "SURGE_HEADER_TIMEOUT_MS",
    "SURGE_BODY_TIMEOUT_MS",
    "SURGE_IDLE_TIMEOUT_MS",
    "SURGE_MAX_STREAMS_PER_MEMBER",
    "SURGE_MAX_STREAMS",
    "SURGE_STREAM_IDLE_TIMEOUT_MS",
];

/// What [`ConfigError::variable`] says about an error no single variable caused.
const ANY_VARIABLE: &str = "SURGE_*";

/// A setting without a default: `None` when unset or blank.
#[derive(Debug, Clone)]
pub struct Unset<T>(pub Option<T>);

/// Run a node: serve the API until SIGTERM or Ctrl-C.
///
/// Every option has an environment variable (shown with it), which is how a deployment
/// usually sets it; an option given on the command line wins. A blank variable counts as
/// unset. See README.md.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// The API listener.
    #[arg(long, env = "SURGE_HTTP_ADDR", default_value = DEFAULT_HTTP_ADDR,
          value_parser = or_default(DEFAULT_HTTP_ADDR, parse_addr))]
    pub http_addr: SocketAddr,

    /// An operators' listener with health and metrics unauthenticated [default: none].
    #[arg(long, env = "SURGE_ADMIN_ADDR", default_value = "", hide_default_value = true,
          value_parser = optional(parse_addr))]
    pub admin_addr: Unset<SocketAddr>,

    /// sqlite:PATH (embedded) or postgres://… (scaled).
    #[arg(long, env = "SURGE_DATABASE_URL", default_value = DEFAULT_DATABASE_URL,
          hide_env_values = true, value_parser = or_default(DEFAULT_DATABASE_URL, parse_database_url))]
    pub database_url: String,

    /// The key access tokens are signed with, at least 32 bytes; required unless the database
    /// is the embedded SQLite file (then one is generated and kept next to it).
    #[arg(long, env = "SURGE_JWT_SECRET", default_value = "", hide_default_value = true,
          hide_env_values = true, value_parser = optional(parse_jwt_secret))]
    pub jwt_secret: Unset<SecretString>,

    /// The first ADMIN's login id, created at start when no member has it (with
    /// --bootstrap-admin-password).
    #[arg(long, env = "SURGE_BOOTSTRAP_ADMIN_LOGIN_ID", default_value = "",
          hide_default_value = true, value_parser = optional(parse_login_id))]
    pub bootstrap_admin_login_id: Unset<LoginId>,

    /// The first ADMIN's password (with --bootstrap-admin-login-id).
    #[arg(long, env = "SURGE_BOOTSTRAP_ADMIN_PASSWORD", default_value = "",
          hide_default_value = true, hide_env_values = true, value_parser = optional(parse_password))]
    pub bootstrap_admin_password: Unset<Password>,

    /// Owner name of the stock allotments this node takes.
    #[arg(long, env = "SURGE_NODE_ID", default_value = "node-1",
          value_parser = or_default("node-1", parse_node_id))]
    pub node_id: String,

    /// How long an order request waits for its outcome before 202 PROCESSING.
    #[arg(long, env = "SURGE_ORDER_ANSWER_TIMEOUT_MS", default_value = "3000",
          value_parser = or_default("3000", number(1, 60_000)))]
    pub order_answer_timeout_ms: u64,

    /// How long the group-commit writer lingers for companions.
    #[arg(long, env = "SURGE_FLUSH_TICK_MS", default_value = "0",
          value_parser = or_default("1", number(0, 1_000)))]
    pub flush_tick_ms: u64,

    /// Orders worked on at once before 503 OVERLOADED.
    #[arg(long, env = "SURGE_MAX_INFLIGHT_ORDERS", default_value = "8192",
          value_parser = or_default("8192", number(1, 1_000_000)))]
    pub max_inflight_orders: u64,

    /// An unconfirmed reservation's lifetime.
    #[arg(long, env = "SURGE_RESERVATION_TTL_MS", default_value = "30000",
          value_parser = or_default("30000", number(100, 3_600_000)))]
    pub reservation_ttl_ms: u64,

    /// A stock actor idle this long gives its allotment back.
    #[arg(long, env = "SURGE_STOCK_PASSIVATE_MS", default_value = "60000",
          value_parser = or_default("60000", number(100, 86_400_000)))]
    pub stock_passivate_ms: u64,

    /// Reservation requests that may wait on one item before 503.
    #[arg(long, env = "SURGE_MAX_WAITING_PER_ITEM", default_value = "10000",
          value_parser = or_default("10000", number(1, 1_000_000)))]
    pub max_waiting_per_item: u64,

    /// How order lines take stock: actor (Surge's design), or row-lock, conditional-update
    /// or redis-decr (conventional strategies kept for `surge bench compare`).
    #[arg(long, env = "SURGE_STOCK_STRATEGY", default_value = "actor",
          value_parser = or_default("actor", parse_stock_strategy))]
    pub stock_strategy: StockStrategy,

    /// How long a coupon issue request waits for its answer.
    #[arg(long, env = "SURGE_COUPON_ANSWER_TIMEOUT_MS", default_value = "5000",
          value_parser = or_default("5000", number(1, 60_000)))]
    pub coupon_answer_timeout_ms: u64,

    /// Redis for the live coupon counts (scaled mode), redis://… [default: none: embedded].
    #[arg(long, env = "SURGE_REDIS_URL", default_value = "", hide_default_value = true,
          hide_env_values = true, value_parser = optional(parse_redis_url))]
    pub redis_url: Unset<SecretString>,

    /// Every Redis key this node writes starts with it (with --redis-url).
    #[arg(long, env = "SURGE_REDIS_KEY_PREFIX", default_value = "surge",
          value_parser = or_default("surge", parse_key_prefix))]
    pub redis_key_prefix: String,

    /// Coupon stream entries another consumer left unacknowledged this long are taken over
    /// (with --redis-url).
    #[arg(long, env = "SURGE_COUPON_CLAIM_IDLE_MS", default_value = "30000",
          value_parser = or_default("30000", number(100, 3_600_000)))]
    pub coupon_claim_idle_ms: u64,

    /// A Redis call slower than this fails (with --redis-url).
    #[arg(long, env = "SURGE_REDIS_TIMEOUT_MS", default_value = "1000",
          value_parser = or_default("1000", number(10, 60_000)))]
    pub redis_timeout_ms: u64,

    /// The key prefix holds another database's coupons: delete them and take the prefix over
    /// (with --redis-url). Without it, such a node refuses to start.
    #[arg(long, env = "SURGE_REDIS_TAKE_OVER", default_value = "false",
          action = clap::ArgAction::Set, value_parser = or_default("false", parse_bool))]
    pub redis_take_over: bool,

    /// Kafka brokers (host:port,…): the outbox relay publishes every event there and the
    /// read-model consumers read from it [default: none: events flow in-process]. Needs a
    /// build with the `kafka` feature.
    #[arg(long, env = "SURGE_KAFKA_BROKERS", default_value = "", hide_default_value = true,
          value_parser = optional(parse_text))]
    pub kafka_brokers: Unset<String>,

    /// Put before every topic name (with --kafka-brokers).
    #[arg(long, env = "SURGE_KAFKA_TOPIC_PREFIX", default_value = "surge.",
          value_parser = or_default("surge.", parse_topic_prefix))]
    pub kafka_topic_prefix: String,

    /// Published events are kept this long, then purged from the outbox.
    #[arg(long, env = "SURGE_OUTBOX_RETENTION_S", default_value = "86400",
          value_parser = or_default("86400", number(1, 90 * 86_400)))]
    pub outbox_retention_s: u64,

    /// MongoDB for the my-page read model, mongodb://… [default: none: the main database].
    /// Needs a build with the `mongo` feature.
    #[arg(long, env = "SURGE_MONGO_URL", default_value = "", hide_default_value = true,
          hide_env_values = true, value_parser = optional(parse_mongo_url))]
    pub mongo_url: Unset<SecretString>,

    /// This node's internal listener (host:port); set, the node joins the cluster recorded
    /// in the shared PostgreSQL database [default: none: a single node].
    #[arg(long, env = "SURGE_CLUSTER_ADDR", default_value = "", hide_default_value = true,
          value_parser = optional(parse_addr))]
    pub cluster_addr: Unset<SocketAddr>,

    /// The address peers use to reach this node [default: SURGE_CLUSTER_ADDR].
    #[arg(long, env = "SURGE_CLUSTER_ADVERTISE_ADDR", default_value = "",
          hide_default_value = true, value_parser = optional(parse_text))]
    pub cluster_advertise_addr: Unset<String>,

    /// The key (at least 32 bytes) that authenticates calls between nodes; required with
    /// --cluster-addr.
    #[arg(long, env = "SURGE_CLUSTER_SECRET", default_value = "", hide_default_value = true,
          hide_env_values = true, value_parser = optional(parse_cluster_secret))]
    pub cluster_secret: Unset<SecretString>,

    /// Stock shards, fixed at the cluster's first start.
    #[arg(long, env = "SURGE_SHARDS", default_value = "64",
          value_parser = or_default("64", number(1, 4_096)))]
    pub shards: u64,

    /// Shard lease length; an owner renews six times per lease.
    #[arg(long, env = "SURGE_LEASE_MS", default_value = "3000",
          value_parser = or_default("3000", number(600, 60_000)))]
    pub lease_ms: u64,

    /// Browser origins allowed to call the API with CORS, comma-separated, e.g.
    /// https://shop.example [default: none: CORS off].
    #[arg(long, env = "SURGE_CORS_ORIGINS", default_value = "", hide_default_value = true,
          value_parser = parse_origins)]
    pub cors_origins: Origins,

    /// `on`: login, sign-up, order and coupon-issue limits apply (429 RATE_LIMITED with
    /// Retry-After); `off` turns every limit off (load tests from one machine).
    #[arg(long, env = "SURGE_RATE_LIMITS", default_value = "on",
          action = clap::ArgAction::Set, value_parser = or_default("on", parse_on_off))]
    pub rate_limits: bool,

    /// Login attempts per client address (count/s, /min or /h; a burst of count).
    #[arg(long, env = "SURGE_LIMIT_LOGIN_PER_IP", default_value = "30/min",
          value_parser = or_default("30/min", parse_rate))]
    pub limit_login_per_ip: Rate,

    /// Login attempts per login id, from anywhere.
    #[arg(long, env = "SURGE_LIMIT_LOGIN_PER_ACCOUNT", default_value = "10/min",
          value_parser = or_default("10/min", parse_rate))]
    pub limit_login_per_account: Rate,

    /// Failed logins in a row after which the account's logins wait 1 s, 2 s, 4 s … (at
    /// most 15 min) until one succeeds.
    #[arg(long, env = "SURGE_LOGIN_FAILURES_BEFORE_BACKOFF", default_value = "5",
          value_parser = or_default("5", number(1, 1_000)))]
    pub login_failures_before_backoff: u64,

    /// Sign-ups per client address.
    #[arg(long, env = "SURGE_LIMIT_SIGNUPS_PER_IP", default_value = "10/min",
          value_parser = or_default("10/min", parse_rate))]
    pub limit_signups_per_ip: Rate,

    /// Order placements per member.
    #[arg(long, env = "SURGE_LIMIT_ORDERS_PER_MEMBER", default_value = "10/s",
          value_parser = or_default("10/s", parse_rate))]
    pub limit_orders_per_member: Rate,

    /// Coupon issue requests per member.
    #[arg(long, env = "SURGE_LIMIT_ISSUES_PER_MEMBER", default_value = "5/s",
          value_parser = or_default("5/s", parse_rate))]
    pub limit_issues_per_member: Rate,

    /// A header that a trusted load balancer sets to the client's address (its last entry
    /// counts), e.g. x-forwarded-for [default: none: the connection's peer address]. Set it
    /// only behind such a balancer: a client could write it otherwise.
    #[arg(long, env = "SURGE_CLIENT_IP_HEADER", default_value = "", hide_default_value = true,
          value_parser = optional(parse_header_name))]
    pub client_ip_header: Unset<HeaderName>,

    /// Open connections at once; beyond it a new one is answered 503 and closed (also kept
    /// 256 below the process's open-file limit).
    #[arg(long, env = "SURGE_MAX_CONNECTIONS", default_value = "10000",
          value_parser = or_default("10000", number(1, 1_000_000)))]
    pub max_connections: u64,

    /// Open connections from one address at once, 0 for no cap (behind a load balancer,
    /// which is the only address the node sees); beyond it 429 and closed.
    #[arg(long, env = "SURGE_MAX_CONNECTIONS_PER_IP", default_value = "256",
          value_parser = or_default("256", number(0, 1_000_000)))]
    pub max_connections_per_ip: u64,

    /// Time for a request's head to arrive whole (from the connection's start, or from the
    /// request's first byte).
    #[arg(long, env = "SURGE_HEADER_TIMEOUT_MS", default_value = "10000",
          value_parser = or_default("10000", number(100, 600_000)))]
    pub header_timeout_ms: u64,

    /// Time for a request's body to arrive whole (408 otherwise).
    #[arg(long, env = "SURGE_BODY_TIMEOUT_MS", default_value = "30000",
          value_parser = or_default("30000", number(100, 600_000)))]
    pub body_timeout_ms: u64,

    /// Time a connection may stay open with no traffic and no request being answered.
    #[arg(long, env = "SURGE_IDLE_TIMEOUT_MS", default_value = "60000",
          value_parser = or_default("60000", number(100, 3_600_000)))]
    pub idle_timeout_ms: u64,

    /// Order status streams (SSE) one member may keep open at once; past it 429.
    #[arg(long, env = "SURGE_MAX_STREAMS_PER_MEMBER", default_value = "5",
          value_parser = or_default("5", number(1, 1_000)))]
    pub max_streams_per_member: u64,

    /// Order status streams open on the node at once; past it 503.
    #[arg(long, env = "SURGE_MAX_STREAMS", default_value = "10000",
          value_parser = or_default("10000", number(1, 1_000_000)))]
    pub max_streams: u64,

    /// An order status stream whose order did not change for this long is closed (the client
    /// reconnects); heartbeats every 15 s keep it open until then.
    #[arg(long, env = "SURGE_STREAM_IDLE_TIMEOUT_MS", default_value = "300000",
          value_parser = or_default("300000", number(100, 86_400_000)))]
    pub stream_idle_timeout_ms: u64,
}

/// `SURGE_CORS_ORIGINS`, parsed.
#[derive(Debug, Clone, Default)]
pub struct Origins(pub Vec<String>);

/// Longest accepted origin.
const MAX_ORIGIN_CHARS: usize = 255;

fn parse_origins(raw: &str) -> Result<Origins, String> {
    let mut origins = Vec::new();
    for origin in raw.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        let rest = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"))
            .ok_or_else(|| format!("'{origin}' must start with https:// or http://"))?;
        let valid = !rest.is_empty()
            && origin.len() <= MAX_ORIGIN_CHARS
            && rest
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
        if !valid {
            return Err(format!(
                "'{origin}' is not an origin like https://shop.example or http://localhost:3000 \
                 (scheme, host and port only; no path, no wildcard)"
            ));
        }
        origins.push(origin.to_owned());
    }
    Ok(Origins(origins))
}

impl ServeArgs {
    /// The configuration these settings make, after the rules that span several of them.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let backend = Backend::from_url(&self.database_url).map_err(|_| {
            invalid(
                "SURGE_DATABASE_URL",
                "must start with sqlite:, postgres:// or postgresql://",
            )
        })?;
        if self.kafka_brokers.0.is_some() && !cfg!(feature = "kafka") {
            return Err(invalid(
                "SURGE_KAFKA_BROKERS",
                "this build has no Kafka client; build with `--features kafka` or unset it",
            ));
        }
        if self.mongo_url.0.is_some() && !cfg!(feature = "mongo") {
            return Err(invalid(
                "SURGE_MONGO_URL",
                "this build has no MongoDB client; build with `--features mongo` or unset it",
            ));
        }
        let jwt_secret = self.jwt_secret.0;
        if jwt_secret.is_none() && backend != Backend::Sqlite {
            return Err(invalid(
                "SURGE_JWT_SECRET",
                "is required when the database is not the embedded SQLite file \
                 (every node must sign with the same key)",
            ));
        }
        let bootstrap_admin = match (
            self.bootstrap_admin_login_id.0,
            self.bootstrap_admin_password.0,
        ) {
            (None, None) => None,
            (Some(login_id), Some(password)) => Some(BootstrapAdmin { login_id, password }),
            (Some(_), None) => {
                return Err(invalid(
                    "SURGE_BOOTSTRAP_ADMIN_PASSWORD",
                    "must be set together with SURGE_BOOTSTRAP_ADMIN_LOGIN_ID",
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "SURGE_BOOTSTRAP_ADMIN_LOGIN_ID",
                    "must be set together with SURGE_BOOTSTRAP_ADMIN_PASSWORD",
                ));
            }
        };
        let redis = self.redis_url.0.map(|url| RedisSettings {
            url,
            key_prefix: self.redis_key_prefix,
            claim_idle: Duration::from_millis(self.coupon_claim_idle_ms),
            timeout: Duration::from_millis(self.redis_timeout_ms),
            take_over: self.redis_take_over,
        });
        if self.stock_strategy == StockStrategy::RedisDecr && redis.is_none() {
            return Err(invalid(
                "SURGE_STOCK_STRATEGY",
                "redis-decr needs SURGE_REDIS_URL",
            ));
        }
        let shards = i64::try_from(self.shards).unwrap_or(64);
        let cluster = match self.cluster_addr.0 {
            None => None,
            Some(listen) => {
                if backend == Backend::Sqlite {
                    return Err(invalid(
                        "SURGE_CLUSTER_ADDR",
                        "a cluster shares one PostgreSQL database; the embedded SQLite file \
                         serves a single node (unset it, or set SURGE_DATABASE_URL=postgres://…)",
                    ));
                }
                let Some(secret) = self.cluster_secret.0 else {
                    return Err(invalid(
                        "SURGE_CLUSTER_SECRET",
                        "is required with SURGE_CLUSTER_ADDR (at least 32 bytes, the same on \
                         every node)",
                    ));
                };
                if redis.is_none() {
                    return Err(invalid(
                        "SURGE_REDIS_URL",
                        "is required with SURGE_CLUSTER_ADDR: in a cluster the coupon counts \
                         live in Redis, which every node shares",
                    ));
                }
                Some(ClusterSettings {
                    node_id: self.node_id.clone(),
                    listen,
                    advertise: self.cluster_advertise_addr.0,
                    secret,
                    shards,
                    lease: Duration::from_millis(self.lease_ms),
                })
            }
        };
        let rate_limits = RateLimitSettings {
            enabled: self.rate_limits,
            login_per_ip: self.limit_login_per_ip,
            login_per_account: self.limit_login_per_account,
            failures_before_backoff: u32::try_from(self.login_failures_before_backoff).unwrap_or(5),
            signups_per_ip: self.limit_signups_per_ip,
            orders_per_member: self.limit_orders_per_member,
            issues_per_member: self.limit_issues_per_member,
            client_ip_header: self.client_ip_header.0,
        };
        let connections = ConnectionLimits {
            max_connections: to_usize(self.max_connections),
            max_connections_per_ip: to_usize(self.max_connections_per_ip),
            header_timeout: Duration::from_millis(self.header_timeout_ms),
            body_timeout: Duration::from_millis(self.body_timeout_ms),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
        };
        Ok(Config {
            max_streams_per_member: to_usize(self.max_streams_per_member),
            max_streams: to_usize(self.max_streams),
            stream_idle_timeout: Duration::from_millis(self.stream_idle_timeout_ms),
            connections,
            rate_limits,
            cors_origins: self.cors_origins.0,
            cluster,
            shards,
            http_addr: self.http_addr,
            admin_addr: self.admin_addr.0,
            database_url: self.database_url,
            backend,
            jwt_secret,
            bootstrap_admin,
            node_id: self.node_id,
            order_answer_timeout: Duration::from_millis(self.order_answer_timeout_ms),
            flush_tick: Duration::from_millis(self.flush_tick_ms),
            max_inflight_orders: to_usize(self.max_inflight_orders),
            reservation_ttl: Duration::from_millis(self.reservation_ttl_ms),
            stock_passivate_after: Duration::from_millis(self.stock_passivate_ms),
            max_waiting_per_item: to_usize(self.max_waiting_per_item),
            stock_strategy: self.stock_strategy,
            coupon_answer_timeout: Duration::from_millis(self.coupon_answer_timeout_ms),
            redis,
            kafka: self.kafka_brokers.0.map(|brokers| KafkaSettings {
                brokers,
                topic_prefix: self.kafka_topic_prefix,
            }),
            outbox_retention: Duration::from_secs(self.outbox_retention_s),
            mongo_url: self.mongo_url.0,
        })
    }
}

/// A count the parser bounded to at most a million: it fits every `usize`.
fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

impl Config {
    /// Reads the process environment (as `surge serve` without options does).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads configuration through `lookup`, so tests can pass their own variables (the
    /// process environment is not read). Every [`ServeArgs`] argument that has an environment
    /// name and a value in `lookup` becomes `--option=value`, and the words go through the
    /// same parser as `surge serve`'s command line.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let command = ServeArgs::augment_args(Command::new("surge serve"));
        let mut words: Vec<OsString> = vec!["surge serve".into()];
        for arg in command.get_arguments() {
            let (Some(long), Some(env)) = (arg.get_long(), arg.get_env()) else {
                continue;
            };
            if let Some(value) = env.to_str().and_then(&lookup) {
                words.push(format!("--{long}={value}").into());
            }
        }
        // Arguments read their variable when the command is built: forget those values, so
        // that only `lookup` speaks.
        let matches = command
            .mut_args(|arg: Arg| arg.env(None::<&str>))
            .try_get_matches_from(words)
            .map_err(|e| {
                ConfigError::from_clap(&e)
                    .unwrap_or_else(|| invalid(ANY_VARIABLE, e.kind().to_string()))
            })?;
        Self::from_matches(&matches)
    }

    /// The configuration of parsed `surge serve` words.
    fn from_matches(matches: &ArgMatches) -> Result<Self, ConfigError> {
        ServeArgs::from_arg_matches(matches)
            .map_err(|e| invalid(ANY_VARIABLE, e.kind().to_string()))?
            .into_config()
    }
}

/// `parse`, with a blank value (unset) replaced by `default`.
fn or_default<T: 'static>(
    default: &'static str,
    parse: impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static,
) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static {
    move |raw| parse(if raw.trim().is_empty() { default } else { raw })
}

/// `parse`, with a blank value meaning unset.
fn optional<T: 'static>(
    parse: fn(&str) -> Result<T, String>,
) -> impl Fn(&str) -> Result<Unset<T>, String> + Clone + Send + Sync + 'static {
    move |raw| {
        if raw.trim().is_empty() {
            Ok(Unset(None))
        } else {
            parse(raw).map(|v| Unset(Some(v)))
        }
    }
}

/// A whole number from `min` to `max`.
fn number(
    min: u64,
    max: u64,
) -> impl Fn(&str) -> Result<u64, String> + Clone + Send + Sync + 'static {
    move |raw| {
        raw.trim()
            .parse::<u64>()
            .ok()
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| format!("must be a whole number from {min} to {max}"))
    }
}

fn parse_addr(raw: &str) -> Result<SocketAddr, String> {
    raw.trim()
        .parse::<SocketAddr>()
        .map_err(|_| format!("'{raw}' is not an address like {DEFAULT_HTTP_ADDR}"))
}

fn parse_bool(raw: &str) -> Result<bool, String> {
    match raw.trim() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err("must be true or false".to_owned()),
    }
}

fn parse_on_off(raw: &str) -> Result<bool, String> {
    match raw.trim() {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err("must be on or off".to_owned()),
    }
}

fn parse_rate(raw: &str) -> Result<Rate, String> {
    raw.parse()
}

fn parse_header_name(raw: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(raw.trim().as_bytes())
        .map_err(|_| format!("'{raw}' is not a header name like x-forwarded-for"))
}

fn parse_text(raw: &str) -> Result<String, String> {
    Ok(raw.to_owned())
}

fn parse_database_url(raw: &str) -> Result<String, String> {
    Backend::from_url(raw)
        .map(|_| raw.to_owned())
        .map_err(|_| "must start with sqlite:, postgres:// or postgresql://".to_owned())
}

fn parse_jwt_secret(raw: &str) -> Result<SecretString, String> {
    let min = surge_http::auth::MIN_JWT_SECRET_BYTES;
    if raw.len() < min {
        return Err(format!("must be at least {min} bytes"));
    }
    Ok(SecretString::from(raw))
}

/// Longest accepted `SURGE_NODE_ID`.
const MAX_NODE_ID: usize = 64;

fn parse_node_id(raw: &str) -> Result<String, String> {
    let ok = !raw.is_empty()
        && raw.len() <= MAX_NODE_ID
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(raw.to_owned())
    } else {
        Err(format!(
            "must be 1 to {MAX_NODE_ID} letters, digits, '-', '_' or '.' (it names the node in \
             headers and in the cluster table)"
        ))
    }
}

fn parse_cluster_secret(raw: &str) -> Result<SecretString, String> {
    if raw.len() < MIN_CLUSTER_SECRET_BYTES {
        return Err(format!("must be at least {MIN_CLUSTER_SECRET_BYTES} bytes"));
    }
    Ok(SecretString::from(raw))
}

fn parse_login_id(raw: &str) -> Result<LoginId, String> {
    LoginId::parse(raw).map_err(|e| e.message)
}

fn parse_password(raw: &str) -> Result<Password, String> {
    Password::parse(raw).map_err(|e| e.message)
}

fn parse_stock_strategy(raw: &str) -> Result<StockStrategy, String> {
    StockStrategy::parse(raw.trim())
        .ok_or_else(|| "must be actor, row-lock, conditional-update or redis-decr".to_owned())
}

fn parse_redis_url(raw: &str) -> Result<SecretString, String> {
    if raw.starts_with("redis://") {
        Ok(SecretString::from(raw))
    } else {
        Err(
            "must start with redis:// (this build has no TLS; use a local tunnel for rediss)"
                .to_owned(),
        )
    }
}

fn parse_key_prefix(raw: &str) -> Result<String, String> {
    if raw.len() > MAX_KEY_PREFIX
        || !raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c))
    {
        return Err(format!(
            "must be 1 to {MAX_KEY_PREFIX} characters of [A-Za-z0-9_.:-]"
        ));
    }
    Ok(raw.to_owned())
}

fn parse_mongo_url(raw: &str) -> Result<SecretString, String> {
    if raw.starts_with("mongodb://") {
        Ok(SecretString::from(raw.to_owned()))
    } else {
        Err("must start with mongodb://".to_owned())
    }
}

/// Kafka topic names allow `[A-Za-z0-9._-]`; the prefix is at most 64 of them.
fn parse_topic_prefix(raw: &str) -> Result<String, String> {
    if raw.len() > MAX_KEY_PREFIX
        || !raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    {
        return Err(format!(
            "must be 1 to {MAX_KEY_PREFIX} characters of [A-Za-z0-9_.-]"
        ));
    }
    Ok(raw.to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn rate_limits_are_on_by_default_and_each_rate_is_checked() {
        let c = config(&[]).unwrap();
        assert!(c.rate_limits.enabled);
        assert_eq!(c.rate_limits.login_per_account.to_string(), "10/min");
        assert!(c.rate_limits.client_ip_header.is_none());
        let c = config(&[
            ("SURGE_RATE_LIMITS", "off"),
            ("SURGE_LIMIT_ORDERS_PER_MEMBER", "3/h"),
            ("SURGE_CLIENT_IP_HEADER", "X-Forwarded-For"),
        ])
        .unwrap();
        assert!(!c.rate_limits.enabled);
        assert_eq!(c.rate_limits.orders_per_member.to_string(), "3/h");
        assert_eq!(
            c.rate_limits.client_ip_header.map(|h| h.to_string()),
            Some("x-forwarded-for".to_owned())
        );
        for (variable, bad) in [
            ("SURGE_RATE_LIMITS", "maybe"),
            ("SURGE_LIMIT_LOGIN_PER_IP", "10 per minute"),
            ("SURGE_LIMIT_SIGNUPS_PER_IP", "0/min"),
            ("SURGE_CLIENT_IP_HEADER", "not a header"),
        ] {
            let err = config(&[(variable, bad)]).unwrap_err();
            assert_eq!(err.variable, variable, "{err}");
        }
    }

    #[test]
    fn cors_origins_are_listed_origins() {
        let c = config(&[(
            "SURGE_CORS_ORIGINS",
            "https://shop.example, http://localhost:3000",
        )])
        .unwrap();
        assert_eq!(
            c.cors_origins,
            vec!["https://shop.example", "http://localhost:3000"]
        );
        assert!(config(&[]).unwrap().cors_origins.is_empty());
    }

    #[test]
    fn defaults_are_embedded_and_local() {
        let c = config(&[]).unwrap();
        assert_eq!(c.http_addr.to_string(), DEFAULT_HTTP_ADDR);
        assert_eq!(c.database_url, DEFAULT_DATABASE_URL);
        assert_eq!(c.backend, Backend::Sqlite);
        assert!(c.jwt_secret.is_none() && c.bootstrap_admin.is_none() && c.admin_addr.is_none());
    }

    #[test]
    fn bad_values_name_their_variable() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("SURGE_HTTP_ADDR", "nonsense")], "SURGE_HTTP_ADDR"),
            (&[("SURGE_ADMIN_ADDR", "1.2.3")], "SURGE_ADMIN_ADDR"),
            (
                &[("SURGE_DATABASE_URL", "oracle://x")],
                "SURGE_DATABASE_URL",
            ),
            (
                &[("SURGE_DATABASE_URL", "postgres://x/y")],
                "SURGE_JWT_SECRET",
            ),
            (&[("SURGE_JWT_SECRET", "short")], "SURGE_JWT_SECRET"),
            (
                &[("SURGE_CORS_ORIGINS", "shop.example")],
                "SURGE_CORS_ORIGINS",
            ),
            (
                &[("SURGE_CORS_ORIGINS", "https://*.example")],
                "SURGE_CORS_ORIGINS",
            ),
            (
                &[("SURGE_CORS_ORIGINS", "https://shop.example/path")],
                "SURGE_CORS_ORIGINS",
            ),
            (&[("SURGE_NODE_ID", "a node")], "SURGE_NODE_ID"),
            (&[("SURGE_SHARDS", "0")], "SURGE_SHARDS"),
            (
                &[("SURGE_CLUSTER_ADDR", "127.0.0.1:9000")],
                "SURGE_CLUSTER_ADDR",
            ),
            (
                &[("SURGE_BOOTSTRAP_ADMIN_LOGIN_ID", "admin")],
                "SURGE_BOOTSTRAP_ADMIN_PASSWORD",
            ),
            (
                &[
                    ("SURGE_BOOTSTRAP_ADMIN_LOGIN_ID", "a b"),
                    ("SURGE_BOOTSTRAP_ADMIN_PASSWORD", "long enough pw"),
                ],
                "SURGE_BOOTSTRAP_ADMIN_LOGIN_ID",
            ),
            (
                &[("SURGE_REDIS_URL", "http://127.0.0.1")],
                "SURGE_REDIS_URL",
            ),
            (
                &[
                    ("SURGE_REDIS_URL", "redis://127.0.0.1"),
                    ("SURGE_REDIS_KEY_PREFIX", "no spaces"),
                ],
                "SURGE_REDIS_KEY_PREFIX",
            ),
            (
                &[("SURGE_KAFKA_TOPIC_PREFIX", "no spaces")],
                "SURGE_KAFKA_TOPIC_PREFIX",
            ),
            (
                &[("SURGE_OUTBOX_RETENTION_S", "0")],
                "SURGE_OUTBOX_RETENTION_S",
            ),
            #[cfg(not(feature = "kafka"))]
            (
                &[("SURGE_KAFKA_BROKERS", "127.0.0.1:9092")],
                "SURGE_KAFKA_BROKERS",
            ),
            (&[("SURGE_STOCK_STRATEGY", "yolo")], "SURGE_STOCK_STRATEGY"),
            (
                &[("SURGE_STOCK_STRATEGY", "redis-decr")],
                "SURGE_STOCK_STRATEGY",
            ),
        ];
        for (vars, variable) in cases {
            let err = config(vars).unwrap_err();
            assert_eq!(err.variable, *variable, "{vars:?}");
        }
    }

    #[test]
    fn every_argument_has_a_listed_variable_and_every_variable_an_argument() {
        let command = ServeArgs::augment_args(Command::new("serve"));
        let envs: Vec<String> = command
            .get_arguments()
            .map(|a| a.get_env().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(envs.len(), VARIABLES.len());
        for variable in VARIABLES {
            assert!(envs.iter().any(|e| e == variable), "{variable}");
        }
    }

    #[test]
    fn blank_values_are_unset_and_values_are_trimmed_where_they_were() {
        let c = config(&[
            ("SURGE_HTTP_ADDR", " "),
            ("SURGE_ADMIN_ADDR", ""),
            ("SURGE_JWT_SECRET", ""),
            ("SURGE_REDIS_URL", "  "),
            ("SURGE_FLUSH_TICK_MS", " 5 "),
            ("SURGE_STOCK_STRATEGY", " row-lock "),
        ])
        .unwrap();
        assert_eq!(c.http_addr.to_string(), DEFAULT_HTTP_ADDR);
        assert!(c.admin_addr.is_none() && c.jwt_secret.is_none() && c.redis.is_none());
        assert_eq!(c.flush_tick, Duration::from_millis(5));
        assert_eq!(c.stock_strategy, StockStrategy::RowLock);
    }

    #[test]
    fn messages_keep_their_wording_and_never_show_a_secret() {
        let err = config(&[("SURGE_FLUSH_TICK_MS", "2000")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "SURGE_FLUSH_TICK_MS: must be a whole number from 0 to 1000"
        );
        let err = config(&[("SURGE_JWT_SECRET", "hunter2")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "SURGE_JWT_SECRET: must be at least 32 bytes"
        );
        let err = config(&[("SURGE_REDIS_URL", "rediss://:hunter2@host")]).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        // Values that look like options stay values.
        let err = config(&[("SURGE_NODE_ID", "--help")]);
        assert_eq!(err.unwrap().node_id, "--help");
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let c = config(&[
            (
                "SURGE_JWT_SECRET",
                "0123456789abcdef0123456789abcdef-hunter2",
            ),
            ("SURGE_REDIS_URL", "redis://:hunter2@127.0.0.1"),
            ("SURGE_BOOTSTRAP_ADMIN_LOGIN_ID", "admin"),
            ("SURGE_BOOTSTRAP_ADMIN_PASSWORD", "hunter2 long enough"),
        ])
        .unwrap();
        assert!(!format!("{c:?}").contains("hunter2"), "{c:?}");
    }

    #[test]
    fn postgres_with_a_secret_is_accepted() {
        let c = config(&[
            ("SURGE_DATABASE_URL", "postgres://u@h/db"),
            ("SURGE_JWT_SECRET", "0123456789abcdef0123456789abcdef"),
            ("SURGE_BOOTSTRAP_ADMIN_LOGIN_ID", "admin"),
            ("SURGE_BOOTSTRAP_ADMIN_PASSWORD", "long enough pw"),
        ])
        .unwrap();
        assert_eq!(c.backend, Backend::Postgres);
        assert_eq!(c.bootstrap_admin.unwrap().login_id.as_str(), "admin");
    }
}
