//! `flowgate demo` as a script would run it (`--json`, loopback mode, no privilege): the
//! bookstore mesh comes up, and the steps of OSM's demo take effect as `flowgate demo
//! step` edits the manifests in its working directory — permissive mode, then the SMI
//! policy (the buyer allowed, the thief denied), the thief let in and out again, the
//! TrafficSplit at 50/50 then 0/100, a manifest with a typo (the error with its file and
//! line, the mesh running on as it was) — and everything it started is gone when it
//! stops.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Proc, TempDir};
use serde_json::Value;

/// Reads the demo's lines until `pred` holds for one (or `within` passes); returns it.
fn wait_for(
    rx: &mpsc::Receiver<Value>,
    within: Duration,
    what: &str,
    mut pred: impl FnMut(&Value) -> bool,
) -> Value {
    let end = Instant::now() + within;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(v) if pred(&v) => return v,
            Ok(_) => {}
            Err(e) => panic!("{what}: nothing within {within:?} ({e})"),
        }
    }
}

fn count(v: &Value, field: &str, key: &str) -> u64 {
    v[field][key].as_u64().unwrap_or(0)
}

fn is(v: &Value, workload: &str) -> bool {
    v["workload"] == workload
}

/// `flowgate demo step NAME` on the demo working in `dir`.
fn step(dir: &std::path::Path, name: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_flowgate"))
        .args(["demo", "step", name, "--dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "step {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_demo_walks_osms_steps_and_leaves_nothing_behind() {
    let dir = TempDir::new("demo");
    let work = dir.path("work");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flowgate"));
    cmd.args([
        "demo",
        "--json",
        "--duration",
        "600",
        "--rate",
        "40",
        "--dir",
    ])
    .arg(&work)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let out = child.stdout.take().unwrap();
    let demo = Proc::new(child, "flowgate demo");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && tx.send(v).is_err()
            {
                return;
            }
        }
    });
    let mesh = work.join("mesh");

    // 1. Permissive mode (as shipped): everyone is served, the thief too; the split sends
    //    every request to v1; bookstore restocks from bookwarehouse.
    let logs = || demo.stderr_so_far();
    for who in ["bookbuyer", "bookthief"] {
        wait_for(&rx, Duration::from_secs(60), who, |v| {
            is(v, who) && count(v, "codes", "200") > 0
        });
    }
    wait_for(&rx, Duration::from_secs(10), "restocks", |v| {
        is(v, "bookwarehouse") && v["served"].as_u64().unwrap_or(0) > 0
    });
    let v1_only = wait_for(&rx, Duration::from_secs(10), "bookbuyer", |v| {
        is(v, "bookbuyer") && count(v, "codes", "200") > 5
    });
    assert_eq!(
        count(&v1_only, "versions", "v2"),
        0,
        "{v1_only}; {}",
        logs()
    );

    // 2. Permissive mode off: the SMI policy decides — the buyer is allowed, the thief gets
    //    403.
    step(&work, "permissive-off");
    let written = Instant::now();
    wait_for(&rx, Duration::from_secs(15), "thief denied", |v| {
        is(v, "bookthief") && count(v, "codes", "403") > 0 && count(v, "codes", "200") == 0
    });
    eprintln!(
        "permissive mode off took effect within {:?}",
        written.elapsed()
    );
    wait_for(&rx, Duration::from_secs(5), "buyer allowed", |v| {
        is(v, "bookbuyer") && count(v, "codes", "200") > 0 && count(v, "codes", "403") == 0
    });

    // The thief let in, then out again.
    step(&work, "allow-thief");
    wait_for(&rx, Duration::from_secs(15), "thief allowed", |v| {
        is(v, "bookthief") && count(v, "codes", "200") > 0 && count(v, "codes", "403") == 0
    });
    step(&work, "deny-thief");
    wait_for(&rx, Duration::from_secs(15), "thief denied again", |v| {
        is(v, "bookthief") && count(v, "codes", "403") > 0 && count(v, "codes", "200") == 0
    });

    // 3. The split at 50/50: over at least 200 requests, v2 serves half (± 5 points).
    step(&work, "split50");
    wait_for(&rx, Duration::from_secs(15), "v2 serving", |v| {
        is(v, "bookbuyer") && count(v, "versions", "v2") > 0
    });
    let mut versions: BTreeMap<String, u64> = BTreeMap::new();
    while versions.values().sum::<u64>() < 200 {
        let v = wait_for(&rx, Duration::from_secs(10), "bookbuyer", |v| {
            is(v, "bookbuyer")
        });
        for k in ["v1", "v2"] {
            *versions.entry(k.into()).or_default() += count(&v, "versions", k);
        }
    }
    let total = versions.values().sum::<u64>() as f64;
    let v2 = versions["v2"] as f64 / total;
    assert!(
        (0.45..=0.55).contains(&v2),
        "v2 share {v2:.3} of {total}: {versions:?}"
    );
    // 0/100: v2 alone.
    step(&work, "split-v2");
    wait_for(&rx, Duration::from_secs(15), "v2 alone", |v| {
        is(v, "bookbuyer") && count(v, "versions", "v2") > 0 && count(v, "versions", "v1") == 0
    });

    // 4. A manifest with a typo: the error with its file and line; the mesh runs on.
    std::fs::write(
        mesh.join("typo.yaml"),
        "apiVersion: v1\nkind: Servise\nmetadata: { name: x }\n",
    )
    .unwrap();
    let errors = wait_for(&rx, Duration::from_secs(10), "the typo", |v| {
        v["event"] == "errors" && !v["errors"].as_array().is_none_or(Vec::is_empty)
    });
    let text = errors["errors"].to_string();
    assert!(text.contains("typo.yaml:2"), "{text}");
    wait_for(&rx, Duration::from_secs(5), "buyer still served", |v| {
        is(v, "bookbuyer") && count(v, "codes", "200") > 0
    });

    // Stopped (SIGTERM, as Ctrl-C would): nothing it started listens any more.
    demo.signal("TERM");
    let gone = common::wait_until(Duration::from_secs(15), || {
        [
            "127.42.0.1:15010",
            "127.42.0.11:15001",
            "127.42.0.21:14001",
            "127.42.0.31:15006",
        ]
        .iter()
        .all(|a| std::net::TcpStream::connect(a).is_err())
    });
    assert!(gone, "something the demo started still listens");
    drop(demo);
}
