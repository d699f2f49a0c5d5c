//! Discovery: RFC 8414 authorization-server metadata, and per issuer an
//! OpenID-style configuration document and its JWKS (RFC 7517 §5).

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::app::AppState;
use crate::issuer::IssuerKind;

/// How long verifiers may cache a JWKS. `keys.rotation_delay` must stay
/// well above this so a next key is in every cache before it signs.
pub const JWKS_MAX_AGE: u64 = 300;

const AUTH_METHODS: [&str; 3] = [
    "client_secret_basic",
    "client_secret_post",
    "private_key_jwt",
];
const ASSERTION_ALGS: [&str; 3] = ["ES256", "EdDSA", "RS256"];

fn endpoints(base: &str) -> Value {
    json!({
        "token_endpoint": format!("{base}/oauth2/token"),
        "introspection_endpoint": format!("{base}/oauth2/introspect"),
        "revocation_endpoint": format!("{base}/oauth2/revoke"),
        "token_endpoint_auth_methods_supported": AUTH_METHODS,
        "token_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGS,
        "introspection_endpoint_auth_methods_supported": AUTH_METHODS,
        "introspection_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGS,
        "revocation_endpoint_auth_methods_supported": AUTH_METHODS,
        "revocation_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGS,
        // No authorization endpoint yet: no response types.
        "response_types_supported": [],
    })
}

fn merge(mut a: Value, b: Value) -> Value {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

const TOKEN_EXCHANGE: &str = crate::oauth::grants::token_exchange::GRANT_TYPE;

pub async fn authorization_server(State(app): State<AppState>) -> Json<Value> {
    let base = &app.config.server.public_url;
    Json(merge(
        json!({
            "issuer": base,
            "jwks_uri": format!("{base}/issuers/service/jwks.json"),
            "grant_types_supported": ["client_credentials", TOKEN_EXCHANGE],
        }),
        endpoints(base),
    ))
}

fn issuer_kind(name: &str) -> Result<IssuerKind, Box<Response>> {
    IssuerKind::parse(name).ok_or_else(|| {
        (
            axum::http::StatusCode::NOT_FOUND,
            Json(json!({"error": "not_found", "error_description": "no such issuer"})),
        )
            .into_response()
            .into()
    })
}

pub async fn openid_configuration(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, Response> {
    let kind = issuer_kind(&name).map_err(|r| *r)?;
    let issuer = app.issuers.get(kind);
    let algs: Vec<&str> = app
        .issuers
        .algorithms(kind, app.clock.now())
        .iter()
        .map(|a| a.as_str())
        .collect();
    let grants: &[&str] = match kind {
        IssuerKind::Service => &["client_credentials", TOKEN_EXCHANGE],
        IssuerKind::Human => &[TOKEN_EXCHANGE],
    };
    Ok(Json(merge(
        json!({
            "issuer": issuer.iss,
            "jwks_uri": format!("{}/jwks.json", issuer.iss),
            "grant_types_supported": grants,
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": algs,
            "access_token_signing_alg_values_supported": algs,
        }),
        endpoints(&app.config.server.public_url),
    )))
}

pub async fn jwks(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, Response> {
    let kind = issuer_kind(&name).map_err(|r| *r)?;
    let set = app.issuers.get(kind).jwks(app.clock.now());
    let mut resp = Json(set).into_response();
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_str(&format!("public, max-age={JWKS_MAX_AGE}")).expect("static header"),
    );
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/jwk-set+json"),
    );
    Ok(resp)
}

/// JSON 404 for unknown paths.
pub async fn not_found() -> Response {
    (
        axum::http::StatusCode::NOT_FOUND,
        Json(json!({"error": "not_found", "error_description": "no such endpoint"})),
    )
        .into_response()
}
