//! Picks HTTP/1 or HTTP/2 for a `demux-http` connection: TLS ALPN `h2`, or a connection
//! that starts with the HTTP/2 preface (h2c with prior knowledge), gets HTTP/2; anything
//! else HTTP/1.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskCx, Poll};

use bytes::BytesMut;
use flowgate_pipeline::{Context, ErrorKind, Event, Events, Side, StreamError};
use futures_core::Stream;
use futures_util::StreamExt;
use tokio::time::{Instant, Sleep};

use super::H1;
use super::codec::{HeadTimedOut, HeadTimeouts};
use super::http2::{self, H2Shared, PREFACE};

enum Verdict {
    H1,
    H2,
    /// The bytes so far are a prefix of the preface: wait for more.
    Undecided,
}

/// What the first bytes (and the TLS session, if any) say.
fn verdict(cx: &Context, seen: &[u8]) -> Verdict {
    if cx
        .conn()
        .tls
        .as_ref()
        .and_then(|t| t.alpn.as_deref())
        .is_some_and(|a| a == b"h2")
    {
        return Verdict::H2;
    }
    let n = seen.len().min(PREFACE.len());
    if seen[..n] != PREFACE[..n] {
        Verdict::H1
    } else if n == PREFACE.len() {
        Verdict::H2
    } else {
        Verdict::Undecided
    }
}

/// The output of `demux-http` while it sniffs, then the chosen protocol's.
pub(crate) struct Detect {
    state: State,
}

struct Sniffing {
    input: Events,
    held: VecDeque<Event>,
    seen: BytesMut,
    cx: Context,
    h1: H1,
    h2: Arc<H2Shared>,
    timeouts: HeadTimeouts,
    timer: Pin<Box<Sleep>>,
}

enum State {
    Sniffing(Box<Sniffing>),
    Serving(Events),
    Done,
}

impl Detect {
    pub(crate) fn new(
        input: Events,
        cx: Context,
        h1: H1,
        h2: Arc<H2Shared>,
        timeouts: HeadTimeouts,
    ) -> Self {
        Detect {
            state: State::Sniffing(Box::new(Sniffing {
                input,
                held: VecDeque::new(),
                seen: BytesMut::new(),
                cx,
                h1,
                h2,
                timeouts,
                timer: Box::pin(tokio::time::sleep(timeouts.idle)),
            })),
        }
    }
}

impl Stream for Detect {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, task: &mut TaskCx<'_>) -> Poll<Option<Event>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::Serving(out) => return out.poll_next_unpin(task),
                State::Done => return Poll::Ready(None),
                State::Sniffing(s) => {
                    let Sniffing {
                        input,
                        held,
                        seen,
                        cx,
                        h1,
                        h2,
                        timeouts,
                        timer,
                    } = &mut **s;
                    let decided = match input.poll_next_unpin(task) {
                        Poll::Ready(Some(Event::Data(b))) => {
                            if seen.is_empty() && !b.is_empty() {
                                timer.as_mut().reset(Instant::now() + timeouts.header);
                            }
                            seen.extend_from_slice(&b[..b.len().min(PREFACE.len())]);
                            held.push_back(Event::Data(b));
                            match verdict(cx, seen) {
                                Verdict::Undecided => None,
                                Verdict::H1 => Some(false),
                                Verdict::H2 => Some(true),
                            }
                        }
                        Poll::Ready(Some(ev)) => {
                            // The end (or something that is not bytes): HTTP/1 handles it.
                            let end = ev.is_end();
                            held.push_back(ev);
                            end.then_some(false)
                        }
                        Poll::Ready(None) => {
                            held.push_back(Event::END);
                            Some(false)
                        }
                        Poll::Pending => {
                            if timer.as_mut().poll(task).is_ready() {
                                let in_head = !seen.is_empty();
                                let kind = if in_head {
                                    ErrorKind::IdleTimeout
                                } else {
                                    ErrorKind::Cancelled
                                };
                                this.state = State::Done;
                                return Poll::Ready(Some(Event::StreamEnd(Some(
                                    StreamError::new(kind, Side::Downstream)
                                        .with_cause(HeadTimedOut(in_head)),
                                ))));
                            }
                            return Poll::Pending;
                        }
                    };
                    let Some(is_h2) = decided else {
                        continue;
                    };
                    let held: Vec<Event> = std::mem::take(held).into();
                    let rest = std::mem::replace(input, flowgate_pipeline::events_from([]));
                    let replayed: Events = Box::pin(futures_util::stream::iter(held).chain(rest));
                    let out = if is_h2 {
                        http2::serve(h2.clone(), replayed, cx)
                    } else {
                        h1.attach(replayed, cx)
                    };
                    this.state = State::Serving(out);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::{DemuxHttp, Respond};
    use flowgate_http::h1::Limits;
    use flowgate_pipeline::testing::Harness;
    use flowgate_pipeline::{Pipeline, TlsInfo};
    use std::time::Duration;

    #[test]
    fn verdicts_from_the_first_bytes_and_alpn() {
        let cx = Context::new();
        assert!(matches!(verdict(&cx, b"P"), Verdict::Undecided));
        assert!(matches!(verdict(&cx, b"PRI * HTTP/2"), Verdict::Undecided));
        assert!(matches!(verdict(&cx, PREFACE), Verdict::H2));
        assert!(matches!(verdict(&cx, b"POST / HTTP/1.1\r\n"), Verdict::H1));
        assert!(matches!(verdict(&cx, b"GET / HTTP/1.1\r\n"), Verdict::H1));
        cx.update_conn(|c| {
            c.tls = Some(Arc::new(TlsInfo {
                alpn: Some(b"h2".to_vec()),
                ..TlsInfo::default()
            }))
        });
        assert!(matches!(verdict(&cx, b"x"), Verdict::H2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_preface_that_stalls_is_cut_off_after_the_header_timeout() {
        let hello = Pipeline::builder("hello")
            .filter(Respond::new(
                http::StatusCode::OK,
                http::HeaderMap::new(),
                bytes::Bytes::new(),
            ))
            .build()
            .unwrap();
        let f = DemuxHttp::new(hello, Limits::default())
            .timeouts(Duration::from_secs(5), Duration::from_secs(60));
        let mut h = Harness::new(&f);
        h.push("PRI * HTTP/2.0\r\n".into());
        let t = tokio::time::Instant::now();
        let ev = tokio::time::timeout(Duration::from_secs(30), h.next())
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(ev, Event::StreamEnd(Some(_))), "{ev:?}");
        assert!(t.elapsed() >= Duration::from_secs(5));
        assert!(t.elapsed() < Duration::from_secs(60));
    }
}
