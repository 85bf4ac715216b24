//! The loader's attach/detach behaviour and its errors: native XDP falling back to
//! generic on `lo`, a clear "unsupported" error when native is demanded there, detach,
//! and `NotRoot` for an unprivileged process.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use common::netns::Netns;
use flowgate_ebpf::xdp_lb::{AttachMode, AttachedMode, XdpLb, XdpLbConfig};
use flowgate_ebpf::{Error, SockRedirect, SockRedirectConfig};
use flowgate_pipeline::testing::require_programs;

fn small() -> XdpLbConfig {
    XdpLbConfig {
        ring_size: 251,
        max_vips: 1,
        max_backends: 4,
        conntrack_entries: 64,
    }
}

fn xdp_on_lo(ns: &Netns) -> bool {
    let out = Command::new("ip")
        .args(["-n", &ns.name, "link", "show", "lo"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains("xdp")
}

#[test]
fn native_falls_back_to_generic_and_detaches() {
    if !common::can_run_in_netns("native_falls_back_to_generic_and_detaches") {
        return;
    }
    let ns = Netns::new("x");
    ns.run(|| {
        let mut lb = XdpLb::load(small()).unwrap();
        // lo has no native XDP: demanding it names the missing feature ...
        let err = lb.attach("lo", AttachMode::Native).unwrap_err();
        match &err {
            Error::Unsupported { feature, .. } => assert!(feature.contains("native XDP on lo")),
            other => panic!("expected Unsupported, got {other}"),
        }
        assert!(
            err.to_string()
                .contains("does not support native XDP on lo")
        );
        // ... and Auto falls back to generic.
        assert_eq!(
            lb.attach("lo", AttachMode::Auto).unwrap(),
            AttachedMode::Generic
        );
        assert!(xdp_on_lo(&ns));
        lb.detach("lo").unwrap();
        assert!(!xdp_on_lo(&ns), "still attached after detach");
        assert!(matches!(lb.detach("lo"), Err(Error::NotAttached { .. })));
        // Dropping detaches too.
        assert_eq!(
            lb.attach("lo", AttachMode::Generic).unwrap(),
            AttachedMode::Generic
        );
        assert!(xdp_on_lo(&ns));
        drop(lb);
        assert!(!xdp_on_lo(&ns), "still attached after drop");
    });
}

#[test]
fn missing_cgroup_is_a_clear_error() {
    if !common::can_run("missing_cgroup_is_a_clear_error") {
        return;
    }
    let mut r = SockRedirect::load(SockRedirectConfig::default()).unwrap();
    let err = r
        .attach_cgroup(std::path::Path::new(
            "/sys/fs/cgroup/unified/fg-no-such-cgroup",
        ))
        .unwrap_err();
    assert!(matches!(err, Error::Cgroup { .. }), "{err}");
}

/// Runs this test binary as `nobody` for the child half below.
#[test]
fn not_root_is_reported() {
    if std::env::var_os("FG_CHILD_NOT_ROOT").is_some() {
        let err = XdpLb::load(small()).unwrap_err();
        assert!(matches!(err, Error::NotRoot { euid } if euid != 0), "{err}");
        assert!(err.to_string().contains("needs root"));
        let err = SockRedirect::load(SockRedirectConfig::default()).unwrap_err();
        assert!(matches!(err, Error::NotRoot { .. }), "{err}");
        return;
    }
    if !common::can_run("not_root_is_reported") || !require_programs(&["setpriv"]) {
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&exe)
        .args(["--exact", "not_root_is_reported", "--nocapture"])
        .env("FG_CHILD_NOT_ROOT", "1")
        .env_remove("FLOWGATE_NO_SKIP")
        .output()
        .expect("setpriv runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the unprivileged half failed: {text}");
    // An exit code of 0 alone would also mean "no test matched".
    assert!(
        text.contains("1 passed"),
        "the unprivileged half did not run: {text}"
    );
}
