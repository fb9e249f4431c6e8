//! HTTP tests against a real node, each on SQLite and on PostgreSQL.

#![allow(clippy::unwrap_used)]

mod helpers;

mod auth;
mod connections;
mod coupon_orders;
mod coupon_outage;
mod coupons;
mod errors;
mod events;
mod hardening;
mod items;
#[cfg(feature = "kafka")]
mod kafka;
mod limits;
mod members;
#[cfg(feature = "mongo")]
mod mongo;
mod ops;
mod orders;
mod outage;
mod purchase_limits;
mod restart;
mod stock;
mod strategies;
mod streams;
