//! `flowgate-sidecar`: a mesh sidecar driven by its controller over xDS.
//!
//! ```text
//! flowgate-sidecar run --controller https://HOST:PORT   the controller's ADS address
//!                      --trust FILE                      its trust bundle (PEM)
//!                      --token TOKEN | --token-file FILE the bootstrap token (first certificate)
//!                      --node POD.NAMESPACE              the node id
//!                      [--server-name NAME]              the name the controller's certificate carries
//!                      [--state DIR]                     the last good configuration and secrets
//!                      [--workers N]
//!                      [--admin ADDR|off]                GET /ready, /status, /clusters (127.0.0.1:15021)
//! flowgate-sidecar check --state DIR                     validate the kept configuration
//! ```
//!
//! See [`flowgate::sidecar`]: the certificate comes by CSR and is renewed at half its
//! lifetime; the configuration is the accepted subset of Envoy's xDS compiled into Flowgate
//! pipelines, NACKed with the reason when it cannot be served; the last good one is kept in
//! the state directory and served at once after a restart. Explicit proxy mode: traffic
//! capture is not built yet.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use flowgate::mesh::workload::Controller;
use flowgate::sidecar::{CONFIG_FILE, SidecarOptions};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EXAMPLES: &str = "\
Examples:
  flowgate-sidecar run --controller https://127.0.0.1:15010 --trust ca.pem \\
      --token-file bookbuyer.token --node bookbuyer-7d4f.bookbuyer --state /var/lib/flowgate-sidecar
  flowgate-sidecar check --state /var/lib/flowgate-sidecar";

/// `flowgate-sidecar`: the Flowgate mesh sidecar — certificate by CSR, configuration over
/// delta ADS from flowgate-controller (or any control plane serving the accepted subset of
/// Envoy's xDS).
#[derive(Debug, Parser)]
#[command(name = "flowgate-sidecar", version, about, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Follow the controller and serve what it sends until SIGTERM or SIGINT.
    Run {
        /// The controller's ADS and certificate service (`https://HOST:PORT`).
        #[arg(long)]
        controller: String,
        /// The controller's trust bundle (PEM): its certificate must chain to it.
        #[arg(long)]
        trust: PathBuf,
        /// The name the controller's certificate must carry.
        #[arg(long, default_value = "localhost")]
        server_name: String,
        /// The bootstrap token for the first certificate (`flowgate-controller token`).
        #[arg(long, conflicts_with = "token_file")]
        token: Option<String>,
        /// A file holding the bootstrap token (kept out of the process list).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// The node id: `<pod>.<namespace>`.
        #[arg(long)]
        node: String,
        /// Where the last good configuration and its secrets are kept.
        #[arg(long, default_value = ".flowgate-sidecar")]
        state: PathBuf,
        /// Worker threads (default: one per CPU).
        #[arg(long)]
        workers: Option<usize>,
        /// Where the admin endpoint listens (`GET /ready`, `/status`, `/clusters`; keep it
        /// on loopback), or `off`.
        #[arg(long, default_value = "127.0.0.1:15021")]
        admin: String,
    },
    /// Validate the configuration kept in a state directory: exit 0, or 2 with the error.
    Check {
        /// The state directory.
        #[arg(long, default_value = ".flowgate-sidecar")]
        state: PathBuf,
    },
}

/// mimalloc returns freed memory to the system lazily, when the thread that freed it
/// allocates again. The sidecar's control thread compiles and builds each configuration
/// (tens of MiB at a thousand services, freed once built) and then sleeps, so that memory
/// would stay with the process. mimalloc reads `MIMALLOC_PURGE_DELAY` when it starts: the
/// sidecar runs itself again with it at 0 (return at once) unless it is set — the
/// measured throughput is the same either way.
fn purge_freed_memory_at_once() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("MIMALLOC_PURGE_DELAY", "0")
        .exec();
    // `exec` returns only when it failed: go on as we are.
    eprintln!("flowgate-sidecar: cannot restart with MIMALLOC_PURGE_DELAY=0 ({err}); going on");
}

fn main() -> ExitCode {
    purge_freed_memory_at_once();
    flowgate::runner::init_logging();
    let registry = Arc::new(flowgate::config::default_registry());
    match Cli::parse().command {
        Command::Run {
            controller,
            trust,
            server_name,
            token,
            token_file,
            node,
            state,
            workers,
            admin,
        } => {
            let admin = match admin.as_str() {
                "off" => None,
                a => match a.parse() {
                    Ok(a) => Some(a),
                    Err(e) => {
                        eprintln!("flowgate-sidecar: --admin {a}: {e} (an IP:port, or `off`)");
                        return ExitCode::from(2);
                    }
                },
            };
            let trust_pem = match std::fs::read_to_string(&trust) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("flowgate-sidecar: --trust {}: {e}", trust.display());
                    return ExitCode::from(2);
                }
            };
            let token = match (token, token_file) {
                (Some(t), _) => Some(t),
                (None, Some(f)) => match std::fs::read_to_string(&f) {
                    Ok(t) => Some(t.trim().to_string()),
                    Err(e) => {
                        eprintln!("flowgate-sidecar: --token-file {}: {e}", f.display());
                        return ExitCode::from(2);
                    }
                },
                (None, None) => None,
            };
            let opts = SidecarOptions {
                controller: Controller {
                    url: controller,
                    server_name,
                    trust_pem,
                    token,
                },
                node,
                state,
                workers,
                admin,
            };
            match flowgate::sidecar::run(opts, registry) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("flowgate-sidecar: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check { state } => {
            match flowgate::config::load_with(&state.join(CONFIG_FILE), &registry) {
                Ok(c) => {
                    let _ = writeln!(
                        std::io::stdout().lock(),
                        "{}: {} listeners, valid",
                        state.join(CONFIG_FILE).display(),
                        c.listeners.len()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}
