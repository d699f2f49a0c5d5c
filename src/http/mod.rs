//! axum adapters for the OAuth, discovery and health endpoints: extract,
//! call the domain, respond. No decision is made here.

pub mod discovery;
pub mod error;
pub mod form;
pub mod health;
pub mod oauth;

use std::net::SocketAddr;

use axum::http::HeaderMap;

use crate::audit::RequestMeta;

/// Header carrying the request id (set by Envoy, or by our own layer).
pub const REQUEST_ID: &str = "x-request-id";

/// The request id, bounded in length since it lands in audit records.
pub fn request_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.chars().take(128).collect())
}

pub fn meta(headers: &HeaderMap, peer: SocketAddr, route: &str) -> RequestMeta {
    RequestMeta {
        request_id: request_id(headers),
        peer: Some(peer.to_string()),
        route: route.to_string(),
    }
}
