//! Data access at the edge (`/data/{dataset}/…` under the built-in `data`
//! rule): a person's grants on the dataset decide, for the permission the
//! method asks and the purpose the request names (`x-purpose`); a data
//! product acting for the person (a delegated token from token exchange)
//! must also hold a delegation for the dataset and permission. Every
//! decision is audited with the dataset, purpose and permission. And the
//! operator's side: `tessera dataset`, `tessera grant` and
//! `tessera delegation add --dataset`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::HeaderValueOption;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use serde_json::{json, Value};
use tessera::audit::AuditRecord;
use tessera::registry::{
    add_delegation, add_grant, create_dataset, NewDataset, NewDelegation, NewGrant,
};
use tessera::store::{Dataset, DatasetGrant, Grantee, Permission};

use crate::harness::*;
use crate::token_exchange::{exchange, product, ACCESS_TOKEN};

const DS: &str = "sales.orders";
const PART: &str = "/data/sales.orders/part-1";

/// `sales.orders`: tenant acme, read and write, for analytics or billing.
fn sales_orders() -> NewDataset {
    NewDataset {
        id: DS.into(),
        tenant: "acme".into(),
        role_arn: "arn:aws:iam::123456789012:role/sales".into(),
        glue_database: "sales".into(),
        glue_table: Some("orders".into()),
        lf_tag_expression: None,
        s3_prefix: "s3://lake/sales/orders/".into(),
        permissions: vec![Permission::Read, Permission::Write],
        purposes: vec!["analytics".into(), "billing".into()],
        max_duration_secs: 3600,
    }
}

async fn dataset(t: &TestApp, new: NewDataset) -> Dataset {
    let app = t.app();
    create_dataset(app.store.as_ref(), new, app.clock.now())
        .await
        .expect("dataset created")
}

async fn grant(
    t: &TestApp,
    dataset_id: &str,
    grantee_type: Grantee,
    grantee: &str,
    permission: Permission,
    purposes: &[&str],
    expires_at: Option<i64>,
) -> DatasetGrant {
    let app = t.app();
    add_grant(
        app.store.as_ref(),
        NewGrant {
            dataset_id: dataset_id.into(),
            grantee_type,
            grantee: grantee.into(),
            permission,
            purposes: purposes.iter().map(|s| s.to_string()).collect(),
            expires_at,
        },
        app.clock.now(),
    )
    .await
    .expect("grant added")
}

/// A Tessera with `sales.orders` registered.
async fn start() -> TestApp {
    let t = TestApp::start().await;
    dataset(&t, sales_orders()).await;
    t
}

/// A human-issuer token for audience "data" (tenant acme).
fn person(t: &TestApp, sub: &str) -> String {
    t.human_token(sub, "data", "")
}

/// ext_authz over HTTP with a bearer token and, when given, `x-purpose`.
async fn data_request(
    t: &TestApp,
    method: &str,
    path: &str,
    token: &str,
    purpose: Option<&str>,
) -> Reply {
    let mut req = t
        .http
        .request(
            method.parse().unwrap(),
            format!("{}/ext_authz{path}", t.base),
        )
        .bearer_auth(token);
    if let Some(p) = purpose {
        req = req.header("x-purpose", p);
    }
    t.send(req).await
}

fn assert_allowed(r: &Reply, subject: &str, purpose: &str) {
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("x-tessera-subject"), Some(subject));
    assert_eq!(r.header("x-tessera-dataset"), Some(DS));
    assert_eq!(r.header("x-tessera-purpose"), Some(purpose));
}

fn assert_refused(r: &Reply, reason: &str) {
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(r.body["reason"], reason, "{}", r.text);
    assert_eq!(r.error(), "insufficient_scope", "{}", r.text);
    for name in [
        "x-tessera-subject",
        "x-tessera-dataset",
        "x-tessera-purpose",
    ] {
        assert!(r.header(name).is_none(), "no {name} on a denial");
    }
}

/// The most recent ext_authz audit record.
async fn last_authz(t: &TestApp) -> AuditRecord {
    t.audit()
        .await
        .into_iter()
        .rev()
        .find(|a| a.record.event == "ext_authz")
        .expect("an ext_authz record")
        .record
}

/// Repeats a data request (at most 2 s) until it is refused with `reason`,
/// as registry changes reach the server's caches within ~250 ms.
async fn refused_within(
    t: &TestApp,
    method: &str,
    token: &str,
    purpose: Option<&str>,
    reason: &str,
) -> Reply {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let r = data_request(t, method, PART, token, purpose).await;
        if (r.status == 403 && r.body["reason"] == reason) || Instant::now() >= deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// ---------------------------------------------------------------------------
// 1. A person with a grant.

#[tokio::test]
async fn a_person_with_a_read_grant_for_analytics_reads_the_dataset_and_the_allow_is_audited() {
    let t = start().await;
    grant(
        &t,
        DS,
        Grantee::User,
        "alice",
        Permission::Read,
        &["analytics"],
        None,
    )
    .await;
    let token = person(&t, "alice");
    let r = data_request(&t, "GET", PART, &token, Some("analytics")).await;
    assert_allowed(&r, "alice", "analytics");
    assert_eq!(r.header("x-tessera-principal"), Some("human"));
    assert_eq!(r.header("x-tessera-tenant"), Some("acme"));
    assert_eq!(
        r.header("x-tessera-actor"),
        Some(""),
        "no one acts for alice"
    );

    let rec = last_authz(&t).await;
    assert_eq!(rec.decision, "allow", "{rec:?}");
    assert_eq!(rec.subject.as_deref(), Some("alice"));
    assert_eq!(rec.dataset.as_deref(), Some(DS));
    assert_eq!(rec.purpose.as_deref(), Some("analytics"));
    assert_eq!(rec.permission.as_deref(), Some("read"));
    assert_eq!(rec.route.as_deref(), Some("GET /data/sales.orders/part-1"));
    assert!(rec.reason.contains("rule data"), "{rec:?}");
}

// ---------------------------------------------------------------------------
// 2. Refusals.

#[tokio::test]
async fn an_unknown_dataset_is_refused_unknown_dataset() {
    let t = start().await;
    grant(&t, DS, Grantee::User, "alice", Permission::Read, &[], None).await;
    let token = person(&t, "alice");
    let r = data_request(
        &t,
        "GET",
        "/data/hr.people/part-1",
        &token,
        Some("analytics"),
    )
    .await;
    assert_refused(&r, "unknown_dataset");
    // The prefix alone names no dataset either.
    let r = data_request(&t, "GET", "/data/", &token, Some("analytics")).await;
    assert_refused(&r, "unknown_dataset");

    let rec = last_authz(&t).await;
    assert_eq!(rec.decision, "deny");
    assert!(rec.reason.starts_with("unknown_dataset"), "{rec:?}");
}

#[tokio::test]
async fn writing_with_only_a_read_grant_is_refused_permission_not_granted() {
    let t = start().await;
    grant(&t, DS, Grantee::User, "alice", Permission::Read, &[], None).await;
    let token = person(&t, "alice");
    for method in ["POST", "PUT"] {
        let r = data_request(&t, method, PART, &token, Some("analytics")).await;
        assert_refused(&r, "permission_not_granted");
        let rec = last_authz(&t).await;
        assert_eq!(rec.decision, "deny");
        assert!(rec.reason.starts_with("permission_not_granted"), "{rec:?}");
        assert_eq!(rec.dataset.as_deref(), Some(DS));
        assert_eq!(rec.permission.as_deref(), Some("write"), "{method}");
        assert_eq!(rec.purpose.as_deref(), Some("analytics"));
    }
    // Reading is still fine.
    let r = data_request(&t, "GET", PART, &token, Some("analytics")).await;
    assert_allowed(&r, "alice", "analytics");
}

#[tokio::test]
async fn writing_to_a_read_only_dataset_is_refused_permission_not_allowed() {
    let t = start().await;
    dataset(
        &t,
        NewDataset {
            id: "sales.archive".into(),
            permissions: vec![Permission::Read],
            ..sales_orders()
        },
    )
    .await;
    grant(
        &t,
        "sales.archive",
        Grantee::User,
        "alice",
        Permission::Read,
        &[],
        None,
    )
    .await;
    let token = person(&t, "alice");
    let r = data_request(
        &t,
        "POST",
        "/data/sales.archive/x",
        &token,
        Some("analytics"),
    )
    .await;
    assert_refused(&r, "permission_not_allowed");
}

#[tokio::test]
async fn a_purpose_the_dataset_does_not_list_is_refused_purpose_not_allowed() {
    let t = start().await;
    grant(&t, DS, Grantee::User, "alice", Permission::Read, &[], None).await;
    let token = person(&t, "alice");
    let r = data_request(&t, "GET", PART, &token, Some("marketing")).await;
    assert_refused(&r, "purpose_not_allowed");
    let rec = last_authz(&t).await;
    assert_eq!(rec.decision, "deny");
    assert!(rec.reason.starts_with("purpose_not_allowed"), "{rec:?}");
    assert_eq!(rec.dataset.as_deref(), Some(DS));
    assert_eq!(rec.purpose.as_deref(), Some("marketing"));
    assert_eq!(rec.permission.as_deref(), Some("read"));
}

#[tokio::test]
async fn a_purpose_the_dataset_lists_but_the_grant_does_not_is_refused_purpose_not_granted() {
    let t = start().await;
    grant(
        &t,
        DS,
        Grantee::User,
        "alice",
        Permission::Read,
        &["analytics"],
        None,
    )
    .await;
    let token = person(&t, "alice");
    let r = data_request(&t, "GET", PART, &token, Some("billing")).await;
    assert_refused(&r, "purpose_not_granted");
    let rec = last_authz(&t).await;
    assert_eq!(rec.decision, "deny");
    assert!(rec.reason.starts_with("purpose_not_granted"), "{rec:?}");
    assert_eq!(rec.dataset.as_deref(), Some(DS));
    assert_eq!(rec.purpose.as_deref(), Some("billing"));
    assert_eq!(rec.permission.as_deref(), Some("read"));
}

#[tokio::test]
async fn a_request_naming_no_purpose_is_refused_purpose_required() {
    let t = start().await;
    grant(&t, DS, Grantee::User, "alice", Permission::Read, &[], None).await;
    let token = person(&t, "alice");
    let r = data_request(&t, "GET", PART, &token, None).await;
    assert_refused(&r, "purpose_required");
    // An empty header names none either.
    let r = data_request(&t, "GET", PART, &token, Some("")).await;
    assert_refused(&r, "purpose_required");
}

#[tokio::test]
async fn a_person_of_another_tenant_is_told_the_dataset_is_unknown_and_audited_other_tenant() {
    let t = start().await;
    grant(&t, DS, Grantee::User, "alice", Permission::Read, &[], None).await;
    let mut claims = t.human_claims("alice", "data", "");
    claims.tenant = "globex".into();
    let token = t.app().issuers.human.mint(&claims).unwrap();
    let r = data_request(&t, "GET", PART, &token, Some("analytics")).await;
    // The same answer as for a dataset that does not exist, so another
    // tenant's datasets cannot be discovered...
    assert_refused(&r, "unknown_dataset");
    // ...while the audit record keeps the real reason.
    let rec = last_authz(&t).await;
    assert!(rec.reason.starts_with("other_tenant"), "{rec:?}");
    let missing = data_request(&t, "GET", "/data/nope.orders/x", &token, Some("analytics")).await;
    assert_eq!(r.status, missing.status);
    for field in ["error", "error_description", "reason"] {
        assert_eq!(r.body[field], missing.body[field], "{field}");
    }
    assert_eq!(rec.tenant.as_deref(), Some("globex"));
}

#[tokio::test]
async fn an_expired_grant_is_refused_grant_expired() {
    let t = start().await;
    let now = t.app().clock.now();
    grant(
        &t,
        DS,
        Grantee::User,
        "alice",
        Permission::Read,
        &[],
        Some(now + 1),
    )
    .await;
    let token = person(&t, "alice");
    let r = data_request(&t, "GET", PART, &token, Some("analytics")).await;
    assert_allowed(&r, "alice", "analytics");
    t.clock.advance(5);
    let r = data_request(&t, "GET", PART, &token, Some("analytics")).await;
    assert_refused(&r, "grant_expired");
    let rec = last_authz(&t).await;
    assert_eq!(rec.decision, "deny");
    assert!(rec.reason.starts_with("grant_expired"), "{rec:?}");
}

#[tokio::test]
async fn a_revoked_grant_is_refused_no_grant_once_the_cache_refreshes() {
    let t = start().await;
    let g = grant(&t, DS, Grantee::User, "alice", Permission::Read, &[], None).await;
    let token = person(&t, "alice");
    let r = data_request(&t, "GET", PART, &token, Some("analytics")).await;
    assert_allowed(&r, "alice", "analytics");
    assert!(t.app().store.remove_grant(&g.id).await.unwrap());
    let r = refused_within(&t, "GET", &token, Some("analytics"), "no_grant").await;
    assert_refused(&r, "no_grant");
}

#[tokio::test]
async fn a_service_token_is_refused_credential_kind_not_accepted() {
    let t = start().await;
    let (c, secret) = t.client("acme", &["data"], &[]).await;
    grant(
        &t,
        DS,
        Grantee::User,
        &c.client_id,
        Permission::Read,
        &[],
        None,
    )
    .await;
    grant(&t, DS, Grantee::Tenant, "acme", Permission::Read, &[], None).await;
    let token = t.service_token(&c, &secret, &[]).await;
    let r = data_request(&t, "GET", PART, &token, Some("analytics")).await;
    assert_refused(&r, "credential_kind_not_accepted");
    let rec = last_authz(&t).await;
    assert!(
        rec.reason.starts_with("credential_kind_not_accepted"),
        "{rec:?}"
    );
}

#[tokio::test]
async fn a_human_token_for_another_audience_is_refused_wrong_audience() {
    let t = start().await;
    grant(&t, DS, Grantee::User, "alice", Permission::Read, &[], None).await;
    let token = t.human_token("alice", "api", "");
    let r = data_request(&t, "GET", PART, &token, Some("analytics")).await;
    assert_refused(&r, "wrong_audience");
}

// ---------------------------------------------------------------------------
// 3. Group, tenant and write grants.

#[tokio::test]
async fn a_group_grant_allows_the_members_the_token_names() {
    let t = start().await;
    grant(
        &t,
        DS,
        Grantee::Group,
        "finance",
        Permission::Read,
        &[],
        None,
    )
    .await;
    let mut claims = t.human_claims("bob", "data", "");
    claims.groups = vec!["staff".into(), "finance".into()];
    let member = t.app().issuers.human.mint(&claims).unwrap();
    let r = data_request(&t, "GET", PART, &member, Some("billing")).await;
    assert_allowed(&r, "bob", "billing");

    claims.groups = vec!["staff".into()];
    let outsider = t.app().issuers.human.mint(&claims).unwrap();
    let r = data_request(&t, "GET", PART, &outsider, Some("billing")).await;
    assert_refused(&r, "no_grant");
}

#[tokio::test]
async fn a_tenant_grant_allows_every_person_of_the_tenant() {
    let t = start().await;
    grant(
        &t,
        DS,
        Grantee::Tenant,
        "acme",
        Permission::Read,
        &["analytics"],
        None,
    )
    .await;
    for who in ["alice", "bob"] {
        let r = data_request(&t, "GET", PART, &person(&t, who), Some("analytics")).await;
        assert_allowed(&r, who, "analytics");
    }
    let r = data_request(&t, "POST", PART, &person(&t, "bob"), Some("analytics")).await;
    assert_refused(&r, "permission_not_granted");
}

#[tokio::test]
async fn a_write_grant_covers_reading() {
    let t = start().await;
    grant(&t, DS, Grantee::User, "alice", Permission::Write, &[], None).await;
    let token = person(&t, "alice");
    let r = data_request(&t, "GET", PART, &token, Some("analytics")).await;
    assert_allowed(&r, "alice", "analytics");
    let rec = last_authz(&t).await;
    assert_eq!(rec.decision, "allow");
    assert_eq!(rec.permission.as_deref(), Some("read"));
    let r = data_request(&t, "PUT", PART, &token, Some("billing")).await;
    assert_allowed(&r, "alice", "billing");
    let rec = last_authz(&t).await;
    assert_eq!(rec.decision, "allow");
    assert_eq!(rec.permission.as_deref(), Some("write"));
    assert_eq!(rec.purpose.as_deref(), Some("billing"));
}

// ---------------------------------------------------------------------------
// 4. A data product acting for a person.

/// A product allowed to obtain delegated tokens for audience "data" and,
/// in a second delegation, to use `datasets` with `permissions` for users.
async fn data_product(
    t: &TestApp,
    datasets: &[&str],
    permissions: &[Permission],
) -> (String, String) {
    let (id, secret) = product(t, "data", &[]).await;
    if !datasets.is_empty() {
        let app = t.app();
        add_delegation(
            app.store.as_ref(),
            NewDelegation {
                client_id: id.clone(),
                datasets: datasets.iter().map(|s| s.to_string()).collect(),
                permissions: permissions.to_vec(),
                ..Default::default()
            },
            app.clock.now(),
        )
        .await
        .expect("dataset delegation added");
    }
    (id, secret)
}

/// Exchanges `subject` (a person's token) at the token endpoint for a
/// delegated token for audience "data".
async fn delegated(t: &TestApp, (id, secret): (&str, &str), subject: &str) -> String {
    let r = exchange(
        t,
        (id, secret),
        &[
            ("subject_token", subject),
            ("subject_token_type", ACCESS_TOKEN),
            ("audience", "data"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "token exchange: {}", r.text);
    let token = r.body["access_token"].as_str().unwrap().to_string();
    let claims = claims_of(&token);
    assert_eq!(claims["act"], json!({"sub": id}));
    assert_eq!(claims["client_id"], id);
    // RFC 7519 §4.1.3: one audience may be a plain string.
    assert!(
        claims["aud"] == json!("data") || claims["aud"] == json!(["data"]),
        "{claims}"
    );
    token
}

#[tokio::test]
async fn a_product_with_a_delegation_for_the_dataset_reads_for_the_person() {
    let t = start().await;
    grant(
        &t,
        DS,
        Grantee::User,
        "alice",
        Permission::Read,
        &["analytics"],
        None,
    )
    .await;
    let (id, secret) = data_product(&t, &[DS], &[Permission::Read]).await;
    let token = delegated(&t, (&id, &secret), &person(&t, "alice")).await;
    let r = data_request(&t, "GET", PART, &token, Some("analytics")).await;
    assert_allowed(&r, "alice", "analytics");
    assert_eq!(r.header("x-tessera-actor"), Some(id.as_str()));
    assert_eq!(r.header("x-tessera-client-id"), Some(id.as_str()));

    let rec = last_authz(&t).await;
    assert_eq!(rec.decision, "allow");
    assert_eq!(rec.subject.as_deref(), Some("alice"));
    assert_eq!(rec.actor.as_deref(), Some(id.as_str()));
    assert_eq!(rec.dataset.as_deref(), Some(DS));
    assert_eq!(rec.purpose.as_deref(), Some("analytics"));
    assert_eq!(rec.permission.as_deref(), Some("read"));
}

#[tokio::test]
async fn a_product_without_a_delegation_for_the_dataset_is_refused_though_the_person_may() {
    let t = start().await;
    dataset(
        &t,
        NewDataset {
            id: "hr.people".into(),
            ..sales_orders()
        },
    )
    .await;
    grant(&t, DS, Grantee::User, "alice", Permission::Write, &[], None).await;
    let alice = person(&t, "alice");
    // Alice herself may.
    let r = data_request(&t, "GET", PART, &alice, Some("analytics")).await;
    assert_allowed(&r, "alice", "analytics");

    // A product that may only get delegated tokens for "data", with no
    // dataset delegation at all.
    let bare = data_product(&t, &[], &[]).await;
    let token = delegated(&t, (&bare.0, &bare.1), &alice).await;
    let r = data_request(&t, "GET", PART, &token, Some("analytics")).await;
    assert_refused(&r, "no_delegation");
    let rec = last_authz(&t).await;
    assert_eq!(rec.decision, "deny");
    assert!(rec.reason.starts_with("no_delegation"), "{rec:?}");
    assert_eq!(rec.actor.as_deref(), Some(bare.0.as_str()));
    assert_eq!(rec.dataset.as_deref(), Some(DS));

    // A product delegated another dataset only.
    let other = data_product(&t, &["hr.people"], &[Permission::Write]).await;
    let token = delegated(&t, (&other.0, &other.1), &alice).await;
    let r = data_request(&t, "GET", PART, &token, Some("analytics")).await;
    assert_refused(&r, "no_delegation");
}

#[tokio::test]
async fn a_product_delegated_read_only_may_not_write_though_the_person_may() {
    let t = start().await;
    grant(&t, DS, Grantee::User, "alice", Permission::Write, &[], None).await;
    let alice = person(&t, "alice");
    let r = data_request(&t, "POST", PART, &alice, Some("analytics")).await;
    assert_allowed(&r, "alice", "analytics");

    let (id, secret) = data_product(&t, &[DS], &[Permission::Read]).await;
    let token = delegated(&t, (&id, &secret), &alice).await;
    let r = data_request(&t, "GET", PART, &token, Some("analytics")).await;
    assert_allowed(&r, "alice", "analytics");
    let r = data_request(&t, "POST", PART, &token, Some("analytics")).await;
    assert_refused(&r, "no_delegation");
    let rec = last_authz(&t).await;
    assert_eq!(rec.permission.as_deref(), Some("write"));
    assert!(rec.reason.starts_with("no_delegation"), "{rec:?}");
}

#[tokio::test]
async fn a_product_delegated_the_dataset_gets_nothing_the_person_does_not_hold() {
    let t = start().await;
    grant(&t, DS, Grantee::User, "alice", Permission::Read, &[], None).await;
    let (id, secret) = data_product(&t, &[DS], &[Permission::Write]).await;
    // Bob holds no grant: the product's delegation lends him nothing.
    let token = delegated(&t, (&id, &secret), &person(&t, "bob")).await;
    let r = data_request(&t, "GET", PART, &token, Some("analytics")).await;
    assert_refused(&r, "no_grant");
    // Alice reads only: the product's write delegation does not lift that.
    let token = delegated(&t, (&id, &secret), &person(&t, "alice")).await;
    let r = data_request(&t, "POST", PART, &token, Some("analytics")).await;
    assert_refused(&r, "permission_not_granted");
}

// ---------------------------------------------------------------------------
// 5. gRPC ext_authz.

fn grpc_check_request(method: &str, path: &str, token: &str, purpose: &str) -> CheckRequest {
    let headers = HashMap::from([
        (":authority".to_string(), "edge.example".to_string()),
        (":method".to_string(), method.to_string()),
        (":path".to_string(), path.to_string()),
        ("authorization".to_string(), format!("Bearer {token}")),
        ("x-purpose".to_string(), purpose.to_string()),
    ]);
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    id: uuid::Uuid::new_v4().to_string(),
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

async fn grpc_check(t: &TestApp, req: CheckRequest) -> CheckResponse {
    AuthorizationClient::connect(format!("http://{}", t.grpc))
        .await
        .expect("gRPC connects")
        .check(req)
        .await
        .expect("Check answers")
        .into_inner()
}

fn grpc_header<'a>(headers: &'a [HeaderValueOption], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key.eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

#[tokio::test]
async fn grpc_check_on_a_data_path_allows_with_the_dataset_and_purpose_headers() {
    let t = start().await;
    grant(
        &t,
        DS,
        Grantee::User,
        "alice",
        Permission::Read,
        &["analytics"],
        None,
    )
    .await;
    let token = person(&t, "alice");
    let r = grpc_check(&t, grpc_check_request("GET", PART, &token, "analytics")).await;
    assert_eq!(r.status.as_ref().unwrap().code, 0, "{r:?}");
    let Some(HttpResponse::OkResponse(ok)) = &r.http_response else {
        panic!("expected an OkResponse: {r:?}");
    };
    assert_eq!(grpc_header(&ok.headers, "x-tessera-dataset"), Some(DS));
    assert_eq!(
        grpc_header(&ok.headers, "x-tessera-purpose"),
        Some("analytics")
    );
    assert_eq!(grpc_header(&ok.headers, "x-tessera-subject"), Some("alice"));
    let rec = last_authz(&t).await;
    assert_eq!(rec.decision, "allow");
    assert_eq!(rec.dataset.as_deref(), Some(DS));
    assert_eq!(rec.purpose.as_deref(), Some("analytics"));
    assert_eq!(rec.permission.as_deref(), Some("read"));

    // And the same person writing is refused with the data reason.
    let r = grpc_check(&t, grpc_check_request("POST", PART, &token, "analytics")).await;
    assert_eq!(
        r.status.as_ref().unwrap().code,
        7,
        "PERMISSION_DENIED: {r:?}"
    );
    let Some(HttpResponse::DeniedResponse(denied)) = &r.http_response else {
        panic!("expected a DeniedResponse: {r:?}");
    };
    assert_eq!(denied.status.as_ref().unwrap().code, 403);
    let body: Value = serde_json::from_str(&denied.body).unwrap();
    assert_eq!(body["reason"], "permission_not_granted", "{body}");
}

// ---------------------------------------------------------------------------
// 6. The operator's CLI.

fn fresh() -> (tempfile::TempDir, BinEnv) {
    let dir = tempfile::tempdir().unwrap();
    let env = BinEnv::fresh(dir.path());
    (dir, env)
}

const ROLE: &str = "arn:aws:iam::123456789012:role/sales";

/// `dataset create|update ID` with sales.orders' fields and `extra`.
fn dataset_args<'a>(verb: &'a str, id: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "dataset",
        verb,
        id,
        "--tenant",
        "acme",
        "--role-arn",
        ROLE,
        "--glue-database",
        "sales",
        "--s3-prefix",
        "s3://lake/sales/orders/",
    ];
    args.extend_from_slice(extra);
    args
}

/// Runs a command that must fail, and returns its stderr.
async fn fails(env: &BinEnv, args: &[&str]) -> String {
    let out = env.run(args).await;
    assert_ne!(
        out.code,
        Some(0),
        "tessera {args:?} succeeded: {}",
        out.stdout
    );
    assert!(
        out.stdout.is_empty(),
        "errors go to stderr only: {}",
        out.stdout
    );
    out.stderr
}

#[tokio::test]
async fn cli_datasets_create_list_show_update_and_delete_with_their_grants() {
    let (_dir, env) = fresh();
    let orders = env
        .run_json(&dataset_args(
            "create",
            DS,
            &[
                "--glue-table",
                "orders",
                "--permission",
                "read",
                "--permission",
                "write",
                "--purpose",
                "analytics",
                "--purpose",
                "billing",
                "--max-duration",
                "2h",
            ],
        ))
        .await;
    assert_eq!(orders["id"], DS);
    assert_eq!(orders["tenant"], "acme");
    assert_eq!(orders["role_arn"], ROLE);
    assert_eq!(orders["glue_database"], "sales");
    assert_eq!(orders["glue_table"], "orders");
    assert_eq!(orders["lf_tag_expression"], Value::Null);
    assert_eq!(orders["s3_prefix"], "s3://lake/sales/orders/");
    assert_eq!(orders["permissions"], json!(["read", "write"]));
    assert_eq!(orders["purposes"], json!(["analytics", "billing"]));
    assert_eq!(orders["max_duration_secs"], 7200);

    let tags = r#"[{"key": "domain", "values": ["marketing"]}]"#;
    let leads = env
        .run_json(&dataset_args(
            "create",
            "marketing.leads",
            &["--lf-tags", tags, "--permission", "read"],
        ))
        .await;
    assert_eq!(leads["glue_table"], Value::Null);
    assert_eq!(
        leads["lf_tag_expression"],
        json!([{"key": "domain", "values": ["marketing"]}])
    );
    assert_eq!(leads["permissions"], json!(["read"]));
    assert_eq!(leads["purposes"], json!([]));
    assert_eq!(leads["max_duration_secs"], 3600, "default 1h");

    // The same id again is refused.
    let stderr = fails(
        &env,
        &dataset_args(
            "create",
            DS,
            &["--glue-table", "orders", "--permission", "read"],
        ),
    )
    .await;
    assert!(stderr.contains("already exists"), "{stderr}");

    let list = env.run_json(&["dataset", "list"]).await;
    let ids: Vec<&str> = list
        .as_array()
        .expect("an array")
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["marketing.leads", DS]);

    // Grants for a user, a group and a tenant.
    let user = env
        .run_json(&[
            "grant",
            "add",
            "--dataset",
            DS,
            "--user",
            "alice",
            "--permission",
            "read",
            "--purpose",
            "analytics",
        ])
        .await;
    assert_eq!(user["dataset_id"], DS);
    assert_eq!(user["grantee_type"], "user");
    assert_eq!(user["grantee"], "alice");
    assert_eq!(user["permission"], "read");
    assert_eq!(user["purposes"], json!(["analytics"]));
    assert_eq!(user["expires_at"], Value::Null);
    let group = env
        .run_json(&[
            "grant",
            "add",
            "--dataset",
            DS,
            "--group",
            "finance",
            "--permission",
            "write",
        ])
        .await;
    assert_eq!(group["grantee_type"], "group");
    assert_eq!(group["grantee"], "finance");
    assert_eq!(group["permission"], "write");
    assert_eq!(group["purposes"], json!([]));
    let tenant = env
        .run_json(&[
            "grant",
            "add",
            "--dataset",
            DS,
            "--tenant",
            "acme",
            "--permission",
            "read",
            "--expires-in",
            "30d",
        ])
        .await;
    assert_eq!(tenant["grantee_type"], "tenant");
    assert_eq!(tenant["grantee"], "acme");
    let expires = tenant["expires_at"].as_i64().expect("an expiry");
    let in_30d = now() + 30 * 86_400;
    assert!((in_30d - 60..=in_30d + 60).contains(&expires), "{tenant}");

    // A permission the dataset does not allow, a purpose it does not list,
    // an unknown dataset, two grantees.
    let stderr = fails(
        &env,
        &[
            "grant",
            "add",
            "--dataset",
            "marketing.leads",
            "--user",
            "alice",
            "--permission",
            "write",
        ],
    )
    .await;
    assert!(stderr.contains("does not allow write"), "{stderr}");
    let stderr = fails(
        &env,
        &[
            "grant",
            "add",
            "--dataset",
            DS,
            "--user",
            "alice",
            "--permission",
            "read",
            "--purpose",
            "marketing",
        ],
    )
    .await;
    assert!(stderr.contains("marketing"), "{stderr}");
    let stderr = fails(
        &env,
        &[
            "grant",
            "add",
            "--dataset",
            "hr.people",
            "--user",
            "alice",
            "--permission",
            "read",
        ],
    )
    .await;
    assert!(stderr.contains("hr.people"), "{stderr}");
    fails(
        &env,
        &[
            "grant",
            "add",
            "--dataset",
            DS,
            "--user",
            "alice",
            "--group",
            "finance",
            "--permission",
            "read",
        ],
    )
    .await;

    let grant_ids = |v: &Value| -> Vec<String> {
        v.as_array()
            .expect("an array")
            .iter()
            .map(|g| g["id"].as_str().unwrap().to_string())
            .collect()
    };
    let all = env.run_json(&["grant", "list"]).await;
    let mut expected = vec![
        user["id"].as_str().unwrap().to_string(),
        group["id"].as_str().unwrap().to_string(),
        tenant["id"].as_str().unwrap().to_string(),
    ];
    let mut got = grant_ids(&all);
    expected.sort();
    got.sort();
    assert_eq!(got, expected);
    assert_eq!(
        env.run_json(&["grant", "list", "--dataset", "marketing.leads"])
            .await,
        json!([])
    );

    // show: the dataset with its grants.
    let show = env.run_json(&["dataset", "show", DS]).await;
    assert_eq!(show["id"], DS);
    assert_eq!(show["max_duration_secs"], 7200);
    let mut shown = grant_ids(&show["grants"]);
    shown.sort();
    assert_eq!(shown, expected);
    assert!(show["grants"]
        .as_array()
        .unwrap()
        .iter()
        .any(|g| g == &user));

    // update: replaces the fields (here the longest credential lifetime).
    let updated = env
        .run_json(&dataset_args(
            "update",
            DS,
            &[
                "--glue-table",
                "orders",
                "--permission",
                "read",
                "--permission",
                "write",
                "--purpose",
                "analytics",
                "--purpose",
                "billing",
                "--max-duration",
                "4h",
            ],
        ))
        .await;
    assert_eq!(updated["max_duration_secs"], 14_400);
    assert_eq!(updated["created_at"], orders["created_at"]);
    let show = env.run_json(&["dataset", "show", DS]).await;
    assert_eq!(show["max_duration_secs"], 14_400);
    assert_eq!(show["grants"].as_array().unwrap().len(), 3, "grants kept");
    let stderr = fails(
        &env,
        &dataset_args(
            "update",
            "hr.people",
            &["--glue-table", "people", "--permission", "read"],
        ),
    )
    .await;
    assert!(stderr.contains("hr.people"), "{stderr}");

    // revoke one grant.
    let user_id = user["id"].as_str().unwrap();
    assert_eq!(
        env.run_json(&["grant", "revoke", user_id]).await,
        json!({"id": user_id, "revoked": true})
    );
    assert_eq!(
        grant_ids(&env.run_json(&["grant", "list", "--dataset", DS]).await).len(),
        2
    );
    let stderr = fails(&env, &["grant", "revoke", user_id]).await;
    assert!(stderr.contains(user_id), "{stderr}");

    // delete: the dataset and its grants go.
    assert_eq!(
        env.run_json(&["dataset", "delete", DS]).await,
        json!({"id": DS, "deleted": true})
    );
    assert_eq!(env.run_json(&["grant", "list"]).await, json!([]));
    let stderr = fails(&env, &["dataset", "show", DS]).await;
    assert!(stderr.contains(DS), "{stderr}");
    let stderr = fails(&env, &["dataset", "delete", DS]).await;
    assert!(stderr.contains(DS), "{stderr}");
    let list = env.run_json(&["dataset", "list"]).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], "marketing.leads");
}

#[tokio::test]
async fn cli_dataset_create_refuses_invalid_fields_with_the_reason() {
    let (_dir, env) = fresh();
    let base = |extra: &[&'static str]| {
        let mut args: Vec<&'static str> = vec![
            "dataset",
            "create",
            DS,
            "--tenant",
            "acme",
            "--glue-database",
            "sales",
            "--glue-table",
            "orders",
            "--permission",
            "read",
        ];
        args.extend_from_slice(extra);
        args
    };
    let ok_prefix = ["--s3-prefix", "s3://lake/sales/orders/"];
    let ok_role = ["--role-arn", ROLE];

    let bad_role = [
        &["--role-arn", "arn:aws:iam::1234:role/sales"][..],
        &ok_prefix,
    ]
    .concat();
    let stderr = fails(&env, &base(&bad_role)).await;
    assert!(stderr.contains("role ARN"), "{stderr}");
    let bad_role = [
        &["--role-arn", "arn:aws:iam::123456789012:user/sales"][..],
        &ok_prefix,
    ]
    .concat();
    let stderr = fails(&env, &base(&bad_role)).await;
    assert!(stderr.contains("role ARN"), "{stderr}");

    let bad_prefix = [&ok_role[..], &["--s3-prefix", "s3://lake/sales/orders"]].concat();
    let stderr = fails(&env, &base(&bad_prefix)).await;
    assert!(stderr.contains("S3 prefix"), "{stderr}");

    let short = [&ok_role[..], &ok_prefix, &["--max-duration", "10m"]].concat();
    let stderr = fails(&env, &base(&short)).await;
    assert!(stderr.contains("between 15m and 12h"), "{stderr}");

    let bad_tags = [
        &ok_role[..],
        &ok_prefix,
        &["--lf-tags", r#"[{"key": "domain"}]"#],
    ]
    .concat();
    // --lf-tags with --glue-table conflicts; build without the table.
    let mut args: Vec<&str> = base(&bad_tags)
        .into_iter()
        .filter(|a| *a != "--glue-table" && *a != "orders")
        .collect();
    let stderr = fails(&env, &args).await;
    assert!(stderr.contains("LF-Tag"), "{stderr}");
    args.retain(|a| !a.starts_with('['));
    args.retain(|a| *a != "--lf-tags");
    // Neither a table nor tags.
    fails(&env, &args).await;

    // Nothing was created.
    assert_eq!(env.run_json(&["dataset", "list"]).await, json!([]));
    // And the valid form is accepted.
    let ok = [&ok_role[..], &ok_prefix].concat();
    let created = env.run_json(&base(&ok)).await;
    assert_eq!(created["id"], DS);
}

#[tokio::test]
async fn cli_delegation_add_with_a_dataset_and_no_audience_prints_the_datasets_and_permissions() {
    let (_dir, env) = fresh();
    let client = env
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
    let client_id = client["client_id"].as_str().unwrap();
    env.run_json(&dataset_args(
        "create",
        DS,
        &[
            "--glue-table",
            "orders",
            "--permission",
            "read",
            "--permission",
            "write",
        ],
    ))
    .await;
    let d = env
        .run_json(&[
            "delegation",
            "add",
            "--client",
            client_id,
            "--dataset",
            DS,
            "--permission",
            "read",
        ])
        .await;
    assert_eq!(d["client_id"], client_id);
    assert_eq!(d["datasets"], json!([DS]));
    assert_eq!(d["permissions"], json!(["read"]));
    assert_eq!(d["audiences"], json!([]));
    assert_eq!(d["scopes"], json!([]));
    assert!(d["id"].as_str().is_some_and(|s| !s.is_empty()), "{d}");

    // A dataset without a permission, and an unknown dataset, are refused.
    let stderr = fails(
        &env,
        &["delegation", "add", "--client", client_id, "--dataset", DS],
    )
    .await;
    assert!(stderr.contains("permission"), "{stderr}");
    let stderr = fails(
        &env,
        &[
            "delegation",
            "add",
            "--client",
            client_id,
            "--dataset",
            "hr.people",
            "--permission",
            "read",
        ],
    )
    .await;
    assert!(stderr.contains("hr.people"), "{stderr}");
    // Neither an audience nor a dataset.
    fails(&env, &["delegation", "add", "--client", client_id]).await;

    let listed = env
        .run_json(&["delegation", "list", "--client", client_id])
        .await;
    assert_eq!(listed, json!([d]));
}

#[tokio::test]
async fn a_replica_that_cannot_poll_the_registry_refuses_data_requests_and_audits_why() {
    let t = start().await;
    grant(&t, DS, Grantee::User, "alice", Permission::Read, &[], None).await;
    let token = person(&t, "alice");
    let (c, secret) = t.client("acme", &["internal"], &[]).await;
    let svc = t.service_token(&c, &secret, &[]).await;
    let r = data_request(&t, "GET", PART, &token, Some("analytics")).await;
    assert_allowed(&r, "alice", "analytics");
    // The store stops answering registry polls: a grant revoked now would
    // go unseen, so data decisions stop once the snapshot is too old.
    crate::audit::RawDb::open(&t)
        .await
        .exec("DROP TABLE registry_version")
        .await
        .unwrap();
    let deadline =
        Instant::now() + tessera::oauth::client_cache::MAX_STALENESS + Duration::from_secs(3);
    let mut r = data_request(&t, "GET", PART, &token, Some("analytics")).await;
    while r.status == 200 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        r = data_request(&t, "GET", PART, &token, Some("analytics")).await;
    }
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.error(), "temporarily_unavailable", "{}", r.text);
    assert!(r.header("x-tessera-dataset").is_none());
    let rec = last_authz(&t).await;
    assert_eq!(rec.decision, "deny", "{rec:?}");
    assert!(
        rec.reason.starts_with("data_registry_unavailable"),
        "{rec:?}"
    );
    assert_eq!(rec.dataset.as_deref(), Some(DS));
    // Routes that do not touch the registry's data still pass.
    assert_eq!(t.authz("GET", "/internal/x", Some(&svc)).await.status, 200);
}

#[tokio::test]
async fn a_deleted_dataset_leaves_no_delegation_behind_for_one_created_later_under_its_id() {
    let t = start().await;
    let mut hr = sales_orders();
    hr.id = "hr.people".into();
    dataset(&t, hr).await;
    let (client, _) = t.client("acme", &["internal"], &[]).await;
    let app = t.app();
    add_delegation(
        app.store.as_ref(),
        NewDelegation {
            client_id: client.client_id.clone(),
            datasets: vec![DS.into(), "hr.people".into()],
            permissions: vec![Permission::Read],
            ..Default::default()
        },
        app.clock.now(),
    )
    .await
    .unwrap();
    assert!(app.store.delete_dataset(DS).await.unwrap());
    let left = app
        .store
        .delegations(Some(&client.client_id))
        .await
        .unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].datasets, vec!["hr.people".to_string()]);
}

#[tokio::test]
async fn the_registry_refuses_what_could_never_be_served() {
    let t = start().await;
    let app = t.app();
    // A tenant grant naming another tenant than the dataset's.
    let e = add_grant(
        app.store.as_ref(),
        NewGrant {
            dataset_id: DS.into(),
            grantee_type: Grantee::Tenant,
            grantee: "globex".into(),
            permission: Permission::Read,
            purposes: vec![],
            expires_at: None,
        },
        app.clock.now(),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("tenant"), "{e}");
    // Datasets whose AWS settings no session policy could be made from.
    type Change = Box<dyn Fn(&mut NewDataset)>;
    let cases: Vec<(Change, &str)> = vec![
        (
            Box::new(|d| d.glue_table = Some("orders*".into())),
            "Glue table",
        ),
        (
            Box::new(|d| d.glue_database = "sales/x".into()),
            "Glue database",
        ),
        // Glue keeps names in lowercase.
        (
            Box::new(|d| d.glue_table = Some("Orders".into())),
            "Glue table",
        ),
        (
            Box::new(|d| d.role_arn = "arn:aws:iam::123456789012:role/".into()),
            "role ARN",
        ),
        (
            Box::new(|d| d.role_arn = "arn:aws:iam::123456789012:user/x".into()),
            "role ARN",
        ),
        (
            Box::new(|d| d.role_arn = "arn:evil:iam::123456789012:role/x".into()),
            "role ARN",
        ),
        (
            Box::new(|d| d.s3_prefix = "s3://Bad_Bucket/x/".into()),
            "bucket",
        ),
        (
            Box::new(|d| d.s3_prefix = "s3://lake/a?b/".into()),
            "not allowed",
        ),
    ];
    for (change, want) in cases {
        let mut d = sales_orders();
        d.id = "other.ds".into();
        change(&mut d);
        let e = create_dataset(app.store.as_ref(), d, app.clock.now())
            .await
            .unwrap_err();
        assert!(e.to_string().contains(want), "{want}: {e}");
    }
    // Another partition is fine.
    let mut cn = sales_orders();
    cn.id = "cn.orders".into();
    cn.role_arn = "arn:aws-cn:iam::123456789012:role/sales".into();
    create_dataset(app.store.as_ref(), cn, app.clock.now())
        .await
        .unwrap();
}
