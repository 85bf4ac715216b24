//! A request as an HTTP/2 stream: picking a connection, sending the head, sending a
//! bodiless request again when the server refused it, and uploading the body as the
//! stream's window allows.

use std::future::poll_fn;
use std::pin::pin;
use std::sync::Arc;

use bytes::Bytes;
use flowgate_pipeline::feed::FeedSender;
use flowgate_pipeline::{Context, ErrorKind, Event, Events, Side, StreamError};
use futures_util::StreamExt;
use futures_util::future::{Either, select};
use h2::client::ResponseFuture;
use h2::{Reason, SendStream};
use http::{HeaderMap, Method, Request, request};

use super::error::{
    is_connection_error, is_lost_to_goaway, is_refused, note_refusal, upstream_error,
};
use super::pool::{H2Pool, Slot};
use super::response::{HeadFailure, download, final_head, forward};
use super::{H2ClientError, h2_request};
use crate::codec::Trailers;

/// Tries to start a request on a fresh connection after the picked one turned out to be
/// going away or broken.
const START_TRIES: usize = 3;

/// Sends of a request without a body, the first included, while the server refuses it
/// (it was not processed, so sending it again is always safe) or, for an idempotent
/// method, while the server retires its connection without answering it (RFC 9110
/// §9.2.2 allows sending those again). A server that retires
/// connections refuses the streams sent in the round trip before its GOAWAY arrived, and
/// under load a request can land in that window more than once in a row.
const RESEND_TRIES: usize = 6;

/// Methods that may be sent again after a failure whose effect is unknown (RFC 9110
/// §9.2.2).
fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Runs each request message of `input` as an HTTP/2 stream, one after the other, and
/// pushes the responses into `out`.
pub(super) async fn exchange(pool: Arc<H2Pool>, mut input: Events, out: FeedSender, cx: Context) {
    loop {
        let parts = match input.next().await.unwrap_or(Event::END) {
            Event::MessageStart(h) => match h.get::<request::Parts>() {
                Some(p) => p.clone(),
                None => {
                    out.push(Event::StreamEnd(Some(
                        StreamError::new(ErrorKind::Internal, Side::Internal)
                            .with_cause(H2ClientError::NotARequest),
                    )));
                    return;
                }
            },
            Event::StreamEnd(e) => {
                out.push(Event::StreamEnd(e));
                return;
            }
            Event::Data(_) | Event::MessageEnd(_) => continue,
        };
        // A request without a body goes out as one HEADERS frame with END_STREAM.
        let next = input.next().await.unwrap_or(Event::END);
        let (eos, first) = match next {
            Event::MessageEnd(t) if t.get::<Trailers>().is_none_or(HeaderMap::is_empty) => {
                (true, None)
            }
            other => (false, Some(other)),
        };
        let req = h2_request(&parts, pool.cfg.scheme);
        if eos {
            // Nothing to upload, so a refused request can be sent again right here.
            let outcome = match send_bodiless(&pool, &cx, req, &out).await {
                Ok((slot, resp)) => forward(resp, &out, &slot.conn).await,
                Err(e) => Err(e),
            };
            if let Err(e) = outcome {
                out.push(Event::StreamEnd(Some(e)));
                return;
            }
            continue;
        }
        let (slot, response, body) = match start(&pool, &cx, req, eos).await {
            Ok(started) => started,
            Err(e) => {
                out.push(Event::StreamEnd(Some(e)));
                return;
            }
        };
        let outcome = {
            let upload = pin!(upload(&mut input, first, body));
            let download = pin!(download(response, &out, &slot.conn));
            match select(upload, download).await {
                Either::Left((Ok(complete), download)) => download.await.map(|()| complete),
                Either::Left((Err(e), _)) => Err(e),
                Either::Right((Ok(()), _)) => Ok(false),
                Either::Right((Err(e), _)) => Err(e),
            }
        };
        drop(slot);
        match outcome {
            Ok(true) => {}
            // The response is over before the request body was sent: the rest of the
            // request is not wanted, and this stream ends here.
            Ok(false) => {
                out.push(Event::END);
                return;
            }
            Err(e) => {
                out.push(Event::StreamEnd(Some(e)));
                return;
            }
        }
    }
}

/// Sends a request without a body and waits for its response head, sending it again on
/// another connection when the server refused the stream, or when it retired the
/// connection without answering an idempotent request (up to [`RESEND_TRIES`] sends) —
/// unless an interim response to it already went on to the client.
pub(super) async fn send_bodiless(
    pool: &Arc<H2Pool>,
    cx: &Context,
    req: Request<()>,
    out: &FeedSender,
) -> Result<(Slot, http::Response<h2::RecvStream>), StreamError> {
    let idempotent = is_idempotent(req.method());
    let mut tries = 0;
    let mut interims = 0;
    loop {
        tries += 1;
        let (slot, response, _body) = start(pool, cx, req.clone(), true).await?;
        let id = response.stream_id();
        let e = match final_head(response, out, &mut interims).await {
            Ok(resp) => return Ok((slot, resp)),
            Err(HeadFailure::Invalid(e)) => return Err(e),
            Err(HeadFailure::H2(e)) => e,
        };
        note_refusal(&e, &slot.conn, id);
        let lost = is_lost_to_goaway(&e, &slot.conn);
        if !(is_refused(&e) || (idempotent && lost)) || tries >= RESEND_TRIES || interims > 0 {
            return Err(upstream_error(e, &slot.conn));
        }
        if lost {
            pool.retire(&slot.conn);
        }
        tracing::debug!(error = %e, "HTTP/2 upstream did not process a request; sending it again");
    }
}

/// Picks a connection and opens a stream on it with the request head.
async fn start(
    pool: &Arc<H2Pool>,
    cx: &Context,
    req: Request<()>,
    eos: bool,
) -> Result<(Slot, ResponseFuture, SendStream<Bytes>), StreamError> {
    let mut last = None;
    for _ in 0..START_TRIES {
        let slot = pool.pick(cx).await?;
        let mut send = slot.conn.send.clone();
        let sent = match poll_fn(|c| send.poll_ready(c)).await {
            Ok(()) => send.send_request(req.clone(), eos),
            Err(e) => Err(e),
        };
        match sent {
            Ok((response, body)) => return Ok((slot, response, body)),
            Err(e) if is_connection_error(&e) => {
                pool.retire(&slot.conn);
                // The sub-pipeline failed (a refused connect…): that is the answer.
                if let Some(f) = slot.conn.failure() {
                    return Err(f.retry_safe(true));
                }
                // Going away or closed: nothing was sent, so another connection may take it.
                last = Some(
                    StreamError::new(ErrorKind::ConnectionReset, Side::Upstream)
                        .retry_safe(true)
                        .with_cause(H2ClientError::Protocol(e)),
                );
            }
            Err(e) => {
                return Err(StreamError::new(ErrorKind::Protocol, Side::Internal)
                    .with_cause(H2ClientError::Protocol(e)));
            }
        }
    }
    Err(last.unwrap_or_else(|| StreamError::new(ErrorKind::ConnectionReset, Side::Upstream)))
}

/// Sends the request body (and trailers) as the stream's window allows. `Ok(true)` once
/// the message is sent whole; `Ok(false)` when the upstream stopped taking it (what went
/// wrong shows on the response side); an error when the request stream failed.
async fn upload(
    input: &mut Events,
    mut first: Option<Event>,
    mut body: SendStream<Bytes>,
) -> Result<bool, StreamError> {
    if first.is_none() {
        return Ok(true);
    }
    loop {
        let ev = match first.take() {
            Some(ev) => ev,
            None => input.next().await.unwrap_or(Event::END),
        };
        match ev {
            Event::Data(b) => {
                if send_data(&mut body, b).await.is_err() {
                    return Ok(false);
                }
            }
            Event::MessageEnd(t) => {
                let sent = match t.get::<Trailers>().filter(|t| !t.is_empty()) {
                    Some(t) => body.send_trailers(t.clone()),
                    None => body.send_data(Bytes::new(), true),
                };
                return Ok(sent.is_ok());
            }
            Event::StreamEnd(e) => {
                body.send_reset(Reason::CANCEL);
                return Err(e.unwrap_or_else(|| {
                    StreamError::new(ErrorKind::Protocol, Side::Downstream)
                        .with_cause(H2ClientError::TruncatedRequest)
                }));
            }
            Event::MessageStart(_) => {
                body.send_reset(Reason::CANCEL);
                return Err(StreamError::new(ErrorKind::Protocol, Side::Downstream)
                    .with_cause(H2ClientError::TruncatedRequest));
            }
        }
    }
}

/// Sends `data` as the peer's window allows.
async fn send_data(stream: &mut SendStream<Bytes>, mut data: Bytes) -> Result<(), ()> {
    while !data.is_empty() {
        stream.reserve_capacity(data.len());
        let cap = match poll_fn(|c| stream.poll_capacity(c)).await {
            Some(Ok(n)) => n,
            _ => return Err(()),
        };
        if cap == 0 {
            continue;
        }
        let chunk = data.split_to(cap.min(data.len()));
        stream.send_data(chunk, false).map_err(|_| ())?;
    }
    Ok(())
}
