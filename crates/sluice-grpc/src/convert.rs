//! Calls as the HTTP API's JSON requests, and the API's JSON answers as
//! replies.

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::pb;
use crate::status::{Code, Status};

/// `extra_json` as the object the typed fields are added to.
fn extra(extra_json: &str) -> Result<Map<String, Value>, Status> {
    if extra_json.trim().is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_str::<Value>(extra_json) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(Status::new(
            Code::InvalidArgument,
            "extra_json must be a JSON object",
        )),
        Err(e) => Err(Status::new(
            Code::InvalidArgument,
            format!("extra_json is not valid JSON: {e}"),
        )),
    }
}

/// The OpenAI chat body of a call; `stream` asks for a stream.
pub fn chat_body(r: &pb::ChatRequest) -> Result<Vec<u8>, Status> {
    let mut body = extra(&r.extra_json)?;
    body.insert("model".into(), Value::String(r.model.clone()));
    if !r.messages.is_empty() || !body.contains_key("messages") {
        let messages = r
            .messages
            .iter()
            .map(|m| json!({"role": m.role, "content": m.content}))
            .collect();
        body.insert("messages".into(), Value::Array(messages));
    }
    if let Some(n) = r.max_tokens {
        body.insert("max_tokens".into(), n.into());
    }
    if let Some(t) = r.temperature {
        body.insert("temperature".into(), json!(t));
    }
    Ok(serde_json::to_vec(&body).expect("a Map always serializes"))
}

#[derive(Deserialize, Default)]
struct UsageJson {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    total_tokens: u64,
}

fn usage(u: Option<UsageJson>) -> Option<pb::Usage> {
    let c = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    u.map(|u| pb::Usage {
        prompt_tokens: c(u.prompt_tokens),
        completion_tokens: c(u.completion_tokens),
        total_tokens: c(u.total_tokens.max(u.prompt_tokens + u.completion_tokens)),
    })
}

fn unreadable(what: &str, e: serde_json::Error) -> Status {
    Status::new(
        Code::Internal,
        format!("the gateway's {what} answer could not be read: {e}"),
    )
}

/// The reply of a chat call from the API's chat completion.
pub fn chat_response(json: &[u8]) -> Result<pb::ChatResponse, Status> {
    #[derive(Deserialize)]
    struct Completion {
        #[serde(default)]
        id: String,
        #[serde(default)]
        model: String,
        #[serde(default)]
        choices: Vec<Choice>,
        usage: Option<UsageJson>,
    }
    #[derive(Deserialize)]
    struct Choice {
        #[serde(default)]
        index: u32,
        message: Option<ChoiceMessage>,
        finish_reason: Option<String>,
    }
    #[derive(Deserialize)]
    struct ChoiceMessage {
        content: Option<String>,
    }
    let c: Completion = serde_json::from_slice(json).map_err(|e| unreadable("chat", e))?;
    let first = c.choices.into_iter().find(|ch| ch.index == 0);
    let (content, finish_reason) = first.map_or_else(Default::default, |ch| {
        (
            ch.message.and_then(|m| m.content).unwrap_or_default(),
            ch.finish_reason.unwrap_or_default(),
        )
    });
    Ok(pb::ChatResponse {
        id: c.id,
        model: c.model,
        content,
        finish_reason,
        usage: usage(c.usage),
        response_json: String::from_utf8_lossy(json).into_owned(),
    })
}

/// The OpenAI embeddings body of a call (floats, whatever `extra_json` asks).
pub fn embed_body(r: &pb::EmbedRequest) -> Result<Vec<u8>, Status> {
    let mut body = extra(&r.extra_json)?;
    body.insert("model".into(), Value::String(r.model.clone()));
    body.insert("input".into(), json!(r.input));
    body.insert("encoding_format".into(), Value::String("float".into()));
    if let Some(d) = r.dimensions {
        body.insert("dimensions".into(), d.into());
    }
    Ok(serde_json::to_vec(&body).expect("a Map always serializes"))
}

pub fn embed_response(json: &[u8]) -> Result<pb::EmbedResponse, Status> {
    #[derive(Deserialize)]
    struct List {
        #[serde(default)]
        model: String,
        data: Vec<Item>,
        usage: Option<UsageJson>,
    }
    #[derive(Deserialize)]
    struct Item {
        #[serde(default)]
        index: u32,
        embedding: Vec<f32>,
    }
    let l: List = serde_json::from_slice(json).map_err(|e| unreadable("embeddings", e))?;
    Ok(pb::EmbedResponse {
        model: l.model,
        data: l
            .data
            .into_iter()
            .map(|i| pb::Embedding {
                index: i.index,
                values: i.embedding,
            })
            .collect(),
        usage: usage(l.usage),
    })
}

pub fn predict_body(r: &pb::PredictRequest) -> Vec<u8> {
    serde_json::to_vec(&json!({"model": r.model, "data": r.data}))
        .expect("a Value always serializes")
}

pub fn predict_response(json: &[u8]) -> Result<pb::PredictResponse, Status> {
    #[derive(Deserialize)]
    struct Prediction {
        #[serde(default)]
        model: String,
        prediction: Vec<f32>,
        #[serde(default)]
        shape: Vec<u64>,
        #[serde(default)]
        input_len: u64,
    }
    let p: Prediction = serde_json::from_slice(json).map_err(|e| unreadable("predict", e))?;
    Ok(pb::PredictResponse {
        model: p.model,
        prediction: p.prediction,
        shape: p.shape,
        input_len: p.input_len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_fields_win_over_extra_json() {
        let r = pb::ChatRequest {
            model: "m".into(),
            messages: vec![pb::Message {
                role: "user".into(),
                content: "hi".into(),
            }],
            max_tokens: Some(7),
            temperature: Some(0.5),
            extra_json: r#"{"model":"other","top_p":0.9,"tools":[{"type":"function"}]}"#.into(),
        };
        let v: Value = serde_json::from_slice(&chat_body(&r).expect("a body")).expect("JSON");
        assert_eq!(v["model"], "m");
        assert_eq!(v["max_tokens"], 7);
        assert_eq!(v["temperature"], 0.5);
        assert_eq!(v["top_p"], 0.9);
        assert_eq!(v["tools"][0]["type"], "function");
        assert_eq!(v["messages"][0]["content"], "hi");
    }

    #[test]
    fn extra_json_must_be_an_object_and_may_carry_messages() {
        let mut r = pb::ChatRequest {
            model: "m".into(),
            extra_json: "[1]".into(),
            ..Default::default()
        };
        assert_eq!(chat_body(&r).unwrap_err().code, Code::InvalidArgument);
        r.extra_json = "{nope".into();
        assert_eq!(chat_body(&r).unwrap_err().code, Code::InvalidArgument);
        r.extra_json =
            r#"{"messages":[{"role":"user","content":[{"type":"text","text":"x"}]}]}"#.into();
        let v: Value = serde_json::from_slice(&chat_body(&r).expect("a body")).expect("JSON");
        assert_eq!(v["messages"][0]["content"][0]["text"], "x");
    }

    #[test]
    fn a_completion_becomes_a_reply() {
        let json = br#"{"id":"c1","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Hello"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#;
        let r = chat_response(json).expect("a reply");
        assert_eq!(
            (r.content.as_str(), r.finish_reason.as_str()),
            ("Hello", "stop")
        );
        assert_eq!(r.usage.expect("usage").total_tokens, 4);
        assert!(r.response_json.contains("\"c1\""));
    }
}
