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
/// recognised by its event id and changes nothing).
#[derive(Debug, Clone)]
pub struct MyPageProjection {
    db: Database,
}

impl MyPageProjection {
    /// A projection into `db`'s read model.
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// Applies a batch; returns how many events were new.
    pub async fn consume(&self, events: &[Event]) -> Result<usize, PersistenceError> {
        self.db.apply_my_page_events(events, now_millis()).await
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
            let events = decode_rows(rows);
            self.my_page.consume(&events).await?;
            Ok(())
        })
    }
}
