use std::sync::Arc;

use crate::filter::error_stream;
use crate::{Context, Description, ErrorKind, Events, Filter, Side, StreamError, SubPipeline};

type Selector = dyn Fn(&Context) -> Option<usize> + Send + Sync;

/// Runs the stream through a sub-pipeline, chosen per stream: a subroutine call.
///
/// The sub-pipeline shares the stream's context. With several targets, a selector picks one
/// by index from the context; when it picks none, the stream ends with a `NoRoute` error.
///
/// ```
/// use flowgate_pipeline::{Pipeline, joint::Pipe, testing, Event};
/// let inner = Pipeline::builder("inner").build().unwrap();
/// let outer = Pipeline::builder("outer").filter(Pipe::new(inner)).build().unwrap();
/// let out = testing::run_blocking(&outer, vec!["x".into(), Event::END]);
/// assert_eq!(testing::data_of(&out), b"x");
/// ```
pub struct Pipe {
    targets: Vec<SubPipeline>,
    select: Option<Arc<Selector>>,
}

impl Pipe {
    /// Always runs `target`.
    pub fn new(target: impl Into<SubPipeline>) -> Self {
        Pipe {
            targets: vec![target.into()],
            select: None,
        }
    }

    /// Runs the target that `select` picks for each stream.
    pub fn choose(
        targets: Vec<SubPipeline>,
        select: impl Fn(&Context) -> Option<usize> + Send + Sync + 'static,
    ) -> Self {
        Pipe {
            targets,
            select: Some(Arc::new(select)),
        }
    }
}

impl Filter for Pipe {
    fn describe(&self) -> Description {
        let mut d = Description::filter("pipe");
        for t in &self.targets {
            d = d.with_sub(t.name());
        }
        d
    }

    fn attach(&self, input: Events, cx: &Context) -> Events {
        let index = match &self.select {
            None => Some(0),
            Some(f) => f(cx),
        };
        match index.and_then(|i| self.targets.get(i)) {
            Some(t) => t.attach(input, cx),
            None => error_stream(StreamError::new(ErrorKind::NoRoute, Side::Internal)),
        }
    }

    fn subs(&self) -> Vec<SubPipeline> {
        if self.targets.is_empty() {
            // Reported by the module as "needs a sub-pipeline and has none".
            return vec![SubPipeline::named("")];
        }
        self.targets.clone()
    }
}
