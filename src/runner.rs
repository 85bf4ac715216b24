//! Running a configuration file: start the workers, reload on SIGHUP or when the file
//! changes, drain on SIGTERM/SIGINT.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use flowgate_pipeline::registry::Registry;
use flowgate_pipeline::server::{Server, ServerError};
use tokio::signal::unix::{SignalKind, signal};

use crate::config::{self, Config, ConfigFileError};

/// How long a changed file must stay the same before it is reloaded.
const SETTLE: Duration = Duration::from_millis(200);

/// Why `run` stopped with a failure.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigFileError),
    /// The server could not start or bind.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// Signal handling or the control runtime could not be set up.
    #[error("cannot set up the control loop: {0}")]
    Io(#[from] std::io::Error),
}

/// How [`run`] watches its file.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Overrides the file's `workers`.
    pub workers: Option<usize>,
    /// How often the file is checked for changes (`None`: only SIGHUP reloads).
    pub watch_interval: Option<Duration>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            workers: None,
            watch_interval: Some(Duration::from_secs(1)),
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), with colours on a terminal.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
}

/// Loads a configuration file into listeners and pipelines (the first load and every
/// reload).
pub type Loader = dyn Fn(&Path) -> Result<Config, ConfigFileError>;

/// Runs the configuration in `path` until SIGTERM or SIGINT, then drains.
pub fn run(path: &Path, registry: Arc<Registry>, opts: RunOptions) -> Result<(), RunError> {
    run_with(path, &move |p: &Path| config::load_with(p, &registry), opts)
}

/// Like [`run`], with the file read by `load` (the gateway binary passes its compiler).
pub fn run_with(path: &Path, load: &Loader, opts: RunOptions) -> Result<(), RunError> {
    let cfg = load(path)?;
    let mut builder = Server::builder().drain_timeout(cfg.drain_timeout);
    if let Some(n) = opts.workers.or(cfg.workers) {
        builder = builder.workers(n);
    }
    let server = builder.start()?;
    let listening: Vec<String> = cfg
        .listeners
        .iter()
        .map(|(l, p)| format!("{} -> {}", l.listen, p.name()))
        .collect();
    server.apply(cfg.listeners)?;
    tracing::info!(workers = server.workers(), listeners = ?listening, "flowgate is running");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let path: PathBuf = path.to_path_buf();
    let result = rt.block_on(async {
        let mut hup = signal(SignalKind::hangup())?;
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut last = std::fs::read(&path).ok();
        let watch = opts.watch_interval.unwrap_or(Duration::from_secs(3600));
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    last = std::fs::read(&path).ok();
                    reload(&server, &path, load, "SIGHUP");
                }
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = tokio::time::sleep(watch), if opts.watch_interval.is_some() => {
                    let now = std::fs::read(&path).ok();
                    if now.is_some() && now != last {
                        // A file being written (truncate, then write) can be caught half
                        // way: reload only once two reads a moment apart agree.
                        tokio::time::sleep(SETTLE).await;
                        if std::fs::read(&path).ok() == now {
                            last = now;
                            reload(&server, &path, load, "file change");
                        }
                    }
                }
            }
        }
        Ok::<(), std::io::Error>(())
    });
    tracing::info!(
        connections = server.connections(),
        "shutting down: draining live connections"
    );
    server.shutdown();
    result.map_err(RunError::Io)
}

/// Loads the file again and applies it; a bad file keeps the running configuration.
fn reload(server: &Server, path: &Path, load: &Loader, why: &str) {
    match load(path) {
        Err(e) => {
            tracing::error!(reason = why, error = %e, "reload refused; the running configuration stays")
        }
        Ok(cfg) => {
            if cfg.workers.is_some_and(|n| n != server.workers()) {
                tracing::warn!("`workers` changes take effect on restart only");
            }
            match server.apply(cfg.listeners) {
                Ok(()) => tracing::info!(reason = why, "configuration reloaded"),
                Err(e) => {
                    tracing::error!(reason = why, error = %e, "reload failed; the running configuration stays")
                }
            }
        }
    }
}
