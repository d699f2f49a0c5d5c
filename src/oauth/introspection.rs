//! Token introspection (RFC 7662). The caller has authenticated as a
//! client. Anything that is not a valid, unexpired, unrevoked token from one
//! of Tessera's issuers is `{"active": false}` and nothing else (§2.2), so
//! the answer never says *why* a token is inactive; the audit record does.

use serde::Serialize;

use crate::app::App;
use crate::audit::{AuditRecord, Decision, Event, RequestMeta};
use crate::issuer::{AccessClaims, TokenError, VerifiedToken};
use crate::oauth::{describe_token, OAuthError};
use crate::store::Client;

/// RFC 7662 §2.2 response.
#[derive(Debug, Serialize)]
pub struct IntrospectionResponse {
    pub active: bool,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub claims: Option<ActiveClaims>,
}

#[derive(Debug, Serialize)]
pub struct ActiveClaims {
    #[serde(flatten)]
    pub claims: AccessClaims,
    pub token_type: &'static str,
}

/// Verifies one of our tokens and checks revocation: the check every
/// consumer of a presented token makes.
pub fn check_token(
    app: &App,
    token: &str,
    now: i64,
) -> Result<std::sync::Arc<VerifiedToken>, TokenError> {
    let verified = app.issuers.verify(token, now)?;
    if app.revocations.is_revoked(&verified.claims.jti) {
        return Err(TokenError::Revoked);
    }
    Ok(verified)
}

pub async fn introspect(
    app: &App,
    caller: &Client,
    token: &str,
    meta: &RequestMeta,
) -> Result<IntrospectionResponse, OAuthError> {
    let now = app.clock.now();
    let result = check_token(app, token, now);
    let (decision, reason) = match &result {
        Ok(_) => (Decision::Allow, "active".to_string()),
        Err(e) => (Decision::Deny, format!("inactive: {}", e.code())),
    };
    let mut rec = AuditRecord::new(
        app.clock.now_millis(),
        Event::Introspection,
        decision,
        reason,
    );
    if let Ok(v) = &result {
        describe_token(&mut rec, &v.claims);
    }
    // The record is about the token; the caller is kept in the reason's place
    // of the client field only when the token says nothing.
    rec.client_id = rec.client_id.or_else(|| Some(caller.client_id.clone()));
    rec.reason = format!("{} (by {})", rec.reason, caller.client_id);
    meta.fill(&mut rec);
    app.audit.record(rec).await?;
    Ok(match result {
        Ok(v) => IntrospectionResponse {
            active: true,
            claims: Some(ActiveClaims {
                claims: v.claims.clone(),
                token_type: "Bearer",
            }),
        },
        Err(_) => IntrospectionResponse {
            active: false,
            claims: None,
        },
    })
}
