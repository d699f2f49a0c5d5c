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
use crate::oauth::describe_token;
use crate::oauth::introspection::check_token;
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
pub const UPSTREAM_HEADERS: [&str; 4] = [
    "x-tessera-subject",
    "x-tessera-principal",
    "x-tessera-tenant",
    "x-tessera-client-id",
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
    let policy = app.policy.current();
    let now = app.clock.now();
    let method = req.method.to_ascii_uppercase();
    let route = format!("{method} {}", req.path.split('?').next().unwrap_or(""));
    let meta = RequestMeta {
        request_id: req.request_id.clone(),
        peer: req.peer.clone(),
        route: route.chars().take(1024).collect(),
    };
    let mut rec = AuditRecord::new(app.clock.now_millis(), Event::ExtAuthz, Decision::Deny, "");
    rec.policy_version = Some(policy.version.clone());
    meta.fill(&mut rec);

    let rule = canonical_path(req.path)
        .ok()
        .and_then(|p| policy.route(&method, p));
    let outcome = match (canonical_path(req.path), rule) {
        (Err(d), _) => Err(d),
        (Ok(_), None) => Err(Denial::NoRoute),
        (Ok(_), Some(rule)) => match bearer(req.authorization) {
            Ok(None) => Err(Denial::MissingCredential),
            Err(()) => Err(Denial::InvalidCredential(
                crate::jose::JwsError::Malformed.into(),
            )),
            Ok(Some(token)) => match check_token(app, token, now) {
                Err(e) => Err(Denial::InvalidCredential(e)),
                Ok(verified) => {
                    describe_token(&mut rec, &verified.claims);
                    decide(rule, &verified).map(|()| verified)
                }
            },
        },
    };
    let rule_name = rule.map_or("-", |r| r.name.as_str());
    match outcome {
        Ok(verified) => {
            app.metrics.authz_allowed.inc();
            if rule.is_some_and(|r| r.audit == AuditLevel::All) {
                rec.decision = Decision::Allow.as_str().into();
                rec.reason = format!("allowed by rule {rule_name}");
                if app.audit.record(rec).await.is_err() {
                    return unavailable();
                }
            }
            let c = &verified.claims;
            let mut headers: Vec<(String, String)> = UPSTREAM_HEADERS
                .iter()
                .zip([
                    &c.sub,
                    &c.principal.as_str().to_string(),
                    &c.tenant,
                    &c.client_id,
                ])
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect();
            if let Some(auth) = req.authorization {
                headers.push(("authorization".into(), auth.to_string()));
            }
            CheckResponse::Allow { headers }
        }
        Err(denial) => {
            app.metrics.authz_denied.inc();
            rec.reason = format!("{} (rule {rule_name})", denial.code());
            if app.audit.record(rec).await.is_err() {
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
        body: json!({"error": "temporarily_unavailable", "error_description": "audit log unavailable"}),
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
