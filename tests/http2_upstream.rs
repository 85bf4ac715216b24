//! HTTP/2 towards upstreams through the `flowgate` binary: `mux-http` with `protocol: http2`
//! (and `protocol: auto`, which picks HTTP/2 or HTTP/1.1 by the upstream's TLS ALPN)
//! in front of real HTTP/2 servers — hypercorn (h2c with prior knowledge, and h2 over TLS
//! with ALPN), nginx (`listen … ssl http2`), and a python-h2 server that resets streams.
//! Clients are curl (HTTP/1.1 and h2), nghttp and h2load.
//!
//! What is checked: the upstream really gets HTTP/2 (hypercorn reports the version and
//! scheme it saw); bodies of 0 B, 1 MiB and 5 MiB come back with the same SHA-256 over
//! HTTP/1.1 and h2 clients; trailers pass; 100 concurrent requests share at most one
//! upstream connection per worker (hypercorn counts the client ports it saw); a stream the
//! upstream resets fails only its own request; an upstream restart (GOAWAY, then refused
//! connections) does not wedge the pool; upstreams that retire connections every 100
//! requests (nginx `keepalive_requests`, hypercorn `keep_alive_max_requests`) lose no
//! request; a gateway backend with `protocol: http2`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/h2_upstream_app.py");
const RESETTER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/h2_reset_server.py");

/// hypercorn serving the test app on `port` (h2c and HTTP/1.1, or TLS with `tls`).
fn hypercorn(port: u16, tls: Option<(&Path, &Path)>) -> Proc {
    hypercorn_retiring(port, tls, 1000)
}

/// [`hypercorn`] retiring each connection after `max_requests` requests.
fn hypercorn_retiring(port: u16, tls: Option<(&Path, &Path)>, max_requests: u32) -> Proc {
    let mut cmd = Command::new("python3");
    cmd.env("H2_APP_MAX_REQUESTS", max_requests.to_string());
    cmd.arg(APP).arg(port.to_string());
    if let Some((cert, key)) = tls {
        cmd.arg(cert).arg(key);
    }
    let mut p = daemon(&mut cmd, "hypercorn");
    p.wait_port(port);
    p
}

/// A listener on `port` whose requests go through `mux-http` (HTTP/2) to `upstream` (the
/// pipeline's filters, YAML, indented for a list).
fn flowgate_to(dir: &TempDir, port: u16, mux_extra: &str, upstream: &str) -> Proc {
    let cfg = dir.write(
        "flowgate.yaml",
        &format!(
            "workers: 2
listeners:
  - listen: 127.0.0.1:{port}
    pipeline: main
pipelines:
  main:
    - demux-http: {{ pipeline: request }}
  request:
    - mux-http: {{ pipeline: upstream, protocol: http2{mux_extra} }}
  upstream:
{upstream}"
        ),
    );
    flowgate_run(&cfg, &[port])
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// A file of `size` bytes of a non-repeating-looking pattern.
fn payload(dir: &TempDir, name: &str, size: usize) -> std::path::PathBuf {
    let data: Vec<u8> = (0..size)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let p = dir.path(name);
    std::fs::write(&p, data).unwrap();
    p
}

/// POSTs each payload size to `/echo` over HTTP/1.1 and h2 and compares SHA-256.
fn echo_round_trips(dir: &TempDir, base: &str, extra: &[&str]) {
    for size in [0, 1 << 20, 5 << 20] {
        let input = payload(dir, &format!("in-{size}"), size);
        for client in [&[][..], &["--http2-prior-knowledge"][..]] {
            let output = dir.path(&format!("out-{size}"));
            let _ = std::fs::remove_file(&output);
            let data = format!("@{}", input.display());
            let url = format!("{base}/echo");
            let mut args = vec![
                "--data-binary",
                &data,
                "-H",
                "content-type: application/octet-stream",
                "-o",
                output.to_str().unwrap(),
                "-w",
                "%{http_code}",
                &url,
            ];
            args.extend_from_slice(client);
            args.extend_from_slice(extra);
            let (ok, code, err) = curl(&args);
            assert!(ok && code == "200", "{size} B {client:?}: {code} {err}");
            assert_eq!(
                std::fs::metadata(&output).map(|m| m.len()).unwrap_or(0),
                size as u64,
                "{size} B {client:?}"
            );
            assert_eq!(sha256(&input), sha256(&output), "{size} B {client:?}");
        }
    }
}

/// How many distinct upstream connections hypercorn's app has seen.
fn upstream_connections(hc_port: u16) -> u64 {
    let (ok, body, err) = curl(&[&format!("http://127.0.0.1:{hc_port}/stats")]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["peers"].as_u64().unwrap()
}

/// Runs h2load; returns how many requests got a 2xx.
fn h2load(args: &[&str]) -> u64 {
    h2load_report(args).0
}

/// h2load's count of 2xx answers, and what it printed.
fn h2load_report(args: &[&str]) -> (u64, String) {
    let out = Command::new("h2load").args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text
        .lines()
        .find(|l| l.starts_with("status codes:"))
        .unwrap_or_else(|| panic!("h2load {args:?}: {text}"));
    line.trim_start_matches("status codes:")
        .split(',')
        .next()
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .map(|n| (n, text.clone()))
        .unwrap_or_else(|| panic!("{line}"))
}

#[test]
fn h2c_to_hypercorn_bodies_trailers_and_multiplexing() {
    if !peers(&["curl", "nghttp", "h2load", "sha256sum"])
        || !python_module("hypercorn", "hypercorn")
    {
        return;
    }
    let dir = TempDir::new("h2up-h2c");
    let hp = reserve_port();
    let _hc = hypercorn(hp, None);
    let port = reserve_port();
    let _fg = flowgate_to(
        &dir,
        port,
        "",
        &format!("    - connect: {{ endpoints: 127.0.0.1:{hp} }}\n"),
    );
    let base = format!("http://127.0.0.1:{port}");

    // The upstream sees HTTP/2, the authority from Host, no hop-by-hop fields.
    let (ok, out, err) = curl(&[
        "-i",
        "-H",
        "connection: keep-alive, x-hop",
        "-H",
        "x-hop: 1",
        "-H",
        "x-kept: 2",
        &format!("{base}/headers"),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("x-http-version: 2"), "{out}");
    assert!(out.contains("x-scheme: http\r\n"), "{out}");
    assert!(
        out.contains(&format!(":authority: 127.0.0.1:{port}"))
            || out.contains(&format!("host: 127.0.0.1:{port}")),
        "{out}"
    );
    assert!(out.contains("x-kept: 2"), "{out}");
    assert!(!out.contains("x-hop"), "{out}");
    assert!(!out.contains("\nconnection:"), "{out}");

    echo_round_trips(&dir, &base, &[]);

    // Trailers from the upstream reach an h2 client.
    let out = Command::new("nghttp")
        .args(["-v", "-H", "te: trailers", &format!("{base}/trailers")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("x-checksum: abc123"), "{text}");
    assert!(text.contains("with trailers"), "{text}");

    // 100 requests at once over one h2 client connection, then over 100 HTTP/1.1 client
    // connections: the upstream sees at most one connection per flowgate worker (2).
    curl(&[&format!("http://127.0.0.1:{hp}/reset-stats")]);
    let started = Instant::now();
    let ok = h2load(&["-n", "100", "-c", "1", "-m", "100", &format!("{base}/slow")]);
    assert_eq!(ok, 100);
    // /slow takes 0.3 s: 100 of them one after the other would take 30 s.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let after_h2 = upstream_connections(hp);
    assert!(
        (1..=2).contains(&after_h2),
        "{after_h2} upstream connections"
    );
    let ok = h2load(&["--h1", "-n", "100", "-c", "100", &format!("{base}/slow")]);
    assert_eq!(ok, 100);
    let total = upstream_connections(hp);
    assert!(total <= 2, "{total} upstream connections for 200 requests");
}

#[test]
fn h2_over_tls_to_hypercorn_and_nginx() {
    if !peers(&["nginx", "curl", "openssl", "sha256sum"])
        || !python_module("hypercorn", "hypercorn")
    {
        return;
    }
    let dir = TempDir::new("h2up-tls");
    let pki = OpensslPki::new(&dir, "up");
    let (cert, key) = pki.leaf("upstream", "up.test", false);
    let hp = reserve_port();
    let _hc = hypercorn(hp, Some((&cert, &key)));
    let np = reserve_port();
    let sink = reserve_port();
    let ndir = TempDir::new("h2up-nginx");
    // /sink reads the whole body before answering (proxy_pass to a plain server block):
    // an answer before the body is read makes nginx reset the stream with NO_ERROR, which
    // curl 7.88 takes for an error while it is still uploading.
    let mut nginx_proc = nginx(
        &ndir,
        &format!(
            "server {{ listen 127.0.0.1:{np} ssl http2; ssl_certificate {cert}; \
             ssl_certificate_key {key}; client_max_body_size 16m; \
             location /sink {{ client_body_buffer_size 8m; proxy_set_header x-proto $server_protocol; \
             proxy_pass http://127.0.0.1:{sink}; }} \
             location / {{ return 200 \"$server_protocol $request_method $request_uri\"; }} }} \
             server {{ listen 127.0.0.1:{sink}; client_max_body_size 16m; \
             location / {{ return 200 \"$http_x_proto $request_method $request_uri $content_length\"; }} }}",
            cert = cert.display(),
            key = key.display()
        ),
    );
    nginx_proc.wait_port(np);
    let (p1, p2) = (reserve_port(), reserve_port());
    let tls = |name: &str, target: u16| {
        format!(
            "  {name}:
    - connect-tls: {{ pipeline: {name}-tcp, sni: up.test, ca: {ca}, alpn: [h2] }}
  {name}-tcp:
    - connect: {{ endpoints: 127.0.0.1:{target} }}
",
            ca = pki.ca().display()
        )
    };
    let cfg = dir.write(
        "flowgate.yaml",
        &format!(
            "listeners:
  - listen: 127.0.0.1:{p1}
    pipeline: main1
  - listen: 127.0.0.1:{p2}
    pipeline: main2
pipelines:
  main1:
    - demux-http: {{ pipeline: to-hypercorn }}
  main2:
    - demux-http: {{ pipeline: to-nginx }}
  to-hypercorn:
    - mux-http: {{ pipeline: hc, protocol: http2, http2: {{ scheme: https }} }}
  to-nginx:
    - mux-http: {{ pipeline: ng, protocol: http2, http2: {{ scheme: https }} }}
{}{}",
            tls("hc", hp),
            tls("ng", np)
        ),
    );
    let _fg = flowgate_run(&cfg, &[p1, p2]);

    let (ok, out, err) = curl(&["-i", &format!("http://127.0.0.1:{p1}/hello")]);
    assert!(ok, "{err}");
    assert!(out.contains("x-http-version: 2"), "{out}");
    assert!(out.contains("x-scheme: https"), "{out}");
    echo_round_trips(&dir, &format!("http://127.0.0.1:{p1}"), &[]);

    let (ok, out, err) = curl(&[&format!("http://127.0.0.1:{p2}/n?q=1")]);
    assert!(ok, "{err}");
    assert_eq!(out, "HTTP/2.0 GET /n?q=1");
    let input = payload(&dir, "nginx-in", 1 << 20);
    let data = format!("@{}", input.display());
    for client in ["--http1.1", "--http2-prior-knowledge"] {
        let (ok, out, err) = curl(&[
            client,
            "--data-binary",
            &data,
            &format!("http://127.0.0.1:{p2}/sink"),
        ]);
        assert!(ok, "{err}");
        assert_eq!(out, "HTTP/2.0 POST /sink 1048576", "{client}");
    }
}

#[test]
fn a_stream_reset_by_the_upstream_fails_only_that_request() {
    if !peers(&["curl", "nghttp"]) || !python_module("h2", "h2") {
        return;
    }
    let dir = TempDir::new("h2up-reset");
    let up = reserve_port();
    let mut srv_proc = daemon(
        Command::new("python3").arg(RESETTER).arg(up.to_string()),
        "h2-reset-server",
    );
    srv_proc.wait_port(up);
    let port = reserve_port();
    let _fg = flowgate_to(
        &dir,
        port,
        "",
        &format!("    - connect: {{ endpoints: 127.0.0.1:{up} }}\n"),
    );
    let base = format!("http://127.0.0.1:{port}");
    // Ten ordinary requests and two reset ones at the same time, on one h2 client
    // connection (so on one upstream connection).
    let mut urls: Vec<String> = (0..10).map(|i| format!("{base}/ok{i}")).collect();
    urls.insert(3, format!("{base}/reset"));
    urls.insert(7, format!("{base}/reset-late"));
    let out = Command::new("nghttp")
        .arg("-v")
        .args(&urls)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for i in 0..10 {
        assert!(text.contains(&format!("/ok{i}")), "{text}");
    }
    let oks = text.matches(":status: 200").count();
    // 10 answers, plus the head of /reset-late (sent before its reset).
    assert!((10..=11).contains(&oks), "{text}");
    assert!(
        text.contains(":status: 502"),
        "/reset should be a 502: {text}"
    );

    // Over HTTP/1.1: a reset before the head is a 502, after it an aborted response.
    let (ok, code, _) = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("{base}/reset"),
    ]);
    assert!(ok && code == "502", "{code}");
    let (ok, body, _) = curl(&[&format!("{base}/reset-late")]);
    assert!(!ok, "an aborted response must not look complete: {body}");
    // And the connection still serves others.
    let (ok, body, err) = curl(&[&format!("{base}/after")]);
    assert!(ok && body == "/after", "{body} {err}");
}

#[test]
fn restarting_the_upstream_does_not_wedge_the_pool() {
    if !peers(&["curl", "h2load"]) || !python_module("hypercorn", "hypercorn") {
        return;
    }
    let dir = TempDir::new("h2up-restart");
    let hp = reserve_port();
    let hc = hypercorn(hp, None);
    let port = reserve_port();
    let _fg = flowgate_to(
        &dir,
        port,
        ", http2: { keepalive_interval: 1s, keepalive_timeout: 1s }",
        &format!("    - connect: {{ endpoints: 127.0.0.1:{hp}, connect_timeout: 1s }}\n"),
    );
    let url = format!("http://127.0.0.1:{port}/x");
    let status = |url: &str| {
        let (_, code, _) = curl(&["-o", "/dev/null", "-w", "%{http_code}", url]);
        code
    };
    for _ in 0..5 {
        assert_eq!(status(&url), "200");
    }
    // A request in flight while the upstream shuts down gracefully (GOAWAY): it finishes.
    let slow = format!("http://127.0.0.1:{port}/slow");
    let in_flight = std::thread::spawn(move || {
        let (_, code, _) = curl(&["-o", "/dev/null", "-w", "%{http_code}", &slow]);
        code
    });
    // Stop it once the request has reached it.
    assert!(
        wait_until(Duration::from_secs(5), || curl(&[&format!(
            "http://127.0.0.1:{hp}/inflight"
        )])
        .1 == "1"),
        "the slow request never reached the upstream"
    );
    drop(hc.stop());
    assert_eq!(in_flight.join().unwrap(), "200");
    // Down: a clean 502, not a hang.
    let t = Instant::now();
    assert_eq!(status(&url), "502");
    assert!(t.elapsed() < Duration::from_secs(5));
    // Back on the same port: requests succeed again within a bounded wait.
    let _hc = hypercorn(hp, None);
    assert!(
        wait_until(Duration::from_secs(10), || status(&url) == "200"),
        "the pool never recovered"
    );
    for _ in 0..10 {
        assert_eq!(status(&url), "200");
    }
    assert_eq!(h2load(&["-n", "50", "-c", "1", "-m", "50", &url]), 50);
}

#[test]
fn a_gateway_backend_with_protocol_http2() {
    if !peers(&["curl", "h2load"]) || !python_module("hypercorn", "hypercorn") {
        return;
    }
    let dir = TempDir::new("h2up-gw");
    let hp = reserve_port();
    let _hc = hypercorn(hp, None);
    let port = reserve_port();
    let cfg = dir.write(
        "gateway.yaml",
        &format!(
            "listeners:\n  - address: 127.0.0.1:{port}\nroutes:\n  - proxy: {{ backend: app }}\n\
             backends:\n  - name: app\n    endpoints: [127.0.0.1:{hp}]\n    protocol: http2\n"
        ),
    );
    let _gw = gateway_run(&cfg, port);
    let (ok, out, err) = curl(&["-i", &format!("http://127.0.0.1:{port}/gw")]);
    assert!(ok, "{err}");
    assert!(out.contains("x-http-version: 2"), "{out}");
    assert!(out.ends_with("/gw"), "{out}");
    curl(&[&format!("http://127.0.0.1:{hp}/reset-stats")]);
    assert_eq!(
        h2load(&[
            "-n",
            "100",
            "-c",
            "1",
            "-m",
            "100",
            &format!("http://127.0.0.1:{port}/slow")
        ]),
        100
    );
    assert!(upstream_connections(hp) <= 2);
}

#[test]
fn upstreams_retiring_connections_every_100_requests_lose_no_request() {
    if !peers(&["nginx", "h2load", "openssl"]) || !python_module("hypercorn", "hypercorn") {
        return;
    }
    let dir = TempDir::new("h2up-retire");
    let pki = OpensslPki::new(&dir, "up");
    let (cert, key) = pki.leaf("upstream", "up.test", false);
    // nginx, h2 over TLS: GOAWAY after 100 requests; the streams sent meanwhile are refused.
    let np = reserve_port();
    let ndir = TempDir::new("h2up-retire-nginx");
    let mut nginx_proc = nginx(
        &ndir,
        &format!(
            "server {{ listen 127.0.0.1:{np} ssl http2; ssl_certificate {cert}; \
             ssl_certificate_key {key}; keepalive_requests 100; \
             location / {{ return 200 \"$request_uri\"; }} }}",
            cert = cert.display(),
            key = key.display()
        ),
    );
    nginx_proc.wait_port(np);
    // hypercorn, h2c: after 100 requests it says GOAWAY and answers nothing more on the
    // connection (not even the streams the GOAWAY says it took).
    let hp = reserve_port();
    let _hc = hypercorn_retiring(hp, None, 100);
    let (p1, p2) = (reserve_port(), reserve_port());
    let cfg = dir.write(
        "flowgate.yaml",
        &format!(
            "workers: 2
listeners:
  - listen: 127.0.0.1:{p1}
    pipeline: main1
  - listen: 127.0.0.1:{p2}
    pipeline: main2
pipelines:
  main1:
    - demux-http: {{ pipeline: to-nginx }}
  main2:
    - demux-http: {{ pipeline: to-hypercorn }}
  to-nginx:
    - mux-http: {{ pipeline: ng, protocol: http2, http2: {{ scheme: https }} }}
  ng:
    - connect-tls: {{ pipeline: ng-tcp, sni: up.test, ca: {ca}, alpn: [h2] }}
  ng-tcp:
    - connect: {{ endpoints: 127.0.0.1:{np} }}
  to-hypercorn:
    - mux-http: {{ pipeline: hc, protocol: http2 }}
  hc:
    - connect: {{ endpoints: 127.0.0.1:{hp} }}
",
            ca = pki.ca().display()
        ),
    );
    // Its debug log (re-sends, failures) goes to a file, shown when something failed.
    let log = dir.path("flowgate.log");
    let child = Command::new(env!("CARGO_BIN_EXE_flowgate"))
        .arg("run")
        .arg(&cfg)
        .env("RUST_LOG", "warn,flowgate_filters_http=debug")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut fg = Proc::new(child, "flowgate");
    fg.wait_port(p1);
    fg.wait_port(p2);
    let failures = || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.contains("sending it again"))
            .take(60)
            .collect();
        lines.join("\n")
    };

    // 80 streams at once, then 640 (several upstream connections at a time).
    let url = format!("http://127.0.0.1:{p1}/n");
    assert_eq!(h2load(&["-n", "3000", "-c", "8", "-m", "10", &url]), 3000);
    assert_eq!(
        h2load(&["-n", "10000", "-c", "32", "-m", "20", &url]),
        10000
    );

    // Every 100 requests hypercorn drops the streams in flight: the GETs are sent again,
    // at once (a PING on its GOAWAY makes it close the connection), not after its 5 s
    // keep-alive timeout. (Each retirement loses every stream in flight, so a request can
    // be lost on several connections in a row: at 10 in flight for 100 a connection that
    // is about 10 % a try, and six tries make a failure all but impossible; at 80 in
    // flight it would be 45 % — set `max_requests` below hypercorn's limit instead.)
    let url = format!("http://127.0.0.1:{p2}/h");
    let started = Instant::now();
    let (ok, report) = h2load_report(&["-n", "2000", "-c", "2", "-m", "5", &url]);
    // hypercorn sometimes retires a connection between a response's head and its body
    // (the two are separate sends in the app): the head has gone on to the client, so no
    // proxy can send that request again. Those streams, and only those, may fail; each is
    // logged. A request lost before its head would be a failure here.
    let after_head = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .matches("stream failed after its response head")
        .count() as u64;
    assert!(
        after_head <= 20,
        "{after_head} streams broken after their heads"
    );
    assert_eq!(ok + after_head, 2000, "{report}\n{}", failures());
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(25),
        "{took:?} for 20 retirements"
    );
}

#[test]
fn protocol_auto_follows_the_upstreams_alpn() {
    if !peers(&["nginx", "curl", "openssl"]) {
        return;
    }
    let dir = TempDir::new("h2up-auto");
    let pki = OpensslPki::new(&dir, "up");
    let (cert, key) = pki.leaf("upstream", "up.test", false);
    // Three upstreams: TLS offering h2, TLS with HTTP/1.1 only, plain TCP. Each answers
    // with the protocol it was spoken to in.
    let (h2_port, h1_port, plain_port) = (reserve_port(), reserve_port(), reserve_port());
    let ndir = TempDir::new("h2up-auto-nginx");
    let mut ng = nginx(
        &ndir,
        &format!(
            "server {{ listen 127.0.0.1:{h2_port} ssl http2; ssl_certificate {cert}; \
             ssl_certificate_key {key}; location / {{ return 200 \"$server_protocol $request_uri\"; }} }} \
             server {{ listen 127.0.0.1:{h1_port} ssl; ssl_certificate {cert}; \
             ssl_certificate_key {key}; location / {{ return 200 \"$server_protocol $request_uri\"; }} }} \
             server {{ listen 127.0.0.1:{plain_port}; \
             location / {{ return 200 \"$server_protocol $request_uri\"; }} }}",
            cert = cert.display(),
            key = key.display()
        ),
    );
    ng.wait_port(h2_port);
    ng.wait_port(h1_port);
    ng.wait_port(plain_port);
    let tls = |name: &str, target: u16| {
        format!(
            "  {name}:
    - connect-tls: {{ pipeline: {name}-tcp, sni: up.test, ca: {ca}, alpn: [h2, http/1.1] }}
  {name}-tcp:
    - connect: {{ endpoints: 127.0.0.1:{target} }}
",
            ca = pki.ca().display()
        )
    };
    let port = reserve_port();
    let gw_port = reserve_port();
    let cfg = dir.write(
        "flowgate.yaml",
        &format!(
            "workers: 2
listeners:
  - listen: 127.0.0.1:{port}
    pipeline: main
pipelines:
  main:
    - demux-http: {{ pipeline: request }}
  request:
    - route:
        routes:
          - {{ match: {{ path_prefix: /h2 }}, pipeline: to-h2 }}
          - {{ match: {{ path_prefix: /h1 }}, pipeline: to-h1 }}
        default: to-plain
  to-h2:
    - mux-http: {{ pipeline: h2, protocol: auto }}
  to-h1:
    - mux-http: {{ pipeline: h1, protocol: auto }}
  to-plain:
    - mux-http: {{ pipeline: plain, protocol: auto }}
  plain:
    - connect: {{ endpoints: 127.0.0.1:{plain_port} }}
{}{}",
            tls("h2", h2_port),
            tls("h1", h1_port)
        ),
    );
    let _fg = flowgate_run(&cfg, &[port]);
    // Several requests on one client connection, then more on new ones: the first decides,
    // the others follow the decision.
    for round in 0..2 {
        for (path, want) in [
            ("/h2/a", "HTTP/2.0 /h2/a"),
            ("/h1/b", "HTTP/1.1 /h1/b"),
            ("/c", "HTTP/1.1 /c"),
        ] {
            let url = format!("http://127.0.0.1:{port}{path}");
            let (ok, out, err) = curl(&[&url, &url]);
            assert!(ok, "round {round} {path}: {err}");
            assert_eq!(out, format!("{want}{want}"), "round {round} {path}");
        }
    }

    // The gateway: a backend with `protocol: auto` and `tls` offers both by ALPN itself.
    let gw = dir.write(
        "gateway.yaml",
        &format!(
            "listeners:\n  - address: 127.0.0.1:{gw_port}\nroutes:\n  - match: {{ path_prefix: /h1 }}\n    proxy: {{ backend: one }}\n  - proxy: {{ backend: two }}\nbackends:\n  - name: two\n    endpoints: [127.0.0.1:{h2_port}]\n    protocol: auto\n    tls: {{ sni: up.test, ca: {ca} }}\n  - name: one\n    endpoints: [127.0.0.1:{h1_port}]\n    protocol: auto\n    tls: {{ sni: up.test, ca: {ca} }}\n",
            ca = pki.ca().display()
        ),
    );
    let _gw = gateway_run(&gw, gw_port);
    let (ok, out, err) = curl(&[&format!("http://127.0.0.1:{gw_port}/x")]);
    assert!(ok, "{err}");
    assert_eq!(out, "HTTP/2.0 /x");
    let (ok, out, err) = curl(&[&format!("http://127.0.0.1:{gw_port}/h1/y")]);
    assert!(ok, "{err}");
    assert_eq!(out, "HTTP/1.1 /h1/y");
}
