//! The key cache of trusted upstream issuers (`src/trusted/keys.rs`), seen
//! from outside: where keys come from (discovery, `jwks_uri`, `jwks_file`),
//! how long they are kept, what a slow, failing or garbage-serving IdP does
//! to requests (bounded waits, 503 never 200), key rotation and the
//! unknown-`kid` rate limit, and algorithm confusion. Subject tokens go
//! through token exchange (and, once, directly through ext_authz).
//!
//! The cache's notion of "now" is the test's `FixedClock`: freshness, the
//! staleness bound and the refresh rate limit only move when a test calls
//! `t.clock.advance`. Fetch timeouts run on real time.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{ClientKey, Clock, Reply, TestApp};
use crate::idp::{merge, Mode, TestIdp};
use crate::token_exchange::{exchange, product, ID_TOKEN};

/// Generous upper bound for anything that should happen "soon".
const PATIENCE: Duration = Duration::from_secs(15);

/// A `[[trusted_issuers]]` entry "corp" (people) for `idp` with `extra`
/// lines; members of `analysts` hold `reports:read`.
fn corp(idp: &TestIdp, extra: &str) -> String {
    idp.config(
        "corp",
        "human",
        &format!("{extra}\n[trusted_issuers.group_scopes]\nanalysts = [\"reports:read\"]"),
    )
}

async fn start(idp: &TestIdp, extra: &str) -> TestApp {
    TestApp::builder().config(&corp(idp, extra)).start().await
}

/// ID-token claims from `iss` for `sub`, on the server's clock (so they stay
/// valid however far a test moves that clock).
fn claims_at(t: &TestApp, iss: &str, sub: &str) -> Value {
    let now = t.clock.now();
    json!({
        "iss": iss, "sub": sub, "aud": "tessera",
        "iat": now, "exp": now + 300,
        "jti": uuid::Uuid::new_v4().to_string(),
        "nonce": "n-0S6_WzA2Mj", "tenant": "acme",
        "groups": ["analysts"],
    })
}

/// An ID token signed with the IdP's current key.
fn user_token(idp: &TestIdp, t: &TestApp, sub: &str) -> String {
    idp.sign(&claims_at(t, &idp.issuer, sub))
}

/// An ID token in the IdP's name signed with a key it never published.
fn forged_token(idp: &TestIdp, t: &TestApp, kid: &str) -> String {
    ClientKey::es256(Some(kid)).sign(&claims_at(t, &idp.issuer, "mallory"))
}

/// A data product that may act for users on `api`.
async fn data_product(t: &TestApp) -> (String, String) {
    product(t, "api", &["reports:read"]).await
}

async fn swap(t: &TestApp, (id, secret): &(String, String), subject: &str) -> Reply {
    exchange(
        t,
        (id, secret),
        &[
            ("subject_token", subject),
            ("subject_token_type", ID_TOKEN),
            ("audience", "api"),
        ],
    )
    .await
}

#[track_caller]
fn assert_ok(r: &Reply) {
    assert_eq!(r.status, 200, "exchange should succeed: {}", r.text);
    assert!(r.body["access_token"].is_string(), "{}", r.text);
}

#[track_caller]
fn assert_invalid_grant(r: &Reply) {
    assert_eq!(r.status, 400, "expected invalid_grant: {}", r.text);
    assert_eq!(r.error(), "invalid_grant", "{}", r.text);
    assert!(r.body.get("access_token").is_none(), "{}", r.text);
}

#[track_caller]
fn assert_unavailable(r: &Reply) {
    assert_eq!(
        r.status, 503,
        "expected temporarily_unavailable: {}",
        r.text
    );
    assert_eq!(r.error(), "temporarily_unavailable", "{}", r.text);
    assert!(r.body.get("access_token").is_none(), "{}", r.text);
}

/// Exchanges fresh tokens until one succeeds (at most `PATIENCE`); every
/// refusal on the way must be a 503, never a verdict on the token.
async fn exchange_eventually(idp: &TestIdp, t: &TestApp, p: &(String, String)) -> Reply {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let r = swap(t, p, &user_token(idp, t, "alice")).await;
        if r.status == 200 {
            return r;
        }
        assert_unavailable(&r);
        assert!(
            Instant::now() < deadline,
            "no successful exchange within {PATIENCE:?}; last: {}",
            r.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The cache's view of issuer "corp".
fn key_status(t: &TestApp) -> tessera::trusted::keys::KeyStatus {
    t.app()
        .trusted
        .by_name("corp")
        .expect("corp is configured")
        .keys
        .status(t.clock.now_millis())
}

/// Waits until the cache has recorded a failed fetch.
async fn wait_for_fetch_error(t: &TestApp) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(e) = key_status(t).last_error {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "no failed fetch recorded within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------
// Where the keys come from

#[tokio::test]
async fn keys_are_found_through_the_discovery_document_then_its_jwks_uri() {
    let idp = TestIdp::start().await;
    let t = start(&idp, "").await;
    let p = data_product(&t).await;
    assert_ok(&swap(&t, &p, &user_token(&idp, &t, "alice")).await);
    assert!(idp.discovery_fetches() >= 1, "discovery was not read");
    assert!(idp.jwks_fetches() >= 1, "the JWKS was not read");
    let st = key_status(&t);
    assert_eq!(st.keys, 1);
    assert!(st.usable && st.last_error.is_none(), "{st:?}");
}

#[tokio::test]
async fn an_explicit_jwks_uri_skips_discovery() {
    let idp = TestIdp::start().await;
    let t = start(&idp, &format!("jwks_uri = \"{}/jwks\"", idp.issuer)).await;
    let p = data_product(&t).await;
    assert_ok(&swap(&t, &p, &user_token(&idp, &t, "alice")).await);
    assert!(idp.jwks_fetches() >= 1);
    assert_eq!(idp.discovery_fetches(), 0, "discovery must not be read");
}

#[tokio::test]
async fn a_static_jwks_file_works_while_the_idp_is_down() {
    let idp = TestIdp::start().await;
    let jwks = reqwest::get(format!("{}/jwks", idp.issuer))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    idp.set_mode(Mode::Down);
    let (jwks_before, discovery_before) = (idp.jwks_fetches(), idp.discovery_fetches());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("corp-jwks.json");
    std::fs::write(&file, jwks).unwrap();
    let t = start(
        &idp,
        &format!("jwks_file = {:?}", file.display().to_string()),
    )
    .await;
    let p = data_product(&t).await;
    assert_ok(&swap(&t, &p, &user_token(&idp, &t, "alice")).await);
    // A key the file does not hold is still refused.
    assert_invalid_grant(&swap(&t, &p, &forged_token(&idp, &t, "idp-1")).await);
    assert_eq!(
        idp.jwks_fetches(),
        jwks_before,
        "the IdP was asked for keys"
    );
    assert_eq!(idp.discovery_fetches(), discovery_before);
}

/// A stand-in issuer whose discovery document names someone else (the
/// real IdP) as issuer, while pointing at the real IdP's (valid) JWKS.
async fn impostor_discovery(real: &TestIdp) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let doc = json!({"issuer": real.issuer, "jwks_uri": format!("{}/jwks", real.issuer)});
    let router = axum::Router::new().route(
        "/.well-known/openid-configuration",
        axum::routing::get(move || {
            let doc = doc.clone();
            async move { axum::Json(doc) }
        }),
    );
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (base, task)
}

#[tokio::test]
async fn a_discovery_document_naming_a_different_issuer_is_refused() {
    let idp = TestIdp::start().await;
    let (impostor, task) = impostor_discovery(&idp).await;
    let t = TestApp::builder()
        .config(&format!(
            "[[trusted_issuers]]\nname = \"corp\"\nissuer = {impostor:?}\nkind = \"human\"\n\
             audiences = [\"tessera\"]\nfetch_timeout = \"1s\"\n\
             [trusted_issuers.group_scopes]\nanalysts = [\"reports:read\"]\n"
        ))
        .start()
        .await;
    let p = data_product(&t).await;
    // Signed by a key the document's jwks_uri really serves, in the name of
    // the configured issuer: only the issuer check stands in the way.
    let token = idp.sign(&claims_at(&t, &impostor, "alice"));
    let r = swap(&t, &p, &token).await;
    assert_unavailable(&r);
    let error = wait_for_fetch_error(&t).await;
    assert!(error.contains("names issuer"), "{error}");
    assert_eq!(
        idp.jwks_fetches(),
        0,
        "the jwks_uri of a foreign discovery document was fetched"
    );
    assert!(!key_status(&t).usable);
    task.abort();
}

#[tokio::test]
async fn a_discovered_jwks_uri_over_plain_http_off_loopback_is_not_fetched() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    // Its own issuer, but keys from a host anyone on the path could answer for.
    let doc = json!({"issuer": issuer, "jwks_uri": "http://keys.example.com/jwks"});
    let router = axum::Router::new().route(
        "/.well-known/openid-configuration",
        axum::routing::get(move || {
            let doc = doc.clone();
            async move { axum::Json(doc) }
        }),
    );
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    let t = TestApp::builder()
        .config(&format!(
            "[[trusted_issuers]]\nname = \"corp\"\nissuer = {issuer:?}\nkind = \"human\"\n\
             audiences = [\"tessera\"]\nfetch_timeout = \"1s\"\n"
        ))
        .start()
        .await;
    let p = data_product(&t).await;
    let token = ClientKey::es256(Some("k")).sign(&claims_at(&t, &issuer, "alice"));
    assert_unavailable(&swap(&t, &p, &token).await);
    let error = wait_for_fetch_error(&t).await;
    assert!(error.contains("not https"), "{error}");
    assert!(!key_status(&t).usable);
    task.abort();
}

// ---------------------------------------------------------------------------
// Caching

#[tokio::test]
async fn keys_are_cached_for_the_cache_control_max_age() {
    let idp = TestIdp::start().await;
    idp.set_cache_control(Some("public, max-age=300"));
    // A configured lifetime much shorter than the IdP's max-age: the
    // header must win.
    let t = start(&idp, "cache_ttl = \"10s\"\nrefresh_min_interval = \"1s\"").await;
    let p = data_product(&t).await;
    for _ in 0..10 {
        assert_ok(&swap(&t, &p, &user_token(&idp, &t, "alice")).await);
    }
    assert_eq!(idp.jwks_fetches(), 1);
    // Past cache_ttl, within max-age: still no fetch.
    t.clock.advance(200);
    for _ in 0..5 {
        assert_ok(&swap(&t, &p, &user_token(&idp, &t, "alice")).await);
    }
    // Give the once-a-second background refresher a chance to (wrongly) run.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        idp.jwks_fetches(),
        1,
        "keys refetched before max-age ran out"
    );
    assert_eq!(idp.discovery_fetches(), 1);

    // Past max-age: refreshed once more, without failing a request.
    t.clock.advance(120);
    let deadline = Instant::now() + PATIENCE;
    while idp.jwks_fetches() < 2 {
        assert_ok(&swap(&t, &p, &user_token(&idp, &t, "alice")).await);
        assert!(
            Instant::now() < deadline,
            "keys never refreshed after max-age"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_ok(&swap(&t, &p, &user_token(&idp, &t, "alice")).await);
    assert_eq!(idp.jwks_fetches(), 2);
}

// ---------------------------------------------------------------------------
// A slow, failing or garbage-serving IdP

#[tokio::test]
async fn a_slow_idp_without_cached_keys_answers_503_within_the_fetch_timeout_then_recovers() {
    let idp = TestIdp::start().await;
    idp.set_mode(Mode::Slow(Duration::from_secs(10)));
    let t = start(
        &idp,
        &format!(
            "jwks_uri = \"{}/jwks\"\nfetch_timeout = \"300ms\"\nrefresh_min_interval = \"200ms\"",
            idp.issuer
        ),
    )
    .await;
    let p = data_product(&t).await;
    // Let the request itself be allowed to fetch (the rate limit runs on
    // the server's clock).
    t.clock.advance(1);
    let fetches = idp.jwks_fetches();
    let started = Instant::now();
    let r = swap(&t, &p, &user_token(&idp, &t, "alice")).await;
    let took = started.elapsed();
    assert_unavailable(&r);
    assert!(
        took < Duration::from_secs(3),
        "waited {took:?} for an IdP that sleeps 10 s (fetch_timeout 300ms)"
    );
    assert!(idp.jwks_fetches() > fetches, "no fetch reached the IdP");

    // Several at once: each is bounded too, none gets through.
    t.clock.advance(1);
    let tokens: Vec<String> = (0..5).map(|_| user_token(&idp, &t, "alice")).collect();
    let started = Instant::now();
    let replies = futures_util::future::join_all(tokens.iter().map(|tok| swap(&t, &p, tok))).await;
    let took = started.elapsed();
    for r in &replies {
        assert_unavailable(r);
    }
    assert!(took < Duration::from_secs(3), "a burst waited {took:?}");

    // The IdP answers again: after refresh_min_interval an exchange works.
    idp.set_mode(Mode::Ok);
    t.clock.advance(1);
    assert_ok(&exchange_eventually(&idp, &t, &p).await);
}

#[tokio::test]
async fn a_slow_idp_does_not_delay_requests_while_cached_keys_are_being_refreshed() {
    let idp = TestIdp::start().await;
    let t = start(
        &idp,
        &format!(
            "jwks_uri = \"{}/jwks\"\ncache_ttl = \"1m\"\nfetch_timeout = \"2s\"\nrefresh_min_interval = \"1s\"",
            idp.issuer
        ),
    )
    .await;
    let p = data_product(&t).await;
    assert_ok(&swap(&t, &p, &user_token(&idp, &t, "alice")).await);
    idp.set_mode(Mode::Slow(Duration::from_secs(10)));
    t.clock.advance(120);
    // Keys are due for refresh and the IdP takes 10 s: requests are served
    // from the cache meanwhile, without waiting for the refresh.
    for _ in 0..3 {
        let started = Instant::now();
        assert_ok(&swap(&t, &p, &user_token(&idp, &t, "alice")).await);
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(1),
            "a cached-key request waited {took:?}"
        );
    }
}

#[tokio::test]
async fn an_idp_that_is_down_is_covered_by_cached_keys_up_to_max_staleness_then_503() {
    let idp = TestIdp::start().await;
    let t = start(
        &idp,
        "cache_ttl = \"1m\"\nmax_staleness = \"10m\"\nrefresh_min_interval = \"1s\"\nfetch_timeout = \"500ms\"",
    )
    .await;
    let p = data_product(&t).await;
    assert_ok(&swap(&t, &p, &user_token(&idp, &t, "alice")).await);
    idp.set_mode(Mode::Down);

    // Past cache_ttl, within max_staleness: the cached keys still serve,
    // although refreshing fails.
    t.clock.advance(2 * 60);
    assert_ok(&swap(&t, &p, &user_token(&idp, &t, "alice")).await);
    let error = wait_for_fetch_error(&t).await;
    assert!(error.contains("503"), "{error}");
    t.clock.advance(7 * 60);
    assert_ok(&swap(&t, &p, &user_token(&idp, &t, "alice")).await);
    // Unknown keys are still refused while stale, not waved through.
    assert_invalid_grant(&swap(&t, &p, &forged_token(&idp, &t, "idp-1")).await);

    // Past cache_ttl + max_staleness (1m + 10m): nothing passes, retryably.
    t.clock.advance(3 * 60);
    assert!(!key_status(&t).usable);
    for _ in 0..3 {
        assert_unavailable(&swap(&t, &p, &user_token(&idp, &t, "alice")).await);
    }
    // A forged token cannot be told apart now either: 503, never 200.
    assert_unavailable(&swap(&t, &p, &forged_token(&idp, &t, "idp-1")).await);

    // Back up: keys are fetched again and exchanges work.
    idp.set_mode(Mode::Ok);
    t.clock.advance(2);
    assert_ok(&exchange_eventually(&idp, &t, &p).await);
}

#[tokio::test]
async fn a_token_verified_earlier_is_not_accepted_once_keys_are_stale_beyond_max_staleness() {
    let idp = TestIdp::start().await;
    let t = start(
        &idp,
        "cache_ttl = \"1m\"\nmax_staleness = \"10m\"\nrefresh_min_interval = \"1s\"\nfetch_timeout = \"500ms\"",
    )
    .await;
    let p = data_product(&t).await;
    // A token valid for two hours, verified while the keys were fresh.
    let mut claims = claims_at(&t, &idp.issuer, "alice");
    merge(&mut claims, json!({"exp": t.clock.now() + 2 * 3600}));
    let token = idp.sign(&claims);
    assert_ok(&swap(&t, &p, &token).await);
    idp.set_mode(Mode::Down);
    // Keys now stale beyond max_staleness: the issuer's keys are unusable,
    // so the same token must not pass either (it is not expired).
    t.clock.advance(15 * 60);
    assert!(!key_status(&t).usable);
    assert_unavailable(&swap(&t, &p, &user_token(&idp, &t, "bob")).await);
    assert_unavailable(&swap(&t, &p, &token).await);
}

#[tokio::test]
async fn garbage_from_the_idp_keeps_the_cached_keys_and_does_not_admit_new_ones() {
    let idp = TestIdp::start().await;
    // The JWKS itself turns to garbage (no discovery in between).
    let t = start(
        &idp,
        &format!(
            "jwks_uri = \"{}/jwks\"\ncache_ttl = \"1m\"\nrefresh_min_interval = \"1s\"\nfetch_timeout = \"500ms\"",
            idp.issuer
        ),
    )
    .await;
    let p = data_product(&t).await;
    assert_ok(&swap(&t, &p, &user_token(&idp, &t, "alice")).await);
    idp.set_mode(Mode::Garbage);
    t.clock.advance(120);
    assert_ok(&swap(&t, &p, &user_token(&idp, &t, "alice")).await);
    let error = wait_for_fetch_error(&t).await;
    assert!(error.contains("JWKS is not valid"), "{error}");
    let st = key_status(&t);
    assert_eq!(st.keys, 1, "garbage replaced the cached keys: {error}");
    assert!(st.usable);
    assert_ok(&swap(&t, &p, &user_token(&idp, &t, "alice")).await);

    // The IdP rotates, but only serves garbage: the new key is unknown.
    idp.rotate("idp-2", false);
    t.clock.advance(2);
    let fetches = idp.jwks_fetches();
    let r = swap(&t, &p, &user_token(&idp, &t, "alice")).await;
    assert_invalid_grant(&r);
    assert!(
        idp.jwks_fetches() > fetches,
        "the unknown kid did not trigger a fetch"
    );
    assert_eq!(key_status(&t).keys, 1);
}

// ---------------------------------------------------------------------------
// Rotation and the unknown-kid rate limit

#[tokio::test]
async fn a_rotated_key_is_picked_up_with_one_fetch_and_a_burst_of_unknown_kids_with_at_most_two() {
    let idp = TestIdp::start().await;
    idp.set_cache_control(Some("max-age=300"));
    let t = start(&idp, "refresh_min_interval = \"1s\"").await;
    let p = data_product(&t).await;
    let old = user_token(&idp, &t, "alice");
    assert_ok(&swap(&t, &p, &old).await);
    let before = idp.jwks_fetches();
    assert_eq!(before, 1);

    idp.rotate("idp-2", false);
    t.clock.advance(2);
    let new = user_token(&idp, &t, "alice");
    assert_eq!(crate::harness::header_of(&new)["kid"], "idp-2");
    assert_ok(&swap(&t, &p, &new).await);
    assert_eq!(
        idp.jwks_fetches(),
        before + 1,
        "rotation should cost one fetch"
    );
    // Both keys serve now, without further fetches.
    assert_ok(&swap(&t, &p, &user_token(&idp, &t, "bob")).await);
    assert_ok(&swap(&t, &p, &old).await);
    assert_eq!(idp.jwks_fetches(), before + 1);

    // 20 concurrent requests with a kid nobody published.
    t.clock.advance(2);
    let before = idp.jwks_fetches();
    let tokens: Vec<String> = (0..20).map(|_| forged_token(&idp, &t, "ghost")).collect();
    let replies = futures_util::future::join_all(tokens.iter().map(|tok| swap(&t, &p, tok))).await;
    for r in &replies {
        assert_invalid_grant(r);
    }
    let spent = idp.jwks_fetches() - before;
    assert!(
        (1..=2).contains(&spent),
        "20 unknown-kid requests caused {spent} JWKS fetches"
    );
}

#[tokio::test]
async fn unknown_kids_trigger_at_most_one_refresh_per_refresh_min_interval() {
    let idp = TestIdp::start().await;
    idp.set_cache_control(Some("max-age=86400"));
    let t = start(&idp, "refresh_min_interval = \"1h\"").await;
    let p = data_product(&t).await;
    assert_ok(&swap(&t, &p, &user_token(&idp, &t, "alice")).await);
    assert_eq!(idp.jwks_fetches(), 1);

    // An hour and more later, still fresh (max-age one day).
    t.clock.advance(2 * 3600);
    assert_invalid_grant(&swap(&t, &p, &forged_token(&idp, &t, "ghost-1")).await);
    assert_eq!(
        idp.jwks_fetches(),
        2,
        "the first unknown kid should refresh once"
    );
    assert_invalid_grant(&swap(&t, &p, &forged_token(&idp, &t, "ghost-2")).await);
    assert_invalid_grant(&swap(&t, &p, &forged_token(&idp, &t, "ghost-1")).await);
    assert_eq!(
        idp.jwks_fetches(),
        2,
        "a second unknown kid within the hour refreshed again"
    );

    // Within the hour even a real rotation waits for the next window…
    idp.rotate("idp-2", false);
    t.clock.advance(30 * 60);
    assert_invalid_grant(&swap(&t, &p, &user_token(&idp, &t, "alice")).await);
    assert_eq!(idp.jwks_fetches(), 2);
    // …and after it the new key is fetched and accepted.
    t.clock.advance(31 * 60);
    assert_ok(&swap(&t, &p, &user_token(&idp, &t, "alice")).await);
    assert_eq!(idp.jwks_fetches(), 3);
}

// ---------------------------------------------------------------------------
// Algorithms

/// The PEM (SPKI) of an RSA public JWK.
fn rsa_public_pem(jwk: &Value) -> String {
    use base64::Engine;
    use rsa::pkcs8::EncodePublicKey;
    let b = |name: &str| {
        rsa::BigUint::from_bytes_be(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(jwk[name].as_str().unwrap())
                .unwrap(),
        )
    };
    rsa::RsaPublicKey::new(b("n"), b("e"))
        .unwrap()
        .to_public_key_pem(rsa::pkcs8::LineEnding::LF)
        .unwrap()
}

#[tokio::test]
async fn an_es256_token_is_refused_when_the_issuer_is_pinned_to_rs256() {
    let idp = TestIdp::start().await; // signs ES256
    let t = start(&idp, "algorithms = [\"RS256\"]").await;
    let p = data_product(&t).await;
    assert_invalid_grant(&swap(&t, &p, &user_token(&idp, &t, "alice")).await);

    // Also when the JWKS publishes that EC key next to an accepted RSA key.
    let rsa = TestIdp::start_with(ClientKey::rs256(Some("rsa-1"))).await;
    let t = start(
        &rsa,
        "algorithms = [\"RS256\"]\nrefresh_min_interval = \"1s\"",
    )
    .await;
    let p = data_product(&t).await;
    assert_ok(&swap(&t, &p, &user_token(&rsa, &t, "alice")).await);
    rsa.rotate("ec-1", false);
    t.clock.advance(2);
    let ec = user_token(&rsa, &t, "alice");
    assert_eq!(crate::harness::header_of(&ec)["alg"], "ES256");
    assert_invalid_grant(&swap(&t, &p, &ec).await);
}

#[tokio::test]
async fn alg_none_and_hs256_with_the_public_key_as_secret_are_refused() {
    use base64::Engine;
    let b64 = |v: &Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    };
    let key = ClientKey::rs256(Some("rsa-1"));
    let jwk = key.jwk.clone();
    let idp = TestIdp::start_with(key).await;
    let t = start(&idp, "algorithms = [\"RS256\"]").await;
    let p = data_product(&t).await;
    // Control: the real thing passes, so the refusals below are about alg.
    assert_ok(&swap(&t, &p, &user_token(&idp, &t, "alice")).await);

    let claims = claims_at(&t, &idp.issuer, "mallory");
    // alg none, without and with a signature part.
    for alg in ["none", "None", "NONE"] {
        let header = json!({"alg": alg, "typ": "JWT", "kid": "rsa-1"});
        for sig in ["", "c2ln"] {
            let token = format!("{}.{}.{sig}", b64(&header), b64(&claims));
            assert_invalid_grant(&swap(&t, &p, &token).await);
        }
    }
    // HS256 keyed with the public key: PEM, DER-ish JWK text and raw modulus.
    let pem = rsa_public_pem(&jwk);
    let secrets: Vec<Vec<u8>> = vec![
        pem.clone().into_bytes(),
        pem.trim_end().as_bytes().to_vec(),
        serde_json::to_vec(&jwk).unwrap(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(jwk["n"].as_str().unwrap())
            .unwrap(),
    ];
    for secret in secrets {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some("rsa-1".into());
        let token = jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(&secret),
        )
        .unwrap();
        assert_invalid_grant(&swap(&t, &p, &token).await);
    }
    // An ES256 header over an RS256 signature by the real key.
    let real = user_token(&idp, &t, "mallory");
    let mut parts = real.split('.');
    let (_, payload, sig) = (parts.next(), parts.next().unwrap(), parts.next().unwrap());
    let header = json!({"alg": "ES256", "typ": "JWT", "kid": "rsa-1"});
    let token = format!("{}.{payload}.{sig}", b64(&header));
    assert_invalid_grant(&swap(&t, &p, &token).await);
}

// ---------------------------------------------------------------------------
// ext_authz with a trusted token

const POLICY: &str = "[[rule]]\nname = \"api\"\npath = \"/api/*\"\naccept = [\"human\"]\naudience = \"tessera\"\ntrusted_issuers = [\"corp\"]\n";

#[tokio::test]
async fn ext_authz_allows_a_trusted_token_with_identity_headers() {
    let idp = TestIdp::start().await;
    let t = TestApp::builder()
        .config(&corp(&idp, ""))
        .policy(POLICY)
        .start()
        .await;
    // An access token: an ID token is no credential for a route.
    let mut claims = claims_at(&t, &idp.issuer, "alice");
    claims.as_object_mut().unwrap().remove("nonce");
    let r = t
        .authz(
            "GET",
            "/api/reports",
            Some(&idp.sign_typ("at+jwt", &claims)),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("x-tessera-subject"), Some("alice"));
    assert_eq!(r.header("x-tessera-principal"), Some("human"));
    assert_eq!(r.header("x-tessera-tenant"), Some("acme"));
    // A forged one is a token problem, not an outage.
    let r = t
        .authz(
            "GET",
            "/api/reports",
            Some(&forged_token(&idp, &t, "idp-1")),
        )
        .await;
    assert_eq!(r.status, 401, "{}", r.text);
    assert!(r.header("x-tessera-subject").is_none());
}

#[tokio::test]
async fn ext_authz_answers_503_when_the_idp_is_down_and_nothing_is_cached() {
    let idp = TestIdp::start().await;
    idp.set_mode(Mode::Down);
    let t = TestApp::builder()
        .config(&corp(
            &idp,
            "fetch_timeout = \"500ms\"\nrefresh_min_interval = \"1s\"",
        ))
        .policy(POLICY)
        .start()
        .await;
    t.clock.advance(2);
    let started = Instant::now();
    let r = t
        .authz("GET", "/api/reports", Some(&user_token(&idp, &t, "alice")))
        .await;
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.error(), "temporarily_unavailable");
    assert!(r.header("x-tessera-subject").is_none());
    assert!(idp.jwks_fetches() + idp.discovery_fetches() >= 1);
}

// ---------------------------------------------------------------------------
// Configuration

#[tokio::test]
async fn tessera_serve_refuses_a_trusted_issuer_with_a_bad_algorithm_or_key() {
    let dir = tempfile::tempdir().unwrap();
    let env = crate::harness::BinEnv::fresh(dir.path());
    let entry = "[[trusted_issuers]]\nname = \"corp\"\nissuer = \"https://idp.example\"\nkind = \"human\"\naudiences = [\"tessera\"]\n";
    let other = |issuer: &str| {
        entry
            .replace("https://idp.example", issuer)
            .replace("corp", "partner")
    };
    let cases = [
        (
            "algorithms = [\"HS256\"]".to_string(),
            "trusted_issuers[0].algorithms",
        ),
        (
            "algorithms = [\"none\"]".to_string(),
            "trusted_issuers[0].algorithms",
        ),
        (
            "jwks_url = \"https://idp.example/jwks\"".to_string(),
            "trusted_issuers[0]",
        ),
        // Keys over plain http from anywhere but loopback.
        (
            "jwks_uri = \"http://idp.example/jwks\"".to_string(),
            "trusted_issuers[0].jwks_uri",
        ),
        // Tessera's own issuer (the default public_url is http://{listen}).
        (
            other("http://127.0.0.1:8080/issuers/service"),
            "trusted_issuers[1].issuer",
        ),
        // A second human issuer while neither has a subject_prefix.
        (
            other("https://partner.example"),
            "trusted_issuers[0].subject_prefix",
        ),
    ];
    for (i, (extra, key)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad-{i}.toml"));
        std::fs::write(&path, format!("{entry}{extra}\n")).unwrap();
        let path = path.display().to_string();
        let out = env.run(&["--config", &path, "serve"]).await;
        assert!(
            out.code.is_some_and(|c| c != 0),
            "serve with {extra} must fail, got {:?}",
            out.code
        );
        assert!(
            out.stderr.contains(&format!("`{key}`")),
            "stderr should name `{key}` for {extra}: {}",
            out.stderr
        );
    }
}
