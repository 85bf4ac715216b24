//! Sticky sessions: a key keeps going to the backend it first got, while that backend
//! stays eligible and the key keeps being used.
//!
//! The key → backend map is sharded over 16 mutexes and bounded: entries idle longer than
//! `ttl` expire, and when a shard is full the expired entries are swept; a key that still
//! finds no room is balanced normally, unpinned.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Sticky-session settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StickyConfig {
    /// How long an unused pin lasts (default 30 min).
    #[serde(default = "default_ttl", with = "crate::duration")]
    pub ttl: Duration,
    /// Most pins kept (default 1 000 000).
    #[serde(default = "default_max")]
    pub max_entries: usize,
}

fn default_ttl() -> Duration {
    Duration::from_secs(1800)
}
fn default_max() -> usize {
    1_000_000
}

impl Default for StickyConfig {
    fn default() -> Self {
        Self {
            ttl: default_ttl(),
            max_entries: default_max(),
        }
    }
}

const SHARDS: usize = 16;

pub(crate) struct Sticky {
    ttl: Duration,
    per_shard: usize,
    shards: [Mutex<HashMap<u64, (SocketAddr, Instant)>>; SHARDS],
}

impl Sticky {
    pub(crate) fn new(cfg: &StickyConfig) -> Self {
        Self {
            ttl: cfg.ttl,
            per_shard: cfg.max_entries.div_ceil(SHARDS).max(1),
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
        }
    }

    fn shard(&self, key: u64) -> std::sync::MutexGuard<'_, HashMap<u64, (SocketAddr, Instant)>> {
        let i = (crate::hash::mix64(key) as usize) % SHARDS;
        self.shards[i]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The pinned address of `key`, if the pin is alive; refreshes it.
    pub(crate) fn get(&self, key: u64, now: Instant) -> Option<SocketAddr> {
        let mut shard = self.shard(key);
        let (addr, seen) = shard.get_mut(&key)?;
        if now.saturating_duration_since(*seen) > self.ttl {
            shard.remove(&key);
            return None;
        }
        *seen = now;
        Some(*addr)
    }

    /// Pins `key` to `addr`.
    pub(crate) fn put(&self, key: u64, addr: SocketAddr, now: Instant) {
        let mut shard = self.shard(key);
        if shard.len() >= self.per_shard && !shard.contains_key(&key) {
            let ttl = self.ttl;
            shard.retain(|_, (_, seen)| now.saturating_duration_since(*seen) <= ttl);
            if shard.len() >= self.per_shard {
                return;
            }
        }
        shard.insert(key, (addr, now));
    }

    /// Pins currently held.
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum()
    }
}
