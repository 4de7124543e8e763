//! OpenAI chat ⇄ Gemini `generateContent`, as pure functions.

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::openai::types::{
    ChatRequest, ChatResponse, Choice, Chunk, Content, Delta, FunctionCall, FunctionDelta, Message,
    ToolCall, ToolCallDelta, UsageOut,
};

/// The Gemini request for an OpenAI chat request; a field Gemini cannot
/// honour is refused by name.
pub fn request(req: ChatRequest) -> Result<Value, sluice_core::GatewayError> {
    crate::fields::check(&req.rest, "Gemini")?;
    let mut system = Vec::new();
    let mut contents: Vec<Value> = Vec::new();
    // Tool results name the function; OpenAI only gives the call id.
    let mut call_names: Vec<(String, String)> = Vec::new();
    for m in req.messages {
        match m.role.as_str() {
            "system" | "developer" => {
                if let Some(c) = m.content {
                    system.push(json!({"text": c.text()}));
                }
            }
            "assistant" => {
                let mut parts = Vec::new();
                if let Some(text) = m.content.map(|c| c.text()).filter(|t| !t.is_empty()) {
                    parts.push(json!({"text": text}));
                }
                for call in m.tool_calls.unwrap_or_default() {
                    let args: Value = serde_json::from_str(&call.function.arguments)
                        .unwrap_or_else(|_| json!({}));
                    call_names.push((call.id, call.function.name.clone()));
                    parts.push(json!({"functionCall": {"name": call.function.name, "args": args}}));
                }
                push(&mut contents, "model", parts);
            }
            "tool" => {
                let id = m.tool_call_id.unwrap_or_default();
                let name = call_names
                    .iter()
                    .find(|(i, _)| *i == id)
                    .map_or_else(|| id.clone(), |(_, n)| n.clone());
                let text = m.content.map(|c| c.text()).unwrap_or_default();
                let response = match serde_json::from_str::<Value>(&text) {
                    Ok(v @ Value::Object(_)) => v,
                    _ => json!({"content": text}),
                };
                push(
                    &mut contents,
                    "user",
                    vec![json!({"functionResponse": {"name": name, "response": response}})],
                );
            }
            _ => {
                let parts = match m.content {
                    None => vec![],
                    Some(Content::Text(t)) => vec![json!({"text": t})],
                    Some(Content::Parts(parts)) => parts
                        .into_iter()
                        .filter_map(|p| match (p.kind.as_str(), p.text, p.image_url) {
                            ("text", Some(t), _) => Some(json!({"text": t})),
                            ("image_url", _, Some(img)) => Some(image_part(&img.url)),
                            _ => None,
                        })
                        .collect(),
                };
                push(&mut contents, "user", parts);
            }
        }
    }
    let mut body = Map::new();
    body.insert("contents".into(), Value::Array(contents));
    if !system.is_empty() {
        body.insert("systemInstruction".into(), json!({"parts": system}));
    }
    let mut generation = Map::new();
    if let Some(t) = req.temperature {
        generation.insert("temperature".into(), json!(t));
    }
    if let Some(p) = req.top_p {
        generation.insert("topP".into(), json!(p));
    }
    if let Some(n) = req.max_completion_tokens.or(req.max_tokens) {
        generation.insert("maxOutputTokens".into(), json!(n));
    }
    if let Some(stop) = req.stop {
        generation.insert("stopSequences".into(), json!(stop.into_vec()));
    }
    // Structured output: JSON, and the schema when there is one.
    match req
        .rest
        .get("response_format")
        .and_then(|f| f.get("type"))
        .and_then(Value::as_str)
    {
        Some("json_object") => {
            generation.insert("responseMimeType".into(), json!("application/json"));
        }
        Some("json_schema") => {
            generation.insert("responseMimeType".into(), json!("application/json"));
            if let Some(schema) = req.rest["response_format"]
                .get("json_schema")
                .and_then(|j| j.get("schema"))
            {
                generation.insert("responseJsonSchema".into(), schema.clone());
            }
        }
        _ => {}
    }
    if !generation.is_empty() {
        body.insert("generationConfig".into(), Value::Object(generation));
    }
    if let Some(tools) = req.tools {
        let decls: Vec<Value> = tools
            .into_iter()
            .map(|t| {
                let mut d = json!({"name": t.function.name});
                if let Some(desc) = t.function.description {
                    d["description"] = json!(desc);
                }
                if let Some(params) = t.function.parameters {
                    d["parameters"] = params;
                }
                d
            })
            .collect();
        body.insert("tools".into(), json!([{"functionDeclarations": decls}]));
    }
    if let Some(choice) = req.tool_choice {
        let config = match &choice {
            Value::String(s) if s == "none" => json!({"mode": "NONE"}),
            Value::String(s) if s == "required" => json!({"mode": "ANY"}),
            Value::Object(o) => match o.get("function").and_then(|f| f.get("name")) {
                Some(name) => json!({"mode": "ANY", "allowedFunctionNames": [name]}),
                None => json!({"mode": "AUTO"}),
            },
            _ => json!({"mode": "AUTO"}),
        };
        body.insert(
            "toolConfig".into(),
            json!({"functionCallingConfig": config}),
        );
    }
    Ok(Value::Object(body))
}

fn push(contents: &mut Vec<Value>, role: &str, parts: Vec<Value>) {
    if parts.is_empty() {
        return;
    }
    if let Some(last) = contents.last_mut()
        && last["role"] == role
        && let Some(existing) = last["parts"].as_array_mut()
    {
        existing.extend(parts);
        return;
    }
    contents.push(json!({"role": role, "parts": parts}));
}

fn image_part(url: &str) -> Value {
    if let Some(rest) = url.strip_prefix("data:")
        && let Some((meta, data)) = rest.split_once(',')
        && let Some(mime) = meta.strip_suffix(";base64")
    {
        return json!({"inlineData": {"mimeType": mime, "data": data}});
    }
    json!({"fileData": {"mimeType": "image/*", "fileUri": url}})
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerateResponse {
    #[serde(default)]
    pub candidates: Vec<Candidate>,
    #[serde(default)]
    pub usage_metadata: Option<UsageMetadata>,
    #[serde(default)]
    pub model_version: Option<String>,
    #[serde(default)]
    pub response_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Candidate {
    #[serde(default)]
    pub content: Option<CandidateContent>,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct CandidateContent {
    #[serde(default)]
    pub parts: Vec<PartOut>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartOut {
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub thought: Option<bool>,
    #[serde(default)]
    pub function_call: Option<FunctionCallOut>,
}

#[derive(Debug, Default, Deserialize)]
pub struct FunctionCallOut {
    pub name: String,
    #[serde(default)]
    pub args: Value,
    #[serde(default)]
    pub id: Option<String>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageMetadata {
    #[serde(default)]
    pub prompt_token_count: u64,
    #[serde(default)]
    pub candidates_token_count: u64,
    #[serde(default)]
    pub thoughts_token_count: u64,
}

impl UsageMetadata {
    fn to_openai(self) -> UsageOut {
        UsageOut::new(
            self.prompt_token_count,
            self.candidates_token_count + self.thoughts_token_count,
        )
    }
}

/// Gemini finish reasons to OpenAI's; a function call makes it `tool_calls`.
pub fn finish_reason(reason: &str, has_calls: bool) -> String {
    match reason {
        "MAX_TOKENS" => "length",
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            "content_filter"
        }
        _ if has_calls => "tool_calls",
        _ => "stop",
    }
    .to_owned()
}

/// The OpenAI response for a Gemini one.
pub fn response(resp: GenerateResponse, model: &str, created: u64) -> ChatResponse {
    let candidate = resp.candidates.into_iter().next().unwrap_or_default();
    let mut text = String::new();
    let mut calls = Vec::new();
    for part in candidate.content.map(|c| c.parts).unwrap_or_default() {
        if part.thought == Some(true) {
            continue;
        }
        if let Some(t) = part.text {
            text.push_str(&t);
        }
        if let Some(fc) = part.function_call {
            calls.push(ToolCall {
                id: fc.id.unwrap_or_else(|| format!("call_{}", calls.len())),
                kind: "function".into(),
                function: FunctionCall {
                    name: fc.name,
                    arguments: fc.args.to_string(),
                },
            });
        }
    }
    let finish = candidate
        .finish_reason
        .as_deref()
        .map(|r| finish_reason(r, !calls.is_empty()));
    ChatResponse {
        id: resp.response_id.unwrap_or_else(|| "gemini".into()),
        object: "chat.completion".into(),
        created,
        model: resp.model_version.unwrap_or_else(|| model.to_owned()),
        choices: vec![Choice {
            index: 0,
            message: Message {
                role: "assistant".into(),
                content: (!text.is_empty() || calls.is_empty()).then_some(Content::Text(text)),
                tool_calls: (!calls.is_empty()).then_some(calls),
                ..Message::default()
            },
            finish_reason: finish,
        }],
        usage: resp.usage_metadata.map(UsageMetadata::to_openai),
    }
}

/// Gemini stream responses (each a partial `GenerateResponse`) → OpenAI chunks.
#[derive(Debug, Default)]
pub struct StreamToOpenAi {
    model: String,
    created: u64,
    started: bool,
    calls: u32,
    usage: Option<UsageMetadata>,
    finish: Option<String>,
}

impl StreamToOpenAi {
    pub fn new(model: &str, created: u64) -> Self {
        Self {
            model: model.to_owned(),
            created,
            ..Self::default()
        }
    }

    pub fn usage(&self) -> Option<(u64, u64)> {
        self.usage.map(|u| {
            let o = u.to_openai();
            (o.prompt_tokens, o.completion_tokens)
        })
    }

    fn chunk(&self, delta: Delta, finish: Option<String>) -> Chunk {
        Chunk::single("gemini", self.created, &self.model, delta, finish)
    }

    pub fn event(&mut self, resp: GenerateResponse, out: &mut Vec<Chunk>) {
        if let Some(v) = resp.model_version {
            self.model = v;
        }
        if !self.started {
            self.started = true;
            out.push(self.chunk(Delta::role_start(), None));
        }
        if let Some(u) = resp.usage_metadata {
            self.usage = Some(u);
        }
        let Some(candidate) = resp.candidates.into_iter().next() else {
            return;
        };
        for part in candidate.content.map(|c| c.parts).unwrap_or_default() {
            if part.thought == Some(true) {
                continue;
            }
            if let Some(t) = part.text.filter(|t| !t.is_empty()) {
                out.push(self.chunk(
                    Delta {
                        content: Some(t),
                        ..Delta::default()
                    },
                    None,
                ));
            }
            if let Some(fc) = part.function_call {
                let index = self.calls;
                self.calls += 1;
                out.push(self.chunk(
                    Delta {
                        tool_calls: Some(vec![ToolCallDelta {
                            index,
                            id: Some(fc.id.unwrap_or_else(|| format!("call_{index}"))),
                            kind: Some("function".into()),
                            function: Some(FunctionDelta {
                                name: Some(fc.name),
                                arguments: Some(fc.args.to_string()),
                            }),
                        }]),
                        ..Delta::default()
                    },
                    None,
                ));
            }
        }
        if let Some(r) = candidate.finish_reason {
            self.finish = Some(finish_reason(&r, self.calls > 0));
        }
    }

    /// Whether a finish reason has come: Gemini's only sign of a whole answer.
    pub fn has_finished(&self) -> bool {
        self.finish.is_some()
    }

    /// At the end of the upstream stream: the finish chunk and the usage chunk.
    pub fn finish(&mut self, out: &mut Vec<Chunk>) {
        let finish = self.finish.take().or_else(|| Some("stop".into()));
        out.push(self.chunk(Delta::default(), finish));
        if let Some(u) = self.usage {
            let mut c = self.chunk(Delta::default(), None);
            c.choices.clear();
            c.usage = Some(u.to_openai());
            out.push(c);
        }
    }
}
