//! `flowgate-gateway`: runs a gateway file (listeners, TLS per SNI, routes, backend groups
//! balanced per request) — see `flowgate::gateway` for the schema.
//!
//! ```text
//! flowgate-gateway run [--workers N] [--no-watch] FILE   run it; SIGHUP or a file change reloads
//! flowgate-gateway check [--json] [--quiet] FILE         validate it and print the pipelines it
//!                                                        compiles to (exit 2 when invalid)
//! flowgate-gateway describe [--json] FILE                print those pipelines only
//! ```

use std::process::ExitCode;

use clap::Parser;
use flowgate::cli::{Command, execute};
use flowgate::gateway;

/// mimalloc, as in `flowgate`: fewer cycles per allocation than glibc's malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EXAMPLES: &str = "\
Examples:
  flowgate-gateway run examples/configs/gateway.yaml     run a gateway file (SIGHUP or a file change reloads it)
  flowgate-gateway run --workers 1 gateway.yaml          one worker
  flowgate-gateway check gateway.yaml                    validate it and print the pipelines it compiles to
  flowgate-gateway describe --json gateway.yaml          those pipelines as JSON";

/// `flowgate-gateway`: runs a gateway file — listeners, TLS certificates by SNI, routes and
/// backend groups balanced per request — compiled to Flowgate pipelines.
#[derive(Debug, Parser)]
#[command(name = "flowgate-gateway", version, about, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

fn main() -> ExitCode {
    execute(Cli::parse().command, gateway::load, true)
}
