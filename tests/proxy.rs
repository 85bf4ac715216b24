//! End-to-end on loopback through the `flowgate` binary: a round-robin TCP proxy over three
//! real upstream echo servers, PROXY protocol v2 carrying the client address to nginx, and
//! `flowgate check` on broken configurations.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;

#[test]
fn round_robin_over_three_real_upstreams() {
    let ups = [
        Echo::start(Some("A:")),
        Echo::start(Some("B:")),
        Echo::start(Some("C:")),
    ];
    let port = reserve_port();
    let dir = TempDir::new("rr");
    let cfg = dir.write(
        "proxy.yaml",
        &format!(
            // One worker: with several, the readiness probe's connection may be accepted
            // (and take its round-robin turn) after the test's first one.
            "workers: 1\nlisteners:\n  - listen: 127.0.0.1:{port}\n    pipeline: proxy\npipelines:\n  proxy:\n    - connect:\n        endpoints: [127.0.0.1:{}, 127.0.0.1:{}, 127.0.0.1:{}]\n",
            ups[0].port, ups[1].port, ups[2].port
        ),
    );
    let fg = flowgate_run(&cfg, &[port]);
    // Sequential connections must rotate A → B → C → A… (the readiness probe took a turn
    // before, so the first one may be any of them).
    let mut tags = Vec::new();
    for i in 0..30 {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let msg = format!("message {i}");
        c.write_all(msg.as_bytes()).unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut reply = String::new();
        c.read_to_string(&mut reply).unwrap();
        let (tag, rest) = reply.split_at(2);
        assert_eq!(rest, msg);
        tags.push(tag.to_string());
    }
    let order = ["A:", "B:", "C:"];
    for pair in tags.windows(2) {
        let at = order.iter().position(|t| *t == pair[0]).unwrap();
        assert_eq!(
            pair[1],
            order[(at + 1) % 3],
            "round robin order broken: {tags:?}"
        );
    }
    drop(fg);
}

#[test]
fn proxy_protocol_v2_carries_the_client_address_to_nginx() {
    if !peers(&["nginx"]) {
        return;
    }
    let dir = TempDir::new("ppv2");
    let nginx_port = reserve_port();
    let mut nginx_proc = nginx(
        &dir,
        &format!(
            "server {{ listen 127.0.0.1:{nginx_port} proxy_protocol; \
             location / {{ return 200 \"client=$proxy_protocol_addr:$proxy_protocol_port\"; }} }}"
        ),
    );
    nginx_proc.wait_port(nginx_port);
    // Front: reads a PROXY header from the client, writes a v2 header to nginx.
    let port = reserve_port();
    let cfg = dir.write(
        "proxy.yaml",
        &format!(
            "listeners:\n  - listen: 127.0.0.1:{port}\n    pipeline: front\npipelines:\n  front:\n    - accept-proxy-protocol: {{ required: false }}\n    - connect-proxy-protocol: {{ version: 2 }}\n    - connect: {{ endpoints: 127.0.0.1:{nginx_port} }}\n"
        ),
    );
    let _fg = flowgate_run(&cfg, &[port]);

    // A direct client: nginx sees the client's own address and port.
    let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let local = c.local_addr().unwrap();
    assert_eq!(
        http_get(c, "/"),
        format!("client={}:{}", local.ip(), local.port())
    );

    // A client behind another proxy (it sends a v1 header): nginx sees the original client.
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.write_all(b"PROXY TCP4 203.0.113.7 127.0.0.1 40001 80\r\n")
        .unwrap();
    assert_eq!(http_get(c, "/"), "client=203.0.113.7:40001");
}

#[test]
fn check_reports_the_place_of_each_mistake_and_exits_2() {
    let dir = TempDir::new("check");
    let good = "listeners:\n  - listen: 127.0.0.1:1\n    pipeline: main\npipelines:\n  main:\n    - demux: { pipeline: req }\n  req:\n    - connect:\n        endpoints: 127.0.0.1:9\n";
    let (code, err) = flowgate_check(&dir.write("good.yaml", good));
    assert_eq!(code, 0, "{err}");

    let cases = [
        (
            "malformed.yaml",
            good.replace("pipeline: main", "pipeline: [main"),
            ":",
            "malformed",
        ),
        (
            "unknown-filter.yaml",
            good.replace("- connect:", "- conect:"),
            ":8:",
            "unknown filter `conect`",
        ),
        (
            "unknown-field.yaml",
            good.replace(
                "endpoints: 127.0.0.1:9",
                "endpoints: 127.0.0.1:9\n        colour: red",
            ),
            ":10:",
            "unknown field `colour`",
        ),
        (
            "missing-sub.yaml",
            good.replace("{ pipeline: req }", "{ pipeline: requests }"),
            ":6:",
            "sub-pipeline `requests` is not defined",
        ),
    ];
    for (name, text, place, what) in cases {
        let path = dir.write(name, &text);
        let (code, err) = flowgate_check(&path);
        assert_eq!(code, 2, "{name}: {err}");
        assert!(
            err.contains(&format!("{}{place}", path.display())),
            "{name} names file and line: {err}"
        );
        if what != "malformed" {
            assert!(err.contains(what), "{name}: {err}");
        }
    }
}

#[test]
fn back_pressure_a_stalled_upstream_stops_the_client() {
    // An upstream that accepts and never reads.
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let up_port = upstream.local_addr().unwrap().port();
    let port = reserve_port();
    let dir = TempDir::new("backpressure");
    let cfg = dir.write(
        "proxy.yaml",
        &format!("listeners:\n  - listen: 127.0.0.1:{port}\n    pipeline: p\npipelines:\n  p:\n    - connect: {{ endpoints: 127.0.0.1:{up_port} }}\n"),
    );
    let fg = flowgate_run(&cfg, &[port]);
    let _held = {
        // The readiness probe of flowgate_run connected once; accept it and the real one.
        let mut v = Vec::new();
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        upstream.set_nonblocking(false).unwrap();
        v.push(upstream.accept().unwrap().0);
        v.push(upstream.accept().unwrap().0);
        c.set_nonblocking(true).unwrap();
        // Push up to 512 MiB for at most 10 s; stop once writes block for a while.
        let chunk = vec![7u8; 64 * 1024];
        let (mut sent, mut blocked_since) = (0usize, None::<std::time::Instant>);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while sent < 512 << 20 && std::time::Instant::now() < deadline {
            match c.write(&chunk) {
                Ok(n) => {
                    sent += n;
                    blocked_since = None;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let since = *blocked_since.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() > Duration::from_millis(500) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("write failed: {e}"),
            }
        }
        // Only socket buffers hold data: nothing accumulates inside the proxy.
        assert!(
            sent < 64 << 20,
            "the proxy kept reading from the client: {} MiB accepted",
            sent >> 20
        );
        let rss_kib = std::fs::read_to_string(format!("/proc/{}/status", fg.pid()))
            .unwrap()
            .lines()
            .find_map(|l| {
                l.strip_prefix("VmRSS:")
                    .map(|v| v.trim().trim_end_matches(" kB").parse::<u64>().unwrap())
            })
            .unwrap();
        eprintln!(
            "back-pressure: {} MiB accepted before the client blocked; proxy RSS {} MiB",
            sent >> 20,
            rss_kib >> 10
        );
        assert!(rss_kib < 32 * 1024, "proxy RSS {rss_kib} KiB");
        (v, c)
    };
    drop(fg);
}

fn exchange_tag(port: u16) -> Option<String> {
    let mut c = TcpStream::connect(("127.0.0.1", port)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    c.write_all(b"x").ok()?;
    c.shutdown(std::net::Shutdown::Write).ok()?;
    let mut reply = String::new();
    c.read_to_string(&mut reply).ok()?;
    (reply.len() == 3).then(|| reply[..2].to_string())
}

#[test]
fn connect_balances_with_flowgate_lb_maglev_and_outlier_ejection() {
    let ups = [
        Echo::start(Some("A:")),
        Echo::start(Some("B:")),
        Echo::start(Some("C:")),
    ];
    let dead = reserve_port(); // nothing listens there
    let (maglev_port, rr_port) = (reserve_port(), reserve_port());
    let dir = TempDir::new("lb");
    let targets = format!(
        "127.0.0.1:{}, 127.0.0.1:{}, 127.0.0.1:{}",
        ups[0].port, ups[1].port, ups[2].port
    );
    let cfg = dir.write(
        "lb.yaml",
        &format!(
            "listeners:\n  - listen: 127.0.0.1:{maglev_port}\n    pipeline: maglev\n  - listen: 127.0.0.1:{rr_port}\n    pipeline: rr\npipelines:\n  maglev:\n    - connect:\n        endpoints: [{targets}]\n        balance: {{ algorithm: {{ type: maglev }} }}\n  rr:\n    - connect:\n        endpoints: [127.0.0.1:{dead}, {targets}]\n        balance:\n          algorithm: {{ type: round_robin }}\n          outlier: {{ consecutive_connect_failures: 1, max_ejection_percent: 50 }}\n"
        ),
    );
    let _fg = flowgate_run(&cfg, &[maglev_port, rr_port]);
    // Maglev keyed by the client IP: every connection from 127.0.0.1 lands on one upstream.
    let tags: Vec<String> = (0..10)
        .map(|_| exchange_tag(maglev_port).expect("served"))
        .collect();
    assert!(tags.iter().all(|t| *t == tags[0]), "{tags:?}");
    // Round robin with a dead target: at most one connection fails (the connect failure
    // ejects it), then every connection is served by the live three in turn.
    let results: Vec<Option<String>> = (0..13).map(|_| exchange_tag(rr_port)).collect();
    let failed = results.iter().filter(|r| r.is_none()).count();
    assert!(failed <= 1, "{results:?}");
    let served: Vec<&String> = results.iter().flatten().collect();
    let tail = &served[served.len() - 9..];
    for t in ["A:", "B:", "C:"] {
        assert_eq!(
            tail.iter().filter(|x| x.as_str() == t).count(),
            3,
            "{results:?}"
        );
    }
}
