//! Lake Formation sync against moto through the real AWS SDK, on the
//! suite's store (SQLite or Postgres): the ledger of Tessera's own grants,
//! exactly-the-dataset's permissions on managed pairs, foreign grants left
//! alone, revokes when a dataset goes or narrows, LF-Tag policies, audit
//! records of a sync that fails half-way; the lease that elects the one
//! replica running the background sync; and the moto patch.
//!
//! moto cannot list permissions on an `LFTagPolicy` resource
//! (`ListPermissions` answers `InvalidInputException`), so the LF-Tag test
//! lists through [`ListAll`], which reads moto's unfiltered listing; the
//! grants and revokes still go through the SDK to moto.

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::json;
use tessera::audit::{AuditLog, AuditRecord};
use tessera::aws::lakeformation::{
    AwsLakeFormation, CurrentGrant, Failures, Grant, LakeFormation, LfResource, LfTag,
};
use tessera::clock::{Clock, FixedClock};
use tessera::config::StoreConfig;
use tessera::data::sync::{self, SyncReport};
use tessera::store::{self, Dataset, Permission, Store};

use crate::harness::fresh_store;
use crate::moto::Moto;

const NOW_MS: i64 = 1_800_000_000_000;

struct Env {
    _dir: tempfile::TempDir,
    url: String,
    schema: Option<String>,
    store: Arc<dyn Store>,
    audit: AuditLog,
}

impl Env {
    async fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let (url, schema) = fresh_store(dir.path());
        let store = open(&url, &schema).await;
        let audit = AuditLog::spawn(store.clone(), 64);
        Env {
            _dir: dir,
            url,
            schema,
            store,
            audit,
        }
    }

    /// A second handle on the same database, as another replica has.
    async fn other_handle(&self) -> Arc<dyn Store> {
        open(&self.url, &self.schema).await
    }

    async fn sync(&self, lf: &dyn LakeFormation, dry_run: bool) -> SyncReport {
        let datasets = self.store.list_datasets().await.unwrap();
        sync::run(
            &datasets,
            self.store.as_ref(),
            lf,
            &self.audit,
            dry_run,
            NOW_MS,
            None,
        )
        .await
        .unwrap()
    }

    /// The `lakeformation_sync` audit records, oldest first.
    async fn lf_audit(&self) -> Vec<AuditRecord> {
        self.store
            .audit_tail(1000)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.record)
            .filter(|r| r.event == "lakeformation_sync")
            .collect()
    }

    /// The ledger as "principal resource permission" lines.
    async fn ledger(&self) -> Vec<String> {
        self.store
            .lf_grants()
            .await
            .unwrap()
            .into_iter()
            .map(|e| {
                let r = LfResource::from_ledger_key(&e.resource).unwrap();
                format!("{} {r} {}", role_name(&e.principal_arn), e.permission)
            })
            .collect()
    }
}

async fn open(url: &str, schema: &Option<String>) -> Arc<dyn Store> {
    store::connect(&StoreConfig {
        url: url.into(),
        max_connections: 4,
        schema: schema.clone(),
    })
    .await
    .unwrap()
}

fn role_name(arn: &str) -> &str {
    arn.rsplit('/').next().unwrap()
}

fn dataset(id: &str, role: &str, table: Option<&str>, perms: &[Permission]) -> Dataset {
    Dataset {
        id: id.into(),
        tenant: "acme".into(),
        role_arn: role.into(),
        glue_database: "sales".into(),
        glue_table: table.map(String::from),
        lf_tag_expression: None,
        s3_prefix: format!("s3://lake/{id}/"),
        permissions: perms.to_vec(),
        purposes: vec!["analytics".into()],
        max_duration_secs: 3600,
        created_at: 0,
        updated_at: 0,
    }
}

fn on(role: &str, table: &str, perms: &[&str]) -> Grant {
    Grant {
        principal_arn: role.into(),
        resource: LfResource::table("sales", Some(table)),
        permissions: perms.iter().map(|p| p.to_string()).collect(),
    }
}

async fn grant_outside(lf: &AwsLakeFormation, grants: &[Grant]) {
    let failed = lf.batch_grant(grants).await.unwrap();
    assert!(failed.is_empty(), "{failed:?}");
}

async fn holds(lf: &dyn LakeFormation, role: &str, table: &str) -> Vec<String> {
    let set: BTreeSet<String> = lf
        .list_permissions(role, &LfResource::table("sales", Some(table)))
        .await
        .unwrap()
        .into_iter()
        .flat_map(|g| g.permissions)
        .collect();
    set.into_iter().collect()
}

/// "grant|revoke PERMS on RESOURCE" of each planned change.
fn changes(r: &SyncReport) -> Vec<String> {
    let show = |what: &str, v: &[sync::GrantView]| -> Vec<String> {
        v.iter()
            .map(|g| {
                format!(
                    "{what} {} {} on {}",
                    role_name(&g.principal),
                    g.permissions.join(","),
                    g.resource
                )
            })
            .collect()
    };
    let mut out = show("grant", &r.grant);
    out.extend(show("revoke", &r.revoke));
    out.extend(show("forget", &r.forget));
    out
}

fn lf_calls(recorded: &[crate::moto::Recorded], op: &str) -> usize {
    recorded
        .iter()
        .filter(|r| r.url.ends_with(&format!("/{op}")))
        .count()
}

#[tokio::test]
async fn lakeformation_sync_keeps_roles_exact_and_revokes_only_its_own_grants() {
    let moto = Moto::start().await;
    let reader = moto.create_role("sales-reader").await;
    let other = moto.create_role("someone-elses").await;
    let lf = AwsLakeFormation::from_sdk_config(&moto.sdk_config().await);
    let env = Env::new().await;

    // Made outside Tessera: ALTER on a table a dataset will name (extra,
    // to be revoked), grants on a table no dataset names and to another
    // role (foreign, left alone). Two grants on one pair, as moto merges
    // them, is also what an unpatched moto answered 500 to on revoke.
    grant_outside(&lf, &[on(&reader, "orders", &["ALTER"])]).await;
    grant_outside(&lf, &[on(&reader, "orders", &["SELECT"])]).await;
    grant_outside(&lf, &[on(&reader, "customers", &["DROP", "SELECT"])]).await;
    grant_outside(&lf, &[on(&other, "orders", &["INSERT", "SELECT"])]).await;

    let s = &env.store;
    s.create_dataset(&dataset(
        "sales.orders",
        &reader,
        Some("orders"),
        &[Permission::Write],
    ))
    .await
    .unwrap();
    s.create_dataset(&dataset(
        "sales.refunds",
        &reader,
        Some("refunds"),
        &[Permission::Read],
    ))
    .await
    .unwrap();

    // Dry run: the plan, and no change anywhere.
    let before = moto.recorded().await.len();
    let plan = env.sync(&lf, true).await;
    assert!(plan.dry_run);
    let expected = [
        "grant sales-reader DELETE,DESCRIBE,INSERT on sales.orders",
        "grant sales-reader DESCRIBE,SELECT on sales.refunds",
        "revoke sales-reader ALTER on sales.orders",
    ];
    assert_eq!(changes(&plan), expected);
    assert_eq!(plan.grant[0].dataset.as_deref(), Some("sales.orders"));
    let dry = moto.recorded().await.split_off(before);
    assert_eq!(lf_calls(&dry, "BatchGrantPermissions"), 0, "{dry:?}");
    assert_eq!(lf_calls(&dry, "BatchRevokePermissions"), 0);
    assert_eq!(holds(&lf, &reader, "orders").await, ["ALTER", "SELECT"]);
    assert!(env.ledger().await.is_empty());
    assert!(env.lf_audit().await.is_empty());

    // The sync: exactly the datasets' permissions on their pairs.
    let done = env.sync(&lf, false).await;
    assert_eq!(changes(&done), expected);
    assert!(done.error.is_none());
    assert_eq!(
        holds(&lf, &reader, "orders").await,
        ["DELETE", "DESCRIBE", "INSERT", "SELECT"]
    );
    assert_eq!(holds(&lf, &reader, "refunds").await, ["DESCRIBE", "SELECT"]);
    assert_eq!(holds(&lf, &reader, "customers").await, ["DROP", "SELECT"]);
    assert_eq!(holds(&lf, &other, "orders").await, ["INSERT", "SELECT"]);
    // The ledger holds what Tessera granted: not the SELECT on orders that
    // was there before.
    assert_eq!(
        env.ledger().await,
        [
            "sales-reader sales.orders DELETE",
            "sales-reader sales.orders DESCRIBE",
            "sales-reader sales.orders INSERT",
            "sales-reader sales.refunds DESCRIBE",
            "sales-reader sales.refunds SELECT",
        ]
    );
    let audit = env.lf_audit().await;
    let reasons: Vec<&str> = audit.iter().map(|r| r.reason.as_str()).collect();
    assert_eq!(
        reasons,
        [
            "lakeformation grant DELETE,DESCRIBE,INSERT on sales.orders",
            "lakeformation grant DESCRIBE,SELECT on sales.refunds",
            "lakeformation revoke ALTER on sales.orders",
        ]
    );
    assert!(audit
        .iter()
        .all(|r| r.decision == "allow" && r.role_arn.as_deref() == Some(reader.as_str())));
    assert_eq!(audit[1].dataset.as_deref(), Some("sales.refunds"));

    assert!(changes(&env.sync(&lf, false).await).is_empty(), "in step");

    // Narrowed to read: the extra permissions go.
    let mut orders = s.get_dataset("sales.orders").await.unwrap().unwrap();
    orders.permissions = vec![Permission::Read];
    s.update_dataset(&orders).await.unwrap();
    let narrowed = env.sync(&lf, false).await;
    assert_eq!(
        changes(&narrowed),
        ["revoke sales-reader DELETE,INSERT on sales.orders"]
    );
    assert_eq!(holds(&lf, &reader, "orders").await, ["DESCRIBE", "SELECT"]);

    // Deleted: what Tessera granted for it is revoked, through the ledger.
    assert!(s.delete_dataset("sales.refunds").await.unwrap());
    let deleted = env.sync(&lf, false).await;
    assert_eq!(
        changes(&deleted),
        ["revoke sales-reader DESCRIBE,SELECT on sales.refunds"]
    );
    assert_eq!(deleted.revoke[0].dataset.as_deref(), Some("sales.refunds"));
    assert!(holds(&lf, &reader, "refunds").await.is_empty());
    let last = env.lf_audit().await.pop().unwrap();
    assert_eq!(last.dataset.as_deref(), Some("sales.refunds"));
    assert_eq!(last.decision, "allow");
    // A grant someone makes later on that pair is not Tessera's.
    grant_outside(&lf, &[on(&reader, "refunds", &["SELECT"])]).await;
    assert!(changes(&env.sync(&lf, false).await).is_empty());
    assert_eq!(holds(&lf, &reader, "refunds").await, ["SELECT"]);

    // The role changes: the new role gets exactly the dataset's
    // permissions, the old one loses what Tessera granted it there, and
    // keeps the SELECT it held before Tessera (never Tessera's).
    orders.role_arn = other.clone();
    s.update_dataset(&orders).await.unwrap();
    let moved = env.sync(&lf, false).await;
    assert_eq!(
        changes(&moved),
        [
            "grant someone-elses DESCRIBE on sales.orders",
            "revoke sales-reader DESCRIBE on sales.orders",
            "revoke someone-elses INSERT on sales.orders",
        ]
    );
    assert_eq!(holds(&lf, &other, "orders").await, ["DESCRIBE", "SELECT"]);
    assert_eq!(holds(&lf, &reader, "orders").await, ["SELECT"]);
    assert_eq!(holds(&lf, &reader, "customers").await, ["DROP", "SELECT"]);
    assert_eq!(env.ledger().await, ["someone-elses sales.orders DESCRIBE"]);

    // Someone revokes Tessera's grant behind its back, and the dataset goes:
    // the ledger entry is forgotten, nothing to revoke.
    let gone = lf
        .batch_revoke(&[on(&other, "orders", &["DESCRIBE"])])
        .await;
    assert!(gone.unwrap().is_empty());
    assert!(s.delete_dataset("sales.orders").await.unwrap());
    let forgot = env.sync(&lf, false).await;
    assert_eq!(
        changes(&forgot),
        ["forget someone-elses DESCRIBE on sales.orders"]
    );
    assert!(env.ledger().await.is_empty());
    assert_eq!(holds(&lf, &other, "orders").await, ["SELECT"]);
}

/// The real SDK client, failing every change for one principal (as Lake
/// Formation does per entry, e.g. for a principal it does not accept), or
/// failing whole revoke calls.
struct Failing {
    inner: AwsLakeFormation,
    refuse: String,
    revoke_call_fails: bool,
    /// Grants reach Lake Formation, but the answer is lost (a timeout).
    grant_answer_lost: bool,
}

impl Failing {
    async fn batch(&self, grants: &[Grant], revoke: bool) -> Result<Failures, String> {
        if revoke && self.revoke_call_fails {
            return Err(
                "Lake Formation BatchRevokePermissions: ConcurrentModificationException: try again"
                    .into(),
            );
        }
        let (refused, passed): (Vec<_>, Vec<_>) = grants
            .iter()
            .enumerate()
            .partition(|(_, g)| g.principal_arn == self.refuse);
        let forward: Vec<Grant> = passed.iter().map(|(_, g)| (*g).clone()).collect();
        let failed = if forward.is_empty() {
            Vec::new()
        } else if revoke {
            self.inner.batch_revoke(&forward).await?
        } else {
            self.inner.batch_grant(&forward).await?
        };
        assert!(failed.is_empty(), "{failed:?}");
        if !revoke && self.grant_answer_lost {
            return Err("Lake Formation BatchGrantPermissions: timed out".into());
        }
        Ok(refused
            .into_iter()
            .map(|(i, _)| (i, "Lake Formation BatchGrantPermissions: AccessDeniedException: Insufficient Lake Formation permission(s)".to_string()))
            .collect())
    }
}

#[async_trait]
impl LakeFormation for Failing {
    async fn list_permissions(
        &self,
        principal_arn: &str,
        resource: &LfResource,
    ) -> Result<Vec<CurrentGrant>, String> {
        self.inner.list_permissions(principal_arn, resource).await
    }
    async fn batch_grant(&self, grants: &[Grant]) -> Result<Failures, String> {
        self.batch(grants, false).await
    }
    async fn batch_revoke(&self, grants: &[Grant]) -> Result<Failures, String> {
        self.batch(grants, true).await
    }
}

#[tokio::test]
async fn lakeformation_sync_failing_half_way_leaves_audit_records_of_both_halves() {
    let moto = Moto::start().await;
    let good = moto.create_role("good").await;
    let refused = moto.create_role("refused").await;
    let lf = AwsLakeFormation::from_sdk_config(&moto.sdk_config().await);
    let env = Env::new().await;
    grant_outside(&lf, &[on(&good, "orders", &["ALTER"])]).await;
    env.store
        .create_dataset(&dataset(
            "sales.orders",
            &good,
            Some("orders"),
            &[Permission::Read],
        ))
        .await
        .unwrap();
    env.store
        .create_dataset(&dataset(
            "sales.refunds",
            &refused,
            Some("refunds"),
            &[Permission::Read],
        ))
        .await
        .unwrap();

    let failing = Failing {
        inner: lf.clone(),
        refuse: refused.clone(),
        revoke_call_fails: false,
        grant_answer_lost: false,
    };
    let report = env.sync(&failing, false).await;
    let error = report.error.as_deref().unwrap();
    assert!(error.contains("AccessDeniedException"), "{error}");
    // Applied before the failure: granted, recorded, audited.
    assert_eq!(
        holds(&lf, &good, "orders").await,
        ["ALTER", "DESCRIBE", "SELECT"]
    );
    assert_eq!(
        env.ledger().await,
        ["good sales.orders DESCRIBE", "good sales.orders SELECT"]
    );
    let audit = env.lf_audit().await;
    assert_eq!(audit.len(), 2, "{audit:?}");
    assert_eq!(audit[0].decision, "allow");
    assert_eq!(
        audit[0].reason,
        "lakeformation grant DESCRIBE,SELECT on sales.orders"
    );
    // The failed change: denied, with why; nothing recorded for it.
    assert_eq!(audit[1].decision, "deny");
    assert_eq!(audit[1].dataset.as_deref(), Some("sales.refunds"));
    assert!(
        audit[1]
            .reason
            .starts_with("lakeformation grant DESCRIBE,SELECT on sales.refunds failed: ")
            && audit[1].reason.contains("AccessDeniedException"),
        "{}",
        audit[1].reason
    );
    assert!(holds(&lf, &refused, "refunds").await.is_empty());
    // Stopped there: the revoke of ALTER was not tried.
    assert!(holds(&lf, &good, "orders")
        .await
        .contains(&"ALTER".to_string()));

    // A revoke call failing as a whole: audited as denied, ledger intact.
    env.store.delete_dataset("sales.refunds").await.unwrap();
    let failing = Failing {
        inner: lf.clone(),
        refuse: String::new(),
        revoke_call_fails: true,
        grant_answer_lost: false,
    };
    env.store.delete_dataset("sales.orders").await.unwrap();
    let report = env.sync(&failing, false).await;
    assert!(report.error.unwrap().contains("ConcurrentModification"));
    let audit = env.lf_audit().await;
    let last = audit.last().unwrap();
    assert_eq!(last.decision, "deny");
    assert!(
        last.reason.starts_with("lakeformation revoke"),
        "{}",
        last.reason
    );
    assert_eq!(
        env.ledger().await.len(),
        2,
        "kept: the revoke did not happen"
    );
    assert_eq!(
        holds(&lf, &good, "orders").await,
        ["ALTER", "DESCRIBE", "SELECT"]
    );

    // And once Lake Formation takes it, the sync finishes the job: the
    // revoke Tessera owes (its own grants), not the foreign ALTER.
    let report = env.sync(&lf, false).await;
    assert!(report.error.is_none());
    assert_eq!(holds(&lf, &good, "orders").await, ["ALTER"]);
    assert!(env.ledger().await.is_empty());
}

#[tokio::test]
async fn a_grant_whose_answer_was_lost_is_still_tessera_s_and_revoked_with_its_dataset() {
    let moto = Moto::start().await;
    let role = moto.create_role("reader").await;
    let lf = AwsLakeFormation::from_sdk_config(&moto.sdk_config().await);
    let env = Env::new().await;
    env.store
        .create_dataset(&dataset(
            "sales.orders",
            &role,
            Some("orders"),
            &[Permission::Read],
        ))
        .await
        .unwrap();
    let lost = Failing {
        inner: lf.clone(),
        refuse: String::new(),
        revoke_call_fails: false,
        grant_answer_lost: true,
    };
    let report = env.sync(&lost, false).await;
    assert!(report.error.unwrap().contains("timed out"));
    // Applied though unconfirmed, and in the ledger since before the call.
    assert_eq!(holds(&lf, &role, "orders").await, ["DESCRIBE", "SELECT"]);
    assert_eq!(
        env.ledger().await,
        ["reader sales.orders DESCRIBE", "reader sales.orders SELECT"]
    );
    // A sync that sees it held plans nothing and keeps the ledger...
    let report = env.sync(&lf, false).await;
    assert!(changes(&report).is_empty(), "{:?}", changes(&report));
    assert_eq!(env.ledger().await.len(), 2);
    // ...so once the dataset goes, the grant goes with it.
    env.store.delete_dataset("sales.orders").await.unwrap();
    let report = env.sync(&lf, false).await;
    assert!(report.error.is_none(), "{report:?}");
    assert!(holds(&lf, &role, "orders").await.is_empty());
    assert!(env.ledger().await.is_empty());
}

/// Lists LF-Tag policy grants from moto's unfiltered listing (moto refuses
/// `ListPermissions` on an `LFTagPolicy` resource); everything else goes
/// to the SDK client unchanged.
struct ListAll(AwsLakeFormation);

#[async_trait]
impl LakeFormation for ListAll {
    async fn list_permissions(
        &self,
        principal_arn: &str,
        resource: &LfResource,
    ) -> Result<Vec<CurrentGrant>, String> {
        match resource {
            LfResource::TagPolicy { .. } => Ok(self
                .0
                .list_all_permissions()
                .await?
                .into_iter()
                .filter(|g| g.principal_arn == principal_arn && g.resource == *resource)
                .collect()),
            _ => self.0.list_permissions(principal_arn, resource).await,
        }
    }
    async fn batch_grant(&self, grants: &[Grant]) -> Result<Failures, String> {
        self.0.batch_grant(grants).await
    }
    async fn batch_revoke(&self, grants: &[Grant]) -> Result<Failures, String> {
        self.0.batch_revoke(grants).await
    }
}

fn tags(terms: &[(&str, &[&str])]) -> LfResource {
    LfResource::tag_policy(
        terms
            .iter()
            .map(|(k, v)| LfTag {
                key: k.to_string(),
                values: v.iter().map(|s| s.to_string()).collect(),
            })
            .collect(),
    )
}

#[tokio::test]
async fn lakeformation_sync_grants_tag_expression_datasets_on_an_lf_tag_policy() {
    let moto = Moto::start().await;
    let role = moto.create_role("tagged-reader").await;
    let lf = AwsLakeFormation::from_sdk_config(&moto.sdk_config().await);
    let env = Env::new().await;
    // Someone else's grant on another expression: left alone.
    let foreign = Grant {
        principal_arn: role.clone(),
        resource: tags(&[("team", &["x"])]),
        permissions: vec!["SELECT".into()],
    };
    grant_outside(&lf, std::slice::from_ref(&foreign)).await;

    let mut d = dataset("sales.tagged", &role, None, &[Permission::Read]);
    d.lf_tag_expression = Some(json!([{"key": "domain", "values": ["sales", "finance"]}]));
    env.store.create_dataset(&d).await.unwrap();

    let lister = ListAll(lf.clone());
    let before = moto.recorded().await.len();
    let done = env.sync(&lister, false).await;
    assert!(done.skipped.is_empty());
    assert_eq!(
        changes(&done),
        ["grant tagged-reader DESCRIBE,SELECT on tables tagged domain=finance|sales"]
    );
    // Sent as an LFTagPolicy of resource type TABLE.
    let sent = moto.recorded().await.split_off(before);
    let body = &sent
        .iter()
        .find(|r| r.url.ends_with("/BatchGrantPermissions"))
        .expect("a BatchGrantPermissions call")
        .body;
    let body: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(
        body["Entries"][0]["Resource"],
        json!({"LFTagPolicy": {"ResourceType": "TABLE",
            "Expression": [{"TagKey": "domain", "TagValues": ["finance", "sales"]}]}})
    );
    let held = |all: Vec<Grant>| -> Vec<Grant> {
        let mut v: Vec<Grant> = all
            .into_iter()
            .filter(|g| g.principal_arn == role)
            .map(|mut g| {
                g.permissions.sort();
                g
            })
            .collect();
        v.sort();
        v
    };
    let want = Grant {
        principal_arn: role.clone(),
        resource: tags(&[("domain", &["sales", "finance"])]),
        permissions: vec!["DESCRIBE".into(), "SELECT".into()],
    };
    let mut both = vec![want.clone(), foreign.clone()];
    both.sort();
    assert_eq!(held(lf.list_all_permissions().await.unwrap()), both);
    assert!(changes(&env.sync(&lister, false).await).is_empty());

    // The dataset goes: its tag grant is revoked, the other one stays.
    env.store.delete_dataset("sales.tagged").await.unwrap();
    let gone = env.sync(&lister, false).await;
    assert_eq!(
        changes(&gone),
        ["revoke tagged-reader DESCRIBE,SELECT on tables tagged domain=finance|sales"]
    );
    assert_eq!(held(lf.list_all_permissions().await.unwrap()), [foreign]);
    assert!(env.ledger().await.is_empty());
}

#[tokio::test]
async fn moto_still_refuses_invalid_requests_and_accepts_revoking_what_is_not_held() {
    let moto = Moto::start().await;
    let role = moto.create_role("r").await;
    let lf = AwsLakeFormation::from_sdk_config(&moto.sdk_config().await);
    // What moto refuses, the patched copy still refuses, and the client
    // reports: listing an LF-Tag policy (which real Lake Formation
    // answers) is one.
    let e = lf
        .list_permissions(&role, &tags(&[("domain", &["sales"])]))
        .await
        .unwrap_err();
    assert!(e.contains("InvalidInputException"), "{e}");
    // moto answers a revoke of a permission that is not held as done
    // (real Lake Formation may refuse it); the sync never sends one, as it
    // revokes only what it just listed as held.
    let failed = lf
        .batch_revoke(&[on(&role, "nothing-here", &["SELECT"])])
        .await
        .unwrap();
    assert!(failed.is_empty());
}

#[test]
fn moto_patch_refuses_code_it_does_not_expect_and_changes_nothing_then() {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/moto-lakeformation.patch.py"
    );
    let dir = tempfile::tempdir().unwrap();
    // A stand-in for the installed moto: the script patches whatever
    // `moto.lakeformation.models` resolves to.
    let pkg = dir.path().join("moto/lakeformation");
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::write(dir.path().join("moto/__init__.py"), "").unwrap();
    std::fs::write(pkg.join("__init__.py"), "").unwrap();
    let models = pkg.join("models.py");
    let python = |args: &[&str]| {
        std::process::Command::new("python3")
            .args(args)
            .env("PYTHONPATH", dir.path())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .output()
            .expect("python3")
    };
    // The code the script expects: its own EDITS' "old" halves, inside a
    // string so that the stand-in imports.
    std::fs::write(&models, "").unwrap();
    let out = python(&[
        "-c",
        &format!(
            "import importlib.util as u, sys\n\
             s = u.spec_from_file_location('patch', {script:?})\n\
             m = u.module_from_spec(s); s.loader.exec_module(m)\n\
             Q = chr(34) * 3 + '\\n'\n\
             open({:?}, 'w').write(Q + '\\n'.join(old for old, _ in m.EDITS) + Q)",
            models.display().to_string()
        ),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = std::fs::read_to_string(&models).unwrap();
    assert!(expected.contains("existing_permission.merge(permission)"));

    // One expected piece missing: refused, and nothing written.
    let partial = expected.replace(
        r#"permission_resource["Table"]["Name"]"#,
        r#"permission_resource["Table"].name"#,
    );
    std::fs::write(&models, &partial).unwrap();
    let out = python(&[script]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("does not contain the expected code"),
        "{said}"
    );
    assert_eq!(std::fs::read_to_string(&models).unwrap(), partial);

    // Unrelated code: refused.
    std::fs::write(&models, "# something else\n").unwrap();
    assert_eq!(python(&[script]).status.code(), Some(1));

    // The expected code: patched, and a second run changes nothing.
    std::fs::write(&models, &expected).unwrap();
    let out = python(&[script]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("3 edit(s) applied"));
    let patched = std::fs::read_to_string(&models).unwrap();
    assert_eq!(patched.matches("tessera patch").count(), 3);
    let out = python(&[script]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 edit(s) applied"));
    assert_eq!(std::fs::read_to_string(&models).unwrap(), patched);
}

#[tokio::test]
async fn lakeformation_lease_is_held_by_one_replica_and_passes_on_after_expiry() {
    let env = Env::new().await;
    let a = env.store.clone();
    let b = env.other_handle().await;
    let clock = FixedClock::at(1_800_000_000);
    const L: &str = "lakeformation_sync";
    const TTL: i64 = 60;

    assert!(a.take_lease(L, "a", clock.now(), TTL).await.unwrap());
    assert!(!b.take_lease(L, "b", clock.now(), TTL).await.unwrap());
    // Renewed each cycle: still a's after the first expiry would have come.
    clock.advance(50);
    assert!(a.take_lease(L, "a", clock.now(), TTL).await.unwrap());
    clock.advance(50);
    assert!(!b.take_lease(L, "b", clock.now(), TTL).await.unwrap());
    // a stops renewing (it died): b takes over once the lease expired, and
    // not a second before.
    clock.advance(9);
    assert!(!b.take_lease(L, "b", clock.now(), TTL).await.unwrap());
    clock.advance(1);
    assert!(b.take_lease(L, "b", clock.now(), TTL).await.unwrap());
    assert!(!a.take_lease(L, "a", clock.now(), TTL).await.unwrap());
    // Released: free at once. Another name is another lease.
    assert!(!a.release_lease(L, "a").await.unwrap());
    assert!(b.release_lease(L, "b").await.unwrap());
    assert!(a.take_lease(L, "a", clock.now(), TTL).await.unwrap());
    assert!(b.take_lease("other", "b", clock.now(), TTL).await.unwrap());

    // Racing for a free lease: exactly one winner.
    clock.advance(TTL);
    let now = clock.now();
    let mut races = Vec::new();
    for i in 0..8 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        races.push(tokio::spawn(async move {
            s.take_lease(L, &format!("h{i}"), now, TTL).await.unwrap()
        }));
    }
    let mut won = 0;
    for r in races {
        won += r.await.unwrap() as usize;
    }
    assert_eq!(won, 1);
}

#[tokio::test]
async fn lakeformation_background_sync_runs_on_the_lease_holder_only() {
    let moto = Moto::start().await;
    let role = moto.create_role("leased").await;
    let lf = AwsLakeFormation::from_sdk_config(&moto.sdk_config().await);
    let env = Env::new().await;
    // Replica b: its own handle on the same database, its own audit writer.
    let b_store = env.other_handle().await;
    let b_audit = AuditLog::spawn(b_store.clone(), 64);
    let clock = FixedClock::at(1_800_000_000);
    const TTL: i64 = 20;
    let a = || sync::cycle(env.store.as_ref(), &lf, &env.audit, &clock, "a", TTL);
    let b = || sync::cycle(b_store.as_ref(), &lf, &b_audit, &clock, "b", TTL);
    let store = &env.store;
    store
        .create_dataset(&dataset(
            "sales.orders",
            &role,
            Some("orders"),
            &[Permission::Read],
        ))
        .await
        .unwrap();

    let first = a().await.unwrap().expect("a holds the lease");
    assert_eq!(
        changes(&first),
        ["grant leased DESCRIBE,SELECT on sales.orders"]
    );
    store
        .create_dataset(&dataset(
            "sales.refunds",
            &role,
            Some("refunds"),
            &[Permission::Read],
        ))
        .await
        .unwrap();
    clock.advance(10);
    assert!(b().await.unwrap().is_none(), "a holds it");
    assert!(
        holds(&lf, &role, "refunds").await.is_empty(),
        "b did nothing"
    );
    let renewed = a().await.unwrap().expect("renewed");
    assert_eq!(
        changes(&renewed),
        ["grant leased DESCRIBE,SELECT on sales.refunds"]
    );

    // a stops (it died after renewing at +10): b takes over at +30.
    clock.advance(TTL - 1);
    assert!(b().await.unwrap().is_none());
    clock.advance(1);
    let taken = b().await.unwrap().expect("b took over");
    assert!(changes(&taken).is_empty(), "in step already");
    assert!(a().await.unwrap().is_none(), "a came back: b holds it now");
}
