//! Access-token claims (RFC 9068 §2.2) plus Tessera's `principal`,
//! `tenant` and `act` (RFC 8693 §4.1).

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What kind of caller a token stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Principal {
    Human,
    Service,
    Workload,
}

impl Principal {
    pub fn as_str(self) -> &'static str {
        match self {
            Principal::Human => "human",
            Principal::Service => "service",
            Principal::Workload => "workload",
        }
    }
}

/// The claims of every access token Tessera issues.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub sub: String,
    /// One audience is written as a string, several as an array (RFC 7519 §4.1.3).
    #[serde(serialize_with = "ser_aud", deserialize_with = "de_aud")]
    pub aud: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    pub jti: String,
    pub client_id: String,
    /// Space-separated, omitted when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope: String,
    pub principal: Principal,
    #[serde(default)]
    pub tenant: String,
    /// A person's groups, carried from the IdP so that group grants on
    /// datasets apply to delegated tokens too; omitted when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<serde_json::Value>,
    /// RFC 8693 §4.4: who may act for the subject next. Carried from the
    /// subject token into a delegated token, in Tessera's namespace (each
    /// entry names a client of the service issuer), so it binds every
    /// further exchange too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub may_act: Option<serde_json::Value>,
}

impl AccessClaims {
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scope.split(' ').filter(|s| !s.is_empty())
    }

    pub fn has_scope(&self, wanted: &str) -> bool {
        self.scopes().any(|s| s == wanted)
    }
}

fn ser_aud<S: Serializer>(aud: &[String], s: S) -> Result<S::Ok, S::Error> {
    match aud {
        [one] => s.serialize_str(one),
        many => many.serialize(s),
    }
}

fn de_aud<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(a) => vec![a],
        OneOrMany::Many(a) => a,
    })
}
