//! Tasks and graphs: a graph maps keys to tasks (op + arguments) or literals,
//! and travels as the JSON of docs/PROTOCOL.md.

use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value as Json};

use crate::error::{Error, Result};
use crate::key::Key;
use crate::ops::OpRegistry;

/// Longest key accepted, in bytes; longer ones are refused at submission.
pub const MAX_KEY_LEN: usize = 4096;

/// One argument of a task.
#[derive(Clone, Debug, PartialEq)]
pub enum Arg {
    /// A dependency: the chunk stored under this key.
    Ref(Key),
    /// Any other JSON value, passed to the op as it is.
    Literal(Json),
    /// A list of arguments, passed as a list (e.g. the partials of a reduction).
    List(Vec<Arg>),
    /// A task evaluated in place: the scheduler fuses an intermediate that has a
    /// single consumer into that consumer, saving a round trip and a stored chunk.
    Task(Box<Task>),
}

impl Arg {
    /// Calls `f` on every key this argument references, lists included.
    pub fn for_each_ref(&self, f: &mut impl FnMut(&Key)) {
        match self {
            Arg::Ref(k) => f(k),
            Arg::Literal(_) => {}
            Arg::List(items) => items.iter().for_each(|a| a.for_each_ref(f)),
            Arg::Task(t) => t.args.iter().for_each(|a| a.for_each_ref(f)),
        }
    }

    fn from_json(v: Json) -> std::result::Result<Arg, String> {
        Ok(match v {
            Json::Array(items) => Arg::List(
                items
                    .into_iter()
                    .map(Arg::from_json)
                    .collect::<Result<_, _>>()?,
            ),
            Json::Object(m) if m.len() == 1 && m.contains_key("key") => match &m["key"] {
                Json::String(s) => {
                    Arg::Ref(Key::new(s).ok_or("a {\"key\": …} reference is empty")?)
                }
                other => {
                    return Err(format!(
                        "a {{\"key\": …}} reference must be a string, got {other}"
                    ));
                }
            },
            Json::Object(mut m) if m.len() == 1 && m.contains_key("task") => {
                let t = m.remove("task").expect("checked");
                Arg::Task(Box::new(
                    serde_json::from_value(t).map_err(|e| format!("bad inline task: {e}"))?,
                ))
            }
            other => Arg::Literal(other),
        })
    }
}

impl Serialize for Arg {
    // Written straight out, not through a JSON value built per argument: a map
    // of 100,000 calls has as many, and so do the inputs of a large gather.
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            Arg::Ref(k) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("key", k.as_str())?;
                m.end()
            }
            Arg::Literal(v) => v.serialize(s),
            Arg::List(items) => s.collect_seq(items),
            Arg::Task(t) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("task", t)?;
                m.end()
            }
        }
    }
}

// Read straight from the parser, not through a JSON value built per argument
// and per node: a submission of a million tasks has millions of them. Only
// objects that are neither a reference nor a task take the slow path.
impl<'de> Deserialize<'de> for Arg {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(ArgVisitor)
    }
}

struct ArgVisitor;

/// The visits of numbers, booleans and null shared by [`ArgVisitor`],
/// [`NodeVisitor`] and [`StrOrJson`]: each value becomes `$wrap(Json)`, as the
/// JSON value parser would have made it.
macro_rules! visit_non_strings {
    ($wrap:expr) => {
        fn visit_bool<E: serde::de::Error>(self, v: bool) -> std::result::Result<Self::Value, E> {
            Ok($wrap(Json::Bool(v)))
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<Self::Value, E> {
            Ok($wrap(Json::from(v)))
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<Self::Value, E> {
            Ok($wrap(Json::from(v)))
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> std::result::Result<Self::Value, E> {
            Ok($wrap(
                serde_json::Number::from_f64(v).map_or(Json::Null, Json::Number),
            ))
        }
        fn visit_unit<E: serde::de::Error>(self) -> std::result::Result<Self::Value, E> {
            Ok($wrap(Json::Null))
        }
    };
}

/// [`visit_non_strings`] and strings: every scalar becomes `$wrap(Json)`.
macro_rules! visit_scalars {
    ($wrap:expr) => {
        visit_non_strings!($wrap);
        fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<Self::Value, E> {
            Ok($wrap(Json::String(v.to_string())))
        }
        fn visit_string<E: serde::de::Error>(
            self,
            v: String,
        ) -> std::result::Result<Self::Value, E> {
            Ok($wrap(Json::String(v)))
        }
    };
}

/// An object's field name, borrowed from the input when it has no escapes:
/// `{"key": …}` and `{"op": …}` come by the million, and their names need no
/// `String` of their own.
struct Name<'de>(std::borrow::Cow<'de, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_str(StrVisitor).map(Name)
    }
}

/// A JSON value, any string in it borrowed as [`Name`] is: the `"k"` of
/// `{"key": "k"}` becomes a [`Key`] with no `String` in between.
enum StrOrJson<'de> {
    Str(std::borrow::Cow<'de, str>),
    Json(Json),
}

impl<'de> Deserialize<'de> for StrOrJson<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(StrOrJsonVisitor)
    }
}

struct StrVisitor;

impl<'de> serde::de::Visitor<'de> for StrVisitor {
    type Value = std::borrow::Cow<'de, str>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E: serde::de::Error>(
        self,
        v: &'de str,
    ) -> std::result::Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<Self::Value, E> {
        Ok(v.to_string().into())
    }
    fn visit_string<E: serde::de::Error>(self, v: String) -> std::result::Result<Self::Value, E> {
        Ok(v.into())
    }
}

struct StrOrJsonVisitor;

impl<'de> serde::de::Visitor<'de> for StrOrJsonVisitor {
    type Value = StrOrJson<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    visit_non_strings!(StrOrJson::Json);

    fn visit_borrowed_str<E: serde::de::Error>(
        self,
        v: &'de str,
    ) -> std::result::Result<Self::Value, E> {
        StrVisitor.visit_borrowed_str(v).map(StrOrJson::Str)
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<Self::Value, E> {
        StrVisitor.visit_str(v).map(StrOrJson::Str)
    }
    fn visit_string<E: serde::de::Error>(self, v: String) -> std::result::Result<Self::Value, E> {
        StrVisitor.visit_string(v).map(StrOrJson::Str)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        seq: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        Json::deserialize(serde::de::value::SeqAccessDeserializer::new(seq)).map(StrOrJson::Json)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        map: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        Json::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(StrOrJson::Json)
    }
}

impl<'de> serde::de::Visitor<'de> for ArgVisitor {
    type Value = Arg;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an argument: a number, a list, {\"key\": k} or {\"task\": …}")
    }

    visit_scalars!(Arg::Literal);

    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<Arg, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(a) = seq.next_element::<Arg>()? {
            items.push(a);
        }
        Ok(Arg::List(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Arg, A::Error> {
        let mut m = Map::new();
        if let Some(Name(first)) = map.next_key()? {
            // The common case, a lone {"key": "k"}, is decided without a map.
            let value = match map.next_value()? {
                StrOrJson::Str(s) if first == "key" => {
                    if let Some(next) = map.next_key::<String>()? {
                        m.insert(next, map.next_value()?);
                    } else {
                        let key = Key::new(&s).ok_or_else(|| {
                            serde::de::Error::custom("a {\"key\": …} reference is empty")
                        })?;
                        return Ok(Arg::Ref(key));
                    }
                    Json::String(s.into_owned())
                }
                StrOrJson::Str(s) => Json::String(s.into_owned()),
                StrOrJson::Json(v) => v,
            };
            m.insert(first.into_owned(), value);
        }
        while let Some(k) = map.next_key::<String>()? {
            m.insert(k, map.next_value()?);
        }
        Arg::from_json(Json::Object(m)).map_err(serde::de::Error::custom)
    }
}

macro_rules! literal_from {
    ($($t:ty),*) => {$(
        impl From<$t> for Arg {
            fn from(v: $t) -> Self { Arg::Literal(Json::from(v)) }
        }
    )*};
}
literal_from!(i32, i64, u32, u64, usize, f64, bool, &str, String);

impl From<Key> for Arg {
    fn from(k: Key) -> Self {
        Arg::Ref(k)
    }
}

impl From<&Key> for Arg {
    fn from(k: &Key) -> Self {
        Arg::Ref(k.clone())
    }
}

impl<T: Into<Arg>> From<Vec<T>> for Arg {
    fn from(v: Vec<T>) -> Self {
        Arg::List(v.into_iter().map(Into::into).collect())
    }
}

/// A task: an op name with positional and keyword arguments.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Task {
    /// The op's name in the [`OpRegistry`].
    pub op: String,
    /// Positional arguments.
    #[serde(default)]
    pub args: Vec<Arg>,
    /// Keyword arguments (literals).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub kwargs: Map<String, Json>,
}

impl Task {
    /// A task calling `op` with no arguments yet.
    pub fn new(op: impl Into<String>) -> Self {
        Task {
            op: op.into(),
            args: Vec::new(),
            kwargs: Map::new(),
        }
    }

    /// Adds a positional argument.
    pub fn arg(mut self, a: impl Into<Arg>) -> Self {
        self.args.push(a.into());
        self
    }

    /// Adds a keyword argument.
    pub fn kwarg(mut self, name: &str, v: impl Into<Json>) -> Self {
        self.kwargs.insert(name.to_string(), v.into());
        self
    }

    /// Every key the task reads, in argument order, without repeats.
    pub fn dependencies(&self) -> Vec<Key> {
        let mut out: Vec<Key> = Vec::new();
        let mut seen: FxHashSet<&Key> = FxHashSet::default();
        for a in &self.args {
            a.for_each_ref(&mut |k| out.push(k.clone()));
        }
        if out.len() > 1 {
            let all = out.clone();
            out.clear();
            out.extend(all.iter().filter(|k| seen.insert(k)).cloned());
        }
        out
    }
}

/// What a graph holds under a key: a task to run, or a literal value.
#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    /// Computed by running a task.
    Task(Arc<Task>),
    /// A literal: a number (a one-row chunk) or a list of numbers (a float64 chunk).
    Literal(Json),
}

impl Node {
    /// The keys this node depends on.
    pub fn dependencies(&self) -> Vec<Key> {
        match self {
            Node::Task(t) => t.dependencies(),
            Node::Literal(_) => Vec::new(),
        }
    }

    /// The node as a task; a literal becomes the built-in `literal` op.
    pub fn into_task(self) -> Arc<Task> {
        match self {
            Node::Task(t) => t,
            Node::Literal(v) => Arc::new(Task::new("literal").arg(Arg::Literal(v))),
        }
    }
}

impl Serialize for Node {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Node::Task(t) => t.serialize(s),
            Node::Literal(v) => v.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> serde::de::Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a task {\"op\": …} or a literal")
    }

    visit_scalars!(Node::Literal);

    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element::<Json>()? {
            items.push(v);
        }
        Ok(Node::Literal(Json::Array(items)))
    }

    /// A task when the object has `"op"`: once `"op"` is seen (it comes first
    /// from every writer we know), `"args"` are read as arguments directly;
    /// anything before it is kept as JSON until the object's kind is known.
    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Node, A::Error> {
        use serde::de::Error as _;
        let mut op: Option<String> = None;
        let mut args: Option<Vec<Arg>> = None;
        let mut rest = Map::new();
        while let Some(Name(k)) = map.next_key()? {
            let duplicate = || A::Error::custom(format!("duplicate field `{k}`"));
            match &*k {
                "op" if op.is_some() => return Err(duplicate()),
                "op" => op = Some(map.next_value()?),
                "args" if args.is_some() || rest.contains_key("args") => return Err(duplicate()),
                "args" if op.is_some() => args = Some(map.next_value()?),
                _ if rest.contains_key(&*k) => return Err(duplicate()),
                _ => {
                    let v: Json = map.next_value()?;
                    rest.insert(k.into_owned(), v);
                }
            }
        }
        let Some(op) = op else {
            return Ok(Node::Literal(Json::Object(rest)));
        };
        let args = match (args, rest.remove("args")) {
            (Some(a), _) => a,
            (None, Some(v)) => Vec::<Arg>::deserialize(v).map_err(A::Error::custom)?,
            (None, None) => Vec::new(),
        };
        let kwargs = match rest.remove("kwargs") {
            Some(Json::Object(m)) => m,
            Some(other) => {
                return Err(A::Error::custom(format!(
                    "invalid type: {other}, expected \"kwargs\" to be an object"
                )));
            }
            None => Map::new(),
        };
        // As a task anywhere else: a misspelt "kwargs" must not drop the keywords unseen.
        if let Some(field) = rest.keys().next() {
            return Err(A::Error::custom(format!(
                "unknown field `{field}` in the task of op '{op}', expected `op`, `args` or `kwargs`"
            )));
        }
        Ok(Node::Task(Arc::new(Task { op, args, kwargs })))
    }
}

/// A task graph: key → task or literal, as in dask.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Graph {
    /// The nodes by key.
    pub nodes: FxHashMap<Key, Node>,
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a task under `key`.
    pub fn insert(&mut self, key: impl Into<Key>, task: Task) -> &mut Self {
        self.nodes.insert(key.into(), Node::Task(Arc::new(task)));
        self
    }

    /// Adds (or replaces) a literal under `key`.
    pub fn insert_literal(&mut self, key: impl Into<Key>, v: impl Into<Json>) -> &mut Self {
        self.nodes.insert(key.into(), Node::Literal(v.into()));
        self
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the graph has no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Checks the graph as a submission asking for `wanted` is checked: every
    /// op known with fitting arguments, every dependency present, no cycles,
    /// every wanted key present. Errors name the key and the problem.
    pub fn validate(&self, wanted: &[Key], ops: &OpRegistry) -> Result<()> {
        crate::scheduler::check_graph(self, wanted, ops)
    }
}

/// Checks one node on its own: key length, op and arguments, or literal.
pub(crate) fn check_node(key: &Key, node: &Node, ops: &OpRegistry) -> Result<()> {
    if key.as_str().len() > MAX_KEY_LEN {
        let head: String = key.as_str().chars().take(40).collect();
        return Err(Error::invalid(
            &Key::from(format!("{head}…").as_str()),
            format!(
                "key is {} bytes long; the limit is {MAX_KEY_LEN}",
                key.as_str().len()
            ),
        ));
    }
    match node {
        Node::Task(t) => ops.check(key, t),
        Node::Literal(v) => check_literal(key, v),
    }
}

fn check_literal(key: &Key, v: &Json) -> Result<()> {
    let ok = match v {
        Json::Number(_) => true,
        Json::Array(items) => items.iter().all(Json::is_number),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            key,
            "a literal must be a number or a list of numbers (a task needs an \"op\")",
        ))
    }
}

/// What a client submits: a graph plus the keys it wants held for it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Submission {
    /// The graph.
    pub graph: Graph,
    /// The keys to compute and hold for the client; everything else is an intermediate.
    pub keys: Vec<Key>,
}

impl Submission {
    /// Decodes a submission from its JSON text, with a message that says what is wrong.
    pub fn from_json(text: &[u8]) -> Result<Self> {
        serde_json::from_slice(text).map_err(|e| Error::MalformedGraph(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = r#"{"graph": {
       "x-0":   {"op": "random", "args": [1000000], "kwargs": {"seed": 0}},
       "sum-0": {"op": "sum",    "args": [{"key": "x-0"}]},
       "total": {"op": "sum",    "args": [[{"key": "sum-0"}]]}
     },
     "keys": ["total"]}"#;

    #[test]
    fn design_graph_json_round_trips() {
        let s = Submission::from_json(SEED.as_bytes()).unwrap();
        assert_eq!(s.keys, vec![Key::from("total")]);
        let Node::Task(total) = &s.graph.nodes[&Key::from("total")] else {
            panic!()
        };
        assert_eq!(total.args, vec![Arg::List(vec![Arg::Ref("sum-0".into())])]);
        let Node::Task(x) = &s.graph.nodes[&Key::from("x-0")] else {
            panic!()
        };
        assert_eq!(x.kwargs["seed"], 0);
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(Submission::from_json(text.as_bytes()).unwrap(), s);
        s.graph.validate(&s.keys, &OpRegistry::builtin()).unwrap();
    }

    #[test]
    fn bad_graphs_name_the_key_and_the_problem() {
        let ops = OpRegistry::builtin();
        let check = |json: &str| {
            let s = Submission::from_json(json.as_bytes())?;
            s.graph.validate(&s.keys, &ops)
        };
        let err = |json: &str| check(json).unwrap_err().to_string();
        let e = err(r#"{"graph": {"a": {"op": "nope"}}, "keys": ["a"]}"#);
        assert!(e.contains("'a'") && e.contains("unknown op 'nope'"), "{e}");
        let e = err(r#"{"graph": {"a": {"op": "sum", "args": [{"key": "b"}]}}, "keys": ["a"]}"#);
        assert!(
            e.contains("'a'") && e.contains("missing dependency 'b'"),
            "{e}"
        );
        let e = err(r#"{"graph": {"a": {"op": "neg", "args": [{"key": "b"}]},
                                  "b": {"op": "neg", "args": [{"key": "a"}]}}, "keys": ["a"]}"#);
        assert!(e.contains("cycle"), "{e}");
        let e = err(r#"{"graph": {"a": {"op": "random", "args": ["ten"]}}, "keys": ["a"]}"#);
        assert!(e.contains("'a'") && e.contains("random"), "{e}");
        let e = err(r#"{"graph": {"a": {"op": "random", "args": [1, 2, 3]}}, "keys": ["a"]}"#);
        assert!(e.contains("'a'") && e.contains("argument"), "{e}");
        let e = err(r#"{"graph": {"a": {"op": "random", "args": [1e15]}}, "keys": ["a"]}"#);
        assert!(e.contains("'a'"), "{e}");
        let e = err(r#"{"graph": {"a": "text"}, "keys": ["a"]}"#);
        assert!(e.contains("literal"), "{e}");
        let e = err(r#"{"graph": {}, "keys": ["zz"]}"#);
        assert!(e.contains("'zz'"), "{e}");
        let e = err(r#"{"graph": {"": 1}, "keys": []}"#);
        assert!(e.contains("malformed") && e.contains("non-empty"), "{e}");
        let e = err(r#"{"graph": {"a": {"op": "sum", "args": [{"key": 3}]}}, "keys": []}"#);
        assert!(e.contains("must be a string"), "{e}");
        let e = err("{nope");
        assert!(e.contains("malformed"), "{e}");
        // A misspelt field is an error, not keywords dropped unseen.
        let e = err(
            r#"{"graph": {"a": {"op": "random", "args": [3], "kwarg": {"seed": 1}}}, "keys": ["a"]}"#,
        );
        assert!(
            e.contains("unknown field `kwarg` in the task of op 'random'"),
            "{e}"
        );
    }

    #[test]
    fn nodes_parse_the_same_whatever_order_their_fields_come_in() {
        let node = |json: &str| serde_json::from_str::<Node>(json);
        let first =
            node(r#"{"op": "add", "args": [{"key": "a"}, [1, {"key": "b"}]], "kwargs": {"k": 1}}"#);
        let last =
            node(r#"{"kwargs": {"k": 1}, "args": [{"key": "a"}, [1, {"key": "b"}]], "op": "add"}"#);
        let Node::Task(t) = first.unwrap() else {
            panic!("not a task")
        };
        assert_eq!(Node::Task(t.clone()), last.unwrap());
        assert_eq!(
            t.args,
            vec![
                Arg::Ref("a".into()),
                Arg::List(vec![Arg::Literal(1.into()), Arg::Ref("b".into())])
            ]
        );
        // Objects that are not references stay literals, for validation to refuse.
        let a: Arg = serde_json::from_str(r#"{"key": "a", "more": 1}"#).unwrap();
        assert!(matches!(a, Arg::Literal(Json::Object(_))), "{a:?}");
        assert_eq!(
            node(r#"{"args": [1]}"#).unwrap(),
            Node::Literal(serde_json::json!({"args": [1]}))
        );
        for bad in [
            r#"{"op": "a", "op": "b"}"#,
            r#"{"op": "a", "args": [], "args": []}"#,
            r#"{"args": [], "op": "a", "args": []}"#,
            r#"{"op": "a", "kwargs": 3}"#,
            r#"{"op": 3}"#,
            r#"{"op": "a", "args": 3}"#,
        ] {
            assert!(node(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn escaped_names_and_keys_parse_like_plain_ones() {
        // Borrowed from the input when plain, copied when escaped or read
        // from a JSON value: the result must not depend on which.
        let plain = r#"{"op": "add", "args": [{"key": "a\"b"}, {"key": "c"}, {"k": "x"}]}"#;
        let escaped =
            r#"{"\u006fp": "add", "args": [{"key": "a\"b"}, {"\u006bey": "c"}, {"k": "x"}]}"#;
        let from_text = serde_json::from_str::<Node>(plain).unwrap();
        assert_eq!(from_text, serde_json::from_str::<Node>(escaped).unwrap());
        let value: Json = serde_json::from_str(escaped).unwrap();
        assert_eq!(from_text, serde_json::from_value::<Node>(value).unwrap());
        let Node::Task(t) = from_text else {
            panic!("not a task")
        };
        assert_eq!(t.args[0], Arg::Ref(Key::from("a\"b")));
        assert_eq!(t.args[1], Arg::Ref(Key::from("c")));
        assert_eq!(t.args[2], Arg::Literal(serde_json::json!({"k": "x"})));
        let odd = |json: &str| serde_json::from_str::<Arg>(json).unwrap();
        assert_eq!(
            odd(r#"{"key": [1, {"a": 2}], "more": null}"#),
            Arg::Literal(serde_json::json!({"key": [1, {"a": 2}], "more": null}))
        );
        let err = serde_json::from_str::<Arg>(r#"{"key": {"a": 2}}"#).unwrap_err();
        assert!(err.to_string().contains("must be a string"), "{err}");
        assert_eq!(
            odd(r#"{"x": "y"}"#),
            Arg::Literal(serde_json::json!({"x": "y"}))
        );
        assert!(serde_json::from_str::<Arg>(r#"{"key": ""}"#).is_err());
        assert_eq!(
            serde_json::from_str::<Key>(r#""a\u0062""#).unwrap(),
            Key::from("ab")
        );
    }

    #[test]
    fn deep_chains_validate_without_recursion() {
        let mut g = Graph::new();
        g.insert("k0", Task::new("random").arg(10));
        for i in 1..200_000 {
            g.insert(
                format!("k{i}").as_str(),
                Task::new("neg").arg(Key::from(format!("k{}", i - 1).as_str())),
            );
        }
        g.validate(&[], &OpRegistry::builtin()).unwrap();
    }
}
