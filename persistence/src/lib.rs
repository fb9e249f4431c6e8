//! Durable state of a Surge node, behind one [`Database`] handle.
//!
//! The same SQL runs on SQLite (embedded mode) and PostgreSQL through sqlx's `Any` driver. The
//! statements stay portable: `$n` placeholders, `BIGINT` everywhere (times are Unix milliseconds),
//! no vendor functions on the hot path. Each back end has its own migration folder because DDL
//! (identity columns) is where the dialects really differ.

pub mod cluster;
pub mod committer;
pub mod comparison;
pub mod coupons;
mod db;
mod error;
pub mod items;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "mongo")]
pub mod mongo_pages;
pub mod my_page;
pub mod orders;
pub mod outbox;
mod placement;
pub mod redis_coupons;
pub mod sessions;
pub mod stock;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod users;

pub use db::{Backend, Database, DatabaseOptions, now_millis, sqlite_file};
pub use error::PersistenceError;
