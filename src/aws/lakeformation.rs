//! Lake Formation grants of each dataset's role, kept in step with the
//! registry (DESIGN.md §5.4).
//!
//! Which grants are Tessera's is decided by a ledger of what it granted
//! (kept by the caller, see [`crate::data::sync`]) and by the (principal,
//! resource) pairs the datasets name now:
//!
//! * On a pair a dataset names (managed), the principal holds exactly the
//!   desired permissions: missing ones are granted, extra ones revoked,
//!   whoever granted them.
//! * On a pair no dataset names any more (dataset deleted, its role, table
//!   or tags changed), only the permissions in the ledger are revoked.
//! * Anything else is not Tessera's: it is never touched, because Tessera
//!   cannot know who made it or why.
//!
//! A resource is a table (or every table of a database) or an LF-Tag
//! policy (`LFTagPolicy` with resource type `TABLE`: every table whose tags
//! match the expression). Permissions-with-grant-option are not managed
//! (Tessera never grants them, and leaves any that an administrator gave
//! alone).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_lakeformation::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_lakeformation::types::{
    BatchPermissionsFailureEntry, BatchPermissionsRequestEntry, DataLakePrincipal,
    LfTagPolicyResource, Resource, ResourceType, TableResource, TableWildcard,
};
use serde::{Deserialize, Serialize};

pub use super::session::Permission;
use super::AwsConfig;

/// One term of an LF-Tag expression: the tag `key` has one of `values`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LfTag {
    pub key: String,
    pub values: Vec<String>,
}

/// What a grant is on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LfResource {
    /// One table; `table: None` is every table of the database (Lake
    /// Formation's table wildcard), not the database itself.
    Table {
        database: String,
        table: Option<String>,
    },
    /// Every table whose LF-Tags match all terms (`LFTagPolicy`, resource
    /// type `TABLE`). Build with [`LfResource::tag_policy`] so that equal
    /// expressions compare equal.
    TagPolicy { expression: Vec<LfTag> },
}

impl LfResource {
    pub fn table(database: &str, table: Option<&str>) -> Self {
        LfResource::Table {
            database: database.into(),
            table: table.map(String::from),
        }
    }

    /// Terms sorted by key, values sorted and without repeats.
    pub fn tag_policy(mut expression: Vec<LfTag>) -> Self {
        for t in &mut expression {
            t.values.sort();
            t.values.dedup();
        }
        expression.sort();
        LfResource::TagPolicy { expression }
    }

    /// The ledger's name for the resource: canonical JSON.
    pub fn ledger_key(&self) -> String {
        serde_json::to_string(self).expect("resource serializes")
    }

    pub fn from_ledger_key(key: &str) -> Option<Self> {
        serde_json::from_str(key).ok()
    }
}

impl fmt::Display for LfResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LfResource::Table { database, table } => {
                write!(f, "{database}.{}", table.as_deref().unwrap_or("*"))
            }
            LfResource::TagPolicy { expression } => {
                let terms: Vec<String> = expression
                    .iter()
                    .map(|t| format!("{}={}", t.key, t.values.join("|")))
                    .collect();
                write!(f, "tables tagged {}", terms.join(" and "))
            }
        }
    }
}

/// Lake Formation permissions of one principal on one resource.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Grant {
    /// The dataset's IAM role.
    pub principal_arn: String,
    pub resource: LfResource,
    /// Lake Formation permission names (`SELECT`, `DESCRIBE`, …).
    pub permissions: Vec<String>,
}

/// What the registry says a role should hold.
pub type DesiredGrant = Grant;
/// What Lake Formation says a role holds.
pub type CurrentGrant = Grant;

/// What a sync does (or, on a dry run, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub grant: Vec<Grant>,
    pub revoke: Vec<Grant>,
    /// Ledger entries Lake Formation no longer holds (someone else revoked
    /// them) and no dataset wants: dropped from the ledger, no AWS call.
    pub forget: Vec<Grant>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.grant.is_empty() && self.revoke.is_empty() && self.forget.is_empty()
    }
}

/// Lake Formation permissions for dataset permissions: read is `SELECT` and
/// `DESCRIBE`, write adds `INSERT` and `DELETE`. Sorted, without repeats.
pub fn lf_permissions(perms: &[Permission]) -> Vec<String> {
    let mut out = BTreeSet::new();
    for p in perms {
        out.extend(["SELECT", "DESCRIBE"]);
        if *p == Permission::Write {
            out.extend(["INSERT", "DELETE"]);
        }
    }
    out.into_iter().map(String::from).collect()
}

/// Per-entry failures of a batch call: index into its entries, and why.
pub type Failures = Vec<(usize, String)>;

/// The few Lake Formation calls a sync needs.
#[async_trait]
pub trait LakeFormation: Send + Sync {
    /// What `principal_arn` holds on exactly this resource.
    async fn list_permissions(
        &self,
        principal_arn: &str,
        resource: &LfResource,
    ) -> Result<Vec<CurrentGrant>, String>;
    /// `Err`: the call failed as a whole and nothing was granted. `Ok`: the
    /// entries that failed; every other entry was granted.
    async fn batch_grant(&self, grants: &[Grant]) -> Result<Failures, String>;
    /// As [`LakeFormation::batch_grant`], revoking.
    async fn batch_revoke(&self, grants: &[Grant]) -> Result<Failures, String>;
}

/// A (principal, resource) pair.
pub type Pair = (String, LfResource);

pub fn pair(g: &Grant) -> Pair {
    (g.principal_arn.clone(), g.resource.clone())
}

fn by_pair<'a>(grants: impl Iterator<Item = &'a Grant>) -> BTreeMap<Pair, BTreeSet<String>> {
    let mut map: BTreeMap<Pair, BTreeSet<String>> = BTreeMap::new();
    for g in grants {
        map.entry(pair(g))
            .or_default()
            .extend(g.permissions.iter().cloned());
    }
    map
}

/// Every pair a sync has to read: those named in `desired` and those in the
/// ledger.
pub fn pairs(desired: &[DesiredGrant], ledger: &[Grant]) -> BTreeSet<Pair> {
    desired.iter().chain(ledger).map(pair).collect()
}

/// What to grant, revoke and forget (see the module doc): each pair in
/// `desired` ends up holding exactly its permissions, each other pair in
/// `ledger` loses what the ledger says Tessera granted, and nothing else
/// in `current` is touched. Deterministic: sorted by principal and
/// resource, with sorted permissions.
pub fn plan(desired: &[DesiredGrant], ledger: &[Grant], current: &[CurrentGrant]) -> Plan {
    let desired = by_pair(desired.iter());
    let ledger = by_pair(ledger.iter());
    let current = by_pair(current.iter());
    let empty = BTreeSet::new();
    let mut plan = Plan::default();
    let all: BTreeSet<&Pair> = desired.keys().chain(ledger.keys()).collect();
    for k in all {
        let have = current.get(k).unwrap_or(&empty);
        let ours = ledger.get(k).unwrap_or(&empty);
        let grant = |permissions: BTreeSet<String>| Grant {
            principal_arn: k.0.clone(),
            resource: k.1.clone(),
            permissions: permissions.into_iter().collect(),
        };
        let (missing, extra, forget): (BTreeSet<String>, BTreeSet<String>, BTreeSet<String>) =
            match desired.get(k) {
                Some(want) => (
                    want.difference(have).cloned().collect(),
                    have.difference(want).cloned().collect(),
                    ours.difference(have)
                        .filter(|p| !want.contains(*p))
                        .cloned()
                        .collect(),
                ),
                None => (
                    BTreeSet::new(),
                    ours.intersection(have).cloned().collect(),
                    ours.difference(have).cloned().collect(),
                ),
            };
        if !missing.is_empty() {
            plan.grant.push(grant(missing));
        }
        if !extra.is_empty() {
            plan.revoke.push(grant(extra));
        }
        if !forget.is_empty() {
            plan.forget.push(grant(forget));
        }
    }
    plan
}

/// What Lake Formation holds on each of `pairs`.
pub async fn current(
    lf: &dyn LakeFormation,
    pairs: &BTreeSet<Pair>,
) -> Result<Vec<CurrentGrant>, String> {
    let mut out = Vec::new();
    for (principal, resource) in pairs {
        out.extend(lf.list_permissions(principal, resource).await?);
    }
    Ok(out)
}

/// Lake Formation through the AWS SDK (same `[aws]` settings, timeout and
/// retries as STS).
#[derive(Clone, Debug)]
pub struct AwsLakeFormation {
    client: aws_sdk_lakeformation::Client,
}

/// Most entries Lake Formation takes in one batch call.
pub const BATCH_MAX: usize = 20;

impl AwsLakeFormation {
    pub async fn new(cfg: &AwsConfig) -> AwsLakeFormation {
        Self::from_sdk_config(&super::sdk_config(cfg).await)
    }

    pub fn from_sdk_config(sdk: &SdkConfig) -> AwsLakeFormation {
        AwsLakeFormation {
            client: aws_sdk_lakeformation::Client::new(sdk),
        }
    }

    /// Every permission in the catalog, unfiltered (`ListPermissions` with
    /// neither principal nor resource), as (principal, resource,
    /// permissions) for the plain table and LF-Tag policy grants.
    pub async fn list_all_permissions(&self) -> Result<Vec<CurrentGrant>, String> {
        self.list(None, None).await
    }

    async fn list(
        &self,
        principal_arn: Option<&str>,
        resource: Option<&LfResource>,
    ) -> Result<Vec<CurrentGrant>, String> {
        let mut out = Vec::new();
        let mut next: Option<String> = None;
        loop {
            // An LF-Tag policy is listed like a table: principal and the
            // `LFTagPolicy` resource, then matched here by expression.
            let page = self
                .client
                .list_permissions()
                .set_principal(principal_arn.map(principal))
                .set_resource(resource.map(sdk_resource).transpose()?)
                .set_next_token(next.take())
                .send()
                .await
                .map_err(|e| call_error("ListPermissions", &e))?;
            for p in page.principal_resource_permissions() {
                let (Some(who), Some(what)) = (
                    p.principal()
                        .and_then(|p| p.data_lake_principal_identifier()),
                    p.resource().and_then(our_resource),
                ) else {
                    continue;
                };
                out.push(Grant {
                    principal_arn: who.to_string(),
                    resource: what,
                    permissions: p
                        .permissions()
                        .iter()
                        .map(|p| p.as_str().to_string())
                        .collect(),
                });
            }
            match page.next_token() {
                Some(token) if !token.is_empty() => next = Some(token.to_string()),
                _ => break,
            }
        }
        Ok(out)
    }

    async fn batch(&self, revoke: bool, grants: &[Grant]) -> Result<Failures, String> {
        let op = if revoke {
            "BatchRevokePermissions"
        } else {
            "BatchGrantPermissions"
        };
        let mut failed = Vec::new();
        for (n, chunk) in grants.chunks(BATCH_MAX).enumerate() {
            let offset = n * BATCH_MAX;
            let entries = Some(entries(chunk)?);
            let out = if revoke {
                self.client
                    .batch_revoke_permissions()
                    .set_entries(entries)
                    .send()
                    .await
                    .map(|o| o.failures().to_vec())
                    .map_err(|e| call_error(op, &e))
            } else {
                self.client
                    .batch_grant_permissions()
                    .set_entries(entries)
                    .send()
                    .await
                    .map(|o| o.failures().to_vec())
                    .map_err(|e| call_error(op, &e))
            };
            let failures = match out {
                Ok(f) => f,
                // A later chunk failing as a whole: the earlier chunks were
                // applied, so this one and the rest (not tried) are
                // reported entry by entry.
                Err(why) if offset > 0 => {
                    failed.extend((offset..grants.len()).map(|i| (i, why.clone())));
                    break;
                }
                Err(why) => return Err(why),
            };
            failed.extend(entry_failures(op, &failures, chunk.len(), offset));
        }
        Ok(failed)
    }
}

fn principal(arn: &str) -> DataLakePrincipal {
    DataLakePrincipal::builder()
        .data_lake_principal_identifier(arn)
        .build()
}

fn sdk_resource(resource: &LfResource) -> Result<Resource, String> {
    match resource {
        LfResource::Table { database, table } => {
            let mut t = TableResource::builder().database_name(database);
            t = match table {
                Some(name) => t.name(name),
                None => t.table_wildcard(TableWildcard::builder().build()),
            };
            let t = t.build().map_err(|e| e.to_string())?;
            Ok(Resource::builder().table(t).build())
        }
        LfResource::TagPolicy { expression } => {
            let mut p = LfTagPolicyResource::builder().resource_type(ResourceType::Table);
            for term in expression {
                p = p.expression(
                    aws_sdk_lakeformation::types::LfTag::builder()
                        .tag_key(&term.key)
                        .set_tag_values(Some(term.values.clone()))
                        .build()
                        .map_err(|e| e.to_string())?,
                );
            }
            let p = p.build().map_err(|e| e.to_string())?;
            Ok(Resource::builder().lf_tag_policy(p).build())
        }
    }
}

/// The resource of a listed grant, when it is of a kind Tessera manages: a
/// plain table (by name or wildcard) or a `TABLE` LF-Tag policy given by
/// expression. Column-level grants, named expressions and the rest are
/// not Tessera's.
fn our_resource(r: &Resource) -> Option<LfResource> {
    if let Some(t) = r.table() {
        return match (t.name(), t.table_wildcard()) {
            (Some(name), None) => Some(LfResource::table(t.database_name(), Some(name))),
            (None, Some(_)) => Some(LfResource::table(t.database_name(), None)),
            _ => None,
        };
    }
    let p = r.lf_tag_policy()?;
    if p.resource_type() != &ResourceType::Table || p.expression().is_empty() {
        return None;
    }
    Some(LfResource::tag_policy(
        p.expression()
            .iter()
            .map(|t| LfTag {
                key: t.tag_key().to_string(),
                values: t.tag_values().to_vec(),
            })
            .collect(),
    ))
}

fn call_error<E>(op: &str, e: &SdkError<E>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match e {
        SdkError::ServiceError(s) => match s.err().code() {
            Some(code) => format!(
                "Lake Formation {op}: {code}: {}",
                s.err().message().unwrap_or("")
            ),
            None => format!("Lake Formation {op}: HTTP {}", s.raw().status().as_u16()),
        },
        _ => format!("Lake Formation {op}: {}", DisplayErrorContext(e)),
    }
}

/// The failed entries of one chunk, by index into the whole call. An entry
/// id that does not name one of the chunk's entries fails them all: what
/// was applied is then unknown, and unknown must not read as granted.
fn entry_failures(
    op: &str,
    failures: &[BatchPermissionsFailureEntry],
    len: usize,
    offset: usize,
) -> Failures {
    let mut out = BTreeMap::new();
    for f in failures {
        let (code, msg) = f
            .error()
            .map(|e| {
                (
                    e.error_code().unwrap_or(""),
                    e.error_message().unwrap_or(""),
                )
            })
            .unwrap_or(("", ""));
        let why = format!("Lake Formation {op}: {code} {msg}")
            .trim_end()
            .to_string();
        match f
            .request_entry()
            .and_then(|e| e.id().parse::<usize>().ok())
            .filter(|i| *i < len)
        {
            Some(i) => {
                out.insert(offset + i, why);
            }
            None => {
                for i in 0..len {
                    out.entry(offset + i).or_insert_with(|| why.clone());
                }
            }
        }
    }
    out.into_iter().collect()
}

fn entries(grants: &[Grant]) -> Result<Vec<BatchPermissionsRequestEntry>, String> {
    grants
        .iter()
        .enumerate()
        .map(|(i, g)| {
            BatchPermissionsRequestEntry::builder()
                .id(i.to_string())
                .principal(principal(&g.principal_arn))
                .resource(sdk_resource(&g.resource)?)
                .set_permissions(Some(
                    g.permissions.iter().map(|p| p.as_str().into()).collect(),
                ))
                .build()
                .map_err(|e| e.to_string())
        })
        .collect()
}

#[async_trait]
impl LakeFormation for AwsLakeFormation {
    async fn list_permissions(
        &self,
        principal_arn: &str,
        resource: &LfResource,
    ) -> Result<Vec<CurrentGrant>, String> {
        // Lake Formation answers grants on related resources too (the
        // database, column-level grants): keep exactly this pair.
        let mut out = self.list(Some(principal_arn), Some(resource)).await?;
        out.retain(|g| g.principal_arn == principal_arn && g.resource == *resource);
        Ok(out)
    }

    async fn batch_grant(&self, grants: &[Grant]) -> Result<Failures, String> {
        self.batch(false, grants).await
    }

    async fn batch_revoke(&self, grants: &[Grant]) -> Result<Failures, String> {
        self.batch(true, grants).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(principal: &str, table: Option<&str>, perms: &[&str]) -> Grant {
        Grant {
            principal_arn: principal.into(),
            resource: LfResource::table("sales", table),
            permissions: perms.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn permissions_for_read_and_write() {
        assert_eq!(lf_permissions(&[Permission::Read]), ["DESCRIBE", "SELECT"]);
        assert_eq!(
            lf_permissions(&[Permission::Write]),
            ["DELETE", "DESCRIBE", "INSERT", "SELECT"]
        );
        assert_eq!(
            lf_permissions(&[Permission::Read, Permission::Write]),
            lf_permissions(&[Permission::Write])
        );
        assert!(lf_permissions(&[]).is_empty());
    }

    #[test]
    fn plan_grants_missing_and_revokes_extra_on_managed_pairs_only() {
        let desired = [
            g("role/a", Some("orders"), &["SELECT", "DESCRIBE"]),
            g("role/a", None, &["SELECT"]),
        ];
        let current = [
            g("role/a", Some("orders"), &["SELECT", "INSERT"]),
            g("role/a", Some("orders"), &["ALTER"]),
            // Not named in desired nor in the ledger: left alone.
            g("role/a", Some("customers"), &["SELECT", "DROP"]),
            g("role/b", Some("orders"), &["SELECT"]),
        ];
        let p = plan(&desired, &[], &current);
        assert_eq!(
            p.grant,
            [
                g("role/a", None, &["SELECT"]),
                g("role/a", Some("orders"), &["DESCRIBE"]),
            ]
        );
        assert_eq!(
            p.revoke,
            [g("role/a", Some("orders"), &["ALTER", "INSERT"])]
        );
        assert!(p.forget.is_empty());
    }

    #[test]
    fn plan_is_empty_when_in_step() {
        let desired = [g("r", Some("t"), &["SELECT", "DESCRIBE"])];
        let current = [g("r", Some("t"), &["DESCRIBE", "SELECT"])];
        assert!(plan(&desired, &desired, &current).is_empty());
    }

    #[test]
    fn unmanaged_pairs_lose_only_what_the_ledger_says_tessera_granted() {
        let ledger = [g("r", Some("t"), &["DESCRIBE", "SELECT"])];
        // SELECT is Tessera's and still held; DROP is someone else's;
        // DESCRIBE was revoked by someone else meanwhile.
        let current = [g("r", Some("t"), &["DROP", "SELECT"])];
        let p = plan(&[], &ledger, &current);
        assert!(p.grant.is_empty());
        assert_eq!(p.revoke, [g("r", Some("t"), &["SELECT"])]);
        assert_eq!(p.forget, [g("r", Some("t"), &["DESCRIBE"])]);
        // No ledger, nothing desired: not Tessera's.
        assert!(plan(&[], &[], &current).is_empty());
    }

    #[test]
    fn a_managed_pair_regrants_what_someone_revoked_and_forgets_what_it_no_longer_wants() {
        let desired = [g("r", Some("t"), &["DESCRIBE", "SELECT"])];
        let ledger = [g(
            "r",
            Some("t"),
            &["DELETE", "DESCRIBE", "INSERT", "SELECT"],
        )];
        let current = [g("r", Some("t"), &["DESCRIBE", "INSERT"])];
        let p = plan(&desired, &ledger, &current);
        assert_eq!(p.grant, [g("r", Some("t"), &["SELECT"])]);
        assert_eq!(p.revoke, [g("r", Some("t"), &["INSERT"])]);
        assert_eq!(p.forget, [g("r", Some("t"), &["DELETE"])]);
    }

    #[test]
    fn empty_desired_permissions_revoke_everything_on_that_pair() {
        let p = plan(
            &[g("r", Some("t"), &[])],
            &[],
            &[g("r", Some("t"), &["SELECT"])],
        );
        assert!(p.grant.is_empty());
        assert_eq!(p.revoke, [g("r", Some("t"), &["SELECT"])]);
    }

    #[test]
    fn duplicate_desired_entries_are_merged() {
        let p = plan(
            &[
                g("r", Some("t"), &["SELECT"]),
                g("r", Some("t"), &["INSERT", "SELECT"]),
            ],
            &[],
            &[],
        );
        assert_eq!(p.grant, [g("r", Some("t"), &["INSERT", "SELECT"])]);
    }

    #[test]
    fn tag_policies_compare_by_meaning_and_round_trip_through_the_ledger_key() {
        let tag = |k: &str, v: &[&str]| LfTag {
            key: k.into(),
            values: v.iter().map(|s| s.to_string()).collect(),
        };
        let a = LfResource::tag_policy(vec![tag("team", &["b", "a"]), tag("domain", &["sales"])]);
        let b = LfResource::tag_policy(vec![
            tag("domain", &["sales"]),
            tag("team", &["a", "b", "a"]),
        ]);
        assert_eq!(a, b);
        assert_eq!(a.ledger_key(), b.ledger_key());
        assert_eq!(
            LfResource::from_ledger_key(&a.ledger_key()),
            Some(a.clone())
        );
        assert_eq!(a.to_string(), "tables tagged domain=sales and team=a|b");
        let t = LfResource::table("sales", None);
        assert_eq!(
            LfResource::from_ledger_key(&t.ledger_key()),
            Some(t.clone())
        );
        assert_eq!(t.to_string(), "sales.*");
    }

    #[test]
    fn an_unknown_failure_entry_fails_the_whole_chunk() {
        let f = BatchPermissionsFailureEntry::builder().build();
        let out = entry_failures("BatchGrantPermissions", &[f], 2, 20);
        assert_eq!(out.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [20, 21]);
    }
}
