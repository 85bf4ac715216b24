//! Where mesh resources come from: one [`Source`] trait, and [`DirSource`], a directory of
//! manifests (the embedded default), watched.
//!
//! A source yields [`Update`]s: a whole new [`MeshState`], or the errors that kept one
//! from being built. A consumer keeps serving its last good state on `Rejected` and shows
//! the errors (the controller's `status`); nothing is ever half applied.

use std::future::Future;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::load::{Located, ManifestError, Resource, parse_manifests};
use crate::state::MeshState;

/// What a source says next.
#[derive(Clone, Debug)]
pub enum Update {
    /// A new state (different from the last one yielded).
    State(Arc<MeshState>),
    /// The input changed but is broken: every problem, each at its file and line. The
    /// last good state stays in force.
    Rejected(Vec<ManifestError>),
}

/// The future [`Source::next`] returns.
pub type NextUpdate<'a> = Pin<Box<dyn Future<Output = Update> + Send + 'a>>;

/// A source of mesh resources: the directory of manifests, etcd, or the Kubernetes API.
pub trait Source: Send {
    /// The current state (or its errors) on the first call; afterwards, the next change.
    fn next(&mut self) -> NextUpdate<'_>;
}

/// The most files a directory source reads.
pub const MAX_FILES: usize = 10_000;

/// Reads every `*.yaml` / `*.yml` file under `dir` (recursively, in name order; hidden
/// files and directories — editors' swap files — are skipped) and builds the state.
pub fn load_dir(dir: &Path) -> Result<MeshState, Vec<ManifestError>> {
    let (files, errors) = read_dir(dir);
    build_from(&files, errors)
}

/// The state `files` describe, or every error (`errors`, the files' own).
pub(crate) fn build_from(
    files: &[(PathBuf, String)],
    mut errors: Vec<ManifestError>,
) -> Result<MeshState, Vec<ManifestError>> {
    let mut resources: Vec<Located<Resource>> = Vec::new();
    for (path, text) in files {
        match parse_manifests(text, path) {
            Ok(r) => resources.extend(r),
            Err(e) => errors.extend(e),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    MeshState::build(resources)
}

/// What a source yields for a rebuilt `result`: a state only when its version differs from
/// `last_version` (then recorded), every rejection (which forgets it, so the next good
/// state is yielded even if it equals the last one).
pub(crate) fn yielded(
    result: Result<MeshState, Vec<ManifestError>>,
    last_version: &mut Option<u64>,
) -> Option<Update> {
    match result {
        Ok(state) => {
            if *last_version == Some(state.version) {
                return None;
            }
            *last_version = Some(state.version);
            Some(Update::State(Arc::new(state)))
        }
        Err(errors) => {
            *last_version = None;
            Some(Update::Rejected(errors))
        }
    }
}

/// The manifest files under `dir` and their contents, in path order, and the errors of
/// those that could not be read.
fn read_dir(dir: &Path) -> (Vec<(PathBuf, String)>, Vec<ManifestError>) {
    let mut paths = Vec::new();
    let mut errors = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) => {
                errors.push(file_error(&d, format!("cannot read the directory: {e}")));
                continue;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let hidden = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_none_or(|n| n.starts_with('.'));
            if hidden {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| e == "yaml" || e == "yml")
            {
                paths.push(path);
            }
        }
    }
    paths.sort();
    if paths.len() > MAX_FILES {
        errors.push(file_error(
            dir,
            format!("more than {MAX_FILES} manifest files"),
        ));
        paths.truncate(MAX_FILES);
    }
    let mut files = Vec::with_capacity(paths.len());
    for p in paths {
        match std::fs::metadata(&p) {
            Ok(m) if m.len() > crate::load::MAX_FILE_BYTES as u64 => {
                errors.push(file_error(
                    &p,
                    format!("larger than {} MiB", crate::load::MAX_FILE_BYTES >> 20),
                ));
                continue;
            }
            _ => {}
        }
        match std::fs::read_to_string(&p) {
            Ok(t) => files.push((p, t)),
            Err(e) => errors.push(file_error(&p, format!("cannot read: {e}"))),
        }
    }
    (files, errors)
}

fn file_error(path: &Path, message: String) -> ManifestError {
    ManifestError {
        file: path.to_path_buf(),
        line: 0,
        column: 0,
        message,
    }
}

/// A fingerprint of every manifest file's path and contents.
fn fingerprint(files: &[(PathBuf, String)], errors: &[ManifestError]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    files.hash(&mut h);
    errors.len().hash(&mut h);
    h.finish()
}

/// A directory of manifests, watched: [`Source::next`] yields the state at once, then
/// waits for the files' contents to change (checked every `interval`, 1 s by default;
/// polling works on every file system and needs no watcher) and yields the new state or
/// its errors. A change that leaves the contents as they were yields nothing.
#[derive(Debug)]
pub struct DirSource {
    dir: PathBuf,
    interval: Duration,
    seen: Option<u64>,
    last_version: Option<u64>,
}

impl DirSource {
    /// Watches `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DirSource {
            dir: dir.into(),
            interval: Duration::from_secs(1),
            seen: None,
            last_version: None,
        }
    }

    /// Checks for changes every `interval` (at least 10 ms).
    #[must_use]
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(10));
        self
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    async fn next_update(&mut self) -> Update {
        loop {
            let (files, errors) = read_dir(&self.dir);
            let fp = fingerprint(&files, &errors);
            if self.seen != Some(fp) {
                self.seen = Some(fp);
                // Once fixed, the state is yielded again even if it equals the last good
                // one, so the consumer learns the errors are gone.
                if let Some(update) = yielded(build_from(&files, errors), &mut self.last_version) {
                    return update;
                }
            }
            tokio::time::sleep(self.interval).await;
        }
    }
}

impl Source for DirSource {
    fn next(&mut self) -> NextUpdate<'_> {
        Box::pin(self.next_update())
    }
}
