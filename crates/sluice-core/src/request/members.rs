//! [`super::peek`] from the top-level members a pass over the body read
//! already (prompt redaction's, or the quick check's), instead of parsing
//! the body with serde.

use serde::de::IgnoredAny;

use super::{Operation, Raw, RequestPeek};
use crate::pii::Seen;

/// The top-level members [`peek_members`] needs of a body (beside
/// `messages`, which it needs only the length of).
pub const PEEKED: [&str; 10] = [
    "model",
    "input",
    "prompt",
    "query",
    "documents",
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
    "stream",
    "stream_options",
];

/// [`super::peek`] of `body`, from the top-level members of `original`
/// read already: every one [`PEEKED`] names (`members`, key and value
/// text, in body order, repeated keys included; others are passed over)
/// and what `messages` was. `body` is `original`, or it with strings
/// outside these members rewritten and `moved` mapping an offset of
/// `original` to `body`.
///
/// `None` where the members leave a doubt (a repeated key, a value of
/// the wrong type, anything refused): [`super::peek`] of `body` then
/// says precisely what it is.
pub fn peek_members<'b, 'm>(
    body: &'b [u8],
    original: &[u8],
    members: impl IntoIterator<Item = (&'m [u8], &'m [u8])>,
    messages: Seen,
    moved: impl Fn(usize) -> usize,
    op: Operation,
) -> Option<RequestPeek<'b>> {
    let mut raw = Raw {
        // A Vec of a zero-sized type does not allocate.
        messages: match messages {
            Seen::Absent | Seen::Null => None,
            Seen::Array(n) => Some(vec![IgnoredAny; n]),
            Seen::Other => return None,
        },
        ..Raw::default()
    };
    // The `model` token (`Raw::peek` is given it, not `raw.model`).
    let mut model = None;
    let mut seen = 0u16;
    for (k, v) in members {
        let Some(i) = PEEKED.iter().position(|p| p.as_bytes() == k) else {
            continue;
        };
        if seen & (1 << i) != 0 {
            return None; // serde refuses a repeated field
        }
        seen |= 1 << i;
        // As serde reads an `Option`: `null` is absent. (Only that is read
        // of these; an embedding's input can be most of the body.)
        let present = (v != b"null").then_some(IgnoredAny);
        match PEEKED[i] {
            "model" => model = present.map(|_| v),
            "input" => raw.input = present,
            "prompt" => raw.prompt = present,
            "query" => raw.query = present,
            "documents" => raw.documents = present,
            "max_tokens" => raw.max_tokens = serde_json::from_slice(v).ok()?,
            "max_completion_tokens" => {
                raw.max_completion_tokens = serde_json::from_slice(v).ok()?
            }
            "max_output_tokens" => raw.max_output_tokens = serde_json::from_slice(v).ok()?,
            "stream" => raw.stream = serde_json::from_slice(v).ok()?,
            _ => raw.stream_options = serde_json::from_slice(v).ok()?,
        }
    }
    let token = model?;
    let start = moved(token.as_ptr() as usize - original.as_ptr() as usize);
    let at = body.get(start..start + token.len())?;
    if at != token {
        return None; // not where `moved` says: read the body
    }
    raw.peek(std::str::from_utf8(at).ok()?, start, op).ok()
}

/// [`super::peek`] of `body` from one quick pass ([`json_quick`], which
/// checks it is UTF-8 too) when it is surely a JSON object and its members
/// settle the peek; `None` leaves it to serde (and the error, if any, to
/// its words).
///
/// [`json_quick`]: crate::json_quick
pub(super) fn quick_peek(body: &[u8], op: Operation) -> Option<RequestPeek<'_>> {
    // The members peeked (a repeated one twice: refused below, as serde
    // refuses it); more than this many leaves it to serde.
    let mut kept: [(&[u8], &[u8]); PEEKED.len() + 2] = [(b"", b""); PEEKED.len() + 2];
    let (mut n, mut messages) = (0, Seen::Absent);
    let whole = crate::json_quick::object_members(body, |k, v, len| {
        if k == b"messages" {
            messages = match (messages, v[0]) {
                (Seen::Absent, b'[') => Seen::Array(len),
                (Seen::Absent, b'n') => Seen::Null,
                _ => Seen::Other,
            };
        } else if PEEKED.iter().any(|p| p.as_bytes() == k) {
            if let Some(slot) = kept.get_mut(n) {
                *slot = (k, v);
            }
            n += 1;
        }
    });
    if !whole || n > kept.len() {
        return None;
    }
    peek_members(body, body, kept[..n].iter().copied(), messages, |at| at, op)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::json_quick::spoiled;

    /// A peek's fields, to compare two.
    fn fields(p: &RequestPeek<'_>) -> (String, std::ops::Range<usize>, bool, bool, Option<u64>) {
        let span = p.model_span.clone();
        (
            p.model.to_string(),
            span,
            p.stream,
            p.include_usage,
            p.max_tokens,
        )
    }

    /// The quick pass's peek of `body`, and serde's (after the UTF-8 check).
    fn both(
        body: &[u8],
        op: Operation,
    ) -> (Option<RequestPeek<'_>>, Result<RequestPeek<'_>, String>) {
        let quick = quick_peek(body, op);
        let slow = std::str::from_utf8(body)
            .map_err(|e| e.to_string())
            .and_then(|t| super::super::peek_serde(t, op).map_err(|e| format!("{e:?}")));
        (quick, slow)
    }

    #[test]
    fn a_chat_request_is_peeked_in_the_quick_pass() {
        let text = r#" {"model" : "gpt-4o","messages":[{"role":"system","content":"be \"brief\""},
            {"role":"user","content":[{"type":"text","text":"hi é"}]}],"stream":true,
            "stream_options":{"include_usage":true},"max_tokens":64,"tools":[{"x":[1,2,{"y":null}]}]} "#;
        let (quick, slow) = both(text.as_bytes(), Operation::Chat);
        let (quick, slow) = (quick.expect("settled quickly"), slow.unwrap());
        assert_eq!(fields(&quick), fields(&slow));
        assert_eq!(quick.max_tokens, Some(64));
        assert_eq!(&text[quick.model_span.clone()], "\"gpt-4o\"");
        // What the quick pass leaves to serde: an escaped key, a repeated
        // field, a field of the wrong type, an empty `messages`, bad JSON.
        for text in [
            r#"{"model":"m","mod\u0065l":"n","messages":[1]}"#,
            r#"{"model":"m","model":"n","messages":[1]}"#,
            r#"{"model":"m","messages":[1],"stream":"yes"}"#,
            r#"{"model":"m","messages":[]}"#,
            r#"{"model":"m","messages":{}}"#,
            r#"{"model":"m","messages":[1],}"#,
            r#"{"model":"m","messages":[1]} x"#,
            r#"{"model":7,"messages":[1]}"#,
        ] {
            assert!(
                quick_peek(text.as_bytes(), Operation::Chat).is_none(),
                "{text}"
            );
        }
        // `null` is absent, as serde reads an `Option`: a required field
        // that is `null` is left to serde (which refuses it); one that is
        // there is settled.
        let (emb, comp) = (Operation::Embeddings, Operation::Completions);
        let (chat, msgs) = (Operation::Chat, Operation::Messages);
        for (body, op, settled) in [
            (r#"{"model":"m","input":null}"#, emb, false),
            (r#"{"model":"m","input":["a"]}"#, emb, true),
            (r#"{"model":"m","prompt":null}"#, comp, false),
            (r#"{"model":"m","prompt":"p"}"#, comp, true),
            (r#"{"model":"m","messages":null}"#, chat, false),
            (
                r#"{"model":"m","messages":[1],"max_tokens":null}"#,
                msgs,
                false,
            ),
            (r#"{"model":"m","messages":[1],"max_tokens":9}"#, msgs, true),
            (r#"{"model":null,"messages":[1]}"#, chat, false),
        ] {
            let (quick, slow) = both(body.as_bytes(), op);
            assert_eq!(slow.is_ok(), settled, "{body}");
            assert_eq!(quick.is_some(), settled, "{body}");
        }
        // Not UTF-8, in a string and outside one.
        for body in [
            &b"{\"model\":\"m\",\"messages\":[\"\xff\"]}"[..],
            b"{\"model\":\"m\",\"messages\":[\"a much longer text \xc3\"]}",
            b"{\"model\":\"m\",\"messages\":[1]}\xc2\xa0",
        ] {
            assert!(quick_peek(body, Operation::Chat).is_none(), "{body:?}");
        }
    }

    fn member() -> impl Strategy<Value = String> {
        let key = prop_oneof![
            Just("model"),
            Just("messages"),
            Just("stream"),
            Just("stream_options"),
            Just("max_tokens"),
            Just("max_completion_tokens"),
            Just("max_output_tokens"),
            Just("input"),
            Just("prompt"),
            Just("query"),
            Just("documents"),
            Just("tools"),
            Just("mod\\u0065l"),
            Just("user"),
        ];
        let value = prop_oneof![
            Just("\"m\""),
            Just("\"a\\\"b\""),
            Just("\"\\ud800\""),
            Just("null"),
            Just("true"),
            Just("false"),
            Just("0"),
            Just("-1.5e3"),
            Just("18446744073709551616"),
            Just("[]"),
            Just("[{\"role\":\"user\",\"content\":\"hi\"}]"),
            Just("[1,[2,3],{\"a\":[]}]"),
            Just("{}"),
            Just("{\"include_usage\":true}"),
            Just("{\"include_usage\":1}"),
            Just("\"\""),
            Just("\"caf\u{e9} \u{4e2d}\u{6587} \u{1f600} and a longer text after it\""),
        ];
        (key, value, "[ \n]{0,2}").prop_map(|(k, v, ws)| format!("{ws}\"{k}\"{ws}:{ws}{v}{ws}"))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// Whatever the quick pass settles, serde reads the same way; and
        /// bodies cut or with a byte changed are never settled otherwise.
        #[test]
        fn the_quick_peek_is_the_serde_peek(
            members in proptest::collection::vec(member(), 0..8),
            spoil in spoiled::spoil(),
            base in any::<bool>(), op in prop_oneof![Just(Operation::Chat), Just(Operation::Messages),
                Just(Operation::Embeddings), Just(Operation::Completions), Just(Operation::Responses)],
        ) {
            // Half of them a whole chat request, and more members.
            let mut members = members;
            if base {
                members.insert(0, r#""model":"m","messages":[{"content":"hi"}]"#.to_owned());
            }
            let body = spoiled::object(&members, &spoil);
            let text = String::from_utf8_lossy(&body);
            let (quick, slow) = both(&body, op);
            if let Some(q) = quick {
                let s = slow.map_err(|e| TestCaseError::fail(format!("{text}: serde refuses: {e}")))?;
                prop_assert_eq!(fields(&q), fields(&s), "{}", text);
            }
        }
    }
}
