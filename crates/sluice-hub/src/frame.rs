//! The agent protocol's frames, parsed: plain functions over text (no
//! socket, no hub), so they can be fuzzed and tested on their own. An
//! error is the close code and the reason the connection is closed with.

use serde::Deserialize;
use serde_json::Value;

/// Close codes (RFC 6455 and ours, 4000–4999), documented in
/// `docs/agent-protocol.md`.
pub mod code {
    pub const GOING_AWAY: u16 = 1001;
    pub const UNSUPPORTED: u16 = 1003;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const REPLACED: u16 = 4000;
    pub const HELLO_TIMEOUT: u16 = 4001;
    pub const HEARTBEAT_TIMEOUT: u16 = 4002;
}

/// The first frame: who the agent is.
#[derive(Debug, Deserialize)]
pub struct Hello {
    pub agent_id: String,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Tools the agent serves (federated into `/mcp` as
    /// `agent.{agent_id}__{name}`), normalized to MCP's shape.
    #[serde(default)]
    pub tools: Vec<Value>,
}

/// Tools one agent may declare at most.
pub const MAX_TOOLS: usize = 64;

/// A tool name: 1-64 of letters, digits, `_`, `-` and `.`, without `__`.
pub fn valid_tool_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
        && !s.contains("__")
}

/// A declared tool as MCP lists it: `name`, `description`, `inputSchema`
/// (an object schema; `input_schema` and OpenAI's `parameters` are accepted
/// too), `outputSchema`,
/// `title` and `annotations` when given.
fn tool(v: &Value) -> Result<Value, String> {
    let name = v
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| valid_tool_name(n))
        .ok_or("a tool needs a name of 1-64 letters, digits, '_', '-' or '.' (no '__')")?;
    let schema = v
        .get("inputSchema")
        .or_else(|| v.get("input_schema"))
        .or_else(|| v.get("parameters"))
        .cloned()
        .unwrap_or_else(|| serde_json::json!({"type": "object"}));
    if schema.get("type").and_then(Value::as_str) != Some("object") {
        return Err(format!(
            "tool '{name}': its input schema must be {{\"type\": \"object\", …}}"
        ));
    }
    let mut out = serde_json::json!({"name": name, "inputSchema": schema});
    for k in ["description", "title", "outputSchema", "annotations"] {
        if let Some(x) = v.get(k) {
            out[k] = x.clone();
        }
    }
    Ok(out)
}

/// Every frame after the hello.
#[derive(Debug, PartialEq)]
pub enum AgentFrame {
    Ack { id: String },
    Result { id: String, payload: Value },
    Event { payload: Value },
    Ping,
    Chat { id: String, request: Value },
}

/// A close code and why.
pub type Refusal = (u16, String);

/// 1–128 of letters, digits and `._:-@/`: agent ids and group names.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-@/".contains(&b))
}

/// The hello, checked: a valid id, at most `max_groups` valid groups, at
/// most 64 capabilities of 128 bytes.
pub fn parse_hello(text: &str, max_groups: usize) -> Result<Hello, Refusal> {
    let v: Value = serde_json::from_str(text)
        .map_err(|e| (code::INVALID_PAYLOAD, format!("invalid frame: {e}")))?;
    if v.get("type").and_then(Value::as_str) != Some("hello") {
        return Err((code::POLICY, "the first frame must be a hello".into()));
    }
    let hello: Hello =
        serde_json::from_value(v).map_err(|e| (code::POLICY, format!("invalid hello: {e}")))?;
    if !valid_name(&hello.agent_id) {
        return Err((
            code::POLICY,
            "agent_id must be 1-128 of letters, digits and ._:-@/".into(),
        ));
    }
    if hello.groups.len() > max_groups || !hello.groups.iter().all(|g| valid_name(g)) {
        return Err((
            code::POLICY,
            format!("at most {max_groups} groups, each 1-128 of letters, digits and ._:-@/"),
        ));
    }
    if hello.capabilities.len() > 64 || hello.capabilities.iter().any(|c| c.len() > 128) {
        return Err((code::POLICY, "at most 64 capabilities of 128 bytes".into()));
    }
    if hello.tools.len() > MAX_TOOLS {
        return Err((code::POLICY, format!("at most {MAX_TOOLS} tools")));
    }
    let mut tools = Vec::with_capacity(hello.tools.len());
    for t in &hello.tools {
        let t = tool(t).map_err(|e| (code::POLICY, e))?;
        if tools.iter().any(|o: &Value| o["name"] == t["name"]) {
            return Err((
                code::POLICY,
                format!("tool {} is declared twice", t["name"]),
            ));
        }
        tools.push(t);
    }
    Ok(Hello { tools, ..hello })
}

#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    payload: Option<Value>,
    #[serde(default)]
    request: Option<Value>,
}

/// One frame after the hello.
pub fn parse(text: &str) -> Result<AgentFrame, Refusal> {
    let f: Raw = serde_json::from_str(text)
        .map_err(|e| (code::INVALID_PAYLOAD, format!("invalid frame: {e}")))?;
    let id = |f: &Raw| {
        f.id.clone()
            .filter(|i| !i.is_empty() && i.len() <= 128)
            .ok_or((code::POLICY, format!("a '{}' frame needs an id", f.kind)))
    };
    Ok(match f.kind.as_str() {
        "ack" => AgentFrame::Ack { id: id(&f)? },
        "result" => AgentFrame::Result {
            id: id(&f)?,
            payload: f.payload.unwrap_or(Value::Null),
        },
        "event" => AgentFrame::Event {
            payload: f.payload.unwrap_or(Value::Null),
        },
        "ping" => AgentFrame::Ping,
        "chat" => AgentFrame::Chat {
            id: id(&f)?,
            request: f
                .request
                .ok_or((code::POLICY, "a 'chat' frame needs a request".into()))?,
        },
        "hello" => return Err((code::POLICY, "hello was already said".into())),
        other => {
            return Err((
                code::POLICY,
                format!("unknown frame type '{other}' (ack, result, event, ping, chat)"),
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_their_refusals() {
        assert_eq!(
            parse(r#"{"type":"ack","id":"i1"}"#),
            Ok(AgentFrame::Ack { id: "i1".into() })
        );
        assert_eq!(
            parse(r#"{"type":"result","id":"i1"}"#),
            Ok(AgentFrame::Result {
                id: "i1".into(),
                payload: Value::Null
            })
        );
        assert_eq!(parse(r#"{"type":"ping"}"#), Ok(AgentFrame::Ping));
        assert_eq!(parse(r#"{"type":"ack"}"#).unwrap_err().0, code::POLICY);
        assert_eq!(
            parse(r#"{"type":"chat","id":"c"}"#).unwrap_err().0,
            code::POLICY
        );
        assert_eq!(parse("{nope").unwrap_err().0, code::INVALID_PAYLOAD);
        assert_eq!(
            parse(r#"{"type":"hello","agent_id":"a"}"#).unwrap_err().0,
            code::POLICY
        );
        let long = format!(r#"{{"type":"ack","id":"{}"}}"#, "x".repeat(129));
        assert_eq!(parse(&long).unwrap_err().0, code::POLICY);
    }

    #[test]
    fn tools_in_a_hello_are_checked_and_normalized() {
        let h = parse_hello(
            r#"{"type":"hello","agent_id":"a1","tools":[{"name":"lookup","description":"d","input_schema":{"type":"object","properties":{"q":{"type":"string"}}}},{"name":"ping"},{"name":"fn","parameters":{"type":"object","required":["x"]}}]}"#,
            32,
        )
        .unwrap();
        assert_eq!(h.tools.len(), 3);
        assert_eq!(h.tools[2]["inputSchema"]["required"][0], "x");
        assert_eq!(
            h.tools[0]["inputSchema"]["properties"]["q"]["type"],
            "string"
        );
        assert_eq!(h.tools[0]["description"], "d");
        assert_eq!(h.tools[1]["inputSchema"]["type"], "object");
        for bad in [
            r#"{"type":"hello","agent_id":"a","tools":[{"name":"a__b"}]}"#,
            r#"{"type":"hello","agent_id":"a","tools":[{"name":""}]}"#,
            r#"{"type":"hello","agent_id":"a","tools":[{"description":"x"}]}"#,
            r#"{"type":"hello","agent_id":"a","tools":[{"name":"x","inputSchema":{"type":"string"}}]}"#,
            r#"{"type":"hello","agent_id":"a","tools":[{"name":"x"},{"name":"x"}]}"#,
        ] {
            assert_eq!(parse_hello(bad, 32).unwrap_err().0, code::POLICY, "{bad}");
        }
    }

    #[test]
    fn hellos_are_checked() {
        let h = parse_hello(r#"{"type":"hello","agent_id":"a1","groups":["g"]}"#, 32).unwrap();
        assert_eq!((h.agent_id.as_str(), h.groups.len()), ("a1", 1));
        for bad in [
            r#"{"type":"hello","agent_id":""}"#,
            r#"{"type":"hello","agent_id":"a b"}"#,
            r#"{"type":"ack","agent_id":"a"}"#,
            r#"{"type":"hello","agent_id":"a","groups":["g","h"]}"#,
        ] {
            assert!(parse_hello(bad, 1).is_err(), "{bad}");
        }
    }
}
