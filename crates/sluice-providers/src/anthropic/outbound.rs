//! OpenAI-format requests to an Anthropic target, and its answers back.
//!
//! Pure functions over wire types; the stream translator is a small state
//! machine fed one Anthropic event at a time, emitting OpenAI chunks.

use serde_json::{Map, Value, json};

use super::types::{
    Block, BlockDelta, ImageSource, Message, MessageContent, MessagesRequest, MessagesResponse,
    Metadata, StreamEvent, Tool, ToolChoice, ToolResultContent,
};
use crate::openai::types::{
    ChatRequest, ChatResponse, Choice, Chunk, Content, Delta, FunctionCall, FunctionDelta,
    Message as OaMessage, ToolCall, ToolCallDelta, UsageOut,
};

/// The Anthropic request for an OpenAI chat request. `model` is the target's.
/// A field Anthropic cannot honour is refused by name.
pub fn request(
    req: ChatRequest,
    model: &str,
    default_max_tokens: u64,
) -> Result<MessagesRequest, sluice_core::GatewayError> {
    crate::fields::check(&req.rest, "Anthropic")?;
    let mut system = Vec::new();
    let mut messages: Vec<Message> = Vec::new();
    for m in req.messages {
        match m.role.as_str() {
            "system" | "developer" => {
                if let Some(c) = m.content {
                    system.push(c.text());
                }
            }
            "tool" => push(
                &mut messages,
                "user",
                vec![Block::ToolResult {
                    tool_use_id: m.tool_call_id.unwrap_or_default(),
                    content: m.content.map(|c| ToolResultContent::Text(c.text())),
                    is_error: None,
                }],
            ),
            "assistant" => {
                let mut blocks = Vec::new();
                if let Some(c) = m.content {
                    let text = c.text();
                    if !text.is_empty() {
                        blocks.push(Block::text(text));
                    }
                }
                for call in m.tool_calls.unwrap_or_default() {
                    let input = serde_json::from_str(&call.function.arguments)
                        .unwrap_or_else(|_| Value::Object(Map::new()));
                    blocks.push(Block::ToolUse {
                        id: call.id,
                        name: call.function.name,
                        input,
                    });
                }
                push(&mut messages, "assistant", blocks);
            }
            _ => {
                let blocks = match m.content {
                    None => vec![],
                    Some(Content::Text(t)) => vec![Block::text(t)],
                    Some(Content::Parts(parts)) => parts
                        .into_iter()
                        .filter_map(|p| match (p.kind.as_str(), p.text, p.image_url) {
                            ("text", Some(t), _) => Some(Block::text(t)),
                            ("image_url", _, Some(img)) => Some(Block::Image {
                                source: image_source(&img.url),
                            }),
                            _ => None,
                        })
                        .collect(),
                };
                push(&mut messages, "user", blocks);
            }
        }
    }
    let tool_choice = req.tool_choice.as_ref().and_then(|c| {
        let mut choice = match c {
            Value::String(s) if s == "auto" => tc("auto", None),
            Value::String(s) if s == "required" => tc("any", None),
            Value::String(s) if s == "none" => tc("none", None),
            Value::Object(o) => {
                let name = o.get("function")?.get("name")?.as_str()?;
                tc("tool", Some(name.to_owned()))
            }
            _ => return None,
        };
        if req.parallel_tool_calls == Some(false) && choice.kind != "none" {
            choice.disable_parallel_tool_use = Some(true);
        }
        Some(choice)
    });
    let mut tools: Vec<Tool> = req
        .tools
        .map(|tools| {
            tools
                .into_iter()
                .map(|t| Tool {
                    name: t.function.name,
                    description: t.function.description,
                    input_schema: t
                        .function
                        .parameters
                        .unwrap_or_else(|| json!({"type": "object"})),
                })
                .collect()
        })
        .unwrap_or_default();
    let mut tool_choice = tool_choice;
    super::structured::apply(
        req.rest.get("response_format"),
        &mut tools,
        &mut tool_choice,
        &mut system,
    )?;
    Ok(MessagesRequest {
        model: model.to_owned(),
        max_tokens: req
            .max_completion_tokens
            .or(req.max_tokens)
            .unwrap_or(default_max_tokens),
        messages,
        system: (!system.is_empty()).then(|| super::types::System::Text(system.join("\n\n"))),
        stop_sequences: req.stop.map(|s| s.into_vec()),
        // Anthropic's range is 0–1; OpenAI's is 0–2.
        temperature: req.temperature.map(|t| t.clamp(0.0, 1.0)),
        top_p: req.top_p,
        top_k: None,
        stream: req.stream,
        tools: (!tools.is_empty()).then_some(tools),
        tool_choice,
        metadata: req.user.map(|u| Metadata { user_id: Some(u) }),
        rest: Map::new(),
    })
}

fn tc(kind: &str, name: Option<String>) -> ToolChoice {
    ToolChoice {
        kind: kind.to_owned(),
        name,
        disable_parallel_tool_use: None,
    }
}

/// Appends blocks as a message of `role`, merging with the previous message
/// of the same role (Anthropic wants user and assistant to alternate).
fn push(messages: &mut Vec<Message>, role: &str, blocks: Vec<Block>) {
    if blocks.is_empty() {
        return;
    }
    if let Some(last) = messages.last_mut()
        && last.role == role
        && let MessageContent::Blocks(existing) = &mut last.content
    {
        existing.extend(blocks);
        return;
    }
    messages.push(Message {
        role: role.to_owned(),
        content: MessageContent::Blocks(blocks),
    });
}

fn image_source(url: &str) -> ImageSource {
    if let Some(rest) = url.strip_prefix("data:")
        && let Some((meta, data)) = rest.split_once(',')
        && let Some(media_type) = meta.strip_suffix(";base64")
    {
        return ImageSource::Base64 {
            media_type: media_type.to_owned(),
            data: data.to_owned(),
        };
    }
    ImageSource::Url {
        url: url.to_owned(),
    }
}

pub fn finish_reason(stop_reason: Option<&str>) -> Option<String> {
    stop_reason.map(|r| {
        match r {
            "max_tokens" => "length",
            "tool_use" => "tool_calls",
            "refusal" => "content_filter",
            _ => "stop", // end_turn, stop_sequence, pause_turn
        }
        .to_owned()
    })
}

/// The OpenAI response for an Anthropic one.
pub fn response(resp: MessagesResponse, created: u64) -> ChatResponse {
    let mut text = String::new();
    let mut calls = Vec::new();
    let mut answered = false;
    for b in resp.content {
        match b {
            Block::Text { text: t, .. } => text.push_str(&t),
            // The structured answer: the content the client asked for.
            Block::ToolUse { name, input, .. } if super::structured::is_answer(&name).is_some() => {
                let wrapped = super::structured::is_answer(&name) == Some(true);
                text = super::structured::text(&input, wrapped);
                answered = true;
            }
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
    let finish_reason = if answered && calls.is_empty() {
        Some("stop".into())
    } else {
        finish_reason(resp.stop_reason.as_deref())
    };
    ChatResponse {
        id: resp.id,
        object: "chat.completion".into(),
        created,
        model: resp.model,
        choices: vec![Choice {
            index: 0,
            message: OaMessage {
                role: "assistant".into(),
                content: (!text.is_empty() || calls.is_empty()).then_some(Content::Text(text)),
                tool_calls: (!calls.is_empty()).then_some(calls),
                ..OaMessage::default()
            },
            finish_reason,
        }],
        usage: Some(UsageOut::new(
            resp.usage.prompt_tokens(),
            resp.usage.output_tokens,
        )),
    }
}

/// Anthropic stream events → OpenAI chunks.
#[derive(Debug, Default)]
pub struct StreamToOpenAi {
    id: String,
    model: String,
    created: u64,
    /// `data: {"id":…,"choices":[{"index":0,"delta":{"content":` — the part of
    /// every text chunk that never changes, rendered once per stream.
    text_prefix: Vec<u8>,
    input_tokens: u64,
    output_tokens: u64,
    /// (Anthropic block index, OpenAI tool-call index) of tool_use blocks.
    tools: Vec<(u32, u32)>,
    finish: Option<String>,
    /// The structured answer's block: its index, whether it is wrapped,
    /// and (wrapped) its JSON so far.
    answer: Option<(u32, bool, String)>,
}

impl StreamToOpenAi {
    pub fn new(created: u64) -> Self {
        Self {
            created,
            ..Self::default()
        }
    }

    /// (prompt, completion) tokens seen so far.
    pub fn usage(&self) -> (u64, u64) {
        (self.input_tokens, self.output_tokens)
    }

    fn chunk(&self, delta: Delta, finish: Option<String>) -> Chunk {
        Chunk::single(&self.id, self.created, &self.model, delta, finish)
    }

    /// A text delta's text, borrowed from the event when it has no escapes;
    /// `None` when `data` is anything else (the caller takes the general
    /// path) or the stream has not started.
    pub fn text_delta<'a>(&self, data: &'a str) -> Option<std::borrow::Cow<'a, str>> {
        #[derive(serde::Deserialize)]
        struct Ev<'a> {
            #[serde(rename = "type")]
            kind: &'a str,
            #[serde(borrow)]
            delta: D<'a>,
        }
        #[derive(serde::Deserialize)]
        struct D<'a> {
            #[serde(rename = "type")]
            kind: &'a str,
            #[serde(borrow)]
            text: Option<std::borrow::Cow<'a, str>>,
        }
        // Key order is not fixed by the format: look for the delta kind.
        if self.text_prefix.is_empty() || !data.contains("\"text_delta\"") {
            return None;
        }
        let ev = serde_json::from_str::<Ev<'_>>(data).ok()?;
        if ev.kind != "content_block_delta" || ev.delta.kind != "text_delta" {
            return None;
        }
        ev.delta.text
    }

    /// The hot path: a text delta written straight out as an OpenAI SSE
    /// event, without building the event or the chunk as values. Returns
    /// false when `data` is anything else (the caller takes the general path).
    pub fn text_delta_fast(&mut self, data: &str, out: &mut Vec<u8>) -> bool {
        let Some(text) = self.text_delta(data) else {
            return false;
        };
        out.extend_from_slice(&self.text_prefix);
        serde_json::to_writer(&mut *out, &text).expect("writing to a Vec cannot fail");
        out.extend_from_slice(b"},\"finish_reason\":null}]}\n\n");
        true
    }

    /// Translates one event. `Err` carries an upstream error message.
    pub fn event(&mut self, ev: StreamEvent, out: &mut Vec<Chunk>) -> Result<(), String> {
        match ev {
            StreamEvent::MessageStart { message } => {
                self.id = message.id;
                self.model = message.model;
                self.input_tokens = message.usage.prompt_tokens();
                self.output_tokens = message.usage.output_tokens;
                let probe = self.chunk(
                    Delta {
                        content: Some(String::new()),
                        ..Delta::default()
                    },
                    None,
                );
                let mut rendered = b"data: ".to_vec();
                serde_json::to_writer(&mut rendered, &probe).expect("writing to a Vec cannot fail");
                // Cut at the content value: `…"delta":{"content":` + `""}…`.
                let cut = memchr::memmem::rfind(&rendered, b"\"content\":\"\"")
                    .expect("the probe chunk has an empty content")
                    + b"\"content\":".len();
                rendered.truncate(cut);
                self.text_prefix = rendered;
                out.push(self.chunk(Delta::role_start(), None));
            }
            StreamEvent::ContentBlockStart {
                index,
                content_block: Block::ToolUse { name, .. },
            } if super::structured::is_answer(&name).is_some() => {
                let wrapped = super::structured::is_answer(&name) == Some(true);
                self.answer = Some((index, wrapped, String::new()));
            }
            StreamEvent::ContentBlockStart {
                index,
                content_block: Block::ToolUse { id, name, .. },
            } => {
                let tool_index = self.tools.len() as u32;
                self.tools.push((index, tool_index));
                out.push(self.chunk(
                    Delta {
                        tool_calls: Some(vec![ToolCallDelta {
                            index: tool_index,
                            id: Some(id),
                            kind: Some("function".into()),
                            function: Some(FunctionDelta {
                                name: Some(name),
                                arguments: Some(String::new()),
                            }),
                        }]),
                        ..Delta::default()
                    },
                    None,
                ));
            }
            StreamEvent::ContentBlockStart {
                content_block: Block::Text { text, .. },
                ..
            } if !text.is_empty() => out.push(self.chunk(
                Delta {
                    content: Some(text),
                    ..Delta::default()
                },
                None,
            )),
            StreamEvent::ContentBlockDelta { index, delta } => match delta {
                BlockDelta::TextDelta { text } => out.push(self.chunk(
                    Delta {
                        content: Some(text),
                        ..Delta::default()
                    },
                    None,
                )),
                BlockDelta::InputJsonDelta { partial_json }
                    if self.answer.as_ref().is_some_and(|(i, _, _)| *i == index) =>
                {
                    match &mut self.answer {
                        // A wrapped value is unwrapped once it is whole.
                        Some((_, true, buf)) => buf.push_str(&partial_json),
                        _ => out.push(self.chunk(
                            Delta {
                                content: Some(partial_json),
                                ..Delta::default()
                            },
                            None,
                        )),
                    }
                }
                BlockDelta::InputJsonDelta { partial_json } => {
                    if let Some(&(_, tool_index)) = self.tools.iter().find(|(b, _)| *b == index) {
                        out.push(self.chunk(
                            Delta {
                                tool_calls: Some(vec![ToolCallDelta {
                                    index: tool_index,
                                    function: Some(FunctionDelta {
                                        name: None,
                                        arguments: Some(partial_json),
                                    }),
                                    ..ToolCallDelta::default()
                                }]),
                                ..Delta::default()
                            },
                            None,
                        ));
                    }
                }
                _ => {} // thinking and signatures have no OpenAI chat equivalent
            },
            StreamEvent::MessageDelta { delta, usage } => {
                if let Some(u) = usage {
                    self.output_tokens = u.output_tokens;
                    if u.prompt_tokens() > 0 {
                        self.input_tokens = u.prompt_tokens();
                    }
                }
                self.finish = finish_reason(delta.stop_reason.as_deref());
            }
            StreamEvent::ContentBlockStop { index }
                if self
                    .answer
                    .as_ref()
                    .is_some_and(|(i, w, _)| *i == index && *w) =>
            {
                if let Some((_, _, buf)) = &self.answer {
                    let input: Value = serde_json::from_str(buf).unwrap_or(Value::Null);
                    let text = super::structured::text(&input, true);
                    out.push(self.chunk(
                        Delta {
                            content: Some(text),
                            ..Delta::default()
                        },
                        None,
                    ));
                }
            }
            StreamEvent::MessageStop => {
                let mut finish = self.finish.take().or_else(|| Some("stop".into()));
                if self.answer.is_some() && self.tools.is_empty() {
                    finish = Some("stop".into());
                }
                out.push(self.chunk(Delta::default(), finish));
                let mut usage = self.chunk(Delta::default(), None);
                usage.choices.clear();
                usage.usage = Some(UsageOut::new(self.input_tokens, self.output_tokens));
                out.push(usage);
            }
            StreamEvent::Error { error } => {
                return Err(format!("{}: {}", error.kind, error.message));
            }
            StreamEvent::ContentBlockStart { .. }
            | StreamEvent::ContentBlockStop { .. }
            | StreamEvent::Ping
            | StreamEvent::Unknown => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started() -> StreamToOpenAi {
        let mut t = StreamToOpenAi::new(7);
        let start: StreamEvent = serde_json::from_str(
            r#"{"type":"message_start","message":{"id":"m1","type":"message","role":"assistant","content":[],"model":"c","stop_reason":null,"usage":{"input_tokens":1,"output_tokens":0}}}"#,
        )
        .unwrap();
        t.event(start, &mut Vec::new()).unwrap();
        t
    }

    #[test]
    fn fast_text_path_matches_the_general_path_whatever_the_key_order() {
        for data in [
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hé \"x\""}}"#,
            r#"{"delta":{"text":"hé \"x\"","type":"text_delta"},"index":0,"type":"content_block_delta"}"#,
        ] {
            let mut t = started();
            let mut fast = Vec::new();
            assert!(
                t.text_delta_fast(data, &mut fast),
                "fast path refused {data}"
            );
            let mut chunks = Vec::new();
            t.event(serde_json::from_str(data).unwrap(), &mut chunks)
                .unwrap();
            let mut general = Vec::new();
            crate::sse::push_data(&mut general, &chunks[0]);
            assert_eq!(
                String::from_utf8(fast).unwrap(),
                String::from_utf8(general).unwrap()
            );
        }
    }

    #[test]
    fn fast_path_leaves_other_events_alone() {
        let mut t = started();
        let mut out = Vec::new();
        assert!(!t.text_delta_fast(
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{}"}}"#,
            &mut out
        ));
        assert!(!t.text_delta_fast(r#"{"type":"ping"}"#, &mut out));
        assert!(out.is_empty());
    }
}
