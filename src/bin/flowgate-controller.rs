//! `flowgate-controller`: the mesh control plane's command line (issue 14, first part).
//!
//! ```text
//! flowgate-controller check PATH                 validate a manifest directory (or file):
//!                                                exit 0, or 2 with every error at file:line
//! flowgate-controller token NS/SA [--ttl 24h]    print a bootstrap token for a service account
//!                         [--state DIR]
//! ```
//!
//! `run` (serving xDS to sidecars) and `status` come with the xDS server; they are not built
//! yet.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Parser, Subcommand};
use flowgate::mesh::token::TokenKey;
use flowgate::mesh::{MeshState, load_dir, parse_manifests};

const EXAMPLES: &str = "\
Examples:
  flowgate-controller check examples/mesh                  validate the bookstore demo's manifests
  flowgate-controller token bookstore/bookstore            a bootstrap token (24 h) for that service account
  flowgate-controller token --ttl 10m --state /var/lib/flowgate bookbuyer/bookbuyer";

/// `flowgate-controller`: the Flowgate mesh control plane (manifest checks and bootstrap
/// tokens today; the xDS server is not built yet).
#[derive(Debug, Parser)]
#[command(name = "flowgate-controller", version, about, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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

fn main() -> ExitCode {
    match Cli::parse().command {
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
