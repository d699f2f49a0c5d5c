//! Envoy's gRPC ext_authz (`envoy.service.auth.v3.Authorization/Check`)
//! called by a real gRPC client built from the `envoy-types` protos, as
//! Envoy calls it: allow with identity headers Envoy overwrites upstream,
//! deny with the gRPC code and the HTTP response Envoy sends back, and an
//! audit record for every denial.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{Address, HeaderValueOption, SocketAddress};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use serde_json::Value;
use tonic::transport::Channel;

use crate::harness::*;

const OK: i32 = 0;
const PERMISSION_DENIED: i32 = 7;
const UNAUTHENTICATED: i32 = 16;

/// The downstream client Envoy saw (`attributes.source.address`).
const CLIENT_IP: &str = "203.0.113.7";

async fn grpc_client(t: &TestApp) -> AuthorizationClient<Channel> {
    AuthorizationClient::connect(format!("http://{}", t.grpc))
        .await
        .expect("gRPC connects")
}

/// A CheckRequest as Envoy builds it for `method path`.
fn check_request(method: &str, path: &str, token: Option<&str>, request_id: &str) -> CheckRequest {
    let mut headers = HashMap::from([
        (":authority".to_string(), "edge.example".to_string()),
        (":method".to_string(), method.to_string()),
        (":path".to_string(), path.to_string()),
        ("user-agent".to_string(), "grpc-test".to_string()),
    ]);
    if let Some(token) = token {
        headers.insert("authorization".into(), format!("Bearer {token}"));
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: Some(Address {
                    address: Some(AddressKind::SocketAddress(SocketAddress {
                        address: CLIENT_IP.into(),
                        port_specifier: Some(PortSpecifier::PortValue(51234)),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            }),
            request: Some(Request {
                http: Some(HttpRequest {
                    id: request_id.into(),
                    method: method.into(),
                    path: path.into(),
                    host: "edge.example".into(),
                    scheme: "https".into(),
                    protocol: "HTTP/1.1".into(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

async fn check(t: &TestApp, method: &str, path: &str, token: Option<&str>) -> CheckResponse {
    let mut client = grpc_client(t).await;
    client
        .check(check_request(
            method,
            path,
            token,
            &uuid::Uuid::new_v4().to_string(),
        ))
        .await
        .expect("Check answers")
        .into_inner()
}

fn status_code(r: &CheckResponse) -> i32 {
    r.status.as_ref().expect("status set").code
}

fn ok_response(r: &CheckResponse) -> &OkHttpResponse {
    match &r.http_response {
        Some(HttpResponse::OkResponse(ok)) => ok,
        other => panic!("expected an OkResponse, got {other:?}"),
    }
}

fn denied_response(r: &CheckResponse) -> &DeniedHttpResponse {
    match &r.http_response {
        Some(HttpResponse::DeniedResponse(denied)) => denied,
        other => panic!("expected a DeniedResponse, got {other:?}"),
    }
}

fn header<'a>(headers: &'a [HeaderValueOption], name: &str) -> Option<&'a HeaderValueOption> {
    headers.iter().find(|h| {
        h.header
            .as_ref()
            .is_some_and(|h| h.key.eq_ignore_ascii_case(name))
    })
}

fn header_value<'a>(headers: &'a [HeaderValueOption], name: &str) -> Option<&'a str> {
    header(headers, name).map(|h| h.header.as_ref().unwrap().value.as_str())
}

/// Checks a denial: gRPC code, HTTP status, JSON body reason, and returns the body.
fn assert_denied(r: &CheckResponse, code: i32, http_status: i32, reason: &str) -> Value {
    assert_eq!(status_code(r), code, "{r:?}");
    let denied = denied_response(r);
    assert_eq!(
        denied.status.as_ref().expect("http status").code,
        http_status,
        "{r:?}"
    );
    assert_eq!(
        header_value(&denied.headers, "content-type"),
        Some("application/json")
    );
    assert_eq!(
        header_value(&denied.headers, "cache-control"),
        Some("no-store")
    );
    let body: Value = serde_json::from_str(&denied.body).expect("deny body is JSON");
    assert_eq!(body["reason"], reason, "{body}");
    assert_eq!(r.status.as_ref().unwrap().message, reason);
    for name in [
        "x-tessera-subject",
        "x-tessera-principal",
        "x-tessera-tenant",
        "x-tessera-client-id",
    ] {
        assert!(
            header(&denied.headers, name).is_none(),
            "no identity header on deny"
        );
    }
    body
}

/// The last audit record is the denial of `GET /internal/x` with `reason`.
async fn assert_deny_audited(t: &TestApp, route: &str, reason: &str) {
    let audit = t.audit().await;
    let rec = &audit.last().expect("denial audited").record;
    assert_eq!(
        (rec.event.as_str(), rec.decision.as_str()),
        ("ext_authz", "deny"),
        "{rec:?}"
    );
    assert!(rec.reason.starts_with(reason), "{rec:?}");
    assert_eq!(rec.route.as_deref(), Some(route));
    assert_eq!(
        rec.policy_version.as_ref().map(String::len),
        Some(64),
        "policy version is a SHA-256: {rec:?}"
    );
    assert!(rec.request_id.is_some());
    assert!(
        rec.peer
            .as_deref()
            .is_some_and(|p| p.starts_with(CLIENT_IP)),
        "the downstream client is recorded: {rec:?}"
    );
}

#[tokio::test]
async fn service_token_on_an_internal_route_is_allowed_with_identity_headers() {
    let t = TestApp::start().await;
    let (c, secret) = t.client("acme", &["internal"], &[]).await;
    let token = t.service_token(&c, &secret, &[]).await;
    let mut req = check_request("GET", "/internal/x", Some(&token), "r1");
    // The caller tries to pass its own identity headers to the upstream.
    let http = req
        .attributes
        .as_mut()
        .unwrap()
        .request
        .as_mut()
        .unwrap()
        .http
        .as_mut()
        .unwrap();
    http.headers
        .insert("x-tessera-subject".into(), "admin".into());
    http.headers
        .insert("x-tessera-principal".into(), "human".into());
    let r = grpc_client(&t).await.check(req).await.unwrap().into_inner();
    assert_eq!(status_code(&r), OK, "{r:?}");
    let ok = ok_response(&r);
    let expected = [
        ("x-tessera-subject", c.client_id.as_str()),
        ("x-tessera-principal", "service"),
        ("x-tessera-tenant", "acme"),
        ("x-tessera-client-id", c.client_id.as_str()),
    ];
    for (name, value) in expected {
        let h = header(&ok.headers, name).unwrap_or_else(|| panic!("{name} set"));
        assert_eq!(h.header.as_ref().unwrap().value, value, "{name}");
        // A client cannot smuggle its own value through: Envoy must overwrite.
        assert_eq!(
            h.append_action,
            HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
            "{name}"
        );
    }
    // An allow under the built-in policy is not audited (audit level "deny").
    assert!(t
        .audit()
        .await
        .iter()
        .all(|a| a.record.event != "ext_authz"));
}

#[tokio::test]
async fn request_without_a_token_is_unauthenticated_with_a_bearer_challenge() {
    let t = TestApp::start().await;
    let r = check(&t, "GET", "/internal/x", None).await;
    let body = assert_denied(&r, UNAUTHENTICATED, 401, "missing_credential");
    let denied = denied_response(&r);
    assert_eq!(
        header_value(&denied.headers, "www-authenticate"),
        Some("Bearer realm=\"tessera\"")
    );
    assert!(body["error_description"].is_string());
    assert_deny_audited(&t, "GET /internal/x", "missing_credential").await;
}

#[tokio::test]
async fn human_token_on_an_internal_route_is_permission_denied() {
    let t = TestApp::start().await;
    let token = t.human_token("alice", "internal", "");
    let r = check(&t, "GET", "/internal/x", Some(&token)).await;
    let body = assert_denied(&r, PERMISSION_DENIED, 403, "credential_kind_not_accepted");
    assert_eq!(body["error"], "insufficient_scope");
    assert!(
        header_value(&denied_response(&r).headers, "www-authenticate")
            .is_some_and(|c| c.starts_with("Bearer "))
    );
    assert_deny_audited(&t, "GET /internal/x", "credential_kind_not_accepted").await;
    let rec = t.audit().await.pop().unwrap().record;
    assert_eq!(
        (rec.subject.as_deref(), rec.principal.as_deref()),
        (Some("alice"), Some("human")),
        "who was refused is recorded"
    );
}

#[tokio::test]
async fn service_token_on_an_api_route_is_permission_denied() {
    let t = TestApp::start().await;
    let (c, secret) = t.client("acme", &["internal"], &[]).await;
    let token = t.service_token(&c, &secret, &[]).await;
    let r = check(&t, "GET", "/api/x", Some(&token)).await;
    assert_denied(&r, PERMISSION_DENIED, 403, "credential_kind_not_accepted");
    assert_deny_audited(&t, "GET /api/x", "credential_kind_not_accepted").await;
}

#[tokio::test]
async fn unknown_route_is_denied_by_default() {
    let t = TestApp::start().await;
    let (c, secret) = t.client("acme", &["internal"], &[]).await;
    let token = t.service_token(&c, &secret, &[]).await;
    let r = check(&t, "GET", "/other", Some(&token)).await;
    let body = assert_denied(&r, PERMISSION_DENIED, 403, "no_matching_rule");
    assert_eq!(body["error"], "access_denied");
    assert!(
        header(&denied_response(&r).headers, "www-authenticate").is_none(),
        "a refused route is not a token problem"
    );
    assert_deny_audited(&t, "GET /other", "no_matching_rule").await;
}

#[tokio::test]
async fn garbage_token_is_unauthenticated_invalid_token() {
    let t = TestApp::start().await;
    let r = check(&t, "GET", "/internal/x", Some("not-a-jwt")).await;
    let body = assert_denied(&r, UNAUTHENTICATED, 401, "malformed_token");
    assert_eq!(body["error"], "invalid_token");
    let challenge = header_value(&denied_response(&r).headers, "www-authenticate").unwrap();
    assert!(
        challenge.starts_with("Bearer realm=\"tessera\", error=\"invalid_token\""),
        "{challenge}"
    );
    assert_deny_audited(&t, "GET /internal/x", "malformed_token").await;
}

#[tokio::test]
async fn every_denial_is_audited_with_the_policy_version() {
    let policy = "[[rule]]\nname = \"internal\"\npath = \"/internal/*\"\naccept = [\"service\"]\naudience = \"internal\"\n";
    let t = TestApp::builder().policy(policy).start().await;
    let version =
        hex::encode(ring::digest::digest(&ring::digest::SHA256, policy.as_bytes()).as_ref());
    let (c, secret) = t.client("acme", &["internal"], &[]).await;
    let service = t.service_token(&c, &secret, &[]).await;
    let human = t.human_token("alice", "internal", "");
    let cases = [
        (None, "missing_credential"),
        (Some(human.as_str()), "credential_kind_not_accepted"),
        (Some("garbage"), "malformed_token"),
    ];
    for (token, reason) in cases {
        let r = check(&t, "GET", "/internal/x", token).await;
        assert_ne!(status_code(&r), OK);
        assert_deny_audited(&t, "GET /internal/x", reason).await;
    }
    let r = check(&t, "GET", "/internal/x", Some(&service)).await;
    assert_eq!(status_code(&r), OK);
    let audit = t.audit().await;
    let denials: Vec<_> = audit
        .iter()
        .filter(|a| a.record.event == "ext_authz")
        .collect();
    assert_eq!(denials.len(), 3);
    assert!(denials.iter().all(|d| d.record.decision == "deny"));
    for d in &denials {
        assert_eq!(
            d.record.policy_version.as_deref(),
            Some(version.as_str()),
            "the SHA-256 of the policy file in force"
        );
    }
    // The token is never written to the audit log.
    for a in &audit {
        let text = serde_json::to_string(&a.record).unwrap();
        assert!(!text.contains(&human) && !text.contains(&service));
    }
}

#[tokio::test]
async fn request_id_from_envoy_is_carried_into_the_audit_record() {
    let t = TestApp::start().await;
    let mut client = grpc_client(&t).await;
    let r = client
        .check(check_request("GET", "/internal/x", None, "envoy-req-42"))
        .await
        .unwrap()
        .into_inner();
    let body: Value = serde_json::from_str(&denied_response(&r).body).unwrap();
    assert_eq!(body["request_id"], "envoy-req-42");
    assert_eq!(
        t.audit().await.pop().unwrap().record.request_id.as_deref(),
        Some("envoy-req-42")
    );
}

#[tokio::test]
async fn nul_bytes_in_path_or_request_id_get_a_decision_not_unavailable() {
    let t = TestApp::start().await;
    let (c, secret) = t.client("acme", &["internal"], &[]).await;
    let token = t.service_token(&c, &secret, &[]).await;
    let mut client = grpc_client(&t).await;

    // A path no HTTP request can have is not canonical, whatever the token.
    for token in [None, Some(token.as_str())] {
        let r = client
            .check(check_request("GET", "/internal/x\u{0}", token, "r1"))
            .await
            .unwrap()
            .into_inner();
        assert_denied(&r, PERMISSION_DENIED, 403, "non_canonical_path");
        // Stored with the NUL replaced (U+FFFD): Postgres text cannot hold NUL.
        assert_deny_audited(&t, "GET /internal/x\u{FFFD}", "non_canonical_path").await;
    }

    // A request id with a NUL still gets its decision, audited.
    let mut req = check_request("GET", "/internal/x", None, "r2");
    let http = req
        .attributes
        .as_mut()
        .unwrap()
        .request
        .as_mut()
        .unwrap()
        .http
        .as_mut()
        .unwrap();
    http.headers.insert("x-request-id".into(), "a\u{0}b".into());
    let r = client.check(req).await.unwrap().into_inner();
    assert_denied(&r, UNAUTHENTICATED, 401, "missing_credential");
    assert_eq!(
        chain_report_ok(&t).await,
        4,
        "the issuance and three denials"
    );
}

async fn chain_report_ok(t: &TestApp) -> u64 {
    let report = tessera::audit::verify_chain(t.app().store.as_ref())
        .await
        .unwrap();
    assert_eq!(report.first_broken, None);
    report.records
}

#[tokio::test]
async fn check_without_http_attributes_is_invalid_argument() {
    let t = TestApp::start().await;
    let mut client = grpc_client(&t).await;
    let empty = CheckRequest { attributes: None };
    let err = client
        .check(empty)
        .await
        .expect_err("no request attributes");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");

    let mut no_http = check_request("GET", "/internal/x", None, "r1");
    no_http
        .attributes
        .as_mut()
        .unwrap()
        .request
        .as_mut()
        .unwrap()
        .http = None;
    let err = client.check(no_http).await.expect_err("no http attributes");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    // Nothing was decided, so nothing was audited.
    assert!(t.audit().await.is_empty());
}

#[tokio::test]
async fn an_upstream_id_token_is_unauthenticated_and_an_access_token_passes() {
    let idp = crate::idp::TestIdp::start().await;
    let t = TestApp::builder()
        .config(&idp.config("corp", "human", ""))
        .policy("[[rule]]\nname = \"api\"\npath = \"/api/*\"\naccept = [\"human\"]\naudience = \"tessera\"\ntrusted_issuers = [\"corp\"]\n")
        .start()
        .await;
    let access = idp.access_token("alice", "", serde_json::json!({}));
    let r = check(&t, "GET", "/api/reports", Some(&access)).await;
    assert_eq!(status_code(&r), OK, "{r:?}");
    let id_token = idp.id_token("alice", serde_json::json!({}));
    let r = check(&t, "GET", "/api/reports", Some(&id_token)).await;
    let body = assert_denied(&r, UNAUTHENTICATED, 401, "id_token_not_accepted");
    assert_eq!(body["error"], "invalid_token");
    assert_deny_audited(&t, "GET /api/reports", "id_token_not_accepted").await;
}
