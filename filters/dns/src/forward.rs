//! `dns-forward`: queries upstream resolvers, with a TTL-respecting cache, prefetch of hot
//! names and failover between upstreams.
//!
//! ```text
//!  query ─▶ cache hit? ── yes ─▶ answer (client's ID and case, TTLs aged)
//!             │ no                └─ hot and near expiry: refresh in the background
//!             ▼
//!   upstream 1 ── timeout / error ─▶ marked down for `down_for` ─▶ upstream 2 …
//!     │  UDP from a fresh socket (random port, random ID, answer must match both)
//!     │  TC=1 ─▶ the same upstream over TCP
//!     ▼
//!   answer ─▶ cache (positive: smallest answer TTL; negative: SOA per RFC 2308)
//! ```
//!
//! Queries with an EDNS client subnet bypass the cache (their answers may be meant for
//! that subnet only). Queries of one stream are resolved concurrently (up to `max_in_flight`); answers leave
//! in the order they complete, as DNS allows over UDP and TCP (RFC 7766 §6.2.1.1).

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskCx, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use flowgate_dns::cache::{CacheConfig, CacheKey, CacheTtl, CachedResponse, TtlCache, cache_ttl};
use flowgate_dns::types::rcode;
use flowgate_dns::{Limits, WireError, WireInfo, answer_code, set_id, validate};
use flowgate_pipeline::registry::{BuildContext, ConfigError, FilterConfig};
use flowgate_pipeline::renamed::{self, Renamed};
use flowgate_pipeline::{Context, Description, Event, Events, Filter};
use futures_core::Stream;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use super::{DnsQuery, Gather, emit};

/// Configuration of [`DnsForward`] (`dns-forward:` in YAML).
///
/// ```yaml
/// - dns-forward:
///     endpoints: ["127.0.0.1:5353", "127.0.0.2:5353"]   # tried in order; failover
///     timeout: 2s
///     cache: { max_entries: 10000, max_ttl: 1h, prefetch_hits: 3 }
/// ```
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DnsForwardConfig {
    /// Upstream resolvers, preferred first.
    pub endpoints: Vec<SocketAddr>,
    #[doc(hidden)]
    #[serde(default, rename = "upstreams", skip_serializing)]
    pub renamed_upstreams: Renamed<renamed::Upstreams>,
    /// How long one attempt waits for an answer. Default 2 s.
    #[serde(
        default = "default_timeout",
        with = "flowgate_pipeline::serde_duration"
    )]
    pub timeout: Duration,
    /// Attempts per query over the upstreams. Default: one per upstream, at least 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<usize>,
    /// How long an upstream that failed is tried only after the others. Default 5 s.
    #[serde(
        default = "default_down_for",
        with = "flowgate_pipeline::serde_duration"
    )]
    pub down_for: Duration,
    /// Queries of one stream resolved at once; more wait (their input is not read).
    /// Default 256.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    /// Upstream resolutions at once over all streams of this filter (a UDP listener has
    /// one stream per client address, and addresses can be spoofed); a miss beyond it is
    /// answered SERVFAIL at once. Default 4096.
    #[serde(default = "default_in_flight_total")]
    pub max_in_flight_total: usize,
    /// The answer cache.
    #[serde(default)]
    pub cache: CacheSettings,
}

fn default_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_down_for() -> Duration {
    Duration::from_secs(5)
}
fn default_in_flight() -> usize {
    256
}

fn default_in_flight_total() -> usize {
    4096
}

/// The cache of [`DnsForward`]: TTL-respecting, negative caching (RFC 2308), bounded,
/// with prefetch of hot names.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSettings {
    /// Whether answers are cached. Default true.
    #[serde(default = "flowgate_pipeline::registry::default_true")]
    pub enabled: bool,
    /// The most entries. Default 10 000.
    #[serde(default = "default_entries")]
    pub max_entries: usize,
    /// Shorter TTLs are raised to this. Default 0.
    #[serde(default, with = "flowgate_pipeline::serde_duration")]
    pub min_ttl: Duration,
    /// Longer TTLs are lowered to this. Default 1 day.
    #[serde(
        default = "default_max_ttl",
        with = "flowgate_pipeline::serde_duration"
    )]
    pub max_ttl: Duration,
    /// Negative answers are kept at most this long. Default 1 hour.
    #[serde(
        default = "default_neg_ttl",
        with = "flowgate_pipeline::serde_duration"
    )]
    pub max_negative_ttl: Duration,
    /// Hits after which an entry is hot. Default 3.
    #[serde(default = "default_hot")]
    pub prefetch_hits: u32,
    /// A hot entry is refreshed when this percentage of its TTL is left; 0 = never.
    /// Default 10.
    #[serde(default = "default_percent")]
    pub prefetch_percent: u8,
}

fn default_entries() -> usize {
    10_000
}
fn default_max_ttl() -> Duration {
    Duration::from_secs(86_400)
}
fn default_neg_ttl() -> Duration {
    Duration::from_secs(3_600)
}
fn default_hot() -> u32 {
    3
}
fn default_percent() -> u8 {
    10
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            enabled: true,
            max_entries: default_entries(),
            min_ttl: Duration::ZERO,
            max_ttl: default_max_ttl(),
            max_negative_ttl: default_neg_ttl(),
            prefetch_hits: default_hot(),
            prefetch_percent: default_percent(),
        }
    }
}

impl FilterConfig for DnsForwardConfig {
    fn build(self: Box<Self>, _cx: &BuildContext) -> Result<Arc<dyn Filter>, ConfigError> {
        Ok(Arc::new(DnsForward::new(*self)?))
    }
}

/// Why one exchange with an upstream failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ForwardError {
    /// A socket operation failed.
    #[error("upstream {addr}: {source}")]
    Io {
        /// The upstream.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// No answer in time.
    #[error("upstream {addr} did not answer within {timeout:?}")]
    Timeout {
        /// The upstream.
        addr: SocketAddr,
        /// The limit.
        timeout: Duration,
    },
    /// The answer over TCP was malformed.
    #[error("upstream {addr} sent a malformed answer: {source}")]
    Malformed {
        /// The upstream.
        addr: SocketAddr,
        /// What was wrong.
        source: WireError,
    },
    /// The answer over TCP did not match the query.
    #[error("upstream {addr} answered another query")]
    Mismatch {
        /// The upstream.
        addr: SocketAddr,
    },
    /// A local failure (no socket, no randomness for the query ID): says nothing about the
    /// upstream, which is not marked down for it.
    #[error("cannot query upstream {addr}: {source}")]
    Local {
        /// The upstream.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

type Key = (CacheKey, bool);

enum Check {
    Answer { truncated: bool },
    Mismatch,
    Malformed(WireError),
}

struct Upstream {
    addr: SocketAddr,
    /// Milliseconds since `Shared::epoch` until which the upstream counts as down.
    down_until: AtomicU64,
}

struct Shared {
    config: DnsForwardConfig,
    upstreams: Vec<Upstream>,
    epoch: Instant,
    cache: Option<Mutex<TtlCache<Key, CachedResponse>>>,
    limits: Limits,
    rng: ring::rand::SystemRandom,
    /// Upstream resolutions running now, over all streams.
    in_flight: std::sync::atomic::AtomicUsize,
}

/// Forwards queries nothing earlier answered to upstream resolvers: a cache first, then
/// the upstreams in order (failover), UDP then TCP after a truncated answer.
#[derive(Clone)]
pub struct DnsForward {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for DnsForward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsForward")
            .field("endpoints", &self.shared.config.endpoints)
            .finish_non_exhaustive()
    }
}

impl DnsForward {
    /// Builds the filter from `config`.
    pub fn new(config: DnsForwardConfig) -> Result<Self, ConfigError> {
        if config.endpoints.is_empty() {
            return Err(ConfigError::new("endpoints", "needs at least one resolver"));
        }
        if config.timeout.is_zero() {
            return Err(ConfigError::new("timeout", "must be more than zero"));
        }
        if config.max_in_flight == 0 || config.max_in_flight_total == 0 {
            return Err(ConfigError::new("max_in_flight", "must be at least 1"));
        }
        let c = &config.cache;
        let cache = c.enabled.then(|| {
            Mutex::new(TtlCache::new(CacheConfig {
                max_entries: c.max_entries,
                min_ttl: c.min_ttl,
                max_ttl: c.max_ttl,
                max_negative_ttl: c.max_negative_ttl,
                prefetch_hits: c.prefetch_hits,
                prefetch_percent: c.prefetch_percent,
            }))
        });
        Ok(DnsForward {
            shared: Arc::new(Shared {
                upstreams: config
                    .endpoints
                    .iter()
                    .map(|a| Upstream {
                        addr: *a,
                        down_until: AtomicU64::new(0),
                    })
                    .collect(),
                config,
                epoch: Instant::now(),
                cache,
                limits: Limits {
                    max_records: 4096,
                    ..Limits::default()
                },
                rng: ring::rand::SystemRandom::new(),
                in_flight: std::sync::atomic::AtomicUsize::new(0),
            }),
        })
    }

    /// Entries in the cache.
    pub fn cache_len(&self) -> usize {
        self.shared
            .cache
            .as_ref()
            .map_or(0, |c| c.lock().unwrap_or_else(|p| p.into_inner()).len())
    }
}

impl Filter for DnsForward {
    fn describe(&self) -> Description {
        Description::filter("dns-forward").options(&self.shared.config)
    }

    fn attach(&self, input: Events, _cx: &Context) -> Events {
        Box::pin(ForwardStream {
            input,
            shared: self.shared.clone(),
            gather: Gather::default(),
            out: VecDeque::new(),
            pending: FuturesUnordered::new(),
            end: None,
            input_done: false,
            finished: false,
        })
    }
}

// === impl Shared ===

impl Shared {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A query ID from the system's secure random source, so an off-path attacker cannot
    /// predict it (the kernel's random source port does the rest).
    fn random_id(&self) -> Option<u16> {
        use ring::rand::SecureRandom;
        let mut b = [0u8; 2];
        self.rng.fill(&mut b).ok()?;
        Some(u16::from_ne_bytes(b))
    }

    /// The cache key of a query; `None` (never cached) for queries with a client subnet,
    /// whose answers may hold for that subnet only (RFC 7871 §7.3).
    fn key(info: &WireInfo) -> Option<Key> {
        if info.opt.is_some_and(|o| o.client_subnet.is_some()) {
            return None;
        }
        Some((CacheKey::of(info)?, info.opt.is_some()))
    }

    /// A cached answer for `q`, and whether to refresh it.
    fn cached(&self, q: &DnsQuery) -> Option<(Vec<u8>, bool)> {
        let cache = self.cache.as_ref()?;
        let key = Self::key(&q.info)?;
        let mut c = cache.lock().unwrap_or_else(|p| p.into_inner());
        let hit = c.get(&key)?;
        let question = q.wire.get(12..q.info.question_end);
        let age = hit.age.as_secs().min(u64::from(u32::MAX)) as u32;
        Some((
            hit.value.render(q.info.header.id, question, age),
            hit.prefetch,
        ))
    }

    fn store(&self, q: &DnsQuery, resp: &[u8]) {
        let (Some(cache), Some(key)) = (self.cache.as_ref(), Self::key(&q.info)) else {
            return;
        };
        let Ok((ttl, cached)) = cache_ttl(resp, &self.limits) else {
            return;
        };
        let mut c = cache.lock().unwrap_or_else(|p| p.into_inner());
        match ttl {
            CacheTtl::Positive(t) => c.insert(key, cached, Duration::from_secs(u64::from(t))),
            CacheTtl::Negative(t) => {
                c.insert_with(key, cached, Duration::from_secs(u64::from(t)), true)
            }
            CacheTtl::Uncacheable => false,
        };
    }

    fn prefetch_failed(&self, q: &DnsQuery) {
        if let (Some(cache), Some(key)) = (self.cache.as_ref(), Self::key(&q.info)) {
            cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .prefetch_failed(&key);
        }
    }

    /// Resolves `q` upstream: the answer (with the client's ID), or `None` when every
    /// attempt failed.
    async fn resolve(&self, q: &DnsQuery) -> Option<Vec<u8>> {
        let now = self.now_ms();
        let mut order: Vec<&Upstream> = self
            .upstreams
            .iter()
            .filter(|u| u.down_until.load(Ordering::Relaxed) <= now)
            .collect();
        order.extend(
            self.upstreams
                .iter()
                .filter(|u| u.down_until.load(Ordering::Relaxed) > now),
        );
        let attempts = self
            .config
            .attempts
            .unwrap_or(self.upstreams.len().max(2))
            .max(1);
        let mut fallback = None;
        for i in 0..attempts {
            let Some(up) = order.get(i % order.len().max(1)) else {
                break;
            };
            match self.exchange(up.addr, q).await {
                Ok(mut resp) => {
                    set_id(&mut resp, q.info.header.id);
                    let code = resp.get(3).map_or(0, |b| b & 0x0f);
                    if code == rcode::SERVFAIL || code == rcode::REFUSED {
                        fallback = Some(resp);
                        continue;
                    }
                    self.store(q, &resp);
                    return Some(resp);
                }
                Err(e @ ForwardError::Local { .. }) => {
                    tracing::debug!(error = %e, "dns-forward: attempt failed");
                }
                Err(e) => {
                    tracing::debug!(error = %e, "dns-forward: attempt failed");
                    let down = u64::try_from(self.config.down_for.as_millis()).unwrap_or(u64::MAX);
                    let until = self.now_ms().saturating_add(down);
                    up.down_until.store(until, Ordering::Relaxed);
                }
            }
        }
        fallback
    }

    /// Checks that `resp` is a well-formed answer to the query sent with `id`.
    fn check(&self, resp: &[u8], id: u16, q: &WireInfo) -> Check {
        let info = match validate(resp, &self.limits) {
            Ok(i) => i,
            Err(e) => return Check::Malformed(e),
        };
        let same = info.header.id == id
            && info.header.is_response()
            && info.question.map(|x| (x.name, x.qtype, x.qclass))
                == q.question.map(|x| (x.name, x.qtype, x.qclass));
        if same {
            Check::Answer {
                truncated: info.header.truncated(),
            }
        } else {
            Check::Mismatch
        }
    }

    async fn exchange(&self, addr: SocketAddr, q: &DnsQuery) -> Result<Vec<u8>, ForwardError> {
        let timeout = self.config.timeout;
        let io = |source| ForwardError::Io { addr, source };
        let local = |source| ForwardError::Local { addr, source };
        let id = self
            .random_id()
            .ok_or_else(|| local(std::io::Error::other("no random query ID")))?;
        let mut wire = q.wire.to_vec();
        set_id(&mut wire, id);
        let deadline = tokio::time::Instant::now() + timeout;
        let bind: SocketAddr = if addr.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let sock = UdpSocket::bind(bind).await.map_err(local)?;
        sock.connect(addr).await.map_err(io)?;
        sock.send(&wire).await.map_err(io)?;
        let mut buf = vec![0u8; 65_535];
        // Datagrams that do not match (late answers to earlier IDs, spoofing attempts) are
        // skipped; the loop is bounded by the deadline and a count.
        for _ in 0..32 {
            let n = match tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
                Ok(r) => r.map_err(io)?,
                Err(_) => return Err(ForwardError::Timeout { addr, timeout }),
            };
            let resp = &buf[..n];
            match self.check(resp, id, &q.info) {
                Check::Answer { truncated: true } => {
                    return self.exchange_tcp(addr, &wire, id, q, deadline).await;
                }
                Check::Answer { .. } => return Ok(resp.to_vec()),
                Check::Mismatch | Check::Malformed(_) => continue,
            }
        }
        Err(ForwardError::Mismatch { addr })
    }

    async fn exchange_tcp(
        &self,
        addr: SocketAddr,
        wire: &[u8],
        id: u16,
        q: &DnsQuery,
        deadline: tokio::time::Instant,
    ) -> Result<Vec<u8>, ForwardError> {
        let timeout = self.config.timeout;
        let io = |source| ForwardError::Io { addr, source };
        let work = async {
            let mut s = TcpStream::connect(addr).await.map_err(io)?;
            let mut framed = Vec::with_capacity(wire.len() + 2);
            framed.extend_from_slice(&(wire.len() as u16).to_be_bytes());
            framed.extend_from_slice(wire);
            s.write_all(&framed).await.map_err(io)?;
            let mut len = [0u8; 2];
            s.read_exact(&mut len).await.map_err(io)?;
            let mut resp = vec![0u8; usize::from(u16::from_be_bytes(len))];
            s.read_exact(&mut resp).await.map_err(io)?;
            match self.check(&resp, id, &q.info) {
                Check::Answer { .. } => Ok(resp),
                Check::Mismatch => Err(ForwardError::Mismatch { addr }),
                Check::Malformed(source) => Err(ForwardError::Malformed { addr, source }),
            }
        };
        match tokio::time::timeout_at(deadline + timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(ForwardError::Timeout { addr, timeout }),
        }
    }
}

// === ForwardStream ===

type Pending = Pin<Box<dyn Future<Output = (Arc<DnsQuery>, Bytes)> + Send>>;

struct ForwardStream {
    input: Events,
    shared: Arc<Shared>,
    gather: Gather,
    out: VecDeque<Event>,
    pending: FuturesUnordered<Pending>,
    end: Option<Event>,
    input_done: bool,
    finished: bool,
}

fn resolve_or_fail(shared: Arc<Shared>, q: Arc<DnsQuery>) -> Pending {
    use std::sync::atomic::Ordering::Relaxed;
    /// Gives the slot back however the resolution ends (a dropped stream included).
    struct Slot<'a>(&'a std::sync::atomic::AtomicUsize);
    impl Drop for Slot<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Relaxed);
        }
    }
    Box::pin(async move {
        let max = shared.config.max_in_flight_total;
        let resolved = match shared
            .in_flight
            .fetch_update(Relaxed, Relaxed, |n| (n < max).then_some(n + 1))
        {
            Ok(_) => {
                let _slot = Slot(&shared.in_flight);
                shared.resolve(&q).await
            }
            Err(_) => {
                tracing::debug!("dns-forward: max_in_flight_total reached; SERVFAIL");
                None
            }
        };
        let resp = resolved.unwrap_or_else(|| answer_code(&q.wire, &q.info, rcode::SERVFAIL, true));
        (q, Bytes::from(resp))
    })
}

impl Stream for ForwardStream {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskCx<'_>) -> Poll<Option<Event>> {
        let this = &mut *self;
        loop {
            if let Some(ev) = this.out.pop_front() {
                return Poll::Ready(Some(ev));
            }
            if this.finished {
                return Poll::Ready(None);
            }
            if !this.pending.is_empty()
                && let Poll::Ready(Some((q, resp))) = this.pending.poll_next_unpin(cx)
            {
                emit(&mut |e| this.out.push_back(e), q, true, resp);
                continue;
            }
            if this.input_done {
                if this.pending.is_empty() {
                    this.finished = true;
                    return Poll::Ready(Some(this.end.take().unwrap_or(Event::END)));
                }
                return Poll::Pending;
            }
            if this.pending.len() >= this.shared.config.max_in_flight {
                return Poll::Pending;
            }
            let ev = match this.input.as_mut().poll_next(cx) {
                Poll::Ready(Some(ev)) if ev.is_end() => {
                    this.input_done = true;
                    this.end = Some(ev);
                    continue;
                }
                Poll::Ready(Some(ev)) => ev,
                Poll::Ready(None) => {
                    this.input_done = true;
                    continue;
                }
                Poll::Pending => return Poll::Pending,
            };
            let shared = &this.shared;
            let pending = &mut this.pending;
            let out = &mut this.out;
            this.gather
                .on_event(ev, &mut |e| out.push_back(e), &mut |m, o| {
                    if m.answered {
                        return m.pass(o);
                    }
                    match shared.cached(&m.query) {
                        Some((resp, prefetch)) => {
                            if prefetch {
                                let (s, q) = (shared.clone(), m.query.clone());
                                tokio::spawn(async move {
                                    if s.resolve(&q).await.is_none() {
                                        s.prefetch_failed(&q);
                                    }
                                });
                            }
                            m.answer(Bytes::from(resp), o);
                        }
                        None => pending.push(resolve_or_fail(shared.clone(), m.query)),
                    }
                });
        }
    }
}
