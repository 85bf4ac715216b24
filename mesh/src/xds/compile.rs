//! Mesh state → xDS resources.
//!
//! This first compiler makes what a proxyless gRPC client (`xds:///<service>.<namespace>`)
//! needs, as standard Envoy resources: per service port,
//! - a **Listener** named like the target (`bookstore.bookstore` for a one-port service,
//!   and `bookstore.bookstore:14001` for every port), an API listener whose
//!   `HttpConnectionManager` carries its route configuration inline and ends with the
//!   router filter;
//! - a **Cluster** `outbound|<port>||<service>.<namespace>` of type EDS (over ADS), round
//!   robin;
//! - a **ClusterLoadAssignment** with the service's endpoints: the IPs of the pods it
//!   selects (at the target port), and those of its `EndpointSlice`s, in one weighted
//!   locality.
//!
//! A `TrafficSplit` on a service makes its route a weighted split over the backend
//! services' clusters (zero weights left out). Sidecar listeners (inbound mTLS with SMI
//! RBAC, outbound capture) are not compiled yet.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, Locality, SocketAddress, address,
    config_source, socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, WeightedCluster, route,
    route_action, route_match, weighted_cluster,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, http_connection_manager, http_filter,
};
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration, UInt32Value};
use envoy_types::util::pack_any;
use prost::Name;

use crate::ca::{Ca, CaError, Issued, SpiffeId};
use crate::model::{IntOrString, Service, ServicePort};
use crate::state::MeshState;

/// The type URL of each resource kind.
pub mod type_url {
    /// `Listener`.
    pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    /// `RouteConfiguration`.
    pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
    /// `Cluster`.
    pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    /// `ClusterLoadAssignment`.
    pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
    /// `Secret`.
    pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
}

/// Resources of every type, by type URL and name, each packed as `Any` with its version
/// (a hash of its bytes, made once here for every proxy that is sent it).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resources {
    /// `type URL → name → resource`.
    pub by_type: BTreeMap<String, BTreeMap<String, Any>>,
    /// `type URL → name → version`.
    pub versions: BTreeMap<String, BTreeMap<String, String>>,
}

/// The version of one resource: a hash of its type and bytes.
fn resource_version(any: &Any) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    any.type_url.hash(&mut h);
    any.value.hash(&mut h);
    format!("{:016x}", h.finish())
}

impl Resources {
    /// Adds (or replaces) resource `name`, packed as its type, versioned by its bytes.
    pub fn put<T: prost::Message + Name>(&mut self, name: String, value: T) {
        let any = pack_any(value);
        self.versions
            .entry(any.type_url.clone())
            .or_default()
            .insert(name.clone(), resource_version(&any));
        self.by_type
            .entry(any.type_url.clone())
            .or_default()
            .insert(name, any);
    }

    /// Adds every resource of `other` (replacing those of the same type and name).
    pub fn extend(&mut self, other: Resources) {
        for (t, by_name) in other.by_type {
            self.by_type.entry(t).or_default().extend(by_name);
        }
        for (t, by_name) in other.versions {
            self.versions.entry(t).or_default().extend(by_name);
        }
    }

    /// The resources of `type_url`.
    pub fn of(&self, type_url: &str) -> Option<&BTreeMap<String, Any>> {
        self.by_type.get(type_url)
    }

    /// The versions of the resources of `type_url`, by name.
    pub fn versions_of(&self, type_url: &str) -> Option<&BTreeMap<String, String>> {
        self.versions.get(type_url)
    }
}

/// The cluster name of service `ns/name` at `port` (Istio's shape).
pub fn cluster_name(ns: &str, name: &str, port: u16) -> String {
    format!("outbound|{port}||{name}.{ns}")
}

fn ads() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        resource_api_version: ApiVersion::V3 as i32,
        ..Default::default()
    }
}

fn socket(ip: &str, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

/// The port the pods serve `port` on: a numeric target port, or the port itself (named
/// target ports need the pods' container ports, which the mesh does not read).
fn target_port(port: &ServicePort) -> u16 {
    match &port.target_port {
        Some(IntOrString::Int(p)) => *p,
        _ => port.port,
    }
}

/// The endpoints (`ip`, `port`) of `svc` at service port `port`: its selected pods with an
/// IP, then its endpoint slices' ready addresses; sorted, without duplicates.
fn endpoints(state: &MeshState, svc: &Service, port: &ServicePort) -> Vec<(String, u16)> {
    let mut eps: Vec<(String, u16)> = state
        .pods_of(svc)
        .filter_map(|p| p.value.status.pod_ip.clone())
        .map(|ip| (ip, target_port(port)))
        .collect();
    let (ns, name) = (svc.metadata.ns(), svc.metadata.name.as_str());
    for slice in state.endpoint_slices.values() {
        let s = &slice.value;
        if s.metadata.ns() != ns || s.service() != Some(name) {
            continue;
        }
        let slice_port = s
            .ports
            .iter()
            .find(|p| p.name.is_some() && p.name == port.name)
            .or(s.ports.first())
            .map_or(target_port(port), |p| p.port);
        for e in &s.endpoints {
            if e.conditions.ready == Some(false) {
                continue;
            }
            eps.extend(e.addresses.iter().map(|a| (a.clone(), slice_port)));
        }
    }
    eps.sort();
    eps.dedup();
    eps
}

/// The route of a target: to the service's cluster, or weighted over a split's backends.
fn route_action(
    state: &MeshState,
    svc: &Service,
    port: u16,
    cluster: fn(&str, &str, u16) -> String,
) -> RouteAction {
    let ns = svc.metadata.ns();
    let split = state.traffic_splits.values().find(|s| {
        s.value.metadata.ns() == ns
            && s.value.spec.service == svc.metadata.name
            && s.value.spec.matches.is_empty()
    });
    let specifier = match split {
        Some(s) => route_action::ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: s
                .value
                .spec
                .backends
                .iter()
                .filter(|b| b.weight > 0)
                .map(|b| weighted_cluster::ClusterWeight {
                    name: cluster(ns, &b.service, port),
                    weight: Some(UInt32Value { value: b.weight }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
        None => route_action::ClusterSpecifier::Cluster(cluster(ns, &svc.metadata.name, port)),
    };
    RouteAction {
        cluster_specifier: Some(specifier),
        ..Default::default()
    }
}

/// The API listener for `target`, routing everything as `action` says.
fn api_listener(target: &str, action: RouteAction) -> Listener {
    let routes = RouteConfiguration {
        name: target.to_string(),
        virtual_hosts: vec![VirtualHost {
            name: target.to_string(),
            domains: vec!["*".into()],
            routes: vec![route_to(action)],
            ..Default::default()
        }],
        ..Default::default()
    };
    Listener {
        name: target.to_string(),
        api_listener: Some(ApiListener {
            api_listener: Some(pack_any(hcm(
                target,
                Routes::Inline(Box::new(routes)),
                None,
            ))),
        }),
        ..Default::default()
    }
}

/// An EDS cluster (endpoints over ADS), round robin, with `transport` (TLS) if given.
fn eds_cluster(
    name: &str,
    transport: Option<envoy_types::pb::envoy::config::core::v3::TransportSocket>,
) -> Cluster {
    Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: String::new(),
        }),
        lb_policy: cluster::LbPolicy::RoundRobin as i32,
        connect_timeout: Some(PbDuration {
            seconds: 5,
            nanos: 0,
        }),
        transport_socket: transport,
        ..Default::default()
    }
}

fn lb_endpoint(ip: &str, port: u16) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
            address: Some(socket(ip, port)),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// The endpoints of cluster `name` in one locality of weight 1 (proxyless gRPC skips a
/// locality without a weight).
fn assignment(name: &str, lb_endpoints: Vec<LbEndpoint>) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: name.to_string(),
        endpoints: vec![LocalityLbEndpoints {
            locality: Some(Locality::default()),
            lb_endpoints,
            load_balancing_weight: Some(UInt32Value { value: 1 }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// What proxyless gRPC clients of this mesh may ask for: a listener per service target,
/// a cluster and an endpoint assignment per service port.
pub fn grpc_resources(state: &MeshState) -> Resources {
    let mut out = Resources::default();
    for s in state.services.values() {
        let svc = &s.value;
        let (ns, name) = (svc.metadata.ns(), svc.metadata.name.as_str());
        let single = svc.spec.ports.len() == 1;
        for port in &svc.spec.ports {
            let cluster = cluster_name(ns, name, port.port);
            let action = route_action(state, svc, port.port, cluster_name);
            let with_port = format!("{name}.{ns}:{}", port.port);
            out.put(with_port.clone(), api_listener(&with_port, action.clone()));
            if single {
                let bare = format!("{name}.{ns}");
                out.put(bare.clone(), api_listener(&bare, action));
            }
            out.put(cluster.clone(), eds_cluster(&cluster, None));
            let eps = endpoints(state, svc, port)
                .iter()
                .map(|(ip, p)| lb_endpoint(ip, *p))
                .collect();
            out.put(cluster.clone(), assignment(&cluster, eps));
        }
    }
    out
}

/// The SDS secret name of a proxy's own certificate and key (Istio's convention).
pub const CERT_SECRET: &str = "default";
/// The SDS secret name of the trust bundle (Istio's convention).
pub const ROOT_SECRET: &str = "ROOTCA";

fn inline(bytes: &str) -> Option<envoy_types::pb::envoy::config::core::v3::DataSource> {
    use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
    Some(DataSource {
        specifier: Some(data_source::Specifier::InlineBytes(
            bytes.as_bytes().to_vec(),
        )),
        ..Default::default()
    })
}

/// A sidecar's two SDS secrets: [`CERT_SECRET`] (its certificate and key for `leaf`'s
/// identity) and [`ROOT_SECRET`] (`bundle_pem`, every root to trust). For Envoy sidecars
/// the CA made the key (the weaker mode: the key travels over the xDS stream).
pub fn sidecar_secrets(leaf: &Issued, bundle_pem: &str) -> Resources {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        CertificateValidationContext, Secret, TlsCertificate, secret,
    };
    let mut out = Resources::default();
    out.put(
        CERT_SECRET.into(),
        Secret {
            name: CERT_SECRET.into(),
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: inline(&leaf.cert_pem),
                private_key: inline(leaf.key_pem.as_deref().unwrap_or_default()),
                ..Default::default()
            })),
        },
    );
    out.put(
        ROOT_SECRET.into(),
        Secret {
            name: ROOT_SECRET.into(),
            r#type: Some(secret::Type::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: inline(bundle_pem),
                    ..Default::default()
                },
            )),
        },
    );
    out
}

/// The port a sidecar takes inbound (mTLS) connections on, at its pod's IP.
pub const INBOUND_PORT: u16 = 15006;
/// The port a sidecar takes its workload's outbound HTTP on, at its pod's IP (explicit
/// proxy mode: the workload sends `Host: <service>.<namespace>`).
pub const OUTBOUND_PORT: u16 = 15001;

/// The cluster name of service `ns/name` at `port` as a sidecar reaches it (over mTLS to
/// the destination sidecars' inbound port).
pub fn sidecar_cluster_name(ns: &str, name: &str, port: u16) -> String {
    format!("outbound|{port}||{name}.{ns}|mtls")
}

fn sds_ads(
    name: &str,
) -> envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::SdsSecretConfig {
    envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::SdsSecretConfig {
        name: name.into(),
        sds_config: Some(ads()),
    }
}

/// The TLS context of every mesh connection: the proxy's own certificate and the bundle,
/// both over SDS.
fn mesh_tls() -> envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::CommonTlsContext {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        CommonTlsContext, common_tls_context,
    };
    CommonTlsContext {
        tls_certificate_sds_secret_configs: vec![sds_ads(CERT_SECRET)],
        validation_context_type: Some(
            common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(sds_ads(
                ROOT_SECRET,
            )),
        ),
        ..Default::default()
    }
}

fn tls_socket(typed: Any) -> envoy_types::pb::envoy::config::core::v3::TransportSocket {
    use envoy_types::pb::envoy::config::core::v3::{TransportSocket, transport_socket};
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(typed)),
    }
}

/// How an HTTP connection manager gets its routes: inline, or by name over ADS (RDS).
enum Routes {
    Inline(Box<RouteConfiguration>),
    Rds(&'static str),
}

/// An HTTP connection manager with `routes`: `before_router` (RBAC), then the router.
fn hcm(
    stat_prefix: &str,
    routes: Routes,
    before_router: Option<HttpFilter>,
) -> HttpConnectionManager {
    let mut http_filters: Vec<HttpFilter> = before_router.into_iter().collect();
    http_filters.push(HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
            Router::default(),
        ))),
        ..Default::default()
    });
    HttpConnectionManager {
        stat_prefix: stat_prefix.into(),
        route_specifier: Some(match routes {
            Routes::Inline(r) => http_connection_manager::RouteSpecifier::RouteConfig(*r),
            Routes::Rds(name) => http_connection_manager::RouteSpecifier::Rds(
                envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::Rds {
                    config_source: Some(ads()),
                    route_config_name: name.into(),
                },
            ),
        }),
        http_filters,
        ..Default::default()
    }
}

/// [`hcm`] as a listener's network filter.
fn hcm_filter(
    stat_prefix: &str,
    routes: Routes,
    before_router: Option<HttpFilter>,
) -> envoy_types::pb::envoy::config::listener::v3::Filter {
    use envoy_types::pb::envoy::config::listener::v3::{Filter, filter};
    Filter {
        name: "envoy.filters.network.http_connection_manager".into(),
        config_type: Some(filter::ConfigType::TypedConfig(pack_any(hcm(
            stat_prefix,
            routes,
            before_router,
        )))),
    }
}

fn route_to(action: RouteAction) -> Route {
    Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
            ..Default::default()
        }),
        action: Some(route::Action::Route(action)),
        ..Default::default()
    }
}

fn cluster_action(name: String) -> RouteAction {
    RouteAction {
        cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(name)),
        ..Default::default()
    }
}

fn string_exact(v: &str) -> envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher {
    use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
    StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::Exact(v.into())),
        ..Default::default()
    }
}

fn string_regex(re: &str) -> envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher {
    use envoy_types::pb::envoy::r#type::matcher::v3::{
        RegexMatcher, StringMatcher, string_matcher,
    };
    StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::SafeRegex(RegexMatcher {
            regex: re.into(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// The permission of one SMI HTTP match: every part given must hold (methods: any of them,
/// `*` for any; the path regex against the whole path without the query; each header's
/// value regex).
fn match_permission(
    m: &crate::model::HttpMatch,
) -> envoy_types::pb::envoy::config::rbac::v3::Permission {
    use envoy_types::pb::envoy::config::rbac::v3::{Permission, permission};
    use envoy_types::pb::envoy::config::route::v3::{HeaderMatcher, header_matcher};
    use envoy_types::pb::envoy::r#type::matcher::v3::{PathMatcher, path_matcher};
    let header = |name: &str, value: envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher| {
        Permission {
            rule: Some(permission::Rule::Header(HeaderMatcher {
                name: name.into(),
                header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(
                    value,
                )),
                ..Default::default()
            })),
        }
    };
    let mut all = Vec::new();
    let methods: Vec<&String> = m.methods.iter().filter(|x| *x != "*").collect();
    if !methods.is_empty() && methods.len() == m.methods.len() {
        all.push(Permission {
            rule: Some(permission::Rule::OrRules(permission::Set {
                rules: methods
                    .iter()
                    .map(|x| header(":method", string_exact(x)))
                    .collect(),
            })),
        });
    }
    if let Some(re) = &m.path_regex {
        all.push(Permission {
            rule: Some(permission::Rule::UrlPath(PathMatcher {
                rule: Some(path_matcher::Rule::Path(string_regex(re))),
            })),
        });
    }
    for (name, re) in &m.headers {
        all.push(header(&name.to_ascii_lowercase(), string_regex(re)));
    }
    if all.is_empty() {
        return Permission {
            rule: Some(permission::Rule::Any(true)),
        };
    }
    Permission {
        rule: Some(permission::Rule::AndRules(permission::Set { rules: all })),
    }
}

/// The RBAC policies of a pod's inbound port in strict mode: one ALLOW policy per SMI
/// `TrafficTarget` whose destination is the pod's service account — its sources' SPIFFE
/// IDs as authenticated principals, its rules as permissions: an `HTTPRouteGroup`'s matches
/// (only on an HTTP port, `http`), a `TCPRoute` whose ports include one of `ports` (the
/// service and target ports of this inbound port; any when it lists none) as any traffic,
/// any traffic when it names no rule. A TrafficTarget that allows nothing here is left out;
/// with no policy, nothing is allowed.
fn inbound_policies(
    state: &MeshState,
    ns: &str,
    sa: &str,
    ports: &[u16],
    http: bool,
) -> BTreeMap<String, envoy_types::pb::envoy::config::rbac::v3::Policy> {
    use envoy_types::pb::envoy::config::rbac::v3::{Permission, permission};
    use envoy_types::pb::envoy::config::rbac::v3::{Policy, Principal, principal};
    let td = &state.mesh_config.certificate.trust_domain;
    let mut policies = BTreeMap::new();
    for t in state.traffic_targets.values() {
        let tt = &t.value;
        let tns = tt.metadata.ns();
        let d = &tt.spec.destination;
        if d.name != sa || d.namespace.as_deref().unwrap_or(tns) != ns {
            continue;
        }
        let principals = tt
            .spec
            .sources
            .iter()
            .map(|s| Principal {
                identifier: Some(principal::Identifier::Authenticated(
                    principal::Authenticated {
                        principal_name: Some(string_exact(&format!(
                            "spiffe://{td}/ns/{}/sa/{}",
                            s.namespace.as_deref().unwrap_or(tns),
                            s.name
                        ))),
                    },
                )),
            })
            .collect();
        let mut permissions = Vec::new();
        let mut any = tt.spec.rules.is_empty();
        for r in &tt.spec.rules {
            let key = (tns.to_string(), r.name.clone());
            match r.kind.as_str() {
                "HTTPRouteGroup" if http => {
                    let Some(g) = state.http_route_groups.get(&key) else {
                        continue;
                    };
                    for m in &g.value.spec.matches {
                        if r.matches.is_empty() || r.matches.contains(&m.name) {
                            permissions.push(match_permission(m));
                        }
                    }
                }
                "TCPRoute" => {
                    let Some(route) = state.tcp_routes.get(&key) else {
                        continue;
                    };
                    let want = &route.value.spec.matches.ports;
                    // The connection is allowed; on an HTTP port that is any request.
                    any |= want.is_empty() || want.iter().any(|p| ports.contains(p));
                }
                _ => {}
            }
        }
        if any {
            permissions = vec![Permission {
                rule: Some(permission::Rule::Any(true)),
            }];
        }
        if permissions.is_empty() {
            continue;
        }
        policies.insert(
            format!("{tns}/{}", tt.metadata.name),
            Policy {
                permissions,
                principals,
                ..Default::default()
            },
        );
    }
    policies
}

/// `message` packed with its RBAC `policies` in name order, so equal policies give equal
/// bytes and so equal resource versions (prost writes a protobuf map in the order of a
/// `HashMap`, which differs between processes and between maps). The bytes are `message`
/// with empty rules, then one copy per policy carrying only it: concatenated protobuf
/// messages merge, and a map's entries accumulate.
fn packed_with_policies<M: prost::Name>(
    message: impl Fn(envoy_types::pb::envoy::config::rbac::v3::Rbac) -> M,
    policies: BTreeMap<String, envoy_types::pb::envoy::config::rbac::v3::Policy>,
) -> Any {
    use envoy_types::pb::envoy::config::rbac::v3::Rbac as Rules;
    let rules = |policies| Rules {
        action: 0, // ALLOW
        policies,
        ..Default::default()
    };
    let mut any = pack_any(message(rules(Default::default())));
    for (name, policy) in policies {
        let one = std::collections::HashMap::from([(name, policy)]);
        any.value
            .extend(prost::Message::encode_to_vec(&message(rules(one))));
    }
    any
}

/// The HTTP RBAC filter of a pod's inbound HTTP port in strict mode (see
/// [`inbound_policies`]): what no policy allows gets 403.
fn inbound_rbac(state: &MeshState, ns: &str, sa: &str, ports: &[u16]) -> HttpFilter {
    use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac;
    let policies = inbound_policies(state, ns, sa, ports, true);
    HttpFilter {
        name: "envoy.filters.http.rbac".into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(packed_with_policies(
            |rules| Rbac {
                rules: Some(rules),
                ..Default::default()
            },
            policies,
        ))),
        ..Default::default()
    }
}

/// The network RBAC filter of a pod's inbound TCP port in strict mode (see
/// [`inbound_policies`]): a connection no policy allows is closed.
fn inbound_network_rbac(
    state: &MeshState,
    ns: &str,
    sa: &str,
    ports: &[u16],
    stat_prefix: &str,
) -> envoy_types::pb::envoy::config::listener::v3::Filter {
    use envoy_types::pb::envoy::config::listener::v3::{Filter, filter};
    use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac;
    let policies = inbound_policies(state, ns, sa, ports, false);
    Filter {
        name: "envoy.filters.network.rbac".into(),
        config_type: Some(filter::ConfigType::TypedConfig(packed_with_policies(
            |rules| Rbac {
                rules: Some(rules),
                stat_prefix: stat_prefix.into(),
                ..Default::default()
            },
            policies,
        ))),
    }
}

/// A `tcp_proxy` network filter to `cluster`. With `after_handshake`, the upstream
/// connection waits for the downstream TLS handshake to finish, so a caller refused there
/// never reaches the workload.
fn tcp_proxy_filter(
    stat_prefix: &str,
    cluster: &str,
    after_handshake: bool,
) -> envoy_types::pb::envoy::config::listener::v3::Filter {
    use envoy_types::pb::envoy::config::listener::v3::{Filter, filter};
    use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
        TcpProxy, UpstreamConnectMode, tcp_proxy,
    };
    let mut proxy = TcpProxy {
        stat_prefix: stat_prefix.into(),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.into())),
        ..Default::default()
    };
    if after_handshake {
        proxy.upstream_connect_mode = UpstreamConnectMode::OnDownstreamTlsHandshake as i32;
        proxy.max_early_data_bytes = Some(UInt32Value { value: 0 });
    }
    Filter {
        name: "envoy.filters.network.tcp_proxy".into(),
        config_type: Some(filter::ConfigType::TypedConfig(pack_any(proxy))),
    }
}

/// The SPIFFE IDs the `policies` admit (their authenticated principals).
fn principals_of(
    policies: &BTreeMap<String, envoy_types::pb::envoy::config::rbac::v3::Policy>,
) -> Vec<String> {
    use envoy_types::pb::envoy::config::rbac::v3::principal;
    use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
    let mut ids: Vec<String> = policies
        .values()
        .flat_map(|p| &p.principals)
        .filter_map(|p| match &p.identifier {
            Some(principal::Identifier::Authenticated(a)) => {
                match a.principal_name.as_ref()?.match_pattern.as_ref()? {
                    MatchPattern::Exact(id) => Some(id.clone()),
                    _ => None,
                }
            }
            _ => None,
        })
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// The mesh TLS context, with the peer's certificate required to name one of `ids` (URI
/// SAN). With none, a name no mesh certificate carries: nobody passes.
fn mesh_tls_for(
    ids: &[String],
    td: &str,
) -> envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::CommonTlsContext {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        CertificateValidationContext, SubjectAltNameMatcher, common_tls_context,
        subject_alt_name_matcher,
    };
    let nobody = [format!("spiffe://{td}/nobody")];
    let ids = if ids.is_empty() { &nobody[..] } else { ids };
    let mut tls = mesh_tls();
    tls.validation_context_type = Some(
        common_tls_context::ValidationContextType::CombinedValidationContext(
            common_tls_context::CombinedCertificateValidationContext {
                default_validation_context: Some(CertificateValidationContext {
                    match_typed_subject_alt_names: ids
                        .iter()
                        .map(|id| SubjectAltNameMatcher {
                            san_type: subject_alt_name_matcher::SanType::Uri as i32,
                            matcher: Some(string_exact(id)),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }),
                validation_context_sds_secret_config: Some(sds_ads(ROOT_SECRET)),
                ..Default::default()
            },
        ),
    );
    tls
}

/// Whether a service port carries opaque bytes rather than HTTP: `appProtocol: tcp`, or
/// (without an `appProtocol`) a name that is `tcp` or starts with `tcp-`. Anything else is
/// HTTP, as in OSM.
pub fn is_tcp(port: &ServicePort) -> bool {
    match &port.app_protocol {
        Some(p) => p.eq_ignore_ascii_case("tcp"),
        None => port
            .name
            .as_deref()
            .is_some_and(|n| n == "tcp" || n.starts_with("tcp-")),
    }
}

/// The TLS server name a caller's sidecar sends to reach service `ns/name` at `port`: it
/// picks the filter chain (the workload's port, HTTP or TCP) at the destination's inbound
/// listener. Istio's form, so the names read the same.
pub fn inbound_sni(ns: &str, name: &str, port: u16) -> String {
    format!("outbound_.{port}_._.{name}.{ns}.svc.cluster.local")
}

/// What the sidecar of pod `ns/pod` is served of its own (besides its secrets, and over
/// what every sidecar shares: [`sidecar_shared`]), in explicit proxy mode:
/// - an **inbound** listener at `<pod IP>:15006` that requires a mesh client certificate
///   (mTLS, SDS), with a filter chain per workload port that a service port selecting the
///   pod targets (cluster `inbound|<port>` at `<pod IP>:<target port>`), chosen by the TLS
///   server name the caller's sidecar sends ([`inbound_sni`]; without one, the first HTTP
///   port): HTTP requests through an HTTP connection manager, or bytes through `tcp_proxy`
///   for a TCP port ([`is_tcp`]);
/// - an **outbound** listener at `<pod IP>:15001` taking plain HTTP from its workload,
///   routed by `Host` (`<svc>.<ns>` and `<svc>.<ns>.svc.cluster.local`, and the service's
///   cluster IP, each with `:<port>`, and without it for the first port) by the shared
///   `outbound` route configuration (RDS)
///   to the service's mTLS cluster `outbound|<port>||<svc>.<ns>|mtls` — a TrafficSplit
///   as weighted clusters;
/// - an **outbound TCP** listener per TCP service port of the mesh at
///   `<pod IP>:<service port>` (`outbound-tcp|<port>||<svc>.<ns>`), passing bytes to the
///   service's mTLS cluster (the first service takes a port two share).
///
/// A pod annotated `flowgate.io/capture: redirect` ([`crate::model::CAPTURE_ANNOTATION`])
/// has its traffic captured by iptables instead (`flowgate-sidecar init`): its inbound
/// listener is at `0.0.0.0:15006`, and one outbound listener at `0.0.0.0:15001` reads
/// the original destination and matches it per service port (see `captured_outbound`);
/// there are no per-port TCP listeners.
///
/// In permissive mode every meshed call is allowed (still over mTLS); in strict mode
/// (`enablePermissiveTrafficPolicyMode: false`) SMI TrafficTargets decide: an HTTP port's
/// RBAC filter answers 403 to what they do not allow (see `inbound_rbac`); a TCP port's
/// TLS handshake admits only the identities a `TCPRoute` for the port lets in, and the
/// workload is dialled after it. `None` for a pod without an IP.
pub fn sidecar_resources(state: &MeshState, ns: &str, pod: &str) -> Option<Resources> {
    use envoy_types::pb::envoy::config::listener::v3::{FilterChain, FilterChainMatch};
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext;
    let p = state.pods.get(&(ns.to_string(), pod.to_string()))?;
    let ip = p.value.status.pod_ip.clone()?;
    let mut out = Resources::default();
    // Inbound: a filter chain per workload port that a service port selecting this pod
    // targets, picked by the SNI the caller's sidecar sends (`inbound_sni`).
    struct Chain {
        target: u16,
        tcp: bool,
        names: Vec<String>,
        ports: Vec<u16>,
    }
    let mut chains: Vec<Chain> = Vec::new();
    for s in state.services.values() {
        if !s.value.selects(&p.value) {
            continue;
        }
        let (sns, sname) = (s.value.metadata.ns(), s.value.metadata.name.as_str());
        for port in &s.value.spec.ports {
            let target = target_port(port);
            let i = match chains.iter().position(|c| c.target == target) {
                Some(i) => i,
                None => {
                    chains.push(Chain {
                        target,
                        tcp: is_tcp(port),
                        names: Vec::new(),
                        ports: vec![target],
                    });
                    chains.len() - 1
                }
            };
            let c = &mut chains[i];
            c.names.push(inbound_sni(sns, sname, port.port));
            c.ports.push(port.port);
        }
    }
    if !chains.is_empty() {
        // Strict mode: SMI TrafficTargets decide who may call, on which routes and ports.
        let strict = !state
            .mesh_config
            .traffic
            .enable_permissive_traffic_policy_mode;
        let sa = p.value.service_account();
        let tls = DownstreamTlsContext {
            common_tls_context: Some(mesh_tls()),
            require_client_certificate: Some(envoy_types::pb::google::protobuf::BoolValue {
                value: true,
            }),
            ..Default::default()
        };
        let mut filter_chains = Vec::new();
        for c in &chains {
            let cluster = format!("inbound|{}", c.target);
            out.put(
                cluster.clone(),
                Cluster {
                    name: cluster.clone(),
                    cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                        cluster::DiscoveryType::Static as i32,
                    )),
                    connect_timeout: Some(PbDuration {
                        seconds: 5,
                        nanos: 0,
                    }),
                    load_assignment: Some(assignment(&cluster, vec![lb_endpoint(&ip, c.target)])),
                    ..Default::default()
                },
            );
            let mut chain_tls = tls.clone();
            let filters = if c.tcp {
                let mut f = Vec::new();
                if strict {
                    // Envoy's network RBAC decides on the first byte from the caller,
                    // which a server-first protocol never waits for: the TLS handshake
                    // admits only the allowed identities, and the workload is dialled
                    // after it (the RBAC filter stays, for its stats and as a second
                    // check).
                    let policies = inbound_policies(state, ns, sa, &c.ports, false);
                    let td = &state.mesh_config.certificate.trust_domain;
                    chain_tls.common_tls_context =
                        Some(mesh_tls_for(&principals_of(&policies), td));
                    f.push(inbound_network_rbac(state, ns, sa, &c.ports, &cluster));
                }
                f.push(tcp_proxy_filter(&cluster, &cluster, true));
                f
            } else {
                let routes = RouteConfiguration {
                    name: "inbound".into(),
                    virtual_hosts: vec![VirtualHost {
                        name: "inbound".into(),
                        domains: vec!["*".into()],
                        routes: vec![route_to(cluster_action(cluster.clone()))],
                        ..Default::default()
                    }],
                    ..Default::default()
                };
                let rbac = strict.then(|| inbound_rbac(state, ns, sa, &c.ports));
                vec![hcm_filter(
                    "inbound",
                    Routes::Inline(Box::new(routes)),
                    rbac,
                )]
            };
            filter_chains.push(FilterChain {
                name: cluster,
                filter_chain_match: Some(FilterChainMatch {
                    server_names: c.names.clone(),
                    ..Default::default()
                }),
                filters,
                transport_socket: Some(tls_socket(pack_any(chain_tls))),
                ..Default::default()
            });
        }
        // A caller that sends no (or another) name gets the first HTTP port (else the
        // first port).
        let first = chains.iter().position(|c| !c.tcp).unwrap_or(0);
        let default_filter_chain = filter_chains.get(first).map(|c| FilterChain {
            name: "default".into(),
            filter_chain_match: None,
            ..c.clone()
        });
        out.put(
            "inbound".into(),
            Listener {
                name: "inbound".into(),
                // Captured: any address (what iptables redirects arrives at the pod's).
                address: Some(socket(
                    if p.value.captured() { "0.0.0.0" } else { &ip },
                    INBOUND_PORT,
                )),
                listener_filters: vec![tls_inspector()],
                filter_chains,
                default_filter_chain,
                ..Default::default()
            },
        );
    }
    if p.value.captured() {
        if let Some(l) = captured_outbound(state) {
            out.put("outbound".into(), l);
        }
        return Some(out);
    }
    // Outbound: every service of the mesh by host name, from the shared route
    // configuration (see `sidecar_shared`).
    out.put(
        "outbound".into(),
        Listener {
            name: "outbound".into(),
            address: Some(socket(&ip, OUTBOUND_PORT)),
            filter_chains: vec![FilterChain {
                filters: vec![hcm_filter("outbound", Routes::Rds(OUTBOUND_ROUTES), None)],
                ..Default::default()
            }],
            ..Default::default()
        },
    );
    // Outbound TCP (explicit proxy mode): each TCP service port of the mesh at the
    // sidecar's `<pod IP>:<port>`, bytes passed to the service's mTLS cluster — the first
    // service takes a port two share, and the sidecar's own ports are skipped. A service
    // this sidecar may not call has no cluster in its set: the connection is closed.
    let mut taken = vec![INBOUND_PORT, OUTBOUND_PORT];
    for s in state.services.values() {
        let (sns, sname) = (s.value.metadata.ns(), s.value.metadata.name.as_str());
        for port in s.value.spec.ports.iter().filter(|p| is_tcp(p)) {
            if taken.contains(&port.port) {
                continue;
            }
            taken.push(port.port);
            let name = format!("outbound-tcp|{}||{sname}.{sns}", port.port);
            let cluster = sidecar_cluster_name(sns, sname, port.port);
            out.put(
                name.clone(),
                Listener {
                    name: name.clone(),
                    address: Some(socket(&ip, port.port)),
                    filter_chains: vec![FilterChain {
                        filters: vec![tcp_proxy_filter(&name, &cluster, false)],
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            );
        }
    }
    Some(out)
}

/// The outbound listener of a pod whose traffic is captured
/// ([`Pod::captured`](crate::model::Pod::captured)):
/// `0.0.0.0:15001`, where iptables redirects what the workload dials, with the
/// `original_dst` listener filter so that its filter chains match the destination the
/// workload dialled:
/// - per TCP service port with a cluster IP, that address and port (`outbound-tcp|…`):
///   bytes to the service's mTLS cluster (the first service takes an address and port two
///   share);
/// - per other service port, that port (`outbound-http|<port>`): HTTP routed by `Host`
///   with the shared `outbound` routes.
///
/// Anything else has no chain and is closed (no egress). `None` when the mesh has no
/// service port.
fn captured_outbound(state: &MeshState) -> Option<Listener> {
    use envoy_types::pb::envoy::config::core::v3::CidrRange;
    use envoy_types::pb::envoy::config::listener::v3::{FilterChain, FilterChainMatch};
    let port_match = |port: u16| UInt32Value {
        value: u32::from(port),
    };
    let mut chains = Vec::new();
    let mut http_ports = std::collections::BTreeSet::new();
    let mut tcp_taken = std::collections::HashSet::new();
    for s in state.services.values() {
        let (sns, sname) = (s.value.metadata.ns(), s.value.metadata.name.as_str());
        let cluster_ip = s
            .value
            .spec
            .cluster_ip
            .as_deref()
            .and_then(|ip| ip.parse::<std::net::IpAddr>().ok());
        for port in &s.value.spec.ports {
            if !is_tcp(port) {
                http_ports.insert(port.port);
                continue;
            }
            let Some(ip) = cluster_ip else {
                continue;
            };
            if !tcp_taken.insert((ip, port.port)) {
                continue;
            }
            let name = format!("outbound-tcp|{}||{sname}.{sns}", port.port);
            let cluster = sidecar_cluster_name(sns, sname, port.port);
            chains.push(FilterChain {
                name: name.clone(),
                filter_chain_match: Some(FilterChainMatch {
                    destination_port: Some(port_match(port.port)),
                    prefix_ranges: vec![CidrRange {
                        address_prefix: ip.to_string(),
                        prefix_len: Some(UInt32Value {
                            value: if ip.is_ipv4() { 32 } else { 128 },
                        }),
                    }],
                    ..Default::default()
                }),
                filters: vec![tcp_proxy_filter(&name, &cluster, false)],
                ..Default::default()
            });
        }
    }
    for port in http_ports {
        chains.push(FilterChain {
            name: format!("outbound-http|{port}"),
            filter_chain_match: Some(FilterChainMatch {
                destination_port: Some(port_match(port)),
                ..Default::default()
            }),
            filters: vec![hcm_filter("outbound", Routes::Rds(OUTBOUND_ROUTES), None)],
            ..Default::default()
        });
    }
    if chains.is_empty() {
        return None;
    }
    Some(Listener {
        name: "outbound".into(),
        address: Some(socket("0.0.0.0", OUTBOUND_PORT)),
        listener_filters: vec![original_dst()],
        filter_chains: chains,
        ..Default::default()
    })
}

/// The original destination listener filter: a redirected connection's filter chain is
/// matched on the address the workload dialled (`SO_ORIGINAL_DST`).
fn original_dst() -> envoy_types::pb::envoy::config::listener::v3::ListenerFilter {
    use envoy_types::pb::envoy::config::listener::v3::{ListenerFilter, listener_filter};
    use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
    ListenerFilter {
        name: "envoy.filters.listener.original_dst".into(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(pack_any(
            OriginalDst::default(),
        ))),
        ..Default::default()
    }
}

/// The TLS inspector listener filter: reads the client hello's server name for filter
/// chain matching.
fn tls_inspector() -> envoy_types::pb::envoy::config::listener::v3::ListenerFilter {
    use envoy_types::pb::envoy::config::listener::v3::{ListenerFilter, listener_filter};
    use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
    ListenerFilter {
        name: "envoy.filters.listener.tls_inspector".into(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(pack_any(
            TlsInspector::default(),
        ))),
        ..Default::default()
    }
}

/// The name of the route configuration every sidecar's outbound listener takes over RDS.
pub const OUTBOUND_ROUTES: &str = "outbound";

/// What every sidecar shares ([`SIDECAR_SET`] in a snapshot): an mTLS cluster per service
/// port (to the destination sidecars' inbound port, whose certificates must name the
/// SPIFFE ID of one of the service's pods' accounts) with its endpoints, and the
/// `outbound` route configuration choosing among them by `Host` (a TrafficSplit as
/// weighted clusters).
pub fn sidecar_shared(state: &MeshState) -> Resources {
    sidecar_shared_for(state, &|_| true, None)
}

/// [`sidecar_shared`] for a sidecar that may call only the services `may_call` admits: the
/// others get no cluster and no endpoints, and their hosts answer 403 at the caller's own
/// sidecar (the destination's RBAC would refuse them anyway).
///
/// With `source` (an account `(ns, sa)`), the routes to the services a `Retry` names for
/// it carry its retry policy.
fn sidecar_shared_for(
    state: &MeshState,
    may_call: &dyn Fn(&Service) -> bool,
    source: Option<(&str, &str)>,
) -> Resources {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
    let mut out = Resources::default();
    let mut hosts = Vec::new();
    // Envoy refuses a route configuration naming one domain twice: the first service
    // keeps a domain two would share (two services on one cluster IP).
    let mut taken = std::collections::HashSet::new();
    for s in state.services.values() {
        let svc = &s.value;
        let (sns, name) = (svc.metadata.ns(), svc.metadata.name.as_str());
        let allowed = may_call(svc);
        let cluster_ip = svc
            .spec
            .cluster_ip
            .as_deref()
            .filter(|ip| ip.parse::<std::net::IpAddr>().is_ok());
        for (i, port) in svc.spec.ports.iter().enumerate() {
            let fqdn = format!("{name}.{sns}.svc.cluster.local");
            let mut domains = vec![
                format!("{name}.{sns}:{}", port.port),
                format!("{fqdn}:{}", port.port),
            ];
            if let Some(ip) = cluster_ip {
                domains.push(format!("{ip}:{}", port.port));
            }
            // Without a port: the first port, and port 80 (a client omits it).
            if i == 0 || port.port == 80 {
                domains.push(format!("{name}.{sns}"));
                domains.push(fqdn);
                domains.extend(cluster_ip.map(str::to_string));
            }
            domains.retain(|d| taken.insert(d.clone()));
            // A TCP port is reached by its own listener, not by host name.
            let tcp = is_tcp(port);
            if !allowed {
                if tcp {
                    continue;
                }
                hosts.push(VirtualHost {
                    name: format!("{name}.{sns}:{}", port.port),
                    domains,
                    routes: vec![denied_route()],
                    ..Default::default()
                });
                continue;
            }
            let cname = sidecar_cluster_name(sns, name, port.port);
            // The destination is checked by its SPIFFE ID: the accounts of the service's
            // pods (and nobody, without pods).
            let mut ids: Vec<String> = state
                .pods_of(svc)
                .map(|p| {
                    format!(
                        "spiffe://{}/ns/{}/sa/{}",
                        state.mesh_config.certificate.trust_domain,
                        p.value.metadata.ns(),
                        p.value.service_account()
                    )
                })
                .collect();
            ids.sort();
            ids.dedup();
            let upstream = UpstreamTlsContext {
                common_tls_context: Some(mesh_tls_for(
                    &ids,
                    &state.mesh_config.certificate.trust_domain,
                )),
                sni: inbound_sni(sns, name, port.port),
                ..Default::default()
            };
            let mut cluster = eds_cluster(&cname, Some(tls_socket(pack_any(upstream))));
            if !tcp && let Some(u) = state.upstream_traffic_setting_for(svc) {
                limit(&mut cluster, u);
            }
            out.put(cname.clone(), cluster);
            let eps = state
                .pods_of(svc)
                .filter_map(|p| p.value.status.pod_ip.as_deref())
                .map(|pip| lb_endpoint(pip, INBOUND_PORT))
                .collect();
            out.put(cname.clone(), assignment(&cname, eps));
            // The route: the service's mTLS cluster, or a split's weighted mTLS clusters.
            if tcp {
                continue;
            }
            let mut action = route_action(state, svc, port.port, sidecar_cluster_name);
            action.retry_policy = source
                .and_then(|s| state.retry_for(s, svc))
                .map(envoy_retry);
            hosts.push(VirtualHost {
                name: format!("{name}.{sns}:{}", port.port),
                domains,
                routes: vec![route_to(action)],
                ..Default::default()
            });
        }
    }
    out.put(
        OUTBOUND_ROUTES.into(),
        RouteConfiguration {
            name: OUTBOUND_ROUTES.into(),
            virtual_hosts: hosts,
            ..Default::default()
        },
    );
    out
}

/// An OSM `UpstreamTrafficSetting` on a caller's cluster: circuit-breaker thresholds
/// (`maxConnections`, `maxPendingRequests`, `maxRequests`; Envoy's defaults for the
/// others), the connect timeout, and requests per connection.
fn limit(cluster: &mut Cluster, u: &crate::model::UpstreamTrafficSettingSpec) {
    use envoy_types::pb::envoy::config::cluster::v3::{CircuitBreakers, circuit_breakers};
    use envoy_types::pb::envoy::config::core::v3::HttpProtocolOptions as CommonHttp;
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
        HttpProtocolOptions, http_protocol_options,
    };
    let c = &u.connection_settings;
    let n = |v: Option<u32>| v.map(|value| UInt32Value { value });
    if c.tcp.max_connections.is_some()
        || c.http.max_pending_requests.is_some()
        || c.http.max_requests.is_some()
    {
        cluster.circuit_breakers = Some(CircuitBreakers {
            thresholds: vec![circuit_breakers::Thresholds {
                max_connections: n(c.tcp.max_connections),
                max_pending_requests: n(c.http.max_pending_requests),
                max_requests: n(c.http.max_requests),
                ..Default::default()
            }],
            ..Default::default()
        });
    }
    if let Some(t) = c.tcp.connect_timeout {
        cluster.connect_timeout = Some(PbDuration {
            seconds: i64::try_from(t.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(t.subsec_nanos()).unwrap_or(0),
        });
    }
    if let Some(per) = c.http.max_requests_per_connection {
        let options = HttpProtocolOptions {
            common_http_protocol_options: Some(CommonHttp {
                max_requests_per_connection: Some(UInt32Value { value: per }),
                ..Default::default()
            }),
            upstream_protocol_options: Some(
                http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                    http_protocol_options::ExplicitHttpConfig {
                        protocol_config: Some(
                            http_protocol_options::explicit_http_config::ProtocolConfig::HttpProtocolOptions(
                                Default::default(),
                            ),
                        ),
                    },
                ),
            ),
            ..Default::default()
        };
        cluster.typed_extension_protocol_options.insert(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(),
            pack_any(options),
        );
    }
}

/// An OSM retry policy as Envoy's.
fn envoy_retry(
    p: &crate::model::RetryPolicy,
) -> envoy_types::pb::envoy::config::route::v3::RetryPolicy {
    use envoy_types::pb::envoy::config::route::v3::retry_policy::RetryBackOff;
    let pb = |d: std::time::Duration| PbDuration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    };
    envoy_types::pb::envoy::config::route::v3::RetryPolicy {
        retry_on: p.retry_on.clone(),
        num_retries: Some(UInt32Value {
            value: p.num_retries.unwrap_or(1),
        }),
        per_try_timeout: p.per_try_timeout.map(pb),
        retry_back_off: p.retry_backoff_base_interval.map(|b| RetryBackOff {
            base_interval: Some(pb(b)),
            max_interval: None,
        }),
        ..Default::default()
    }
}

/// The name of the set [`sidecar_shared`] goes in, in the controller's snapshots.
pub const SIDECAR_SET: &str = "sidecar";

/// A route answering 403 itself: a service the calling sidecar may not call.
fn denied_route() -> Route {
    use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
    use envoy_types::pb::envoy::config::route::v3::DirectResponseAction;
    Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
            ..Default::default()
        }),
        action: Some(route::Action::DirectResponse(DirectResponseAction {
            status: 403,
            body: Some(DataSource {
                specifier: Some(data_source::Specifier::InlineString(
                    "RBAC: access denied by mesh policy\n".into(),
                )),
                ..Default::default()
            }),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// The sets sidecars are served over, and which set each pod's sidecar takes (by pod
/// key). In permissive mode, one set ([`SIDECAR_SET`], every service) for every pod. In
/// strict mode, one set per service account that pods run as (`sidecar:<ns>/<sa>`), with
/// clusters and endpoints only for the services its TrafficTargets let it call — the
/// services selecting pods that run as a destination naming it as a source; any other
/// service's host answers 403 at the caller's sidecar. Only what a proxy needs goes to it.
/// An account that an OSM `Retry` names as its source has a set of its own in either mode,
/// whose routes to the `Retry`'s destinations carry its retry policy.
pub fn sidecar_sets(
    state: &MeshState,
) -> (
    BTreeMap<String, Resources>,
    BTreeMap<crate::state::Key, String>,
) {
    let mut sets = BTreeMap::new();
    let mut of_pod = BTreeMap::new();
    if state
        .mesh_config
        .traffic
        .enable_permissive_traffic_policy_mode
    {
        // One set for all, but an account a `Retry` names as its source gets its own
        // (its routes carry the policy).
        sets.insert(SIDECAR_SET.to_string(), sidecar_shared(state));
        let sources: std::collections::BTreeSet<(String, String)> = state
            .retries
            .values()
            .map(|r| {
                let s = &r.value.spec.source;
                (
                    s.namespace
                        .as_deref()
                        .unwrap_or(r.value.metadata.ns())
                        .to_string(),
                    s.name.clone(),
                )
            })
            .collect();
        for (key, pod) in &state.pods {
            let account = (key.0.clone(), pod.value.service_account().to_string());
            let name = if sources.contains(&account) {
                let name = format!("sidecar:{}/{}", account.0, account.1);
                if !sets.contains_key(&name) {
                    let set = sidecar_shared_for(state, &|_| true, Some((&account.0, &account.1)));
                    sets.insert(name.clone(), set);
                }
                name
            } else {
                SIDECAR_SET.to_string()
            };
            of_pod.insert(key.clone(), name);
        }
        return (sets, of_pod);
    }
    // Source account → the destination accounts it may call.
    let mut calls: BTreeMap<(String, String), std::collections::BTreeSet<(String, String)>> =
        BTreeMap::new();
    for t in state.traffic_targets.values() {
        let tt = &t.value;
        let tns = tt.metadata.ns();
        let d = &tt.spec.destination;
        let dst = (
            d.namespace.as_deref().unwrap_or(tns).to_string(),
            d.name.clone(),
        );
        for src in &tt.spec.sources {
            let src = (
                src.namespace.as_deref().unwrap_or(tns).to_string(),
                src.name.clone(),
            );
            calls.entry(src).or_default().insert(dst.clone());
        }
    }
    let none = std::collections::BTreeSet::new();
    for (key, pod) in &state.pods {
        let account = (key.0.clone(), pod.value.service_account().to_string());
        let name = format!("sidecar:{}/{}", account.0, account.1);
        if !sets.contains_key(&name) {
            let dsts = calls.get(&account).unwrap_or(&none);
            let may_call = |svc: &Service| {
                state.pods_of(svc).any(|p| {
                    dsts.contains(&(
                        p.value.metadata.ns().to_string(),
                        p.value.service_account().to_string(),
                    ))
                })
            };
            sets.insert(
                name.clone(),
                sidecar_shared_for(state, &may_call, Some((&account.0, &account.1))),
            );
        }
        of_pod.insert(key.clone(), name);
    }
    (sets, of_pod)
}

/// The node id of pod `ns/name`'s sidecar: `<name>.<ns>` (what its bootstrap says).
pub fn node_id(ns: &str, pod: &str) -> String {
    format!("{pod}.{ns}")
}

/// Leaf certificates by identity, issued again when half their lifetime has passed or
/// the CA's signing root changed (so a rebuilt snapshot keeps the same certificate, and the
/// same secret version, until then). Leaves another replica issued can be
/// [adopted](Self::adopt); the ones issued here since the last look are
/// [`take_fresh`](Self::take_fresh), to be shared.
#[derive(Debug, Default)]
pub struct Leaves {
    issued: BTreeMap<SpiffeId, Leaf>,
    fresh: std::collections::BTreeSet<SpiffeId>,
    count: u64,
}

/// One identity's current leaf.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// The certificate and its key.
    pub issued: Issued,
    /// When it is issued again: half its life.
    pub renew_at: std::time::SystemTime,
    /// The fingerprint of the root that signed it ([`Ca::signing_root_id`]).
    pub root: String,
}

impl Leaves {
    /// When each identity's current leaf expires.
    pub fn expiries(&self) -> impl Iterator<Item = (&SpiffeId, std::time::SystemTime)> + '_ {
        self.issued
            .iter()
            .map(|(id, leaf)| (id, leaf.issued.not_after))
    }

    /// The current leaf of `id`, issued now if there is none, it is past half its life or
    /// another root signed it.
    pub fn get(&mut self, ca: &Ca, id: &SpiffeId) -> Result<&Issued, CaError> {
        let now = std::time::SystemTime::now();
        let fresh = self
            .issued
            .get(id)
            .is_some_and(|l| now < l.renew_at && l.root == ca.signing_root_id());
        if !fresh {
            let issued = ca.issue(id)?;
            let leaf = Leaf {
                issued,
                renew_at: now + ca.leaf_validity() / 2,
                root: ca.signing_root_id().to_string(),
            };
            self.issued.insert(id.clone(), leaf);
            self.fresh.insert(id.clone());
            self.count += 1;
        }
        self.issued
            .get(id)
            .map(|l| &l.issued)
            .ok_or_else(|| CaError::BadId(id.to_string()))
    }

    /// The current leaf of `id`, if there is one.
    pub fn leaf(&self, id: &SpiffeId) -> Option<&Leaf> {
        self.issued.get(id)
    }

    /// Takes `leaf` (issued by another replica of the same CA) as `id`'s current one.
    pub fn adopt(&mut self, id: SpiffeId, leaf: Leaf) {
        self.fresh.remove(&id);
        self.issued.insert(id, leaf);
    }

    /// The identities whose leaves were issued here since the last call.
    pub fn take_fresh(&mut self) -> Vec<SpiffeId> {
        std::mem::take(&mut self.fresh).into_iter().collect()
    }

    /// Forgets `id`'s leaf (an account that left the mesh).
    pub fn forget(&mut self, id: &SpiffeId) {
        self.issued.remove(id);
        self.fresh.remove(id);
    }

    /// Forgets every leaf (each is issued again when next asked for), keeping the count.
    pub fn clear(&mut self) {
        self.issued.clear();
        self.fresh.clear();
    }

    /// How many leaves were issued here in all.
    pub fn issued_count(&self) -> u64 {
        self.count
    }
}

/// A service account: (`namespace`, `name`).
pub type Account = (String, String);

/// What every pod's sidecar in `state` is served of its own — [`sidecar_resources`] and
/// its secrets ([`sidecar_secrets`]) — by node id ([`node_id`]), with the service account
/// (`namespace`, `name`) the pod runs as: only that account may be served them. (What
/// they share is [`sidecar_shared`].)
pub fn all_sidecar_secrets(
    state: &MeshState,
    ca: &Ca,
    leaves: &mut Leaves,
) -> Result<BTreeMap<String, (Account, Resources)>, CaError> {
    let bundle = ca.bundle_pem();
    let mut out = BTreeMap::new();
    for ((ns, name), pod) in &state.pods {
        let sa = pod.value.service_account();
        let id = SpiffeId::new(ca.trust_domain(), ns, sa)?;
        let leaf = leaves.get(ca, &id)?;
        let mut r = sidecar_resources(state, ns, name).unwrap_or_default();
        r.extend(sidecar_secrets(leaf, &bundle));
        out.insert(node_id(ns, name), ((ns.clone(), sa.to_string()), r));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use std::path::Path;

    use prost::Message;

    use super::*;
    use crate::load::parse_manifests;

    fn demo() -> MeshState {
        crate::source::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/mesh"))
            .unwrap()
    }

    #[test]
    fn every_service_port_gets_a_listener_a_cluster_and_its_endpoints() {
        let r = grpc_resources(&demo());
        let listeners = r.of(type_url::LISTENER).unwrap();
        assert!(listeners.contains_key("bookwarehouse.bookwarehouse"));
        assert!(listeners.contains_key("bookwarehouse.bookwarehouse:14001"));
        let cla = &r.of(type_url::ENDPOINT).unwrap()["outbound|14001||bookstore-v1.bookstore"];
        let cla = ClusterLoadAssignment::decode(cla.value.as_slice()).unwrap();
        let addrs: Vec<String> = cla.endpoints[0]
            .lb_endpoints
            .iter()
            .map(|e| match &e.host_identifier {
                Some(lb_endpoint::HostIdentifier::Endpoint(ep)) => match &ep.address {
                    Some(Address {
                        address: Some(address::Address::SocketAddress(s)),
                    }) => format!("{}:{:?}", s.address, s.port_specifier),
                    other => panic!("{other:?}"),
                },
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(addrs, ["10.42.0.21:Some(PortValue(14001))"]);
        assert_eq!(
            cla.endpoints[0].load_balancing_weight,
            Some(UInt32Value { value: 1 })
        );
        let cluster = &r.of(type_url::CLUSTER).unwrap()["outbound|14001||bookstore.bookstore"];
        let cluster = Cluster::decode(cluster.value.as_slice()).unwrap();
        assert_eq!(cluster.lb_policy, cluster::LbPolicy::RoundRobin as i32);
    }

    #[test]
    fn a_traffic_split_is_a_weighted_route() {
        let r = grpc_resources(&demo());
        let l = &r.of(type_url::LISTENER).unwrap()["bookstore.bookstore"];
        let l = Listener::decode(l.value.as_slice()).unwrap();
        let hcm = HttpConnectionManager::decode(
            l.api_listener
                .unwrap()
                .api_listener
                .unwrap()
                .value
                .as_slice(),
        )
        .unwrap();
        assert_eq!(
            hcm.http_filters.last().unwrap().name,
            "envoy.filters.http.router"
        );
        let Some(http_connection_manager::RouteSpecifier::RouteConfig(rc)) = hcm.route_specifier
        else {
            panic!("inline routes")
        };
        let Some(route::Action::Route(a)) = &rc.virtual_hosts[0].routes[0].action else {
            panic!("a route action")
        };
        let Some(route_action::ClusterSpecifier::WeightedClusters(w)) = &a.cluster_specifier else {
            panic!("{a:?}")
        };
        // 100/0: the zero weight is left out.
        assert_eq!(w.clusters.len(), 1);
        assert_eq!(w.clusters[0].name, "outbound|14001||bookstore-v1.bookstore");
    }

    #[test]
    fn sidecars_get_inbound_mtls_and_outbound_routes_by_host() {
        let state = demo();
        let buyer = sidecar_resources(&state, "bookbuyer", "bookbuyer").unwrap();
        let listeners = buyer.of(type_url::LISTENER).unwrap();
        // No service selects bookbuyer: no inbound listener, only the outbound one.
        assert_eq!(listeners.keys().collect::<Vec<_>>(), ["outbound"]);
        let out = Listener::decode(listeners["outbound"].value.as_slice()).unwrap();
        assert!(format!("{:?}", out.address).contains("10.42.0.11"));
        use envoy_types::pb::envoy::config::listener::v3::filter;
        let Some(filter::ConfigType::TypedConfig(any)) =
            &out.filter_chains[0].filters[0].config_type
        else {
            panic!("a typed HCM")
        };
        let hcm = HttpConnectionManager::decode(any.value.as_slice()).unwrap();
        let Some(http_connection_manager::RouteSpecifier::Rds(rds)) = hcm.route_specifier else {
            panic!("routes over RDS")
        };
        assert_eq!(rds.route_config_name, "outbound");
        // Clusters, endpoints and routes are shared by every sidecar.
        assert!(buyer.of(type_url::CLUSTER).is_none());
        let shared = sidecar_shared(&state);
        let clusters = shared.of(type_url::CLUSTER).unwrap();
        assert!(clusters.contains_key("outbound|14001||bookstore-v1.bookstore|mtls"));
        assert!(shared.of(type_url::ROUTE).unwrap().contains_key("outbound"));
        let cla =
            &shared.of(type_url::ENDPOINT).unwrap()["outbound|14001||bookstore-v1.bookstore|mtls"];
        let cla = ClusterLoadAssignment::decode(cla.value.as_slice()).unwrap();
        assert!(format!("{cla:?}").contains("10.42.0.21") && format!("{cla:?}").contains("15006"));
        // bookstore-v1 takes mTLS at 15006 and hands requests to its workload's port.
        let store = sidecar_resources(&state, "bookstore", "bookstore-v1").unwrap();
        let inbound = &store.of(type_url::LISTENER).unwrap()["inbound"];
        let inbound = Listener::decode(inbound.value.as_slice()).unwrap();
        assert!(inbound.filter_chains[0].transport_socket.is_some(), "mTLS");
        assert!(
            store
                .of(type_url::CLUSTER)
                .unwrap()
                .contains_key("inbound|14001")
        );
        assert!(sidecar_resources(&state, "bookstore", "nobody").is_none());
    }

    #[test]
    fn a_cluster_ip_is_a_host_name_and_no_domain_is_named_twice() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: { name: a }\nspec: { clusterIP: 10.96.0.7, selector: { app: a }, ports: [{ name: a, port: 80 }, { name: b, port: 81 }] }\n---\napiVersion: v1\nkind: Service\nmetadata: { name: b }\nspec: { clusterIP: 10.96.0.7, selector: { app: b }, ports: [{ port: 80 }] }\n";
        let state = MeshState::build(parse_manifests(text, Path::new("m.yaml")).unwrap()).unwrap();
        let r = sidecar_shared(&state);
        let any = &r.of(type_url::ROUTE).unwrap()[OUTBOUND_ROUTES];
        let table = RouteConfiguration::decode(any.value.as_slice()).unwrap();
        let domains: Vec<&String> = table
            .virtual_hosts
            .iter()
            .flat_map(|v| &v.domains)
            .collect();
        let a80 = &table.virtual_hosts[0].domains;
        assert!(
            a80.contains(&"10.96.0.7:80".to_string()) && a80.contains(&"10.96.0.7".to_string())
        );
        assert!(
            table.virtual_hosts[1]
                .domains
                .contains(&"10.96.0.7:81".to_string())
        );
        // `b` shares the address: it keeps its names, `a` keeps the address.
        let b = &table.virtual_hosts[2].domains;
        assert!(
            b.contains(&"b.default:80".to_string()) && !b.iter().any(|d| d.starts_with("10.96"))
        );
        let mut unique = domains.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), domains.len());
    }

    #[test]
    fn endpoint_slices_add_their_ready_addresses() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: { name: greeter }\nspec: { ports: [{ port: 50051, name: grpc }] }\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: { name: greeter-1, labels: { kubernetes.io/service-name: greeter } }\naddressType: IPv4\nendpoints:\n  - { addresses: [127.0.0.2] }\n  - { addresses: [127.0.0.3], conditions: { ready: false } }\nports: [{ name: grpc, port: 50052 }]\n";
        let state = MeshState::build(parse_manifests(text, Path::new("g.yaml")).unwrap()).unwrap();
        let r = grpc_resources(&state);
        let cla = &r.of(type_url::ENDPOINT).unwrap()["outbound|50051||greeter.default"];
        let cla = ClusterLoadAssignment::decode(cla.value.as_slice()).unwrap();
        assert_eq!(cla.endpoints[0].lb_endpoints.len(), 1);
    }

    #[test]
    fn in_strict_mode_a_sidecar_gets_only_what_it_may_call() {
        let text = "apiVersion: config.flowgate.io/v1alpha1\nkind: MeshConfig\nmetadata: { name: mesh }\nspec: { traffic: { enablePermissiveTrafficPolicyMode: false } }\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: { name: client }\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: { name: thief }\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: { name: web }\n---\napiVersion: v1\nkind: Service\nmetadata: { name: web }\nspec: { selector: { app: web }, ports: [{ port: 80 }] }\n---\napiVersion: v1\nkind: Pod\nmetadata: { name: web-1, labels: { app: web } }\nspec: { serviceAccountName: web }\nstatus: { podIP: 10.0.0.6 }\n---\napiVersion: v1\nkind: Pod\nmetadata: { name: client-1 }\nspec: { serviceAccountName: client }\nstatus: { podIP: 10.0.0.5 }\n---\napiVersion: v1\nkind: Pod\nmetadata: { name: thief-1 }\nspec: { serviceAccountName: thief }\nstatus: { podIP: 10.0.0.7 }\n---\napiVersion: access.smi-spec.io/v1alpha3\nkind: TrafficTarget\nmetadata: { name: web }\nspec:\n  destination: { kind: ServiceAccount, name: web }\n  sources: [{ kind: ServiceAccount, name: client }]\n";
        let state = MeshState::build(parse_manifests(text, Path::new("m.yaml")).unwrap()).unwrap();
        let (sets, of_pod) = sidecar_sets(&state);
        let set = |pod: &str| &sets[&of_pod[&("default".to_string(), pod.to_string())]];
        let web = "outbound|80||web.default|mtls";
        assert!(
            set("client-1")
                .of(type_url::CLUSTER)
                .unwrap()
                .contains_key(web)
        );
        assert!(
            set("client-1")
                .of(type_url::ENDPOINT)
                .unwrap()
                .contains_key(web)
        );
        assert!(
            set("thief-1").of(type_url::CLUSTER).is_none(),
            "nothing to call"
        );
        // The thief's routes still know the host, and answer 403 themselves.
        let routes = &set("thief-1").of(type_url::ROUTE).unwrap()[OUTBOUND_ROUTES];
        let routes = RouteConfiguration::decode(routes.value.as_slice()).unwrap();
        assert!(matches!(
            routes.virtual_hosts[0].routes[0].action,
            Some(route::Action::DirectResponse(ref d)) if d.status == 403
        ));
        // Permissive: one set for all.
        let permissive = MeshState::build(
            parse_manifests(
                &text.replace(
                    "enablePermissiveTrafficPolicyMode: false",
                    "enablePermissiveTrafficPolicyMode: true",
                ),
                Path::new("m.yaml"),
            )
            .unwrap(),
        )
        .unwrap();
        let (sets, of_pod) = sidecar_sets(&permissive);
        assert_eq!(sets.keys().collect::<Vec<_>>(), [SIDECAR_SET]);
        assert!(of_pod.values().all(|s| s == SIDECAR_SET));
    }

    /// The RBAC filter of a filter chain, decoded: its policies' names.
    fn policies_of(
        chain: &envoy_types::pb::envoy::config::listener::v3::FilterChain,
    ) -> Vec<String> {
        use envoy_types::pb::envoy::config::listener::v3::filter;
        use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
        use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetRbac;
        let Some(filter::ConfigType::TypedConfig(any)) = &chain.filters[0].config_type else {
            panic!("a typed filter")
        };
        let rules = if any.type_url.ends_with("network.rbac.v3.RBAC") {
            NetRbac::decode(any.value.as_slice()).unwrap().rules
        } else {
            let hcm = HttpConnectionManager::decode(any.value.as_slice()).unwrap();
            let Some(http_filter::ConfigType::TypedConfig(any)) = &hcm.http_filters[0].config_type
            else {
                panic!("a typed HTTP filter")
            };
            assert!(
                any.type_url.ends_with("http.rbac.v3.RBAC"),
                "{}",
                any.type_url
            );
            HttpRbac::decode(any.value.as_slice()).unwrap().rules
        };
        let mut names: Vec<String> = rules.unwrap().policies.into_keys().collect();
        names.sort();
        names
    }

    #[test]
    fn each_workload_port_gets_its_chain_and_tcp_routes_decide_tcp_ports() {
        let text = "apiVersion: config.flowgate.io/v1alpha1\nkind: MeshConfig\nmetadata: { name: mesh }\nspec: { traffic: { enablePermissiveTrafficPolicyMode: false } }\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: { name: client }\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: { name: db-client }\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: { name: thief }\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: { name: web }\n---\napiVersion: v1\nkind: Service\nmetadata: { name: web }\nspec: { selector: { app: web }, ports: [{ name: http, port: 80, targetPort: 8080 }, { name: tcp-db, port: 5432 }] }\n---\napiVersion: v1\nkind: Pod\nmetadata: { name: web-1, labels: { app: web } }\nspec: { serviceAccountName: web }\nstatus: { podIP: 10.0.0.6 }\n---\napiVersion: v1\nkind: Pod\nmetadata: { name: client-1 }\nspec: { serviceAccountName: client }\nstatus: { podIP: 10.0.0.5 }\n---\napiVersion: specs.smi-spec.io/v1alpha4\nkind: HTTPRouteGroup\nmetadata: { name: all }\nspec: { matches: [{ name: any, pathRegex: '.*' }] }\n---\napiVersion: specs.smi-spec.io/v1alpha4\nkind: TCPRoute\nmetadata: { name: db }\nspec: { matches: { ports: [5432] } }\n---\napiVersion: specs.smi-spec.io/v1alpha4\nkind: TCPRoute\nmetadata: { name: elsewhere }\nspec: { matches: { ports: [9999] } }\n---\napiVersion: access.smi-spec.io/v1alpha3\nkind: TrafficTarget\nmetadata: { name: http-a }\nspec:\n  destination: { kind: ServiceAccount, name: web }\n  rules: [{ kind: HTTPRouteGroup, name: all }]\n  sources: [{ kind: ServiceAccount, name: client }]\n---\napiVersion: access.smi-spec.io/v1alpha3\nkind: TrafficTarget\nmetadata: { name: http-b }\nspec:\n  destination: { kind: ServiceAccount, name: web }\n  rules: [{ kind: HTTPRouteGroup, name: all }]\n  sources: [{ kind: ServiceAccount, name: thief }]\n---\napiVersion: access.smi-spec.io/v1alpha3\nkind: TrafficTarget\nmetadata: { name: tcp-db }\nspec:\n  destination: { kind: ServiceAccount, name: web }\n  rules: [{ kind: TCPRoute, name: db }]\n  sources: [{ kind: ServiceAccount, name: db-client }]\n---\napiVersion: access.smi-spec.io/v1alpha3\nkind: TrafficTarget\nmetadata: { name: tcp-elsewhere }\nspec:\n  destination: { kind: ServiceAccount, name: web }\n  rules: [{ kind: TCPRoute, name: elsewhere }]\n  sources: [{ kind: ServiceAccount, name: thief }]\n";
        let state = MeshState::build(parse_manifests(text, Path::new("m.yaml")).unwrap()).unwrap();
        let web = sidecar_resources(&state, "default", "web-1").unwrap();
        let inbound = &web.of(type_url::LISTENER).unwrap()["inbound"];
        let inbound = Listener::decode(inbound.value.as_slice()).unwrap();
        assert_eq!(
            inbound.listener_filters[0].name,
            "envoy.filters.listener.tls_inspector"
        );
        let chains: Vec<(&str, &[String])> = inbound
            .filter_chains
            .iter()
            .map(|c| {
                (
                    c.name.as_str(),
                    c.filter_chain_match
                        .as_ref()
                        .unwrap()
                        .server_names
                        .as_slice(),
                )
            })
            .collect();
        assert_eq!(
            chains,
            [
                ("inbound|8080", &[inbound_sni("default", "web", 80)][..]),
                ("inbound|5432", &[inbound_sni("default", "web", 5432)][..]),
            ]
        );
        // HTTP: both HTTP targets; a TCP route allows its ports only.
        assert_eq!(
            policies_of(&inbound.filter_chains[0]),
            ["default/http-a", "default/http-b"]
        );
        // TCP: the TCP route on 5432; HTTP rules and other ports' routes do not apply.
        assert_eq!(policies_of(&inbound.filter_chains[1]), ["default/tcp-db"]);
        assert!(
            format!("{:?}", inbound.filter_chains[1].filters[1]).contains("tcp_proxy"),
            "bytes to the workload"
        );
        // The TCP port's TLS admits only the allowed identity (the workload speaks first
        // maybe: the network RBAC would see no byte from the caller).
        let tls_of = |chain: &envoy_types::pb::envoy::config::listener::v3::FilterChain| {
            use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
            use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext;
            let Some(ConfigType::TypedConfig(any)) =
                &chain.transport_socket.as_ref().unwrap().config_type
            else {
                panic!("typed TLS")
            };
            format!(
                "{:?}",
                DownstreamTlsContext::decode(any.value.as_slice()).unwrap()
            )
        };
        let tcp_tls = tls_of(&inbound.filter_chains[1]);
        assert!(
            tcp_tls.contains("spiffe://cluster.local/ns/default/sa/db-client"),
            "{tcp_tls}"
        );
        assert!(!tcp_tls.contains("sa/thief"), "{tcp_tls}");
        assert!(
            !tls_of(&inbound.filter_chains[0]).contains("spiffe://"),
            "HTTP: RBAC decides"
        );
        // A caller without a server name gets the first HTTP port.
        assert_eq!(
            inbound.default_filter_chain.as_ref().unwrap().filters,
            inbound.filter_chains[0].filters
        );
        assert!(
            web.of(type_url::CLUSTER)
                .unwrap()
                .contains_key("inbound|5432")
        );
        // Equal state, equal bytes: the RBAC policies are written in name order.
        for _ in 0..5 {
            assert_eq!(
                sidecar_resources(&state, "default", "web-1")
                    .unwrap()
                    .versions,
                web.versions
            );
        }
        // The caller reaches the TCP port at its own sidecar's <pod IP>:5432, and the
        // shared routes know only the HTTP port.
        let client = sidecar_resources(&state, "default", "client-1").unwrap();
        let tcp = &client.of(type_url::LISTENER).unwrap()["outbound-tcp|5432||web.default"];
        let tcp = Listener::decode(tcp.value.as_slice()).unwrap();
        assert!(
            format!("{:?}", tcp.address).contains("10.0.0.5")
                && format!("{:?}", tcp.address).contains("5432")
        );
        let shared = sidecar_shared(&state);
        let routes = &shared.of(type_url::ROUTE).unwrap()[OUTBOUND_ROUTES];
        let routes = RouteConfiguration::decode(routes.value.as_slice()).unwrap();
        assert_eq!(
            routes
                .virtual_hosts
                .iter()
                .map(|v| v.name.as_str())
                .collect::<Vec<_>>(),
            ["web.default:80"]
        );
        assert!(
            shared
                .of(type_url::CLUSTER)
                .unwrap()
                .contains_key("outbound|5432||web.default|mtls")
        );
    }
}
