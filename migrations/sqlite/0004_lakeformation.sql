-- The ledger of Lake Formation permissions Tessera granted, so that a sync
-- revokes its own grants once no dataset asks for them (dataset deleted,
-- role, table or permissions changed) and never anyone else's; and leases,
-- so that only one replica runs a background job at a time.
CREATE TABLE lakeformation_grants (
    principal_arn TEXT NOT NULL,          -- the dataset role's ARN
    resource      TEXT NOT NULL,          -- JSON, as the sync writes it
    permission    TEXT NOT NULL,          -- SELECT, DESCRIBE, INSERT, DELETE
    dataset_id    TEXT,                   -- granted for it (no FK: outlives it)
    granted_at    BIGINT NOT NULL,
    PRIMARY KEY (principal_arn, resource, permission)
);

CREATE TABLE leases (
    name       TEXT PRIMARY KEY,          -- the job, e.g. lakeformation_sync
    holder     TEXT NOT NULL,             -- the replica holding it
    expires_at BIGINT NOT NULL            -- Unix seconds; free after it
);
