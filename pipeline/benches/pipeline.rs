//! Pipeline micro-benchmarks, one core.
//!
//! - `passthrough/10-filters`: events per second through a pipeline of 10 pass-through
//!   filters (the fused transform fast path).
//! - `demux/per-message`: the cost per message of `Demux` (child context, feed, sub-pipeline
//!   instance, ordered reply).
//! - `mux/per-message`: the cost per message of `Mux` (pooled session in its own task,
//!   queueing, reply routing).
//!
//! Run with `cargo bench -p flowgate-pipeline --bench pipeline`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use flowgate_pipeline::joint::{Demux, Mux, MuxOptions};
use flowgate_pipeline::{Context, Dyn, Event, Filter, Head, Pipeline, Tail, events_from};
use futures_util::StreamExt;

fn pass() -> impl FnMut(Event, &mut dyn FnMut(Event)) + Send + 'static {
    |ev, out| out(ev)
}

fn passthrough(c: &mut Criterion) {
    let mut b = Pipeline::builder("pass10");
    for _ in 0..10 {
        b = b.transform("pass", pass);
    }
    let p = b.build().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    const N: usize = 10_000;
    let chunk = Bytes::from_static(&[7u8; 64]);
    let mut g = c.benchmark_group("passthrough");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("10-filters", |bench| {
        bench.iter_batched(
            || {
                let mut v: Vec<Event> = (0..N - 1).map(|_| Event::Data(chunk.clone())).collect();
                v.push(Event::END);
                events_from(v)
            },
            |input| {
                rt.block_on(async {
                    let mut out = p.attach(input, &Context::new());
                    let mut n = 0usize;
                    while let Some(ev) = out.next().await {
                        n += black_box(matches!(ev, Event::Data(_))) as usize;
                    }
                    n
                })
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn messages(n: usize) -> Vec<Event> {
    let mut v = Vec::with_capacity(n * 3 + 1);
    let body = Bytes::from_static(b"request body");
    for _ in 0..n {
        v.push(Event::MessageStart(Head::empty()));
        v.push(Event::Data(body.clone()));
        v.push(Event::MessageEnd(Tail::none()));
    }
    v.push(Event::END);
    v
}

fn joints(c: &mut Criterion) {
    const N: usize = 1_000;
    let echo = std::sync::Arc::new(Pipeline::builder("echo").build().unwrap());
    let demux = Demux::new(echo.clone());
    let mux = Mux::with(
        echo,
        Dyn::value(String::new()),
        MuxOptions {
            max_queue: 64,
            ..Default::default()
        },
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("joint");
    g.throughput(Throughput::Elements(N as u64));
    for (name, f) in [
        ("demux/per-message", &demux as &dyn Filter),
        ("mux/per-message", &mux),
    ] {
        g.bench_function(name, |bench| {
            bench.iter_batched(
                || events_from(messages(N)),
                |input| {
                    rt.block_on(async {
                        let mut out = f.attach(input, &Context::new());
                        let mut n = 0usize;
                        while let Some(ev) = out.next().await {
                            n += matches!(ev, Event::MessageEnd(_)) as usize;
                        }
                        assert_eq!(n, N);
                        n
                    })
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, passthrough, joints);
criterion_main!(benches);
