//! [`MeshState`]: every object of the mesh, checked against each other, as one immutable
//! snapshot. Built whole or not at all: a source that finds an error keeps serving the last
//! good state.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};

use crate::load::{Located, ManifestError, Origin, Resource};
use crate::model::*;

/// A namespaced name: `(namespace, name)`.
pub type Key = (String, String);

/// The mesh: every object by kind and namespaced name, with where it was written.
#[derive(Clone, Debug, Default)]
pub struct MeshState {
    /// Declared namespaces (`default` is always there).
    pub namespaces: BTreeMap<String, Located<Namespace>>,
    /// Services.
    pub services: BTreeMap<Key, Located<Service>>,
    /// Service accounts (each namespace's `default` one is implied).
    pub service_accounts: BTreeMap<Key, Located<ServiceAccount>>,
    /// Pods.
    pub pods: BTreeMap<Key, Located<Pod>>,
    /// Endpoint slices.
    pub endpoint_slices: BTreeMap<Key, Located<EndpointSlice>>,
    /// SMI access policy.
    pub traffic_targets: BTreeMap<Key, Located<TrafficTarget>>,
    /// SMI HTTP routes.
    pub http_route_groups: BTreeMap<Key, Located<HttpRouteGroup>>,
    /// SMI TCP routes.
    pub tcp_routes: BTreeMap<Key, Located<TcpRoute>>,
    /// SMI traffic splits.
    pub traffic_splits: BTreeMap<Key, Located<TrafficSplit>>,
    /// OSM retry policies.
    pub retries: BTreeMap<Key, Located<Retry>>,
    /// OSM upstream traffic settings.
    pub upstream_traffic_settings: BTreeMap<Key, Located<UpstreamTrafficSetting>>,
    /// The mesh settings (defaults when no `MeshConfig` is given).
    pub mesh_config: MeshConfigSpec,
    /// Where the `MeshConfig` was written, if one was.
    pub mesh_config_origin: Option<Origin>,
    /// FSM plugins.
    pub plugins: BTreeMap<Key, Located<Plugin>>,
    /// FSM plugin chains.
    pub plugin_chains: BTreeMap<Key, Located<PluginChain>>,
    /// FSM plugin configurations.
    pub plugin_configs: BTreeMap<Key, Located<PluginConfig>>,
    /// A fingerprint of the contents: equal states have equal versions.
    pub version: u64,
}

fn key(m: &ObjectMeta) -> Key {
    (m.ns().to_string(), m.name.clone())
}

/// Inserts `value` under its key, or records a duplicate.
fn put<T>(
    map: &mut BTreeMap<Key, Located<T>>,
    k: Key,
    origin: Origin,
    value: T,
    kind: &str,
    errors: &mut Vec<ManifestError>,
) {
    if let Some(first) = map.get(&k) {
        errors.push(ManifestError::at(
            &origin,
            format!(
                "{kind} {}/{} is also defined at {}:{}",
                k.0,
                k.1,
                first.origin.file.display(),
                first.origin.line
            ),
        ));
        return;
    }
    map.insert(k, Located { origin, value });
}

impl MeshState {
    /// Checks `resources` against each other and builds the state, or returns every
    /// problem found (each at its file and line).
    pub fn build(resources: Vec<Located<Resource>>) -> Result<MeshState, Vec<ManifestError>> {
        let mut s = MeshState::default();
        let mut errors = Vec::new();
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        let mut mesh_config: Option<Origin> = None;
        for r in resources {
            format!("{:?}", r.value).hash(&mut hasher);
            let origin = r.origin;
            match r.value {
                Resource::Namespace(o) => {
                    let name = o.metadata.name.clone();
                    if let Some(first) = s.namespaces.get(&name) {
                        errors.push(ManifestError::at(
                            &origin,
                            format!(
                                "Namespace {name} is also defined at {}:{}",
                                first.origin.file.display(),
                                first.origin.line
                            ),
                        ));
                    } else {
                        s.namespaces.insert(name, Located { origin, value: o });
                    }
                }
                Resource::Service(o) => put(
                    &mut s.services,
                    key(&o.metadata),
                    origin,
                    o,
                    "Service",
                    &mut errors,
                ),
                Resource::ServiceAccount(o) => put(
                    &mut s.service_accounts,
                    key(&o.metadata),
                    origin,
                    o,
                    "ServiceAccount",
                    &mut errors,
                ),
                Resource::Pod(o) => {
                    put(&mut s.pods, key(&o.metadata), origin, o, "Pod", &mut errors)
                }
                Resource::EndpointSlice(o) => put(
                    &mut s.endpoint_slices,
                    key(&o.metadata),
                    origin,
                    o,
                    "EndpointSlice",
                    &mut errors,
                ),
                Resource::TrafficTarget(o) => put(
                    &mut s.traffic_targets,
                    key(&o.metadata),
                    origin,
                    o,
                    "TrafficTarget",
                    &mut errors,
                ),
                Resource::HttpRouteGroup(o) => put(
                    &mut s.http_route_groups,
                    key(&o.metadata),
                    origin,
                    o,
                    "HTTPRouteGroup",
                    &mut errors,
                ),
                Resource::TcpRoute(o) => put(
                    &mut s.tcp_routes,
                    key(&o.metadata),
                    origin,
                    o,
                    "TCPRoute",
                    &mut errors,
                ),
                Resource::TrafficSplit(o) => put(
                    &mut s.traffic_splits,
                    key(&o.metadata),
                    origin,
                    o,
                    "TrafficSplit",
                    &mut errors,
                ),
                Resource::Retry(o) => put(
                    &mut s.retries,
                    key(&o.metadata),
                    origin,
                    o,
                    "Retry",
                    &mut errors,
                ),
                Resource::UpstreamTrafficSetting(o) => put(
                    &mut s.upstream_traffic_settings,
                    key(&o.metadata),
                    origin,
                    o,
                    "UpstreamTrafficSetting",
                    &mut errors,
                ),
                Resource::MeshConfig(o) => {
                    if let Some(first) = &mesh_config {
                        errors.push(ManifestError::at(
                            &origin,
                            format!(
                                "a second MeshConfig (the first is at {}:{})",
                                first.file.display(),
                                first.line
                            ),
                        ));
                    } else {
                        s.mesh_config = o.spec;
                        mesh_config = Some(origin.clone());
                        s.mesh_config_origin = Some(origin);
                    }
                }
                Resource::Plugin(o) => put(
                    &mut s.plugins,
                    key(&o.metadata),
                    origin,
                    o,
                    "Plugin",
                    &mut errors,
                ),
                Resource::PluginChain(o) => put(
                    &mut s.plugin_chains,
                    key(&o.metadata),
                    origin,
                    o,
                    "PluginChain",
                    &mut errors,
                ),
                Resource::PluginConfig(o) => put(
                    &mut s.plugin_configs,
                    key(&o.metadata),
                    origin,
                    o,
                    "PluginConfig",
                    &mut errors,
                ),
            }
        }
        s.version = hasher.finish();
        s.check(&mut errors);
        if errors.is_empty() {
            Ok(s)
        } else {
            errors.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
            Err(errors)
        }
    }

    /// Whether namespace `ns` exists (`default` always does).
    pub fn has_namespace(&self, ns: &str) -> bool {
        ns == "default" || self.namespaces.contains_key(ns)
    }

    /// Whether service account `ns/name` exists (every namespace has `default`).
    pub fn has_service_account(&self, ns: &str, name: &str) -> bool {
        self.has_namespace(ns)
            && (name == "default"
                || self
                    .service_accounts
                    .contains_key(&(ns.to_string(), name.to_string())))
    }

    /// The SPIFFE ID of service account `ns/sa` in this mesh's trust domain.
    pub fn spiffe_id(&self, ns: &str, sa: &str) -> String {
        format!(
            "spiffe://{}/ns/{ns}/sa/{sa}",
            self.mesh_config.certificate.trust_domain
        )
    }

    /// The pods a service selects (none for a service without a selector).
    pub fn pods_of<'a>(&'a self, svc: &'a Service) -> impl Iterator<Item = &'a Located<Pod>> + 'a {
        self.pods.values().filter(move |p| svc.selects(&p.value))
    }

    /// The cross-object rules; every violation is recorded.
    fn check(&self, errors: &mut Vec<ManifestError>) {
        let ns_of =
            |m: &ObjectMeta, origin: &Origin, kind: &str, errors: &mut Vec<ManifestError>| {
                if !self.has_namespace(m.ns()) {
                    errors.push(ManifestError::at(
                        origin,
                        format!(
                            "{kind} {}/{}: namespace `{}` is not defined",
                            m.ns(),
                            m.name,
                            m.ns()
                        ),
                    ));
                }
            };
        for s in self.services.values() {
            ns_of(&s.value.metadata, &s.origin, "Service", errors);
            let named = s.value.spec.ports.len() > 1;
            let mut seen = BTreeSet::new();
            for p in &s.value.spec.ports {
                if p.port == 0 {
                    errors.push(ManifestError::at(
                        &s.origin,
                        format!("Service {}: port 0", s.value.metadata.name),
                    ));
                }
                if named && p.name.is_none() {
                    errors.push(ManifestError::at(
                        &s.origin,
                        format!(
                            "Service {}: every port needs a name when there are several",
                            s.value.metadata.name
                        ),
                    ));
                }
                if !seen.insert(p.port) {
                    errors.push(ManifestError::at(
                        &s.origin,
                        format!(
                            "Service {}: port {} is listed twice",
                            s.value.metadata.name, p.port
                        ),
                    ));
                }
            }
        }
        for a in self.service_accounts.values() {
            ns_of(&a.value.metadata, &a.origin, "ServiceAccount", errors);
        }
        for p in self.pods.values() {
            let m = &p.value.metadata;
            ns_of(m, &p.origin, "Pod", errors);
            if !self.has_service_account(m.ns(), p.value.service_account()) {
                errors.push(ManifestError::at(
                    &p.origin,
                    format!(
                        "Pod {}/{}: service account `{}` is not defined",
                        m.ns(),
                        m.name,
                        p.value.service_account()
                    ),
                ));
            }
            if let Some(ip) = &p.value.status.pod_ip
                && ip.parse::<std::net::IpAddr>().is_err()
            {
                errors.push(ManifestError::at(
                    &p.origin,
                    format!(
                        "Pod {}/{}: podIP `{ip}` is not an IP address",
                        m.ns(),
                        m.name
                    ),
                ));
            }
        }
        for e in self.endpoint_slices.values() {
            let m = &e.value.metadata;
            ns_of(m, &e.origin, "EndpointSlice", errors);
            match e.value.service() {
                None => errors.push(ManifestError::at(
                    &e.origin,
                    format!(
                        "EndpointSlice {}/{}: no `{SERVICE_NAME_LABEL}` label",
                        m.ns(),
                        m.name
                    ),
                )),
                Some(svc)
                    if !self
                        .services
                        .contains_key(&(m.ns().to_string(), svc.to_string())) =>
                {
                    errors.push(ManifestError::at(
                        &e.origin,
                        format!(
                            "EndpointSlice {}/{}: service `{svc}` is not defined",
                            m.ns(),
                            m.name
                        ),
                    ));
                }
                Some(_) => {}
            }
            for ep in &e.value.endpoints {
                for a in &ep.addresses {
                    if a.parse::<std::net::IpAddr>().is_err() {
                        errors.push(ManifestError::at(
                            &e.origin,
                            format!(
                                "EndpointSlice {}/{}: `{a}` is not an IP address",
                                m.ns(),
                                m.name
                            ),
                        ));
                    }
                }
            }
        }
        for t in self.traffic_targets.values() {
            self.check_traffic_target(t, errors);
        }
        for g in self.http_route_groups.values() {
            let m = &g.value.metadata;
            ns_of(m, &g.origin, "HTTPRouteGroup", errors);
            let mut names = BTreeSet::new();
            for r in &g.value.spec.matches {
                if !names.insert(r.name.as_str()) {
                    errors.push(ManifestError::at(
                        &g.origin,
                        format!(
                            "HTTPRouteGroup {}/{}: match `{}` is listed twice",
                            m.ns(),
                            m.name,
                            r.name
                        ),
                    ));
                }
                if let Some(re) = &r.path_regex
                    && (re.len() > 4096 || re.contains('\0'))
                {
                    errors.push(ManifestError::at(
                        &g.origin,
                        format!(
                            "HTTPRouteGroup {}/{}: match `{}`: pathRegex too long",
                            m.ns(),
                            m.name,
                            r.name
                        ),
                    ));
                }
            }
        }
        for r in self.tcp_routes.values() {
            ns_of(&r.value.metadata, &r.origin, "TCPRoute", errors);
        }
        for sp in self.traffic_splits.values() {
            self.check_traffic_split(sp, errors);
        }
        for r in self.retries.values() {
            self.check_retry(r, errors);
        }
        for u in self.upstream_traffic_settings.values() {
            self.check_upstream_traffic_setting(u, errors);
        }
        self.check_plugins(errors);
        let c = &self.mesh_config.certificate;
        if c.trust_domain.is_empty()
            || !c
                .trust_domain
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ".-_".contains(ch))
        {
            errors.push(self.mesh_config_error(format!(
                "MeshConfig: trustDomain `{}` is not a SPIFFE trust domain",
                c.trust_domain
            )));
        }
        if c.service_cert_validity_duration < std::time::Duration::from_secs(60) {
            errors.push(self.mesh_config_error(
                "MeshConfig: serviceCertValidityDuration must be at least 1m".into(),
            ));
        }
    }

    fn mesh_config_error(&self, message: String) -> ManifestError {
        match &self.mesh_config_origin {
            Some(o) => ManifestError::at(o, message),
            None => ManifestError {
                file: "MeshConfig".into(),
                line: 0,
                column: 0,
                message,
            },
        }
    }

    fn check_traffic_target(&self, t: &Located<TrafficTarget>, errors: &mut Vec<ManifestError>) {
        let m = &t.value.metadata;
        let ns = m.ns();
        let name = format!("TrafficTarget {ns}/{}", m.name);
        if !self.has_namespace(ns) {
            errors.push(ManifestError::at(
                &t.origin,
                format!("{name}: namespace `{ns}` is not defined"),
            ));
        }
        let spec = &t.value.spec;
        let subject = |s: &Subject, role: &str, errors: &mut Vec<ManifestError>| {
            if s.kind != "ServiceAccount" {
                errors.push(ManifestError::at(
                    &t.origin,
                    format!("{name}: {role} kind `{}` is not ServiceAccount", s.kind),
                ));
                return;
            }
            let sns = s.namespace.as_deref().unwrap_or(ns);
            if !self.has_service_account(sns, &s.name) {
                errors.push(ManifestError::at(
                    &t.origin,
                    format!(
                        "{name}: {role} service account `{sns}/{}` is not defined",
                        s.name
                    ),
                ));
            }
        };
        subject(&spec.destination, "destination", errors);
        if spec.sources.is_empty() {
            errors.push(ManifestError::at(&t.origin, format!("{name}: no sources")));
        }
        for s in &spec.sources {
            subject(s, "source", errors);
        }
        for r in &spec.rules {
            let k = (ns.to_string(), r.name.clone());
            match r.kind.as_str() {
                "HTTPRouteGroup" => match self.http_route_groups.get(&k) {
                    None => errors.push(ManifestError::at(
                        &t.origin,
                        format!(
                            "{name}: HTTPRouteGroup `{}` is not defined in `{ns}`",
                            r.name
                        ),
                    )),
                    Some(g) => {
                        for want in &r.matches {
                            if !g.value.spec.matches.iter().any(|x| &x.name == want) {
                                errors.push(ManifestError::at(
                                    &t.origin,
                                    format!(
                                        "{name}: HTTPRouteGroup `{}` has no match `{want}`",
                                        r.name
                                    ),
                                ));
                            }
                        }
                    }
                },
                "TCPRoute" => {
                    if !self.tcp_routes.contains_key(&k) {
                        errors.push(ManifestError::at(
                            &t.origin,
                            format!("{name}: TCPRoute `{}` is not defined in `{ns}`", r.name),
                        ));
                    }
                }
                other => errors.push(ManifestError::at(
                    &t.origin,
                    format!("{name}: rule kind `{other}` is not HTTPRouteGroup or TCPRoute"),
                )),
            }
        }
    }

    fn check_retry(&self, r: &Located<Retry>, errors: &mut Vec<ManifestError>) {
        let m = &r.value.metadata;
        let ns = m.ns();
        let name = format!("Retry {ns}/{}", m.name);
        let mut error =
            |e: String| errors.push(ManifestError::at(&r.origin, format!("{name}: {e}")));
        let spec = &r.value.spec;
        if spec.source.kind != "ServiceAccount" {
            error(format!(
                "source kind `{}` is not ServiceAccount",
                spec.source.kind
            ));
        }
        if spec.destinations.is_empty() {
            error("no destinations".into());
        }
        for d in &spec.destinations {
            let dns = d.namespace.as_deref().unwrap_or(ns);
            if d.kind != "Service" {
                error(format!("destination kind `{}` is not Service", d.kind));
            } else if !self
                .services
                .contains_key(&(dns.to_string(), d.name.clone()))
            {
                error(format!(
                    "destination service `{dns}/{}` is not defined",
                    d.name
                ));
            }
        }
        let p = &spec.retry_policy;
        for c in p.retry_on.split(',').map(str::trim) {
            if !RETRY_CONDITIONS.contains(&c) {
                error(format!(
                    "retryOn `{c}` is not one of {}",
                    RETRY_CONDITIONS.join(", ")
                ));
            }
        }
        if p.num_retries.is_some_and(|n| n > 9) {
            error("numRetries above 9".into());
        }
        if p.per_try_timeout.is_some_and(|d| d.is_zero()) {
            error("perTryTimeout must be more than zero".into());
        }
        let others = self
            .retries
            .values()
            .filter(|o| {
                o.value.metadata.name < m.name
                    && o.value.metadata.ns() == ns
                    && o.value.spec.source.name == spec.source.name
                    && o.value.spec.source.namespace.as_deref().unwrap_or(ns)
                        == spec.source.namespace.as_deref().unwrap_or(ns)
                    && o.value
                        .spec
                        .destinations
                        .iter()
                        .any(|d| spec.destinations.contains(d))
            })
            .count();
        if others > 0 {
            error("another Retry already covers a destination of this source".into());
        }
    }

    fn check_upstream_traffic_setting(
        &self,
        u: &Located<UpstreamTrafficSetting>,
        errors: &mut Vec<ManifestError>,
    ) {
        let m = &u.value.metadata;
        let name = format!("UpstreamTrafficSetting {}/{}", m.ns(), m.name);
        let mut error =
            |e: String| errors.push(ManifestError::at(&u.origin, format!("{name}: {e}")));
        let spec = &u.value.spec;
        match self.service_of_host(&spec.host) {
            None => error(format!(
                "host `{}` is not a service of the mesh (`<name>.<namespace>.svc.cluster.local`)",
                spec.host
            )),
            Some(svc) => {
                let taken = self.upstream_traffic_settings.values().any(|o| {
                    o.value.metadata.name < m.name
                        && self
                            .service_of_host(&o.value.spec.host)
                            .is_some_and(|s| s.metadata == svc.metadata)
                });
                if taken {
                    error(format!(
                        "another UpstreamTrafficSetting already names `{}`",
                        spec.host
                    ));
                }
            }
        }
        if spec.rate_limit.is_some() {
            error("rateLimit is not supported yet".into());
        }
        if spec.http_routes.is_some() {
            error("httpRoutes is not supported yet".into());
        }
        if spec.connection_settings.http.max_retries.is_some() {
            error("connectionSettings.http.maxRetries is not supported yet".into());
        }
        let c = &spec.connection_settings;
        for (field, v) in [
            ("tcp.maxConnections", c.tcp.max_connections),
            ("http.maxPendingRequests", c.http.max_pending_requests),
            ("http.maxRequests", c.http.max_requests),
            (
                "http.maxRequestsPerConnection",
                c.http.max_requests_per_connection,
            ),
        ] {
            if v == Some(0) {
                error(format!("connectionSettings.{field} must be at least 1"));
            }
        }
    }

    /// The service `host` names: `<name>.<ns>.svc.cluster.local`, `<name>.<ns>.svc` or
    /// `<name>.<ns>`.
    pub fn service_of_host(&self, host: &str) -> Option<&Service> {
        let short = host
            .strip_suffix(".svc.cluster.local")
            .or_else(|| host.strip_suffix(".svc"))
            .unwrap_or(host);
        let (name, ns) = short.split_once('.')?;
        self.services
            .get(&(ns.to_string(), name.to_string()))
            .map(|s| &s.value)
    }

    /// The `UpstreamTrafficSetting` for service `svc`, if one names it.
    pub fn upstream_traffic_setting_for(
        &self,
        svc: &Service,
    ) -> Option<&UpstreamTrafficSettingSpec> {
        self.upstream_traffic_settings.values().find_map(|u| {
            self.service_of_host(&u.value.spec.host)
                .filter(|s| s.metadata == svc.metadata)
                .map(|_| &u.value.spec)
        })
    }

    /// The retry policy for calls from account `(ns, sa)` to service `svc`, if a `Retry`
    /// names them.
    pub fn retry_for(&self, source: (&str, &str), svc: &Service) -> Option<&RetryPolicy> {
        self.retries.values().find_map(|r| {
            let rns = r.value.metadata.ns();
            let s = &r.value.spec.source;
            let from = (s.namespace.as_deref().unwrap_or(rns), s.name.as_str());
            (from == source
                && r.value.spec.destinations.iter().any(|d| {
                    d.namespace.as_deref().unwrap_or(rns) == svc.metadata.ns()
                        && d.name == svc.metadata.name
                }))
            .then_some(&r.value.spec.retry_policy)
        })
    }

    fn check_traffic_split(&self, sp: &Located<TrafficSplit>, errors: &mut Vec<ManifestError>) {
        let m = &sp.value.metadata;
        let ns = m.ns();
        let name = format!("TrafficSplit {ns}/{}", m.name);
        let has_svc = |svc: &str| {
            self.services
                .contains_key(&(ns.to_string(), svc.to_string()))
        };
        if !has_svc(&sp.value.spec.service) {
            errors.push(ManifestError::at(
                &sp.origin,
                format!(
                    "{name}: root service `{}` is not defined in `{ns}`",
                    sp.value.spec.service
                ),
            ));
        }
        if sp.value.spec.backends.is_empty() {
            errors.push(ManifestError::at(
                &sp.origin,
                format!("{name}: no backends"),
            ));
        } else if sp.value.spec.backends.iter().all(|b| b.weight == 0) {
            errors.push(ManifestError::at(
                &sp.origin,
                format!("{name}: every weight is zero"),
            ));
        }
        let mut seen = BTreeSet::new();
        for b in &sp.value.spec.backends {
            if !has_svc(&b.service) {
                errors.push(ManifestError::at(
                    &sp.origin,
                    format!(
                        "{name}: backend service `{}` is not defined in `{ns}`",
                        b.service
                    ),
                ));
            }
            if !seen.insert(b.service.as_str()) {
                errors.push(ManifestError::at(
                    &sp.origin,
                    format!("{name}: backend `{}` is listed twice", b.service),
                ));
            }
        }
        let others = self
            .traffic_splits
            .values()
            .filter(|o| {
                o.value.metadata.ns() == ns
                    && o.value.spec.service == sp.value.spec.service
                    && o.value.metadata.name < m.name
                    && o.value.spec.matches.is_empty()
                    && sp.value.spec.matches.is_empty()
            })
            .count();
        if others > 0 {
            errors.push(ManifestError::at(
                &sp.origin,
                format!(
                    "{name}: another TrafficSplit already splits `{}`",
                    sp.value.spec.service
                ),
            ));
        }
    }

    fn check_plugins(&self, errors: &mut Vec<ManifestError>) {
        for c in self.plugin_chains.values() {
            let m = &c.value.metadata;
            for chain in &c.value.spec.chains {
                if !PLUGIN_CHAINS.contains(&chain.name.as_str()) {
                    errors.push(ManifestError::at(
                        &c.origin,
                        format!(
                            "PluginChain {}/{}: chain `{}` is not one of {}",
                            m.ns(),
                            m.name,
                            chain.name,
                            PLUGIN_CHAINS.join(", ")
                        ),
                    ));
                }
                for p in &chain.plugins {
                    if !self.plugins.keys().any(|(_, n)| n == p) {
                        errors.push(ManifestError::at(
                            &c.origin,
                            format!(
                                "PluginChain {}/{}: plugin `{p}` is not defined",
                                m.ns(),
                                m.name
                            ),
                        ));
                    }
                }
            }
        }
        for c in self.plugin_configs.values() {
            let m = &c.value.metadata;
            if !self.plugins.keys().any(|(_, n)| *n == c.value.spec.plugin) {
                errors.push(ManifestError::at(
                    &c.origin,
                    format!(
                        "PluginConfig {}/{}: plugin `{}` is not defined",
                        m.ns(),
                        m.name,
                        c.value.spec.plugin
                    ),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::path::Path;

    use super::*;
    use crate::load::parse_manifests;

    fn build(text: &str) -> Result<MeshState, Vec<ManifestError>> {
        MeshState::build(parse_manifests(text, Path::new("m.yaml")).unwrap())
    }

    fn first_error(text: &str) -> ManifestError {
        build(text).unwrap_err().remove(0)
    }

    const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata: { name: a, namespace: ns }\nspec: { ports: [{ port: 80 }] }\n";
    const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: { name: ns }\n";

    #[test]
    fn objects_in_undeclared_namespaces_are_refused() {
        let e = first_error(SVC);
        assert!(e.message.contains("namespace `ns` is not defined"), "{e}");
        assert!(build(&format!("{NS}---\n{SVC}")).is_ok());
    }

    #[test]
    fn duplicates_name_the_first_definition() {
        let e = first_error(&format!("{NS}---\n{SVC}---\n{SVC}"));
        assert_eq!(e.line, 10, "{e}");
        assert!(e.message.contains("also defined at m.yaml:5"), "{e}");
    }

    #[test]
    fn splits_need_their_services_and_a_weight() {
        let split = "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata: { name: s, namespace: ns }\nspec:\n  service: a\n  backends: [{ service: a, weight: 1 }, { service: b, weight: 0 }]\n";
        let e = first_error(&format!("{NS}---\n{SVC}---\n{split}"));
        assert!(
            e.message.contains("backend service `b` is not defined"),
            "{e}"
        );
        let zero = split
            .replace("weight: 1", "weight: 0")
            .replace(", { service: b, weight: 0 }", "");
        let e = first_error(&format!("{NS}---\n{SVC}---\n{zero}"));
        assert!(e.message.contains("every weight is zero"), "{e}");
    }

    #[test]
    fn one_mesh_config_and_a_valid_trust_domain() {
        let mc = "apiVersion: config.flowgate.io/v1alpha1\nkind: MeshConfig\nmetadata: { name: m }\nspec: { certificate: { trustDomain: \"bad domain\" } }\n";
        let e = first_error(mc);
        assert_eq!(e.line, 1, "{e}");
        assert!(e.message.contains("trustDomain"), "{e}");
        let good = mc.replace("bad domain", "mesh.example");
        let e = first_error(&format!("{good}---\n{good}"));
        assert!(e.message.contains("a second MeshConfig"), "{e}");
        let s = build(&good).unwrap();
        assert_eq!(s.spiffe_id("a", "b"), "spiffe://mesh.example/ns/a/sa/b");
    }

    #[test]
    fn plugin_chains_name_known_chains_and_plugins() {
        let p = "apiVersion: plugin.flomesh.io/v1alpha1\nkind: Plugin\nmetadata: { name: logger }\nspec: { priority: 10, script: \"log()\" }\n";
        let chain = "apiVersion: plugin.flomesh.io/v1alpha1\nkind: PluginChain\nmetadata: { name: c }\nspec:\n  chains: [{ name: inbound-http, plugins: [logger] }]\n";
        assert!(build(&format!("{p}---\n{chain}")).is_ok());
        let e = first_error(&format!(
            "{p}---\n{}",
            chain.replace("inbound-http", "sideways")
        ));
        assert!(e.message.contains("chain `sideways`"), "{e}");
        let e = first_error(&format!(
            "{p}---\n{}",
            chain.replace("[logger]", "[tracer]")
        ));
        assert!(e.message.contains("plugin `tracer` is not defined"), "{e}");
        let cfg = "apiVersion: plugin.flomesh.io/v1alpha1\nkind: PluginConfig\nmetadata: { name: pc }\nspec: { plugin: logger, config: { level: debug, fields: [a, b] } }\n";
        let s = build(&format!("{p}---\n{cfg}")).unwrap();
        let stored = &s.plugin_configs[&("default".to_string(), "pc".to_string())];
        let text = &stored.value.spec.config.as_ref().unwrap().0;
        assert!(text.contains("\"level\": \"debug\""), "{text}");
    }
}
