//! `flash-sale` and `orders`: members place orders; afterwards every order's outcome is settled
//! and each item's units are counted back through the API.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rand::Rng;
use rand::seq::index::sample;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::attempt_rng;
use crate::api::Api;
use crate::concurrent::bounded;
use crate::driver::Workload;
use crate::error::BenchError;
use crate::invariants::{FollowUp, InvariantCheck, StockCount, stock_checks};
use crate::stats::Reply;
use crate::users::BenchUser;

/// How long after the run an order with an unknown outcome (202, no answer, 5xx) is retried
/// with its `Idempotency-Key` before it counts as unsettled.
const SETTLE_DEADLINE: Duration = Duration::from_secs(60);
/// The pause between two retries of one unsettled order.
const SETTLE_RETRY_PAUSE: Duration = Duration::from_millis(200);
/// Unsettled orders and item reads in flight at once after the run.
const READ_BACK_CONCURRENCY: usize = 16;

/// An item the run sells and the units it started with.
#[derive(Debug, Clone, Copy)]
pub struct StockedItem {
    pub item_id: i64,
    pub initial: u64,
}

/// What one order looks like.
#[derive(Debug, Clone, Copy)]
pub struct OrderShape {
    /// Lines per order: 1 to this many distinct items (capped by the number of items).
    pub max_lines: usize,
    /// Units per line: 1 to this many.
    pub max_quantity: u64,
}

impl OrderShape {
    /// One unit of one item: the flash sale.
    pub const SINGLE_UNIT: Self = Self {
        max_lines: 1,
        max_quantity: 1,
    };
}

/// An order whose outcome the run does not know yet.
#[derive(Debug, Clone)]
struct PendingOrder {
    user: usize,
    key: String,
    lines: Vec<(i64, u64)>,
}

#[derive(Debug, Default)]
struct OrderBook {
    /// Units acknowledged per item id.
    sold: HashMap<i64, u64>,
    pending: Vec<PendingOrder>,
}

/// What an order answer means for the units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OrderFate {
    /// 201: the units are sold.
    Sold,
    /// A 4xx, or 503 `OVERLOADED` (the node says nothing was reserved): nothing sold.
    Refused,
    /// 202 `PROCESSING`, another 5xx, or no answer: ask again with the same key.
    Unknown,
}

fn fate(reply: &Reply, replaying: bool) -> OrderFate {
    match reply.status {
        Some(201) => OrderFate::Sold,
        Some(s) if (400..500).contains(&s) => OrderFate::Refused,
        // A replay refused for load says nothing about the first attempt: ask again.
        Some(503) if !replaying && reply.code.as_deref() == Some("OVERLOADED") => {
            OrderFate::Refused
        }
        _ => OrderFate::Unknown,
    }
}

/// Places orders by random members over a set of items.
#[derive(Debug)]
pub struct OrderWorkload {
    api: Api,
    users: Arc<[BenchUser]>,
    items: Vec<StockedItem>,
    shape: OrderShape,
    seed: u64,
    run_tag: String,
    book: Mutex<OrderBook>,
}

impl OrderWorkload {
    pub fn new(
        api: Api,
        users: Arc<[BenchUser]>,
        items: Vec<StockedItem>,
        shape: OrderShape,
        seed: u64,
        run_tag: String,
    ) -> Self {
        Self {
            api,
            users,
            items,
            shape,
            seed,
            run_tag,
            book: Mutex::new(OrderBook::default()),
        }
    }

    fn book(&self) -> std::sync::MutexGuard<'_, OrderBook> {
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, fate: OrderFate, order: PendingOrder) {
        let mut book = self.book();
        match fate {
            OrderFate::Sold => {
                for (item, quantity) in &order.lines {
                    *book.sold.entry(*item).or_default() += quantity;
                }
            }
            OrderFate::Refused => {}
            OrderFate::Unknown => book.pending.push(order),
        }
    }

    async fn place(&self, order: &PendingOrder) -> Reply {
        let lines: Vec<Value> = order
            .lines
            .iter()
            .map(|(item, quantity)| json!({ "itemId": item, "quantity": quantity }))
            .collect();
        let request = self
            .api
            .request(Method::POST, "/api/v1/orders")
            .bearer_auth(&self.users[order.user].access_token)
            .header("Idempotency-Key", &order.key)
            .json(&json!({ "lines": lines }));
        self.api.call(request).await.0
    }

    /// Asks again, with the same key, for every order whose outcome is unknown, until each
    /// has a final answer or [`SETTLE_DEADLINE`] passes; then reads each item's stock.
    pub async fn settle_and_check(self: &Arc<Self>) -> Result<Vec<InvariantCheck>, BenchError> {
        let pending = std::mem::take(&mut self.book().pending);
        let open = pending.len() as u64;
        let deadline = Instant::now() + SETTLE_DEADLINE;
        let unsettled = bounded(pending, READ_BACK_CONCURRENCY, |order| {
            let this = Arc::clone(self);
            async move {
                loop {
                    match fate(&this.place(&order).await, true) {
                        OrderFate::Unknown if Instant::now() < deadline => {
                            tokio::time::sleep(SETTLE_RETRY_PAUSE).await;
                        }
                        OrderFate::Unknown => return 1u64,
                        settled => {
                            this.record(settled, order);
                            return 0;
                        }
                    }
                }
            }
        })
        .await
        .into_iter()
        .sum();
        let stocks = bounded(self.items.clone(), READ_BACK_CONCURRENCY, |item| {
            let api = self.api.clone();
            async move { api.item_stock(item.item_id).await }
        })
        .await;
        let book = self.book();
        let mut counts = Vec::with_capacity(self.items.len());
        for (item, available) in self.items.iter().zip(stocks) {
            counts.push(StockCount {
                item_id: item.item_id,
                initial: item.initial,
                sold: book.sold.get(&item.item_id).copied().unwrap_or(0),
                available: available?,
            });
        }
        Ok(stock_checks(&counts, FollowUp { open, unsettled }))
    }
}

impl Workload for OrderWorkload {
    async fn attempt(&self, index: u64) -> Reply {
        let mut rng = attempt_rng(self.seed, index);
        let user = rng.gen_range(0..self.users.len());
        let line_count = rng.gen_range(1..=self.shape.max_lines.min(self.items.len()));
        let lines = sample(&mut rng, self.items.len(), line_count)
            .into_iter()
            .map(|i| {
                (
                    self.items[i].item_id,
                    rng.gen_range(1..=self.shape.max_quantity),
                )
            })
            .collect();
        let order = PendingOrder {
            user,
            key: format!("{}-{index}", self.run_tag),
            lines,
        };
        let reply = self.place(&order).await;
        self.record(fate(&reply, false), order);
        reply
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: Option<u16>, code: Option<&str>) -> Reply {
        Reply {
            status,
            code: code.map(str::to_owned),
        }
    }

    #[test]
    fn only_definite_answers_settle_an_order() {
        assert_eq!(fate(&reply(Some(201), None), false), OrderFate::Sold);
        assert_eq!(
            fate(&reply(Some(409), Some("OUT_OF_STOCK")), false),
            OrderFate::Refused
        );
        assert_eq!(
            fate(&reply(Some(503), Some("OVERLOADED")), false),
            OrderFate::Refused
        );
        assert_eq!(
            fate(&reply(Some(503), Some("OVERLOADED")), true),
            OrderFate::Unknown
        );
        assert_eq!(fate(&reply(Some(202), None), false), OrderFate::Unknown);
        assert_eq!(
            fate(&reply(Some(500), Some("INTERNAL")), false),
            OrderFate::Unknown
        );
        assert_eq!(fate(&reply(None, None), false), OrderFate::Unknown);
    }
}
