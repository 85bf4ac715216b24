//! Shared test support: crafted packets, network namespaces, the root check.

#![allow(dead_code)]

pub mod netns;
pub mod packet;

/// Returns false (and says why on stderr) when the test cannot run here.
pub fn can_run(test: &str) -> bool {
    if !nix::unistd::geteuid().is_root() {
        return skip(
            test,
            "needs root (loads eBPF programs); run as root to test",
        );
    }
    true
}

/// Reports a test that cannot run here and returns false, so the caller returns early.
/// With `FLOWGATE_NO_SKIP` set (scripts/test sets it when it runs as root), a skip is a
/// failure instead: CI must not pass a test that did not run.
pub fn skip(test: &str, why: &str) -> bool {
    assert!(
        std::env::var_os("FLOWGATE_NO_SKIP").is_none(),
        "{test} cannot run here ({why}) and FLOWGATE_NO_SKIP is set"
    );
    eprintln!("SKIPPED {test}: {why}");
    false
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
