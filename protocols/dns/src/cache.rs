//! A TTL cache with an injected clock, and the DNS rules for what to cache and how long.
//!
//! [`TtlCache`] is generic: entries expire after their TTL, the cache holds at most
//! `max_entries` (when full it drops expired entries first, then the entry closest to
//! expiry), and a hit on a hot entry near its end says "prefetch me" once, so the owner can
//! refresh it before it expires and popular names never miss.
//!
//! [`CachedResponse`] and [`cache_ttl`] apply it to DNS: positive answers live for their
//! smallest answer TTL, negative ones (NXDOMAIN, NODATA) for the SOA's
//! `min(TTL, MINIMUM)` as RFC 2308 §5 says, and answers without an SOA, truncated ones and
//! failures are not cached. A hit is rendered with the client's ID and question bytes and
//! with every TTL lowered by the entry's age.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::types::{rcode, rtype, section::Section};
use crate::wire::{HEADER_LEN, Limits, NameKey, WireError, WireInfo, records};

// === Clock ===

/// Where the cache reads the time: the system clock, or a hand-driven one in tests.
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> Instant;
}

/// The monotonic system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct ManualClock {
    start: Instant,
    offset_ms: AtomicU64,
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl ManualClock {
    /// A clock standing at the moment it was made.
    pub fn new() -> Self {
        ManualClock {
            start: Instant::now(),
            offset_ms: AtomicU64::new(0),
        }
    }

    /// Moves the clock forward.
    pub fn advance(&self, d: Duration) {
        self.offset_ms
            .fetch_add(d.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.start + Duration::from_millis(self.offset_ms.load(Ordering::SeqCst))
    }
}

// === TtlCache ===

/// How a [`TtlCache`] behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    /// The most entries held. Default 10 000.
    pub max_entries: usize,
    /// Shorter TTLs are raised to this. Default 0.
    pub min_ttl: Duration,
    /// Longer TTLs are lowered to this. Default 1 day.
    pub max_ttl: Duration,
    /// Negative answers are kept at most this long. Default 1 hour.
    pub max_negative_ttl: Duration,
    /// An entry is hot after this many hits. Default 3.
    pub prefetch_hits: u32,
    /// A hot entry asks for a prefetch when at most this percentage of its TTL is left.
    /// Default 10; 0 turns prefetching off.
    pub prefetch_percent: u8,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_entries: 10_000,
            min_ttl: Duration::ZERO,
            max_ttl: Duration::from_secs(86_400),
            max_negative_ttl: Duration::from_secs(3_600),
            prefetch_hits: 3,
            prefetch_percent: 10,
        }
    }
}

struct Entry<V> {
    value: V,
    stored: Instant,
    expires: Instant,
    ttl: Duration,
    hits: u32,
    prefetching: bool,
    seq: u64,
}

/// A cache hit.
#[derive(Debug)]
pub struct Hit<'a, V> {
    /// The value.
    pub value: &'a V,
    /// How long ago it was stored.
    pub age: Duration,
    /// How long it has left.
    pub remaining: Duration,
    /// Set once per entry: it is hot and close to expiry; refresh it now, then call
    /// [`TtlCache::insert`] (or [`TtlCache::prefetch_failed`]).
    pub prefetch: bool,
}

/// A map whose entries expire; see the [module docs](self).
///
/// ```
/// use std::{sync::Arc, time::Duration};
/// use flowgate_dns::cache::{CacheConfig, ManualClock, TtlCache};
/// let clock = Arc::new(ManualClock::new());
/// let mut c = TtlCache::with_clock(CacheConfig::default(), clock.clone());
/// c.insert("k", 1, Duration::from_secs(10));
/// clock.advance(Duration::from_secs(9));
/// assert_eq!(c.get("k").map(|h| *h.value), Some(1));
/// clock.advance(Duration::from_secs(1));
/// assert!(c.get("k").is_none());
/// ```
pub struct TtlCache<K, V> {
    config: CacheConfig,
    clock: Arc<dyn Clock>,
    map: HashMap<K, Entry<V>>,
    by_expiry: BTreeMap<(Instant, u64), K>,
    seq: u64,
}

impl<K, V> std::fmt::Debug for TtlCache<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TtlCache")
            .field("len", &self.map.len())
            .field("config", &self.config)
            .finish()
    }
}

impl<K: Hash + Eq + Clone, V> TtlCache<K, V> {
    /// A cache on the system clock.
    pub fn new(config: CacheConfig) -> Self {
        Self::with_clock(config, Arc::new(SystemClock))
    }

    /// A cache reading time from `clock`.
    pub fn with_clock(config: CacheConfig, clock: Arc<dyn Clock>) -> Self {
        TtlCache {
            config,
            clock,
            map: HashMap::new(),
            by_expiry: BTreeMap::new(),
            seq: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Entries held (expired ones not yet dropped included).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Looks `key` up; an expired entry is dropped and misses.
    pub fn get<Q>(&mut self, key: &Q) -> Option<Hit<'_, V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let now = self.clock.now();
        let expired = match self.map.get(key) {
            None => return None,
            Some(e) => e.expires <= now,
        };
        if expired {
            if let Some(e) = self.map.remove(key) {
                self.by_expiry.remove(&(e.expires, e.seq));
            }
            return None;
        }
        let cfg = self.config;
        let e = self.map.get_mut(key)?;
        e.hits = e.hits.saturating_add(1);
        let remaining = e.expires - now;
        let mut prefetch = false;
        if cfg.prefetch_percent > 0
            && !e.prefetching
            && e.hits >= cfg.prefetch_hits
            && remaining.as_millis() * 100 <= e.ttl.as_millis() * u128::from(cfg.prefetch_percent)
        {
            e.prefetching = true;
            prefetch = true;
        }
        Some(Hit {
            value: &e.value,
            age: now - e.stored,
            remaining,
            prefetch,
        })
    }

    /// Stores `value` for `ttl`, clamped to `[min_ttl, max_ttl]` (or to
    /// `max_negative_ttl` when `negative`). A zero TTL stores nothing. Returns whether it
    /// was stored.
    pub fn insert_with(&mut self, key: K, value: V, ttl: Duration, negative: bool) -> bool {
        let max = if negative {
            self.config.max_negative_ttl.min(self.config.max_ttl)
        } else {
            self.config.max_ttl
        };
        let ttl = ttl.max(self.config.min_ttl).min(max);
        if ttl.is_zero() || self.config.max_entries == 0 {
            return false;
        }
        let now = self.clock.now();
        if let Some(old) = self.map.remove(&key) {
            self.by_expiry.remove(&(old.expires, old.seq));
        }
        while self.map.len() >= self.config.max_entries {
            // The front of the expiry index is expired if anything is, else the entry that
            // would leave soonest anyway.
            let Some((_, k)) = self.by_expiry.pop_first() else {
                break;
            };
            self.map.remove(&k);
        }
        self.seq += 1;
        let expires = now + ttl;
        self.by_expiry.insert((expires, self.seq), key.clone());
        self.map.insert(
            key,
            Entry {
                value,
                stored: now,
                expires,
                ttl,
                hits: 0,
                prefetching: false,
                seq: self.seq,
            },
        );
        true
    }

    /// Stores a positive entry; see [`insert_with`](Self::insert_with).
    pub fn insert(&mut self, key: K, value: V, ttl: Duration) -> bool {
        self.insert_with(key, value, ttl, false)
    }

    /// A prefetch did not work out: let a later hit ask again.
    pub fn prefetch_failed<Q>(&mut self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some(e) = self.map.get_mut(key) {
            e.prefetching = false;
        }
    }

    /// Drops every expired entry.
    pub fn purge_expired(&mut self) {
        let now = self.clock.now();
        while let Some(entry) = self.by_expiry.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let k = entry.remove();
            self.map.remove(&k);
        }
    }
}

// === DNS ===

/// The CD (checking disabled) bit of the header flags.
const CD: u16 = 0x0010;

/// The cache key of a DNS question.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// QNAME, lower-cased.
    pub name: NameKey,
    /// QTYPE.
    pub qtype: u16,
    /// QCLASS.
    pub qclass: u16,
    /// The DO bit (answers with and without DNSSEC records differ).
    pub dnssec_ok: bool,
    /// The CD bit: a validating upstream answers a checking-disabled query without
    /// validating, so such an answer must never be served to a query that wants checking.
    pub checking_disabled: bool,
}

impl CacheKey {
    /// The key of a validated message's first question.
    pub fn of(info: &WireInfo) -> Option<CacheKey> {
        let q = info.question.as_ref()?;
        Some(CacheKey {
            name: q.name,
            qtype: q.qtype,
            qclass: q.qclass,
            dnssec_ok: info.opt.is_some_and(|o| o.dnssec_ok),
            checking_disabled: info.header.flags & CD != 0,
        })
    }
}

/// How long a response may be cached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheTtl {
    /// An answer: the smallest TTL of the answer records, in seconds.
    Positive(u32),
    /// NXDOMAIN or NODATA: `min(SOA TTL, SOA MINIMUM)`, in seconds.
    Negative(u32),
    /// Do not cache (a failure, a truncated answer, a negative answer without an SOA).
    Uncacheable,
}

/// A response kept for reuse: its bytes and where its TTLs are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedResponse {
    wire: Vec<u8>,
    ttl_offsets: Vec<usize>,
    question_end: usize,
}

/// Decides how long `response` may be cached, and prepares it.
///
/// ```
/// use flowgate_dns::{Limits, cache::{cache_ttl, CacheTtl}};
/// // NXDOMAIN for x.test with an SOA (TTL 300, MINIMUM 60) in the authority section.
/// let mut r = b"\x00\x01\x81\x83\x00\x01\x00\x00\x00\x01\x00\x00\x01x\x04test\x00\x00\x01\x00\x01".to_vec();
/// r.extend_from_slice(b"\xc0\x0e\x00\x06\x00\x01\x00\x00\x01\x2c\x00\x1e");
/// r.extend_from_slice(b"\x02ns\xc0\x0e\x02hm\xc0\x0e");
/// r.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0, 60]);
/// let (ttl, _) = cache_ttl(&r, &Limits::default()).unwrap();
/// assert_eq!(ttl, CacheTtl::Negative(60));
/// ```
pub fn cache_ttl(
    response: &[u8],
    limits: &Limits,
) -> Result<(CacheTtl, CachedResponse), WireError> {
    let (info, recs) = records(response, limits)?;
    let cached = CachedResponse {
        wire: response.to_vec(),
        ttl_offsets: recs
            .iter()
            .filter(|r| r.rtype != rtype::OPT)
            .map(|r| r.ttl_offset)
            .collect(),
        question_end: info.question_end,
    };
    let h = info.header;
    if h.truncated() || info.question.is_none() {
        return Ok((CacheTtl::Uncacheable, cached));
    }
    let answers = recs.iter().filter(|r| r.section == Section::Answer);
    let min_answer = answers.map(|r| r.ttl).min();
    let ttl = match (h.rcode(), min_answer) {
        (rcode::NOERROR, Some(t)) => CacheTtl::Positive(t),
        (rcode::NOERROR, None) | (rcode::NXDOMAIN, _) => {
            let soa = recs
                .iter()
                .find(|r| r.section == Section::Authority && r.rtype == rtype::SOA);
            match soa {
                Some(s) => {
                    let m = s.rdata + s.rdlen - 4;
                    let minimum = response
                        .get(m..m + 4)
                        .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                    CacheTtl::Negative(s.ttl.min(minimum))
                }
                None => CacheTtl::Uncacheable,
            }
        }
        _ => CacheTtl::Uncacheable,
    };
    Ok((ttl, cached))
}

impl CachedResponse {
    /// The stored bytes.
    pub fn wire(&self) -> &[u8] {
        &self.wire
    }

    /// The response for a client: its ID, its question bytes (when they have the cached
    /// question's length, as they do for the same name in another case), every TTL lowered
    /// by `age_secs`.
    pub fn render(&self, id: u16, question: Option<&[u8]>, age_secs: u32) -> Vec<u8> {
        let mut out = self.wire.clone();
        crate::builder::set_id(&mut out, id);
        if let Some(q) = question
            && q.len() == self.question_end.saturating_sub(HEADER_LEN)
            && let Some(dst) = out.get_mut(HEADER_LEN..self.question_end)
        {
            dst.copy_from_slice(q);
        }
        if age_secs > 0 {
            for &o in &self.ttl_offsets {
                if let Some(b) = out.get_mut(o..o + 4) {
                    let t = u32::from_be_bytes([b[0], b[1], b[2], b[3]]).saturating_sub(age_secs);
                    b.copy_from_slice(&t.to_be_bytes());
                }
            }
        }
        out
    }
}
