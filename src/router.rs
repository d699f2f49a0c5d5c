//! The one list of HTTP routes and layers, shared by `main` and the tests.

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Request};
use axum::routing::{any, get, post};
use axum::Router;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::http::HeaderValue;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;

use crate::app::AppState;
use crate::ext_authz;
use crate::http::{discovery, health, oauth, REQUEST_ID};

pub fn router(app: AppState) -> Router {
    let request_id = HeaderName::from_static(REQUEST_ID);
    let max_body = app.config.server.max_body_bytes;
    Router::new()
        .route("/oauth2/token", post(oauth::token))
        .route("/oauth2/introspect", post(oauth::introspect))
        .route("/oauth2/revoke", post(oauth::revoke))
        .route("/.well-known/oauth-authorization-server", get(discovery::authorization_server))
        // RFC 8414 §3.1: metadata of an issuer with a path, at the path-inserted
        // well-known URL; the same document as its OpenID configuration.
        .route(
            "/.well-known/oauth-authorization-server/issuers/{issuer}",
            get(discovery::openid_configuration),
        )
        .route("/issuers/{issuer}/.well-known/openid-configuration", get(discovery::openid_configuration))
        .route("/issuers/{issuer}/jwks.json", get(discovery::jwks))
        .route(ext_authz::http::PREFIX, any(ext_authz::http::handle))
        .route(&format!("{}/", ext_authz::http::PREFIX), any(ext_authz::http::handle))
        .route(&format!("{}/{{*path}}", ext_authz::http::PREFIX), any(ext_authz::http::handle))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .fallback(discovery::not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                let id = req.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("-");
                tracing::debug_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
            }),
        )
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, SequentialRequestId::new()))
        .with_state(app)
}

/// Request ids for requests that arrive without one: a random per-process
/// prefix and a counter. Unique across replicas in practice, and without
/// the system call a random UUID per request costs on the hot path.
#[derive(Clone)]
struct SequentialRequestId {
    prefix: Arc<str>,
    next: Arc<AtomicU64>,
}

impl SequentialRequestId {
    fn new() -> Self {
        Self {
            prefix: crate::oauth::secret::random_id()[..12].into(),
            next: Arc::new(AtomicU64::new(1)),
        }
    }
}

impl MakeRequestId for SequentialRequestId {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        HeaderValue::from_str(&format!("{}-{n:x}", self.prefix))
            .ok()
            .map(RequestId::new)
    }
}
