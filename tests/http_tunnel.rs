//! Tunnels and deadlines through the `flowgate` binary with real peers: WebSocket (the PyPI
//! `websockets` package as both echo server and client) through `demux-http` → `mux-http`,
//! CONNECT with curl's proxytunnel to nginx, and the `timeout` filter in front of a slow
//! Python upstream.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// An echo server: echoes every message; "port?" is answered with the client port the
/// server sees (so a test can tell upstream connections apart); a plain GET (no Upgrade)
/// gets 200 with that port as the body.
const WS_SERVER: &str = r#"
import asyncio, sys
from http import HTTPStatus
from websockets.asyncio.server import serve

async def handler(ws):
    async for msg in ws:
        if msg == "port?":
            await ws.send(str(ws.remote_address[1]))
        else:
            await ws.send(msg)

def process_request(connection, request):
    if request.headers.get("Upgrade") is None:
        return connection.respond(HTTPStatus.OK, "port %d\n" % connection.remote_address[1])
    return None

async def main():
    async with serve(handler, "127.0.0.1", int(sys.argv[1]), process_request=process_request,
                     max_size=None):
        await asyncio.get_running_loop().create_future()

asyncio.run(main())
"#;

/// A client: text, binary and 1 MiB messages echoed, the upstream port, then the close
/// handshake (timed). With a second argument it prints the port and waits for a line on
/// stdin before closing.
const WS_CLIENT: &str = r#"
import asyncio, os, sys, time
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

async def main():
    try:
        ws = await connect(sys.argv[1], max_size=None, open_timeout=10, close_timeout=10)
    except InvalidStatus as e:
        print("REFUSED", e.response.status_code, flush=True)
        return
    await ws.send("hello")
    assert await ws.recv() == "hello"
    small = bytes(range(256)) * 4
    await ws.send(small)
    assert await ws.recv() == small
    big = os.urandom(1 << 20)
    await ws.send(big)
    got = await ws.recv()
    assert got == big, (len(got), len(big))
    await ws.send("port?")
    port = await ws.recv()
    if len(sys.argv) > 2:
        print("PORT", port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        await ws.send("still here")
        assert await ws.recv() == "still here"
    t = time.monotonic()
    await ws.close()
    took = time.monotonic() - t
    assert ws.close_code == 1000, ws.close_code
    print("OK", port, "%.3f" % took, flush=True)

asyncio.run(asyncio.wait_for(main(), 30))
"#;

fn ws_server(dir: &TempDir) -> (Proc, u16) {
    let port = reserve_port();
    let script = dir.write("ws_server.py", WS_SERVER);
    let mut p = daemon(
        Command::new("python3").arg(script).arg(port.to_string()),
        "ws-server",
    );
    p.wait_port(port);
    (p, port)
}

/// `flowgate` with two listeners in front of `upstream`: the first passes upgrades, the
/// second has `upgrade: { enabled: false }`.
fn ws_proxy(dir: &TempDir, upstream: u16) -> (Proc, u16, u16) {
    let (a, b) = (reserve_port(), reserve_port());
    let cfg = dir.write(
        "ws.yaml",
        &format!(
            "listeners:\n  - listen: 127.0.0.1:{a}\n    pipeline: main\n  - listen: 127.0.0.1:{b}\n    pipeline: no-upgrades\n\
             pipelines:\n  main:\n    - demux-http: {{ pipeline: request, upgrade: {{ protocols: [websocket] }}, tunnel_idle_timeout: 30s }}\n\
             \x20 no-upgrades:\n    - demux-http: {{ pipeline: request, upgrade: {{ enabled: false }} }}\n\
             \x20 request:\n    - mux-http: {{ pipeline: upstream }}\n\
             \x20 upstream:\n    - connect: {{ endpoints: 127.0.0.1:{upstream} }}\n"
        ),
    );
    (flowgate_run(&cfg, &[a, b]), a, b)
}

fn ws_client(dir: &TempDir, port: u16) -> String {
    let script = dir.write("ws_client.py", WS_CLIENT);
    let out = Command::new("python3")
        .arg(script)
        .arg(format!("ws://127.0.0.1:{port}/chat"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "client failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn websocket_messages_and_close_handshake_pass_through() {
    if !python_module("websockets", "websockets") {
        return;
    }
    let dir = TempDir::new("ws-echo");
    let (_server, up) = ws_server(&dir);
    let (fg, port, _) = ws_proxy(&dir, up);
    let out = ws_client(&dir, port);
    let fields: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(fields.first(), Some(&"OK"), "{out}");
    // The close handshake ends promptly: the upstream's FIN reached the client (the
    // client would wait its 10 s close timeout otherwise).
    let took: f64 = fields[2].parse().unwrap();
    assert!(took < 3.0, "close took {took} s");
    let stderr = fg.stop();
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn an_upgrade_refused_by_policy_is_an_ordinary_request() {
    if !python_module("websockets", "websockets") {
        return;
    }
    let dir = TempDir::new("ws-refused");
    let (_server, up) = ws_server(&dir);
    let (_fg, _, no_upgrades) = ws_proxy(&dir, up);
    // The Upgrade field is dropped, so the server answers the GET as a plain request.
    let out = ws_client(&dir, no_upgrades);
    assert!(out.starts_with("REFUSED 200"), "{out}");
}

fn get_port(port: u16) -> String {
    let (ok, body, err) = curl(&[&format!("http://127.0.0.1:{port}/port")]);
    assert!(ok, "{err}");
    assert!(body.starts_with("port "), "{body}");
    body.trim().trim_start_matches("port ").to_string()
}

#[test]
fn an_upgraded_upstream_connection_is_never_reused() {
    if !peers(&["curl"]) || !python_module("websockets", "websockets") {
        return;
    }
    let dir = TempDir::new("ws-reuse");
    let (_server, up) = ws_server(&dir);
    let (_fg, port, _) = ws_proxy(&dir, up);
    let before = get_port(port);
    let script = dir.write("ws_client.py", WS_CLIENT);
    let mut client = Command::new("python3")
        .arg(script)
        .arg(format!("ws://127.0.0.1:{port}/chat"))
        .arg("hold")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(client.stdout.take().unwrap()).lines();
    // The client exits within 30 s on its own, so this read is bounded.
    let first = lines.next().and_then(Result::ok).unwrap_or_default();
    let ws_port = first.strip_prefix("PORT ").map(str::to_string);
    let ws_port = match ws_port {
        Some(p) => p,
        None => {
            let _ = client.kill();
            let mut err = String::new();
            let _ = client.stderr.take().unwrap().read_to_string(&mut err);
            panic!("no port from the client: {first:?} {err}");
        }
    };
    assert_ne!(
        ws_port, before,
        "the upgrade went over the pooled connection"
    );
    // While the tunnel is open, plain requests go over other upstream connections.
    let during = get_port(port);
    assert_ne!(during, ws_port);
    client.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = client.wait().unwrap();
    assert!(status.success(), "{rest:?}");
    assert!(
        rest.iter().any(|l| l.starts_with("OK")),
        "the tunnel kept working: {rest:?}"
    );
    let after = get_port(port);
    assert_ne!(after, ws_port);
}

// === CONNECT ===

fn nginx_hello(dir: &TempDir) -> (Proc, u16) {
    let port = reserve_port();
    let mut p = nginx(
        dir,
        &format!(
            "server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"hello through the tunnel\"; }} }}"
        ),
    );
    p.wait_port(port);
    (p, port)
}

#[test]
fn connect_tunnels_to_allowed_targets_and_refuses_the_rest() {
    if !peers(&["nginx", "curl"]) {
        return;
    }
    let dir = TempDir::new("connect");
    let (_nginx, web) = nginx_hello(&dir);
    let dead = reserve_port(); // allowed, but nothing listens there
    let (p, plain, guarded) = (reserve_port(), reserve_port(), reserve_port());
    let cfg = dir.write(
        "connect.yaml",
        &format!(
            "listeners:\n  - listen: 127.0.0.1:{p}\n    pipeline: main\n  - listen: 127.0.0.1:{plain}\n    pipeline: plain\n  - listen: 127.0.0.1:{guarded}\n    pipeline: guarded\n\
             pipelines:\n  main:\n    - demux-http: {{ pipeline: request, connect: {{ pipeline: tunnel, ports: [{web}, {dead}], hosts: [127.0.0.1, localhost] }} }}\n\
             \x20 plain:\n    - demux-http: {{ pipeline: request }}\n\
             \x20 guarded:\n    - demux-http: {{ pipeline: request, connect: {{ pipeline: tunnel-guarded, ports: [{web}], hosts: [127.0.0.1, localhost] }} }}\n\
             \x20 request:\n    - respond: {{ status: 200, body: \"not a tunnel\\n\" }}\n\
             \x20 tunnel:\n    - connect: {{ target_from_context: true, internal_targets: true, connect_timeout: 2s }}\n\
             \x20 tunnel-guarded:\n    - connect: {{ target_from_context: true }}\n"
        ),
    );
    let fg = flowgate_run(&cfg, &[p, plain, guarded]);
    let proxy = format!("http://127.0.0.1:{p}");
    // curl's proxytunnel: CONNECT 127.0.0.1:web, then its GET inside the tunnel.
    let (ok, body, err) = curl(&[
        "-v",
        "-p",
        "-x",
        &proxy,
        &format!("http://127.0.0.1:{web}/"),
    ]);
    assert!(ok, "{err}");
    assert_eq!(body, "hello through the tunnel");
    assert!(err.contains("CONNECT 127.0.0.1:"), "{err}");
    // A second one, by name.
    let (ok, body, err) = curl(&["-p", "-x", &proxy, &format!("http://localhost:{web}/")]);
    assert!(ok && body == "hello through the tunnel", "{err}");
    // A port that is not allowed: 403.
    let (ok, _, err) = curl(&["-p", "-x", &proxy, "http://127.0.0.1:22/"]);
    assert!(!ok && err.contains("403"), "{err}");
    // A host that is not allowed: 403.
    let (ok, _, err) = curl(&["-p", "-x", &proxy, &format!("http://127.0.0.2:{web}/")]);
    assert!(!ok && err.contains("403"), "{err}");
    // Allowed but unreachable: 502.
    let (ok, _, err) = curl(&["-p", "-x", &proxy, &format!("http://127.0.0.1:{dead}/")]);
    assert!(!ok && err.contains("502"), "{err}");
    // Without `internal_targets`, a loopback target is refused after resolution, by
    // address and by name alike, though the allow-lists let it through: 403.
    let guard = format!("http://127.0.0.1:{guarded}");
    for host in ["127.0.0.1", "localhost"] {
        let (ok, _, err) = curl(&["-p", "-x", &guard, &format!("http://{host}:{web}/")]);
        assert!(!ok && err.contains("403"), "{host}: {err}");
    }
    // Without a `connect` block, CONNECT is refused with 405 and the connection closes.
    let mut c = TcpStream::connect(("127.0.0.1", plain)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(
        format!("CONNECT 127.0.0.1:{web} HTTP/1.1\r\nHost: 127.0.0.1:{web}\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut got = String::new();
    let _ = c.read_to_string(&mut got);
    assert!(got.starts_with("HTTP/1.1 405"), "{got}");
    assert!(got.contains("connection: close"), "{got}");
    // Ordinary requests on the same listener still work.
    let (ok, body, err) = curl(&[&format!("{proxy}/x")]);
    assert!(ok && body == "not a tunnel\n", "{err}");
    let stderr = fg.stop();
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn raw_bytes_flow_both_ways_and_a_client_half_close_is_passed_on() {
    let dir = TempDir::new("connect-raw");
    let echo = Echo::start(None);
    let p = reserve_port();
    let cfg = dir.write(
        "connect.yaml",
        &format!(
            "listeners:\n  - listen: 127.0.0.1:{p}\n    pipeline: main\n\
             pipelines:\n  main:\n    - demux-http: {{ pipeline: request, connect: {{ pipeline: tunnel, ports: [{e}] }} }}\n\
             \x20 request:\n    - respond: {{ status: 404 }}\n\
             \x20 tunnel:\n    - connect: {{ target_from_context: true, internal_targets: true }}\n",
            e = echo.port
        ),
    );
    let _fg = flowgate_run(&cfg, &[p]);
    let mut c = TcpStream::connect(("127.0.0.1", p)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        c,
        "CONNECT 127.0.0.1:{e} HTTP/1.1\r\nHost: 127.0.0.1:{e}\r\n\r\n",
        e = echo.port
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(c.read(&mut byte).unwrap(), 1, "{head:?}");
        head.push(byte[0]);
        assert!(head.len() < 4096);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("transfer-encoding"),
        "{head}"
    );
    // Bytes that look like HTTP are not parsed: they are tunnel bytes.
    let payload: Vec<u8> = b"GET / HTTP/1.1\r\n\r\n"
        .iter()
        .copied()
        .chain((0..200_000u32).map(|i| (i % 251) as u8))
        .collect();
    c.write_all(&payload).unwrap();
    // Half-close: the echo server sees EOF, finishes echoing and closes; all bytes arrive.
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut back = Vec::new();
    c.read_to_end(&mut back).unwrap();
    assert_eq!(back.len(), payload.len());
    assert!(back == payload);
}

// === timeout ===

const SLOW_SERVER: &str = r#"
import http.server, sys, time
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if self.path.startswith("/slow"):
            time.sleep(3)
        if self.path.startswith("/drip"):
            self.send_response(200)
            self.send_header("Content-Length", "10")
            self.end_headers()
            for _ in range(10):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.5)
            return
        body = b"done\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

#[test]
fn a_slow_upstream_gets_504_at_the_deadline() {
    if !peers(&["curl", "python3"]) {
        return;
    }
    let dir = TempDir::new("timeout");
    let up = reserve_port();
    let script = dir.write("slow.py", SLOW_SERVER);
    let mut server_proc = daemon(
        Command::new("python3").arg(script).arg(up.to_string()),
        "slow-server",
    );
    server_proc.wait_port(up);
    let p = reserve_port();
    let cfg = dir.write(
        "timeout.yaml",
        &format!(
            "listeners:\n  - listen: 127.0.0.1:{p}\n    pipeline: main\n\
             pipelines:\n  main:\n    - demux-http: {{ pipeline: request }}\n\
             \x20 request:\n    - timeout: {{ pipeline: tries, head: 700ms, total: 2s }}\n\
             \x20 tries:\n    - retry: {{ pipeline: call, tries: 2, per_try_timeout: 10s }}\n\
             \x20 call:\n    - mux-http: {{ pipeline: upstream }}\n\
             \x20 upstream:\n    - connect: {{ endpoints: 127.0.0.1:{up} }}\n"
        ),
    );
    let fg = flowgate_run(&cfg, &[p]);
    let base = format!("http://127.0.0.1:{p}");
    let (ok, body, err) = curl(&[&format!("{base}/fast")]);
    assert!(ok && body == "done\n", "{err}");
    // No head within 700 ms: 504, well before the upstream's 3 s.
    let started = Instant::now();
    let (ok, code, err) = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("{base}/slow"),
    ]);
    let took = started.elapsed();
    assert!(ok, "{err}");
    assert_eq!(code, "504");
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_millis(2500),
        "{took:?}"
    );
    // The head in time but the body not done within 2 s: the response is cut off.
    let started = Instant::now();
    let (ok, _, err) = curl(&[&format!("{base}/drip")]);
    let took = started.elapsed();
    assert!(!ok, "a 5 s body passed a 2 s deadline");
    assert!(took < Duration::from_millis(4000), "{took:?} {err}");
    // The connection-level state is fine afterwards.
    let (ok, body, err) = curl(&[&format!("{base}/fast")]);
    assert!(ok && body == "done\n", "{err}");
    let stderr = fg.stop();
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn an_idle_tunnel_is_closed_after_the_tunnel_idle_timeout() {
    let dir = TempDir::new("connect-idle");
    let echo = Echo::start(None);
    let p = reserve_port();
    let cfg = dir.write(
        "connect.yaml",
        &format!(
            "listeners:\n  - listen: 127.0.0.1:{p}\n    pipeline: main\n\
             pipelines:\n  main:\n    - demux-http: {{ pipeline: request, tunnel_idle_timeout: 1s, connect: {{ pipeline: tunnel, ports: [{e}] }} }}\n\
             \x20 request:\n    - respond: {{ status: 404 }}\n\
             \x20 tunnel:\n    - connect: {{ target_from_context: true, internal_targets: true }}\n",
            e = echo.port
        ),
    );
    let _fg = flowgate_run(&cfg, &[p]);
    let mut c = TcpStream::connect(("127.0.0.1", p)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        c,
        "CONNECT 127.0.0.1:{e} HTTP/1.1\r\nHost: x\r\n\r\n",
        e = echo.port
    )
    .unwrap();
    let mut buf = [0u8; 256];
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(c.read(&mut buf[..1]).unwrap(), 1);
        head.push(buf[0]);
        assert!(head.len() < 4096);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"));
    let mut got = Vec::new();
    // Activity keeps it open: a ping every 400 ms for 2 s.
    for i in 1..=5 {
        c.write_all(b"ping").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while got.len() < 4 * i && Instant::now() < deadline {
            let n = c.read(&mut buf).unwrap();
            assert!(
                n > 0,
                "closed while active: {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
        std::thread::sleep(Duration::from_millis(400));
    }
    // Then silence: closed about a second later.
    let started = Instant::now();
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    let took = started.elapsed();
    assert!(rest.is_empty(), "{rest:?}");
    assert_eq!(got, b"ping".repeat(5));
    assert!(
        took > Duration::from_millis(300) && took < Duration::from_secs(4),
        "{took:?}"
    );
}
