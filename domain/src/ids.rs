//! Database identifiers: strictly positive 64-bit integers.

use std::fmt;

use serde::Serialize;

use crate::ValidationError;

macro_rules! define_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(i64);

        impl $name {
            /// Validates an untrusted id: it must be a positive integer (`> 0`).
            ///
            /// `field` is the JSON (camelCase) name reported in the error.
            pub fn parse(raw: i64, field: &'static str) -> Result<Self, ValidationError> {
                if raw > 0 {
                    Ok(Self(raw))
                } else {
                    Err(ValidationError::new(field, "must be a positive integer"))
                }
            }

            /// Wraps an id read from the database without validation.
            ///
            /// Only use this for values the database itself generated or
            /// stored after validation; untrusted input must go through
            /// [`Self::parse`].
            pub fn from_db(raw: i64) -> Self {
                Self(raw)
            }

            /// Returns the raw integer value.
            pub fn get(self) -> i64 {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    };
}

define_id!(
    /// Identifies a registered user (member).
    UserId
);
define_id!(
    /// Identifies a catalogue item.
    ItemId
);
define_id!(
    /// Identifies a placed order.
    OrderId
);
define_id!(
    /// Identifies a coupon.
    CouponId
);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn accepts_min_positive() {
        assert_eq!(UserId::parse(1, "userId").unwrap().get(), 1);
        assert_eq!(ItemId::parse(1, "itemId").unwrap().get(), 1);
        assert_eq!(OrderId::parse(1, "orderId").unwrap().get(), 1);
        assert_eq!(CouponId::parse(1, "couponId").unwrap().get(), 1);
    }

    #[test]
    fn accepts_max() {
        assert_eq!(ItemId::parse(i64::MAX, "itemId").unwrap().get(), i64::MAX);
    }

    #[test]
    fn rejects_zero_and_negative_with_caller_field() {
        let err = ItemId::parse(0, "itemId").unwrap_err();
        assert_eq!(err.field, "itemId");
        assert_eq!(err.message, "must be a positive integer");
        assert_eq!(OrderId::parse(-1, "id").unwrap_err().field, "id");
        assert!(UserId::parse(i64::MIN, "userId").is_err());
        assert!(CouponId::parse(0, "couponId").is_err());
    }

    #[test]
    fn from_db_is_trusted() {
        assert_eq!(OrderId::from_db(42).get(), 42);
    }

    #[test]
    fn display_and_ordering() {
        assert_eq!(UserId::from_db(7).to_string(), "7");
        assert!(ItemId::from_db(1) < ItemId::from_db(2));
    }
}
