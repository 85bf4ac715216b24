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

use super::codec::is_interim_head;

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
    /// answered with 504); interim 1xx responses are passed on and do not count as the
    /// head. Default 15 s.
    #[serde(default = "d_per_try", with = "flowgate_pipeline::serde_duration")]
    pub per_try_timeout: Duration,
    /// The wait before the first retry, doubled for each one after. Default 25 ms.
    #[serde(default = "d_backoff", with = "flowgate_pipeline::serde_duration")]
    pub backoff: Duration,
    /// Also retry when the response status is 5xx (502, 503, 504 only). Default true.
    #[serde(default = "flowgate_pipeline::registry::default_true")]
    pub on_5xx: bool,
    /// Also retry on these response statuses: exact codes (`"500"`) or classes (`"5xx"`,
    /// any 500–599). Default none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_status: Vec<String>,
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
        let statuses = self.statuses()?;
        Ok(Arc::new(Retry {
            sub: SubPipeline::named(self.pipeline.clone()),
            methods: Arc::new(methods),
            statuses: Arc::new(statuses),
            config: *self,
        }))
    }
}

impl RetryConfig {
    /// The response statuses retried, as inclusive ranges.
    fn statuses(&self) -> Result<Vec<(u16, u16)>, ConfigError> {
        let mut statuses = self
            .on_status
            .iter()
            .map(|s| {
                status_range(s).ok_or_else(|| {
                    ConfigError::new(
                        "on_status",
                        format!("`{s}` is not a status code (503) or class (5xx)"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if self.on_5xx {
            statuses.push((502, 504));
        }
        Ok(statuses)
    }
}

/// `"503"` → (503, 503); `"5xx"` → (500, 599).
fn status_range(s: &str) -> Option<(u16, u16)> {
    let s = s.trim();
    if let Some(class) = s.strip_suffix("xx").or_else(|| s.strip_suffix("XX")) {
        let c: u16 = class.parse().ok().filter(|c| (1..=5).contains(c))?;
        return Some((c * 100, c * 100 + 99));
    }
    let code: u16 = s.parse().ok().filter(|c| (100..=599).contains(c))?;
    Some((code, code))
}

/// The `retry` filter.
struct Retry {
    sub: SubPipeline,
    methods: Arc<Vec<Method>>,
    /// The response statuses that are retried (inclusive ranges).
    statuses: Arc<Vec<(u16, u16)>>,
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
            statuses: self.statuses.clone(),
            copy: Some((Vec::new(), 0)),
            retryable: false,
            attempt: None,
            tries: 0,
            timer: None,
            committed: false,
            in_interim: false,
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
    statuses: Arc<Vec<(u16, u16)>>,
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
    /// An interim response of the current try is being passed on (its end is next).
    in_interim: bool,
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

    /// Whether another try is allowed now (the whole request is in the copy, and no
    /// interim response is half passed on).
    fn can_retry(&self) -> bool {
        self.retryable
            && self.input_done
            && self.copy.is_some()
            && self.tries < self.config.tries
            && !self.in_interim
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
                // Interim responses (103, 100) go to the client as they come and commit
                // nothing: the try may still fail or time out before its final response,
                // and the next try's own interim responses may follow.
                Poll::Ready(Some(Event::MessageStart(head))) if is_interim_head(&head) => {
                    this.in_interim = true;
                    return Poll::Ready(Some(Event::MessageStart(head)));
                }
                Poll::Ready(Some(Event::MessageEnd(t))) if this.in_interim => {
                    this.in_interim = false;
                    return Poll::Ready(Some(Event::MessageEnd(t)));
                }
                Poll::Ready(Some(Event::MessageStart(head))) => {
                    let parts = head.get::<response::Parts>();
                    let status = parts.map(|p| p.status.as_u16());
                    // A circuit breaker's own refusal is not retried (that would only take
                    // the breaker's units again), as Envoy does not retry an overflow.
                    let overflow =
                        parts.is_some_and(|p| p.headers.contains_key("x-envoy-overloaded"));
                    if !overflow
                        && status.is_some_and(|s| {
                            this.statuses
                                .iter()
                                .any(|(lo, hi)| (*lo..=*hi).contains(&s))
                        })
                        && this.can_retry()
                    {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use flowgate_pipeline::testing::kinds_of;
    use flowgate_pipeline::{Head, Pipeline, Tail};
    use futures_util::StreamExt;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Each try sends a 103 at once; the first try then fails retry-safe, later ones answer
    /// 200.
    struct HintsThenFailOnce(Arc<AtomicUsize>);

    impl Filter for HintsThenFailOnce {
        fn describe(&self) -> Description {
            Description::filter("hints-then-fail-once")
        }
        fn attach(&self, input: Events, _cx: &Context) -> Events {
            let first = self.0.fetch_add(1, Ordering::SeqCst) == 0;
            let (mut early, ()) = http::Response::new(()).into_parts();
            early.status = http::StatusCode::EARLY_HINTS;
            let mut evs = vec![
                Event::MessageStart(Head::new(early)),
                crate::codec::interim_end(),
            ];
            if first {
                evs.push(Event::StreamEnd(Some(
                    StreamError::new(ErrorKind::ConnectionReset, Side::Upstream).retry_safe(true),
                )));
            } else {
                let (ok, ()) = http::Response::new(()).into_parts();
                evs.extend([
                    Event::MessageStart(Head::new(ok)),
                    Event::MessageEnd(Tail::none()),
                    Event::END,
                ]);
            }
            // The request is read to its end first, as an upstream would.
            let reply = futures_util::stream::iter(evs);
            Box::pin(input.filter(|_| async { false }).chain(reply))
        }
    }

    /// Answers the statuses in turn, one per try (the last one from then on).
    struct Statuses(Arc<AtomicUsize>, Vec<u16>);

    impl Filter for Statuses {
        fn describe(&self) -> Description {
            Description::filter("statuses")
        }
        fn attach(&self, input: Events, _cx: &Context) -> Events {
            let n = self.0.fetch_add(1, Ordering::SeqCst);
            let status = self.1[n.min(self.1.len() - 1)];
            let (mut head, ()) = http::Response::new(()).into_parts();
            head.status = http::StatusCode::from_u16(status).unwrap();
            let reply = futures_util::stream::iter(vec![
                Event::MessageStart(Head::new(head)),
                Event::MessageEnd(Tail::none()),
                Event::END,
            ]);
            Box::pin(input.filter(|_| async { false }).chain(reply))
        }
    }

    /// The final status and the number of tries, through a `retry` configured by `config`
    /// over a try answering `answers` in turn.
    async fn status_after(config: serde_json::Value, answers: Vec<u16>) -> (u16, usize) {
        let tries = Arc::new(AtomicUsize::new(0));
        let sub = Pipeline::builder("try")
            .filter(Statuses(tries.clone(), answers))
            .build()
            .unwrap();
        let config: RetryConfig = serde_json::from_value(config).unwrap();
        let retry = Retry {
            sub: sub.into(),
            methods: Arc::new(vec![Method::GET]),
            statuses: Arc::new(config.statuses().unwrap()),
            config,
        };
        let (req, ()) = http::Request::get("/").body(()).unwrap().into_parts();
        let out = flowgate_pipeline::testing::run(
            &retry,
            vec![
                Event::MessageStart(Head::new(req)),
                Event::MessageEnd(Tail::none()),
                Event::END,
            ],
        )
        .await;
        let status = out
            .iter()
            .find_map(|e| match e {
                Event::MessageStart(h) => h.get::<response::Parts>().map(|p| p.status.as_u16()),
                _ => None,
            })
            .unwrap();
        (status, tries.load(Ordering::SeqCst))
    }

    #[tokio::test(start_paused = true)]
    async fn chosen_statuses_are_retried_and_others_answered() {
        // 502–504 by default; 500 is not retried…
        let default = serde_json::json!({ "pipeline": "try", "tries": 3 });
        assert_eq!(
            status_after(default.clone(), vec![503, 200]).await,
            (200, 2)
        );
        assert_eq!(status_after(default, vec![500, 200]).await, (500, 1));
        // …unless asked for: a class, or a code; the last try's answer stands.
        let class = serde_json::json!({ "pipeline": "try", "tries": 3, "on_status": ["5xx"] });
        assert_eq!(status_after(class.clone(), vec![500, 200]).await, (200, 2));
        assert_eq!(status_after(class, vec![500, 501, 599]).await, (599, 3));
        let code = serde_json::json!({ "pipeline": "try", "tries": 2, "on_5xx": false, "on_status": ["429"] });
        assert_eq!(status_after(code.clone(), vec![429, 200]).await, (200, 2));
        assert_eq!(status_after(code, vec![503, 200]).await, (503, 1));
        for bad in ["6xx", "99", "abc", "0xx"] {
            let config: RetryConfig = serde_json::from_value(
                serde_json::json!({ "pipeline": "try", "on_status": [bad] }),
            )
            .unwrap();
            let e = Box::new(config)
                .build(&BuildContext::new(std::path::Path::new(".")))
                .err()
                .unwrap();
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn interim_responses_pass_and_commit_nothing() {
        let tries = Arc::new(AtomicUsize::new(0));
        let sub = Pipeline::builder("try")
            .filter(HintsThenFailOnce(tries.clone()))
            .build()
            .unwrap();
        let retry = Retry {
            sub: sub.into(),
            methods: Arc::new(vec![Method::GET]),
            statuses: Arc::new(vec![(502, 504)]),
            config: RetryConfig {
                pipeline: "try".into(),
                tries: 2,
                per_try_timeout: d_per_try(),
                backoff: d_backoff(),
                on_5xx: true,
                on_status: Vec::new(),
                methods: d_methods(),
                max_body: d_max_body(),
            },
        };
        let (req, ()) = http::Request::get("/").body(()).unwrap().into_parts();
        let input = vec![
            Event::MessageStart(Head::new(req)),
            Event::MessageEnd(Tail::none()),
            Event::END,
        ];
        let out = flowgate_pipeline::testing::run(&retry, input).await;
        // The first try's 103 went on; its failure was retried; the second try answered.
        assert_eq!(tries.load(Ordering::SeqCst), 2);
        assert_eq!(
            kinds_of(&out),
            [
                "MessageStart",
                "MessageEnd",
                "MessageStart",
                "MessageEnd",
                "MessageStart",
                "MessageEnd",
                "StreamEnd"
            ]
        );
        let statuses: Vec<u16> = out
            .iter()
            .filter_map(|e| match e {
                Event::MessageStart(h) => h.get::<response::Parts>().map(|p| p.status.as_u16()),
                _ => None,
            })
            .collect();
        assert_eq!(statuses, [103, 103, 200]);
    }
}
