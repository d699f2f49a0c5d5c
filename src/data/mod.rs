//! Data access decisions (DESIGN.md §5): may this person — possibly through
//! a data product acting for them — use this dataset, with this permission,
//! for this purpose? The answer rests on the **person's** grants, and, when
//! a product acts for them, on the product's delegation for the dataset
//! too; never on the product's own rights. One pure function,
//! [`authorize`], serves the `/data/*` routes of ext_authz and the exchange
//! for cloud credentials, over an in-memory snapshot of the registry.

pub mod sync;

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::issuer::{AccessClaims, Principal};
use crate::store::{Dataset, DatasetGrant, Delegation, Grantee, Permission, Store};

/// Datasets and their grants as of one registry version.
#[derive(Debug, Default)]
pub struct DataSnapshot {
    pub datasets: HashMap<String, Dataset>,
    pub grants: HashMap<String, Vec<DatasetGrant>>,
}

/// The registry's datasets and grants, held in memory and reloaded when the
/// registry version moves (polled by the client cache every 250 ms), so a
/// data decision costs no database round trip.
pub struct DataCache {
    store: Arc<dyn Store>,
    current: RwLock<Option<(i64, Arc<DataSnapshot>)>>,
    reload: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for DataCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataCache")
    }
}

impl DataCache {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            current: RwLock::new(None),
            reload: tokio::sync::Mutex::new(()),
        }
    }

    /// The snapshot for registry `version`, loading it once if needed.
    pub async fn snapshot(&self, version: i64) -> anyhow::Result<Arc<DataSnapshot>> {
        if let Some((v, snap)) = &*self.current.read() {
            if *v == version {
                return Ok(snap.clone());
            }
        }
        let _one_load = self.reload.lock().await;
        if let Some((v, snap)) = &*self.current.read() {
            if *v == version {
                return Ok(snap.clone());
            }
        }
        let datasets = self.store.list_datasets().await?;
        let mut grants: HashMap<String, Vec<DatasetGrant>> = HashMap::new();
        for g in self.store.grants(None).await? {
            grants.entry(g.dataset_id.clone()).or_default().push(g);
        }
        let snap = Arc::new(DataSnapshot {
            datasets: datasets.into_iter().map(|d| (d.id.clone(), d)).collect(),
            grants,
        });
        *self.current.write() = Some((version, snap.clone()));
        Ok(snap)
    }
}

/// Why a data request is refused; `code()` goes into deny bodies and audit
/// records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataDenial {
    UnknownDataset,
    /// Only people are given data; a service acts for one or not at all.
    NotAPerson,
    /// The dataset does not allow this permission at all.
    PermissionNotAllowed,
    PurposeRequired,
    /// The dataset does not allow this purpose.
    PurposeNotAllowed,
    /// The person belongs to another tenant than the dataset.
    OtherTenant,
    /// No grant of any kind for this person.
    NoGrant,
    /// Grants exist, but none for this permission.
    PermissionNotGranted,
    /// Grants exist for the permission, but not for this purpose.
    PurposeNotGranted,
    /// The only matching grants have expired.
    GrantExpired,
    /// The acting client holds no delegation for this dataset and permission.
    NoDelegation,
    /// The grant or delegation that allows the request ends sooner than the
    /// shortest credentials AWS issues (15 minutes).
    EndsTooSoon,
}

impl DataDenial {
    pub fn code(self) -> &'static str {
        match self {
            DataDenial::UnknownDataset => "unknown_dataset",
            DataDenial::NotAPerson => "not_a_person",
            DataDenial::PermissionNotAllowed => "permission_not_allowed",
            DataDenial::PurposeRequired => "purpose_required",
            DataDenial::PurposeNotAllowed => "purpose_not_allowed",
            DataDenial::OtherTenant => "other_tenant",
            DataDenial::NoGrant => "no_grant",
            DataDenial::PermissionNotGranted => "permission_not_granted",
            DataDenial::PurposeNotGranted => "purpose_not_granted",
            DataDenial::GrantExpired => "grant_expired",
            DataDenial::NoDelegation => "no_delegation",
            DataDenial::EndsTooSoon => "grant_ends_too_soon",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            DataDenial::UnknownDataset => "no such dataset",
            DataDenial::NotAPerson => "data access needs a person's identity",
            DataDenial::PermissionNotAllowed => "the dataset does not allow this permission",
            DataDenial::PurposeRequired => "a purpose is required for this dataset",
            DataDenial::PurposeNotAllowed => "the dataset does not allow this purpose",
            DataDenial::OtherTenant => "the dataset belongs to another tenant",
            DataDenial::NoGrant => "the user holds no grant on this dataset",
            DataDenial::PermissionNotGranted => "the user's grants do not include this permission",
            DataDenial::PurposeNotGranted => "the user's grants do not include this purpose",
            DataDenial::GrantExpired => "the user's grant on this dataset has expired",
            DataDenial::NoDelegation => {
                "the acting client may not use this dataset with this permission for users"
            }
            DataDenial::EndsTooSoon => {
                "the grant or delegation ends before the shortest credentials would"
            }
        }
    }

    /// What the caller is told. A dataset of another tenant is reported as
    /// unknown, so its existence (and its purposes and permissions) cannot be
    /// probed across tenants; the audit record keeps the real reason.
    pub fn shown(self) -> DataDenial {
        match self {
            DataDenial::OtherTenant => DataDenial::UnknownDataset,
            d => d,
        }
    }
}

/// What allowed a data request.
#[derive(Debug, Clone)]
pub struct Authorized<'s> {
    pub dataset: &'s Dataset,
    /// The purpose in force (empty when the dataset names none).
    pub purpose: String,
    /// When the grant (and delegation) that allowed it end, Unix seconds;
    /// `None`: they do not expire. Of several that would allow it, the
    /// longest-lived counts.
    pub until: Option<i64>,
}

/// The later of two expiries, `None` meaning never.
fn later(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    Some(a?.max(b?))
}

/// What is asked of a dataset.
#[derive(Debug, Clone, Copy)]
pub struct DataRequest<'a> {
    pub dataset: &'a str,
    pub permission: Permission,
    pub purpose: Option<&'a str>,
}

/// The acting client of a delegated token, and its delegations.
#[derive(Debug, Clone, Copy)]
pub struct Actor<'a> {
    pub client_id: &'a str,
    pub delegations: &'a [Delegation],
}

fn grant_matches_person(g: &DatasetGrant, person: &AccessClaims) -> bool {
    match g.grantee_type {
        Grantee::User => g.grantee == person.sub,
        Grantee::Group => person.groups.contains(&g.grantee),
        Grantee::Tenant => g.grantee == person.tenant,
    }
}

/// Decides a data request for `person` (with `actor` when a client acts
/// for them).
pub fn authorize<'s>(
    snapshot: &'s DataSnapshot,
    person: &AccessClaims,
    actor: Option<Actor<'_>>,
    req: DataRequest<'_>,
    now: i64,
) -> Result<Authorized<'s>, DataDenial> {
    if person.principal != Principal::Human {
        return Err(DataDenial::NotAPerson);
    }
    let dataset = snapshot
        .datasets
        .get(req.dataset)
        .ok_or(DataDenial::UnknownDataset)?;
    // Before anything about the dataset is looked at (see `shown`).
    if person.tenant != dataset.tenant {
        return Err(DataDenial::OtherTenant);
    }
    if !dataset.permissions.iter().any(|p| p.covers(req.permission)) {
        return Err(DataDenial::PermissionNotAllowed);
    }
    let purpose = match req.purpose {
        Some(p) if !dataset.purposes.is_empty() && !dataset.purposes.iter().any(|d| d == p) => {
            return Err(DataDenial::PurposeNotAllowed)
        }
        // Free-form where the dataset names none, but as bounded as a
        // registered purpose: it goes into headers, tags and the audit.
        Some(p) if !crate::registry::is_label(p) => return Err(DataDenial::PurposeNotAllowed),
        Some(p) => p.to_string(),
        None if !dataset.purposes.is_empty() => return Err(DataDenial::PurposeRequired),
        None => String::new(),
    };
    // The most precise reason wins: the closest a grant came to allowing.
    let mut closest = DataDenial::NoGrant;
    let mut granted: Option<Option<i64>> = None;
    for g in snapshot
        .grants
        .get(&dataset.id)
        .into_iter()
        .flatten()
        .filter(|g| grant_matches_person(g, person))
    {
        if !g.permission.covers(req.permission) {
            if closest == DataDenial::NoGrant {
                closest = DataDenial::PermissionNotGranted;
            }
        } else if !g.purposes.is_empty() && !g.purposes.contains(&purpose) {
            if matches!(
                closest,
                DataDenial::NoGrant | DataDenial::PermissionNotGranted
            ) {
                closest = DataDenial::PurposeNotGranted;
            }
        } else if !g.is_live(now) {
            closest = DataDenial::GrantExpired;
        } else {
            granted = Some(match granted {
                None => g.expires_at,
                Some(until) => later(until, g.expires_at),
            });
        }
    }
    let Some(mut until) = granted else {
        return Err(closest);
    };
    if let Some(actor) = actor {
        let delegated = actor
            .delegations
            .iter()
            .filter(|d| {
                d.client_id == actor.client_id
                    && d.is_live(now)
                    && d.datasets.contains(&dataset.id)
                    && d.permissions.iter().any(|p| p.covers(req.permission))
            })
            .map(|d| d.expires_at)
            .reduce(later)
            .ok_or(DataDenial::NoDelegation)?;
        until = match (until, delegated) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    Ok(Authorized {
        dataset,
        purpose,
        until,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dataset() -> Dataset {
        Dataset {
            id: "sales.orders".into(),
            tenant: "acme".into(),
            role_arn: "arn:aws:iam::123456789012:role/sales".into(),
            glue_database: "sales".into(),
            glue_table: Some("orders".into()),
            lf_tag_expression: None,
            s3_prefix: "s3://lake/sales/orders/".into(),
            permissions: vec![Permission::Read, Permission::Write],
            purposes: vec!["analytics".into(), "billing".into()],
            max_duration_secs: 3600,
            created_at: 0,
            updated_at: 0,
        }
    }

    fn grant(
        kind: Grantee,
        who: &str,
        p: Permission,
        purposes: &[&str],
        exp: Option<i64>,
    ) -> DatasetGrant {
        DatasetGrant {
            id: who.into(),
            dataset_id: "sales.orders".into(),
            grantee_type: kind,
            grantee: who.into(),
            permission: p,
            purposes: purposes.iter().map(|s| s.to_string()).collect(),
            expires_at: exp,
            created_at: 0,
        }
    }

    fn person(sub: &str, tenant: &str, groups: &[&str]) -> AccessClaims {
        AccessClaims {
            iss: "i".into(),
            sub: sub.into(),
            aud: vec!["data".into()],
            exp: 100,
            iat: 0,
            nbf: None,
            jti: "j".into(),
            client_id: "product".into(),
            scope: String::new(),
            principal: Principal::Human,
            tenant: tenant.into(),
            groups: groups.iter().map(|s| s.to_string()).collect(),
            act: None,
            may_act: None,
        }
    }

    fn snapshot(grants: Vec<DatasetGrant>) -> DataSnapshot {
        let d = dataset();
        DataSnapshot {
            grants: HashMap::from([(d.id.clone(), grants)]),
            datasets: HashMap::from([(d.id.clone(), d)]),
        }
    }

    fn ask(p: Permission, purpose: Option<&str>) -> DataRequest<'_> {
        DataRequest {
            dataset: "sales.orders",
            permission: p,
            purpose,
        }
    }

    #[test]
    fn grants_by_user_group_and_tenant() {
        use Permission::*;
        let snap = snapshot(vec![
            grant(Grantee::User, "alice", Read, &["analytics"], None),
            grant(Grantee::Group, "finance", Write, &[], None),
            grant(Grantee::Tenant, "acme", Read, &["billing"], Some(50)),
        ]);
        let code = |who: &AccessClaims, p, purpose, now| {
            authorize(&snap, who, None, ask(p, purpose), now)
                .map(|a| a.purpose)
                .map_err(|d| d.code())
        };
        let alice = person("alice", "acme", &[]);
        assert_eq!(
            code(&alice, Read, Some("analytics"), 10),
            Ok("analytics".into())
        );
        assert_eq!(
            code(&alice, Write, Some("analytics"), 10),
            Err("permission_not_granted")
        );
        assert_eq!(
            code(&alice, Read, Some("billing"), 10),
            Ok("billing".into())
        );
        assert_eq!(
            code(&alice, Read, Some("billing"), 60),
            Err("grant_expired")
        );
        assert_eq!(
            code(&alice, Read, Some("marketing"), 10),
            Err("purpose_not_allowed")
        );
        assert_eq!(code(&alice, Read, None, 10), Err("purpose_required"));
        let bob = person("bob", "acme", &["finance"]);
        assert_eq!(code(&bob, Write, Some("billing"), 60), Ok("billing".into()));
        assert_eq!(
            code(&bob, Read, Some("analytics"), 60),
            Ok("analytics".into())
        );
        let eve = person("eve", "other", &["finance"]);
        assert_eq!(code(&eve, Read, Some("analytics"), 10), Err("other_tenant"));
        let carol = person("carol", "acme", &[]);
        assert_eq!(
            code(&carol, Read, Some("analytics"), 10),
            Err("purpose_not_granted")
        );
        assert_eq!(
            code(&carol, Read, Some("billing"), 60),
            Err("grant_expired")
        );
        let only_alice = snapshot(vec![grant(Grantee::User, "alice", Read, &[], None)]);
        assert_eq!(
            authorize(&only_alice, &carol, None, ask(Read, Some("analytics")), 10)
                .map(|_| ())
                .map_err(|d| d.code()),
            Err("no_grant")
        );
        let mut svc = person("svc", "acme", &[]);
        svc.principal = Principal::Service;
        assert_eq!(code(&svc, Read, Some("analytics"), 10), Err("not_a_person"));
    }

    #[test]
    fn an_acting_client_needs_its_own_delegation_for_the_dataset() {
        let snap = snapshot(vec![grant(
            Grantee::User,
            "alice",
            Permission::Write,
            &[],
            None,
        )]);
        let alice = person("alice", "acme", &[]);
        let delegation = |datasets: &[&str], permissions: Vec<Permission>| Delegation {
            id: "d".into(),
            client_id: "product".into(),
            audiences: vec![],
            scopes: vec![],
            actors: vec![],
            datasets: datasets.iter().map(|s| s.to_string()).collect(),
            permissions,
            created_at: 0,
            expires_at: None,
        };
        let read_only = [delegation(&["sales.orders"], vec![Permission::Read])];
        let other = [delegation(&["hr.people"], vec![Permission::Write])];
        let actor = |d: &'static [Delegation]| Actor {
            client_id: "product",
            delegations: d,
        };
        let read_only: &'static [Delegation] = Box::leak(Box::new(read_only));
        let other: &'static [Delegation] = Box::leak(Box::new(other));
        let decide = |a, p| {
            authorize(&snap, &alice, Some(a), ask(p, Some("analytics")), 0)
                .map(|_| ())
                .map_err(|d| d.code())
        };
        assert_eq!(decide(actor(read_only), Permission::Read), Ok(()));
        // The user may write; the product may only read for users.
        assert_eq!(
            decide(actor(read_only), Permission::Write),
            Err("no_delegation")
        );
        assert_eq!(decide(actor(other), Permission::Read), Err("no_delegation"));
    }

    #[test]
    fn the_allowing_grant_and_delegation_bound_how_long_access_lasts() {
        use Permission::*;
        let alice = person("alice", "acme", &["finance"]);
        let delegation = |expires_at| Delegation {
            id: "d".into(),
            client_id: "product".into(),
            audiences: vec![],
            scopes: vec![],
            actors: vec![],
            datasets: vec!["sales.orders".into()],
            permissions: vec![Read],
            created_at: 0,
            expires_at,
        };
        let until = |grants: Vec<DatasetGrant>, delegations: &[Delegation]| {
            let snap = snapshot(grants);
            let actor = (!delegations.is_empty()).then_some(Actor {
                client_id: "product",
                delegations,
            });
            authorize(&snap, &alice, actor, ask(Read, Some("analytics")), 10).map(|a| a.until)
        };
        let user = grant(Grantee::User, "alice", Read, &[], Some(500));
        let group = grant(Grantee::Group, "finance", Read, &[], Some(800));
        let forever = grant(Grantee::Tenant, "acme", Read, &[], None);
        // Of the grants that allow it, the longest-lived counts.
        assert_eq!(until(vec![user.clone(), group.clone()], &[]), Ok(Some(800)));
        assert_eq!(until(vec![user.clone(), forever.clone()], &[]), Ok(None));
        // A delegation ending sooner bounds it further.
        assert_eq!(
            until(vec![group.clone()], &[delegation(Some(300))]),
            Ok(Some(300))
        );
        assert_eq!(
            until(
                vec![forever.clone()],
                &[delegation(None), delegation(Some(300))]
            ),
            Ok(None)
        );
        assert_eq!(
            until(vec![forever], &[delegation(Some(300))]),
            Ok(Some(300))
        );
        assert_eq!(until(vec![user], &[delegation(None)]), Ok(Some(500)));
    }

    #[test]
    fn a_free_form_purpose_is_bounded_like_a_registered_one() {
        let mut snap = snapshot(vec![grant(
            Grantee::User,
            "alice",
            Permission::Read,
            &[],
            None,
        )]);
        snap.datasets
            .get_mut("sales.orders")
            .unwrap()
            .purposes
            .clear();
        let alice = person("alice", "acme", &[]);
        let decide = |purpose: &str| {
            authorize(&snap, &alice, None, ask(Permission::Read, Some(purpose)), 0)
                .map(|a| a.purpose)
                .map_err(|d| d.code())
        };
        assert_eq!(decide("fraud review"), Ok("fraud review".into()));
        assert_eq!(decide(&"p".repeat(128)), Ok("p".repeat(128)));
        for bad in ["p".repeat(129), "a\nb".into(), "   ".into(), "".into()] {
            assert_eq!(decide(&bad), Err("purpose_not_allowed"), "{bad:?}");
        }
    }

    #[test]
    fn another_tenant_s_dataset_looks_unknown_to_the_caller() {
        let snap = snapshot(vec![]);
        let eve = person("eve", "other", &[]);
        // Even a purpose the dataset does not allow tells nothing about it.
        let denial = authorize(&snap, &eve, None, ask(Permission::Read, Some("nope")), 0)
            .map(|_| ())
            .unwrap_err();
        assert_eq!(denial, DataDenial::OtherTenant);
        assert_eq!(denial.shown(), DataDenial::UnknownDataset);
    }
}
