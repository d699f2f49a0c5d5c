//! Signing-key rotation through the real key files (`keys/<issuer>/*.json`)
//! and the separation of the human and service issuers' key sets: a next
//! key is published before it signs, a retired key keeps verifying for the
//! issuer's longest token lifetime plus skew and then leaves the JWKS, and
//! a token signed by one issuer never passes as the other's.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;

use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde_json::Value;
use tessera::issuer::{keys, Principal};
use tessera::jose::Alg;
use tessera::registry::NewClient;
use tessera::store::Client;

use crate::harness::*;

/// `keys.rotation_delay` (the default, 15 min): how long a next key is
/// published before it signs.
const DELAY: i64 = 900;

/// How long a retired key keeps verifying: the issuer's `max_token_ttl` + 60 s.
fn grace(t: &TestApp) -> i64 {
    t.app().config.issuers.service.max_token_ttl.as_secs() as i64 + 60
}

/// `tessera keys rotate` for the service issuer, then the reload every
/// replica does on its timer. Returns the new kid.
fn rotate_service_key(t: &TestApp) -> String {
    let dir = t.dir.path().join("keys/service");
    let file = keys::rotate(&dir, Alg::ES256, t.clock.now(), DELAY, grace(t)).unwrap();
    t.app().issuers.reload().unwrap();
    file.kid
}

/// A secret client for `internal` whose tokens live an hour (the maximum).
async fn hour_client(t: &TestApp) -> (Client, String) {
    let (c, s) = t
        .register(NewClient {
            name: "long".into(),
            tenant: "acme".into(),
            audiences: vec!["internal".into()],
            token_ttl: Some(3600),
            ..Default::default()
        })
        .await;
    (c, s.unwrap())
}

async fn jwks(t: &TestApp, issuer: &str) -> Vec<Value> {
    let r = t.get(&format!("/issuers/{issuer}/jwks.json")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["keys"].as_array().unwrap().clone()
}

async fn kids(t: &TestApp, issuer: &str) -> HashSet<String> {
    jwks(t, issuer)
        .await
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect()
}

fn kid_of(token: &str) -> String {
    header_of(token)["kid"].as_str().unwrap().to_string()
}

/// Verifies a service token with a stock JWT library against the JWKS as
/// served right now.
async fn verifies_against_published_jwks(t: &TestApp, token: &str) -> bool {
    let kid = decode_header(token).unwrap().kid.unwrap();
    let keys = jwks(t, "service").await;
    let Some(jwk) = keys.iter().find(|k| k["kid"] == kid.as_str()) else {
        return false;
    };
    let key =
        DecodingKey::from_ec_components(jwk["x"].as_str().unwrap(), jwk["y"].as_str().unwrap())
            .unwrap();
    let mut v = Validation::new(Algorithm::ES256);
    v.set_audience(&["internal"]);
    v.set_issuer(&[format!("{}/issuers/service", t.base)]);
    decode::<Value>(token, &key, &v).is_ok()
}

async fn introspect(t: &TestApp, caller: &(Client, String), token: &str) -> Reply {
    let r = t
        .post_form(
            "/oauth2/introspect",
            Some((&caller.0.client_id, &caller.1)),
            &[("token", token)],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r
}

#[tokio::test]
async fn rotated_key_is_published_before_it_signs() {
    let t = TestApp::start().await;
    let (c, secret) = hour_client(&t).await;
    let old_kid = kid_of(&t.service_token(&c, &secret, &[]).await);
    assert_eq!(kids(&t, "service").await, HashSet::from([old_kid.clone()]));

    let new_kid = rotate_service_key(&t);
    assert_ne!(new_kid, old_kid);
    assert_eq!(
        kids(&t, "service").await,
        HashSet::from([old_kid.clone(), new_kid.clone()]),
        "next key published at once"
    );
    assert_eq!(
        kid_of(&t.service_token(&c, &secret, &[]).await),
        old_kid,
        "but it does not sign yet"
    );

    t.clock.advance(DELAY - 1);
    assert_eq!(kid_of(&t.service_token(&c, &secret, &[]).await), old_kid);
    t.clock.advance(1);
    let fresh = t.service_token(&c, &secret, &[]).await;
    assert_eq!(
        kid_of(&fresh),
        new_kid,
        "the next key signs after the rotation delay"
    );
    assert!(verifies_against_published_jwks(&t, &fresh).await);

    // The key file is the owner's alone, and no private part is ever published.
    let file = t.dir.path().join(format!("keys/service/{new_kid}.json"));
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    for k in jwks(&t, "service").await {
        for private in ["d", "p", "q", "dp", "dq", "qi", "private_key_pem"] {
            assert!(k.get(private).is_none(), "{private} published: {k}");
        }
    }
}

#[tokio::test]
async fn tokens_of_the_previous_key_still_verify_after_the_next_key_takes_over() {
    let t = TestApp::start().await;
    let caller = t.client("acme", &["internal"], &[]).await;
    let (c, secret) = hour_client(&t).await;
    let old = t.service_token(&c, &secret, &[]).await;
    // Checked once before the rotation, so a verified-token cache is warm too.
    assert_eq!(t.authz("GET", "/internal/x", Some(&old)).await.status, 200);

    let new_kid = rotate_service_key(&t);
    t.clock.advance(DELAY);
    let new = t.service_token(&c, &secret, &[]).await;
    assert_eq!(kid_of(&new), new_kid);
    assert_ne!(kid_of(&old), new_kid);

    for token in [&old, &new] {
        let r = t.authz("GET", "/internal/x", Some(token)).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.header("x-tessera-subject"), Some(c.client_id.as_str()));
        assert_eq!(introspect(&t, &caller, token).await.body["active"], true);
        assert!(
            verifies_against_published_jwks(&t, token).await,
            "a verifier using the JWKS agrees"
        );
    }

    // Until the old token's own expiry.
    t.clock.advance(3600 - DELAY - 1);
    assert_eq!(t.authz("GET", "/internal/x", Some(&old)).await.status, 200);
    assert_eq!(introspect(&t, &caller, &old).await.body["active"], true);
}

#[tokio::test]
async fn retired_key_leaves_the_jwks_after_its_grace_and_its_tokens_are_refused() {
    let t = TestApp::start().await;
    let caller = t.client("acme", &["internal"], &[]).await;
    let (c, secret) = hour_client(&t).await;
    let t0 = t.clock.now();
    let old = t.service_token(&c, &secret, &[]).await;
    let old_kid = kid_of(&old);
    // A token of the old key that would outlive the key's grace: only the
    // key's retirement can refuse it then.
    let mut claims = tessera::issuer::AccessClaims {
        iss: t.app().issuers.service.iss.clone(),
        sub: c.client_id.clone(),
        aud: vec!["internal".into()],
        exp: t0 + 86_400,
        iat: t0,
        nbf: None,
        jti: uuid::Uuid::new_v4().to_string(),
        client_id: c.client_id.clone(),
        scope: String::new(),
        principal: Principal::Service,
        tenant: "acme".into(),
        groups: Vec::new(),
        act: None,
        may_act: None,
    };
    let outliving = t.app().issuers.service.mint(&claims).unwrap();
    assert_eq!(kid_of(&outliving), old_kid);
    assert_eq!(
        t.authz("GET", "/internal/x", Some(&outliving)).await.status,
        200,
        "cached as verified"
    );

    let new_kid = rotate_service_key(&t);
    t.clock.advance(DELAY + grace(&t) - 1);
    // Last second of the grace: still published, still verifying.
    assert_eq!(
        kids(&t, "service").await,
        HashSet::from([old_kid.clone(), new_kid.clone()])
    );
    assert_eq!(
        t.authz("GET", "/internal/x", Some(&outliving)).await.status,
        200
    );
    let r = t.authz("GET", "/internal/x", Some(&old)).await;
    assert_eq!(
        (r.status, r.body["reason"].as_str()),
        (401, Some("token_expired")),
        "the hour token has simply expired"
    );

    t.clock.advance(1);
    assert_eq!(
        kids(&t, "service").await,
        HashSet::from([new_kid.clone()]),
        "retired key left the JWKS"
    );
    for token in [&outliving, &old] {
        let r = t.authz("GET", "/internal/x", Some(token)).await;
        assert_eq!(
            (
                r.status,
                r.body["error"].as_str(),
                r.body["reason"].as_str()
            ),
            (401, Some("invalid_token"), Some("unknown_key"))
        );
        let rec = t.audit().await.pop().unwrap().record;
        assert_eq!(
            (rec.event.as_str(), rec.decision.as_str()),
            ("ext_authz", "deny")
        );
        assert!(rec.reason.starts_with("unknown_key"), "{rec:?}");

        let r = introspect(&t, &caller, token).await;
        assert_eq!(r.body, serde_json::json!({"active": false}));
        let rec = t.audit().await.pop().unwrap().record;
        assert_eq!(
            (rec.event.as_str(), rec.decision.as_str()),
            ("introspection", "deny")
        );
        assert!(rec.reason.starts_with("inactive: unknown_key"), "{rec:?}");
        assert!(!verifies_against_published_jwks(&t, token).await);
    }

    // The new key keeps signing; a fresh token is fine.
    claims.iat = t.clock.now();
    claims.exp = claims.iat + 300;
    claims.jti = uuid::Uuid::new_v4().to_string();
    let fresh = t.app().issuers.service.mint(&claims).unwrap();
    assert_eq!(kid_of(&fresh), new_kid);
    assert_eq!(
        t.authz("GET", "/internal/x", Some(&fresh)).await.status,
        200
    );
}

#[tokio::test]
async fn human_and_service_issuers_publish_disjoint_key_sets() {
    let t = TestApp::start().await;
    let public_parts = |keys: &[Value]| -> HashSet<String> {
        keys.iter()
            .map(|k| format!("{}|{}", k["x"], k["y"]))
            .collect()
    };
    let (human, service) = (jwks(&t, "human").await, jwks(&t, "service").await);
    assert!(!human.is_empty() && !service.is_empty());
    assert!(kids(&t, "human")
        .await
        .is_disjoint(&kids(&t, "service").await));
    assert!(
        public_parts(&human).is_disjoint(&public_parts(&service)),
        "not the same key under two kids"
    );

    rotate_service_key(&t);
    let service = jwks(&t, "service").await;
    assert_eq!(service.len(), 2);
    assert_eq!(
        jwks(&t, "human").await,
        human,
        "rotating one issuer leaves the other alone"
    );
    assert!(kids(&t, "human")
        .await
        .is_disjoint(&kids(&t, "service").await));
    assert!(public_parts(&human).is_disjoint(&public_parts(&service)));

    // Each discovery document points at its own JWKS.
    for issuer in ["human", "service"] {
        let d = t
            .get(&format!(
                "/issuers/{issuer}/.well-known/openid-configuration"
            ))
            .await;
        assert_eq!(d.body["issuer"], format!("{}/issuers/{issuer}", t.base));
        assert_eq!(
            d.body["jwks_uri"],
            format!("{}/issuers/{issuer}/jwks.json", t.base)
        );
    }
}

#[tokio::test]
async fn token_signed_by_one_issuer_claiming_the_other_is_refused() {
    let t = TestApp::start().await;
    let caller = t.client("acme", &["internal"], &[]).await;
    let service_iss = t.app().issuers.service.iss.clone();
    let human_iss = t.app().issuers.human.iss.clone();

    // Human key, service identity: must not reach /internal.
    let mut as_service = t.human_claims("svc-impersonator", "internal", "");
    as_service.iss = service_iss.clone();
    as_service.principal = Principal::Service;
    let forged = t.app().issuers.human.mint(&as_service).unwrap();
    assert!(kids(&t, "human").await.contains(&kid_of(&forged)));
    assert_eq!(
        introspect(&t, &caller, &forged).await.body,
        serde_json::json!({"active": false})
    );
    assert!(t
        .audit()
        .await
        .pop()
        .unwrap()
        .record
        .reason
        .starts_with("inactive: wrong_issuer"));
    let r = t.authz("GET", "/internal/x", Some(&forged)).await;
    assert_eq!(
        (
            r.status,
            r.body["error"].as_str(),
            r.body["reason"].as_str()
        ),
        (401, Some("invalid_token"), Some("wrong_issuer"))
    );
    assert!(t
        .audit()
        .await
        .pop()
        .unwrap()
        .record
        .reason
        .starts_with("wrong_issuer"));

    // Human key and human iss, but principal service.
    let mut principal_only = t.human_claims("svc-impersonator", "internal", "");
    principal_only.principal = Principal::Service;
    let forged = t.app().issuers.human.mint(&principal_only).unwrap();
    let r = t.authz("GET", "/internal/x", Some(&forged)).await;
    assert_eq!(
        (r.status, r.body["reason"].as_str()),
        (401, Some("wrong_issuer"))
    );

    // Service key, human identity: must not reach /api.
    let mut as_human = t.human_claims("alice", "api", "");
    as_human.iss = human_iss;
    let forged = t.app().issuers.service.mint(&as_human).unwrap();
    assert!(kids(&t, "service").await.contains(&kid_of(&forged)));
    assert_eq!(
        introspect(&t, &caller, &forged).await.body,
        serde_json::json!({"active": false})
    );
    let r = t.authz("GET", "/api/x", Some(&forged)).await;
    assert_eq!(
        (r.status, r.body["reason"].as_str()),
        (401, Some("wrong_issuer"))
    );

    // The genuine articles pass.
    let (c, s) = t.client("acme", &["internal"], &[]).await;
    assert_eq!(
        t.authz(
            "GET",
            "/internal/x",
            Some(&t.service_token(&c, &s, &[]).await)
        )
        .await
        .status,
        200
    );
    assert_eq!(
        t.authz("GET", "/api/x", Some(&t.human_token("alice", "api", "")))
            .await
            .status,
        200
    );
}
