//! Every fenced statement that moves units of stock, and nothing else.
//!
//! Invariant protected: **no oversell**. Units live in exactly one of three places: the item
//! row (`items.available`, held by nobody), an owner's allotment (`stock_allotments.units`,
//! checked out to the one stock actor that owns the item under an **epoch**), or a reservation
//! (`reservations`: `CONFIRMED` for units sold to an order, `HELD` while a comparison
//! strategy's order is in flight, `RELEASED` once given back). Every statement here moves units
//! between those places in one transaction, and every write that takes units out of an
//! allotment names the owner's epoch: when another owner has taken the item over (a higher
//! epoch), the write changes zero rows and the order is not written. A stale owner can
//! therefore undersell, never oversell.
//!
//! - claim ([`Database::claim_allotment`]), check-out ([`Database::check_out_units`]), give
//!   back ([`Database::return_allotment`], [`Database::reclaim_allotments`]): the owner's
//!   allotment, each in its own short transaction;
//! - [`take_allotment`], [`take_hold`], [`undo_holds`], [`release_all`], [`release_expired`]: run inside a
//!   group-commit transaction (see [`crate::committer`]), together with the order rows of
//!   [`crate::orders`]: an order takes its units in the same transaction that writes it.

use sqlx::AnyConnection;

use surge_domain::{Event, EventType};

use crate::cluster::{self, ShardFence};
use crate::orders::{HoldSource, ItemTerms, StockHold};
use crate::outbox;
use crate::{Database, PersistenceError, now_millis};

/// A reservation's status as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReservationStatus {
    /// Units held for an order whose saga has not finished (comparison strategies); expires at
    /// its deadline.
    Held,
    /// Units sold to an order that succeeded.
    Confirmed,
    /// Units given back to the item row.
    Released,
}

impl ReservationStatus {
    /// The stored spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Held => "HELD",
            Self::Confirmed => "CONFIRMED",
            Self::Released => "RELEASED",
        }
    }
}

/// What a stock actor learns when it takes an item over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllotmentClaim {
    /// The owner's epoch; every later write of this actor names it.
    pub epoch: i64,
    /// Price and purchase limit (they do not change while the owner lives).
    pub terms: ItemTerms,
}

impl Database {
    /// Takes ownership of an item's stock with a new epoch. The units still in a previous
    /// owner's allotment go back to the item first: no order has taken them (an order takes
    /// its units out of the allotment row in the same transaction that writes it), and an
    /// order still being written under the old epoch is fenced by the new one. `None` when the
    /// item does not exist.
    pub async fn claim_allotment(
        &self,
        item_id: i64,
        owner: &str,
    ) -> Result<Option<AllotmentClaim>, PersistenceError> {
        self.claim_allotment_in_shard(item_id, owner, None).await
    }

    /// [`Self::claim_allotment`] in a cluster: only while `fence` (the item's shard lease, held
    /// by `owner`) is current. The lease row is locked first, so a take-over of the shard
    /// either committed before (and this claim is refused with `Err(Conflict)`) or waits and
    /// then fences this claim's epoch with its own. `None` fence: a single node.
    pub async fn claim_allotment_in_shard(
        &self,
        item_id: i64,
        owner: &str,
        fence: Option<&ShardFence>,
    ) -> Result<Option<AllotmentClaim>, PersistenceError> {
        let now = now_millis();
        let mut tx = self.begin_write().await?;
        if let Some(fence) = fence
            && !cluster::lock_lease(&mut tx, self.backend(), fence).await?
        {
            return Err(PersistenceError::Conflict);
        }
        let item: Option<(i64, Option<i64>)> =
            sqlx::query_as("SELECT price, max_per_member FROM items WHERE id = $1")
                .bind(item_id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some((price, max_per_member)) = item else {
            return Ok(None);
        };
        // Lock the allotment row before reading its units: an order being written under the
        // old epoch either committed before (its units are gone from the row) or waits and is
        // then fenced. Without the lock (PostgreSQL, read committed) the same units could be
        // read here, returned to the item, and sold by that order too.
        lock_allotments(&mut tx, "item_id = $1", item_id, now).await?;
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
        tx.commit().await?;
        Ok(Some(AllotmentClaim {
            epoch: epoch.0,
            terms: ItemTerms {
                price,
                max_per_member,
            },
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
        if !lock_owned(&mut tx, item_id, epoch, now).await? {
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

    /// At start: returns every unit still in this node's previous allotments to the items, and
    /// bumps the epochs so nothing that process wrote late can land.
    pub async fn reclaim_allotments(&self, owner: &str) -> Result<u64, PersistenceError> {
        let now = now_millis();
        let mut tx = self.begin_write().await?;
        lock_allotments(&mut tx, "owner = $1", owner.to_owned(), now).await?;
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

    /// Gives the allotment's units back to the item (passivation, shutdown): every unit no
    /// order has taken yet. Nothing when `epoch` is no longer the owner's (the new owner's
    /// claim already returned them).
    pub async fn return_allotment(
        &self,
        item_id: i64,
        epoch: i64,
    ) -> Result<i64, PersistenceError> {
        let now = now_millis();
        let mut tx = self.begin_write().await?;
        // Lock first (see `claim_allotment`), fenced by the epoch.
        if !lock_owned(&mut tx, item_id, epoch, now).await? {
            return Ok(0);
        }
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

/// Locks an owner's allotment row by touching it; `false` when `epoch` is no longer the
/// owner's (nothing locked, nothing changed).
async fn lock_owned(
    conn: &mut AnyConnection,
    item_id: i64,
    epoch: i64,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let owned = sqlx::query(
        "UPDATE stock_allotments SET updated_at = $1 WHERE item_id = $2 AND epoch = $3",
    )
    .bind(now)
    .bind(item_id)
    .bind(epoch)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(owned == 1)
}

/// Locks allotment rows by touching them, so that what the transaction reads of them next is
/// what it changes (a concurrent order write either committed before or waits).
async fn lock_allotments(
    conn: &mut AnyConnection,
    filter: &'static str,
    key: impl for<'q> sqlx::Encode<'q, sqlx::Any> + sqlx::Type<sqlx::Any> + Send + 'static,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE stock_allotments SET updated_at = $2 WHERE {filter}"
    )))
    .bind(key)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

// ---- statements run inside a group-commit transaction -------------------------------------

/// Takes `units` out of an owner's allotment row, fenced by its epoch: `false`, and nothing
/// changed, when the epoch moved on (another owner took the item over) or the row holds fewer
/// units. The units become sold reservations in the same transaction (see
/// [`crate::placement`]). When they were the item's last (the allotment is empty and no units
/// are left on the item row), the item's `ItemSoldOut` event is written with them.
pub(crate) async fn take_allotment(
    conn: &mut AnyConnection,
    item_id: i64,
    epoch: i64,
    units: i64,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let left: Option<(i64,)> = sqlx::query_as(
        "UPDATE stock_allotments SET units = units - $1, updated_at = $2 \
         WHERE item_id = $3 AND epoch = $4 AND units >= $1 RETURNING units",
    )
    .bind(units)
    .bind(now)
    .bind(item_id)
    .bind(epoch)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((left,)) = left else {
        return Ok(false);
    };
    if left == 0 {
        // Only when this batch emptied the allotment: the common case pays nothing.
        let (available,): (i64,) = sqlx::query_as("SELECT available FROM items WHERE id = $1")
            .bind(item_id)
            .fetch_one(&mut *conn)
            .await?;
        if available == 0 {
            let payload = serde_json::json!({"itemId": item_id});
            let event = Event::new(EventType::ItemSoldOut, item_id, None, now, payload);
            outbox::append(conn, &event).await?;
        }
    }
    Ok(true)
}

/// Confirms a hold that is a `HELD` reservation (the comparison strategies): `false` when it
/// expired.
pub(crate) async fn take_hold(
    conn: &mut AnyConnection,
    order_id: i64,
    hold: &StockHold,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let confirmed = sqlx::query(
        "UPDATE reservations SET status = 'CONFIRMED', updated_at = $1 \
         WHERE order_id = $2 AND item_id = $3 AND status = 'HELD'",
    )
    .bind(now)
    .bind(order_id)
    .bind(hold.item_id)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(confirmed == 1)
}

/// Puts back what this transaction took for an order's holds (another of its holds was lost).
pub(crate) async fn undo_holds(
    conn: &mut AnyConnection,
    order_id: i64,
    holds: &[StockHold],
    now: i64,
) -> Result<(), sqlx::Error> {
    for hold in holds {
        if let HoldSource::Allotment { epoch } = hold.source {
            sqlx::query(
                "UPDATE stock_allotments SET units = units + $1, updated_at = $2 \
                 WHERE item_id = $3 AND epoch = $4",
            )
            .bind(hold.quantity)
            .bind(now)
            .bind(hold.item_id)
            .bind(epoch)
            .execute(&mut *conn)
            .await?;
            sqlx::query("DELETE FROM reservations WHERE order_id = $1 AND item_id = $2")
                .bind(order_id)
                .bind(hold.item_id)
                .execute(&mut *conn)
                .await?;
        } else {
            sqlx::query(
                "UPDATE reservations SET status = 'HELD', updated_at = $1 \
                 WHERE order_id = $2 AND item_id = $3 AND status = 'CONFIRMED'",
            )
            .bind(now)
            .bind(order_id)
            .bind(hold.item_id)
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

/// Releases one reservation in `from` status, returning its units to the item row.
/// Idempotent: a reservation already released changes nothing.
async fn release_reservation(
    conn: &mut AnyConnection,
    order_id: i64,
    item_id: i64,
    from: ReservationStatus,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let quantity: Option<(i64,)> = sqlx::query_as(
        "UPDATE reservations SET status = 'RELEASED', updated_at = $1 \
         WHERE order_id = $2 AND item_id = $3 AND status = $4 RETURNING quantity",
    )
    .bind(now)
    .bind(order_id)
    .bind(item_id)
    .bind(from.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    let Some((quantity,)) = quantity else {
        return Ok(false);
    };
    sqlx::query("UPDATE items SET available = available + $1, updated_at = $2 WHERE id = $3")
        .bind(quantity)
        .bind(now)
        .bind(item_id)
        .execute(&mut *conn)
        .await?;
    Ok(true)
}

/// Releases every reservation of an order that is in `from` status.
pub(crate) async fn release_all(
    conn: &mut AnyConnection,
    order_id: i64,
    from: ReservationStatus,
    now: i64,
) -> Result<(), sqlx::Error> {
    let items: Vec<(i64,)> =
        sqlx::query_as("SELECT item_id FROM reservations WHERE order_id = $1 AND status = $2")
            .bind(order_id)
            .bind(from.as_str())
            .fetch_all(&mut *conn)
            .await?;
    for (item_id,) in items {
        release_reservation(conn, order_id, item_id, from, now).await?;
    }
    Ok(())
}

/// Releases `HELD` reservations past their deadline (their saga died); returns how many.
pub(crate) async fn release_expired(
    conn: &mut AnyConnection,
    now: i64,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    let expired: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT order_id, item_id FROM reservations WHERE status = 'HELD' AND deadline_at < $1 LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    let mut released = 0;
    for (order_id, item_id) in expired {
        if release_reservation(conn, order_id, item_id, ReservationStatus::Held, now).await? {
            released += 1;
        }
    }
    Ok(released)
}

impl Database {
    /// Releases one `HELD` reservation in a transaction of its own (a comparison strategy's
    /// hold that its order did not take). Idempotent.
    pub async fn release_held(&self, order_id: i64, item_id: i64) -> Result<(), PersistenceError> {
        let mut tx = self.begin_write().await?;
        release_reservation(
            &mut tx,
            order_id,
            item_id,
            ReservationStatus::Held,
            now_millis(),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}
