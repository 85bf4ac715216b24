//! Mesh manifests on arbitrary text (`flowgate_mesh::parse_manifests`, then
//! `MeshState::build` on what parsed): it must never panic, and every error must point
//! inside the text (a line no later than its last one).
#![no_main]

use std::path::Path;

use flowgate_mesh::{MeshState, parse_manifests};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines = text.lines().count() as u64;
    match parse_manifests(text, Path::new("fuzz.yaml")) {
        Ok(resources) => {
            if let Err(errors) = MeshState::build(resources) {
                for e in errors {
                    assert!(e.line <= lines.max(1), "{e}");
                }
            }
        }
        Err(errors) => {
            for e in errors {
                assert!(e.line <= lines.max(1) + 1, "{e}");
            }
        }
    }
});
