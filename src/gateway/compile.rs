//! Gateway file → pipelines: what each part of the schema becomes.
//!
//! ```text
//! listener:<l>          [accept-tls → listener:<l>:http]      (with tls)
//! listener:<l>:http     [demux-http → routes:<l>]             (or listener:<l> without tls)
//! routes:<l>            [route: match → route:<r> …, default gateway:not-found]
//! route:<r>             proxy:    [rewrite?, headers(request)?, pipe → backend:<b>, headers(response)?]
//!                       redirect: [redirect]      respond: [respond]
//! backend:<b>           [retry → backend:<b>:try]             (retries > 0)
//!                       [timeout → backend:<b>:try]           (retries: 0; per_try_timeout)
//! backend:<b>:try       [balance-http]                        (one flowgate-lb balancer per group)
//! gateway:not-found     [respond 404]
//! ```
//!
//! A backend group is one pipeline shared by every route that proxies to it, so its
//! balancer, health state and connection pools are per group, not per route.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use flowgate_filters_http::{
    BalanceHttp, BalanceHttpConfig, DemuxHttpConfig, HeaderEdits, HeadersConfig, RespondConfig,
    RetryConfig, RewriteConfig, RouteConfig, RouteEntry, TimeoutConfig,
};
use flowgate_filters_net::tls::{AcceptTlsConfig, DEFAULT_MAX_FEED, TlsVersion};
use flowgate_lb::OutlierConfig;
use flowgate_pipeline::joint::Pipe;
use flowgate_pipeline::registry::{BuildContext, FilterConfig};
use flowgate_pipeline::server::ListenerConfig;
use flowgate_pipeline::{BuildError, Filter, Module, Pipeline, PipelineBuilder, SubPipeline};
use serde_saphyr::Location;

use super::schema::{BackendSpec, GatewayFile, ListenerSpec, RouteSpec};
use crate::config::{Config, ConfigFileError};

const NOT_FOUND: &str = "gateway:not-found";

/// Errors carry the file and the position of the item they are about.
struct Errors<'a> {
    file: &'a str,
}

impl Errors<'_> {
    fn at(&self, loc: Location, message: String) -> ConfigFileError {
        ConfigFileError {
            file: self.file.to_string(),
            line: loc.line(),
            column: loc.column(),
            message,
        }
    }
}

/// Builds a filter from its configuration, naming `place` and the field on failure.
fn build<C: FilterConfig>(
    cfg: C,
    bcx: &BuildContext,
    place: &str,
    rename: &dyn Fn(&str) -> String,
) -> Result<Arc<dyn Filter>, String> {
    Box::new(cfg)
        .build(bcx)
        .map_err(|e| format!("{place}: field `{}`: {}", rename(&e.field), e.problem))
}

fn same(f: &str) -> String {
    f.to_string()
}

fn edits_empty(e: &HeaderEdits) -> bool {
    e.set.is_empty() && e.add.is_empty() && e.remove.is_empty()
}

/// Turns a parsed gateway file into listeners and a module of pipelines.
pub(super) fn compile(
    raw: GatewayFile,
    file: &str,
    base_dir: &Path,
) -> Result<Config, ConfigFileError> {
    let err = Errors { file };
    let bcx = BuildContext::new(base_dir);
    if raw.listeners.is_empty() {
        return Err(err.at(
            Location::UNKNOWN,
            "field `listeners`: is empty: nothing would run".into(),
        ));
    }
    if raw.workers == Some(0) {
        return Err(err.at(
            Location::UNKNOWN,
            "field `workers`: must be at least 1".into(),
        ));
    }
    let mut mb = Module::builder();

    // Backend groups.
    let mut backends: HashSet<String> = HashSet::new();
    for (i, b) in raw.backends.iter().enumerate() {
        let loc = b.referenced;
        let spec = &b.value;
        let place = format!("backends[{i}] ({})", spec.name);
        if spec.name.is_empty() {
            return Err(err.at(loc, format!("backends[{i}]: field `name`: is empty")));
        }
        if !backends.insert(spec.name.clone()) {
            return Err(err.at(
                loc,
                format!(
                    "{place}: field `name`: `{}` is defined twice under `backends`",
                    spec.name
                ),
            ));
        }
        if spec.endpoints.is_empty() {
            return Err(err.at(
                loc,
                format!("{place}: field `endpoints`: list at least one endpoint"),
            ));
        }
        for p in compile_backend(spec, &bcx).map_err(|m| err.at(loc, format!("{place}: {m}")))? {
            mb.add(p);
        }
    }

    // Routes.
    let mut route_names: Vec<String> = Vec::with_capacity(raw.routes.len());
    let mut route_index: HashMap<String, usize> = HashMap::new();
    for (i, r) in raw.routes.iter().enumerate() {
        let loc = r.referenced;
        let name = r.value.name.clone().unwrap_or_else(|| format!("route{i}"));
        if name.is_empty() {
            return Err(err.at(loc, format!("routes[{i}]: field `name`: is empty")));
        }
        if route_index.insert(name.clone(), i).is_some() {
            return Err(err.at(
                loc,
                format!("routes[{i}]: field `name`: `{name}` is defined twice under `routes`"),
            ));
        }
        let place = format!("routes[{i}] ({name})");
        let p = compile_route(&r.value, &name, &backends, &bcx)
            .map_err(|m| err.at(loc, format!("{place}: {m}")))?;
        mb.add(p);
        route_names.push(name);
    }
    let not_found = RespondConfig {
        status: 404,
        headers: Default::default(),
        body: "no route\n".into(),
    };
    let f = build(not_found, &bcx, NOT_FOUND, &same).map_err(|m| err.at(Location::UNKNOWN, m))?;
    mb.add(Pipeline::builder(NOT_FOUND).filter_arc(f));

    // Listeners.
    let mut listener_names = HashSet::new();
    let mut addresses = HashSet::new();
    let mut listeners = Vec::new();
    for (i, l) in raw.listeners.iter().enumerate() {
        let loc = l.referenced;
        let spec = &l.value;
        let name = spec.name.clone().unwrap_or_else(|| format!("listener{i}"));
        if name.is_empty() {
            return Err(err.at(loc, format!("listeners[{i}]: field `name`: is empty")));
        }
        if !listener_names.insert(name.clone()) {
            return Err(err.at(
                loc,
                format!(
                    "listeners[{i}]: field `name`: `{name}` is defined twice under `listeners`"
                ),
            ));
        }
        let place = format!("listeners[{i}] ({name})");
        if spec.address.port() != 0 && !addresses.insert(spec.address) {
            return Err(err.at(
                loc,
                format!(
                    "{place}: field `address`: `{}` is used by another listener",
                    spec.address
                ),
            ));
        }
        let routes: Vec<(usize, &RouteSpec, &String)> = match &spec.routes {
            None => raw
                .routes
                .iter()
                .zip(&route_names)
                .enumerate()
                .map(|(j, (r, n))| (j, &r.value, n))
                .collect(),
            Some(names) => {
                let mut picked = Vec::new();
                for (k, n) in names.iter().enumerate() {
                    let Some(&j) = route_index.get(n) else {
                        return Err(err.at(
                            loc,
                            format!(
                                "{place}: field `routes[{k}]`: route `{n}` is not defined under `routes`"
                            ),
                        ));
                    };
                    picked.push((j, &raw.routes[j].value, &route_names[j]));
                }
                picked.sort_by_key(|(j, _, _)| *j);
                picked
            }
        };
        let pipelines = compile_listener(spec, &name, &routes, &bcx)
            .map_err(|m| err.at(loc, format!("{place}: {m}")))?;
        for p in pipelines {
            mb.add(p);
        }
        let mut c = ListenerConfig::tcp(spec.address);
        if let Some(n) = spec.max_connections {
            c.max_connections = n;
        }
        listeners.push((c, format!("listener:{name}")));
    }

    let module = mb.build().map_err(|e| {
        let what = match &e {
            BuildError::MissingSubPipeline { missing, .. } => {
                format!("internal error: generated pipeline `{missing}` is missing")
            }
            other => other.to_string(),
        };
        err.at(Location::UNKNOWN, what)
    })?;
    let mut bound = Vec::with_capacity(listeners.len());
    for (c, name) in listeners {
        let Some(p) = module.get(&name) else {
            return Err(err.at(
                Location::UNKNOWN,
                format!("internal error: listener pipeline `{name}` was not generated"),
            ));
        };
        bound.push((c, p.clone()));
    }
    Ok(Config {
        workers: raw.workers,
        drain_timeout: raw.drain_timeout.unwrap_or(Duration::from_secs(30)),
        listeners: bound,
        module,
    })
}

/// `backend:<b>` (a `retry`, or with `retries: 0` a `timeout`) and `backend:<b>:try`.
fn compile_backend(spec: &BackendSpec, bcx: &BuildContext) -> Result<Vec<PipelineBuilder>, String> {
    let mut balance = spec.balance.clone();
    if balance.outlier.is_none() {
        balance.outlier = Some(OutlierConfig::default());
    }
    let mut cfg = BalanceHttpConfig::new(spec.endpoints.clone());
    cfg.balance = balance;
    cfg.hash_on = spec.hash_on.clone();
    cfg.health_check = spec.health_check.clone();
    cfg.connect_timeout = spec.connect_timeout;
    cfg.max_idle = spec.max_idle;
    cfg.protocol = spec.protocol;
    cfg.tls = spec.tls.clone();
    let lb = BalanceHttp::with_context(cfg, bcx).map_err(|e| e.to_string())?;
    let name = format!("backend:{}", spec.name);
    let try_name = format!("{name}:try");
    if spec.retries == 0 {
        // One try, still bounded: no response head within `per_try_timeout` is a 504.
        let timeout = TimeoutConfig {
            pipeline: try_name.clone(),
            head: spec.per_try_timeout,
            total: None,
        };
        let timeout = build(timeout, bcx, "timeout", &|f| match f {
            "head" => "per_try_timeout".into(),
            other => other.into(),
        })
        .map_err(|m| m.trim_start_matches("timeout: ").to_string())?;
        return Ok(vec![
            Pipeline::builder(name).filter_arc(timeout),
            Pipeline::builder(try_name).filter(lb),
        ]);
    }
    if spec.retries > 9 {
        return Err("field `retries`: at most 9".into());
    }
    let retry = RetryConfig {
        pipeline: try_name.clone(),
        tries: spec.retries + 1,
        per_try_timeout: spec.per_try_timeout,
        backoff: Duration::from_millis(25),
        on_5xx: true,
        on_status: Vec::new(),
        methods: ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"]
            .map(String::from)
            .to_vec(),
        max_body: 64 * 1024,
    };
    let retry = build(retry, bcx, "retry", &|f| match f {
        "tries" => "retries".into(),
        other => other.into(),
    })
    .map_err(|m| m.trim_start_matches("retry: ").to_string())?;
    Ok(vec![
        Pipeline::builder(name).filter_arc(retry),
        Pipeline::builder(try_name).filter(lb),
    ])
}

/// `route:<r>`.
fn compile_route(
    spec: &RouteSpec,
    name: &str,
    backends: &HashSet<String>,
    bcx: &BuildContext,
) -> Result<PipelineBuilder, String> {
    let mut p = Pipeline::builder(format!("route:{name}"));
    let actions = usize::from(spec.proxy.is_some())
        + usize::from(spec.redirect.is_some())
        + usize::from(spec.respond.is_some());
    if actions != 1 {
        return Err(format!(
            "give exactly one of `proxy`, `redirect` or `respond` (found {actions})"
        ));
    }
    // The match is compiled by `route`; check it here so the error names this route.
    let probe = RouteConfig {
        routes: vec![RouteEntry {
            when: spec.when.clone(),
            pipeline: Some(NOT_FOUND.into()),
            split: Vec::new(),
        }],
        default: None,
    };
    build(probe, bcx, "", &|f| {
        f.strip_prefix("routes[0].").unwrap_or(f).to_string()
    })
    .map_err(|m| m.trim_start_matches(": ").to_string())?;
    if let Some(proxy) = &spec.proxy {
        if !backends.contains(&proxy.backend) {
            return Err(format!(
                "field `proxy.backend`: backend `{}` is not defined under `backends`",
                proxy.backend
            ));
        }
        if let Some(rw) = &proxy.rewrite {
            let f = build(
                RewriteConfig {
                    path_prefix: rw.clone(),
                },
                bcx,
                "",
                &|_| "proxy.rewrite".into(),
            )
            .map_err(|m| m.trim_start_matches(": ").to_string())?;
            p = p.filter_arc(f);
        }
        if !edits_empty(&proxy.request_headers) {
            let f = build(
                HeadersConfig {
                    request: proxy.request_headers.clone(),
                    response: HeaderEdits::default(),
                },
                bcx,
                "",
                &|f| format!("proxy.{}", f.replacen("request", "request_headers", 1)),
            )
            .map_err(|m| m.trim_start_matches(": ").to_string())?;
            p = p.filter_arc(f);
        }
        p = p.filter(Pipe::new(SubPipeline::named(format!(
            "backend:{}",
            proxy.backend
        ))));
        if !edits_empty(&proxy.response_headers) {
            let f = build(
                HeadersConfig {
                    request: HeaderEdits::default(),
                    response: proxy.response_headers.clone(),
                },
                bcx,
                "",
                &|f| format!("proxy.{}", f.replacen("response", "response_headers", 1)),
            )
            .map_err(|m| m.trim_start_matches(": ").to_string())?;
            p = p.filter_arc(f);
        }
    } else if let Some(r) = &spec.redirect {
        let f = build(r.clone(), bcx, "", &|f| format!("redirect.{f}"))
            .map_err(|m| m.trim_start_matches(": ").to_string())?;
        p = p.filter_arc(f);
    } else if let Some(r) = &spec.respond {
        let f = build(r.clone(), bcx, "", &|f| format!("respond.{f}"))
            .map_err(|m| m.trim_start_matches(": ").to_string())?;
        p = p.filter_arc(f);
    }
    Ok(p)
}

/// `listener:<l>`, `listener:<l>:http` and `routes:<l>`.
fn compile_listener(
    spec: &ListenerSpec,
    name: &str,
    routes: &[(usize, &RouteSpec, &String)],
    bcx: &BuildContext,
) -> Result<Vec<PipelineBuilder>, String> {
    let trim = |m: String| m.trim_start_matches(": ").to_string();
    let mut out = Vec::new();
    let routes_name = format!("routes:{name}");
    let table = if routes.is_empty() {
        Pipeline::builder(routes_name.clone()).filter(Pipe::new(SubPipeline::named(NOT_FOUND)))
    } else {
        let cfg = RouteConfig {
            routes: routes
                .iter()
                .map(|(_, r, n)| RouteEntry {
                    when: r.when.clone(),
                    pipeline: Some(format!("route:{n}")),
                    split: Vec::new(),
                })
                .collect(),
            default: Some(NOT_FOUND.into()),
        };
        let f = build(cfg, bcx, "", &|f| format!("routes.{f}")).map_err(trim)?;
        Pipeline::builder(routes_name.clone()).filter_arc(f)
    };
    out.push(table);
    if spec.header_timeout.is_zero() {
        return Err("field `header_timeout`: must be more than zero".into());
    }
    if spec.keepalive_timeout.is_zero() {
        return Err("field `keepalive_timeout`: must be more than zero".into());
    }
    if spec.max_connections == Some(0) {
        return Err("field `max_connections`: must be at least 1".into());
    }
    // Built through serde so that the fields the gateway does not set keep
    // `demux-http`'s own defaults.
    let fmt = flowgate_pipeline::serde_duration::format;
    let demux: DemuxHttpConfig = serde_json::from_value(serde_json::json!({
        "pipeline": routes_name,
        "limits": spec.limits,
        "header_timeout": fmt(spec.header_timeout),
        "keepalive_timeout": fmt(spec.keepalive_timeout),
        "access_log": spec.access_log,
        "http2": { "enabled": spec.http2 },
    }))
    .map_err(|e| format!("internal error: demux-http settings: {e}"))?;
    let demux = build(demux, bcx, "", &same).map_err(trim)?;
    let top = format!("listener:{name}");
    match &spec.tls {
        None => out.push(Pipeline::builder(top).filter_arc(demux)),
        Some(tls) => {
            let http = format!("{top}:http");
            let alpn = if spec.http2 {
                vec!["h2".to_string(), "http/1.1".to_string()]
            } else {
                vec!["http/1.1".to_string()]
            };
            let cfg = AcceptTlsConfig {
                pipeline: http.clone(),
                certificates: tls.certificates.clone(),
                alpn,
                client_auth: tls.client_auth.clone(),
                versions: tls
                    .versions
                    .clone()
                    .unwrap_or_else(|| vec![TlsVersion::Tls12, TlsVersion::Tls13]),
                cipher_suites: None,
                handshake_timeout: spec.header_timeout,
                max_feed: DEFAULT_MAX_FEED,
            };
            let f = build(cfg, bcx, "", &|f| format!("tls.{f}")).map_err(trim)?;
            out.push(Pipeline::builder(top).filter_arc(f));
            out.push(Pipeline::builder(http).filter_arc(demux));
        }
    }
    Ok(out)
}
