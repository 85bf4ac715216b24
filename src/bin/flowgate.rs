//! `flowgate`: runs a pipeline configuration file, and the bookstore demo.
//!
//! ```text
//! flowgate run [--workers N] [--no-watch] FILE   run it; SIGHUP or a file change reloads
//! flowgate check [--json] [--describe] FILE      validate it (exit 2 when invalid)
//! flowgate describe [--json] FILE                print the pipelines it builds
//! flowgate demo [--json] [--duration S] [--dir DIR] [--rate N]
//!                                                the bookstore demo: a mesh on this machine
//! ```

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use flowgate::cli::{Command, execute};
use flowgate::config;

/// mimalloc: fewer cycles per allocation than glibc's malloc on the per-request path.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `flowgate`: runs a pipeline configuration file (listeners and pipelines of filters), or
/// the bookstore demo.
#[derive(Debug, Parser)]
#[command(name = "flowgate", version, about, after_help = flowgate::cli::EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Top,
}

#[derive(Debug, Subcommand)]
enum Top {
    #[command(flatten)]
    Config(Command),
    /// The bookstore demo: flowgate-controller, a flowgate-sidecar per workload and the
    /// five workloads, on this machine; the live view until Ctrl-C.
    #[cfg(all(feature = "mesh", feature = "http"))]
    #[command(after_help = flowgate::demo::EXAMPLES)]
    Demo(flowgate::demo::DemoArgs),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Top::Config(c) => execute(c, config::load, false),
        #[cfg(all(feature = "mesh", feature = "http"))]
        Top::Demo(args) => match flowgate::demo::main(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("flowgate demo: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
