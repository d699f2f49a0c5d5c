//! The local AWS emulator (moto server) for the AWS tests, reached through
//! the real AWS SDK with `endpoint_url`.
//!
//! Where: `TESSERA_TEST_MOTO_URL` (scripts/test.sh starts moto and sets
//! it). When unset, the first test that needs moto runs `scripts/moto.sh`,
//! which installs moto if needed and starts it on 127.0.0.1:5005 (left
//! running for the next run; `scripts/moto.sh stop` stops it). If that
//! fails, the test fails saying so: it never passes without moto.
//!
//! moto's state and its request recorder are global to the server, so
//! every test holding a [`Moto`] runs alone: [`Moto::start`] takes a
//! process-wide lock, then resets the state and the recording.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use serde_json::Value;
use tessera::aws::{self, AwsConfig, Credentials};
use tokio::sync::{Mutex, MutexGuard, OnceCell};

/// moto's fixed account.
pub const ACCOUNT: &str = "123456789012";

static LOCK: Mutex<()> = Mutex::const_new(());
static URL: OnceCell<String> = OnceCell::const_new();

/// moto for one test: holds the lock until dropped.
pub struct Moto {
    pub url: String,
    http: reqwest::Client,
    _alone: MutexGuard<'static, ()>,
}

/// One request moto received, as its recorder saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Full URL as sent, path included (`/ListPermissions` for Lake
    /// Formation, `/` for the query protocols of STS and IAM).
    pub url: String,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

impl Recorded {
    /// The form fields of a query-protocol request (STS, IAM), in order.
    pub fn form(&self) -> Vec<(String, String)> {
        serde_urlencoded::from_str(&self.body).unwrap_or_default()
    }

    /// The one value of a form field.
    pub fn field(&self, name: &str) -> Option<String> {
        self.form()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

async fn find_or_start() -> String {
    if let Ok(url) = std::env::var("TESSERA_TEST_MOTO_URL") {
        if !url.trim().is_empty() {
            return url.trim().trim_end_matches('/').to_string();
        }
    }
    eprintln!("TESSERA_TEST_MOTO_URL is not set: starting moto with scripts/moto.sh");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/moto.sh");
    let out = tokio::process::Command::new("bash")
        .arg(script)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "these tests need moto (local AWS emulator) and {script} failed; \
         run it by hand or set TESSERA_TEST_MOTO_URL.\n{}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.trim().lines().last().unwrap_or_default().to_string()
}

impl Moto {
    /// Waits for every other moto test to finish, then gives a clean moto
    /// with the recorder on.
    pub async fn start() -> Moto {
        let alone = LOCK.lock().await;
        let url = URL.get_or_init(find_or_start).await.clone();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let moto = Moto {
            url,
            http,
            _alone: alone,
        };
        moto.api("reset").await;
        moto.api("recorder/stop-recording").await;
        moto.api("recorder/reset-recording").await;
        moto.api("recorder/start-recording").await;
        moto
    }

    async fn api(&self, path: &str) -> String {
        let url = format!("{}/moto-api/{path}", self.url);
        let res = self.http.post(&url).send().await.unwrap_or_else(|e| {
            panic!(
                "moto at {} does not answer ({e}); is it running? (scripts/moto.sh)",
                self.url
            )
        });
        assert!(res.status().is_success(), "POST {url}: {}", res.status());
        res.text().await.unwrap()
    }

    /// `[aws]` pointing at moto, with a generous timeout (the machine may
    /// be busy building).
    pub fn aws_config(&self) -> AwsConfig {
        AwsConfig {
            region: "us-east-1".into(),
            endpoint_url: Some(self.url.clone()),
            sts_timeout: Duration::from_secs(20),
            credential_reuse_margin: None,
            lakeformation_sync_interval: None,
        }
    }

    /// SDK configuration for moto: dummy credentials (moto does not check
    /// signatures), nothing read from the environment.
    pub async fn sdk_config(&self) -> aws::SdkConfig {
        aws::sdk_config_with_credentials(
            &self.aws_config(),
            Credentials::new(
                "AKIATESSERATEST",
                "moto-does-not-check",
                None,
                None,
                "tests",
            ),
        )
        .await
    }

    /// Creates an IAM role that trusts the account, as an operator would
    /// before registering a dataset; returns its ARN. (moto's STS does not
    /// require the role to exist, but the tests use real roles anyway.)
    pub async fn create_role(&self, name: &str) -> String {
        let trust = format!(
            r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Principal":{{"AWS":"arn:aws:iam::{ACCOUNT}:root"}},"Action":["sts:AssumeRole","sts:TagSession","sts:SetSourceIdentity"]}}]}}"#
        );
        let body = serde_urlencoded::to_string([
            ("Action", "CreateRole"),
            ("Version", "2010-05-08"),
            ("RoleName", name),
            ("AssumeRolePolicyDocument", &trust),
            ("MaxSessionDuration", "43200"),
        ])
        .unwrap();
        // moto routes by the SigV4 credential scope; it checks no signature.
        let res = self
            .http
            .post(format!("{}/", self.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .header(
                "authorization",
                "AWS4-HMAC-SHA256 Credential=AKIATESSERATEST/20260101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=0",
            )
            .body(body)
            .send()
            .await
            .unwrap();
        let status = res.status();
        let text = res.text().await.unwrap();
        assert!(status.is_success(), "CreateRole {name}: {status} {text}");
        let arn = format!("arn:aws:iam::{ACCOUNT}:role/{name}");
        assert!(text.contains(&arn), "CreateRole answered {text}");
        arn
    }

    /// Every request moto received since [`Moto::start`], in order.
    pub async fn recorded(&self) -> Vec<Recorded> {
        let res = self
            .http
            .get(format!("{}/moto-api/recorder/download-recording", self.url))
            .send()
            .await
            .unwrap();
        assert!(
            res.status().is_success(),
            "download-recording: {}",
            res.status()
        );
        let text = res.text().await.unwrap();
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|line| {
                let v: Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("recorder line {line:?}: {e}"));
                let raw = v["body"].as_str().unwrap_or_default();
                let body = if v["body_encoded"].as_bool() == Some(true) {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(raw)
                        .expect("recorder body is base64");
                    String::from_utf8_lossy(&bytes).into_owned()
                } else {
                    raw.to_string()
                };
                Recorded {
                    method: v["method"].as_str().unwrap_or_default().to_string(),
                    url: v["url"].as_str().unwrap_or_default().to_string(),
                    headers: v["headers"]
                        .as_object()
                        .map(|h| {
                            h.iter()
                                .map(|(k, v)| {
                                    (k.to_ascii_lowercase(), v.as_str().unwrap_or("").to_string())
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                    body,
                }
            })
            .collect()
    }

    /// The recorded query-protocol requests (STS, IAM) with this `Action`.
    pub async fn recorded_action(&self, action: &str) -> Vec<Recorded> {
        self.recorded()
            .await
            .into_iter()
            .filter(|r| r.field("Action").as_deref() == Some(action))
            .collect()
    }
}
