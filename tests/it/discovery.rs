//! Discovery documents and JWKS (RFC 8414, RFC 7517), and the separation
//! of the human and service issuers.

use crate::harness::*;

#[tokio::test]
async fn authorization_server_metadata_names_every_endpoint() {
    let t = TestApp::start().await;
    let r = t.get("/.well-known/oauth-authorization-server").await;
    assert_eq!(r.status, 200);
    let m = &r.body;
    assert_eq!(m["issuer"], t.base.as_str());
    assert_eq!(m["token_endpoint"], format!("{}/oauth2/token", t.base));
    assert_eq!(
        m["introspection_endpoint"],
        format!("{}/oauth2/introspect", t.base)
    );
    assert_eq!(
        m["revocation_endpoint"],
        format!("{}/oauth2/revoke", t.base)
    );
    let methods: Vec<&str> = m["token_endpoint_auth_methods_supported"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        methods,
        [
            "client_secret_basic",
            "client_secret_post",
            "private_key_jwt"
        ]
    );
    assert!(m["grant_types_supported"]
        .as_array()
        .unwrap()
        .iter()
        .any(|g| g == "client_credentials"));
}

#[tokio::test]
async fn each_issuer_has_its_own_configuration_and_key_set() {
    let t = TestApp::start().await;
    let mut kids = Vec::new();
    for name in ["human", "service"] {
        let conf = t
            .get(&format!("/issuers/{name}/.well-known/openid-configuration"))
            .await;
        assert_eq!(conf.status, 200);
        let iss = format!("{}/issuers/{name}", t.base);
        assert_eq!(conf.body["issuer"], iss.as_str());
        assert_eq!(conf.body["jwks_uri"], format!("{iss}/jwks.json"));
        assert_eq!(
            conf.body["id_token_signing_alg_values_supported"],
            serde_json::json!(["ES256"])
        );
        // RFC 8414 §3.1: the path-inserted metadata URL names the same issuer.
        let rfc8414 = t
            .get(&format!(
                "/.well-known/oauth-authorization-server/issuers/{name}"
            ))
            .await;
        assert_eq!(
            (rfc8414.status, &rfc8414.body["issuer"]),
            (200, &conf.body["issuer"])
        );
        let jwks = t.get(&format!("/issuers/{name}/jwks.json")).await;
        assert_eq!(jwks.status, 200);
        assert_eq!(
            jwks.header("content-type"),
            Some("application/jwk-set+json")
        );
        assert!(jwks
            .header("cache-control")
            .is_some_and(|c| c.contains("max-age")));
        for key in jwks.body["keys"].as_array().unwrap() {
            assert_eq!(key["kty"], "EC");
            assert_eq!(key["use"], "sig");
            assert!(key.get("d").is_none(), "no private parts in a JWKS");
            kids.push(key["kid"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(kids.len(), 2);
    assert_ne!(
        kids[0], kids[1],
        "human and service issuers sign with different keys"
    );

    let r = t.get("/issuers/admin/jwks.json").await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (404, Some("not_found"))
    );
    let r = t.get("/issuers/../jwks.json").await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn a_human_token_never_passes_as_a_service_token() {
    let t = TestApp::start().await;
    let (c, secret) = t.client("acme", &["internal"], &[]).await;
    // Signed by the human key but claiming the service issuer.
    let mut claims = t.human_claims("mallory", "internal", "");
    claims.iss = t.app().issuers.service.iss.clone();
    claims.principal = tessera::issuer::Principal::Service;
    let forged = t.app().issuers.human.mint(&claims).unwrap();
    let r = t
        .post_form(
            "/oauth2/introspect",
            Some((&c.client_id, &secret)),
            &[("token", &forged)],
        )
        .await;
    assert_eq!(r.body, serde_json::json!({"active": false}));
    let r = t.authz("GET", "/internal/x", Some(&forged)).await;
    assert_eq!(
        (r.status, r.body["reason"].as_str()),
        (401, Some("wrong_issuer"))
    );
}

#[tokio::test]
async fn health_and_readiness() {
    let t = TestApp::start().await;
    assert_eq!(t.get("/healthz").await.status, 200);
    let r = t.get("/readyz").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body["checks"],
        serde_json::json!({"store": true, "keys": true, "policy": true})
    );
    assert_eq!(r.body["policy_version"].as_str().map(str::len), Some(64));
    let m = t.get("/metrics").await;
    assert!(m.text.contains("tessera_ext_authz_decisions_total"));
    let r = t.get("/no/such/endpoint").await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (404, Some("not_found"))
    );
}
