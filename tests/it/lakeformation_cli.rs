//! `tessera lakeformation sync` against the emulator: the dry run prints
//! the plan and changes nothing, the sync grants what a dataset's role
//! lacks, revokes what it holds beyond the dataset, leaves grants on other
//! tables alone, audits each change, revokes its own grants once the
//! dataset is deleted, and exits non-zero when Lake Formation fails.

use tessera::aws::lakeformation::{AwsLakeFormation, Grant, LakeFormation, LfResource};

use crate::harness::BinEnv;
use crate::moto::Moto;

async fn holds(lf: &AwsLakeFormation, role: &str, table: &str) -> Vec<String> {
    let mut perms: Vec<String> = lf
        .list_permissions(role, &LfResource::table("sales", Some(table)))
        .await
        .unwrap()
        .into_iter()
        .flat_map(|g| g.permissions)
        .collect();
    perms.sort();
    perms.dedup();
    perms
}

/// The binary's environment: a fresh store, AWS pointed at `moto`. The
/// binary takes AWS credentials from the SDK's default chain: here, its
/// environment.
fn binary_env(dir: &std::path::Path, moto: &Moto) -> BinEnv {
    BinEnv::fresh(dir)
        .set("TESSERA_AWS_ENDPOINT_URL", &moto.url)
        .set("TESSERA_AWS_REGION", "us-east-1")
        .set("AWS_ACCESS_KEY_ID", "testing")
        .set("AWS_SECRET_ACCESS_KEY", "testing")
        .set("AWS_EC2_METADATA_DISABLED", "true")
}

/// `sales.orders` on `role`: the Glue table sales.orders, read only.
async fn sales_orders(env: &BinEnv, role: &str) {
    env.run_json(&[
        "dataset",
        "create",
        "sales.orders",
        "--tenant",
        "acme",
        "--role-arn",
        role,
        "--glue-database",
        "sales",
        "--glue-table",
        "orders",
        "--s3-prefix",
        "s3://lake/sales/orders/",
        "--permission",
        "read",
    ])
    .await;
}

#[tokio::test]
async fn sync_grants_missing_revokes_extra_and_leaves_foreign_grants_alone() {
    let moto = Moto::start().await;
    let role = moto.create_role("sales-reader").await;
    let lf = AwsLakeFormation::from_sdk_config(&moto.sdk_config().await);
    // Granted outside Tessera: an extra ALTER on the dataset's table (to be
    // revoked) and SELECT on another table (to be left alone).
    let grant = |table: &str, perms: &[&str]| Grant {
        principal_arn: role.clone(),
        resource: LfResource::table("sales", Some(table)),
        permissions: perms.iter().map(|s| s.to_string()).collect(),
    };
    let failed = lf
        .batch_grant(&[grant("orders", &["ALTER"]), grant("refunds", &["SELECT"])])
        .await
        .unwrap();
    assert!(failed.is_empty(), "{failed:?}");

    let dir = tempfile::tempdir().unwrap();
    let env = binary_env(dir.path(), &moto);
    sales_orders(&env, &role).await;
    let plan = env.run_json(&["lakeformation", "sync", "--dry-run"]).await;
    assert_eq!(plan["dry_run"], true);
    assert_eq!(plan["grant"][0]["table"], "orders");
    assert_eq!(
        plan["grant"][0]["permissions"],
        serde_json::json!(["DESCRIBE", "SELECT"])
    );
    assert_eq!(
        plan["revoke"][0]["permissions"],
        serde_json::json!(["ALTER"])
    );
    assert_eq!(plan["grant"][0]["dataset"], "sales.orders");
    assert_eq!(plan["skipped"], serde_json::json!([]));
    assert_eq!(
        holds(&lf, &role, "orders").await,
        vec!["ALTER"],
        "dry run changed nothing"
    );

    let done = env.run_json(&["lakeformation", "sync"]).await;
    assert_eq!(done["dry_run"], false);
    assert_eq!(
        holds(&lf, &role, "orders").await,
        vec!["DESCRIBE", "SELECT"]
    );
    assert_eq!(
        holds(&lf, &role, "refunds").await,
        vec!["SELECT"],
        "foreign grant kept"
    );

    let again = env.run_json(&["lakeformation", "sync"]).await;
    assert_eq!(again["grant"], serde_json::json!([]));
    assert_eq!(again["revoke"], serde_json::json!([]));

    let tail = env.run_json(&["audit", "tail", "-n", "10"]).await;
    let changes: Vec<&serde_json::Value> = tail
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["event"] == "lakeformation_sync")
        .collect();
    assert_eq!(changes.len(), 2, "one record per change: {tail}");
    assert!(changes
        .iter()
        .all(|r| r["role_arn"] == role.as_str() && r["dataset"] == "sales.orders"));
    assert!(changes.iter().any(|r| r["reason"]
        .as_str()
        .unwrap()
        .starts_with("lakeformation revoke ALTER")));

    // Lake Formation unreachable: non-zero exit, saying why.
    let down = env
        .clone()
        .set("TESSERA_AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .run(&["lakeformation", "sync"])
        .await;
    assert_ne!(down.code, Some(0), "{down:?}");
    assert!(down.stderr.contains("ListPermissions"), "{}", down.stderr);
    // Deleted: the grants Tessera made for it go, the foreign one stays.
    env.run_json(&["dataset", "delete", "sales.orders"]).await;
    let gone = env.run_json(&["lakeformation", "sync"]).await;
    assert_eq!(
        gone["revoke"][0]["permissions"],
        serde_json::json!(["DESCRIBE", "SELECT"])
    );
    assert!(holds(&lf, &role, "orders").await.is_empty());
    assert_eq!(holds(&lf, &role, "refunds").await, vec!["SELECT"]);
}

#[tokio::test]
async fn the_cli_sync_waits_its_turn_while_a_server_holds_the_sync_lease() {
    let moto = Moto::start().await;
    let role = moto.create_role("sales-reader").await;
    let lf = AwsLakeFormation::from_sdk_config(&moto.sdk_config().await);
    let dir = tempfile::tempdir().unwrap();
    let env = binary_env(dir.path(), &moto);
    sales_orders(&env, &role).await;
    // A server's background loop holds the lease, as another replica would.
    let var = |k: &str| {
        env.vars
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
    };
    let store = tessera::store::connect(&tessera::config::StoreConfig {
        url: var("TESSERA_STORE_URL").unwrap(),
        max_connections: 2,
        schema: var("TESSERA_STORE_SCHEMA"),
    })
    .await
    .unwrap();
    let now = crate::harness::now();
    let lease = tessera::data::sync::LEASE;
    assert!(store.take_lease(lease, "server-a", now, 600).await.unwrap());

    let busy = env.run(&["lakeformation", "sync"]).await;
    assert_eq!(busy.code, Some(1), "{busy:?}");
    assert!(busy.stderr.contains("lease"), "{}", busy.stderr);
    assert!(
        holds(&lf, &role, "orders").await.is_empty(),
        "nothing applied"
    );
    // Planning needs no lease.
    let plan = env.run_json(&["lakeformation", "sync", "--dry-run"]).await;
    assert_eq!(plan["grant"][0]["table"], "orders");

    // Once the server lets go, the CLI syncs, and gives the lease back.
    assert!(store.release_lease(lease, "server-a").await.unwrap());
    env.run_json(&["lakeformation", "sync"]).await;
    assert_eq!(
        holds(&lf, &role, "orders").await,
        vec!["DESCRIBE", "SELECT"]
    );
    assert!(store.take_lease(lease, "server-a", now, 600).await.unwrap());
}
