//! `/healthz` (the process answers), `/readyz` (store reachable, both
//! issuers have a signing key, a policy is loaded) and `/metrics`.
//! Trusted issuers' key caches are reported by `/readyz` but do not decide
//! readiness: an IdP outage must not take the whole service out of
//! rotation, and its tokens are refused (503) meanwhile anyway.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use crate::app::AppState;
use crate::issuer::IssuerKind;

pub async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

pub async fn readyz(State(app): State<AppState>) -> impl IntoResponse {
    let store = matches!(
        tokio::time::timeout(Duration::from_secs(2), app.store.ping()).await,
        Ok(Ok(()))
    );
    let now = app.clock.now();
    let keys = IssuerKind::ALL
        .iter()
        .all(|k| app.issuers.get(*k).ring().signing_at(now).is_some());
    let policy = app.policy.current();
    let ready = store && keys && !policy.rules.is_empty();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let now_ms = app.clock.now_millis();
    let trusted: serde_json::Map<String, serde_json::Value> = app
        .trusted
        .issuers
        .iter()
        .map(|t| {
            let status = t.keys.status(now_ms);
            (
                t.config.name.clone(),
                json!({"keys_usable": status.usable, "keys": status.keys, "last_error": status.last_error}),
            )
        })
        .collect();
    (
        status,
        Json(json!({
            "status": if ready { "ready" } else { "not_ready" },
            "checks": {"store": store, "keys": keys, "policy": !policy.rules.is_empty()},
            "policy_version": policy.version,
            "trusted_issuers": trusted,
        })),
    )
}

pub async fn metrics(State(app): State<AppState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        app.metrics.render(),
    )
}
