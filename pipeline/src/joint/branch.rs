use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskCx, Poll};

use futures_core::Stream;

use super::Prepend;
use crate::filter::error_stream;
use crate::{
    Context, Description, ErrorKind, Event, Events, Filter, Head, Side, StreamError, SubPipeline,
};

/// A branch condition: a function of the context and the first message head (if the stream
/// starts with a message).
pub type Condition = Arc<dyn Fn(&Context, Option<&Head>) -> bool + Send + Sync>;

/// Picks an arm by index from the context and the first message head: an index over many
/// arms, instead of trying each arm's condition in turn.
pub type Selector = Arc<dyn Fn(&Context, Option<&Head>) -> Option<usize> + Send + Sync>;

#[derive(Clone)]
struct Arm {
    label: String,
    /// `None`: only a selector picks the arm (see [`Branch::target`]).
    cond: Option<Condition>,
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
    refuse: bool,
    on_start: bool,
    select: Option<Selector>,
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
            cond: Some(Arc::new(cond)),
            target: target.into(),
        };
        Arc::make_mut(&mut self.arms).push(arm);
        self
    }

    /// Adds an arm with no condition of its own: only the selector
    /// ([`select_with`](Self::select_with)) picks it, by its index. For branches over
    /// thousands of arms that an index decides, which then hold no closure per arm.
    #[must_use]
    pub fn target(mut self, label: impl Into<String>, target: impl Into<SubPipeline>) -> Self {
        let arm = Arm {
            label: label.into(),
            cond: None,
            target: target.into(),
        };
        Arc::make_mut(&mut self.arms).push(arm);
        self
    }

    /// Room for `n` more arms (a branch built with thousands of them grows no further).
    #[must_use]
    pub fn reserve(mut self, n: usize) -> Self {
        Arc::make_mut(&mut self.arms).reserve_exact(n);
        self
    }

    /// The arms' labels, in order.
    pub fn labels(&self) -> impl Iterator<Item = &str> {
        self.arms.iter().map(|a| a.label.as_str())
    }

    /// Where streams go when no arm matches.
    #[must_use]
    pub fn otherwise(mut self, target: impl Into<SubPipeline>) -> Self {
        self.otherwise = Some(target.into());
        self
    }

    /// Ends streams that no arm matches with a `NoRoute` error (the connection is closed)
    /// instead of passing them through; an `otherwise` target still takes them first.
    #[must_use]
    pub fn refuse_others(mut self) -> Self {
        self.refuse = true;
        self
    }

    /// Picks the arm with `select` (by its index, in the order the arms were added) instead
    /// of trying each arm's condition: `select` must give what the conditions would — the
    /// first arm whose condition holds — only faster (a map of host names over thousands of
    /// arms). `None` falls to `otherwise`.
    #[must_use]
    pub fn select_with(
        mut self,
        select: impl Fn(&Context, Option<&Head>) -> Option<usize> + Send + Sync + 'static,
    ) -> Self {
        self.select = Some(Arc::new(select));
        self
    }

    /// Decides as the stream starts, from the context alone (the conditions get no head),
    /// instead of on the first event: for conditions on connection facts (TLS server
    /// name, peer identity, ports), so that a server that speaks first is reached before
    /// the client has sent anything.
    #[must_use]
    pub fn on_start(mut self) -> Self {
        self.on_start = true;
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
        if self.on_start {
            let target =
                pick(&self.arms, self.select.as_ref(), cx, None).or(self.otherwise.as_ref());
            return match target {
                Some(t) => t.attach(input, cx),
                None if self.refuse => refused(),
                None => input,
            };
        }
        Box::pin(BranchStream::Waiting {
            input,
            cx: cx.clone(),
            arms: self.arms.clone(),
            otherwise: self.otherwise.clone(),
            refuse: self.refuse,
            select: self.select.clone(),
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

/// The target of the arm `select` picks, or of the first arm whose condition holds.
fn pick<'a>(
    arms: &'a [Arm],
    select: Option<&Selector>,
    cx: &Context,
    head: Option<&Head>,
) -> Option<&'a SubPipeline> {
    match select {
        Some(f) => f(cx, head).and_then(|i| arms.get(i)),
        None => arms
            .iter()
            .find(|a| a.cond.as_ref().is_some_and(|c| c(cx, head))),
    }
    .map(|a| &a.target)
}

/// The end of a stream no arm took.
fn refused() -> Events {
    error_stream(StreamError::new(ErrorKind::NoRoute, Side::Downstream))
}

enum BranchStream {
    Waiting {
        input: Events,
        cx: Context,
        arms: Arc<Vec<Arm>>,
        otherwise: Option<SubPipeline>,
        refuse: bool,
        select: Option<Selector>,
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
                        refuse,
                        select,
                    } = std::mem::replace(&mut *self, BranchStream::Gone)
                    else {
                        return Poll::Ready(None);
                    };
                    let head = match &first {
                        Event::MessageStart(h) => Some(h.clone()),
                        _ => None,
                    };
                    let target =
                        pick(&arms, select.as_ref(), &cx, head.as_ref()).or(otherwise.as_ref());
                    let input = Prepend::boxed(first, input);
                    let out = match target {
                        Some(t) => t.attach(input, &cx),
                        None if refuse => refused(),
                        None => input,
                    };
                    *self = BranchStream::Running(out);
                }
            }
        }
    }
}
