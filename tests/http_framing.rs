//! What goes upstream is what the proxy parsed, not the client's spelling: requests with a
//! `Content-Length` written with leading zeros, or an odd `Transfer-Encoding` spelling and
//! chunk extensions, reach an upstream that records the raw bytes it receives in canonical
//! form, through both `flowgate run` and `flowgate-gateway`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

use std::sync::mpsc;
use std::time::Duration;

use common::*;

/// An HTTP/1.1 upstream that sends every request it receives, as raw bytes, down a channel
/// and answers `200 ok`.
struct Recorder {
    port: u16,
    requests: mpsc::Receiver<Vec<u8>>,
}

impl Recorder {
    fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, requests) = mpsc::channel();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let tx = tx.clone();
                std::thread::spawn(move || serve(conn, &tx));
            }
        });
        Recorder { port, requests }
    }

    fn next(&self) -> String {
        let raw = self
            .requests
            .recv_timeout(Duration::from_secs(10))
            .expect("the upstream got no request");
        String::from_utf8(raw).unwrap()
    }
}

/// Reads requests framed by a lower-case `content-length` or `transfer-encoding: chunked`
/// (the only spellings the proxy may send) and answers each.
fn serve(mut conn: TcpStream, tx: &mpsc::Sender<Vec<u8>>) {
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = Vec::new();
    loop {
        let Some(end) = find(&buf, b"\r\n\r\n").map(|i| i + 4) else {
            if !read_more(&mut conn, &mut buf) {
                return;
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        let total = if let Some(n) = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
        {
            end + n.trim().parse::<usize>().unwrap()
        } else if head.contains("\r\ntransfer-encoding: chunked\r\n") {
            loop {
                if let Some(i) = find(&buf[end..], b"\r\n0\r\n\r\n") {
                    break end + i + 7;
                }
                if !read_more(&mut conn, &mut buf) {
                    return;
                }
            }
        } else {
            end
        };
        while buf.len() < total {
            if !read_more(&mut conn, &mut buf) {
                return;
            }
        }
        let request: Vec<u8> = buf.drain(..total).collect();
        let _ = tx.send(request);
        if conn
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .is_err()
        {
            return;
        }
    }
}

fn read_more(conn: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    match conn.read(&mut chunk) {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Sends `request` on a fresh connection and returns the response head line.
fn send(port: u16, request: &[u8]) -> String {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(request).unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    while find(&got, b"\r\n\r\nok").is_none() {
        match c.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&got)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

/// The requests every proxy is checked with, each with what must reach the upstream.
fn check_canonical_framing(port: u16, up: &Recorder) {
    let body = "b".repeat(300);
    // A lenient upstream reading `0300` as octal (192) would take the rest as a request.
    let req = format!("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 0300\r\n\r\n{body}");
    assert_eq!(send(port, req.as_bytes()), "HTTP/1.1 200 OK");
    let got = up.next();
    assert!(got.contains("\r\ncontent-length: 300\r\n"), "{got}");
    assert!(!got.to_ascii_lowercase().contains("0300"), "{got}");
    assert!(got.ends_with(&format!("\r\n\r\n{body}")), "{got}");

    // Upper case and spaces in Transfer-Encoding, chunk extensions and upper-case chunk
    // sizes: the upstream gets plain `chunked` and plain chunks.
    let req = b"POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:  Chunked \r\n\r\n5;ext=\"x\"\r\nhello\r\nA ; a=b\r\n0123456789\r\n0;last\r\n\r\n";
    assert_eq!(send(port, req), "HTTP/1.1 200 OK");
    let got = up.next();
    assert!(got.contains("\r\ntransfer-encoding: chunked\r\n"), "{got}");
    assert!(!got.contains("Chunked") && !got.contains(';'), "{got}");
    assert!(
        got.ends_with("\r\n\r\n5\r\nhello\r\na\r\n0123456789\r\n0\r\n\r\n"),
        "{got}"
    );

    // `Content-Length: 000` is an empty body, sent as `0`.
    let req = b"POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 000\r\n\r\n";
    assert_eq!(send(port, req), "HTTP/1.1 200 OK");
    let got = up.next();
    assert!(
        got.contains("\r\ncontent-length: 0\r\n") && got.ends_with("\r\n\r\n"),
        "{got}"
    );
}

#[test]
fn flowgate_run_forwards_framing_fields_in_canonical_form() {
    let up = Recorder::start();
    let dir = TempDir::new("framing-run");
    let port = reserve_port();
    let cfg = dir.write(
        "http.yaml",
        &format!(
            "listeners:\n  - listen: 127.0.0.1:{port}\n    pipeline: main\npipelines:\n  main:\n    - demux-http: {{ pipeline: request }}\n  request:\n    - mux-http: {{ pipeline: upstream }}\n  upstream:\n    - connect: {{ endpoints: 127.0.0.1:{} }}\n",
            up.port
        ),
    );
    let fg = flowgate_run(&cfg, &[port]);
    check_canonical_framing(port, &up);
    let stderr = fg.stop();
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn flowgate_gateway_forwards_framing_fields_in_canonical_form() {
    let up = Recorder::start();
    let dir = TempDir::new("framing-gw");
    let port = reserve_port();
    let cfg = dir.write(
        "gateway.yaml",
        &format!(
            "listeners:\n  - address: 127.0.0.1:{port}\nroutes:\n  - proxy: {{ backend: app }}\nbackends:\n  - name: app\n    endpoints: [{{ address: 127.0.0.1:{} }}]\n",
            up.port
        ),
    );
    let gw = gateway_run(&cfg, port);
    check_canonical_framing(port, &up);
    let stderr = gw.stop();
    assert!(!stderr.contains("panicked"), "{stderr}");
}
