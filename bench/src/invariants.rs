//! The properties a sale must keep, checked on counts read back through the API after a run.
//! Each check is a pure function of those counts, so each one is tested on broken counts too.

use serde::Serialize;

/// One property and whether the run kept it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InvariantCheck {
    pub name: &'static str,
    pub ok: bool,
    /// The figures it was decided on, for a person.
    pub detail: String,
}

impl InvariantCheck {
    fn new(name: &'static str, ok: bool, detail: String) -> Self {
        Self { name, ok, detail }
    }
}

/// Whether every check held (true for a scenario without checks).
pub fn all_ok(checks: &[InvariantCheck]) -> bool {
    checks.iter().all(|c| c.ok)
}

/// Attempts whose outcome the run's answer left open, and how many stayed open after
/// following them up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FollowUp {
    pub open: u64,
    pub unsettled: u64,
}

/// One item's units after a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StockCount {
    pub item_id: i64,
    /// Units it was created with.
    pub initial: u64,
    /// Units in orders the node acknowledged (201, or 202 that ended `SUCCEEDED`).
    pub sold: u64,
    /// `stock` of `GET /api/v1/items/{id}` after every order settled.
    pub available: i64,
}

/// Checks for orders: no item oversold, every unit either sold or still available, and every
/// order's outcome known (none left `PROCESSING` or unanswered).
pub fn stock_checks(items: &[StockCount], follow_up: FollowUp) -> Vec<InvariantCheck> {
    let sold: u64 = items.iter().map(|i| i.sold).sum();
    let initial: u64 = items.iter().map(|i| i.initial).sum();
    let available: i64 = items.iter().map(|i| i.available).sum();
    let oversold: Vec<String> = items
        .iter()
        .filter(|i| i.sold > i.initial)
        .map(|i| format!("item {} sold {} of {}", i.item_id, i.sold, i.initial))
        .collect();
    let unbalanced: Vec<String> = items
        .iter()
        .filter(|i| i128::from(i.sold) + i128::from(i.available) != i128::from(i.initial))
        .map(|i| {
            format!(
                "item {}: sold {} + available {} != initial {}",
                i.item_id, i.sold, i.available, i.initial
            )
        })
        .collect();
    vec![
        InvariantCheck::new(
            "units_sold_within_stock",
            oversold.is_empty(),
            if oversold.is_empty() {
                format!(
                    "sold {sold} of {initial} units over {} item(s)",
                    items.len()
                )
            } else {
                oversold.join("; ")
            },
        ),
        InvariantCheck::new(
            "sold_plus_available_equals_initial",
            unbalanced.is_empty(),
            if unbalanced.is_empty() {
                format!("sold {sold} + available {available} = initial {initial}")
            } else {
                unbalanced.join("; ")
            },
        ),
        InvariantCheck::new(
            "every_order_settled",
            follow_up.unsettled == 0,
            format!(
                "{} order(s) followed up after the run, {} without a final outcome",
                follow_up.open, follow_up.unsettled
            ),
        ),
    ]
}

/// A coupon after a rush.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CouponCount {
    pub coupon_id: i64,
    /// The quantity it was created with.
    pub quantity: u64,
    /// Per member: attempts the node answered `ISSUED` (201, or queued then issued).
    pub issued_answers: Vec<u64>,
    /// Per member: how often the coupon is in `GET /api/v1/users/me/coupons`.
    pub held: Vec<u64>,
    /// Whether any attempt was answered `SOLD_OUT`.
    pub sold_out_seen: bool,
    /// `remaining` of `GET /api/v1/coupons/{id}`.
    pub remaining: i64,
    pub follow_up: FollowUp,
}

/// Checks for a coupon rush: nobody got it twice, no more were issued than exist, a sold-out
/// coupon was given out in full, and the coupon's `remaining` agrees with what was issued.
pub fn coupon_checks(c: &CouponCount) -> Vec<InvariantCheck> {
    let issued: u64 = c.issued_answers.iter().sum();
    let held: u64 = c.held.iter().sum();
    let twice_answered = c.issued_answers.iter().filter(|n| **n > 1).count();
    let twice_held = c.held.iter().filter(|n| **n > 1).count();
    let expected_remaining = i128::from(c.quantity) - i128::from(issued);
    vec![
        InvariantCheck::new(
            "no_member_issued_twice",
            twice_answered == 0 && twice_held == 0,
            format!(
                "{twice_answered} member(s) answered ISSUED twice, {twice_held} holding it twice"
            ),
        ),
        InvariantCheck::new(
            "issued_within_quantity",
            issued <= c.quantity && held <= c.quantity,
            format!(
                "coupon {}: {issued} issued, {held} held, quantity {}",
                c.coupon_id, c.quantity
            ),
        ),
        InvariantCheck::new(
            "issued_answers_match_holdings",
            issued == held,
            format!("{issued} ISSUED answers, {held} coupons in members' lists"),
        ),
        InvariantCheck::new(
            "sold_out_means_all_issued",
            !c.sold_out_seen || issued == c.quantity,
            if c.sold_out_seen {
                format!("SOLD_OUT seen with {issued} of {} issued", c.quantity)
            } else {
                "no SOLD_OUT answer".to_owned()
            },
        ),
        InvariantCheck::new(
            "remaining_matches_issued",
            i128::from(c.remaining) == expected_remaining,
            format!(
                "remaining {} (quantity {} - issued {issued} = {expected_remaining})",
                c.remaining, c.quantity
            ),
        ),
        InvariantCheck::new(
            "every_issue_settled",
            c.follow_up.unsettled == 0,
            format!(
                "{} attempt(s) followed up after the run, {} without a final outcome",
                c.follow_up.open, c.follow_up.unsettled
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(checks: &[InvariantCheck]) -> Vec<&'static str> {
        checks.iter().filter(|c| !c.ok).map(|c| c.name).collect()
    }

    fn sold_out_item() -> StockCount {
        StockCount {
            item_id: 1,
            initial: 100,
            sold: 100,
            available: 0,
        }
    }

    #[test]
    fn an_exact_sell_out_keeps_every_stock_invariant() {
        let checks = stock_checks(&[sold_out_item()], FollowUp::default());
        assert!(all_ok(&checks), "{checks:?}");
        let partial = StockCount {
            sold: 40,
            available: 60,
            ..sold_out_item()
        };
        assert!(all_ok(&stock_checks(
            &[partial, sold_out_item()],
            FollowUp::default()
        )));
    }

    #[test]
    fn overselling_fails() {
        let oversold = StockCount {
            sold: 101,
            available: -1,
            ..sold_out_item()
        };
        let checks = stock_checks(
            &[oversold],
            FollowUp {
                open: 3,
                unsettled: 0,
            },
        );
        assert_eq!(failed(&checks), ["units_sold_within_stock"]);
        assert!(!all_ok(&checks));
    }

    #[test]
    fn units_that_vanish_or_appear_fail_conservation() {
        let lost = StockCount {
            sold: 99,
            available: 0,
            ..sold_out_item()
        };
        assert_eq!(
            failed(&stock_checks(&[lost], FollowUp::default())),
            ["sold_plus_available_equals_initial"]
        );
        let doubled = StockCount {
            sold: 50,
            available: 51,
            ..sold_out_item()
        };
        assert_eq!(
            failed(&stock_checks(
                &[sold_out_item(), doubled],
                FollowUp::default()
            )),
            ["sold_plus_available_equals_initial"]
        );
    }

    #[test]
    fn an_order_left_unsettled_fails() {
        assert_eq!(
            failed(&stock_checks(
                &[sold_out_item()],
                FollowUp {
                    open: 2,
                    unsettled: 1
                }
            )),
            ["every_order_settled"]
        );
    }

    fn sold_out_coupon() -> CouponCount {
        CouponCount {
            coupon_id: 7,
            quantity: 3,
            issued_answers: vec![1, 1, 0, 1],
            held: vec![1, 1, 0, 1],
            sold_out_seen: true,
            remaining: 0,
            follow_up: FollowUp {
                open: 1,
                unsettled: 0,
            },
        }
    }

    #[test]
    fn a_clean_coupon_rush_keeps_every_coupon_invariant() {
        let checks = coupon_checks(&sold_out_coupon());
        assert!(all_ok(&checks), "{checks:?}");
        let not_sold_out = CouponCount {
            quantity: 10,
            remaining: 7,
            sold_out_seen: false,
            ..sold_out_coupon()
        };
        assert!(all_ok(&coupon_checks(&not_sold_out)));
    }

    #[test]
    fn a_member_issued_twice_fails() {
        let twice = CouponCount {
            issued_answers: vec![2, 1, 0, 0],
            held: vec![1, 1, 0, 1],
            ..sold_out_coupon()
        };
        assert_eq!(failed(&coupon_checks(&twice)), ["no_member_issued_twice"]);
        let held_twice = CouponCount {
            held: vec![2, 1, 0, 0],
            ..sold_out_coupon()
        };
        assert_eq!(
            failed(&coupon_checks(&held_twice)),
            ["no_member_issued_twice"]
        );
    }

    #[test]
    fn issuing_more_than_the_quantity_fails() {
        let over = CouponCount {
            issued_answers: vec![1, 1, 1, 1],
            held: vec![1, 1, 1, 1],
            remaining: -1,
            ..sold_out_coupon()
        };
        assert_eq!(
            failed(&coupon_checks(&over)),
            ["issued_within_quantity", "sold_out_means_all_issued"]
        );
    }

    #[test]
    fn sold_out_before_the_quantity_is_issued_fails() {
        let early = CouponCount {
            issued_answers: vec![1, 1, 0, 0],
            held: vec![1, 1, 0, 0],
            remaining: 1,
            ..sold_out_coupon()
        };
        assert_eq!(
            failed(&coupon_checks(&early)),
            ["sold_out_means_all_issued"]
        );
    }

    #[test]
    fn a_remaining_count_that_disagrees_fails() {
        let wrong = CouponCount {
            remaining: 1,
            ..sold_out_coupon()
        };
        assert_eq!(failed(&coupon_checks(&wrong)), ["remaining_matches_issued"]);
    }

    #[test]
    fn an_issue_left_unsettled_fails() {
        let unsettled = CouponCount {
            follow_up: FollowUp {
                open: 3,
                unsettled: 2,
            },
            ..sold_out_coupon()
        };
        assert_eq!(failed(&coupon_checks(&unsettled)), ["every_issue_settled"]);
    }
}
