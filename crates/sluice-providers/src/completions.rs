//! Legacy completions (`/v1/completions`) for clients: passed through to
//! OpenAI-format targets (see [`crate::adapter`]), and for every other
//! target translated through the chat shape — the prompt as a user
//! message, the answer's text as `choices[].text`.

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value, json};
use sluice_core::{ErrorKind, GatewayError};

use crate::openai::types as ot;
use crate::sse;

/// A completions request as a chat completion request.
pub fn canonical(body: &[u8]) -> Result<Bytes, GatewayError> {
    let req: Map<String, Value> = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("invalid request: {e}"), "request"))?;
    let mut chat = Map::new();
    let prompt = match req.get("prompt") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
            a[0].as_str().unwrap_or_default().to_owned()
        }
        Some(Value::Array(_)) => {
            return Err(invalid(
                "a list of prompts, or of tokens, is not supported by this gateway for \
                 targets without a completions endpoint: send one prompt string"
                    .into(),
                "prompt",
            ));
        }
        _ => return Err(invalid("'prompt' must be a string".into(), "prompt")),
    };
    chat.insert(
        "messages".into(),
        json!([{"role": "user", "content": prompt}]),
    );
    for (key, v) in req.iter().filter(|(_, v)| !v.is_null()) {
        match key.as_str() {
            "prompt" => {}
            "model" | "max_tokens" | "temperature" | "top_p" | "n" | "stop" | "user" | "seed"
            | "presence_penalty" | "frequency_penalty" | "logit_bias" | "stream"
            | "stream_options" => {
                chat.insert(key.clone(), v.clone());
            }
            "echo" if v == &json!(false) => {}
            "best_of" if v == &json!(1) => {}
            other @ ("echo" | "suffix" | "best_of" | "logprobs") => {
                return Err(invalid(
                    format!(
                        "'{other}' is not supported for targets without a completions endpoint"
                    ),
                    param(other),
                ));
            }
            _ => {
                chat.insert(key.clone(), v.clone());
            }
        }
    }
    Ok(Bytes::from(
        serde_json::to_vec(&chat).expect("a JSON map serializes"),
    ))
}

fn param(field: &str) -> &'static str {
    match field {
        "echo" => "echo",
        "suffix" => "suffix",
        "best_of" => "best_of",
        _ => "logprobs",
    }
}

fn invalid(message: String, param: &'static str) -> GatewayError {
    GatewayError::new(ErrorKind::InvalidRequest, message).with_param(param)
}

fn completion_id(chat_id: &str) -> String {
    format!("cmpl-{}", chat_id.trim_start_matches("chatcmpl-"))
}

/// A chat completion as a text completion.
pub fn response(chat: &ot::ChatResponse, model: &str) -> Value {
    let choices: Vec<Value> = chat
        .choices
        .iter()
        .map(|c| {
            json!({
                "text": c.message.content.as_ref().map(ot::Content::text).unwrap_or_default(),
                "index": c.index,
                "logprobs": null,
                "finish_reason": c.finish_reason,
            })
        })
        .collect();
    let mut v = json!({
        "id": completion_id(&chat.id),
        "object": "text_completion",
        "created": chat.created,
        "model": model,
        "choices": choices,
    });
    if let Some(u) = &chat.usage {
        v["usage"] = json!({
            "prompt_tokens": u.prompt_tokens,
            "completion_tokens": u.completion_tokens,
            "total_tokens": u.prompt_tokens + u.completion_tokens,
        });
    }
    v
}

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [ChunkChoice<'a>; 1],
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    text: &'a str,
    index: u32,
    logprobs: (),
    finish_reason: Option<&'a str>,
}

/// Chat chunks as text completion chunks, then `[DONE]`.
pub struct StreamFromChat {
    model: String,
    include_usage: bool,
}

impl StreamFromChat {
    pub fn new(model: &str, include_usage: bool) -> Self {
        Self {
            model: model.to_owned(),
            include_usage,
        }
    }

    pub fn chunk(&mut self, c: &ot::Chunk, out: &mut Vec<u8>) {
        let id = completion_id(&c.id);
        for choice in &c.choices {
            let text = choice.delta.content.as_deref().unwrap_or("");
            if text.is_empty() && choice.finish_reason.is_none() {
                continue;
            }
            let chunk = Chunk {
                id: &id,
                object: "text_completion",
                created: c.created,
                model: &self.model,
                choices: [ChunkChoice {
                    text,
                    index: choice.index,
                    logprobs: (),
                    finish_reason: choice.finish_reason.as_deref(),
                }],
            };
            sse::push_data(out, &chunk);
        }
        if let Some(u) = c.usage.as_ref().filter(|_| self.include_usage) {
            let v = json!({
                "id": id, "object": "text_completion", "created": c.created, "model": self.model,
                "choices": [],
                "usage": {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                          "total_tokens": u.prompt_tokens + u.completion_tokens},
            });
            sse::push_data(out, &v);
        }
    }

    pub fn finish(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"data: [DONE]\n\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prompt_becomes_a_chat_request_and_refusals_name_the_field() {
        let chat: Value = serde_json::from_slice(
            &canonical(
                br#"{"model":"m","prompt":"Say hi","max_tokens":5,"stream":true,"echo":false}"#,
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            chat,
            json!({"model": "m", "messages": [{"role": "user", "content": "Say hi"}],
                   "max_tokens": 5, "stream": true})
        );
        for (body, field) in [
            (r#"{"model":"m","prompt":"x","echo":true}"#, "echo"),
            (r#"{"model":"m","prompt":"x","suffix":"y"}"#, "suffix"),
            (r#"{"model":"m","prompt":["a","b"]}"#, "prompt"),
            (r#"{"model":"m","prompt":[1,2,3]}"#, "prompt"),
            (r#"{"model":"m"}"#, "prompt"),
        ] {
            let e = canonical(body.as_bytes()).unwrap_err();
            assert_eq!(e.param, Some(field), "{body}: {}", e.message);
        }
    }

    #[test]
    fn answers_whole_and_streamed() {
        let chat: ot::ChatResponse = serde_json::from_value(json!({
            "id": "chatcmpl-7", "object": "chat.completion", "created": 3, "model": "up",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi!"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}}))
        .unwrap();
        assert_eq!(
            response(&chat, "alias"),
            json!({"id": "cmpl-7", "object": "text_completion", "created": 3, "model": "alias",
                   "choices": [{"text": "Hi!", "index": 0, "logprobs": null, "finish_reason": "stop"}],
                   "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}})
        );
        let mut enc = StreamFromChat::new("alias", false);
        let mut out = Vec::new();
        for v in [
            json!({"id": "chatcmpl-7", "object": "chat.completion.chunk", "created": 3, "model": "up",
                   "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]}),
            json!({"id": "chatcmpl-7", "object": "chat.completion.chunk", "created": 3, "model": "up",
                   "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": null}]}),
            json!({"id": "chatcmpl-7", "object": "chat.completion.chunk", "created": 3, "model": "up",
                   "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
            json!({"id": "chatcmpl-7", "object": "chat.completion.chunk", "created": 3, "model": "up",
                   "choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}}),
        ] {
            enc.chunk(&serde_json::from_value(v).unwrap(), &mut out);
        }
        enc.finish(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "data: {\"id\":\"cmpl-7\",\"object\":\"text_completion\",\"created\":3,\"model\":\"alias\",\"choices\":[{\"text\":\"Hi\",\"index\":0,\"logprobs\":null,\"finish_reason\":null}]}\n\n\
             data: {\"id\":\"cmpl-7\",\"object\":\"text_completion\",\"created\":3,\"model\":\"alias\",\"choices\":[{\"text\":\"\",\"index\":0,\"logprobs\":null,\"finish_reason\":\"stop\"}]}\n\n\
             data: [DONE]\n\n"
        );
    }
}
