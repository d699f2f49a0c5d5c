//! The public keys of one trusted issuer, fetched and cached so that a slow
//! or failing IdP never makes a request wait longer than `fetch_timeout`
//! and never lets anything through:
//!
//! - keys live for the JWKS response's `Cache-Control: max-age` (or
//!   `cache_ttl`), are refreshed in the background once that has passed,
//!   and keep serving for `max_staleness` beyond it while fetches fail;
//! - at most one fetch per issuer is in flight; concurrent requests that
//!   need keys wait for it (bounded) instead of starting their own;
//! - a token with an unknown `kid` triggers at most one refresh per
//!   `refresh_min_interval` (key rotation at the IdP), never one per request;
//! - every fetch is bounded by `fetch_timeout`, responses are capped in
//!   size, and garbage leaves the cached keys as they were;
//! - keys come over https only (plain http to loopback alone), redirects
//!   and a discovered `jwks_uri` included.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use serde::Deserialize;

use crate::clock::Clock;
use crate::config::{JwksSource, TrustedIssuerConfig};
use crate::jose::{Alg, JwkSet, VerifyingKey};

/// Largest discovery document or JWKS accepted.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// Upper bound on any cache lifetime an IdP asks for.
const MAX_TTL_MS: i64 = 24 * 3600 * 1000;

#[derive(Debug, Default, Clone)]
struct KeyState {
    keys: Arc<Vec<VerifyingKey>>,
    /// `None` until a fetch has succeeded.
    fetched_at: Option<i64>,
    /// Unix ms after which a refresh is due.
    fresh_until: i64,
    last_attempt: Option<i64>,
    /// Counts attempts, so a waiter can tell that another fetch ran.
    attempts: u64,
    /// `kid`s and key material of the current set, to notice a change.
    fingerprint: String,
    last_error: Option<String>,
}

/// Snapshot for health reporting.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyStatus {
    pub keys: usize,
    pub fetched_at_ms: Option<i64>,
    pub fresh_until_ms: i64,
    pub usable: bool,
    pub last_error: Option<String>,
}

/// Why no key could be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    /// The keys are current and none matches.
    Unknown,
    /// No usable key set: never fetched, or stale beyond `max_staleness`.
    Unavailable,
}

pub struct KeyCache {
    config: TrustedIssuerConfig,
    http: reqwest::Client,
    state: RwLock<KeyState>,
    refresh: tokio::sync::Mutex<()>,
    /// Shared with the verified-token cache: bumped when a key set changes.
    generation: Arc<AtomicU64>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache")
            .field("issuer", &self.config.issuer)
            .finish()
    }
}

fn ms(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

impl KeyCache {
    pub fn new(
        config: TrustedIssuerConfig,
        generation: Arc<AtomicU64>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(config.fetch_timeout)
            .timeout(config.fetch_timeout)
            // Redirects are followed only to where keys may come from, so an
            // https JWKS cannot be sent on to plain http.
            .redirect(reqwest::redirect::Policy::custom(|attempt| {
                if attempt.previous().len() >= 3 || !crate::config::fetchable(attempt.url()) {
                    attempt.stop()
                } else {
                    attempt.follow()
                }
            }))
            .user_agent(concat!("tessera/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("HTTP client builds");
        Self {
            config,
            http,
            state: RwLock::new(KeyState::default()),
            refresh: tokio::sync::Mutex::new(()),
            generation,
            clock,
        }
    }

    fn usable(&self, st: &KeyState, now: i64) -> bool {
        st.fetched_at.is_some()
            && now < st.fresh_until.saturating_add(ms(self.config.max_staleness))
    }

    fn may_attempt(&self, st: &KeyState, now: i64) -> bool {
        st.last_attempt
            .is_none_or(|t| now - t >= ms(self.config.refresh_min_interval))
    }

    pub fn status(&self, now: i64) -> KeyStatus {
        let st = self.state.read();
        KeyStatus {
            keys: st.keys.len(),
            fetched_at_ms: st.fetched_at,
            fresh_until_ms: st.fresh_until,
            usable: self.usable(&st, now),
            last_error: st.last_error.clone(),
        }
    }

    /// Whether the cached keys may still be used at `now` (Unix ms).
    pub fn is_usable(&self, now: i64) -> bool {
        self.usable(&self.state.read(), now)
    }

    /// Whether a background refresh is due (never fetched, or past fresh).
    pub fn refresh_due(&self, now: i64) -> bool {
        let st = self.state.read();
        st.fetched_at.is_none() || now >= st.fresh_until
    }

    fn candidates(keys: &[VerifyingKey], kid: Option<&str>, alg: Alg) -> Vec<VerifyingKey> {
        keys.iter()
            .filter(|k| k.alg == alg && (kid.is_none() || k.kid.as_deref() == kid))
            .cloned()
            .collect()
    }

    fn now(&self) -> i64 {
        self.clock.now_millis()
    }

    /// Keys that may have signed a token with this `kid` and `alg`. Waits
    /// for a fetch only when needed, and never past `fetch_timeout`.
    pub async fn keys_for(
        self: &Arc<Self>,
        kid: Option<&str>,
        alg: Alg,
    ) -> Result<Vec<VerifyingKey>, KeyError> {
        let deadline = tokio::time::Instant::now() + self.config.fetch_timeout;
        let st = self.state.read().clone();
        let t = self.now();
        if self.usable(&st, t) {
            if t >= st.fresh_until {
                self.spawn_refresh();
            }
            let found = Self::candidates(&st.keys, kid, alg);
            if !found.is_empty() {
                return Ok(found);
            }
            // A key we have not seen: perhaps the IdP rotated. One refresh
            // (rate-limited inside; a fetch already running is waited for),
            // then the answer stands.
            self.refresh_until(deadline, st.attempts).await;
            let st = self.state.read().clone();
            let found = Self::candidates(&st.keys, kid, alg);
            if !found.is_empty() && self.usable(&st, self.now()) {
                return Ok(found);
            }
            return Err(KeyError::Unknown);
        }
        // No usable keys: fetch (or wait for the fetch in flight), unless
        // the rate limit says a fetch failed moments ago; then fail fast.
        self.refresh_until(deadline, st.attempts).await;
        let st = self.state.read().clone();
        if !self.usable(&st, self.now()) {
            return Err(KeyError::Unavailable);
        }
        let found = Self::candidates(&st.keys, kid, alg);
        if found.is_empty() {
            Err(KeyError::Unknown)
        } else {
            Ok(found)
        }
    }

    /// Starts a refresh in the background unless one is running.
    fn spawn_refresh(self: &Arc<Self>) {
        if self.refresh.try_lock().is_err() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move { this.refresh().await });
    }

    /// One refresh bounded by `fetch_timeout` (the background loop's call).
    pub async fn refresh(&self) {
        let deadline = tokio::time::Instant::now() + self.config.fetch_timeout;
        let seen = self.state.read().attempts;
        self.refresh_until(deadline, seen).await;
    }

    /// Refreshes once, unless another caller has attempted one since
    /// `seen` or the rate limit forbids it. Holding the lock while fetching
    /// makes callers that arrive during a fetch wait for it. Returns by
    /// `deadline`.
    async fn refresh_until(&self, deadline: tokio::time::Instant, seen: u64) {
        let Ok(_guard) = tokio::time::timeout_at(deadline, self.refresh.lock()).await else {
            return;
        };
        {
            let st = self.state.read();
            if st.attempts != seen || !self.may_attempt(&st, self.now()) {
                return;
            }
        }
        {
            let mut st = self.state.write();
            st.attempts += 1;
            st.last_attempt = Some(self.now());
        }
        let result = match tokio::time::timeout_at(deadline, self.fetch()).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {:?}", self.config.fetch_timeout)),
        };
        let t = self.now();
        match result {
            Ok((keys, fingerprint, ttl_ms)) => {
                let mut st = self.state.write();
                if st.fingerprint != fingerprint {
                    self.generation.fetch_add(1, Ordering::SeqCst);
                    if st.fetched_at.is_some() {
                        tracing::info!(issuer = %self.config.name, keys = keys.len(), "trusted issuer keys changed");
                    }
                }
                st.keys = Arc::new(keys);
                st.fingerprint = fingerprint;
                st.fetched_at = Some(t);
                st.fresh_until = t + ttl_ms;
                st.last_error = None;
            }
            Err(e) => {
                tracing::warn!(issuer = %self.config.name, error = %e, "fetching trusted issuer keys failed; keeping the keys already cached");
                self.state.write().last_error = Some(e);
            }
        }
    }

    /// One fetch of the key set: `(keys, fingerprint, ttl in ms)`.
    async fn fetch(&self) -> Result<(Vec<VerifyingKey>, String, i64), String> {
        let default_ttl = ms(self.config.cache_ttl);
        let (body, ttl) = match &self.config.jwks {
            JwksSource::File(path) => (
                tokio::fs::read(path)
                    .await
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
                default_ttl,
            ),
            JwksSource::Uri(uri) => self.get(uri).await?,
            JwksSource::Discovery => {
                #[derive(Deserialize)]
                struct Discovery {
                    issuer: String,
                    jwks_uri: String,
                }
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    self.config.issuer.trim_end_matches('/')
                );
                let (doc, _) = self.get(&url).await?;
                let doc: Discovery = serde_json::from_slice(&doc)
                    .map_err(|e| format!("discovery document is not valid: {e}"))?;
                // OpenID Connect Discovery §4.3: the document must be the issuer's own.
                if doc.issuer != self.config.issuer {
                    return Err(format!(
                        "discovery document names issuer {:?}, not {:?}",
                        doc.issuer, self.config.issuer
                    ));
                }
                // The same rule as a configured jwks_uri: https, or http
                // on loopback only.
                match url::Url::parse(&doc.jwks_uri) {
                    Ok(u) if crate::config::fetchable(&u) => {}
                    _ => {
                        return Err(
                            "discovery document's jwks_uri is not https (or http on loopback)"
                                .into(),
                        )
                    }
                }
                self.get(&doc.jwks_uri).await?
            }
        };
        let set: JwkSet =
            serde_json::from_slice(&body).map_err(|e| format!("JWKS is not valid: {e}"))?;
        let mut keys = Vec::new();
        let mut fingerprint = Vec::new();
        for jwk in &set.keys {
            // Encryption keys and unsupported types are skipped, not fatal.
            if let Ok(k) = VerifyingKey::from_jwk(jwk) {
                if self.config.algorithms.contains(&k.alg) {
                    fingerprint.push(serde_json::to_string(jwk).unwrap_or_default());
                    keys.push(k);
                }
            }
        }
        if keys.is_empty() {
            return Err("JWKS holds no usable signing key".into());
        }
        fingerprint.sort();
        let floor = ms(self.config.refresh_min_interval);
        Ok((
            keys,
            fingerprint.join("\n"),
            ttl.clamp(floor, MAX_TTL_MS.max(floor)),
        ))
    }

    /// GET with a size cap; returns the body and its cache lifetime.
    async fn get(&self, url: &str) -> Result<(Vec<u8>, i64), String> {
        let mut resp = self
            .http
            .get(url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| format!("GET {url}: {}", error_chain(&e)))?;
        if !resp.status().is_success() {
            return Err(format!("GET {url}: status {}", resp.status()));
        }
        let ttl = resp
            .headers()
            .get(reqwest::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(max_age)
            .map_or(ms(self.config.cache_ttl), |secs| secs.saturating_mul(1000));
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("GET {url}: {}", error_chain(&e)))?
        {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(format!(
                    "GET {url}: response larger than {MAX_RESPONSE_BYTES} bytes"
                ));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, ttl))
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// `Cache-Control` lifetime in seconds: `max-age`, or 0 for `no-store` /
/// `no-cache` (the caller raises it to the refresh floor).
pub fn max_age(header: &str) -> Option<i64> {
    let mut found = None;
    for directive in header.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return Some(0);
        }
        if let Some(v) = lower.strip_prefix("max-age=") {
            found = v.trim_matches('"').parse::<i64>().ok().filter(|n| *n >= 0);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::max_age;

    #[test]
    fn cache_control_lifetimes() {
        assert_eq!(max_age("public, max-age=300"), Some(300));
        assert_eq!(max_age("max-age=\"60\", must-revalidate"), Some(60));
        assert_eq!(max_age("no-store"), Some(0));
        assert_eq!(max_age("private"), None);
        assert_eq!(max_age("max-age=-1"), None);
    }
}
