//! A socket-free harness for filters and pipelines.
//!
//! Feed events in, assert the events that come out. Tests that involve timers run under
//! tokio's paused clock (`#[tokio::test(start_paused = true)]`), so a 30-second idle timeout
//! takes no time at all.
//!
//! ```
//! use flowgate_pipeline::{Event, Pipeline, testing::Harness};
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let p = Pipeline::builder("echo").build().unwrap();
//! let mut h = Harness::new(&p);
//! h.push("ping".into());
//! assert_eq!(h.next_data().await.as_deref(), Some(&b"ping"[..]));
//! h.push(Event::END);
//! assert!(h.next().await.unwrap().is_end());
//! # }
//! ```

use std::task::{Context as TaskCx, Poll};

use bytes::Bytes;
use futures_util::StreamExt;

use crate::feed::{FeedSender, feed};
use crate::{Context, Event, Events, Filter};

/// Runs `filter` over `input` to the end, inside the current tokio runtime.
pub async fn run(filter: &dyn Filter, input: Vec<Event>) -> Vec<Event> {
    run_with(filter, input, &Context::new()).await
}

/// Runs `filter` over `input` with a given context.
pub async fn run_with(filter: &dyn Filter, input: Vec<Event>, cx: &Context) -> Vec<Event> {
    let out = filter.attach(crate::filter::events_from(input), cx);
    out.collect().await
}

/// Runs `filter` over `input` on a fresh single-threaded runtime (for doc examples and
/// synchronous tests).
pub fn run_blocking(filter: &dyn Filter, input: Vec<Event>) -> Vec<Event> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(run(filter, input)),
        Err(e) => vec![Event::StreamEnd(Some(
            crate::StreamError::new(crate::ErrorKind::Internal, crate::Side::Internal)
                .with_cause(e),
        ))],
    }
}

/// All `Data` payloads of `events`, concatenated.
pub fn data_of(events: &[Event]) -> Vec<u8> {
    let mut v = Vec::new();
    for e in events {
        if let Event::Data(b) = e {
            v.extend_from_slice(b);
        }
    }
    v
}

/// The event kinds of `events`, for compact assertions.
pub fn kinds_of(events: &[Event]) -> Vec<&'static str> {
    events.iter().map(Event::kind_name).collect()
}

/// An attached filter with an input you push into and an output you pull from.
pub struct Harness {
    input: Option<FeedSender>,
    out: Events,
}

impl Harness {
    /// Attaches `filter` with a fresh context.
    pub fn new(filter: &dyn Filter) -> Self {
        Self::with_context(filter, &Context::new())
    }

    /// Attaches `filter` with `cx`.
    pub fn with_context(filter: &dyn Filter, cx: &Context) -> Self {
        let (tx, rx) = feed();
        let out = filter.attach(Box::pin(rx), cx);
        Harness {
            input: Some(tx),
            out,
        }
    }

    /// Pushes an input event.
    pub fn push(&mut self, ev: Event) {
        if let Some(tx) = &self.input {
            tx.push(ev);
        }
    }

    /// How many pushed events the filter has not read yet (a sign of back-pressure).
    pub fn unread_input(&self) -> usize {
        self.input.as_ref().map_or(0, FeedSender::len)
    }

    /// The next output event (waits).
    pub async fn next(&mut self) -> Option<Event> {
        self.out.next().await
    }

    /// The next output event if one is ready now, without waiting.
    pub fn try_next(&mut self) -> Option<Event> {
        let waker = futures_util::task::noop_waker();
        let mut cx = TaskCx::from_waker(&waker);
        match self.out.poll_next_unpin(&mut cx) {
            Poll::Ready(ev) => ev,
            Poll::Pending => None,
        }
    }

    /// The next `Data` payload, skipping other events; `None` at the end.
    pub async fn next_data(&mut self) -> Option<Bytes> {
        loop {
            match self.out.next().await? {
                Event::Data(b) => return Some(b),
                Event::StreamEnd(_) => return None,
                _ => {}
            }
        }
    }

    /// All output events up to and including the end.
    pub async fn collect(mut self) -> Vec<Event> {
        let mut v = Vec::new();
        while let Some(ev) = self.out.next().await {
            v.push(ev);
        }
        v
    }
}

// === Real peers in integration tests ===

/// Whether a missing real peer must fail a test rather than skip it: under CI (`CI` set),
/// with `FLOWGATE_NO_SKIP` set (scripts/test sets it as root), or as root (who can install
/// anything the tests need). Elsewhere a test without its peer skips, saying why.
pub fn missing_peer_fails() -> bool {
    std::env::var_os("CI").is_some() || std::env::var_os("FLOWGATE_NO_SKIP").is_some() || is_root()
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup` on unified hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones), from /proc/self/mountinfo: for tests that put
/// processes in cgroups of their own (eBPF socket programs attach to cgroups).
pub fn cgroup2_root() -> Option<std::path::PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        // `… mount-point options… - fstype source super-options`
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace().nth(4).map(std::path::PathBuf::from)
    })
}

/// A bpf filesystem mounted on a fresh directory (for pinned eBPF attachments; root),
/// unmounted and removed on drop. Check [`require_programs`]`(&["mount", "umount"])` first.
#[derive(Debug)]
pub struct BpfFs {
    /// Where it is mounted.
    pub path: std::path::PathBuf,
}

impl BpfFs {
    /// Mounts one on `<temp>/flowgate-bpffs-<pid>-<tag>`.
    #[allow(
        clippy::panic,
        reason = "a test helper: failing the calling test is its job"
    )]
    pub fn mount(tag: &str) -> BpfFs {
        let path =
            std::env::temp_dir().join(format!("flowgate-bpffs-{}-{tag}", std::process::id()));
        if let Err(e) = std::fs::create_dir_all(&path) {
            panic!("{}: {e}", path.display());
        }
        let status = std::process::Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&path)
            .status();
        if !status.as_ref().is_ok_and(|s| s.success()) {
            panic!(
                "cannot mount a bpf filesystem on {}: {status:?}",
                path.display()
            );
        }
        BpfFs { path }
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(&self.path)
            .status();
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// Whether this process runs as root (network namespaces, eBPF programs and raised limits
/// need it).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

/// The one policy for real peers: `true` when `present`; otherwise, under CI or as root
/// ([`missing_peer_fails`]) the test fails naming `what` and how to get it, and elsewhere
/// it prints why it is skipped and returns `false` (the caller returns).
///
/// ```
/// use flowgate_pipeline::testing::require_peer;
/// // In a test: `if !require_peer("nginx", have("nginx"), "apt-get install -y nginx") { return; }`
/// assert!(require_peer("the shell", std::path::Path::new("/bin/sh").exists(), "apt-get install -y dash"));
/// ```
#[allow(
    clippy::panic,
    reason = "a test helper: failing the calling test is its job"
)]
pub fn require_peer(what: &str, present: bool, how: &str) -> bool {
    if present {
        return true;
    }
    if missing_peer_fails() {
        panic!("{what} is required here ({how}; scripts/test installs every peer)");
    }
    eprintln!("SKIPPED: {what} is not available ({how})");
    false
}

/// Whether `program` is on the `PATH` (or is an existing absolute path).
pub fn have_program(program: &str) -> bool {
    if program.starts_with('/') {
        return std::path::Path::new(program).exists();
    }
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// [`require_peer`] for programs: `true` when every one of `programs` is on the `PATH`;
/// otherwise it fails or skips (as [`require_peer`] decides) naming the first one missing
/// and the Debian package that has it.
///
/// ```
/// use flowgate_pipeline::testing::require_programs;
/// // In a test: `if !require_programs(&["nginx", "curl"]) { return; }`
/// assert!(require_programs(&["sh"]));
/// ```
pub fn require_programs(programs: &[&str]) -> bool {
    programs.iter().all(|p| {
        require_peer(
            p,
            have_program(p),
            &format!("apt-get install -y {}", package_of(p)),
        )
    })
}

/// The Debian package of a peer program the tests use (most are named after it).
fn package_of(program: &str) -> &str {
    match program.rsplit('/').next().unwrap_or(program) {
        "kdig" => "knot-dnsutils",
        "nghttp" | "h2load" => "nghttp2-client",
        "mosquitto_pub" | "mosquitto_sub" => "mosquitto-clients",
        "etcd" => "etcd-server",
        "gobgp" => "gobgpd",
        "bird" | "birdc" => "bird2",
        "vtysh" | "zebra" | "bgpd" | "watchfrr" => "frr",
        "ip" => "iproute2",
        "prlimit" | "setpriv" => "util-linux",
        "sha256sum" | "stdbuf" => "coreutils",
        other => other,
    }
}

/// [`require_peer`] for a Python module: `true` when `python3 -c "import MODULE"` works;
/// `pip` is the PyPI package that has it.
pub fn require_python_module(module: &str, pip: &str) -> bool {
    let present = std::process::Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    require_peer(
        &format!("the python3 module `{module}`"),
        present,
        &format!("python3 -m pip install {pip}"),
    )
}

// === Waiting for a condition ===

/// How often [`wait_until`] and [`wait_until_async`] look again.
const POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// Polls `cond` until it holds (`true`) or `within` has passed (`false`, after a last
/// look), instead of sleeping a fixed time before an assertion:
/// `assert!(wait_until(Duration::from_secs(10), || reloaded()), "not reloaded")`.
pub fn wait_until(within: std::time::Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// [`wait_until`] inside a tokio runtime (with tokio's clock, so it also works under a
/// paused clock).
pub async fn wait_until_async(within: std::time::Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

// === Ports for peers ===

/// The lowest port [`reserve_port`] hands out.
const RESERVED_FROM: u16 = 15000;

/// The ports [`reserve_port`] has handed out in this process, with the lock files that
/// claim them (held, and so locked, until the process exits).
static RESERVED: std::sync::Mutex<Vec<(u16, Option<std::fs::File>)>> =
    std::sync::Mutex::new(Vec::new());

/// A port for a peer the test has to tell where to listen (the `flowgate` binary, nginx,
/// mosquitto, unbound…): free on 127.0.0.1 and every other address for TCP and UDP, and
/// handed to no other caller of this function, in this process or in any other process on
/// the machine, until this process exits. (A server the test runs in-process binds port 0
/// instead and passes on the port it got, or the bound listener.)
///
/// Why not bind port 0, drop the socket and pass its number on: the kernel may give the
/// same port to a concurrent test, or pick it as the local port of any outgoing
/// connection, before the peer binds it. Why not start the peer and start it again on
/// another port when its bind fails: each peer says so differently (or only in its log),
/// a process with several listeners must be restarted as a whole, and waiting for the port
/// to accept cannot tell our peer from another process that took the port meanwhile.
///
/// So ports come from a range the kernel does not pick by itself (from 15000 up to the
/// start of `net.ipv4.ip_local_port_range`, usually 32768), each one claimed by `flock`ing
/// `flowgate-test-ports/PORT` in the temp directory (released by the kernel when the process exits, even
/// when it crashes) and then checked by binding it, so a port some unrelated program uses
/// is passed over. Each process starts its search at a place derived from its PID, so
/// concurrent test binaries seldom even try the same locks. Without a usable lock
/// directory, ports are unique within the process only (and still checked by binding).
///
/// Panics when the range has no port left (it holds thousands).
#[allow(
    clippy::panic,
    reason = "a test helper: failing the calling test is its job"
)]
pub fn reserve_port() -> u16 {
    let mut held = RESERVED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let (lo, hi) = reservable_ports();
    let span = u32::from(hi - lo);
    let dir = lock_dir();
    let start = std::process::id().wrapping_mul(97) % span;
    for i in 0..span {
        let port = lo + ((start + i) % span) as u16;
        if held.iter().any(|(p, _)| *p == port) {
            continue;
        }
        let lock = match &dir {
            Some(dir) => match claim(&dir.join(port.to_string())) {
                Some(file) => Some(file),
                None => continue,
            },
            None => None,
        };
        if !bindable(port) {
            continue;
        }
        held.push((port, lock));
        return port;
    }
    panic!("no free port left in {lo}..{hi}");
}

/// The range `[lo, hi)` of ports [`reserve_port`] hands out: below the kernel's ephemeral
/// ports (or above them when they start too low).
fn reservable_ports() -> (u16, u16) {
    let range: Vec<u16> = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    match range[..] {
        [first, _] if first >= RESERVED_FROM + 2000 => (RESERVED_FROM, first),
        [_, last] if last <= 63000 => (last + 1, 65535),
        _ => (RESERVED_FROM, 32768),
    }
}

/// Where [`reserve_port`] keeps its port locks: `flowgate-test-ports` in the temp directory
/// (shared by every test process of the machine).
pub fn port_lock_dir() -> std::path::PathBuf {
    std::env::temp_dir().join("flowgate-test-ports")
}

/// The shared directory of port locks, created (world-writable, sticky) when missing.
fn lock_dir() -> Option<std::path::PathBuf> {
    let dir = port_lock_dir();
    if !dir.is_dir() {
        std::fs::create_dir_all(&dir).ok()?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777));
        }
    }
    Some(dir)
}

/// The lock file `path`, locked by this process; `None` when another process holds it.
fn claim(path: &std::path::Path) -> Option<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        // Created by another user: a read-only descriptor can hold the lock too.
        .or_else(|_| std::fs::File::open(path))
        .ok()?;
    match file.try_lock() {
        Ok(()) => Some(file),
        Err(std::fs::TryLockError::WouldBlock) => None,
        // No locks on this file system: the bind check alone has to do.
        Err(std::fs::TryLockError::Error(_)) => Some(file),
    }
}

/// Whether `port` can be bound for TCP and UDP on every IPv4 address (and on `::1`, where
/// IPv6 is on).
fn bindable(port: u16) -> bool {
    let v6_free = |r: std::io::Result<()>| match r {
        Ok(()) => true,
        Err(e) => e.kind() != std::io::ErrorKind::AddrInUse,
    };
    std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
        && std::net::UdpSocket::bind(("0.0.0.0", port)).is_ok()
        && v6_free(std::net::TcpListener::bind(("::1", port)).map(drop))
        && v6_free(std::net::UdpSocket::bind(("::1", port)).map(drop))
}

/// A real etcd (Debian's `etcd-server`) on loopback ports of its own, in a data directory
/// of its own; killed and its data removed on drop. Check [`require_programs`]`(&["etcd"])`
/// first.
#[derive(Debug)]
pub struct Etcd {
    child: std::process::Child,
    dir: std::path::PathBuf,
    /// Where its clients connect (its JSON gateway too).
    pub client: std::net::SocketAddr,
}

impl Etcd {
    /// Starts one (`tag` names its data directory) and waits, up to 20 s, until it serves.
    #[allow(
        clippy::panic,
        reason = "a test helper: failing the calling test is its job"
    )]
    pub fn start(tag: &str) -> Etcd {
        let dir = std::env::temp_dir().join(format!("flowgate-{tag}-etcd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            panic!("{}: {e}", dir.display());
        }
        let (cp, pp, mp) = (reserve_port(), reserve_port(), reserve_port());
        let client = format!("http://127.0.0.1:{cp}");
        let peer = format!("http://127.0.0.1:{pp}");
        let child = std::process::Command::new("etcd")
            .args(["--name", "t", "--data-dir"])
            .arg(dir.join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("t={peer}")])
            .args(["--listen-metrics-urls", &format!("http://127.0.0.1:{mp}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        let etcd = match child {
            Ok(child) => Etcd {
                child,
                dir,
                client: std::net::SocketAddr::from(([127, 0, 0, 1], cp)),
            },
            Err(e) => panic!("etcd does not start: {e}"),
        };
        let start = std::time::Instant::now();
        while !etcd.serves() {
            if start.elapsed() > std::time::Duration::from_secs(20) {
                panic!("etcd did not serve within 20 s");
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        etcd
    }

    /// Whether its JSON gateway answers a range request with 200.
    fn serves(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) =
            std::net::TcpStream::connect_timeout(&self.client, std::time::Duration::from_secs(1))
        else {
            return false;
        };
        let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(2)));
        let body = r#"{"key":"AA=="}"#;
        let req = format!(
            "POST /v3/kv/range HTTP/1.1\r\nhost: etcd\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let mut head = [0u8; 12];
        s.write_all(req.as_bytes()).is_ok()
            && s.read_exact(&mut head).is_ok()
            && head.starts_with(b"HTTP/1.1 200")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
