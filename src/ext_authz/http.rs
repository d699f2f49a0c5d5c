//! Envoy's HTTP ext_authz service (`http_service` with
//! `path_prefix: /ext_authz`): Envoy sends the original method and path
//! under `/ext_authz`, with the headers its `allowed_headers` lets through.
//! Also serves nginx `auth_request` when `server.trust_original_request_headers`
//! is on, taking method and URI from `X-Original-Method`/`X-Original-URI`.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::{check, CheckRequest, CheckResponse, PURPOSE_HEADER};
use crate::app::AppState;
use crate::http::request_id;

pub const PREFIX: &str = "/ext_authz";

pub async fn handle(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let trust = app.config.server.trust_original_request_headers;
    let original_uri = trust.then(|| header("x-original-uri")).flatten();
    let original_method = trust.then(|| header("x-original-method")).flatten();
    let own_path = uri.path_and_query().map_or(uri.path(), |pq| pq.as_str());
    let path = match original_uri {
        Some(u) => u,
        None => match own_path.strip_prefix(PREFIX) {
            Some("") => "/",
            Some(rest) => rest,
            None => own_path,
        },
    };
    let method = original_method.unwrap_or(method.as_str());
    let forwarded = header("x-forwarded-for")
        .and_then(|v| v.split(',').next())
        .map(|s| s.trim().to_string());
    let req = CheckRequest {
        method,
        path,
        authorization: header("authorization"),
        purpose: header(PURPOSE_HEADER),
        request_id: request_id(&headers),
        peer: Some(forwarded.map_or_else(|| peer.to_string(), |f| format!("{f} via {peer}"))),
    };
    match check(&app, req).await {
        CheckResponse::Allow { headers: upstream } => {
            let mut out = HeaderMap::new();
            for (k, v) in upstream {
                let (Ok(k), Ok(v)) = (HeaderName::try_from(k), HeaderValue::try_from(v)) else {
                    // Allowing without every identity header would let a
                    // client-sent copy reach the upstream: fail closed.
                    tracing::error!("an identity header value cannot be sent; denying");
                    let body = serde_json::json!({"error": "server_error", "error_description": "identity cannot be expressed as headers"});
                    return (StatusCode::INTERNAL_SERVER_ERROR, Json(body)).into_response();
                };
                out.insert(k, v);
            }
            (StatusCode::OK, out).into_response()
        }
        CheckResponse::Deny {
            status,
            www_authenticate,
            body,
        } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
            let mut resp = (status, Json(body)).into_response();
            if let Some(v) = www_authenticate.and_then(|v| HeaderValue::try_from(v).ok()) {
                resp.headers_mut()
                    .insert(axum::http::header::WWW_AUTHENTICATE, v);
            }
            resp.headers_mut().insert(
                axum::http::header::CACHE_CONTROL,
                HeaderValue::from_static("no-store"),
            );
            resp
        }
    }
}
