//! Registering clients: the checks and secret handling shared by the CLI
//! and any later admin API.

use anyhow::bail;

use crate::config::Config;
use crate::jose::{JwkSet, VerifyingKey};
use crate::oauth::grants::parse_scope;
use crate::oauth::secret;
use crate::store::{Client, ClientStore, Delegation, SecretDigest, WorkloadBinding};

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

fn check_label(what: &str, value: &str) -> anyhow::Result<()> {
    if value.trim().is_empty() || value.len() > 128 || value.chars().any(char::is_control) {
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
    pub expires_at: Option<i64>,
}

/// Lets a client exchange users' tokens for the given audiences and scopes.
pub async fn add_delegation(
    store: &dyn ClientStore,
    new: NewDelegation,
    now: i64,
) -> anyhow::Result<Delegation> {
    if store.get_client(&new.client_id).await?.is_none() {
        bail!("no client {:?}", new.client_id);
    }
    let scopes = check_grantable(&new.audiences, &new.scopes)?;
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
