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
use crate::issuer::TokenError;
use crate::oauth::describe_token;
use crate::policy::{canonical_path, decide, AuditLevel, Denial};

/// The parts of the original request the decision depends on.
#[derive(Debug)]
pub struct CheckRequest<'a> {
    pub method: &'a str,
    /// Path as received, possibly with a query.
    pub path: &'a str,
    pub authorization: Option<&'a str>,
    pub request_id: Option<String>,
    pub peer: Option<String>,
}

/// Identity headers for the upstream on allow. Always all of them, so a
/// client can never smuggle its own value through when the proxy is set
/// to overwrite them.
pub const UPSTREAM_HEADERS: [&str; 5] = [
    "x-tessera-subject",
    "x-tessera-principal",
    "x-tessera-tenant",
    "x-tessera-client-id",
    // The acting client of a delegated token (`act.sub`); empty otherwise.
    "x-tessera-actor",
];

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

pub async fn check(app: &App, req: CheckRequest<'_>) -> CheckResponse {
    if app.revocations.is_stale() {
        // Without a current revocation set a revoked token could pass.
        tracing::error!("denying: revocations have not been synced from the store recently");
        return unavailable();
    }
    let policy = app.policy.current();
    let method = req.method.to_ascii_uppercase();
    let path = canonical_path(req.path);
    let rule = path.as_ref().ok().and_then(|p| policy.route(&method, p));
    // The token, once verified, is kept for the audit record even when the
    // rule then refuses it.
    let mut token = None;
    let outcome = match (path, rule) {
        (Err(d), _) => Err(d),
        (Ok(_), None) => Err(Denial::NoRoute),
        (Ok(_), Some(rule)) => match bearer(req.authorization) {
            Ok(None) => Err(Denial::MissingCredential),
            Err(()) => Err(Denial::InvalidCredential(
                crate::jose::JwsError::Malformed.into(),
            )),
            Ok(Some(raw)) => match app.verify_presented(raw).await {
                // The issuer cannot be checked right now: neither allow nor
                // blame the token.
                Err(TokenError::KeysUnavailable) => return unavailable(),
                Err(e) => Err(Denial::InvalidCredential(e)),
                Ok(verified) => {
                    let verified = token.insert(verified);
                    decide(rule, verified).map(|()| verified.clone())
                }
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
        let route = format!("{method} {}", req.path.split('?').next().unwrap_or(""));
        let meta = RequestMeta {
            request_id: req.request_id.clone(),
            peer: req.peer.clone(),
            route: route.chars().take(1024).collect(),
        };
        meta.fill(&mut rec);
        rec
    };
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
                ])
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            if let Some(auth) = req.authorization {
                headers.push(("authorization".into(), auth.to_string()));
            }
            CheckResponse::Allow { headers }
        }
        Err(denial) => {
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
                    "reason": denial.code(),
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
