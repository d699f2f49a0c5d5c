//! The form extractor of the OAuth endpoints: malformed, oversized or
//! wrongly typed bodies get our RFC 6749 error shape, never axum's plain
//! text rejections.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;

use crate::oauth::client_auth::{parse_basic, Presented};
use crate::oauth::{FormParams, OAuthError};

/// A strictly parsed `application/x-www-form-urlencoded` body.
#[derive(Debug)]
pub struct OAuthForm(pub FormParams);

impl<S: Send + Sync> FromRequest<S> for OAuthForm {
    type Rejection = OAuthError;

    async fn from_request(req: Request, state: &S) -> Result<Self, OAuthError> {
        let is_form = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| {
                v.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            });
        if !is_form {
            return Err(OAuthError::invalid_request(
                "content type must be application/x-www-form-urlencoded",
            ));
        }
        let body = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.into_response().status() == StatusCode::PAYLOAD_TOO_LARGE {
                OAuthError::PayloadTooLarge
            } else {
                OAuthError::invalid_request("request body could not be read")
            }
        })?;
        Ok(OAuthForm(FormParams::parse(&body)?))
    }
}

/// Takes the client's credentials out of the `Authorization` header and
/// the form, so the grant sees only its own parameters.
pub fn presented_credentials(headers: &HeaderMap, params: &mut FormParams) -> Presented {
    let auth = headers
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or(""));
    let is_basic = auth.is_some_and(|v| v.len() >= 6 && v[..6].eq_ignore_ascii_case("basic "));
    let basic = if is_basic {
        auth.and_then(parse_basic)
    } else {
        None
    };
    Presented {
        basic_malformed: is_basic && basic.is_none(),
        basic,
        client_id: params.take("client_id"),
        client_secret: params.take("client_secret"),
        assertion_type: params.take("client_assertion_type"),
        assertion: params.take("client_assertion"),
    }
}
