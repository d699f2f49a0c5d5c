//! `private_key_jwt` client authentication (RFC 7523 §2.2 and §3) at the
//! token and introspection endpoints. Assertions are signed by a stock JWT
//! library (`jsonwebtoken`) with keys made outside Tessera, so these tests
//! hold Tessera to the RFC rather than to its own JOSE code. Every forged,
//! replayed, stale or misdirected assertion is `invalid_client` and leaves
//! an audit record that says exactly why.

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tessera::jose::{Jwk, JwkSet};
use tessera::registry::NewClient;
use tessera::store::Client;

use crate::harness::*;

pub(crate) const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

pub(crate) fn jwk_set(keys: &[&ClientKey]) -> JwkSet {
    JwkSet {
        keys: keys
            .iter()
            .map(|k| serde_json::from_value::<Jwk>(k.jwk.clone()).unwrap())
            .collect(),
    }
}

/// Registers a private_key_jwt client for audience `internal`.
async fn key_client(t: &TestApp, keys: &[&ClientKey]) -> Client {
    let (client, secret) = t
        .register(NewClient {
            name: "pkjwt".into(),
            tenant: "acme".into(),
            audiences: vec!["internal".into()],
            scopes: vec!["orders:read".into()],
            jwks: Some(jwk_set(keys)),
            ..Default::default()
        })
        .await;
    assert!(secret.is_none(), "a client with keys gets no secret");
    client
}

fn token_url(t: &TestApp) -> String {
    format!("{}/oauth2/token", t.base)
}

/// RFC 7523 §3 claims: iss = sub = client_id, aud, exp a minute ahead, fresh jti.
fn assertion_claims(t: &TestApp, client_id: &str, aud: &str) -> Value {
    let now = t.clock.now();
    json!({
        "iss": client_id,
        "sub": client_id,
        "aud": aud,
        "iat": now,
        "exp": now + 60,
        "jti": uuid::Uuid::new_v4().to_string(),
    })
}

/// A client_credentials request authenticated by `assertion` alone.
async fn token_with(t: &TestApp, assertion: &str) -> Reply {
    t.post_form(
        "/oauth2/token",
        None,
        &[
            ("grant_type", "client_credentials"),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", assertion),
        ],
    )
    .await
}

/// Checks the RFC 6749 §5.2 refusal and its audit record.
async fn assert_refused(t: &TestApp, r: &Reply, reason: &str, assertion: &str) {
    assert_eq!((r.status, r.error()), (401, "invalid_client"), "{}", r.text);
    assert!(
        r.header("www-authenticate").is_some(),
        "401 carries a challenge"
    );
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let audit = t.audit().await;
    let last = &audit.last().expect("refusal audited").record;
    assert_eq!(
        (
            last.event.as_str(),
            last.decision.as_str(),
            last.reason.as_str()
        ),
        ("client_authentication", "deny", reason),
        "{last:?}"
    );
    let record_text = serde_json::to_string(last).unwrap();
    assert!(
        !record_text.contains(assertion),
        "the assertion is never audited"
    );
}

fn replace_payload(jwt: &str, claims: &Value) -> String {
    let parts: Vec<&str> = jwt.split('.').collect();
    format!(
        "{}.{}.{}",
        parts[0],
        b64(claims.to_string().as_bytes()),
        parts[2]
    )
}

// ---------------------------------------------------------------- accepted

#[tokio::test]
async fn es256_assertion_with_kid_authenticates_the_client() {
    let t = TestApp::start().await;
    let key = ClientKey::es256(Some("k1"));
    let c = key_client(&t, &[&key]).await;
    let assertion = key.sign(&assertion_claims(&t, &c.client_id, &token_url(&t)));
    let r = token_with(&t, &assertion).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let claims = claims_of(r.body["access_token"].as_str().unwrap());
    assert_eq!(claims["sub"], c.client_id.as_str());
    assert_eq!(claims["client_id"], c.client_id.as_str());
    assert_eq!(claims["aud"], "internal");
    assert_eq!(claims["principal"], "service");

    let audit = t.audit().await;
    assert!(audit
        .iter()
        .all(|a| a.record.event != "client_authentication"));
    let issued = audit
        .iter()
        .find(|a| a.record.event == "token_issuance")
        .expect("issuance audited");
    assert_eq!(issued.record.decision, "allow");
    assert_eq!(
        issued.record.client_id.as_deref(),
        Some(c.client_id.as_str())
    );
}

#[tokio::test]
async fn es256_assertion_without_kid_is_checked_against_every_registered_key() {
    let t = TestApp::start().await;
    // Common libraries send no kid; the client has several keys registered.
    let rsa = ClientKey::rs256(Some("rsa-1"));
    let other_ec = ClientKey::es256(Some("ec-0"));
    let ec = ClientKey::es256(Some("ec-1"));
    let c = key_client(&t, &[&rsa, &other_ec, &ec]).await;
    let assertion = ec.sign_with_header(
        Header::new(Algorithm::ES256),
        &assertion_claims(&t, &c.client_id, &token_url(&t)),
    );
    assert!(header_of(&assertion).get("kid").is_none());
    let r = token_with(&t, &assertion).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        claims_of(r.body["access_token"].as_str().unwrap())["sub"],
        c.client_id.as_str()
    );
}

#[tokio::test]
async fn rs256_and_eddsa_assertions_authenticate_the_client() {
    let t = TestApp::start().await;
    for key in [ClientKey::rs256(Some("r1")), ClientKey::ed25519(Some("e1"))] {
        let c = key_client(&t, &[&key]).await;
        let r = token_with(
            &t,
            &key.sign(&assertion_claims(&t, &c.client_id, &token_url(&t))),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(
            claims_of(r.body["access_token"].as_str().unwrap())["sub"],
            c.client_id.as_str()
        );
    }
}

#[tokio::test]
async fn assertion_valid_for_an_hour_is_accepted() {
    let t = TestApp::start().await;
    let key = ClientKey::es256(Some("k1"));
    let c = key_client(&t, &[&key]).await;
    let mut claims = assertion_claims(&t, &c.client_id, &token_url(&t));
    claims["exp"] = (t.clock.now() + 3600).into();
    let r = token_with(&t, &key.sign(&claims)).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn assertion_expired_within_the_clock_skew_is_accepted() {
    let t = TestApp::start().await;
    let key = ClientKey::es256(Some("k1"));
    let c = key_client(&t, &[&key]).await;
    let mut claims = assertion_claims(&t, &c.client_id, &token_url(&t));
    claims["iat"] = (t.clock.now() - 90).into();
    claims["exp"] = (t.clock.now() - 30).into();
    let r = token_with(&t, &key.sign(&claims)).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn issuer_identifier_and_audience_lists_are_accepted_audiences() {
    let t = TestApp::start().await;
    let key = ClientKey::es256(Some("k1"));
    let c = key_client(&t, &[&key]).await;
    let auds = [
        json!(t.base),
        json!(["https://elsewhere.example/", token_url(&t)]),
        json!([t.base.clone()]),
    ];
    for aud in auds {
        let mut claims = assertion_claims(&t, &c.client_id, "");
        claims["aud"] = aud.clone();
        let r = token_with(&t, &key.sign(&claims)).await;
        assert_eq!(r.status, 200, "aud {aud}: {}", r.text);
    }
}

#[tokio::test]
async fn assertion_authenticates_at_the_introspection_endpoint_with_its_url_as_audience() {
    let t = TestApp::start().await;
    let key = ClientKey::es256(Some("k1"));
    let c = key_client(&t, &[&key]).await;
    let token = token_with(
        &t,
        &key.sign(&assertion_claims(&t, &c.client_id, &token_url(&t))),
    )
    .await
    .body["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let introspect_url = format!("{}/oauth2/introspect", t.base);
    let assertion = key.sign(&assertion_claims(&t, &c.client_id, &introspect_url));
    let r = t
        .post_form(
            "/oauth2/introspect",
            None,
            &[
                ("token", &token),
                ("client_assertion_type", JWT_BEARER),
                ("client_assertion", &assertion),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["active"], true);
    assert_eq!(r.body["sub"], c.client_id.as_str());
    let last = t.audit().await.pop().unwrap().record;
    assert_eq!(
        (last.event.as_str(), last.decision.as_str()),
        ("introspection", "allow")
    );
}

#[tokio::test]
async fn assertion_for_the_introspection_endpoint_is_refused_at_the_token_endpoint() {
    let t = TestApp::start().await;
    let key = ClientKey::es256(Some("k1"));
    let c = key_client(&t, &[&key]).await;
    let assertion = key.sign(&assertion_claims(
        &t,
        &c.client_id,
        &format!("{}/oauth2/introspect", t.base),
    ));
    let r = token_with(&t, &assertion).await;
    assert_refused(&t, &r, "assertion_wrong_audience", &assertion).await;
}

// ---------------------------------------------------------------- refused

#[tokio::test]
async fn replayed_assertion_is_refused() {
    let t = TestApp::start().await;
    let key = ClientKey::es256(Some("k1"));
    let c = key_client(&t, &[&key]).await;
    // Audience = the issuer, which every endpoint accepts.
    let assertion = key.sign(&assertion_claims(&t, &c.client_id, &t.base));
    assert_eq!(token_with(&t, &assertion).await.status, 200);
    let r = token_with(&t, &assertion).await;
    assert_refused(&t, &r, "assertion_replayed", &assertion).await;
    assert_eq!(
        t.audit().await.last().unwrap().record.client_id.as_deref(),
        Some(c.client_id.as_str())
    );

    // Nor can it be spent at another endpoint.
    let r = t
        .post_form(
            "/oauth2/introspect",
            None,
            &[
                ("token", "x"),
                ("client_assertion_type", JWT_BEARER),
                ("client_assertion", &assertion),
            ],
        )
        .await;
    assert_refused(&t, &r, "assertion_replayed", &assertion).await;

    // A new jti with otherwise identical claims is fine.
    let mut fresh: Value = claims_of(&assertion);
    fresh["jti"] = uuid::Uuid::new_v4().to_string().into();
    assert_eq!(token_with(&t, &key.sign(&fresh)).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uses_of_one_assertion_succeed_exactly_once() {
    let t = TestApp::start().await;
    let key = ClientKey::es256(Some("k1"));
    let c = key_client(&t, &[&key]).await;
    let assertion = key.sign(&assertion_claims(&t, &c.client_id, &token_url(&t)));
    let replies = futures_util::future::join_all((0..20).map(|_| token_with(&t, &assertion))).await;
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert!(replies
        .iter()
        .filter(|r| r.status != 200)
        .all(|r| (r.status, r.error()) == (401, "invalid_client")));
    let replayed = t
        .audit()
        .await
        .into_iter()
        .filter(|a| a.record.reason == "assertion_replayed")
        .count();
    assert_eq!(replayed, 19);
}

/// A second Tessera on the same store and key folder, published under the
/// same URL: what a replica behind the same load balancer is.
async fn replica_of(t: &TestApp) -> tessera::server::Server {
    let store = &t.app().config.store;
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ngrpc_listen = \"127.0.0.1:0\"\npublic_url = {:?}\n\
         [store]\nurl = {:?}\nschema = {:?}\nmax_connections = 4\n\
         [keys]\ndir = {:?}\n",
        t.base,
        store.url,
        store.schema.clone().unwrap_or_default(),
        t.dir.path().join("keys").display().to_string(),
    );
    let config = tessera::config::Config::from_sources(Some(&toml), std::iter::empty()).unwrap();
    tessera::server::Server::start(config, t.clock.clone())
        .await
        .expect("replica starts")
}

#[tokio::test]
async fn replayed_assertion_is_refused_even_by_another_replica() {
    let t = TestApp::start().await;
    let replica = replica_of(&t).await;
    let key = ClientKey::es256(Some("k1"));
    let c = key_client(&t, &[&key]).await;
    let assertion = key.sign(&assertion_claims(&t, &c.client_id, &token_url(&t)));
    let form = [
        ("grant_type", "client_credentials"),
        ("client_assertion_type", JWT_BEARER),
        ("client_assertion", assertion.as_str()),
    ];

    let first = t
        .send(
            t.http
                .post(format!("http://{}/oauth2/token", replica.http_addr))
                .form(&form),
        )
        .await;
    assert_eq!(
        first.status, 200,
        "the replica accepts the fresh assertion: {}",
        first.text
    );
    let again = token_with(&t, &assertion).await;
    assert_refused(&t, &again, "assertion_replayed", &assertion).await;
    replica.shutdown().await;
}

#[tokio::test]
async fn expired_assertion_is_refused() {
    let t = TestApp::start().await;
    let key = ClientKey::es256(Some("k1"));
    let c = key_client(&t, &[&key]).await;

    let mut claims = assertion_claims(&t, &c.client_id, &token_url(&t));
    claims["iat"] = (t.clock.now() - 300).into();
    claims["exp"] = (t.clock.now() - 120).into();
    let assertion = key.sign(&claims);
    assert_refused(
        &t,
        &token_with(&t, &assertion).await,
        "assertion_expired",
        &assertion,
    )
    .await;

    // A valid assertion held past exp + skew.
    let assertion = key.sign(&assertion_claims(&t, &c.client_id, &token_url(&t)));
    t.clock.advance(121);
    assert_refused(
        &t,
        &token_with(&t, &assertion).await,
        "assertion_expired",
        &assertion,
    )
    .await;
}

#[tokio::test]
async fn assertion_living_longer_than_an_hour_is_refused() {
    let t = TestApp::start().await;
    let key = ClientKey::es256(Some("k1"));
    let c = key_client(&t, &[&key]).await;
    let mut claims = assertion_claims(&t, &c.client_id, &token_url(&t));
    claims["exp"] = (t.clock.now() + 2 * 3600).into();
    let assertion = key.sign(&claims);
    assert_refused(
        &t,
        &token_with(&t, &assertion).await,
        "assertion_lifetime_too_long",
        &assertion,
    )
    .await;
}

#[tokio::test]
async fn assertion_without_exp_is_refused() {
    let t = TestApp::start().await;
    let key = ClientKey::es256(Some("k1"));
    let c = key_client(&t, &[&key]).await;
    let mut claims = assertion_claims(&t, &c.client_id, &token_url(&t));
    claims.as_object_mut().unwrap().remove("exp");
    let assertion = key.sign(&claims);
    assert_refused(
        &t,
        &token_with(&t, &assertion).await,
        "assertion_missing_exp",
        &assertion,
    )
    .await;
}

#[tokio::test]
async fn assertion_without_jti_is_refused() {
    let t = TestApp::start().await;
    let key = ClientKey::es256(Some("k1"));
    let c = key_client(&t, &[&key]).await;
    let mut claims = assertion_claims(&t, &c.client_id, &token_url(&t));
    claims.as_object_mut().unwrap().remove("jti");
    let assertion = key.sign(&claims);
    assert_refused(
        &t,
        &token_with(&t, &assertion).await,
        "assertion_missing_jti",
        &assertion,
    )
    .await;

    claims["jti"] = "".into();
    let assertion = key.sign(&claims);
    assert_refused(
        &t,
        &token_with(&t, &assertion).await,
        "assertion_missing_jti",
        &assertion,
    )
    .await;
}

#[tokio::test]
async fn assertion_not_yet_valid_is_refused() {
    let t = TestApp::start().await;
    let key = ClientKey::es256(Some("k1"));
    let c = key_client(&t, &[&key]).await;
    for field in ["nbf", "iat"] {
        let mut claims = assertion_claims(&t, &c.client_id, &token_url(&t));
        claims[field] = (t.clock.now() + 600).into();
        claims["exp"] = (t.clock.now() + 900).into();
        let assertion = key.sign(&claims);
        assert_refused(
            &t,
            &token_with(&t, &assertion).await,
            "assertion_not_yet_valid",
            &assertion,
        )
        .await;
    }
}

#[tokio::test]
async fn assertion_for_another_audience_is_refused() {
    let t = TestApp::start().await;
    let key = ClientKey::es256(Some("k1"));
    let c = key_client(&t, &[&key]).await;
    let others = [
        json!("https://other-as.example/oauth2/token"),
        json!(format!("{}/oauth2/token/", t.base)),
        json!([]),
        json!(null),
    ];
    for aud in others {
        let mut claims = assertion_claims(&t, &c.client_id, "");
        claims["aud"] = aud;
        let assertion = key.sign(&claims);
        assert_refused(
            &t,
            &token_with(&t, &assertion).await,
            "assertion_wrong_audience",
            &assertion,
        )
        .await;
    }
}

#[tokio::test]
async fn assertion_whose_iss_differs_from_sub_is_refused() {
    let t = TestApp::start().await;
    let key = ClientKey::es256(Some("k1"));
    let c = key_client(&t, &[&key]).await;
    let other = key_client(&t, &[&key]).await;
    let mut claims = assertion_claims(&t, &c.client_id, &token_url(&t));
    claims["iss"] = other.client_id.clone().into();
    let assertion = key.sign(&claims);
    assert_refused(
        &t,
        &token_with(&t, &assertion).await,
        "assertion_subject_mismatch",
        &assertion,
    )
    .await;

    claims.as_object_mut().unwrap().remove("iss");
    let assertion = key.sign(&claims);
    assert_refused(
        &t,
        &token_with(&t, &assertion).await,
        "assertion_missing_iss_or_sub",
        &assertion,
    )
    .await;
}

#[tokio::test]
async fn client_id_parameter_different_from_sub_is_refused() {
    let t = TestApp::start().await;
    let key = ClientKey::es256(Some("k1"));
    let c = key_client(&t, &[&key]).await;
    let other = key_client(&t, &[&key]).await;
    let assertion = key.sign(&assertion_claims(&t, &c.client_id, &token_url(&t)));
    let r = t
        .post_form(
            "/oauth2/token",
            None,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", &other.client_id),
                ("client_assertion_type", JWT_BEARER),
                ("client_assertion", &assertion),
            ],
        )
        .await;
    assert_refused(&t, &r, "assertion_subject_mismatch", &assertion).await;

    // The same client_id as sub is fine (RFC 7521 §4.2 allows it).
    let r = t
        .post_form(
            "/oauth2/token",
            None,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", &c.client_id),
                ("client_assertion_type", JWT_BEARER),
                ("client_assertion", &assertion),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn assertion_for_an_unknown_client_is_refused() {
    let t = TestApp::start().await;
    let key = ClientKey::es256(Some("k1"));
    key_client(&t, &[&key]).await;
    let assertion = key.sign(&assertion_claims(&t, "no-such-client", &token_url(&t)));
    assert_refused(
        &t,
        &token_with(&t, &assertion).await,
        "unknown_client",
        &assertion,
    )
    .await;
}

#[tokio::test]
async fn assertion_naming_a_client_id_with_a_nul_byte_is_an_unknown_client() {
    let t = TestApp::start().await;
    let key = ClientKey::es256(Some("k1"));
    key_client(&t, &[&key]).await;
    let assertion = key.sign(&assertion_claims(&t, "client\u{0}id", &token_url(&t)));
    assert_refused(
        &t,
        &token_with(&t, &assertion).await,
        "unknown_client",
        &assertion,
    )
    .await;
}

#[tokio::test]
async fn unsigned_alg_none_assertion_is_refused() {
    let t = TestApp::start().await;
    let key = ClientKey::es256(Some("k1"));
    let c = key_client(&t, &[&key]).await;
    let claims = assertion_claims(&t, &c.client_id, &token_url(&t));
    let header = b64(json!({"alg": "none", "typ": "JWT"}).to_string().as_bytes());
    let payload = b64(claims.to_string().as_bytes());

    // The RFC 7519 §6.1 form: empty signature, reported as the algorithm it is.
    let unsecured = format!("{header}.{payload}.");
    assert_refused(
        &t,
        &token_with(&t, &unsecured).await,
        "assertion_alg_not_accepted",
        &unsecured,
    )
    .await;
    // With some bytes where a signature would be.
    let junk = format!("{header}.{payload}.{}", b64(b"signature"));
    assert_refused(
        &t,
        &token_with(&t, &junk).await,
        "assertion_alg_not_accepted",
        &junk,
    )
    .await;
    // Spelled differently.
    let header = b64(json!({"alg": "None", "kid": "k1"}).to_string().as_bytes());
    let junk = format!("{header}.{payload}.{}", b64(b"signature"));
    assert_refused(
        &t,
        &token_with(&t, &junk).await,
        "assertion_alg_not_accepted",
        &junk,
    )
    .await;
}

#[tokio::test]
async fn hs256_assertion_keyed_with_the_clients_public_key_is_refused() {
    let t = TestApp::start().await;
    let key = ClientKey::es256(Some("k1"));
    let c = key_client(&t, &[&key]).await;
    let claims = assertion_claims(&t, &c.client_id, &token_url(&t));
    // Algorithm confusion: the public key (known to anyone) as an HMAC secret,
    // as the registered JWK text and as the raw EC point.
    let jwk_text = serde_json::to_string(&key.jwk).unwrap();
    let mut point = vec![4u8];
    point.extend(base64_url(key.jwk["x"].as_str().unwrap()));
    point.extend(base64_url(key.jwk["y"].as_str().unwrap()));
    for secret in [jwk_text.as_bytes(), point.as_slice()] {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k1".into());
        let forged = encode(&header, &claims, &EncodingKey::from_secret(secret)).unwrap();
        assert_refused(
            &t,
            &token_with(&t, &forged).await,
            "assertion_alg_not_accepted",
            &forged,
        )
        .await;
    }
}

fn base64_url(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .unwrap()
}

#[tokio::test]
async fn tampered_assertion_payload_is_refused() {
    let t = TestApp::start().await;
    let key = ClientKey::es256(Some("k1"));
    let c = key_client(&t, &[&key]).await;
    let assertion = key.sign(&assertion_claims(&t, &c.client_id, &token_url(&t)));
    // Stretch the lifetime, keep the signature.
    let mut claims = claims_of(&assertion);
    claims["exp"] = (t.clock.now() + 1800).into();
    let tampered = replace_payload(&assertion, &claims);
    assert_refused(
        &t,
        &token_with(&t, &tampered).await,
        "assertion_bad_signature",
        &tampered,
    )
    .await;
    // The untouched original is still good: the tampered copy did not spend its jti.
    assert_eq!(token_with(&t, &assertion).await.status, 200);
}

#[tokio::test]
async fn assertion_signed_by_an_unregistered_key_is_refused() {
    let t = TestApp::start().await;
    let registered = ClientKey::es256(Some("k1"));
    let c = key_client(&t, &[&registered]).await;
    // An attacker's key claiming the registered kid, and without a kid.
    for kid in [Some("k1"), None] {
        let intruder = ClientKey::es256(kid);
        let assertion = intruder.sign(&assertion_claims(&t, &c.client_id, &token_url(&t)));
        assert_refused(
            &t,
            &token_with(&t, &assertion).await,
            "assertion_bad_signature",
            &assertion,
        )
        .await;
    }
    // A registered key under the wrong kid finds no key to check with.
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("k2".into());
    let assertion =
        registered.sign_with_header(header, &assertion_claims(&t, &c.client_id, &token_url(&t)));
    assert_refused(
        &t,
        &token_with(&t, &assertion).await,
        "assertion_bad_signature",
        &assertion,
    )
    .await;
}

#[tokio::test]
async fn access_token_presented_as_assertion_is_refused() {
    let t = TestApp::start().await;
    let key = ClientKey::es256(Some("k1"));
    let c = key_client(&t, &[&key]).await;
    // Signed by the client, but typed as an access token.
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("k1".into());
    header.typ = Some("at+jwt".into());
    let assertion =
        key.sign_with_header(header, &assertion_claims(&t, &c.client_id, &token_url(&t)));
    assert_refused(
        &t,
        &token_with(&t, &assertion).await,
        "assertion_wrong_type",
        &assertion,
    )
    .await;

    // One of Tessera's own access tokens.
    let access = token_with(
        &t,
        &key.sign(&assertion_claims(&t, &c.client_id, &token_url(&t))),
    )
    .await
    .body["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_refused(
        &t,
        &token_with(&t, &access).await,
        "assertion_wrong_type",
        &access,
    )
    .await;
}

#[tokio::test]
async fn oversized_assertion_is_refused_before_parsing() {
    let t = TestApp::start().await;
    let key = ClientKey::es256(Some("k1"));
    let c = key_client(&t, &[&key]).await;
    let mut claims = assertion_claims(&t, &c.client_id, &token_url(&t));
    claims["pad"] = "a".repeat(8 * 1024).into();
    let assertion = key.sign(&claims);
    assert!(assertion.len() > 8 * 1024);
    assert_refused(
        &t,
        &token_with(&t, &assertion).await,
        "assertion_too_large",
        &assertion,
    )
    .await;
}

#[tokio::test]
async fn disabled_client_cannot_authenticate_with_an_assertion() {
    let t = TestApp::start().await;
    let key = ClientKey::es256(Some("k1"));
    let c = key_client(&t, &[&key]).await;
    assert!(t
        .app()
        .store
        .set_disabled(&c.client_id, true, t.clock.now())
        .await
        .unwrap());
    let assertion = key.sign(&assertion_claims(&t, &c.client_id, &token_url(&t)));
    assert_refused(
        &t,
        &token_with(&t, &assertion).await,
        "client_disabled",
        &assertion,
    )
    .await;
}

#[tokio::test]
async fn secret_client_cannot_use_private_key_jwt() {
    let t = TestApp::start().await;
    let (c, _secret) = t.client("acme", &["internal"], &[]).await;
    let key = ClientKey::es256(Some("k1"));
    let assertion = key.sign(&assertion_claims(&t, &c.client_id, &token_url(&t)));
    assert_refused(
        &t,
        &token_with(&t, &assertion).await,
        "client_has_no_keys",
        &assertion,
    )
    .await;
}

#[tokio::test]
async fn client_assertion_with_another_authentication_method_is_invalid_request() {
    let t = TestApp::start().await;
    let key = ClientKey::es256(Some("k1"));
    let c = key_client(&t, &[&key]).await;
    let (secret_client, secret) = t.client("acme", &["internal"], &[]).await;
    let assertion = key.sign(&assertion_claims(&t, &c.client_id, &token_url(&t)));
    let base_form = [
        ("grant_type", "client_credentials"),
        ("client_assertion_type", JWT_BEARER),
        ("client_assertion", assertion.as_str()),
    ];

    // client_secret in the body beside the assertion (RFC 6749 §2.3).
    let mut form = base_form.to_vec();
    form.extend([
        ("client_id", c.client_id.as_str()),
        ("client_secret", secret.as_str()),
    ]);
    let r = t.post_form("/oauth2/token", None, &form).await;
    assert_eq!(
        (r.status, r.error()),
        (400, "invalid_request"),
        "{}",
        r.text
    );

    // HTTP Basic beside the assertion.
    let r = t
        .post_form(
            "/oauth2/token",
            Some((&secret_client.client_id, &secret)),
            &base_form,
        )
        .await;
    assert_eq!(
        (r.status, r.error()),
        (400, "invalid_request"),
        "{}",
        r.text
    );

    // An assertion without its type, or with another type.
    let r = t
        .post_form(
            "/oauth2/token",
            None,
            &[
                ("grant_type", "client_credentials"),
                ("client_assertion", &assertion),
            ],
        )
        .await;
    assert_eq!(
        (r.status, r.error()),
        (400, "invalid_request"),
        "{}",
        r.text
    );
    let r = t
        .post_form(
            "/oauth2/token",
            None,
            &[
                ("grant_type", "client_credentials"),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:saml2-bearer",
                ),
                ("client_assertion", &assertion),
            ],
        )
        .await;
    assert_eq!(
        (r.status, r.error()),
        (400, "invalid_request"),
        "{}",
        r.text
    );

    // The assertion twice (RFC 6749 §3.2: parameters must not repeat).
    let mut form = base_form.to_vec();
    form.push(("client_assertion", assertion.as_str()));
    let r = t.post_form("/oauth2/token", None, &form).await;
    assert_eq!(
        (r.status, r.error()),
        (400, "invalid_request"),
        "{}",
        r.text
    );

    // None of these spent the assertion's jti.
    assert_eq!(token_with(&t, &assertion).await.status, 200);
}
