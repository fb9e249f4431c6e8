//! A member's page as a read model: one document per member, changed by each event about them
//! (never just deleted and rebuilt). [`MemberPage::apply`] is the whole projection, pure, so
//! the consumer that stores it and the tests beside it run the same rules.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Event, EventType};

/// How many of a member's newest orders the page shows.
pub const RECENT_ORDERS: usize = 5;

/// Totals shown on the page.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PageStats {
    /// Orders now `SUCCEEDED` (a cancellation takes one away).
    pub orders_succeeded: i64,
    /// Sum of their totals.
    pub total_spent: i64,
    /// Coupons issued and not used.
    pub coupons_unused: i64,
}

/// The stored document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberPage {
    /// `{userId, loginId, name, role}`, from `MemberSignedUp`.
    pub user: Option<Value>,
    /// Newest first, at most [`RECENT_ORDERS`], each in the order's contract shape.
    pub recent_orders: Vec<Value>,
    /// `{couponId, name, discountRate, itemId, status, issuedAt}`, unused first.
    pub coupons: Vec<Value>,
    /// Totals.
    pub stats: PageStats,
    /// The member's `MemberSignedUp` is in: with it, every change about the member since they
    /// exist has an event, so a page that has applied all of them is whole. A member from
    /// before events existed never gets one, and their page is composed from the sources. (The
    /// events of different topics may arrive in any order; every rule here is commutative
    /// across aggregates, and the events of one aggregate arrive in order.)
    pub complete: bool,
}

fn int(v: &Value, field: &str) -> i64 {
    v.get(field).and_then(Value::as_i64).unwrap_or(0)
}

impl MemberPage {
    /// Applies one event about this member. `coupon` is the catalogue entry of the coupon a
    /// `CouponIssued` names (`{name, discountRate, itemId}`), looked up by the consumer.
    pub fn apply(&mut self, event: &Event, coupon: Option<&Value>) {
        let p = &event.payload;
        match event.kind {
            EventType::MemberSignedUp => {
                self.user = Some(p.clone());
                self.complete = true;
            }
            EventType::OrderSucceeded => {
                self.stats.orders_succeeded += 1;
                self.stats.total_spent += int(p, "totalPrice");
                self.put_order(p);
            }
            EventType::OrderCancelled => {
                self.stats.orders_succeeded -= 1;
                self.stats.total_spent -= int(p, "totalPrice");
                self.put_order(p);
            }
            EventType::OrderFailed => self.put_order(p),
            EventType::CouponIssued => {
                let mut entry = serde_json::json!({
                    "couponId": int(p, "couponId"),
                    "status": "UNUSED",
                    "issuedAt": p.get("issuedAt").cloned().unwrap_or(Value::Null),
                });
                if let (Some(map), Some(Value::Object(details))) = (entry.as_object_mut(), coupon) {
                    for (k, v) in details {
                        map.insert(k.clone(), v.clone());
                    }
                }
                self.coupons
                    .retain(|c| int(c, "couponId") != int(p, "couponId"));
                self.coupons.push(entry);
            }
            EventType::CouponUsed => self.set_coupon_status(int(p, "couponId"), "USED"),
            EventType::CouponReturned => self.set_coupon_status(int(p, "couponId"), "UNUSED"),
            EventType::ItemCreated
            | EventType::ItemRestocked
            | EventType::ItemSoldOut
            | EventType::SessionRevoked => {}
        }
        self.sort_coupons();
    }

    /// Puts an order in the recent list (replacing its older state), keeping the newest.
    fn put_order(&mut self, order: &Value) {
        let id = int(order, "orderId");
        self.recent_orders.retain(|o| int(o, "orderId") != id);
        self.recent_orders.push(order.clone());
        self.recent_orders
            .sort_by_key(|o| std::cmp::Reverse(int(o, "orderId")));
        self.recent_orders.truncate(RECENT_ORDERS);
    }

    fn set_coupon_status(&mut self, coupon_id: i64, status: &str) {
        for c in &mut self.coupons {
            if int(c, "couponId") == coupon_id
                && let Some(map) = c.as_object_mut()
            {
                map.insert("status".into(), status.into());
            }
        }
    }

    /// Unused first, then by coupon id; recounts the unused.
    fn sort_coupons(&mut self) {
        self.coupons.sort_by_key(|c| {
            (
                c.get("status").and_then(Value::as_str) != Some("UNUSED"),
                int(c, "couponId"),
            )
        });
        self.stats.coupons_unused = self
            .coupons
            .iter()
            .filter(|c| c.get("status").and_then(Value::as_str) == Some("UNUSED"))
            .count()
            .try_into()
            .unwrap_or(i64::MAX);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn event(kind: EventType, id: i64, payload: Value) -> Event {
        Event::new(kind, id, Some(7), 0, payload)
    }

    fn order(id: i64, status: &str, total: i64) -> Value {
        json!({"orderId": id, "userId": 7, "status": status, "totalPrice": total, "lines": []})
    }

    fn signed_up() -> MemberPage {
        let mut page = MemberPage::default();
        page.apply(
            &event(
                EventType::MemberSignedUp,
                7,
                json!({"userId": 7, "loginId": "ann", "name": "Ann", "role": "USER"}),
            ),
            None,
        );
        page
    }

    #[test]
    fn orders_update_the_list_and_the_totals() {
        let mut page = signed_up();
        assert!(page.complete);
        for id in 1..=7 {
            page.apply(
                &event(EventType::OrderSucceeded, id, order(id, "SUCCEEDED", 100)),
                None,
            );
        }
        page.apply(
            &event(EventType::OrderCancelled, 6, order(6, "CANCELLED", 100)),
            None,
        );
        page.apply(
            &event(EventType::OrderCancelled, 1, order(1, "CANCELLED", 100)),
            None,
        );
        let ids: Vec<i64> = page
            .recent_orders
            .iter()
            .map(|o| int(o, "orderId"))
            .collect();
        assert_eq!(ids, vec![7, 6, 5, 4, 3]);
        assert_eq!(page.recent_orders[1]["status"], "CANCELLED");
        assert_eq!(page.stats.orders_succeeded, 5);
        assert_eq!(page.stats.total_spent, 500);
    }

    #[test]
    fn coupons_follow_issue_use_and_give_back() {
        let mut page = signed_up();
        let details = json!({"name": "Ten off", "discountRate": 10.0, "itemId": null});
        for id in [3, 9] {
            page.apply(
                &event(
                    EventType::CouponIssued,
                    id,
                    json!({"couponId": id, "issuedAt": "t"}),
                ),
                Some(&details),
            );
        }
        assert_eq!(page.stats.coupons_unused, 2);
        page.apply(
            &event(EventType::CouponUsed, 3, json!({"couponId": 3})),
            None,
        );
        assert_eq!(page.stats.coupons_unused, 1);
        assert_eq!(page.coupons[0]["couponId"], 9, "unused first");
        assert_eq!(page.coupons[1]["status"], "USED");
        assert_eq!(page.coupons[1]["name"], "Ten off");
        page.apply(
            &event(EventType::CouponReturned, 3, json!({"couponId": 3})),
            None,
        );
        assert_eq!(page.stats.coupons_unused, 2);
    }

    #[test]
    fn a_page_is_whole_once_the_sign_up_is_in_whatever_the_order_of_topics() {
        let mut page = MemberPage::default();
        page.apply(
            &event(EventType::OrderSucceeded, 1, order(1, "SUCCEEDED", 5)),
            None,
        );
        assert!(!page.complete, "no sign-up yet: not served");
        page.apply(
            &event(EventType::MemberSignedUp, 7, json!({"userId": 7})),
            None,
        );
        assert!(page.complete);
        assert_eq!(page.stats.orders_succeeded, 1);
        assert_eq!(page.recent_orders.len(), 1);
    }
}
