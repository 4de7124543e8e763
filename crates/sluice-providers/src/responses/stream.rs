//! Chat completion chunks as the Responses stream events: `response.created`,
//! `response.in_progress`, per item `response.output_item.added` (a message
//! with its `content_part` and `output_text` deltas, or a function call with
//! its argument deltas) and `…done`, then `response.completed` (or
//! `response.incomplete`) with the whole Response. Every event carries its
//! `sequence_number`; there is no `[DONE]`.

use std::sync::Arc;

use serde::Serialize;
use serde_json::{Value, json};

use super::output::{
    assistant_message, call_item, call_item_id, message_id, message_item, object, output_text,
    status_of,
};
use super::{Echo, Finished};
use crate::openai::types as ot;
use crate::sse;

struct Call {
    output_index: usize,
    id: String,
    call_id: String,
    name: String,
    args: String,
}

/// The Responses encoder over canonical chat chunks.
pub struct StreamFromChat {
    echo: Arc<Echo>,
    /// The message item's id, made once (every text delta carries it).
    msg_id: String,
    seq: u64,
    started: bool,
    next_output: usize,
    /// The open message item: its output index and text so far.
    text: Option<(usize, String)>,
    /// Function calls by their chunk index.
    calls: Vec<(u32, Call)>,
    /// Items finished, in output order.
    done: Vec<(usize, Value)>,
    finish: Option<String>,
    usage: Option<(u64, u64)>,
    /// The text of every message item, for the assistant's stored turn.
    all_text: String,
}

#[derive(Serialize)]
struct TextDelta<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    item_id: &'a str,
    output_index: usize,
    content_index: u32,
    delta: &'a str,
    logprobs: [(); 0],
    sequence_number: u64,
}

#[derive(Serialize)]
struct ArgsDelta<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    item_id: &'a str,
    output_index: usize,
    delta: &'a str,
    sequence_number: u64,
}

impl StreamFromChat {
    pub fn new(echo: Arc<Echo>) -> Self {
        Self {
            msg_id: message_id(&echo.id),
            echo,
            seq: 0,
            started: false,
            next_output: 0,
            text: None,
            calls: Vec::new(),
            done: Vec::new(),
            finish: None,
            usage: None,
            all_text: String::new(),
        }
    }

    fn event(&mut self, out: &mut Vec<u8>, kind: &str, mut v: Value) {
        v["type"] = json!(kind);
        v["sequence_number"] = json!(self.seq);
        self.seq += 1;
        sse::push_event(out, kind, &v);
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        let r = object(&self.echo, "in_progress", Vec::new(), None);
        self.event(out, "response.created", json!({"response": r}));
        let r = object(&self.echo, "in_progress", Vec::new(), None);
        self.event(out, "response.in_progress", json!({"response": r}));
    }

    pub fn chunk(&mut self, c: &ot::Chunk, out: &mut Vec<u8>) {
        self.start(out);
        if let Some(u) = &c.usage {
            self.usage = Some((u.prompt_tokens, u.completion_tokens));
        }
        for choice in c.choices.iter().filter(|ch| ch.index == 0) {
            if let Some(t) = choice.delta.content.as_deref().filter(|t| !t.is_empty()) {
                self.text_delta(t, out);
            }
            for call in choice.delta.tool_calls.iter().flatten() {
                self.call_delta(call, out);
            }
            if let Some(f) = &choice.finish_reason {
                self.finish = Some(f.clone());
            }
        }
    }

    fn text_delta(&mut self, t: &str, out: &mut Vec<u8>) {
        let index = match &self.text {
            Some((i, _)) => *i,
            None => {
                let item_id = self.msg_id.clone();
                let i = self.next_output;
                self.next_output += 1;
                self.text = Some((i, String::new()));
                let item = message_item(&item_id, "", "in_progress");
                self.event(
                    out,
                    "response.output_item.added",
                    json!({"output_index": i, "item": item}),
                );
                self.event(
                    out,
                    "response.content_part.added",
                    json!({"item_id": item_id, "output_index": i, "content_index": 0, "part": output_text("")}),
                );
                i
            }
        };
        if let Some((_, buf)) = &mut self.text {
            buf.push_str(t);
        }
        let ev = TextDelta {
            kind: "response.output_text.delta",
            item_id: &self.msg_id,
            output_index: index,
            content_index: 0,
            delta: t,
            logprobs: [],
            sequence_number: self.seq,
        };
        self.seq += 1;
        sse::push_event(out, ev.kind, &ev);
    }

    fn call_delta(&mut self, d: &ot::ToolCallDelta, out: &mut Vec<u8>) {
        if !self.calls.iter().any(|(i, _)| *i == d.index) {
            self.close_text(out);
            let output_index = self.next_output;
            self.next_output += 1;
            let call = Call {
                output_index,
                id: call_item_id(&self.echo.id, self.calls.len()),
                call_id: d
                    .id
                    .clone()
                    .unwrap_or_else(|| format!("call_{}", self.calls.len())),
                name: d
                    .function
                    .as_ref()
                    .and_then(|f| f.name.clone())
                    .unwrap_or_default(),
                args: String::new(),
            };
            let item = call_item(&call.id, &call.call_id, &call.name, "", "in_progress");
            self.calls.push((d.index, call));
            self.event(
                out,
                "response.output_item.added",
                json!({"output_index": output_index, "item": item}),
            );
        }
        let Some(delta) = d.function.as_ref().and_then(|f| f.arguments.as_deref()) else {
            return;
        };
        if delta.is_empty() {
            return;
        }
        let seq = self.seq;
        let Some((_, call)) = self.calls.iter_mut().find(|(i, _)| *i == d.index) else {
            return;
        };
        call.args.push_str(delta);
        let ev = ArgsDelta {
            kind: "response.function_call_arguments.delta",
            item_id: &call.id,
            output_index: call.output_index,
            delta,
            sequence_number: seq,
        };
        sse::push_event(out, ev.kind, &ev);
        self.seq += 1;
    }

    /// Ends the open message item, if any.
    fn close_text(&mut self, out: &mut Vec<u8>) {
        let Some((i, text)) = self.text.take() else {
            return;
        };
        let item_id = self.msg_id.clone();
        self.event(
            out,
            "response.output_text.done",
            json!({"item_id": item_id, "output_index": i, "content_index": 0, "text": text, "logprobs": []}),
        );
        self.event(
            out,
            "response.content_part.done",
            json!({"item_id": item_id, "output_index": i, "content_index": 0, "part": output_text(&text)}),
        );
        let item = message_item(&item_id, &text, "completed");
        self.event(
            out,
            "response.output_item.done",
            json!({"output_index": i, "item": item.clone()}),
        );
        self.all_text.push_str(&text);
        self.done.push((i, item));
    }

    /// The closing events, after the upstream ended properly.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        self.start(out);
        if self.calls.is_empty() && self.text.is_none() && self.done.is_empty() {
            // No output at all: an empty message, as a whole answer has.
            self.text_delta("", out);
        }
        self.close_text(out);
        let calls = std::mem::take(&mut self.calls);
        let mut stored = Vec::with_capacity(calls.len());
        for (_, c) in calls {
            self.event(
                out,
                "response.function_call_arguments.done",
                json!({"item_id": c.id, "output_index": c.output_index, "name": c.name, "arguments": c.args}),
            );
            let item = call_item(&c.id, &c.call_id, &c.name, &c.args, "completed");
            self.event(
                out,
                "response.output_item.done",
                json!({"output_index": c.output_index, "item": item.clone()}),
            );
            self.done.push((c.output_index, item));
            stored.push((c.call_id, c.name, c.args));
        }
        self.done.sort_by_key(|(i, _)| *i);
        let output = self.done.iter().map(|(_, v)| v.clone()).collect();
        let status = status_of(self.finish.as_deref());
        let r = object(&self.echo, status, output, self.usage);
        self.echo.finish(Finished {
            response: r.clone(),
            assistant: assistant_message(&self.all_text, &stored),
        });
        let kind = if status == "incomplete" {
            "response.incomplete"
        } else {
            "response.completed"
        };
        self.event(out, kind, json!({"response": r}));
    }
}

/// A stream that broke after it started: the Responses `error` event.
pub fn error_event(e: &sluice_core::GatewayError) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    let v = json!({
        "type": "error",
        "code": e.kind.code(),
        "message": e.message,
        "param": e.param,
        "sequence_number": 0,
    });
    sse::push_event(&mut out, "error", &v);
    out
}
