//! The directory source on the bookstore demo's manifests (`examples/mesh/`): the state
//! they build, and what a watched copy yields as files change — a new state, or the errors
//! at their file and line while the last good state stays with the caller. Files only,
//! no sockets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use flowgate_mesh::{DirSource, MeshState, Source, Update, load_dir};

fn demo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/mesh")
}

/// A fresh copy of the demo's manifests in the temp directory, removed on drop.
struct Copy(PathBuf);

impl Copy {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("flowgate-mesh-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for e in std::fs::read_dir(demo()).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
        }
        Copy(dir)
    }

    fn edit(&self, file: &str, from: &str, to: &str) {
        let p = self.0.join(file);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains(from), "{file} has no {from:?}");
        std::fs::write(&p, text.replace(from, to)).unwrap();
    }
}

impl Drop for Copy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn next(src: &mut DirSource) -> Update {
    tokio::time::timeout(Duration::from_secs(10), src.next())
        .await
        .expect("the source answers within 10 s")
}

fn state(u: Update) -> std::sync::Arc<MeshState> {
    match u {
        Update::State(s) => s,
        Update::Rejected(e) => panic!("rejected: {e:?}"),
    }
}

fn split_weights(s: &MeshState) -> Vec<(String, u32)> {
    let sp = &s.traffic_splits[&("bookstore".to_string(), "bookstore-split".to_string())];
    sp.value
        .spec
        .backends
        .iter()
        .map(|b| (b.service.clone(), b.weight))
        .collect()
}

#[test]
fn the_bookstore_demo_builds() {
    let s = load_dir(&demo()).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(s.namespaces.len(), 5);
    assert_eq!(s.services.len(), 4);
    assert_eq!(s.service_accounts.len(), 4);
    assert_eq!(s.pods.len(), 5);
    assert_eq!(s.traffic_targets.len(), 2);
    assert_eq!(s.http_route_groups.len(), 2);
    assert!(s.mesh_config.traffic.enable_permissive_traffic_policy_mode);
    let store = &s.services[&("bookstore".to_string(), "bookstore".to_string())].value;
    let mut behind: Vec<&str> = s
        .pods_of(store)
        .map(|p| p.value.metadata.name.as_str())
        .collect();
    behind.sort();
    assert_eq!(behind, ["bookstore-v1", "bookstore-v2"]);
    assert_eq!(
        s.spiffe_id("bookbuyer", "bookbuyer"),
        "spiffe://cluster.local/ns/bookbuyer/sa/bookbuyer"
    );
    assert_eq!(
        split_weights(&s),
        [("bookstore-v1".into(), 100), ("bookstore-v2".into(), 0)]
    );
    // The same files give the same version.
    assert_eq!(load_dir(&demo()).unwrap().version, s.version);
}

#[tokio::test]
async fn a_watched_directory_yields_each_change_and_refuses_broken_ones_whole() {
    let copy = Copy::new("watch");
    let mut src = DirSource::new(&copy.0).interval(Duration::from_millis(20));
    let first = state(next(&mut src).await);
    assert_eq!(split_weights(&first)[0].1, 100);

    // A weight change: a new state with the new weights.
    copy.edit("split.yaml", "weight: 100", "weight: 50");
    copy.edit("split.yaml", "weight: 0", "weight: 50");
    let second = state(next(&mut src).await);
    assert_eq!(
        split_weights(&second),
        [("bookstore-v1".into(), 50), ("bookstore-v2".into(), 50)]
    );
    assert_ne!(second.version, first.version);

    // A TrafficTarget naming a service account nobody defined: refused at its line, with
    // nothing of the change applied (the caller keeps `second`).
    copy.edit(
        "policy.yaml",
        "name: bookbuyer, namespace: bookbuyer",
        "name: bookreader, namespace: bookbuyer",
    );
    match next(&mut src).await {
        Update::Rejected(e) => {
            assert_eq!(e.len(), 1, "{e:?}");
            assert!(e[0].file.ends_with("policy.yaml"), "{}", e[0]);
            assert_eq!(e[0].line, 12, "{}", e[0]);
            assert!(
                e[0].message
                    .contains("source service account `bookbuyer/bookreader` is not defined"),
                "{}",
                e[0]
            );
        }
        Update::State(_) => panic!("a dangling TrafficTarget was accepted"),
    }

    // Fixed again: the state comes back (the same as before the break).
    copy.edit(
        "policy.yaml",
        "name: bookreader, namespace: bookbuyer",
        "name: bookbuyer, namespace: bookbuyer",
    );
    let third = state(next(&mut src).await);
    assert_eq!(third.version, second.version);

    // Malformed YAML and an all-zero split, each refused at its file and line.
    std::fs::write(
        copy.0.join("broken.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: [\n",
    )
    .unwrap();
    match next(&mut src).await {
        Update::Rejected(e) => assert!(
            e[0].file.ends_with("broken.yaml") && e[0].line >= 1,
            "{e:?}"
        ),
        Update::State(_) => panic!("malformed YAML was accepted"),
    }
    std::fs::remove_file(copy.0.join("broken.yaml")).unwrap();
    let _ = state(next(&mut src).await);
    copy.edit(
        "split.yaml",
        "weight: 50 }\n    - { service: bookstore-v2, weight: 50",
        "weight: 0 }\n    - { service: bookstore-v2, weight: 0",
    );
    match next(&mut src).await {
        Update::Rejected(e) => {
            assert!(e[0].message.contains("every weight is zero"), "{e:?}");
            assert_eq!(e[0].line, 3, "{}", e[0]);
        }
        Update::State(_) => panic!("an all-zero split was accepted"),
    }

    // An editor's swap file or a file of another type changes nothing.
    std::fs::write(copy.0.join(".split.yaml.swp"), "garbage: [").unwrap();
    std::fs::write(copy.0.join("notes.txt"), "garbage: [").unwrap();
    copy.edit(
        "split.yaml",
        "weight: 0 }\n    - { service: bookstore-v2, weight: 0",
        "weight: 100 }\n    - { service: bookstore-v2, weight: 0",
    );
    let back = state(next(&mut src).await);
    assert_eq!(back.version, first.version);
}
