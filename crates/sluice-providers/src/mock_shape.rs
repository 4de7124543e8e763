//! What the built-in mock answers besides text: a tool call when the
//! request forces one (`tool_choice`) or its last user message names a
//! tool, and JSON matching `response_format` — values sampled from the
//! schema, deterministically — so agent frameworks and structured-output
//! libraries can be tried with no keys.

use serde_json::{Map, Value, json};

/// The tool the mock calls, if any: (name, its parameters' schema).
pub fn tool_to_call(req: &Value) -> Option<(String, Value)> {
    let tools = req["tools"].as_array().filter(|t| !t.is_empty())?;
    let last = req["messages"].as_array()?.last()?;
    if last["role"] != "user" {
        return None; // a tool answered: now the mock speaks
    }
    let named = |name: &str| {
        tools
            .iter()
            .find(|t| t["function"]["name"] == name)
            .map(|t| (name.to_owned(), t["function"]["parameters"].clone()))
    };
    match &req["tool_choice"] {
        Value::String(s) if s == "none" => return None,
        Value::String(s) if s == "required" => {
            let first = tools[0]["function"]["name"].as_str()?;
            return named(first);
        }
        Value::Object(o) => {
            return o
                .get("function")
                .and_then(|f| f["name"].as_str())
                .and_then(named);
        }
        _ => {}
    }
    let asked = content_text(&last["content"]).to_lowercase();
    tools.iter().find_map(|t| {
        let name = t["function"]["name"].as_str()?;
        let spoken = name.to_lowercase().replace('_', " ");
        (asked.contains(&name.to_lowercase()) || asked.contains(&spoken)).then(|| named(name))?
    })
}

/// JSON for `response_format` (`None`: plain text).
pub fn structured(req: &Value, text: &str) -> Option<Value> {
    let f = &req["response_format"];
    match f["type"].as_str()? {
        "json_object" => Some(json!({"reply": text})),
        "json_schema" => {
            let schema = &f["json_schema"]["schema"];
            Some(sample(schema, schema, 0))
        }
        _ => None,
    }
}

/// A value valid for `schema` (`root` resolves `$ref`s).
pub fn sample(schema: &Value, root: &Value, depth: u32) -> Value {
    if depth > 16 {
        return Value::Null;
    }
    if let Some(r) = schema["$ref"].as_str() {
        let target = r
            .strip_prefix("#/")
            .map(|p| p.split('/').fold(root, |v, k| &v[k]))
            .unwrap_or(&Value::Null);
        return sample(target, root, depth + 1);
    }
    if let Some(c) = schema.get("const") {
        return c.clone();
    }
    if let Some(first) = schema["enum"].as_array().and_then(|e| e.first()) {
        return first.clone();
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(first) = schema[key].as_array().and_then(|a| a.first()) {
            return sample(first, root, depth + 1);
        }
    }
    let kind = match &schema["type"] {
        Value::String(s) => s.as_str(),
        Value::Array(kinds) => kinds
            .iter()
            .find_map(|k| k.as_str().filter(|k| *k != "null"))
            .unwrap_or("null"),
        _ if schema.get("properties").is_some() => "object",
        _ => "string",
    };
    match kind {
        "object" => {
            let mut out = Map::new();
            if let Some(props) = schema["properties"].as_object() {
                for (k, v) in props {
                    out.insert(k.clone(), sample(v, root, depth + 1));
                }
            }
            Value::Object(out)
        }
        "array" => {
            let n = schema["minItems"].as_u64().unwrap_or(1).clamp(1, 8);
            Value::Array(
                (0..n)
                    .map(|_| sample(&schema["items"], root, depth + 1))
                    .collect(),
            )
        }
        "integer" => json!(schema["minimum"].as_i64().unwrap_or(1)),
        "number" => json!(schema["minimum"].as_f64().unwrap_or(1.5)),
        "boolean" => json!(true),
        "null" => Value::Null,
        _ => json!("mock"),
    }
}

pub fn content_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_valid_for_their_schema() {
        let schema = json!({
            "type": "object",
            "properties": {
                "city": {"type": "string"}, "temp": {"type": "number"}, "days": {"type": "integer", "minimum": 3},
                "tags": {"type": "array", "items": {"type": "string"}}, "unit": {"enum": ["C", "F"]},
                "where": {"$ref": "#/$defs/Place"}, "maybe": {"anyOf": [{"type": "boolean"}, {"type": "null"}]}},
            "$defs": {"Place": {"type": "object", "properties": {"name": {"type": "string"}}}}});
        assert_eq!(
            sample(&schema, &schema, 0),
            json!({"city": "mock", "temp": 1.5, "days": 3, "tags": ["mock"], "unit": "C",
                   "where": {"name": "mock"}, "maybe": true})
        );
    }

    #[test]
    fn a_tool_is_called_when_forced_or_named_and_not_after_its_result() {
        let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
                           {"type": "function", "function": {"name": "search"}}]);
        let req = |content: &str, choice: Value| {
            json!({"tools": tools, "tool_choice": choice,
            "messages": [{"role": "user", "content": content}]})
        };
        assert_eq!(
            tool_to_call(&req("What is the weather?", Value::Null)),
            None
        );
        assert_eq!(
            tool_to_call(&req("Use get weather for Paris", Value::Null))
                .unwrap()
                .0,
            "get_weather"
        );
        assert_eq!(
            tool_to_call(&req("hi", json!("required"))).unwrap().0,
            "get_weather"
        );
        assert_eq!(
            tool_to_call(&req(
                "hi",
                json!({"type": "function", "function": {"name": "search"}})
            ))
            .unwrap()
            .0,
            "search"
        );
        assert_eq!(tool_to_call(&req("get_weather", json!("none"))), None);
        let after = json!({"tools": tools, "messages": [{"role": "user", "content": "get_weather"},
            {"role": "tool", "tool_call_id": "c", "content": "22 C"}]});
        assert_eq!(tool_to_call(&after), None);
    }
}
