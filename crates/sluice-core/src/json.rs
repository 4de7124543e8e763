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
    kind_of(v.get())
}

/// [`kind`] of a value's JSON text.
pub fn kind_of(raw: &str) -> Kind {
    match raw.trim_ascii_start().as_bytes().first() {
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

/// [`entries`] of a value's JSON text, each value as its text.
pub fn entries_of(raw: &str) -> serde_json::Result<Vec<(Cow<'_, str>, &str)>> {
    if kind_of(raw) != Kind::Object {
        return Ok(Vec::new());
    }
    if let Some(quick) = quick_entries(raw) {
        return Ok(quick);
    }
    Ok(object(raw)?
        .into_iter()
        .map(|(k, v)| (k, v.get()))
        .collect())
}

/// [`entries_of`] read by a `json_quick` cursor, when it is sure of `raw`
/// (no escaped key): no serde visitor per member.
fn quick_entries(raw: &str) -> Option<Vec<(Cow<'_, str>, &str)>> {
    let mut out = Vec::new();
    let mut c = crate::json_quick::cursor::Cursor::new(raw);
    c.object(|c, k| {
        out.push((Cow::Borrowed(k), c.take()?));
        Some(())
    })?;
    c.at_end().then_some(out)
}

/// [`elements_of`] read by a `json_quick` cursor, when it is sure of `raw`.
fn quick_elements(raw: &str) -> Option<Vec<&str>> {
    let mut out = Vec::new();
    let mut c = crate::json_quick::cursor::Cursor::new(raw);
    c.array(|c| {
        out.push(c.take()?);
        Some(())
    })?;
    c.at_end().then_some(out)
}

/// The elements of an array (none when `v` is something else).
pub fn elements(v: &RawValue) -> serde_json::Result<Vec<&RawValue>> {
    if kind(v) != Kind::Array {
        return Ok(Vec::new());
    }
    serde_json::from_str(v.get())
}

/// [`elements`] of a value's JSON text, each as its text.
pub fn elements_of(raw: &str) -> serde_json::Result<Vec<&str>> {
    if kind_of(raw) != Kind::Array {
        return Ok(Vec::new());
    }
    if let Some(quick) = quick_elements(raw) {
        return Ok(quick);
    }
    let els: Vec<&RawValue> = serde_json::from_str(raw)?;
    Ok(els.into_iter().map(RawValue::get).collect())
}

/// The text of a string value, borrowed unless it has escapes (`None` when
/// `v` is something else).
pub fn text(v: &RawValue) -> serde_json::Result<Option<Cow<'_, str>>> {
    text_of(v.get())
}

/// [`text`] of a value's JSON text (which must be JSON: an unescaped
/// string is taken as it is).
pub fn text_of(raw: &str) -> serde_json::Result<Option<Cow<'_, str>>> {
    let raw = raw.trim_ascii();
    if kind_of(raw) != Kind::String {
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

    /// The texts' members and elements as serde_json reads them, whether
    /// the cursor is sure of them (plain keys) or serde reads them (an
    /// escaped key); what is not JSON is an error either way.
    #[test]
    fn members_and_elements_of_texts_are_serdes() {
        for t in [
            r#"{"a":1,"b":[true,"x\n"],"a":{"c":null}}"#,
            r#" { "a" : [ 1 , 2 ] , "b" : "x" } "#,
            r#"{"a":1,"b\u0021":[true,"x"]}"#,
            r#"{}"#,
        ] {
            let want: Vec<(Cow<'_, str>, &str)> = object(t)
                .unwrap()
                .into_iter()
                .map(|(k, v)| (k, v.get()))
                .collect();
            assert_eq!(entries_of(t).unwrap(), want, "{t}");
            for (_, v) in want {
                let els: Vec<&str> = match kind_of(v) {
                    Kind::Array => serde_json::from_str::<Vec<&RawValue>>(v)
                        .unwrap()
                        .into_iter()
                        .map(RawValue::get)
                        .collect(),
                    _ => Vec::new(),
                };
                assert_eq!(elements_of(v).unwrap(), els, "{v}");
            }
        }
        assert!(matches!(
            entries_of(r#"{"a":1}"#).unwrap()[0].0,
            Cow::Borrowed(_)
        ));
        for bad in [r#"{"a":1,}"#, r#"{"a\q":1}"#, "[1,]", "[1 2]"] {
            assert!(
                entries_of(bad).is_err() || elements_of(bad).is_err(),
                "{bad}"
            );
        }
    }
}
