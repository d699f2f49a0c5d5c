//! Trusted upstream issuers: tokens Tessera did not mint but accepts —
//! ID and access tokens from the company IdP (people) and service-account
//! tokens from Kubernetes clusters (workloads). A verified upstream token
//! becomes a [`VerifiedToken`] whose claims are mapped onto Tessera's
//! (`sub`, `tenant`, `scope`, `principal`), so the policy, the audit log and
//! token exchange treat it like any other caller; the audience is left to
//! the caller to check, since it differs by use (exchange, client
//! authentication, a route).

pub mod keys;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::clock::Clock;
use crate::config::{TrustedIssuerConfig, TrustedKind};
use crate::issuer::cache::VerifiedCache;
use crate::issuer::{AccessClaims, Principal, TokenError, TokenIssuer, VerifiedToken};
use crate::jose::{JwsError, Unverified};
use keys::{KeyCache, KeyError};

/// What a presented JWT claims to be, as far as its header and claims tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenForm {
    /// `typ: at+jwt` (RFC 9068), or a `typ: Bearer` claim (Keycloak).
    AccessToken,
    /// Carries a claim only ID tokens have (`nonce`, `at_hash`, `c_hash`),
    /// or a `typ: ID` claim.
    IdToken,
    /// A plain JWT that could be either.
    Unknown,
}

impl TokenForm {
    fn classify(header_typ: Option<&str>, claims: &Map<String, Value>) -> Self {
        let typ_claim = claims.get("typ").and_then(Value::as_str);
        if header_typ.is_some_and(|t| {
            t.eq_ignore_ascii_case("at+jwt") || t.eq_ignore_ascii_case("application/at+jwt")
        }) || typ_claim.is_some_and(|t| t.eq_ignore_ascii_case("bearer"))
        {
            TokenForm::AccessToken
        } else if typ_claim.is_some_and(|t| t.eq_ignore_ascii_case("id"))
            || ["nonce", "at_hash", "c_hash"]
                .iter()
                .any(|c| claims.contains_key(*c))
        {
            TokenForm::IdToken
        } else {
            TokenForm::Unknown
        }
    }
}

/// What an upstream token says beyond Tessera's own claims.
#[derive(Debug, Clone)]
pub struct UpstreamClaims {
    /// The trusted issuer's configured name.
    pub name: String,
    pub kind: TrustedKind,
    pub form: TokenForm,
    /// As the IdP names them (`group_scopes` keys); the mapped claims'
    /// groups carry `subject_prefix`.
    pub groups: Vec<String>,
    pub email: Option<String>,
    /// RFC 8693 §4.4: who may act for this subject.
    pub may_act: Option<Value>,
}

#[derive(Debug)]
pub struct TrustedIssuer {
    pub config: TrustedIssuerConfig,
    pub keys: Arc<KeyCache>,
}

/// Every configured trusted issuer plus a cache of verified upstream tokens.
pub struct TrustedIssuers {
    pub issuers: Vec<Arc<TrustedIssuer>>,
    generation: Arc<AtomicU64>,
    cache: VerifiedCache<VerifiedToken>,
    max_token_bytes: usize,
    skew: i64,
    /// Most actors an upstream `act` chain may name.
    max_act_depth: usize,
    clock: Arc<dyn Clock>,
}

/// A string claim that is safe to put into headers and audit records.
fn plain(value: Option<&Value>) -> Option<String> {
    value
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= 512 && !s.chars().any(char::is_control))
        .map(str::to_string)
}

/// A claim that is a string or an array of strings (`aud`, `groups`, `scp`).
fn strings(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

impl std::fmt::Debug for TrustedIssuers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustedIssuers")
            .field("issuers", &self.issuers)
            .finish()
    }
}

/// An IdP's token for an application rather than a person: Azure AD's
/// `idtyp: app`; Auth0's `gty: client-credentials` and `…@clients`
/// subjects; Keycloak's `service-account-…` users; or any
/// client-credentials token whose subject is the client itself (`azp` or
/// `client_id` equal to it, as Keycloak, Okta and Auth0 issue them).
fn is_app_only(claims: &Map<String, Value>, subject: &str) -> bool {
    let text = |c: &str| claims.get(c).and_then(Value::as_str);
    let subjects = [Some(subject), text("sub")];
    text("idtyp") == Some("app")
        || strings(claims.get("gty"))
            .iter()
            .any(|g| g == "client-credentials")
        || subjects.iter().flatten().any(|s| s.ends_with("@clients"))
        || text("preferred_username").is_some_and(|u| u.starts_with("service-account-"))
        || ["azp", "client_id"]
            .iter()
            .any(|c| text(c) == Some(subject))
}

/// RFC 8725 §3.11: a JWT typed as something else (a security event, a
/// logout token, a DPoP proof…) must never pass for an access or ID token,
/// even when the IdP signs it with the same key. `application/` may be
/// left off (RFC 7515 §4.1.9).
fn typ_accepted(typ: Option<&str>) -> bool {
    typ.is_none_or(|t| {
        let t = t.to_ascii_lowercase();
        matches!(
            t.strip_prefix("application/").unwrap_or(&t),
            "jwt" | "at+jwt"
        )
    })
}

/// An upstream `act` chain (RFC 8693 §4.1) with every `sub` cleaned and
/// namespaced. A chain that cannot be read (not an object, no usable
/// `sub`, longer than `max_depth` actors) makes the token invalid: dropping
/// it would present a delegated token as the person's own.
fn upstream_act(
    act: Option<&Value>,
    foreign: &dyn Fn(String) -> String,
    max_depth: usize,
) -> Result<Option<Value>, TokenError> {
    let mut subs = Vec::new();
    let mut next = act;
    while let Some(a) = next {
        if subs.len() == max_depth {
            return Err(TokenError::BadActor);
        }
        let a = a.as_object().ok_or(TokenError::BadActor)?;
        subs.push(foreign(plain(a.get("sub")).ok_or(TokenError::BadActor)?));
        next = a.get("act");
    }
    Ok(subs.into_iter().rev().fold(None, |inner, sub| {
        let mut out = serde_json::json!({ "sub": sub });
        if let Some(inner) = inner {
            out["act"] = inner;
        }
        Some(out)
    }))
}

impl TrustedIssuers {
    pub fn load(
        configs: &[TrustedIssuerConfig],
        max_token_bytes: usize,
        skew: i64,
        max_act_depth: usize,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let generation = Arc::new(AtomicU64::new(1));
        let issuers = configs
            .iter()
            .map(|c| {
                Arc::new(TrustedIssuer {
                    config: c.clone(),
                    keys: Arc::new(KeyCache::new(c.clone(), generation.clone(), clock.clone())),
                })
            })
            .collect();
        Self {
            issuers,
            generation,
            cache: VerifiedCache::new(65_536),
            max_token_bytes,
            skew,
            max_act_depth,
            clock,
        }
    }

    pub fn by_iss(&self, iss: &str) -> Option<&Arc<TrustedIssuer>> {
        self.issuers.iter().find(|t| t.config.issuer == iss)
    }

    pub fn by_name(&self, name: &str) -> Option<&Arc<TrustedIssuer>> {
        self.issuers.iter().find(|t| t.config.name == name)
    }

    /// The trusted issuer a token names in `iss`, read without any check:
    /// only to choose which issuer verifies it.
    pub fn claimed_issuer(&self, token: &str) -> Option<&Arc<TrustedIssuer>> {
        let parsed = Unverified::parse(token, self.max_token_bytes).ok()?;
        let claims: Map<String, Value> = parsed.claims().ok()?;
        self.by_iss(claims.get("iss")?.as_str()?)
    }

    /// Verifies an upstream token: issuer, algorithm, header `typ`,
    /// signature, `exp`, `nbf`, `iat` and its age, the required claims, that
    /// a person's token is not an application's, the tenant allow-list,
    /// `act`, and the claim mapping. Not the audience: see the module
    /// comment.
    pub async fn verify(&self, token: &str) -> Result<Arc<VerifiedToken>, TokenError> {
        if token.len() > self.max_token_bytes {
            return Err(JwsError::TooLarge.into());
        }
        let now = self.clock.now();
        let generation = self.generation.load(Ordering::Relaxed);
        let digest = VerifiedCache::<VerifiedToken>::digest(token);
        if let Some(hit) = self.cache.get(&digest, now, generation) {
            // A token verified earlier passes only while its issuer's keys
            // are still usable: past `max_staleness` nothing does.
            let usable = hit
                .upstream
                .as_ref()
                .and_then(|u| self.by_name(&u.name))
                .is_some_and(|t| t.keys.is_usable(self.clock.now_millis()));
            if usable {
                return Ok(hit);
            }
        }
        let parsed = Unverified::parse(token, self.max_token_bytes)?;
        let unverified: Map<String, Value> = parsed.claims()?;
        let issuer = unverified
            .get("iss")
            .and_then(Value::as_str)
            .and_then(|iss| self.by_iss(iss))
            .ok_or(TokenError::UntrustedIssuer)?;
        let cfg = &issuer.config;
        if !cfg.algorithms.contains(&parsed.alg) {
            return Err(JwsError::UnsupportedAlg.into());
        }
        if !typ_accepted(parsed.header.typ.as_deref()) {
            return Err(TokenError::WrongType);
        }
        let keys = issuer
            .keys
            .keys_for(parsed.header.kid.as_deref(), parsed.alg)
            .await
            .map_err(|e| match e {
                KeyError::Unknown => TokenError::Jws(JwsError::UnknownKey),
                KeyError::Unavailable => TokenError::KeysUnavailable,
            })?;
        let claims: Map<String, Value> = keys
            .iter()
            .find_map(|k| parsed.verify(k).ok())
            .ok_or(JwsError::BadSignature)?;
        if claims.get("iss").and_then(Value::as_str) != Some(cfg.issuer.as_str()) {
            return Err(TokenError::UntrustedIssuer);
        }
        let int = |name: &str| claims.get(name).and_then(Value::as_i64);
        let (Some(exp), Some(iat)) = (int("exp"), int("iat")) else {
            return Err(TokenError::MissingClaim);
        };
        // The IdP's numbers are untrusted: saturating arithmetic, so that an
        // `exp` near i64::MAX or a hugely negative `iat` cannot overflow.
        let skew = self.skew;
        if exp.saturating_add(skew) <= now {
            return Err(TokenError::Expired);
        }
        let latest = now.saturating_add(skew);
        if int("nbf").unwrap_or(iat) > latest || iat > latest {
            return Err(TokenError::NotYetValid);
        }
        let max_age = i64::try_from(cfg.max_token_age.as_secs()).unwrap_or(i64::MAX);
        if now.saturating_sub(iat) > max_age.saturating_add(skew) {
            return Err(TokenError::TooOld);
        }
        if cfg
            .required_claims
            .iter()
            .any(|c| claims.get(c).is_none_or(Value::is_null))
        {
            return Err(TokenError::MissingClaim);
        }
        let subject = plain(claims.get(&cfg.claims.subject)).ok_or(TokenError::MissingClaim)?;
        if cfg.kind == TrustedKind::Human && is_app_only(&claims, &subject) {
            return Err(TokenError::NotAPerson);
        }
        // A person must belong to a tenant. A workload's tenant is its bound
        // client's wherever it gets a token; a token taken directly at a
        // route may have none (and then fails any `tenants` allow-list).
        let tenant =
            match plain(claims.get(&cfg.claims.tenant)).or_else(|| cfg.default_tenant.clone()) {
                Some(t) => t,
                None if cfg.kind == TrustedKind::Workload => String::new(),
                None => return Err(TokenError::MissingClaim),
            };
        if !cfg.tenants.is_empty() && !cfg.tenants.contains(&tenant) {
            return Err(TokenError::TenantNotAccepted);
        }
        let groups = strings(claims.get(&cfg.claims.groups));
        let mut scopes: BTreeSet<String> = claims
            .get("scope")
            .and_then(Value::as_str)
            .map(|s| {
                s.split(' ')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        scopes.extend(strings(claims.get("scp")));
        scopes.extend(cfg.default_scopes.iter().cloned());
        for g in &groups {
            if let Some(extra) = cfg.group_scopes.get(g) {
                scopes.extend(extra.iter().cloned());
            }
        }
        // Client ids and actors named by the IdP are the IdP's, not Tessera
        // clients: they are namespaced by the issuer's name, so they can
        // never match a Tessera client id, allow-list or delegation.
        let foreign = |id: String| format!("{}:{id}", cfg.name);
        let act = upstream_act(claims.get("act"), &foreign, self.max_act_depth)?;
        let form = TokenForm::classify(parsed.header.typ.as_deref(), &claims);
        let mapped = AccessClaims {
            iss: cfg.issuer.clone(),
            sub: format!("{}{subject}", cfg.subject_prefix),
            aud: strings(claims.get("aud")),
            exp,
            iat,
            nbf: int("nbf"),
            jti: plain(claims.get("jti")).unwrap_or_default(),
            client_id: plain(claims.get("client_id"))
                .or_else(|| plain(claims.get("azp")))
                .map(foreign)
                .unwrap_or_default(),
            scope: scopes.into_iter().collect::<Vec<_>>().join(" "),
            principal: match cfg.kind {
                TrustedKind::Human => Principal::Human,
                TrustedKind::Workload => Principal::Workload,
            },
            tenant,
            // Prefixed like the subject: a dataset grant to group `g` of one
            // IdP is not held by another IdP's group of the same name.
            groups: groups
                .iter()
                .map(|g| format!("{}{g}", cfg.subject_prefix))
                .collect(),
            act,
            // The IdP's may_act is in its own namespace: kept apart, in `upstream`.
            may_act: None,
        };
        let verified = Arc::new(VerifiedToken {
            issuer: TokenIssuer::Trusted(cfg.name.clone()),
            kid: parsed.header.kid.clone().unwrap_or_default(),
            claims: mapped,
            upstream: Some(UpstreamClaims {
                name: cfg.name.clone(),
                kind: cfg.kind,
                form,
                groups,
                email: plain(claims.get(&cfg.claims.email)),
                may_act: claims.get("may_act").cloned(),
            }),
        });
        self.cache.insert(
            digest,
            verified.clone(),
            exp.min(iat.saturating_add(max_age)),
            now,
            generation,
        );
        Ok(verified)
    }

    /// Whether `token`'s audience includes one this issuer accepts for
    /// exchange and client authentication.
    pub fn audience_accepted(&self, token: &VerifiedToken) -> bool {
        let Some(up) = &token.upstream else {
            return false;
        };
        self.by_name(&up.name).is_some_and(|t| {
            token
                .claims
                .aud
                .iter()
                .any(|a| t.config.audiences.contains(a))
        })
    }

    /// Refreshes every issuer whose keys are due; run by the server.
    pub async fn run_refresh(self: Arc<Self>) {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = self.clock.now_millis();
            let due: Vec<_> = self
                .issuers
                .iter()
                .filter(|t| t.keys.refresh_due(now))
                .cloned()
                .collect();
            for t in due {
                tokio::spawn(async move { t.keys.refresh().await });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_forms() {
        let m = |v: Value| v.as_object().unwrap().clone();
        let plain_jwt = m(serde_json::json!({"sub": "a"}));
        assert_eq!(
            TokenForm::classify(Some("at+jwt"), &plain_jwt),
            TokenForm::AccessToken
        );
        assert_eq!(
            TokenForm::classify(Some("JWT"), &plain_jwt),
            TokenForm::Unknown
        );
        assert_eq!(
            TokenForm::classify(Some("JWT"), &m(serde_json::json!({"nonce": "n"}))),
            TokenForm::IdToken
        );
        assert_eq!(
            TokenForm::classify(None, &m(serde_json::json!({"typ": "Bearer"}))),
            TokenForm::AccessToken
        );
        assert_eq!(
            TokenForm::classify(None, &m(serde_json::json!({"typ": "ID"}))),
            TokenForm::IdToken
        );
    }

    #[test]
    fn only_jwt_and_access_token_types_are_accepted() {
        for ok in [
            None,
            Some("JWT"),
            Some("jwt"),
            Some("at+jwt"),
            Some("application/AT+JWT"),
        ] {
            assert!(typ_accepted(ok), "{ok:?}");
        }
        for bad in [
            "secevent+jwt",
            "logout+jwt",
            "dpop+jwt",
            "JOSE",
            "",
            "application/",
        ] {
            assert!(!typ_accepted(Some(bad)), "{bad}");
        }
    }

    #[test]
    fn application_tokens_are_recognised() {
        let m = |v: Value| v.as_object().unwrap().clone();
        assert!(!is_app_only(
            &m(serde_json::json!({"sub": "alice", "azp": "portal"})),
            "alice"
        ));
        for app in [
            serde_json::json!({"sub": "x", "gty": "client-credentials"}),
            serde_json::json!({"sub": "x", "gty": ["client-credentials"]}),
            serde_json::json!({"sub": "abc@clients"}),
            serde_json::json!({"sub": "x", "preferred_username": "service-account-batch"}),
            serde_json::json!({"sub": "x", "idtyp": "app"}),
            serde_json::json!({"sub": "x", "client_id": "x"}),
        ] {
            let sub = app["sub"].as_str().unwrap().to_string();
            assert!(is_app_only(&m(app), &sub));
        }
    }

    #[test]
    fn act_chains_are_namespaced_and_malformed_ones_refused() {
        let foreign = |id: String| format!("corp:{id}");
        let act = |v: Value| upstream_act(Some(&v), &foreign, 2);
        assert_eq!(upstream_act(None, &foreign, 2), Ok(None));
        assert_eq!(
            act(serde_json::json!({"sub": "a", "act": {"sub": "b"}})),
            Ok(Some(
                serde_json::json!({"sub": "corp:a", "act": {"sub": "corp:b"}})
            ))
        );
        for bad in [
            serde_json::json!("a"),
            serde_json::json!(null),
            serde_json::json!({}),
            serde_json::json!({"sub": ""}),
            serde_json::json!({"sub": 7}),
            serde_json::json!({"sub": "a", "act": "b"}),
            serde_json::json!({"sub": "a", "act": {"sub": null}}),
            serde_json::json!({"sub": "a", "act": {"sub": "b", "act": {"sub": "c"}}}),
        ] {
            assert_eq!(act(bad.clone()), Err(TokenError::BadActor), "{bad}");
        }
    }
}
