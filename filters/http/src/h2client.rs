//! The HTTP/2 client side of `mux-http`: requests as streams multiplexed over pooled
//! upstream connections.
//!
//! ```text
//!  request stream ─┐  (polled inline in the downstream connection's task)
//!  request stream ─┼─ pick: a connection with a free stream slot, or a new one
//!  request stream ─┘        │
//!                           ▼  SendRequest (h2)            one task per upstream connection
//!                ┌────────────────────────────────┐    ┌──────────────────────────────────┐
//!                │ h2 streams: HEADERS, DATA as   │◀──▶│ h2 Connection over EventIo:       │
//!                │ the window allows, trailers    │    │ writes → sub-pipeline input feed │
//!                └────────────────────────────────┘    │ reads  ← sub-pipeline output     │
//!                                                      │ idle close, PING, SETTINGS limit │
//!                                                      └──────────────────────────────────┘
//! ```
//!
//! The `h2` crate does the protocol. One upstream connection is one instance of the
//! sub-pipeline (`[connect]`, or `[connect-tls → connect]` with ALPN `h2`) driven by an
//! `h2::client::Connection` in its own task on the current worker, like a `Mux` session;
//! `EventIo` turns the sub-pipeline's events into the `AsyncRead + AsyncWrite` h2 wants
//! and keeps the sub-pipeline's own error (a refused connect, a TLS failure) so requests
//! fail with it rather than with h2's bare I/O error. Connections are pooled per worker
//! thread; each carries up to `min(max_concurrent_streams, the server's
//! SETTINGS_MAX_CONCURRENT_STREAMS)` requests at once, and a new one is opened when all
//! are full.
//!
//! A request stream is one future, polled inline by the `mux-http` stream that owns it (no
//! task per request): it sends the head (one HEADERS frame with END_STREAM when there is no
//! body), uploads the body as the stream's send window allows and reads the next event
//! only then, and hands the response on, releasing receive window only as the pipeline
//! takes the data. So both directions follow the pipeline's back-pressure. Interim
//! responses (103 Early Hints, 100 Continue; h2's `poll_informational`) are handed on as
//! they arrive, before the final head; a 101, which HTTP/2 does not have, fails the
//! request.
//!
//! Failures: a connection that is going away (GOAWAY) or broken takes no new requests; a
//! request that could not be started on it is started on another connection (up to three
//! tries) and then fails as retry-safe. A stream the server refused (REFUSED_STREAM, or
//! above the last stream id of a graceful GOAWAY) was not processed: a request without a
//! body is sent again at once (up to six sends), one with a body fails retry-safe so that
//! `retry` can send it again. Any other reset is a plain upstream failure: a 502 before the
//! response head, an aborted response after. One stream's failure never touches the
//! connection's others.
//!
//! Servers that retire connections after so many requests: the streams sent in the round
//! trip before their GOAWAY arrives are refused, so the pool learns the limit (the same
//! accepted count on two connections in a row, see [`Budget`]) and then stops each
//! connection there. hypercorn (0.18, python-h2) breaks its own GOAWAY: it answers none of
//! the streams in flight, even those the GOAWAY says it took, and fails the connection on
//! any frame after it; a PING sent on every GOAWAY (see [`Pinger`]) makes that happen at
//! once, and idempotent requests without a body that it dropped are sent again.

use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context as TaskCx, Poll, Waker};
use std::thread::ThreadId;
use std::time::Duration;

use bytes::Bytes;
use flowgate_pipeline::feed::{FeedSender, feed};
use flowgate_pipeline::{
    Context, ErrorKind, Event, Events, Head, Side, StreamError, SubPipeline, Tail,
};
use futures_util::future::{Either, select};
use futures_util::{FutureExt, StreamExt};
use h2::client::{Connection, ResponseFuture, SendRequest};
use h2::{Ping, PingPong, Reason, SendStream};
use http::header::{CONNECTION, HOST, HeaderValue, TE, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, Method, Request, Uri, Version, request};
use serde::{Deserialize, Serialize};
use tokio::time::{Instant, Sleep};

use super::codec::{MAX_INTERIM, TooManyInterim, Trailers, interim_end};
use super::event_io::{EventIo, Inline};
use super::tunnel::{has_token, tokens};

/// The HTTP version `mux-http` speaks to its upstreams (`protocol:`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 keep-alive connections, one request at a time each (the default).
    #[default]
    Http1,
    /// HTTP/2: h2c with prior knowledge over `connect`, or h2 over `connect-tls` (give it
    /// `alpn: [h2]`); many requests share a connection.
    Http2,
}

/// The `:scheme` sent to an HTTP/2 upstream for requests that came without one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamScheme {
    /// `http` (the default; h2c).
    #[default]
    Http,
    /// `https` (h2 over `connect-tls`).
    Https,
}

/// HTTP/2 settings and limits of `mux-http` towards its upstreams (`http2:`), used when
/// `protocol: http2`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Http2UpstreamConfig {
    /// Requests one connection carries at once; the server's
    /// SETTINGS_MAX_CONCURRENT_STREAMS lowers it. Default 100.
    #[serde(default = "d_streams")]
    pub max_concurrent_streams: u32,
    /// Largest decoded response header list in bytes (RFC 9113 accounting); a bigger one
    /// fails the request (502). Default 64 KiB.
    #[serde(default = "d_header_list")]
    pub max_header_list_size: u32,
    /// Each stream's receive window in bytes. Default 1 MiB.
    #[serde(default = "d_window")]
    pub initial_window_size: u32,
    /// The connection's receive window in bytes. Default 4 MiB.
    #[serde(default = "d_conn_window")]
    pub initial_connection_window_size: u32,
    /// Largest frame payload the server may send (16 KiB to 16 MiB). Default 16 KiB.
    #[serde(default = "d_frame")]
    pub max_frame_size: u32,
    /// `:scheme` for requests whose URI has none: `http` (default) or `https`.
    #[serde(default)]
    pub scheme: UpstreamScheme,
    /// Send a PING this often and close the connection when no answer comes within
    /// `keepalive_timeout`. Default off.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "flowgate_pipeline::serde_duration::option"
    )]
    pub keepalive_interval: Option<Duration>,
    /// How long a PING answer may take. Default 20 s.
    #[serde(default = "d_ping_timeout", with = "flowgate_pipeline::serde_duration")]
    pub keepalive_timeout: Duration,
    /// Connections each worker keeps to the upstream at most. When all of them carry
    /// their `max_concurrent_streams`, a request waits for a stream to end (or a
    /// connection to close) instead of opening another. Default 64.
    #[serde(default = "d_max_conns")]
    pub max_connections: u32,
}

fn d_streams() -> u32 {
    100
}
fn d_header_list() -> u32 {
    64 * 1024
}
fn d_window() -> u32 {
    1 << 20
}
fn d_conn_window() -> u32 {
    4 << 20
}
fn d_frame() -> u32 {
    16 * 1024
}
fn d_ping_timeout() -> Duration {
    Duration::from_secs(20)
}
fn d_max_conns() -> u32 {
    64
}

impl Default for Http2UpstreamConfig {
    fn default() -> Self {
        Http2UpstreamConfig {
            max_concurrent_streams: d_streams(),
            max_header_list_size: d_header_list(),
            initial_window_size: d_window(),
            initial_connection_window_size: d_conn_window(),
            max_frame_size: d_frame(),
            scheme: UpstreamScheme::Http,
            keepalive_interval: None,
            keepalive_timeout: d_ping_timeout(),
            max_connections: d_max_conns(),
        }
    }
}

impl Http2UpstreamConfig {
    /// Checks the values against what HTTP/2 allows.
    pub(crate) fn validate(&self) -> Result<(), &'static str> {
        const MAX_WINDOW: u32 = (1 << 31) - 1;
        if self.max_concurrent_streams == 0 {
            return Err("max_concurrent_streams must be at least 1");
        }
        if self.max_connections == 0 {
            return Err("max_connections must be at least 1");
        }
        if !(16_384..=16_777_215).contains(&self.max_frame_size) {
            return Err("max_frame_size must be from 16384 to 16777215");
        }
        if self.initial_window_size > MAX_WINDOW || self.initial_connection_window_size > MAX_WINDOW
        {
            return Err("window sizes must be below 2^31");
        }
        if self.max_header_list_size < 1024 {
            return Err("max_header_list_size must be at least 1024");
        }
        if self.keepalive_interval.is_some_and(|d| d.is_zero()) || self.keepalive_timeout.is_zero()
        {
            return Err("keepalive_interval and keepalive_timeout must be more than zero");
        }
        Ok(())
    }

    fn builder(&self) -> h2::client::Builder {
        let mut b = h2::client::Builder::new();
        b.max_header_list_size(self.max_header_list_size)
            .initial_window_size(self.initial_window_size)
            .initial_connection_window_size(self.initial_connection_window_size)
            .max_frame_size(self.max_frame_size)
            // We never accept pushed streams.
            .enable_push(false);
        b
    }
}

/// Why an HTTP/2 request to an upstream failed, as the cause of its stream error.
#[derive(Debug, thiserror::Error)]
pub enum H2ClientError {
    /// The h2 protocol engine failed on this stream or its connection.
    #[error("HTTP/2 upstream: {0}")]
    Protocol(#[from] h2::Error),
    /// The HTTP/2 client could not start over the sub-pipeline.
    #[error("HTTP/2 upstream handshake did not start")]
    Handshake,
    /// A keep-alive PING got no answer in time.
    #[error("HTTP/2 upstream did not answer a PING within {0:?}")]
    KeepaliveTimeout(Duration),
    /// The request stream ended before its message did.
    #[error("the request ended before its body was complete")]
    TruncatedRequest,
    /// The request stream carried something other than a request head.
    #[error("expected an HTTP request head")]
    NotARequest,
    /// The upstream answered 101, which HTTP/2 does not have (RFC 9113 §8.6).
    #[error("HTTP/2 upstream answered 101 Switching Protocols")]
    SwitchingProtocols,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// === H2Pool ===

/// The HTTP/2 connections of one `mux-http`, per worker thread.
pub(crate) struct H2Pool {
    cfg: Http2UpstreamConfig,
    sub: SubPipeline,
    max_idle: Duration,
    max_requests: u64,
    conns: Mutex<HashMap<ThreadId, Vec<Arc<Conn>>>>,
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
struct Budget {
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
struct Conn {
    id: u64,
    send: SendRequest<Bytes>,
    state: Mutex<ConnState>,
    /// The server's SETTINGS_MAX_CONCURRENT_STREAMS as h2 last saw it.
    server_max: AtomicUsize,
    /// The sub-pipeline's error, when that is what ended the connection.
    failure: Arc<Mutex<Option<StreamError>>>,
    /// The lowest stream id the server refused for going away (0: none).
    first_refused: AtomicU64,
    /// The server said GOAWAY on this connection.
    went_away: AtomicBool,
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

struct ConnState {
    in_flight: usize,
    carried: u64,
    /// Takes no new requests (going away, broken, idle, or carried `max_requests`).
    retired: bool,
    last_used: Instant,
    /// The connection task, woken when the last request leaves.
    task: Option<Waker>,
}

/// A request's claim on a stream slot of a connection; released on drop.
struct Slot {
    conn: Arc<Conn>,
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
    fn limit(&self, cap: u32) -> usize {
        (cap as usize)
            .min(self.server_max.load(Ordering::Relaxed))
            .max(1)
    }

    fn failure(&self) -> Option<StreamError> {
        lock(&self.failure).clone()
    }

    /// Notes that the server refused stream `id` because it is going away.
    fn refused_by_goaway(&self, id: u32) {
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
    async fn pick(self: &Arc<Self>, cx: &Context) -> Result<Slot, StreamError> {
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
    fn retire(&self, conn: &Conn) {
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

fn remove_from_pool(pool: &Weak<H2Pool>, key: ThreadId, id: u64) {
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

/// What a connection task knows of its pool.
struct ConnEnv {
    pool: Weak<H2Pool>,
    /// The pool's [`H2Pool::known_server_max`].
    known_server_max: Arc<AtomicUsize>,
    key: ThreadId,
    max_idle: Duration,
    /// PING interval and answer timeout.
    keepalive: Option<(Duration, Duration)>,
}

/// The PINGs of one connection: keep-alive ones every `interval` (when configured), and
/// one as soon as the server says GOAWAY while requests are in flight. Either must be
/// answered within `timeout`, or the connection is taken for dead.
///
/// The GOAWAY probe is there for servers that stop serving a connection when they say
/// GOAWAY although its last stream id promises to finish the streams below it: hypercorn
/// (python-h2's `close_connection` leaves its connection state machine closed) can then
/// neither answer those streams nor take any frame, and only closes the connection at its
/// keep-alive timeout (5 s). The PING makes such a server fail the connection at once
/// (GOAWAY PROTOCOL_ERROR), so the requests can be sent again (see [`send_bodiless`]); a
/// server that keeps its promise just answers it.
struct Pinger {
    pings: PingPong,
    interval: Option<Duration>,
    timeout: Duration,
    timer: Pin<Box<Sleep>>,
    waiting: bool,
}

impl Pinger {
    fn new(pings: PingPong, interval: Option<Duration>, timeout: Duration) -> Self {
        Pinger {
            pings,
            interval,
            timeout,
            timer: Box::pin(tokio::time::sleep(interval.unwrap_or(timeout))),
            waiting: false,
        }
    }

    /// Sends a PING now unless one is already waiting for its answer.
    fn probe(&mut self) -> Result<(), H2ClientError> {
        if self.waiting {
            return Ok(());
        }
        self.pings.send_ping(Ping::opaque())?;
        self.waiting = true;
        self.timer.as_mut().reset(Instant::now() + self.timeout);
        Ok(())
    }

    /// Ready with an error when a PING went unanswered.
    fn poll(&mut self, task: &mut TaskCx<'_>) -> Poll<H2ClientError> {
        loop {
            if self.waiting {
                match self.pings.poll_pong(task) {
                    Poll::Ready(Ok(_)) => {
                        self.waiting = false;
                        if let Some(i) = self.interval {
                            self.timer.as_mut().reset(Instant::now() + i);
                        }
                        continue;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(e.into()),
                    Poll::Pending => {}
                }
            } else if self.interval.is_none() {
                return Poll::Pending;
            }
            if self.timer.as_mut().poll(task).is_pending() {
                return Poll::Pending;
            }
            if self.waiting {
                return Poll::Ready(H2ClientError::KeepaliveTimeout(self.timeout));
            }
            if let Err(e) = self.probe() {
                return Poll::Ready(e);
            }
        }
    }
}

/// Drives one upstream connection until it fails, is closed by the server, or is closed
/// by us (idle for `max_idle`, or retired with nothing in flight).
async fn run_connection(
    env: ConnEnv,
    conn: Arc<Conn>,
    mut connection: Connection<EventIo, Bytes>,
    tx: Arc<FeedSender>,
) {
    let ConnEnv {
        pool,
        known_server_max,
        key,
        max_idle,
        keepalive,
    } = env;
    let (interval, timeout) = match keepalive {
        Some((i, t)) => (Some(i), t),
        None => (None, d_ping_timeout()),
    };
    let mut pings = connection
        .ping_pong()
        .map(|p| Pinger::new(p, interval, timeout));
    // Polled only to learn that the server said GOAWAY (it fails from then on).
    let mut probe = conn.send.clone();
    let mut going_away = false;
    let mut idle = Box::pin(tokio::time::sleep(max_idle));
    let mut last_server_max = usize::MAX;
    let end: Result<(), H2ClientError> = poll_fn(|task| {
        if let Poll::Ready(r) = Pin::new(&mut connection).poll(task) {
            if r.as_ref().is_err_and(|e| e.is_go_away() && e.is_remote()) {
                conn.went_away.store(true, Ordering::Relaxed);
            }
            return Poll::Ready(r.map_err(H2ClientError::from));
        }
        let server_max = connection.max_concurrent_send_streams();
        conn.server_max.store(server_max, Ordering::Relaxed);
        // Unlimited (usize::MAX) when the server sets no limit: nothing to learn then.
        if server_max != usize::MAX && server_max != last_server_max {
            last_server_max = server_max;
            known_server_max.store(server_max, Ordering::Relaxed);
        }
        if !going_away && let Poll::Ready(Err(e)) = probe.poll_ready(task) {
            going_away = true;
            conn.went_away.store(e.is_go_away(), Ordering::Relaxed);
            tracing::debug!(error = %e, "HTTP/2 upstream connection is going away");
            // No new requests here; make sure the server still serves those in flight.
            lock(&conn.state).retired = true;
            remove_from_pool(&pool, key, conn.id);
            if lock(&conn.state).in_flight > 0
                && let Some(p) = pings.as_mut()
                && let Err(e) = p.probe()
            {
                return Poll::Ready(Err(e));
            }
        }
        if let Some(p) = pings.as_mut()
            && let Poll::Ready(e) = p.poll(task)
        {
            return Poll::Ready(Err(e));
        }
        let mut st = lock(&conn.state);
        if st.in_flight > 0 {
            st.task = Some(task.waker().clone());
            return Poll::Pending;
        }
        if st.retired {
            return Poll::Ready(Ok(()));
        }
        let deadline = st.last_used + max_idle;
        st.task = Some(task.waker().clone());
        drop(st);
        if idle.deadline() != deadline {
            idle.as_mut().reset(deadline);
        }
        if idle.as_mut().poll(task).is_pending() {
            return Poll::Pending;
        }
        // Idle: retire under the pool lock so that no request picks it meanwhile.
        let Some(p) = pool.upgrade() else {
            return Poll::Ready(Ok(()));
        };
        let _guard = lock(&p.conns);
        let mut st = lock(&conn.state);
        if st.in_flight == 0 {
            st.retired = true;
            return Poll::Ready(Ok(()));
        }
        Poll::Pending
    })
    .await;
    lock(&conn.state).retired = true;
    remove_from_pool(&pool, key, conn.id);
    if let Err(e) = end {
        tracing::debug!(error = %e, "HTTP/2 upstream connection ended");
        let mut f = lock(&conn.failure);
        if f.is_none() {
            *f = Some(StreamError::new(ErrorKind::ConnectionReset, Side::Upstream).with_cause(e));
        }
    }
    // Close the upstream side; streams still open learn it when `connection` drops.
    tx.push(Event::END);
    drop(connection);
}

// === request streams ===

/// Response events waiting for the pipeline before more response data is read.
const MAX_QUEUED_EVENTS: usize = 4;

/// Tries to start a request on a fresh connection after the picked one turned out to be
/// going away or broken.
const START_TRIES: usize = 3;

/// Sends of a request without a body, the first included, while the server refuses it
/// (it was not processed, so sending it again is always safe) or, for an idempotent
/// method, while the server retires its connection without answering it (RFC 9110
/// §9.2.2 allows sending those again). A server that retires
/// connections refuses the streams sent in the round trip before its GOAWAY arrived, and
/// under load a request can land in that window more than once in a row.
const RESEND_TRIES: usize = 6;

/// Whether the server said it did not process the stream (RFC 9113 §8.7): REFUSED_STREAM,
/// or a stream above the last one a graceful GOAWAY kept.
fn is_refused(e: &h2::Error) -> bool {
    e.is_remote()
        && ((e.is_reset() && e.reason() == Some(Reason::REFUSED_STREAM))
            || (e.is_go_away() && e.reason() == Some(Reason::NO_ERROR)))
}

fn upstream_error(e: h2::Error, conn: &Conn) -> StreamError {
    // Refused streams were never processed: safe to send again.
    let refused = is_refused(&e);
    if !refused && let Some(f) = conn.failure() {
        return f;
    }
    let kind = if e.is_io() || e.is_go_away() || e.is_reset() {
        ErrorKind::ConnectionReset
    } else {
        ErrorKind::Protocol
    };
    StreamError::new(kind, Side::Upstream)
        .retry_safe(refused)
        .with_cause(H2ClientError::Protocol(e))
}

/// Whether `e` says the connection (not the request) is unusable.
fn is_connection_error(e: &h2::Error) -> bool {
    e.is_io() || e.is_go_away() || e.reason().is_some()
}

/// Whether the stream failed because the server retired its connection and then did not
/// finish it: a GOAWAY with an error, or the connection closing after a GOAWAY (hypercorn
/// does both, see [`Pinger`]). Not a reset of this one stream, nor a connection that
/// failed for another reason (a keep-alive timeout): those are left to `retry`.
fn is_lost_to_goaway(e: &h2::Error, conn: &Conn) -> bool {
    (e.is_go_away() && e.is_remote())
        || ((e.is_io() || e.is_go_away()) && conn.went_away.load(Ordering::Relaxed))
}

/// Methods that may be sent again after a failure whose effect is unknown (RFC 9110
/// §9.2.2).
fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// A stream refused because of a graceful GOAWAY: noted on its connection, whose server
/// then has shown how many streams it takes (see [`Budget`]).
fn note_refusal(e: &h2::Error, conn: &Conn, id: h2::StreamId) {
    if is_refused(e) && e.is_go_away() {
        conn.refused_by_goaway(id.as_u32());
    }
}

/// Runs each request message of `input` as an HTTP/2 stream, one after the other, and
/// pushes the responses into `out`.
async fn exchange(pool: Arc<H2Pool>, mut input: Events, out: FeedSender, cx: Context) {
    loop {
        let parts = match input.next().await.unwrap_or(Event::END) {
            Event::MessageStart(h) => match h.get::<request::Parts>() {
                Some(p) => p.clone(),
                None => {
                    out.push(Event::StreamEnd(Some(
                        StreamError::new(ErrorKind::Internal, Side::Internal)
                            .with_cause(H2ClientError::NotARequest),
                    )));
                    return;
                }
            },
            Event::StreamEnd(e) => {
                out.push(Event::StreamEnd(e));
                return;
            }
            Event::Data(_) | Event::MessageEnd(_) => continue,
        };
        // A request without a body goes out as one HEADERS frame with END_STREAM.
        let next = input.next().await.unwrap_or(Event::END);
        let (eos, first) = match next {
            Event::MessageEnd(t) if t.get::<Trailers>().is_none_or(HeaderMap::is_empty) => {
                (true, None)
            }
            other => (false, Some(other)),
        };
        let req = h2_request(&parts, pool.cfg.scheme);
        if eos {
            // Nothing to upload, so a refused request can be sent again right here.
            let outcome = match send_bodiless(&pool, &cx, req, &out).await {
                Ok((slot, resp)) => forward(resp, &out, &slot.conn).await,
                Err(e) => Err(e),
            };
            if let Err(e) = outcome {
                out.push(Event::StreamEnd(Some(e)));
                return;
            }
            continue;
        }
        let (slot, response, body) = match start(&pool, &cx, req, eos).await {
            Ok(started) => started,
            Err(e) => {
                out.push(Event::StreamEnd(Some(e)));
                return;
            }
        };
        let outcome = {
            let upload = pin!(upload(&mut input, first, body));
            let download = pin!(download(response, &out, &slot.conn));
            match select(upload, download).await {
                Either::Left((Ok(complete), download)) => download.await.map(|()| complete),
                Either::Left((Err(e), _)) => Err(e),
                Either::Right((Ok(()), _)) => Ok(false),
                Either::Right((Err(e), _)) => Err(e),
            }
        };
        drop(slot);
        match outcome {
            Ok(true) => {}
            // The response is over before the request body was sent: the rest of the
            // request is not wanted, and this stream ends here.
            Ok(false) => {
                out.push(Event::END);
                return;
            }
            Err(e) => {
                out.push(Event::StreamEnd(Some(e)));
                return;
            }
        }
    }
}

/// Sends a request without a body and waits for its response head, sending it again on
/// another connection when the server refused the stream, or when it retired the
/// connection without answering an idempotent request (up to [`RESEND_TRIES`] sends) —
/// unless an interim response to it already went on to the client.
async fn send_bodiless(
    pool: &Arc<H2Pool>,
    cx: &Context,
    req: Request<()>,
    out: &FeedSender,
) -> Result<(Slot, http::Response<h2::RecvStream>), StreamError> {
    let idempotent = is_idempotent(req.method());
    let mut tries = 0;
    let mut interims = 0;
    loop {
        tries += 1;
        let (slot, response, _body) = start(pool, cx, req.clone(), true).await?;
        let id = response.stream_id();
        let e = match final_head(response, out, &mut interims).await {
            Ok(resp) => return Ok((slot, resp)),
            Err(HeadFailure::Invalid(e)) => return Err(e),
            Err(HeadFailure::H2(e)) => e,
        };
        note_refusal(&e, &slot.conn, id);
        let lost = is_lost_to_goaway(&e, &slot.conn);
        if !(is_refused(&e) || (idempotent && lost)) || tries >= RESEND_TRIES || interims > 0 {
            return Err(upstream_error(e, &slot.conn));
        }
        if lost {
            pool.retire(&slot.conn);
        }
        tracing::debug!(error = %e, "HTTP/2 upstream did not process a request; sending it again");
    }
}

/// Picks a connection and opens a stream on it with the request head.
async fn start(
    pool: &Arc<H2Pool>,
    cx: &Context,
    req: Request<()>,
    eos: bool,
) -> Result<(Slot, ResponseFuture, SendStream<Bytes>), StreamError> {
    let mut last = None;
    for _ in 0..START_TRIES {
        let slot = pool.pick(cx).await?;
        let mut send = slot.conn.send.clone();
        let sent = match poll_fn(|c| send.poll_ready(c)).await {
            Ok(()) => send.send_request(req.clone(), eos),
            Err(e) => Err(e),
        };
        match sent {
            Ok((response, body)) => return Ok((slot, response, body)),
            Err(e) if is_connection_error(&e) => {
                pool.retire(&slot.conn);
                // The sub-pipeline failed (a refused connect…): that is the answer.
                if let Some(f) = slot.conn.failure() {
                    return Err(f.retry_safe(true));
                }
                // Going away or closed: nothing was sent, so another connection may take it.
                last = Some(
                    StreamError::new(ErrorKind::ConnectionReset, Side::Upstream)
                        .retry_safe(true)
                        .with_cause(H2ClientError::Protocol(e)),
                );
            }
            Err(e) => {
                return Err(StreamError::new(ErrorKind::Protocol, Side::Internal)
                    .with_cause(H2ClientError::Protocol(e)));
            }
        }
    }
    Err(last.unwrap_or_else(|| StreamError::new(ErrorKind::ConnectionReset, Side::Upstream)))
}

/// Sends the request body (and trailers) as the stream's window allows. `Ok(true)` once
/// the message is sent whole; `Ok(false)` when the upstream stopped taking it (what went
/// wrong shows on the response side); an error when the request stream failed.
async fn upload(
    input: &mut Events,
    mut first: Option<Event>,
    mut body: SendStream<Bytes>,
) -> Result<bool, StreamError> {
    if first.is_none() {
        return Ok(true);
    }
    loop {
        let ev = match first.take() {
            Some(ev) => ev,
            None => input.next().await.unwrap_or(Event::END),
        };
        match ev {
            Event::Data(b) => {
                if send_data(&mut body, b).await.is_err() {
                    return Ok(false);
                }
            }
            Event::MessageEnd(t) => {
                let sent = match t.get::<Trailers>().filter(|t| !t.is_empty()) {
                    Some(t) => body.send_trailers(t.clone()),
                    None => body.send_data(Bytes::new(), true),
                };
                return Ok(sent.is_ok());
            }
            Event::StreamEnd(e) => {
                body.send_reset(Reason::CANCEL);
                return Err(e.unwrap_or_else(|| {
                    StreamError::new(ErrorKind::Protocol, Side::Downstream)
                        .with_cause(H2ClientError::TruncatedRequest)
                }));
            }
            Event::MessageStart(_) => {
                body.send_reset(Reason::CANCEL);
                return Err(StreamError::new(ErrorKind::Protocol, Side::Downstream)
                    .with_cause(H2ClientError::TruncatedRequest));
            }
        }
    }
}

/// Sends `data` as the peer's window allows.
async fn send_data(stream: &mut SendStream<Bytes>, mut data: Bytes) -> Result<(), ()> {
    while !data.is_empty() {
        stream.reserve_capacity(data.len());
        let cap = match poll_fn(|c| stream.poll_capacity(c)).await {
            Some(Ok(n)) => n,
            _ => return Err(()),
        };
        if cap == 0 {
            continue;
        }
        let chunk = data.split_to(cap.min(data.len()));
        stream.send_data(chunk, false).map_err(|_| ())?;
    }
    Ok(())
}

/// Hands the response on: its interim responses, its head, its data as the pipeline takes
/// it (releasing receive window only then), its trailers.
async fn download(
    response: ResponseFuture,
    out: &FeedSender,
    conn: &Conn,
) -> Result<(), StreamError> {
    let id = response.stream_id();
    let resp = final_head(response, out, &mut 0)
        .await
        .map_err(|f| match f {
            HeadFailure::H2(e) => {
                note_refusal(&e, conn, id);
                upstream_error(e, conn)
            }
            HeadFailure::Invalid(e) => e,
        })?;
    forward(resp, out, conn).await
}

/// Why no final response head came.
enum HeadFailure {
    /// The stream or its connection failed.
    H2(h2::Error),
    /// The upstream broke HTTP's rules (a 101, too many interim responses).
    Invalid(StreamError),
}

/// Waits for the final response head, pushing the interim responses that come before it
/// (103 Early Hints, 100 Continue) into `out` at once, each as a bodiless message whose
/// tail is [`Interim`](flowgate_pipeline::joint::Interim); `interims` counts them, up to
/// [`MAX_INTERIM`].
async fn final_head(
    mut response: ResponseFuture,
    out: &FeedSender,
    interims: &mut usize,
) -> Result<http::Response<h2::RecvStream>, HeadFailure> {
    poll_fn(|c| {
        // h2 queues interim heads in front of the final one; `poll_informational` takes
        // them (Pending: nothing has arrived yet; None: the final head is next).
        loop {
            match response.poll_informational(c) {
                Poll::Ready(Some(Ok(r))) => {
                    let cause = if r.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                        Some(
                            StreamError::new(ErrorKind::Protocol, Side::Upstream)
                                .with_cause(H2ClientError::SwitchingProtocols),
                        )
                    } else if *interims >= MAX_INTERIM {
                        Some(
                            StreamError::new(ErrorKind::Protocol, Side::Upstream)
                                .with_cause(TooManyInterim),
                        )
                    } else {
                        None
                    };
                    if let Some(e) = cause {
                        return Poll::Ready(Err(HeadFailure::Invalid(e)));
                    }
                    *interims += 1;
                    let (parts, ()) = r.into_parts();
                    out.push(Event::MessageStart(Head::new(parts)));
                    out.push(interim_end());
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(HeadFailure::H2(e))),
                Poll::Ready(None) => break,
                Poll::Pending => return Poll::Pending,
            }
        }
        Pin::new(&mut response).poll(c).map_err(HeadFailure::H2)
    })
    .await
}

/// Hands a response on (see [`download`]).
async fn forward(
    resp: http::Response<h2::RecvStream>,
    out: &FeedSender,
    conn: &Conn,
) -> Result<(), StreamError> {
    let (parts, mut body) = resp.into_parts();
    out.push(Event::MessageStart(Head::new(parts)));
    while let Some(chunk) = poll_fn(|c| body.poll_data(c)).await {
        let b = chunk.map_err(|e| {
            // The head is on its way to the client: this stream can no longer be re-sent.
            tracing::debug!(error = %e, "HTTP/2 upstream stream failed after its response head");
            upstream_error(e, conn)
        })?;
        poll_fn(|c| out.poll_drained(c, MAX_QUEUED_EVENTS)).await;
        if out.is_receiver_gone() {
            return Err(StreamError::new(ErrorKind::Cancelled, Side::Downstream));
        }
        let n = b.len();
        out.push(Event::Data(b));
        let _ = body.flow_control().release_capacity(n);
    }
    let trailers = poll_fn(|c| body.poll_trailers(c))
        .await
        .map_err(|e| upstream_error(e, conn))?;
    out.push(Event::MessageEnd(match trailers {
        Some(t) if !t.is_empty() => Tail::new::<Trailers>(t),
        _ => Tail::none(),
    }));
    Ok(())
}

/// The HTTP/2 form of a pipeline request head: an absolute URI (`:scheme`, `:authority`
/// from `Host`), and no connection-specific fields (RFC 9113 §8.2.2).
fn h2_request(parts: &request::Parts, scheme: UpstreamScheme) -> Request<()> {
    let mut headers = parts.headers.clone();
    strip_connection_fields(&mut headers, true);
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            headers
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        });
    let scheme = parts.uri.scheme_str().unwrap_or(match scheme {
        UpstreamScheme::Http => "http",
        UpstreamScheme::Https => "https",
    });
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let absolute = authority.and_then(|a| {
        Uri::builder()
            .scheme(scheme)
            .authority(a.as_str())
            .path_and_query(path)
            .build()
            .ok()
    });
    let mut req = Request::new(());
    *req.method_mut() = parts.method.clone();
    match absolute {
        Some(uri) => {
            *req.uri_mut() = uri;
            *req.version_mut() = Version::HTTP_2;
            // `:authority` carries it.
            headers.remove(HOST);
        }
        None => {
            // No authority known: h2 sends `:scheme http` and the path alone.
            *req.uri_mut() = parts.uri.clone();
            *req.version_mut() = Version::HTTP_11;
        }
    }
    *req.headers_mut() = headers;
    req
}

/// Removes the fields HTTP/2 forbids (RFC 9113 §8.2.2): `Connection` and what it names,
/// `Keep-Alive`, `Proxy-Connection`, `Transfer-Encoding`, `Upgrade`, and `TE` — in a
/// request (`te_trailers`) all but `TE: trailers`. Both HTTP/2 sides use it.
pub(crate) fn strip_connection_fields(headers: &mut HeaderMap, te_trailers: bool) {
    let listed: Vec<http::HeaderName> = tokens(headers, CONNECTION)
        .filter_map(|t| http::HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for n in listed {
        headers.remove(n);
    }
    for n in [CONNECTION, TRANSFER_ENCODING, UPGRADE] {
        headers.remove(n);
    }
    for n in ["keep-alive", "proxy-connection"] {
        headers.remove(n);
    }
    let keep_te = te_trailers && has_token(headers, TE, "trailers");
    headers.remove(TE);
    if keep_te {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
}

#[cfg(test)]
#[path = "h2client_tests.rs"]
mod tests;
