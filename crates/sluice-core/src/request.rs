//! The few request fields the gateway acts on, read without building a tree.
//!
//! On the same-format fast path the body is forwarded as bytes: we read
//! `model`, `stream`, `stream_options.include_usage` and check the required
//! fields are there, remember where `model` sits in the body, and splice a new
//! name in place when the route maps it to a different upstream model.

use std::borrow::Cow;
use std::ops::Range;

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;

use crate::error::{ErrorKind, GatewayError};

mod members;
mod usage;
pub use members::{PEEKED, peek_members};

/// Which endpoint a body was sent to: decides which fields are required.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Chat,
    Embeddings,
    /// Anthropic's `/v1/messages`.
    Messages,
    /// OpenAI's `/v1/responses` (its `input` is checked when translated).
    Responses,
    /// OpenAI's legacy `/v1/completions`.
    Completions,
    /// Audio, images, moderations, rerank: passed through to
    /// OpenAI-compatible targets.
    Media(crate::media::Media),
}

#[derive(Debug)]
pub struct RequestPeek<'a> {
    pub model: Cow<'a, str>,
    /// Byte range of the `model` string token (quotes included) in the body.
    pub model_span: Range<usize>,
    pub stream: bool,
    pub include_usage: bool,
    /// The completion budget asked for (`max_completion_tokens` or `max_tokens`).
    pub max_tokens: Option<u64>,
}

impl RequestPeek<'_> {
    /// The peek with its model name its own, not the body's.
    pub fn into_owned(self) -> RequestPeek<'static> {
        RequestPeek {
            model: Cow::Owned(self.model.into_owned()),
            model_span: self.model_span,
            stream: self.stream,
            include_usage: self.include_usage,
            max_tokens: self.max_tokens,
        }
    }
}

#[derive(Default, Deserialize)]
struct Raw<'a> {
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    // Vec of a zero-sized type: counts elements without allocating.
    messages: Option<Vec<IgnoredAny>>,
    input: Option<IgnoredAny>,
    prompt: Option<IgnoredAny>,
    query: Option<IgnoredAny>,
    documents: Option<IgnoredAny>,
    max_tokens: Option<serde_json::Value>,
    max_completion_tokens: Option<u64>,
    max_output_tokens: Option<u64>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

/// Token usage as OpenAI reports it (chat's names; the Responses API's and
/// the audio endpoints' `input_tokens` / `output_tokens` read the same).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Usage {
    #[serde(default, alias = "input_tokens")]
    pub prompt_tokens: u64,
    #[serde(default, alias = "output_tokens")]
    pub completion_tokens: u64,
}

pub fn peek(body: &[u8], op: Operation) -> Result<RequestPeek<'_>, GatewayError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        let msg = if first.is_none() {
            "request body is empty; expected a JSON object"
        } else {
            "request body must be a JSON object"
        };
        return Err(GatewayError::new(ErrorKind::InvalidJson, msg));
    }
    // One quick pass over the body (which checks it is UTF-8 too) settles
    // most requests; serde reads the rest and words every refusal.
    if let Some(peek) = members::quick_peek(body, op) {
        return Ok(peek);
    }
    // JSON is UTF-8 (RFC 8259). serde skips the strings it ignores without
    // checking them, so check once here rather than forward bad bytes; and
    // parsed as text, serde does not check again each string it reads.
    let text = std::str::from_utf8(body).map_err(|e| {
        GatewayError::new(
            ErrorKind::InvalidJson,
            format!(
                "request body is not valid UTF-8 (at byte {})",
                e.valid_up_to()
            ),
        )
    })?;
    peek_serde(text, op)
}

/// [`peek`] of a UTF-8 body, read with serde only: the reference the
/// quick pass is held to (tests) and measured against (`peek-bench`).
pub fn peek_serde(text: &str, op: Operation) -> Result<RequestPeek<'_>, GatewayError> {
    let raw: Raw<'_> = serde_json::from_str(text).map_err(json_error)?;
    let model = raw.model.ok_or_else(|| missing("model"))?.get();
    // The raw value borrows from `text`, so its address lies inside it.
    raw.peek(model, model.as_ptr() as usize - text.as_ptr() as usize, op)
}

impl Raw<'_> {
    /// The peek of a request read into `self`, whose `model` token is
    /// `text`, found at `start` of the body it is for.
    fn peek<'t>(
        self,
        text: &'t str,
        start: usize,
        op: Operation,
    ) -> Result<RequestPeek<'t>, GatewayError> {
        let raw = self;
        if !text.starts_with('"') {
            return Err(
                GatewayError::new(ErrorKind::InvalidRequest, "'model' must be a string")
                    .with_param("model"),
            );
        }
        // Borrowed unless the name has escapes: no allocation on the common path.
        #[derive(Deserialize)]
        struct Name<'a>(#[serde(borrow)] Cow<'a, str>);
        let Name(model) = serde_json::from_str(text).map_err(json_error)?;
        if model.is_empty() {
            return Err(
                GatewayError::new(ErrorKind::InvalidRequest, "'model' must not be empty")
                    .with_param("model"),
            );
        }
        let model_span = start..start + text.len();
        raw.check(op)?;
        let max_tokens = raw
            .max_completion_tokens
            .or(raw.max_output_tokens)
            .or_else(|| raw.max_tokens.as_ref().and_then(serde_json::Value::as_u64));
        Ok(RequestPeek {
            max_tokens,
            model,
            model_span,
            stream: raw.stream.unwrap_or(false),
            include_usage: raw
                .stream_options
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
        })
    }

    /// The fields `op` requires are there.
    fn check(&self, op: Operation) -> Result<(), GatewayError> {
        let raw = self;
        match op {
            Operation::Chat | Operation::Messages => match &raw.messages {
                None => return Err(missing("messages")),
                Some(m) if m.is_empty() => {
                    return Err(GatewayError::new(
                        ErrorKind::InvalidRequest,
                        "'messages' must contain at least one message",
                    )
                    .with_param("messages"));
                }
                Some(_) => {}
            },
            Operation::Embeddings => {
                if raw.input.is_none() {
                    return Err(missing("input"));
                }
            }
            Operation::Responses => {}
            Operation::Completions => {
                if raw.prompt.is_none() {
                    return Err(missing("prompt"));
                }
            }
            Operation::Media(m) => {
                for &field in m.required_field() {
                    let present = match field {
                        "input" => raw.input.is_some(),
                        "prompt" => raw.prompt.is_some(),
                        "query" => raw.query.is_some(),
                        _ => raw.documents.is_some(),
                    };
                    if !present {
                        return Err(missing(field));
                    }
                }
            }
        }
        if op == Operation::Messages && raw.max_tokens.is_none() {
            return Err(missing("max_tokens"));
        }
        Ok(())
    }
}

/// The body with `"model": model` added when it has no `model` (for the
/// endpoints where OpenAI makes it optional).
pub fn with_model(body: bytes::Bytes, model: &str) -> bytes::Bytes {
    #[derive(Deserialize)]
    struct Has {
        model: Option<IgnoredAny>,
    }
    let open = body.iter().position(|b| !b.is_ascii_whitespace());
    match (serde_json::from_slice::<Has>(&body), open) {
        (Ok(Has { model: None }), Some(i)) if body[i] == b'{' => {
            let rest = &body[i + 1..];
            let empty = rest.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'}');
            let mut out = Vec::with_capacity(body.len() + model.len() + 12);
            out.extend_from_slice(b"{\"model\":");
            serde_json::to_writer(&mut out, model).expect("writing a str to a Vec cannot fail");
            if !empty {
                out.push(b',');
            }
            out.extend_from_slice(rest);
            out.into()
        }
        _ => body,
    }
}

/// The body with the `model` token at `span` replaced by `new_model`.
pub fn rewrite_model(body: &[u8], span: Range<usize>, new_model: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + new_model.len() + 2);
    out.extend_from_slice(&body[..span.start]);
    serde_json::to_writer(&mut out, new_model).expect("writing a str to a Vec cannot fail");
    out.extend_from_slice(&body[span.end..]);
    out
}

/// The body with `stream_options.include_usage` set to true. Appends the
/// field when the body has no `stream_options`; otherwise edits it as a tree
/// (rare: the client set stream options but not this one).
pub fn force_include_usage(body: &[u8]) -> bytes::Bytes {
    let has_options = body.windows(16).any(|w| w == b"\"stream_options\"");
    let end = body.iter().rposition(|b| !b.is_ascii_whitespace());
    if !has_options && let Some(end) = end.filter(|&i| body[i] == b'}') {
        let empty = body[..end].iter().rposition(|b| !b.is_ascii_whitespace()) == Some(0);
        let mut out = Vec::with_capacity(body.len() + 40);
        out.extend_from_slice(&body[..end]);
        if !empty {
            out.push(b',');
        }
        out.extend_from_slice(b"\"stream_options\":{\"include_usage\":true}}");
        return out.into();
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(mut v) => {
            v["stream_options"]["include_usage"] = serde_json::Value::Bool(true);
            serde_json::to_vec(&v)
                .expect("a Value always serializes")
                .into()
        }
        Err(_) => bytes::Bytes::copy_from_slice(body),
    }
}

/// The body asking for a stream with usage at its end (`stream: true`,
/// `stream_options.include_usage: true`), whatever it asked; for clients
/// that are always answered with a stream. A body that is not a JSON object
/// is returned as it is (its error comes from the usual checks).
pub fn as_usage_stream(body: &[u8]) -> bytes::Bytes {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(mut v) if v.is_object() => {
            v["stream"] = serde_json::Value::Bool(true);
            if !v["stream_options"].is_object() {
                v["stream_options"] = serde_json::json!({});
            }
            v["stream_options"]["include_usage"] = serde_json::Value::Bool(true);
            serde_json::to_vec(&v)
                .expect("a Value always serializes")
                .into()
        }
        _ => bytes::Bytes::copy_from_slice(body),
    }
}

fn missing(field: &'static str) -> GatewayError {
    GatewayError::new(
        ErrorKind::InvalidRequest,
        format!("missing required field '{field}'"),
    )
    .with_param(field)
}

fn json_error(e: serde_json::Error) -> GatewayError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Data => {
            GatewayError::new(ErrorKind::InvalidRequest, format!("invalid request: {e}"))
        }
        Category::Syntax | Category::Eof | Category::Io => GatewayError::new(
            ErrorKind::InvalidJson,
            // serde_json's message ends with "at line L column C".
            format!("malformed JSON: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fields_and_span() {
        let body = br#"{"messages":[{"role":"user","content":"hi"}], "model" : "gpt-x","stream":true,"stream_options":{"include_usage":true},"tools":[]}"#;
        let p = peek(body, Operation::Chat).unwrap();
        assert_eq!(p.model, "gpt-x");
        assert_eq!(&body[p.model_span.clone()], br#""gpt-x""#);
        assert!(p.stream);
        assert!(p.include_usage);
    }

    #[test]
    fn rewrite_keeps_everything_else() {
        let body =
            br#"{"model":"alias","messages":[{"role":"user","content":"hi"}],"logprobs":true}"#;
        let p = peek(body, Operation::Chat).unwrap();
        let out = rewrite_model(body, p.model_span, "real\"model");
        assert_eq!(
            out,
            br#"{"model":"real\"model","messages":[{"role":"user","content":"hi"}],"logprobs":true}"#
        );
    }

    #[test]
    fn include_usage_is_forced_without_losing_fields() {
        let out = force_include_usage(br#"{"model":"m","stream":true}  "#);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["model"], "m");
        let out = force_include_usage(
            br#"{"stream":true,"stream_options":{"include_usage":false,"x":1}}"#,
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["stream_options"],
            serde_json::json!({"include_usage": true, "x": 1})
        );
        let v: serde_json::Value = serde_json::from_slice(&force_include_usage(b"{}")).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
    }

    #[test]
    fn usage_reads_both_naming_schemes() {
        let chat: Usage =
            serde_json::from_str(r#"{"prompt_tokens":3,"completion_tokens":4}"#).unwrap();
        let resp: Usage = serde_json::from_str(
            r#"{"input_tokens":3,"input_tokens_details":{"cached_tokens":0},"output_tokens":4}"#,
        )
        .unwrap();
        assert_eq!(chat, resp);
        assert_eq!(chat.completion_tokens, 4);
    }

    #[test]
    fn optional_model_is_filled_in() {
        let b = with_model(bytes::Bytes::from_static(br#" {"input":"x"}"#), "dflt");
        assert_eq!(&b[..], br#"{"model":"dflt","input":"x"}"#);
        let b = with_model(bytes::Bytes::from_static(b"{}"), "d");
        assert_eq!(&b[..], br#"{"model":"d"}"#);
        let kept = br#"{"model":"mine","input":"x"}"#;
        assert_eq!(&with_model(bytes::Bytes::from_static(kept), "d")[..], kept);
        let bad = b"not json";
        assert_eq!(&with_model(bytes::Bytes::from_static(bad), "d")[..], bad);
    }

    #[test]
    fn messages_need_max_tokens() {
        let e = peek(br#"{"model":"m","messages":[{}]}"#, Operation::Messages).unwrap_err();
        assert_eq!(e.param, Some("max_tokens"));
        assert!(
            peek(
                br#"{"model":"m","messages":[{}],"max_tokens":5}"#,
                Operation::Messages
            )
            .is_ok()
        );
    }

    #[test]
    fn escaped_model_is_unescaped() {
        let body = br#"{"model":"a\u0062c","messages":[1]}"#;
        assert_eq!(peek(body, Operation::Chat).unwrap().model, "abc");
        let plain = br#"{"model":"abc","messages":[1]}"#;
        assert!(matches!(
            peek(plain, Operation::Chat).unwrap().model,
            Cow::Borrowed("abc")
        ));
    }

    #[test]
    fn malformed_json_names_line_and_column() {
        let e = peek(b"{\n  \"model\": \"x\",\n  oops\n}", Operation::Chat).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidJson);
        assert!(e.message.contains("line 3 column 3"), "{}", e.message);
    }

    #[test]
    fn missing_and_wrong_fields() {
        let e = peek(br#"{"messages":[{}]}"#, Operation::Chat).unwrap_err();
        assert_eq!(
            (e.kind, e.param),
            (ErrorKind::InvalidRequest, Some("model"))
        );
        let e = peek(br#"{"model":"m"}"#, Operation::Chat).unwrap_err();
        assert_eq!(e.param, Some("messages"));
        let e = peek(br#"{"model":"m","messages":[]}"#, Operation::Chat).unwrap_err();
        assert_eq!(e.param, Some("messages"));
        let e = peek(br#"{"model":7,"messages":[{}]}"#, Operation::Chat).unwrap_err();
        assert_eq!(e.param, Some("model"));
        let e = peek(
            br#"{"model":"m","messages":[{}],"stream":"yes"}"#,
            Operation::Chat,
        )
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidRequest);
        let e = peek(br#"{"model":"m"}"#, Operation::Embeddings).unwrap_err();
        assert_eq!(e.param, Some("input"));
        assert!(peek(br#"{"model":"m","input":"x"}"#, Operation::Embeddings).is_ok());
    }

    #[test]
    fn invalid_utf8_is_rejected() {
        let e = peek(
            b"{\"model\":\"m\",\"messages\":[\"\xff\"]}",
            Operation::Chat,
        )
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidJson);
        assert!(e.message.contains("byte 26"), "{}", e.message);
    }

    #[test]
    fn non_objects_are_rejected() {
        for body in [&b""[..], b"   ", b"[]", b"\"x\"", b"null"] {
            let e = peek(body, Operation::Chat).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidJson, "{body:?}");
        }
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;

    /// Random and mutated bodies never panic the peek, and whatever it
    /// accepts has a model span that really holds a JSON string.
    #[test]
    fn peek_never_panics() {
        let seeds: [&[u8]; 4] = [
            br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}"#,
            br#"{"model":"a\u0062","input":["x"],"stream_options":{"include_usage":true}}"#,
            br#"{"model":"m","max_tokens":5,"messages":[{}]}"#,
            b"{}",
        ];
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            state >> 33
        };
        for i in 0..20_000 {
            let mut body = seeds[i % seeds.len()].to_vec();
            for _ in 0..(next() % 6) {
                let pos = (next() as usize) % (body.len() + 1);
                match next() % 3 {
                    0 if pos < body.len() => body[pos] = next() as u8,
                    1 => {
                        let alphabet = b"{}[]\",:\\ \x00\xffu";
                        body.insert(pos, alphabet[(next() as usize) % alphabet.len()]);
                    }
                    _ if pos < body.len() => {
                        body.remove(pos);
                    }
                    _ => {}
                }
            }
            for op in [Operation::Chat, Operation::Embeddings, Operation::Messages] {
                if let Ok(p) = peek(&body, op) {
                    let token = &body[p.model_span.clone()];
                    assert!(token.starts_with(b"\"") && token.ends_with(b"\""));
                    let rewritten = rewrite_model(&body, p.model_span.clone(), "x");
                    assert!(
                        serde_json::from_slice::<serde_json::Value>(&rewritten).is_ok(),
                        "{:?} -> {:?}",
                        String::from_utf8_lossy(&body),
                        String::from_utf8_lossy(&rewritten)
                    );
                }
            }
        }
    }
}
