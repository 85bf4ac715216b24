//! The binaries' command lines: flags in any order, `--help` with examples, unknown flags
//! and missing files refused with exit code 2 and a message naming them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn output(bin: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn unknown_flags_and_missing_files_exit_2_naming_them() {
    for bin in [
        env!("CARGO_BIN_EXE_flowgate"),
        env!("CARGO_BIN_EXE_flowgate-gateway"),
    ] {
        let (code, _, err) = output(bin, &["run", "--bogus", "x.yaml"]);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("--bogus"), "{err}");
        let (code, _, err) = output(bin, &["check"]);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("<FILE>"), "{err}");
        let (code, _, err) = output(bin, &["run", "--workers", "two", "x.yaml"]);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("--workers"), "{err}");
        let (code, _, err) = output(bin, &["frobnicate"]);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("frobnicate"), "{err}");
        // A file that cannot be read is a configuration error: exit 2, named.
        let (code, _, err) = output(bin, &["check", "/nonexistent/x.yaml"]);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("/nonexistent/x.yaml"), "{err}");
    }
}

#[test]
fn help_lists_the_subcommands_with_examples_and_version_prints() {
    let (code, out, _) = output(env!("CARGO_BIN_EXE_flowgate"), &["--help"]);
    assert_eq!(code, 0);
    for word in ["run", "check", "describe", "Examples:", "--workers 1"] {
        assert!(out.contains(word), "{word}: {out}");
    }
    let (code, out, _) = output(env!("CARGO_BIN_EXE_flowgate"), &["run", "--help"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("--no-watch") && out.contains("<FILE>"),
        "{out}"
    );
    let (code, out, _) = output(env!("CARGO_BIN_EXE_flowgate-gateway"), &["--version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("flowgate-gateway "), "{out}");
}

#[test]
fn describe_prints_the_pipelines_and_check_the_verdict() {
    let quickstart = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/configs/quickstart.yaml"
    );
    let (code, out, err) = output(env!("CARGO_BIN_EXE_flowgate"), &["describe", quickstart]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("connect") && out.contains("dump"), "{out}");
    let (code, out, err) = output(
        env!("CARGO_BIN_EXE_flowgate"),
        &["describe", "--json", quickstart],
    );
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["listeners"].as_array().map(Vec::len), Some(2), "{doc}");
    let (code, out, err) = output(env!("CARGO_BIN_EXE_flowgate"), &["check", quickstart]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(": ok (2 listeners"), "{out}");
}

#[test]
fn run_takes_its_flags_before_the_file() {
    // The quick-start configuration on free ports: `run --workers 1 FILE` runs it.
    let dir = TempDir::new("cli-run");
    let (proxy, echo) = (reserve_port(), reserve_port());
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/configs/quickstart.yaml"
    ))
    .unwrap()
    .replace("8000", &proxy.to_string())
    .replace("8001", &echo.to_string());
    let cfg = dir.write("quickstart.yaml", &text);
    let child = Command::new(env!("CARGO_BIN_EXE_flowgate"))
        .args(["run", "--workers", "1", "--no-watch"])
        .arg(&cfg)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut fg = Proc::new(child, "flowgate");
    fg.wait_port(proxy);
    let mut c = TcpStream::connect(("127.0.0.1", proxy)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"hello\n").unwrap();
    let mut got = [0u8; 6];
    c.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello\n");
    drop(c);
    let stderr = fg.stop();
    assert!(!stderr.contains("panicked"), "{stderr}");
}
