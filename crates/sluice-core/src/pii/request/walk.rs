//! The serde pass of [`super::redact_request_json`] (run when the quick
//! pass, `quick.rs`, is not sure of a body, and the reference it is tested
//! against): serde visitors for
//! the request object, its `messages` array and each message, which take
//! the members on the prompt's paths as raw slices (to [`Edits`]) and skip
//! everything else as the parser reads it. Reading the body once, instead
//! of as raw members and then each message's members again, halves the
//! JSON work of redaction.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::{Edits, Seen, Shape};
use crate::json::Key;

/// The request object, the top-level members a caller keeps, and what
/// `messages` was.
pub(super) struct Top<'e, 'a, 'k, K> {
    pub edits: &'e mut Edits<'a>,
    pub keep: &'k K,
    pub kept: &'e mut super::Members<'a>,
    pub messages: &'e mut Seen,
}

/// The `messages` member, whatever it holds (only an array is looked into).
struct Messages<'e, 'a>(&'e mut Edits<'a>);

/// One element of `messages` (only an object is looked into).
struct Message<'e, 'a>(&'e mut Edits<'a>);

/// A visitor of any JSON value: what it does not look into (`visit_seq`,
/// `visit_map`, written by each) is taken and dropped, as
/// `redact_request` passes over it. With arguments: the visitor's value
/// type, what it says of a `null` and of any other scalar.
macro_rules! pass_over_others {
    () => {
        pass_over_others!((), (), ());
    };
    ($t:ty, $unit:expr, $other:expr) => {
        type Value = $t;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<$t, E> {
            Ok($other)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<$t, E> {
            Ok($other)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<$t, E> {
            Ok($other)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<$t, E> {
            Ok($other)
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<$t, E> {
            Ok($other)
        }
        fn visit_unit<E: de::Error>(self) -> Result<$t, E> {
            Ok($unit)
        }
    };
}

/// The seed of a [`pass_over_others`] visitor: it takes any value.
macro_rules! any_value_seed {
    ($t:ident, $v:ty) => {
        impl<'a> DeserializeSeed<'a> for $t<'_, 'a> {
            type Value = $v;
            fn deserialize<D: Deserializer<'a>>(self, d: D) -> Result<$v, D::Error> {
                d.deserialize_any(self)
            }
        }
    };
}

any_value_seed!(Messages, Seen);
any_value_seed!(Message, ());

/// The next value's JSON text.
fn raw<'a, A: MapAccess<'a>>(map: &mut A) -> Result<&'a str, A::Error> {
    map.next_value::<&'a RawValue>().map(RawValue::get)
}

fn walked<T, E: de::Error>(r: serde_json::Result<T>) -> Result<T, E> {
    r.map_err(E::custom)
}

impl<'a, K: Fn(&str) -> bool> DeserializeSeed<'a> for Top<'_, 'a, '_, K> {
    type Value = ();
    fn deserialize<D: Deserializer<'a>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'a, K: Fn(&str) -> bool> Visitor<'a> for Top<'_, 'a, '_, K> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'a>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(Key(k)) = map.next_key()? {
            let keep = (self.keep)(&k);
            let v = match &*k {
                // Walked as it is read, unless kept (rare: the whole
                // prompt recorded): then read again from its raw slice.
                "messages" if !keep => {
                    let seen = map.next_value_seed(Messages(&mut *self.edits))?;
                    self.messages.see(seen);
                    continue;
                }
                "messages" => {
                    let v = raw(&mut map)?;
                    let mut de = serde_json::Deserializer::from_str(v);
                    let seen = walked(Messages(&mut *self.edits).deserialize(&mut de))?;
                    self.messages.see(seen);
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

impl Seen {
    /// One more `messages` member: a second one is [`Seen::Other`].
    pub(super) fn see(&mut self, seen: Seen) {
        *self = match self {
            Seen::Absent => seen,
            _ => Seen::Other,
        };
    }
}

impl<'a> Visitor<'a> for Messages<'_, 'a> {
    pass_over_others!(Seen, Seen::Null, Seen::Other);
    fn visit_seq<S: SeqAccess<'a>>(self, mut seq: S) -> Result<Seen, S::Error> {
        let mut n = 0;
        while seq.next_element_seed(Message(&mut *self.0))?.is_some() {
            n += 1;
        }
        Ok(Seen::Array(n))
    }
    fn visit_map<A: MapAccess<'a>>(self, mut map: A) -> Result<Seen, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Seen::Other)
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
