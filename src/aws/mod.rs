//! Federated AWS credentials (DESIGN.md §5): STS `AssumeRole` on a
//! dataset's role for a user ([`CredentialBroker`], [`AwsBroker`]), the
//! pure rules for what goes into that call ([`session`]), and keeping Lake
//! Formation grants in step with the registry ([`lakeformation`]).
//!
//! The SDK clients are built by [`sdk_config`]: region and `endpoint_url`
//! (a local emulator in tests) from `[aws]`, credentials from the SDK's
//! default chain (environment, profile, web identity, container, instance
//! metadata), and an HTTPS client on rustls with *ring*, the TLS stack the
//! rest of Tessera already uses (the SDK's default would add aws-lc).
//!
//! Nothing here logs a secret: [`IssuedCredentials`]' `Debug` redacts the
//! secret key and session token, and errors carry AWS's code and message
//! only.

pub mod lakeformation;
pub mod session;
pub mod sts;

use std::fmt;

use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_smithy_http_client::tls;

pub use crate::config::AwsConfig;
/// The AWS SDK's configuration, as made by [`sdk_config`].
pub use aws_config::SdkConfig;
/// Fixed credentials, for [`sdk_config_with_credentials`] (tests, emulator).
pub use aws_sdk_sts::config::Credentials;
pub use sts::AwsBroker;

/// Most attempts of one AWS call (the first and one retry): small enough
/// that retries with back-off fit within `aws.sts_timeout`, which bounds
/// the whole call anyway.
pub const MAX_ATTEMPTS: u32 = 2;

/// One `AssumeRole` call, already made valid by the functions of
/// [`session`]; [`AwsBroker`] checks it again with
/// [`session::validate_request`] before sending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssumeRequest {
    pub role_arn: String,
    pub session_name: String,
    /// Empty: not sent.
    pub source_identity: String,
    pub tags: Vec<(String, String)>,
    pub transitive_tag_keys: Vec<String>,
    /// Inline session policy (JSON); empty: not sent.
    pub policy: String,
    pub duration_secs: i32,
}

/// Temporary credentials from STS.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    /// Unix seconds.
    pub expiration: i64,
    /// `arn:aws:sts::{account}:assumed-role/{role}/{session name}`.
    pub assumed_role_arn: String,
}

impl fmt::Debug for IssuedCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("session_token", &"<redacted>")
            .field("expiration", &self.expiration)
            .field("assumed_role_arn", &self.assumed_role_arn)
            .finish()
    }
}

/// Why no credentials were issued. The text names the cause (AWS's error
/// code where there is one) and never holds a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StsError {
    /// The request itself was refused, locally (before any call) or by
    /// STS: `AccessDenied` (role missing, or its trust policy does not let
    /// Tessera assume it), `MalformedPolicyDocument`, `ValidationError`, and
    /// any other 4xx but the one below. Retrying the same request will not help.
    #[error("refused: {0}")]
    Denied(String),
    /// `PackedPolicyTooLarge`: the session policy and tags, as STS packs
    /// them, exceed its limit. Tessera checks the plain sizes before the
    /// call, but the packed size has no documented formula, so this is
    /// told apart: the dataset's policy or the tag values need shortening.
    #[error("refused, packed policy too large: {0}")]
    PackedPolicyTooLarge(String),
    /// STS throttled the call (`Throttling`, HTTP 429) even after a retry.
    #[error("throttled by STS: {0}")]
    Throttled(String),
    /// STS could not be reached or answered, within `aws.sts_timeout`:
    /// timeout, connection or TLS failure, 5xx, an unreadable response, or
    /// a problem with Tessera's own AWS credentials or region
    /// (`InvalidClientTokenId`, `ExpiredToken`, `SignatureDoesNotMatch`,
    /// `RegionDisabledException`, no credentials found). Worth retrying
    /// later; not the caller's fault.
    #[error("STS unavailable: {0}")]
    Unavailable(String),
}

/// Issues AWS credentials for one `AssumeRole` request. The token endpoint
/// holds an `Arc<dyn CredentialBroker>`, so tests can put a fake in.
#[async_trait]
pub trait CredentialBroker: Send + Sync {
    async fn assume_role(&self, req: &AssumeRequest) -> Result<IssuedCredentials, StsError>;
}

/// The HTTPS client every AWS client uses: rustls with *ring*, the
/// platform's trust store.
fn https_client() -> aws_sdk_sts::config::SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https()
}

fn loader(cfg: &AwsConfig) -> aws_config::ConfigLoader {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(cfg.region.clone()))
        .http_client(https_client())
        // The whole call, retries and credential resolution included, is
        // bounded by sts_timeout; a connection that cannot even be opened
        // fails sooner so the one retry still has time.
        .timeout_config(
            TimeoutConfig::builder()
                .operation_timeout(cfg.sts_timeout)
                .connect_timeout(cfg.sts_timeout.min(std::time::Duration::from_secs(2)))
                .build(),
        )
        .retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS));
    if let Some(url) = &cfg.endpoint_url {
        loader = loader.endpoint_url(url.clone());
    }
    loader
}

/// SDK configuration from `[aws]`, credentials from the default chain.
pub async fn sdk_config(cfg: &AwsConfig) -> SdkConfig {
    loader(cfg).load().await
}

/// Like [`sdk_config`], with fixed credentials instead of the default
/// chain: for the emulator in tests, where there is no environment to read
/// them from and instance metadata must not be probed.
pub async fn sdk_config_with_credentials(cfg: &AwsConfig, credentials: Credentials) -> SdkConfig {
    loader(cfg).credentials_provider(credentials).load().await
}
