//! Socket-free tests of the HTTP/2 client: `mux-http` over an in-memory pipe to a real
//! `h2` server.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use flowgate_pipeline::{
    Context, ErrorKind, Event, Events, Head, Side, StreamError, SubPipeline, Tail,
};
use futures_util::StreamExt;
use h2::Reason;
use http::{HeaderMap, HeaderValue, Version};
use tokio::time::Instant;

use crate::MuxHttp;
use crate::codec::{MAX_INTERIM, TooManyInterim, Trailers};
use flowgate_http::h1::Limits;
use flowgate_pipeline::joint::MuxOptions;
use flowgate_pipeline::{Description, Filter, Pipeline, events_from};
use futures_core::Stream;
use h2::RecvStream;
use h2::server::SendResponse;
use http::response;
use std::sync::atomic::AtomicUsize;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;

/// How the test server behaves.
#[derive(Clone, Copy, Default)]
struct ServerOpts {
    /// SETTINGS_MAX_CONCURRENT_STREAMS.
    max_streams: Option<u32>,
    /// Graceful GOAWAY after this many requests on a connection.
    goaway_after: Option<usize>,
}

/// An upstream "connection" filter: each instance is a new in-memory pipe to the server.
struct Pipe2Server {
    conns: mpsc::UnboundedSender<DuplexStream>,
}

impl Filter for Pipe2Server {
    fn describe(&self) -> Description {
        Description::filter("pipe-to-server")
    }

    fn attach(&self, mut input: Events, _cx: &Context) -> Events {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let _ = self.conns.send(theirs);
        let (rd, mut wr) = tokio::io::split(ours);
        tokio::spawn(async move {
            while let Some(ev) = input.next().await {
                match ev {
                    Event::Data(b) if wr.write_all(&b).await.is_err() => return,
                    Event::StreamEnd(_) => break,
                    _ => {}
                }
            }
            let _ = wr.shutdown().await;
        });
        Box::pin(reader(rd))
    }
}

fn reader(rd: tokio::io::ReadHalf<DuplexStream>) -> impl Stream<Item = Event> + Send {
    futures_util::stream::unfold(Some(rd), |state| async move {
        let mut rd = state?;
        let mut buf = vec![0; 16 * 1024];
        match rd.read(&mut buf).await {
            Ok(0) | Err(_) => Some((Event::END, None)),
            Ok(n) => Some((Event::Data(Bytes::copy_from_slice(&buf[..n])), Some(rd))),
        }
    })
}

/// A real h2 server on the other end of every pipe; counts connections.
struct Server {
    conns: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
}

fn server(opts: ServerOpts) -> (Server, Pipe2Server) {
    let (tx, mut rx) = mpsc::unbounded_channel::<DuplexStream>();
    let conns = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(AtomicUsize::new(0));
    let (c, o) = (conns.clone(), open.clone());
    tokio::spawn(async move {
        while let Some(io) = rx.recv().await {
            let id = c.fetch_add(1, Ordering::SeqCst);
            o.fetch_add(1, Ordering::SeqCst);
            let o = o.clone();
            tokio::spawn(async move {
                serve(io, id, opts).await;
                o.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (Server { conns, open }, Pipe2Server { conns: tx })
}

async fn serve(io: DuplexStream, id: usize, opts: ServerOpts) {
    let mut b = h2::server::Builder::new();
    if let Some(n) = opts.max_streams {
        b.max_concurrent_streams(n);
    }
    let Ok(mut conn) = b.handshake::<_, Bytes>(io).await else {
        return;
    };
    let mut accepted = 0;
    while let Some(r) = conn.accept().await {
        let Ok((req, respond)) = r else { return };
        accepted += 1;
        tokio::spawn(handle(req, respond, id));
        if opts.goaway_after == Some(accepted) {
            conn.graceful_shutdown();
        }
    }
}

async fn handle(req: http::Request<RecvStream>, mut respond: SendResponse<Bytes>, conn: usize) {
    let (parts, mut body) = req.into_parts();
    let path = parts.uri.path().to_string();
    // `x-hints: N` asks for N interim responses first (`x-hint-status`, default 103).
    let field = |n: &str| {
        parts
            .headers
            .get(n)
            .and_then(|v| v.to_str().ok()?.parse().ok())
    };
    if let Some(n) = field("x-hints") {
        let status: u16 = field("x-hint-status").unwrap_or(103);
        for _ in 0..n {
            let hint = http::Response::builder()
                .status(status)
                .header("link", "</a.css>; rel=preload")
                .body(())
                .unwrap();
            if respond.send_informational(hint).is_err() {
                return;
            }
        }
    }
    let mut resp = http::Response::builder()
        .status(200)
        .header("x-conn", conn.to_string())
        .header(
            "x-authority",
            parts.uri.authority().map_or("", |a| a.as_str()),
        )
        .header("x-scheme", parts.uri.scheme_str().unwrap_or(""));
    match path.as_str() {
        "/reset" => {
            respond.send_reset(Reason::INTERNAL_ERROR);
        }
        "/refuse" => {
            respond.send_reset(Reason::REFUSED_STREAM);
        }
        "/early" => {
            // A complete answer without reading the body; dropping the body asks the
            // client to stop sending it (RST_STREAM NO_ERROR).
            let mut send = respond
                .send_response(resp.body(()).unwrap(), false)
                .unwrap();
            let _ = send.send_data(Bytes::from_static(b"early"), true);
            drop(body);
        }
        "/big-headers" => {
            resp = resp.header("x-big", "a".repeat(100_000));
            let _ = respond.send_response(resp.body(()).unwrap(), true);
        }
        "/echo" => {
            let for_field = |n: &str| parts.headers.get(n).cloned();
            if let Some(v) = for_field("x-in") {
                resp = resp.header("x-in", v);
            }
            if parts.headers.contains_key("connection") || parts.headers.contains_key("host") {
                resp = resp.header("x-bad", "1");
            }
            let mut send = respond
                .send_response(resp.body(()).unwrap(), false)
                .unwrap();
            while let Some(chunk) = body.data().await {
                let chunk = chunk.unwrap();
                let _ = body.flow_control().release_capacity(chunk.len());
                let mut data = chunk;
                while !data.is_empty() {
                    send.reserve_capacity(data.len());
                    let Some(Ok(n)) = poll_fn(|c| send.poll_capacity(c)).await else {
                        return;
                    };
                    let _ = send.send_data(data.split_to(n.min(data.len())), false);
                }
            }
            match body.trailers().await {
                Ok(Some(t)) => {
                    let _ = send.send_trailers(t);
                }
                _ => {
                    let _ = send.send_data(Bytes::new(), true);
                }
            }
        }
        _ => {
            if path == "/slow" {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let mut send = respond
                .send_response(resp.body(()).unwrap(), false)
                .unwrap();
            let _ = send.send_data(Bytes::from(path), true);
        }
    }
}

fn mux(up: Pipe2Server, cfg: Http2UpstreamConfig, max_idle: Duration) -> Arc<MuxHttp> {
    let conn = Pipeline::builder("up").filter(up).build().unwrap();
    let opts = MuxOptions {
        max_idle,
        ..MuxOptions::default()
    };
    Arc::new(
        MuxHttp::new(SubPipeline::from(conn), Limits::default(), opts)
            .unwrap()
            .http2(cfg)
            .unwrap(),
    )
}

type Reply = Result<(response::Parts, Vec<u8>, Option<HeaderMap>), StreamError>;

async fn call(
    f: &MuxHttp,
    req: http::request::Builder,
    body: &[Bytes],
    trailers: Option<HeaderMap>,
) -> Reply {
    let (parts, ()) = req.body(()).unwrap().into_parts();
    let mut evs = vec![Event::MessageStart(Head::new(parts))];
    evs.extend(body.iter().cloned().map(Event::Data));
    evs.push(Event::MessageEnd(
        trailers.map_or_else(Tail::none, Tail::new::<Trailers>),
    ));
    evs.push(Event::END);
    let mut out = f.attach(events_from(evs), &Context::new());
    let mut head = None;
    let mut data = Vec::new();
    let mut tail = None;
    while let Some(ev) = out.next().await {
        match ev {
            Event::MessageStart(h) => head = h.get::<response::Parts>().cloned(),
            Event::Data(b) => data.extend_from_slice(&b),
            Event::MessageEnd(t) => tail = t.get::<Trailers>().cloned(),
            Event::StreamEnd(Some(e)) => return Err(e),
            Event::StreamEnd(None) => break,
        }
    }
    Ok((head.expect("no response head"), data, tail))
}

fn get(path: &str) -> http::request::Builder {
    http::Request::get(path).header("host", "up.test")
}

#[tokio::test]
async fn concurrent_requests_share_a_connection_up_to_the_cap() {
    let (srv, up) = server(ServerOpts::default());
    let f = mux(up, Http2UpstreamConfig::default(), Duration::from_secs(60));
    let replies =
        futures_util::future::join_all((0..50).map(|_| call(&f, get("/slow"), &[], None))).await;
    for r in replies {
        let (parts, body, _) = r.unwrap();
        assert_eq!(parts.status, 200);
        assert_eq!(body, b"/slow");
    }
    assert_eq!(srv.conns.load(Ordering::SeqCst), 1);
    assert_eq!(f.connection_count(), 1);

    // A cap of 10 streams: 50 slow requests at once need 5 connections.
    let (srv, up) = server(ServerOpts::default());
    let cfg = Http2UpstreamConfig {
        max_concurrent_streams: 10,
        ..Http2UpstreamConfig::default()
    };
    let f = mux(up, cfg, Duration::from_secs(60));
    let replies =
        futures_util::future::join_all((0..50).map(|_| call(&f, get("/slow"), &[], None))).await;
    assert!(
        replies
            .iter()
            .all(|r| r.as_ref().is_ok_and(|(p, _, _)| p.status == 200))
    );
    assert_eq!(srv.conns.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn at_max_connections_requests_wait_for_a_stream_to_end() {
    // 2 connections of 5 streams: 30 slow requests at once are served ten at a time over
    // the same two connections, none refused.
    let (srv, up) = server(ServerOpts::default());
    let cfg = Http2UpstreamConfig {
        max_concurrent_streams: 5,
        max_connections: 2,
        ..Http2UpstreamConfig::default()
    };
    let f = mux(up, cfg, Duration::from_secs(60));
    let replies =
        futures_util::future::join_all((0..30).map(|_| call(&f, get("/slow"), &[], None))).await;
    assert!(replies.iter().all(|r| {
        r.as_ref()
            .is_ok_and(|(p, b, _)| p.status == 200 && b == b"/slow")
    }));
    assert_eq!(srv.conns.load(Ordering::SeqCst), 2);
    assert_eq!(f.connection_count(), 2);
}

#[tokio::test]
async fn the_servers_stream_limit_is_respected() {
    let (srv, up) = server(ServerOpts {
        max_streams: Some(5),
        ..ServerOpts::default()
    });
    let f = mux(up, Http2UpstreamConfig::default(), Duration::from_secs(60));
    // The first exchange brings the server's SETTINGS.
    call(&f, get("/"), &[], None).await.unwrap();
    let replies =
        futures_util::future::join_all((0..20).map(|_| call(&f, get("/slow"), &[], None))).await;
    assert!(
        replies
            .iter()
            .all(|r| r.as_ref().is_ok_and(|(p, _, _)| p.status == 200))
    );
    assert_eq!(srv.conns.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn bodies_and_trailers_pass_both_ways_under_flow_control() {
    let (_srv, up) = server(ServerOpts::default());
    // Small windows so that both directions must wait for WINDOW_UPDATEs.
    let cfg = Http2UpstreamConfig {
        initial_window_size: 65_535,
        initial_connection_window_size: 65_535,
        ..Http2UpstreamConfig::default()
    };
    let f = mux(up, cfg, Duration::from_secs(60));
    let payload: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
    let chunks: Vec<Bytes> = payload.chunks(50_000).map(Bytes::copy_from_slice).collect();
    let mut t = HeaderMap::new();
    t.insert("x-sum", HeaderValue::from_static("42"));
    let req = http::Request::post("/echo")
        .header("host", "up.test")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "1")
        .header("transfer-encoding", "chunked")
        .header("x-in", "yes");
    let (parts, body, trailers) = call(&f, req, &chunks, Some(t)).await.unwrap();
    assert_eq!(parts.status, 200);
    assert_eq!(parts.headers["x-in"], "yes");
    assert!(!parts.headers.contains_key("x-bad"));
    assert_eq!(parts.headers["x-authority"], "up.test");
    assert_eq!(parts.headers["x-scheme"], "http");
    assert_eq!(body.len(), payload.len());
    assert!(body == payload);
    assert_eq!(trailers.unwrap()["x-sum"], "42");
}

#[tokio::test]
async fn an_early_complete_response_ends_the_upload_without_error() {
    let (_srv, up) = server(ServerOpts::default());
    let f = mux(up, Http2UpstreamConfig::default(), Duration::from_secs(60));
    let chunks: Vec<Bytes> = (0..64).map(|_| Bytes::from(vec![7u8; 64 * 1024])).collect();
    for _ in 0..20 {
        let req = http::Request::post("/early").header("host", "up.test");
        let (parts, body, _) = call(&f, req, &chunks, None).await.unwrap();
        assert_eq!(parts.status, 200);
        assert_eq!(body, b"early");
    }
}

#[tokio::test]
async fn a_reset_stream_fails_only_its_own_request() {
    let (srv, up) = server(ServerOpts::default());
    let f = mux(up, Http2UpstreamConfig::default(), Duration::from_secs(60));
    let (reset, slow) = tokio::join!(
        call(&f, get("/reset"), &[], None),
        futures_util::future::join_all((0..3).map(|_| call(&f, get("/slow"), &[], None)))
    );
    let e = reset.unwrap_err();
    assert_eq!(e.side(), Side::Upstream);
    assert!(!e.is_retry_safe());
    assert!(
        slow.iter()
            .all(|r| r.as_ref().is_ok_and(|(p, _, _)| p.status == 200))
    );
    assert_eq!(srv.conns.load(Ordering::SeqCst), 1);

    // REFUSED_STREAM means "not processed": safe to retry.
    let e = call(&f, get("/refuse"), &[], None).await.unwrap_err();
    assert!(e.is_retry_safe(), "{e:?}");
    assert_eq!(srv.conns.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn goaway_drains_the_connection_and_new_requests_open_another() {
    let (srv, up) = server(ServerOpts {
        goaway_after: Some(2),
        ..ServerOpts::default()
    });
    let f = mux(up, Http2UpstreamConfig::default(), Duration::from_secs(60));
    // Two in flight when the GOAWAY comes: both finish.
    let (a, b) = tokio::join!(call(&f, get("/slow"), &[], None), async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        call(&f, get("/slow"), &[], None).await
    });
    assert_eq!(a.unwrap().0.status, 200);
    assert_eq!(b.unwrap().0.status, 200);
    // (The second connection says GOAWAY after two requests too.)
    for _ in 0..2 {
        let (parts, _, _) = call(&f, get("/"), &[], None).await.unwrap();
        assert_eq!(parts.status, 200);
    }
    assert_eq!(srv.conns.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn oversized_response_headers_fail_the_request() {
    let (_srv, up) = server(ServerOpts::default());
    let cfg = Http2UpstreamConfig {
        max_header_list_size: 16 * 1024,
        ..Http2UpstreamConfig::default()
    };
    let f = mux(up, cfg, Duration::from_secs(60));
    let e = call(&f, get("/big-headers"), &[], None).await.unwrap_err();
    assert_eq!(e.side(), Side::Upstream);
    // The connection is still good for others.
    assert_eq!(call(&f, get("/"), &[], None).await.unwrap().0.status, 200);
}

#[tokio::test(start_paused = true)]
async fn idle_connections_close_after_max_idle() {
    let (srv, up) = server(ServerOpts::default());
    let f = mux(up, Http2UpstreamConfig::default(), Duration::from_secs(5));
    call(&f, get("/"), &[], None).await.unwrap();
    assert_eq!(f.connection_count(), 1);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(f.connection_count(), 1);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(f.connection_count(), 0);
    for _ in 0..100 {
        if srv.open.load(Ordering::SeqCst) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        srv.open.load(Ordering::SeqCst),
        0,
        "the server side was not closed"
    );
    // A new request opens a new connection.
    call(&f, get("/"), &[], None).await.unwrap();
    assert_eq!(srv.conns.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_failed_connect_is_reported_as_such() {
    struct Refuse;
    impl Filter for Refuse {
        fn describe(&self) -> Description {
            Description::filter("refuse")
        }
        fn attach(&self, _input: Events, _cx: &Context) -> Events {
            flowgate_pipeline::error_stream(
                StreamError::new(ErrorKind::ConnectFailed, Side::Upstream).retry_safe(true),
            )
        }
    }
    let conn = Pipeline::builder("up").filter(Refuse).build().unwrap();
    let f = MuxHttp::new(
        SubPipeline::from(conn),
        Limits::default(),
        MuxOptions::default(),
    )
    .unwrap()
    .http2(Http2UpstreamConfig::default())
    .unwrap();
    let e = call(&f, get("/"), &[], None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectFailed, "{e:?}");
    assert!(e.is_retry_safe());
    assert_eq!(f.connection_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_unanswered_ping_closes_the_connection() {
    // A "server" that reads everything and never answers.
    struct Silent;
    impl Filter for Silent {
        fn describe(&self) -> Description {
            Description::filter("silent")
        }
        fn attach(&self, input: Events, _cx: &Context) -> Events {
            Box::pin(input.filter_map(|ev| async move { ev.is_end().then_some(ev) }))
        }
    }
    let conn = Pipeline::builder("up").filter(Silent).build().unwrap();
    let f = MuxHttp::new(
        SubPipeline::from(conn),
        Limits::default(),
        MuxOptions::default(),
    )
    .unwrap()
    .http2(Http2UpstreamConfig {
        keepalive_interval: Some(Duration::from_secs(10)),
        keepalive_timeout: Duration::from_secs(5),
        ..Http2UpstreamConfig::default()
    })
    .unwrap();
    let started = Instant::now();
    let e = call(&f, get("/"), &[], None).await.unwrap_err();
    assert_eq!(e.side(), Side::Upstream);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(15) && took < Duration::from_secs(17),
        "{took:?}"
    );
}

#[test]
fn request_heads_become_http2_heads() {
    let (parts, ()) = http::Request::get("/a?b=1")
        .header("host", "api.test:8080")
        .header("connection", "close, x-hop")
        .header("x-hop", "1")
        .header("keep-alive", "5")
        .header("proxy-connection", "x")
        .header("upgrade", "h2c")
        .header("te", "trailers")
        .header("x-keep", "1")
        .body(())
        .unwrap()
        .into_parts();
    let req = h2_request(&parts, UpstreamScheme::Https);
    assert_eq!(req.uri().to_string(), "https://api.test:8080/a?b=1");
    assert_eq!(req.version(), Version::HTTP_2);
    let names: Vec<&str> = req.headers().keys().map(|k| k.as_str()).collect();
    assert_eq!(names, ["te", "x-keep"]);
    // Without a Host there is no authority to send.
    let (parts, ()) = http::Request::get("/x")
        .header("te", "gzip")
        .body(())
        .unwrap()
        .into_parts();
    let req = h2_request(&parts, UpstreamScheme::Http);
    assert_eq!(req.uri(), "/x");
    assert!(req.headers().is_empty());
}

#[test]
fn config_is_checked_and_parsed() {
    assert!(Http2UpstreamConfig::default().validate().is_ok());
    for bad in [
        Http2UpstreamConfig {
            max_concurrent_streams: 0,
            ..Http2UpstreamConfig::default()
        },
        Http2UpstreamConfig {
            max_frame_size: 100,
            ..Http2UpstreamConfig::default()
        },
        Http2UpstreamConfig {
            keepalive_interval: Some(Duration::ZERO),
            ..Http2UpstreamConfig::default()
        },
        Http2UpstreamConfig {
            max_connections: 0,
            ..Http2UpstreamConfig::default()
        },
    ] {
        assert!(bad.validate().is_err());
    }
    let c: crate::MuxHttpConfig = serde_json::from_value(serde_json::json!({
        "pipeline": "up",
        "protocol": "http2",
        "http2": { "max_concurrent_streams": 8, "keepalive_interval": "30s", "scheme": "https" }
    }))
    .unwrap();
    assert_eq!(c.protocol, UpstreamProtocol::Http2);
    assert_eq!(c.http2.max_concurrent_streams, 8);
    assert_eq!(c.http2.keepalive_interval, Some(Duration::from_secs(30)));
    assert_eq!(c.http2.scheme, UpstreamScheme::Https);
    let c: crate::MuxHttpConfig =
        serde_json::from_value(serde_json::json!({ "pipeline": "up" })).unwrap();
    assert_eq!(c.protocol, UpstreamProtocol::Http1);
    let c: crate::MuxHttpConfig =
        serde_json::from_value(serde_json::json!({ "pipeline": "up", "protocol": "auto" }))
            .unwrap();
    assert_eq!(c.protocol, UpstreamProtocol::Auto);
    assert!(
        serde_json::from_value::<crate::MuxHttpConfig>(
            serde_json::json!({ "pipeline": "up", "protocol": "http3" })
        )
        .is_err()
    );
}

/// How a [`retiring`] server behaves once it has taken its last request on a connection.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retire {
    /// Like nginx (`keepalive_requests`): GOAWAY NO_ERROR naming the last stream it took,
    /// that stream and those before it answered, later ones ignored (so refused).
    Graceful,
    /// Like hypercorn 0.18 (`keep_alive_max_requests`, python-h2's `close_connection`):
    /// the frames read with the last request are all taken and the GOAWAY names the
    /// highest of them, but none of them is answered; any frame that comes after it is a
    /// PROTOCOL_ERROR that closes the connection, and otherwise the connection is closed
    /// after a 5 s keep-alive timeout.
    Broken,
}

/// Counts of a [`retiring`] server.
#[derive(Default)]
struct RetiringStats {
    conns: AtomicUsize,
    answered: AtomicUsize,
    /// Streams that came after the GOAWAY.
    ignored: AtomicUsize,
}

/// An upstream that retires each connection after `limit` requests, speaking raw
/// HTTP/2 frames (h2's own server always says GOAWAY in two steps, so a client never
/// sees a stream refused by it): every request gets `200` with no body, answered once
/// the bytes read so far are handled.
fn retiring(limit: usize, how: Retire) -> (Arc<RetiringStats>, Pipe2Server) {
    let (tx, mut rx) = mpsc::unbounded_channel::<DuplexStream>();
    let stats = Arc::new(RetiringStats::default());
    let s = stats.clone();
    tokio::spawn(async move {
        while let Some(io) = rx.recv().await {
            s.conns.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve_retiring(io, limit, how, s.clone()));
        }
    });
    (stats, Pipe2Server { conns: tx })
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn goaway(last: u32, code: u32) -> Vec<u8> {
    let mut p = last.to_be_bytes().to_vec();
    p.extend_from_slice(&code.to_be_bytes());
    frame(7, 0, 0, &p)
}

async fn serve_retiring(
    mut io: DuplexStream,
    limit: usize,
    how: Retire,
    stats: Arc<RetiringStats>,
) {
    const HEADERS: u8 = 1;
    const SETTINGS: u8 = 4;
    const PING: u8 = 6;
    const ACK: u8 = 1;
    const PROTOCOL_ERROR: u32 = 1;
    let mut buf = Vec::new();
    let mut chunk = vec![0; 64 * 1024];
    let mut preface = false;
    let mut taken = 0;
    let mut highest = 0;
    let mut gone = false;
    if io.write_all(&frame(SETTINGS, 0, 0, &[])).await.is_err() {
        return;
    }
    loop {
        let n = match tokio::time::timeout(Duration::from_secs(5), io.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return,
        };
        buf.extend_from_slice(&chunk[..n]);
        if !preface {
            if buf.len() < 24 {
                continue;
            }
            buf.drain(..24);
            preface = true;
        }
        let mut out = Vec::new();
        let mut answers = Vec::new();
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            let (kind, flags) = (buf[3], buf[4]);
            let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
            let payload: Vec<u8> = buf.drain(..9 + len).skip(9).collect();
            if gone && how == Retire::Broken {
                // Its connection state machine is closed: anything is a protocol error.
                let _ = io.write_all(&goaway(highest, PROTOCOL_ERROR)).await;
                return;
            }
            match kind {
                SETTINGS if flags & ACK == 0 => out.extend(frame(SETTINGS, ACK, 0, &[])),
                PING if flags & ACK == 0 => out.extend(frame(PING, ACK, 0, &payload)),
                HEADERS if gone && how == Retire::Graceful => {
                    stats.ignored.fetch_add(1, Ordering::SeqCst);
                }
                HEADERS => {
                    taken += 1;
                    highest = stream;
                    answers.push(stream);
                    if taken == limit && how == Retire::Graceful {
                        gone = true;
                        out.extend(goaway(stream, 0));
                    }
                }
                _ => {}
            }
        }
        if how == Retire::Broken && taken >= limit {
            gone = true;
            out.extend(goaway(highest, 0));
        } else {
            for s in answers {
                // `:status: 200` (static table index 8), END_STREAM | END_HEADERS.
                out.extend(frame(HEADERS, 0x5, s, &[0x88]));
                stats.answered.fetch_add(1, Ordering::SeqCst);
            }
        }
        if io.write_all(&out).await.is_err() {
            return;
        }
        if gone && how == Retire::Graceful {
            // Everything it took is answered: done.
            let _ = io.shutdown().await;
            return;
        }
    }
}

/// `workers` loops of `each` GET requests one after the other; all must succeed.
async fn hammer(f: &MuxHttp, workers: usize, each: usize) {
    let results = futures_util::future::join_all((0..workers).map(|w| async move {
        let mut failures = Vec::new();
        for i in 0..each {
            match call(f, get(&format!("/w{w}/{i}")), &[], None).await {
                Ok((p, _, _)) if p.status == 200 => {}
                other => failures.push(format!("{:?}", other.map(|r| r.0.status))),
            }
        }
        failures
    }))
    .await;
    let failures: Vec<String> = results.into_iter().flatten().collect();
    assert!(
        failures.is_empty(),
        "{} failed: {failures:?}",
        failures.len()
    );
}

#[tokio::test]
async fn a_server_retiring_connections_every_n_requests_loses_none() {
    // 20 requests in flight, a new connection every 10: each GOAWAY finds streams sent
    // after the last one the server took; they are sent again, not failed, and once two
    // connections showed the same limit no stream is sent past it.
    let (stats, up) = retiring(10, Retire::Graceful);
    let f = mux(up, Http2UpstreamConfig::default(), Duration::from_secs(60));
    hammer(&f, 20, 10).await;
    assert!(
        stats.ignored.load(Ordering::SeqCst) > 0,
        "no stream was refused"
    );
    let (conns, ignored) = (
        stats.conns.load(Ordering::SeqCst),
        stats.ignored.load(Ordering::SeqCst),
    );
    hammer(&f, 20, 20).await;
    assert_eq!(
        stats.ignored.load(Ordering::SeqCst),
        ignored,
        "streams were still sent past the learned limit"
    );
    // 400 requests more, 10 a connection.
    assert_eq!(stats.conns.load(Ordering::SeqCst) - conns, 40);
    assert_eq!(stats.answered.load(Ordering::SeqCst), 600);
}

#[tokio::test(start_paused = true)]
async fn a_server_that_drops_its_streams_on_goaway_is_caught_at_once() {
    // hypercorn-like: the streams below the GOAWAY's last id are never answered. The
    // PING sent on the GOAWAY makes it fail the connection at once, and the GETs are sent
    // again, instead of waiting for its 5 s keep-alive timeout.
    let (stats, up) = retiring(30, Retire::Broken);
    let f = mux(up, Http2UpstreamConfig::default(), Duration::from_secs(60));
    let started = Instant::now();
    hammer(&f, 10, 30).await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "{took:?}");
    // 300 answered, at most 30 a connection.
    assert!(stats.conns.load(Ordering::SeqCst) >= 10);
    // A POST is not sent again: its failure shows.
    let (stats, up) = retiring(2, Retire::Broken);
    let f = mux(up, Http2UpstreamConfig::default(), Duration::from_secs(60));
    assert_eq!(call(&f, get("/"), &[], None).await.unwrap().0.status, 200);
    let post = http::Request::post("/p").header("host", "up.test");
    let e = call(&f, post, &[], None).await.unwrap_err();
    assert_eq!(e.side(), Side::Upstream);
    assert!(!e.is_retry_safe(), "{e:?}");
    assert_eq!(stats.conns.load(Ordering::SeqCst), 1);
    // The same for a GET is sent again on a new connection.
    assert_eq!(call(&f, get("/"), &[], None).await.unwrap().0.status, 200);
    let (stats, up) = retiring(2, Retire::Broken);
    let f = mux(up, Http2UpstreamConfig::default(), Duration::from_secs(60));
    for _ in 0..2 {
        assert_eq!(call(&f, get("/"), &[], None).await.unwrap().0.status, 200);
    }
    assert_eq!(stats.conns.load(Ordering::SeqCst), 2);
    assert_eq!(stats.answered.load(Ordering::SeqCst), 2);
}

/// The response messages of one request as (status, interim?) in order, the body bytes and
/// the stream's end.
async fn exchange_messages(
    f: &MuxHttp,
    req: http::request::Builder,
    body: &[Bytes],
) -> (Vec<(u16, bool)>, Vec<u8>, Option<StreamError>) {
    let (parts, ()) = req.body(()).unwrap().into_parts();
    let mut evs = vec![Event::MessageStart(Head::new(parts))];
    evs.extend(body.iter().cloned().map(Event::Data));
    evs.push(Event::MessageEnd(Tail::none()));
    evs.push(Event::END);
    let mut out = f.attach(events_from(evs), &Context::new());
    let (mut msgs, mut data) = (Vec::new(), Vec::new());
    while let Some(ev) = out.next().await {
        match ev {
            Event::MessageStart(h) => {
                let p = h.get::<response::Parts>().unwrap();
                if p.status == 103 {
                    assert_eq!(p.headers["link"], "</a.css>; rel=preload");
                }
                msgs.push((p.status.as_u16(), false));
            }
            Event::Data(b) => data.extend_from_slice(&b),
            Event::MessageEnd(t) => msgs.last_mut().unwrap().1 = crate::codec::ends_interim(&t),
            Event::StreamEnd(e) => return (msgs, data, e),
        }
    }
    (msgs, data, None)
}

#[tokio::test]
async fn interim_responses_are_handed_on_before_the_final_one() {
    let (_srv, up) = server(ServerOpts::default());
    let f = mux(up, Http2UpstreamConfig::default(), Duration::from_secs(60));
    // Without a body (the request is one HEADERS frame) and with one (uploaded while the
    // interim responses come back).
    let (msgs, body, end) = exchange_messages(&f, get("/plain").header("x-hints", "2"), &[]).await;
    assert_eq!(msgs, [(103, true), (103, true), (200, false)]);
    assert_eq!(body, b"/plain");
    assert!(end.is_none(), "{end:?}");
    let chunks = [Bytes::from_static(b"abc"), Bytes::from_static(b"def")];
    let req = http::Request::post("/echo")
        .header("host", "up.test")
        .header("x-hints", "1")
        .header("x-hint-status", "100");
    let (msgs, body, end) = exchange_messages(&f, req, &chunks).await;
    assert_eq!(msgs, [(100, true), (200, false)]);
    assert_eq!(body, b"abcdef");
    assert!(end.is_none(), "{end:?}");
}

#[tokio::test]
async fn a_101_or_too_many_interim_responses_fail_the_request() {
    let (_srv, up) = server(ServerOpts::default());
    let f = mux(up, Http2UpstreamConfig::default(), Duration::from_secs(60));
    let too_many = (MAX_INTERIM + 1).to_string();
    let (msgs, _, end) =
        exchange_messages(&f, get("/many").header("x-hints", too_many.as_str()), &[]).await;
    assert_eq!(msgs.len(), MAX_INTERIM);
    let e = end.expect("an error end");
    assert_eq!((e.kind(), e.side()), (ErrorKind::Protocol, Side::Upstream));
    assert!(e.cause().is_some_and(|c| c.is::<TooManyInterim>()), "{e}");
    let (msgs, _, end) = exchange_messages(
        &f,
        get("/switch")
            .header("x-hints", "1")
            .header("x-hint-status", "101"),
        &[],
    )
    .await;
    assert!(msgs.is_empty(), "{msgs:?}");
    let e = end.expect("an error end");
    assert!(
        e.cause()
            .and_then(|c| c.downcast_ref::<H2ClientError>())
            .is_some_and(|c| matches!(c, H2ClientError::SwitchingProtocols)),
        "{e}"
    );
}
