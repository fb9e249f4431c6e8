//! What the bench and the node it starts agree on: the node's variables the bench sets or
//! falls back to, and the values of `SURGE_STOCK_STRATEGY`. A leaf: it imports nothing of
//! this crate.

use serde::Serialize;

/// The node's bootstrap ADMIN variables, which the admin credentials fall back to.
pub const ADMIN_LOGIN_ID_VAR: &str = "SURGE_BOOTSTRAP_ADMIN_LOGIN_ID";
pub const ADMIN_PASSWORD_VAR: &str = "SURGE_BOOTSTRAP_ADMIN_PASSWORD";
/// The node's Redis variable, which `--redis-url` of `compare` falls back to.
pub const REDIS_URL_VAR: &str = "SURGE_REDIS_URL";

/// How order lines take stock: the values of the node's `SURGE_STOCK_STRATEGY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Surge's design: per-item actors, in-memory allotments, group commit.
    Actor,
    /// `SELECT … FOR UPDATE`, then `UPDATE`, one transaction per order line.
    RowLock,
    /// `UPDATE … WHERE available >= n`, one transaction per order line.
    ConditionalUpdate,
    /// A Lua check-and-decrement in Redis, then the row update (needs Redis).
    RedisDecr,
}

impl Strategy {
    /// Every strategy, in the order a comparison runs them by default: the actor path first,
    /// so the ratios are read against a figure already on screen.
    pub const ALL: [Self; 4] = [
        Self::Actor,
        Self::RowLock,
        Self::ConditionalUpdate,
        Self::RedisDecr,
    ];

    /// The value of `SURGE_STOCK_STRATEGY`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Actor => "actor",
            Self::RowLock => "row-lock",
            Self::ConditionalUpdate => "conditional-update",
            Self::RedisDecr => "redis-decr",
        }
    }

    pub fn needs_redis(self) -> bool {
        self == Self::RedisDecr
    }
}
