//! RFC 8693 token exchange: a data product exchanges a person's token
//! (from the trusted IdP or Tessera's human issuer) for a delegated token
//! from the human issuer, with `act` naming the product.

use serde_json::{json, Value};
use tessera::registry::{add_delegation, NewDelegation};

use crate::harness::{claims_of, TestApp};
use crate::idp::TestIdp;

pub const GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
pub const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
pub const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";

/// A Tessera trusting `idp` as "corp" (people) whose users hold
/// `reports:read` through the `analysts` group.
pub async fn start_with(idp: &TestIdp) -> TestApp {
    TestApp::builder()
        .config(&idp.config(
            "corp",
            "human",
            "refresh_min_interval = \"1s\"\n[trusted_issuers.group_scopes]\nanalysts = [\"reports:read\"]",
        ))
        .start()
        .await
}

/// A registered data product allowed to act for users on `audience` with `scopes`.
pub async fn product(t: &TestApp, audience: &str, scopes: &[&str]) -> (String, String) {
    let (client, secret) = t.client("acme", &["internal"], &["svc:own"]).await;
    let app = t.app();
    add_delegation(
        app.store.as_ref(),
        NewDelegation {
            client_id: client.client_id.clone(),
            audiences: vec![audience.into()],
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        },
        app.clock.now(),
    )
    .await
    .unwrap();
    (client.client_id, secret)
}

pub async fn exchange(
    t: &TestApp,
    (id, secret): (&str, &str),
    extra: &[(&str, &str)],
) -> crate::harness::Reply {
    let mut form = vec![("grant_type", GRANT)];
    form.extend_from_slice(extra);
    t.post_form("/oauth2/token", Some((id, secret)), &form).await
}

/// Verifies a human-issuer token with a stock JWT library and the
/// published JWKS.
pub async fn verify_human(t: &TestApp, token: &str, aud: &str) -> Value {
    let jwks: jsonwebtoken::jwk::JwkSet = t
        .http
        .get(format!("{}/issuers/human/jwks.json", t.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let header = jsonwebtoken::decode_header(token).unwrap();
    let jwk = jwks.find(header.kid.as_deref().unwrap()).expect("kid published");
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let mut v = jsonwebtoken::Validation::new(header.alg);
    v.set_audience(&[aud]);
    v.set_issuer(&[format!("{}/issuers/human", t.base)]);
    jsonwebtoken::decode::<Value>(token, &key, &v)
        .expect("verifies with the human issuer's JWKS")
        .claims
}

#[tokio::test]
async fn an_id_token_from_the_trusted_idp_becomes_a_delegated_human_token() {
    let idp = TestIdp::start().await;
    let t = start_with(&idp).await;
    let (id, secret) = product(&t, "api", &["reports:read", "reports:write"]).await;
    let user = idp.id_token("alice", json!({"groups": ["analysts"]}));
    let r = exchange(
        &t,
        (&id, &secret),
        &[
            ("subject_token", &user),
            ("subject_token_type", ID_TOKEN),
            ("audience", "api"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["issued_token_type"], ACCESS_TOKEN);
    assert_eq!(r.body["token_type"], "Bearer");
    // The user holds reports:read only; the delegation's reports:write is not lent.
    assert_eq!(r.body["scope"], "reports:read");
    let token = r.body["access_token"].as_str().unwrap();
    let claims = verify_human(&t, token, "api").await;
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["tenant"], "acme");
    assert_eq!(claims["principal"], "human");
    assert_eq!(claims["client_id"], id.as_str());
    assert_eq!(claims["act"], json!({"sub": id}));
    assert_eq!(claims["scope"], "reports:read");
    assert!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap() <= 300);

    // Introspection shows the delegation.
    let (other, other_secret) = t.client("acme", &["internal"], &[]).await;
    let i = t
        .post_form(
            "/oauth2/introspect",
            Some((&other.client_id, &other_secret)),
            &[("token", token)],
        )
        .await;
    assert_eq!(i.body["active"], true, "{}", i.text);
    assert_eq!(i.body["act"], json!({"sub": id}));

    // And the audit record names the user, the actor and the upstream issuer.
    let audit = t.audit().await;
    let rec = audit
        .iter()
        .rev()
        .find(|r| r.record.event == "token_exchange")
        .unwrap();
    assert_eq!(rec.record.decision, "allow");
    assert_eq!(rec.record.subject.as_deref(), Some("alice"));
    assert_eq!(rec.record.client_id.as_deref(), Some(id.as_str()));
    assert_eq!(rec.record.actor.as_deref(), Some(id.as_str()));
    assert_eq!(rec.record.upstream_issuer.as_deref(), Some("corp"));
    assert_eq!(rec.record.audience.as_deref(), Some("api"));
    assert_eq!(rec.record.scopes.as_deref(), Some("reports:read"));
    assert!(rec.record.policy_version.is_some());
    assert_eq!(claims_of(token)["jti"], rec.record.jti.clone().unwrap().as_str());
}
