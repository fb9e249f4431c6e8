//! Kafka: the producer the outbox relay publishes with and the consumer the read-model
//! projections read from (librdkafka through `rdkafka`).
//!
//! Durability settings, each on purpose:
//! - the producer is idempotent with `acks=all`: a retried send after a lost acknowledgement
//!   is not written twice by the broker, and "sent" means every in-sync replica has it;
//! - a batch's records are enqueued in outbox order before any is awaited, and the idempotent
//!   producer keeps that order per partition across its retries, so the events of one key
//!   (one order, coupon, item or member) arrive in the order they happened;
//! - the consumer commits offsets only after the projection committed the batch's effect
//!   (at least once; the projection drops redeliveries by event id).

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use surge_domain::{Event, Topic};

use crate::outbox::OutboxRow;

/// Partitions of each topic created at start: the most consumers of one group that can share
/// a topic's load (a consumer group spans the nodes).
pub const PARTITIONS: i32 = 6;
/// How long a send may wait for its acknowledgement (librdkafka retries inside it); past it
/// the batch fails and the relay delivers it again.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a consumer waits for more records once it has one, to apply them in one batch.
const BATCH_WAIT: Duration = Duration::from_millis(5);

/// A Kafka failure, as text (the relay and consumer log it and retry).
#[derive(Debug, thiserror::Error)]
#[error("kafka: {0}")]
pub struct KafkaError(String);

fn err(e: impl std::fmt::Display) -> KafkaError {
    KafkaError(e.to_string())
}

/// The topic names for a prefix.
pub fn topic_name(prefix: &str, topic: Topic) -> String {
    format!("{prefix}{}", topic.suffix())
}

fn base_config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("socket.timeout.ms", "5000")
        .set("reconnect.backoff.max.ms", "1000");
    config
}

/// Creates every topic that is missing (the broker need not auto-create).
pub async fn ensure_topics(brokers: &str, prefix: &str) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = base_config(brokers).create().map_err(err)?;
    let names: Vec<String> = Topic::ALL.iter().map(|t| topic_name(prefix, *t)).collect();
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|n| NewTopic::new(n, PARTITIONS, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&topics, &options).await.map_err(err)? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(KafkaError(format!("creating {topic}: {code}"))),
        }
    }
    Ok(())
}

/// Publishes outbox rows.
pub struct KafkaPublisher {
    /// Replaced after every failed batch: an idempotent producer whose messages timed out must
    /// bump its epoch, and a broker may refuse that (tansu answers `ProducerFenced` to every
    /// later send), leaving the producer unusable. The new one has a new producer id, so a
    /// batch sent again may be written twice by the broker; consumers drop the copy by event id.
    producer: std::sync::Mutex<FutureProducer>,
    brokers: String,
    prefix: String,
}

impl std::fmt::Debug for KafkaPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaPublisher")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl KafkaPublisher {
    /// An idempotent producer with `acks=all`.
    pub fn connect(brokers: &str, prefix: &str) -> Result<Self, KafkaError> {
        Ok(Self {
            producer: std::sync::Mutex::new(Self::producer(brokers)?),
            brokers: brokers.to_owned(),
            prefix: prefix.to_owned(),
        })
    }

    fn producer(brokers: &str) -> Result<FutureProducer, KafkaError> {
        base_config(brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "1")
            .set(
                "message.timeout.ms",
                DELIVERY_TIMEOUT.as_millis().to_string(),
            )
            .create()
            .map_err(err)
    }

    /// Sends a batch in order and waits until the broker acknowledged every record.
    pub async fn publish(&self, rows: &[OutboxRow]) -> Result<(), KafkaError> {
        let producer = self
            .producer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let sent = self.send_all(&producer, rows).await;
        if sent.is_err() {
            if let Some((code, reason)) = producer.client().fatal_error() {
                tracing::warn!(%code, reason, "the Kafka producer hit a fatal error");
            }
            let fresh = Self::producer(&self.brokers)?;
            let old = std::mem::replace(
                &mut *self
                    .producer
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
                fresh,
            );
            // Dropping a producer purges and flushes for up to 500 ms: not on a tokio worker.
            drop(producer);
            tokio::task::spawn_blocking(move || drop(old));
        }
        sent
    }

    async fn send_all(
        &self,
        producer: &FutureProducer,
        rows: &[OutboxRow],
    ) -> Result<(), KafkaError> {
        let mut deliveries = Vec::with_capacity(rows.len());
        for row in rows {
            let topic = Topic::parse(&row.topic).map_or_else(
                || format!("{}{}", self.prefix, row.topic),
                |t| topic_name(&self.prefix, t),
            );
            let record = FutureRecord::to(&topic)
                .key(&row.event_key)
                .payload(&row.payload);
            match producer.send_result(record) {
                Ok(delivery) => deliveries.push(delivery),
                Err((e, _)) => return Err(err(e)),
            }
        }
        for delivery in deliveries {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(err(e)),
                Err(_) => return Err(KafkaError("the producer went away".into())),
            }
        }
        Ok(())
    }
}

/// Reads events of every topic as one member of a consumer group.
pub struct KafkaSubscriber {
    consumer: StreamConsumer,
}

impl std::fmt::Debug for KafkaSubscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSubscriber").finish_non_exhaustive()
    }
}

/// A batch read from Kafka, to be committed once its effect is stored.
#[derive(Debug, Default)]
pub struct ReceivedBatch {
    /// The events, in the order read (per partition, the order written).
    pub events: Vec<Event>,
    /// Where each event came from: (topic, key), parallel to `events`.
    pub origins: Vec<(String, Option<String>)>,
    /// Records that were not events (skipped, logged).
    pub skipped: usize,
    /// The next offset to read per (topic, partition).
    next: HashMap<(String, i32), i64>,
}

impl KafkaSubscriber {
    /// Joins `group` on every topic under `prefix`. Manual commits; a new group starts at the
    /// beginning of each topic.
    pub fn connect(brokers: &str, prefix: &str, group: &str) -> Result<Self, KafkaError> {
        Self::connect_as(brokers, prefix, group, None)
    }

    /// Like [`Self::connect`], as a static member `instance` of the group: a restarted node
    /// takes its partitions back at once instead of waiting for the dead member to time out.
    pub fn connect_as(
        brokers: &str,
        prefix: &str,
        group: &str,
        instance: Option<&str>,
    ) -> Result<Self, KafkaError> {
        let mut config = base_config(brokers);
        if let Some(instance) = instance {
            config.set("group.instance.id", instance);
        }
        let consumer: StreamConsumer = config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "10")
            // A topic created after the subscription (by the first relay) is seen within 1 s.
            .set("topic.metadata.refresh.interval.ms", "1000")
            .set("session.timeout.ms", "10000")
            .create()
            .map_err(err)?;
        let names: Vec<String> = Topic::ALL.iter().map(|t| topic_name(prefix, *t)).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        consumer.subscribe(&refs).map_err(err)?;
        Ok(Self { consumer })
    }

    /// Waits for at least one record, then takes what else arrives within a few ms, up to
    /// `max` records.
    pub async fn next_batch(&self, max: usize) -> Result<ReceivedBatch, KafkaError> {
        let mut batch = ReceivedBatch::default();
        let first = self.consumer.recv().await.map_err(err)?;
        self.take(&first, &mut batch);
        drop(first);
        while batch.events.len() + batch.skipped < max {
            match tokio::time::timeout(BATCH_WAIT, self.consumer.recv()).await {
                Ok(Ok(message)) => self.take(&message, &mut batch),
                // The records taken so far are past the consumer's position already: dropping
                // them here would skip them until the next restart. Hand them over; the error
                // comes back on the next call if it lasts.
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "a Kafka read failed after part of a batch");
                    break;
                }
                Err(_) => break,
            }
        }
        Ok(batch)
    }

    fn take(&self, message: &rdkafka::message::BorrowedMessage<'_>, batch: &mut ReceivedBatch) {
        let decoded = message
            .payload()
            .and_then(|p| std::str::from_utf8(p).ok())
            .map(Event::from_json);
        match decoded {
            Some(Ok(event)) => {
                batch.events.push(event);
                let key = message
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned());
                batch.origins.push((message.topic().to_owned(), key));
            }
            _ => {
                tracing::warn!(
                    topic = message.topic(),
                    partition = message.partition(),
                    offset = message.offset(),
                    "skipping a record that is not a Surge event"
                );
                batch.skipped += 1;
            }
        }
        batch.next.insert(
            (message.topic().to_owned(), message.partition()),
            message.offset() + 1,
        );
    }

    /// Commits the batch's offsets (after its effect is stored). Asynchronous: librdkafka
    /// sends it in the background, so a tokio worker is never blocked on an unreachable broker
    /// (a synchronous commit held one for minutes in the outage test). A commit that is lost
    /// only means the batch is read again, and its events are recognised by id.
    pub fn commit(&self, batch: &ReceivedBatch) -> Result<(), KafkaError> {
        let mut list = TopicPartitionList::new();
        for ((topic, partition), next) in &batch.next {
            list.add_partition_offset(topic, *partition, Offset::Offset(*next))
                .map_err(err)?;
        }
        if list.count() == 0 {
            return Ok(());
        }
        self.consumer.commit(&list, CommitMode::Async).map_err(err)
    }
}
