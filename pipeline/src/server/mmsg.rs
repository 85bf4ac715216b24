//! Batched datagram I/O: `recvmmsg`/`sendmmsg` on Linux (one system call for up to
//! [`BATCH`] datagrams), one datagram per call elsewhere.

use std::io;
use std::net::SocketAddr;
use std::task::{Context as TaskCx, Poll};

use bytes::Bytes;
use tokio::net::UdpSocket;

/// Datagrams per system call.
pub(crate) const BATCH: usize = 32;
/// The largest datagram received whole.
pub(crate) const MAX_DATAGRAM: usize = 65_536;

/// Receive buffers for one socket: `BATCH` slots of `MAX_DATAGRAM` bytes in one
/// allocation. Pages are only made resident when a datagram touches them, so small
/// datagrams keep it at a few pages per slot.
pub(crate) struct RecvBatch {
    bufs: Vec<u8>,
}

impl RecvBatch {
    pub(crate) fn new() -> Self {
        RecvBatch {
            bufs: vec![0; BATCH * MAX_DATAGRAM],
        }
    }

    /// Receives what is waiting (up to a batch) and appends each datagram, copied out at
    /// its own size, to `out`. `Ready(Ok(n))` with the count, `Pending` when nothing waits.
    pub(crate) fn poll_recv(
        &mut self,
        sock: &UdpSocket,
        cx: &mut TaskCx<'_>,
        out: &mut Vec<(Bytes, SocketAddr)>,
    ) -> Poll<io::Result<usize>> {
        #[cfg(target_os = "linux")]
        {
            use std::io::IoSliceMut;
            use std::os::fd::AsRawFd;

            use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg};
            use tokio::io::Interest;

            loop {
                if sock.poll_recv_ready(cx)?.is_pending() {
                    return Poll::Pending;
                }
                let mut got = [(0usize, None::<SocketAddr>, false); BATCH];
                // The headers hold raw pointers (not `Send`), so they are made per call.
                let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
                let r = sock.try_io(Interest::READABLE, || {
                    let mut slices: Vec<[IoSliceMut<'_>; 1]> = self
                        .bufs
                        .chunks_exact_mut(MAX_DATAGRAM)
                        .map(|b| [IoSliceMut::new(b)])
                        .collect();
                    let res = recvmmsg(
                        sock.as_raw_fd(),
                        &mut headers,
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
                });
                match r {
                    Ok(n) => {
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
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            let mut rb = tokio::io::ReadBuf::new(&mut self.bufs[..MAX_DATAGRAM]);
            match sock.poll_recv_from(cx, &mut rb) {
                Poll::Ready(Ok(from)) => {
                    out.push((Bytes::copy_from_slice(rb.filled()), from));
                    Poll::Ready(Ok(1))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        }
    }
}

/// Sends the front of `queue` (up to a batch per call) until it is empty or the socket is
/// full. A datagram the kernel refuses is dropped (UDP gives no delivery promise) and
/// logged. True if any left the queue.
pub(crate) fn poll_send(
    sock: &UdpSocket,
    cx: &mut TaskCx<'_>,
    queue: &mut std::collections::VecDeque<(Bytes, SocketAddr)>,
) -> bool {
    let mut any = false;
    #[cfg(target_os = "linux")]
    {
        use std::io::IoSlice;
        use std::os::fd::AsRawFd;

        use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, sendmmsg};
        use tokio::io::Interest;

        while !queue.is_empty() {
            if queue.len() == 1 {
                // One datagram: a plain `sendto` is cheaper than setting up a batch.
                break;
            }
            match sock.poll_send_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => {
                    tracing::debug!(error = %e, "udp socket error");
                }
                Poll::Pending => return any,
            }
            let n = queue.len().min(BATCH);
            let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(n, None);
            let r = sock.try_io(Interest::WRITABLE, || {
                let (a, b) = queue.as_slices();
                let slices: Vec<[IoSlice<'_>; 1]> = a
                    .iter()
                    .chain(b)
                    .take(n)
                    .map(|(d, _)| [IoSlice::new(d)])
                    .collect();
                let addrs: Vec<Option<SockaddrStorage>> = a
                    .iter()
                    .chain(b)
                    .take(n)
                    .map(|(_, to)| Some(SockaddrStorage::from(*to)))
                    .collect();
                let res = sendmmsg(
                    sock.as_raw_fd(),
                    &mut headers,
                    slices.iter(),
                    addrs,
                    [],
                    MsgFlags::MSG_DONTWAIT,
                )
                .map_err(io::Error::from)?;
                Ok(res.count())
            });
            match r {
                Ok(sent) => {
                    any |= sent > 0;
                    queue.drain(..sent.min(queue.len()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    // sendmmsg reports an error only for the first datagram: drop it.
                    if let Some((_, to)) = queue.pop_front() {
                        tracing::debug!(%to, error = %e, "udp send failed");
                    }
                    any = true;
                }
            }
        }
    }
    while let Some((d, to)) = queue.front() {
        match sock.poll_send_to(cx, d, *to) {
            Poll::Ready(r) => {
                if let Err(e) = r {
                    tracing::debug!(%to, error = %e, "udp send failed");
                }
                queue.pop_front();
                any = true;
            }
            Poll::Pending => break,
        }
    }
    any
}

#[cfg(target_os = "linux")]
fn to_std(a: &nix::sys::socket::SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}
