//! The YAML in the docs stays true: every ```` ```yaml ```` block in README.md, CONFIG.md and the crate
//! READMEs is valid YAML, and every block that is a whole configuration passes `check` — a
//! gateway file (`routes:` / `backends:`) with `flowgate-gateway`, a pipeline file
//! (`pipelines:`) with `flowgate`. Files a block names (`server.pem`, `ca.pem`, …) are made
//! for the check: a certificate, or its key for a `.key`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::TempDir;

/// The `yaml` blocks of a Markdown file, with the line each starts on.
fn yaml_blocks(path: &Path) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let fence = line.trim_start();
        match current.as_mut() {
            None if fence.starts_with("```yaml") => current = Some((i + 2, String::new())),
            Some(_) if fence.starts_with("```") => blocks.extend(current.take()),
            Some((_, body)) => {
                body.push_str(line);
                body.push('\n');
            }
            None => {}
        }
    }
    blocks
}

fn docs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md"), root.join("CONFIG.md")];
    for dir in [
        "pipeline",
        "filters",
        "lb",
        "bgp",
        "ebpf",
        "protocols",
        "fuzz",
        "mesh",
    ] {
        let d = root.join(dir);
        if d.join("README.md").exists() {
            files.push(d.join("README.md"));
        }
        for entry in std::fs::read_dir(&d).unwrap() {
            let readme = entry.unwrap().path().join("README.md");
            if readme.exists() {
                files.push(readme);
            }
        }
    }
    files
}

/// Writes a certificate (or, for `.key`, its private key) for every such file `yaml` names.
fn make_named_files(yaml: &str, dir: &TempDir) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    for word in yaml.split(|c: char| !(c.is_ascii_alphanumeric() || "._-/".contains(c))) {
        if word.ends_with(".key") {
            dir.write(word, &cert.key_pair.serialize_pem());
        } else if word.ends_with(".pem") || word.ends_with(".crt") {
            dir.write(word, &cert.cert.pem());
        }
    }
}

#[test]
fn every_yaml_block_in_the_readmes_parses_and_whole_configs_pass_check() {
    let mut checked = 0;
    for doc in docs() {
        for (line, yaml) in yaml_blocks(&doc) {
            let place = format!("{}:{line}", doc.display());
            let value: serde_json::Value = serde_saphyr::from_str(&yaml)
                .unwrap_or_else(|e| panic!("{place}: not YAML: {e}\n{yaml}"));
            let top = |k: &str| value.get(k).is_some();
            let bin = if top("routes") || top("backends") {
                env!("CARGO_BIN_EXE_flowgate-gateway")
            } else if top("pipelines") {
                env!("CARGO_BIN_EXE_flowgate")
            } else {
                continue;
            };
            let dir = TempDir::new("doc-yaml");
            make_named_files(&yaml, &dir);
            let file = dir.write("doc.yaml", &yaml);
            let out = Command::new(bin).arg("check").arg(&file).output().unwrap();
            assert!(
                out.status.success(),
                "{place}: `check` refused the block: {}\n{yaml}",
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    // README.md's pipeline file and gateway file, and filters/README.md's pipelines.
    assert!(checked >= 3, "checked {checked} blocks");
}
