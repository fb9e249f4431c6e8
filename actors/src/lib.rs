//! The actors of a Surge node: one [`stock::StockActor`] per item, serializing reservations in
//! memory and making them durable through the group committer; one order saga per order; one
//! coupon actor per live coupon.

pub mod baseline;
pub mod coupon;
pub mod issue_writer;
pub mod saga;
pub mod stock;
mod supervision;

pub use baseline::{BaselineStock, StockStrategy};
pub use coupon::{CouponActors, CouponConfig, CouponError, CouponStore, IssueOutcome, QueueStatus};
pub use issue_writer::{IssueWriter, IssueWriterConfig};
pub use saga::{CouponProblem, OrderRequest, OrderSagas, SagaError, SagaOutcome};
pub use stock::{ReserveError, StockActors, StockConfig};
