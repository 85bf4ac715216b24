//! `balance-http`: per-request load balancing over a group of HTTP/1.1 upstreams, with
//! pooled keep-alive connections per endpoint.
//!
//! See [`BalanceHttp`].

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskCx, Poll};
use std::time::Duration;

use bytes::Bytes;
use flowgate_lb::circuit_breaker::Permit;
use flowgate_lb::health::HealthCheckConfig;
use flowgate_lb::{
    Algorithm, Backend, Balancer, BalancerConfig, CircuitBreaker, CircuitBreakerConfig, Group,
    Lease, Outcome,
};
use flowgate_pipeline::joint::MuxOptions;
use flowgate_pipeline::registry::{BuildContext, ConfigError, FilterConfig};
use flowgate_pipeline::renamed::{self, Renamed};
use flowgate_pipeline::{
    Context, Description, ErrorKind, Event, Events, Filter, Head, Pipeline, Side, StreamError,
    SubPipeline, Tail,
};
use futures_core::Stream;
use futures_util::StreamExt;
use http::{HeaderName, StatusCode, request, response};
use serde::{Deserialize, Serialize};

use super::codec::{ends_interim, is_interim_head};
use super::{Http2UpstreamConfig, LimitsConfig, MuxHttp, UpstreamProtocol, UpstreamScheme};
use flowgate_filters_net::Connect;
use flowgate_filters_net::tls::{
    ClientCertConfig, ConnectTls, ConnectTlsConfig, TlsVersion, default_handshake_timeout,
};

/// What hash algorithms and sticky sessions key on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum HashOn {
    /// The client's IP address (default).
    #[default]
    ClientIp,
    /// A request header's value; requests without it key on the client's IP.
    Header(String),
    /// The request path (without the query).
    Path,
}

/// `balance-http:` — see [`BalanceHttp`].
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BalanceHttpConfig {
    /// The endpoints: at least one, no address twice.
    pub endpoints: Vec<Backend>,
    #[doc(hidden)]
    #[serde(default, rename = "targets", skip_serializing)]
    pub renamed_targets: Renamed<renamed::Targets>,
    /// flowgate-lb's settings: the algorithm (default round robin), outlier detection,
    /// slow start, sticky sessions.
    #[serde(default = "d_balance")]
    pub balance: BalancerConfig,
    /// What hash algorithms key on. Default `client_ip`.
    #[serde(default)]
    pub hash_on: HashOn,
    /// Active health checks (TCP or HTTP probes); none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckConfig>,
    /// How long connecting to an endpoint may take. Default 5 s.
    #[serde(default = "d_connect", with = "flowgate_pipeline::serde_duration")]
    pub connect_timeout: Duration,
    /// Close a pooled upstream connection idle this long. Default 60 s.
    #[serde(default = "d_idle", with = "flowgate_pipeline::serde_duration")]
    pub max_idle: Duration,
    /// Requests per upstream connection before it is retired (0: no limit). Default 0.
    #[serde(default)]
    pub max_requests: u64,
    /// Limits on responses.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The HTTP version spoken to the endpoints: `http1` (default), `http2` (h2c with
    /// prior knowledge, or h2 by ALPN with `tls`; many requests per connection) or `auto`
    /// (with `tls`: HTTP/2 when an endpoint's ALPN picks `h2`, else HTTP/1.1, decided per
    /// endpoint by its first connection; without `tls`: HTTP/1.1).
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    #[doc(hidden)]
    #[serde(default, rename = "version", skip_serializing)]
    pub renamed_version: Renamed<renamed::Version>,
    /// HTTP/2 settings, used with `protocol: http2`.
    #[serde(default)]
    pub http2: Http2UpstreamConfig,
    /// TLS to the endpoints (HTTPS upstreams). Default off: plain TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTlsConfig>,
    /// Circuit breaking for the whole group, as Envoy's cluster thresholds:
    /// `max_requests` caps the requests in flight; `max_connections` caps the busy
    /// upstream connections (HTTP/1.1 only, one request per connection; idle pooled
    /// connections are not counted), and a request over it waits for one to free up — at
    /// most `max_pending` requests wait. A request over a cap is answered 503 with
    /// `x-envoy-overloaded: true` at once. `max_retries` and `degradation` are not taken
    /// here (a config error). Default off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreakerConfig>,
}

/// TLS from `balance-http` to its endpoints. ALPN offers `h2` with `protocol: http2`,
/// `h2` and `http/1.1` with `protocol: auto`, and `http/1.1` otherwise; HTTP/2 requests then carry `:scheme: https`.
///
/// ```yaml
/// tls: { sni: api.internal, ca: upstream-ca.pem }
/// ```
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// The endpoints' server name: sent as SNI and checked against their certificates.
    /// Required when `verify` is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// PEM file with the CA certificates the endpoints' certificates must chain to.
    /// Required when `verify` is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// Verify the endpoints' certificates. Default true; `false` is for tests only.
    #[serde(default = "flowgate_pipeline::registry::default_true")]
    pub verify: bool,
    /// A client certificate for endpoints that require mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<ClientCertConfig>,
    /// How long a handshake may take. Default 10 s.
    #[serde(
        default = "default_handshake_timeout",
        with = "flowgate_pipeline::serde_duration"
    )]
    pub handshake_timeout: Duration,
    /// Check the endpoints by identity instead of by `sni` (a mesh's SPIFFE IDs; `*` for
    /// any the CA signed): see `connect-tls`'s `identities`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<String>,
}

impl UpstreamTlsConfig {
    /// Verified TLS to endpoints called `sni`, with certificates chaining to `ca`.
    pub fn new(sni: impl Into<String>, ca: impl Into<PathBuf>) -> Self {
        UpstreamTlsConfig {
            sni: Some(sni.into()),
            ca: Some(ca.into()),
            verify: true,
            client_cert: None,
            handshake_timeout: default_handshake_timeout(),
            identities: Vec::new(),
        }
    }

    /// The `connect-tls` settings this stands for, offering `alpn`.
    fn connect_tls(&self, alpn: &[&str]) -> ConnectTlsConfig {
        ConnectTlsConfig {
            pipeline: String::new(),
            sni: self.sni.clone(),
            ca: self.ca.clone(),
            verify: self.verify,
            alpn: alpn.iter().map(|a| a.to_string()).collect(),
            client_cert: self.client_cert.clone(),
            identities: self.identities.clone(),
            versions: vec![TlsVersion::Tls12, TlsVersion::Tls13],
            cipher_suites: None,
            handshake_timeout: self.handshake_timeout,
            max_feed: 64,
        }
    }
}

fn d_balance() -> BalancerConfig {
    BalancerConfig::new(Algorithm::RoundRobin)
}
fn d_connect() -> Duration {
    Duration::from_secs(5)
}
fn d_idle() -> Duration {
    Duration::from_secs(60)
}

impl BalanceHttpConfig {
    /// A group over `endpoints` with every other setting at its default.
    pub fn new(endpoints: Vec<Backend>) -> Self {
        BalanceHttpConfig {
            endpoints,
            renamed_targets: Renamed::default(),
            balance: d_balance(),
            hash_on: HashOn::default(),
            health_check: None,
            connect_timeout: d_connect(),
            max_idle: d_idle(),
            max_requests: 0,
            limits: LimitsConfig::default(),
            protocol: UpstreamProtocol::default(),
            renamed_version: Renamed::default(),
            http2: Http2UpstreamConfig::default(),
            tls: None,
            circuit_breaker: None,
        }
    }
}

impl FilterConfig for BalanceHttpConfig {
    fn build(self: Box<Self>, cx: &BuildContext) -> Result<Arc<dyn Filter>, ConfigError> {
        Ok(Arc::new(BalanceHttp::with_context(*self, cx)?))
    }
}

/// The endpoint `balance-http` picked for this request, stored in the request's
/// [`Context`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PickedUpstream(pub SocketAddr);

/// Per-request load balancing with a keep-alive pool per endpoint.
///
/// `connect` with `balance:` picks an upstream per *connection*; behind `mux-http` that
/// spreads pooled connections, not requests. `balance-http` picks per *request*: when a
/// request head arrives it asks a [`flowgate_lb::Balancer`] for an endpoint (the
/// algorithm, weights, health and outlier state all come from flowgate-lb), holds the
/// [`Lease`] until the response has ended (so least request counts requests in flight and
/// peak-EWMA sees response times), and sends the request through that endpoint's own
/// connection pool — a [`MuxHttp`] over `[connect]` per endpoint, so keep-alive
/// connections are reused per endpoint, never shared between endpoints.
///
/// ```text
///  request ─▶ balance-http ─ pick(key) ─▶ pool of 10.0.0.1:80 (mux-http → connect) ─▶ response
///                  │                  └─▶ pool of 10.0.0.2:80 (mux-http → connect)
///                  └─ lease: in flight until the response ends; its outcome (status,
///                     connect failure, timeout) feeds outlier detection
/// ```
///
/// ```yaml
/// - balance-http:
///     endpoints: [127.0.0.1:8001, { address: 127.0.0.1:8002, weight: 3 }]
///     balance: { algorithm: { type: weighted_round_robin }, outlier: { consecutive_connect_failures: 1 } }
///     hash_on: { header: x-user }        # or client_ip (default), path
///     health_check: { probe: { type: http, path: /health }, interval: 2s }
///     connect_timeout: 2s
///     protocol: http2                     # h2c to the endpoints; default http1
/// ```
///
/// With `protocol: http2` each endpoint's pool is an HTTP/2 one (see [`MuxHttp::http2`]):
/// few connections, many requests in flight on each.
///
/// Hash algorithms (`ring_hash`, `maglev`) and sticky sessions key on `hash_on`: the
/// client's IP by default, or a request header (falling back to the client's IP when the
/// request has no such header), or the path. The picked address is stored in the request's
/// [`Context`] as [`PickedUpstream`]. When no endpoint is eligible the request is answered
/// with 503. Put `balance-http` inside a `retry` pipeline to retry on another pick.
pub struct BalanceHttp {
    inner: Arc<Inner>,
}

struct Inner {
    config: BalanceHttpConfig,
    lb: Group,
    /// Each endpoint's pool, built on its first request.
    pools: HashMap<SocketAddr, std::sync::OnceLock<MuxHttp>>,
    recipe: PoolRecipe,
    hash_header: Option<HeaderName>,
    /// The request and pending limits.
    breaker: Option<CircuitBreaker>,
    /// Busy-connection slots (`max_connections`).
    slots: Option<Arc<tokio::sync::Semaphore>>,
}

/// How an endpoint's connection pool is made: on the endpoint's first request, so that a
/// configuration with thousands of clusters (a mesh sidecar's) holds no connection
/// machinery for the ones never called.
struct PoolRecipe {
    /// The client configuration, the server name and the handshake timeout.
    tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
        Duration,
    )>,
    connect_timeout: Duration,
    limits: flowgate_http::h1::Limits,
    opts: MuxOptions,
    protocol: UpstreamProtocol,
    http2: Http2UpstreamConfig,
}

impl PoolRecipe {
    /// The pool of `addr`. What can fail was checked when the filter was built.
    fn build(&self, addr: SocketAddr) -> Result<MuxHttp, String> {
        let name = format!("balance-http-conn-{addr}");
        let tcp = Connect::to(addr.to_string()).connect_timeout(self.connect_timeout);
        let conn = match &self.tls {
            None => Pipeline::builder(name).filter(tcp),
            Some((client, server_name, handshake)) => {
                let under = Pipeline::builder(format!("{name}-tcp"))
                    .filter(tcp)
                    .build()
                    .map_err(|e| e.to_string())?;
                let tls = ConnectTls::new(
                    client.clone(),
                    server_name.clone(),
                    SubPipeline::from(under),
                )
                .handshake_timeout(*handshake);
                Pipeline::builder(name).filter(tls)
            }
        }
        .build()
        .map_err(|e| e.to_string())?;
        let pool = MuxHttp::new(SubPipeline::from(conn), self.limits, self.opts)
            .map_err(|e| e.to_string())?;
        match self.protocol {
            UpstreamProtocol::Http2 => pool.http2(self.http2).map_err(str::to_string),
            // Without TLS there is no ALPN to choose by: HTTP/1.1, as Envoy's auto.
            UpstreamProtocol::Auto if self.tls.is_some() => {
                pool.auto(self.http2).map_err(str::to_string)
            }
            UpstreamProtocol::Auto | UpstreamProtocol::Http1 => Ok(pool),
        }
    }
}

impl Inner {
    /// The pool of `addr` (built now if this is its first request); `None` if `addr` is
    /// not an endpoint or its pool could not be built.
    /// A failure is not kept: the next request tries again.
    fn pool(&self, addr: SocketAddr) -> Option<&MuxHttp> {
        let cell = self.pools.get(&addr)?;
        if let Some(p) = cell.get() {
            return Some(p);
        }
        match self.recipe.build(addr) {
            // Another worker may have built it meanwhile: one wins, the other is dropped.
            Ok(p) => Some(cell.get_or_init(|| p)),
            Err(e) => {
                tracing::error!(%addr, error = %e, "balance-http: cannot build the endpoint's pool; this request is answered 503");
                None
            }
        }
    }
}

impl BalanceHttp {
    /// Builds the balancer and one connection pool per endpoint (made on the endpoint's
    /// first request); errors name the field.
    /// Relative paths (the TLS files) resolve against the working directory.
    pub fn new(config: BalanceHttpConfig) -> Result<Self, ConfigError> {
        Self::with_context(config, &BuildContext::new("."))
    }

    /// As [`BalanceHttp::new`], with relative paths resolved by `cx`.
    pub fn with_context(
        mut config: BalanceHttpConfig,
        cx: &BuildContext,
    ) -> Result<Self, ConfigError> {
        if config.endpoints.is_empty() {
            return Err(ConfigError::new("endpoints", "list at least one endpoint"));
        }
        let mut backends = Vec::with_capacity(config.endpoints.len());
        let mut pools = HashMap::with_capacity(config.endpoints.len());
        let opts = MuxOptions {
            max_idle: config.max_idle,
            max_queue: 1,
            max_messages: config.max_requests,
            max_resends: super::STALE_RESENDS,
            ..MuxOptions::default()
        };
        if config.connect_timeout.is_zero() || config.max_idle.is_zero() {
            return Err(ConfigError::new(
                "connect_timeout",
                "`connect_timeout` and `max_idle` must be more than zero",
            ));
        }
        // TLS: one client configuration for every endpoint.
        let tls = match &config.tls {
            None => None,
            Some(t) => {
                let alpn: &[&str] = match config.protocol {
                    UpstreamProtocol::Http2 => {
                        config.http2.scheme = UpstreamScheme::Https;
                        &["h2"]
                    }
                    UpstreamProtocol::Auto => &["h2", "http/1.1"],
                    UpstreamProtocol::Http1 => &["http/1.1"],
                };
                let c = t.connect_tls(alpn);
                let field =
                    |e: ConfigError| ConfigError::new(format!("tls.{}", e.field), e.problem);
                let name = c.server_name().map_err(field)?;
                Some((
                    c.client_config(cx).map_err(field)?,
                    name,
                    t.handshake_timeout,
                ))
            }
        };
        // What can fail in making a pool fails here: the HTTP/2 settings.
        match config.protocol {
            UpstreamProtocol::Http2 => config
                .http2
                .validate()
                .map_err(|e| ConfigError::new("http2", e))?,
            UpstreamProtocol::Auto if tls.is_some() => {
                let mut h2 = config.http2;
                h2.scheme = UpstreamScheme::Https;
                h2.validate().map_err(|e| ConfigError::new("http2", e))?;
            }
            UpstreamProtocol::Auto | UpstreamProtocol::Http1 => {}
        }
        let recipe = PoolRecipe {
            tls,
            connect_timeout: config.connect_timeout,
            limits: config.limits.limits(),
            opts,
            protocol: config.protocol,
            http2: config.http2,
        };
        for (i, t) in config.endpoints.iter().enumerate() {
            if t.weight == 0 || t.weight > 10_000 {
                return Err(ConfigError::new(
                    format!("endpoints[{i}].weight"),
                    "must be between 1 and 10000",
                ));
            }
            if pools.contains_key(&t.addr) {
                return Err(ConfigError::new(
                    format!("endpoints[{i}]"),
                    format!("`{}` is listed twice", t.addr),
                ));
            }
            pools.insert(t.addr, std::sync::OnceLock::new());
            backends.push(t.clone());
        }
        let mut lb = Group::new(config.balance.clone(), backends)?;
        if let Some(hc) = &config.health_check {
            lb = lb.health_check(hc.clone())?;
        }
        let (breaker, slots) = match &config.circuit_breaker {
            None => (None, None),
            Some(cb) => {
                if cb.max_retries.is_some() || cb.degradation.is_some() {
                    return Err(ConfigError::new(
                        "circuit_breaker",
                        "`max_retries` and `degradation` are not taken by balance-http",
                    ));
                }
                if cb.max_connections.is_some() && config.protocol != UpstreamProtocol::Http1 {
                    return Err(ConfigError::new(
                        "circuit_breaker.max_connections",
                        "only with `protocol: http1` (one request per connection)",
                    ));
                }
                let slots = cb
                    .max_connections
                    .map(|n| Arc::new(tokio::sync::Semaphore::new(n as usize)));
                let breaker = CircuitBreaker::new(CircuitBreakerConfig {
                    max_connections: None,
                    ..cb.clone()
                })
                .map_err(|e| ConfigError::new("circuit_breaker", e))?;
                (Some(breaker), slots)
            }
        };
        let hash_header = match &config.hash_on {
            HashOn::Header(h) => Some(
                HeaderName::from_bytes(h.as_bytes())
                    .map_err(|e| ConfigError::new("hash_on.header", e))?,
            ),
            _ => None,
        };
        Ok(BalanceHttp {
            inner: Arc::new(Inner {
                config,
                lb,
                pools,
                recipe,
                hash_header,
                breaker,
                slots,
            }),
        })
    }

    /// The balancer, to inspect endpoint state or mark endpoints up and down.
    pub fn balancer(&self) -> &Balancer {
        self.inner.lb.balancer()
    }
}

impl Inner {
    fn key(&self, cx: &Context, head: &request::Parts) -> u64 {
        let from_header = self
            .hash_header
            .as_ref()
            .and_then(|h| head.headers.get(h))
            .map(|v| flowgate_lb::hash::hash_key(v.as_bytes()));
        if let Some(k) = from_header {
            return k;
        }
        if self.config.hash_on == HashOn::Path {
            return flowgate_lb::hash::hash_key(head.uri.path().as_bytes());
        }
        flowgate_lb::peer_key(cx.conn().peer)
    }
}

impl Filter for BalanceHttp {
    fn describe(&self) -> Description {
        Description::filter("balance-http").options(&self.inner.config)
    }

    /// Each endpoint's weight (configured and in the current table), active health,
    /// outlier ejection and requests in flight; the circuit breaker's requests in flight.
    fn status(&self) -> Option<serde_json::Value> {
        let endpoints: Vec<serde_json::Value> = self
            .inner
            .lb
            .balancer()
            .status()
            .into_iter()
            .map(|e| {
                serde_json::json!({
                    "address": e.backend.addr.to_string(),
                    "weight": e.backend.weight,
                    "effective_weight": e.effective_weight,
                    "healthy": e.healthy,
                    "ejected": e.ejected,
                    "in_flight": e.in_flight,
                })
            })
            .collect();
        let mut s = serde_json::json!({ "endpoints": endpoints });
        if let Some(b) = &self.inner.breaker {
            s["circuit_breaker"] = serde_json::json!({ "requests": b.requests() });
        }
        Some(s)
    }

    fn attach(&self, input: Events, cx: &Context) -> Events {
        Box::pin(BalanceStream {
            inner: self.inner.clone(),
            cx: cx.clone(),
            state: State::Waiting(input),
            ready: VecDeque::new(),
        })
    }
}

/// What a request holds of the circuit breaker while it runs.
#[derive(Default)]
struct Held {
    _request: Option<Permit>,
    _slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// A busy-connection slot being waited for.
type SlotWait = Pin<
    Box<
        dyn std::future::Future<
                Output = Result<tokio::sync::OwnedSemaphorePermit, tokio::sync::AcquireError>,
            > + Send,
    >,
>;

enum State {
    /// Waiting for the request head.
    Waiting(Events),
    /// Over a circuit-breaker limit: waiting for a busy connection to free up.
    Queued {
        input: Events,
        first: Event,
        held: Held,
        wait: SlotWait,
        _pending: Permit,
    },
    /// No endpoint: reading the request to its end, then answering 503 (`overloaded`: a
    /// circuit breaker's, with `x-envoy-overloaded`).
    Refusing(Events, bool),
    /// The request is on its way through an endpoint's pool.
    Running {
        out: Events,
        lease: Option<Lease>,
        /// A 5xx status was recorded: a later error is the same failure, not a second one.
        failed: bool,
        /// The circuit breaker's units, given back when the response ends.
        held: Held,
    },
    Done,
}

struct BalanceStream {
    inner: Arc<Inner>,
    cx: Context,
    state: State,
    ready: VecDeque<Event>,
}

/// How a failed try counts for outlier detection.
fn outcome_of(e: &StreamError) -> Outcome {
    match (e.side(), e.kind()) {
        (_, ErrorKind::ConnectFailed) => Outcome::ConnectFailure,
        (Side::Upstream, ErrorKind::ConnectTimeout | ErrorKind::IdleTimeout) => Outcome::Timeout,
        (Side::Upstream, _) => Outcome::Status(502),
        _ => Outcome::Unknown,
    }
}

fn unavailable() -> [Event; 4] {
    refusal(false)
}

/// A 503: no endpoint, or (`overloaded`) a circuit breaker's limit.
fn refusal(overloaded: bool) -> [Event; 4] {
    let body = Bytes::from_static(if overloaded {
        b"upstream overflow\n"
    } else {
        b"no healthy upstream\n"
    });
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = StatusCode::SERVICE_UNAVAILABLE;
    if overloaded {
        parts.headers.insert(
            HeaderName::from_static("x-envoy-overloaded"),
            http::HeaderValue::from_static("true"),
        );
    }
    parts
        .headers
        .insert(http::header::CONTENT_LENGTH, body.len().into());
    [
        Event::MessageStart(Head::new::<response::Parts>(parts)),
        Event::Data(body),
        Event::MessageEnd(Tail::none()),
        Event::END,
    ]
}

impl BalanceStream {
    /// The request head arrived: take the circuit breaker's units (or wait for a busy
    /// connection, or refuse), then go on to [`BalanceStream::start`].
    fn admit(&mut self, input: Events, first: Event) {
        let mut held = Held::default();
        if let Some(slots) = &self.inner.slots {
            match slots.clone().try_acquire_owned() {
                Ok(p) => held._slot = Some(p),
                Err(_) => {
                    // `slots` comes with a breaker, which bounds the waiting requests.
                    let pending = self.inner.breaker.as_ref().map(CircuitBreaker::try_pending);
                    let pending = match pending {
                        Some(Ok(p)) => p,
                        Some(Err(e)) => return self.overloaded(input, &first, e),
                        None => return self.overloaded(input, &first, "no connection"),
                    };
                    let wait = Box::pin(slots.clone().acquire_owned());
                    self.state = State::Queued {
                        input,
                        first,
                        held,
                        wait,
                        _pending: pending,
                    };
                    return;
                }
            }
        }
        self.proceed(input, first, held);
    }

    /// Holding a connection slot (or without `max_connections`): take a request unit (a
    /// waiting request is not an active one), then [`BalanceStream::start`].
    fn proceed(&mut self, input: Events, first: Event, mut held: Held) {
        if let Some(b) = &self.inner.breaker {
            match b.try_request() {
                Ok(p) => held._request = Some(p),
                Err(e) => return self.overloaded(input, &first, e),
            }
        }
        self.start(input, first, held);
    }

    /// Over a circuit-breaker limit: the request is answered 503 (once read to its end).
    fn overloaded(&mut self, input: Events, first: &Event, why: impl std::fmt::Display) {
        tracing::warn!("balance-http: {why}; answering 503");
        if first.is_end() {
            self.ready.extend(refusal(true));
            self.state = State::Done;
        } else {
            self.state = State::Refusing(input, true);
        }
    }

    /// Pick an endpoint and start its pool.
    fn start(&mut self, input: Events, first: Event, held: Held) {
        let inner = &self.inner;
        let key = match &first {
            Event::MessageStart(h) => h.get::<request::Parts>().map(|p| inner.key(&self.cx, p)),
            _ => None,
        };
        let Some(key) = key else {
            // Not a request message: nothing to balance.
            self.ready.push_back(Event::StreamEnd(Some(StreamError::new(
                ErrorKind::Protocol,
                Side::Internal,
            ))));
            self.state = State::Done;
            return;
        };
        let picked = inner
            .lb
            .pick(key)
            .and_then(|l| inner.pool(l.addr()).map(|p| (l, p)));
        match picked {
            None => {
                tracing::warn!(
                    "balance-http: no eligible endpoint (all unhealthy, ejected or at their circuit breaker); answering 503"
                );
                if first.is_end() {
                    self.ready.extend(unavailable());
                    self.state = State::Done;
                } else {
                    self.state = State::Refusing(input, false);
                }
            }
            Some((lease, pool)) => {
                self.cx.insert(PickedUpstream(lease.addr()));
                let input: Events = Box::pin(futures_util::stream::iter([first]).chain(input));
                let out = pool.attach(input, &self.cx);
                self.state = State::Running {
                    out,
                    lease: Some(lease),
                    failed: false,
                    held,
                };
            }
        }
    }
}

impl Stream for BalanceStream {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, task: &mut TaskCx<'_>) -> Poll<Option<Event>> {
        let this = &mut *self;
        loop {
            if let Some(ev) = this.ready.pop_front() {
                return Poll::Ready(Some(ev));
            }
            match &mut this.state {
                State::Done => return Poll::Ready(None),
                State::Waiting(input) => {
                    let first = match input.as_mut().poll_next(task) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(ev) => ev.unwrap_or(Event::END),
                    };
                    if let Event::StreamEnd(_) = first {
                        this.state = State::Done;
                        return Poll::Ready(Some(first));
                    }
                    let State::Waiting(input) = std::mem::replace(&mut this.state, State::Done)
                    else {
                        return Poll::Ready(None);
                    };
                    this.admit(input, first);
                }
                State::Queued { wait, .. } => {
                    let slot = match wait.as_mut().poll(task) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(r) => r.ok(),
                    };
                    let State::Queued {
                        input,
                        first,
                        mut held,
                        ..
                    } = std::mem::replace(&mut this.state, State::Done)
                    else {
                        return Poll::Ready(None);
                    };
                    held._slot = slot;
                    this.proceed(input, first, held);
                }
                State::Refusing(input, overloaded) => match input.as_mut().poll_next(task) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(Event::StreamEnd(Some(e)))) => {
                        this.state = State::Done;
                        return Poll::Ready(Some(Event::StreamEnd(Some(e))));
                    }
                    Poll::Ready(Some(Event::MessageEnd(_) | Event::StreamEnd(None)) | None) => {
                        this.ready.extend(refusal(*overloaded));
                        this.state = State::Done;
                    }
                    Poll::Ready(Some(_)) => {}
                },
                State::Running {
                    out,
                    lease,
                    failed,
                    held,
                } => {
                    let ev = match out.as_mut().poll_next(task) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(ev) => ev.unwrap_or(Event::END),
                    };
                    match &ev {
                        // An interim response (1xx) is neither the outcome nor the end.
                        Event::MessageStart(h) if is_interim_head(h) => {}
                        Event::MessageEnd(t) if ends_interim(t) => {}
                        Event::MessageStart(h) => {
                            if let (Some(l), Some(p)) = (lease.as_mut(), h.get::<response::Parts>())
                            {
                                l.record(Outcome::Status(p.status.as_u16()));
                                *failed = p.status.is_server_error();
                            }
                        }
                        // The response is complete: the request no longer counts as in
                        // flight.
                        Event::MessageEnd(_) => {
                            drop(lease.take());
                            *held = Held::default();
                        }
                        Event::StreamEnd(e) => {
                            if let (Some(l), Some(e), false) = (lease.as_mut(), e, *failed) {
                                l.record(outcome_of(e));
                            }
                            drop(lease.take());
                            this.state = State::Done;
                        }
                        Event::Data(_) => {}
                    }
                    return Poll::Ready(Some(ev));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(yaml: &str) -> Result<BalanceHttpConfig, String> {
        serde_json::from_str(yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn targets_as_strings_or_maps() {
        let c = parse(
            r#"{"endpoints": ["127.0.0.1:1", {"address": "127.0.0.1:2", "weight": 3}],
                "hash_on": {"header": "x-user"}}"#,
        )
        .unwrap();
        assert_eq!(c.endpoints[0].weight, 1);
        assert_eq!(c.endpoints[1].weight, 3);
        assert_eq!(c.hash_on, HashOn::Header("x-user".into()));
        assert_eq!(c.balance.algorithm, Algorithm::RoundRobin);
        let e = parse(r#"{"endpoints": ["localhost:1"]}"#).unwrap_err();
        assert!(e.contains("is not `IP:port`"), "{e}");
        let e = parse(r#"{"endpoints": [{"address": "127.0.0.1:2", "wieght": 3}]}"#).unwrap_err();
        assert!(e.contains("wieght"), "{e}");
    }

    #[test]
    fn bad_groups_name_the_field() {
        let build = |c: BalanceHttpConfig| BalanceHttp::new(c).err().unwrap().field;
        assert_eq!(build(BalanceHttpConfig::new(vec![])), "endpoints");
        let t = |p: u16, weight: u32| {
            Backend::new(SocketAddr::from(([127, 0, 0, 1], p))).weight(weight)
        };
        assert_eq!(
            build(BalanceHttpConfig::new(vec![t(1, 1), t(1, 2)])),
            "endpoints[1]"
        );
        assert_eq!(
            build(BalanceHttpConfig::new(vec![t(1, 0)])),
            "endpoints[0].weight"
        );
        let mut c = BalanceHttpConfig::new(vec![t(1, 1)]);
        c.hash_on = HashOn::Header("bad header".into());
        assert_eq!(build(c), "hash_on.header");
    }

    #[test]
    fn keys_follow_hash_on() {
        let t = Backend::new(SocketAddr::from(([127, 0, 0, 1], 1)));
        let mut c = BalanceHttpConfig::new(vec![t]);
        c.hash_on = HashOn::Header("x-user".into());
        let b = BalanceHttp::new(c).unwrap();
        let cx = Context::with_conn(flowgate_pipeline::ConnInfo {
            peer: Some("10.0.0.1:5000".parse().unwrap()),
            ..Default::default()
        });
        let req = |user: Option<&str>| {
            let mut r = http::Request::get("/a");
            if let Some(u) = user {
                r = r.header("x-user", u);
            }
            r.body(()).unwrap().into_parts().0
        };
        let (a, a2, b2) = (
            b.inner.key(&cx, &req(Some("alice"))),
            b.inner.key(&cx, &req(Some("alice"))),
            b.inner.key(&cx, &req(Some("bob"))),
        );
        assert_eq!(a, a2);
        assert_ne!(a, b2);
        let ip = flowgate_lb::hash::hash_key(&[10, 0, 0, 1]);
        assert_eq!(b.inner.key(&cx, &req(None)), ip, "falls back to the IP");
    }

    #[test]
    fn outcomes_of_failures() {
        let e = StreamError::new(ErrorKind::ConnectFailed, Side::Upstream);
        assert_eq!(outcome_of(&e), Outcome::ConnectFailure);
        let e = StreamError::new(ErrorKind::ConnectTimeout, Side::Upstream);
        assert_eq!(outcome_of(&e), Outcome::Timeout);
        let e = StreamError::new(ErrorKind::ConnectionReset, Side::Upstream);
        assert_eq!(outcome_of(&e), Outcome::Status(502));
        let e = StreamError::new(ErrorKind::ConnectionReset, Side::Downstream);
        assert_eq!(outcome_of(&e), Outcome::Unknown);
    }
}
