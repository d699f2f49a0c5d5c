//! RFC 8693 token exchange. Two exchanges are supported:
//!
//! - **Delegation.** An authenticated client (a data product) presents a
//!   person's token as `subject_token` — from Tessera's human issuer or a
//!   trusted human IdP — and gets an access token from the **human issuer**
//!   for that person, with `act` naming the client (§4.1; an `act` already
//!   on the subject token is nested inside). The client must hold a
//!   delegation for the audience; the scopes are the intersection of what
//!   was asked, what the delegation allows and what the person holds, so
//!   the client can never lend its own rights to a user (no confused
//!   deputy). `may_act` on the subject token (§4.4) is enforced, and an
//!   `actor_token` must be a service token of the client itself or of a
//!   client its delegation names.
//! - **Workload identity.** A workload presents its service-account token
//!   (from a trusted issuer of kind `workload`) and gets a service token for
//!   the client that identity is bound to, with or without client
//!   credentials.
//!
//! Subject- and actor-token problems are `invalid_grant` (RFC 6749 §5.2:
//! the presented grant is invalid, expired or untrusted).

use std::sync::Arc;

use serde_json::{json, Value};

use super::aws_credentials::{self, CredentialParams, AWS_CREDENTIALS};
use super::client_credentials::{self, issue_service_token};
use super::{parse_scope, parse_targets, TokenResponse};
use crate::app::App;
use crate::audit::AuditRecord;
use crate::config::TrustedKind;
use crate::issuer::{AccessClaims, IssuerKind, Principal, TokenError, VerifiedToken};
use crate::oauth::client_auth::Authenticated;
use crate::oauth::introspection::check_token;
use crate::oauth::{actor_chain, describe_token, secret, FormParams, OAuthError};
use crate::store::Delegation;
use crate::trusted::TokenForm;

pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

/// Token type identifiers (RFC 8693 §3).
pub const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
pub const ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
pub const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    AccessToken,
    IdToken,
    Jwt,
}

impl TokenType {
    fn parse(name: &'static str, value: &str) -> Result<Self, OAuthError> {
        match value {
            ACCESS_TOKEN => Ok(TokenType::AccessToken),
            ID_TOKEN => Ok(TokenType::IdToken),
            JWT => Ok(TokenType::Jwt),
            _ => Err(OAuthError::invalid_request(format!(
                "{name} is not a supported token type (access_token, id_token or jwt)"
            ))),
        }
    }

    pub fn urn(self) -> &'static str {
        match self {
            TokenType::AccessToken => ACCESS_TOKEN,
            TokenType::IdToken => ID_TOKEN,
            TokenType::Jwt => JWT,
        }
    }

    /// Whether this declared type can describe a token of `form`.
    fn describes(self, form: TokenForm) -> bool {
        match (self, form) {
            (TokenType::Jwt, _) | (_, TokenForm::Unknown) => true,
            (TokenType::AccessToken, f) => f == TokenForm::AccessToken,
            (TokenType::IdToken, f) => f == TokenForm::IdToken,
        }
    }
}

#[derive(Debug)]
pub struct Params {
    pub subject_token: String,
    pub subject_token_type: TokenType,
    pub actor_token: Option<(String, TokenType)>,
    /// What the response's `issued_token_type` says: access_token or jwt.
    pub requested: TokenType,
    /// Set when AWS credentials are asked for instead of a token.
    pub aws: Option<CredentialParams>,
    pub scope: Option<Vec<String>>,
    /// `audience` and `resource` values together.
    pub targets: Vec<String>,
}

impl Params {
    pub fn parse(p: &FormParams) -> Result<Self, OAuthError> {
        let subject_token = p.require("subject_token")?.to_string();
        let subject_token_type =
            TokenType::parse("subject_token_type", p.require("subject_token_type")?)?;
        let actor_token = match (p.get("actor_token"), p.get("actor_token_type")) {
            (None, None) => None,
            (Some(t), Some(ty)) => Some((t.to_string(), TokenType::parse("actor_token_type", ty)?)),
            (Some(_), None) => {
                return Err(OAuthError::invalid_request(
                    "actor_token_type is required with actor_token",
                ))
            }
            (None, Some(_)) => {
                return Err(OAuthError::invalid_request(
                    "actor_token_type was sent without actor_token",
                ))
            }
        };
        let scope = p.get("scope").map(parse_scope).transpose()?;
        let targets = parse_targets(p)?;
        let (requested, aws) =
            match p.get("requested_token_type") {
                None | Some(ACCESS_TOKEN) => (TokenType::AccessToken, None),
                Some(JWT) => (TokenType::Jwt, None),
                Some(AWS_CREDENTIALS) => (
                    TokenType::AccessToken,
                    Some(CredentialParams::parse(p, &targets, scope.as_deref())?),
                ),
                Some(_) => return Err(OAuthError::invalid_request(
                    "requested_token_type is not supported (access_token, jwt or aws-credentials)",
                )),
            };
        Ok(Self {
            subject_token,
            subject_token_type,
            actor_token,
            requested,
            aws,
            scope,
            targets,
        })
    }
}

/// Whether an exchange request presents a workload identity as its subject
/// (such a request may come without client credentials).
pub fn is_workload_exchange(app: &App, params: &FormParams) -> bool {
    params.get("grant_type") == Some(GRANT_TYPE)
        && params.get("subject_token").is_some_and(|t| {
            app.trusted
                .claimed_issuer(t)
                .is_some_and(|i| i.config.kind == TrustedKind::Workload)
        })
}

fn invalid_grant(text: impl Into<std::borrow::Cow<'static, str>>) -> OAuthError {
    OAuthError::InvalidGrant(text.into())
}

/// Verifies the subject token and says what was wrong in RFC terms.
async fn verify_subject(app: &App, token: &str) -> Result<Arc<VerifiedToken>, OAuthError> {
    app.verify_presented(token).await.map_err(|e| match e {
        TokenError::KeysUnavailable => OAuthError::TemporarilyUnavailable(
            "the subject token's issuer cannot be checked right now, try again".into(),
        ),
        e => invalid_grant(format!("subject_token is not valid: {e}")),
    })
}

pub async fn handle(
    app: &App,
    caller: Option<&Authenticated>,
    params: Params,
    rec: &mut AuditRecord,
) -> Result<TokenResponse, OAuthError> {
    // What was asked goes into the record first, so a refusal says it too.
    if !params.targets.is_empty() {
        rec.audience = Some(params.targets.join(" "));
    }
    if let Some(scope) = &params.scope {
        rec.scopes = Some(scope.join(" "));
    }
    if let Some(aws) = &params.aws {
        rec.dataset = Some(aws.dataset.clone());
        rec.permission = Some(aws.permission.as_str().into());
        rec.purpose = aws.purpose.clone();
    }
    rec.policy_version = Some(app.policy.current().version.clone());
    let subject = verify_subject(app, &params.subject_token).await?;
    rec.subject = Some(subject.claims.sub.clone());
    rec.upstream_issuer = subject.upstream.as_ref().map(|u| u.name.clone());
    if subject.claims.principal == Principal::Workload {
        return exchange_workload(app, caller, params, &subject, rec).await;
    }
    let Some(caller) = caller else {
        return Err(OAuthError::InvalidClient(
            "client authentication failed".into(),
        ));
    };
    delegate(app, caller, params, &subject, rec).await
}

fn registry_unavailable(e: anyhow::Error) -> OAuthError {
    tracing::error!(error = %e, "client registry lookup failed");
    OAuthError::TemporarilyUnavailable("client registry unavailable".into())
}

/// A workload's own identity for a service token of its bound client.
async fn exchange_workload(
    app: &App,
    caller: Option<&Authenticated>,
    params: Params,
    subject: &VerifiedToken,
    rec: &mut AuditRecord,
) -> Result<TokenResponse, OAuthError> {
    if !matches!(
        params.subject_token_type,
        TokenType::Jwt | TokenType::IdToken
    ) {
        return Err(OAuthError::invalid_request(
            "subject_token_type does not match the token: a workload identity token is a jwt",
        ));
    }
    if params.actor_token.is_some() {
        return Err(OAuthError::invalid_request(
            "actor_token is not used when exchanging a workload identity",
        ));
    }
    if params.aws.is_some() {
        return Err(invalid_grant(
            "AWS credentials are issued for people: the subject must be a person's token",
        ));
    }
    if !app.trusted.audience_accepted(subject) {
        return Err(invalid_grant(
            "subject_token is not valid: token audience is not accepted",
        ));
    }
    let now = app.clock.now();
    let claims = &subject.claims;
    let bound = app
        .clients
        .bound_client(&claims.iss, &claims.sub, now)
        .await
        .map_err(registry_unavailable)?
        .ok_or_else(|| invalid_grant("the workload identity is not bound to any client"))?;
    if caller.is_some_and(|c| c.client.client_id != bound.client.client_id) {
        return Err(invalid_grant(
            "the workload identity is bound to another client",
        ));
    }
    let client = bound.client.clone();
    rec.client_id = Some(client.client_id.clone());
    rec.tenant = Some(client.tenant.clone());
    if client.disabled {
        return Err(invalid_grant("the bound client is disabled"));
    }
    let mut validated = client_credentials::validate(
        app,
        &client,
        client_credentials::Params {
            scope: params.scope,
            targets: params.targets,
        },
    )?;
    // Never outlives the service-account token it was issued on.
    validated.ttl = validated.ttl.min(claims.exp.saturating_sub(now));
    if validated.ttl <= 0 {
        return Err(invalid_grant(
            "subject_token is not valid: token has expired",
        ));
    }
    // The record describes the service token; the workload that asked is
    // named in the reason (its issuer is in upstream_issuer).
    let reason = format!("token_exchange: workload identity {}", claims.sub);
    let mut response = issue_service_token(app, &client, validated, rec, &reason).await?;
    response.issued_token_type = Some(params.requested.urn());
    Ok(response)
}

/// The entries of a `may_act` claim (an object, or a list of them) that
/// name a client of Tessera's service issuer, as `{"sub", "iss"}` objects.
/// On Tessera's own tokens an entry without `iss` is in Tessera's namespace;
/// on an IdP's token it is in the IdP's namespace and names nothing here,
/// so it never admits a Tessera client that happens to share the name.
fn may_act_entries(may_act: &Value, service_iss: &str, own_token: bool) -> Vec<Value> {
    let one = |v: &Value| {
        let sub = v.get("sub").and_then(Value::as_str)?;
        let ours = match v.get("iss") {
            None => own_token,
            Some(i) => i.as_str() == Some(service_iss),
        };
        ours.then(|| json!({ "sub": sub, "iss": service_iss }))
    };
    match may_act {
        Value::Array(items) => items.iter().filter_map(one).collect(),
        v => one(v).into_iter().collect(),
    }
}

/// A person's token for a delegated token acting for them.
async fn delegate(
    app: &App,
    caller: &Authenticated,
    params: Params,
    subject: &VerifiedToken,
    rec: &mut AuditRecord,
) -> Result<TokenResponse, OAuthError> {
    let now = app.clock.now();
    let client = &caller.client;
    let claims = &subject.claims;
    rec.principal = Some(claims.principal.as_str().into());
    rec.tenant = Some(claims.tenant.clone());

    // Whose token is it? Only people can be acted for.
    let (form, may_act) = match (subject.own_issuer(), &subject.upstream) {
        (Some(IssuerKind::Human), _) => {
            // A token that already acts for the person may be carried one
            // step further only by the client holding it, never by any
            // service it was forwarded to.
            if claims.act.is_some() && claims.client_id != client.client_id {
                return Err(invalid_grant(
                    "subject_token is a delegated token of another client",
                ));
            }
            (
                TokenForm::AccessToken,
                claims.may_act.as_ref().map(|m| (m, true)),
            )
        }
        (Some(IssuerKind::Service), _) => {
            return Err(invalid_grant(
                "subject_token is a service token; a person's token is required",
            ))
        }
        (None, Some(up)) => {
            if !app.trusted.audience_accepted(subject) {
                return Err(invalid_grant(
                    "subject_token is not valid: token audience is not accepted",
                ));
            }
            (up.form, up.may_act.as_ref().map(|m| (m, false)))
        }
        (None, None) => return Err(invalid_grant("subject_token is not valid")),
    };
    if !params.subject_token_type.describes(form) {
        return Err(OAuthError::invalid_request(
            "subject_token_type does not match the token",
        ));
    }

    // May this client act for users at all?
    let entry = app
        .clients
        .get(&client.client_id, now)
        .await
        .map_err(registry_unavailable)?
        .ok_or_else(|| OAuthError::InvalidClient("client authentication failed".into()))?;
    let live: Vec<&Delegation> = entry
        .delegations
        .iter()
        .filter(|d| d.is_live(now))
        .collect();
    if live.is_empty() {
        return Err(OAuthError::UnauthorizedClient(
            "client may not exchange tokens for users".into(),
        ));
    }

    // For what: a dataset (AWS credentials), or audiences. Only the
    // delegations covering it count from here on, for the actor too.
    let (targets, covering): (Vec<String>, Vec<Delegation>) = match &params.aws {
        Some(asked) => (
            params.targets.clone(),
            live.iter()
                .filter(|d| d.datasets.contains(&asked.dataset))
                .map(|d| (*d).clone())
                .collect(),
        ),
        None => {
            let targets = if params.targets.is_empty() {
                let mut all: Vec<&String> = live.iter().flat_map(|d| &d.audiences).collect();
                all.sort();
                all.dedup();
                match all.as_slice() {
                    [one] => vec![(*one).clone()],
                    [] => {
                        return Err(OAuthError::InvalidTarget(
                            "client may not obtain delegated tokens for any audience".into(),
                        ))
                    }
                    _ => {
                        return Err(OAuthError::invalid_request(
                            "audience or resource is required: the client's delegations \
                             name more than one audience",
                        ))
                    }
                }
            } else {
                params.targets.clone()
            };
            rec.audience = Some(targets.join(" "));
            let covering: Vec<Delegation> = live
                .iter()
                .filter(|d| targets.iter().all(|t| d.audiences.contains(t)))
                .map(|d| (*d).clone())
                .collect();
            if covering.is_empty() {
                return Err(OAuthError::InvalidTarget(
                    "client may not obtain delegated tokens for this audience".into(),
                ));
            }
            (targets, covering)
        }
    };

    // Who is acting: the client, or the service its actor_token names.
    // Another client acts only within the delegations that name it.
    let mut covering = covering;
    let actor = match &params.actor_token {
        None => client.client_id.clone(),
        Some((token, ty)) => {
            if *ty == TokenType::IdToken {
                return Err(OAuthError::invalid_request(
                    "actor_token_type does not match the token: an actor token is an access token",
                ));
            }
            let verified = check_token(app, token, now)
                .map_err(|e| invalid_grant(format!("actor_token is not valid: {e}")))?;
            if verified.own_issuer() != Some(IssuerKind::Service) {
                return Err(invalid_grant("actor_token must be a service token"));
            }
            let owner = &verified.claims.client_id;
            if *owner != client.client_id {
                covering.retain(|d| d.actors.contains(owner));
                if covering.is_empty() {
                    return Err(invalid_grant(
                        "actor_token belongs to another client that may not act beside \
                         this one for this target",
                    ));
                }
                // A client disabled since its token was issued acts no more.
                let acting = app
                    .clients
                    .get(owner, now)
                    .await
                    .map_err(registry_unavailable)?;
                if acting.is_none_or(|c| c.client.disabled) {
                    return Err(invalid_grant("actor_token belongs to a disabled client"));
                }
            }
            owner.clone()
        }
    };
    let service_iss = &app.issuers.service.iss;
    let may_act = match may_act {
        None => None,
        Some((claim, own_token)) => {
            let entries = may_act_entries(claim, service_iss, own_token);
            if !entries
                .iter()
                .any(|e| e.get("sub").and_then(Value::as_str) == Some(actor.as_str()))
            {
                return Err(invalid_grant(
                    "the subject token's may_act does not allow this actor",
                ));
            }
            // Carried on, so it binds the next exchange of this token too.
            Some(match <[Value; 1]>::try_from(entries) {
                Ok([one]) => one,
                Err(many) => Value::Array(many),
            })
        }
    };
    let mut act = json!({ "sub": actor });
    if let Some(previous) = &claims.act {
        act["act"] = previous.clone();
    }
    let chain = actor_chain(Some(&act));
    rec.actor = Some(chain.join(" "));
    if chain.len() > app.config.oauth.max_delegation_depth {
        return Err(invalid_grant(format!(
            "the delegation chain would be longer than {} actors",
            app.config.oauth.max_delegation_depth
        )));
    }

    if let Some(asked) = params.aws {
        return aws_credentials::issue(app, caller, subject, &covering, asked, rec).await;
    }

    // Scopes: asked ∩ delegation ∩ what the person holds.
    let mut allowed: Vec<String> = Vec::new();
    for d in &covering {
        for s in &d.scopes {
            if !allowed.contains(s) {
                allowed.push(s.clone());
            }
        }
    }
    let scopes: Vec<String> = match params.scope {
        Some(asked) => {
            if let Some(s) = asked.iter().find(|s| !allowed.contains(s)) {
                let shown = if s.len() <= 64 { s.as_str() } else { "(value)" };
                return Err(OAuthError::InvalidScope(
                    format!("the client may not obtain scope {shown:?} for users").into(),
                ));
            }
            if let Some(s) = asked.iter().find(|s| !claims.has_scope(s)) {
                let shown = if s.len() <= 64 { s.as_str() } else { "(value)" };
                return Err(OAuthError::InvalidScope(
                    format!("the user does not hold scope {shown:?}").into(),
                ));
            }
            asked
        }
        None => {
            let held: Vec<String> = allowed
                .iter()
                .filter(|s| claims.has_scope(s))
                .cloned()
                .collect();
            // Delegations that name scopes, none of which the person holds:
            // an empty intersection, not an unscoped token.
            if held.is_empty() && !allowed.is_empty() {
                return Err(OAuthError::InvalidScope(
                    "the user holds none of the scopes the client may obtain for users".into(),
                ));
            }
            held
        }
    };

    // Lifetime: the issuer's, capped by the policy for each audience and by
    // the subject token (a delegation never outlives the person's proof).
    let human = &app.config.issuers.human;
    let base = human.token_ttl.min(human.max_token_ttl).as_secs() as i64;
    let ttl = app
        .policy
        .current()
        .cap_ttl(base, &targets)
        .min(claims.exp.saturating_sub(now));
    if ttl <= 0 {
        return Err(invalid_grant(
            "subject_token is not valid: token has expired",
        ));
    }

    let issuer = &app.issuers.human;
    let minted = AccessClaims {
        iss: issuer.iss.clone(),
        sub: claims.sub.clone(),
        aud: targets,
        exp: now + ttl,
        iat: now,
        nbf: None,
        jti: secret::random_id(),
        client_id: client.client_id.clone(),
        scope: scopes.join(" "),
        principal: Principal::Human,
        tenant: claims.tenant.clone(),
        groups: claims.groups.clone(),
        act: Some(act),
        may_act,
    };
    let access_token = issuer.mint(&minted)?;
    describe_token(rec, &minted);
    rec.reason = format!("token_exchange: delegated by {}", caller.method.as_str());
    app.audit.record(rec.clone()).await?;
    app.metrics.tokens_issued.inc();
    Ok(TokenResponse {
        access_token,
        issued_token_type: Some(params.requested.urn()),
        token_type: "Bearer",
        expires_in: ttl,
        scope: minted.scope,
        credentials: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn may_act_entries_are_read_in_tessera_s_namespace_only() {
        let iss = "https://t/issuers/service";
        let subs = |v: Value, own| -> Vec<String> {
            may_act_entries(&v, iss, own)
                .iter()
                .map(|e| e["sub"].as_str().unwrap().to_string())
                .collect()
        };
        // Without iss: ours on Tessera's tokens, the IdP's on an IdP's.
        assert_eq!(subs(json!({"sub": "app"}), true), ["app"]);
        assert!(subs(json!({"sub": "app"}), false).is_empty());
        assert_eq!(subs(json!({"sub": "app", "iss": iss}), false), ["app"]);
        assert!(subs(json!({"sub": "app", "iss": "https://x"}), true).is_empty());
        assert_eq!(
            subs(json!([{"sub": "x", "iss": iss}, {"sub": "app"}]), false),
            ["x"]
        );
        assert!(subs(json!("app"), true).is_empty());
        assert!(subs(json!({"sub": 7}), true).is_empty());
        // What is carried on names the issuer explicitly.
        assert_eq!(
            may_act_entries(&json!({"sub": "app"}), iss, true),
            [json!({"sub": "app", "iss": iss})]
        );
    }

    #[test]
    fn declared_types_against_forms() {
        assert!(TokenType::Jwt.describes(TokenForm::IdToken));
        assert!(TokenType::AccessToken.describes(TokenForm::Unknown));
        assert!(!TokenType::IdToken.describes(TokenForm::AccessToken));
        assert!(!TokenType::AccessToken.describes(TokenForm::IdToken));
    }
}
