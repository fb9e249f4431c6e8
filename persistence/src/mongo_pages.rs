//! The my-page read model in MongoDB (`SURGE_MONGO_URL`, feature `mongo`): one document per
//! member, `{_id: userId, version, page: {...}, applied: [eventId…], updatedAt}`.
//!
//! Each member's document changes by a compare-and-set on `version` (a replace filtered on the
//! version read; a new document is an insert that fails on a duplicate `_id`), so two consumers
//! applying events of one member (their orders and coupons are on different topics) never lose
//! each other's change: the loser reads again and re-applies. The document remembers the ids of
//! the last [`APPLIED_KEPT`] events it applied, so a redelivered event changes nothing even
//! before the main database has marked its outbox row applied.
//!
//! Reads use `aggregate` rather than `find`: the wire server the tests use (`mongoeco`) refuses
//! the `limit` the Rust driver sends with `find`, and `$match` on `_id` is the same query.

use mongodb::bson::{self, Document, doc};
use mongodb::{Client, Collection};
use surge_domain::{Event, MemberPage};

/// How many applied event ids a document keeps for dropping redeliveries. A redelivery comes
/// with its batch (at most a few hundred events), far fewer for any one member.
pub const APPLIED_KEPT: usize = 256;
/// Compare-and-set attempts before a batch fails (and is delivered again).
const MAX_ATTEMPTS: usize = 16;

/// A MongoDB failure, as text.
#[derive(Debug, thiserror::Error)]
#[error("mongodb: {0}")]
pub struct MongoError(String);

fn err(e: impl std::fmt::Display) -> MongoError {
    MongoError(e.to_string())
}

/// A member's stored page.
#[derive(Debug, Clone, PartialEq)]
pub struct MongoPage {
    /// The page.
    pub page: MemberPage,
    /// Unix ms of its last change.
    pub updated_at: i64,
}

/// The `my_page` collection.
#[derive(Debug, Clone)]
pub struct MongoPages {
    pages: Collection<Document>,
}

struct Loaded {
    version: i64,
    page: MemberPage,
    applied: Vec<String>,
    updated_at: i64,
}

impl MongoPages {
    /// Connects to `url` (database `surge` unless the URL names one) and checks it answers.
    pub async fn connect(url: &str) -> Result<Self, MongoError> {
        let client = Client::with_uri_str(url).await.map_err(err)?;
        let db = client
            .default_database()
            .unwrap_or_else(|| client.database("surge"));
        db.run_command(doc! {"ping": 1}).await.map_err(err)?;
        Ok(Self {
            pages: db.collection("my_page"),
        })
    }

    async fn load(&self, user_id: i64) -> Result<Option<Loaded>, MongoError> {
        let reply = self
            .pages
            .client()
            .database(self.pages.namespace().db.as_str())
            .run_command(doc! {
                "aggregate": self.pages.name(),
                "pipeline": [{"$match": {"_id": user_id}}, {"$limit": 1}],
                "cursor": {},
            })
            .await
            .map_err(err)?;
        let first = reply
            .get_document("cursor")
            .and_then(|c| c.get_array("firstBatch"))
            .map_err(err)?
            .first()
            .and_then(bson::Bson::as_document)
            .cloned();
        let Some(stored) = first else {
            return Ok(None);
        };
        let page: MemberPage =
            bson::from_bson(stored.get("page").cloned().unwrap_or_default()).map_err(err)?;
        let applied = stored
            .get_array("applied")
            .map(|a| {
                a.iter()
                    .filter_map(|id| id.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Some(Loaded {
            version: stored.get_i64("version").unwrap_or(0),
            page,
            applied,
            updated_at: stored.get_i64("updatedAt").unwrap_or(0),
        }))
    }

    /// Applies one member's events (each with its coupon details, when it needs them).
    /// Returns how many were new to the document.
    pub async fn apply_member(
        &self,
        user_id: i64,
        events: &[(&Event, Option<&serde_json::Value>)],
        now: i64,
    ) -> Result<usize, MongoError> {
        for _ in 0..MAX_ATTEMPTS {
            let loaded = self.load(user_id).await?;
            let (version, mut page, mut applied) = match loaded {
                Some(l) => (l.version, l.page, l.applied),
                None => (0, MemberPage::default(), Vec::new()),
            };
            let mut new = 0;
            for (event, details) in events {
                if applied.contains(&event.event_id) {
                    continue;
                }
                page.apply(event, *details);
                applied.push(event.event_id.clone());
                new += 1;
            }
            if new == 0 {
                return Ok(0);
            }
            let keep_from = applied.len().saturating_sub(APPLIED_KEPT);
            let document = doc! {
                "_id": user_id,
                "version": version + 1,
                "page": bson::to_bson(&page).map_err(err)?,
                "applied": &applied[keep_from..],
                "updatedAt": now,
            };
            let written = if version == 0 {
                // A new document: the insert fails on a duplicate `_id` if another consumer
                // created it first.
                self.pages.insert_one(document).await.is_ok()
            } else {
                self.pages
                    .replace_one(doc! {"_id": user_id, "version": version}, document)
                    .await
                    .map_err(err)?
                    .matched_count
                    == 1
            };
            if written {
                return Ok(new);
            }
        }
        Err(MongoError(format!(
            "member {user_id}: the page kept changing under {MAX_ATTEMPTS} attempts"
        )))
    }

    /// A member's page, if there is one.
    pub async fn page(&self, user_id: i64) -> Result<Option<MongoPage>, MongoError> {
        Ok(self.load(user_id).await?.map(|l| MongoPage {
            page: l.page,
            updated_at: l.updated_at,
        }))
    }
}
