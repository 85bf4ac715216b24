//! Events as a byte stream for `h2`: the server side (client bytes in, reply bytes out) and
//! the client side (an upstream sub-pipeline's output in, its input out) both drive an
//! `h2` connection over one of these.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskCx, Poll};

use bytes::Bytes;
use flowgate_pipeline::feed::{FeedReceiver, FeedSender};
use flowgate_pipeline::{Event, Events, StreamError};
use futures_core::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Output events queued before writes wait for the consumer.
const MAX_QUEUED_WRITES: usize = 16;

/// `input`'s `Data` events as reads; writes as `Data` events pushed into `tx`.
pub(crate) struct EventIo {
    input: Events,
    rbuf: Bytes,
    eof: bool,
    tx: Arc<FeedSender>,
    /// Where the input's own error is kept, when someone wants it (the upstream side
    /// reports a refused connect as such, not as a broken pipe).
    failure: Option<Arc<Mutex<Option<StreamError>>>>,
}

impl EventIo {
    pub(crate) fn new(input: Events, tx: Arc<FeedSender>) -> Self {
        EventIo {
            input,
            rbuf: Bytes::new(),
            eof: false,
            tx,
            failure: None,
        }
    }

    /// Keeps the input's error in `failure`.
    pub(crate) fn keep_failure(mut self, failure: Arc<Mutex<Option<StreamError>>>) -> Self {
        self.failure = Some(failure);
        self
    }

    fn set_failure(&self, e: StreamError) {
        if let Some(f) = &self.failure {
            *f.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
        }
    }

    /// The consumer stopped taking bytes: keep the input's error, if it has one ready, as
    /// the reason (what came before it is kept for reading).
    fn note_failure(&mut self, cx: &mut TaskCx<'_>) {
        if self.failure.is_none() {
            return;
        }
        while !self.eof && self.rbuf.is_empty() {
            match self.input.as_mut().poll_next(cx) {
                Poll::Ready(Some(Event::Data(b))) => self.rbuf = b,
                Poll::Ready(Some(Event::StreamEnd(Some(e)))) => {
                    self.eof = true;
                    self.set_failure(e);
                }
                Poll::Ready(Some(Event::StreamEnd(None)) | None) => self.eof = true,
                Poll::Ready(Some(_)) => {}
                Poll::Pending => return,
            }
        }
    }
}

impl AsyncRead for EventIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskCx<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while this.rbuf.is_empty() && !this.eof {
            match this.input.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Event::Data(b))) => this.rbuf = b,
                Poll::Ready(Some(Event::StreamEnd(Some(e)))) => {
                    this.eof = true;
                    this.set_failure(e.clone());
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionReset, e)));
                }
                Poll::Ready(Some(Event::StreamEnd(None)) | None) => this.eof = true,
                Poll::Ready(Some(_)) => {}
            }
        }
        let n = this.rbuf.len().min(buf.remaining());
        buf.put_slice(&this.rbuf.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for EventIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskCx<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.tx.is_receiver_gone() || self.tx.is_closed() {
            self.note_failure(cx);
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if self.tx.len() >= MAX_QUEUED_WRITES {
            if self.tx.poll_drained(cx, MAX_QUEUED_WRITES / 2).is_pending() {
                return Poll::Pending;
            }
            if self.tx.is_receiver_gone() {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
        }
        self.tx.push(Event::Data(Bytes::copy_from_slice(buf)));
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut TaskCx<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut TaskCx<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A stream made by a future that pushes its events into a feed (an HTTP/2 connection on
/// the server side, a request exchange on the client side): polled inline by whoever
/// reads the stream, no task of its own.
pub(crate) struct Inline {
    fut: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    rx: FeedReceiver,
}

impl Inline {
    /// `fut` writes into the feed that `rx` reads.
    pub(crate) fn new(fut: impl Future<Output = ()> + Send + 'static, rx: FeedReceiver) -> Self {
        Inline {
            fut: Some(Box::pin(fut)),
            rx,
        }
    }
}

impl Stream for Inline {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskCx<'_>) -> Poll<Option<Event>> {
        let this = &mut *self;
        loop {
            if let Poll::Ready(ev) = Pin::new(&mut this.rx).poll_next(cx) {
                return Poll::Ready(ev);
            }
            let Some(fut) = this.fut.as_mut() else {
                return Poll::Pending;
            };
            match fut.as_mut().poll(cx) {
                // Finished: what it pushed last (at least the end) is in `rx`.
                Poll::Ready(()) => this.fut = None,
                Poll::Pending => return Pin::new(&mut this.rx).poll_next(cx),
            }
        }
    }
}
