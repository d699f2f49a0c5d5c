//! Tessera's own issuers: the **human** issuer (`{public_url}/issuers/human`)
//! and the **service** issuer (`{public_url}/issuers/service`), each with
//! its own key ring, and the verification of the RFC 9068 access tokens
//! they mint. A token signed by one issuer's key never validates as the
//! other's: the key is found by `kid` in exactly one ring, and the token's
//! `iss` and `principal` must then agree with that ring's issuer.

pub mod cache;
pub mod claims;
pub mod keys;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

pub use claims::{AccessClaims, Principal};

use crate::config::{Config, IssuerConfig};
use crate::jose::{Alg, JwkSet, JwsError, Unverified};
use cache::VerifiedCache;
use keys::KeyRing;

/// JWT `typ` of access tokens (RFC 9068 §2.1).
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";

/// Clock skew tolerated on `iat`/`nbf` of our own tokens, and added to the
/// grace of retired keys.
pub const LEEWAY: i64 = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IssuerKind {
    Human,
    Service,
}

impl IssuerKind {
    pub const ALL: [IssuerKind; 2] = [IssuerKind::Human, IssuerKind::Service];

    /// Path segment under `/issuers/` and folder under `keys/`.
    pub fn name(self) -> &'static str {
        match self {
            IssuerKind::Human => "human",
            IssuerKind::Service => "service",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "human" => Some(IssuerKind::Human),
            "service" => Some(IssuerKind::Service),
            _ => None,
        }
    }
}

/// Why a presented access token is not valid. Display texts go into
/// `error_description` and audit reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error(transparent)]
    Jws(#[from] JwsError),
    /// Own tokens: not `at+jwt`; upstream tokens: an explicit `typ` other
    /// than a JWT or an access token (RFC 8725 §3.11).
    #[error("token type (typ) is not accepted")]
    WrongType,
    #[error("token was not issued by a Tessera issuer")]
    WrongIssuer,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token has been revoked")]
    Revoked,
    #[error("token issuer is not trusted")]
    UntrustedIssuer,
    #[error("the token issuer's keys cannot be fetched right now")]
    KeysUnavailable,
    #[error("token was issued too long ago")]
    TooOld,
    #[error("token lacks a required claim")]
    MissingClaim,
    #[error("token audience is not accepted")]
    WrongAudience,
    #[error("token stands for an application, not a person")]
    NotAPerson,
    /// An upstream `act` that is not a chain of actors with a `sub` each,
    /// or longer than `oauth.max_delegation_depth`.
    #[error("token act claim is not valid")]
    BadActor,
    /// The upstream token's tenant is not in its issuer's `tenants`.
    #[error("token tenant is not accepted from this issuer")]
    TenantNotAccepted,
}

impl TokenError {
    /// Short machine-readable reason for audit records and deny bodies.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Jws(JwsError::TooLarge) => "token_too_large",
            TokenError::Jws(JwsError::UnsupportedAlg) => "unsupported_alg",
            TokenError::Jws(JwsError::UnknownKey) => "unknown_key",
            TokenError::Jws(JwsError::BadSignature) => "bad_signature",
            TokenError::Jws(_) => "malformed_token",
            TokenError::WrongType => "wrong_token_type",
            TokenError::WrongIssuer => "wrong_issuer",
            TokenError::Expired => "token_expired",
            TokenError::NotYetValid => "token_not_yet_valid",
            TokenError::Revoked => "token_revoked",
            TokenError::UntrustedIssuer => "untrusted_issuer",
            TokenError::KeysUnavailable => "issuer_keys_unavailable",
            TokenError::TooOld => "token_too_old",
            TokenError::MissingClaim => "missing_claim",
            TokenError::WrongAudience => "wrong_audience",
            TokenError::NotAPerson => "not_a_person",
            TokenError::BadActor => "invalid_act",
            TokenError::TenantNotAccepted => "tenant_not_accepted",
        }
    }
}

/// Who signed a verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenIssuer {
    /// One of Tessera's issuers.
    Own(IssuerKind),
    /// A trusted upstream issuer, by configured name.
    Trusted(String),
}

/// A token whose signature, issuer, type and lifetime have been checked.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    pub issuer: TokenIssuer,
    pub kid: String,
    /// Tessera's claims; for an upstream token, mapped from its own.
    pub claims: AccessClaims,
    /// Set for tokens from a trusted issuer.
    pub upstream: Option<crate::trusted::UpstreamClaims>,
}

impl VerifiedToken {
    /// The Tessera issuer that minted it, if any.
    pub fn own_issuer(&self) -> Option<IssuerKind> {
        match self.issuer {
            TokenIssuer::Own(kind) => Some(kind),
            TokenIssuer::Trusted(_) => None,
        }
    }
}

/// One issuer: its identifier, lifetimes and key ring.
#[derive(Debug)]
pub struct Issuer {
    pub kind: IssuerKind,
    /// The `iss` value: `{public_url}/issuers/{name}`.
    pub iss: String,
    pub config: IssuerConfig,
    dir: PathBuf,
    ring: RwLock<Arc<KeyRing>>,
}

impl Issuer {
    fn grace(&self) -> i64 {
        self.config.max_token_ttl.as_secs() as i64 + LEEWAY
    }

    pub fn ring(&self) -> Arc<KeyRing> {
        self.ring.read().clone()
    }

    pub fn jwks(&self, now: i64) -> JwkSet {
        JwkSet {
            keys: self.ring().published(now),
        }
    }

    /// Signs `claims` with the key active at `claims.iat`.
    pub fn mint(&self, claims: &AccessClaims) -> anyhow::Result<String> {
        let ring = self.ring();
        let key = ring.signing_at(claims.iat).ok_or_else(|| {
            anyhow::anyhow!("issuer {} has no active signing key", self.kind.name())
        })?;
        key.signing.sign(ACCESS_TOKEN_TYP, claims)
    }

    /// Re-reads the key folder; returns whether the set of keys changed.
    fn reload(&self) -> anyhow::Result<bool> {
        let ring = KeyRing::from_files(keys::read_dir(&self.dir)?, self.grace())?;
        let changed = ring.schedule() != self.ring().schedule();
        if changed {
            *self.ring.write() = Arc::new(ring);
        }
        Ok(changed)
    }
}

/// Both issuers plus the verified-token cache.
#[derive(Debug)]
pub struct Issuers {
    pub human: Issuer,
    pub service: Issuer,
    max_token_bytes: usize,
    generation: AtomicU64,
    cache: VerifiedCache<VerifiedToken>,
}

impl Issuers {
    /// Loads both key rings from `keys.dir`, generating a first key for an
    /// issuer that has none active.
    pub fn load(config: &Config, now: i64) -> anyhow::Result<Self> {
        let make = |kind: IssuerKind, cfg: &IssuerConfig| -> anyhow::Result<Issuer> {
            let dir = config.keys.dir.join(kind.name());
            keys::ensure_active(&dir, config.keys.algorithm, now)?;
            let issuer = Issuer {
                kind,
                iss: format!("{}/issuers/{}", config.server.public_url, kind.name()),
                config: cfg.clone(),
                dir,
                ring: RwLock::new(Arc::new(KeyRing::default())),
            };
            issuer.reload()?;
            Ok(issuer)
        };
        Ok(Self {
            human: make(IssuerKind::Human, &config.issuers.human)?,
            service: make(IssuerKind::Service, &config.issuers.service)?,
            max_token_bytes: config.server.max_token_bytes,
            generation: AtomicU64::new(1),
            cache: VerifiedCache::new(65_536),
        })
    }

    pub fn get(&self, kind: IssuerKind) -> &Issuer {
        match kind {
            IssuerKind::Human => &self.human,
            IssuerKind::Service => &self.service,
        }
    }

    /// Re-reads both key folders; a change empties the verified cache.
    pub fn reload(&self) -> anyhow::Result<()> {
        let mut changed = false;
        let mut failure = None;
        for kind in IssuerKind::ALL {
            match self.get(kind).reload() {
                Ok(c) => changed |= c,
                Err(e) => failure = Some(e),
            }
        }
        // Even if one folder failed to load, a change in the other must
        // empty the cache (a removed key must stop verifying at once).
        if changed {
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
        failure.map_or(Ok(()), Err)
    }

    /// Algorithms of the keys currently published, for discovery documents.
    pub fn algorithms(&self, kind: IssuerKind, now: i64) -> Vec<Alg> {
        let mut algs: Vec<Alg> = Vec::new();
        for key in self
            .get(kind)
            .ring()
            .keys
            .iter()
            .filter(|k| k.is_published(now))
        {
            if !algs.contains(&key.alg) {
                algs.push(key.alg);
            }
        }
        algs
    }

    /// Verifies one of our own access tokens: size, shape, algorithm,
    /// signature, issuer, `typ`, `exp` and `nbf`. Revocation is the
    /// caller's check (see [`crate::revocation`]), made on every use.
    pub fn verify(&self, token: &str, now: i64) -> Result<Arc<VerifiedToken>, TokenError> {
        if token.len() > self.max_token_bytes {
            return Err(JwsError::TooLarge.into());
        }
        let generation = self.generation.load(Ordering::Relaxed);
        let digest = VerifiedCache::<VerifiedToken>::digest(token);
        if let Some(hit) = self.cache.get(&digest, now, generation) {
            return Ok(hit);
        }
        let parsed = Unverified::parse(token, self.max_token_bytes)?;
        let typ_ok = parsed.header.typ.as_deref().is_some_and(|t| {
            t.eq_ignore_ascii_case(ACCESS_TOKEN_TYP) || t.eq_ignore_ascii_case("application/at+jwt")
        });
        if !typ_ok {
            return Err(TokenError::WrongType);
        }
        let kid = parsed.header.kid.as_deref().ok_or(JwsError::UnknownKey)?;
        let (issuer, ring) = IssuerKind::ALL
            .iter()
            .map(|k| (self.get(*k), self.get(*k).ring()))
            .find(|(_, ring)| ring.verifier(kid, now).is_some())
            .ok_or(JwsError::UnknownKey)?;
        let key = ring.verifier(kid, now).expect("found above");
        let claims: AccessClaims = parsed.verify(&key.verifying)?;
        let expected_principal = match issuer.kind {
            IssuerKind::Human => Principal::Human,
            IssuerKind::Service => Principal::Service,
        };
        if claims.iss != issuer.iss || claims.principal != expected_principal {
            return Err(TokenError::WrongIssuer);
        }
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        if claims.nbf.unwrap_or(claims.iat) > now + LEEWAY {
            return Err(TokenError::NotYetValid);
        }
        let valid_until = key.verify_until.map_or(claims.exp, |u| u.min(claims.exp));
        let verified = Arc::new(VerifiedToken {
            issuer: TokenIssuer::Own(issuer.kind),
            kid: kid.to_string(),
            claims,
            upstream: None,
        });
        self.cache
            .insert(digest, verified.clone(), valid_until, now, generation);
        Ok(verified)
    }
}
