//! The HTTP/2 server side of `demux-http`, bridged to the same per-request sub-pipelines as
//! HTTP/1.
//!
//! The `h2` crate does the protocol (framing, HPACK, flow control, stream states and its
//! defences against rapid reset and CONTINUATION floods). It wants an `AsyncRead +
//! AsyncWrite`; [`EventIo`] is one made of the filter's input events (reads) and a feed of
//! output events (writes). The whole connection — h2's state machine and every stream's
//! sub-pipeline — is one future polled inline by the filter's output stream, in the
//! connection's own task: no task per stream, no cross-task wake-ups.
//!
//! Each request becomes a stream `MessageStart(request::Parts) Data* MessageEnd(trailers)`
//! into its own instance of the request pipeline (the one HTTP/1 uses), and its response
//! message goes back through h2's `SendResponse`/`SendStream`, sending no more than the
//! peer's flow-control window allows. Interim responses before it (103 Early Hints, 100
//! Continue) go out at once as HEADERS frames of their own (`send_informational`). Request
//! body bytes are acknowledged to the peer (window updates) only once the sub-pipeline has
//! taken them, so a slow upstream slows the client down instead of filling memory.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use flowgate_http::h2::{Settings, SettingsError, request_from_h2, response_to_h2};
use flowgate_pipeline::feed::{FeedSender, feed};
use flowgate_pipeline::{
    Context, ErrorKind, Event, Events, Head, Side, StreamError, SubPipeline, Tail,
};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::{HeaderMap, response};
use serde::{Deserialize, Serialize};

use super::access_log::AccessLog;
use super::codec::{Trailers, ends_interim, is_interim};
use super::event_io::{EventIo, Inline};
use super::h2_watch::{BlockState, WatchHeaderBlocks};

/// The HTTP/2 connection preface a client with prior knowledge (h2c) starts with.
pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// HTTP/2 settings and limits of `demux-http` (`http2:`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Http2Config {
    /// Serve HTTP/2 when the client asks for it (ALPN `h2`, or the h2c preface). Default true.
    #[serde(default = "flowgate_pipeline::registry::default_true")]
    pub enabled: bool,
    /// Streams a client may have open at once. Default 100.
    #[serde(default = "d_streams")]
    pub max_concurrent_streams: u32,
    /// Largest decoded header list of a request in bytes (RFC 9113 accounting). Default
    /// 64 KiB; a bigger one is refused with 431.
    #[serde(default = "d_header_list")]
    pub max_header_list_size: u32,
    /// Each stream's receive window in bytes. Default 1 MiB.
    #[serde(default = "d_window")]
    pub initial_window_size: u32,
    /// The connection's receive window in bytes. Default 4 MiB.
    #[serde(default = "d_conn_window")]
    pub initial_connection_window_size: u32,
    /// Largest frame payload the client may send (16 KiB to 16 MiB). Default 16 KiB.
    #[serde(default = "d_frame")]
    pub max_frame_size: u32,
    /// Streams the client reset before they were accepted that may wait at once (the
    /// rapid-reset defence, CVE-2023-44487); more is a GOAWAY `ENHANCE_YOUR_CALM`. Default 20.
    #[serde(default = "d_pending_resets")]
    pub max_pending_accept_reset_streams: usize,
    /// Streams the server may reset for the client's protocol errors before it gives up on
    /// the connection with GOAWAY `ENHANCE_YOUR_CALM`. Default 1024.
    #[serde(default = "d_error_resets")]
    pub max_local_error_reset_streams: usize,
}

// The HTTP/2 settings' defaults are flowgate-http's; `mux-http`'s client side uses these too.
pub(crate) fn d_streams() -> u32 {
    Settings::DEFAULT.max_concurrent_streams
}
pub(crate) fn d_header_list() -> u32 {
    Settings::DEFAULT.max_header_list_size
}
pub(crate) fn d_window() -> u32 {
    Settings::DEFAULT.initial_window_size
}
pub(crate) fn d_conn_window() -> u32 {
    Settings::DEFAULT.initial_connection_window_size
}
pub(crate) fn d_frame() -> u32 {
    Settings::DEFAULT.max_frame_size
}
fn d_pending_resets() -> usize {
    20
}
fn d_error_resets() -> usize {
    1024
}

impl Default for Http2Config {
    fn default() -> Self {
        Http2Config {
            enabled: true,
            max_concurrent_streams: d_streams(),
            max_header_list_size: d_header_list(),
            initial_window_size: d_window(),
            initial_connection_window_size: d_conn_window(),
            max_frame_size: d_frame(),
            max_pending_accept_reset_streams: d_pending_resets(),
            max_local_error_reset_streams: d_error_resets(),
        }
    }
}

impl Http2Config {
    /// The HTTP/2 settings this configuration sets.
    pub(crate) fn settings(&self) -> Settings {
        Settings {
            max_concurrent_streams: self.max_concurrent_streams,
            max_header_list_size: self.max_header_list_size,
            initial_window_size: self.initial_window_size,
            initial_connection_window_size: self.initial_connection_window_size,
            max_frame_size: self.max_frame_size,
        }
    }

    /// Checks the values against what HTTP/2 allows ([`Settings::validate`]).
    pub(crate) fn validate(&self) -> Result<(), &'static str> {
        self.settings().validate().map_err(SettingsError::as_str)
    }

    fn builder(&self) -> h2::server::Builder {
        let s = self.settings();
        let mut b = h2::server::Builder::new();
        b.max_concurrent_streams(s.max_concurrent_streams)
            .max_header_list_size(s.max_header_list_size)
            .initial_window_size(s.initial_window_size)
            .initial_connection_window_size(s.initial_connection_window_size)
            .max_frame_size(s.max_frame_size)
            .max_pending_accept_reset_streams(self.max_pending_accept_reset_streams)
            .max_local_error_reset_streams(Some(self.max_local_error_reset_streams));
        b
    }
}

/// What every HTTP/2 connection of one `demux-http` shares.
pub(crate) struct H2Shared {
    pub(crate) cfg: Http2Config,
    /// The per-request pipeline (the sub-pipeline plus error answers).
    pub(crate) per_request: SubPipeline,
    /// How long the preface and settings exchange may take, and how long a header block
    /// may stay open (HEADERS without END_HEADERS, until the CONTINUATION that ends it).
    pub(crate) handshake_timeout: Duration,
    /// A connection with no open stream is closed (GOAWAY) after this long.
    pub(crate) idle_timeout: Duration,
    pub(crate) access_log: Option<super::AccessLogFormat>,
}

/// Serves HTTP/2 over `input` (which starts with the client's preface): the returned
/// events are the bytes to send back.
pub(crate) fn serve(shared: Arc<H2Shared>, input: Events, cx: &Context) -> Events {
    let (tx, rx) = feed();
    let tx = Arc::new(tx);
    let blocks = Arc::new(BlockState::default());
    let input = Box::pin(WatchHeaderBlocks::new(input, blocks.clone()));
    let io = EventIo::new(input, tx.clone());
    let conn = run(shared, io, cx.clone(), tx, blocks);
    Box::pin(Inline::new(conn, rx))
}

/// Why an HTTP/2 connection ended early, as the cause of its stream error.
#[derive(Debug, thiserror::Error)]
pub enum H2ConnError {
    /// The preface and settings exchange did not finish within the header timeout.
    #[error("HTTP/2 handshake not completed in time")]
    HandshakeTimeout,
    /// A header block stayed open (no CONTINUATION with END_HEADERS) past the header
    /// timeout.
    #[error("HTTP/2 header block not completed in time")]
    HeaderTimeout,
    /// The h2 protocol engine failed (the peer broke the protocol, or the connection did).
    #[error("HTTP/2: {0}")]
    Protocol(#[from] h2::Error),
}

fn end_with(tx: &FeedSender, e: H2ConnError) {
    let kind = match &e {
        H2ConnError::HandshakeTimeout | H2ConnError::HeaderTimeout => ErrorKind::IdleTimeout,
        H2ConnError::Protocol(_) => ErrorKind::Protocol,
    };
    tx.push(Event::StreamEnd(Some(
        StreamError::new(kind, Side::Downstream).with_cause(e),
    )));
}

type StreamTask = Pin<Box<dyn Future<Output = ()> + Send>>;

async fn run(
    shared: Arc<H2Shared>,
    io: EventIo,
    cx: Context,
    tx: Arc<FeedSender>,
    blocks: Arc<BlockState>,
) {
    let handshake = shared.cfg.builder().handshake::<_, Bytes>(io);
    let mut conn = match tokio::time::timeout(shared.handshake_timeout, handshake).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return end_with(&tx, e.into()),
        Err(_) => return end_with(&tx, H2ConnError::HandshakeTimeout),
    };
    let mut streams: FuturesUnordered<StreamTask> = FuturesUnordered::new();
    let idle = tokio::time::sleep(shared.idle_timeout);
    tokio::pin!(idle);
    // The header block being timed (its number) and its deadline.
    let mut timed_block: Option<u64> = None;
    let header_deadline = tokio::time::sleep(shared.handshake_timeout);
    tokio::pin!(header_deadline);
    let mut accepting = true;
    let mut was_busy = false;
    // The listener drains: say goodbye (GOAWAY) and let the streams in flight finish.
    let mut drain = cx.get::<flowgate_pipeline::Drain>().map(|d| d.wait());
    let result = poll_fn(|task| {
        loop {
            let mut progressed = false;
            if accepting {
                match conn.poll_accept(task) {
                    Poll::Ready(Some(Ok((req, respond)))) => {
                        streams.push(Box::pin(handle_stream(
                            shared.clone(),
                            req,
                            respond,
                            cx.child(),
                        )));
                        progressed = true;
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e.into())),
                    Poll::Ready(None) => {
                        // No more requests; `poll_closed` drives the rest.
                        accepting = false;
                        continue;
                    }
                    Poll::Pending => {}
                }
            } else if let Poll::Ready(r) = conn.poll_closed(task) {
                // Everything sent: the connection is done (or failed).
                return Poll::Ready(r.map_err(H2ConnError::from));
            }
            if accepting
                && let Some(d) = drain.as_mut()
                && d.as_mut().poll(task).is_ready()
            {
                drain = None;
                conn.graceful_shutdown();
                progressed = true;
            }
            while let Poll::Ready(Some(())) = streams.poll_next_unpin(task) {}
            let busy = !streams.is_empty();
            if busy != was_busy || progressed {
                was_busy = busy;
                idle.as_mut()
                    .reset(tokio::time::Instant::now() + shared.idle_timeout);
            }
            if !busy && accepting && idle.as_mut().poll(task).is_ready() {
                // Idle: say goodbye, then let h2 finish the exchange.
                conn.graceful_shutdown();
                idle.as_mut()
                    .reset(tokio::time::Instant::now() + shared.idle_timeout);
                continue;
            }
            // After the reads above: a header block left open is timed from when it was
            // first seen open, whatever else arrives meanwhile.
            match blocks.open_block() {
                Some(n) => {
                    if timed_block != Some(n) {
                        timed_block = Some(n);
                        header_deadline
                            .as_mut()
                            .reset(tokio::time::Instant::now() + shared.handshake_timeout);
                    }
                    if header_deadline.as_mut().poll(task).is_ready() {
                        return Poll::Ready(Err(H2ConnError::HeaderTimeout));
                    }
                }
                None => timed_block = None,
            }
            if !progressed {
                return Poll::Pending;
            }
        }
    })
    .await;
    match result {
        Ok(()) => {
            tx.push(Event::END);
        }
        Err(H2ConnError::Protocol(e)) if e.is_io() => {
            // The client's side went away: nothing left to tell it.
            tx.push(Event::END);
        }
        Err(H2ConnError::HeaderTimeout) => {
            tracing::debug!(
                "HTTP/2 client left a header block open past the header timeout; closing"
            );
            end_with(&tx, H2ConnError::HeaderTimeout);
        }
        Err(e) => end_with(&tx, e),
    }
}

/// One request: feeds its body into a fresh request pipeline and sends the response back.
async fn handle_stream(
    shared: Arc<H2Shared>,
    req: http::Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    cx: Context,
) {
    let (parts, body) = req.into_parts();
    let has_body = !body.is_end_stream();
    // The shape HTTP/1 requests have in the pipeline: `Host`, one Cookie, framing fields.
    let Ok(parts) = request_from_h2(parts, has_body) else {
        tracing::debug!("HTTP/2 request with a malformed content-length: stream reset");
        respond.send_reset(Reason::PROTOCOL_ERROR);
        return;
    };
    let log = shared.access_log.map(|f| AccessLog::new(f, cx.conn().peer));
    if let Some(l) = &log {
        l.request(&parts);
    }
    let (tx, rx) = feed();
    tx.push(Event::MessageStart(Head::new(parts)));
    if !has_body {
        tx.push(Event::MessageEnd(Tail::none()));
        tx.push(Event::END);
    }
    let out = shared.per_request.attach(Box::pin(rx), &cx);
    let send = send_response(out, respond, log);
    if has_body {
        let recv = recv_body(body, tx);
        tokio::pin!(send, recv);
        // The request is over once its response is; a body still arriving is dropped (h2
        // resets the stream with NO_ERROR).
        match futures_util::future::select(send, recv).await {
            futures_util::future::Either::Left(((), _)) => {}
            futures_util::future::Either::Right(((), send)) => send.await,
        }
    } else {
        send.await;
    }
}

/// Events the request pipeline may have waiting before the body is read further.
const MAX_QUEUED_BODY: usize = 4;

/// Feeds a request body into the request pipeline, releasing flow-control capacity to the
/// client only as the pipeline takes the data.
async fn recv_body(mut body: RecvStream, tx: FeedSender) {
    loop {
        poll_fn(|c| tx.poll_drained(c, MAX_QUEUED_BODY)).await;
        if tx.is_receiver_gone() {
            return;
        }
        match poll_fn(|c| body.poll_data(c)).await {
            Some(Ok(b)) => {
                let _ = body.flow_control().release_capacity(b.len());
                tx.push(Event::Data(b));
            }
            Some(Err(e)) => {
                tx.push(Event::StreamEnd(Some(
                    StreamError::new(ErrorKind::Protocol, Side::Downstream)
                        .with_cause(H2ConnError::Protocol(e)),
                )));
                return;
            }
            None => break,
        }
    }
    match poll_fn(|c| body.poll_trailers(c)).await {
        Ok(t) => {
            tx.push(Event::MessageEnd(match t {
                Some(t) => Tail::new::<Trailers>(t),
                None => Tail::none(),
            }));
            tx.push(Event::END);
        }
        Err(e) => {
            tx.push(Event::StreamEnd(Some(
                StreamError::new(ErrorKind::Protocol, Side::Downstream)
                    .with_cause(H2ConnError::Protocol(e)),
            )));
        }
    }
}

/// Sends `data` on `stream` as the peer's flow-control window allows; the last frame ends
/// the stream when `end` is set.
async fn send_data(stream: &mut SendStream<Bytes>, mut data: Bytes, end: bool) -> Result<(), ()> {
    while !data.is_empty() {
        stream.reserve_capacity(data.len());
        let cap = match poll_fn(|c| stream.poll_capacity(c)).await {
            Some(Ok(n)) => n,
            _ => return Err(()),
        };
        if cap == 0 {
            continue;
        }
        let chunk = data.split_to(cap.min(data.len()));
        stream
            .send_data(chunk, end && data.is_empty())
            .map_err(|_| ())?;
    }
    Ok(())
}

/// Sends the request pipeline's response message back on the h2 stream.
async fn send_response(mut out: Events, mut respond: SendResponse<Bytes>, log: Option<AccessLog>) {
    // The head waits for the next event, so a bodiless response goes out as one HEADERS
    // frame with END_STREAM.
    let mut head: Option<http::Response<()>> = None;
    let mut stream: Option<SendStream<Bytes>> = None;
    // An event read ahead (to end the stream with the last DATA frame when the end is
    // already there).
    let mut peeked: Option<Option<Event>> = None;
    loop {
        let next = match peeked.take() {
            Some(ev) => ev,
            None => out.next().await,
        };
        let Some(ev) = next else {
            break;
        };
        match ev {
            Event::MessageStart(h) => {
                let Some(parts) = h.get::<response::Parts>() else {
                    respond.send_reset(Reason::INTERNAL_ERROR);
                    return;
                };
                if stream.is_some() || head.is_some() {
                    // A second final response is an error.
                    if !parts.status.is_informational() {
                        respond.send_reset(Reason::INTERNAL_ERROR);
                        return;
                    }
                    continue;
                }
                if parts.status.is_informational() {
                    // An interim response (103 Early Hints, 100 Continue) goes out at once
                    // as its own HEADERS frame. 101 has no place in HTTP/2 (RFC 9113 §8.6).
                    if is_interim(parts.status)
                        && respond.send_informational(response_to_h2(parts)).is_err()
                    {
                        return;
                    }
                    continue;
                }
                if let Some(l) = &log {
                    l.status(parts.status.as_u16());
                }
                head = Some(response_to_h2(parts));
            }
            Event::Data(b) => {
                if let Some(r) = head.take() {
                    match respond.send_response(r, false) {
                        Ok(s) => stream = Some(s),
                        Err(_) => return,
                    }
                }
                if b.is_empty() {
                    continue;
                }
                if let Some(l) = &log {
                    l.bytes(b.len());
                }
                let Some(s) = stream.as_mut() else {
                    continue;
                };
                let ahead = out.next().now_or_never();
                let ends = matches!(&ahead, Some(Some(Event::MessageEnd(t)))
                    if t.get::<Trailers>().is_none_or(HeaderMap::is_empty));
                if send_data(s, b, ends).await.is_err() {
                    return;
                }
                if ends {
                    finish_log(&log);
                    return;
                }
                peeked = ahead;
            }
            Event::MessageEnd(t) if ends_interim(&t) => {}
            Event::MessageEnd(t) => {
                let trailers = t.get::<Trailers>().filter(|t| !t.is_empty()).cloned();
                if let Some(r) = head.take() {
                    let end = trailers.is_none();
                    match respond.send_response(r, end) {
                        Ok(s) => stream = Some(s),
                        Err(_) => return,
                    }
                    if end {
                        finish_log(&log);
                        return;
                    }
                }
                if let Some(s) = stream.as_mut() {
                    let _ = match trailers {
                        Some(t) => s.send_trailers(t),
                        None => s.send_data(Bytes::new(), true),
                    };
                }
                finish_log(&log);
                return;
            }
            Event::StreamEnd(e) => {
                let reason = match e.as_ref().map(StreamError::side) {
                    Some(Side::Downstream) => Reason::CANCEL,
                    _ => Reason::INTERNAL_ERROR,
                };
                match stream.as_mut() {
                    Some(s) => s.send_reset(reason),
                    None => respond.send_reset(reason),
                }
                return;
            }
        }
    }
}

fn finish_log(log: &Option<AccessLog>) {
    if let Some(l) = log {
        l.done();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::{DemuxHttp, Respond};
    use flowgate_http::h1::Limits;
    use flowgate_pipeline::{Filter, Pipeline, TlsInfo};
    use http::StatusCode;
    use http::header::{CONTENT_LENGTH, HOST, HeaderValue};
    use http::request;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Answers each request with 200 and the request's own body (and trailers).
    fn echo() -> Pipeline {
        Pipeline::builder("echo")
            .transform("echo", || {
                |ev: Event, out: &mut dyn FnMut(Event)| match ev {
                    Event::MessageStart(h) => {
                        let (mut parts, ()) = http::Response::new(()).into_parts();
                        let req = h.get::<request::Parts>().unwrap();
                        parts
                            .headers
                            .insert("x-path", HeaderValue::from_str(req.uri.path()).unwrap());
                        parts.headers.insert(
                            "x-host",
                            req.headers
                                .get(HOST)
                                .cloned()
                                .unwrap_or(HeaderValue::from_static("")),
                        );
                        out(Event::MessageStart(Head::new(parts)));
                    }
                    other => out(other),
                }
            })
            .build()
            .unwrap()
    }

    fn hello() -> Pipeline {
        Pipeline::builder("hello")
            .filter(Respond::new(
                StatusCode::OK,
                HeaderMap::new(),
                Bytes::from_static(b"hello\n"),
            ))
            .build()
            .unwrap()
    }

    /// Runs `filter` over an in-memory duplex pipe; returns the client's end.
    fn attach(filter: Arc<DemuxHttp>, cx: Context) -> tokio::io::DuplexStream {
        attach_watched(filter, cx).0
    }

    /// [`attach`], and the task that ends when the filter's output ends.
    fn attach_watched(
        filter: Arc<DemuxHttp>,
        cx: Context,
    ) -> (tokio::io::DuplexStream, tokio::task::JoinHandle<()>) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (mut rd, mut wr) = tokio::io::split(server);
        let (tx, rx) = feed();
        let mut out = filter.attach(Box::pin(rx), &cx);
        tokio::spawn(async move {
            let mut buf = vec![0; 16 * 1024];
            loop {
                let n = rd.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    tx.push(Event::END);
                    return;
                }
                tx.push(Event::Data(Bytes::copy_from_slice(&buf[..n])));
            }
        });
        let done = tokio::spawn(async move {
            while let Some(ev) = out.next().await {
                match ev {
                    Event::Data(b) if wr.write_all(&b).await.is_err() => return,
                    Event::StreamEnd(_) => {
                        let _ = wr.shutdown().await;
                        return;
                    }
                    _ => {}
                }
            }
        });
        (client, done)
    }

    async fn h2_client(io: tokio::io::DuplexStream) -> h2::client::SendRequest<Bytes> {
        let (send, conn) = h2::client::handshake(io).await.unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        send
    }

    async fn body_of(
        resp: http::Response<RecvStream>,
    ) -> (http::response::Parts, Vec<u8>, Option<HeaderMap>) {
        let (parts, mut body) = resp.into_parts();
        let mut v = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
            v.extend_from_slice(&chunk);
        }
        let t = body.trailers().await.unwrap();
        (parts, v, t)
    }

    fn get(path: &str) -> http::Request<()> {
        http::Request::get(format!("http://example.test{path}"))
            .body(())
            .unwrap()
    }

    #[tokio::test]
    async fn h2c_prior_knowledge_serves_concurrent_streams() {
        let f = Arc::new(DemuxHttp::new(hello(), Limits::default()));
        let (io, done) = attach_watched(f, Context::new());
        let (mut send, conn) = h2::client::handshake(io).await.unwrap();
        let conn = tokio::spawn(conn);
        let mut pending = Vec::new();
        for i in 0..20 {
            send = send.ready().await.unwrap();
            let (resp, _) = send.send_request(get(&format!("/{i}")), true).unwrap();
            pending.push(resp);
        }
        for resp in pending {
            let (parts, body, _) = body_of(resp.await.unwrap()).await;
            assert_eq!(parts.status, 200);
            assert_eq!(parts.version, http::Version::HTTP_2);
            assert_eq!(body, b"hello\n");
        }
        // The client goes away: the server side ends too.
        drop(send);
        conn.abort();
        tokio::time::timeout(Duration::from_secs(5), done)
            .await
            .expect("the connection did not end after the client left")
            .unwrap();
    }

    #[tokio::test]
    async fn large_bodies_both_ways_respect_flow_control() {
        // 3 MiB, beyond both the default stream window (1 MiB) and the client's (64 KiB).
        let f = Arc::new(DemuxHttp::new(echo(), Limits::default()));
        let mut send = h2_client(attach(f, Context::new()))
            .await
            .ready()
            .await
            .unwrap();
        let payload: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
        let req = http::Request::post("http://example.test/up")
            .body(())
            .unwrap();
        let (resp, mut stream) = send.send_request(req, false).unwrap();
        let upload = {
            let payload = Bytes::from(payload.clone());
            async move {
                let mut data = payload;
                while !data.is_empty() {
                    stream.reserve_capacity(data.len().min(64 * 1024));
                    let n = poll_fn(|c| stream.poll_capacity(c)).await.unwrap().unwrap();
                    stream
                        .send_data(data.split_to(n.min(data.len())), false)
                        .unwrap();
                }
                let mut t = HeaderMap::new();
                t.insert("x-sum", HeaderValue::from_static("42"));
                stream.send_trailers(t).unwrap();
            }
        };
        // Read while uploading: the echo cannot run ahead of the client's window.
        let ((), (parts, body, trailers)) =
            tokio::join!(upload, async { body_of(resp.await.unwrap()).await });
        assert_eq!(parts.status, 200);
        assert_eq!(parts.headers["x-path"], "/up");
        assert_eq!(parts.headers["x-host"], "example.test");
        assert_eq!(body.len(), payload.len());
        assert!(body == payload);
        assert_eq!(trailers.unwrap()["x-sum"], "42");
    }

    #[tokio::test]
    async fn alpn_h2_picks_http2_and_plain_bytes_stay_http1() {
        // ALPN h2: HTTP/2 even though the h2 client's preface would be enough anyway; the
        // check is that the same filter still speaks HTTP/1 to an HTTP/1 client.
        let cx = Context::new();
        cx.update_conn(|c| {
            c.tls = Some(Arc::new(TlsInfo {
                alpn: Some(b"h2".to_vec()),
                ..TlsInfo::default()
            }));
        });
        let f = Arc::new(DemuxHttp::new(hello(), Limits::default()));
        let mut send = h2_client(attach(f.clone(), cx))
            .await
            .ready()
            .await
            .unwrap();
        let (resp, _) = send.send_request(get("/"), true).unwrap();
        assert_eq!(resp.await.unwrap().status(), 200);

        let mut io = attach(f, Context::new());
        io.write_all(b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut text = String::new();
        io.read_to_string(&mut text).await.unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.ends_with("hello\n"), "{text}");
    }

    #[tokio::test]
    async fn http2_disabled_treats_the_preface_as_http1() {
        let f = DemuxHttp::new(hello(), Limits::default())
            .http2(Http2Config {
                enabled: false,
                ..Http2Config::default()
            })
            .unwrap();
        let mut io = attach(Arc::new(f), Context::new());
        io.write_all(PREFACE).await.unwrap();
        let mut text = String::new();
        io.read_to_string(&mut text).await.unwrap();
        // `PRI * HTTP/2.0` is refused by the HTTP/1 decoder (505 version not supported).
        assert!(text.starts_with("HTTP/1.1 505"), "{text}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_gets_goaway_after_the_keepalive_timeout() {
        let f = DemuxHttp::new(hello(), Limits::default())
            .timeouts(Duration::from_secs(10), Duration::from_secs(30));
        let (io, done) = attach_watched(Arc::new(f), Context::new());
        let (send, conn) = h2::client::handshake(io).await.unwrap();
        let conn = tokio::spawn(conn);
        let mut send = send.ready().await.unwrap();
        let (resp, _) = send.send_request(get("/"), true).unwrap();
        assert_eq!(resp.await.unwrap().status(), 200);
        let t = tokio::time::Instant::now();
        // The server says GOAWAY and closes; the client's connection future ends with it.
        tokio::time::timeout(Duration::from_secs(120), done)
            .await
            .expect("the idle connection was not closed")
            .unwrap();
        assert!(t.elapsed() >= Duration::from_secs(30), "{:?}", t.elapsed());
        let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
    }

    #[tokio::test]
    async fn a_draining_listener_closes_its_idle_connections_of_both_versions() {
        let f = Arc::new(DemuxHttp::new(hello(), Limits::default()));
        // HTTP/2: GOAWAY once the request in flight is answered, then the end.
        let drain = flowgate_pipeline::Drain::default();
        let cx = Context::new();
        cx.insert(drain.clone());
        let (io, done) = attach_watched(f.clone(), cx);
        let (send, conn) = h2::client::handshake(io).await.unwrap();
        let conn = tokio::spawn(conn);
        let mut send = send.ready().await.unwrap();
        let (resp, _) = send.send_request(get("/"), true).unwrap();
        assert_eq!(resp.await.unwrap().status(), 200);
        drain.start();
        tokio::time::timeout(Duration::from_secs(5), done)
            .await
            .expect("the drained HTTP/2 connection was not closed")
            .unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;

        // HTTP/1.1 keep-alive: the next request is the last (its response says so), and
        // an idle connection closes after a moment.
        let drain = flowgate_pipeline::Drain::default();
        let one = |drain: &flowgate_pipeline::Drain| {
            let cx = Context::new();
            cx.insert(drain.clone());
            attach(f.clone(), cx)
        };
        async fn response(io: &mut (impl tokio::io::AsyncRead + Unpin)) -> String {
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !got.ends_with(b"hello\n") {
                let n = io.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed before the response: {got:?}");
                got.extend_from_slice(&buf[..n]);
            }
            String::from_utf8(got).unwrap()
        }
        let (mut busy, mut idle) = (one(&drain), one(&drain));
        for io in [&mut busy, &mut idle] {
            io.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
                .await
                .unwrap();
            assert!(!response(io).await.contains("connection: close"));
        }
        drain.start();
        busy.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .unwrap();
        assert!(response(&mut busy).await.contains("connection: close\r\n"));
        for io in [&mut busy, &mut idle] {
            let mut rest = Vec::new();
            tokio::time::timeout(Duration::from_secs(5), io.read_to_end(&mut rest))
                .await
                .expect("the drained HTTP/1.1 connection was not closed")
                .unwrap();
            assert!(rest.is_empty(), "{rest:?}");
        }
    }

    #[tokio::test]
    async fn limits_are_advertised_in_settings() {
        let f = DemuxHttp::new(hello(), Limits::default())
            .http2(Http2Config {
                max_concurrent_streams: 2,
                ..Http2Config::default()
            })
            .unwrap();
        let io = attach(Arc::new(f), Context::new());
        let (send, conn) = h2::client::handshake(io).await.unwrap();
        tokio::pin!(conn);
        let round_trip = async {
            let mut send = send.ready().await.unwrap();
            let (resp, _) = send.send_request(get("/"), true).unwrap();
            resp.await.unwrap().status()
        };
        tokio::select! {
            r = &mut conn => panic!("connection ended: {r:?}"),
            status = round_trip => assert_eq!(status, 200),
        }
        assert_eq!(conn.max_concurrent_send_streams(), 2);
    }

    #[tokio::test]
    async fn oversized_header_lists_are_refused() {
        let f = DemuxHttp::new(hello(), Limits::default())
            .http2(Http2Config {
                max_header_list_size: 4096,
                ..Http2Config::default()
            })
            .unwrap();
        let mut send = h2_client(attach(Arc::new(f), Context::new()))
            .await
            .ready()
            .await
            .unwrap();
        let mut req = get("/");
        req.headers_mut()
            .insert("x-big", HeaderValue::from_str(&"a".repeat(8000)).unwrap());
        let refused = match send.send_request(req, true) {
            Err(_) => true,
            Ok((resp, _)) => match resp.await {
                Err(_) => true,
                Ok(r) => r.status() == 431,
            },
        };
        assert!(refused);
        // The connection still serves a normal request.
        let mut send = send.ready().await.unwrap();
        let (resp, _) = send.send_request(get("/"), true).unwrap();
        assert_eq!(resp.await.unwrap().status(), 200);
    }

    #[test]
    fn config_is_checked() {
        assert!(Http2Config::default().validate().is_ok());
        let c = Http2Config {
            max_frame_size: 1000,
            ..Http2Config::default()
        };
        assert!(c.validate().is_err());
    }

    /// Answers each request with a 103 (with a Link field) and then 200 "ok"; a request
    /// for `/fail` gets the 103 and then an upstream failure.
    fn hints() -> Pipeline {
        Pipeline::builder("hints")
            .transform("hints", || {
                let mut fail = false;
                move |ev: Event, out: &mut dyn FnMut(Event)| match ev {
                    Event::MessageStart(h) => {
                        fail = h.get::<request::Parts>().unwrap().uri.path() == "/fail";
                        let (mut early, ()) = http::Response::new(()).into_parts();
                        early.status = StatusCode::EARLY_HINTS;
                        early.headers.insert(
                            http::header::LINK,
                            HeaderValue::from_static("</a.css>; rel=preload"),
                        );
                        out(Event::MessageStart(Head::new(early)));
                        out(crate::codec::interim_end());
                        if fail {
                            out(Event::StreamEnd(Some(StreamError::new(
                                ErrorKind::ConnectionReset,
                                Side::Upstream,
                            ))));
                            return;
                        }
                        let (mut parts, ()) = http::Response::new(()).into_parts();
                        parts
                            .headers
                            .insert(CONTENT_LENGTH, HeaderValue::from_static("2"));
                        out(Event::MessageStart(Head::new(parts)));
                    }
                    Event::MessageEnd(t) if !fail => {
                        out(Event::Data(Bytes::from_static(b"ok")));
                        out(Event::MessageEnd(t));
                    }
                    Event::StreamEnd(e) if !fail => out(Event::StreamEnd(e)),
                    _ => {}
                }
            })
            .build()
            .unwrap()
    }

    /// Reads from `io` until `want` has been seen (or 5 s pass); returns all it read.
    async fn read_until(io: &mut tokio::io::DuplexStream, want: &str) -> String {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !String::from_utf8_lossy(&all).contains(want) {
            match tokio::time::timeout_at(deadline, io.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => all.extend_from_slice(&buf[..n]),
                _ => break,
            }
        }
        String::from_utf8_lossy(&all).into_owned()
    }

    #[tokio::test]
    async fn http1_clients_get_interim_responses_and_http10_ones_do_not() {
        let f = Arc::new(DemuxHttp::new(hints(), Limits::default()));
        let mut io = attach(f.clone(), Context::new());
        io.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let got = read_until(&mut io, "\r\n\r\nok").await;
        assert!(
            got.starts_with(
                "HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\n"
            ),
            "{got}"
        );
        // A failure after the 103 is still answered: a final 502 on the same connection.
        io.write_all(b"GET /fail HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let got = read_until(&mut io, "\r\n\r\nok").await;
        assert!(
            got.starts_with("HTTP/1.1 103 Early Hints\r\n")
                && got.contains("\r\n\r\nHTTP/1.1 502 "),
            "{got}"
        );
        assert!(
            got.contains("\r\n\r\nHTTP/1.1 103 Early Hints\r\n"),
            "{got}"
        );
        // HTTP/1.0: only the final response (RFC 9110 §15.2).
        let mut io = attach(f, Context::new());
        io.write_all(b"GET / HTTP/1.0\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let got = read_until(&mut io, "\r\n\r\nok").await;
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
        assert!(!got.contains("103"), "{got}");
    }

    #[tokio::test]
    async fn http2_clients_get_interim_responses_as_headers_frames() {
        let f = Arc::new(DemuxHttp::new(hints(), Limits::default()));
        let mut send = h2_client(attach(f, Context::new()))
            .await
            .ready()
            .await
            .unwrap();
        for (path, last) in [("/", 200), ("/fail", 502)] {
            let (mut resp, _) = send.send_request(get(path), true).unwrap();
            let hint = poll_fn(|c| resp.poll_informational(c))
                .await
                .expect("an interim response")
                .unwrap();
            assert_eq!(hint.status(), StatusCode::EARLY_HINTS);
            assert_eq!(hint.headers()["link"], "</a.css>; rel=preload");
            let (parts, body, _) = body_of(resp.await.unwrap()).await;
            assert_eq!(parts.status, last);
            if last == 200 {
                assert_eq!(body, b"ok");
            }
            send = send.ready().await.unwrap();
        }
    }
}
