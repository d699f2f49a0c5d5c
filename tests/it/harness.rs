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
use ring::signature::KeyPair;
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
    std::env::var("TESSERA_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Store settings for a fresh, isolated store inside `dir`.
pub fn fresh_store(dir: &Path) -> (String, Option<String>) {
    if use_postgres() {
        let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
        (postgres_url(), Some(schema))
    } else {
        (
            format!("sqlite://{}", dir.join("tessera.db").display()),
            None,
        )
    }
}

pub struct Builder {
    server_lines: String,
    policy: Option<String>,
    extra: String,
}

pub struct TestApp {
    pub server: Server,
    /// Requests to its HTTP listener (`t.base`, `t.http`, `t.get(..)`, …).
    pub api: Api,
    pub grpc: SocketAddr,
    pub clock: Arc<FixedClock>,
    pub dir: tempfile::TempDir,
}

impl std::ops::Deref for TestApp {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

/// The HTTP side of a running Tessera (in-process or a spawned binary),
/// and the requests tests send it.
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

impl Api {
    pub async fn send(&self, req: reqwest::RequestBuilder) -> Reply {
        send_request(req).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    /// POSTs a form, with HTTP Basic client authentication when given.
    pub async fn post_form(
        &self,
        path: &str,
        basic: Option<(&str, &str)>,
        form: &[(&str, &str)],
    ) -> Reply {
        let mut req = self.http.post(format!("{}{path}", self.base)).form(form);
        if let Some((id, secret)) = basic {
            req = req.basic_auth(id, Some(secret));
        }
        self.send(req).await
    }

    /// ext_authz over HTTP for `method path` with an optional bearer token.
    pub async fn authz(&self, method: &str, path: &str, token: Option<&str>) -> Reply {
        let mut req = self.http.request(
            method.parse().unwrap(),
            format!("{}/ext_authz{path}", self.base),
        );
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        self.send(req).await
    }
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
    /// Extra lines for the `[server]` section the harness writes (e.g.
    /// `trust_original_request_headers = true`).
    pub fn server(mut self, lines: &str) -> Self {
        self.server_lines.push_str(lines);
        self.server_lines.push('\n');
        self
    }

    /// More configuration, appended after the harness's sections (e.g.
    /// `[[trusted_issuers]]` entries or an `[oauth]` section).
    pub fn config(mut self, toml: &str) -> Self {
        self.extra.push_str(toml);
        self.extra.push('\n');
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
                format!(
                    "[policy]\nfile = {:?}\nreload_interval = \"100ms\"\n",
                    path.display().to_string()
                )
            }
            None => String::new(),
        };
        let toml = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ngrpc_listen = \"127.0.0.1:0\"\n{}\
             [store]\nurl = {url:?}\nschema = {:?}\nmax_connections = 4\n\
             [keys]\ndir = {:?}\nreload_interval = \"200ms\"\n{policy_line}{}",
            self.server_lines,
            schema.unwrap_or_default(),
            dir.path().join("keys").display().to_string(),
            self.extra,
        );
        let config = Config::from_sources(Some(&toml), std::iter::empty()).expect("test config");
        let clock = Arc::new(FixedClock::at(now()));
        let server = Server::start(config, clock.clone())
            .await
            .expect("server starts");
        let base = format!("http://{}", server.http_addr);
        let grpc = server.grpc_addr;
        TestApp {
            server,
            api: Api {
                base,
                http: reqwest::Client::new(),
            },
            grpc,
            clock,
            dir,
        }
    }
}

impl TestApp {
    pub fn builder() -> Builder {
        Builder {
            server_lines: String::new(),
            policy: None,
            extra: String::new(),
        }
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
    pub async fn client(
        &self,
        tenant: &str,
        audiences: &[&str],
        scopes: &[&str],
    ) -> (Client, String) {
        let (c, s) = self
            .register(NewClient {
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
        create_client(app.store.as_ref(), &app.config, new, app.clock.now())
            .await
            .expect("client registered")
    }

    /// A client_credentials token for a secret client.
    pub async fn service_token(
        &self,
        client: &Client,
        secret: &str,
        extra: &[(&str, &str)],
    ) -> String {
        let mut form = vec![("grant_type", "client_credentials")];
        form.extend_from_slice(extra);
        let r = self
            .post_form("/oauth2/token", Some((&client.client_id, secret)), &form)
            .await;
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
            groups: Vec::new(),
            act: None,
            may_act: None,
        }
    }

    pub fn human_token(&self, sub: &str, aud: &str, scope: &str) -> String {
        self.app()
            .issuers
            .human
            .mint(&self.human_claims(sub, aud, scope))
            .unwrap()
    }

    /// Every audit record, oldest first.
    pub async fn audit(&self) -> Vec<StoredAudit> {
        self.app().store.audit_tail(100_000).await.unwrap()
    }
}

/// Decodes a JWT's payload without checking anything (for assertions on claims).
pub fn claims_of(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

pub fn header_of(token: &str) -> Value {
    use base64::Engine;
    let h = token.split('.').next().unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(h)
            .unwrap(),
    )
    .unwrap()
}

pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

// ---------------------------------------------------------------------------
// Running real processes: the `tessera` binary (CLI, `serve`, replicas) and
// third-party servers such as nginx. Every spawned process is killed and
// reaped on drop; every wait is bounded.

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An HTTP client for talking to spawned processes: no proxy, every request
/// bounded in time.
pub fn process_http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(15))
        .build()
        .unwrap()
}

/// Sends a request and collects the parts tests assert on.
pub async fn send_request(req: reqwest::RequestBuilder) -> Reply {
    let resp = req.send().await.expect("request sent");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        body,
        text,
    }
}

/// A child process that is killed and reaped when dropped.
#[derive(Debug)]
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl KillOnDrop {
    /// Waits up to `within` for the process to exit on its own.
    pub async fn wait_exit(
        &mut self,
        within: std::time::Duration,
    ) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.0.try_wait().expect("try_wait") {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// What a finished `tessera` command printed.
#[derive(Debug)]
pub struct CmdOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    /// Stdout as one JSON value; the command must have succeeded.
    pub fn json(&self) -> Value {
        assert_eq!(
            self.code,
            Some(0),
            "command failed; stderr: {}",
            self.stderr
        );
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON value ({e}): {}", self.stdout))
    }
}

/// Longest a one-shot `tessera` command may take.
pub const BIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// How to run the real `tessera` binary against one store and key folder:
/// `TESSERA_*` variables only from `vars` (none inherited from the test's
/// environment), working directory `dir`.
#[derive(Debug, Clone)]
pub struct BinEnv {
    pub dir: PathBuf,
    pub vars: Vec<(String, String)>,
}

impl BinEnv {
    /// A fresh store (SQLite file or Postgres schema, as `fresh_store`) and
    /// an empty key folder inside `dir`.
    pub fn fresh(dir: &Path) -> Self {
        let (url, schema) = fresh_store(dir);
        let mut vars = vec![
            ("TESSERA_STORE_URL".to_string(), url),
            ("TESSERA_STORE_MAX_CONNECTIONS".to_string(), "4".to_string()),
            (
                "TESSERA_KEYS_DIR".to_string(),
                dir.join("keys").display().to_string(),
            ),
            ("TESSERA_LOG".to_string(), "warn".to_string()),
        ];
        if let Some(schema) = schema {
            vars.push(("TESSERA_STORE_SCHEMA".to_string(), schema));
        }
        Self {
            dir: dir.to_path_buf(),
            vars,
        }
    }

    /// Sets (or replaces) one variable.
    pub fn set(mut self, key: &str, value: &str) -> Self {
        self.vars.retain(|(k, _)| k != key);
        self.vars.push((key.to_string(), value.to_string()));
        self
    }

    pub fn command(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"));
        cmd.args(args)
            .current_dir(&self.dir)
            .stdin(std::process::Stdio::null());
        for (k, _) in std::env::vars() {
            if k.starts_with("TESSERA_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        cmd
    }

    /// Runs one command to completion (killed after `BIN_TIMEOUT`).
    pub async fn run(&self, args: &[&str]) -> CmdOutput {
        let mut cmd = tokio::process::Command::from(self.command(args));
        cmd.kill_on_drop(true);
        let out = tokio::time::timeout(BIN_TIMEOUT, cmd.output())
            .await
            .unwrap_or_else(|_| panic!("tessera {args:?} did not finish within {BIN_TIMEOUT:?}"))
            .expect("tessera runs");
        CmdOutput {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs one command that must succeed and print one JSON value.
    pub async fn run_json(&self, args: &[&str]) -> Value {
        let out = self.run(args).await;
        assert_eq!(
            out.code,
            Some(0),
            "tessera {args:?} failed; stderr: {}",
            out.stderr
        );
        out.json()
    }

    /// Spawns `tessera serve` on free ports without waiting for it.
    pub fn spawn_serve(&self) -> TesseraProcess {
        let (http, grpc) = (free_port(), free_port());
        let env = self
            .clone()
            .set("TESSERA_SERVER_LISTEN", &format!("127.0.0.1:{http}"))
            .set("TESSERA_SERVER_GRPC_LISTEN", &format!("127.0.0.1:{grpc}"));
        let mut cmd = env.command(&["serve"]);
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("tessera serve spawns");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        TesseraProcess {
            child: KillOnDrop(child),
            api: Api {
                base: format!("http://127.0.0.1:{http}"),
                http: process_http_client(),
            },
            grpc_port: grpc,
            stderr: rx,
            stderr_seen: Vec::new(),
        }
    }

    /// Starts `tessera serve` on free ports and waits until it is ready.
    pub async fn serve(&self) -> TesseraProcess {
        let mut p = self.spawn_serve();
        p.wait_ready().await;
        p
    }
}

/// A running `tessera serve` (killed on drop).
pub struct TesseraProcess {
    pub child: KillOnDrop,
    /// Requests to where it listens for HTTP (not necessarily its public URL).
    pub api: Api,
    pub grpc_port: u16,
    stderr: tokio::sync::mpsc::UnboundedReceiver<String>,
    /// Every stderr line read so far.
    pub stderr_seen: Vec<String>,
}

impl std::ops::Deref for TesseraProcess {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

impl TesseraProcess {
    /// The next stderr line, if one comes within `within` (`None` also at EOF).
    pub async fn stderr_line(&mut self, within: std::time::Duration) -> Option<String> {
        let line = tokio::time::timeout(within, self.stderr.recv())
            .await
            .ok()
            .flatten()?;
        self.stderr_seen.push(line.clone());
        Some(line)
    }

    fn drain_stderr(&mut self) -> String {
        while let Ok(line) = self.stderr.try_recv() {
            self.stderr_seen.push(line);
        }
        self.stderr_seen.join("\n")
    }

    /// Polls `GET /readyz` until it answers 200 (at most 30 s).
    pub async fn wait_ready(&mut self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.0.try_wait().unwrap() {
                panic!(
                    "tessera serve exited early ({status}); stderr:\n{}",
                    self.drain_stderr()
                );
            }
            let ready = self
                .http
                .get(format!("{}/readyz", self.base))
                .timeout(std::time::Duration::from_secs(2))
                .send()
                .await;
            if ready.is_ok_and(|r| r.status() == 200) {
                return;
            }
            if std::time::Instant::now() >= deadline {
                let stderr = self.drain_stderr();
                panic!(
                    "tessera serve at {} not ready within 30 s; stderr:\n{stderr}",
                    self.base
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Sends SIGTERM, as a service manager would.
    pub fn terminate(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.0.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM failed");
    }
}

/// A client's key pair: the private half signs with `jsonwebtoken`, the
/// public half is registered as a JWK.
pub struct ClientKey {
    pub alg: jsonwebtoken::Algorithm,
    pub signing: jsonwebtoken::EncodingKey,
    /// The public JWK as a client would submit it.
    pub jwk: Value,
}

impl ClientKey {
    pub fn es256(kid: Option<&str>) -> Self {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &rng,
        )
        .unwrap();
        let pair = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8.as_ref(),
            &rng,
        )
        .unwrap();
        let point = pair.public_key().as_ref();
        let mut jwk = serde_json::json!({"kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..65]), "use": "sig"});
        if let Some(kid) = kid {
            jwk["kid"] = kid.into();
        }
        Self {
            alg: jsonwebtoken::Algorithm::ES256,
            signing: jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref()),
            jwk,
        }
    }

    pub fn rs256(kid: Option<&str>) -> Self {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        use rsa::traits::PublicKeyParts;
        let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
        let der = key.to_pkcs1_der().unwrap();
        let mut jwk = serde_json::json!({"kty": "RSA", "n": b64(&key.n().to_bytes_be()), "e": b64(&key.e().to_bytes_be()), "alg": "RS256"});
        if let Some(kid) = kid {
            jwk["kid"] = kid.into();
        }
        Self {
            alg: jsonwebtoken::Algorithm::RS256,
            signing: jsonwebtoken::EncodingKey::from_rsa_der(der.as_bytes()),
            jwk,
        }
    }

    pub fn ed25519(kid: Option<&str>) -> Self {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let mut jwk = serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": b64(pair.public_key().as_ref())});
        if let Some(kid) = kid {
            jwk["kid"] = kid.into();
        }
        Self {
            alg: jsonwebtoken::Algorithm::EdDSA,
            signing: jsonwebtoken::EncodingKey::from_ed_der(pkcs8.as_ref()),
            jwk,
        }
    }

    pub fn kid(&self) -> Option<String> {
        self.jwk["kid"].as_str().map(str::to_string)
    }

    /// Signs `claims` with header `{alg, typ: JWT, kid}` (kid when the JWK has one).
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = jsonwebtoken::Header::new(self.alg);
        header.kid = self.kid();
        jsonwebtoken::encode(&header, claims, &self.signing).unwrap()
    }

    /// A private_key_jwt assertion for `client_id` with audience `aud`, a
    /// fresh `jti` and a five-minute lifetime, on the wall clock (for
    /// spawned servers, which do not share a test's clock).
    pub fn assertion(&self, client_id: &str, aud: &str) -> String {
        let now = now();
        self.sign(&serde_json::json!({"iss": client_id, "sub": client_id, "aud": aud, "iat": now, "exp": now + 300, "jti": uuid::Uuid::new_v4().to_string()}))
    }

    pub fn sign_with_header(&self, header: jsonwebtoken::Header, claims: &Value) -> String {
        jsonwebtoken::encode(&header, claims, &self.signing).unwrap()
    }
}
