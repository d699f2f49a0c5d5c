//! `openapi/tessera.yaml` against the running server: every route is
//! described, every described operation is served, and real responses
//! (main successes and errors of each operation) have a documented status,
//! the documented content type, the documented constant headers and every
//! required property of the documented schema.

use serde_json::Value;

use crate::harness::*;

fn spec() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/tessera.yaml");
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap())
        .expect("the OpenAPI file is valid YAML")
}

/// Follows `$ref`s (`#/components/...`) to the object they name.
fn resolve<'a>(doc: &'a Value, mut v: &'a Value) -> &'a Value {
    while let Some(r) = v.get("$ref").and_then(Value::as_str) {
        v = doc
            .pointer(r.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("dangling $ref {r}"));
    }
    v
}

/// Required properties of `schema` (through `allOf` and `if`/`then`/`else`
/// on `const` conditions) are present in `body`, top-level properties keep
/// their documented `const`/`enum`, and `maxProperties` holds.
fn check_schema(doc: &Value, schema: &Value, body: &Value, label: &str) {
    let schema = resolve(doc, schema);
    for part in schema["allOf"].as_array().into_iter().flatten() {
        check_schema(doc, part, body, label);
    }
    if schema["type"] == "object" || schema.get("required").is_some() {
        assert!(
            body.is_object(),
            "{label}: body is not a JSON object: {body}"
        );
    }
    for name in schema["required"].as_array().into_iter().flatten() {
        let name = name.as_str().unwrap();
        assert!(
            body.get(name).is_some(),
            "{label}: required property {name:?} missing from {body}"
        );
    }
    // Documented constants and enumerations of top-level properties.
    for (name, prop) in schema["properties"].as_object().into_iter().flatten() {
        let (Some(value), prop) = (body.get(name), resolve(doc, prop)) else {
            continue;
        };
        if let Some(c) = prop.get("const") {
            assert_eq!(
                value, c,
                "{label}: property {name:?} is documented as constant"
            );
        }
        if let Some(allowed) = prop["enum"].as_array() {
            assert!(
                allowed.contains(value),
                "{label}: {name:?} = {value} is not among the documented {allowed:?}"
            );
        }
    }
    if let Some(max) = schema["maxProperties"].as_u64() {
        let n = body.as_object().map_or(0, |o| o.len()) as u64;
        assert!(
            n <= max,
            "{label}: {n} properties, at most {max} documented: {body}"
        );
    }
    if let Some(cond) = schema["if"]["properties"].as_object() {
        let holds = cond.iter().all(|(k, s)| body.get(k) == s.get("const"));
        let branch = if holds {
            &schema["then"]
        } else {
            &schema["else"]
        };
        if !branch.is_null() {
            check_schema(doc, branch, body, label);
        }
    }
}

/// One real response against the description of `method path`.
fn check_response(doc: &Value, method: &str, path: &str, r: &Reply, label: &str) {
    let op = &doc["paths"][path][method];
    assert!(
        op.is_object(),
        "{label}: {method} {path} is not in the spec"
    );
    let resp = op["responses"]
        .get(r.status.to_string())
        .unwrap_or_else(|| {
            panic!(
                "{label}: status {} is not documented for {method} {path} (body {})",
                r.status, r.text
            )
        });
    let resp = resolve(doc, resp);

    assert!(
        r.header("x-request-id").is_some(),
        "{label}: every response carries X-Request-Id"
    );
    for (name, header) in resp["headers"].as_object().into_iter().flatten() {
        if let Some(value) = resolve(doc, header)["schema"]["const"].as_str() {
            assert_eq!(
                r.header(name),
                Some(value),
                "{label}: documented header {name}"
            );
        }
    }

    let content = resp["content"].as_object().filter(|c| !c.is_empty());
    match content {
        None => assert!(
            r.text.is_empty(),
            "{label}: no body is documented, got {:?}",
            r.text
        ),
        Some(content) => {
            let ct = r
                .header("content-type")
                .unwrap_or_else(|| panic!("{label}: no content type"));
            let ct = ct.split(';').next().unwrap().trim();
            let media = content.get(ct).unwrap_or_else(|| {
                panic!(
                    "{label}: content type {ct} is not documented ({:?})",
                    content.keys().collect::<Vec<_>>()
                )
            });
            if ct == "application/json" || ct.ends_with("+json") {
                check_schema(doc, &media["schema"], &r.body, label);
            }
        }
    }
}

/// What `src/router.rs` serves.
const SERVED: &[(&str, &str)] = &[
    ("post", "/oauth2/token"),
    ("post", "/oauth2/introspect"),
    ("post", "/oauth2/revoke"),
    ("get", "/.well-known/oauth-authorization-server"),
    ("get", "/issuers/{issuer}/.well-known/openid-configuration"),
    (
        "get",
        "/.well-known/oauth-authorization-server/issuers/{issuer}",
    ),
    ("get", "/issuers/{issuer}/jwks.json"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
];
const EXT_AUTHZ_PATHS: [&str; 2] = ["/ext_authz", "/ext_authz/{path}"];
const EXT_AUTHZ_METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

#[test]
fn every_route_the_router_serves_is_in_the_spec() {
    let doc = spec();
    assert!(doc["openapi"]
        .as_str()
        .is_some_and(|v| v.starts_with("3.1")));
    let ext_authz = EXT_AUTHZ_PATHS
        .iter()
        .flat_map(|p| EXT_AUTHZ_METHODS.iter().map(move |m| (*m, *p)));
    for (method, path) in SERVED.iter().copied().chain(ext_authz) {
        let op = &doc["paths"][path][method];
        assert!(
            op.is_object(),
            "{method} {path} is served but not described"
        );
        assert!(
            op["responses"].as_object().is_some_and(|r| !r.is_empty()),
            "{method} {path} has no responses"
        );
    }
}

#[tokio::test]
async fn every_operation_in_the_spec_is_served() {
    let doc = spec();
    let t = TestApp::start().await;
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, _) in item
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "parameters" | "description" | "summary"))
        {
            let issuers: &[&str] = if path.contains("{issuer}") {
                &["human", "service"]
            } else {
                &[""]
            };
            for issuer in issuers {
                let url = format!(
                    "{}{}",
                    t.base,
                    path.replace("{issuer}", issuer)
                        .replace("{path}", "internal/hello")
                );
                let mut req = t.http.request(method.to_uppercase().parse().unwrap(), &url);
                if method == "post" && path.starts_with("/oauth2/") {
                    req = req.form(&[("grant_type", "client_credentials")]);
                }
                let r = t.send(req).await;
                assert!(
                    !matches!(r.status, 404 | 405),
                    "{method} {url} is described but answers {}: {}",
                    r.status,
                    r.text
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 25, "only {checked} operations found");
}

#[tokio::test]
async fn real_responses_have_a_documented_status_content_type_and_schema() {
    let doc = spec();
    let t = TestApp::start().await;
    let (c, secret) = t.client("acme", &["internal"], &["orders:read"]).await;
    let auth = Some((c.client_id.as_str(), secret.as_str()));
    let bad = Some((c.client_id.as_str(), "wrong"));
    let cc = [("grant_type", "client_credentials")];
    let token = t.service_token(&c, &secret, &[]).await;
    let doomed = t.service_token(&c, &secret, &[]).await;
    let human = t.human_token("alice", "api", "");
    let big = format!(
        "grant_type=client_credentials&scope={}",
        "a".repeat(70 * 1024)
    );
    let form_ct = "application/x-www-form-urlencoded";

    let calls: Vec<(&str, &str, u16, Reply)> = vec![
        (
            "post",
            "/oauth2/token",
            200,
            t.post_form("/oauth2/token", auth, &cc).await,
        ),
        (
            "post",
            "/oauth2/token",
            400,
            t.post_form("/oauth2/token", auth, &[("grant_type", "password")])
                .await,
        ),
        (
            "post",
            "/oauth2/token",
            401,
            t.post_form("/oauth2/token", bad, &cc).await,
        ),
        (
            "post",
            "/oauth2/token",
            413,
            t.send(
                t.http
                    .post(format!("{}/oauth2/token", t.base))
                    .basic_auth(&c.client_id, Some(&secret))
                    .header("content-type", form_ct)
                    .body(big),
            )
            .await,
        ),
        (
            "post",
            "/oauth2/introspect",
            200,
            t.post_form("/oauth2/introspect", auth, &[("token", &token)])
                .await,
        ),
        (
            "post",
            "/oauth2/introspect",
            200,
            t.post_form("/oauth2/introspect", auth, &[("token", "not-a-token")])
                .await,
        ),
        (
            "post",
            "/oauth2/introspect",
            400,
            t.post_form("/oauth2/introspect", auth, &[]).await,
        ),
        (
            "post",
            "/oauth2/introspect",
            401,
            t.post_form("/oauth2/introspect", bad, &[("token", &token)])
                .await,
        ),
        (
            "post",
            "/oauth2/revoke",
            200,
            t.post_form("/oauth2/revoke", auth, &[("token", &doomed)])
                .await,
        ),
        (
            "post",
            "/oauth2/revoke",
            401,
            t.post_form("/oauth2/revoke", bad, &[("token", &doomed)])
                .await,
        ),
        (
            "get",
            "/.well-known/oauth-authorization-server",
            200,
            t.get("/.well-known/oauth-authorization-server").await,
        ),
        (
            "get",
            "/issuers/{issuer}/.well-known/openid-configuration",
            200,
            t.get("/issuers/service/.well-known/openid-configuration")
                .await,
        ),
        (
            "get",
            "/issuers/{issuer}/.well-known/openid-configuration",
            200,
            t.get("/issuers/human/.well-known/openid-configuration")
                .await,
        ),
        (
            "get",
            "/.well-known/oauth-authorization-server/issuers/{issuer}",
            200,
            t.get("/.well-known/oauth-authorization-server/issuers/service")
                .await,
        ),
        (
            "get",
            "/issuers/{issuer}/.well-known/openid-configuration",
            404,
            t.get("/issuers/robots/.well-known/openid-configuration")
                .await,
        ),
        (
            "get",
            "/issuers/{issuer}/jwks.json",
            200,
            t.get("/issuers/service/jwks.json").await,
        ),
        (
            "get",
            "/issuers/{issuer}/jwks.json",
            200,
            t.get("/issuers/human/jwks.json").await,
        ),
        (
            "get",
            "/issuers/{issuer}/jwks.json",
            404,
            t.get("/issuers/robots/jwks.json").await,
        ),
        (
            "get",
            "/ext_authz/{path}",
            200,
            t.authz("GET", "/internal/hello", Some(&token)).await,
        ),
        (
            "post",
            "/ext_authz/{path}",
            200,
            t.authz("POST", "/api/orders", Some(&human)).await,
        ),
        (
            "get",
            "/ext_authz/{path}",
            401,
            t.authz("GET", "/internal/hello", None).await,
        ),
        (
            "delete",
            "/ext_authz/{path}",
            401,
            t.authz("DELETE", "/internal/hello", Some("not.a.token"))
                .await,
        ),
        (
            "head",
            "/ext_authz/{path}",
            401,
            t.authz("HEAD", "/internal/hello", None).await,
        ),
        (
            "get",
            "/ext_authz/{path}",
            403,
            t.authz("GET", "/api/hello", Some(&token)).await,
        ),
        (
            "get",
            "/ext_authz/{path}",
            403,
            t.authz("GET", "/elsewhere", Some(&token)).await,
        ),
        (
            "get",
            "/ext_authz",
            403,
            t.authz("GET", "", Some(&token)).await,
        ),
        ("get", "/healthz", 200, t.get("/healthz").await),
        ("get", "/readyz", 200, t.get("/readyz").await),
        ("get", "/metrics", 200, t.get("/metrics").await),
    ];
    for (i, (method, path, status, reply)) in calls.iter().enumerate() {
        let label = format!("call {i} ({method} {path} → {status})");
        assert_eq!(reply.status, *status, "{label}: {}", reply.text);
        check_response(&doc, method, path, reply, &label);
    }
    // The two introspection answers exercise both branches of the schema.
    assert_eq!(calls[4].3.body["active"], true);
    assert_eq!(calls[5].3.body, serde_json::json!({"active": false}));
}
