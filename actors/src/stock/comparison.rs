//! Conventional stock strategies, selectable with `SURGE_STOCK_STRATEGY` so that
//! `surge bench compare` can measure Surge's actor path against them on the same machine and
//! database. They exist for that comparison, not for production: each order line costs its own
//! transaction (and, for `row-lock`, a lock held across a round trip).

use std::time::Duration;

use surge_domain::{ItemId, Quantity};
use surge_persistence::comparison::{BaselineReserve, CounterTake, RedisStock, RowGuard};
use surge_persistence::{Database, now_millis};

use super::ReserveError;
use surge_persistence::orders::{HoldSource, ItemTerms};

use super::path::{Hold, PathFuture, StockPath};

/// How order lines take stock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StockStrategy {
    /// Surge's design: per-item actors, in-memory allotments, group commit (the default).
    Actor,
    /// `SELECT … FOR UPDATE`, check, `UPDATE`, reservation; one transaction per line.
    RowLock,
    /// `UPDATE … WHERE available >= n`, reservation; one transaction per line.
    ConditionalUpdate,
    /// A Lua check-and-decrement in Redis, then the row update and reservation in one
    /// transaction per line.
    RedisDecr,
}

impl StockStrategy {
    /// Parses the configuration value.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "actor" => Some(Self::Actor),
            "row-lock" => Some(Self::RowLock),
            "conditional-update" => Some(Self::ConditionalUpdate),
            "redis-decr" => Some(Self::RedisDecr),
            _ => None,
        }
    }

    /// The configuration value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Actor => "actor",
            Self::RowLock => "row-lock",
            Self::ConditionalUpdate => "conditional-update",
            Self::RedisDecr => "redis-decr",
        }
    }
}

/// A baseline strategy's stock path.
#[derive(Debug, Clone)]
pub struct BaselineStock {
    db: Database,
    guard: RowGuard,
    redis: Option<RedisStock>,
    reservation_ttl: Duration,
}

impl BaselineStock {
    /// `redis` is required for [`StockStrategy::RedisDecr`] and ignored otherwise; `None` is
    /// returned for [`StockStrategy::Actor`].
    pub fn new(
        strategy: StockStrategy,
        db: Database,
        redis: Option<RedisStock>,
        reservation_ttl: Duration,
    ) -> Option<Self> {
        let guard = match strategy {
            StockStrategy::Actor => return None,
            StockStrategy::RowLock => RowGuard::RowLock,
            StockStrategy::ConditionalUpdate => RowGuard::ConditionalUpdate,
            StockStrategy::RedisDecr => RowGuard::Unchecked,
        };
        Some(Self {
            db,
            guard,
            redis: if guard == RowGuard::Unchecked {
                redis
            } else {
                None
            },
            reservation_ttl,
        })
    }

    async fn terms(&self, item_id: i64) -> Result<Option<ItemTerms>, ReserveError> {
        self.db
            .item_terms(item_id)
            .await
            .map_err(|e| ReserveError::Unavailable(e.to_string()))
    }

    /// Takes units for one order line, durably, in a transaction of its own.
    async fn take(&self, item_id: i64, order_id: i64, quantity: i64) -> Result<(), ReserveError> {
        let unavailable = |e: String| ReserveError::Unavailable(e);
        if let Some(redis) = &self.redis {
            let mut taken = redis
                .take(item_id, quantity)
                .await
                .map_err(|e| unavailable(e.to_string()))?;
            if taken == CounterTake::Unseeded {
                let Some((_, available)) = self
                    .db
                    .price_and_available(item_id)
                    .await
                    .map_err(|e| unavailable(e.to_string()))?
                else {
                    return Err(ReserveError::ItemNotFound);
                };
                redis
                    .seed(item_id, available)
                    .await
                    .map_err(|e| unavailable(e.to_string()))?;
                taken = redis
                    .take(item_id, quantity)
                    .await
                    .map_err(|e| unavailable(e.to_string()))?;
            }
            if taken != CounterTake::Taken {
                return Err(ReserveError::OutOfStock);
            }
        }
        let deadline =
            now_millis() + i64::try_from(self.reservation_ttl.as_millis()).unwrap_or(i64::MAX / 2);
        let written = self
            .db
            .reserve_directly(self.guard, item_id, order_id, quantity, deadline)
            .await;
        if let (Some(redis), Err(_) | Ok(BaselineReserve::OutOfStock)) = (&self.redis, &written) {
            // The database did not take what Redis gave: give it back to the counter.
            let _ = redis.give_back(item_id, quantity).await;
        }
        match written {
            Ok(BaselineReserve::Reserved) => Ok(()),
            Ok(BaselineReserve::OutOfStock) => Err(ReserveError::OutOfStock),
            Ok(BaselineReserve::ItemNotFound) => Err(ReserveError::ItemNotFound),
            Err(e) => Err(unavailable(e.to_string())),
        }
    }
}

impl StockPath for BaselineStock {
    fn terms_of(&self, item: ItemId) -> PathFuture<'_, Result<Option<ItemTerms>, ReserveError>> {
        Box::pin(self.terms(item.get()))
    }

    fn hold(
        &self,
        item: ItemId,
        order_id: i64,
        quantity: Quantity,
        _within: Duration,
    ) -> PathFuture<'_, Result<Hold, ReserveError>> {
        Box::pin(async move {
            self.take(item.get(), order_id, quantity.get()).await?;
            Ok(Hold {
                item,
                quantity,
                source: HoldSource::Reservation,
            })
        })
    }

    fn release(&self, order_id: i64, hold: Hold) -> PathFuture<'_, ()> {
        Box::pin(async move {
            if let Err(e) = self.db.release_held(order_id, hold.item.get()).await {
                // The reservation stays HELD and the sweeper releases it at its deadline.
                tracing::warn!(order_id, error = %e, "releasing a held reservation failed");
            }
        })
    }

    fn lost(&self, _hold: Hold) {
        // A comparison strategy's hold is a reservation row that expired: nobody to stop.
    }
}
