//! The HTTP/1 encoders: heads and body framing into a buffer.

use bytes::{BufMut, BytesMut};
use http::{HeaderMap, Version, request, response};

fn version(v: Version) -> &'static [u8] {
    if v == Version::HTTP_10 {
        b"HTTP/1.0"
    } else {
        b"HTTP/1.1"
    }
}

fn put_headers(headers: &HeaderMap, dst: &mut BytesMut) {
    for (name, value) in headers {
        dst.put_slice(name.as_str().as_bytes());
        dst.put_slice(b": ");
        dst.put_slice(value.as_bytes());
        dst.put_slice(b"\r\n");
    }
    dst.put_slice(b"\r\n");
}

/// Writes a request head (`METHOD target HTTP/1.x`, the fields as they are, the empty line).
/// The caller owns the framing fields (Content-Length / Transfer-Encoding).
///
/// ```
/// use bytes::BytesMut;
/// let (mut parts, ()) = http::Request::get("/a?b").header("host", "x").body(()).unwrap().into_parts();
/// let mut out = BytesMut::new();
/// flowgate_http::h1::encode_request_head(&parts, &mut out);
/// assert_eq!(&out[..], b"GET /a?b HTTP/1.1\r\nhost: x\r\n\r\n");
/// ```
pub fn encode_request_head(head: &request::Parts, dst: &mut BytesMut) {
    let target = head.uri.path_and_query().map_or("/", |p| p.as_str());
    let target = if head.method == http::Method::CONNECT {
        head.uri.authority().map_or(target, |a| a.as_str())
    } else {
        target
    };
    dst.reserve(64 + head.headers.len() * 32);
    dst.put_slice(head.method.as_str().as_bytes());
    dst.put_u8(b' ');
    dst.put_slice(target.as_bytes());
    dst.put_u8(b' ');
    dst.put_slice(version(head.version));
    dst.put_slice(b"\r\n");
    put_headers(&head.headers, dst);
}

/// Writes a response head (`HTTP/1.x code reason`, the fields, the empty line).
pub fn encode_response_head(head: &response::Parts, dst: &mut BytesMut) {
    dst.reserve(64 + head.headers.len() * 32);
    dst.put_slice(version(head.version));
    dst.put_u8(b' ');
    dst.put_slice(head.status.as_str().as_bytes());
    dst.put_u8(b' ');
    dst.put_slice(
        head.status
            .canonical_reason()
            .unwrap_or("Unknown")
            .as_bytes(),
    );
    dst.put_slice(b"\r\n");
    put_headers(&head.headers, dst);
}

/// Writes one chunk of a chunked body (nothing for empty data: an empty chunk would end it).
pub fn encode_chunk(data: &[u8], dst: &mut BytesMut) {
    if data.is_empty() {
        return;
    }
    dst.reserve(data.len() + 20);
    put_hex(data.len(), dst);
    dst.put_slice(b"\r\n");
    dst.put_slice(data);
    dst.put_slice(b"\r\n");
}

/// Writes `n` in lower-case hex without allocating.
fn put_hex(n: usize, dst: &mut BytesMut) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut tmp = [0u8; 16];
    let mut i = tmp.len();
    let mut n = n;
    loop {
        i -= 1;
        tmp[i] = DIGITS[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    dst.put_slice(&tmp[i..]);
}

/// Writes the last chunk and the trailer section.
pub fn encode_last_chunk(trailers: Option<&HeaderMap>, dst: &mut BytesMut) {
    dst.put_slice(b"0\r\n");
    match trailers {
        Some(t) => put_headers(t, dst),
        None => dst.put_slice(b"\r\n"),
    }
}
