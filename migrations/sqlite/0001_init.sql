-- Client registry, replay and revocation state, and the audit log.
CREATE TABLE clients (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    tenant         TEXT NOT NULL,
    audiences      TEXT NOT NULL,          -- JSON array of strings
    scopes         TEXT NOT NULL,          -- JSON array of strings
    token_ttl_secs BIGINT,
    jwks           TEXT,                   -- JSON JWK Set for private_key_jwt
    disabled       BIGINT NOT NULL DEFAULT 0,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL
);

-- SHA-256 digests of generated secrets; several live at once during rotation.
CREATE TABLE client_secrets (
    client_id  TEXT NOT NULL REFERENCES clients (id),
    digest     BLOB NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    PRIMARY KEY (client_id, digest)
);

-- Bumped by every change to clients or secrets; replicas poll it and drop
-- their cached clients when it moves.
CREATE TABLE registry_version (id INTEGER PRIMARY KEY, version BIGINT NOT NULL);
INSERT INTO registry_version (id, version) VALUES (1, 0);

-- private_key_jwt `jti`s, kept until the assertion expires.
CREATE TABLE used_assertions (
    client_id  TEXT NOT NULL,
    jti        TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (client_id, jti)
);
CREATE INDEX used_assertions_expires_at ON used_assertions (expires_at);

CREATE TABLE revoked_tokens (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    jti        TEXT NOT NULL UNIQUE,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT NOT NULL
);
CREATE INDEX revoked_tokens_revoked_at ON revoked_tokens (revoked_at);

CREATE TABLE audit_log (
    seq            BIGINT PRIMARY KEY,
    ts             BIGINT NOT NULL,
    event          TEXT NOT NULL,
    decision       TEXT NOT NULL,
    reason         TEXT NOT NULL,
    client_id      TEXT,
    subject        TEXT,
    principal      TEXT,
    tenant         TEXT,
    audience       TEXT,
    scopes         TEXT,
    route          TEXT,
    policy_version TEXT,
    jti            TEXT,
    request_id     TEXT,
    peer           TEXT,
    prev_hash      TEXT NOT NULL,
    hash           TEXT NOT NULL
);

-- The chain's head (last seq and hash). Updating this row first serializes
-- appends across processes.
CREATE TABLE audit_lock (id INTEGER PRIMARY KEY, n BIGINT NOT NULL, hash TEXT NOT NULL);
INSERT INTO audit_lock (id, n, hash) VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
