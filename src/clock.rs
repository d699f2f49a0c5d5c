//! Time as an input: the domain never calls `SystemTime::now()` directly, so
//! tests can move time forward instead of sleeping.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Source of "now" in Unix seconds (and milliseconds for audit records).
pub trait Clock: Send + Sync + 'static {
    fn now_millis(&self) -> i64;

    fn now(&self) -> i64 {
        self.now_millis().div_euclid(1000)
    }
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_millis(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to; for tests.
#[derive(Debug)]
pub struct FixedClock(AtomicI64);

impl FixedClock {
    pub fn at(unix_seconds: i64) -> Self {
        Self(AtomicI64::new(unix_seconds * 1000))
    }

    pub fn advance(&self, seconds: i64) {
        self.0.fetch_add(seconds * 1000, Ordering::SeqCst);
    }

    pub fn set(&self, unix_seconds: i64) {
        self.0.store(unix_seconds * 1000, Ordering::SeqCst);
    }
}

impl Clock for FixedClock {
    fn now_millis(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// When a replica last heard from the store, on the monotonic clock (not
/// the app's [`Clock`]: a stalled poll must show as stale even in tests
/// that hold app time still). Read on every check, so an atomic.
#[derive(Debug)]
pub struct Freshness {
    started: Instant,
    /// Milliseconds after `started` of the last [`Freshness::mark`].
    fresh_at: AtomicU64,
    max: Duration,
}

impl Freshness {
    /// Fresh now; stale once `max` passes without a mark.
    pub fn new(max: Duration) -> Self {
        Self {
            started: Instant::now(),
            fresh_at: AtomicU64::new(0),
            max,
        }
    }

    /// The store just answered.
    pub fn mark(&self) {
        self.fresh_at
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    pub fn is_stale(&self) -> bool {
        let since_start = self.started.elapsed().as_millis() as u64;
        since_start.saturating_sub(self.fresh_at.load(Ordering::Relaxed))
            > self.max.as_millis() as u64
    }
}
