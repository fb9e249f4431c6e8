//! The my-page read model in the main database: one JSON document per member
//! ([`surge_domain::MemberPage`]), changed by each event; each outbox row records when the read
//! model applied it (`applied_at`), which makes a redelivered event change nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use surge_domain::{Event, EventType, MemberPage};

use crate::{Backend, Database, PersistenceError};

/// A member's stored page and whether every change about them is in it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPage {
    /// The document.
    pub page: MemberPage,
    /// Unix ms of its last change.
    pub updated_at: i64,
}

impl Database {
    /// Applies a batch of events to the members' pages in a transaction of its own (see
    /// [`apply_page_events`]; a node with a group committer sends the batch to it instead, so
    /// the projection's writes join the order writer's transaction).
    pub async fn apply_my_page_events(
        &self,
        events: &[Event],
        now: i64,
        published: &[i64],
    ) -> Result<usize, PersistenceError> {
        if events.is_empty() && published.is_empty() {
            return Ok(0);
        }
        let mut tx = self.begin_write().await?;
        let new = apply_page_events(&mut tx, self.backend(), events, now, published).await?;
        tx.commit().await?;
        Ok(new)
    }

    /// A member's page, when the read model has one that holds every change about them: it was
    /// started by their sign-up and no event of theirs in the outbox is unapplied. `None`
    /// otherwise (the caller composes the page from the sources).
    pub async fn current_my_page(
        &self,
        user_id: i64,
    ) -> Result<Option<StoredPage>, PersistenceError> {
        // The unapplied count first, the document after: the document only moves forward, so
        // one read after "nothing unapplied" holds every change made before that count. (The
        // other order raced with the relay: an old document, then a count taken after the
        // relay applied the change, served a page without it.)
        if self.unapplied_events(user_id).await? > 0 {
            return Ok(None);
        }
        let stored: Option<(String, i64)> =
            sqlx::query_as("SELECT doc, updated_at FROM my_page WHERE user_id = $1")
                .bind(user_id)
                .fetch_optional(self.pool())
                .await?;
        let Some((doc, updated_at)) = stored else {
            return Ok(None);
        };
        let page: MemberPage = serde_json::from_str(&doc)
            .map_err(|e| PersistenceError::Corrupt(format!("my_page {user_id}: {e}")))?;
        Ok(page.complete.then_some(StoredPage { page, updated_at }))
    }

    /// How many of a member's events in the outbox the read model has not applied yet (a
    /// partial index holds just those rows, so the count does not grow with their history).
    pub async fn unapplied_events(&self, user_id: i64) -> Result<i64, PersistenceError> {
        let (behind,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM outbox WHERE user_id = $1 AND applied_at IS NULL")
                .bind(user_id)
                .fetch_one(self.pool())
                .await?;
        Ok(behind)
    }

    /// Records events as applied by the projection when its documents live elsewhere
    /// (MongoDB), marking `published` rows published with them (the in-process relay).
    pub async fn mark_applied(
        &self,
        events: &[Event],
        now: i64,
        published: &[i64],
    ) -> Result<(), PersistenceError> {
        let mut tx = self.begin_write().await?;
        claim_unapplied(&mut tx, events, now, published).await?;
        tx.commit().await?;
        Ok(())
    }

    /// A coupon's catalogue entry as a page shows it (`{name, discountRate, itemId}`).
    pub async fn coupon_details(
        &self,
        coupon_id: i64,
    ) -> Result<Option<serde_json::Value>, PersistenceError> {
        let row: Option<(String, i64, Option<i64>)> =
            sqlx::query_as("SELECT name, discount_tenths, item_id FROM coupons WHERE id = $1")
                .bind(coupon_id)
                .fetch_optional(self.pool())
                .await?;
        Ok(row.map(|(name, tenths, item_id)| coupon_entry(name, tenths, item_id)))
    }

    /// A member's stored page whatever its state (tests and admin).
    pub async fn stored_my_page(
        &self,
        user_id: i64,
    ) -> Result<Option<MemberPage>, PersistenceError> {
        let stored: Option<(String,)> =
            sqlx::query_as("SELECT doc FROM my_page WHERE user_id = $1")
                .bind(user_id)
                .fetch_optional(self.pool())
                .await?;
        stored
            .map(|(doc,)| {
                serde_json::from_str(&doc).map_err(|e| PersistenceError::Corrupt(e.to_string()))
            })
            .transpose()
    }

    /// The page's totals from the sources: orders now `SUCCEEDED` (count and sum) and unused
    /// coupons.
    pub async fn member_stats(
        &self,
        user_id: i64,
    ) -> Result<surge_domain::PageStats, PersistenceError> {
        let (orders_succeeded, total_spent): (i64, i64) = sqlx::query_as(match self.backend() {
            Backend::Sqlite => {
                "SELECT COUNT(*), COALESCE(SUM(total_price), 0) FROM orders \
                 WHERE user_id = $1 AND status = 'SUCCEEDED'"
            }
            Backend::Postgres => {
                "SELECT COUNT(*), COALESCE(SUM(total_price), 0)::bigint FROM orders \
                 WHERE user_id = $1 AND status = 'SUCCEEDED'"
            }
        })
        .bind(user_id)
        .fetch_one(self.pool())
        .await?;
        let (coupons_unused,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM coupon_issues WHERE user_id = $1 AND status = 'UNUSED'",
        )
        .bind(user_id)
        .fetch_one(self.pool())
        .await?;
        Ok(surge_domain::PageStats {
            orders_succeeded,
            total_spent,
            coupons_unused,
        })
    }
}

/// Applies a batch of events to the members' pages in the caller's transaction, with a few
/// statements whatever the batch's size (the projection shares the database's one writer with
/// the order path, so its share of a transaction must be short): one update that claims the
/// events' outbox rows as applied and returns those not applied before (a redelivered event is
/// skipped, see [`claim_unapplied`]), one read of the members' documents, one multi-row upsert
/// of them. Returns how many events were new.
pub(crate) async fn apply_page_events(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
    events: &[Event],
    now: i64,
    published: &[i64],
) -> Result<usize, PersistenceError> {
    use crate::placement::{Cell, Column, JsonRows, bulk_insert_sql};
    let new = claim_unapplied(conn, events, now, published).await?;
    let mut by_member: BTreeMap<i64, Vec<&Event>> = BTreeMap::new();
    // A batch may hold two copies of one event (a redelivery read together with the
    // original): the insert returns its id once, and only its first copy is applied.
    let mut taken: HashSet<&str> = HashSet::with_capacity(new.len());
    for event in events
        .iter()
        .filter(|e| new.contains(&e.event_id) && taken.insert(e.event_id.as_str()))
    {
        if let Some(user) = event.user_id {
            by_member.entry(user).or_default().push(event);
        }
    }
    if !by_member.is_empty() {
        // Integers we hold ourselves; nothing from a client is spliced in.
        let members = id_list(by_member.keys().copied());
        let stored: Vec<(i64, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT user_id, doc FROM my_page WHERE user_id IN ({members})"
        )))
        .fetch_all(&mut *conn)
        .await?;
        let mut pages: HashMap<i64, MemberPage> = HashMap::with_capacity(by_member.len());
        for (user_id, doc) in stored {
            let page = serde_json::from_str(&doc)
                .map_err(|e| PersistenceError::Corrupt(format!("my_page {user_id}: {e}")))?;
            pages.insert(user_id, page);
        }
        let coupon_ids: Vec<i64> = by_member
            .values()
            .flatten()
            .filter(|e| e.kind == EventType::CouponIssued)
            .map(|e| e.aggregate_id)
            .collect();
        let mut coupons: HashMap<i64, serde_json::Value> = HashMap::new();
        if !coupon_ids.is_empty() {
            let rows: Vec<(i64, String, i64, Option<i64>)> =
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT id, name, discount_tenths, item_id FROM coupons WHERE id IN ({})",
                    id_list(coupon_ids.into_iter())
                )))
                .fetch_all(&mut *conn)
                .await?;
            for (id, name, tenths, item_id) in rows {
                coupons.insert(id, coupon_entry(name, tenths, item_id));
            }
        }
        let mut docs = JsonRows::default();
        for (user_id, events) in &by_member {
            let page = pages.entry(*user_id).or_default();
            for event in events {
                let details = (event.kind == EventType::CouponIssued)
                    .then(|| coupons.get(&event.aggregate_id))
                    .flatten();
                page.apply(event, details);
            }
            let doc = serde_json::to_string(page)
                .map_err(|e| PersistenceError::Corrupt(e.to_string()))?;
            docs.row(&[Cell::Int(*user_id), Cell::Text(&doc), Cell::Int(now)]);
        }
        let columns = [
            Column::Int("user_id"),
            Column::Text("doc"),
            Column::Int("updated_at"),
        ];
        let sql = format!(
            "{} WHERE true ON CONFLICT (user_id) DO UPDATE SET doc = excluded.doc, \
             updated_at = excluded.updated_at",
            bulk_insert_sql(backend, "my_page", &columns, 1)
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(docs.finish())
            .execute(&mut *conn)
            .await?;
    }
    Ok(new.len())
}

/// Claims `events` as applied on their outbox rows and returns the ids of those no one had
/// applied before: the read model's exactly-once, kept on the row itself (`applied_at`), so an
/// event costs no row of its own in a processed-events table and "is this member's page
/// current" reads a partial index of the few rows still unapplied.
///
/// - With `published` (the in-process relay): the rows are marked published and applied in one
///   statement, by primary key. A row another relay published meanwhile is not returned.
/// - Without (events read back from Kafka): the rows are found by member and event id through
///   the partial index of unapplied rows. Events without a member change no page and are not
///   claimed (their rows are written applied). A row purged after the retention is not found,
///   so an event redelivered that late is dropped, never counted twice.
pub(crate) async fn claim_unapplied(
    conn: &mut sqlx::AnyConnection,
    events: &[Event],
    now: i64,
    published: &[i64],
) -> Result<HashSet<String>, PersistenceError> {
    if !published.is_empty() {
        // `applied_at` keeps an earlier value (a row a Kafka consumer applied before the node
        // switched to the in-process relay); only rows applied by this statement come back new.
        let rows: Vec<(Option<String>, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "UPDATE outbox SET published_at = $1, applied_at = COALESCE(applied_at, $1) \
             WHERE id IN ({}) AND published_at IS NULL RETURNING event_id, applied_at",
            id_list(published.iter().copied())
        )))
        .bind(now)
        .fetch_all(&mut *conn)
        .await?;
        return Ok(rows
            .into_iter()
            .filter(|(_, applied_at)| *applied_at == now)
            .filter_map(|(id, _)| id)
            .collect());
    }
    let members: BTreeSet<i64> = events.iter().filter_map(|e| e.user_id).collect();
    let ids: BTreeSet<&str> = events
        .iter()
        .filter(|e| e.user_id.is_some())
        .map(|e| e.event_id.as_str())
        .collect();
    if ids.is_empty() {
        return Ok(HashSet::new());
    }
    // Member ids are integers we hold; event ids are bound, never spliced.
    let placeholders = (2..ids.len() + 2)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(",");
    let sql = format!(
        "UPDATE outbox SET applied_at = $1 WHERE applied_at IS NULL AND user_id IN ({}) \
         AND event_id IN ({placeholders}) RETURNING event_id",
        id_list(members.into_iter())
    );
    let mut query = sqlx::query_as::<_, (String,)>(sqlx::AssertSqlSafe(sql)).bind(now);
    for id in ids {
        query = query.bind(id);
    }
    Ok(query
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|(id,)| id)
        .collect())
}

/// A coupon's catalogue entry as a page shows it.
fn coupon_entry(name: String, tenths: i64, item_id: Option<i64>) -> serde_json::Value {
    #[allow(clippy::cast_precision_loss, reason = "tenths ≤ 1000")]
    let rate = tenths as f64 / 10.0;
    serde_json::json!({"name": name, "discountRate": rate, "itemId": item_id})
}

/// `1,2,3` for an `IN (…)` of integers.
fn id_list(ids: impl Iterator<Item = i64>) -> String {
    ids.map(|id| id.to_string()).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;
    use surge_domain::{Event, EventType};

    use crate::testing::ScratchDb;

    fn order(user: i64, id: i64) -> Event {
        Event::new(
            EventType::OrderSucceeded,
            id,
            Some(user),
            0,
            json!({"orderId": id, "userId": user, "status": "SUCCEEDED", "totalPrice": 10}),
        )
    }

    /// Writes `events` into the outbox as the changes they describe would; returns their ids.
    async fn outbox(db: &crate::Database, events: &[Event]) -> Vec<i64> {
        let mut tx = db.begin_write().await.unwrap();
        for event in events {
            crate::outbox::append(&mut tx, event).await.unwrap();
        }
        tx.commit().await.unwrap();
        db.unpublished_events(100)
            .await
            .unwrap()
            .into_iter()
            .map(|row| row.id)
            .collect()
    }

    #[tokio::test]
    async fn a_redelivered_event_changes_nothing_even_in_the_same_batch() {
        let scratch = ScratchDb::sqlite().await.unwrap();
        let db = &scratch.db;
        let signed_up = Event::new(
            EventType::MemberSignedUp,
            7,
            Some(7),
            0,
            json!({"userId": 7}),
        );
        let (first, second) = (order(7, 1), order(7, 2));
        outbox(db, &[signed_up.clone(), first.clone(), second.clone()]).await;
        assert_eq!(db.unapplied_events(7).await.unwrap(), 3);
        // The original and its redelivered copy read in one batch (from a broker).
        let batch = [signed_up.clone(), first.clone(), first.clone()];
        assert_eq!(db.apply_my_page_events(&batch, 1, &[]).await.unwrap(), 2);
        assert_eq!(db.unapplied_events(7).await.unwrap(), 1);
        // Redelivered again later, with one new event.
        let batch = [first.clone(), second, signed_up];
        assert_eq!(db.apply_my_page_events(&batch, 2, &[]).await.unwrap(), 1);
        assert_eq!(db.unapplied_events(7).await.unwrap(), 0);
        let page = db.stored_my_page(7).await.unwrap().unwrap();
        assert_eq!(page.stats.orders_succeeded, 2);
        assert_eq!(page.stats.total_spent, 20);
        assert_eq!(page.recent_orders.len(), 2);
    }

    #[tokio::test]
    async fn two_relays_delivering_the_same_rows_apply_them_once() {
        let scratch = ScratchDb::sqlite().await.unwrap();
        let db = &scratch.db;
        let events = [order(8, 1), order(8, 2)];
        let rows = outbox(db, &events).await;
        assert_eq!(rows.len(), 2);
        // Both relays read the rows before either marked them; the second comes too late.
        assert_eq!(db.apply_my_page_events(&events, 5, &rows).await.unwrap(), 2);
        assert_eq!(db.apply_my_page_events(&events, 6, &rows).await.unwrap(), 0);
        assert!(db.unpublished_events(100).await.unwrap().is_empty());
        assert_eq!(db.unapplied_events(8).await.unwrap(), 0);
        let page = db.stored_my_page(8).await.unwrap().unwrap();
        assert_eq!(page.stats.orders_succeeded, 2);
        // An event about no member is written applied: nothing waits on it.
        let created = Event::new(EventType::ItemCreated, 3, None, 0, json!({"itemId": 3}));
        outbox(db, &[created]).await;
        let (unapplied,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM outbox WHERE applied_at IS NULL")
                .fetch_one(db.pool())
                .await
                .unwrap();
        assert_eq!(unapplied, 0);
    }
}
