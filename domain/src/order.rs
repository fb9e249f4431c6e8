//! Order values: line quantities, idempotency keys and order-size limits.

use serde::Serialize;

use crate::ValidationError;

/// Largest quantity allowed on a single order line.
pub const MAX_LINE_QUANTITY: i64 = 1000;
/// Largest number of lines allowed in one order.
pub const MAX_ORDER_LINES: usize = 50;
/// Largest length of an [`IdempotencyKey`], in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 255;

/// The quantity on one order line: `1..=MAX_LINE_QUANTITY`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Quantity(i64);

impl Quantity {
    /// The JSON field name reported in errors.
    pub const FIELD: &'static str = "quantity";

    /// Validates a line quantity: between 1 and [`MAX_LINE_QUANTITY`] inclusive.
    pub fn parse(raw: i64) -> Result<Self, ValidationError> {
        if (1..=MAX_LINE_QUANTITY).contains(&raw) {
            Ok(Self(raw))
        } else {
            Err(ValidationError::new(
                Self::FIELD,
                format!("must be between 1 and {MAX_LINE_QUANTITY}"),
            ))
        }
    }

    /// Returns the number of units.
    pub fn get(self) -> i64 {
        self.0
    }
}

/// A client-chosen key that makes order placement idempotent, taken from the
/// `Idempotency-Key` header: 1 to 255 visible ASCII characters (`0x21..=0x7E`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// The name reported in errors (the HTTP header name).
    pub const FIELD: &'static str = "Idempotency-Key";

    /// Validates an idempotency key: 1 to 255 bytes, each a visible ASCII
    /// character (`!` through `~`; no spaces, control or non-ASCII characters).
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let len = raw.len();
        if (1..=MAX_IDEMPOTENCY_KEY_BYTES).contains(&len)
            && raw.bytes().all(|b| (0x21..=0x7E).contains(&b))
        {
            Ok(Self(raw.to_owned()))
        } else {
            Err(ValidationError::new(
                Self::FIELD,
                format!(
                    "must be 1 to {MAX_IDEMPOTENCY_KEY_BYTES} visible ASCII characters \
                     (0x21 to 0x7E, no spaces)"
                ),
            ))
        }
    }

    /// Returns the key as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn quantity_boundaries() {
        assert_eq!(Quantity::parse(1).unwrap().get(), 1);
        assert_eq!(
            Quantity::parse(MAX_LINE_QUANTITY).unwrap().get(),
            MAX_LINE_QUANTITY
        );
        let err = Quantity::parse(0).unwrap_err();
        assert_eq!(err.field, "quantity");
        assert_eq!(err.message, "must be between 1 and 1000");
        assert!(Quantity::parse(-1).is_err());
        assert!(Quantity::parse(MAX_LINE_QUANTITY + 1).is_err());
    }

    #[test]
    fn idempotency_key_length_boundaries() {
        assert_eq!(IdempotencyKey::parse("a").unwrap().as_str(), "a");
        let err = IdempotencyKey::parse("").unwrap_err();
        assert_eq!(err.field, "Idempotency-Key");
        assert_eq!(
            err.message,
            "must be 1 to 255 visible ASCII characters (0x21 to 0x7E, no spaces)"
        );
        assert!(IdempotencyKey::parse(&"k".repeat(MAX_IDEMPOTENCY_KEY_BYTES)).is_ok());
        assert!(IdempotencyKey::parse(&"k".repeat(MAX_IDEMPOTENCY_KEY_BYTES + 1)).is_err());
    }

    #[test]
    fn idempotency_key_charset() {
        // The full visible range is accepted.
        let all: String = (0x21u8..=0x7E).map(char::from).collect();
        assert_eq!(IdempotencyKey::parse(&all).unwrap().as_str(), all);
        for bad in [
            "a b", " ab", "ab\t", "ab\n", "ab\u{7f}", "ab\u{0}", "clé", "キー",
        ] {
            assert!(IdempotencyKey::parse(bad).is_err(), "{bad:?}");
        }
    }
}
