//! Introspection (RFC 7662) and revocation (RFC 7009).

use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn introspection_reports_active_tokens_with_their_claims() {
    let t = TestApp::start().await;
    let (c, secret) = t.client("acme", &["internal"], &["a"]).await;
    let (rs, rs_secret) = t.client("acme", &["internal"], &[]).await;
    let token = t.service_token(&c, &secret, &[]).await;
    let r = t
        .post_form(
            "/oauth2/introspect",
            Some((&rs.client_id, &rs_secret)),
            &[("token", &token), ("token_type_hint", "access_token")],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let b = &r.body;
    assert_eq!(b["active"], true);
    assert_eq!(b["client_id"], c.client_id.as_str());
    assert_eq!(b["sub"], c.client_id.as_str());
    assert_eq!(b["scope"], "a");
    assert_eq!(b["aud"], "internal");
    assert_eq!(b["iss"], format!("{}/issuers/service", t.base));
    assert_eq!(b["principal"], "service");
    assert_eq!(b["tenant"], "acme");
    assert_eq!(b["token_type"], "Bearer");
    assert!(b["exp"].is_i64() && b["iat"].is_i64() && b["jti"].is_string());
    let human = t.human_token("alice", "api", "profile");
    let r = t
        .post_form(
            "/oauth2/introspect",
            Some((&rs.client_id, &rs_secret)),
            &[("token", &human)],
        )
        .await;
    assert_eq!(
        (
            r.body["active"].as_bool(),
            r.body["principal"].as_str(),
            r.body["sub"].as_str()
        ),
        (Some(true), Some("human"), Some("alice"))
    );
    let rec = t
        .audit()
        .await
        .into_iter()
        .rev()
        .find(|a| a.record.event == "introspection")
        .unwrap();
    assert_eq!(
        (rec.record.decision.as_str(), rec.record.subject.as_deref()),
        ("allow", Some("alice"))
    );
}

#[tokio::test]
async fn inactive_tokens_say_nothing_more() {
    let t = TestApp::start().await;
    let (c, secret) = t.client("acme", &["internal"], &[]).await;
    let token = t.service_token(&c, &secret, &[]).await;
    let parts: Vec<&str> = token.split('.').collect();
    let tampered = format!("{}.{}.{}", parts[0], b64(br#"{"sub":"admin"}"#), parts[2]);
    let none = format!("{}.{}.", b64(br#"{"alg":"none","typ":"at+jwt"}"#), parts[1]);
    let hs256 = format!(
        "{}.{}.{}",
        b64(br#"{"alg":"HS256","typ":"at+jwt"}"#),
        parts[1],
        parts[2]
    );
    let oversized = format!("{token}{}", "A".repeat(9000));
    let unknown_kid = format!(
        "{}.{}.{}",
        b64(br#"{"alg":"ES256","typ":"at+jwt","kid":"nope"}"#),
        parts[1],
        parts[2]
    );
    let wrong_typ = {
        let claims = t.human_claims("bob", "api", "");
        // Re-sign with the right key but a different typ through the jose module.
        let ring = t.app().issuers.human.ring();
        let key = ring.signing_at(claims.iat).unwrap();
        key.signing.sign("JWT", &claims).unwrap()
    };
    for (name, bad) in [
        ("garbage", "not-a-token".to_string()),
        ("tampered", tampered),
        ("alg none", none),
        ("alg confusion", hs256),
        ("oversized", oversized),
        ("unknown kid", unknown_kid),
        ("wrong typ", wrong_typ),
        ("sql", "' OR 1=1 --".to_string()),
    ] {
        let r = t
            .post_form(
                "/oauth2/introspect",
                Some((&c.client_id, &secret)),
                &[("token", &bad)],
            )
            .await;
        assert_eq!(
            (r.status, &r.body),
            (200, &json!({"active": false})),
            "{name}"
        );
    }
    // Expired: time moves, nothing sleeps.
    t.clock.advance(301);
    let r = t
        .post_form(
            "/oauth2/introspect",
            Some((&c.client_id, &secret)),
            &[("token", &token)],
        )
        .await;
    assert_eq!(r.body, json!({"active": false}));
    let last = t.audit().await.pop().unwrap();
    assert_eq!(
        (last.record.event.as_str(), last.record.decision.as_str()),
        ("introspection", "deny")
    );
    assert!(
        last.record.reason.contains("token_expired"),
        "{}",
        last.record.reason
    );
}

#[tokio::test]
async fn introspection_requires_client_authentication_and_a_token() {
    let t = TestApp::start().await;
    let (c, secret) = t.client("acme", &["internal"], &[]).await;
    let token = t.service_token(&c, &secret, &[]).await;
    let r = t
        .post_form("/oauth2/introspect", None, &[("token", &token)])
        .await;
    assert_eq!((r.status, r.error()), (401, "invalid_client"));
    assert!(r.header("www-authenticate").is_some());
    let r = t
        .post_form(
            "/oauth2/introspect",
            Some((&c.client_id, "wrong")),
            &[("token", &token)],
        )
        .await;
    assert_eq!((r.status, r.error()), (401, "invalid_client"));
    let r = t
        .post_form("/oauth2/introspect", Some((&c.client_id, &secret)), &[])
        .await;
    assert_eq!((r.status, r.error()), (400, "invalid_request"));
}

#[tokio::test]
async fn revoked_token_is_inactive_everywhere_on_this_replica_at_once() {
    let t = TestApp::start().await;
    let (c, secret) = t.client("acme", &["internal"], &[]).await;
    let token = t.service_token(&c, &secret, &[]).await;
    assert_eq!(
        t.authz("GET", "/internal/x", Some(&token)).await.status,
        200,
        "cached as verified"
    );
    let r = t
        .post_form(
            "/oauth2/revoke",
            Some((&c.client_id, &secret)),
            &[("token", &token), ("token_type_hint", "access_token")],
        )
        .await;
    assert_eq!(r.status, 200);
    let r = t
        .post_form(
            "/oauth2/introspect",
            Some((&c.client_id, &secret)),
            &[("token", &token)],
        )
        .await;
    assert_eq!(r.body, json!({"active": false}));
    let r = t.authz("GET", "/internal/x", Some(&token)).await;
    assert_eq!(
        (r.status, r.body["reason"].as_str()),
        (401, Some("token_revoked")),
        "the verified-token cache never outlives a revocation"
    );
    let rec = t
        .audit()
        .await
        .into_iter()
        .find(|a| a.record.event == "revocation")
        .unwrap();
    assert_eq!(rec.record.decision, "allow");
    assert_eq!(rec.record.jti.as_deref(), claims_of(&token)["jti"].as_str());

    // A second server on the same store picks the revocation up at start.
    // (Cross-process propagation within a second is in `replicas`.)
    let revoked = t
        .app()
        .store
        .revocations_since(i64::MIN, now())
        .await
        .unwrap();
    assert_eq!(revoked.len(), 1);
}

#[tokio::test]
async fn revocation_follows_rfc_7009() {
    let t = TestApp::start().await;
    let (c, secret) = t.client("acme", &["internal"], &[]).await;
    let (other, other_secret) = t.client("acme", &["internal"], &[]).await;
    let token = t.service_token(&c, &secret, &[]).await;
    // Invalid or unknown tokens: 200, nothing to do (§2.2).
    for bad in ["garbage", "a.b.c"] {
        let r = t
            .post_form(
                "/oauth2/revoke",
                Some((&c.client_id, &secret)),
                &[("token", bad)],
            )
            .await;
        assert_eq!(r.status, 200);
    }
    // Another client's token: refused, and the token stays active.
    let r = t
        .post_form(
            "/oauth2/revoke",
            Some((&other.client_id, &other_secret)),
            &[("token", &token)],
        )
        .await;
    assert_eq!((r.status, r.error()), (400, "unauthorized_client"));
    let r = t
        .post_form(
            "/oauth2/introspect",
            Some((&c.client_id, &secret)),
            &[("token", &token)],
        )
        .await;
    assert_eq!(r.body["active"], true);
    let denied = t
        .audit()
        .await
        .into_iter()
        .rev()
        .find(|a| a.record.event == "revocation")
        .unwrap();
    assert_eq!(denied.record.decision, "deny");
    // An admin client may revoke any token.
    let (admin, admin_secret) = t.client("ops", &["internal"], &["tessera:admin"]).await;
    let r = t
        .post_form(
            "/oauth2/revoke",
            Some((&admin.client_id, &admin_secret)),
            &[("token", &token)],
        )
        .await;
    assert_eq!(r.status, 200);
    let r = t
        .post_form(
            "/oauth2/introspect",
            Some((&c.client_id, &secret)),
            &[("token", &token)],
        )
        .await;
    assert_eq!(r.body["active"], false);
    // Unauthenticated revocation is refused.
    let r = t
        .post_form("/oauth2/revoke", None, &[("token", &token)])
        .await;
    assert_eq!((r.status, r.error()), (401, "invalid_client"));
}

#[tokio::test]
async fn a_replica_that_cannot_read_revocations_fails_closed() {
    let t = TestApp::start().await;
    let (c, secret) = t.client("acme", &["internal"], &[]).await;
    let token = t.service_token(&c, &secret, &[]).await;
    assert_eq!(
        t.authz("GET", "/internal/x", Some(&token)).await.status,
        200
    );
    // The store stops answering revocation polls.
    crate::audit::RawDb::open(&t)
        .await
        .exec("DROP TABLE revoked_tokens")
        .await
        .unwrap();
    let deadline = std::time::Instant::now()
        + tessera::revocation::MAX_STALENESS
        + std::time::Duration::from_secs(3);
    let mut r = t.authz("GET", "/internal/x", Some(&token)).await;
    while r.status == 200 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        r = t.authz("GET", "/internal/x", Some(&token)).await;
    }
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (503, Some("temporarily_unavailable")),
        "a stale revocation set never allows"
    );
    let r = t
        .post_form(
            "/oauth2/introspect",
            Some((&c.client_id, &secret)),
            &[("token", &token)],
        )
        .await;
    assert_eq!((r.status, r.error()), (503, "temporarily_unavailable"));
    // Both refusals are audited, with what made them.
    let audit = t.audit().await;
    for event in ["ext_authz", "introspection"] {
        let rec = audit
            .iter()
            .rev()
            .find(|a| a.record.event == event)
            .unwrap_or_else(|| panic!("an {event} record"));
        assert_eq!(rec.record.decision, "deny", "{:?}", rec.record);
        assert!(
            rec.record.reason.starts_with("revocations_stale"),
            "{:?}",
            rec.record
        );
    }
}

#[tokio::test]
async fn a_revocation_that_cannot_be_stored_is_503_and_audited_and_the_token_stays_usable() {
    let t = TestApp::start().await;
    let (c, secret) = t.client("acme", &["internal"], &[]).await;
    let token = t.service_token(&c, &secret, &[]).await;
    crate::audit::RawDb::open(&t)
        .await
        .exec("DROP TABLE revoked_tokens")
        .await
        .unwrap();
    let r = t
        .post_form(
            "/oauth2/revoke",
            Some((&c.client_id, &secret)),
            &[("token", &token)],
        )
        .await;
    assert_eq!((r.status, r.error()), (503, "temporarily_unavailable"));
    let audit = t.audit().await;
    let rec = &audit
        .iter()
        .rev()
        .find(|a| a.record.event == "revocation")
        .expect("a revocation record")
        .record;
    assert_eq!(rec.decision, "deny", "{rec:?}");
    assert!(
        rec.reason.starts_with("revocation_store_unavailable"),
        "{rec:?}"
    );
    // Not revoked in memory either: nothing half-done.
    let jti = crate::harness::claims_of(&token)["jti"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!t.app().revocations.is_revoked(&jti));
}
