//! The one error type of the OAuth endpoints, in the words of RFC 6749
//! §5.2, RFC 7009 §2.2.1, RFC 8693 §2.2.2 and RFC 8707 §2. The HTTP layer
//! turns it into `{"error", "error_description"}` with the right status.
//! Descriptions never quote secrets or tokens; internal errors are logged
//! with the request id and described to the client only as `server_error`.

use std::borrow::Cow;

type Text = Cow<'static, str>;

#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    #[error("invalid_request: {0}")]
    InvalidRequest(Text),
    /// Client authentication failed (401).
    #[error("invalid_client: {0}")]
    InvalidClient(Text),
    #[error("invalid_grant: {0}")]
    InvalidGrant(Text),
    #[error("unauthorized_client: {0}")]
    UnauthorizedClient(Text),
    #[error("unsupported_grant_type: {0}")]
    UnsupportedGrantType(Text),
    #[error("invalid_scope: {0}")]
    InvalidScope(Text),
    #[error("invalid_target: {0}")]
    InvalidTarget(Text),
    /// The body exceeds `server.max_body_bytes` (413).
    #[error("invalid_request: request body is too large")]
    PayloadTooLarge,
    /// A dependency (store, an issuer's keys) is unavailable: 503, audited
    /// as a refusal like any other.
    #[error("temporarily_unavailable: {0}")]
    TemporarilyUnavailable(Text),
    /// The audit log itself could not take the record: 503, and the one
    /// refusal that cannot be audited.
    #[error("temporarily_unavailable: audit log unavailable, try again")]
    AuditUnavailable,
    /// A data request refused by the registry (dataset, grant, purpose,
    /// delegation); the body carries the denial's `reason`.
    #[error("{}: {}", data_code(*.0), .0.description())]
    DataRefused(crate::data::DataDenial),
    /// Refused by the cloud (STS `AccessDenied` and the like): 403
    /// `invalid_target` with a `reason`.
    #[error("invalid_target: {1}")]
    CloudDenied(&'static str, Text),
    /// The cloud is throttling, slow or unreachable: 503 with a `reason`
    /// and a longer `Retry-After` than a busy store.
    #[error("temporarily_unavailable: {1}")]
    CloudUnavailable(&'static str, Text),
    #[error("server_error")]
    Internal(#[from] anyhow::Error),
}

impl OAuthError {
    pub fn code(&self) -> &'static str {
        match self {
            OAuthError::InvalidRequest(_) | OAuthError::PayloadTooLarge => "invalid_request",
            OAuthError::InvalidClient(_) => "invalid_client",
            OAuthError::InvalidGrant(_) => "invalid_grant",
            OAuthError::UnauthorizedClient(_) => "unauthorized_client",
            OAuthError::UnsupportedGrantType(_) => "unsupported_grant_type",
            OAuthError::InvalidScope(_) => "invalid_scope",
            OAuthError::InvalidTarget(_) => "invalid_target",
            OAuthError::TemporarilyUnavailable(_) | OAuthError::AuditUnavailable => {
                "temporarily_unavailable"
            }
            OAuthError::DataRefused(d) => data_code(d.shown()),
            OAuthError::CloudDenied(..) => "invalid_target",
            OAuthError::CloudUnavailable(..) => "temporarily_unavailable",
            OAuthError::Internal(_) => "server_error",
        }
    }

    /// A stable machine-readable cause, added to the body as `reason`.
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            OAuthError::DataRefused(d) => Some(d.shown().code()),
            OAuthError::CloudDenied(r, _) | OAuthError::CloudUnavailable(r, _) => Some(r),
            _ => None,
        }
    }

    /// The reason the audit record gives: the real one, where the caller
    /// is told less (see [`crate::data::DataDenial::shown`]).
    pub fn audited_reason(&self) -> Option<&'static str> {
        match self {
            OAuthError::DataRefused(d) => Some(d.code()),
            e => e.reason(),
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            OAuthError::InvalidClient(_) => 401,
            OAuthError::PayloadTooLarge => 413,
            OAuthError::TemporarilyUnavailable(_)
            | OAuthError::AuditUnavailable
            | OAuthError::CloudUnavailable(..) => 503,
            OAuthError::CloudDenied(..) => 403,
            OAuthError::Internal(_) => 500,
            _ => 400,
        }
    }

    pub fn description(&self) -> Cow<'_, str> {
        match self {
            OAuthError::InvalidRequest(d)
            | OAuthError::InvalidClient(d)
            | OAuthError::InvalidGrant(d)
            | OAuthError::UnauthorizedClient(d)
            | OAuthError::UnsupportedGrantType(d)
            | OAuthError::InvalidScope(d)
            | OAuthError::InvalidTarget(d)
            | OAuthError::TemporarilyUnavailable(d) => Cow::Borrowed(d.as_ref()),
            OAuthError::CloudDenied(r, _) | OAuthError::CloudUnavailable(r, _) => {
                cloud_description(r).into()
            }
            OAuthError::DataRefused(d) => d.shown().description().into(),
            OAuthError::PayloadTooLarge => "request body is too large".into(),
            OAuthError::AuditUnavailable => "audit log unavailable, try again".into(),
            OAuthError::Internal(_) => "internal error".into(),
        }
    }

    /// The description the audit record gives: for a cloud refusal, the
    /// detail (AWS's own error text, or which dataset setting is wrong) that
    /// the caller is not shown.
    pub fn audited_description(&self) -> Cow<'_, str> {
        match self {
            OAuthError::CloudDenied(_, d) | OAuthError::CloudUnavailable(_, d) => {
                Cow::Borrowed(d.as_ref())
            }
            e => e.description(),
        }
    }

    pub fn invalid_request(d: impl Into<Text>) -> Self {
        OAuthError::InvalidRequest(d.into())
    }
}

/// What the caller is told of a cloud refusal: a fixed text per reason.
/// AWS's error messages name accounts, roles and policies; they go to the
/// log and the audit record only.
fn cloud_description(reason: &str) -> &'static str {
    match reason {
        "sts_denied" => "AWS refused to issue credentials for the dataset's role",
        "packed_policy_too_large" => {
            "the session policy and tags are larger than AWS accepts once packed"
        }
        "session_policy_too_large" => "the dataset's session policy is longer than AWS accepts",
        "request_outside_aws_limits" => {
            "the credential request would be outside AWS's limits on names and tags"
        }
        "dataset_misconfigured" => {
            "the dataset's AWS settings are not valid; its administrator must correct them"
        }
        "sts_throttled" => "AWS is throttling credential requests, try again",
        _ => "AWS STS cannot be reached right now, try again",
    }
}

/// The RFC error code of a data refusal: the permission is a scope, the
/// purpose a request parameter, the dataset the target.
fn data_code(d: crate::data::DataDenial) -> &'static str {
    use crate::data::DataDenial::*;
    match d {
        PermissionNotAllowed | PermissionNotGranted => "invalid_scope",
        PurposeRequired => "invalid_request",
        NotAPerson => "invalid_grant",
        UnknownDataset | PurposeNotAllowed | OtherTenant | NoGrant | PurposeNotGranted
        | GrantExpired | NoDelegation | EndsTooSoon => "invalid_target",
    }
}

impl From<crate::audit::writer::AuditError> for OAuthError {
    fn from(e: crate::audit::writer::AuditError) -> Self {
        // Never hand out access that could not be audited.
        tracing::error!(error = %e, "refusing request: audit record not durable");
        OAuthError::AuditUnavailable
    }
}
