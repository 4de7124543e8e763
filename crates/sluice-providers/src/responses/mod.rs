//! The OpenAI Responses API (`/v1/responses`) for clients, served by every
//! target through the canonical chat shape: the request becomes a chat
//! completion request ([`canonical`]), the answer becomes a Response object
//! ([`output::response`]) or the Responses stream events
//! ([`stream::StreamFromChat`]).
//!
//! Conversation state (`previous_response_id`) is the gateway's: the caller
//! passes the stored conversation in, and gets the finished turn back in
//! [`Echo::finished`] to store.

pub mod output;
pub mod stream;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde_json::{Map, Value, json};
use sluice_core::{ErrorKind, GatewayError};

/// What the answer repeats of the request, and where the finished turn goes.
#[derive(Debug)]
pub struct Echo {
    /// `resp_…`, made by the gateway.
    pub id: String,
    pub created_at: u64,
    /// The model as the client named it.
    pub model: String,
    /// Request fields a Response object states again (instructions, tools,
    /// tool_choice, temperature, top_p, text, …), as sent.
    pub fields: Map<String, Value>,
    /// Set once the answer is complete.
    pub finished: Mutex<Option<Finished>>,
}

/// A completed turn: the Response object, and the assistant's message in
/// the chat shape (for the next turn's conversation).
#[derive(Debug, Clone)]
pub struct Finished {
    pub response: Value,
    pub assistant: Value,
}

impl Echo {
    pub fn finished(&self) -> Option<Finished> {
        self.finished
            .lock()
            .expect("responses lock is never poisoned")
            .clone()
    }

    fn finish(&self, f: Finished) {
        *self
            .finished
            .lock()
            .expect("responses lock is never poisoned") = Some(f);
    }
}

/// Fields of a Response object copied from the request when present.
const ECHOED: [&str; 11] = [
    "instructions",
    "tools",
    "tool_choice",
    "temperature",
    "top_p",
    "parallel_tool_calls",
    "text",
    "previous_response_id",
    "metadata",
    "max_output_tokens",
    "user",
];

/// Request fields with no effect on a translated answer: accepted as sent.
const HARMLESS: [&str; 9] = [
    "store",
    "stream",
    "include",
    "truncation",
    "service_tier",
    "background",
    "prompt_cache_key",
    "safety_identifier",
    "stream_options",
];

/// A translated request: the chat request to send, the conversation so far
/// in the chat shape (to store with the answer), and the echo.
pub struct Translated {
    pub chat: Bytes,
    /// `history` and this request's input (without `instructions`, which
    /// do not carry over to a later turn).
    pub conversation: Vec<Value>,
    pub echo: Arc<Echo>,
    /// `store` (default true): keep the turn for `previous_response_id`
    /// and `GET /v1/responses/{id}`.
    pub store: bool,
}

/// Finds an output item of a stored response by its id (`item_reference`).
pub type Resolve<'a> = &'a dyn Fn(&str) -> Option<Value>;

/// A Responses request as a chat completion request. `history` is the
/// stored conversation `previous_response_id` names (chat messages);
/// `resolve` finds the items `item_reference`s name.
pub fn canonical(
    body: &[u8],
    history: &[Value],
    id: String,
    created_at: u64,
    resolve: Resolve<'_>,
) -> Result<Translated, GatewayError> {
    let req: Map<String, Value> =
        serde_json::from_slice(body).map_err(|e| invalid(format!("invalid request: {e}")))?;
    let model = req
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("'model' is required".into()).with_param("model"))?
        .to_owned();
    let mut chat = Map::new();
    chat.insert("model".into(), json!(model));
    let mut messages = Vec::new();
    if let Some(i) = req.get("instructions").filter(|v| !v.is_null()) {
        messages.push(json!({"role": "system", "content": text_of(i, "instructions")?}));
    }
    let mut conversation = history.to_vec();
    let input = input_messages(req.get("input"), resolve)?;
    conversation.extend(input.iter().cloned());
    messages.extend(conversation.iter().cloned());
    chat.insert("messages".into(), Value::Array(messages));
    for (key, v) in req.iter().filter(|(_, v)| !v.is_null()) {
        map_field(key, v, &mut chat)?;
    }
    if req.get("stream").and_then(Value::as_bool) == Some(true) {
        chat.insert("stream".into(), json!(true));
        chat.insert("stream_options".into(), json!({"include_usage": true}));
    }
    let fields = ECHOED
        .iter()
        .filter_map(|k| req.get(*k).map(|v| ((*k).to_owned(), v.clone())))
        .collect();
    let store = req.get("store").and_then(Value::as_bool).unwrap_or(true);
    Ok(Translated {
        chat: Bytes::from(serde_json::to_vec(&chat).expect("a JSON map serializes")),
        conversation,
        echo: Arc::new(Echo {
            id,
            created_at,
            model,
            fields,
            finished: Mutex::new(None),
        }),
        store,
    })
}

/// One request field into the chat request; unknown ones are refused by
/// name rather than dropped.
fn map_field(key: &str, v: &Value, chat: &mut Map<String, Value>) -> Result<(), GatewayError> {
    match key {
        "model" | "input" | "instructions" | "previous_response_id" => {}
        "max_output_tokens" => {
            chat.insert("max_tokens".into(), v.clone());
        }
        "temperature"
        | "top_p"
        | "parallel_tool_calls"
        | "user"
        | "metadata"
        | "seed"
        | "frequency_penalty"
        | "presence_penalty" => {
            chat.insert(key.into(), v.clone());
        }
        "top_logprobs" => {
            chat.insert("logprobs".into(), json!(true));
            chat.insert("top_logprobs".into(), v.clone());
        }
        "tools" => {
            chat.insert("tools".into(), tools(v)?);
        }
        "tool_choice" => {
            chat.insert("tool_choice".into(), tool_choice(v)?);
        }
        "text" => {
            if let Some(f) = text_format(v)? {
                chat.insert("response_format".into(), f);
            }
        }
        "reasoning" => {
            if let Some(effort) = v.get("effort").filter(|e| !e.is_null()) {
                chat.insert("reasoning_effort".into(), effort.clone());
            }
        }
        k if HARMLESS.contains(&k) => {}
        other => {
            return Err(invalid(format!(
                "'{other}' is not supported by this gateway's /v1/responses"
            ))
            .with_param(param_name(other)));
        }
    }
    Ok(())
}

/// `input` (a string, or a list of items) as chat messages.
fn input_messages(input: Option<&Value>, resolve: Resolve<'_>) -> Result<Vec<Value>, GatewayError> {
    let items = match input {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(s)) => return Ok(vec![json!({"role": "user", "content": s})]),
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(
                invalid("'input' must be a string or a list of items".into()).with_param("input"),
            );
        }
    };
    let mut out: Vec<Value> = Vec::with_capacity(items.len());
    for item in items {
        // An earlier output item by its id: as if it were sent again.
        let resolved;
        let item = if item.get("type").and_then(Value::as_str) == Some("item_reference") {
            let id = item.get("id").and_then(Value::as_str).unwrap_or_default();
            resolved = resolve(id).ok_or_else(|| {
                GatewayError::new(
                    ErrorKind::ResponseNotFound,
                    format!("item_reference '{id}': no stored response has that item"),
                )
                .with_param("input")
            })?;
            &resolved
        } else {
            item
        };
        let kind = item.get("type").and_then(Value::as_str);
        match kind {
            Some("function_call") => {
                let call = json!({
                    "id": item.get("call_id").cloned().unwrap_or(Value::Null),
                    "type": "function",
                    "function": {
                        "name": item.get("name").cloned().unwrap_or(json!("")),
                        "arguments": item.get("arguments").cloned().unwrap_or(json!("{}")),
                    },
                });
                // Parallel calls of one turn: one assistant message.
                match out.last_mut() {
                    Some(m) if m["role"] == "assistant" && m["tool_calls"].is_array() => {
                        if let Some(calls) = m["tool_calls"].as_array_mut() {
                            calls.push(call);
                        }
                    }
                    _ => out
                        .push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
                }
            }
            Some("function_call_output") => {
                let output = match item.get("output") {
                    Some(Value::String(s)) => s.clone(),
                    Some(v @ Value::Array(_)) => text_of(v, "output")?,
                    Some(v) => v.to_string(),
                    None => String::new(),
                };
                out.push(json!({
                    "role": "tool",
                    "tool_call_id": item.get("call_id").cloned().unwrap_or(Value::Null),
                    "content": output,
                }));
            }
            // Reasoning carried between turns: nothing a chat target reads.
            Some("reasoning") => {}
            Some("message") | None => out.push(message(item)?),
            Some(other) => {
                return Err(invalid(format!(
                    "input items of type '{other}' are not supported by this gateway's /v1/responses"
                ))
                .with_param("input"));
            }
        }
    }
    Ok(out)
}

/// A message item (`{role, content}`; content a string or parts).
fn message(item: &Value) -> Result<Value, GatewayError> {
    let role = match item.get("role").and_then(Value::as_str) {
        Some("developer") | Some("system") => "system",
        Some(r @ ("user" | "assistant")) => r,
        _ => {
            return Err(invalid(
                "an input message needs a role: user, assistant, system or developer".into(),
            )
            .with_param("input"));
        }
    };
    let content = match item.get("content") {
        Some(Value::String(s)) => json!(s),
        Some(Value::Array(parts)) if role == "user" => Value::Array(
            parts
                .iter()
                .map(input_part)
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(v @ Value::Array(_)) => json!(text_of(v, "content")?),
        _ => json!(""),
    };
    Ok(json!({"role": role, "content": content}))
}

/// A user content part in the chat shape.
fn input_part(p: &Value) -> Result<Value, GatewayError> {
    match p.get("type").and_then(Value::as_str) {
        Some("input_text" | "output_text" | "text") => {
            Ok(json!({"type": "text", "text": p.get("text").cloned().unwrap_or(json!(""))}))
        }
        Some("input_image") => {
            let url = p.get("image_url").and_then(Value::as_str).ok_or_else(|| {
                invalid("input_image needs an image_url (file_id is not supported)".into())
                    .with_param("input")
            })?;
            let mut image = json!({"url": url});
            if let Some(d) = p.get("detail") {
                image["detail"] = d.clone();
            }
            Ok(json!({"type": "image_url", "image_url": image}))
        }
        other => Err(invalid(format!(
            "content parts of type '{}' are not supported by this gateway's /v1/responses",
            other.unwrap_or("(none)")
        ))
        .with_param("input")),
    }
}

/// The text of a string or of a list of text parts.
fn text_of(v: &Value, what: &'static str) -> Result<String, GatewayError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => Ok(parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("")),
        _ => Err(
            invalid(format!("'{what}' must be a string or a list of text parts")).with_param(what),
        ),
    }
}

/// Responses tools (`{type: "function", name, parameters, …}`) as chat tools.
fn tools(v: &Value) -> Result<Value, GatewayError> {
    let Some(list) = v.as_array() else {
        return Err(invalid("'tools' must be a list".into()).with_param("tools"));
    };
    let mut out = Vec::with_capacity(list.len());
    for t in list {
        match t.get("type").and_then(Value::as_str) {
            Some("function") => {
                let mut function = Map::new();
                for k in ["name", "description", "parameters", "strict"] {
                    if let Some(x) = t.get(k).filter(|x| !x.is_null()) {
                        function.insert(k.into(), x.clone());
                    }
                }
                out.push(json!({"type": "function", "function": function}));
            }
            other => {
                return Err(invalid(format!(
                    "tools of type '{}' (hosted by OpenAI) are not supported by this gateway; \
                     use function tools",
                    other.unwrap_or("(none)")
                ))
                .with_param("tools"));
            }
        }
    }
    Ok(Value::Array(out))
}

fn tool_choice(v: &Value) -> Result<Value, GatewayError> {
    match v {
        Value::String(_) => Ok(v.clone()),
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => Ok(
            json!({"type": "function", "function": {"name": o.get("name").cloned().unwrap_or(json!(""))}}),
        ),
        _ => Err(
            invalid("tool_choice must be auto, none, required or a function".into())
                .with_param("tool_choice"),
        ),
    }
}

/// `text.format` as the chat request's `response_format` (`None`: plain text).
fn text_format(v: &Value) -> Result<Option<Value>, GatewayError> {
    let Some(f) = v.get("format").filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    match f.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let mut schema = Map::new();
            for k in ["name", "description", "schema", "strict"] {
                if let Some(x) = f.get(k).filter(|x| !x.is_null()) {
                    schema.insert(k.into(), x.clone());
                }
            }
            Ok(Some(json!({"type": "json_schema", "json_schema": schema})))
        }
        _ => Err(
            invalid("text.format.type must be text, json_object or json_schema".into())
                .with_param("text"),
        ),
    }
}

/// A request field's name as an error's `param` (static: known names only).
fn param_name(field: &str) -> &'static str {
    const KNOWN: [&str; 6] = [
        "prompt",
        "conversation",
        "max_tool_calls",
        "context_management",
        "modalities",
        "audio",
    ];
    KNOWN
        .iter()
        .find(|k| **k == field)
        .copied()
        .unwrap_or("request")
}

fn invalid(message: String) -> GatewayError {
    GatewayError::new(ErrorKind::InvalidRequest, message)
}

#[cfg(test)]
mod tests;
