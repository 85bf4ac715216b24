//! A bounded HTTP/1.1 load with keep-alive connections that behaves as a well-behaved client
//! does when a proxy drains: it reconnects after `Connection: close` or a closed idle
//! connection, and sends a request again only when a reused connection was closed before
//! any byte of the answer came (RFC 9112 §9.3.1, what curl and browsers do). Everything
//! else that is not an accepted answer counts as a failure, with its time.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What a load run saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Accepted answers.
    pub ok: u64,
    /// Failed requests, in time order: `"<seconds>s: <what>"` (the first 50).
    pub failed: Vec<String>,
    /// How many requests failed.
    pub failures: u64,
    /// Answers by status code.
    pub statuses: BTreeMap<u16, u64>,
    /// New connections after the first ones.
    pub reconnects: u64,
    /// Requests sent again after a reused connection closed before answering.
    pub replayed: u64,
}

/// One response: status, body, and whether the server closes the connection.
struct Response {
    status: u16,
    body: Vec<u8>,
    close: bool,
}

/// Why a try failed: before any byte of the answer arrived (safe to send again on a
/// fresh connection), or after.
enum TryError {
    NothingBack(String),
    Broken(String),
}

fn read_response(r: &mut BufReader<TcpStream>) -> Result<Response, TryError> {
    let mut line = String::new();
    match r.read_line(&mut line) {
        Ok(0) => return Err(TryError::NothingBack("closed before answering".into())),
        Ok(_) => {}
        Err(e) => return Err(TryError::NothingBack(e.to_string())),
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| TryError::Broken(format!("bad status line {line:?}")))?;
    let (mut length, mut chunked, mut close) = (None, false, false);
    loop {
        let mut h = String::new();
        match r.read_line(&mut h) {
            Ok(0) => return Err(TryError::Broken("closed in the head".into())),
            Ok(_) => {}
            Err(e) => return Err(TryError::Broken(e.to_string())),
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((name, value)) = h.split_once(':') {
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            match name.as_str() {
                "content-length" => length = value.parse::<usize>().ok(),
                "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
                "connection" => close = value.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
    }
    let broken = |e: std::io::Error| TryError::Broken(e.to_string());
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).map_err(broken)?;
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| TryError::Broken(format!("bad chunk size {size:?}")))?;
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).map_err(broken)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(n) = length {
        body.resize(n, 0);
        r.read_exact(&mut body).map_err(broken)?;
    } else {
        r.read_to_end(&mut body).map_err(broken)?;
        close = true;
    }
    Ok(Response {
        status,
        body,
        close,
    })
}

/// `GET path` with `Host: host` on a keep-alive connection: the status and body, or `None`
/// when the connection was closed or the answer broke off.
pub fn get_on(c: &mut BufReader<TcpStream>, host: &str, path: &str) -> Option<(u16, Vec<u8>)> {
    c.get_mut()
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .ok()?;
    read_response(c).ok().map(|r| (r.status, r.body))
}

/// `conns` connections to `addr`, each sending `GET path` with `Host: host` at
/// `per_second` requests a second for `run`; an answer is accepted when `accept(status,
/// body)` says so.
pub fn keepalive_load(
    addr: SocketAddr,
    host: &str,
    path: &str,
    conns: usize,
    per_second: u32,
    run: Duration,
    accept: &(dyn Fn(u16, &[u8]) -> bool + Sync),
) -> LoadReport {
    let report = Mutex::new(LoadReport::default());
    let start = Instant::now();
    let period = Duration::from_secs(1) / per_second.max(1);
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    std::thread::scope(|s| {
        for i in 0..conns {
            let (report, request) = (&report, request.as_str());
            s.spawn(move || {
                let fail = |what: String| {
                    let mut r = report.lock().unwrap();
                    r.failures += 1;
                    if r.failed.len() < 50 {
                        r.failed.push(format!(
                            "{:.2}s conn {i}: {what}",
                            start.elapsed().as_secs_f64()
                        ));
                    }
                };
                let connect = || -> Result<BufReader<TcpStream>, String> {
                    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                        .map_err(|e| format!("connect: {e}"))?;
                    s.set_read_timeout(Some(Duration::from_secs(10)))
                        .map_err(|e| e.to_string())?;
                    let _ = s.set_nodelay(true);
                    Ok(BufReader::new(s))
                };
                let mut conn: Option<BufReader<TcpStream>> = None;
                let mut first = true;
                // Spread the connections' sends over the period.
                let mut next = start + period * u32::try_from(i).unwrap_or(0) / conns as u32;
                while start.elapsed() < run {
                    if let Some(wait) = next.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    next += period;
                    let mut sent_again = false;
                    let answer = loop {
                        let reused = conn.is_some();
                        if conn.is_none() {
                            match connect() {
                                Ok(c) => {
                                    if !first {
                                        report.lock().unwrap().reconnects += 1;
                                    }
                                    first = false;
                                    conn = Some(c);
                                }
                                Err(e) => break Err(e),
                            }
                        }
                        let Some(c) = conn.as_mut() else {
                            break Err("no connection".into());
                        };
                        let tried = c
                            .get_mut()
                            .write_all(request.as_bytes())
                            .map_err(|e| TryError::NothingBack(e.to_string()))
                            .and_then(|()| read_response(c));
                        match tried {
                            Ok(r) => break Ok(r),
                            Err(TryError::NothingBack(_)) if reused && !sent_again => {
                                conn = None;
                                sent_again = true;
                                report.lock().unwrap().replayed += 1;
                            }
                            Err(TryError::NothingBack(e) | TryError::Broken(e)) => {
                                conn = None;
                                break Err(e);
                            }
                        }
                    };
                    match answer {
                        Ok(r) => {
                            if r.close {
                                conn = None;
                            }
                            let ok = accept(r.status, &r.body);
                            let mut rep = report.lock().unwrap();
                            *rep.statuses.entry(r.status).or_default() += 1;
                            if ok {
                                rep.ok += 1;
                            } else {
                                drop(rep);
                                fail(format!(
                                    "{} {:?}",
                                    r.status,
                                    String::from_utf8_lossy(&r.body)
                                ));
                            }
                        }
                        Err(e) => fail(e),
                    }
                }
            });
        }
    });
    report.into_inner().unwrap()
}
