//! The values at a few dotted paths of a JSON document: members read as
//! raw slices with borrowed keys (`sluice_core::json`), only the objects on
//! the paths looked into, nothing built.

use std::borrow::Cow;

use serde_json::value::RawValue;
use sluice_core::json;

/// For each path (its parts), the raw value there when the document has
/// one; `None` when the document is not a JSON object.
pub(crate) fn pick<'a, P: AsRef<[String]>>(
    body: &'a [u8],
    paths: &[P],
) -> Option<Vec<Option<&'a RawValue>>> {
    let root = json::object(std::str::from_utf8(body).ok()?).ok()?;
    Some(paths.iter().map(|p| find(&root, p.as_ref())).collect())
}

/// The value at `path` below an object's members (a repeated key: its
/// last value, as a parser building the object would keep).
fn find<'a>(members: &[(Cow<'a, str>, &'a RawValue)], path: &[String]) -> Option<&'a RawValue> {
    let (first, rest) = path.split_first()?;
    let (_, v) = members.iter().rev().find(|(k, _)| k == first)?;
    if rest.is_empty() {
        return Some(v);
    }
    find(&json::entries(v).ok()?, rest)
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
