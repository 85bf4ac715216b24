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
//!                      [--ebpf-capture CGROUP]           capture with eBPF instead of iptables (root)
//!                      [--ebpf-netns FILE] [--exclude-inbound-ports P,…]
//!                      [--ebpf-pin DIR|off]              (/sys/fs/bpf/flowgate-sidecar/NODE)
//! flowgate-sidecar check --state DIR                     validate the kept configuration
//! flowgate-sidecar init [--proxy-uid N] [--proxy-gid N]  capture the network namespace's
//!                       [--exclude-inbound-ports P,…]     TCP traffic with iptables
//!                       [--exclude-outbound-ports P,…]    (outbound → 15001, inbound → 15006)
//!                       [--exclude-outbound-cidrs C,…]
//!                       [--dry-run | --remove]
//! ```
//!
//! See [`flowgate::sidecar`]: the certificate comes by CSR and is renewed at half its
//! lifetime; the configuration is the accepted subset of Envoy's xDS compiled into Flowgate
//! pipelines, NACKed with the reason when it cannot be served; the last good one is kept in
//! the state directory and served at once after a restart. A pod annotated
//! `flowgate.io/capture: redirect` has its traffic captured: with iptables
//! ([`flowgate::sidecar::capture`]: run `init` in its network namespace, then the sidecar as
//! the proxy user) or with eBPF (`--ebpf-capture` with the workload's cgroup: the sidecar,
//! root, steers connections itself; built with the `ebpf` feature); otherwise the workload
//! sends to its sidecar explicitly.

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
  flowgate-sidecar check --state /var/lib/flowgate-sidecar
  ip netns exec bookbuyer flowgate-sidecar init --proxy-uid 1337";

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
#[allow(
    clippy::large_enum_variant,
    reason = "parsed once per process: boxing `Run` would buy nothing"
)]
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
        /// Capture the workload with eBPF instead of iptables: outbound TCP connects from
        /// this cgroup v2 directory are steered to 15001 and inbound connections in this
        /// network namespace to 15006 (root; the `ebpf` feature; no `init`).
        #[arg(long, value_name = "CGROUP")]
        ebpf_capture: Option<PathBuf>,
        /// The network namespace eBPF capture takes inbound connections in (its file).
        #[arg(long, default_value = "/proc/self/ns/net", requires = "ebpf_capture")]
        ebpf_netns: PathBuf,
        /// Inbound ports eBPF capture leaves alone (comma-separated).
        #[arg(long, value_delimiter = ',', requires = "ebpf_capture")]
        exclude_inbound_ports: Vec<u16>,
        /// Where eBPF capture is pinned (a directory on a bpffs mount; default
        /// /sys/fs/bpf/flowgate-sidecar/NODE): the workload stays captured, its traffic
        /// refused, while the sidecar is down. `off`: capture goes with the sidecar.
        #[arg(long, requires = "ebpf_capture")]
        ebpf_pin: Option<String>,
    },
    /// Capture this network namespace's TCP traffic for the sidecar with iptables (nat
    /// table): what the workload dials goes to 15001, what arrives goes to 15006. The
    /// sidecar must then run as the proxy user (or group), whose connections pass.
    Init {
        /// The sidecar's user: its connections are not captured.
        #[arg(long, default_value_t = flowgate::sidecar::capture::PROXY_UID)]
        proxy_uid: u32,
        /// The sidecar's group: its connections are not captured either.
        #[arg(long)]
        proxy_gid: Option<u32>,
        /// Where outbound connections go.
        #[arg(long, default_value_t = 15001)]
        outbound_port: u16,
        /// Where inbound connections go.
        #[arg(long, default_value_t = 15006)]
        inbound_port: u16,
        /// Inbound ports left alone (comma-separated).
        #[arg(long, value_delimiter = ',')]
        exclude_inbound_ports: Vec<u16>,
        /// Outbound destination ports left alone (comma-separated).
        #[arg(long, value_delimiter = ',')]
        exclude_outbound_ports: Vec<u16>,
        /// Outbound destinations left alone (comma-separated IPv4 prefixes).
        #[arg(long, value_delimiter = ',')]
        exclude_outbound_cidrs: Vec<String>,
        /// Print the rules instead of setting them.
        #[arg(long, conflicts_with = "remove")]
        dry_run: bool,
        /// Take the rules away.
        #[arg(long)]
        remove: bool,
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
            ebpf_capture,
            ebpf_netns,
            exclude_inbound_ports,
            ebpf_pin,
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
            let pin_dir = match ebpf_pin.as_deref() {
                Some("off") => None,
                Some(dir) => Some(PathBuf::from(dir)),
                None => Some(PathBuf::from("/sys/fs/bpf/flowgate-sidecar").join(&node)),
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
                ebpf: ebpf_capture.map(|cgroup| flowgate::sidecar::EbpfCapture {
                    netns: ebpf_netns,
                    exclude_inbound_ports,
                    pin: pin_dir,
                    ..flowgate::sidecar::EbpfCapture::new(cgroup)
                }),
            };
            match flowgate::sidecar::run(opts, registry) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("flowgate-sidecar: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Init {
            proxy_uid,
            proxy_gid,
            outbound_port,
            inbound_port,
            exclude_inbound_ports,
            exclude_outbound_ports,
            exclude_outbound_cidrs,
            dry_run,
            remove,
        } => {
            use flowgate::sidecar::capture;
            let c = capture::Capture {
                outbound_port,
                inbound_port,
                proxy_uid: Some(proxy_uid),
                proxy_gid,
                exclude_inbound_ports,
                exclude_outbound_ports,
                exclude_outbound_cidrs,
            };
            let done = if dry_run {
                capture::describe(&c).map(|text| {
                    let _ = std::io::stdout().lock().write_all(text.as_bytes());
                })
            } else if remove {
                capture::remove()
            } else {
                capture::install(&c)
            };
            match done {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("flowgate-sidecar init: {e}");
                    ExitCode::from(2)
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
