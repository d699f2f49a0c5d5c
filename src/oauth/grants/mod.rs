//! The grants of the token endpoint, one module each. Each grant first
//! *validates* its parameters against the client (no side effects), then
//! *issues*.

pub mod client_credentials;

use serde::Serialize;

use super::{FormParams, OAuthError};
use crate::app::App;
use crate::audit::{AuditRecord, Decision, Event, RequestMeta};
use crate::store::Client;

/// A closed set of supported grants.
#[derive(Debug)]
pub enum Grant {
    ClientCredentials(client_credentials::Params),
}

impl Grant {
    pub fn parse(params: &FormParams) -> Result<Self, OAuthError> {
        match params.require("grant_type")? {
            "client_credentials" => Ok(Grant::ClientCredentials(
                client_credentials::Params::parse(params)?,
            )),
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

/// Runs the requested grant for an authenticated client. Every outcome,
/// issued or refused, is audited before the answer goes out.
pub async fn handle(
    app: &App,
    client: &Client,
    params: &FormParams,
    meta: &RequestMeta,
) -> Result<TokenResponse, OAuthError> {
    let mut rec = AuditRecord::new(
        app.clock.now_millis(),
        Event::TokenIssuance,
        Decision::Allow,
        "",
    );
    rec.client_id = Some(client.client_id.clone());
    rec.tenant = Some(client.tenant.clone());
    meta.fill(&mut rec);
    let refused = rec.clone();
    let result = match Grant::parse(params) {
        Ok(Grant::ClientCredentials(p)) => client_credentials::handle(app, client, p, rec).await,
        Err(e) => Err(e),
    };
    match result {
        // Not answered by a refusal record: the audit log itself failed.
        Err(e @ OAuthError::TemporarilyUnavailable(_)) => Err(e),
        Err(e) => {
            let mut rec = refused;
            rec.decision = Decision::Deny.as_str().into();
            rec.reason = format!("{}: {}", e.code(), e.description());
            app.audit.record(rec).await?;
            Err(e)
        }
        ok => ok,
    }
}

/// RFC 6749 §5.1 successful response.
#[derive(Debug, Serialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: i64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub scope: String,
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

/// RFC 8707 §2: a `resource` is an absolute URI without a fragment.
pub fn parse_resource(text: &str) -> Result<String, OAuthError> {
    match url::Url::parse(text) {
        Ok(u) if u.fragment().is_none() => Ok(text.to_string()),
        _ => Err(OAuthError::InvalidTarget(
            "resource must be an absolute URI without a fragment".into(),
        )),
    }
}
