//! The route policy: which credential kinds each route accepts and what
//! they must carry (DESIGN.md §4). A policy is an immutable snapshot parsed
//! from TOML; its version is the SHA-256 of the file's bytes and goes into
//! every audit record. [`decide`] is a pure function over a snapshot.

pub mod watch;

use serde::Deserialize;

use std::collections::BTreeMap;
use std::time::Duration;

use crate::data::DataDenial;
use crate::issuer::{IssuerKind, Principal, TokenError, TokenIssuer, VerifiedToken};
use crate::store::Permission;
use crate::trusted::TokenForm;

pub use watch::PolicyHandle;

/// The built-in policy text.
pub const BUILTIN: &str = include_str!("builtin.toml");

/// Credential kinds a rule can accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CredentialKind {
    /// An access token from Tessera's service issuer.
    Service,
    /// An access token from Tessera's human issuer, or a person's token
    /// from a trusted issuer the rule names.
    Human,
    /// A workload-identity token (e.g. a Kubernetes service-account token)
    /// from a trusted issuer the rule names.
    Workload,
}

/// Whether a rule wants tokens that act for someone else (`act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DelegationRule {
    #[default]
    Allowed,
    Required,
    Forbidden,
}

/// Which decisions of a rule are audited. Denials always are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditLevel {
    #[default]
    Deny,
    All,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PathPattern {
    Exact(String),
    /// `/internal/*`: stored as `/internal/`; also matches `/internal`.
    Prefix(String),
}

impl PathPattern {
    fn parse(text: &str) -> Result<Self, String> {
        if !text.starts_with('/') {
            return Err(format!("path {text:?} must start with /"));
        }
        match text.find('*') {
            None => Ok(PathPattern::Exact(text.to_string())),
            Some(i) if i == text.len() - 1 && text.ends_with("/*") => {
                Ok(PathPattern::Prefix(text[..i].to_string()))
            }
            Some(_) => Err(format!(
                "path {text:?}: '*' is only allowed as the last segment, as in /api/*"
            )),
        }
    }

    fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Exact(p) => path == p,
            PathPattern::Prefix(p) => path.starts_with(p.as_str()) || path == &p[..p.len() - 1],
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    name: String,
    path: String,
    #[serde(default)]
    methods: Vec<String>,
    accept: Vec<CredentialKind>,
    audience: String,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    clients: Vec<String>,
    #[serde(default)]
    tenants: Vec<String>,
    #[serde(default)]
    trusted_issuers: Vec<String>,
    #[serde(default)]
    delegation: DelegationRule,
    #[serde(default)]
    data: bool,
    permission: Option<Permission>,
    purpose: Option<String>,
    #[serde(default)]
    audit: AuditLevel,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AudienceFile {
    max_token_ttl: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    rule: Vec<RuleFile>,
    #[serde(default)]
    audiences: BTreeMap<String, AudienceFile>,
}

/// One route rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    path: PathPattern,
    /// Upper-case; empty means every method.
    pub methods: Vec<String>,
    pub accept: Vec<CredentialKind>,
    pub audience: String,
    /// Every one is required.
    pub scopes: Vec<String>,
    /// Allow-list of `client_id`s; empty allows every client.
    pub clients: Vec<String>,
    /// Allow-list of tenants; empty allows every tenant.
    pub tenants: Vec<String>,
    /// Trusted issuers (by name) whose tokens this rule accepts directly.
    pub trusted_issuers: Vec<String>,
    pub delegation: DelegationRule,
    /// `/data/{dataset}/…`: the first path segment after the rule's prefix
    /// names a dataset, and the person's grants decide (see [`crate::data`]).
    pub data: bool,
    /// Data rules: the permission asked; default read for GET/HEAD, write
    /// otherwise.
    pub permission: Option<Permission>,
    /// Data rules: the purpose when the request names none.
    pub purpose: Option<String>,
    pub audit: AuditLevel,
}

impl Rule {
    /// The dataset a data rule's request is about: the first segment after
    /// the rule's prefix.
    pub fn dataset_of<'p>(&self, path: &'p str) -> Option<&'p str> {
        let PathPattern::Prefix(prefix) = &self.path else {
            return None;
        };
        let rest = path.strip_prefix(prefix.as_str())?;
        Some(rest.split('/').next().unwrap_or("")).filter(|s| !s.is_empty())
    }

    /// The permission a data request asks for.
    pub fn permission_for(&self, method: &str) -> Permission {
        self.permission.unwrap_or(match method {
            "GET" | "HEAD" | "OPTIONS" => Permission::Read,
            _ => Permission::Write,
        })
    }
}

/// A parsed policy snapshot.
#[derive(Debug, Clone)]
pub struct Policy {
    pub rules: Vec<Rule>,
    /// Longest lifetime of a token issued for an audience.
    pub audience_ttl: BTreeMap<String, Duration>,
    /// Hex SHA-256 of the source text.
    pub version: String,
}

impl Policy {
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut rules = Vec::with_capacity(file.rule.len());
        for r in file.rule {
            let at = |problem: String| format!("rule {:?}: {problem}", r.name);
            if r.name.trim().is_empty() {
                return Err("every rule needs a name".into());
            }
            if r.accept.is_empty() {
                return Err(at("accept must name at least one credential kind".into()));
            }
            if r.audience.trim().is_empty() {
                return Err(at("audience must not be empty".into()));
            }
            let methods: Vec<String> = r.methods.iter().map(|m| m.to_ascii_uppercase()).collect();
            if let Some(bad) = methods
                .iter()
                .find(|m| m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()))
            {
                return Err(at(format!("{bad:?} is not an HTTP method")));
            }
            if r.accept.contains(&CredentialKind::Workload) && r.trusted_issuers.is_empty() {
                return Err(at(
                    "accept = [\"workload\"] needs trusted_issuers naming the issuers".into(),
                ));
            }
            let path = PathPattern::parse(&r.path).map_err(at)?;
            if r.data && !matches!(path, PathPattern::Prefix(_)) {
                return Err(at("a data rule's path is a prefix, as in /data/*".into()));
            }
            if !r.data && (r.permission.is_some() || r.purpose.is_some()) {
                return Err(at("permission and purpose apply to data rules only".into()));
            }
            rules.push(Rule {
                path,
                name: r.name,
                methods,
                accept: r.accept,
                audience: r.audience,
                scopes: r.scopes,
                clients: r.clients,
                tenants: r.tenants,
                trusted_issuers: r.trusted_issuers,
                delegation: r.delegation,
                data: r.data,
                permission: r.permission,
                purpose: r.purpose,
                // Every decision on data is audited.
                audit: if r.data { AuditLevel::All } else { r.audit },
            });
        }
        let mut audience_ttl = BTreeMap::new();
        for (aud, a) in file.audiences {
            let ttl = humantime::parse_duration(a.max_token_ttl.trim())
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    format!(
                        "audiences.{aud}.max_token_ttl: {:?} is not a duration like \"10m\"",
                        a.max_token_ttl
                    )
                })?;
            audience_ttl.insert(aud, ttl);
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
        Ok(Self {
            rules,
            audience_ttl,
            version: hex::encode(digest.as_ref()),
        })
    }

    /// `ttl` (seconds), no longer than `[audiences.<aud>] max_token_ttl`
    /// allows for any of `audiences`: the cap binds every token issued for
    /// an audience, whichever grant issues it.
    pub fn cap_ttl(&self, ttl: i64, audiences: &[String]) -> i64 {
        audiences
            .iter()
            .filter_map(|a| self.audience_ttl.get(a))
            .fold(ttl, |ttl, cap| ttl.min(cap.as_secs() as i64))
    }

    pub fn builtin() -> Self {
        Self::parse(BUILTIN).expect("built-in policy parses")
    }

    /// The first rule whose path and method match.
    pub fn route(&self, method: &str, path: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| {
            r.path.matches(path) && (r.methods.is_empty() || r.methods.iter().any(|m| m == method))
        })
    }
}

/// Why a request was denied; each maps to one status and RFC 6750 error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// No rule matches: deny by default.
    NoRoute,
    /// Dot segments, doubled or encoded slashes: refused rather than
    /// guessing how the upstream would read them.
    NonCanonicalPath,
    MissingCredential,
    InvalidCredential(TokenError),
    WrongKind {
        got: &'static str,
    },
    WrongAudience,
    /// A trusted issuer's token without any of the issuer's `audiences`.
    IssuerAudience,
    MissingScope(String),
    ClientNotAllowed,
    TenantNotAllowed,
    /// A trusted issuer's token on a rule that does not name that issuer.
    IssuerNotAccepted,
    /// An upstream OpenID Connect ID token: it tells a client who signed
    /// in, and is no credential for an API (OIDC Core §2).
    IdToken,
    DelegationRequired,
    DelegationForbidden,
    /// A data rule refused the dataset request.
    Data(DataDenial),
}

impl Denial {
    /// 401 when the credential is missing or invalid, 403 otherwise.
    pub fn status(&self) -> u16 {
        match self {
            Denial::MissingCredential | Denial::InvalidCredential(_) | Denial::IdToken => 401,
            _ => 403,
        }
    }

    /// The error code: RFC 6750 §3.1 for token problems, `access_denied`
    /// when the route itself is refused (`None`: no credential was sent, so
    /// the challenge carries no error).
    pub fn error(&self) -> Option<&'static str> {
        match self {
            Denial::MissingCredential => None,
            Denial::InvalidCredential(_) | Denial::IdToken => Some("invalid_token"),
            Denial::NoRoute | Denial::NonCanonicalPath => Some("access_denied"),
            // RFC 6750 §3.1 has no closer code for a valid token that this
            // route does not accept; `reason` in the body says which check failed.
            _ => Some("insufficient_scope"),
        }
    }

    /// Stable machine-readable reason for audit records and deny bodies.
    pub fn code(&self) -> &'static str {
        match self {
            Denial::NoRoute => "no_matching_rule",
            Denial::NonCanonicalPath => "non_canonical_path",
            Denial::MissingCredential => "missing_credential",
            Denial::InvalidCredential(e) => e.code(),
            Denial::WrongKind { .. } => "credential_kind_not_accepted",
            Denial::WrongAudience | Denial::IssuerAudience => "wrong_audience",
            Denial::MissingScope(_) => "missing_scope",
            Denial::ClientNotAllowed => "client_not_allowed",
            Denial::TenantNotAllowed => "tenant_not_allowed",
            Denial::IssuerNotAccepted => "issuer_not_accepted",
            Denial::IdToken => "id_token_not_accepted",
            Denial::DelegationRequired => "delegation_required",
            Denial::DelegationForbidden => "delegation_forbidden",
            Denial::Data(d) => d.code(),
        }
    }

    /// The reason the caller is told; [`Denial::code`] is what is audited.
    pub fn shown_code(&self) -> &'static str {
        match self {
            Denial::Data(d) => d.shown().code(),
            d => d.code(),
        }
    }

    pub fn description(&self, rule: Option<&Rule>) -> String {
        let rule_name = rule.map_or("-", |r| r.name.as_str());
        match self {
            Denial::NoRoute => "no policy rule matches this method and path".into(),
            Denial::NonCanonicalPath => "path is not in canonical form".into(),
            Denial::MissingCredential => "a bearer token is required".into(),
            Denial::InvalidCredential(e) => e.to_string(),
            Denial::WrongKind { got } => format!("rule {rule_name} does not accept {got} tokens"),
            Denial::WrongAudience => {
                format!(
                    "token audience does not include {:?}",
                    rule.map_or("", |r| r.audience.as_str())
                )
            }
            Denial::IssuerAudience => {
                "token audience does not name one its issuer is trusted for".into()
            }
            Denial::MissingScope(s) => format!("scope {s:?} is required"),
            Denial::ClientNotAllowed => format!("client is not allowed by rule {rule_name}"),
            Denial::TenantNotAllowed => format!("tenant is not allowed by rule {rule_name}"),
            Denial::IssuerNotAccepted => {
                format!("rule {rule_name} does not accept tokens from this issuer")
            }
            Denial::IdToken => "an ID token is not accepted here; present an access token".into(),
            Denial::DelegationRequired => {
                format!("rule {rule_name} requires a delegated token (act)")
            }
            Denial::DelegationForbidden => {
                format!("rule {rule_name} does not accept delegated tokens")
            }
            Denial::Data(d) => d.shown().description().into(),
        }
    }
}

/// Decides whether a verified (and unrevoked) token may pass `rule`.
pub fn decide(rule: &Rule, token: &VerifiedToken) -> Result<(), Denial> {
    let kind = match &token.issuer {
        TokenIssuer::Own(IssuerKind::Service) => CredentialKind::Service,
        TokenIssuer::Own(IssuerKind::Human) => CredentialKind::Human,
        TokenIssuer::Trusted(name) => {
            if !rule.trusted_issuers.contains(name) {
                return Err(Denial::IssuerNotAccepted);
            }
            if token
                .upstream
                .as_ref()
                .is_some_and(|u| u.form == TokenForm::IdToken)
            {
                return Err(Denial::IdToken);
            }
            match token.claims.principal {
                Principal::Workload => CredentialKind::Workload,
                _ => CredentialKind::Human,
            }
        }
    };
    if !rule.accept.contains(&kind) {
        return Err(Denial::WrongKind {
            got: token.claims.principal.as_str(),
        });
    }
    let claims = &token.claims;
    if !claims.aud.contains(&rule.audience) {
        return Err(Denial::WrongAudience);
    }
    if let Some(missing) = rule.scopes.iter().find(|s| !claims.has_scope(s)) {
        return Err(Denial::MissingScope(missing.clone()));
    }
    if !rule.clients.is_empty() && !rule.clients.contains(&claims.client_id) {
        return Err(Denial::ClientNotAllowed);
    }
    if !rule.tenants.is_empty() && !rule.tenants.contains(&claims.tenant) {
        return Err(Denial::TenantNotAllowed);
    }
    match (rule.delegation, claims.act.is_some()) {
        (DelegationRule::Required, false) => Err(Denial::DelegationRequired),
        (DelegationRule::Forbidden, true) => Err(Denial::DelegationForbidden),
        _ => Ok(()),
    }
}

/// Strips the query and refuses paths a proxy or upstream might resolve
/// differently from us.
pub fn canonical_path(raw: &str) -> Result<&str, Denial> {
    let path = raw.split(['?', '#']).next().unwrap_or("");
    let bad = !path.starts_with('/')
        || path.contains("//")
        || path.contains('\\')
        // Matrix parameters (`/admin;x/`) that some servers strip.
        || path.contains(';')
        || path.chars().any(char::is_control)
        || path.split('/').any(|seg| seg == "." || seg == "..")
        || !percent_encoding_is_canonical(path);
    if bad {
        Err(Denial::NonCanonicalPath)
    } else {
        Ok(path)
    }
}

/// RFC 3986 §6.2.2.2: unreserved characters are never percent-encoded in a
/// normalized URI. An encoded letter, digit, `-._~`, a slash, backslash,
/// `%` (double encoding) or control byte would let the rule see one path
/// and the upstream another, so any of them, or a broken escape, is refused.
fn percent_encoding_is_canonical(path: &str) -> bool {
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let Some(hex) = path.get(i + 1..i + 3) else {
                return false;
            };
            let Ok(b) = u8::from_str_radix(hex, 16) else {
                return false;
            };
            if b.is_ascii_alphanumeric() || b"-._~/\\%".contains(&b) || b < 0x20 || b == 0x7f {
                return false;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issuer::AccessClaims;

    fn token(
        issuer: IssuerKind,
        aud: &str,
        scope: &str,
        client: &str,
        tenant: &str,
    ) -> VerifiedToken {
        VerifiedToken {
            issuer: TokenIssuer::Own(issuer),
            upstream: None,
            kid: "k".into(),
            claims: AccessClaims {
                iss: "i".into(),
                sub: "s".into(),
                aud: vec![aud.into()],
                exp: 10,
                iat: 0,
                nbf: None,
                jti: "j".into(),
                client_id: client.into(),
                scope: scope.into(),
                principal: if issuer == IssuerKind::Human {
                    Principal::Human
                } else {
                    Principal::Service
                },
                tenant: tenant.into(),
                groups: Vec::new(),
                act: None,
                may_act: None,
            },
        }
    }

    #[test]
    fn builtin_policy_table() {
        let p = Policy::builtin();
        let svc = token(IssuerKind::Service, "internal", "", "c", "t");
        let human = token(IssuerKind::Human, "api", "", "c", "t");
        let svc_api = token(IssuerKind::Service, "api", "", "c", "t");
        let human_internal = token(IssuerKind::Human, "internal", "", "c", "t");
        let svc_wrong_aud = token(IssuerKind::Service, "api", "", "c", "t");
        let cases: Vec<(&str, &str, &VerifiedToken, Result<(), &str>)> = vec![
            ("GET", "/internal/x", &svc, Ok(())),
            ("POST", "/internal", &svc, Ok(())),
            (
                "GET",
                "/internal/x",
                &human_internal,
                Err("credential_kind_not_accepted"),
            ),
            ("GET", "/api/x", &human, Ok(())),
            (
                "GET",
                "/api/x",
                &svc_api,
                Err("credential_kind_not_accepted"),
            ),
            ("GET", "/api/x", &human_internal, Err("wrong_audience")),
            ("GET", "/internal/x", &svc_wrong_aud, Err("wrong_audience")),
        ];
        for (method, path, tok, want) in cases {
            let rule = p.route(method, path).unwrap();
            assert_eq!(
                decide(rule, tok).map_err(|d| d.code()),
                want,
                "{method} {path}"
            );
        }
        assert!(p.route("GET", "/internalx").is_none());
        assert!(p.route("GET", "/ui/x").is_none());
        assert!(p.route("GET", "/").is_none());
    }

    #[test]
    fn allow_lists_scopes_and_methods() {
        let p = Policy::parse(
            r#"
            [[rule]]
            name = "billing-write"
            path = "/internal/billing/*"
            methods = ["post"]
            accept = ["service"]
            audience = "internal"
            scopes = ["billing:write"]
            clients = ["c1"]
            tenants = ["acme"]
            audit = "all"
            "#,
        )
        .unwrap();
        let rule = p.route("POST", "/internal/billing/x").unwrap();
        assert_eq!(rule.audit, AuditLevel::All);
        assert!(p.route("GET", "/internal/billing/x").is_none());
        let ok = token(
            IssuerKind::Service,
            "internal",
            "billing:write other",
            "c1",
            "acme",
        );
        assert_eq!(decide(rule, &ok), Ok(()));
        let e = |t| decide(rule, &t).unwrap_err().code();
        assert_eq!(
            e(token(
                IssuerKind::Service,
                "internal",
                "billing:read",
                "c1",
                "acme"
            )),
            "missing_scope"
        );
        assert_eq!(
            e(token(
                IssuerKind::Service,
                "internal",
                "billing:write",
                "c2",
                "acme"
            )),
            "client_not_allowed"
        );
        assert_eq!(
            e(token(
                IssuerKind::Service,
                "internal",
                "billing:write",
                "c1",
                "other"
            )),
            "tenant_not_allowed"
        );
    }

    #[test]
    fn trusted_issuers_and_delegation() {
        let p = Policy::parse(
            r#"
            [[rule]]
            name = "internal-wi"
            path = "/internal/*"
            accept = ["service", "workload"]
            audience = "internal"
            trusted_issuers = ["cluster"]

            [[rule]]
            name = "api-delegated"
            path = "/api/*"
            accept = ["human"]
            audience = "api"
            trusted_issuers = ["corp"]
            delegation = "required"

            [audiences.api]
            max_token_ttl = "10m"
            "#,
        )
        .unwrap();
        assert_eq!(p.audience_ttl["api"], Duration::from_secs(600));
        let auds = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(p.cap_ttl(3600, &auds(&["api"])), 600);
        assert_eq!(p.cap_ttl(300, &auds(&["api"])), 300);
        assert_eq!(p.cap_ttl(3600, &auds(&["other", "api"])), 600);
        assert_eq!(p.cap_ttl(3600, &auds(&["other"])), 3600);
        let upstream = |name: &str, principal: Principal, aud: &str, act: bool| {
            let mut t = token(IssuerKind::Human, aud, "", "c", "t");
            t.issuer = TokenIssuer::Trusted(name.into());
            t.claims.principal = principal;
            t.claims.act = act.then(|| serde_json::json!({"sub": "app"}));
            t
        };
        let internal = p.route("GET", "/internal/x").unwrap();
        let api = p.route("GET", "/api/x").unwrap();
        let code = |rule, t: &VerifiedToken| decide(rule, t).map_err(|d| d.code());
        assert_eq!(
            code(
                internal,
                &upstream("cluster", Principal::Workload, "internal", false)
            ),
            Ok(())
        );
        assert_eq!(
            code(
                internal,
                &upstream("other", Principal::Workload, "internal", false)
            ),
            Err("issuer_not_accepted")
        );
        // A person from a named issuer is still not a workload.
        assert_eq!(
            code(
                internal,
                &upstream("cluster", Principal::Human, "internal", false)
            ),
            Err("credential_kind_not_accepted")
        );
        assert_eq!(
            code(api, &upstream("corp", Principal::Human, "api", true)),
            Ok(())
        );
        assert_eq!(
            code(api, &upstream("corp", Principal::Human, "api", false)),
            Err("delegation_required")
        );
        // An ID token is refused whatever else it carries; an access token
        // or an untyped JWT with the same claims passes.
        let with_form = |form| {
            let mut t = upstream("corp", Principal::Human, "api", true);
            t.upstream = Some(crate::trusted::UpstreamClaims {
                name: "corp".into(),
                kind: crate::config::TrustedKind::Human,
                form,
                groups: vec![],
                email: None,
                may_act: None,
            });
            t
        };
        assert_eq!(
            code(api, &with_form(TokenForm::IdToken)),
            Err("id_token_not_accepted")
        );
        assert_eq!(Denial::IdToken.status(), 401);
        assert_eq!(Denial::IdToken.error(), Some("invalid_token"));
        for form in [TokenForm::AccessToken, TokenForm::Unknown] {
            assert_eq!(code(api, &with_form(form)), Ok(()));
        }
        let mut own = token(IssuerKind::Human, "api", "", "c", "t");
        own.claims.act = Some(serde_json::json!({"sub": "app"}));
        assert_eq!(code(api, &own), Ok(()));
        assert!(
            Policy::parse("[[rule]]\nname='a'\npath='/a'\naccept=['workload']\naudience='x'")
                .is_err()
        );
        assert!(Policy::parse("[audiences.api]\nmax_token_ttl='soon'").is_err());
        let forbidden = Policy::parse(
            "[[rule]]\nname='a'\npath='/a'\naccept=['human']\naudience='api'\ndelegation='forbidden'",
        )
        .unwrap();
        assert_eq!(
            code(forbidden.route("GET", "/a").unwrap(), &own),
            Err("delegation_forbidden")
        );
    }

    #[test]
    fn invalid_policies_are_refused() {
        for bad in [
            "/internal/x\0",
            "/internal/\nx",
            "[[rule]]\nname='a'\npath='internal'\naccept=['service']\naudience='x'",
            "[[rule]]\nname='a'\npath='/a/*/b'\naccept=['service']\naudience='x'",
            "[[rule]]\nname='a'\npath='/a'\naccept=[]\naudience='x'",
            "[[rule]]\nname='a'\npath='/a'\naccept=['robot']\naudience='x'",
            "[[rule]]\nname='a'\npath='/a'\naccept=['service']\naudience='x'\nunknown=1",
            "[[rule]]\nname='a'\npath='/a'\naccept=['service']\naudience='x'\nmethods=['G E T']",
        ] {
            assert!(Policy::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn canonical_paths() {
        assert_eq!(canonical_path("/internal/a?x=1"), Ok("/internal/a"));
        assert_eq!(
            canonical_path("/internal/a%20b%3A"),
            Ok("/internal/a%20b%3A")
        );
        for bad in [
            "/internal/%61dmin",
            "/internal/admin;x/users",
            "/internal/%252e%252e",
            "/a%2",
            "/a%zz",
            "/a%7e",
        ] {
            assert_eq!(canonical_path(bad), Err(Denial::NonCanonicalPath), "{bad}");
        }
        for bad in [
            "/api/../internal/x",
            "/api/./x",
            "//internal",
            "/api/%2e%2e/internal",
            "/a%2Fb",
            "api",
            "/a\\b",
        ] {
            assert_eq!(canonical_path(bad), Err(Denial::NonCanonicalPath), "{bad}");
        }
    }
}
