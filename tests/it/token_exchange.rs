//! RFC 8693 token exchange: a data product exchanges a person's token
//! (from the trusted IdP or Tessera's human issuer) for a delegated token
//! from the human issuer, with `act` naming the product.

use serde_json::{json, Value};
use tessera::registry::{add_delegation, NewDelegation};

use crate::harness::{claims_of, TestApp};
use crate::idp::{Mode, TestIdp};

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
    delegate(
        t,
        NewDelegation {
            client_id: client.client_id.clone(),
            audiences: vec![audience.into()],
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        },
    )
    .await;
    (client.client_id, secret)
}

pub async fn exchange(
    t: &TestApp,
    (id, secret): (&str, &str),
    extra: &[(&str, &str)],
) -> crate::harness::Reply {
    let mut form = vec![("grant_type", GRANT)];
    form.extend_from_slice(extra);
    t.post_form("/oauth2/token", Some((id, secret)), &form)
        .await
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
    let jwk = jwks
        .find(header.kid.as_deref().unwrap())
        .expect("kid published");
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
    assert_eq!(
        claims_of(token)["jti"],
        rec.record.jti.clone().unwrap().as_str()
    );
}

// ---------------------------------------------------------------------------
// Helpers for the tests below.

/// A registered client of tenant `acme` with one delegation for
/// `audience`/`scopes`, naming `actors` and expiring at `expires_at`.
async fn delegated_client(
    t: &TestApp,
    audience: &str,
    scopes: &[&str],
    actors: &[&str],
    expires_at: Option<i64>,
) -> (tessera::store::Client, String) {
    let (client, secret) = t.client("acme", &["internal"], &["svc:own"]).await;
    delegate(
        t,
        NewDelegation {
            client_id: client.client_id.clone(),
            audiences: vec![audience.into()],
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            actors: actors.iter().map(|s| s.to_string()).collect(),
            expires_at,
            ..Default::default()
        },
    )
    .await;
    (client, secret)
}

/// Registers one more delegation.
async fn delegate(t: &TestApp, d: NewDelegation) {
    let app = t.app();
    add_delegation(app.store.as_ref(), d, app.clock.now())
        .await
        .unwrap();
}

/// `start_with`, then waits (at most 5 s) until the IdP's keys are cached,
/// so that a test about token checks is not answered 503 by the key cache
/// (see `an_exchange_during_the_first_key_fetch_waits_for_it_instead_of_503`).
async fn start_with_keys(idp: &TestIdp) -> TestApp {
    wait_for_keys(start_with(idp).await).await
}

/// Waits (at most 5 s) until the keys of the trusted issuer "corp" are cached.
async fn wait_for_keys(t: TestApp) -> TestApp {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let app = t.app();
        let status = app
            .trusted
            .by_name("corp")
            .expect("corp is configured")
            .keys
            .status(app.clock.now_millis());
        if status.usable {
            return t;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the IdP's keys were not fetched within 5 s: {status:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// The newest `token_exchange` audit record.
async fn last_exchange_record(t: &TestApp) -> tessera::audit::AuditRecord {
    t.audit()
        .await
        .into_iter()
        .rev()
        .find(|r| r.record.event == "token_exchange")
        .expect("a token_exchange audit record")
        .record
}

/// Asserts an OAuth error response with `status` and `error`.
fn assert_error(r: &crate::harness::Reply, status: u16, error: &str) {
    assert_eq!(r.status, status, "{}", r.text);
    assert_eq!(r.error(), error, "{}", r.text);
}

/// Asserts that the newest exchange record is a refusal with `code`.
async fn assert_denied_audit(t: &TestApp, code: &str) -> tessera::audit::AuditRecord {
    let rec = last_exchange_record(t).await;
    assert_eq!(rec.decision, "deny", "{rec:?}");
    assert!(
        rec.reason.starts_with(&format!("{code}: ")) && rec.reason.len() > code.len() + 2,
        "reason {:?} should be \"{code}: <description>\"",
        rec.reason
    );
    rec
}

fn scope_set(s: &Value) -> std::collections::BTreeSet<String> {
    s.as_str()
        .unwrap_or_default()
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn set(items: &[&str]) -> std::collections::BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// A compact JWS with the given header and claims and an arbitrary
/// signature part (for tokens no real library would sign).
fn raw_jws(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        crate::harness::b64(header.to_string().as_bytes()),
        crate::harness::b64(claims.to_string().as_bytes()),
    )
}

/// Claims of an RFC 9068 access token from `idp` for `sub`, as
/// `TestIdp::access_token` makes them.
fn idp_access_claims(idp: &TestIdp, sub: &str, scope: &str) -> Value {
    let mut c = idp.claims(sub, "tessera");
    c["tenant"] = "acme".into();
    c["scope"] = scope.into();
    c["client_id"] = "portal".into();
    c
}

/// Exchanges a subject token of `ty` for audience `api`.
async fn exchange_for_api(
    t: &TestApp,
    creds: (&str, &str),
    subject: &str,
    ty: &str,
) -> crate::harness::Reply {
    exchange(
        t,
        creds,
        &[
            ("subject_token", subject),
            ("subject_token_type", ty),
            ("audience", "api"),
        ],
    )
    .await
}

// ---------------------------------------------------------------------------
// 1. Tessera human-issuer subject tokens.

#[tokio::test]
async fn a_tessera_human_token_declared_as_access_token_is_exchanged() {
    let t = TestApp::start().await;
    let (id, secret) = product(&t, "api", &["reports:read", "reports:write"]).await;
    let user = t.human_token("alice", "portal", "reports:read profile");
    let r = exchange_for_api(&t, (&id, &secret), &user, ACCESS_TOKEN).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["issued_token_type"], ACCESS_TOKEN);
    assert_eq!(r.body["token_type"], "Bearer");
    assert_eq!(r.body["scope"], "reports:read");
    let token = r.body["access_token"].as_str().unwrap();
    let claims = verify_human(&t, token, "api").await;
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["tenant"], "acme");
    assert_eq!(claims["principal"], "human");
    assert_eq!(claims["client_id"], id.as_str());
    assert_eq!(claims["act"], json!({"sub": id}));
    assert_eq!(claims["scope"], "reports:read");

    let rec = last_exchange_record(&t).await;
    assert_eq!(rec.decision, "allow");
    assert_eq!(rec.subject.as_deref(), Some("alice"));
    assert_eq!(rec.actor.as_deref(), Some(id.as_str()));
    assert_eq!(rec.upstream_issuer, None);
}

#[tokio::test]
async fn a_tessera_human_token_declared_as_jwt_is_exchanged() {
    let t = TestApp::start().await;
    let (id, secret) = product(&t, "api", &["reports:read"]).await;
    let user = t.human_token("alice", "portal", "reports:read");
    let r = exchange_for_api(&t, (&id, &secret), &user, JWT).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["issued_token_type"], ACCESS_TOKEN);
    assert_eq!(r.body["scope"], "reports:read");
    let claims = verify_human(&t, r.body["access_token"].as_str().unwrap(), "api").await;
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["act"], json!({"sub": id}));
}

// ---------------------------------------------------------------------------
// 2. RFC 9068 access tokens from the trusted IdP.

#[tokio::test]
async fn an_idp_access_token_is_exchanged_for_asked_scope_within_delegation_and_user_scopes() {
    let idp = TestIdp::start().await;
    let t = start_with_keys(&idp).await;
    let (id, secret) = product(
        &t,
        "api",
        &["reports:read", "reports:write", "reports:export"],
    )
    .await;
    // alice holds read, export and profile; the delegation allows read,
    // write and export.
    let user = idp.access_token("alice", "reports:read reports:export profile", json!({}));

    // Nothing asked: delegation ∩ held.
    let r = exchange_for_api(&t, (&id, &secret), &user, ACCESS_TOKEN).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        scope_set(&r.body["scope"]),
        set(&["reports:read", "reports:export"])
    );
    let claims = verify_human(&t, r.body["access_token"].as_str().unwrap(), "api").await;
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["act"], json!({"sub": id}));
    assert_eq!(
        scope_set(&claims["scope"]),
        set(&["reports:read", "reports:export"])
    );
    let rec = last_exchange_record(&t).await;
    assert_eq!(rec.decision, "allow");
    assert_eq!(rec.upstream_issuer.as_deref(), Some("corp"));

    // Asked for read only: asked ∩ delegation ∩ held = read.
    let r = exchange(
        &t,
        (&id, &secret),
        &[
            ("subject_token", &user),
            ("subject_token_type", ACCESS_TOKEN),
            ("audience", "api"),
            ("scope", "reports:read"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["scope"], "reports:read");
    let claims = verify_human(&t, r.body["access_token"].as_str().unwrap(), "api").await;
    assert_eq!(claims["scope"], "reports:read");
}

// ---------------------------------------------------------------------------
// 3. Nested `act` and the delegation depth limit.

#[tokio::test]
async fn an_act_on_the_subject_token_is_nested_under_the_new_actor() {
    let t = TestApp::start().await;
    let (id, secret) = product(&t, "api", &["reports:read"]).await;
    let mut claims = t.human_claims("alice", "portal", "reports:read");
    claims.act = Some(json!({"sub": "first"}));
    // A delegated token is carried further only by the client holding it.
    claims.client_id = id.clone();
    let user = t.app().issuers.human.mint(&claims).unwrap();
    let r = exchange_for_api(&t, (&id, &secret), &user, ACCESS_TOKEN).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let out = verify_human(&t, r.body["access_token"].as_str().unwrap(), "api").await;
    assert_eq!(out["act"], json!({"sub": id, "act": {"sub": "first"}}));
    let rec = last_exchange_record(&t).await;
    assert_eq!(rec.decision, "allow");
    assert_eq!(rec.actor, Some(format!("{id} first")));
}

#[tokio::test]
async fn a_chain_at_max_delegation_depth_passes_and_one_beyond_is_invalid_grant() {
    let t = TestApp::builder()
        .config("[oauth]\nmax_delegation_depth = 2")
        .start()
        .await;
    let (id, secret) = product(&t, "api", &["reports:read"]).await;

    // One actor already: the new chain is product → first (2 actors).
    let mut claims = t.human_claims("alice", "portal", "reports:read");
    claims.act = Some(json!({"sub": "first"}));
    // A delegated token is carried further only by the client holding it.
    claims.client_id = id.clone();
    let at_limit = t.app().issuers.human.mint(&claims).unwrap();
    let r = exchange_for_api(&t, (&id, &secret), &at_limit, ACCESS_TOKEN).await;
    assert_eq!(r.status, 200, "{}", r.text);

    // Two actors already: product → first → zeroth (3 actors) is too deep.
    let mut claims = t.human_claims("alice", "portal", "reports:read");
    claims.act = Some(json!({"sub": "first", "act": {"sub": "zeroth"}}));
    claims.client_id = id.clone();
    let too_deep = t.app().issuers.human.mint(&claims).unwrap();
    let r = exchange_for_api(&t, (&id, &secret), &too_deep, ACCESS_TOKEN).await;
    assert_error(&r, 400, "invalid_grant");
    assert!(
        r.text.contains("delegation chain would be longer than 2"),
        "{}",
        r.text
    );
    let rec = assert_denied_audit(&t, "invalid_grant").await;
    assert_eq!(rec.subject.as_deref(), Some("alice"));
    assert_eq!(rec.actor, Some(format!("{id} first zeroth")));
}

#[tokio::test]
async fn an_upstream_act_counts_toward_the_delegation_depth() {
    let idp = TestIdp::start().await;
    let t = TestApp::builder()
        .config(&idp.config(
            "corp",
            "human",
            "refresh_min_interval = \"1s\"\n[oauth]\nmax_delegation_depth = 2",
        ))
        .start()
        .await;
    let t = wait_for_keys(t).await;
    let (id, secret) = product(&t, "api", &["reports:read"]).await;
    let one = idp.access_token("alice", "reports:read", json!({"act": {"sub": "gw"}}));
    let r = exchange_for_api(&t, (&id, &secret), &one, ACCESS_TOKEN).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let two = idp.access_token(
        "alice",
        "reports:read",
        json!({"act": {"sub": "gw", "act": {"sub": "edge"}}}),
    );
    let r = exchange_for_api(&t, (&id, &secret), &two, ACCESS_TOKEN).await;
    assert_error(&r, 400, "invalid_grant");
    assert!(r.text.contains("delegation chain"), "{}", r.text);
}

// ---------------------------------------------------------------------------
// 4. may_act (RFC 8693 §4.4).

fn service_iss(t: &TestApp) -> String {
    format!("{}/issuers/service", t.base)
}

#[tokio::test]
async fn may_act_naming_the_client_allows_the_exchange_and_is_carried_on() {
    let idp = TestIdp::start().await;
    let t = start_with_keys(&idp).await;
    let (id, secret) = product(&t, "api", &["reports:read"]).await;
    let may_act = json!({"sub": id, "iss": service_iss(&t)});
    let user = idp.access_token("alice", "reports:read", json!({ "may_act": may_act }));
    let r = exchange_for_api(&t, (&id, &secret), &user, ACCESS_TOKEN).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let claims = verify_human(&t, r.body["access_token"].as_str().unwrap(), "api").await;
    assert_eq!(claims["act"], json!({"sub": id}));
    // It binds the next exchange of the delegated token too.
    assert_eq!(claims["may_act"], may_act);
}

#[tokio::test]
async fn may_act_of_an_idp_without_iss_names_the_idp_s_client_not_ours() {
    let idp = TestIdp::start().await;
    let t = start_with_keys(&idp).await;
    let (id, secret) = product(&t, "api", &["reports:read"]).await;
    // `sub` alone is in the IdP's namespace: its client "<id>" is not ours.
    let user = idp.access_token("alice", "reports:read", json!({"may_act": {"sub": id}}));
    let r = exchange_for_api(&t, (&id, &secret), &user, ACCESS_TOKEN).await;
    assert_error(&r, 400, "invalid_grant");
    assert!(r.text.contains("may_act"), "{}", r.text);
    let other_iss = idp.access_token(
        "alice",
        "reports:read",
        json!({"may_act": {"sub": id, "iss": idp.issuer}}),
    );
    let r = exchange_for_api(&t, (&id, &secret), &other_iss, ACCESS_TOKEN).await;
    assert_error(&r, 400, "invalid_grant");
}

#[tokio::test]
async fn may_act_on_a_tessera_token_is_enforced() {
    let t = TestApp::start().await;
    let (id, secret) = product(&t, "api", &["reports:read"]).await;
    let mut claims = t.human_claims("alice", "portal", "reports:read");
    claims.may_act = Some(json!({"sub": "someone-else"}));
    let refused = t.app().issuers.human.mint(&claims).unwrap();
    let r = exchange_for_api(&t, (&id, &secret), &refused, ACCESS_TOKEN).await;
    assert_error(&r, 400, "invalid_grant");
    assert!(r.text.contains("may_act"), "{}", r.text);
    claims.may_act = Some(json!([{"sub": "someone-else"}, {"sub": id}]));
    let allowed = t.app().issuers.human.mint(&claims).unwrap();
    let r = exchange_for_api(&t, (&id, &secret), &allowed, ACCESS_TOKEN).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn may_act_naming_someone_else_is_invalid_grant() {
    let idp = TestIdp::start().await;
    let t = start_with_keys(&idp).await;
    let (id, secret) = product(&t, "api", &["reports:read"]).await;
    let user = idp.access_token(
        "alice",
        "reports:read",
        json!({"may_act": {"sub": "someone-else"}}),
    );
    let r = exchange_for_api(&t, (&id, &secret), &user, ACCESS_TOKEN).await;
    assert_error(&r, 400, "invalid_grant");
    assert_denied_audit(&t, "invalid_grant").await;
}

// ---------------------------------------------------------------------------
// 5. actor_token.

async fn exchange_with_actor(
    t: &TestApp,
    creds: (&str, &str),
    subject: &str,
    actor: &str,
    actor_type: Option<&str>,
) -> crate::harness::Reply {
    let mut form = vec![
        ("subject_token", subject),
        ("subject_token_type", ACCESS_TOKEN),
        ("audience", "api"),
        ("actor_token", actor),
    ];
    if let Some(ty) = actor_type {
        form.push(("actor_token_type", ty));
    }
    exchange(t, creds, &form).await
}

#[tokio::test]
async fn the_clients_own_service_token_as_actor_token_is_accepted() {
    let t = TestApp::start().await;
    let (client, secret) = delegated_client(&t, "api", &["reports:read"], &[], None).await;
    let actor = t.service_token(&client, &secret, &[]).await;
    let user = t.human_token("alice", "portal", "reports:read");
    let r = exchange_with_actor(
        &t,
        (&client.client_id, &secret),
        &user,
        &actor,
        Some(ACCESS_TOKEN),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let claims = verify_human(&t, r.body["access_token"].as_str().unwrap(), "api").await;
    assert_eq!(claims["act"]["sub"], client.client_id.as_str());
    assert_eq!(claims["client_id"], client.client_id.as_str());
}

#[tokio::test]
async fn another_clients_service_token_as_actor_token_is_invalid_grant() {
    let t = TestApp::start().await;
    let (client, secret) = delegated_client(&t, "api", &["reports:read"], &[], None).await;
    let (other, other_secret) = t.client("acme", &["internal"], &[]).await;
    let actor = t.service_token(&other, &other_secret, &[]).await;
    let user = t.human_token("alice", "portal", "reports:read");
    let r = exchange_with_actor(
        &t,
        (&client.client_id, &secret),
        &user,
        &actor,
        Some(ACCESS_TOKEN),
    )
    .await;
    assert_error(&r, 400, "invalid_grant");
    assert_denied_audit(&t, "invalid_grant").await;
}

#[tokio::test]
async fn another_clients_service_token_is_accepted_when_the_delegation_names_it_as_actor() {
    let t = TestApp::start().await;
    let (other, other_secret) = t.client("acme", &["internal"], &[]).await;
    let (client, secret) =
        delegated_client(&t, "api", &["reports:read"], &[&other.client_id], None).await;
    let actor = t.service_token(&other, &other_secret, &[]).await;
    let user = t.human_token("alice", "portal", "reports:read");
    let r = exchange_with_actor(
        &t,
        (&client.client_id, &secret),
        &user,
        &actor,
        Some(ACCESS_TOKEN),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let claims = verify_human(&t, r.body["access_token"].as_str().unwrap(), "api").await;
    assert_eq!(claims["act"], json!({"sub": other.client_id}));
    assert_eq!(claims["client_id"], client.client_id.as_str());
    let rec = last_exchange_record(&t).await;
    assert_eq!(rec.decision, "allow");
    assert_eq!(rec.actor.as_deref(), Some(other.client_id.as_str()));
}

#[tokio::test]
async fn actor_token_without_actor_token_type_is_invalid_request() {
    let t = TestApp::start().await;
    let (client, secret) = delegated_client(&t, "api", &["reports:read"], &[], None).await;
    let actor = t.service_token(&client, &secret, &[]).await;
    let user = t.human_token("alice", "portal", "reports:read");
    let r = exchange_with_actor(&t, (&client.client_id, &secret), &user, &actor, None).await;
    assert_error(&r, 400, "invalid_request");
    assert_denied_audit(&t, "invalid_request").await;
}

#[tokio::test]
async fn a_human_token_as_actor_token_is_invalid_grant() {
    let t = TestApp::start().await;
    let (client, secret) = delegated_client(&t, "api", &["reports:read"], &[], None).await;
    let actor = t.human_token("bob", "portal", "reports:read");
    let user = t.human_token("alice", "portal", "reports:read");
    let r = exchange_with_actor(
        &t,
        (&client.client_id, &secret),
        &user,
        &actor,
        Some(ACCESS_TOKEN),
    )
    .await;
    assert_error(&r, 400, "invalid_grant");
}

// ---------------------------------------------------------------------------
// 6. Refusals.

#[tokio::test]
async fn a_token_from_an_untrusted_issuer_is_invalid_grant() {
    let idp = TestIdp::start().await;
    let stranger = TestIdp::start().await;
    let t = start_with_keys(&idp).await;
    let (id, secret) = product(&t, "api", &["reports:read"]).await;
    let user = stranger.access_token("alice", "reports:read", json!({}));
    let r = exchange_for_api(&t, (&id, &secret), &user, ACCESS_TOKEN).await;
    assert_error(&r, 400, "invalid_grant");
    assert_denied_audit(&t, "invalid_grant").await;
}

#[tokio::test]
async fn an_idp_token_for_another_audience_is_invalid_grant() {
    let idp = TestIdp::start().await;
    let t = start_with_keys(&idp).await;
    let (id, secret) = product(&t, "api", &["reports:read"]).await;
    let user = idp.access_token("alice", "reports:read", json!({"aud": "someone-else"}));
    let r = exchange_for_api(&t, (&id, &secret), &user, ACCESS_TOKEN).await;
    assert_error(&r, 400, "invalid_grant");
}

#[tokio::test]
async fn an_idp_token_expired_beyond_the_clock_skew_is_invalid_grant() {
    let idp = TestIdp::start().await;
    let t = start_with_keys(&idp).await;
    let (id, secret) = product(&t, "api", &["reports:read"]).await;
    let now = t.app().clock.now();
    let user = idp.access_token(
        "alice",
        "reports:read",
        json!({"iat": now - 600, "exp": now - 120}),
    );
    let r = exchange_for_api(&t, (&id, &secret), &user, ACCESS_TOKEN).await;
    assert_error(&r, 400, "invalid_grant");
    assert_denied_audit(&t, "invalid_grant").await;
}

#[tokio::test]
async fn an_unsigned_alg_none_token_is_invalid_grant() {
    let idp = TestIdp::start().await;
    let t = start_with_keys(&idp).await;
    let (id, secret) = product(&t, "api", &["reports:read"]).await;
    let user = raw_jws(
        &json!({"alg": "none", "typ": "at+jwt"}),
        &idp_access_claims(&idp, "alice", "reports:read"),
        "",
    );
    let r = exchange_for_api(&t, (&id, &secret), &user, ACCESS_TOKEN).await;
    assert_error(&r, 400, "invalid_grant");
}

#[tokio::test]
async fn an_hs256_token_is_invalid_grant() {
    let idp = TestIdp::start().await;
    let t = start_with_keys(&idp).await;
    let (id, secret) = product(&t, "api", &["reports:read"]).await;
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.typ = Some("at+jwt".into());
    header.kid = Some("idp-1".into());
    let user = jsonwebtoken::encode(
        &header,
        &idp_access_claims(&idp, "alice", "reports:read"),
        &jsonwebtoken::EncodingKey::from_secret(b"a shared secret nobody should trust"),
    )
    .unwrap();
    let r = exchange_for_api(&t, (&id, &secret), &user, ACCESS_TOKEN).await;
    assert_error(&r, 400, "invalid_grant");
}

#[tokio::test]
async fn a_token_with_a_tampered_signature_is_invalid_grant() {
    let idp = TestIdp::start().await;
    let t = start_with_keys(&idp).await;
    let (id, secret) = product(&t, "api", &["reports:read"]).await;
    let good = idp.access_token("alice", "reports:read", json!({}));
    // Flip one character in the middle of the signature (not the last one,
    // whose low bits may be padding).
    let (head, sig) = good.rsplit_once('.').unwrap();
    let mut sig: Vec<u8> = sig.as_bytes().to_vec();
    let mid = sig.len() / 2;
    sig[mid] = if sig[mid] == b'A' { b'B' } else { b'A' };
    let tampered = format!("{head}.{}", String::from_utf8(sig).unwrap());
    assert_ne!(tampered, good);
    let r = exchange_for_api(&t, (&id, &secret), &tampered, ACCESS_TOKEN).await;
    assert_error(&r, 400, "invalid_grant");
    // The untampered token is accepted, so the signature is what failed.
    let r = exchange_for_api(&t, (&id, &secret), &good, ACCESS_TOKEN).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn an_idp_id_token_declared_as_access_token_is_invalid_request() {
    let idp = TestIdp::start().await;
    let t = start_with_keys(&idp).await;
    let (id, secret) = product(&t, "api", &["reports:read"]).await;
    let user = idp.id_token("alice", json!({"groups": ["analysts"]}));
    let r = exchange_for_api(&t, (&id, &secret), &user, ACCESS_TOKEN).await;
    assert_error(&r, 400, "invalid_request");
    assert_denied_audit(&t, "invalid_request").await;
}

#[tokio::test]
async fn a_tessera_access_token_declared_as_id_token_is_invalid_request() {
    let t = TestApp::start().await;
    let (id, secret) = product(&t, "api", &["reports:read"]).await;
    let user = t.human_token("alice", "portal", "reports:read");
    let r = exchange_for_api(&t, (&id, &secret), &user, ID_TOKEN).await;
    assert_error(&r, 400, "invalid_request");
}

#[tokio::test]
async fn an_unknown_subject_token_type_is_invalid_request() {
    let t = TestApp::start().await;
    let (id, secret) = product(&t, "api", &["reports:read"]).await;
    let user = t.human_token("alice", "portal", "reports:read");
    let r = exchange_for_api(
        &t,
        (&id, &secret),
        &user,
        "urn:ietf:params:oauth:token-type:saml2",
    )
    .await;
    assert_error(&r, 400, "invalid_request");
    assert_denied_audit(&t, "invalid_request").await;
}

#[tokio::test]
async fn a_missing_subject_token_is_invalid_request() {
    let t = TestApp::start().await;
    let (id, secret) = product(&t, "api", &["reports:read"]).await;
    let r = exchange(
        &t,
        (&id, &secret),
        &[("subject_token_type", ACCESS_TOKEN), ("audience", "api")],
    )
    .await;
    assert_error(&r, 400, "invalid_request");
}

#[tokio::test]
async fn a_service_token_as_subject_token_is_invalid_grant() {
    let t = TestApp::start().await;
    let (client, secret) = delegated_client(&t, "api", &["reports:read"], &[], None).await;
    let service = t.service_token(&client, &secret, &[]).await;
    let r = exchange_for_api(&t, (&client.client_id, &secret), &service, ACCESS_TOKEN).await;
    assert_error(&r, 400, "invalid_grant");
    assert_denied_audit(&t, "invalid_grant").await;
}

#[tokio::test]
async fn a_client_without_a_delegation_is_unauthorized_client() {
    let t = TestApp::start().await;
    let (client, secret) = t.client("acme", &["internal"], &["svc:own"]).await;
    let user = t.human_token("alice", "portal", "reports:read");
    let r = exchange_for_api(&t, (&client.client_id, &secret), &user, ACCESS_TOKEN).await;
    assert_error(&r, 400, "unauthorized_client");
    let rec = assert_denied_audit(&t, "unauthorized_client").await;
    assert_eq!(rec.client_id.as_deref(), Some(client.client_id.as_str()));
}

#[tokio::test]
async fn a_scope_the_delegation_allows_but_the_user_does_not_hold_is_invalid_scope() {
    let t = TestApp::start().await;
    let (id, secret) = product(&t, "api", &["reports:read", "reports:write"]).await;
    let user = t.human_token("alice", "portal", "reports:read");
    let r = exchange(
        &t,
        (&id, &secret),
        &[
            ("subject_token", &user),
            ("subject_token_type", ACCESS_TOKEN),
            ("audience", "api"),
            ("scope", "reports:read reports:write"),
        ],
    )
    .await;
    assert_error(&r, 400, "invalid_scope");
    assert_denied_audit(&t, "invalid_scope").await;
}

#[tokio::test]
async fn a_scope_the_user_holds_but_the_delegation_does_not_allow_is_invalid_scope() {
    let t = TestApp::start().await;
    let (id, secret) = product(&t, "api", &["reports:read"]).await;
    let user = t.human_token("alice", "portal", "reports:read admin");
    let r = exchange(
        &t,
        (&id, &secret),
        &[
            ("subject_token", &user),
            ("subject_token_type", ACCESS_TOKEN),
            ("audience", "api"),
            ("scope", "admin"),
        ],
    )
    .await;
    assert_error(&r, 400, "invalid_scope");
}

#[tokio::test]
async fn an_audience_no_delegation_covers_is_invalid_target() {
    let t = TestApp::start().await;
    let (id, secret) = product(&t, "api", &["reports:read"]).await;
    let user = t.human_token("alice", "portal", "reports:read");
    let r = exchange(
        &t,
        (&id, &secret),
        &[
            ("subject_token", &user),
            ("subject_token_type", ACCESS_TOKEN),
            ("audience", "billing"),
            ("scope", "reports:read"),
        ],
    )
    .await;
    assert_error(&r, 400, "invalid_target");
    let rec = assert_denied_audit(&t, "invalid_target").await;
    // The refusal says what was asked, under which policy.
    assert_eq!(rec.audience.as_deref(), Some("billing"));
    assert_eq!(rec.scopes.as_deref(), Some("reports:read"));
    assert_eq!(
        rec.policy_version.as_deref(),
        Some(t.app().policy.current().version.as_str())
    );
    assert_eq!(rec.subject.as_deref(), Some("alice"));
}

#[tokio::test]
async fn no_audience_when_the_delegations_name_several_is_invalid_request() {
    let t = TestApp::start().await;
    let (client, secret) = delegated_client(&t, "api", &["reports:read"], &[], None).await;
    delegate(
        &t,
        NewDelegation {
            client_id: client.client_id.clone(),
            audiences: vec!["billing".into()],
            scopes: vec!["reports:read".into()],
            ..Default::default()
        },
    )
    .await;
    let user = t.human_token("alice", "portal", "reports:read");
    let r = exchange(
        &t,
        (&client.client_id, &secret),
        &[
            ("subject_token", &user),
            ("subject_token_type", ACCESS_TOKEN),
        ],
    )
    .await;
    assert_error(&r, 400, "invalid_request");
    assert!(r.text.contains("audience"), "{}", r.text);
    assert_denied_audit(&t, "invalid_request").await;
}

#[tokio::test]
async fn a_user_holding_none_of_the_delegated_scopes_is_invalid_scope() {
    let t = TestApp::start().await;
    let (id, secret) = product(&t, "api", &["reports:write"]).await;
    let user = t.human_token("alice", "portal", "reports:read");
    let r = exchange_for_api(&t, (&id, &secret), &user, ACCESS_TOKEN).await;
    assert_error(&r, 400, "invalid_scope");
    assert_denied_audit(&t, "invalid_scope").await;
}

#[tokio::test]
async fn an_actor_named_for_another_audience_may_not_act_for_this_one() {
    let t = TestApp::start().await;
    let (other, other_secret) = t.client("acme", &["internal"], &[]).await;
    // `other` may act beside the client for "billing" only.
    let (client, secret) =
        delegated_client(&t, "billing", &["reports:read"], &[&other.client_id], None).await;
    delegate(
        &t,
        NewDelegation {
            client_id: client.client_id.clone(),
            audiences: vec!["api".into()],
            scopes: vec!["reports:read".into()],
            ..Default::default()
        },
    )
    .await;
    let actor = t.service_token(&other, &other_secret, &[]).await;
    let user = t.human_token("alice", "portal", "reports:read");
    let r = exchange_with_actor(
        &t,
        (&client.client_id, &secret),
        &user,
        &actor,
        Some(ACCESS_TOKEN),
    )
    .await;
    assert_error(&r, 400, "invalid_grant");
    assert!(r.text.contains("may not act beside"), "{}", r.text);
    // For "billing" the same actor token is accepted.
    let r = exchange(
        &t,
        (&client.client_id, &secret),
        &[
            ("subject_token", &user),
            ("subject_token_type", ACCESS_TOKEN),
            ("audience", "billing"),
            ("actor_token", &actor),
            ("actor_token_type", ACCESS_TOKEN),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn an_actor_token_of_a_client_disabled_since_is_invalid_grant() {
    let t = TestApp::start().await;
    let (other, other_secret) = t.client("acme", &["internal"], &[]).await;
    let (client, secret) =
        delegated_client(&t, "api", &["reports:read"], &[&other.client_id], None).await;
    let actor = t.service_token(&other, &other_secret, &[]).await;
    let app = t.app();
    assert!(app
        .store
        .set_disabled(&other.client_id, true, app.clock.now())
        .await
        .unwrap());
    let user = t.human_token("alice", "portal", "reports:read");
    // The registry change reaches the client cache within its poll interval.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    let r = loop {
        let r = exchange_with_actor(
            &t,
            (&client.client_id, &secret),
            &user,
            &actor,
            Some(ACCESS_TOKEN),
        )
        .await;
        if r.status != 200 || std::time::Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_error(&r, 400, "invalid_grant");
    assert!(r.text.contains("disabled"), "{}", r.text);
}

#[tokio::test]
async fn an_oversized_actor_token_is_invalid_grant() {
    let t = TestApp::start().await;
    let (client, secret) = delegated_client(&t, "api", &["reports:read"], &[], None).await;
    let user = t.human_token("alice", "portal", "reports:read");
    let huge = format!(
        "{}.{}.{}",
        "e".repeat(6000),
        "e".repeat(6000),
        "e".repeat(100)
    );
    let r = exchange_with_actor(
        &t,
        (&client.client_id, &secret),
        &user,
        &huge,
        Some(ACCESS_TOKEN),
    )
    .await;
    assert_error(&r, 400, "invalid_grant");
    assert!(r.text.contains("actor_token"), "{}", r.text);
    assert_denied_audit(&t, "invalid_grant").await;
}

#[tokio::test]
async fn an_oversized_subject_token_is_invalid_grant() {
    let idp = TestIdp::start().await;
    let t = start_with_keys(&idp).await;
    let (id, secret) = product(&t, "api", &["reports:read"]).await;
    let user = idp.access_token("alice", "reports:read", json!({"pad": "x".repeat(9000)}));
    assert!(user.len() > 8 * 1024);
    let r = exchange_for_api(&t, (&id, &secret), &user, ACCESS_TOKEN).await;
    assert_error(&r, 400, "invalid_grant");
}

#[tokio::test]
async fn a_revoked_subject_token_is_invalid_grant() {
    let t = TestApp::start().await;
    let (id, secret) = product(&t, "api", &["reports:read"]).await;
    let claims = t.human_claims("alice", "portal", "reports:read");
    let user = t.app().issuers.human.mint(&claims).unwrap();
    // Accepted before the revocation.
    let r = exchange_for_api(&t, (&id, &secret), &user, ACCESS_TOKEN).await;
    assert_eq!(r.status, 200, "{}", r.text);

    let app = t.app();
    app.store
        .revoke(&claims.jti, claims.exp, app.clock.now())
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while !app.revocations.is_revoked(&claims.jti) {
        assert!(
            std::time::Instant::now() < deadline,
            "the revocation did not reach the in-memory set within 2 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let r = exchange_for_api(&t, (&id, &secret), &user, ACCESS_TOKEN).await;
    assert_error(&r, 400, "invalid_grant");
    assert_denied_audit(&t, "invalid_grant").await;
}

#[tokio::test]
async fn an_expired_delegation_is_unauthorized_client() {
    let t = TestApp::start().await;
    let now = t.app().clock.now();
    let (client, secret) = delegated_client(&t, "api", &["reports:read"], &[], Some(now + 1)).await;
    let user = t.human_token("alice", "portal", "reports:read");
    // Live: accepted.
    let r = exchange_for_api(&t, (&client.client_id, &secret), &user, ACCESS_TOKEN).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // Expired: refused (the subject token is still valid).
    t.clock.advance(5);
    let r = exchange_for_api(&t, (&client.client_id, &secret), &user, ACCESS_TOKEN).await;
    assert_error(&r, 400, "unauthorized_client");
    assert_denied_audit(&t, "unauthorized_client").await;
}

#[tokio::test]
async fn an_unsupported_requested_token_type_is_invalid_request() {
    let t = TestApp::start().await;
    let (id, secret) = product(&t, "api", &["reports:read"]).await;
    let user = t.human_token("alice", "portal", "reports:read");
    let r = exchange(
        &t,
        (&id, &secret),
        &[
            ("subject_token", &user),
            ("subject_token_type", ACCESS_TOKEN),
            ("audience", "api"),
            (
                "requested_token_type",
                "urn:ietf:params:oauth:token-type:refresh_token",
            ),
        ],
    )
    .await;
    assert_error(&r, 400, "invalid_request");
}

#[tokio::test]
async fn an_exchange_of_a_human_token_without_client_authentication_is_invalid_client() {
    let t = TestApp::start().await;
    let (_id, _secret) = product(&t, "api", &["reports:read"]).await;
    let user = t.human_token("alice", "portal", "reports:read");
    let r = t
        .post_form(
            "/oauth2/token",
            None,
            &[
                ("grant_type", GRANT),
                ("subject_token", &user),
                ("subject_token_type", ACCESS_TOKEN),
                ("audience", "api"),
            ],
        )
        .await;
    assert_error(&r, 401, "invalid_client");
}

// ---------------------------------------------------------------------------
// 7. Lifetime.

#[tokio::test]
async fn the_policy_ttl_for_the_audience_caps_the_delegated_token() {
    let policy = format!(
        "{}\n[audiences.api]\nmax_token_ttl = \"60s\"\n",
        include_str!("../../src/policy/builtin.toml")
    );
    let t = TestApp::builder().policy(&policy).start().await;
    let (id, secret) = product(&t, "api", &["reports:read"]).await;
    let user = t.human_token("alice", "portal", "reports:read");
    let r = exchange_for_api(&t, (&id, &secret), &user, ACCESS_TOKEN).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let expires_in = r.body["expires_in"].as_i64().unwrap();
    assert!(
        expires_in > 0 && expires_in <= 60,
        "expires_in = {expires_in}"
    );
    let claims = verify_human(&t, r.body["access_token"].as_str().unwrap(), "api").await;
    let lifetime = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    assert!(lifetime <= 60, "token lifetime {lifetime}s");
}

#[tokio::test]
async fn the_delegated_token_never_outlives_the_subject_token() {
    let t = TestApp::start().await;
    let (id, secret) = product(&t, "api", &["reports:read"]).await;
    let mut claims = t.human_claims("alice", "portal", "reports:read");
    claims.exp = t.app().clock.now() + 30;
    let user = t.app().issuers.human.mint(&claims).unwrap();
    let r = exchange_for_api(&t, (&id, &secret), &user, ACCESS_TOKEN).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let expires_in = r.body["expires_in"].as_i64().unwrap();
    assert!(
        expires_in > 0 && expires_in <= 30,
        "expires_in = {expires_in}"
    );
    let out = verify_human(&t, r.body["access_token"].as_str().unwrap(), "api").await;
    assert!(out["exp"].as_i64().unwrap() <= claims.exp);
}

// ---------------------------------------------------------------------------
// 8. The first exchange after start while the IdP's keys are being fetched.

/// The key cache promises (src/trusted/keys.rs) that "concurrent requests
/// that need keys wait for [the fetch in flight] (bounded) instead of
/// starting their own". An exchange that arrives while the server's first
/// background fetch is still running must therefore wait for it (here
/// about 0.8 s, well inside the 2 s fetch_timeout) and succeed, not be
/// answered 503.
#[tokio::test]
async fn an_exchange_during_the_first_key_fetch_waits_for_it_instead_of_503() {
    let idp = TestIdp::start().await;
    // Discovery and JWKS each answer after 400 ms.
    idp.set_mode(Mode::Slow(std::time::Duration::from_millis(400)));
    let t = start_with(&idp).await;
    let (id, secret) = product(&t, "api", &["reports:read"]).await;
    // The server's background refresh has reached the IdP: a fetch is in flight.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while idp.discovery_fetches() == 0 {
        assert!(std::time::Instant::now() < deadline, "no key fetch started");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let user = idp.id_token("alice", json!({"groups": ["analysts"]}));
    let started = std::time::Instant::now();
    let r = exchange_for_api(&t, (&id, &secret), &user, ID_TOKEN).await;
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["scope"], "reports:read");
}

#[tokio::test]
async fn a_delegated_token_forwarded_to_another_client_cannot_be_exchanged_again() {
    let t = TestApp::start().await;
    let (id, secret) = product(&t, "api", &["reports:read"]).await;
    let (other, other_secret) = product(&t, "api", &["reports:read"]).await;
    let first = exchange_for_api(
        &t,
        (&id, &secret),
        &t.human_token("alice", "portal", "reports:read"),
        ACCESS_TOKEN,
    )
    .await;
    assert_eq!(first.status, 200, "{}", first.text);
    let delegated = first.body["access_token"].as_str().unwrap();
    let r = exchange_for_api(&t, (&other, &other_secret), delegated, ACCESS_TOKEN).await;
    assert_eq!((r.status, r.error()), (400, "invalid_grant"), "{}", r.text);
    // The client holding it may carry it one step further.
    let again = exchange_for_api(&t, (&id, &secret), delegated, ACCESS_TOKEN).await;
    assert_eq!(again.status, 200, "{}", again.text);
}

#[tokio::test]
async fn an_idp_token_for_an_application_is_not_a_person() {
    let idp = TestIdp::start().await;
    let t = start_with_keys(&idp).await;
    let (id, secret) = product(&t, "api", &["reports:read"]).await;
    let cases = [
        ("batch-job", json!({"azp": "batch-job"})),
        ("batch-job", json!({"idtyp": "app"})),
        // Auth0 client-credentials tokens.
        ("batch-job", json!({"gty": "client-credentials"})),
        ("Xk3v9QpL@clients", json!({})),
        // Keycloak service-account users.
        (
            "f3e1c2a0",
            json!({"preferred_username": "service-account-batch-job"}),
        ),
    ];
    for (sub, extra) in cases {
        let app_only = idp.access_token(sub, "reports:read", extra.clone());
        let r = exchange_for_api(&t, (&id, &secret), &app_only, ACCESS_TOKEN).await;
        assert_eq!(
            (r.status, r.error()),
            (400, "invalid_grant"),
            "{extra}: {}",
            r.text
        );
        assert!(r.text.contains("not a person"), "{extra}: {}", r.text);
    }
    // A person whose username merely mentions a service account passes.
    let person = idp.access_token(
        "alice",
        "reports:read",
        json!({"preferred_username": "alice-service-account"}),
    );
    let r = exchange_for_api(&t, (&id, &secret), &person, ACCESS_TOKEN).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn a_malformed_upstream_act_makes_the_subject_token_invalid() {
    let idp = TestIdp::start().await;
    let t = start_with_keys(&idp).await;
    let (id, secret) = product(&t, "api", &["reports:read"]).await;
    let well_formed = idp.access_token(
        "alice",
        "reports:read",
        json!({"act": {"sub": "gateway", "act": {"sub": "portal"}}}),
    );
    let r = exchange_for_api(&t, (&id, &secret), &well_formed, ACCESS_TOKEN).await;
    assert_eq!(r.status, 200, "{}", r.text);
    for act in [
        json!("gateway"),
        json!(["gateway"]),
        json!({}),
        json!({"sub": ""}),
        json!({"sub": 42}),
        json!({"sub": "gateway", "act": "portal"}),
        json!({"sub": "gateway", "act": {"client_id": "portal"}}),
    ] {
        let token = idp.access_token("alice", "reports:read", json!({ "act": act.clone() }));
        let r = exchange_for_api(&t, (&id, &secret), &token, ACCESS_TOKEN).await;
        assert_eq!(
            (r.status, r.error()),
            (400, "invalid_grant"),
            "{act}: {}",
            r.text
        );
        assert!(
            r.text.contains("act claim is not valid"),
            "{act}: {}",
            r.text
        );
    }
}

#[tokio::test]
async fn an_idp_token_typed_as_something_other_than_a_jwt_or_access_token_is_invalid_grant() {
    let idp = TestIdp::start().await;
    let t = start_with_keys(&idp).await;
    let (id, secret) = product(&t, "api", &["reports:read"]).await;
    let claims = idp_access_claims(&idp, "alice", "reports:read");
    for typ in ["JWT", "jwt", "at+jwt", "application/at+jwt", "AT+JWT"] {
        let mut c = claims.clone();
        c["jti"] = uuid::Uuid::new_v4().to_string().into();
        let token = idp.sign_typ(typ, &c);
        let r = exchange_for_api(&t, (&id, &secret), &token, JWT).await;
        assert_eq!(r.status, 200, "typ {typ}: {}", r.text);
    }
    for typ in [
        "secevent+jwt",
        "logout+jwt",
        "dpop+jwt",
        "application/secevent+jwt",
    ] {
        let token = idp.sign_typ(typ, &claims);
        let r = exchange_for_api(&t, (&id, &secret), &token, JWT).await;
        assert_eq!(
            (r.status, r.error()),
            (400, "invalid_grant"),
            "typ {typ}: {}",
            r.text
        );
        assert!(r.text.contains("typ"), "typ {typ}: {}", r.text);
    }
}

#[tokio::test]
async fn an_idp_token_from_a_tenant_outside_the_issuers_tenants_is_invalid_grant() {
    let idp = TestIdp::start().await;
    let t = TestApp::builder()
        .config(&idp.config(
            "corp",
            "human",
            "tenants = [\"acme\"]\n[trusted_issuers.group_scopes]\nanalysts = [\"reports:read\"]",
        ))
        .start()
        .await;
    let (id, secret) = product(&t, "api", &["reports:read"]).await;
    let acme = idp.access_token("alice", "reports:read", json!({}));
    let r = exchange_for_api(&t, (&id, &secret), &acme, ACCESS_TOKEN).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let globex = idp.access_token("bob", "reports:read", json!({"tenant": "globex"}));
    let r = exchange_for_api(&t, (&id, &secret), &globex, ACCESS_TOKEN).await;
    assert_error(&r, 400, "invalid_grant");
    assert!(r.text.contains("tenant"), "{}", r.text);
}

#[tokio::test]
async fn two_human_idps_keep_their_people_and_groups_apart_by_subject_prefix() {
    let corp = TestIdp::start().await;
    let partner = TestIdp::start().await;
    let t = TestApp::builder()
        .config(&corp.config("corp", "human", "subject_prefix = \"corp:\""))
        .config(&partner.config("partner", "human", "subject_prefix = \"partner:\""))
        .start()
        .await;
    let app = t.app();
    let extra = json!({"groups": ["analysts"]});
    let at_corp = app
        .trusted
        .verify(&corp.access_token("alice", "", extra.clone()))
        .await
        .unwrap();
    let at_partner = app
        .trusted
        .verify(&partner.access_token("alice", "", extra))
        .await
        .unwrap();
    assert_eq!(at_corp.claims.sub, "corp:alice");
    assert_eq!(at_partner.claims.sub, "partner:alice");
    // A dataset grant to group `corp:analysts` is not held by the
    // partner's `analysts`.
    assert_eq!(at_corp.claims.groups, ["corp:analysts"]);
    assert_eq!(at_partner.claims.groups, ["partner:analysts"]);
    // `group_scopes` keys stay the IdP's own names.
    assert_eq!(at_corp.upstream.as_ref().unwrap().groups, ["analysts"]);
}

#[tokio::test]
async fn client_ids_and_actors_named_by_the_idp_are_namespaced_by_the_issuer() {
    let idp = TestIdp::start().await;
    let t = start_with_keys(&idp).await;
    let (id, secret) = product(&t, "api", &["reports:read"]).await;
    // The IdP claims the token is already acted on by a client whose name
    // equals this Tessera product's id.
    let user = idp.access_token("alice", "reports:read", json!({"act": {"sub": id}}));
    let r = exchange(
        &t,
        (&id, &secret),
        &[
            ("subject_token", &user),
            ("subject_token_type", ACCESS_TOKEN),
            ("audience", "api"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let claims = verify_human(&t, r.body["access_token"].as_str().unwrap(), "api").await;
    assert_eq!(
        claims["act"],
        json!({"sub": id, "act": {"sub": format!("corp:{id}")}})
    );
}

/// The client's own service token as actor_token, but expired, revoked or
/// with a changed signature: each is refused, and the untouched token is
/// accepted first so the refusals are about what was changed.
#[tokio::test]
async fn an_expired_revoked_or_tampered_actor_token_is_invalid_grant() {
    let t = TestApp::start().await;
    let (client, secret) = delegated_client(&t, "api", &["reports:read"], &[], None).await;
    let user = t.human_token("alice", "portal", "reports:read");
    let send = |actor: String| {
        let (t, id, secret, user) = (&t, client.client_id.clone(), secret.clone(), user.clone());
        async move { exchange_with_actor(t, (&id, &secret), &user, &actor, Some(ACCESS_TOKEN)).await }
    };
    let actor = t.service_token(&client, &secret, &[]).await;
    assert_eq!(send(actor.clone()).await.status, 200);

    // A character in the middle of the signature (the last one's low bits
    // may be padding that decoders ignore).
    let (head, sig) = actor.rsplit_once('.').unwrap();
    let mut sig = sig.as_bytes().to_vec();
    let mid = sig.len() / 2;
    sig[mid] = if sig[mid] == b'A' { b'B' } else { b'A' };
    let tampered = format!("{head}.{}", String::from_utf8(sig).unwrap());
    assert_error(&send(tampered).await, 400, "invalid_grant");

    let jti = claims_of(&actor)["jti"].as_str().unwrap().to_string();
    let app = t.app();
    app.store
        .revoke(&jti, app.clock.now() + 600, app.clock.now())
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while !app.revocations.is_revoked(&jti) && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let r = send(actor).await;
    assert_error(&r, 400, "invalid_grant");
    assert!(r.text.contains("revoked"), "{}", r.text);

    let fresh = t.service_token(&client, &secret, &[]).await;
    t.clock.advance(3600);
    // A subject minted now, so only the actor token has expired.
    let user_now = t.human_token("alice", "portal", "reports:read");
    let r = exchange_with_actor(
        &t,
        (&client.client_id, &secret),
        &user_now,
        &fresh,
        Some(ACCESS_TOKEN),
    )
    .await;
    assert_error(&r, 400, "invalid_grant");
    assert!(r.text.contains("actor_token"), "{}", r.text);
}

#[tokio::test]
async fn another_client_acting_gets_only_what_the_delegations_naming_it_allow() {
    let t = TestApp::start().await;
    let (other, other_secret) = t.client("acme", &["internal"], &[]).await;
    // For "api": read with `other` as actor, read and admin without it.
    let (client, secret) =
        delegated_client(&t, "api", &["reports:read"], &[&other.client_id], None).await;
    delegate(
        &t,
        NewDelegation {
            client_id: client.client_id.clone(),
            audiences: vec!["api".into()],
            scopes: vec!["reports:read".into(), "admin".into()],
            ..Default::default()
        },
    )
    .await;
    let actor = t.service_token(&other, &other_secret, &[]).await;
    let user = t.human_token("alice", "portal", "reports:read admin");
    let ask = |scope: &'static str| {
        let (t, id, secret, user, actor) = (
            &t,
            client.client_id.clone(),
            secret.clone(),
            user.clone(),
            actor.clone(),
        );
        async move {
            exchange(
                t,
                (&id, &secret),
                &[
                    ("subject_token", &user),
                    ("subject_token_type", ACCESS_TOKEN),
                    ("audience", "api"),
                    ("scope", scope),
                    ("actor_token", &actor),
                    ("actor_token_type", ACCESS_TOKEN),
                ],
            )
            .await
        }
    };
    assert_error(&ask("admin").await, 400, "invalid_scope");
    let r = ask("reports:read").await;
    assert_eq!(r.status, 200, "{}", r.text);
    // The client acting for itself may have admin.
    let r = exchange(
        &t,
        (&client.client_id, &secret),
        &[
            ("subject_token", &user),
            ("subject_token_type", ACCESS_TOKEN),
            ("audience", "api"),
            ("scope", "admin"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn no_audience_asked_of_a_client_whose_delegations_name_none_is_invalid_target() {
    let t = TestApp::start().await;
    let app = t.app();
    tessera::registry::create_dataset(
        app.store.as_ref(),
        tessera::registry::NewDataset {
            id: "sales.orders".into(),
            tenant: "acme".into(),
            role_arn: "arn:aws:iam::123456789012:role/sales".into(),
            glue_database: "sales".into(),
            glue_table: Some("orders".into()),
            lf_tag_expression: None,
            s3_prefix: "s3://lake/sales/orders/".into(),
            permissions: vec![tessera::store::Permission::Read],
            purposes: vec![],
            max_duration_secs: 3600,
        },
        app.clock.now(),
    )
    .await
    .unwrap();
    // A data product: delegated a dataset, no audience.
    let (client, secret) = t.client("acme", &["internal"], &[]).await;
    delegate(
        &t,
        NewDelegation {
            client_id: client.client_id.clone(),
            datasets: vec!["sales.orders".into()],
            permissions: vec![tessera::store::Permission::Read],
            ..Default::default()
        },
    )
    .await;
    let user = t.human_token("alice", "portal", "reports:read");
    let r = exchange(
        &t,
        (&client.client_id, &secret),
        &[
            ("subject_token", &user),
            ("subject_token_type", ACCESS_TOKEN),
        ],
    )
    .await;
    assert_error(&r, 400, "invalid_target");
    assert!(r.text.contains("any audience"), "{}", r.text);
}
