-- Stock allotments, reservations, orders, the outbox and idempotency records.

-- Units of an item checked out to its stock actor. Units move only inside transactions:
--   items.available  <->  stock_allotments.units  ->  reservations (HELD -> CONFIRMED | RELEASED)
-- so available + allotted + held + confirmed = every unit the item ever had.
-- `epoch` grows each time an actor takes the item over; every write of an actor names its epoch,
-- so a stale owner's writes match no row and change nothing.
CREATE TABLE stock_allotments (
    item_id    BIGINT PRIMARY KEY REFERENCES items (id),
    owner      TEXT   NOT NULL,
    epoch      BIGINT NOT NULL,
    units      BIGINT NOT NULL CHECK (units >= 0),
    updated_at BIGINT NOT NULL
);

CREATE TABLE orders (
    id             BIGINT PRIMARY KEY,
    user_id        BIGINT NOT NULL REFERENCES users (id),
    status         TEXT   NOT NULL CHECK (status IN ('PROCESSING', 'SUCCEEDED', 'FAILED', 'CANCELLED')),
    coupon_id      BIGINT,
    total_price    BIGINT NOT NULL,
    discount       BIGINT NOT NULL,
    failure_reason TEXT,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL
);
CREATE INDEX orders_user ON orders (user_id, id);
CREATE INDEX orders_status ON orders (status);

CREATE TABLE order_lines (
    order_id   BIGINT NOT NULL REFERENCES orders (id),
    line_no    BIGINT NOT NULL,
    item_id    BIGINT NOT NULL,
    quantity   BIGINT NOT NULL CHECK (quantity > 0),
    unit_price BIGINT NOT NULL,
    status     TEXT   NOT NULL,
    PRIMARY KEY (order_id, line_no)
);

-- Units held for one order line. A HELD reservation past its deadline is released by the
-- sweeper, so a saga that died strands nothing.
CREATE TABLE reservations (
    order_id    BIGINT NOT NULL,
    item_id     BIGINT NOT NULL REFERENCES items (id),
    quantity    BIGINT NOT NULL CHECK (quantity > 0),
    status      TEXT   NOT NULL CHECK (status IN ('HELD', 'CONFIRMED', 'RELEASED')),
    epoch       BIGINT NOT NULL,
    deadline_at BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (order_id, item_id)
);
CREATE INDEX reservations_held ON reservations (status, deadline_at);
CREATE INDEX reservations_item ON reservations (item_id, status);

-- Events written in the same transaction as the change they describe, relayed later.
CREATE TABLE outbox (
    id           {{identity_type}} {{identity_key}},
    topic        TEXT   NOT NULL,
    event_key    TEXT   NOT NULL,
    payload      TEXT   NOT NULL,
    created_at   BIGINT NOT NULL,
    published_at BIGINT
);
CREATE INDEX outbox_unpublished ON outbox (published_at, id);

-- The first order made with a key, per member; a retry with the key replays it.
CREATE TABLE idempotency_keys (
    user_id      BIGINT NOT NULL,
    idem_key     TEXT   NOT NULL,
    request_hash TEXT   NOT NULL,
    order_id     BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (user_id, idem_key)
);

-- Blocks of ids handed to nodes, so an order id is known before anything is written.
CREATE TABLE id_blocks (
    name    TEXT   PRIMARY KEY,
    next_id BIGINT NOT NULL
);
INSERT INTO id_blocks (name, next_id) VALUES ('orders', 1);
