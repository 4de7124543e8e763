//! The value at a dotted path of a JSON document: members read as raw
//! slices with borrowed keys (`sluice_core::json`), only the objects on
//! the path looked into, nothing built.

use std::borrow::Cow;

use sluice_core::{json, json_quick};

/// The value at `path` below an object's members (a repeated key: its
/// last value, as a parser building the object would keep).
pub(crate) fn find<'a>(members: &[(Cow<'a, str>, &'a str)], path: &[String]) -> Option<&'a str> {
    let (first, rest) = path.split_first()?;
    let (_, v) = members.iter().rev().find(|(k, _)| k == first)?;
    below(v, rest)
}

/// The value at `path` below the JSON text `v` (`v` itself for an empty
/// path). An object whose keys have no escape is walked in place
/// (`json_quick`, no list of its members made: that was an allocation on
/// every request recording a nested field); any other is read by serde.
fn below<'a>(v: &'a str, path: &[String]) -> Option<&'a str> {
    let Some((first, rest)) = path.split_first() else {
        return Some(v);
    };
    let mut found = None;
    let sure = json_quick::object_members(v.as_bytes(), |k, x, _| {
        if k == first.as_bytes() {
            found = Some(x);
        }
    });
    if !sure {
        return find(&json::entries_of(v).ok()?, path);
    }
    // A slice of `v`, between JSON's ASCII delimiters.
    let x = found?;
    let at = x.as_ptr() as usize - v.as_ptr() as usize;
    below(v.get(at..at + x.len())?, rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(p: &[&str]) -> Vec<Vec<String>> {
        p.iter()
            .map(|s| s.split('.').map(str::to_owned).collect())
            .collect()
    }

    /// For each path, the raw value there (`None` for all when the body
    /// is not a JSON object).
    fn pick(body: &str, p: &[&str]) -> Option<Vec<Option<String>>> {
        let root: Vec<_> = json::object(body)
            .ok()?
            .into_iter()
            .map(|(k, v)| (k, v.get()))
            .collect();
        Some(
            paths(p)
                .iter()
                .map(|path| find(&root, path).map(str::to_owned))
                .collect(),
        )
    }

    fn got(body: &str, p: &[&str]) -> Vec<Option<String>> {
        pick(body, p).unwrap_or_else(|| vec![None; p.len()])
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
            assert!(pick(bad, &["user"]).is_none(), "{bad}");
        }
    }
}
