//! The events that other parts of the system care about: what changed, as it travels from the
//! transactional outbox to Kafka (or in-process) and on to the read models.
//!
//! Every event has the same envelope (`{eventId, type, aggregateId, userId?, occurredAt,
//! payload}`, the contract's "Events"), goes to the topic of its aggregate and is keyed by the
//! aggregate's id, so the events of one order (or coupon, item, member) stay in order.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::time_fmt::{parse_rfc3339, rfc3339};

/// A stream of events about one kind of aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    /// Order status changes, keyed by order id.
    Orders,
    /// Coupon issues and uses, keyed by coupon id.
    Coupons,
    /// Item catalogue and stock, keyed by item id.
    Stock,
    /// Members and their sessions, keyed by user id.
    Members,
}

impl Topic {
    /// Every topic.
    pub const ALL: [Self; 4] = [Self::Orders, Self::Coupons, Self::Stock, Self::Members];

    /// The topic's name after the configured prefix (`surge.` + this).
    pub const fn suffix(self) -> &'static str {
        match self {
            Self::Orders => "orders",
            Self::Coupons => "coupons",
            Self::Stock => "stock",
            Self::Members => "members",
        }
    }

    /// Reads a suffix back; `None` for anything else.
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.suffix() == raw)
    }
}

macro_rules! event_types {
    ($($variant:ident => $topic:ident),+ $(,)?) => {
        /// What happened.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum EventType {
            $(#[doc = stringify!($variant)] $variant),+
        }

        impl EventType {
            /// Every event type.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The name in the envelope's `type`.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => stringify!($variant)),+
                }
            }

            /// The topic its events go to.
            pub const fn topic(self) -> Topic {
                match self {
                    $(Self::$variant => Topic::$topic),+
                }
            }

            /// Reads a name back; `None` for anything else.
            pub fn parse(raw: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|t| t.as_str() == raw)
            }
        }
    };
}

event_types! {
    OrderSucceeded => Orders,
    OrderFailed => Orders,
    OrderCancelled => Orders,
    CouponIssued => Coupons,
    CouponUsed => Coupons,
    CouponReturned => Coupons,
    ItemCreated => Stock,
    ItemRestocked => Stock,
    ItemSoldOut => Stock,
    MemberSignedUp => Members,
    SessionRevoked => Members,
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One change, as the outbox stores it and the relay publishes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Unique per change (a UUID); consumers remember it to apply each change once.
    pub event_id: String,
    /// What happened.
    pub kind: EventType,
    /// The order, coupon, item or member it happened to (the message key).
    pub aggregate_id: i64,
    /// The member concerned, when there is one.
    pub user_id: Option<i64>,
    /// Unix ms.
    pub occurred_at: i64,
    /// The type's own fields (documented in the README's "Events").
    pub payload: Value,
}

/// The envelope's JSON shape.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Envelope {
    event_id: String,
    #[serde(rename = "type")]
    kind: String,
    aggregate_id: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user_id: Option<i64>,
    occurred_at: String,
    payload: Value,
}

/// An envelope that is not one of ours.
#[derive(Debug, thiserror::Error)]
#[error("not a Surge event: {0}")]
pub struct EventDecodeError(String);

impl Event {
    /// A new event with a fresh id.
    pub fn new(
        kind: EventType,
        aggregate_id: i64,
        user_id: Option<i64>,
        occurred_at: i64,
        payload: Value,
    ) -> Self {
        Self {
            // Time-ordered (UUIDv7): a consumer that indexes the ids it processed appends to
            // that index instead of writing a random page of it (ours did, until migration
            // 0012 moved the read model's claim onto the outbox row).
            event_id: uuid::Uuid::now_v7().to_string(),
            kind,
            aggregate_id,
            user_id,
            occurred_at,
            payload,
        }
    }

    /// The topic it goes to.
    pub fn topic(&self) -> Topic {
        self.kind.topic()
    }

    /// The message key: the aggregate's id.
    pub fn key(&self) -> String {
        self.aggregate_id.to_string()
    }

    /// The envelope as JSON, as stored in the outbox and published.
    pub fn to_json(&self) -> String {
        let envelope = Envelope {
            event_id: self.event_id.clone(),
            kind: self.kind.as_str().to_owned(),
            aggregate_id: self.aggregate_id,
            user_id: self.user_id,
            occurred_at: rfc3339(self.occurred_at),
            payload: self.payload.clone(),
        };
        serde_json::to_string(&envelope).unwrap_or_default()
    }

    /// Reads an envelope back.
    pub fn from_json(text: &str) -> Result<Self, EventDecodeError> {
        let e: Envelope =
            serde_json::from_str(text).map_err(|e| EventDecodeError(e.to_string()))?;
        let kind = EventType::parse(&e.kind)
            .ok_or_else(|| EventDecodeError(format!("unknown type {:?}", e.kind)))?;
        let occurred_at = parse_rfc3339(&e.occurred_at)
            .ok_or_else(|| EventDecodeError(format!("bad occurredAt {:?}", e.occurred_at)))?;
        Ok(Self {
            event_id: e.event_id,
            kind,
            aggregate_id: e.aggregate_id,
            user_id: e.user_id,
            occurred_at,
            payload: e.payload,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_has_a_topic_and_reads_back() {
        for &kind in EventType::ALL {
            assert_eq!(EventType::parse(kind.as_str()), Some(kind));
            assert_eq!(Topic::parse(kind.topic().suffix()), Some(kind.topic()));
        }
        assert_eq!(EventType::OrderCancelled.topic(), Topic::Orders);
        assert_eq!(EventType::CouponUsed.topic(), Topic::Coupons);
        assert_eq!(EventType::ItemRestocked.topic(), Topic::Stock);
        assert_eq!(EventType::SessionRevoked.topic(), Topic::Members);
        assert_eq!(EventType::parse("OrderShipped"), None);
    }

    #[test]
    fn the_envelope_round_trips_in_the_contract_shape() {
        let event = Event::new(
            EventType::OrderSucceeded,
            42,
            Some(7),
            1_795_478_678_000,
            serde_json::json!({"orderId": 42}),
        );
        let json = event.to_json();
        let value: Value = serde_json::from_str(&json).unwrap_or_default();
        assert_eq!(value["type"], "OrderSucceeded");
        assert_eq!(value["aggregateId"], 42);
        assert_eq!(value["userId"], 7);
        assert_eq!(value["occurredAt"], "2026-11-24T00:04:38.000Z");
        assert_eq!(value["payload"]["orderId"], 42);
        assert_eq!(
            uuid::Uuid::parse_str(value["eventId"].as_str().unwrap_or_default())
                .map(|u| u.get_version_num())
                .ok(),
            Some(7),
            "event ids are time-ordered (UUIDv7)"
        );
        assert_eq!(Event::from_json(&json).ok(), Some(event));
    }

    #[test]
    fn two_events_never_share_an_id() {
        let a = Event::new(EventType::ItemCreated, 1, None, 0, Value::Null);
        let b = Event::new(EventType::ItemCreated, 1, None, 0, Value::Null);
        assert_ne!(a.event_id, b.event_id);
    }

    #[test]
    fn foreign_envelopes_are_refused() {
        assert!(Event::from_json("{}").is_err());
        assert!(Event::from_json("not json").is_err());
        let unknown = r#"{"eventId":"x","type":"Nope","aggregateId":1,"occurredAt":"2026-11-24T00:04:38.000Z","payload":null}"#;
        assert!(Event::from_json(unknown).is_err());
    }
}
