//! `Throttle`: limits concurrency, data rate and message rate over all streams of a filter.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskCx, Poll};
use std::time::Duration;

use flowgate_pipeline::registry::{BuildContext, ConfigError, FilterConfig};
use flowgate_pipeline::{Context, Description, Event, Events, Filter, Size};
use futures_core::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// Configuration of [`Throttle`] (`throttle:` in YAML). Every limit is optional and shared by
/// all streams through this filter.
///
/// ```yaml
/// - throttle:
///     concurrency: 100        # streams at once; more wait their turn
///     data_rate: 10MiB        # bytes per second (a number, or with K/M/G, KiB/MiB/GiB)
///     message_rate: 500       # messages per second
/// ```
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ThrottleConfig {
    /// Streams allowed at once; later ones wait (their input is not read) until one ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
    /// Bytes per second over all streams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_rate: Option<Size>,
    /// Messages (MessageStart events) per second over all streams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_rate: Option<f64>,
}

impl FilterConfig for ThrottleConfig {
    fn build(self: Box<Self>, _cx: &BuildContext) -> Result<Arc<dyn Filter>, ConfigError> {
        if self.concurrency == Some(0) {
            return Err(ConfigError::new("concurrency", "must be at least 1"));
        }
        if self.data_rate.is_some_and(|s| s.0 == 0) {
            return Err(ConfigError::new("data_rate", "must be more than zero"));
        }
        if let Some(r) = self.message_rate
            && !(r.is_finite() && r > 0.0)
        {
            return Err(ConfigError::new(
                "message_rate",
                "must be a positive number",
            ));
        }
        Ok(Arc::new(Throttle::new(*self)))
    }
}

/// A token bucket that may go into debt: a taker always gets through, and waits for as long
/// as it takes to repay what it took beyond the balance.
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: f64) -> Self {
        Bucket {
            rate,
            burst: rate,
            tokens: rate,
            last: Instant::now(),
        }
    }

    /// Takes `cost` tokens; returns how long the taker must wait.
    fn take(&mut self, cost: f64) -> Option<Duration> {
        let now = Instant::now();
        let refill = now.saturating_duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
        self.tokens -= cost;
        (self.tokens < 0.0).then(|| Duration::from_secs_f64(-self.tokens / self.rate))
    }
}

struct Shared {
    permits: Option<Arc<Semaphore>>,
    data: Option<Mutex<Bucket>>,
    messages: Option<Mutex<Bucket>>,
}

/// Limits how many streams run at once and how fast bytes and messages flow, over all
/// streams through the filter. Waiting never drops anything: the input is simply not read
/// until the limit allows it, so back-pressure reaches the sender.
pub struct Throttle {
    config: ThrottleConfig,
    shared: Arc<Shared>,
}

impl Throttle {
    /// A throttle with these limits.
    pub fn new(config: ThrottleConfig) -> Self {
        let shared = Shared {
            permits: config.concurrency.map(|n| Arc::new(Semaphore::new(n))),
            data: config
                .data_rate
                .map(|s| Mutex::new(Bucket::new(s.0 as f64))),
            messages: config.message_rate.map(|r| Mutex::new(Bucket::new(r))),
        };
        Throttle {
            config,
            shared: Arc::new(shared),
        }
    }
}

impl Filter for Throttle {
    fn describe(&self) -> Description {
        Description::filter("throttle").options(&self.config)
    }

    fn attach(&self, input: Events, _cx: &Context) -> Events {
        let acquiring = self
            .shared
            .permits
            .clone()
            .map(|s| Box::pin(s.acquire_owned()) as Pin<Box<dyn Future<Output = _> + Send>>);
        Box::pin(ThrottleStream {
            input,
            shared: self.shared.clone(),
            acquiring,
            _permit: None,
            held: None,
            wait: None,
        })
    }
}

type Acquire =
    Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, tokio::sync::AcquireError>> + Send>>;

struct ThrottleStream {
    input: Events,
    shared: Arc<Shared>,
    acquiring: Option<Acquire>,
    _permit: Option<OwnedSemaphorePermit>,
    held: Option<Event>,
    wait: Option<Pin<Box<Sleep>>>,
}

fn take(bucket: &Option<Mutex<Bucket>>, cost: f64) -> Option<Duration> {
    bucket
        .as_ref()
        .and_then(|b| b.lock().unwrap_or_else(|p| p.into_inner()).take(cost))
}

impl Stream for ThrottleStream {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskCx<'_>) -> Poll<Option<Event>> {
        let this = &mut *self;
        if let Some(a) = &mut this.acquiring {
            match a.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(p) => {
                    this._permit = p.ok();
                    this.acquiring = None;
                }
            }
        }
        if let Some(w) = &mut this.wait {
            if w.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.wait = None;
            return Poll::Ready(this.held.take());
        }
        let ev = match this.input.as_mut().poll_next(cx) {
            Poll::Ready(Some(ev)) => ev,
            other => return other,
        };
        let delay = match &ev {
            Event::Data(b) => take(&this.shared.data, b.len() as f64),
            Event::MessageStart(_) => take(&this.shared.messages, 1.0),
            _ => None,
        };
        match delay {
            Some(d) if !d.is_zero() => {
                let mut sleep = Box::pin(tokio::time::sleep(d));
                if sleep.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(ev));
                }
                this.held = Some(ev);
                this.wait = Some(sleep);
                Poll::Pending
            }
            _ => Poll::Ready(Some(ev)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use flowgate_pipeline::testing::{self, Harness};

    #[tokio::test(start_paused = true)]
    async fn data_rate_spreads_bytes_over_time() {
        let t = Throttle::new(ThrottleConfig {
            data_rate: Some(Size(1000)),
            ..Default::default()
        });
        let start = Instant::now();
        let chunk = Bytes::from(vec![0u8; 500]);
        let input: Vec<Event> = (0..6)
            .map(|_| Event::Data(chunk.clone()))
            .chain([Event::END])
            .collect();
        let out = testing::run(&t, input).await;
        assert_eq!(testing::data_of(&out).len(), 3000);
        // 1000 bytes of burst, then 2000 more at 1000 B/s.
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(1900) && took <= Duration::from_millis(2100),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_holds_extra_streams_until_one_ends() {
        let t = Throttle::new(ThrottleConfig {
            concurrency: Some(1),
            ..Default::default()
        });
        let mut first = Harness::new(&t);
        let mut second = Harness::new(&t);
        first.push("a".into());
        second.push("b".into());
        assert!(first.next_data().await.is_some());
        assert!(second.try_next().is_none(), "second stream waits");
        first.push(Event::END);
        assert!(first.next().await.unwrap().is_end());
        drop(first);
        assert_eq!(second.next_data().await.as_deref(), Some(&b"b"[..]));
    }
}
