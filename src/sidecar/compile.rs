//! A [`SidecarConfig`] (the accepted subset of xDS) compiled into a Flowgate configuration
//! file: the same listeners and pipelines a hand-written `flowgate run` file would hold,
//! plus the PEM files it names. What the filters cannot do is refused with the resource and
//! the reason (the NACK's message); nothing is half compiled.
//!
//! | xDS | pipelines |
//! |---|---|
//! | a listener with TLS filter chains | `accept-tls` (the chains' certificate; client certificates checked against the roots), then a `branch` by server name and ALPN to each chain; the default chain takes the rest, else the connection is closed |
//! | a listener with one plaintext chain | that chain |
//! | pinned peer SANs, network RBAC | a `branch` on the peer's verified identity, decided when the connection starts; others are closed |
//! | `http_connection_manager` | `demux-http` (HTTP/1.1 and HTTP/2; an upstream that failed before answering gets 503, as from Envoy), HTTP `rbac`, then the route table |
//! | a route table | a `route` by authority in Envoy's order (exact domains, then `*.suffix` longest first, then `*`), then per virtual host a `route` by path; no match: 404 |
//! | a route | `timeout` (Envoy's default 15 s), `retry` (`num_retries` + 1 tries, the per-try timeout, the statuses `5xx`, `gateway-error` and `retriable-status-codes` name, the back-off), then the cluster, a weighted `route` split, or `respond` |
//! | an HTTP cluster | `balance-http` over its endpoints (weights, the policy, outlier detection, circuit breakers — connections, pending and requests, Envoy's 1024 where absent —, requests per connection, upstream TLS checked by identity); no endpoints: 503 |
//! | `tcp_proxy` | `connect` (through `connect-tls` with upstream TLS); no endpoints: closed |

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::time::Duration;

use flowgate_mesh::xds::subset::{
    Action, App, ChainSpec, ClusterSpec, Lb, ListenerSpec, PathMatch, Perm, RbacSpec, RouteTable,
    Routes, SecretSpec, SidecarConfig, Text, Who,
};
use serde_json::{Value, json};

/// A compiled configuration: the file and the files it names.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Compiled {
    /// The configuration file's text (JSON, which YAML reads as it is).
    pub config: String,
    /// How many listeners it has (none: nothing to serve yet).
    pub listeners: usize,
    /// Files the configuration names, by path relative to its directory, with their
    /// contents (certificates, keys, roots: named by a hash of their contents, so a
    /// changed secret is a new file and a changed configuration).
    pub files: BTreeMap<String, String>,
}

/// What the sidecar adds to what the controller sent.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The sidecar's own certificate chain and key (from its CSR): used wherever a TLS
    /// context names a certificate secret, instead of the secret's contents.
    pub certificate: Option<(String, String)>,
    /// Worker threads (`None`: one per CPU).
    pub workers: Option<usize>,
    /// How long shutdown waits for live connections.
    pub drain_timeout: Option<Duration>,
}

/// Envoy's default route timeout.
const ROUTE_TIMEOUT: Duration = Duration::from_secs(15);
/// At most this many conjunctions once an RBAC permission is expanded.
const MAX_RBAC_TERMS: usize = 1024;
/// The pipeline answering requests no route takes.
const NOT_FOUND: &str = "respond:404";

struct Out<'a> {
    input: &'a SidecarConfig,
    opts: &'a Options,
    pipelines: BTreeMap<String, Value>,
    files: BTreeMap<String, String>,
}

/// Compiles `config`, or says which resource the filters cannot serve and why. Clusters
/// not received yet are answered 503 (HTTP) or closed (TCP), as Envoy does while they
/// warm; no listeners is an empty document (nothing served).
pub fn compile(config: &SidecarConfig, opts: &Options) -> Result<Compiled, String> {
    let mut out = Out {
        input: config,
        opts,
        pipelines: BTreeMap::new(),
        files: BTreeMap::new(),
    };
    let mut listeners = Vec::new();
    for (name, l) in &config.listeners {
        let pipeline = out
            .listener(name, l)
            .map_err(|e| format!("listener `{name}`: {e}"))?;
        let mut listener = json!({ "listen": l.address.to_string(), "pipeline": pipeline });
        if l.original_dst {
            // Captured connections: their original destination (`SO_ORIGINAL_DST`).
            listener["transparent"] = json!(true);
        }
        listeners.push(listener);
    }
    let count = listeners.len();
    let mut doc = json!({ "listeners": listeners, "pipelines": out.pipelines });
    if let Some(w) = opts.workers {
        doc["workers"] = json!(w);
    }
    if let Some(d) = opts.drain_timeout {
        doc["drain_timeout"] = json!(duration(d));
    }
    let config = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
    Ok(Compiled {
        config,
        listeners: count,
        files: out.files,
    })
}

fn duration(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}

/// The length of a chain's longest destination prefix (`None`: it has none).
fn longest_prefix(c: &ChainSpec) -> Option<u8> {
    c.destination_prefixes
        .iter()
        .filter_map(|p| p.rsplit_once('/').and_then(|(_, l)| l.parse().ok()))
        .max()
}

/// A whole-string regex for `t`.
fn regex_of(t: &Text) -> String {
    match t {
        Text::Exact(s) => regex::escape(s),
        Text::Prefix(s) => format!("{}.*", regex::escape(s)),
        Text::Suffix(s) => format!(".*{}", regex::escape(s)),
        Text::Regex(r) => r.clone(),
        Text::Present => ".*".into(),
    }
}

impl Out<'_> {
    fn add(&mut self, name: String, filters: Value) -> String {
        self.pipelines.insert(name.clone(), filters);
        name
    }

    /// Writes `contents` as a file named by its hash; returns the name.
    fn file(&mut self, kind: &str, contents: &str) -> String {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        contents.hash(&mut h);
        let name = format!("secrets/{kind}-{:016x}.pem", h.finish());
        self.files.insert(name.clone(), contents.to_string());
        name
    }

    /// The certificate and key files of secret `name`.
    fn certificate(&mut self, name: &str) -> Result<Value, String> {
        let (chain, key) = match (&self.opts.certificate, self.input.secrets.get(name)) {
            (Some((c, k)), _) => (c.clone(), k.clone()),
            (None, Some(SecretSpec::Certificate { chain, key })) => (chain.clone(), key.clone()),
            (None, Some(SecretSpec::Roots(_))) => {
                return Err(format!("secret `{name}` holds roots, not a certificate"));
            }
            (None, None) => return Err(format!("secret `{name}` is missing")),
        };
        Ok(json!({ "cert": self.file("cert", &chain), "key": self.file("key", &key) }))
    }

    /// The roots file of secret `name`.
    fn roots(&mut self, name: &str) -> Result<String, String> {
        match self.input.secrets.get(name) {
            Some(SecretSpec::Roots(pem)) => Ok(self.file("roots", pem)),
            Some(SecretSpec::Certificate { .. }) => {
                Err(format!("secret `{name}` holds a certificate, not roots"))
            }
            None => Err(format!("secret `{name}` is missing")),
        }
    }

    fn listener(&mut self, name: &str, l: &ListenerSpec) -> Result<String, String> {
        let port = l.address.port();
        // Without capture a connection's destination is the listener's own address: a
        // chain for another port never matches.
        let mut chains: Vec<&ChainSpec> = l
            .chains
            .iter()
            .filter(|c| l.original_dst || c.destination_port.is_none_or(|p| p == port))
            .collect();
        // The most specific chain first, as Envoy matches them: destination port, then
        // the longest destination prefix, then server names, then ALPN (a stable sort:
        // the chains' order among equals).
        chains.sort_by_key(|c| {
            (
                c.destination_port.is_none(),
                std::cmp::Reverse(longest_prefix(c)),
                c.server_names.is_empty(),
                c.alpn.is_empty(),
            )
        });
        let all: Vec<&ChainSpec> = chains.iter().copied().chain(&l.default_chain).collect();
        let Some(first) = all.first() else {
            return Err("no filter chain".into());
        };
        let tls = first.tls.clone();
        if all.iter().any(|c| {
            c.tls
                .as_ref()
                .map(|t| (&t.cert_secret, &t.roots_secret, t.require_client_cert))
                != tls
                    .as_ref()
                    .map(|t| (&t.cert_secret, &t.roots_secret, t.require_client_cert))
        }) {
            return Err(
                "filter chains with different TLS certificates, roots or client \
                 certificate requirements on one listener are not supported"
                    .into(),
            );
        }
        let base = format!("listener:{name}");
        let mut bodies = Vec::new();
        for (i, c) in all.iter().enumerate() {
            let chain_name = if c.name.is_empty() {
                format!("{base}/{i}")
            } else {
                format!("{base}/{}", c.name)
            };
            bodies.push(
                self.chain(&chain_name, c, port)
                    .map_err(|e| format!("filter chain `{}`: {e}", c.name))?,
            );
        }
        if tls.is_none()
            && all
                .iter()
                .any(|c| !c.server_names.is_empty() || !c.alpn.is_empty())
        {
            return Err("server names or ALPN on a plaintext filter chain (TLS \
                 passthrough) are not supported"
                .into());
        }
        // A branch by destination (captured connections), server name and ALPN, decided
        // as the connection starts (after the handshake, with TLS).
        let mut arms = Vec::new();
        for (c, body) in chains.iter().zip(&bodies) {
            let ports: Option<u16> = c.destination_port.filter(|_| l.original_dst);
            let prefixes: Vec<Option<&String>> = if c.destination_prefixes.is_empty() {
                vec![None]
            } else {
                c.destination_prefixes.iter().map(Some).collect()
            };
            let names: Vec<Option<&String>> = if c.server_names.is_empty() {
                vec![None]
            } else {
                c.server_names.iter().map(Some).collect()
            };
            let alpns: Vec<Option<&String>> = if c.alpn.is_empty() {
                vec![None]
            } else {
                c.alpn.iter().map(Some).collect()
            };
            for d in &prefixes {
                for n in &names {
                    for a in &alpns {
                        let mut when = json!({});
                        if let Some(p) = ports {
                            when["destination_port"] = json!(p);
                        }
                        if let Some(d) = d {
                            when["destination"] = json!(d);
                        }
                        if let Some(n) = n {
                            when["sni"] = json!(n);
                        }
                        if let Some(a) = a {
                            when["alpn"] = json!(a);
                        }
                        arms.push(json!({ "when": when, "pipeline": body }));
                    }
                }
            }
        }
        let default = l.default_chain.as_ref().and(bodies.last());
        let Some(tls) = tls else {
            // Plaintext: one chain that takes everything is the listener's pipeline.
            if all.len() == 1 && arms.len() == 1 && arms[0]["when"] == json!({}) {
                return Ok(bodies.swap_remove(0));
            }
            if default.is_some() && chains.is_empty() {
                return Ok(bodies.swap_remove(0));
            }
            let mut branch = json!({ "arms": arms, "refuse_others": true, "on_start": true });
            if let Some(d) = default {
                branch["otherwise"] = json!(d);
            }
            return Ok(self.add(base, json!([{ "branch": branch }])));
        };
        // TLS terminated here, then the branch.
        let mut branch = json!({ "arms": arms, "refuse_others": true, "on_start": true });
        if let Some(d) = default {
            branch["otherwise"] = json!(d);
        }
        let select = self.add(format!("{base}/select"), json!([{ "branch": branch }]));
        let mut accept = json!({
            "pipeline": select,
            "certificates": [self.certificate(&tls.cert_secret)?],
        });
        if let Some(roots) = &tls.roots_secret {
            accept["client_auth"] =
                json!({ "ca": self.roots(roots)?, "required": tls.require_client_cert });
        } else if tls.require_client_cert {
            return Err("a client certificate is required but no roots check it".into());
        }
        Ok(self.add(base, json!([{ "accept-tls": accept }])))
    }

    /// One chain's pipeline.
    fn chain(&mut self, name: &str, c: &ChainSpec, port: u16) -> Result<String, String> {
        let mut body = match &c.app {
            App::None => return Err("no terminal filter".into()),
            App::Tcp { cluster } => self.tcp_cluster(cluster)?,
            App::Http { routes, rbac } => {
                let table = match routes {
                    Routes::Rds(r) => self.route_table(&format!("routes:{r}"), r, None)?,
                    Routes::Inline(t) => {
                        self.route_table(&format!("{name}/routes"), name, Some(t))?
                    }
                };
                let mut request = table;
                if let Some(rbac) = rbac {
                    let config = http_rbac(rbac, &request, port)?;
                    request = self.add(format!("{name}/rbac"), json!([{ "rbac": config }]));
                }
                self.add(
                    format!("{name}/http"),
                    json!([{ "demux-http": {
                        "pipeline": request,
                        "http2": { "enabled": true },
                        // Envoy's answer to an upstream that failed before answering.
                        "upstream_failure_status": 503,
                    } }]),
                )
            }
        };
        // Who may connect: the network RBAC filter's principals, then the pinned SANs.
        if let Some(rbac) = &c.rbac {
            let ids = network_principals(rbac, port)?;
            // Anyone (`any`) includes connections without a verified identity.
            if ids != ["*"] {
                body = self.admit(format!("{name}/network-rbac"), ids, body);
            }
        }
        if let Some(tls) = &c.tls
            && !tls.allowed_sans.is_empty()
        {
            body = self.admit(format!("{name}/peers"), tls.allowed_sans.clone(), body);
        }
        Ok(body)
    }

    /// A pipeline passing connections from `ids` (none: nobody) to `next`, closing others.
    fn admit(&mut self, name: String, ids: Vec<String>, next: String) -> String {
        let arms: Vec<Value> = if ids.is_empty() {
            Vec::new()
        } else {
            vec![json!({ "when": { "identities": ids }, "pipeline": next })]
        };
        self.add(
            name,
            json!([{ "branch": { "arms": arms, "refuse_others": true, "on_start": true } }]),
        )
    }

    /// The pipeline of route table `name` (RDS `table`, or `inline`).
    fn route_table(
        &mut self,
        name: &str,
        table: &str,
        inline: Option<&RouteTable>,
    ) -> Result<String, String> {
        if self.pipelines.contains_key(name) {
            return Ok(name.to_string());
        }
        let t = match inline {
            Some(t) => t.clone(),
            None => self
                .input
                .routes
                .get(table)
                .cloned()
                .ok_or_else(|| format!("route configuration `{table}` is missing"))?,
        };
        self.add(
            NOT_FOUND.into(),
            json!([{ "respond": { "status": 404, "body": "" } }]),
        );
        // Envoy picks a virtual host by domain: exact names first, then `*.suffix` from
        // the longest suffix, then `*`.
        let mut exact = Vec::new();
        let mut suffix = Vec::new();
        let mut any = Vec::new();
        for (i, vh) in t.virtual_hosts.iter().enumerate() {
            let pipeline = self
                .virtual_host(&format!("{name}/{i}"), &vh.routes)
                .map_err(|e| {
                    format!(
                        "route configuration `{table}`, virtual host `{}`: {e}",
                        vh.name
                    )
                })?;
            for d in &vh.domains {
                if d == "*" {
                    any.push((d.clone(), pipeline.clone()));
                } else if let Some(s) = d.strip_prefix("*.") {
                    suffix.push((s.len(), d.clone(), pipeline.clone()));
                } else if d.contains('*') {
                    return Err(format!(
                        "route configuration `{table}`, virtual host `{}`: domain `{d}`: only \
                         exact names, `*.suffix` and `*` are supported",
                        vh.name
                    ));
                } else {
                    exact.push((d.clone(), pipeline.clone()));
                }
            }
        }
        suffix.sort_by_key(|s| std::cmp::Reverse(s.0));
        let routes: Vec<Value> = exact
            .into_iter()
            .chain(suffix.into_iter().map(|(_, d, p)| (d, p)))
            .chain(any)
            .map(|(d, p)| json!({ "match": { "authority": d }, "pipeline": p }))
            .collect();
        Ok(self.add(
            name.to_string(),
            json!([{ "route": { "routes": routes, "default": NOT_FOUND } }]),
        ))
    }

    fn virtual_host(
        &mut self,
        name: &str,
        routes: &[flowgate_mesh::xds::subset::RouteSpec],
    ) -> Result<String, String> {
        let mut entries = Vec::new();
        for (i, r) in routes.iter().enumerate() {
            let when = match &r.path {
                PathMatch::Exact(p) => json!({ "path": p }),
                // Envoy's prefix is a string prefix; the route filter's `path_prefix` is on
                // whole segments unless it ends with `/`.
                PathMatch::Prefix(p) if p.is_empty() || p.ends_with('/') => {
                    json!({ "path_prefix": if p.is_empty() { "/" } else { p } })
                }
                PathMatch::Prefix(p) => json!({ "path_regex": format!("{}.*", regex::escape(p)) }),
                PathMatch::Regex(re) => json!({ "path_regex": re }),
            };
            let target = self.route_target(&format!("{name}/{i}"), r)?;
            entries.push(json!({ "match": when, "pipeline": target }));
        }
        Ok(self.add(
            name.to_string(),
            json!([{ "route": { "routes": entries, "default": NOT_FOUND } }]),
        ))
    }

    /// A route's pipeline: its timeout and retries around where it goes.
    fn route_target(
        &mut self,
        name: &str,
        r: &flowgate_mesh::xds::subset::RouteSpec,
    ) -> Result<String, String> {
        let mut next = match &r.action {
            Action::Direct { status, body } => self.add(
                format!("{name}/respond"),
                json!([{ "respond": { "status": status, "body": body } }]),
            ),
            Action::Cluster(c) => self.http_cluster(c)?,
            Action::Weighted(split) => {
                let mut arms = Vec::new();
                for (c, w) in split.iter().filter(|(_, w)| *w > 0) {
                    arms.push(json!({ "pipeline": self.http_cluster(c)?, "weight": w }));
                }
                if arms.is_empty() {
                    return Err("weighted clusters with no weight".into());
                }
                self.add(
                    format!("{name}/split"),
                    json!([{ "route": { "routes": [{ "match": {}, "split": arms }] } }]),
                )
            }
        };
        if matches!(r.action, Action::Direct { .. }) {
            return Ok(next);
        }
        let timeout = r.timeout.unwrap_or(ROUTE_TIMEOUT);
        if let Some(retry) = &r.retry {
            let on = |c: &str| retry.retry_on.iter().any(|x| x == c);
            // `gateway-error`: 502–504; `5xx`: any 5xx; `retriable-status-codes`: the
            // listed ones. Resets and refused connections are retried in every case (the
            // filter's own rule), where Envoy needs `reset` or `connect-failure` for them.
            let mut statuses: Vec<String> = Vec::new();
            if on("5xx") {
                statuses.push("5xx".into());
            }
            if on("retriable-status-codes") {
                statuses.extend(retry.status_codes.iter().map(u16::to_string));
            }
            let per_try =
                retry
                    .per_try_timeout
                    .filter(|d| !d.is_zero())
                    .unwrap_or(if timeout.is_zero() {
                        Duration::from_secs(3600)
                    } else {
                        timeout
                    });
            let mut config = json!({
                "pipeline": next,
                "tries": retry.num_retries.saturating_add(1),
                "per_try_timeout": duration(per_try),
                "on_5xx": on("gateway-error"),
                "on_status": statuses,
                // Envoy retries every method.
                "methods": ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE", "POST", "PATCH"],
            });
            if let Some(b) = retry.backoff {
                config["backoff"] = json!(duration(b));
            }
            next = self.add(format!("{name}/retry"), json!([{ "retry": config }]));
        }
        if !timeout.is_zero() {
            next = self.add(
                format!("{name}/timeout"),
                json!([{ "timeout": { "pipeline": next, "head": duration(timeout), "total": duration(timeout) } }]),
            );
        }
        Ok(next)
    }

    /// Cluster `name`; `None` while it has not arrived (Envoy answers 503, or closes a
    /// TCP connection, until it does).
    fn cluster(&self, name: &str) -> Option<ClusterSpec> {
        self.input.clusters.get(name).cloned()
    }

    /// The balancer settings of a cluster.
    fn balance(c: &ClusterSpec) -> Value {
        let weighted = c.endpoints.iter().any(|(_, w)| *w != 1);
        let algorithm = match c.lb {
            Lb::RoundRobin if weighted => "weighted_round_robin",
            Lb::RoundRobin => "round_robin",
            Lb::LeastRequest => "least_request",
            Lb::RingHash => "ring_hash",
            Lb::Maglev => "maglev",
            Lb::Random => "random",
        };
        let mut b = json!({ "algorithm": algorithm });
        if let Some((n, base)) = c.outlier {
            b["outlier"] = json!({ "consecutive_5xx": n, "base_ejection_time": duration(base) });
        }
        b
    }

    /// A cluster's circuit breaker as `balance-http` takes it: Envoy's thresholds, its
    /// defaults (1024) for the absent ones. `max_retries` is not enforced: refused below
    /// 1024 (what control planes set to mean "no limit" passes).
    fn circuit_breaker(name: &str, c: &ClusterSpec) -> Result<Option<Value>, String> {
        let Some(cb) = &c.circuit else {
            return Ok(None);
        };
        if cb.max_retries.is_some_and(|n| n < 1024) {
            return Err(format!(
                "cluster `{name}`: circuit_breakers max_retries below 1024 is not supported"
            ));
        }
        Ok(Some(json!({
            "max_connections": cb.max_connections.unwrap_or(1024),
            "max_pending": cb.max_pending_requests.unwrap_or(1024),
            "max_requests": cb.max_requests.unwrap_or(1024),
        })))
    }

    /// An HTTP cluster's pipeline.
    fn http_cluster(&mut self, name: &str) -> Result<String, String> {
        let pipeline = format!("cluster:{name}");
        if self.pipelines.contains_key(&pipeline) {
            return Ok(pipeline);
        }
        let Some(c) = self.cluster(name) else {
            return Ok(self.add(
                pipeline,
                json!([{ "respond": { "status": 503, "body": "cluster not found" } }]),
            ));
        };
        let breaker = Self::circuit_breaker(name, &c)?;
        if c.endpoints.is_empty() {
            return Ok(self.add(
                pipeline,
                json!([{ "respond": { "status": 503, "body": "no healthy upstream" } }]),
            ));
        }
        let endpoints: Vec<Value> = c
            .endpoints
            .iter()
            .map(|(a, w)| json!({ "address": a.to_string(), "weight": w }))
            .collect();
        let mut balance = json!({
            "endpoints": endpoints,
            "balance": Self::balance(&c),
            "protocol": "http1",
        });
        if let Some(t) = c.connect_timeout.filter(|t| !t.is_zero()) {
            balance["connect_timeout"] = json!(duration(t));
        }
        if let Some(b) = breaker {
            balance["circuit_breaker"] = b;
        }
        if let Some(n) = c.max_requests_per_connection.filter(|n| *n > 0) {
            balance["max_requests"] = json!(n);
        }
        if let Some(tls) = &c.tls {
            balance["tls"] = self
                .upstream_tls(tls)
                .map_err(|e| format!("cluster `{name}`: {e}"))?;
        }
        Ok(self.add(pipeline, json!([{ "balance-http": balance }])))
    }

    /// Upstream TLS as `connect-tls` and `balance-http` take it: the server checked by
    /// the roots and by its SPIFFE ID when SANs are pinned (any identity the roots signed
    /// otherwise, as Envoy without SAN matchers), the sidecar's certificate presented.
    fn upstream_tls(
        &mut self,
        tls: &flowgate_mesh::xds::subset::UpstreamTls,
    ) -> Result<Value, String> {
        let mut v = json!({});
        if !tls.sni.is_empty() {
            v["sni"] = json!(tls.sni);
        }
        match &tls.roots_secret {
            Some(r) => {
                v["ca"] = json!(self.roots(r)?);
                v["identities"] = if tls.allowed_sans.is_empty() {
                    json!(["*"])
                } else {
                    json!(tls.allowed_sans)
                };
            }
            // Envoy does not check a server without a validation context.
            None => v["verify"] = json!(false),
        }
        if let Some(cert) = &tls.cert_secret {
            v["client_cert"] = self.certificate(cert)?;
        }
        Ok(v)
    }

    /// A TCP cluster's pipeline.
    fn tcp_cluster(&mut self, name: &str) -> Result<String, String> {
        let pipeline = format!("tcp:{name}");
        if self.pipelines.contains_key(&pipeline) {
            return Ok(pipeline);
        }
        let c = self.cluster(name).unwrap_or_default();
        if c.circuit.is_some() {
            return Err(format!(
                "cluster `{name}`: circuit breakers on a TCP cluster are not supported"
            ));
        }
        if c.endpoints.is_empty() {
            // Not arrived, or no endpoints: the connection is closed.
            return Ok(self.add(
                pipeline,
                json!([{ "branch": { "arms": [], "refuse_others": true, "on_start": true } }]),
            ));
        }
        let endpoints: Vec<String> = c.endpoints.iter().map(|(a, _)| a.to_string()).collect();
        let mut connect = json!({ "endpoints": endpoints, "balance": Self::balance(&c) });
        if let Some(t) = c.connect_timeout.filter(|t| !t.is_zero()) {
            connect["connect_timeout"] = json!(duration(t));
        }
        let Some(tls) = &c.tls else {
            return Ok(self.add(pipeline, json!([{ "connect": connect }])));
        };
        let mut tls = self
            .upstream_tls(tls)
            .map_err(|e| format!("cluster `{name}`: {e}"))?;
        let up = self.add(format!("{pipeline}/up"), json!([{ "connect": connect }]));
        tls["pipeline"] = json!(up);
        Ok(self.add(pipeline, json!([{ "connect-tls": tls }])))
    }
}

/// The principals of a policy as the filters name them: exact identities, or `*`.
fn principals(who: &[Who], policy: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for w in who {
        match w {
            Who::Any => out.push("*".to_string()),
            Who::Authenticated(Text::Exact(id)) => out.push(id.clone()),
            Who::Or(more) => out.extend(principals(more, policy)?),
            other => {
                return Err(format!(
                    "RBAC policy `{policy}`: principal {other:?} is not supported (exact \
                     authenticated names, `any`, or sets of them)"
                ));
            }
        }
    }
    Ok(out)
}

/// One conjunction of permission parts.
#[derive(Clone, Debug, Default)]
struct Term {
    methods: Option<BTreeSet<String>>,
    path: Option<Value>,
    headers: Vec<(String, String)>,
}

impl Term {
    /// Both `self` and `other`; `None` when nothing can match both.
    fn and(&self, other: &Term) -> Result<Option<Term>, String> {
        let methods = match (&self.methods, &other.methods) {
            (Some(a), Some(b)) => {
                let both: BTreeSet<String> = a.intersection(b).cloned().collect();
                if both.is_empty() {
                    return Ok(None);
                }
                Some(both)
            }
            (a, b) => a.clone().or_else(|| b.clone()),
        };
        let path = match (&self.path, &other.path) {
            (Some(a), Some(b)) if a != b => {
                return Err("two different path matches in one permission".into());
            }
            (a, b) => a.clone().or_else(|| b.clone()),
        };
        let mut headers = self.headers.clone();
        for (name, re) in &other.headers {
            if headers.iter().any(|(n, _)| n == name) {
                return Err(format!("two matches on header `{name}` in one permission"));
            }
            headers.push((name.clone(), re.clone()));
        }
        Ok(Some(Term {
            methods,
            path,
            headers,
        }))
    }

    fn to_json(&self) -> Value {
        let mut v = json!({});
        if let Some(m) = &self.methods {
            v["methods"] = json!(m);
        }
        if let Some(o) = self.path.as_ref().and_then(Value::as_object) {
            for (k, x) in o {
                v[k] = x.clone();
            }
        }
        if !self.headers.is_empty() {
            let h: BTreeMap<&str, &str> = self
                .headers
                .iter()
                .map(|(k, x)| (k.as_str(), x.as_str()))
                .collect();
            v["headers"] = json!(h);
        }
        v
    }
}

/// `p` as a disjunction of conjunctions (any of the terms).
fn terms(p: &Perm, port: u16) -> Result<Vec<Term>, String> {
    let out = match p {
        Perm::Any => vec![Term::default()],
        Perm::Or(ps) => {
            let mut v = Vec::new();
            for p in ps {
                v.extend(terms(p, port)?);
            }
            v
        }
        Perm::And(ps) => {
            let mut acc = vec![Term::default()];
            for p in ps {
                let next = terms(p, port)?;
                if acc.len().saturating_mul(next.len()) > MAX_RBAC_TERMS {
                    return Err("the permission expands to too many cases".into());
                }
                let mut v = Vec::new();
                for a in &acc {
                    for b in &next {
                        if let Some(t) = a.and(b)? {
                            v.push(t);
                        }
                    }
                }
                acc = v;
            }
            acc
        }
        Perm::DestinationPort(p) if *p == port => vec![Term::default()],
        Perm::DestinationPort(_) => Vec::new(),
        Perm::Header(name, Text::Exact(m)) if name == ":method" => vec![Term {
            methods: Some(BTreeSet::from([m.clone()])),
            ..Default::default()
        }],
        Perm::Header(name, t) if name == ":path" => vec![path_term(t, true)],
        Perm::Path(t) => vec![path_term(t, false)],
        Perm::Header(name, t) if !name.starts_with(':') => vec![Term {
            headers: vec![(name.to_ascii_lowercase(), regex_of(t))],
            ..Default::default()
        }],
        other => return Err(format!("permission {other:?} is not supported")),
    };
    if out.len() > MAX_RBAC_TERMS {
        return Err("the permission expands to too many cases".into());
    }
    Ok(out)
}

/// A path condition (`:path` carries the query; the filter matches the path without it).
fn path_term(t: &Text, with_query: bool) -> Term {
    let tail = if with_query { "(\\?.*)?" } else { "" };
    let path = match t {
        Text::Exact(p) if !with_query => json!({ "path": p }),
        other => json!({ "path_regex": format!("{}{tail}", regex_of(other)) }),
    };
    Term {
        path: Some(path),
        ..Default::default()
    }
}

/// The `rbac` filter's configuration for `spec`, passing allowed requests to `next`.
fn http_rbac(spec: &RbacSpec, next: &str, port: u16) -> Result<Value, String> {
    let mut policies = serde_json::Map::new();
    for (name, p) in &spec.policies {
        let who = principals(&p.principals, name)?;
        let mut permissions = Vec::new();
        for perm in &p.permissions {
            permissions.extend(
                terms(perm, port)
                    .map_err(|e| format!("RBAC policy `{name}`: {e}"))?
                    .iter()
                    .map(Term::to_json),
            );
        }
        if who.is_empty() || permissions.is_empty() {
            continue; // matches nothing
        }
        policies.insert(
            name.clone(),
            json!({ "principals": who, "permissions": permissions }),
        );
    }
    Ok(json!({
        "pipeline": next,
        "action": if spec.deny { "deny" } else { "allow" },
        "policies": policies,
    }))
}

/// The identities a network RBAC filter lets connect: only `ALLOW` policies whose
/// permissions are any connection to this port.
fn network_principals(spec: &RbacSpec, port: u16) -> Result<Vec<String>, String> {
    if spec.deny {
        return Err("network RBAC with action DENY is not supported yet".into());
    }
    let mut ids = BTreeSet::new();
    for (name, p) in &spec.policies {
        let mut any = false;
        for perm in &p.permissions {
            for t in terms(perm, port).map_err(|e| format!("RBAC policy `{name}`: {e}"))? {
                if t.methods.is_some() || t.path.is_some() || !t.headers.is_empty() {
                    return Err(format!(
                        "network RBAC policy `{name}`: request permissions on a connection"
                    ));
                }
                any = true;
            }
        }
        if any {
            ids.extend(principals(&p.principals, name)?);
        }
    }
    if ids.contains("*") {
        return Ok(vec!["*".into()]);
    }
    Ok(ids.into_iter().collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use std::path::Path;
    use std::sync::Arc;

    use flowgate_mesh::ca::{Ca, SpiffeId};
    use flowgate_mesh::xds::Resources;
    use flowgate_mesh::xds::client::Received;
    use flowgate_mesh::xds::compile::{
        sidecar_resources, sidecar_secrets, sidecar_sets, sidecar_shared,
    };
    use flowgate_mesh::xds::subset::{ClusterSpec, PolicySpec, read};
    use flowgate_mesh::{MeshState, parse_manifests};

    use super::*;

    /// What the controller serves pod `ns/pod` (running as `sa`) of `state`, read.
    fn served(state: &MeshState, ns: &str, pod: &str, sa: &str) -> SidecarConfig {
        served_over(sidecar_shared(state), state, ns, pod, sa)
    }

    /// What pod `ns/pod` (account `sa`) is served over the shared resources `set`.
    fn served_over(
        set: Resources,
        state: &MeshState,
        ns: &str,
        pod: &str,
        sa: &str,
    ) -> SidecarConfig {
        let ca = Ca::generate("cluster.local", Duration::from_secs(3600)).unwrap();
        let leaf = ca
            .issue(&SpiffeId::new("cluster.local", ns, sa).unwrap())
            .unwrap();
        let mut r = Resources::default();
        r.extend(set);
        r.extend(sidecar_resources(state, ns, pod).unwrap());
        r.extend(sidecar_secrets(&leaf, &ca.bundle_pem()));
        read(&Received::from(&r)).unwrap()
    }

    /// `compiled` written to a fresh directory and built as a `flowgate run` file.
    fn builds(compiled: &Compiled) -> crate::config::Config {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "flowgate-sidecar-compile-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        for (name, text) in &compiled.files {
            let p = dir.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        let registry = Arc::new(crate::config::default_registry());
        let cfg = crate::config::parse(&compiled.config, "sidecar.json", &dir, &registry)
            .unwrap_or_else(|e| panic!("{e}\n{}", compiled.config));
        let _ = std::fs::remove_dir_all(&dir);
        cfg
    }

    const STRICT: &str = "apiVersion: config.flowgate.io/v1alpha1\nkind: MeshConfig\nmetadata: { name: mesh }\nspec: { traffic: { enablePermissiveTrafficPolicyMode: false } }\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: { name: client }\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: { name: web }\n---\napiVersion: v1\nkind: Service\nmetadata: { name: web }\nspec: { selector: { app: web }, ports: [{ name: http, port: 80, targetPort: 8080 }, { name: tcp-db, port: 5432 }] }\n---\napiVersion: v1\nkind: Pod\nmetadata: { name: web-1, labels: { app: web } }\nspec: { serviceAccountName: web }\nstatus: { podIP: 10.0.0.6 }\n---\napiVersion: v1\nkind: Pod\nmetadata: { name: client-1 }\nspec: { serviceAccountName: client }\nstatus: { podIP: 10.0.0.5 }\n---\napiVersion: specs.smi-spec.io/v1alpha4\nkind: HTTPRouteGroup\nmetadata: { name: g }\nspec: { matches: [{ name: m, pathRegex: '/books.*', methods: [GET], headers: { x-team: 'a.*' } }] }\n---\napiVersion: specs.smi-spec.io/v1alpha4\nkind: TCPRoute\nmetadata: { name: db }\nspec: { matches: { ports: [5432] } }\n---\napiVersion: access.smi-spec.io/v1alpha3\nkind: TrafficTarget\nmetadata: { name: t }\nspec:\n  destination: { kind: ServiceAccount, name: web }\n  rules: [{ kind: HTTPRouteGroup, name: g }, { kind: TCPRoute, name: db }]\n  sources: [{ kind: ServiceAccount, name: client }]\n";

    fn strict() -> MeshState {
        MeshState::build(parse_manifests(STRICT, Path::new("m.yaml")).unwrap()).unwrap()
    }

    #[test]
    fn what_the_controller_serves_compiles_into_pipelines_that_build() {
        let state = strict();
        let web = compile(
            &served(&state, "default", "web-1", "web"),
            &Options::default(),
        )
        .unwrap();
        let cfg = builds(&web);
        let mut addrs: Vec<String> = cfg
            .listeners
            .iter()
            .map(|(l, _)| l.listen.to_string())
            .collect();
        addrs.sort();
        assert_eq!(addrs, ["10.0.0.6:15001", "10.0.0.6:15006", "10.0.0.6:5432"]);
        let doc: Value = serde_json::from_str(&web.config).unwrap();
        let p = &doc["pipelines"];
        // Inbound: mTLS, then by server name; the TCP port admits only the allowed caller,
        // decided as the connection starts (the workload may speak first).
        let accept = &p["listener:inbound"][0]["accept-tls"];
        assert_eq!(accept["client_auth"]["required"], json!(true));
        let arms = &p["listener:inbound/select"][0]["branch"]["arms"];
        assert_eq!(
            arms[0]["when"]["sni"],
            json!("outbound_.80_._.web.default.svc.cluster.local")
        );
        let peers = &p["listener:inbound/inbound|5432/peers"][0]["branch"];
        assert_eq!(
            peers["arms"][0]["when"]["identities"],
            json!(["spiffe://cluster.local/ns/default/sa/client"])
        );
        assert_eq!(peers["on_start"], json!(true));
        assert_eq!(
            p["tcp:inbound|5432"][0]["connect"]["endpoints"],
            json!(["10.0.0.6:5432"])
        );
        // HTTP: the SMI match as the rbac filter's permission.
        let rbac = &p["listener:inbound/inbound|8080/rbac"][0]["rbac"];
        assert_eq!(rbac["action"], json!("allow"));
        let perm = &rbac["policies"]["default/t"]["permissions"][0];
        assert_eq!(perm["methods"], json!(["GET"]));
        assert_eq!(perm["path_regex"], json!("/books.*"));
        assert_eq!(perm["headers"]["x-team"], json!("a.*"));

        // The caller: outbound routes by authority to the mTLS cluster, checked by
        // identity, with the sidecar's certificate.
        let client = compile(
            &served(&state, "default", "client-1", "client"),
            &Options::default(),
        )
        .unwrap();
        builds(&client);
        let doc: Value = serde_json::from_str(&client.config).unwrap();
        let p = &doc["pipelines"];
        let hosts = &p["routes:outbound"][0]["route"]["routes"];
        assert_eq!(hosts[0]["match"]["authority"], json!("web.default:80"));
        let cluster = &p["cluster:outbound|80||web.default|mtls"][0]["balance-http"];
        assert_eq!(cluster["endpoints"][0]["address"], json!("10.0.0.6:15006"));
        assert_eq!(
            cluster["tls"]["identities"],
            json!(["spiffe://cluster.local/ns/default/sa/web"])
        );
        assert_eq!(
            cluster["tls"]["sni"],
            json!("outbound_.80_._.web.default.svc.cluster.local")
        );
        assert!(cluster["tls"]["client_cert"]["cert"].is_string());
        // The route's default timeout wraps it.
        let vhost = hosts[0]["pipeline"].as_str().unwrap();
        let entry = p[vhost][0]["route"]["routes"][0]["pipeline"]
            .as_str()
            .unwrap();
        assert_eq!(p[entry][0]["timeout"]["head"], json!("15000ms"));
    }

    #[test]
    fn captured_pods_match_the_original_destination_on_one_outbound_listener() {
        let text = STRICT
            .replace(
                "spec: { selector: { app: web },",
                "spec: { clusterIP: 10.96.0.6, selector: { app: web },",
            )
            .replace(
                "metadata: { name: web-1, labels: { app: web } }",
                "metadata: { name: web-1, labels: { app: web }, annotations: { flowgate.io/capture: redirect } }",
            )
            .replace(
                "metadata: { name: client-1 }",
                "metadata: { name: client-1, annotations: { flowgate.io/capture: redirect } }",
            );
        let state = MeshState::build(parse_manifests(&text, Path::new("m.yaml")).unwrap()).unwrap();
        let client = compile(
            &served(&state, "default", "client-1", "client"),
            &Options::default(),
        )
        .unwrap();
        builds(&client);
        let doc: Value = serde_json::from_str(&client.config).unwrap();
        assert_eq!(
            doc["listeners"],
            json!([{ "listen": "0.0.0.0:15001", "pipeline": "listener:outbound", "transparent": true }])
        );
        // The TCP port at the service's address first (the more specific match), then
        // HTTP by port; anything else is closed.
        let branch = &doc["pipelines"]["listener:outbound"][0]["branch"];
        let whens: Vec<&Value> = branch["arms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| &a["when"])
            .collect();
        assert_eq!(
            whens,
            [
                &json!({ "destination_port": 5432, "destination": "10.96.0.6/32" }),
                &json!({ "destination_port": 80 })
            ]
        );
        assert_eq!(branch["refuse_others"], json!(true));
        assert_eq!(branch["on_start"], json!(true));
        let tcp = branch["arms"][0]["pipeline"].as_str().unwrap();
        assert_eq!(tcp, "tcp:outbound|5432||web.default|mtls");
        assert_eq!(
            doc["pipelines"][tcp][0]["connect-tls"]["identities"],
            json!(["spiffe://cluster.local/ns/default/sa/web"])
        );
        // The destination's inbound listener takes what iptables redirects to any address.
        let web = compile(
            &served(&state, "default", "web-1", "web"),
            &Options::default(),
        )
        .unwrap();
        let doc: Value = serde_json::from_str(&web.config).unwrap();
        let addrs: Vec<&Value> = doc["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| &l["listen"])
            .collect();
        assert_eq!(addrs, [&json!("0.0.0.0:15006"), &json!("0.0.0.0:15001")]);
    }

    #[test]
    fn an_osm_retry_reaches_its_sources_routes_only() {
        let text = format!(
            "{}---\napiVersion: policy.openservicemesh.io/v1alpha1\nkind: Retry\nmetadata: {{ name: r }}\nspec:\n  source: {{ kind: ServiceAccount, name: client }}\n  destinations: [{{ kind: Service, name: web }}]\n  retryPolicy: {{ retryOn: '5xx,retriable-status-codes', perTryTimeout: 300ms, numRetries: 2, retryBackoffBaseInterval: 10ms }}\n",
            STRICT.replace(
                "enablePermissiveTrafficPolicyMode: false",
                "enablePermissiveTrafficPolicyMode: true"
            )
        );
        let state = MeshState::build(parse_manifests(&text, Path::new("m.yaml")).unwrap()).unwrap();
        let (sets, of_pod) = sidecar_sets(&state);
        let retry_of = |pod: &str, sa: &str| {
            let set = sets[&of_pod[&("default".to_string(), pod.to_string())]].clone();
            let compiled = compile(
                &served_over(set, &state, "default", pod, sa),
                &Options::default(),
            )
            .unwrap();
            builds(&compiled);
            let doc: Value = serde_json::from_str(&compiled.config).unwrap();
            doc["pipelines"]
                .as_object()
                .unwrap()
                .values()
                .find_map(|p| p[0].get("retry").cloned())
        };
        // The client's route to web retries: 5xx, three tries of 300 ms, 10 ms back-off.
        let retry = retry_of("client-1", "client").expect("the client's route retries");
        assert_eq!(retry["tries"], json!(3));
        assert_eq!(retry["per_try_timeout"], json!("300ms"));
        assert_eq!(retry["backoff"], json!("10ms"));
        assert_eq!(retry["on_status"], json!(["5xx"]));
        assert_eq!(retry["on_5xx"], json!(false));
        // Web's own sidecar (not the Retry's source) does not.
        assert_eq!(retry_of("web-1", "web"), None);
        // A Retry naming what is not there is refused at its line.
        let bad = text
            .replace("name: web }]", "name: nowhere }]")
            .replace("retryOn: '5xx,", "retryOn: '5xx,retriable-4xx,");
        let errors =
            MeshState::build(parse_manifests(&bad, Path::new("m.yaml")).unwrap()).unwrap_err();
        let all: Vec<String> = errors.iter().map(|e| e.message.clone()).collect();
        assert!(
            all.iter()
                .any(|e| e.contains("Retry default/r: destination service `default/nowhere`")),
            "{all:?}"
        );
        assert!(
            all.iter().any(|e| e.contains("retryOn `retriable-4xx`")),
            "{all:?}"
        );
    }

    #[test]
    fn an_osm_upstream_traffic_setting_limits_every_callers_cluster() {
        let setting = "---\napiVersion: policy.openservicemesh.io/v1alpha1\nkind: UpstreamTrafficSetting\nmetadata: { name: u }\nspec:\n  host: web.default.svc.cluster.local\n  connectionSettings: { tcp: { maxConnections: 2, connectTimeout: 2s }, http: { maxPendingRequests: 3, maxRequests: 4, maxRequestsPerConnection: 5 } }\n";
        let text = format!("{STRICT}{setting}");
        let state = MeshState::build(parse_manifests(&text, Path::new("m.yaml")).unwrap()).unwrap();
        let client = compile(
            &served(&state, "default", "client-1", "client"),
            &Options::default(),
        )
        .unwrap();
        builds(&client);
        let doc: Value = serde_json::from_str(&client.config).unwrap();
        let b = &doc["pipelines"]["cluster:outbound|80||web.default|mtls"][0]["balance-http"];
        assert_eq!(
            b["circuit_breaker"],
            json!({ "max_connections": 2, "max_pending": 3, "max_requests": 4 })
        );
        assert_eq!(b["max_requests"], json!(5));
        assert_eq!(b["connect_timeout"], json!("2000ms"));
        // What it cannot do yet, and a host that is not a service, are refused at the line.
        for (bad, why) in [
            (
                "host: web.default.svc.cluster.local",
                "host: nowhere.default.svc.cluster.local",
            ),
            ("maxRequests: 4,", "maxRequests: 4, maxRetries: 1,"),
        ] {
            let broken = text.replace(bad, why);
            let errors = MeshState::build(parse_manifests(&broken, Path::new("m.yaml")).unwrap())
                .unwrap_err();
            let all: Vec<String> = errors.iter().map(|e| e.message.clone()).collect();
            assert!(
                all.iter()
                    .any(|e| e.starts_with("UpstreamTrafficSetting default/u: ")),
                "{why}: {all:?}"
            );
        }
    }

    #[test]
    fn the_sidecars_own_certificate_replaces_the_served_one() {
        let config = served(&strict(), "default", "web-1", "web");
        let own = Options {
            certificate: Some(("CHAIN".into(), "KEY".into())),
            ..Default::default()
        };
        let compiled = compile(&config, &own).unwrap();
        assert!(compiled.files.values().any(|f| f == "CHAIN"));
        assert!(compiled.files.values().any(|f| f == "KEY"));
        let served_cert = match &config.secrets["default"] {
            SecretSpec::Certificate { chain, .. } => chain.clone(),
            other => panic!("{other:?}"),
        };
        assert!(!compiled.files.values().any(|f| *f == served_cert));
        // The same input gives the same files and text; a new certificate, new files.
        assert_eq!(compile(&config, &own).unwrap(), compiled);
        let mut renewed = own.clone();
        renewed.certificate = Some(("CHAIN2".into(), "KEY2".into()));
        assert_ne!(compile(&config, &renewed).unwrap().config, compiled.config);
    }

    #[test]
    fn what_the_filters_cannot_do_is_refused_by_name() {
        let mut config = served(&strict(), "default", "web-1", "web");
        config.clusters.insert(
            "inbound|8080".into(),
            ClusterSpec {
                endpoints: vec![("10.0.0.6:8080".parse().unwrap(), 1)],
                circuit: Some(flowgate_mesh::xds::subset::CircuitSpec {
                    max_retries: Some(3),
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
        let why = compile(&config, &Options::default()).unwrap_err();
        assert!(
            why.contains("`inbound|8080`") && why.contains("max_retries"),
            "{why}"
        );
        // Thresholds it can keep: Envoy's defaults where absent; requests per connection.
        if let Some(c) = config.clusters.get_mut("inbound|8080") {
            c.circuit = Some(flowgate_mesh::xds::subset::CircuitSpec {
                max_connections: Some(1),
                max_pending_requests: Some(1),
                ..Default::default()
            });
            c.max_requests_per_connection = Some(1);
        }
        let compiled = compile(&config, &Options::default()).unwrap();
        let doc: Value = serde_json::from_str(&compiled.config).unwrap();
        let b = &doc["pipelines"]["cluster:inbound|8080"][0]["balance-http"];
        assert_eq!(
            b["circuit_breaker"],
            json!({ "max_connections": 1, "max_pending": 1, "max_requests": 1024 })
        );
        assert_eq!(b["max_requests"], json!(1));
        builds(&compiled);
        config.clusters.remove("inbound|8080");

        let deny = RbacSpec {
            deny: true,
            policies: BTreeMap::from([(
                "p".to_string(),
                PolicySpec {
                    permissions: vec![Perm::Any],
                    principals: vec![Who::Any],
                },
            )]),
        };
        assert!(network_principals(&deny, 1).unwrap_err().contains("DENY"));
    }

    #[test]
    fn rbac_permissions_expand_into_the_filters_terms() {
        let m = |x: &str| Perm::Header(":method".into(), Text::Exact(x.into()));
        // (GET or POST) and /a prefix and a header present, or port 9 (not this port).
        let perm = Perm::Or(vec![
            Perm::And(vec![
                Perm::Or(vec![m("GET"), m("POST")]),
                Perm::Path(Text::Prefix("/a".into())),
                Perm::Header("X-Id".into(), Text::Present),
            ]),
            Perm::DestinationPort(9),
        ]);
        let t: Vec<Value> = terms(&perm, 15006)
            .unwrap()
            .iter()
            .map(Term::to_json)
            .collect();
        assert_eq!(
            t,
            [
                json!({ "methods": ["GET"], "path_regex": "/a.*", "headers": { "x-id": ".*" } }),
                json!({ "methods": ["POST"], "path_regex": "/a.*", "headers": { "x-id": ".*" } }),
            ]
        );
        // A method both GET and POST matches nothing; this port matches anything.
        assert!(
            terms(&Perm::And(vec![m("GET"), m("POST")]), 1)
                .unwrap()
                .is_empty()
        );
        assert_eq!(terms(&Perm::DestinationPort(1), 1).unwrap().len(), 1);
        assert!(terms(&Perm::Not(Box::new(Perm::Any)), 1).is_err());
        // Exponential expansions are refused, not computed.
        let wide = Perm::Or((0..40).map(|i| m(&format!("M{i}"))).collect());
        let many = Perm::And(vec![
            Perm::Or(vec![
                Perm::Header("a".into(), Text::Present),
                Perm::Header("b".into(), Text::Present),
            ]),
            wide.clone(),
            Perm::Or(
                (0..40)
                    .map(|i| Perm::Header(format!("h{i}"), Text::Present))
                    .collect(),
            ),
        ]);
        assert!(terms(&many, 1).is_err());
    }
}
