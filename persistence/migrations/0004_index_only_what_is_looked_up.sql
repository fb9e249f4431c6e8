-- Index only the rows that are looked up. Orders are written in their final state, so an
-- index over every order's status, or over every sold reservation, costs an entry per order
-- and is read only for the few rows still PROCESSING (recovery, the stale sweep) or HELD (the
-- sweeper, comparison strategies). Partial indexes hold just those, so the order path pays no
-- entry for them and the sweeps read a range that does not grow with the tables.
DROP INDEX orders_status;
CREATE INDEX orders_processing ON orders (created_at) WHERE status = 'PROCESSING';
DROP INDEX reservations_held;
CREATE INDEX reservations_held ON reservations (deadline_at) WHERE status = 'HELD';
-- Nothing reads reservations by item.
DROP INDEX reservations_item;
