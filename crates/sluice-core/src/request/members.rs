//! [`super::peek`] from the top-level members a pass over the body read
//! already (prompt redaction's), instead of parsing the body again.

use std::borrow::Cow;

use serde::de::IgnoredAny;
use serde_json::value::RawValue;

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
/// read already: every one [`PEEKED`] names (`members`, in body order,
/// repeated keys included; others are passed over) and what `messages`
/// was. `body` is `original`, or it with strings outside these members
/// rewritten and `moved` mapping an offset of `original` to `body`.
///
/// `None` where the members leave a doubt (a repeated key, a value of
/// the wrong type, anything refused): [`super::peek`] of `body` then
/// says precisely what it is.
pub fn peek_members<'b>(
    body: &'b [u8],
    original: &[u8],
    members: &[(Cow<'_, str>, &RawValue)],
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
    let mut seen = 0u16;
    for (k, v) in members {
        let Some(i) = PEEKED.iter().position(|p| *p == k) else {
            continue;
        };
        if seen & (1 << i) != 0 {
            return None; // serde refuses a repeated field
        }
        seen |= 1 << i;
        let text = v.get();
        // As serde reads an `Option`: `null` is absent.
        let present = (text != "null").then_some(IgnoredAny);
        match PEEKED[i] {
            "model" => raw.model = present.map(|_| *v),
            "input" => raw.input = present,
            "prompt" => raw.prompt = present,
            "query" => raw.query = present,
            "documents" => raw.documents = present,
            "max_tokens" => raw.max_tokens = serde_json::from_str(text).ok()?,
            "max_completion_tokens" => {
                raw.max_completion_tokens = serde_json::from_str(text).ok()?
            }
            "max_output_tokens" => raw.max_output_tokens = serde_json::from_str(text).ok()?,
            "stream" => raw.stream = serde_json::from_str(text).ok()?,
            _ => raw.stream_options = serde_json::from_str(text).ok()?,
        }
    }
    let token = raw.model?.get();
    let start = moved(token.as_ptr() as usize - original.as_ptr() as usize);
    let text = std::str::from_utf8(body.get(start..start + token.len())?).ok()?;
    if text != token {
        return None; // not where `moved` says: read the body
    }
    raw.peek(text, start, op).ok()
}
