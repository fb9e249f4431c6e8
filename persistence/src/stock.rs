//! Allotments: units of an item checked out to the stock actor that owns it.

use crate::{Database, PersistenceError, now_millis};

/// What a stock actor learns when it takes an item over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllotmentClaim {
    /// The owner's epoch; every later write of this actor names it.
    pub epoch: i64,
    /// Item name.
    pub name: String,
    /// Unit price.
    pub price: i64,
    /// Units in the item row that no actor holds.
    pub available: i64,
}

impl Database {
    /// Takes ownership of an item's stock with a new epoch. Units a previous owner had
    /// checked out but not reserved go back to the item first: they were never promised to
    /// anyone (reservations are written together with the allotment decrement). `None` when
    /// the item does not exist.
    pub async fn claim_allotment(
        &self,
        item_id: i64,
        owner: &str,
    ) -> Result<Option<AllotmentClaim>, PersistenceError> {
        let now = now_millis();
        let mut tx = self.begin_write().await?;
        let item: Option<(String, i64)> =
            sqlx::query_as("SELECT name, price FROM items WHERE id = $1")
                .bind(item_id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some((name, price)) = item else {
            return Ok(None);
        };
        sqlx::query(
            "UPDATE items SET available = available + \
               COALESCE((SELECT units FROM stock_allotments WHERE item_id = $1), 0), updated_at = $2 \
             WHERE id = $1",
        )
        .bind(item_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let epoch: (i64,) = sqlx::query_as(
            "INSERT INTO stock_allotments (item_id, owner, epoch, units, updated_at) \
             VALUES ($1, $2, 1, 0, $3) \
             ON CONFLICT (item_id) DO UPDATE SET owner = $2, epoch = stock_allotments.epoch + 1, \
               units = 0, updated_at = $3 \
             RETURNING epoch",
        )
        .bind(item_id)
        .bind(owner)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        let (available,): (i64,) = sqlx::query_as("SELECT available FROM items WHERE id = $1")
            .bind(item_id)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(AllotmentClaim {
            epoch: epoch.0,
            name,
            price,
            available,
        }))
    }

    /// Moves up to `want` units from the item into the owner's allotment; returns how many
    /// moved (0 when none are left) and the units still in the item row afterwards. Fenced:
    /// `Err(Conflict)` when `epoch` is no longer the owner's.
    pub async fn check_out_units(
        &self,
        item_id: i64,
        epoch: i64,
        want: i64,
    ) -> Result<(i64, i64), PersistenceError> {
        let now = now_millis();
        let mut tx = self.begin_write().await?;
        let (available,): (i64,) = sqlx::query_as("SELECT available FROM items WHERE id = $1")
            .bind(item_id)
            .fetch_one(&mut *tx)
            .await?;
        if available <= 0 {
            // Nothing to move: no write, no fsync. Sold-out checks stay cheap.
            tx.rollback().await?;
            return Ok((0, 0));
        }
        // The allotment row is the fence: only the current epoch may add to it.
        let owned = sqlx::query(
            "UPDATE stock_allotments SET updated_at = $1 WHERE item_id = $2 AND epoch = $3",
        )
        .bind(now)
        .bind(item_id)
        .bind(epoch)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if owned == 0 {
            return Err(PersistenceError::Conflict);
        }
        let take = want.min(available).max(0);
        if take > 0 {
            let moved = sqlx::query(
                "UPDATE items SET available = available - $1, updated_at = $2 \
                 WHERE id = $3 AND available >= $1",
            )
            .bind(take)
            .bind(now)
            .bind(item_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if moved == 0 {
                return Ok((0, available));
            }
            sqlx::query(
                "UPDATE stock_allotments SET units = units + $1 WHERE item_id = $2 AND epoch = $3",
            )
            .bind(take)
            .bind(item_id)
            .bind(epoch)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok((take, available - take))
    }

    /// At start: returns every unit this node's previous process had checked out (and not
    /// reserved) to the items, and bumps the epochs so nothing that process wrote late can land.
    pub async fn reclaim_allotments(&self, owner: &str) -> Result<u64, PersistenceError> {
        let now = now_millis();
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE items SET available = available + \
               (SELECT units FROM stock_allotments a WHERE a.item_id = items.id), updated_at = $1 \
             WHERE id IN (SELECT item_id FROM stock_allotments WHERE owner = $2 AND units > 0)",
        )
        .bind(now)
        .bind(owner)
        .execute(&mut *tx)
        .await?;
        let n = sqlx::query(
            "UPDATE stock_allotments SET units = 0, epoch = epoch + 1, updated_at = $1 WHERE owner = $2",
        )
        .bind(now)
        .bind(owner)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n)
    }

    /// Gives every unreserved unit of the allotment back to the item (passivation, shutdown).
    pub async fn return_allotment(
        &self,
        item_id: i64,
        epoch: i64,
    ) -> Result<i64, PersistenceError> {
        let now = now_millis();
        let mut tx = self.begin_write().await?;
        let units: Option<(i64,)> =
            sqlx::query_as("SELECT units FROM stock_allotments WHERE item_id = $1 AND epoch = $2")
                .bind(item_id)
                .bind(epoch)
                .fetch_optional(&mut *tx)
                .await?;
        let Some((units,)) = units else {
            return Ok(0);
        };
        sqlx::query("UPDATE stock_allotments SET units = 0, updated_at = $1 WHERE item_id = $2 AND epoch = $3")
            .bind(now)
            .bind(item_id)
            .bind(epoch)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE items SET available = available + $1, updated_at = $2 WHERE id = $3")
            .bind(units)
            .bind(now)
            .bind(item_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(units)
    }
}
