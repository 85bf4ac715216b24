//! `flowgate-gateway`: runs a gateway file (listeners, TLS per SNI, routes, backend groups
//! balanced per request) — see `flowgate::gateway` for the schema.
//!
//! ```text
//! flowgate-gateway run FILE [--workers N] [--no-watch]   run it; SIGHUP or a file change reloads
//! flowgate-gateway check FILE [--json] [--quiet]         validate it and print the pipelines it
//!                                                        compiles to (exit 2 when invalid)
//! ```
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::process::ExitCode;

use flowgate::gateway;
use flowgate::pipeline::Filter;
use flowgate::runner::{RunError, RunOptions, init_logging, run_with};

/// mimalloc, as in `flowgate`: fewer cycles per allocation than glibc's malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "usage:
  flowgate-gateway run FILE [--workers N] [--no-watch]   run a gateway file; SIGHUP or a file change reloads it
  flowgate-gateway check FILE [--json] [--quiet]         validate it and print the generated pipelines (exit 2 when invalid)
  flowgate-gateway --version";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, rest) = match args.split_first() {
        Some((c, r)) => (c.as_str(), r),
        None => return usage(),
    };
    match cmd {
        "--version" | "-V" => {
            println!("flowgate-gateway {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        "--help" | "-h" | "help" => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        "check" => check(rest),
        "run" => run_cmd(rest),
        _ => usage(),
    }
}

fn usage() -> ExitCode {
    eprintln!("{USAGE}");
    ExitCode::from(2)
}

fn file_arg(rest: &[String]) -> Option<PathBuf> {
    let mut it = rest.iter();
    while let Some(a) = it.next() {
        if a == "--workers" {
            it.next();
        } else if !a.starts_with("--") {
            return Some(PathBuf::from(a));
        }
    }
    None
}

fn check(rest: &[String]) -> ExitCode {
    let Some(path) = file_arg(rest) else {
        return usage();
    };
    let cfg = match gateway::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if rest.iter().any(|a| a == "--json") {
        let listeners: Vec<_> = cfg
            .listeners
            .iter()
            .map(|(l, p)| serde_json::json!({"listener": l, "pipeline": p.name()}))
            .collect();
        let pipelines: Vec<_> = cfg
            .module
            .pipelines()
            .map(|p| p.describe().to_json())
            .collect();
        let doc = serde_json::json!({ "listeners": listeners, "pipelines": pipelines });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    if !rest.iter().any(|a| a == "--quiet") {
        for (l, p) in &cfg.listeners {
            println!("listen {} -> {}", l.listen, p.name());
        }
        for p in cfg.module.pipelines() {
            print!("{}", p.describe());
        }
    }
    println!(
        "{}: ok ({} listeners, {} pipelines)",
        path.display(),
        cfg.listeners.len(),
        cfg.module.pipelines().count()
    );
    ExitCode::SUCCESS
}

fn run_cmd(rest: &[String]) -> ExitCode {
    let Some(path) = file_arg(rest) else {
        return usage();
    };
    let Some(opts) = RunOptions::from_args(rest) else {
        return usage();
    };
    init_logging();
    match run_with(&path, &gateway::load, opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(RunError::Config(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
