//! Datagram I/O for UDP listeners: `recvmmsg`/`sendmmsg` on Linux (one system call for up
//! to [`BATCH`] datagrams), one datagram per call elsewhere.
//!
//! The socket is registered for read readiness only. A UDP send rarely blocks, and with
//! write interest every sent datagram's release would wake the worker's `epoll_wait` once
//! more (one wake-up and one system call per reply for nothing); a send that would block
//! is retried after [`SEND_RETRY`] instead.

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::task::{Context as TaskCx, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::unix::AsyncFd;

/// Datagrams per system call.
pub(crate) const BATCH: usize = 32;
/// The largest datagram received whole.
pub(crate) const MAX_DATAGRAM: usize = 65_536;
/// How soon a send that found the socket buffer full is tried again.
pub(crate) const SEND_RETRY: Duration = Duration::from_millis(1);

/// A UDP socket watched for read readiness only.
pub(crate) type Socket = AsyncFd<UdpSocket>;

/// Receive buffers for one socket: `BATCH` slots of `MAX_DATAGRAM` bytes in one
/// allocation. Pages are only made resident when a datagram touches them, so small
/// datagrams keep it at a few pages per slot.
pub(crate) struct RecvBatch {
    bufs: Vec<u8>,
    /// A batch shorter than `BATCH` means the socket is drained: readiness is cleared
    /// without the `recvmmsg` that would say `WouldBlock` (safe on a current-thread
    /// runtime, where no other thread runs the I/O driver in between).
    short_batch_drains: bool,
}

#[cfg(target_os = "linux")]
type Headers = nix::sys::socket::MultiHeaders<nix::sys::socket::SockaddrStorage>;

#[cfg(target_os = "linux")]
thread_local! {
    // The `recvmmsg`/`sendmmsg` headers hold raw pointers (so they are not `Send` and
    // cannot live in the task); each worker thread keeps one set.
    static RECV_HEADERS: std::cell::RefCell<Option<Headers>> = const { std::cell::RefCell::new(None) };
    static SEND_HEADERS: std::cell::RefCell<Option<Headers>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` with this thread's headers from `slot` (made on first use).
#[cfg(target_os = "linux")]
fn with_headers<R>(
    slot: &'static std::thread::LocalKey<std::cell::RefCell<Option<Headers>>>,
    f: impl FnOnce(&mut Headers) -> R,
) -> R {
    slot.with_borrow_mut(|h| f(h.get_or_insert_with(|| Headers::preallocate(BATCH, None))))
}

impl RecvBatch {
    pub(crate) fn new() -> Self {
        RecvBatch {
            bufs: vec![0; BATCH * MAX_DATAGRAM],
            short_batch_drains: tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread),
        }
    }

    /// Receives what is waiting (up to a batch) and appends each datagram, copied out at
    /// its own size, to `out`. `Ready(Ok(n))` with the count, `Pending` when nothing waits.
    pub(crate) fn poll_recv(
        &mut self,
        sock: &Socket,
        cx: &mut TaskCx<'_>,
        out: &mut Vec<(Bytes, SocketAddr)>,
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(sock.poll_read_ready(cx))?;
            let mut got = [(0usize, None::<SocketAddr>, false); BATCH];
            let r = guard.try_io(|s| recv_batch(s.get_ref(), &mut self.bufs, &mut got));
            match r {
                Ok(Ok(n)) => {
                    if n < BATCH && self.short_batch_drains {
                        guard.clear_ready();
                    }
                    for (i, &(len, from, trunc)) in got.iter().take(n).enumerate() {
                        let Some(from) = from else { continue };
                        if trunc {
                            tracing::debug!(%from, "udp datagram too large; dropped");
                            continue;
                        }
                        let at = i * MAX_DATAGRAM;
                        out.push((Bytes::copy_from_slice(&self.bufs[at..at + len]), from));
                    }
                    return Poll::Ready(Ok(n));
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                // `WouldBlock`: readiness is cleared; wait for the next.
                Err(_would_block) => continue,
            }
        }
    }
}

/// One `recvmmsg`: fills `got` with (length, sender, truncated) per datagram.
#[cfg(target_os = "linux")]
fn recv_batch(
    sock: &UdpSocket,
    bufs: &mut [u8],
    got: &mut [(usize, Option<SocketAddr>, bool); BATCH],
) -> io::Result<usize> {
    use std::io::IoSliceMut;
    use std::os::fd::AsRawFd;

    use nix::sys::socket::{MsgFlags, recvmmsg};

    with_headers(&RECV_HEADERS, |headers| {
        let mut slices: Vec<[IoSliceMut<'_>; 1]> = bufs
            .chunks_exact_mut(MAX_DATAGRAM)
            .map(|b| [IoSliceMut::new(b)])
            .collect();
        let res = recvmmsg(
            sock.as_raw_fd(),
            headers,
            slices.iter_mut(),
            MsgFlags::MSG_DONTWAIT,
            None,
        )
        .map_err(io::Error::from)?;
        let mut n = 0;
        for (slot, m) in got.iter_mut().zip(res) {
            let from = m.address.as_ref().and_then(to_std);
            *slot = (m.bytes, from, m.flags.contains(MsgFlags::MSG_TRUNC));
            n += 1;
        }
        Ok(n)
    })
}

/// One `recv_from` (no batching off Linux).
#[cfg(not(target_os = "linux"))]
fn recv_batch(
    sock: &UdpSocket,
    bufs: &mut [u8],
    got: &mut [(usize, Option<SocketAddr>, bool); BATCH],
) -> io::Result<usize> {
    let (n, from) = sock.recv_from(&mut bufs[..MAX_DATAGRAM])?;
    got[0] = (n, Some(from), false);
    Ok(1)
}

/// Sends the front of `queue` (up to a batch per call) until it is empty or the socket
/// buffer is full. A datagram the kernel refuses is dropped (UDP gives no delivery
/// promise) and logged. Returns how many left the queue, and whether the socket was full
/// (the caller then tries again after [`SEND_RETRY`]).
pub(crate) fn send(sock: &Socket, queue: &mut VecDeque<(Bytes, SocketAddr)>) -> (usize, bool) {
    let sock = sock.get_ref();
    let mut sent = 0;
    while !queue.is_empty() {
        let r = if queue.len() == 1 {
            // One datagram: a plain `sendto` is cheaper than setting up a batch.
            let (d, to) = &queue[0];
            sock.send_to(d, *to).map(|_| 1)
        } else {
            send_batch(sock, queue)
        };
        match r {
            Ok(n) => {
                queue.drain(..n.min(queue.len()));
                sent += n;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return (sent, true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // A batch reports an error for its first datagram only: drop that one.
                if let Some((_, to)) = queue.pop_front() {
                    tracing::debug!(%to, error = %e, "udp send failed");
                }
                sent += 1;
            }
        }
    }
    (sent, false)
}

/// One `sendmmsg` of the front of `queue`: how many the kernel took.
#[cfg(target_os = "linux")]
fn send_batch(sock: &UdpSocket, queue: &VecDeque<(Bytes, SocketAddr)>) -> io::Result<usize> {
    use std::io::IoSlice;
    use std::os::fd::AsRawFd;

    use nix::sys::socket::{MsgFlags, SockaddrStorage, sendmmsg};

    let n = queue.len().min(BATCH);
    let slices: Vec<[IoSlice<'_>; 1]> = queue
        .iter()
        .take(n)
        .map(|(d, _)| [IoSlice::new(d)])
        .collect();
    let addrs: Vec<Option<SockaddrStorage>> = queue
        .iter()
        .take(n)
        .map(|(_, to)| Some(SockaddrStorage::from(*to)))
        .collect();
    with_headers(&SEND_HEADERS, |headers| {
        let res = sendmmsg(
            sock.as_raw_fd(),
            headers,
            slices.iter(),
            addrs,
            [],
            MsgFlags::MSG_DONTWAIT,
        )
        .map_err(io::Error::from)?;
        Ok(res.count())
    })
}

/// One `send_to` (no batching off Linux).
#[cfg(not(target_os = "linux"))]
fn send_batch(sock: &UdpSocket, queue: &VecDeque<(Bytes, SocketAddr)>) -> io::Result<usize> {
    match queue.front() {
        Some((d, to)) => sock.send_to(d, *to).map(|_| 1),
        None => Ok(0),
    }
}

#[cfg(target_os = "linux")]
fn to_std(a: &nix::sys::socket::SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}
