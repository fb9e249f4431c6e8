-- Coupon eligibility: a member whose account is younger than this (ms) may not be issued the
-- coupon (accounts made in bulk for a drop). NULL: anyone.
ALTER TABLE coupons ADD COLUMN min_account_age_ms BIGINT;
