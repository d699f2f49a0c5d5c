//! Token revocation (RFC 7009). A client may revoke tokens issued to it; a
//! client registered with the `tessera:admin` scope may revoke any token.
//! Tokens that are invalid, unknown or already expired need no revocation
//! and are answered with 200 as §2.2 requires.

use crate::app::App;
use crate::audit::{AuditRecord, Decision, Event, RequestMeta};
use crate::oauth::{describe_token, OAuthError};
use crate::store::Client;

/// Scope that lets a client revoke any client's tokens.
pub const ADMIN_SCOPE: &str = "tessera:admin";

pub async fn revoke(
    app: &App,
    caller: &Client,
    token: &str,
    meta: &RequestMeta,
) -> Result<(), OAuthError> {
    let now = app.clock.now();
    let mut rec = AuditRecord::new(
        app.clock.now_millis(),
        Event::Revocation,
        Decision::Allow,
        "",
    );
    meta.fill(&mut rec);
    let verified = match app.issuers.verify(token, now) {
        Ok(v) => v,
        Err(e) => {
            rec.client_id = Some(caller.client_id.clone());
            rec.reason = format!("nothing to revoke: {}", e.code());
            app.audit.record(rec).await?;
            return Ok(());
        }
    };
    describe_token(&mut rec, &verified.claims);
    let is_admin = caller.scopes.iter().any(|s| s == ADMIN_SCOPE);
    if verified.claims.client_id != caller.client_id && !is_admin {
        rec.decision = Decision::Deny.as_str().into();
        rec.reason = format!(
            "token belongs to another client (caller {})",
            caller.client_id
        );
        app.audit.record(rec).await?;
        return Err(OAuthError::UnauthorizedClient(
            "the token was not issued to this client".into(),
        ));
    }
    if let Err(e) = app
        .revocations
        .revoke(&verified.claims.jti, verified.claims.exp, now)
        .await
    {
        tracing::error!(error = %e, "storing a revocation failed");
        rec.decision = Decision::Deny.as_str().into();
        rec.reason = format!(
            "revocation_store_unavailable (asked by {})",
            caller.client_id
        );
        // The audit log may live in the same store; its failure is the
        // caller's answer too.
        app.audit.record(rec).await?;
        return Err(OAuthError::TemporarilyUnavailable(
            "revocation could not be stored, try again".into(),
        ));
    }
    rec.reason = format!("revoked by {}", caller.client_id);
    app.audit.record(rec).await?;
    Ok(())
}
