//! Token exchange for AWS credentials, end to end through the token
//! endpoint: a data product presents a person's token and gets STS
//! credentials for one dataset (moto plays STS; see `moto.rs`). What was
//! sent to STS is checked in moto's recorder (moto drops tags and source
//! identity from its answer).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex as StdMutex, Once};
use std::time::{Duration, Instant, UNIX_EPOCH};

use serde_json::Value;
use tessera::registry::{
    add_delegation, add_grant, create_dataset, NewDataset, NewDelegation, NewGrant,
};
use tessera::store::{DatasetGrant, Grantee, Permission};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::harness::*;
use crate::moto::{Moto, Recorded, ACCOUNT};
use crate::token_exchange::{exchange, ACCESS_TOKEN};

const AWS_CREDENTIALS: &str = "urn:tessera:params:oauth:token-type:aws-credentials";
const DS: &str = "sales.orders";
const RESOURCE: &str = "urn:tessera:dataset:sales.orders";
const BUCKET: &str = "data-lake";
const PREFIX: &str = "s3://data-lake/sales/orders/";

static AWS_ENV: Once = Once::new();

/// The server's broker reads the SDK's default credential chain: give it
/// dummy keys (moto checks no signature) and never probe instance metadata.
fn aws_env() {
    AWS_ENV.call_once(|| {
        std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    });
}

/// A Tessera whose `[aws]` points at `endpoint`, with more `[aws]` lines.
async fn start_at(endpoint: &str, aws_lines: &str) -> TestApp {
    aws_env();
    TestApp::builder()
        .config(&format!(
            "[aws]\nendpoint_url = {endpoint:?}\nregion = \"us-east-1\"\n{aws_lines}"
        ))
        .start()
        .await
}

/// `sales.orders` on `role`: tenant acme, read and write, for `purposes`,
/// at most an hour.
fn sales_orders(id: &str, role: &str, purposes: &[&str]) -> NewDataset {
    NewDataset {
        id: id.into(),
        tenant: "acme".into(),
        role_arn: role.into(),
        glue_database: "sales".into(),
        glue_table: Some("orders".into()),
        lf_tag_expression: None,
        s3_prefix: PREFIX.into(),
        permissions: vec![Permission::Read, Permission::Write],
        purposes: purposes.iter().map(|s| s.to_string()).collect(),
        max_duration_secs: 3600,
    }
}

async fn dataset(t: &TestApp, new: NewDataset) {
    let app = t.app();
    create_dataset(app.store.as_ref(), new, app.clock.now())
        .await
        .expect("dataset created");
}

async fn user_grant(
    t: &TestApp,
    dataset_id: &str,
    user: &str,
    permission: Permission,
    purposes: &[&str],
    expires_at: Option<i64>,
) -> DatasetGrant {
    let app = t.app();
    add_grant(
        app.store.as_ref(),
        NewGrant {
            dataset_id: dataset_id.into(),
            grantee_type: Grantee::User,
            grantee: user.into(),
            permission,
            purposes: purposes.iter().map(|s| s.to_string()).collect(),
            expires_at,
        },
        app.clock.now(),
    )
    .await
    .expect("grant added")
}

/// A data product (client of tenant acme) delegated `datasets` with
/// `permissions`; with no datasets, a client without any delegation.
async fn product(t: &TestApp, datasets: &[&str], permissions: &[Permission]) -> (String, String) {
    let (client, secret) = t.client("acme", &["internal"], &["svc:own"]).await;
    if !datasets.is_empty() {
        let app = t.app();
        add_delegation(
            app.store.as_ref(),
            NewDelegation {
                client_id: client.client_id.clone(),
                datasets: datasets.iter().map(|s| s.to_string()).collect(),
                permissions: permissions.to_vec(),
                ..Default::default()
            },
            app.clock.now(),
        )
        .await
        .expect("delegation added");
    }
    (client.client_id, secret)
}

/// The standard exchange for `subject`, with `extra` fields replacing or
/// adding to the defaults (resource, scope read, purpose analytics).
async fn credentials(
    t: &TestApp,
    (id, secret): (&str, &str),
    subject: &str,
    extra: &[(&str, &str)],
) -> Reply {
    let defaults = [
        ("resource", RESOURCE),
        ("scope", "read"),
        ("purpose", "analytics"),
    ];
    let mut form: Vec<(&str, &str)> = vec![
        ("subject_token", subject),
        ("subject_token_type", ACCESS_TOKEN),
        ("requested_token_type", AWS_CREDENTIALS),
    ];
    for (k, v) in defaults {
        if !extra.iter().any(|(ek, _)| *ek == k) {
            form.push((k, v));
        }
    }
    // An empty value drops the field.
    form.extend(extra.iter().filter(|(_, v)| !v.is_empty()));
    exchange(t, (id, secret), &form).await
}

/// The most recent token_exchange audit record.
async fn last_exchange(t: &TestApp) -> tessera::audit::AuditRecord {
    t.audit()
        .await
        .into_iter()
        .rev()
        .find(|a| a.record.event == "token_exchange")
        .expect("a token_exchange record")
        .record
}

fn tags(r: &Recorded) -> BTreeMap<String, String> {
    let form = r.form();
    let mut out = BTreeMap::new();
    for n in 1..=50 {
        let key = form
            .iter()
            .find(|(k, _)| *k == format!("Tags.member.{n}.Key"))
            .map(|(_, v)| v.clone());
        let Some(key) = key else { break };
        let value = r
            .field(&format!("Tags.member.{n}.Value"))
            .unwrap_or_default();
        out.insert(key, value);
    }
    out
}

fn transitive(r: &Recorded) -> Vec<String> {
    (1..=50)
        .map_while(|n| r.field(&format!("TransitiveTagKeys.member.{n}")))
        .collect()
}

fn valid_sts_name(s: &str) -> bool {
    (2..=64).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c))
}

/// What AWS accepts as a tag value: at most 256 characters of letters,
/// digits, spaces and `_.:/=+-@`, not starting with `aws:`.
fn valid_tag_value(s: &str) -> bool {
    s.chars().count() <= 256
        && s.chars()
            .all(|c| c.is_alphanumeric() || c == ' ' || "_.:/=+-@".contains(c))
        && !s.to_ascii_lowercase().starts_with("aws:")
}

fn assert_refused(r: &Reply, status: u16, error: &str, reason: Option<&str>) {
    assert_eq!(r.status, status, "{}", r.text);
    assert_eq!(r.error(), error, "{}", r.text);
    match reason {
        Some(reason) => assert_eq!(r.body["reason"], reason, "{}", r.text),
        None => assert!(r.body.get("reason").is_none(), "{}", r.text),
    }
    assert!(r.body.get("access_key_id").is_none(), "{}", r.text);
}

// ---------------------------------------------------------------------------
// 1. The happy path.

#[tokio::test]
async fn a_person_with_a_grant_gets_credentials_bound_to_them_and_the_issue_is_audited_without_secrets(
) {
    let moto = Moto::start().await;
    let t = start_at(&moto.url, "sts_timeout = \"20s\"").await;
    let role = moto.create_role("sales-reader").await;
    dataset(&t, sales_orders(DS, &role, &["analytics"])).await;
    user_grant(&t, DS, "alice", Permission::Read, &["analytics"], None).await;
    let (id, secret) = product(&t, &[DS], &[Permission::Read]).await;
    let alice = person_token(&t, "alice");

    let r = credentials(&t, (&id, &secret), &alice, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let b = &r.body;
    assert_eq!(b["issued_token_type"], AWS_CREDENTIALS);
    assert_eq!(b["token_type"], "N_A");
    let key = b["access_key_id"].as_str().unwrap();
    let secret_key = b["secret_access_key"].as_str().unwrap();
    let session_token = b["session_token"].as_str().unwrap();
    assert!(key.starts_with("ASIA"), "{}", r.text);
    assert!(!secret_key.is_empty() && !session_token.is_empty());
    assert_eq!(
        b["access_token"], session_token,
        "access_token is the session token"
    );
    let expires_in = b["expires_in"].as_i64().unwrap();
    assert!((expires_in - 3600).abs() < 120, "expires_in {expires_in}");
    let expiration = humantime::parse_rfc3339(b["expiration"].as_str().unwrap())
        .expect("expiration is RFC 3339")
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (expiration - (t.clock.now() + 3600)).abs() < 120,
        "expiration {expiration}"
    );
    assert_eq!(
        b["assumed_role_arn"],
        format!("arn:aws:sts::{ACCOUNT}:assumed-role/sales-reader/alice")
    );

    // What STS was asked.
    let sent = moto.recorded_action("AssumeRole").await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    let s = &sent[0];
    assert_eq!(s.field("RoleArn").as_deref(), Some(role.as_str()));
    assert_eq!(s.field("RoleSessionName").as_deref(), Some("alice"));
    assert_eq!(s.field("SourceIdentity").as_deref(), Some("alice"));
    assert_eq!(s.field("DurationSeconds").as_deref(), Some("3600"));
    let tags = tags(s);
    for (k, v) in [
        ("tessera-user", "alice"),
        ("tessera-service", id.as_str()),
        ("tessera-tenant", "acme"),
        ("tessera-dataset", DS),
        ("tessera-purpose", "analytics"),
    ] {
        assert_eq!(
            tags.get(k).map(String::as_str),
            Some(v),
            "tag {k}: {tags:?}"
        );
    }
    let mut keys: Vec<String> = tags.keys().cloned().collect();
    let mut trans = transitive(s);
    keys.sort();
    trans.sort();
    assert!(!trans.is_empty(), "TransitiveTagKeys sent");
    assert_eq!(trans, keys, "every session tag is transitive");
    let policy: Value =
        serde_json::from_str(&s.field("Policy").expect("a session policy")).expect("JSON");
    let glue = format!("arn:aws:glue:us-east-1:{ACCOUNT}");
    let read_only = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "Glue", "Effect": "Allow",
             "Action": ["glue:GetDatabase", "glue:GetTable", "glue:GetTables",
                        "glue:GetPartition", "glue:GetPartitions"],
             "Resource": [format!("{glue}:catalog"), format!("{glue}:database/sales"),
                          format!("{glue}:table/sales/orders")]},
            {"Sid": "Objects", "Effect": "Allow", "Action": ["s3:GetObject"],
             "Resource": format!("arn:aws:s3:::{BUCKET}/sales/orders/*")},
            {"Sid": "List", "Effect": "Allow", "Action": "s3:ListBucket",
             "Resource": format!("arn:aws:s3:::{BUCKET}"),
             "Condition": {"StringLike": {"s3:prefix": ["sales/orders/*"]}}},
            {"Sid": "LakeFormation", "Effect": "Allow",
             "Action": "lakeformation:GetDataAccess", "Resource": "*"},
        ],
    });
    assert_eq!(policy, read_only, "exactly the dataset, read only");
    assert!(
        !s.body.contains(secret.as_str()),
        "the client secret is not sent to STS"
    );

    // The audit record.
    let rec = last_exchange(&t).await;
    assert_eq!(rec.decision, "allow", "{rec:?}");
    assert_eq!(rec.subject.as_deref(), Some("alice"));
    assert_eq!(rec.client_id.as_deref(), Some(id.as_str()));
    assert_eq!(rec.actor.as_deref(), Some(id.as_str()));
    assert_eq!(rec.dataset.as_deref(), Some(DS));
    assert_eq!(rec.purpose.as_deref(), Some("analytics"));
    assert_eq!(rec.permission.as_deref(), Some("read"));
    assert_eq!(rec.role_arn.as_deref(), Some(role.as_str()));
    assert_eq!(rec.session_name.as_deref(), Some("alice"));
    assert_eq!(rec.source_identity.as_deref(), Some("alice"));
    assert_eq!(rec.access_key_id.as_deref(), Some(key));
    assert_eq!(rec.credential_expiry, Some(expiration));
    assert!(
        rec.reason.starts_with("aws_credentials issued via "),
        "{}",
        rec.reason
    );
    let all = serde_json::to_string(&t.audit().await).unwrap();
    assert!(
        !all.contains(secret_key),
        "secret access key in the audit log"
    );
    assert!(
        !all.contains(session_token),
        "session token in the audit log"
    );
}

#[tokio::test]
async fn the_asked_duration_is_clamped_to_aws_minimum_and_the_dataset_maximum() {
    let moto = Moto::start().await;
    let t = start_at(
        &moto.url,
        "sts_timeout = \"20s\"\ncredential_reuse_margin = \"0s\"",
    )
    .await;
    let role = moto.create_role("sales-reader").await;
    dataset(&t, sales_orders(DS, &role, &["analytics"])).await;
    user_grant(&t, DS, "alice", Permission::Read, &["analytics"], None).await;
    let (id, secret) = product(&t, &[DS], &[Permission::Read]).await;
    let alice = person_token(&t, "alice");

    for (asked, sent) in [("900", 900), ("7200", 3600), ("1800", 1800)] {
        let r = credentials(&t, (&id, &secret), &alice, &[("expires_in", asked)]).await;
        assert_eq!(r.status, 200, "expires_in {asked}: {}", r.text);
        let expires_in = r.body["expires_in"].as_i64().unwrap();
        assert!(
            (expires_in - sent).abs() < 120,
            "asked {asked}: expires_in {expires_in}, expected about {sent}"
        );
        let calls = moto.recorded_action("AssumeRole").await;
        assert_eq!(
            calls.last().unwrap().field("DurationSeconds"),
            Some(sent.to_string()),
            "asked {asked}"
        );
    }
    // Shorter than AWS's 15 minutes cannot be met without exceeding the ask.
    for bad in ["0", "-5", "soon", "600", "899"] {
        let r = credentials(&t, (&id, &secret), &alice, &[("expires_in", bad)]).await;
        assert_refused(&r, 400, "invalid_request", None);
    }
    assert_eq!(moto.recorded_action("AssumeRole").await.len(), 3);
}

// ---------------------------------------------------------------------------
// 2. Refusals: nothing reaches STS.

#[tokio::test]
async fn refusals_name_their_reason_and_nothing_is_sent_to_sts() {
    let moto = Moto::start().await;
    let t = start_at(&moto.url, "sts_timeout = \"20s\"").await;
    let role = moto.create_role("sales-reader").await;
    dataset(&t, sales_orders(DS, &role, &["analytics", "billing"])).await;
    dataset(&t, sales_orders("sales.returns", &role, &["analytics"])).await;
    user_grant(&t, DS, "alice", Permission::Read, &["analytics"], None).await;
    user_grant(
        &t,
        "sales.returns",
        "alice",
        Permission::Read,
        &["analytics"],
        None,
    )
    .await;
    user_grant(&t, DS, "carol", Permission::Write, &["analytics"], None).await;
    let reader = product(&t, &[DS], &[Permission::Read]).await;
    // Delegated read and write, so the person's grant decides the permission.
    let prod = product(&t, &[DS], &[Permission::Read, Permission::Write]).await;
    let p = (prod.0.as_str(), prod.1.as_str());
    let alice = person_token(&t, "alice");
    let bob = person_token(&t, "bob");

    let cases: Vec<(&str, &str, Vec<(&str, &str)>, u16, &str, Option<&str>)> = vec![
        (
            "unknown dataset",
            alice.as_str(),
            vec![("resource", "urn:tessera:dataset:nope")],
            400,
            "invalid_target",
            Some("unknown_dataset"),
        ),
        (
            "no grant",
            bob.as_str(),
            vec![],
            400,
            "invalid_target",
            Some("no_grant"),
        ),
        (
            "purpose the dataset does not allow",
            alice.as_str(),
            vec![("purpose", "marketing")],
            400,
            "invalid_target",
            Some("purpose_not_allowed"),
        ),
        (
            "purpose the grant does not name",
            alice.as_str(),
            vec![("purpose", "billing")],
            400,
            "invalid_target",
            Some("purpose_not_granted"),
        ),
        (
            "write with a read grant",
            alice.as_str(),
            vec![("scope", "write")],
            400,
            "invalid_scope",
            Some("permission_not_granted"),
        ),
        (
            "missing purpose",
            alice.as_str(),
            vec![("purpose", "")],
            400,
            "invalid_request",
            Some("purpose_required"),
        ),
        (
            "two resources",
            alice.as_str(),
            vec![
                ("resource", RESOURCE),
                ("resource", "urn:tessera:dataset:sales.returns"),
            ],
            400,
            "invalid_target",
            None,
        ),
        (
            "not a dataset",
            alice.as_str(),
            vec![("resource", "https://api.example.com/")],
            400,
            "invalid_target",
            None,
        ),
        (
            "empty dataset id",
            alice.as_str(),
            vec![("resource", "urn:tessera:dataset:")],
            400,
            "invalid_target",
            None,
        ),
        (
            "read and write at once",
            alice.as_str(),
            vec![("scope", "read write")],
            400,
            "invalid_scope",
            None,
        ),
        (
            "no scope",
            alice.as_str(),
            vec![("scope", "")],
            400,
            "invalid_scope",
            None,
        ),
        (
            "a scope that is no permission",
            alice.as_str(),
            vec![("scope", "admin")],
            400,
            "invalid_scope",
            None,
        ),
        (
            // The delegation names sales.orders only.
            "dataset not delegated to the product",
            alice.as_str(),
            vec![("resource", "urn:tessera:dataset:sales.returns")],
            400,
            "invalid_target",
            Some("no_delegation"),
        ),
    ];
    for (what, subject, extra, status, error, reason) in &cases {
        let r = credentials(&t, p, subject, extra).await;
        assert_eq!(r.status, *status, "{what}: {}", r.text);
        assert_eq!(r.error(), *error, "{what}: {}", r.text);
        assert_eq!(r.body["reason"].as_str(), *reason, "{what}: {}", r.text);
        assert!(r.body.get("access_key_id").is_none(), "{what}: {}", r.text);
    }

    // A person of another tenant.
    let mut claims = t.human_claims("alice", "api", "");
    claims.tenant = "other".into();
    let other = t.app().issuers.human.mint(&claims).unwrap();
    let r = credentials(&t, p, &other, &[]).await;
    // Told the same as for a dataset that does not exist; audited as it is.
    assert_refused(&r, 400, "invalid_target", Some("unknown_dataset"));
    let rec = last_exchange(&t).await;
    assert!(rec.reason.contains("(other_tenant)"), "{}", rec.reason);
    let unknown = credentials(&t, p, &other, &[("resource", "urn:tessera:dataset:nope")]).await;
    assert_eq!(
        r.body["error_description"],
        unknown.body["error_description"]
    );

    // A service token is no person.
    let (svc_client, svc_secret) = t.client("acme", &["internal"], &["svc:own"]).await;
    let svc = t.service_token(&svc_client, &svc_secret, &[]).await;
    let r = credentials(&t, p, &svc, &[]).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.error(), "invalid_grant", "{}", r.text);

    // A client without any delegation.
    let bare = product(&t, &[], &[]).await;
    let r = credentials(&t, (&bare.0, &bare.1), &alice, &[]).await;
    assert_refused(&r, 400, "unauthorized_client", None);

    // A product delegated read only, asking write for a person who may write.
    let carol = person_token(&t, "carol");
    let r = credentials(&t, (&reader.0, &reader.1), &carol, &[("scope", "write")]).await;
    assert_refused(&r, 400, "invalid_target", Some("no_delegation"));

    // Refusals are audited as denials with the reason.
    let rec = last_exchange(&t).await;
    assert_eq!(rec.decision, "deny", "{rec:?}");
    assert!(rec.reason.contains("no_delegation"), "{}", rec.reason);
    assert!(rec.access_key_id.is_none());

    let sent = moto.recorded_action("AssumeRole").await;
    assert!(sent.is_empty(), "nothing may reach STS: {sent:?}");
}

#[tokio::test]
async fn an_expired_or_revoked_grant_is_refused_before_sts() {
    let moto = Moto::start().await;
    let t = start_at(&moto.url, "sts_timeout = \"20s\"").await;
    let role = moto.create_role("sales-reader").await;
    dataset(&t, sales_orders(DS, &role, &["analytics"])).await;
    let now = t.clock.now();
    user_grant(
        &t,
        DS,
        "alice",
        Permission::Read,
        &["analytics"],
        Some(now + 60),
    )
    .await;
    let g = user_grant(&t, DS, "bob", Permission::Read, &["analytics"], None).await;
    let (id, secret) = product(&t, &[DS], &[Permission::Read]).await;

    // Expired: an hour later, with a fresh token.
    t.clock.advance(3600);
    let alice = person_token(&t, "alice");
    let r = credentials(&t, (&id, &secret), &alice, &[]).await;
    assert_refused(&r, 400, "invalid_target", Some("grant_expired"));

    // Revoked: refused once the registry change reaches the server (≤ 2 s).
    assert!(t.app().store.remove_grant(&g.id).await.unwrap());
    let bob = person_token(&t, "bob");
    let deadline = Instant::now() + Duration::from_secs(3);
    let (r, calls_before) = loop {
        let before = moto.recorded_action("AssumeRole").await.len();
        let r = credentials(&t, (&id, &secret), &bob, &[]).await;
        if r.status != 200 || Instant::now() >= deadline {
            break (r, before);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_refused(&r, 400, "invalid_target", Some("no_grant"));
    assert_eq!(
        moto.recorded_action("AssumeRole").await.len(),
        calls_before,
        "the refusal made no STS call"
    );
    // Calls made before the revocation reached the cache may have reached
    // STS; none after. Those are bob's, never alice's.
    for s in moto.recorded_action("AssumeRole").await {
        assert_eq!(s.field("RoleSessionName").as_deref(), Some("bob"));
    }
}

#[tokio::test]
async fn a_revoked_grant_refuses_without_any_sts_call() {
    let moto = Moto::start().await;
    let t = start_at(&moto.url, "sts_timeout = \"20s\"").await;
    let role = moto.create_role("sales-reader").await;
    dataset(&t, sales_orders(DS, &role, &["analytics"])).await;
    let g = user_grant(&t, DS, "alice", Permission::Read, &["analytics"], None).await;
    let (id, secret) = product(&t, &[DS], &[Permission::Read]).await;
    // Revoked before the first request: the registry is loaded afresh.
    assert!(t.app().store.remove_grant(&g.id).await.unwrap());
    let alice = person_token(&t, "alice");
    let r = credentials(&t, (&id, &secret), &alice, &[]).await;
    assert_refused(&r, 400, "invalid_target", Some("no_grant"));
    assert!(moto.recorded_action("AssumeRole").await.is_empty());
}

// ---------------------------------------------------------------------------
// 3. User ids AWS would reject.

#[tokio::test]
async fn a_user_id_aws_would_reject_is_made_valid_for_sts_and_kept_exact_in_the_audit() {
    const USER: &str = "alice smith/ä+aws:x";
    let moto = Moto::start().await;
    let t = start_at(&moto.url, "sts_timeout = \"20s\"").await;
    let role = moto.create_role("sales-reader").await;
    dataset(&t, sales_orders(DS, &role, &["analytics"])).await;
    user_grant(&t, DS, USER, Permission::Read, &["analytics"], None).await;
    let (id, secret) = product(&t, &[DS], &[Permission::Read]).await;
    let token = person_token(&t, USER);

    let r = credentials(&t, (&id, &secret), &token, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text);

    let sent = moto.recorded_action("AssumeRole").await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    let name = sent[0].field("RoleSessionName").unwrap();
    let source = sent[0].field("SourceIdentity").unwrap();
    assert!(valid_sts_name(&name), "RoleSessionName {name:?}");
    assert!(valid_sts_name(&source), "SourceIdentity {source:?}");
    assert!(!source.to_ascii_lowercase().starts_with("aws:"), "{source}");
    let user_tag = tags(&sent[0]).get("tessera-user").cloned().unwrap();
    assert!(valid_tag_value(&user_tag), "tessera-user {user_tag:?}");
    for (k, v) in tags(&sent[0]) {
        assert!(valid_tag_value(&v), "tag {k}={v:?}");
    }

    let rec = last_exchange(&t).await;
    assert_eq!(rec.decision, "allow", "{rec:?}");
    assert_eq!(rec.subject.as_deref(), Some(USER), "the exact user id");
    assert_eq!(rec.session_name.as_deref(), Some(name.as_str()));
    assert_eq!(rec.source_identity.as_deref(), Some(source.as_str()));
}

// ---------------------------------------------------------------------------
// 4. STS errors through the token endpoint.

/// Accepts connections and never answers.
async fn silent() -> (String, Arc<StdMutex<Vec<tokio::net::TcpStream>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let held = Arc::new(StdMutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            keep.lock().unwrap().push(conn);
        }
    });
    (url, held)
}

/// Answers every request with `status` and `body`, as STS would an error.
async fn canned(status: u16, body: String) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    let n = conn.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                while buf.len() < head_end + len {
                    let n = conn.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let response = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: text/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(response.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    url
}

/// A Tessera on `endpoint` with sales.orders, alice's grant and a product.
async fn ready_at(endpoint: &str, aws_lines: &str) -> (TestApp, (String, String), String) {
    let t = start_at(endpoint, aws_lines).await;
    let role = format!("arn:aws:iam::{ACCOUNT}:role/sales-reader");
    dataset(&t, sales_orders(DS, &role, &["analytics"])).await;
    user_grant(&t, DS, "alice", Permission::Read, &["analytics"], None).await;
    let prod = product(&t, &[DS], &[Permission::Read]).await;
    let alice = person_token(&t, "alice");
    (t, prod, alice)
}

#[tokio::test]
async fn a_silent_sts_is_503_temporarily_unavailable_with_retry_after_and_audited() {
    let (url, held) = silent().await;
    let (t, (id, secret), alice) = ready_at(&url, "sts_timeout = \"1s\"").await;
    let started = Instant::now();
    let r = credentials(&t, (&id, &secret), &alice, &[]).await;
    let took = started.elapsed();
    assert_refused(&r, 503, "temporarily_unavailable", Some("sts_unavailable"));
    let after: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("Retry-After in seconds");
    assert!((1..=8).contains(&after), "Retry-After {after}");
    assert!(
        took < Duration::from_secs(8),
        "bounded by sts_timeout: {took:?}"
    );
    assert!(!held.lock().unwrap().is_empty(), "STS was called");

    let rec = last_exchange(&t).await;
    assert_eq!(rec.decision, "deny", "{rec:?}");
    assert!(rec.reason.contains("sts_unavailable"), "{}", rec.reason);
    assert_eq!(rec.dataset.as_deref(), Some(DS));
    assert_eq!(rec.subject.as_deref(), Some("alice"));
    assert!(rec.access_key_id.is_none());
}

#[tokio::test]
async fn sts_access_denied_is_403_invalid_target_sts_denied_and_audited() {
    let body = "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>not allowed to assume</Message></Error><RequestId>c0ffee</RequestId></ErrorResponse>".to_string();
    let url = canned(403, body).await;
    let (t, (id, secret), alice) = ready_at(&url, "sts_timeout = \"20s\"").await;
    let r = credentials(&t, (&id, &secret), &alice, &[]).await;
    assert_refused(&r, 403, "invalid_target", Some("sts_denied"));
    // AWS's own words (accounts, roles, policies) stay out of the answer...
    assert!(!r.text.contains("not allowed to assume"), "{}", r.text);
    let rec = last_exchange(&t).await;
    assert_eq!(rec.decision, "deny", "{rec:?}");
    assert!(rec.reason.contains("sts_denied"), "{}", rec.reason);
    // ...and go to the audit record.
    assert!(
        rec.reason.contains("not allowed to assume"),
        "{}",
        rec.reason
    );
    assert_eq!(
        rec.role_arn.as_deref(),
        Some(format!("arn:aws:iam::{ACCOUNT}:role/sales-reader").as_str())
    );
    assert!(rec.access_key_id.is_none());
}

#[tokio::test]
async fn sts_throttling_is_503_sts_throttled() {
    let body = "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error><RequestId>c0ffee</RequestId></ErrorResponse>".to_string();
    let url = canned(400, body).await;
    let (t, (id, secret), alice) = ready_at(&url, "sts_timeout = \"20s\"").await;
    let r = credentials(&t, (&id, &secret), &alice, &[]).await;
    assert_refused(&r, 503, "temporarily_unavailable", Some("sts_throttled"));
    assert_eq!(r.header("retry-after"), Some("5"));
}

// ---------------------------------------------------------------------------
// 5. Reuse of still-fresh credentials.

#[tokio::test]
async fn identical_exchanges_reuse_credentials_and_any_difference_gets_new_ones() {
    let moto = Moto::start().await;
    let t = start_at(&moto.url, "sts_timeout = \"20s\"").await;
    let role = moto.create_role("sales-reader").await;
    dataset(&t, sales_orders(DS, &role, &["analytics", "billing"])).await;
    user_grant(
        &t,
        DS,
        "alice",
        Permission::Read,
        &["analytics", "billing"],
        None,
    )
    .await;
    user_grant(&t, DS, "bob", Permission::Read, &["analytics"], None).await;
    let (id, secret) = product(&t, &[DS], &[Permission::Read]).await;
    let (id2, secret2) = product(&t, &[DS], &[Permission::Read]).await;
    let alice = person_token(&t, "alice");
    let bob = person_token(&t, "bob");
    let key = |r: &Reply| {
        assert_eq!(r.status, 200, "{}", r.text);
        r.body["access_key_id"].as_str().unwrap().to_string()
    };

    let first = key(&credentials(&t, (&id, &secret), &alice, &[]).await);
    let again = credentials(&t, (&id, &secret), &alice, &[]).await;
    assert_eq!(key(&again), first, "identical binding: same credentials");
    assert_eq!(moto.recorded_action("AssumeRole").await.len(), 1);
    let rec = last_exchange(&t).await;
    assert!(
        rec.reason.starts_with("aws_credentials reused via "),
        "{}",
        rec.reason
    );
    assert_eq!(rec.access_key_id.as_deref(), Some(first.as_str()));

    let billing = key(&credentials(&t, (&id, &secret), &alice, &[("purpose", "billing")]).await);
    assert_ne!(billing, first, "another purpose");
    assert_eq!(moto.recorded_action("AssumeRole").await.len(), 2);

    let for_bob = key(&credentials(&t, (&id, &secret), &bob, &[]).await);
    assert_ne!(for_bob, first, "another user");
    assert_eq!(moto.recorded_action("AssumeRole").await.len(), 3);

    let other_client = key(&credentials(&t, (&id2, &secret2), &alice, &[]).await);
    assert_ne!(other_client, first, "another client");
    assert_eq!(moto.recorded_action("AssumeRole").await.len(), 4);

    // A fresh token for the same person: still the same binding.
    let alice2 = person_token(&t, "alice");
    assert_eq!(
        key(&credentials(&t, (&id, &secret), &alice2, &[]).await),
        first
    );
    assert_eq!(moto.recorded_action("AssumeRole").await.len(), 4);
}

#[tokio::test]
async fn with_no_reuse_margin_every_exchange_calls_sts() {
    let moto = Moto::start().await;
    let t = start_at(
        &moto.url,
        "sts_timeout = \"20s\"\ncredential_reuse_margin = \"0s\"",
    )
    .await;
    let role = moto.create_role("sales-reader").await;
    dataset(&t, sales_orders(DS, &role, &["analytics"])).await;
    user_grant(&t, DS, "alice", Permission::Read, &["analytics"], None).await;
    let (id, secret) = product(&t, &[DS], &[Permission::Read]).await;
    let alice = person_token(&t, "alice");
    let mut keys = Vec::new();
    for _ in 0..3 {
        let r = credentials(&t, (&id, &secret), &alice, &[]).await;
        assert_eq!(r.status, 200, "{}", r.text);
        keys.push(r.body["access_key_id"].as_str().unwrap().to_string());
    }
    assert_eq!(moto.recorded_action("AssumeRole").await.len(), 3);
    keys.dedup();
    assert_eq!(keys.len(), 3, "new credentials each time: {keys:?}");
    let rec = last_exchange(&t).await;
    assert!(
        rec.reason.starts_with("aws_credentials issued via "),
        "{}",
        rec.reason
    );
}

#[tokio::test]
async fn reused_credentials_are_not_handed_out_within_the_margin_of_their_expiry() {
    let moto = Moto::start().await;
    let t = start_at(
        &moto.url,
        "sts_timeout = \"20s\"\ncredential_reuse_margin = \"5m\"",
    )
    .await;
    let role = moto.create_role("sales-reader").await;
    dataset(&t, sales_orders(DS, &role, &["analytics"])).await;
    user_grant(&t, DS, "alice", Permission::Read, &["analytics"], None).await;
    let (id, secret) = product(&t, &[DS], &[Permission::Read]).await;
    let first = credentials(&t, (&id, &secret), &person_token(&t, "alice"), &[]).await;
    assert_eq!(first.status, 200, "{}", first.text);
    // 56 minutes later, the hour-long credentials have 4 minutes left.
    t.clock.advance(56 * 60);
    let later = credentials(&t, (&id, &secret), &person_token(&t, "alice"), &[]).await;
    assert_eq!(later.status, 200, "{}", later.text);
    assert_ne!(later.body["access_key_id"], first.body["access_key_id"]);
    assert_eq!(moto.recorded_action("AssumeRole").await.len(), 2);
}

// ---------------------------------------------------------------------------
// 6. `tessera aws credential-process` against a spawned server.

#[tokio::test]
async fn credential_process_prints_aws_credential_process_json_from_a_spawned_server() {
    let moto = Moto::start().await;
    aws_env();
    let idp = crate::idp::TestIdp::start().await;
    let role = moto.create_role("sales-reader").await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tessera.toml");
    std::fs::write(
        &config,
        format!(
            "[aws]\nendpoint_url = {:?}\nregion = \"us-east-1\"\nsts_timeout = \"20s\"\n{}",
            moto.url,
            idp.config("corp", "human", "")
        ),
    )
    .unwrap();
    let env = BinEnv::fresh(dir.path())
        .set("TESSERA_CONFIG", &config.display().to_string())
        .set("AWS_ACCESS_KEY_ID", "testing")
        .set("AWS_SECRET_ACCESS_KEY", "testing")
        .set("AWS_EC2_METADATA_DISABLED", "true");

    // The operator registers the dataset, alice's grant and the product.
    env.run_json(&[
        "dataset",
        "create",
        DS,
        "--tenant",
        "acme",
        "--role-arn",
        &role,
        "--glue-database",
        "sales",
        "--glue-table",
        "orders",
        "--s3-prefix",
        PREFIX,
        "--permission",
        "read",
        "--purpose",
        "analytics",
    ])
    .await;
    env.run_json(&[
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
    let client_id = client["client_id"].as_str().unwrap().to_string();
    let client_secret = client["client_secret"].as_str().unwrap().to_string();
    env.run_json(&[
        "delegation",
        "add",
        "--client",
        &client_id,
        "--dataset",
        DS,
        "--permission",
        "read",
    ])
    .await;

    let server = env.serve().await;
    let token_file = dir.path().join("alice.jwt");
    // Two hours, so the credentials' hour is not capped by the token's expiry.
    std::fs::write(
        &token_file,
        idp.id_token("alice", serde_json::json!({"exp": now() + 7200})),
    )
    .unwrap();
    let out = env
        .clone()
        .set("TESSERA_CLIENT_SECRET", &client_secret)
        .run(&[
            "aws",
            "credential-process",
            "--dataset",
            DS,
            "--purpose",
            "analytics",
            "--token-file",
            &token_file.display().to_string(),
            "--token-type",
            "id_token",
            "--url",
            &server.base,
            "--client-id",
            &client_id,
        ])
        .await;
    let v = out.json();
    assert_eq!(v["Version"], 1, "{v}");
    let key = v["AccessKeyId"].as_str().unwrap();
    assert!(key.starts_with("ASIA"), "{v}");
    assert!(
        v["SecretAccessKey"].as_str().is_some_and(|s| !s.is_empty()),
        "{v}"
    );
    assert!(
        v["SessionToken"].as_str().is_some_and(|s| !s.is_empty()),
        "{v}"
    );
    let exp = humantime::parse_rfc3339(v["Expiration"].as_str().unwrap())
        .expect("Expiration is RFC 3339")
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((exp - (now() + 3600)).abs() < 300, "Expiration {exp}");
    let secret_key = v["SecretAccessKey"].as_str().unwrap();
    assert!(!out.stderr.contains(secret_key), "no secret on stderr");

    let sent = moto.recorded_action("AssumeRole").await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].field("RoleArn").as_deref(), Some(role.as_str()));
    assert_eq!(sent[0].field("SourceIdentity").as_deref(), Some("alice"));
    assert_eq!(tags(&sent[0]).get("tessera-service"), Some(&client_id));

    // Refused: the CLI fails, prints no credentials, and says why.
    let out = env
        .clone()
        .set("TESSERA_CLIENT_SECRET", &client_secret)
        .run(&[
            "aws",
            "credential-process",
            "--dataset",
            DS,
            "--purpose",
            "marketing",
            "--token-file",
            &token_file.display().to_string(),
            "--token-type",
            "id_token",
            "--url",
            &server.base,
            "--client-id",
            &client_id,
        ])
        .await;
    assert!(out.code.is_some_and(|c| c != 0), "{out:?}");
    assert!(!out.stdout.contains("AccessKeyId"), "{out:?}");
    assert!(
        out.stderr.contains("purpose_not_allowed") || out.stderr.contains("invalid_target"),
        "{}",
        out.stderr
    );
    assert_eq!(moto.recorded_action("AssumeRole").await.len(), 1);
}

#[tokio::test]
async fn reused_credentials_never_outlive_a_shorter_asked_lifetime() {
    let moto = Moto::start().await;
    let t = start_at(&moto.url, "sts_timeout = \"20s\"").await;
    let role = moto.create_role("sales-reader").await;
    dataset(&t, sales_orders(DS, &role, &["analytics"])).await;
    user_grant(&t, DS, "alice", Permission::Read, &["analytics"], None).await;
    let (id, secret) = product(&t, &[DS], &[Permission::Read]).await;
    let alice = person_token(&t, "alice");
    let hour = credentials(&t, (&id, &secret), &alice, &[("expires_in", "3600")]).await;
    assert_eq!(hour.status, 200, "{}", hour.text);
    let short = credentials(&t, (&id, &secret), &alice, &[("expires_in", "900")]).await;
    assert_eq!(short.status, 200, "{}", short.text);
    assert_ne!(
        short.body["access_key_id"], hour.body["access_key_id"],
        "hour-long credentials are not handed to a request for 15 minutes"
    );
    assert!(short.body["expires_in"].as_i64().unwrap() <= 900);
    assert_eq!(moto.recorded_action("AssumeRole").await.len(), 2);
}

/// A person's Tessera token living two hours, so that credential lifetimes
/// are not capped by the subject token's own expiry.
fn person_token(t: &TestApp, sub: &str) -> String {
    let mut claims = t.human_claims(sub, "api", "");
    claims.exp = claims.iat + 7200;
    t.app().issuers.human.mint(&claims).unwrap()
}

#[tokio::test]
async fn credentials_do_not_outlive_the_subject_token_beyond_the_aws_minimum() {
    let moto = Moto::start().await;
    let t = start_at(&moto.url, "credential_reuse_margin = \"0s\"").await;
    let role = moto.create_role("sales-reader").await;
    dataset(&t, sales_orders(DS, &role, &["analytics"])).await;
    user_grant(&t, DS, "alice", Permission::Read, &["analytics"], None).await;
    let (id, secret) = product(&t, &[DS], &[Permission::Read]).await;
    let mut claims = t.human_claims("alice", "api", "");
    claims.exp = claims.iat + 1200;
    let twenty_minutes = t.app().issuers.human.mint(&claims).unwrap();
    let r = credentials(&t, (&id, &secret), &twenty_minutes, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let sent = moto.recorded_action("AssumeRole").await;
    assert_eq!(
        sent.last().unwrap().field("DurationSeconds").as_deref(),
        Some("1200")
    );
    claims.exp = claims.iat + 120;
    let two_minutes = t.app().issuers.human.mint(&claims).unwrap();
    let r = credentials(&t, (&id, &secret), &two_minutes, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let sent = moto.recorded_action("AssumeRole").await;
    assert_eq!(
        sent.last().unwrap().field("DurationSeconds").as_deref(),
        Some("900")
    );
}

#[tokio::test]
async fn credentials_never_outlive_the_grant_or_delegation_that_allowed_them() {
    let moto = Moto::start().await;
    let t = start_at(&moto.url, "credential_reuse_margin = \"0s\"").await;
    let role = moto.create_role("sales-reader").await;
    dataset(&t, sales_orders(DS, &role, &["analytics"])).await;
    let now = t.clock.now();
    user_grant(
        &t,
        DS,
        "alice",
        Permission::Read,
        &["analytics"],
        Some(now + 1500),
    )
    .await;
    user_grant(
        &t,
        DS,
        "bob",
        Permission::Read,
        &["analytics"],
        Some(now + 600),
    )
    .await;
    user_grant(&t, DS, "carol", Permission::Read, &["analytics"], None).await;
    let (id, secret) = product(&t, &[DS], &[Permission::Read]).await;
    let duration = |sent: &[Recorded]| sent.last().unwrap().field("DurationSeconds");

    // The grant ends in 25 minutes: so do the credentials.
    let r = credentials(&t, (&id, &secret), &person_token(&t, "alice"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.body["expires_in"].as_i64().unwrap() <= 1500, "{}", r.text);
    assert_eq!(
        duration(&moto.recorded_action("AssumeRole").await).as_deref(),
        Some("1500")
    );

    // Ten minutes left is less than AWS's shortest credentials: refused.
    let r = credentials(&t, (&id, &secret), &person_token(&t, "bob"), &[]).await;
    assert_refused(&r, 400, "invalid_target", Some("grant_ends_too_soon"));
    assert_eq!(moto.recorded_action("AssumeRole").await.len(), 1);

    // A delegation ending sooner than the grant bounds them too.
    let app = t.app();
    let (short, short_secret) = t.client("acme", &["internal"], &[]).await;
    add_delegation(
        app.store.as_ref(),
        NewDelegation {
            client_id: short.client_id.clone(),
            datasets: vec![DS.into()],
            permissions: vec![Permission::Read],
            expires_at: Some(now + 1000),
            ..Default::default()
        },
        now,
    )
    .await
    .unwrap();
    let r = credentials(
        &t,
        (&short.client_id, &short_secret),
        &person_token(&t, "carol"),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        duration(&moto.recorded_action("AssumeRole").await).as_deref(),
        Some("1000")
    );
}

#[tokio::test]
async fn users_whose_ids_a_lossy_mapping_would_merge_get_distinct_tags() {
    let moto = Moto::start().await;
    let t = start_at(&moto.url, "credential_reuse_margin = \"0s\"").await;
    let role = moto.create_role("sales-reader").await;
    dataset(&t, sales_orders(DS, &role, &["analytics"])).await;
    let (id, secret) = product(&t, &[DS], &[Permission::Read]).await;
    let users = ["a*b", "a_b", "a?b"];
    for u in users {
        user_grant(&t, DS, u, Permission::Read, &["analytics"], None).await;
    }
    for u in users {
        let r = credentials(&t, (&id, &secret), &person_token(&t, u), &[]).await;
        assert_eq!(r.status, 200, "{u}: {}", r.text);
    }
    let sent = moto.recorded_action("AssumeRole").await;
    let user_tags: Vec<String> = sent
        .iter()
        .map(|s| tags(s).get("tessera-user").cloned().unwrap())
        .collect();
    assert_eq!(user_tags.len(), 3);
    assert_eq!(user_tags[1], "a_b", "a valid id is kept as it is");
    let distinct: std::collections::BTreeSet<_> = user_tags.iter().collect();
    assert_eq!(distinct.len(), 3, "{user_tags:?}");
    let names: std::collections::BTreeSet<_> = sent
        .iter()
        .map(|s| s.field("SourceIdentity").unwrap())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    for v in &user_tags {
        assert!(valid_tag_value(v), "{v:?}");
    }
}

#[tokio::test]
async fn another_tenant_s_dataset_cannot_be_told_from_a_missing_one() {
    let moto = Moto::start().await;
    let t = start_at(&moto.url, "sts_timeout = \"20s\"").await;
    let role = moto.create_role("sales-reader").await;
    // globex's dataset, with purposes an acme user might probe for.
    let mut theirs = sales_orders("globex.orders", &role, &["audit"]);
    theirs.tenant = "globex".into();
    dataset(&t, theirs).await;
    let (id, secret) = product(&t, &["globex.orders"], &[Permission::Read]).await;
    let alice = person_token(&t, "alice");
    let probe = |resource: &'static str, purpose: &'static str, scope: &'static str| {
        let (t, id, secret, alice) = (&t, id.clone(), secret.clone(), alice.clone());
        async move {
            credentials(
                t,
                (&id, &secret),
                &alice,
                &[
                    ("resource", resource),
                    ("purpose", purpose),
                    ("scope", scope),
                ],
            )
            .await
        }
    };
    let missing = probe("urn:tessera:dataset:nope.orders", "analytics", "read").await;
    for (purpose, scope) in [("audit", "read"), ("analytics", "read"), ("", "write")] {
        let r = probe("urn:tessera:dataset:globex.orders", purpose, scope).await;
        assert_eq!(
            (
                r.status,
                &r.body["error"],
                &r.body["reason"],
                &r.body["error_description"]
            ),
            (
                missing.status,
                &missing.body["error"],
                &missing.body["reason"],
                &missing.body["error_description"]
            ),
            "purpose {purpose:?} scope {scope}: {}",
            r.text
        );
        let rec = last_exchange(&t).await;
        assert!(rec.reason.contains("(other_tenant)"), "{}", rec.reason);
    }
    assert!(moto.recorded_action("AssumeRole").await.is_empty());
}

#[tokio::test]
async fn a_session_policy_aws_would_refuse_as_too_large_is_refused_before_sts() {
    let moto = Moto::start().await;
    let t = start_at(&moto.url, "sts_timeout = \"20s\"").await;
    let role = moto.create_role("sales-reader").await;
    let mut big = sales_orders(DS, &role, &["analytics"]);
    big.s3_prefix = format!("s3://{BUCKET}/{}/", "p".repeat(1900));
    dataset(&t, big).await;
    user_grant(&t, DS, "alice", Permission::Read, &["analytics"], None).await;
    let (id, secret) = product(&t, &[DS], &[Permission::Read]).await;
    let r = credentials(&t, (&id, &secret), &person_token(&t, "alice"), &[]).await;
    assert_refused(&r, 403, "invalid_target", Some("session_policy_too_large"));
    // The caller gets a fixed description; the detail is in the audit.
    assert!(!r.text.contains("pppp"), "{}", r.text);
    let rec = last_exchange(&t).await;
    assert_eq!(rec.decision, "deny");
    assert!(rec.reason.contains("2048"), "{}", rec.reason);
    assert!(moto.recorded_action("AssumeRole").await.is_empty());
}

#[tokio::test]
async fn the_same_sub_from_two_idps_is_two_people_for_grants_and_credentials() {
    use crate::idp::TestIdp;
    let moto = Moto::start().await;
    aws_env();
    let corp = TestIdp::start().await;
    let partner = TestIdp::start().await;
    let t = TestApp::builder()
        .config(&format!(
            "[aws]\nendpoint_url = {:?}\nregion = \"us-east-1\"\n",
            moto.url
        ))
        .config(&corp.config("corp", "human", "subject_prefix = \"corp:\""))
        .config(&partner.config("partner", "human", "subject_prefix = \"partner:\""))
        .start()
        .await;
    let role = moto.create_role("sales-reader").await;
    dataset(&t, sales_orders(DS, &role, &["analytics"])).await;
    user_grant(&t, DS, "corp:alice", Permission::Read, &["analytics"], None).await;
    let (id, secret) = product(&t, &[DS], &[Permission::Read]).await;
    let send = |token: String| {
        let (t, id, secret) = (&t, id.clone(), secret.clone());
        async move {
            // The first use of an IdP fetches its keys; wait for them.
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let r = credentials(t, (&id, &secret), &token, &[]).await;
                if r.status != 503 || Instant::now() > deadline {
                    return r;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let ours = send(corp.access_token("alice", "", serde_json::json!({}))).await;
    assert_eq!(ours.status, 200, "{}", ours.text);
    // The partner's "alice" is someone else: no grant, and the reuse cache
    // (on by default) never hands her corp:alice's credentials.
    let theirs = send(partner.access_token("alice", "", serde_json::json!({}))).await;
    assert_refused(&theirs, 400, "invalid_target", Some("no_grant"));
    let sent = moto.recorded_action("AssumeRole").await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(
        tags(&sent[0]).get("tessera-user").map(String::as_str),
        Some("corp:alice")
    );
}
