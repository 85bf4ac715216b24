//! Reload under load: 64 connections loop for about 20 s (FLOWGATE_RELOAD_SECS) through the
//! `flowgate` binary while its configuration is changed and reloaded 10 times. Every
//! connection must succeed and every byte must come back (compared whole).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;

const CONNECTIONS: usize = 64;
const RELOADS: usize = 10;
const PAYLOAD: usize = 64 * 1024;
/// A bound on connections per client thread, besides the time bound.
const MAX_ROUNDS: usize = 100_000;

fn config(port: u16, ups: &[u16], variant: usize) -> String {
    // Each variant differs in the upstream order and in timeouts, so each reload builds a
    // new pipeline.
    let mut targets: Vec<String> = ups.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    targets.rotate_left(variant % ups.len());
    format!(
        "workers: 2\nlisteners:\n  - listen: 127.0.0.1:{port}\n    pipeline: proxy\npipelines:\n  proxy:\n    - throttle: {{ concurrency: 10000 }}\n    - connect:\n        endpoints: [{}]\n        connect_timeout: {}s\n",
        targets.join(", "),
        2 + variant
    )
}

#[test]
fn reload_under_load_loses_nothing() {
    let secs: u64 = std::env::var("FLOWGATE_RELOAD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let ups = [Echo::start(None), Echo::start(None), Echo::start(None)];
    let up_ports: Vec<u16> = ups.iter().map(|e| e.port).collect();
    let port = reserve_port();
    let dir = TempDir::new("reload");
    let path = dir.write("proxy.yaml", &config(port, &up_ports, 0));
    let fg = flowgate_run_log(&path, &[port], "info");

    let deadline = Instant::now() + Duration::from_secs(secs);
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for id in 0..CONNECTIONS {
        let (ok, failed, bytes) = (ok.clone(), failed.clone(), bytes.clone());
        clients.push(std::thread::spawn(move || {
            let mut first_error = None;
            for round in 0..MAX_ROUNDS {
                if Instant::now() >= deadline {
                    break;
                }
                // A payload that differs per connection and round.
                let payload: Vec<u8> = (0..PAYLOAD)
                    .map(|i| ((i * 31 + id * 7 + round * 13) % 251) as u8)
                    .collect();
                match exchange(port, &payload) {
                    Ok(back) if back == payload => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        bytes.fetch_add(back.len() as u64, Ordering::Relaxed);
                    }
                    Ok(back) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        first_error.get_or_insert(format!(
                            "conn {id} round {round}: {} bytes back, content differs",
                            back.len()
                        ));
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        first_error.get_or_insert(format!("conn {id} round {round}: {e}"));
                    }
                }
            }
            first_error
        }));
    }
    let step = Duration::from_secs(secs) / (RELOADS as u32 + 1);
    for r in 1..=RELOADS {
        std::thread::sleep(step);
        // Atomically, as configuration tools do: write a temporary file, then rename it.
        let tmp = path.with_extension("yaml.tmp");
        std::fs::write(&tmp, config(port, &up_ports, r)).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        fg.signal("HUP");
    }
    let errors: Vec<String> = clients
        .into_iter()
        .filter_map(|c| c.join().unwrap())
        .collect();
    let stderr = fg.stop();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!(
        "reload under load: {ok} connections ok, {failed} failed, {} MiB echoed, {RELOADS} reloads",
        bytes.load(Ordering::Relaxed) >> 20
    );
    assert_eq!(failed, 0, "failures: {errors:?}");
    assert!(ok >= CONNECTIONS as u64, "the load ran ({ok} connections)");
    assert!(
        stderr.matches("configuration reloaded").count() >= RELOADS,
        "every reload applied: {stderr}"
    );
    assert!(
        !stderr.contains("reload refused") && !stderr.contains("reload failed"),
        "{stderr}"
    );
}

fn exchange(port: u16, payload: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut c = TcpStream::connect(("127.0.0.1", port))?;
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    c.set_write_timeout(Some(Duration::from_secs(10)))?;
    for chunk in payload.chunks(4096) {
        c.write_all(chunk)?;
    }
    c.shutdown(std::net::Shutdown::Write)?;
    let mut back = Vec::with_capacity(payload.len());
    c.read_to_end(&mut back)?;
    Ok(back)
}

#[test]
fn a_changed_file_is_reloaded_without_a_signal() {
    let (a, b) = (Echo::start(Some("A:")), Echo::start(Some("B:")));
    let port = reserve_port();
    let dir = TempDir::new("watch");
    let cfg = |up: u16| {
        format!(
            "listeners:\n  - listen: 127.0.0.1:{port}\n    pipeline: p\npipelines:\n  p:\n    - connect: {{ endpoints: 127.0.0.1:{up} }}\n"
        )
    };
    let path = dir.write("watch.yaml", &cfg(a.port));
    let _fg = flowgate_run(&path, &[port]);
    let tag = || {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut s = String::new();
        c.read_to_string(&mut s).unwrap();
        s
    };
    assert_eq!(tag(), "A:");
    // A non-atomic write: the watcher must not reload a half-written file.
    std::fs::write(&path, cfg(b.port)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while tag() != "B:" {
        assert!(
            Instant::now() < deadline,
            "the file change was not picked up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
