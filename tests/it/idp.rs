//! A local OpenID provider on 127.0.0.1: it serves a discovery document
//! and a JWKS and signs tokens, standing in for the company IdP and for a
//! Kubernetes API server (whose only role here is publishing keys). Tests
//! can make it slow, down, or serve garbage, rotate its keys, and count
//! the fetches it answered.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::harness::{now, ClientKey};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Ok,
    /// Answers after this delay.
    Slow(Duration),
    /// 503 for every request.
    Down,
    /// 200 with a body that is not JSON.
    Garbage,
}

struct IdpState {
    issuer: String,
    /// Published keys; the last one signs.
    keys: Mutex<Vec<ClientKey>>,
    mode: Mutex<Mode>,
    cache_control: Mutex<Option<String>>,
    jwks_fetches: AtomicUsize,
    discovery_fetches: AtomicUsize,
}

pub struct TestIdp {
    pub issuer: String,
    state: Arc<IdpState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestIdp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn apply_mode(state: &IdpState) -> Option<Response> {
    let mode = *state.mode.lock();
    match mode {
        Mode::Ok => None,
        Mode::Slow(d) => {
            tokio::time::sleep(d).await;
            None
        }
        Mode::Down => Some(StatusCode::SERVICE_UNAVAILABLE.into_response()),
        Mode::Garbage => {
            Some(([(header::CONTENT_TYPE, "application/json")], "<html>oops").into_response())
        }
    }
}

async fn discovery(State(s): State<Arc<IdpState>>) -> Response {
    s.discovery_fetches.fetch_add(1, Ordering::SeqCst);
    if let Some(r) = apply_mode(&s).await {
        return r;
    }
    axum::Json(json!({
        "issuer": s.issuer,
        "jwks_uri": format!("{}/jwks", s.issuer),
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
    }))
    .into_response()
}

async fn jwks(State(s): State<Arc<IdpState>>) -> Response {
    s.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    if let Some(r) = apply_mode(&s).await {
        return r;
    }
    let keys: Vec<Value> = s.keys.lock().iter().map(|k| k.jwk.clone()).collect();
    let mut resp = axum::Json(json!({ "keys": keys })).into_response();
    if let Some(cc) = s.cache_control.lock().clone() {
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, cc.parse().unwrap());
    }
    resp
}

impl TestIdp {
    /// Starts an IdP with one ES256 key.
    pub async fn start() -> Self {
        Self::start_with(ClientKey::es256(Some("idp-1"))).await
    }

    pub async fn start_with(key: ClientKey) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(IdpState {
            issuer: issuer.clone(),
            keys: Mutex::new(vec![key]),
            mode: Mutex::new(Mode::Ok),
            cache_control: Mutex::new(None),
            jwks_fetches: AtomicUsize::new(0),
            discovery_fetches: AtomicUsize::new(0),
        });
        let router = axum::Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self {
            issuer,
            state,
            task,
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock() = mode;
    }

    pub fn set_cache_control(&self, value: Option<&str>) {
        *self.state.cache_control.lock() = value.map(str::to_string);
    }

    pub fn jwks_fetches(&self) -> usize {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }

    pub fn discovery_fetches(&self) -> usize {
        self.state.discovery_fetches.load(Ordering::SeqCst)
    }

    /// Publishes a new key and signs with it from now on; the old keys
    /// stay published unless `drop_old`.
    pub fn rotate(&self, kid: &str, drop_old: bool) {
        let mut keys = self.state.keys.lock();
        if drop_old {
            keys.clear();
        }
        keys.push(ClientKey::es256(Some(kid)));
    }

    /// Signs `claims` with the current key and header `typ`.
    pub fn sign_typ(&self, typ: &str, claims: &Value) -> String {
        let keys = self.state.keys.lock();
        let key = keys.last().unwrap();
        let mut header = jsonwebtoken::Header::new(key.alg);
        header.kid = key.kid();
        header.typ = Some(typ.to_string());
        key.sign_with_header(header, claims)
    }

    pub fn sign(&self, claims: &Value) -> String {
        self.sign_typ("JWT", claims)
    }

    /// Standard claims from this issuer for `sub`, valid for five minutes.
    pub fn claims(&self, sub: &str, aud: &str) -> Value {
        let now = now();
        json!({
            "iss": self.issuer, "sub": sub, "aud": aud,
            "iat": now, "exp": now + 300,
            "jti": uuid::Uuid::new_v4().to_string(),
        })
    }

    /// An OIDC ID token for a person (tenant `acme`, a nonce, groups).
    pub fn id_token(&self, sub: &str, extra: Value) -> String {
        let mut c = self.claims(sub, "tessera");
        c["nonce"] = "n-0S6_WzA2Mj".into();
        c["tenant"] = "acme".into();
        c["email"] = format!("{sub}@example.com").into();
        merge(&mut c, extra);
        self.sign(&c)
    }

    /// An RFC 9068 access token for a person, with `scope`.
    pub fn access_token(&self, sub: &str, scope: &str, extra: Value) -> String {
        let mut c = self.claims(sub, "tessera");
        c["tenant"] = "acme".into();
        c["scope"] = scope.into();
        c["client_id"] = "portal".into();
        merge(&mut c, extra);
        self.sign_typ("at+jwt", &c)
    }

    /// A projected Kubernetes service-account token.
    pub fn service_account_token(&self, namespace: &str, name: &str, aud: &str) -> String {
        let mut c = self.claims(&format!("system:serviceaccount:{namespace}:{name}"), aud);
        c["kubernetes.io"] = json!({
            "namespace": namespace,
            "serviceaccount": {"name": name, "uid": uuid::Uuid::new_v4().to_string()},
        });
        self.sign(&c)
    }

    /// A `[[trusted_issuers]]` entry for this IdP, plus `extra` lines.
    pub fn config(&self, name: &str, kind: &str, extra: &str) -> String {
        format!(
            "[[trusted_issuers]]\nname = {name:?}\nissuer = {:?}\nkind = {kind:?}\naudiences = [\"tessera\"]\n{extra}\n",
            self.issuer
        )
    }
}

/// Lays `extra`'s fields over `base` (null removes a field).
pub fn merge(base: &mut Value, extra: Value) {
    if let (Some(b), Value::Object(e)) = (base.as_object_mut(), extra) {
        for (k, v) in e {
            if v.is_null() {
                b.remove(&k);
            } else {
                b.insert(k, v);
            }
        }
    }
}
