//! The speaker against a scripted peer over an in-memory pipe with paused time: no sockets,
//! deterministic timers.

// Test helpers outside #[test] fns: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use flowgate_bgp::bytes::BytesMut;
use flowgate_bgp::packet::{
    AsPath, Capability, Codec, Message, Notification, Open, Origin, PathAttributes, Prefix, Update,
};
use flowgate_bgp::speaker::{
    DownReason, Event, PeerConfig, RouteAttributes, Speaker, SpeakerConfig, State,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

const PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));

struct ScriptedPeer {
    io: DuplexStream,
    codec: Codec,
    buf: BytesMut,
}

impl ScriptedPeer {
    async fn recv(&mut self) -> Option<Message> {
        loop {
            if let Some(m) = self
                .codec
                .decode(&mut self.buf)
                .expect("speaker sends valid messages")
            {
                return Some(m);
            }
            let n = tokio::time::timeout(Duration::from_secs(600), self.io.read_buf(&mut self.buf))
                .await
                .expect("speaker silent for 600 s")
                .ok()?;
            if n == 0 {
                return None;
            }
        }
    }

    /// The next message that is not a KEEPALIVE.
    async fn recv_non_keepalive(&mut self) -> Option<Message> {
        loop {
            match self.recv().await? {
                Message::Keepalive => continue,
                m => return Some(m),
            }
        }
    }

    async fn send(&mut self, m: Message) {
        let mut b = BytesMut::new();
        self.codec.encode(&m, &mut b).unwrap();
        self.io.write_all(&b).await.unwrap();
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.unwrap();
    }
}

async fn wait_state(speaker: &Speaker, state: State) {
    for _ in 0..1000 {
        if speaker.peer(PEER).map(|p| p.state) == Some(state) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("peer never reached {state:?}: {:?}", speaker.peer(PEER));
}

/// A speaker (AS 65001) with one peer (AS 65002) attached to a scripted peer that
/// completes the OPEN exchange with hold time 9.
async fn established() -> (Speaker, ScriptedPeer) {
    let speaker = Speaker::start(SpeakerConfig::new(65001, Ipv4Addr::new(10, 0, 0, 1)))
        .await
        .unwrap();
    let cfg = PeerConfig::new(PEER, 65002);
    speaker.add_attached_peer(cfg).unwrap();
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    speaker.attach(PEER, ours).unwrap();
    let mut peer = ScriptedPeer {
        io: theirs,
        codec: Codec::new(),
        buf: BytesMut::new(),
    };
    let Some(Message::Open(open)) = peer.recv().await else {
        panic!("no OPEN")
    };
    assert_eq!((open.asn(), open.hold_time), (65001, 90));
    assert!(open.has(&Capability::MultiProtocol { afi: 2, safi: 1 }));
    let caps = vec![
        Capability::MultiProtocol { afi: 1, safi: 1 },
        Capability::MultiProtocol { afi: 2, safi: 1 },
    ];
    peer.send(Message::Open(Open::new(
        65002,
        9,
        Ipv4Addr::new(10, 0, 0, 2),
        caps,
    )))
    .await;
    assert_eq!(peer.recv().await, Some(Message::Keepalive));
    peer.send(Message::Keepalive).await;
    wait_state(&speaker, State::Established).await;
    assert_eq!(speaker.peer(PEER).unwrap().hold_time, Some(9));
    (speaker, peer)
}

fn route(prefix: &str) -> Update {
    Update {
        attributes: PathAttributes {
            origin: Some(Origin::Igp),
            as_path: Some(AsPath::sequence([65002])),
            next_hop: Some(Ipv4Addr::new(10, 0, 0, 2)),
            ..Default::default()
        },
        nlri: vec![prefix.parse().unwrap()],
        ..Default::default()
    }
}

#[tokio::test(start_paused = true)]
async fn announce_withdraw_and_receive_routes() {
    let (speaker, mut peer) = established().await;
    // End-of-RIB for both families after the (empty) initial table.
    for _ in 0..2 {
        let Some(Message::Update(u)) = peer.recv_non_keepalive().await else {
            panic!()
        };
        assert!(u.end_of_rib().is_some(), "{u:?}");
    }
    let vip: Prefix = "192.0.2.10/32".parse().unwrap();
    speaker.announce(
        vip,
        RouteAttributes {
            med: Some(7),
            ..Default::default()
        },
    );
    let Some(Message::Update(u)) = peer.recv_non_keepalive().await else {
        panic!()
    };
    assert_eq!(u.nlri, vec![vip]);
    assert_eq!(u.attributes.as_path, Some(AsPath::sequence([65001])));
    assert_eq!(u.attributes.next_hop, Some(Ipv4Addr::new(10, 0, 0, 1)));
    assert_eq!(u.attributes.med, Some(7));
    assert_eq!(speaker.adj_rib_out(PEER).len(), 1);

    let vip6: Prefix = "2001:db8::10/128".parse().unwrap();
    speaker.announce(vip6, RouteAttributes::default());
    let Some(Message::Update(u)) = peer.recv_non_keepalive().await else {
        panic!()
    };
    assert_eq!(u.attributes.mp_reach.as_ref().unwrap().nlri, vec![vip6]);

    assert!(speaker.withdraw(vip));
    let Some(Message::Update(u)) = peer.recv_non_keepalive().await else {
        panic!()
    };
    assert_eq!(u.withdrawn, vec![vip]);

    let mut events = speaker.events();
    peer.send(Message::Update(route("198.51.100.0/24"))).await;
    loop {
        if let Some(Event::Routes { announced, .. }) = events.recv().await {
            assert_eq!(announced, vec!["198.51.100.0/24".parse().unwrap()]);
            break;
        }
    }
    let rib = speaker.adj_rib_in(PEER);
    assert_eq!(rib.len(), 1);
    assert_eq!(rib[0].1.as_path.as_ref().unwrap().first(), Some(65002));
    assert_eq!(speaker.peer(PEER).unwrap().received_prefixes, 1);

    speaker.shutdown().await;
    assert_eq!(
        peer.recv_non_keepalive().await,
        Some(Message::Notification(Notification::cease()))
    );
    assert_eq!(peer.recv().await, None, "connection closed after Cease");
}

#[tokio::test(start_paused = true)]
async fn keepalives_every_third_of_hold_time_and_hold_timer_expiry() {
    let (speaker, mut peer) = established().await;
    let start = tokio::time::Instant::now();
    let mut keepalives = 0;
    // We stay silent: the speaker keeps sending KEEPALIVEs every 3 s, then gives up at 9 s.
    let notification = loop {
        match peer.recv().await.expect("open until the hold timer fires") {
            Message::Keepalive => keepalives += 1,
            Message::Notification(n) => break n,
            _ => {}
        }
    };
    let elapsed = start.elapsed();
    assert_eq!((notification.code, notification.subcode), (4, 0));
    assert!(
        elapsed >= Duration::from_millis(8900) && elapsed < Duration::from_secs(10),
        "{elapsed:?}"
    );
    assert!(keepalives >= 2, "{keepalives} keepalives");
    wait_state(&speaker, State::Active).await;
    assert_eq!(
        speaker.peer(PEER).unwrap().last_error,
        Some(DownReason::HoldTimerExpired)
    );
    speaker.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn malformed_attribute_is_treated_as_withdraw_and_session_stays_up() {
    let (speaker, mut peer) = established().await;
    peer.send(Message::Update(route("198.51.100.0/24"))).await;
    let mut events = speaker.events();
    // The same route again, now with a 3-byte MULTI_EXIT_DISC: RFC 7606 treat-as-withdraw.
    let mut body = vec![0u8, 0, 0, 0];
    let attrs: &[u8] = &[
        0x40, 1, 1, 0, 0x40, 2, 6, 2, 1, 0, 0, 0xfd, 0xea, 0x40, 3, 4, 10, 0, 0, 2, 0x80, 4, 3, 0,
        0, 1,
    ];
    body[3] = attrs.len() as u8;
    body.extend_from_slice(attrs);
    body.extend_from_slice(&[24, 198, 51, 100]);
    let mut raw = vec![0xff; 16];
    raw.extend_from_slice(&((body.len() + 19) as u16).to_be_bytes());
    raw.push(2);
    raw.extend(body);
    peer.send_raw(&raw).await;
    let mut saw_malformed = false;
    while speaker.peer(PEER).unwrap().received_prefixes != 0 || !saw_malformed {
        match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
            Ok(Some(Event::Malformed { errors, .. })) => {
                saw_malformed = true;
                assert_eq!(errors[0].type_code, 4);
            }
            Ok(Some(_)) => {}
            _ => panic!("no treat-as-withdraw: {:?}", speaker.peer(PEER)),
        }
    }
    assert!(speaker.adj_rib_in(PEER).is_empty());
    peer.send(Message::Keepalive).await;
    // Paused clock: the sleep lets the speaker handle the KEEPALIVE and advances virtual
    // time; the session must not have been reset meanwhile (nothing to poll for).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(speaker.peer(PEER).unwrap().state, State::Established);

    // A header whose length field is 10: NOTIFICATION Bad Message Length, session reset.
    let mut bad = vec![0xff; 16];
    bad.extend_from_slice(&[0, 10, 4]);
    peer.send_raw(&bad).await;
    let n = loop {
        match peer.recv().await {
            Some(Message::Notification(n)) => break n,
            Some(Message::Keepalive | Message::Update(_)) => continue, // End-of-RIB markers
            other => panic!("no NOTIFICATION: {other:?}"),
        }
    };
    assert_eq!((n.code, n.subcode, &n.data[..]), (1, 2, &[0u8, 10][..]));
    assert_eq!(peer.recv().await, None);
    wait_state(&speaker, State::Active).await;
    speaker.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn wrong_peer_as_is_refused() {
    let speaker = Speaker::start(SpeakerConfig::new(65001, Ipv4Addr::new(10, 0, 0, 1)))
        .await
        .unwrap();
    let cfg = PeerConfig::new(PEER, 65002);
    speaker.add_attached_peer(cfg).unwrap();
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    speaker.attach(PEER, ours).unwrap();
    let mut peer = ScriptedPeer {
        io: theirs,
        codec: Codec::new(),
        buf: BytesMut::new(),
    };
    assert!(matches!(peer.recv().await, Some(Message::Open(_))));
    peer.send(Message::Open(Open::new(
        65099,
        9,
        Ipv4Addr::new(10, 0, 0, 2),
        vec![],
    )))
    .await;
    let Some(Message::Notification(n)) = peer.recv().await else {
        panic!("no NOTIFICATION")
    };
    assert_eq!((n.code, n.subcode), (2, 2));
    wait_state(&speaker, State::Active).await;
    speaker.shutdown().await;
}
