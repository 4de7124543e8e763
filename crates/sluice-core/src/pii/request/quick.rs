//! The quick pass of [`super::redact_request_json_keeping`]: the same walk
//! as `walk.rs`, on a `json_quick` cursor that checks each byte of the body
//! once as it descends into the prompt's paths and passes over the rest
//! (no serde visitor per value, no value read twice). Anything `json_quick`
//! is not sure of (an escaped key, text that is not JSON, nesting past its
//! limit) makes it give up; the caller then runs the serde walk from
//! scratch, which words every error. On the production-shaped bench's
//! request (`bench/instructions.py --prod`) the serde walk's JSON work was
//! ~8,600 instructions, more than the redaction itself; the whole request
//! went 91,444 -> 89,231 with this walk.

use std::borrow::Cow;

use super::{Edits, Members, Seen, Shape};
use crate::json_quick::cursor::Cursor;

/// The walk over the body `text`; `None` when `json_quick` was not sure of
/// it (what `e`, `kept` and `messages` hold then is to be thrown away).
pub(super) fn walk<'a>(
    text: &'a str,
    e: &mut Edits<'a>,
    keep: &impl Fn(&str) -> bool,
    kept: &mut Members<'a>,
    messages: &mut Seen,
) -> Option<()> {
    let mut c = Cursor::new(text);
    c.object(|c, k| {
        let start = c.start();
        match k {
            "messages" => messages.see(each_message(c, e)?),
            "system" | "input" | "prompt" | "user" => walk_value(c, e, Shape::Text)?,
            "metadata" => walk_value(c, e, Shape::Strings)?,
            _ => c.skip()?,
        }
        if keep(k) {
            kept.push((Cow::Borrowed(k), c.since(start)?));
        }
        Some(())
    })?;
    c.at_end().then_some(())
}

/// The `messages` member: each message's `content` and `tool_calls` (an
/// element that is not an object is passed over), and what it was.
fn each_message<'a>(c: &mut Cursor<'a>, e: &mut Edits<'a>) -> Option<Seen> {
    match c.peek()? {
        b'[' => {}
        b'n' => return c.skip().map(|()| Seen::Null),
        _ => return c.skip().map(|()| Seen::Other),
    }
    let n = c.array(|c| {
        if c.peek()? != b'{' {
            return c.skip();
        }
        c.object(|c, k| match k {
            "content" => content(c, e),
            "tool_calls" => tool_calls(c, e),
            _ => c.skip(),
        })
    })?;
    Some(Seen::Array(n))
}

/// A message's `content` (`Edits::content`): text, and in each part that
/// is an object, its `input` (Anthropic's `tool_use`) as free-form strings.
fn content<'a>(c: &mut Cursor<'a>, e: &mut Edits<'a>) -> Option<()> {
    if c.peek()? != b'[' {
        return walk_value(c, e, Shape::Text);
    }
    c.array(|c| {
        if c.peek()? != b'{' {
            return walk_value(c, e, Shape::Text);
        }
        c.object(|c, k| match k {
            "text" | "content" => walk_value(c, e, Shape::Text),
            "input" => walk_value(c, e, Shape::Strings),
            _ => c.skip(),
        })
    })
    .map(drop)
}

/// A message's `tool_calls` (OpenAI's): each call's `function.arguments`.
fn tool_calls<'a>(c: &mut Cursor<'a>, e: &mut Edits<'a>) -> Option<()> {
    if c.peek()? != b'[' {
        return c.skip();
    }
    c.array(|c| {
        if c.peek()? != b'{' {
            return c.skip();
        }
        c.object(|c, k| {
            if k != "function" || c.peek()? != b'{' {
                return c.skip();
            }
            c.object(|c, k| match k {
                "arguments" => walk_value(c, e, Shape::Text),
                _ => c.skip(),
            })
        })
    })
    .map(drop)
}

/// `Edits::walk` on the cursor: the strings of the next value that are
/// prompt text in `shape`.
fn walk_value<'a>(c: &mut Cursor<'a>, e: &mut Edits<'a>, shape: Shape) -> Option<()> {
    match c.peek()? {
        b'"' => {
            let raw = c.string()?;
            e.string(raw).ok()
        }
        b'[' => c.array(|c| walk_value(c, e, shape)).map(drop),
        b'{' => c.object(|c, k| {
            if matches!(shape, Shape::Strings) || k == "text" || k == "content" {
                walk_value(c, e, shape)
            } else {
                c.skip()
            }
        }),
        _ => c.skip(),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::{Redactor, pass};
    use super::*;
    use crate::json_quick::spoiled;

    fn member() -> impl Strategy<Value = String> {
        let key = prop_oneof![
            Just("model"),
            Just("messages"),
            Just("user"),
            Just("system"),
            Just("input"),
            Just("prompt"),
            Just("metadata"),
            Just("temperature"),
            Just("us\\u0065r"),
        ];
        let value = prop_oneof![
            Just(r#""mail a@b.io now""#),
            Just(r#""call +44 20 7946 0958, or \"c@d.io\"\n""#),
            Just(r#""nothing here""#),
            Just(r#""caf\u00e9 x@y.org \u4e2d""#),
            Just("\"caf\u{e9} \u{4e2d}\u{6587} z@q.io \u{1f600} and some more text after it\""),
            Just("null"),
            Just("1.5"),
            Just("[]"),
            Just(
                r#"[{"role":"user","content":"hi a@b.io"},{"role":"system","content":[{"type":"text","text":"e@f.io"}]}]"#
            ),
            Just(
                r#"[{"role":"assistant","tool_calls":[{"function":{"name":"f","arguments":"{\"to\":\"c@d.io\"}"}}]},7,"x@y.io",[1]]"#
            ),
            Just(
                r#"[{"content":[{"type":"tool_use","input":{"q":["a@b.io",{"n":"+44 20 7946 0958"}]}}],"content":"x@y.io"}]"#
            ),
            Just(r#"[{"c\u006fntent":"a@b.io"}]"#),
            Just(r#"{"team":"ops a@b.io","deep":{"n":["+44 20 7946 0958",3]}}"#),
            Just(r#"[{"type":"text","text":"a@b.io"},{"content":"q@r.io"}]"#),
        ];
        (key, value, "[ \n]{0,2}").prop_map(|(k, v, ws)| format!("{ws}\"{k}\"{ws}:{ws}{v}{ws}"))
    }

    type Outcome<'a> = (Option<Vec<u8>>, Members<'a>, Seen);

    /// The quick walk's outcome when it is sure, and the serde walk's.
    fn both<'a>(
        body: &'a [u8],
        r: &'a Redactor,
    ) -> (Option<Outcome<'a>>, serde_json::Result<Outcome<'a>>) {
        let keep = |k: &str| matches!(k, "user" | "metadata" | "model" | "messages");
        let quick = std::str::from_utf8(body).ok().and_then(|text| {
            let mut e = Edits::new(text, r);
            let (mut kept, mut seen) = (super::Members::new(), Seen::Absent);
            walk(text, &mut e, &keep, &mut kept, &mut seen)?;
            Some((e.apply().map(|d| d.body), kept, seen))
        });
        let mut kept = super::Members::new();
        let slow = pass(body, r, keep, &mut kept, false)
            .map(|p| (p.redacted.map(|d| d.body), kept, p.messages));
        (quick, slow)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// Whatever the quick walk is sure of, the serde walk redacts, keeps
        /// and sees the same way; a whole body with plain keys it is sure of.
        #[test]
        fn the_quick_walk_is_the_serde_walk(
            members in proptest::collection::vec(member(), 0..7),
            spoil in spoiled::spoil(),
        ) {
            let r = Redactor::builtin();
            let body = spoiled::object(&members, &spoil);
            let text = String::from_utf8_lossy(&body).into_owned();
            let (quick, slow) = both(&body, &r);
            if spoil.how == 0 && !text.contains("\\u0065") && !text.contains("\\u006f") {
                prop_assert!(quick.is_some(), "not sure of {}", text);
            }
            if let Some(q) = quick {
                let s = slow.map_err(|e| TestCaseError::fail(format!("{text}: serde refuses: {e}")))?;
                prop_assert_eq!(q, s, "{}", text);
            }
        }
    }

    #[test]
    fn a_redacted_prompt_through_the_quick_walk() {
        let r = Redactor::builtin();
        let body =
            br#"{"model":"m","messages":[{"role":"user","content":"mail a@b.io"}],"user":"x"}"#;
        let (quick, _) = both(body, &r);
        let (out, kept, seen) = quick.unwrap();
        assert_eq!(
            out.unwrap(),
            br#"{"model":"m","messages":[{"role":"user","content":"mail [EMAIL]"}],"user":"x"}"#
        );
        assert_eq!(seen, Seen::Array(1));
        let keys: Vec<&str> = kept.iter().map(|(k, _)| &**k).collect();
        assert_eq!(keys, ["model", "messages", "user"]);
        assert_eq!(kept[2].1, r#""x""#);
    }
}
