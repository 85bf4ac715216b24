//! Shared test support: crafted packets, network namespaces, the root check.

#![allow(dead_code)]

pub mod netns;
pub mod packet;

/// Returns false (and says why on stderr) when the test cannot run here.
pub fn can_run(test: &str) -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED {test}: needs root (loads eBPF programs); run as root to test");
        return false;
    }
    true
}
