//! The HTTP/1 decoders on arbitrary bytes, fed in pieces whose sizes the input chooses: they
//! must never panic, never hand out more body than they were given, and give the same
//! verdict however the bytes are split.
#![no_main]

use bytes::BytesMut;
use flowgate_http::h1::{Frame, Limits, RequestDecoder, ResponseDecoder};
use libfuzzer_sys::fuzz_target;

fn requests(data: &[u8], step: usize) -> (usize, bool) {
    let limits = Limits { max_body: Some(1 << 16), ..Limits::default() };
    let mut d = RequestDecoder::new(limits);
    let (mut buf, mut frames, mut body) = (BytesMut::new(), 0usize, 0usize);
    for chunk in data.chunks(step.max(1)) {
        buf.extend_from_slice(chunk);
        loop {
            match d.decode(&mut buf) {
                Ok(Some(f)) => {
                    frames += 1;
                    if let Frame::Data(b) = f {
                        body += b.len();
                    }
                }
                Ok(None) => break,
                Err(_) => return (frames, false),
            }
        }
    }
    assert!(body <= data.len());
    (frames, d.decode_eof(&mut buf).is_ok())
}

fuzz_target!(|data: &[u8]| {
    let step = data.first().map_or(1, |b| usize::from(*b % 16) + 1);
    let whole = requests(data, data.len());
    let split = requests(data, step);
    assert_eq!(whole.1, split.1, "the verdict must not depend on how bytes arrive");

    let mut r = ResponseDecoder::default();
    r.expect(http::Method::GET);
    r.expect(http::Method::HEAD);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(_)) = r.decode(&mut buf) {}
    let _ = r.decode_eof(&mut buf);
});
