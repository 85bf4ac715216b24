//! The connection pool of one `mux-http`: connections per worker thread, a stream slot
//! per request, waiting for room at `max_connections`, and what the pool learns of the
//! server (its stream limit, its per-connection request [`Budget`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::Waker;
use std::thread::ThreadId;
use std::time::Duration;

use bytes::Bytes;
use flowgate_pipeline::feed::feed;
use flowgate_pipeline::{Context, ErrorKind, Events, Side, StreamError, SubPipeline};
use futures_util::FutureExt;
use h2::client::SendRequest;
use tokio::time::Instant;

use super::conn::{ConnEnv, run_connection};
use super::request::exchange;
use super::{H2ClientError, Http2UpstreamConfig, lock};
use crate::event_io::{EventIo, Inline};

/// The HTTP/2 connections of one `mux-http`, per worker thread.
pub(crate) struct H2Pool {
    pub(super) cfg: Http2UpstreamConfig,
    sub: SubPipeline,
    max_idle: Duration,
    max_requests: u64,
    pub(super) conns: Mutex<HashMap<ThreadId, Vec<Arc<Conn>>>>,
    next_id: AtomicU64,
    /// The last SETTINGS_MAX_CONCURRENT_STREAMS a server of this pool sent: a new
    /// connection assumes it until its own SETTINGS come, so a burst of requests on a
    /// fresh connection is not refused wholesale by a server with a lower limit.
    known_server_max: Arc<AtomicUsize>,
    /// What the pool learned of the server's own per-connection request limit (see
    /// [`Budget`]).
    budget: Arc<Budget>,
    /// Wakes requests waiting for room (a stream ended, a connection left the pool).
    freed: Arc<Room>,
}

/// The server's per-connection request limit, learned from its GOAWAYs.
///
/// Servers retire a connection after so many requests (nginx `keepalive_requests`,
/// hypercorn `keep_alive_max_requests`, Envoy `max_requests_per_connection`) with a
/// graceful GOAWAY. Every stream sent in the round trip before that GOAWAY arrives is
/// refused and must be sent again; under load that is a good part of the traffic, and a
/// request can be refused several times in a row. When two connections in a row were
/// refused streams after the same number of accepted ones, that number is taken as the
/// server's limit: later connections take no more requests than that and close when
/// drained, so the server never has to refuse. A count seen once (a restart, a reload)
/// teaches nothing.
#[derive(Default)]
pub(super) struct Budget {
    /// The accepted-stream count of the last connection that had streams refused.
    last_seen: AtomicU64,
    /// The learned limit; 0 while none is known.
    learned: AtomicU64,
}

impl Budget {
    /// A connection ended whose server accepted `served` streams and refused the ones
    /// after them.
    fn refused_after(&self, served: u64) {
        if served == 0 {
            return;
        }
        if self.last_seen.swap(served, Ordering::Relaxed) == served {
            self.learned.store(served, Ordering::Relaxed);
        }
    }

    fn get(&self) -> Option<u64> {
        Some(self.learned.load(Ordering::Relaxed)).filter(|&n| n > 0)
    }
}

/// One upstream connection as the requests see it.
pub(super) struct Conn {
    pub(super) id: u64,
    pub(super) send: SendRequest<Bytes>,
    pub(super) state: Mutex<ConnState>,
    /// The server's SETTINGS_MAX_CONCURRENT_STREAMS as h2 last saw it.
    pub(super) server_max: AtomicUsize,
    /// The sub-pipeline's error, when that is what ended the connection.
    pub(super) failure: Arc<Mutex<Option<StreamError>>>,
    /// The lowest stream id the server refused for going away (0: none).
    pub(super) first_refused: AtomicU64,
    /// The server said GOAWAY on this connection.
    pub(super) went_away: AtomicBool,
    /// The pool's [`H2Pool::budget`], told what the server accepted when the connection
    /// and its last request are gone (the connection task may end before the requests
    /// have seen their refusals).
    budget: Arc<Budget>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(served) = self.served_before_refusal() {
            tracing::debug!(served, "HTTP/2 upstream refused the streams after these");
            self.budget.refused_after(served);
        }
    }
}

pub(super) struct ConnState {
    pub(super) in_flight: usize,
    pub(super) carried: u64,
    /// Takes no new requests (going away, broken, idle, or carried `max_requests`).
    pub(super) retired: bool,
    pub(super) last_used: Instant,
    /// The connection task, woken when the last request leaves.
    pub(super) task: Option<Waker>,
}

/// A request's claim on a stream slot of a connection; released on drop.
pub(super) struct Slot {
    pub(super) conn: Arc<Conn>,
    freed: Arc<Room>,
}

/// Requests waiting for a stream at `max_connections`, and how to wake them. Freeing a
/// stream costs an atomic load unless someone waits (no shared lock per request).
#[derive(Default)]
struct Room {
    notify: tokio::sync::Notify,
    /// Requests between registering for a wake-up and getting a slot. Incremented before
    /// they look for room, and read after a stream or connection was given back (both
    /// under a pool or connection lock), so a release they did not see wakes them.
    waiting: AtomicUsize,
}

impl Room {
    fn freed(&self) {
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.notify.notify_waiters();
        }
    }
}

/// Counts a waiting request until dropped.
struct Waiting<'a>(&'a Room);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut st = lock(&self.conn.state);
        st.in_flight = st.in_flight.saturating_sub(1);
        st.last_used = Instant::now();
        if st.in_flight == 0
            && let Some(w) = st.task.take()
        {
            w.wake();
        }
        drop(st);
        self.freed.freed();
    }
}

impl Conn {
    pub(super) fn limit(&self, cap: u32) -> usize {
        (cap as usize)
            .min(self.server_max.load(Ordering::Relaxed))
            .max(1)
    }

    pub(super) fn failure(&self) -> Option<StreamError> {
        lock(&self.failure).clone()
    }

    /// Notes that the server refused stream `id` because it is going away.
    pub(super) fn refused_by_goaway(&self, id: u32) {
        let id = u64::from(id);
        let _ = self
            .first_refused
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                (old == 0 || id < old).then_some(id)
            });
    }

    /// How many streams the server accepted before those it refused for going away
    /// (client stream ids are 1, 3, 5…), if it refused any.
    fn served_before_refusal(&self) -> Option<u64> {
        let first = self.first_refused.load(Ordering::Relaxed);
        (first > 0).then(|| first.saturating_sub(1) / 2)
    }
}

impl H2Pool {
    pub(crate) fn new(
        cfg: Http2UpstreamConfig,
        sub: SubPipeline,
        max_idle: Duration,
        max_requests: u64,
    ) -> Self {
        H2Pool {
            cfg,
            sub,
            max_idle,
            max_requests,
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            known_server_max: Arc::new(AtomicUsize::new(cfg.max_concurrent_streams as usize)),
            budget: Arc::new(Budget::default()),
            freed: Arc::new(Room::default()),
        }
    }

    pub(crate) fn config(&self) -> &Http2UpstreamConfig {
        &self.cfg
    }

    /// How many connections are open now, over all workers.
    pub(crate) fn connection_count(&self) -> usize {
        lock(&self.conns).values().map(Vec::len).sum()
    }

    /// Runs the request messages of `input` as HTTP/2 streams; the output is their
    /// responses.
    pub(crate) fn attach(self: &Arc<Self>, input: Events, cx: &Context) -> Events {
        let (tx, rx) = feed();
        let fut = exchange(self.clone(), input, tx, cx.clone());
        Box::pin(Inline::new(fut, rx))
    }

    /// A stream slot on a connection with room, or on a new connection.
    /// A connection with room for one more stream: a pooled one, a new one, or — when
    /// this worker has `max_connections` and all are full — the first to make room.
    pub(super) async fn pick(self: &Arc<Self>, cx: &Context) -> Result<Slot, StreamError> {
        if let Some(slot) = self.try_pick(cx)? {
            return Ok(slot);
        }
        self.freed.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.freed);
        loop {
            // Registered before looking, so a stream that ends meanwhile is not missed.
            let freed = self.freed.notify.notified();
            let mut freed = std::pin::pin!(freed);
            freed.as_mut().enable();
            if let Some(slot) = self.try_pick(cx)? {
                return Ok(slot);
            }
            freed.await;
        }
    }

    fn try_pick(self: &Arc<Self>, cx: &Context) -> Result<Option<Slot>, StreamError> {
        let key = std::thread::current().id();
        let mut conns = lock(&self.conns);
        let list = conns.entry(key).or_default();
        let cap = self.cfg.max_concurrent_streams;
        let found = list
            .iter()
            .find(|c| {
                let st = lock(&c.state);
                !st.retired && st.in_flight < c.limit(cap)
            })
            .cloned();
        let conn = match found {
            Some(c) => c,
            None if list.len() >= self.cfg.max_connections as usize => return Ok(None),
            None => {
                let c = self.open(cx, key)?;
                list.push(c.clone());
                c
            }
        };
        let mut st = lock(&conn.state);
        st.in_flight += 1;
        st.carried += 1;
        let max = match (self.max_requests, self.budget.get()) {
            (0, learned) => learned.unwrap_or(0),
            (mine, learned) => learned.map_or(mine, |l| l.min(mine)),
        };
        let left = max > 0 && st.carried >= max;
        if left {
            st.retired = true;
            list.retain(|c| c.id != conn.id);
        }
        drop(st);
        drop(conns);
        if left {
            // Room for another connection.
            self.freed.freed();
        }
        Ok(Some(Slot {
            conn,
            freed: self.freed.clone(),
        }))
    }

    /// Takes `conn` out of the pool: it gets no new requests.
    pub(super) fn retire(&self, conn: &Conn) {
        let mut conns = lock(&self.conns);
        lock(&conn.state).retired = true;
        let key = std::thread::current().id();
        if let Some(list) = conns.get_mut(&key) {
            list.retain(|c| c.id != conn.id);
            if list.is_empty() {
                conns.remove(&key);
            }
        }
        drop(conns);
        self.freed.freed();
    }

    fn open(self: &Arc<Self>, cx: &Context, key: ThreadId) -> Result<Arc<Conn>, StreamError> {
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|e| StreamError::new(ErrorKind::Internal, Side::Internal).with_cause(e))?;
        let (tx, rx) = feed();
        let tx = Arc::new(tx);
        let failure = Arc::new(Mutex::new(None));
        let io = EventIo::new(self.sub.attach(Box::pin(rx), cx), tx.clone())
            .keep_failure(failure.clone());
        let known = self.known_server_max.load(Ordering::Relaxed);
        let mut builder = self.cfg.builder();
        builder.initial_max_send_streams(known);
        // The handshake only writes the preface into the feed, so it is done at once.
        let (send, connection) = match builder.handshake::<_, Bytes>(io).now_or_never() {
            Some(Ok(pair)) => pair,
            Some(Err(e)) => {
                // Most likely the sub-pipeline already failed (a refused connect).
                let known = lock(&failure).take();
                return Err(known
                    .unwrap_or_else(|| {
                        StreamError::new(ErrorKind::Protocol, Side::Upstream)
                            .with_cause(H2ClientError::Protocol(e))
                    })
                    .retry_safe(true));
            }
            None => {
                return Err(StreamError::new(ErrorKind::Internal, Side::Internal)
                    .with_cause(H2ClientError::Handshake));
            }
        };
        let conn = Arc::new(Conn {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            send,
            state: Mutex::new(ConnState {
                in_flight: 0,
                carried: 0,
                retired: false,
                last_used: Instant::now(),
                task: None,
            }),
            server_max: AtomicUsize::new(known),
            failure,
            first_refused: AtomicU64::new(0),
            went_away: AtomicBool::new(false),
            budget: self.budget.clone(),
        });
        let env = ConnEnv {
            pool: Arc::downgrade(self),
            known_server_max: self.known_server_max.clone(),

            key,
            max_idle: self.max_idle,
            keepalive: self
                .cfg
                .keepalive_interval
                .map(|i| (i, self.cfg.keepalive_timeout)),
        };
        handle.spawn(run_connection(env, conn.clone(), connection, tx));
        Ok(conn)
    }
}

pub(super) fn remove_from_pool(pool: &Weak<H2Pool>, key: ThreadId, id: u64) {
    if let Some(pool) = pool.upgrade() {
        let mut conns = lock(&pool.conns);
        if let Some(list) = conns.get_mut(&key) {
            list.retain(|c| c.id != id);
            if list.is_empty() {
                conns.remove(&key);
            }
        }
        drop(conns);
        pool.freed.freed();
    }
}
