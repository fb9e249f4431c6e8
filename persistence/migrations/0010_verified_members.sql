-- A member an ADMIN has verified (by whatever the shop checks: a phone, a purchase history),
-- and coupons only verified members may be issued. NULL / 0: not verified / anyone.
ALTER TABLE users ADD COLUMN verified_at BIGINT;
ALTER TABLE coupons ADD COLUMN verified_only BIGINT NOT NULL DEFAULT 0;
