//! Keeping Lake Formation in step with the registry: each dataset's role
//! holds exactly the permissions the dataset allows on its table or LF-Tag
//! expression.
//!
//! Tessera keeps a ledger of the permissions it granted
//! ([`LakeFormationStore`]). A (role, resource) pair that a dataset names
//! is managed: it is brought to exactly the dataset's permissions (so a
//! narrowed dataset loses the rest). A pair no dataset names any more (the
//! dataset was deleted, or its role, table or tags changed) loses the
//! permissions the ledger holds for it, and nothing else. Grants that are
//! neither in the ledger nor on a managed pair were made by someone else
//! and are left alone.
//!
//! Changes are applied one batch at a time (grants first, so a permission
//! that stays is never briefly gone). A grant enters the ledger just before
//! it is asked for and leaves it again if Lake Formation refused it; an
//! entry is removed only once its revoke was accepted. Every change of the
//! batch is then audited: allowed when applied, denied with the reason when
//! it failed. Dropping ledger entries someone else already revoked
//! (`forget`) makes no AWS call and is in the report, not the audit log.
//! The first failure stops the sync, so what was done before it is on
//! record and nothing after it is tried.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::audit::{AuditLog, AuditRecord, Decision, Event};
use crate::aws::lakeformation::{
    self, lf_permissions, DesiredGrant, Grant, LakeFormation, LfResource, LfTag, Pair, BATCH_MAX,
};
use crate::clock::Clock;
use crate::store::{Dataset, LakeFormationStore, LeaseStore, LfLedgerEntry, Store};

/// The lease that elects the one replica running the background sync.
pub const LEASE: &str = "lakeformation_sync";

/// The [`LEASE`] a sync holds while it applies changes. [`run`] renews it
/// before each batch, so a sync that outlived its lease (slow AWS, a long
/// plan) stops rather than apply changes beside the replica that took over.
pub struct Held<'a> {
    pub store: &'a dyn LeaseStore,
    pub holder: &'a str,
    pub ttl_secs: i64,
    pub clock: &'a dyn Clock,
}

impl Held<'_> {
    async fn renew(&self) -> anyhow::Result<bool> {
        self.store
            .take_lease(LEASE, self.holder, self.clock.now(), self.ttl_secs)
            .await
    }
}

/// What a sync did (or, on a dry run, would do).
#[derive(Debug, Serialize)]
pub struct SyncReport {
    pub dry_run: bool,
    pub grant: Vec<GrantView>,
    pub revoke: Vec<GrantView>,
    /// Ledger entries for permissions someone else already revoked.
    pub forget: Vec<GrantView>,
    /// Datasets whose LF-Tag expression cannot be read: not synced.
    pub skipped: Vec<String>,
    /// The first failure, when a change failed: the plan's changes before
    /// it were applied, it and the rest were not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct GrantView {
    pub principal: String,
    #[serde(flatten)]
    pub resource: LfResource,
    pub permissions: Vec<String>,
    /// The dataset the pair is (or was) for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
}

/// What one dataset's role should hold; `None` when its LF-Tag expression
/// cannot be read.
pub fn desired_grant(d: &Dataset) -> Option<DesiredGrant> {
    let resource = match (&d.glue_table, &d.lf_tag_expression) {
        (Some(table), _) => LfResource::table(&d.glue_database, Some(table)),
        (None, Some(expr)) => match serde_json::from_value::<Vec<LfTag>>(expr.clone()) {
            Ok(terms) if !terms.is_empty() => LfResource::tag_policy(terms),
            _ => return None,
        },
        (None, None) => return None,
    };
    Some(Grant {
        principal_arn: d.role_arn.clone(),
        resource,
        permissions: lf_permissions(&d.permissions),
    })
}

/// The ledger as grants, with the dataset each pair was granted for.
fn ledger_grants(rows: &[LfLedgerEntry]) -> anyhow::Result<(Vec<Grant>, BTreeMap<Pair, String>)> {
    let mut grants = Vec::new();
    let mut datasets = BTreeMap::new();
    for r in rows {
        let resource = LfResource::from_ledger_key(&r.resource).ok_or_else(|| {
            anyhow::anyhow!(
                "Lake Formation ledger: unreadable resource {:?}",
                r.resource
            )
        })?;
        if let Some(d) = &r.dataset_id {
            datasets.insert((r.principal_arn.clone(), resource.clone()), d.clone());
        }
        grants.push(Grant {
            principal_arn: r.principal_arn.clone(),
            resource,
            permissions: vec![r.permission.clone()],
        });
    }
    Ok((grants, datasets))
}

fn ledger_entries(
    grants: &[&Grant],
    owner: &dyn Fn(&Pair) -> Option<String>,
    now: i64,
) -> Vec<LfLedgerEntry> {
    grants
        .iter()
        .flat_map(|g| {
            let dataset_id = owner(&lakeformation::pair(g));
            g.permissions.iter().map(move |p| LfLedgerEntry {
                principal_arn: g.principal_arn.clone(),
                resource: g.resource.ledger_key(),
                permission: p.clone(),
                dataset_id: dataset_id.clone(),
                granted_at: now,
            })
        })
        .collect()
}

/// Plans from the datasets, the ledger and what Lake Formation holds, and
/// (unless `dry_run`) applies batch by batch as the module doc says.
/// `Err` when nothing could be planned or the ledger or audit log cannot
/// be written; a change Lake Formation refused is in
/// [`SyncReport::error`].
pub async fn run(
    datasets: &[Dataset],
    ledger: &dyn LakeFormationStore,
    lf: &dyn LakeFormation,
    audit: &AuditLog,
    dry_run: bool,
    now_ms: i64,
    lease: Option<&Held<'_>>,
) -> anyhow::Result<SyncReport> {
    let mut want = Vec::new();
    let mut skipped = Vec::new();
    let mut wanted_for = BTreeMap::new();
    for d in datasets {
        match desired_grant(d) {
            Some(g) => {
                wanted_for
                    .entry(lakeformation::pair(&g))
                    .or_insert_with(|| d.id.clone());
                want.push(g);
            }
            None => skipped.push(d.id.clone()),
        }
    }
    let (ours, granted_for) = ledger_grants(&ledger.lf_grants().await?)?;
    let pairs = lakeformation::pairs(&want, &ours);
    let current = lakeformation::current(lf, &pairs)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let plan = lakeformation::plan(&want, &ours, &current);

    let owner =
        |p: &Pair| -> Option<String> { wanted_for.get(p).or_else(|| granted_for.get(p)).cloned() };
    let view = |g: &Grant| GrantView {
        principal: g.principal_arn.clone(),
        resource: g.resource.clone(),
        permissions: g.permissions.clone(),
        dataset: owner(&lakeformation::pair(g)),
    };
    let mut report = SyncReport {
        dry_run,
        grant: plan.grant.iter().map(view).collect(),
        revoke: plan.revoke.iter().map(view).collect(),
        forget: plan.forget.iter().map(view).collect(),
        skipped,
        error: None,
    };
    if dry_run {
        return Ok(report);
    }

    let now = now_ms.div_euclid(1000);
    if !plan.forget.is_empty() {
        let forget: Vec<&Grant> = plan.forget.iter().collect();
        ledger
            .remove_lf_grants(&ledger_entries(&forget, &owner, now))
            .await?;
    }
    for (what, list) in [("grant", &plan.grant), ("revoke", &plan.revoke)] {
        for chunk in list.chunks(BATCH_MAX) {
            if let Some(held) = lease {
                if !held.renew().await? {
                    report.error =
                        Some("the sync lease passed to another holder: stopped before it".into());
                    return Ok(report);
                }
            }
            // A grant is written to the ledger *before* it is asked for: a
            // call that times out after Lake Formation applied it, or a
            // ledger write failing after it, would otherwise leave a grant
            // of Tessera's that the ledger does not know, never revoked.
            // A row for a grant that did not happen is harmless: the next
            // sync finds it not held and forgets it.
            if what == "grant" {
                let all: Vec<&Grant> = chunk.iter().collect();
                ledger
                    .record_lf_grants(&ledger_entries(&all, &owner, now))
                    .await?;
            }
            let result = if what == "grant" {
                lf.batch_grant(chunk).await
            } else {
                lf.batch_revoke(chunk).await
            };
            // Whether Lake Formation answered at all: if not, whether the
            // grants happened is unknown and their ledger rows stay.
            let answered = result.is_ok();
            let failed: BTreeMap<usize, String> = match result {
                Ok(f) => f.into_iter().collect(),
                Err(e) => (0..chunk.len()).map(|i| (i, e.clone())).collect(),
            };
            let recorded = if what == "grant" {
                // Entries Lake Formation refused one by one did not happen.
                let refused: Vec<&Grant> = chunk
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| failed.contains_key(i))
                    .map(|(_, g)| g)
                    .collect();
                if answered {
                    ledger
                        .remove_lf_grants(&ledger_entries(&refused, &owner, now))
                        .await
                } else {
                    Ok(())
                }
            } else {
                let done: Vec<&Grant> = chunk
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !failed.contains_key(i))
                    .map(|(_, g)| g)
                    .collect();
                ledger
                    .remove_lf_grants(&ledger_entries(&done, &owner, now))
                    .await
            };
            for (i, g) in chunk.iter().enumerate() {
                let change = format!(
                    "lakeformation {what} {} on {}",
                    g.permissions.join(","),
                    g.resource
                );
                let (decision, reason) = match failed.get(&i) {
                    None => (Decision::Allow, change),
                    Some(why) => (Decision::Deny, format!("{change} failed: {why}")),
                };
                let mut rec = AuditRecord::new(now_ms, Event::LakeFormationSync, decision, reason);
                rec.role_arn = Some(g.principal_arn.clone());
                rec.dataset = owner(&lakeformation::pair(g));
                audit
                    .record(rec)
                    .await
                    .map_err(|e| anyhow::anyhow!("auditing a Lake Formation change: {e}"))?;
            }
            recorded.map_err(|e| {
                anyhow::anyhow!(
                    "Lake Formation accepted the {what}s but the ledger was not updated: {e:#}"
                )
            })?;
            if let Some(why) = failed.values().next() {
                report.error = Some(why.clone());
                return Ok(report);
            }
        }
    }
    Ok(report)
}

/// One cycle of the background sync: takes (or renews) the [`LEASE`] for
/// `holder`, lasting `ttl_secs`, and syncs only while holding it. `None`:
/// another replica holds it. A holder that stops renewing loses the lease
/// `ttl_secs` after its last cycle.
pub async fn cycle(
    store: &dyn Store,
    lf: &dyn LakeFormation,
    audit: &AuditLog,
    clock: &dyn Clock,
    holder: &str,
    ttl_secs: i64,
) -> anyhow::Result<Option<SyncReport>> {
    if !store
        .take_lease(LEASE, holder, clock.now(), ttl_secs)
        .await?
    {
        return Ok(None);
    }
    let datasets = store.list_datasets().await?;
    let held = Held {
        store,
        holder,
        ttl_secs,
        clock,
    };
    run(
        &datasets,
        store,
        lf,
        audit,
        false,
        clock.now_millis(),
        Some(&held),
    )
    .await
    .map(Some)
}
