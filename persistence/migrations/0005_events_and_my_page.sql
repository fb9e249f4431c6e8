-- Events: the outbox rows carry their envelope's id and the member they concern, a relay
-- lease makes one relay at a time work the outbox, consumers remember what they applied,
-- and the my-page read model keeps one document per member.

-- The envelope (`payload`) holds the event id too; the column lets a reader ask "has this
-- member a change the read model has not applied" with an index, not a JSON scan.
ALTER TABLE outbox ADD COLUMN event_id TEXT;
ALTER TABLE outbox ADD COLUMN user_id BIGINT;
-- Rows written before events had an envelope were never relayed and have no consumer.
UPDATE outbox SET published_at = created_at WHERE published_at IS NULL;
CREATE INDEX outbox_member ON outbox (user_id, id);

-- One row per relay name: the node that may relay now, until when, and a counter that moves
-- on every take-over (a relay whose epoch moved on stops before its next batch).
CREATE TABLE outbox_relay_lease (
    name        TEXT   PRIMARY KEY,
    holder      TEXT   NOT NULL,
    epoch       BIGINT NOT NULL,
    lease_until BIGINT NOT NULL
);

-- Events each consumer has applied: a redelivery finds its id here and changes nothing.
CREATE TABLE processed_events (
    consumer     TEXT   NOT NULL,
    event_id     TEXT   NOT NULL,
    processed_at BIGINT NOT NULL,
    PRIMARY KEY (consumer, event_id)
);
CREATE INDEX processed_events_age ON processed_events (processed_at);

-- The my-page read model: the member's page as JSON, changed by each event.
CREATE TABLE my_page (
    user_id    BIGINT PRIMARY KEY,
    doc        TEXT   NOT NULL,
    updated_at BIGINT NOT NULL
);
