//! TCP: reading a socket as events, and serving one accepted connection.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskCx, Poll, ready};

use bytes::{Bytes, BytesMut};
use futures_core::Stream;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;

use crate::{ConnInfo, Context, ErrorKind, Event, Filter, Pipeline, Side, StreamError};

/// How much a socket read may take at once.
pub const READ_SIZE: usize = 16 * 1024;

thread_local! {
    /// The read buffer of every socket of this thread. Each read splits what it got off
    /// the front (the `Data` event shares the allocation, no copy), so many sockets' reads
    /// fill one 16 KiB block one after another, and an idle connection holds no buffer.
    static READ_BUF: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
}

/// The read half of a TCP socket as a stream of events: `Data*` then `StreamEnd`.
///
/// The socket is read only when the stream is polled, which is what carries back-pressure
/// from the far end of a pipeline to this socket. Reads go into a buffer shared by the
/// thread's sockets, so an idle connection costs no read buffer.
pub struct TcpSource {
    read: OwnedReadHalf,
    side: Side,
    done: bool,
    /// Treat a short read as "drained" and skip the read that would say `WouldBlock`.
    short_read_drains: bool,
}

impl TcpSource {
    /// Reads `read`; errors are reported as failures of `side`.
    pub fn new(read: OwnedReadHalf, side: Side) -> Self {
        // A short read means the socket buffer is empty, so readiness can be cleared without
        // one more `recv` that returns EAGAIN (one syscall less per read). That is only safe
        // when no other thread can run the I/O driver between our read and the clearing,
        // i.e. on a current-thread runtime (Flowgate's workers are).
        let short_read_drains = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread);
        TcpSource {
            read,
            side,
            done: false,
            short_read_drains,
        }
    }
}

/// Maps an I/O error to a stream error of `side`.
pub fn io_error(e: io::Error, kind: ErrorKind, side: Side) -> StreamError {
    let kind = match e.kind() {
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => {
            ErrorKind::ConnectionReset
        }
        io::ErrorKind::TimedOut if kind == ErrorKind::ConnectFailed => ErrorKind::ConnectTimeout,
        _ => kind,
    };
    StreamError::new(kind, side).with_cause(e)
}

impl Stream for TcpSource {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskCx<'_>) -> Poll<Option<Event>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            let sock: &TcpStream = this.read.as_ref();
            if let Err(e) = ready!(sock.poll_read_ready(cx)) {
                this.done = true;
                return Poll::Ready(Some(Event::StreamEnd(Some(io_error(
                    e,
                    ErrorKind::ReadFailed,
                    this.side,
                )))));
            }
            let read = READ_BUF.with_borrow_mut(|buf| {
                if buf.capacity() - buf.len() < 1024 {
                    buf.reserve(READ_SIZE);
                }
                let room = buf.capacity() - buf.len();
                sock.try_read_buf(buf)
                    .map(|n| (n, room, buf.split().freeze()))
            });
            match read {
                Ok((0, _, _)) => {
                    this.done = true;
                    return Poll::Ready(Some(Event::END));
                }
                Ok((n, room, data)) => {
                    if n < room && this.short_read_drains {
                        let _ = sock.try_io(Interest::READABLE, || {
                            Err::<(), _>(io::Error::from(io::ErrorKind::WouldBlock))
                        });
                    }
                    return Poll::Ready(Some(Event::Data(data)));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    this.done = true;
                    return Poll::Ready(Some(Event::StreamEnd(Some(io_error(
                        e,
                        ErrorKind::ReadFailed,
                        this.side,
                    )))));
                }
            }
        }
    }
}

/// Joins the `Data` pieces that are ready together into one write, so a response head and
/// its small body leave in one segment instead of two (a system call and a packet each).
///
/// One piece passes through without a copy; several are copied into one buffer, up to
/// [`WriteGather::LIMIT`] bytes.
#[derive(Default)]
pub struct WriteGather {
    first: Option<Bytes>,
    rest: BytesMut,
}

impl WriteGather {
    /// Gathering stops once this many bytes are waiting.
    pub const LIMIT: usize = 64 * 1024;

    /// Adds a piece.
    pub fn push(&mut self, b: Bytes) {
        if b.is_empty() {
            return;
        }
        match &self.first {
            None if self.rest.is_empty() => self.first = Some(b),
            _ => {
                if let Some(f) = self.first.take() {
                    self.rest.reserve(f.len() + b.len());
                    self.rest.extend_from_slice(&f);
                }
                self.rest.extend_from_slice(&b);
            }
        }
    }

    /// Bytes waiting.
    pub fn len(&self) -> usize {
        self.first.as_ref().map_or(0, Bytes::len) + self.rest.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when more may be added.
    pub fn has_room(&self) -> bool {
        self.len() < Self::LIMIT
    }

    /// Takes what is waiting as one piece (`None` when nothing is).
    pub fn take(&mut self) -> Option<Bytes> {
        match self.first.take() {
            Some(b) => Some(b),
            None if self.rest.is_empty() => None,
            None => Some(self.rest.split().freeze()),
        }
    }
}

/// Serves one accepted connection: the socket's bytes go into `pipeline`, and the
/// pipeline's output `Data` goes back to the socket, until the output ends. `Data` that is
/// ready at the same time is written together ([`WriteGather`]).
pub async fn serve(stream: TcpStream, pipeline: Arc<Pipeline>, conn: ConnInfo) {
    serve_in(stream, pipeline, Context::with_conn(conn)).await;
}

/// [`serve`] in the context `cx` (made by the caller, with what it stores for the
/// connection, such as its listener's [`Drain`](crate::Drain)).
pub async fn serve_in(stream: TcpStream, pipeline: Arc<Pipeline>, cx: Context) {
    let (read, mut write) = stream.into_split();
    let mut out = pipeline.attach(Box::pin(TcpSource::new(read, Side::Downstream)), &cx);
    let mut gather = WriteGather::default();
    let mut next = None;
    loop {
        let ev = match next.take() {
            Some(ev) => ev,
            None => match out.next().await {
                Some(ev) => ev,
                None => break,
            },
        };
        match ev {
            Event::Data(b) => {
                gather.push(b);
                // Whatever else is ready now joins this write.
                while gather.has_room() {
                    match std::future::poll_fn(|cx| Poll::Ready(out.poll_next_unpin(cx))).await {
                        Poll::Ready(Some(Event::Data(b))) => gather.push(b),
                        Poll::Ready(ev) => {
                            next = Some(ev.unwrap_or(Event::END));
                            break;
                        }
                        Poll::Pending => break,
                    }
                }
                if let Some(b) = gather.take()
                    && let Err(e) = write.write_all(&b).await
                {
                    tracing::debug!(peer = ?cx.conn().peer, error = %e, "write to client failed");
                    return;
                }
            }
            Event::StreamEnd(Some(e)) => {
                tracing::debug!(peer = ?cx.conn().peer, error = %e, "stream ended with error");
                break;
            }
            Event::StreamEnd(None) => break,
            _ => {}
        }
    }
    let _ = write.shutdown().await;
}

/// The connection facts of an accepted socket. `transparent`: read the original
/// destination, asking `lookup` (if any) first, then `SO_ORIGINAL_DST`.
pub fn conn_info(
    stream: &TcpStream,
    peer: SocketAddr,
    worker: usize,
    transparent: bool,
    lookup: Option<&super::OriginalDst>,
) -> ConnInfo {
    let local = stream.local_addr().ok();
    let original_dst = if transparent {
        lookup
            .and_then(|f| f(peer))
            .or_else(|| {
                socket2::SockRef::from(stream)
                    .original_dst()
                    .ok()
                    .and_then(|a| a.as_socket())
            })
            .filter(|a| Some(*a) != local)
    } else {
        None
    };
    ConnInfo {
        peer: Some(peer),
        local,
        original_dst,
        tls: None,
        worker,
        datagram: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_passes_one_piece_and_joins_several() {
        let mut g = WriteGather::default();
        assert!(g.take().is_none());
        let one = Bytes::from_static(b"HTTP/1.1 200 OK\r\n\r\n");
        g.push(one.clone());
        g.push(Bytes::new());
        let got = g.take().unwrap_or_default();
        assert_eq!(got.as_ptr(), one.as_ptr(), "one piece is not copied");
        assert!(g.is_empty());

        g.push(one.clone());
        g.push(Bytes::from_static(b"ok"));
        g.push(Bytes::from_static(b"!"));
        assert_eq!(g.len(), one.len() + 3);
        assert_eq!(
            &g.take().unwrap_or_default()[..],
            b"HTTP/1.1 200 OK\r\n\r\nok!"
        );
        assert!(g.take().is_none());

        g.push(Bytes::from(vec![0u8; WriteGather::LIMIT]));
        assert!(!g.has_room());
    }
}
