-- The database's own identity, made once by the first node that asks. State kept outside the
-- database (the Redis keys of the coupon store) names the database it belongs to, so a node
-- on another database never reads it as its own.
CREATE TABLE deployment (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
