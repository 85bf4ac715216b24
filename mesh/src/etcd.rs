//! Mesh manifests in etcd v3: every key under a prefix holds one manifest file (YAML, one
//! or more documents), and errors name the key as the file (`/flowgate/mesh/shop.yaml:3:1:
//! …`). The keys are read with a range, then followed with a watch from the revision after
//! it (etcd's JSON gateway, through [`flowgate_lb::discovery::EtcdClient`]).
//!
//! Every change rebuilds the whole state, all or nothing: a broken key is
//! [`Update::Rejected`] and the last good state stays in force. etcd unreachable (or a
//! watch that fails) is reported once as a rejection naming the store, then retried with
//! backoff up to 5 s; nothing is yielded until the keys can be read again.
//!
//! ```no_run
//! use std::time::Duration;
//! use flowgate_lb::discovery::EtcdClient;
//! use flowgate_mesh::{EtcdSource, Source, Update};
//!
//! # async fn watch() {
//! let client = EtcdClient::new("127.0.0.1:2379".parse().unwrap(), Duration::from_secs(5));
//! let mut source = EtcdSource::new(client, "/flowgate/mesh/");
//! while let Update::State(mesh) = source.next().await {
//!     println!("mesh version {:x}", mesh.version);
//! }
//! # }
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use flowgate_lb::discovery::{EtcdClient, EtcdWatch, WatchBatch, WatchEvent};

use crate::load::{Located, ManifestError, Resource, parse_manifests};
use crate::source::{MAX_FILES, NextUpdate, Source, Update, yielded};
use crate::state::MeshState;

/// The manifests under an etcd prefix, watched.
pub struct EtcdSource {
    client: EtcdClient,
    prefix: Vec<u8>,
    /// Key → value, as etcd holds them.
    kvs: BTreeMap<Vec<u8>, Vec<u8>>,
    revision: Option<i64>,
    watch: Option<EtcdWatch>,
    last_version: Option<u64>,
    /// The store's failure was reported and nothing has been read since.
    reported_down: bool,
    backoff: Duration,
}

impl std::fmt::Debug for EtcdSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdSource")
            .field("prefix", &String::from_utf8_lossy(&self.prefix))
            .field("keys", &self.kvs.len())
            .field("revision", &self.revision)
            .finish_non_exhaustive()
    }
}

const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl EtcdSource {
    /// Watches the keys under `prefix`.
    pub fn new(client: EtcdClient, prefix: impl Into<Vec<u8>>) -> Self {
        EtcdSource {
            client,
            prefix: prefix.into(),
            kvs: BTreeMap::new(),
            revision: None,
            watch: None,
            last_version: None,
            reported_down: false,
            backoff: MIN_BACKOFF,
        }
    }

    /// The state the keys held now describe: `Some` when it differs from the last yielded
    /// one (or is broken).
    fn build(&mut self) -> Option<Update> {
        yielded(build(&self.kvs), &mut self.last_version)
    }

    /// One step: `Some` when there is something to yield.
    async fn step(&mut self) -> Result<Option<Update>, flowgate_lb::discovery::DiscoveryError> {
        let Some(revision) = self.revision else {
            let (revision, kvs) = self.client.range_prefix(&self.prefix).await?;
            self.kvs = kvs.into_iter().collect();
            self.revision = Some(revision);
            self.backoff = MIN_BACKOFF;
            // Read again after a failure: yield the state even if unchanged, so the
            // consumer learns the store is back.
            if std::mem::take(&mut self.reported_down) {
                self.last_version = None;
            }
            return Ok(self.build());
        };
        let watch = match &mut self.watch {
            Some(w) => w,
            None => {
                let w = self.client.watch_prefix(&self.prefix, revision + 1).await?;
                self.watch.insert(w)
            }
        };
        match watch.next().await? {
            Some(WatchBatch::Events { revision, events }) => {
                if revision > 0 {
                    self.revision = Some(revision);
                }
                if events.is_empty() {
                    return Ok(None);
                }
                for ev in events {
                    match ev {
                        WatchEvent::Put { key, value, .. } => {
                            self.kvs.insert(key, value);
                        }
                        WatchEvent::Delete { key } => {
                            self.kvs.remove(&key);
                        }
                    }
                }
                Ok(self.build())
            }
            Some(WatchBatch::Restart) | None => {
                // Compacted, cancelled or closed: read the range again.
                self.watch = None;
                self.revision = None;
                Ok(None)
            }
        }
    }

    async fn next_update(&mut self) -> Update {
        loop {
            match self.step().await {
                Ok(Some(update)) => return update,
                Ok(None) => {}
                Err(e) => {
                    self.watch = None;
                    self.revision = None;
                    tracing::warn!(
                        prefix = %String::from_utf8_lossy(&self.prefix),
                        "etcd: {e}; retrying in {} ms",
                        self.backoff.as_millis()
                    );
                    let delay = self.backoff;
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                    if !self.reported_down {
                        self.reported_down = true;
                        self.last_version = None;
                        tokio::time::sleep(delay).await;
                        return Update::Rejected(vec![ManifestError {
                            file: PathBuf::from(format!(
                                "etcd:{}",
                                String::from_utf8_lossy(&self.prefix)
                            )),
                            line: 0,
                            column: 0,
                            message: format!(
                                "cannot read the store ({e}); the last good state stays in force"
                            ),
                        }]);
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

impl Source for EtcdSource {
    fn next(&mut self) -> NextUpdate<'_> {
        Box::pin(self.next_update())
    }
}

/// The state the keys describe, each key parsed as one manifest file named by the key.
fn build(kvs: &BTreeMap<Vec<u8>, Vec<u8>>) -> Result<MeshState, Vec<ManifestError>> {
    let mut errors = Vec::new();
    let mut resources: Vec<Located<Resource>> = Vec::new();
    if kvs.len() > MAX_FILES {
        errors.push(ManifestError {
            file: PathBuf::from("etcd"),
            line: 0,
            column: 0,
            message: format!("more than {MAX_FILES} keys under the prefix"),
        });
    }
    for (key, value) in kvs.iter().take(MAX_FILES) {
        let file = PathBuf::from(String::from_utf8_lossy(key).into_owned());
        let error = |message: String| ManifestError {
            file: file.clone(),
            line: 0,
            column: 0,
            message,
        };
        if value.len() > crate::load::MAX_FILE_BYTES {
            errors.push(error(format!(
                "larger than {} MiB",
                crate::load::MAX_FILE_BYTES >> 20
            )));
            continue;
        }
        let Ok(text) = std::str::from_utf8(value) else {
            errors.push(error("not UTF-8 text".into()));
            continue;
        };
        match parse_manifests(text, &file) {
            Ok(r) => resources.extend(r),
            Err(e) => errors.extend(e),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    MeshState::build(resources)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn keys_are_files_and_errors_name_them() {
        let mut kvs = BTreeMap::new();
        kvs.insert(
            b"/m/ns.yaml".to_vec(),
            b"apiVersion: v1\nkind: Namespace\nmetadata: { name: shop }\n".to_vec(),
        );
        let state = build(&kvs).unwrap();
        assert!(state.has_namespace("shop"));
        kvs.insert(
            b"/m/bad.yaml".to_vec(),
            b"apiVersion: v1\nkind: Nonsense\nmetadata: { name: x }\n".to_vec(),
        );
        let errors = build(&kvs).unwrap_err();
        assert_eq!(errors[0].file, PathBuf::from("/m/bad.yaml"));
        assert_eq!(
            (errors[0].line, errors[0].column),
            (2, 7),
            "the kind's place"
        );
        kvs.insert(b"/m/bad.yaml".to_vec(), vec![0xff, 0xfe]);
        assert!(build(&kvs).unwrap_err()[0].message.contains("UTF-8"));
    }
}
