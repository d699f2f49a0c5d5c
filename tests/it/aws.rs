//! The AWS layer through the real AWS SDK: STS `AssumeRole` against moto
//! (see `moto.rs`), STS error handling against small local servers that
//! answer as STS would (or not at all). Lake Formation: `lakeformation.rs`.
//!
//! moto drops `Tags` and `SourceIdentity` on `AssumeRole`, so what Tessera
//! sent is checked in moto's request recorder, not in its answer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tessera::aws::session::{
    account_of_role_arn, duration, session_name, session_policy, source_identity, tag_value,
    DatasetScope, Permission,
};
use tessera::aws::{
    self, AssumeRequest, AwsBroker, AwsConfig, CredentialBroker, Credentials, StsError,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::moto::{Moto, ACCOUNT};

const USER: &str = "Alice Smith <alice@example.com>";

fn request(role_arn: &str) -> AssumeRequest {
    let scope = DatasetScope {
        partition: "aws".into(),
        region: "us-east-1".into(),
        account: account_of_role_arn(role_arn).unwrap().into(),
        glue_database: "sales".into(),
        glue_table: Some("orders".into()),
        s3_prefix: "s3://data-lake/sales/orders/".into(),
    };
    AssumeRequest {
        role_arn: role_arn.into(),
        session_name: session_name(USER),
        source_identity: source_identity(USER),
        tags: vec![
            ("user".into(), tag_value(USER)),
            ("service".into(), tag_value("reports")),
            ("tenant".into(), tag_value("acme")),
            ("dataset".into(), tag_value("sales-orders")),
            ("purpose".into(), tag_value("fraud detection")),
        ],
        transitive_tag_keys: vec!["user".into(), "tenant".into(), "dataset".into()],
        policy: session_policy(&scope, Permission::Read).unwrap(),
        duration_secs: duration(Some(1200), 3600),
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn assume_role_sends_names_tags_policy_and_duration() {
    let moto = Moto::start().await;
    let role = moto.create_role("sales-reader").await;
    let broker = AwsBroker::from_sdk_config(&moto.sdk_config().await);
    let req = request(&role);

    let creds = broker.assume_role(&req).await.expect("AssumeRole on moto");

    assert!(creds.access_key_id.starts_with("ASIA"), "{creds:?}");
    assert!(!creds.secret_access_key.is_empty() && !creds.session_token.is_empty());
    assert!(
        (creds.expiration - (now() + 1200)).abs() < 120,
        "expiration {} is not about 20 minutes from now",
        creds.expiration
    );
    assert_eq!(
        creds.assumed_role_arn,
        format!(
            "arn:aws:sts::{ACCOUNT}:assumed-role/sales-reader/{}",
            req.session_name
        )
    );

    let sent = moto.recorded_action("AssumeRole").await;
    assert_eq!(sent.len(), 1, "one call, no retry: {sent:?}");
    let r = &sent[0];
    assert_eq!(r.method, "POST");
    let auth = r.headers.get("authorization").cloned().unwrap_or_default();
    assert!(
        auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIATESSERATEST/")
            && auth.contains("/us-east-1/sts/aws4_request"),
        "signed for STS in the configured region: {auth}"
    );
    let expected: Vec<(&str, String)> = vec![
        ("Action", "AssumeRole".into()),
        ("Version", "2011-06-15".into()),
        ("RoleArn", role.clone()),
        ("RoleSessionName", req.session_name.clone()),
        ("SourceIdentity", req.source_identity.clone()),
        ("Tags.member.1.Key", "user".into()),
        (
            "Tags.member.1.Value",
            // Not a valid tag value as it is ("<", ">"): base64url of it.
            "=QWxpY2UgU21pdGggPGFsaWNlQGV4YW1wbGUuY29tPg".into(),
        ),
        ("Tags.member.2.Key", "service".into()),
        ("Tags.member.2.Value", "reports".into()),
        ("Tags.member.3.Key", "tenant".into()),
        ("Tags.member.3.Value", "acme".into()),
        ("Tags.member.4.Key", "dataset".into()),
        ("Tags.member.4.Value", "sales-orders".into()),
        ("Tags.member.5.Key", "purpose".into()),
        ("Tags.member.5.Value", "fraud detection".into()),
        ("TransitiveTagKeys.member.1", "user".into()),
        ("TransitiveTagKeys.member.2", "tenant".into()),
        ("TransitiveTagKeys.member.3", "dataset".into()),
        ("Policy", req.policy.clone()),
        ("DurationSeconds", "1200".into()),
    ];
    let mut form = r.form();
    form.sort();
    let mut expected: Vec<(String, String)> = expected
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    expected.sort();
    assert_eq!(form, expected);
    // The user id as derived, not as given.
    assert!(req
        .session_name
        .starts_with("Alice-Smith--alice@example.com--"));
    assert_eq!(req.session_name.len(), 48);
    assert!(!r.body.contains("aws_secret"), "no secret in the request");
}

#[tokio::test]
async fn invalid_requests_are_refused_before_any_call() {
    let moto = Moto::start().await;
    let broker = AwsBroker::from_sdk_config(&moto.sdk_config().await);
    let role = format!("arn:aws:iam::{ACCOUNT}:role/sales-reader");
    let cases: Vec<(Box<dyn Fn(&mut AssumeRequest)>, &str)> = vec![
        (
            Box::new(|r| r.tags.push(("aws:user".into(), "x".into()))),
            "reserved",
        ),
        (
            Box::new(|r| r.tags.push(("USER".into(), "x".into()))),
            "twice",
        ),
        (
            Box::new(|r| r.transitive_tag_keys.push("nope".into())),
            "transitive",
        ),
        (
            Box::new(|r| r.session_name = "Alice Smith".into()),
            "RoleSessionName",
        ),
        (
            Box::new(|r| r.session_name = "x".repeat(65)),
            "RoleSessionName",
        ),
        (
            Box::new(|r| r.source_identity = "aws:alice".into()),
            "SourceIdentity",
        ),
        (
            Box::new(|r| r.policy = format!("{{\"x\":\"{}\"}}", "y".repeat(2100))),
            "2048",
        ),
        (Box::new(|r| r.duration_secs = 600), "DurationSeconds"),
    ];
    for (change, want) in cases {
        let mut req = request(&role);
        change(&mut req);
        match broker.assume_role(&req).await {
            Err(StsError::Denied(text)) => {
                assert!(
                    text.starts_with("not sent:") && text.contains(want),
                    "{text}"
                )
            }
            other => panic!("{want}: expected Denied, got {other:?}"),
        }
    }
    let sent = moto.recorded().await;
    assert!(sent.is_empty(), "nothing may reach AWS: {sent:?}");
}

/// A local server that answers every request with `status` and `body`, as
/// STS would for an error; counts the requests.
async fn canned(status: u16, body: &'static str) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                // Read the head, then Content-Length bytes of body.
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
                seen.fetch_add(1, Ordering::SeqCst);
                let response = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: text/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(response.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    (url, count)
}

fn config(endpoint: &str, timeout: Duration) -> AwsConfig {
    AwsConfig {
        region: "us-east-1".into(),
        endpoint_url: Some(endpoint.into()),
        sts_timeout: timeout,
        credential_reuse_margin: None,
        lakeformation_sync_interval: None,
    }
}

async fn broker(endpoint: &str, timeout: Duration) -> AwsBroker {
    let sdk = aws::sdk_config_with_credentials(
        &config(endpoint, timeout),
        Credentials::new("AKIATESSERATEST", "not-a-secret", None, None, "tests"),
    )
    .await;
    AwsBroker::from_sdk_config(&sdk)
}

fn sts_error(code: &str, message: &str) -> &'static str {
    Box::leak(
        format!(
            "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error><RequestId>c0ffee</RequestId></ErrorResponse>"
        )
        .into_boxed_str(),
    )
}

#[tokio::test]
async fn sts_errors_are_sorted_into_denied_throttled_unavailable() {
    let role = format!("arn:aws:iam::{ACCOUNT}:role/sales-reader");
    let cases: [(u16, &str, &str, usize); 6] = [
        (403, "AccessDenied", "denied", 1),
        (400, "MalformedPolicyDocument", "denied", 1),
        (400, "PackedPolicyTooLarge", "packed", 1),
        (403, "InvalidClientTokenId", "unavailable", 1),
        // Retried once (aws::MAX_ATTEMPTS), then given up.
        (400, "Throttling", "throttled", aws::MAX_ATTEMPTS as usize),
        (
            500,
            "InternalFailure",
            "unavailable",
            aws::MAX_ATTEMPTS as usize,
        ),
    ];
    for (status, code, kind, attempts) in cases {
        let (url, count) = canned(status, sts_error(code, "no, because")).await;
        let b = broker(&url, Duration::from_secs(20)).await;
        let err = b.assume_role(&request(&role)).await.unwrap_err();
        let text = match (&err, kind) {
            (StsError::Denied(t), "denied")
            | (StsError::PackedPolicyTooLarge(t), "packed")
            | (StsError::Throttled(t), "throttled")
            | (StsError::Unavailable(t), "unavailable") => t.clone(),
            _ => panic!("{code}: expected {kind}, got {err:?}"),
        };
        assert_eq!(text, format!("{code}: no, because"));
        assert_eq!(count.load(Ordering::SeqCst), attempts, "{code}: attempts");
    }
}

#[tokio::test]
async fn unreachable_sts_is_unavailable() {
    // A port that was just free: connections are refused.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let b = broker(&format!("http://127.0.0.1:{port}"), Duration::from_secs(10)).await;
    let started = Instant::now();
    let err = b
        .assume_role(&request(&format!("arn:aws:iam::{ACCOUNT}:role/r")))
        .await
        .unwrap_err();
    assert!(matches!(err, StsError::Unavailable(_)), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn silent_sts_is_cut_off_at_sts_timeout() {
    // Accepts connections and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let held = Arc::new(StdMutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            keep.lock().unwrap().push(conn);
        }
    });
    let b = broker(&url, Duration::from_secs(1)).await;
    let started = Instant::now();
    let err = b
        .assume_role(&request(&format!("arn:aws:iam::{ACCOUNT}:role/r")))
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, StsError::Unavailable(_)), "{err:?}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(6),
        "bounded by sts_timeout (1s): took {took:?}"
    );
    assert!(
        !held.lock().unwrap().is_empty(),
        "the request did reach the server"
    );
}
