//! A bounded cache of verified tokens, so that an edge proxy checking the
//! same token on every request pays for one signature check, not one per
//! request. Keyed by the token's SHA-256; an entry is valid until the
//! token's `exp` or its key's end of verification, whichever is first, and
//! only for the key-set generation it was verified under (a reload that
//! removes a key empties it). Revocation is checked by the caller on every
//! hit, so a revoked token never comes back from here as usable.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

const SHARDS: usize = 16;

#[derive(Debug)]
struct Entry<T> {
    value: Arc<T>,
    valid_until: i64,
    generation: u64,
}

#[derive(Debug)]
pub struct VerifiedCache<T> {
    shards: Vec<Mutex<HashMap<[u8; 32], Entry<T>>>>,
    per_shard: usize,
}

impl<T> VerifiedCache<T> {
    pub fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: (capacity / SHARDS).max(1),
        }
    }

    pub fn digest(token: &str) -> [u8; 32] {
        let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        d.as_ref().try_into().expect("sha256 is 32 bytes")
    }

    fn shard(&self, key: &[u8; 32]) -> &Mutex<HashMap<[u8; 32], Entry<T>>> {
        &self.shards[key[0] as usize % SHARDS]
    }

    pub fn get(&self, key: &[u8; 32], now: i64, generation: u64) -> Option<Arc<T>> {
        let mut shard = self.shard(key).lock();
        match shard.get(key) {
            Some(e) if e.generation == generation && now < e.valid_until => Some(e.value.clone()),
            Some(_) => {
                shard.remove(key);
                None
            }
            None => None,
        }
    }

    pub fn insert(
        &self,
        key: [u8; 32],
        value: Arc<T>,
        valid_until: i64,
        now: i64,
        generation: u64,
    ) {
        let mut shard = self.shard(&key).lock();
        if shard.len() >= self.per_shard {
            shard.retain(|_, e| e.generation == generation && now < e.valid_until);
            if shard.len() >= self.per_shard {
                // Still full of live entries: drop an arbitrary eighth rather
                // than grow; a dropped token is only verified again.
                let drop: Vec<[u8; 32]> =
                    shard.keys().take(self.per_shard / 8 + 1).copied().collect();
                for k in drop {
                    shard.remove(&k);
                }
            }
        }
        shard.insert(
            key,
            Entry {
                value,
                valid_until,
                generation,
            },
        );
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn honours_expiry_generation_and_bound() {
        let cache = VerifiedCache::new(64);
        let k = VerifiedCache::<u32>::digest("t");
        cache.insert(k, Arc::new(1u32), 100, 0, 1);
        assert_eq!(cache.get(&k, 99, 1).as_deref(), Some(&1));
        assert!(cache.get(&k, 100, 1).is_none(), "expired");
        cache.insert(k, Arc::new(1u32), 100, 0, 1);
        assert!(cache.get(&k, 50, 2).is_none(), "other key generation");
        for i in 0..10_000u32 {
            cache.insert(
                VerifiedCache::<u32>::digest(&i.to_string()),
                Arc::new(i),
                100,
                0,
                1,
            );
        }
        assert!(cache.len() <= 64 + SHARDS);
    }
}
