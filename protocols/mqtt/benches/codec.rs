//! MQTT decode + encode on one core: `taskset -c 1 cargo bench -p flowgate-mqtt`.
#![allow(missing_docs, clippy::unwrap_used)]

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use flowgate_mqtt::{
    Connect, Decoder, Frame, Limits, Packet, Properties, ProtocolVersion, PublishHead, QoS, Will,
};

fn connect_v5() -> Packet {
    let p = Properties {
        session_expiry_interval: Some(3600),
        receive_maximum: Some(100),
        maximum_packet_size: Some(1 << 20),
        topic_alias_maximum: Some(16),
        request_problem_information: Some(true),
        user_properties: vec![
            ("region".into(), "eu-west-1".into()),
            ("app".into(), "bench".into()),
        ],
        ..Properties::default()
    };
    let wp = Properties {
        will_delay_interval: Some(30),
        content_type: Some("text/plain".into()),
        ..Properties::default()
    };
    Packet::Connect(Box::new(Connect {
        version: ProtocolVersion::V5,
        clean_start: true,
        keep_alive: 60,
        properties: p,
        client_id: "device-0123456789".into(),
        will: Some(Will {
            topic: "devices/0123456789/status".into(),
            payload: Bytes::from_static(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: wp,
        }),
        username: Some("device".into()),
        password: Some(Bytes::from_static(b"secret-token")),
    }))
}

fn codec(c: &mut Criterion) {
    let v5 = ProtocolVersion::V5;
    let mut g = c.benchmark_group("mqtt");
    g.throughput(Throughput::Elements(1));

    let head = PublishHead::new("sensors/building-7/floor-3/temp", QoS::AtLeastOnce, 64);
    let payload = [0x5a_u8; 64];
    let mut wire = BytesMut::new();
    head.encode(v5, &mut wire).unwrap();
    wire.extend_from_slice(&payload);
    let wire = wire.freeze();
    g.bench_function("publish_64B_decode", |b| {
        let mut d = Decoder::for_version(v5, Limits::default());
        b.iter(|| {
            let mut buf = BytesMut::from(&wire[..]);
            let mut n = 0;
            while let Some(f) = d.decode(&mut buf).unwrap() {
                if let Frame::PayloadChunk(c) = f {
                    n += c.len();
                }
            }
            n
        })
    });
    g.bench_function("publish_64B_encode", |b| {
        let mut buf = BytesMut::with_capacity(256);
        b.iter(|| {
            buf.clear();
            head.encode(v5, &mut buf).unwrap();
            buf.extend_from_slice(&payload);
            buf.len()
        })
    });

    let connect = connect_v5();
    let mut wire = BytesMut::new();
    connect.encode(v5, &mut wire).unwrap();
    let wire = wire.freeze();
    g.bench_function("connect_v5_decode", |b| {
        b.iter(|| {
            let mut d = Decoder::new(Limits::default());
            let mut buf = BytesMut::from(&wire[..]);
            d.decode(&mut buf).unwrap()
        })
    });
    g.bench_function("connect_v5_encode", |b| {
        let mut buf = BytesMut::with_capacity(512);
        b.iter(|| {
            buf.clear();
            connect.encode(v5, &mut buf).unwrap();
            buf.len()
        })
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
