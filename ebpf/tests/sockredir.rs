//! Socket redirection with real processes: two python3 processes in a test cgroup, in a
//! test network namespace (so its loopback counters are ours alone). Needs root and
//! cgroup v2 at /sys/fs/cgroup/unified.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpListener};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use common::netns::{Netns, unique};
use flowgate_ebpf::{Sidecar, SockRedirect, SockRedirectConfig};
use flowgate_pipeline::testing::{require_peer, require_programs};

const PAYLOAD: usize = 4 << 20;

const SERVER: &str = r#"
import hashlib, socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(1)
s.settimeout(30)
print("ready", flush=True)
c, _ = s.accept()
c.settimeout(30)
n, got, h = int(sys.argv[2]), 0, hashlib.sha256()
while got < n:
    d = c.recv(65536)
    if not d:
        break
    h.update(d)
    c.sendall(d)
    got += len(d)
print(h.hexdigest(), got, flush=True)
c.close()
"#;

const CLIENT: &str = r#"
import hashlib, os, socket, sys, threading
n = int(sys.argv[2])
data = os.urandom(n)
c = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=20)
t = threading.Thread(target=lambda: c.sendall(data))
t.start()
got, h = 0, hashlib.sha256()
while got < n:
    d = c.recv(65536)
    if not d:
        break
    h.update(d)
    got += len(d)
t.join()
print(hashlib.sha256(data).hexdigest(), h.hexdigest(), got, flush=True)
"#;

const APP: &str = r#"
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
c.sendall(b"hello")
print(c.recv(100).decode(), flush=True)
"#;

/// A cgroup v2 directory, removed on drop (after its processes are gone).
struct Cgroup(PathBuf);

impl Cgroup {
    fn new() -> Self {
        let root = flowgate_pipeline::testing::cgroup2_root().expect("checked by can_run");
        let p = root.join(unique("cg"));
        std::fs::create_dir(&p).unwrap();
        Self(p)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A process started in the namespace and cgroup; killed on drop.
struct Proc {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl Proc {
    fn python(ns: &Netns, cg: &Cgroup, script: &str, args: &[&str]) -> Self {
        // Join the cgroup first: `ip netns exec` mounts a fresh /sys without it.
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#"echo $$ > "$0/cgroup.procs" && exec ip netns exec "$@""#)
            .arg(&cg.0)
            .args([ns.name.as_str(), "python3", "-c", script])
            .args(args)
            .stdout(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        Self { child, out }
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        self.out.read_line(&mut l).unwrap();
        l.trim().to_owned()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Bytes sent over the namespace's loopback (this thread's view of /proc/net/dev).
fn lo_bytes(ns: &Netns) -> u64 {
    ns.run(|| {
        let dev = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap();
        let line = dev
            .lines()
            .find(|l| l.trim_start().starts_with("lo:"))
            .unwrap();
        let fields: Vec<&str> = line.split(':').nth(1).unwrap().split_whitespace().collect();
        fields[8].parse().unwrap()
    })
}

fn can_run(test: &str) -> bool {
    common::can_run_in_netns(test)
        && require_programs(&["python3"])
        && require_peer(
            "a cgroup v2 hierarchy",
            flowgate_pipeline::testing::cgroup2_root()
                .is_some_and(|r| r.join("cgroup.procs").exists()),
            "mount cgroup2, e.g. on /sys/fs/cgroup",
        )
}

/// Echoes PAYLOAD bytes between two processes; returns (loopback bytes moved, hashes ok).
fn exchange(ns: &Netns, cg: &Cgroup, port: u16) -> (u64, bool) {
    let port_s = port.to_string();
    let n = PAYLOAD.to_string();
    let before = lo_bytes(ns);
    let mut server = Proc::python(ns, cg, SERVER, &[&port_s, &n]);
    assert_eq!(server.line(), "ready");
    let mut client = Proc::python(ns, cg, CLIENT, &[&port_s, &n]);
    let c = client.line();
    let s = server.line();
    let moved = lo_bytes(ns) - before;
    let c: Vec<&str> = c.split_whitespace().collect();
    let s: Vec<&str> = s.split_whitespace().collect();
    assert_eq!(c.len(), 3, "client said {c:?}");
    assert_eq!(s.len(), 2, "server said {s:?}");
    let ok = c[0] == c[1] && c[0] == s[0] && c[2] == n && s[1] == n;
    (moved, ok)
}

#[test]
fn sk_msg_moves_payload_off_the_loopback_path() {
    if !can_run("sk_msg_moves_payload_off_the_loopback_path") {
        return;
    }
    let ns = Netns::new("r");
    let cg = Cgroup::new();

    // Control: without the programs the payload crosses loopback TCP (both directions).
    let (plain, ok) = exchange(&ns, &cg, 9001);
    assert!(ok, "data corrupted on plain TCP");
    assert!(
        plain >= 2 * PAYLOAD as u64,
        "plain loopback moved {plain} bytes"
    );

    let mut redirect = SockRedirect::load(SockRedirectConfig::default()).unwrap();
    redirect.attach_cgroup(&cg.0).unwrap();
    let (moved, ok) = exchange(&ns, &cg, 9002);
    assert!(ok, "data corrupted by the redirect");
    let stats = redirect.stats().unwrap();
    eprintln!(
        "loopback bytes for 2 x {PAYLOAD} payload bytes: plain TCP {plain}, redirected {moved}; {stats:?}"
    );
    assert!(
        moved < 64 * 1024,
        "with redirection loopback still moved {moved} bytes"
    );
    assert_eq!(stats.sockets, 2);
    assert!(stats.redirected_bytes >= 2 * PAYLOAD as u64, "{stats:?}");

    // Detached: back to the TCP path.
    redirect.detach_cgroup(&cg.0).unwrap();
    drop(redirect);
    let (after, ok) = exchange(&ns, &cg, 9003);
    assert!(ok);
    assert!(
        after >= 2 * PAYLOAD as u64,
        "after detach loopback moved {after}"
    );
}

#[test]
fn connect4_steers_to_the_sidecar_and_records_the_destination() {
    if !can_run("connect4_steers_to_the_sidecar_and_records_the_destination") {
        return;
    }
    let ns = Netns::new("k");
    let cg = Cgroup::new();
    let sidecar: SocketAddrV4 = "127.0.0.1:15001".parse().unwrap();
    let mut redirect = SockRedirect::load(SockRedirectConfig {
        sidecar: Some(Sidecar {
            addr: sidecar,
            pid: std::process::id(),
        }),
    })
    .unwrap();
    redirect.attach_cgroup(&cg.0).unwrap();

    let listener = ns.run(|| TcpListener::bind(sidecar).unwrap());
    let mut app = Proc::python(&ns, &cg, APP, &["10.9.9.9", "80"]);
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut s, peer) = loop {
        match listener.accept() {
            Ok(x) => break x,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("the app never reached the sidecar: {e}"),
        }
    };
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut hello = [0u8; 5];
    s.read_exact(&mut hello).unwrap();
    assert_eq!(&hello, b"hello");
    let SocketAddr::V4(peer) = peer else {
        panic!("IPv4 peer expected")
    };
    let orig = redirect.original_destination(peer).unwrap();
    assert_eq!(orig, Some("10.9.9.9:80".parse().unwrap()));
    // Taken once: a later connection from the same address and port finds nothing.
    assert_eq!(redirect.take_original_destination(peer).unwrap(), orig);
    assert_eq!(redirect.original_destination(peer).unwrap(), None);
    s.write_all(format!("orig={}", orig.unwrap()).as_bytes())
        .unwrap();
    assert_eq!(app.line(), "orig=10.9.9.9:80");
    let stats = redirect.stats().unwrap();
    assert_eq!(stats.steered, 1, "{stats:?}");
    // Our own connects (the sidecar's) are not in the cgroup and not steered.
    assert_eq!(redirect.original_destination(sidecar).unwrap(), None);

    // The namespace's own addresses are local traffic: not steered.
    ns.ip(&["addr", "add", "10.66.0.1/32", "dev", "lo"]);
    let own = ns.run(|| flowgate_ebpf::sockredir::own_ipv4_addresses().unwrap());
    assert_eq!(own, ["10.66.0.1".parse::<std::net::Ipv4Addr>().unwrap()]);
    redirect.set_own_addresses(&own).unwrap();
    let local = ns.run(|| TcpListener::bind("10.66.0.1:80").unwrap());
    let mut app = Proc::python(&ns, &cg, APP, &["10.66.0.1", "80"]);
    let (mut s, _) = accept_within(&local).expect("the local connect did not arrive");
    let mut hello = [0u8; 5];
    s.set_nonblocking(false).unwrap();
    s.read_exact(&mut hello).unwrap();
    s.write_all(b"local").unwrap();
    assert_eq!(app.line(), "local");
    assert_eq!(redirect.stats().unwrap().steered, 1);
    // A second handle reads the same map.
    let d = redirect.destinations().unwrap();
    assert_eq!(d.get(peer).unwrap(), None);
}

/// Accepts on a non-blocking listener within 10 s.
fn accept_within(listener: &TcpListener) -> Option<(std::net::TcpStream, SocketAddr)> {
    accept_within_ms(listener, 10_000)
}

/// Accepts on a non-blocking listener within `ms` milliseconds.
fn accept_within_ms(listener: &TcpListener, ms: u64) -> Option<(std::net::TcpStream, SocketAddr)> {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_millis(ms);
    loop {
        match listener.accept() {
            Ok(x) => return Some(x),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Err(_) => return None,
        }
    }
}

#[test]
fn sk_lookup_hands_inbound_connections_to_the_sidecar() {
    if !can_run("sk_lookup_hands_inbound_connections_to_the_sidecar") {
        return;
    }
    let client = Netns::new("c");
    let pod = Netns::new("p");
    let (a, b) = (unique("a"), unique("b"));
    common::netns::veth(&a, &client, None, &b, &pod);
    client.ip(&["addr", "add", "10.77.0.1/24", "dev", &a]);
    pod.ip(&["addr", "add", "10.77.0.2/24", "dev", &b]);
    // In the pod: the sidecar's inbound listener, the workload, and a port left alone.
    let (sidecar, app, other) = pod.run(|| {
        (
            TcpListener::bind("0.0.0.0:15006").unwrap(),
            TcpListener::bind("10.77.0.2:8080").unwrap(),
            TcpListener::bind("10.77.0.2:9090").unwrap(),
        )
    });
    let netns = PathBuf::from(format!("/var/run/netns/{}", pod.name));
    let mut redirect = SockRedirect::load(SockRedirectConfig::default()).unwrap();
    redirect.attach_netns(&netns, &[15006, 9090]).unwrap();
    assert!(matches!(
        redirect.attach_netns(&netns, &[15006, 9090]),
        Err(flowgate_ebpf::Error::AlreadyAttached { .. })
    ));
    // Clearing an empty slot is fine.
    redirect.clear_inbound_listener().unwrap();
    let connect = |port: u16| {
        client.run(move || {
            let to: SocketAddr = format!("10.77.0.2:{port}").parse().unwrap();
            std::net::TcpStream::connect_timeout(&to, Duration::from_secs(3))
        })
    };

    // No listener set yet: refused, never let through to the workload.
    let refused = connect(8080);
    assert!(refused.is_err(), "connected with no sidecar listener set");
    app.set_nonblocking(true).unwrap();
    assert!(app.accept().is_err(), "the workload got a connection");

    // Set: the sidecar accepts it, and its local address is what the peer dialled.
    // (Setting the same socket again changes nothing.)
    redirect.set_inbound_listener(&sidecar).unwrap();
    redirect.set_inbound_listener(&sidecar).unwrap();
    let _c = connect(8080).unwrap();
    let (s, peer) = accept_within(&sidecar).expect("the sidecar got nothing");
    assert_eq!(s.local_addr().unwrap(), "10.77.0.2:8080".parse().unwrap());
    assert_eq!(peer.ip().to_string(), "10.77.0.1");
    let _c2 = connect(7777).unwrap();
    let (s2, _) = accept_within(&sidecar).expect("any port reaches the sidecar");
    assert_eq!(s2.local_addr().unwrap(), "10.77.0.2:7777".parse().unwrap());

    // A skipped port reaches its own listener; so does a connection from the pod's own
    // address (the sidecar dialling its workload).
    let _c3 = connect(9090).unwrap();
    assert!(
        accept_within(&other).is_some(),
        "the skipped port was taken"
    );
    let _c4 = pod.run(|| std::net::TcpStream::connect("10.77.0.2:8080").unwrap());
    assert!(accept_within(&app).is_some(), "local traffic was taken");

    let stats = redirect.stats().unwrap();
    assert_eq!(stats.inbound, 2, "{stats:?}");
    assert_eq!(stats.inbound_refused, 1, "{stats:?}");

    // Cleared: refused again. Detached: the workload is reached directly.
    redirect.clear_inbound_listener().unwrap();
    assert!(connect(8080).is_err());
    // A listener that closes leaves the map: refused, not let through.
    let short = pod.run(|| TcpListener::bind("0.0.0.0:15007").unwrap());
    redirect.set_inbound_listener(&short).unwrap();
    let _c6 = connect(8080).unwrap();
    assert!(accept_within(&short).is_some());
    drop(short);
    assert!(
        connect(8080).is_err(),
        "a closed listener let a connection through"
    );
    assert!(accept_within_ms(&app, 200).is_none());
    redirect.detach_netns(&netns).unwrap();
    let _c5 = connect(8080).unwrap();
    assert!(accept_within(&app).is_some(), "not reached after detaching");
    assert!(matches!(
        redirect.detach_netns(&netns),
        Err(flowgate_ebpf::Error::NotAttached { .. })
    ));
}

#[test]
fn pinned_steering_outlives_its_loader_until_removed() {
    if !can_run("pinned_steering_outlives_its_loader_until_removed")
        || !require_programs(&["mount", "umount"])
    {
        return;
    }
    let client = Netns::new("c");
    let pod = Netns::new("p");
    let (a, b) = (unique("a"), unique("b"));
    common::netns::veth(&a, &client, None, &b, &pod);
    client.ip(&["addr", "add", "10.78.0.1/24", "dev", &a]);
    pod.ip(&["addr", "add", "10.78.0.2/24", "dev", &b]);
    let (sidecar, app) = pod.run(|| {
        (
            TcpListener::bind("0.0.0.0:15006").unwrap(),
            TcpListener::bind("10.78.0.2:8080").unwrap(),
        )
    });
    let connect = || {
        client.run(|| {
            std::net::TcpStream::connect_timeout(
                &"10.78.0.2:8080".parse().unwrap(),
                Duration::from_secs(3),
            )
        })
    };
    let fs = flowgate_pipeline::testing::BpfFs::mount("pin");
    let pins = fs.path.join("sidecar");
    let netns = PathBuf::from(format!("/var/run/netns/{}", pod.name));
    let mut redirect = SockRedirect::load(SockRedirectConfig::default()).unwrap();
    redirect.attach_netns(&netns, &[15006]).unwrap();
    redirect.set_inbound_listener(&sidecar).unwrap();
    redirect.pin(&pins).unwrap();
    drop(redirect);
    // The loader is gone; its attachment is not.
    let _c = connect().unwrap();
    assert!(
        accept_within(&sidecar).is_some(),
        "the pinned attachment is gone"
    );
    assert!(accept_within_ms(&app, 200).is_none());
    // The sidecar's socket closing refuses what comes next (no fail-open).
    drop(sidecar);
    assert!(connect().is_err(), "let through with the sidecar gone");
    assert!(accept_within_ms(&app, 200).is_none());
    // Removed: the workload is reached directly.
    assert_eq!(SockRedirect::remove_pinned(&pins).unwrap(), 1);
    let _c2 = connect().unwrap();
    assert!(
        accept_within(&app).is_some(),
        "still steered after removing the pin"
    );
    assert_eq!(SockRedirect::remove_pinned(&pins).unwrap(), 0);
}
