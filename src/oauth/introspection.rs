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
    if app.revocations.is_stale() {
        // Neither active nor inactive can be said; the refusal is audited.
        let mut rec = AuditRecord::new(
            app.clock.now_millis(),
            Event::Introspection,
            Decision::Deny,
            format!("revocations_stale (asked by {})", caller.client_id),
        );
        rec.client_id = Some(caller.client_id.clone());
        meta.fill(&mut rec);
        app.audit.record(rec).await?;
        return Err(OAuthError::TemporarilyUnavailable(
            "revocation state is not current, try again".into(),
        ));
    }
    let now = app.clock.now();
    let result = check_token(app, token, now);
    // The record describes the token; the caller who asked is named in the
    // reason, and stands in as client when the token is not ours to read.
    let (decision, outcome) = match &result {
        Ok(_) => (Decision::Allow, "active".to_string()),
        Err(e) => (Decision::Deny, format!("inactive: {}", e.code())),
    };
    let reason = format!("{outcome} (asked by {})", caller.client_id);
    let mut rec = AuditRecord::new(
        app.clock.now_millis(),
        Event::Introspection,
        decision,
        reason,
    );
    match &result {
        Ok(v) => describe_token(&mut rec, &v.claims),
        Err(_) => rec.client_id = Some(caller.client_id.clone()),
    }
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
