//! A chat completion as a Response object.

use serde_json::{Map, Value, json};

use super::{Echo, Finished};
use crate::openai::types as ot;

/// The Response object for a finished chat completion; the turn is kept in
/// `echo` for the caller to store.
pub fn response(chat: &ot::ChatResponse, echo: &Echo) -> Value {
    let choice = chat.choices.first();
    let msg = choice.map(|c| &c.message);
    let text = msg
        .and_then(|m| m.content.as_ref())
        .map(ot::Content::text)
        .unwrap_or_default();
    let calls: Vec<(String, String, String)> = msg
        .and_then(|m| m.tool_calls.as_ref())
        .map(|calls| {
            calls
                .iter()
                .map(|c| {
                    (
                        c.id.clone(),
                        c.function.name.clone(),
                        c.function.arguments.clone(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let mut output = Vec::new();
    if !text.is_empty() || calls.is_empty() {
        output.push(message_item(&message_id(&echo.id), &text, "completed"));
    }
    for (i, (call_id, name, args)) in calls.iter().enumerate() {
        output.push(call_item(
            &call_item_id(&echo.id, i),
            call_id,
            name,
            args,
            "completed",
        ));
    }
    let usage = chat
        .usage
        .as_ref()
        .map(|u| (u.prompt_tokens, u.completion_tokens));
    let finish = choice.and_then(|c| c.finish_reason.as_deref());
    let r = object(echo, status_of(finish), output, usage);
    echo.finish(Finished {
        response: r.clone(),
        assistant: assistant_message(&text, &calls),
    });
    r
}

/// `completed`, or `incomplete` when the answer hit its token limit.
pub(super) fn status_of(finish: Option<&str>) -> &'static str {
    match finish {
        Some("length") => "incomplete",
        _ => "completed",
    }
}

/// A Response object around `output`.
pub(super) fn object(
    echo: &Echo,
    status: &str,
    output: Vec<Value>,
    usage: Option<(u64, u64)>,
) -> Value {
    let mut r = Map::new();
    r.insert("id".into(), json!(echo.id));
    r.insert("object".into(), json!("response"));
    r.insert("created_at".into(), json!(echo.created_at));
    r.insert("status".into(), json!(status));
    r.insert("model".into(), json!(echo.model));
    r.insert("output".into(), Value::Array(output));
    r.insert("error".into(), Value::Null);
    r.insert(
        "incomplete_details".into(),
        if status == "incomplete" {
            json!({"reason": "max_output_tokens"})
        } else {
            Value::Null
        },
    );
    r.insert("parallel_tool_calls".into(), json!(true));
    r.insert("tool_choice".into(), json!("auto"));
    r.insert("tools".into(), json!([]));
    r.insert("text".into(), json!({"format": {"type": "text"}}));
    for (k, v) in &echo.fields {
        r.insert(k.clone(), v.clone());
    }
    if status != "in_progress" {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(echo.created_at, |d| d.as_secs());
        r.insert("completed_at".into(), json!(now));
    }
    r.insert(
        "usage".into(),
        match usage {
            Some((input, output)) => json!({
                "input_tokens": input,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": output,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": input + output,
            }),
            None => Value::Null,
        },
    );
    Value::Object(r)
}

pub(super) fn message_item(id: &str, text: &str, status: &str) -> Value {
    let content = if status == "in_progress" {
        json!([])
    } else {
        json!([output_text(text)])
    };
    json!({"id": id, "type": "message", "role": "assistant", "status": status, "content": content})
}

pub(super) fn output_text(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

pub(super) fn call_item(id: &str, call_id: &str, name: &str, args: &str, status: &str) -> Value {
    json!({
        "id": id, "type": "function_call", "status": status,
        "call_id": call_id, "name": name, "arguments": args,
    })
}

/// The assistant's turn in the chat shape, for the stored conversation.
pub(super) fn assistant_message(text: &str, calls: &[(String, String, String)]) -> Value {
    if calls.is_empty() {
        return json!({"role": "assistant", "content": text});
    }
    let calls: Vec<Value> = calls
        .iter()
        .map(|(id, name, args)| {
            json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}})
        })
        .collect();
    let content = if text.is_empty() {
        Value::Null
    } else {
        json!(text)
    };
    json!({"role": "assistant", "content": content, "tool_calls": calls})
}

/// Item ids derive from the response id: stable within one response.
pub(super) fn message_id(response_id: &str) -> String {
    format!("msg_{}", response_id.trim_start_matches("resp_"))
}

pub(super) fn call_item_id(response_id: &str, i: usize) -> String {
    format!("fc_{}_{i}", response_id.trim_start_matches("resp_"))
}
