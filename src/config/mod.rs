//! Typed configuration: a TOML file laid over built-in defaults, then
//! `TESSERA_<SECTION>_<KEY>` environment variables laid over that, then
//! validated once at start-up. Every error names the key it is about.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Value;

use crate::jose::Alg;

mod trusted;

pub use trusted::{fetchable, ClaimMapping, JwksSource, TrustedIssuerConfig, TrustedKind};

/// Prefix of every environment override.
pub const ENV_PREFIX: &str = "TESSERA_";

/// The file layout as written by operators: plain strings, numbers and
/// booleans, so that the env overlay and the error messages stay simple.
/// [`Config`] is the checked form the rest of the crate uses.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
struct Raw {
    server: RawServer,
    store: RawStore,
    keys: RawKeys,
    issuers: RawIssuers,
    policy: RawPolicy,
    oauth: RawOAuth,
    audit: RawAudit,
    aws: RawAws,
    /// Checked item by item in [`trusted::parse`], so errors name the entry.
    trusted_issuers: Vec<Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
struct RawServer {
    listen: String,
    grpc_listen: String,
    public_url: String,
    max_body_bytes: i64,
    max_token_bytes: i64,
    trust_original_request_headers: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
struct RawStore {
    url: String,
    max_connections: i64,
    schema: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
struct RawKeys {
    dir: String,
    algorithm: String,
    rotation_delay: String,
    reload_interval: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
struct RawIssuers {
    human: RawIssuer,
    service: RawIssuer,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
struct RawIssuer {
    token_ttl: String,
    max_token_ttl: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
struct RawPolicy {
    file: String,
    reload_interval: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
struct RawOAuth {
    assertion_max_lifetime: String,
    clock_skew: String,
    secret_rotation_overlap: String,
    max_delegation_depth: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
struct RawAudit {
    batch_max: i64,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            grpc_listen: "127.0.0.1:9191".into(),
            public_url: String::new(),
            max_body_bytes: 64 * 1024,
            max_token_bytes: 8 * 1024,
            trust_original_request_headers: false,
        }
    }
}

impl Default for RawStore {
    fn default() -> Self {
        Self {
            url: "sqlite://data/tessera.db".into(),
            max_connections: 16,
            schema: String::new(),
        }
    }
}

impl Default for RawKeys {
    fn default() -> Self {
        Self {
            dir: "keys".into(),
            algorithm: "ES256".into(),
            rotation_delay: "15m".into(),
            reload_interval: "10s".into(),
        }
    }
}

impl Default for RawIssuer {
    fn default() -> Self {
        Self {
            token_ttl: "5m".into(),
            max_token_ttl: "1h".into(),
        }
    }
}

impl Default for RawPolicy {
    fn default() -> Self {
        Self {
            file: String::new(),
            reload_interval: "1s".into(),
        }
    }
}

impl Default for RawOAuth {
    fn default() -> Self {
        Self {
            assertion_max_lifetime: "1h".into(),
            clock_skew: "60s".into(),
            secret_rotation_overlap: "24h".into(),
            max_delegation_depth: 4,
        }
    }
}

impl Default for RawAudit {
    fn default() -> Self {
        Self { batch_max: 256 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
struct RawAws {
    region: String,
    endpoint_url: String,
    sts_timeout: String,
    credential_reuse_margin: String,
    lakeformation_sync_interval: String,
}

impl Default for RawAws {
    fn default() -> Self {
        Self {
            region: "us-east-1".into(),
            endpoint_url: String::new(),
            sts_timeout: "3s".into(),
            credential_reuse_margin: "5m".into(),
            lakeformation_sync_interval: String::new(),
        }
    }
}

impl RawAws {
    fn validate(&self) -> Result<AwsConfig, ConfigError> {
        let region = self.region.trim();
        if region.is_empty()
            || !region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(err(
                "aws.region",
                format!("{region:?} is not an AWS region like \"eu-west-1\""),
            ));
        }
        let endpoint_url = match self.endpoint_url.trim() {
            "" => None,
            u => {
                let parsed = url::Url::parse(u)
                    .map_err(|e| err("aws.endpoint_url", format!("not a URL: {e}")))?;
                if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
                    return Err(err("aws.endpoint_url", "must be an http(s) URL"));
                }
                Some(u.trim_end_matches('/').to_string())
            }
        };
        let sts_timeout = duration("aws.sts_timeout", &self.sts_timeout)?;
        if sts_timeout > Duration::from_secs(60) {
            return Err(err(
                "aws.sts_timeout",
                "must be at most 60s: a token request waits on it",
            ));
        }
        let credential_reuse_margin = match self.credential_reuse_margin.trim() {
            "" => None,
            m => {
                let d = humantime::parse_duration(m).map_err(|e| {
                    err(
                        "aws.credential_reuse_margin",
                        format!("{m:?} is not a duration like \"5m\": {e}"),
                    )
                })?;
                if d > Duration::from_secs(12 * 3600) {
                    return Err(err(
                        "aws.credential_reuse_margin",
                        "must be at most 12h (the longest AWS session)",
                    ));
                }
                (!d.is_zero()).then_some(d)
            }
        };
        let lakeformation_sync_interval = match self.lakeformation_sync_interval.trim() {
            "" => None,
            i => {
                let d = duration("aws.lakeformation_sync_interval", i)?;
                if d < Duration::from_secs(10) {
                    return Err(err(
                        "aws.lakeformation_sync_interval",
                        "must be at least 10s",
                    ));
                }
                Some(d)
            }
        };
        Ok(AwsConfig {
            region: region.to_string(),
            endpoint_url,
            sts_timeout,
            credential_reuse_margin,
            lakeformation_sync_interval,
        })
    }
}

/// Checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub keys: KeysConfig,
    pub issuers: IssuersConfig,
    pub policy: PolicyConfig,
    pub oauth: OAuthConfig,
    pub audit: AuditConfig,
    pub aws: AwsConfig,
    /// Upstream issuers whose tokens Tessera accepts (company IdP,
    /// Kubernetes clusters).
    pub trusted_issuers: Vec<TrustedIssuerConfig>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub grpc_listen: SocketAddr,
    /// Base URL the issuers and endpoints are published under, without a
    /// trailing slash. Defaults to `http://{listen}`.
    pub public_url: String,
    /// Largest accepted request body; larger ones get 413.
    pub max_body_bytes: usize,
    /// Largest accepted token or assertion; larger ones are refused before
    /// any parsing.
    pub max_token_bytes: usize,
    /// Take the checked method and path of HTTP ext_authz requests from
    /// `X-Original-Method` / `X-Original-URI` (what nginx `auth_request`
    /// sends). Off by default: only turn it on when the proxy overwrites
    /// those headers, or a client could choose which route is checked.
    pub trust_original_request_headers: bool,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub url: String,
    pub max_connections: u32,
    /// Postgres only: schema to create and use instead of `public`.
    pub schema: Option<String>,
}

#[derive(Debug, Clone)]
pub struct KeysConfig {
    pub dir: PathBuf,
    pub algorithm: Alg,
    /// How long a key added by `keys rotate` is published before it signs.
    pub rotation_delay: Duration,
    /// How often each replica re-reads `keys/`.
    pub reload_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct IssuersConfig {
    pub human: IssuerConfig,
    pub service: IssuerConfig,
}

#[derive(Debug, Clone)]
pub struct IssuerConfig {
    pub token_ttl: Duration,
    /// Upper bound for any per-client TTL.
    pub max_token_ttl: Duration,
}

#[derive(Debug, Clone)]
pub struct PolicyConfig {
    /// `None`: the built-in policy of DESIGN.md §4.
    pub file: Option<PathBuf>,
    pub reload_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct OAuthConfig {
    /// Longest accepted `exp - now` for a private_key_jwt assertion.
    pub assertion_max_lifetime: Duration,
    /// Tolerated clock difference for `exp`, `nbf` and `iat` of assertions.
    pub clock_skew: Duration,
    /// How long the previous secret keeps working after `rotate-secret`.
    pub secret_rotation_overlap: Duration,
    /// Most actors a delegated token may name, counting nested `act`s.
    pub max_delegation_depth: usize,
}

#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// Most records written in one transaction.
    pub batch_max: usize,
}

/// `[aws]`: federated AWS credentials (DESIGN.md §5). Credentials of
/// Tessera itself come from the AWS SDK's default chain, never from here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsConfig {
    pub region: String,
    /// `None`: real AWS. Set for a local emulator (moto) in tests.
    pub endpoint_url: Option<String>,
    /// Bound on one STS (or Lake Formation) call, its one retry included.
    pub sts_timeout: Duration,
    /// Issued credentials are handed out again (to the same user, client,
    /// dataset, purpose and permission) while they stay valid for at least
    /// this long. `None` (`"0s"` or `""`): never reused, every exchange
    /// calls STS; a zero margin would hand out credentials about to expire.
    pub credential_reuse_margin: Option<Duration>,
    /// How often Lake Formation grants are brought in step with the
    /// registry; `None` (`""`): only on demand.
    pub lakeformation_sync_interval: Option<Duration>,
}

/// A configuration problem, always naming the key.
#[derive(Debug, thiserror::Error)]
#[error("configuration key `{key}`: {problem}")]
pub struct ConfigError {
    pub key: String,
    pub problem: String,
}

fn err(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_string(),
        problem: problem.into(),
    }
}

impl Config {
    /// Defaults, then `file` (if any), then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let text = match file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| err("--config", format!("cannot read {}: {e}", path.display())))?,
            ),
            None => None,
        };
        Self::from_sources(text.as_deref(), std::env::vars())
    }

    /// The pure part of [`Config::load`], for tests.
    pub fn from_sources(
        file_text: Option<&str>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut merged = Value::try_from(Raw::default()).expect("defaults serialize");
        if let Some(text) = file_text {
            let file: Value = toml::from_str(text)
                .map_err(|e| err("(file)", format!("not valid TOML: {}", e.message())))?;
            overlay(&mut merged, &file, "")?;
        }
        let env: Vec<(String, String)> = env.into_iter().collect();
        overlay_env(&mut merged, &env, "")?;
        let raw: Raw = merged
            .try_into()
            .map_err(|e: toml::de::Error| err("(config)", e.message().to_string()))?;
        raw.validate()
    }
}

/// Lays `src` over `dst`, refusing keys the defaults do not have and values
/// whose type differs from the default's.
fn overlay(dst: &mut Value, src: &Value, path: &str) -> Result<(), ConfigError> {
    let (Value::Table(dst), Value::Table(src)) = (dst, src) else {
        return Err(err(path, "expected a table"));
    };
    for (key, value) in src {
        let full = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        let Some(slot) = dst.get_mut(key) else {
            return Err(err(&full, "unknown key"));
        };
        match slot {
            Value::Table(_) => overlay(slot, value, &full)?,
            _ if std::mem::discriminant(slot) == std::mem::discriminant(value) => {
                *slot = value.clone()
            }
            _ => {
                return Err(err(
                    &full,
                    format!(
                        "expected a {}, found a {}",
                        slot.type_str(),
                        value.type_str()
                    ),
                ))
            }
        }
    }
    Ok(())
}

/// `server.grpc_listen` is overridden by `TESSERA_SERVER_GRPC_LISTEN`.
fn overlay_env(dst: &mut Value, env: &[(String, String)], path: &str) -> Result<(), ConfigError> {
    let Value::Table(table) = dst else {
        return Ok(());
    };
    for (key, slot) in table.iter_mut() {
        let full = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        if let Value::Table(_) = slot {
            overlay_env(slot, env, &full)?;
            continue;
        }
        let var = format!(
            "{ENV_PREFIX}{}",
            full.replace('.', "_").to_ascii_uppercase()
        );
        let Some((_, raw)) = env.iter().find(|(k, _)| *k == var) else {
            continue;
        };
        *slot = match slot {
            Value::String(_) => Value::String(raw.clone()),
            Value::Integer(_) => Value::Integer(
                raw.trim()
                    .parse()
                    .map_err(|_| err(&full, format!("{var}={raw:?} is not an integer")))?,
            ),
            Value::Boolean(_) => Value::Boolean(match raw.trim() {
                "true" | "1" => true,
                "false" | "0" => false,
                _ => return Err(err(&full, format!("{var}={raw:?} is not true or false"))),
            }),
            other => {
                return Err(err(
                    &full,
                    format!("cannot be set from {var} ({})", other.type_str()),
                ))
            }
        };
    }
    Ok(())
}

fn duration(key: &str, text: &str) -> Result<Duration, ConfigError> {
    let d = humantime::parse_duration(text.trim()).map_err(|e| {
        err(
            key,
            format!("{text:?} is not a duration like \"5m\" or \"90s\": {e}"),
        )
    })?;
    if d.is_zero() {
        return Err(err(key, "must be greater than zero"));
    }
    Ok(d)
}

fn socket(key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse().map_err(|_| {
        err(
            key,
            format!("{text:?} is not an address like 127.0.0.1:8080"),
        )
    })
}

fn positive(key: &str, n: i64) -> Result<usize, ConfigError> {
    usize::try_from(n)
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| err(key, "must be a positive number"))
}

impl Raw {
    fn validate(self) -> Result<Config, ConfigError> {
        let listen = socket("server.listen", &self.server.listen)?;
        let grpc_listen = socket("server.grpc_listen", &self.server.grpc_listen)?;
        let public_url = if self.server.public_url.is_empty() {
            format!("http://{listen}")
        } else {
            let parsed = url::Url::parse(&self.server.public_url)
                .map_err(|e| err("server.public_url", format!("not a URL: {e}")))?;
            if !matches!(parsed.scheme(), "http" | "https")
                || parsed.query().is_some()
                || parsed.fragment().is_some()
                || parsed.host().is_none()
            {
                return Err(err(
                    "server.public_url",
                    "must be an http(s) URL without query or fragment",
                ));
            }
            self.server.public_url.trim_end_matches('/').to_string()
        };
        let store_url = self.store.url.trim().to_string();
        if !(store_url.starts_with("sqlite:")
            || store_url.starts_with("postgres://")
            || store_url.starts_with("postgresql://"))
        {
            return Err(err("store.url", "must start with sqlite:// or postgres://"));
        }
        let algorithm: Alg = self.keys.algorithm.parse().map_err(|_| {
            err(
                "keys.algorithm",
                format!(
                    "{:?} is not one of ES256, EdDSA, RS256",
                    self.keys.algorithm
                ),
            )
        })?;
        let issuer = |name: &str, raw: &RawIssuer| -> Result<IssuerConfig, ConfigError> {
            let ttl_key = format!("issuers.{name}.token_ttl");
            let max_key = format!("issuers.{name}.max_token_ttl");
            let token_ttl = duration(&ttl_key, &raw.token_ttl)?;
            let max_token_ttl = duration(&max_key, &raw.max_token_ttl)?;
            if max_token_ttl > Duration::from_secs(24 * 3600) {
                return Err(err(
                    &max_key,
                    "must be at most 24h: tokens are proof for a purpose, not a password",
                ));
            }
            if token_ttl > max_token_ttl {
                return Err(err(&ttl_key, format!("must not exceed {max_key}")));
            }
            Ok(IssuerConfig {
                token_ttl,
                max_token_ttl,
            })
        };
        let trusted_issuers = trusted::parse(&self.trusted_issuers, &public_url)?;
        let policy_file = match self.policy.file.trim() {
            "" => None,
            f => Some(PathBuf::from(f)),
        };
        Ok(Config {
            server: ServerConfig {
                listen,
                grpc_listen,
                public_url,
                max_body_bytes: positive("server.max_body_bytes", self.server.max_body_bytes)?,
                max_token_bytes: positive("server.max_token_bytes", self.server.max_token_bytes)?,
                trust_original_request_headers: self.server.trust_original_request_headers,
            },
            store: StoreConfig {
                url: store_url,
                max_connections: positive("store.max_connections", self.store.max_connections)?
                    as u32,
                schema: match self.store.schema.trim() {
                    "" => None,
                    s if s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                        && s.len() <= 63 =>
                    {
                        Some(s.to_string())
                    }
                    _ => {
                        return Err(err(
                            "store.schema",
                            "must be letters, digits and underscores (at most 63)",
                        ))
                    }
                },
            },
            keys: KeysConfig {
                dir: PathBuf::from(&self.keys.dir),
                algorithm,
                rotation_delay: {
                    let d = duration("keys.rotation_delay", &self.keys.rotation_delay)?;
                    // Verifiers may cache the JWKS for JWKS_MAX_AGE; a next key
                    // must be in every cache before it signs.
                    if d.as_secs() < 2 * crate::http::discovery::JWKS_MAX_AGE {
                        return Err(err(
                            "keys.rotation_delay",
                            "must be at least 10m (twice the JWKS cache lifetime)",
                        ));
                    }
                    d
                },
                reload_interval: duration("keys.reload_interval", &self.keys.reload_interval)?,
            },
            issuers: IssuersConfig {
                human: issuer("human", &self.issuers.human)?,
                service: issuer("service", &self.issuers.service)?,
            },
            policy: PolicyConfig {
                file: policy_file,
                reload_interval: duration("policy.reload_interval", &self.policy.reload_interval)?,
            },
            oauth: OAuthConfig {
                assertion_max_lifetime: duration(
                    "oauth.assertion_max_lifetime",
                    &self.oauth.assertion_max_lifetime,
                )?,
                clock_skew: duration("oauth.clock_skew", &self.oauth.clock_skew)?,
                secret_rotation_overlap: duration(
                    "oauth.secret_rotation_overlap",
                    &self.oauth.secret_rotation_overlap,
                )?,
                max_delegation_depth: positive(
                    "oauth.max_delegation_depth",
                    self.oauth.max_delegation_depth,
                )?
                .min(16),
            },
            audit: AuditConfig {
                batch_max: positive("audit.batch_max", self.audit.batch_max)?.min(1000),
            },
            aws: self.aws.validate()?,
            trusted_issuers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(file: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_sources(
            Some(file),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn defaults_are_the_embedded_single_machine_setup() {
        let c = load("", &[]).unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.server.grpc_listen.to_string(), "127.0.0.1:9191");
        assert_eq!(c.server.public_url, "http://127.0.0.1:8080");
        assert_eq!(c.store.url, "sqlite://data/tessera.db");
        assert_eq!(c.keys.algorithm, Alg::ES256);
        assert!(c.policy.file.is_none());
    }

    #[test]
    fn environment_overrides_file() {
        let c = load(
            "[store]\nurl = \"sqlite://a.db\"\n[issuers.service]\ntoken_ttl = \"2m\"",
            &[
                ("TESSERA_STORE_URL", "postgres://db/x"),
                ("TESSERA_SERVER_GRPC_LISTEN", "127.0.0.1:1"),
            ],
        )
        .unwrap();
        assert_eq!(c.store.url, "postgres://db/x");
        assert_eq!(c.server.grpc_listen.to_string(), "127.0.0.1:1");
        assert_eq!(c.issuers.service.token_ttl, Duration::from_secs(120));
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("[server]\nlisten = \"nowhere\"", "server.listen"),
            ("[server]\nlistne = \"x\"", "server.listne"),
            ("[keys]\nalgorithm = \"HS256\"", "keys.algorithm"),
            (
                "[issuers.human]\ntoken_ttl = \"soon\"",
                "issuers.human.token_ttl",
            ),
            ("[store]\nurl = \"mysql://x\"", "store.url"),
            (
                "[server]\nmax_body_bytes = \"big\"",
                "server.max_body_bytes",
            ),
            (
                "[issuers.service]\ntoken_ttl = \"2h\"",
                "issuers.service.token_ttl",
            ),
        ];
        for (file, key) in cases {
            let e = load(file, &[]).unwrap_err();
            assert_eq!(e.key, key, "{file}: {e}");
        }
        let e = load("", &[("TESSERA_SERVER_MAX_BODY_BYTES", "lots")]).unwrap_err();
        assert_eq!(e.key, "server.max_body_bytes");
    }

    #[test]
    fn trusted_issuers_are_checked_entry_by_entry() {
        let ok = r#"
            [[trusted_issuers]]
            name = "corp"
            issuer = "https://idp.example.com"
            kind = "human"
            audiences = ["tessera"]

            [[trusted_issuers]]
            name = "cluster"
            issuer = "https://kubernetes.default.svc"
            kind = "workload"
            jwks_file = "/etc/tessera/cluster-jwks.json"
            audiences = ["tessera"]
            algorithms = ["RS256"]
        "#;
        let c = load(ok, &[]).unwrap();
        assert_eq!(c.trusted_issuers.len(), 2);
        assert_eq!(c.trusted_issuers[0].jwks, JwksSource::Discovery);
        assert_eq!(c.trusted_issuers[0].claims.subject, "sub");
        assert_eq!(c.trusted_issuers[1].kind, TrustedKind::Workload);
        let entry = |extra: &str| {
            format!("[[trusted_issuers]]\nname = \"corp\"\nissuer = \"https://idp\"\nkind = \"human\"\naudiences = [\"t\"]\n{extra}")
        };
        let cases = [
            (
                entry("algorithms = [\"HS256\"]"),
                "trusted_issuers[0].algorithms",
            ),
            (
                entry("algorithms = [\"none\"]"),
                "trusted_issuers[0].algorithms",
            ),
            (entry("colour = 1"), "trusted_issuers[0]"),
            (
                entry("fetch_timeout = \"soon\""),
                "trusted_issuers[0].fetch_timeout",
            ),
            (
                entry("jwks_uri = \"ftp://x\""),
                "trusted_issuers[0].jwks_uri",
            ),
            (
                format!("{}\n{}", entry(""), entry("")),
                "trusted_issuers[1].name",
            ),
        ];
        for (file, key) in cases {
            let e = load(&file, &[]).unwrap_err();
            assert_eq!(e.key, key, "{file}: {e}");
        }
    }

    #[test]
    fn trusted_issuers_cannot_collide_with_each_other_or_tessera() {
        let human = |name: &str, issuer: &str, extra: &str| {
            format!("[[trusted_issuers]]\nname = {name:?}\nissuer = {issuer:?}\nkind = \"human\"\naudiences = [\"t\"]\n{extra}\n")
        };
        let cluster = "[[trusted_issuers]]\nname = \"k8s\"\nissuer = \"https://k8s\"\nkind = \"workload\"\naudiences = [\"t\"]\n";
        // One human issuer needs no prefix, nor does a workload beside it.
        load(&format!("{}{cluster}", human("a", "https://a", "")), &[]).unwrap();
        let two = format!(
            "{}{}",
            human("a", "https://a", "subject_prefix = \"a:\""),
            human("b", "https://b", "subject_prefix = \"b:\"")
        );
        let c = load(&two, &[]).unwrap();
        assert_eq!(c.trusted_issuers[1].subject_prefix, "b:");
        let c = load(
            &human("a", "http://127.0.0.1:9/x", "tenants = [\"acme\"]"),
            &[],
        )
        .unwrap();
        assert_eq!(c.trusted_issuers[0].tenants, ["acme"]);
        for local in [
            "http://localhost:8080",
            "http://[::1]:1",
            "http://127.0.0.1",
        ] {
            load(&human("a", local, ""), &[]).unwrap();
        }
        let public = "[server]\npublic_url = \"https://sts.example.com/\"\n";
        let cases = [
            (
                format!(
                    "{}{}",
                    human("a", "https://a", ""),
                    human("b", "https://b", "")
                ),
                "trusted_issuers[0].subject_prefix",
            ),
            (
                format!(
                    "{}{}",
                    human("a", "https://a", "subject_prefix = \"x:\""),
                    human("b", "https://b", "subject_prefix = \"x:\"")
                ),
                "trusted_issuers[1].subject_prefix",
            ),
            (
                format!(
                    "{}{}",
                    human("a", "https://a", "subject_prefix = \"x:\""),
                    human("b", "https://b", "subject_prefix = \"x:y:\"")
                ),
                "trusted_issuers[1].subject_prefix",
            ),
            (
                format!(
                    "{}{cluster}{}",
                    human("a", "https://a", "subject_prefix = \"a:\""),
                    human("b", "https://b", "")
                ),
                "trusted_issuers[2].subject_prefix",
            ),
            (
                format!(
                    "{public}{}",
                    human("a", "https://sts.example.com/issuers/human", "")
                ),
                "trusted_issuers[0].issuer",
            ),
            (
                format!(
                    "{public}{}",
                    human("a", "https://STS.example.com:443/issuers/service/", "")
                ),
                "trusted_issuers[0].issuer",
            ),
            (
                human("a", "http://127.0.0.1:8080/issuers/human", ""),
                "trusted_issuers[0].issuer",
            ),
            (
                human("a", "http://idp.example.com", ""),
                "trusted_issuers[0].issuer",
            ),
            (
                human("a", "http://10.0.0.1", ""),
                "trusted_issuers[0].issuer",
            ),
            (
                human(
                    "a",
                    "https://a",
                    "jwks_uri = \"http://idp.example.com/keys\"",
                ),
                "trusted_issuers[0].jwks_uri",
            ),
            (
                human("a", "https://a", "tenants = [\"\"]"),
                "trusted_issuers[0].tenants",
            ),
            (
                format!("{cluster}tenants = [\"acme\"]\n"),
                "trusted_issuers[0].tenants",
            ),
            (
                human(
                    "a",
                    "https://a",
                    "tenants = [\"acme\"]\ndefault_tenant = \"globex\"",
                ),
                "trusted_issuers[0].default_tenant",
            ),
        ];
        for (file, key) in cases {
            let e = load(&file, &[]).unwrap_err();
            assert_eq!(e.key, key, "{file}: {e}");
        }
    }

    #[test]
    fn aws_section() {
        let c = load("", &[]).unwrap();
        assert_eq!(c.aws.region, "us-east-1");
        assert_eq!(c.aws.endpoint_url, None);
        assert_eq!(c.aws.sts_timeout, Duration::from_secs(3));
        assert_eq!(
            c.aws.credential_reuse_margin,
            Some(Duration::from_secs(300))
        );
        assert_eq!(c.aws.lakeformation_sync_interval, None);
        let c = load(
            "[aws]\nregion = \"eu-west-1\"\ncredential_reuse_margin = \"0s\"",
            &[
                ("TESSERA_AWS_ENDPOINT_URL", "http://127.0.0.1:5005/"),
                ("TESSERA_AWS_LAKEFORMATION_SYNC_INTERVAL", "10m"),
            ],
        )
        .unwrap();
        assert_eq!(c.aws.region, "eu-west-1");
        assert_eq!(c.aws.endpoint_url.as_deref(), Some("http://127.0.0.1:5005"));
        assert_eq!(c.aws.credential_reuse_margin, None);
        assert_eq!(
            c.aws.lakeformation_sync_interval,
            Some(Duration::from_secs(600))
        );
        let c = load("[aws]\ncredential_reuse_margin = \"\"", &[]).unwrap();
        assert_eq!(c.aws.credential_reuse_margin, None);
        for (file, key) in [
            ("[aws]\nregion = \"EU West\"", "aws.region"),
            ("[aws]\nendpoint_url = \"ftp://x\"", "aws.endpoint_url"),
            ("[aws]\nsts_timeout = \"0s\"", "aws.sts_timeout"),
            ("[aws]\nsts_timeout = \"5m\"", "aws.sts_timeout"),
            (
                "[aws]\ncredential_reuse_margin = \"soon\"",
                "aws.credential_reuse_margin",
            ),
            (
                "[aws]\nlakeformation_sync_interval = \"1s\"",
                "aws.lakeformation_sync_interval",
            ),
            ("[aws]\nsecret_access_key = \"x\"", "aws.secret_access_key"),
        ] {
            let e = load(file, &[]).unwrap_err();
            assert_eq!(e.key, key, "{file}: {e}");
        }
    }
}
