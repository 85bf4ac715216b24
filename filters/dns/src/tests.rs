//! Socket-free tests of the DNS filters: events in, events out.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use flowgate_dns::hickory::op::{Message, ResponseCode};
use flowgate_dns::hickory::rr::{RData, RecordType};
use flowgate_dns::{ClientSubnet, query};
use flowgate_lb::{Algorithm, Backend, BalancerConfig};
use flowgate_pipeline::server::Datagram;
use flowgate_pipeline::{ConnInfo, Context, Event, Head, Pipeline, Tail, testing};

use super::*;

const PEER: &str = "192.0.2.10:5000";

fn respond_config(endpoints: Vec<Backend>) -> DnsRespondConfig {
    DnsRespondConfig {
        zone: "svc.test".into(),
        ttl: 30,
        negative_ttl: 15,
        max_answers: 0,
        balance: BalancerConfig::default(),
        services: vec![ServiceSpec {
            name: "api".into(),
            endpoints,
            balance: None,
            health_check: None,
        }],
        geo: Vec::new(),
        refuse_outside: false,
    }
}

fn addrs(n: u8) -> Vec<Backend> {
    (1..=n)
        .map(|i| Backend::new(format!("10.0.0.{i}:8080").parse().unwrap()))
        .collect()
}

fn server(respond: DnsRespond) -> Pipeline {
    Pipeline::builder("dns")
        .filter(DecodeDns::default())
        .filter(respond)
        .filter(EncodeDns::default())
        .build()
        .unwrap()
}

fn cx() -> Context {
    Context::with_conn(ConnInfo {
        peer: Some(PEER.parse().unwrap()),
        ..ConnInfo::default()
    })
}

fn datagrams(qs: &[Vec<u8>]) -> Vec<Event> {
    let peer: SocketAddr = PEER.parse().unwrap();
    let mut v = Vec::new();
    for q in qs {
        v.push(Event::MessageStart(Head::new(Datagram {
            peer,
            local: peer,
        })));
        v.push(Event::Data(Bytes::from(q.clone())));
        v.push(Event::MessageEnd(Tail::none()));
    }
    v.push(Event::END);
    v
}

/// Runs UDP queries; returns the datagrams sent back.
async fn udp(p: &Pipeline, qs: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let out = testing::run_with(p, datagrams(qs), &cx()).await;
    let mut res = Vec::new();
    let mut cur: Option<Vec<u8>> = None;
    for e in out {
        match e {
            Event::MessageStart(_) => cur = Some(Vec::new()),
            Event::Data(b) => cur
                .as_mut()
                .expect("data inside a message")
                .extend_from_slice(&b),
            Event::MessageEnd(_) => res.push(cur.take().unwrap()),
            Event::StreamEnd(e) => assert!(e.is_none(), "{e:?}"),
        }
    }
    res
}

fn a_answers(m: &Message) -> Vec<String> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            RData::AAAA(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

fn q(name: &str, t: RecordType) -> Vec<u8> {
    query(name, t, 0x4242, true, None).unwrap()
}

#[tokio::test]
async fn udp_a_query_round_robins() {
    let p = server(DnsRespond::new(respond_config(addrs(3))).unwrap());
    let qs: Vec<_> = (0..3).map(|_| q("API.svc.test", RecordType::A)).collect();
    let rs = udp(&p, &qs).await;
    assert_eq!(rs.len(), 3);
    let mut firsts = Vec::new();
    for r in &rs {
        let m = Message::from_vec(r).unwrap();
        assert_eq!(m.metadata.id, 0x4242);
        assert!(m.metadata.authoritative);
        assert_eq!(m.queries[0].name().to_string(), "API.svc.test.");
        let a = a_answers(&m);
        assert_eq!(a.len(), 3);
        firsts.push(a[0].clone());
    }
    firsts.sort();
    firsts.dedup();
    assert_eq!(firsts.len(), 3, "round robin rotates the first answer");
}

#[tokio::test]
async fn tcp_framing_split_anywhere() {
    let p = server(DnsRespond::new(respond_config(addrs(2))).unwrap());
    let mut bytes = Vec::new();
    for t in [RecordType::A, RecordType::SRV] {
        let m = q("api.svc.test", t);
        bytes.extend_from_slice(&(m.len() as u16).to_be_bytes());
        bytes.extend_from_slice(&m);
    }
    let mut input: Vec<Event> = bytes
        .chunks(7)
        .map(|c| Event::Data(Bytes::copy_from_slice(c)))
        .collect();
    input.push(Event::END);
    let out = testing::run_with(&p, input, &cx()).await;
    let data = testing::data_of(&out);
    let n1 = usize::from(u16::from_be_bytes([data[0], data[1]]));
    let m1 = Message::from_vec(&data[2..2 + n1]).unwrap();
    let rest = &data[2 + n1..];
    let n2 = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
    let m2 = Message::from_vec(&rest[2..2 + n2]).unwrap();
    assert_eq!(a_answers(&m1).len(), 2);
    assert_eq!(m2.answers.len(), 2);
    assert!(matches!(m2.answers[0].data, RData::SRV(_)));
    assert_eq!(m2.additionals.len(), 2, "SRV targets' addresses as glue");
}

#[tokio::test]
async fn bad_input_gets_formerr_or_is_dropped_and_others_are_answered() {
    let p = server(DnsRespond::new(respond_config(addrs(1))).unwrap());
    let hdr = b"\x00\x09\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00".to_vec();
    let mut pointer_loop = hdr.clone();
    pointer_loop.extend_from_slice(b"\x01a\xc0\x0c\x00\x01\x00\x01");
    let mut big_label = hdr.clone();
    big_label.push(64);
    big_label.extend_from_slice(&[b'x'; 64]);
    big_label.extend_from_slice(b"\x00\x00\x01\x00\x01");
    let truncated = q("api.svc.test", RecordType::A)[..20].to_vec();
    let mut response = q("api.svc.test", RecordType::A);
    response[2] |= 0x80;
    let tiny = b"\x00\x09\x01".to_vec();
    let good = q("api.svc.test", RecordType::A);
    let rs = udp(
        &p,
        &[pointer_loop, big_label, truncated, response, tiny, good],
    )
    .await;
    assert_eq!(rs.len(), 4, "three FORMERR, two dropped, one answer");
    for r in &rs[..3] {
        let m = Message::from_vec(r).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    }
    assert_eq!(a_answers(&Message::from_vec(&rs[3]).unwrap()), ["10.0.0.1"]);
}

#[tokio::test]
async fn big_answers_are_truncated_over_udp_and_whole_over_tcp() {
    let p = server(DnsRespond::new(respond_config(addrs(60))).unwrap());
    let rs = udp(&p, &[q("api.svc.test", RecordType::A)]).await;
    assert!(rs[0].len() <= 512);
    let m = Message::from_vec(&rs[0]).unwrap();
    assert!(m.metadata.truncation);
    assert!(m.answers.is_empty());
    // With EDNS 4096 (capped at 1232 by encode-dns) the answer fits.
    let rs = udp(
        &p,
        &[query("api.svc.test", RecordType::A, 1, true, Some(4096)).unwrap()],
    )
    .await;
    let m = Message::from_vec(&rs[0]).unwrap();
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 60);
    let qq = q("api.svc.test", RecordType::A);
    let mut t = (qq.len() as u16).to_be_bytes().to_vec();
    t.extend_from_slice(&qq);
    let out = testing::run_with(&p, vec![Event::Data(t.into()), Event::END], &cx()).await;
    let data = testing::data_of(&out);
    let m = Message::from_vec(&data[2..]).unwrap();
    assert_eq!(m.answers.len(), 60);
}

#[tokio::test]
async fn tcp_answers_over_64k_are_truncated_not_cut() {
    // 4 500 A records (16 bytes each with compression) do not fit in one TCP message.
    let many = (0..4500u32)
        .map(|i| {
            let [_, a, b, c] = i.to_be_bytes();
            Backend::new(SocketAddr::from(([10, a, b, c], 80)))
        })
        .collect();
    let p = server(DnsRespond::new(respond_config(many)).unwrap());
    let qq = q("api.svc.test", RecordType::A);
    let mut t = (qq.len() as u16).to_be_bytes().to_vec();
    t.extend_from_slice(&qq);
    let out = testing::run_with(&p, vec![Event::Data(t.into()), Event::END], &cx()).await;
    let data = testing::data_of(&out);
    let n = usize::from(u16::from_be_bytes([data[0], data[1]]));
    assert_eq!(
        n + 2,
        data.len(),
        "the length prefix is the message's length"
    );
    let m = Message::from_vec(&data[2..]).unwrap();
    assert!(m.metadata.truncation);
}

#[tokio::test]
async fn negative_answers_carry_the_soa() {
    let p = server(DnsRespond::new(respond_config(addrs(1))).unwrap());
    let rs = udp(
        &p,
        &[
            q("nope.svc.test", RecordType::A),
            q("api.svc.test", RecordType::AAAA),
            q("svc.test", RecordType::SOA),
            q("e0.api.svc.test", RecordType::A),
            q("e7.api.svc.test", RecordType::A),
        ],
    )
    .await;
    let ms: Vec<Message> = rs.iter().map(|r| Message::from_vec(r).unwrap()).collect();
    assert_eq!(ms[0].metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(ms[0].authorities[0].record_type(), RecordType::SOA);
    assert_eq!(ms[0].authorities[0].ttl, 15);
    assert_eq!(ms[1].metadata.response_code, ResponseCode::NoError);
    assert!(ms[1].answers.is_empty());
    assert_eq!(ms[1].authorities.len(), 1);
    assert_eq!(ms[2].answers[0].record_type(), RecordType::SOA);
    assert_eq!(a_answers(&ms[3]), ["10.0.0.1"]);
    assert_eq!(ms[4].metadata.response_code, ResponseCode::NXDomain);
}

#[tokio::test]
async fn weighted_healthy_only_and_max_answers() {
    let mut cfg = respond_config(vec![
        Backend::new("10.0.0.1:80".parse().unwrap()).weight(3),
        Backend::new("10.0.0.2:80".parse().unwrap()).weight(1),
        Backend::new("10.0.0.3:80".parse().unwrap()),
    ]);
    cfg.balance = BalancerConfig::new(Algorithm::WeightedRoundRobin);
    cfg.max_answers = 1;
    let r = DnsRespond::new(cfg).unwrap();
    let reg = r.registry().clone();
    let p = server(r);
    let qs: Vec<_> = (0..50).map(|_| q("api.svc.test", RecordType::A)).collect();
    let count = |rs: &[Vec<u8>], ip: &str| {
        rs.iter()
            .filter(|r| a_answers(&Message::from_vec(r).unwrap()) == [ip])
            .count()
    };
    let rs = udp(&p, &qs).await;
    assert_eq!(
        (
            count(&rs, "10.0.0.1"),
            count(&rs, "10.0.0.2"),
            count(&rs, "10.0.0.3")
        ),
        (30, 10, 10)
    );
    assert!(reg.set_healthy("api", "10.0.0.1:80".parse().unwrap(), false));
    let rs = udp(&p, &qs).await;
    assert_eq!(
        count(&rs, "10.0.0.1"),
        0,
        "unhealthy endpoints are not answered"
    );
    assert_eq!(count(&rs, "10.0.0.2") + count(&rs, "10.0.0.3"), 50);
}

#[tokio::test]
async fn geo_steering_by_client_subnet_and_source() {
    let mut cfg = respond_config(vec![
        Backend::new("10.1.0.1:80".parse().unwrap()).zone("eu"),
        Backend::new("10.2.0.1:80".parse().unwrap()).zone("us"),
    ]);
    cfg.geo = vec![
        GeoRule {
            source: "198.51.100.0/24".into(),
            zone: "eu".into(),
        },
        GeoRule {
            source: "192.0.2.0/24".into(),
            zone: "us".into(),
        },
    ];
    let p = server(DnsRespond::new(cfg).unwrap());
    // The source address (192.0.2.10) steers to "us".
    for _ in 0..3 {
        let rs = udp(&p, &[q("api.svc.test", RecordType::A)]).await;
        assert_eq!(a_answers(&Message::from_vec(&rs[0]).unwrap()), ["10.2.0.1"]);
    }
    // A client subnet in 198.51.100.0/24 steers to "eu", and the scope is echoed.
    let mut m =
        Message::from_vec(&query("api.svc.test", RecordType::A, 3, true, Some(1232)).unwrap())
            .unwrap();
    let ecs = ClientSubnet::new("198.51.100.7".parse().unwrap(), 24);
    let mut data = Vec::new();
    ecs.write_data(&mut data);
    m.edns.as_mut().unwrap().options_mut().insert(
        flowgate_dns::hickory::rr::rdata::opt::EdnsOption::Unknown(8, data),
    );
    let wire = m.to_vec().unwrap();
    for _ in 0..3 {
        let rs = udp(&p, std::slice::from_ref(&wire)).await;
        assert_eq!(a_answers(&Message::from_vec(&rs[0]).unwrap()), ["10.1.0.1"]);
        let info = flowgate_dns::validate(&rs[0], &flowgate_dns::Limits::default()).unwrap();
        let echoed = info.opt.unwrap().client_subnet.unwrap();
        assert_eq!((echoed.source_prefix, echoed.scope_prefix), (24, 24));
    }
}

#[tokio::test]
async fn unanswered_queries_are_refused_and_outside_names_pass_on() {
    let p = server(DnsRespond::new(respond_config(addrs(1))).unwrap());
    let rs = udp(&p, &[q("example.org", RecordType::A)]).await;
    let m = Message::from_vec(&rs[0]).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
}

#[tokio::test]
async fn block_lists() {
    let block = |action| {
        let cfg = DnsBlockConfig {
            names: vec!["ads.example".into()],
            action,
            ..DnsBlockConfig::default()
        };
        flowgate_pipeline::registry::FilterConfig::build(
            Box::new(cfg),
            &flowgate_pipeline::registry::BuildContext::default(),
        )
        .unwrap()
    };
    let p = Pipeline::builder("b")
        .filter(DecodeDns::default())
        .filter_arc(block(BlockAction::Nxdomain))
        .filter(EncodeDns::default())
        .build()
        .unwrap();
    let rs = udp(
        &p,
        &[
            q("x.ADS.example", RecordType::A),
            q("ads.example.org", RecordType::A),
        ],
    )
    .await;
    assert_eq!(
        Message::from_vec(&rs[0]).unwrap().metadata.response_code,
        ResponseCode::NXDomain
    );
    assert_eq!(
        Message::from_vec(&rs[1]).unwrap().metadata.response_code,
        ResponseCode::Refused
    );
    let p = Pipeline::builder("b")
        .filter(DecodeDns::default())
        .filter_arc(block(BlockAction::Null))
        .filter(EncodeDns::default())
        .build()
        .unwrap();
    let rs = udp(&p, &[q("ads.example", RecordType::AAAA)]).await;
    assert_eq!(a_answers(&Message::from_vec(&rs[0]).unwrap()), ["::"]);
}

#[tokio::test]
async fn rewrite_renames_the_query_and_the_answer_back() {
    let cfg = DnsRewriteConfig {
        rules: vec![RewriteRule {
            from: "alias.test".into(),
            to: "svc.test".into(),
        }],
    };
    let rw = flowgate_pipeline::registry::FilterConfig::build(
        Box::new(cfg),
        &flowgate_pipeline::registry::BuildContext::default(),
    )
    .unwrap();
    let p = Pipeline::builder("rw")
        .filter(DecodeDns::default())
        .filter_arc(rw)
        .filter(DnsRespond::new(respond_config(addrs(1))).unwrap())
        .filter(EncodeDns::default())
        .build()
        .unwrap();
    let rs = udp(&p, &[q("Api.Alias.test", RecordType::A)]).await;
    let m = Message::from_vec(&rs[0]).unwrap();
    assert_eq!(m.queries[0].name().to_string(), "Api.Alias.test.");
    assert_eq!(
        m.answers[0].name.to_string().to_lowercase(),
        "api.alias.test."
    );
    assert_eq!(a_answers(&m), ["10.0.0.1"]);
}

#[test]
fn configs_parse_from_yaml_shaped_json() {
    let mut reg = flowgate_pipeline::registry::Registry::new();
    crate::register(&mut reg);
    let reg = Arc::new(reg);
    let spec: flowgate_pipeline::registry::FilterSpec = reg
        .activate(|| {
            serde_json::from_str(
                r#"{"dns-respond": {"zone": "svc.test", "balance": "weighted_round_robin",
                    "services": [{"name": "api", "endpoints": ["10.0.0.1:80",
                    {"address": "10.0.0.2:80", "weight": 2, "metadata": {"zone": "eu"}}]}],
                    "geo": [{"source": "10.0.0.0/8", "zone": "eu"}]}}"#,
            )
        })
        .unwrap();
    assert!(spec.config.build(&Default::default()).is_ok());
    let bad: flowgate_pipeline::registry::FilterSpec = reg
        .activate(|| serde_json::from_str(r#"{"dns-forward": {"endpoints": []}}"#))
        .unwrap();
    let e = bad.config.build(&Default::default()).err().unwrap();
    assert_eq!(e.field, "endpoints");
}

fn tcp_server(idle: u64, message: u64) -> Pipeline {
    let decode = DecodeDns::new(DecodeDnsConfig {
        tcp_idle_timeout: std::time::Duration::from_secs(idle),
        tcp_message_timeout: std::time::Duration::from_secs(message),
        ..DecodeDnsConfig::default()
    });
    Pipeline::builder("dns")
        .filter(decode)
        .filter(DnsRespond::new(respond_config(addrs(1))).unwrap())
        .filter(EncodeDns::default())
        .build()
        .unwrap()
}

fn framed(m: &[u8]) -> Bytes {
    let mut b = (m.len() as u16).to_be_bytes().to_vec();
    b.extend_from_slice(m);
    Bytes::from(b)
}

/// Waits for the end of the output (skipping answers) and says when it came and why.
async fn ended(
    h: &mut testing::Harness,
) -> (std::time::Duration, Option<flowgate_pipeline::ErrorKind>) {
    let start = tokio::time::Instant::now();
    loop {
        match h.next().await {
            Some(Event::StreamEnd(e)) => return (start.elapsed(), e.map(|e| e.kind())),
            Some(_) => {}
            None => panic!("no StreamEnd"),
        }
    }
}

fn near(got: std::time::Duration, want: u64) -> bool {
    let want = std::time::Duration::from_secs(want);
    got >= want && got < want + std::time::Duration::from_millis(100)
}

#[tokio::test(start_paused = true)]
async fn tcp_clients_that_send_nothing_or_part_of_a_message_are_closed() {
    use flowgate_pipeline::ErrorKind::IdleTimeout;
    let p = tcp_server(10, 5);
    // Nothing at all: the idle timeout.
    let mut h = testing::Harness::with_context(&p, &cx());
    let (t, why) = ended(&mut h).await;
    assert!(near(t, 10) && why == Some(IdleTimeout), "{t:?} {why:?}");

    // A length prefix announcing 255 bytes, and two of them: the message timeout.
    let mut h = testing::Harness::with_context(&p, &cx());
    h.push(Event::Data(Bytes::from_static(b"\x00\xff\x00\x01")));
    let (t, why) = ended(&mut h).await;
    assert!(near(t, 5) && why == Some(IdleTimeout), "{t:?} {why:?}");

    // Polled while idle (its timer set for the idle deadline), then a message starts: the
    // shorter message clock applies from the first byte, not the idle one.
    let mut h = testing::Harness::with_context(&p, &cx());
    assert!(
        tokio::time::timeout(std::time::Duration::from_secs(1), h.next())
            .await
            .is_err(),
        "nothing to say yet"
    );
    h.push(Event::Data(Bytes::from_static(b"\x00\xff\x00\x01")));
    let (t, why) = ended(&mut h).await;
    assert!(near(t, 5) && why == Some(IdleTimeout), "{t:?} {why:?}");

    // A message dribbled a byte a second: more bytes do not extend the message timeout.
    let mut h = testing::Harness::with_context(&p, &cx());
    let query = framed(&q("api.svc.test", RecordType::A));
    let start = tokio::time::Instant::now();
    let mut end = None;
    for b in query.iter() {
        h.push(Event::Data(Bytes::copy_from_slice(&[*b])));
        if let Ok(ev) = tokio::time::timeout(std::time::Duration::from_secs(1), h.next()).await {
            end = Some(ev);
            break;
        }
    }
    assert!(
        matches!(&end, Some(Some(Event::StreamEnd(Some(e)))) if e.kind() == IdleTimeout),
        "{end:?}"
    );
    assert!(near(start.elapsed(), 5), "{:?}", start.elapsed());

    // Whole queries are answered; each restarts the idle clock, also when it arrives in
    // pieces; the connection closes the idle timeout after the last one.
    let mut h = testing::Harness::with_context(&p, &cx());
    h.push(Event::Data(query.clone()));
    assert!(h.next_data().await.is_some(), "answered");
    tokio::time::sleep(std::time::Duration::from_secs(9)).await;
    h.push(Event::Data(query.slice(..5)));
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    h.push(Event::Data(query.slice(5..)));
    assert!(h.next_data().await.is_some(), "answered after 13 s");
    let (t, why) = ended(&mut h).await;
    assert!(near(t, 10) && why == Some(IdleTimeout), "{t:?} {why:?}");

    // A client that closes is not an error.
    let mut h = testing::Harness::with_context(&p, &cx());
    h.push(Event::Data(query.clone()));
    h.push(Event::END);
    assert!(h.next_data().await.is_some());
    let (_, why) = ended(&mut h).await;
    assert_eq!(why, None);
}

#[tokio::test(start_paused = true)]
async fn udp_sessions_have_no_dns_deadline() {
    let p = tcp_server(10, 5);
    for datagram in [true, false] {
        // A UDP listener marks its sessions; datagrams in an unmarked stream are found
        // out from their heads.
        let cx = Context::with_conn(ConnInfo {
            peer: Some(PEER.parse().unwrap()),
            datagram,
            ..ConnInfo::default()
        });
        let mut h = testing::Harness::with_context(&p, &cx);
        let mut evs = datagrams(&[q("api.svc.test", RecordType::A)]);
        evs.pop();
        for e in evs {
            h.push(e);
        }
        assert!(h.next_data().await.is_some(), "answered");
        assert!(matches!(h.next().await, Some(Event::MessageEnd(_))));
        let r = tokio::time::timeout(std::time::Duration::from_secs(60), h.next()).await;
        assert!(r.is_err(), "datagram={datagram}: {r:?}");
    }
}
