//! [`Usage`] read from the JSON object that starts a text: what an answer's
//! `"usage":` is followed by.
//!
//! serde_json read the bench's answer's `usage` (69 bytes) in ~1,400
//! instructions, ~3 % of a bare proxied request (`bench/instructions.py`,
//! callgrind): a deserializer set up, each key checked as UTF-8 and matched
//! against the field names and their aliases. The usual object (plain
//! ASCII keys, token counts as plain integers) is read here in one pass
//! instead (~950; the request 504 fewer), other members' values skipped by
//! [`crate::json_quick`]; anything else (an escape in a key, a count that is not a plain integer,
//! a field twice) goes to serde_json, which stays the judge, so both read
//! every text alike (a property test holds them to it).

use serde::Deserialize;

use super::Usage;
use crate::json_quick::skip_ws;

/// Digits a count may have to be read here: any 19 fit a `u64`.
const MAX_DIGITS: usize = 19;

impl Usage {
    /// The usage object at the start of `text` (whitespace before it
    /// allowed, anything after it), as serde_json reads it; `None` when
    /// it is not one.
    pub fn read_prefix(text: &[u8]) -> Option<Usage> {
        match quick(text) {
            Some(u) => Some(u),
            None => {
                let mut de = serde_json::Deserializer::from_slice(text);
                Usage::deserialize(&mut de).ok()
            }
        }
    }
}

/// The usage object at the start of `text`, when it surely reads as this
/// (see the module doc); `None` when not sure. Keys are read as plain
/// ASCII and counts as digits here; the values of other members are
/// skipped by [`crate::json_quick::value_end`].
fn quick(text: &[u8]) -> Option<Usage> {
    let mut usage = Usage::default();
    // Each field seen, under its name or its alias: a second is serde's
    // "duplicate field" error, left to serde to say.
    let (mut prompt, mut completion) = (false, false);
    let mut i = skip_ws(text, 0);
    if text.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(text, i + 1);
    if text.get(i) == Some(&b'}') {
        return Some(usage);
    }
    loop {
        if text.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = i + 1 + memchr::memchr(b'"', &text[i + 1..])?;
        let key = &text[i + 1..key_end];
        // Not short-circuited: a loop without an early exit, which the
        // compiler may run several bytes a step.
        if !key.iter().fold(true, |all, &c| all & plain(c)) {
            return None;
        }
        i = skip_ws(text, key_end + 1);
        if text.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(text, i + 1);
        let field = match key {
            b"prompt_tokens" | b"input_tokens" => Some((&mut prompt, &mut usage.prompt_tokens)),
            b"completion_tokens" | b"output_tokens" => {
                Some((&mut completion, &mut usage.completion_tokens))
            }
            _ => None,
        };
        match field {
            Some((seen, slot)) => {
                let (n, end) = count(text, i)?;
                if std::mem::replace(seen, true) {
                    return None;
                }
                *slot = n;
                i = skip_ws(text, end);
            }
            None => i = crate::json_quick::value_end(text, i)?,
        }
        match text.get(i) {
            Some(b',') => i = skip_ws(text, i + 1),
            Some(b'}') => return Some(usage),
            _ => return None,
        }
    }
}

/// A key's byte that needs no look: printable ASCII but `\\` (the key
/// ends at its first `"`).
fn plain(c: u8) -> bool {
    (0x20..0x7f).contains(&c) & (c != b'\\')
}

/// The count written at `i` as a plain integer (JSON's: no sign, no
/// leading zero; a fraction or an exponent after it is not a `,` or `}`)
/// of at most [`MAX_DIGITS`] digits, and the index after it.
fn count(text: &[u8], i: usize) -> Option<(u64, usize)> {
    let mut n = 0u64;
    let mut end = i;
    while let Some(&d) = text.get(end).filter(|d| d.is_ascii_digit()) {
        if end - i == MAX_DIGITS {
            return None;
        }
        n = n * 10 + u64::from(d - b'0');
        end += 1;
    }
    let plain = end > i && (text[i] != b'0' || end == i + 1);
    plain.then_some((n, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serde_reads(text: &[u8]) -> Option<Usage> {
        let mut de = serde_json::Deserializer::from_slice(text);
        Usage::deserialize(&mut de).ok()
    }

    #[test]
    fn the_usual_objects_are_read_quickly() {
        let u = |p, c| {
            Some(Usage {
                prompt_tokens: p,
                completion_tokens: c,
            })
        };
        let cases: &[(&str, Option<Usage>)] = &[
            (
                r#"{"prompt_tokens": 212, "completion_tokens": 38, "total_tokens": 250}}"#,
                u(212, 38),
            ),
            (
                r#" {"prompt_tokens":9,"completion_tokens":0,"total_tokens":9,
                "prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},
                "completion_tokens_details":{"reasoning_tokens":0}},"x":1}"#,
                u(9, 0),
            ),
            (r#"{"input_tokens":5,"output_tokens":7}"#, u(5, 7)),
            (r#"{"total_tokens":3}"#, u(0, 0)),
            (r#"{}"#, u(0, 0)),
            (r#"{"prompt_tokens":18446744073709551615}"#, None),
        ];
        for (text, want) in cases {
            assert_eq!(quick(text.as_bytes()), *want, "{text}");
            if want.is_some() {
                assert_eq!(serde_reads(text.as_bytes()), *want, "{text}");
            }
        }
    }

    #[test]
    fn what_is_not_plain_is_left_to_serde() {
        for text in [
            r#"{"prompt_tokens":1.0}"#,
            r#"{"prompt_tokens":-1}"#,
            r#"{"prompt_tokens":null}"#,
            r#"{"prompt_tokens":"3"}"#,
            r#"{"prompt_tokens":01}"#,
            r#"{"prompt_tokens":1,"input_tokens":2}"#,
            r#"{"prompt\u005ftokens":1}"#,
            r#"{"prompt_tokens":18446744073709551615}"#,
            r#"{"prompt_tokens":1"#,
            r#"{"prompt_tokens":1,}"#,
            "[1]",
        ] {
            assert_eq!(quick(text.as_bytes()), None, "{text}");
            assert_eq!(
                Usage::read_prefix(text.as_bytes()),
                serde_reads(text.as_bytes()),
                "{text}"
            );
        }
        // serde reads a count up to u64::MAX, and an escaped key.
        assert_eq!(
            Usage::read_prefix(br#"{"prompt_tokens":18446744073709551615}"#)
                .map(|u| u.prompt_tokens),
            Some(u64::MAX)
        );
        assert_eq!(
            Usage::read_prefix(br#"{"prompt\u005ftokens":4}"#).map(|u| u.prompt_tokens),
            Some(4)
        );
    }

    const KEYS: &[&str] = &[
        "\"prompt_tokens\"",
        "\"input_tokens\"",
        "\"completion_tokens\"",
        "\"output_tokens\"",
        "\"total_tokens\"",
        "\"prompt\\u005ftokens\"",
        "\"details\"",
    ];
    const VALUES: &[&str] = &[
        "0",
        "7",
        "212",
        "007",
        "-1",
        "1.5",
        "1e2",
        "null",
        "\"12\"",
        "{}",
        "[1,{\"a\":2}]",
        "{\"cached_tokens\":3}",
        "18446744073709551615",
        "18446744073709551616",
        "9999999999999999999",
        "true",
    ];
    const SPACE: &[&str] = &["", " ", "\n\t"];

    proptest::proptest! {
        /// Whatever the object, the quick read and the fallback read what
        /// serde_json alone reads; and when the quick read is sure, so is
        /// serde_json, of the same counts.
        #[test]
        fn it_reads_what_serde_reads(
            members in proptest::collection::vec(
                (proptest::sample::select(KEYS), proptest::sample::select(VALUES),
                 proptest::sample::select(SPACE)),
                0..5,
            ),
            cut in proptest::option::of(0usize..80),
            tail in proptest::sample::select(&["", "}", ",\"x\":[1]}", "garbage"][..]),
        ) {
            let body = members
                .iter()
                .map(|(k, v, s)| format!("{s}{k}{s}:{s}{v}{s}"))
                .collect::<Vec<_>>()
                .join(",");
            let mut text = format!("{{{body}}}{tail}");
            if let Some(cut) = cut {
                text.truncate(cut.min(text.len()));
            }
            let want = serde_reads(text.as_bytes());
            if let Some(u) = quick(text.as_bytes()) {
                proptest::prop_assert_eq!(Some(u), want, "quick read {}", text);
            }
            proptest::prop_assert_eq!(Usage::read_prefix(text.as_bytes()), want, "{}", text);
        }
    }
}
