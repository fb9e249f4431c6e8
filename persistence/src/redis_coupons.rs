//! Redis as the authority for live coupon counts (scaled mode).
//!
//! Keys, all under the configured prefix `P` (default `surge`):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P:coupon:{id}` | hash | `quantity`, `remaining`, `opens_at` (Unix ms) |
//! | `P:coupon:{id}:holders` | hash | member id → `"{issued_at}|{idempotency key}"` |
//! | `P:coupon-issues` | stream | one entry per issue: `c` coupon, `u` member, `t` issued at, `k` key |
//!
//! The consumer group [`ISSUE_WRITERS`] writes stream entries to the database (idempotent on
//! coupon + member), then acknowledges and deletes them, so the stream holds only what is not
//! yet durable in the database.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{StreamAutoClaimOptions, StreamId, StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, Value};

/// The error of every Redis call, for callers that do not depend on the client crate.
pub use redis::RedisError;

use crate::coupons::{CouponRecord, IssueRecord, NewIssue};

/// Consumer group that moves issues from the stream into the database.
pub const ISSUE_WRITERS: &str = "coupon-writers";

/// Holder entries written per pipeline when seeding a coupon from the database.
const SEED_CHUNK: usize = 1_000;

/// The issue script: check the sale is open, refuse a member who already holds the coupon,
/// decrement, record the member and append the issue to the stream, all in one atomic step.
/// Returns `{outcome, record?}`; `record` is `"{issued_at}|{key}"`.
const ISSUE_SCRIPT: &str = r"
local remaining = redis.call('HGET', KEYS[1], 'remaining')
if not remaining then return {'UNKNOWN'} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now < tonumber(redis.call('HGET', KEYS[1], 'opens_at')) then return {'NOT_OPEN'} end
local held = redis.call('HGET', KEYS[2], ARGV[2])
if held then return {'ALREADY_ISSUED', held} end
if tonumber(remaining) <= 0 then return {'SOLD_OUT'} end
redis.call('HINCRBY', KEYS[1], 'remaining', -1)
local record = string.format('%d|%s', now, ARGV[3])
redis.call('HSET', KEYS[2], ARGV[2], record)
redis.call('XADD', KEYS[3], '*', 'c', ARGV[1], 'u', ARGV[2], 't', string.format('%d', now), 'k', ARGV[3])
return {'ISSUED', record}
";

/// What the issue script answered for one member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisIssue {
    /// Issued now.
    Issued {
        /// Unix ms.
        issued_at: i64,
    },
    /// The member held it already.
    AlreadyIssued {
        /// Unix ms of the first issue.
        issued_at: i64,
        /// The Idempotency-Key that got it.
        key: Option<String>,
    },
    /// None left.
    SoldOut,
    /// Before `opens_at`.
    NotOpen,
    /// Redis has no such coupon (never seeded, or Redis lost its data): seed and ask again.
    Unknown,
}

/// One stream entry: an issue to make durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamIssue {
    /// Stream entry id, to acknowledge.
    pub entry_id: String,
    /// The issue, or `None` for a malformed entry (acknowledged and dropped with a log line).
    pub issue: Option<NewIssue>,
}

/// Handle to the Redis coupon store. Cheap to clone (one multiplexed connection).
#[derive(Clone)]
pub struct RedisCoupons {
    conn: ConnectionManager,
    client: redis::Client,
    prefix: String,
    script: redis::Script,
    /// A Redis call slower than this counts as failed: a hung Redis must open the breaker,
    /// not hold requests until the client's own deadline.
    timeout: Duration,
}

impl std::fmt::Debug for RedisCoupons {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCoupons")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn manager_config(
    connect_timeout: Duration,
    response_timeout: Duration,
) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(connect_timeout))
        .set_response_timeout(Some(response_timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500))
}

fn parse_record(record: &str) -> (i64, Option<String>) {
    let (at, key) = record.split_once('|').unwrap_or((record, ""));
    let key = (!key.is_empty()).then(|| key.to_owned());
    (at.parse().unwrap_or(0), key)
}

fn parse_reply(value: Value) -> Result<RedisIssue, RedisError> {
    let parts: Vec<String> = redis::from_redis_value(value)?;
    let record = parts.get(1).map(|r| parse_record(r));
    Ok(match (parts.first().map(String::as_str), record) {
        (Some("ISSUED"), Some((issued_at, _))) => RedisIssue::Issued { issued_at },
        (Some("ALREADY_ISSUED"), Some((issued_at, key))) => {
            RedisIssue::AlreadyIssued { issued_at, key }
        }
        (Some("SOLD_OUT"), _) => RedisIssue::SoldOut,
        (Some("NOT_OPEN"), _) => RedisIssue::NotOpen,
        (Some("UNKNOWN"), _) => RedisIssue::Unknown,
        _ => {
            return Err(RedisError::from((
                redis::ErrorKind::Parse,
                "unexpected issue script reply",
            )));
        }
    })
}

fn parse_entry(entry: &StreamId) -> StreamIssue {
    let field = |name: &str| entry.get::<String>(name);
    let issue = (|| {
        Some(NewIssue {
            coupon_id: field("c")?.parse().ok()?,
            user_id: field("u")?.parse().ok()?,
            issued_at: field("t")?.parse().ok()?,
            idem_key: field("k").filter(|k| !k.is_empty()),
        })
    })();
    StreamIssue {
        entry_id: entry.id.clone(),
        issue,
    }
}

/// Keys asked for per `SCAN` page when a prefix is deleted.
const SCAN_PAGE: u64 = 500;

/// Deletes every key under `prefix` (`<prefix>:*`), a scan page at a time; returns how many.
async fn delete_keys_under(
    conn: &mut impl redis::aio::ConnectionLike,
    prefix: &str,
) -> Result<u64, RedisError> {
    let pattern = format!("{prefix}:*");
    let mut cursor: u64 = 0;
    let mut deleted = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(SCAN_PAGE)
            .query_async(conn)
            .await?;
        if !keys.is_empty() {
            let n: u64 = redis::cmd("UNLINK").arg(&keys).query_async(conn).await?;
            deleted += n;
        }
        if next == 0 {
            return Ok(deleted);
        }
        cursor = next;
    }
}

/// How [`RedisCoupons::claim_prefix`] found the prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrefixClaim {
    /// It had no owner: it is this database's now.
    Claimed,
    /// It was this database's already.
    Ours,
    /// Another database owns it; nothing was changed.
    Foreign {
        /// That database's identity.
        owner: String,
    },
    /// Another database owned it; its keys were deleted and the prefix is this one's.
    TakenOver {
        /// Keys deleted.
        deleted: u64,
    },
}

impl RedisCoupons {
    /// Connects (failing fast when Redis does not answer) and loads the issue script.
    /// `timeout` bounds every call.
    pub async fn connect(url: &str, prefix: &str, timeout: Duration) -> Result<Self, RedisError> {
        let client = redis::Client::open(url)?;
        let conn =
            ConnectionManager::new_with_config(client.clone(), manager_config(timeout, timeout))
                .await?;
        let this = Self {
            conn,
            client,
            prefix: prefix.to_owned(),
            script: redis::Script::new(ISSUE_SCRIPT),
            timeout,
        };
        this.load_script().await?;
        Ok(this)
    }

    async fn load_script(&self) -> Result<(), RedisError> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(ISSUE_SCRIPT)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// The key that names the database this prefix's keys belong to.
    pub fn owner_key(&self) -> String {
        format!("{}:database", self.prefix)
    }

    /// Claims this prefix for the database `identity`. Keys under a prefix name their
    /// database, so a node on a fresh database never reads another database's coupons (sold
    /// out, phantom holders) or drains its issue stream. A prefix without an owner (keys
    /// written before owners existed) is adopted. A prefix owned by another database is
    /// refused, unless `take_over`: then every key under it is deleted first.
    pub async fn claim_prefix(
        &self,
        identity: &str,
        take_over: bool,
    ) -> Result<PrefixClaim, RedisError> {
        let mut conn = self.conn.clone();
        let key = self.owner_key();
        let set: bool = redis::cmd("SET")
            .arg(&key)
            .arg(identity)
            .arg("NX")
            .query_async::<Option<String>>(&mut conn)
            .await?
            .is_some();
        if set {
            return Ok(PrefixClaim::Claimed);
        }
        let owner: Option<String> = conn.get(&key).await?;
        if owner.as_deref() == Some(identity) {
            return Ok(PrefixClaim::Ours);
        }
        if !take_over {
            return Ok(PrefixClaim::Foreign {
                owner: owner.unwrap_or_default(),
            });
        }
        let deleted = self.delete_prefix().await?;
        let _: () = conn.set(&key, identity).await?;
        Ok(PrefixClaim::TakenOver { deleted })
    }

    /// Deletes every key under the prefix (take-over).
    async fn delete_prefix(&self) -> Result<u64, RedisError> {
        let mut conn = self.conn.clone();
        delete_keys_under(&mut conn, &self.prefix).await
    }

    /// Removes a coupon's keys: a coupon being created starts from its definition alone,
    /// whatever an earlier database left under its id.
    pub async fn forget_coupon(&self, coupon_id: i64) -> Result<(), RedisError> {
        let mut conn = self.conn.clone();
        let _: u64 = redis::cmd("DEL")
            .arg(self.coupon_key(coupon_id))
            .arg(self.holders_key(coupon_id))
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// The hash of one coupon's counters.
    pub fn coupon_key(&self, coupon_id: i64) -> String {
        format!("{}:coupon:{coupon_id}", self.prefix)
    }

    /// The hash of one coupon's holders.
    pub fn holders_key(&self, coupon_id: i64) -> String {
        format!("{}:coupon:{coupon_id}:holders", self.prefix)
    }

    /// The stream of issues waiting to be written to the database.
    pub fn stream_key(&self) -> String {
        format!("{}:coupon-issues", self.prefix)
    }

    /// Puts a coupon into Redis unless it is there already: its holders from the database
    /// first, then its counters (the script treats a coupon without counters as unknown, so
    /// no issue can run against half-seeded state).
    pub async fn seed(
        &self,
        coupon: &CouponRecord,
        holders: &[IssueRecord],
    ) -> Result<(), RedisError> {
        let mut conn = self.conn.clone();
        let key = self.coupon_key(coupon.id);
        if conn.exists(&key).await? {
            return Ok(());
        }
        let holders_key = self.holders_key(coupon.id);
        for chunk in holders.chunks(SEED_CHUNK) {
            let mut pipe = redis::pipe();
            for h in chunk {
                let record = format!("{}|{}", h.issued_at, h.idem_key.as_deref().unwrap_or(""));
                pipe.hset_nx(&holders_key, h.user_id, record).ignore();
            }
            pipe.query_async::<()>(&mut conn).await?;
        }
        let issued = i64::try_from(holders.len()).unwrap_or(i64::MAX);
        let remaining = coupon.def.quantity.saturating_sub(issued).max(0);
        redis::pipe()
            .atomic()
            .hset_nx(&key, "quantity", coupon.def.quantity)
            .ignore()
            .hset_nx(&key, "opens_at", coupon.def.opens_at)
            .ignore()
            .hset_nx(&key, "remaining", remaining)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
    }

    /// Runs the issue script for each member in one pipeline, in order (first come, first
    /// served). A script missing from Redis's cache (`NOSCRIPT`, after a restart or
    /// `SCRIPT FLUSH`) is loaded again and only the calls it refused are repeated: those did
    /// not run, so repeating them cannot issue twice.
    pub async fn issue_batch(
        &self,
        coupon_id: i64,
        calls: &[(i64, Option<String>)],
    ) -> Result<Vec<Result<RedisIssue, RedisError>>, RedisError> {
        let mut results: Vec<Option<Result<RedisIssue, RedisError>>> = vec![None; calls.len()];
        for attempt in 0..2 {
            let todo: Vec<usize> = (0..calls.len()).filter(|i| results[*i].is_none()).collect();
            if todo.is_empty() {
                break;
            }
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for &i in &todo {
                let (user_id, key) = &calls[i];
                pipe.cmd("EVALSHA")
                    .arg(self.script.get_hash())
                    .arg(3)
                    .arg(self.coupon_key(coupon_id))
                    .arg(self.holders_key(coupon_id))
                    .arg(self.stream_key())
                    .arg(coupon_id)
                    .arg(*user_id)
                    .arg(key.as_deref().unwrap_or(""));
            }
            let mut conn = self.conn.clone();
            let values: Vec<Value> = pipe.query_async(&mut conn).await?;
            let mut missing_script = false;
            for (&i, value) in todo.iter().zip(values) {
                match value {
                    Value::ServerError(e)
                        if e.kind() == Some(redis::ServerErrorKind::NoScript) && attempt == 0 =>
                    {
                        missing_script = true;
                    }
                    Value::ServerError(e) => results[i] = Some(Err(e.into())),
                    v => results[i] = Some(parse_reply(v)),
                }
            }
            if missing_script {
                self.load_script().await?;
            }
        }
        Ok(results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(RedisError::from((
                        redis::ErrorKind::Server(redis::ServerErrorKind::NoScript),
                        "issue script missing after reload",
                    )))
                })
            })
            .collect())
    }

    /// Coupons left, or `None` when Redis does not know the coupon.
    pub async fn remaining(&self, coupon_id: i64) -> Result<Option<i64>, RedisError> {
        let mut conn = self.conn.clone();
        conn.hget(self.coupon_key(coupon_id), "remaining").await
    }

    /// The member's issue as Redis records it: (issued at, key).
    pub async fn holder(
        &self,
        coupon_id: i64,
        user_id: i64,
    ) -> Result<Option<(i64, Option<String>)>, RedisError> {
        let mut conn = self.conn.clone();
        let record: Option<String> = conn.hget(self.holders_key(coupon_id), user_id).await?;
        Ok(record.as_deref().map(parse_record))
    }

    /// A connection of its own for the stream consumer: its blocking reads must not stall the
    /// issue pipeline, which shares the main multiplexed connection.
    pub async fn consumer(&self, block: Duration) -> Result<IssueStream, RedisError> {
        let conn = ConnectionManager::new_with_config(
            self.client.clone(),
            manager_config(self.timeout, self.timeout + block),
        )
        .await?;
        let stream = IssueStream {
            conn,
            stream: self.stream_key(),
            block,
        };
        stream.ensure_group().await?;
        Ok(stream)
    }
}

/// The consumer side of the issue stream.
#[derive(Clone)]
pub struct IssueStream {
    conn: ConnectionManager,
    stream: String,
    block: Duration,
}

impl std::fmt::Debug for IssueStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssueStream")
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

impl IssueStream {
    /// Creates the consumer group (reading from the stream's start, so entries written before
    /// the group existed are not skipped) unless it exists.
    async fn ensure_group(&self) -> Result<(), RedisError> {
        let mut conn = self.conn.clone();
        let created: Result<(), RedisError> = conn
            .xgroup_create_mkstream(&self.stream, ISSUE_WRITERS, "0")
            .await;
        match created {
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            other => other,
        }
    }

    /// Reads up to `count` entries as `consumer`: with `pending`, the entries this consumer
    /// took earlier and never acknowledged (a restart under the same name); otherwise new
    /// ones, waiting up to the block time for them.
    pub async fn read(
        &self,
        consumer: &str,
        pending: bool,
        count: usize,
    ) -> Result<Vec<StreamIssue>, RedisError> {
        let mut conn = self.conn.clone();
        let mut options = StreamReadOptions::default()
            .group(ISSUE_WRITERS, consumer)
            .count(count);
        if !pending {
            options = options.block(usize::try_from(self.block.as_millis()).unwrap_or(1_000));
        }
        let id = if pending { "0" } else { ">" };
        let reply: Option<StreamReadReply> =
            conn.xread_options(&[&self.stream], &[id], &options).await?;
        Ok(reply
            .into_iter()
            .flat_map(|r| r.keys)
            .flat_map(|k| k.ids)
            .map(|e| parse_entry(&e))
            .collect())
    }

    /// Takes over entries another consumer read but did not acknowledge for `min_idle`
    /// (a consumer that died mid-batch).
    pub async fn claim_idle(
        &self,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<StreamIssue>, RedisError> {
        let mut conn = self.conn.clone();
        let reply: redis::streams::StreamAutoClaimReply = conn
            .xautoclaim_options(
                &self.stream,
                ISSUE_WRITERS,
                consumer,
                u64::try_from(min_idle.as_millis()).unwrap_or(u64::MAX),
                "0-0",
                StreamAutoClaimOptions::default().count(count),
            )
            .await?;
        Ok(reply.claimed.iter().map(parse_entry).collect())
    }

    /// Acknowledges entries now durable in the database and deletes them from the stream.
    pub async fn ack(&self, entry_ids: &[String]) -> Result<(), RedisError> {
        if entry_ids.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        redis::pipe()
            .xack(&self.stream, ISSUE_WRITERS, entry_ids)
            .ignore()
            .xdel(&self.stream, entry_ids)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_split_into_time_and_key() {
        assert_eq!(parse_record("1700000000123|"), (1_700_000_000_123, None));
        assert_eq!(parse_record("5|abc|def"), (5, Some("abc|def".to_owned())));
    }

    #[test]
    fn script_replies_parse() {
        let reply = |parts: &[&str]| {
            Value::Array(
                parts
                    .iter()
                    .map(|p| Value::BulkString(p.as_bytes().to_vec()))
                    .collect(),
            )
        };
        assert_eq!(
            parse_reply(reply(&["ISSUED", "42|k"])).unwrap(),
            RedisIssue::Issued { issued_at: 42 }
        );
        assert_eq!(
            parse_reply(reply(&["ALREADY_ISSUED", "7|key-1"])).unwrap(),
            RedisIssue::AlreadyIssued {
                issued_at: 7,
                key: Some("key-1".into())
            }
        );
        assert_eq!(
            parse_reply(reply(&["SOLD_OUT"])).unwrap(),
            RedisIssue::SoldOut
        );
        assert!(parse_reply(reply(&["WHAT"])).is_err());
    }
}
