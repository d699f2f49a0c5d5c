//! The client credentials grant (RFC 6749 §4.4): a service gets a
//! short-lived access token from the **service issuer** for itself.
//! Requested audiences (`audience`, or RFC 8707 `resource`) and scopes must
//! be within the client's registration; without them the client gets every
//! audience and scope it is registered for (RFC 6749 §3.3 default).

use super::{parse_scope, parse_targets, TokenResponse};
use crate::app::App;
use crate::audit::AuditRecord;
use crate::issuer::{AccessClaims, Principal};
use crate::oauth::{describe_token, secret, FormParams, OAuthError};
use crate::store::Client;

#[derive(Debug)]
pub struct Params {
    /// `None`: the client's registered scopes.
    pub scope: Option<Vec<String>>,
    /// `audience` and `resource` values together.
    pub targets: Vec<String>,
}

impl Params {
    pub fn parse(p: &FormParams) -> Result<Self, OAuthError> {
        let scope = p.get("scope").map(parse_scope).transpose()?;
        let targets = parse_targets(p)?;
        Ok(Self { scope, targets })
    }
}

/// What will be issued, once checked against the registration.
#[derive(Debug)]
pub struct Validated {
    pub audiences: Vec<String>,
    pub scopes: Vec<String>,
    pub ttl: i64,
}

pub fn validate(app: &App, client: &Client, params: Params) -> Result<Validated, OAuthError> {
    let audiences = if params.targets.is_empty() {
        client.audiences.clone()
    } else {
        if let Some(t) = params
            .targets
            .iter()
            .find(|t| !client.audiences.contains(t))
        {
            let shown = if t.len() <= 64 { t.as_str() } else { "(value)" };
            return Err(OAuthError::InvalidTarget(
                format!("client may not obtain tokens for audience {shown:?}").into(),
            ));
        }
        params.targets
    };
    if audiences.is_empty() {
        return Err(OAuthError::InvalidTarget(
            "client is registered for no audience".into(),
        ));
    }
    let scopes = match params.scope {
        None => client.scopes.clone(),
        Some(asked) => {
            if asked.iter().any(|s| !client.scopes.contains(s)) {
                return Err(OAuthError::InvalidScope(
                    "requested scope exceeds the client's registration".into(),
                ));
            }
            asked
        }
    };
    let issuer = &app.config.issuers.service;
    let ttl = client
        .token_ttl
        .unwrap_or(issuer.token_ttl.as_secs() as i64)
        .min(issuer.max_token_ttl.as_secs() as i64);
    let ttl = app.policy.current().cap_ttl(ttl, &audiences);
    Ok(Validated {
        audiences,
        scopes,
        ttl,
    })
}

/// Validates, mints, and returns only after the issuance is audited.
/// `rec` is the issuance record [`super::handle`] started.
pub async fn handle(
    app: &App,
    client: &Client,
    params: Params,
    rec: &mut AuditRecord,
) -> Result<TokenResponse, OAuthError> {
    let validated = validate(app, client, params)?;
    issue_service_token(app, client, validated, rec, "client_credentials").await
}

/// Mints a service token for `client` itself and audits it as `reason`.
/// Also the result of exchanging a workload identity.
pub async fn issue_service_token(
    app: &App,
    client: &Client,
    validated: Validated,
    rec: &mut AuditRecord,
    reason: &str,
) -> Result<TokenResponse, OAuthError> {
    let now = app.clock.now();
    let issuer = &app.issuers.service;
    let claims = AccessClaims {
        iss: issuer.iss.clone(),
        sub: client.client_id.clone(),
        aud: validated.audiences,
        exp: now + validated.ttl,
        iat: now,
        nbf: None,
        jti: secret::random_id(),
        client_id: client.client_id.clone(),
        scope: validated.scopes.join(" "),
        principal: Principal::Service,
        tenant: client.tenant.clone(),
        groups: Vec::new(),
        act: None,
        may_act: None,
    };
    let access_token = issuer.mint(&claims)?;
    describe_token(rec, &claims);
    rec.reason = reason.into();
    app.audit.record(rec.clone()).await?;
    app.metrics.tokens_issued.inc();
    Ok(TokenResponse {
        access_token,
        issued_token_type: None,
        token_type: "Bearer",
        expires_in: validated.ttl,
        scope: claims.scope,
        credentials: None,
    })
}
