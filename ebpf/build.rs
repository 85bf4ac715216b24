//! Compiles the C eBPF programs under `programs/` with clang (`-O2 -g -target bpf`) into
//! `$OUT_DIR/*.o`, which `src/` embeds with `include_bytes_aligned!`.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

// xdp_gen is the benchmark traffic generator (benches/xdp_vs_stack.rs).
const PROGRAMS: &[&str] = &["xdp_lb", "sockredir", "xdp_gen"];

fn main() -> ExitCode {
    println!("cargo:rerun-if-changed=programs");
    println!("cargo:rerun-if-env-changed=CLANG");
    let Some(out) = std::env::var_os("OUT_DIR").map(PathBuf::from) else {
        eprintln!("flowgate-ebpf build: OUT_DIR is not set (run through cargo)");
        return ExitCode::FAILURE;
    };
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".to_owned());
    // Debian keeps <asm/types.h> in the multiarch directory.
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".to_owned());
    let multiarch = format!("-I/usr/include/{arch}-linux-gnu");
    for name in PROGRAMS {
        let src = format!("programs/{name}.c");
        let obj = out.join(format!("{name}.o"));
        let status = Command::new(&clang)
            .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
            .arg(&multiarch)
            .arg("-Iprograms")
            .args(["-c", &src, "-o"])
            .arg(&obj)
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => {
                eprintln!(
                    "flowgate-ebpf build: `{clang}` failed on {src} ({s}); the programs need \
                     the libbpf headers (apt-get install -y libbpf-dev) and the kernel UAPI \
                     headers (linux-libc-dev)"
                );
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!(
                    "flowgate-ebpf build: cannot run `{clang}` ({e}). The eBPF programs are C \
                     compiled with clang -target bpf: install clang, llvm and libbpf-dev \
                     (`apt-get install -y clang llvm libbpf-dev`) or set CLANG to a clang binary."
                );
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
