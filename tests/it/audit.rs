//! The audit log as an auditor relies on it: every record chained by
//! SHA-256 in one gap-free sequence, even under concurrent load (group
//! commit); append-only in the database; any change or deletion made
//! behind Tessera's back named by `verify_chain`; and no secret, token or
//! assertion ever written into it.

use serde_json::Value;
use sqlx::Executor;
use tessera::audit::{verify_chain, StoredAudit, GENESIS};

use crate::harness::*;
use crate::private_key_jwt::{jwk_set, JWT_BEARER};

/// A direct connection to the test's store, bypassing Tessera: what an
/// operator (or intruder) with database access can do.
pub(crate) enum RawDb {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

impl RawDb {
    pub(crate) async fn open(t: &TestApp) -> Self {
        let store = &t.app().config.store;
        if store.url.starts_with("sqlite:") {
            let pool = sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(1)
                .connect(&store.url)
                .await
                .unwrap();
            RawDb::Sqlite(pool)
        } else {
            let schema = store
                .schema
                .clone()
                .expect("each Postgres test runs in its own schema");
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .after_connect(move |conn, _| {
                    let set = format!("SET search_path TO \"{schema}\"");
                    Box::pin(async move { conn.execute(set.as_str()).await.map(|_| ()) })
                })
                .connect(&store.url)
                .await
                .unwrap();
            RawDb::Postgres(pool)
        }
    }

    /// Runs one statement; returns the rows affected.
    pub(crate) async fn exec(&self, sql: &str) -> Result<u64, sqlx::Error> {
        match self {
            RawDb::Sqlite(p) => sqlx::query(sql).execute(p).await.map(|r| r.rows_affected()),
            RawDb::Postgres(p) => sqlx::query(sql).execute(p).await.map(|r| r.rows_affected()),
        }
    }

    /// Drops the trigger that refuses UPDATE on `audit_log`.
    async fn drop_update_guard(&self) {
        let sql = match self {
            RawDb::Sqlite(_) => "DROP TRIGGER audit_log_no_update",
            RawDb::Postgres(_) => "DROP TRIGGER IF EXISTS audit_log_no_change ON audit_log",
        };
        self.exec(sql).await.unwrap();
    }

    /// Drops the trigger that refuses DELETE on `audit_log`.
    async fn drop_delete_guard(&self) {
        let sql = match self {
            RawDb::Sqlite(_) => "DROP TRIGGER audit_log_no_delete",
            RawDb::Postgres(_) => "DROP TRIGGER IF EXISTS audit_log_no_change ON audit_log",
        };
        self.exec(sql).await.unwrap();
    }
}

/// Issuances, refusals, an introspection, an ext_authz denial and a
/// revocation: one of each kind of record.
async fn some_traffic(t: &TestApp) {
    let (c, secret) = t.client("acme", &["internal"], &["a"]).await;
    let auth = Some((c.client_id.as_str(), secret.as_str()));
    let token = t.service_token(&c, &secret, &[]).await;
    t.service_token(&c, &secret, &[("scope", "a")]).await;
    let r = t
        .post_form(
            "/oauth2/token",
            Some((&c.client_id, "wrong")),
            &[("grant_type", "client_credentials")],
        )
        .await;
    assert_eq!(r.status, 401);
    let r = t
        .post_form(
            "/oauth2/token",
            auth,
            &[("grant_type", "client_credentials"), ("scope", "admin")],
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        t.post_form("/oauth2/introspect", auth, &[("token", &token)])
            .await
            .body["active"],
        true
    );
    assert_eq!(t.authz("GET", "/internal/x", None).await.status, 401);
    assert_eq!(
        t.post_form("/oauth2/revoke", auth, &[("token", &token)])
            .await
            .status,
        200
    );
}

async fn chain_report(t: &TestApp) -> tessera::audit::ChainReport {
    verify_chain(t.app().store.as_ref()).await.unwrap()
}

fn sha256_hex(parts: &[&[u8]]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    hex::encode(ctx.finish().as_ref())
}

/// Recomputes one link as documented: `SHA-256(prev_hash "\n" seq "\n" JSON of the record)`.
fn link_hash(a: &StoredAudit) -> String {
    sha256_hex(&[
        a.prev_hash.as_bytes(),
        b"\n",
        a.seq.to_string().as_bytes(),
        b"\n",
        &serde_json::to_vec(&a.record).unwrap(),
    ])
}

#[tokio::test]
async fn chain_verifies_after_mixed_traffic_and_counts_every_record() {
    let t = TestApp::start().await;
    some_traffic(&t).await;
    let audit = t.audit().await;
    let events: std::collections::HashSet<&str> =
        audit.iter().map(|a| a.record.event.as_str()).collect();
    for e in [
        "token_issuance",
        "client_authentication",
        "introspection",
        "ext_authz",
        "revocation",
    ] {
        assert!(events.contains(e), "{e} recorded");
    }
    let report = chain_report(&t).await;
    assert_eq!(report.first_broken, None, "{report:?}");
    assert_eq!(report.records, audit.len() as u64);
    assert_eq!(
        t.app().store.audit_head().await.unwrap(),
        audit.len() as i64
    );

    // The chain as an outside verifier would walk it.
    let mut prev = GENESIS.to_string();
    for (i, a) in audit.iter().enumerate() {
        assert_eq!(a.seq, i as i64 + 1, "gap-free sequence");
        assert_eq!(a.prev_hash, prev, "seq {}", a.seq);
        assert_eq!(link_hash(a), a.hash, "seq {}", a.seq);
        prev = a.hash.clone();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_token_requests_are_each_audited_once_in_one_unbroken_chain() {
    let t = TestApp::start().await;
    let (c, secret) = t.client("acme", &["internal"], &[]).await;
    let requests = (0..200).map(|_| {
        t.post_form(
            "/oauth2/token",
            Some((&c.client_id, &secret)),
            &[("grant_type", "client_credentials")],
        )
    });
    let replies = futures_util::future::join_all(requests).await;
    let mut jtis = std::collections::HashSet::new();
    for r in &replies {
        assert_eq!(r.status, 200, "{}", r.text);
        jtis.insert(
            claims_of(r.body["access_token"].as_str().unwrap())["jti"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(jtis.len(), 200);

    let audit = t.audit().await;
    assert_eq!(audit.len(), 200, "one record per request, no more");
    let seqs: Vec<i64> = audit.iter().map(|a| a.seq).collect();
    assert_eq!(
        seqs,
        (1..=200).collect::<Vec<i64>>(),
        "distinct, consecutive sequence numbers"
    );
    let audited: std::collections::HashSet<String> = audit
        .iter()
        .inspect(|a| {
            assert_eq!(
                (a.record.event.as_str(), a.record.decision.as_str()),
                ("token_issuance", "allow")
            )
        })
        .map(|a| a.record.jti.clone().unwrap())
        .collect();
    assert_eq!(
        audited, jtis,
        "every issued token is audited (before it was handed out)"
    );
    let report = chain_report(&t).await;
    assert_eq!((report.records, report.first_broken), (200, None));
}

#[tokio::test]
async fn audit_log_refuses_update_and_delete() {
    let t = TestApp::start().await;
    some_traffic(&t).await;
    let before = t.audit().await;
    let db = RawDb::open(&t).await;
    let update = db
        .exec("UPDATE audit_log SET reason = 'nothing happened' WHERE seq = 1")
        .await;
    assert!(update.is_err(), "UPDATE must fail: {update:?}");
    let update_all = db.exec("UPDATE audit_log SET decision = 'allow'").await;
    assert!(update_all.is_err(), "UPDATE must fail: {update_all:?}");
    let delete = db.exec("DELETE FROM audit_log WHERE seq = 1").await;
    assert!(delete.is_err(), "DELETE must fail: {delete:?}");
    let delete_all = db.exec("DELETE FROM audit_log").await;
    assert!(delete_all.is_err(), "DELETE must fail: {delete_all:?}");

    assert_eq!(t.audit().await, before, "the log is unchanged");
    assert_eq!(chain_report(&t).await.first_broken, None);
    // And Tessera keeps appending after the refused attempts.
    t.authz("GET", "/internal/x", None).await;
    assert_eq!(chain_report(&t).await.records, before.len() as u64 + 1);
}

#[tokio::test]
async fn truncating_the_audit_log_is_refused() {
    let t = TestApp::start().await;
    some_traffic(&t).await;
    let db = RawDb::open(&t).await;
    // SQLite has no TRUNCATE; its truncate optimization of a bare DELETE is
    // off when the table has triggers.
    let sql = match db {
        RawDb::Sqlite(_) => "DELETE FROM audit_log",
        RawDb::Postgres(_) => "TRUNCATE audit_log",
    };
    let result = db.exec(sql).await;
    assert!(result.is_err(), "{sql} must fail: {result:?}");
    assert_eq!(chain_report(&t).await.first_broken, None);
}

#[tokio::test]
async fn changed_record_is_named_as_the_first_broken_link() {
    let t = TestApp::start().await;
    some_traffic(&t).await;
    let audit = t.audit().await;
    let victim = audit
        .iter()
        .find(|a| a.record.decision == "deny")
        .expect("a denial to hide")
        .clone();
    let db = RawDb::open(&t).await;
    db.drop_update_guard().await;

    // Turn a denial into an allow.
    let changed = db
        .exec(&format!(
            "UPDATE audit_log SET decision = 'allow', reason = 'ok' WHERE seq = {}",
            victim.seq
        ))
        .await
        .unwrap();
    assert_eq!(changed, 1);
    let report = chain_report(&t).await;
    let broken = report.first_broken.expect("tampering detected");
    assert_eq!(broken.seq, victim.seq, "{broken:?}");
    assert_eq!(
        report.records,
        victim.seq as u64 - 1,
        "records before the break are counted"
    );

    // Recomputing the changed record's hash only moves the break to the next link.
    let mut forged = t
        .audit()
        .await
        .into_iter()
        .find(|a| a.seq == victim.seq)
        .unwrap();
    forged.hash = link_hash(&forged);
    db.exec(&format!(
        "UPDATE audit_log SET hash = '{}' WHERE seq = {}",
        forged.hash, victim.seq
    ))
    .await
    .unwrap();
    let broken = chain_report(&t).await.first_broken.expect("still detected");
    assert_eq!(broken.seq, victim.seq + 1, "{broken:?}");
}

#[tokio::test]
async fn deleted_last_record_is_detected() {
    let t = TestApp::start().await;
    some_traffic(&t).await;
    let head = t.audit().await.last().unwrap().seq;
    let db = RawDb::open(&t).await;
    db.drop_delete_guard().await;
    assert_eq!(
        db.exec(&format!("DELETE FROM audit_log WHERE seq = {head}"))
            .await
            .unwrap(),
        1
    );
    let report = chain_report(&t).await;
    assert_eq!(report.records, head as u64 - 1);
    assert_eq!(report.first_broken.expect("truncation detected").seq, head);
}

#[tokio::test]
async fn deleted_record_in_the_middle_is_detected() {
    let t = TestApp::start().await;
    some_traffic(&t).await;
    let db = RawDb::open(&t).await;
    db.drop_delete_guard().await;
    assert_eq!(
        db.exec("DELETE FROM audit_log WHERE seq = 3")
            .await
            .unwrap(),
        1
    );
    let report = chain_report(&t).await;
    assert_eq!(report.first_broken.expect("gap detected").seq, 3);
    assert_eq!(report.records, 2);
}

#[tokio::test]
async fn emptied_audit_log_is_detected() {
    let t = TestApp::start().await;
    some_traffic(&t).await;
    let db = RawDb::open(&t).await;
    db.drop_delete_guard().await;
    assert!(db.exec("DELETE FROM audit_log").await.unwrap() > 0);
    let report = chain_report(&t).await;
    assert_eq!(report.records, 0);
    assert_eq!(
        report.first_broken.expect("missing records detected").seq,
        1
    );
}

#[tokio::test]
async fn a_record_the_store_cannot_hold_fails_alone_not_its_whole_batch() {
    use tessera::audit::{AuditRecord, Decision, Event};
    let t = TestApp::start().await;
    let good = AuditRecord::new(
        t.clock.now_millis(),
        Event::ExtAuthz,
        Decision::Deny,
        "missing_credential (rule internal)",
    );
    let mut poisoned = good.clone();
    // Postgres TEXT cannot hold NUL; a gRPC CheckRequest can carry one.
    poisoned.route = Some("GET /internal/x\u{0}".into());
    // On this single-threaded runtime every record is queued before the
    // writer runs, so all 21 land in one batch.
    let records = (0..21).map(|i| {
        if i == 10 {
            poisoned.clone()
        } else {
            good.clone()
        }
    });
    let results = futures_util::future::join_all(records.map(|r| t.app().audit.record(r))).await;
    let committed: Vec<bool> = results.iter().map(Result::is_ok).collect();
    assert!(
        committed.iter().enumerate().all(|(i, ok)| *ok || i == 10),
        "innocent records failed with the poisoned one: {committed:?}"
    );
    let report = chain_report(&t).await;
    assert_eq!(report.first_broken, None);
    assert!(report.records >= 20, "{report:?}");
}

/// Every string anywhere in `v`.
fn strings<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::String(s) => out.push(s),
        Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
        Value::Object(o) => o.values().for_each(|v| strings(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn audit_never_contains_secrets_tokens_or_assertions() {
    let t = TestApp::start().await;
    let (c, secret) = t.client("acme", &["internal"], &["a"]).await;
    let basic = Some((c.client_id.as_str(), secret.as_str()));
    let wrong_secret = format!("wrong-{}", uuid::Uuid::new_v4().simple());
    let mut tokens = Vec::new();

    // Secrets in the Basic header and in the body; a wrong one too.
    tokens.push(t.service_token(&c, &secret, &[]).await);
    let r = t
        .post_form(
            "/oauth2/token",
            None,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", &c.client_id),
                ("client_secret", &secret),
            ],
        )
        .await;
    tokens.push(r.body["access_token"].as_str().unwrap().to_string());
    t.post_form(
        "/oauth2/token",
        Some((&c.client_id, &wrong_secret)),
        &[("grant_type", "client_credentials")],
    )
    .await;
    t.post_form(
        "/oauth2/token",
        None,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", &c.client_id),
            ("client_secret", &wrong_secret),
        ],
    )
    .await;

    // private_key_jwt: an accepted assertion and its replay.
    let key = ClientKey::es256(Some("k1"));
    let (kc, _) = t
        .register(tessera::registry::NewClient {
            name: "pk".into(),
            tenant: "acme".into(),
            audiences: vec!["internal".into()],
            jwks: Some(jwk_set(&[&key])),
            ..Default::default()
        })
        .await;
    let now = t.clock.now();
    let assertion = key.sign(&serde_json::json!({
        "iss": kc.client_id, "sub": kc.client_id, "aud": t.base, "exp": now + 60, "jti": uuid::Uuid::new_v4().to_string()
    }));
    for _ in 0..2 {
        let r = t
            .post_form(
                "/oauth2/token",
                None,
                &[
                    ("grant_type", "client_credentials"),
                    ("client_assertion_type", JWT_BEARER),
                    ("client_assertion", &assertion),
                ],
            )
            .await;
        if let Some(tok) = r.body["access_token"].as_str() {
            tokens.push(tok.to_string());
        }
    }
    assert_eq!(tokens.len(), 3);

    // Tokens presented everywhere a token goes, valid and not.
    let human = t.human_token("alice", "api", "");
    tokens.push(human.clone());
    for tok in &tokens {
        t.post_form("/oauth2/introspect", basic, &[("token", tok)])
            .await;
        t.authz("GET", "/internal/x", Some(tok)).await;
        t.authz("GET", "/api/x", Some(tok)).await;
        t.authz("GET", "/elsewhere", Some(tok)).await;
    }
    // The first token's header and claims under the second token's signature.
    let (signed, _) = tokens[0].rsplit_once('.').unwrap();
    let tampered = format!("{signed}.{}", tokens[1].rsplit('.').next().unwrap());
    t.authz("GET", "/internal/x", Some(&tampered)).await;
    t.post_form("/oauth2/introspect", basic, &[("token", &tampered)])
        .await;
    t.post_form("/oauth2/revoke", basic, &[("token", &tokens[0])])
        .await;
    t.authz("GET", "/internal/x", Some(&tokens[0])).await;

    let mut forbidden: Vec<(&str, String)> = vec![
        ("client secret", secret.clone()),
        ("wrong secret", wrong_secret.clone()),
    ];
    for tok in tokens.iter().chain([&tampered, &assertion]) {
        forbidden.push(("token", tok.clone()));
        // Nor a recognizable part: the signature alone.
        forbidden.push(("signature", tok.rsplit('.').next().unwrap().to_string()));
    }
    let audit = t.audit().await;
    assert!(
        audit.len() > 20,
        "the traffic above was audited: {}",
        audit.len()
    );
    for a in &audit {
        let json = serde_json::to_value(a).unwrap();
        let mut texts = Vec::new();
        strings(&json, &mut texts);
        for text in texts {
            for (what, value) in &forbidden {
                assert!(
                    !text.contains(value.as_str()),
                    "{what} found in audit record {}: {text}",
                    a.seq
                );
            }
        }
    }
    assert_eq!(chain_report(&t).await.first_broken, None);
}
