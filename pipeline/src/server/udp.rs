//! UDP: each datagram is a message; datagrams from one peer form one stream.
//!
//! One task per socket does everything: it receives datagrams, feeds them to the per-peer
//! sessions, polls the sessions' outputs and sends the replies. A session is a pipeline
//! stream polled inline (no task, no channel, no timer of its own), so a query costs one
//! receive, one send and a few calls, and an idle peer costs a map entry and its pipeline.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskCx, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_core::Stream;
use futures_util::StreamExt;
use futures_util::stream::SelectAll;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

use super::mmsg::{self, MAX_DATAGRAM, RecvBatch};
use super::{Listener, Live, LiveGuard, Slot};
use crate::feed::{FeedSender, feed};
use crate::{ConnInfo, Context, Event, Filter, Head, Tail};

/// The head of a datagram message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Datagram {
    /// Who sent it (or, on output, who it goes to).
    pub peer: SocketAddr,
    /// The local address it arrived on.
    pub local: SocketAddr,
}

/// Datagrams a peer's stream may have waiting before more from that peer are dropped (a
/// UDP sender cannot be slowed down, so its queue must be bounded).
const MAX_QUEUED_DATAGRAMS: usize = 128;
/// Replies that may wait for the socket before the sessions stop being polled (their
/// output then waits in the pipelines, which slows them down).
const MAX_QUEUED_REPLIES: usize = 1024;
/// Turns of work before the task yields to the other tasks of the worker.
const TURNS_PER_YIELD: usize = 16;

/// A peer with a session.
struct Peer {
    tx: FeedSender,
    /// Which session (a peer that comes back after its session ended gets a new one).
    id: u64,
    /// The last datagram from this peer.
    last: Instant,
}

impl Peer {
    fn ended(&self) -> bool {
        self.tx.is_closed() || self.tx.is_receiver_gone()
    }
}

/// What a session yields.
enum Out {
    /// A datagram to send.
    Reply(Bytes, SocketAddr),
    /// The session is over.
    Ended(u64, SocketAddr),
}

/// A session: one peer's pipeline output turned into datagrams, one per message.
struct Session {
    out: crate::Events,
    to: SocketAddr,
    id: u64,
    pending: BytesMut,
    /// A message of one `Data` (the usual case) is sent as it is, without a copy.
    single: Option<Bytes>,
    in_message: bool,
    done: bool,
    _guard: LiveGuard,
    _slot: Slot,
}

impl Stream for Session {
    type Item = Out;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskCx<'_>) -> Poll<Option<Out>> {
        let s = &mut *self;
        if s.done {
            return Poll::Ready(None);
        }
        loop {
            let ev = match s.out.poll_next_unpin(cx) {
                Poll::Ready(ev) => ev.unwrap_or(Event::END),
                Poll::Pending => return Poll::Pending,
            };
            match ev {
                Event::MessageStart(_) => {
                    s.in_message = true;
                    s.pending.clear();
                    s.single = None;
                }
                Event::Data(b) if s.in_message => {
                    if s.pending.is_empty() && s.single.is_none() {
                        s.single = Some(b);
                    } else {
                        if let Some(first) = s.single.take() {
                            s.pending.extend_from_slice(&first);
                        }
                        s.pending.extend_from_slice(&b);
                    }
                }
                Event::Data(b) => return Poll::Ready(Some(Out::Reply(b, s.to))),
                Event::MessageEnd(_) => {
                    s.in_message = false;
                    let d = match s.single.take() {
                        Some(d) => d,
                        None => s.pending.split().freeze(),
                    };
                    return Poll::Ready(Some(Out::Reply(d, s.to)));
                }
                Event::StreamEnd(_) => {
                    s.done = true;
                    return Poll::Ready(Some(Out::Ended(s.id, s.to)));
                }
            }
        }
    }
}

/// Receives datagrams, runs the per-peer sessions and sends their replies until `stop`
/// fires (or its sender is dropped); then it stops receiving, ends every session's input and
/// returns once the sessions have finished (the worker's drain deadline bounds that).
pub(crate) async fn serve(
    sock: mmsg::Socket,
    listener: Arc<Listener>,
    worker: usize,
    live: Live,
    stop: oneshot::Receiver<()>,
) {
    let local = sock.get_ref().local_addr().ok();
    let idle = listener.config.udp_idle_timeout;
    // Idle sessions are found by a sweep, so a session ends between `idle` and
    // `idle + sweep` after its last datagram.
    let sweep = (idle / 4).clamp(Duration::from_millis(5), Duration::from_secs(1));
    let mut st = State {
        sock,
        listener,
        worker,
        local,
        live,
        idle,
        sweep,
        stop,
        stopping: false,
        peers: HashMap::new(),
        sessions: SelectAll::new(),
        replies: VecDeque::new(),
        // Receive buffers, reused: each datagram is copied out at its own size, so a small
        // datagram held by a slow session never pins 64 KiB.
        batch: RecvBatch::new(),
        received: Vec::with_capacity(mmsg::BATCH),

        next_id: 0,
        timer: Box::pin(tokio::time::sleep(sweep)),
        retry: None,
    };
    std::future::poll_fn(|cx| st.poll(cx)).await;
}

struct State {
    sock: mmsg::Socket,
    listener: Arc<Listener>,
    worker: usize,
    local: Option<SocketAddr>,
    live: Live,
    idle: Duration,
    sweep: Duration,
    stop: oneshot::Receiver<()>,
    stopping: bool,
    peers: HashMap<SocketAddr, Peer>,
    sessions: SelectAll<Session>,
    replies: VecDeque<(Bytes, SocketAddr)>,
    batch: RecvBatch,
    received: Vec<(Bytes, SocketAddr)>,
    next_id: u64,
    timer: Pin<Box<Sleep>>,
    /// Set while replies wait for room in the socket buffer.
    retry: Option<Pin<Box<Sleep>>>,
}

impl State {
    fn poll(&mut self, cx: &mut TaskCx<'_>) -> Poll<()> {
        if !self.stopping && Pin::new(&mut self.stop).poll(cx).is_ready() {
            self.stopping = true;
            // Dropping a sender ends its stream; the sessions finish what they have.
            for (_, p) in self.peers.drain() {
                p.tx.push(Event::END);
            }
        }
        self.poll_timer(cx);
        for _ in 0..TURNS_PER_YIELD {
            let mut progress = self.flush(cx);
            if !self.stopping {
                progress |= self.receive(cx);
            }
            progress |= self.poll_sessions(cx);
            progress |= self.flush(cx);
            if self.stopping && self.sessions.is_empty() && self.replies.is_empty() {
                return Poll::Ready(());
            }
            if !progress {
                return Poll::Pending;
            }
        }
        // Busy: let the worker's other tasks run, and come back.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Receives up to a batch of datagrams; true if any came.
    fn receive(&mut self, cx: &mut TaskCx<'_>) -> bool {
        let mut got = std::mem::take(&mut self.received);
        let r = self.batch.poll_recv(&self.sock, cx, &mut got);
        // One clock read per batch.
        let now = Instant::now();
        for (data, from) in got.drain(..) {
            self.dispatch(data, from, now);
        }
        self.received = got;
        match r {
            Poll::Ready(Ok(_)) => true,
            Poll::Ready(Err(e)) => {
                // E.g. an ICMP error from an earlier send; the socket is still good.
                tracing::debug!(error = %e, "udp receive failed");
                true
            }
            Poll::Pending => false,
        }
    }

    fn dispatch(&mut self, data: Bytes, from: SocketAddr, now: Instant) {
        if self.peers.get(&from).is_none_or(Peer::ended) {
            // A peer whose session is ending still holds its slot until the session is
            // gone, so a returning peer can be refused for a moment when the listener is full.
            let Some(slot) = self
                .listener
                .conns
                .take(self.listener.config.max_connections)
            else {
                tracing::debug!(%from, "udp session limit of the listener reached; datagram dropped");
                return;
            };
            self.next_id += 1;
            let id = self.next_id;
            let (tx, rx) = feed();
            let conn = ConnInfo {
                peer: Some(from),
                local: self.local,
                worker: self.worker,
                datagram: true,
                ..ConnInfo::default()
            };
            let cx = Context::with_conn(conn);
            let out = self.listener.pipeline.load_full().attach(Box::pin(rx), &cx);
            self.sessions.push(Session {
                out,
                to: from,
                id,
                pending: BytesMut::new(),
                single: None,
                in_message: false,
                done: false,
                _guard: self.live.enter(),
                _slot: slot,
            });
            self.peers.insert(from, Peer { tx, id, last: now });
        }
        let Some(peer) = self.peers.get_mut(&from) else {
            return;
        };
        peer.last = now;
        // Three events per datagram.
        if peer.tx.len() >= 3 * MAX_QUEUED_DATAGRAMS {
            tracing::debug!(%from, "udp peer queue full; datagram dropped");
            return;
        }
        let head = Head::new(Datagram {
            peer: from,
            local: self.local.unwrap_or(from),
        });
        peer.tx.push_all([
            Event::MessageStart(head),
            Event::Data(data),
            Event::MessageEnd(Tail::none()),
        ]);
    }

    /// Collects replies from the sessions that have output; true if any did.
    fn poll_sessions(&mut self, cx: &mut TaskCx<'_>) -> bool {
        let mut any = false;
        while self.replies.len() < MAX_QUEUED_REPLIES {
            match self.sessions.poll_next_unpin(cx) {
                Poll::Ready(Some(Out::Reply(d, to))) => {
                    any = true;
                    if d.len() > MAX_DATAGRAM {
                        tracing::debug!(%to, len = d.len(), "udp reply too large; dropped");
                        continue;
                    }
                    self.replies.push_back((d, to));
                }
                Poll::Ready(Some(Out::Ended(id, to))) => {
                    any = true;
                    if self.peers.get(&to).is_some_and(|p| p.id == id) {
                        self.peers.remove(&to);
                    }
                }
                Poll::Ready(None) | Poll::Pending => break,
            }
        }
        any
    }

    /// Sends queued replies until the socket buffer is full; true if any was sent.
    fn flush(&mut self, cx: &mut TaskCx<'_>) -> bool {
        if self.replies.is_empty() {
            return false;
        }
        if let Some(t) = &mut self.retry {
            if t.as_mut().poll(cx).is_pending() {
                return false;
            }
            self.retry = None;
        }
        let (sent, full) = mmsg::send(&self.sock, &mut self.replies);
        if full {
            let mut t = Box::pin(tokio::time::sleep(mmsg::SEND_RETRY));
            // Registers the wake-up.
            let _ = t.as_mut().poll(cx);
            self.retry = Some(t);
        }
        sent > 0
    }

    /// Ends the sessions of peers idle for longer than the idle timeout.
    fn poll_timer(&mut self, cx: &mut TaskCx<'_>) {
        while self.timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            if !self.stopping {
                for p in self.peers.values() {
                    if now.saturating_duration_since(p.last) >= self.idle && !p.tx.is_closed() {
                        p.tx.push(Event::END);
                    }
                }
            }
            self.timer.as_mut().reset(now + self.sweep);
        }
    }
}
