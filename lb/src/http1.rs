//! A small HTTP/1.1 client for health checks (the status) and etcd's JSON gateway (small
//! request bodies, `Content-Length` or chunked responses, newline-delimited streams), on
//! the sans-IO codec of `flowgate-http`: no parser of its own. Every read is bounded by the
//! codec's limits; callers wrap calls in timeouts.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use flowgate_http::h1::{Frame, H1Error, Limits, ResponseDecoder, encode_request_head};
use http::response;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
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

/// Bounds on what a health check or discovery response may send.
fn limits() -> Limits {
    Limits {
        max_head_bytes: MAX_HEAD,
        max_headers: 64,
        max_line: MAX_HEAD,
        max_body: None,
    }
}

/// A response being read: its status, and its body in pieces through the HTTP/1 codec of
/// `flowgate-http` (Content-Length, chunked or until close; every bound it has applies).
pub(crate) struct Body<IO> {
    io: IO,
    buf: BytesMut,
    decoder: ResponseDecoder,
    status: u16,
    done: bool,
}

impl<IO: AsyncRead + Unpin> Body<IO> {
    pub(crate) fn status(&self) -> u16 {
        self.status
    }

    /// The next frame, reading more bytes while the codec needs them.
    async fn frame(&mut self) -> Result<Frame<response::Parts>, HttpError> {
        loop {
            if let Some(f) = self.decoder.decode(&mut self.buf).map_err(malformed)? {
                return Ok(f);
            }
            let n = self.io.read_buf(&mut self.buf).await?;
            if n == 0 {
                return match self.decoder.decode_eof(&mut self.buf).map_err(malformed)? {
                    Some(f) => Ok(f),
                    None => Err(HttpError::Closed),
                };
            }
        }
    }

    /// The next piece of the body (at most `max` bytes each), `None` at its end.
    pub(crate) async fn next_piece(&mut self, max: usize) -> Result<Option<Vec<u8>>, HttpError> {
        if self.done {
            return Ok(None);
        }
        match self.frame().await? {
            Frame::Data(b) if b.len() > max => Err(HttpError::TooLarge { limit: max }),
            Frame::Data(b) => Ok(Some(b.to_vec())),
            Frame::End(_) => {
                self.done = true;
                Ok(None)
            }
            Frame::Head(..) => Err(HttpError::Malformed("a second response")),
        }
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

fn malformed(e: H1Error) -> HttpError {
    match e {
        H1Error::HeadTooLarge(limit) | H1Error::LineTooLong(limit) => HttpError::TooLarge { limit },
        H1Error::Incomplete => HttpError::Closed,
        _ => HttpError::Malformed("not a valid HTTP/1.x response"),
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

/// Sends a request over `io` (encoded by `flowgate-http`, `Connection: close`, a JSON body
/// with its length when given) and returns the body reader once the head is in.
pub(crate) async fn send<IO: AsyncRead + AsyncWrite + Unpin>(
    mut io: IO,
    method: &str,
    host: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<Body<IO>, HttpError> {
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, host)
        .header(http::header::USER_AGENT, "flowgate-lb")
        .header(http::header::CONNECTION, "close");
    if let Some(b) = body {
        req = req
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::CONTENT_LENGTH, b.len());
    }
    let (head, ()) = req
        .body(())
        .map_err(|_| HttpError::Malformed("request target or host"))?
        .into_parts();
    let mut out = BytesMut::new();
    encode_request_head(&head, &mut out);
    if let Some(b) = body {
        out.extend_from_slice(b);
    }
    io.write_all(&out).await?;
    io.flush().await?;
    let mut decoder = ResponseDecoder::new(limits());
    decoder.expect(head.method);
    let mut reader = Body {
        io,
        buf: BytesMut::with_capacity(4096),
        decoder,
        status: 0,
        done: false,
    };
    loop {
        match reader.frame().await? {
            // Interim responses (100 Continue…) are not the answer.
            Frame::Head(parts, _) if parts.status.is_informational() => {}
            Frame::Head(parts, _) => {
                reader.status = parts.status.as_u16();
                return Ok(reader);
            }
            _ => return Err(HttpError::Malformed("body before the head")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // Not HTTP (an SSH banner), and a status code of two digits.
        assert!(matches!(
            exchange(b"SSH-2.0-OpenSSH\r\n\r\n", 100).await,
            Err(HttpError::Malformed(_))
        ));
        assert!(matches!(
            exchange(b"HTTP/1.1 20 OK\r\n\r\n", 100).await,
            Err(HttpError::Malformed(_))
        ));
    }
}
