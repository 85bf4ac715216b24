use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context as TaskCx, Poll};

use futures_core::Stream;
use serde::Serialize;

use crate::feed::{FeedSender, feed};
use crate::{Context, Description, Event, Events, Filter, StreamError, SubPipeline};

/// Limits of a [`Demux`].
#[derive(Clone, Copy, Debug, Serialize)]
pub struct DemuxOptions {
    /// How many messages may be in flight (started, reply not yet fully sent) before the
    /// demux stops reading input. Default 32.
    pub max_pending: usize,
    /// How many reply events a child that is not at the front may hold before it is paused.
    /// Default 256.
    pub max_buffered: usize,
    /// How many input events may wait for a child before the demux stops reading. Default 64.
    pub max_feed: usize,
}

impl Default for DemuxOptions {
    fn default() -> Self {
        DemuxOptions {
            max_pending: 32,
            max_buffered: 256,
            max_feed: 64,
        }
    }
}

/// The tail of a `MessageEnd` after which the message's child keeps its input open: the
/// `Data` events that follow (raw bytes after an HTTP/1 Upgrade, say) go to the same child,
/// until the next `MessageStart` or the end of the input closes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Continued;

/// Starts one sub-pipeline per input message and sends the replies back in request order.
///
/// Each message (`MessageStart Data* MessageEnd`) becomes the whole input of a new child
/// stream with a child context. Children run concurrently; the output is the front child's
/// output until that child ends, then the next one's, so replies keep the order of requests
/// (HTTP/1 pipelining). A child that ends with an error ends the demux with that error.
/// Data outside a message is dropped, except after a message whose tail is [`Continued`].
pub struct Demux {
    target: SubPipeline,
    opts: DemuxOptions,
}

impl Demux {
    /// A demux that runs `target` per message, with default limits.
    pub fn new(target: impl Into<SubPipeline>) -> Self {
        Demux {
            target: target.into(),
            opts: DemuxOptions::default(),
        }
    }

    /// Sets the limits.
    #[must_use]
    pub fn options(mut self, opts: DemuxOptions) -> Self {
        self.opts = opts;
        self
    }
}

impl Filter for Demux {
    fn describe(&self) -> Description {
        Description::filter("demux")
            .options(self.opts)
            .with_sub(self.target.name())
    }

    fn attach(&self, input: Events, cx: &Context) -> Events {
        Box::pin(DemuxStream {
            input,
            input_end: None,
            target: self.target.clone(),
            cx: cx.clone(),
            opts: self.opts,
            feeding: None,
            children: VecDeque::new(),
            finished: false,
        })
    }

    fn subs(&self) -> Vec<SubPipeline> {
        vec![self.target.clone()]
    }

    fn request_pipeline(&self) -> Option<SubPipeline> {
        Some(self.target.clone())
    }
}

struct Child {
    out: Events,
    buf: VecDeque<Event>,
    done: bool,
}

impl Child {
    /// Moves ready output into the buffer, up to `max`.
    fn fill(&mut self, task: &mut TaskCx<'_>, max: usize) {
        while !self.done && self.buf.len() < max {
            match self.out.as_mut().poll_next(task) {
                Poll::Ready(Some(ev)) => {
                    self.done = ev.is_end();
                    self.buf.push_back(ev);
                }
                Poll::Ready(None) => {
                    self.done = true;
                    self.buf.push_back(Event::END);
                }
                Poll::Pending => break,
            }
        }
    }
}

struct DemuxStream {
    input: Events,
    input_end: Option<Option<StreamError>>,
    target: SubPipeline,
    cx: Context,
    opts: DemuxOptions,
    feeding: Option<FeedSender>,
    children: VecDeque<Child>,
    finished: bool,
}

impl DemuxStream {
    /// Pulls one input event if limits allow. Returns whether one was taken.
    fn pull_input(&mut self, task: &mut TaskCx<'_>) -> bool {
        if self.input_end.is_some() {
            return false;
        }
        let room = match &self.feeding {
            Some(f) => f.len() < self.opts.max_feed,
            None => self.children.len() < self.opts.max_pending,
        };
        if !room {
            return false;
        }
        let ev = match self.input.as_mut().poll_next(task) {
            Poll::Pending => return false,
            Poll::Ready(Some(ev)) => ev,
            Poll::Ready(None) => Event::END,
        };
        match ev {
            Event::MessageStart(_) => {
                if let Some(prev) = self.feeding.take() {
                    // A new message before the last one ended: the last one ends here.
                    prev.push(Event::END);
                }
                let (tx, rx) = feed();
                let out = self.target.attach(Box::pin(rx), &self.cx.child());
                tx.push(ev);
                self.feeding = Some(tx);
                self.children.push_back(Child {
                    out,
                    buf: VecDeque::new(),
                    done: false,
                });
            }
            Event::Data(_) => {
                if let Some(f) = &self.feeding {
                    f.push(ev);
                }
            }
            Event::MessageEnd(ref t) if t.get::<Continued>().is_some() => {
                if let Some(f) = &self.feeding {
                    f.push(ev);
                }
            }
            Event::MessageEnd(_) => {
                if let Some(f) = self.feeding.take() {
                    f.push(ev);
                    f.push(Event::END);
                }
            }
            Event::StreamEnd(e) => {
                if let Some(f) = self.feeding.take() {
                    f.push(Event::StreamEnd(e.clone()));
                }
                self.input_end = Some(e);
            }
        }
        true
    }
}

impl Stream for DemuxStream {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, task: &mut TaskCx<'_>) -> Poll<Option<Event>> {
        let this = &mut *self;
        loop {
            if this.finished {
                return Poll::Ready(None);
            }
            if let Some(front) = this.children.front_mut() {
                front.fill(task, 1);
                if let Some(ev) = front.buf.pop_front() {
                    match ev {
                        Event::StreamEnd(None) => {
                            this.children.pop_front();
                            continue;
                        }
                        Event::StreamEnd(Some(e)) => {
                            this.finished = true;
                            return Poll::Ready(Some(Event::StreamEnd(Some(e))));
                        }
                        ev => return Poll::Ready(Some(ev)),
                    }
                }
            }
            let max = this.opts.max_buffered;
            for child in this.children.iter_mut().skip(1) {
                child.fill(task, max);
            }
            if this.pull_input(task) {
                continue;
            }
            if this.children.is_empty()
                && let Some(e) = this.input_end.take()
            {
                this.finished = true;
                return Poll::Ready(Some(Event::StreamEnd(e)));
            }
            return Poll::Pending;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{data_of, kinds_of, run_blocking};
    use crate::{Head, Pipeline, Tail};

    fn message_then_raw(tail: Tail) -> Vec<Event> {
        vec![
            Event::MessageStart(Head::empty()),
            Event::MessageEnd(tail),
            "raw".into(),
            Event::END,
        ]
    }

    #[test]
    fn data_after_a_continued_end_reaches_the_same_child() {
        let echo = Pipeline::builder("echo").build().unwrap();
        let demux = Demux::new(echo);
        let out = run_blocking(&demux, message_then_raw(Tail::new(Continued)));
        assert_eq!(data_of(&out), b"raw");
        assert_eq!(
            kinds_of(&out),
            ["MessageStart", "MessageEnd", "Data", "StreamEnd"]
        );
        // Without the marker the child's input ends with the message: the bytes are dropped.
        let out = run_blocking(&demux, message_then_raw(Tail::none()));
        assert!(data_of(&out).is_empty());
    }
}
