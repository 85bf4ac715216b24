//! Interim (1xx) responses through the `flowgate` and `flowgate-gateway` binaries: a 103
//! Early Hints from an upstream reaches the client before the final response, over
//! HTTP/1.1 and HTTP/2 on both sides, and never reaches an HTTP/1.0 client (RFC 9110
//! §15.2); `Expect: 100-continue` with a large body still works through the proxy.
//!
//! Upstreams: a raw HTTP/1.1 server in this file (it writes the 103 bytes itself, and can
//! hold the final response until the test saw the 103), the python-h2 server of
//! `h2_reset_server.py` (HTTP/2), nginx (100 Continue). Clients: raw sockets, curl
//! (HTTP/1.1, HTTP/1.0, h2c), nghttp.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use common::*;

const H2_SERVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/h2_reset_server.py");

const HINTS: &str = "HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n";

/// A raw HTTP/1.1 upstream on a port bound here (port 0). For each request (head, and a
/// Content-Length body) it answers by path:
/// - `/hold`: `103 Early Hints` with a Link field, then waits for [`RawUpstream::go`]
///   before `200 ok`;
/// - `/hints-then-close`: the 103, then it closes the connection;
/// - anything else: the 103, then `200 ok`.
///
/// It stops accepting when dropped.
struct RawUpstream {
    port: u16,
    go: mpsc::Sender<()>,
    stop: Arc<AtomicBool>,
}

impl RawUpstream {
    fn start() -> RawUpstream {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        l.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (go, held) = mpsc::channel::<()>();
        let held = Arc::new(Mutex::new(held));
        let s = stop.clone();
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((c, _)) => {
                        let held = held.clone();
                        std::thread::spawn(move || serve(c, &held));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        RawUpstream { port, go, stop }
    }

    /// Lets a held `/hold` response go on.
    fn release(&self) {
        self.go.send(()).unwrap();
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn serve(mut c: TcpStream, held: &Mutex<mpsc::Receiver<()>>) {
    c.set_nonblocking(false).unwrap();
    // The 103 and the final response are separate writes: without this, Nagle would hold
    // the second one back for the proxy's delayed ACK.
    c.set_nodelay(true).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match c.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let path = head.split(' ').nth(1).unwrap_or("/").to_string();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        while buf.len() < head_end + length {
            match c.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head_end + length);
        if c.write_all(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
            .is_err()
        {
            return;
        }
        match path.as_str() {
            "/hints-then-close" => return,
            "/hold" => {
                let _ = held.lock().unwrap().recv_timeout(Duration::from_secs(10));
            }
            _ => {}
        }
        if c.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .is_err()
        {
            return;
        }
    }
}

/// `flowgate run` on a free port: demux-http → mux-http (with `mux_extra` options) →
/// connect to `up`.
fn proxy(dir: &TempDir, up: u16, mux_extra: &str) -> (Proc, u16) {
    let port = reserve_port();
    let cfg = dir.write(
        "interim.yaml",
        &format!(
            "listeners:\n  - listen: 127.0.0.1:{port}\n    pipeline: main\npipelines:\n  main:\n    - demux-http: {{ pipeline: request }}\n  request:\n    - mux-http: {{ pipeline: upstream{mux_extra} }}\n  upstream:\n    - connect: {{ endpoints: 127.0.0.1:{up} }}\n"
        ),
    );
    (flowgate_run(&cfg, &[port]), port)
}

/// Reads from `c` until `want` has arrived (the read timeout bounds the wait); returns all
/// that was read.
fn read_until(c: &mut TcpStream, want: &str) -> String {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(want) {
        match c.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!(
                "waiting for {want:?}: {e}; got {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Sends an HTTP/1.0 request and reads the whole answer (the connection closes after it).
fn http10(port: u16, path: &str) -> String {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(c, "GET {path} HTTP/1.0\r\nHost: a\r\n\r\n").unwrap();
    let mut all = String::new();
    c.read_to_string(&mut all).unwrap();
    all
}

/// The `:status` values nghttp printed for the received HEADERS frames, in order.
fn nghttp_statuses(url: &str) -> (Vec<u16>, String) {
    let out = Command::new("nghttp")
        .args(["-v", "-t", "10", url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let statuses = text
        .lines()
        .filter_map(|l| l.split(":status: ").nth(1))
        .map(|s| s.trim().parse().unwrap())
        .collect();
    (statuses, text)
}

/// The response status lines curl -v printed (`< HTTP/…`), in order, and the body.
fn curl_statuses(args: &[&str]) -> (Vec<String>, String) {
    let mut all = vec!["-v"];
    all.extend_from_slice(args);
    let (ok, body, err) = curl(&all);
    assert!(ok, "{err}");
    let lines = err
        .lines()
        .filter(|l| l.starts_with("< HTTP/"))
        .map(|l| l.trim_start_matches("< ").trim().to_string())
        .collect();
    assert!(
        err.contains("< link: </a.css>; rel=preload"),
        "the 103's Link field: {err}"
    );
    (lines, body)
}

#[test]
fn early_hints_from_an_http1_upstream_reach_http1_and_http2_clients() {
    if !peers(&["curl", "nghttp"]) {
        return;
    }
    let up = RawUpstream::start();
    let dir = TempDir::new("interim-h1");
    let (_fg, port) = proxy(&dir, up.port, "");

    // The 103 reaches the client while the upstream still holds the final response.
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"GET /hold HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let got = read_until(&mut c, "\r\n\r\n");
    assert_eq!(got, HINTS, "the interim response, alone");
    up.release();
    let got = read_until(&mut c, "\r\n\r\nok");
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    // An upstream that fails after its 103: the client still gets a final 502, and the
    // keep-alive connection serves the next request.
    c.write_all(b"GET /hints-then-close HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let got = read_until(&mut c, "content-length: 0\r\n\r\n");
    assert!(got.starts_with(HINTS), "{got}");
    assert!(got[HINTS.len()..].starts_with("HTTP/1.1 502 "), "{got}");
    c.write_all(b"GET /again HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let got = read_until(&mut c, "\r\n\r\nok");
    assert!(
        got.starts_with(HINTS) && got[HINTS.len()..].starts_with("HTTP/1.1 200 OK\r\n"),
        "{got}"
    );

    let url = format!("http://127.0.0.1:{port}/hints");
    // curl over HTTP/1.1 and h2c.
    let (lines, body) = curl_statuses(&[&url]);
    assert_eq!(lines, ["HTTP/1.1 103 Early Hints", "HTTP/1.1 200 OK"]);
    assert_eq!(body, "ok");
    let (lines, body) = curl_statuses(&["--http2-prior-knowledge", &url]);
    assert_eq!(lines, ["HTTP/2 103", "HTTP/2 200"]);
    assert_eq!(body, "ok");
    // nghttp: the 103 is a HEADERS frame of its own, before the final one.
    let (statuses, text) = nghttp_statuses(&url);
    assert_eq!(statuses, [103, 200], "{text}");
    assert!(text.contains("link: </a.css>; rel=preload"), "{text}");
    // No 1xx for an HTTP/1.0 client.
    let all = http10(port, "/hints");
    assert!(all.starts_with("HTTP/1.1 200 OK\r\n"), "{all}");
    assert!(!all.contains("103"), "{all}");
    let (ok, _, err) = curl(&["-v", "--http1.0", &url]);
    assert!(
        ok && !err.contains("103") && err.contains("< HTTP/1.1 200 OK"),
        "{err}"
    );
}

#[test]
fn early_hints_from_an_http2_upstream_reach_http1_and_http2_clients() {
    if !peers(&["curl", "nghttp"]) || !python_module("h2", "h2") {
        return;
    }
    let up = reserve_port();
    let _h2 = daemon(
        Command::new("python3").arg(H2_SERVER).arg(up.to_string()),
        "h2-server",
    );
    wait_port(up);
    let dir = TempDir::new("interim-h2");
    let (_fg, port) = proxy(&dir, up, ", protocol: http2");
    let url = format!("http://127.0.0.1:{port}/hints");
    let (lines, body) = curl_statuses(&[&url]);
    assert_eq!(lines, ["HTTP/1.1 103 Early Hints", "HTTP/1.1 200 OK"]);
    assert_eq!(body, "/hints");
    let (lines, _) = curl_statuses(&["--http2-prior-knowledge", &url]);
    assert_eq!(lines, ["HTTP/2 103", "HTTP/2 200"]);
    let (statuses, text) = nghttp_statuses(&url);
    assert_eq!(statuses, [103, 200], "{text}");
    assert!(text.contains("link: </a.css>; rel=preload"), "{text}");
    let all = http10(port, "/hints");
    assert!(all.starts_with("HTTP/1.1 200 OK\r\n"), "{all}");
    assert!(!all.contains("103"), "{all}");
}

#[test]
fn expect_100_continue_with_a_large_body_through_the_proxy_to_nginx() {
    if !peers(&["nginx", "curl"]) {
        return;
    }
    let dir = TempDir::new("interim-expect");
    let up = reserve_port();
    let _nginx = nginx(
        &dir,
        &format!(
            "server {{ listen 127.0.0.1:{up}; client_max_body_size 64m; \
             location /echo {{ client_body_buffer_size 1m; proxy_pass http://127.0.0.1:{up}/sink; }} \
             location /sink {{ return 200 \"got $content_length\"; }} }}"
        ),
    );
    wait_port(up);
    let (_fg, port) = proxy(&dir, up, "");
    let body = dir.path("body.bin");
    let payload: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&body, &payload).unwrap();
    let data = format!("@{}", body.display());
    let url = format!("http://127.0.0.1:{port}/echo");
    for version in ["--http1.1", "--http2-prior-knowledge"] {
        let (ok, out, err) = curl(&[
            "-v",
            version,
            "-H",
            "Expect: 100-continue",
            "--data-binary",
            &data,
            &url,
        ]);
        assert!(ok, "{err}");
        assert_eq!(out, "got 5000000", "{err}");
        // nginx's 100 Continue is passed on before the final response.
        let statuses: Vec<&str> = err.lines().filter(|l| l.starts_with("< HTTP/")).collect();
        assert_eq!(statuses.len(), 2, "{err}");
        assert!(statuses[0].contains(" 100"), "{err}");
        assert!(statuses[1].contains(" 200"), "{err}");
    }
}

#[test]
fn early_hints_pass_the_gateways_retry_and_balancer_and_the_log_shows_the_final_status() {
    if !peers(&["curl"]) {
        return;
    }
    let up = RawUpstream::start();
    let dir = TempDir::new("interim-gw");
    let port = reserve_port();
    let cfg = dir.write(
        "gateway.yaml",
        &format!(
            "listeners:\n  - address: 127.0.0.1:{port}\n    access_log: common\nroutes:\n  - proxy: {{ backend: app }}\nbackends:\n  - name: app\n    endpoints: [{{ address: 127.0.0.1:{} }}]\n    retries: 1\n",
            up.port
        ),
    );
    let gw = gateway_run_log(&cfg, port, "warn,flowgate::access=info");
    let url = format!("http://127.0.0.1:{port}/hints");
    let (lines, body) = curl_statuses(&[&url]);
    assert_eq!(lines, ["HTTP/1.1 103 Early Hints", "HTTP/1.1 200 OK"]);
    assert_eq!(body, "ok");
    let (lines, _) = curl_statuses(&["--http2-prior-knowledge", &url]);
    assert_eq!(lines, ["HTTP/2 103", "HTTP/2 200"]);
    let log = gw.stop();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("GET /hints")).collect();
    assert_eq!(lines.len(), 2, "{log}");
    for l in lines {
        assert!(
            l.contains("\" 200 2 "),
            "the final status and body size: {l}"
        );
    }
}
