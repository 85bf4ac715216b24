//! The binaries' admin endpoint: a small HTTP/1.1 server for loopback, one request per
//! connection, answered with JSON by a handler that gets the request line's method and
//! target. The head is bounded (8 KiB, 5 s); bodies are not read. [`call`] is the other
//! end, for the binaries' commands that ask a running process.
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:15021").await?;
//! flowgate::admin::serve(listener, |method, target| match (method, target) {
//!     ("GET", "/ready") => (200, "{\"ready\": true}".to_string()),
//!     _ => (404, "{\"error\": \"GET /ready\"}".to_string()),
//! })
//! .await;
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The largest request head read.
const MAX_HEAD: usize = 8192;

/// Sends `request_line` (`GET /status`) to the admin endpoint at `admin` and returns the
/// answer's status line and body (blocking; 2 s to connect, 5 s to read, at most 16 MiB).
pub fn call(admin: std::net::SocketAddr, request_line: &str) -> Result<(String, String), String> {
    use std::io::{Read, Write};
    let fetched = (|| -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect_timeout(&admin, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(
            format!("{request_line} HTTP/1.1\r\nhost: admin\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .as_bytes(),
        )?;
        let mut text = String::new();
        s.take(16 << 20).read_to_string(&mut text)?;
        Ok(text)
    })();
    let text = fetched.map_err(|e| format!("cannot reach the admin endpoint at {admin}: {e}"))?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or_default().to_string();
    Ok((status, body.to_string()))
}

/// Serves `handle(method, target) -> (status, JSON body)` on `listener`, forever.
pub async fn serve<H>(listener: tokio::net::TcpListener, handle: H)
where
    H: Fn(&str, &str) -> (u16, String) + Send + Sync + 'static,
{
    let handle = Arc::new(handle);
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            let read = async {
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
            };
            if tokio::time::timeout(Duration::from_secs(5), read)
                .await
                .is_err()
            {
                return;
            }
            let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
            let line = String::from_utf8_lossy(line);
            let mut parts = line.split_whitespace();
            let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let (code, body) = handle(method, target);
            let resp = format!(
                "HTTP/1.1 {code} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                reason(code),
                body.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
        });
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        404 => "Not Found",
        409 => "Conflict",
        503 => "Service Unavailable",
        _ => "",
    }
}
