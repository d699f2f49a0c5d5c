//! `POST /oauth2/token` (RFC 6749 §3.2), `POST /oauth2/introspect`
//! (RFC 7662 §2) and `POST /oauth2/revoke` (RFC 7009 §2).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::error::no_store;
use super::form::{presented_credentials, OAuthForm};
use super::meta;
use crate::app::AppState;
use crate::oauth::grants;
use crate::oauth::{client_auth, introspection, revoke, OAuthError};

pub async fn token(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    OAuthForm(mut params): OAuthForm,
) -> Result<Response, OAuthError> {
    let meta = meta(&headers, peer, "POST /oauth2/token");
    let presented = presented_credentials(&headers, &mut params);
    let endpoint = format!("{}/oauth2/token", app.config.server.public_url);
    // A workload exchanging its own identity token needs no client
    // credentials: the token names the client it is bound to.
    let caller =
        if presented.is_empty() && grants::token_exchange::is_workload_exchange(&app, &params) {
            None
        } else {
            Some(client_auth::authenticate(&app, presented, &endpoint, &meta).await?)
        };
    let response = grants::handle(&app, caller.as_ref(), &params, &meta).await?;
    Ok(no_store(response))
}

pub async fn introspect(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    OAuthForm(mut params): OAuthForm,
) -> Result<Response, OAuthError> {
    let meta = meta(&headers, peer, "POST /oauth2/introspect");
    let presented = presented_credentials(&headers, &mut params);
    let endpoint = format!("{}/oauth2/introspect", app.config.server.public_url);
    let caller = client_auth::authenticate(&app, presented, &endpoint, &meta).await?;
    let token = params.require("token")?;
    Ok(no_store(
        introspection::introspect(&app, &caller.client, token, &meta).await?,
    ))
}

pub async fn revoke(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    OAuthForm(mut params): OAuthForm,
) -> Result<Response, OAuthError> {
    let meta = meta(&headers, peer, "POST /oauth2/revoke");
    let presented = presented_credentials(&headers, &mut params);
    let endpoint = format!("{}/oauth2/revoke", app.config.server.public_url);
    let caller = client_auth::authenticate(&app, presented, &endpoint, &meta).await?;
    let token = params.require("token")?;
    revoke::revoke(&app, &caller.client, token, &meta).await?;
    Ok((
        StatusCode::OK,
        [(axum::http::header::CACHE_CONTROL, "no-store")],
    )
        .into_response())
}
