-- Cluster: the members of the cluster and who owns each stock shard, in the database every
-- node already trusts (Orleans' membership table, Akka's sharding lease).

-- Facts fixed at the cluster's first start (the number of shards).
CREATE TABLE cluster_meta (
    name  TEXT   PRIMARY KEY,
    value BIGINT NOT NULL
);

-- One row per node id. `incarnation` is a random id of the process that holds the row now:
-- a second process with the same node id cannot heartbeat it while the first one lives.
-- Times are the database's clock (ms), so nodes' clocks never need to agree.
CREATE TABLE cluster_members (
    node_id        TEXT   PRIMARY KEY,
    advertise_addr TEXT   NOT NULL,
    incarnation    TEXT   NOT NULL,
    state          TEXT   NOT NULL,
    started_at     BIGINT NOT NULL,
    heartbeat_at   BIGINT NOT NULL
);

-- One row per shard: its owner (NULL when free), an epoch that moves on every change of
-- hands, and until when the owner may serve it (database clock, ms).
CREATE TABLE shard_leases (
    shard       BIGINT PRIMARY KEY,
    owner       TEXT,
    epoch       BIGINT NOT NULL,
    lease_until BIGINT NOT NULL
);
