//! How an [`OAuthError`] looks on the wire (RFC 6749 §5.2): a JSON body
//! with `error` and `error_description`, `Cache-Control: no-store`, and on
//! 401 a `WWW-Authenticate` challenge (§5.2 requires it for Basic).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::oauth::OAuthError;

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        if let OAuthError::Internal(e) = &self {
            tracing::error!(error = ?e, "internal error answering an OAuth request");
        }
        let status = StatusCode::from_u16(self.status()).unwrap_or(StatusCode::BAD_REQUEST);
        let mut body =
            json!({"error": self.code(), "error_description": rfc6749_text(&self.description())});
        if let Some(reason) = self.reason() {
            body["reason"] = reason.into();
        }
        let mut resp = (status, Json(body)).into_response();
        let h = resp.headers_mut();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        if status == StatusCode::UNAUTHORIZED {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"tessera\""),
            );
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // A throttled or unreachable cloud needs longer than a busy store.
            let after = if matches!(self, OAuthError::CloudUnavailable(..)) {
                "5"
            } else {
                "1"
            };
            h.insert(header::RETRY_AFTER, HeaderValue::from_static(after));
        }
        resp
    }
}

/// A JSON body that must not be cached (tokens, introspection results).
pub fn no_store<T: serde::Serialize>(body: T) -> Response {
    let mut resp = Json(body).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp.headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}

/// RFC 6749 §5.2 limits `error_description` to %x20-21 / %x23-5B / %x5D-7E:
/// quotes and backslashes become apostrophes and slashes, anything else
/// outside the range a question mark.
fn rfc6749_text(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '"' => '\'',
            '\\' => '/',
            ' '..='~' => c,
            _ => '?',
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn descriptions_stay_in_the_rfc_6749_character_set() {
        assert_eq!(
            super::rfc6749_text("audience \"a\\b\" é\n"),
            "audience 'a/b' ??"
        );
    }
}
