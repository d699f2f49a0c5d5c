//! The grants of the token endpoint, one module each. Each grant first
//! *validates* its parameters against the client (no side effects), then
//! *issues*.

pub mod client_credentials;

use serde::Serialize;

use super::{FormParams, OAuthError};

/// A closed set of supported grants.
#[derive(Debug)]
pub enum Grant {
    ClientCredentials(client_credentials::Params),
}

impl Grant {
    pub fn parse(params: &FormParams) -> Result<Self, OAuthError> {
        match params.require("grant_type")? {
            "client_credentials" => Ok(Grant::ClientCredentials(
                client_credentials::Params::parse(params)?,
            )),
            other => Err(OAuthError::UnsupportedGrantType(
                format!(
                    "grant_type {} is not supported",
                    if other.len() <= 80 && other.is_ascii() {
                        other
                    } else {
                        "(value)"
                    }
                )
                .into(),
            )),
        }
    }
}

/// RFC 6749 §5.1 successful response.
#[derive(Debug, Serialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: i64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub scope: String,
}

/// RFC 6749 §3.3 `scope-token = 1*( %x21 / %x23-5B / %x5D-7E )`.
pub fn parse_scope(text: &str) -> Result<Vec<String>, OAuthError> {
    let mut out: Vec<String> = Vec::new();
    for token in text.split(' ').filter(|t| !t.is_empty()) {
        let ok = token.len() <= 128
            && token
                .bytes()
                .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b));
        if !ok {
            return Err(OAuthError::InvalidScope(
                "scope is not a list of valid scope tokens".into(),
            ));
        }
        if !out.iter().any(|s| s == token) {
            out.push(token.to_string());
        }
    }
    Ok(out)
}

/// RFC 8707 §2: a `resource` is an absolute URI without a fragment.
pub fn parse_resource(text: &str) -> Result<String, OAuthError> {
    match url::Url::parse(text) {
        Ok(u) if u.fragment().is_none() => Ok(text.to_string()),
        _ => Err(OAuthError::InvalidTarget(
            "resource must be an absolute URI without a fragment".into(),
        )),
    }
}
