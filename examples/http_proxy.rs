//! An HTTP reverse proxy assembled in Rust from the filter library, with one filter of its
//! own.
//!
//! Shows: `DemuxHttp` (HTTP/1.1 and HTTP/2 from clients, one sub-pipeline per request), a
//! custom filter (`StampRequest`: adds `x-request-id` and `x-forwarded-for` computed from
//! the request and its connection), routing with a `Branch` on the request path,
//! per-request balancing over two upstreams with `BalanceHttp` (each upstream with its own
//! keep-alive pool), a plain keep-alive pool (`MuxHttp` over `Connect`) and a fixed
//! answer (`Respond`). The two upstreams are Flowgate pipelines too (they answer with
//! their name and the request id they were given), so the example needs nothing else
//! running.
//!
//! Run it:
//!
//! ```text
//! cargo run --example http_proxy      # proxy on 127.0.0.1:8080, upstreams on 9001 and 9002
//! ```
//!
//! Poke it:
//!
//! ```text
//! curl -s 127.0.0.1:8080/api/a      # -> app-1 saw /api/a as fg-0-1   (round robin per request,
//! curl -s 127.0.0.1:8080/api/b      # -> app-2 saw /api/b as fg-0-2    starting at either app)
//! curl -s 127.0.0.1:8080/one/x      # -> app-1 saw /one/x as fg-0-3   (always app-1)
//! curl -s 127.0.0.1:8080/           # -> flowgate http_proxy example: try /api/ or /one/
//! ```
#![allow(clippy::print_stdout)]

use std::error::Error;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use flowgate::filters::http::{BalanceHttp, BalanceHttpConfig, DemuxHttp, MuxHttp, Respond};
use flowgate::filters::net::Connect;
use flowgate::pipeline::joint::{Branch, MuxOptions};
use flowgate::pipeline::server::{ListenerConfig, Protocol, Server};
use flowgate::pipeline::{Context, Description, Event, Filter, Head, Pipeline, Transform};
use flowgate_http::h1::Limits;
use http::{HeaderMap, HeaderValue, StatusCode, request};

// === StampRequest: the example's own filter ===

/// Adds `x-request-id: fg-<worker>-<n>` and `x-forwarded-for: <client IP>` to every
/// request head. It does no I/O, so it is a [`Transform`]: one call per event, fused with
/// its neighbours into one pipeline stage.
struct StampRequest {
    next_id: Arc<AtomicU64>,
}

impl Filter for StampRequest {
    fn describe(&self) -> Description {
        Description::filter("stamp-request")
    }

    fn transform(&self, cx: &Context) -> Option<Box<dyn Transform>> {
        let conn = cx.conn();
        let peer = conn.peer.map(|p| p.ip().to_string());
        let worker = conn.worker;
        let next_id = self.next_id.clone();
        Some(Box::new(move |ev: Event, out: &mut dyn FnMut(Event)| {
            match ev {
                Event::MessageStart(head) => match head.get::<request::Parts>() {
                    Some(parts) => {
                        // Heads are shared (`Arc`): edit a copy.
                        let mut parts = parts.clone();
                        let n = next_id.fetch_add(1, Ordering::Relaxed) + 1;
                        if let Ok(v) = HeaderValue::from_str(&format!("fg-{worker}-{n}")) {
                            parts.headers.insert("x-request-id", v);
                        }
                        if let Some(ip) =
                            peer.as_deref().and_then(|p| HeaderValue::from_str(p).ok())
                        {
                            parts.headers.append("x-forwarded-for", ip);
                        }
                        out(Event::MessageStart(Head::new(parts)));
                    }
                    None => out(Event::MessageStart(head)),
                },
                other => out(other),
            }
        }))
    }
}

// === The upstreams ===

/// An upstream that answers `<name> saw <path> as <x-request-id>`.
fn app(name: &'static str) -> Result<Pipeline, Box<dyn Error>> {
    let per_request = Pipeline::builder(format!("{name}-request"))
        .transform("answer", move || {
            move |ev: Event, out: &mut dyn FnMut(Event)| {
                if let Event::MessageStart(head) = &ev
                    && let Some(req) = head.get::<request::Parts>()
                {
                    let id = req
                        .headers
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    let body = Bytes::from(format!("{name} saw {} as {id}\n", req.uri.path()));
                    let mut res = http::Response::new(());
                    res.headers_mut()
                        .insert(http::header::CONTENT_LENGTH, body.len().into());
                    let (parts, ()) = res.into_parts();
                    out(Event::MessageStart(Head::new(parts)));
                    out(Event::Data(body));
                    out(Event::MessageEnd(flowgate::pipeline::Tail::none()));
                    out(Event::END);
                }
            }
        })
        .build()?;
    Ok(Pipeline::builder(name)
        .filter(DemuxHttp::new(Arc::new(per_request), Limits::default()))
        .build()?)
}

// === The proxy ===

/// The proxy's pipeline: `demux-http` → per request: stamp, then route by path.
fn proxy(apps: [SocketAddr; 2]) -> Result<Pipeline, Box<dyn Error>> {
    // /api/…: balanced per request over both apps, a keep-alive pool per app.
    let balanced = BalanceHttp::new(BalanceHttpConfig::new(
        apps.iter()
            .map(|&address| flowgate::lb::Backend::new(address))
            .collect(),
    ))?;
    let api = Pipeline::builder("api").filter(balanced).build()?;
    // /one/…: one upstream behind a keep-alive pool.
    let connect = Pipeline::builder("app-1-connection")
        .filter(Connect::round_robin([apps[0].to_string()]))
        .build()?;
    let one = Pipeline::builder("one")
        .filter(MuxHttp::new(
            Arc::new(connect),
            Limits::default(),
            MuxOptions::default(),
        )?)
        .build()?;
    // Anything else: a fixed answer.
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain"),
    );
    let index = Pipeline::builder("index")
        .filter(Respond::new(
            StatusCode::OK,
            headers,
            Bytes::from_static(b"flowgate http_proxy example: try /api/ or /one/\n"),
        ))
        .build()?;

    let path_starts = |prefix: &'static str| {
        move |_: &Context, head: Option<&Head>| {
            head.and_then(|h| h.get::<request::Parts>())
                .is_some_and(|r| r.uri.path().starts_with(prefix))
        }
    };
    let request = Pipeline::builder("request")
        .filter(StampRequest {
            next_id: Arc::default(),
        })
        .filter(
            Branch::new()
                .when("path /api/", path_starts("/api/"), Arc::new(api))
                .when("path /one/", path_starts("/one/"), Arc::new(one))
                .otherwise(Arc::new(index)),
        )
        .build()?;
    Ok(Pipeline::builder("proxy")
        .filter(DemuxHttp::new(Arc::new(request), Limits::default()))
        .build()?)
}

/// Starts the two apps and the proxy; returns the server and the proxy's bound address.
fn start(
    listen: SocketAddr,
    apps_at: [SocketAddr; 2],
) -> Result<(Server, SocketAddr), Box<dyn Error>> {
    // The proxy's keep-alive pools hold connections to the apps in this same server, so
    // a shutdown would wait for them up to the drain timeout: keep it short.
    let server = Server::builder()
        .workers(1)
        .drain_timeout(std::time::Duration::from_millis(200))
        .start()?;
    let mut listeners = vec![
        (ListenerConfig::tcp(apps_at[0]), Arc::new(app("app-1")?)),
        (ListenerConfig::tcp(apps_at[1]), Arc::new(app("app-2")?)),
    ];
    // Bind the apps first so port 0 (tests) resolves to real ports.
    server.apply(listeners.clone())?;
    let mut apps = Vec::new();
    for (cfg, _) in &listeners {
        apps.push(
            server
                .local_addr(cfg.listen, Protocol::Tcp)
                .ok_or("app not bound")?,
        );
    }
    let apps: [SocketAddr; 2] = [apps[0], apps[1]];
    listeners.push((ListenerConfig::tcp(listen), Arc::new(proxy(apps)?)));
    server.apply(listeners)?;
    let bound = server
        .local_addr(listen, Protocol::Tcp)
        .ok_or("proxy not bound")?;
    Ok((server, bound))
}

fn main() -> Result<(), Box<dyn Error>> {
    let (_server, addr) = start(
        "127.0.0.1:8080".parse()?,
        ["127.0.0.1:9001".parse()?, "127.0.0.1:9002".parse()?],
    )?;
    println!(
        "http proxy on http://{addr}: /api/ balanced over :9001 and :9002, /one/ to :9001 (Ctrl-C to stop)"
    );
    loop {
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};

    /// Sends GETs for `paths` on one keep-alive connection and returns the bodies.
    fn get(addr: SocketAddr, paths: &[&str]) -> Vec<String> {
        let c = std::net::TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut w = c.try_clone().unwrap();
        let mut r = BufReader::new(c);
        paths
            .iter()
            .map(|p| {
                write!(w, "GET {p} HTTP/1.1\r\nHost: example\r\n\r\n").unwrap();
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    r.read_line(&mut line).unwrap();
                    if line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0; length];
                r.read_exact(&mut body).unwrap();
                String::from_utf8(body).unwrap()
            })
            .collect()
    }

    #[test]
    fn smoke_routes_balances_pools_and_stamps() {
        // Port 0 everywhere: the apps are told apart by their loopback IPs.
        let (server, addr) = start(
            "127.0.0.1:0".parse().unwrap(),
            [
                "127.0.0.21:0".parse().unwrap(),
                "127.0.0.22:0".parse().unwrap(),
            ],
        )
        .unwrap();
        let bodies = get(
            addr,
            &[
                "/api/a", "/api/b", "/api/c", "/api/d", "/one/x", "/one/y", "/",
            ],
        );
        // Per-request round robin over both apps on one client connection (the first pick
        // may be either app).
        let api: Vec<&str> = bodies[..4].iter().map(|b| &b[..5]).collect();
        assert!(
            api[0] != api[1] && api[0] == api[2] && api[1] == api[3],
            "{bodies:?}"
        );
        assert!(
            api.contains(&"app-1") && api.contains(&"app-2"),
            "{bodies:?}"
        );
        assert!(bodies[0].contains(" saw /api/a as fg-0-"), "{bodies:?}");
        // /one/ always reaches app-1; every request got its own id.
        assert!(
            bodies[4].starts_with("app-1 saw /one/x as fg-0-"),
            "{bodies:?}"
        );
        assert!(
            bodies[5].starts_with("app-1 saw /one/y as fg-0-"),
            "{bodies:?}"
        );
        let mut ids: Vec<&str> = bodies[..6]
            .iter()
            .filter_map(|b| b.split(" as ").nth(1))
            .collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 6, "{bodies:?}");
        assert_eq!(
            bodies[6],
            "flowgate http_proxy example: try /api/ or /one/\n"
        );
        server.shutdown();
    }
}
