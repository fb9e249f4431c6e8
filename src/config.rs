//! Typed configuration, read once from the environment at start.
//!
//! Every variable has a safe default; a bad value stops the node with a message naming the
//! variable (see [`ConfigError`]), before anything listens or connects.

use std::net::SocketAddr;
use std::time::Duration;

use secrecy::SecretString;
use surge_actors::StockStrategy;
use surge_domain::{LoginId, Password};
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
}

/// Longest accepted `SURGE_REDIS_KEY_PREFIX`.
const MAX_KEY_PREFIX: usize = 64;

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads configuration through `lookup`, so tests can pass their own variables.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let http_addr = parse_addr("SURGE_HTTP_ADDR", get("SURGE_HTTP_ADDR"))?
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
        let admin_addr = parse_addr("SURGE_ADMIN_ADDR", get("SURGE_ADMIN_ADDR"))?;
        let database_url =
            get("SURGE_DATABASE_URL").unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned());
        let backend = Backend::from_url(&database_url).map_err(|_| {
            invalid(
                "SURGE_DATABASE_URL",
                "must start with sqlite:, postgres:// or postgresql://",
            )
        })?;
        for (variable, what) in [
            ("SURGE_KAFKA_BROKERS", "cluster mode over Kafka"),
            ("SURGE_MONGO_URL", "the MongoDB read model"),
        ] {
            if get(variable).is_some() {
                return Err(invalid(
                    variable,
                    format!("{what} is not part of this build yet; unset it to run embedded"),
                ));
            }
        }
        let jwt_secret = get("SURGE_JWT_SECRET");
        if let Some(secret) = &jwt_secret
            && secret.len() < surge_http::auth::MIN_JWT_SECRET_BYTES
        {
            return Err(invalid(
                "SURGE_JWT_SECRET",
                format!(
                    "must be at least {} bytes",
                    surge_http::auth::MIN_JWT_SECRET_BYTES
                ),
            ));
        }
        if jwt_secret.is_none() && backend != Backend::Sqlite {
            return Err(invalid(
                "SURGE_JWT_SECRET",
                "is required when the database is not the embedded SQLite file \
                 (every node must sign with the same key)",
            ));
        }
        let bootstrap_admin = match (
            get("SURGE_BOOTSTRAP_ADMIN_LOGIN_ID"),
            get("SURGE_BOOTSTRAP_ADMIN_PASSWORD"),
        ) {
            (None, None) => None,
            (Some(login_id), Some(password)) => Some(BootstrapAdmin {
                login_id: LoginId::parse(&login_id)
                    .map_err(|e| invalid("SURGE_BOOTSTRAP_ADMIN_LOGIN_ID", e.message))?,
                password: Password::parse(&password)
                    .map_err(|e| invalid("SURGE_BOOTSTRAP_ADMIN_PASSWORD", e.message))?,
            }),
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
        let number = |variable: &'static str,
                      default: u64,
                      min: u64,
                      max: u64|
         -> Result<u64, ConfigError> {
            match get(variable) {
                None => Ok(default),
                Some(v) => v
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|n| (min..=max).contains(n))
                    .ok_or_else(|| {
                        invalid(
                            variable,
                            format!("must be a whole number from {min} to {max}"),
                        )
                    }),
            }
        };
        let node_id = get("SURGE_NODE_ID").unwrap_or_else(|| "node-1".to_owned());
        let order_answer_timeout =
            Duration::from_millis(number("SURGE_ORDER_ANSWER_TIMEOUT_MS", 3_000, 1, 60_000)?);
        let flush_tick = Duration::from_millis(number("SURGE_FLUSH_TICK_MS", 1, 0, 1_000)?);
        let max_inflight_orders =
            usize::try_from(number("SURGE_MAX_INFLIGHT_ORDERS", 8_192, 1, 1_000_000)?)
                .unwrap_or(8_192);
        let reservation_ttl =
            Duration::from_millis(number("SURGE_RESERVATION_TTL_MS", 30_000, 100, 3_600_000)?);
        let stock_passivate_after =
            Duration::from_millis(number("SURGE_STOCK_PASSIVATE_MS", 60_000, 100, 86_400_000)?);
        let max_waiting_per_item =
            usize::try_from(number("SURGE_MAX_WAITING_PER_ITEM", 10_000, 1, 1_000_000)?)
                .unwrap_or(10_000);
        let stock_strategy = match get("SURGE_STOCK_STRATEGY") {
            None => StockStrategy::Actor,
            Some(raw) => StockStrategy::parse(raw.trim()).ok_or_else(|| {
                invalid(
                    "SURGE_STOCK_STRATEGY",
                    "must be actor, row-lock, conditional-update or redis-decr",
                )
            })?,
        };
        let coupon_answer_timeout =
            Duration::from_millis(number("SURGE_COUPON_ANSWER_TIMEOUT_MS", 5_000, 1, 60_000)?);
        let redis = match get("SURGE_REDIS_URL") {
            None => None,
            Some(url) => {
                if !url.starts_with("redis://") {
                    return Err(invalid(
                        "SURGE_REDIS_URL",
                        "must start with redis:// (this build has no TLS; use a local tunnel for rediss)",
                    ));
                }
                let key_prefix = get("SURGE_REDIS_KEY_PREFIX").unwrap_or_else(|| "surge".into());
                if key_prefix.len() > MAX_KEY_PREFIX
                    || !key_prefix
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c))
                {
                    return Err(invalid(
                        "SURGE_REDIS_KEY_PREFIX",
                        format!("must be 1 to {MAX_KEY_PREFIX} characters of [A-Za-z0-9_.:-]"),
                    ));
                }
                let claim_idle = Duration::from_millis(number(
                    "SURGE_COUPON_CLAIM_IDLE_MS",
                    30_000,
                    100,
                    3_600_000,
                )?);
                let timeout =
                    Duration::from_millis(number("SURGE_REDIS_TIMEOUT_MS", 1_000, 10, 60_000)?);
                Some(RedisSettings {
                    timeout,
                    url: SecretString::from(url),
                    key_prefix,
                    claim_idle,
                })
            }
        };
        if stock_strategy == StockStrategy::RedisDecr && redis.is_none() {
            return Err(invalid(
                "SURGE_STOCK_STRATEGY",
                "redis-decr needs SURGE_REDIS_URL",
            ));
        }
        Ok(Self {
            max_waiting_per_item,
            stock_strategy,
            coupon_answer_timeout,
            redis,
            stock_passivate_after,
            node_id,
            order_answer_timeout,
            flush_tick,
            max_inflight_orders,
            reservation_ttl,
            http_addr,
            admin_addr,
            database_url,
            backend,
            jwt_secret: jwt_secret.map(SecretString::from),
            bootstrap_admin,
        })
    }
}

fn parse_addr(
    variable: &'static str,
    value: Option<String>,
) -> Result<Option<SocketAddr>, ConfigError> {
    value
        .map(|v| {
            v.trim().parse::<SocketAddr>().map_err(|_| {
                invalid(
                    variable,
                    format!("'{v}' is not an address like {DEFAULT_HTTP_ADDR}"),
                )
            })
        })
        .transpose()
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
