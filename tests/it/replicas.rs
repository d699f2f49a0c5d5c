//! Two `tessera serve` processes sharing one store and one key folder, as
//! behind a load balancer (one public URL): tokens from either verify on
//! the other, a revocation through one reaches the other within a second,
//! and a client assertion used at one is a replay at the other. Runs on
//! SQLite (two processes on one WAL database) and on Postgres.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::*;

/// The URL both replicas publish (issuer, assertion audience).
const PUBLIC_URL: &str = "http://tessera.test";

struct Replicas {
    _dir: tempfile::TempDir,
    env: BinEnv,
    a: TesseraProcess,
    b: TesseraProcess,
}

/// Starts A, then B (so the key folder and schema are created once).
async fn replicas() -> Replicas {
    let dir = tempfile::tempdir().unwrap();
    let env = BinEnv::fresh(dir.path()).set("TESSERA_SERVER_PUBLIC_URL", PUBLIC_URL);
    let a = env.serve().await;
    let b = env.serve().await;
    Replicas {
        _dir: dir,
        env,
        a,
        b,
    }
}

impl Replicas {
    /// A secret client registered through the CLI on the shared store.
    async fn secret_client(&self) -> (String, String) {
        let c = self
            .env
            .run_json(&[
                "client",
                "create",
                "--name",
                "svc",
                "--tenant",
                "acme",
                "--audience",
                "internal",
                "--scope",
                "orders:read",
            ])
            .await;
        (
            c["client_id"].as_str().unwrap().to_string(),
            c["client_secret"].as_str().unwrap().to_string(),
        )
    }
}

async fn token(p: &TesseraProcess, id: &str, secret: &str) -> String {
    let r = p
        .post_form(
            "/oauth2/token",
            Some((id, secret)),
            &[("grant_type", "client_credentials")],
        )
        .await;
    assert_eq!(r.status, 200, "token at {}: {}", p.base, r.text);
    r.body["access_token"].as_str().unwrap().to_string()
}

async fn introspect(p: &TesseraProcess, id: &str, secret: &str, token: &str) -> Value {
    let r = p
        .post_form(
            "/oauth2/introspect",
            Some((id, secret)),
            &[("token", token)],
        )
        .await;
    assert_eq!(r.status, 200, "introspection at {}: {}", p.base, r.text);
    r.body
}

#[tokio::test]
async fn tokens_from_either_replica_carry_the_same_key_and_are_active_on_the_other() {
    let r = replicas().await;
    let (id, secret) = r.secret_client().await;
    let from_a = token(&r.a, &id, &secret).await;
    let from_b = token(&r.b, &id, &secret).await;
    assert_eq!(
        header_of(&from_a)["kid"],
        header_of(&from_b)["kid"],
        "both replicas sign with the same key"
    );
    assert_eq!(
        claims_of(&from_a)["iss"],
        format!("{PUBLIC_URL}/issuers/service")
    );

    let at_b = introspect(&r.b, &id, &secret, &from_a).await;
    assert_eq!(at_b["active"], true, "{at_b}");
    assert_eq!(at_b["jti"], claims_of(&from_a)["jti"]);
    assert_eq!(at_b["client_id"], id.as_str());
    let at_a = introspect(&r.a, &id, &secret, &from_b).await;
    assert_eq!(at_a["active"], true, "{at_a}");

    let jwks_a = r.a.get("/issuers/service/jwks.json").await.body;
    let jwks_b = r.b.get("/issuers/service/jwks.json").await.body;
    assert_eq!(jwks_a, jwks_b, "both replicas publish the same keys");
}

#[tokio::test]
async fn revoked_token_is_inactive_on_every_replica_within_a_second() {
    let r = replicas().await;
    let (id, secret) = r.secret_client().await;
    let token = token(&r.a, &id, &secret).await;
    assert_eq!(introspect(&r.b, &id, &secret, &token).await["active"], true);
    // A has verified (and cached) the token before the revocation.
    let allowed = r.a.authz("GET", "/internal/hello", Some(&token)).await;
    assert_eq!(allowed.status, 200, "{}", allowed.text);

    let revoked =
        r.b.post_form("/oauth2/revoke", Some((&id, &secret)), &[("token", &token)])
            .await;
    assert_eq!(revoked.status, 200, "{}", revoked.text);
    let revoked_at = Instant::now();
    assert_eq!(
        introspect(&r.b, &id, &secret, &token).await,
        json!({"active": false}),
        "inactive at once where revoked"
    );

    // Poll A every 100 ms for at most one second.
    let seen_after = loop {
        let asked = revoked_at.elapsed();
        let body = introspect(&r.a, &id, &secret, &token).await;
        if body["active"] == false {
            assert_eq!(body, json!({"active": false}));
            break asked;
        }
        assert!(
            asked <= Duration::from_secs(1),
            "replica A still reports the token active {asked:?} after its revocation"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(seen_after <= Duration::from_secs(1), "{seen_after:?}");

    let denied = r.a.authz("GET", "/internal/hello", Some(&token)).await;
    assert_eq!(denied.status, 401, "{}", denied.text);
    assert_eq!(denied.body["reason"], "token_revoked");
    assert_eq!(denied.body["error"], "invalid_token");
}

impl Replicas {
    /// A private_key_jwt client registered through the CLI with `key` as "k1".
    async fn jwt_client(&self, key: &ClientKey) -> String {
        let jwks = self
            .env
            .dir
            .join(format!("jwks-{}.json", uuid::Uuid::new_v4()));
        std::fs::write(&jwks, json!({"keys": [key.jwk.clone()]}).to_string()).unwrap();
        let c = self
            .env
            .run_json(&[
                "client",
                "create",
                "--name",
                "jwt",
                "--tenant",
                "acme",
                "--audience",
                "internal",
                "--jwks",
                &jwks.display().to_string(),
            ])
            .await;
        c["client_id"].as_str().unwrap().to_string()
    }
}

/// A client_credentials request authenticated by `assertion` alone.
async fn token_with_assertion(p: &TesseraProcess, assertion: &str) -> Reply {
    let form = [
        ("grant_type", "client_credentials"),
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ),
        ("client_assertion", assertion),
    ];
    send_request(p.http.post(format!("{}/oauth2/token", p.base)).form(&form)).await
}

#[tokio::test]
async fn a_client_assertion_used_at_one_replica_is_refused_as_a_replay_at_the_other() {
    let r = replicas().await;
    let key = ClientKey::es256(Some("k1"));
    let id = r.jwt_client(&key).await;
    let id = id.as_str();
    let aud = format!("{PUBLIC_URL}/oauth2/token");

    let assertion = key.assertion(id, &aud);
    let first = token_with_assertion(&r.a, &assertion).await;
    assert_eq!(first.status, 200, "fresh assertion at A: {}", first.text);

    let replay = token_with_assertion(&r.b, &assertion).await;
    assert_eq!(
        (replay.status, replay.error()),
        (401, "invalid_client"),
        "{}",
        replay.text
    );
    assert_eq!(
        replay.header("www-authenticate"),
        Some("Basic realm=\"tessera\"")
    );
    let tail = r.env.run_json(&["audit", "tail", "-n", "20"]).await;
    let last_auth = tail
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|a| a["event"] == "client_authentication")
        .expect("failure audited");
    assert_eq!(
        (
            last_auth["reason"].as_str(),
            last_auth["client_id"].as_str()
        ),
        (Some("assertion_replayed"), Some(id))
    );

    // B accepts the client itself: a new assertion works there.
    let fresh = token_with_assertion(&r.b, &key.assertion(id, &aud)).await;
    assert_eq!(fresh.status, 200, "fresh assertion at B: {}", fresh.text);
}

#[tokio::test]
async fn audit_chain_stays_intact_when_both_replicas_write_at_once() {
    let r = replicas().await;
    let (id, secret) = r.secret_client().await;
    // 2 × 25 concurrent token requests: each one audited by its replica.
    let requests = [&r.a, &r.b]
        .into_iter()
        .flat_map(|p| (0..25).map(move |_| p))
        .map(|p| {
            p.post_form(
                "/oauth2/token",
                Some((&id, &secret)),
                &[("grant_type", "client_credentials")],
            )
        });
    let replies = futures_util::future::join_all(requests).await;
    for reply in &replies {
        assert_eq!(reply.status, 200, "{}", reply.text);
    }

    let out = r.env.run(&["audit", "verify"]).await;
    assert_eq!(out.code, Some(0), "{} {}", out.stdout, out.stderr);
    let report = out.json();
    assert_eq!(report["first_broken"], Value::Null, "{report}");
    assert_eq!(
        report["records"], 50,
        "one record per issued token, none lost: {report}"
    );
}

#[tokio::test]
async fn a_client_assertion_raced_at_both_replicas_is_accepted_exactly_once() {
    let r = replicas().await;
    let key = ClientKey::es256(Some("k1"));
    let id = r.jwt_client(&key).await;
    let assertion = key.assertion(&id, &format!("{PUBLIC_URL}/oauth2/token"));
    let attempts = [&r.a, &r.b]
        .into_iter()
        .flat_map(|p| (0..5).map(move |_| p))
        .map(|p| token_with_assertion(p, &assertion));
    let replies = futures_util::future::join_all(attempts).await;
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "exactly one use succeeds: {statuses:?}"
    );
    assert!(
        replies
            .iter()
            .filter(|r| r.status != 200)
            .all(|r| (r.status, r.error()) == (401, "invalid_client")),
        "{statuses:?}"
    );
}
