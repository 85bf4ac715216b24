//! The subset of Envoy's xDS a Flowgate sidecar accepts, read into plain types — or
//! refused with the resource and the field that is outside it (the NACK's reason). A
//! configuration is taken whole or not at all.
//!
//! Accepted:
//! - **Listeners**: a socket address; filter chains matched on server names (SNI),
//!   destination port and address prefixes, transport protocol and ALPN, plus a default
//!   chain; the listener filters `tls_inspector`, `http_inspector` and `original_dst`
//!   (captured connections: chains match their original destination); downstream TLS
//!   with the certificate and the roots over SDS (peers' URI SANs optionally pinned by exact
//!   match), a client certificate optionally required; network filters `rbac` then
//!   `http_connection_manager` or `tcp_proxy`.
//! - **HTTP**: routes over RDS (ADS) or inline; HTTP filters `rbac` then `router`; virtual
//!   hosts by domain; routes matched by prefix, exact path or regex, to a cluster, to
//!   weighted clusters, or answered directly; a route timeout and a retry policy
//!   (`retry_on` with the conditions `5xx`, `gateway-error`, `connect-failure`,
//!   `refused-stream`, `reset` and `retriable-status-codes`; `num_retries`,
//!   `per_try_timeout`, `retriable_status_codes`, the back-off's base interval).
//! - **Clusters**: `STATIC` (inline endpoints) or `EDS` over ADS; round robin, least
//!   request, ring hash, Maglev or random; a connect timeout; upstream TLS (SNI, the
//!   certificate and roots over SDS); outlier detection and circuit-breaker thresholds.
//! - **Endpoints**: socket addresses with weights and health.
//! - **Secrets**: a certificate and key, or roots, inline.
//! - **RBAC** (HTTP and network, `ALLOW` or `DENY`): principals are `any` or an exact
//!   authenticated principal (a SPIFFE ID), or sets of them; permissions are `any`, a
//!   header match (`:method` …), a path match, a destination port, or sets of them.
//!
//! Anything else that changes what a proxy does — another filter, a DNS cluster, a source
//! IP principal — is refused, naming it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{Address, address, socket_address};
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, lb_endpoint};
use envoy_types::pb::envoy::config::listener::v3::{
    FilterChain, Listener, filter, listener_filter,
};
use envoy_types::pb::envoy::config::rbac::v3::{Permission, Principal, permission, principal};
use envoy_types::pb::envoy::config::route::v3::{
    RouteConfiguration, header_matcher, route, route_action, route_match,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CommonTlsContext, DownstreamTlsContext, Secret, UpstreamTlsContext, common_tls_context, secret,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

use super::client::Received;
use super::type_url;
use crate::model::RETRY_CONDITIONS;

/// A whole sidecar configuration in the accepted subset.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SidecarConfig {
    /// Listeners by name.
    pub listeners: BTreeMap<String, ListenerSpec>,
    /// Route tables by name (RDS).
    pub routes: BTreeMap<String, RouteTable>,
    /// Clusters by name, their endpoints resolved.
    pub clusters: BTreeMap<String, ClusterSpec>,
    /// Secrets by name.
    pub secrets: BTreeMap<String, SecretSpec>,
}

/// One listener.
#[derive(Clone, Debug, PartialEq)]
pub struct ListenerSpec {
    /// Where it listens.
    pub address: SocketAddr,
    /// Whether it reads the original destination of redirected connections.
    pub original_dst: bool,
    /// Its filter chains, in order.
    pub chains: Vec<ChainSpec>,
    /// The chain for connections no other matches.
    pub default_chain: Option<ChainSpec>,
}

/// One filter chain: what it matches and what it does.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChainSpec {
    /// Its name.
    pub name: String,
    /// TLS server names (SNI); any when empty.
    pub server_names: Vec<String>,
    /// The connection's (original) destination port.
    pub destination_port: Option<u16>,
    /// The connection's (original) destination address is in one of these prefixes
    /// (`10.96.0.10/32`); any when empty.
    pub destination_prefixes: Vec<String>,
    /// `tls` or `raw_buffer`.
    pub transport_protocol: Option<String>,
    /// ALPN protocols.
    pub alpn: Vec<String>,
    /// TLS terminated here.
    pub tls: Option<DownstreamTls>,
    /// Network RBAC, before the application.
    pub rbac: Option<RbacSpec>,
    /// HTTP or TCP.
    pub app: App,
}

/// What a chain does with a connection.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum App {
    /// Nothing (a chain without a terminal filter: refused when read, so never seen).
    #[default]
    None,
    /// HTTP through a connection manager.
    Http {
        /// The route table: by name over RDS, or inline.
        routes: Routes,
        /// HTTP RBAC before the router.
        rbac: Option<RbacSpec>,
    },
    /// Bytes to a cluster.
    Tcp {
        /// The cluster.
        cluster: String,
    },
}

/// Where a connection manager's routes come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Routes {
    /// RDS: the route table of this name.
    Rds(String),
    /// Inline.
    Inline(RouteTable),
}

impl Default for Routes {
    fn default() -> Self {
        Routes::Rds(String::new())
    }
}

/// Downstream TLS.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DownstreamTls {
    /// The SDS secret with the certificate and key.
    pub cert_secret: String,
    /// The SDS secret with the roots clients are verified against.
    pub roots_secret: Option<String>,
    /// A client certificate is required.
    pub require_client_cert: bool,
    /// The client certificate must name one of these URI SANs (any when empty).
    pub allowed_sans: Vec<String>,
}

/// Upstream TLS.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UpstreamTls {
    /// The server name sent.
    pub sni: String,
    /// The SDS secret with the client certificate and key.
    pub cert_secret: Option<String>,
    /// The SDS secret with the roots the server is verified against.
    pub roots_secret: Option<String>,
    /// The server's certificate must name one of these URI SANs (any the roots signed
    /// when empty).
    pub allowed_sans: Vec<String>,
}

/// A route table.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RouteTable {
    /// Virtual hosts, in order.
    pub virtual_hosts: Vec<VirtualHostSpec>,
}

/// A virtual host: its domains and routes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VirtualHostSpec {
    /// Its name.
    pub name: String,
    /// The `Host`s it takes (`*` for any).
    pub domains: Vec<String>,
    /// Its routes, in order.
    pub routes: Vec<RouteSpec>,
}

/// One route.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteSpec {
    /// What it matches.
    pub path: PathMatch,
    /// What it does.
    pub action: Action,
    /// The whole request's timeout (`None`: the default, 15 s, as Envoy's).
    pub timeout: Option<Duration>,
    /// Retries.
    pub retry: Option<RetrySpec>,
}

/// A route's retry policy.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RetrySpec {
    /// Envoy's conditions: `5xx`, `gateway-error`, `connect-failure`, `refused-stream`,
    /// `reset`, `retriable-status-codes`.
    pub retry_on: Vec<String>,
    /// Retries after the first try (Envoy's default 1).
    pub num_retries: u32,
    /// Each try's timeout (`None`: the route's).
    pub per_try_timeout: Option<Duration>,
    /// The statuses `retriable-status-codes` retries.
    pub status_codes: Vec<u16>,
    /// The back-off's base interval (`None`: Envoy's 25 ms).
    pub backoff: Option<Duration>,
}

fn read_retry(
    p: &envoy_types::pb::envoy::config::route::v3::RetryPolicy,
    what: &str,
) -> Result<RetrySpec, Refusal> {
    let field = |name: &str| Err(unsupported(what, &format!("retry_policy.{name}")));
    if p.per_try_idle_timeout.is_some() {
        return field("per_try_idle_timeout");
    }
    if p.retry_priority.is_some() {
        return field("retry_priority");
    }
    if !p.retry_host_predicate.is_empty() {
        return field("retry_host_predicate");
    }
    if !p.retry_options_predicates.is_empty() {
        return field("retry_options_predicates");
    }
    if p.rate_limited_retry_back_off.is_some() {
        return field("rate_limited_retry_back_off");
    }
    if !p.retriable_headers.is_empty() {
        return field("retriable_headers");
    }
    if !p.retriable_request_headers.is_empty() {
        return field("retriable_request_headers");
    }
    if p.retry_back_off
        .as_ref()
        .is_some_and(|b| b.max_interval.is_some())
    {
        return field("retry_back_off.max_interval");
    }
    let retry_on: Vec<String> = p
        .retry_on
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect();
    if let Some(c) = retry_on
        .iter()
        .find(|c| !RETRY_CONDITIONS.contains(&c.as_str()))
    {
        return Err(format!(
            "{what}: retry condition `{c}` is not supported (supported: {})",
            RETRY_CONDITIONS.join(", ")
        ));
    }
    let status_codes = p
        .retriable_status_codes
        .iter()
        .map(|c| {
            u16::try_from(*c)
                .ok()
                .filter(|c| (100..=599).contains(c))
                .ok_or_else(|| format!("{what}: retriable status code {c}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RetrySpec {
        retry_on,
        num_retries: p.num_retries.as_ref().map_or(1, |n| n.value),
        per_try_timeout: duration(&p.per_try_timeout),
        status_codes,
        backoff: p
            .retry_back_off
            .as_ref()
            .and_then(|b| duration(&b.base_interval)),
    })
}

/// A route's path match.
#[derive(Clone, Debug, PartialEq)]
pub enum PathMatch {
    /// A prefix.
    Prefix(String),
    /// The exact path.
    Exact(String),
    /// A regular expression the whole path matches.
    Regex(String),
}

/// A route's action.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// To one cluster.
    Cluster(String),
    /// To clusters by weight.
    Weighted(Vec<(String, u32)>),
    /// Answered here.
    Direct {
        /// The status.
        status: u16,
        /// The body.
        body: String,
    },
}

/// A cluster.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterSpec {
    /// Its endpoints: `(address, weight)`.
    pub endpoints: Vec<(SocketAddr, u32)>,
    /// The load-balancing policy.
    pub lb: Lb,
    /// The connect timeout.
    pub connect_timeout: Option<Duration>,
    /// Upstream TLS.
    pub tls: Option<UpstreamTls>,
    /// Outlier detection: ejected after this many consecutive 5xx, for this long.
    pub outlier: Option<(u32, Duration)>,
    /// Circuit breaking (the default priority's thresholds).
    pub circuit: Option<CircuitSpec>,
    /// Requests per upstream connection before it is retired (`HttpProtocolOptions`).
    pub max_requests_per_connection: Option<u32>,
}

/// A cluster's circuit-breaker thresholds; Envoy's defaults (1024, 1024, 1024, 3) where
/// absent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CircuitSpec {
    /// Most connections open.
    pub max_connections: Option<u32>,
    /// Most requests waiting for a connection.
    pub max_pending_requests: Option<u32>,
    /// Most requests in flight.
    pub max_requests: Option<u32>,
    /// Most retries in flight.
    pub max_retries: Option<u32>,
}

/// A load-balancing policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Lb {
    /// Round robin (weighted).
    #[default]
    RoundRobin,
    /// Least request.
    LeastRequest,
    /// A ring of hashes.
    RingHash,
    /// Maglev.
    Maglev,
    /// Random.
    Random,
}

/// A secret.
#[derive(Clone, Debug, PartialEq)]
pub enum SecretSpec {
    /// A certificate chain and its key, PEM.
    Certificate {
        /// The chain.
        chain: String,
        /// The key.
        key: String,
    },
    /// Roots, PEM.
    Roots(String),
}

/// An RBAC filter's rules.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RbacSpec {
    /// `true`: the policies deny; `false`: they allow (anything else is denied).
    pub deny: bool,
    /// The policies by name.
    pub policies: BTreeMap<String, PolicySpec>,
}

/// One policy: any of its permissions, by any of its principals.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PolicySpec {
    /// What is allowed (or denied).
    pub permissions: Vec<Perm>,
    /// Who.
    pub principals: Vec<Who>,
}

/// A permission.
#[derive(Clone, Debug, PartialEq)]
pub enum Perm {
    /// Anything.
    Any,
    /// All of these.
    And(Vec<Perm>),
    /// Any of these.
    Or(Vec<Perm>),
    /// A header (or `:method`, `:path`, `:authority`) matching.
    Header(String, Text),
    /// The path (without the query) matching.
    Path(Text),
    /// The destination port.
    DestinationPort(u16),
    /// Not this.
    Not(Box<Perm>),
}

/// A principal.
#[derive(Clone, Debug, PartialEq)]
pub enum Who {
    /// Anyone.
    Any,
    /// All of these.
    And(Vec<Who>),
    /// Any of these.
    Or(Vec<Who>),
    /// The peer's certificate names this (its URI SAN, a SPIFFE ID) matching.
    Authenticated(Text),
    /// Not this.
    Not(Box<Who>),
}

/// A string match.
#[derive(Clone, Debug, PartialEq)]
pub enum Text {
    /// Exactly.
    Exact(String),
    /// A prefix.
    Prefix(String),
    /// A suffix.
    Suffix(String),
    /// A regular expression the whole string matches.
    Regex(String),
    /// Present, any value.
    Present,
}

/// A refusal: which resource, and what in it is outside the subset.
type Refusal = String;

fn unsupported(what: &str, field: &str) -> Refusal {
    format!("{what}: `{field}` is not supported")
}

fn decode<M: Message + Default>(any: &Any, what: &str) -> Result<M, Refusal> {
    M::decode(any.value.as_slice()).map_err(|e| format!("{what}: does not decode: {e}"))
}

fn duration(d: &Option<envoy_types::pb::google::protobuf::Duration>) -> Option<Duration> {
    d.as_ref().map(|d| {
        Duration::from_secs(u64::try_from(d.seconds).unwrap_or(0))
            + Duration::from_nanos(u64::try_from(d.nanos).unwrap_or(0))
    })
}

fn socket(addr: &Option<Address>, what: &str) -> Result<SocketAddr, Refusal> {
    match addr.as_ref().and_then(|a| a.address.as_ref()) {
        Some(address::Address::SocketAddress(s)) => {
            if s.protocol != socket_address::Protocol::Tcp as i32 {
                return Err(unsupported(what, "address.protocol (UDP)"));
            }
            let port = match s.port_specifier {
                Some(socket_address::PortSpecifier::PortValue(p)) => {
                    u16::try_from(p).map_err(|_| format!("{what}: port {p} is out of range"))?
                }
                _ => return Err(unsupported(what, "address.named_port")),
            };
            let ip = s
                .address
                .parse::<std::net::IpAddr>()
                .map_err(|_| format!("{what}: `{}` is not an IP address", s.address))?;
            Ok(SocketAddr::new(ip, port))
        }
        Some(_) => Err(unsupported(what, "address (not a socket address)")),
        None => Err(format!("{what}: no address")),
    }
}

fn text(m: &StringMatcher, what: &str) -> Result<Text, Refusal> {
    if m.ignore_case {
        return Err(unsupported(what, "ignore_case"));
    }
    Ok(match &m.match_pattern {
        Some(string_matcher::MatchPattern::Exact(s)) => Text::Exact(s.clone()),
        Some(string_matcher::MatchPattern::Prefix(s)) => Text::Prefix(s.clone()),
        Some(string_matcher::MatchPattern::Suffix(s)) => Text::Suffix(s.clone()),
        Some(string_matcher::MatchPattern::SafeRegex(r)) => Text::Regex(r.regex.clone()),
        _ => return Err(unsupported(what, "string matcher")),
    })
}

/// Reads `received` into a [`SidecarConfig`], or says what is outside the subset.
pub fn read(received: &Received) -> Result<SidecarConfig, Refusal> {
    let mut config = SidecarConfig::default();
    for (name, any) in received.of(type_url::SECRET) {
        config.secrets.insert(name.clone(), read_secret(name, any)?);
    }
    let mut assignments = BTreeMap::new();
    for (name, any) in received.of(type_url::ENDPOINT) {
        let cla: ClusterLoadAssignment = decode(any, &format!("endpoints `{name}`"))?;
        assignments.insert(name.clone(), endpoints(&cla, name)?);
    }
    for (name, any) in received.of(type_url::CLUSTER) {
        config
            .clusters
            .insert(name.clone(), read_cluster(name, any, &assignments)?);
    }
    for (name, any) in received.of(type_url::ROUTE) {
        let rc: RouteConfiguration = decode(any, &format!("routes `{name}`"))?;
        config
            .routes
            .insert(name.clone(), route_table(&rc, &format!("routes `{name}`"))?);
    }
    for (name, any) in received.of(type_url::LISTENER) {
        config
            .listeners
            .insert(name.clone(), read_listener(name, any)?);
    }
    Ok(config)
}

fn read_secret(name: &str, any: &Any) -> Result<SecretSpec, Refusal> {
    let what = format!("secret `{name}`");
    let s: Secret = decode(any, &what)?;
    let inline = |d: &Option<envoy_types::pb::envoy::config::core::v3::DataSource>,
                  field: &str|
     -> Result<String, Refusal> {
        use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
        match d.as_ref().and_then(|d| d.specifier.as_ref()) {
            Some(Specifier::InlineBytes(b)) => Ok(String::from_utf8_lossy(b).into_owned()),
            Some(Specifier::InlineString(s)) => Ok(s.clone()),
            Some(_) => Err(unsupported(&what, &format!("{field} (not inline)"))),
            None => Err(format!("{what}: no {field}")),
        }
    };
    match &s.r#type {
        Some(secret::Type::TlsCertificate(c)) => Ok(SecretSpec::Certificate {
            chain: inline(&c.certificate_chain, "certificate_chain")?,
            key: inline(&c.private_key, "private_key")?,
        }),
        Some(secret::Type::ValidationContext(v)) => {
            Ok(SecretSpec::Roots(inline(&v.trusted_ca, "trusted_ca")?))
        }
        _ => Err(unsupported(&what, "type")),
    }
}

fn endpoints(cla: &ClusterLoadAssignment, name: &str) -> Result<Vec<(SocketAddr, u32)>, Refusal> {
    let what = format!("endpoints `{name}`");
    let mut out = Vec::new();
    for locality in &cla.endpoints {
        for e in &locality.lb_endpoints {
            // Unhealthy (2) and draining (3) endpoints take nothing new.
            if matches!(e.health_status, 2 | 3) {
                continue;
            }
            let weight = e
                .load_balancing_weight
                .as_ref()
                .map_or(1, |w| w.value.max(1));
            match &e.host_identifier {
                Some(lb_endpoint::HostIdentifier::Endpoint(ep)) => {
                    out.push((socket(&ep.address, &what)?, weight));
                }
                _ => return Err(unsupported(&what, "endpoint_name")),
            }
        }
    }
    Ok(out)
}

fn read_cluster(
    name: &str,
    any: &Any,
    assignments: &BTreeMap<String, Vec<(SocketAddr, u32)>>,
) -> Result<ClusterSpec, Refusal> {
    let what = format!("cluster `{name}`");
    let c: Cluster = decode(any, &what)?;
    let kind = match c.cluster_discovery_type {
        None => cluster::DiscoveryType::Static as i32,
        Some(cluster::ClusterDiscoveryType::Type(t)) => t,
        Some(cluster::ClusterDiscoveryType::ClusterType(_)) => {
            return Err(unsupported(&what, "cluster_type"));
        }
    };
    let endpoints = if kind == cluster::DiscoveryType::Static as i32 {
        match &c.load_assignment {
            Some(cla) => endpoints(cla, name)?,
            None => Vec::new(),
        }
    } else if kind == cluster::DiscoveryType::Eds as i32 {
        let service = super::client::eds_service(&c, name);
        // Not here yet: the client holds the configuration back until it is (warming).
        assignments.get(&service).cloned().unwrap_or_default()
    } else {
        return Err(unsupported(&what, "type (only STATIC and EDS)"));
    };
    let lb = match cluster::LbPolicy::try_from(c.lb_policy) {
        Ok(cluster::LbPolicy::RoundRobin) => Lb::RoundRobin,
        Ok(cluster::LbPolicy::LeastRequest) => Lb::LeastRequest,
        Ok(cluster::LbPolicy::RingHash) => Lb::RingHash,
        Ok(cluster::LbPolicy::Maglev) => Lb::Maglev,
        Ok(cluster::LbPolicy::Random) => Lb::Random,
        _ => return Err(unsupported(&what, "lb_policy")),
    };
    if c.load_balancing_policy.is_some() {
        return Err(unsupported(&what, "load_balancing_policy"));
    }
    if !c.health_checks.is_empty() {
        return Err(unsupported(&what, "health_checks"));
    }
    let tls = match &c.transport_socket {
        None => None,
        Some(ts) => {
            let any = typed_socket(ts, &what)?;
            let t: UpstreamTlsContext = decode(any, &what)?;
            let (cert_secret, roots_secret, allowed_sans) =
                tls_secrets(t.common_tls_context.as_ref(), &what)?;
            Some(UpstreamTls {
                sni: t.sni,
                cert_secret,
                roots_secret,
                allowed_sans,
            })
        }
    };
    let outlier = c.outlier_detection.as_ref().map(|o| {
        (
            o.consecutive_5xx.as_ref().map_or(5, |v| v.value),
            duration(&o.base_ejection_time).unwrap_or(Duration::from_secs(30)),
        )
    });
    let mut circuit = None;
    if let Some(cb) = &c.circuit_breakers {
        if !cb.per_host_thresholds.is_empty() {
            return Err(unsupported(&what, "circuit_breakers.per_host_thresholds"));
        }
        for t in &cb.thresholds {
            if t.retry_budget.is_some() {
                return Err(unsupported(
                    &what,
                    "circuit_breakers.thresholds.retry_budget",
                ));
            }
            // Requests are sent at the default priority: the HIGH one's limits never apply.
            if t.priority != 0 {
                continue;
            }
            let v = |x: &Option<envoy_types::pb::google::protobuf::UInt32Value>| {
                x.as_ref().map(|v| v.value)
            };
            circuit = Some(CircuitSpec {
                max_connections: v(&t.max_connections),
                max_pending_requests: v(&t.max_pending_requests),
                max_requests: v(&t.max_requests),
                max_retries: v(&t.max_retries),
            });
        }
    }
    let mut max_requests_per_connection = None;
    for (key, any) in &c.typed_extension_protocol_options {
        if key != "envoy.extensions.upstreams.http.v3.HttpProtocolOptions" {
            return Err(unsupported(
                &what,
                &format!("typed_extension_protocol_options `{key}`"),
            ));
        }
        let o: envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions =
            decode(any, &what)?;
        {
            use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
                UpstreamProtocolOptions, explicit_http_config::ProtocolConfig,
            };
            let http1 = match &o.upstream_protocol_options {
                None => true,
                Some(UpstreamProtocolOptions::ExplicitHttpConfig(e)) => matches!(
                    e.protocol_config,
                    None | Some(ProtocolConfig::HttpProtocolOptions(_))
                ),
                Some(_) => false,
            };
            if !http1 {
                return Err(unsupported(
                    &what,
                    "HttpProtocolOptions.upstream_protocol_options (other than HTTP/1.1)",
                ));
            }
        }
        max_requests_per_connection = o
            .common_http_protocol_options
            .as_ref()
            .and_then(|c| c.max_requests_per_connection.as_ref())
            .map(|v| v.value);
    }
    Ok(ClusterSpec {
        endpoints,
        lb,
        connect_timeout: duration(&c.connect_timeout),
        tls,
        outlier,
        circuit,
        max_requests_per_connection,
    })
}

fn typed_socket<'a>(
    ts: &'a envoy_types::pb::envoy::config::core::v3::TransportSocket,
    what: &str,
) -> Result<&'a Any, Refusal> {
    use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
    match &ts.config_type {
        Some(ConfigType::TypedConfig(any)) if any.type_url.ends_with("TlsContext") => Ok(any),
        _ => Err(unsupported(
            what,
            &format!("transport socket `{}`", ts.name),
        )),
    }
}

/// What a TLS context names: (certificate secret, roots secret, pinned URI SANs).
type TlsNames = (Option<String>, Option<String>, Vec<String>);

/// The [`TlsNames`] of a TLS context.
fn tls_secrets(tls: Option<&CommonTlsContext>, what: &str) -> Result<TlsNames, Refusal> {
    let Some(tls) = tls else {
        return Ok((None, None, Vec::new()));
    };
    if !tls.tls_certificates.is_empty() {
        return Err(unsupported(what, "tls_certificates (inline; use SDS)"));
    }
    let cert = match tls.tls_certificate_sds_secret_configs.as_slice() {
        [] => None,
        [one] => Some(one.name.clone()),
        _ => return Err(unsupported(what, "more than one certificate")),
    };
    let (roots, sans) = match &tls.validation_context_type {
        None => (None, Vec::new()),
        Some(common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(s)) => {
            (Some(s.name.clone()), Vec::new())
        }
        Some(common_tls_context::ValidationContextType::CombinedValidationContext(c)) => {
            let mut sans = Vec::new();
            if let Some(v) = &c.default_validation_context {
                for m in &v.match_typed_subject_alt_names {
                    // URI (3) SANs, exactly.
                    match (m.san_type, m.matcher.as_ref().map(|t| text(t, what))) {
                        (3, Some(Ok(Text::Exact(s)))) => sans.push(s),
                        _ => {
                            return Err(unsupported(
                                what,
                                "match_typed_subject_alt_names (only exact URI)",
                            ));
                        }
                    }
                }
            }
            (
                c.validation_context_sds_secret_config
                    .as_ref()
                    .map(|s| s.name.clone()),
                sans,
            )
        }
        Some(_) => return Err(unsupported(what, "validation_context (inline; use SDS)")),
    };
    Ok((cert, roots, sans))
}

fn read_listener(name: &str, any: &Any) -> Result<ListenerSpec, Refusal> {
    let what = format!("listener `{name}`");
    let l: Listener = decode(any, &what)?;
    if l.api_listener.is_some() {
        return Err(unsupported(&what, "api_listener"));
    }
    if l.filter_chain_matcher.is_some() {
        return Err(unsupported(&what, "filter_chain_matcher"));
    }
    if l.bind_to_port.as_ref().is_some_and(|b| !b.value) {
        // Istio's virtual listeners, handed connections by `use_original_dst`: the subset
        // takes one listener whose chains match the original destination instead.
        return Err(unsupported(&what, "bind_to_port: false"));
    }
    let mut original_dst = l.use_original_dst.as_ref().is_some_and(|b| b.value);
    for f in &l.listener_filters {
        let type_url = match &f.config_type {
            Some(listener_filter::ConfigType::TypedConfig(a)) => a.type_url.as_str(),
            _ => "",
        };
        match f.name.as_str() {
            "envoy.filters.listener.tls_inspector" | "envoy.filters.listener.http_inspector" => {}
            "envoy.filters.listener.original_dst" => original_dst = true,
            other => {
                return Err(unsupported(
                    &what,
                    &format!("listener filter `{other}` ({type_url})"),
                ));
            }
        }
    }
    let chains = l
        .filter_chains
        .iter()
        .map(|c| read_chain(c, &what))
        .collect::<Result<Vec<_>, _>>()?;
    let default_chain = l
        .default_filter_chain
        .as_ref()
        .map(|c| read_chain(c, &what))
        .transpose()?;
    Ok(ListenerSpec {
        address: socket(&l.address, &what)?,
        original_dst,
        chains,
        default_chain,
    })
}

fn read_chain(c: &FilterChain, listener: &str) -> Result<ChainSpec, Refusal> {
    let what = format!("{listener} chain `{}`", c.name);
    let mut spec = ChainSpec {
        name: c.name.clone(),
        ..Default::default()
    };
    if let Some(m) = &c.filter_chain_match {
        if !m.source_prefix_ranges.is_empty()
            || !m.direct_source_prefix_ranges.is_empty()
            || !m.source_ports.is_empty()
            || m.source_type != 0
        {
            return Err(unsupported(&what, "filter_chain_match (source)"));
        }
        for r in &m.prefix_ranges {
            let ip: std::net::IpAddr = r.address_prefix.parse().map_err(|_| {
                format!(
                    "{what}: prefix_ranges: `{}` is not an IP address",
                    r.address_prefix
                )
            })?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let len = r.prefix_len.as_ref().map_or(max, |l| l.value);
            if len > max {
                return Err(format!(
                    "{what}: prefix_ranges: `{}/{len}`: length above {max}",
                    r.address_prefix
                ));
            }
            spec.destination_prefixes.push(format!("{ip}/{len}"));
        }
        spec.server_names = m.server_names.clone();
        spec.destination_port = m
            .destination_port
            .as_ref()
            .map(|p| u16::try_from(p.value).unwrap_or(0));
        spec.transport_protocol = Some(m.transport_protocol.clone()).filter(|t| !t.is_empty());
        spec.alpn = m.application_protocols.clone();
    }
    if let Some(ts) = &c.transport_socket {
        let any = typed_socket(ts, &what)?;
        let t: DownstreamTlsContext = decode(any, &what)?;
        let (cert, roots, sans) = tls_secrets(t.common_tls_context.as_ref(), &what)?;
        spec.tls = Some(DownstreamTls {
            cert_secret: cert.ok_or_else(|| format!("{what}: TLS without a certificate"))?,
            roots_secret: roots,
            require_client_cert: t
                .require_client_certificate
                .as_ref()
                .is_some_and(|b| b.value),
            allowed_sans: sans,
        });
    }
    let n = c.filters.len();
    for (i, f) in c.filters.iter().enumerate() {
        let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
            return Err(unsupported(
                &what,
                &format!("filter `{}` without a typed config", f.name),
            ));
        };
        let last = i + 1 == n;
        match any.type_url.rsplit('/').next().unwrap_or_default() {
            "envoy.extensions.filters.network.rbac.v3.RBAC" if !last => {
                let r: envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac =
                    decode(any, &what)?;
                spec.rbac = r.rules.as_ref().map(|r| rbac(r, &what)).transpose()?;
            }
            "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
                if last =>
            {
                let h: HttpConnectionManager = decode(any, &what)?;
                spec.app = http(&h, &what)?;
            }
            "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy" if last => {
                let t: TcpProxy = decode(any, &what)?;
                match t.cluster_specifier {
                    Some(tcp_proxy::ClusterSpecifier::Cluster(cluster)) => {
                        spec.app = App::Tcp { cluster };
                    }
                    _ => return Err(unsupported(&what, "tcp_proxy weighted_clusters")),
                }
            }
            other => {
                return Err(unsupported(
                    &what,
                    &format!("network filter `{}` ({other}) here", f.name),
                ));
            }
        }
    }
    if spec.app == App::None {
        return Err(format!("{what}: no http_connection_manager or tcp_proxy"));
    }
    Ok(spec)
}

fn http(h: &HttpConnectionManager, what: &str) -> Result<App, Refusal> {
    let routes = match &h.route_specifier {
        Some(http_connection_manager::RouteSpecifier::Rds(r)) => {
            Routes::Rds(r.route_config_name.clone())
        }
        Some(http_connection_manager::RouteSpecifier::RouteConfig(rc)) => {
            Routes::Inline(route_table(rc, what)?)
        }
        _ => return Err(unsupported(what, "route_specifier")),
    };
    let mut rbac_spec = None;
    let n = h.http_filters.len();
    for (i, f) in h.http_filters.iter().enumerate() {
        let Some(http_filter::ConfigType::TypedConfig(any)) = &f.config_type else {
            return Err(unsupported(
                what,
                &format!("HTTP filter `{}` without a typed config", f.name),
            ));
        };
        match (
            any.type_url.rsplit('/').next().unwrap_or_default(),
            i + 1 == n,
        ) {
            ("envoy.extensions.filters.http.router.v3.Router", true) => {}
            ("envoy.extensions.filters.http.rbac.v3.RBAC", false) => {
                let r: envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac =
                    decode(any, what)?;
                rbac_spec = r.rules.as_ref().map(|r| rbac(r, what)).transpose()?;
            }
            (other, _) => {
                return Err(unsupported(
                    what,
                    &format!("HTTP filter `{}` ({other}) here", f.name),
                ));
            }
        }
    }
    Ok(App::Http {
        routes,
        rbac: rbac_spec,
    })
}

fn route_table(rc: &RouteConfiguration, what: &str) -> Result<RouteTable, Refusal> {
    let mut table = RouteTable::default();
    for vh in &rc.virtual_hosts {
        let vwhat = format!("{what} virtual host `{}`", vh.name);
        let mut routes = Vec::new();
        for r in &vh.routes {
            let m = r
                .r#match
                .as_ref()
                .ok_or_else(|| format!("{vwhat}: a route without a match"))?;
            if !m.headers.is_empty() || !m.query_parameters.is_empty() {
                return Err(unsupported(
                    &vwhat,
                    "route match headers or query parameters",
                ));
            }
            let path = match &m.path_specifier {
                Some(route_match::PathSpecifier::Prefix(p)) => PathMatch::Prefix(p.clone()),
                Some(route_match::PathSpecifier::Path(p)) => PathMatch::Exact(p.clone()),
                Some(route_match::PathSpecifier::SafeRegex(re)) => {
                    PathMatch::Regex(re.regex.clone())
                }
                _ => return Err(unsupported(&vwhat, "path_specifier")),
            };
            let (action, timeout, retry) = match &r.action {
                Some(route::Action::Route(a)) => {
                    let action = match &a.cluster_specifier {
                        Some(route_action::ClusterSpecifier::Cluster(c)) => {
                            Action::Cluster(c.clone())
                        }
                        Some(route_action::ClusterSpecifier::WeightedClusters(w)) => {
                            Action::Weighted(
                                w.clusters
                                    .iter()
                                    .map(|c| {
                                        (c.name.clone(), c.weight.as_ref().map_or(0, |w| w.value))
                                    })
                                    .collect(),
                            )
                        }
                        _ => return Err(unsupported(&vwhat, "cluster_specifier")),
                    };
                    let retry = a
                        .retry_policy
                        .as_ref()
                        .map(|p| read_retry(p, &vwhat))
                        .transpose()?;
                    (action, duration(&a.timeout), retry)
                }
                Some(route::Action::DirectResponse(d)) => {
                    use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
                    let body = match d.body.as_ref().and_then(|b| b.specifier.as_ref()) {
                        Some(Specifier::InlineString(s)) => s.clone(),
                        Some(Specifier::InlineBytes(b)) => String::from_utf8_lossy(b).into_owned(),
                        None => String::new(),
                        Some(_) => {
                            return Err(unsupported(&vwhat, "direct_response body (not inline)"));
                        }
                    };
                    let status = u16::try_from(d.status)
                        .map_err(|_| format!("{vwhat}: status {}", d.status))?;
                    (Action::Direct { status, body }, None, None)
                }
                _ => return Err(unsupported(&vwhat, "route action")),
            };
            routes.push(RouteSpec {
                path,
                action,
                timeout,
                retry,
            });
        }
        table.virtual_hosts.push(VirtualHostSpec {
            name: vh.name.clone(),
            domains: vh.domains.clone(),
            routes,
        });
    }
    Ok(table)
}

fn rbac(
    rules: &envoy_types::pb::envoy::config::rbac::v3::Rbac,
    what: &str,
) -> Result<RbacSpec, Refusal> {
    let deny = match rules.action {
        0 => false,
        1 => true,
        _ => return Err(unsupported(what, "RBAC action (only ALLOW and DENY)")),
    };
    let mut policies = BTreeMap::new();
    for (name, p) in &rules.policies {
        if p.condition.is_some() || p.checked_condition.is_some() {
            return Err(unsupported(what, "RBAC condition"));
        }
        policies.insert(
            name.clone(),
            PolicySpec {
                permissions: p
                    .permissions
                    .iter()
                    .map(|x| perm(x, what))
                    .collect::<Result<_, _>>()?,
                principals: p
                    .principals
                    .iter()
                    .map(|x| who(x, what))
                    .collect::<Result<_, _>>()?,
            },
        );
    }
    Ok(RbacSpec { deny, policies })
}

fn perm(p: &Permission, what: &str) -> Result<Perm, Refusal> {
    use permission::Rule;
    Ok(match &p.rule {
        Some(Rule::Any(true)) => Perm::Any,
        Some(Rule::AndRules(s)) => Perm::And(
            s.rules
                .iter()
                .map(|x| perm(x, what))
                .collect::<Result<_, _>>()?,
        ),
        Some(Rule::OrRules(s)) => Perm::Or(
            s.rules
                .iter()
                .map(|x| perm(x, what))
                .collect::<Result<_, _>>()?,
        ),
        Some(Rule::NotRule(x)) => Perm::Not(Box::new(perm(x, what)?)),
        Some(Rule::Header(h)) => {
            if h.invert_match {
                return Err(unsupported(what, "RBAC header invert_match"));
            }
            let t = match &h.header_match_specifier {
                Some(header_matcher::HeaderMatchSpecifier::StringMatch(m)) => text(m, what)?,
                Some(header_matcher::HeaderMatchSpecifier::PresentMatch(true)) => Text::Present,
                _ => return Err(unsupported(what, "RBAC header matcher")),
            };
            Perm::Header(h.name.to_ascii_lowercase(), t)
        }
        Some(Rule::UrlPath(m)) => match &m.rule {
            Some(envoy_types::pb::envoy::r#type::matcher::v3::path_matcher::Rule::Path(s)) => {
                Perm::Path(text(s, what)?)
            }
            None => return Err(unsupported(what, "RBAC url_path")),
        },
        Some(Rule::DestinationPort(port)) => Perm::DestinationPort(
            u16::try_from(*port).map_err(|_| format!("{what}: port {port} is out of range"))?,
        ),
        _ => return Err(unsupported(what, "RBAC permission")),
    })
}

fn who(p: &Principal, what: &str) -> Result<Who, Refusal> {
    use principal::Identifier;
    Ok(match &p.identifier {
        Some(Identifier::Any(true)) => Who::Any,
        Some(Identifier::AndIds(s)) => Who::And(
            s.ids
                .iter()
                .map(|x| who(x, what))
                .collect::<Result<_, _>>()?,
        ),
        Some(Identifier::OrIds(s)) => Who::Or(
            s.ids
                .iter()
                .map(|x| who(x, what))
                .collect::<Result<_, _>>()?,
        ),
        Some(Identifier::NotId(x)) => Who::Not(Box::new(who(x, what)?)),
        Some(Identifier::Authenticated(a)) => match &a.principal_name {
            Some(m) => Who::Authenticated(text(m, what)?),
            None => Who::Authenticated(Text::Present),
        },
        _ => return Err(unsupported(what, "RBAC principal")),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use std::path::Path;

    use super::*;
    use crate::ca::{Ca, SpiffeId};
    use crate::load::parse_manifests;
    use crate::state::MeshState;
    use crate::xds::Resources;
    use crate::xds::compile::{sidecar_resources, sidecar_secrets, sidecar_shared};

    /// What the controller serves pod `ns/pod` of `state`, as the client holds it.
    fn served(state: &MeshState, ns: &str, pod: &str) -> Received {
        let ca = Ca::generate("cluster.local", Duration::from_secs(3600)).unwrap();
        let leaf = ca
            .issue(&SpiffeId::new("cluster.local", ns, "web").unwrap())
            .unwrap();
        let mut r = Resources::default();
        r.extend(sidecar_shared(state));
        r.extend(sidecar_resources(state, ns, pod).unwrap());
        r.extend(sidecar_secrets(&leaf, &ca.bundle_pem()));
        Received::from(&r)
    }

    const STRICT: &str = "apiVersion: config.flowgate.io/v1alpha1\nkind: MeshConfig\nmetadata: { name: mesh }\nspec: { traffic: { enablePermissiveTrafficPolicyMode: false } }\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: { name: client }\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: { name: web }\n---\napiVersion: v1\nkind: Service\nmetadata: { name: web }\nspec: { selector: { app: web }, ports: [{ name: http, port: 80, targetPort: 8080 }, { name: tcp-db, port: 5432 }] }\n---\napiVersion: v1\nkind: Pod\nmetadata: { name: web-1, labels: { app: web } }\nspec: { serviceAccountName: web }\nstatus: { podIP: 10.0.0.6 }\n---\napiVersion: specs.smi-spec.io/v1alpha4\nkind: HTTPRouteGroup\nmetadata: { name: g }\nspec: { matches: [{ name: m, pathRegex: '/books.*', methods: [GET], headers: { x-team: 'a.*' } }] }\n---\napiVersion: specs.smi-spec.io/v1alpha4\nkind: TCPRoute\nmetadata: { name: db }\nspec: { matches: { ports: [5432] } }\n---\napiVersion: access.smi-spec.io/v1alpha3\nkind: TrafficTarget\nmetadata: { name: t }\nspec:\n  destination: { kind: ServiceAccount, name: web }\n  rules: [{ kind: HTTPRouteGroup, name: g }, { kind: TCPRoute, name: db }]\n  sources: [{ kind: ServiceAccount, name: client }]\n";

    #[test]
    fn what_the_controller_serves_is_inside_the_subset() {
        let state =
            MeshState::build(parse_manifests(STRICT, Path::new("m.yaml")).unwrap()).unwrap();
        let config = read(&served(&state, "default", "web-1")).unwrap();
        let inbound = &config.listeners["inbound"];
        assert_eq!(inbound.address, "10.0.0.6:15006".parse().unwrap());
        let http = &inbound.chains[0];
        assert_eq!(
            http.server_names,
            ["outbound_.80_._.web.default.svc.cluster.local"]
        );
        let tls = http.tls.as_ref().unwrap();
        assert!(tls.require_client_cert && tls.allowed_sans.is_empty());
        let App::Http {
            rbac: Some(rbac),
            routes: Routes::Inline(_),
        } = &http.app
        else {
            panic!("{:?}", http.app)
        };
        let policy = &rbac.policies["default/t"];
        assert_eq!(
            policy.principals,
            [Who::Authenticated(Text::Exact(
                "spiffe://cluster.local/ns/default/sa/client".into()
            ))]
        );
        // The HTTP route group's match: method, path regex and header, all of them; the
        // TCP route does not apply to port 80.
        let Perm::And(parts) = &policy.permissions[0] else {
            panic!("{:?}", policy.permissions)
        };
        assert!(parts.contains(&Perm::Path(Text::Regex("/books.*".into()))));
        assert!(parts.contains(&Perm::Header("x-team".into(), Text::Regex("a.*".into()))));
        // TCP: the allowed identity pinned at the handshake, bytes to the workload.
        let tcp = &inbound.chains[1];
        assert_eq!(
            tcp.tls.as_ref().unwrap().allowed_sans,
            ["spiffe://cluster.local/ns/default/sa/client"]
        );
        assert_eq!(
            tcp.app,
            App::Tcp {
                cluster: "inbound|5432".into()
            }
        );
        assert_eq!(
            config.clusters["inbound|5432"].endpoints,
            [("10.0.0.6:5432".parse().unwrap(), 1)]
        );
        // Outbound: routes over RDS, mTLS clusters with their endpoints and SNI.
        let out = &config.listeners["outbound"];
        assert_eq!(
            out.chains[0].app,
            App::Http {
                routes: Routes::Rds("outbound".into()),
                rbac: None
            }
        );
        let web = &config.clusters["outbound|80||web.default|mtls"];
        assert_eq!(web.endpoints, [("10.0.0.6:15006".parse().unwrap(), 1)]);
        assert_eq!(
            web.tls.as_ref().unwrap().sni,
            "outbound_.80_._.web.default.svc.cluster.local"
        );
        assert!(matches!(
            config.secrets["default"],
            SecretSpec::Certificate { .. }
        ));
        assert!(matches!(config.secrets["ROOTCA"], SecretSpec::Roots(_)));
        let table = &config.routes["outbound"];
        assert_eq!(
            table.virtual_hosts[0].routes[0].action,
            Action::Cluster("outbound|80||web.default|mtls".into())
        );
        // And the whole demo, in permissive mode.
        let demo = crate::source::load_dir(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/mesh"),
        )
        .unwrap();
        read(&served(&demo, "bookstore", "bookstore-v1")).unwrap();
    }

    #[test]
    fn what_is_outside_the_subset_is_refused_by_name() {
        use envoy_types::pb::envoy::config::listener::v3::Filter;
        let mut r = Resources::default();
        r.put(
            "redis".into(),
            Listener {
                name: "redis".into(),
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(
                        envoy_types::pb::envoy::config::core::v3::SocketAddress {
                            address: "127.0.0.1".into(),
                            port_specifier: Some(socket_address::PortSpecifier::PortValue(6379)),
                            ..Default::default()
                        },
                    )),
                }),
                filter_chains: vec![FilterChain {
                    filters: vec![Filter {
                        name: "envoy.filters.network.redis_proxy".into(),
                        config_type: Some(filter::ConfigType::TypedConfig(Any {
                            type_url: "type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy".into(),
                            value: Vec::new(),
                        })),
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            },
        );
        let why = read(&Received::from(&r)).unwrap_err();
        assert!(
            why.contains("listener `redis`") && why.contains("envoy.filters.network.redis_proxy"),
            "{why}"
        );
        // A DNS cluster.
        let mut r = Resources::default();
        r.put(
            "dns".into(),
            Cluster {
                name: "dns".into(),
                cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                    cluster::DiscoveryType::StrictDns as i32,
                )),
                ..Default::default()
            },
        );
        let why = read(&Received::from(&r)).unwrap_err();
        assert!(
            why.contains("cluster `dns`") && why.contains("only STATIC and EDS"),
            "{why}"
        );
        // An RBAC principal by source IP.
        let rules = envoy_types::pb::envoy::config::rbac::v3::Rbac {
            policies: std::collections::HashMap::from([(
                "p".to_string(),
                envoy_types::pb::envoy::config::rbac::v3::Policy {
                    permissions: vec![Permission {
                        rule: Some(permission::Rule::Any(true)),
                    }],
                    principals: vec![Principal {
                        identifier: Some(principal::Identifier::RemoteIp(Default::default())),
                    }],
                    ..Default::default()
                },
            )]),
            ..Default::default()
        };
        let why = rbac(&rules, "listener `x`").unwrap_err();
        assert!(why.contains("RBAC principal"), "{why}");
        // Retry policies: what the filters cannot do is named.
        use envoy_types::pb::envoy::config::route::v3::RetryPolicy;
        let why = read_retry(
            &RetryPolicy {
                retry_on: "5xx,retriable-4xx".into(),
                ..Default::default()
            },
            "route `r`",
        )
        .unwrap_err();
        assert!(why.contains("`retriable-4xx`"), "{why}");
        let why = read_retry(
            &RetryPolicy {
                retry_on: "5xx".into(),
                host_selection_retry_max_attempts: 3,
                retriable_request_headers: vec![Default::default()],
                ..Default::default()
            },
            "route `r`",
        )
        .unwrap_err();
        assert!(
            why.contains("retry_policy.retriable_request_headers"),
            "{why}"
        );
        let ok = read_retry(
            &RetryPolicy {
                retry_on: "gateway-error, retriable-status-codes".into(),
                retriable_status_codes: vec![429],
                ..Default::default()
            },
            "route `r`",
        )
        .unwrap();
        assert_eq!(ok.retry_on, ["gateway-error", "retriable-status-codes"]);
        assert_eq!((ok.num_retries, ok.status_codes), (1, vec![429]));
    }
}
