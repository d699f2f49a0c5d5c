//! Keeping Lake Formation in step with the registry: each dataset's role
//! holds exactly the permissions the dataset allows on its table. Only the
//! (role, table) pairs of datasets are managed; grants on anything else
//! were not made by Tessera and are left alone. Every change is audited.

use serde::Serialize;

use crate::audit::{AuditLog, AuditRecord, Decision, Event};
use crate::aws::lakeformation::{self, lf_permissions, DesiredGrant, Grant, LakeFormation};
use crate::store::Dataset;

/// What a sync did (or, on a dry run, would do).
#[derive(Debug, Serialize)]
pub struct SyncReport {
    pub dry_run: bool,
    pub grant: Vec<GrantView>,
    pub revoke: Vec<GrantView>,
    /// Datasets defined by an LF-Tag expression, which this sync does not
    /// manage (their tag grants are kept by the operator).
    pub skipped: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct GrantView {
    pub principal: String,
    pub database: String,
    pub table: Option<String>,
    pub permissions: Vec<String>,
}

impl From<&Grant> for GrantView {
    fn from(g: &Grant) -> Self {
        Self {
            principal: g.principal_arn.clone(),
            database: g.database.clone(),
            table: g.table.clone(),
            permissions: g.permissions.clone(),
        }
    }
}

/// What each table dataset's role should hold.
pub fn desired(datasets: &[Dataset]) -> (Vec<DesiredGrant>, Vec<String>) {
    let mut grants = Vec::new();
    let mut skipped = Vec::new();
    for d in datasets {
        let Some(table) = &d.glue_table else {
            skipped.push(d.id.clone());
            continue;
        };
        grants.push(Grant {
            principal_arn: d.role_arn.clone(),
            database: d.glue_database.clone(),
            table: Some(table.clone()),
            permissions: lf_permissions(&d.permissions),
        });
    }
    (grants, skipped)
}

/// Plans and (unless `dry_run`) applies, then audits each change.
pub async fn run(
    datasets: &[Dataset],
    lf: &dyn LakeFormation,
    audit: &AuditLog,
    dry_run: bool,
    now_ms: i64,
) -> anyhow::Result<SyncReport> {
    let (want, skipped) = desired(datasets);
    let plan = lakeformation::sync(lf, &want, dry_run)
        .await
        .map_err(|e| anyhow::anyhow!("Lake Formation: {e}"))?;
    if !dry_run {
        let changes = plan
            .grant
            .iter()
            .map(|g| ("grant", g))
            .chain(plan.revoke.iter().map(|g| ("revoke", g)));
        for (what, g) in changes {
            let table = g.table.as_deref().unwrap_or("*");
            let mut rec = AuditRecord::new(
                now_ms,
                Event::LakeFormationSync,
                Decision::Allow,
                format!(
                    "lakeformation {what} {} on {}.{table}",
                    g.permissions.join(","),
                    g.database
                ),
            );
            rec.role_arn = Some(g.principal_arn.clone());
            rec.dataset = datasets
                .iter()
                .find(|d| {
                    d.role_arn == g.principal_arn
                        && d.glue_database == g.database
                        && d.glue_table == g.table
                })
                .map(|d| d.id.clone());
            audit
                .record(rec)
                .await
                .map_err(|e| anyhow::anyhow!("auditing a Lake Formation change: {e}"))?;
        }
    }
    Ok(SyncReport {
        dry_run,
        grant: plan.grant.iter().map(GrantView::from).collect(),
        revoke: plan.revoke.iter().map(GrantView::from).collect(),
        skipped,
    })
}
