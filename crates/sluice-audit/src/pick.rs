//! The values at a few dotted paths of a JSON document, found in one pass
//! that descends only into the objects on those paths: keys are borrowed,
//! every other value is skipped without being built.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use sluice_core::json::Key;

/// For each path (its parts), the raw value there when the document has
/// one; `None` when the document is not a JSON object.
pub(crate) fn pick<'a, P: AsRef<[String]>>(
    body: &'a [u8],
    paths: &[P],
) -> Option<Vec<Option<&'a RawValue>>> {
    if body.trim_ascii_start().first() != Some(&b'{') {
        return None;
    }
    let mut found = vec![None; paths.len()];
    let live: Vec<usize> = (0..paths.len()).collect();
    let mut de = serde_json::Deserializer::from_slice(body);
    let level = Level {
        paths,
        live: &live,
        depth: 0,
        found: &mut found,
    };
    level.deserialize(&mut de).and_then(|()| de.end()).ok()?;
    Some(found)
}

/// One object on the paths: `live` are the paths that lead through it,
/// `depth` the index of their part that names its keys.
struct Level<'p, 'f, 'a, P> {
    paths: &'p [P],
    live: &'p [usize],
    depth: usize,
    found: &'f mut [Option<&'a RawValue>],
}

impl<'de, P: AsRef<[String]>> DeserializeSeed<'de> for Level<'_, '_, 'de, P> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, P: AsRef<[String]>> Visitor<'de> for Level<'_, '_, 'de, P> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let part = |i: usize| self.paths[i].as_ref().get(self.depth);
        while let Some(Key(key)) = map.next_key()? {
            if !self
                .live
                .iter()
                .any(|&i| part(i).is_some_and(|p| *p == key))
            {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            let raw: &'de RawValue = map.next_value()?;
            let mut deeper = Vec::new();
            for &i in self.live {
                if part(i).is_some_and(|p| *p == key) {
                    if self.paths[i].as_ref().len() == self.depth + 1 {
                        self.found[i] = Some(raw);
                    } else {
                        deeper.push(i);
                    }
                }
            }
            if !deeper.is_empty() {
                let level = Level {
                    paths: self.paths,
                    live: &deeper,
                    depth: self.depth + 1,
                    found: &mut *self.found,
                };
                let mut de = serde_json::Deserializer::from_str(raw.get());
                level
                    .deserialize(&mut de)
                    .map_err(serde::de::Error::custom)?;
            }
        }
        Ok(())
    }

    // Anything but an object has nothing at a path below it.
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(p: &[&str]) -> Vec<Vec<String>> {
        p.iter()
            .map(|s| s.split('.').map(str::to_owned).collect())
            .collect()
    }

    fn got(body: &str, p: &[&str]) -> Vec<Option<String>> {
        pick(body.as_bytes(), &paths(p))
            .unwrap_or_else(|| vec![None; p.len()])
            .into_iter()
            .map(|r| r.map(|r| r.get().to_owned()))
            .collect()
    }

    #[test]
    fn values_at_paths_nested_and_escaped() {
        let body = r#"{"model":"m","messages":[{"role":"user"}],"user":"u@x.io",
            "metadata":{"team":"ops","deep":{"a":[1,2]}},"te\u0061m":7}"#;
        assert_eq!(
            got(
                body,
                &[
                    "user",
                    "metadata.team",
                    "metadata.deep.a",
                    "metadata",
                    "team",
                    "nope",
                    "metadata.nope"
                ]
            ),
            vec![
                Some(r#""u@x.io""#.into()),
                Some(r#""ops""#.into()),
                Some("[1,2]".into()),
                Some(r#"{"team":"ops","deep":{"a":[1,2]}}"#.into()),
                Some("7".into()),
                None,
                None,
            ]
        );
    }

    #[test]
    fn no_value_below_a_non_object_and_none_in_bad_json() {
        assert_eq!(
            got(
                r#"{"metadata":"x","user":[1]}"#,
                &["metadata.team", "user.a"]
            ),
            vec![None, None]
        );
        for bad in [r#"{"user":"a""#, r#"{"user":"a"} trailing"#, "[1,2]", " 7"] {
            assert!(pick(bad.as_bytes(), &paths(&["user"])).is_none(), "{bad}");
        }
    }
}
