-- Data access: datasets, who may use them (grants), which datasets a
-- client may reach for users (delegations), and the audit fields of data
-- decisions and issued cloud credentials.
CREATE TABLE datasets (
    id                TEXT PRIMARY KEY,       -- e.g. sales.orders
    tenant            TEXT NOT NULL,
    role_arn          TEXT NOT NULL,          -- IAM role assumed for it
    glue_database     TEXT NOT NULL,
    glue_table        TEXT,                   -- absent: lf_tag_expression applies
    lf_tag_expression TEXT,                   -- JSON: [{"key", "values"}]
    s3_prefix         TEXT NOT NULL,          -- s3://bucket/prefix/
    permissions       TEXT NOT NULL,          -- JSON: ["read", "write"]
    purposes          TEXT NOT NULL,          -- JSON list of allowed purposes
    max_duration_secs BIGINT NOT NULL,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL
);

CREATE TABLE dataset_grants (
    id           TEXT PRIMARY KEY,
    dataset_id   TEXT NOT NULL REFERENCES datasets (id),
    grantee_type TEXT NOT NULL,               -- user, group or tenant
    grantee      TEXT NOT NULL,
    permission   TEXT NOT NULL,               -- read or write
    purposes     TEXT NOT NULL,               -- JSON; empty: any the dataset allows
    expires_at   BIGINT,
    created_at   BIGINT NOT NULL
);
CREATE INDEX dataset_grants_dataset_id ON dataset_grants (dataset_id);

ALTER TABLE delegations ADD COLUMN datasets TEXT NOT NULL DEFAULT '[]';
ALTER TABLE delegations ADD COLUMN permissions TEXT NOT NULL DEFAULT '[]';

ALTER TABLE audit_log ADD COLUMN dataset TEXT;
ALTER TABLE audit_log ADD COLUMN purpose TEXT;
ALTER TABLE audit_log ADD COLUMN permission TEXT;
ALTER TABLE audit_log ADD COLUMN role_arn TEXT;
ALTER TABLE audit_log ADD COLUMN session_name TEXT;
ALTER TABLE audit_log ADD COLUMN source_identity TEXT;
ALTER TABLE audit_log ADD COLUMN access_key_id TEXT;
ALTER TABLE audit_log ADD COLUMN credential_expiry BIGINT;
