//! YAML configuration files: listeners → pipelines of registered filters.
//!
//! ```yaml
//! workers: 2                 # default: one per CPU
//! drain_timeout: 30s         # how long shutdown waits for live connections
//! listeners:
//!   - listen: 127.0.0.1:8000
//!     pipeline: proxy
//! pipelines:
//!   proxy:
//!     - connect:
//!         endpoints: [127.0.0.1:9001, 127.0.0.1:9002]
//! ```
//!
//! Every error names the file, the line and column, and the field:
//! `proxy.yaml:7:7: pipelines.proxy[0] (connect): field `target`: give a `host:port`…`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use flowgate_pipeline::registry::{BuildContext, FilterSpec, Registry};
use flowgate_pipeline::server::{ListenerConfig, Protocol};
use flowgate_pipeline::{BuildError, Module, Pipeline};
use serde::Deserialize;
use serde_saphyr::{Location, Spanned};

/// A configuration that could not be loaded, with the place it went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct ConfigFileError {
    /// The file.
    pub file: String,
    /// 1-based line (0 when unknown).
    pub line: u64,
    /// 1-based column (0 when unknown).
    pub column: u64,
    /// What is wrong, starting with the field's path when it is known.
    pub message: String,
}

/// A loaded, validated configuration: the pipelines built and bound to their listeners.
#[derive(Debug)]
pub struct Config {
    /// Worker threads asked for (`None`: one per CPU).
    pub workers: Option<usize>,
    /// How long shutdown waits for live connections.
    pub drain_timeout: Duration,
    /// The listeners with the pipeline each runs.
    pub listeners: Vec<(ListenerConfig, Arc<Pipeline>)>,
    /// All pipelines.
    pub module: Module,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    workers: Option<usize>,
    #[serde(default, with = "flowgate_pipeline::serde_duration::option")]
    drain_timeout: Option<Duration>,
    listeners: Vec<Spanned<RawListener>>,
    pipelines: BTreeMap<String, Vec<Spanned<FilterSpec>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    listen: SocketAddr,
    pipeline: Spanned<String>,
    #[serde(default)]
    protocol: Protocol,
    #[serde(default)]
    max_connections: Option<usize>,
    #[serde(default)]
    nodelay: Option<bool>,
    #[serde(default)]
    transparent: Option<bool>,
    #[serde(default)]
    backlog: Option<i32>,
    #[serde(default, with = "flowgate_pipeline::serde_duration::option")]
    udp_idle_timeout: Option<Duration>,
}

/// The registry with every filter this build has: the joint filters and the filter
/// families of the enabled features (`net`, `http`, `dns`, `mqtt`).
pub fn default_registry() -> Registry {
    let mut r = Registry::new();
    flowgate_pipeline::joint::config::register(&mut r);
    #[cfg(feature = "net")]
    flowgate_filters_net::register(&mut r);
    #[cfg(feature = "http")]
    flowgate_filters_http::register(&mut r);
    #[cfg(feature = "dns")]
    flowgate_filters_dns::register(&mut r);
    #[cfg(feature = "mqtt")]
    flowgate_filters_mqtt::register(&mut r);
    r
}

/// Loads and validates the configuration in `path` with the default registry.
pub fn load(path: &Path) -> Result<Config, ConfigFileError> {
    load_with(path, &Arc::new(default_registry()))
}

/// Loads and validates the configuration in `path` with `registry` (to add your own
/// filters).
pub fn load_with(path: &Path, registry: &Arc<Registry>) -> Result<Config, ConfigFileError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigFileError {
        file: file.clone(),
        line: 0,
        column: 0,
        message: format!("cannot read: {e}"),
    })?;
    let dir = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    parse(&text, &file, &dir, registry)
}

/// Parses and validates configuration text; `file` names it in errors and `base_dir`
/// anchors relative paths.
pub fn parse(
    text: &str,
    file: &str,
    base_dir: &Path,
    registry: &Arc<Registry>,
) -> Result<Config, ConfigFileError> {
    let at = |loc: Location, message: String| ConfigFileError {
        file: file.to_string(),
        line: loc.line(),
        column: loc.column(),
        message,
    };
    let raw: RawFile = registry
        .activate(|| serde_saphyr::from_str(text))
        .map_err(|e| yaml_error(&e, file))?;
    if raw.listeners.is_empty() {
        return Err(at(
            Location::UNKNOWN,
            "`listeners` is empty: nothing would run".into(),
        ));
    }
    if raw.workers == Some(0) {
        return Err(at(
            Location::UNKNOWN,
            "field `workers`: must be at least 1".into(),
        ));
    }
    let bcx = BuildContext::new(base_dir);
    let mut places: HashMap<(String, usize), (Location, String)> = HashMap::new();
    let mut mb = Module::builder();
    for (name, filters) in raw.pipelines {
        let mut pb = Pipeline::builder(name.clone());
        for (i, spec) in filters.into_iter().enumerate() {
            let loc = spec.referenced;
            let kind = spec.value.name.clone();
            let f = spec.value.config.build(&bcx).map_err(|e| {
                at(
                    loc,
                    format!(
                        "pipelines.{name}[{i}] ({kind}): field `{}`: {}",
                        e.field, e.problem
                    ),
                )
            })?;
            places.insert((name.clone(), i), (loc, kind));
            pb = pb.filter_arc(f);
        }
        mb.add(pb);
    }
    let module = mb.build().map_err(|e| match &e {
        BuildError::MissingSubPipeline {
            pipeline, index, ..
        }
        | BuildError::NoSubPipeline {
            pipeline, index, ..
        } => {
            let (loc, kind) = places
                .get(&(pipeline.clone(), *index))
                .cloned()
                .unwrap_or((Location::UNKNOWN, String::new()));
            let why = match &e {
                BuildError::MissingSubPipeline { missing, .. } => {
                    format!("sub-pipeline `{missing}` is not defined under `pipelines`")
                }
                _ => "needs a sub-pipeline and has none".to_string(),
            };
            at(
                loc,
                format!("pipelines.{pipeline}[{index}] ({kind}): field `pipeline`: {why}"),
            )
        }
        other => at(Location::UNKNOWN, other.to_string()),
    })?;
    let mut listeners = Vec::new();
    for (i, l) in raw.listeners.into_iter().enumerate() {
        let r = l.value;
        let Some(p) = module.get(&r.pipeline.value) else {
            return Err(at(
                r.pipeline.referenced,
                format!(
                    "listeners[{i}]: field `pipeline`: pipeline `{}` is not defined under `pipelines`",
                    r.pipeline.value
                ),
            ));
        };
        let mut c = ListenerConfig::tcp(r.listen);
        c.protocol = r.protocol;
        if let Some(v) = r.max_connections {
            c.max_connections = v;
        }
        if let Some(v) = r.nodelay {
            c.nodelay = v;
        }
        if let Some(v) = r.transparent {
            c.transparent = v;
        }
        if let Some(v) = r.backlog {
            c.backlog = v;
        }
        if let Some(v) = r.udp_idle_timeout {
            c.udp_idle_timeout = v;
        }
        listeners.push((c, p.clone()));
    }
    Ok(Config {
        workers: raw.workers,
        drain_timeout: raw.drain_timeout.unwrap_or(Duration::from_secs(30)),
        listeners,
        module,
    })
}

/// A YAML (or option) error as a [`ConfigFileError`] at its most precise position.
pub(crate) fn yaml_error(e: &serde_saphyr::Error, file: &str) -> ConfigFileError {
    let (inner, message) = split_position(&e.to_string());
    let (line, column) = match (inner, e.location()) {
        (Some(pos), _) => pos,
        (None, Some(loc)) => (loc.line(), loc.column()),
        (None, None) => (0, 0),
    };
    ConfigFileError {
        file: file.to_string(),
        line,
        column,
        message,
    }
}

/// Errors from inside a filter's options pass through a type-erased deserializer, which keeps
/// their precise position only in the text (`… at line 10, column 9`). Take the innermost
/// position from the text and return the message without the positions.
fn split_position(text: &str) -> (Option<(u64, u64)>, String) {
    let first = text.lines().next().unwrap_or("invalid configuration");
    let mut msg = first.strip_prefix("error: ").unwrap_or(first);
    // A leading "line 9 column 9: " is the outer, less precise position.
    if let Some(rest) = msg.strip_prefix("line ")
        && let Some(i) = rest.find(": ")
    {
        msg = &rest[i + 2..];
    }
    let mut pos = None;
    let mut clean = msg.to_string();
    while let Some(i) = clean.rfind(" at line ") {
        let tail = &clean[i + " at line ".len()..];
        let mut nums = tail.split(", column ");
        let line = nums.next().and_then(|l| l.trim().parse::<u64>().ok());
        let col = nums.next().and_then(|c| c.trim().parse::<u64>().ok());
        match (line, col) {
            (Some(l), Some(c)) => {
                pos.get_or_insert((l, c));
                clean.truncate(i);
            }
            _ => break,
        }
    }
    (pos, clean)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<Config, ConfigFileError> {
        parse(
            text,
            "t.yaml",
            Path::new("."),
            &Arc::new(default_registry()),
        )
    }

    const GOOD: &str = "listeners:\n  - listen: 127.0.0.1:0\n    pipeline: main\npipelines:\n  main:\n    - demux: { pipeline: req }\n  req:\n    - connect:\n        endpoints: 127.0.0.1:9\n";

    #[test]
    fn good_config_builds() {
        let c = check(GOOD).unwrap();
        assert_eq!(c.listeners.len(), 1);
        assert_eq!(c.listeners[0].1.name(), "main");
    }

    #[test]
    fn branch_by_connection_facts() {
        use flowgate_pipeline::Filter;
        let text = "listeners:\n  - listen: 127.0.0.1:0\n    pipeline: main\npipelines:\n  main:\n    - branch:\n        arms:\n          - { when: { sni: \"*.a.test\", peer: 10.0.0.0/8 }, pipeline: a }\n        otherwise: b\n  a: []\n  b: []\n";
        let c = check(text).unwrap();
        let d = c.module.get("main").unwrap().describe().to_json();
        assert_eq!(d["filters"][0]["kind"], "branch");
        assert_eq!(d["filters"][0]["subs"], serde_json::json!(["a", "b"]));
        let e = check(&text.replace("10.0.0.0/8", "10.0.0.0/80")).unwrap_err();
        assert_eq!(e.line, 6, "{e}");
        assert!(e.message.contains("field `arms[0].when.peer`"), "{e}");
        let e = check(&text.replace("otherwise: b", "otherwise: c")).unwrap_err();
        assert!(e.message.contains("sub-pipeline `c` is not defined"), "{e}");
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let e = check("listeners: [\n").unwrap_err();
        assert_eq!(e.file, "t.yaml");
        assert!(e.line >= 1, "{e}");

        let e = check(&GOOD.replace("- connect:", "- conect:")).unwrap_err();
        assert_eq!(e.line, 8, "{e}");
        assert!(e.message.contains("unknown filter `conect`"), "{e}");

        let e = check(&GOOD.replace(
            "endpoints: 127.0.0.1:9",
            "endpoints: 127.0.0.1:9\n        colour: red",
        ))
        .unwrap_err();
        assert_eq!(e.line, 10, "{e}");
        assert!(e.message.contains("colour"), "{e}");

        let e = check(&GOOD.replace("{ pipeline: req }", "{ pipeline: nope }")).unwrap_err();
        assert_eq!(e.line, 6, "{e}");
        assert!(
            e.message.contains("sub-pipeline `nope` is not defined"),
            "{e}"
        );

        let e = check(&GOOD.replace("endpoints: 127.0.0.1:9", "endpoints: nowhere")).unwrap_err();
        assert_eq!(e.line, 8, "{e}");
        assert!(
            e.message
                .contains("pipelines.req[0] (connect): field `endpoints[0]`"),
            "{e}"
        );

        let e = check(&GOOD.replace("pipeline: main", "pipeline: mian")).unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        assert!(e.message.contains("listeners[0]: field `pipeline`"), "{e}");
    }

    #[test]
    fn old_option_names_are_refused_naming_the_new_one() {
        let e = check(&GOOD.replace("endpoints: 127.0.0.1:9", "target: 127.0.0.1:9")).unwrap_err();
        assert_eq!(e.line, 9, "{e}");
        assert!(e.message.contains("`target` is now `endpoints`"), "{e}");
        for (filter, old, new) in [
            (
                "balance-http: { targets: [127.0.0.1:9] }",
                "targets",
                "endpoints",
            ),
            (
                "balance-http: { endpoints: [127.0.0.1:9], version: http2 }",
                "version",
                "protocol",
            ),
            (
                "mux-http: { pipeline: req, version: http2 }",
                "version",
                "protocol",
            ),
            (
                "proxy-mqtt: { brokers: [127.0.0.1:1883] }",
                "brokers",
                "endpoints",
            ),
            (
                "dns-forward: { upstreams: [127.0.0.1:53] }",
                "upstreams",
                "endpoints",
            ),
        ] {
            let text = GOOD.replace("demux: { pipeline: req }", filter);
            let e = check(&text).unwrap_err();
            assert_eq!(e.line, 6, "{filter}: {e}");
            assert!(
                e.message.contains(&format!("`{old}` is now `{new}`")),
                "{filter}: {e}"
            );
        }
    }
}
