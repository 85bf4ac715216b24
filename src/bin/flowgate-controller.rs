//! `flowgate-controller`: the mesh control plane's command line (issue 14, first part).
//!
//! ```text
//! flowgate-controller run --source dir:PATH      watch the manifests and serve them over ADS
//!                         [--listen ADDR]        (state-of-the-world; default 127.0.0.1:15010)
//! flowgate-controller check PATH                 validate a manifest directory (or file):
//!                                                exit 0, or 2 with every error at file:line
//! flowgate-controller token NS/SA [--ttl 24h]    print a bootstrap token for a service account
//!                         [--state DIR]
//! ```
//!
//! `run` serves what proxyless gRPC clients need (listeners, clusters, endpoints); sidecar
//! resources, mTLS to the controller, SDS, delta ADS and `status` are not built yet.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Parser, Subcommand};
use flowgate::mesh::token::TokenKey;
use flowgate::mesh::{MeshState, load_dir, parse_manifests};

const EXAMPLES: &str = "\
Examples:
  flowgate-controller run --source dir:examples/mesh       serve the demo's mesh over ADS on 127.0.0.1:15010
  flowgate-controller check examples/mesh                  validate the bookstore demo's manifests
  flowgate-controller token bookstore/bookstore            a bootstrap token (24 h) for that service account
  flowgate-controller token --ttl 10m --state /var/lib/flowgate bookbuyer/bookbuyer";

/// `flowgate-controller`: the Flowgate mesh control plane — watches mesh manifests and serves
/// them over xDS (ADS), checks manifests, makes bootstrap tokens.
#[derive(Debug, Parser)]
#[command(name = "flowgate-controller", version, about, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Watch a source of manifests and serve the mesh over ADS until SIGTERM or SIGINT. A
    /// broken change is logged with every error at file:line and the last good mesh stays
    /// served.
    Run {
        /// Where the manifests are: `dir:PATH`.
        #[arg(long)]
        source: String,
        /// Where ADS listens (plain gRPC).
        #[arg(long, default_value = "127.0.0.1:15010")]
        listen: std::net::SocketAddr,
    },
    /// Validate mesh manifests (a directory, read recursively, or one file): exit 0 with a
    /// summary, or 2 with every error at its file and line.
    Check {
        /// The directory or file.
        path: PathBuf,
    },
    /// Print a bootstrap token for service account NS/SA: a new workload presents it to get
    /// its first certificate.
    Token {
        /// `namespace/service-account`.
        account: String,
        /// How long the token is valid.
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        ttl: Duration,
        /// The controller's state directory (its token key is `token.key` there, made on
        /// first use).
        #[arg(long, default_value = ".flowgate-controller")]
        state: PathBuf,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    flowgate::vocabulary::duration::parse(s)
}

fn load(path: &Path) -> Result<MeshState, Vec<flowgate::mesh::ManifestError>> {
    if path.is_dir() {
        return load_dir(path);
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![flowgate::mesh::ManifestError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            message: format!("cannot read: {e}"),
        }]
    })?;
    MeshState::build(parse_manifests(&text, path)?)
}

/// `run`: the source feeds snapshots to the ADS server.
fn run(source: &str, listen: std::net::SocketAddr) -> ExitCode {
    use flowgate::mesh::xds::{AdsServer, Snapshot, grpc_resources, serve};
    use flowgate::mesh::{DirSource, Source, Update};
    use std::sync::Arc;
    let Some(dir) = source.strip_prefix("dir:") else {
        eprintln!("error: --source `{source}`: only `dir:PATH` is built so far");
        return ExitCode::from(2);
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: cannot listen on {listen}: {e}");
                return ExitCode::from(2);
            }
        };
        let (server, snapshots) = AdsServer::new();
        let mut src = DirSource::new(dir);
        tokio::spawn(async move {
            loop {
                match src.next().await {
                    Update::State(mesh) => {
                        let snap = Snapshot::new(grpc_resources(&mesh));
                        tracing::info!(
                            version = format!("{:016x}", mesh.version),
                            services = mesh.services.len(),
                            "mesh updated"
                        );
                        if snapshots.send(Arc::new(snap)).is_err() {
                            break;
                        }
                    }
                    Update::Rejected(errors) => {
                        for e in &errors {
                            tracing::error!("{e}");
                        }
                        tracing::error!(
                            errors = errors.len(),
                            "manifests refused; the last good mesh stays served"
                        );
                    }
                }
            }
        });
        tracing::info!(%listen, "ADS listening");
        let stop = async {
            use tokio::signal::unix::{SignalKind, signal};
            match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
                }
                _ => std::future::pending::<()>().await,
            }
        };
        match serve(listener, server, stop).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

fn main() -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    match Cli::parse().command {
        Command::Run { source, listen } => run(&source, listen),
        Command::Check { path } => match load(&path) {
            Ok(s) => {
                let _ = writeln!(
                    std::io::stdout().lock(),
                    "{}: ok — {} namespaces, {} services, {} service accounts, {} pods, {} traffic targets, {} traffic splits; permissive mode {}",
                    path.display(),
                    s.namespaces.len(),
                    s.services.len(),
                    s.service_accounts.len(),
                    s.pods.len(),
                    s.traffic_targets.len(),
                    s.traffic_splits.len(),
                    if s.mesh_config.traffic.enable_permissive_traffic_policy_mode {
                        "on"
                    } else {
                        "off"
                    }
                );
                ExitCode::SUCCESS
            }
            Err(errors) => {
                for e in &errors {
                    eprintln!("error: {e}");
                }
                ExitCode::from(2)
            }
        },
        Command::Token {
            account,
            ttl,
            state,
        } => {
            let Some((ns, sa)) = account.split_once('/') else {
                eprintln!("error: `{account}` is not NAMESPACE/SERVICE-ACCOUNT");
                return ExitCode::from(2);
            };
            let token = TokenKey::load_or_generate(&state.join("token.key"))
                .and_then(|k| k.issue(ns, sa, ttl, SystemTime::now()));
            match token {
                Ok(t) => {
                    let _ = writeln!(std::io::stdout().lock(), "{t}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}
