//! Order rows: an order, its lines, its idempotency claim and its outbox event, and the
//! transitions of [`OrderStatus`] as conditional updates (`… WHERE status = <from>`), so a
//! transition happens at most once however many writers try it. Units of stock are never
//! touched here directly: every fenced stock statement (take from an allotment, confirm,
//! release) lives in [`crate::stock`]; new orders are written by [`crate::placement`].
//!
//! Everything here runs inside a group-commit transaction (see [`crate::committer`]), except
//! the reads at the bottom.

use sqlx::{AnyConnection, FromRow};
use surge_domain::{Event, EventType, LineStatus, OrderStatus, time_fmt};

use crate::coupons::{self, CouponRefusal};
use crate::outbox;
use crate::stock::{self as stock_rows, ReservationStatus};
use crate::{Database, PersistenceError};

/// One line of a new order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrderLine {
    /// Item.
    pub item_id: i64,
    /// Units.
    pub quantity: i64,
    /// Price per unit when ordered.
    pub unit_price: i64,
    /// The item's `maxPerMember`, when it has one: the order's write counts this line's units
    /// against it.
    pub max_per_member: Option<i64>,
}

/// What an order needs to know of an item: its price and its purchase limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemTerms {
    /// Unit price.
    pub price: i64,
    /// Units one member may hold in live orders; `None`: no limit.
    pub max_per_member: Option<i64>,
}

/// Units of one line, held for an order until its write settles them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StockHold {
    /// Item.
    pub item_id: i64,
    /// Units.
    pub quantity: i64,
    /// Where the units are held.
    pub source: HoldSource,
}

/// Where a hold's units are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldSource {
    /// In the item owner's allotment, taken in memory: the order's write takes them out of the
    /// allotment row, fenced by this epoch.
    Allotment {
        /// The owner's epoch when it gave the hold.
        epoch: i64,
    },
    /// In a `HELD` reservation row already written for the order (the comparison strategies):
    /// the order's write confirms it.
    Reservation,
}

/// An order as it is written: once, in its final state, `SUCCEEDED`.
#[derive(Debug, Clone)]
pub struct NewOrder {
    /// Id allocated by the node beforehand.
    pub id: i64,
    /// Buyer.
    pub user_id: i64,
    /// Lines, in request order.
    pub lines: Vec<NewOrderLine>,
    /// The units of every line (one hold per line, same order).
    pub holds: Vec<StockHold>,
    /// Coupon named by the request.
    pub coupon_id: Option<i64>,
    /// Sum of the lines minus the discount.
    pub total_price: i64,
    /// Discount applied.
    pub discount: i64,
    /// Idempotency key and request hash, when the client sent a key.
    pub idempotency: Option<(String, String)>,
}

/// Result of writing an order. Anything but `Placed` wrote nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlaceOutcome {
    /// The order is stored, `SUCCEEDED`, with its lines, its sold units and its event.
    Placed {
        /// Unix ms of the write (the order's `createdAt`).
        at: i64,
    },
    /// The key was used before by this member.
    Duplicate {
        /// The order the key belongs to.
        order_id: i64,
        /// Hash of the request that first used the key.
        request_hash: String,
    },
    /// The order's coupon could not be taken.
    CouponRefused(CouponRefusal),
    /// With this order the member would hold more of the item than its `maxPerMember`.
    PurchaseLimit {
        /// The item.
        item_id: i64,
        /// The limit.
        limit: i64,
    },
    /// A hold was not there any more: its owner's epoch moved on (another owner took the
    /// item), or its reservation expired. The holder of that epoch must stop selling.
    HoldLost {
        /// The item.
        item_id: i64,
    },
}

/// Result of failing an order left `PROCESSING` (by an older version, or a stale sweep).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailOutcome {
    /// Now FAILED; what it held is released and its coupon given back.
    Failed,
    /// It was not PROCESSING any more; nothing changed.
    AlreadyFinal,
}

/// Result of a cancellation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// Now CANCELLED, stock returned.
    Cancelled,
    /// It was not SUCCEEDED; nothing changed.
    NotCancellable,
}

/// An order as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRecord {
    /// Id.
    pub id: i64,
    /// Buyer.
    pub user_id: i64,
    /// Where the order is in its state machine.
    pub status: OrderStatus,
    /// Coupon used.
    pub coupon_id: Option<i64>,
    /// Total after discount.
    pub total_price: i64,
    /// Discount.
    pub discount: i64,
    /// Why it failed.
    pub failure_reason: Option<String>,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub updated_at: i64,
    /// Lines in order.
    pub lines: Vec<OrderLineRecord>,
}

/// An order line as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderLineRecord {
    /// Item.
    pub item_id: i64,
    /// Units.
    pub quantity: i64,
    /// Unit price.
    pub unit_price: i64,
    /// Line status.
    pub status: LineStatus,
}

#[derive(FromRow)]
struct LineRow {
    item_id: i64,
    quantity: i64,
    unit_price: i64,
    status: String,
}

impl LineRow {
    fn decode(self) -> Result<OrderLineRecord, PersistenceError> {
        Ok(OrderLineRecord {
            item_id: self.item_id,
            quantity: self.quantity,
            unit_price: self.unit_price,
            status: LineStatus::parse(&self.status).ok_or_else(|| {
                PersistenceError::Corrupt(format!("unknown line status {:?}", self.status))
            })?,
        })
    }
}

#[derive(FromRow)]
struct PageLineRow {
    order_id: i64,
    #[sqlx(flatten)]
    line: LineRow,
}

#[derive(FromRow)]
struct OrderRow {
    id: i64,
    user_id: i64,
    status: String,
    coupon_id: Option<i64>,
    total_price: i64,
    discount: i64,
    failure_reason: Option<String>,
    created_at: i64,
    updated_at: i64,
}

impl OrderRow {
    fn with_lines(self, lines: Vec<OrderLineRecord>) -> Result<OrderRecord, PersistenceError> {
        Ok(OrderRecord {
            id: self.id,
            user_id: self.user_id,
            status: OrderStatus::parse(&self.status).ok_or_else(|| {
                PersistenceError::Corrupt(format!("unknown order status {:?}", self.status))
            })?,
            coupon_id: self.coupon_id,
            total_price: self.total_price,
            discount: self.discount,
            failure_reason: self.failure_reason,
            created_at: self.created_at,
            updated_at: self.updated_at,
            lines,
        })
    }
}

const ORDER_COLUMNS: &str =
    "id, user_id, status, coupon_id, total_price, discount, failure_reason, created_at, updated_at";

// ---- statements run inside a group-commit transaction -------------------------------------

impl OrderRecord {
    /// The order in the contract's JSON shape (`{orderId, userId, status, lines, …}`): the
    /// payload of its events and an entry of the member's page.
    pub fn to_document(&self) -> serde_json::Value {
        let lines: Vec<serde_json::Value> = self
            .lines
            .iter()
            .map(|l| {
                serde_json::json!({
                    "itemId": l.item_id,
                    "quantity": l.quantity,
                    "unitPrice": l.unit_price,
                    "status": l.status.as_str(),
                })
            })
            .collect();
        let mut doc = serde_json::json!({
            "orderId": self.id,
            "userId": self.user_id,
            "status": self.status.as_str(),
            "lines": lines,
            "couponId": self.coupon_id,
            "totalPrice": self.total_price,
            "discount": self.discount,
            "createdAt": time_fmt::rfc3339(self.created_at),
            "updatedAt": time_fmt::rfc3339(self.updated_at),
        });
        if let (Some(reason), Some(map)) = (&self.failure_reason, doc.as_object_mut()) {
            map.insert("failureReason".into(), reason.clone().into());
        }
        doc
    }
}

/// The order's event, in the same transaction as its change (the transactional outbox): the
/// order as it is after the change.
async fn order_event(
    conn: &mut AnyConnection,
    order_id: i64,
    status: OrderStatus,
    now: i64,
) -> Result<(), sqlx::Error> {
    let kind = match status {
        OrderStatus::Succeeded => EventType::OrderSucceeded,
        OrderStatus::Cancelled => EventType::OrderCancelled,
        OrderStatus::Failed => EventType::OrderFailed,
        OrderStatus::Processing => return Ok(()),
    };
    let row: OrderRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1"
    )))
    .bind(order_id)
    .fetch_one(&mut *conn)
    .await?;
    let lines = sqlx::query_as::<_, LineRow>(
        "SELECT item_id, quantity, unit_price, status FROM order_lines \
         WHERE order_id = $1 ORDER BY line_no",
    )
    .bind(order_id)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(LineRow::decode)
    .collect::<Result<Vec<_>, _>>()
    .map_err(|e| sqlx::Error::Decode(e.to_string().into()))?;
    let order = row
        .with_lines(lines)
        .map_err(|e| sqlx::Error::Decode(e.to_string().into()))?;
    let event = Event::new(
        kind,
        order_id,
        Some(order.user_id),
        now,
        order.to_document(),
    );
    outbox::append(conn, &event).await
}

/// Moves an order from `from` to `to` (at most once: a conditional update), releasing its
/// reservations in `units` status to the items, giving its coupon back, marking its lines
/// released (a line its own item refused keeps that status) and writing its event, all in the
/// caller's transaction. `false`, and nothing changed, when the order was not in `from`.
async fn end_order(
    conn: &mut AnyConnection,
    order_id: i64,
    (from, to): (OrderStatus, OrderStatus),
    units: ReservationStatus,
    reason: Option<&str>,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let changed = sqlx::query(
        "UPDATE orders SET status = $1, failure_reason = COALESCE($2, failure_reason), \
         updated_at = $3 WHERE id = $4 AND status = $5",
    )
    .bind(to.as_str())
    .bind(reason)
    .bind(now)
    .bind(order_id)
    .bind(from.as_str())
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if changed == 0 {
        return Ok(false);
    }
    stock_rows::release_all(conn, order_id, units, now).await?;
    if let Some((coupon_id, user_id)) = coupons::give_back(conn, order_id).await? {
        let payload =
            serde_json::json!({"couponId": coupon_id, "userId": user_id, "orderId": order_id});
        let event = Event::new(
            EventType::CouponReturned,
            coupon_id,
            Some(user_id),
            now,
            payload,
        );
        outbox::append(conn, &event).await?;
    }
    sqlx::query(
        "UPDATE order_lines SET status = 'RELEASED' WHERE order_id = $1 AND status <> 'OUT_OF_STOCK' \
         AND status <> 'ITEM_NOT_FOUND'",
    )
    .bind(order_id)
    .execute(&mut *conn)
    .await?;
    order_event(conn, order_id, to, now).await?;
    Ok(true)
}

/// Fails an order left `PROCESSING` (recovery at start, the stale sweep): releases what it
/// holds and gives its coupon back. Idempotent.
pub(crate) async fn fail_order(
    conn: &mut AnyConnection,
    order_id: i64,
    reason: &str,
    now: i64,
) -> Result<FailOutcome, sqlx::Error> {
    let transition = (OrderStatus::Processing, OrderStatus::Failed);
    Ok(
        if end_order(
            conn,
            order_id,
            transition,
            ReservationStatus::Held,
            Some(reason),
            now,
        )
        .await?
        {
            FailOutcome::Failed
        } else {
            FailOutcome::AlreadyFinal
        },
    )
}

/// Cancels a `SUCCEEDED` order: its sold units go back to the items, its coupon to its holder.
pub(crate) async fn cancel_order(
    conn: &mut AnyConnection,
    order_id: i64,
    now: i64,
) -> Result<CancelOutcome, sqlx::Error> {
    let transition = (OrderStatus::Succeeded, OrderStatus::Cancelled);
    Ok(
        if end_order(
            conn,
            order_id,
            transition,
            ReservationStatus::Confirmed,
            None,
            now,
        )
        .await?
        {
            // The member's live units of each limited item go down by this order's.
            sqlx::query(
                "UPDATE purchase_counts SET units = units - (SELECT COALESCE(SUM(l.quantity), 0) \
                   FROM order_lines l WHERE l.order_id = $1 AND l.item_id = purchase_counts.item_id) \
                 WHERE user_id = (SELECT user_id FROM orders WHERE id = $1) \
                   AND item_id IN (SELECT item_id FROM order_lines WHERE order_id = $1)",
            )
            .bind(order_id)
            .execute(&mut *conn)
            .await?;
            CancelOutcome::Cancelled
        } else {
            CancelOutcome::NotCancellable
        },
    )
}

/// Fails orders left `PROCESSING` since before `stale_before` (their saga died or lost track
/// of its last write): releases what they hold and gives their coupon back, like any failure.
/// Returns how many.
pub(crate) async fn fail_stale(
    conn: &mut AnyConnection,
    stale_before: i64,
    now: i64,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    let stale: Vec<(i64,)> = sqlx::query_as(
        "SELECT id FROM orders WHERE status = 'PROCESSING' AND created_at < $1 LIMIT $2",
    )
    .bind(stale_before)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    let mut failed = 0;
    for (order_id,) in stale {
        if fail_order(conn, order_id, "not completed in time", now).await? == FailOutcome::Failed {
            failed += 1;
        }
    }
    Ok(failed)
}

// ---- reads ---------------------------------------------------------------------------------

impl Database {
    /// One order with its lines.
    pub async fn order_by_id(&self, id: i64) -> Result<Option<OrderRecord>, PersistenceError> {
        let row: Option<OrderRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(self.pool())
        .await?;
        let Some(row) = row else { return Ok(None) };
        let lines = self.lines_of(id).await?;
        row.with_lines(lines).map(Some)
    }

    async fn lines_of(&self, order_id: i64) -> Result<Vec<OrderLineRecord>, PersistenceError> {
        sqlx::query_as::<_, LineRow>(
            "SELECT item_id, quantity, unit_price, status FROM order_lines \
             WHERE order_id = $1 ORDER BY line_no",
        )
        .bind(order_id)
        .fetch_all(self.pool())
        .await?
        .into_iter()
        .map(LineRow::decode)
        .collect()
    }

    /// A member's orders, newest first, with ids below `before`.
    pub async fn orders_of_user(
        &self,
        user_id: i64,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<OrderRecord>, PersistenceError> {
        let rows: Vec<OrderRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {ORDER_COLUMNS} FROM orders WHERE user_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3"
        )))
        .bind(user_id)
        .bind(before.unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        let (Some(newest), Some(oldest)) = (rows.first().map(|r| r.id), rows.last().map(|r| r.id))
        else {
            return Ok(Vec::new());
        };
        // One query for the lines of the whole page instead of one per order.
        let lines: Vec<PageLineRow> = sqlx::query_as::<_, PageLineRow>(
            "SELECT l.order_id, l.item_id, l.quantity, l.unit_price, l.status \
             FROM order_lines l JOIN orders o ON o.id = l.order_id \
             WHERE o.user_id = $1 AND l.order_id BETWEEN $2 AND $3 ORDER BY l.order_id, l.line_no",
        )
        .bind(user_id)
        .bind(oldest)
        .bind(newest)
        .fetch_all(self.pool())
        .await?;
        let mut by_order: std::collections::HashMap<i64, Vec<OrderLineRecord>> =
            std::collections::HashMap::with_capacity(rows.len());
        for row in lines {
            by_order
                .entry(row.order_id)
                .or_default()
                .push(row.line.decode()?);
        }
        rows.into_iter()
            .map(|row| {
                let lines = by_order.remove(&row.id).unwrap_or_default();
                row.with_lines(lines)
            })
            .collect()
    }

    /// The order a member's Idempotency-Key belongs to, with the hash of the request that first
    /// used it.
    pub async fn idempotency_record(
        &self,
        user_id: i64,
        key: &str,
    ) -> Result<Option<(i64, String)>, PersistenceError> {
        Ok(sqlx::query_as(
            "SELECT order_id, request_hash FROM idempotency_keys WHERE user_id = $1 AND idem_key = $2",
        )
        .bind(user_id)
        .bind(key)
        .fetch_optional(self.pool())
        .await?)
    }

    /// Every member with an Idempotency-Key on record.
    pub async fn members_with_idempotency_keys(&self) -> Result<Vec<i64>, PersistenceError> {
        let rows: Vec<(i64,)> = sqlx::query_as("SELECT DISTINCT user_id FROM idempotency_keys")
            .fetch_all(self.pool())
            .await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    /// Orders still PROCESSING (at start: sagas a previous process left unfinished).
    pub async fn processing_orders(&self) -> Result<Vec<i64>, PersistenceError> {
        let rows: Vec<(i64,)> = sqlx::query_as("SELECT id FROM orders WHERE status = 'PROCESSING'")
            .fetch_all(self.pool())
            .await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    /// Allocates a block of `size` order ids; returns the first.
    pub async fn allocate_order_ids(&self, size: i64) -> Result<i64, PersistenceError> {
        let (next,): (i64,) = sqlx::query_as(
            "UPDATE id_blocks SET next_id = next_id + $1 WHERE name = 'orders' RETURNING next_id",
        )
        .bind(size)
        .fetch_one(self.pool())
        .await?;
        Ok(next - size)
    }
}
