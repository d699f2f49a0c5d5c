//! Workload identity: a Kubernetes service-account token from a trusted
//! issuer of kind "workload" authenticates as the client it is bound to
//! (as a `client_assertion`), is exchanged for that client's service token
//! (RFC 8693, with or without client credentials), and passes ext_authz
//! directly on rules that name its cluster. Also the delegation rules of
//! the policy (`delegation = "required" | "forbidden"`) and the CLI that
//! binds workloads and manages delegations.

use serde_json::{json, Value};
use tessera::registry::{bind_workload, NewClient};
use tessera::store::Client;

use crate::harness::*;
use crate::idp::{Mode, TestIdp};
use crate::token_exchange::{exchange, product, ACCESS_TOKEN, GRANT, ID_TOKEN, JWT};

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const NS: &str = "payments";
const SA_NAME: &str = "billing";
const SA_SUBJECT: &str = "system:serviceaccount:payments:billing";

/// The cluster as a trusted workload issuer. Service-account tokens carry
/// no `tenant` claim; a workload's tenant is its bound client's, and the
/// entry as README.md shows it (no `default_tenant`) is checked by
/// `the_documented_cluster_entry_without_default_tenant_accepts_bound_service_account_tokens`.
/// The other tests name a default tenant so that each checks only what its
/// name says.
fn cluster(idp: &TestIdp) -> String {
    idp.config("cluster", "workload", "default_tenant = \"acme\"")
}

async fn start(cluster_idp: &TestIdp) -> TestApp {
    TestApp::builder()
        .config(&cluster(cluster_idp))
        .start()
        .await
}

/// A client with no secret, bound to `subject` from the "cluster" issuer.
async fn bound_client(t: &TestApp, subject: &str) -> Client {
    let (client, secret) = t
        .register(NewClient {
            name: "billing".into(),
            tenant: "acme".into(),
            audiences: vec!["internal".into()],
            scopes: vec!["orders:read".into()],
            no_secret: true,
            ..Default::default()
        })
        .await;
    assert!(secret.is_none(), "a no_secret client gets no secret");
    bind(t, &client.client_id, subject).await;
    client
}

async fn bind(t: &TestApp, client_id: &str, subject: &str) {
    let app = t.app();
    bind_workload(
        app.store.as_ref(),
        &app.config,
        client_id,
        "cluster",
        subject,
        app.clock.now(),
    )
    .await
    .expect("workload bound");
}

/// client_credentials with `assertion` as a JWT bearer client assertion.
async fn cc_with_assertion(t: &TestApp, assertion: &str, client_id: Option<&str>) -> Reply {
    let mut form = vec![
        ("grant_type", "client_credentials"),
        ("client_assertion_type", JWT_BEARER),
        ("client_assertion", assertion),
    ];
    if let Some(id) = client_id {
        form.push(("client_id", id));
    }
    t.post_form("/oauth2/token", None, &form).await
}

/// Token exchange of `subject_token` without client credentials.
async fn exchange_anonymous(t: &TestApp, extra: &[(&str, &str)]) -> Reply {
    let mut form = vec![("grant_type", GRANT)];
    form.extend_from_slice(extra);
    t.post_form("/oauth2/token", None, &form).await
}

/// Verifies a service-issuer token with a stock JWT library and the
/// published JWKS; returns its claims.
async fn verify_service(t: &TestApp, token: &str, aud: &str) -> Value {
    let jwks: jsonwebtoken::jwk::JwkSet = t
        .http
        .get(format!("{}/issuers/service/jwks.json", t.base))
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
    v.set_issuer(&[format!("{}/issuers/service", t.base)]);
    jsonwebtoken::decode::<Value>(token, &key, &v)
        .expect("verifies with the service issuer's JWKS")
        .claims
}

fn assert_service_token_of(claims: &Value, client: &Client) {
    assert_eq!(claims["sub"], client.client_id.as_str());
    assert_eq!(claims["client_id"], client.client_id.as_str());
    assert_eq!(claims["principal"], "service");
    assert_eq!(claims["tenant"], "acme");
    assert_eq!(claims["aud"], "internal");
    assert_eq!(claims["scope"], "orders:read");
    assert!(claims.get("act").is_none(), "not delegated: {claims}");
}

/// The newest audit record, which must be a client_authentication one (a
/// refused client authentication is the last thing a request records).
async fn last_client_auth(t: &TestApp) -> AuthFailure {
    let audit = t.audit().await;
    let rec = audit.last().expect("an audit record");
    assert_eq!(
        rec.record.event, "client_authentication",
        "the newest record is the client authentication failure: {:?}",
        rec.record
    );
    AuthFailure {
        decision: rec.record.decision.clone(),
        reason: rec.record.reason.clone(),
        client_id: rec.record.client_id.clone(),
    }
}

#[derive(Debug, PartialEq)]
struct AuthFailure {
    decision: String,
    reason: String,
    client_id: Option<String>,
}

/// Asserts a 401 invalid_client whose audit record says `reason`.
async fn assert_refused(t: &TestApp, r: &Reply, reason: &str, client_id: Option<&str>) {
    assert_eq!((r.status, r.error()), (401, "invalid_client"), "{}", r.text);
    assert!(r.body.get("access_token").is_none());
    let rec = last_client_auth(t).await;
    assert_eq!(
        rec,
        AuthFailure {
            decision: "deny".into(),
            reason: reason.into(),
            client_id: client_id.map(str::to_string),
        },
        "audit record for {reason}"
    );
}

// ---------------------------------------------------------------------------
// 1. client_credentials with the service-account token as client assertion

#[tokio::test]
async fn a_bound_service_account_token_as_client_assertion_gets_the_clients_service_token_and_can_be_reused(
) {
    let idp = TestIdp::start().await;
    let t = start(&idp).await;
    let client = bound_client(&t, SA_SUBJECT).await;
    let sa = idp.service_account_token(NS, SA_NAME, "tessera");

    // Without client_id: the token names the client.
    let r = cc_with_assertion(&t, &sa, None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["token_type"], "Bearer");
    let token = r.body["access_token"].as_str().unwrap();
    let claims = verify_service(&t, token, "internal").await;
    assert_service_token_of(&claims, &client);

    // With the matching client_id, and the same service-account token a
    // second time: such tokens are reused, there is no replay refusal.
    let again = cc_with_assertion(&t, &sa, Some(&client.client_id)).await;
    assert_eq!(again.status, 200, "{}", again.text);
    let token2 = again.body["access_token"].as_str().unwrap();
    let claims2 = verify_service(&t, token2, "internal").await;
    assert_service_token_of(&claims2, &client);
    assert_ne!(claims["jti"], claims2["jti"]);

    // A third use, without client_id again.
    let third = cc_with_assertion(&t, &sa, None).await;
    assert_eq!(third.status, 200, "{}", third.text);

    // The issuances are audited under the client, naming the cluster.
    let audit = t.audit().await;
    let issued: Vec<_> = audit
        .iter()
        .filter(|a| a.record.event == "token_issuance" && a.record.decision == "allow")
        .collect();
    assert_eq!(issued.len(), 3);
    for rec in issued {
        assert_eq!(
            rec.record.client_id.as_deref(),
            Some(client.client_id.as_str())
        );
        assert_eq!(rec.record.upstream_issuer.as_deref(), Some("cluster"));
    }
    assert!(
        !audit.iter().any(|a| a.record.decision == "deny"),
        "nothing refused"
    );
}

// ---------------------------------------------------------------------------
// 2. refusals: 401 invalid_client with an audit record naming the reason

#[tokio::test]
async fn an_unbound_service_account_is_refused_as_workload_not_bound() {
    let idp = TestIdp::start().await;
    let t = start(&idp).await;
    bound_client(&t, SA_SUBJECT).await;
    let other = idp.service_account_token(NS, "someone-else", "tessera");
    let r = cc_with_assertion(&t, &other, None).await;
    assert_refused(&t, &r, "workload_not_bound", None).await;
}

#[tokio::test]
async fn a_service_account_token_for_another_audience_is_refused_as_wrong_audience() {
    let idp = TestIdp::start().await;
    let t = start(&idp).await;
    bound_client(&t, SA_SUBJECT).await;
    let sa = idp.service_account_token(NS, SA_NAME, "https://kubernetes.default.svc");
    let r = cc_with_assertion(&t, &sa, None).await;
    assert_refused(&t, &r, "wrong_audience", None).await;
}

#[tokio::test]
async fn an_expired_service_account_token_is_refused_as_token_expired() {
    let idp = TestIdp::start().await;
    let t = start(&idp).await;
    bound_client(&t, SA_SUBJECT).await;
    let now = t.clock.now();
    let mut c = idp.claims(SA_SUBJECT, "tessera");
    c["iat"] = json!(now - 3600);
    c["exp"] = json!(now - 600);
    let expired = idp.sign(&c);
    let r = cc_with_assertion(&t, &expired, None).await;
    assert_refused(&t, &r, "token_expired", None).await;
}

#[tokio::test]
async fn a_service_account_token_from_an_untrusted_cluster_is_refused() {
    let idp = TestIdp::start().await;
    let t = start(&idp).await;
    let client = bound_client(&t, SA_SUBJECT).await;
    // Same subject, another cluster that is not configured: the token is
    // read as a private_key_jwt assertion, whose iss and sub differ.
    let rogue = TestIdp::start().await;
    let sa = rogue.service_account_token(NS, SA_NAME, "tessera");
    let r = cc_with_assertion(&t, &sa, None).await;
    assert_refused(&t, &r, "assertion_subject_mismatch", None).await;
    let r = cc_with_assertion(&t, &sa, Some(&client.client_id)).await;
    assert_refused(
        &t,
        &r,
        "assertion_subject_mismatch",
        Some(&client.client_id),
    )
    .await;
    assert_eq!(
        rogue.jwks_fetches(),
        0,
        "an untrusted issuer is never asked"
    );
}

#[tokio::test]
async fn a_token_from_a_human_idp_is_not_a_client_assertion() {
    let cluster_idp = TestIdp::start().await;
    let corp = TestIdp::start().await;
    let t = TestApp::builder()
        .config(&cluster(&cluster_idp))
        .config(&corp.config("corp", "human", ""))
        .start()
        .await;
    bound_client(&t, SA_SUBJECT).await;
    // A person's ID token from a trusted human issuer: not a workload
    // identity, so it goes the private_key_jwt way and fails there.
    let id_token = corp.id_token("alice", json!({}));
    let r = cc_with_assertion(&t, &id_token, None).await;
    assert_refused(&t, &r, "assertion_subject_mismatch", None).await;
    // Even one whose sub equals a bound subject.
    let lookalike = corp.id_token(SA_SUBJECT, json!({}));
    let r = cc_with_assertion(&t, &lookalike, None).await;
    assert_refused(&t, &r, "assertion_subject_mismatch", None).await;
}

#[tokio::test]
async fn a_client_id_other_than_the_bound_client_is_refused_as_assertion_subject_mismatch() {
    let idp = TestIdp::start().await;
    let t = start(&idp).await;
    bound_client(&t, SA_SUBJECT).await;
    let (other, _) = t.client("acme", &["internal"], &["orders:read"]).await;
    let sa = idp.service_account_token(NS, SA_NAME, "tessera");
    let r = cc_with_assertion(&t, &sa, Some(&other.client_id)).await;
    assert_refused(&t, &r, "assertion_subject_mismatch", Some(&other.client_id)).await;
}

#[tokio::test]
async fn a_service_account_bound_to_a_disabled_client_is_refused_as_client_disabled() {
    let idp = TestIdp::start().await;
    let t = start(&idp).await;
    let client = bound_client(&t, SA_SUBJECT).await;
    let app = t.app();
    assert!(app
        .store
        .set_disabled(&client.client_id, true, app.clock.now())
        .await
        .unwrap());
    let sa = idp.service_account_token(NS, SA_NAME, "tessera");
    let r = cc_with_assertion(&t, &sa, None).await;
    assert_refused(&t, &r, "client_disabled", Some(&client.client_id)).await;
}

#[tokio::test]
async fn the_documented_cluster_entry_without_default_tenant_accepts_bound_service_account_tokens()
{
    // The `[[trusted_issuers]]` entry for a cluster exactly as README.md
    // shows it: no default_tenant. A projected service-account token has no
    // `tenant` claim, yet README.md promises such a pod gets a service token
    // by client authentication and by token exchange, and passes routes
    // that name the cluster.
    let idp = TestIdp::start().await;
    let t = TestApp::builder()
        .config(&idp.config("cluster", "workload", ""))
        .policy(INTERNAL_WI_POLICY)
        .start()
        .await;
    let client = bound_client(&t, SA_SUBJECT).await;
    let sa = idp.service_account_token(NS, SA_NAME, "tessera");

    let r = cc_with_assertion(&t, &sa, None).await;
    let why = if r.status == 200 {
        String::new()
    } else {
        last_client_auth(&t).await.reason
    };
    assert_eq!(
        r.status, 200,
        "client_credentials: {} (audited reason: {why})",
        r.text
    );
    let claims = verify_service(&t, r.body["access_token"].as_str().unwrap(), "internal").await;
    assert_service_token_of(&claims, &client);

    let r = exchange_anonymous(&t, &[("subject_token", &sa), ("subject_token_type", JWT)]).await;
    assert_eq!(r.status, 200, "token exchange: {}", r.text);
    let claims = verify_service(&t, r.body["access_token"].as_str().unwrap(), "internal").await;
    assert_service_token_of(&claims, &client);

    let r = t.authz("GET", "/internal/orders", Some(&sa)).await;
    assert_eq!(r.status, 200, "ext_authz: {}", r.text);
    assert_eq!(r.header("x-tessera-principal"), Some("workload"));
    assert_eq!(r.header("x-tessera-subject"), Some(SA_SUBJECT));
}

#[tokio::test]
async fn a_service_account_token_presented_while_the_clusters_keys_are_first_fetched_waits_for_them(
) {
    // The cluster answers slowly; the server's first key fetch (started in
    // the background at start-up) is in flight when the workload calls.
    // README.md: "At most one fetch per issuer is in flight; concurrent
    // requests wait for it rather than start their own", bounded by
    // fetch_timeout (2 s here, the fetch takes about 0.6 s).
    let idp = TestIdp::start().await;
    idp.set_mode(Mode::Slow(std::time::Duration::from_millis(300)));
    let t = TestApp::builder().config(&cluster(&idp)).start().await;
    let client = bound_client(&t, SA_SUBJECT).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while idp.discovery_fetches() == 0 {
        assert!(std::time::Instant::now() < deadline, "no key fetch started");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let sa = idp.service_account_token(NS, SA_NAME, "tessera");
    let r = cc_with_assertion(&t, &sa, None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let claims = verify_service(&t, r.body["access_token"].as_str().unwrap(), "internal").await;
    assert_service_token_of(&claims, &client);
    assert_eq!(idp.discovery_fetches(), 1, "one fetch, not one per request");
}

#[tokio::test]
async fn binding_and_unbinding_take_effect_on_a_running_server() {
    let idp = TestIdp::start().await;
    let t = start(&idp).await;
    let (client, _) = t
        .register(NewClient {
            name: "billing".into(),
            tenant: "acme".into(),
            audiences: vec!["internal".into()],
            scopes: vec!["orders:read".into()],
            no_secret: true,
            ..Default::default()
        })
        .await;
    let sa = idp.service_account_token(NS, SA_NAME, "tessera");
    // Refused while unbound (and that answer may be cached)...
    let r = cc_with_assertion(&t, &sa, None).await;
    assert_refused(&t, &r, "workload_not_bound", None).await;

    // ...accepted once bound, within the registry sync interval...
    bind(&t, &client.client_id, SA_SUBJECT).await;
    let status = poll_status(&t, &sa, 200).await;
    assert_eq!(status, 200, "the binding takes effect");

    // ...and refused again once unbound.
    let app = t.app();
    assert!(app
        .store
        .unbind_workload(&idp.issuer, SA_SUBJECT)
        .await
        .unwrap());
    let status = poll_status(&t, &sa, 401).await;
    assert_eq!(status, 401, "the unbinding takes effect");
    let rec = last_client_auth(&t).await;
    assert_eq!(rec.reason, "workload_not_bound");
}

/// Repeats a client_credentials request with `sa` for up to 3 s until it
/// answers `want`; returns the last status.
async fn poll_status(t: &TestApp, sa: &str, want: u16) -> u16 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        let status = cc_with_assertion(t, sa, None).await.status;
        if status == want || std::time::Instant::now() >= deadline {
            return status;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------
// 3. token exchange with the service-account token as subject_token

#[tokio::test]
async fn exchanging_a_bound_service_account_token_without_credentials_gives_the_clients_service_token(
) {
    let idp = TestIdp::start().await;
    let t = start(&idp).await;
    let client = bound_client(&t, SA_SUBJECT).await;
    let sa = idp.service_account_token(NS, SA_NAME, "tessera");
    let r = exchange_anonymous(&t, &[("subject_token", &sa), ("subject_token_type", JWT)]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["issued_token_type"], ACCESS_TOKEN);
    assert_eq!(r.body["token_type"], "Bearer");
    let token = r.body["access_token"].as_str().unwrap();
    let claims = verify_service(&t, token, "internal").await;
    assert_service_token_of(&claims, &client);

    let audit = t.audit().await;
    let rec = audit
        .iter()
        .rev()
        .find(|a| a.record.event == "token_exchange")
        .expect("exchange audited");
    assert_eq!(rec.record.decision, "allow");
    assert_eq!(
        rec.record.client_id.as_deref(),
        Some(client.client_id.as_str())
    );
    assert_eq!(rec.record.upstream_issuer.as_deref(), Some("cluster"));
    assert_eq!(rec.record.jti.as_deref(), claims["jti"].as_str());
}

#[tokio::test]
async fn an_oversized_service_account_token_is_refused_as_a_client_assertion_and_as_a_subject() {
    let idp = TestIdp::start().await;
    let t = start(&idp).await;
    bound_client(&t, SA_SUBJECT).await;
    let mut c = idp.claims(SA_SUBJECT, "tessera");
    c["pad"] = "a".repeat(16 * 1024).into();
    let huge = idp.sign(&c);
    let r = cc_with_assertion(&t, &huge, None).await;
    assert_eq!((r.status, r.error()), (401, "invalid_client"), "{}", r.text);
    let rec = last_client_auth(&t).await;
    assert_eq!(rec.decision, "deny");
    let r = exchange_anonymous(&t, &[("subject_token", &huge), ("subject_token_type", JWT)]).await;
    assert!(r.status == 400 || r.status == 401, "{}", r.text);
    assert!(r.body.get("access_token").is_none(), "{}", r.text);
}

#[tokio::test]
async fn the_service_token_of_an_exchange_never_outlives_the_service_account_token() {
    let idp = TestIdp::start().await;
    let t = start(&idp).await;
    bound_client(&t, SA_SUBJECT).await;
    // Two minutes left, less than the service issuer's five-minute TTL.
    let mut c = idp.claims(SA_SUBJECT, "tessera");
    let sa_exp = c["iat"].as_i64().unwrap() + 120;
    c["exp"] = sa_exp.into();
    c["kubernetes.io"] =
        json!({"namespace": NS, "serviceaccount": {"name": SA_NAME, "uid": "u-1"}});
    let sa = idp.sign(&c);
    let r = exchange_anonymous(&t, &[("subject_token", &sa), ("subject_token_type", JWT)]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // Tessera's clock is fixed at start; the cluster stamped `iat` a moment
    // later on the real one, hence the few seconds of slack.
    let expires_in = r.body["expires_in"].as_i64().unwrap();
    assert!(
        expires_in > 0 && expires_in <= 125,
        "expires_in {expires_in}"
    );
    let claims = verify_service(&t, r.body["access_token"].as_str().unwrap(), "internal").await;
    assert!(claims["exp"].as_i64().unwrap() <= sa_exp, "{claims}");
}

#[tokio::test]
async fn the_policy_ttl_for_an_audience_caps_service_tokens_however_obtained() {
    let idp = TestIdp::start().await;
    let policy = format!(
        "{}\n[audiences.internal]\nmax_token_ttl = \"60s\"\n",
        include_str!("../../src/policy/builtin.toml")
    );
    let t = TestApp::builder()
        .config(&cluster(&idp))
        .policy(&policy)
        .start()
        .await;
    bound_client(&t, SA_SUBJECT).await;
    let sa = idp.service_account_token(NS, SA_NAME, "tessera");
    let exchanged =
        exchange_anonymous(&t, &[("subject_token", &sa), ("subject_token_type", JWT)]).await;
    let asserted = cc_with_assertion(&t, &sa, None).await;
    let (c, secret) = t.client("acme", &["internal"], &[]).await;
    let plain = t
        .post_form(
            "/oauth2/token",
            Some((&c.client_id, &secret)),
            &[("grant_type", "client_credentials")],
        )
        .await;
    for (how, r) in [
        ("exchange", exchanged),
        ("assertion", asserted),
        ("secret", plain),
    ] {
        assert_eq!(r.status, 200, "{how}: {}", r.text);
        let expires_in = r.body["expires_in"].as_i64().unwrap();
        assert!(
            expires_in > 0 && expires_in <= 60,
            "{how}: expires_in {expires_in}"
        );
    }
}

#[tokio::test]
async fn exchanging_a_service_account_token_with_the_bound_clients_own_secret_succeeds() {
    let idp = TestIdp::start().await;
    let t = start(&idp).await;
    let (client, secret) = t.client("acme", &["internal"], &["orders:read"]).await;
    bind(&t, &client.client_id, SA_SUBJECT).await;
    let sa = idp.service_account_token(NS, SA_NAME, "tessera");
    let r = exchange(
        &t,
        (&client.client_id, &secret),
        &[("subject_token", &sa), ("subject_token_type", JWT)],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["issued_token_type"], ACCESS_TOKEN);
    let claims = verify_service(&t, r.body["access_token"].as_str().unwrap(), "internal").await;
    assert_service_token_of(&claims, &client);
}

#[tokio::test]
async fn exchanging_a_service_account_token_with_another_clients_credentials_is_invalid_grant() {
    let idp = TestIdp::start().await;
    let t = start(&idp).await;
    bound_client(&t, SA_SUBJECT).await;
    let (other, other_secret) = t.client("acme", &["internal"], &["orders:read"]).await;
    let sa = idp.service_account_token(NS, SA_NAME, "tessera");
    let r = exchange(
        &t,
        (&other.client_id, &other_secret),
        &[("subject_token", &sa), ("subject_token_type", JWT)],
    )
    .await;
    assert_eq!((r.status, r.error()), (400, "invalid_grant"), "{}", r.text);
    assert!(r.body.get("access_token").is_none());
}

#[tokio::test]
async fn exchanging_an_unbound_service_account_token_is_invalid_grant() {
    let idp = TestIdp::start().await;
    let t = start(&idp).await;
    bound_client(&t, SA_SUBJECT).await;
    let unbound = idp.service_account_token(NS, "nobody", "tessera");
    let r = exchange_anonymous(
        &t,
        &[("subject_token", &unbound), ("subject_token_type", JWT)],
    )
    .await;
    assert_eq!((r.status, r.error()), (400, "invalid_grant"), "{}", r.text);
    assert!(r.body.get("access_token").is_none());
    let audit = t.audit().await;
    let rec = audit
        .iter()
        .rev()
        .find(|a| a.record.event == "token_exchange")
        .expect("refusal audited");
    assert_eq!(rec.record.decision, "deny");
    assert!(
        rec.record.reason.starts_with("invalid_grant"),
        "{}",
        rec.record.reason
    );
}

#[tokio::test]
async fn exchanging_a_service_account_token_with_an_actor_token_is_invalid_request() {
    let idp = TestIdp::start().await;
    let t = start(&idp).await;
    bound_client(&t, SA_SUBJECT).await;
    let (actor, actor_secret) = t.client("acme", &["internal"], &[]).await;
    let actor_token = t.service_token(&actor, &actor_secret, &[]).await;
    let sa = idp.service_account_token(NS, SA_NAME, "tessera");
    let r = exchange_anonymous(
        &t,
        &[
            ("subject_token", &sa),
            ("subject_token_type", JWT),
            ("actor_token", &actor_token),
            ("actor_token_type", ACCESS_TOKEN),
        ],
    )
    .await;
    assert_eq!(
        (r.status, r.error()),
        (400, "invalid_request"),
        "{}",
        r.text
    );
    assert!(
        r.body["error_description"]
            .as_str()
            .is_some_and(|d| d.contains("actor_token")),
        "{}",
        r.text
    );
    assert!(r.body.get("access_token").is_none());
}

#[tokio::test]
async fn a_service_account_token_may_be_declared_id_token_but_not_access_token() {
    let idp = TestIdp::start().await;
    let t = start(&idp).await;
    let client = bound_client(&t, SA_SUBJECT).await;
    let sa = idp.service_account_token(NS, SA_NAME, "tessera");
    let ok = exchange_anonymous(
        &t,
        &[("subject_token", &sa), ("subject_token_type", ID_TOKEN)],
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    let claims = verify_service(&t, ok.body["access_token"].as_str().unwrap(), "internal").await;
    assert_service_token_of(&claims, &client);

    let refused = exchange_anonymous(
        &t,
        &[("subject_token", &sa), ("subject_token_type", ACCESS_TOKEN)],
    )
    .await;
    assert_eq!(
        (refused.status, refused.error()),
        (400, "invalid_request"),
        "{}",
        refused.text
    );
    assert!(refused.body.get("access_token").is_none());
}

// ---------------------------------------------------------------------------
// 4. ext_authz: service-account tokens directly at the edge

const INTERNAL_WI_POLICY: &str = r#"
[[rule]]
name = "internal-wi"
path = "/internal/*"
accept = ["service", "workload"]
audience = "tessera"
trusted_issuers = ["cluster"]

[[rule]]
name = "reports"
path = "/reports/*"
accept = ["service"]
audience = "tessera"
"#;

async fn start_edge(cluster_idp: &TestIdp, corp: &TestIdp) -> TestApp {
    TestApp::builder()
        .config(&cluster(cluster_idp))
        .config(&corp.config("corp", "human", ""))
        .policy(INTERNAL_WI_POLICY)
        .start()
        .await
}

#[tokio::test]
async fn a_service_account_token_passes_a_rule_that_names_its_cluster_as_principal_workload() {
    let idp = TestIdp::start().await;
    let corp = TestIdp::start().await;
    let t = start_edge(&idp, &corp).await;
    let sa = idp.service_account_token(NS, SA_NAME, "tessera");
    let r = t.authz("GET", "/internal/orders", Some(&sa)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("x-tessera-subject"), Some(SA_SUBJECT));
    assert_eq!(r.header("x-tessera-principal"), Some("workload"));
    assert_eq!(r.header("x-tessera-tenant"), Some("acme"));
    assert_eq!(r.header("x-tessera-actor"), Some(""));
    // No binding is needed at the edge: the token itself is the identity.
    assert!(t
        .app()
        .store
        .workload_bindings(None)
        .await
        .unwrap()
        .is_empty());

    // The rule's audience still applies.
    let other_aud = idp.service_account_token(NS, SA_NAME, "vault");
    let r = t.authz("GET", "/internal/orders", Some(&other_aud)).await;
    assert_eq!(
        (r.status, r.body["reason"].as_str()),
        (403, Some("wrong_audience")),
        "{}",
        r.text
    );
}

#[tokio::test]
async fn a_service_account_token_on_a_rule_without_trusted_issuers_is_denied_issuer_not_accepted() {
    let idp = TestIdp::start().await;
    let corp = TestIdp::start().await;
    let t = start_edge(&idp, &corp).await;
    let sa = idp.service_account_token(NS, SA_NAME, "tessera");
    let r = t.authz("GET", "/reports/q1", Some(&sa)).await;
    assert_eq!(
        (r.status, r.body["reason"].as_str()),
        (403, Some("issuer_not_accepted")),
        "{}",
        r.text
    );
    assert!(r.header("x-tessera-subject").is_none());
    let audit = t.audit().await;
    let rec = audit
        .iter()
        .rev()
        .find(|a| a.record.event == "ext_authz")
        .expect("denial audited");
    assert_eq!(rec.record.decision, "deny");
    assert_eq!(rec.record.reason, "issuer_not_accepted (rule reports)");
    assert_eq!(rec.record.subject.as_deref(), Some(SA_SUBJECT));
    assert_eq!(rec.record.principal.as_deref(), Some("workload"));
}

#[tokio::test]
async fn a_human_idp_token_on_the_workload_route_is_refused() {
    let idp = TestIdp::start().await;
    let corp = TestIdp::start().await;
    let t = start_edge(&idp, &corp).await;
    // A person's token from a trusted IdP the rule does not name.
    let person = corp.access_token("alice", "", json!({}));
    let r = t.authz("GET", "/internal/orders", Some(&person)).await;
    assert_eq!(
        (r.status, r.body["reason"].as_str()),
        (403, Some("issuer_not_accepted")),
        "{}",
        r.text
    );
    assert!(r.header("x-tessera-subject").is_none());
    // A person's token from Tessera's own human issuer: the rule does not
    // accept people.
    let own = t.human_token("alice", "tessera", "");
    let r = t.authz("GET", "/internal/orders", Some(&own)).await;
    assert_eq!(
        (r.status, r.body["reason"].as_str()),
        (403, Some("credential_kind_not_accepted")),
        "{}",
        r.text
    );
}

// ---------------------------------------------------------------------------
// 5. delegation rules at the edge

fn api_policy(delegation: &str) -> String {
    format!(
        "[[rule]]\nname = \"api\"\npath = \"/api/*\"\naccept = [\"human\"]\naudience = \"api\"\ndelegation = {delegation:?}\n"
    )
}

/// A delegated token for alice from `product` (act.sub = product).
async fn delegated_token(t: &TestApp, product_creds: (&str, &str)) -> String {
    let alice = t.human_token("alice", "api", "reports:read");
    let r = exchange(
        t,
        product_creds,
        &[
            ("subject_token", &alice),
            ("subject_token_type", ACCESS_TOKEN),
            ("audience", "api"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let token = r.body["access_token"].as_str().unwrap().to_string();
    assert_eq!(claims_of(&token)["act"], json!({"sub": product_creds.0}));
    token
}

#[tokio::test]
async fn delegation_required_refuses_a_plain_human_token_and_allows_a_delegated_one() {
    let t = TestApp::builder()
        .policy(&api_policy("required"))
        .start()
        .await;
    let plain = t.human_token("alice", "api", "reports:read");
    let r = t.authz("GET", "/api/reports", Some(&plain)).await;
    assert_eq!(
        (r.status, r.body["reason"].as_str()),
        (403, Some("delegation_required")),
        "{}",
        r.text
    );
    assert!(r.header("x-tessera-subject").is_none());

    let (id, secret) = product(&t, "api", &["reports:read"]).await;
    let delegated = delegated_token(&t, (&id, &secret)).await;
    let r = t.authz("GET", "/api/reports", Some(&delegated)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("x-tessera-subject"), Some("alice"));
    assert_eq!(r.header("x-tessera-principal"), Some("human"));
    assert_eq!(r.header("x-tessera-actor"), Some(id.as_str()));
    assert_eq!(r.header("x-tessera-client-id"), Some(id.as_str()));
}

#[tokio::test]
async fn delegation_forbidden_allows_a_plain_human_token_and_refuses_a_delegated_one() {
    let t = TestApp::builder()
        .policy(&api_policy("forbidden"))
        .start()
        .await;
    let plain = t.human_token("alice", "api", "reports:read");
    let r = t.authz("GET", "/api/reports", Some(&plain)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("x-tessera-subject"), Some("alice"));
    assert_eq!(r.header("x-tessera-actor"), Some(""));

    let (id, secret) = product(&t, "api", &["reports:read"]).await;
    let delegated = delegated_token(&t, (&id, &secret)).await;
    let r = t.authz("GET", "/api/reports", Some(&delegated)).await;
    assert_eq!(
        (r.status, r.body["reason"].as_str()),
        (403, Some("delegation_forbidden")),
        "{}",
        r.text
    );
    assert!(r.header("x-tessera-actor").is_none());
    let audit = t.audit().await;
    let rec = audit
        .iter()
        .rev()
        .find(|a| a.record.event == "ext_authz")
        .expect("denial audited");
    assert_eq!(rec.record.reason, "delegation_forbidden (rule api)");
    assert_eq!(rec.record.subject.as_deref(), Some("alice"));
}

// ---------------------------------------------------------------------------
// 6. the CLI

/// A fresh store and a config file that trusts a cluster (workload) and a
/// company IdP (human). The CLI never contacts either.
fn cli_env() -> (tempfile::TempDir, BinEnv) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tessera.toml");
    std::fs::write(
        &config,
        "[[trusted_issuers]]\nname = \"cluster\"\nissuer = \"https://kubernetes.default.svc\"\n\
         kind = \"workload\"\naudiences = [\"tessera\"]\ndefault_tenant = \"acme\"\n\n\
         [[trusted_issuers]]\nname = \"corp\"\nissuer = \"https://idp.example.com\"\n\
         kind = \"human\"\naudiences = [\"tessera\"]\n",
    )
    .unwrap();
    let env = BinEnv::fresh(dir.path()).set("TESSERA_CONFIG", &config.display().to_string());
    (dir, env)
}

fn assert_failed(out: &CmdOutput, needle: &str) {
    assert!(
        out.code.is_some_and(|c| c != 0),
        "must fail: code {:?}, stdout {}",
        out.code,
        out.stdout
    );
    assert!(
        out.stdout.is_empty(),
        "errors go to stderr only: {}",
        out.stdout
    );
    assert!(
        out.stderr.contains(needle),
        "stderr mentions {needle:?}: {}",
        out.stderr
    );
}

#[tokio::test]
async fn cli_binds_shows_and_unbinds_a_workload_identity_and_refuses_duplicates_and_human_issuers()
{
    let (_dir, env) = cli_env();
    let created = env
        .run_json(&[
            "client",
            "create",
            "--no-secret",
            "--name",
            "billing",
            "--tenant",
            "acme",
            "--audience",
            "internal",
        ])
        .await;
    let id = created["client_id"].as_str().unwrap().to_string();
    assert!(
        created.get("client_secret").is_none(),
        "a --no-secret client gets no secret: {created}"
    );

    let subject = "system:serviceaccount:ns:name";
    let bound = env
        .run_json(&[
            "client",
            "bind-workload",
            &id,
            "--issuer",
            "cluster",
            "--subject",
            subject,
        ])
        .await;
    assert_eq!(bound["issuer"], "https://kubernetes.default.svc");
    assert_eq!(bound["subject"], subject);
    assert_eq!(bound["client_id"], id.as_str());
    assert!(bound["created_at"].as_i64().is_some_and(|t| t > 0));

    // The same identity again (here by its iss), even to the same client.
    let twice = env
        .run(&[
            "client",
            "bind-workload",
            &id,
            "--issuer",
            "https://kubernetes.default.svc",
            "--subject",
            subject,
        ])
        .await;
    assert_failed(&twice, "already bound");

    let show = env.run_json(&["client", "show", &id]).await;
    assert_eq!(show["workload_identities"], json!([bound]));
    assert_eq!(show["delegations"], json!([]));

    // An issuer of kind human cannot carry workload identities.
    let human = env
        .run(&[
            "client",
            "bind-workload",
            &id,
            "--issuer",
            "corp",
            "--subject",
            "alice",
        ])
        .await;
    assert_failed(&human, "workload");
    let unknown = env
        .run(&[
            "client",
            "bind-workload",
            &id,
            "--issuer",
            "elsewhere",
            "--subject",
            subject,
        ])
        .await;
    assert_failed(&unknown, "not a configured trusted issuer");

    let unbound = env
        .run_json(&[
            "client",
            "unbind-workload",
            "--issuer",
            "cluster",
            "--subject",
            subject,
        ])
        .await;
    assert_eq!(
        unbound,
        json!({"issuer": "https://kubernetes.default.svc", "subject": subject, "unbound": true})
    );
    let show = env.run_json(&["client", "show", &id]).await;
    assert_eq!(show["workload_identities"], json!([]));
    let again = env
        .run(&[
            "client",
            "unbind-workload",
            "--issuer",
            "cluster",
            "--subject",
            subject,
        ])
        .await;
    assert_failed(&again, "not bound");

    // Unbound, the identity can be bound again.
    env.run_json(&[
        "client",
        "bind-workload",
        &id,
        "--issuer",
        "cluster",
        "--subject",
        subject,
    ])
    .await;
}

#[tokio::test]
async fn cli_adds_lists_and_revokes_delegations() {
    let (_dir, env) = cli_env();
    let created = env
        .run_json(&[
            "client",
            "create",
            "--name",
            "product",
            "--tenant",
            "acme",
            "--audience",
            "internal",
        ])
        .await;
    let id = created["client_id"].as_str().unwrap().to_string();

    let added = env
        .run_json(&[
            "delegation",
            "add",
            "--client",
            &id,
            "--audience",
            "api",
            "--scope",
            "a",
        ])
        .await;
    let did = added["id"].as_str().expect("delegation id").to_string();
    assert_eq!(added["client_id"], id.as_str());
    assert_eq!(added["audiences"], json!(["api"]));
    assert_eq!(added["scopes"], json!(["a"]));
    assert_eq!(added["actors"], json!([]));
    assert_eq!(added["expires_at"], Value::Null);

    let list = env.run_json(&["delegation", "list", "--client", &id]).await;
    assert_eq!(list, json!([added]));
    let show = env.run_json(&["client", "show", &id]).await;
    assert_eq!(show["delegations"], json!([added]));

    let unknown_client = env
        .run(&[
            "delegation",
            "add",
            "--client",
            "no-such-client",
            "--audience",
            "api",
        ])
        .await;
    assert_failed(&unknown_client, "no client");

    let revoked = env.run_json(&["delegation", "revoke", &did]).await;
    assert_eq!(revoked, json!({"id": did, "revoked": true}));
    let list = env.run_json(&["delegation", "list", "--client", &id]).await;
    assert_eq!(list, json!([]));
    let again = env.run(&["delegation", "revoke", &did]).await;
    assert_failed(&again, "no delegation");
}

#[tokio::test]
async fn while_the_cluster_s_keys_cannot_be_fetched_workloads_get_503_and_each_refusal_is_audited()
{
    let idp = TestIdp::start().await;
    idp.set_mode(Mode::Down);
    let t = TestApp::builder()
        .config(&idp.config(
            "cluster",
            "workload",
            "default_tenant = \"acme\"\nfetch_timeout = \"300ms\"",
        ))
        .policy(INTERNAL_WI_POLICY)
        .start()
        .await;
    let client = bound_client(&t, SA_SUBJECT).await;
    let sa = idp.service_account_token(NS, SA_NAME, "tessera");

    let r = cc_with_assertion(&t, &sa, Some(&client.client_id)).await;
    assert_eq!(
        (r.status, r.error()),
        (503, "temporarily_unavailable"),
        "{}",
        r.text
    );
    assert_eq!(
        last_client_auth(&t).await,
        AuthFailure {
            decision: "deny".into(),
            reason: "workload_issuer_keys_unavailable".into(),
            client_id: Some(client.client_id.clone()),
        }
    );

    let r = t.authz("GET", "/internal/orders", Some(&sa)).await;
    assert_eq!(r.status, 503, "{}", r.text);
    let audit = t.audit().await;
    let rec = &audit.last().expect("an audit record").record;
    assert_eq!(
        (rec.event.as_str(), rec.decision.as_str()),
        ("ext_authz", "deny")
    );
    assert!(rec.reason.starts_with("issuer_keys_unavailable"), "{rec:?}");
}

#[tokio::test]
async fn at_a_route_a_bound_workload_is_its_client_for_the_rule_s_clients_and_the_headers() {
    let idp = TestIdp::start().await;
    // No default tenant: a bound workload takes its client's.
    let t = TestApp::builder()
        .config(&idp.config("cluster", "workload", ""))
        .policy(INTERNAL_WI_POLICY)
        .start()
        .await;
    let client = bound_client(&t, SA_SUBJECT).await;
    let only_billing = format!(
        "[[rule]]\nname = \"billing-only\"\npath = \"/internal/*\"\naccept = [\"workload\"]\n\
         audience = \"tessera\"\ntrusted_issuers = [\"cluster\"]\nclients = [{:?}]\n",
        client.client_id
    );
    // The client id is only known now: rewrite the (hot-reloaded) policy.
    let before = t.app().policy.current().version.clone();
    std::fs::write(t.policy_path(), &only_billing).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while t.app().policy.current().version == before {
        assert!(std::time::Instant::now() < deadline, "policy not reloaded");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let sa = idp.service_account_token(NS, SA_NAME, "tessera");
    let r = t.authz("GET", "/internal/orders", Some(&sa)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.header("x-tessera-client-id"),
        Some(client.client_id.as_str())
    );
    assert_eq!(r.header("x-tessera-tenant"), Some("acme"));
    assert_eq!(r.header("x-tessera-subject"), Some(SA_SUBJECT));
    // Another service account of the cluster, bound to nothing, is not it.
    let other = idp.service_account_token(NS, "other", "tessera");
    let r = t.authz("GET", "/internal/orders", Some(&other)).await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(r.body["reason"], "client_not_allowed", "{}", r.text);
}

#[tokio::test]
async fn at_a_route_a_bound_workload_has_its_client_s_tenant_and_is_refused_once_it_is_disabled() {
    let idp = TestIdp::start().await;
    // The cluster's entry says acme; the workload's client is globex's.
    let t = start_edge(&idp, &TestIdp::start().await).await;
    let (client, _) = t
        .register(NewClient {
            name: "globex-billing".into(),
            tenant: "globex".into(),
            audiences: vec!["internal".into()],
            no_secret: true,
            ..Default::default()
        })
        .await;
    bind(&t, &client.client_id, SA_SUBJECT).await;
    let sa = idp.service_account_token(NS, SA_NAME, "tessera");
    let r = t.authz("GET", "/internal/orders", Some(&sa)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("x-tessera-tenant"), Some("globex"));
    assert_eq!(
        r.header("x-tessera-client-id"),
        Some(client.client_id.as_str())
    );

    let app = t.app();
    assert!(app
        .store
        .set_disabled(&client.client_id, true, app.clock.now())
        .await
        .unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    let r = loop {
        let r = t.authz("GET", "/internal/orders", Some(&sa)).await;
        if r.status != 200 || std::time::Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(r.body["reason"], "client_not_allowed", "{}", r.text);
    let audit = t.audit().await;
    let rec = &audit.last().unwrap().record;
    assert_eq!(rec.subject.as_deref(), Some(SA_SUBJECT), "{rec:?}");
}
