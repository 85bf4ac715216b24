//! UPDATE encode/decode throughput: a full 4096-byte UPDATE of IPv4 /24s (the shape of a
//! table transfer) and a small VIP announcement.
//!
//! `cargo bench -p flowgate-bgp --bench update_codec`

// criterion_group! generates an undocumented pub fn.
#![allow(missing_docs)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use flowgate_bgp::packet::{
    AsPath, Codec, Community, Message, Origin, PathAttributes, Prefix, Update,
};

fn update(prefixes: u32) -> Message {
    Message::Update(Update {
        attributes: PathAttributes {
            origin: Some(Origin::Igp),
            as_path: Some(AsPath::sequence([65002, 65010, 4_200_000_001])),
            next_hop: Some(Ipv4Addr::new(10, 0, 0, 2)),
            med: Some(10),
            communities: vec![Community::new(65002, 1), Community::new(65002, 2)],
            ..Default::default()
        },
        nlri: (0..prefixes)
            .filter_map(|i| {
                Prefix::new(IpAddr::V4(Ipv4Addr::from(0x1400_0000 + (i << 8))), 24).ok()
            })
            .collect(),
        ..Default::default()
    })
}

fn bench(c: &mut Criterion) {
    let codec = Codec::new();
    for (name, n) in [("full_update_800x24", 800u32), ("vip_update_1x24", 1)] {
        let msg = update(n);
        let mut wire = BytesMut::new();
        if codec.encode(&msg, &mut wire).is_err() {
            return;
        }
        let bytes = wire.freeze();
        let mut g = c.benchmark_group(name);
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_function("encode", |b| {
            let mut out = BytesMut::with_capacity(4096);
            b.iter(|| {
                out.clear();
                let _ = codec.encode(black_box(&msg), &mut out);
            })
        });
        g.bench_function("decode", |b| {
            let mut codec = Codec::new();
            b.iter(|| {
                let mut buf = BytesMut::from(&bytes[..]);
                black_box(codec.decode(&mut buf).ok().flatten())
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
