//! The single pass of [`super::redact_request_json`]: serde visitors for
//! the request object, its `messages` array and each message, which take
//! the members on the prompt's paths as raw slices (to [`Edits`]) and skip
//! everything else as the parser reads it. Reading the body once, instead
//! of as raw members and then each message's members again, halves the
//! JSON work of redaction.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::{Edits, Shape};
use crate::json::Key;

/// The request object, and the top-level members a caller keeps.
pub(super) struct Top<'e, 'a, 'k, K> {
    pub edits: &'e mut Edits<'a>,
    pub keep: &'k [K],
    pub kept: &'e mut super::Members<'a>,
}

/// The `messages` member, whatever it holds (only an array is looked into).
struct Messages<'e, 'a>(&'e mut Edits<'a>);

/// One element of `messages` (only an object is looked into).
struct Message<'e, 'a>(&'e mut Edits<'a>);

/// A visitor of any JSON value: what it does not look into (`visit_seq`,
/// `visit_map`, written by each) is taken and dropped, as
/// `redact_request` passes over it.
macro_rules! pass_over_others {
    () => {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E: de::Error>(self) -> Result<(), E> {
            Ok(())
        }
    };
}

/// The seed of a [`pass_over_others`] visitor: it takes any value.
macro_rules! any_value_seed {
    ($t:ident) => {
        impl<'a> DeserializeSeed<'a> for $t<'_, 'a> {
            type Value = ();
            fn deserialize<D: Deserializer<'a>>(self, d: D) -> Result<(), D::Error> {
                d.deserialize_any(self)
            }
        }
    };
}

any_value_seed!(Messages);
any_value_seed!(Message);

fn raw<'a, A: MapAccess<'a>>(map: &mut A) -> Result<&'a RawValue, A::Error> {
    map.next_value()
}

fn walked<E: de::Error>(r: serde_json::Result<()>) -> Result<(), E> {
    r.map_err(E::custom)
}

impl<'a, K: AsRef<str>> DeserializeSeed<'a> for Top<'_, 'a, '_, K> {
    type Value = ();
    fn deserialize<D: Deserializer<'a>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'a, K: AsRef<str>> Visitor<'a> for Top<'_, 'a, '_, K> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'a>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(Key(k)) = map.next_key()? {
            let keep = self.keep.iter().any(|w| w.as_ref() == k);
            let v = match &*k {
                // Walked as it is read, unless kept (rare: the whole
                // prompt recorded): then read again from its raw slice.
                "messages" if !keep => {
                    map.next_value_seed(Messages(&mut *self.edits))?;
                    continue;
                }
                "messages" => {
                    let v = raw(&mut map)?;
                    let mut de = serde_json::Deserializer::from_str(v.get());
                    walked(Messages(&mut *self.edits).deserialize(&mut de))?;
                    v
                }
                "system" | "input" | "prompt" | "user" => {
                    let v = raw(&mut map)?;
                    walked(self.edits.walk(v, Shape::Text))?;
                    v
                }
                "metadata" => {
                    let v = raw(&mut map)?;
                    walked(self.edits.walk(v, Shape::Strings))?;
                    v
                }
                _ if keep => raw(&mut map)?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            if keep {
                self.kept.push((k, v));
            }
        }
        Ok(())
    }
}

impl<'a> Visitor<'a> for Messages<'_, 'a> {
    pass_over_others!();
    fn visit_seq<S: SeqAccess<'a>>(self, mut seq: S) -> Result<(), S::Error> {
        while seq.next_element_seed(Message(&mut *self.0))?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'a>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(())
    }
}

impl<'a> Visitor<'a> for Message<'_, 'a> {
    pass_over_others!();
    fn visit_seq<S: SeqAccess<'a>>(self, mut seq: S) -> Result<(), S::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'a>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(Key(k)) = map.next_key()? {
            match &*k {
                "content" => {
                    let v = raw(&mut map)?;
                    walked(self.0.content(v))?;
                }
                "tool_calls" => {
                    let v = raw(&mut map)?;
                    walked(self.0.tool_calls(v))?;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}
