//! `flowgate-controller` on the command line: `check` on the bookstore demo's manifests and
//! on broken copies (exit 2, every error at file:line), `token` (a token the mesh library
//! verifies for exactly that account), and the CLI's refusals. Files only, no sockets.
#![cfg(feature = "mesh")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::SystemTime;

use common::TempDir;
use flowgate::mesh::token::TokenKey;

fn controller(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_flowgate-controller"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn demo() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/mesh")
}

#[test]
fn check_passes_the_demo_and_names_each_error_of_a_broken_copy() {
    let (code, out, err) = controller(&["check", demo().to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ok — 5 namespaces, 4 services, 4 service accounts, 5 pods, 2 traffic targets, 1 traffic splits; permissive mode on"), "{out}");

    let dir = TempDir::new("controller-check");
    for e in std::fs::read_dir(demo()).unwrap() {
        let p = e.unwrap().path();
        let text = std::fs::read_to_string(&p).unwrap();
        dir.write(p.file_name().unwrap().to_str().unwrap(), &text);
    }
    let split = std::fs::read_to_string(dir.path("split.yaml")).unwrap();
    dir.write("split.yaml", &split.replace("weight: 100", "weight: 0"));
    dir.write(
        "extra.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata: { name: s }\n",
    );
    let (code, _, err) = controller(&["check", dir.0.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("extra.yaml:1:1: unknown kind `Secret`"),
        "{err}"
    );
    // One file alone is checked too (its references to other files then fail).
    let (code, _, err) = controller(&["check", dir.path("extra.yaml").to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown kind `Secret`"), "{err}");
    std::fs::remove_file(dir.path("extra.yaml")).unwrap();
    let (code, _, err) = controller(&["check", dir.0.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        err.contains(
            "split.yaml:3:1: TrafficSplit bookstore/bookstore-split: every weight is zero"
        ),
        "{err}"
    );
}

#[test]
fn tokens_verify_for_their_account_only() {
    let dir = TempDir::new("controller-token");
    let state = dir.path("state");
    let (code, out, err) = controller(&[
        "token",
        "--state",
        state.to_str().unwrap(),
        "--ttl",
        "10m",
        "bookstore/bookstore",
    ]);
    assert_eq!(code, 0, "{err}");
    let token = out.trim();
    let key = TokenKey::load_or_generate(&state.join("token.key")).unwrap();
    assert_eq!(
        key.verify(token, SystemTime::now()).unwrap(),
        ("bookstore".to_string(), "bookstore".to_string())
    );
    // The same state directory keeps the same key.
    let (_, again, _) = controller(&[
        "token",
        "bookbuyer/bookbuyer",
        "--state",
        state.to_str().unwrap(),
    ]);
    assert_eq!(
        key.verify(again.trim(), SystemTime::now()).unwrap().1,
        "bookbuyer"
    );

    let (code, _, err) = controller(&["token", "no-slash", "--state", state.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("NAMESPACE/SERVICE-ACCOUNT"), "{err}");
    let (code, _, err) = controller(&[
        "token",
        "a/b",
        "--ttl",
        "soon",
        "--state",
        state.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = controller(&["check", "--bogus", "x"]);
    assert_eq!(code, 2);
    assert!(err.contains("--bogus"), "{err}");
}
