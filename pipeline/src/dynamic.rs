//! `Dyn<T>`: a value, or a function of the stream's context and the current message head.
//!
//! This is Pipy's "a value or a function": most options are constants, but a target address,
//! a mux key or a throttle quota may depend on who is asking.

use std::fmt;
use std::sync::Arc;

use crate::{Context, Head};

type DynFn<T> = dyn Fn(&Context, Option<&Head>) -> T + Send + Sync;

/// A constant, or a function evaluated per stream or per message.
///
/// ```
/// use flowgate_pipeline::{Context, Dyn};
/// let fixed: Dyn<u16> = Dyn::value(80);
/// let by_worker: Dyn<u16> = Dyn::func(|cx, _head| 8000 + cx.conn().worker as u16);
/// let cx = Context::new();
/// assert_eq!(fixed.eval(&cx, None), 80);
/// assert_eq!(by_worker.eval(&cx, None), 8000);
/// ```
pub enum Dyn<T> {
    /// A constant.
    Value(T),
    /// A function of the context and, when there is one, the current message head.
    Func(Arc<DynFn<T>>),
}

impl<T: Clone> Dyn<T> {
    /// A constant.
    pub fn value(v: T) -> Self {
        Dyn::Value(v)
    }

    /// A function of the context and the current message head.
    pub fn func(f: impl Fn(&Context, Option<&Head>) -> T + Send + Sync + 'static) -> Self {
        Dyn::Func(Arc::new(f))
    }

    /// The value for this stream or message.
    pub fn eval(&self, cx: &Context, head: Option<&Head>) -> T {
        match self {
            Dyn::Value(v) => v.clone(),
            Dyn::Func(f) => f(cx, head),
        }
    }

    /// The constant, when this is one.
    pub fn as_value(&self) -> Option<&T> {
        match self {
            Dyn::Value(v) => Some(v),
            Dyn::Func(_) => None,
        }
    }
}

impl<T: Clone> Clone for Dyn<T> {
    fn clone(&self) -> Self {
        match self {
            Dyn::Value(v) => Dyn::Value(v.clone()),
            Dyn::Func(f) => Dyn::Func(f.clone()),
        }
    }
}

impl<T: Clone> From<T> for Dyn<T> {
    fn from(v: T) -> Self {
        Dyn::Value(v)
    }
}

impl<T: fmt::Debug> fmt::Debug for Dyn<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dyn::Value(v) => v.fmt(f),
            Dyn::Func(_) => f.write_str("<function>"),
        }
    }
}
