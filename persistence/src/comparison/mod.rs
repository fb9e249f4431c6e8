//! The conventional stock strategies Surge is measured against (`SURGE_STOCK_STRATEGY`), for
//! `surge bench compare` only. Nothing on the product's order path uses them: each takes units
//! for one order line in a transaction of its own, as a conventional service would, and writes
//! the same `HELD` reservation row as the actor path, so confirmation, cancellation, expiry and
//! the unit accounting are shared.

mod redis_counter;
mod row_lock;

pub use redis_counter::{CounterTake, RedisStock};
pub use row_lock::{BaselineReserve, RowGuard};
