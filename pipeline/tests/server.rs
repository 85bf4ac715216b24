//! Listeners on loopback: TCP and UDP echo pipelines, reload that keeps live connections on
//! the old pipeline, and a graceful drain.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flowgate_pipeline::server::{ListenerConfig, Protocol, Server};
use flowgate_pipeline::testing::wait_until;
use flowgate_pipeline::{Event, Pipeline};

fn echo() -> Arc<Pipeline> {
    Arc::new(Pipeline::builder("echo").build().unwrap())
}

fn tag(t: &'static str) -> Arc<Pipeline> {
    Arc::new(
        Pipeline::builder(t)
            .transform("tag", move || {
                move |ev: Event, out: &mut dyn FnMut(Event)| match ev {
                    Event::Data(b) => {
                        let mut v = t.as_bytes().to_vec();
                        v.extend_from_slice(&b);
                        out(Event::Data(Bytes::from(v)))
                    }
                    e => out(e),
                }
            })
            .build()
            .unwrap(),
    )
}

fn roundtrip(c: &mut TcpStream, msg: &[u8], expect: usize) -> Vec<u8> {
    c.write_all(msg).unwrap();
    let mut got = vec![0u8; expect];
    c.read_exact(&mut got).unwrap();
    got
}

#[test]
fn tcp_echo_reload_and_drain() {
    let server = Server::builder()
        .workers(2)
        .drain_timeout(Duration::from_secs(5))
        .start()
        .unwrap();
    let cfg = ListenerConfig::tcp("127.0.0.1:0".parse().unwrap());
    server.apply(vec![(cfg.clone(), tag("v1:"))]).unwrap();
    let addr = server.local_addr(cfg.listen, Protocol::Tcp).unwrap();
    let mut old = TcpStream::connect(addr).unwrap();
    old.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(roundtrip(&mut old, b"a", 4), b"v1:a");

    // Reload: new connections see v2, the live one stays on v1.
    server.apply(vec![(cfg.clone(), tag("v2:"))]).unwrap();
    let mut new = TcpStream::connect(addr).unwrap();
    new.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(roundtrip(&mut new, b"b", 4), b"v2:b");
    assert_eq!(roundtrip(&mut old, b"c", 4), b"v1:c");

    // Half-close: the echo finishes and the server closes its side.
    new.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    new.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());

    // Shutdown drains: the live connection keeps working until it closes.
    let t = std::thread::spawn(move || server.shutdown());
    assert!(
        wait_until(Duration::from_secs(5), || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err()
        }),
        "no longer accepting"
    );
    assert_eq!(roundtrip(&mut old, b"d", 4), b"v1:d");
    drop(old);
    t.join().unwrap();
}

#[test]
fn a_port_held_by_another_server_is_refused_even_with_reuseport() {
    // Another process's SO_REUSEPORT listener would let us bind too and share its
    // connections; the probe bind makes that an error.
    let other = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    other.set_reuse_port(true).unwrap();
    other
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    other.listen(16).unwrap();
    let addr = other.local_addr().unwrap().as_socket().unwrap();
    let server = Server::builder().workers(1).start().unwrap();
    let err = server
        .apply(vec![(ListenerConfig::tcp(addr), echo())])
        .unwrap_err();
    assert!(err.to_string().contains("cannot listen on"), "{err}");
    server.shutdown();
}

#[test]
fn bind_conflict_is_a_clear_error_and_changes_nothing() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server = Server::builder().workers(1).start().unwrap();
    let cfg = ListenerConfig::tcp(taken.local_addr().unwrap());
    let err = server.apply(vec![(cfg, echo())]).unwrap_err();
    assert!(err.to_string().contains("cannot listen on"), "{err}");
    server.shutdown();
}

#[test]
fn udp_datagrams_are_messages_per_peer() {
    let server = Server::builder().workers(2).start().unwrap();
    let cfg = ListenerConfig::udp("127.0.0.1:0".parse().unwrap());
    server.apply(vec![(cfg.clone(), tag("u:"))]).unwrap();
    let addr = server.local_addr(cfg.listen, Protocol::Udp).unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 64];
    for msg in [&b"one"[..], b"two"] {
        client.send_to(msg, addr).unwrap();
        let (n, from) = client.recv_from(&mut buf).unwrap();
        assert_eq!(from, addr);
        assert_eq!(&buf[..n], [&b"u:"[..], msg].concat().as_slice());
    }
    server.shutdown();
}

#[test]
fn drain_deadline_closes_connections_that_do_not_finish() {
    let server = Server::builder()
        .workers(1)
        .drain_timeout(Duration::from_millis(500))
        .start()
        .unwrap();
    let cfg = ListenerConfig::tcp("127.0.0.1:0".parse().unwrap());
    server.apply(vec![(cfg.clone(), echo())]).unwrap();
    let addr = server.local_addr(cfg.listen, Protocol::Tcp).unwrap();
    let mut idle = TcpStream::connect(addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(roundtrip(&mut idle, b"x", 1), b"x");
    let started = std::time::Instant::now();
    server.shutdown();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // The connection was closed by the deadline.
    let mut buf = [0u8; 1];
    assert_eq!(idle.read(&mut buf).unwrap_or(0), 0);
}

/// Tags each datagram and says "bye" when its peer's session ends.
fn tag_and_bye() -> Arc<Pipeline> {
    Arc::new(
        Pipeline::builder("bye")
            .transform("tag", || {
                |ev: Event, out: &mut dyn FnMut(Event)| match ev {
                    Event::Data(b) => out(Event::Data(Bytes::from([&b"u:"[..], &b].concat()))),
                    Event::StreamEnd(e) => {
                        out(Event::Data(Bytes::from_static(b"bye")));
                        out(Event::StreamEnd(e))
                    }
                    e => out(e),
                }
            })
            .build()
            .unwrap(),
    )
}

fn recv(c: &UdpSocket) -> Vec<u8> {
    let mut buf = [0u8; 64];
    let (n, _) = c.recv_from(&mut buf).unwrap();
    buf[..n].to_vec()
}

#[test]
fn udp_sessions_end_when_idle_and_drain_when_the_listener_goes() {
    let server = Server::builder()
        .workers(1)
        .drain_timeout(Duration::from_secs(5))
        .start()
        .unwrap();
    let mut cfg = ListenerConfig::udp("127.0.0.1:0".parse().unwrap());
    cfg.udp_idle_timeout = Duration::from_millis(300);
    server.apply(vec![(cfg.clone(), tag_and_bye())]).unwrap();
    let addr = server.local_addr(cfg.listen, Protocol::Udp).unwrap();
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    for c in [&a, &b] {
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    }

    // Idle: a's session ends after the timeout (not before), b's stays while b talks.
    let t0 = std::time::Instant::now();
    a.send_to(b"1", addr).unwrap();
    assert_eq!(recv(&a), b"u:1");
    for i in 0..5 {
        b.send_to(format!("{i}").as_bytes(), addr).unwrap();
        assert_eq!(recv(&b), format!("u:{i}").as_bytes());
        if i < 4 {
            // Pacing on purpose: b talks every 100 ms, inside the 300 ms idle timeout.
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    assert_eq!(recv(&a), b"bye");
    let idle = t0.elapsed();
    assert!(idle >= Duration::from_millis(300), "ended after {idle:?}");
    assert!(idle < Duration::from_secs(2), "ended after {idle:?}");

    // A peer that comes back gets a new session.
    a.send_to(b"2", addr).unwrap();
    assert_eq!(recv(&a), b"u:2");

    // Removing the listener ends both sessions, which still get to say goodbye.
    let t1 = std::time::Instant::now();
    server.apply(vec![]).unwrap();
    assert_eq!(recv(&a), b"bye");
    assert!(
        t1.elapsed() < Duration::from_millis(250),
        "not ended by the removal"
    );
    assert_eq!(recv(&b), b"bye");
    server.shutdown();
}

/// True when the server closed `c` without a word (a refused connection).
fn refused(c: &mut TcpStream) -> bool {
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = c.write_all(b"x");
    let mut buf = [0u8; 8];
    matches!(c.read(&mut buf), Ok(0) | Err(_))
}

#[test]
fn max_connections_counts_each_listener_over_all_workers() {
    let server = Server::builder().workers(2).start().unwrap();
    let mut small = ListenerConfig::tcp("127.0.0.1:0".parse().unwrap());
    small.max_connections = 3;
    let other = ListenerConfig::tcp("127.0.0.2:0".parse().unwrap());
    let mut udp = ListenerConfig::udp("127.0.0.1:0".parse().unwrap());
    udp.max_connections = 2;
    server
        .apply(vec![
            (small.clone(), echo()),
            (other.clone(), echo()),
            (udp.clone(), tag("u:")),
        ])
        .unwrap();
    let a = server.local_addr(small.listen, Protocol::Tcp).unwrap();
    let b = server.local_addr(other.listen, Protocol::Tcp).unwrap();
    let u = server.local_addr(udp.listen, Protocol::Udp).unwrap();

    // UDP peer sessions of another listener do not count against a TCP listener (they
    // did when the count was the worker's).
    let peers: Vec<UdpSocket> = (0..3)
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            s
        })
        .collect();
    let mut buf = [0u8; 16];
    for (i, p) in peers.iter().enumerate() {
        p.send_to(b"hi", u).unwrap();
        let got = p.recv_from(&mut buf);
        assert_eq!(got.is_ok(), i < 2, "udp peer {i}: {got:?}");
    }

    // Three connections of `small`, spread over the two workers, fill it.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = TcpStream::connect(a).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(roundtrip(&mut c, b"a", 1), b"a");
        held.push(c);
    }
    for _ in 0..4 {
        let mut c = TcpStream::connect(a).unwrap();
        assert!(refused(&mut c), "a fourth connection of `small` is refused");
    }
    // The other listener is not affected.
    let mut others = Vec::new();
    for _ in 0..5 {
        let mut c = TcpStream::connect(b).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(roundtrip(&mut c, b"b", 1), b"b");
        others.push(c);
    }
    // A closed connection gives its slot back.
    drop(held.pop());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut c = TcpStream::connect(a).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(b"c").unwrap();
        let mut one = [0u8; 1];
        if matches!(c.read(&mut one), Ok(1)) {
            assert_eq!(&one, b"c");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slot never came back"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop((held, others));
    server.shutdown();
}

/// Answers each connection with its original destination (or `none`) and closes.
struct SayOriginalDst;

impl flowgate_pipeline::Filter for SayOriginalDst {
    fn describe(&self) -> flowgate_pipeline::Description {
        flowgate_pipeline::Description::filter("say-original-dst")
    }
    fn attach(
        &self,
        _input: flowgate_pipeline::Events,
        cx: &flowgate_pipeline::Context,
    ) -> flowgate_pipeline::Events {
        let text = match cx.conn().original_dst {
            Some(a) => a.to_string(),
            None => "none".into(),
        };
        Box::pin(futures_util::stream::iter([
            Event::Data(Bytes::from(text)),
            Event::END,
        ]))
    }
}

fn read_all(addr: std::net::SocketAddr) -> String {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut s = String::new();
    c.read_to_string(&mut s).unwrap();
    s
}

#[test]
fn a_transparent_listener_asks_the_original_destination_lookup() {
    // The lookup knows the peers it is told about, as eBPF steering's map would.
    let known = Arc::new(std::sync::Mutex::new(Vec::<std::net::SocketAddr>::new()));
    let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (k, n) = (known.clone(), asked.clone());
    let server = Server::builder()
        .workers(1)
        .original_dst(Arc::new(move |peer| {
            n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            k.lock()
                .unwrap()
                .contains(&peer)
                .then(|| "10.9.9.9:80".parse().unwrap())
        }))
        .start()
        .unwrap();
    let say = Arc::new(
        Pipeline::builder("say")
            .filter(SayOriginalDst)
            .build()
            .unwrap(),
    );
    let mut transparent = ListenerConfig::tcp("127.0.0.1:0".parse().unwrap());
    transparent.transparent = true;
    let plain = ListenerConfig::tcp("127.0.0.2:0".parse().unwrap());
    server
        .apply(vec![
            (transparent.clone(), say.clone()),
            (plain.clone(), say),
        ])
        .unwrap();
    let t_addr = server
        .local_addr(transparent.listen, Protocol::Tcp)
        .unwrap();
    let p_addr = server.local_addr(plain.listen, Protocol::Tcp).unwrap();

    // Unknown peer and no NAT entry: no original destination.
    assert_eq!(read_all(t_addr), "none");
    // A known peer: the lookup's answer. Bind the client's port first to know it.
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    let me = s.local_addr().unwrap().as_socket().unwrap();
    known.lock().unwrap().push(me);
    s.connect(&t_addr.into()).unwrap();
    let mut c: TcpStream = s.into();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = String::new();
    c.read_to_string(&mut got).unwrap();
    assert_eq!(got, "10.9.9.9:80");
    // A listener that is not transparent never asks.
    assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(read_all(p_addr), "none");
    assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 2);

    // The listener's socket, for the kernel to steer to: it is the listening one.
    let dup = server
        .listener_socket(transparent.listen, Protocol::Tcp)
        .unwrap();
    assert_eq!(dup.local_addr().unwrap().as_socket(), Some(t_addr));
    assert!(
        server
            .listener_socket("127.0.0.3:1".parse().unwrap(), Protocol::Tcp)
            .is_none()
    );
    server.shutdown();
}
