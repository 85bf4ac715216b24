//! `Connect`: writes its input to an upstream TCP connection and outputs what comes back.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context as TaskCx, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use flowgate_lb::Group;
use flowgate_lb::health::HealthCheckConfig;
use flowgate_pipeline::registry::{BuildContext, ConfigError, FilterConfig};
use flowgate_pipeline::renamed::{self, Renamed};
use flowgate_pipeline::server::{TcpSource, WriteGather, io_error};
use flowgate_pipeline::{
    Context, Description, Dyn, ErrorKind, Event, Events, Filter, Side, StreamError,
};
use futures_core::Stream;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::time::{Instant, Sleep};

/// One upstream address, or several to spread connections over.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum Targets {
    /// One `host:port`.
    One(String),
    /// Several `host:port`s, picked round robin.
    Many(Vec<String>),
}

/// Configuration of [`Connect`] (`connect:` in YAML).
///
/// ```yaml
/// - connect:
///     endpoints: [127.0.0.1:9001, 127.0.0.1:9002]   # or one address
///     connect_timeout: 5s
///     idle_timeout: 10m
/// ```
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectConfig {
    /// Where to connect: `host:port`, or a list picked round robin. Optional when
    /// `original_dst` is set.
    #[serde(default)]
    pub endpoints: Option<Targets>,
    #[doc(hidden)]
    #[serde(default, rename = "target", skip_serializing)]
    pub renamed_target: Renamed<renamed::Target>,
    /// Connect to the stream's original destination (from `SO_ORIGINAL_DST` or PROXY
    /// protocol) when it has one. Default false.
    #[serde(default)]
    pub original_dst: bool,
    /// How long connecting may take. Default 5 s.
    #[serde(
        default = "default_connect_timeout",
        with = "flowgate_pipeline::serde_duration"
    )]
    pub connect_timeout: Duration,
    /// Close the connection after this long with no bytes in either direction. Default 10 m.
    #[serde(
        default = "default_idle_timeout",
        with = "flowgate_pipeline::serde_duration"
    )]
    pub idle_timeout: Duration,
    /// TCP_NODELAY on the upstream socket. Default true.
    #[serde(default = "flowgate_pipeline::registry::default_true")]
    pub nodelay: bool,
    /// Balance connections over `endpoints` with flowgate-lb instead of plain round robin:
    /// any of its algorithms (`round_robin`, `weighted_round_robin`, `random`,
    /// `least_request` — least connections here —, `peak_ewma`, `ring_hash`, `maglev`; hash
    /// algorithms key on the client's IP), passive outlier detection (a failed connect
    /// counts), slow start and sticky sessions. Targets must then be `IP:port`.
    ///
    /// ```yaml
    /// balance: { algorithm: { type: maglev }, outlier: { consecutive_connect_failures: 1 } }
    /// ```
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance: Option<flowgate_lb::BalancerConfig>,
    /// Active health checks of the endpoints (flowgate-lb's TCP or HTTP probes, started
    /// with the first connection): endpoints that fail them are not picked. Implies
    /// `balance` (round robin when absent); endpoints must then be `IP:port`. Off when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckConfig>,
    /// Connect to the [`DialTarget`] another filter put in the stream's context (demux-http's
    /// `connect` option puts a CONNECT request's authority there) when there is one,
    /// before `endpoints`. Default false.
    #[serde(default)]
    pub target_from_context: bool,
    /// Let a target taken from the context (a client's CONNECT) resolve to an internal
    /// address: loopback, private (RFC 1918, IPv6 unique local), link-local, shared
    /// (100.64.0.0/10), unspecified, broadcast or multicast. Default false: such a dial
    /// fails with [`InternalTarget`] (403 through `demux-http`), so a client cannot reach the
    /// proxy's own network by naming it, whatever name it uses. Targets from the
    /// configuration are never checked.
    #[serde(default)]
    pub internal_targets: bool,
    /// TCP keep-alive idle time on the upstream socket; none by default.
    #[serde(
        default,
        with = "flowgate_pipeline::serde_duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub keepalive: Option<Duration>,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(600)
}

impl Default for ConnectConfig {
    fn default() -> Self {
        ConnectConfig {
            endpoints: None,
            renamed_target: Renamed::default(),
            original_dst: false,
            connect_timeout: default_connect_timeout(),
            idle_timeout: default_idle_timeout(),
            nodelay: true,
            balance: None,
            health_check: None,
            target_from_context: false,
            internal_targets: false,
            keepalive: None,
        }
    }
}

impl FilterConfig for ConnectConfig {
    fn build(self: Box<Self>, _cx: &BuildContext) -> Result<Arc<dyn Filter>, ConfigError> {
        let targets = match &self.endpoints {
            None => Vec::new(),
            Some(Targets::One(t)) => vec![t.clone()],
            Some(Targets::Many(v)) => v.clone(),
        };
        if targets.is_empty() && !self.original_dst && !self.target_from_context {
            return Err(ConfigError::new(
                "endpoints",
                "give a `host:port` (or a list), or set `original_dst: true` or `target_from_context: true`",
            ));
        }
        for (i, t) in targets.iter().enumerate() {
            check_target(t).map_err(|p| ConfigError::new(format!("endpoints[{i}]"), p))?;
        }
        if self.connect_timeout.is_zero() {
            return Err(ConfigError::new(
                "connect_timeout",
                "must be more than zero",
            ));
        }
        let group = if self.balance.is_some() || self.health_check.is_some() {
            let mut backends = Vec::with_capacity(targets.len());
            for (i, t) in targets.iter().enumerate() {
                let addr: std::net::SocketAddr = t.parse().map_err(|_| {
                    ConfigError::new(
                        format!("endpoints[{i}]"),
                        "with `balance` or `health_check`, endpoints are IP:port",
                    )
                })?;
                backends.push(flowgate_lb::Backend::new(addr));
            }
            let mut g = Group::new(self.balance.clone().unwrap_or_default(), backends)?;
            if let Some(hc) = &self.health_check {
                g = g.health_check(hc.clone())?;
            }
            Some(g)
        } else {
            None
        };
        let mut c = Connect::from_config(*self, targets);
        c.group = group;
        Ok(Arc::new(c))
    }
}

fn check_target(t: &str) -> Result<(), String> {
    let Some((host, port)) = t.rsplit_once(':') else {
        return Err(format!("`{t}` is not `host:port`"));
    };
    if host.is_empty() {
        return Err(format!("`{t}` has no host"));
    }
    port.parse::<u16>()
        .map_err(|_| format!("`{t}` has no valid port"))?;
    Ok(())
}

/// The `host:port` a stream asks [`Connect`] to dial, put in its context by an earlier
/// filter (`demux-http` puts the authority of an accepted CONNECT request there). Only a
/// `Connect` built with `target_from_context` uses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DialTarget(pub String);

/// A target from the context resolved to an internal address and `internal_targets` is
/// off: the dial was refused (see [`ConnectConfig::internal_targets`]).
#[derive(Clone, Debug, thiserror::Error)]
#[error("`{target}` resolves to {addr}, an internal address (allow with `internal_targets: true`)")]
pub struct InternalTarget {
    /// The target as asked for.
    pub target: String,
    /// The address it resolved to.
    pub addr: SocketAddr,
}

/// Whether `ip` is an address a client-chosen target must not reach (see
/// [`ConnectConfig::internal_targets`]).
pub fn is_internal(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
        }
    }
}

/// A signal from [`Connect`] to whoever put it in the stream's context: the upstream
/// connection is up. `demux-http` waits for it before it answers a CONNECT request with
/// 200 (and answers 502 when the stream fails first).
///
/// ```
/// use flowgate_filters_net::Dialed;
/// let d = Dialed::default();
/// assert!(!d.is_dialed());
/// d.clone().notify();
/// assert!(d.is_dialed());
/// ```
#[derive(Clone, Default)]
pub struct Dialed(Arc<DialedInner>);

#[derive(Default)]
struct DialedInner {
    done: std::sync::atomic::AtomicBool,
    waker: std::sync::Mutex<Option<std::task::Waker>>,
}

impl Dialed {
    /// Records that the connection is up and wakes the waiting task.
    pub fn notify(&self) {
        self.0.done.store(true, Ordering::Release);
        let w = self
            .0
            .waker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(w) = w {
            w.wake();
        }
    }

    /// Whether the connection is up.
    pub fn is_dialed(&self) -> bool {
        self.0.done.load(Ordering::Acquire)
    }

    /// Ready once the connection is up.
    pub fn poll_dialed(&self, cx: &mut TaskCx<'_>) -> Poll<()> {
        if self.is_dialed() {
            return Poll::Ready(());
        }
        *self.0.waker.lock().unwrap_or_else(|p| p.into_inner()) = Some(cx.waker().clone());
        if self.is_dialed() {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

impl std::fmt::Debug for Dialed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Dialed({})", self.is_dialed())
    }
}

/// Connects upstream for each stream: its input is written to the connection and its output
/// is what the upstream sends back, so a TCP proxy is `[Connect]`.
///
/// The connection opens when the stream starts; until it is up, input is not read. A failed
/// connect ends the stream with `ConnectFailed`/`ConnectTimeout` (upstream, retry safe).
/// When the input ends, the upstream write side is shut down (half-close) and the output
/// goes on until the upstream closes. No bytes either way for `idle_timeout` ends the stream
/// with `IdleTimeout`.
pub struct Connect {
    config: ConnectConfig,
    targets: Vec<String>,
    dynamic: Option<Dyn<String>>,
    next: AtomicUsize,
    group: Option<Group>,
}

impl Connect {
    /// Connects to `target` (`host:port`).
    pub fn to(target: impl Into<String>) -> Self {
        Self::round_robin([target.into()])
    }

    /// Spreads connections over `targets`, round robin.
    pub fn round_robin<S: Into<String>>(targets: impl IntoIterator<Item = S>) -> Self {
        let targets: Vec<String> = targets.into_iter().map(Into::into).collect();
        let config = ConnectConfig {
            endpoints: Some(Targets::Many(targets.clone())),
            ..Default::default()
        };
        Self::from_config(config, targets)
    }

    /// Connects to an address computed per stream from the context.
    pub fn dynamic(target: Dyn<String>) -> Self {
        Connect {
            dynamic: Some(target),
            ..Self::from_config(ConnectConfig::default(), Vec::new())
        }
    }

    fn from_config(config: ConnectConfig, targets: Vec<String>) -> Self {
        Connect {
            config,
            targets,
            dynamic: None,
            next: AtomicUsize::new(0),
            group: None,
        }
    }

    /// Sets the connect timeout.
    #[must_use]
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.config.connect_timeout = d;
        self
    }

    /// Sets the idle timeout.
    #[must_use]
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.config.idle_timeout = d;
        self
    }

    /// Prefers the [`DialTarget`] in the stream's context when it has one.
    #[must_use]
    pub fn target_from_context(mut self, on: bool) -> Self {
        self.config.target_from_context = on;
        self
    }

    /// Prefers the stream's original destination when it has one.
    #[must_use]
    pub fn original_dst(mut self, on: bool) -> Self {
        self.config.original_dst = on;
        self
    }

    /// Sets TCP keep-alive on upstream sockets.
    #[must_use]
    pub fn keepalive(mut self, idle: Option<Duration>) -> Self {
        self.config.keepalive = idle;
        self
    }

    /// The target to dial, its lease, and whether it came from the context.
    fn pick(&self, cx: &Context) -> Option<(String, Option<flowgate_lb::Lease>, bool)> {
        if self.config.original_dst
            && let Some(a) = cx.conn().original_dst
        {
            return Some((a.to_string(), None, false));
        }
        if self.config.target_from_context
            && let Some(t) = cx.get::<DialTarget>()
        {
            return Some((t.0, None, true));
        }
        self.pick_target(cx).map(|(t, lease)| (t, lease, false))
    }

    /// A configured target: dynamic, balanced, or round robin.
    fn pick_target(&self, cx: &Context) -> Option<(String, Option<flowgate_lb::Lease>)> {
        if let Some(d) = &self.dynamic {
            return Some((d.eval(cx, None), None));
        }
        if let Some(group) = &self.group {
            let lease = group.pick(flowgate_lb::peer_key(cx.conn().peer))?;
            return Some((lease.addr().to_string(), Some(lease)));
        }
        match self.targets.len() {
            0 => None,
            1 => self.targets.first().map(|t| (t.clone(), None)),
            n => self
                .targets
                .get(self.next.fetch_add(1, Ordering::Relaxed) % n)
                .map(|t| (t.clone(), None)),
        }
    }
}

impl Filter for Connect {
    fn describe(&self) -> Description {
        Description::filter("connect").options(&self.config)
    }

    fn attach(&self, input: Events, cx: &Context) -> Events {
        let Some((target, lease, from_context)) = self.pick(cx) else {
            return flowgate_pipeline::error_stream(StreamError::new(
                ErrorKind::NoRoute,
                Side::Internal,
            ));
        };
        let c = self.config.clone();
        let guarded = from_context && !c.internal_targets;
        let connecting = Box::pin(async move {
            let addr = resolve(&target).await?;
            if guarded && is_internal(addr.ip()) {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    InternalTarget { target, addr },
                ));
            }
            let s = tokio::time::timeout(c.connect_timeout, TcpStream::connect(addr))
                .await
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("connecting to {target} timed out"),
                    )
                })??;
            s.set_nodelay(c.nodelay)?;
            if let Some(idle) = c.keepalive {
                let ka = socket2::TcpKeepalive::new().with_time(idle);
                socket2::SockRef::from(&s).set_tcp_keepalive(&ka)?;
            }
            Ok(s)
        });
        Box::pin(ConnectStream {
            input,
            state: State::Connecting(connecting),
            idle: self.config.idle_timeout,
            lease,
            dialed: cx.get::<Dialed>(),
            negotiated: cx.get::<crate::Negotiated>(),
        })
    }
}

async fn resolve(target: &str) -> io::Result<SocketAddr> {
    if let Ok(a) = target.parse::<SocketAddr>() {
        return Ok(a);
    }
    tokio::net::lookup_host(target)
        .await?
        .next()
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("`{target}` resolves to no address"),
            )
        })
}

type Connecting = Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send>>;

enum State {
    Connecting(Connecting),
    Open(Box<Open>),
    Done,
}

struct Open {
    read: TcpSource,
    write: OwnedWriteHalf,
    pending: Option<Bytes>,
    input_done: bool,
    shut: bool,
    last_activity: Instant,
    timer: Pin<Box<Sleep>>,
    timer_armed: bool,
}

struct ConnectStream {
    input: Events,
    state: State,
    idle: Duration,
    /// The balancer's lease on the upstream: held while the connection lives (so least
    /// request means least connections), told whether connecting worked.
    lease: Option<flowgate_lb::Lease>,
    /// Told when the connection is up, if someone asked.
    dialed: Option<Dialed>,
    /// Told that the connection is plain TCP (unless a TLS layer above says otherwise).
    negotiated: Option<crate::Negotiated>,
}

impl ConnectStream {
    fn fail(&mut self, e: StreamError) -> Poll<Option<Event>> {
        self.state = State::Done;
        Poll::Ready(Some(Event::StreamEnd(Some(e))))
    }
}

impl Stream for ConnectStream {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskCx<'_>) -> Poll<Option<Event>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::Done => return Poll::Ready(None),
                State::Connecting(fut) => match fut.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => {
                        if let Some(r) =
                            e.get_ref().and_then(|r| r.downcast_ref::<InternalTarget>())
                        {
                            // A policy refusal, not a failure of the upstream.
                            return this.fail(
                                StreamError::new(ErrorKind::NoRoute, Side::Internal)
                                    .with_cause(r.clone()),
                            );
                        }
                        let err =
                            io_error(e, ErrorKind::ConnectFailed, Side::Upstream).retry_safe(true);
                        if let Some(mut l) = this.lease.take() {
                            l.record(if err.kind() == ErrorKind::ConnectTimeout {
                                flowgate_lb::Outcome::Timeout
                            } else {
                                flowgate_lb::Outcome::ConnectFailure
                            });
                        }
                        return this.fail(err);
                    }
                    Poll::Ready(Ok(s)) => {
                        if let Some(l) = &mut this.lease {
                            l.record(flowgate_lb::Outcome::Success);
                        }
                        if let Some(d) = this.dialed.take() {
                            d.notify();
                        }
                        if let Some(n) = this.negotiated.take() {
                            n.connected();
                        }
                        let (r, w) = s.into_split();
                        let now = Instant::now();
                        this.state = State::Open(Box::new(Open {
                            read: TcpSource::new(r, Side::Upstream),
                            write: w,
                            pending: None,
                            input_done: false,
                            shut: false,
                            last_activity: now,
                            timer: Box::pin(tokio::time::sleep_until(now + this.idle)),
                            timer_armed: false,
                        }));
                    }
                },
                State::Open(open) => {
                    // Upstream-bound: write what we have, then pull more input.
                    loop {
                        if let Some(b) = &mut open.pending {
                            match Pin::new(&mut open.write).poll_write(cx, b) {
                                Poll::Ready(Ok(n)) => {
                                    b.advance(n);
                                    if b.is_empty() {
                                        open.pending = None;
                                    }
                                    open.last_activity = Instant::now();
                                    continue;
                                }
                                Poll::Ready(Err(e)) => {
                                    return this.fail(io_error(
                                        e,
                                        ErrorKind::WriteFailed,
                                        Side::Upstream,
                                    ));
                                }
                                Poll::Pending => break,
                            }
                        }
                        if open.input_done {
                            if !open.shut && Pin::new(&mut open.write).poll_shutdown(cx).is_ready()
                            {
                                open.shut = true;
                            }
                            break;
                        }
                        match this.input.as_mut().poll_next(cx) {
                            Poll::Ready(Some(Event::Data(b))) => {
                                // What else is ready joins this write (a request head and
                                // its small body leave in one segment).
                                let mut gather = WriteGather::default();
                                gather.push(b);
                                while gather.has_room() {
                                    match this.input.as_mut().poll_next(cx) {
                                        Poll::Ready(Some(Event::Data(b))) => gather.push(b),
                                        Poll::Ready(Some(Event::StreamEnd(Some(e)))) => {
                                            return this.fail(e);
                                        }
                                        Poll::Ready(Some(Event::StreamEnd(None)) | None) => {
                                            open.input_done = true;
                                            break;
                                        }
                                        Poll::Ready(Some(_)) => {}
                                        Poll::Pending => break,
                                    }
                                }
                                open.pending = gather.take();
                            }
                            Poll::Ready(Some(Event::StreamEnd(Some(e)))) => {
                                // The client failed: drop the upstream connection too.
                                return this.fail(e);
                            }
                            Poll::Ready(Some(Event::StreamEnd(None)) | None) => {
                                open.input_done = true
                            }
                            Poll::Ready(Some(_)) => {}
                            Poll::Pending => break,
                        }
                    }
                    // Client-bound.
                    match Pin::new(&mut open.read).poll_next(cx) {
                        Poll::Ready(Some(ev @ Event::Data(_))) => {
                            open.last_activity = Instant::now();
                            return Poll::Ready(Some(ev));
                        }
                        Poll::Ready(Some(ev)) => {
                            this.state = State::Done;
                            return Poll::Ready(Some(ev));
                        }
                        Poll::Ready(None) => {
                            this.state = State::Done;
                            return Poll::Ready(Some(Event::END));
                        }
                        Poll::Pending => {}
                    }
                    // Idle timer: registered once; when it fires early (there was activity),
                    // it is pushed back to the last activity + idle and registered again.
                    // Between those, only its elapsed flag is read.
                    if open.timer.is_elapsed() || !open.timer_armed {
                        let deadline = open.last_activity + this.idle;
                        if open.timer_armed && Instant::now() >= deadline {
                            return this
                                .fail(StreamError::new(ErrorKind::IdleTimeout, Side::Upstream));
                        }
                        open.timer.as_mut().reset(deadline);
                        open.timer_armed = true;
                        if open.timer.as_mut().poll(cx).is_ready() {
                            return this
                                .fail(StreamError::new(ErrorKind::IdleTimeout, Side::Upstream));
                        }
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowgate_pipeline::ConnInfo;

    #[test]
    fn a_dial_target_in_the_context_wins_when_asked_for() {
        let c = Connect::to("127.0.0.1:1").target_from_context(true);
        let cx = Context::new();
        assert_eq!(c.pick(&cx).unwrap().0, "127.0.0.1:1");
        cx.insert(DialTarget("example.test:443".into()));
        assert_eq!(c.pick(&cx).unwrap().0, "example.test:443");
        let plain = Connect::to("127.0.0.1:1");
        assert_eq!(plain.pick(&cx).unwrap().0, "127.0.0.1:1");
        // Configured with only `target_from_context`, a stream without one has no route.
        let only = ConnectConfig {
            target_from_context: true,
            ..Default::default()
        };
        let only = Connect::from_config(only, Vec::new());
        assert!(only.pick(&Context::new()).is_none());
        // Only the context's target is marked as the client's choice.
        assert!(c.pick(&cx).unwrap().2);
        assert!(!plain.pick(&cx).unwrap().2);
    }

    #[test]
    fn internal_addresses_are_recognised() {
        for a in [
            "127.0.0.1",
            "127.9.9.9",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_internal(a.parse().unwrap()), "{a}");
        }
        for a in [
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "192.0.2.1",
            "8.8.8.8",
            "2001:db8::1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(!is_internal(a.parse().unwrap()), "{a}");
        }
    }

    #[test]
    fn maglev_keys_on_the_client_ip() {
        let targets: Vec<String> = (1..=3).map(|p| format!("127.0.0.1:{p}")).collect();
        let mut c = Connect::round_robin(targets.clone());
        let group = Group::new(
            flowgate_lb::BalancerConfig::new(flowgate_lb::Algorithm::maglev()),
            targets
                .iter()
                .map(|t| flowgate_lb::Backend::new(t.parse().unwrap()))
                .collect(),
        )
        .unwrap();
        c.group = Some(group);
        let picks: Vec<String> = (0..10u16)
            .map(|i| {
                let cx = Context::with_conn(ConnInfo {
                    peer: Some(format!("127.0.0.1:{}", 40000 + i).parse().unwrap()),
                    ..Default::default()
                });
                c.pick(&cx).unwrap().0
            })
            .collect();
        assert!(picks.iter().all(|p| *p == picks[0]), "{picks:?}");
    }
}
