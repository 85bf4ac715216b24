//! `retry`: runs a request through a sub-pipeline again when the try failed in a way that is
//! safe to repeat, with a per-try timeout and backoff.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskCx, Poll};
use std::time::Duration;

use flowgate_pipeline::feed::{FeedSender, feed};
use flowgate_pipeline::registry::{BuildContext, ConfigError, FilterConfig};
use flowgate_pipeline::{
    Context, Description, ErrorKind, Event, Events, Filter, Side, StreamError, SubPipeline,
};
use futures_core::Stream;
use http::{Method, request, response};
use serde::{Deserialize, Serialize};
use tokio::time::{Instant, Sleep};

/// `retry:` — see [`RetryConfig`].
///
/// ```yaml
/// - retry: { pipeline: call-upstream, tries: 3, per_try_timeout: 2s, backoff: 25ms }
/// ```
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// The pipeline of one try (usually `[mux-http]`).
    pub pipeline: String,
    /// Tries in all, the first included. Default 2.
    #[serde(default = "d_tries")]
    pub tries: u32,
    /// A try that has no response head after this long is abandoned (and retried, or
    /// answered with 504). Default 15 s.
    #[serde(default = "d_per_try", with = "flowgate_pipeline::serde_duration")]
    pub per_try_timeout: Duration,
    /// The wait before the first retry, doubled for each one after. Default 25 ms.
    #[serde(default = "d_backoff", with = "flowgate_pipeline::serde_duration")]
    pub backoff: Duration,
    /// Also retry when the response status is 5xx (502, 503, 504 only). Default true.
    #[serde(default = "flowgate_pipeline::registry::default_true")]
    pub on_5xx: bool,
    /// Methods that may be retried. Default the idempotent ones: GET, HEAD, OPTIONS, PUT,
    /// DELETE, TRACE.
    #[serde(default = "d_methods")]
    pub methods: Vec<String>,
    /// Requests with bodies larger than this are sent once, without retries. Default 64 KiB.
    #[serde(default = "d_max_body")]
    pub max_body: usize,
}

fn d_tries() -> u32 {
    2
}
fn d_per_try() -> Duration {
    Duration::from_secs(15)
}
fn d_backoff() -> Duration {
    Duration::from_millis(25)
}
fn d_methods() -> Vec<String> {
    ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"]
        .map(String::from)
        .to_vec()
}
fn d_max_body() -> usize {
    64 * 1024
}

impl FilterConfig for RetryConfig {
    fn build(self: Box<Self>, _cx: &BuildContext) -> Result<Arc<dyn Filter>, ConfigError> {
        if self.tries == 0 || self.tries > 10 {
            return Err(ConfigError::new("tries", "between 1 and 10"));
        }
        if self.per_try_timeout.is_zero() {
            return Err(ConfigError::new(
                "per_try_timeout",
                "must be more than zero",
            ));
        }
        let methods = self
            .methods
            .iter()
            .map(|m| Method::from_bytes(m.as_bytes()).map_err(|e| ConfigError::new("methods", e)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Arc::new(Retry {
            sub: SubPipeline::named(self.pipeline.clone()),
            methods: Arc::new(methods),
            config: *self,
        }))
    }
}

/// The `retry` filter.
struct Retry {
    sub: SubPipeline,
    methods: Arc<Vec<Method>>,
    config: RetryConfig,
}

impl Filter for Retry {
    fn describe(&self) -> Description {
        Description::filter("retry")
            .options(&self.config)
            .with_sub(self.sub.name())
    }

    fn attach(&self, input: Events, cx: &Context) -> Events {
        Box::pin(RetryStream {
            input,
            input_done: false,
            cx: cx.clone(),
            sub: self.sub.clone(),
            config: self.config.clone(),
            methods: self.methods.clone(),
            copy: Some((Vec::new(), 0)),
            retryable: false,
            attempt: None,
            tries: 0,
            timer: None,
            committed: false,
            done: false,
        })
    }

    fn subs(&self) -> Vec<SubPipeline> {
        vec![self.sub.clone()]
    }
}

struct Attempt {
    tx: FeedSender,
    out: Events,
}

struct RetryStream {
    input: Events,
    input_done: bool,
    cx: Context,
    sub: SubPipeline,
    config: RetryConfig,
    methods: Arc<Vec<Method>>,
    /// A copy of the request while it is small enough to send again (events, body bytes).
    copy: Option<(Vec<Event>, usize)>,
    /// Whether the request's method may be retried.
    retryable: bool,
    attempt: Option<Attempt>,
    tries: u32,
    /// The per-try timeout, or the backoff before the next try when there is no attempt.
    timer: Option<Pin<Box<Sleep>>>,
    /// A response head came out of the current try: its output is the output now.
    committed: bool,
    /// The stream has ended (after a timeout with no try left).
    done: bool,
}

impl RetryStream {
    fn start_attempt(&mut self) {
        let (tx, rx) = feed();
        if let Some((events, _)) = &self.copy {
            for ev in events {
                tx.push(ev.clone());
            }
        }
        let out = self.sub.attach(Box::pin(rx), &self.cx);
        self.attempt = Some(Attempt { tx, out });
        self.tries += 1;
        self.timer = Some(Box::pin(tokio::time::sleep(self.config.per_try_timeout)));
    }

    /// Whether another try is allowed now (the whole request is in the copy).
    fn can_retry(&self) -> bool {
        self.retryable && self.input_done && self.copy.is_some() && self.tries < self.config.tries
    }

    /// Drops the current try and waits the backoff before the next one.
    fn schedule_retry(&mut self) {
        self.attempt = None;
        let backoff = self.config.backoff * 2u32.saturating_pow(self.tries.saturating_sub(1));
        self.timer = Some(Box::pin(tokio::time::sleep_until(Instant::now() + backoff)));
    }

    fn take_input(&mut self, ev: Event) {
        if let Event::MessageStart(h) = &ev {
            self.retryable = h
                .get::<request::Parts>()
                .is_some_and(|p| self.methods.contains(&p.method));
        }
        if ev.is_end() {
            self.input_done = true;
        }
        if let Some((events, bytes)) = &mut self.copy {
            if let Event::Data(b) = &ev {
                *bytes += b.len();
            }
            if *bytes > self.config.max_body {
                self.copy = None;
            } else {
                events.push(ev.clone());
            }
        }
        if let Some(a) = &self.attempt {
            a.tx.push(ev);
        }
    }
}

fn retryable_error(e: &StreamError) -> bool {
    e.side() == Side::Upstream
        && (e.is_retry_safe()
            || matches!(
                e.kind(),
                ErrorKind::ConnectFailed | ErrorKind::ConnectTimeout | ErrorKind::ConnectionReset
            ))
}

impl Stream for RetryStream {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskCx<'_>) -> Poll<Option<Event>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            // Read the request (into the copy and the current try).
            if !this.input_done
                && let Poll::Ready(ev) = this.input.as_mut().poll_next(cx)
            {
                let ev = ev.unwrap_or(Event::END);
                if this.attempt.is_none() && this.tries == 0 {
                    this.start_attempt();
                }
                this.take_input(ev);
                continue;
            }
            let Some(attempt) = &mut this.attempt else {
                // Waiting out the backoff, or not started yet.
                match &mut this.timer {
                    Some(t) if this.tries > 0 => {
                        if t.as_mut().poll(cx).is_pending() {
                            return Poll::Pending;
                        }
                        this.start_attempt();
                        continue;
                    }
                    _ => return Poll::Pending,
                }
            };
            if this.committed {
                return attempt.out.as_mut().poll_next(cx);
            }
            match attempt.out.as_mut().poll_next(cx) {
                Poll::Ready(Some(Event::MessageStart(head))) => {
                    let status = head.get::<response::Parts>().map(|p| p.status.as_u16());
                    if this.config.on_5xx && matches!(status, Some(502..=504)) && this.can_retry() {
                        this.schedule_retry();
                        continue;
                    }
                    this.committed = true;
                    this.timer = None;
                    return Poll::Ready(Some(Event::MessageStart(head)));
                }
                Poll::Ready(Some(Event::StreamEnd(Some(e))))
                    if retryable_error(&e) && this.can_retry() =>
                {
                    this.schedule_retry();
                    continue;
                }
                Poll::Ready(other) => {
                    this.committed = true;
                    this.timer = None;
                    return Poll::Ready(other);
                }
                Poll::Pending => {}
            }
            if let Some(t) = &mut this.timer
                && t.as_mut().poll(cx).is_ready()
            {
                // No response head in time.
                if this.can_retry() {
                    this.schedule_retry();
                    continue;
                }
                this.done = true;
                this.attempt = None;
                let e = StreamError::new(ErrorKind::IdleTimeout, Side::Upstream);
                return Poll::Ready(Some(Event::StreamEnd(Some(e))));
            }
            return Poll::Pending;
        }
    }
}
