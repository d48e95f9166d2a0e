//! Ops: named kernels with a signature checked at submission. Built-ins wrap
//! Arrow compute kernels; users register their own closures.

mod builtin;
mod random;

use std::sync::Arc;

use rustc_hash::FxHashMap;
use serde_json::{Map, Value as Json};

use crate::chunk::Chunk;
use crate::error::{Error, Result};
use crate::graph::{Arg, Task};
use crate::key::Key;

pub use random::{fill_uniform, normal_vec, uniform_vec};

/// Largest array an op may be asked to create, in elements (refuses absurd sizes up front).
pub const MAX_ELEMENTS: u64 = 1 << 34;

/// An argument as an op sees it: inputs resolved to chunks.
#[derive(Clone, Debug)]
pub enum Value {
    /// A dependency's chunk.
    Chunk(Chunk),
    /// A JSON literal.
    Literal(Json),
    /// A list of values.
    List(Vec<Value>),
}

impl Value {
    /// The chunk, or an error naming what was there instead.
    pub fn chunk(&self) -> Result<&Chunk> {
        match self {
            Value::Chunk(c) => Ok(c),
            other => Err(Error::op(
                "args",
                format!("expected a chunk, got {}", other.describe()),
            )),
        }
    }

    /// One chunk or a list of chunks, as a list.
    pub fn chunks(&self) -> Result<Vec<&Chunk>> {
        match self {
            Value::Chunk(c) => Ok(vec![c]),
            Value::List(items) => items.iter().map(Value::chunk).collect(),
            other => Err(Error::op(
                "args",
                format!("expected chunks, got {}", other.describe()),
            )),
        }
    }

    /// A numeric literal as f64.
    pub fn f64(&self) -> Result<f64> {
        match self {
            Value::Literal(Json::Number(n)) => Ok(n.as_f64().unwrap_or(f64::NAN)),
            other => Err(Error::op(
                "args",
                format!("expected a number, got {}", other.describe()),
            )),
        }
    }

    /// A non-negative integer literal.
    pub fn usize(&self) -> Result<usize> {
        match self {
            Value::Literal(Json::Number(n)) if n.as_u64().is_some() => {
                Ok(n.as_u64().unwrap() as usize)
            }
            other => Err(Error::op(
                "args",
                format!("expected a non-negative integer, got {}", other.describe()),
            )),
        }
    }

    fn describe(&self) -> String {
        match self {
            Value::Chunk(c) => format!("a chunk of {} rows", c.num_rows()),
            Value::Literal(j) => format!("the literal {j}"),
            Value::List(items) => format!("a list of {} items", items.len()),
        }
    }
}

/// The kind of value a parameter accepts; checked against literals at submission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// One dependency.
    Chunk,
    /// One dependency or a list of dependencies.
    Chunks,
    /// A dependency or a number.
    ChunkOrNumber,
    /// A number literal.
    Number,
    /// An integer literal (may be negative).
    Int,
    /// A non-negative element count, at most [`MAX_ELEMENTS`].
    Size,
    /// A boolean literal.
    Bool,
    /// Anything.
    Any,
}

impl Kind {
    fn accepts(self, a: &Arg) -> bool {
        let number = |a: &Arg| matches!(a, Arg::Literal(Json::Number(_)));
        match self {
            Kind::Any => true,
            Kind::Chunk => matches!(a, Arg::Ref(_) | Arg::Task(_)),
            Kind::Chunks => match a {
                Arg::Ref(_) | Arg::Task(_) => true,
                Arg::List(items) => items
                    .iter()
                    .all(|i| matches!(i, Arg::Ref(_) | Arg::Task(_))),
                Arg::Literal(_) => false,
            },
            Kind::ChunkOrNumber => matches!(a, Arg::Ref(_) | Arg::Task(_)) || number(a),
            Kind::Number => number(a),
            Kind::Int => matches!(a, Arg::Literal(Json::Number(n)) if n.is_i64() || n.is_u64()),
            Kind::Size => {
                matches!(a, Arg::Literal(Json::Number(n)) if n.as_u64().is_some_and(|v| v <= MAX_ELEMENTS))
            }
            Kind::Bool => matches!(a, Arg::Literal(Json::Bool(_))),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Chunk => "a {\"key\": …} reference",
            Kind::Chunks => "a reference or a list of references",
            Kind::ChunkOrNumber => "a reference or a number",
            Kind::Number => "a number",
            Kind::Int => "an integer",
            Kind::Size => "a non-negative integer of at most 2^34 elements",
            Kind::Bool => "true or false",
            Kind::Any => "anything",
        }
    }
}

/// What an op accepts: positional parameters (the first `required` mandatory) and keywords.
#[derive(Clone, Debug)]
pub struct Signature {
    /// Positional parameters, in order.
    pub params: Vec<Kind>,
    /// How many leading positional parameters must be given.
    pub required: usize,
    /// Keyword parameters by name.
    pub kwargs: Vec<(&'static str, Kind)>,
    /// Whether any number of extra positional arguments is accepted (user ops).
    pub variadic: bool,
}

impl Signature {
    /// A signature with all `params` required and no keywords.
    pub fn new(params: &[Kind]) -> Self {
        Signature {
            params: params.to_vec(),
            required: params.len(),
            kwargs: vec![],
            variadic: false,
        }
    }

    /// Makes the positional parameters from index `n` on optional.
    pub fn optional_from(mut self, n: usize) -> Self {
        self.required = n;
        self
    }

    /// Adds a keyword parameter.
    pub fn kwarg(mut self, name: &'static str, kind: Kind) -> Self {
        self.kwargs.push((name, kind));
        self
    }

    /// A signature that accepts any arguments (for user ops that check their own).
    pub fn any() -> Self {
        Signature {
            params: vec![],
            required: 0,
            kwargs: vec![],
            variadic: true,
        }
    }
}

/// The function behind an op: resolved arguments and keywords in, one chunk out.
pub type OpFn = dyn Fn(&[Value], &Map<String, Json>) -> Result<Chunk> + Send + Sync;

/// A registered op.
#[derive(Clone)]
pub struct OpDef {
    /// Its signature.
    pub signature: Signature,
    /// Its kernel.
    pub func: Arc<OpFn>,
}

/// The ops a cluster knows, by name.
#[derive(Clone, Default)]
pub struct OpRegistry {
    ops: FxHashMap<String, OpDef>,
}

impl std::fmt::Debug for OpRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.names()).finish()
    }
}

impl OpRegistry {
    /// A registry with no ops.
    pub fn empty() -> Self {
        Self::default()
    }

    /// A registry with every built-in op.
    pub fn builtin() -> Self {
        let mut r = Self::empty();
        builtin::register_all(&mut r);
        r
    }

    /// Registers `func` as `name` with a checked signature; replaces any op of that name.
    pub fn register<F>(&mut self, name: &str, signature: Signature, func: F)
    where
        F: Fn(&[Value], &Map<String, Json>) -> Result<Chunk> + Send + Sync + 'static,
    {
        self.ops.insert(
            name.to_string(),
            OpDef {
                signature,
                func: Arc::new(func),
            },
        );
    }

    /// The names of every registered op, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.ops.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// Checks a task against its op's signature; the error names `key`.
    pub fn check(&self, key: &Key, task: &Task) -> Result<()> {
        let Some(def) = self.ops.get(&task.op) else {
            // Named in full: a typo shows, and so does a cluster started
            // from another program than the one with the op.
            let known = self.names().join(", ");
            return Err(Error::invalid(
                key,
                format!("unknown op '{}'; the ops here are: {known}", task.op),
            ));
        };
        let sig = &def.signature;
        let n = task.args.len();
        if n < sig.required || (!sig.variadic && n > sig.params.len()) {
            let expected = if sig.required == sig.params.len() {
                format!("{}", sig.required)
            } else {
                format!("{} to {}", sig.required, sig.params.len())
            };
            return Err(Error::invalid(
                key,
                format!("op '{}' takes {expected} argument(s), got {n}", task.op),
            ));
        }
        for (i, (arg, kind)) in task.args.iter().zip(&sig.params).enumerate() {
            if !kind.accepts(arg) {
                return Err(Error::invalid(
                    key,
                    format!(
                        "op '{}' argument {i} must be {}, got {}",
                        task.op,
                        kind.name(),
                        arg_text(arg)
                    ),
                ));
            }
        }
        for (name, v) in &task.kwargs {
            let Some((_, kind)) = sig.kwargs.iter().find(|(n, _)| n == name) else {
                if sig.variadic {
                    continue;
                }
                return Err(Error::invalid(
                    key,
                    format!("op '{}' has no keyword '{name}'", task.op),
                ));
            };
            if !kind.accepts(&Arg::Literal(v.clone())) {
                return Err(Error::invalid(
                    key,
                    format!(
                        "op '{}' keyword '{name}' must be {}, got {v}",
                        task.op,
                        kind.name()
                    ),
                ));
            }
        }
        // Inline tasks are checked like the tasks they were.
        fn inline<'a>(a: &'a Arg, out: &mut Vec<&'a Task>) {
            match a {
                Arg::Task(t) => out.push(t),
                Arg::List(items) => items.iter().for_each(|i| inline(i, out)),
                _ => {}
            }
        }
        let mut nested = Vec::new();
        task.args.iter().for_each(|a| inline(a, &mut nested));
        for t in nested {
            self.check(key, t)?;
        }
        Ok(())
    }

    /// Runs `op` on resolved arguments.
    pub fn call(&self, op: &str, args: &[Value], kwargs: &Map<String, Json>) -> Result<Chunk> {
        let def = self
            .ops
            .get(op)
            .ok_or_else(|| Error::UnknownOp { op: op.to_string() })?;
        (def.func)(args, kwargs).map_err(|e| match e {
            Error::Op { op: o, reason } if o == "args" || o == "chunk" => Error::op(op, reason),
            Error::Arrow(e) => Error::op(op, e.to_string()),
            other => other,
        })
    }
}

fn arg_text(a: &Arg) -> String {
    let s = serde_json::to_string(a).unwrap_or_default();
    if s.len() > 60 {
        format!("{}…", &s[..s.floor_char_boundary(60)])
    } else {
        s
    }
}
