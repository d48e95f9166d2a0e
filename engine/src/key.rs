//! Keys: the cluster-wide name of one chunk, a non-empty UTF-8 string.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The name of one chunk. Cheap to clone; its bytes are the Flight ticket.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(Arc<str>);

impl Key {
    /// A key from a string; `None` if the string is empty.
    pub fn new(s: impl AsRef<str>) -> Option<Self> {
        let s = s.as_ref();
        (!s.is_empty()).then(|| Key(Arc::from(s)))
    }

    /// A dask-style tuple key `('name', i, j, …)`, rendered as dask renders it.
    pub fn tuple(name: &str, index: &[usize]) -> Self {
        let mut s = format!("('{name}'");
        for i in index {
            s.push_str(&format!(", {i}"));
        }
        s.push(')');
        Key(Arc::from(s))
    }

    /// Parses a key made by [`Key::tuple`] back into its name and indices.
    pub fn as_tuple(&self) -> Option<(&str, Vec<usize>)> {
        let inner = self.0.strip_prefix("('")?.strip_suffix(')')?;
        let (name, rest) = inner.split_once('\'')?;
        let index = rest
            .split(", ")
            .skip(1)
            .map(|p| p.parse().ok())
            .collect::<Option<Vec<usize>>>()?;
        Some((name, index))
    }

    /// The key as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Key {
    type Error = &'static str;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Key::new(s).ok_or("a key must be a non-empty string")
    }
}

impl From<Key> for String {
    fn from(k: Key) -> String {
        k.0.to_string()
    }
}

impl From<&str> for Key {
    /// Panics on an empty string: use [`Key::new`] for untrusted input.
    fn from(s: &str) -> Self {
        Key::new(s).expect("a key must be a non-empty string")
    }
}

impl From<(&str, usize)> for Key {
    fn from((name, i): (&str, usize)) -> Self {
        Key::tuple(name, &[i])
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

// Written and read as a plain string, with no `String` in between: every
// message between center and workers carries thousands of keys.
impl Serialize for Key {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl serde::de::Visitor<'_> for KeyVisitor {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a non-empty string")
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Key, E> {
        Key::new(s).ok_or_else(|| E::custom("a key must be a non-empty string"))
    }
}

impl std::borrow::Borrow<str> for Key {
    fn borrow(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuple_keys_render_like_dask_and_parse_back() {
        let k = Key::tuple("x", &[3, 4]);
        assert_eq!(k.as_str(), "('x', 3, 4)");
        assert_eq!(k.as_tuple(), Some(("x", vec![3, 4])));
        assert_eq!(Key::from(("sum", 7)).as_str(), "('sum', 7)");
        assert_eq!(Key::from("x-0").as_tuple(), None);
    }

    #[test]
    fn empty_keys_are_refused() {
        assert!(Key::new("").is_none());
        assert!(serde_json::from_str::<Key>("\"\"").is_err());
        assert_eq!(
            serde_json::from_str::<Key>("\"a\"").unwrap(),
            Key::from("a")
        );
    }
}
