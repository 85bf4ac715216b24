//! Manifests → [`Resource`]s: multi-document YAML, each document dispatched on its `kind`
//! and `apiVersion`, every error at its file and line.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::model::*;

/// The largest manifest file read (8 MiB).
pub const MAX_FILE_BYTES: usize = 8 << 20;
/// The most documents one file may hold.
pub const MAX_DOCUMENTS: usize = 10_000;

/// Where an object was written: file and line of its document's first line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The file (or etcd key, or recorded object name).
    pub file: Arc<Path>,
    /// 1-based line of the document's first line.
    pub line: u64,
}

/// One object, and where it was written.
#[derive(Clone, Debug, PartialEq)]
pub struct Located<T> {
    /// Where.
    pub origin: Origin,
    /// What.
    pub value: T,
}

/// A problem with the manifests: file, line, column and what is wrong. Line 0 means the
/// problem is the file's as a whole.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}:{column}: {message}", file.display())]
pub struct ManifestError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line (0: the whole file).
    pub line: u64,
    /// 1-based column (0: unknown).
    pub column: u64,
    /// What is wrong.
    pub message: String,
}

impl ManifestError {
    /// An error at `origin`.
    pub fn at(origin: &Origin, message: impl Into<String>) -> Self {
        ManifestError {
            file: origin.file.to_path_buf(),
            line: origin.line,
            column: 1,
            message: message.into(),
        }
    }
}

/// Every kind the mesh reads.
#[derive(Clone, Debug, PartialEq)]
#[allow(
    clippy::large_enum_variant,
    reason = "read once per manifest, not per request"
)]
pub enum Resource {
    /// `v1 Namespace`.
    Namespace(Namespace),
    /// `v1 Service`.
    Service(Service),
    /// `v1 ServiceAccount`.
    ServiceAccount(ServiceAccount),
    /// `v1 Pod`.
    Pod(Pod),
    /// `discovery.k8s.io/v1 EndpointSlice`.
    EndpointSlice(EndpointSlice),
    /// `access.smi-spec.io/v1alpha3 TrafficTarget`.
    TrafficTarget(TrafficTarget),
    /// `specs.smi-spec.io/v1alpha4 HTTPRouteGroup`.
    HttpRouteGroup(HttpRouteGroup),
    /// `specs.smi-spec.io/v1alpha4 TCPRoute`.
    TcpRoute(TcpRoute),
    /// `split.smi-spec.io/v1alpha2` or `v1alpha4 TrafficSplit`.
    TrafficSplit(TrafficSplit),
    /// `policy.openservicemesh.io/v1alpha1 Retry`.
    Retry(Retry),
    /// `policy.openservicemesh.io/v1alpha1 UpstreamTrafficSetting`.
    UpstreamTrafficSetting(UpstreamTrafficSetting),
    /// The mesh settings.
    MeshConfig(MeshConfig),
    /// FSM's `Plugin`.
    Plugin(Plugin),
    /// FSM's `PluginChain`.
    PluginChain(PluginChain),
    /// FSM's `PluginConfig`.
    PluginConfig(PluginConfig),
}

impl Resource {
    /// The kind, as manifests write it.
    pub fn kind(&self) -> &'static str {
        match self {
            Resource::Namespace(_) => "Namespace",
            Resource::Service(_) => "Service",
            Resource::ServiceAccount(_) => "ServiceAccount",
            Resource::Pod(_) => "Pod",
            Resource::EndpointSlice(_) => "EndpointSlice",
            Resource::TrafficTarget(_) => "TrafficTarget",
            Resource::HttpRouteGroup(_) => "HTTPRouteGroup",
            Resource::TcpRoute(_) => "TCPRoute",
            Resource::TrafficSplit(_) => "TrafficSplit",
            Resource::Retry(_) => "Retry",
            Resource::UpstreamTrafficSetting(_) => "UpstreamTrafficSetting",
            Resource::MeshConfig(_) => "MeshConfig",
            Resource::Plugin(_) => "Plugin",
            Resource::PluginChain(_) => "PluginChain",
            Resource::PluginConfig(_) => "PluginConfig",
        }
    }

    /// The object's metadata.
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Resource::Namespace(o) => &o.metadata,
            Resource::Service(o) => &o.metadata,
            Resource::ServiceAccount(o) => &o.metadata,
            Resource::Pod(o) => &o.metadata,
            Resource::EndpointSlice(o) => &o.metadata,
            Resource::TrafficTarget(o) => &o.metadata,
            Resource::HttpRouteGroup(o) => &o.metadata,
            Resource::TcpRoute(o) => &o.metadata,
            Resource::TrafficSplit(o) => &o.metadata,
            Resource::Retry(o) => &o.metadata,
            Resource::UpstreamTrafficSetting(o) => &o.metadata,
            Resource::MeshConfig(o) => &o.metadata,
            Resource::Plugin(o) => &o.metadata,
            Resource::PluginChain(o) => &o.metadata,
            Resource::PluginConfig(o) => &o.metadata,
        }
    }
}

/// The kinds, their accepted `apiVersion`s and their readers.
type Reader = fn(&str) -> Result<Resource, serde_saphyr::Error>;

fn read<T: DeserializeOwned>(
    text: &str,
    wrap: fn(T) -> Resource,
) -> Result<Resource, serde_saphyr::Error> {
    serde_saphyr::from_str::<T>(text).map(wrap)
}

const KINDS: &[(&str, &[&str], Reader)] = &[
    ("Namespace", &["v1"], |t| read(t, Resource::Namespace)),
    ("Service", &["v1"], |t| read(t, Resource::Service)),
    ("ServiceAccount", &["v1"], |t| {
        read(t, Resource::ServiceAccount)
    }),
    ("Pod", &["v1"], |t| read(t, Resource::Pod)),
    ("EndpointSlice", &["discovery.k8s.io/v1"], |t| {
        read(t, Resource::EndpointSlice)
    }),
    ("TrafficTarget", &["access.smi-spec.io/v1alpha3"], |t| {
        read(t, Resource::TrafficTarget)
    }),
    ("HTTPRouteGroup", &["specs.smi-spec.io/v1alpha4"], |t| {
        read(t, Resource::HttpRouteGroup)
    }),
    ("TCPRoute", &["specs.smi-spec.io/v1alpha4"], |t| {
        read(t, Resource::TcpRoute)
    }),
    (
        "TrafficSplit",
        &["split.smi-spec.io/v1alpha2", "split.smi-spec.io/v1alpha4"],
        |t| read(t, Resource::TrafficSplit),
    ),
    ("Retry", &["policy.openservicemesh.io/v1alpha1"], |t| {
        read(t, Resource::Retry)
    }),
    (
        "UpstreamTrafficSetting",
        &["policy.openservicemesh.io/v1alpha1"],
        |t| read(t, Resource::UpstreamTrafficSetting),
    ),
    (
        "MeshConfig",
        &[
            "config.flowgate.io/v1alpha1",
            "config.openservicemesh.io/v1alpha2",
        ],
        |t| read(t, Resource::MeshConfig),
    ),
    ("Plugin", &["plugin.flomesh.io/v1alpha1"], |t| {
        read(t, Resource::Plugin)
    }),
    ("PluginChain", &["plugin.flomesh.io/v1alpha1"], |t| {
        read(t, Resource::PluginChain)
    }),
    ("PluginConfig", &["plugin.flomesh.io/v1alpha1"], |t| {
        read(t, Resource::PluginConfig)
    }),
];

/// The two fields every document has.
#[derive(Deserialize)]
struct Header {
    #[serde(default, rename = "apiVersion")]
    api_version: Option<serde_saphyr::Spanned<String>>,
    #[serde(default)]
    kind: Option<serde_saphyr::Spanned<String>>,
}

/// One document of a YAML stream.
struct Document {
    /// The file line of the text's first line.
    text_line: u64,
    /// The file line of its first line that is neither blank nor a comment.
    content_line: u64,
    text: String,
}

/// The documents of a YAML stream, blank and comment-only ones left out. A document starts
/// after a line that is `---` (or starts with `--- `).
fn documents(text: &str) -> Vec<Document> {
    let mut docs = Vec::new();
    let mut current = Document {
        text_line: 1,
        content_line: 0,
        text: String::new(),
    };
    let flush = |current: &mut Document, docs: &mut Vec<Document>, next_line: u64| {
        let done = std::mem::replace(
            current,
            Document {
                text_line: next_line,
                content_line: 0,
                text: String::new(),
            },
        );
        if done.content_line > 0 {
            docs.push(done);
        }
    };
    for (i, line) in text.lines().enumerate() {
        let n = i as u64 + 1;
        if line.trim_end() == "---" || line.starts_with("--- ") {
            flush(&mut current, &mut docs, n + 1);
            continue;
        }
        if line.trim_end() == "..." {
            // An empty line in its place keeps the document's line numbers.
            current.text.push('\n');
            continue;
        }
        let t = line.trim();
        if current.content_line == 0 && !t.is_empty() && !t.starts_with('#') {
            current.content_line = n;
        }
        current.text.push_str(line);
        current.text.push('\n');
    }
    flush(&mut current, &mut docs, 0);
    docs
}

/// A serde-saphyr error inside the document starting at `first_line`, as a
/// [`ManifestError`] at its line in the file.
fn yaml_error(e: &serde_saphyr::Error, file: &Path, first_line: u64) -> ManifestError {
    let text = e.to_string();
    let msg = text.lines().next().unwrap_or("invalid YAML");
    let msg = msg.strip_prefix("error: ").unwrap_or(msg);
    // Drop a leading "line N column M: " (the position goes in the fields).
    let msg = match msg
        .strip_prefix("line ")
        .and_then(|r| r.find(": ").map(|i| &r[i + 2..]))
    {
        Some(rest) => rest,
        None => msg,
    };
    let msg = match msg.rfind(" at line ") {
        Some(i) => &msg[..i],
        None => msg,
    };
    let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
    ManifestError {
        file: file.to_path_buf(),
        line: first_line + line.saturating_sub(1),
        column,
        message: msg.to_string(),
    }
}

/// Reads every document of `text` (the contents of `file`). All errors are returned, each
/// at its line; a document with an error yields no object.
pub fn parse_manifests(
    text: &str,
    file: &Path,
) -> Result<Vec<Located<Resource>>, Vec<ManifestError>> {
    let whole = |message: String| {
        vec![ManifestError {
            file: file.to_path_buf(),
            line: 0,
            column: 0,
            message,
        }]
    };
    if text.len() > MAX_FILE_BYTES {
        return Err(whole(format!("larger than {} MiB", MAX_FILE_BYTES >> 20)));
    }
    let docs = documents(text);
    if docs.len() > MAX_DOCUMENTS {
        return Err(whole(format!("more than {MAX_DOCUMENTS} documents")));
    }
    let path: Arc<Path> = Arc::from(file);
    let mut out = Vec::with_capacity(docs.len());
    let mut errors = Vec::new();
    for Document {
        text_line: first_line,
        content_line,
        text: doc,
    } in docs
    {
        let origin = Origin {
            file: path.clone(),
            line: content_line,
        };
        let header: Header = match serde_saphyr::from_str(&doc) {
            Ok(h) => h,
            Err(e) => {
                errors.push(yaml_error(&e, file, first_line));
                continue;
            }
        };
        let Some(kind) = header.kind else {
            errors.push(ManifestError::at(&origin, "a document without `kind`"));
            continue;
        };
        // An error about a field points at the field.
        let at_field = |loc: serde_saphyr::Location, message: String| ManifestError {
            file: file.to_path_buf(),
            line: first_line + loc.line().saturating_sub(1),
            column: loc.column(),
            message,
        };
        let (kind_at, kind) = (kind.referenced, kind.value);
        let Some((_, versions, reader)) = KINDS.iter().find(|(k, _, _)| *k == kind) else {
            let known: Vec<&str> = KINDS.iter().map(|(k, _, _)| *k).collect();
            errors.push(at_field(
                kind_at,
                format!("unknown kind `{kind}` (known: {})", known.join(", ")),
            ));
            continue;
        };
        let (version_at, version) = header
            .api_version
            .map_or((kind_at, String::new()), |v| (v.referenced, v.value));
        if !versions.contains(&version.as_str()) {
            errors.push(at_field(
                version_at,
                format!(
                    "{kind}: apiVersion `{version}` is not one of {}",
                    versions.join(", ")
                ),
            ));
            continue;
        }
        match reader(&doc) {
            Ok(Resource::Pod(p))
                if p.metadata
                    .annotations
                    .get(crate::model::CAPTURE_ANNOTATION)
                    .is_some_and(|v| {
                        !v.eq_ignore_ascii_case("redirect") && !v.eq_ignore_ascii_case("none")
                    }) =>
            {
                errors.push(ManifestError::at(
                    &origin,
                    format!(
                        "Pod: annotation `{}` is `redirect` or `none`",
                        crate::model::CAPTURE_ANNOTATION
                    ),
                ));
            }
            Ok(r) => out.push(Located { origin, value: r }),
            Err(e) => {
                let mut err = yaml_error(&e, file, first_line);
                err.message = format!("{kind}: {}", err.message);
                errors.push(err);
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;

    const TWO: &str = "# services\napiVersion: v1\nkind: Service\nmetadata: { name: bookstore, namespace: store }\nspec:\n  selector: { app: bookstore }\n  ports: [{ port: 14001, name: http, appProtocol: http }]\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: { name: bookstore, namespace: store }\n";

    #[test]
    fn a_capture_mode_is_redirect_or_none() {
        let pod = |mode: &str| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: a\n  annotations: {{ flowgate.io/capture: {mode} }}\n"
            )
        };
        let r = parse_manifests(&pod("redirect"), Path::new("p.yaml")).unwrap();
        assert!(matches!(&r[0].value, Resource::Pod(p) if p.captured()));
        let r = parse_manifests(&pod("none"), Path::new("p.yaml")).unwrap();
        assert!(matches!(&r[0].value, Resource::Pod(p) if !p.captured()));
        let e = parse_manifests(&pod("tproxy"), Path::new("p.yaml")).unwrap_err();
        assert!(e[0].message.contains("flowgate.io/capture"), "{:?}", e[0]);
        assert_eq!(e[0].line, 1);
    }

    #[test]
    fn multi_document_files_keep_their_lines() {
        let r = parse_manifests(TWO, Path::new("m.yaml")).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].origin.line, 2);
        assert_eq!(r[0].value.kind(), "Service");
        assert_eq!(r[1].origin.line, 9);
        assert_eq!(r[1].value.metadata().ns(), "store");
        match &r[0].value {
            Resource::Service(s) => {
                assert_eq!(s.spec.ports[0].port, 14001);
                assert_eq!(s.spec.ports[0].app_protocol.as_deref(), Some("http"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors_name_file_line_and_what() {
        let bad = TWO.replace("kind: ServiceAccount", "kind: ServiceAcount");
        let e = parse_manifests(&bad, Path::new("m.yaml")).unwrap_err();
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].line, e[0].column), (10, 7), "{}", e[0]);
        // A `...` line keeps the lines after it where they are.
        let dots =
            parse_manifests("...\napiVersion: v1\nkind: Nope\n", Path::new("d.yaml")).unwrap_err();
        assert_eq!((dots[0].line, dots[0].column), (3, 7), "{}", dots[0]);
        assert!(
            e[0].message.contains("unknown kind `ServiceAcount`"),
            "{}",
            e[0]
        );

        let typo = "---\napiVersion: access.smi-spec.io/v1alpha3\nkind: TrafficTarget\nmetadata: { name: t }\nspec:\n  destination: { kind: ServiceAccount, name: a }\n  sources: [{ kind: ServiceAccount, name: b }]\n  rulez: []\n";
        let e = parse_manifests(typo, Path::new("t.yaml")).unwrap_err();
        assert_eq!(e[0].line, 8, "{}", e[0]);
        assert!(e[0].message.contains("rulez"), "{}", e[0]);
        assert!(e[0].to_string().starts_with("t.yaml:8:"), "{}", e[0]);

        let e = parse_manifests(
            "apiVersion: v1\nkind: Service\nmetadata: [\n",
            Path::new("x.yaml"),
        )
        .unwrap_err();
        assert!(e[0].line >= 1, "{}", e[0]);

        let e = parse_manifests(
            "apiVersion: v2\nkind: Pod\nmetadata: { name: p }\n",
            Path::new("p.yaml"),
        )
        .unwrap_err();
        assert!(e[0].message.contains("apiVersion `v2`"), "{}", e[0]);
    }

    #[test]
    fn core_kinds_ignore_what_the_mesh_does_not_read() {
        let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: bookbuyer-1\n  namespace: buyer\n  labels: { app: bookbuyer }\n  annotations: { x: y }\nspec:\n  serviceAccountName: bookbuyer\n  containers: [{ name: app, image: bookbuyer:v1 }]\nstatus: { podIP: 10.0.0.5, phase: Running }\n";
        let r = parse_manifests(pod, Path::new("p.yaml")).unwrap();
        match &r[0].value {
            Resource::Pod(p) => {
                assert_eq!(p.service_account(), "bookbuyer");
                assert_eq!(p.status.pod_ip.as_deref(), Some("10.0.0.5"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn limits_hold() {
        let many = "apiVersion: v1\nkind: Namespace\nmetadata: { name: a }\n---\n"
            .repeat(MAX_DOCUMENTS + 1);
        let e = parse_manifests(&many, Path::new("big.yaml")).unwrap_err();
        assert!(e[0].message.contains("documents"), "{}", e[0]);
        assert_eq!(e[0].line, 0);
    }
}
