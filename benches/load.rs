//! Load benchmark: drives the release `tessera` binary on 127.0.0.1 and, in
//! the same run, bare "ceiling" servers that do only the unavoidable work
//! (an HTTP exchange, one ES256 signature, one ES256 verification), so every
//! Tessera number is read against what the same machine and the same load
//! generator can do at best. See benches/README.md.
//!
//! Usage (through cargo, which builds in release):
//!   cargo bench --bench load -- [--store sqlite|postgres|sqlite,postgres]
//!       [--pg-url URL] [--seconds S] [--warmup S] [--concurrency N]
//!       [--grpc-channels N] [--max-tokens N] [--results-dir DIR | --no-write]
//! Several stores run one after another in this one process, so they all
//! measure the same build.
//! Internal: `load --ceiling-server HTTP_PORT GRPC_PORT` runs the bare
//! ceiling server.

use std::cell::Cell;
use std::fmt::Write as _;
use std::fs::File;
use std::future::Future;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD as B64};
use base64::Engine;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Request as AttrRequest,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{self, EcdsaKeyPair, KeyPair, UnparsedPublicKey};
use serde::Serialize;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

/// A request that takes longer than this counts as an error and its
/// connection is dropped; it also bounds how long a scenario can overrun.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest the untimed minting of first-seen tokens may take.
const MINT_BUDGET: Duration = Duration::from_secs(120);
const SCOPE: &str = "bench:read";
const CHECK_PATH: &str = "/internal/bench";
const CEILING_JSON: &str = r#"{"status":"ok","service":"ceiling","version":1}"#;
/// The bench's own OpenID provider ("corp" in Tessera's config).
const IDP_NAME: &str = "corp";
const IDP_KID: &str = "bench-1";
/// `aud` of the IdP's ID tokens, and the audience of the trusted `/api/*` rule.
const IDP_AUDIENCE: &str = "tessera";
/// Distinct people (`sub`) the bench IdP signs ID tokens for.
const IDP_USERS: usize = 1000;
/// Audience and scope of the product's delegation (token exchange).
const EXCHANGE_AUDIENCE: &str = "api";
const EXCHANGE_SCOPE: &str = "reports:read";
const EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ID_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id_token";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// The path the trusted-issuer ext_authz scenarios check (rule `api`).
const TRUSTED_CHECK: &str = "/ext_authz/api/x";

// ---------------------------------------------------------------- options

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StoreKind {
    Sqlite,
    Postgres,
}

impl StoreKind {
    fn name(self) -> &'static str {
        match self {
            StoreKind::Sqlite => "sqlite",
            StoreKind::Postgres => "postgres",
        }
    }
}

#[derive(Debug, Clone)]
struct Opts {
    /// The stores to run, in order.
    stores: Vec<StoreKind>,
    /// The store of the current run.
    store: StoreKind,
    pg_url: String,
    seconds: f64,
    warmup: f64,
    concurrency: usize,
    grpc_channels: usize,
    max_tokens: usize,
    /// Where `<store>.md` is written; `None` with `--no-write`.
    results_dir: Option<PathBuf>,
    /// Which scenarios to run.
    only: Only,
    /// The AWS emulator (moto) for the AWS credential rows.
    moto_url: Option<String>,
    /// Connections for the STS-bound AWS rows (moto is single-threaded).
    aws_concurrency: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Only {
    /// The standard scenarios, then the AWS credential ones if moto is given.
    All,
    Standard,
    Credentials,
}

impl Opts {
    fn out(&self) -> Option<PathBuf> {
        self.results_dir
            .as_ref()
            .map(|d| d.join(format!("{}.md", self.store.name())))
    }

    fn stores_arg(&self) -> String {
        let names: Vec<&str> = self.stores.iter().map(|s| s.name()).collect();
        names.join(",")
    }
}

fn parse_stores(list: &str) -> anyhow::Result<Vec<StoreKind>> {
    let mut out = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let kind = match name {
            "sqlite" => StoreKind::Sqlite,
            "postgres" => StoreKind::Postgres,
            other => bail!("store {other:?}: expected sqlite or postgres"),
        };
        if !out.contains(&kind) {
            out.push(kind);
        }
    }
    if out.is_empty() {
        bail!("no store given");
    }
    Ok(out)
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map_err(|_| anyhow!("{name}={v:?} is not a valid value")),
        _ => Ok(default),
    }
}

fn parse_opts(args: &[String]) -> anyhow::Result<Opts> {
    let stores = parse_stores(&env_or("BENCH_STORE", "sqlite".to_string())?)?;
    let mut o = Opts {
        store: stores[0],
        stores,
        pg_url: env_or(
            "BENCH_PG_URL",
            "postgres://postgres@127.0.0.1:5432/test".to_string(),
        )?,
        seconds: env_or("BENCH_SECONDS", 5.0)?,
        warmup: env_or("BENCH_WARMUP", 1.0)?,
        concurrency: env_or("BENCH_CONCURRENCY", 32)?,
        grpc_channels: env_or("BENCH_GRPC_CHANNELS", 4)?,
        max_tokens: env_or("BENCH_MAX_TOKENS", 150_000)?,
        results_dir: Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results")),
        only: Only::All,
        moto_url: std::env::var("BENCH_MOTO_URL")
            .ok()
            .filter(|u| !u.trim().is_empty()),
        aws_concurrency: env_or("BENCH_AWS_CONCURRENCY", 8)?,
    };
    let mut write = true;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .ok_or_else(|| anyhow!("{a} needs a value"))
        };
        match a.as_str() {
            // cargo bench passes --bench to harness = false targets.
            "--bench" => {}
            "--store" => {
                o.stores = parse_stores(&val()?).context("--store")?;
                o.store = o.stores[0];
            }
            "--pg-url" => o.pg_url = val()?,
            "--seconds" => o.seconds = val()?.parse().context("--seconds")?,
            "--warmup" => o.warmup = val()?.parse().context("--warmup")?,
            "--concurrency" => o.concurrency = val()?.parse().context("--concurrency")?,
            "--grpc-channels" => o.grpc_channels = val()?.parse().context("--grpc-channels")?,
            "--max-tokens" => o.max_tokens = val()?.parse().context("--max-tokens")?,
            "--results-dir" => o.results_dir = Some(PathBuf::from(val()?)),
            "--no-write" => write = false,
            "--moto-url" => o.moto_url = Some(val()?),
            "--aws-concurrency" => {
                o.aws_concurrency = val()?.parse().context("--aws-concurrency")?
            }
            "--only" => {
                o.only = match val()?.as_str() {
                    "all" => Only::All,
                    "standard" => Only::Standard,
                    "credentials" => Only::Credentials,
                    other => bail!("--only {other:?}: expected all, standard or credentials"),
                }
            }
            other => bail!("unknown argument {other:?} (see the top of benches/load.rs)"),
        }
    }
    if !(o.seconds > 0.0 && o.seconds <= 600.0) {
        bail!("--seconds must be in (0, 600]");
    }
    if !(0.0..=60.0).contains(&o.warmup) {
        bail!("--warmup must be in [0, 60]");
    }
    if o.concurrency == 0 || o.concurrency > 4096 {
        bail!("--concurrency must be 1..=4096");
    }
    o.grpc_channels = o.grpc_channels.clamp(1, o.concurrency);
    if o.aws_concurrency == 0 || o.aws_concurrency > 4096 {
        bail!("--aws-concurrency must be 1..=4096");
    }
    if o.only == Only::Credentials && o.moto_url.is_none() {
        bail!(
            "--only credentials needs --moto-url (or BENCH_MOTO_URL); benches/run.sh starts moto"
        );
    }
    if !write {
        o.results_dir = None;
    }
    Ok(o)
}

// -------------------------------------------------------- child processes

/// Every child's pid, so that a signal or the watchdog can kill them all.
static CHILDREN: Mutex<Vec<i32>> = Mutex::new(Vec::new());

fn kill_all_children() {
    let pids = CHILDREN.lock().map(|v| v.clone()).unwrap_or_default();
    for pid in pids {
        // SAFETY: plain kill(2) on a pid we spawned and have not reaped.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// A child process that is stopped when the guard drops, including on
/// panic; PR_SET_PDEATHSIG covers the bench itself being killed.
struct ChildGuard {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl ChildGuard {
    /// Must be called from the main thread: the death signal fires when
    /// the *thread* that forked exits.
    fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> anyhow::Result<Self> {
        let out = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        // SAFETY: prctl is async-signal-safe and touches no shared state.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        CHILDREN.lock().unwrap().push(child.id() as i32);
        Ok(Self {
            name: name.to_string(),
            child: Some(child),
            log,
        })
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id() as i32;
        if child.try_wait().ok().flatten().is_none() {
            // SIGTERM first so Tessera shuts down gracefully, then SIGKILL.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
            let until = Instant::now() + Duration::from_secs(5);
            while Instant::now() < until && child.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
            if child.try_wait().ok().flatten().is_none() {
                eprintln!("bench: {} did not stop on SIGTERM; killing it", self.name);
                let _ = child.kill();
            }
        }
        let _ = child.wait();
        if let Ok(mut v) = CHILDREN.lock() {
            v.retain(|p| *p != pid);
        }
    }
}

/// Two distinct free ports.
fn free_ports() -> anyhow::Result<(u16, u16)> {
    let a = StdListener::bind("127.0.0.1:0")?;
    let b = StdListener::bind("127.0.0.1:0")?;
    Ok((a.local_addr()?.port(), b.local_addr()?.port()))
}

// ---------------------------------------------------------- HTTP plumbing

async fn connect(addr: SocketAddr) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// One request on a fresh connection (setup, readiness and preflight only).
async fn http_once(
    addr: SocketAddr,
    req: Request<Full<Bytes>>,
) -> anyhow::Result<(StatusCode, HeaderMap, Bytes)> {
    tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut s = connect(addr).await?;
        s.ready().await?;
        let resp = s.send_request(req).await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok((parts.status, parts.headers, body))
    })
    .await
    .map_err(|_| anyhow!("request to {addr} timed out"))?
}

/// A pre-built request; `build` only clones cheap, shared parts.
#[derive(Clone)]
struct Template {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

impl Template {
    fn new(method: Method, addr: SocketAddr, path: &'static str) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::HOST,
            HeaderValue::from_str(&addr.to_string()).expect("host"),
        );
        Self {
            method,
            uri: Uri::from_static(path),
            headers,
            body: Bytes::new(),
        }
    }

    fn header(mut self, name: header::HeaderName, value: &str) -> Self {
        self.headers
            .insert(name, HeaderValue::from_str(value).expect("header value"));
        self
    }

    fn form(mut self, body: String) -> Self {
        self.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        self.headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        self.body = Bytes::from(body);
        self
    }

    fn build(&self) -> Request<Full<Bytes>> {
        self.build_with(self.body.clone())
    }

    /// The request with another (form) body.
    fn build_with(&self, body: Bytes) -> Request<Full<Bytes>> {
        let len = body.len();
        let mut r = Request::new(Full::new(body));
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.headers_mut() = self.headers.clone();
        if len != self.body.len() {
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
        r
    }
}

fn basic(client_id: &str, secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{client_id}:{secret}")))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The `access_token` of a token response, without a full JSON parse.
fn access_token(body: &Bytes) -> Option<Bytes> {
    const KEY: &[u8] = br#""access_token":""#;
    let start = find(body, KEY)? + KEY.len();
    let len = body[start..].iter().position(|b| *b == b'"')?;
    Some(body.slice(start..start + len))
}

fn describe(status: StatusCode, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(300)]).to_string();
    format!("HTTP {status}: {text}")
}

// ----------------------------------------------------------- the generator

type MakeFn = Arc<dyn Fn() -> Option<Request<Full<Bytes>>> + Send + Sync>;
/// Judges one response; `Ok(Some(token))` hands a token to the collector.
type CheckFn =
    Arc<dyn Fn(StatusCode, &HeaderMap, &Bytes) -> Result<Option<Bytes>, String> + Send + Sync>;

#[derive(Clone, Copy)]
struct Phase {
    measure: Instant,
    end: Instant,
}

impl Phase {
    fn new(warmup: f64, seconds: f64) -> Self {
        let measure = Instant::now() + Duration::from_secs_f64(warmup);
        Self {
            measure,
            end: measure + Duration::from_secs_f64(seconds),
        }
    }
}

#[derive(Default)]
struct WorkerOut {
    ok: u64,
    errors: u64,
    warmup_errors: u64,
    lat_us: Vec<u32>,
    tokens: Vec<Bytes>,
    first_error: Option<String>,
    last_done: Option<Instant>,
}

impl WorkerOut {
    fn done(&mut self, phase: &Phase, t0: Instant, t1: Instant, result: Result<(), String>) {
        let measured = t0 >= phase.measure && t0 < phase.end;
        match result {
            Ok(()) if measured => self.ok += 1,
            Ok(()) => {}
            Err(e) => {
                if measured {
                    self.errors += 1;
                } else {
                    self.warmup_errors += 1;
                }
                self.first_error.get_or_insert(e);
            }
        }
        if measured {
            self.lat_us
                .push((t1 - t0).as_micros().min(u32::MAX as u128) as u32);
        }
        self.last_done = Some(t1);
    }
}

async fn http_worker(addr: SocketAddr, make: MakeFn, check: CheckFn, phase: Phase) -> WorkerOut {
    let mut out = WorkerOut::default();
    let mut conn: Option<SendRequest<Full<Bytes>>> = None;
    while Instant::now() < phase.end {
        // A request that needs a new connection is timed from the connect
        // (moto closes every connection after one answer).
        let mut connected_at = None;
        if conn.is_none() {
            connected_at = Some(Instant::now());
            match tokio::time::timeout(REQUEST_TIMEOUT, connect(addr)).await {
                Ok(Ok(c)) => conn = Some(c),
                Ok(Err(e)) => {
                    let now = Instant::now();
                    out.done(&phase, now, now, Err(format!("connect: {e}")));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                Err(_) => {
                    let now = Instant::now();
                    out.done(&phase, now, now, Err("connect timed out".into()));
                    continue;
                }
            }
        }
        let Some(req) = make() else { break };
        let sender = conn.as_mut().expect("connected above");
        let t0 = connected_at.unwrap_or_else(Instant::now);
        let res = tokio::time::timeout(REQUEST_TIMEOUT, async {
            sender.ready().await?;
            let resp = sender.send_request(req).await?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok::<_, hyper::Error>((parts.status, parts.headers, body))
        })
        .await;
        let t1 = Instant::now();
        let result = match res {
            Ok(Ok((status, headers, body))) => {
                let closing = headers
                    .get(header::CONNECTION)
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
                if closing || conn.as_ref().is_some_and(|c| c.is_closed()) {
                    conn = None;
                }
                match check(status, &headers, &body) {
                    Ok(token) => {
                        out.tokens.extend(token);
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            Ok(Err(e)) => {
                conn = None;
                Err(format!("HTTP error: {e}"))
            }
            Err(_) => {
                conn = None;
                Err(format!("timed out after {REQUEST_TIMEOUT:?}"))
            }
        };
        out.done(&phase, t0, t1, result);
    }
    out
}

async fn grpc_worker(
    mut client: AuthorizationClient<Channel>,
    req: CheckRequest,
    phase: Phase,
) -> WorkerOut {
    let mut out = WorkerOut::default();
    while Instant::now() < phase.end {
        let t0 = Instant::now();
        let res = tokio::time::timeout(REQUEST_TIMEOUT, client.check(req.clone())).await;
        let t1 = Instant::now();
        let result = match res {
            Ok(Ok(resp)) => {
                let code = resp.get_ref().status.as_ref().map(|s| s.code);
                if code == Some(0) {
                    Ok(())
                } else {
                    Err(format!("CheckResponse status {:?}", resp.get_ref().status))
                }
            }
            Ok(Err(status)) => Err(format!("gRPC error: {status}")),
            Err(_) => Err(format!("timed out after {REQUEST_TIMEOUT:?}")),
        };
        out.done(&phase, t0, t1, result);
    }
    out
}

// ------------------------------------------------------- CPU accounting

#[derive(Clone, Copy)]
struct CpuSample {
    at: Instant,
    server: u64,
    generator: u64,
    machine_busy: u64,
    /// All `postgres` processes (0 unless the store is Postgres).
    postgres: u64,
    /// The moto server (AWS emulator) processes (0 outside the AWS rows).
    moto: u64,
}

fn proc_ticks(pid: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are
    // fields 14 and 15 of the whole line, 12 and 13 after the name.
    let rest = text.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12)
}

fn machine_busy_ticks() -> u64 {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = text.lines().next().unwrap_or("");
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is inside user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    total.saturating_sub(idle)
}

/// CPU ticks of every process named `postgres` (server and backends).
fn postgres_ticks() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "postgres")
        })
        .map(|e| proc_ticks(&e.file_name().to_string_lossy()))
        .sum()
}

/// CPU ticks of every moto server process (`moto_server` in its command line).
fn moto_ticks() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| find(&c, b"moto_server").is_some())
        })
        .map(|e| proc_ticks(&e.file_name().to_string_lossy()))
        .sum()
}

fn cpu_sample(server_pid: i32, postgres: bool, moto: bool) -> CpuSample {
    CpuSample {
        at: Instant::now(),
        server: proc_ticks(&server_pid.to_string()),
        generator: proc_ticks("self"),
        machine_busy: machine_busy_ticks(),
        postgres: if postgres { postgres_ticks() } else { 0 },
        moto: if moto { moto_ticks() } else { 0 },
    }
}

/// Whole-machine CPU busy over `window`, in % of one core.
async fn machine_busy(window: Duration) -> f64 {
    let a = machine_busy_ticks();
    tokio::time::sleep(window).await;
    let b = machine_busy_ticks();
    b.saturating_sub(a) as f64 / clk_tck() / window.as_secs_f64() * 100.0
}

/// Machine busy below this (in % of one core) counts as quiet.
const QUIET_BUSY: f64 = 20.0;

/// Waits (bounded) until other work on the machine has stopped, since
/// anything else using the CPUs skews every number. Returns the last
/// busy figure and how long it waited.
async fn wait_quiet(max_wait: Duration) -> (f64, f64) {
    let start = Instant::now();
    let mut said = false;
    loop {
        let busy = machine_busy(Duration::from_secs(1)).await;
        if busy < QUIET_BUSY || start.elapsed() >= max_wait {
            return (busy, start.elapsed().as_secs_f64());
        }
        if !said {
            eprintln!(
                "bench: the machine is busy ({busy:.0}% of one core); waiting up to {max_wait:?} for it to quiet down"
            );
            said = true;
        }
    }
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

// ---------------------------------------------------------------- results

#[derive(Clone, Default)]
struct Stats {
    name: String,
    ok: u64,
    errors: u64,
    warmup_errors: u64,
    secs: f64,
    p50_ms: f64,
    p99_ms: f64,
    first_error: Option<String>,
    /// CPU used in the measured window, in % of one core.
    server_cpu: f64,
    gen_cpu: f64,
    db_cpu: f64,
    /// moto (AWS emulator) CPU, in % of one core (AWS rows only).
    moto_cpu: f64,
    other_cpu: f64,
    note: Option<String>,
}

impl Stats {
    fn rps(&self) -> f64 {
        if self.secs > 0.0 {
            self.ok as f64 / self.secs
        } else {
            0.0
        }
    }
}

fn summarize(
    name: &str,
    outs: Vec<WorkerOut>,
    phase: &Phase,
    cpu: (CpuSample, CpuSample),
) -> (Stats, Vec<Bytes>) {
    let mut lat = Vec::new();
    let mut tokens = Vec::new();
    let mut s = Stats {
        name: name.to_string(),
        ..Default::default()
    };
    let mut last = phase.measure;
    for o in outs {
        s.ok += o.ok;
        s.errors += o.errors;
        s.warmup_errors += o.warmup_errors;
        lat.extend(o.lat_us);
        tokens.extend(o.tokens);
        if s.first_error.is_none() {
            s.first_error = o.first_error;
        }
        if let Some(t) = o.last_done {
            last = last.max(t);
        }
    }
    s.secs = (last.min(phase.end).max(phase.measure) - phase.measure).as_secs_f64();
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i] as f64 / 1000.0
    };
    s.p50_ms = pct(0.50);
    s.p99_ms = pct(0.99);
    let (a, b) = cpu;
    let window = (b.at - a.at).as_secs_f64().max(1e-9);
    let tck = clk_tck();
    let pct_of = |ticks: u64| ticks as f64 / tck / window * 100.0;
    s.server_cpu = pct_of(b.server.saturating_sub(a.server));
    s.gen_cpu = pct_of(b.generator.saturating_sub(a.generator));
    let busy = pct_of(b.machine_busy.saturating_sub(a.machine_busy));
    s.db_cpu = pct_of(b.postgres.saturating_sub(a.postgres));
    s.moto_cpu = pct_of(b.moto.saturating_sub(a.moto));
    s.other_cpu = (busy - s.server_cpu - s.gen_cpu - s.db_cpu - s.moto_cpu).max(0.0);
    (s, tokens)
}

fn print_progress(s: &Stats) {
    eprintln!(
        "bench: {:<28} {:>9.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  errors {}  (server CPU {:.0}%, generator {:.0}%, postgres {:.0}%, other {:.0}%)",
        s.name,
        s.rps(),
        s.p50_ms,
        s.p99_ms,
        s.errors,
        s.server_cpu,
        s.gen_cpu,
        s.db_cpu,
        s.other_cpu
    );
    if let Some(e) = &s.first_error {
        eprintln!("bench:   first error: {e}");
    }
}

// ------------------------------------------------------------- scenarios

/// Unrelated CPU load (in % of one core) above which a measured window
/// counts as disturbed and is run again while the retry budget lasts.
const NOISY_OTHER: f64 = 25.0;
/// Most attempts at one scenario.
const MAX_ATTEMPTS: usize = 3;

struct Bench {
    opts: Opts,
    /// Count moto's CPU apart from "other" (the AWS rows).
    moto: bool,
    /// Extra time left for running disturbed scenarios again.
    retry_left: Cell<Duration>,
}

impl Bench {
    fn phase(&self) -> Phase {
        Phase::new(self.opts.warmup, self.opts.seconds)
    }

    fn spend(&self, d: Duration) {
        self.retry_left.set(self.retry_left.get().saturating_sub(d));
    }

    /// After an attempt: whether to run it again because unrelated load
    /// disturbed it. Waits (within the budget) for the machine to quiet
    /// down first, and gives up if it does not.
    async fn again(&self, s: &Stats, attempts: usize) -> bool {
        let window = Duration::from_secs_f64(self.opts.warmup + self.opts.seconds);
        let left = self.retry_left.get();
        if s.other_cpu <= NOISY_OTHER || attempts >= MAX_ATTEMPTS || left < window {
            return false;
        }
        eprintln!(
            "bench:   unrelated load used {:.0}% of a core during that window; waiting for quiet to run it again",
            s.other_cpu
        );
        let started = Instant::now();
        let (busy, _) = wait_quiet((left - window).min(Duration::from_secs(20))).await;
        self.spend(started.elapsed() + window);
        busy < QUIET_BUSY
    }

    /// Runs `attempt`, again if unrelated load disturbed it (bounded),
    /// and keeps the least disturbed attempt, with the tokens of all.
    async fn measure<F, Fut>(&self, mut attempt: F) -> (Stats, Vec<Bytes>)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = (Stats, Vec<Bytes>)>,
    {
        let mut tokens = Vec::new();
        let mut others = Vec::new();
        let mut best: Option<Stats> = None;
        loop {
            let (s, t) = attempt().await;
            tokens.extend(t);
            others.push(s.other_cpu);
            let again = self.again(&s, others.len()).await;
            if best.as_ref().is_none_or(|b| s.other_cpu < b.other_cpu) {
                best = Some(s);
            }
            if !again {
                break;
            }
        }
        let mut best = best.expect("at least one attempt");
        note_attempts(&mut best, &others);
        (best, tokens)
    }

    /// Runs `concurrency` HTTP/1.1 keep-alive workers until the phase ends
    /// (or `make` runs dry), returning the measured stats and any tokens
    /// the check collected.
    async fn http(
        &self,
        name: &str,
        addr: SocketAddr,
        server_pid: i32,
        phase: Phase,
        make: MakeFn,
        check: CheckFn,
    ) -> (Stats, Vec<Bytes>) {
        let pg = self.opts.store == StoreKind::Postgres;
        let moto = self.moto;
        let sampler = tokio::spawn(async move {
            tokio::time::sleep_until(phase.measure.into()).await;
            tokio::task::spawn_blocking(move || cpu_sample(server_pid, pg, moto))
                .await
                .expect("cpu sample")
        });
        let workers: Vec<_> = (0..self.opts.concurrency)
            .map(|_| tokio::spawn(http_worker(addr, make.clone(), check.clone(), phase)))
            .collect();
        let mut outs = Vec::new();
        for w in workers {
            outs.push(w.await.expect("worker panicked"));
        }
        let after = cpu_sample(server_pid, pg, self.moto);
        let before = if sampler.is_finished() {
            sampler.await.expect("sampler")
        } else {
            sampler.abort();
            after
        };
        let (s, tokens) = summarize(name, outs, &phase, (before, after));
        print_progress(&s);
        (s, tokens)
    }

    async fn grpc(
        &self,
        name: &str,
        clients: &[AuthorizationClient<Channel>],
        server_pid: i32,
        req: &CheckRequest,
    ) -> (Stats, Vec<Bytes>) {
        let pg = self.opts.store == StoreKind::Postgres;
        let phase = self.phase();
        let sampler = tokio::spawn(async move {
            tokio::time::sleep_until(phase.measure.into()).await;
            tokio::task::spawn_blocking(move || cpu_sample(server_pid, pg, false))
                .await
                .expect("cpu sample")
        });
        let workers: Vec<_> = (0..self.opts.concurrency)
            .map(|i| {
                let c = clients[i % clients.len()].clone();
                tokio::spawn(grpc_worker(c, req.clone(), phase))
            })
            .collect();
        let mut outs = Vec::new();
        for w in workers {
            outs.push(w.await.expect("worker panicked"));
        }
        let after = cpu_sample(server_pid, pg, self.moto);
        let before = sampler.await.unwrap_or(after);
        let (s, _) = summarize(name, outs, &phase, (before, after));
        print_progress(&s);
        (s, Vec::new())
    }

    /// Mints `n` tokens through the token endpoint, untimed.
    async fn mint(
        &self,
        addr: SocketAddr,
        pid: i32,
        tpl: &Template,
        n: usize,
    ) -> (Vec<Bytes>, Stats) {
        let left = Arc::new(AtomicUsize::new(n));
        let tpl = tpl.clone();
        let make: MakeFn = Arc::new(move || {
            left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .ok()
                .map(|_| tpl.build())
        });
        let phase = Phase {
            measure: Instant::now(),
            end: Instant::now() + MINT_BUDGET,
        };
        eprintln!("bench: minting {n} tokens for the first-seen run (untimed)");
        let (m, tokens) = self
            .http(
                "(minting first-seen tokens)",
                addr,
                pid,
                phase,
                make,
                expect_token(true),
            )
            .await;
        (tokens, m)
    }

    /// A first-seen run: every request carries an item of `unused` (a
    /// token, or a body holding one) that no earlier request carried, and
    /// the items used are removed from `unused`. Since every item is used
    /// once, a second attempt gets fresh ones from `refill(count)`.
    #[allow(clippy::too_many_arguments)]
    async fn first_seen<T, B, R>(
        &self,
        name: &str,
        addr: SocketAddr,
        pid: i32,
        unused: &mut Vec<T>,
        want: usize,
        build: B,
        check: CheckFn,
        mut refill: R,
    ) -> Stats
    where
        T: Clone + Send + Sync + 'static,
        B: Fn(T) -> Request<Full<Bytes>> + Send + Sync + 'static,
        R: AsyncFnMut(usize) -> Vec<T>,
    {
        let build = Arc::new(build);
        let mut others = Vec::new();
        let mut best: Option<Stats> = None;
        loop {
            let pool = Arc::new(TokenPool {
                list: std::mem::take(unused),
                next: AtomicUsize::new(0),
            });
            let (p, b) = (pool.clone(), build.clone());
            let make: MakeFn = Arc::new(move || {
                let item = p.list.get(p.next.fetch_add(1, Ordering::Relaxed))?.clone();
                Some(b(item))
            });
            let (mut s, _) = self
                .http(name, addr, pid, self.phase(), make, check.clone())
                .await;
            let pool = Arc::try_unwrap(pool)
                .ok()
                .expect("every worker has finished");
            let used = pool.next.into_inner().min(pool.list.len());
            if used >= pool.list.len() {
                s.note = Some(format!(
                    "ran out of its {} pre-minted tokens after {:.1} s of the {} s window (raise BENCH_MAX_TOKENS)",
                    pool.list.len(),
                    s.secs,
                    self.opts.seconds
                ));
            }
            *unused = pool.list;
            unused.drain(..used);
            others.push(s.other_cpu);
            let again = self.again(&s, others.len()).await;
            if best.as_ref().is_none_or(|b| s.other_cpu < b.other_cpu) {
                best = Some(s);
            }
            if !again {
                break;
            }
            let need = want.max(used + used / 10);
            if unused.len() < need {
                let started = Instant::now();
                let more = refill(need - unused.len()).await;
                self.spend(started.elapsed());
                unused.extend(more);
            }
        }
        let mut best = best.expect("at least one attempt");
        note_attempts(&mut best, &others);
        best
    }
}

fn note_attempts(s: &mut Stats, others: &[f64]) {
    if others.len() > 1 {
        let list: Vec<String> = others.iter().map(|o| format!("{o:.0}%")).collect();
        let text = format!(
            "run {} times because unrelated load disturbed it (other CPU per attempt: {}); the least disturbed attempt is reported",
            others.len(),
            list.join(", ")
        );
        s.note = Some(match s.note.take() {
            Some(n) => format!("{n}; {text}"),
            None => text,
        });
    }
}

fn bearer_value(token: &Bytes) -> HeaderValue {
    let mut v = Vec::with_capacity(token.len() + 7);
    v.extend_from_slice(b"Bearer ");
    v.extend_from_slice(token);
    HeaderValue::from_maybe_shared(Bytes::from(v)).expect("token header")
}

/// Tokens for one first-seen attempt, each handed out once.
struct TokenPool<T> {
    list: Vec<T>,
    next: AtomicUsize,
}

async fn grpc_clients(
    addr: SocketAddr,
    n: usize,
) -> anyhow::Result<Vec<AuthorizationClient<Channel>>> {
    let mut clients = Vec::new();
    for _ in 0..n {
        let ch = Endpoint::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .connect_timeout(REQUEST_TIMEOUT)
            .connect()
            .await
            .with_context(|| format!("gRPC connect to {addr}"))?;
        clients.push(AuthorizationClient::new(ch));
    }
    Ok(clients)
}

fn fixed(template: Template) -> MakeFn {
    Arc::new(move || Some(template.build()))
}

fn expect_status(want: StatusCode) -> CheckFn {
    Arc::new(move |status, _, body| {
        if status == want {
            Ok(None)
        } else {
            Err(describe(status, body))
        }
    })
}

fn expect_token(collect: bool) -> CheckFn {
    Arc::new(move |status, _, body| {
        if status != StatusCode::OK {
            return Err(describe(status, body));
        }
        match access_token(body) {
            Some(t) if t.iter().filter(|b| **b == b'.').count() == 2 => Ok(collect.then_some(t)),
            _ => Err(format!("no access_token in {}", describe(status, body))),
        }
    })
}

// --------------------------------------------------------- the main run

struct Tessera {
    guard: ChildGuard,
    http: SocketAddr,
    grpc: SocketAddr,
    client_id: String,
    secret: String,
    /// The data product that exchanges people's ID tokens (token exchange).
    product_id: String,
    product_secret: String,
    /// The server's environment, for further CLI commands.
    env: Vec<(String, String)>,
}

/// `[aws]` for the AWS credential rows: moto and the reuse margin.
struct AwsSetup<'a> {
    moto_url: &'a str,
    reuse_margin: &'a str,
}

fn tessera_command(env: &[(String, String)], dir: &Path) -> Command {
    let bin = std::env::var_os("BENCH_TESSERA_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_tessera")),
        PathBuf::from,
    );
    let mut cmd = Command::new(bin);
    for (k, _) in std::env::vars() {
        if k.starts_with("TESSERA_") || k.starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    cmd.current_dir(dir).envs(env.iter().map(|(k, v)| (k, v)));
    cmd
}

async fn wait_ready(
    guard: &mut ChildGuard,
    addr: SocketAddr,
    path: &'static str,
    limit: Duration,
) -> anyhow::Result<()> {
    let until = Instant::now() + limit;
    let mut last = String::from("no answer");
    while Instant::now() < until {
        if let Some(status) = guard.exited() {
            bail!(
                "{} exited with {status} before it was ready; its log:\n{}",
                guard.name,
                guard.log_tail()
            );
        }
        let req = Template::new(Method::GET, addr, path).build();
        match http_once(addr, req).await {
            Ok((s, _, _)) if s == StatusCode::OK => return Ok(()),
            Ok((s, _, b)) => last = describe(s, &b),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!(
        "{} not ready on {addr}{path} within {limit:?} (last: {last}); its log:\n{}",
        guard.name,
        guard.log_tail()
    )
}

/// The route policy: the built-in `internal` rule the service-token rows
/// use, and `api` for people's ID tokens from the bench IdP.
fn policy_toml() -> String {
    format!(
        r#"[[rule]]
name = "internal"
path = "/internal/*"
accept = ["service"]
audience = "internal"

[[rule]]
name = "api"
path = "/api/*"
accept = ["human"]
audience = "{IDP_AUDIENCE}"
trusted_issuers = ["{IDP_NAME}"]
"#
    )
}

/// The config file: the policy file and the bench IdP as a trusted issuer
/// of people; everything else comes from the environment.
fn config_toml(policy: &Path, idp_issuer: &str) -> String {
    format!(
        r#"[policy]
file = {policy:?}

[[trusted_issuers]]
name = "{IDP_NAME}"
issuer = "{idp_issuer}"
kind = "human"
audiences = ["{IDP_AUDIENCE}"]
[trusted_issuers.group_scopes]
analysts = ["{EXCHANGE_SCOPE}"]
"#,
        policy = policy.display().to_string()
    )
}

/// Runs a `tessera` CLI command against the server's store; its JSON output.
fn tessera_cli(
    env: &[(String, String)],
    dir: &Path,
    args: &[&str],
) -> anyhow::Result<serde_json::Value> {
    let what = format!("tessera {}", args[..2.min(args.len())].join(" "));
    let out = tessera_command(env, dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| what.clone())?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("{what} output is not JSON"))
}

async fn start_tessera(
    opts: &Opts,
    dir: &Path,
    schema: Option<&str>,
    idp_issuer: &str,
    aws: Option<&AwsSetup<'_>>,
) -> anyhow::Result<Tessera> {
    let (hp, gp) = free_ports()?;
    let http: SocketAddr = format!("127.0.0.1:{hp}").parse()?;
    let grpc: SocketAddr = format!("127.0.0.1:{gp}").parse()?;
    let store_url = match opts.store {
        StoreKind::Sqlite => format!("sqlite://{}", dir.join("t.db").display()),
        StoreKind::Postgres => opts.pg_url.clone(),
    };
    let mut env: Vec<(String, String)> = vec![
        ("TESSERA_SERVER_LISTEN".into(), http.to_string()),
        ("TESSERA_SERVER_GRPC_LISTEN".into(), grpc.to_string()),
        ("TESSERA_STORE_URL".into(), store_url),
        (
            "TESSERA_KEYS_DIR".into(),
            dir.join("keys").display().to_string(),
        ),
        ("TESSERA_LOG".into(), "warn".into()),
        ("TESSERA_ISSUERS_SERVICE_TOKEN_TTL".into(), "1h".into()),
    ];
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, policy_toml()).context("write policy.toml")?;
    let config = dir.join("tessera.toml");
    let mut config_text = config_toml(&policy, idp_issuer);
    if let Some(a) = aws {
        // sts_timeout: generous, so a queue at the single-threaded moto
        // shows up as latency rather than as errors.
        let _ = write!(
            config_text,
            "\n[aws]\nregion = \"us-east-1\"\nendpoint_url = {:?}\nsts_timeout = \"10s\"\ncredential_reuse_margin = {:?}\n",
            a.moto_url, a.reuse_margin
        );
        env.extend(
            [
                ("AWS_ACCESS_KEY_ID", "testing"),
                ("AWS_SECRET_ACCESS_KEY", "testing"),
                ("AWS_EC2_METADATA_DISABLED", "true"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        );
    }
    std::fs::write(&config, config_text).context("write tessera.toml")?;
    env.push(("TESSERA_CONFIG".into(), config.display().to_string()));
    if let Some(s) = schema {
        env.push(("TESSERA_STORE_SCHEMA".into(), s.to_string()));
    }
    let mut cmd = tessera_command(&env, dir);
    cmd.arg("serve");
    let mut guard = ChildGuard::spawn("tessera", cmd, dir.join("tessera.log"))?;
    wait_ready(&mut guard, http, "/readyz", Duration::from_secs(60)).await?;
    eprintln!(
        "bench: tessera pid {} ready: HTTP {http}, gRPC {grpc}{}",
        guard.pid(),
        schema.map_or(String::new(), |s| format!(", schema {s}"))
    );

    let created = tessera_cli(
        &env,
        dir,
        &[
            "client",
            "create",
            "--name",
            "bench",
            "--tenant",
            "acme",
            "--audience",
            "internal",
            "--scope",
            SCOPE,
        ],
    )?;
    let product = tessera_cli(
        &env,
        dir,
        &[
            "client",
            "create",
            "--name",
            "product",
            "--tenant",
            "acme",
            "--audience",
            "internal",
        ],
    )?;
    let field = |v: &serde_json::Value, k: &str| {
        v[k].as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("client create output has no {k}: {v}"))
    };
    let product_id = field(&product, "client_id")?;
    let delegation = tessera_cli(
        &env,
        dir,
        &[
            "delegation",
            "add",
            "--client",
            &product_id,
            "--audience",
            EXCHANGE_AUDIENCE,
            "--scope",
            EXCHANGE_SCOPE,
        ],
    )?;
    if delegation["client_id"] != product_id.as_str() {
        bail!("unexpected delegation add output: {delegation}");
    }
    Ok(Tessera {
        client_id: field(&created, "client_id")?,
        secret: field(&created, "client_secret")?,
        product_secret: field(&product, "client_secret")?,
        product_id,
        guard,
        http,
        grpc,
        env,
    })
}

fn check_request(token: &str) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(AttrRequest {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: CHECK_PATH.into(),
                    host: "bench.internal".into(),
                    scheme: "http".into(),
                    protocol: "HTTP/1.1".into(),
                    headers: [("authorization".to_string(), format!("Bearer {token}"))]
                        .into_iter()
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// The product's token-exchange request for a person's ID token (an ID
/// token is base64url and dots: nothing to escape).
fn exchange_form(id_token: &str) -> String {
    format!(
        "grant_type={}&subject_token={id_token}&subject_token_type={}&audience={EXCHANGE_AUDIENCE}",
        EXCHANGE_GRANT.replace(':', "%3A"),
        ID_TOKEN_TYPE.replace(':', "%3A")
    )
}

fn claims_of(token: &str) -> serde_json::Value {
    token
        .split('.')
        .nth(1)
        .and_then(|p| B64.decode(p).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null)
}

struct Results {
    json: Stats,
    mint: Stats,
    verify: Stats,
    grpc_ceiling: Stats,
    issue: Stats,
    cached: Stats,
    first_seen: Stats,
    grpc: Stats,
    introspect: Stats,
    exchange: Stats,
    exchange_first: Stats,
    trusted_cached: Stats,
    trusted_first: Stats,
    token_bytes: usize,
    id_token_bytes: usize,
    minted_note: String,
    /// How the ID tokens of the first-seen runs were made.
    signed_notes: Vec<String>,
    /// What the bench IdP answered during the run.
    idp_note: String,
    /// Machine busy just before the run (% of one core) and the wait for it.
    quiet: (f64, f64),
}

async fn run(opts: Opts) -> anyhow::Result<Results> {
    let dir = tempfile::Builder::new()
        .prefix("tessera-bench-")
        .tempdir()?;
    let schema = (opts.store == StoreKind::Postgres).then(|| {
        format!(
            "bench_{}_{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs()
        )
    });
    let bench = Bench {
        opts: opts.clone(),
        moto: false,
        retry_left: Cell::new(Duration::from_secs_f64(retry_budget(&opts))),
    };
    let quiet = wait_quiet(Duration::from_secs_f64(env_or("BENCH_QUIET_WAIT", 60.0)?)).await;

    // The ceiling server: this same binary, in its own process.
    let (cport, cgport) = free_ports()?;
    let caddr: SocketAddr = format!("127.0.0.1:{cport}").parse()?;
    let cgaddr: SocketAddr = format!("127.0.0.1:{cgport}").parse()?;
    let mut ccmd = Command::new(std::env::current_exe()?);
    ccmd.args(["--ceiling-server", &cport.to_string(), &cgport.to_string()]);
    let mut ceiling = ChildGuard::spawn("ceiling server", ccmd, dir.path().join("ceiling.log"))?;
    wait_ready(&mut ceiling, caddr, "/json", Duration::from_secs(20)).await?;

    eprintln!(
        "bench: store {}, {} s per scenario after {} s warm-up, concurrency {}, {} CPUs",
        opts.store.name(),
        opts.seconds,
        opts.warmup,
        opts.concurrency,
        nproc()
    );
    let idp = start_idp().await?;
    eprintln!("bench: IdP {} (trusted issuer {IDP_NAME:?})", idp.issuer());
    let mut tessera =
        start_tessera(&opts, dir.path(), schema.as_deref(), idp.issuer(), None).await?;
    let result = async {
        let t = &tessera;
        let tpid = t.guard.pid();
        let cpid = ceiling.pid();
        let auth = basic(&t.client_id, &t.secret);

        // ---- preflight: one of each, checked in full.
        let token_req = Template::new(Method::POST, t.http, "/oauth2/token")
            .header(header::AUTHORIZATION, &auth)
            .form(format!(
                "grant_type=client_credentials&scope={}",
                SCOPE.replace(':', "%3A")
            ));
        let (s, _, body) = http_once(t.http, token_req.build()).await?;
        let resp: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|_| anyhow!("token endpoint: {}", describe(s, &body)))?;
        let token = match resp["access_token"].as_str() {
            Some(tok) if s == StatusCode::OK => tok.to_string(),
            _ => bail!("token endpoint: {}", describe(s, &body)),
        };
        let claims = claims_of(&token);
        eprintln!("bench: Tessera token ({} bytes) claims: {claims}", token.len());
        if claims["aud"] != "internal" || claims["scope"] != SCOPE {
            bail!("unexpected token claims: {claims}");
        }
        let bearer = format!("Bearer {token}");
        let check_tpl = Template::new(Method::GET, t.http, "/ext_authz/internal/bench")
            .header(header::AUTHORIZATION, &bearer);
        let (s, h, body) = http_once(t.http, check_tpl.build()).await?;
        if s != StatusCode::OK || h.get("x-tessera-client-id").is_none() {
            bail!("ext_authz preflight: {} {h:?}", describe(s, &body));
        }
        let intro_tpl = Template::new(Method::POST, t.http, "/oauth2/introspect")
            .header(header::AUTHORIZATION, &auth)
            .form(format!("token={token}"));
        let (s, _, body) = http_once(t.http, intro_tpl.build()).await?;
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        if s != StatusCode::OK || v["active"] != true || v["client_id"] != t.client_id.as_str() {
            bail!("introspection preflight: {}", describe(s, &body));
        }
        let grpc_req = check_request(&token);
        let mut gc = AuthorizationClient::new(
            Endpoint::from_shared(format!("http://{}", t.grpc))?
                .connect()
                .await?,
        );
        let r = gc.check(grpc_req.clone()).await?.into_inner();
        if r.status.as_ref().map(|s| s.code) != Some(0) {
            bail!("gRPC preflight: {r:?}");
        }
        drop(gc);

        // A person's ID token from the bench IdP, exchanged by the product
        // (Tessera has fetched the IdP's keys at start-up or, at the
        // latest, does so now, before anything is timed)...
        let id_token = idp.signer.id_token(0, unix_now());
        let exchange_tpl = Template::new(Method::POST, t.http, "/oauth2/token")
            .header(
                header::AUTHORIZATION,
                &basic(&t.product_id, &t.product_secret),
            )
            .form(exchange_form(&id_token));
        let (s, _, body) = http_once(t.http, exchange_tpl.build()).await?;
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|_| anyhow!("token exchange preflight: {}", describe(s, &body)))?;
        let delegated = match v["access_token"].as_str() {
            Some(tok) if s == StatusCode::OK => tok.to_string(),
            _ => bail!("token exchange preflight: {}", describe(s, &body)),
        };
        let dc = claims_of(&delegated);
        eprintln!(
            "bench: ID token ({} bytes) exchanged for a delegated token ({} bytes) with claims: {dc}",
            id_token.len(),
            delegated.len()
        );
        let aud_ok = dc["aud"] == EXCHANGE_AUDIENCE
            || dc["aud"]
                .as_array()
                .is_some_and(|a| a.len() == 1 && a[0] == EXCHANGE_AUDIENCE);
        if s != StatusCode::OK
            || v["issued_token_type"] != ACCESS_TOKEN_TYPE
            || v["scope"] != EXCHANGE_SCOPE
            || !aud_ok
            || dc["sub"] != "user-0000"
            || dc["scope"] != EXCHANGE_SCOPE
            || dc["principal"] != "human"
            || dc["tenant"] != "acme"
            || dc["client_id"] != t.product_id.as_str()
            || dc["act"] != serde_json::json!({ "sub": t.product_id })
            || !dc["iss"]
                .as_str()
                .is_some_and(|i| i.ends_with("/issuers/human"))
        {
            bail!("unexpected token exchange answer: {v}, delegated token claims {dc}");
        }
        // ... and the IdP's access token presented directly at the edge on
        // the trusted rule (an ID token is refused there, checked below).
        let idp_access_token = idp.signer.access_token(0, unix_now());
        let trusted_tpl = Template::new(Method::GET, t.http, TRUSTED_CHECK)
            .header(header::AUTHORIZATION, &format!("Bearer {idp_access_token}"));
        let (s, h, body) = http_once(t.http, trusted_tpl.build()).await?;
        let hv = |k: &str| h.get(k).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        if s != StatusCode::OK
            || hv("x-tessera-subject") != "user-0000"
            || hv("x-tessera-principal") != "human"
            || hv("x-tessera-tenant") != "acme"
        {
            bail!("trusted ext_authz preflight: {} {h:?}", describe(s, &body));
        }
        // The trusted rule really checks: a forged signature is refused,
        // so is an ID token, and the access token on the service-token route.
        let id_tpl = Template::new(Method::GET, t.http, TRUSTED_CHECK)
            .header(header::AUTHORIZATION, &format!("Bearer {id_token}"));
        let (s, _, body) = http_once(t.http, id_tpl.build()).await?;
        if s != StatusCode::UNAUTHORIZED {
            bail!("an ID token passed the trusted rule: {}", describe(s, &body));
        }
        let (head, _) = idp_access_token.rsplit_once('.').expect("three parts");
        let forged = format!("{head}.{}", B64.encode([7u8; 64]));
        let forged_tpl = Template::new(Method::GET, t.http, TRUSTED_CHECK)
            .header(header::AUTHORIZATION, &format!("Bearer {forged}"));
        let (s, _, body) = http_once(t.http, forged_tpl.build()).await?;
        if s != StatusCode::UNAUTHORIZED {
            bail!("a forged access token was not refused: {}", describe(s, &body));
        }
        let wrong_route = Template::new(Method::GET, t.http, "/ext_authz/internal/bench")
            .header(header::AUTHORIZATION, &format!("Bearer {idp_access_token}"));
        let (s, _, body) = http_once(t.http, wrong_route.build()).await?;
        if s != StatusCode::FORBIDDEN {
            bail!(
                "an IdP access token passed the service-token route: {}",
                describe(s, &body)
            );
        }

        // ---- ceilings.
        let json_tpl = Template::new(Method::GET, caddr, "/json");
        let json_check: CheckFn = Arc::new(|status, _, body: &Bytes| {
            if status == StatusCode::OK && body.as_ref() == CEILING_JSON.as_bytes() {
                Ok(None)
            } else {
                Err(describe(status, body))
            }
        });
        let (json, _) = bench
            .measure(|| {
                bench.http(
                    "bare JSON ceiling",
                    caddr,
                    cpid,
                    bench.phase(),
                    fixed(json_tpl.clone()),
                    json_check.clone(),
                )
            })
            .await;
        // Same request shape as Tessera's token request.
        let mint_tpl = Template::new(Method::POST, caddr, "/mint")
            .header(header::AUTHORIZATION, &auth)
            .form(format!(
                "grant_type=client_credentials&scope={}",
                SCOPE.replace(':', "%3A")
            ));
        let (mint, _) = bench
            .measure(|| {
                bench.http(
                    "bare ES256 mint ceiling",
                    caddr,
                    cpid,
                    bench.phase(),
                    fixed(mint_tpl.clone()),
                    expect_token(false),
                )
            })
            .await;
        let (s, _, body) = http_once(caddr, mint_tpl.build()).await?;
        let ceiling_token = access_token(&body)
            .ok_or_else(|| anyhow!("ceiling /mint: {}", describe(s, &body)))?;
        let ceiling_token = String::from_utf8(ceiling_token.to_vec())?;
        eprintln!(
            "bench: ceiling token ({} bytes) claims: {}",
            ceiling_token.len(),
            claims_of(&ceiling_token)
        );
        let verify_tpl = Template::new(Method::GET, caddr, "/verify")
            .header(header::AUTHORIZATION, &format!("Bearer {ceiling_token}"));
        let (verify, _) = bench
            .measure(|| {
                bench.http(
                    "bare ES256 verify ceiling",
                    caddr,
                    cpid,
                    bench.phase(),
                    fixed(verify_tpl.clone()),
                    expect_status(StatusCode::OK),
                )
            })
            .await;

        // Not a target's ceiling, but shows what the gRPC stack and this
        // generator manage on their own.
        let ceiling_req = check_request(&ceiling_token);
        let cclients = grpc_clients(cgaddr, opts.grpc_channels).await?;
        let (grpc_ceiling, _) = bench
            .measure(|| bench.grpc("bare gRPC Check ceiling", &cclients, cpid, &ceiling_req))
            .await;
        drop(cclients);

        // ---- Tessera: issuance (tokens kept for the first-seen run).
        let (issue, mut tokens) = bench
            .measure(|| {
                bench.http(
                    "client_credentials",
                    t.http,
                    tpid,
                    bench.phase(),
                    fixed(token_req.clone()),
                    expect_token(true),
                )
            })
            .await;

        // Enough fresh tokens for the first-seen run at the bare verify rate.
        let want = ((verify.rps() * (opts.warmup + opts.seconds) * 1.15).ceil() as usize)
            .clamp(1000, opts.max_tokens.max(1000));
        let from_issuance = tokens.len().min(want);
        let mut minted_note = if tokens.len() < want {
            let started = Instant::now();
            let (more, m) = bench.mint(t.http, tpid, &token_req, want - tokens.len()).await;
            tokens.extend(more);
            format!(
                "{} tokens for the first-seen run: {} from the client_credentials run, {} minted before it in {:.1} s ({} errors)",
                tokens.len(),
                from_issuance,
                m.ok,
                started.elapsed().as_secs_f64(),
                m.errors
            )
        } else {
            format!("{want} tokens for the first-seen run, all from the client_credentials run")
        };
        tokens.truncate(want);
        let mut unused: Vec<HeaderValue> = tokens.iter().map(bearer_value).collect();
        drop(tokens);

        let (cached, _) = bench
            .measure(|| {
                bench.http(
                    "ext_authz HTTP cached",
                    t.http,
                    tpid,
                    bench.phase(),
                    fixed(check_tpl.clone()),
                    expect_status(StatusCode::OK),
                )
            })
            .await;

        // First-seen: every token is used once, so a second attempt needs
        // tokens of its own.
        let first_tpl = Template::new(Method::GET, t.http, "/ext_authz/internal/bench");
        let first_seen = bench
            .first_seen(
                "ext_authz HTTP first-seen",
                t.http,
                tpid,
                &mut unused,
                want,
                move |v: HeaderValue| {
                    let mut r = first_tpl.build();
                    r.headers_mut().insert(header::AUTHORIZATION, v);
                    r
                },
                expect_status(StatusCode::OK),
                async |n| {
                    let started = Instant::now();
                    let (more, m) = bench.mint(t.http, tpid, &token_req, n).await;
                    let _ = write!(
                        minted_note,
                        "; {} more minted in {:.1} s for a second first-seen attempt",
                        m.ok,
                        started.elapsed().as_secs_f64()
                    );
                    more.iter().map(bearer_value).collect()
                },
            )
            .await;
        drop(unused);

        let clients = grpc_clients(t.grpc, opts.grpc_channels).await?;
        let (grpc, _) = bench
            .measure(|| bench.grpc("ext_authz gRPC", &clients, tpid, &grpc_req))
            .await;
        drop(clients);

        let intro_check: CheckFn = Arc::new(|status, _, body: &Bytes| {
            if status == StatusCode::OK && find(body, br#""active":true"#).is_some() {
                Ok(None)
            } else {
                Err(describe(status, body))
            }
        });
        let (introspect, _) = bench
            .measure(|| {
                bench.http(
                    "introspection",
                    t.http,
                    tpid,
                    bench.phase(),
                    fixed(intro_tpl.clone()),
                    intro_check.clone(),
                )
            })
            .await;

        // ---- token exchange: the product exchanges people's ID tokens.
        let (exchange, _) = bench
            .measure(|| {
                bench.http(
                    "token exchange, one ID token",
                    t.http,
                    tpid,
                    bench.phase(),
                    fixed(exchange_tpl.clone()),
                    expect_token(false),
                )
            })
            .await;
        // Each request a token Tessera has not verified before (the
        // people cycle over IDP_USERS), enough for the bare rate of the
        // slower of its two signature operations.
        let pool_size = |rps: f64| {
            ((rps * (opts.warmup + opts.seconds) * 1.15).ceil() as usize)
                .clamp(1000, opts.max_tokens.max(1000))
        };
        let mut signed_notes = Vec::new();
        let want_x = pool_size(mint.rps().min(verify.rps()));
        let started = Instant::now();
        eprintln!("bench: signing {want_x} ID tokens for the first-seen exchange run (untimed)");
        let mut unused_x: Vec<Bytes> =
            sign_id_tokens(&idp.signer, want_x, |tok| Bytes::from(exchange_form(tok))).await;
        let mut note = format!(
            "{want_x} ID tokens for the first-seen token exchange run ({IDP_USERS} people), signed by the bench IdP before it in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let x_tpl = exchange_tpl.clone();
        let exchange_first = bench
            .first_seen(
                "token exchange, first-seen ID tokens",
                t.http,
                tpid,
                &mut unused_x,
                want_x,
                move |body: Bytes| x_tpl.build_with(body),
                expect_token(false),
                async |n| {
                    let started = Instant::now();
                    let more =
                        sign_id_tokens(&idp.signer, n, |tok| Bytes::from(exchange_form(tok))).await;
                    let _ = write!(
                        note,
                        "; {n} more signed in {:.1} s for a second attempt",
                        started.elapsed().as_secs_f64()
                    );
                    more
                },
            )
            .await;
        drop(unused_x);
        signed_notes.push(note);

        // ---- ext_authz of the IdP's tokens on the trusted rule.
        let (trusted_cached, _) = bench
            .measure(|| {
                bench.http(
                    "ext_authz HTTP trusted cached",
                    t.http,
                    tpid,
                    bench.phase(),
                    fixed(trusted_tpl.clone()),
                    expect_status(StatusCode::OK),
                )
            })
            .await;
        let bearer_of = |tok: &str| HeaderValue::try_from(format!("Bearer {tok}")).expect("header");
        let started = Instant::now();
        eprintln!("bench: signing {want} access tokens for the first-seen trusted ext_authz run (untimed)");
        let mut unused_t: Vec<HeaderValue> =
            sign_access_tokens(&idp.signer, want, bearer_of).await;
        let mut note = format!(
            "{want} IdP access tokens for the first-seen trusted ext_authz run ({IDP_USERS} people), signed by the bench IdP before it in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let tt_tpl = Template::new(Method::GET, t.http, TRUSTED_CHECK);
        let trusted_first = bench
            .first_seen(
                "ext_authz HTTP trusted first-seen",
                t.http,
                tpid,
                &mut unused_t,
                want,
                move |v: HeaderValue| {
                    let mut r = tt_tpl.build();
                    r.headers_mut().insert(header::AUTHORIZATION, v);
                    r
                },
                expect_status(StatusCode::OK),
                async |n| {
                    let started = Instant::now();
                    let more = sign_access_tokens(&idp.signer, n, bearer_of).await;
                    let _ = write!(
                        note,
                        "; {n} more signed in {:.1} s for a second attempt",
                        started.elapsed().as_secs_f64()
                    );
                    more
                },
            )
            .await;
        drop(unused_t);
        signed_notes.push(note);
        let (discovery, jwks) = idp.fetches();
        let idp_note = format!(
            "the bench IdP ({}) answered {discovery} discovery and {jwks} JWKS requests in the whole run (its JWKS says Cache-Control: max-age=3600)",
            idp.issuer()
        );

        Ok(Results {
            json,
            mint,
            verify,
            grpc_ceiling,
            issue,
            cached,
            first_seen,
            grpc,
            introspect,
            exchange,
            exchange_first,
            trusted_cached,
            trusted_first,
            token_bytes: token.len(),
            id_token_bytes: id_token.len(),
            minted_note,
            signed_notes,
            idp_note,
            quiet,
        })
    }
    .await;

    if let Some(status) = tessera.guard.exited() {
        eprintln!(
            "bench: tessera exited during the run ({status}); its log:\n{}",
            tessera.guard.log_tail()
        );
    } else if result.is_err() {
        eprintln!("bench: tessera log (tail):\n{}", tessera.guard.log_tail());
    }
    drop(tessera);
    drop(ceiling);
    drop(idp);
    if let Some(schema) = schema {
        if std::env::var("BENCH_KEEP_SCHEMA").is_err() {
            if let Err(e) = drop_schema(&opts.pg_url, &schema).await {
                eprintln!("bench: could not drop schema {schema}: {e:#}");
            }
        }
    }
    result
}

async fn drop_schema(url: &str, schema: &str) -> anyhow::Result<()> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await?;
    sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(())
}

/// Seconds a run may spend re-running disturbed scenarios.
fn retry_budget(opts: &Opts) -> f64 {
    env_or("BENCH_RETRY_BUDGET", 90.0_f64)
        .unwrap_or(90.0)
        .max(0.0)
        .min(20.0 * (opts.warmup + opts.seconds) + 120.0)
}

// ----------------------------------------------------------------- report

fn nproc() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn git_describe() -> String {
    let dir = env!("CARGO_MANIFEST_DIR");
    let run = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(dir)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match run(&["rev-parse", "--short", "HEAD"]) {
        Some(rev) => {
            let dirty = run(&[
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                ":(exclude)benches",
            ])
            .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{rev} (with uncommitted changes outside benches/)")
            } else {
                rev
            }
        }
        None => "unknown".into(),
    }
}

/// A table row: the scenario and, for Tessera's, its ceiling and target.
type Row<'a> = (&'a Stats, Option<(&'a Stats, &'static str, Target)>);

struct Target {
    /// Throughput as a fraction of the ceiling's.
    min_ratio: f64,
    /// p99 at most this many times the ceiling's.
    max_p99: Option<f64>,
}

fn report(opts: &Opts, r: &Results) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Tessera load benchmark: {}\n", opts.store.name());
    let _ = writeln!(
        md,
        "- when: {} · commit {}",
        humantime::format_rfc3339_seconds(SystemTime::now()),
        git_describe()
    );
    let _ = writeln!(
        md,
        "- machine: nproc = {} ({}); the load generator, Tessera, the ceiling server{} share these CPUs",
        nproc(),
        cpu_model(),
        if opts.store == StoreKind::Postgres {
            " and Postgres"
        } else {
            ""
        }
    );
    let (busy, waited) = r.quiet;
    let _ = writeln!(
        md,
        "- machine load just before the run: {busy:.0}% of one core busy{}{}",
        if waited >= 1.5 {
            format!(" (after waiting {waited:.0} s for other work to finish)")
        } else {
            String::new()
        },
        if busy >= QUIET_BUSY {
            " — **not quiet**: other processes competed for the CPUs; see the \"other CPU\" column"
        } else {
            ""
        }
    );
    let _ = writeln!(
        md,
        "- load: concurrency {} (HTTP: {} keep-alive HTTP/1.1 connections, one request in flight each; gRPC: {} tasks over {} HTTP/2 channels), {} s measured per scenario after {} s warm-up, all on 127.0.0.1",
        opts.concurrency, opts.concurrency, opts.concurrency, opts.grpc_channels, opts.seconds, opts.warmup
    );
    let _ = writeln!(
        md,
        "- store: {} · Tessera token {} bytes (ES256, TTL 1h) · IdP ID token {} bytes (ES256, kid {IDP_KID}) · command: `benches/run.sh` (`cargo bench --bench load -- --store {} --seconds {} --concurrency {}`, the stores one after another in one process)\n",
        match opts.store {
            StoreKind::Sqlite => "SQLite (file in a temp dir)".to_string(),
            StoreKind::Postgres => "Postgres 127.0.0.1:5432, fresh schema".to_string(),
        },
        r.token_bytes,
        r.id_token_bytes,
        opts.stores_arg(),
        opts.seconds,
        opts.concurrency
    );
    let _ = writeln!(
        md,
        "| scenario | req/s | p50 ms | p99 ms | errors | vs ceiling | target | met |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---|---|---|");
    let rows: [Row; 13] = [
        (&r.json, None),
        (&r.mint, None),
        (&r.verify, None),
        (&r.grpc_ceiling, None),
        (
            &r.issue,
            Some((
                &r.mint,
                "bare mint",
                Target {
                    min_ratio: 0.5,
                    max_p99: None,
                },
            )),
        ),
        (
            &r.cached,
            Some((
                &r.json,
                "bare JSON",
                Target {
                    min_ratio: 0.5,
                    max_p99: Some(2.0),
                },
            )),
        ),
        (
            &r.first_seen,
            Some((
                &r.verify,
                "bare verify",
                Target {
                    min_ratio: 0.7,
                    max_p99: None,
                },
            )),
        ),
        (
            &r.grpc,
            Some((
                &r.json,
                "bare JSON",
                Target {
                    min_ratio: 0.5,
                    max_p99: Some(2.0),
                },
            )),
        ),
        (
            &r.introspect,
            Some((
                &r.json,
                "bare JSON",
                Target {
                    min_ratio: 0.0,
                    max_p99: None,
                },
            )),
        ),
        (
            &r.exchange,
            Some((
                &r.mint,
                "bare mint",
                Target {
                    min_ratio: 0.0,
                    max_p99: None,
                },
            )),
        ),
        (
            &r.exchange_first,
            Some((
                &r.mint,
                "bare mint",
                Target {
                    min_ratio: 0.0,
                    max_p99: None,
                },
            )),
        ),
        (
            &r.trusted_cached,
            Some((
                &r.json,
                "bare JSON",
                Target {
                    min_ratio: 0.5,
                    max_p99: Some(2.0),
                },
            )),
        ),
        (
            &r.trusted_first,
            Some((
                &r.verify,
                "bare verify",
                Target {
                    min_ratio: 0.7,
                    max_p99: None,
                },
            )),
        ),
    ];
    for (s, vs) in &rows {
        let (ratio, target, met) = match vs {
            None => ("—".to_string(), "—".to_string(), "".to_string()),
            Some((c, cname, t)) => {
                let ratio = s.rps() / c.rps().max(1e-9);
                let p99x = s.p99_ms / c.p99_ms.max(1e-9);
                let mut text = format!("{:.0}% of {cname} req/s, p99 {:.2}×", ratio * 100.0, p99x);
                // Comparisons for information, in the same cell.
                let also: &[(&Stats, &str)] = if std::ptr::eq(*s, &r.grpc) {
                    &[(&r.grpc_ceiling, "bare gRPC")]
                } else if std::ptr::eq(*s, &r.exchange) {
                    &[(&r.issue, "client_credentials")]
                } else if std::ptr::eq(*s, &r.exchange_first) {
                    &[(&r.issue, "client_credentials"), (&r.verify, "bare verify")]
                } else if std::ptr::eq(*s, &r.trusted_cached) {
                    &[(&r.cached, "own-token cached")]
                } else if std::ptr::eq(*s, &r.trusted_first) {
                    &[(&r.first_seen, "own-token first-seen")]
                } else {
                    &[]
                };
                for (i, (o, oname)) in also.iter().enumerate() {
                    let _ = write!(
                        text,
                        "{}vs {oname}: {:.0}%, p99 {:.2}×{}",
                        if i == 0 { " (" } else { "; " },
                        s.rps() / o.rps().max(1e-9) * 100.0,
                        s.p99_ms / o.p99_ms.max(1e-9),
                        if i + 1 == also.len() { ")" } else { "" }
                    );
                }
                if t.min_ratio == 0.0 {
                    (text, "none (reported)".to_string(), "".to_string())
                } else {
                    let mut target = format!("≥ {:.0}% req/s", t.min_ratio * 100.0);
                    let mut ok = ratio >= t.min_ratio;
                    if let Some(m) = t.max_p99 {
                        let _ = write!(target, ", p99 ≤ {m:.0}×");
                        ok &= p99x <= m;
                    }
                    ok &= s.errors == 0;
                    (text, target, if ok { "yes" } else { "**no**" }.to_string())
                }
            }
        };
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.2} | {:.2} | {} | {} | {} | {} |",
            s.name,
            s.rps(),
            s.p50_ms,
            s.p99_ms,
            s.errors,
            ratio,
            target,
            met
        );
    }
    let pg = opts.store == StoreKind::Postgres;
    let _ = writeln!(
        md,
        "\nCPU used during each measured window, in % of one core (nproc = {} so {}% is the whole machine). \"server\" is the process answering (the ceiling server or Tessera){}; \"other\" is everything else on the machine, i.e. unrelated load:\n",
        nproc(),
        nproc() * 100,
        if pg { ", \"Postgres\" all postgres processes" } else { " and includes SQLite, which runs inside it" }
    );
    if pg {
        let _ = writeln!(md, "| scenario | server CPU % | server µs/req | Postgres CPU % | Postgres µs/req | generator CPU % | other CPU % |");
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|");
    } else {
        let _ = writeln!(
            md,
            "| scenario | server CPU % | server µs/req | generator CPU % | other CPU % |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|");
    }
    for (s, _) in &rows {
        let per_req = |pct: f64| {
            if s.ok == 0 {
                0.0
            } else {
                pct / 100.0 * s.secs / s.ok as f64 * 1e6
            }
        };
        let db = if pg {
            format!(" {:.0} | {:.0} |", s.db_cpu, per_req(s.db_cpu))
        } else {
            String::new()
        };
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.0} |{db} {:.0} | {:.0} |",
            s.name,
            s.server_cpu,
            per_req(s.server_cpu),
            s.gen_cpu,
            s.other_cpu
        );
    }
    let _ = writeln!(md, "\nNotes:\n");
    let _ = writeln!(md, "- {}.", r.minted_note);
    for n in &r.signed_notes {
        let _ = writeln!(md, "- {n}.");
    }
    let _ = writeln!(md, "- {}.", r.idp_note);
    for (s, _) in &rows {
        if let Some(n) = &s.note {
            let _ = writeln!(md, "- {}: {n}.", s.name);
        }
        if s.errors > 0 || s.warmup_errors > 0 {
            let _ = writeln!(
                md,
                "- {}: {} errors ({} during warm-up); first: `{}`",
                s.name,
                s.errors,
                s.warmup_errors,
                s.first_error.as_deref().unwrap_or("-").replace('`', "'")
            );
        }
    }
    md
}

// ------------------------------------------------------------ the bench IdP

/// Signs the bench IdP's ID tokens; shared by the signing threads.
struct IdpSigner {
    issuer: String,
    key: EcdsaKeyPair,
    rng: SystemRandom,
    /// The encoded JWS header of ID tokens (`typ: JWT`).
    header: String,
    /// The encoded JWS header of access tokens (`typ: at+jwt`, RFC 9068).
    at_header: String,
}

/// Claims of the IdP's RFC 9068 access tokens: what a route takes directly
/// (an ID token is no credential there).
#[derive(Serialize)]
struct AtClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    iat: i64,
    exp: i64,
    jti: &'a str,
    client_id: &'a str,
    scope: &'a str,
    tenant: &'a str,
    groups: [&'a str; 1],
}

#[derive(Serialize)]
struct IdClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    iat: i64,
    exp: i64,
    nonce: &'a str,
    tenant: &'a str,
    groups: [&'a str; 1],
}

impl IdpSigner {
    /// An OIDC ID token for `user-NNNN`, valid for an hour. The nonce is
    /// random, so no two tokens are alike even for the same person.
    fn id_token(&self, user: usize, now: i64) -> String {
        let mut nonce = [0u8; 12];
        self.rng.fill(&mut nonce).expect("rng");
        let nonce = B64.encode(nonce);
        let sub = format!("user-{user:04}");
        let claims = IdClaims {
            iss: &self.issuer,
            sub: &sub,
            aud: IDP_AUDIENCE,
            iat: now,
            exp: now + 3600,
            nonce: &nonce,
            tenant: "acme",
            groups: ["analysts"],
        };
        self.sign(&self.header, &claims)
    }

    /// An RFC 9068 access token for `user-NNNN`, valid for an hour, with a
    /// random `jti`.
    fn access_token(&self, user: usize, now: i64) -> String {
        let mut jti = [0u8; 12];
        self.rng.fill(&mut jti).expect("rng");
        let jti = B64.encode(jti);
        let sub = format!("user-{user:04}");
        let claims = AtClaims {
            iss: &self.issuer,
            sub: &sub,
            aud: IDP_AUDIENCE,
            iat: now,
            exp: now + 3600,
            jti: &jti,
            client_id: "portal",
            scope: "reports:read",
            tenant: "acme",
            groups: ["analysts"],
        };
        self.sign(&self.at_header, &claims)
    }

    fn sign(&self, header: &str, claims: &impl Serialize) -> String {
        let mut token = String::with_capacity(512);
        token.push_str(header);
        token.push('.');
        token.push_str(&B64.encode(serde_json::to_vec(claims).expect("json")));
        let sig = self.key.sign(&self.rng, token.as_bytes()).expect("sign");
        token.push('.');
        token.push_str(&B64.encode(sig.as_ref()));
        token
    }
}

/// `n` distinct ID tokens for users 0, 1, … (cycling over `IDP_USERS`),
/// signed on every core and handed to `map` (untimed, outside any window).
async fn sign_id_tokens<T: Send + 'static>(
    signer: &Arc<IdpSigner>,
    n: usize,
    map: fn(&str) -> T,
) -> Vec<T> {
    sign_tokens(signer, n, IdpSigner::id_token, map).await
}

/// Like [`sign_id_tokens`], for access tokens.
async fn sign_access_tokens<T: Send + 'static>(
    signer: &Arc<IdpSigner>,
    n: usize,
    map: fn(&str) -> T,
) -> Vec<T> {
    sign_tokens(signer, n, IdpSigner::access_token, map).await
}

async fn sign_tokens<T: Send + 'static>(
    signer: &Arc<IdpSigner>,
    n: usize,
    make: fn(&IdpSigner, usize, i64) -> String,
    map: fn(&str) -> T,
) -> Vec<T> {
    let signer = signer.clone();
    tokio::task::spawn_blocking(move || {
        let now = unix_now();
        let threads = nproc();
        let per = n.div_ceil(threads);
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let signer = &signer;
                    scope.spawn(move || {
                        (t * per..((t + 1) * per).min(n))
                            .map(|i| map(&make(signer, i % IDP_USERS, now)))
                            .collect::<Vec<T>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("signing thread"))
                .collect()
        })
    })
    .await
    .expect("signing task")
}

#[derive(Clone)]
struct IdpState {
    discovery: Arc<serde_json::Value>,
    jwks: Arc<serde_json::Value>,
    discovery_fetches: Arc<AtomicUsize>,
    jwks_fetches: Arc<AtomicUsize>,
}

/// A tiny OpenID provider on 127.0.0.1, inside the bench process: its
/// discovery document and one ES256 key, which Tessera fetches and caches.
/// It stops listening when dropped (and, at the latest, with the bench).
struct Idp {
    signer: Arc<IdpSigner>,
    state: IdpState,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Idp {
    fn issuer(&self) -> &str {
        &self.signer.issuer
    }

    /// (discovery, JWKS) requests answered so far.
    fn fetches(&self) -> (usize, usize) {
        (
            self.state.discovery_fetches.load(Ordering::Relaxed),
            self.state.jwks_fetches.load(Ordering::Relaxed),
        )
    }
}

async fn idp_discovery(State(s): State<IdpState>) -> impl IntoResponse {
    s.discovery_fetches.fetch_add(1, Ordering::Relaxed);
    Json(s.discovery.as_ref().clone())
}

async fn idp_jwks(State(s): State<IdpState>) -> impl IntoResponse {
    s.jwks_fetches.fetch_add(1, Ordering::Relaxed);
    (
        [(header::CACHE_CONTROL, "max-age=3600")],
        Json(s.jwks.as_ref().clone()),
    )
}

async fn start_idp() -> anyhow::Result<Idp> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let issuer = format!("http://{}", listener.local_addr()?);
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|_| anyhow!("IdP keygen"))?;
    let key = EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        pkcs8.as_ref(),
        &rng,
    )
    .map_err(|_| anyhow!("IdP key"))?;
    // Uncompressed point: 0x04 || x || y.
    let public = key.public_key().as_ref();
    let jwk = serde_json::json!({
        "kty": "EC",
        "crv": "P-256",
        "x": B64.encode(&public[1..33]),
        "y": B64.encode(&public[33..65]),
        "kid": IDP_KID,
        "alg": "ES256",
        "use": "sig",
    });
    let state = IdpState {
        discovery: Arc::new(serde_json::json!({
            "issuer": issuer,
            "jwks_uri": format!("{issuer}/jwks"),
        })),
        jwks: Arc::new(serde_json::json!({ "keys": [jwk] })),
        discovery_fetches: Arc::new(AtomicUsize::new(0)),
        jwks_fetches: Arc::new(AtomicUsize::new(0)),
    };
    let header_of = |typ| {
        B64.encode(
            serde_json::to_vec(&CeilingHeader {
                alg: "ES256",
                typ,
                kid: IDP_KID,
            })
            .expect("json"),
        )
    };
    let (header, at_header) = (header_of("JWT"), header_of("at+jwt"));
    let app = Router::new()
        .route("/.well-known/openid-configuration", get(idp_discovery))
        .route("/jwks", get(idp_jwks))
        .with_state(state.clone());
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("bench: IdP server: {e}");
        }
    });
    Ok(Idp {
        signer: Arc::new(IdpSigner {
            issuer,
            key,
            rng,
            header,
            at_header,
        }),
        state,
        task,
    })
}

// ------------------------------------------------------ the ceiling server

#[derive(Serialize)]
struct CeilingClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: i64,
    iat: i64,
    jti: String,
    client_id: &'a str,
    scope: &'a str,
    principal: &'a str,
    tenant: &'a str,
}

#[derive(Serialize)]
struct CeilingHeader<'a> {
    alg: &'a str,
    typ: &'a str,
    kid: &'a str,
}

#[derive(Serialize)]
struct TokenResponse {
    access_token: String,
    token_type: &'static str,
    expires_in: i64,
    scope: &'static str,
}

struct Ceiling {
    key: EcdsaKeyPair,
    public: Vec<u8>,
    rng: SystemRandom,
    iss: String,
    kid: String,
    client_id: String,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

async fn ceiling_json() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], CEILING_JSON)
}

/// One ES256 signature over claims shaped like Tessera's.
async fn ceiling_mint(State(c): State<Arc<Ceiling>>, _body: Bytes) -> impl IntoResponse {
    let now = unix_now();
    let header = CeilingHeader {
        alg: "ES256",
        typ: "at+jwt",
        kid: &c.kid,
    };
    let claims = CeilingClaims {
        iss: &c.iss,
        sub: &c.client_id,
        aud: "internal",
        exp: now + 3600,
        iat: now,
        jti: uuid::Uuid::new_v4().to_string(),
        client_id: &c.client_id,
        scope: SCOPE,
        principal: "service",
        tenant: "acme",
    };
    let mut token = B64.encode(serde_json::to_vec(&header).expect("json"));
    token.push('.');
    token.push_str(&B64.encode(serde_json::to_vec(&claims).expect("json")));
    let sig = c.key.sign(&c.rng, token.as_bytes()).expect("sign");
    token.push('.');
    token.push_str(&B64.encode(sig.as_ref()));
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(TokenResponse {
            access_token: token,
            token_type: "Bearer",
            expires_in: 3600,
            scope: SCOPE,
        }),
    )
}

/// One ES256 verification of the presented token (no cache).
async fn ceiling_verify(State(c): State<Arc<Ceiling>>, headers: HeaderMap) -> StatusCode {
    let verified = (|| -> Option<()> {
        let token = headers
            .get(header::AUTHORIZATION)?
            .to_str()
            .ok()?
            .strip_prefix("Bearer ")?;
        let mut parts = token.split('.');
        let (h, p, s) = (parts.next()?, parts.next()?, parts.next()?);
        let header: serde_json::Value = serde_json::from_slice(&B64.decode(h).ok()?).ok()?;
        if header["alg"] != "ES256" {
            return None;
        }
        let sig = B64.decode(s).ok()?;
        UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &c.public)
            .verify(&token.as_bytes()[..h.len() + 1 + p.len()], &sig)
            .ok()?;
        let claims: serde_json::Value = serde_json::from_slice(&B64.decode(p).ok()?).ok()?;
        (claims["exp"].as_i64()? > unix_now()).then_some(())
    })();
    match verified {
        Some(()) => StatusCode::OK,
        None => StatusCode::UNAUTHORIZED,
    }
}

/// The bare gRPC Check: allows any request that carries a bearer token.
struct BareAuthz;

#[tonic::async_trait]
impl Authorization for BareAuthz {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let ok = request
            .get_ref()
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref())
            .and_then(|h| h.headers.get("authorization"))
            .is_some_and(|v| v.starts_with("Bearer "));
        Ok(tonic::Response::new(CheckResponse {
            status: Some(RpcStatus {
                code: if ok { 0 } else { 16 },
                ..Default::default()
            }),
            ..Default::default()
        }))
    }
}

fn ceiling_server(port: u16, grpc_port: u16) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| anyhow!("keygen"))?;
        let key = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8.as_ref(),
            &rng,
        )
        .map_err(|_| anyhow!("key"))?;
        let state = Arc::new(Ceiling {
            public: key.public_key().as_ref().to_vec(),
            key,
            rng,
            iss: format!("http://127.0.0.1:{port}/issuers/service"),
            kid: B64
                .encode(&ring::digest::digest(&ring::digest::SHA256, b"ceiling").as_ref()[..16]),
            client_id: uuid::Uuid::new_v4().to_string(),
        });
        let app = Router::new()
            .route("/json", get(ceiling_json))
            .route("/mint", post(ceiling_mint))
            .route("/verify", get(ceiling_verify))
            .with_state(state);
        let grpc = tokio::net::TcpListener::bind(("127.0.0.1", grpc_port)).await?;
        tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(AuthorizationServer::new(BareAuthz))
                .serve_with_incoming(
                    tonic::transport::server::TcpIncoming::from(grpc).with_nodelay(Some(true)),
                )
                .await;
            if let Err(e) = served {
                eprintln!("ceiling gRPC server: {e}");
                std::process::exit(1);
            }
        });
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        axum::serve(listener, app).await?;
        Ok(())
    })
}

// ------------------------------------------------------------------- main

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--ceiling-server") {
        let port = |j: usize| -> u16 {
            args.get(j)
                .and_then(|p| p.parse().ok())
                .expect("--ceiling-server HTTP_PORT GRPC_PORT")
        };
        if let Err(e) = ceiling_server(port(i + 1), port(i + 2)) {
            eprintln!("ceiling server: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    let opts = match parse_opts(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bench: {e:#}");
            std::process::exit(2);
        }
    };

    // Watchdog: the whole run is bounded even if something hangs.
    let per = opts.warmup + opts.seconds + REQUEST_TIMEOUT.as_secs_f64() + 5.0;
    let quiet_wait: f64 = env_or("BENCH_QUIET_WAIT", 60.0).unwrap_or(60.0);
    // 13 scenarios, the untimed minting and signing, and the retries.
    let standard = if opts.only == Only::Credentials {
        0.0
    } else {
        180.0 + quiet_wait + 14.0 * per + 2.0 * MINT_BUDGET.as_secs_f64() + retry_budget(&opts)
    };
    // The AWS rows: two server starts, five rows, their retries.
    let credentials = if opts.only == Only::Standard || opts.moto_url.is_none() {
        0.0
    } else {
        180.0 + quiet_wait + 6.0 * per + retry_budget(&opts)
    };
    let per_store = standard + credentials;
    let budget = Duration::from_secs_f64(per_store * opts.stores.len() as f64);
    std::thread::spawn(move || {
        std::thread::sleep(budget);
        eprintln!("bench: watchdog: the run took longer than {budget:?}; stopping");
        kill_all_children();
        std::process::exit(3);
    });

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let code = rt.block_on(async {
        tokio::spawn(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("signal");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
            eprintln!("bench: interrupted; stopping the servers");
            kill_all_children();
            std::process::exit(130);
        });
        let mut code = 0;
        for store in opts.stores.clone() {
            let opts = Opts {
                store,
                ..opts.clone()
            };
            let started = Instant::now();
            if opts.only != Only::Standard {
                if opts.moto_url.is_none() {
                    eprintln!("bench: no moto URL (--moto-url, BENCH_MOTO_URL): skipping the AWS credential rows");
                }
            }
            if opts.only != Only::Standard && opts.moto_url.is_some() {
                match run_credentials(opts.clone()).await {
                    Ok(r) => {
                        let md = report_credentials(&opts, &r);
                        println!("\n{md}");
                        if let Some(dir) = &opts.results_dir {
                            let out = dir.join(format!("{}-credentials.md", store.name()));
                            let _ = std::fs::create_dir_all(dir);
                            match std::fs::write(&out, &md) {
                                Ok(()) => eprintln!("bench: wrote {}", out.display()),
                                Err(e) => {
                                    eprintln!("bench: cannot write {}: {e}", out.display());
                                    code = 1;
                                }
                            }
                        }
                    }
                    Err(e) => {
                        eprintln!("bench: {} AWS credential rows failed: {e:#}", store.name());
                        code = 1;
                    }
                }
            }
            if opts.only == Only::Credentials {
                continue;
            }
            match run(opts.clone()).await {
                Ok(results) => {
                    let md = report(&opts, &results);
                    println!("\n{md}");
                    if let Some(out) = opts.out() {
                        if let Some(parent) = out.parent() {
                            let _ = std::fs::create_dir_all(parent);
                        }
                        match std::fs::write(&out, &md) {
                            Ok(()) => eprintln!("bench: wrote {}", out.display()),
                            Err(e) => {
                                eprintln!("bench: cannot write {}: {e}", out.display());
                                code = 1;
                            }
                        }
                    }
                    eprintln!(
                        "bench: {} done in {:.0} s",
                        store.name(),
                        started.elapsed().as_secs_f64()
                    );
                }
                Err(e) => {
                    eprintln!("bench: {} failed: {e:#}", store.name());
                    code = 1;
                }
            }
        }
        code
    });
    drop(rt);
    std::process::exit(code);
}

// ------------------------------------------------ AWS credential exchanges

const AWS_DATASET: &str = "sales.orders";
const AWS_PURPOSE: &str = "analytics";
const AWS_ROLE: &str = "tessera-bench";
const AWS_CREDENTIALS_TYPE: &str = "urn:tessera:params:oauth:token-type:aws-credentials";

struct CredResults {
    bare: Stats,
    no_reuse: Stats,
    reuse: Stats,
    reuse_full: Stats,
    bare_after: Stats,
    role_arn: String,
    notes: Vec<String>,
    quiet: (f64, f64),
}

fn moto_addr(url: &str) -> anyhow::Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    let u = url::Url::parse(url).with_context(|| format!("moto URL {url:?}"))?;
    let host = u
        .host_str()
        .ok_or_else(|| anyhow!("moto URL {url:?} has no host"))?;
    let port = u.port_or_known_default().unwrap_or(80);
    (host, port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| anyhow!("moto URL {url:?} does not resolve"))
}

/// moto routes by the SigV4 credential scope; it checks no signature.
fn moto_auth(service: &str) -> String {
    format!("AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/{service}/aws4_request, SignedHeaders=host, Signature=0")
}

fn form_of(pairs: &[(String, String)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// The bare AssumeRole, with the fields Tessera sends for user-0000.
fn assume_role_form(role_arn: &str) -> anyhow::Result<String> {
    use tessera::aws::session;
    let user = "user-0000";
    let scope = session::DatasetScope {
        partition: "aws".into(),
        region: "us-east-1".into(),
        account: "123456789012".into(),
        glue_database: "sales".into(),
        glue_table: Some("orders".into()),
        s3_prefix: "s3://lake/sales/orders/".into(),
    };
    let policy = session::session_policy(&scope, tessera::store::Permission::Read)
        .map_err(|e| anyhow!("session policy: {e}"))?;
    let mut f: Vec<(String, String)> = [
        ("Action", "AssumeRole".to_string()),
        ("Version", "2011-06-15".to_string()),
        ("RoleArn", role_arn.to_string()),
        ("RoleSessionName", session::session_name(user)),
        ("SourceIdentity", session::source_identity(user)),
        ("DurationSeconds", "3600".to_string()),
        ("Policy", policy),
    ]
    .map(|(k, v)| (k.to_string(), v))
    .to_vec();
    let product = uuid::Uuid::new_v4().to_string();
    let values = [user, &product, "acme", AWS_DATASET, AWS_PURPOSE, "read"];
    let keys = [
        "tessera-user",
        "tessera-service",
        "tessera-tenant",
        "tessera-dataset",
        "tessera-purpose",
        "tessera-permission",
    ];
    for (i, (k, v)) in keys.iter().zip(values).enumerate() {
        f.push((format!("Tags.member.{}.Key", i + 1), k.to_string()));
        f.push((
            format!("Tags.member.{}.Value", i + 1),
            session::tag_value(v),
        ));
        f.push((format!("TransitiveTagKeys.member.{}", i + 1), k.to_string()));
    }
    Ok(form_of(&f))
}

fn aws_exchange_form(id_token: &str) -> String {
    let enc = |s: &str| s.replace(':', "%3A");
    format!(
        "grant_type={}&subject_token={id_token}&subject_token_type={}&requested_token_type={}&resource={}&scope=read&purpose={AWS_PURPOSE}",
        enc(EXCHANGE_GRANT),
        enc(ID_TOKEN_TYPE),
        enc(AWS_CREDENTIALS_TYPE),
        enc(&format!("urn:tessera:dataset:{AWS_DATASET}")),
    )
}

fn expect_body(needle: &'static [u8]) -> CheckFn {
    Arc::new(move |status, _, body| {
        if status == StatusCode::OK && find(body, needle).is_some() {
            Ok(None)
        } else {
            Err(describe(status, body))
        }
    })
}

/// Creates the bench role in moto (or finds it there); its ARN.
async fn moto_role(moto: SocketAddr) -> anyhow::Result<String> {
    let trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::123456789012:root"},"Action":["sts:AssumeRole","sts:TagSession","sts:SetSourceIdentity"]}]}"#;
    let body = form_of(
        &[
            ("Action", "CreateRole"),
            ("Version", "2010-05-08"),
            ("RoleName", AWS_ROLE),
            ("AssumeRolePolicyDocument", trust),
            ("MaxSessionDuration", "43200"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let tpl = Template::new(Method::POST, moto, "/")
        .header(header::AUTHORIZATION, &moto_auth("iam"))
        .form(body);
    let (s, _, body) = http_once(moto, tpl.build()).await?;
    let arn = format!("arn:aws:iam::123456789012:role/{AWS_ROLE}");
    if !(s.is_success() && find(&body, arn.as_bytes()).is_some())
        && find(&body, b"EntityAlreadyExists").is_none()
    {
        bail!("moto CreateRole: {}", describe(s, &body));
    }
    Ok(arn)
}

/// Registers the dataset, the person's grant and the product's dataset
/// delegation, then checks two exchanges: distinct keys without reuse, the
/// same keys with it.
async fn aws_register(
    t: &Tessera,
    dir: &Path,
    role_arn: &str,
    reuse: bool,
    id_token: &str,
) -> anyhow::Result<Template> {
    let cli_ok = |args: &[&str]| -> anyhow::Result<()> {
        let out = tessera_command(&t.env, dir)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| args.join(" "))?;
        if !out.status.success() {
            bail!(
                "tessera {} failed: {}",
                args[..2].join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    };
    cli_ok(&[
        "dataset",
        "create",
        AWS_DATASET,
        "--tenant",
        "acme",
        "--role-arn",
        role_arn,
        "--glue-database",
        "sales",
        "--glue-table",
        "orders",
        "--s3-prefix",
        "s3://lake/sales/orders/",
        "--permission",
        "read",
        "--purpose",
        AWS_PURPOSE,
        "--max-duration",
        "1h",
    ])?;
    cli_ok(&[
        "grant",
        "add",
        "--dataset",
        AWS_DATASET,
        "--user",
        "user-0000",
        "--permission",
        "read",
        "--purpose",
        AWS_PURPOSE,
    ])?;
    cli_ok(&[
        "delegation",
        "add",
        "--client",
        &t.product_id,
        "--dataset",
        AWS_DATASET,
        "--permission",
        "read",
    ])?;
    let tpl = Template::new(Method::POST, t.http, "/oauth2/token")
        .header(
            header::AUTHORIZATION,
            &basic(&t.product_id, &t.product_secret),
        )
        .form(aws_exchange_form(id_token));
    let mut keys = Vec::new();
    for _ in 0..2 {
        let (s, _, body) = http_once(t.http, tpl.build()).await?;
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let ok = s == StatusCode::OK
            && v["issued_token_type"] == AWS_CREDENTIALS_TYPE
            && v["access_key_id"].is_string()
            && v["assumed_role_arn"]
                .as_str()
                .is_some_and(|a| a.contains(AWS_ROLE));
        if !ok {
            bail!("AWS credential exchange preflight: {}", describe(s, &body));
        }
        keys.push(v["access_key_id"].as_str().unwrap_or("").to_string());
    }
    if reuse != (keys[0] == keys[1]) {
        bail!(
            "credential reuse {}: two exchanges gave access keys {keys:?}",
            if reuse { "on" } else { "off" }
        );
    }
    eprintln!(
        "bench: AWS credential exchange preflight ok (reuse {}: keys {keys:?})",
        if reuse { "on" } else { "off" }
    );
    Ok(tpl)
}

async fn run_credentials(opts: Opts) -> anyhow::Result<CredResults> {
    let moto_url = opts
        .moto_url
        .clone()
        .ok_or_else(|| anyhow!("no moto URL"))?;
    let moto = moto_addr(&moto_url)?;
    let dir = tempfile::Builder::new()
        .prefix("tessera-bench-aws-")
        .tempdir()?;
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let schemas: Vec<String> = ["off", "on"]
        .iter()
        .map(|r| format!("bench_aws_{r}_{}_{stamp}", std::process::id()))
        .collect();
    let pg = opts.store == StoreKind::Postgres;
    let quiet = wait_quiet(Duration::from_secs_f64(env_or("BENCH_QUIET_WAIT", 60.0)?)).await;
    let sts_bench = Bench {
        opts: Opts {
            concurrency: opts.aws_concurrency,
            ..opts.clone()
        },
        moto: true,
        retry_left: Cell::new(Duration::from_secs_f64(retry_budget(&opts))),
    };
    let full_bench = Bench {
        opts: opts.clone(),
        moto: true,
        retry_left: Cell::new(Duration::ZERO),
    };
    let role_arn = moto_role(moto).await?;
    eprintln!(
        "bench: AWS rows against moto {moto_url}, role {role_arn}, store {}, {} connections for the STS-bound rows",
        opts.store.name(),
        opts.aws_concurrency
    );
    let idp = start_idp().await?;
    let id_token = idp.signer.id_token(0, unix_now());

    let assume_tpl = Template::new(Method::POST, moto, "/")
        .header(header::AUTHORIZATION, &moto_auth("sts"))
        .form(assume_role_form(&role_arn)?);
    let (s, _, body) = http_once(moto, assume_tpl.build()).await?;
    if s != StatusCode::OK || find(&body, b"<AccessKeyId>").is_none() {
        bail!("bare AssumeRole preflight: {}", describe(s, &body));
    }
    let moto_pid = 0; // the "server" column of the bare rows is moto's own column
    let bare_row = |name: &'static str| {
        let tpl = assume_tpl.clone();
        let b = &sts_bench;
        async move {
            b.measure(|| {
                b.http(
                    name,
                    moto,
                    moto_pid,
                    b.phase(),
                    fixed(tpl.clone()),
                    expect_body(b"<AccessKeyId>"),
                )
            })
            .await
            .0
        }
    };
    let bare = bare_row("bare STS AssumeRole (moto)").await;

    let mut rows = Vec::new();
    for (i, reuse) in [false, true].into_iter().enumerate() {
        let sub = dir
            .path()
            .join(if reuse { "reuse-on" } else { "reuse-off" });
        std::fs::create_dir_all(&sub)?;
        let schema = pg.then(|| schemas[i].as_str());
        let aws = AwsSetup {
            moto_url: &moto_url,
            reuse_margin: if reuse { "5m" } else { "0s" },
        };
        let mut t = start_tessera(&opts, &sub, schema, idp.issuer(), Some(&aws)).await?;
        let result = async {
            let tpl = aws_register(&t, &sub, &role_arn, reuse, &id_token).await?;
            let tpid = t.guard.pid();
            let check = expect_body(br#""access_key_id":""#);
            let name = if reuse {
                "AWS exchange, reuse on (5m)"
            } else {
                "AWS exchange, reuse off (0s)"
            };
            let (s, _) = sts_bench
                .measure(|| {
                    sts_bench.http(
                        name,
                        t.http,
                        tpid,
                        sts_bench.phase(),
                        fixed(tpl.clone()),
                        check.clone(),
                    )
                })
                .await;
            let mut out = vec![s];
            if reuse {
                let (s, _) = full_bench
                    .http(
                        "AWS exchange, reuse on (5m), full concurrency",
                        t.http,
                        tpid,
                        full_bench.phase(),
                        fixed(tpl.clone()),
                        check.clone(),
                    )
                    .await;
                out.push(s);
            }
            Ok::<_, anyhow::Error>(out)
        }
        .await;
        if result.is_err() || t.guard.exited().is_some() {
            eprintln!("bench: tessera log (tail):\n{}", t.guard.log_tail());
        }
        drop(t);
        rows.push(result);
    }
    let bare_after = bare_row("bare STS AssumeRole (moto), again after").await;
    drop(idp);
    if pg && std::env::var("BENCH_KEEP_SCHEMA").is_err() {
        for schema in &schemas {
            if let Err(e) = drop_schema(&opts.pg_url, schema).await {
                eprintln!("bench: could not drop schema {schema}: {e:#}");
            }
        }
    }
    let mut rows = rows.into_iter();
    let no_reuse = rows.next().expect("row")?.remove(0);
    let mut on = rows.next().expect("row")?;
    let reuse_full = on.pop().expect("row");
    let reuse = on.pop().expect("row");
    Ok(CredResults {
        bare,
        no_reuse,
        reuse,
        reuse_full,
        bare_after,
        role_arn,
        notes: vec![format!(
            "moto at {moto_url}; role {AWS_ROLE} created there with IAM CreateRole (or found)"
        )],
        quiet,
    })
}

fn report_credentials(opts: &Opts, r: &CredResults) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Tessera load benchmark: AWS credential exchanges, {}\n",
        opts.store.name()
    );
    let _ = writeln!(
        md,
        "- when: {} · commit {}",
        humantime::format_rfc3339_seconds(SystemTime::now()),
        git_describe()
    );
    let _ = writeln!(
        md,
        "- machine: nproc = {} ({}); the load generator, Tessera, moto{} share these CPUs",
        nproc(),
        cpu_model(),
        if opts.store == StoreKind::Postgres {
            " and Postgres"
        } else {
            ""
        }
    );
    let (busy, waited) = r.quiet;
    let _ = writeln!(
        md,
        "- machine load just before the run: {busy:.0}% of one core busy{}",
        if waited >= 1.5 {
            format!(" (after waiting {waited:.0} s)")
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        md,
        "- STS: moto (single-threaded Python AWS emulator) on 127.0.0.1, role `{}`; Tessera `[aws] endpoint_url` = moto, region us-east-1, sts_timeout 10s; {} s measured per row after {} s warm-up; command: `benches/run.sh --only credentials` (`cargo bench --bench load -- --only credentials --store {} --seconds {} --aws-concurrency {} --concurrency {}`)",
        r.role_arn,
        opts.seconds,
        opts.warmup,
        opts.stores_arg(),
        opts.seconds,
        opts.aws_concurrency,
        opts.concurrency
    );
    let _ = writeln!(
        md,
        "- request: the product's token exchange of one person's ID token (user-0000, always the same token) for `aws-credentials` on `urn:tessera:dataset:{AWS_DATASET}`, scope read, purpose {AWS_PURPOSE}; success = 200 with `access_key_id`. Bare AssumeRole: a raw query-protocol POST to moto with the fields Tessera sends (role, session name, source identity, 6 transitive session tags, the session policy, 3600 s); success = 200 with `<AccessKeyId>`\n"
    );
    let _ = writeln!(
        md,
        "| scenario | connections | req/s | p50 ms | p99 ms | errors | Tessera adds (p50 / p99 ms, vs bare AssumeRole) |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---|");
    let rows: [(&Stats, usize, bool); 5] = [
        (&r.bare, opts.aws_concurrency, false),
        (&r.no_reuse, opts.aws_concurrency, true),
        (&r.reuse, opts.aws_concurrency, true),
        (&r.reuse_full, opts.concurrency, false),
        (&r.bare_after, opts.aws_concurrency, false),
    ];
    for (s, conns, vs) in &rows {
        let added = if *vs {
            format!(
                "{:+.2} / {:+.2}",
                s.p50_ms - r.bare.p50_ms,
                s.p99_ms - r.bare.p99_ms
            )
        } else {
            "—".into()
        };
        let _ = writeln!(
            md,
            "| {} | {conns} | {:.0} | {:.2} | {:.2} | {} | {added} |",
            s.name,
            s.rps(),
            s.p50_ms,
            s.p99_ms,
            s.errors
        );
    }
    let pg = opts.store == StoreKind::Postgres;
    let _ = writeln!(
        md,
        "\nCPU during each measured window, in % of one core (nproc = {}). \"Tessera\" is 0 on the bare rows (no Tessera in the path){}:\n",
        nproc(),
        if pg { "" } else { "; SQLite runs inside Tessera" }
    );
    let _ = writeln!(
        md,
        "| scenario | Tessera CPU % | Tessera µs/req | moto CPU % | moto µs/req |{} generator CPU % | other CPU % |",
        if pg { " Postgres CPU % |" } else { "" }
    );
    let _ = writeln!(
        md,
        "|---|---:|---:|---:|---:|{}---:|---:|",
        if pg { "---:|" } else { "" }
    );
    for (s, _, _) in &rows {
        let per = |pct: f64| {
            if s.ok == 0 {
                0.0
            } else {
                pct / 100.0 * s.secs / s.ok as f64 * 1e6
            }
        };
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} |{} {:.0} | {:.0} |",
            s.name,
            s.server_cpu,
            per(s.server_cpu),
            s.moto_cpu,
            per(s.moto_cpu),
            if pg {
                format!(" {:.0} |", s.db_cpu)
            } else {
                String::new()
            },
            s.gen_cpu,
            s.other_cpu
        );
    }
    let _ = writeln!(md, "\nNotes:\n");
    for n in &r.notes {
        let _ = writeln!(md, "- {n}.");
    }
    for (s, _, _) in &rows {
        if let Some(n) = &s.note {
            let _ = writeln!(md, "- {}: {n}.", s.name);
        }
        if s.errors > 0 || s.warmup_errors > 0 {
            let _ = writeln!(
                md,
                "- {}: {} errors ({} during warm-up); first: `{}`",
                s.name,
                s.errors,
                s.warmup_errors,
                s.first_error.as_deref().unwrap_or("-").replace('`', "'")
            );
        }
    }
    md
}
