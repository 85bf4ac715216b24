//! Every configuration under examples/configs is valid (`flowgate check`, or
//! `flowgate-gateway check` for `gateway*.yaml`, exits 0).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::process::Command;

#[test]
fn example_configs_pass_check() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/configs");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            // Gateway files (gateway*.yaml) are checked by the binary that runs them.
            let gateway = path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("gateway"));
            let bin = if gateway {
                env!("CARGO_BIN_EXE_flowgate-gateway")
            } else {
                env!("CARGO_BIN_EXE_flowgate")
            };
            let out = Command::new(bin).arg("check").arg(&path).output().unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked >= 2, "found {checked} example configs");
}
