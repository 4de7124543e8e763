//! Reading JSON without building it: object keys borrowed from the text,
//! objects and arrays as their members' raw slices.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// An object key, borrowed unless it has escapes.
pub struct Key<'de>(pub Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// An object's members in document order (repeated keys kept), each value
/// as its raw slice.
struct Entries<'de>(Vec<(Cow<'de, str>, &'de RawValue)>);

impl<'de> Deserialize<'de> for Entries<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries<'de>, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(Key(k)) = map.next_key()? {
                    out.push((k, map.next_value()?));
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// What kind of value a raw slice holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Object,
    Array,
    String,
    /// A number, `true`, `false` or `null`.
    Scalar,
}

pub fn kind(v: &RawValue) -> Kind {
    match v.get().trim_ascii_start().as_bytes().first() {
        Some(b'{') => Kind::Object,
        Some(b'[') => Kind::Array,
        Some(b'"') => Kind::String,
        _ => Kind::Scalar,
    }
}

/// The members of an object (none when `v` is something else).
pub fn entries(v: &RawValue) -> serde_json::Result<Vec<(Cow<'_, str>, &RawValue)>> {
    if kind(v) != Kind::Object {
        return Ok(Vec::new());
    }
    object(v.get())
}

/// The members of the object `text` holds; an error when it holds
/// anything else or is not JSON.
pub fn object(text: &str) -> serde_json::Result<Vec<(Cow<'_, str>, &RawValue)>> {
    Ok(serde_json::from_str::<Entries<'_>>(text)?.0)
}

/// The elements of an array (none when `v` is something else).
pub fn elements(v: &RawValue) -> serde_json::Result<Vec<&RawValue>> {
    if kind(v) != Kind::Array {
        return Ok(Vec::new());
    }
    serde_json::from_str(v.get())
}

/// The text of a string value, borrowed unless it has escapes (`None` when
/// `v` is something else).
pub fn text(v: &RawValue) -> serde_json::Result<Option<Cow<'_, str>>> {
    let raw = v.get().trim_ascii();
    if kind(v) != Kind::String {
        return Ok(None);
    }
    let inner = &raw[1..raw.len() - 1];
    if memchr::memchr(b'\\', inner.as_bytes()).is_none() {
        return Ok(Some(Cow::Borrowed(inner)));
    }
    serde_json::from_str::<String>(raw).map(|s| Some(Cow::Owned(s)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> &RawValue {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn members_elements_and_text() {
        let v = raw(r#"{"a":1,"b\u0021":[true,"x"],"a":{"c":null}}"#);
        let e = entries(v).unwrap();
        let keys: Vec<&str> = e.iter().map(|(k, _)| &**k).collect();
        assert_eq!(keys, ["a", "b!", "a"]);
        assert!(matches!(e[0].0, Cow::Borrowed(_)) && matches!(e[1].0, Cow::Owned(_)));
        assert_eq!(e[2].1.get(), r#"{"c":null}"#);
        let els = elements(e[1].1).unwrap();
        assert_eq!(
            els.iter().map(|x| kind(x)).collect::<Vec<_>>(),
            [Kind::Scalar, Kind::String]
        );
        assert_eq!(text(els[1]).unwrap().as_deref(), Some("x"));
        assert!(matches!(text(els[1]).unwrap(), Some(Cow::Borrowed(_))));
        assert_eq!(
            text(raw(r#""a\nb\u00e9""#)).unwrap().as_deref(),
            Some("a\nbé")
        );
        assert_eq!(text(els[0]).unwrap(), None);
        assert!(entries(els[0]).unwrap().is_empty() && elements(v).unwrap().is_empty());
    }
}
