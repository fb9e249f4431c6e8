//! `row-lock` and `conditional-update` (and the database half of `redis-decr`): one order line
//! per transaction, guarded by a row lock or a conditional update.

use crate::orders::ItemTerms;
use crate::{Backend, Database, PersistenceError, now_millis};

/// The outcome of one baseline reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaselineReserve {
    /// Units taken and the reservation written.
    Reserved,
    /// Not enough units.
    OutOfStock,
    /// No such item.
    ItemNotFound,
}

/// How the row is guarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowGuard {
    /// `SELECT … FOR UPDATE`, check in the application, then `UPDATE` (SQLite has no row locks;
    /// its single writer lock plays the part).
    RowLock,
    /// One `UPDATE … WHERE available >= n`.
    ConditionalUpdate,
    /// Units were already taken elsewhere (a Redis decrement): subtract without a check.
    Unchecked,
}

impl Database {
    /// Takes `quantity` units of `item_id` for `order_id` in one transaction, guarded by `guard`.
    pub async fn reserve_directly(
        &self,
        guard: RowGuard,
        item_id: i64,
        order_id: i64,
        quantity: i64,
        deadline_at: i64,
    ) -> Result<BaselineReserve, PersistenceError> {
        let now = now_millis();
        let mut tx = self.begin_write().await?;
        let taken = match guard {
            RowGuard::RowLock => {
                let lock = if self.backend() == Backend::Postgres {
                    " FOR UPDATE"
                } else {
                    ""
                };
                let row: Option<(i64,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT available FROM items WHERE id = $1{lock}"
                )))
                .bind(item_id)
                .fetch_optional(&mut *tx)
                .await?;
                match row {
                    None => return Ok(BaselineReserve::ItemNotFound),
                    Some((available,)) if available < quantity => {
                        return Ok(BaselineReserve::OutOfStock);
                    }
                    Some(_) => {
                        sqlx::query(
                            "UPDATE items SET available = available - $1, updated_at = $2 WHERE id = $3",
                        )
                        .bind(quantity)
                        .bind(now)
                        .bind(item_id)
                        .execute(&mut *tx)
                        .await?;
                        true
                    }
                }
            }
            RowGuard::ConditionalUpdate | RowGuard::Unchecked => {
                let check = if guard == RowGuard::ConditionalUpdate {
                    " AND available >= $1"
                } else {
                    ""
                };
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE items SET available = available - $1, updated_at = $2 WHERE id = $3{check}"
                )))
                .bind(quantity)
                .bind(now)
                .bind(item_id)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    == 1
            }
        };
        if !taken {
            let exists: Option<(i64,)> = sqlx::query_as("SELECT id FROM items WHERE id = $1")
                .bind(item_id)
                .fetch_optional(&mut *tx)
                .await?;
            return Ok(match exists {
                Some(_) => BaselineReserve::OutOfStock,
                None => BaselineReserve::ItemNotFound,
            });
        }
        sqlx::query(
            "INSERT INTO reservations (order_id, item_id, quantity, status, epoch, deadline_at, created_at, updated_at) \
             VALUES ($1, $2, $3, 'HELD', 0, $4, $5, $5)",
        )
        .bind(order_id)
        .bind(item_id)
        .bind(quantity)
        .bind(deadline_at)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(BaselineReserve::Reserved)
    }

    /// An item's price and purchase limit, without starting anything.
    pub async fn item_terms(&self, item_id: i64) -> Result<Option<ItemTerms>, PersistenceError> {
        let found: Option<(i64, Option<i64>)> =
            sqlx::query_as("SELECT price, max_per_member FROM items WHERE id = $1")
                .bind(item_id)
                .fetch_optional(self.pool())
                .await?;
        Ok(found.map(|(price, max_per_member)| ItemTerms {
            price,
            max_per_member,
        }))
    }

    /// An item's price and the units on its row, without starting anything.
    pub async fn price_and_available(
        &self,
        item_id: i64,
    ) -> Result<Option<(i64, i64)>, PersistenceError> {
        Ok(
            sqlx::query_as("SELECT price, available FROM items WHERE id = $1")
                .bind(item_id)
                .fetch_optional(self.pool())
                .await?,
        )
    }
}
