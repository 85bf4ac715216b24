//! Tunnels through the HTTP/1.1 server side: `Upgrade` (WebSocket) and `CONNECT`.
//!
//! ```text
//!  client ─▶ RequestStream ─▶ Demux ─▶ [RequestStage ─▶ sub … mux-http, AnswerFailures] ─▶ EncodeResponses ─▶ client
//!                 ▲                                                                            │
//!                 └──────────────── Switch: "the response to request n was 101 / 2xx" ◀───────┘
//! ```
//!
//! **Upgrade.** A request with `Connection: upgrade` and `Upgrade: …` (HTTP/1.1, no body)
//! is decoded as a complete message whose `MessageEnd` tail is [`Continued`], so the
//! request's child stream stays open. The decoder then stops until the response to that
//! request is encoded (the [`Switch`] tells it): a 101 turns the rest of the client's bytes
//! into `Data` events for the same child (raw, after the message), a different status lets
//! the decoder go on with the next request. `mux-http` sends an upgrade request over a
//! connection of its own, never a pooled one, and streams both ways once the upstream
//! answered 101; the response's body is the upstream's raw bytes. When either side
//! closes, the tunnel ends: the client's FIN half-closes the upstream connection (its
//! bytes still flow back until it closes); the upstream's FIN ends the client connection
//! once everything was written.
//!
//! **CONNECT.** Off unless `demux-http` has a `connect:` block; the authority's port (and
//! host) must be on its allow-list (403 otherwise, 405 without the block, 400 for a
//! malformed authority). The tunnel's pipeline gets the client's raw bytes with the
//! authority in its context as a [`DialTarget`] and a [`Dialed`] signal; `connect` with
//! `target_from_context: true` dials it, and the client gets 200 once it is up (502, or
//! 504 for a connect timeout, when the pipeline fails first). The allow-lists match the
//! authority as written; `connect` then refuses a target that resolves to an internal
//! address (loopback, private, link-local…) unless it has `internal_targets: true`, and
//! the client gets 403. CONNECT over HTTP/2 (and
//! extended CONNECT, RFC 8441) is not served: 501.
//!
//! Both kinds of tunnel end after `tunnel_idle_timeout` without a byte either way.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context as TaskCx, Poll, Waker};
use std::time::Duration;

use flowgate_pipeline::joint::config::host_matches;
use flowgate_pipeline::registry::ConfigError;
use flowgate_pipeline::{
    Context, Description, ErrorKind, Event, Events, Filter, Head, Side, StreamError, SubPipeline,
    Tail,
};
use futures_core::Stream;
use http::header::{CONNECTION, CONTENT_LENGTH, UPGRADE};
use http::{HeaderValue, Method, StatusCode, Version, request, response};
use serde::{Deserialize, Serialize};
use tokio::time::{Instant, Sleep};

use flowgate_filters_net::{DialTarget, Dialed};
use flowgate_http::hop;

// === config ===

/// `upgrade:` of `demux-http` — which HTTP/1.1 upgrades are passed on.
///
/// ```yaml
/// upgrade: { enabled: true, protocols: [websocket] }
/// ```
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UpgradeConfig {
    /// Pass upgrade requests on (otherwise their `Upgrade` field is dropped and they are
    /// ordinary requests). Default true.
    #[serde(default = "flowgate_pipeline::registry::default_true")]
    pub enabled: bool,
    /// The protocols that may be asked for (the name of each `Upgrade` entry, `websocket`
    /// for `websocket/13`, case-insensitive); a request that asks for one not listed is an
    /// ordinary request. Empty: any but `h2c` (an upgrade to h2c would let the client talk
    /// HTTP/2 straight to the backend, past the proxy's per-request filters). Default empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub protocols: Vec<String>,
}

impl Default for UpgradeConfig {
    fn default() -> Self {
        UpgradeConfig {
            enabled: true,
            protocols: Vec::new(),
        }
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl UpgradeConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        for (i, p) in self.protocols.iter().enumerate() {
            if !is_token(p) {
                return Err(ConfigError::new(
                    format!("upgrade.protocols[{i}]"),
                    format!("`{p}` is not a protocol name (an HTTP token)"),
                ));
            }
        }
        Ok(())
    }

    /// Whether an upgrade request may be passed on.
    pub(crate) fn allows(&self, head: &request::Parts) -> bool {
        if !self.enabled {
            return false;
        }
        let mut any = false;
        for v in head.headers.get_all(UPGRADE) {
            let Ok(s) = v.to_str() else { return false };
            for p in s.split(',') {
                let name = p.trim().split('/').next().unwrap_or("").trim();
                if name.is_empty() {
                    continue;
                }
                any = true;
                let listed = if self.protocols.is_empty() {
                    // h2c only when listed: a backend that takes it serves the client's
                    // HTTP/2 directly, past every per-request filter (h2c smuggling).
                    !name.eq_ignore_ascii_case("h2c")
                } else {
                    self.protocols.iter().any(|a| a.eq_ignore_ascii_case(name))
                };
                if !listed {
                    return false;
                }
            }
        }
        any
    }
}

/// `connect:` of `demux-http` — CONNECT tunnels (off without it).
///
/// A CONNECT whose authority has an allowed port (and host) runs `pipeline` with the
/// client's raw bytes as input and the authority in its context (a `DialTarget`, with a
/// `Dialed` signal, from `flowgate_filters_net`); `connect: { target_from_context: true }`
/// dials it. The client gets 200 once the connection is up, 502 (504 on a connect
/// timeout) if the pipeline fails first, 403 for a target not allowed, 400 for a malformed
/// authority, and 405 when `demux-http` has no `connect` block; after a refusal the
/// connection closes. CONNECT over HTTP/2 (and RFC 8441 extended CONNECT) is answered
/// with 501.
///
/// ```yaml
/// connect: { pipeline: tunnel, ports: [443], hosts: ["*.example.com"] }
/// ```
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HttpConnectConfig {
    /// The pipeline of one tunnel: its input is the client's bytes, its output goes back
    /// (usually `[connect: { target_from_context: true }]`).
    pub pipeline: String,
    /// The target ports allowed. Default `[443]`.
    #[serde(default = "d_ports")]
    pub ports: Vec<u16>,
    /// The target hosts allowed: names (exact, case-insensitive, or `*.suffix`) or IP
    /// addresses. Empty: any. Default empty.
    ///
    /// Names are matched as written, before they are resolved, and no address range is
    /// refused by itself: with an empty list, or a name that resolves to one, a client can
    /// reach loopback and private addresses the proxy can reach. List the hosts (or run the
    /// proxy where it cannot reach what clients must not) when that matters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
}

fn d_ports() -> Vec<u16> {
    vec![443]
}

impl HttpConnectConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.pipeline.is_empty() {
            return Err(ConfigError::new("connect.pipeline", "name a pipeline"));
        }
        if self.ports.is_empty() {
            return Err(ConfigError::new(
                "connect.ports",
                "list at least one port (without the `connect` block CONNECT is refused)",
            ));
        }
        if self.ports.contains(&0) {
            return Err(ConfigError::new("connect.ports", "port 0 cannot be dialed"));
        }
        for (i, h) in self.hosts.iter().enumerate() {
            let name = h.strip_prefix("*.").unwrap_or(h);
            let ok = !name.is_empty()
                && (name.parse::<std::net::IpAddr>().is_ok()
                    || name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
            if !ok {
                return Err(ConfigError::new(
                    format!("connect.hosts[{i}]"),
                    format!("`{h}` is not a host name, `*.suffix` or an IP address"),
                ));
            }
        }
        Ok(())
    }

    /// What to answer a CONNECT to `authority`: `Ok(host:port)` to dial, or the status.
    pub(crate) fn check(&self, uri: &http::Uri) -> Result<String, StatusCode> {
        let Some(auth) = uri.authority() else {
            return Err(StatusCode::BAD_REQUEST);
        };
        if uri.scheme().is_some() || uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
            return Err(StatusCode::BAD_REQUEST);
        }
        let Some(port) = auth.port_u16() else {
            return Err(StatusCode::BAD_REQUEST);
        };
        let host = auth.host();
        if host.is_empty() || auth.as_str().contains('@') || port == 0 {
            return Err(StatusCode::BAD_REQUEST);
        }
        if !self.ports.contains(&port) {
            return Err(StatusCode::FORBIDDEN);
        }
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if !self.hosts.is_empty()
            && !self
                .hosts
                .iter()
                .any(|p| match p.parse::<std::net::IpAddr>() {
                    Ok(ip) => bare.parse::<std::net::IpAddr>() == Ok(ip),
                    Err(_) => host_matches(p, bare),
                })
        {
            return Err(StatusCode::FORBIDDEN);
        }
        Ok(auth.as_str().to_string())
    }
}

// === which requests tunnel ===

/// Whether a request asks to upgrade the connection: HTTP/1.1, not CONNECT, `Upgrade`
/// present and `upgrade` listed in `Connection`.
pub(crate) fn wants_upgrade(head: &request::Parts) -> bool {
    head.version == Version::HTTP_11
        && head.method != Method::CONNECT
        && head.headers.contains_key(UPGRADE)
        && hop::has_token(&head.headers, CONNECTION, "upgrade")
}

/// Whether a response head opens a tunnel for a request with `method`.
pub(crate) fn opens_tunnel(method_connect: bool, status: StatusCode) -> bool {
    status == StatusCode::SWITCHING_PROTOCOLS || (method_connect && status.is_success())
}

// === Switch ===

/// Which request of a connection may turn it into a tunnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Special {
    /// An upgrade request: the decoder waits for its response.
    Upgrade,
    /// A CONNECT: its body is the tunnel; the connection ends after its response.
    Connect,
}

/// What the response encoder does with a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// An ordinary response.
    Plain,
    /// The response opens a tunnel: its body is raw, and the connection ends with it.
    Tunnel,
    /// An ordinary response after which the connection closes (a refused CONNECT).
    Close,
}

/// Shared by the request decoder and the response encoder of one HTTP/1 connection (the
/// same task): the decoder marks the request that may switch protocols, the encoder says
/// how its response went.
#[derive(Default)]
pub(crate) struct Switch {
    /// The number (from 1) of the marked request; 0 for none. Read per response without
    /// the lock.
    at: AtomicU64,
    state: Mutex<SwitchState>,
    /// The client sent an HTTP/1.0 request: it cannot read chunked bodies.
    http10: std::sync::atomic::AtomicBool,
    /// The client's last request was HTTP/1.0 with `Connection: keep-alive`: its response
    /// must say so, or the client closes.
    keep_alive10: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct SwitchState {
    special: Option<Special>,
    /// For an upgrade: `Some(true)` when the response was 101.
    decided: Option<bool>,
    waker: Option<Waker>,
}

impl Switch {
    fn lock(&self) -> MutexGuard<'_, SwitchState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The decoder: request `n` is special.
    pub(crate) fn mark(&self, n: u64, special: Special) {
        let mut st = self.lock();
        st.special = Some(special);
        st.decided = None;
        self.at.store(n, Ordering::Release);
    }

    /// The decoder: the client speaks HTTP/1.0, and this request asked to keep the
    /// connection (or not).
    pub(crate) fn mark_http10(&self, keep_alive: bool) {
        self.http10.store(true, Ordering::Release);
        self.keep_alive10.store(keep_alive, Ordering::Release);
    }

    /// The encoder: whether the last HTTP/1.0 request asked for keep-alive.
    pub(crate) fn is_keep_alive10(&self) -> bool {
        self.keep_alive10.load(Ordering::Acquire)
    }

    /// The encoder: whether the client spoke HTTP/1.0.
    pub(crate) fn is_http10(&self) -> bool {
        self.http10.load(Ordering::Acquire)
    }

    /// The encoder: the head of the `n`th response has `status`.
    pub(crate) fn on_response(&self, n: u64, status: StatusCode) -> Verdict {
        if self.at.load(Ordering::Acquire) != n {
            return Verdict::Plain;
        }
        let mut st = self.lock();
        self.at.store(0, Ordering::Release);
        let verdict = match st.special.take() {
            Some(Special::Upgrade) => {
                let up = status == StatusCode::SWITCHING_PROTOCOLS;
                st.decided = Some(up);
                if up { Verdict::Tunnel } else { Verdict::Plain }
            }
            Some(Special::Connect) if status.is_success() => Verdict::Tunnel,
            Some(Special::Connect) => Verdict::Close,
            None => Verdict::Plain,
        };
        if let Some(w) = st.waker.take() {
            w.wake();
        }
        verdict
    }

    /// The decoder: whether the upgrade went through, once the response is known.
    pub(crate) fn poll_upgraded(&self, cx: &mut TaskCx<'_>) -> Poll<bool> {
        let mut st = self.lock();
        match st.decided.take() {
            Some(d) => Poll::Ready(d),
            None => {
                st.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

// === RequestStage ===

/// The first stage of `demux-http`'s per-request pipeline: runs ordinary requests through
/// `sub`, serves CONNECT (or refuses it), and watches tunnels for idleness.
pub(crate) struct RequestStage {
    pub(crate) sub: SubPipeline,
    pub(crate) connect: Option<(Arc<HttpConnectConfig>, SubPipeline)>,
    pub(crate) idle: Duration,
}

impl Filter for RequestStage {
    fn describe(&self) -> Description {
        let mut d = Description::filter("http-request-stage").with_sub(self.sub.name());
        if let Some((_, p)) = &self.connect {
            d = d.with_sub(p.name());
        }
        d
    }

    fn attach(&self, input: Events, cx: &Context) -> Events {
        Box::pin(StageStream {
            input: Some(input),
            cx: cx.clone(),
            sub: self.sub.clone(),
            connect: self.connect.clone(),
            idle: self.idle,
            out: None,
            queue: VecDeque::new(),
            watch: None,
            dialing: None,
            tunnel_on_101: false,
            connect_open: false,
            finished: false,
        })
    }

    fn subs(&self) -> Vec<SubPipeline> {
        let mut v = vec![self.sub.clone()];
        if let Some((_, p)) = &self.connect {
            v.push(p.clone());
        }
        v
    }
}

/// The last time a byte crossed a tunnel, in ms since `base`.
struct Activity {
    base: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }
    fn last(&self) -> Instant {
        self.base + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// The client's side of a tunnel: records activity, and for CONNECT (`raw`) passes only
/// the bytes and the end.
struct TunnelInput {
    inner: Events,
    activity: Arc<Activity>,
    raw: bool,
}

impl Stream for TunnelInput {
    type Item = Event;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskCx<'_>) -> Poll<Option<Event>> {
        loop {
            let ev = match self.inner.as_mut().poll_next(cx) {
                Poll::Ready(Some(ev)) => ev,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            };
            match ev {
                Event::Data(_) => self.activity.touch(),
                Event::MessageStart(_) | Event::MessageEnd(_) if self.raw => continue,
                _ => {}
            }
            return Poll::Ready(Some(ev));
        }
    }
}

/// The idle watch of an open tunnel.
struct Watch {
    activity: Arc<Activity>,
    timer: Option<Pin<Box<Sleep>>>,
}

/// A stream of `first`, then `rest`.
pub(crate) struct Prepend {
    pub(crate) first: Option<Event>,
    pub(crate) rest: Events,
}

impl Stream for Prepend {
    type Item = Event;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskCx<'_>) -> Poll<Option<Event>> {
        if let Some(ev) = self.first.take() {
            return Poll::Ready(Some(ev));
        }
        self.rest.as_mut().poll_next(cx)
    }
}

/// The cause of a tunnel closed for idleness.
#[derive(Debug, thiserror::Error)]
#[error("tunnel idle for {0:?}")]
pub struct TunnelIdle(pub Duration);

struct StageStream {
    /// The input until the first event decides the path.
    input: Option<Events>,
    cx: Context,
    sub: SubPipeline,
    connect: Option<(Arc<HttpConnectConfig>, SubPipeline)>,
    idle: Duration,
    out: Option<Events>,
    queue: VecDeque<Event>,
    /// Set once a tunnel is open (or, for an upgrade request, armed on 101).
    watch: Option<Watch>,
    /// A CONNECT waiting for its upstream connection.
    dialing: Option<DialWait>,
    /// An upgrade request: a 101 response opens the tunnel.
    tunnel_on_101: bool,
    /// An established CONNECT tunnel: the output is raw bytes, made into the body here.
    connect_open: bool,
    finished: bool,
}

/// What a CONNECT in progress waits on.
struct DialWait {
    activity: Arc<Activity>,
    dialed: Dialed,
}

/// A bodiless response head.
pub(crate) fn response(status: StatusCode) -> Event {
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = status;
    if !status.is_success() {
        parts
            .headers
            .insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
    }
    Event::MessageStart(Head::new(parts))
}

impl StageStream {
    fn activity(&self) -> Arc<Activity> {
        Arc::new(Activity {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
        })
    }

    fn refuse(&mut self, status: StatusCode) {
        self.queue.push_back(response(status));
        self.queue.push_back(Event::MessageEnd(Tail::none()));
        self.queue.push_back(Event::END);
        self.input = None;
    }

    /// Picks the path from the first input event.
    fn start(&mut self, first: Event, rest: Events) {
        let head = match &first {
            Event::MessageStart(h) => h.get::<request::Parts>(),
            _ => None,
        };
        let Some(head) = head else {
            // Not a request: pass it on as it is.
            let input = Box::pin(Prepend {
                first: Some(first),
                rest,
            });
            self.out = Some(self.sub.attach(input, &self.cx));
            return;
        };
        if head.method == Method::CONNECT {
            self.start_connect(head.clone(), rest);
            return;
        }
        if wants_upgrade(head) {
            let activity = self.activity();
            self.tunnel_on_101 = true;
            let input = Box::pin(Prepend {
                first: Some(first),
                rest: Box::pin(TunnelInput {
                    inner: rest,
                    activity: activity.clone(),
                    raw: false,
                }),
            });
            self.out = Some(self.sub.attach(input, &self.cx));
            self.watch = Some(Watch {
                activity,
                timer: None,
            });
            return;
        }
        let input = Box::pin(Prepend {
            first: Some(first),
            rest,
        });
        self.out = Some(self.sub.attach(input, &self.cx));
    }

    fn start_connect(&mut self, head: request::Parts, rest: Events) {
        if head.version != Version::HTTP_11 && head.version != Version::HTTP_10 {
            return self.refuse(StatusCode::NOT_IMPLEMENTED);
        }
        let Some((policy, pipeline)) = self.connect.clone() else {
            return self.refuse(StatusCode::METHOD_NOT_ALLOWED);
        };
        let target = match policy.check(&head.uri) {
            Ok(t) => t,
            Err(status) => return self.refuse(status),
        };
        self.start_dial(target, pipeline, rest);
    }

    fn start_dial(&mut self, target: String, pipeline: SubPipeline, rest: Events) {
        let activity = self.activity();
        let dialed = Dialed::default();
        self.cx.insert(DialTarget(target));
        self.cx.insert(dialed.clone());
        let input = Box::pin(TunnelInput {
            inner: rest,
            activity: activity.clone(),
            raw: true,
        });
        self.out = Some(pipeline.attach(input, &self.cx));
        self.dialing = Some(DialWait { activity, dialed });
    }

    /// The CONNECT's connection is up: answer 200 and tunnel.
    fn established(&mut self) {
        if let Some(d) = self.dialing.take() {
            d.activity.touch();
            self.queue.push_back(response(StatusCode::OK));
            self.connect_open = true;
            self.watch = Some(Watch {
                activity: d.activity,
                timer: None,
            });
            self.arm();
        }
    }

    fn poll_dialed(&mut self, _cx: &mut TaskCx<'_>) -> bool {
        if let Some(d) = &self.dialing {
            return d.dialed.poll_dialed(_cx).is_ready();
        }
        false
    }

    /// Polls the idle watch: `true` when the tunnel has been idle too long.
    fn idle_expired(&mut self, cx: &mut TaskCx<'_>) -> bool {
        let idle = self.idle;
        let Some(w) = &mut self.watch else {
            return false;
        };
        let Some(timer) = &mut w.timer else {
            return false;
        };
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            let deadline = w.activity.last() + idle;
            if Instant::now() >= deadline {
                return true;
            }
            timer.as_mut().reset(deadline);
        }
    }

    fn arm(&mut self) {
        let idle = self.idle;
        if let Some(w) = &mut self.watch
            && w.timer.is_none()
        {
            w.activity.touch();
            w.timer = Some(Box::pin(tokio::time::sleep(idle)));
        }
    }
}

impl Stream for StageStream {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskCx<'_>) -> Poll<Option<Event>> {
        let this = &mut *self;
        loop {
            if let Some(ev) = this.queue.pop_front() {
                if ev.is_end() {
                    this.finished = true;
                    this.queue.clear();
                    this.out = None;
                }
                return Poll::Ready(Some(ev));
            }
            if this.finished {
                return Poll::Ready(None);
            }
            if let Some(mut input) = this.input.take() {
                match input.as_mut().poll_next(cx) {
                    Poll::Ready(Some(first)) => {
                        this.start(first, input);
                        continue;
                    }
                    Poll::Ready(None) => {
                        this.finished = true;
                        return Poll::Ready(Some(Event::END));
                    }
                    Poll::Pending => {
                        this.input = Some(input);
                        return Poll::Pending;
                    }
                }
            }
            if this.dialing.is_some() && this.poll_dialed(cx) {
                this.established();
                continue;
            }
            let Some(out) = &mut this.out else {
                return Poll::Pending;
            };
            match out.as_mut().poll_next(cx) {
                Poll::Ready(Some(ev)) => {
                    if let Some(w) = &this.watch
                        && matches!(ev, Event::Data(_))
                    {
                        w.activity.touch();
                    }
                    if this.dialing.is_some() {
                        match ev {
                            // Bytes before the signal (a pipeline without `connect`): it is up.
                            Event::Data(_) => {
                                this.established();
                                this.queue.push_back(ev);
                            }
                            Event::StreamEnd(Some(e)) => {
                                this.dialing = None;
                                this.queue.push_back(Event::StreamEnd(Some(e)));
                            }
                            Event::StreamEnd(None) => {
                                this.dialing = None;
                                let e = StreamError::new(ErrorKind::ConnectFailed, Side::Upstream);
                                this.queue.push_back(Event::StreamEnd(Some(e)));
                            }
                            _ => {}
                        }
                        continue;
                    }
                    if this.connect_open {
                        // A CONNECT tunnel: the upstream's bytes are the response body.
                        match ev {
                            Event::Data(_) => return Poll::Ready(Some(ev)),
                            Event::StreamEnd(None) => {
                                this.queue.push_back(Event::MessageEnd(Tail::none()));
                                this.queue.push_back(Event::END);
                                continue;
                            }
                            Event::StreamEnd(Some(_)) => {
                                this.queue.push_back(ev);
                                continue;
                            }
                            _ => continue,
                        }
                    }
                    if this.tunnel_on_101
                        && let Event::MessageStart(h) = &ev
                        && !super::codec::is_interim_head(h)
                    {
                        this.tunnel_on_101 = false;
                        if h.get::<response::Parts>()
                            .is_some_and(|p| p.status == StatusCode::SWITCHING_PROTOCOLS)
                        {
                            this.arm();
                        } else {
                            this.watch = None;
                        }
                    }
                    if ev.is_end() {
                        this.finished = true;
                        this.out = None;
                    }
                    return Poll::Ready(Some(ev));
                }
                Poll::Ready(None) => {
                    this.out = None;
                    this.finished = true;
                    return Poll::Ready(Some(Event::END));
                }
                Poll::Pending => {}
            }
            if this.idle_expired(cx) {
                let e = StreamError::new(ErrorKind::IdleTimeout, Side::Upstream)
                    .with_cause(TunnelIdle(this.idle));
                this.queue.push_back(Event::StreamEnd(Some(e)));
                continue;
            }
            return Poll::Pending;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(upgrade: &str) -> request::Parts {
        let (parts, ()) = http::Request::get("/")
            .header("connection", "Upgrade")
            .header("upgrade", upgrade)
            .body(())
            .unwrap()
            .into_parts();
        parts
    }

    #[test]
    fn upgrade_policy() {
        let any = UpgradeConfig::default();
        assert!(wants_upgrade(&req("websocket")) && any.allows(&req("websocket")));
        // h2c (h2c smuggling) only when listed.
        assert!(!any.allows(&req("h2c")));
        assert!(!any.allows(&req("websocket, H2C")));
        let h2c = UpgradeConfig {
            enabled: true,
            protocols: vec!["h2c".into()],
        };
        assert!(h2c.allows(&req("h2c")));
        let ws = UpgradeConfig {
            enabled: true,
            protocols: vec!["WebSocket".into()],
        };
        assert!(ws.allows(&req("websocket/13")));
        assert!(!ws.allows(&req("h2c")));
        assert!(!ws.allows(&req("websocket, h2c")));
        let off = UpgradeConfig {
            enabled: false,
            protocols: Vec::new(),
        };
        assert!(!off.allows(&req("websocket")));
        let bad = UpgradeConfig {
            enabled: true,
            protocols: vec!["web socket".into()],
        };
        assert_eq!(bad.validate().unwrap_err().field, "upgrade.protocols[0]");
        // Upgrade without `upgrade` in Connection, or over HTTP/1.0, is not a request to switch.
        let mut p = req("websocket");
        p.headers
            .insert(CONNECTION, HeaderValue::from_static("keep-alive"));
        assert!(!wants_upgrade(&p));
        let mut p = req("websocket");
        p.version = Version::HTTP_10;
        assert!(!wants_upgrade(&p));
    }

    fn check(c: &HttpConnectConfig, target: &str) -> Result<String, u16> {
        let (parts, ()) = http::Request::connect(target)
            .body(())
            .unwrap()
            .into_parts();
        c.check(&parts.uri).map_err(|s| s.as_u16())
    }

    #[test]
    fn connect_policy() {
        let c = HttpConnectConfig {
            pipeline: "t".into(),
            ports: d_ports(),
            hosts: vec!["*.example.com".into(), "10.0.0.1".into(), "::1".into()],
        };
        assert!(c.validate().is_ok());
        assert_eq!(
            check(&c, "a.example.com:443"),
            Ok("a.example.com:443".into())
        );
        assert_eq!(check(&c, "10.0.0.1:443"), Ok("10.0.0.1:443".into()));
        assert_eq!(check(&c, "[::1]:443"), Ok("[::1]:443".into()));
        assert_eq!(check(&c, "example.com:443"), Err(403));
        assert_eq!(check(&c, "a.example.com:80"), Err(403));
        assert_eq!(check(&c, "a.example.com"), Err(400));
        let open = HttpConnectConfig {
            hosts: Vec::new(),
            ..c.clone()
        };
        assert!(check(&open, "anything.test:443").is_ok());
        for (bad, field) in [
            (
                HttpConnectConfig {
                    ports: Vec::new(),
                    ..c.clone()
                },
                "connect.ports",
            ),
            (
                HttpConnectConfig {
                    ports: vec![0],
                    ..c.clone()
                },
                "connect.ports",
            ),
            (
                HttpConnectConfig {
                    hosts: vec!["a b".into()],
                    ..c.clone()
                },
                "connect.hosts[0]",
            ),
            (
                HttpConnectConfig {
                    pipeline: String::new(),
                    ..c.clone()
                },
                "connect.pipeline",
            ),
        ] {
            assert_eq!(bad.validate().unwrap_err().field, field);
        }
    }

    #[test]
    fn the_switch_decides_only_for_the_marked_request() {
        let s = Switch::default();
        s.mark(3, Special::Upgrade);
        assert_eq!(
            s.on_response(2, StatusCode::SWITCHING_PROTOCOLS),
            Verdict::Plain
        );
        assert_eq!(
            s.on_response(3, StatusCode::SWITCHING_PROTOCOLS),
            Verdict::Tunnel
        );
        // Decided once: a later response is plain.
        assert_eq!(
            s.on_response(3, StatusCode::SWITCHING_PROTOCOLS),
            Verdict::Plain
        );
        s.mark(4, Special::Connect);
        assert_eq!(s.on_response(4, StatusCode::BAD_GATEWAY), Verdict::Close);
    }
}
