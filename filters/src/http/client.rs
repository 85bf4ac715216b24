//! The client side of HTTP/1: request messages in, encoded to a sub-pipeline (usually
//! `[connect]`), whose bytes come back decoded as response messages.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context as TaskCx, Poll};

use bytes::BytesMut;
use flowgate_http::h1::{
    Frame, Framing, Limits, ResponseDecoder, encode_chunk, encode_last_chunk, encode_request_head,
};
use flowgate_pipeline::feed::{FeedSender, feed};
use flowgate_pipeline::{
    Context, Description, ErrorKind, Event, Events, Filter, Head, Side, StreamError, SubPipeline,
    Tail,
};
use futures_core::Stream;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::request;

use super::codec::{Trailers, protocol_error};

/// Encodes request messages into the sub-pipeline and decodes its bytes as responses.
///
/// A request's body is written as its head says: raw with Content-Length, chunked with
/// `Transfer-Encoding: chunked`, and not at all with neither. Interim 1xx responses (other
/// than 101) are dropped, so each request gets exactly one response message.
pub(crate) struct ClientCodec {
    pub(crate) sub: SubPipeline,
    pub(crate) limits: Limits,
}

impl Filter for ClientCodec {
    fn describe(&self) -> Description {
        Description::filter("http-client-codec").with_sub(self.sub.name())
    }

    fn attach(&self, input: Events, cx: &Context) -> Events {
        let (tx, rx) = feed();
        let out = self.sub.attach(Box::pin(rx), cx);
        Box::pin(ClientStream {
            input,
            input_done: false,
            tx,
            out,
            decoder: ResponseDecoder::new(self.limits),
            chunked: false,
            skipping_interim: false,
            buf: BytesMut::new(),
            wbuf: BytesMut::new(),
            ready: VecDeque::new(),
            finished: false,
        })
    }

    // The sub-pipeline is bound through `MuxHttp::subs`, which hands out the same reference.
}

struct ClientStream {
    input: Events,
    input_done: bool,
    tx: FeedSender,
    out: Events,
    decoder: ResponseDecoder,
    chunked: bool,
    skipping_interim: bool,
    buf: BytesMut,
    wbuf: BytesMut,
    ready: VecDeque<Event>,
    finished: bool,
}

const MAX_FEED: usize = 64;

impl ClientStream {
    fn encode(&mut self, ev: Event) {
        match ev {
            Event::MessageStart(head) => {
                let Some(parts) = head.get::<request::Parts>() else {
                    self.fail(StreamError::new(ErrorKind::Internal, Side::Internal));
                    return;
                };
                self.decoder.expect(parts.method.clone());
                self.chunked = !parts.headers.contains_key(CONTENT_LENGTH)
                    && parts.headers.get(TRANSFER_ENCODING).is_some();
                encode_request_head(parts, &mut self.wbuf);
            }
            Event::Data(b) => {
                if self.chunked {
                    encode_chunk(&b, &mut self.wbuf);
                } else {
                    self.flush();
                    self.tx.push(Event::Data(b));
                }
            }
            Event::MessageEnd(t) => {
                if self.chunked {
                    encode_last_chunk(t.get::<Trailers>(), &mut self.wbuf);
                }
                self.flush();
            }
            Event::StreamEnd(e) => {
                self.flush();
                self.input_done = true;
                self.tx.push(Event::StreamEnd(e));
            }
        }
    }

    fn flush(&mut self) {
        if !self.wbuf.is_empty() {
            self.tx.push(Event::Data(self.wbuf.split().freeze()));
        }
    }

    fn fail(&mut self, e: StreamError) {
        self.finished = true;
        self.ready.push_back(Event::StreamEnd(Some(e)));
    }

    fn decode(&mut self, eof: bool) {
        loop {
            let r = if eof {
                self.decoder.decode_eof(&mut self.buf)
            } else {
                self.decoder.decode(&mut self.buf)
            };
            match r {
                Ok(Some(Frame::Head(parts, framing))) => {
                    if parts.status.is_informational() && framing != Framing::Tunnel {
                        self.skipping_interim = true;
                        continue;
                    }
                    self.ready.push_back(Event::MessageStart(Head::new(parts)));
                }
                Ok(Some(Frame::Data(b))) => {
                    if !self.skipping_interim {
                        self.ready.push_back(Event::Data(b));
                    }
                }
                Ok(Some(Frame::End(t))) => {
                    if std::mem::take(&mut self.skipping_interim) {
                        continue;
                    }
                    let tail = t.map_or_else(Tail::none, Tail::new);
                    self.ready.push_back(Event::MessageEnd(tail));
                }
                Ok(None) => {
                    if eof {
                        self.finished = true;
                        self.ready.push_back(Event::END);
                    }
                    return;
                }
                Err(e) => {
                    self.finished = true;
                    self.ready.push_back(protocol_error(e, Side::Upstream));
                    return;
                }
            }
        }
    }
}

impl Stream for ClientStream {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, task: &mut TaskCx<'_>) -> Poll<Option<Event>> {
        let this = &mut *self;
        loop {
            if let Some(ev) = this.ready.pop_front() {
                return Poll::Ready(Some(ev));
            }
            if this.finished {
                return Poll::Ready(None);
            }
            let mut progressed = false;
            while !this.input_done {
                // A full feed is pulled again once the connection has taken half of it
                // (`poll_drained` wakes this task then).
                if this.tx.len() >= MAX_FEED
                    && this.tx.poll_drained(task, MAX_FEED / 2).is_pending()
                {
                    break;
                }
                match this.input.as_mut().poll_next(task) {
                    Poll::Ready(ev) => {
                        this.encode(ev.unwrap_or(Event::END));
                        progressed = true;
                    }
                    Poll::Pending => break,
                }
            }
            match this.out.as_mut().poll_next(task) {
                Poll::Ready(Some(Event::Data(b))) => {
                    this.buf.extend_from_slice(&b);
                    this.decode(false);
                }
                Poll::Ready(Some(Event::StreamEnd(Some(e)))) => this.fail(e),
                Poll::Ready(Some(Event::StreamEnd(None)) | None) => this.decode(true),
                Poll::Ready(Some(_)) => {}
                Poll::Pending if !progressed => return Poll::Pending,
                Poll::Pending => {}
            }
        }
    }
}
