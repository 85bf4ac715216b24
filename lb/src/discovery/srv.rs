//! DNS SRV discovery: a small, bounded DNS client over UDP for SRV, A and AAAA records.
//!
//! It asks one resolver (the first `nameserver` of `/etc/resolv.conf` by default) for the
//! SRV records of a name (`_http._tcp.example.com`), keeps the targets of the lowest
//! priority, and resolves each target's A and AAAA records (from the reply's additional
//! section when the resolver sent them, else with its own queries to the same resolver).
//! Replies are bounded (512 bytes, no TCP fallback: a truncated reply is an error), names
//! are decoded with a limit on compression pointers, and every field is range-checked.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use flowgate_dns::hickory::op::{MessageType, ResponseCode};
use flowgate_dns::hickory::rr::{RData, RecordType};
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
    flowgate_dns::query(name, RecordType::from(qtype), id, true, None)
        .map_err(|e| dns_error(&e.to_string()))
}

/// A name as the records compare it: lower case, no final dot.
fn plain(n: &flowgate_dns::hickory::rr::Name) -> String {
    n.to_ascii().trim_end_matches('.').to_ascii_lowercase()
}

/// Parses a reply to query `id` with flowgate-dns (its validation pass bounds every
/// name, pointer and count first): the SRV/A/AAAA records of the answer and additional
/// sections.
fn parse_reply(m: &[u8], id: u16) -> Result<Vec<Record>, DiscoveryError> {
    let (msg, _) = flowgate_dns::decode(m, &flowgate_dns::Limits::default())
        .map_err(|e| dns_error(&format!("malformed reply: {e}")))?;
    let meta = &msg.metadata;
    if meta.id != id {
        return Err(dns_error("reply to another query"));
    }
    if meta.message_type != MessageType::Response {
        return Err(dns_error("not a reply"));
    }
    if meta.truncation {
        return Err(dns_error("truncated reply (TCP fallback is not supported)"));
    }
    if !matches!(
        meta.response_code,
        ResponseCode::NoError | ResponseCode::NXDomain
    ) {
        return Err(dns_error("the resolver answered with an error"));
    }
    let mut out = Vec::new();
    for r in msg.answers.iter().chain(msg.additionals.iter()) {
        match &r.data {
            RData::SRV(srv) => out.push(Record::Srv {
                priority: srv.priority,
                weight: srv.weight,
                port: srv.port,
                target: plain(&srv.target),
            }),
            RData::A(a) => out.push(Record::Addr {
                name: plain(&r.name),
                ip: IpAddr::V4(a.0),
            }),
            RData::AAAA(a) => out.push(Record::Addr {
                name: plain(&r.name),
                ip: IpAddr::V6(a.0),
            }),
            _ => {}
        }
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
        let header = [0x12, 0x34, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0];
        for name in [
            &[0xc0u8, 12][..],
            &[3, b'a', b'b', b'c', 0xc0, 12],
            &[0xc0, 40],
            &[5, b'a'],
        ] {
            let mut bad = header.to_vec();
            bad.extend_from_slice(name);
            bad.extend_from_slice(&[0, 33, 0, 1]);
            assert!(parse_reply(&bad, 0x1234).is_err(), "{name:?}");
        }
        for cut in 0..m.len() {
            let _ = parse_reply(&m[..cut], 0x1234);
        }
        assert!(encode_query(1, &"a".repeat(64), TYPE_A).is_err());
    }
}
