//! The `tessera` binary as an operator uses it: every command prints JSON on
//! stdout against a store it migrates itself, errors go to stderr with a
//! non-zero exit, a bad configuration stops start-up naming the key, and
//! `serve` says where it listens and stops cleanly on SIGTERM.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::*;

fn fresh() -> (tempfile::TempDir, BinEnv) {
    let dir = tempfile::tempdir().unwrap();
    let env = BinEnv::fresh(dir.path());
    (dir, env)
}

const DEMO: &[&str] = &[
    "client",
    "create",
    "--name",
    "demo",
    "--tenant",
    "acme",
    "--audience",
    "internal",
    "--audience",
    "reports",
    "--scope",
    "a",
    "--scope",
    "b",
    "--ttl",
    "2m",
];

/// Registers the demo client; returns (client JSON, client_id, secret).
async fn create_demo(env: &BinEnv) -> (Value, String, String) {
    let c = env.run_json(DEMO).await;
    let id = c["client_id"].as_str().expect("client_id").to_string();
    let secret = c["client_secret"]
        .as_str()
        .expect("client_secret")
        .to_string();
    (c, id, secret)
}

async fn token_request(p: &TesseraProcess, id: &str, secret: &str) -> Reply {
    p.post_form(
        "/oauth2/token",
        Some((id, secret)),
        &[("grant_type", "client_credentials")],
    )
    .await
}

fn write_jwks(env: &BinEnv, name: &str, jwks: &Value) -> String {
    let path = env.dir.join(name);
    std::fs::write(&path, jwks.to_string()).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn client_create_on_a_new_store_prints_the_client_with_its_secret_and_list_and_show_never_do()
{
    let (_dir, env) = fresh();
    let out = env.run(DEMO).await;
    assert_eq!(
        out.code,
        Some(0),
        "migrations are applied on a brand-new store: {}",
        out.stderr
    );
    let created: Value = out.json();
    assert!(created.is_object(), "one JSON object: {}", out.stdout);
    let id = created["client_id"].as_str().unwrap();
    let secret = created["client_secret"].as_str().unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
    assert!(secret.len() >= 43, "256-bit secret: {secret}");
    assert_eq!(created["name"], "demo");
    assert_eq!(created["tenant"], "acme");
    assert_eq!(created["audiences"], json!(["internal", "reports"]));
    assert_eq!(created["scopes"], json!(["a", "b"]));
    assert_eq!(created["token_ttl"], 120);
    assert_eq!(created["auth_method"], "client_secret");
    assert_eq!(created["disabled"], false);
    assert_eq!(created["jwks"], Value::Null);

    let list = env.run_json(&["client", "list"]).await;
    let list = list.as_array().expect("client list is an array");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["client_id"], id);
    assert_eq!(list[0]["scopes"], json!(["a", "b"]));
    assert!(
        list[0].get("client_secret").is_none(),
        "list shows no secret: {}",
        list[0]
    );

    let show_out = env.run(&["client", "show", id]).await;
    let show = show_out.json();
    assert!(
        show.get("client_secret").is_none(),
        "show shows no secret: {show}"
    );
    let mut expected = created.clone();
    expected.as_object_mut().unwrap().remove("client_secret");
    // `show` adds what hangs off the client: none yet.
    expected["workload_identities"] = serde_json::json!([]);
    expected["delegations"] = serde_json::json!([]);
    assert_eq!(show, expected, "show prints the registered client");
    assert!(!show_out.stdout.contains(secret));

    let missing = env.run(&["client", "show", "no-such-client"]).await;
    assert_ne!(missing.code, Some(0));
    assert!(
        missing.stdout.is_empty(),
        "errors go to stderr only: {}",
        missing.stdout
    );
    assert!(
        missing.stderr.contains("no-such-client"),
        "{}",
        missing.stderr
    );
}

/// Repeats the token request for at most one second until it answers `status`.
async fn token_request_until(
    server: &TesseraProcess,
    id: &str,
    secret: &str,
    status: u16,
) -> Reply {
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    loop {
        let r = token_request(server, id, secret).await;
        if r.status == status || std::time::Instant::now() >= deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_disabled_client_gets_401_from_a_running_server_until_enabled_again() {
    let (_dir, env) = fresh();
    let (_, id, secret) = create_demo(&env).await;
    let server = env.serve().await;
    let r = token_request(&server, &id, &secret).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["expires_in"], 120, "--ttl 2m applies");

    let disabled = env.run_json(&["client", "disable", &id]).await;
    assert_eq!(
        (disabled["client_id"].as_str(), &disabled["disabled"]),
        (Some(id.as_str()), &json!(true))
    );
    // Replicas drop cached clients within a registry poll (250 ms).
    let r = token_request_until(&server, &id, &secret, 401).await;
    assert_eq!((r.status, r.error()), (401, "invalid_client"), "{}", r.text);
    assert_eq!(
        env.run_json(&["client", "show", &id]).await["disabled"],
        true
    );

    let enabled = env.run_json(&["client", "enable", &id]).await;
    assert_eq!(enabled["disabled"], false);
    let r = token_request_until(&server, &id, &secret, 200).await;
    assert_eq!(r.status, 200, "{}", r.text);

    let missing = env.run(&["client", "disable", "no-such-client"]).await;
    assert_ne!(missing.code, Some(0));
}

#[tokio::test]
async fn rotate_secret_prints_a_new_secret_and_the_previous_one_keeps_working_during_the_overlap() {
    let (_dir, env) = fresh();
    let (_, id, old) = create_demo(&env).await;
    let before = now();
    let rotated = env.run_json(&["client", "rotate-secret", &id]).await;
    assert_eq!(rotated["client_id"], id.as_str());
    let new = rotated["client_secret"]
        .as_str()
        .expect("new secret")
        .to_string();
    assert_ne!(new, old);
    let expires = rotated["previous_secret_expires_at"]
        .as_i64()
        .expect("previous_secret_expires_at");
    assert!(
        (before + 86_400..=now() + 86_400).contains(&expires),
        "default overlap is 24h: {expires}"
    );

    let server = env.serve().await;
    for s in [&old, &new] {
        let r = token_request(&server, &id, s).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let r = token_request(&server, &id, "not-the-secret").await;
    assert_eq!((r.status, r.error()), (401, "invalid_client"));
}

#[tokio::test]
async fn client_create_with_jwks_registers_a_private_key_jwt_client_without_a_secret() {
    let (_dir, env) = fresh();
    let key = ClientKey::es256(Some("k1"));
    let file = write_jwks(&env, "jwks.json", &json!({"keys": [key.jwk.clone()]}));
    let out = env
        .run(&[
            "client",
            "create",
            "--name",
            "jwt",
            "--tenant",
            "acme",
            "--audience",
            "internal",
            "--jwks",
            &file,
        ])
        .await;
    let c = out.json();
    assert_eq!(c["auth_method"], "private_key_jwt");
    assert!(
        c.get("client_secret").is_none(),
        "no secret for a private_key_jwt client: {c}"
    );
    assert_eq!(c["jwks"]["keys"][0]["kid"], "k1");
    assert_eq!(c["jwks"]["keys"][0]["x"], key.jwk["x"]);
    let id = c["client_id"].as_str().unwrap();

    let rotate = env.run(&["client", "rotate-secret", id]).await;
    assert_ne!(
        rotate.code,
        Some(0),
        "a private_key_jwt client has no secret to rotate: {}",
        rotate.stdout
    );
    assert!(rotate.stdout.is_empty());
}

#[tokio::test]
async fn client_create_refuses_a_jwks_holding_a_private_key() {
    let (_dir, env) = fresh();
    let key = ClientKey::es256(Some("k1"));
    let mut jwk = key.jwk.clone();
    // Any "d" marks a private key; the registry must not accept one.
    jwk["d"] = json!(b64(&[7u8; 32]));
    let file = write_jwks(&env, "private.json", &json!({"keys": [jwk]}));
    let out = env
        .run(&[
            "client",
            "create",
            "--name",
            "jwt",
            "--tenant",
            "acme",
            "--audience",
            "internal",
            "--jwks",
            &file,
        ])
        .await;
    assert_ne!(out.code, Some(0), "refused: {}", out.stdout);
    assert!(
        out.stdout.is_empty(),
        "nothing printed on stdout: {}",
        out.stdout
    );
    assert!(
        out.stderr.contains("private key"),
        "says why: {}",
        out.stderr
    );
    assert_eq!(
        env.run_json(&["client", "list"]).await,
        json!([]),
        "nothing was registered"
    );
}

#[tokio::test]
async fn migrate_applies_the_migrations_and_prints_migrated_true() {
    let (_dir, env) = fresh();
    assert_eq!(env.run_json(&["migrate"]).await, json!({"migrated": true}));
    // Idempotent, and the tables are there.
    assert_eq!(env.run_json(&["migrate"]).await, json!({"migrated": true}));
    assert_eq!(env.run_json(&["client", "list"]).await, json!([]));
}

#[tokio::test]
async fn keys_rotate_adds_a_next_key_that_keys_list_shows_beside_the_current_one() {
    let (_dir, env) = fresh();
    let before = now();
    let rotated = env
        .run_json(&["keys", "rotate", "--issuer", "service"])
        .await;
    let rotated = rotated.as_array().expect("array of rotated keys");
    assert_eq!(rotated.len(), 1, "only the service issuer: {rotated:?}");
    assert_eq!(rotated[0]["issuer"], "service");
    assert_eq!(rotated[0]["alg"], "ES256");
    let next_kid = rotated[0]["kid"].as_str().unwrap();
    let activates_at = rotated[0]["activates_at"].as_i64().unwrap();
    assert!(
        activates_at >= before + 15 * 60,
        "published keys.rotation_delay (15m) before it signs: {activates_at}"
    );

    let list = env.run_json(&["keys", "list"]).await;
    let service = list["service"].as_array().expect("service keys");
    assert_eq!(service.len(), 2, "{list}");
    let next = service
        .iter()
        .find(|k| k["kid"] == next_kid)
        .expect("rotated key listed");
    assert_eq!(next["state"], "next");
    assert_eq!(next["activates_at"], activates_at);
    let current = service.iter().find(|k| k["kid"] != next_kid).unwrap();
    assert_eq!(current["state"], "current");
    assert!(current["activates_at"].as_i64().unwrap() <= now());
    assert_eq!(
        current["retires_at"], activates_at,
        "the current key retires when the next one activates"
    );
    assert!(
        list["human"]
            .as_array()
            .expect("human keys")
            .iter()
            .all(|k| k["state"] != "next"),
        "--issuer service leaves the human issuer alone: {list}"
    );
}

#[tokio::test]
async fn audit_verify_passes_on_an_intact_log_and_tail_prints_the_newest_records() {
    let (_dir, env) = fresh();
    let (_, id, secret) = create_demo(&env).await;
    {
        let server = env.serve().await;
        for _ in 0..4 {
            assert_eq!(token_request(&server, &id, &secret).await.status, 200);
        }
        for _ in 0..3 {
            assert_eq!(token_request(&server, &id, "wrong").await.status, 401);
        }
    }

    let out = env.run(&["audit", "verify"]).await;
    assert_eq!(
        out.code,
        Some(0),
        "intact chain: {} {}",
        out.stdout,
        out.stderr
    );
    let report = out.json();
    assert_eq!(report["first_broken"], Value::Null);
    let records = report["records"].as_i64().unwrap();
    assert!(records >= 7, "{report}");

    let tail = env.run_json(&["audit", "tail", "-n", "5"]).await;
    let tail = tail.as_array().expect("audit tail prints a JSON array");
    assert_eq!(tail.len(), 5);
    let events: Vec<&str> = tail.iter().map(|r| r["event"].as_str().unwrap()).collect();
    assert_eq!(
        events,
        [
            "token_issuance",
            "token_issuance",
            "client_authentication",
            "client_authentication",
            "client_authentication"
        ],
        "newest records, oldest first"
    );
    assert_eq!(tail[4]["seq"], records);
    assert_eq!(tail[4]["reason"], "bad_secret");
    for pair in tail.windows(2) {
        assert_eq!(
            pair[1]["seq"].as_i64().unwrap(),
            pair[0]["seq"].as_i64().unwrap() + 1
        );
        assert_eq!(pair[1]["prev_hash"], pair[0]["hash"], "records are chained");
    }
    assert!(
        !env.run(&["audit", "tail", "-n", "50"])
            .await
            .stdout
            .contains(&secret),
        "no secret in the audit log"
    );
}

#[tokio::test]
async fn invalid_configuration_stops_start_up_with_a_message_naming_the_key() {
    let (dir, env) = fresh();
    let env = env
        .set(
            "TESSERA_SERVER_LISTEN",
            &format!("127.0.0.1:{}", free_port()),
        )
        .set(
            "TESSERA_SERVER_GRPC_LISTEN",
            &format!("127.0.0.1:{}", free_port()),
        );
    let config = dir.path().join("tessera.toml");
    std::fs::write(&config, "[server]\nlistne = \"x\"\n").unwrap();
    let config = config.display().to_string();
    // A port another process already listens on.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = held.local_addr().unwrap().to_string();
    let cases: Vec<(BinEnv, Vec<&str>, &str)> = vec![
        (
            env.clone().set("TESSERA_SERVER_LISTEN", "nowhere"),
            vec!["serve"],
            "server.listen",
        ),
        (
            env.clone().set("TESSERA_SERVER_LISTEN", &taken),
            vec!["serve"],
            "server.listen",
        ),
        (
            env.clone(),
            vec!["--config", &config, "serve"],
            "server.listne",
        ),
        (
            env.clone().set("TESSERA_KEYS_ALGORITHM", "HS256"),
            vec!["serve"],
            "keys.algorithm",
        ),
        (
            env.clone().set("TESSERA_KEYS_ALGORITHM", "HS256"),
            vec!["client", "list"],
            "keys.algorithm",
        ),
    ];
    for (env, args, key) in cases {
        let out = env.run(&args).await;
        assert!(
            out.code.is_some_and(|c| c != 0),
            "{args:?} with a bad {key} must fail, got {:?}",
            out.code
        );
        assert!(
            out.stderr.contains(&format!("`{key}`")),
            "{args:?}: stderr names {key}: {}",
            out.stderr
        );
        assert!(out.stdout.is_empty(), "{args:?}: {}", out.stdout);
    }
}

#[tokio::test]
async fn serve_prints_where_it_listens_and_how_to_create_a_first_client_then_stops_on_sigterm() {
    let (_dir, env) = fresh();
    let mut server = env.spawn_serve();
    let http_line = format!("HTTP on {}", server.base);
    let grpc_line = format!("gRPC ext_authz on 127.0.0.1:{}", server.grpc_port);
    // The banner ends with the command to create a first client.
    loop {
        let Some(line) = server.stderr_line(Duration::from_secs(30)).await else {
            panic!(
                "banner incomplete; stderr so far:\n{}",
                server.stderr_seen.join("\n")
            );
        };
        if line.contains("tessera client create") {
            break;
        }
    }
    let banner = server.stderr_seen.join("\n");
    assert!(banner.contains(&http_line), "{banner}");
    assert!(banner.contains(&grpc_line), "{banner}");
    assert!(banner.contains("create a first client"), "{banner}");

    server.wait_ready().await;
    let ready = server.get("/readyz").await;
    assert_eq!(
        (ready.status, ready.body["status"].as_str()),
        (200, Some("ready"))
    );

    server.terminate();
    let status = server
        .child
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("exits within 15 s of SIGTERM");
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    while server.stderr_line(Duration::from_secs(5)).await.is_some() {}
    assert!(
        server
            .stderr_seen
            .iter()
            .any(|l| l.contains("shutting down")),
        "{}",
        server.stderr_seen.join("\n")
    );
    assert!(
        server
            .http
            .get(format!("{}/healthz", server.base))
            .send()
            .await
            .is_err(),
        "no longer listening"
    );
}
