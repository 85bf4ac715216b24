//! Shared test support: crafted packets, network namespaces, the root check.

#![allow(dead_code)]

pub mod netns;
pub mod packet;

use flowgate_pipeline::testing::{require_peer, require_programs};

/// Whether the test can run here (it needs root to load eBPF programs), by the workspace's
/// one policy for missing peers (`flowgate_pipeline::testing::require_peer`): `false`
/// (with the reason on stderr; the caller returns) where a test may skip, a failed test
/// under CI, with `FLOWGATE_NO_SKIP` or as root.
pub fn can_run(test: &str) -> bool {
    require_peer(
        &format!("root ({test} loads eBPF programs)"),
        nix::unistd::geteuid().is_root(),
        "run the tests as root",
    )
}

/// [`can_run`] for a test that also builds network namespaces (with `ip`).
pub fn can_run_in_netns(test: &str) -> bool {
    can_run(test) && require_programs(&["ip"])
}
