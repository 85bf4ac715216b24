//! Two `flowgate run` processes as a sidecar pair — client side `demux-http → mux-http →
//! connect-tls (client certificate) → connect`, server side `accept-tls (client_auth) →
//! demux-http → mux-http → connect` to nginx — under a bounded load of 64 keep-alive
//! connections: no request is answered with anything but 200.
//!
//! The two sides' idle timeouts are equal and short (the server side closes a keep-alive
//! connection idle for 1 s, the client side's pool closes one idle for 1 s), so pooled
//! connections the server side is closing are met by requests all through the run: the
//! client side must send those requests again, not answer them 502.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

/// How long the load runs and how many connections carry it.
const RUN: Duration = Duration::from_secs(60);
const CONNECTIONS: usize = 64;
/// Requests per second over all connections (as the benchmark that found the loss).
const RATE: u64 = 1000;

/// One keep-alive connection sending GETs at its share of the rate until `RUN` is over;
/// returns (responses by status, failures to connect or read).
fn load(port: u16, index: usize) -> (std::collections::BTreeMap<u16, u64>, Vec<String>) {
    let mut statuses = std::collections::BTreeMap::new();
    let mut failures = Vec::new();
    let period = Duration::from_micros(1_000_000 * CONNECTIONS as u64 / RATE);
    // Spread the connections' sends over one period.
    let start = Instant::now() + period * index as u32 / CONNECTIONS as u32;
    let end = Instant::now() + RUN;
    let mut conn: Option<(TcpStream, BufReader<TcpStream>)> = None;
    let mut k = 0u32;
    loop {
        let due = start + period * k;
        k += 1;
        if due >= end {
            break;
        }
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        if conn.is_none() {
            let Ok(s) = TcpStream::connect(("127.0.0.1", port)) else {
                failures.push("connect failed".into());
                continue;
            };
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.set_nodelay(true).unwrap();
            let r = BufReader::new(s.try_clone().unwrap());
            conn = Some((s, r));
        }
        let Some((s, r)) = conn.as_mut() else {
            continue;
        };
        match request(s, r) {
            Ok(status) => *statuses.entry(status).or_default() += 1,
            Err(e) => {
                failures.push(e);
                conn = None;
            }
        }
    }
    (statuses, failures)
}

/// One GET on a keep-alive connection: the response's status.
fn request(s: &mut TcpStream, r: &mut BufReader<TcpStream>) -> Result<u16, String> {
    s.write_all(b"GET /ok HTTP/1.1\r\nHost: app\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| format!("read: {e}"))?;
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not a status line: {line:?}"))?;
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).map_err(|e| format!("read: {e}"))?;
        if h == "\r\n" || h.is_empty() {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().map_err(|_| format!("bad length {h:?}"))?;
        }
    }
    let mut body = vec![0u8; length];
    r.read_exact(&mut body).map_err(|e| format!("body: {e}"))?;
    Ok(status)
}

#[test]
fn an_mtls_sidecar_pair_answers_every_request_under_load() {
    if !peers(&["nginx", "openssl"]) {
        return;
    }
    let dir = TempDir::new("mtls-pair");
    let up_port = reserve_port();
    let mut nginx_proc = nginx(
        &dir,
        &format!(
            "server {{ listen 127.0.0.1:{up_port}; keepalive_requests 100000000; keepalive_timeout 300s; \
             location / {{ return 200 \"ok\"; }} }}"
        ),
    );
    nginx_proc.wait_port(up_port);
    let pki = OpensslPki::new(&dir, "mesh");
    let (server_cert, server_key) = pki.leaf("server", "server.mesh.local", false);
    let (client_cert, client_key) = pki.leaf("client", "client.mesh.local", true);
    let (server_port, client_port) = (reserve_port(), reserve_port());
    let server = dir.write(
        "server.yaml",
        &format!(
            "listeners:\n  - listen: 127.0.0.1:{server_port}\n    pipeline: tls\npipelines:\n  tls:\n    - accept-tls:\n        pipeline: http\n        certificates: [{{ cert: {}, key: {} }}]\n        client_auth: {{ ca: {} }}\n  http:\n    - demux-http: {{ pipeline: request, keepalive_timeout: 1s }}\n  request:\n    - mux-http: {{ pipeline: app }}\n  app:\n    - connect: {{ endpoints: 127.0.0.1:{up_port} }}\n",
            server_cert.display(),
            server_key.display(),
            pki.ca().display()
        ),
    );
    let client = dir.write(
        "client.yaml",
        &format!(
            "listeners:\n  - listen: 127.0.0.1:{client_port}\n    pipeline: http\npipelines:\n  http:\n    - demux-http: {{ pipeline: request }}\n  request:\n    - mux-http: {{ pipeline: mtls, max_idle: 1s }}\n  mtls:\n    - connect-tls:\n        pipeline: tcp\n        sni: server.mesh.local\n        ca: {}\n        client_cert: {{ cert: {}, key: {} }}\n  tcp:\n    - connect: {{ endpoints: 127.0.0.1:{server_port} }}\n",
            pki.ca().display(),
            client_cert.display(),
            client_key.display()
        ),
    );
    let server = flowgate_run(&server, &[server_port]);
    let client = flowgate_run(&client, &[client_port]);

    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|i| std::thread::spawn(move || load(client_port, i)))
        .collect();
    let mut statuses = std::collections::BTreeMap::<u16, u64>::new();
    let mut failures = Vec::new();
    for w in workers {
        let (s, f) = w.join().unwrap();
        for (code, n) in s {
            *statuses.entry(code).or_default() += n;
        }
        failures.extend(f);
    }
    let client_log = client.stop();
    let server_log = server.stop();
    let total: u64 = statuses.values().sum();
    let ok = statuses.get(&200).copied().unwrap_or(0);
    let tail = |log: &str| {
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    };
    assert!(
        failures.is_empty() && ok == total,
        "statuses {statuses:?}, failures {failures:?}\nclient side (last lines):\n{}\nserver side (last lines):\n{}",
        tail(&client_log),
        tail(&server_log)
    );
    // Bounded, and not idle: most of the planned requests went through.
    let planned = RATE * RUN.as_secs();
    assert!(
        total >= planned * 9 / 10,
        "{total} of {planned} requests sent"
    );
}
