//! A DNS load balancer: serves a zone of registered services (answers ordered by a
//! flowgate-lb balancer) and forwards every other name to an upstream resolver, with a
//! cache. Built with the Rust API.
//!
//! Shows: `DecodeDns` → `DnsRespond` → `DnsForward` → `EncodeDns` on one UDP and one TCP
//! listener, and changing endpoint health at run time through the service registry. The
//! upstream is another Flowgate pipeline (authoritative for `example.test`), so the
//! example needs nothing else running.
//!
//! Run it:
//!
//! ```text
//! cargo run --example dns_lb          # DNS on 127.0.0.1:5300 (UDP and TCP), upstream on :5301
//! ```
//!
//! Poke it:
//!
//! ```text
//! kdig @127.0.0.1 -p 5300 api.svc.test A +short         # 10.0.0.1..3, first one rotates
//! kdig @127.0.0.1 -p 5300 api.svc.test SRV +tcp         # SRV targets e0..e2.api.svc.test
//! kdig @127.0.0.1 -p 5300 www.example.test A +short     # forwarded: 192.0.2.80
//! kdig @127.0.0.1 -p 5300 nope.svc.test A               # NXDOMAIN with the zone's SOA
//! ```
#![allow(clippy::print_stdout)]

use std::error::Error;
use std::net::SocketAddr;
use std::sync::Arc;

use flowgate::filters::dns::{
    DecodeDns, DnsForward, DnsForwardConfig, DnsRespond, DnsRespondConfig, EncodeDns, ServiceSpec,
};
use flowgate::pipeline::Pipeline;
use flowgate::pipeline::server::{ListenerConfig, Protocol, Server};

fn respond(zone: &str, services: &[(&str, &[&str])]) -> Result<DnsRespond, Box<dyn Error>> {
    let mut specs = Vec::new();
    for (name, eps) in services {
        let mut endpoints = Vec::new();
        for e in *eps {
            endpoints.push(flowgate::lb::Backend::new(e.parse()?));
        }
        specs.push(ServiceSpec {
            name: name.to_string(),
            endpoints,
            balance: None,
            health_check: None,
        });
    }
    let cfg: DnsRespondConfig = serde_json::from_value(serde_json::json!({ "zone": zone }))?;
    Ok(DnsRespond::new(DnsRespondConfig {
        services: specs,
        ..cfg
    })?)
}

/// A UDP listener whose per-client sessions end after 2 s without a query (DNS clients
/// use a fresh source port for almost every query).
fn udp_listener(addr: SocketAddr) -> ListenerConfig {
    ListenerConfig {
        udp_idle_timeout: std::time::Duration::from_secs(2),
        ..ListenerConfig::udp(addr)
    }
}

/// Starts the upstream and the load balancer; returns the server, the balancer's UDP and
/// TCP addresses and its `DnsRespond` (for the registry).
fn start(
    dns: SocketAddr,
    upstream_at: SocketAddr,
) -> Result<(Server, SocketAddr, SocketAddr, DnsRespond), Box<dyn Error>> {
    let server = Server::builder().workers(1).start()?;
    // The upstream resolver: authoritative for example.test.
    let upstream = Pipeline::builder("upstream")
        .filter(DecodeDns::default())
        .filter(respond("example.test", &[("www", &["192.0.2.80:80"])])?)
        .filter(EncodeDns::default())
        .build()?;
    let mut listeners = vec![(udp_listener(upstream_at), Arc::new(upstream))];
    server.apply(listeners.clone())?;
    let upstream_addr = server
        .local_addr(upstream_at, Protocol::Udp)
        .ok_or("upstream not bound")?;

    let services = respond(
        "svc.test",
        &[
            ("api", &["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"]),
            ("web", &["10.0.1.1:80", "[2001:db8::1]:80"]),
        ],
    )?;
    let forward: DnsForwardConfig =
        serde_json::from_value(serde_json::json!({ "endpoints": [upstream_addr] }))?;
    let lb = Arc::new(
        Pipeline::builder("dns-lb")
            .filter(DecodeDns::default())
            .filter(services.clone())
            .filter(DnsForward::new(forward)?)
            .filter(EncodeDns::default())
            .build()?,
    );
    listeners.push((udp_listener(dns), lb.clone()));
    listeners.push((ListenerConfig::tcp(dns), lb));
    server.apply(listeners)?;
    let udp = server
        .local_addr(dns, Protocol::Udp)
        .ok_or("udp not bound")?;
    let tcp = server
        .local_addr(dns, Protocol::Tcp)
        .ok_or("tcp not bound")?;
    Ok((server, udp, tcp, services))
}

fn main() -> Result<(), Box<dyn Error>> {
    let (_server, udp, tcp, _services) =
        start("127.0.0.1:5300".parse()?, "127.0.0.1:5301".parse()?)?;
    println!("dns load balancer on {udp} (udp) and {tcp} (tcp); zone svc.test; Ctrl-C to stop");
    loop {
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::time::Duration;

    /// A query for `name`/`qtype` with ID 0x0101, by hand.
    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![1, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in name.split('.') {
            q.push(l.len() as u8);
            q.extend_from_slice(l.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&[0, 1]);
        q
    }

    /// The A records of an answer (they follow the question; owners are pointers).
    fn a_records(resp: &[u8], qlen: usize) -> Vec<[u8; 4]> {
        let an = u16::from_be_bytes([resp[6], resp[7]]);
        let mut p = qlen;
        let mut v = Vec::new();
        for _ in 0..an {
            let rdlen = usize::from(u16::from_be_bytes([resp[p + 10], resp[p + 11]]));
            if rdlen == 4 {
                v.push([resp[p + 12], resp[p + 13], resp[p + 14], resp[p + 15]]);
            }
            p += 12 + rdlen;
        }
        v
    }

    #[test]
    fn smoke_zone_health_and_forwarding() {
        // Port 0 everywhere: listeners are told apart by their loopback IPs.
        let (server, udp, tcp, services) = start(
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.21:0".parse().unwrap(),
        )
        .unwrap();
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 1500];
        let mut ask = |name: &str| {
            let q = query(name, 1);
            sock.send_to(&q, udp).unwrap();
            let n = sock.recv(&mut buf).unwrap();
            (buf[3] & 0x0f, a_records(&buf[..n], q.len()))
        };
        let (rc, a) = ask("api.svc.test");
        assert_eq!((rc, a.len()), (0, 3));
        assert!(
            services
                .registry()
                .set_healthy("api", "10.0.0.2:8080".parse().unwrap(), false)
        );
        for _ in 0..3 {
            let (_, a) = ask("api.svc.test");
            assert_eq!(a.len(), 2);
            assert!(
                !a.contains(&[10, 0, 0, 2]),
                "an unhealthy endpoint is not answered"
            );
        }
        assert_eq!(
            ask("www.example.test"),
            (0, vec![[192, 0, 2, 80]]),
            "forwarded"
        );
        assert_eq!(ask("nope.svc.test").0, 3, "NXDOMAIN");
        // TCP: length-prefixed.
        let mut t = std::net::TcpStream::connect(tcp).unwrap();
        t.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let q = query("web.svc.test", 1);
        t.write_all(&(q.len() as u16).to_be_bytes()).unwrap();
        t.write_all(&q).unwrap();
        let mut len = [0u8; 2];
        t.read_exact(&mut len).unwrap();
        let mut r = vec![0u8; usize::from(u16::from_be_bytes(len))];
        t.read_exact(&mut r).unwrap();
        assert_eq!(a_records(&r, q.len()), vec![[10, 0, 1, 1]]);
        drop(t);
        server.shutdown();
    }
}
