//! The grants of the token endpoint, one module each. Each grant first
//! *validates* its parameters against the client (no side effects), then
//! *issues*.

pub mod aws_credentials;
pub mod client_credentials;
pub mod token_exchange;

use serde::Serialize;

use super::{FormParams, OAuthError};
use crate::app::App;
use crate::audit::{AuditRecord, Decision, Event, RequestMeta};
use crate::oauth::client_auth::Authenticated;

/// A closed set of supported grants.
#[derive(Debug)]
pub enum Grant {
    ClientCredentials(client_credentials::Params),
    TokenExchange(token_exchange::Params),
}

impl Grant {
    pub fn parse(params: &FormParams) -> Result<Self, OAuthError> {
        match params.require("grant_type")? {
            "client_credentials" => Ok(Grant::ClientCredentials(
                client_credentials::Params::parse(params)?,
            )),
            token_exchange::GRANT_TYPE => {
                Ok(Grant::TokenExchange(token_exchange::Params::parse(params)?))
            }
            other => Err(OAuthError::UnsupportedGrantType(
                format!(
                    "grant_type {} is not supported",
                    if other.len() <= 80 && other.is_ascii() {
                        other
                    } else {
                        "(value)"
                    }
                )
                .into(),
            )),
        }
    }
}

/// Runs the requested grant. `caller` is the authenticated client; only a
/// token exchange of a workload identity comes without one (the identity
/// itself names the client). Every outcome, issued or refused, is audited
/// before the answer goes out: the grant writes its own success record,
/// and a refusal is written here from what the grant had learnt by then.
pub async fn handle(
    app: &App,
    caller: Option<&Authenticated>,
    params: &FormParams,
    meta: &RequestMeta,
) -> Result<TokenResponse, OAuthError> {
    let exchange = params.get("grant_type") == Some(token_exchange::GRANT_TYPE);
    let event = if exchange {
        Event::TokenExchange
    } else {
        Event::TokenIssuance
    };
    let mut rec = AuditRecord::new(app.clock.now_millis(), event, Decision::Allow, "");
    if let Some(c) = caller {
        rec.client_id = Some(c.client.client_id.clone());
        rec.tenant = Some(c.client.tenant.clone());
        if let Some(w) = &c.workload {
            rec.upstream_issuer = w.upstream.as_ref().map(|u| u.name.clone());
        }
    }
    meta.fill(&mut rec);
    let result = match (Grant::parse(params), caller) {
        (Ok(Grant::ClientCredentials(p)), Some(c)) => {
            client_credentials::handle(app, &c.client, p, &mut rec).await
        }
        (Ok(Grant::TokenExchange(p)), caller) => {
            token_exchange::handle(app, caller, p, &mut rec).await
        }
        (Ok(Grant::ClientCredentials(_)), None) => Err(OAuthError::InvalidClient(
            "client authentication failed".into(),
        )),
        (Err(e), _) => Err(e),
    };
    match result {
        // Not answered by a refusal record: the audit log itself failed.
        Err(e @ OAuthError::AuditUnavailable) => Err(e),
        Err(e) => {
            rec.decision = Decision::Deny.as_str().into();
            rec.reason = match e.audited_reason() {
                Some(r) => format!("{} ({r}): {}", e.code(), e.audited_description()),
                None => format!("{}: {}", e.code(), e.audited_description()),
            };
            app.audit.record(rec).await?;
            Err(e)
        }
        ok => ok,
    }
}

/// RFC 6749 §5.1 successful response. `Debug` leaves the token and any
/// credential secrets out.
#[derive(Serialize)]
pub struct TokenResponse {
    pub access_token: String,
    /// RFC 8693 §2.2.1: set for token exchange.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issued_token_type: Option<&'static str>,
    pub token_type: &'static str,
    pub expires_in: i64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub scope: String,
    /// AWS credentials, for that requested token type.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<aws_credentials::CredentialFields>,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("access_token", &"<redacted>")
            .field("issued_token_type", &self.issued_token_type)
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .field(
                "access_key_id",
                &self.credentials.as_ref().map(|c| &c.access_key_id),
            )
            .finish()
    }
}

/// RFC 6749 §3.3 `scope-token = 1*( %x21 / %x23-5B / %x5D-7E )`.
pub fn parse_scope(text: &str) -> Result<Vec<String>, OAuthError> {
    let mut out: Vec<String> = Vec::new();
    for token in text.split(' ').filter(|t| !t.is_empty()) {
        let ok = token.len() <= 128
            && token
                .bytes()
                .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b));
        if !ok {
            return Err(OAuthError::InvalidScope(
                "scope is not a list of valid scope tokens".into(),
            ));
        }
        if !out.iter().any(|s| s == token) {
            out.push(token.to_string());
        }
    }
    Ok(out)
}

/// The requested targets: every `audience` (RFC 8693 §2.1) and `resource`
/// (RFC 8707 §2) value together, deduplicated.
pub fn parse_targets(p: &FormParams) -> Result<Vec<String>, OAuthError> {
    let mut targets: Vec<String> = p.all("audience").into_iter().map(str::to_string).collect();
    for r in p.all("resource") {
        targets.push(parse_resource(r)?);
    }
    if targets.iter().any(|t| t.len() > 512) {
        return Err(OAuthError::InvalidTarget("audience is too long".into()));
    }
    let mut seen = Vec::with_capacity(targets.len());
    targets.retain(|t| {
        let fresh = !seen.contains(t);
        if fresh {
            seen.push(t.clone());
        }
        fresh
    });
    Ok(targets)
}

/// RFC 8707 §2: a `resource` is an absolute URI without a fragment.
pub fn parse_resource(text: &str) -> Result<String, OAuthError> {
    match url::Url::parse(text) {
        Ok(u) if u.fragment().is_none() => Ok(text.to_string()),
        _ => Err(OAuthError::InvalidTarget(
            "resource must be an absolute URI without a fragment".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_of_a_response_holds_no_token_or_secret() {
        let r = TokenResponse {
            access_token: "session-t0ken".into(),
            issued_token_type: Some(aws_credentials::AWS_CREDENTIALS),
            token_type: "N_A",
            expires_in: 900,
            scope: "read".into(),
            credentials: Some(aws_credentials::CredentialFields {
                access_key_id: "ASIAEXAMPLE".into(),
                secret_access_key: "s3cr3t-key".into(),
                session_token: "session-t0ken".into(),
                expiration: "2026-12-04T08:00:00Z".into(),
                assumed_role_arn: "arn:aws:sts::123456789012:assumed-role/r/alice".into(),
            }),
        };
        let text = format!("{r:?}");
        assert!(text.contains("ASIAEXAMPLE"), "{text}");
        assert!(
            !text.contains("s3cr3t") && !text.contains("t0ken"),
            "{text}"
        );
        // Serialized for the caller, of course, they are all there.
        let body = serde_json::to_string(&r).unwrap();
        assert!(body.contains("s3cr3t-key") && body.contains("session-t0ken"));
    }
}
