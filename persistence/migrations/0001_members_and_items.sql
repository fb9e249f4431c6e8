-- Members, login sessions, refresh tokens and items.
-- Times are milliseconds since the Unix epoch (BIGINT) so that SQLite, PostgreSQL and MySQL
-- store, compare and order them the same way.

CREATE TABLE users (
    id            {{identity_type:7}} {{identity_key}},
    login_id      TEXT    NOT NULL UNIQUE,
    password_hash TEXT    NOT NULL,
    name          TEXT    NOT NULL,
    role          TEXT    NOT NULL CHECK (role IN ('USER', 'ADMIN')),
    created_at    BIGINT  NOT NULL
);

-- One row per login. Access tokens carry its id (`sid`); revoking the row revokes every token of
-- that login.
CREATE TABLE auth_sessions (
    id         TEXT   PRIMARY KEY,
    user_id    BIGINT NOT NULL REFERENCES users (id),
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX auth_sessions_revoked ON auth_sessions (revoked_at);

-- Refresh tokens are stored only as SHA-256 hashes. `rotated_at` is set when the token is used;
-- a second use of a rotated token is a reuse and revokes the whole session.
CREATE TABLE refresh_tokens (
    token_hash TEXT   PRIMARY KEY,
    session_id TEXT   NOT NULL REFERENCES auth_sessions (id),
    issued_at  BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    rotated_at BIGINT
);
CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);

CREATE TABLE items (
    id         {{identity_type:7}} {{identity_key}},
    name       TEXT    NOT NULL,
    price      BIGINT  NOT NULL CHECK (price >= 0),
    available  BIGINT  NOT NULL CHECK (available >= 0),
    created_at BIGINT  NOT NULL,
    updated_at BIGINT  NOT NULL
);
CREATE INDEX items_price ON items (price);
