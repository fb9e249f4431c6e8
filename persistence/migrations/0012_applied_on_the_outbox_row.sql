-- The read model's exactly-once moves onto the outbox row: `applied_at` says when the my-page
-- projection applied the event (NULL: not yet). It replaces `processed_events` (a row and two
-- index entries per event, keyed by a random id) and the index of every outbox row by member,
-- which took a random page per order. "Has this member a change the read model has not
-- applied" now reads a partial index that holds only the unapplied rows: a few hundred at
-- most, the same pages every commit touches, however long the outbox gets.
ALTER TABLE outbox ADD COLUMN applied_at BIGINT;
-- What was recorded as processed, and rows that concern no member (no page to change), are
-- applied. Rows without an event id were never relayed and have no consumer.
UPDATE outbox SET applied_at = COALESCE(published_at, created_at)
 WHERE user_id IS NULL OR event_id IS NULL
    OR EXISTS (SELECT 1 FROM processed_events p
                WHERE p.consumer = 'my-page' AND p.event_id = outbox.event_id);
DROP INDEX outbox_member;
CREATE INDEX outbox_unapplied ON outbox (user_id) WHERE applied_at IS NULL;
DROP TABLE processed_events;
