use std::pin::Pin;
use std::task::{Context as TaskCx, Poll};

use futures_core::Stream;
use futures_util::StreamExt;
use serde::Serialize;

use crate::feed::{FeedSender, feed};
use crate::{
    Context, Description, ErrorKind, Event, Events, Filter, Side, StreamError, SubPipeline,
};

/// What a [`Fork`] outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ForkMode {
    /// Output the input unchanged; the children run detached in their own tasks and their
    /// output is discarded (traffic mirroring). A child that falls `max_queue` events behind
    /// is cut off with a `LimitExceeded` error rather than slowing the main stream.
    Mirror,
    /// Output the input unchanged, but hold the final `StreamEnd` until every child has ended.
    /// Children are driven by the stream itself, so a slow child slows the stream.
    Join,
    /// Output the output of the first child to produce an event; the others are dropped.
    Race,
}

/// Feeds a copy of the input to one sub-pipeline per target, each with a child context.
pub struct Fork {
    targets: Vec<SubPipeline>,
    mode: ForkMode,
    max_queue: usize,
}

impl Fork {
    /// A fork over `targets` in `mode`, with a queue limit of 1024 events per child.
    pub fn new(mode: ForkMode, targets: Vec<SubPipeline>) -> Self {
        Fork {
            targets,
            mode,
            max_queue: 1024,
        }
    }

    /// Sets how many events may wait for one child.
    #[must_use]
    pub fn max_queue(mut self, n: usize) -> Self {
        self.max_queue = n.max(1);
        self
    }

    fn children(&self, cx: &Context) -> Vec<(FeedSender, Events)> {
        self.targets
            .iter()
            .map(|t| {
                let (tx, rx) = feed();
                let out = t.attach(Box::pin(rx), &cx.child());
                (tx, out)
            })
            .collect()
    }
}

impl Filter for Fork {
    fn describe(&self) -> Description {
        let mut d = Description::filter("fork").options(serde_json::json!({
            "mode": self.mode, "max_queue": self.max_queue,
        }));
        for t in &self.targets {
            d = d.with_sub(t.name());
        }
        d
    }

    fn attach(&self, input: Events, cx: &Context) -> Events {
        let children = self.children(cx);
        match self.mode {
            ForkMode::Mirror => {
                let mut feeds = Vec::with_capacity(children.len());
                if let Ok(handle) = tokio::runtime::Handle::try_current() {
                    for (tx, mut out) in children {
                        handle.spawn(async move { while out.next().await.is_some() {} });
                        feeds.push(tx);
                    }
                }
                Box::pin(MirrorStream {
                    input,
                    feeds,
                    max_queue: self.max_queue,
                })
            }
            ForkMode::Join => Box::pin(JoinStream {
                input,
                children: children
                    .into_iter()
                    .map(|(tx, out)| (Some(tx), Some(out)))
                    .collect(),
                held_end: None,
                max_queue: self.max_queue,
                finished: false,
            }),
            ForkMode::Race => Box::pin(RaceStream {
                input,
                input_done: false,
                children,
                winner: None,
                max_queue: self.max_queue,
            }),
        }
    }

    fn subs(&self) -> Vec<SubPipeline> {
        if self.targets.is_empty() {
            return vec![SubPipeline::named("")];
        }
        self.targets.clone()
    }
}

struct MirrorStream {
    input: Events,
    feeds: Vec<FeedSender>,
    max_queue: usize,
}

impl Stream for MirrorStream {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, task: &mut TaskCx<'_>) -> Poll<Option<Event>> {
        let this = &mut *self;
        let ev = match this.input.as_mut().poll_next(task) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(ev) => ev,
        };
        let max = this.max_queue;
        this.feeds.retain(|f| {
            let copy = ev.clone().unwrap_or(Event::END);
            if f.len() >= max {
                f.push(Event::StreamEnd(Some(StreamError::new(
                    ErrorKind::LimitExceeded,
                    Side::Internal,
                ))));
                return false;
            }
            f.push(copy) && !f.is_closed()
        });
        Poll::Ready(ev)
    }
}

type Child = (Option<FeedSender>, Option<Events>);

struct JoinStream {
    input: Events,
    children: Vec<Child>,
    held_end: Option<Event>,
    max_queue: usize,
    finished: bool,
}

impl Stream for JoinStream {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, task: &mut TaskCx<'_>) -> Poll<Option<Event>> {
        let this = &mut *self;
        if this.finished {
            return Poll::Ready(None);
        }
        // Drive the children; their output is discarded.
        for (_, out) in &mut this.children {
            while let Some(o) = out {
                match o.as_mut().poll_next(task) {
                    Poll::Ready(Some(ev)) if !ev.is_end() => {}
                    Poll::Ready(_) => *out = None,
                    Poll::Pending => break,
                }
            }
        }
        if this.held_end.is_some() {
            if this.children.iter().all(|(_, out)| out.is_none()) {
                this.finished = true;
                return Poll::Ready(this.held_end.take());
            }
            return Poll::Pending;
        }
        let max = this.max_queue;
        for (tx, _) in &this.children {
            if let Some(tx) = tx
                && tx.poll_drained(task, max / 2).is_pending()
            {
                return Poll::Pending;
            }
        }
        let ev = match this.input.as_mut().poll_next(task) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(ev) => ev.unwrap_or(Event::END),
        };
        for (tx, _) in &mut this.children {
            if let Some(f) = tx {
                f.push(ev.clone());
            }
            if ev.is_end() {
                *tx = None;
            }
        }
        if ev.is_end() {
            this.held_end = Some(ev);
            task.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(Some(ev))
    }
}

struct RaceStream {
    input: Events,
    input_done: bool,
    children: Vec<(FeedSender, Events)>,
    winner: Option<usize>,
    max_queue: usize,
}

impl Stream for RaceStream {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, task: &mut TaskCx<'_>) -> Poll<Option<Event>> {
        let this = &mut *self;
        loop {
            // Feed input to the children still in the race, while they keep up.
            if !this.input_done
                && this
                    .children
                    .iter()
                    .all(|(tx, _)| tx.len() < this.max_queue)
            {
                match this.input.as_mut().poll_next(task) {
                    Poll::Ready(ev) => {
                        let ev = ev.unwrap_or(Event::END);
                        this.input_done = ev.is_end();
                        for (tx, _) in &this.children {
                            tx.push(ev.clone());
                        }
                        continue;
                    }
                    Poll::Pending => {}
                }
            }
            if let Some(w) = this.winner {
                return match this.children.get_mut(w) {
                    Some((_, out)) => out.as_mut().poll_next(task),
                    None => Poll::Ready(None),
                };
            }
            for i in 0..this.children.len() {
                let polled = match this.children.get_mut(i) {
                    Some((_, out)) => out.as_mut().poll_next(task),
                    None => continue,
                };
                if let Poll::Ready(ev) = polled {
                    // First to answer wins; the others are dropped (cancelled).
                    let winner = this.children.swap_remove(i);
                    this.children.clear();
                    this.children.push(winner);
                    this.winner = Some(0);
                    return Poll::Ready(Some(ev.unwrap_or(Event::END)));
                }
            }
            if this.children.is_empty() {
                return Poll::Ready(None);
            }
            return Poll::Pending;
        }
    }
}
