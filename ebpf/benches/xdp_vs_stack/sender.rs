//! The real-traffic generator: prepared Ethernet frames sent out of one interface by an
//! AF_PACKET socket (qdisc bypassed), `BATCH` frames per `sendmmsg` call, bounded in time
//! and count.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::{Context, Result};

/// Frames per `sendmmsg` call.
const BATCH: usize = 256;

/// What a run of [`blast`] did.
pub struct Sent {
    /// Frames the socket took.
    pub frames: u64,
    /// Frames the interface refused (ENOBUFS: the veth's queue was full).
    pub refused: u64,
    /// From the first call to the last return.
    pub elapsed: Duration,
}

/// Sends `frames` round-robin out of `ifname` (in the calling thread's namespace) until
/// `duration` has passed or `max_frames` have been offered.
#[allow(unsafe_code)]
pub fn blast(
    ifname: &str,
    frames: &[[u8; 60]],
    duration: Duration,
    max_frames: u64,
) -> Result<Sent> {
    if frames.is_empty() {
        return Err("no frames to send".into());
    }
    let ifindex = nix::net::if_::if_nametoindex(ifname).ctx(format!("interface {ifname}"))?;
    // SAFETY: socket(2) with constant arguments; the result is checked before use.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(format!("AF_PACKET socket: {}", io::Error::last_os_error()));
    }
    // SAFETY: `raw` is a descriptor just opened by this thread; nothing else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let fd = sock.as_raw_fd();

    // Protocol 0: the socket only sends, so it takes no copies of received frames.
    // SAFETY: sockaddr_ll is plain old data, for which all-zero bytes are a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_ifindex = i32::try_from(ifindex).ctx("ifindex")?;
    // SAFETY: the pointer and length describe `sll`, which lives across the call.
    let rc = unsafe {
        libc::bind(
            fd,
            (&raw const sll).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(format!(
            "bind AF_PACKET socket to {ifname}: {}",
            io::Error::last_os_error()
        ));
    }
    let one: libc::c_int = 1;
    // SAFETY: PACKET_QDISC_BYPASS takes an int; the pointer and length describe `one`.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            (&raw const one).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(format!(
            "PACKET_QDISC_BYPASS: {}",
            io::Error::last_os_error()
        ));
    }

    // One message per frame, each with one iovec into `frames` (which the kernel only
    // reads). The iovecs must not move while `msgs` points at them: both are built once.
    let mut iov: Vec<libc::iovec> = frames
        .iter()
        .map(|f| libc::iovec {
            iov_base: f.as_ptr().cast_mut().cast(),
            iov_len: f.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iov
        .iter_mut()
        .map(|v| {
            // SAFETY: mmsghdr is plain old data; all-zero is a valid (empty) message.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = v;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();

    let len = msgs.len();
    let mut pos = 0usize;
    let mut sent = 0u64;
    let mut refused = 0u64;
    let start = Instant::now();
    while sent + refused < max_frames && start.elapsed() < duration {
        crate::check_interrupted()?;
        let n = BATCH.min(len - pos);
        let Some(batch) = msgs.get_mut(pos..pos + n) else {
            return Err(format!("bad batch {pos}+{n} of {len}"));
        };
        // SAFETY: `batch` is `n` initialised mmsghdrs, each pointing to one live iovec
        // over a frame in `frames`; all outlive the call, and the kernel writes only
        // their `msg_len`.
        let rc = unsafe { libc::sendmmsg(fd, batch.as_mut_ptr(), n as libc::c_uint, 0) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                // The frame at `pos` was dropped by a full queue: count it, go on.
                Some(libc::ENOBUFS) | Some(libc::EAGAIN) => {
                    refused += 1;
                    pos = (pos + 1) % len;
                }
                Some(libc::EINTR) => {}
                _ => return Err(format!("sendmmsg on {ifname}: {e}")),
            }
            continue;
        }
        let done = rc as usize;
        sent += done as u64;
        pos = (pos + done) % len;
    }
    Ok(Sent {
        frames: sent,
        refused,
        elapsed: start.elapsed(),
    })
}
