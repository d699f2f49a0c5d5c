//! [`AwsBroker`]: the [`CredentialBroker`] that calls STS `AssumeRole`
//! through the AWS SDK.

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_sts::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sts::types::Tag;

use super::session::validate_request;
use super::{AssumeRequest, AwsConfig, CredentialBroker, IssuedCredentials, StsError};

/// STS through the AWS SDK. Each call is bounded by `aws.sts_timeout` and
/// makes at most [`super::MAX_ATTEMPTS`] attempts.
#[derive(Clone, Debug)]
pub struct AwsBroker {
    client: aws_sdk_sts::Client,
}

impl AwsBroker {
    /// A broker with the default credential chain (see [`super::sdk_config`]).
    pub async fn new(cfg: &AwsConfig) -> AwsBroker {
        Self::from_sdk_config(&super::sdk_config(cfg).await)
    }

    /// A broker on an SDK configuration made by [`super::sdk_config`] or
    /// [`super::sdk_config_with_credentials`] (which set the timeouts and
    /// retries this relies on).
    pub fn from_sdk_config(sdk: &SdkConfig) -> AwsBroker {
        AwsBroker {
            client: aws_sdk_sts::Client::new(sdk),
        }
    }
}

#[async_trait]
impl CredentialBroker for AwsBroker {
    async fn assume_role(&self, req: &AssumeRequest) -> Result<IssuedCredentials, StsError> {
        validate_request(req).map_err(|e| StsError::Denied(format!("not sent: {e}")))?;
        let tags = req
            .tags
            .iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StsError::Denied(format!("not sent: {e}")))?;
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
        let out = self
            .client
            .assume_role()
            .role_arn(&req.role_arn)
            .role_session_name(&req.session_name)
            .set_source_identity(non_empty(&req.source_identity))
            .set_tags((!tags.is_empty()).then_some(tags))
            .set_transitive_tag_keys(
                (!req.transitive_tag_keys.is_empty()).then(|| req.transitive_tag_keys.clone()),
            )
            .set_policy(non_empty(&req.policy))
            .duration_seconds(req.duration_secs)
            .send()
            .await
            .map_err(|e| {
                let err = map_error(&e);
                tracing::debug!(role_arn = %req.role_arn, error = %err, "AssumeRole failed");
                err
            })?;
        let creds = out.credentials().ok_or_else(|| {
            StsError::Unavailable("AssumeRole answered without credentials".into())
        })?;
        Ok(IssuedCredentials {
            access_key_id: creds.access_key_id().to_string(),
            secret_access_key: creds.secret_access_key().to_string(),
            session_token: creds.session_token().to_string(),
            expiration: creds.expiration().secs(),
            assumed_role_arn: out
                .assumed_role_user()
                .map(|u| u.arn().to_string())
                .unwrap_or_default(),
        })
    }
}

/// Sorts an SDK error into [`StsError`]; see there for which goes where.
fn map_error<E>(e: &SdkError<E>) -> StsError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match e {
        SdkError::TimeoutError(_) => StsError::Unavailable("timed out (aws.sts_timeout)".into()),
        SdkError::DispatchFailure(d) => {
            let kind = if d.is_timeout() {
                "timed out"
            } else if d.is_io() {
                "connection failed"
            } else {
                "request failed"
            };
            StsError::Unavailable(format!("{kind}: {}", DisplayErrorContext(e)))
        }
        SdkError::ServiceError(s) => {
            let status = s.raw().status().as_u16();
            let code = s.err().code().unwrap_or("").to_string();
            let message = s.err().message().unwrap_or("").to_string();
            let text = if code.is_empty() {
                format!("HTTP {status}: {message}")
            } else {
                format!("{code}: {message}")
            };
            classify(status, &code, text)
        }
        // A response that could not be read, or a request that could not be
        // built (no credentials found, bad endpoint): Tessera's side.
        _ => StsError::Unavailable(DisplayErrorContext(e).to_string()),
    }
}

fn classify(status: u16, code: &str, text: String) -> StsError {
    match code {
        "Throttling"
        | "ThrottlingException"
        | "RequestLimitExceeded"
        | "TooManyRequestsException" => StsError::Throttled(text),
        "PackedPolicyTooLarge" => StsError::PackedPolicyTooLarge(text),
        // Tessera's own credentials or region, not the request.
        "InvalidClientTokenId"
        | "ExpiredToken"
        | "ExpiredTokenException"
        | "SignatureDoesNotMatch"
        | "IncompleteSignature"
        | "MissingAuthenticationToken"
        | "RegionDisabledException" => StsError::Unavailable(text),
        _ if status == 429 => StsError::Throttled(text),
        _ if status >= 500 => StsError::Unavailable(text),
        _ => StsError::Denied(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_sorted() {
        let t = |status, code: &str| classify(status, code, code.to_string());
        assert!(matches!(t(403, "AccessDenied"), StsError::Denied(_)));
        assert!(matches!(
            t(400, "MalformedPolicyDocument"),
            StsError::Denied(_)
        ));
        assert!(matches!(
            t(400, "PackedPolicyTooLarge"),
            StsError::PackedPolicyTooLarge(_)
        ));
        assert!(matches!(t(400, "ValidationError"), StsError::Denied(_)));
        assert!(matches!(t(400, "Throttling"), StsError::Throttled(_)));
        assert!(matches!(t(429, ""), StsError::Throttled(_)));
        assert!(matches!(
            t(403, "InvalidClientTokenId"),
            StsError::Unavailable(_)
        ));
        assert!(matches!(
            t(403, "RegionDisabledException"),
            StsError::Unavailable(_)
        ));
        assert!(matches!(
            t(500, "InternalFailure"),
            StsError::Unavailable(_)
        ));
        assert!(matches!(t(503, ""), StsError::Unavailable(_)));
    }

    #[test]
    fn credentials_debug_redacts_secrets() {
        let c = IssuedCredentials {
            access_key_id: "ASIAEXAMPLE".into(),
            secret_access_key: "s3cr3t-key".into(),
            session_token: "t0ken".into(),
            expiration: 1,
            assumed_role_arn: "arn".into(),
        };
        let text = format!("{c:?}");
        assert!(text.contains("ASIAEXAMPLE"));
        assert!(
            !text.contains("s3cr3t") && !text.contains("t0ken"),
            "{text}"
        );
    }
}
