//! Catalogue item values: name, price and stock.

use serde::Serialize;

use crate::ValidationError;

/// Maximum length of an [`ItemName`] after trimming, in characters (not bytes).
pub const MAX_ITEM_NAME_CHARS: usize = 200;
/// Largest amount accepted by [`Money::parse`], in the smallest currency unit. Chosen so that
/// the largest order (every line at the largest quantity and price) stays below 2^53: a
/// JavaScript client reads every amount Surge sends exactly.
pub const MAX_MONEY: i64 = 100_000_000_000;
/// The largest integer a JSON number holds exactly in an IEEE double (2^53 − 1).
pub const MAX_EXACT_JSON_INTEGER: i64 = (1 << 53) - 1;

const _: () = assert!(
    MAX_MONEY * crate::order::MAX_LINE_QUANTITY * crate::order::MAX_ORDER_LINES as i64
        <= MAX_EXACT_JSON_INTEGER,
    "the largest order total must stay exact in JSON"
);
/// Largest stock level (and largest single restock) accepted.
pub const MAX_STOCK: i64 = 1_000_000_000;

/// An item's display name: trimmed, 1 to 200 characters, no control characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ItemName(String);

impl ItemName {
    /// The JSON field name reported in errors.
    pub const FIELD: &'static str = "name";

    /// Validates an item name. Leading and trailing whitespace is removed
    /// first; the rest must be 1 to 200 characters (not bytes) with no control
    /// characters.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        crate::text::parse_trimmed_text(raw, Self::FIELD, MAX_ITEM_NAME_CHARS).map(Self)
    }

    /// Returns the name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A non-negative amount of money in the smallest currency unit (e.g. cents).
///
/// [`Money::parse`] accepts `0..=MAX_MONEY`. Values computed with
/// [`Money::checked_add`] / [`Money::checked_mul`] (such as order totals) are
/// never negative but may exceed [`MAX_MONEY`]; those only fail on `i64`
/// overflow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Money(i64);

impl Money {
    /// Zero money; the starting point for sums.
    pub const ZERO: Money = Money(0);

    /// Validates an untrusted amount: it must be between 0 and [`MAX_MONEY`]
    /// inclusive. `field` is the JSON (camelCase) name reported in the error,
    /// e.g. `"price"` or `"minPrice"`.
    pub fn parse(raw: i64, field: &'static str) -> Result<Self, ValidationError> {
        if (0..=MAX_MONEY).contains(&raw) {
            Ok(Self(raw))
        } else {
            Err(ValidationError::new(
                field,
                format!("must be between 0 and {MAX_MONEY}"),
            ))
        }
    }

    /// Returns the amount in the smallest currency unit.
    pub fn get(self) -> i64 {
        self.0
    }

    /// Adds two amounts. Returns `None` only on `i64` overflow; the result
    /// may exceed [`MAX_MONEY`].
    pub fn checked_add(self, other: Money) -> Option<Money> {
        self.0.checked_add(other.0).map(Money)
    }

    /// Multiplies by a quantity (e.g. unit price × line quantity).
    ///
    /// Returns `None` on `i64` overflow, and also when `qty` is negative
    /// (money is never negative). The result may exceed [`MAX_MONEY`].
    pub fn checked_mul(self, qty: i64) -> Option<Money> {
        if qty < 0 {
            return None;
        }
        self.0.checked_mul(qty).map(Money)
    }
}

/// The number of units of an item in stock: `0..=MAX_STOCK`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct StockLevel(i64);

impl StockLevel {
    /// The JSON field name reported in errors.
    pub const FIELD: &'static str = "stock";

    /// Validates a stock level: between 0 and [`MAX_STOCK`] inclusive.
    pub fn parse(raw: i64) -> Result<Self, ValidationError> {
        if (0..=MAX_STOCK).contains(&raw) {
            Ok(Self(raw))
        } else {
            Err(ValidationError::new(
                Self::FIELD,
                format!("must be between 0 and {MAX_STOCK}"),
            ))
        }
    }

    /// Returns the number of units.
    pub fn get(self) -> i64 {
        self.0
    }
}

/// How many units to add to an item's stock in one restock: `1..=MAX_STOCK`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct RestockQuantity(i64);

impl RestockQuantity {
    /// The JSON field name reported in errors.
    pub const FIELD: &'static str = "quantity";

    /// Validates a restock quantity: between 1 and [`MAX_STOCK`] inclusive.
    pub fn parse(raw: i64) -> Result<Self, ValidationError> {
        units_up_to_max_stock(raw, Self::FIELD).map(Self)
    }

    /// Returns the number of units to add.
    pub fn get(self) -> i64 {
        self.0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    // ---- ItemName ----

    #[test]
    fn item_name_trims_and_length_boundaries() {
        assert_eq!(ItemName::parse("  Widget  ").unwrap().as_str(), "Widget");
        assert!(ItemName::parse("x").is_ok());
        assert!(ItemName::parse("").is_err());
        assert!(ItemName::parse(" \t ").is_err());
        assert!(ItemName::parse(&"x".repeat(MAX_ITEM_NAME_CHARS)).is_ok());
        assert!(ItemName::parse(&"x".repeat(MAX_ITEM_NAME_CHARS + 1)).is_err());
        let err = ItemName::parse("").unwrap_err();
        assert_eq!(err.field, "name");
        assert_eq!(
            err.message,
            "must be 1 to 200 characters after trimming whitespace"
        );
    }

    #[test]
    fn item_name_counts_chars_not_bytes() {
        // 200 chars, 800 bytes.
        assert!(ItemName::parse(&"🎁".repeat(MAX_ITEM_NAME_CHARS)).is_ok());
        assert!(ItemName::parse(&"🎁".repeat(MAX_ITEM_NAME_CHARS + 1)).is_err());
    }

    #[test]
    fn item_name_rejects_control_chars() {
        for bad in ["Wid\nget", "Wid\u{0}get", "Wid\u{85}get"] {
            let err = ItemName::parse(bad).unwrap_err();
            assert_eq!(err.field, "name");
            assert_eq!(
                err.message,
                "must not contain control characters or invisible formatting characters"
            );
        }
    }

    // ---- Money ----

    #[test]
    fn money_boundaries() {
        assert_eq!(Money::parse(0, "price").unwrap().get(), 0);
        assert_eq!(Money::parse(MAX_MONEY, "price").unwrap().get(), MAX_MONEY);
        let err = Money::parse(-1, "minPrice").unwrap_err();
        assert_eq!(err.field, "minPrice");
        assert_eq!(err.message, "must be between 0 and 100000000000");
        assert_eq!(
            Money::parse(MAX_MONEY + 1, "price").unwrap_err().field,
            "price"
        );
        assert!(Money::parse(i64::MIN, "price").is_err());
        assert!(Money::parse(i64::MAX, "price").is_err());
    }

    #[test]
    fn money_arithmetic() {
        let p = Money::parse(250, "price").unwrap();
        assert_eq!(p.checked_mul(4).unwrap().get(), 1000);
        assert_eq!(p.checked_mul(0).unwrap(), Money::ZERO);
        assert_eq!(p.checked_mul(-1), None);
        assert_eq!(Money::ZERO.checked_add(p).unwrap(), p);
        // Results above MAX_MONEY are allowed; only i64 overflow fails.
        let max = Money::parse(MAX_MONEY, "price").unwrap();
        assert_eq!(max.checked_add(max).unwrap().get(), 2 * MAX_MONEY);
        assert_eq!(max.checked_mul(1000).unwrap().get(), 1000 * MAX_MONEY);
        assert_eq!(max.checked_mul(i64::MAX), None);
        let big = max.checked_mul(90_000_000).unwrap();
        assert_eq!(big.checked_add(big), None);
    }

    // ---- StockLevel ----

    #[test]
    fn stock_level_boundaries() {
        assert_eq!(StockLevel::parse(0).unwrap().get(), 0);
        assert_eq!(StockLevel::parse(MAX_STOCK).unwrap().get(), MAX_STOCK);
        let err = StockLevel::parse(-1).unwrap_err();
        assert_eq!(err.field, "stock");
        assert_eq!(err.message, "must be between 0 and 1000000000");
        assert!(StockLevel::parse(MAX_STOCK + 1).is_err());
    }

    // ---- RestockQuantity ----

    #[test]
    fn restock_quantity_boundaries() {
        assert_eq!(RestockQuantity::parse(1).unwrap().get(), 1);
        assert_eq!(RestockQuantity::parse(MAX_STOCK).unwrap().get(), MAX_STOCK);
        let err = RestockQuantity::parse(0).unwrap_err();
        assert_eq!(err.field, "quantity");
        assert_eq!(err.message, "must be between 1 and 1000000000");
        assert!(RestockQuantity::parse(-5).is_err());
        assert!(RestockQuantity::parse(MAX_STOCK + 1).is_err());
    }
}

/// A count of units from 1 to [`MAX_STOCK`], or the error naming `field`.
fn units_up_to_max_stock(raw: i64, field: &'static str) -> Result<i64, ValidationError> {
    if (1..=MAX_STOCK).contains(&raw) {
        Ok(raw)
    } else {
        Err(ValidationError::new(
            field,
            format!("must be between 1 and {MAX_STOCK}"),
        ))
    }
}

/// The most units of one item a member may hold in live orders (`maxPerMember`): `1..=`
/// [`MAX_STOCK`]. Counted over the member's `SUCCEEDED` orders; a cancellation gives the
/// units back to the count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct PurchaseLimit(i64);

impl PurchaseLimit {
    /// The JSON field name reported in errors.
    pub const FIELD: &'static str = "maxPerMember";

    /// Validates a limit: at least 1, at most [`MAX_STOCK`].
    pub fn parse(raw: i64) -> Result<Self, ValidationError> {
        units_up_to_max_stock(raw, Self::FIELD).map(Self)
    }

    /// The units.
    pub fn get(self) -> i64 {
        self.0
    }
}

#[cfg(test)]
mod purchase_limit_tests {
    use super::*;

    #[test]
    fn a_limit_is_at_least_one_unit_and_at_most_the_largest_stock() {
        assert_eq!(PurchaseLimit::parse(1).map(PurchaseLimit::get), Ok(1));
        assert_eq!(
            PurchaseLimit::parse(MAX_STOCK).map(PurchaseLimit::get),
            Ok(MAX_STOCK)
        );
        for bad in [0, -1, MAX_STOCK + 1, i64::MIN] {
            let err = PurchaseLimit::parse(bad).unwrap_err();
            assert_eq!(err.field, "maxPerMember");
        }
    }
}
