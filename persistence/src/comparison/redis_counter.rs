//! A per-item counter in Redis for the `redis-decr` comparison strategy: one Lua
//! check-and-decrement per order line gates the database write, so losers of a sale never
//! reach the database. Key: `P:stock:{item}`, seeded from the item row on first use. Comparison
//! only: units released later (cancellations, expiries) go back to the item row, not to the
//! counter, so this strategy can undersell after releases; it never oversells.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, RedisError};

/// Answers of [`DECREMENT_SCRIPT`] below zero.
const UNKNOWN_ITEM: i64 = -2;
const NOT_ENOUGH: i64 = -1;

/// Check the counter holds `ARGV[1]` units and take them, atomically.
const DECREMENT_SCRIPT: &str = r"
local left = redis.call('GET', KEYS[1])
if not left then return -2 end
if tonumber(left) < tonumber(ARGV[1]) then return -1 end
return redis.call('DECRBY', KEYS[1], ARGV[1])
";

/// What the counter said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CounterTake {
    /// Taken.
    Taken,
    /// Not enough left.
    NotEnough,
    /// Not seeded yet.
    Unseeded,
}

/// Handle to the counters.
#[derive(Clone)]
pub struct RedisStock {
    conn: ConnectionManager,
    prefix: String,
    script: redis::Script,
}

impl std::fmt::Debug for RedisStock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStock")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStock {
    /// Connects; every call is bounded by `timeout`.
    pub async fn connect(url: &str, prefix: &str, timeout: Duration) -> Result<Self, RedisError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let conn = ConnectionManager::new_with_config(redis::Client::open(url)?, config).await?;
        Ok(Self {
            conn,
            prefix: prefix.to_owned(),
            script: redis::Script::new(DECREMENT_SCRIPT),
        })
    }

    fn key(&self, item_id: i64) -> String {
        format!("{}:stock:{item_id}", self.prefix)
    }

    /// Takes `quantity` units from the item's counter.
    pub async fn take(&self, item_id: i64, quantity: i64) -> Result<CounterTake, RedisError> {
        let mut conn = self.conn.clone();
        let left: i64 = self
            .script
            .key(self.key(item_id))
            .arg(quantity)
            .invoke_async(&mut conn)
            .await?;
        Ok(match left {
            UNKNOWN_ITEM => CounterTake::Unseeded,
            NOT_ENOUGH => CounterTake::NotEnough,
            _ => CounterTake::Taken,
        })
    }

    /// Sets the counter unless it exists.
    pub async fn seed(&self, item_id: i64, available: i64) -> Result<(), RedisError> {
        let mut conn = self.conn.clone();
        let _: bool = conn.set_nx(self.key(item_id), available).await?;
        Ok(())
    }

    /// Puts units back (the database write after a take failed).
    pub async fn give_back(&self, item_id: i64, quantity: i64) -> Result<(), RedisError> {
        let mut conn = self.conn.clone();
        let _: i64 = conn.incr(self.key(item_id), quantity).await?;
        Ok(())
    }
}
