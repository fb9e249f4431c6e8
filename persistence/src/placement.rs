//! Writing a batch of orders in one transaction with a handful of statements, whatever the
//! batch's size: one multi-row `INSERT` per table (orders, lines, sold units, outbox events,
//! idempotency claims), and one fenced allotment decrement per (item, owner epoch). This is what
//! lets one writer keep up with the stock actors: a statement costs a round trip to the
//! database (a thread hand-off on SQLite), a row inside a statement costs almost nothing.
//!
//! Invariants: an order is written whole or not at all; an order whose hold the database
//! refuses (its owner's epoch moved on) writes nothing; a refusal undoes, in the same
//! transaction, what this batch did for that order. The per-order path of
//! [`crate::orders::place_order`] is this with a batch of one.

use std::collections::{BTreeMap, HashSet};

use sqlx::AnyConnection;
use sqlx::any::AnyArguments;
use sqlx::query::Query;
use surge_domain::{LineStatus, OrderStatus};

use crate::coupons;
use crate::orders::{HoldSource, NewOrder, PlaceOutcome, StockHold};
use crate::stock as stock_rows;

/// Row counts a multi-row statement is prepared for; a batch is cut into chunks of these sizes
/// (largest first), so each table needs at most this many distinct statements, each prepared
/// once per connection and cached. No larger than 64 rows: SQLite looks a named parameter up
/// by a linear scan, so binding a statement costs the square of its parameter count (with
/// 256-row chunks that lookup was 4% of the node's time).
const CHUNKS: [usize; 4] = [64, 16, 4, 1];

type AnyQuery<'q> = Query<'q, sqlx::Any, AnyArguments>;

/// `INSERT INTO {table} ({columns}) VALUES ($1, …), (…)` for `rows` rows.
fn insert_sql(head: &str, columns: usize, rows: usize, tail: &str) -> String {
    let mut sql = String::with_capacity(head.len() + rows * (columns * 5 + 4) + tail.len());
    sql.push_str(head);
    let mut n = 0;
    for row in 0..rows {
        sql.push_str(if row == 0 { " VALUES (" } else { ", (" });
        for column in 0..columns {
            n += 1;
            if column > 0 {
                sql.push_str(", ");
            }
            sql.push('$');
            sql.push_str(&n.to_string());
        }
        sql.push(')');
    }
    sql.push_str(tail);
    sql
}

/// Splits `n` rows into chunks of [`CHUNKS`] sizes.
fn chunks(mut n: usize) -> Vec<usize> {
    let mut out = Vec::new();
    for size in CHUNKS {
        while n >= size {
            out.push(size);
            n -= size;
        }
    }
    out
}

/// Runs one multi-row `INSERT` per chunk of `rows`, binding each row with `bind`.
async fn insert_rows<R>(
    conn: &mut AnyConnection,
    head: &str,
    columns: usize,
    rows: &[R],
    bind: impl for<'q> Fn(AnyQuery<'q>, &'q R) -> AnyQuery<'q>,
) -> Result<(), sqlx::Error> {
    let mut start = 0;
    for size in chunks(rows.len()) {
        let sql = insert_sql(head, columns, size, "");
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for row in rows.get(start..start + size).unwrap_or_default() {
            query = bind(query, row);
        }
        query.execute(&mut *conn).await?;
        start += size;
    }
    Ok(())
}

/// Writes `orders` (each `SUCCEEDED`, with its units, its event, its idempotency claim and its
/// coupon use) and answers one outcome per order, in order.
pub(crate) async fn place_orders(
    conn: &mut AnyConnection,
    orders: &[&NewOrder],
    now: i64,
) -> Result<Vec<PlaceOutcome>, sqlx::Error> {
    let mut outcomes: Vec<Option<PlaceOutcome>> = vec![None; orders.len()];
    let claimed = claim_keys(conn, orders, &mut outcomes, now).await?;
    // Coupons are taken one order at a time: few orders name one, and of two orders racing for
    // one coupon exactly one must match its row.
    for (i, order) in orders.iter().enumerate() {
        if outcomes[i].is_none()
            && let Some(coupon_id) = order.coupon_id
            && let Err(refusal) =
                coupons::take_for_order(conn, coupon_id, order.user_id, order.id).await?
        {
            outcomes[i] = Some(PlaceOutcome::CouponRefused(refusal));
        }
    }
    take_units(conn, orders, &mut outcomes, now).await?;
    // Undo, for every refused order, the claim and the coupon this batch took for it.
    for (i, order) in orders.iter().enumerate() {
        let refused = matches!(
            outcomes[i],
            Some(PlaceOutcome::CouponRefused(_) | PlaceOutcome::HoldLost { .. })
        );
        if refused {
            if claimed.contains(&i)
                && let Some((key, _)) = &order.idempotency
            {
                sqlx::query("DELETE FROM idempotency_keys WHERE user_id = $1 AND idem_key = $2")
                    .bind(order.user_id)
                    .bind(key)
                    .execute(&mut *conn)
                    .await?;
            }
            if matches!(outcomes[i], Some(PlaceOutcome::HoldLost { .. })) {
                coupons::give_back(conn, order.id).await?;
            }
        }
    }
    let placed: Vec<&NewOrder> = orders
        .iter()
        .zip(&outcomes)
        .filter(|(_, o)| o.is_none())
        .map(|(order, _)| *order)
        .collect();
    insert_orders(conn, &placed, now).await?;
    Ok(outcomes
        .into_iter()
        .map(|o| o.unwrap_or(PlaceOutcome::Placed { at: now }))
        .collect())
}

/// Claims the idempotency keys of the orders that have one, in one statement per chunk; an
/// order whose key was claimed before is answered `Duplicate`. Returns the indexes claimed now.
async fn claim_keys(
    conn: &mut AnyConnection,
    orders: &[&NewOrder],
    outcomes: &mut [Option<PlaceOutcome>],
    now: i64,
) -> Result<HashSet<usize>, sqlx::Error> {
    let keyed: Vec<(usize, &str, &str)> = orders
        .iter()
        .enumerate()
        .filter_map(|(i, o)| {
            o.idempotency
                .as_ref()
                .map(|(key, hash)| (i, key.as_str(), hash.as_str()))
        })
        .collect();
    let mut claimed = HashSet::with_capacity(keyed.len());
    let mut start = 0;
    for size in chunks(keyed.len()) {
        let rows = keyed.get(start..start + size).unwrap_or_default();
        start += size;
        let sql = insert_sql(
            "INSERT INTO idempotency_keys (user_id, idem_key, request_hash, order_id, created_at)",
            5,
            size,
            " ON CONFLICT DO NOTHING RETURNING order_id",
        );
        let mut query = sqlx::query_as::<_, (i64,)>(sqlx::AssertSqlSafe(sql));
        for &(i, key, hash) in rows {
            let order = orders[i];
            query = query
                .bind(order.user_id)
                .bind(key)
                .bind(hash)
                .bind(order.id)
                .bind(now);
        }
        let won: HashSet<i64> = query
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .map(|(id,)| id)
            .collect();
        for &(i, key, _) in rows {
            let order = orders[i];
            if won.contains(&order.id) {
                claimed.insert(i);
                continue;
            }
            let (order_id, request_hash): (i64, String) = sqlx::query_as(
                "SELECT order_id, request_hash FROM idempotency_keys \
                 WHERE user_id = $1 AND idem_key = $2",
            )
            .bind(order.user_id)
            .bind(key)
            .fetch_one(&mut *conn)
            .await?;
            outcomes[i] = Some(PlaceOutcome::Duplicate {
                order_id,
                request_hash,
            });
        }
    }
    Ok(claimed)
}

/// Takes the units of every hold of the orders still standing: one fenced decrement per (item,
/// epoch) for allotment holds, one confirmation per reservation hold. An order with a refused
/// hold is answered `HoldLost`, and what this batch took for its other holds is put back.
async fn take_units(
    conn: &mut AnyConnection,
    orders: &[&NewOrder],
    outcomes: &mut [Option<PlaceOutcome>],
    now: i64,
) -> Result<(), sqlx::Error> {
    // (item, epoch) → units, and which orders share it.
    let mut groups: BTreeMap<(i64, i64), (i64, Vec<usize>)> = BTreeMap::new();
    for (i, order) in orders.iter().enumerate() {
        if outcomes[i].is_some() {
            continue;
        }
        for hold in &order.holds {
            match hold.source {
                HoldSource::Allotment { epoch } => {
                    let group = groups.entry((hold.item_id, epoch)).or_default();
                    group.0 += hold.quantity;
                    group.1.push(i);
                }
                HoldSource::Reservation => {
                    if outcomes[i].is_none()
                        && !stock_rows::take_hold(conn, order.id, hold, now).await?
                    {
                        outcomes[i] = Some(PlaceOutcome::HoldLost {
                            item_id: hold.item_id,
                        });
                    }
                }
            }
        }
    }
    let mut taken: HashSet<(i64, i64)> = HashSet::with_capacity(groups.len());
    for (&(item_id, epoch), (units, members)) in &groups {
        if stock_rows::take_allotment(conn, item_id, epoch, *units, now).await? {
            taken.insert((item_id, epoch));
        } else {
            for &i in members {
                outcomes[i].get_or_insert(PlaceOutcome::HoldLost { item_id });
            }
        }
    }
    // Orders refused here: put back what was taken for their other holds.
    for (i, order) in orders.iter().enumerate() {
        if !matches!(outcomes[i], Some(PlaceOutcome::HoldLost { .. })) {
            continue;
        }
        let to_undo: Vec<StockHold> = order
            .holds
            .iter()
            .filter(|h| match h.source {
                HoldSource::Allotment { epoch } => taken.contains(&(h.item_id, epoch)),
                HoldSource::Reservation => true,
            })
            .copied()
            .collect();
        stock_rows::undo_holds(conn, order.id, &to_undo, now).await?;
    }
    Ok(())
}

/// Inserts the orders, their lines, their sold units and their events: one multi-row
/// statement per table and chunk.
async fn insert_orders(
    conn: &mut AnyConnection,
    orders: &[&NewOrder],
    now: i64,
) -> Result<(), sqlx::Error> {
    if orders.is_empty() {
        return Ok(());
    }
    insert_rows(
        conn,
        "INSERT INTO orders (id, user_id, status, coupon_id, total_price, discount, created_at, updated_at)",
        8,
        orders,
        |q, o| {
            q.bind(o.id)
                .bind(o.user_id)
                .bind(OrderStatus::Succeeded.as_str())
                .bind(o.coupon_id)
                .bind(o.total_price)
                .bind(o.discount)
                .bind(now)
                .bind(now)
        },
    )
    .await?;
    let lines: Vec<(i64, i64, &crate::orders::NewOrderLine)> = orders
        .iter()
        .flat_map(|o| {
            o.lines
                .iter()
                .enumerate()
                .map(|(n, l)| (o.id, i64::try_from(n).unwrap_or(i64::MAX), l))
        })
        .collect();
    insert_rows(
        conn,
        "INSERT INTO order_lines (order_id, line_no, item_id, quantity, unit_price, status)",
        6,
        &lines,
        |q, (order_id, line_no, l)| {
            q.bind(*order_id)
                .bind(*line_no)
                .bind(l.item_id)
                .bind(l.quantity)
                .bind(l.unit_price)
                .bind(LineStatus::Reserved.as_str())
        },
    )
    .await?;
    let sold: Vec<(i64, &StockHold, i64)> = orders
        .iter()
        .flat_map(|o| {
            o.holds.iter().filter_map(move |h| match h.source {
                HoldSource::Allotment { epoch } => Some((o.id, h, epoch)),
                HoldSource::Reservation => None,
            })
        })
        .collect();
    insert_rows(
        conn,
        "INSERT INTO reservations (order_id, item_id, quantity, status, epoch, deadline_at, created_at, updated_at)",
        8,
        &sold,
        |q, (order_id, h, epoch)| {
            q.bind(*order_id)
                .bind(h.item_id)
                .bind(h.quantity)
                .bind("CONFIRMED")
                .bind(*epoch)
                .bind(now)
                .bind(now)
                .bind(now)
        },
    )
    .await?;
    let events: Vec<(String, String)> = orders
        .iter()
        .map(|o| {
            let status = OrderStatus::Succeeded;
            (
                o.id.to_string(),
                format!(r#"{{"orderId":{},"status":"{status}","at":{now}}}"#, o.id),
            )
        })
        .collect();
    insert_rows(
        conn,
        "INSERT INTO outbox (topic, event_key, payload, created_at)",
        4,
        &events,
        |q, (key, payload)| {
            q.bind("order-status")
                .bind(key.as_str())
                .bind(payload.as_str())
                .bind(now)
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_cut_into_cached_chunk_sizes() {
        assert_eq!(chunks(0), Vec::<usize>::new());
        assert_eq!(chunks(1), vec![1]);
        assert_eq!(chunks(300), vec![64, 64, 64, 64, 16, 16, 4, 4, 4]);
        let total: usize = chunks(1000).iter().sum();
        assert_eq!(total, 1000);
    }

    #[test]
    fn multi_row_inserts_number_their_placeholders() {
        assert_eq!(
            insert_sql("INSERT INTO t (a, b)", 2, 2, " RETURNING a"),
            "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4) RETURNING a"
        );
    }
}
