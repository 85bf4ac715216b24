//! The gateway file's schema: listeners, routes and backend groups.
//!
//! Every struct rejects unknown fields, so a typo is an error at its line, naming the
//! field. Defaults are written next to each field.

use std::net::SocketAddr;
use std::time::Duration;

use flowgate_filters_http::{
    AccessLogFormat, HashOn, HeaderEdits, LimitsConfig, PrefixRewrite, RedirectConfig,
    RespondConfig, RouteMatch, UpstreamProtocol, UpstreamTlsConfig,
};
use flowgate_filters_net::tls::{CertificateConfig, ClientAuthConfig, TlsVersion};
use flowgate_lb::BalancerConfig;
use flowgate_lb::health::HealthCheckConfig;
use flowgate_pipeline::renamed::{self, Renamed};
use serde::Deserialize;
use serde_saphyr::Spanned;

/// A whole gateway file.
///
/// ```yaml
/// workers: 2                  # default: one per CPU
/// drain_timeout: 30s          # how long shutdown waits for live connections
/// listeners: [...]            # at least one
/// routes: [...]               # tried in order; no match is a 404
/// backends: [...]             # upstream groups the routes proxy to
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayFile {
    /// Worker threads. Default: one per CPU.
    #[serde(default)]
    pub workers: Option<usize>,
    /// How long shutdown waits for live connections. Default 30 s.
    #[serde(default, with = "flowgate_pipeline::serde_duration::option")]
    pub drain_timeout: Option<Duration>,
    /// Where the gateway listens. At least one.
    pub listeners: Vec<Spanned<ListenerSpec>>,
    /// The routes, tried in order; the first whose `match` holds takes the request.
    #[serde(default)]
    pub routes: Vec<Spanned<RouteSpec>>,
    /// Upstream groups that `proxy` routes send requests to.
    #[serde(default)]
    pub backends: Vec<Spanned<BackendSpec>>,
}

/// One listener: an address, optional TLS, and the HTTP settings of its connections.
///
/// ```yaml
/// - name: https
///   address: 0.0.0.0:8443
///   tls:
///     certificates:
///       - { cert: a.pem, key: a.key, sni: [a.example.com] }   # the first is the default
///       - { cert: b.pem, key: b.key, sni: ["*.b.example.com"] }
///   http2: true                 # h2 by ALPN over TLS, h2c prior knowledge without
///   header_timeout: 10s
///   keepalive_timeout: 60s
///   access_log: common          # or json
///   routes: [api, site]         # default: every route
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSpec {
    /// A name for the generated pipelines and errors. Default `listener<N>`.
    #[serde(default)]
    pub name: Option<String>,
    /// `IP:port` to listen on.
    pub address: SocketAddr,
    /// Terminate TLS with these certificates; plain HTTP without it.
    #[serde(default)]
    pub tls: Option<TlsSpec>,
    /// Serve HTTP/2 (ALPN `h2` over TLS, h2c with prior knowledge in plain text).
    /// Default true.
    #[serde(default = "flowgate_pipeline::registry::default_true")]
    pub http2: bool,
    /// A request head must arrive within this (slowloris). Default 10 s.
    #[serde(default = "d_header", with = "flowgate_pipeline::serde_duration")]
    pub header_timeout: Duration,
    /// Close a connection idle this long between requests. Default 60 s.
    #[serde(default = "d_keepalive", with = "flowgate_pipeline::serde_duration")]
    pub keepalive_timeout: Duration,
    /// Log each request (`common` or `json`, target `flowgate::access`). Default off.
    #[serde(default)]
    pub access_log: Option<AccessLogFormat>,
    /// The names of the routes this listener serves, in the order of `routes`. Default:
    /// every route.
    #[serde(default)]
    pub routes: Option<Vec<String>>,
    /// Limits on request heads and bodies.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Most connections at once on this listener (over all workers); more are refused.
    /// Default 100 000, at most half the open-file limit.
    #[serde(default)]
    pub max_connections: Option<usize>,
}

/// TLS termination on a listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSpec {
    /// Certificates picked by the client's SNI; the first is the default. At least one.
    pub certificates: Vec<CertificateConfig>,
    /// Verify client certificates (mutual TLS). Default off.
    #[serde(default)]
    pub client_auth: Option<ClientAuthConfig>,
    /// Allowed versions. Default `[tls1.2, tls1.3]`.
    #[serde(default)]
    pub versions: Option<Vec<TlsVersion>>,
}

/// One route: a match and exactly one action (`proxy`, `redirect` or `respond`).
///
/// ```yaml
/// - name: api
///   match: { host: "*.example.com", path_prefix: /api/, method: [GET, POST], headers: { x-env: prod } }
///   proxy:
///     backend: api
///     rewrite: { from: /api/, to: / }
///     request_headers: { set: { x-forwarded-proto: https } }
///     response_headers: { remove: [server] }
/// - match: { path: /old }
///   redirect: { status: 308, path_prefix: { from: /old, to: /new } }
/// - match: { path_regex: "/health(z)?" }
///   respond: { status: 200, body: "ok\n" }
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// A name for listeners' `routes`, generated pipelines and errors. Default `route<N>`.
    #[serde(default)]
    pub name: Option<String>,
    /// What the request must look like: `host` (exact or `*.suffix`), `path`,
    /// `path_prefix`, `path_regex`, `method`, `headers`, `query`. Empty matches all.
    #[serde(rename = "match", default)]
    pub when: RouteMatch,
    /// Send the request to a backend group.
    #[serde(default)]
    pub proxy: Option<ProxyAction>,
    /// Answer with a redirect.
    #[serde(default)]
    pub redirect: Option<RedirectConfig>,
    /// Answer with a fixed response.
    #[serde(default)]
    pub respond: Option<RespondConfig>,
}

/// Proxy to a backend group, with optional request changes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyAction {
    /// The backend group's name.
    pub backend: String,
    /// Replace a path prefix before sending (`{ from: /api/, to: / }`).
    #[serde(default)]
    pub rewrite: Option<PrefixRewrite>,
    /// Header edits on the request (`set`, `add`, `remove`).
    #[serde(default)]
    pub request_headers: HeaderEdits,
    /// Header edits on the response.
    #[serde(default)]
    pub response_headers: HeaderEdits,
}

/// A group of upstream endpoints and how requests are spread over them.
///
/// ```yaml
/// - name: api
///   endpoints: [127.0.0.1:8001, { address: 127.0.0.1:8002, weight: 3 }]
///   balance: weighted_round_robin     # or { algorithm: { type: maglev }, outlier: { … } }
///   hash_on: { header: x-user }       # for ring_hash / maglev; default client_ip
///   health_check: { probe: { type: http, path: /health }, interval: 2s }
///   connect_timeout: 2s
///   retries: 1
///   protocol: http2                   # h2c to the endpoints; default http1
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSpec {
    /// The group's name, referred to by `proxy.backend`.
    pub name: String,
    /// `IP:port` or `{ address, weight, metadata }` (flowgate-lb's `Backend`). At least one.
    pub endpoints: Vec<flowgate_lb::Backend>,
    /// flowgate-lb's settings, the same `balance:` as every filter's: an algorithm name
    /// (`round_robin`, the default, `weighted_round_robin`, `random`, `least_request`,
    /// `peak_ewma`, `ring_hash`, `maglev`) or a map with `algorithm` (a name or
    /// `{ type: maglev, table_size: 65537 }`), `outlier`, `slow_start`, `locality` and
    /// `sticky`. Unlike the filters, passive outlier detection is on when `outlier` is
    /// absent, with Envoy's settings (5 consecutive 5xx or connect failures eject for
    /// 30 s); `outlier: { consecutive_5xx: 0, consecutive_connect_failures: 0 }` turns it
    /// off.
    #[serde(default)]
    pub balance: BalancerConfig,
    #[doc(hidden)]
    #[serde(default, rename = "policy", skip_serializing)]
    pub renamed_policy: Renamed<renamed::Policy>,
    /// What `ring_hash` and `maglev` key on: `client_ip` (default), `path`, or
    /// `{ header: NAME }`.
    #[serde(default)]
    pub hash_on: HashOn,
    /// Active health checks (`probe: { type: tcp }` or `{ type: http, path: … }`). Off by
    /// default.
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    #[doc(hidden)]
    #[serde(default, rename = "outlier", skip_serializing)]
    pub renamed_outlier: Renamed<renamed::Outlier>,
    #[doc(hidden)]
    #[serde(default, rename = "slow_start", skip_serializing)]
    pub renamed_slow_start: Renamed<renamed::SlowStart>,
    /// How long connecting to an endpoint may take. Default 2 s.
    #[serde(default = "d_connect", with = "flowgate_pipeline::serde_duration")]
    pub connect_timeout: Duration,
    /// Retries after a failed try (connect failure, reset, 502/503/504) of an idempotent
    /// request, each on a new pick. Default 1; 0 turns retries off.
    #[serde(default = "d_retries")]
    pub retries: u32,
    /// A try with no response head after this long is abandoned (504, or retried). With
    /// `retries: 0` it bounds the one try. Default 15 s.
    #[serde(default = "d_per_try", with = "flowgate_pipeline::serde_duration")]
    pub per_try_timeout: Duration,
    /// Close a pooled upstream connection idle this long. Default 60 s.
    #[serde(default = "d_idle", with = "flowgate_pipeline::serde_duration")]
    pub max_idle: Duration,
    /// The protocol spoken to the endpoints: `http1` (default), `http2` (h2c with prior
    /// knowledge, or h2 by ALPN with `tls`: many requests share a connection) or `auto`
    /// (with `tls`, HTTP/2 or HTTP/1.1 as each endpoint's ALPN says; HTTP/1.1 without).
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// TLS to the endpoints: `{ sni, ca }` (and optionally `verify`, `client_cert`,
    /// `handshake_timeout`). Default off.
    #[serde(default)]
    pub tls: Option<UpstreamTlsConfig>,
}

fn d_header() -> Duration {
    Duration::from_secs(10)
}
fn d_keepalive() -> Duration {
    Duration::from_secs(60)
}
fn d_connect() -> Duration {
    Duration::from_secs(2)
}
fn d_retries() -> u32 {
    1
}
fn d_per_try() -> Duration {
    Duration::from_secs(15)
}
fn d_idle() -> Duration {
    Duration::from_secs(60)
}
