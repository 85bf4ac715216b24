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

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup` on unified hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones), from /proc/self/mountinfo.
pub fn cgroup2_root() -> Option<std::path::PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        // `… mount-point options… - fstype source super-options`
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace().nth(4).map(std::path::PathBuf::from)
    })
}
