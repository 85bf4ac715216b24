//! The resources a mesh is described with, as their Kubernetes-style manifests spell them.
//!
//! Core kinds (`Namespace`, `Service`, `ServiceAccount`, `Pod`, `EndpointSlice`) keep only
//! the fields the mesh reads and ignore the rest, so manifests written for a cluster load
//! as they are. The policy kinds (SMI, `MeshConfig`, FSM's plugin kinds) refuse unknown
//! fields: a typo in a policy is an error at its line, not a rule silently dropped.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

/// `metadata:` of every object.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    /// The object's name.
    pub name: String,
    /// Its namespace (`default` when absent; ignored for `Namespace`).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Its labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Its annotations (the mesh reads [`CAPTURE_ANNOTATION`] on pods).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// The pod annotation that says how its sidecar gets the workload's traffic: `redirect`
/// (iptables REDIRECT in the pod's network namespace, set up by `flowgate-sidecar init`:
/// the workload dials services as it would without a mesh) or `none` (the default:
/// explicit proxy mode, the workload sends HTTP to `<pod IP>:15001` itself).
pub const CAPTURE_ANNOTATION: &str = "flowgate.io/capture";

impl ObjectMeta {
    /// The namespace, `default` when absent.
    pub fn ns(&self) -> &str {
        self.namespace.as_deref().unwrap_or("default")
    }
}

/// A port number or a port name (`targetPort: 8080` or `targetPort: http`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum IntOrString {
    /// A number.
    Int(u16),
    /// A name.
    String(String),
}

/// `v1 Namespace`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Namespace {
    /// Its metadata.
    pub metadata: ObjectMeta,
}

/// `v1 Service`: a name, the pods it selects and its ports.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Service {
    /// Its metadata.
    pub metadata: ObjectMeta,
    /// Its spec.
    #[serde(default)]
    pub spec: ServiceSpec,
}

impl Service {
    /// Whether it selects `pod`: same namespace, a selector, and every label of it on the
    /// pod.
    pub fn selects(&self, pod: &Pod) -> bool {
        let sel = &self.spec.selector;
        pod.metadata.ns() == self.metadata.ns()
            && !sel.is_empty()
            && sel
                .iter()
                .all(|(k, v)| pod.metadata.labels.get(k) == Some(v))
    }
}

/// `Service.spec`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// The labels of the pods behind the service.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    /// Its ports.
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    /// The virtual IP clients use, if it has one.
    #[serde(default, rename = "clusterIP")]
    pub cluster_ip: Option<String>,
}

/// One port of a [`Service`].
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// Its name (required when a service has several).
    #[serde(default)]
    pub name: Option<String>,
    /// The port clients connect to.
    pub port: u16,
    /// The pods' port (number or container port name); `port` when absent.
    #[serde(default)]
    pub target_port: Option<IntOrString>,
    /// `TCP` (default), `UDP` or `SCTP`.
    #[serde(default)]
    pub protocol: Option<String>,
    /// The application protocol (`http`, `http2`, `grpc`, `tcp`…), which decides whether
    /// the mesh sees requests or bytes.
    #[serde(default)]
    pub app_protocol: Option<String>,
}

/// `v1 ServiceAccount`: an identity.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ServiceAccount {
    /// Its metadata.
    pub metadata: ObjectMeta,
}

/// `v1 Pod`: a workload instance, its identity and address.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Pod {
    /// Its metadata (the labels services select on).
    pub metadata: ObjectMeta,
    /// Its spec.
    #[serde(default)]
    pub spec: PodSpec,
    /// Its status (`podIP`).
    #[serde(default)]
    pub status: PodStatus,
}

/// `Pod.spec`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    /// The identity it runs as; `default` when absent.
    #[serde(default)]
    pub service_account_name: Option<String>,
}

/// `Pod.status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    /// Its IP address.
    #[serde(default, rename = "podIP")]
    pub pod_ip: Option<String>,
}

impl Pod {
    /// The service account it runs as (`default` when absent).
    pub fn service_account(&self) -> &str {
        self.spec
            .service_account_name
            .as_deref()
            .unwrap_or("default")
    }

    /// Whether its traffic is captured ([`CAPTURE_ANNOTATION`] `redirect`) rather than sent
    /// to its sidecar explicitly.
    pub fn captured(&self) -> bool {
        self.metadata
            .annotations
            .get(CAPTURE_ANNOTATION)
            .is_some_and(|v| v.eq_ignore_ascii_case("redirect"))
    }
}

/// `discovery.k8s.io/v1 EndpointSlice`: addresses behind a service (the label
/// `kubernetes.io/service-name` names it).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSlice {
    /// Its metadata.
    pub metadata: ObjectMeta,
    /// `IPv4`, `IPv6` or `FQDN`.
    #[serde(default)]
    pub address_type: Option<String>,
    /// The endpoints.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// The ports every endpoint serves.
    #[serde(default)]
    pub ports: Vec<EndpointPort>,
}

/// The label that ties an [`EndpointSlice`] to its service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

impl EndpointSlice {
    /// The service it belongs to.
    pub fn service(&self) -> Option<&str> {
        self.metadata
            .labels
            .get(SERVICE_NAME_LABEL)
            .map(String::as_str)
    }
}

/// One endpoint of an [`EndpointSlice`].
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// Its addresses.
    pub addresses: Vec<String>,
    /// Whether it is ready (absent: ready).
    #[serde(default)]
    pub conditions: EndpointConditions,
}

/// `Endpoint.conditions`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct EndpointConditions {
    /// Ready for traffic; absent means ready.
    #[serde(default)]
    pub ready: Option<bool>,
}

/// One port of an [`EndpointSlice`].
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointPort {
    /// Its name (matches the service port's).
    #[serde(default)]
    pub name: Option<String>,
    /// The port.
    pub port: u16,
    /// `TCP` (default), `UDP`, `SCTP`.
    #[serde(default)]
    pub protocol: Option<String>,
}

// === SMI ===

/// A reference to an identity or a route object.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subject {
    /// `ServiceAccount` (for sources and destinations).
    pub kind: String,
    /// Its name.
    pub name: String,
    /// Its namespace (the referring object's when absent).
    #[serde(default)]
    pub namespace: Option<String>,
}

/// `access.smi-spec.io/v1alpha3 TrafficTarget`: which identities may call one identity,
/// on which routes.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TrafficTarget {
    /// `apiVersion`, as written.
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// `kind`, as written.
    pub kind: String,
    /// Its metadata.
    pub metadata: ObjectMeta,
    /// Its spec.
    pub spec: TrafficTargetSpec,
}

/// `TrafficTarget.spec`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficTargetSpec {
    /// The identity called.
    pub destination: Subject,
    /// The identities allowed to call it.
    pub sources: Vec<Subject>,
    /// The routes they may use (all traffic when empty).
    #[serde(default)]
    pub rules: Vec<TrafficTargetRule>,
}

/// One rule of a [`TrafficTarget`]: a route object and, for `HTTPRouteGroup`, which of its
/// named matches.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficTargetRule {
    /// `HTTPRouteGroup` or `TCPRoute`.
    pub kind: String,
    /// Its name (same namespace as the TrafficTarget).
    pub name: String,
    /// The named matches of the group it allows (all when empty).
    #[serde(default)]
    pub matches: Vec<String>,
}

/// `specs.smi-spec.io/v1alpha4 HTTPRouteGroup`: named HTTP request matches.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRouteGroup {
    /// `apiVersion`, as written.
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// `kind`, as written.
    pub kind: String,
    /// Its metadata.
    pub metadata: ObjectMeta,
    /// Its spec.
    pub spec: HttpRouteGroupSpec,
}

/// `HTTPRouteGroup.spec`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRouteGroupSpec {
    /// The matches.
    #[serde(default)]
    pub matches: Vec<HttpMatch>,
}

/// One named match of an [`HttpRouteGroup`]: every part given must hold.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpMatch {
    /// The name rules refer to.
    pub name: String,
    /// Methods (`*` for any); any when empty.
    #[serde(default)]
    pub methods: Vec<String>,
    /// A regular expression the whole path must match.
    #[serde(default)]
    pub path_regex: Option<String>,
    /// Header values (regular expressions) by name.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// `specs.smi-spec.io/v1alpha4 TCPRoute`: ports.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpRoute {
    /// `apiVersion`, as written.
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// `kind`, as written.
    pub kind: String,
    /// Its metadata.
    pub metadata: ObjectMeta,
    /// Its spec.
    #[serde(default)]
    pub spec: TcpRouteSpec,
}

/// `TCPRoute.spec`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpRouteSpec {
    /// The ports (all when absent).
    #[serde(default)]
    pub matches: TcpMatches,
}

/// `TCPRoute.spec.matches`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpMatches {
    /// The destination ports; all when empty.
    #[serde(default)]
    pub ports: Vec<u16>,
}

/// `split.smi-spec.io/v1alpha2` or `v1alpha4 TrafficSplit`: a root service's traffic
/// spread over backend services by weight.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficSplit {
    /// `apiVersion`, as written.
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// `kind`, as written.
    pub kind: String,
    /// Its metadata.
    pub metadata: ObjectMeta,
    /// Its spec.
    pub spec: TrafficSplitSpec,
}

/// `TrafficSplit.spec`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficSplitSpec {
    /// The root service clients call.
    pub service: String,
    /// Where its traffic goes.
    pub backends: Vec<SplitBackend>,
    /// v1alpha4: route objects limiting the split to some requests.
    #[serde(default)]
    pub matches: Vec<Subject>,
}

/// One backend of a [`TrafficSplit`].
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitBackend {
    /// A service in the split's namespace.
    pub service: String,
    /// Its share, relative to the others.
    pub weight: u32,
}

// === OSM policy ===

/// `policy.openservicemesh.io/v1alpha1 Retry`: retries for the calls one service account's
/// workloads make to some services (applied at the callers' sidecars, on the routes to
/// those services), as OSM has it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// `apiVersion`, as written.
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// `kind`, as written.
    pub kind: String,
    /// Its metadata.
    pub metadata: ObjectMeta,
    /// Its spec.
    pub spec: RetrySpec,
}

/// `Retry.spec`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RetrySpec {
    /// The calling service account (`kind: ServiceAccount`).
    pub source: RetryRef,
    /// The services called (`kind: Service`).
    pub destinations: Vec<RetryRef>,
    /// How to retry.
    pub retry_policy: RetryPolicy,
}

/// A source or destination of a [`Retry`].
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryRef {
    /// `ServiceAccount` (source) or `Service` (destination).
    pub kind: String,
    /// Its name.
    pub name: String,
    /// Its namespace (the policy's when absent).
    #[serde(default)]
    pub namespace: Option<String>,
}

/// The retry conditions (Envoy's `retry_on`) the mesh takes, in a [`Retry`] and in a
/// sidecar's routes.
pub const RETRY_CONDITIONS: &[&str] = &[
    "5xx",
    "gateway-error",
    "connect-failure",
    "refused-stream",
    "reset",
    "retriable-status-codes",
];

/// `Retry.spec.retryPolicy`: Envoy's retry policy, as OSM passes it on.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RetryPolicy {
    /// The conditions (Envoy's `retry_on`: `5xx`, `gateway-error`, `connect-failure`,
    /// `reset`, `refused-stream`, `retriable-status-codes`), comma-separated.
    pub retry_on: String,
    /// Each try's timeout (`None`: the route's).
    #[serde(default, with = "flowgate_config::duration::option")]
    pub per_try_timeout: Option<Duration>,
    /// Retries after the first try (OSM's default: 1, as Envoy's).
    #[serde(default)]
    pub num_retries: Option<u32>,
    /// The back-off's base interval (Envoy's default 25 ms).
    #[serde(default, with = "flowgate_config::duration::option")]
    pub retry_backoff_base_interval: Option<Duration>,
}

/// `policy.openservicemesh.io/v1alpha1 UpstreamTrafficSetting`: limits on the traffic
/// every caller sends to one service (`spec.host`), as OSM has them — applied as
/// circuit breakers on the callers' clusters for the service's HTTP ports.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTrafficSetting {
    /// `apiVersion`, as written.
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// `kind`, as written.
    pub kind: String,
    /// Its metadata.
    pub metadata: ObjectMeta,
    /// Its spec.
    pub spec: UpstreamTrafficSettingSpec,
}

/// `UpstreamTrafficSetting.spec`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UpstreamTrafficSettingSpec {
    /// The service: `<name>.<namespace>.svc.cluster.local` (or `<name>.<namespace>`).
    pub host: String,
    /// Connection and request limits.
    #[serde(default)]
    pub connection_settings: ConnectionSettings,
    /// OSM's local rate limits: not supported yet (an error when given).
    #[serde(default)]
    pub rate_limit: Option<serde_json::Value>,
    /// OSM's per-route rate limits: not supported yet (an error when given).
    #[serde(default)]
    pub http_routes: Option<serde_json::Value>,
}

/// `connectionSettings`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionSettings {
    /// TCP limits.
    #[serde(default)]
    pub tcp: TcpConnectionSettings,
    /// HTTP limits.
    #[serde(default)]
    pub http: HttpConnectionSettings,
}

/// `connectionSettings.tcp`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpConnectionSettings {
    /// Most connections to the service from one caller.
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// How long connecting may take.
    #[serde(default, with = "flowgate_config::duration::option")]
    pub connect_timeout: Option<Duration>,
}

/// `connectionSettings.http`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpConnectionSettings {
    /// Requests per connection before it is retired.
    #[serde(default)]
    pub max_requests_per_connection: Option<u32>,
    /// Most requests waiting for a connection.
    #[serde(default)]
    pub max_pending_requests: Option<u32>,
    /// Most requests in flight.
    #[serde(default)]
    pub max_requests: Option<u32>,
    /// Most retries in flight: not supported yet (an error when given).
    #[serde(default)]
    pub max_retries: Option<u32>,
}

// === MeshConfig ===

/// The mesh-wide settings, shaped like OSM's `MeshConfig` (`config.flowgate.io/v1alpha1`,
/// or OSM's own `config.openservicemesh.io/v1alpha2`; at most one per mesh).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshConfig {
    /// `apiVersion`, as written.
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// `kind`, as written.
    pub kind: String,
    /// Its metadata.
    pub metadata: ObjectMeta,
    /// Its spec.
    #[serde(default)]
    pub spec: MeshConfigSpec,
}

/// `MeshConfig.spec`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshConfigSpec {
    /// Traffic settings.
    #[serde(default)]
    pub traffic: TrafficSettings,
    /// Certificate settings.
    #[serde(default)]
    pub certificate: CertificateSettings,
}

/// `MeshConfig.spec.traffic`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TrafficSettings {
    /// Allow all meshed traffic (still mTLS) without SMI policy. Default true, as OSM's.
    #[serde(default = "flowgate_config::default_true")]
    pub enable_permissive_traffic_policy_mode: bool,
    /// Let workloads reach destinations outside the mesh. Default false.
    #[serde(default)]
    pub enable_egress: bool,
}

impl Default for TrafficSettings {
    fn default() -> Self {
        TrafficSettings {
            enable_permissive_traffic_policy_mode: true,
            enable_egress: false,
        }
    }
}

/// `MeshConfig.spec.certificate`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CertificateSettings {
    /// The SPIFFE trust domain. Default `cluster.local`.
    #[serde(default = "d_trust_domain")]
    pub trust_domain: String,
    /// How long a workload certificate is valid. Default 24 h.
    #[serde(default = "d_validity", with = "flowgate_config::duration")]
    pub service_cert_validity_duration: Duration,
}

fn d_trust_domain() -> String {
    "cluster.local".into()
}
fn d_validity() -> Duration {
    Duration::from_secs(24 * 3600)
}

impl Default for CertificateSettings {
    fn default() -> Self {
        CertificateSettings {
            trust_domain: d_trust_domain(),
            service_cert_validity_duration: d_validity(),
        }
    }
}

// === FSM plugins ===

/// `plugin.flomesh.io/v1alpha1 Plugin`: a script with a priority.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plugin {
    /// `apiVersion`, as written.
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// `kind`, as written.
    pub kind: String,
    /// Its metadata.
    pub metadata: ObjectMeta,
    /// Its spec.
    pub spec: PluginSpec,
}

/// `Plugin.spec`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSpec {
    /// Higher runs first within a chain.
    #[serde(default)]
    pub priority: i32,
    /// The plugin's code (a script, or a reference to a module, as the plugin issue
    /// defines).
    pub script: String,
}

/// The chains plugins attach to.
pub const PLUGIN_CHAINS: [&str; 4] = [
    "inbound-tcp",
    "inbound-http",
    "outbound-tcp",
    "outbound-http",
];

/// `plugin.flomesh.io/v1alpha1 PluginChain`: plugins on chains, for selected pods.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginChain {
    /// `apiVersion`, as written.
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// `kind`, as written.
    pub kind: String,
    /// Its metadata.
    pub metadata: ObjectMeta,
    /// Its spec.
    pub spec: PluginChainSpec,
}

/// `PluginChain.spec`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginChainSpec {
    /// The chains and their plugins.
    pub chains: Vec<ChainPlugins>,
    /// Which pods (all in the namespace when absent).
    #[serde(default)]
    pub selectors: Selectors,
}

/// One chain of a [`PluginChain`].
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainPlugins {
    /// One of [`PLUGIN_CHAINS`].
    pub name: String,
    /// Plugin names.
    pub plugins: Vec<String>,
}

/// Pod and namespace selectors.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Selectors {
    /// Pods by label.
    #[serde(default)]
    pub pod_selector: Option<LabelSelector>,
    /// Namespaces by label.
    #[serde(default)]
    pub namespace_selector: Option<LabelSelector>,
}

/// A label selector (`matchLabels` only).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelector {
    /// Every label must match.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// `plugin.flomesh.io/v1alpha1 PluginConfig`: a plugin's configuration for some
/// destinations.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// `apiVersion`, as written.
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// `kind`, as written.
    pub kind: String,
    /// Its metadata.
    pub metadata: ObjectMeta,
    /// Its spec.
    pub spec: PluginConfigSpec,
}

/// `PluginConfig.spec`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PluginConfigSpec {
    /// The plugin configured.
    pub plugin: String,
    /// The services it applies to.
    #[serde(default)]
    pub destination_refs: Vec<Subject>,
    /// The configuration, kept as YAML text for the plugin to read.
    #[serde(default)]
    pub config: Option<ConfigText>,
}

/// A free-form configuration value, kept as the YAML it was written in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigText(pub String);

impl<'de> Deserialize<'de> for ConfigText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Kept as a tree of plain values; turned back into text for the plugin.
        let v = Value::deserialize(d)?;
        Ok(ConfigText(v.to_string()))
    }
}

/// A plain YAML value (enough to carry a plugin's configuration through).
#[derive(Clone, Debug, PartialEq)]
enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Value>),
    Map(Vec<(String, Value)>),
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Seq(v) => {
                f.write_str("[")?;
                for (i, x) in v.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{x}")?;
                }
                f.write_str("]")
            }
            Value::Map(m) => {
                f.write_str("{")?;
                for (i, (k, x)) in m.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{k:?}: {x}")?;
                }
                f.write_str("}")
            }
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Value;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a YAML value")
            }
            fn visit_unit<E>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_none<E>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
                Ok(Value::Bool(b))
            }
            fn visit_i64<E>(self, i: i64) -> Result<Value, E> {
                Ok(Value::Int(i))
            }
            fn visit_u64<E: serde::de::Error>(self, u: u64) -> Result<Value, E> {
                i64::try_from(u)
                    .map(Value::Int)
                    .map_err(|_| E::custom("integer too large"))
            }
            fn visit_f64<E>(self, x: f64) -> Result<Value, E> {
                Ok(Value::Float(x))
            }
            fn visit_str<E>(self, s: &str) -> Result<Value, E> {
                Ok(Value::Str(s.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Value, A::Error> {
                let mut v = Vec::new();
                while let Some(x) = a.next_element()? {
                    v.push(x);
                }
                Ok(Value::Seq(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Value, A::Error> {
                let mut m = Vec::new();
                while let Some((k, x)) = a.next_entry::<String, Value>()? {
                    m.push((k, x));
                }
                Ok(Value::Map(m))
            }
        }
        d.deserialize_any(V)
    }
}
