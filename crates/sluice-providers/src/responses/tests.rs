//! Golden tests: Responses requests to chat, chat answers (whole and
//! streamed) to Responses.

use serde_json::{Value, json};

use super::stream::StreamFromChat;
use super::*;
use crate::openai::types as ot;

fn translate(req: Value, history: &[Value]) -> Translated {
    canonical(
        req.to_string().as_bytes(),
        history,
        "resp_abc".into(),
        1_700_000_000,
        &|_| None,
    )
    .unwrap()
}

fn chat_of(t: &Translated) -> Value {
    serde_json::from_slice(&t.chat).unwrap()
}

#[test]
fn a_request_becomes_a_chat_request() {
    let t = translate(
        json!({
            "model": "m", "instructions": "Be brief.", "input": "Hi",
            "max_output_tokens": 50, "temperature": 0.2, "stream": true, "store": false,
            "tools": [{"type": "function", "name": "get_weather", "description": "d",
                       "parameters": {"type": "object"}, "strict": true}],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}, "strict": true}},
            "reasoning": {"effort": "low"}, "include": [], "truncation": "disabled", "prompt": null,
        }),
        &[],
    );
    assert_eq!(
        chat_of(&t),
        json!({
            "model": "m",
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
            "max_tokens": 50, "temperature": 0.2, "stream": true,
            "stream_options": {"include_usage": true},
            "tools": [{"type": "function", "function": {"name": "get_weather", "description": "d",
                       "parameters": {"type": "object"}, "strict": true}}],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}, "strict": true}},
            "reasoning_effort": "low",
        })
    );
    assert!(!t.store);
    assert_eq!(
        t.conversation,
        vec![json!({"role": "user", "content": "Hi"})],
        "no instructions"
    );
    assert_eq!(t.echo.fields["instructions"], "Be brief.");
    assert_eq!(t.echo.fields["max_output_tokens"], 50);
}

#[test]
fn items_tool_calls_and_results_and_history() {
    let history = vec![
        json!({"role": "user", "content": "earlier"}),
        json!({"role": "assistant", "content": "ok"}),
    ];
    let t = translate(
        json!({"model": "m", "input": [
            {"role": "developer", "content": "rules"},
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "look"},
                {"type": "input_image", "image_url": "https://x/y.png", "detail": "low"}]},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{\"a\":1}"},
            {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "one"},
            {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "two"}]},
            {"role": "assistant", "content": [{"type": "output_text", "text": "done"}]},
        ]}),
        &history,
    );
    let messages = chat_of(&t)["messages"].clone();
    assert_eq!(
        messages,
        json!([
            {"role": "user", "content": "earlier"},
            {"role": "assistant", "content": "ok"},
            {"role": "system", "content": "rules"},
            {"role": "user", "content": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}}]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}},
                {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "one"},
            {"role": "tool", "tool_call_id": "c2", "content": "two"},
            {"role": "assistant", "content": "done"},
        ])
    );
    assert_eq!(
        t.conversation.len(),
        8,
        "history and input, kept for the next turn"
    );
}

#[test]
fn what_cannot_be_honoured_is_refused_by_name() {
    for (req, needle) in [
        (
            json!({"model": "m", "input": "x", "conversation": "conv_1"}),
            "'conversation'",
        ),
        (
            json!({"model": "m", "input": "x", "tools": [{"type": "web_search"}]}),
            "web_search",
        ),
        (
            json!({"model": "m", "input": [{"type": "computer_call_output"}]}),
            "computer_call_output",
        ),
        (json!({"model": "m", "input": 7}), "'input'"),
        (json!({"input": "x"}), "'model'"),
        (
            json!({"model": "m", "input": "x", "text": {"format": {"type": "yaml"}}}),
            "text.format",
        ),
    ] {
        let Err(e) = canonical(req.to_string().as_bytes(), &[], "resp_x".into(), 1, &|_| {
            None
        }) else {
            panic!("accepted: {req}");
        };
        assert_eq!(e.status(), 400);
        assert!(e.message.contains(needle), "{needle} in {}", e.message);
    }
}

fn chat_response(message: Value, finish: &str) -> ot::ChatResponse {
    serde_json::from_value(json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "up",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
    }))
    .unwrap()
}

#[test]
fn a_whole_answer_becomes_a_response() {
    let t = translate(
        json!({"model": "alias", "input": "Hi", "instructions": "I"}),
        &[],
    );
    let r = output::response(
        &chat_response(json!({"role": "assistant", "content": "Hello!"}), "stop"),
        &t.echo,
    );
    assert_eq!(r["id"], "resp_abc");
    assert_eq!(r["object"], "response");
    assert_eq!(r["status"], "completed");
    assert_eq!(r["model"], "alias");
    assert_eq!(r["instructions"], "I");
    assert_eq!(
        r["output"],
        json!([{"id": "msg_abc", "type": "message", "role": "assistant", "status": "completed",
                "content": [{"type": "output_text", "text": "Hello!", "annotations": [], "logprobs": []}]}])
    );
    assert_eq!(r["usage"]["input_tokens"], 7);
    assert_eq!(r["usage"]["output_tokens"], 3);
    assert_eq!(r["usage"]["total_tokens"], 10);
    let f = t.echo.finished().unwrap();
    assert_eq!(
        f.assistant,
        json!({"role": "assistant", "content": "Hello!"})
    );

    let t = translate(
        json!({"model": "m", "input": "x", "max_output_tokens": 3}),
        &[],
    );
    let calls = json!({"role": "assistant", "content": null, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]});
    let r = output::response(&chat_response(calls, "tool_calls"), &t.echo);
    assert_eq!(
        r["output"],
        json!([{"id": "fc_abc_0", "type": "function_call", "status": "completed",
                "call_id": "call_1", "name": "f", "arguments": "{\"a\":1}"}])
    );
    let r = output::response(
        &chat_response(json!({"role": "assistant", "content": "cut"}), "length"),
        &t.echo,
    );
    assert_eq!(r["status"], "incomplete");
    assert_eq!(r["incomplete_details"]["reason"], "max_output_tokens");
}

fn chunk(delta: Value, finish: Option<&str>, usage: Option<Value>) -> ot::Chunk {
    let choices = if delta.is_null() {
        json!([])
    } else {
        json!([{"index": 0, "delta": delta, "finish_reason": finish}])
    };
    let mut v = json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "up", "choices": choices});
    if let Some(u) = usage {
        v["usage"] = u;
    }
    serde_json::from_value(v).unwrap()
}

fn events(bytes: &[u8]) -> Vec<Value> {
    let text = std::str::from_utf8(bytes).unwrap();
    let mut out = Vec::new();
    for block in text.split("\n\n").filter(|b| !b.is_empty()) {
        let mut lines = block.lines();
        let name = lines.next().unwrap().strip_prefix("event: ").unwrap();
        let data: Value =
            serde_json::from_str(lines.next().unwrap().strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(data["type"], name, "the event name is the data's type");
        out.push(data);
    }
    out
}

#[test]
fn a_stream_becomes_the_responses_events() {
    let t = translate(
        json!({"model": "alias", "input": "Hi", "stream": true}),
        &[],
    );
    let mut enc = StreamFromChat::new(t.echo.clone());
    let mut out = Vec::new();
    for c in [
        chunk(json!({"role": "assistant", "content": ""}), None, None),
        chunk(json!({"content": "Hel"}), None, None),
        chunk(json!({"content": "lo"}), None, None),
        chunk(
            json!({"tool_calls": [{"index": 0, "id": "call_9", "type": "function",
                                     "function": {"name": "f", "arguments": ""}}]}),
            None,
            None,
        ),
        chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\""}}]}),
            None,
            None,
        ),
        chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}),
            None,
            None,
        ),
        chunk(json!({}), Some("tool_calls"), None),
        chunk(
            Value::Null,
            None,
            Some(json!({"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9})),
        ),
    ] {
        enc.chunk(&c, &mut out);
    }
    enc.finish(&mut out);
    let ev = events(&out);
    let kinds: Vec<&str> = ev.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    for (i, e) in ev.iter().enumerate() {
        assert_eq!(e["sequence_number"], i, "numbered in order");
    }
    assert_eq!(ev[0]["response"]["status"], "in_progress");
    assert_eq!(ev[4]["delta"], "Hel");
    assert_eq!(ev[4]["item_id"], "msg_abc");
    assert_eq!(ev[6]["text"], "Hello");
    assert_eq!(ev[9]["item"]["call_id"], "call_9");
    assert_eq!(ev[9]["output_index"], 1);
    assert_eq!(ev[12]["arguments"], "{\"a\":1}");
    let done = &ev[14]["response"];
    assert_eq!(done["status"], "completed");
    assert_eq!(done["output"][0]["content"][0]["text"], "Hello");
    assert_eq!(done["output"][1]["arguments"], "{\"a\":1}");
    assert_eq!(done["usage"]["total_tokens"], 9);
    let f = t.echo.finished().unwrap();
    assert_eq!(f.response, *done);
    assert_eq!(
        f.assistant,
        json!({"role": "assistant", "content": "Hello", "tool_calls": [
            {"id": "call_9", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]})
    );
}

#[test]
fn item_references_resolve_to_stored_items() {
    let stored = json!({"id": "fc_1_0", "type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"});
    let resolve = |id: &str| (id == "fc_1_0").then(|| stored.clone());
    let req = json!({"model": "m", "input": [
        {"role": "user", "content": "go"},
        {"type": "item_reference", "id": "fc_1_0"},
        {"type": "function_call_output", "call_id": "c1", "output": "done"}]});
    let t = canonical(
        req.to_string().as_bytes(),
        &[],
        "resp_x".into(),
        1,
        &resolve,
    )
    .unwrap();
    let messages = chat_of(&t)["messages"].clone();
    assert_eq!(messages[1]["tool_calls"][0]["id"], "c1");
    assert_eq!(messages[2]["role"], "tool");
    let missing = json!({"model": "m", "input": [{"type": "item_reference", "id": "fc_nope"}]});
    let e = canonical(
        missing.to_string().as_bytes(),
        &[],
        "resp_x".into(),
        1,
        &resolve,
    )
    .err()
    .unwrap();
    assert_eq!(e.status(), 404);
}
