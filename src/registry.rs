//! Registering clients: the checks and secret handling shared by the CLI
//! and any later admin API.

use anyhow::bail;

use crate::config::Config;
use crate::jose::{JwkSet, VerifyingKey};
use crate::oauth::grants::parse_scope;
use crate::oauth::secret;
use crate::store::{
    Client, ClientStore, DataStore, Dataset, DatasetGrant, Delegation, Grantee, Permission,
    SecretDigest, Store, WorkloadBinding,
};

/// What an operator asks for.
#[derive(Debug, Clone, Default)]
pub struct NewClient {
    pub name: String,
    pub tenant: String,
    pub audiences: Vec<String>,
    pub scopes: Vec<String>,
    /// Seconds; `None` uses the service issuer's `token_ttl`.
    pub token_ttl: Option<i64>,
    /// Public keys: the client then uses private_key_jwt and gets no secret.
    pub jwks: Option<JwkSet>,
    /// No secret either: the client authenticates only through a bound
    /// workload identity.
    pub no_secret: bool,
}

/// Whether `value` is a label the registry accepts (tenant, audience,
/// purpose…): 1 to 128 printable characters, not all blank.
pub fn is_label(value: &str) -> bool {
    !value.trim().is_empty() && value.len() <= 128 && !value.chars().any(char::is_control)
}

fn check_label(what: &str, value: &str) -> anyhow::Result<()> {
    if !is_label(value) {
        bail!("{what} must be 1 to 128 printable characters");
    }
    Ok(())
}

/// Checks the audiences (at least one) and returns the scopes as RFC 6749
/// scope tokens, deduplicated.
fn check_grantable(audiences: &[String], scopes: &[String]) -> anyhow::Result<Vec<String>> {
    if audiences.is_empty() {
        bail!("at least one audience is required");
    }
    for a in audiences {
        check_label("audience", a)?;
    }
    parse_scope(&scopes.join(" "))
        .map_err(|_| anyhow::anyhow!("scopes must be RFC 6749 scope tokens"))
}

/// Validates and stores a client; returns it with its secret (the only
/// time the secret exists outside the caller's hands).
pub async fn create_client(
    store: &dyn ClientStore,
    config: &Config,
    new: NewClient,
    now: i64,
) -> anyhow::Result<(Client, Option<String>)> {
    check_label("name", &new.name)?;
    check_label("tenant", &new.tenant)?;
    let scopes = check_grantable(&new.audiences, &new.scopes)?;
    if let Some(ttl) = new.token_ttl {
        if ttl <= 0 || ttl > config.issuers.service.max_token_ttl.as_secs() as i64 {
            bail!("ttl must be positive and at most issuers.service.max_token_ttl");
        }
    }
    if let Some(set) = &new.jwks {
        if set.keys.is_empty() {
            bail!("the JWK Set has no keys");
        }
        for k in &set.keys {
            VerifyingKey::from_jwk(k).map_err(|e| anyhow::anyhow!("JWK Set: {e}"))?;
        }
    }
    let client = Client {
        client_id: uuid::Uuid::new_v4().to_string(),
        name: new.name,
        tenant: new.tenant,
        audiences: new.audiences,
        scopes,
        token_ttl: new.token_ttl,
        jwks: new.jwks,
        disabled: false,
        created_at: now,
        updated_at: now,
    };
    let secret = (client.jwks.is_none() && !new.no_secret).then(secret::generate);
    let digest = secret.as_ref().map(|s| SecretDigest {
        digest: secret::digest(s),
        created_at: now,
        expires_at: None,
    });
    store.create_client(&client, digest.as_ref()).await?;
    Ok((client, secret))
}

/// Issues a new secret; the previous ones stay valid for `overlap` seconds.
pub async fn rotate_secret(
    store: &dyn ClientStore,
    client: &Client,
    overlap: i64,
    now: i64,
) -> anyhow::Result<(String, i64)> {
    if client.jwks.is_some() {
        bail!(
            "client {:?} authenticates with private_key_jwt; it has no secret to rotate",
            client.client_id
        );
    }
    let new = secret::generate();
    let old_expires_at = now + overlap;
    store
        .rotate_secret(
            &client.client_id,
            &SecretDigest {
                digest: secret::digest(&new),
                created_at: now,
                expires_at: None,
            },
            old_expires_at,
        )
        .await?;
    Ok((new, old_expires_at))
}

/// What an operator asks for with `tessera delegation add`.
#[derive(Debug, Clone, Default)]
pub struct NewDelegation {
    pub client_id: String,
    pub audiences: Vec<String>,
    pub scopes: Vec<String>,
    pub actors: Vec<String>,
    /// Datasets the client may reach for users (token exchange for cloud
    /// credentials, `/data/*` routes), with `permissions`.
    pub datasets: Vec<String>,
    pub permissions: Vec<Permission>,
    pub expires_at: Option<i64>,
}

/// Lets a client exchange users' tokens for the given audiences and scopes.
pub async fn add_delegation(
    store: &dyn Store,
    new: NewDelegation,
    now: i64,
) -> anyhow::Result<Delegation> {
    if store.get_client(&new.client_id).await?.is_none() {
        bail!("no client {:?}", new.client_id);
    }
    let scopes = if new.datasets.is_empty() || !new.audiences.is_empty() {
        check_grantable(&new.audiences, &new.scopes)?
    } else {
        Vec::new()
    };
    for id in &new.datasets {
        if store.get_dataset(id).await?.is_none() {
            bail!("no dataset {id:?}");
        }
    }
    if !new.datasets.is_empty() && new.permissions.is_empty() {
        bail!("name the permissions (read, write) the client may use on the datasets");
    }
    for actor in &new.actors {
        if store.get_client(actor).await?.is_none() {
            bail!("no client {actor:?} (--actor)");
        }
    }
    if new.expires_at.is_some_and(|e| e <= now) {
        bail!("the expiry is in the past");
    }
    let d = Delegation {
        id: uuid::Uuid::new_v4().to_string(),
        client_id: new.client_id,
        audiences: new.audiences,
        scopes,
        actors: new.actors,
        datasets: new.datasets,
        permissions: new.permissions,
        created_at: now,
        expires_at: new.expires_at,
    };
    store.add_delegation(&d).await?;
    Ok(d)
}

/// Binds a workload identity to a client. `issuer` is a trusted issuer's
/// name or its `iss` value; it must be configured with `kind = "workload"`.
pub async fn bind_workload(
    store: &dyn ClientStore,
    config: &Config,
    client_id: &str,
    issuer: &str,
    subject: &str,
    now: i64,
) -> anyhow::Result<WorkloadBinding> {
    let iss = workload_issuer(config, issuer)?;
    check_label("subject", subject)?;
    if store.get_client(client_id).await?.is_none() {
        bail!("no client {client_id:?}");
    }
    if let Some(other) = store.workload_client(&iss, subject).await? {
        bail!("{subject:?} from {iss} is already bound to client {other:?}");
    }
    let b = WorkloadBinding {
        issuer: iss,
        subject: subject.to_string(),
        client_id: client_id.to_string(),
        created_at: now,
    };
    store.bind_workload(&b).await?;
    Ok(b)
}

/// The `iss` of a configured workload issuer, by name or by `iss`.
pub fn workload_issuer(config: &Config, issuer: &str) -> anyhow::Result<String> {
    let found = config
        .trusted_issuers
        .iter()
        .find(|t| t.name == issuer || t.issuer == issuer)
        .ok_or_else(|| anyhow::anyhow!("{issuer:?} is not a configured trusted issuer"))?;
    if found.kind != crate::config::TrustedKind::Workload {
        bail!(
            "trusted issuer {:?} is not of kind \"workload\"",
            found.name
        );
    }
    Ok(found.issuer.clone())
}

/// What an operator asks for with `tessera dataset create` (and `update`,
/// which replaces the same fields).
#[derive(Debug, Clone, Default)]
pub struct NewDataset {
    pub id: String,
    pub tenant: String,
    pub role_arn: String,
    pub glue_database: String,
    pub glue_table: Option<String>,
    pub lf_tag_expression: Option<serde_json::Value>,
    pub s3_prefix: String,
    pub permissions: Vec<Permission>,
    pub purposes: Vec<String>,
    pub max_duration_secs: i64,
}

/// STS's own bounds for `DurationSeconds`.
pub const MIN_CREDENTIAL_SECS: i64 = 900;
pub const MAX_CREDENTIAL_SECS: i64 = 43_200;

fn check_dataset(new: &NewDataset) -> anyhow::Result<()> {
    let id_ok = !new.id.is_empty()
        && new.id.len() <= 128
        && new
            .id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !id_ok {
        bail!("dataset id must be 1 to 128 letters, digits, '.', '_' or '-'");
    }
    check_label("tenant", &new.tenant)?;
    check_label("Glue database", &new.glue_database)?;
    match (&new.glue_table, &new.lf_tag_expression) {
        (Some(t), None) => check_label("Glue table", t)?,
        (None, Some(serde_json::Value::Array(terms))) if !terms.is_empty() => {
            for term in terms {
                let key_ok = term
                    .get("key")
                    .and_then(|k| k.as_str())
                    .is_some_and(|k| !k.is_empty());
                let values_ok = term
                    .get("values")
                    .and_then(|v| v.as_array())
                    .is_some_and(|v| !v.is_empty() && v.iter().all(|x| x.is_string()));
                if !key_ok || !values_ok {
                    bail!("an LF-Tag expression is a list of {{\"key\": …, \"values\": […]}}");
                }
            }
        }
        (None, Some(_)) => {
            bail!("an LF-Tag expression is a non-empty list of {{\"key\": …, \"values\": […]}}")
        }
        _ => bail!("name either a Glue table or an LF-Tag expression"),
    }
    // The same checks the session policy makes, so a dataset that could
    // never be served is refused here rather than at every exchange.
    crate::aws::session::check_dataset_resources(
        &new.role_arn,
        &new.glue_database,
        new.glue_table.as_deref(),
        &new.s3_prefix,
    )
    .map_err(anyhow::Error::msg)?;
    if new.permissions.is_empty() {
        bail!("at least one permission (read, write) is required");
    }
    for p in &new.purposes {
        check_label("purpose", p)?;
    }
    if !(MIN_CREDENTIAL_SECS..=MAX_CREDENTIAL_SECS).contains(&new.max_duration_secs) {
        bail!("the maximum credential lifetime must be between 15m and 12h");
    }
    Ok(())
}

fn dataset_of(new: NewDataset, created_at: i64, now: i64) -> Dataset {
    let mut permissions = new.permissions;
    permissions.sort();
    permissions.dedup();
    Dataset {
        id: new.id,
        tenant: new.tenant,
        role_arn: new.role_arn,
        glue_database: new.glue_database,
        glue_table: new.glue_table,
        lf_tag_expression: new.lf_tag_expression,
        s3_prefix: new.s3_prefix,
        permissions,
        purposes: new.purposes,
        max_duration_secs: new.max_duration_secs,
        created_at,
        updated_at: now,
    }
}

pub async fn create_dataset(
    store: &dyn DataStore,
    new: NewDataset,
    now: i64,
) -> anyhow::Result<Dataset> {
    check_dataset(&new)?;
    if store.get_dataset(&new.id).await?.is_some() {
        bail!("dataset {:?} already exists", new.id);
    }
    let d = dataset_of(new, now, now);
    store.create_dataset(&d).await?;
    Ok(d)
}

pub async fn update_dataset(
    store: &dyn DataStore,
    new: NewDataset,
    now: i64,
) -> anyhow::Result<Dataset> {
    check_dataset(&new)?;
    let Some(old) = store.get_dataset(&new.id).await? else {
        bail!("no dataset {:?}", new.id);
    };
    let d = dataset_of(new, old.created_at, now);
    store.update_dataset(&d).await?;
    Ok(d)
}

/// What an operator asks for with `tessera grant add`.
#[derive(Debug, Clone)]
pub struct NewGrant {
    pub dataset_id: String,
    pub grantee_type: Grantee,
    pub grantee: String,
    pub permission: Permission,
    pub purposes: Vec<String>,
    pub expires_at: Option<i64>,
}

pub async fn add_grant(
    store: &dyn DataStore,
    new: NewGrant,
    now: i64,
) -> anyhow::Result<DatasetGrant> {
    let Some(dataset) = store.get_dataset(&new.dataset_id).await? else {
        bail!("no dataset {:?}", new.dataset_id);
    };
    check_label(new.grantee_type.as_str(), &new.grantee)?;
    // A tenant grant for another tenant could never match anyone (a person
    // of another tenant is refused first): refuse it as the mistake it is.
    if new.grantee_type == Grantee::Tenant && new.grantee != dataset.tenant {
        bail!(
            "dataset {:?} belongs to tenant {:?}; a tenant grant must name that tenant",
            dataset.id,
            dataset.tenant
        );
    }
    if !dataset.permissions.contains(&new.permission) {
        bail!(
            "dataset {:?} does not allow {}",
            dataset.id,
            new.permission.as_str()
        );
    }
    if let Some(p) = new
        .purposes
        .iter()
        .find(|p| !dataset.purposes.is_empty() && !dataset.purposes.contains(p))
    {
        bail!("dataset {:?} does not allow purpose {p:?}", dataset.id);
    }
    if new.expires_at.is_some_and(|e| e <= now) {
        bail!("the expiry is in the past");
    }
    let g = DatasetGrant {
        id: uuid::Uuid::new_v4().to_string(),
        dataset_id: new.dataset_id,
        grantee_type: new.grantee_type,
        grantee: new.grantee,
        permission: new.permission,
        purposes: new.purposes,
        expires_at: new.expires_at,
        created_at: now,
    };
    store.add_grant(&g).await?;
    Ok(g)
}
