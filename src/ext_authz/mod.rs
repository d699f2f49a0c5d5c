//! The edge decision: may this request pass? One [`check`] serves both
//! Envoy adapters (HTTP in [`http`], gRPC `envoy.service.auth.v3` in
//! [`grpc`]) and nginx `auth_request`. It canonicalizes the path, finds the
//! first matching rule, verifies the bearer token (cached, no database
//! round trip), checks revocation in memory, applies the rule, and audits
//! every denial (and allows where the rule asks), answering only once the
//! record is durable.

pub mod grpc;
pub mod http;

use serde_json::json;

use crate::app::App;
use crate::audit::{AuditRecord, Decision, Event, RequestMeta};
use crate::data::{authorize, Actor, DataDenial, DataRequest};
use std::sync::Arc;

use crate::issuer::{Principal, TokenError, VerifiedToken};
use crate::oauth::describe_token;
use crate::policy::Rule;
use crate::policy::{canonical_path, decide, AuditLevel, Denial};
use crate::store::Permission;

/// The parts of the original request the decision depends on.
#[derive(Debug)]
pub struct CheckRequest<'a> {
    pub method: &'a str,
    /// Path as received, possibly with a query.
    pub path: &'a str,
    pub authorization: Option<&'a str>,
    /// The `x-purpose` request header (data routes).
    pub purpose: Option<&'a str>,
    pub request_id: Option<String>,
    pub peer: Option<String>,
}

/// Identity headers for the upstream on allow. Always all of them, so a
/// client can never smuggle its own value through when the proxy is set
/// to overwrite them.
pub const UPSTREAM_HEADERS: [&str; 7] = [
    "x-tessera-subject",
    "x-tessera-principal",
    "x-tessera-tenant",
    "x-tessera-client-id",
    // The acting client of a delegated token (`act.sub`); empty otherwise.
    "x-tessera-actor",
    // Data routes: the dataset and purpose allowed; empty otherwise.
    "x-tessera-dataset",
    "x-tessera-purpose",
];

/// Request header in which a caller names the purpose of a data request.
pub const PURPOSE_HEADER: &str = "x-purpose";

/// What a data rule allowed.
#[derive(Debug, Clone)]
struct DataGrant {
    dataset: String,
    purpose: String,
}

/// The data part of a decision: the person's grants on the dataset the
/// path names, and the acting client's delegation when a client acts.
async fn check_data(
    app: &App,
    rule: &Rule,
    method: &str,
    path: &str,
    purpose: Option<&str>,
    token: &VerifiedToken,
) -> Result<DataGrant, Result<Denial, ()>> {
    let permission = rule.permission_for(method);
    let Some(dataset) = rule.dataset_of(path) else {
        return Err(Ok(Denial::Data(DataDenial::UnknownDataset)));
    };
    let purpose = purpose
        .filter(|p| !p.is_empty())
        .or(rule.purpose.as_deref());
    let claims = &token.claims;
    let now = app.clock.now();
    let snapshot = app.data_snapshot().await.map_err(Err)?;
    // A delegated token: the client it was issued to acts for the person.
    let acting = match claims.act {
        Some(_) => Some(
            app.clients
                .get(&claims.client_id, now)
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, "client lookup failed");
                })
                .map_err(Err)?,
        ),
        None => None,
    };
    // An unknown or disabled acting client holds no delegation.
    let delegations = acting.as_ref().map(|c| {
        c.as_ref()
            .filter(|c| !c.client.disabled)
            .map_or(&[][..], |c| &c.delegations[..])
    });
    let actor = delegations.map(|d| Actor {
        client_id: &claims.client_id,
        delegations: d,
    });
    let request = DataRequest {
        dataset,
        permission,
        purpose,
    };
    match authorize(&snapshot, claims, actor, request, now) {
        Ok(a) => Ok(DataGrant {
            dataset: a.dataset.id.clone(),
            purpose: a.purpose,
        }),
        Err(d) => Err(Ok(Denial::Data(d))),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum CheckResponse {
    Allow {
        /// Lower-case header names and values for the upstream request.
        headers: Vec<(String, String)>,
    },
    Deny {
        status: u16,
        /// Present on 401 and 403.
        www_authenticate: Option<String>,
        body: serde_json::Value,
    },
}

/// A token taken directly from a trusted issuer must also name one of that
/// issuer's `audiences`, as at token exchange and client authentication:
/// the rule's audience alone may be one the IdP also puts on tokens it
/// issues for other relying parties.
fn issuer_audience(app: &App, token: &VerifiedToken) -> Result<(), Denial> {
    if token.upstream.is_some() && !app.trusted.audience_accepted(token) {
        return Err(Denial::IssuerAudience);
    }
    Ok(())
}

/// Extracts an RFC 6750 §2.1 bearer token. `Ok(None)`: no bearer
/// credential at all; `Err`: a malformed one.
fn bearer(header: Option<&str>) -> Result<Option<&str>, ()> {
    let Some(value) = header else { return Ok(None) };
    let Some((scheme, rest)) = value.split_once(' ') else {
        return if value.eq_ignore_ascii_case("bearer") {
            Err(())
        } else {
            Ok(None)
        };
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    let token = rest.trim();
    let b64token = |b: u8| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b);
    if token.is_empty() || !token.bytes().all(b64token) {
        return Err(());
    }
    Ok(Some(token))
}

/// Quoted-string safe text for `WWW-Authenticate`.
fn quote_safe(text: &str) -> String {
    text.chars()
        .filter(|c| *c != '"' && *c != '\\' && !c.is_control())
        .collect()
}

/// A workload's token taken directly at a route stands for the client its
/// identity is bound to, if any: `client_id` — for a rule's `clients` and
/// `x-tessera-client-id` — and the tenant are that client's, as at the
/// token endpoint. A workload bound to a disabled client is refused, as it
/// is there. An unbound workload is what its token says.
async fn as_bound_workload(
    app: &App,
    verified: &Arc<VerifiedToken>,
) -> Result<Arc<VerifiedToken>, Refusal> {
    if verified.claims.principal != Principal::Workload || verified.upstream.is_none() {
        return Ok(verified.clone());
    }
    let unavailable = |e: anyhow::Error| {
        tracing::error!(error = %e, "workload binding lookup failed");
        Refusal::Unavailable("client_registry_unavailable")
    };
    let c = &verified.claims;
    let Some(entry) = app
        .clients
        .bound_client(&c.iss, &c.sub, app.clock.now())
        .await
        .map_err(unavailable)?
    else {
        return Ok(verified.clone());
    };
    if entry.client.disabled {
        return Err(Refusal::Deny(Denial::ClientNotAllowed));
    }
    let mut as_client = (**verified).clone();
    as_client.claims.client_id = entry.client.client_id.clone();
    as_client.claims.tenant = entry.client.tenant.clone();
    Ok(Arc::new(as_client))
}

/// Why a request does not pass: refused on its merits, or because a
/// dependency of the decision is unavailable (503, retryable). Both are
/// audited; the `&'static str` is the audit reason.
enum Refusal {
    Deny(Denial),
    Unavailable(&'static str),
}

impl From<Denial> for Refusal {
    fn from(d: Denial) -> Self {
        Refusal::Deny(d)
    }
}

pub async fn check(app: &App, req: CheckRequest<'_>) -> CheckResponse {
    let policy = app.policy.current();
    let method = req.method.to_ascii_uppercase();
    let path = canonical_path(req.path);
    let rule = path.as_ref().ok().and_then(|p| policy.route(&method, p));
    // The token, once verified, is kept for the audit record even when the
    // rule then refuses it; so is what a data rule was asked.
    let mut token = None;
    let mut data: Option<DataGrant> = None;
    let mut data_asked: Option<(String, Permission)> = None;
    let outcome: Result<_, Refusal> = match (path, rule) {
        // Without a current revocation set a revoked token could pass.
        _ if app.revocations.is_stale() => Err(Refusal::Unavailable("revocations_stale")),
        (Err(d), _) => Err(d.into()),
        (Ok(_), None) => Err(Denial::NoRoute.into()),
        (Ok(canonical), Some(rule)) => match bearer(req.authorization) {
            Ok(None) => Err(Denial::MissingCredential.into()),
            Err(()) => {
                Err(Denial::InvalidCredential(crate::jose::JwsError::Malformed.into()).into())
            }
            Ok(Some(raw)) => match app.verify_presented(raw).await {
                // The issuer cannot be checked right now: neither allow nor
                // blame the token.
                Err(TokenError::KeysUnavailable) => {
                    Err(Refusal::Unavailable("issuer_keys_unavailable"))
                }
                Err(e) => Err(Denial::InvalidCredential(e).into()),
                Ok(verified) => match as_bound_workload(app, &verified).await {
                    Err(refusal) => {
                        // Kept for the audit record.
                        token = Some(verified);
                        Err(refusal)
                    }
                    Ok(verified) => {
                        let verified = token.insert(verified);
                        match decide(rule, verified).and_then(|()| issuer_audience(app, verified)) {
                            Ok(()) if rule.data => {
                                if let Some(d) = rule.dataset_of(canonical) {
                                    data_asked =
                                        Some((d.to_string(), rule.permission_for(&method)));
                                }
                                match check_data(
                                    app,
                                    rule,
                                    &method,
                                    canonical,
                                    req.purpose,
                                    verified,
                                )
                                .await
                                {
                                    Ok(grant) => {
                                        data = Some(grant);
                                        Ok(verified.clone())
                                    }
                                    Err(Ok(denial)) => Err(denial.into()),
                                    Err(Err(())) => {
                                        Err(Refusal::Unavailable("data_registry_unavailable"))
                                    }
                                }
                            }
                            other => other.map(|()| verified.clone()).map_err(Refusal::from),
                        }
                    }
                },
            },
        },
    };
    let rule_name = rule.map_or("-", |r| r.name.as_str());
    // The audit record is only built when it will be written: the allow
    // path without `audit = "all"` stays allocation-light.
    let record = |decision: Decision, reason: String| {
        let mut rec = AuditRecord::new(app.clock.now_millis(), Event::ExtAuthz, decision, reason);
        rec.policy_version = Some(policy.version.clone());
        if let Some(t) = &token {
            describe_token(&mut rec, &t.claims);
            rec.upstream_issuer = t.upstream.as_ref().map(|u| u.name.clone());
        }
        if let Some((dataset, permission)) = &data_asked {
            rec.dataset = Some(dataset.clone());
            rec.permission = Some(permission.as_str().into());
            rec.purpose = data
                .as_ref()
                .map(|g| g.purpose.clone())
                .or_else(|| req.purpose.map(str::to_string));
        }
        let route = format!("{method} {}", req.path.split('?').next().unwrap_or(""));
        let meta = RequestMeta {
            request_id: req.request_id.clone(),
            peer: req.peer.clone(),
            route: route.chars().take(1024).collect(),
        };
        meta.fill(&mut rec);
        rec
    };
    // Every identity header value must be valid for both adapters; refuse
    // rather than hand Envoy something it would mangle.
    let outcome = outcome.and_then(|verified| {
        let c = &verified.claims;
        let bad = |v: &str| v.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f);
        if [&c.sub, &c.tenant, &c.client_id].iter().any(|v| bad(v))
            || crate::oauth::actor(c).is_some_and(bad)
            || data.as_ref().is_some_and(|g| bad(&g.purpose))
        {
            tracing::error!("denying: an identity header value is not a valid header value");
            return Err(Refusal::Unavailable("identity_header_value_invalid"));
        }
        Ok(verified)
    });
    match outcome {
        Ok(verified) => {
            app.metrics.authz_allowed.inc();
            if rule.is_some_and(|r| r.audit == AuditLevel::All)
                && app
                    .audit
                    .record(record(
                        Decision::Allow,
                        format!("allowed by rule {rule_name}"),
                    ))
                    .await
                    .is_err()
            {
                return unavailable();
            }
            let c = &verified.claims;
            let mut headers: Vec<(String, String)> = UPSTREAM_HEADERS
                .iter()
                .zip([
                    c.sub.as_str(),
                    c.principal.as_str(),
                    c.tenant.as_str(),
                    c.client_id.as_str(),
                    crate::oauth::actor(c).unwrap_or(""),
                    data.as_ref().map_or("", |g| g.dataset.as_str()),
                    data.as_ref().map_or("", |g| g.purpose.as_str()),
                ])
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            if let Some(auth) = req.authorization {
                headers.push(("authorization".into(), auth.to_string()));
            }
            CheckResponse::Allow { headers }
        }
        Err(Refusal::Unavailable(reason)) => {
            app.metrics.authz_denied.inc();
            tracing::error!(
                reason,
                "denying: a dependency of the decision is unavailable"
            );
            // Audited like any refusal; the answer is the same if even
            // that fails.
            let _ = app
                .audit
                .record(record(
                    Decision::Deny,
                    format!("{reason} (rule {rule_name})"),
                ))
                .await;
            unavailable()
        }
        Err(Refusal::Deny(denial)) => {
            app.metrics.authz_denied.inc();
            if app
                .audit
                .record(record(
                    Decision::Deny,
                    format!("{} (rule {rule_name})", denial.code()),
                ))
                .await
                .is_err()
            {
                return unavailable();
            }
            let description = denial.description(rule);
            let mut challenge = String::from("Bearer realm=\"tessera\"");
            let is_route_refusal = matches!(denial, Denial::NoRoute | Denial::NonCanonicalPath);
            if let Some(error) = denial.error().filter(|_| !is_route_refusal) {
                challenge.push_str(&format!(
                    ", error=\"{error}\", error_description=\"{}\"",
                    quote_safe(&description)
                ));
            }
            if let Denial::MissingScope(scope) = &denial {
                challenge.push_str(&format!(", scope=\"{}\"", quote_safe(scope)));
            }
            CheckResponse::Deny {
                status: denial.status(),
                // A refused route is not a token problem: no bearer challenge.
                www_authenticate: (!is_route_refusal).then_some(challenge),
                body: json!({
                    "error": denial.error().unwrap_or("invalid_request"),
                    "error_description": description,
                    "reason": denial.shown_code(),
                    "request_id": req.request_id,
                }),
            }
        }
    }
}

/// Answer when a decision could not be audited: deny, retryable.
fn unavailable() -> CheckResponse {
    CheckResponse::Deny {
        status: 503,
        www_authenticate: None,
        body: json!({"error": "temporarily_unavailable", "error_description": "a dependency of the decision is unavailable"}),
    }
}

#[cfg(test)]
mod tests {
    use super::bearer;

    #[test]
    fn bearer_extraction() {
        assert_eq!(bearer(None), Ok(None));
        assert_eq!(bearer(Some("Basic abc")), Ok(None));
        assert_eq!(bearer(Some("Bearer abc.def-_")), Ok(Some("abc.def-_")));
        assert_eq!(bearer(Some("bearer abc")), Ok(Some("abc")));
        assert_eq!(bearer(Some("Bearer")), Err(()));
        assert_eq!(bearer(Some("Bearer a\"b")), Err(()));
        assert_eq!(bearer(Some("Bearer  ")), Err(()));
    }
}
