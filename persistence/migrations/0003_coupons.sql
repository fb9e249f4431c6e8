-- First-come-first-served coupons.

-- A coupon definition. `discount_tenths` is the rate in tenths of a percent (125 = 12.5%) so it
-- is exact on every database. `admit_per_second` set means a waiting room fronts the coupon.
CREATE TABLE coupons (
    id               {{identity_type}} {{identity_key}},
    name             TEXT   NOT NULL UNIQUE,
    description      TEXT   NOT NULL,
    item_id          BIGINT REFERENCES items (id),
    discount_tenths  BIGINT NOT NULL CHECK (discount_tenths BETWEEN 0 AND 1000),
    quantity         BIGINT NOT NULL CHECK (quantity >= 0),
    opens_at         BIGINT NOT NULL,
    admit_per_second BIGINT CHECK (admit_per_second > 0),
    created_at       BIGINT NOT NULL
);

-- One row per coupon handed out. The primary key is what makes an issue happen once per member
-- however often it is written (a redelivered stream entry, a retried batch).
-- `order_id` is the order that used it (status USED); a failed or cancelled order puts it back.
CREATE TABLE coupon_issues (
    coupon_id BIGINT NOT NULL REFERENCES coupons (id),
    user_id   BIGINT NOT NULL REFERENCES users (id),
    status    TEXT   NOT NULL CHECK (status IN ('UNUSED', 'USED')),
    order_id  BIGINT,
    idem_key  TEXT,
    issued_at BIGINT NOT NULL,
    PRIMARY KEY (coupon_id, user_id)
);
CREATE INDEX coupon_issues_user ON coupon_issues (user_id, issued_at);
CREATE INDEX coupon_issues_order ON coupon_issues (order_id);
CREATE INDEX coupon_issues_key ON coupon_issues (user_id, idem_key);
