//! OAuth 2.0: client authentication, the grants of the token endpoint,
//! introspection (RFC 7662) and revocation (RFC 7009), as plain functions
//! over [`crate::app::App`]; the HTTP adapters live in [`crate::http`].

pub mod client_auth;
pub mod client_cache;
pub mod error;
pub mod grants;
pub mod introspection;
pub mod params;
pub mod revoke;
pub mod secret;

pub use error::OAuthError;
pub use params::FormParams;

use crate::audit::AuditRecord;
use crate::issuer::AccessClaims;

/// The acting party of a delegated token: `act.sub` (RFC 8693 §4.1).
pub fn actor(claims: &AccessClaims) -> Option<&str> {
    claims.act.as_ref()?.get("sub")?.as_str()
}

/// The whole actor chain, current actor first: `act.sub`, then the
/// nested `act.act.sub`, and so on.
pub fn actor_chain(act: Option<&serde_json::Value>) -> Vec<String> {
    let mut chain = Vec::new();
    let mut next = act;
    while let Some(a) = next {
        chain.push(
            a.get("sub")
                .and_then(|s| s.as_str())
                .unwrap_or("?")
                .to_string(),
        );
        next = a.get("act");
    }
    chain
}

/// Copies a token's identity into an audit record.
pub fn describe_token(rec: &mut AuditRecord, claims: &AccessClaims) {
    rec.client_id = Some(claims.client_id.clone());
    rec.subject = Some(claims.sub.clone());
    rec.principal = Some(claims.principal.as_str().into());
    rec.tenant = Some(claims.tenant.clone());
    rec.audience = Some(claims.aud.join(" "));
    rec.scopes = Some(claims.scope.clone());
    rec.jti = Some(claims.jti.clone());
    if claims.act.is_some() {
        rec.actor = Some(actor_chain(claims.act.as_ref()).join(" "));
    }
}
