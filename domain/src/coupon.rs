//! Coupon values: name, description, discount rate, quantity, waiting-room admission rate.

use serde::Serialize;

use crate::ValidationError;

/// Maximum length of a [`CouponName`] after trimming, in characters.
pub const MAX_COUPON_NAME_CHARS: usize = 100;
/// Maximum length of a coupon description, in characters.
pub const MAX_COUPON_DESCRIPTION_CHARS: usize = 1_000;
/// Most coupons one coupon definition may hand out.
pub const MAX_COUPON_QUANTITY: i64 = 100_000_000;
/// Fastest waiting-room admission rate, per second.
pub const MAX_ADMIT_PER_SECOND: i64 = 100_000;

/// A coupon's unique display name: trimmed, 1 to 100 characters, no control characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct CouponName(String);

impl CouponName {
    /// The JSON field name reported in errors.
    pub const FIELD: &'static str = "name";

    /// Validates a coupon name (trimmed first).
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        crate::text::parse_trimmed_text(raw, Self::FIELD, MAX_COUPON_NAME_CHARS).map(Self)
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A coupon's description: up to 1,000 characters, may be empty, no control characters
/// other than line breaks and tabs.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize)]
#[serde(transparent)]
pub struct CouponDescription(String);

impl CouponDescription {
    /// The JSON field name reported in errors.
    pub const FIELD: &'static str = "description";

    /// Validates a description (trimmed first).
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let trimmed = raw.trim();
        if trimmed.chars().count() > MAX_COUPON_DESCRIPTION_CHARS {
            return Err(ValidationError::new(
                Self::FIELD,
                format!("must be at most {MAX_COUPON_DESCRIPTION_CHARS} characters"),
            ));
        }
        if trimmed
            .chars()
            .any(|c| c.is_control() && !matches!(c, '\n' | '\t' | '\r'))
        {
            return Err(ValidationError::new(
                Self::FIELD,
                "must not contain control characters",
            ));
        }
        Ok(Self(trimmed.to_owned()))
    }

    /// The description.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A discount rate from 0 to 100 percent with at most one decimal, held in tenths of a
/// percent so that arithmetic on it is exact.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DiscountRate(u16);

impl DiscountRate {
    /// The JSON field name reported in errors.
    pub const FIELD: &'static str = "discountRate";

    /// Validates a rate given as a JSON number: 0–100, at most one decimal.
    pub fn parse(raw: f64) -> Result<Self, ValidationError> {
        let out_of_range = || ValidationError::new(Self::FIELD, "must be between 0 and 100");
        if !raw.is_finite() || !(0.0..=100.0).contains(&raw) {
            return Err(out_of_range());
        }
        let tenths = (raw * 10.0).round();
        // A value with a second decimal (10.25) does not survive the trip through tenths.
        if (tenths / 10.0 - raw).abs() > 1e-9 {
            return Err(ValidationError::new(
                Self::FIELD,
                "must have at most one decimal",
            ));
        }
        // `tenths` is within 0..=1000 here, so the cast is exact.
        Ok(Self(tenths as u16))
    }

    /// Wraps a rate read from the database, in tenths of a percent.
    pub fn from_tenths(tenths: u16) -> Self {
        Self(tenths.min(1000))
    }

    /// The rate in tenths of a percent (0..=1000).
    pub fn tenths(self) -> u16 {
        self.0
    }

    /// The rate as the JSON number clients sent (`12.5`).
    pub fn as_percent(self) -> f64 {
        f64::from(self.0) / 10.0
    }

    /// The discount on `amount`, rounded down to whole currency units.
    pub fn discount_on(self, amount: i64) -> i64 {
        let discount = i128::from(amount) * i128::from(self.0) / 1000;
        // discount <= amount, so it fits back into i64.
        i64::try_from(discount).unwrap_or(amount)
    }
}

/// How many coupons a definition hands out: 0..=[`MAX_COUPON_QUANTITY`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct CouponQuantity(i64);

impl CouponQuantity {
    /// The JSON field name reported in errors.
    pub const FIELD: &'static str = "quantity";

    /// Validates a quantity.
    pub fn parse(raw: i64) -> Result<Self, ValidationError> {
        if (0..=MAX_COUPON_QUANTITY).contains(&raw) {
            Ok(Self(raw))
        } else {
            Err(ValidationError::new(
                Self::FIELD,
                format!("must be between 0 and {MAX_COUPON_QUANTITY}"),
            ))
        }
    }

    /// The quantity.
    pub fn get(self) -> i64 {
        self.0
    }
}

/// How many queued members a waiting room admits per second: 1..=[`MAX_ADMIT_PER_SECOND`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct AdmitRate(i64);

impl AdmitRate {
    /// The JSON field name reported in errors.
    pub const FIELD: &'static str = "waitingRoom.admitPerSecond";

    /// Validates a rate.
    pub fn parse(raw: i64) -> Result<Self, ValidationError> {
        if (1..=MAX_ADMIT_PER_SECOND).contains(&raw) {
            Ok(Self(raw))
        } else {
            Err(ValidationError::new(
                Self::FIELD,
                format!("must be between 1 and {MAX_ADMIT_PER_SECOND}"),
            ))
        }
    }

    /// Members per second.
    pub fn get(self) -> i64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_with_one_decimal_in_range_are_accepted() {
        for (raw, tenths) in [
            (0.0, 0),
            (10.0, 100),
            (12.5, 125),
            (99.9, 999),
            (100.0, 1000),
        ] {
            assert_eq!(DiscountRate::parse(raw).unwrap().tenths(), tenths, "{raw}");
        }
        assert_eq!(DiscountRate::parse(0.1).unwrap().as_percent(), 0.1);
    }

    #[test]
    fn rates_out_of_range_or_too_precise_are_refused() {
        for raw in [-1.0, 100.5, 100.1, 10.25, 0.05, f64::NAN, f64::INFINITY] {
            let err = DiscountRate::parse(raw).unwrap_err();
            assert_eq!(err.field, DiscountRate::FIELD, "{raw}");
        }
    }

    #[test]
    fn discounts_round_down_and_never_overflow() {
        let rate = DiscountRate::parse(12.5).unwrap();
        assert_eq!(rate.discount_on(1000), 125);
        assert_eq!(rate.discount_on(999), 124); // 124.875 rounds down
        assert_eq!(
            DiscountRate::parse(100.0).unwrap().discount_on(i64::MAX),
            i64::MAX
        );
        assert_eq!(DiscountRate::parse(0.0).unwrap().discount_on(5_000), 0);
    }

    #[test]
    fn quantity_and_admit_rate_bounds() {
        assert!(CouponQuantity::parse(0).is_ok());
        assert!(CouponQuantity::parse(-1).is_err());
        assert!(CouponQuantity::parse(MAX_COUPON_QUANTITY + 1).is_err());
        assert!(AdmitRate::parse(0).is_err());
        assert!(AdmitRate::parse(1).is_ok());
    }

    #[test]
    fn names_and_descriptions() {
        assert!(CouponName::parse("  ").is_err());
        assert_eq!(
            CouponName::parse(" Spring 10% ").unwrap().as_str(),
            "Spring 10%"
        );
        assert!(CouponDescription::parse("").is_ok());
        assert!(CouponDescription::parse("line one\nline two").is_ok());
        assert!(CouponDescription::parse("bell\u{7}").is_err());
        assert!(CouponDescription::parse(&"x".repeat(1_001)).is_err());
    }
}
