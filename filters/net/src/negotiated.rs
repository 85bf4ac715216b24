//! [`Negotiated`]: what an upstream connection turned out to speak, for a filter that
//! chooses its protocol by it (`mux-http` with `protocol: auto`).

use std::sync::{Arc, Mutex};
use std::task::{Context as TaskCx, Poll, Waker};

/// What an upstream connection speaks once it is up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A plain TCP connection: no TLS, so no ALPN.
    Plain,
    /// TLS, with the protocol the server chose by ALPN (`None` when it chose none).
    Tls {
        /// The ALPN protocol id, such as `h2` or `http/1.1`.
        alpn: Option<Vec<u8>>,
    },
}

impl Outcome {
    /// Whether the server chose HTTP/2 by ALPN.
    pub fn is_h2(&self) -> bool {
        matches!(self, Outcome::Tls { alpn: Some(a) } if a.as_slice() == b"h2")
    }
}

#[derive(Default)]
enum State {
    #[default]
    Unset,
    /// A `connect-tls` is on the way: the TCP connection alone decides nothing.
    TlsPending,
    Done(Outcome),
}

#[derive(Default)]
struct Inner {
    state: State,
    waker: Option<Waker>,
}

/// A signal from `connect-tls` and `connect` to whoever put it in the stream's context:
/// what the connection speaks once it is up. `connect-tls` says it is coming when it is
/// attached and tells the ALPN result when its handshake is done; `connect` tells
/// [`Outcome::Plain`] when its TCP connection is up and no TLS layer said it was coming.
///
/// ```
/// use flowgate_filters_net::{Negotiated, NegotiatedOutcome};
/// let n = Negotiated::default();
/// n.tls_started();
/// n.connected(); // the TCP connection under the TLS one: not the answer yet
/// assert_eq!(n.outcome(), None);
/// n.tls_done(Some(b"h2".to_vec()));
/// assert!(n.outcome().is_some_and(|o| o.is_h2()));
/// ```
#[derive(Clone, Default)]
pub struct Negotiated(Arc<Mutex<Inner>>);

impl Negotiated {
    fn set(&self, f: impl FnOnce(&mut State)) {
        let waker = {
            let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut g.state);
            match g.state {
                State::Done(_) => g.waker.take(),
                _ => None,
            }
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// A TLS layer is on the way (called by `connect-tls` when attached).
    pub fn tls_started(&self) {
        self.set(|s| {
            if matches!(s, State::Unset) {
                *s = State::TlsPending;
            }
        });
    }

    /// The TCP connection is up (called by `connect`): [`Outcome::Plain`] unless a TLS
    /// layer is on the way.
    pub fn connected(&self) {
        self.set(|s| {
            if matches!(s, State::Unset) {
                *s = State::Done(Outcome::Plain);
            }
        });
    }

    /// The TLS handshake is done with `alpn` (called by `connect-tls`).
    pub fn tls_done(&self, alpn: Option<Vec<u8>>) {
        self.set(|s| {
            if !matches!(s, State::Done(_)) {
                *s = State::Done(Outcome::Tls { alpn });
            }
        });
    }

    /// The outcome, once known.
    pub fn outcome(&self) -> Option<Outcome> {
        match &self.0.lock().unwrap_or_else(|p| p.into_inner()).state {
            State::Done(o) => Some(o.clone()),
            _ => None,
        }
    }

    /// Ready with the outcome once it is known.
    pub fn poll_outcome(&self, cx: &mut TaskCx<'_>) -> Poll<Outcome> {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let State::Done(o) = &g.state {
            return Poll::Ready(o.clone());
        }
        g.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl std::fmt::Debug for Negotiated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Negotiated({:?})", self.outcome())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;

    #[test]
    fn plain_tcp_is_known_when_connected() {
        let n = Negotiated::default();
        assert_eq!(n.outcome(), None);
        n.connected();
        assert_eq!(n.outcome(), Some(Outcome::Plain));
        // A late TLS layer changes nothing once decided.
        n.tls_started();
        n.tls_done(None);
        assert_eq!(n.outcome(), Some(Outcome::Plain));
    }

    #[test]
    fn tls_waits_for_the_handshake_and_wakes_the_waiter() {
        let n = Negotiated::default();
        n.tls_started();
        n.connected();
        let woken = Arc::new(std::sync::atomic::AtomicBool::new(false));
        struct Flag(Arc<std::sync::atomic::AtomicBool>);
        impl std::task::Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let waker = Waker::from(Arc::new(Flag(woken.clone())));
        let mut cx = TaskCx::from_waker(&waker);
        assert!(n.poll_outcome(&mut cx).is_pending());
        n.tls_done(Some(b"http/1.1".to_vec()));
        assert!(woken.load(std::sync::atomic::Ordering::SeqCst));
        match n.poll_outcome(&mut cx) {
            Poll::Ready(o) => {
                assert!(!o.is_h2());
                assert_eq!(
                    o,
                    Outcome::Tls {
                        alpn: Some(b"http/1.1".to_vec())
                    }
                );
            }
            Poll::Pending => panic!("decided"),
        }
    }
}
