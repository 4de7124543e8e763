//! The value at a dotted path of a JSON document: members read as raw
//! slices with borrowed keys (`sluice_core::json`), only the objects on
//! the path looked into, nothing built.

use std::borrow::Cow;

use sluice_core::json;

/// The value at `path` below an object's members (a repeated key: its
/// last value, as a parser building the object would keep).
pub(crate) fn find<'a>(members: &[(Cow<'a, str>, &'a str)], path: &[String]) -> Option<&'a str> {
    let (first, rest) = path.split_first()?;
    let (_, v) = members.iter().rev().find(|(k, _)| k == first)?;
    if rest.is_empty() {
        return Some(v);
    }
    find(&json::entries_of(v).ok()?, rest)
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
