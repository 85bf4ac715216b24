//! PINGs: keep-alive probes, and the probe sent when a server says GOAWAY.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskCx, Poll};
use std::time::Duration;

use h2::{Ping, PingPong};
use tokio::time::{Instant, Sleep};

use super::H2ClientError;

/// The PINGs of one connection: keep-alive ones every `interval` (when configured), and
/// one as soon as the server says GOAWAY while requests are in flight. Either must be
/// answered within `timeout`, or the connection is taken for dead.
///
/// The GOAWAY probe is there for servers that stop serving a connection when they say
/// GOAWAY although its last stream id promises to finish the streams below it: hypercorn
/// (python-h2's `close_connection` leaves its connection state machine closed) can then
/// neither answer those streams nor take any frame, and only closes the connection at its
/// keep-alive timeout (5 s). The PING makes such a server fail the connection at once
/// (GOAWAY PROTOCOL_ERROR), so the requests can be sent again (see [`send_bodiless`]); a
/// server that keeps its promise just answers it.
///
/// [`send_bodiless`]: super::request::send_bodiless
pub(super) struct Pinger {
    pings: PingPong,
    interval: Option<Duration>,
    timeout: Duration,
    timer: Pin<Box<Sleep>>,
    waiting: bool,
}

impl Pinger {
    pub(super) fn new(pings: PingPong, interval: Option<Duration>, timeout: Duration) -> Self {
        Pinger {
            pings,
            interval,
            timeout,
            timer: Box::pin(tokio::time::sleep(interval.unwrap_or(timeout))),
            waiting: false,
        }
    }

    /// Sends a PING now unless one is already waiting for its answer.
    pub(super) fn probe(&mut self) -> Result<(), H2ClientError> {
        if self.waiting {
            return Ok(());
        }
        self.pings.send_ping(Ping::opaque())?;
        self.waiting = true;
        self.timer.as_mut().reset(Instant::now() + self.timeout);
        Ok(())
    }

    /// Ready with an error when a PING went unanswered.
    pub(super) fn poll(&mut self, task: &mut TaskCx<'_>) -> Poll<H2ClientError> {
        loop {
            if self.waiting {
                match self.pings.poll_pong(task) {
                    Poll::Ready(Ok(_)) => {
                        self.waiting = false;
                        if let Some(i) = self.interval {
                            self.timer.as_mut().reset(Instant::now() + i);
                        }
                        continue;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(e.into()),
                    Poll::Pending => {}
                }
            } else if self.interval.is_none() {
                return Poll::Pending;
            }
            if self.timer.as_mut().poll(task).is_pending() {
                return Poll::Pending;
            }
            if self.waiting {
                return Poll::Ready(H2ClientError::KeepaliveTimeout(self.timeout));
            }
            if let Err(e) = self.probe() {
                return Poll::Ready(e);
            }
        }
    }
}
