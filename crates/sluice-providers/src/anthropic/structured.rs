//! Structured output (`response_format`) for Anthropic targets: a JSON
//! schema becomes a forced tool carrying it, and the tool's input comes back
//! as the message content the client expects; `json_object` becomes an
//! instruction. A schema that is not an object is wrapped in one
//! (`{"value": …}`) and unwrapped on the way back.

use serde_json::{Value, json};
use sluice_core::{ErrorKind, GatewayError};

use super::types::{Tool, ToolChoice};

/// The tool that carries an object schema.
pub const TOOL: &str = "sluice_structured_output";
/// The tool that carries any other schema, wrapped as `{"value": …}`.
pub const WRAPPED: &str = "sluice_structured_value";

const JSON_ONLY: &str = "Answer with a single JSON object and nothing else.";

/// Adds what `format` asks for to the Anthropic request's parts.
pub fn apply(
    format: Option<&Value>,
    tools: &mut Vec<Tool>,
    choice: &mut Option<ToolChoice>,
    system: &mut Vec<String>,
) -> Result<(), GatewayError> {
    let Some(f) = format.filter(|f| !f.is_null()) else {
        return Ok(());
    };
    match f.get("type").and_then(Value::as_str) {
        Some("text") => Ok(()),
        Some("json_object") => {
            system.push(JSON_ONLY.to_owned());
            Ok(())
        }
        Some("json_schema") => {
            let spec = f.get("json_schema").unwrap_or(&Value::Null);
            let schema = spec
                .get("schema")
                .cloned()
                .unwrap_or_else(|| json!({"type": "object"}));
            let object = schema.get("type").and_then(Value::as_str) == Some("object");
            let (name, input_schema) = if object {
                (TOOL, schema)
            } else {
                (
                    WRAPPED,
                    json!({"type": "object", "properties": {"value": schema}, "required": ["value"]}),
                )
            };
            let what = spec
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or("the answer");
            let forced = tools.is_empty();
            tools.push(Tool {
                name: name.to_owned(),
                description: Some(format!(
                    "Give the final answer ({what}) as this tool's input, matching its schema."
                )),
                input_schema,
            });
            // With tools of its own the model may still call them first.
            *choice = Some(ToolChoice {
                kind: if forced { "tool" } else { "any" }.to_owned(),
                name: forced.then(|| name.to_owned()),
                disable_parallel_tool_use: None,
            });
            Ok(())
        }
        _ => Err(GatewayError::new(
            ErrorKind::InvalidRequest,
            "response_format.type must be text, json_object or json_schema",
        )
        .with_param("response_format")),
    }
}

/// Whether a tool_use block is the structured answer (and wrapped).
pub fn is_answer(name: &str) -> Option<bool> {
    match name {
        TOOL => Some(false),
        WRAPPED => Some(true),
        _ => None,
    }
}

/// The answer's text from the tool's input.
pub fn text(input: &Value, wrapped: bool) -> String {
    if wrapped {
        input.get("value").unwrap_or(&Value::Null).to_string()
    } else {
        input.to_string()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use crate::anthropic::outbound;
    use crate::anthropic::types::{MessagesResponse, StreamEvent};
    use crate::openai::types::{ChatRequest, Chunk};

    fn chat(format: Value) -> ChatRequest {
        serde_json::from_value(
            json!({"model": "m", "messages": [{"role": "user", "content": "Where?"}],
                                      "response_format": format}),
        )
        .unwrap()
    }

    fn anthropic_json(req: ChatRequest) -> Value {
        serde_json::to_value(outbound::request(req, "claude-x", 100).unwrap()).unwrap()
    }

    #[test]
    fn a_schema_becomes_a_forced_tool_and_json_object_an_instruction() {
        let schema = json!({"type": "object", "properties": {"city": {"type": "string"}}});
        let v = anthropic_json(chat(
            json!({"type": "json_schema", "json_schema": {"name": "place", "schema": schema}}),
        ));
        assert_eq!(v["tools"][0]["name"], super::TOOL);
        assert_eq!(v["tools"][0]["input_schema"], schema);
        assert_eq!(
            v["tool_choice"],
            json!({"type": "tool", "name": super::TOOL})
        );

        let v = anthropic_json(chat(
            json!({"type": "json_schema", "json_schema": {"name": "l", "schema": {"type": "array"}}}),
        ));
        assert_eq!(v["tools"][0]["name"], super::WRAPPED);
        assert_eq!(
            v["tools"][0]["input_schema"]["properties"]["value"],
            json!({"type": "array"})
        );

        let v = anthropic_json(chat(json!({"type": "json_object"})));
        assert!(v["system"].as_str().unwrap().contains("JSON object"), "{v}");
        assert!(v.get("tools").is_none_or(Value::is_null));

        let e = outbound::request(chat(json!({"type": "yaml"})), "c", 1).unwrap_err();
        assert_eq!(e.param, Some("response_format"));
    }

    #[test]
    fn the_answer_comes_back_as_content_whole_and_streamed() {
        let resp: MessagesResponse = serde_json::from_value(json!({
            "id": "m1", "type": "message", "role": "assistant", "model": "c",
            "content": [{"type": "tool_use", "id": "t1", "name": super::TOOL, "input": {"city": "Paris"}}],
            "stop_reason": "tool_use", "usage": {"input_tokens": 3, "output_tokens": 5}}))
        .unwrap();
        let r = outbound::response(resp, 1);
        let m = &r.choices[0].message;
        assert_eq!(
            serde_json::from_str::<Value>(&m.content.as_ref().unwrap().text()).unwrap(),
            json!({"city": "Paris"})
        );
        assert!(m.tool_calls.is_none());
        assert_eq!(r.choices[0].finish_reason.as_deref(), Some("stop"));

        for (name, deltas, want) in [
            (
                super::TOOL,
                vec!["{\"city\":", " \"Paris\"}"],
                json!({"city": "Paris"}),
            ),
            (
                super::WRAPPED,
                vec!["{\"value\": [1,", " 2]}"],
                json!([1, 2]),
            ),
        ] {
            let mut t = outbound::StreamToOpenAi::new(1);
            let mut chunks: Vec<Chunk> = Vec::new();
            let mut events = vec![
                json!({"type": "message_start", "message": {"id": "m1", "type": "message", "role": "assistant",
                       "content": [], "model": "c", "stop_reason": null, "usage": {"input_tokens": 3, "output_tokens": 0}}}),
                json!({"type": "content_block_start", "index": 0,
                       "content_block": {"type": "tool_use", "id": "t1", "name": name, "input": {}}}),
            ];
            for d in &deltas {
                events.push(json!({"type": "content_block_delta", "index": 0,
                                   "delta": {"type": "input_json_delta", "partial_json": d}}));
            }
            events.push(json!({"type": "content_block_stop", "index": 0}));
            events.push(json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 5}}));
            events.push(json!({"type": "message_stop"}));
            for e in events {
                let ev: StreamEvent = serde_json::from_value(e).unwrap();
                t.event(ev, &mut chunks).unwrap();
            }
            let text: String = chunks
                .iter()
                .filter_map(|c| c.choices.first()?.delta.content.clone())
                .collect();
            assert_eq!(
                serde_json::from_str::<Value>(&text).unwrap(),
                want,
                "{name}"
            );
            assert!(chunks.iter().all(|c| {
                c.choices
                    .first()
                    .is_none_or(|ch| ch.delta.tool_calls.is_none())
            }));
            let finish = chunks
                .iter()
                .find_map(|c| c.choices.first()?.finish_reason.clone());
            assert_eq!(finish.as_deref(), Some("stop"));
        }
    }
}
