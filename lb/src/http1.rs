//! A minimal, bounded HTTP/1.1 client: enough for health checks (status line only) and
//! etcd's JSON gateway (small request bodies, `Content-Length` or chunked responses,
//! newline-delimited streams). Every read is capped; callers wrap calls in timeouts.

use std::net::SocketAddr;
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The longest response head accepted.
pub(crate) const MAX_HEAD: usize = 16 * 1024;

/// Why an HTTP exchange failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The socket failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// No answer in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// A head, line or body longer than allowed.
    #[error("response larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// Not HTTP/1.x as we know it.
    #[error("malformed response: {0}")]
    Malformed(&'static str),
    /// The peer closed before the response ended.
    #[error("connection closed early")]
    Closed,
}

/// A response head: the status and how the body is framed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    pub(crate) status: u16,
    pub(crate) chunked: bool,
    pub(crate) content_length: Option<usize>,
}

/// Parses `HTTP/1.1 200 OK` into 200.
pub(crate) fn parse_status_line(line: &[u8]) -> Result<u16, HttpError> {
    let line = std::str::from_utf8(line).map_err(|_| HttpError::Malformed("status line"))?;
    let mut parts = line.trim_end().splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(HttpError::Malformed("not HTTP/1.x"));
    }
    let code = parts.next().unwrap_or("");
    if code.len() != 3 {
        return Err(HttpError::Malformed("status code"));
    }
    code.parse()
        .map_err(|_| HttpError::Malformed("status code"))
}

/// Writes a request with `Connection: close` semantics unless `keep` is set.
pub(crate) async fn write_request<W: AsyncWrite + Unpin>(
    w: &mut W,
    method: &str,
    host: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<(), HttpError> {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: flowgate-lb\r\nConnection: close\r\n"
    );
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    if let Some(b) = body {
        bytes.extend_from_slice(b);
    }
    w.write_all(&bytes).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one line (ending in `\n`) of at most `max` bytes; `None` at a clean end.
pub(crate) async fn read_line<R: AsyncBufReadExt + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Option<Vec<u8>>, HttpError> {
    let mut line = Vec::new();
    let n = r.take(max as u64 + 1).read_until(b'\n', &mut line).await?;
    if n == 0 {
        return Ok(None);
    }
    if !line.ends_with(b"\n") {
        return if line.len() > max {
            Err(HttpError::TooLarge { limit: max })
        } else {
            Err(HttpError::Closed)
        };
    }
    Ok(Some(line))
}

/// Reads the status line and headers.
pub(crate) async fn read_head<R: AsyncBufReadExt + Unpin>(r: &mut R) -> Result<Head, HttpError> {
    let status_line = read_line(r, MAX_HEAD).await?.ok_or(HttpError::Closed)?;
    let status = parse_status_line(&status_line)?;
    let mut used = status_line.len();
    let mut head = Head {
        status,
        chunked: false,
        content_length: None,
    };
    loop {
        let line = read_line(r, MAX_HEAD.saturating_sub(used))
            .await?
            .ok_or(HttpError::Closed)?;
        used += line.len();
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end();
        if text.is_empty() {
            return Ok(head);
        }
        let Some((name, value)) = text.split_once(':') else {
            return Err(HttpError::Malformed("header line"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            head.content_length = Some(
                value
                    .parse()
                    .map_err(|_| HttpError::Malformed("content-length"))?,
            );
        }
    }
}

/// A response body being read, chunk by chunk.
pub(crate) struct Body<R> {
    r: R,
    head: Head,
    left: Option<usize>,
    done: bool,
}

impl<R: AsyncBufReadExt + Unpin> Body<R> {
    pub(crate) fn new(r: R, head: Head) -> Self {
        let left = if head.chunked {
            None
        } else {
            head.content_length
        };
        Self {
            r,
            head,
            left,
            done: false,
        }
    }

    pub(crate) fn status(&self) -> u16 {
        self.head.status
    }

    /// The next piece of the body (at most `max` bytes); `None` at its end.
    pub(crate) async fn next_piece(&mut self, max: usize) -> Result<Option<Vec<u8>>, HttpError> {
        if self.done {
            return Ok(None);
        }
        if self.head.chunked {
            let size_line = read_line(&mut self.r, 128)
                .await?
                .ok_or(HttpError::Closed)?;
            let text = String::from_utf8_lossy(&size_line);
            let hex = text.trim().split(';').next().unwrap_or("");
            let size =
                usize::from_str_radix(hex, 16).map_err(|_| HttpError::Malformed("chunk size"))?;
            if size > max {
                return Err(HttpError::TooLarge { limit: max });
            }
            let mut data = vec![0; size];
            self.r.read_exact(&mut data).await?;
            let mut crlf = [0u8; 2];
            self.r.read_exact(&mut crlf).await?;
            if size == 0 {
                self.done = true;
                return Ok(None);
            }
            return Ok(Some(data));
        }
        let want = match self.left {
            Some(0) => {
                self.done = true;
                return Ok(None);
            }
            Some(n) => n.min(max),
            None => max,
        };
        let mut data = vec![0; want.min(8192)];
        let n = self.r.read(&mut data).await?;
        if n == 0 {
            self.done = true;
            return if self.left.is_some() {
                Err(HttpError::Closed)
            } else {
                Ok(None)
            };
        }
        data.truncate(n);
        if let Some(left) = &mut self.left {
            *left -= n;
        }
        Ok(Some(data))
    }

    /// The whole body, at most `max` bytes.
    pub(crate) async fn read_all(&mut self, max: usize) -> Result<Vec<u8>, HttpError> {
        let mut all = Vec::new();
        while let Some(p) = self.next_piece(max).await? {
            all.extend_from_slice(&p);
            if all.len() > max {
                return Err(HttpError::TooLarge { limit: max });
            }
        }
        Ok(all)
    }
}

/// Connects to `addr` within `timeout`.
pub(crate) async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, HttpError> {
    let s = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| HttpError::Timeout(timeout))??;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Sends a request over `io` and returns the body reader once the head is in.
pub(crate) async fn send<IO: AsyncRead + AsyncWrite + Unpin>(
    io: IO,
    method: &str,
    host: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<Body<BufReader<IO>>, HttpError> {
    let mut r = BufReader::new(io);
    write_request(r.get_mut(), method, host, path, body).await?;
    let head = read_head(&mut r).await?;
    Ok(Body::new(r, head))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(
            parse_status_line(b"HTTP/1.1 503 Service Unavailable\r\n").unwrap(),
            503
        );
        assert_eq!(parse_status_line(b"HTTP/1.0 200\r\n").unwrap(), 200);
        assert!(parse_status_line(b"SSH-2.0-OpenSSH\r\n").is_err());
        assert!(parse_status_line(b"HTTP/1.1 20 OK\r\n").is_err());
    }

    async fn exchange(response: &'static [u8], max: usize) -> Result<(u16, Vec<u8>), HttpError> {
        let (client, mut server) = tokio::io::duplex(4096);
        let serve = tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let _ = server.read(&mut buf).await;
            // Feed in small pieces to exercise partial reads.
            for piece in response.chunks(7) {
                server.write_all(piece).await.ok();
            }
        });
        let mut body = send(client, "POST", "h", "/v3/kv/range", Some(b"{}")).await?;
        let all = body.read_all(max).await;
        serve.await.ok();
        Ok((body.status(), all?))
    }

    #[tokio::test]
    async fn content_length_and_chunked_bodies() {
        let (s, b) = exchange(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", 100)
            .await
            .unwrap();
        assert_eq!((s, b.as_slice()), (200, &b"hello"[..]));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        let (s, b) = exchange(chunked, 100).await.unwrap();
        assert_eq!((s, b.as_slice()), (200, &b"abcde"[..]));
    }

    #[tokio::test]
    async fn limits_hold() {
        let big = b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n01234567890123456789012345678901234567890123456789";
        assert!(matches!(
            exchange(big, 10).await,
            Err(HttpError::TooLarge { .. })
        ));
        let short = b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nabc";
        assert!(matches!(exchange(short, 100).await, Err(HttpError::Closed)));
    }
}
