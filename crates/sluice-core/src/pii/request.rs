//! Which parts of a request are prompt text, and their redaction: on a
//! parsed `Value` ([`redact_request`], the reference), or on the raw body
//! ([`redact_request_json`]), where only the strings with findings are
//! rewritten and every other byte is forwarded as the client sent it.

use std::borrow::Cow;
use std::ops::Range;

use smallvec::SmallVec;

use super::Redactor;
use crate::json::{self, Kind};

mod quick;
mod walk;

/// Redacts the prompt text of a chat, messages or embeddings request in
/// place: message contents (plain or text parts, tool results included),
/// tool-call arguments (OpenAI's JSON text, Anthropic's `tool_use` input),
/// `system`, `input`, `prompt`, `user` and every string in `metadata`.
/// True when anything changed.
pub fn redact_request(root: &mut serde_json::Value, r: &Redactor) -> bool {
    use serde_json::Value;
    fn text(v: &mut Value, r: &Redactor) -> bool {
        match v {
            Value::String(s) => match r.redact(s) {
                Cow::Borrowed(_) => false,
                Cow::Owned(o) => {
                    *s = o;
                    true
                }
            },
            // Content parts: `{"type":"text","text":…}`, tool results with
            // their own `content`, arrays of either.
            Value::Array(a) => a.iter_mut().fold(false, |c, x| text(x, r) | c),
            Value::Object(o) => ["text", "content"]
                .into_iter()
                .filter_map(|k| o.get_mut(k).map(|v| text(v, r)))
                .fold(false, |c, x| c | x),
            _ => false,
        }
    }
    /// Every string anywhere inside `v` (free-form values: tool inputs,
    /// metadata).
    fn strings(v: &mut Value, r: &Redactor) -> bool {
        match v {
            Value::String(_) => text(v, r),
            Value::Array(a) => a.iter_mut().fold(false, |c, x| strings(x, r) | c),
            Value::Object(o) => o.values_mut().fold(false, |c, x| strings(x, r) | c),
            _ => false,
        }
    }
    let Some(obj) = root.as_object_mut() else {
        return false;
    };
    let mut changed = false;
    if let Some(Value::Array(msgs)) = obj.get_mut("messages") {
        for m in msgs {
            if let Some(c) = m.get_mut("content") {
                changed |= text(c, r);
                // Anthropic tool calls: `{"type":"tool_use","input":{…}}`.
                if let Value::Array(parts) = c {
                    for input in parts.iter_mut().filter_map(|p| p.get_mut("input")) {
                        changed |= strings(input, r);
                    }
                }
            }
            // OpenAI tool calls: arguments are JSON text; a tag has no quote
            // or backslash, so the text stays valid JSON.
            if let Some(Value::Array(calls)) = m.get_mut("tool_calls") {
                for call in calls {
                    if let Some(args) = call.pointer_mut("/function/arguments") {
                        changed |= text(args, r);
                    }
                }
            }
        }
    }
    for k in ["system", "input", "prompt", "user"] {
        if let Some(v) = obj.get_mut(k) {
            changed |= text(v, r);
        }
    }
    if let Some(m) = obj.get_mut("metadata") {
        changed |= strings(m, r);
    }
    changed
}

/// How the strings of a value are prompt text (see [`redact_request`]).
#[derive(Clone, Copy)]
enum Shape {
    /// A string, text parts (`text`, `content`), arrays of either.
    Text,
    /// Every string anywhere inside (tool inputs, metadata).
    Strings,
}

/// `body` with the strings [`redact_request`] redacts redacted (and, where
/// the client repeated a key, every copy, not only the last), each
/// rewritten in place; the rest is kept byte for byte (key order,
/// spacing, numbers as written). `None` when nothing was found. The body
/// is never built into a `Value`: only the members on the prompt's paths
/// are looked into. An error when `body` is not a JSON object.
pub fn redact_request_json(body: &[u8], r: &Redactor) -> serde_json::Result<Option<Vec<u8>>> {
    let pass = redact_request_json_keeping(body, r, |_| false, &mut Members::new())?;
    Ok(pass.redacted.map(|d| d.body))
}

/// The top-level members of a request (key, the value's JSON text), in
/// body order. Inline: a request keeps a few (the peek's and the audit's),
/// and a list on the heap was one more allocation per request.
pub type Members<'a> = SmallVec<[(Cow<'a, str>, &'a str); 8]>;

/// What [`redact_request_json_keeping`] read of a request.
#[derive(Debug)]
pub struct Pass {
    /// The body redacted, `None` when nothing was found.
    pub redacted: Option<Redacted>,
    /// The request's `messages` member as the pass saw it.
    pub messages: Seen,
}

/// A top-level member the pass walked without keeping its text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Seen {
    #[default]
    Absent,
    Null,
    /// An array of this many elements.
    Array(usize),
    /// Another kind of value, or the key more than once.
    Other,
}

/// A request body with its prompt redacted, and where its bytes moved.
#[derive(Debug)]
pub struct Redacted {
    pub body: Vec<u8>,
    /// For each rewritten span: its end in the original body and how far
    /// the bytes after it moved (inline: a prompt has a few).
    moves: SmallVec<[(usize, isize); 4]>,
}

impl Redacted {
    /// Where the byte at `at` of the original body lies in [`Redacted::body`]
    /// (`at` outside every rewritten string, e.g. the `model` token).
    pub fn moved(&self, at: usize) -> usize {
        let before = self.moves.iter().take_while(|(end, _)| *end <= at).last();
        at.wrapping_add_signed(before.map_or(0, |m| m.1))
    }
}

/// [`redact_request_json`], which also hands over the raw values of the
/// top-level members `keep` names as the same pass reads them (into
/// `kept`, repeated keys included, in body order) and says what
/// `messages` was: a caller that wants a few members (the audit's
/// recorded fields, the request's peek) does not parse the body again.
/// The values are the body's, as the client sent them, not redacted.
pub fn redact_request_json_keeping<'a>(
    body: &'a [u8],
    r: &'a Redactor,
    keep: impl Fn(&str) -> bool,
    kept: &mut Members<'a>,
) -> serde_json::Result<Pass> {
    pass(body, r, keep, kept, true)
}

/// [`redact_request_json_keeping`]; `quick`: try the `json_quick` walk
/// first (false in tests, to hold the two walks to the same results).
fn pass<'a>(
    body: &'a [u8],
    r: &'a Redactor,
    keep: impl Fn(&str) -> bool,
    kept: &mut Members<'a>,
    quick: bool,
) -> serde_json::Result<Pass> {
    let text = std::str::from_utf8(body).map_err(serde::de::Error::custom)?;
    let mut e = Edits::new(text, r);
    let mut messages = Seen::Absent;
    let had = kept.len();
    if quick && quick::walk(text, &mut e, &keep, kept, &mut messages).is_some() {
        return Ok(Pass {
            redacted: e.apply(),
            messages,
        });
    }
    e = Edits::new(text, r);
    kept.truncate(had);
    messages = Seen::Absent;
    // One pass: the members on the prompt's paths are taken as raw slices
    // as the parser reaches them, everything else is skipped as it is read.
    let mut de = serde_json::Deserializer::from_str(text);
    let top = walk::Top {
        edits: &mut e,
        keep: &keep,
        kept,
        messages: &mut messages,
    };
    serde::de::DeserializeSeed::deserialize(top, &mut de)?;
    de.end()?;
    Ok(Pass {
        redacted: e.apply(),
        messages,
    })
}

/// The rewrites found so far: a span of `base` and its new JSON text.
/// Inline, and the redacted texts in one buffer: a prompt's edits cost
/// one allocation, where a list and a string per edit made three for a
/// prompt with two.
struct Edits<'a> {
    base: &'a str,
    r: &'a Redactor,
    edits: SmallVec<[(Range<usize>, Edit); 4]>,
    /// The text of every [`Edit::Plain`].
    plain: String,
}

/// A string's new JSON text.
enum Edit {
    /// Written by the serializer.
    Json(Vec<u8>),
    /// Text with nothing to escape (this span of [`Edits::plain`]), to go
    /// between quotes as it is: what a string the client wrote without
    /// escapes becomes once its findings are tags. Serializing it again
    /// cost ~1,250 instructions per prompt of the production-shaped bench,
    /// and a second copy.
    Plain(Range<usize>),
}

impl Edit {
    fn len(&self) -> usize {
        match self {
            Edit::Json(j) => j.len(),
            Edit::Plain(t) => t.len() + 2,
        }
    }

    fn write(&self, plain: &str, out: &mut Vec<u8>) {
        match self {
            Edit::Json(j) => out.extend_from_slice(j),
            Edit::Plain(t) => {
                out.push(b'"');
                out.extend_from_slice(&plain.as_bytes()[t.clone()]);
                out.push(b'"');
            }
        }
    }
}

impl<'a> Edits<'a> {
    fn new(base: &'a str, r: &'a Redactor) -> Self {
        Self {
            base,
            r,
            edits: SmallVec::new(),
            plain: String::new(),
        }
    }

    /// A message's `content`: text, and Anthropic's tool calls
    /// (`{"type":"tool_use","input":{…}}`).
    fn content(&mut self, v: &'a str) -> serde_json::Result<()> {
        self.walk(v, Shape::Text)?;
        for part in json::elements_of(v)? {
            for (pk, input) in json::entries_of(part)? {
                if pk == "input" {
                    self.walk(input, Shape::Strings)?;
                }
            }
        }
        Ok(())
    }

    /// A message's `tool_calls` (OpenAI's): arguments are JSON text.
    fn tool_calls(&mut self, v: &'a str) -> serde_json::Result<()> {
        for call in json::elements_of(v)? {
            for (ck, f) in json::entries_of(call)? {
                if ck != "function" {
                    continue;
                }
                for (fk, args) in json::entries_of(f)? {
                    if fk == "arguments" {
                        self.walk(args, Shape::Text)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn walk(&mut self, v: &'a str, shape: Shape) -> serde_json::Result<()> {
        match json::kind_of(v) {
            Kind::String => self.string(v),
            Kind::Array => json::elements_of(v)?
                .into_iter()
                .try_for_each(|x| self.walk(x, shape)),
            Kind::Object => {
                for (k, x) in json::entries_of(v)? {
                    if matches!(shape, Shape::Strings) || k == "text" || k == "content" {
                        self.walk(x, shape)?;
                    }
                }
                Ok(())
            }
            Kind::Scalar => Ok(()),
        }
    }

    /// `raw`: a string's JSON text, a slice of `base`.
    fn string(&mut self, raw: &'a str) -> serde_json::Result<()> {
        let raw = raw.trim_ascii();
        let Some(text) = json::text_of(raw)? else {
            return Ok(());
        };
        // Borrowed: the client's text had no escape, so neither quote,
        // backslash nor control character (JSON allows none unescaped).
        let unescaped = matches!(text, Cow::Borrowed(_));
        let mark = self.plain.len();
        // `raw` is a slice of `base`: its offset is the distance between
        // their starts.
        let start = raw.as_ptr() as usize - self.base.as_ptr() as usize;
        // Room for the rest of the body (every string still to come) and
        // a few tags longer than what they replace: the buffer is grown
        // once per request, at its first finding.
        let room = self.base.len() - start + 64;
        if self.r.redact_reserving(&text, &mut self.plain, room) {
            let edit = if unescaped && self.r.tags_plain() {
                Edit::Plain(mark..self.plain.len())
            } else {
                let redacted = &self.plain[mark..];
                // Sized for the text, its quotes and a few escapes: grown
                // from empty, a prompt's worth of JSON was reallocated
                // several times.
                let mut json = Vec::with_capacity(redacted.len() + redacted.len() / 8 + 8);
                serde_json::to_writer(&mut json, redacted)?;
                self.plain.truncate(mark);
                Edit::Json(json)
            };
            self.edits.push((start..start + raw.len(), edit));
        }
        Ok(())
    }

    fn apply(mut self) -> Option<Redacted> {
        if self.edits.is_empty() {
            return None;
        }
        self.edits.sort_by_key(|(span, _)| span.start);
        // The exact size (spans reached twice counted once, as below): a
        // body whose length is its capacity becomes `Bytes` without a
        // second allocation.
        let mut len = self.base.len();
        let mut at = 0;
        for (span, text) in &self.edits {
            if span.start >= at {
                len = len - span.len() + text.len();
                at = span.end;
            }
        }
        let mut out = Vec::with_capacity(len);
        let mut moves = SmallVec::with_capacity(self.edits.len());
        let mut at = 0;
        for (span, text) in &self.edits {
            if span.start < at {
                continue; // the same string reached twice: rewritten once
            }
            out.extend_from_slice(&self.base.as_bytes()[at..span.start]);
            text.write(&self.plain, &mut out);
            at = span.end;
            moves.push((at, out.len() as isize - at as isize));
        }
        out.extend_from_slice(&self.base.as_bytes()[at..]);
        debug_assert_eq!(out.len(), out.capacity());
        Some(Redacted { body: out, moves })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_members_are_the_bodys_and_keeping_changes_no_redaction() {
        let r = Redactor::builtin();
        let body =
            br#"{"us\u0065r":"a@b.io","model":"m","metadata":{"team":"x","n":"+44 20 7946 0958"},
            "messages":[{"role":"user","content":"c@d.io"}],"temperature":0.5,"model":"n"}"#;
        let plain = redact_request_json(body, &r).unwrap();
        let text = std::str::from_utf8(body).unwrap();
        for keep in [
            &["user", "metadata", "model"][..],
            &["messages", "temperature"],
            &["nope"],
            &[],
        ] {
            let mut kept = Members::new();
            let pass =
                redact_request_json_keeping(body, &r, |k| keep.contains(&k), &mut kept).unwrap();
            let out = pass.redacted.map(|d| d.body);
            assert_eq!(out, plain, "keeping {keep:?} changed the redaction");
            assert_eq!(pass.messages, Seen::Array(1));
            let want: Vec<(String, String)> = json::object(text)
                .unwrap()
                .into_iter()
                .filter(|(k, _)| keep.contains(&&**k))
                .map(|(k, v)| (k.into_owned(), v.get().to_owned()))
                .collect();
            let got: Vec<(String, String)> = kept
                .into_iter()
                .map(|(k, v)| (k.into_owned(), v.to_owned()))
                .collect();
            assert_eq!(got, want, "keeping {keep:?}");
        }
        let mut kept = Members::new();
        assert!(redact_request_json_keeping(b"[1]", &r, |_| true, &mut kept).is_err());
    }

    #[test]
    fn only_the_strings_with_findings_change_byte_for_byte() {
        let r = Redactor::builtin();
        let body = br#"{ "user" : "a@b.io",
  "model":"m-1", "temperature": 1.50, "metadata": {"n": [ "x", "+44 20 7946 0958" ]},
  "messages": [ {"role":"user", "content": "mail \"jane@example.com\"\n"},
                {"role":"assistant","tool_calls":[{"function":{"name":"a@b.io","arguments":"{\"to\":\"c@d.io\"}"}}]} ] }"#;
        let out = redact_request_json(body, &r).unwrap().unwrap();
        let expected = br#"{ "user" : "[EMAIL]",
  "model":"m-1", "temperature": 1.50, "metadata": {"n": [ "x", "[PHONE]" ]},
  "messages": [ {"role":"user", "content": "mail \"[EMAIL]\"\n"},
                {"role":"assistant","tool_calls":[{"function":{"name":"a@b.io","arguments":"{\"to\":\"[EMAIL]\"}"}}]} ] }"#;
        assert_eq!(
            String::from_utf8(out).unwrap(),
            std::str::from_utf8(expected).unwrap()
        );
        let clean = br#"{"model":"a@b.io","messages":[{"role":"user","content":"hi"}]}"#;
        assert_eq!(redact_request_json(clean, &r).unwrap(), None);
        for bad in [&b"[1]"[..], b"{\"a\":", b"\xff", b""] {
            assert!(redact_request_json(bad, &r).is_err());
        }
    }

    #[test]
    fn a_tag_json_must_escape_is_escaped() {
        let r = Redactor::new(&[], &[("a\"b".into(), "secret".into())]).unwrap();
        assert!(!r.tags_plain());
        let body = br#"{"messages":[{"role":"user","content":"my secret"}],"user":"secret\n"}"#;
        let out = redact_request_json(body, &r).unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["messages"][0]["content"], "my [A\"B]");
        assert_eq!(v["user"], "[A\"B]\n");
        assert!(Redactor::builtin().tags_plain());
    }

    #[test]
    fn offsets_move_with_the_rewrites_and_messages_are_seen() {
        let r = Redactor::builtin();
        let body = br#"{"a":"m","user":"a@b.io","model":"m","metadata":{"x":"+44 20 7946 0958"},
            "b":"z","messages":null}"#;
        let pass = redact_request_json_keeping(body, &r, |_| false, &mut Members::new()).unwrap();
        assert_eq!(pass.messages, Seen::Null);
        let d = pass.redacted.unwrap();
        for token in [&br#""a":"m""#[..], br#""model":"m""#, br#""b":"z""#] {
            let at = memchr::memmem::find(body, token).unwrap();
            assert_eq!(&d.body[d.moved(at)..][..token.len()], token);
        }
        for (messages, seen) in [
            ("[]", Seen::Array(0)),
            ("[1,{},[2]]", Seen::Array(3)),
            ("{}", Seen::Other),
            ("\"x\"", Seen::Other),
            ("[],\"messages\":[]", Seen::Other),
        ] {
            let body = format!(r#"{{"model":"m","messages":{messages}}}"#);
            let pass =
                redact_request_json_keeping(body.as_bytes(), &r, |_| false, &mut Members::new());
            assert_eq!(pass.unwrap().messages, seen, "{body}");
        }
    }
}
