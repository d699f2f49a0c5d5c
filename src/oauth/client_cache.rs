//! Registered clients and their secret digests, cached in memory so that a
//! token or introspection request does not cost two database round trips
//! before its audit write. Every registry change bumps a version in the
//! store; each replica polls it every 250 ms and drops its cache when it
//! moves, so a disabled client or a rotated secret takes effect everywhere
//! within that interval (a secret that does not match a cached entry is
//! also re-read at once, so a fresh secret works immediately).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;

use crate::clock::Freshness;
use crate::store::{Client, ClientStore, Delegation, SecretDigest};

pub const SYNC_INTERVAL: Duration = Duration::from_millis(250);

/// A replica whose registry version has not been confirmed for this long
/// may be missing a revoked grant or delegation: data decisions made on its
/// snapshot fail closed (503) until a poll succeeds again.
pub const MAX_STALENESS: Duration = Duration::from_secs(5);

/// Most clients kept; past that the cache starts over.
const CAPACITY: usize = 10_000;

#[derive(Debug)]
pub struct CachedClient {
    pub client: Client,
    /// Secrets live when read; their `expires_at` is checked at each use.
    pub secrets: Vec<SecretDigest>,
    /// What the client may do for users (token exchange); `expires_at` is
    /// checked at each use.
    pub delegations: Vec<Delegation>,
}

impl CachedClient {
    pub fn live_secrets(&self, now: i64) -> Vec<SecretDigest> {
        self.secrets
            .iter()
            .filter(|s| s.expires_at.is_none_or(|e| e > now))
            .cloned()
            .collect()
    }
}

pub struct ClientCache {
    store: Arc<dyn ClientStore>,
    version: AtomicI64,
    entries: RwLock<HashMap<String, Arc<CachedClient>>>,
    /// Workload identity (issuer, subject) → client id; `None` caches "unbound".
    workloads: RwLock<HashMap<(String, String), Option<String>>>,
    /// The last successful poll, for staleness.
    fresh: Freshness,
}

impl std::fmt::Debug for ClientCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCache")
            .field("len", &self.entries.read().len())
            .finish()
    }
}

impl ClientCache {
    pub async fn load(store: Arc<dyn ClientStore>) -> anyhow::Result<Self> {
        let version = store.registry_version().await?;
        Ok(Self {
            store,
            version: AtomicI64::new(version),
            entries: RwLock::new(HashMap::new()),
            workloads: RwLock::new(HashMap::new()),
            fresh: Freshness::new(MAX_STALENESS),
        })
    }

    /// The client, from memory when possible.
    pub async fn get(
        &self,
        client_id: &str,
        now: i64,
    ) -> anyhow::Result<Option<Arc<CachedClient>>> {
        if let Some(hit) = self.entries.read().get(client_id) {
            return Ok(Some(hit.clone()));
        }
        self.fetch(client_id, now).await
    }

    /// Reads the client from the store and caches it.
    pub async fn fetch(
        &self,
        client_id: &str,
        now: i64,
    ) -> anyhow::Result<Option<Arc<CachedClient>>> {
        let version = self.version.load(Ordering::Acquire);
        let Some(client) = self.store.get_client(client_id).await? else {
            return Ok(None);
        };
        let secrets = self.store.live_secrets(client_id, now).await?;
        let delegations = self.store.delegations(Some(client_id)).await?;
        let entry = Arc::new(CachedClient {
            client,
            secrets,
            delegations,
        });
        let mut entries = self.entries.write();
        // A poll that saw a change while we read must not be undone by
        // caching what we read before it.
        if self.version.load(Ordering::Acquire) == version {
            if entries.len() >= CAPACITY {
                entries.clear();
            }
            entries.insert(client_id.to_string(), entry.clone());
        }
        Ok(Some(entry))
    }

    /// The client a workload identity is bound to.
    pub async fn workload_client(
        &self,
        issuer: &str,
        subject: &str,
    ) -> anyhow::Result<Option<String>> {
        let key = (issuer.to_string(), subject.to_string());
        if let Some(hit) = self.workloads.read().get(&key) {
            return Ok(hit.clone());
        }
        let version = self.version.load(Ordering::Acquire);
        let found = self.store.workload_client(issuer, subject).await?;
        let mut map = self.workloads.write();
        if self.version.load(Ordering::Acquire) == version {
            if map.len() >= CAPACITY {
                map.clear();
            }
            map.insert(key, found.clone());
        }
        Ok(found)
    }

    /// The client a workload identity is bound to, from memory when
    /// possible; `None` when it is bound to none.
    pub async fn bound_client(
        &self,
        issuer: &str,
        subject: &str,
        now: i64,
    ) -> anyhow::Result<Option<Arc<CachedClient>>> {
        match self.workload_client(issuer, subject).await? {
            Some(client_id) => self.get(&client_id, now).await,
            None => Ok(None),
        }
    }

    /// The registry version this replica last saw.
    pub fn version(&self) -> i64 {
        self.version.load(Ordering::Acquire)
    }

    /// Whether the registry version is too old to trust (the store has not
    /// answered a poll for [`MAX_STALENESS`]).
    pub fn is_stale(&self) -> bool {
        self.fresh.is_stale()
    }

    /// One poll: drop everything when the registry changed.
    pub async fn sync(&self) -> anyhow::Result<()> {
        let version = self.store.registry_version().await?;
        self.fresh.mark();
        if version != self.version.load(Ordering::Acquire) {
            let mut entries = self.entries.write();
            let mut workloads = self.workloads.write();
            self.version.store(version, Ordering::Release);
            entries.clear();
            workloads.clear();
        }
        Ok(())
    }

    pub async fn run_sync(self: Arc<Self>) {
        let mut tick = tokio::time::interval(SYNC_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.sync().await {
                // Cached entries keep serving: they were right at the last
                // successful poll, and a store that cannot be polled cannot
                // be read for a fresh answer either.
                tracing::warn!(error = %e, "client registry sync failed");
            }
        }
    }
}
