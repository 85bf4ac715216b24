//! flowgate-dns end to end: the `flowgate` binary serving a zone of registered services
//! and forwarding the rest to a real unbound, queried with kdig (UDP, TCP, EDNS, client
//! subnet, a truncated answer retried over TCP) and dnspython, and fed malformed packets;
//! TCP clients that send nothing or part of a message are closed (RFC 7766 §6.2.3), and a
//! thousand of them do not stop the answers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::net::UdpSocket;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Proc, TempDir, daemon, flowgate_run, peers, python_module, reserve_port};

struct Setup {
    port: u16,
    unbound: Option<Proc>,
    _flowgate: Proc,
    _dir: TempDir,
}

/// unbound on `port` (the test checked `peers(&["unbound", "kdig"])`).
fn unbound(dir: &TempDir, port: u16) -> Proc {
    let conf = format!(
        r#"server:
  interface: 127.0.0.1@{port}
  port: {port}
  do-daemonize: no
  chroot: ""
  username: ""
  directory: "{d}"
  pidfile: "{d}/unbound.pid"
  use-syslog: no
  logfile: ""
  num-threads: 1
  access-control: 127.0.0.0/8 allow
  do-not-query-localhost: yes
  module-config: "iterator"
  local-zone: "fwd.test." static
  local-data: "fwd.test. 300 IN SOA ns.fwd.test. hm.fwd.test. 1 3600 600 86400 60"
  local-data: "www.fwd.test. 300 IN A 192.0.2.80"
  local-data: 'fwd.test. 300 IN TXT "from unbound"'
remote-control:
  control-enable: no
"#,
        d = dir.0.display()
    );
    let path = dir.write("unbound.conf", &conf);
    let p = daemon(
        Command::new("unbound").arg("-d").arg("-c").arg(&path),
        "unbound",
    );
    // Ready when it answers.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if kdig(
            port,
            &["www.fwd.test", "A", "+short", "+timeout=1", "+retry=0"],
        )
        .contains("192.0.2.80")
        {
            return p;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("unbound did not answer: {}", p.stop());
}

fn kdig(port: u16, args: &[&str]) -> String {
    let out = Command::new("kdig")
        .arg("@127.0.0.1")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sorted_lines(s: &str) -> Vec<String> {
    let mut v: Vec<String> = s
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect();
    v.sort();
    v
}

impl Setup {
    fn start() -> Setup {
        Setup::start_with("decode-dns", "")
    }

    /// With `decode` as the first filter and `tcp_extra` added to the TCP listener.
    fn start_with(decode: &str, tcp_extra: &str) -> Setup {
        let dir = TempDir::new("dns");
        let ub_port = reserve_port();
        let dead_port = reserve_port();
        let unbound = unbound(&dir, ub_port);
        let port = reserve_port();
        // The health checks probe Flowgate's own TCP listener, unless it has a connection
        // limit a test counts on (then unbound's).
        let hc_port = if tcp_extra.is_empty() { port } else { ub_port };
        let big: Vec<String> = (1..=60).map(|i| format!("\"10.9.0.{i}:80\"")).collect();
        let conf = format!(
            r#"workers: 1
listeners:
  - {{ listen: "127.0.0.1:{port}", protocol: udp, pipeline: dns }}
  - {{ listen: "127.0.0.1:{port}", pipeline: dns{tcp_extra} }}
pipelines:
  dns:
    - {decode}
    - dns-block: {{ names: [blocked.test] }}
    - dns-respond:
        zone: svc.test
        services:
          - {{ name: api, endpoints: ["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"] }}
          - {{ name: big, endpoints: [{big}] }}
          - name: geo
            endpoints:
              - {{ address: "10.1.0.1:80", metadata: {{ zone: eu }} }}
              - {{ address: "10.2.0.1:80", metadata: {{ zone: us }} }}
          - name: hc
            endpoints: ["127.0.0.1:{hc_port}", "127.0.0.1:{dead_port}"]
            health_check: {{ interval: 100ms, timeout: 500ms, healthy_threshold: 1, unhealthy_threshold: 1 }}
        geo:
          - {{ source: 198.51.100.0/24, zone: eu }}
          - {{ source: 127.0.0.0/8, zone: us }}
    - dns-forward:
        endpoints: ["127.0.0.1:{dead_port}", "127.0.0.1:{ub_port}"]
        timeout: 1s
    - encode-dns
"#,
            big = big.join(", ")
        );
        let path = dir.write("dns.yaml", &conf);
        let flowgate = flowgate_run(&path, &[port]);
        Setup {
            port,
            unbound: Some(unbound),
            _flowgate: flowgate,
            _dir: dir,
        }
    }
}

#[test]
fn kdig_udp_tcp_edns_and_subnet() {
    if !peers(&["unbound", "kdig"]) {
        return;
    }
    let s = Setup::start();
    let want = ["10.0.0.1", "10.0.0.2", "10.0.0.3"];
    for proto in ["+notcp", "+tcp"] {
        let out = kdig(s.port, &["api.svc.test", "A", "+short", proto]);
        assert_eq!(sorted_lines(&out), want, "{proto}: {out}");
    }
    // Round robin: the first answer rotates.
    let firsts: std::collections::BTreeSet<String> = (0..3)
        .map(|_| {
            kdig(s.port, &["api.svc.test", "A", "+short"])
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(firsts.len(), 3, "{firsts:?}");
    // EDNS: the OPT record comes back with our payload size.
    let out = kdig(s.port, &["api.svc.test", "A", "+edns=0", "+bufsize=4096"]);
    assert!(
        out.contains("EDNS PSEUDOSECTION") && out.contains("UDP size: 1232"),
        "{out}"
    );
    // Client subnet steers: 198.51.100.0/24 -> eu; loopback source -> us.
    let out = kdig(
        s.port,
        &["geo.svc.test", "A", "+short", "+subnet=198.51.100.0/24"],
    );
    assert_eq!(out.trim(), "10.1.0.1");
    let out = kdig(s.port, &["geo.svc.test", "A", "+short"]);
    assert_eq!(out.trim(), "10.2.0.1");
    // SRV with targets and glue.
    let out = kdig(s.port, &["api.svc.test", "SRV"]);
    assert!(out.contains("SRV\t0 1 8080 e0.api.svc.test."), "{out}");
    assert!(
        out.contains("e0.api.svc.test.") && out.contains("ADDITIONAL: 3"),
        "{out}"
    );
    // NXDOMAIN with the SOA; a blocked name.
    let out = kdig(s.port, &["nope.svc.test", "A"]);
    assert!(
        out.contains("status: NXDOMAIN") && out.contains("SOA"),
        "{out}"
    );
    let out = kdig(s.port, &["x.blocked.test", "A"]);
    assert!(out.contains("status: NXDOMAIN"), "{out}");
}

#[test]
fn health_checks_leave_dead_endpoints_out() {
    if !peers(&["unbound", "kdig"]) {
        return;
    }
    let s = Setup::start();
    // `hc` has two endpoints: Flowgate's own TCP listener (alive) and a closed port.
    // Active TCP checks mark the closed one down; its SRV record disappears. (Only `hc`
    // is checked: the other services' addresses are documentation ranges nobody probes.)
    let live = format!("0 1 {} e0.hc.svc.test.", s.port);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = kdig(s.port, &["hc.svc.test", "SRV", "+short"]);
        if sorted_lines(&out) == [live.clone()] {
            break;
        }
        assert!(Instant::now() < deadline, "still answered: {out}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn truncated_answer_is_retried_over_tcp() {
    if !peers(&["unbound", "kdig"]) {
        return;
    }
    let s = Setup::start();
    // Without EDNS the 60 addresses do not fit 512 bytes: TC=1 over UDP.
    let out = kdig(s.port, &["big.svc.test", "A", "+ignore", "+noedns"]);
    assert!(out.contains(" tc") && out.contains("ANSWER: 0"), "{out}");
    assert!(out.contains("(UDP)"), "{out}");
    // kdig retries over TCP by itself and gets all of them.
    let out = kdig(s.port, &["big.svc.test", "A", "+noedns"]);
    assert!(out.contains("ANSWER: 60") && out.contains("(TCP)"), "{out}");
}

#[test]
fn forwards_to_unbound_with_failover_and_cache() {
    if !peers(&["unbound", "kdig"]) {
        return;
    }
    let mut s = Setup::start();
    // The first upstream is a closed port: the query fails over to unbound.
    let out = kdig(s.port, &["www.fwd.test", "A", "+short"]);
    assert_eq!(out.trim(), "192.0.2.80");
    let out = kdig(s.port, &["fwd.test", "TXT", "+short", "+tcp"]);
    assert_eq!(out.trim(), "\"from unbound\"");
    let out = kdig(s.port, &["nx.fwd.test", "A"]);
    assert!(
        out.contains("status: NXDOMAIN") && out.contains("SOA"),
        "{out}"
    );
    let subnet = [
        "www.fwd.test",
        "A",
        "+subnet=198.51.100.0/24",
        "+timeout=5",
        "+retry=0",
    ];
    let out = kdig(s.port, &subnet);
    assert!(out.contains("192.0.2.80"), "{out}");
    // With unbound gone, answers and the negative answer come from the cache, with
    // TTLs that have not grown; a name never asked fails with SERVFAIL.
    s.unbound.take().unwrap().stop();
    let out = kdig(s.port, &["www.fwd.test", "A", "+noall", "+answer"]);
    let ttl: u32 = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(ttl <= 300 && out.contains("192.0.2.80"), "{out}");
    let out = kdig(s.port, &["nx.fwd.test", "A"]);
    assert!(out.contains("status: NXDOMAIN"), "{out}");
    // A query with a client subnet bypasses the cache (its answer may be per subnet).
    let out = kdig(s.port, &subnet);
    assert!(out.contains("status: SERVFAIL"), "{out}");
    let out = kdig(s.port, &["other.fwd.test", "A", "+timeout=5", "+retry=0"]);
    assert!(out.contains("status: SERVFAIL"), "{out}");
}

#[test]
fn malformed_packets_get_formerr_or_are_dropped() {
    if !peers(&["unbound", "kdig"]) {
        return;
    }
    let s = Setup::start();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    sock.connect(("127.0.0.1", s.port)).unwrap();
    let hdr = b"\xbe\xef\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00".to_vec();
    let mut pointer_loop = hdr.clone();
    pointer_loop.extend_from_slice(b"\x01a\xc0\x0c\x00\x01\x00\x01");
    let mut big_label = hdr.clone();
    big_label.push(64);
    big_label.extend_from_slice(&[b'x'; 64]);
    big_label.extend_from_slice(b"\x00\x00\x01\x00\x01");
    let mut truncated = hdr.clone();
    truncated.extend_from_slice(b"\x03api\x03sv");
    let mut buf = [0u8; 1500];
    for (what, pkt) in [
        ("pointer loop", pointer_loop),
        ("label of 64", big_label),
        ("truncated", truncated),
    ] {
        sock.send(&pkt).unwrap();
        let n = sock
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("{what}: no answer: {e}"));
        assert!(n >= 12, "{what}");
        assert_eq!(&buf[..2], b"\xbe\xef", "{what}: same ID");
        assert_eq!(buf[3] & 0x0f, 1, "{what}: FORMERR");
    }
    // Too short for a header: dropped; the server keeps answering others.
    sock.send(b"\x01\x02\x03").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(
        sock.recv(&mut buf).is_err(),
        "a 3-byte packet gets no answer"
    );
    let out = kdig(s.port, &["api.svc.test", "A", "+short"]);
    assert_eq!(sorted_lines(&out).len(), 3);
    // Over TCP too: a bad frame gets FORMERR and the connection keeps serving.
    use std::io::{Read, Write};
    let mut t = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut bad = hdr.clone();
    bad.extend_from_slice(b"\xc0\x0c\x00\x01\x00\x01");
    let good = flowgate_dns_query();
    for m in [&bad, &good] {
        t.write_all(&(m.len() as u16).to_be_bytes()).unwrap();
        t.write_all(m).unwrap();
    }
    let mut codes = Vec::new();
    for _ in 0..2 {
        let mut len = [0u8; 2];
        t.read_exact(&mut len).unwrap();
        let mut m = vec![0u8; usize::from(u16::from_be_bytes(len))];
        t.read_exact(&mut m).unwrap();
        codes.push((
            u16::from_be_bytes([m[0], m[1]]),
            m[3] & 0x0f,
            u16::from_be_bytes([m[6], m[7]]),
        ));
    }
    assert_eq!(codes, [(0xbeef, 1, 0), (0x0042, 0, 3)]);
}

/// api.svc.test A, ID 0x42, by hand.
fn flowgate_dns_query() -> Vec<u8> {
    let mut q = b"\x00\x42\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00".to_vec();
    q.extend_from_slice(b"\x03api\x03svc\x04test\x00\x00\x01\x00\x01");
    q
}

#[test]
fn dnspython_as_a_second_client() {
    if !peers(&["unbound", "kdig"]) || !python_module("dns.query", "dnspython") {
        return;
    }
    let s = Setup::start();
    let script = r#"
import sys, dns.message, dns.query, dns.rdatatype, dns.flags
port = int(sys.argv[1])
def ask(name, rtype, tcp=False, **kw):
    q = dns.message.make_query(name, rtype, **kw)
    f = dns.query.tcp if tcp else dns.query.udp
    return f(q, "127.0.0.1", port=port, timeout=5)
r = ask("api.svc.test", "A")
print("udp", sorted(a.address for rr in r.answer for a in rr))
r = ask("api.svc.test", "A", tcp=True)
print("tcp", sorted(a.address for rr in r.answer for a in rr))
r = ask("big.svc.test", "A")
print("big-udp-tc", bool(r.flags & dns.flags.TC), len(r.answer))
r = ask("big.svc.test", "A", tcp=True)
print("big-tcp", sum(len(rr) for rr in r.answer))
r = ask("www.fwd.test", "A", use_edns=0, payload=1232)
print("fwd", [a.address for rr in r.answer for a in rr], r.edns)
r = ask("api.svc.test", "SRV")
print("srv", sorted(str(a.target) for rr in r.answer for a in rr))
"#;
    let out = Command::new("python3")
        .args(["-c", script, &s.port.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "udp ['10.0.0.1', '10.0.0.2', '10.0.0.3']");
    assert_eq!(lines[1], "tcp ['10.0.0.1', '10.0.0.2', '10.0.0.3']");
    assert_eq!(lines[2], "big-udp-tc True 0");
    assert_eq!(lines[3], "big-tcp 60");
    assert_eq!(lines[4], "fwd ['192.0.2.80'] 0");
    assert_eq!(
        lines[5],
        "srv ['e0.api.svc.test.', 'e1.api.svc.test.', 'e2.api.svc.test.']"
    );
}

/// Raises this process's open-file limit to at least `want` when the hard limit allows
/// (with `prlimit`, no unsafe code); children started later inherit it. Returns the soft
/// limit in force.
fn raise_nofile(want: u64) -> u64 {
    let limits = || -> (u64, u64) {
        let text = std::fs::read_to_string("/proc/self/limits").unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap();
        let mut f = line["Max open files".len()..].split_whitespace();
        let num = |s: Option<&str>| s.unwrap().parse::<u64>().unwrap_or(u64::MAX);
        (num(f.next()), num(f.next()))
    };
    let (soft, hard) = limits();
    if soft < want {
        let new = want.min(hard);
        let ok = Command::new("prlimit")
            .args([
                "--pid",
                &std::process::id().to_string(),
                &format!("--nofile={new}:{hard}"),
            ])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "prlimit could not raise the open-file limit");
    }
    limits().0
}

/// Whether the server has closed `c`, waiting for it up to `wait`.
fn closed_within(c: &mut std::net::TcpStream, wait: Duration) -> bool {
    use std::io::Read;
    c.set_read_timeout(Some(wait.max(Duration::from_millis(1))))
        .unwrap();
    let mut buf = [0u8; 512];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("read: {e:?}");
                return false;
            }
        }
    }
}

/// True when `c` is still open and has nothing to read.
fn still_open(c: &std::net::TcpStream) -> bool {
    use std::io::Read;
    c.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 1];
    let open = matches!((&*c).read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    c.set_nonblocking(false).unwrap();
    open
}

/// A TCP client that has asked one query and got its answer; `None` if it was refused.
fn answered_client(port: u16) -> Option<std::net::TcpStream> {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let q = flowgate_dns_query();
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&q);
    c.write_all(&framed).ok()?;
    let mut len = [0u8; 2];
    c.read_exact(&mut len).ok()?;
    let mut m = vec![0u8; usize::from(u16::from_be_bytes(len))];
    c.read_exact(&mut m).ok()?;
    assert_eq!(&m[..2], b"\x00\x42");
    Some(c)
}

/// kdig, bounded: one try of 2 s.
fn kdig_quick(port: u16, args: &[&str]) -> String {
    let mut a = args.to_vec();
    a.extend(["+timeout=2", "+retry=0"]);
    kdig(port, &a)
}

/// The answers Flowgate gives itself and those it forwards to unbound, over UDP and TCP.
fn answers_over_udp_and_tcp(port: u16) {
    for proto in ["+notcp", "+tcp"] {
        let t = Instant::now();
        let out = kdig_quick(port, &["api.svc.test", "A", "+short", proto]);
        assert_eq!(sorted_lines(&out).len(), 3, "{proto}: {out:?}");
        let out = kdig_quick(port, &["www.fwd.test", "A", "+short", proto]);
        assert_eq!(out.trim(), "192.0.2.80", "{proto}: {out:?}");
        assert!(t.elapsed() < Duration::from_secs(2), "{proto}: slow");
    }
}

#[test]
fn tcp_clients_that_send_nothing_or_part_of_a_message_are_closed() {
    if !peers(&["unbound", "kdig"]) {
        return;
    }
    use std::io::{Read, Write};
    // The defaults: 10 s without a message, 5 s to finish one once it started.
    let s = Setup::start();
    let port = s.port;
    let connect = move || {
        let c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        (c, Instant::now())
    };
    let silent = std::thread::spawn(move || {
        let (mut c, t0) = connect();
        assert!(
            closed_within(&mut c, Duration::from_secs(15)),
            "never closed"
        );
        t0.elapsed()
    });
    // A length prefix announcing 255 bytes, followed by two.
    let partial = std::thread::spawn(move || {
        let (mut c, t0) = connect();
        c.write_all(b"\x00\xff\xbe\xef").unwrap();
        assert!(
            closed_within(&mut c, Duration::from_secs(15)),
            "never closed"
        );
        t0.elapsed()
    });
    // A whole query dribbled a byte every 400 ms: more bytes do not buy more time.
    let dribble = std::thread::spawn(move || {
        let (mut c, t0) = connect();
        let q = flowgate_dns_query();
        let mut framed = (q.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&q);
        for b in &framed {
            if c.write_all(&[*b]).is_err() {
                break;
            }
            if closed_within(&mut c, Duration::from_millis(400)) {
                return (t0.elapsed(), true);
            }
        }
        (t0.elapsed(), false)
    });
    // A query answered, then silence: closed 10 s after the query.
    let answered = std::thread::spawn(move || {
        let (mut c, _) = connect();
        let q = flowgate_dns_query();
        c.write_all(&(q.len() as u16).to_be_bytes()).unwrap();
        c.write_all(&q).unwrap();
        let t1 = Instant::now();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut len = [0u8; 2];
        c.read_exact(&mut len).unwrap();
        let mut m = vec![0u8; usize::from(u16::from_be_bytes(len))];
        c.read_exact(&mut m).unwrap();
        assert_eq!(&m[..2], b"\x00\x42");
        assert!(
            closed_within(&mut c, Duration::from_secs(15)),
            "never closed"
        );
        t1.elapsed()
    });
    // kdig keeps one TCP connection open over several queries (+keepopen) and gets every
    // answer: the deadlines do not cut a client that asks.
    let out = kdig_quick(
        port,
        &[
            "+tcp",
            "+keepopen",
            "+short",
            "api.svc.test",
            "A",
            "api.svc.test",
            "SRV",
            "www.fwd.test",
            "A",
        ],
    );
    assert_eq!(sorted_lines(&out).len(), 3 + 3 + 1, "{out}");

    let secs = |d: Duration| d.as_secs_f64();
    let t = silent.join().unwrap();
    assert!(
        (9.9..12.0).contains(&secs(t)),
        "silent client closed after {t:?}"
    );
    let t = partial.join().unwrap();
    assert!(
        (4.9..7.0).contains(&secs(t)),
        "partial frame closed after {t:?}"
    );
    let (t, closed) = dribble.join().unwrap();
    assert!(closed, "a dribbling client was never closed ({t:?})");
    assert!(
        (4.9..7.0).contains(&secs(t)),
        "dribbling client closed after {t:?}"
    );
    let t = answered.join().unwrap();
    assert!(
        (9.9..12.0).contains(&secs(t)),
        "idle after an answer: closed after {t:?}"
    );
    // And the server still answers.
    answers_over_udp_and_tcp(port);
}

#[test]
fn a_thousand_idle_tcp_clients_do_not_stop_answers() {
    if !peers(&["unbound", "kdig", "prlimit"]) {
        return;
    }
    const CLIENTS: usize = 1000;
    // 1000 sockets here and 1000 in flowgate (which inherits the limit), plus room for
    // flowgate's upstream sockets and its default `max_connections` (half the limit).
    let limit = raise_nofile(8192);
    assert!(
        limit >= 4 * CLIENTS as u64,
        "the open-file limit is {limit}; this test needs {}",
        4 * CLIENTS
    );
    let s = Setup::start_with(
        "decode-dns: { tcp_idle_timeout: 4s, tcp_message_timeout: 2s }",
        "",
    );
    let t0 = Instant::now();
    let mut idle = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", s.port))
            .unwrap_or_else(|e| panic!("client {i}: {e}"));
        if i % 10 == 0 {
            // Every tenth sends a length prefix and part of a message.
            use std::io::Write;
            c.write_all(b"\x01\x00\x12\x34\x01").unwrap();
        }
        idle.push(c);
    }
    let opened = t0.elapsed();
    // They are all held (none refused) while kdig asks over UDP and TCP.
    assert!(idle.iter().all(still_open), "a client was refused");
    answers_over_udp_and_tcp(s.port);
    let asked = t0.elapsed();
    assert!(
        asked < Duration::from_secs(2),
        "the answers came after the partial clients' timeout ({opened:?} to open, {asked:?} in all)"
    );
    assert!(idle.iter().all(still_open), "a client was closed early");
    // Every one is closed by its deadline (4 s idle, 2 s partial), plus scheduling room.
    let deadline = t0 + Duration::from_secs(8);
    for (i, c) in idle.iter_mut().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            closed_within(c, left),
            "client {i} still open after {:?}",
            t0.elapsed()
        );
    }
    println!(
        "{CLIENTS} clients opened in {opened:?}, kdig answered by {asked:?}, all closed by {:?}",
        t0.elapsed()
    );
    drop(idle);
    answers_over_udp_and_tcp(s.port);
}

#[test]
fn the_tcp_client_limit_refuses_more_and_udp_still_answers() {
    if !peers(&["unbound", "kdig"]) {
        return;
    }
    const LIMIT: usize = 20;
    let s = Setup::start_with(
        "decode-dns: { tcp_idle_timeout: 2s }",
        &format!(", max_connections: {LIMIT}"),
    );
    let t0 = Instant::now();
    // Each held client is answered once, so it surely has a slot (the port probe of the
    // start-up may still hold one for a moment: a refused client is tried again).
    let held: Vec<_> = (0..LIMIT)
        .map(|i| {
            let deadline = Instant::now() + Duration::from_secs(2);
            loop {
                if let Some(c) = answered_client(s.port) {
                    return c;
                }
                assert!(Instant::now() < deadline, "client {i} refused");
                std::thread::sleep(Duration::from_millis(20));
            }
        })
        .collect();
    // The listener is full: one more is closed at once, kdig over TCP gets nothing, and
    // UDP (another listener) answers.
    let mut extra = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    assert!(
        closed_within(&mut extra, Duration::from_secs(1)),
        "not refused"
    );
    let out = kdig_quick(s.port, &["api.svc.test", "A", "+short", "+tcp"]);
    assert!(
        sorted_lines(&out).is_empty(),
        "answered over TCP while full: {out}"
    );
    let out = kdig_quick(s.port, &["api.svc.test", "A", "+short", "+notcp"]);
    assert_eq!(sorted_lines(&out).len(), 3, "{out}");
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "the held clients may have timed out"
    );
    // Once the idle ones are closed, TCP answers again.
    for mut c in held {
        assert!(closed_within(&mut c, Duration::from_secs(5)));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = kdig_quick(s.port, &["api.svc.test", "A", "+short", "+tcp"]);
        if sorted_lines(&out).len() == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "TCP never answered again: {out}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
