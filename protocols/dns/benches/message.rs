//! The DNS hot paths: validating a query, answering it on the wire, rendering a cached
//! answer, and hickory-proto's full decode for comparison.
#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};
use flowgate_dns::cache::cache_ttl;
use flowgate_dns::hickory::rr::RecordType;
use flowgate_dns::types::{rcode, rtype};
use flowgate_dns::{Limits, Owner, ResponseWriter, decode, query, validate};

fn bench(c: &mut Criterion) {
    let limits = Limits::default();
    let q = query("api.svc.test", RecordType::A, 1, true, Some(1232)).unwrap();
    let mut g = c.benchmark_group("dns");
    g.throughput(Throughput::Elements(1));
    g.bench_function("validate query", |b| {
        b.iter(|| validate(black_box(&q), &limits).unwrap())
    });
    g.bench_function("validate + answer 3 A", |b| {
        b.iter(|| {
            let info = validate(black_box(&q), &limits).unwrap();
            let mut w = ResponseWriter::new(&q, &info, rcode::NOERROR, true);
            for i in 1..=3u8 {
                w.answer(Owner::Question, rtype::A, 30, &[10, 0, 0, i]);
            }
            w.finish(None)
        })
    });
    let info = validate(&q, &limits).unwrap();
    let mut w = ResponseWriter::new(&q, &info, rcode::NOERROR, false);
    for i in 1..=3u8 {
        w.answer(Owner::Question, rtype::A, 300, &[10, 0, 0, i]);
    }
    let resp = w.finish(None);
    let (_, cached) = cache_ttl(&resp, &limits).unwrap();
    g.bench_function("render cached answer", |b| {
        b.iter(|| cached.render(black_box(9), Some(&q[12..info.question_end]), 5))
    });
    g.bench_function("hickory decode of the response", |b| {
        b.iter(|| decode(black_box(&resp), &limits).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
