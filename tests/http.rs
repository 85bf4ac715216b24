//! The HTTP/1 data plane through the `flowgate` binary: a reverse proxy (demux-http →
//! mux-http → connect) in front of a real nginx, checked with curl, and the smuggling and
//! limit vectors answered with their status and a closed connection.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;

fn proxy(dir: &TempDir, nginx_port: u16) -> (Proc, u16) {
    let port = reserve_port();
    let cfg = dir.write(
        "http.yaml",
        &format!(
            "listeners:\n  - listen: 127.0.0.1:{port}\n    pipeline: main\npipelines:\n  main:\n    - demux-http: {{ pipeline: request, limits: {{ max_head_bytes: 8192 }} }}\n  request:\n    - mux-http: {{ pipeline: upstream }}\n  upstream:\n    - connect: {{ endpoints: 127.0.0.1:{nginx_port} }}\n"
        ),
    );
    (flowgate_run(&cfg, &[port]), port)
}

fn nginx_echo(dir: &TempDir) -> (Proc, u16) {
    let port = reserve_port();
    let mut p = nginx(
        dir,
        &format!(
            "server {{ listen 127.0.0.1:{port}; keepalive_requests 10000; \
             location /hello {{ return 200 \"hello $request_method $request_uri\"; }} \
             location /echo {{ client_body_buffer_size 1m; proxy_pass http://127.0.0.1:{port}/sink; }} \
             location /sink {{ return 200 \"got $content_length\"; }} }}"
        ),
    );
    p.wait_port(port);
    (p, port)
}

#[test]
fn reverse_proxy_in_front_of_nginx_with_curl() {
    if !peers(&["nginx", "curl"]) {
        return;
    }
    let dir = TempDir::new("http-proxy");
    let (_nginx, up) = nginx_echo(&dir);
    let (_fg, port) = proxy(&dir, up);
    let base = format!("http://127.0.0.1:{port}");
    let (ok, body, err) = curl(&[&format!("{base}/hello?x=1")]);
    assert!(ok, "{err}");
    assert_eq!(body, "hello GET /hello?x=1");
    // Three requests on one keep-alive connection.
    let (ok, body, err) = curl(&[
        "-v",
        &format!("{base}/hello/a"),
        &format!("{base}/hello/b"),
        &format!("{base}/hello/c"),
    ]);
    assert!(ok, "{err}");
    assert_eq!(
        body,
        "hello GET /hello/ahello GET /hello/bhello GET /hello/c"
    );
    assert!(
        err.contains("Re-using existing connection") || err.contains("Reusing existing connection"),
        "{err}"
    );
    // HEAD: no body.
    let (ok, body, _) = curl(&["-I", &format!("{base}/hello")]);
    assert!(ok && body.starts_with("HTTP/1.1 200"), "{body}");
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    if !peers(&["nginx"]) {
        return;
    }
    let dir = TempDir::new("http-pipeline");
    let (_nginx, up) = nginx_echo(&dir);
    let (_fg, port) = proxy(&dir, up);
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"GET /hello/1 HTTP/1.1\r\nHost: a\r\n\r\nGET /hello/2 HTTP/1.1\r\nHost: a\r\n\r\nGET /hello/3 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").unwrap();
    let mut all = String::new();
    c.read_to_string(&mut all).unwrap();
    let bodies: Vec<&str> = all
        .match_indices("hello GET /hello/")
        .map(|(i, _)| &all[i + 17..i + 18])
        .collect();
    assert_eq!(bodies, ["1", "2", "3"], "{all}");
}

#[test]
fn an_upstream_closing_every_ten_requests_loses_none() {
    if !peers(&["nginx", "h2load"]) {
        return;
    }
    let dir = TempDir::new("http-ka-close");
    let up = reserve_port();
    // nginx says `Connection: close` on every tenth response of a connection and closes.
    let mut nginx_proc = nginx(
        &dir,
        &format!(
            "server {{ listen 127.0.0.1:{up}; keepalive_requests 10; \
             location / {{ return 200 \"ok\"; }} }}"
        ),
    );
    nginx_proc.wait_port(up);
    let (_fg, port) = proxy(&dir, up);
    let out = std::process::Command::new("h2load")
        .args([
            "--h1",
            "-n",
            "3000",
            "-c",
            "8",
            &format!("http://127.0.0.1:{port}/"),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("status codes: 3000 2xx"),
        "every request answered 200 in spite of 300 upstream closes:\n{text}"
    );
}

#[test]
fn response_hop_by_hop_fields_stay_behind_and_http10_keep_alive_works() {
    if !peers(&["nginx", "curl"]) {
        return;
    }
    let dir = TempDir::new("http-hop");
    let up = reserve_port();
    // nginx adds its own `Connection: keep-alive`; these lines add fields that belong to
    // its connection with the proxy only.
    let mut nginx_proc = nginx(
        &dir,
        &format!(
            "server {{ listen 127.0.0.1:{up}; keepalive_requests 10000; \
             location / {{ add_header Connection \"x-private\"; add_header X-Private 1; \
             add_header Keep-Alive \"timeout=99\"; add_header Proxy-Connection close; \
             add_header X-Kept 2; return 200 \"hi\"; }} }}"
        ),
    );
    nginx_proc.wait_port(up);
    let (ok, direct, err) = curl(&["-si", &format!("http://127.0.0.1:{up}/")]);
    assert!(ok, "{err}");
    assert!(
        direct.to_ascii_lowercase().contains("x-private: 1"),
        "{direct}"
    );
    let (_fg, port) = proxy(&dir, up);
    let (ok, head, err) = curl(&["-si", &format!("http://127.0.0.1:{port}/")]);
    assert!(ok, "{err}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("x-kept: 2"), "{head}");
    for gone in [
        "x-private",
        "keep-alive: timeout",
        "proxy-connection",
        "connection:",
    ] {
        assert!(!lower.contains(gone), "{gone} in {head}");
    }
    // An HTTP/1.0 client asking for keep-alive is told so, and reuses the connection.
    let url = format!("http://127.0.0.1:{port}/");
    let (ok, out, err) = curl(&[
        "-v",
        "--http1.0",
        "-H",
        "Connection: keep-alive",
        &url,
        &url,
    ]);
    assert!(ok, "{err}");
    assert_eq!(out, "hihi");
    assert!(
        err.to_ascii_lowercase()
            .contains("< connection: keep-alive"),
        "{err}"
    );
    assert!(
        err.contains("Re-using existing connection") || err.contains("Reusing existing connection"),
        "{err}"
    );
}

fn raw(port: u16, request: &[u8]) -> String {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = c.write_all(request);
    let mut all = Vec::new();
    // The proxy answers and closes: read to the end.
    let _ = c.read_to_end(&mut all);
    String::from_utf8_lossy(&all).into_owned()
}

#[test]
fn smuggling_and_oversized_requests_get_their_status_and_a_closed_connection() {
    if !peers(&["nginx", "curl"]) {
        return;
    }
    let dir = TempDir::new("http-smuggle");
    let (_nginx, up) = nginx_echo(&dir);
    let (fg, port) = proxy(&dir, up);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"POST /hello HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /hello/smuggled HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(), "HTTP/1.1 400"),
        (b"POST /hello HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n".to_vec(), "HTTP/1.1 501"),
        (b"POST /hello HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab".to_vec(), "HTTP/1.1 400"),
        (format!("GET /hello HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n", "b".repeat(10_000)).into_bytes(), "HTTP/1.1 431"),
        (b"GET /hello HTTP/1.1\r\nHost: a\r\nX: a\r\n folded\r\n\r\n".to_vec(), "HTTP/1.1 400"),
    ];
    for (req, want) in cases {
        let got = raw(port, &req);
        assert!(
            got.starts_with(want),
            "{:?} -> {got:?}",
            String::from_utf8_lossy(&req[..40.min(req.len())])
        );
        assert!(!got.contains("smuggled"), "{got}");
        assert_eq!(
            got.matches("HTTP/1.1 ").count(),
            1,
            "one response, then the connection closes: {got}"
        );
    }
    // The proxy still serves others.
    let (ok, body, err) = curl(&[&format!("http://127.0.0.1:{port}/hello")]);
    assert!(ok && body == "hello GET /hello", "{err}");
    let stderr = fg.stop();
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn request_bodies_reach_the_upstream() {
    if !peers(&["nginx", "curl"]) {
        return;
    }
    let dir = TempDir::new("http-body");
    let (_nginx, up) = nginx_echo(&dir);
    let (_fg, port) = proxy(&dir, up);
    let body = "x".repeat(100_000);
    let (ok, got, err) = curl(&[
        "--data-binary",
        &body,
        &format!("http://127.0.0.1:{port}/echo"),
    ]);
    assert!(ok, "{err}");
    assert_eq!(got, "got 100000");
    let (ok, got, err) = curl(&[
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &body,
        &format!("http://127.0.0.1:{port}/echo"),
    ]);
    assert!(ok, "{err}");
    // nginx reads the chunked body and forwards it with a length.
    assert_eq!(got, "got 100000");
}

#[test]
fn slowloris_gets_408_after_the_header_timeout_and_others_are_served() {
    if !peers(&["nginx", "curl"]) {
        return;
    }
    let dir = TempDir::new("http-slowloris");
    let (_nginx, up) = nginx_echo(&dir);
    let port = reserve_port();
    let cfg = dir.write(
        "slow.yaml",
        &format!(
            "listeners:\n  - listen: 127.0.0.1:{port}\n    pipeline: main\npipelines:\n  main:\n    - demux-http: {{ pipeline: request, header_timeout: 1s, keepalive_timeout: 2s }}\n  request:\n    - mux-http: {{ pipeline: upstream }}\n  upstream:\n    - connect: {{ endpoints: 127.0.0.1:{up} }}\n"
        ),
    );
    let _fg = flowgate_run(&cfg, &[port]);
    let started = std::time::Instant::now();
    let mut slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // A head that trickles in and never ends.
    let writer = {
        let mut w = slow.try_clone().unwrap();
        std::thread::spawn(move || {
            for b in b"GET /hello HTTP/1.1\r\nHost: a\r\nX-Slow: " {
                if w.write_all(&[*b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    // Meanwhile another client is served.
    let (ok, body, err) = curl(&[&format!("http://127.0.0.1:{port}/hello")]);
    assert!(ok && body == "hello GET /hello", "{err}");
    let mut got = String::new();
    let _ = slow.read_to_string(&mut got);
    let took = started.elapsed();
    assert!(got.starts_with("HTTP/1.1 408"), "{got:?}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    let _ = writer.join();

    // An idle keep-alive connection is closed after the keep-alive timeout, without a response.
    let mut idle = TcpStream::connect(("127.0.0.1", port)).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = std::time::Instant::now();
    let mut got = Vec::new();
    let _ = idle.read_to_end(&mut got);
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

#[test]
fn routes_by_host_path_and_header_with_weighted_split_and_header_edits() {
    if !peers(&["curl"]) {
        return;
    }
    let dir = TempDir::new("http-route");
    let port = reserve_port();
    let cfg = dir.write(
        "route.yaml",
        &format!(
            r#"listeners:
  - listen: 127.0.0.1:{port}
    pipeline: main
pipelines:
  main:
    - demux-http: {{ pipeline: request }}
  request:
    - route:
        routes:
          - match: {{ host: "*.api.test" }}
            pipeline: api
          - match: {{ headers: {{ x-canary: "1" }} }}
            pipeline: canary
          - match: {{ path_prefix: /v1/, method: [GET] }}
            split: [{{ pipeline: a, weight: 1 }}, {{ pipeline: b, weight: 3 }}]
        default: not-found
    # After the route, the messages that pass are the responses.
    - headers: {{ response: {{ set: {{ x-served-by: flowgate }} }} }}
  api: [{{ respond: {{ body: api }} }}]
  canary: [{{ respond: {{ body: canary }} }}]
  a: [{{ respond: {{ body: a }} }}]
  b: [{{ respond: {{ body: b }} }}]
  not-found: [{{ respond: {{ status: 404, body: none }} }}]
"#
        ),
    );
    let (code, err) = flowgate_check(&cfg);
    assert_eq!(code, 0, "{err}");
    let _fg = flowgate_run(&cfg, &[port]);
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let (ok, body, _) = curl(&["-H", "Host: x.api.test", &url("/anything")]);
    assert!(ok && body == "api", "{body}");
    let (ok, body, _) = curl(&["-H", "x-canary: 1", &url("/v1/x")]);
    assert!(ok && body == "canary", "{body}");
    let (ok, body, _) = curl(&["-s", "-o", "/dev/null", "-w", "%{http_code}", &url("/v2/x")]);
    assert!(ok && body == "404", "{body}");
    let (_, body, _) = curl(&["-X", "POST", &url("/v1/x")]);
    assert_eq!(body, "none", "POST is not routed to the split");
    let (ok, head, _) = curl(&["-s", "-D", "-", "-o", "/dev/null", &url("/v1/x")]);
    assert!(
        ok && head.to_ascii_lowercase().contains("x-served-by: flowgate"),
        "{head}"
    );
    // The 1:3 split over 8 more requests (one keep-alive connection): exactly 2 a and 6 b.
    let urls: Vec<String> = (0..8).map(|_| url("/v1/x")).collect();
    let args: Vec<&str> = urls.iter().map(String::as_str).collect();
    let (ok, body, err) = curl(&args);
    assert!(ok, "{err}");
    // The earlier request took one pick too; 8 more cover two whole rotations of 4.
    let (a, b) = (body.matches('a').count(), body.matches('b').count());
    assert_eq!(a + b, 8, "{body}");
    assert_eq!((a, b), (2, 6), "{body}");
}

#[test]
fn rewrite_before_the_upstream_and_redirect() {
    if !peers(&["nginx", "curl"]) {
        return;
    }
    let dir = TempDir::new("http-rewrite");
    let (_nginx, up) = nginx_echo(&dir);
    let port = reserve_port();
    let cfg = dir.write(
        "rewrite.yaml",
        &format!(
            r#"listeners:
  - listen: 127.0.0.1:{port}
    pipeline: main
pipelines:
  main:
    - demux-http: {{ pipeline: request }}
  request:
    - route:
        routes:
          - match: {{ path_prefix: /old/ }}
            pipeline: moved
        default: proxied
  moved: [{{ redirect: {{ status: 308, scheme: https, path_prefix: {{ from: /old/, to: /new/ }} }} }}]
  proxied:
    - rewrite: {{ path_prefix: {{ from: /api/, to: /hello/ }} }}
    - mux-http: {{ pipeline: upstream }}
  upstream:
    - connect: {{ endpoints: 127.0.0.1:{up} }}
"#
        ),
    );
    let _fg = flowgate_run(&cfg, &[port]);
    let (ok, body, err) = curl(&[&format!("http://127.0.0.1:{port}/api/x?y=1")]);
    assert!(ok, "{err}");
    assert_eq!(body, "hello GET /hello/x?y=1");
    let (ok, out, err) = curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{redirect_url}",
        "-H",
        "Host: site.test",
        &format!("http://127.0.0.1:{port}/old/page?q"),
    ]);
    assert!(ok, "{err}");
    assert_eq!(out, "308 https://site.test/new/page?q");
}

#[test]
fn access_log_lines_in_common_and_json_formats() {
    if !peers(&["nginx", "curl"]) {
        return;
    }
    let dir = TempDir::new("http-access");
    let (_nginx, up) = nginx_echo(&dir);
    let (common, json, broken) = (reserve_port(), reserve_port(), reserve_port());
    let dead = reserve_port();
    let cfg = dir.write(
        "log.yaml",
        &format!(
            "listeners:\n  - listen: 127.0.0.1:{common}\n    pipeline: common\n  - listen: 127.0.0.1:{json}\n    pipeline: json\n  - listen: 127.0.0.1:{broken}\n    pipeline: broken\npipelines:\n  common:\n    - demux-http: {{ pipeline: request, access_log: common }}\n  json:\n    - demux-http: {{ pipeline: request, access_log: json }}\n  request:\n    - mux-http: {{ pipeline: upstream }}\n  upstream:\n    - connect: {{ endpoints: 127.0.0.1:{up} }}\n  broken:\n    - demux-http: {{ pipeline: dead, access_log: common }}\n  dead:\n    - mux-http: {{ pipeline: nowhere }}\n  nowhere:\n    - connect: {{ endpoints: 127.0.0.1:{dead} }}\n"
        ),
    );
    let fg = flowgate_run_log(&cfg, &[common, json, broken], "warn,flowgate::access=info");
    let (_, code, _) = curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://127.0.0.1:{broken}/down"),
    ]);
    assert_eq!(code, "502");
    let (ok, body, err) = curl(&[&format!("http://127.0.0.1:{common}/hello?a=1")]);
    assert!(ok && body == "hello GET /hello?a=1", "{err}");
    let (ok, _, err) = curl(&["-X", "POST", &format!("http://127.0.0.1:{json}/hello")]);
    assert!(ok, "{err}");
    let log = fg.stop();
    assert!(log.contains("127.0.0.1 - - ["), "{log}");
    assert!(log.contains("\"GET /hello?a=1 HTTP/1.1\" 200 20 "), "{log}");
    assert!(
        log.contains("\"GET /down HTTP/1.1\" 502 0 "),
        "failures are logged too: {log}"
    );
    let line = log
        .lines()
        .find(|l| l.contains("\"method\":\"POST\""))
        .unwrap_or_else(|| panic!("{log}"));
    let json_text = &line[line.find('{').unwrap()..];
    let v: serde_json::Value = serde_json::from_str(json_text).unwrap();
    assert_eq!(
        (
            v["path"].as_str(),
            v["status"].as_u64(),
            v["bytes"].as_u64()
        ),
        (Some("/hello"), Some(200), Some(17))
    );
}

#[test]
fn retries_idempotent_requests_past_a_dead_upstream() {
    if !peers(&["nginx", "curl"]) {
        return;
    }
    let dir = TempDir::new("http-retry");
    let (_nginx, up) = nginx_echo(&dir);
    let dead = reserve_port();
    let port = reserve_port();
    let cfg = dir.write(
        "retry.yaml",
        &format!(
            "listeners:\n  - listen: 127.0.0.1:{port}\n    pipeline: main\npipelines:\n  main:\n    - demux-http: {{ pipeline: request }}\n  request:\n    - retry: {{ pipeline: call, tries: 2, backoff: 1ms }}\n  call:\n    - mux-http: {{ pipeline: upstream, max_requests: 1 }}\n  upstream:\n    - connect:\n        endpoints: [127.0.0.1:{dead}, 127.0.0.1:{up}]\n        balance: {{ algorithm: {{ type: round_robin }} }}\n"
        ),
    );
    let _fg = flowgate_run(&cfg, &[port]);
    // One request per upstream connection (max_requests: 1), so round robin alternates the
    // dead and the live upstream: every GET succeeds on its first or second try.
    for i in 0..10 {
        let (ok, body, err) = curl(&[&format!("http://127.0.0.1:{port}/hello/{i}")]);
        assert!(
            ok && body == format!("hello GET /hello/{i}"),
            "{i}: {body} {err}"
        );
    }
    // POST is not idempotent: it is not retried, so some hit the dead upstream and get 502.
    let codes: Vec<String> = (0..10)
        .map(|_| {
            curl(&[
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-X",
                "POST",
                &format!("http://127.0.0.1:{port}/hello"),
            ])
            .1
        })
        .collect();
    assert!(
        codes.iter().any(|c| c == "502") && codes.iter().any(|c| c == "200"),
        "{codes:?}"
    );
}

#[test]
fn cors_preflight_and_response_headers() {
    if !peers(&["curl"]) {
        return;
    }
    let dir = TempDir::new("http-cors");
    let port = reserve_port();
    let cfg = dir.write(
        "cors.yaml",
        &format!(
            "listeners:\n  - listen: 127.0.0.1:{port}\n    pipeline: main\npipelines:\n  main:\n    - demux-http: {{ pipeline: request }}\n  request:\n    - cors: {{ pipeline: app, allow_origins: [\"https://a.test\"], allow_methods: [GET, PUT], allow_headers: [content-type], max_age: 60s }}\n  app:\n    - respond: {{ body: app }}\n"
        ),
    );
    let _fg = flowgate_run(&cfg, &[port]);
    let url = format!("http://127.0.0.1:{port}/x");
    let head = |args: &[&str]| {
        let (ok, out, err) =
            curl(&[&["-s", "-D", "-", "-o", "/dev/null"], args, &[url.as_str()]].concat());
        assert!(ok, "{err}");
        out.to_ascii_lowercase()
    };
    let pre = head(&[
        "-X",
        "OPTIONS",
        "-H",
        "Origin: https://a.test",
        "-H",
        "Access-Control-Request-Method: PUT",
    ]);
    assert!(pre.starts_with("http/1.1 204"), "{pre}");
    assert!(
        pre.contains("access-control-allow-origin: https://a.test"),
        "{pre}"
    );
    assert!(
        pre.contains("access-control-allow-methods: get, put"),
        "{pre}"
    );
    assert!(
        pre.contains("access-control-allow-headers: content-type"),
        "{pre}"
    );
    assert!(pre.contains("access-control-max-age: 60"), "{pre}");
    let refused = head(&[
        "-X",
        "OPTIONS",
        "-H",
        "Origin: https://b.test",
        "-H",
        "Access-Control-Request-Method: PUT",
    ]);
    assert!(refused.starts_with("http/1.1 403"), "{refused}");
    let bad_method = head(&[
        "-X",
        "OPTIONS",
        "-H",
        "Origin: https://a.test",
        "-H",
        "Access-Control-Request-Method: DELETE",
    ]);
    assert!(bad_method.starts_with("http/1.1 403"), "{bad_method}");
    let actual = head(&["-H", "Origin: https://a.test"]);
    assert!(
        actual.starts_with("http/1.1 200")
            && actual.contains("access-control-allow-origin: https://a.test")
            && actual.contains("vary: origin"),
        "{actual}"
    );
    let other = head(&["-H", "Origin: https://b.test"]);
    assert!(
        other.starts_with("http/1.1 200") && !other.contains("access-control-allow-origin"),
        "{other}"
    );
}

#[test]
fn a_failed_request_is_answered_and_the_connection_stays_usable() {
    if !peers(&["nginx", "curl"]) {
        return;
    }
    let dir = TempDir::new("http-keep");
    let (_nginx, up) = nginx_echo(&dir);
    let dead = reserve_port();
    let port = reserve_port();
    let cfg = dir.write(
        "keep.yaml",
        &format!(
            "listeners:\n  - listen: 127.0.0.1:{port}\n    pipeline: main\npipelines:\n  main:\n    - demux-http: {{ pipeline: request }}\n  request:\n    - route:\n        routes:\n          - match: {{ path_prefix: /down }}\n            pipeline: down\n        default: up\n  down:\n    - mux-http: {{ pipeline: nowhere }}\n  nowhere:\n    - connect: {{ endpoints: 127.0.0.1:{dead} }}\n  up:\n    - mux-http: {{ pipeline: upstream }}\n  upstream:\n    - connect: {{ endpoints: 127.0.0.1:{up} }}\n"
        ),
    );
    let _fg = flowgate_run(&cfg, &[port]);
    let (ok, out, err) = curl(&[
        "-v",
        "-w",
        "[%{http_code}]",
        &format!("http://127.0.0.1:{port}/down"),
        &format!("http://127.0.0.1:{port}/hello"),
    ]);
    assert!(ok, "{err}");
    assert_eq!(out, "[502]hello GET /hello[200]");
    assert!(
        err.contains("Re-using existing connection") || err.contains("Reusing existing connection"),
        "{err}"
    );
}
