//! The built-in `mock` provider: deterministic answers with no network.
//!
//! The same request always gets the same reply, streamed token by token with
//! the configured delay, with honest usage figures — so a new user sees the
//! gateway work end to end, and tests can assert exact output.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_core::config::MockConfig;
use sluice_core::request::Usage;
use sluice_core::{ErrorKind, GatewayError};

use crate::BoxBody;

const VOCAB: &[&str] = &[
    " the", " gateway", " routes", " every", " request", " to", " a", " model", " and", " streams",
    " tokens", " back", " quickly", " with", " low", " latency", ".",
];

/// What the mock will say: computed up front, so it is the same streamed or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MockReply {
    pub tokens: Vec<String>,
    /// A tool call instead of text: (name, arguments as JSON text).
    pub call: Option<(String, String)>,
    /// Choices in the answer (`n`), all alike.
    pub n: u32,
    pub finish_reason: &'static str,
    pub usage: Usage,
}

impl MockReply {
    pub fn text(&self) -> String {
        self.tokens.concat()
    }
}

/// Decides the reply to a chat request body.
pub fn chat_reply(cfg: &MockConfig, body: &[u8]) -> Result<MockReply, GatewayError> {
    let req: Value = serde_json::from_slice(body).map_err(|e| {
        GatewayError::new(ErrorKind::InvalidRequest, format!("invalid request: {e}"))
    })?;
    let mut prompt_tokens = 0u64;
    let mut last_user = String::new();
    for m in req["messages"].as_array().into_iter().flatten() {
        let text = content_text(&m["content"]);
        prompt_tokens += 3 + text.split_whitespace().count() as u64;
        if m["role"] == "user" {
            last_user = text;
        }
    }
    let n_choices = req["n"].as_u64().unwrap_or(1).clamp(1, 16) as u32;
    if let Some((name, params)) = crate::mock_shape::tool_to_call(&req) {
        let args = crate::mock_shape::sample(&params, &params, 0).to_string();
        let completion_tokens = 3 + args.len() as u64 / 4;
        return Ok(MockReply {
            tokens: Vec::new(),
            call: Some((name, args)),
            n: n_choices,
            finish_reason: "tool_calls",
            usage: Usage {
                prompt_tokens,
                completion_tokens: completion_tokens * u64::from(n_choices),
            },
        });
    }
    let limit = req["max_completion_tokens"]
        .as_u64()
        .or(req["max_tokens"].as_u64())
        .unwrap_or(u64::MAX);
    let wanted = u64::from(cfg.tokens_per_response);
    let n = wanted.min(limit) as usize;

    let mut words: Vec<String> = ["Mock", " reply", " to", ":"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    words.extend(
        last_user
            .split_whitespace()
            .take(8)
            .map(|w| format!(" {w}")),
    );
    let seed = fnv1a(last_user.as_bytes());
    let mut i = 0usize;
    while words.len() < n {
        words.push(VOCAB[(seed as usize + i) % VOCAB.len()].to_owned());
        i += 1;
    }
    words.truncate(n);
    // Structured output: JSON for the schema, in pieces like tokens.
    if let Some(v) = crate::mock_shape::structured(&req, words.concat().trim()) {
        let text = v.to_string();
        let pieces: Vec<String> = text
            .as_bytes()
            .chunks(8)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        let count = pieces.len() as u64;
        return Ok(MockReply {
            tokens: pieces,
            call: None,
            n: n_choices,
            finish_reason: "stop",
            usage: Usage {
                prompt_tokens,
                completion_tokens: count * u64::from(n_choices),
            },
        });
    }
    Ok(MockReply {
        tokens: words,
        call: None,
        n: n_choices,
        finish_reason: if limit < wanted { "length" } else { "stop" },
        usage: Usage {
            prompt_tokens,
            completion_tokens: n as u64 * u64::from(n_choices),
        },
    })
}

use crate::mock_shape::content_text;

/// A complete `chat.completion` response, after the simulated generation time.
pub async fn chat_response(
    cfg: &MockConfig,
    model: &str,
    reply: MockReply,
) -> http::Response<BoxBody> {
    let delay = cfg.token_delay * reply.tokens.len() as u32;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let message = match &reply.call {
        Some((name, args)) => json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_mock_1", "type": "function", "function": {"name": name, "arguments": args}}]}),
        None => json!({"role": "assistant", "content": reply.text()}),
    };
    let choices: Vec<Value> = (0..reply.n)
        .map(|i| json!({"index": i, "message": message, "logprobs": null, "finish_reason": reply.finish_reason}))
        .collect();
    let body = json!({
        "id": completion_id(&reply),
        "object": "chat.completion",
        "created": now_secs(),
        "model": model,
        "choices": choices,
        "usage": usage_json(reply.usage),
    });
    json_response(&body)
}

/// A `chat.completion.chunk` SSE stream ending with `data: [DONE]`.
pub fn chat_stream(
    cfg: &MockConfig,
    model: &str,
    reply: MockReply,
    include_usage: bool,
) -> http::Response<BoxBody> {
    let id = completion_id(&reply);
    let created = now_secs();
    let n = reply.n;
    let chunk = |delta: Value, finish: Option<&str>| {
        let choices: Vec<Value> = (0..n)
            .map(|i| json!({"index": i, "delta": delta, "logprobs": null, "finish_reason": finish}))
            .collect();
        json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": choices,
        })
    };
    // Events are tiny and few; render them now, pace them out below.
    let mut events = Vec::with_capacity(reply.tokens.len() + 4);
    events.push(sse(&chunk(
        json!({"role": "assistant", "content": ""}),
        None,
    )));
    if let Some((name, args)) = &reply.call {
        events.push(sse(&chunk(
            json!({"tool_calls": [{"index": 0, "id": "call_mock_1", "type": "function",
                                   "function": {"name": name, "arguments": ""}}]}),
            None,
        )));
        let mid = args.len() / 2;
        let mid = (mid..args.len())
            .find(|&i| args.is_char_boundary(i))
            .unwrap_or(args.len());
        for piece in [&args[..mid], &args[mid..]] {
            events.push(sse(&chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}),
                None,
            )));
        }
    }
    for t in &reply.tokens {
        events.push(sse(&chunk(json!({"content": t}), None)));
    }
    events.push(sse(&chunk(json!({}), Some(reply.finish_reason))));
    if include_usage {
        events.push(sse(&json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [], "usage": usage_json(reply.usage),
        })));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));

    let delay = cfg.token_delay;
    let stream = futures_util::stream::iter(events.into_iter().enumerate()).then(
        move |(i, ev)| async move {
            // Pace content tokens: the role chunk goes at once, each token after a delay.
            if i > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Ok::<_, crate::BodyError>(Frame::data(ev))
        },
    );
    http::Response::builder()
        .header(CONTENT_TYPE, "text/event-stream")
        .header(CACHE_CONTROL, "no-cache")
        .body(BodyExt::boxed_unsync(StreamBody::new(stream)))
        .expect("static headers are valid")
}

#[derive(Deserialize)]
struct EmbeddingsIn {
    input: Value,
    encoding_format: Option<String>,
    dimensions: Option<usize>,
}

/// An `embeddings` response: one deterministic unit vector per input.
pub fn embeddings_response(
    cfg: &MockConfig,
    model: &str,
    body: &[u8],
) -> Result<(http::Response<BoxBody>, Usage), GatewayError> {
    let req: EmbeddingsIn = serde_json::from_slice(body).map_err(|e| {
        GatewayError::new(ErrorKind::InvalidRequest, format!("invalid request: {e}"))
    })?;
    let inputs: Vec<String> = match &req.input {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) if items.iter().all(Value::is_number) && !items.is_empty() => {
            vec![req.input.to_string()]
        }
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .collect(),
        _ => {
            return Err(GatewayError::new(
                ErrorKind::InvalidRequest,
                "'input' must be a non-empty string, array of strings, or array of token arrays",
            )
            .with_param("input"));
        }
    };
    let dims = req.dimensions.unwrap_or(cfg.embedding_dims);
    if dims == 0 || dims > 65_536 {
        return Err(GatewayError::new(
            ErrorKind::InvalidRequest,
            "'dimensions' must be between 1 and 65536",
        )
        .with_param("dimensions"));
    }
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(GatewayError::new(
                ErrorKind::InvalidRequest,
                format!("unknown encoding_format '{other}' (float or base64)"),
            )
            .with_param("encoding_format"));
        }
    };
    let mut prompt_tokens = 0u64;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            prompt_tokens += text.split_whitespace().count().max(1) as u64;
            let v = embed(text, dims);
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                Value::String(base64_encode(&bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let usage = Usage {
        prompt_tokens,
        completion_tokens: 0,
    };
    let body = json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    });
    Ok((json_response(&body), usage))
}

/// A deterministic unit vector for `text`.
pub fn embed(text: &str, dims: usize) -> Vec<f32> {
    let mut state = fnv1a(text.as_bytes());
    let mut v: Vec<f32> = (0..dims)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    let norm = v
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

pub(crate) fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> shift) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn usage_json(u: Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    })
}

fn completion_id(reply: &MockReply) -> String {
    format!("chatcmpl-mock-{:016x}", fnv1a(reply.text().as_bytes()))
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

pub(crate) fn sse(v: &Value) -> Bytes {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(b"data: ");
    serde_json::to_writer(&mut out, v).expect("a Value always serializes");
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

pub(crate) fn json_response(v: &Value) -> http::Response<BoxBody> {
    let bytes = serde_json::to_vec(v).expect("a Value always serializes");
    http::Response::builder()
        .header(CONTENT_TYPE, "application/json")
        .body(BodyExt::boxed_unsync(
            Full::new(Bytes::from(bytes)).map_err(|never| match never {}),
        ))
        .expect("static headers are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(n: u32) -> MockConfig {
        MockConfig {
            tokens_per_response: n,
            token_delay: Duration::ZERO,
            embedding_dims: 8,
        }
    }

    #[test]
    fn reply_is_deterministic_and_counts_tokens() {
        let body = br#"{"model":"m","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hello there"}]}"#;
        let a = chat_reply(&cfg(12), body).unwrap();
        let b = chat_reply(&cfg(12), body).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.tokens.len(), 12);
        assert!(
            a.text().starts_with("Mock reply to: hello there"),
            "{}",
            a.text()
        );
        assert_eq!(a.usage.prompt_tokens, 3 + 2 + 3 + 2);
        assert_eq!(a.usage.completion_tokens, 12);
        assert_eq!(a.finish_reason, "stop");
    }

    #[test]
    fn max_tokens_cuts_with_length() {
        let body = br#"{"messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}],"max_tokens":3}"#;
        let r = chat_reply(&cfg(12), body).unwrap();
        assert_eq!(r.tokens.len(), 3);
        assert_eq!(r.finish_reason, "length");
    }

    #[test]
    fn embeddings_are_unit_and_stable() {
        let a = embed("abc", 16);
        assert_eq!(a, embed("abc", 16));
        assert_ne!(a, embed("abd", 16));
        let norm: f32 = a.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-5);
    }

    #[test]
    fn base64_matches_reference() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foo"), "Zm9v");
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn embeddings_reject_bad_input() {
        let e = embeddings_response(&cfg(1), "m", br#"{"input":[]}"#).unwrap_err();
        assert_eq!(e.param, Some("input"));
        let e = embeddings_response(&cfg(1), "m", br#"{"input":"x","encoding_format":"hex"}"#)
            .unwrap_err();
        assert_eq!(e.param, Some("encoding_format"));
    }
}
