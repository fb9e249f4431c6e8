//! Pagination parameters.

use serde::Serialize;

use crate::ValidationError;

/// Page size used when the client does not specify `limit`.
pub const DEFAULT_PAGE_LIMIT: u32 = 20;
/// Largest page size a client may request.
pub const MAX_PAGE_LIMIT: u32 = 100;

/// How many results to return per page: `1..=MAX_PAGE_LIMIT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct PageLimit(u32);

impl PageLimit {
    /// The JSON / query-string field name reported in errors.
    pub const FIELD: &'static str = "limit";
    /// The limit used when none is given ([`DEFAULT_PAGE_LIMIT`]).
    pub const DEFAULT: PageLimit = PageLimit(DEFAULT_PAGE_LIMIT);

    /// Validates an optional page size: `None` yields [`DEFAULT_PAGE_LIMIT`];
    /// otherwise it must be between 1 and [`MAX_PAGE_LIMIT`] inclusive.
    pub fn parse(raw: Option<i64>) -> Result<Self, ValidationError> {
        let Some(raw) = raw else {
            return Ok(Self::DEFAULT);
        };
        match u32::try_from(raw) {
            Ok(n) if (1..=MAX_PAGE_LIMIT).contains(&n) => Ok(Self(n)),
            _ => Err(ValidationError::new(
                Self::FIELD,
                format!("must be between 1 and {MAX_PAGE_LIMIT}"),
            )),
        }
    }

    /// Returns the page size.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl Default for PageLimit {
    fn default() -> Self {
        Self::DEFAULT
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn none_is_default() {
        assert_eq!(PageLimit::parse(None).unwrap().get(), DEFAULT_PAGE_LIMIT);
        assert_eq!(PageLimit::default().get(), 20);
    }

    #[test]
    fn boundaries() {
        assert_eq!(PageLimit::parse(Some(1)).unwrap().get(), 1);
        assert_eq!(PageLimit::parse(Some(100)).unwrap().get(), MAX_PAGE_LIMIT);
        let err = PageLimit::parse(Some(0)).unwrap_err();
        assert_eq!(err.field, "limit");
        assert_eq!(err.message, "must be between 1 and 100");
        assert!(PageLimit::parse(Some(101)).is_err());
        assert!(PageLimit::parse(Some(-1)).is_err());
        assert!(PageLimit::parse(Some(i64::MAX)).is_err());
        assert!(PageLimit::parse(Some(i64::MIN)).is_err());
        // Would wrap to a small value if truncated to u32.
        assert!(PageLimit::parse(Some((1i64 << 32) + 5)).is_err());
    }
}
