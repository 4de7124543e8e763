//! The Anthropic, Gemini and legacy completions formats of the mock upstream.

use hyper::Response;
use serde_json::{Value, json};

use crate::{Body, framed, full, json_resp, words};

/// The Anthropic Messages API: text, or a tool call when tools are offered
/// and the last turn is the user's; streamed as Anthropic's documented events.
pub(crate) fn anthropic(
    req: &Value,
    headers: &serde_json::Map<String, Value>,
    stream: bool,
) -> Response<Body> {
    if !headers.contains_key("x-api-key") || !headers.contains_key("anthropic-version") {
        return json_resp(
            401,
            &json!({"type": "error", "error": {"type": "authentication_error", "message": "missing x-api-key or anthropic-version"}}),
        );
    }
    let model = req["model"].as_str().unwrap_or("").to_owned();
    if let Some(code) = model
        .strip_prefix("status-")
        .and_then(|c| c.parse::<u16>().ok())
    {
        let kind = if code == 429 {
            "rate_limit_error"
        } else {
            "api_error"
        };
        let mut r = json_resp(
            code,
            &json!({"type": "error", "error": {"type": kind, "message": format!("mock anthropic says {code}")}}),
        );
        if code == 429 {
            r.headers_mut()
                .insert("retry-after", hyper::header::HeaderValue::from_static("7"));
        }
        return r;
    }
    let tool = req["tools"]
        .as_array()
        .and_then(|t| t.first())
        .and_then(|t| t["name"].as_str())
        .map(str::to_owned);
    let last_is_user = req["messages"]
        .as_array()
        .and_then(|m| m.last())
        .is_some_and(|m| m["role"] == "user")
        && !req["messages"]
            .as_array()
            .and_then(|m| m.last())
            .is_some_and(|m| {
                m["content"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|b| b["type"] == "tool_result"))
            });
    let tool = tool.filter(|_| last_is_user);
    // A forced tool (`tool_choice: {type: "tool"}`) is called at once, with
    // no text before it, as Anthropic does.
    let forced = req["tool_choice"]["type"] == "tool";
    let usage = json!({"input_tokens": 13, "output_tokens": 7});
    if !stream {
        let (content, stop) = match &tool {
            Some(name) if forced => (
                json!([{"type": "tool_use", "id": "toolu_mock_1", "name": name, "input": {"city": "Paris"}}]),
                "tool_use",
            ),
            Some(name) => (
                json!([{"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_mock_1", "name": name, "input": {"city": "Paris"}}]),
                "tool_use",
            ),
            None => (
                json!([{"type": "text", "text": "Hello from the mock anthropic"}]),
                "end_turn",
            ),
        };
        return json_resp(
            200,
            &json!({"id": "msg_mock_1", "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": stop, "stop_sequence": null, "usage": usage}),
        );
    }
    let mut out = String::new();
    let mut ev = |name: &str, v: Value| out.push_str(&format!("event: {name}\ndata: {v}\n\n"));
    ev(
        "message_start",
        json!({"type": "message_start", "message": {"id": "msg_mock_1", "type": "message", "role": "assistant",
        "model": model, "content": [], "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 13, "output_tokens": 1}}}),
    );
    ev("ping", json!({"type": "ping"}));
    if !(forced && tool.is_some()) {
        ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        );
        let default_words: &[&str] = if tool.is_some() {
            &["Let me", " check."]
        } else {
            &["Hello", " from the", " mock anthropic"]
        };
        for w in words(req, default_words) {
            ev(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}}),
            );
        }
        ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        );
    }
    let stop = if let Some(name) = &tool {
        ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": 1,
            "content_block": {"type": "tool_use", "id": "toolu_mock_1", "name": name, "input": {}}}),
        );
        for piece in ["{\"city\": ", "\"Paris\"}"] {
            ev(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": piece}}),
            );
        }
        ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 1}),
        );
        "tool_use"
    } else {
        "end_turn"
    };
    ev(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": 7}}),
    );
    ev("message_stop", json!({"type": "message_stop"}));
    let mut r = Response::new(framed(&out));
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("text/event-stream"),
    );
    r
}

/// Gemini's generateContent: text, or a function call when tools are offered
/// and the last turn is the user's own words; streamed as SSE (`alt=sse`).
pub(crate) fn gemini(
    req: &Value,
    headers: &serde_json::Map<String, Value>,
    model: &str,
    stream: bool,
) -> Response<Body> {
    if !headers.contains_key("x-goog-api-key") {
        return json_resp(
            403,
            &json!({"error": {"code": 403, "message": "missing x-goog-api-key", "status": "PERMISSION_DENIED"}}),
        );
    }
    if let Some(code) = model
        .strip_prefix("status-")
        .and_then(|c| c.parse::<u16>().ok())
    {
        return json_resp(
            code,
            &json!({"error": {"code": code, "message": format!("mock gemini says {code}"), "status": "RESOURCE_EXHAUSTED"}}),
        );
    }
    let last = req["contents"].as_array().and_then(|c| c.last());
    let user_words = last.is_some_and(|m| {
        m["role"] == "user"
            && m["parts"]
                .as_array()
                .is_some_and(|p| p.iter().all(|p| p.get("functionResponse").is_none()))
    });
    let tool = req["tools"][0]["functionDeclarations"][0]["name"]
        .as_str()
        .filter(|_| user_words);
    let usage = json!({"promptTokenCount": 12, "candidatesTokenCount": 6, "totalTokenCount": 18});
    let version = format!("{model}-001");
    if !stream {
        let parts = match tool {
            Some(name) => json!([{"functionCall": {"name": name, "args": {"city": "Paris"}}}]),
            None => json!([{"text": "Hello from the mock gemini"}]),
        };
        return json_resp(
            200,
            &json!({"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": usage, "modelVersion": version, "responseId": "gem-1"}),
        );
    }
    let mut out = String::new();
    let pieces: Vec<Value> = match tool {
        Some(name) => vec![json!({"functionCall": {"name": name, "args": {"city": "Paris"}}})],
        None => ["Hello", " from the", " mock gemini"]
            .iter()
            .map(|t| json!({"text": t}))
            .collect(),
    };
    let n = pieces.len();
    for (i, part) in pieces.into_iter().enumerate() {
        let mut ev = json!({"candidates": [{"content": {"role": "model", "parts": [part]}, "index": 0}], "modelVersion": version});
        if i + 1 == n {
            ev["candidates"][0]["finishReason"] = json!("STOP");
            ev["usageMetadata"] = usage.clone();
        }
        out.push_str(&format!("data: {ev}\r\n\r\n"));
    }
    let mut r = Response::new(full(out.into_bytes()));
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("text/event-stream"),
    );
    r
}

/// A legacy text completion: "Completed: <prompt>", whole or streamed (a
/// usage chunk when `stream_options.include_usage`).
pub(crate) fn completion(req: &Value, stream: bool) -> Response<Body> {
    let model = req["model"].as_str().unwrap_or("");
    let prompt = req["prompt"].as_str().unwrap_or("");
    let words = ["Completed:", " ", prompt];
    let usage = json!({"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7});
    if !stream {
        return json_resp(
            200,
            &json!({"id": "cmpl-up", "object": "text_completion", "created": 1, "model": model,
                    "choices": [{"text": words.concat(), "index": 0, "logprobs": null, "finish_reason": "stop"}],
                    "usage": usage}),
        );
    }
    let mut out = String::new();
    for (i, w) in words.iter().enumerate() {
        let finish = (i + 1 == words.len()).then_some("stop");
        let v = json!({"id": "cmpl-up", "object": "text_completion", "created": 1, "model": model,
                       "choices": [{"text": w, "index": 0, "logprobs": null, "finish_reason": finish}]});
        out.push_str(&format!("data: {v}\n\n"));
    }
    if req["stream_options"]["include_usage"] == json!(true) {
        let v = json!({"id": "cmpl-up", "object": "text_completion", "created": 1, "model": model,
                       "choices": [], "usage": usage});
        out.push_str(&format!("data: {v}\n\n"));
    }
    out.push_str("data: [DONE]\n\n");
    let mut r = Response::new(framed(&out));
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("text/event-stream"),
    );
    r
}

/// OpenAI's Responses API: the text "Upstream Responses API: <input>", as a
/// Response object or as the documented stream of events.
pub(crate) fn responses(req: &Value, stream: bool) -> Response<Body> {
    let input = match &req["input"] {
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .filter_map(|i| i["content"].as_str())
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    };
    let model = req["model"].as_str().unwrap_or_default();
    let text = format!("Upstream Responses API: {input}");
    let item = |text: &str, status: &str| {
        json!({"type": "message", "id": "msg_upstream", "role": "assistant", "status": status,
            "content": [{"type": "output_text", "text": text, "annotations": []}]})
    };
    let response = |status: &str, output: Vec<Value>| {
        json!({"id": "resp_upstream", "object": "response", "created_at": 1, "status": status,
            "model": model, "output": output, "parallel_tool_calls": true, "tool_choice": "auto",
            "tools": [], "previous_response_id": req["previous_response_id"],
            "usage": if status == "completed" {
                json!({"input_tokens": 7, "input_tokens_details": {"cached_tokens": 0},
                    "output_tokens": 5, "output_tokens_details": {"reasoning_tokens": 0},
                    "total_tokens": 12})
            } else { Value::Null }})
    };
    if !stream {
        return json_resp(200, &response("completed", vec![item(&text, "completed")]));
    }
    let mut events = vec![
        (
            "response.created",
            json!({"response": response("in_progress", vec![])}),
        ),
        (
            "response.output_item.added",
            json!({"output_index": 0, "item": item("", "in_progress")}),
        ),
        (
            "response.content_part.added",
            json!({"output_index": 0, "item_id": "msg_upstream",
            "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}}),
        ),
    ];
    for piece in text.split_inclusive(' ') {
        events.push((
            "response.output_text.delta",
            json!({"output_index": 0,
            "item_id": "msg_upstream", "content_index": 0, "delta": piece}),
        ));
    }
    events.push((
        "response.output_text.done",
        json!({"output_index": 0,
        "item_id": "msg_upstream", "content_index": 0, "text": text}),
    ));
    events.push((
        "response.output_item.done",
        json!({"output_index": 0,
        "item": item(&text, "completed")}),
    ));
    events.push((
        "response.completed",
        json!({"response": response("completed",
        vec![item(&text, "completed")])}),
    ));
    let mut out = String::new();
    for (i, (kind, mut data)) in events.into_iter().enumerate() {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(i);
        out.push_str(&format!("event: {kind}\ndata: {data}\n\n"));
    }
    let mut r = Response::new(framed(&out));
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("text/event-stream"),
    );
    r
}
