//! A response from an HTTP/2 stream into the pipeline: interim heads, the final head,
//! data as the pipeline takes it (receive window released only then), trailers.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::Poll;

use flowgate_pipeline::feed::FeedSender;
use flowgate_pipeline::{ErrorKind, Event, Head, Side, StreamError, Tail};
use h2::client::ResponseFuture;

use super::H2ClientError;
use super::error::{note_refusal, upstream_error};
use super::pool::Conn;
use crate::codec::{MAX_INTERIM, TooManyInterim, Trailers, interim_end};

/// Response events waiting for the pipeline before more response data is read.
const MAX_QUEUED_EVENTS: usize = 4;

/// Hands the response on: its interim responses, its head, its data as the pipeline takes
/// it (releasing receive window only then), its trailers.
pub(super) async fn download(
    response: ResponseFuture,
    out: &FeedSender,
    conn: &Conn,
) -> Result<(), StreamError> {
    let id = response.stream_id();
    let resp = final_head(response, out, &mut 0)
        .await
        .map_err(|f| match f {
            HeadFailure::H2(e) => {
                note_refusal(&e, conn, id);
                upstream_error(e, conn)
            }
            HeadFailure::Invalid(e) => e,
        })?;
    forward(resp, out, conn).await
}

/// Why no final response head came.
pub(super) enum HeadFailure {
    /// The stream or its connection failed.
    H2(h2::Error),
    /// The upstream broke HTTP's rules (a 101, too many interim responses).
    Invalid(StreamError),
}

/// Waits for the final response head, pushing the interim responses that come before it
/// (103 Early Hints, 100 Continue) into `out` at once, each as a bodiless message whose
/// tail is [`Interim`](flowgate_pipeline::joint::Interim); `interims` counts them, up to
/// [`MAX_INTERIM`].
pub(super) async fn final_head(
    mut response: ResponseFuture,
    out: &FeedSender,
    interims: &mut usize,
) -> Result<http::Response<h2::RecvStream>, HeadFailure> {
    poll_fn(|c| {
        // h2 queues interim heads in front of the final one; `poll_informational` takes
        // them (Pending: nothing has arrived yet; None: the final head is next).
        loop {
            match response.poll_informational(c) {
                Poll::Ready(Some(Ok(r))) => {
                    let cause = if r.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                        Some(
                            StreamError::new(ErrorKind::Protocol, Side::Upstream)
                                .with_cause(H2ClientError::SwitchingProtocols),
                        )
                    } else if *interims >= MAX_INTERIM {
                        Some(
                            StreamError::new(ErrorKind::Protocol, Side::Upstream)
                                .with_cause(TooManyInterim),
                        )
                    } else {
                        None
                    };
                    if let Some(e) = cause {
                        return Poll::Ready(Err(HeadFailure::Invalid(e)));
                    }
                    *interims += 1;
                    let (parts, ()) = r.into_parts();
                    out.push(Event::MessageStart(Head::new(parts)));
                    out.push(interim_end());
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(HeadFailure::H2(e))),
                Poll::Ready(None) => break,
                Poll::Pending => return Poll::Pending,
            }
        }
        Pin::new(&mut response).poll(c).map_err(HeadFailure::H2)
    })
    .await
}

/// Hands a response on (see [`download`]).
pub(super) async fn forward(
    resp: http::Response<h2::RecvStream>,
    out: &FeedSender,
    conn: &Conn,
) -> Result<(), StreamError> {
    let (parts, mut body) = resp.into_parts();
    out.push(Event::MessageStart(Head::new(parts)));
    while let Some(chunk) = poll_fn(|c| body.poll_data(c)).await {
        let b = chunk.map_err(|e| {
            // The head is on its way to the client: this stream can no longer be re-sent.
            tracing::debug!(error = %e, "HTTP/2 upstream stream failed after its response head");
            upstream_error(e, conn)
        })?;
        poll_fn(|c| out.poll_drained(c, MAX_QUEUED_EVENTS)).await;
        if out.is_receiver_gone() {
            return Err(StreamError::new(ErrorKind::Cancelled, Side::Downstream));
        }
        let n = b.len();
        out.push(Event::Data(b));
        let _ = body.flow_control().release_capacity(n);
    }
    let trailers = poll_fn(|c| body.poll_trailers(c))
        .await
        .map_err(|e| upstream_error(e, conn))?;
    out.push(Event::MessageEnd(match trailers {
        Some(t) if !t.is_empty() => Tail::new::<Trailers>(t),
        _ => Tail::none(),
    }));
    Ok(())
}
