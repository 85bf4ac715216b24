//! A watched file of backends.

use std::path::PathBuf;
use std::time::Duration;

use super::{Discovery, DiscoveryError, NextSet, poll_changes};
use crate::backend::Backend;

/// The largest file read.
const MAX_FILE: u64 = 4 * 1024 * 1024;

/// Backends from a file, re-read every `interval`: a JSON array of backend objects, or one
/// `host:port` or backend object per line (`#` starts a comment).
#[derive(Debug)]
pub struct FileDiscovery {
    path: PathBuf,
    interval: Duration,
    last: Option<Vec<Backend>>,
}

impl FileDiscovery {
    /// Watches `path`, re-reading it every `interval`.
    pub fn new(path: impl Into<PathBuf>, interval: Duration) -> Self {
        Self {
            path: path.into(),
            interval,
            last: None,
        }
    }
}

/// Parses a backend file's text.
pub fn parse(text: &str) -> Result<Vec<Backend>, DiscoveryError> {
    if text.trim_start().starts_with('[') {
        return Ok(serde_json::from_str(text)?);
    }
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        out.push(Backend::parse(line).ok_or(DiscoveryError::BadLine { line: i + 1 })?);
    }
    Ok(out)
}

/// Small files only (bounded by `MAX_FILE`): read without leaving the task.
async fn read(path: &std::path::Path) -> Result<Vec<Backend>, DiscoveryError> {
    let len = std::fs::metadata(path)?.len();
    if len > MAX_FILE {
        return Err(DiscoveryError::TooLarge {
            limit: MAX_FILE as usize,
        });
    }
    let text = std::fs::read_to_string(path)?;
    parse(&text)
}

impl Discovery for FileDiscovery {
    fn next(&mut self) -> NextSet<'_> {
        Box::pin(async move {
            let path = self.path.clone();
            poll_changes(&mut self.last, self.interval, || read(&path)).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        let lines = parse(
            "# upstreams\n127.0.0.1:80\n\n{\"address\":\"127.0.0.1:81\",\"weight\":3} # heavy\n",
        )
        .unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1].weight, 3);
        let json = parse(r#"[{"address":"127.0.0.1:80"},{"address":"[::1]:81"}]"#).unwrap();
        assert_eq!(json.len(), 2);
        assert!(matches!(
            parse("127.0.0.1:80\nbogus\n"),
            Err(DiscoveryError::BadLine { line: 2 })
        ));
    }
}
