//! The Kafka side of events: the relay's sink, and the consumer loop that feeds the same
//! projection the in-process sink calls.

use std::time::Duration;

use surge_persistence::kafka::{KafkaPublisher, KafkaSubscriber};
use surge_persistence::outbox::OutboxRow;
use tokio::sync::watch;

use super::{EventSink, MyPageProjection, SinkError, SinkFuture};

/// Records applied per projection transaction at most.
const CONSUMER_BATCH: usize = 500;
/// Pause before applying a batch again after the projection failed (the batch is kept: its
/// offsets are not committed until it is applied).
const CONSUMER_RETRY: Duration = Duration::from_millis(200);

/// The relay publishes to Kafka.
#[derive(Debug)]
pub struct KafkaSink {
    publisher: KafkaPublisher,
    brokers: String,
    prefix: String,
    /// Set once every topic exists: topics are created (if missing) before the first batch,
    /// not at start, so a node starts while the broker is down and its outbox waits.
    topics_ready: std::sync::atomic::AtomicBool,
}

impl KafkaSink {
    /// Publishes with `publisher` to the topics under `prefix` on `brokers`.
    pub fn new(publisher: KafkaPublisher, brokers: &str, prefix: &str) -> Self {
        Self {
            publisher,
            brokers: brokers.to_owned(),
            prefix: prefix.to_owned(),
            topics_ready: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl EventSink for KafkaSink {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn publish<'a>(&'a self, rows: &'a [OutboxRow]) -> SinkFuture<'a> {
        Box::pin(async move {
            use std::sync::atomic::Ordering;
            if !self.topics_ready.load(Ordering::Acquire) {
                surge_persistence::kafka::ensure_topics(&self.brokers, &self.prefix)
                    .await
                    .map_err(|e| SinkError::Broker(e.to_string()))?;
                self.topics_ready.store(true, Ordering::Release);
            }
            self.publisher
                .publish(rows)
                .await
                .map_err(|e| SinkError::Broker(e.to_string()))
        })
    }
}

/// Where a consumer reads: brokers, topic prefix, consumer group.
#[derive(Debug, Clone)]
pub struct ConsumerPlace {
    /// `host:port,…`.
    pub brokers: String,
    /// Topic prefix.
    pub prefix: String,
    /// Consumer group.
    pub group: String,
    /// This node's static member name in the group (its node id).
    pub member: String,
}

/// Reads every topic as a member of the projection's consumer group and applies each batch
/// to the read model before committing its offsets, until `stop`.
pub async fn run_projection(
    place: ConsumerPlace,
    projection: MyPageProjection,
    mut stop: watch::Receiver<bool>,
) {
    // Subscribe only once the topics exist (a fresh broker, before any relay published): a
    // subscription made before is not reliably given the partitions created after it.
    let subscriber = loop {
        let ready = surge_persistence::kafka::ensure_topics(&place.brokers, &place.prefix)
            .await
            .and_then(|()| {
                KafkaSubscriber::connect_as(
                    &place.brokers,
                    &place.prefix,
                    &place.group,
                    Some(&place.member),
                )
            });
        match ready {
            Ok(subscriber) => break subscriber,
            Err(e) => {
                tracing::warn!(error = %e, "joining the event topics failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(CONSUMER_RETRY * 5) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        }
    };
    loop {
        let batch = tokio::select! {
            batch = subscriber.next_batch(CONSUMER_BATCH) => batch,
            _ = stop.wait_for(|s| *s) => return,
        };
        let batch = match batch {
            Ok(batch) => batch,
            Err(e) => {
                tracing::warn!(error = %e, "reading events from Kafka failed");
                tokio::time::sleep(CONSUMER_RETRY).await;
                continue;
            }
        };
        // At least once: the offsets move only after the effect is stored; until then the
        // same batch is applied again (its events are recognised by id if partly stored).
        loop {
            match projection.consume(&batch.events).await {
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "applying events to the read model failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(CONSUMER_RETRY) => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                }
            }
        }
        if let Err(e) = subscriber.commit(&batch) {
            // Not fatal: the batch comes again and changes nothing the second time.
            tracing::warn!(error = %e, "committing Kafka offsets failed");
        }
    }
}
