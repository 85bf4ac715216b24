//! # flowgate-filters-http
//!
//! Flowgate's HTTP filters: a server side (HTTP/1.1 and HTTP/2) that turns a connection
//! into one sub-pipeline per request, a client side that pools keep-alive upstream
//! connections, per-request balancing, routing and header edits, retries, timeouts, CORS
//! and a static responder. The codec is `flowgate-http`; the upstream side dials with
//! `flowgate-filters-net`.
//!
//! ```
//! use std::sync::Arc;
//! use bytes::Bytes;
//! use flowgate_filters_http::{DemuxHttp, Respond};
//! use flowgate_http::h1::Limits;
//! use flowgate_pipeline::{Filter, Pipeline};
//!
//! // Every request on a connection gets its own `hello` stream, answered with 200.
//! let hello = Pipeline::builder("hello")
//!     .filter(Respond::new(http::StatusCode::OK, http::HeaderMap::new(), Bytes::from_static(b"hello\n")))
//!     .build()?;
//! let server_side = Pipeline::builder("main")
//!     .filter(DemuxHttp::new(Arc::new(hello), Limits::default()))
//!     .build()?;
//! assert_eq!(server_side.describe().filters[0].kind, "demux-http");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The same as YAML, with an upstream pool:
//!
//! ```yaml
//! pipelines:
//!   main:
//!     - demux-http: { pipeline: request }     # one `request` stream per HTTP request
//!   request:
//!     - mux-http: { pipeline: upstream }      # pooled keep-alive connections
//!   upstream:
//!     - connect: { endpoints: 127.0.0.1:8080 }
//!   hello:
//!     - respond: { status: 200, body: "hello\n" }
//! ```
//!
//! Messages inside carry `http::request::Parts` / `http::response::Parts` heads (get them
//! with `Head::get`), bodies as Data, and trailers in the `MessageEnd` tail as a
//! `http::HeaderMap`. An interim response (1xx other than 101: 100 Continue, 103 Early
//! Hints) is a bodiless message of its own before the final response, its `MessageEnd`
//! tail marked with [`Interim`](flowgate_pipeline::joint::Interim); `mux-http` passes them
//! on from HTTP/1.1 and HTTP/2 upstreams as they arrive, and `demux-http` writes them to
//! HTTP/1.1 and HTTP/2 clients (never to an HTTP/1.0 client, RFC 9110 §15.2). Filters that
//! look at the response (`retry`, `timeout`, `balance-http`, `cors`, the access log) act on
//! the final one.
//!
//! `demux-http` also serves HTTP/2 (through the `h2` crate) when TLS ALPN chose `h2` or the
//! client starts with the HTTP/2 preface (h2c with prior knowledge); every stream runs the
//! same per-request pipeline, so the filters behind it do not know which version the
//! client spoke. To offer both over TLS:
//!
//! ```yaml
//! pipelines:
//!   tls:
//!     - accept-tls: { pipeline: main, certificates: [...], alpn: [h2, http/1.1] }
//!   main:
//!     - demux-http:
//!         pipeline: request
//!         http2: { max_concurrent_streams: 100, max_header_list_size: 65536 }
//! ```
//!
//! `mux-http` speaks HTTP/1.1 to upstreams by default, and HTTP/2 with `protocol: http2`
//! (h2c with prior knowledge over `connect`, or h2 over `connect-tls` with `alpn: [h2]`),
//! where many requests share one connection:
//!
//! ```yaml
//! pipelines:
//!   request:
//!     - mux-http:
//!         pipeline: upstream
//!         protocol: http2
//!         http2: { max_concurrent_streams: 100, keepalive_interval: 30s }
//!   upstream:
//!     - connect: { endpoints: 127.0.0.1:8443 }
//! ```
//!
//! WebSocket (any HTTP/1.1 `Upgrade`) passes through `demux-http` → `mux-http` on an
//! upstream connection of its own; CONNECT is served when `demux-http` has a `connect:`
//! block; `timeout` bounds a request as a whole. See [`UpgradeConfig`],
//! [`HttpConnectConfig`] and [`Timeout`]:
//!
//! ```yaml
//! pipelines:
//!   main:
//!     - demux-http:
//!         pipeline: request
//!         upgrade: { protocols: [websocket] }       # default: any but h2c
//!         connect: { pipeline: tunnel, ports: [443] } # default: CONNECT refused (405)
//!         tunnel_idle_timeout: 5m
//!   request:
//!     - timeout: { pipeline: call, head: 10s }       # 504 when no response head in 10 s
//!   call:
//!     - mux-http: { pipeline: upstream }
//!   upstream:
//!     - connect: { endpoints: 127.0.0.1:8080 }
//!   tunnel:
//!     - connect: { target_from_context: true }      # dials the CONNECT authority
//! ```

mod access_log;
mod balance;
mod client;
mod codec;
mod cors;
mod detect;
mod event_io;
mod h2_watch;
mod h2client;
mod http2;
mod rbac;

pub use access_log::AccessLogFormat;
pub use balance::{BalanceHttp, BalanceHttpConfig, HashOn, PickedUpstream, UpstreamTlsConfig};
pub use h2client::{H2ClientError, Http2UpstreamConfig, UpstreamProtocol, UpstreamScheme};
pub use http2::{H2ConnError, Http2Config};
mod retry;
mod rewrite;
mod route;
mod timeout;
mod tunnel;

pub use cors::CorsConfig;
pub use rbac::{RbacAction, RbacConfig, RbacPermissionConfig, RbacPolicyConfig};
pub use retry::RetryConfig;
pub use rewrite::{PrefixRewrite, RedirectConfig, RewriteConfig};
pub use route::{
    HeaderEdits, HeadersConfig, RouteConfig, RouteEntry, RouteMatch, WeightedPipeline,
};
pub use timeout::{RequestTimedOut, Timeout, TimeoutConfig};
pub use tunnel::{HttpConnectConfig, TunnelIdle, UpgradeConfig};

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flowgate_http::h1::Limits;
use flowgate_pipeline::joint::{Demux, DemuxOptions, Mux, MuxOptions};
use flowgate_pipeline::registry::{BuildContext, ConfigError, FilterConfig, Registry};
use flowgate_pipeline::renamed::{self, Renamed};
use flowgate_pipeline::{
    Context, Description, Dyn, ErrorKind, Event, Events, Filter, Head, Pipeline, Side, StreamError,
    SubPipeline, Tail, Transform, TransformStream,
};
use http::{HeaderName, HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};

pub use codec::{TooManyInterim, Trailers};

/// Registers `demux-http`, `mux-http`, `respond`, `route`, `headers`, `rewrite`, `redirect`,
/// `retry`, `cors`, `rbac` and (with the `net` feature) `balance-http`.
pub fn register(r: &mut Registry) {
    r.register::<DemuxHttpConfig>("demux-http");
    r.register::<MuxHttpConfig>("mux-http");
    r.register::<RespondConfig>("respond");
    r.register::<TimeoutConfig>("timeout");
    r.register::<RouteConfig>("route");
    r.register::<HeadersConfig>("headers");
    r.register::<RewriteConfig>("rewrite");
    r.register::<RedirectConfig>("redirect");
    r.register::<RetryConfig>("retry");
    r.register::<CorsConfig>("cors");
    r.register::<RbacConfig>("rbac");
    r.register::<BalanceHttpConfig>("balance-http");
}

/// Limits on what an HTTP/1 peer may send, in configuration form.
#[derive(Clone, Copy, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest head in bytes. Default 64 KiB.
    #[serde(default = "d_head")]
    pub max_head_bytes: usize,
    /// Most header fields (at most 128). Default 100.
    #[serde(default = "d_headers")]
    pub max_headers: usize,
    /// Largest body in bytes; none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body: Option<u64>,
}

fn d_head() -> usize {
    Limits::default().max_head_bytes
}
fn d_headers() -> usize {
    Limits::default().max_headers
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_head_bytes: d_head(),
            max_headers: d_headers(),
            max_body: None,
        }
    }
}

impl LimitsConfig {
    fn limits(&self) -> Limits {
        Limits {
            max_head_bytes: self.max_head_bytes,
            max_headers: self.max_headers,
            max_body: self.max_body,
            ..Limits::default()
        }
        .normalized()
    }
}

// === DemuxHttp ===

/// `demux-http:` — see [`DemuxHttp`].
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DemuxHttpConfig {
    /// The pipeline each request runs through; it answers with one response message.
    pub pipeline: String,
    /// Pipelined requests in flight before the connection stops being read. Default 32.
    #[serde(default = "d_pending")]
    pub max_pending: usize,
    /// Limits on requests.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// A request head must be complete this long after its first byte, or the client gets
    /// 408 and the connection closes (slowloris). Default 10 s. Over HTTP/2 the same bound
    /// applies to the connection preface and to each header block: a HEADERS frame whose
    /// block is not ended (CONTINUATION with END_HEADERS) within it closes the connection.
    #[serde(
        default = "d_header_timeout",
        with = "flowgate_pipeline::serde_duration"
    )]
    pub header_timeout: Duration,
    /// A connection with no request in progress is closed after this long. Default 60 s.
    #[serde(
        default = "d_keepalive_timeout",
        with = "flowgate_pipeline::serde_duration"
    )]
    pub keepalive_timeout: Duration,
    /// Log each request (`common` or `json`) at info level, target `flowgate::access`.
    /// Default off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<AccessLogFormat>,
    /// HTTP/2: served when TLS ALPN chose `h2` or the client starts with the h2c preface.
    #[serde(default)]
    pub http2: Http2Config,
    /// Which HTTP/1.1 upgrades (WebSocket…) are passed on. Default: all but `h2c`.
    #[serde(default)]
    pub upgrade: UpgradeConfig,
    /// CONNECT tunnels: where they go and which targets are allowed. Default none
    /// (CONNECT is answered with 405).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<HttpConnectConfig>,
    /// An upgraded connection or CONNECT tunnel with no byte either way for this long is
    /// closed. Default 5 min.
    #[serde(default = "d_tunnel_idle", with = "flowgate_pipeline::serde_duration")]
    pub tunnel_idle_timeout: Duration,
    /// The status a request gets when its upstream failed before answering — refused,
    /// reset, TLS refused — other than by a timeout (504) or a malformed response (502).
    /// Default 502, as nginx answers; Envoy (and the mesh sidecar) answer 503.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_failure_status: Option<u16>,
}

fn d_tunnel_idle() -> Duration {
    Duration::from_secs(300)
}

fn d_pending() -> usize {
    32
}
fn d_header_timeout() -> Duration {
    Duration::from_secs(10)
}
fn d_keepalive_timeout() -> Duration {
    Duration::from_secs(60)
}

impl FilterConfig for DemuxHttpConfig {
    fn build(self: Box<Self>, _cx: &BuildContext) -> Result<Arc<dyn Filter>, ConfigError> {
        if self.max_pending == 0 {
            return Err(ConfigError::new("max_pending", "must be at least 1"));
        }
        if self.header_timeout.is_zero() || self.keepalive_timeout.is_zero() {
            return Err(ConfigError::new(
                "header_timeout",
                "timeouts must be more than zero",
            ));
        }
        if self.tunnel_idle_timeout.is_zero() {
            return Err(ConfigError::new(
                "tunnel_idle_timeout",
                "must be more than zero",
            ));
        }
        self.upgrade.validate()?;
        if let Some(c) = &self.connect {
            c.validate()?;
        }
        if self
            .upstream_failure_status
            .is_some_and(|s| !(500..=599).contains(&s))
        {
            return Err(ConfigError::new("upstream_failure_status", "a 5xx status"));
        }
        Ok(Arc::new(
            DemuxHttp::new(
                SubPipeline::named(self.pipeline.clone()),
                self.limits.limits(),
            )
            .max_pending(self.max_pending)
            .timeouts(self.header_timeout, self.keepalive_timeout)
            .access_log(self.access_log)
            .http2(self.http2)
            .map_err(|e| ConfigError::new("http2", e))?
            .tunnels(
                self.upgrade.clone(),
                self.connect.clone(),
                self.tunnel_idle_timeout,
            )
            .upstream_failure_status(self.upstream_failure_status.unwrap_or(502)),
        ))
    }
}

/// The server side of HTTP/1 (and HTTP/2, below): decodes requests from the connection, runs each through its
/// own instance of a sub-pipeline (concurrently, with a child context), and writes the
/// responses back in request order (pipelining). A malformed request is answered with its
/// status (400, 413, 431, 501, 505) and the connection is closed; a failed upstream with
/// 502 (504 on timeouts). `Connection: close` (or HTTP/1.0 without keep-alive) closes the
/// connection after that response. A request head not completed within the header
/// timeout gets 408 (slowloris); a connection idle past the keep-alive timeout is closed.
/// Interim responses (1xx other than 101) from the sub-pipeline are written as they come,
/// before the final response, except to an HTTP/1.0 client.
///
/// A connection whose TLS session chose ALPN `h2`, or that starts with the HTTP/2 preface,
/// is served as HTTP/2 instead (unless [`Http2Config::enabled`] is off): every stream runs
/// the same sub-pipeline, concurrently, with its own child context; limits as set by
/// [`DemuxHttp::http2`]. The header timeout bounds the HTTP/2 handshake, and a connection
/// with no open stream for the keep-alive timeout is sent GOAWAY.
///
/// HTTP/1.1 upgrades (WebSocket) and, when enabled, CONNECT become byte tunnels (see
/// [`DemuxHttp::tunnels`]).
pub struct DemuxHttp {
    demux: Arc<Demux>,
    sub: SubPipeline,
    per_request: SubPipeline,
    upgrade: Arc<UpgradeConfig>,
    connect: Option<(Arc<HttpConnectConfig>, SubPipeline)>,
    tunnel_idle: Duration,
    limits: Limits,
    max_pending: usize,
    timeouts: codec::HeadTimeouts,
    access_log: Option<AccessLogFormat>,
    http2: Http2Config,
    failure_status: u16,
}

impl DemuxHttp {
    /// Runs `sub` per request.
    pub fn new(sub: impl Into<SubPipeline>, limits: Limits) -> Self {
        let timeouts = codec::HeadTimeouts {
            header: d_header_timeout(),
            idle: d_keepalive_timeout(),
        };
        let sub = sub.into();
        let per_request = Self::per_request(&sub, None, d_tunnel_idle(), 502);
        DemuxHttp {
            demux: Arc::new(Demux::new(per_request.clone())),
            sub,
            per_request,
            upgrade: Arc::new(UpgradeConfig::default()),
            connect: None,
            tunnel_idle: d_tunnel_idle(),
            limits,
            max_pending: d_pending(),
            timeouts,
            access_log: None,
            http2: Http2Config::default(),
            failure_status: 502,
        }
    }

    /// Each request runs `sub` (through the stage that serves CONNECT and watches tunnels),
    /// and a failure before its response becomes an error response, so the connection
    /// stays usable. `subs()` reports `sub` (and the CONNECT pipeline) for binding.
    fn per_request(
        sub: &SubPipeline,
        connect: Option<(Arc<HttpConnectConfig>, SubPipeline)>,
        idle: Duration,
        failure_status: u16,
    ) -> SubPipeline {
        let per_request = Pipeline::builder("demux-http-request")
            .filter(tunnel::RequestStage {
                sub: sub.clone(),
                connect,
                idle,
            })
            .transform("answer-failures", move || {
                codec::AnswerFailures::new(failure_status)
            })
            .build_deferred();
        SubPipeline::from(per_request)
    }

    /// Sets which upgrades pass, whether (and where) CONNECT tunnels go, and how long a
    /// tunnel may be idle.
    #[must_use]
    pub fn tunnels(
        mut self,
        upgrade: UpgradeConfig,
        connect: Option<HttpConnectConfig>,
        idle: Duration,
    ) -> Self {
        self.upgrade = Arc::new(upgrade);
        self.connect = connect.map(|c| {
            let p = SubPipeline::named(c.pipeline.clone());
            (Arc::new(c), p)
        });
        self.tunnel_idle = idle;
        self.per_request =
            Self::per_request(&self.sub, self.connect.clone(), idle, self.failure_status);
        let n = self.max_pending;
        self.max_pending(n)
    }

    /// Sets the status a request gets when its upstream failed before answering, other
    /// than by a timeout (504) or a malformed response (502): 502 by default, as nginx
    /// answers; 503 is Envoy's.
    #[must_use]
    pub fn upstream_failure_status(mut self, status: u16) -> Self {
        self.failure_status = status;
        self.per_request =
            Self::per_request(&self.sub, self.connect.clone(), self.tunnel_idle, status);
        let n = self.max_pending;
        self.max_pending(n)
    }

    /// Sets the HTTP/2 settings (`enabled: false` serves HTTP/1 only).
    pub fn http2(mut self, cfg: Http2Config) -> Result<Self, &'static str> {
        cfg.validate()?;
        self.http2 = cfg;
        Ok(self)
    }

    /// Logs each request in `format` (or not, with `None`).
    #[must_use]
    pub fn access_log(mut self, format: Option<AccessLogFormat>) -> Self {
        self.access_log = format;
        self
    }

    /// Sets the header timeout (slowloris) and the keep-alive idle timeout.
    #[must_use]
    pub fn timeouts(mut self, header: Duration, keepalive: Duration) -> Self {
        self.timeouts = codec::HeadTimeouts {
            header,
            idle: keepalive,
        };
        self
    }

    /// Sets how many pipelined requests may be in flight.
    #[must_use]
    pub fn max_pending(mut self, n: usize) -> Self {
        self.max_pending = n.max(1);
        self.demux = Arc::new(Demux::new(self.per_request.clone()).options(DemuxOptions {
            max_pending: self.max_pending,
            ..Default::default()
        }));
        self
    }
}

impl Filter for DemuxHttp {
    fn describe(&self) -> Description {
        let mut d = Description::filter("demux-http").options(serde_json::json!({
            "max_pending": self.max_pending,
            "max_head_bytes": self.limits.max_head_bytes,
            "max_headers": self.limits.max_headers,
            "header_timeout": flowgate_pipeline::serde_duration::format(self.timeouts.header),
            "keepalive_timeout": flowgate_pipeline::serde_duration::format(self.timeouts.idle),
            "http2": self.http2,
            "upgrade": *self.upgrade,
            "connect": self.connect.as_ref().map(|(c, _)| c.as_ref()),
            "tunnel_idle_timeout": flowgate_pipeline::serde_duration::format(self.tunnel_idle),
        }));
        d.subs = self.subs().iter().map(|s| s.name().to_string()).collect();
        d
    }

    fn attach(&self, input: Events, cx: &Context) -> Events {
        let h1 = H1 {
            demux: self.demux.clone(),
            limits: self.limits,
            timeouts: self.timeouts,
            access_log: self.access_log,
            upgrade: self.upgrade.clone(),
        };
        if !self.http2.enabled {
            return h1.attach(input, cx);
        }
        let h2 = Arc::new(http2::H2Shared {
            cfg: self.http2,
            per_request: self.per_request.clone(),
            handshake_timeout: self.timeouts.header,
            idle_timeout: self.timeouts.idle,
            access_log: self.access_log,
        });
        Box::pin(detect::Detect::new(
            input,
            cx.clone(),
            h1,
            h2,
            self.timeouts,
        ))
    }

    fn subs(&self) -> Vec<SubPipeline> {
        let mut v = vec![self.sub.clone()];
        if let Some((_, p)) = &self.connect {
            v.push(p.clone());
        }
        v
    }

    fn request_pipeline(&self) -> Option<SubPipeline> {
        Some(self.sub.clone())
    }
}

/// What the HTTP/1 side of a connection needs.
pub(crate) struct H1 {
    demux: Arc<Demux>,
    limits: Limits,
    timeouts: codec::HeadTimeouts,
    access_log: Option<AccessLogFormat>,
    upgrade: Arc<UpgradeConfig>,
}

impl H1 {
    fn attach(&self, input: Events, cx: &Context) -> Events {
        let log = self
            .access_log
            .map(|f| access_log::AccessLog::new(f, cx.conn().peer));
        let switch = Arc::new(tunnel::Switch::default());
        let decoder = codec::DecodeRequests::new(
            self.limits,
            log.clone(),
            switch.clone(),
            self.upgrade.clone(),
        );
        let drain = cx.get::<flowgate_pipeline::Drain>();
        let decoded = Box::pin(
            codec::RequestStream::new(input, decoder, self.timeouts).drain_on(drain.clone()),
        );
        let replies = self.demux.attach(decoded, cx);
        Box::pin(TransformStream::new(
            replies,
            vec![Box::new(
                codec::EncodeResponses::new(log, switch).drain_on(drain),
            )],
        ))
    }
}

// === MuxHttp ===

/// `mux-http:` — see [`MuxHttp`].
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MuxHttpConfig {
    /// The pipeline of one upstream connection (usually `[connect]`).
    pub pipeline: String,
    /// Close an upstream connection idle this long. Default 60 s.
    #[serde(default = "d_idle", with = "flowgate_pipeline::serde_duration")]
    pub max_idle: Duration,
    /// Requests per upstream connection before it is retired (0: no limit). Default 0.
    #[serde(default)]
    pub max_requests: u64,
    /// Limits on responses.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The HTTP version spoken upstream: `http1` (default) or `http2`.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    #[doc(hidden)]
    #[serde(default, rename = "version", skip_serializing)]
    pub renamed_version: Renamed<renamed::Version>,
    /// HTTP/2 settings, used with `protocol: http2`.
    #[serde(default)]
    pub http2: Http2UpstreamConfig,
}

fn d_idle() -> Duration {
    Duration::from_secs(60)
}

/// How often `mux-http` and `balance-http` may send an idempotent request again when a
/// pooled connection closes under it before any byte of the response. A resend goes on a
/// new connection (the pooled ones may be closing too), whose failure is the answer, so in
/// practice it is sent again once.
pub(crate) const STALE_RESENDS: usize = 3;

impl FilterConfig for MuxHttpConfig {
    fn build(self: Box<Self>, _cx: &BuildContext) -> Result<Arc<dyn Filter>, ConfigError> {
        let opts = MuxOptions {
            max_idle: self.max_idle,
            max_queue: 1,
            max_messages: self.max_requests,
            max_resends: STALE_RESENDS,
            ..Default::default()
        };
        let mut f = MuxHttp::new(
            SubPipeline::named(self.pipeline.clone()),
            self.limits.limits(),
            opts,
        )
        .map_err(|e| ConfigError::new("pipeline", e))?;
        match self.protocol {
            UpstreamProtocol::Http1 => {}
            UpstreamProtocol::Http2 => {
                f = f
                    .http2(self.http2)
                    .map_err(|e| ConfigError::new("http2", e))?;
            }
            UpstreamProtocol::Auto => {
                f = f
                    .auto(self.http2)
                    .map_err(|e| ConfigError::new("http2", e))?;
            }
        }
        Ok(Arc::new(f))
    }
}

/// The client side of HTTP/1: sends each request message over a pooled keep-alive upstream
/// connection (one request at a time per connection, a new connection when all are busy)
/// and outputs the response message, after the interim (1xx) responses the upstream sent
/// before it, each as a bodiless message ending with an
/// [`Interim`](flowgate_pipeline::joint::Interim) tail. An idempotent request that a pooled connection
/// closes under before any byte of its response (the upstream's keep-alive timeout met
/// the request on the wire) is sent again on a new connection, as
/// [`MuxOptions::max_resends`] describes.
///
/// A stream whose first message is an upgrade request (`Connection: upgrade` +
/// `Upgrade`) or a CONNECT gets an upstream connection of its own, never taken from or
/// returned to the pool, and is streamed rather than queued: after a 101 (or a 2xx to
/// CONNECT) the bytes that follow on the stream go upstream raw and the upstream's bytes
/// are the response body; any other answer ends the stream and closes that connection.
///
/// With [`MuxHttp::http2`] requests go upstream as HTTP/2 streams instead, many at once
/// on each pooled connection (up to the configured cap and the server's
/// SETTINGS_MAX_CONCURRENT_STREAMS; a new connection when all are full), bodies streamed
/// both ways under HTTP/2 flow control, trailers passed. Upgrade and CONNECT requests
/// still get an HTTP/1.1 connection of their own.
pub struct MuxHttp {
    mux: Arc<Mux>,
    codec: Arc<client::ClientCodec>,
    sub: SubPipeline,
    opts: MuxOptions,
    h2: Option<Arc<h2client::H2Pool>>,
    auto: Option<Arc<AutoChoice>>,
}

impl MuxHttp {
    /// Pools connections made by `sub` (usually a pipeline with `Connect`).
    pub fn new(
        sub: impl Into<SubPipeline>,
        limits: Limits,
        opts: MuxOptions,
    ) -> Result<Self, flowgate_pipeline::BuildError> {
        let sub = sub.into();
        let codec = Arc::new(client::ClientCodec {
            sub: sub.clone(),
            limits,
        });
        let session = Pipeline::builder("mux-http-session")
            .filter(client::ClientCodec {
                sub: sub.clone(),
                limits,
            })
            .build()?;
        let mux = Mux::with(
            session,
            Dyn::value(String::new()),
            MuxOptions {
                max_queue: 1,
                ..opts
            },
        );
        Ok(MuxHttp {
            mux: Arc::new(mux),
            codec,
            sub,
            opts,
            h2: None,
            auto: None,
        })
    }

    /// Speaks HTTP/2 to the upstream (h2c with prior knowledge, or h2 when the
    /// sub-pipeline does TLS) with `cfg`; `max_idle` and `max_messages` of the pool
    /// options apply per connection.
    pub fn http2(mut self, cfg: Http2UpstreamConfig) -> Result<Self, &'static str> {
        cfg.validate()?;
        self.h2 = Some(Arc::new(h2client::H2Pool::new(
            cfg,
            self.sub.clone(),
            self.opts.max_idle,
            self.opts.max_messages,
        )));
        Ok(self)
    }

    /// Speaks HTTP/2 or HTTP/1.1 as the upstream's TLS ALPN says
    /// ([`UpstreamProtocol::Auto`]): the first request probes a connection made by the
    /// sub-pipeline (sending nothing on it), and the answer holds for every later request.
    /// HTTP/2 then uses `cfg` with `:scheme: https`.
    pub fn auto(self, mut cfg: Http2UpstreamConfig) -> Result<Self, &'static str> {
        cfg.scheme = UpstreamScheme::Https;
        let mut f = self.http2(cfg)?;
        f.auto = Some(Arc::new(AutoChoice {
            sub: f.sub.clone(),
            decided: tokio::sync::OnceCell::new(),
        }));
        Ok(f)
    }

    /// With [`MuxHttp::auto`]: whether the upstream was found to speak HTTP/2 (`None`
    /// until the first request decided it, and without `auto`).
    pub fn negotiated_http2(&self) -> Option<bool> {
        self.auto.as_ref().and_then(|a| a.decided())
    }

    /// How many upstream connections are pooled now (HTTP/2 ones with
    /// [`MuxHttp::http2`], HTTP/1 ones otherwise, both with [`MuxHttp::auto`]), over all
    /// workers.
    pub fn connection_count(&self) -> usize {
        match (&self.h2, &self.auto) {
            (Some(p), None) => p.connection_count(),
            (Some(p), Some(_)) => p.connection_count() + self.mux.session_count(),
            (None, _) => self.mux.session_count(),
        }
    }
}

impl Filter for MuxHttp {
    fn describe(&self) -> Description {
        let mut options = self.mux.describe().options;
        if let (Some(p), Some(o)) = (&self.h2, options.as_object_mut()) {
            let protocol = if self.auto.is_some() { "auto" } else { "http2" };
            o.insert("protocol".into(), serde_json::json!(protocol));
            o.insert(
                "http2".into(),
                serde_json::to_value(p.config()).unwrap_or_default(),
            );
        }
        let mut d = Description::filter("mux-http").options(options);
        d.subs = vec![self.sub.name().to_string()];
        d
    }

    fn attach(&self, input: Events, cx: &Context) -> Events {
        Box::pin(MuxHttpStream {
            input: Some(input),
            cx: cx.clone(),
            mux: self.mux.clone(),
            codec: self.codec.clone(),
            h2: self.h2.clone(),
            auto: self.auto.clone(),
            probe: None,
            waiting: None,
            out: None,
            dedicated: None,
            queue: std::collections::VecDeque::new(),
            finished: false,
        })
    }

    fn subs(&self) -> Vec<SubPipeline> {
        vec![self.sub.clone()]
    }
}

/// A `mux-http` stream: pooled, or on a dedicated connection for a tunnel request.
struct MuxHttpStream {
    input: Option<Events>,
    cx: Context,
    mux: Arc<Mux>,
    codec: Arc<client::ClientCodec>,
    h2: Option<Arc<h2client::H2Pool>>,
    /// With `protocol: auto`: the choice, and the probe deciding it for this stream.
    auto: Option<Arc<AutoChoice>>,
    probe: Option<Probe>,
    /// The request waiting for the probe.
    waiting: Option<Events>,
    out: Option<Events>,
    /// On a dedicated connection: whether the request was a CONNECT, and whether the
    /// response opened a tunnel (`Some` once its head came).
    dedicated: Option<(bool, Option<bool>)>,
    queue: std::collections::VecDeque<Event>,
    finished: bool,
}

impl futures_core::Stream for MuxHttpStream {
    type Item = Event;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        task: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Event>> {
        use std::task::Poll;
        let this = &mut *self;
        loop {
            if let Some(ev) = this.queue.pop_front() {
                return Poll::Ready(Some(ev));
            }
            if this.finished {
                return Poll::Ready(None);
            }
            if let Some(probe) = this.probe.as_mut() {
                let Poll::Ready(r) = probe.as_mut().poll(task) else {
                    return Poll::Pending;
                };
                this.probe = None;
                match (r, this.waiting.take()) {
                    (Ok(h2), Some(input)) => {
                        this.out = Some(match (&this.h2, h2) {
                            (Some(pool), true) => pool.attach(input, &this.cx),
                            _ => this.mux.attach(input, &this.cx),
                        });
                    }
                    (Err(e), _) => {
                        this.finished = true;
                        this.queue.push_back(Event::StreamEnd(Some(e)));
                    }
                    (Ok(_), None) => {
                        this.finished = true;
                        this.queue.push_back(Event::END);
                    }
                }
                continue;
            }
            if let Some(mut input) = this.input.take() {
                let first = match input.as_mut().poll_next(task) {
                    Poll::Ready(ev) => ev.unwrap_or(Event::END),
                    Poll::Pending => {
                        this.input = Some(input);
                        return Poll::Pending;
                    }
                };
                let tunnel = match &first {
                    Event::MessageStart(h) => h.get::<http::request::Parts>().and_then(|p| {
                        let connect = p.method == http::Method::CONNECT;
                        (connect || tunnel::wants_upgrade(p)).then_some(connect)
                    }),
                    _ => None,
                };
                let input: Events = Box::pin(tunnel::Prepend {
                    first: Some(first),
                    rest: input,
                });
                this.out = Some(match tunnel {
                    Some(connect) => {
                        this.dedicated = Some((connect, None));
                        this.codec.attach(input, &this.cx)
                    }
                    None => {
                        let h2 = match &this.auto {
                            None => this.h2.is_some(),
                            Some(auto) => match auto.decided() {
                                Some(h2) => h2,
                                None => {
                                    this.waiting = Some(input);
                                    this.probe =
                                        Some(Box::pin(auto.clone().decide(this.cx.clone())));
                                    continue;
                                }
                            },
                        };
                        match (&this.h2, h2) {
                            (Some(pool), true) => pool.attach(input, &this.cx),
                            _ => this.mux.attach(input, &this.cx),
                        }
                    }
                });
                continue;
            }
            let Some(out) = &mut this.out else {
                return Poll::Pending;
            };
            let ev = match out.as_mut().poll_next(task) {
                Poll::Ready(ev) => ev.unwrap_or(Event::END),
                Poll::Pending => return Poll::Pending,
            };
            if ev.is_end() {
                this.finished = true;
                this.out = None;
                return Poll::Ready(Some(ev));
            }
            if let Some((connect, opened)) = &mut this.dedicated {
                match &ev {
                    // An interim response (a 103 before the 101) decides nothing.
                    Event::MessageStart(h) if codec::is_interim_head(h) => {}
                    Event::MessageEnd(t) if codec::ends_interim(t) => {}
                    Event::MessageStart(h) if opened.is_none() => {
                        let status = h.get::<http::response::Parts>().map(|p| p.status);
                        *opened = Some(status.is_some_and(|s| tunnel::opens_tunnel(*connect, s)));
                    }
                    Event::MessageEnd(_) if *opened == Some(false) => {
                        // Not upgraded: the stream is over and the connection is dropped.
                        this.finished = true;
                        this.out = None;
                        this.queue.push_back(ev);
                        this.queue.push_back(Event::END);
                        continue;
                    }
                    _ => {}
                }
            }
            return Poll::Ready(Some(ev));
        }
    }
}

/// A probe deciding `protocol: auto` for one stream: HTTP/2 or not.
type Probe = std::pin::Pin<Box<dyn std::future::Future<Output = Result<bool, StreamError>> + Send>>;

/// `protocol: auto`: whether the upstream speaks HTTP/2, decided once by a probe.
struct AutoChoice {
    sub: SubPipeline,
    decided: tokio::sync::OnceCell<bool>,
}

/// How long a probe connection may take to say what it speaks.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

impl AutoChoice {
    fn decided(&self) -> Option<bool> {
        self.decided.get().copied()
    }

    /// The choice, probing (once, whoever asks first) when there is none yet. A failed
    /// probe decides nothing: the next request probes again.
    async fn decide(self: Arc<Self>, cx: Context) -> Result<bool, StreamError> {
        self.decided
            .get_or_try_init(|| probe(&self.sub, &cx))
            .await
            .copied()
    }
}

/// Opens one connection through `sub` without sending anything and waits until it says
/// what it speaks ([`Negotiated`](flowgate_filters_net::Negotiated)): HTTP/2 when TLS ALPN
/// chose `h2`. The connection is then dropped.
async fn probe(sub: &SubPipeline, cx: &Context) -> Result<bool, StreamError> {
    use flowgate_filters_net::{DialTarget, Negotiated};
    use std::task::Poll;
    let child = cx.child();
    if let Some(t) = cx.get::<DialTarget>() {
        child.insert(t);
    }
    let negotiated = Negotiated::default();
    child.insert(negotiated.clone());
    let mut out = sub.attach(Box::pin(futures_util::stream::pending()), &child);
    let outcome = std::future::poll_fn(|task| {
        if let Poll::Ready(o) = negotiated.poll_outcome(task) {
            return Poll::Ready(Ok(o));
        }
        loop {
            match out.as_mut().poll_next(task) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Event::StreamEnd(Some(e)))) => return Poll::Ready(Err(e)),
                Poll::Ready(None | Some(Event::StreamEnd(None))) => {
                    return Poll::Ready(Err(StreamError::new(
                        ErrorKind::ConnectionReset,
                        Side::Upstream,
                    )
                    .retry_safe(true)));
                }
                Poll::Ready(Some(_)) => {
                    if let Poll::Ready(o) = negotiated.poll_outcome(task) {
                        return Poll::Ready(Ok(o));
                    }
                }
            }
        }
    });
    let outcome = tokio::time::timeout(PROBE_TIMEOUT, outcome)
        .await
        .map_err(|_| {
            StreamError::new(ErrorKind::ConnectTimeout, Side::Upstream).retry_safe(true)
        })??;
    let h2 = outcome.is_h2();
    tracing::debug!(?outcome, h2, "mux-http: protocol: auto decided");
    Ok(h2)
}

// === Respond ===

/// `respond:` — see [`Respond`].
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RespondConfig {
    /// The status. Default 200.
    #[serde(default = "d_status")]
    pub status: u16,
    /// Header fields to send.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// The body. Default empty.
    #[serde(default)]
    pub body: String,
}

fn d_status() -> u16 {
    200
}

impl FilterConfig for RespondConfig {
    fn build(self: Box<Self>, _cx: &BuildContext) -> Result<Arc<dyn Filter>, ConfigError> {
        let status =
            StatusCode::from_u16(self.status).map_err(|e| ConfigError::new("status", e))?;
        let mut headers = http::HeaderMap::new();
        for (k, v) in &self.headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| ConfigError::new(format!("headers.{k}"), e))?;
            let value = HeaderValue::from_str(v)
                .map_err(|e| ConfigError::new(format!("headers.{k}"), e))?;
            headers.append(name, value);
        }
        Ok(Arc::new(
            Respond::new(status, headers, Bytes::from(self.body.clone())).described_by(&self),
        ))
    }
}

/// Answers every request message with a fixed response (Content-Length set from the body).
pub struct Respond {
    head: Arc<http::response::Parts>,
    body: Bytes,
    options: serde_json::Value,
}

impl Respond {
    /// A response with `status`, `headers` and `body`.
    pub fn new(status: StatusCode, mut headers: http::HeaderMap, body: Bytes) -> Self {
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        let (mut parts, ()) = http::Response::new(()).into_parts();
        parts.status = status;
        parts.headers = headers;
        Respond {
            head: Arc::new(parts),
            body,
            options: serde_json::json!({ "status": status.as_u16() }),
        }
    }

    fn described_by(mut self, c: &RespondConfig) -> Self {
        self.options = serde_json::to_value(c).unwrap_or_default();
        self
    }
}

impl Filter for Respond {
    fn describe(&self) -> Description {
        Description::filter("respond").options(&self.options)
    }

    fn transform(&self, _cx: &Context) -> Option<Box<dyn Transform>> {
        let head = self.head.clone();
        let body = self.body.clone();
        Some(Box::new(
            move |ev: Event, out: &mut dyn FnMut(Event)| match ev {
                Event::MessageEnd(_) => {
                    out(Event::MessageStart(Head::new(head.as_ref().clone())));
                    if !body.is_empty() {
                        out(Event::Data(body.clone()));
                    }
                    out(Event::MessageEnd(Tail::none()));
                }
                Event::StreamEnd(e) => out(Event::StreamEnd(e)),
                _ => {}
            },
        ))
    }
}
