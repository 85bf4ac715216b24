//! A socket-free harness for filters and pipelines.
//!
//! Feed events in, assert the events that come out. Tests that involve timers run under
//! tokio's paused clock (`#[tokio::test(start_paused = true)]`), so a 30-second idle timeout
//! takes no time at all.
//!
//! ```
//! use flowgate_pipeline::{Event, Pipeline, testing::Harness};
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let p = Pipeline::builder("echo").build().unwrap();
//! let mut h = Harness::new(&p);
//! h.push("ping".into());
//! assert_eq!(h.next_data().await.as_deref(), Some(&b"ping"[..]));
//! h.push(Event::END);
//! assert!(h.next().await.unwrap().is_end());
//! # }
//! ```

use std::task::{Context as TaskCx, Poll};

use bytes::Bytes;
use futures_util::StreamExt;

use crate::feed::{FeedSender, feed};
use crate::{Context, Event, Events, Filter};

/// Runs `filter` over `input` to the end, inside the current tokio runtime.
pub async fn run(filter: &dyn Filter, input: Vec<Event>) -> Vec<Event> {
    run_with(filter, input, &Context::new()).await
}

/// Runs `filter` over `input` with a given context.
pub async fn run_with(filter: &dyn Filter, input: Vec<Event>, cx: &Context) -> Vec<Event> {
    let out = filter.attach(crate::filter::events_from(input), cx);
    out.collect().await
}

/// Runs `filter` over `input` on a fresh single-threaded runtime (for doc examples and
/// synchronous tests).
pub fn run_blocking(filter: &dyn Filter, input: Vec<Event>) -> Vec<Event> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(run(filter, input)),
        Err(e) => vec![Event::StreamEnd(Some(
            crate::StreamError::new(crate::ErrorKind::Internal, crate::Side::Internal)
                .with_cause(e),
        ))],
    }
}

/// All `Data` payloads of `events`, concatenated.
pub fn data_of(events: &[Event]) -> Vec<u8> {
    let mut v = Vec::new();
    for e in events {
        if let Event::Data(b) = e {
            v.extend_from_slice(b);
        }
    }
    v
}

/// The event kinds of `events`, for compact assertions.
pub fn kinds_of(events: &[Event]) -> Vec<&'static str> {
    events.iter().map(Event::kind_name).collect()
}

/// An attached filter with an input you push into and an output you pull from.
pub struct Harness {
    input: Option<FeedSender>,
    out: Events,
}

impl Harness {
    /// Attaches `filter` with a fresh context.
    pub fn new(filter: &dyn Filter) -> Self {
        Self::with_context(filter, &Context::new())
    }

    /// Attaches `filter` with `cx`.
    pub fn with_context(filter: &dyn Filter, cx: &Context) -> Self {
        let (tx, rx) = feed();
        let out = filter.attach(Box::pin(rx), cx);
        Harness {
            input: Some(tx),
            out,
        }
    }

    /// Pushes an input event.
    pub fn push(&mut self, ev: Event) {
        if let Some(tx) = &self.input {
            tx.push(ev);
        }
    }

    /// How many pushed events the filter has not read yet (a sign of back-pressure).
    pub fn unread_input(&self) -> usize {
        self.input.as_ref().map_or(0, FeedSender::len)
    }

    /// The next output event (waits).
    pub async fn next(&mut self) -> Option<Event> {
        self.out.next().await
    }

    /// The next output event if one is ready now, without waiting.
    pub fn try_next(&mut self) -> Option<Event> {
        let waker = futures_util::task::noop_waker();
        let mut cx = TaskCx::from_waker(&waker);
        match self.out.poll_next_unpin(&mut cx) {
            Poll::Ready(ev) => ev,
            Poll::Pending => None,
        }
    }

    /// The next `Data` payload, skipping other events; `None` at the end.
    pub async fn next_data(&mut self) -> Option<Bytes> {
        loop {
            match self.out.next().await? {
                Event::Data(b) => return Some(b),
                Event::StreamEnd(_) => return None,
                _ => {}
            }
        }
    }

    /// All output events up to and including the end.
    pub async fn collect(mut self) -> Vec<Event> {
        let mut v = Vec::new();
        while let Some(ev) = self.out.next().await {
            v.push(ev);
        }
        v
    }
}

// === Real peers in integration tests ===

/// Whether a missing real peer must fail a test rather than skip it: under CI (`CI` set),
/// with `FLOWGATE_NO_SKIP` set (scripts/test sets it as root), or as root (who can install
/// anything the tests need). Elsewhere a test without its peer skips, saying why.
pub fn missing_peer_fails() -> bool {
    std::env::var_os("CI").is_some() || std::env::var_os("FLOWGATE_NO_SKIP").is_some() || is_root()
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

/// The one policy for real peers: `true` when `present`; otherwise, under CI or as root
/// ([`missing_peer_fails`]) the test fails naming `what` and how to get it, and elsewhere
/// it prints why it is skipped and returns `false` (the caller returns).
///
/// ```
/// use flowgate_pipeline::testing::require_peer;
/// // In a test: `if !require_peer("nginx", have("nginx"), "apt-get install -y nginx") { return; }`
/// assert!(require_peer("the shell", std::path::Path::new("/bin/sh").exists(), "apt-get install -y dash"));
/// ```
#[allow(
    clippy::panic,
    reason = "a test helper: failing the calling test is its job"
)]
pub fn require_peer(what: &str, present: bool, how: &str) -> bool {
    if present {
        return true;
    }
    if missing_peer_fails() {
        panic!("{what} is required here ({how}; scripts/test installs every peer)");
    }
    eprintln!("SKIPPED: {what} is not available ({how})");
    false
}

/// Whether `program` is on the `PATH` (or is an existing absolute path).
pub fn have_program(program: &str) -> bool {
    if program.starts_with('/') {
        return std::path::Path::new(program).exists();
    }
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}
