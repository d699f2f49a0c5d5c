//! Revoked token ids, held in memory on every replica so that a check
//! never waits on the database, and kept in step with the shared store by
//! a poll every 250 ms (well inside the one-second promise). The poll
//! re-reads everything revoked since 60 seconds before the last successful
//! poll rather than following a cursor: sequence numbers can commit out of
//! order on Postgres, and the overlap absorbs late commits and clock
//! differences between replicas; after a store outage the window simply
//! reaches back to before it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;

use crate::clock::{Clock, Freshness};
use crate::store::RevocationStore;

pub const SYNC_INTERVAL: Duration = Duration::from_millis(250);
/// Overlap of each poll: absorbs late commits and clock differences
/// between replicas of up to ten minutes.
const WINDOW_SECS: i64 = 600;

/// A replica whose last successful poll is older than this no longer knows
/// which tokens are revoked, and its token checks fail closed.
pub const MAX_STALENESS: Duration = Duration::from_secs(5);

pub struct Revocations {
    store: Arc<dyn RevocationStore>,
    /// jti → token expiry.
    revoked: RwLock<HashMap<String, i64>>,
    /// When the last successful poll started (the app clock, for the window).
    synced_at: AtomicI64,
    /// The last successful poll, for staleness.
    fresh: Freshness,
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocations")
            .field("len", &self.revoked.read().len())
            .finish()
    }
}

impl Revocations {
    /// Loads every unexpired revocation.
    pub async fn load(store: Arc<dyn RevocationStore>, now: i64) -> anyhow::Result<Self> {
        let all = store.revocations_since(i64::MIN, now).await?;
        let revoked = all.into_iter().map(|r| (r.jti, r.expires_at)).collect();
        Ok(Self {
            store,
            revoked: RwLock::new(revoked),
            synced_at: AtomicI64::new(now),
            fresh: Freshness::new(MAX_STALENESS),
        })
    }

    /// Whether the revocation set is too old to trust (the store has not
    /// answered for [`MAX_STALENESS`]).
    pub fn is_stale(&self) -> bool {
        self.fresh.is_stale()
    }

    pub fn is_revoked(&self, jti: &str) -> bool {
        self.revoked.read().contains_key(jti)
    }

    /// Durable first, then visible here at once; other replicas see it at
    /// their next poll.
    pub async fn revoke(&self, jti: &str, expires_at: i64, now: i64) -> anyhow::Result<()> {
        self.store.revoke(jti, expires_at, now).await?;
        self.revoked.write().insert(jti.to_string(), expires_at);
        Ok(())
    }

    /// One poll: merge recent revocations and forget expired ones.
    pub async fn sync(&self, now: i64) -> anyhow::Result<()> {
        let since = self.synced_at.load(Ordering::Relaxed).min(now) - WINDOW_SECS;
        let recent = self.store.revocations_since(since, now).await?;
        self.synced_at.store(now, Ordering::Relaxed);
        self.fresh.mark();
        let mut set = self.revoked.write();
        for r in recent {
            set.insert(r.jti, r.expires_at);
        }
        set.retain(|_, exp| *exp > now);
        Ok(())
    }

    /// Polls until the task is aborted.
    pub async fn run_sync(self: Arc<Self>, clock: Arc<dyn Clock>) {
        let mut tick = tokio::time::interval(SYNC_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.sync(clock.now()).await {
                tracing::warn!(error = %e, "revocation sync failed; keeping the revocations already known");
            }
        }
    }
}
