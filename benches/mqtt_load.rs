//! An MQTT load generator for `benches/mqtt-vs-direct.sh` (not a criterion bench).
//!
//! ```text
//! cargo bench --bench mqtt_load -- flood ADDR QOS PUBLISHERS MESSAGES SIZE
//!     one subscriber on bench/#, PUBLISHERS connections each sending MESSAGES PUBLISHes of
//!     SIZE bytes at QOS (0 or 1; QoS 1 keeps 64 unacknowledged per publisher); prints
//!     {"qos":…,"sent":…,"received":…,"seconds":…,"rate":…} — rate = received per second
//! cargo bench --bench mqtt_load -- idle ADDR CONNECTIONS SECONDS
//!     opens CONNECTIONS MQTT sessions (CONNECT, CONNACK), prints "ready", holds them
//! ```
//!
//! Written with flowgate-mqtt's codec and tokio, so the client is not the bottleneck.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    missing_docs
)]

use std::time::{Duration, Instant};

use bytes::BytesMut;
use flowgate_mqtt::{
    Connect, Decoder, Frame, Limits, Packet, ProtocolVersion, PubResponse, PublishHead, QoS,
    Subscribe, Subscription,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const V: ProtocolVersion = ProtocolVersion::V311;
const WINDOW: usize = 64;

fn connect_packet(id: &str) -> BytesMut {
    let c = Connect {
        version: V,
        clean_start: true,
        keep_alive: 600,
        properties: Default::default(),
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
    };
    let mut b = BytesMut::new();
    Packet::Connect(Box::new(c)).encode(V, &mut b).unwrap();
    b
}

/// Connects and waits for CONNACK; returns the stream and its decoder state.
async fn session(addr: &str, id: &str) -> (TcpStream, Decoder, BytesMut) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(&connect_packet(id)).await.unwrap();
    let mut d = Decoder::for_version(V, Limits::default());
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        if let Some(f) = d.decode(&mut buf).unwrap() {
            match f {
                Frame::Packet(Packet::ConnAck(a)) => {
                    assert_eq!(a.reason_code.0, 0, "CONNACK refused");
                    return (s, d, buf);
                }
                other => panic!("expected CONNACK, got {other:?}"),
            }
        }
        assert!(
            s.read_buf(&mut buf).await.unwrap() > 0,
            "closed before CONNACK"
        );
    }
}

async fn subscriber(
    addr: String,
    qos: QoS,
    expect: u64,
    ready: tokio::sync::oneshot::Sender<()>,
) -> u64 {
    let (mut s, mut d, mut buf) = session(&addr, "bench-sub").await;
    let sub = Subscribe {
        packet_id: 1,
        properties: Default::default(),
        subscriptions: vec![Subscription::new("bench/#", qos)],
    };
    let mut out = BytesMut::new();
    Packet::Subscribe(sub).encode(V, &mut out).unwrap();
    s.write_all(&out).await.unwrap();
    out.clear();
    let mut ready = Some(ready);
    let mut got = 0u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while got < expect {
        while let Some(f) = d.decode(&mut buf).unwrap() {
            match f {
                Frame::Packet(Packet::SubAck(_)) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                Frame::PublishStart(h) => {
                    if let Some(id) = h.packet_id {
                        Packet::PubAck(PubResponse::new(id))
                            .encode(V, &mut out)
                            .unwrap();
                    }
                }
                Frame::PublishEnd => got += 1,
                _ => {}
            }
        }
        if !out.is_empty() {
            s.write_all(&out).await.unwrap();
            out.clear();
        }
        if got >= expect {
            break;
        }
        match tokio::time::timeout_at(deadline, s.read_buf(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => break,
        }
    }
    got
}

async fn publisher(addr: String, n: usize, qos: QoS, size: usize, me: usize) -> u64 {
    let (mut s, mut d, mut buf) = session(&addr, &format!("bench-pub-{me}")).await;
    let payload = vec![b'x'; size];
    let topic = format!("bench/{me}");
    let mut out = BytesMut::with_capacity(64 * 1024);
    let mut sent = 0usize;
    let mut unacked = 0usize;
    while sent < n || unacked > 0 {
        // Send as many as the window allows, in one write.
        while sent < n && (qos == QoS::AtMostOnce || unacked < WINDOW) && out.len() < 32 * 1024 {
            let id = (sent % 65_535 + 1) as u16;
            let head = PublishHead {
                topic: topic.clone(),
                qos,
                retain: false,
                dup: false,
                packet_id: (qos != QoS::AtMostOnce).then_some(id),
                properties: Default::default(),
                payload_len: size,
            };
            head.encode(V, &mut out).unwrap();
            out.extend_from_slice(&payload);
            sent += 1;
            if qos != QoS::AtMostOnce {
                unacked += 1;
            }
        }
        if !out.is_empty() {
            s.write_all(&out).await.unwrap();
            out.clear();
            if qos == QoS::AtMostOnce {
                continue;
            }
        }
        if unacked == 0 {
            continue;
        }
        if s.read_buf(&mut buf).await.unwrap() == 0 {
            break;
        }
        while let Some(f) = d.decode(&mut buf).unwrap() {
            if let Frame::Packet(Packet::PubAck(_)) = f {
                unacked -= 1;
            }
        }
    }
    // A clean goodbye, so the broker keeps no will and no session.
    Packet::Disconnect(Default::default())
        .encode(V, &mut out)
        .unwrap();
    let _ = s.write_all(&out).await;
    sent as u64
}

async fn flood(addr: String, qos: QoS, publishers: usize, messages: usize, size: usize) {
    let expect = (publishers * messages) as u64;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let sub = tokio::spawn(subscriber(addr.clone(), qos, expect, tx));
    rx.await.unwrap();
    let t0 = Instant::now();
    let pubs: Vec<_> = (0..publishers)
        .map(|i| tokio::spawn(publisher(addr.clone(), messages, qos, size, i)))
        .collect();
    let mut sent = 0;
    for p in pubs {
        sent += p.await.unwrap();
    }
    let received = sub.await.unwrap();
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{{\"qos\":{},\"sent\":{sent},\"received\":{received},\"seconds\":{secs:.3},\"rate\":{:.0}}}",
        qos as u8,
        received as f64 / secs
    );
}

async fn idle(addr: String, n: usize, secs: u64) {
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        held.push(session(&addr, &format!("idle-{i}")).await.0);
    }
    println!("ready {}", held.len());
    tokio::time::sleep(Duration::from_secs(secs)).await;
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    match arg(0).as_str() {
        "flood" => {
            let qos = if arg(2) == "1" {
                QoS::AtLeastOnce
            } else {
                QoS::AtMostOnce
            };
            rt.block_on(flood(
                arg(1),
                qos,
                arg(3).parse().unwrap(),
                arg(4).parse().unwrap(),
                arg(5).parse().unwrap(),
            ));
        }
        "idle" => rt.block_on(idle(
            arg(1),
            arg(2).parse().unwrap(),
            arg(3).parse().unwrap(),
        )),
        _ => {
            eprintln!(
                "usage: mqtt_load flood ADDR QOS PUBLISHERS MESSAGES SIZE | idle ADDR N SECONDS"
            );
            std::process::exit(2);
        }
    }
}
