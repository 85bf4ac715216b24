//! Flows and the flow hash that the XDP program uses to pick a Maglev slot; computed here
//! too so user space can predict (and tests can check) the kernel's choice.

use std::net::{IpAddr, SocketAddr};

use super::maps::FgFlow;

/// A transport protocol the balancer handles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// TCP (IP protocol 6).
    Tcp,
    /// UDP (IP protocol 17).
    Udp,
}

impl Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
        }
    }
}

/// One flow as the balancer sees it: client address → VIP address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Flow {
    /// The client's address and port.
    pub src: SocketAddr,
    /// The VIP and its port.
    pub dst: SocketAddr,
    /// TCP or UDP.
    pub proto: Protocol,
}

impl Flow {
    /// The flow hash (the same function as `flow_hash` in `programs/xdp_lb.c`).
    ///
    /// ```
    /// use flowgate_ebpf::xdp_lb::{Flow, Protocol};
    /// let f = Flow {
    ///     src: "10.0.0.1:40000".parse().unwrap(),
    ///     dst: "10.0.0.100:80".parse().unwrap(),
    ///     proto: Protocol::Tcp,
    /// };
    /// assert_eq!(f.hash(), f.hash());
    /// assert!(f.slot(65537) < 65537);
    /// ```
    pub fn hash(&self) -> u64 {
        let key = self.key();
        let mut words = [0u32; 10];
        words[..4].copy_from_slice(&key.src);
        words[4..8].copy_from_slice(&key.dst);
        let ports = [key.sport.to_ne_bytes(), key.dport.to_ne_bytes()];
        words[8] = u32::from_ne_bytes([ports[0][0], ports[0][1], ports[1][0], ports[1][1]]);
        words[9] = u32::from_ne_bytes([key.proto, 0, 0, 0]);
        let mut h: u64 = 0x9e37_79b9_7f4a_7c15;
        for w in words {
            h ^= u64::from(w);
            h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
            h ^= h >> 29;
        }
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^= h >> 33;
        h
    }

    /// The Maglev slot of this flow in a ring of `ring_size` slots (`ring_size` > 0).
    pub fn slot(&self, ring_size: u32) -> u32 {
        (self.hash() % u64::from(ring_size.max(1))) as u32
    }

    pub(crate) fn key(&self) -> FgFlow {
        FgFlow {
            src: addr_words(self.src.ip()),
            dst: addr_words(self.dst.ip()),
            sport: port_be(self.src.port()),
            dport: port_be(self.dst.port()),
            proto: self.proto.number(),
            pad: [0; 3],
        }
    }
}

/// An address as four u32 words holding its bytes in network order (IPv4 in word 0).
pub(crate) fn addr_words(ip: IpAddr) -> [u32; 4] {
    let mut w = [0u32; 4];
    match ip {
        IpAddr::V4(v4) => w[0] = u32::from_ne_bytes(v4.octets()),
        IpAddr::V6(v6) => {
            for (i, c) in v6.octets().chunks_exact(4).enumerate() {
                w[i] = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
    }
    w
}

/// A port as the u16 whose memory holds it in network order.
pub(crate) fn port_be(port: u16) -> u16 {
    u16::from_ne_bytes(port.to_be_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(sport: u16) -> Flow {
        Flow {
            src: SocketAddr::from(([10, 0, 0, 1], sport)),
            dst: SocketAddr::from(([10, 0, 0, 100], 80)),
            proto: Protocol::Tcp,
        }
    }

    #[test]
    fn hash_spreads_ports_over_slots() {
        let mut seen = vec![0u32; 7];
        for p in 1000..8000u16 {
            seen[flow(p).slot(7) as usize] += 1;
        }
        for c in seen {
            assert!((900..1100).contains(&c), "{c}");
        }
    }

    #[test]
    fn hash_depends_on_every_field() {
        let a = flow(1);
        let mut b = a;
        b.proto = Protocol::Udp;
        assert_ne!(a.hash(), b.hash());
        let mut c = a;
        c.dst = SocketAddr::from(([10, 0, 0, 100], 81));
        assert_ne!(a.hash(), c.hash());
    }
}
