//! Calls: an op's arguments as a client writes them, mixing literals, remote
//! handles and delayed values.

use serde_json::{Map, Value as Json};

use super::{Delayed, RemoteData};
use crate::graph::{Arg, Task};
use crate::key::Key;

/// One argument as a client writes it.
#[derive(Clone, Debug)]
pub enum Input {
    /// A literal or a key reference.
    Arg(Arg),
    /// A lazy value: its graph comes along.
    Delayed(Delayed),
    /// A list of inputs.
    List(Vec<Input>),
}

impl Input {
    fn into_arg(self, deps: &mut Vec<Delayed>) -> Arg {
        match self {
            Input::Arg(a) => a,
            Input::Delayed(d) => {
                let key = d.key().clone();
                deps.push(d);
                Arg::Ref(key)
            }
            Input::List(items) => Arg::List(items.into_iter().map(|i| i.into_arg(deps)).collect()),
        }
    }
}

macro_rules! input_from {
    ($($t:ty),*) => {$(
        impl From<$t> for Input {
            fn from(v: $t) -> Self { Input::Arg(Arg::from(v)) }
        }
    )*};
}
input_from!(
    i32, i64, u32, u64, usize, f64, bool, &str, String, Key, &Key
);

impl From<Arg> for Input {
    fn from(a: Arg) -> Self {
        Input::Arg(a)
    }
}

impl From<&RemoteData> for Input {
    fn from(r: &RemoteData) -> Self {
        Input::Arg(Arg::Ref(r.key().clone()))
    }
}

impl From<&Delayed> for Input {
    fn from(d: &Delayed) -> Self {
        Input::Delayed(d.clone())
    }
}

impl From<Delayed> for Input {
    fn from(d: Delayed) -> Self {
        Input::Delayed(d)
    }
}

impl<T: Into<Input>> From<Vec<T>> for Input {
    fn from(v: Vec<T>) -> Self {
        Input::List(v.into_iter().map(Into::into).collect())
    }
}

impl<'a, T> From<&'a [T]> for Input
where
    &'a T: Into<Input>,
{
    fn from(v: &'a [T]) -> Self {
        Input::List(v.iter().map(Into::into).collect())
    }
}

impl<'a, T> From<&'a Vec<T>> for Input
where
    &'a T: Into<Input>,
{
    fn from(v: &'a Vec<T>) -> Self {
        v.as_slice().into()
    }
}

/// An op's arguments: positional inputs and keyword literals.
#[derive(Clone, Debug, Default)]
pub struct Call {
    args: Vec<Input>,
    kwargs: Map<String, Json>,
}

impl Call {
    /// No arguments.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a positional argument.
    pub fn arg(mut self, a: impl Into<Input>) -> Self {
        self.args.push(a.into());
        self
    }

    /// Adds a keyword argument.
    pub fn kw(mut self, name: &str, v: impl Into<Json>) -> Self {
        self.kwargs.insert(name.to_string(), v.into());
        self
    }

    /// The task for `op`, and the delayed values it reads.
    pub(crate) fn into_task(self, op: &str) -> (Task, Vec<Delayed>) {
        let mut deps = Vec::new();
        let args = self
            .args
            .into_iter()
            .map(|i| i.into_arg(&mut deps))
            .collect();
        (
            Task {
                op: op.to_string(),
                args,
                kwargs: self.kwargs,
            },
            deps,
        )
    }
}

impl<T: Into<Input>> From<T> for Call {
    /// A call with this one positional argument.
    fn from(v: T) -> Self {
        Call::new().arg(v)
    }
}
