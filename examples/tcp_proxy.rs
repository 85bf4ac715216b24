//! A TCP proxy with round robin over three upstreams, built with the Rust API.
//!
//! Shows: `Connect::round_robin`, a `Dump` for visibility, and a `Server` with listeners.
//! The three upstreams are Flowgate pipelines too (they tag each reply with their port), so
//! the example needs nothing else running.
//!
//! Run it:
//!
//! ```text
//! cargo run --example tcp_proxy              # proxy on 127.0.0.1:8000, upstreams on 9001-9003
//! ```
//!
//! Poke it (each new connection goes to the next upstream):
//!
//! ```text
//! printf 'hello\n' | nc -q1 127.0.0.1 8000   # -> [9001] hello
//! printf 'hello\n' | nc -q1 127.0.0.1 8000   # -> [9002] hello
//! printf 'hello\n' | nc -q1 127.0.0.1 8000   # -> [9003] hello
//! ```
#![allow(clippy::print_stdout)]

use std::error::Error;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use flowgate::filters::net::{Connect, Dump};
use flowgate::pipeline::server::{ListenerConfig, Protocol, Server};
use flowgate::pipeline::{Event, Pipeline};

/// An upstream that echoes with a `[tag] ` in front of every chunk.
fn tagging_echo(tag: String) -> Result<Pipeline, Box<dyn Error>> {
    let prefix = Bytes::from(format!("[{tag}] "));
    Ok(Pipeline::builder(format!("echo-{tag}"))
        .transform("tag", move || {
            let prefix = prefix.clone();
            move |ev: Event, out: &mut dyn FnMut(Event)| match ev {
                Event::Data(b) => {
                    out(Event::Data(prefix.clone()));
                    out(Event::Data(b));
                }
                e => out(e),
            }
        })
        .build()?)
}

/// Starts the upstreams and the proxy; returns the server and the proxy's bound address.
fn start(
    proxy: SocketAddr,
    upstreams_at: [SocketAddr; 3],
) -> Result<(Server, SocketAddr), Box<dyn Error>> {
    let server = Server::builder().workers(1).start()?;
    let mut listeners = Vec::new();
    let mut upstreams = Vec::new();
    for (i, addr) in upstreams_at.into_iter().enumerate() {
        let tag = if addr.port() == 0 {
            format!("u{i}")
        } else {
            addr.port().to_string()
        };
        listeners.push((ListenerConfig::tcp(addr), Arc::new(tagging_echo(tag)?)));
    }
    // Bind the upstreams first so port 0 (tests) resolves to real ports.
    server.apply(listeners.clone())?;
    for (cfg, _) in &listeners {
        let bound = server
            .local_addr(cfg.listen, Protocol::Tcp)
            .ok_or("upstream not bound")?;
        upstreams.push(bound.to_string());
    }
    let proxy_pipeline = Pipeline::builder("proxy")
        .filter(Dump::new("client->upstream"))
        .filter(Connect::round_robin(upstreams))
        .build()?;
    listeners.push((ListenerConfig::tcp(proxy), Arc::new(proxy_pipeline)));
    server.apply(listeners)?;
    let bound = server
        .local_addr(proxy, Protocol::Tcp)
        .ok_or("proxy not bound")?;
    Ok((server, bound))
}

fn main() -> Result<(), Box<dyn Error>> {
    let upstreams = [
        "127.0.0.1:9001".parse()?,
        "127.0.0.1:9002".parse()?,
        "127.0.0.1:9003".parse()?,
    ];
    let (_server, addr) = start("127.0.0.1:8000".parse()?, upstreams)?;
    println!("tcp proxy on {addr}, round robin over 127.0.0.1:9001-9003 (Ctrl-C to stop)");
    loop {
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn smoke_round_robin_over_three_upstreams() {
        // Port 0 everywhere: listeners are told apart by their loopback IPs.
        let ups = ["127.0.0.11:0", "127.0.0.12:0", "127.0.0.13:0"]
            .map(|a: &str| a.parse::<SocketAddr>().unwrap());
        let (server, addr) = start("127.0.0.1:0".parse().unwrap(), ups).unwrap();
        let mut tags = Vec::new();
        for _ in 0..3 {
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            c.write_all(b"hi").unwrap();
            c.shutdown(std::net::Shutdown::Write).unwrap();
            let mut s = String::new();
            c.read_to_string(&mut s).unwrap();
            assert!(s.ends_with("] hi"), "{s}");
            tags.push(s);
        }
        tags.sort();
        tags.dedup();
        assert_eq!(
            tags.len(),
            3,
            "three different upstreams answered: {tags:?}"
        );
        server.shutdown();
    }
}
