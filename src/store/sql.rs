//! The SQL implementation of every store trait, written once and expanded
//! for Postgres and SQLite. The statements are the same text on both
//! (`$n` placeholders, `ON CONFLICT`, BIGINT columns); only connecting and
//! the migration folders differ.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Executor, Row};

use super::*;
use crate::audit::chain_hash;

/// SQLite file store (the embedded default).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: sqlx::SqlitePool,
}

/// Postgres store (production; shared by replicas).
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: sqlx::PgPool,
}

impl SqliteStore {
    pub async fn connect(config: &StoreConfig) -> anyhow::Result<Self> {
        let options = SqliteConnectOptions::from_str(&config.url)
            .with_context(|| "store.url is not a valid sqlite URL")?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a committed audit batch survives power loss.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        if let Some(parent) = options.get_filename().parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(config.max_connections.min(8))
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
            .with_context(|| format!("cannot open {}", config.url))?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .context("applying SQLite migrations")?;
        Ok(Self { pool })
    }
}

impl PgStore {
    pub async fn connect(config: &StoreConfig) -> anyhow::Result<Self> {
        let options = PgConnectOptions::from_str(&config.url)
            .context("store.url is not a valid postgres URL")?;
        let mut pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(Duration::from_secs(5));
        if let Some(schema) = config.schema.clone() {
            // Own schema per deployment (or per test run): created on demand,
            // first on every connection's search_path.
            let admin = sqlx::PgPool::connect_with(options.clone())
                .await
                .context("connecting to postgres")?;
            admin
                .execute(format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"").as_str())
                .await?;
            admin.close().await;
            pool = pool.after_connect(move |conn, _| {
                let set = format!("SET search_path TO \"{schema}\"");
                Box::pin(async move {
                    conn.execute(set.as_str()).await?;
                    Ok(())
                })
            });
        }
        let pool = pool
            .connect_with(options)
            .await
            .context("connecting to postgres")?;
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .context("applying Postgres migrations")?;
        Ok(Self { pool })
    }
}

/// Marks a registry change for every replica's client cache.
const BUMP_REGISTRY: &str = "UPDATE registry_version SET version = version + 1 WHERE id = 1";

fn json_list(text: &str) -> anyhow::Result<Vec<String>> {
    Ok(serde_json::from_str(text)?)
}

macro_rules! sql_store {
    ($store:ident, $row:ty) => {
        impl $store {
            fn client_from_row(row: &$row) -> anyhow::Result<Client> {
                let jwks: Option<String> = row.try_get("jwks")?;
                Ok(Client {
                    client_id: row.try_get("id")?,
                    name: row.try_get("name")?,
                    tenant: row.try_get("tenant")?,
                    audiences: json_list(row.try_get("audiences")?)?,
                    scopes: json_list(row.try_get("scopes")?)?,
                    token_ttl: row.try_get("token_ttl_secs")?,
                    jwks: jwks.map(|j| serde_json::from_str(&j)).transpose()?,
                    disabled: row.try_get::<i64, _>("disabled")? != 0,
                    created_at: row.try_get("created_at")?,
                    updated_at: row.try_get("updated_at")?,
                })
            }

            /// Deletes the row `sql` names by `key` and bumps the registry
            /// version, in one transaction; false when there was no row.
            async fn delete_bumping(&self, sql: &'static str, key: &str) -> anyhow::Result<bool> {
                let mut tx = self.pool.begin().await?;
                let done = sqlx::query(sql).bind(key).execute(&mut *tx).await?;
                sqlx::query(BUMP_REGISTRY).execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(done.rows_affected() == 1)
            }

            fn delegation_from_row(row: &$row) -> anyhow::Result<Delegation> {
                Ok(Delegation {
                    id: row.try_get("id")?,
                    client_id: row.try_get("client_id")?,
                    audiences: json_list(row.try_get("audiences")?)?,
                    scopes: json_list(row.try_get("scopes")?)?,
                    actors: json_list(row.try_get("actors")?)?,
                    datasets: json_list(row.try_get("datasets")?)?,
                    permissions: serde_json::from_str(row.try_get("permissions")?)?,
                    created_at: row.try_get("created_at")?,
                    expires_at: row.try_get("expires_at")?,
                })
            }

            fn dataset_from_row(row: &$row) -> anyhow::Result<Dataset> {
                let tags: Option<String> = row.try_get("lf_tag_expression")?;
                Ok(Dataset {
                    id: row.try_get("id")?,
                    tenant: row.try_get("tenant")?,
                    role_arn: row.try_get("role_arn")?,
                    glue_database: row.try_get("glue_database")?,
                    glue_table: row.try_get("glue_table")?,
                    lf_tag_expression: tags.map(|t| serde_json::from_str(&t)).transpose()?,
                    s3_prefix: row.try_get("s3_prefix")?,
                    permissions: serde_json::from_str(row.try_get("permissions")?)?,
                    purposes: json_list(row.try_get("purposes")?)?,
                    max_duration_secs: row.try_get("max_duration_secs")?,
                    created_at: row.try_get("created_at")?,
                    updated_at: row.try_get("updated_at")?,
                })
            }

            fn grant_from_row(row: &$row) -> anyhow::Result<DatasetGrant> {
                let grantee_type: String = row.try_get("grantee_type")?;
                let permission: String = row.try_get("permission")?;
                Ok(DatasetGrant {
                    id: row.try_get("id")?,
                    dataset_id: row.try_get("dataset_id")?,
                    grantee_type: Grantee::parse(&grantee_type)
                        .ok_or_else(|| anyhow::anyhow!("unknown grantee type {grantee_type:?}"))?,
                    grantee: row.try_get("grantee")?,
                    permission: Permission::parse(&permission)
                        .ok_or_else(|| anyhow::anyhow!("unknown permission {permission:?}"))?,
                    purposes: json_list(row.try_get("purposes")?)?,
                    expires_at: row.try_get("expires_at")?,
                    created_at: row.try_get("created_at")?,
                })
            }

            fn binding_from_row(row: &$row) -> anyhow::Result<WorkloadBinding> {
                Ok(WorkloadBinding {
                    issuer: row.try_get("issuer")?,
                    subject: row.try_get("subject")?,
                    client_id: row.try_get("client_id")?,
                    created_at: row.try_get("created_at")?,
                })
            }

            fn audit_from_row(row: &$row) -> anyhow::Result<StoredAudit> {
                Ok(StoredAudit {
                    seq: row.try_get("seq")?,
                    record: AuditRecord {
                        ts: row.try_get("ts")?,
                        event: row.try_get("event")?,
                        decision: row.try_get("decision")?,
                        reason: row.try_get("reason")?,
                        client_id: row.try_get("client_id")?,
                        subject: row.try_get("subject")?,
                        principal: row.try_get("principal")?,
                        tenant: row.try_get("tenant")?,
                        audience: row.try_get("audience")?,
                        scopes: row.try_get("scopes")?,
                        route: row.try_get("route")?,
                        policy_version: row.try_get("policy_version")?,
                        jti: row.try_get("jti")?,
                        request_id: row.try_get("request_id")?,
                        peer: row.try_get("peer")?,
                        actor: row.try_get("actor")?,
                        upstream_issuer: row.try_get("upstream_issuer")?,
                        dataset: row.try_get("dataset")?,
                        purpose: row.try_get("purpose")?,
                        permission: row.try_get("permission")?,
                        role_arn: row.try_get("role_arn")?,
                        session_name: row.try_get("session_name")?,
                        source_identity: row.try_get("source_identity")?,
                        access_key_id: row.try_get("access_key_id")?,
                        credential_expiry: row.try_get("credential_expiry")?,
                    },
                    prev_hash: row.try_get("prev_hash")?,
                    hash: row.try_get("hash")?,
                })
            }
        }

        #[async_trait]
        impl ClientStore for $store {
            async fn create_client(&self, c: &Client, secret: Option<&SecretDigest>) -> anyhow::Result<()> {
                let mut tx = self.pool.begin().await?;
                sqlx::query(
                    "INSERT INTO clients (id, name, tenant, audiences, scopes, token_ttl_secs, jwks, disabled, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                )
                .bind(&c.client_id)
                .bind(&c.name)
                .bind(&c.tenant)
                .bind(serde_json::to_string(&c.audiences)?)
                .bind(serde_json::to_string(&c.scopes)?)
                .bind(c.token_ttl)
                .bind(c.jwks.as_ref().map(serde_json::to_string).transpose()?)
                .bind(c.disabled as i64)
                .bind(c.created_at)
                .bind(c.updated_at)
                .execute(&mut *tx)
                .await?;
                if let Some(s) = secret {
                    sqlx::query("INSERT INTO client_secrets (client_id, digest, created_at, expires_at) VALUES ($1, $2, $3, $4)")
                        .bind(&c.client_id)
                        .bind(&s.digest)
                        .bind(s.created_at)
                        .bind(s.expires_at)
                        .execute(&mut *tx)
                        .await?;
                }
                sqlx::query(BUMP_REGISTRY).execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn registry_version(&self) -> anyhow::Result<i64> {
                let row = sqlx::query("SELECT version FROM registry_version WHERE id = 1").fetch_one(&self.pool).await?;
                Ok(row.try_get("version")?)
            }

            async fn get_client(&self, client_id: &str) -> anyhow::Result<Option<Client>> {
                let row = sqlx::query("SELECT * FROM clients WHERE id = $1").bind(client_id).fetch_optional(&self.pool).await?;
                row.as_ref().map(Self::client_from_row).transpose()
            }

            async fn list_clients(&self) -> anyhow::Result<Vec<Client>> {
                let rows = sqlx::query("SELECT * FROM clients ORDER BY created_at, id").fetch_all(&self.pool).await?;
                rows.iter().map(Self::client_from_row).collect()
            }

            async fn set_disabled(&self, client_id: &str, disabled: bool, now: i64) -> anyhow::Result<bool> {
                let mut tx = self.pool.begin().await?;
                let done = sqlx::query("UPDATE clients SET disabled = $1, updated_at = $2 WHERE id = $3")
                    .bind(disabled as i64)
                    .bind(now)
                    .bind(client_id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(BUMP_REGISTRY).execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(done.rows_affected() == 1)
            }

            async fn live_secrets(&self, client_id: &str, now: i64) -> anyhow::Result<Vec<SecretDigest>> {
                let rows = sqlx::query(
                    "SELECT digest, created_at, expires_at FROM client_secrets \
                     WHERE client_id = $1 AND (expires_at IS NULL OR expires_at > $2)",
                )
                .bind(client_id)
                .bind(now)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| {
                        Ok(SecretDigest {
                            digest: r.try_get("digest")?,
                            created_at: r.try_get("created_at")?,
                            expires_at: r.try_get("expires_at")?,
                        })
                    })
                    .collect()
            }

            async fn rotate_secret(&self, client_id: &str, new: &SecretDigest, old_expires_at: i64) -> anyhow::Result<()> {
                let mut tx = self.pool.begin().await?;
                sqlx::query(
                    "UPDATE client_secrets SET expires_at = $1 \
                     WHERE client_id = $2 AND (expires_at IS NULL OR expires_at > $1)",
                )
                .bind(old_expires_at)
                .bind(client_id)
                .execute(&mut *tx)
                .await?;
                sqlx::query("INSERT INTO client_secrets (client_id, digest, created_at, expires_at) VALUES ($1, $2, $3, $4)")
                    .bind(client_id)
                    .bind(&new.digest)
                    .bind(new.created_at)
                    .bind(new.expires_at)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(BUMP_REGISTRY).execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn add_delegation(&self, d: &Delegation) -> anyhow::Result<()> {
                let mut tx = self.pool.begin().await?;
                sqlx::query(
                    "INSERT INTO delegations (id, client_id, audiences, scopes, actors, created_at, expires_at, datasets, permissions) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .bind(&d.id)
                .bind(&d.client_id)
                .bind(serde_json::to_string(&d.audiences)?)
                .bind(serde_json::to_string(&d.scopes)?)
                .bind(serde_json::to_string(&d.actors)?)
                .bind(d.created_at)
                .bind(d.expires_at)
                .bind(serde_json::to_string(&d.datasets)?)
                .bind(serde_json::to_string(&d.permissions)?)
                .execute(&mut *tx)
                .await?;
                sqlx::query(BUMP_REGISTRY).execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn delegations(&self, client_id: Option<&str>) -> anyhow::Result<Vec<Delegation>> {
                let rows = sqlx::query(
                    "SELECT * FROM delegations WHERE ($1 IS NULL OR client_id = $1) ORDER BY created_at, id",
                )
                .bind(client_id)
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(Self::delegation_from_row).collect()
            }

            async fn remove_delegation(&self, id: &str) -> anyhow::Result<bool> {
                self.delete_bumping("DELETE FROM delegations WHERE id = $1", id).await
            }

            async fn bind_workload(&self, b: &WorkloadBinding) -> anyhow::Result<()> {
                let mut tx = self.pool.begin().await?;
                sqlx::query("INSERT INTO workload_identities (issuer, subject, client_id, created_at) VALUES ($1, $2, $3, $4)")
                    .bind(&b.issuer)
                    .bind(&b.subject)
                    .bind(&b.client_id)
                    .bind(b.created_at)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(BUMP_REGISTRY).execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn unbind_workload(&self, issuer: &str, subject: &str) -> anyhow::Result<bool> {
                let mut tx = self.pool.begin().await?;
                let done = sqlx::query("DELETE FROM workload_identities WHERE issuer = $1 AND subject = $2")
                    .bind(issuer)
                    .bind(subject)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(BUMP_REGISTRY).execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(done.rows_affected() == 1)
            }

            async fn workload_bindings(&self, client_id: Option<&str>) -> anyhow::Result<Vec<WorkloadBinding>> {
                let rows = sqlx::query(
                    "SELECT * FROM workload_identities WHERE ($1 IS NULL OR client_id = $1) ORDER BY created_at, issuer, subject",
                )
                .bind(client_id)
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(Self::binding_from_row).collect()
            }

            async fn workload_client(&self, issuer: &str, subject: &str) -> anyhow::Result<Option<String>> {
                let row = sqlx::query("SELECT client_id FROM workload_identities WHERE issuer = $1 AND subject = $2")
                    .bind(issuer)
                    .bind(subject)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(row.map(|r| r.try_get("client_id")).transpose()?)
            }
        }

        #[async_trait]
        impl DataStore for $store {
            async fn create_dataset(&self, d: &Dataset) -> anyhow::Result<()> {
                let mut tx = self.pool.begin().await?;
                sqlx::query(
                    "INSERT INTO datasets (id, tenant, role_arn, glue_database, glue_table, lf_tag_expression, s3_prefix, \
                     permissions, purposes, max_duration_secs, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                )
                .bind(&d.id)
                .bind(&d.tenant)
                .bind(&d.role_arn)
                .bind(&d.glue_database)
                .bind(&d.glue_table)
                .bind(d.lf_tag_expression.as_ref().map(serde_json::to_string).transpose()?)
                .bind(&d.s3_prefix)
                .bind(serde_json::to_string(&d.permissions)?)
                .bind(serde_json::to_string(&d.purposes)?)
                .bind(d.max_duration_secs)
                .bind(d.created_at)
                .bind(d.updated_at)
                .execute(&mut *tx)
                .await?;
                sqlx::query(BUMP_REGISTRY).execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn update_dataset(&self, d: &Dataset) -> anyhow::Result<bool> {
                let mut tx = self.pool.begin().await?;
                let done = sqlx::query(
                    "UPDATE datasets SET tenant = $2, role_arn = $3, glue_database = $4, glue_table = $5, \
                     lf_tag_expression = $6, s3_prefix = $7, permissions = $8, purposes = $9, \
                     max_duration_secs = $10, updated_at = $11 WHERE id = $1",
                )
                .bind(&d.id)
                .bind(&d.tenant)
                .bind(&d.role_arn)
                .bind(&d.glue_database)
                .bind(&d.glue_table)
                .bind(d.lf_tag_expression.as_ref().map(serde_json::to_string).transpose()?)
                .bind(&d.s3_prefix)
                .bind(serde_json::to_string(&d.permissions)?)
                .bind(serde_json::to_string(&d.purposes)?)
                .bind(d.max_duration_secs)
                .bind(d.updated_at)
                .execute(&mut *tx)
                .await?;
                sqlx::query(BUMP_REGISTRY).execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(done.rows_affected() == 1)
            }

            async fn get_dataset(&self, id: &str) -> anyhow::Result<Option<Dataset>> {
                let row = sqlx::query("SELECT * FROM datasets WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
                row.as_ref().map(Self::dataset_from_row).transpose()
            }

            async fn list_datasets(&self) -> anyhow::Result<Vec<Dataset>> {
                let rows = sqlx::query("SELECT * FROM datasets ORDER BY id").fetch_all(&self.pool).await?;
                rows.iter().map(Self::dataset_from_row).collect()
            }

            async fn delete_dataset(&self, id: &str) -> anyhow::Result<bool> {
                let mut tx = self.pool.begin().await?;
                sqlx::query("DELETE FROM dataset_grants WHERE dataset_id = $1").bind(id).execute(&mut *tx).await?;
                // Delegations lose the dataset too: one created later under
                // the same id must not inherit who could reach the old one.
                let rows: Vec<(String, String)> = sqlx::query_as("SELECT id, datasets FROM delegations")
                    .fetch_all(&mut *tx)
                    .await?;
                for (delegation, datasets) in rows {
                    let mut list: Vec<String> = serde_json::from_str(&datasets)?;
                    let before = list.len();
                    list.retain(|d| d != id);
                    if list.len() != before {
                        sqlx::query("UPDATE delegations SET datasets = $1 WHERE id = $2")
                            .bind(serde_json::to_string(&list)?)
                            .bind(&delegation)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                let done = sqlx::query("DELETE FROM datasets WHERE id = $1").bind(id).execute(&mut *tx).await?;
                sqlx::query(BUMP_REGISTRY).execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(done.rows_affected() == 1)
            }

            async fn add_grant(&self, g: &DatasetGrant) -> anyhow::Result<()> {
                let mut tx = self.pool.begin().await?;
                sqlx::query(
                    "INSERT INTO dataset_grants (id, dataset_id, grantee_type, grantee, permission, purposes, expires_at, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(&g.id)
                .bind(&g.dataset_id)
                .bind(g.grantee_type.as_str())
                .bind(&g.grantee)
                .bind(g.permission.as_str())
                .bind(serde_json::to_string(&g.purposes)?)
                .bind(g.expires_at)
                .bind(g.created_at)
                .execute(&mut *tx)
                .await?;
                sqlx::query(BUMP_REGISTRY).execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn grants(&self, dataset_id: Option<&str>) -> anyhow::Result<Vec<DatasetGrant>> {
                let rows = sqlx::query(
                    "SELECT * FROM dataset_grants WHERE ($1 IS NULL OR dataset_id = $1) ORDER BY created_at, id",
                )
                .bind(dataset_id)
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(Self::grant_from_row).collect()
            }

            async fn remove_grant(&self, id: &str) -> anyhow::Result<bool> {
                self.delete_bumping("DELETE FROM dataset_grants WHERE id = $1", id).await
            }
        }

        #[async_trait]
        impl ReplayStore for $store {
            async fn record_jti(&self, client_id: &str, jti: &str, expires_at: i64, now: i64) -> anyhow::Result<JtiOutcome> {
                // An expired row for the same jti no longer protects anything;
                // clear it so the unique insert below decides alone.
                sqlx::query("DELETE FROM used_assertions WHERE client_id = $1 AND jti = $2 AND expires_at <= $3")
                    .bind(client_id)
                    .bind(jti)
                    .bind(now)
                    .execute(&self.pool)
                    .await?;
                let done = sqlx::query(
                    "INSERT INTO used_assertions (client_id, jti, expires_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                )
                .bind(client_id)
                .bind(jti)
                .bind(expires_at)
                .execute(&self.pool)
                .await?;
                Ok(if done.rows_affected() == 1 { JtiOutcome::Fresh } else { JtiOutcome::Replayed })
            }
        }

        #[async_trait]
        impl RevocationStore for $store {
            async fn revoke(&self, jti: &str, expires_at: i64, now: i64) -> anyhow::Result<()> {
                sqlx::query("INSERT INTO revoked_tokens (jti, expires_at, revoked_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                    .bind(jti)
                    .bind(expires_at)
                    .bind(now)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn revocations_since(&self, since: i64, now: i64) -> anyhow::Result<Vec<Revoked>> {
                let rows = sqlx::query("SELECT jti, expires_at FROM revoked_tokens WHERE revoked_at >= $1 AND expires_at > $2")
                    .bind(since)
                    .bind(now)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter()
                    .map(|r| Ok(Revoked { jti: r.try_get("jti")?, expires_at: r.try_get("expires_at")? }))
                    .collect()
            }
        }

        #[async_trait]
        impl AuditStore for $store {
            async fn append_audit(&self, records: &[AuditRecord]) -> anyhow::Result<()> {
                if records.is_empty() {
                    return Ok(());
                }
                let mut tx = self.pool.begin().await?;
                // Taking the head row's lock (Postgres) or the write lock
                // (SQLite) while reading it makes "read the head, append
                // after it" atomic across every process on this database.
                let head = sqlx::query("UPDATE audit_lock SET n = n WHERE id = 1 RETURNING n, hash")
                    .fetch_one(&mut *tx)
                    .await?;
                let (mut seq, mut prev): (i64, String) = (head.try_get("n")?, head.try_get("hash")?);
                for chunk in records.chunks(250) {
                    let mut q = sqlx::QueryBuilder::new(
                        "INSERT INTO audit_log (seq, ts, event, decision, reason, client_id, subject, principal, tenant, \
                         audience, scopes, route, policy_version, jti, request_id, peer, actor, upstream_issuer, dataset, purpose, permission, role_arn, session_name, \
                         source_identity, access_key_id, credential_expiry, prev_hash, hash) ",
                    );
                    let mut rows = Vec::with_capacity(chunk.len());
                    for r in chunk {
                        seq += 1;
                        let hash = chain_hash(&prev, seq, r);
                        rows.push((seq, r, std::mem::replace(&mut prev, hash.clone()), hash));
                    }
                    q.push_values(rows, |mut b, (seq, r, prev_hash, hash)| {
                        b.push_bind(seq)
                            .push_bind(r.ts)
                            .push_bind(r.event.clone())
                            .push_bind(r.decision.clone())
                            .push_bind(r.reason.clone())
                            .push_bind(r.client_id.clone())
                            .push_bind(r.subject.clone())
                            .push_bind(r.principal.clone())
                            .push_bind(r.tenant.clone())
                            .push_bind(r.audience.clone())
                            .push_bind(r.scopes.clone())
                            .push_bind(r.route.clone())
                            .push_bind(r.policy_version.clone())
                            .push_bind(r.jti.clone())
                            .push_bind(r.request_id.clone())
                            .push_bind(r.peer.clone())
                            .push_bind(r.actor.clone())
                            .push_bind(r.upstream_issuer.clone())
                            .push_bind(r.dataset.clone())
                            .push_bind(r.purpose.clone())
                            .push_bind(r.permission.clone())
                            .push_bind(r.role_arn.clone())
                            .push_bind(r.session_name.clone())
                            .push_bind(r.source_identity.clone())
                            .push_bind(r.access_key_id.clone())
                            .push_bind(r.credential_expiry)
                            .push_bind(prev_hash)
                            .push_bind(hash);
                    });
                    q.build().execute(&mut *tx).await?;
                }
                sqlx::query("UPDATE audit_lock SET n = $1, hash = $2 WHERE id = 1")
                    .bind(seq)
                    .bind(&prev)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn audit_page(&self, after: i64, limit: i64) -> anyhow::Result<Vec<StoredAudit>> {
                let rows = sqlx::query("SELECT * FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2")
                    .bind(after)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(Self::audit_from_row).collect()
            }

            async fn audit_tail(&self, limit: i64) -> anyhow::Result<Vec<StoredAudit>> {
                let rows = sqlx::query("SELECT * FROM audit_log ORDER BY seq DESC LIMIT $1")
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?;
                let mut out: Vec<StoredAudit> = rows.iter().map(Self::audit_from_row).collect::<anyhow::Result<_>>()?;
                out.reverse();
                Ok(out)
            }

            async fn audit_head(&self) -> anyhow::Result<i64> {
                let row = sqlx::query("SELECT n FROM audit_lock WHERE id = 1").fetch_one(&self.pool).await?;
                Ok(row.try_get("n")?)
            }
        }

        #[async_trait]
        impl LakeFormationStore for $store {
            async fn record_lf_grants(&self, entries: &[LfLedgerEntry]) -> anyhow::Result<()> {
                let mut tx = self.pool.begin().await?;
                for e in entries {
                    sqlx::query(
                        "INSERT INTO lakeformation_grants (principal_arn, resource, permission, dataset_id, granted_at) \
                         VALUES ($1, $2, $3, $4, $5) \
                         ON CONFLICT (principal_arn, resource, permission) DO UPDATE SET dataset_id = EXCLUDED.dataset_id",
                    )
                    .bind(&e.principal_arn)
                    .bind(&e.resource)
                    .bind(&e.permission)
                    .bind(&e.dataset_id)
                    .bind(e.granted_at)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn remove_lf_grants(&self, entries: &[LfLedgerEntry]) -> anyhow::Result<()> {
                let mut tx = self.pool.begin().await?;
                for e in entries {
                    sqlx::query("DELETE FROM lakeformation_grants WHERE principal_arn = $1 AND resource = $2 AND permission = $3")
                        .bind(&e.principal_arn)
                        .bind(&e.resource)
                        .bind(&e.permission)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn lf_grants(&self) -> anyhow::Result<Vec<LfLedgerEntry>> {
                let rows = sqlx::query("SELECT * FROM lakeformation_grants ORDER BY principal_arn, resource, permission")
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter()
                    .map(|r| {
                        Ok(LfLedgerEntry {
                            principal_arn: r.try_get("principal_arn")?,
                            resource: r.try_get("resource")?,
                            permission: r.try_get("permission")?,
                            dataset_id: r.try_get("dataset_id")?,
                            granted_at: r.try_get("granted_at")?,
                        })
                    })
                    .collect()
            }
        }

        #[async_trait]
        impl LeaseStore for $store {
            async fn take_lease(&self, name: &str, holder: &str, now: i64, ttl_secs: i64) -> anyhow::Result<bool> {
                // One statement: insert when there is no row; otherwise take
                // it over only when it is ours or has expired. The row lock
                // (Postgres) or the write lock (SQLite) makes two replicas
                // racing here see one winner.
                let done = sqlx::query(
                    "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at \
                     WHERE leases.holder = EXCLUDED.holder OR leases.expires_at <= $4",
                )
                .bind(name)
                .bind(holder)
                .bind(now.saturating_add(ttl_secs))
                .bind(now)
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn release_lease(&self, name: &str, holder: &str) -> anyhow::Result<bool> {
                let done = sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
                    .bind(name)
                    .bind(holder)
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() == 1)
            }
        }

        #[async_trait]
        impl Store for $store {
            async fn ping(&self) -> anyhow::Result<()> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            async fn purge_expired(&self, now: i64) -> anyhow::Result<()> {
                sqlx::query("DELETE FROM used_assertions WHERE expires_at <= $1").bind(now).execute(&self.pool).await?;
                sqlx::query("DELETE FROM revoked_tokens WHERE expires_at <= $1").bind(now).execute(&self.pool).await?;
                Ok(())
            }
        }
    };
}

sql_store!(SqliteStore, sqlx::sqlite::SqliteRow);
sql_store!(PgStore, sqlx::postgres::PgRow);
