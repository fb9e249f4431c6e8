//! The my-page read model in the main database: one JSON document per member
//! ([`surge_domain::MemberPage`]), changed by each event, and the processed-events table that
//! makes a redelivered event change nothing.

use std::collections::{BTreeMap, HashMap, HashSet};

use surge_domain::{Event, EventType, MemberPage};

use crate::{Backend, Database, PersistenceError};

/// The consumer name the my-page projection records its processed events under.
pub const MY_PAGE_CONSUMER: &str = "my-page";

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
    /// started by their sign-up and no event of theirs in the outbox is unprocessed. `None`
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

    /// How many of a member's events in the outbox the read model has not applied yet.
    pub async fn unapplied_events(&self, user_id: i64) -> Result<i64, PersistenceError> {
        let (behind,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM outbox o WHERE o.user_id = $1 AND o.event_id IS NOT NULL \
             AND NOT EXISTS (SELECT 1 FROM processed_events p \
                             WHERE p.consumer = $2 AND p.event_id = o.event_id)",
        )
        .bind(user_id)
        .bind(MY_PAGE_CONSUMER)
        .fetch_one(self.pool())
        .await?;
        Ok(behind)
    }

    /// Records events as applied by the projection (when its documents live elsewhere).
    pub async fn record_processed(
        &self,
        events: &[Event],
        now: i64,
    ) -> Result<(), PersistenceError> {
        let mut tx = self.begin_write().await?;
        for event in events {
            sqlx::query(
                "INSERT INTO processed_events (consumer, event_id, processed_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (consumer, event_id) DO NOTHING",
            )
            .bind(MY_PAGE_CONSUMER)
            .bind(&event.event_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
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
/// the order path, so its share of a transaction must be short): one multi-row insert of the
/// event ids that returns the new ones (a redelivered event is skipped), one read of the
/// members' documents, one multi-row upsert of them; and, when `published` is given (the
/// in-process relay), the outbox rows marked published. Events without a member are only
/// recorded. Returns how many events were new.
pub(crate) async fn apply_page_events(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
    events: &[Event],
    now: i64,
    published: &[i64],
) -> Result<usize, PersistenceError> {
    use crate::placement::{Cell, Column, JsonRows, bulk_insert_sql};
    let mut ids = JsonRows::default();
    for event in events {
        ids.row(&[
            Cell::Text(MY_PAGE_CONSUMER),
            Cell::Text(&event.event_id),
            Cell::Int(now),
        ]);
    }
    let columns = [
        Column::Text("consumer"),
        Column::Text("event_id"),
        Column::Int("processed_at"),
    ];
    let sql = format!(
        "{} WHERE true ON CONFLICT (consumer, event_id) DO NOTHING RETURNING event_id",
        bulk_insert_sql(backend, "processed_events", &columns, 1)
    );
    let new: HashSet<String> = sqlx::query_as::<_, (String,)>(sqlx::AssertSqlSafe(sql))
        .bind(ids.finish())
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|(id,)| id)
        .collect();
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
    if !published.is_empty() {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE outbox SET published_at = $1 WHERE id IN ({}) AND published_at IS NULL",
            id_list(published.iter().copied())
        )))
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    Ok(new.len())
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
        // The original and its redelivered copy read in one batch.
        let batch = [signed_up.clone(), first.clone(), first.clone()];
        assert_eq!(db.apply_my_page_events(&batch, 1, &[]).await.unwrap(), 2);
        // Redelivered again later, with one new event.
        let batch = [first.clone(), second, signed_up];
        assert_eq!(db.apply_my_page_events(&batch, 2, &[]).await.unwrap(), 1);
        let page = db.stored_my_page(7).await.unwrap().unwrap();
        assert_eq!(page.stats.orders_succeeded, 2);
        assert_eq!(page.stats.total_spent, 20);
        assert_eq!(page.recent_orders.len(), 2);
    }
}
