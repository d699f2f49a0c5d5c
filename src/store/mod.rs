//! Storage behind small traits, one per concern, each implemented for
//! Postgres (production, many replicas) and SQLite (embedded default) in
//! [`sql`]. A flow depends on the narrowest trait it needs; the
//! [`Store`] trait bundles them for the [`crate::app::App`].

mod sql;

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::audit::{AuditRecord, StoredAudit};
use crate::config::StoreConfig;
use crate::jose::JwkSet;

pub use sql::{PgStore, SqliteStore};

/// A registered OAuth client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Client {
    pub client_id: String,
    pub name: String,
    pub tenant: String,
    pub audiences: Vec<String>,
    pub scopes: Vec<String>,
    /// Per-client token lifetime in seconds; the issuer's default otherwise.
    pub token_ttl: Option<i64>,
    /// Public keys for `private_key_jwt`.
    pub jwks: Option<JwkSet>,
    pub disabled: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Permission for a client (a data product) to obtain tokens that act for
/// users (RFC 8693 token exchange), within audiences and scopes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delegation {
    pub id: String,
    pub client_id: String,
    /// Audiences the client may obtain delegated tokens for.
    pub audiences: Vec<String>,
    /// The most a delegated token may carry; the user's own scopes narrow it.
    pub scopes: Vec<String>,
    /// Other clients whose `actor_token` this client may present.
    pub actors: Vec<String>,
    /// Datasets the client may reach for users, and with which permissions.
    #[serde(default)]
    pub datasets: Vec<String>,
    #[serde(default)]
    pub permissions: Vec<Permission>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
}

/// What a data request does to a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    Read,
    Write,
}

impl Permission {
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Write => "write",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "read" => Some(Permission::Read),
            "write" => Some(Permission::Write),
            _ => None,
        }
    }

    /// Whether holding `self` allows `wanted`: write includes read.
    pub fn covers(self, wanted: Permission) -> bool {
        self == wanted || self == Permission::Write
    }
}

/// A dataset: one Glue table (or LF-Tag expression) and its S3 location,
/// reached through one IAM role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dataset {
    /// e.g. `sales.orders`
    pub id: String,
    pub tenant: String,
    pub role_arn: String,
    pub glue_database: String,
    pub glue_table: Option<String>,
    /// `[{"key": …, "values": […]}]`, when the dataset is a tag expression.
    pub lf_tag_expression: Option<serde_json::Value>,
    /// `s3://bucket/prefix/`
    pub s3_prefix: String,
    pub permissions: Vec<Permission>,
    /// Purposes data may be used for; a request must name one of them.
    pub purposes: Vec<String>,
    pub max_duration_secs: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Who a grant is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Grantee {
    User,
    Group,
    Tenant,
}

impl Grantee {
    pub fn as_str(self) -> &'static str {
        match self {
            Grantee::User => "user",
            Grantee::Group => "group",
            Grantee::Tenant => "tenant",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "user" => Some(Grantee::User),
            "group" => Some(Grantee::Group),
            "tenant" => Some(Grantee::Tenant),
            _ => None,
        }
    }
}

/// Permission for a user, a group or a whole tenant to use a dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetGrant {
    pub id: String,
    pub dataset_id: String,
    pub grantee_type: Grantee,
    pub grantee: String,
    pub permission: Permission,
    /// Empty: any purpose the dataset allows.
    pub purposes: Vec<String>,
    pub expires_at: Option<i64>,
    pub created_at: i64,
}

impl DatasetGrant {
    pub fn is_live(&self, now: i64) -> bool {
        self.expires_at.is_none_or(|e| e > now)
    }
}

impl Delegation {
    pub fn is_live(&self, now: i64) -> bool {
        self.expires_at.is_none_or(|e| e > now)
    }
}

/// A workload identity (`issuer` + `subject`, e.g. a Kubernetes service
/// account) bound to the client it authenticates as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadBinding {
    /// The trusted issuer's `iss` value.
    pub issuer: String,
    pub subject: String,
    pub client_id: String,
    pub created_at: i64,
}

/// A stored secret digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretDigest {
    pub digest: Vec<u8>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
}

/// Result of recording an assertion `jti` (RFC 7523 §3 item 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JtiOutcome {
    Fresh,
    Replayed,
}

/// A revoked token id, with its expiry so it can be forgotten afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    pub jti: String,
    pub expires_at: i64,
}

#[async_trait]
pub trait ClientStore: Send + Sync {
    /// Inserts the client and, when given, its first secret digest.
    async fn create_client(
        &self,
        client: &Client,
        secret: Option<&SecretDigest>,
    ) -> anyhow::Result<()>;
    async fn get_client(&self, client_id: &str) -> anyhow::Result<Option<Client>>;
    async fn list_clients(&self) -> anyhow::Result<Vec<Client>>;
    /// Returns false when no such client exists.
    async fn set_disabled(&self, client_id: &str, disabled: bool, now: i64)
        -> anyhow::Result<bool>;
    /// Secrets that are valid at `now`.
    async fn live_secrets(&self, client_id: &str, now: i64) -> anyhow::Result<Vec<SecretDigest>>;
    /// Adds `new` and makes every other still-open secret expire at
    /// `old_expires_at`, in one transaction.
    /// A counter that moves on every change made through this trait.
    async fn registry_version(&self) -> anyhow::Result<i64>;
    async fn rotate_secret(
        &self,
        client_id: &str,
        new: &SecretDigest,
        old_expires_at: i64,
    ) -> anyhow::Result<()>;
    async fn add_delegation(&self, d: &Delegation) -> anyhow::Result<()>;
    /// Every delegation, or those of one client.
    async fn delegations(&self, client_id: Option<&str>) -> anyhow::Result<Vec<Delegation>>;
    /// Returns false when no such delegation exists.
    async fn remove_delegation(&self, id: &str) -> anyhow::Result<bool>;
    /// Fails when the identity is already bound (to any client).
    async fn bind_workload(&self, b: &WorkloadBinding) -> anyhow::Result<()>;
    /// Returns false when the identity was not bound.
    async fn unbind_workload(&self, issuer: &str, subject: &str) -> anyhow::Result<bool>;
    /// Every binding, or those of one client.
    async fn workload_bindings(
        &self,
        client_id: Option<&str>,
    ) -> anyhow::Result<Vec<WorkloadBinding>>;
    async fn workload_client(&self, issuer: &str, subject: &str) -> anyhow::Result<Option<String>>;
}

/// Datasets and their grants; every change bumps the registry version.
#[async_trait]
pub trait DataStore: Send + Sync {
    /// Fails when the id is taken.
    async fn create_dataset(&self, d: &Dataset) -> anyhow::Result<()>;
    /// Replaces every field but `id` and `created_at`; false when absent.
    async fn update_dataset(&self, d: &Dataset) -> anyhow::Result<bool>;
    async fn get_dataset(&self, id: &str) -> anyhow::Result<Option<Dataset>>;
    async fn list_datasets(&self) -> anyhow::Result<Vec<Dataset>>;
    /// Deletes the dataset and its grants; false when absent.
    async fn delete_dataset(&self, id: &str) -> anyhow::Result<bool>;
    async fn add_grant(&self, g: &DatasetGrant) -> anyhow::Result<()>;
    /// Every grant, or those of one dataset.
    async fn grants(&self, dataset_id: Option<&str>) -> anyhow::Result<Vec<DatasetGrant>>;
    /// False when absent.
    async fn remove_grant(&self, id: &str) -> anyhow::Result<bool>;
}

#[async_trait]
pub trait ReplayStore: Send + Sync {
    /// Records a `jti` for a client; a second use before `expires_at` is
    /// [`JtiOutcome::Replayed`], on every replica sharing the database.
    async fn record_jti(
        &self,
        client_id: &str,
        jti: &str,
        expires_at: i64,
        now: i64,
    ) -> anyhow::Result<JtiOutcome>;
}

#[async_trait]
pub trait RevocationStore: Send + Sync {
    async fn revoke(&self, jti: &str, expires_at: i64, now: i64) -> anyhow::Result<()>;
    /// Revocations recorded at or after `since` that have not expired at `now`.
    async fn revocations_since(&self, since: i64, now: i64) -> anyhow::Result<Vec<Revoked>>;
}

#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Appends records to the hash chain in one transaction, serialized
    /// against every other writer on the same database.
    async fn append_audit(&self, records: &[AuditRecord]) -> anyhow::Result<()>;
    /// Records with `seq > after`, oldest first.
    async fn audit_page(&self, after: i64, limit: i64) -> anyhow::Result<Vec<StoredAudit>>;
    /// The newest `limit` records, oldest first.
    async fn audit_tail(&self, limit: i64) -> anyhow::Result<Vec<StoredAudit>>;
    /// `seq` of the newest record as the writers last recorded it, so that
    /// cutting records off the end of the chain is detected too.
    async fn audit_head(&self) -> anyhow::Result<i64>;
}

/// One Lake Formation permission Tessera granted: a row of the ledger that
/// tells Tessera's own grants from everyone else's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LfLedgerEntry {
    pub principal_arn: String,
    /// The resource as the sync names it (canonical JSON).
    pub resource: String,
    /// One Lake Formation permission (`SELECT`, …).
    pub permission: String,
    /// The dataset it was granted for, kept after the dataset is gone.
    pub dataset_id: Option<String>,
    pub granted_at: i64,
}

/// The ledger of Lake Formation grants Tessera made.
#[async_trait]
pub trait LakeFormationStore: Send + Sync {
    /// Records permissions Lake Formation accepted; an entry already there
    /// keeps its `granted_at` and takes the new `dataset_id`.
    async fn record_lf_grants(&self, entries: &[LfLedgerEntry]) -> anyhow::Result<()>;
    /// Forgets the entries with these (principal, resource, permission);
    /// absent ones are ignored.
    async fn remove_lf_grants(&self, entries: &[LfLedgerEntry]) -> anyhow::Result<()>;
    /// Every entry, sorted by principal, resource, permission.
    async fn lf_grants(&self) -> anyhow::Result<Vec<LfLedgerEntry>>;
}

/// Leases on a job that one replica at a time should run.
#[async_trait]
pub trait LeaseStore: Send + Sync {
    /// Takes lease `name` for `holder` until `now + ttl_secs`, or renews it
    /// when `holder` has it already, in one atomic statement. False while
    /// another holder's lease has not expired (`expires_at > now`).
    async fn take_lease(
        &self,
        name: &str,
        holder: &str,
        now: i64,
        ttl_secs: i64,
    ) -> anyhow::Result<bool>;
    /// Gives the lease up so another holder need not wait for its expiry;
    /// false when `holder` did not hold it.
    async fn release_lease(&self, name: &str, holder: &str) -> anyhow::Result<bool>;
}

#[async_trait]
pub trait Store:
    ClientStore
    + DataStore
    + ReplayStore
    + RevocationStore
    + AuditStore
    + LakeFormationStore
    + LeaseStore
{
    async fn ping(&self) -> anyhow::Result<()>;
    /// Deletes expired assertion ids and revocations of expired tokens.
    async fn purge_expired(&self, now: i64) -> anyhow::Result<()>;
}

/// Connects to `store.url`, applying pending migrations first.
pub async fn connect(config: &StoreConfig) -> anyhow::Result<Arc<dyn Store>> {
    if config.url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::connect(config).await?))
    } else {
        Ok(Arc::new(PgStore::connect(config).await?))
    }
}
