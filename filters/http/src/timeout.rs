//! `timeout`: an overall deadline for a request, over everything its sub-pipeline does
//! (every try of a `retry` inside it included).
//!
//! ```yaml
//! pipelines:
//!   request:
//!     - timeout: { pipeline: tries, head: 10s, total: 60s }
//!   tries:
//!     - retry: { pipeline: upstream-call, tries: 3, per_try_timeout: 3s }
//!   upstream-call:
//!     - mux-http: { pipeline: upstream }
//! ```
//!
//! Put it *outside* `retry`: `per_try_timeout` bounds one try, `timeout` bounds them all
//! (backoffs included). When the head deadline passes before a response head, the
//! sub-pipeline is dropped and the stream fails with an upstream `IdleTimeout`, which
//! `demux-http` answers with 504; when the total deadline passes after the head, the
//! stream fails the same way and the response is cut off (the HTTP/1 connection closes,
//! an HTTP/2 stream is reset). A response that opens a tunnel (101) is not bounded by
//! `total`: `demux-http`'s `tunnel_idle_timeout` watches it instead.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskCx, Poll};
use std::time::Duration;

use flowgate_pipeline::registry::{BuildContext, ConfigError, FilterConfig};
use flowgate_pipeline::{
    Context, Description, ErrorKind, Event, Events, Filter, Side, StreamError, SubPipeline,
};
use futures_core::Stream;
use http::{StatusCode, response};
use serde::{Deserialize, Serialize};
use tokio::time::{Instant, Sleep};

use super::codec::is_interim_head;

/// `timeout:` — see [`Timeout`].
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutConfig {
    /// The pipeline the request runs through.
    pub pipeline: String,
    /// From the request's start to the final response head (interim 1xx responses do not
    /// count). Default 30 s.
    #[serde(default = "d_head", with = "flowgate_pipeline::serde_duration")]
    pub head: Duration,
    /// From the request's start to the end of the response; none by default (a response
    /// may stream for as long as it wants once its head is out).
    #[serde(
        default,
        with = "flowgate_pipeline::serde_duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub total: Option<Duration>,
}

fn d_head() -> Duration {
    Duration::from_secs(30)
}

impl FilterConfig for TimeoutConfig {
    fn build(self: Box<Self>, _cx: &BuildContext) -> Result<Arc<dyn Filter>, ConfigError> {
        if self.head.is_zero() {
            return Err(ConfigError::new("head", "must be more than zero"));
        }
        if let Some(t) = self.total
            && t < self.head
        {
            return Err(ConfigError::new(
                "total",
                "must be at least `head` (the head is part of the response)",
            ));
        }
        Ok(Arc::new(
            Timeout::new(SubPipeline::named(self.pipeline.clone()), self.head).total(self.total),
        ))
    }
}

/// The deadline that passed, as a stream error cause.
#[derive(Debug, thiserror::Error)]
pub enum RequestTimedOut {
    /// No response head in time.
    #[error("no response head within {0:?}")]
    Head(Duration),
    /// The response did not end in time.
    #[error("response not complete within {0:?}")]
    Total(Duration),
}

/// Runs each stream through a sub-pipeline with a deadline for the response head and,
/// optionally, for the whole response: an overall deadline for a request. The head is the
/// final response's: an interim 1xx (100 Continue, 103 Early Hints) passes through and the
/// head deadline still runs, so a 103 followed by silence is answered with 504.
///
/// Put it *outside* `retry`: `per_try_timeout` bounds one try, `timeout` bounds them all
/// (backoffs included). When the head deadline passes before a response head, the
/// sub-pipeline is dropped and the stream fails with an upstream `IdleTimeout` whose cause
/// is [`RequestTimedOut`], which `demux-http` answers with 504; when the total deadline
/// passes after the head, the stream fails the same way and the response is cut off (the
/// HTTP/1 connection closes, an HTTP/2 stream is reset). A 101 response (a tunnel) is not
/// bounded by `total`: `demux-http`'s `tunnel_idle_timeout` watches it instead.
///
/// ```yaml
/// pipelines:
///   request:
///     - timeout: { pipeline: tries, head: 10s, total: 60s }
///   tries:
///     - retry: { pipeline: upstream-call, tries: 3, per_try_timeout: 3s }
///   upstream-call:
///     - mux-http: { pipeline: upstream }
/// ```
pub struct Timeout {
    sub: SubPipeline,
    head: Duration,
    total: Option<Duration>,
}

impl Timeout {
    /// Runs `sub`, failing the stream when no response head came within `head`.
    pub fn new(sub: impl Into<SubPipeline>, head: Duration) -> Self {
        Timeout {
            sub: sub.into(),
            head,
            total: None,
        }
    }

    /// Also fails the stream when the response has not ended within `total` (from the
    /// start).
    #[must_use]
    pub fn total(mut self, total: Option<Duration>) -> Self {
        self.total = total;
        self
    }
}

impl Filter for Timeout {
    fn describe(&self) -> Description {
        Description::filter("timeout")
            .options(serde_json::json!({
                "head": flowgate_pipeline::serde_duration::format(self.head),
                "total": self.total.map(flowgate_pipeline::serde_duration::format),
            }))
            .with_sub(self.sub.name())
    }

    fn attach(&self, input: Events, cx: &Context) -> Events {
        let start = Instant::now();
        Box::pin(TimeoutStream {
            out: self.sub.attach(input, cx),
            timer: Some(Box::pin(tokio::time::sleep_until(start + self.head))),
            start,
            head: self.head,
            total: self.total,
            head_seen: false,
            done: false,
        })
    }

    fn subs(&self) -> Vec<SubPipeline> {
        vec![self.sub.clone()]
    }
}

struct TimeoutStream {
    out: Events,
    /// Armed for the head deadline, then for the total one (if any).
    timer: Option<Pin<Box<Sleep>>>,
    start: Instant,
    head: Duration,
    total: Option<Duration>,
    head_seen: bool,
    done: bool,
}

impl Stream for TimeoutStream {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskCx<'_>) -> Poll<Option<Event>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match this.out.as_mut().poll_next(cx) {
            Poll::Ready(Some(ev)) => {
                if let Event::MessageStart(h) = &ev
                    && !this.head_seen
                    && !is_interim_head(h)
                {
                    this.head_seen = true;
                    let tunnel = h
                        .get::<response::Parts>()
                        .is_some_and(|p| p.status == StatusCode::SWITCHING_PROTOCOLS);
                    match this.total {
                        Some(t) if !tunnel => {
                            if let Some(timer) = &mut this.timer {
                                timer.as_mut().reset(this.start + t);
                            }
                        }
                        _ => this.timer = None,
                    }
                }
                if ev.is_end() {
                    this.done = true;
                    this.timer = None;
                }
                return Poll::Ready(Some(ev));
            }
            Poll::Ready(None) => {
                this.done = true;
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        if let Some(timer) = &mut this.timer
            && timer.as_mut().poll(cx).is_ready()
        {
            this.done = true;
            this.timer = None;
            let cause = if this.head_seen {
                RequestTimedOut::Total(this.total.unwrap_or(this.head))
            } else {
                RequestTimedOut::Head(this.head)
            };
            tracing::debug!(%cause, "request timed out");
            // Dropping the sub-pipeline cancels what it was doing.
            this.out = flowgate_pipeline::events_from([]);
            let e = StreamError::new(ErrorKind::IdleTimeout, Side::Upstream).with_cause(cause);
            return Poll::Ready(Some(Event::StreamEnd(Some(e))));
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowgate_pipeline::testing::kinds_of;
    use flowgate_pipeline::{Head, Pipeline, Tail};

    /// Answers after `delay`, then streams a body for `body` more.
    struct Slow {
        delay: Duration,
        body: Duration,
    }

    impl Filter for Slow {
        fn describe(&self) -> Description {
            Description::filter("slow")
        }
        fn attach(&self, _input: Events, _cx: &Context) -> Events {
            let (delay, body) = (self.delay, self.body);
            Box::pin(async_stream(delay, body))
        }
    }

    fn async_stream(delay: Duration, body: Duration) -> impl Stream<Item = Event> + Send {
        use futures_util::StreamExt;
        futures_util::stream::once(async move {
            tokio::time::sleep(delay).await;
            let (parts, ()) = http::Response::new(()).into_parts();
            vec![Event::MessageStart(Head::new(parts)), "a".into()]
        })
        .chain(futures_util::stream::once(async move {
            tokio::time::sleep(body).await;
            vec![Event::MessageEnd(Tail::none()), Event::END]
        }))
        .flat_map(futures_util::stream::iter)
    }

    fn run(t: Timeout) -> Vec<Event> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            use futures_util::StreamExt;
            t.attach(
                flowgate_pipeline::events_from([Event::END]),
                &Context::new(),
            )
            .collect()
            .await
        })
    }

    fn slow(delay: u64, body: u64) -> SubPipeline {
        Pipeline::builder("slow")
            .filter(Slow {
                delay: Duration::from_millis(delay),
                body: Duration::from_millis(body),
            })
            .build()
            .unwrap()
            .into()
    }

    fn timed_out(ev: &Event) -> Option<&RequestTimedOut> {
        match ev {
            Event::StreamEnd(Some(e)) => {
                assert_eq!(
                    (e.kind(), e.side()),
                    (ErrorKind::IdleTimeout, Side::Upstream)
                );
                e.cause().and_then(|c| c.downcast_ref::<RequestTimedOut>())
            }
            _ => None,
        }
    }

    #[test]
    fn no_head_in_time_fails_before_anything_was_sent() {
        let out = run(Timeout::new(slow(500, 0), Duration::from_millis(100)));
        assert_eq!(kinds_of(&out), ["StreamEnd(error)"]);
        assert!(matches!(timed_out(&out[0]), Some(RequestTimedOut::Head(_))));
    }

    #[test]
    fn a_head_in_time_is_enough_without_a_total_deadline() {
        let out = run(Timeout::new(slow(50, 500), Duration::from_millis(100)));
        assert_eq!(
            kinds_of(&out),
            ["MessageStart", "Data", "MessageEnd", "StreamEnd"]
        );
    }

    #[test]
    fn a_total_deadline_cuts_a_long_response_off() {
        let t = Timeout::new(slow(50, 500), Duration::from_millis(100))
            .total(Some(Duration::from_millis(200)));
        let out = run(t);
        assert_eq!(kinds_of(&out), ["MessageStart", "Data", "StreamEnd(error)"]);
        assert!(matches!(
            timed_out(&out[2]),
            Some(RequestTimedOut::Total(_))
        ));
    }

    /// Sends a 103 at once, then nothing until `delay` has passed, then a final response.
    struct HintsThenSlow(Duration);

    impl Filter for HintsThenSlow {
        fn describe(&self) -> Description {
            Description::filter("hints-then-slow")
        }
        fn attach(&self, _input: Events, _cx: &Context) -> Events {
            use futures_util::StreamExt;
            let (mut early, ()) = http::Response::new(()).into_parts();
            early.status = StatusCode::EARLY_HINTS;
            let hints = futures_util::stream::iter([
                Event::MessageStart(Head::new(early)),
                crate::codec::interim_end(),
            ]);
            Box::pin(hints.chain(async_stream(self.0, Duration::ZERO)))
        }
    }

    #[test]
    fn an_interim_response_is_not_the_head() {
        let sub = |ms| -> SubPipeline {
            Pipeline::builder("hints")
                .filter(HintsThenSlow(Duration::from_millis(ms)))
                .build()
                .unwrap()
                .into()
        };
        // The 103 passes, and the head deadline still runs: 504 follows it.
        let out = run(Timeout::new(sub(500), Duration::from_millis(100)));
        assert_eq!(
            kinds_of(&out),
            ["MessageStart", "MessageEnd", "StreamEnd(error)"]
        );
        assert!(matches!(timed_out(&out[2]), Some(RequestTimedOut::Head(_))));
        let out = run(Timeout::new(sub(50), Duration::from_millis(100)));
        assert_eq!(
            kinds_of(&out),
            [
                "MessageStart",
                "MessageEnd",
                "MessageStart",
                "Data",
                "MessageEnd",
                "StreamEnd"
            ]
        );
    }
}
