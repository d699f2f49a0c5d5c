//! `application/x-www-form-urlencoded` request parameters (RFC 6749
//! §3.1–3.2, Appendix B). Parsed strictly: invalid percent-encoding or
//! UTF-8 is an `invalid_request`, and a parameter may appear at most once,
//! except `audience` and `resource`, which RFC 8693 §2.1 and RFC 8707 §2
//! allow to repeat. Unrecognized parameters are ignored, as RFC 6749 §3.2
//! requires of the token endpoint. Empty values count as absent (§3.1).

use super::OAuthError;

/// Parameters that may be sent more than once.
const REPEATABLE: &[&str] = &["audience", "resource"];

#[derive(Debug, Default, Clone)]
pub struct FormParams {
    pairs: Vec<(String, String)>,
}

fn decode(part: &str) -> Option<String> {
    let bytes = part.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let s = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(s, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

impl FormParams {
    pub fn parse(body: &[u8]) -> Result<Self, OAuthError> {
        let text = std::str::from_utf8(body)
            .map_err(|_| OAuthError::invalid_request("form body is not UTF-8"))?;
        let mut pairs: Vec<(String, String)> = Vec::new();
        for part in text.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            let (Some(k), Some(v)) = (decode(k), decode(v)) else {
                return Err(OAuthError::invalid_request(
                    "form body is not valid x-www-form-urlencoded",
                ));
            };
            if v.is_empty() {
                continue;
            }
            if v.chars().any(|c| c.is_control() && c != '\t') {
                return Err(OAuthError::invalid_request(format!(
                    "parameter {} contains control characters",
                    safe_name(&k)
                )));
            }
            if !REPEATABLE.contains(&k.as_str()) && pairs.iter().any(|(seen, _)| *seen == k) {
                return Err(OAuthError::invalid_request(format!(
                    "parameter {} is repeated",
                    safe_name(&k)
                )));
            }
            pairs.push((k, v));
        }
        Ok(Self { pairs })
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn require(&self, name: &'static str) -> Result<&str, OAuthError> {
        self.get(name)
            .ok_or_else(|| OAuthError::invalid_request(format!("parameter {name} is required")))
    }

    /// Removes and returns a parameter (client credentials are taken out
    /// before the grant sees the rest).
    pub fn take(&mut self, name: &str) -> Option<String> {
        let i = self.pairs.iter().position(|(k, _)| k == name)?;
        Some(self.pairs.remove(i).1)
    }
}

/// A parameter name is echoed in errors only if it is short and plain.
fn safe_name(name: &str) -> String {
    if name.len() <= 40 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        name.to_string()
    } else {
        "(unnamed)".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_parsing() {
        let p = FormParams::parse(
            b"grant_type=client_credentials&scope=a+b&audience=x&audience=y&empty=",
        )
        .unwrap();
        assert_eq!(p.get("scope"), Some("a b"));
        assert_eq!(p.all("audience"), vec!["x", "y"]);
        assert_eq!(p.get("empty"), None);
        for bad in [
            &b"scope=a&scope=b"[..],
            b"a=%zz",
            b"a=%4",
            b"a=\xff",
            b"a=%0a",
        ] {
            assert_eq!(
                FormParams::parse(bad).unwrap_err().code(),
                "invalid_request",
                "{bad:?}"
            );
        }
    }
}
