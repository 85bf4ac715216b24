//! The demo's workloads, OSM's bookstore apps in a few lines each: bookbuyer and bookthief
//! `GET` books from bookstore in a loop, bookstore serves them (saying which version it
//! is) and `POST`s a restock to bookwarehouse for every book sold. Every call goes to the
//! workload's sidecar (explicit proxy mode: its outbound listener, the service named by
//! `Host`) or, with capture, to the service's address as if there were no mesh.
//!
//! Each app prints one JSON line per second on stdout with what happened in that second,
//! which `flowgate demo` reads:
//!
//! ```text
//! {"app":"bookbuyer","codes":{"200":9,"403":1},"versions":{"v1":9},"failed":0}
//! {"app":"bookstore-v1","served":9,"restocks":{"200":3}}
//! ```
//!
//! Plain blocking HTTP/1.1 with one connection per request (`Connection: close`): the apps
//! are small, slow and easy to read, not a load generator.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The header bookstore answers with: its version.
pub const VERSION_HEADER: &str = "x-bookstore-version";

/// Most bytes of a request or response head the apps read.
const MAX_HEAD: usize = 16 * 1024;
/// Most bytes of a body the apps read.
const MAX_BODY: usize = 64 * 1024;
/// How long one call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Most connections a server app serves at once (more are closed at once).
const MAX_CONNECTIONS: u64 = 256;
/// Most restocks waiting to be sent (more are counted as dropped).
const MAX_RESTOCKS_QUEUED: usize = 64;

/// Where an app's outbound calls go.
#[derive(Clone, Debug)]
pub struct Upstream {
    /// The address to connect to: the sidecar's outbound listener, or the service itself.
    pub connect: SocketAddr,
    /// The `Host` to send (`bookstore.bookstore:14001`): the service called.
    pub host: String,
}

/// A response as the apps see it.
#[derive(Debug, Default, PartialEq)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The bookstore version that answered, if it said.
    pub version: Option<String>,
}

/// One call: `METHOD PATH` to `to`, with `Connection: close`; the answer, or why none came.
pub fn call(to: &Upstream, method: &str, path: &str) -> Result<Answer, String> {
    let mut s = TcpStream::connect_timeout(&to.connect, CALL_TIMEOUT).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(CALL_TIMEOUT))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(CALL_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let body = if method == "POST" { "{}" } else { "" };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        to.host,
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s);
    let (first, headers) = read_head(&mut r)?;
    let status = first
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| format!("not an HTTP response: {first:?}"))?;
    let version = header(&headers, VERSION_HEADER).map(str::to_string);
    // The body is not needed; read what there is (bounded) so the peer is not reset.
    let _ = r.take(MAX_BODY as u64).read_to_end(&mut Vec::new());
    Ok(Answer { status, version })
}

/// Reads a head: the first line and the fields (names lower-cased).
fn read_head(r: &mut impl BufRead) -> Result<(String, Vec<(String, String)>), String> {
    let mut first = String::new();
    let mut headers = Vec::new();
    let mut total = 0;
    loop {
        let mut line = String::new();
        let n = r
            .take((MAX_HEAD - total) as u64 + 1)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before the end of the head".into());
        }
        total += n;
        if total > MAX_HEAD {
            return Err(format!("head over {MAX_HEAD} bytes"));
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        if first.is_empty() {
            first = line.to_string();
        } else if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    Ok((first, headers))
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Counts by key, taken each second.
#[derive(Default)]
struct Tally(Mutex<BTreeMap<String, u64>>);

impl Tally {
    fn add(&self, key: impl Into<String>) {
        *self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key.into())
            .or_default() += 1;
    }
    fn take(&self) -> BTreeMap<String, u64> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Prints `line()` as one line on stdout every second, forever (until stdout closes).
fn report_every_second(line: impl Fn() -> serde_json::Value) {
    let mut next = Instant::now() + Duration::from_secs(1);
    loop {
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        next += Duration::from_secs(1);
        let mut out = std::io::stdout().lock();
        if writeln!(out, "{}", line())
            .and_then(|()| out.flush())
            .is_err()
        {
            return;
        }
    }
}

/// bookbuyer and bookthief: `rate` calls a second to bookstore, alternating `GET
/// /books-bought` and `GET /buy-a-book/new`, each answer counted by status and version.
pub fn buyer(name: &str, bookstore: Upstream, rate: u32) -> ! {
    let codes = Arc::new(Tally::default());
    let versions = Arc::new(Tally::default());
    let failed = Arc::new(AtomicU64::new(0));
    {
        let (codes, versions, failed) = (codes.clone(), versions.clone(), failed.clone());
        std::thread::spawn(move || {
            let every = Duration::from_secs(1) / rate.max(1);
            let mut next = Instant::now();
            for n in 0u64.. {
                let path = if n % 2 == 0 {
                    "/books-bought"
                } else {
                    "/buy-a-book/new"
                };
                match call(&bookstore, "GET", path) {
                    Ok(a) => {
                        codes.add(a.status.to_string());
                        if let Some(v) = a.version {
                            versions.add(v);
                        }
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                next += every;
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else {
                    next = now;
                }
            }
        });
    }
    let name = name.to_string();
    report_every_second(move || {
        serde_json::json!({
            "app": name,
            "codes": codes.take(),
            "versions": versions.take(),
            "failed": failed.swap(0, Ordering::Relaxed),
        })
    });
    std::process::exit(0)
}

/// bookstore: answers every request with its `version` (200, the count of books sold as
/// the body); each book bought (`.*a-book.*new`) is restocked by a `POST /restock-books`
/// to bookwarehouse, sent from a worker thread.
pub fn bookstore(listen: SocketAddr, version: &str, warehouse: Upstream) -> Result<(), String> {
    let listener = TcpListener::bind(listen).map_err(|e| format!("{listen}: {e}"))?;
    let served = Arc::new(AtomicU64::new(0));
    let sold = Arc::new(AtomicU64::new(0));
    let restocks = Arc::new(Tally::default());
    let (tx, rx) = std::sync::mpsc::sync_channel::<()>(MAX_RESTOCKS_QUEUED);
    {
        let restocks = restocks.clone();
        spawn(move || {
            for () in rx {
                match call(&warehouse, "POST", "/restock-books") {
                    Ok(a) => restocks.add(a.status.to_string()),
                    Err(_) => restocks.add("failed"),
                }
            }
        })?;
    }
    {
        let (served, sold, version) = (served.clone(), sold.clone(), version.to_string());
        let restocks = restocks.clone();
        serve(listener, move |conn| {
            let (served, sold, version, tx, restocks) = (
                served.clone(),
                sold.clone(),
                version.clone(),
                tx.clone(),
                restocks.clone(),
            );
            move || {
                let Some(path) = answer(conn, |path| {
                    if path.contains("a-book") && path.ends_with("new") {
                        sold.fetch_add(1, Ordering::Relaxed);
                    }
                    (
                        vec![(VERSION_HEADER, version.clone())],
                        sold.load(Ordering::Relaxed).to_string(),
                    )
                }) else {
                    return;
                };
                served.fetch_add(1, Ordering::Relaxed);
                if path.contains("a-book") && path.ends_with("new") && tx.try_send(()).is_err() {
                    restocks.add("dropped");
                }
            }
        })?;
    }
    let name = format!("bookstore-{version}");
    report_every_second(move || {
        serde_json::json!({
            "app": name,
            "served": served.swap(0, Ordering::Relaxed),
            "restocks": restocks.take(),
        })
    });
    Ok(())
}

/// bookwarehouse: answers every request 200 and counts them.
pub fn bookwarehouse(listen: SocketAddr) -> Result<(), String> {
    let listener = TcpListener::bind(listen).map_err(|e| format!("{listen}: {e}"))?;
    let served = Arc::new(AtomicU64::new(0));
    {
        let served = served.clone();
        serve(listener, move |conn| {
            let served = served.clone();
            move || {
                if answer(conn, |_| (Vec::new(), "restocked".into())).is_some() {
                    served.fetch_add(1, Ordering::Relaxed);
                }
            }
        })?;
    }
    report_every_second(
        move || serde_json::json!({ "app": "bookwarehouse", "served": served.swap(0, Ordering::Relaxed) }),
    );
    Ok(())
}

/// Starts a thread, or says why it could not.
fn spawn(f: impl FnOnce() + Send + 'static) -> Result<(), String> {
    std::thread::Builder::new()
        .spawn(f)
        .map(drop)
        .map_err(|e| format!("cannot start a thread: {e}"))
}

/// Accepts on `listener` (on a thread of its own) and runs `handle(conn)`'s job on a
/// thread per connection, at most [`MAX_CONNECTIONS`] at once (more are closed at once).
fn serve<J: FnOnce() + Send + 'static>(
    listener: TcpListener,
    handle: impl Fn(TcpStream) -> J + Send + 'static,
) -> Result<(), String> {
    let live = Arc::new(AtomicU64::new(0));
    spawn(move || {
        loop {
            let conn = match listener.accept() {
                Ok((c, _)) => c,
                Err(_) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            if live.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
                live.fetch_sub(1, Ordering::AcqRel);
                continue;
            }
            let job = handle(conn);
            let l = live.clone();
            if spawn(move || {
                job();
                l.fetch_sub(1, Ordering::AcqRel);
            })
            .is_err()
            {
                live.fetch_sub(1, Ordering::AcqRel);
            }
        }
    })
}

/// Reads one request from `conn` and answers 200 with what `respond(path)` gives (extra
/// fields and the body), then closes. Returns the path, or `None` for a bad request.
fn answer(
    conn: TcpStream,
    respond: impl FnOnce(&str) -> (Vec<(&'static str, String)>, String),
) -> Option<String> {
    conn.set_read_timeout(Some(CALL_TIMEOUT)).ok()?;
    conn.set_write_timeout(Some(CALL_TIMEOUT)).ok()?;
    let mut r = BufReader::new(conn);
    let (first, headers) = read_head(&mut r).ok()?;
    let path = first.split_whitespace().nth(1)?.to_string();
    let len: usize = header(&headers, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if len > MAX_BODY {
        return None;
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    let (fields, text) = respond(&path);
    let mut head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n",
        text.len()
    );
    for (k, v) in fields {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut conn = r.into_inner();
    conn.write_all(head.as_bytes()).ok()?;
    conn.write_all(text.as_bytes()).ok()?;
    Some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_is_read_within_its_limit() {
        let mut ok = std::io::Cursor::new(
            b"HTTP/1.1 403 Forbidden\r\nX-Bookstore-Version: v2\r\n\r\nno".to_vec(),
        );
        let (first, h) = read_head(&mut ok).unwrap();
        assert_eq!(first, "HTTP/1.1 403 Forbidden");
        assert_eq!(header(&h, VERSION_HEADER), Some("v2"));
        let mut long = std::io::Cursor::new(vec![b'a'; MAX_HEAD + 10]);
        assert!(read_head(&mut long).is_err());
        let mut cut = std::io::Cursor::new(b"HTTP/1.1 200 OK\r\n".to_vec());
        assert!(read_head(&mut cut).is_err());
    }
}
