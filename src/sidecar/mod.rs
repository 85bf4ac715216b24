//! The mesh sidecar that `flowgate-sidecar` runs: it gets its certificate by CSR and keeps
//! it renewed ([`flowgate_mesh::workload`]), follows its controller over delta ADS
//! ([`flowgate_mesh::xds::client`]), and serves what it is sent — the accepted subset of
//! Envoy's xDS ([`flowgate_mesh::xds::subset`]) [compiled](compile) into Flowgate
//! pipelines. A configuration is checked whole before it is ACKed (read, compiled,
//! validated, its listeners' addresses free): what fails is NACKed with the reason and the
//! running configuration stays.
//!
//! The last good configuration is kept in the state directory (`config.json` and the
//! secrets it names): a sidecar restarted while its controller is down serves it at once.
//! A renewed certificate is compiled into a new configuration: new connections use it,
//! live connections keep their TLS sessions.
//!
//! A new configuration does not close live connections unless what happens per
//! connection changed (TLS, the choice of filter chain, who may connect, TCP proxying —
//! the listener and what it reaches before `demux-http`): the running pipelines' named
//! references are moved to the new configuration's ([`flowgate_pipeline::rebind_requests`]),
//! so the next request on a keep-alive connection is routed, authorised and balanced by
//! it; a listener whose connection-level part changed drains its connections, as Envoy
//! drains a changed filter chain.
//!
//! The admin endpoint (loopback) answers `GET /ready` (200 once a configuration runs —
//! the saved one or the controller's —, 503 before), `GET /status` (where the running
//! configuration came from, its resource versions, the last refusal, the certificate's
//! identity and expiry) and `GET /clusters` (every HTTP cluster's endpoints as its
//! balancer has them now: weight, health, outlier ejection, requests in flight).
//!
//! Two ways to get the workload's traffic, chosen per pod by the controller: explicit proxy
//! mode (the workload sends HTTP to `<pod IP>:15001` itself), or capture (a pod annotated
//! `flowgate.io/capture: redirect`): iptables rules set by `flowgate-sidecar init`
//! ([`capture`]) redirect what the workload dials to a listener at `0.0.0.0:15001` that
//! reads the original destination (`SO_ORIGINAL_DST`) and picks the filter chain by it —
//! or, with the `ebpf` feature and [`SidecarOptions::ebpf`], the sidecar steers the
//! workload's connections itself with flowgate-ebpf's socket programs (outbound by the
//! workload's cgroup, inbound by the network namespace), no iptables involved.
//!
//! ```
//! use flowgate::sidecar::compile::{Options, compile};
//! use flowgate::mesh::xds::subset::{App, ChainSpec, ListenerSpec, SidecarConfig};
//! // A listener for captured traffic: port 5432 of 10.96.0.7 to a TCP cluster, the rest
//! // closed.
//! let mut config = SidecarConfig::default();
//! let db = ChainSpec {
//!     destination_port: Some(5432),
//!     destination_prefixes: vec!["10.96.0.7/32".into()],
//!     app: App::Tcp { cluster: "db".into() },
//!     ..Default::default()
//! };
//! config.listeners.insert(
//!     "outbound".into(),
//!     ListenerSpec {
//!         address: "0.0.0.0:15001".parse()?,
//!         original_dst: true,
//!         chains: vec![db],
//!         default_chain: None,
//!     },
//! );
//! let compiled = compile(&config, &Options::default()).map_err(std::io::Error::other)?;
//! assert!(compiled.config.contains(r#""transparent": true"#));
//! assert!(compiled.config.contains(r#""destination": "10.96.0.7/32""#));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod capture;
pub mod compile;
#[cfg(feature = "ebpf")]
mod steering;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use flowgate_mesh::workload::{self, Controller, WorkloadCert};
use flowgate_mesh::xds::client::{ClientOptions, Received, follow};
use flowgate_mesh::xds::subset;
use flowgate_pipeline::SubPipeline;
use flowgate_pipeline::registry::Registry;
use flowgate_pipeline::server::Server;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::config;

/// How a sidecar runs.
#[derive(Clone, Debug)]
pub struct SidecarOptions {
    /// The controller: its address, the trust bundle, the bootstrap token.
    pub controller: Controller,
    /// The node id (`<pod>.<namespace>`).
    pub node: String,
    /// Where the last good configuration and its secrets are kept.
    pub state: PathBuf,
    /// Worker threads (`None`: one per CPU).
    pub workers: Option<usize>,
    /// Where the admin endpoint listens (keep it on loopback); `None`: no admin endpoint.
    pub admin: Option<std::net::SocketAddr>,
    /// Capture the workload's traffic with eBPF (the `ebpf` feature, root) instead of
    /// iptables rules; `None`: iptables (`flowgate-sidecar init`) or explicit proxy mode.
    pub ebpf: Option<EbpfCapture>,
}

/// eBPF capture, set up by the sidecar itself (it needs root; no `init` step): outbound
/// TCP connects from the workload's cgroup are steered to the outbound listener, and new
/// inbound TCP connections in the network namespace are handed to the inbound listener —
/// the listeners the controller sends a pod annotated `flowgate.io/capture: redirect`.
/// Loopback, the sidecar's own connections and its own ports are left alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EbpfCapture {
    /// The workload's cgroup v2 directory (its processes and those below it are steered).
    pub cgroup: PathBuf,
    /// The network namespace whose inbound connections are taken (its file; the
    /// sidecar's own by default, `/proc/self/ns/net`).
    pub netns: PathBuf,
    /// Where outbound connections go (`127.0.0.1:PORT`; the listener is `0.0.0.0:PORT`).
    pub outbound_port: u16,
    /// The inbound listener's port (`0.0.0.0:PORT`).
    pub inbound_port: u16,
    /// Inbound ports left alone, besides the sidecar's own.
    pub exclude_inbound_ports: Vec<u16>,
    /// Where the attachments are pinned (a directory on a bpffs mount): they outlive the
    /// sidecar, so its workload's traffic stays captured — refused — while it is down,
    /// and a restarted sidecar takes them over. `None`: they go with the sidecar, and the
    /// workload's traffic flows uncaptured once it is gone.
    pub pin: Option<PathBuf>,
}

impl EbpfCapture {
    /// Capture for the workload in `cgroup`, with the usual ports (15001 outbound, 15006
    /// inbound) in the sidecar's own network namespace.
    pub fn new(cgroup: impl Into<PathBuf>) -> Self {
        EbpfCapture {
            cgroup: cgroup.into(),
            netns: PathBuf::from("/proc/self/ns/net"),
            outbound_port: 15001,
            inbound_port: 15006,
            exclude_inbound_ports: Vec::new(),
            pin: None,
        }
    }
}

/// What the admin endpoint reports.
#[derive(Debug, Default)]
struct Status {
    /// Where the running configuration came from: `saved` (the state directory, at start)
    /// or `controller`.
    source: Option<&'static str>,
    /// Listeners running.
    listeners: usize,
    /// When the running configuration was applied (Unix seconds).
    applied_at: Option<u64>,
    /// The resource versions of the running configuration, by type and name.
    versions: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
    /// The running pipelines of the clusters (`cluster:<name>`), by cluster name: their
    /// balancers report the endpoints' health.
    clusters: std::collections::BTreeMap<String, Arc<flowgate_pipeline::Pipeline>>,
    /// The last configuration refused, and why.
    last_refusal: Option<String>,
    /// The certificate: its identity and expiry (Unix seconds).
    certificate: Option<(String, u64)>,
    /// eBPF capture, when on.
    #[cfg(feature = "ebpf")]
    steering: Option<Arc<steering::Steering>>,
}

type Shared = Arc<std::sync::Mutex<Status>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, Status> {
    s.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn unix(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Status {
    fn ready(&self) -> bool {
        self.source.is_some() && self.listeners > 0
    }

    fn json(&self) -> serde_json::Value {
        let now = unix(std::time::SystemTime::now());
        #[cfg(feature = "ebpf")]
        let capture = self.steering.as_ref().map(|s| s.json());
        #[cfg(not(feature = "ebpf"))]
        let capture: Option<serde_json::Value> = None;
        serde_json::json!({
            "capture": capture,
            "ready": self.ready(),
            "config": {
                "source": self.source,
                "listeners": self.listeners,
                "applied_at": self.applied_at,
                "versions": self.versions,
                "last_refusal": self.last_refusal,
            },
            "certificate": self.certificate.as_ref().map(|(id, until)| serde_json::json!({
                "identity": id,
                "not_after": until,
                "expires_in_s": until.saturating_sub(now),
            })),
        })
    }

    /// Every HTTP cluster running: its endpoints with their weights, health, ejection and
    /// requests in flight, as its balancer has them now (none: answered 503).
    fn clusters_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.clusters
                .iter()
                .map(|(name, p)| {
                    let live = p
                        .filters()
                        .iter()
                        .find_map(|f| f.status())
                        .unwrap_or_else(|| serde_json::json!({ "endpoints": [] }));
                    (name.clone(), live)
                })
                .collect(),
        )
    }
}

/// The admin endpoint: `GET /ready` (200 once a configuration runs, else 503), `GET
/// /status` (configuration versions and source, the last refusal, the certificate's
/// expiry), `GET /clusters` (endpoints with their weights, health, ejection and requests in
/// flight).
async fn admin(listener: tokio::net::TcpListener, status: Shared) {
    crate::admin::serve(listener, move |method, target| {
        let s = lock(&status);
        match (method, target) {
            ("GET", "/ready") if s.ready() => (200, "{\"ready\": true}".into()),
            ("GET", "/ready") => (
                503,
                "{\"ready\": false, \"why\": \"no configuration yet\"}".into(),
            ),
            ("GET", "/status") => (200, s.json().to_string()),
            ("GET", "/clusters") => (200, s.clusters_json().to_string()),
            _ => (
                404,
                "{\"error\": \"GET /ready, /status or /clusters\"}".into(),
            ),
        }
    })
    .await;
}

/// Why the sidecar stopped with a failure.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    /// The state directory or the control runtime failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The workers could not start.
    #[error(transparent)]
    Server(#[from] flowgate_pipeline::server::ServerError),
    /// eBPF capture could not be set up (or this build lacks the `ebpf` feature).
    #[error("eBPF capture: {0}")]
    Capture(String),
}

/// The file the last good configuration is kept in, in the state directory.
pub const CONFIG_FILE: &str = "config.json";

/// Reads `received` (the subset) and compiles it with the sidecar's certificate.
pub fn compile_received(
    received: &Received,
    cert: Option<&WorkloadCert>,
    workers: Option<usize>,
) -> Result<compile::Compiled, String> {
    compile_read(&subset::read(received)?, cert, workers)
}

/// Compiles what was read with the sidecar's certificate.
fn compile_read(
    read: &subset::SidecarConfig,
    cert: Option<&WorkloadCert>,
    workers: Option<usize>,
) -> Result<compile::Compiled, String> {
    let opts = compile::Options {
        certificate: cert.map(|c| (c.cert_pem.clone(), c.key_pem.clone())),
        workers,
        drain_timeout: Some(Duration::from_secs(5)),
    };
    compile::compile(read, &opts)
}

/// Builds a compiled configuration (its files written to `state` first, named by their
/// contents, so nothing running is overwritten); no listeners builds nothing.
pub fn build(
    compiled: &compile::Compiled,
    state: &Path,
    registry: &Arc<Registry>,
) -> Result<Listeners, String> {
    if compiled.listeners == 0 {
        return Ok(Vec::new());
    }
    write_files(state, &compiled.files).map_err(|e| format!("state directory: {e}"))?;
    let cfg = config::parse(&compiled.config, CONFIG_FILE, state, registry)
        .map_err(|e| format!("the compiled configuration does not build: {e}"))?;
    Ok(cfg.listeners)
}

/// The configuration running (its [`fingerprint`]) and the one last built by a check, so that what
/// was validated before its ACK is applied as it was built, and what runs is not built
/// again.
#[derive(Default)]
struct Builds {
    running: Option<(usize, u64)>,
    /// The connection-level part of the running configuration, per listener address (see
    /// [`connection_level`]).
    connection_level: std::collections::BTreeMap<String, String>,
    /// The listener pipelines of every configuration applied whose connections may still
    /// be live: their per-request references are moved to each newer configuration.
    generations: Vec<Generation>,
    checked: Option<(String, Listeners)>,
}

type SharedBuilds = Arc<std::sync::Mutex<Builds>>;

fn builds(b: &SharedBuilds) -> std::sync::MutexGuard<'_, Builds> {
    b.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The check before an ACK: compiled, and built unless it is what runs (the built
/// listeners kept for [`apply`]).
fn check(
    received: &Received,
    cert: Option<&WorkloadCert>,
    workers: Option<usize>,
    state: &Path,
    registry: &Arc<Registry>,
    done: &SharedBuilds,
) -> Result<(), String> {
    let compiled = compile_received(received, cert, workers)?;
    if builds(done).running == Some(fingerprint(&compiled.config)) {
        return Ok(());
    }
    let listeners = build(&compiled, state, registry)?;
    builds(done).checked = Some((compiled.config, listeners));
    Ok(())
}

/// What identifies a configuration's text (its length and a 64-bit hash) without keeping
/// it: megabytes at a thousand services.
fn fingerprint(text: &str) -> (usize, u64) {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    (text.len(), h.finish())
}

/// Built listeners with their pipelines, as [`Server::apply`] takes them.
pub type Listeners = Vec<(
    flowgate_pipeline::server::ListenerConfig,
    Arc<flowgate_pipeline::Pipeline>,
)>;

fn write_files(
    state: &Path,
    files: &std::collections::BTreeMap<String, String>,
) -> std::io::Result<()> {
    for (name, contents) in files {
        let path = state.join(name);
        if std::fs::read_to_string(&path).is_ok_and(|c| &c == contents) {
            continue;
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("tmp");
        write_private(&tmp, contents)?;
        std::fs::rename(&tmp, &path)?;
    }
    Ok(())
}

/// Writes `contents` readable by the owner only (keys are among them).
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()
}

/// Keeps `compiled` as the last good configuration, and removes secrets it no longer
/// names.
fn save(state: &Path, compiled: &compile::Compiled) -> std::io::Result<()> {
    let tmp = state.join(format!("{CONFIG_FILE}.tmp"));
    write_private(&tmp, &compiled.config)?;
    std::fs::rename(&tmp, state.join(CONFIG_FILE))?;
    if let Ok(dir) = std::fs::read_dir(state.join("secrets")) {
        for e in dir.flatten() {
            let name = format!("secrets/{}", e.file_name().to_string_lossy());
            if !compiled.files.contains_key(&name) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(())
}

/// The files the sidecar's certificate is kept in, in the state directory.
const KEPT: [&str; 3] = ["cert.pem", "key.pem", "roots.pem"];

/// The certificate kept in `state`, if there is one and it is valid.
fn kept_certificate(state: &Path) -> Option<WorkloadCert> {
    let read = |f: &str| std::fs::read_to_string(state.join(f)).ok();
    let (cert, key, roots) = (read(KEPT[0])?, read(KEPT[1])?, read(KEPT[2])?);
    match WorkloadCert::from_pem(&cert, &key, &roots) {
        Ok(c) if std::time::SystemTime::now() < c.not_after => Some(c),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!("the kept certificate is not usable: {e}");
            None
        }
    }
}

fn keep_certificate_files(state: &Path, c: &WorkloadCert) -> std::io::Result<()> {
    if kept_certificate(state).is_some_and(|k| k.cert_pem == c.cert_pem) {
        return Ok(());
    }
    for (name, text) in KEPT.iter().zip([&c.cert_pem, &c.key_pem, &c.roots_pem]) {
        let tmp = state.join(format!("{name}.tmp"));
        write_private(&tmp, text)?;
        std::fs::rename(&tmp, state.join(name))?;
    }
    Ok(())
}

/// Runs the sidecar until SIGTERM or SIGINT, then drains.
pub fn run(opts: SidecarOptions, registry: Arc<Registry>) -> Result<(), SidecarError> {
    std::fs::create_dir_all(&opts.state)?;
    let mut builder = Server::builder().drain_timeout(Duration::from_secs(5));
    if let Some(n) = opts.workers {
        builder = builder.workers(n);
    }
    let status = Shared::default();
    if let Some(c) = &opts.ebpf {
        #[cfg(feature = "ebpf")]
        {
            let own: Vec<u16> = opts.admin.map(|a| a.port()).into_iter().collect();
            let s = steering::Steering::start(c, &own)?;
            builder = builder.original_dst(s.lookup());
            lock(&status).steering = Some(s);
        }
        #[cfg(not(feature = "ebpf"))]
        return Err(SidecarError::Capture(format!(
            "this flowgate-sidecar was built without the `ebpf` feature (cgroup {})",
            c.cgroup.display()
        )));
    }
    let server = builder.start()?;
    // The last good configuration, at once.
    let saved = opts.state.join(CONFIG_FILE);
    let done = SharedBuilds::default();
    if saved.exists() {
        match config::load_with(&saved, &registry) {
            Ok(c) => {
                let count = c.listeners.len();
                let listeners = c.listeners;
                match server.apply(listeners.clone()) {
                    Ok(()) => {
                        let text = std::fs::read_to_string(&saved).ok();
                        let mut b = builds(&done);
                        b.connection_level =
                            text.as_deref().map(connection_level).unwrap_or_default();
                        b.generations = generations(&listeners, &b.connection_level);
                        b.running = text.as_deref().map(fingerprint);
                        drop(b);
                        tracing::info!(file = %saved.display(), "serving the last good configuration");
                        let mut s = lock(&status);
                        s.source = Some("saved");
                        s.listeners = count;
                        s.clusters = cluster_pipelines(&listeners);
                        s.applied_at = Some(unix(std::time::SystemTime::now()));
                        drop(s);
                        follow_listeners(&server, &status);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the last good configuration does not bind")
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "the last good configuration does not load"),
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        if let Some(addr) = opts.admin {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            tokio::spawn(admin(listener, status.clone()));
        }
        control(&opts, &server, &registry, &status, &done).await
    });
    tracing::info!(
        connections = server.connections(),
        "shutting down: draining live connections"
    );
    server.shutdown();
    result
}

/// Follows the controller and applies what it sends, until a signal.
async fn control(
    opts: &SidecarOptions,
    server: &Server,
    registry: &Arc<Registry>,
    status: &Shared,
    done: &SharedBuilds,
) -> Result<(), SidecarError> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // The certificate kept from before (still valid) is current at once: the configuration
    // compiled with it is the one saved, and nothing changes when the controller resends it.
    let kept = kept_certificate(&opts.state);
    if let Some(c) = &kept {
        lock(status).certificate = Some((c.id.to_string(), unix(c.not_after)));
    }
    let (mut certs, _renewal) = workload::keep_certificate_from(opts.controller.clone(), kept);
    let (configs_tx, mut configs) = watch::channel::<Option<Arc<Received>>>(None);
    let configs_tx = Arc::new(configs_tx);
    let mut held = Received::default();
    let mut follower: Option<tokio::task::JoinHandle<Received>> = None;
    loop {
        // (Re)start following once there is a certificate to connect with.
        if follower.as_ref().is_none_or(|f| f.is_finished()) {
            if let Some(f) = follower.take() {
                held = f.await.unwrap_or(held);
            }
            let cert = certs.borrow().clone();
            if let Some(cert) = cert {
                follower = Some(tokio::spawn(follow_once(
                    opts.clone(),
                    cert,
                    held.clone(),
                    registry.clone(),
                    configs_tx.clone(),
                    certs.clone(),
                    (status.clone(), done.clone()),
                )));
            }
        }
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            r = certs.changed() => {
                if r.is_err() {
                    return Ok(());
                }
                // A renewed certificate: kept, and a new configuration with it.
                let cert = certs.borrow().clone();
                if let Some(c) = &cert {
                    lock(status).certificate = Some((c.id.to_string(), unix(c.not_after)));
                    if let Err(e) = keep_certificate_files(&opts.state, c) {
                        tracing::warn!("cannot keep the certificate in the state directory: {e}");
                    }
                }
                if let Some(received) = configs.borrow().clone() {
                    apply(opts, server, registry, &received, cert.as_deref(), done, status);
                }
            }
            r = configs.changed() => {
                if r.is_err() {
                    return Ok(());
                }
                let received = configs.borrow().clone();
                if let Some(received) = received {
                    held = (*received).clone();
                    let cert = certs.borrow().clone();
                    apply(opts, server, registry, &received, cert.as_deref(), done, status);
                }
            }
            () = tokio::time::sleep(Duration::from_secs(1)), if follower.as_ref().is_none_or(|f| f.is_finished()) => {}
        }
    }
}

/// One ADS stream on a channel presenting `cert`; returns what it held when it ends, after
/// a pause (so a controller that is down is tried again at a gentle pace).
async fn follow_once(
    opts: SidecarOptions,
    cert: Arc<WorkloadCert>,
    held: Received,
    registry: Arc<Registry>,
    out: Arc<watch::Sender<Option<Arc<Received>>>>,
    certs: watch::Receiver<Option<Arc<WorkloadCert>>>,
    (status, done): (Shared, SharedBuilds),
) -> Received {
    let channel = match workload::connect(&opts.controller, Some(&cert)).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("controller: {e}; trying again in 2 s");
            tokio::time::sleep(Duration::from_secs(2)).await;
            return held;
        }
    };
    let options = ClientOptions {
        node: opts.node.clone(),
        token: None,
    };
    let state = opts.state.clone();
    let workers = opts.workers;
    // A configuration still warming (something it names has not arrived) is checked as
    // far as it goes; a complete one is compiled and built.
    let check = move |r: &Received| {
        let verdict = if r.missing().is_empty() {
            let cert = certs.borrow().clone();
            check(r, cert.as_deref(), workers, &state, &registry, &done)
        } else {
            subset::read(r).map(drop)
        };
        if let Err(why) = &verdict {
            lock(&status).last_refusal = Some(why.clone());
        }
        verdict
    };
    let before = held.clone();
    match follow(channel, &options, held, check, &out).await {
        Ok(()) => {}
        Err(e) => tracing::warn!("controller: {e}; following again in 2 s"),
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    out.borrow().as_deref().cloned().unwrap_or(before)
}

/// A listener pipeline applied, while connections it started may be live (a connection
/// holds its root): its address and connection-level part.
struct Generation {
    addr: String,
    level: String,
    root: std::sync::Weak<flowgate_pipeline::Pipeline>,
}

/// The generations of `listeners`, with their connection-level parts from `levels`.
fn generations(
    listeners: &Listeners,
    levels: &std::collections::BTreeMap<String, String>,
) -> Vec<Generation> {
    listeners
        .iter()
        .map(|(c, p)| {
            let addr = c.listen.to_string();
            Generation {
                level: levels.get(&addr).cloned().unwrap_or_default(),
                addr,
                root: Arc::downgrade(p),
            }
        })
        .collect()
}

/// Per listener address, the connection-level part of a compiled configuration (its text):
/// the listener and the pipelines it reaches before a `demux-http` hands requests on —
/// TLS, the choice of filter chain, who may connect, TCP proxying — without the names of
/// certificate, key and roots files (a renewal changes them; live connections keep their
/// TLS session). Two configurations equal here differ only per request.
fn connection_level(config: &str) -> std::collections::BTreeMap<String, String> {
    use serde_json::Value;
    /// Drops file names, collects the pipelines referred to (not a `demux-http`'s).
    fn strip(v: &mut Value, todo: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::Object(d)) = m.get_mut("demux-http") {
                    d.remove("pipeline");
                }
                // File names change with every renewal; endpoints change what new TCP
                // connections dial, not live ones.
                for key in [
                    "certificates",
                    "client_cert",
                    "ca",
                    "cert",
                    "key",
                    "endpoints",
                ] {
                    m.remove(key);
                }
                for (k, x) in m.iter_mut() {
                    match x {
                        Value::String(name) if k == "pipeline" || k == "otherwise" => {
                            todo.push(name.clone());
                        }
                        _ => strip(x, todo),
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|x| strip(x, todo)),
            _ => {}
        }
    }
    let doc: Value = serde_json::from_str(config).unwrap_or_default();
    let mut out = std::collections::BTreeMap::new();
    for l in doc["listeners"].as_array().into_iter().flatten() {
        let (Some(addr), Some(root)) = (l["listen"].as_str(), l["pipeline"].as_str()) else {
            continue;
        };
        let mut text = l.to_string();
        let mut seen = std::collections::BTreeSet::new();
        let mut todo = vec![root.to_string()];
        while let Some(name) = todo.pop() {
            if !seen.insert(name.clone()) {
                continue;
            }
            let mut p = doc["pipelines"][&name].clone();
            strip(&mut p, &mut todo);
            text.push_str(&name);
            text.push_str(&p.to_string());
        }
        out.insert(addr.to_string(), text);
    }
    out
}

/// The pipelines named `cluster:<name>` reachable from `listeners`, by cluster name.
fn cluster_pipelines(
    listeners: &Listeners,
) -> std::collections::BTreeMap<String, Arc<flowgate_pipeline::Pipeline>> {
    let mut seen = std::collections::HashSet::new();
    let mut out = std::collections::BTreeMap::new();
    let mut todo: Vec<Arc<flowgate_pipeline::Pipeline>> =
        listeners.iter().map(|(_, p)| p.clone()).collect();
    while let Some(p) = todo.pop() {
        if !seen.insert(p.name().to_string()) {
            continue;
        }
        if let Some(c) = p.name().strip_prefix("cluster:") {
            out.insert(c.to_string(), p.clone());
        }
        for f in p.filters() {
            todo.extend(f.subs().iter().filter_map(SubPipeline::get));
        }
    }
    out
}

/// After a configuration was applied: eBPF capture steers inbound connections to its
/// inbound listener.
fn follow_listeners(server: &Server, status: &Shared) {
    #[cfg(feature = "ebpf")]
    {
        let steering = lock(status).steering.clone();
        if let Some(s) = steering {
            s.follow(server);
        }
    }
    #[cfg(not(feature = "ebpf"))]
    let _ = (server, status);
}

/// Compiles and applies `received`; a failure keeps what runs (it was checked before its
/// ACK, so this is a listener that could not bind after all).
fn apply(
    opts: &SidecarOptions,
    server: &Server,
    registry: &Arc<Registry>,
    received: &Received,
    cert: Option<&WorkloadCert>,
    done: &SharedBuilds,
    status: &Shared,
) {
    let compiled = match compile_received(received, cert, opts.workers) {
        Ok(x) => x,
        Err(e) => {
            tracing::error!("configuration refused: {e}");
            return;
        }
    };
    let checked = {
        let mut b = builds(done);
        if b.running == Some(fingerprint(&compiled.config)) {
            return;
        }
        b.checked
            .take()
            .filter(|(text, _)| *text == compiled.config)
            .map(|(_, l)| l)
    };
    let listeners = match checked {
        Some(l) => l,
        None => match build(&compiled, &opts.state, registry) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("configuration refused: {e}");
                return;
            }
        },
    };
    let count = listeners.len();
    let clusters = cluster_pipelines(&listeners);
    let fresh = generations(&listeners, &connection_level(&compiled.config));
    // Connections keep running where only what happens per request changed: they take
    // the new per-request pipelines below. A listener whose connection-level part changed
    // drains its connections (they come back to the new one).
    let level = connection_level(&compiled.config);
    let before = std::mem::take(&mut builds(done).connection_level);
    let roots: Vec<Arc<flowgate_pipeline::Pipeline>> =
        listeners.iter().map(|(_, p)| p.clone()).collect();
    let applied = server.apply_with(listeners, &|addr| {
        let addr = addr.to_string();
        before.get(&addr) != level.get(&addr)
    });
    let mut b = builds(done);
    b.generations.retain(|g| g.root.strong_count() > 0);
    if applied.is_ok() {
        // Each live generation of a listener whose connection-level part is the new one's
        // takes the new per-request pipelines (one whose part differs was drained).
        let mut moved = 0;
        for new in &fresh {
            let Some(root) = new.root.upgrade() else {
                continue;
            };
            for old in b
                .generations
                .iter()
                .filter(|g| g.addr == new.addr && g.level == new.level)
            {
                if let Some(old_root) = old.root.upgrade() {
                    moved += flowgate_pipeline::rebind_requests(
                        &[old_root],
                        std::slice::from_ref(&root),
                    );
                }
            }
        }
        tracing::debug!(moved, "live connections take the new per-request pipelines");
        b.generations.extend(fresh);
        b.connection_level = level;
    } else {
        b.connection_level = before;
    }
    drop((b, roots));
    match applied {
        Ok(()) => {
            tracing::info!(listeners = count, "configuration applied");
            let mut s = lock(status);
            s.source = Some("controller");
            s.listeners = count;
            s.applied_at = Some(unix(std::time::SystemTime::now()));
            s.versions = received
                .resources
                .iter()
                .map(|(t, rs)| {
                    let short = t.rsplit('.').next().unwrap_or(t).to_string();
                    let v = rs
                        .iter()
                        .map(|(n, (v, _))| (n.clone(), v.clone()))
                        .collect();
                    (short, v)
                })
                .collect();
            s.clusters = clusters;
            drop(s);
            follow_listeners(server, status);
            if let Err(e) = save(&opts.state, &compiled) {
                tracing::warn!("cannot keep the configuration in the state directory: {e}");
            }
            builds(done).running = Some(fingerprint(&compiled.config));
        }
        Err(e) => tracing::error!("configuration not applied: {e}"),
    }
}
