-- Token exchange: which clients may act for users (delegations), which
-- workload identities stand for which client, and the audit fields for
-- delegated and upstream identities.
CREATE TABLE delegations (
    id         TEXT PRIMARY KEY,
    client_id  TEXT NOT NULL REFERENCES clients (id),
    audiences  TEXT NOT NULL,              -- JSON array of strings
    scopes     TEXT NOT NULL,              -- JSON array of strings
    actors     TEXT NOT NULL,              -- JSON array of client ids
    created_at BIGINT NOT NULL,
    expires_at BIGINT
);
CREATE INDEX delegations_client_id ON delegations (client_id);

-- One workload identity (issuer + subject) stands for exactly one client.
CREATE TABLE workload_identities (
    issuer     TEXT NOT NULL,
    subject    TEXT NOT NULL,
    client_id  TEXT NOT NULL REFERENCES clients (id),
    created_at BIGINT NOT NULL,
    PRIMARY KEY (issuer, subject)
);
CREATE INDEX workload_identities_client_id ON workload_identities (client_id);

-- Actor chain of a delegated token (current actor first, space-separated)
-- and the trusted issuer a presented identity came from.
ALTER TABLE audit_log ADD COLUMN actor TEXT;
ALTER TABLE audit_log ADD COLUMN upstream_issuer TEXT;
