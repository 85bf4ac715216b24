//! `route`: sends each request to a pipeline chosen by host, path, method and headers, with
//! weighted splits; and `headers`: adds, sets and removes header fields.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use flowgate_pipeline::joint::config::host_matches;
use flowgate_pipeline::joint::{Branch, Pipe};
use flowgate_pipeline::registry::{BuildContext, ConfigError, FilterConfig};
use flowgate_pipeline::{Context, Description, Event, Filter, Head, SubPipeline, Transform};
use http::{HeaderName, HeaderValue, Method, request, response};
use serde::{Deserialize, Serialize};

use super::codec::is_interim;

/// `route:` — the first route whose match holds gets the request.
///
/// ```yaml
/// - route:
///     routes:
///       - match: { host: "*.example.com", path_prefix: /api/, method: [GET, POST] }
///         pipeline: api
///       - match: { path: /health }
///         pipeline: health
///       - match: { path_regex: "/users/[0-9]+/orders" }
///         pipeline: orders
///       - match: { headers: { x-canary: "1" } }
///         split: [{ pipeline: v2, weight: 1 }, { pipeline: v1, weight: 9 }]
///     default: not-found
/// ```
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The routes, tried in order.
    pub routes: Vec<RouteEntry>,
    /// Where requests that match no route go; without it they pass through unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
}

/// One route: a match, and a pipeline or a weighted split.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteEntry {
    /// What the request must look like.
    #[serde(rename = "match", default)]
    pub when: RouteMatch,
    /// The pipeline for matching requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<String>,
    /// Or: several pipelines, picked by smooth weighted round robin.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub split: Vec<WeightedPipeline>,
}

/// A pipeline and its weight in a split.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedPipeline {
    /// The pipeline.
    pub pipeline: String,
    /// Its share (at least 1).
    pub weight: u32,
}

/// Conditions on a request head; absent fields always hold.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// The host (from the Host field or the absolute URI, without port): exact,
    /// case-insensitive, or `*.suffix`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The authority as the client sent it (the Host field or the absolute URI's), port
    /// included when it sent one — Envoy's virtual host domains: exact (case-insensitive),
    /// `*.suffix`, or `*` for any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// The exact path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// A path prefix, matched on whole segments when it ends with `/`, else as a string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// A regular expression (Rust `regex` syntax: linear time, no backreferences) that
    /// must match the whole path, e.g. `/users/[0-9]+/orders`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_regex: Option<String>,
    /// Allowed methods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub method: Vec<String>,
    /// Header fields that must be present with exactly these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Query parameters that must be present with exactly these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query: BTreeMap<String, String>,
}

impl RouteMatch {
    /// The authority, when it is exact (no `*`) and the only condition.
    fn exact_authority_only(&self) -> Option<&str> {
        let RouteMatch {
            host,
            authority,
            path,
            path_prefix,
            path_regex,
            method,
            headers,
            query,
        } = self;
        let only = host.is_none()
            && path.is_none()
            && path_prefix.is_none()
            && path_regex.is_none()
            && method.is_empty()
            && headers.is_empty()
            && query.is_empty();
        authority.as_deref().filter(|a| only && !a.contains('*'))
    }
}

struct CompiledMatch {
    host: Option<String>,
    authority: Option<String>,
    path: Option<String>,
    path_prefix: Option<String>,
    path_regex: Option<regex::Regex>,
    methods: Vec<Method>,
    headers: Vec<(HeaderName, HeaderValue)>,
    query: Vec<(String, String)>,
}

/// `re` compiled to match a whole string (anchored), its size bounded; an error names
/// `field`.
pub(crate) fn whole_regex(re: &str, field: &str) -> Result<regex::Regex, ConfigError> {
    regex::RegexBuilder::new(&format!("^(?:{re})$"))
        .size_limit(1 << 20)
        .build()
        .map_err(|e| ConfigError::new(field, e))
}

/// The authority as sent: the absolute URI's, else the Host field.
fn authority_of(p: &request::Parts) -> Option<&str> {
    p.uri.authority().map(|a| a.as_str()).or_else(|| {
        p.headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
    })
}

fn host_of(p: &request::Parts) -> Option<&str> {
    let raw = p.uri.host().or_else(|| {
        p.headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
    })?;
    // Strip a port (not inside IPv6 brackets).
    Some(match raw.rfind(':') {
        Some(i) if !raw[i..].contains(']') => &raw[..i],
        _ => raw,
    })
}

impl CompiledMatch {
    fn new(m: &RouteMatch) -> Result<Self, ConfigError> {
        let methods = m
            .method
            .iter()
            .map(|s| Method::from_bytes(s.as_bytes()).map_err(|e| ConfigError::new("method", e)))
            .collect::<Result<_, _>>()?;
        let headers = m
            .headers
            .iter()
            .map(|(k, v)| {
                let n = HeaderName::from_bytes(k.as_bytes())
                    .map_err(|e| ConfigError::new(format!("headers.{k}"), e))?;
                let v = HeaderValue::from_str(v)
                    .map_err(|e| ConfigError::new(format!("headers.{k}"), e))?;
                Ok((n, v))
            })
            .collect::<Result<_, ConfigError>>()?;
        let path_regex = m
            .path_regex
            .as_deref()
            .map(|r| whole_regex(r, "path_regex"))
            .transpose()?;
        Ok(CompiledMatch {
            host: m.host.clone(),
            authority: m.authority.clone(),
            path: m.path.clone(),
            path_prefix: m.path_prefix.clone(),
            path_regex,
            methods,
            headers,
            query: m
                .query
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
    }

    fn matches(&self, p: &request::Parts) -> bool {
        let path = p.uri.path();
        self.host
            .as_deref()
            .is_none_or(|h| host_of(p).is_some_and(|host| host_matches(h, host)))
            && self.authority.as_deref().is_none_or(|a| {
                a == "*" || authority_of(p).is_some_and(|sent| host_matches(a, sent))
            })
            && self.path.as_deref().is_none_or(|x| x == path)
            && self.path_prefix.as_deref().is_none_or(|x| {
                path.starts_with(x)
                    && (x.ends_with('/')
                        || path.len() == x.len()
                        || path.as_bytes()[x.len()] == b'/')
            })
            && self.path_regex.as_ref().is_none_or(|r| r.is_match(path))
            && (self.methods.is_empty() || self.methods.contains(&p.method))
            && self
                .headers
                .iter()
                .all(|(n, v)| p.headers.get_all(n).iter().any(|x| x == v))
            && self.query.iter().all(|(k, v)| {
                p.uri.query().is_some_and(|q| {
                    q.split('&').any(|kv| {
                        kv.split_once('=').unwrap_or((kv, "")) == (k.as_str(), v.as_str())
                    })
                })
            })
    }
}

/// Smooth weighted round robin (nginx's) over fixed weights, lock-free: the picks of one
/// cycle of `sum(weights)` requests are precomputed, and an atomic counter walks them.
struct Wrr {
    cycle: Vec<usize>,
    next: AtomicU64,
}

impl Wrr {
    fn new(weights: &[u32]) -> Self {
        let total: i64 = weights.iter().map(|w| i64::from(*w)).sum();
        let mut current = vec![0i64; weights.len()];
        let mut cycle = Vec::with_capacity(total.max(0) as usize);
        for _ in 0..total {
            for (c, w) in current.iter_mut().zip(weights) {
                *c += i64::from(*w);
            }
            let best = (0..current.len())
                .max_by_key(|i| (current[*i], std::cmp::Reverse(*i)))
                .unwrap_or(0);
            current[best] -= total;
            cycle.push(best);
        }
        Wrr {
            cycle,
            next: AtomicU64::new(0),
        }
    }

    fn pick(&self) -> Option<usize> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.cycle
            .get((n % self.cycle.len().max(1) as u64) as usize)
            .copied()
    }
}

impl FilterConfig for RouteConfig {
    fn build(self: Box<Self>, _cx: &BuildContext) -> Result<Arc<dyn Filter>, ConfigError> {
        if self.routes.is_empty() {
            return Err(ConfigError::new("routes", "give at least one route"));
        }
        // Every arm is picked by the index (no closure per arm); a route that matches on an
        // exact authority alone is a map entry and keeps no compiled match. Routes to the
        // same pipeline share one reference to it.
        let index = AuthorityIndex::new(&self.routes)?;
        let mut branch = Branch::new().reserve(self.routes.len());
        let mut inner = Vec::new();
        let mut splits = Vec::new();
        let mut targets: std::collections::HashMap<&str, SubPipeline> =
            std::collections::HashMap::new();
        for (i, r) in self.routes.iter().enumerate() {
            let field = |f: &str| format!("routes[{i}].{f}");
            let target: SubPipeline = match (&r.pipeline, r.split.is_empty()) {
                (Some(p), true) => targets
                    .entry(p.as_str())
                    .or_insert_with(|| SubPipeline::named(p.clone()))
                    .clone(),
                (None, false) => {
                    if r.split.iter().any(|w| w.weight == 0)
                        || r.split.iter().map(|w| u64::from(w.weight)).sum::<u64>() > 10_000
                    {
                        return Err(ConfigError::new(
                            field("split"),
                            "weights must be 1 or more, 10000 in all at most",
                        ));
                    }
                    let weights: Vec<u32> = r.split.iter().map(|w| w.weight).collect();
                    let wrr = Wrr::new(&weights);
                    let subs: Vec<SubPipeline> = r
                        .split
                        .iter()
                        .map(|w| {
                            targets
                                .entry(w.pipeline.as_str())
                                .or_insert_with(|| SubPipeline::named(w.pipeline.clone()))
                                .clone()
                        })
                        .collect();
                    inner.extend(subs.iter().cloned());
                    let pipe = Pipe::choose(subs, move |_cx| wrr.pick());
                    // The split's targets are reported by `Routed::subs`, so the module binds them.
                    let p = flowgate_pipeline::Pipeline::builder(format!("route-split-{i}"))
                        .filter(pipe)
                        .build_deferred();
                    splits.push((i, r.split.clone()));
                    SubPipeline::from(p)
                }
                _ => {
                    return Err(ConfigError::new(
                        field("pipeline"),
                        "give either `pipeline` or `split`",
                    ));
                }
            };
            branch = branch.target(serde_json::to_string(&r.when).unwrap_or_default(), target);
        }
        inner.shrink_to_fit();
        branch = branch.select_with(move |_cx, head| index.pick(head));
        if let Some(d) = &self.default {
            branch = branch.otherwise(SubPipeline::named(d.clone()));
        }
        Ok(Arc::new(Routed {
            branch,
            inner,
            splits,
            default: self.default,
        }))
    }
}

/// Picks the route: those that match on an exact authority alone (a mesh sidecar's
/// thousands of virtual hosts) by a map, the others tried in order — the first match wins
/// either way.
struct AuthorityIndex {
    exact: std::collections::HashMap<Box<str>, usize>,
    /// The other routes, with their index, in order.
    scan: Vec<(usize, CompiledMatch)>,
}

impl AuthorityIndex {
    fn new(routes: &[RouteEntry]) -> Result<Self, ConfigError> {
        let mut exact = std::collections::HashMap::new();
        let mut scan = Vec::new();
        for (i, r) in routes.iter().enumerate() {
            match r.when.exact_authority_only() {
                Some(a) => {
                    exact
                        .entry(a.to_ascii_lowercase().into_boxed_str())
                        .or_insert(i);
                }
                None => {
                    let m = CompiledMatch::new(&r.when).map_err(|e| {
                        ConfigError::new(format!("routes[{i}].match.{}", e.field), e.problem)
                    })?;
                    scan.push((i, m));
                }
            }
        }
        exact.shrink_to_fit();
        scan.shrink_to_fit();
        Ok(AuthorityIndex { exact, scan })
    }

    fn pick(&self, head: Option<&flowgate_pipeline::Head>) -> Option<usize> {
        let p = head.and_then(|h| h.get::<request::Parts>())?;
        let hit = if self.exact.is_empty() {
            None
        } else {
            // Hosts are almost always sent in lower case: no copy then.
            authority_of(p).and_then(|a| {
                if a.bytes().any(|b| b.is_ascii_uppercase()) {
                    self.exact.get(a.to_ascii_lowercase().as_str()).copied()
                } else {
                    self.exact.get(a).copied()
                }
            })
        };
        for (i, m) in &self.scan {
            if hit.is_some_and(|h| *i > h) {
                break;
            }
            if m.matches(p) {
                return Some(*i);
            }
        }
        hit
    }
}

/// The `route` filter: a [`Branch`] on request heads.
struct Routed {
    branch: Branch,
    /// The targets of weighted splits (inside their own small pipelines).
    inner: Vec<SubPipeline>,
    /// The weighted splits, by route index (for the description).
    splits: Vec<(usize, Vec<WeightedPipeline>)>,
    default: Option<String>,
}

impl Filter for Routed {
    fn describe(&self) -> Description {
        // The configuration, rebuilt from what runs: each arm's label is its match.
        let subs = self.branch.subs();
        let routes: Vec<serde_json::Value> = self
            .branch
            .labels()
            .zip(&subs)
            .enumerate()
            .map(|(i, (label, target))| {
                let when: serde_json::Value =
                    serde_json::from_str(label).unwrap_or(serde_json::Value::Null);
                match self.splits.iter().find(|(at, _)| *at == i) {
                    Some((_, split)) => serde_json::json!({ "match": when, "split": split }),
                    None => serde_json::json!({ "match": when, "pipeline": target.name() }),
                }
            })
            .collect();
        let mut options = serde_json::json!({ "routes": routes });
        if let Some(d) = &self.default {
            options["default"] = serde_json::Value::from(d.as_str());
        }
        let mut d = Description::filter("route").options(options);
        let mut seen = std::collections::HashSet::new();
        d.subs = subs
            .iter()
            .chain(&self.inner)
            .filter(|s| !s.name().starts_with("route-split-"))
            .map(|s| s.name().to_string())
            .filter(|n| seen.insert(n.clone()))
            .collect();
        d
    }

    fn attach(&self, input: flowgate_pipeline::Events, cx: &Context) -> flowgate_pipeline::Events {
        self.branch.attach(input, cx)
    }

    fn subs(&self) -> Vec<SubPipeline> {
        self.branch
            .subs()
            .into_iter()
            .chain(self.inner.iter().cloned())
            .collect()
    }
}

// === headers ===

/// `headers:` — changes the header fields of the requests (`request:`) or responses
/// (`response:`) that pass. Messages flow one way through a pipeline: before the filter
/// that answers (`route`, `mux-http`, `respond`) the messages are requests, after it they
/// are responses, so put request edits before it and response edits after it.
///
/// ```yaml
/// - headers:
///     request: { set: { x-forwarded-proto: https }, add: { via: flowgate }, remove: [x-debug] }
///     response: { set: { server: flowgate } }
/// ```
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeadersConfig {
    /// Changes to request heads.
    #[serde(default)]
    pub request: HeaderEdits,
    /// Changes to response heads. Interim responses (1xx such as 103 Early Hints) get only
    /// the `remove` edits: a field removed never reaches the client, while `set` and `add`
    /// are for the final response.
    #[serde(default)]
    pub response: HeaderEdits,
}

/// Header edits, applied in the order remove, set, add.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderEdits {
    /// Fields to replace (or create).
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Fields to append.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    /// Fields to remove.
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Clone, Default)]
struct Edits {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl Edits {
    fn compile(e: &HeaderEdits, at: &str) -> Result<Self, ConfigError> {
        let pair = |k: &String,
                    v: &String,
                    what: &str|
         -> Result<(HeaderName, HeaderValue), ConfigError> {
            let f = format!("{at}.{what}.{k}");
            let n = HeaderName::from_bytes(k.as_bytes()).map_err(|e| ConfigError::new(&f, e))?;
            let v = HeaderValue::from_str(v).map_err(|e| ConfigError::new(&f, e))?;
            Ok((n, v))
        };
        Ok(Edits {
            set: e
                .set
                .iter()
                .map(|(k, v)| pair(k, v, "set"))
                .collect::<Result<_, _>>()?,
            add: e
                .add
                .iter()
                .map(|(k, v)| pair(k, v, "add"))
                .collect::<Result<_, _>>()?,
            remove: e
                .remove
                .iter()
                .map(|k| {
                    HeaderName::from_bytes(k.as_bytes())
                        .map_err(|e| ConfigError::new(format!("{at}.remove"), e))
                })
                .collect::<Result<_, _>>()?,
        })
    }

    fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    fn apply(&self, h: &mut http::HeaderMap) {
        for n in &self.remove {
            h.remove(n);
        }
        for (n, v) in &self.set {
            h.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            h.append(n.clone(), v.clone());
        }
    }
}

impl FilterConfig for HeadersConfig {
    fn build(self: Box<Self>, _cx: &BuildContext) -> Result<Arc<dyn Filter>, ConfigError> {
        let request = Edits::compile(&self.request, "request")?;
        let response = Edits::compile(&self.response, "response")?;
        Ok(Arc::new(SetHeaders {
            request: Arc::new(request),
            response: Arc::new(response),
            config: *self,
        }))
    }
}

/// The `headers` filter.
struct SetHeaders {
    request: Arc<Edits>,
    response: Arc<Edits>,
    config: HeadersConfig,
}

impl Filter for SetHeaders {
    fn describe(&self) -> Description {
        Description::filter("headers").options(&self.config)
    }

    fn transform(&self, _cx: &Context) -> Option<Box<dyn Transform>> {
        let (req, res) = (self.request.clone(), self.response.clone());
        Some(Box::new(
            move |ev: Event, out: &mut dyn FnMut(Event)| match ev {
                Event::MessageStart(head) => {
                    if let Some(p) = head.get::<request::Parts>().filter(|_| !req.is_empty()) {
                        let mut p = p.clone();
                        req.apply(&mut p.headers);
                        out(Event::MessageStart(Head::new(p)));
                    } else if let Some(p) =
                        head.get::<response::Parts>().filter(|_| !res.is_empty())
                    {
                        if is_interim(p.status) {
                            if res.remove.iter().any(|n| p.headers.contains_key(n)) {
                                let mut p = p.clone();
                                for n in &res.remove {
                                    p.headers.remove(n);
                                }
                                out(Event::MessageStart(Head::new(p)));
                            } else {
                                out(Event::MessageStart(head));
                            }
                            return;
                        }
                        let mut p = p.clone();
                        res.apply(&mut p.headers);
                        out(Event::MessageStart(Head::new(p)));
                    } else {
                        out(Event::MessageStart(head));
                    }
                }
                other => out(other),
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_weighted_round_robin_is_exact_and_spread() {
        let w = Wrr::new(&[5, 1, 1]);
        let picks: Vec<usize> = (0..7).filter_map(|_| w.pick()).collect();
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0]);
        let w = Wrr::new(&[1, 9]);
        let mut counts = [0; 2];
        for _ in 0..1000 {
            counts[w.pick().unwrap()] += 1;
        }
        assert_eq!(counts, [100, 900]);
    }

    #[test]
    fn path_regex_matches_the_whole_path() {
        let m = CompiledMatch::new(&RouteMatch {
            path_regex: Some("/users/[0-9]+(/orders)?".into()),
            ..Default::default()
        })
        .unwrap();
        assert!(m.matches(&req("/users/42", "a")));
        assert!(m.matches(&req("/users/42/orders?x=1", "a")));
        assert!(
            !m.matches(&req("/users/42/orders/7", "a")),
            "anchored at the end"
        );
        assert!(
            !m.matches(&req("/v1/users/42", "a")),
            "anchored at the start"
        );
        assert!(!m.matches(&req("/users/x", "a")));
        let bad = CompiledMatch::new(&RouteMatch {
            path_regex: Some("/(unclosed".into()),
            ..Default::default()
        });
        assert!(bad.is_err());
    }

    fn req(uri: &str, host: &str) -> request::Parts {
        let (p, ()) = http::Request::get(uri)
            .header("host", host)
            .body(())
            .unwrap()
            .into_parts();
        p
    }

    #[test]
    fn matches_host_path_method_headers_query() {
        let m = CompiledMatch::new(&RouteMatch {
            host: Some("*.example.com".into()),
            path_prefix: Some("/api".into()),
            method: vec!["GET".into()],
            query: BTreeMap::from([("v".to_string(), "2".to_string())]),
            ..Default::default()
        })
        .unwrap();
        assert!(m.matches(&req("/api/x?v=2", "a.example.com:8080")));
        assert!(m.matches(&req("/api?a=1&v=2", "b.c.example.com")));
        assert!(
            !m.matches(&req("/apix?v=2", "a.example.com")),
            "prefix on segments"
        );
        assert!(!m.matches(&req("/api/x?v=3", "a.example.com")));
        assert!(!m.matches(&req("/api/x?v=2", "example.com")));
        let h = CompiledMatch::new(&RouteMatch {
            headers: BTreeMap::from([("x-canary".into(), "1".into())]),
            ..Default::default()
        })
        .unwrap();
        let (mut p, ()) = http::Request::get("/").body(()).unwrap().into_parts();
        assert!(!h.matches(&p));
        p.headers.insert("x-canary", HeaderValue::from_static("1"));
        assert!(h.matches(&p));
        // The authority as sent: a port is part of it, as in Envoy's domains.
        let a = |authority: &str| {
            CompiledMatch::new(&RouteMatch {
                authority: Some(authority.into()),
                ..Default::default()
            })
            .unwrap()
        };
        assert!(a("web.shop:8080").matches(&req("/", "Web.Shop:8080")));
        assert!(!a("web.shop:8080").matches(&req("/", "web.shop")));
        assert!(!a("web.shop").matches(&req("/", "web.shop:8080")));
        assert!(a("web.shop").matches(&req("http://web.shop/x", "other")));
        assert!(a("*").matches(&req("/", "anything:1")));
    }

    #[test]
    fn the_authority_index_picks_what_trying_each_route_would() {
        let entry = |m: serde_json::Value| RouteEntry {
            when: serde_json::from_value(m).unwrap(),
            pipeline: Some("p".into()),
            split: Vec::new(),
        };
        let routes = vec![
            entry(serde_json::json!({ "authority": "a.shop:80" })),
            entry(serde_json::json!({ "authority": "*.shop:81" })),
            entry(serde_json::json!({ "authority": "b.shop:81" })),
            entry(serde_json::json!({ "authority": "c.shop", "path_prefix": "/x/" })),
            entry(serde_json::json!({ "authority": "A.SHOP:80" })),
            entry(serde_json::json!({ "authority": "c.shop" })),
            entry(serde_json::json!({ "authority": "*" })),
        ];
        let matches: Vec<CompiledMatch> = routes
            .iter()
            .map(|r| CompiledMatch::new(&r.when).unwrap())
            .collect();
        let linear = |p: &request::Parts| matches.iter().position(|m| m.matches(p));
        let index = AuthorityIndex::new(&routes).unwrap();
        assert_eq!(index.exact.len(), 3, "a.shop:80, b.shop:81 and c.shop");
        assert_eq!(index.scan.len(), 3, "only the others keep a compiled match");
        for (path, host) in [
            ("/", "a.shop:80"),
            ("/", "A.Shop:80"),
            ("/", "b.shop:81"),
            ("/x/1", "c.shop"),
            ("/y", "c.shop"),
            ("/", "d.shop:81"),
            ("/", "other"),
        ] {
            let head = flowgate_pipeline::Head::new(req(path, host));
            assert_eq!(
                index.pick(Some(&head)),
                linear(&req(path, host)),
                "{host}{path}"
            );
        }
    }

    #[test]
    fn interim_responses_get_only_the_remove_edits() {
        let cfg = HeadersConfig {
            request: HeaderEdits::default(),
            response: HeaderEdits {
                set: [("server".to_string(), "flowgate".to_string())].into(),
                add: BTreeMap::new(),
                remove: vec!["x-secret".into()],
            },
        };
        let f = Box::new(cfg).build(&BuildContext::default()).unwrap();
        let response = |status: u16| {
            let (mut p, ()) = http::Response::new(()).into_parts();
            p.status = http::StatusCode::from_u16(status).unwrap();
            p.headers.insert("x-secret", HeaderValue::from_static("1"));
            p.headers
                .insert("link", HeaderValue::from_static("</a.css>"));
            Event::MessageStart(Head::new(p))
        };
        let out = flowgate_pipeline::testing::run_blocking(
            f.as_ref(),
            vec![response(103), response(200), Event::END],
        );
        let heads: Vec<&response::Parts> = out
            .iter()
            .filter_map(|e| match e {
                Event::MessageStart(h) => h.get::<response::Parts>(),
                _ => None,
            })
            .collect();
        assert_eq!(heads.len(), 2);
        assert!(!heads[0].headers.contains_key("x-secret"));
        assert!(!heads[0].headers.contains_key("server"));
        assert_eq!(heads[0].headers["link"], "</a.css>");
        assert!(!heads[1].headers.contains_key("x-secret"));
        assert_eq!(heads[1].headers["server"], "flowgate");
    }
}
