//! `flowgate-gateway` end to end: gateway files run by the binary in front of real nginx
//! upstreams on loopback, poked with curl. Requests are balanced per request (several on
//! one keep-alive client connection still spread), stopped upstreams are skipped, routes,
//! redirects and fixed responses answer, TLS picks certificates by SNI and speaks HTTP/2
//! by ALPN.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// One nginx per upstream (so one can be stopped alone), each saying who it is.
struct Upstream {
    port: u16,
    proc: Option<Proc>,
    _dir: TempDir,
}

fn upstreams(tag: &str, n: usize) -> Vec<Upstream> {
    (0..n)
        .map(|i| {
            let dir = TempDir::new(&format!("gw-{tag}-up{i}"));
            let port = reserve_port();
            let mut p = nginx(
                &dir,
                &format!(
                    "server {{ listen 127.0.0.1:{port}; keepalive_requests 100000; \
                     location = /health {{ return 200 \"ok\\n\"; }} \
                     location / {{ return 200 \"upstream-{i} $request_uri $http_x_gw\\n\"; }} }}"
                ),
            );
            p.wait_port(port);
            Upstream {
                port,
                proc: Some(p),
                _dir: dir,
            }
        })
        .collect()
}

fn gateway(dir: &TempDir, yaml: &str, port: u16) -> Proc {
    let cfg = dir.write("gateway.yaml", yaml);
    gateway_run(&cfg, port)
}

/// Runs curl on `urls` in one invocation (one keep-alive connection) and returns the
/// bodies, one line each, and curl's stderr.
fn curl_lines(extra: &[&str], urls: &[String]) -> (Vec<String>, String) {
    let mut args: Vec<&str> = vec!["-v"];
    args.extend_from_slice(extra);
    args.extend(urls.iter().map(String::as_str));
    let (ok, out, err) = curl(&args);
    assert!(ok, "curl failed: {err}");
    (out.lines().map(str::to_string).collect(), err)
}

fn who(lines: &[String]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for l in lines {
        let name = l.split(' ').next().unwrap_or("").to_string();
        *m.entry(name).or_default() += 1;
    }
    m
}

fn backend_yaml(name: &str, ups: &[Upstream], weights: &[u32], extra: &str) -> String {
    let eps: Vec<String> = ups
        .iter()
        .zip(weights.iter().chain(std::iter::repeat(&1)))
        .map(|(u, w)| format!("{{ address: 127.0.0.1:{}, weight: {w} }}", u.port))
        .collect();
    format!(
        "  - name: {name}\n    endpoints: [{}]\n{extra}",
        eps.join(", ")
    )
}

#[test]
fn round_robin_splits_requests_exactly_over_one_keepalive_connection() {
    if !peers(&["nginx", "curl"]) {
        return;
    }
    let ups = upstreams("rr", 3);
    let dir = TempDir::new("gw-rr");
    let port = reserve_port();
    let yaml = format!(
        "workers: 2\nlisteners:\n  - address: 127.0.0.1:{port}\nroutes:\n  - proxy: {{ backend: app }}\nbackends:\n{}",
        backend_yaml("app", &ups, &[], "    balance: round_robin\n")
    );
    let _gw = gateway(&dir, &yaml, port);
    let urls: Vec<String> = (0..30)
        .map(|i| format!("http://127.0.0.1:{port}/r{i}"))
        .collect();
    let (lines, err) = curl_lines(&[], &urls);
    assert_eq!(lines.len(), 30, "{lines:?}");
    assert_eq!(
        err.matches("Connected to").count(),
        1,
        "one client connection: {err}"
    );
    let counts = who(&lines);
    assert_eq!(
        counts,
        BTreeMap::from([
            ("upstream-0".to_string(), 10),
            ("upstream-1".to_string(), 10),
            ("upstream-2".to_string(), 10),
        ]),
        "{lines:?}"
    );
    // The paths came through unchanged and in order.
    for (i, l) in lines.iter().enumerate() {
        assert!(l.contains(&format!(" /r{i} ")), "{l}");
    }
}

#[test]
fn weights_and_hash_policies() {
    if !peers(&["nginx", "curl"]) {
        return;
    }
    let ups = upstreams("wh", 3);
    let dir = TempDir::new("gw-wh");
    let port = reserve_port();
    let yaml = format!(
        "listeners:\n  - address: 127.0.0.1:{port}\nroutes:\n  - match: {{ path_prefix: /w/ }}\n    proxy: {{ backend: weighted }}\n  - match: {{ path_prefix: /h/ }}\n    proxy: {{ backend: hashed }}\n  - match: {{ path_prefix: /ip/ }}\n    proxy: {{ backend: by-ip }}\nbackends:\n{}{}{}",
        backend_yaml(
            "weighted",
            &ups[..2],
            &[1, 3],
            "    balance: weighted_round_robin\n"
        ),
        backend_yaml(
            "hashed",
            &ups,
            &[],
            "    balance: maglev\n    hash_on: { header: x-user }\n"
        ),
        backend_yaml("by-ip", &ups, &[], "    balance: ring_hash\n"),
    );
    let _gw = gateway(&dir, &yaml, port);

    // Smooth WRR: exactly 1:3 over whole cycles, on one connection.
    let urls: Vec<String> = (0..40)
        .map(|i| format!("http://127.0.0.1:{port}/w/{i}"))
        .collect();
    let (lines, _) = curl_lines(&[], &urls);
    let counts = who(&lines);
    assert_eq!(counts.get("upstream-0"), Some(&10), "{counts:?}");
    assert_eq!(counts.get("upstream-1"), Some(&30), "{counts:?}");

    // Maglev on a header: each user always lands on the same upstream; users spread.
    let mut seen = BTreeMap::new();
    for u in 0..12 {
        let user = format!("x-user: user-{u}");
        let urls: Vec<String> = (0..4)
            .map(|i| format!("http://127.0.0.1:{port}/h/{i}"))
            .collect();
        let (lines, _) = curl_lines(&["-H", &user], &urls);
        let counts = who(&lines);
        assert_eq!(counts.len(), 1, "user-{u} moved: {lines:?}");
        let (up, n) = counts.into_iter().next().unwrap();
        assert_eq!(n, 4);
        seen.insert(u, up);
    }
    let distinct: std::collections::BTreeSet<_> = seen.values().collect();
    assert!(distinct.len() >= 2, "12 users on one upstream: {seen:?}");

    // Ring hash on the client IP: every request from 127.0.0.1 sticks, over separate
    // connections too.
    let mut all = Vec::new();
    for i in 0..3 {
        let urls: Vec<String> = (0..3)
            .map(|j| format!("http://127.0.0.1:{port}/ip/{i}{j}"))
            .collect();
        all.extend(curl_lines(&[], &urls).0);
    }
    assert_eq!(who(&all).len(), 1, "{all:?}");
}

#[test]
fn stopped_upstreams_are_skipped_by_retry_outlier_detection_and_health_checks() {
    if !peers(&["nginx", "curl"]) {
        return;
    }
    let mut ups = upstreams("down", 3);
    let dir = TempDir::new("gw-down");
    let port = reserve_port();
    let no_outlier =
        "    balance: { outlier: { consecutive_5xx: 0, consecutive_connect_failures: 0 } }\n";
    let yaml = format!(
        "listeners:\n  - address: 127.0.0.1:{port}\nroutes:\n  - match: {{ path_prefix: /retry/ }}\n    proxy: {{ backend: retrying }}\n  - match: {{ path_prefix: /passive/ }}\n    proxy: {{ backend: passive }}\n  - match: {{ path_prefix: /active/ }}\n    proxy: {{ backend: active }}\nbackends:\n{}{}{}",
        backend_yaml(
            "retrying",
            &ups,
            &[],
            &format!("    retries: 1\n{no_outlier}")
        ),
        backend_yaml(
            "passive",
            &ups,
            &[],
            "    retries: 0\n    balance: { outlier: { consecutive_connect_failures: 1, base_ejection_time: 60s } }\n"
        ),
        backend_yaml(
            "active",
            &ups,
            &[],
            &format!(
                "    retries: 0\n{no_outlier}    health_check: {{ probe: {{ type: http, path: /health }}, interval: 200ms, timeout: 500ms, unhealthy_threshold: 1 }}\n"
            )
        ),
    );
    let _gw = gateway(&dir, &yaml, port);
    // All up: every group answers (and the health checks start).
    for g in ["retry", "passive", "active"] {
        let urls: Vec<String> = (0..3)
            .map(|i| format!("http://127.0.0.1:{port}/{g}/{i}"))
            .collect();
        let (lines, _) = curl_lines(&[], &urls);
        assert_eq!(who(&lines).len(), 3, "{g}: {lines:?}");
    }
    let dead_port = ups[1].port;
    ups[1].proc.take().unwrap().stop();
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(("127.0.0.1", dead_port)).is_ok() {
        assert!(Instant::now() < deadline, "nginx did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Retries: the dead endpoint stays in the rotation, but each try that hits it is
    // retried on the next pick.
    let urls: Vec<String> = (0..12)
        .map(|i| format!("http://127.0.0.1:{port}/retry/{i}"))
        .collect();
    let (lines, _) = curl_lines(&["-f"], &urls);
    assert_eq!(lines.len(), 12, "{lines:?}");
    assert!(!who(&lines).contains_key("upstream-1"), "{lines:?}");

    // Outlier detection: one failed connect ejects it. A request or two of the first
    // rounds fail with 502 (the one that met the dead endpoint; a pooled connection that
    // was closed under it, at worst), none after.
    let mut failures = 0;
    for i in 0..6 {
        let (_, code, _) = curl(&[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://127.0.0.1:{port}/passive/{i}"),
        ]);
        if code != "200" {
            assert_eq!(code, "502");
            failures += 1;
        }
    }
    assert!((1..=2).contains(&failures), "{failures} failures");
    let urls: Vec<String> = (0..12)
        .map(|i| format!("http://127.0.0.1:{port}/passive/{i}"))
        .collect();
    let (lines, _) = curl_lines(&["-f"], &urls);
    assert_eq!(lines.len(), 12);
    assert_eq!(who(&lines).len(), 2, "{lines:?}");

    // Health checks (200 ms, one failure marks it down): once they have marked it, no
    // retries and no outlier detection needed, every request succeeds on the two live
    // upstreams (until then a request may meet the dead one: poll, bounded).
    let urls: Vec<String> = (0..12)
        .map(|i| format!("http://127.0.0.1:{port}/active/{i}"))
        .collect();
    let mut args = vec!["-f"];
    args.extend(urls.iter().map(String::as_str));
    let mut lines = Vec::new();
    let marked_down = wait_until(Duration::from_secs(10), || {
        let (ok, out, _) = curl(&args);
        lines = out.lines().map(str::to_string).collect();
        ok && lines.len() == 12
    });
    assert!(
        marked_down,
        "the stopped upstream is still picked: {lines:?}"
    );
    assert_eq!(lines.len(), 12);
    let counts = who(&lines);
    assert_eq!(counts.get("upstream-0"), Some(&6), "{counts:?}");
    assert_eq!(counts.get("upstream-2"), Some(&6), "{counts:?}");
}

#[test]
fn routes_by_host_and_path_with_rewrites_redirects_and_fixed_responses() {
    if !peers(&["nginx", "curl"]) {
        return;
    }
    let ups = upstreams("routes", 2);
    let dir = TempDir::new("gw-routes");
    let port = reserve_port();
    let yaml = format!(
        "listeners:\n  - address: 127.0.0.1:{port}\n    access_log: common\nroutes:\n  - name: health\n    match: {{ path: /health }}\n    respond: {{ status: 200, body: \"gateway ok\\n\", headers: {{ x-fixed: \"yes\" }} }}\n  - name: moved\n    match: {{ path_prefix: /old/ }}\n    redirect: {{ status: 308, path_prefix: {{ from: /old/, to: /new/ }} }}\n  - name: a\n    match: {{ host: a.test }}\n    proxy: {{ backend: a }}\n  - name: b-api\n    match: {{ host: \"*.b.test\", path_prefix: /api/, method: [GET] }}\n    proxy:\n      backend: b\n      rewrite: {{ from: /api/, to: /v2/ }}\n      request_headers: {{ set: {{ x-gw: added }} }}\n      response_headers: {{ set: {{ x-served-by: flowgate }} }}\nbackends:\n{}{}",
        backend_yaml("a", &ups[..1], &[], ""),
        backend_yaml("b", &ups[1..], &[], ""),
    );
    let _gw = gateway(&dir, &yaml, port);
    let base = format!("http://127.0.0.1:{port}");

    let (ok, out, _) = curl(&["-i", &format!("{base}/health")]);
    assert!(ok);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.to_ascii_lowercase().contains("x-fixed: yes"), "{out}");
    assert!(out.ends_with("gateway ok\n"), "{out}");

    let (ok, out, _) = curl(&["-i", &format!("{base}/old/page?q=1")]);
    assert!(ok);
    assert!(out.starts_with("HTTP/1.1 308"), "{out}");
    assert!(
        out.to_ascii_lowercase()
            .contains(&format!("location: http://127.0.0.1:{port}/new/page?q=1")),
        "{out}"
    );

    let (ok, out, _) = curl(&["-H", "Host: a.test", &format!("{base}/x")]);
    assert!(ok);
    assert_eq!(out, "upstream-0 /x \n");

    let (ok, out, _) = curl(&[
        "-i",
        "-H",
        "Host: api.b.test",
        &format!("{base}/api/items?id=7"),
    ]);
    assert!(ok);
    assert!(out.contains("upstream-1 /v2/items?id=7 added\n"), "{out}");
    assert!(
        out.to_ascii_lowercase().contains("x-served-by: flowgate"),
        "{out}"
    );

    // Same host, wrong method or path; unknown host: no route.
    for args in [
        vec!["-X", "POST", "-H", "Host: api.b.test", "/api/items"],
        vec!["-H", "Host: api.b.test", "/other"],
        vec!["-H", "Host: c.test", "/x"],
    ] {
        let (path, head) = args.split_last().unwrap();
        let mut a: Vec<String> = head.iter().map(|s| s.to_string()).collect();
        a.extend(["-o", "/dev/null", "-w", "%{http_code}"].map(String::from));
        a.push(format!("{base}{path}"));
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let (_, code, _) = curl(&a);
        assert_eq!(code, "404", "{args:?}");
    }
}

#[test]
fn tls_certificates_by_sni_and_http2_by_alpn() {
    if !peers(&["nginx", "curl", "openssl"]) {
        return;
    }
    let ups = upstreams("tls", 2);
    let dir = TempDir::new("gw-tls");
    let pki = OpensslPki::new(&dir, "gw");
    let (a_cert, a_key) = pki.leaf("a", "a.test", false);
    let (b_cert, b_key) = pki.leaf("b", "b.test", false);
    let port = reserve_port();
    let yaml = format!(
        "listeners:\n  - name: secure\n    address: 127.0.0.1:{port}\n    tls:\n      certificates:\n        - {{ cert: {}, key: {}, sni: [a.test] }}\n        - {{ cert: {}, key: {}, sni: [b.test] }}\nroutes:\n  - proxy: {{ backend: app }}\nbackends:\n{}",
        a_cert.display(),
        a_key.display(),
        b_cert.display(),
        b_key.display(),
        backend_yaml("app", &ups, &[], ""),
    );
    let _gw = gateway(&dir, &yaml, port);
    let ca = pki.ca().display().to_string();
    for host in ["a.test", "b.test"] {
        let resolve = format!("{host}:{port}:127.0.0.1");
        let url = format!("https://{host}:{port}/hello");
        let (ok, out, err) = curl(&[
            "-v",
            "--http1.1",
            "--cacert",
            &ca,
            "--resolve",
            &resolve,
            &url,
        ]);
        assert!(ok, "{err}");
        assert!(out.starts_with("upstream-"), "{out}");
        assert!(
            err.contains(&format!("subject: CN={host}")),
            "{host}: wrong certificate: {err}"
        );
        // HTTP/2 by ALPN, several requests multiplexed on one connection, still spread.
        let urls: Vec<String> = (0..4)
            .map(|i| format!("https://{host}:{port}/h2/{i}"))
            .collect();
        let mut args = vec![
            "--http2",
            "--cacert",
            &ca,
            "--resolve",
            &resolve,
            "-w",
            "%{http_version}\\n",
        ];
        args.extend(urls.iter().map(String::as_str));
        let (lines, err) = curl_lines(&args, &[]);
        assert!(err.contains("ALPN: server accepted h2"), "{err}");
        let versions: Vec<&String> = lines
            .iter()
            .filter(|l| !l.starts_with("upstream-"))
            .collect();
        assert_eq!(versions, ["2", "2", "2", "2"], "{lines:?}");
        let bodies: Vec<String> = lines
            .iter()
            .filter(|l| l.starts_with("upstream-"))
            .cloned()
            .collect();
        assert_eq!(who(&bodies).len(), 2, "{bodies:?}");
    }
}

#[test]
fn https_backends_over_http1_and_h2_with_verified_certificates() {
    if !peers(&["nginx", "curl", "openssl"]) {
        return;
    }
    let dir = TempDir::new("gw-uptls");
    let pki = OpensslPki::new(&dir, "up");
    let (cert, key) = pki.leaf("upstream", "up.test", false);
    // Two nginx endpoints over TLS, each speaking HTTP/1.1 and h2 (by ALPN).
    let ports: Vec<u16> = (0..2).map(|_| reserve_port()).collect();
    let _nginx: Vec<(Proc, TempDir)> = ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            let ndir = TempDir::new(&format!("gw-uptls-nginx{i}"));
            let p = nginx(
                &ndir,
                &format!(
                    "server {{ listen 127.0.0.1:{port} ssl http2; ssl_certificate {}; \
                     ssl_certificate_key {}; keepalive_requests 100000; \
                     location / {{ return 200 \"tls-{i} $server_protocol $ssl_server_name $request_uri\\n\"; }} }}",
                    cert.display(),
                    key.display()
                ),
            );
            (p, ndir)
        })
        .collect();
    for p in &ports {
        wait_port(*p);
    }
    let eps = |ps: &[u16]| {
        ps.iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let ca = pki.ca().display().to_string();
    let port = reserve_port();
    // A third group trusts another CA: its requests fail the handshake (502).
    let other = OpensslPki::new(&dir, "other");
    let yaml = format!(
        "listeners:\n  - address: 127.0.0.1:{port}\nroutes:\n  - match: {{ path_prefix: /h2 }}\n    proxy: {{ backend: h2 }}\n  - match: {{ path_prefix: /untrusted }}\n    proxy: {{ backend: untrusted }}\n  - proxy: {{ backend: h1 }}\nbackends:\n  - name: h1\n    endpoints: [{e}]\n    tls: {{ sni: up.test, ca: {ca} }}\n  - name: h2\n    endpoints: [{e}]\n    protocol: http2\n    tls: {{ sni: up.test, ca: {ca} }}\n  - name: untrusted\n    endpoints: [{e}]\n    retries: 0\n    tls: {{ sni: up.test, ca: {oca} }}\n",
        e = eps(&ports),
        oca = other.ca().display()
    );
    let _gw = gateway(&dir, &yaml, port);
    let urls: Vec<String> = (0..4)
        .map(|i| format!("http://127.0.0.1:{port}/one/{i}"))
        .collect();
    let (lines, _) = curl_lines(&[], &urls);
    assert_eq!(lines.len(), 4, "{lines:?}");
    for l in &lines {
        assert!(l.contains(" HTTP/1.1 up.test /one/"), "{l}");
    }
    assert_eq!(who(&lines).len(), 2, "{lines:?}");
    let urls: Vec<String> = (0..4)
        .map(|i| format!("http://127.0.0.1:{port}/h2/{i}"))
        .collect();
    let (lines, _) = curl_lines(&[], &urls);
    for l in &lines {
        assert!(l.contains(" HTTP/2.0 up.test /h2/"), "{l}");
    }
    assert_eq!(who(&lines).len(), 2, "{lines:?}");
    let (ok, out, err) = curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://127.0.0.1:{port}/untrusted"),
    ]);
    assert!(ok, "{err}");
    assert_eq!(out, "502");
}

#[test]
fn check_prints_the_pipelines_and_names_bad_fields_and_sighup_reloads() {
    if !peers(&["curl"]) {
        return;
    }
    let dir = TempDir::new("gw-check");
    let port = reserve_port();
    let good = format!(
        "listeners:\n  - address: 127.0.0.1:{port}\nroutes:\n  - match: {{ path: /v }}\n    respond: {{ body: \"one\\n\" }}\n"
    );
    let path = dir.write("gw.yaml", &good);
    let out = Command::new(env!("CARGO_BIN_EXE_flowgate-gateway"))
        .args(["check"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("routes:listener0"), "{stdout}");
    assert!(stdout.contains("respond"), "{stdout}");
    assert!(stdout.contains(": ok (1 listeners"), "{stdout}");

    let bad = dir.write(
        "bad.yaml",
        &format!("{good}    proxy: {{ backend: nowhere }}\n"),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_flowgate-gateway"))
        .args(["check"])
        .arg(&bad)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("bad.yaml:4:"), "{stderr}");
    assert!(stderr.contains("give exactly one of"), "{stderr}");

    // SIGHUP reloads; a bad file keeps the running configuration.
    let gw = gateway_run(&path, port);
    let url = format!("http://127.0.0.1:{port}/v");
    assert_eq!(curl(&[&url]).1, "one\n");
    std::fs::write(&path, good.replace("one", "two")).unwrap();
    gw.signal("HUP");
    assert!(
        wait_until(Duration::from_secs(5), || curl(&[&url]).1 == "two\n"),
        "not reloaded"
    );
    std::fs::write(&path, "listeners: [\n").unwrap();
    gw.signal("HUP");
    // Once the gateway has turned the bad file down, the running configuration still
    // answers.
    assert!(
        wait_until(Duration::from_secs(5), || gw
            .stderr_so_far()
            .contains("reload refused")),
        "the bad file was not turned down: {}",
        gw.stderr_so_far()
    );
    assert_eq!(curl(&[&url]).1, "two\n");
}

#[test]
fn the_example_gateway_file_runs() {
    if !peers(&["curl"]) {
        return;
    }
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/configs/gateway.yaml"),
    )
    .unwrap();
    let (web, a, b) = (reserve_port(), reserve_port(), reserve_port());
    // The gateway proxies to its own listeners, so its pooled upstream connections are live
    // connections too: drain briefly on stop.
    let text = format!("drain_timeout: 1s\n{text}")
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{web}"))
        .replace("127.0.0.1:8001", &format!("127.0.0.1:{a}"))
        .replace("127.0.0.1:8002", &format!("127.0.0.1:{b}"));
    let dir = TempDir::new("gw-example");
    let _gw = gateway(&dir, &text, web);
    wait_port(a);
    wait_port(b);
    let urls: Vec<String> = (0..6)
        .map(|i| format!("http://127.0.0.1:{web}/api/{i}"))
        .collect();
    let (lines, _) = curl_lines(&["-f"], &urls);
    let mut counts = BTreeMap::new();
    for l in &lines {
        *counts.entry(l.as_str()).or_insert(0) += 1;
    }
    assert_eq!(
        counts,
        BTreeMap::from([("hello from a", 2), ("hello from b", 4)]),
        "{lines:?}"
    );
    let (ok, out, _) = curl(&[&format!("http://127.0.0.1:{web}/health")]);
    assert!(ok && out == "ok\n", "{out}");
}
