use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskCx, Poll};

use futures_core::Stream;

use super::Prepend;
use crate::{Context, Description, Event, Events, Filter, Head, SubPipeline};

/// A branch condition: a function of the context and the first message head (if the stream
/// starts with a message).
pub type Condition = Arc<dyn Fn(&Context, Option<&Head>) -> bool + Send + Sync>;

#[derive(Clone)]
struct Arm {
    label: String,
    cond: Condition,
    target: SubPipeline,
}

/// Sends the stream to the first arm whose condition holds, decided on the first event.
///
/// When no arm matches and there is no `otherwise`, the stream passes through unchanged.
///
/// ```
/// use flowgate_pipeline::{Pipeline, joint::Branch, testing, Event};
/// let upper = Pipeline::builder("upper")
///     .transform("upper", || |ev: Event, out: &mut dyn FnMut(Event)| match ev {
///         Event::Data(b) => out(Event::Data(b.to_ascii_uppercase().into())),
///         e => out(e),
///     })
///     .build()
///     .unwrap();
/// let branch = Branch::new().when("worker 0", |cx, _| cx.conn().worker == 0, upper);
/// let out = testing::run_blocking(&branch, vec!["abc".into(), Event::END]);
/// assert_eq!(testing::data_of(&out), b"ABC");
/// ```
#[derive(Default)]
pub struct Branch {
    arms: Arc<Vec<Arm>>,
    otherwise: Option<SubPipeline>,
}

impl Branch {
    /// A branch with no arms.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an arm: when `cond` holds, the stream goes to `target`.
    #[must_use]
    pub fn when(
        mut self,
        label: impl Into<String>,
        cond: impl Fn(&Context, Option<&Head>) -> bool + Send + Sync + 'static,
        target: impl Into<SubPipeline>,
    ) -> Self {
        let arm = Arm {
            label: label.into(),
            cond: Arc::new(cond),
            target: target.into(),
        };
        Arc::make_mut(&mut self.arms).push(arm);
        self
    }

    /// Where streams go when no arm matches.
    #[must_use]
    pub fn otherwise(mut self, target: impl Into<SubPipeline>) -> Self {
        self.otherwise = Some(target.into());
        self
    }
}

impl Filter for Branch {
    fn describe(&self) -> Description {
        let mut d = Description::filter("branch").options(
            self.arms
                .iter()
                .map(|a| a.label.clone())
                .collect::<Vec<_>>(),
        );
        for a in self.arms.iter() {
            d = d.with_sub(a.target.name());
        }
        if let Some(o) = &self.otherwise {
            d = d.with_sub(o.name());
        }
        d
    }

    fn attach(&self, input: Events, cx: &Context) -> Events {
        Box::pin(BranchStream::Waiting {
            input,
            cx: cx.clone(),
            arms: self.arms.clone(),
            otherwise: self.otherwise.clone(),
        })
    }

    fn subs(&self) -> Vec<SubPipeline> {
        self.arms
            .iter()
            .map(|a| a.target.clone())
            .chain(self.otherwise.clone())
            .collect()
    }
}

enum BranchStream {
    Waiting {
        input: Events,
        cx: Context,
        arms: Arc<Vec<Arm>>,
        otherwise: Option<SubPipeline>,
    },
    Running(Events),
    Gone,
}

impl Stream for BranchStream {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, task: &mut TaskCx<'_>) -> Poll<Option<Event>> {
        loop {
            match &mut *self {
                BranchStream::Running(out) => return out.as_mut().poll_next(task),
                BranchStream::Gone => return Poll::Ready(None),
                BranchStream::Waiting { input, .. } => {
                    let first = match input.as_mut().poll_next(task) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Some(ev)) => ev,
                        Poll::Ready(None) => Event::END,
                    };
                    let BranchStream::Waiting {
                        input,
                        cx,
                        arms,
                        otherwise,
                    } = std::mem::replace(&mut *self, BranchStream::Gone)
                    else {
                        return Poll::Ready(None);
                    };
                    let head = match &first {
                        Event::MessageStart(h) => Some(h.clone()),
                        _ => None,
                    };
                    let target = arms
                        .iter()
                        .find(|a| (a.cond)(&cx, head.as_ref()))
                        .map(|a| &a.target)
                        .or(otherwise.as_ref());
                    let input = Prepend::boxed(first, input);
                    let out = match target {
                        Some(t) => t.attach(input, &cx),
                        None => input,
                    };
                    *self = BranchStream::Running(out);
                }
            }
        }
    }
}
