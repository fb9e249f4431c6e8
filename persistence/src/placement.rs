//! Writing a batch of orders in one transaction with a handful of statements, whatever the
//! batch's size: one `INSERT … SELECT` per table whose rows come from a single JSON parameter
//! (orders, lines, sold units, outbox events), one multi-row `INSERT` for idempotency claims,
//! and one fenced allotment decrement per (item, owner epoch). This is what
//! lets one writer keep up with the stock actors: a statement costs a round trip to the
//! database (a thread hand-off on SQLite), a row inside a statement costs almost nothing.
//!
//! Invariants: an order is written whole or not at all; an order whose hold the database
//! refuses (its owner's epoch moved on) writes nothing; a refusal undoes, in the same
//! transaction, what this batch did for that order. The per-order path of
//! [`crate::orders::place_order`] is this with a batch of one.

use std::collections::{BTreeMap, HashSet};

use sqlx::AnyConnection;
use surge_domain::{Event, EventType, LineStatus, OrderStatus};

use crate::Backend;
use crate::coupons;
use crate::orders::{HoldSource, NewOrder, OrderLineRecord, OrderRecord, PlaceOutcome, StockHold};
use crate::stock as stock_rows;

/// Row counts a multi-row statement is prepared for; a batch is cut into chunks of these sizes
/// (largest first), so each table needs at most this many distinct statements, each prepared
/// once per connection and cached. No larger than 64 rows: SQLite looks a named parameter up
/// by a linear scan, so binding a statement costs the square of its parameter count (with
/// 256-row chunks that lookup was 4% of the node's time).
const CHUNKS: [usize; 4] = [64, 16, 4, 1];

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

/// Writes `orders` (each `SUCCEEDED`, with its units, its event, its idempotency claim and its
/// coupon use) and answers one outcome per order, in order.
pub(crate) async fn place_orders(
    conn: &mut AnyConnection,
    backend: Backend,
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
    let counted = count_purchases(conn, orders, &mut outcomes).await?;
    take_units(conn, orders, &mut outcomes, now).await?;
    // Undo, for every refused order, the claim, the coupon and the purchase counts this batch
    // took for it.
    for (i, order) in orders.iter().enumerate() {
        let refused = matches!(
            outcomes[i],
            Some(
                PlaceOutcome::CouponRefused(_)
                    | PlaceOutcome::HoldLost { .. }
                    | PlaceOutcome::PurchaseLimit { .. }
            )
        );
        if refused {
            if counted.contains(&i) {
                uncount(conn, order.user_id, limited_lines(order)).await?;
            }
            if claimed.contains(&i)
                && let Some((key, _)) = &order.idempotency
            {
                sqlx::query("DELETE FROM idempotency_keys WHERE user_id = $1 AND idem_key = $2")
                    .bind(order.user_id)
                    .bind(key)
                    .execute(&mut *conn)
                    .await?;
            }
            if matches!(
                outcomes[i],
                Some(PlaceOutcome::HoldLost { .. } | PlaceOutcome::PurchaseLimit { .. })
            ) {
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
    insert_orders(conn, backend, &placed, now).await?;
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

/// The lines of an order whose item has a purchase limit: (item, units, limit).
fn limited_lines(order: &NewOrder) -> impl Iterator<Item = (i64, i64, i64)> + '_ {
    order
        .lines
        .iter()
        .filter_map(|l| l.max_per_member.map(|max| (l.item_id, l.quantity, max)))
}

/// Counts the units of every limited line of the orders still standing against the member's
/// limit for that item: one conditional upsert per line, which matches no row when the member's
/// live units plus these would pass the limit. Such an order is answered `PurchaseLimit` and
/// its lines counted before are taken off again. The row lock the upsert takes (PostgreSQL),
/// or the one writer (SQLite), makes two orders of one member, even on two nodes, see each
/// other's units; the rows are locked in (member, item) order, like the allotments, so two
/// nodes' batches never wait on each other in a cycle. Returns the orders counted (their counts
/// must be undone if a later step refuses them). Orders without a limited line cost nothing.
async fn count_purchases(
    conn: &mut AnyConnection,
    orders: &[&NewOrder],
    outcomes: &mut [Option<PlaceOutcome>],
) -> Result<HashSet<usize>, sqlx::Error> {
    // (member, item, order index, units, limit), in lock order.
    let mut lines: Vec<(i64, i64, usize, i64, i64)> = orders
        .iter()
        .enumerate()
        .filter(|(i, _)| outcomes[*i].is_none())
        .flat_map(|(i, order)| {
            limited_lines(order)
                .map(move |(item, units, limit)| (order.user_id, item, i, units, limit))
        })
        .collect();
    lines.sort_unstable();
    let mut counted: BTreeMap<usize, Vec<(i64, i64, i64)>> = BTreeMap::new();
    for (user_id, item_id, i, units, limit) in lines {
        if outcomes[i].is_some() {
            continue;
        }
        let within = units <= limit
            && sqlx::query_as::<_, (i64,)>(
                "INSERT INTO purchase_counts (user_id, item_id, units) VALUES ($1, $2, $3) \
                 ON CONFLICT (user_id, item_id) DO UPDATE \
                   SET units = purchase_counts.units + excluded.units \
                   WHERE purchase_counts.units + excluded.units <= $4 \
                 RETURNING units",
            )
            .bind(user_id)
            .bind(item_id)
            .bind(units)
            .bind(limit)
            .fetch_optional(&mut *conn)
            .await?
            .is_some();
        if within {
            counted.entry(i).or_default().push((item_id, units, limit));
        } else {
            let done = counted.remove(&i).unwrap_or_default();
            uncount(conn, user_id, done.into_iter()).await?;
            outcomes[i] = Some(PlaceOutcome::PurchaseLimit { item_id, limit });
        }
    }
    Ok(counted.into_keys().collect())
}

/// Takes `lines`' units off the member's purchase counts (a refused order of this batch, or a
/// cancellation).
async fn uncount(
    conn: &mut AnyConnection,
    user_id: i64,
    lines: impl Iterator<Item = (i64, i64, i64)>,
) -> Result<(), sqlx::Error> {
    for (item_id, units, _) in lines {
        sqlx::query(
            "UPDATE purchase_counts SET units = units - $1 WHERE user_id = $2 AND item_id = $3",
        )
        .bind(units)
        .bind(user_id)
        .bind(item_id)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
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

/// A column of a bulk insert, with its SQL type (for PostgreSQL's cast).
#[derive(Clone, Copy)]
pub(crate) enum Column {
    Int(&'static str),
    Text(&'static str),
}

/// `INSERT INTO {table} (…) SELECT … FROM <the rows of one JSON array parameter>`: one
/// statement and one bound parameter for any number of rows, so its text never changes (it is
/// prepared once per connection) and binding costs nothing (one parameter to look up).
pub(crate) fn bulk_insert_sql(
    backend: Backend,
    table: &str,
    columns: &[Column],
    param: usize,
) -> String {
    let names: Vec<&str> = columns
        .iter()
        .map(|c| match c {
            Column::Int(n) | Column::Text(n) => *n,
        })
        .collect();
    let values: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| match (backend, c) {
            (Backend::Sqlite, _) => format!("json_extract(value, '$[{i}]')"),
            (Backend::Postgres, Column::Int(_)) => format!("(r->>{i})::bigint"),
            (Backend::Postgres, Column::Text(_)) => format!("r->>{i}"),
        })
        .collect();
    let source = match backend {
        Backend::Sqlite => format!("json_each(${param})"),
        Backend::Postgres => format!("json_array_elements(${param}::json) AS r"),
    };
    format!(
        "INSERT INTO {table} ({}) SELECT {} FROM {source}",
        names.join(", "),
        values.join(", ")
    )
}

/// A JSON array of rows, each an array of cells, built without intermediate values.
#[derive(Default)]
pub(crate) struct JsonRows(String);

impl JsonRows {
    pub(crate) fn row(&mut self, cells: &[Cell<'_>]) {
        self.0.push(if self.0.is_empty() { '[' } else { ',' });
        self.0.push('[');
        for (i, cell) in cells.iter().enumerate() {
            if i > 0 {
                self.0.push(',');
            }
            match cell {
                Cell::Int(n) => self.0.push_str(&n.to_string()),
                Cell::Null => self.0.push_str("null"),
                Cell::Text(t) => self
                    .0
                    .push_str(&serde_json::to_string(t).unwrap_or_else(|_| "null".into())),
            }
        }
        self.0.push(']');
    }

    pub(crate) fn finish(mut self) -> String {
        if self.0.is_empty() {
            self.0.push('[');
        }
        self.0.push(']');
        self.0
    }
}

pub(crate) enum Cell<'a> {
    Int(i64),
    Null,
    Text(&'a str),
}

fn opt(n: Option<i64>) -> Cell<'static> {
    n.map_or(Cell::Null, Cell::Int)
}

/// Inserts the orders, their lines, their sold units and their events: one statement per
/// table, whatever the number of orders.
async fn insert_orders(
    conn: &mut AnyConnection,
    backend: Backend,
    orders: &[&NewOrder],
    now: i64,
) -> Result<(), sqlx::Error> {
    use Column::{Int, Text};
    if orders.is_empty() {
        return Ok(());
    }
    let succeeded = OrderStatus::Succeeded.as_str();
    let reserved = LineStatus::Reserved.as_str();
    let (mut order_rows, mut line_rows, mut sold_rows, mut event_rows) = (
        JsonRows::default(),
        JsonRows::default(),
        JsonRows::default(),
        JsonRows::default(),
    );
    let mut payload = String::new();
    for o in orders {
        order_rows.row(&[
            Cell::Int(o.id),
            Cell::Int(o.user_id),
            Cell::Text(succeeded),
            opt(o.coupon_id),
            Cell::Int(o.total_price),
            Cell::Int(o.discount),
            Cell::Int(now),
            Cell::Int(now),
        ]);
        for (n, l) in o.lines.iter().enumerate() {
            line_rows.row(&[
                Cell::Int(o.id),
                Cell::Int(i64::try_from(n).unwrap_or(i64::MAX)),
                Cell::Int(l.item_id),
                Cell::Int(l.quantity),
                Cell::Int(l.unit_price),
                Cell::Text(reserved),
            ]);
        }
        for h in &o.holds {
            if let HoldSource::Allotment { epoch } = h.source {
                sold_rows.row(&[
                    Cell::Int(o.id),
                    Cell::Int(h.item_id),
                    Cell::Int(h.quantity),
                    Cell::Text("CONFIRMED"),
                    Cell::Int(epoch),
                    Cell::Int(now),
                    Cell::Int(now),
                    Cell::Int(now),
                ]);
            }
        }
        let record = OrderRecord {
            id: o.id,
            user_id: o.user_id,
            status: OrderStatus::Succeeded,
            coupon_id: o.coupon_id,
            total_price: o.total_price,
            discount: o.discount,
            failure_reason: None,
            created_at: now,
            updated_at: now,
            lines: o
                .lines
                .iter()
                .map(|l| OrderLineRecord {
                    item_id: l.item_id,
                    quantity: l.quantity,
                    unit_price: l.unit_price,
                    status: LineStatus::Reserved,
                })
                .collect(),
        };
        let mut events = vec![Event::new(
            EventType::OrderSucceeded,
            o.id,
            Some(o.user_id),
            now,
            record.to_document(),
        )];
        if let Some(coupon_id) = o.coupon_id {
            let payload =
                serde_json::json!({"couponId": coupon_id, "userId": o.user_id, "orderId": o.id});
            events.push(Event::new(
                EventType::CouponUsed,
                coupon_id,
                Some(o.user_id),
                now,
                payload,
            ));
        }
        for event in &events {
            payload.clear();
            payload.push_str(&event.to_json());
            event_rows.row(&[
                Cell::Text(event.topic().suffix()),
                Cell::Text(&event.key()),
                Cell::Text(&payload),
                Cell::Int(now),
                Cell::Text(&event.event_id),
                Cell::Int(o.user_id),
            ]);
        }
    }
    let tables: [(&str, &[Column]); 4] = [
        (
            "orders",
            &[
                Int("id"),
                Int("user_id"),
                Text("status"),
                Int("coupon_id"),
                Int("total_price"),
                Int("discount"),
                Int("created_at"),
                Int("updated_at"),
            ],
        ),
        (
            "order_lines",
            &[
                Int("order_id"),
                Int("line_no"),
                Int("item_id"),
                Int("quantity"),
                Int("unit_price"),
                Text("status"),
            ],
        ),
        (
            "reservations",
            &[
                Int("order_id"),
                Int("item_id"),
                Int("quantity"),
                Text("status"),
                Int("epoch"),
                Int("deadline_at"),
                Int("created_at"),
                Int("updated_at"),
            ],
        ),
        (
            "outbox",
            &[
                Text("topic"),
                Text("event_key"),
                Text("payload"),
                Int("created_at"),
                Text("event_id"),
                Int("user_id"),
            ],
        ),
    ];
    let [orders_sql, lines_sql, sold_sql, events_sql]: [String; 4] = std::array::from_fn(|i| {
        let (table, columns) = tables[i];
        bulk_insert_sql(backend, table, columns, i + 1)
    });
    // One round trip for the four: statements separated by `;` on SQLite (each binds its own
    // numbered parameter), data-modifying CTEs in one statement on PostgreSQL (foreign keys
    // are checked at the end of the statement).
    let sql = match backend {
        Backend::Sqlite => format!("{orders_sql}; {lines_sql}; {sold_sql}; {events_sql}"),
        Backend::Postgres => {
            format!("WITH o AS ({orders_sql}), l AS ({lines_sql}), s AS ({sold_sql}) {events_sql}")
        }
    };
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(order_rows.finish())
        .bind(line_rows.finish())
        .bind(sold_rows.finish())
        .bind(event_rows.finish())
        .execute(&mut *conn)
        .await?;
    Ok(())
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
    fn bulk_inserts_read_their_rows_from_one_json_parameter() {
        let columns = [Column::Int("id"), Column::Text("status")];
        assert_eq!(
            bulk_insert_sql(Backend::Sqlite, "t", &columns, 1),
            "INSERT INTO t (id, status) SELECT json_extract(value, '$[0]'), \
             json_extract(value, '$[1]') FROM json_each($1)"
        );
        assert_eq!(
            bulk_insert_sql(Backend::Postgres, "t", &columns, 1),
            "INSERT INTO t (id, status) SELECT (r->>0)::bigint, r->>1 \
             FROM json_array_elements($1::json) AS r"
        );
        let mut rows = JsonRows::default();
        rows.row(&[Cell::Int(7), Cell::Text("a \"quoted\" {x}"), Cell::Null]);
        rows.row(&[Cell::Int(-1), Cell::Text(""), Cell::Int(0)]);
        assert_eq!(rows.finish(), r#"[[7,"a \"quoted\" {x}",null],[-1,"",0]]"#);
        assert_eq!(JsonRows::default().finish(), "[]");
    }

    #[test]
    fn multi_row_inserts_number_their_placeholders() {
        assert_eq!(
            insert_sql("INSERT INTO t (a, b)", 2, 2, " RETURNING a"),
            "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4) RETURNING a"
        );
    }
}
