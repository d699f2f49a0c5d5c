//! Envoy HTTP ext_authz: the route policy of DESIGN.md §4 applied to real
//! tokens, the response shapes Envoy relies on, and the audit trail.

use crate::harness::*;

#[tokio::test]
async fn builtin_policy_lets_each_credential_kind_through_only_its_own_routes() {
    let t = TestApp::start().await;
    let (c, secret) = t
        .client("acme", &["internal", "api"], &["orders:read"])
        .await;
    let service_internal = t
        .service_token(&c, &secret, &[("audience", "internal")])
        .await;
    let service_api = t.service_token(&c, &secret, &[("audience", "api")]).await;
    let human_api = t.human_token("alice", "api", "profile");
    let human_internal = t.human_token("alice", "internal", "");

    let allow = t
        .authz("POST", "/internal/orders?x=1", Some(&service_internal))
        .await;
    assert_eq!(allow.status, 200, "{}", allow.text);
    assert_eq!(
        allow.header("x-tessera-subject"),
        Some(c.client_id.as_str())
    );
    assert_eq!(allow.header("x-tessera-principal"), Some("service"));
    assert_eq!(allow.header("x-tessera-tenant"), Some("acme"));
    assert_eq!(
        allow.header("x-tessera-client-id"),
        Some(c.client_id.as_str())
    );
    assert_eq!(
        allow.header("authorization"),
        Some(format!("Bearer {service_internal}").as_str())
    );

    let allow = t.authz("GET", "/api/profile", Some(&human_api)).await;
    assert_eq!(allow.status, 200, "{}", allow.text);
    assert_eq!(allow.header("x-tessera-subject"), Some("alice"));
    assert_eq!(allow.header("x-tessera-principal"), Some("human"));

    let cases = [
        (
            "/internal/orders",
            &human_internal,
            403,
            "credential_kind_not_accepted",
        ),
        (
            "/internal/orders",
            &human_api,
            403,
            "credential_kind_not_accepted",
        ),
        (
            "/api/profile",
            &service_api,
            403,
            "credential_kind_not_accepted",
        ),
        ("/internal/orders", &service_api, 403, "wrong_audience"),
        ("/ui/home", &human_api, 403, "no_matching_rule"),
        // /data/* wants a person's token for the data audience.
        ("/data/sales.orders/x", &human_api, 403, "wrong_audience"),
        ("/", &service_internal, 403, "no_matching_rule"),
        (
            "//internal/orders",
            &service_internal,
            403,
            "non_canonical_path",
        ),
        (
            "/internal/a%2F..%2Fb",
            &service_internal,
            403,
            "non_canonical_path",
        ),
        (
            "/internal/%61dmin",
            &service_internal,
            403,
            "non_canonical_path",
        ),
        (
            "/internal/admin;x/users",
            &service_internal,
            403,
            "non_canonical_path",
        ),
        (
            "/internal/%252e%252e/x",
            &service_internal,
            403,
            "non_canonical_path",
        ),
    ];
    for (path, token, status, reason) in cases {
        let r = t.authz("GET", path, Some(token)).await;
        assert_eq!(
            (r.status, r.body["reason"].as_str()),
            (status, Some(reason)),
            "{path}"
        );
        assert!(r.header("x-tessera-subject").is_none());
        assert_eq!(r.header("cache-control"), Some("no-store"));
    }
    let r = t.authz("GET", "/internal/orders", Some(&service_api)).await;
    assert_eq!(r.body["error"], "insufficient_scope");
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .starts_with("Bearer realm=\"tessera\", error=\"insufficient_scope\""));
}

#[tokio::test]
async fn bad_credentials_are_401_with_an_rfc_6750_challenge() {
    let t = TestApp::start().await;
    let (c, secret) = t.client("acme", &["internal"], &[]).await;
    let token = t.service_token(&c, &secret, &[]).await;
    let parts: Vec<&str> = token.split('.').collect();
    let cases = [
        (
            "tampered",
            format!("{}.{}.{}", parts[0], b64(br#"{"sub":"x"}"#), parts[2]),
            "bad_signature",
        ),
        (
            "alg none",
            format!("{}.{}.", b64(br#"{"alg":"none","typ":"at+jwt"}"#), parts[1]),
            "unsupported_alg",
        ),
        (
            "HS256",
            format!(
                "{}.{}.{}",
                b64(br#"{"alg":"HS256","typ":"at+jwt"}"#),
                parts[1],
                parts[2]
            ),
            "unsupported_alg",
        ),
        (
            "unknown kid",
            format!(
                "{}.{}.{}",
                b64(br#"{"alg":"ES256","typ":"at+jwt","kid":"k"}"#),
                parts[1],
                parts[2]
            ),
            "unknown_key",
        ),
        ("garbage", "abc".to_string(), "malformed_token"),
        ("oversized", "a".repeat(9000), "token_too_large"),
    ];
    for (name, bad, reason) in cases {
        let r = t.authz("GET", "/internal/x", Some(&bad)).await;
        assert_eq!(
            (
                r.status,
                r.body["error"].as_str(),
                r.body["reason"].as_str()
            ),
            (401, Some("invalid_token"), Some(reason)),
            "{name}"
        );
        let challenge = r.header("www-authenticate").unwrap();
        assert!(
            challenge.starts_with("Bearer realm=\"tessera\", error=\"invalid_token\""),
            "{challenge}"
        );
    }
    // No credential: a bare challenge (RFC 6750 §3.1).
    let r = t.authz("GET", "/internal/x", None).await;
    assert_eq!(
        (r.status, r.header("www-authenticate")),
        (401, Some("Bearer realm=\"tessera\""))
    );
    assert_eq!(r.body["reason"], "missing_credential");
    let r = t
        .send(
            t.http
                .get(format!("{}/ext_authz/internal/x", t.base))
                .header("authorization", "Basic Zm9vOmJhcg=="),
        )
        .await;
    assert_eq!(r.status, 401);
    // Expired and not-yet-valid.
    let mut future = t.human_claims("bob", "api", "");
    future.nbf = Some(future.iat + 3600);
    let future = t.app().issuers.human.mint(&future).unwrap();
    let r = t.authz("GET", "/api/x", Some(&future)).await;
    assert_eq!(r.body["reason"], "token_not_yet_valid");
    t.clock.advance(301);
    let r = t.authz("GET", "/internal/x", Some(&token)).await;
    assert_eq!(
        (r.status, r.body["reason"].as_str()),
        (401, Some("token_expired"))
    );
}

#[tokio::test]
async fn every_denial_is_audited_with_the_policy_version() {
    let t = TestApp::start().await;
    let (c, secret) = t.client("acme", &["internal"], &[]).await;
    let token = t.service_token(&c, &secret, &[]).await;
    let before = t.audit().await.len();
    assert_eq!(
        t.authz("GET", "/internal/x", Some(&token)).await.status,
        200
    );
    assert_eq!(
        t.audit().await.len(),
        before,
        "allows are audited only where the rule asks"
    );
    let r = t
        .send(
            t.http
                .get(format!("{}/ext_authz/api/x", t.base))
                .bearer_auth(&token)
                .header("x-request-id", "req-42"),
        )
        .await;
    assert_eq!(r.status, 403);
    let rec = t.audit().await.pop().unwrap().record;
    assert_eq!(
        (rec.event.as_str(), rec.decision.as_str()),
        ("ext_authz", "deny")
    );
    assert!(
        rec.reason.starts_with("credential_kind_not_accepted"),
        "{}",
        rec.reason
    );
    assert_eq!(rec.route.as_deref(), Some("GET /api/x"));
    assert_eq!(rec.request_id.as_deref(), Some("req-42"));
    assert_eq!(
        rec.policy_version,
        Some(t.app().policy.current().version.clone())
    );
    assert_eq!(rec.client_id.as_deref(), Some(c.client_id.as_str()));
    assert_eq!(rec.principal.as_deref(), Some("service"));
    assert_eq!(rec.jti.as_deref(), claims_of(&token)["jti"].as_str());
    assert!(rec.peer.is_some());
}

const POLICY: &str = r#"
[[rule]]
name = "billing"
path = "/internal/billing/*"
methods = ["POST"]
accept = ["service"]
audience = "internal"
scopes = ["billing:write"]
tenants = ["acme"]
audit = "all"

[[rule]]
name = "internal"
path = "/internal/*"
accept = ["service"]
audience = "internal"
"#;

#[tokio::test]
async fn policy_file_rules_scopes_allow_lists_and_hot_reload() {
    let t = TestApp::builder().policy(POLICY).start().await;
    let (writer, ws) = t.client("acme", &["internal"], &["billing:write"]).await;
    let (reader, rs) = t.client("acme", &["internal"], &["billing:read"]).await;
    let (other, os) = t.client("globex", &["internal"], &["billing:write"]).await;
    let w = t.service_token(&writer, &ws, &[]).await;
    let r = t.service_token(&reader, &rs, &[]).await;
    let o = t.service_token(&other, &os, &[]).await;

    assert_eq!(
        t.authz("POST", "/internal/billing/pay", Some(&w))
            .await
            .status,
        200
    );
    let allowed = t.audit().await.pop().unwrap().record;
    assert_eq!(
        (allowed.decision.as_str(), allowed.reason.as_str()),
        ("allow", "allowed by rule billing")
    );
    let denied = t.authz("POST", "/internal/billing/pay", Some(&r)).await;
    assert_eq!(
        (denied.status, denied.body["reason"].as_str()),
        (403, Some("missing_scope"))
    );
    assert!(denied
        .header("www-authenticate")
        .unwrap()
        .contains("scope=\"billing:write\""));
    let denied = t.authz("POST", "/internal/billing/pay", Some(&o)).await;
    assert_eq!(denied.body["reason"], "tenant_not_allowed");
    // GET falls through to the general internal rule.
    assert_eq!(
        t.authz("GET", "/internal/billing/pay", Some(&r))
            .await
            .status,
        200
    );

    // Hot reload: restrict /internal/* to one client; the version changes.
    let v1 = t.app().policy.current().version.clone();
    let restricted = format!("{POLICY}clients = [\"{}\"]\n", writer.client_id);
    std::fs::write(t.policy_path(), &restricted).unwrap();
    let mut reloaded = false;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if t.app().policy.current().version != v1 {
            reloaded = true;
            break;
        }
    }
    assert!(reloaded, "policy file change is picked up");
    let denied = t.authz("GET", "/internal/x", Some(&r)).await;
    assert_eq!(denied.body["reason"], "client_not_allowed");
    assert_ne!(
        t.audit()
            .await
            .pop()
            .unwrap()
            .record
            .policy_version
            .as_deref(),
        Some(v1.as_str())
    );

    // A broken file keeps the last good policy in force.
    let v2 = t.app().policy.current().version.clone();
    std::fs::write(t.policy_path(), "[[rule]]\nname = 'x'\n").unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(t.app().policy.current().version, v2);
    assert_eq!(t.authz("GET", "/internal/x", Some(&w)).await.status, 200);
}

#[tokio::test]
async fn original_request_headers_are_ignored_unless_trusted() {
    let t = TestApp::start().await;
    let (c, secret) = t.client("acme", &["internal"], &[]).await;
    let token = t.service_token(&c, &secret, &[]).await;
    // A client trying to get /api/x checked as /internal/x.
    let r = t
        .send(
            t.http
                .get(format!("{}/ext_authz/api/x", t.base))
                .bearer_auth(&token)
                .header("x-original-uri", "/internal/x")
                .header("x-original-method", "GET"),
        )
        .await;
    assert_eq!(
        (r.status, r.body["reason"].as_str()),
        (403, Some("credential_kind_not_accepted"))
    );
    assert!(r.body["request_id"].is_string());
}

// ---------------------------------------------------------------------------
// Tokens taken directly from a trusted IdP

mod trusted {
    use serde_json::{json, Value};

    use crate::harness::*;
    use crate::idp::TestIdp;

    const API: &str = "[[rule]]\nname = \"api\"\npath = \"/api/*\"\naccept = [\"human\"]\naudience = \"tessera\"\ntrusted_issuers = [\"corp\"]\n";

    /// A Tessera trusting `idp` as "corp" with `extra` lines, behind the
    /// `api` rule.
    async fn edge(idp: &TestIdp, config: &str, extra: &str) -> TestApp {
        TestApp::builder()
            .config(config)
            .config(&idp.config("corp", "human", extra))
            .policy(API)
            .start()
            .await
    }

    /// The deny reason, after checking the status.
    #[track_caller]
    fn denied(r: &Reply, status: u16) -> String {
        assert_eq!(r.status, status, "{}", r.text);
        assert!(r.header("x-tessera-subject").is_none(), "{}", r.text);
        r.body["reason"].as_str().unwrap_or_default().to_string()
    }

    /// An access token from `idp` for alice with `extra` claims, signed with
    /// header `typ`.
    fn token(idp: &TestIdp, typ: &str, extra: Value) -> String {
        let mut c = idp.claims("alice", "tessera");
        c["tenant"] = "acme".into();
        c["client_id"] = "portal".into();
        crate::idp::merge(&mut c, extra);
        idp.sign_typ(typ, &c)
    }

    #[tokio::test]
    async fn an_id_token_is_refused_as_id_token_not_accepted_and_an_access_token_passes() {
        let idp = TestIdp::start().await;
        let t = edge(&idp, "", "").await;
        let r = t
            .authz(
                "GET",
                "/api/reports",
                Some(&idp.access_token("alice", "", json!({}))),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.header("x-tessera-subject"), Some("alice"));
        // An untyped JWT without ID-token claims is not taken for one.
        let r = t
            .authz("GET", "/api/reports", Some(&token(&idp, "JWT", json!({}))))
            .await;
        assert_eq!(r.status, 200, "{}", r.text);

        for id_token in [
            idp.id_token("alice", json!({})),
            token(&idp, "JWT", json!({"at_hash": "x"})),
            token(&idp, "JWT", json!({"typ": "ID"})),
        ] {
            let r = t.authz("GET", "/api/reports", Some(&id_token)).await;
            assert_eq!(denied(&r, 401), "id_token_not_accepted");
            assert_eq!(r.error(), "invalid_token");
            let challenge = r.header("www-authenticate").unwrap_or_default();
            assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
        }
        let audit = t.audit().await;
        let rec = &audit.last().expect("denial audited").record;
        assert_eq!(rec.reason, "id_token_not_accepted (rule api)");
        assert_eq!(rec.upstream_issuer.as_deref(), Some("corp"));
    }

    #[tokio::test]
    async fn a_token_must_also_name_one_of_its_issuers_audiences() {
        let idp = TestIdp::start().await;
        // The rule wants `tessera`; corp is trusted for `tessera` only, so
        // the IdP's token for `tessera` alone passes, and one that names
        // only the rule's audience when the issuer is trusted for another
        // does not.
        let t = TestApp::builder()
            .config(&idp.config("corp", "human", "").replace(
                "audiences = [\"tessera\"]",
                "audiences = [\"tessera-edge\"]",
            ))
            .policy(API)
            .start()
            .await;
        let only_rule = idp.access_token("alice", "", json!({}));
        let r = t.authz("GET", "/api/reports", Some(&only_rule)).await;
        assert_eq!(denied(&r, 403), "wrong_audience");
        let both = idp.access_token("alice", "", json!({"aud": ["tessera", "tessera-edge"]}));
        let r = t.authz("GET", "/api/reports", Some(&both)).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }

    #[tokio::test]
    async fn an_act_chain_longer_than_max_delegation_depth_or_malformed_is_invalid_token() {
        let idp = TestIdp::start().await;
        let t = edge(&idp, "[oauth]\nmax_delegation_depth = 2", "").await;
        let two = json!({"act": {"sub": "gateway", "act": {"sub": "portal"}}});
        let r = t
            .authz(
                "GET",
                "/api/reports",
                Some(&idp.access_token("alice", "", two)),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.header("x-tessera-actor"), Some("corp:gateway"));
        for act in [
            json!({"sub": "a", "act": {"sub": "b", "act": {"sub": "c"}}}),
            json!("gateway"),
            json!({"sub": ""}),
            json!({"sub": "gateway", "act": {"sub": ["portal"]}}),
        ] {
            let bad = idp.access_token("alice", "", json!({ "act": act.clone() }));
            let r = t.authz("GET", "/api/reports", Some(&bad)).await;
            assert_eq!(denied(&r, 401), "invalid_act", "{act}");
        }
    }

    #[tokio::test]
    async fn a_token_typed_for_another_use_is_refused_as_wrong_token_type() {
        let idp = TestIdp::start().await;
        let t = edge(&idp, "", "").await;
        for typ in ["secevent+jwt", "logout+jwt", "dpop+jwt"] {
            let r = t
                .authz("GET", "/api/reports", Some(&token(&idp, typ, json!({}))))
                .await;
            assert_eq!(denied(&r, 401), "wrong_token_type", "{typ}");
        }
    }

    #[tokio::test]
    async fn extreme_token_times_are_refused_or_bounded_without_overflow() {
        let idp = TestIdp::start().await;
        let t = edge(&idp, "", "").await;
        let now = t.clock.now();
        // A far-future `exp` is bounded by max_token_age, not an overflow.
        let far = token(&idp, "at+jwt", json!({"exp": i64::MAX, "iat": now}));
        let r = t.authz("GET", "/api/reports", Some(&far)).await;
        assert_eq!(r.status, 200, "{}", r.text);
        for (claims, reason) in [
            (json!({"iat": i64::MIN}), "token_too_old"),
            (json!({"iat": -1}), "token_too_old"),
            (json!({"exp": i64::MIN}), "token_expired"),
            (json!({"exp": -1}), "token_expired"),
            (json!({"iat": i64::MAX}), "token_not_yet_valid"),
            (json!({"iat": now, "nbf": i64::MAX}), "token_not_yet_valid"),
        ] {
            let bad = token(&idp, "at+jwt", claims.clone());
            let r = t.authz("GET", "/api/reports", Some(&bad)).await;
            assert_eq!(denied(&r, 401), reason, "{claims}");
        }
    }

    #[tokio::test]
    async fn a_tenant_outside_the_issuers_tenants_is_refused() {
        let idp = TestIdp::start().await;
        let t = edge(&idp, "", "tenants = [\"acme\"]").await;
        let r = t
            .authz(
                "GET",
                "/api/reports",
                Some(&token(&idp, "at+jwt", json!({}))),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let globex = token(&idp, "at+jwt", json!({"tenant": "globex"}));
        let r = t.authz("GET", "/api/reports", Some(&globex)).await;
        assert_eq!(denied(&r, 401), "tenant_not_accepted");
    }
}
