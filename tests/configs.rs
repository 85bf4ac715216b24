//! Every configuration under examples/configs is valid (`flowgate check`, or
//! `flowgate-gateway check` for `gateway*.yaml`, exits 0), and so is every YAML example of
//! the MQTT docs (loaded with `flowgate::config`).
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

/// The YAML examples in the MQTT docs: each file's ```yaml blocks, in a whole
/// configuration, load with the real configuration loader (filters built, files read).
/// A block that is a piece of a configuration is put where it belongs first.
#[test]
fn mqtt_doc_yaml_examples_load() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    // The files the examples name under /etc/flowgate/ are made in a temp dir.
    let etc = std::env::temp_dir().join(format!("flowgate-doc-yaml-{}", std::process::id()));
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("mqtt-users"), "bob:plain:secret\n").unwrap();
    let listener = |pipeline: &str| {
        format!("listeners:\n  - {{ listen: \"127.0.0.1:0\", pipeline: {pipeline} }}\n")
    };
    let indent = |block: &str, n: usize| -> String {
        block
            .lines()
            .map(|l| format!("{}{l}\n", " ".repeat(n)))
            .collect()
    };
    let proxy = |options: &str| {
        format!(
            "{}pipelines:\n  doc:\n    - proxy-mqtt:\n        endpoints: [127.0.0.1:1883]\n{options}",
            listener("doc")
        )
    };
    type Wrap<'a> = Box<dyn Fn(&str) -> String + 'a>;
    // (file, how many blocks it has, how a block becomes a whole configuration)
    let cases: Vec<(&str, usize, Wrap)> = vec![
        // A whole configuration.
        ("filters/mqtt/src/lib.rs", 1, Box::new(str::to_string)),
        // Filters of a pipeline.
        (
            "filters/mqtt/src/codec.rs",
            1,
            Box::new(|b| format!("{}pipelines:\n  doc:\n{}", listener("doc"), indent(b, 4))),
        ),
        // Rules of `acl:`.
        (
            "filters/mqtt/src/acl.rs",
            1,
            Box::new(|b| {
                proxy(&format!(
                    "        acl:\n          rules:\n{}",
                    indent(b, 12)
                ))
            }),
        ),
        // Options of `proxy-mqtt`.
        (
            "filters/mqtt/src/auth.rs",
            1,
            Box::new(|b| proxy(&indent(b, 8))),
        ),
        // The family's README (its YAML, if any, is also checked whole by doc_configs.rs).
        ("filters/mqtt/README.md", 0, Box::new(str::to_string)),
        ("protocols/mqtt/README.md", 0, Box::new(str::to_string)),
    ];
    let registry = std::sync::Arc::new(flowgate::config::default_registry());
    for (file, count, wrap) in cases {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let blocks = yaml_blocks(&text);
        assert_eq!(
            blocks.len(),
            count,
            "{file}: YAML blocks (update this test)"
        );
        for (i, block) in blocks.iter().enumerate() {
            let config = wrap(block).replace("/etc/flowgate/", &format!("{}/", etc.display()));
            let loaded = flowgate::config::parse(&config, file, root, &registry);
            assert!(
                loaded.is_ok(),
                "{file}, YAML block {i}: {}\n{config}",
                loaded.err().unwrap()
            );
        }
    }
    let _ = std::fs::remove_dir_all(&etc);
}

/// The ```yaml blocks of a Markdown file or of a Rust file's doc comments.
fn yaml_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let t = line.trim_start();
        // Doc comments lose their marker and the one space after it.
        let l = ["//! ", "/// ", "//!", "///"]
            .iter()
            .find_map(|m| t.strip_prefix(m))
            .unwrap_or(line);
        match &mut current {
            None if l.trim_start().starts_with("```yaml") => current = Some(String::new()),
            Some(b) if l.trim_start().starts_with("```") => {
                blocks.push(std::mem::take(b));
                current = None;
            }
            Some(b) => {
                b.push_str(l);
                b.push('\n');
            }
            None => {}
        }
    }
    blocks
}
