//! `flowgate-controller`: the mesh control plane's command line.
//!
//! ```text
//! flowgate-controller run --source dir:PATH      watch the manifests (or etcd:HOST:PORT/PREFIX)
//!                                                and serve them over ADS
//!                         [--listen ADDR]        (TLS; SotW and delta; default 127.0.0.1:15010)
//!                         [--server-name NAME]   names in the controller's certificate
//!                         [--admin ADDR]         GET /status as JSON (default 127.0.0.1:15000)
//!                         [--state DIR]          CA root, trust bundle `ca.pem` (and as an
//!                                                SDS file, `ca-sds.yaml`), token key
//!                         [--shared etcd:HOST:PORT/PREFIX --shared-key FILE]
//!                                                one of several replicas: CA, token key and
//!                                                leaves shared in etcd, sealed with FILE
//! flowgate-controller status [--admin ADDR]      each proxy's ACKed/NACKed versions, the
//!                                                manifests' errors
//! flowgate-controller check PATH                 validate a manifest directory (or file):
//!                                                exit 0, or 2 with every error at file:line
//! flowgate-controller token NS/SA [--ttl 24h]    print a bootstrap token for a service account
//!                         [--state DIR]
//! flowgate-controller rotate-root [--overlap 1h] start a root rotation (new root trusted at
//!                                                once, signing 10 s later)
//! flowgate-controller certificate NS/SA --out DIR   a certificate, key and trust bundle for a
//!                                                workload that cannot send a CSR
//! ```
//!
//! `run` serves what proxyless gRPC clients need (listeners, clusters, endpoints) and every
//! pod's sidecar (node id `<pod>.<namespace>`) its listeners, mTLS clusters, endpoints and
//! SDS secrets (explicit proxy mode; SMI policy as RBAC in strict mode), and signs CSRs.
//! Its port is TLS with the controller's mesh certificate; callers prove a service account
//! by their mesh certificate or a bootstrap token (`token`), and a pod's secrets go only
//! to its own account. Both state-of-the-world and delta ADS are served. Traffic capture
//! is not built yet.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Parser, Subcommand};
use flowgate::mesh::token::TokenKey;
use flowgate::mesh::{MeshState, load_dir, parse_manifests};

const EXAMPLES: &str = "\
Examples:
  flowgate-controller run --source dir:examples/mesh       serve the demo's mesh over ADS on 127.0.0.1:15010
  flowgate-controller status                               what each proxy ACKed or NACKed, and manifest errors
  flowgate-controller check examples/mesh                  validate the bookstore demo's manifests
  flowgate-controller token bookstore/bookstore            a bootstrap token (24 h) for that service account
  flowgate-controller token --ttl 10m --state /var/lib/flowgate bookbuyer/bookbuyer
  flowgate-controller rotate-root --overlap 2h               start a root rotation in the running controller
  flowgate-controller certificate shop/client --out creds  cert.pem, key.pem, ca.pem for a proxyless gRPC client";

/// `flowgate-controller`: the Flowgate mesh control plane — watches mesh manifests and serves
/// them over xDS (ADS), checks manifests, makes bootstrap tokens.
#[derive(Debug, Parser)]
#[command(name = "flowgate-controller", version, about, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Watch a source of manifests and serve the mesh over ADS until SIGTERM or SIGINT. A
    /// broken change is logged with every error at file:line and the last good mesh stays
    /// served.
    Run {
        /// Where the manifests are: `dir:PATH` (a directory, polled every 250 ms),
        /// `etcd:HOST:PORT[/PREFIX]` (every key under the prefix, default
        /// `/flowgate/mesh/`, is one manifest file; watched) or `kube` (the Kubernetes API
        /// the in-cluster service account or the kubeconfig names; built with the `kube`
        /// feature).
        #[arg(long)]
        source: String,
        /// Where ADS and the certificate service listen: TLS with the controller's mesh
        /// certificate (trust bundle: `ca.pem` in the state directory). Callers prove their
        /// service account with their mesh certificate or a bootstrap token, and are served
        /// only their own pods' secrets.
        #[arg(long, default_value = "127.0.0.1:15010")]
        listen: std::net::SocketAddr,
        /// A name the controller's certificate carries for clients that check it (DNS name
        /// or IP address; repeatable). The listen address is always added.
        #[arg(long = "server-name", default_values_t = ["localhost".to_string(), "flowgate-controller".to_string()])]
        server_names: Vec<String>,
        /// Where the admin endpoint listens (`GET /status`, JSON); keep it on loopback.
        #[arg(long, default_value = "127.0.0.1:15000")]
        admin: std::net::SocketAddr,
        /// The controller's state directory: the CA root (`root.pem`, `root.key`, made on
        /// first use), the trust bundle it writes (`ca.pem`) and the token key.
        #[arg(long, default_value = ".flowgate-controller")]
        state: PathBuf,
        /// Run as one of several replicas: `etcd:HOST:PORT[/PREFIX]` (default prefix
        /// `/flowgate/controller/`) holds the CA's roots, the token key and every service
        /// account's leaf, encrypted with `--shared-key`, so every replica serves the same
        /// certificates and a proxy can move between them. Each replica keeps its own state
        /// directory (a copy, for `token` and `certificate`).
        #[arg(long, requires = "shared_key")]
        shared: Option<String>,
        /// The file (at least 32 random bytes) every replica holds; the records in etcd are
        /// sealed with a key derived from it.
        #[arg(long)]
        shared_key: Option<PathBuf>,
    },
    /// Print the running controller's status: the mesh version and its manifest errors, and
    /// per proxy and type the versions sent, ACKed and NACKed (with the reason).
    Status {
        /// The controller's admin endpoint.
        #[arg(long, default_value = "127.0.0.1:15000")]
        admin: std::net::SocketAddr,
    },
    /// Start a root rotation in the running controller: a new root is trusted at once (the
    /// bundle goes to every proxy and to `ca.pem`), signs 10 s later (every leaf is then
    /// re-issued from it), and the old root stays trusted for the overlap.
    RotateRoot {
        /// How long the old root stays trusted once the new one signs: longer than it
        /// takes every workload to renew.
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        overlap: Duration,
        /// The controller's admin endpoint.
        #[arg(long, default_value = "127.0.0.1:15000")]
        admin: std::net::SocketAddr,
    },
    /// Validate mesh manifests (a directory, read recursively, or one file): exit 0 with a
    /// summary, or 2 with every error at its file and line.
    Check {
        /// The directory or file.
        path: PathBuf,
    },
    /// Print a bootstrap token for service account NS/SA: a new workload presents it to get
    /// its first certificate.
    Token {
        /// `namespace/service-account`.
        account: String,
        /// How long the token is valid.
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        ttl: Duration,
        /// The controller's state directory (its token key is `token.key` there, made on
        /// first use).
        #[arg(long, default_value = ".flowgate-controller")]
        state: PathBuf,
    },
    /// Write a certificate and key for service account NS/SA, made by the controller's CA,
    /// with the trust bundle (`cert.pem`, `key.pem`, `ca.pem` in OUT): for a workload that
    /// cannot send a CSR, such as a proxyless gRPC client. The key is made here — prefer
    /// CSRs with a token where the workload can.
    Certificate {
        /// `namespace/service-account`.
        account: String,
        /// Where to write the files.
        #[arg(long)]
        out: PathBuf,
        /// How long the certificate is valid.
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        ttl: Duration,
        /// The mesh's trust domain (the MeshConfig's).
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        /// The controller's state directory (its CA root).
        #[arg(long, default_value = ".flowgate-controller")]
        state: PathBuf,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    flowgate::vocabulary::duration::parse(s)
}

fn load(path: &Path) -> Result<MeshState, Vec<flowgate::mesh::ManifestError>> {
    if path.is_dir() {
        return load_dir(path);
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![flowgate::mesh::ManifestError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            message: format!("cannot read: {e}"),
        }]
    })?;
    MeshState::build(parse_manifests(&text, path)?)
}

/// What the admin endpoint shows besides the proxies.
#[derive(Default)]
struct MeshStatus {
    version: String,
    errors: Vec<String>,
    /// Per pod's node id: when the leaf it is served over SDS expires.
    leaf_expiry: std::collections::BTreeMap<String, SystemTime>,
    /// How many sidecar leaves this controller issued since it started.
    leaves_issued: u64,
}

/// The status document: the mesh and every proxy.
fn status_json(mesh: &MeshStatus, proxies: &[flowgate::mesh::xds::ProxyStatus]) -> String {
    let secs = |t: Option<SystemTime>| {
        t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs())
    };
    let proxies: Vec<serde_json::Value> = proxies
        .iter()
        .map(|p| {
            let types: serde_json::Map<String, serde_json::Value> = p
                .types
                .iter()
                .map(|(t, s)| {
                    (
                        t.rsplit('.').next().unwrap_or(t).to_string(),
                        serde_json::json!({
                            "sent": s.sent,
                            "acked": s.acked,
                            "nacked": s.nacked.as_ref().map(|(v, why)| serde_json::json!({"version": v, "error": why})),
                            "at": secs(s.at),
                        }),
                    )
                })
                .collect();
            // The certificate it proved itself with, else the leaf it is served over SDS.
            let expiry = p.cert_expiry.or_else(|| mesh.leaf_expiry.get(&p.node).copied());
            serde_json::json!({
                "node": p.node,
                "connected": p.connected,
                "identity": p.identity,
                "cert_expiry": expiry.map(|t| secs(Some(t))),
                "types": types,
            })
        })
        .collect();
    serde_json::json!({
        "mesh": {"version": mesh.version, "errors": mesh.errors, "leaves_issued": mesh.leaves_issued},
        "proxies": proxies,
    })
    .to_string()
}

/// Answers `GET /status` on `listener` with [`status_json`] and `POST /rotate-root`;
/// anything else gets 404.
async fn admin(
    listener: tokio::net::TcpListener,
    server: flowgate::mesh::xds::AdsServer,
    mesh: std::sync::Arc<std::sync::Mutex<MeshStatus>>,
    rotate: tokio::sync::mpsc::Sender<Duration>,
) {
    flowgate::admin::serve(listener, move |method, target| {
        match (method, target.split_once('?').unwrap_or((target, ""))) {
            ("GET", ("/status", _)) => {
                let m = mesh.lock().unwrap_or_else(|p| p.into_inner());
                (200, status_json(&m, &server.status()))
            }
            // `POST /rotate-root?overlap=DURATION`: default one hour.
            ("POST", ("/rotate-root", query)) => {
                let overlap = query
                    .strip_prefix("overlap=")
                    .map_or(Ok(Duration::from_secs(3600)), parse_duration);
                match overlap {
                    Ok(o) if rotate.try_send(o).is_ok() => (
                        202,
                        format!(
                            "{{\"rotation\": \"staged\", \"promote_in_s\": {}, \"overlap_s\": {}}}",
                            ROOT_PROPAGATION.as_secs(),
                            o.as_secs()
                        ),
                    ),
                    Ok(_) => (
                        409,
                        "{\"error\": \"a rotation is already being started\"}".to_string(),
                    ),
                    Err(e) => (
                        400,
                        serde_json::json!({ "error": format!("overlap: {e}") }).to_string(),
                    ),
                }
            }
            _ => (
                404,
                "{\"error\": \"GET /status or POST /rotate-root[?overlap=DURATION]\"}".to_string(),
            ),
        }
    })
    .await;
}

/// `rotate-root`: asks the running controller to start a root rotation.
fn rotate_root(admin: std::net::SocketAddr, overlap: Duration) -> ExitCode {
    match flowgate::admin::call(
        admin,
        &format!("POST /rotate-root?overlap={}s", overlap.as_secs()),
    ) {
        Ok((status, body)) if status.contains(" 202 ") => {
            let _ = writeln!(std::io::stdout().lock(), "{body}");
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            eprintln!("error: {status}: {body}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// `status`: fetches the admin endpoint's JSON and prints it, a line per proxy and type.
fn status(admin: std::net::SocketAddr) -> ExitCode {
    let body = match flowgate::admin::call(admin, "GET /status") {
        Ok((_, body)) => body,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let body = body.as_str();
    let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else {
        eprintln!("error: {admin} did not answer with the status document");
        return ExitCode::from(2);
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "mesh version {}",
        v["mesh"]["version"].as_str().unwrap_or("-")
    );
    for e in v["mesh"]["errors"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "  manifest error: {}", e.as_str().unwrap_or_default());
    }
    for p in v["proxies"].as_array().into_iter().flatten() {
        let expiry = p["cert_expiry"].as_u64().map_or_else(String::new, |t| {
            format!(", certificate expires at unix {t}")
        });
        let _ = writeln!(
            out,
            "proxy {} ({}; {}{expiry})",
            p["node"].as_str().unwrap_or("?"),
            if p["connected"].as_bool() == Some(true) {
                "connected"
            } else {
                "gone"
            },
            p["identity"].as_str().unwrap_or("?"),
        );
        for (t, s) in p["types"].as_object().into_iter().flatten() {
            let nack = match &s["nacked"] {
                serde_json::Value::Null => String::new(),
                n => format!(
                    ", NACKed {}: {}",
                    n["version"].as_str().unwrap_or_default(),
                    n["error"].as_str().unwrap_or_default()
                ),
            };
            let _ = writeln!(
                out,
                "  {t}: sent {} acked {}{nack}",
                s["sent"].as_str().unwrap_or_default(),
                s["acked"].as_str().unwrap_or_default()
            );
        }
    }
    ExitCode::SUCCESS
}

/// Everything the ADS server serves for `mesh`: what proxyless clients need, and each pod's
/// sidecar its own resources and secrets, for its service account only. Notes in `status`
/// when each pod's leaf expires.
fn snapshot(
    mesh: &MeshState,
    ca: &flowgate::mesh::ca::Ca,
    leaves: &mut flowgate::mesh::xds::compile::Leaves,
    status: &std::sync::Mutex<MeshStatus>,
) -> flowgate::mesh::xds::Snapshot {
    use flowgate::mesh::xds::compile::{all_sidecar_secrets, node_id, sidecar_sets};
    use flowgate::mesh::xds::{Snapshot, grpc_resources};
    let mut snap = Snapshot::new(grpc_resources(mesh));
    // Each sidecar over the set of what it may call (every service in permissive mode).
    let (sets, of_pod) = sidecar_sets(mesh);
    for (name, resources) in sets {
        snap = snap.with_set(name, resources);
    }
    let set_of: std::collections::BTreeMap<String, String> = of_pod
        .into_iter()
        .map(|((ns, pod), set)| (node_id(&ns, &pod), set))
        .collect();
    match all_sidecar_secrets(mesh, ca, leaves) {
        Ok(per_node) => {
            let expiry: std::collections::BTreeMap<(&str, &str), SystemTime> = leaves
                .expiries()
                .map(|(id, t)| ((id.namespace.as_str(), id.service_account.as_str()), t))
                .collect();
            let mut leaf_expiry = std::collections::BTreeMap::new();
            for (node, (owner, resources)) in per_node {
                if let Some(t) = expiry.get(&(owner.0.as_str(), owner.1.as_str())) {
                    leaf_expiry.insert(node.clone(), *t);
                }
                let set = set_of.get(&node).cloned();
                snap = snap.with_owned_node(node, Some(owner), set, resources);
            }
            status.lock().unwrap_or_else(|p| p.into_inner()).leaf_expiry = leaf_expiry;
        }
        Err(e) => tracing::error!("issuing sidecar certificates: {e}"),
    }
    snap
}

/// The controller's TLS certificate: its SPIFFE ID, and `names` (plus the address it
/// listens on) for clients that check the server's name.
struct ServerCert {
    config: std::sync::Arc<flowgate::mesh::xds::auth::ServerConfig>,
    renew_at: SystemTime,
}

fn server_cert(
    ca: &flowgate::mesh::ca::Ca,
    names: &[String],
) -> Result<ServerCert, Box<dyn std::error::Error>> {
    use flowgate::mesh::xds::auth::{controller_id, server_config};
    let leaf = ca.issue_with_names(&controller_id(ca.trust_domain())?, names)?;
    Ok(ServerCert {
        config: server_config(ca, &leaf)?,
        renew_at: SystemTime::now() + ca.leaf_validity() / 2,
    })
}

/// The name of the secret in `ca-sds.yaml`.
const CA_SDS_SECRET: &str = "flowgate-mesh-ca";

/// Writes the trust bundle proxies verify the controller (and each other) with: `ca.pem`,
/// and `ca-sds.yaml`, the same as an SDS file an Envoy bootstrap can name
/// (`path_config_source` with a `watched_directory`), so Envoy follows a root rotation
/// without a restart. Each is replaced whole (written aside, then renamed).
fn write_bundle(state: &Path, ca: &flowgate::mesh::ca::Ca) {
    let bundle = ca.bundle_pem();
    let indented: String = bundle.lines().map(|l| format!("        {l}\n")).collect();
    let sds = format!(
        "resources:\n- \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret\n  name: {CA_SDS_SECRET}\n  validation_context:\n    trusted_ca:\n      inline_string: |\n{indented}"
    );
    for (name, text) in [("ca.pem", bundle.as_str()), ("ca-sds.yaml", sds.as_str())] {
        let path = state.join(name);
        let tmp = state.join(format!(".{name}.tmp"));
        if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &path)) {
            tracing::error!("writing {}: {e}", path.display());
        }
    }
}

/// At most one compile per this long: changes arriving within it of the last compile are
/// gathered and compiled together at its end.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// How long a staged root is only trusted before it signs: time for the new trust bundle
/// to reach every proxy before any leaf it signed does.
const ROOT_PROPAGATION: Duration = Duration::from_secs(10);

/// `run`'s options.
struct RunOptions {
    source: String,
    listen: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    state: PathBuf,
    server_names: Vec<String>,
    /// The shared store (`etcd:…`) and its key file, when run as one of several replicas.
    shared: Option<(String, PathBuf)>,
}

/// The source `--source` names: `dir:PATH`, or `etcd:HOST:PORT[/PREFIX]` (an
/// `http://` before the address is allowed; the prefix defaults to `/flowgate/mesh/`).
fn open_source(spec: &str) -> Result<Box<dyn flowgate::mesh::Source>, String> {
    use flowgate::mesh::{DirSource, EtcdSource};
    if let Some(dir) = spec.strip_prefix("dir:") {
        // Changes are in force well within a second of the file being saved.
        return Ok(Box::new(
            DirSource::new(dir).interval(Duration::from_millis(250)),
        ));
    }
    if let Some(rest) = spec.strip_prefix("etcd:") {
        let (client, prefix) = etcd_at(rest, "/flowgate/mesh/")?;
        return Ok(Box::new(EtcdSource::new(client, prefix)));
    }
    if spec == "kube" {
        #[cfg(feature = "kube")]
        return Ok(Box::new(flowgate::mesh::KubeSource::infer()));
        #[cfg(not(feature = "kube"))]
        return Err("this controller was built without the Kubernetes source (build it with `--features kube`)".into());
    }
    Err("expected `dir:PATH`, `etcd:HOST:PORT[/PREFIX]` or `kube`".into())
}

/// An etcd client and key prefix from `[http://]HOST:PORT[/PREFIX]`.
fn etcd_at(
    spec: &str,
    default_prefix: &str,
) -> Result<(flowgate::lb::discovery::EtcdClient, String), String> {
    use std::net::ToSocketAddrs;
    let rest = spec.strip_prefix("http://").unwrap_or(spec);
    let (addr, prefix) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, default_prefix),
    };
    let addr = addr
        .to_socket_addrs()
        .map_err(|e| format!("etcd address `{addr}`: {e}"))?
        .next()
        .ok_or_else(|| format!("etcd address `{addr}` resolves to nothing"))?;
    Ok((
        flowgate::lb::discovery::EtcdClient::new(addr, Duration::from_secs(5)),
        prefix.to_string(),
    ))
}

/// The shared store `--shared etcd:…` names, sealed with the key in `key_file`.
fn open_shared(
    spec: &str,
    key_file: &Path,
) -> Result<flowgate::mesh::replica::SharedStore, String> {
    use flowgate::mesh::replica::{SealKey, SharedStore};
    let rest = spec
        .strip_prefix("etcd:")
        .ok_or("expected `etcd:HOST:PORT[/PREFIX]`")?;
    let (client, prefix) = etcd_at(rest, "/flowgate/controller/")?;
    let key = SealKey::from_file(key_file).map_err(|e| e.to_string())?;
    Ok(SharedStore::new(client, prefix, key))
}

/// Retries `op` (with a capped backoff, each failure logged) until it succeeds or fails
/// for good: etcd may come up after the controller. A record that does not open is for
/// good.
async fn until_reachable<T, F, Fut>(what: &str, mut op: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, flowgate::mesh::replica::ReplicaError>>,
{
    use flowgate::mesh::replica::ReplicaError;
    let mut backoff = Duration::from_millis(250);
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(ReplicaError::Etcd(e)) => {
                tracing::warn!("{what}: etcd: {e}; trying again in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(format!("{what}: {e}")),
        }
    }
}

/// With replicas: the shared store and the revisions of its records this replica holds.
struct Shared {
    store: std::sync::Arc<flowgate::mesh::replica::SharedStore>,
    ca_revision: i64,
    leaf_revisions: std::collections::BTreeMap<flowgate::mesh::ca::SpiffeId, i64>,
}

/// The CA and the leaves it issued, kept in the shared store when there is one.
struct Authority {
    ca: std::sync::Arc<flowgate::mesh::ca::Ca>,
    leaves: flowgate::mesh::xds::compile::Leaves,
    shared: Option<Shared>,
}

impl Authority {
    /// Makes `next` the CA. With replicas it is written to the shared store first; if
    /// another replica changed the CA since, that one is taken instead. Returns whether the
    /// CA changed.
    async fn change_ca(&mut self, next: flowgate::mesh::ca::Ca) -> bool {
        use flowgate::mesh::ca::Ca;
        let mut next = next;
        if let Some(shared) = &mut self.shared {
            let record = next.export();
            if record != self.ca.export() {
                match shared.store.put_ca(&record, shared.ca_revision).await {
                    Ok(Ok(rev)) => shared.ca_revision = rev,
                    Ok(Err(Some(theirs))) => {
                        match Ca::import(&theirs.value, next.leaf_validity()) {
                            Ok(ca) => {
                                tracing::info!(
                                    "another replica changed the CA first; taking its change"
                                );
                                shared.ca_revision = theirs.mod_revision;
                                next = ca;
                            }
                            Err(e) => {
                                tracing::error!("the shared CA: {e}; keeping this one");
                                return false;
                            }
                        }
                    }
                    Ok(Err(None)) => {
                        tracing::error!("the shared CA record was deleted; keeping this one");
                        return false;
                    }
                    Err(e) => {
                        tracing::error!("writing the CA to the shared store: {e}; not changed");
                        return false;
                    }
                }
            }
        }
        self.ca = std::sync::Arc::new(next);
        true
    }

    /// Takes what other replicas wrote; returns (the CA changed, anything changed).
    fn apply(&mut self, changes: Vec<flowgate::mesh::replica::Change>) -> (bool, bool) {
        use flowgate::mesh::ca::Ca;
        use flowgate::mesh::replica::Change;
        let Some(shared) = &mut self.shared else {
            return (false, false);
        };
        let (mut ca_changed, mut any) = (false, false);
        for change in changes {
            match change {
                Change::Ca(stored) if stored.mod_revision > shared.ca_revision => {
                    shared.ca_revision = stored.mod_revision;
                    if stored.value == self.ca.export() {
                        continue;
                    }
                    match Ca::import(&stored.value, self.ca.leaf_validity()) {
                        Ok(ca) => {
                            tracing::info!("the CA changed in the shared store; taking it");
                            self.ca = std::sync::Arc::new(ca);
                            (ca_changed, any) = (true, true);
                        }
                        Err(e) => tracing::error!("the shared CA: {e}; keeping this one"),
                    }
                }
                Change::Leaf(id, stored)
                    if stored.mod_revision
                        > shared.leaf_revisions.get(&id).copied().unwrap_or(0) =>
                {
                    shared
                        .leaf_revisions
                        .insert(id.clone(), stored.mod_revision);
                    let same = self
                        .leaves
                        .leaf(&id)
                        .is_some_and(|l| l.issued.cert_pem == stored.value.cert_pem);
                    if !same {
                        match stored.value.leaf() {
                            Ok(leaf) => {
                                self.leaves.adopt(id, leaf);
                                any = true;
                            }
                            Err(e) => tracing::error!("the shared leaf of {id}: {e}"),
                        }
                    }
                }
                _ => {}
            }
        }
        (ca_changed, any)
    }

    /// The snapshot of `mesh`. With replicas, leaves issued for it are written to the
    /// shared store before it is served; where another replica's leaf came first, that one
    /// is taken and the snapshot made again.
    async fn compile(
        &mut self,
        mesh: &MeshState,
        status: &std::sync::Mutex<MeshStatus>,
    ) -> flowgate::mesh::xds::Snapshot {
        use flowgate::mesh::replica::LeafRecord;
        let mut tries = 0;
        loop {
            let snap = snapshot(mesh, &self.ca, &mut self.leaves, status);
            status
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .leaves_issued = self.leaves.issued_count();
            let Some(shared) = &mut self.shared else {
                return snap;
            };
            let mut lost = false;
            for id in self.leaves.take_fresh() {
                let Some(record) = self.leaves.leaf(&id).and_then(LeafRecord::of) else {
                    continue;
                };
                let expected = shared.leaf_revisions.get(&id).copied().unwrap_or(0);
                match shared.store.put_leaf(&id, &record, expected).await {
                    Ok(Ok(rev)) => {
                        shared.leaf_revisions.insert(id, rev);
                    }
                    Ok(Err(Some(theirs))) => match theirs.value.leaf() {
                        Ok(leaf) => {
                            shared
                                .leaf_revisions
                                .insert(id.clone(), theirs.mod_revision);
                            self.leaves.adopt(id, leaf);
                            lost = true;
                        }
                        Err(e) => tracing::error!("the shared leaf of {id}: {e}"),
                    },
                    // Deleted meanwhile: written again next time.
                    Ok(Err(None)) => {
                        shared.leaf_revisions.remove(&id);
                    }
                    Err(e) => tracing::error!(
                        "sharing the leaf of {id}: {e}; served, but only by this replica"
                    ),
                }
            }
            // Accounts that left the mesh: their shared leaves go (unless another replica
            // wrote them since).
            let accounts: std::collections::BTreeSet<(&str, &str)> = mesh
                .pods
                .iter()
                .map(|((ns, _), pod)| (ns.as_str(), pod.value.service_account()))
                .collect();
            let gone: Vec<(flowgate::mesh::ca::SpiffeId, i64)> = shared
                .leaf_revisions
                .iter()
                .filter(|(id, _)| {
                    !accounts.contains(&(id.namespace.as_str(), id.service_account.as_str()))
                })
                .map(|(id, rev)| (id.clone(), *rev))
                .collect();
            for (id, rev) in gone {
                match shared.store.delete_leaf(&id, rev).await {
                    Ok(deleted) => {
                        if deleted {
                            tracing::info!("{id} left the mesh; its shared leaf is deleted");
                        }
                        shared.leaf_revisions.remove(&id);
                        self.leaves.forget(&id);
                    }
                    Err(e) => tracing::warn!("deleting the shared leaf of {id}: {e}"),
                }
            }
            tries += 1;
            if !lost || tries >= 3 {
                return snap;
            }
        }
    }
}

/// Follows the shared store from `revision` on, handing each batch of changes over; after
/// a broken or compacted watch, lists everything again.
async fn follow_shared(
    store: std::sync::Arc<flowgate::mesh::replica::SharedStore>,
    mut revision: i64,
    tx: tokio::sync::mpsc::Sender<Vec<flowgate::mesh::replica::Change>>,
) {
    let mut backoff = Duration::from_millis(250);
    loop {
        if revision == 0 {
            match store.list().await {
                Ok((rev, changes)) => {
                    if tx.send(changes).await.is_err() {
                        return;
                    }
                    revision = rev + 1;
                }
                Err(e) => {
                    tracing::warn!("the shared store: {e}; trying again in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
        }
        match store.watch(revision).await {
            Ok(mut watch) => loop {
                match watch.next().await {
                    Ok(Some(changes)) => {
                        backoff = Duration::from_millis(250);
                        if !changes.is_empty() && tx.send(changes).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!("watching the shared store: {e}");
                        break;
                    }
                }
            },
            Err(e) => tracing::warn!("watching the shared store: {e}"),
        }
        // Start over from a full list: what was missed is in it.
        revision = 0;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// `run`: the source feeds snapshots to the ADS server, served over TLS.
fn run(opts: RunOptions) -> ExitCode {
    use flowgate::mesh::Update;
    use flowgate::mesh::ca::Ca;
    use flowgate::mesh::xds::auth::Authenticator;
    use flowgate::mesh::xds::certify::{CertService, SharedCa};
    use flowgate::mesh::xds::compile::Leaves;
    use flowgate::mesh::xds::{AdsServer, serve_tls};
    use std::sync::Arc;
    let RunOptions {
        source,
        listen,
        admin: admin_at,
        state,
        mut server_names,
        shared,
    } = opts;
    let shared = match shared
        .map(|(spec, key)| open_shared(&spec, &key))
        .transpose()
    {
        Ok(s) => s.map(Arc::new),
        Err(e) => {
            eprintln!("error: --shared: {e}");
            return ExitCode::from(2);
        }
    };
    let mut src = match open_source(&source) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: --source `{source}`: {e}");
            return ExitCode::from(2);
        }
    };
    server_names.push(listen.ip().to_string());
    let tokens = match TokenKey::load_or_generate(&state.join("token.key")) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("error: the token key in {}: {e}", state.display());
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: cannot listen on {listen}: {e}");
                return ExitCode::from(2);
            }
        };
        let admin_listener = match tokio::net::TcpListener::bind(admin_at).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: cannot listen on {admin_at}: {e}");
                return ExitCode::from(2);
            }
        };
        // With replicas, every one signs tokens with the key in the shared store (the first
        // replica's), copied to the state directory for `token`.
        let tokens = match &shared {
            Some(store) => {
                let mine = tokens.to_bytes();
                match until_reachable("the shared token key", || store.token_key_or_create(|| mine)).await {
                    Ok(raw) => {
                        let key = TokenKey::from_bytes(raw);
                        if let Err(e) = key.save(&state.join("token.key")) {
                            tracing::error!("{e}");
                        }
                        key
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::from(2);
                    }
                }
            }
            None => tokens,
        };
        let auth = Arc::new(Authenticator::new(Arc::new(tokens)));
        let (server, snapshots) = AdsServer::new();
        let server = server.with_authenticator(auth.clone());
        let mesh_status = Arc::new(std::sync::Mutex::new(MeshStatus::default()));
        let (rotate_tx, mut rotate_rx) = tokio::sync::mpsc::channel::<Duration>(1);
        tokio::spawn(admin(
            admin_listener,
            server.clone(),
            mesh_status.clone(),
            rotate_tx,
        ));
        let leaf_status = mesh_status.clone();
        let record = move |update: &Update| match update {
            Update::State(mesh) => {
                let mut m = mesh_status.lock().unwrap_or_else(|p| p.into_inner());
                m.version = format!("{:016x}", mesh.version);
                m.errors.clear();
                tracing::info!(
                    version = format!("{:016x}", mesh.version),
                    services = mesh.services.len(),
                    "mesh updated"
                );
            }
            Update::Rejected(errors) => {
                for e in errors {
                    tracing::error!("{e}");
                }
                mesh_status.lock().unwrap_or_else(|p| p.into_inner()).errors =
                    errors.iter().map(ToString::to_string).collect();
                tracing::error!(
                    errors = errors.len(),
                    "manifests refused; the last good mesh stays served"
                );
            }
        };
        // The source runs in a task of its own (a watch is not cancel-safe), handing
        // every update over a channel.
        let (updates_tx, mut updates) = tokio::sync::mpsc::channel::<Update>(16);
        tokio::spawn(async move {
            loop {
                let update = src.next().await;
                if updates_tx.send(update).await.is_err() {
                    break;
                }
            }
        });
        // The trust domain is the mesh's: nothing is served before a first good state.
        let first = loop {
            let Some(update) = updates.recv().await else {
                return ExitCode::FAILURE;
            };
            record(&update);
            if let Update::State(mesh) = update {
                break mesh;
            }
        };
        let cert = &first.mesh_config.certificate;
        let (td, validity) = (cert.trust_domain.clone(), cert.service_cert_validity_duration);
        let local = || Ca::load_or_generate(&state, &td, validity);
        // With replicas, the CA is the shared store's (this replica's, if it is the first),
        // and so are the leaves the others issued.
        let loaded = match &shared {
            Some(store) => {
                let record = until_reachable("the shared CA", || {
                    store.ca_or_create(|| local().map(|ca| ca.export()))
                })
                .await;
                let ca = record.and_then(|r| {
                    Ca::import(&r.value, validity)
                        .map(|ca| (ca, r.mod_revision))
                        .map_err(|e| e.to_string())
                });
                let listed = until_reachable("the shared leaves", || store.list()).await;
                match (ca, listed) {
                    (Ok((ca, rev)), Ok((revision, changes))) => {
                        if let Err(e) = ca.save(&state) {
                            tracing::error!("saving the CA's roots: {e}");
                        }
                        Ok((ca, Some((rev, revision, changes))))
                    }
                    (Err(e), _) | (_, Err(e)) => Err(e),
                }
            }
            None => local().map(|ca| (ca, None)).map_err(|e| e.to_string()),
        };
        let (ca, listed) = match loaded {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: the certificate authority: {e}");
                return ExitCode::from(2);
            }
        };
        let mut authority = Authority {
            ca: Arc::new(ca),
            leaves: Leaves::default(),
            shared: None,
        };
        let (shared_tx, mut shared_rx) = tokio::sync::mpsc::channel(16);
        if let (Some(store), Some((ca_revision, revision, changes))) = (&shared, listed) {
            authority.shared = Some(Shared {
                store: store.clone(),
                ca_revision,
                leaf_revisions: Default::default(),
            });
            authority.apply(changes);
            tokio::spawn(follow_shared(store.clone(), revision + 1, shared_tx));
        } else {
            drop(shared_tx);
        }
        let ca = authority.ca.clone();
        write_bundle(&state, &ca);
        let mut current = match server_cert(&ca, &server_names) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: the controller's certificate: {e}");
                return ExitCode::from(2);
            }
        };
        let (tls_tx, tls_rx) = tokio::sync::watch::channel(current.config.clone());
        // The CSR service signs for callers proven by a bootstrap token
        // (`flowgate-controller token`, same state directory) or their mesh certificate.
        let shared_ca: SharedCa = Arc::new(std::sync::RwLock::new(Some(ca.clone())));
        let certs = CertService::new(shared_ca.clone(), auth);
        if snapshots
            .send(Arc::new(authority.compile(&first, &leaf_status).await))
            .is_err()
        {
            return ExitCode::FAILURE;
        }
        tokio::spawn(async move {
            let mut last = first;
            // Leaves are renewed at half their life: rebuild the snapshot now and then.
            let mut renew = tokio::time::interval(Duration::from_secs(30));
            renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_compiled = tokio::time::Instant::now();
            loop {
                // A CA change made here (rotation, pruning, a new leaf lifetime): saved, its
                // bundle written, the controller's own certificate re-issued and its trust
                // updated.
                let mut changed_ca: Option<Ca> = None;
                // The CA changed in the shared store (another replica's change).
                let mut adopted_ca = false;
                // The controller's own certificate is due (half its life, or a new CA).
                let mut reissue = false;
                // A staged root's promotion, kept with the roots.
                let promotion = authority.ca.promotion();
                tokio::select! {
                    Some(update) = updates.recv() => {
                        // Changes in quick succession (a burst of etcd puts) are compiled
                        // once: each is recorded, the last good state of the burst wins. A
                        // change after a quiet spell is compiled at once; within DEBOUNCE
                        // of the last compile it waits for the rest of the window.
                        let mut newest = None;
                        let mut update = Some(update);
                        let until = last_compiled + DEBOUNCE;
                        while let Some(u) = update.take() {
                            record(&u);
                            if let Update::State(mesh) = u {
                                newest = Some(mesh);
                            }
                            if let Ok(Some(more)) = tokio::time::timeout_at(until, updates.recv()).await {
                                update = Some(more);
                            }
                        }
                        match newest {
                            Some(mesh) => last = mesh,
                            None => continue,
                        }
                        // A new leaf lifetime in the MeshConfig: every leaf again.
                        let wanted = &last.mesh_config.certificate;
                        let ca = &authority.ca;
                        if wanted.service_cert_validity_duration != ca.leaf_validity() {
                            let mut next = (**ca).clone();
                            next.set_leaf_validity(wanted.service_cert_validity_duration);
                            tracing::info!(
                                "leaf lifetime now {} s; every leaf is issued again",
                                wanted.service_cert_validity_duration.as_secs()
                            );
                            authority.leaves.clear();
                            changed_ca = Some(next);
                        }
                        if !wanted.trust_domain.eq_ignore_ascii_case(ca.trust_domain()) {
                            tracing::error!(
                                "the MeshConfig's trust domain `{}` differs from the CA's `{}`: changing it needs a new CA (a fresh state directory); the CA's stays",
                                wanted.trust_domain,
                                ca.trust_domain()
                            );
                        }
                    }
                    Some(changes) = shared_rx.recv() => {
                        let (ca_changed, any) = authority.apply(changes);
                        if !any {
                            continue;
                        }
                        adopted_ca = ca_changed;
                    }
                    Some(overlap) = rotate_rx.recv() => {
                        let mut next = (*authority.ca).clone();
                        match next.stage_root() {
                            Ok(_) => {
                                tracing::info!(
                                    "root rotation: a new root is trusted; it signs in {} s",
                                    ROOT_PROPAGATION.as_secs()
                                );
                                next.schedule_promotion(SystemTime::now() + ROOT_PROPAGATION, overlap);
                                changed_ca = Some(next);
                            }
                            Err(e) => tracing::error!("root rotation: {e}"),
                        }
                    }
                    () = async {
                        match promotion {
                            Some((at, _)) => {
                                let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
                                tokio::time::sleep(wait).await;
                            }
                            None => std::future::pending().await,
                        }
                    } => {
                        let overlap = promotion.map_or(Duration::ZERO, |(_, o)| o);
                        let mut next = (*authority.ca).clone();
                        if next.promote(overlap) {
                            tracing::info!(
                                "root rotation: the new root signs; the old one is trusted for {} s more",
                                overlap.as_secs()
                            );
                            // Every leaf is issued again from the new root.
                            changed_ca = Some(next);
                        }
                    }
                    _ = renew.tick() => {
                        let now = SystemTime::now();
                        if authority.ca.next_retirement().is_some_and(|t| t <= now) {
                            let mut next = (*authority.ca).clone();
                            let n = next.prune(now);
                            tracing::info!("root rotation: {n} old root(s) no longer trusted");
                            changed_ca = Some(next);
                        } else {
                            reissue = now >= current.renew_at;
                        }
                    }
                }
                if let Some(next) = changed_ca {
                    adopted_ca |= authority.change_ca(next).await;
                }
                if adopted_ca {
                    let ca = &authority.ca;
                    if let Err(e) = ca.save(&state) {
                        tracing::error!("saving the CA's roots: {e}");
                    }
                    write_bundle(&state, ca);
                    *shared_ca.write().unwrap_or_else(|p| p.into_inner()) = Some(ca.clone());
                    reissue = true;
                }
                if reissue {
                    match server_cert(&authority.ca, &server_names) {
                        Ok(c) => {
                            current = c;
                            let _ = tls_tx.send(current.config.clone());
                        }
                        Err(e) => tracing::error!("issuing the controller's certificate: {e}"),
                    }
                }
                last_compiled = tokio::time::Instant::now();
                let snap = authority.compile(&last, &leaf_status).await;
                if snapshots.send(Arc::new(snap)).is_err() {
                    break;
                }
            }
        });
        tracing::info!(%listen, "ADS listening (TLS)");
        let stop = async {
            use tokio::signal::unix::{SignalKind, signal};
            match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
                }
                _ => std::future::pending::<()>().await,
            }
        };
        let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
        let serving = serve_tls(listener, tls_rx, server, Some(certs), async {
            let _ = drain_rx.await;
        });
        tokio::pin!(serving);
        let result = tokio::select! {
            r = &mut serving => r,
            () = stop => {
                // Proxies' streams never end by themselves: they are told to go (HTTP/2
                // GOAWAY) and get a moment to, then the controller exits; they reconnect
                // to another replica, or to this one restarted, with what they hold.
                let _ = drain_tx.send(());
                tracing::info!("stopping");
                tokio::time::timeout(SHUTDOWN_GRACE, &mut serving)
                    .await
                    .unwrap_or(Ok(()))
            }
        };
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// How long a stopping controller waits for its streams to close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// `certificate`: a certificate and key for NS/SA made by the state directory's CA, and the
/// trust bundle, written to `out` (for a proxyless gRPC client or a test).
fn certificate(
    account: &str,
    state: &Path,
    trust_domain: &str,
    ttl: Duration,
    out: &Path,
) -> ExitCode {
    use flowgate::mesh::ca::{Ca, SpiffeId};
    let Some((ns, sa)) = account.split_once('/') else {
        eprintln!("error: `{account}` is not NAMESPACE/SERVICE-ACCOUNT");
        return ExitCode::from(2);
    };
    let issued = Ca::load_or_generate(state, trust_domain, ttl).and_then(|ca| {
        let leaf = ca.issue(&SpiffeId::new(trust_domain, ns, sa)?)?;
        Ok((leaf, ca.bundle_pem()))
    });
    let (leaf, bundle) = match issued {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let written = std::fs::create_dir_all(out)
        .and_then(|()| std::fs::write(out.join("cert.pem"), &leaf.cert_pem))
        .and_then(|()| std::fs::write(out.join("ca.pem"), &bundle))
        .and_then(|()| {
            flowgate::mesh::ca::write_private(
                &out.join("key.pem"),
                leaf.key_pem.as_deref().unwrap_or_default(),
            )
        });
    match written {
        Ok(()) => {
            let _ = writeln!(
                std::io::stdout().lock(),
                "{}: cert.pem, key.pem (owner only), ca.pem for {} (valid until {})",
                out.display(),
                leaf.id,
                humantime_secs(leaf.not_after)
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: writing {}: {e}", out.display());
            ExitCode::from(2)
        }
    }
}

/// Seconds since the epoch, for messages.
fn humantime_secs(t: SystemTime) -> String {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or_else(|_| "?".into(), |d| format!("unix {}", d.as_secs()))
}

fn main() -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    match Cli::parse().command {
        Command::Run {
            source,
            listen,
            server_names,
            admin,
            state,
            shared,
            shared_key,
        } => run(RunOptions {
            source,
            listen,
            admin,
            state,
            server_names,
            shared: shared.zip(shared_key),
        }),
        Command::Certificate {
            account,
            out,
            ttl,
            trust_domain,
            state,
        } => certificate(&account, &state, &trust_domain, ttl, &out),
        Command::Status { admin } => status(admin),
        Command::RotateRoot { overlap, admin } => rotate_root(admin, overlap),
        Command::Check { path } => match load(&path) {
            Ok(s) => {
                let _ = writeln!(
                    std::io::stdout().lock(),
                    "{}: ok — {} namespaces, {} services, {} service accounts, {} pods, {} traffic targets, {} traffic splits; permissive mode {}",
                    path.display(),
                    s.namespaces.len(),
                    s.services.len(),
                    s.service_accounts.len(),
                    s.pods.len(),
                    s.traffic_targets.len(),
                    s.traffic_splits.len(),
                    if s.mesh_config.traffic.enable_permissive_traffic_policy_mode {
                        "on"
                    } else {
                        "off"
                    }
                );
                ExitCode::SUCCESS
            }
            Err(errors) => {
                for e in &errors {
                    eprintln!("error: {e}");
                }
                ExitCode::from(2)
            }
        },
        Command::Token {
            account,
            ttl,
            state,
        } => {
            let Some((ns, sa)) = account.split_once('/') else {
                eprintln!("error: `{account}` is not NAMESPACE/SERVICE-ACCOUNT");
                return ExitCode::from(2);
            };
            let token = TokenKey::load_or_generate(&state.join("token.key"))
                .and_then(|k| k.issue(ns, sa, ttl, SystemTime::now()));
            match token {
                Ok(t) => {
                    let _ = writeln!(std::io::stdout().lock(), "{t}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}
