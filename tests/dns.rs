//! flowgate-dns end to end: the `flowgate` binary serving a zone of registered services
//! and forwarding the rest to a real unbound, queried with kdig (UDP, TCP, EDNS, client
//! subnet, a truncated answer retried over TCP) and dnspython, and fed malformed packets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::net::UdpSocket;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Proc, TempDir, daemon, flowgate_run, free_port, have};

struct Setup {
    port: u16,
    unbound: Option<Proc>,
    _flowgate: Proc,
    _dir: TempDir,
}

fn unbound(dir: &TempDir, port: u16) -> Proc {
    assert!(
        have("unbound"),
        "unbound is required (scripts/test installs it)"
    );
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
    assert!(
        have("kdig"),
        "kdig is required (knot-dnsutils; scripts/test installs it)"
    );
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
        let dir = TempDir::new("dns");
        let ub_port = free_port();
        let dead_port = free_port();
        let unbound = unbound(&dir, ub_port);
        let port = free_port();
        let big: Vec<String> = (1..=60).map(|i| format!("\"10.9.0.{i}:80\"")).collect();
        let conf = format!(
            r#"workers: 1
listeners:
  - {{ listen: "127.0.0.1:{port}", protocol: udp, pipeline: dns }}
  - {{ listen: "127.0.0.1:{port}", pipeline: dns }}
pipelines:
  dns:
    - decode-dns
    - dns-block: {{ names: [blocked.test] }}
    - dns-respond:
        zone: svc.test
        services:
          - {{ name: api, endpoints: ["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"] }}
          - {{ name: big, endpoints: [{big}] }}
          - name: geo
            endpoints:
              - {{ addr: "10.1.0.1:80", metadata: {{ zone: eu }} }}
              - {{ addr: "10.2.0.1:80", metadata: {{ zone: us }} }}
          - name: hc
            endpoints: ["127.0.0.1:{port}", "127.0.0.1:{dead_port}"]
            health_check: {{ interval: 100ms, timeout: 500ms, healthy_threshold: 1, unhealthy_threshold: 1 }}
        geo:
          - {{ source: 198.51.100.0/24, zone: eu }}
          - {{ source: 127.0.0.0/8, zone: us }}
    - dns-forward:
        upstreams: ["127.0.0.1:{dead_port}", "127.0.0.1:{ub_port}"]
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
    let ok = Command::new("python3")
        .args(["-c", "import dns.query"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "dnspython is required (pip install dnspython; scripts/test installs it)"
    );
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
