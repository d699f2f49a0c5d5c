//! `[[trusted_issuers]]`: upstream issuers whose tokens Tessera accepts —
//! the company IdP for people, Kubernetes clusters for workloads. Each
//! entry is checked on its own so that an error names it, as in
//! `trusted_issuers[1].algorithms`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Value;

use super::{duration, err, ConfigError};
use crate::jose::Alg;

/// Who the tokens of a trusted issuer stand for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrustedKind {
    /// People, signed in at an OIDC identity provider.
    Human,
    /// Workloads, e.g. Kubernetes service accounts.
    Workload,
}

impl TrustedKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TrustedKind::Human => "human",
            TrustedKind::Workload => "workload",
        }
    }
}

/// Where the issuer's public keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// `{issuer}/.well-known/openid-configuration`, then its `jwks_uri`.
    Discovery,
    Uri(String),
    /// A JWK Set file, for clusters whose keys cannot be fetched.
    File(PathBuf),
}

/// Claim names that carry the identity; each has a default.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClaimMapping {
    pub subject: String,
    pub tenant: String,
    pub groups: String,
    pub email: String,
}

impl Default for ClaimMapping {
    fn default() -> Self {
        Self {
            subject: "sub".into(),
            tenant: "tenant".into(),
            groups: "groups".into(),
            email: "email".into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct TrustedIssuerConfig {
    /// Short name used in policy rules, audit records and the CLI.
    pub name: String,
    /// The exact `iss` value of its tokens.
    pub issuer: String,
    pub kind: TrustedKind,
    pub jwks: JwksSource,
    /// Asymmetric only; a token with any other `alg` is refused unread.
    pub algorithms: Vec<Alg>,
    /// A token must name at least one of these in `aud`.
    pub audiences: Vec<String>,
    pub claims: ClaimMapping,
    /// Tenant for tokens without the tenant claim; without it a person's
    /// token is refused. A workload's tenant is its bound client's wherever
    /// it is bound; an unbound workload at a route has this one, or none.
    pub default_tenant: Option<String>,
    /// Put in front of every subject and group, to keep several issuers'
    /// people and groups apart; required (and distinct) when more than one
    /// human issuer is configured.
    pub subject_prefix: String,
    /// Allow-list of tenants; empty allows every tenant. A token whose
    /// tenant (claim or `default_tenant`) is not listed is refused.
    pub tenants: Vec<String>,
    /// Scopes every person from this issuer holds, besides the token's own
    /// `scope`/`scp` claim.
    pub default_scopes: Vec<String>,
    /// Scopes held by members of a group.
    pub group_scopes: BTreeMap<String, Vec<String>>,
    /// Claims that must be present.
    pub required_claims: Vec<String>,
    /// Oldest accepted `iat`.
    pub max_token_age: Duration,
    /// Longest any request waits for the issuer's keys.
    pub fetch_timeout: Duration,
    /// Key cache lifetime when the JWKS response has no `Cache-Control: max-age`.
    pub cache_ttl: Duration,
    /// How long cached keys keep serving after they should have been
    /// refreshed, while the issuer cannot be reached.
    pub max_staleness: Duration,
    /// Fewest time between two fetches (an unknown `kid` triggers one).
    pub refresh_min_interval: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrusted {
    name: String,
    issuer: String,
    kind: TrustedKind,
    jwks_uri: Option<String>,
    jwks_file: Option<String>,
    #[serde(default = "default_algorithms")]
    algorithms: Vec<String>,
    audiences: Vec<String>,
    #[serde(default)]
    claims: ClaimMapping,
    default_tenant: Option<String>,
    #[serde(default)]
    subject_prefix: String,
    #[serde(default)]
    tenants: Vec<String>,
    #[serde(default)]
    default_scopes: Vec<String>,
    #[serde(default)]
    group_scopes: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    required_claims: Vec<String>,
    #[serde(default = "default_max_token_age")]
    max_token_age: String,
    #[serde(default = "default_fetch_timeout")]
    fetch_timeout: String,
    #[serde(default = "default_cache_ttl")]
    cache_ttl: String,
    #[serde(default = "default_max_staleness")]
    max_staleness: String,
    #[serde(default = "default_refresh_min_interval")]
    refresh_min_interval: String,
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into(), "EdDSA".into()]
}
fn default_max_token_age() -> String {
    "24h".into()
}
fn default_fetch_timeout() -> String {
    "2s".into()
}
fn default_cache_ttl() -> String {
    "5m".into()
}
fn default_max_staleness() -> String {
    "24h".into()
}
fn default_refresh_min_interval() -> String {
    "30s".into()
}

/// Whether keys may be fetched from `url`: HTTPS, or plain HTTP to this
/// machine only (a local IdP in development and tests). Anywhere else a
/// network attacker could hand Tessera its own keys.
pub fn fetchable(url: &url::Url) -> bool {
    match (url.scheme(), url.host()) {
        ("https", Some(_)) => true,
        ("http", Some(url::Host::Domain(d))) => d.eq_ignore_ascii_case("localhost"),
        ("http", Some(url::Host::Ipv4(ip))) => ip.is_loopback(),
        ("http", Some(url::Host::Ipv6(ip))) => ip.is_loopback(),
        _ => false,
    }
}

fn http_url(key: &str, text: &str) -> Result<String, ConfigError> {
    match url::Url::parse(text) {
        Ok(u) if fetchable(&u) => Ok(text.into()),
        Ok(u) if u.scheme() == "http" && u.host().is_some() => Err(err(
            key,
            format!("{text:?} is plain http: only https, or http on 127.0.0.1, ::1 or localhost"),
        )),
        _ => Err(err(key, format!("{text:?} is not an http(s) URL"))),
    }
}

/// `public_url` is Tessera's own: its issuers may not be configured as
/// trusted ones, or Tessera's own tokens (or tokens signed with keys from
/// somewhere else in their name) would pass as upstream ones.
pub(super) fn parse(
    items: &[Value],
    public_url: &str,
) -> Result<Vec<TrustedIssuerConfig>, ConfigError> {
    let mut out: Vec<TrustedIssuerConfig> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = format!("trusted_issuers[{i}]");
        let key = |k: &str| format!("{at}.{k}");
        let raw: RawTrusted = item
            .clone()
            .try_into()
            .map_err(|e: toml::de::Error| err(&at, e.message().to_string()))?;
        let name_ok = !raw.name.is_empty()
            && raw.name.len() <= 64
            && raw
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !name_ok {
            return Err(err(
                &key("name"),
                "must be 1 to 64 letters, digits, '-' or '_'",
            ));
        }
        if out.iter().any(|t| t.name == raw.name) {
            return Err(err(&key("name"), format!("{:?} is used twice", raw.name)));
        }
        let issuer = http_url(&key("issuer"), &raw.issuer)?;
        // Compared as parsed URLs, so case and default ports cannot hide it.
        let normal =
            |u: &str| url::Url::parse(u).map(|u| u.as_str().trim_end_matches('/').to_string());
        let own = ["human", "service"].map(|k| normal(&format!("{public_url}/issuers/{k}")));
        if own.iter().any(|o| o.is_ok() && *o == normal(&issuer)) {
            return Err(err(
                &key("issuer"),
                format!("{issuer:?} is one of Tessera's own issuers"),
            ));
        }
        if out.iter().any(|t| t.issuer == issuer) {
            return Err(err(&key("issuer"), "the same issuer is configured twice"));
        }
        let jwks = match (raw.jwks_uri, raw.jwks_file) {
            (Some(_), Some(_)) => {
                return Err(err(&at, "set jwks_uri or jwks_file, not both"));
            }
            (Some(uri), None) => JwksSource::Uri(http_url(&key("jwks_uri"), &uri)?),
            (None, Some(file)) => JwksSource::File(PathBuf::from(file)),
            (None, None) => JwksSource::Discovery,
        };
        let mut algorithms = Vec::new();
        for a in &raw.algorithms {
            let alg: Alg = a.parse().map_err(|_| {
                err(
                    &key("algorithms"),
                    format!("{a:?} is not accepted: only ES256, EdDSA and RS256 (asymmetric) are"),
                )
            })?;
            algorithms.push(alg);
        }
        if algorithms.is_empty() {
            return Err(err(&key("algorithms"), "must name at least one algorithm"));
        }
        if raw.audiences.is_empty() || raw.audiences.iter().any(|a| a.trim().is_empty()) {
            return Err(err(
                &key("audiences"),
                "must name at least one non-empty audience",
            ));
        }
        if raw.kind == TrustedKind::Workload
            && (!raw.default_scopes.is_empty() || !raw.group_scopes.is_empty())
        {
            return Err(err(
                &at,
                "default_scopes and group_scopes apply to people (kind = \"human\") only",
            ));
        }
        // A workload's tenant is its bound client's; service-account tokens
        // carry none for an allow-list to check.
        if raw.kind == TrustedKind::Workload && !raw.tenants.is_empty() {
            return Err(err(
                &key("tenants"),
                "applies to people (kind = \"human\") only: a workload's tenant is its bound client's",
            ));
        }
        if raw.tenants.iter().any(|t| t.is_empty()) {
            return Err(err(&key("tenants"), "must not hold an empty tenant"));
        }
        let default_tenant = raw.default_tenant.filter(|t| !t.is_empty());
        if let Some(t) = &default_tenant {
            if !raw.tenants.is_empty() && !raw.tenants.contains(t) {
                return Err(err(
                    &key("default_tenant"),
                    format!("{t:?} is not in tenants"),
                ));
            }
        }
        let d = |k: &str, v: &str| duration(&key(k), v);
        let fetch_timeout = d("fetch_timeout", &raw.fetch_timeout)?;
        if fetch_timeout > Duration::from_secs(30) {
            return Err(err(&key("fetch_timeout"), "must be at most 30s"));
        }
        out.push(TrustedIssuerConfig {
            name: raw.name,
            issuer,
            kind: raw.kind,
            jwks,
            algorithms,
            audiences: raw.audiences,
            claims: raw.claims,
            default_tenant,
            subject_prefix: raw.subject_prefix,
            tenants: raw.tenants,
            default_scopes: raw.default_scopes,
            group_scopes: raw.group_scopes,
            required_claims: raw.required_claims,
            max_token_age: d("max_token_age", &raw.max_token_age)?,
            fetch_timeout,
            cache_ttl: d("cache_ttl", &raw.cache_ttl)?,
            max_staleness: d("max_staleness", &raw.max_staleness)?,
            refresh_min_interval: d("refresh_min_interval", &raw.refresh_min_interval)?,
        });
    }
    distinct_prefixes(&out)?;
    Ok(out)
}

/// With two or more human issuers, `sub` `alice` at one and `alice` at the
/// other are different people: each issuer needs a non-empty prefix, and
/// none may start another (`a:` and `a:b:` would map `b:x` at the first and
/// `x` at the second to the same subject).
fn distinct_prefixes(issuers: &[TrustedIssuerConfig]) -> Result<(), ConfigError> {
    let humans: Vec<(usize, &TrustedIssuerConfig)> = issuers
        .iter()
        .enumerate()
        .filter(|(_, t)| t.kind == TrustedKind::Human)
        .collect();
    if humans.len() < 2 {
        return Ok(());
    }
    for (n, (i, t)) in humans.iter().enumerate() {
        let key = format!("trusted_issuers[{i}].subject_prefix");
        if t.subject_prefix.is_empty() {
            return Err(err(
                &key,
                "must be set when several human issuers are configured, e.g. \"corp:\"",
            ));
        }
        if let Some((_, other)) = humans[..n].iter().find(|(_, o)| {
            o.subject_prefix.starts_with(&t.subject_prefix)
                || t.subject_prefix.starts_with(&o.subject_prefix)
        }) {
            return Err(err(
                &key,
                format!(
                    "{:?} overlaps issuer {:?}'s {:?}: subjects could collide",
                    t.subject_prefix, other.name, other.subject_prefix
                ),
            ));
        }
    }
    Ok(())
}
