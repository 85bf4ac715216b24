//! The client side of HTTP/1: request messages in, encoded to a sub-pipeline (usually
//! `[connect]`), whose bytes come back decoded as response messages.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context as TaskCx, Poll};

use bytes::{BufMut, BytesMut};
use flowgate_http::h1::{Frame, Framing, Limits, ResponseDecoder, encode_chunk, encode_last_chunk};
use flowgate_http::hop;
use flowgate_pipeline::feed::{FeedSender, feed};
use flowgate_pipeline::{
    Context, Description, ErrorKind, Event, Events, Filter, Head, Side, StreamError, SubPipeline,
    Tail,
};
use futures_core::Stream;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{Method, StatusCode, Version, request};

use super::codec::{MAX_INTERIM, TooManyInterim, Trailers, interim_end, protocol_error};
use super::tunnel::wants_upgrade;

/// A pooled upstream connection ended before any byte of the response to the request
/// sent on it (the upstream closed it as the request went out, e.g. at its keep-alive
/// timeout).
#[derive(Debug, thiserror::Error)]
#[error("the upstream closed the connection before responding")]
pub struct ClosedBeforeResponse;

/// A 101 answered a request that did not ask to upgrade.
#[derive(Debug, thiserror::Error)]
#[error("the upstream switched protocols without being asked to")]
pub struct UnaskedUpgrade;

/// Encodes request messages into the sub-pipeline and decodes its bytes as responses.
///
/// A request's body is written as its head says: raw with Content-Length, chunked with
/// `Transfer-Encoding: chunked`, and not at all with neither. Interim 1xx responses (other
/// than 101: 100 Continue, 103 Early Hints…) are passed on as they arrive, each as a
/// bodiless message whose `MessageEnd` tail is [`Interim`](flowgate_pipeline::joint::Interim),
/// before the request's final response; more than
/// [`MAX_INTERIM`] of them to one request is an upstream protocol error.
///
/// Hop-by-hop fields are not forwarded, in either direction (RFC 9110 §7.6.1, as
/// [`flowgate_http::hop`] lists them: `Connection` and the fields it names — never
/// `Content-Length`, `Transfer-Encoding` or `Host`, which a message is framed and routed
/// by —, `Keep-Alive`, `Proxy-Connection`, `TE`, `Upgrade`), except that an upgrade
/// request keeps its `Upgrade` and is sent with `connection: upgrade`, and a 101 keeps its
/// own. A response that says the upstream
/// closes ends this connection's session after it. A 101 to a request
/// that did not ask for it is an upstream protocol error; after a 101 (or a 2xx to
/// CONNECT) the connection carries raw bytes both ways.
///
/// A connection that ends before any byte of a response fails the request with
/// [`ClosedBeforeResponse`]; when the connection had answered earlier requests (it came
/// from the pool) and the request is idempotent, that failure is retry-safe, so the pool
/// sends the request again on a new connection.
pub(crate) struct ClientCodec {
    pub(crate) sub: SubPipeline,
    pub(crate) limits: Limits,
}

impl Filter for ClientCodec {
    fn describe(&self) -> Description {
        Description::filter("http-client-codec").with_sub(self.sub.name())
    }

    fn attach(&self, input: Events, cx: &Context) -> Events {
        let (tx, rx) = feed();
        let out = self.sub.attach(Box::pin(rx), cx);
        Box::pin(ClientStream {
            input,
            input_done: false,
            tx,
            out,
            decoder: ResponseDecoder::new(self.limits),
            chunked: false,
            in_interim: false,
            interims: 0,
            upgrading: false,
            buf: BytesMut::new(),
            wbuf: BytesMut::new(),
            ready: VecDeque::new(),
            finished: false,
            closing: false,
            outstanding: false,
            idempotent: false,
            received: false,
            responses: 0,
        })
    }

    // The sub-pipeline is bound through `MuxHttp::subs`, which hands out the same reference.
}

struct ClientStream {
    input: Events,
    input_done: bool,
    tx: FeedSender,
    out: Events,
    decoder: ResponseDecoder,
    chunked: bool,
    /// Between an interim response's head and its end.
    in_interim: bool,
    /// Interim responses to the outstanding request so far.
    interims: usize,
    /// The last request asked to upgrade (a 101 may answer it).
    upgrading: bool,
    buf: BytesMut,
    wbuf: BytesMut,
    ready: VecDeque<Event>,
    finished: bool,
    /// The response being decoded said the upstream closes the connection after it.
    closing: bool,
    /// A request was sent and its (final) response has not ended yet.
    outstanding: bool,
    /// That request's method is idempotent.
    idempotent: bool,
    /// Bytes arrived since that request was sent.
    received: bool,
    /// Responses this connection completed.
    responses: u64,
}

const MAX_FEED: usize = 64;

impl ClientStream {
    fn encode(&mut self, ev: Event) {
        match ev {
            Event::MessageStart(head) => {
                let Some(parts) = head.get::<request::Parts>() else {
                    self.fail(StreamError::new(ErrorKind::Internal, Side::Internal));
                    return;
                };
                self.decoder.expect(parts.method.clone());
                self.outstanding = true;
                self.idempotent = parts.method.is_idempotent();
                self.received = false;
                self.chunked = !parts.headers.contains_key(CONTENT_LENGTH)
                    && parts.headers.get(TRANSFER_ENCODING).is_some();
                self.upgrading = wants_upgrade(parts);
                encode_proxied_head(parts, self.upgrading, &mut self.wbuf);
            }
            Event::Data(b) => {
                if self.chunked {
                    encode_chunk(&b, &mut self.wbuf);
                } else {
                    self.flush();
                    self.tx.push(Event::Data(b));
                }
            }
            Event::MessageEnd(t) => {
                if self.chunked {
                    encode_last_chunk(t.get::<Trailers>(), &mut self.wbuf);
                }
                self.flush();
            }
            Event::StreamEnd(e) => {
                self.flush();
                self.input_done = true;
                self.tx.push(Event::StreamEnd(e));
            }
        }
    }

    fn flush(&mut self) {
        if !self.wbuf.is_empty() {
            self.tx.push(Event::Data(self.wbuf.split().freeze()));
        }
    }

    fn fail(&mut self, e: StreamError) {
        let e = if self.stale() { e.retry_safe(true) } else { e };
        self.finished = true;
        self.ready.push_back(Event::StreamEnd(Some(e)));
    }

    /// The connection failed under a request that a reused connection took and never
    /// answered: sending that request again elsewhere is safe when it is idempotent.
    fn stale(&self) -> bool {
        self.outstanding && !self.received && self.idempotent && self.responses > 0
    }

    fn decode(&mut self, eof: bool) {
        loop {
            let r = if eof {
                self.decoder.decode_eof(&mut self.buf)
            } else {
                self.decoder.decode(&mut self.buf)
            };
            match r {
                Ok(Some(Frame::Head(mut parts, framing))) => {
                    if parts.status == StatusCode::SWITCHING_PROTOCOLS
                        && !std::mem::take(&mut self.upgrading)
                    {
                        self.finished = true;
                        let e = StreamError::new(ErrorKind::Protocol, Side::Upstream)
                            .with_cause(UnaskedUpgrade);
                        self.ready.push_back(Event::StreamEnd(Some(e)));
                        return;
                    }
                    if parts.status.is_informational() && framing != Framing::Tunnel {
                        self.interims += 1;
                        if self.interims > MAX_INTERIM {
                            self.finished = true;
                            let e = StreamError::new(ErrorKind::Protocol, Side::Upstream)
                                .with_cause(TooManyInterim);
                            self.ready.push_back(Event::StreamEnd(Some(e)));
                            return;
                        }
                        // Passed on as it is (less its hop-by-hop fields); whether the
                        // connection stays open is the final response's to say.
                        hop::strip_response(&mut parts, false);
                        self.in_interim = true;
                        self.ready.push_back(Event::MessageStart(Head::new(parts)));
                        continue;
                    }
                    self.closing = hop::strip_response(&mut parts, framing == Framing::Tunnel);
                    self.ready.push_back(Event::MessageStart(Head::new(parts)));
                }
                Ok(Some(Frame::Data(b))) => {
                    // (An interim response has no body.)
                    if !self.in_interim {
                        self.ready.push_back(Event::Data(b));
                    }
                }
                Ok(Some(Frame::End(t))) => {
                    if std::mem::take(&mut self.in_interim) {
                        self.ready.push_back(interim_end());
                        continue;
                    }
                    let tail = t.map_or_else(Tail::none, Tail::new);
                    self.ready.push_back(Event::MessageEnd(tail));
                    self.interims = 0;
                    self.outstanding = false;
                    self.responses += 1;
                    if self.closing {
                        // The upstream closes after this response: the connection takes
                        // no further request (its session ends here, not at the EOF).
                        self.finished = true;
                        self.ready.push_back(Event::END);
                        return;
                    }
                }
                Ok(None) => {
                    if eof && self.outstanding && !self.received {
                        let e = StreamError::new(ErrorKind::ConnectionReset, Side::Upstream)
                            .with_cause(ClosedBeforeResponse);
                        self.fail(e);
                    } else if eof {
                        self.finished = true;
                        self.ready.push_back(Event::END);
                    }
                    return;
                }
                Err(e) => {
                    self.finished = true;
                    self.ready.push_back(protocol_error(e, Side::Upstream));
                    return;
                }
            }
        }
    }
}

impl Stream for ClientStream {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, task: &mut TaskCx<'_>) -> Poll<Option<Event>> {
        let this = &mut *self;
        loop {
            if let Some(ev) = this.ready.pop_front() {
                return Poll::Ready(Some(ev));
            }
            if this.finished {
                return Poll::Ready(None);
            }
            let mut progressed = false;
            while !this.input_done {
                // A full feed is pulled again once the connection has taken half of it
                // (`poll_drained` wakes this task then).
                if this.tx.len() >= MAX_FEED
                    && this.tx.poll_drained(task, MAX_FEED / 2).is_pending()
                {
                    break;
                }
                match this.input.as_mut().poll_next(task) {
                    Poll::Ready(ev) => {
                        this.encode(ev.unwrap_or(Event::END));
                        progressed = true;
                    }
                    Poll::Pending => break,
                }
            }
            match this.out.as_mut().poll_next(task) {
                Poll::Ready(Some(Event::Data(b))) => {
                    this.received |= !b.is_empty();
                    this.buf.extend_from_slice(&b);
                    this.decode(false);
                }
                Poll::Ready(Some(Event::StreamEnd(Some(e)))) => this.fail(e),
                Poll::Ready(Some(Event::StreamEnd(None)) | None) => this.decode(true),
                Poll::Ready(Some(_)) => {}
                Poll::Pending if !progressed => return Poll::Pending,
                Poll::Pending => {}
            }
        }
    }
}

/// Writes a request head for the upstream without the hop-by-hop fields (see
/// [`ClientCodec`]); `upgrade` keeps `Upgrade` and adds `connection: upgrade`.
pub(crate) fn encode_proxied_head(head: &request::Parts, upgrade: bool, dst: &mut BytesMut) {
    let target = if head.method == Method::CONNECT {
        head.uri.authority().map(|a| a.as_str())
    } else {
        None
    };
    let target = target.unwrap_or_else(|| head.uri.path_and_query().map_or("/", |p| p.as_str()));
    dst.reserve(64 + head.headers.len() * 32);
    dst.put_slice(head.method.as_str().as_bytes());
    dst.put_u8(b' ');
    dst.put_slice(target.as_bytes());
    dst.put_slice(if head.version == Version::HTTP_10 {
        b" HTTP/1.0\r\n"
    } else {
        b" HTTP/1.1\r\n"
    });
    // Fields named in Connection are hop-by-hop too, except the ones this head is framed
    // and routed by: the body below is written by Content-Length / Transfer-Encoding, so
    // `Connection: content-length` must not drop them (the upstream would read the body as
    // another request). See `flowgate_http::hop`.
    for (name, value) in hop::forwarded_request_fields(&head.headers, upgrade) {
        dst.put_slice(name.as_str().as_bytes());
        dst.put_slice(b": ");
        dst.put_slice(value.as_bytes());
        dst.put_slice(b"\r\n");
    }
    if upgrade {
        dst.put_slice(b"connection: upgrade\r\n");
    }
    dst.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MuxHttp;
    use crate::codec::ends_interim;
    use bytes::Bytes;
    use flowgate_pipeline::joint::MuxOptions;
    use flowgate_pipeline::{Filter, Pipeline, testing};
    use futures_util::StreamExt;
    use http::response;

    fn encoded(req: http::request::Builder) -> String {
        let (parts, ()) = req.body(()).unwrap().into_parts();
        let mut out = BytesMut::new();
        encode_proxied_head(&parts, wants_upgrade(&parts), &mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn connection_cannot_strip_the_framing_or_the_host() {
        // `Connection: content-length` must not drop the length the body is written by:
        // the upstream would read the body as the next request (smuggling).
        let cl = encoded(
            http::Request::post("/a")
                .header("host", "x")
                .header("connection", "content-length, host, x-hop")
                .header("content-length", "5")
                .header("x-hop", "1"),
        );
        assert_eq!(
            cl,
            "POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\n"
        );
        let te = encoded(
            http::Request::post("/a")
                .header("host", "x")
                .header("connection", "Transfer-Encoding")
                .header("transfer-encoding", "chunked"),
        );
        assert_eq!(
            te,
            "POST /a HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }

    fn stripped(res: http::response::Builder, tunnel: bool) -> (Vec<String>, bool) {
        let (mut parts, ()) = res.body(()).unwrap().into_parts();
        let close = hop::strip_response(&mut parts, tunnel);
        let mut fields: Vec<String> = parts
            .headers
            .iter()
            .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap()))
            .collect();
        fields.sort();
        (fields, close)
    }

    #[test]
    fn a_response_loses_its_hop_by_hop_fields_and_says_whether_the_upstream_closes() {
        let (fields, close) = stripped(
            http::Response::builder()
                .header("connection", "keep-alive, X-Private")
                .header("keep-alive", "timeout=5")
                .header("x-private", "1")
                .header("proxy-connection", "keep-alive")
                .header("upgrade", "h2c")
                .header("content-length", "2")
                .header("x-kept", "2"),
            false,
        );
        assert_eq!(fields, ["content-length: 2", "x-kept: 2"]);
        assert!(!close);
        // `Connection: close`; a framing field it names stays.
        let (fields, close) = stripped(
            http::Response::builder()
                .header("connection", "close, content-length")
                .header("content-length", "2"),
            false,
        );
        assert_eq!(fields, ["content-length: 2"]);
        assert!(close);
        // HTTP/1.0 closes unless it says keep-alive.
        let (_, close) = stripped(http::Response::builder().version(Version::HTTP_10), false);
        assert!(close);
        let (fields, close) = stripped(
            http::Response::builder()
                .version(Version::HTTP_10)
                .header("connection", "keep-alive"),
            false,
        );
        assert!(fields.is_empty() && !close, "{fields:?}");
        // A 101 keeps what the client needs to switch protocols.
        let (fields, _) = stripped(
            http::Response::builder()
                .status(101)
                .header("connection", "Upgrade, x-private")
                .header("upgrade", "websocket")
                .header("x-private", "1")
                .header("sec-websocket-accept", "a"),
            true,
        );
        assert_eq!(
            fields,
            [
                "connection: upgrade",
                "sec-websocket-accept: a",
                "upgrade: websocket"
            ]
        );
    }

    #[test]
    fn hop_by_hop_fields_are_dropped_but_an_upgrade_keeps_its_own() {
        let plain = encoded(
            http::Request::get("/a?b")
                .header("host", "x")
                .header("connection", "keep-alive, x-secret")
                .header("keep-alive", "timeout=5")
                .header("x-secret", "1")
                .header("te", "trailers")
                .header("upgrade", "websocket")
                .header("x-kept", "2"),
        );
        assert_eq!(plain, "GET /a?b HTTP/1.1\r\nhost: x\r\nx-kept: 2\r\n\r\n");
        let ws = encoded(
            http::Request::get("/chat")
                .header("host", "x")
                .header("connection", "Upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-key", "k"),
        );
        assert_eq!(
            ws,
            "GET /chat HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nsec-websocket-key: k\r\nconnection: upgrade\r\n\r\n"
        );
        let connect =
            encoded(http::Request::connect("example.test:443").header("host", "example.test:443"));
        assert_eq!(
            connect,
            "CONNECT example.test:443 HTTP/1.1\r\nhost: example.test:443\r\n\r\n"
        );
    }

    /// An "upstream connection" that answers every write with the same bytes.
    struct Canned(Bytes);

    impl Filter for Canned {
        fn describe(&self) -> Description {
            Description::filter("canned")
        }
        fn attach(&self, input: Events, _cx: &Context) -> Events {
            let reply = self.0.clone();
            Box::pin(input.filter_map(move |ev| {
                let reply = reply.clone();
                async move {
                    match ev {
                        Event::Data(_) => Some(Event::Data(reply)),
                        Event::StreamEnd(e) => Some(Event::StreamEnd(e)),
                        _ => None,
                    }
                }
            }))
        }
    }

    fn mux_over(reply: &[u8]) -> MuxHttp {
        let conn = Pipeline::builder("up")
            .filter(Canned(Bytes::copy_from_slice(reply)))
            .build()
            .unwrap();
        MuxHttp::new(conn, Limits::default(), MuxOptions::default()).unwrap()
    }

    /// The response messages as (status, body, interim?) in order, and the stream's end.
    fn replies(out: &[Event]) -> (Vec<(u16, String, bool)>, Option<&StreamError>) {
        let mut v: Vec<(u16, String, bool)> = Vec::new();
        let mut end = None;
        for ev in out {
            match ev {
                Event::MessageStart(h) => {
                    let p = h.get::<response::Parts>().unwrap();
                    v.push((p.status.as_u16(), String::new(), false));
                }
                Event::Data(b) => v
                    .last_mut()
                    .unwrap()
                    .1
                    .push_str(std::str::from_utf8(b).unwrap()),
                Event::MessageEnd(t) => v.last_mut().unwrap().2 = ends_interim(t),
                Event::StreamEnd(e) => end = e.as_ref(),
            }
        }
        (v, end)
    }

    fn get(req: http::request::Builder) -> Vec<Event> {
        let (parts, ()) = req.body(()).unwrap().into_parts();
        vec![
            Event::MessageStart(Head::new(parts)),
            Event::MessageEnd(Tail::none()),
            Event::END,
        ]
    }

    #[tokio::test]
    async fn interim_responses_come_before_the_final_one_as_messages_of_their_own() {
        let mux = mux_over(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\nConnection: x-hop\r\nx-hop: 1\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        );
        for _ in 0..2 {
            // (The second time on the pooled connection.)
            let out = testing::run(&mux, get(http::Request::get("/").header("host", "a"))).await;
            let (msgs, end) = replies(&out);
            assert_eq!(
                msgs,
                [
                    (100, String::new(), true),
                    (103, String::new(), true),
                    (200, "ok".into(), false)
                ]
            );
            assert!(end.is_none(), "{end:?}");
            let Some(Event::MessageStart(h)) = out.get(2) else {
                panic!("{out:?}")
            };
            let hints = h.get::<response::Parts>().unwrap();
            assert_eq!(hints.headers["link"], "</a.css>; rel=preload");
            assert!(
                !hints.headers.contains_key("x-hop") && !hints.headers.contains_key("connection"),
                "hop-by-hop fields are dropped from interim responses too"
            );
        }
        assert_eq!(mux.connection_count(), 1);
    }

    #[tokio::test]
    async fn too_many_interim_responses_are_an_upstream_error() {
        let mut reply = b"HTTP/1.1 103 Early Hints\r\n\r\n".repeat(MAX_INTERIM + 1);
        reply.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        let mux = mux_over(&reply);
        let out = testing::run(&mux, get(http::Request::get("/").header("host", "a"))).await;
        let (msgs, end) = replies(&out);
        assert_eq!(msgs.len(), MAX_INTERIM, "{msgs:?}");
        let e = end.expect("an error end");
        assert_eq!((e.kind(), e.side()), (ErrorKind::Protocol, Side::Upstream));
        assert!(e.cause().is_some_and(|c| c.is::<TooManyInterim>()));
    }

    #[tokio::test]
    async fn an_interim_response_before_a_101_does_not_end_an_upgrade() {
        let mux = mux_over(
            b"HTTP/1.1 103 Early Hints\r\nlink: </a.js>\r\n\r\nHTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nraw",
        );
        let out = testing::run(
            &mux,
            get(http::Request::get("/chat")
                .header("host", "a")
                .header("connection", "upgrade")
                .header("upgrade", "websocket")),
        )
        .await;
        let (msgs, _) = replies(&out);
        assert_eq!(msgs[0], (103, String::new(), true));
        assert_eq!(msgs[1].0, 101);
        assert!(msgs[1].1.starts_with("raw"), "{msgs:?}");
    }
}
