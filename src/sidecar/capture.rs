//! Traffic capture: the iptables rules `flowgate-sidecar init` sets in a workload's network
//! namespace, so that the workload dials services as it would without a mesh and its
//! sidecar gets the connections anyway — Istio's and Linkerd's model.
//!
//! - **Outbound**: TCP connections the workload opens (nat `OUTPUT`) are redirected to the
//!   sidecar's outbound port (15001), where the listener reads the destination the
//!   workload dialled with `SO_ORIGINAL_DST`. The sidecar's own connections are left
//!   alone: they are told apart by the user (or group) the sidecar runs as (1337, as
//!   Istio's), which is why the sidecar must run as that user and the workload must not.
//!   Loopback traffic (`-o lo`: `127.0.0.0/8` and the pod's own address) is left alone too.
//! - **Inbound**: TCP connections arriving from outside the namespace (nat `PREROUTING`)
//!   are redirected to the inbound port (15006), which wants a mesh certificate: the
//!   workload's ports cannot be reached around its sidecar. Callers' sidecars dial 15006
//!   themselves (the controller's endpoints), which passes as it is.
//!
//! The rules live in chains of their own (`FLOWGATE_INBOUND`, `FLOWGATE_OUTPUT`), jumped to
//! from `PREROUTING` and `OUTPUT` of the `nat` table; [`install`] replaces what an earlier
//! run left and [`remove`] takes them away. IPv4 only (`iptables`; no `ip6tables` rules
//! yet). Setting them needs `CAP_NET_ADMIN` in the namespace (root).
//!
//! ```
//! use flowgate::sidecar::capture::{Capture, rules};
//! let text = rules(&Capture::default())?;
//! assert!(text.contains("-A FLOWGATE_OUTPUT -m owner --uid-owner 1337 -j RETURN"));
//! assert!(text.contains("-A FLOWGATE_OUTPUT -p tcp -j REDIRECT --to-ports 15001"));
//! assert!(text.contains("-A FLOWGATE_INBOUND -p tcp -j REDIRECT --to-ports 15006"));
//! # Ok::<(), flowgate::sidecar::capture::CaptureError>(())
//! ```

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::process::{Command, Stdio};

/// The chain `PREROUTING` jumps to.
pub const INBOUND_CHAIN: &str = "FLOWGATE_INBOUND";
/// The chain `OUTPUT` jumps to.
pub const OUTPUT_CHAIN: &str = "FLOWGATE_OUTPUT";
/// Istio's proxy user and group, the default here too.
pub const PROXY_UID: u32 = 1337;

/// What to capture and what to leave alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capture {
    /// Where outbound connections go (the sidecar's outbound listener).
    pub outbound_port: u16,
    /// Where inbound connections go (the sidecar's inbound listener).
    pub inbound_port: u16,
    /// Connections opened by this user are the sidecar's own: not captured.
    pub proxy_uid: Option<u32>,
    /// Connections opened by this group are the sidecar's own too.
    pub proxy_gid: Option<u32>,
    /// Inbound ports left alone (besides the inbound port itself).
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound destination ports left alone.
    pub exclude_outbound_ports: Vec<u16>,
    /// Outbound destinations left alone (IPv4 prefixes: `10.0.0.0/8`).
    pub exclude_outbound_cidrs: Vec<String>,
}

impl Default for Capture {
    fn default() -> Self {
        Capture {
            outbound_port: 15001,
            inbound_port: 15006,
            proxy_uid: Some(PROXY_UID),
            proxy_gid: None,
            exclude_inbound_ports: Vec::new(),
            exclude_outbound_ports: Vec::new(),
            exclude_outbound_cidrs: Vec::new(),
        }
    }
}

/// Why capture could not be set up or removed.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// An option that cannot be a rule.
    #[error("{0}")]
    Invalid(String),
    /// `iptables` could not be run.
    #[error("cannot run `{program}` (install the iptables package): {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// `iptables` refused the rules.
    #[error("`{command}` failed: {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// What it said.
        stderr: String,
    },
}

/// An IPv4 prefix, checked and written back canonically (`10.0.0.0/8`).
fn cidr(s: &str) -> Result<String, CaptureError> {
    let bad = || CaptureError::Invalid(format!("`{s}` is not an IPv4 prefix (10.0.0.0/8)"));
    let (a, l) = s.split_once('/').unwrap_or((s, "32"));
    let IpAddr::V4(addr) = a.trim().parse::<IpAddr>().map_err(|_| bad())? else {
        return Err(bad());
    };
    let len: u8 = l.trim().parse().map_err(|_| bad())?;
    if len > 32 {
        return Err(bad());
    }
    Ok(format!("{addr}/{len}"))
}

/// The rules, as `iptables-restore --noflush` input for the `nat` table.
pub fn rules(c: &Capture) -> Result<String, CaptureError> {
    if c.outbound_port == 0 || c.inbound_port == 0 || c.outbound_port == c.inbound_port {
        return Err(CaptureError::Invalid(format!(
            "the outbound ({}) and inbound ({}) ports must be two ports",
            c.outbound_port, c.inbound_port
        )));
    }
    if c.proxy_uid.is_none() && c.proxy_gid.is_none() {
        return Err(CaptureError::Invalid(
            "give the sidecar's user or group: without one its own connections would be \
             captured again (a loop)"
                .into(),
        ));
    }
    let cidrs = c
        .exclude_outbound_cidrs
        .iter()
        .map(|s| cidr(s))
        .collect::<Result<Vec<_>, _>>()?;
    let mut t = String::new();
    let mut line = |l: String| {
        t.push_str(&l);
        t.push('\n');
    };
    line("*nat".into());
    // Declaring a chain empties it (with --noflush, the rest of the table stays).
    line(format!(":{INBOUND_CHAIN} - [0:0]"));
    line(format!(":{OUTPUT_CHAIN} - [0:0]"));
    // Inbound: the sidecar's own port as it is, excluded ports, then the rest redirected.
    line(format!(
        "-A {INBOUND_CHAIN} -p tcp --dport {} -j RETURN",
        c.inbound_port
    ));
    for p in &c.exclude_inbound_ports {
        line(format!("-A {INBOUND_CHAIN} -p tcp --dport {p} -j RETURN"));
    }
    line(format!(
        "-A {INBOUND_CHAIN} -p tcp -j REDIRECT --to-ports {}",
        c.inbound_port
    ));
    // Outbound: the sidecar's own connections, loopback, exclusions; the rest redirected.
    if let Some(uid) = c.proxy_uid {
        line(format!(
            "-A {OUTPUT_CHAIN} -m owner --uid-owner {uid} -j RETURN"
        ));
    }
    if let Some(gid) = c.proxy_gid {
        line(format!(
            "-A {OUTPUT_CHAIN} -m owner --gid-owner {gid} -j RETURN"
        ));
    }
    line(format!("-A {OUTPUT_CHAIN} -o lo -j RETURN"));
    for p in &c.exclude_outbound_ports {
        line(format!("-A {OUTPUT_CHAIN} -p tcp --dport {p} -j RETURN"));
    }
    for d in &cidrs {
        line(format!("-A {OUTPUT_CHAIN} -d {d} -j RETURN"));
    }
    line(format!(
        "-A {OUTPUT_CHAIN} -p tcp -j REDIRECT --to-ports {}",
        c.outbound_port
    ));
    line(format!("-A PREROUTING -p tcp -j {INBOUND_CHAIN}"));
    line(format!("-A OUTPUT -p tcp -j {OUTPUT_CHAIN}"));
    line("COMMIT".into());
    Ok(t)
}

fn run(program: &str, args: &[&str], input: Option<&str>) -> Result<(), CaptureError> {
    let command = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| CaptureError::Spawn {
            program: program.into(),
            source,
        })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .map_err(|source| CaptureError::Spawn {
                program: program.into(),
                source,
            })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| CaptureError::Spawn {
            program: program.into(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(CaptureError::Failed {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Sets the rules in the current network namespace (run it with `ip netns exec`, or from
/// the pod's init container), replacing what an earlier run left: one `iptables-restore`,
/// applied whole or not at all.
pub fn install(c: &Capture) -> Result<(), CaptureError> {
    let text = rules(c)?;
    remove()?;
    run("iptables-restore", &["--noflush"], Some(&text))
}

/// Takes the rules away (nothing to do when there are none).
pub fn remove() -> Result<(), CaptureError> {
    for (from, to) in [("PREROUTING", INBOUND_CHAIN), ("OUTPUT", OUTPUT_CHAIN)] {
        // A jump may be there more than once (runs of other versions): delete until none.
        for _ in 0..64 {
            if run(
                "iptables",
                &["-w", "-t", "nat", "-D", from, "-p", "tcp", "-j", to],
                None,
            )
            .is_err()
            {
                break;
            }
        }
    }
    for chain in [INBOUND_CHAIN, OUTPUT_CHAIN] {
        if run("iptables", &["-w", "-t", "nat", "-n", "-L", chain], None).is_ok() {
            run("iptables", &["-w", "-t", "nat", "-F", chain], None)?;
            run("iptables", &["-w", "-t", "nat", "-X", chain], None)?;
        }
    }
    Ok(())
}

/// The rules as a shell reads them (for `init --dry-run`): `iptables-restore` input.
pub fn describe(c: &Capture) -> Result<String, CaptureError> {
    let mut out = String::new();
    let _ = writeln!(out, "# iptables-restore --noflush <<EOF");
    out.push_str(&rules(c)?);
    let _ = writeln!(out, "# EOF");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sidecars_own_traffic_and_loopback_pass_before_the_redirect() {
        let c = Capture {
            proxy_gid: Some(1337),
            exclude_inbound_ports: vec![22],
            exclude_outbound_ports: vec![53],
            exclude_outbound_cidrs: vec!["10.96.0.0/12".into(), " 169.254.169.254".into()],
            ..Default::default()
        };
        let text = rules(&c).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let at = |l: &str| {
            lines
                .iter()
                .position(|x| *x == l)
                .unwrap_or_else(|| panic!("no `{l}` in\n{text}"))
        };
        let redirect = at("-A FLOWGATE_OUTPUT -p tcp -j REDIRECT --to-ports 15001");
        for before in [
            "-A FLOWGATE_OUTPUT -m owner --uid-owner 1337 -j RETURN",
            "-A FLOWGATE_OUTPUT -m owner --gid-owner 1337 -j RETURN",
            "-A FLOWGATE_OUTPUT -o lo -j RETURN",
            "-A FLOWGATE_OUTPUT -p tcp --dport 53 -j RETURN",
            "-A FLOWGATE_OUTPUT -d 10.96.0.0/12 -j RETURN",
            "-A FLOWGATE_OUTPUT -d 169.254.169.254/32 -j RETURN",
        ] {
            assert!(at(before) < redirect, "{before}");
        }
        let inbound = at("-A FLOWGATE_INBOUND -p tcp -j REDIRECT --to-ports 15006");
        assert!(at("-A FLOWGATE_INBOUND -p tcp --dport 15006 -j RETURN") < inbound);
        assert!(at("-A FLOWGATE_INBOUND -p tcp --dport 22 -j RETURN") < inbound);
        assert!(at("-A PREROUTING -p tcp -j FLOWGATE_INBOUND") > at(":FLOWGATE_INBOUND - [0:0]"));
        assert_eq!(lines.first(), Some(&"*nat"));
        assert_eq!(lines.last(), Some(&"COMMIT"));
    }

    #[test]
    fn options_that_cannot_be_rules_are_refused() {
        let no_owner = Capture {
            proxy_uid: None,
            ..Default::default()
        };
        assert!(rules(&no_owner).unwrap_err().to_string().contains("a loop"));
        let same = Capture {
            inbound_port: 15001,
            ..Default::default()
        };
        assert!(rules(&same).is_err());
        for bad in ["10.0.0.0/33", "fd00::/8", "ten", "10.0.0.0/x"] {
            let c = Capture {
                exclude_outbound_cidrs: vec![bad.into()],
                ..Default::default()
            };
            let e = rules(&c).unwrap_err().to_string();
            assert!(e.contains(bad), "{bad}: {e}");
        }
    }
}
