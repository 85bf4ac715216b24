//! The XDP L4 load balancer (Katran-style): VIP:port → backend by a Maglev table in a BPF
//! map, connection tracking in an LRU map, forwarding by L2 DSR or NAT.
//!
//! ```text
//!   XdpLb::set_vip(vip, forwarding, backends)
//!     ├─ backends[id]  := {addr, port, mac}     (ids are kept until reused, so
//!     │                                          flows tracked to a removed backend
//!     │                                          keep reaching it)
//!     ├─ rings[vip, idle ring] := Maglev table   (flowgate_lb::algorithm::maglev_table;
//!     │                                          a slot holds backend id + 1, 0 = none)
//!     └─ vips[vip] := {id, flags, ring: idle}    ← one map update: the atomic switch
//! ```
//!
//! The kernel hashes a flow with [`Flow::hash`] and reads slot `hash % ring_size` of the
//! VIP's live ring, so [`XdpLb::predict`] tells in user space which backend a new flow gets.
//! A SYN always takes the Maglev choice (and refreshes the conntrack entry); any other
//! packet of a tracked flow follows its conntrack entry, so changing the backend set
//! moves no existing connection.
//!
//! DSR rewrites the destination MAC only: each backend holds the VIP on its loopback and
//! answers the client directly. NAT (IPv4) rewrites the destination address and port,
//! records the reverse mapping, and translates the backend's replies (which must route
//! back through the balancer) to come from the VIP. All other traffic is passed to the
//! stack; truncated or malformed IP/TCP/UDP headers are dropped.

mod flow;
pub(crate) mod maps;

use std::collections::{HashMap as StdHashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};

use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use aya::programs::{TestRun, TestRunOptions, Xdp, XdpMode, xdp::XdpLinkId};
use aya::{Ebpf, EbpfLoader, include_bytes_aligned};

use crate::error::{Error, program_error, require_root};
use crate::maps::take;
pub use flow::{Flow, Protocol};
use flow::{addr_words, port_be};
use maps::{FgBackend, FgCounter, FgVipKey, FgVipMeta, NO_BACKEND, VIP_NAT};

static OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp_lb.o"));

/// Sizes of the balancer's maps, fixed at load time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XdpLbConfig {
    /// Maglev slots per VIP ring; a prime (default 65537, as flowgate-lb's Maglev).
    pub ring_size: u32,
    /// How many VIPs can be configured (default 16). The ring map holds
    /// `2 × max_vips × ring_size` u32 slots.
    pub max_vips: u32,
    /// How many distinct backends can exist (default 1024).
    pub max_backends: u32,
    /// Entries of the conntrack and NAT reply LRU maps (default 65536 each).
    pub conntrack_entries: u32,
}

impl Default for XdpLbConfig {
    fn default() -> Self {
        Self {
            ring_size: flowgate_lb::algorithm::DEFAULT_TABLE_SIZE,
            max_vips: 16,
            max_backends: 1024,
            conntrack_entries: 65_536,
        }
    }
}

/// A virtual service: the address, port and protocol clients connect to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Vip {
    /// The VIP address (IPv4 or IPv6).
    pub addr: IpAddr,
    /// The service port.
    pub port: u16,
    /// TCP or UDP.
    pub proto: Protocol,
}

impl Vip {
    /// A TCP VIP.
    pub fn tcp(addr: SocketAddr) -> Self {
        Self {
            addr: addr.ip(),
            port: addr.port(),
            proto: Protocol::Tcp,
        }
    }

    /// A UDP VIP.
    pub fn udp(addr: SocketAddr) -> Self {
        Self {
            addr: addr.ip(),
            port: addr.port(),
            proto: Protocol::Udp,
        }
    }

    fn key(&self) -> FgVipKey {
        FgVipKey {
            addr: addr_words(self.addr),
            port: port_be(self.port),
            proto: self.proto.number(),
            family: if self.addr.is_ipv4() { 4 } else { 6 },
        }
    }
}

/// How packets reach the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forwarding {
    /// L2 direct server return: only the destination MAC changes; the backend holds the
    /// VIP on its loopback and replies straight to the client.
    Dsr,
    /// Destination NAT (IPv4): destination address and port rewritten, checksums fixed,
    /// replies (routed back through the balancer) translated back to the VIP.
    Nat,
}

/// A backend of a VIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Backend {
    /// The backend's address (the NAT target; with DSR it names the backend).
    pub addr: IpAddr,
    /// The NAT target port; 0 keeps the VIP's port. Part of the backend's Maglev name.
    pub port: u16,
    /// The backend's MAC address on the balancer's L2 segment (the next hop).
    pub mac: [u8; 6],
    /// Relative weight (0 counts as 1).
    pub weight: u32,
}

impl Backend {
    /// The name Maglev hashes: `addr:port`, like flowgate-lb's endpoints.
    pub fn name(&self) -> String {
        SocketAddr::new(self.addr, self.port).to_string()
    }

    fn id_key(&self) -> (IpAddr, u16, [u8; 6]) {
        (self.addr, self.port, self.mac)
    }
}

/// How to attach to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AttachMode {
    /// Native (driver) mode, falling back to generic when the driver lacks XDP.
    #[default]
    Auto,
    /// Native mode only.
    Native,
    /// Generic (skb) mode only: works on every device (and on `lo`), slower.
    Generic,
}

/// The mode an attachment ended up in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachedMode {
    /// Driver mode.
    Native,
    /// Generic (skb) mode.
    Generic,
}

/// An XDP verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpAction {
    /// `XDP_ABORTED`.
    Aborted,
    /// `XDP_DROP`.
    Drop,
    /// `XDP_PASS`: handed to the stack.
    Pass,
    /// `XDP_TX`: sent back out of the receiving interface.
    Tx,
    /// `XDP_REDIRECT`.
    Redirect,
    /// Any other value.
    Other(u32),
}

impl From<u32> for XdpAction {
    fn from(v: u32) -> Self {
        match v {
            0 => Self::Aborted,
            1 => Self::Drop,
            2 => Self::Pass,
            3 => Self::Tx,
            4 => Self::Redirect,
            n => Self::Other(n),
        }
    }
}

/// The outcome of [`XdpLb::test_run`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestRunOutput {
    /// What the program decided.
    pub action: XdpAction,
    /// The frame as the program left it.
    pub frame: Vec<u8>,
}

/// Packets and bytes, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    /// Packets.
    pub packets: u64,
    /// Bytes (whole frames).
    pub bytes: u64,
}

/// Global counters of the program, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbStats {
    /// Not for a VIP: passed to the stack.
    pub passed: u64,
    /// Truncated or invalid headers: dropped.
    pub malformed: u64,
    /// Packets that followed a conntrack entry.
    pub conntrack_hits: u64,
    /// Flows placed by the Maglev table (SYNs and untracked flows).
    pub new_flows: u64,
    /// Packets to a VIP without backends: dropped.
    pub no_backend: u64,
    /// Backend replies translated back to the VIP (NAT).
    pub nat_replies: u64,
    /// IPv4 fragments: passed.
    pub fragments: u64,
}

struct VipState {
    id: u32,
    ring: u32,
    backends: Vec<Backend>,
    ids: Vec<u32>,
    table: Vec<u32>,
}

struct BackendSlot {
    id: u32,
    refs: u32,
}

/// The loaded balancer. Dropping it detaches the program from every interface.
pub struct XdpLb {
    bpf: Ebpf,
    cfg: XdpLbConfig,
    vips_map: HashMap<MapData, FgVipKey, FgVipMeta>,
    rings: Array<MapData, u32>,
    backends_map: Array<MapData, FgBackend>,
    vip_stats: PerCpuArray<MapData, FgCounter>,
    backend_stats: PerCpuArray<MapData, FgCounter>,
    lb_stats: PerCpuArray<MapData, u64>,
    vips: StdHashMap<Vip, VipState>,
    free_vip_ids: Vec<u32>,
    next_vip_id: u32,
    backend_ids: StdHashMap<(IpAddr, u16, [u8; 6]), BackendSlot>,
    retired_backend_ids: VecDeque<u32>,
    next_backend_id: u32,
    attached: Vec<(String, &'static str, XdpLinkId, AttachedMode)>,
}

impl std::fmt::Debug for XdpLb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpLb")
            .field("cfg", &self.cfg)
            .field("vips", &self.vips.keys().collect::<Vec<_>>())
            .field(
                "attached",
                &self
                    .attached
                    .iter()
                    .map(|(i, p, _, m)| (i, p, m))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn xdp<'a>(bpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp, Error> {
    let prog = bpf.program_mut(name).ok_or(Error::Missing {
        what: "program",
        name,
    })?;
    prog.try_into().map_err(|source| Error::Program {
        program: name,
        source,
    })
}

fn sum(values: &[FgCounter]) -> Counter {
    values.iter().fold(Counter::default(), |acc, c| Counter {
        packets: acc.packets + c.packets,
        bytes: acc.bytes + c.bytes,
    })
}

impl XdpLb {
    /// Loads the programs and creates the maps (nothing is attached yet).
    ///
    /// Fails with [`Error::NotRoot`] unless run as root, [`Error::RingSize`] if the ring
    /// size is not a prime, and with the verifier's log if the kernel refuses the program.
    pub fn load(cfg: XdpLbConfig) -> Result<Self, Error> {
        require_root()?;
        if !is_prime(cfg.ring_size) {
            return Err(Error::RingSize {
                ring_size: cfg.ring_size,
            });
        }
        let ring_slots = u64::from(cfg.max_vips.max(1)) * 2 * u64::from(cfg.ring_size);
        let ring_slots =
            u32::try_from(ring_slots).map_err(|_| Error::TooManyVips { max: cfg.max_vips })?;
        let mut bpf = EbpfLoader::new()
            .override_global("ring_size", &cfg.ring_size, true)
            .map_max_entries("vips", cfg.max_vips.max(1))
            .map_max_entries("vip_stats", cfg.max_vips.max(1))
            .map_max_entries("rings", ring_slots)
            .map_max_entries("backends", cfg.max_backends.max(1))
            .map_max_entries("backend_stats", cfg.max_backends.max(1))
            .map_max_entries("conntrack", cfg.conntrack_entries.max(1))
            .map_max_entries("nat_replies", cfg.conntrack_entries.max(1))
            .load(OBJECT)
            .map_err(|e| Error::Object {
                object: "xdp_lb",
                source: Box::new(e),
            })?;
        for name in ["xdp_lb", "xdp_pass"] {
            xdp(&mut bpf, name)?
                .load()
                .map_err(|e| program_error(name, format!("XDP programs ({name})"), false, e))?;
        }
        Ok(Self {
            vips_map: take(&mut bpf, "vips")?,
            rings: take(&mut bpf, "rings")?,
            backends_map: take(&mut bpf, "backends")?,
            vip_stats: take(&mut bpf, "vip_stats")?,
            backend_stats: take(&mut bpf, "backend_stats")?,
            lb_stats: take(&mut bpf, "lb_stats")?,
            bpf,
            cfg,
            vips: StdHashMap::new(),
            free_vip_ids: Vec::new(),
            next_vip_id: 0,
            backend_ids: StdHashMap::new(),
            retired_backend_ids: VecDeque::new(),
            next_backend_id: 0,
            attached: Vec::new(),
        })
    }

    /// The configuration it was loaded with.
    pub fn config(&self) -> &XdpLbConfig {
        &self.cfg
    }

    /// Attaches the balancer to `iface` (in the calling thread's network namespace).
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<AttachedMode, Error> {
        self.attach_program("xdp_lb", iface, mode)
    }

    /// Attaches a program that passes every frame. A veth only accepts frames that its
    /// peer sends with native `XDP_TX` when it runs an XDP program itself, so put this on
    /// the peer of a veth the balancer runs on natively.
    pub fn attach_pass(&mut self, iface: &str, mode: AttachMode) -> Result<AttachedMode, Error> {
        self.attach_program("xdp_pass", iface, mode)
    }

    fn attach_program(
        &mut self,
        program: &'static str,
        iface: &str,
        mode: AttachMode,
    ) -> Result<AttachedMode, Error> {
        let prog = xdp(&mut self.bpf, program)?;
        let try_mode = |prog: &mut Xdp, m: XdpMode, what: &str| {
            prog.attach(iface, m).map_err(|e| match e {
                aya::programs::ProgramError::UnknownInterface { name } => {
                    Error::UnknownInterface { name }
                }
                e => program_error(program, format!("{what} XDP on {iface}"), true, e),
            })
        };
        let (id, got) = match mode {
            AttachMode::Native => (
                try_mode(prog, XdpMode::Driver, "native")?,
                AttachedMode::Native,
            ),
            AttachMode::Generic => (
                try_mode(prog, XdpMode::Skb, "generic")?,
                AttachedMode::Generic,
            ),
            AttachMode::Auto => match try_mode(prog, XdpMode::Driver, "native") {
                Ok(id) => (id, AttachedMode::Native),
                Err(Error::UnknownInterface { name }) => {
                    return Err(Error::UnknownInterface { name });
                }
                Err(_) => (
                    try_mode(prog, XdpMode::Skb, "generic")?,
                    AttachedMode::Generic,
                ),
            },
        };
        self.attached.push((iface.to_owned(), program, id, got));
        Ok(got)
    }

    /// Detaches whatever this balancer attached to `iface`.
    pub fn detach(&mut self, iface: &str) -> Result<(), Error> {
        let mut found = false;
        while let Some(pos) = self.attached.iter().position(|(i, ..)| i == iface) {
            let (_, program, id, _) = self.attached.swap_remove(pos);
            xdp(&mut self.bpf, program)?
                .detach(id)
                .map_err(|source| Error::Program { program, source })?;
            found = true;
        }
        if found {
            Ok(())
        } else {
            Err(Error::NotAttached {
                name: iface.to_owned(),
            })
        }
    }

    /// Creates or replaces a VIP and its backends. The new Maglev table is written to the
    /// VIP's idle ring and switched to with one map update, so the data path sees the old
    /// table or the new one, never a mix. Existing flows keep their backends.
    pub fn set_vip(
        &mut self,
        vip: Vip,
        forwarding: Forwarding,
        backends: &[Backend],
    ) -> Result<(), Error> {
        if forwarding == Forwarding::Nat {
            if vip.addr.is_ipv6() {
                return Err(Error::NatNeedsIpv4 { addr: vip.addr });
            }
            if let Some(b) = backends.iter().find(|b| b.addr.is_ipv6()) {
                return Err(Error::NatNeedsIpv4 { addr: b.addr });
            }
        }
        let (id, ring) = match self.vips.get(&vip) {
            Some(s) => (s.id, s.ring ^ 1),
            None => (self.alloc_vip_id()?, 0),
        };
        let mut ids = Vec::with_capacity(backends.len());
        for b in backends {
            match self.acquire_backend(b) {
                Ok(id) => ids.push(id),
                Err(e) => {
                    for id in ids {
                        self.release_backend_id(id);
                    }
                    if !self.vips.contains_key(&vip) {
                        self.free_vip_ids.push(id);
                    }
                    return Err(e);
                }
            }
        }
        let names: Vec<String> = backends.iter().map(Backend::name).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let weights: Vec<u32> = backends.iter().map(|b| b.weight).collect();
        let table = flowgate_lb::algorithm::maglev_table(&refs, &weights, self.cfg.ring_size);
        let base = (id * 2 + ring) * self.cfg.ring_size;
        for slot in 0..self.cfg.ring_size {
            let backend = table
                .get(slot as usize)
                .and_then(|&i| ids.get(i as usize))
                .map_or(NO_BACKEND, |id| id + 1);
            self.rings
                .set(base + slot, backend, 0)
                .map_err(|source| Error::Map {
                    map: "rings",
                    source,
                })?;
        }
        let meta = FgVipMeta {
            id,
            flags: if forwarding == Forwarding::Nat {
                VIP_NAT
            } else {
                0
            },
            ring,
            pad: 0,
        };
        self.vips_map
            .insert(vip.key(), meta, 0)
            .map_err(|source| Error::Map {
                map: "vips",
                source,
            })?;
        let old = self.vips.insert(
            vip,
            VipState {
                id,
                ring,
                backends: backends.to_vec(),
                ids,
                table,
            },
        );
        if let Some(old) = old {
            for id in old.ids {
                self.release_backend_id(id);
            }
        }
        Ok(())
    }

    /// Removes a VIP: its packets go to the stack from now on.
    pub fn remove_vip(&mut self, vip: &Vip) -> Result<(), Error> {
        let state = self.vips.remove(vip).ok_or(Error::UnknownVip {
            addr: vip.addr,
            port: vip.port,
        })?;
        self.vips_map
            .remove(&vip.key())
            .map_err(|source| Error::Map {
                map: "vips",
                source,
            })?;
        for id in state.ids {
            self.release_backend_id(id);
        }
        self.free_vip_ids.push(state.id);
        Ok(())
    }

    /// The backend the kernel's Maglev table gives a new flow (a SYN), computed in user
    /// space from the same table and the same hash.
    pub fn predict(&self, flow: &Flow) -> Option<Backend> {
        let vip = Vip {
            addr: flow.dst.ip(),
            port: flow.dst.port(),
            proto: flow.proto,
        };
        let state = self.vips.get(&vip)?;
        let i = *state.table.get(flow.slot(self.cfg.ring_size) as usize)?;
        state.backends.get(i as usize).copied()
    }

    /// The backends currently configured for `vip`.
    pub fn backends(&self, vip: &Vip) -> Option<&[Backend]> {
        self.vips.get(vip).map(|s| s.backends.as_slice())
    }

    /// Packets and bytes the balancer forwarded for `vip`.
    pub fn vip_counters(&self, vip: &Vip) -> Result<Counter, Error> {
        let state = self.vips.get(vip).ok_or(Error::UnknownVip {
            addr: vip.addr,
            port: vip.port,
        })?;
        let v = self
            .vip_stats
            .get(&state.id, 0)
            .map_err(|source| Error::Map {
                map: "vip_stats",
                source,
            })?;
        Ok(sum(&v))
    }

    /// Packets and bytes forwarded to `backend` (over all VIPs; `None` if unknown).
    pub fn backend_counters(&self, backend: &Backend) -> Result<Option<Counter>, Error> {
        let Some(slot) = self.backend_ids.get(&backend.id_key()) else {
            return Ok(None);
        };
        let v = self
            .backend_stats
            .get(&slot.id, 0)
            .map_err(|source| Error::Map {
                map: "backend_stats",
                source,
            })?;
        Ok(Some(sum(&v)))
    }

    /// The program's global counters.
    pub fn stats(&self) -> Result<LbStats, Error> {
        let get = |i: u32| -> Result<u64, Error> {
            let v = self.lb_stats.get(&i, 0).map_err(|source| Error::Map {
                map: "lb_stats",
                source,
            })?;
            Ok(v.iter().sum())
        };
        Ok(LbStats {
            passed: get(0)?,
            malformed: get(1)?,
            conntrack_hits: get(2)?,
            new_flows: get(3)?,
            no_backend: get(4)?,
            nat_replies: get(5)?,
            fragments: get(6)?,
        })
    }

    /// Runs the balancer once on `frame` with `BPF_PROG_TEST_RUN` (no interface needed;
    /// the maps are the live ones).
    pub fn test_run(&self, frame: &[u8]) -> Result<TestRunOutput, Error> {
        self.test_run_repeat(frame, 1).map(|(out, _)| out)
    }

    /// Runs the balancer `repeat` times on `frame` in the kernel and returns the last
    /// output and the kernel's mean time per run: the program's own cost per packet.
    pub fn test_run_repeat(
        &self,
        frame: &[u8],
        repeat: u32,
    ) -> Result<(TestRunOutput, std::time::Duration), Error> {
        let prog = self.bpf.program("xdp_lb").ok_or(Error::Missing {
            what: "program",
            name: "xdp_lb",
        })?;
        let prog: &Xdp = prog.try_into().map_err(|source| Error::Program {
            program: "xdp_lb",
            source,
        })?;
        let mut out = vec![0u8; frame.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        opts.repeat = repeat.max(1);
        let r = prog
            .test_run(opts)
            .map_err(|e| program_error("xdp_lb", "BPF_PROG_TEST_RUN".into(), false, e))?;
        out.truncate(r.data_size_out as usize);
        let output = TestRunOutput {
            action: XdpAction::from(r.return_value),
            frame: out,
        };
        Ok((output, r.duration))
    }

    fn alloc_vip_id(&mut self) -> Result<u32, Error> {
        if let Some(id) = self.free_vip_ids.pop() {
            return Ok(id);
        }
        if self.next_vip_id >= self.cfg.max_vips {
            return Err(Error::TooManyVips {
                max: self.cfg.max_vips,
            });
        }
        self.next_vip_id += 1;
        Ok(self.next_vip_id - 1)
    }

    /// Finds or makes the backend's id and writes its map entry.
    fn acquire_backend(&mut self, b: &Backend) -> Result<u32, Error> {
        let key = b.id_key();
        let id = if let Some(slot) = self.backend_ids.get_mut(&key) {
            slot.refs += 1;
            slot.id
        } else {
            // Fresh ids first; a retired id is reused only when none is left, so flows
            // still tracked to a removed backend keep reaching it as long as possible.
            let id = if self.next_backend_id < self.cfg.max_backends {
                self.next_backend_id += 1;
                self.next_backend_id - 1
            } else {
                self.retired_backend_ids
                    .pop_front()
                    .ok_or(Error::TooManyBackends {
                        max: self.cfg.max_backends,
                    })?
            };
            self.backend_ids.insert(key, BackendSlot { id, refs: 1 });
            id
        };
        let entry = FgBackend {
            addr: addr_words(b.addr),
            port: port_be(b.port),
            mac: b.mac,
            flags: 0,
        };
        if let Err(source) = self.backends_map.set(id, entry, 0) {
            self.release_backend_id(id);
            return Err(Error::Map {
                map: "backends",
                source,
            });
        }
        Ok(id)
    }

    fn release_backend_id(&mut self, id: u32) {
        let Some(key) = self
            .backend_ids
            .iter()
            .find(|(_, s)| s.id == id)
            .map(|(k, _)| *k)
        else {
            return;
        };
        if let Some(slot) = self.backend_ids.get_mut(&key) {
            slot.refs = slot.refs.saturating_sub(1);
            if slot.refs == 0 {
                self.backend_ids.remove(&key);
                // The map entry stays: tracked flows keep reaching the backend.
                self.retired_backend_ids.push_back(id);
            }
        }
    }
}

fn is_prime(n: u32) -> bool {
    n >= 2
        && (2..)
            .take_while(|d: &u32| u64::from(*d) * u64::from(*d) <= u64::from(n))
            .all(|d| !n.is_multiple_of(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primes() {
        assert!(is_prime(65_537));
        assert!(is_prime(4099));
        assert!(!is_prime(4097));
        assert!(!is_prime(1));
    }

    #[test]
    fn actions() {
        assert_eq!(XdpAction::from(3), XdpAction::Tx);
        assert_eq!(XdpAction::from(9), XdpAction::Other(9));
    }
}
