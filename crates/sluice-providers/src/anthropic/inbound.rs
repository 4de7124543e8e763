//! Anthropic-format clients (`POST /v1/messages`) served by any target: their
//! request to the OpenAI shape, and OpenAI-shaped answers back to theirs.

use serde_json::{Map, Value, json};

use super::types::{
    Block, ErrorBody, ErrorDetail, ImageSource, MessagesRequest, MessagesResponse, StreamEvent,
    Usage,
};
use crate::openai::types::{
    ChatRequest, ChatResponse, Chunk, Content, FunctionCall, FunctionDef, ImageUrl,
    Message as OaMessage, Part, Stop, StreamOptions, Tool as OaTool, ToolCall,
};
use crate::sse::push_event;

/// The OpenAI chat request for an Anthropic Messages request.
/// An Anthropic client's request body in the OpenAI shape (the canonical
/// one every target adapter starts from).
pub fn canonical(body: &[u8]) -> Result<bytes::Bytes, sluice_core::GatewayError> {
    let req: MessagesRequest = serde_json::from_slice(body).map_err(|e| {
        sluice_core::GatewayError::new(
            sluice_core::ErrorKind::InvalidRequest,
            format!("invalid request: {e}"),
        )
    })?;
    Ok(bytes::Bytes::from(
        serde_json::to_vec(&request(req)).expect("serializing to a Vec cannot fail"),
    ))
}

pub fn request(req: MessagesRequest) -> ChatRequest {
    let mut messages = Vec::new();
    if let Some(system) = &req.system {
        messages.push(OaMessage {
            role: "system".into(),
            content: Some(Content::Text(system.text())),
            ..OaMessage::default()
        });
    }
    for m in req.messages {
        let blocks = m.content.into_blocks();
        if m.role == "assistant" {
            let mut text = String::new();
            let mut calls = Vec::new();
            for b in blocks {
                match b {
                    Block::Text { text: t, .. } => text.push_str(&t),
                    Block::ToolUse { id, name, input } => calls.push(ToolCall {
                        id,
                        kind: "function".into(),
                        function: FunctionCall {
                            name,
                            arguments: input.to_string(),
                        },
                    }),
                    _ => {}
                }
            }
            messages.push(OaMessage {
                role: "assistant".into(),
                content: (!text.is_empty()).then_some(Content::Text(text)),
                tool_calls: (!calls.is_empty()).then_some(calls),
                ..OaMessage::default()
            });
            continue;
        }
        // A user turn: tool results become `tool` messages (first, as OpenAI
        // wants them right after the assistant's calls), the rest one message.
        let mut parts = Vec::new();
        for b in blocks {
            match b {
                Block::ToolResult {
                    tool_use_id,
                    content,
                    ..
                } => messages.push(OaMessage {
                    role: "tool".into(),
                    tool_call_id: Some(tool_use_id),
                    content: Some(Content::Text(content.map(|c| c.text()).unwrap_or_default())),
                    ..OaMessage::default()
                }),
                Block::Text { text, .. } => parts.push(Part {
                    kind: "text".into(),
                    text: Some(text),
                    ..Part::default()
                }),
                Block::Image { source } => parts.push(Part {
                    kind: "image_url".into(),
                    image_url: Some(ImageUrl {
                        url: match source {
                            ImageSource::Base64 { media_type, data } => {
                                format!("data:{media_type};base64,{data}")
                            }
                            ImageSource::Url { url } => url,
                        },
                        detail: None,
                    }),
                    ..Part::default()
                }),
                _ => {}
            }
        }
        if !parts.is_empty() {
            let content = if parts.iter().all(|p| p.kind == "text") {
                Content::Text(parts.into_iter().filter_map(|p| p.text).collect())
            } else {
                Content::Parts(parts)
            };
            messages.push(OaMessage {
                role: "user".into(),
                content: Some(content),
                ..OaMessage::default()
            });
        }
    }
    let (tool_choice, parallel) = match req.tool_choice {
        None => (None, None),
        Some(c) => {
            let choice = match c.kind.as_str() {
                "any" => json!("required"),
                "none" => json!("none"),
                "tool" => {
                    json!({"type": "function", "function": {"name": c.name.unwrap_or_default()}})
                }
                _ => json!("auto"),
            };
            (Some(choice), c.disable_parallel_tool_use.map(|d| !d))
        }
    };
    let stream = req.stream.unwrap_or(false);
    ChatRequest {
        model: req.model,
        messages,
        max_tokens: Some(req.max_tokens),
        temperature: req.temperature,
        top_p: req.top_p,
        stop: req.stop_sequences.map(Stop::Many),
        stream: stream.then_some(true),
        // Usage is needed for Anthropic's message_delta; ask for it.
        stream_options: stream.then_some(StreamOptions {
            include_usage: Some(true),
        }),
        tools: req.tools.map(|tools| {
            tools
                .into_iter()
                .map(|t| OaTool {
                    kind: "function".into(),
                    function: FunctionDef {
                        name: t.name,
                        description: t.description,
                        parameters: Some(t.input_schema),
                    },
                })
                .collect()
        }),
        tool_choice,
        parallel_tool_calls: parallel,
        user: req.metadata.and_then(|m| m.user_id),
        ..ChatRequest::default()
    }
}

pub fn stop_reason(finish_reason: Option<&str>) -> Option<String> {
    finish_reason.map(|r| {
        match r {
            "length" => "max_tokens",
            "tool_calls" | "function_call" => "tool_use",
            "content_filter" => "refusal",
            _ => "end_turn",
        }
        .to_owned()
    })
}

/// The Anthropic response for an OpenAI one; `model` is what the client asked for.
pub fn response(resp: ChatResponse, model: &str) -> MessagesResponse {
    let choice = resp.choices.into_iter().next();
    let mut content = Vec::new();
    let mut finish = None;
    if let Some(c) = choice {
        finish = c.finish_reason;
        if let Some(text) = c.message.content.map(|c| c.text())
            && !text.is_empty()
        {
            content.push(Block::text(text));
        }
        for call in c.message.tool_calls.unwrap_or_default() {
            content.push(Block::ToolUse {
                id: call.id,
                name: call.function.name,
                input: serde_json::from_str(&call.function.arguments)
                    .unwrap_or_else(|_| Value::Object(Map::new())),
            });
        }
    }
    let usage = resp.usage.unwrap_or_default();
    MessagesResponse {
        id: message_id(&resp.id),
        kind: "message".into(),
        role: "assistant".into(),
        model: model.to_owned(),
        content,
        stop_reason: stop_reason(finish.as_deref()).or_else(|| Some("end_turn".into())),
        stop_sequence: None,
        usage: Usage {
            input_tokens: usage.prompt_tokens,
            output_tokens: usage.completion_tokens,
            ..Usage::default()
        },
    }
}

fn message_id(id: &str) -> String {
    if id.starts_with("msg_") {
        id.to_owned()
    } else {
        format!("msg_{id}")
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Open {
    None,
    Text(u32),
    Tool { block: u32, openai_index: u32 },
}

/// OpenAI chunks → Anthropic stream events.
#[derive(Debug)]
pub struct StreamFromOpenAi {
    model: String,
    started: bool,
    open: Open,
    next_block: u32,
    stop_reason: Option<String>,
    input_tokens: u64,
    output_tokens: u64,
}

impl StreamFromOpenAi {
    pub fn new(model: &str) -> Self {
        Self {
            model: model.to_owned(),
            started: false,
            open: Open::None,
            next_block: 0,
            stop_reason: None,
            input_tokens: 0,
            output_tokens: 0,
        }
    }

    fn start(&mut self, id: &str, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        let message = MessagesResponse {
            id: message_id(id),
            kind: "message".into(),
            role: "assistant".into(),
            model: self.model.clone(),
            content: vec![],
            stop_reason: None,
            stop_sequence: None,
            usage: Usage::default(),
        };
        push_event(out, "message_start", &StreamEvent::MessageStart { message });
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        let index = match self.open {
            Open::None => return,
            Open::Text(b) | Open::Tool { block: b, .. } => b,
        };
        push_event(
            out,
            "content_block_stop",
            &StreamEvent::ContentBlockStop { index },
        );
        self.open = Open::None;
    }

    fn open_block(&mut self, block: Block, open: impl FnOnce(u32) -> Open, out: &mut Vec<u8>) {
        self.close(out);
        let index = self.next_block;
        self.next_block += 1;
        push_event(
            out,
            "content_block_start",
            &StreamEvent::ContentBlockStart {
                index,
                content_block: block,
            },
        );
        self.open = open(index);
    }

    pub fn chunk(&mut self, c: &Chunk, out: &mut Vec<u8>) {
        self.start(&c.id, out);
        if let Some(u) = c.usage {
            self.input_tokens = u.prompt_tokens;
            self.output_tokens = u.completion_tokens;
        }
        let Some(choice) = c.choices.first() else {
            return;
        };
        if let Some(text) = &choice.delta.content
            && !text.is_empty()
        {
            if !matches!(self.open, Open::Text(_)) {
                self.open_block(Block::text(""), Open::Text, out);
            }
            let Open::Text(index) = self.open else {
                unreachable!("a text block was just opened")
            };
            push_event(
                out,
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": index,
                        "delta": {"type": "text_delta", "text": text}}),
            );
        }
        for call in choice.delta.tool_calls.iter().flatten() {
            let same =
                matches!(self.open, Open::Tool { openai_index, .. } if openai_index == call.index);
            if !same {
                let f = call.function.as_ref();
                let block = Block::ToolUse {
                    id: call.id.clone().unwrap_or_default(),
                    name: f.and_then(|f| f.name.clone()).unwrap_or_default(),
                    input: json!({}),
                };
                let openai_index = call.index;
                self.open_block(
                    block,
                    |block| Open::Tool {
                        block,
                        openai_index,
                    },
                    out,
                );
            }
            if let (Open::Tool { block, .. }, Some(args)) = (
                &self.open,
                call.function.as_ref().and_then(|f| f.arguments.as_ref()),
            ) && !args.is_empty()
            {
                push_event(
                    out,
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": block,
                            "delta": {"type": "input_json_delta", "partial_json": args}}),
                );
            }
        }
        if let Some(f) = &choice.finish_reason {
            self.stop_reason = stop_reason(Some(f));
        }
    }

    /// After the upstream's `[DONE]` (or end of stream).
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        self.start("sluice", out);
        self.close(out);
        push_event(
            out,
            "message_delta",
            &json!({"type": "message_delta",
                    "delta": {"stop_reason": self.stop_reason.clone().unwrap_or_else(|| "end_turn".into()), "stop_sequence": null},
                    "usage": {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens}}),
        );
        push_event(out, "message_stop", &json!({"type": "message_stop"}));
    }

    pub fn usage(&self) -> (u64, u64) {
        (self.input_tokens, self.output_tokens)
    }
}

/// The Anthropic error `type` for an HTTP status.
pub fn error_type(status: u16) -> &'static str {
    match status {
        400 | 405 | 415 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}

pub fn error_body(status: u16, message: impl Into<String>) -> ErrorBody {
    ErrorBody {
        kind: "error".into(),
        error: ErrorDetail {
            kind: error_type(status).into(),
            message: message.into(),
        },
    }
}
