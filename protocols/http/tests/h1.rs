//! HTTP/1 codec vectors: valid messages fed whole and byte by byte, request-smuggling and
//! limit vectors, response framing by method and status, and encode/decode round trips.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use bytes::{Bytes, BytesMut};
use flowgate_http::h1::{
    Frame, Framing, H1Error, Limits, RequestDecoder, ResponseDecoder, encode_chunk,
    encode_last_chunk, encode_request_head, encode_response_head,
};
use http::Method;

/// A decoded message, flattened for comparison.
#[derive(Debug, PartialEq, Eq)]
struct Msg {
    head: String,
    framing: Framing,
    body: Vec<u8>,
    trailers: Vec<(String, String)>,
}

fn fmt_req(p: &http::request::Parts) -> String {
    let mut s = format!("{} {} {:?}", p.method, p.uri, p.version);
    for (k, v) in &p.headers {
        s.push_str(&format!("|{k}={}", v.to_str().unwrap_or("?")));
    }
    s
}

/// Decodes every request in `input`, feeding `step` bytes at a time (0 = all at once).
fn requests(input: &[u8], step: usize, limits: Limits) -> Result<Vec<Msg>, H1Error> {
    let mut d = RequestDecoder::new(limits);
    let mut buf = BytesMut::new();
    let mut out: Vec<Msg> = Vec::new();
    let chunks: Vec<&[u8]> = if step == 0 {
        vec![input]
    } else {
        input.chunks(step).collect()
    };
    let feed = |f: Frame<http::request::Parts>, out: &mut Vec<Msg>| match f {
        Frame::Head(p, framing) => out.push(Msg {
            head: fmt_req(&p),
            framing,
            body: vec![],
            trailers: vec![],
        }),
        Frame::Data(b) => out.last_mut().unwrap().body.extend_from_slice(&b),
        Frame::End(t) => {
            if let Some(t) = t {
                out.last_mut().unwrap().trailers = t
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
                    .collect();
            }
        }
    };
    for c in chunks {
        buf.extend_from_slice(c);
        while let Some(f) = d.decode(&mut buf)? {
            feed(f, &mut out);
        }
    }
    while let Some(f) = d.decode_eof(&mut buf)? {
        feed(f, &mut out);
    }
    Ok(out)
}

fn req_all_ways(input: &[u8]) -> Result<Vec<Msg>, H1Error> {
    let whole = requests(input, 0, Limits::default());
    for step in [1, 2, 3, 7] {
        assert_eq!(
            requests(input, step, Limits::default()),
            whole,
            "fed {step} bytes at a time"
        );
    }
    whole
}

#[test]
fn valid_requests() {
    let m = req_all_ways(b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n").unwrap();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].head, "GET /a?b=1 HTTP/1.1|host=x|accept=*/*");
    assert_eq!(m[0].framing, Framing::Empty);

    let m =
        req_all_ways(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello").unwrap();
    assert_eq!(
        (m[0].framing, m[0].body.as_slice()),
        (Framing::Length(5), &b"hello"[..])
    );

    let chunked = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6 ; a\r\n world\r\n0\r\nX-Sum: 42\r\nX-Other: y\r\n\r\n";
    let m = req_all_ways(chunked).unwrap();
    assert_eq!(m[0].framing, Framing::Chunked);
    assert_eq!(m[0].body, b"hello world");
    assert_eq!(
        m[0].trailers,
        vec![
            ("x-sum".into(), "42".into()),
            ("x-other".into(), "y".into())
        ]
    );

    // Pipelining, an HTTP/1.0 request without Host, and leading empty lines.
    let m = req_all_ways(b"\r\nGET /1 HTTP/1.1\r\nHost: x\r\n\r\nPOST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nokGET /3 HTTP/1.0\r\n\r\n").unwrap();
    let heads: Vec<&str> = m.iter().map(|m| m.head.as_str()).collect();
    assert_eq!(
        heads,
        [
            "GET /1 HTTP/1.1|host=x",
            "POST /2 HTTP/1.1|host=x|content-length=2",
            "GET /3 HTTP/1.0"
        ]
    );
    assert_eq!(m[1].body, b"ok");

    // CONNECT: the rest is a tunnel.
    let m =
        req_all_ways(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\nraw bytes")
            .unwrap();
    assert_eq!(
        (m[0].framing, m[0].body.as_slice()),
        (Framing::Tunnel, &b"raw bytes"[..])
    );
}

#[test]
fn framing_fields_are_left_in_canonical_form() {
    // What a proxy forwards is what it parsed: a lenient next hop must not be able to read
    // a different framing out of the sender's spelling.
    let cases: [(&[u8], &str, Framing); 6] = [
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0300\r\n\r\n",
            "POST / HTTP/1.1|host=x|content-length=300",
            Framing::Length(300),
        ),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 000\r\n\r\n",
            "POST / HTTP/1.1|host=x|content-length=0",
            Framing::Empty,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length:   7  \r\n\r\n",
            "POST / HTTP/1.1|host=x|content-length=7",
            Framing::Length(7),
        ),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: CHUNKED\r\n\r\n",
            "POST / HTTP/1.1|host=x|transfer-encoding=chunked",
            Framing::Chunked,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: \t chunked \r\n\r\n",
            "POST / HTTP/1.1|host=x|transfer-encoding=chunked",
            Framing::Chunked,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1|host=x|transfer-encoding=chunked",
            Framing::Chunked,
        ),
    ];
    for (input, head, framing) in cases {
        let mut d = RequestDecoder::default();
        let Some(Frame::Head(p, f)) = d.decode(&mut BytesMut::from(input)).unwrap() else {
            panic!("no head");
        };
        assert_eq!((fmt_req(&p).as_str(), f), (head, framing));
    }
    // Responses: several codings in several fields become one list in lower case.
    let mut d = ResponseDecoder::default();
    d.expect(Method::GET);
    let mut buf = BytesMut::from(
        &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: GZip ,\tBR\r\nTransfer-Encoding: Chunked\r\n\r\n0\r\n\r\n"[..],
    );
    let Some(Frame::Head(p, framing)) = d.decode(&mut buf).unwrap() else {
        panic!("no head");
    };
    assert_eq!(framing, Framing::Chunked);
    let te: Vec<_> = p.headers.get_all("transfer-encoding").iter().collect();
    assert_eq!(te, ["gzip, br, chunked"]);
    let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 02\r\n\r\nok"[..]);
    let mut d = ResponseDecoder::default();
    d.expect(Method::GET);
    let Some(Frame::Head(p, framing)) = d.decode(&mut buf).unwrap() else {
        panic!("no head");
    };
    assert_eq!(framing, Framing::Length(2));
    assert_eq!(p.headers["content-length"], "2");
}

fn refused(input: &[u8]) -> H1Error {
    let e = requests(input, 0, Limits::default()).unwrap_err();
    // Byte by byte gives the same verdict.
    assert_eq!(
        requests(input, 1, Limits::default()).unwrap_err(),
        e,
        "{}",
        String::from_utf8_lossy(input)
    );
    e
}

#[test]
fn smuggling_vectors_are_refused() {
    use H1Error::*;
    let h = "POST / HTTP/1.1\r\nHost: x\r\n";
    let cases: Vec<(String, H1Error)> = vec![
        // CL.TE and TE.CL
        (
            format!("{h}Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG"),
            LengthAndChunked,
        ),
        (
            format!(
                "{h}Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n"
            ),
            LengthAndChunked,
        ),
        // TE.TE obfuscations
        (
            format!("{h}Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n"),
            BadTransferEncoding,
        ),
        (
            format!("{h}Transfer-Encoding: xchunked\r\n\r\n"),
            BadTransferEncoding,
        ),
        (
            format!("{h}Transfer-Encoding: chunked, chunked\r\n\r\n"),
            BadTransferEncoding,
        ),
        (
            format!("{h}Transfer-Encoding: gzip, chunked\r\n\r\n"),
            BadTransferEncoding,
        ),
        (
            format!("{h}Transfer-Encoding: \"chunked\"\r\n\r\n"),
            BadTransferEncoding,
        ),
        (
            format!("{h}Transfer-Encoding: chunked\r\n \r\n\r\n"),
            BadHead("invalid header field name"),
        ),
        (
            format!("{h}Transfer-Encoding : chunked\r\n\r\n"),
            BadHead("invalid header field name"),
        ),
        (
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n".to_string(),
            BadTransferEncoding,
        ),
        // Content-Length games
        (
            format!("{h}Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello"),
            DuplicateContentLength,
        ),
        (
            format!("{h}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello"),
            DuplicateContentLength,
        ),
        (
            format!("{h}Content-Length: 5, 5\r\n\r\nhello"),
            BadContentLength,
        ),
        (
            format!("{h}Content-Length: +5\r\n\r\nhello"),
            BadContentLength,
        ),
        (
            format!("{h}Content-Length: 0x5\r\n\r\nhello"),
            BadContentLength,
        ),
        (
            format!("{h}Content-Length: 99999999999999999999\r\n\r\n"),
            BadContentLength,
        ),
        // obs-fold and bare LF
        (
            format!("{h}X-A: 1\r\n  folded\r\n\r\n"),
            BadHead("invalid header field name"),
        ),
        ("GET / HTTP/1.1\nHost: x\n\n".to_string(), BareLf),
        (
            "GET / HTTP/1.1\r\nHost: x\nX: y\r\n\r\n".to_string(),
            BareLf,
        ),
        // Chunk framing
        (
            format!("{h}Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n"),
            BadChunk("invalid chunk size or extension"),
        ),
        (
            format!("{h}Transfer-Encoding: chunked\r\n\r\n-1\r\n"),
            BadChunk("missing chunk size"),
        ),
        (
            format!("{h}Transfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n"),
            BadChunk("bare LF after chunk size"),
        ),
        (
            format!("{h}Transfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n"),
            BadChunk("chunk data not followed by CRLF"),
        ),
        (
            format!("{h}Transfer-Encoding: chunked\r\n\r\n1000000000000000\r\n"),
            BadChunk("chunk size too large"),
        ),
        (
            format!("{h}Transfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n"),
            BadChunk("whitespace after chunk size"),
        ),
        // Host rules for HTTP/1.1
        ("GET / HTTP/1.1\r\n\r\n".to_string(), Host),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_string(),
            Host,
        ),
        ("GET / HTTP/2.0\r\nHost: a\r\n\r\n".to_string(), Version),
    ];
    for (input, want) in cases {
        let got = refused(input.as_bytes());
        assert_eq!(got, want, "{input:?}");
        assert!(
            matches!(got.status(), 400 | 501 | 505),
            "{input:?} -> {}",
            got.status()
        );
    }
}

#[test]
fn limits_are_enforced() {
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(70_000)
    );
    let e = refused(big.as_bytes());
    assert_eq!((e.clone(), e.status()), (H1Error::HeadTooLarge(65536), 431));
    // Oversized without ever finishing the head: refused once the limit is crossed.
    let endless = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}", "a".repeat(70_000));
    assert_eq!(
        requests(endless.as_bytes(), 1000, Limits::default()).unwrap_err(),
        H1Error::HeadTooLarge(65536)
    );

    let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
    let e = refused(format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes());
    assert_eq!(e.status(), 431);

    let line = Limits {
        max_line: 100,
        ..Limits::default()
    };
    let long = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Long: {}\r\n\r\n",
        "a".repeat(200)
    );
    assert_eq!(
        requests(long.as_bytes(), 0, line).unwrap_err(),
        H1Error::LineTooLong(100)
    );

    let small = Limits {
        max_body: Some(4),
        ..Limits::default()
    };
    let cl = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
    let e = requests(cl, 0, small).unwrap_err();
    assert_eq!((e.clone(), e.status()), (H1Error::BodyTooLarge(4), 413));
    let ch = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n";
    assert_eq!(
        requests(ch, 0, small).unwrap_err(),
        H1Error::BodyTooLarge(4)
    );

    // A message cut short by the end of the connection.
    assert_eq!(
        requests(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhel",
            0,
            Limits::default()
        )
        .unwrap_err(),
        H1Error::Incomplete
    );
    assert_eq!(
        requests(b"GET / HTTP/1.1\r\nHo", 0, Limits::default()).unwrap_err(),
        H1Error::Incomplete
    );
}

#[test]
fn after_an_error_nothing_more_is_decoded() {
    let mut d = RequestDecoder::default();
    let mut buf = BytesMut::from(
        &b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"
            [..],
    );
    assert!(d.decode(&mut buf).is_err());
    assert!(d.decode(&mut buf).unwrap().is_none());
}

fn responses(input: &[u8], methods: &[Method]) -> Result<Vec<(u16, Framing, Vec<u8>)>, H1Error> {
    let mut d = ResponseDecoder::default();
    for m in methods {
        d.expect(m.clone());
    }
    let mut buf = BytesMut::from(input);
    let mut out: Vec<(u16, Framing, Vec<u8>)> = Vec::new();
    loop {
        let f = match d.decode(&mut buf)? {
            Some(f) => f,
            None => match d.decode_eof(&mut buf)? {
                Some(f) => f,
                None => break,
            },
        };
        match f {
            Frame::Head(p, framing) => out.push((p.status.as_u16(), framing, vec![])),
            Frame::Data(b) => out.last_mut().unwrap().2.extend_from_slice(&b),
            Frame::End(_) => {}
        }
    }
    Ok(out)
}

#[test]
fn response_framing_follows_method_and_status() {
    let r = responses(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
        &[Method::HEAD],
    )
    .unwrap();
    assert_eq!(r, vec![(200, Framing::Empty, vec![])]);
    let r = responses(
        b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
        &[Method::GET, Method::GET],
    )
    .unwrap();
    assert_eq!(
        r,
        vec![(204, Framing::Empty, vec![]), (304, Framing::Empty, vec![])]
    );
    let r = responses(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        &[Method::POST],
    )
    .unwrap();
    assert_eq!(
        r,
        vec![
            (100, Framing::Empty, vec![]),
            (200, Framing::Length(2), b"ok".to_vec())
        ]
    );
    let r = responses(b"HTTP/1.0 200 OK\r\n\r\nuntil close", &[Method::GET]).unwrap();
    assert_eq!(r, vec![(200, Framing::Close, b"until close".to_vec())]);
    let r = responses(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        &[Method::GET],
    )
    .unwrap();
    assert_eq!(r, vec![(200, Framing::Chunked, b"ok".to_vec())]);
    let r = responses(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\nframes",
        &[Method::GET],
    )
    .unwrap();
    assert_eq!(r, vec![(101, Framing::Tunnel, b"frames".to_vec())]);
    let r = responses(
        b"HTTP/1.1 200 Connection established\r\n\r\ntls bytes",
        &[Method::CONNECT],
    )
    .unwrap();
    assert_eq!(r, vec![(200, Framing::Tunnel, b"tls bytes".to_vec())]);
    assert_eq!(
        responses(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            &[Method::GET]
        )
        .unwrap_err(),
        H1Error::LengthAndChunked
    );
}

#[test]
fn encode_decode_round_trip() {
    let input =
        b"POST /p?q HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nx-a: 1\r\nx-a: 2\r\n\r\n";
    let mut d = RequestDecoder::default();
    let mut buf = BytesMut::from(&input[..]);
    let Some(Frame::Head(parts, Framing::Chunked)) = d.decode(&mut buf).unwrap() else {
        panic!()
    };
    let mut out = BytesMut::new();
    encode_request_head(&parts, &mut out);
    assert_eq!(&out[..], &input[..]);
    encode_chunk(b"hello", &mut out);
    encode_chunk(b"", &mut out);
    let big = vec![b'z'; 300];
    let before = out.len();
    encode_chunk(&big, &mut out);
    assert_eq!(&out[before..before + 5], b"12c\r\n");
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-sum", http::HeaderValue::from_static("7"));
    encode_last_chunk(Some(&trailers), &mut out);
    let m = requests(&out, 0, Limits::default()).unwrap();
    assert_eq!(m[0].body, [&b"hello"[..], &big].concat());
    assert_eq!(m[0].trailers, vec![("x-sum".to_string(), "7".to_string())]);

    let (mut res, ()) = http::Response::new(()).into_parts();
    res.status = http::StatusCode::NOT_FOUND;
    res.headers
        .insert("content-length", http::HeaderValue::from_static("0"));
    let mut out = BytesMut::new();
    encode_response_head(&res, &mut out);
    assert_eq!(
        &out[..],
        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
    );
}

#[test]
fn header_values_share_the_read_buffer() {
    let mut d = RequestDecoder::default();
    let mut buf =
        BytesMut::from(&b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: abcdefghijklmnop\r\n\r\n"[..]);
    let Some(Frame::Head(parts, _)) = d.decode(&mut buf).unwrap() else {
        panic!()
    };
    assert_eq!(parts.headers["x-long"], "abcdefghijklmnop");
    let _: Bytes = Bytes::new();
}
