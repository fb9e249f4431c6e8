//! The my-page read model in the main database: one JSON document per member
//! ([`surge_domain::MemberPage`]), changed by each event, and the processed-events table that
//! makes a redelivered event change nothing.

use std::collections::{BTreeMap, HashMap};

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
    /// Applies a batch of events to the members' pages in one transaction. An event already
    /// processed (a redelivery) is skipped; events without a member are only recorded. Returns
    /// how many events were new.
    pub async fn apply_my_page_events(
        &self,
        events: &[Event],
        now: i64,
    ) -> Result<usize, PersistenceError> {
        if events.is_empty() {
            return Ok(0);
        }
        let mut tx = self.begin_write().await?;
        let mut fresh = Vec::with_capacity(events.len());
        for event in events {
            let inserted = sqlx::query(
                "INSERT INTO processed_events (consumer, event_id, processed_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (consumer, event_id) DO NOTHING",
            )
            .bind(MY_PAGE_CONSUMER)
            .bind(&event.event_id)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted == 1 {
                fresh.push(event);
            }
        }
        let mut by_member: BTreeMap<i64, Vec<&Event>> = BTreeMap::new();
        for event in &fresh {
            if let Some(user) = event.user_id {
                by_member.entry(user).or_default().push(event);
            }
        }
        let mut coupon_details: HashMap<i64, serde_json::Value> = HashMap::new();
        for (user_id, events) in by_member {
            let stored: Option<(String,)> =
                sqlx::query_as("SELECT doc FROM my_page WHERE user_id = $1")
                    .bind(user_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            let mut page: MemberPage = match stored {
                Some((doc,)) => serde_json::from_str(&doc)
                    .map_err(|e| PersistenceError::Corrupt(format!("my_page {user_id}: {e}")))?,
                None => MemberPage::default(),
            };
            for event in events {
                let details = if event.kind == EventType::CouponIssued {
                    let id = event.aggregate_id;
                    if let std::collections::hash_map::Entry::Vacant(slot) =
                        coupon_details.entry(id)
                    {
                        let row: Option<(String, i64, Option<i64>)> = sqlx::query_as(
                            "SELECT name, discount_tenths, item_id FROM coupons WHERE id = $1",
                        )
                        .bind(id)
                        .fetch_optional(&mut *tx)
                        .await?;
                        if let Some((name, tenths, item_id)) = row {
                            #[allow(clippy::cast_precision_loss, reason = "tenths ≤ 1000")]
                            let rate = tenths as f64 / 10.0;
                            slot.insert(serde_json::json!({
                                "name": name, "discountRate": rate, "itemId": item_id,
                            }));
                        }
                    }
                    coupon_details.get(&id)
                } else {
                    None
                };
                page.apply(event, details);
            }
            let doc = serde_json::to_string(&page)
                .map_err(|e| PersistenceError::Corrupt(e.to_string()))?;
            sqlx::query(
                "INSERT INTO my_page (user_id, doc, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (user_id) DO UPDATE SET doc = excluded.doc, updated_at = excluded.updated_at",
            )
            .bind(user_id)
            .bind(doc)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(fresh.len())
    }

    /// A member's page, when the read model has one that holds every change about them: it was
    /// started by their sign-up and no event of theirs in the outbox is unprocessed. `None`
    /// otherwise (the caller composes the page from the sources).
    pub async fn current_my_page(
        &self,
        user_id: i64,
    ) -> Result<Option<StoredPage>, PersistenceError> {
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
        if !page.complete || self.unapplied_events(user_id).await? > 0 {
            return Ok(None);
        }
        Ok(Some(StoredPage { page, updated_at }))
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
        Ok(row.map(|(name, tenths, item_id)| {
            #[allow(clippy::cast_precision_loss, reason = "tenths ≤ 1000")]
            let rate = tenths as f64 / 10.0;
            serde_json::json!({"name": name, "discountRate": rate, "itemId": item_id})
        }))
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
