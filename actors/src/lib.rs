//! The actors of a Surge node: one [`stock::StockActor`] per item, serializing reservations in
//! memory and making them durable through the group committer; one order saga per order.

pub mod saga;
pub mod stock;
mod supervision;

pub use saga::{OrderRequest, OrderSagas, SagaError, SagaOutcome};
pub use stock::{ReserveError, StockActors, StockConfig};
