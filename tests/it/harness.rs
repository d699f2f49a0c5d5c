//! `TestApp`: a real Tessera (same code as `main`) on 127.0.0.1:0, on a
//! fresh SQLite file or a fresh Postgres schema, with a clock the test
//! controls.
//!
//! `TESSERA_TEST_STORE=postgres` selects Postgres at
//! `TESSERA_TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use reqwest::header::HeaderMap;
use serde_json::Value;
use tessera::audit::StoredAudit;
pub use tessera::clock::{Clock, FixedClock, SystemClock};
use tessera::config::Config;
use tessera::issuer::{AccessClaims, Principal};
use tessera::registry::{create_client, NewClient};
use tessera::server::Server;
use tessera::store::Client;

pub fn use_postgres() -> bool {
    std::env::var("TESSERA_TEST_STORE").is_ok_and(|s| s == "postgres")
}

pub fn postgres_url() -> String {
    std::env::var("TESSERA_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Store settings for a fresh, isolated store inside `dir`.
pub fn fresh_store(dir: &Path) -> (String, Option<String>) {
    if use_postgres() {
        let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
        (postgres_url(), Some(schema))
    } else {
        (format!("sqlite://{}", dir.join("tessera.db").display()), None)
    }
}

pub struct Builder {
    extra_toml: String,
    policy: Option<String>,
}

pub struct TestApp {
    pub server: Server,
    pub base: String,
    pub grpc: SocketAddr,
    pub clock: Arc<FixedClock>,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
}

/// Response parts the tests assert on.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or("")
    }
}

pub fn now() -> i64 {
    SystemClock.now()
}

impl Builder {
    /// Extra TOML appended to the test configuration (sections must not
    /// repeat ones the harness writes: server, store, keys, policy).
    pub fn config(mut self, toml: &str) -> Self {
        self.extra_toml.push_str(toml);
        self.extra_toml.push('\n');
        self
    }

    /// A policy file with this content (hot-reloaded every 100 ms).
    pub fn policy(mut self, toml: &str) -> Self {
        self.policy = Some(toml.to_string());
        self
    }

    pub async fn start(self) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let (url, schema) = fresh_store(dir.path());
        let policy_line = match &self.policy {
            Some(p) => {
                let path = dir.path().join("policy.toml");
                std::fs::write(&path, p).unwrap();
                format!("[policy]\nfile = {:?}\nreload_interval = \"100ms\"\n", path.display().to_string())
            }
            None => String::new(),
        };
        let toml = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ngrpc_listen = \"127.0.0.1:0\"\n\
             [store]\nurl = {url:?}\nschema = {:?}\nmax_connections = 4\n\
             [keys]\ndir = {:?}\nreload_interval = \"200ms\"\n{policy_line}{}",
            schema.unwrap_or_default(),
            dir.path().join("keys").display().to_string(),
            self.extra_toml
        );
        let config = Config::from_sources(Some(&toml), std::iter::empty()).expect("test config");
        let clock = Arc::new(FixedClock::at(now()));
        let server = Server::start(config, clock.clone()).await.expect("server starts");
        let base = format!("http://{}", server.http_addr);
        let grpc = server.grpc_addr;
        TestApp { server, base, grpc, clock, dir, http: reqwest::Client::new() }
    }
}

impl TestApp {
    pub fn builder() -> Builder {
        Builder { extra_toml: String::new(), policy: None }
    }

    pub async fn start() -> TestApp {
        Self::builder().start().await
    }

    pub fn app(&self) -> &tessera::app::App {
        &self.server.app
    }

    pub fn policy_path(&self) -> PathBuf {
        self.dir.path().join("policy.toml")
    }

    /// A secret client for `audience`s with `scopes`.
    pub async fn client(&self, tenant: &str, audiences: &[&str], scopes: &[&str]) -> (Client, String) {
        let (c, s) = self.register(NewClient {
            name: "test".into(),
            tenant: tenant.into(),
            audiences: audiences.iter().map(|s| s.to_string()).collect(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .await;
        (c, s.expect("secret client"))
    }

    pub async fn register(&self, new: NewClient) -> (Client, Option<String>) {
        let app = self.app();
        create_client(app.store.as_ref(), &app.config, new, app.clock.now()).await.expect("client registered")
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> Reply {
        let resp = req.send().await.expect("request sent");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply { status, headers, body, text }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.http.get(format!("{}{path}", self.base))).await
    }

    /// POSTs a form, with HTTP Basic client authentication when given.
    pub async fn post_form(&self, path: &str, basic: Option<(&str, &str)>, form: &[(&str, &str)]) -> Reply {
        let mut req = self.http.post(format!("{}{path}", self.base)).form(form);
        if let Some((id, secret)) = basic {
            req = req.basic_auth(id, Some(secret));
        }
        self.send(req).await
    }

    /// A client_credentials token for a secret client.
    pub async fn service_token(&self, client: &Client, secret: &str, extra: &[(&str, &str)]) -> String {
        let mut form = vec![("grant_type", "client_credentials")];
        form.extend_from_slice(extra);
        let r = self.post_form("/oauth2/token", Some((&client.client_id, secret)), &form).await;
        assert_eq!(r.status, 200, "token request failed: {}", r.text);
        r.body["access_token"].as_str().unwrap().to_string()
    }

    /// Claims for a human-issuer token (their public issuance comes later;
    /// tests mint them through the library).
    pub fn human_claims(&self, sub: &str, aud: &str, scope: &str) -> AccessClaims {
        let now = self.clock.now();
        AccessClaims {
            iss: self.app().issuers.human.iss.clone(),
            sub: sub.into(),
            aud: vec![aud.into()],
            exp: now + 300,
            iat: now,
            nbf: None,
            jti: uuid::Uuid::new_v4().to_string(),
            client_id: "ui".into(),
            scope: scope.into(),
            principal: Principal::Human,
            tenant: "acme".into(),
            act: None,
        }
    }

    pub fn human_token(&self, sub: &str, aud: &str, scope: &str) -> String {
        self.app().issuers.human.mint(&self.human_claims(sub, aud, scope)).unwrap()
    }

    /// Every audit record, oldest first.
    pub async fn audit(&self) -> Vec<StoredAudit> {
        self.app().store.audit_tail(100_000).await.unwrap()
    }

    /// ext_authz over HTTP for `method path` with an optional bearer token.
    pub async fn authz(&self, method: &str, path: &str, token: Option<&str>) -> Reply {
        let url = format!("{}/ext_authz{path}", self.base);
        let mut req = self.http.request(method.parse().unwrap(), url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        self.send(req).await
    }
}

/// Decodes a JWT's payload without checking anything (for assertions on claims).
pub fn claims_of(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

pub fn header_of(token: &str) -> Value {
    use base64::Engine;
    let h = token.split('.').next().unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(h).unwrap()).unwrap()
}

pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
