-- Per-member purchase limits. `max_per_member` NULL: no limit. `purchase_counts` holds, for a
-- member and an item with a limit, the units of their live (SUCCEEDED) orders: an order adds
-- its units with a conditional upsert in its own write (so two orders of one member cannot
-- pass the limit together), a cancellation takes them off.
ALTER TABLE items ADD COLUMN max_per_member BIGINT;
CREATE TABLE purchase_counts (
    user_id BIGINT NOT NULL,
    item_id BIGINT NOT NULL,
    units BIGINT NOT NULL,
    PRIMARY KEY (user_id, item_id)
);
