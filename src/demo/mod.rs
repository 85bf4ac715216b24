//! `flowgate demo`: the bookstore demo — a whole mesh on one machine, no cluster.
//!
//! It copies the demo's manifests (`examples/mesh/`, built into the binary) to a working
//! directory the user edits, starts `flowgate-controller` on them (the directory
//! source), one `flowgate-sidecar` per workload, and the five workloads ([`apps`]):
//! bookbuyer and bookthief buy books from bookstore (v1 and v2), which restocks from
//! bookwarehouse. Every second it shows, per workload, the requests and their status
//! codes, which bookstore version answered, and every change of the mesh as the
//! controller takes it (a manifest with a mistake shows its file and line, and the mesh
//! runs on as it was). `--json` prints the same as lines.
//!
//! **Loopback mode** (the one built so far): every pod gets an address of its own on
//! `127.42.0.0/16` (the manifests' `10.42.0.x` pod addresses, mapped), the sidecars run
//! in explicit-proxy mode (each workload sends to its sidecar's `<pod IP>:15001`, naming
//! the service in `Host`), and no privilege is needed. Network namespaces with traffic
//! capture are not built yet.
//!
//! Everything it starts is stopped by its PID on Ctrl-C, SIGTERM or `--duration`.

pub mod apps;

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand, ValueEnum};

/// The demo's manifests, as in `examples/mesh/`.
const MANIFESTS: &[(&str, &str)] = &[
    (
        "namespaces.yaml",
        include_str!("../../examples/mesh/namespaces.yaml"),
    ),
    (
        "mesh-config.yaml",
        include_str!("../../examples/mesh/mesh-config.yaml"),
    ),
    (
        "bookbuyer.yaml",
        include_str!("../../examples/mesh/bookbuyer.yaml"),
    ),
    (
        "bookthief.yaml",
        include_str!("../../examples/mesh/bookthief.yaml"),
    ),
    (
        "bookstore.yaml",
        include_str!("../../examples/mesh/bookstore.yaml"),
    ),
    (
        "bookwarehouse.yaml",
        include_str!("../../examples/mesh/bookwarehouse.yaml"),
    ),
    (
        "policy.yaml",
        include_str!("../../examples/mesh/policy.yaml"),
    ),
    ("split.yaml", include_str!("../../examples/mesh/split.yaml")),
];

/// Examples shown under `flowgate demo --help`.
pub const EXAMPLES: &str = "Examples:
  flowgate demo                         the live view until Ctrl-C
  flowgate demo --json --duration 60    JSON lines for a minute
  flowgate demo step permissive-off     (another terminal) the thief gets 403
  flowgate demo step allow-thief        ... and is let in
  flowgate demo step split50            v2 serves half of bookstore's requests";

/// The service port of bookstore and bookwarehouse (and their workloads' port).
const APP_PORT: u16 = 14001;
/// The sidecars' outbound (explicit proxy) port.
const OUTBOUND_PORT: u16 = 15001;

/// A workload of the demo.
#[derive(Clone, Copy, Debug)]
struct Workload {
    /// Its pod (and the name shown).
    pod: &'static str,
    namespace: &'static str,
    /// The last byte of its pod address (`10.42.0.X` in the manifests).
    host: u8,
    role: Role,
    /// bookstore's version.
    version: Option<&'static str>,
}

const WORKLOADS: [Workload; 5] = [
    Workload {
        pod: "bookbuyer",
        namespace: "bookbuyer",
        host: 11,
        role: Role::Bookbuyer,
        version: None,
    },
    Workload {
        pod: "bookthief",
        namespace: "bookthief",
        host: 12,
        role: Role::Bookthief,
        version: None,
    },
    Workload {
        pod: "bookstore-v1",
        namespace: "bookstore",
        host: 21,
        role: Role::Bookstore,
        version: Some("v1"),
    },
    Workload {
        pod: "bookstore-v2",
        namespace: "bookstore",
        host: 22,
        role: Role::Bookstore,
        version: Some("v2"),
    },
    Workload {
        pod: "bookwarehouse",
        namespace: "bookwarehouse",
        host: 31,
        role: Role::Bookwarehouse,
        version: None,
    },
];

/// A pod's address in loopback mode.
fn pod_ip(host: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 42, 0, host))
}

/// The controller's address in loopback mode.
fn controller_ip() -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 42, 0, 1))
}

/// What a demo workload does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// Buys books from bookstore.
    Bookbuyer,
    /// Buys books from bookstore too, without being allowed to.
    Bookthief,
    /// Sells books and restocks from bookwarehouse.
    Bookstore,
    /// Restocks.
    Bookwarehouse,
}

/// `flowgate demo`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DemoArgs {
    /// One of the demo's workloads (started by the demo itself).
    #[command(subcommand)]
    pub app: Option<AppCommand>,
    /// The working directory: the manifests (edit them while it runs), the state and
    /// the logs.
    #[arg(long, default_value = "flowgate-demo")]
    pub dir: PathBuf,
    /// Print JSON lines instead of the live view.
    #[arg(long)]
    pub json: bool,
    /// Stop after this many seconds (default: at Ctrl-C).
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<u64>,
    /// Requests a second from each of bookbuyer and bookthief.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub rate: u32,
}

/// A step of OSM's demo walk-through: an edit of the running demo's manifests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Step {
    /// Every meshed call allowed (the thief's too).
    PermissiveOn,
    /// Only what the SMI TrafficTargets allow: the buyer, not the thief.
    PermissiveOff,
    /// The thief becomes a source of bookstore's TrafficTarget.
    AllowThief,
    /// The thief is no longer a source.
    DenyThief,
    /// The bookstore split at 100/0 (v1).
    SplitV1,
    /// The bookstore split at 50/50.
    Split50,
    /// The bookstore split at 0/100 (v2).
    SplitV2,
}

/// The line that makes the thief a source, in `policy.yaml`.
const THIEF_SOURCE: &str =
    "    - { kind: ServiceAccount, name: bookthief, namespace: bookthief }\n";
/// The line after which it goes.
const BUYER_SOURCE: &str =
    "    - { kind: ServiceAccount, name: bookbuyer, namespace: bookbuyer }\n";

/// Applies `step` to the manifests of the demo working in `dir`; says what it changed.
pub fn step(dir: &Path, step: Step) -> Result<String, DemoError> {
    if !dir.join(MARKER).is_file() {
        return Err(DemoError::Setup(format!(
            "{} is not the demo's working directory (no {MARKER}): give its --dir",
            dir.display()
        )));
    }
    let mesh = dir.join("mesh");
    let edit = |file: &str, change: &dyn Fn(&str) -> Option<String>| -> Result<(), DemoError> {
        let path = mesh.join(file);
        let text = std::fs::read_to_string(&path)?;
        let new = change(&text).ok_or_else(|| {
            DemoError::Setup(format!(
                "{}: not as the demo wrote it (edited by hand?): change it yourself",
                path.display()
            ))
        })?;
        // Written aside and renamed, so the controller never reads half a file.
        let tmp = mesh.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, new)?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    };
    let permissive = |on: bool| {
        move |t: &str| -> Option<String> {
            let (from, to) = if on {
                ("false", "true")
            } else {
                ("true", "false")
            };
            let key = "enablePermissiveTrafficPolicyMode: ";
            let at = t.find(key)? + key.len();
            let rest = &t[at..];
            if rest.starts_with(to) {
                Some(t.to_string())
            } else {
                rest.strip_prefix(from)
                    .map(|after| format!("{}{to}{after}", &t[..at]))
            }
        }
    };
    let split = |v1: u32, v2: u32| {
        move |t: &str| -> Option<String> {
            let mut out = String::with_capacity(t.len());
            let mut seen = 0;
            for line in t.split_inclusive('\n') {
                let weight = if line.contains("service: bookstore-v1,") {
                    Some(v1)
                } else if line.contains("service: bookstore-v2,") {
                    Some(v2)
                } else {
                    None
                };
                match (weight, line.find("weight: ")) {
                    (Some(w), Some(at)) => {
                        seen += 1;
                        let end = line[at..].find([' ', '}']).map_or(line.len(), |e| at + e);
                        let end = line[end..].find('}').map_or(line.len(), |e| end + e);
                        out.push_str(&format!("{}weight: {w} {}", &line[..at], &line[end..]));
                    }
                    _ => out.push_str(line),
                }
            }
            (seen == 2).then_some(out)
        }
    };
    let said = match step {
        Step::PermissiveOn => {
            edit("mesh-config.yaml", &permissive(true))?;
            "permissive mode on: every meshed call is allowed"
        }
        Step::PermissiveOff => {
            edit("mesh-config.yaml", &permissive(false))?;
            "permissive mode off: the TrafficTargets in policy.yaml decide"
        }
        Step::AllowThief => {
            edit("policy.yaml", &|t: &str| {
                if t.contains(THIEF_SOURCE) {
                    return Some(t.to_string());
                }
                let at = t.find(BUYER_SOURCE)? + BUYER_SOURCE.len();
                Some(format!("{}{THIEF_SOURCE}{}", &t[..at], &t[at..]))
            })?;
            "bookthief is a source of bookstore's TrafficTarget"
        }
        Step::DenyThief => {
            edit("policy.yaml", &|t: &str| {
                t.contains(BUYER_SOURCE)
                    .then(|| t.replace(THIEF_SOURCE, ""))
            })?;
            "bookthief is no longer a source of bookstore's TrafficTarget"
        }
        Step::SplitV1 => {
            edit("split.yaml", &split(100, 0))?;
            "bookstore split 100/0: v1 serves"
        }
        Step::Split50 => {
            edit("split.yaml", &split(50, 50))?;
            "bookstore split 50/50"
        }
        Step::SplitV2 => {
            edit("split.yaml", &split(0, 100))?;
            "bookstore split 0/100: v2 serves"
        }
    };
    Ok(said.to_string())
}

/// The demo's own processes.
#[derive(Debug, Subcommand)]
pub enum AppCommand {
    /// Take a step of the walk-through: edit the running demo's manifests.
    Step {
        /// Which.
        step: Step,
        /// The running demo's working directory.
        #[arg(long, default_value = "flowgate-demo")]
        dir: PathBuf,
    },
    /// Run one workload (the demo starts these).
    #[command(hide = true)]
    App {
        /// Which.
        role: Role,
        /// Where it listens (bookstore, bookwarehouse).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Where its calls go (its sidecar's outbound listener).
        #[arg(long)]
        connect: Option<SocketAddr>,
        /// bookstore's version.
        #[arg(long, default_value = "v1")]
        version: String,
        /// Calls a second (bookbuyer, bookthief).
        #[arg(long, default_value_t = 10)]
        rate: u32,
    },
}

/// Why the demo stopped with a failure.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A file or a process could not be made.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Something the demo needs is missing or failed.
    #[error("{0}")]
    Setup(String),
}

/// Runs `flowgate demo` (or one of its workloads).
pub fn main(args: DemoArgs) -> Result<(), DemoError> {
    match args.app {
        Some(AppCommand::App {
            role,
            listen,
            connect,
            version,
            rate,
        }) => run_app(role, listen, connect, &version, rate),
        Some(AppCommand::Step { step: s, dir }) => {
            let said = step(&dir, s)?;
            emit(&said);
            Ok(())
        }
        None => run(&args),
    }
}

fn run_app(
    role: Role,
    listen: Option<SocketAddr>,
    connect: Option<SocketAddr>,
    version: &str,
    rate: u32,
) -> Result<(), DemoError> {
    let need = |a: Option<SocketAddr>, what: &str| {
        a.ok_or_else(|| DemoError::Setup(format!("{role:?} needs --{what}")))
    };
    let upstream = |service: &str| -> Result<apps::Upstream, DemoError> {
        Ok(apps::Upstream {
            connect: need(connect, "connect")?,
            host: format!("{service}.{service}:{APP_PORT}"),
        })
    };
    match role {
        Role::Bookbuyer => apps::buyer("bookbuyer", upstream("bookstore")?, rate),
        Role::Bookthief => apps::buyer("bookthief", upstream("bookstore")?, rate),
        Role::Bookstore => {
            apps::bookstore(need(listen, "listen")?, version, upstream("bookwarehouse")?)
                .map_err(DemoError::Setup)
        }
        Role::Bookwarehouse => {
            apps::bookwarehouse(need(listen, "listen")?).map_err(DemoError::Setup)
        }
    }
}

/// The processes the demo started, stopped (by PID) when dropped.
#[derive(Default)]
struct Children(Vec<(String, Child)>);

impl Children {
    /// Starts `cmd` in a process group of its own: a terminal's Ctrl-C reaches the demo,
    /// which stops its children in order, not every process at once.
    fn start(&mut self, name: &str, cmd: &mut Command) -> Result<&mut Child, DemoError> {
        use std::os::unix::process::CommandExt;
        let child = cmd
            .process_group(0)
            .spawn()
            .map_err(|e| DemoError::Setup(format!("cannot start {name}: {e}")))?;
        self.0.push((name.to_string(), child));
        let last = self.0.len() - 1;
        Ok(&mut self.0[last].1)
    }

    /// The children that have exited since the last call: (name, how).
    fn exited(&mut self) -> Vec<(String, String)> {
        let mut gone = Vec::new();
        self.0.retain_mut(|(name, c)| match c.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                gone.push((name.clone(), status.to_string()));
                false
            }
            Err(e) => {
                gone.push((name.clone(), e.to_string()));
                false
            }
        });
        gone
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for (_, c) in &mut self.0 {
            let _ = c.kill();
        }
        for (_, c) in &mut self.0 {
            let _ = c.wait();
        }
    }
}

/// A sibling binary of this one (`cargo build` puts them side by side).
fn sibling(name: &str) -> Result<PathBuf, DemoError> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(DemoError::Setup(format!(
            "{name} is not next to {} (build every binary: `cargo build --release`)",
            exe.display()
        )))
    }
}

/// The file that marks a directory as the demo's own (it deletes and rewrites parts of
/// it).
const MARKER: &str = ".flowgate-demo";

/// Makes `dir` the demo's working directory: a new or empty one, or one the demo made
/// before (it has the marker); anything else is refused, as the demo deletes and
/// rewrites its parts.
fn claim(dir: &Path) -> Result<(), DemoError> {
    let ours = dir.join(MARKER).is_file();
    let empty = std::fs::read_dir(dir).map_or(true, |mut d| d.next().is_none());
    if dir.exists() && !ours && !empty {
        return Err(DemoError::Setup(format!(
            "{} is not empty and is not a directory the demo made (no {MARKER} in it): give another --dir",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(MARKER), "flowgate demo's working directory\n")?;
    Ok(())
}

/// Writes the manifests into `dir/mesh` (what an earlier run left there goes), pod
/// addresses mapped to loopback mode's.
fn write_manifests(dir: &Path) -> Result<PathBuf, DemoError> {
    let mesh = dir.join("mesh");
    if mesh.exists() {
        std::fs::remove_dir_all(&mesh)?;
    }
    std::fs::create_dir_all(&mesh)?;
    for (name, text) in MANIFESTS {
        let text = text.replace("podIP: 10.42.0.", "podIP: 127.42.0.");
        std::fs::write(mesh.join(name), text)?;
    }
    Ok(mesh)
}

/// `GET /status` of the controller's admin endpoint: (mesh version, errors).
fn controller_status(admin: SocketAddr) -> Option<(String, Vec<String>)> {
    let (_, body) = crate::admin::call(admin, "GET /status").ok()?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let version = v["mesh"]["version"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let errors = v["mesh"]["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    Some((version, errors))
}

/// One workload's second, as its app reported it.
#[derive(Clone, Debug, Default)]
struct Second {
    codes: std::collections::BTreeMap<String, u64>,
    versions: std::collections::BTreeMap<String, u64>,
    failed: u64,
    served: u64,
    restocks: std::collections::BTreeMap<String, u64>,
}

impl Second {
    fn add(&mut self, other: Second) {
        let merge = |a: &mut std::collections::BTreeMap<String, u64>,
                     b: std::collections::BTreeMap<String, u64>| {
            for (k, n) in b {
                *a.entry(k).or_default() += n;
            }
        };
        merge(&mut self.codes, other.codes);
        merge(&mut self.versions, other.versions);
        merge(&mut self.restocks, other.restocks);
        self.failed += other.failed;
        self.served += other.served;
    }

    fn from_json(v: &serde_json::Value) -> Second {
        let map = |k: &str| -> std::collections::BTreeMap<String, u64> {
            v[k].as_object()
                .map(|o| {
                    o.iter()
                        .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
                        .collect()
                })
                .unwrap_or_default()
        };
        Second {
            codes: map("codes"),
            versions: map("versions"),
            failed: v["failed"].as_u64().unwrap_or(0),
            served: v["served"].as_u64().unwrap_or(0),
            restocks: map("restocks"),
        }
    }
}

fn run(args: &DemoArgs) -> Result<(), DemoError> {
    // Signals are ours from the start: a stop while starting still stops what started.
    let stop = stop_flag()?;
    let stopped = || stop.load(std::sync::atomic::Ordering::Relaxed);
    let controller_bin = sibling("flowgate-controller")?;
    let sidecar_bin = sibling("flowgate-sidecar")?;
    let me = std::env::current_exe()?;
    let dir = &args.dir;
    claim(dir)?;
    let mesh = write_manifests(dir)?;
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let state = dir.join("controller");
    let _ = std::fs::remove_dir_all(&state);
    let _ = std::fs::remove_dir_all(dir.join("sidecars"));
    // A log file for a process's stdout and stderr (one file, one offset).
    let log = |name: &str| -> Result<(Stdio, Stdio), DemoError> {
        let f = std::fs::File::create(logs.join(format!("{name}.log")))?;
        Ok((Stdio::from(f.try_clone()?), Stdio::from(f)))
    };
    let say = |text: &str| {
        if args.json {
            emit(&serde_json::json!({ "event": "info", "message": text }).to_string());
        } else {
            emit(text);
        }
    };
    say(&format!(
        "flowgate demo: loopback mode — pods on 127.42.0.0/16, sidecars in explicit-proxy mode (network namespaces with capture are not built yet); manifests in {} (written fresh each run; edit them: changes apply live), logs in {}",
        mesh.display(),
        logs.display()
    ));
    let mut children = Children::default();
    let ads = SocketAddr::new(controller_ip(), 15010);
    let admin = SocketAddr::new(controller_ip(), 15000);
    let (out, err) = log("controller")?;
    children.start(
        "flowgate-controller",
        Command::new(&controller_bin)
            .arg("run")
            .arg("--source")
            .arg(format!("dir:{}", mesh.display()))
            .args(["--listen", &ads.to_string(), "--admin", &admin.to_string()])
            .arg("--state")
            .arg(&state)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err),
    )?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !state.join("ca.pem").exists() {
        if stopped() {
            return Ok(());
        }
        if let Some((_, how)) = children.exited().into_iter().next() {
            return Err(DemoError::Setup(format!(
                "the controller exited ({how}): see {}",
                logs.join("controller.log").display()
            )));
        }
        if Instant::now() > deadline {
            return Err(DemoError::Setup(format!(
                "the controller did not start: see {}",
                logs.join("controller.log").display()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // A sidecar and an app per workload; the apps' lines come to `rx`.
    let (tx, rx) = mpsc::channel::<(usize, serde_json::Value)>();
    for (i, w) in WORKLOADS.iter().enumerate() {
        if stopped() {
            return Ok(());
        }
        let account = match w.role {
            Role::Bookstore => "bookstore",
            _ => w.pod,
        };
        let out = Command::new(&controller_bin)
            .args(["token", &format!("{}/{account}", w.namespace), "--state"])
            .arg(&state)
            .output()?;
        if !out.status.success() {
            return Err(DemoError::Setup(format!(
                "flowgate-controller token: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let token = dir.join(format!("{}.token", w.pod));
        std::fs::write(&token, String::from_utf8_lossy(&out.stdout).trim())?;
        let ip = pod_ip(w.host);
        let (out, err) = log(&format!("{}-sidecar", w.pod))?;
        children.start(
            &format!("{} sidecar", w.pod),
            Command::new(&sidecar_bin)
                .args(["run", "--controller", &format!("https://{ads}"), "--trust"])
                .arg(state.join("ca.pem"))
                .arg("--token-file")
                .arg(&token)
                .args(["--node", &format!("{}.{}", w.pod, w.namespace)])
                .args(["--workers", "1", "--admin", &format!("{ip}:15021")])
                .arg("--state")
                .arg(dir.join("sidecars").join(w.pod))
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err),
        )?;
        let mut app = Command::new(&me);
        app.args(["demo", "app"])
            .arg(
                w.role
                    .to_possible_value()
                    .map(|v| v.get_name().to_string())
                    .unwrap_or_default(),
            )
            .args(["--connect", &SocketAddr::new(ip, OUTBOUND_PORT).to_string()])
            .args(["--rate", &args.rate.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log(w.pod)?.1);
        if let Some(v) = w.version {
            app.args(["--version", v]);
        }
        if matches!(w.role, Role::Bookstore | Role::Bookwarehouse) {
            app.args(["--listen", &SocketAddr::new(ip, APP_PORT).to_string()]);
        }
        let child = children.start(w.pod, &mut app)?;
        if let Some(out) = child.stdout.take() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if let Ok(v) = serde_json::from_str(&line)
                        && tx.send((i, v)).is_err()
                    {
                        return;
                    }
                }
            });
        }
    }
    drop(tx);
    watch(args, &rx, admin, &stop, &mut children)
}

/// The live view (or JSON lines), every second, until a signal or the duration.
fn watch(
    args: &DemoArgs,
    rx: &mpsc::Receiver<(usize, serde_json::Value)>,
    admin: SocketAddr,
    stop: &std::sync::atomic::AtomicBool,
    children: &mut Children,
) -> Result<(), DemoError> {
    let started = Instant::now();
    let end = args
        .duration
        .and_then(|d| started.checked_add(Duration::from_secs(d)));
    let tty = !args.json && std::io::stdout().is_terminal();
    let mut seconds: Vec<Second> = vec![Second::default(); WORKLOADS.len()];
    let mut version = String::new();
    let mut errors: Vec<String> = Vec::new();
    let mut events: Vec<String> = Vec::new();
    let mut next = Instant::now() + Duration::from_secs(1);
    loop {
        if stop.load(std::sync::atomic::Ordering::Relaxed)
            || end.is_some_and(|e| Instant::now() >= e)
        {
            return Ok(());
        }
        // What the apps said this second.
        loop {
            match rx.recv_timeout(next.saturating_duration_since(Instant::now())) {
                Ok((i, v)) => {
                    // Two lines of one app in one second: both count.
                    if let Some(s) = seconds.get_mut(i) {
                        s.add(Second::from_json(&v));
                    }
                    if Instant::now() >= next {
                        break;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                // Every app has stopped: the view goes on with nothing from them.
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                    break;
                }
            }
        }
        // A slow second (the controller slow to answer) does not make the next ones burst.
        next = (next + Duration::from_secs(1)).max(Instant::now());
        let t = started.elapsed().as_secs();
        for (name, how) in children.exited() {
            events.push(format!("t={t}s {name} exited ({how})"));
            if args.json {
                emit(
                    &serde_json::json!({"t": t, "event": "exited", "process": name, "how": how})
                        .to_string(),
                );
            }
            if name == "flowgate-controller" {
                return Err(DemoError::Setup(format!(
                    "the controller exited ({how}): see {}",
                    args.dir.join("logs").join("controller.log").display()
                )));
            }
        }
        // The mesh as the controller has it.
        if let Some((v, e)) = controller_status(admin) {
            if v != version {
                let line = format!("t={t}s mesh version {v} in force");
                events.push(line);
                if args.json {
                    emit(&serde_json::json!({"t": t, "event": "mesh", "version": v}).to_string());
                }
                version = v;
            }
            if e != errors {
                for err in &e {
                    events.push(format!(
                        "t={t}s manifest error (the mesh runs on as it was): {err}"
                    ));
                }
                if args.json {
                    emit(&serde_json::json!({"t": t, "event": "errors", "errors": e}).to_string());
                }
                errors = e;
            }
        }
        if args.json {
            for (w, s) in WORKLOADS.iter().zip(&seconds) {
                emit(
                    &serde_json::json!({
                        "t": t,
                        "workload": w.pod,
                        "codes": s.codes,
                        "versions": s.versions,
                        "failed": s.failed,
                        "served": s.served,
                        "restocks": s.restocks,
                    })
                    .to_string(),
                );
            }
        } else {
            render(t, &seconds, &events, tty);
        }
        let _ = std::io::stdout().flush();
        seconds = vec![Second::default(); WORKLOADS.len()];
    }
}

fn render(t: u64, seconds: &[Second], events: &[String], tty: bool) {
    let mut out = String::new();
    if tty {
        out.push_str("\x1b[H\x1b[2J");
    }
    out.push_str(&format!(
        "flowgate demo — {t} s (Ctrl-C stops it)\n\n{:<14} {:>6} {:<28} {:<22} {}\n",
        "workload", "req/s", "status codes", "served by", "restocks"
    ));
    for (w, s) in WORKLOADS.iter().zip(seconds) {
        let list = |m: &std::collections::BTreeMap<String, u64>| {
            m.iter()
                .map(|(k, n)| format!("{k}:{n}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let mut codes = list(&s.codes);
        if s.failed > 0 {
            codes.push_str(&format!(" failed:{}", s.failed));
        }
        let rate = s.codes.values().sum::<u64>() + s.failed + s.served;
        out.push_str(&format!(
            "{:<14} {:>6} {:<28} {:<22} {}\n",
            w.pod,
            rate,
            codes,
            list(&s.versions),
            list(&s.restocks)
        ));
    }
    out.push_str("\nmesh changes:\n");
    for e in events.iter().rev().take(8).rev() {
        out.push_str(&format!("  {e}\n"));
    }
    emit_raw(&out);
}

/// Set on SIGINT or SIGTERM.
fn stop_flag() -> Result<std::sync::Arc<std::sync::atomic::AtomicBool>, DemoError> {
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let f = flag.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::spawn(move || {
        rt.block_on(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                return;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            f.store(true, std::sync::atomic::Ordering::Relaxed);
        });
    });
    Ok(flag)
}

/// Writes `line` and a newline to stdout (a closed stdout is not the demo's problem).
fn emit(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
}

/// Writes `text` to stdout as it is.
fn emit_raw(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_empty_or_own_directory_is_claimed() {
        let base = std::env::temp_dir().join(format!("flowgate-demo-claim-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let fresh = base.join("fresh");
        claim(&fresh).unwrap();
        claim(&fresh).unwrap(); // its own, again
        let other = base.join("other");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("notes.txt"), "mine").unwrap();
        assert!(claim(&other).is_err());
        assert_eq!(
            std::fs::read_to_string(other.join("notes.txt")).unwrap(),
            "mine"
        );
        // The manifests are written fresh: what an earlier run left goes.
        let mesh = write_manifests(&fresh).unwrap();
        std::fs::write(mesh.join("typo.yaml"), "kind: Servise\n").unwrap();
        let mesh = write_manifests(&fresh).unwrap();
        assert!(!mesh.join("typo.yaml").exists());
        let store = std::fs::read_to_string(mesh.join("bookstore.yaml")).unwrap();
        assert!(store.contains("podIP: 127.42.0.21") && !store.contains("10.42.0."));
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn steps_edit_the_manifests_and_keep_them_valid() {
        let dir = std::env::temp_dir().join(format!("flowgate-demo-step-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            step(&dir, Step::PermissiveOff).is_err(),
            "not a demo directory"
        );
        claim(&dir).unwrap();
        let mesh = write_manifests(&dir).unwrap();
        let read = |f: &str| std::fs::read_to_string(mesh.join(f)).unwrap();
        step(&dir, Step::PermissiveOff).unwrap();
        assert!(read("mesh-config.yaml").contains("enablePermissiveTrafficPolicyMode: false"));
        step(&dir, Step::PermissiveOff).unwrap(); // again: nothing changes
        step(&dir, Step::AllowThief).unwrap();
        step(&dir, Step::AllowThief).unwrap();
        assert_eq!(read("policy.yaml").matches(THIEF_SOURCE).count(), 1);
        step(&dir, Step::Split50).unwrap();
        let split = read("split.yaml");
        assert!(
            split.contains("{ service: bookstore-v1, weight: 50 }"),
            "{split}"
        );
        assert!(
            split.contains("{ service: bookstore-v2, weight: 50 }"),
            "{split}"
        );
        // Still manifests the mesh reads.
        let state = flowgate_mesh::load_dir(&mesh).unwrap();
        assert!(
            !state
                .mesh_config
                .traffic
                .enable_permissive_traffic_policy_mode
        );
        step(&dir, Step::DenyThief).unwrap();
        step(&dir, Step::SplitV2).unwrap();
        step(&dir, Step::PermissiveOn).unwrap();
        assert!(!read("policy.yaml").contains(THIEF_SOURCE));
        assert!(read("split.yaml").contains("{ service: bookstore-v2, weight: 100 }"));
        flowgate_mesh::load_dir(&mesh).unwrap();
        // A file edited by hand beyond recognition is not touched.
        std::fs::write(mesh.join("split.yaml"), "# mine\n").unwrap();
        assert!(step(&dir, Step::SplitV1).is_err());
        assert_eq!(read("split.yaml"), "# mine\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn two_lines_of_one_second_both_count() {
        let mut s = Second::from_json(&serde_json::json!({"codes": {"200": 2}, "failed": 1}));
        s.add(Second::from_json(
            &serde_json::json!({"codes": {"200": 3, "403": 1}}),
        ));
        assert_eq!(s.codes["200"], 5);
        assert_eq!(s.codes["403"], 1);
        assert_eq!(s.failed, 1);
    }
}
