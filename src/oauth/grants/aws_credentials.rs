//! Token exchange for federated AWS credentials (DESIGN.md §5): a data
//! product presents a person's token with
//! `requested_token_type=urn:tessera:params:oauth:token-type:aws-credentials`,
//! `resource=urn:tessera:dataset:{id}`, `scope=read|write` and a `purpose`.
//! Once the person's grant and the product's delegation allow it
//! ([`crate::data::authorize`]), STS `AssumeRole` is called on the
//! dataset's role with a session name and source identity derived from the
//! person, session tags binding user, service, tenant, dataset and purpose,
//! and an inline policy narrowed to the dataset and permission. Every name,
//! tag and the policy are checked against AWS's limits before the call.
//! Credentials are never logged or stored; optionally, still-fresh ones are
//! reused for the identical binding.

use std::collections::HashMap;
use std::time::{Duration, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::Serialize;

use super::TokenResponse;
use crate::app::App;
use crate::audit::AuditRecord;
use crate::aws::session::{self, DatasetScope, PolicyError};
use crate::aws::{AssumeRequest, IssuedCredentials, StsError};
use crate::data::{authorize, Actor, DataDenial, DataRequest};
use crate::issuer::VerifiedToken;
use crate::oauth::client_auth::Authenticated;
use crate::oauth::{FormParams, OAuthError};
use crate::store::{Delegation, Permission};

/// `requested_token_type` (and `issued_token_type`) of AWS credentials.
pub const AWS_CREDENTIALS: &str = "urn:tessera:params:oauth:token-type:aws-credentials";
/// `resource` naming a dataset: `urn:tessera:dataset:{id}`.
pub const DATASET_URN: &str = "urn:tessera:dataset:";

/// Session tag keys; all transitive, so role chaining keeps them.
pub const TAG_KEYS: [&str; 6] = [
    "tessera-user",
    "tessera-service",
    "tessera-tenant",
    "tessera-dataset",
    "tessera-purpose",
    "tessera-permission",
];

#[derive(Debug, Clone)]
pub struct CredentialParams {
    pub dataset: String,
    pub permission: Permission,
    pub purpose: Option<String>,
    /// `expires_in` asked for, in seconds.
    pub duration: Option<i64>,
}

impl CredentialParams {
    pub fn parse(
        p: &FormParams,
        targets: &[String],
        scope: Option<&[String]>,
    ) -> Result<Self, OAuthError> {
        let dataset = match targets {
            [one] => one.strip_prefix(DATASET_URN).filter(|d| !d.is_empty()),
            _ => None,
        }
        .ok_or_else(|| {
            OAuthError::InvalidTarget(
                "AWS credentials need exactly one resource=urn:tessera:dataset:{id}".into(),
            )
        })?;
        let permission = match scope {
            Some([one]) => Permission::parse(one),
            _ => None,
        }
        .ok_or_else(|| OAuthError::InvalidScope("scope must be read or write".into()))?;
        // Credentials are never longer-lived than asked, and AWS issues none
        // shorter than 15 minutes: a shorter ask cannot be met.
        let duration = p
            .get("expires_in")
            .map(|d| {
                let secs = d.parse::<i64>().map_err(|_| {
                    OAuthError::invalid_request("expires_in must be a number of seconds")
                })?;
                if secs < i64::from(session::DURATION_MIN) {
                    return Err(OAuthError::invalid_request(
                        "expires_in must be at least 900 seconds, AWS's shortest credentials",
                    ));
                }
                Ok(secs)
            })
            .transpose()?;
        Ok(Self {
            dataset: dataset.to_string(),
            permission,
            purpose: p.get("purpose").map(str::to_string),
            duration,
        })
    }
}

/// The credential fields of the response, beside RFC 8693's. No `Debug`:
/// [`TokenResponse`]'s shows the access key id only.
#[derive(Serialize)]
pub struct CredentialFields {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    /// RFC 3339, as STS writes it.
    pub expiration: String,
    pub assumed_role_arn: String,
}

/// Who, for what: credentials are reused only for exactly this.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Binding {
    user: String,
    client: String,
    dataset: String,
    permission: Permission,
    purpose: String,
    role_arn: String,
    /// The session policy as sent: a dataset narrowed since is a new binding.
    policy: String,
}

/// Still-fresh credentials per binding, kept in memory only; reused until
/// `aws.credential_reuse_margin` before they expire.
#[derive(Debug, Default)]
pub struct CredentialCache {
    entries: Mutex<HashMap<Binding, Cached>>,
}

#[derive(Debug)]
struct Cached {
    creds: IssuedCredentials,
    /// `now + DurationSeconds` on our clock when they were issued. Reuse
    /// compares this, not STS's `Expiration`: STS stamps the expiry on its
    /// own clock after the call, so the same ask could look a second
    /// longer-lived than itself and be refused its own credentials.
    deadline: i64,
}

const CACHE_CAPACITY: usize = 10_000;

impl CredentialCache {
    /// Fresh credentials for `key`: still more than `margin` from expiry,
    /// and living no longer than `duration_secs` from `now` (never
    /// longer-lived than this request may have).
    fn get(
        &self,
        key: &Binding,
        now: i64,
        margin: i64,
        duration_secs: i32,
    ) -> Option<IssuedCredentials> {
        let mut map = self.entries.lock();
        let c = map.get(key)?;
        if c.deadline.min(c.creds.expiration) - now <= margin {
            map.remove(key);
            return None;
        }
        (c.deadline - now <= i64::from(duration_secs)).then(|| c.creds.clone())
    }

    fn put(&self, key: Binding, creds: IssuedCredentials, duration_secs: i32, now: i64) {
        let mut map = self.entries.lock();
        if map.len() >= CACHE_CAPACITY {
            map.retain(|_, c| c.deadline.min(c.creds.expiration) > now);
            if map.len() >= CACHE_CAPACITY {
                map.clear();
            }
        }
        let deadline = now + i64::from(duration_secs);
        map.insert(key, Cached { creds, deadline });
    }
}

fn rfc3339(unix: i64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix.max(0) as u64))
        .to_string()
}

/// The caller is told the reason; AWS's text goes to the log and audit.
fn sts_error(e: StsError) -> OAuthError {
    tracing::warn!(error = %e, "AssumeRole refused or failed");
    match e {
        StsError::Denied(text) => OAuthError::CloudDenied("sts_denied", text.into()),
        StsError::PackedPolicyTooLarge(text) => {
            OAuthError::CloudDenied("packed_policy_too_large", text.into())
        }
        StsError::Throttled(text) => OAuthError::CloudUnavailable("sts_throttled", text.into()),
        StsError::Unavailable(text) => OAuthError::CloudUnavailable("sts_unavailable", text.into()),
    }
}

/// Checks the person's grant and the client's delegation, then issues (or
/// reuses) credentials and audits them. `delegations` are the client's live
/// ones that name the dataset; `rec` already names the person, client and
/// actor chain.
pub async fn issue(
    app: &App,
    caller: &Authenticated,
    subject: &VerifiedToken,
    delegations: &[Delegation],
    params: CredentialParams,
    rec: &mut AuditRecord,
) -> Result<TokenResponse, OAuthError> {
    let now = app.clock.now();
    let person = &subject.claims;
    let client_id = &caller.client.client_id;
    let snapshot = app
        .data_snapshot()
        .await
        .map_err(|()| OAuthError::TemporarilyUnavailable("dataset registry unavailable".into()))?;
    let request = DataRequest {
        dataset: &params.dataset,
        permission: params.permission,
        purpose: params.purpose.as_deref(),
    };
    let actor = Actor {
        client_id,
        delegations,
    };
    let allowed =
        authorize(&snapshot, person, Some(actor), request, now).map_err(OAuthError::DataRefused)?;
    let (dataset, purpose) = (allowed.dataset, allowed.purpose);
    rec.purpose = Some(purpose.clone());

    // Lifetime: what was asked (the dataset's maximum when nothing was),
    // never beyond the grant and delegation that allow it. The person's
    // token bounds it too, but only down to AWS's 15-minute minimum (as a
    // session cookie outlives the login that set it); a grant or delegation
    // ending sooner than that refuses instead.
    let floor = i64::from(session::DURATION_MIN);
    let mut wanted = params.duration.unwrap_or(dataset.max_duration_secs);
    if let Some(until) = allowed.until {
        if until - now < floor {
            return Err(OAuthError::DataRefused(DataDenial::EndsTooSoon));
        }
        wanted = wanted.min(until - now);
    }
    wanted = wanted.min(person.exp.saturating_sub(now).max(floor));

    // Everything AWS will see, checked against its limits first.
    let tag_values = [
        person.sub.as_str(),
        client_id.as_str(),
        person.tenant.as_str(),
        dataset.id.as_str(),
        purpose.as_str(),
        params.permission.as_str(),
    ];
    let tags: Vec<(String, String)> = TAG_KEYS
        .iter()
        .zip(tag_values)
        .map(|(k, v)| (k.to_string(), session::tag_value(v)))
        .collect();
    let transitive: Vec<String> = TAG_KEYS.iter().map(|k| k.to_string()).collect();
    let misconfigured = |detail: String| {
        tracing::error!(dataset = %dataset.id, %detail, "dataset cannot be served");
        OAuthError::CloudDenied("dataset_misconfigured", detail.into())
    };
    let (partition, account) = session::role_arn_parts(&dataset.role_arn)
        .ok_or_else(|| misconfigured("the dataset's role ARN is not valid".into()))?;
    let scope = DatasetScope {
        partition: partition.to_string(),
        region: app.config.aws.region.clone(),
        account: account.to_string(),
        glue_database: dataset.glue_database.clone(),
        glue_table: dataset.glue_table.clone(),
        s3_prefix: dataset.s3_prefix.clone(),
    };
    let request = AssumeRequest {
        role_arn: dataset.role_arn.clone(),
        session_name: session::session_name(&person.sub),
        source_identity: session::source_identity(&person.sub),
        tags,
        transitive_tag_keys: transitive,
        policy: session::session_policy(&scope, params.permission).map_err(|e| match e {
            PolicyError::TooLarge(d) => {
                OAuthError::CloudDenied("session_policy_too_large", d.into())
            }
            PolicyError::Invalid(d) => misconfigured(d),
        })?,
        duration_secs: session::duration(Some(wanted), dataset.max_duration_secs),
    };
    session::validate_request(&request)
        .map_err(|e| OAuthError::CloudDenied("request_outside_aws_limits", e.into()))?;
    rec.role_arn = Some(request.role_arn.clone());
    rec.session_name = Some(request.session_name.clone());
    rec.source_identity = Some(request.source_identity.clone());

    let binding = Binding {
        user: person.sub.clone(),
        client: client_id.clone(),
        dataset: dataset.id.clone(),
        permission: params.permission,
        purpose,
        role_arn: dataset.role_arn.clone(),
        policy: request.policy.clone(),
    };
    let margin = app
        .config
        .aws
        .credential_reuse_margin
        .map(|m| m.as_secs() as i64);
    let reused = margin.and_then(|m| app.credentials.get(&binding, now, m, request.duration_secs));
    let (creds, how) = match reused {
        Some(c) => (c, "reused"),
        None => {
            let c = app.broker.assume_role(&request).await.map_err(sts_error)?;
            if margin.is_some() {
                app.credentials
                    .put(binding, c.clone(), request.duration_secs, now);
            }
            (c, "issued")
        }
    };
    rec.access_key_id = Some(creds.access_key_id.clone());
    rec.credential_expiry = Some(creds.expiration);
    rec.reason = format!("aws_credentials {how} via {}", caller.method.as_str());
    app.audit.record(rec.clone()).await?;
    app.metrics.tokens_issued.inc();
    Ok(TokenResponse {
        access_token: creds.session_token.clone(),
        issued_token_type: Some(AWS_CREDENTIALS),
        token_type: "N_A",
        // Never more than was granted, even when STS's clock stamped the
        // expiry a moment after ours.
        expires_in: (creds.expiration - now).clamp(0, i64::from(request.duration_secs)),
        scope: params.permission.as_str().into(),
        credentials: Some(CredentialFields {
            access_key_id: creds.access_key_id,
            secret_access_key: creds.secret_access_key,
            session_token: creds.session_token,
            expiration: rfc3339(creds.expiration),
            assumed_role_arn: creds.assumed_role_arn,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(user: &str) -> Binding {
        Binding {
            user: user.into(),
            client: "orders-api".into(),
            dataset: "sales.orders".into(),
            permission: Permission::Read,
            purpose: "analytics".into(),
            role_arn: "arn:aws:iam::123456789012:role/sales-reader".into(),
            policy: "{}".into(),
        }
    }

    fn creds(key: &str, expiration: i64) -> IssuedCredentials {
        IssuedCredentials {
            access_key_id: key.into(),
            secret_access_key: "secret".into(),
            session_token: "token".into(),
            expiration,
            assumed_role_arn: "arn:aws:sts::123456789012:assumed-role/sales-reader/alice".into(),
        }
    }

    #[test]
    fn an_expiry_stamped_a_second_late_by_sts_is_still_reused_for_the_same_ask() {
        let cache = CredentialCache::default();
        let now = 1_000_000;
        // STS's clock ran past ours: 900 s asked, 901 s stamped.
        cache.put(binding("alice"), creds("ASIA1", now + 901), 900, now);
        let got = cache.get(&binding("alice"), now + 1, 60, 900);
        assert_eq!(got.map(|c| c.access_key_id).as_deref(), Some("ASIA1"));
    }

    #[test]
    fn credentials_living_longer_than_asked_are_not_handed_out() {
        let cache = CredentialCache::default();
        let now = 1_000_000;
        cache.put(binding("alice"), creds("ASIA1", now + 3600), 3600, now);
        assert!(cache.get(&binding("alice"), now, 60, 900).is_none());
        // ...but they serve an ask for as long or longer.
        assert!(cache.get(&binding("alice"), now, 60, 3600).is_some());
        assert!(cache.get(&binding("alice"), now, 60, 7200).is_some());
        // Once only 900 s are left, a 900 s ask may have them.
        assert!(cache.get(&binding("alice"), now + 2700, 60, 900).is_some());
    }

    #[test]
    fn credentials_within_the_margin_of_expiry_are_dropped() {
        let cache = CredentialCache::default();
        let now = 1_000_000;
        cache.put(binding("alice"), creds("ASIA1", now + 900), 900, now);
        assert!(cache.get(&binding("alice"), now + 840, 60, 900).is_none());
        assert!(cache.entries.lock().is_empty());
    }

    #[test]
    fn credentials_are_never_reused_across_bindings() {
        let cache = CredentialCache::default();
        let now = 1_000_000;
        cache.put(binding("alice"), creds("ASIA1", now + 900), 900, now);
        assert!(cache.get(&binding("bob"), now, 60, 900).is_none());
    }
}
