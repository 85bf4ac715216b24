//! Malformed input from a raw TCP peer on loopback: a malformed optional attribute
//! (COMMUNITIES, EXTENDED COMMUNITIES) is treated as withdraw and the session stays up; a truncated header gets a NOTIFICATION and
//! a session reset, and the speaker reconnects unharmed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use flowgate_bgp::bytes::BytesMut;
use flowgate_bgp::packet::{Capability, Codec, Message, Notification, Open, Prefix};
use flowgate_bgp::speaker::{Event, PeerConfig, Speaker, SpeakerConfig, State};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Reads messages until a NOTIFICATION or EOF; returns the NOTIFICATION if there was one.
async fn read_until_notification(
    s: &mut TcpStream,
    codec: &mut Codec,
    buf: &mut BytesMut,
) -> Option<Notification> {
    loop {
        while let Some(m) = codec.decode(buf).expect("speaker sends valid messages") {
            if let Message::Notification(n) = m {
                return Some(n);
            }
        }
        let n = timeout(Duration::from_secs(20), s.read_buf(buf))
            .await
            .expect("speaker silent")
            .ok()?;
        if n == 0 {
            return None;
        }
    }
}

/// Accepts the speaker's connection and completes the OPEN exchange.
async fn accept_session(listener: &TcpListener) -> (TcpStream, Codec, BytesMut) {
    let (mut s, _) = timeout(Duration::from_secs(20), listener.accept())
        .await
        .expect("speaker reconnects")
        .unwrap();
    let mut codec = Codec::new();
    let mut buf = BytesMut::new();
    let mut out = BytesMut::new();
    let caps = vec![Capability::MultiProtocol { afi: 1, safi: 1 }];
    codec
        .encode(
            &Message::Open(Open::new(65002, 30, Ipv4Addr::new(127, 0, 0, 2), caps)),
            &mut out,
        )
        .unwrap();
    codec.encode(&Message::Keepalive, &mut out).unwrap();
    s.write_all(&out).await.unwrap();
    loop {
        if let Some(m) = codec.decode(&mut buf).unwrap() {
            if matches!(m, Message::Keepalive) {
                break;
            }
            continue;
        }
        assert!(
            s.read_buf(&mut buf).await.unwrap() > 0,
            "speaker closed during OPEN exchange"
        );
    }
    (s, codec, buf)
}

fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![0xff; 16];
    v.extend_from_slice(&((body.len() + 19) as u16).to_be_bytes());
    v.push(kind);
    v.extend_from_slice(body);
    v
}

/// An UPDATE announcing 198.51.100.0/24 with `extra` attribute bytes appended.
fn update(extra: &[u8]) -> Vec<u8> {
    let mut attrs = vec![
        0x40, 1, 1, 0, 0x40, 2, 6, 2, 1, 0, 0, 0xfd, 0xea, 0x40, 3, 4, 127, 0, 0, 2,
    ];
    attrs.extend_from_slice(extra);
    let mut body = vec![0, 0];
    body.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    body.extend(attrs);
    body.extend_from_slice(&[24, 198, 51, 100]);
    frame(2, &body)
}

async fn wait(speaker: &Speaker, what: &str, f: impl Fn(&Speaker) -> bool) {
    for _ in 0..200 {
        if f(speaker) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}: {:?}", speaker.peers());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_from_a_raw_peer() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let speaker = Speaker::start(SpeakerConfig::new(65001, Ipv4Addr::new(127, 0, 0, 1)))
        .await
        .unwrap();
    let mut pc = PeerConfig::new(LOOPBACK, 65002);
    pc.port = port;
    pc.connect_retry = Duration::from_millis(200);
    pc.connect_retry_max = Duration::from_millis(400);
    speaker.add_peer(pc).unwrap();
    let mut events = speaker.events();
    let prefix: Prefix = "198.51.100.0/24".parse().unwrap();
    let has_route = move |s: &Speaker| s.adj_rib_in(LOOPBACK).iter().any(|(p, _)| *p == prefix);

    let (mut s, mut codec, mut buf) = accept_session(&listener).await;
    wait(&speaker, "Established", |s| {
        s.peer(LOOPBACK).unwrap().state == State::Established
    })
    .await;
    s.write_all(&update(&[])).await.unwrap();
    wait(&speaker, "the route", has_route).await;

    // 1. COMMUNITIES (optional transitive) of 3 bytes: treat-as-withdraw, session stays up.
    s.write_all(&update(&[0xc0, 8, 3, 1, 2, 3])).await.unwrap();
    wait(&speaker, "treat-as-withdraw", |s| !has_route(s)).await;
    let malformed = timeout(Duration::from_secs(5), async {
        loop {
            if let Some(Event::Malformed { errors, .. }) = events.recv().await {
                return errors;
            }
        }
    })
    .await
    .expect("a Malformed event");
    assert_eq!(malformed[0].type_code, 8);
    s.write_all(&update(&[])).await.unwrap();
    wait(&speaker, "the route again on the same session", has_route).await;
    assert_eq!(speaker.peer(LOOPBACK).unwrap().flaps, 0);

    // 1b. EXTENDED COMMUNITIES of 7 octets (RFC 7606 §7.14): the same.
    s.write_all(&update(&[0xc0, 16, 7, 0, 2, 0xfd, 0xea, 0, 0, 0]))
        .await
        .unwrap();
    wait(&speaker, "treat-as-withdraw (extended communities)", |s| {
        !has_route(s)
    })
    .await;
    s.write_all(&update(&[0xc0, 16, 8, 0, 2, 0xfd, 0xea, 0, 0, 0, 1]))
        .await
        .unwrap();
    wait(
        &speaker,
        "the route with a good extended community",
        has_route,
    )
    .await;
    assert_eq!(speaker.peer(LOOPBACK).unwrap().flaps, 0);

    // 2. A header whose length field says 7: NOTIFICATION Bad Message Length, reset.
    let mut bad = vec![0xff; 16];
    bad.extend_from_slice(&[0, 7, 2]);
    s.write_all(&bad).await.unwrap();
    let n = read_until_notification(&mut s, &mut codec, &mut buf)
        .await
        .expect("a NOTIFICATION");
    assert_eq!((n.code, n.subcode), (1, 2), "{n}");
    wait(&speaker, "the session reset", |s| {
        s.peer(LOOPBACK).unwrap().flaps == 1
    })
    .await;
    assert!(
        !has_route(&speaker),
        "routes of a reset session are dropped"
    );

    // 3. The speaker reconnects; a header cut after 10 bytes, then EOF: NOTIFICATION, reset.
    let (mut s, mut codec, mut buf) = accept_session(&listener).await;
    wait(&speaker, "Established again", |s| {
        s.peer(LOOPBACK).unwrap().state == State::Established
    })
    .await;
    s.write_all(&[0xff; 10]).await.unwrap();
    s.shutdown().await.unwrap();
    let n = read_until_notification(&mut s, &mut codec, &mut buf)
        .await
        .expect("a NOTIFICATION");
    assert_eq!(n.code, 1, "{n}");
    wait(&speaker, "the second reset", |s| {
        s.peer(LOOPBACK).unwrap().flaps == 2
    })
    .await;

    // 4. Unharmed: a third session comes up and carries routes.
    let (mut s, _, _) = accept_session(&listener).await;
    wait(&speaker, "Established a third time", |s| {
        s.peer(LOOPBACK).unwrap().state == State::Established
    })
    .await;
    s.write_all(&update(&[])).await.unwrap();
    wait(&speaker, "the route on the third session", has_route).await;
    speaker.shutdown().await;
}
