//! HTTP/1 head parse + encode on one core: `cargo bench -p flowgate-http`.
#![allow(missing_docs, clippy::unwrap_used)]

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use flowgate_http::h1::{
    Frame, RequestDecoder, ResponseDecoder, encode_request_head, encode_response_head,
};

const REQUEST: &[u8] = b"GET /api/v1/items?page=2&sort=name HTTP/1.1\r\n\
Host: api.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) bench/1.0\r\n\
Accept: application/json\r\n\
Accept-Encoding: gzip, deflate, br\r\n\
Accept-Language: en-US,en;q=0.9\r\n\
Connection: keep-alive\r\n\
Cookie: session=0123456789abcdef; theme=dark\r\n\
X-Request-Id: 7f3c2a10-5e0b-4c1e-9d0a-3b2f1c4d5e6f\r\n\r\n";

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\n\
Server: nginx\r\n\
Date: Sun, 22 Nov 2026 06:00:00 GMT\r\n\
Content-Type: application/json\r\n\
Content-Length: 2\r\n\
Connection: keep-alive\r\n\
Cache-Control: no-cache\r\n\r\n";

fn heads(c: &mut Criterion) {
    let mut g = c.benchmark_group("h1");
    g.throughput(Throughput::Elements(1));
    let mut d = RequestDecoder::default();
    let mut out = BytesMut::with_capacity(4096);
    g.bench_function("request-head/parse+encode", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(REQUEST);
            let Some(Frame::Head(parts, _)) = d.decode(&mut buf).unwrap() else {
                unreachable!()
            };
            let _end = d.decode(&mut buf).unwrap();
            out.clear();
            encode_request_head(&parts, &mut out);
            out.len()
        })
    });
    let mut d = ResponseDecoder::default();
    g.bench_function("response-head/parse+encode", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(RESPONSE);
            d.expect(http::Method::GET);
            let Some(Frame::Head(parts, _)) = d.decode(&mut buf).unwrap() else {
                unreachable!()
            };
            out.clear();
            encode_response_head(&parts, &mut out);
            // Body and end, so the decoder is ready for the next response.
            buf.extend_from_slice(b"ok");
            while d.decode(&mut buf).unwrap().is_some() {}
            out.len()
        })
    });
    g.finish();
}

criterion_group!(benches, heads);
criterion_main!(benches);
