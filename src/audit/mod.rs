//! The audit log: typed records, a SHA-256 hash chain that makes any
//! change to a stored record detectable, and a batching writer (group
//! commit) so that a request that must be audited is answered only once its
//! record is durable without serializing requests on one INSERT each.

pub mod writer;

use serde::{Deserialize, Serialize};

use crate::store::AuditStore;

pub use writer::AuditLog;

/// `prev_hash` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Allow,
    Deny,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
        }
    }
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// A token request (issued or refused after the client was known).
    TokenIssuance,
    /// An RFC 8693 token exchange (issued or refused).
    TokenExchange,
    /// A client failed to authenticate at any endpoint.
    ClientAuthentication,
    Introspection,
    Revocation,
    ExtAuthz,
    /// A Lake Formation grant or revoke made to match the registry.
    LakeFormationSync,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::TokenIssuance => "token_issuance",
            Event::TokenExchange => "token_exchange",
            Event::ClientAuthentication => "client_authentication",
            Event::Introspection => "introspection",
            Event::Revocation => "revocation",
            Event::ExtAuthz => "ext_authz",
            Event::LakeFormationSync => "lakeformation_sync",
        }
    }
}

/// One audit record. Field order is the hash input order: do not reorder.
/// No field ever holds a secret, a token or a key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Unix milliseconds.
    pub ts: i64,
    pub event: String,
    pub decision: String,
    pub reason: String,
    pub client_id: Option<String>,
    pub subject: Option<String>,
    pub principal: Option<String>,
    pub tenant: Option<String>,
    /// Space-separated.
    pub audience: Option<String>,
    /// Space-separated.
    pub scopes: Option<String>,
    pub route: Option<String>,
    pub policy_version: Option<String>,
    pub jti: Option<String>,
    pub request_id: Option<String>,
    pub peer: Option<String>,
    // Fields added later are left out of the hash input when empty, so
    // records written before them keep their hashes.
    /// Actor chain of a delegated token, current actor first, space-separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// The trusted issuer (by name) a presented identity came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_issuer: Option<String>,
    /// Data access: the dataset, purpose and permission (`read`/`write`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permission: Option<String>,
    /// Issued cloud credentials: the role, session name and source identity
    /// they were assumed with, their `AccessKeyId` (to join with CloudTrail)
    /// and expiry (Unix seconds). Never the secret parts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_identity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_expiry: Option<i64>,
}

impl AuditRecord {
    pub fn new(ts: i64, event: Event, decision: Decision, reason: impl Into<String>) -> Self {
        Self {
            ts,
            event: event.as_str().into(),
            decision: decision.as_str().into(),
            reason: reason.into(),
            client_id: None,
            subject: None,
            principal: None,
            tenant: None,
            audience: None,
            scopes: None,
            route: None,
            policy_version: None,
            jti: None,
            request_id: None,
            peer: None,
            actor: None,
            upstream_issuer: None,
            dataset: None,
            purpose: None,
            permission: None,
            role_arn: None,
            session_name: None,
            source_identity: None,
            access_key_id: None,
            credential_expiry: None,
        }
    }
}

/// A record as stored, with its place in the chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredAudit {
    pub seq: i64,
    #[serde(flatten)]
    pub record: AuditRecord,
    pub prev_hash: String,
    pub hash: String,
}

/// `hash = SHA-256(prev_hash "\n" seq "\n" canonical JSON of the record)`.
pub fn chain_hash(prev_hash: &str, seq: i64, record: &AuditRecord) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(prev_hash.as_bytes());
    ctx.update(b"\n");
    ctx.update(seq.to_string().as_bytes());
    ctx.update(b"\n");
    ctx.update(&serde_json::to_vec(record).expect("audit record serializes"));
    hex::encode(ctx.finish().as_ref())
}

/// Outcome of walking the whole chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainReport {
    pub records: u64,
    /// The first record whose link or hash does not check out.
    pub first_broken: Option<BrokenLink>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BrokenLink {
    pub seq: i64,
    pub problem: String,
}

/// Recomputes every hash in order and names the first broken record.
pub async fn verify_chain(store: &dyn AuditStore) -> anyhow::Result<ChainReport> {
    let mut prev = GENESIS.to_string();
    let mut expected_seq = 1;
    let mut records = 0;
    loop {
        let page = store.audit_page(expected_seq - 1, 1000).await?;
        if page.is_empty() {
            let head = store.audit_head().await?;
            let first_broken = (head >= expected_seq).then(|| BrokenLink {
                seq: expected_seq,
                problem: format!(
                    "records {expected_seq}..={head} are missing from the end of the chain"
                ),
            });
            return Ok(ChainReport {
                records,
                first_broken,
            });
        }
        for row in page {
            let broken = |problem: &str| ChainReport {
                records,
                first_broken: Some(BrokenLink {
                    seq: row.seq,
                    problem: problem.into(),
                }),
            };
            if row.seq != expected_seq {
                return Ok(ChainReport {
                    records,
                    first_broken: Some(BrokenLink {
                        seq: expected_seq,
                        problem: format!("record missing (next stored record is {})", row.seq),
                    }),
                });
            }
            if row.prev_hash != prev {
                return Ok(broken(
                    "prev_hash does not match the previous record's hash",
                ));
            }
            if chain_hash(&row.prev_hash, row.seq, &row.record) != row.hash {
                return Ok(broken("hash does not match the record's contents"));
            }
            prev = row.hash;
            expected_seq += 1;
            records += 1;
        }
    }
}

/// Where a request came from, copied into each of its audit records.
#[derive(Debug, Clone, Default)]
pub struct RequestMeta {
    pub request_id: Option<String>,
    pub peer: Option<String>,
    /// `METHOD path` of the endpoint (or, for ext_authz, of the checked request).
    pub route: String,
}

impl RequestMeta {
    pub fn fill(&self, rec: &mut AuditRecord) {
        rec.request_id = self.request_id.clone();
        rec.peer = self.peer.clone();
        if rec.route.is_none() {
            rec.route = Some(self.route.clone());
        }
    }
}
