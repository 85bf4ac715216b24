//! `Dump` logs the events that pass; `Tee` appends the bytes that pass to a file.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use flowgate_pipeline::registry::{BuildContext, ConfigError, FilterConfig};
use flowgate_pipeline::{Context, Description, Event, Filter, Transform};
use serde::{Deserialize, Serialize};

/// Configuration of [`Dump`] (`dump:` in YAML).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DumpConfig {
    /// A label put in front of every logged event. Default empty.
    #[serde(default)]
    pub prefix: String,
    /// How many payload bytes to show per Data event. Default 64.
    #[serde(default = "default_preview")]
    pub preview: usize,
}

fn default_preview() -> usize {
    64
}

impl FilterConfig for DumpConfig {
    fn build(self: Box<Self>, _cx: &BuildContext) -> Result<Arc<dyn Filter>, ConfigError> {
        Ok(Arc::new(Dump { config: *self }))
    }
}

/// Logs every event that passes (at `info` level, target `flowgate::dump`) and passes it on
/// unchanged: the peer, the event kind, and for data its length and the first bytes.
pub struct Dump {
    config: DumpConfig,
}

impl Dump {
    /// A dump with a prefix.
    pub fn new(prefix: impl Into<String>) -> Self {
        Dump {
            config: DumpConfig {
                prefix: prefix.into(),
                preview: default_preview(),
            },
        }
    }
}

impl Filter for Dump {
    fn describe(&self) -> Description {
        Description::filter("dump").options(&self.config)
    }

    fn transform(&self, cx: &Context) -> Option<Box<dyn Transform>> {
        let prefix: Arc<str> = self.config.prefix.as_str().into();
        let preview = self.config.preview;
        let peer = cx.conn().peer;
        Some(Box::new(move |ev: Event, out: &mut dyn FnMut(Event)| {
            match &ev {
                Event::Data(b) => {
                    let shown = String::from_utf8_lossy(&b[..b.len().min(preview)]).into_owned();
                    tracing::info!(target: "flowgate::dump", prefix = &*prefix, ?peer, len = b.len(), data = %shown.escape_debug(), "Data");
                }
                Event::StreamEnd(Some(e)) => {
                    tracing::info!(target: "flowgate::dump", prefix = &*prefix, ?peer, error = %e, "StreamEnd");
                }
                other => {
                    tracing::info!(target: "flowgate::dump", prefix = &*prefix, ?peer, "{}", other.kind_name());
                }
            }
            out(ev)
        }))
    }
}

/// Configuration of [`Tee`] (`tee:` in YAML).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TeeConfig {
    /// The file the bytes are appended to (relative to the config file).
    pub path: PathBuf,
    /// How many chunks may wait for the writer thread before new ones are dropped (and
    /// counted). Default 4096.
    #[serde(default = "default_queue")]
    pub queue: usize,
}

fn default_queue() -> usize {
    4096
}

impl FilterConfig for TeeConfig {
    fn build(self: Box<Self>, cx: &BuildContext) -> Result<Arc<dyn Filter>, ConfigError> {
        let path = cx.path(&self.path);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| {
                ConfigError::new("path", format!("cannot open {}: {e}", path.display()))
            })?;
        Tee::with_writer(
            Box::new(file),
            self.queue.max(1),
            TeeConfig {
                path,
                queue: self.queue,
            },
        )
        .map(|t| Arc::new(t) as Arc<dyn Filter>)
        .map_err(|e| ConfigError::new("path", format!("cannot start the writer thread: {e}")))
    }
}

/// Appends a copy of every Data chunk that passes to a file, and passes the stream on
/// unchanged.
///
/// Writing happens on a background thread so a slow disk never stalls a worker; when the
/// queue to it is full, chunks are dropped from the copy (never from the stream) and
/// counted in [`Tee::dropped`].
pub struct Tee {
    config: TeeConfig,
    tx: Mutex<SyncSender<Bytes>>,
    dropped: Arc<AtomicU64>,
}

impl Tee {
    /// A tee that appends to `path`.
    pub fn to_file(path: impl Into<PathBuf>) -> std::io::Result<Self> {
        let path = path.into();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        Self::with_writer(
            Box::new(file),
            default_queue(),
            TeeConfig {
                path,
                queue: default_queue(),
            },
        )
    }

    fn with_writer(
        mut w: Box<dyn Write + Send>,
        queue: usize,
        config: TeeConfig,
    ) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel::<Bytes>(queue);
        std::thread::Builder::new()
            .name("flowgate-tee".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    // Write everything queued, then flush once.
                    for b in std::iter::once(first).chain(rx.try_iter()) {
                        if let Err(e) = w.write_all(&b) {
                            tracing::warn!(error = %e, "tee write failed");
                        }
                    }
                    let _ = w.flush();
                }
                let _ = w.flush();
            })?;
        Ok(Tee {
            config,
            tx: Mutex::new(tx),
            dropped: Arc::default(),
        })
    }

    /// How many chunks were left out of the copy because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Filter for Tee {
    fn describe(&self) -> Description {
        Description::filter("tee").options(&self.config)
    }

    fn transform(&self, _cx: &Context) -> Option<Box<dyn Transform>> {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let dropped = self.dropped.clone();
        Some(Box::new(move |ev: Event, out: &mut dyn FnMut(Event)| {
            if let Event::Data(b) = &ev
                && let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
                    tx.try_send(b.clone())
            {
                dropped.fetch_add(1, Ordering::Relaxed);
            }
            out(ev)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowgate_pipeline::testing;

    #[test]
    fn tee_copies_bytes_and_passes_them_on() {
        let dir = std::env::temp_dir().join(format!("flowgate-tee-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("copy.bin");
        let _ = std::fs::remove_file(&path);
        let tee = Tee::to_file(&path).unwrap();
        let out = testing::run_blocking(&tee, vec!["abc".into(), "def".into(), Event::END]);
        assert_eq!(testing::data_of(&out), b"abcdef");
        drop(tee);
        for _ in 0..100 {
            if std::fs::read(&path).map(|v| v.len()).unwrap_or(0) == 6 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(std::fs::read(&path).unwrap(), b"abcdef");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn dump_passes_events_unchanged() {
        let out = testing::run_blocking(&Dump::new("t"), vec!["x".into(), Event::END]);
        assert_eq!(testing::kinds_of(&out), ["Data", "StreamEnd"]);
    }
}
