//! Lake Formation grants of each dataset's role, kept in step with the
//! registry (DESIGN.md §5.4).
//!
//! Only the (principal, table) pairs Tessera is told about are managed: on
//! those, missing permissions are granted and extra ones revoked. Grants on
//! any other principal or table are never touched, because Tessera cannot
//! know who made them or why. A desired grant with no permissions therefore
//! means "this role should hold nothing on this table" (a dataset taken
//! away), which is different from not naming the pair at all.
//!
//! Permissions-with-grant-option are not managed (Tessera never grants
//! them, and leaves any that an administrator gave alone).

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_lakeformation::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_lakeformation::types::{
    BatchPermissionsFailureEntry, BatchPermissionsRequestEntry, DataLakePrincipal, Resource,
    TableResource, TableWildcard,
};

pub use super::session::Permission;
use super::AwsConfig;

/// Lake Formation permissions on one table of one principal.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Grant {
    /// The dataset's IAM role.
    pub principal_arn: String,
    pub database: String,
    /// `None`: every table of the database (Lake Formation's table
    /// wildcard), not the database itself.
    pub table: Option<String>,
    /// Lake Formation permission names (`SELECT`, `DESCRIBE`, …).
    pub permissions: Vec<String>,
}

/// What the registry says a role should hold.
pub type DesiredGrant = Grant;
/// What Lake Formation says a role holds.
pub type CurrentGrant = Grant;

/// What [`sync`] does (or, on a dry run, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub grant: Vec<Grant>,
    pub revoke: Vec<Grant>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.grant.is_empty() && self.revoke.is_empty()
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

/// The few Lake Formation calls [`sync`] needs.
#[async_trait]
pub trait LakeFormation: Send + Sync {
    /// What `principal_arn` holds on exactly this table (`table: None`: the
    /// table wildcard of `database`).
    async fn list_permissions(
        &self,
        principal_arn: &str,
        database: &str,
        table: Option<&str>,
    ) -> Result<Vec<CurrentGrant>, String>;
    async fn batch_grant(&self, grants: &[Grant]) -> Result<(), String>;
    async fn batch_revoke(&self, grants: &[Grant]) -> Result<(), String>;
}

type Key = (String, String, Option<String>);

fn key(g: &Grant) -> Key {
    (g.principal_arn.clone(), g.database.clone(), g.table.clone())
}

fn by_key<'a>(grants: impl Iterator<Item = &'a Grant>) -> BTreeMap<Key, BTreeSet<String>> {
    let mut map: BTreeMap<Key, BTreeSet<String>> = BTreeMap::new();
    for g in grants {
        map.entry(key(g))
            .or_default()
            .extend(g.permissions.iter().cloned());
    }
    map
}

/// What to grant and revoke so that each (principal, table) pair named in
/// `desired` holds exactly its desired permissions. Entries of `current` on
/// other pairs are ignored. Deterministic: sorted by principal, database,
/// table, with sorted permissions.
pub fn plan(desired: &[DesiredGrant], current: &[CurrentGrant]) -> Plan {
    let desired = by_key(desired.iter());
    let current = by_key(current.iter().filter(|g| desired.contains_key(&key(g))));
    let empty = BTreeSet::new();
    let mut plan = Plan::default();
    for (k, want) in &desired {
        let have = current.get(k).unwrap_or(&empty);
        let grant = |permissions: Vec<String>| Grant {
            principal_arn: k.0.clone(),
            database: k.1.clone(),
            table: k.2.clone(),
            permissions,
        };
        let missing: Vec<String> = want.difference(have).cloned().collect();
        let extra: Vec<String> = have.difference(want).cloned().collect();
        if !missing.is_empty() {
            plan.grant.push(grant(missing));
        }
        if !extra.is_empty() {
            plan.revoke.push(grant(extra));
        }
    }
    plan
}

/// Reads the current permissions of every pair named in `desired`, plans,
/// and (unless `dry_run`) grants what is missing, then revokes what is
/// extra: granting first, so a permission that stays is never briefly
/// gone. Returns the plan.
pub async fn sync(
    lf: &dyn LakeFormation,
    desired: &[DesiredGrant],
    dry_run: bool,
) -> Result<Plan, String> {
    let pairs: BTreeSet<Key> = desired.iter().map(key).collect();
    let mut current = Vec::new();
    for (principal, database, table) in &pairs {
        current.extend(
            lf.list_permissions(principal, database, table.as_deref())
                .await?,
        );
    }
    let plan = plan(desired, &current);
    if !dry_run {
        if !plan.grant.is_empty() {
            lf.batch_grant(&plan.grant).await?;
        }
        if !plan.revoke.is_empty() {
            lf.batch_revoke(&plan.revoke).await?;
        }
    }
    Ok(plan)
}

/// Lake Formation through the AWS SDK (same `[aws]` settings, timeout and
/// retries as STS).
#[derive(Clone, Debug)]
pub struct AwsLakeFormation {
    client: aws_sdk_lakeformation::Client,
}

/// Most entries Lake Formation takes in one batch call.
const BATCH_MAX: usize = 20;

impl AwsLakeFormation {
    pub async fn new(cfg: &AwsConfig) -> AwsLakeFormation {
        Self::from_sdk_config(&super::sdk_config(cfg).await)
    }

    pub fn from_sdk_config(sdk: &SdkConfig) -> AwsLakeFormation {
        AwsLakeFormation {
            client: aws_sdk_lakeformation::Client::new(sdk),
        }
    }
}

fn principal(arn: &str) -> DataLakePrincipal {
    DataLakePrincipal::builder()
        .data_lake_principal_identifier(arn)
        .build()
}

fn table_resource(database: &str, table: Option<&str>) -> Result<Resource, String> {
    let mut t = TableResource::builder().database_name(database);
    t = match table {
        Some(name) => t.name(name),
        None => t.table_wildcard(TableWildcard::builder().build()),
    };
    let t = t.build().map_err(|e| e.to_string())?;
    Ok(Resource::builder().table(t).build())
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

fn failures(op: &str, failures: &[BatchPermissionsFailureEntry]) -> Result<(), String> {
    if failures.is_empty() {
        return Ok(());
    }
    let text: Vec<String> = failures
        .iter()
        .map(|f| {
            let entry = f.request_entry().map(|e| e.id()).unwrap_or("?");
            let (code, msg) = f
                .error()
                .map(|e| {
                    (
                        e.error_code().unwrap_or(""),
                        e.error_message().unwrap_or(""),
                    )
                })
                .unwrap_or(("", ""));
            format!("entry {entry}: {code} {msg}")
        })
        .collect();
    Err(format!("Lake Formation {op}: {}", text.join("; ")))
}

fn entries(grants: &[Grant]) -> Result<Vec<BatchPermissionsRequestEntry>, String> {
    grants
        .iter()
        .enumerate()
        .map(|(i, g)| {
            BatchPermissionsRequestEntry::builder()
                .id(i.to_string())
                .principal(principal(&g.principal_arn))
                .resource(table_resource(&g.database, g.table.as_deref())?)
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
        database: &str,
        table: Option<&str>,
    ) -> Result<Vec<CurrentGrant>, String> {
        let mut out = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let page = self
                .client
                .list_permissions()
                .principal(principal(principal_arn))
                .resource(table_resource(database, table)?)
                .set_next_token(next.take())
                .send()
                .await
                .map_err(|e| call_error("ListPermissions", &e))?;
            for p in page.principal_resource_permissions() {
                // Only plain table grants on exactly this pair: column-level
                // grants and anything else are not Tessera's to manage.
                let Some(t) = p.resource().and_then(|r| r.table()) else {
                    continue;
                };
                let same_principal = p
                    .principal()
                    .and_then(|p| p.data_lake_principal_identifier())
                    == Some(principal_arn);
                let same_table = match table {
                    Some(name) => t.name() == Some(name),
                    None => t.table_wildcard().is_some(),
                };
                if !same_principal || t.database_name() != database || !same_table {
                    continue;
                }
                out.push(Grant {
                    principal_arn: principal_arn.to_string(),
                    database: database.to_string(),
                    table: table.map(String::from),
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

    async fn batch_grant(&self, grants: &[Grant]) -> Result<(), String> {
        for chunk in grants.chunks(BATCH_MAX) {
            let out = self
                .client
                .batch_grant_permissions()
                .set_entries(Some(entries(chunk)?))
                .send()
                .await
                .map_err(|e| call_error("BatchGrantPermissions", &e))?;
            failures("BatchGrantPermissions", out.failures())?;
        }
        Ok(())
    }

    async fn batch_revoke(&self, grants: &[Grant]) -> Result<(), String> {
        for chunk in grants.chunks(BATCH_MAX) {
            let out = self
                .client
                .batch_revoke_permissions()
                .set_entries(Some(entries(chunk)?))
                .send()
                .await
                .map_err(|e| call_error("BatchRevokePermissions", &e))?;
            failures("BatchRevokePermissions", out.failures())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(principal: &str, table: Option<&str>, perms: &[&str]) -> Grant {
        Grant {
            principal_arn: principal.into(),
            database: "sales".into(),
            table: table.map(String::from),
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
            // Not named in desired: left alone.
            g("role/a", Some("customers"), &["SELECT", "DROP"]),
            g("role/b", Some("orders"), &["SELECT"]),
        ];
        let p = plan(&desired, &current);
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
    }

    #[test]
    fn plan_is_empty_when_in_step() {
        let desired = [g("r", Some("t"), &["SELECT", "DESCRIBE"])];
        let current = [g("r", Some("t"), &["DESCRIBE", "SELECT"])];
        assert!(plan(&desired, &current).is_empty());
    }

    #[test]
    fn empty_desired_permissions_revoke_everything_on_that_pair() {
        let p = plan(&[g("r", Some("t"), &[])], &[g("r", Some("t"), &["SELECT"])]);
        assert!(p.grant.is_empty());
        assert_eq!(p.revoke, [g("r", Some("t"), &["SELECT"])]);
        assert!(plan(&[], &[g("r", Some("t"), &["SELECT"])]).is_empty());
    }

    #[test]
    fn duplicate_desired_entries_are_merged() {
        let p = plan(
            &[
                g("r", Some("t"), &["SELECT"]),
                g("r", Some("t"), &["INSERT", "SELECT"]),
            ],
            &[],
        );
        assert_eq!(p.grant, [g("r", Some("t"), &["INSERT", "SELECT"])]);
    }
}
