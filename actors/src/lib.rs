//! The actors of a Surge node, one folder per feature:
//!
//! - [`stock`]: one [`StockActor`](stock::StockActor) per item serializes its sales in memory
//!   and makes them durable in fenced batches (no oversell);
//! - [`orders`]: one saga per order, all or nothing over its lines, compensating on failure;
//! - [`coupons`]: one actor per live coupon, first come first served (never twice, never past
//!   its quantity).

pub mod coupons;
pub mod orders;
pub mod stock;

pub use coupons::{
    CouponActors, CouponConfig, CouponError, CouponStore, IssueOutcome, IssueWriter,
    IssueWriterConfig, QueueStatus,
};
pub use orders::{CouponProblem, OrderRequest, OrderSagas, SagaDeps, SagaError, SagaOutcome};
pub use stock::{BaselineStock, ReserveError, StockActors, StockConfig, StockPath, StockStrategy};
