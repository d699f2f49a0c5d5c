//! Client authentication at the token, introspection and revocation
//! endpoints: `client_secret_basic` and `client_secret_post` (RFC 6749
//! §2.3.1) and `private_key_jwt` (RFC 7523 §2.2 and §3, OpenID Connect
//! Core §9), and a bound workload identity (a Kubernetes service-account
//! token from a trusted issuer) sent as the JWT bearer assertion. A client
//! uses exactly one method per request. Every failure is audited before the
//! `invalid_client` answer goes out.

use base64::Engine;
use serde::Deserialize;

use std::sync::Arc;

use super::client_cache::CachedClient;
use super::{secret, OAuthError};
use crate::app::App;
use crate::audit::{AuditRecord, Decision, Event, RequestMeta};
use crate::config::TrustedKind;
use crate::issuer::{Principal, TokenError, VerifiedToken};
use crate::jose::{Unverified, VerifyingKey};
use crate::store::{Client, JtiOutcome};

/// `client_assertion_type` for JWT client authentication (RFC 7523 §2.2).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The credentials a request carried, taken out of the header and form.
#[derive(Debug, Default)]
pub struct Presented {
    /// `Authorization: Basic` user and password, form-decoded.
    pub basic: Option<(String, String)>,
    /// Set when an `Authorization: Basic` header could not be decoded.
    pub basic_malformed: bool,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub assertion_type: Option<String>,
    pub assertion: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    SecretBasic,
    SecretPost,
    PrivateKeyJwt,
    /// A bound workload identity token (e.g. a Kubernetes service-account
    /// token) sent as a JWT bearer `client_assertion`.
    WorkloadIdentity,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::SecretBasic => "client_secret_basic",
            Method::SecretPost => "client_secret_post",
            Method::PrivateKeyJwt => "private_key_jwt",
            Method::WorkloadIdentity => "workload_identity",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Authenticated {
    pub client: Client,
    pub method: Method,
    /// The workload identity token, for [`Method::WorkloadIdentity`].
    pub workload: Option<Arc<VerifiedToken>>,
}

impl Presented {
    /// Whether the request carried no client credentials at all.
    pub fn is_empty(&self) -> bool {
        self.basic.is_none()
            && !self.basic_malformed
            && self.client_secret.is_none()
            && self.assertion.is_none()
            && self.assertion_type.is_none()
    }
}

/// Decodes `Authorization: Basic` per RFC 6749 §2.3.1: base64 of
/// `urlencode(id):urlencode(secret)`.
pub fn parse_basic(value: &str) -> Option<(String, String)> {
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let encoded = encoded.trim();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (id, secret) = text.split_once(':')?;
    let decode = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
    };
    Some((decode(id)?, decode(secret)?))
}

/// Unverified claims of a client assertion, read to find the client.
#[derive(Debug, Deserialize)]
struct AssertionClaims {
    iss: Option<String>,
    sub: Option<String>,
    #[serde(default)]
    aud: serde_json::Value,
    exp: Option<i64>,
    nbf: Option<i64>,
    iat: Option<i64>,
    jti: Option<String>,
}

/// Why authentication did not succeed.
enum Failure {
    /// The credentials were refused; `reason` goes into the audit record
    /// (the client only hears `invalid_client`).
    Refused {
        client_id: Option<String>,
        reason: &'static str,
    },
    /// The registry could not be read: nothing is known about the client.
    Store,
    /// A trusted issuer's keys could not be fetched.
    KeysUnavailable,
}

fn fail(client_id: Option<&str>, reason: &'static str) -> Failure {
    Failure::Refused {
        client_id: client_id.map(str::to_string),
        reason,
    }
}

/// Authenticates the calling client. `endpoint` is the URL being called,
/// accepted as an assertion audience beside the token endpoint and issuer.
pub async fn authenticate(
    app: &App,
    presented: Presented,
    endpoint: &str,
    meta: &RequestMeta,
) -> Result<Authenticated, OAuthError> {
    let uses_basic = presented.basic.is_some() || presented.basic_malformed;
    let uses_assertion = presented.assertion.is_some() || presented.assertion_type.is_some();
    let methods = [
        uses_basic,
        presented.client_secret.is_some(),
        uses_assertion,
    ];
    if methods.iter().filter(|m| **m).count() > 1 {
        return Err(OAuthError::invalid_request(
            "use exactly one client authentication method",
        ));
    }
    let now = app.clock.now();
    let (method, result) = if presented.basic_malformed {
        (
            Method::SecretBasic,
            Err(fail(None, "malformed_basic_header")),
        )
    } else if let Some((id, secret)) = &presented.basic {
        if presented.client_id.as_deref().is_some_and(|c| c != id) {
            return Err(OAuthError::invalid_request(
                "client_id does not match the Authorization header",
            ));
        }
        (Method::SecretBasic, by_secret(app, id, secret, now).await)
    } else if let Some(secret) = &presented.client_secret {
        let Some(id) = presented.client_id.as_deref() else {
            return Err(OAuthError::invalid_request(
                "client_id is required with client_secret",
            ));
        };
        (Method::SecretPost, by_secret(app, id, secret, now).await)
    } else if uses_assertion {
        let Some(assertion) = &presented.assertion else {
            return Err(OAuthError::invalid_request(
                "client_assertion is required with client_assertion_type",
            ));
        };
        if presented.assertion_type.as_deref() != Some(JWT_BEARER) {
            return Err(OAuthError::invalid_request(format!(
                "client_assertion_type must be {JWT_BEARER}"
            )));
        }
        let client_id = presented.client_id.as_deref();
        let is_workload = app
            .trusted
            .claimed_issuer(assertion)
            .is_some_and(|t| t.config.kind == TrustedKind::Workload);
        if is_workload {
            match by_workload(app, assertion, client_id, now).await {
                Ok((client, token)) => {
                    return Ok(Authenticated {
                        client,
                        method: Method::WorkloadIdentity,
                        workload: Some(token),
                    })
                }
                Err(e) => (Method::WorkloadIdentity, Err(e)),
            }
        } else {
            (
                Method::PrivateKeyJwt,
                by_assertion(app, assertion, client_id, endpoint, now).await,
            )
        }
    } else {
        (
            Method::SecretBasic,
            Err(fail(
                presented.client_id.as_deref(),
                "no_client_authentication",
            )),
        )
    };
    match result {
        Ok(client) => Ok(Authenticated {
            client,
            method,
            workload: None,
        }),
        Err(failure) => {
            // Every refusal is audited, a dependency failure included; only
            // the audit log failing goes unrecorded.
            let named = presented
                .basic
                .as_ref()
                .map(|(id, _)| id.clone())
                .or_else(|| presented.client_id.clone());
            let (client_id, reason, answer) = match failure {
                Failure::Store => (
                    named,
                    "client_registry_unavailable",
                    OAuthError::TemporarilyUnavailable("client registry unavailable".into()),
                ),
                Failure::KeysUnavailable => (
                    named,
                    "workload_issuer_keys_unavailable",
                    OAuthError::TemporarilyUnavailable(
                        "the workload identity issuer's keys cannot be fetched right now".into(),
                    ),
                ),
                Failure::Refused { client_id, reason } => (
                    client_id,
                    reason,
                    OAuthError::InvalidClient("client authentication failed".into()),
                ),
            };
            let mut rec = AuditRecord::new(
                app.clock.now_millis(),
                Event::ClientAuthentication,
                Decision::Deny,
                reason,
            );
            rec.client_id = client_id.filter(|c| c.len() <= 256);
            meta.fill(&mut rec);
            app.audit.record(rec).await?;
            Err(answer)
        }
    }
}

/// Looks the client up (cached); `fresh` skips the cache.
async fn load_client(
    app: &App,
    id: &str,
    now: i64,
    fresh: bool,
) -> Result<Arc<CachedClient>, Failure> {
    if id.len() > 256 || id.chars().any(char::is_control) {
        return Err(fail(None, "unknown_client"));
    }
    let found = if fresh {
        app.clients.fetch(id, now).await
    } else {
        app.clients.get(id, now).await
    };
    match found {
        Ok(Some(c)) if c.client.disabled => Err(fail(Some(id), "client_disabled")),
        Ok(Some(c)) => Ok(c),
        Ok(None) => Err(fail(None, "unknown_client")),
        Err(e) => {
            tracing::error!(error = %e, "client lookup failed");
            Err(Failure::Store)
        }
    }
}

async fn by_secret(app: &App, id: &str, presented: &str, now: i64) -> Result<Client, Failure> {
    let mut entry = load_client(app, id, now, false).await?;
    if !secret::matches(presented, &entry.live_secrets(now)) {
        // The cache may predate a rotation: check the store before refusing.
        entry = load_client(app, id, now, true).await?;
    }
    let stored = entry.live_secrets(now);
    if stored.is_empty() {
        return Err(fail(Some(id), "client_has_no_secret"));
    }
    if !secret::matches(presented, &stored) {
        return Err(fail(Some(id), "bad_secret"));
    }
    Ok(entry.client.clone())
}

/// A workload identity token as the client assertion: verified against
/// its trusted issuer, then mapped to the client it is bound to. Such
/// tokens are reused by the workload until they expire (the kubelet
/// refreshes them), so no `jti` replay check applies; they are bound to
/// an audience Tessera accepts instead.
async fn by_workload(
    app: &App,
    token: &str,
    form_client_id: Option<&str>,
    now: i64,
) -> Result<(Client, Arc<VerifiedToken>), Failure> {
    let verified = app.trusted.verify(token).await.map_err(|e| match e {
        TokenError::KeysUnavailable => Failure::KeysUnavailable,
        e => fail(form_client_id, e.code()),
    })?;
    if verified.claims.principal != Principal::Workload {
        return Err(fail(form_client_id, "assertion_not_workload_identity"));
    }
    if !app.trusted.audience_accepted(&verified) {
        return Err(fail(form_client_id, "wrong_audience"));
    }
    let bound = app
        .clients
        .workload_client(&verified.claims.iss, &verified.claims.sub)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "workload binding lookup failed");
            Failure::Store
        })?;
    let Some(client_id) = bound else {
        return Err(fail(form_client_id, "workload_not_bound"));
    };
    if form_client_id.is_some_and(|c| c != client_id) {
        return Err(fail(form_client_id, "assertion_subject_mismatch"));
    }
    let client = load_client(app, &client_id, now, false)
        .await?
        .client
        .clone();
    Ok((client, verified))
}

async fn by_assertion(
    app: &App,
    assertion: &str,
    form_client_id: Option<&str>,
    endpoint: &str,
    now: i64,
) -> Result<Client, Failure> {
    let cfg = &app.config;
    let parsed = Unverified::parse(assertion, cfg.server.max_token_bytes).map_err(|e| {
        fail(
            form_client_id,
            match e {
                crate::jose::JwsError::TooLarge => "assertion_too_large",
                crate::jose::JwsError::UnsupportedAlg => "assertion_alg_not_accepted",
                _ => "assertion_malformed",
            },
        )
    })?;
    // An access token is not a client assertion (token confusion).
    if parsed
        .header
        .typ
        .as_deref()
        .is_some_and(|t| t.eq_ignore_ascii_case("at+jwt"))
    {
        return Err(fail(form_client_id, "assertion_wrong_type"));
    }
    let claims: AssertionClaims = parsed
        .claims()
        .map_err(|_| fail(form_client_id, "assertion_malformed"))?;
    let (Some(iss), Some(sub)) = (claims.iss.as_deref(), claims.sub.as_deref()) else {
        return Err(fail(form_client_id, "assertion_missing_iss_or_sub"));
    };
    if iss != sub || form_client_id.is_some_and(|c| c != sub) {
        return Err(fail(form_client_id, "assertion_subject_mismatch"));
    }
    let client = load_client(app, sub, now, false).await?.client.clone();
    let id = Some(sub);
    let Some(jwks) = &client.jwks else {
        return Err(fail(id, "client_has_no_keys"));
    };
    let verified = jwks
        .keys
        .iter()
        .filter(|k| parsed.header.kid.is_none() || k.kid == parsed.header.kid)
        .filter_map(|k| VerifyingKey::from_jwk(k).ok())
        .filter(|k| k.alg == parsed.alg)
        .any(|k| parsed.verify::<serde_json::Value>(&k).is_ok());
    if !verified {
        return Err(fail(id, "assertion_bad_signature"));
    }

    // RFC 7523 §3: audience, expiry, not-before, jti.
    let public = &cfg.server.public_url;
    let accepted = [
        format!("{public}/oauth2/token"),
        public.clone(),
        format!("{public}/"),
        format!("{public}/issuers/service"),
        endpoint.to_string(),
    ];
    let auds: Vec<&str> = match &claims.aud {
        serde_json::Value::String(s) => vec![s.as_str()],
        serde_json::Value::Array(a) => a.iter().filter_map(|v| v.as_str()).collect(),
        _ => vec![],
    };
    if !auds.iter().any(|a| accepted.iter().any(|ok| ok == a)) {
        return Err(fail(id, "assertion_wrong_audience"));
    }
    let skew = cfg.oauth.clock_skew.as_secs() as i64;
    let max_life = cfg.oauth.assertion_max_lifetime.as_secs() as i64;
    let Some(exp) = claims.exp else {
        return Err(fail(id, "assertion_missing_exp"));
    };
    if exp + skew <= now {
        return Err(fail(id, "assertion_expired"));
    }
    if exp - now > max_life + skew {
        return Err(fail(id, "assertion_lifetime_too_long"));
    }
    if claims.nbf.is_some_and(|nbf| nbf > now + skew)
        || claims.iat.is_some_and(|iat| iat > now + skew)
    {
        return Err(fail(id, "assertion_not_yet_valid"));
    }
    if claims.iat.is_some_and(|iat| now - iat > max_life + skew) {
        return Err(fail(id, "assertion_too_old"));
    }
    let Some(jti) = claims
        .jti
        .as_deref()
        .filter(|j| !j.is_empty() && j.len() <= 256)
    else {
        return Err(fail(id, "assertion_missing_jti"));
    };
    match app.store.record_jti(sub, jti, exp + skew, now).await {
        Ok(JtiOutcome::Fresh) => Ok(client),
        Ok(JtiOutcome::Replayed) => Err(fail(id, "assertion_replayed")),
        Err(e) => {
            tracing::error!(error = %e, "recording assertion jti failed");
            Err(Failure::Store)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_header_is_form_decoded() {
        let v = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("a%3Ab:s%2Bx+y")
        );
        assert_eq!(parse_basic(&v), Some(("a:b".into(), "s+x y".into())));
        assert_eq!(parse_basic("Basic !!!"), None);
        let upper = format!(
            "BASIC {}",
            base64::engine::general_purpose::STANDARD.encode("a:b")
        );
        assert_eq!(parse_basic(&upper), Some(("a".into(), "b".into())));
        assert_eq!(parse_basic("Bearer x"), None);
    }
}
