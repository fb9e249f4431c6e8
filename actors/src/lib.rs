//! The actors of a Surge node, one folder per feature:
//!
//! - [`stock`]: one [`StockActor`](stock::StockActor) per item serializes its sales in memory
//!   as holds under its epoch; an order's own write takes the units, fenced (no oversell);
//! - [`orders`]: one saga per order: hold every line, write the order once, all or nothing;
//! - [`coupons`]: one actor per live coupon, first come first served (never twice, never past
//!   its quantity);
//! - [`events`]: the outbox relay and the consumers of its events (the my-page read model).

pub mod coupons;
pub mod events;
pub mod orders;
pub mod stock;

pub use coupons::{
    CouponActors, CouponConfig, CouponError, CouponStore, IssueOutcome, IssueWriter,
    IssueWriterConfig, QueueStatus,
};
pub use orders::{CouponProblem, OrderRequest, OrderSagas, SagaDeps, SagaError, SagaOutcome};
pub use stock::{
    BaselineStock, ReserveError, ShardOwnership, StockActors, StockConfig, StockPath, StockStrategy,
};
