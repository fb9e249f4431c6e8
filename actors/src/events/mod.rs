//! Events from the transactional outbox to their consumers.
//!
//! - [`OutboxRelay`] reads the outbox in order, in batches, hands each batch to an
//!   [`EventSink`] (Kafka, or the in-process consumers when no broker is configured) through a
//!   circuit breaker, and marks the rows published; it is the one relay of its database while
//!   it holds the relay lease, and it purges published rows after the retention.
//! - [`MyPageProjection`] is the consumer that keeps each member's page: the same code
//!   whether its events come from Kafka or straight from the relay.

#[cfg(feature = "kafka")]
pub mod kafka;
mod relay;

use std::future::Future;
use std::pin::Pin;

use surge_domain::Event;
use surge_persistence::committer::{GroupCommitter, PageEvents};
use surge_persistence::outbox::OutboxRow;
use surge_persistence::{Database, PersistenceError, now_millis};

pub use relay::{OutboxRelay, RelayConfig, RelaySnapshot, RelayStats};

/// A boxed, sendable future (object-safe sinks).
pub type SinkFuture<'a> = Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send + 'a>>;

/// Why a batch was not delivered; the relay keeps the rows and tries again.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The broker refused or did not acknowledge.
    #[error("broker: {0}")]
    Broker(String),
    /// An in-process consumer failed to store its effect.
    #[error("consumer: {0}")]
    Consumer(#[from] PersistenceError),
}

/// Where the relay delivers events.
pub trait EventSink: Send + Sync + 'static {
    /// A name for logs and admin (`kafka`, `in-process`).
    fn name(&self) -> &'static str;

    /// Delivers a batch, in order. `Ok` means every event of it is durably accepted (the
    /// broker acknowledged it, or the consumers committed its effect).
    fn publish<'a>(&'a self, rows: &'a [OutboxRow]) -> SinkFuture<'a>;

    /// Whether [`Self::publish`] also marks the rows published (in the transaction that stores
    /// their effect), so the relay need not.
    fn marks_published(&self) -> bool {
        false
    }
}

/// Decodes outbox rows; a row that is not an event (never written by this version) is logged
/// and skipped, so one bad row cannot stop the relay.
pub fn decode_rows(rows: &[OutboxRow]) -> Vec<Event> {
    rows.iter()
        .filter_map(|row| match Event::from_json(&row.payload) {
            Ok(event) => Some(event),
            Err(e) => {
                tracing::warn!(outbox_id = row.id, error = %e, "skipping an outbox row that is not an event");
                None
            }
        })
        .collect()
}

/// The consumer that keeps the my-page read model: applies each event once (a redelivery is
/// recognised by its event id and changes nothing), into the main database or MongoDB.
#[derive(Debug, Clone)]
pub struct MyPageProjection {
    db: Database,
    /// The node's group committer, when the projection writes through it (see
    /// [`surge_persistence::committer::Write::Project`]); `None`: a transaction of its own.
    writer: Option<GroupCommitter>,
    #[cfg(feature = "mongo")]
    mongo: Option<std::sync::Arc<surge_persistence::mongo_pages::MongoPages>>,
}

impl MyPageProjection {
    /// A projection into `db`'s read model.
    pub fn new(db: Database) -> Self {
        Self {
            db,
            writer: None,
            #[cfg(feature = "mongo")]
            mongo: None,
        }
    }

    /// Writes the documents kept in the main database through `writer`, in its transactions
    /// (one writer per database on SQLite: no second connection waiting for the write lock).
    #[must_use]
    pub fn through(mut self, writer: GroupCommitter) -> Self {
        self.writer = Some(writer);
        self
    }

    /// Applies `events` (and marks `published`) in the main database.
    async fn apply(
        &self,
        events: Vec<Event>,
        published: Vec<i64>,
    ) -> Result<usize, PersistenceError> {
        // Once the writer has finished (a stopping node), the relay's last rounds go in a
        // transaction of their own, with no writer left to wait behind.
        if let Some(writer) = self.writer.as_ref().filter(|w| !w.is_closed()) {
            return writer.project(PageEvents { events, published }).await;
        }
        self.db
            .apply_my_page_events(&events, now_millis(), &published)
            .await
    }

    /// A projection whose documents live in MongoDB (`db` still records processed events).
    #[cfg(feature = "mongo")]
    pub fn in_mongo(db: Database, mongo: surge_persistence::mongo_pages::MongoPages) -> Self {
        Self {
            db,
            writer: None,
            mongo: Some(std::sync::Arc::new(mongo)),
        }
    }

    /// Where the documents live: `main-database` or `mongodb`.
    pub fn store(&self) -> &'static str {
        #[cfg(feature = "mongo")]
        if self.mongo.is_some() {
            return "mongodb";
        }
        "main-database"
    }

    /// Applies a batch; returns how many events were new.
    pub async fn consume(&self, events: &[Event]) -> Result<usize, PersistenceError> {
        #[cfg(feature = "mongo")]
        if let Some(mongo) = &self.mongo {
            return self.consume_into_mongo(mongo, events, &[]).await;
        }
        self.apply(events.to_vec(), Vec::new()).await
    }

    /// Applies a batch read from the outbox and marks its rows published and applied, in one
    /// transaction (the in-process relay: one write instead of two per round). Documents
    /// elsewhere (MongoDB): applied there first, then the rows marked in one statement.
    pub async fn consume_outbox(&self, rows: &[OutboxRow]) -> Result<usize, PersistenceError> {
        let events = decode_rows(rows);
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        #[cfg(feature = "mongo")]
        if let Some(mongo) = &self.mongo {
            return self.consume_into_mongo(mongo, &events, &ids).await;
        }
        self.apply(events, ids).await
    }

    /// Each member's document by compare-and-set, then the outbox rows claimed applied in the
    /// main database (what "is this member's page current" asks), and marked published when
    /// `published` names them (the in-process relay). A crash between the two re-applies the
    /// batch, and the documents drop what they already hold by id.
    #[cfg(feature = "mongo")]
    async fn consume_into_mongo(
        &self,
        mongo: &surge_persistence::mongo_pages::MongoPages,
        events: &[Event],
        published: &[i64],
    ) -> Result<usize, PersistenceError> {
        use std::collections::{BTreeMap, HashMap};
        let mut details: HashMap<i64, Option<serde_json::Value>> = HashMap::new();
        for event in events {
            if event.kind == surge_domain::EventType::CouponIssued
                && !details.contains_key(&event.aggregate_id)
            {
                let found = self.db.coupon_details(event.aggregate_id).await?;
                details.insert(event.aggregate_id, found);
            }
        }
        let mut by_member: BTreeMap<i64, Vec<(&Event, Option<&serde_json::Value>)>> =
            BTreeMap::new();
        for event in events {
            if let Some(user) = event.user_id {
                let detail = details.get(&event.aggregate_id).and_then(Option::as_ref);
                let detail = (event.kind == surge_domain::EventType::CouponIssued)
                    .then_some(detail)
                    .flatten();
                by_member.entry(user).or_default().push((event, detail));
            }
        }
        let now = now_millis();
        let mut new = 0;
        for (user, member_events) in by_member {
            new += mongo
                .apply_member(user, &member_events, now)
                .await
                .map_err(|e| PersistenceError::ReadModel(e.to_string()))?;
        }
        self.db.mark_applied(events, now, published).await?;
        Ok(new)
    }

    /// A member's page when the read model holds every change about them.
    pub async fn current_page(
        &self,
        user_id: i64,
    ) -> Result<Option<surge_persistence::my_page::StoredPage>, PersistenceError> {
        #[cfg(feature = "mongo")]
        if let Some(mongo) = &self.mongo {
            // The count first, the document after (see `Database::current_my_page`).
            if self.db.unapplied_events(user_id).await? > 0 {
                return Ok(None);
            }
            let Some(stored) = mongo
                .page(user_id)
                .await
                .map_err(|e| PersistenceError::ReadModel(e.to_string()))?
            else {
                return Ok(None);
            };
            if !stored.page.complete {
                return Ok(None);
            }
            return Ok(Some(surge_persistence::my_page::StoredPage {
                page: stored.page,
                updated_at: stored.updated_at,
            }));
        }
        self.db.current_my_page(user_id).await
    }
}

/// Without a broker: the relay hands each batch straight to the consumers.
#[derive(Debug, Clone)]
pub struct InProcessSink {
    my_page: MyPageProjection,
}

impl InProcessSink {
    /// Delivers to `my_page`.
    pub fn new(my_page: MyPageProjection) -> Self {
        Self { my_page }
    }
}

impl EventSink for InProcessSink {
    fn name(&self) -> &'static str {
        "in-process"
    }

    fn publish<'a>(&'a self, rows: &'a [OutboxRow]) -> SinkFuture<'a> {
        Box::pin(async move {
            self.my_page.consume_outbox(rows).await?;
            Ok(())
        })
    }

    fn marks_published(&self) -> bool {
        true
    }
}
