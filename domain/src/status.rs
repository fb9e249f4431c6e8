//! The state machines of orders, order lines and issued coupons.
//!
//! Each status is an enum with the one spelling it has in the database and in JSON
//! (`as_str`, `parse`), and each transition the system makes is a method here, so the rules
//! "which status may follow which" live in one place and are unit-tested beside it.

use std::fmt;

use serde::Serialize;

use crate::ValidationError;

/// Defines a status enum stored as its upper-snake-case name.
macro_rules! stored_status {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            /// Every status, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The stored and JSON spelling.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text),+
                }
            }

            /// Reads a stored spelling; `None` for anything else.
            pub fn parse(raw: &str) -> Option<Self> {
                match raw {
                    $($text => Some(Self::$variant),)+
                    _ => None,
                }
            }
        }

        /// Reading a stored value (sqlx's `try_from` on a text column).
        impl TryFrom<String> for $name {
            type Error = ValidationError;

            fn try_from(raw: String) -> Result<Self, ValidationError> {
                Self::parse(&raw).ok_or_else(|| {
                    ValidationError::new("status", format!("unknown status {raw:?}"))
                })
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

stored_status! {
    /// An order's status: `PROCESSING` → `SUCCEEDED` | `FAILED`; `SUCCEEDED` → `CANCELLED`.
    OrderStatus {
        /// The saga is still deciding.
        Processing => "PROCESSING",
        /// Every line is sold to the buyer.
        Succeeded => "SUCCEEDED",
        /// Refused or compensated; nothing is held.
        Failed => "FAILED",
        /// Cancelled after success; its units went back to the item.
        Cancelled => "CANCELLED",
    }
}

impl OrderStatus {
    /// Whether no further transition can happen.
    pub const fn is_terminal(self) -> bool {
        matches!(self, Self::Failed | Self::Cancelled)
    }

    /// Whether its saga is done with it: the status a client waits for (an SSE stream ends
    /// here). Only `SUCCEEDED` → `CANCELLED` may still follow.
    pub const fn is_decided(self) -> bool {
        !matches!(self, Self::Processing)
    }

    /// Whether `next` may follow this status.
    pub const fn may_become(self, next: Self) -> bool {
        matches!(
            (self, next),
            (Self::Processing, Self::Succeeded | Self::Failed) | (Self::Succeeded, Self::Cancelled)
        )
    }
}

stored_status! {
    /// An order line's status.
    LineStatus {
        /// Not decided yet.
        Processing => "PROCESSING",
        /// Units held for the order (sold, once the order succeeded).
        Reserved => "RESERVED",
        /// Not enough units.
        OutOfStock => "OUT_OF_STOCK",
        /// No such item.
        ItemNotFound => "ITEM_NOT_FOUND",
        /// Units given back: a sibling line failed, the order was cancelled or expired.
        Released => "RELEASED",
    }
}

impl LineStatus {
    /// Whether the line's own item refused it (as opposed to being released because of
    /// another line or a later event). A refusal keeps its status when the order fails.
    pub const fn is_refusal(self) -> bool {
        matches!(self, Self::OutOfStock | Self::ItemNotFound)
    }
}

stored_status! {
    /// An issued coupon's status in its holder's hands.
    CouponStatus {
        /// Held and not spent.
        Unused => "UNUSED",
        /// Spent on an order that has not failed or been cancelled.
        Used => "USED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_reads_back_its_own_spelling() {
        for s in OrderStatus::ALL {
            assert_eq!(OrderStatus::parse(s.as_str()), Some(*s));
        }
        for s in LineStatus::ALL {
            assert_eq!(LineStatus::parse(s.as_str()), Some(*s));
        }
        for s in CouponStatus::ALL {
            assert_eq!(CouponStatus::parse(s.as_str()), Some(*s));
        }
        assert_eq!(OrderStatus::parse("processing"), None);
        assert_eq!(LineStatus::parse(""), None);
    }

    #[test]
    fn display_is_the_stored_spelling() {
        assert_eq!(LineStatus::OutOfStock.to_string(), "OUT_OF_STOCK");
        assert_eq!(OrderStatus::Succeeded.to_string(), "SUCCEEDED");
        assert_eq!(CouponStatus::Unused.to_string(), "UNUSED");
    }

    #[test]
    fn order_transitions_follow_the_contract() {
        use OrderStatus::*;
        let allowed: Vec<(OrderStatus, OrderStatus)> = OrderStatus::ALL
            .iter()
            .flat_map(|a| OrderStatus::ALL.iter().map(move |b| (*a, *b)))
            .filter(|(a, b)| a.may_become(*b))
            .collect();
        assert_eq!(
            allowed,
            vec![
                (Processing, Succeeded),
                (Processing, Failed),
                (Succeeded, Cancelled)
            ]
        );
        assert!(Failed.is_terminal() && Cancelled.is_terminal());
        assert!(!Succeeded.is_terminal() && !Processing.is_terminal());
        assert!(!Processing.is_decided() && Succeeded.is_decided());
    }

    #[test]
    fn only_the_items_own_answers_are_refusals() {
        let refusals: Vec<LineStatus> = LineStatus::ALL
            .iter()
            .copied()
            .filter(|s| s.is_refusal())
            .collect();
        assert_eq!(
            refusals,
            vec![LineStatus::OutOfStock, LineStatus::ItemNotFound]
        );
    }
}
