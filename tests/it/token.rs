//! `POST /oauth2/token` with client_credentials: the happy paths, checked
//! by an independent JWT library against the published JWKS, and every
//! refusal with its RFC 6749 error and audit record.

use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde_json::Value;

use crate::harness::*;

async fn verify_independently(t: &TestApp, token: &str, audience: &str) -> Value {
    let jwks = t.get("/issuers/service/jwks.json").await.body;
    let header = decode_header(token).unwrap();
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    let kid = header.kid.expect("kid");
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .expect("kid published");
    let key =
        DecodingKey::from_ec_components(jwk["x"].as_str().unwrap(), jwk["y"].as_str().unwrap())
            .unwrap();
    let mut v = Validation::new(Algorithm::ES256);
    v.set_audience(&[audience]);
    v.set_issuer(&[format!("{}/issuers/service", t.base)]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    decode::<Value>(token, &key, &v)
        .expect("verifies with a stock JWT library")
        .claims
}

#[tokio::test]
async fn client_credentials_issues_a_service_token_from_the_service_issuer() {
    let t = TestApp::start().await;
    let (c, secret) = t
        .client("acme", &["internal"], &["orders:read", "orders:write"])
        .await;
    let r = t
        .post_form(
            "/oauth2/token",
            Some((&c.client_id, &secret)),
            &[("grant_type", "client_credentials")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.body["token_type"], "Bearer");
    assert_eq!(r.body["expires_in"], 300);
    assert_eq!(r.body["scope"], "orders:read orders:write");
    let token = r.body["access_token"].as_str().unwrap();
    let claims = verify_independently(&t, token, "internal").await;
    assert_eq!(claims["sub"], c.client_id.as_str());
    assert_eq!(claims["client_id"], c.client_id.as_str());
    assert_eq!(claims["principal"], "service");
    assert_eq!(claims["tenant"], "acme");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        300
    );
    assert!(claims["jti"].as_str().is_some_and(|j| j.len() >= 16));

    // The issuance is audited, durably, before the answer.
    let audit = t.audit().await;
    let rec = audit
        .iter()
        .find(|a| a.record.event == "token_issuance")
        .expect("issuance audited");
    assert_eq!(rec.record.decision, "allow");
    assert_eq!(rec.record.client_id.as_deref(), Some(c.client_id.as_str()));
    assert_eq!(rec.record.jti.as_deref(), claims["jti"].as_str());
    assert_eq!(rec.record.audience.as_deref(), Some("internal"));
    assert_eq!(rec.record.principal.as_deref(), Some("service"));
    assert!(rec.record.request_id.is_some() && rec.record.peer.is_some());
    assert!(!rec.record.reason.contains(&secret) && !rec.record.reason.contains(token));
}

#[tokio::test]
async fn client_secret_post_and_requested_subset() {
    let t = TestApp::start().await;
    let (c, secret) = t
        .client("acme", &["internal", "reports"], &["a", "b"])
        .await;
    let r = t
        .post_form(
            "/oauth2/token",
            None,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", &c.client_id),
                ("client_secret", &secret),
                ("scope", "b"),
                ("audience", "reports"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["scope"], "b");
    let claims = claims_of(r.body["access_token"].as_str().unwrap());
    assert_eq!(claims["aud"], "reports");
    assert_eq!(claims["scope"], "b");

    // RFC 8707 resource, repeated: both become audiences.
    let (c2, s2) = t
        .client("acme", &["https://a.example/", "https://b.example/"], &[])
        .await;
    let r = t
        .post_form(
            "/oauth2/token",
            Some((&c2.client_id, &s2)),
            &[
                ("grant_type", "client_credentials"),
                ("resource", "https://a.example/"),
                ("resource", "https://b.example/"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        claims_of(r.body["access_token"].as_str().unwrap())["aud"],
        serde_json::json!(["https://a.example/", "https://b.example/"])
    );
}

#[tokio::test]
async fn scope_and_audience_outside_the_registration_are_refused() {
    let t = TestApp::start().await;
    let (c, secret) = t.client("acme", &["internal"], &["a"]).await;
    let auth = Some((c.client_id.as_str(), secret.as_str()));
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("scope", "a admin")], "invalid_scope"),
        (&[("scope", "a\u{7f}")], "invalid_request"),
        (&[("audience", "api")], "invalid_target"),
        (
            &[("resource", "https://elsewhere.example/")],
            "invalid_target",
        ),
        (&[("resource", "not a uri")], "invalid_target"),
        (&[("resource", "https://x.example/#frag")], "invalid_target"),
    ];
    for (extra, error) in cases {
        let mut form = vec![("grant_type", "client_credentials")];
        form.extend_from_slice(extra);
        let r = t.post_form("/oauth2/token", auth, &form).await;
        assert_eq!(
            (r.status, r.error()),
            (400, *error),
            "{extra:?}: {}",
            r.text
        );
        assert_eq!(r.header("cache-control"), Some("no-store"));
    }
    let refused = t
        .audit()
        .await
        .into_iter()
        .filter(|a| a.record.event == "token_issuance" && a.record.decision == "deny")
        .count();
    assert_eq!(
        refused, 5,
        "each refusal of an authenticated client is audited"
    );
}

#[tokio::test]
async fn failed_client_authentication_is_invalid_client_with_a_challenge_and_audited() {
    let t = TestApp::start().await;
    let (c, secret) = t.client("acme", &["internal"], &[]).await;
    let (other, other_secret) = t.client("acme", &["internal"], &[]).await;
    let form = [("grant_type", "client_credentials")];
    let cases = [
        (c.client_id.clone(), "wrong".to_string(), "bad_secret"),
        (c.client_id.clone(), other_secret.clone(), "bad_secret"),
        (
            "no-such-client".to_string(),
            secret.clone(),
            "unknown_client",
        ),
        (
            "' OR '1'='1".to_string(),
            "' OR 1=1 --".to_string(),
            "unknown_client",
        ),
    ];
    for (id, s, reason) in &cases {
        let r = t.post_form("/oauth2/token", Some((id, s)), &form).await;
        assert_eq!((r.status, r.error()), (401, "invalid_client"), "{id}");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Basic realm=\"tessera\"")
        );
        let audit = t.audit().await;
        let last = audit.last().unwrap();
        assert_eq!(
            (
                last.record.event.as_str(),
                last.record.decision.as_str(),
                last.record.reason.as_str()
            ),
            ("client_authentication", "deny", *reason)
        );
        assert!(!last.record.reason.contains(s.as_str()));
    }
    // No credentials at all.
    let r = t.post_form("/oauth2/token", None, &form).await;
    assert_eq!((r.status, r.error()), (401, "invalid_client"));

    // A disabled client can no longer get tokens.
    t.app()
        .store
        .set_disabled(&other.client_id, true, now())
        .await
        .unwrap();
    let r = t
        .post_form(
            "/oauth2/token",
            Some((&other.client_id, &other_secret)),
            &form,
        )
        .await;
    assert_eq!((r.status, r.error()), (401, "invalid_client"));
    assert_eq!(
        t.audit().await.last().unwrap().record.reason,
        "client_disabled"
    );
}

#[tokio::test]
async fn malformed_requests_get_precise_errors() {
    let t = TestApp::start().await;
    let (c, secret) = t.client("acme", &["internal"], &["a"]).await;
    let url = format!("{}/oauth2/token", t.base);
    let raw = |body: &'static str, ct: &'static str| {
        t.http
            .post(&url)
            .basic_auth(&c.client_id, Some(&secret))
            .header("content-type", ct)
            .body(body)
    };
    let form = "application/x-www-form-urlencoded";
    let cases = [
        (
            raw("grant_type=client_credentials&scope=a&scope=a", form),
            400,
            "invalid_request",
        ),
        (
            raw("grant_type=client_credentials&scope=%zz", form),
            400,
            "invalid_request",
        ),
        (raw("grant_type=%FF", form), 400, "invalid_request"),
        (
            raw(
                "{\"grant_type\":\"client_credentials\"}",
                "application/json",
            ),
            400,
            "invalid_request",
        ),
        (raw("scope=a", form), 400, "invalid_request"),
        (
            raw("grant_type=password&username=a&password=b", form),
            400,
            "unsupported_grant_type",
        ),
        (
            raw("grant_type=client_credentials'--", form),
            400,
            "unsupported_grant_type",
        ),
    ];
    for (req, status, error) in cases {
        let r = t.send(req).await;
        assert_eq!((r.status, r.error()), (status, error), "{}", r.text);
        assert!(r.body["error_description"].is_string());
    }
    // Unrecognized parameters are ignored (RFC 6749 §3.2).
    let r = t
        .send(raw(
            "grant_type=client_credentials&vendor_extension=1",
            form,
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);

    // Two authentication methods at once (RFC 6749 §2.3).
    let r = t
        .post_form(
            "/oauth2/token",
            Some((&c.client_id, &secret)),
            &[
                ("grant_type", "client_credentials"),
                ("client_secret", &secret),
            ],
        )
        .await;
    assert_eq!((r.status, r.error()), (400, "invalid_request"));

    // A body over server.max_body_bytes (64 KiB by default).
    let big = format!(
        "grant_type=client_credentials&scope={}",
        "a".repeat(70 * 1024)
    );
    let r = t
        .send(
            t.http
                .post(&url)
                .basic_auth(&c.client_id, Some(&secret))
                .header("content-type", form)
                .body(big),
        )
        .await;
    assert_eq!((r.status, r.error()), (413, "invalid_request"));

    // Malformed Basic header.
    let r = t
        .send(
            t.http
                .post(&url)
                .header("authorization", "Basic !!!")
                .form(&[("grant_type", "client_credentials")]),
        )
        .await;
    assert_eq!((r.status, r.error()), (401, "invalid_client"));
}

#[tokio::test]
async fn sql_looking_input_in_every_field_is_just_data() {
    let t = TestApp::start().await;
    let (c, secret) = t
        .client("acme'; DROP TABLE clients; --", &["internal"], &["a"])
        .await;
    let evil = "x' OR '1'='1'; DROP TABLE audit_log; --";
    for field in [
        "scope",
        "audience",
        "resource",
        "grant_type",
        "client_assertion_type",
    ] {
        let mut form = vec![("grant_type", "client_credentials"), (field, evil)];
        if field == "grant_type" {
            form.remove(0);
        }
        let r = t
            .post_form("/oauth2/token", Some((&c.client_id, &secret)), &form)
            .await;
        assert!(matches!(r.status, 400 | 401), "{field}: {}", r.text);
    }
    let r = t
        .post_form(
            "/oauth2/introspect",
            Some((&c.client_id, &secret)),
            &[("token", evil)],
        )
        .await;
    assert_eq!(r.body["active"], false);
    // Everything still works and the tenant round-trips verbatim.
    let token = t.service_token(&c, &secret, &[]).await;
    assert_eq!(claims_of(&token)["tenant"], "acme'; DROP TABLE clients; --");
    assert!(tessera::audit::verify_chain(t.app().store.as_ref())
        .await
        .unwrap()
        .first_broken
        .is_none());
}

#[tokio::test]
async fn per_client_ttl_and_secret_rotation_overlap() {
    let t = TestApp::start().await;
    let (c, old) = t
        .register(tessera::registry::NewClient {
            name: "ttl".into(),
            tenant: "acme".into(),
            audiences: vec!["internal".into()],
            token_ttl: Some(60),
            ..Default::default()
        })
        .await;
    let old = old.unwrap();
    let r = t
        .post_form(
            "/oauth2/token",
            Some((&c.client_id, &old)),
            &[("grant_type", "client_credentials")],
        )
        .await;
    assert_eq!(r.body["expires_in"], 60);

    let (new, _) =
        tessera::registry::rotate_secret(t.app().store.as_ref(), &c, 3600, t.clock.now())
            .await
            .unwrap();
    for s in [&old, &new] {
        let r = t
            .post_form(
                "/oauth2/token",
                Some((&c.client_id, s)),
                &[("grant_type", "client_credentials")],
            )
            .await;
        assert_eq!(r.status, 200, "both secrets work during the overlap");
    }
    t.clock.advance(3601);
    let r = t
        .post_form(
            "/oauth2/token",
            Some((&c.client_id, &old)),
            &[("grant_type", "client_credentials")],
        )
        .await;
    assert_eq!(
        (r.status, r.error()),
        (401, "invalid_client"),
        "old secret stops after the overlap"
    );
    let r = t
        .post_form(
            "/oauth2/token",
            Some((&c.client_id, &new)),
            &[("grant_type", "client_credentials")],
        )
        .await;
    assert_eq!(r.status, 200);
}
