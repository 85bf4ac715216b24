//! HTTP/2 through the `flowgate` binary: `demux-http` serves h2c (prior knowledge) and h2
//! over TLS (ALPN) to curl, answered by `respond` and by a real nginx through `mux-http`;
//! several streams multiplexed on one connection; request bodies uploaded with and
//! without a length; HTTP/1.1 still served on the same listeners.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::*;

fn nginx_upstream(dir: &TempDir) -> (Proc, u16) {
    let port = reserve_port();
    let mut p = nginx(
        dir,
        &format!(
            "server {{ listen 127.0.0.1:{port}; keepalive_requests 10000; client_max_body_size 16m; \
             location /hello {{ return 200 \"hello $request_method $request_uri\"; }} \
             location /echo {{ client_body_buffer_size 4m; \
             proxy_pass http://127.0.0.1:{port}/sink; }} \
             location /sink {{ return 200 \"got $content_length\"; }} \
             location /small {{ client_max_body_size 1k; return 200 \"small\"; }} }}"
        ),
    );
    p.wait_port(port);
    (p, port)
}

/// `main` on plain TCP, `tls` (ALPN h2 and http/1.1) on a second port; `/static` is answered
/// by `respond`, the rest goes to nginx.
fn flowgate(
    dir: &TempDir,
    nginx_port: u16,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> (Proc, u16, u16) {
    let port = reserve_port();
    let tls_port = reserve_port();
    let cfg = dir.write(
        "http2.yaml",
        &format!(
            "listeners:
  - listen: 127.0.0.1:{port}
    pipeline: main
  - listen: 127.0.0.1:{tls_port}
    pipeline: tls
pipelines:
  tls:
    - accept-tls:
        pipeline: main
        certificates: [{{ cert: {cert}, key: {key} }}]
        alpn: [h2, http/1.1]
  main:
    - demux-http: {{ pipeline: request, http2: {{ max_concurrent_streams: 50 }} }}
  request:
    - route:
        routes:
          - match: {{ path_prefix: /static }}
            pipeline: static
        default: proxy
  static:
    - respond: {{ status: 200, body: \"static hello\\n\" }}
  proxy:
    - mux-http: {{ pipeline: upstream }}
  upstream:
    - connect: {{ endpoints: 127.0.0.1:{nginx_port} }}
",
            cert = cert.display(),
            key = key.display(),
        ),
    );
    (flowgate_run(&cfg, &[port, tls_port]), port, tls_port)
}

struct Setup {
    _nginx: Proc,
    _fg: Proc,
    port: u16,
    tls_port: u16,
    ca: std::path::PathBuf,
    dir: TempDir,
}

fn setup(tag: &str) -> Setup {
    let dir = TempDir::new(tag);
    let pki = OpensslPki::new(&dir, "h2");
    let (cert, key) = pki.leaf("server", "localhost", false);
    let ca = pki.ca();
    let (nginx, up) = nginx_upstream(&dir);
    let (fg, port, tls_port) = flowgate(&dir, up, &cert, &key);
    Setup {
        _nginx: nginx,
        _fg: fg,
        port,
        tls_port,
        ca,
        dir,
    }
}

/// curl's body followed by a line with the HTTP version it used.
fn curl_v(args: &[&str]) -> (String, String) {
    let mut all = vec!["-w", "\n%{http_version}"];
    all.extend_from_slice(args);
    let (ok, out, err) = curl(&all);
    assert!(ok, "curl {args:?}: {err}");
    let (body, version) = out.rsplit_once('\n').unwrap();
    (body.to_string(), version.to_string())
}

#[test]
fn h2c_prior_knowledge_to_respond_and_to_nginx() {
    if !peers(&["nginx", "curl", "openssl"]) {
        return;
    }
    let s = setup("h2c");
    let base = format!("http://127.0.0.1:{}", s.port);
    let (body, v) = curl_v(&["--http2-prior-knowledge", &format!("{base}/static")]);
    assert_eq!((body.as_str(), v.as_str()), ("static hello\n", "2"));
    let (body, v) = curl_v(&["--http2-prior-knowledge", &format!("{base}/hello?x=1")]);
    assert_eq!((body.as_str(), v.as_str()), ("hello GET /hello?x=1", "2"));
    // The same listener still speaks HTTP/1.1 to a client that does not know better.
    let (body, v) = curl_v(&["--http1.1", &format!("{base}/hello")]);
    assert_eq!((body.as_str(), v.as_str()), ("hello GET /hello", "1.1"));
}

#[test]
fn h2_over_tls_with_alpn_and_http1_on_the_same_listener() {
    if !peers(&["nginx", "curl", "openssl"]) {
        return;
    }
    let s = setup("h2-tls");
    let host = format!("localhost:{}", s.tls_port);
    let resolve = format!("{host}:127.0.0.1");
    let ca = s.ca.display().to_string();
    let get = |version: &str, path: &str| {
        let url = format!("https://{host}{path}");
        curl_v(&[version, "--cacert", &ca, "--resolve", &resolve, &url])
    };
    let (body, v) = get("--http2", "/hello");
    assert_eq!((body.as_str(), v.as_str()), ("hello GET /hello", "2"));
    let (body, v) = get("--http2", "/static");
    assert_eq!((body.as_str(), v.as_str()), ("static hello\n", "2"));
    // A client that offers only http/1.1 in ALPN gets HTTP/1.1.
    let (body, v) = get("--http1.1", "/hello");
    assert_eq!((body.as_str(), v.as_str()), ("hello GET /hello", "1.1"));
}

#[test]
fn many_streams_multiplexed_on_one_connection() {
    if !peers(&["nginx", "curl", "openssl", "nghttp"]) {
        return;
    }
    let s = setup("h2-mux");
    let base = format!("http://127.0.0.1:{}", s.port);
    // nghttp opens one connection and sends every request at once, as concurrent streams
    // (curl 7.88 fails to reuse an h2c prior-knowledge connection — against nginx too — so
    // it serves for single requests only).
    let urls: Vec<String> = (0..30)
        .map(|i| {
            if i % 3 == 0 {
                format!("{base}/static?{i}")
            } else {
                format!("{base}/hello/{i}")
            }
        })
        .collect();
    let out = std::process::Command::new("nghttp")
        .args(["-n", "-s", "-t", "10"])
        .args(&urls)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The statistics table: one row per stream, `id responseEnd requestStart process code
    // size path`.
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|w| w.len() == 7 && w[0].parse::<u32>().is_ok())
        .collect();
    assert_eq!(rows.len(), 30, "{text}");
    assert!(rows.iter().all(|w| w[4] == "200"), "{text}");
    for i in 0..30 {
        let path = if i % 3 == 0 {
            format!("/static?{i}")
        } else {
            format!("/hello/{i}")
        };
        assert!(rows.iter().any(|w| w[6] == path), "{path}: {text}");
    }
    // The bodies, again all at once on one connection.
    let out = std::process::Command::new("nghttp")
        .args(["-t", "10"])
        .args(&urls)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for i in (0..30).filter(|i| i % 3 != 0) {
        assert!(
            text.contains(&format!("hello GET /hello/{i}")),
            "{i}: {text}"
        );
    }
    assert_eq!(text.matches("static hello\n").count(), 10, "{text}");
}

#[test]
fn request_bodies_are_uploaded_with_and_without_a_length() {
    if !peers(&["nginx", "curl", "openssl", "sh"]) {
        return;
    }
    let s = setup("h2-upload");
    let base = format!("http://127.0.0.1:{}", s.port);
    // 3 MiB: more than the stream window (1 MiB), so flow control has to turn over.
    let payload: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
    let file = s.dir.path("payload.bin");
    std::fs::write(&file, &payload).unwrap();
    let at = format!("@{}", file.display());
    let (body, v) = curl_v(&[
        "--http2-prior-knowledge",
        "--data-binary",
        &at,
        &format!("{base}/echo"),
    ]);
    assert_eq!((body.as_str(), v.as_str()), ("got 3145728", "2"));
    // No Content-Length on the HTTP/2 side (`-T` from a pipe): the HTTP/1 upstream gets it
    // chunked, nginx reassembles it and its own proxy hop reports the length.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cat {} | curl -sS --max-time 10 --http2-prior-knowledge -T - -X POST -w '\\n%{{http_version}}' {base}/echo",
            file.display()
        ))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text, "got 3145728\n2");
    // An upstream that refuses the body early: its answer reaches the client.
    let (ok, code, err) = curl(&[
        "--http2-prior-knowledge",
        "--data-binary",
        &at,
        "-o",
        "/dev/null",
        "-w",
        "%{response_code} %{http_version}",
        &format!("{base}/small"),
    ]);
    assert!(ok, "{err}");
    assert_eq!(code, "413 2");
    // Over TLS too.
    let host = format!("localhost:{}", s.tls_port);
    let (body, v) = curl_v(&[
        "--http2",
        "--cacert",
        &s.ca.display().to_string(),
        "--resolve",
        &format!("{host}:127.0.0.1"),
        "--data-binary",
        &at,
        &format!("https://{host}/echo"),
    ]);
    assert_eq!((body.as_str(), v.as_str()), ("got 3145728", "2"));
}

#[test]
fn rapid_reset_flood_gets_goaway_while_another_client_is_served() {
    if !peers(&["nginx", "curl", "openssl"]) || !python_module("h2", "h2") {
        return;
    }
    let s = setup("h2-reset");
    let port = s.port;
    let base = format!("http://127.0.0.1:{port}");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The well-behaved client: one request after another, each on a new connection.
    let victim = {
        let stop = stop.clone();
        let url = format!("{base}/static");
        std::thread::spawn(move || {
            let mut served = 0;
            let mut slowest = std::time::Duration::ZERO;
            for _ in 0..2000 {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let t = std::time::Instant::now();
                let (ok, body, err) = curl(&["--http2-prior-knowledge", &url]);
                assert!(ok && body == "static hello\n", "{err}");
                slowest = slowest.max(t.elapsed());
                served += 1;
            }
            (served, slowest)
        })
    };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/h2_rapid_reset.py");
    for _ in 0..20 {
        let out = std::process::Command::new("python3")
            .args([script, &port.to_string(), "5000", "5"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        eprintln!("flood: {v}");
        // GOAWAY ENHANCE_YOUR_CALM (0xb), and the connection closed, long before 5000.
        assert_eq!(v["goaway"], 11, "{v}");
        assert_eq!(v["closed"], true, "{v}");
        assert!(v["sent"].as_u64().unwrap() < 5000, "{v}");
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (served, slowest) = victim.join().unwrap();
    eprintln!("served {served} requests during 20 floods, the slowest in {slowest:?}");
    assert!(served > 0);
    assert!(
        slowest < std::time::Duration::from_secs(2),
        "a request took {slowest:?} during the flood"
    );
    // And after it.
    let (body, v) = curl_v(&["--http2-prior-knowledge", &format!("{base}/hello")]);
    assert_eq!((body.as_str(), v.as_str()), ("hello GET /hello", "2"));
}

/// An HTTP/2 frame on stream `id`.
fn h2_frame(kind: u8, flags: u8, id: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut v = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    v.extend_from_slice(&id.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

#[test]
fn an_http2_header_block_left_open_is_closed_after_the_header_timeout() {
    if !peers(&["curl"]) {
        return;
    }
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    let dir = TempDir::new("h2-header-timeout");
    let port = reserve_port();
    let cfg = dir.write(
        "h2.yaml",
        &format!(
            "listeners:\n  - listen: 127.0.0.1:{port}\n    pipeline: main\npipelines:\n  main:\n    - demux-http: {{ pipeline: request, header_timeout: 1s, keepalive_timeout: 30s }}\n  request:\n    - respond: {{ status: 200, body: \"ok\" }}\n"
        ),
    );
    let fg = flowgate_run(&cfg, &[port]);
    let open = |first: &[u8]| {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend(h2_frame(0x4, 0, 0, &[])); // SETTINGS
        hello.extend_from_slice(first);
        c.write_all(&hello).unwrap();
        c
    };
    // :method GET, :scheme http, :path /, :authority a.
    let block = [0x82, 0x86, 0x84, 0x41, 0x01, b'a'];
    // HEADERS with END_STREAM and END_HEADERS: a whole request, then the client idles.
    let mut whole = open(&h2_frame(0x1, 0x5, 1, &block));
    // HEADERS without END_HEADERS, and never the CONTINUATION that would end the block.
    let started = Instant::now();
    let mut partial = open(&h2_frame(0x1, 0x1, 1, &block[..3]));
    partial
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut sink = Vec::new();
    let _ = partial.read_to_end(&mut sink);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "the open header block was closed after {took:?}"
    );
    // The client with a whole request got its answer and is still connected, idle for
    // longer than the header timeout.
    whole
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match whole.read(&mut buf) {
            Ok(0) => panic!("the idle client with a whole request was closed"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) if Instant::now() >= deadline => break,
            Err(_) => {}
        }
    }
    // Its response: a HEADERS frame (type 1) on stream 1 and the body.
    assert!(
        got.windows(4)
            .any(|w| w == [0x01, 0x04, 0x00, 0x00] || w == [0x01, 0x05, 0x00, 0x00]),
        "no response HEADERS: {got:?}"
    );
    assert!(got.ends_with(b"ok"), "{got:?}");
    let (body, v) = curl_v(&[
        "--http2-prior-knowledge",
        &format!("http://127.0.0.1:{port}/"),
    ]);
    assert_eq!((body.as_str(), v.as_str()), ("ok", "2"));
    drop(whole);
    let stderr = fg.stop();
    assert!(!stderr.contains("panicked"), "{stderr}");
}
