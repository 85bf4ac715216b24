//! DNS SRV discovery: a small, bounded DNS client over UDP for SRV, A and AAAA records.
//!
//! It asks one resolver (the first `nameserver` of `/etc/resolv.conf` by default) for the
//! SRV records of a name (`_http._tcp.example.com`), keeps the targets of the lowest
//! priority, and resolves each target's A and AAAA records (from the reply's additional
//! section when the resolver sent them, else with its own queries to the same resolver).
//! Replies are bounded (512 bytes, no TCP fallback: a truncated reply is an error), names
//! are decoded with a limit on compression pointers, and every field is range-checked.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::net::UdpSocket;

use super::{Discovery, DiscoveryError, NextSet, poll_changes};
use crate::backend::Backend;

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const TYPE_SRV: u16 = 33;
const MAX_REPLY: usize = 512;

/// Backends from a name's SRV records, re-resolved every `interval`: address from the
/// target's A/AAAA records, port and weight from the SRV record (weight 0 counts as 1);
/// only the lowest priority present is used.
#[derive(Debug)]
pub struct SrvDiscovery {
    name: String,
    resolver: SocketAddr,
    timeout: Duration,
    interval: Duration,
    last: Option<Vec<Backend>>,
}

impl SrvDiscovery {
    /// Asks `resolver` about `name` every `interval`.
    pub fn new(name: impl Into<String>, resolver: SocketAddr, interval: Duration) -> Self {
        SrvDiscovery {
            name: name.into(),
            resolver,
            timeout: Duration::from_secs(2),
            interval,
            last: None,
        }
    }

    /// Asks the first nameserver of `/etc/resolv.conf`.
    pub fn with_system_resolver(
        name: impl Into<String>,
        interval: Duration,
    ) -> Result<Self, DiscoveryError> {
        let conf = std::fs::read_to_string("/etc/resolv.conf")?;
        let ip = conf
            .lines()
            .filter_map(|l| l.trim().strip_prefix("nameserver"))
            .find_map(|rest| rest.trim().parse::<IpAddr>().ok())
            .ok_or_else(|| dns_error("no nameserver in /etc/resolv.conf"))?;
        Ok(Self::new(name, SocketAddr::new(ip, 53), interval))
    }

    /// How long one query may take (default 2 s).
    #[must_use]
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }
}

fn dns_error(msg: &str) -> DiscoveryError {
    DiscoveryError::Io(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        msg.to_string(),
    ))
}

/// One resource record of interest.
#[derive(Debug, PartialEq)]
enum Record {
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: String,
    },
    Addr {
        name: String,
        ip: IpAddr,
    },
}

fn encode_query(id: u16, name: &str, qtype: u16) -> Result<Vec<u8>, DiscoveryError> {
    let mut q = Vec::with_capacity(32 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; one question
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(dns_error("a DNS label is empty or longer than 63 bytes"));
        }
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    if q.len() > 12 + 255 {
        return Err(dns_error("DNS name longer than 255 bytes"));
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes()); // IN
    Ok(q)
}

fn u16_at(m: &[u8], at: usize) -> Result<u16, DiscoveryError> {
    m.get(at..at + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or_else(|| dns_error("truncated DNS message"))
}

/// Reads a (possibly compressed) name at `at`; returns it and the offset after it.
fn read_name(m: &[u8], mut at: usize) -> Result<(String, usize), DiscoveryError> {
    let mut name = String::new();
    let mut end = None;
    for _ in 0..32 {
        let len = *m.get(at).ok_or_else(|| dns_error("truncated name"))? as usize;
        match len {
            0 => return Ok((name, end.unwrap_or(at + 1))),
            l if l & 0xc0 == 0xc0 => {
                let ptr = u16_at(m, at)? as usize & 0x3fff;
                end.get_or_insert(at + 2);
                if ptr >= at {
                    return Err(dns_error("forward compression pointer"));
                }
                at = ptr;
            }
            l if l <= 63 => {
                let label = m
                    .get(at + 1..at + 1 + l)
                    .ok_or_else(|| dns_error("truncated label"))?;
                if !name.is_empty() {
                    name.push('.');
                }
                name.push_str(&String::from_utf8_lossy(label).to_ascii_lowercase());
                if name.len() > 255 {
                    return Err(dns_error("name longer than 255 bytes"));
                }
                at += 1 + l;
            }
            _ => return Err(dns_error("bad label type")),
        }
    }
    Err(dns_error("too many compression pointers"))
}

/// Parses a reply to query `id`: the SRV/A/AAAA records of the answer and additional sections.
fn parse_reply(m: &[u8], id: u16) -> Result<Vec<Record>, DiscoveryError> {
    if u16_at(m, 0)? != id {
        return Err(dns_error("reply to another query"));
    }
    let flags = u16_at(m, 2)?;
    if flags & 0x8000 == 0 {
        return Err(dns_error("not a reply"));
    }
    if flags & 0x0200 != 0 {
        return Err(dns_error("truncated reply (TCP fallback is not supported)"));
    }
    match flags & 0x000f {
        0 | 3 => {} // NOERROR, NXDOMAIN (no records)
        _ => return Err(dns_error("the resolver answered with an error")),
    }
    let (qd, an, ns, ar) = (u16_at(m, 4)?, u16_at(m, 6)?, u16_at(m, 8)?, u16_at(m, 10)?);
    let mut at = 12;
    for _ in 0..qd {
        at = read_name(m, at)?.1 + 4;
    }
    let mut out = Vec::new();
    for i in 0..(u32::from(an) + u32::from(ns) + u32::from(ar)) {
        let (owner, next) = read_name(m, at)?;
        let (ty, len) = (u16_at(m, next)?, u16_at(m, next + 8)? as usize);
        let data = next + 10;
        let rdata = m
            .get(data..data + len)
            .ok_or_else(|| dns_error("truncated record"))?;
        let in_authority = i >= u32::from(an) && i < u32::from(an) + u32::from(ns);
        match (ty, len) {
            _ if in_authority => {}
            (TYPE_SRV, 7..) => out.push(Record::Srv {
                priority: u16_at(m, data)?,
                weight: u16_at(m, data + 2)?,
                port: u16_at(m, data + 4)?,
                target: read_name(m, data + 6)?.0,
            }),
            (TYPE_A, 4) => out.push(Record::Addr {
                name: owner,
                ip: IpAddr::V4(Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3])),
            }),
            (TYPE_AAAA, 16) => {
                let mut b = [0u8; 16];
                b.copy_from_slice(rdata);
                out.push(Record::Addr {
                    name: owner,
                    ip: IpAddr::V6(Ipv6Addr::from(b)),
                });
            }
            _ => {}
        }
        at = data + len;
    }
    Ok(out)
}

async fn query(
    resolver: SocketAddr,
    name: &str,
    qtype: u16,
    timeout: Duration,
) -> Result<Vec<Record>, DiscoveryError> {
    let bind: SocketAddr = if resolver.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(resolver).await?;
    // A query id that differs per query without a random source: time and address bits.
    let id = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ u32::from(sock.local_addr()?.port())) as u16;
    let q = encode_query(id, name, qtype)?;
    let mut buf = vec![0u8; MAX_REPLY];
    for _attempt in 0..2 {
        sock.send(&q).await?;
        match tokio::time::timeout(timeout, sock.recv(&mut buf)).await {
            Ok(n) => return parse_reply(&buf[..n?], id),
            Err(_) => continue,
        }
    }
    Err(DiscoveryError::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "DNS query timed out",
    )))
}

async fn resolve_srv(
    name: &str,
    resolver: SocketAddr,
    timeout: Duration,
) -> Result<Vec<Backend>, DiscoveryError> {
    let records = query(resolver, name, TYPE_SRV, timeout).await?;
    let best = records
        .iter()
        .filter_map(|r| match r {
            Record::Srv { priority, .. } => Some(*priority),
            _ => None,
        })
        .min();
    let mut backends = Vec::new();
    for r in &records {
        let Record::Srv {
            priority,
            weight,
            port,
            target,
        } = r
        else {
            continue;
        };
        if Some(*priority) != best {
            continue;
        }
        let mut ips: Vec<IpAddr> = records
            .iter()
            .filter_map(|a| match a {
                Record::Addr { name, ip } if name == target => Some(*ip),
                _ => None,
            })
            .collect();
        if ips.is_empty() {
            for t in [TYPE_A, TYPE_AAAA] {
                for a in query(resolver, target, t, timeout).await? {
                    if let Record::Addr { name, ip } = a
                        && &name == target
                    {
                        ips.push(ip);
                    }
                }
            }
        }
        for ip in ips {
            backends
                .push(Backend::new(SocketAddr::new(ip, *port)).weight(u32::from((*weight).max(1))));
        }
    }
    backends.sort_by_key(|b| b.addr);
    backends.dedup_by_key(|b| b.addr);
    Ok(backends)
}

impl Discovery for SrvDiscovery {
    fn next(&mut self) -> NextSet<'_> {
        Box::pin(async move {
            let (name, resolver, timeout) = (self.name.clone(), self.resolver, self.timeout);
            poll_changes(&mut self.last, self.interval, || {
                resolve_srv(&name, resolver, timeout)
            })
            .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_vectors_and_hostile_names() {
        // A reply for _x._tcp.t SRV: one answer (10 20 8080 a.t, target compressed to the
        // question's "t"), one additional A record for a.t.
        let q = encode_query(0x1234, "_x._tcp.t", TYPE_SRV).unwrap();
        let mut m = q.clone();
        m[2] = 0x81;
        m[3] = 0x80;
        m[7] = 1; // ANCOUNT
        m[11] = 1; // ARCOUNT
        m.extend_from_slice(&[
            0xc0, 12, 0, 33, 0, 1, 0, 0, 0, 60, 0, 10, 0, 10, 0, 20, 0x1f, 0x90, 1, b'a', 0xc0, 20,
        ]);
        let a_at = m.len() - 4;
        m.extend_from_slice(&[
            0xc0, a_at as u8, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 7,
        ]);
        let recs = parse_reply(&m, 0x1234).unwrap();
        assert_eq!(
            recs,
            vec![
                Record::Srv {
                    priority: 10,
                    weight: 20,
                    port: 8080,
                    target: "a.t".into()
                },
                Record::Addr {
                    name: "a.t".into(),
                    ip: "127.0.0.7".parse().unwrap()
                },
            ]
        );
        assert!(parse_reply(&m, 0x9999).is_err());
        // A pointer loop, a forward pointer and truncation are errors, never hangs or panics.
        assert!(read_name(&[0xc0, 0], 0).is_err());
        assert!(
            read_name(&[3, b'a', b'b', b'c', 0xc0, 0], 0).is_err(),
            "a pointer back to itself loops"
        );
        assert!(read_name(&[0xc0, 5, 0, 0, 0, 0], 0).is_err());
        assert!(read_name(&[5, b'a'], 0).is_err());
        for cut in 0..m.len() {
            let _ = parse_reply(&m[..cut], 0x1234);
        }
        assert!(encode_query(1, &"a".repeat(64), TYPE_A).is_err());
    }
}
