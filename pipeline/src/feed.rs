//! A small event queue that joint filters use to feed the sub-pipelines they start.
//!
//! A sub-pipeline's input is a [`FeedReceiver`]; the joint filter pushes events into the
//! matching [`FeedSender`]. The queue is unbounded by itself: senders keep it short by asking
//! [`FeedSender::len`] (or waiting in [`FeedSender::poll_drained`]) before pulling more input,
//! which is how back-pressure reaches through a joint filter. It works inside one task and
//! across tasks (`Mux` sessions run in their own task).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context as TaskCx, Poll, Waker};

use futures_core::Stream;

use crate::Event;

#[derive(Default)]
struct State {
    queue: VecDeque<Event>,
    /// No more events will be pushed (the sender is gone or pushed a StreamEnd).
    closed: bool,
    /// The receiver is gone: pushes are dropped.
    receiver_gone: bool,
    rx_waker: Option<Waker>,
    tx_waker: Option<Waker>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Creates a feed.
pub fn feed() -> (FeedSender, FeedReceiver) {
    let shared = Arc::new(Mutex::new(State::default()));
    (
        FeedSender {
            shared: shared.clone(),
        },
        FeedReceiver {
            shared,
            done: false,
        },
    )
}

/// The pushing end of a feed.
pub struct FeedSender {
    shared: Arc<Mutex<State>>,
}

impl FeedSender {
    /// Pushes an event. A [`Event::StreamEnd`] closes the feed; events after it, or after the
    /// receiver is gone, are dropped. Returns whether the event was queued.
    pub fn push(&self, ev: Event) -> bool {
        let mut s = lock(&self.shared);
        if s.closed || s.receiver_gone {
            return false;
        }
        if ev.is_end() {
            s.closed = true;
        }
        s.queue.push_back(ev);
        if let Some(w) = s.rx_waker.take() {
            w.wake();
        }
        true
    }

    /// Pushes several events under one lock and with one wake-up (a whole message, say);
    /// the same rules as [`FeedSender::push`]. Returns whether they were queued.
    pub fn push_all<const N: usize>(&self, evs: [Event; N]) -> bool {
        let mut s = lock(&self.shared);
        if s.closed || s.receiver_gone {
            return false;
        }
        for ev in evs {
            if s.closed {
                break;
            }
            if ev.is_end() {
                s.closed = true;
            }
            s.queue.push_back(ev);
        }
        if let Some(w) = s.rx_waker.take() {
            w.wake();
        }
        true
    }

    /// How many events wait in the queue.
    pub fn len(&self) -> usize {
        lock(&self.shared).queue.len()
    }

    /// Whether the queue is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the receiver is gone (the sub-pipeline finished or was dropped).
    pub fn is_receiver_gone(&self) -> bool {
        lock(&self.shared).receiver_gone
    }

    /// Whether the feed was closed by a pushed `StreamEnd`.
    pub fn is_closed(&self) -> bool {
        lock(&self.shared).closed
    }

    /// Ready when the queue holds at most `low` events (or the receiver is gone).
    pub fn poll_drained(&self, cx: &mut TaskCx<'_>, low: usize) -> Poll<()> {
        let mut s = lock(&self.shared);
        if s.queue.len() <= low || s.receiver_gone {
            Poll::Ready(())
        } else {
            s.tx_waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }
}

impl Drop for FeedSender {
    fn drop(&mut self) {
        let mut s = lock(&self.shared);
        s.closed = true;
        if let Some(w) = s.rx_waker.take() {
            w.wake();
        }
    }
}

/// The receiving end of a feed: a stream of events that ends with a `StreamEnd`.
pub struct FeedReceiver {
    shared: Arc<Mutex<State>>,
    done: bool,
}

impl Stream for FeedReceiver {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskCx<'_>) -> Poll<Option<Event>> {
        if self.done {
            return Poll::Ready(None);
        }
        let mut s = lock(&self.shared);
        match s.queue.pop_front() {
            Some(ev) => {
                if let Some(w) = s.tx_waker.take() {
                    w.wake();
                }
                let end = ev.is_end();
                drop(s);
                if end {
                    self.done = true;
                }
                Poll::Ready(Some(ev))
            }
            None if s.closed => {
                drop(s);
                // The sender went away without an end: treat it as a clean end.
                self.done = true;
                Poll::Ready(Some(Event::END))
            }
            None => {
                s.rx_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Drop for FeedReceiver {
    fn drop(&mut self) {
        let mut s = lock(&self.shared);
        s.receiver_gone = true;
        s.queue.clear();
        if let Some(w) = s.tx_waker.take() {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[tokio::test]
    async fn pushes_arrive_in_order_and_end() {
        let (tx, mut rx) = feed();
        tx.push("a".into());
        tx.push(Event::END);
        assert!(!tx.push("late".into()));
        assert!(matches!(rx.next().await, Some(Event::Data(b)) if b == "a"));
        assert!(matches!(rx.next().await, Some(Event::StreamEnd(None))));
        assert!(rx.next().await.is_none());
    }

    #[tokio::test]
    async fn dropped_sender_ends_cleanly_and_dropped_receiver_refuses() {
        let (tx, mut rx) = feed();
        drop(tx);
        assert!(matches!(rx.next().await, Some(Event::StreamEnd(None))));
        let (tx, rx) = feed();
        drop(rx);
        assert!(tx.is_receiver_gone());
        assert!(!tx.push("x".into()));
    }
}
