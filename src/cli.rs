//! The command lines of the binaries, with `clap`: `run`, `check` and `describe` take a
//! file and their flags in any order; an unknown flag or a missing file is an error that
//! names it, with exit code 2.
//!
//! ```
//! use clap::Parser;
//! use flowgate::cli::{Cli, Command};
//!
//! let cli = Cli::try_parse_from(["flowgate", "run", "--workers", "2", "proxy.yaml"]).unwrap();
//! let Command::Run(run) = cli.command else { unreachable!() };
//! assert_eq!(run.file.to_str(), Some("proxy.yaml"));
//! assert_eq!(run.options().workers, Some(2));
//!
//! let err = Cli::try_parse_from(["flowgate", "run", "--bogus", "proxy.yaml"]).unwrap_err();
//! assert_eq!(err.exit_code(), 2);
//! assert!(err.to_string().contains("--bogus"));
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, ConfigFileError};
use crate::pipeline::Filter;
use crate::runner::{RunError, RunOptions};

/// Examples shown under `flowgate --help`.
pub const EXAMPLES: &str = "\
Examples:
  flowgate run examples/configs/quickstart.yaml          run a configuration (SIGHUP or a file change reloads it)
  flowgate run --workers 1 --no-watch proxy.yaml         one worker, reload on SIGHUP only
  flowgate check proxy.yaml                              validate it (exit 2 when invalid)
  flowgate describe proxy.yaml                           print the pipelines it builds
  flowgate describe --json proxy.yaml                    the same as JSON";

/// `flowgate`: runs a pipeline configuration file (listeners and pipelines of filters).
#[derive(Debug, Parser)]
#[command(name = "flowgate", version, about, after_help = EXAMPLES)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands every binary that runs a configuration file has.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a configuration until SIGTERM or SIGINT (then drain); SIGHUP or a change of the
    /// file reloads it without dropping connections.
    Run(RunArgs),
    /// Validate a configuration: exit 0 when it is valid, 2 with the file, line and field of
    /// the first error when not.
    Check(CheckArgs),
    /// Print the listeners and pipelines a configuration builds (each filter with its
    /// options and sub-pipelines).
    Describe(DescribeArgs),
}

/// `run FILE [--workers N] [--no-watch]`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The configuration file.
    pub file: PathBuf,
    /// Worker threads (overrides the file's `workers`; default: one per core).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub workers: Option<u16>,
    /// Do not watch the file for changes (SIGHUP still reloads).
    #[arg(long)]
    pub no_watch: bool,
}

impl RunArgs {
    /// The runner's options these flags ask for.
    pub fn options(&self) -> RunOptions {
        let mut opts = RunOptions {
            workers: self.workers.map(usize::from),
            ..RunOptions::default()
        };
        if self.no_watch {
            opts.watch_interval = None;
        }
        opts
    }
}

/// `check FILE [--json] [--quiet]`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The configuration file.
    pub file: PathBuf,
    /// Print what it builds as JSON (as `describe --json`).
    #[arg(long)]
    pub json: bool,
    /// Print nothing when it is valid.
    #[arg(long, short)]
    pub quiet: bool,
    /// Also print the pipelines it builds (as `describe`; `flowgate-gateway check` does
    /// unless `--quiet`).
    #[arg(long)]
    pub describe: bool,
}

/// `describe FILE [--json]`.
#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// The configuration file.
    pub file: PathBuf,
    /// As JSON: `{ "listeners": [...], "pipelines": [...] }`.
    #[arg(long)]
    pub json: bool,
}

/// How a binary reads its file: `flowgate`'s pipeline file or `flowgate-gateway`'s gateway
/// file, both into the same listeners and pipelines.
pub type Load = fn(&std::path::Path) -> Result<Config, ConfigFileError>;

/// Runs `command` with files read by `load` (the binaries' `main`). `check` prints the
/// pipelines it builds when `describe_on_check` is set (the gateway's compiler output is
/// worth seeing) or `--describe` asks for them.
pub fn execute(command: Command, load: Load, describe_on_check: bool) -> ExitCode {
    match command {
        Command::Run(args) => {
            crate::runner::init_logging();
            match crate::runner::run_with(&args.file, &load, args.options()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(RunError::Config(e)) => fail(&e, 2),
                Err(e) => fail(&e, 1),
            }
        }
        Command::Check(args) => match load(&args.file) {
            Err(e) => fail(&e, 2),
            Ok(cfg) => {
                if args.json {
                    print_json(&cfg);
                } else if !args.quiet {
                    if args.describe || describe_on_check {
                        print_text(&cfg);
                    }
                    println(&format!(
                        "{}: ok ({} listeners, {} pipelines)",
                        args.file.display(),
                        cfg.listeners.len(),
                        cfg.module.pipelines().count()
                    ));
                }
                ExitCode::SUCCESS
            }
        },
        Command::Describe(args) => match load(&args.file) {
            Err(e) => fail(&e, 2),
            Ok(cfg) => {
                if args.json {
                    print_json(&cfg);
                } else {
                    print_text(&cfg);
                }
                ExitCode::SUCCESS
            }
        },
    }
}

fn fail(e: &dyn std::fmt::Display, code: u8) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(code)
}

/// Standard output is the binaries' report; the lint against printing guards the library.
#[allow(clippy::print_stdout)]
fn println(text: &str) {
    println!("{text}");
}

fn print_text(cfg: &Config) {
    let mut out = String::new();
    for (l, p) in &cfg.listeners {
        out.push_str(&format!(
            "listen {} ({:?}) -> {}\n",
            l.listen,
            l.protocol,
            p.name()
        ));
    }
    for p in cfg.module.pipelines() {
        out.push_str(&p.describe().to_string());
    }
    println(out.trim_end_matches('\n'));
}

fn print_json(cfg: &Config) {
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
    println(&serde_json::to_string_pretty(&doc).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    fn run(args: &[&str]) -> Result<RunArgs, clap::Error> {
        let all = ["flowgate", "run"].iter().chain(args).copied();
        match Cli::try_parse_from(all)?.command {
            Command::Run(r) => Ok(r),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn run_flags_in_any_order() {
        for args in [
            &["f.yaml", "--workers", "3", "--no-watch"][..],
            &["--workers", "3", "f.yaml", "--no-watch"],
            &["--no-watch", "--workers=3", "f.yaml"],
        ] {
            let r = run(args).unwrap();
            assert_eq!(r.file, PathBuf::from("f.yaml"));
            let o = r.options();
            assert_eq!(o.workers, Some(3));
            assert!(o.watch_interval.is_none());
        }
        let d = run(&["f.yaml"]).unwrap().options();
        assert_eq!(d.workers, None);
        assert!(d.watch_interval.is_some());
    }

    #[test]
    fn bad_command_lines_are_errors_that_name_the_problem() {
        for (args, names) in [
            (&["--workers", "x", "f.yaml"][..], "--workers"),
            (&["f.yaml", "--workers"], "--workers"),
            (&["--workers", "0", "f.yaml"], "--workers"),
            (&["--bogus", "f.yaml"], "--bogus"),
            (&[], "FILE"),
            (&["a.yaml", "b.yaml"], "b.yaml"),
        ] {
            let e = run(args).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{args:?}");
            assert!(e.to_string().contains(names), "{args:?}: {e}");
        }
    }
}
