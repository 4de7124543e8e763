//! OpenAI chat request fields a translated target cannot honour: refused by
//! name with a 400, never dropped silently. A field at its default value
//! (`n: 1`, `logprobs: false`, a zero penalty, …) asks for nothing and passes.

use serde_json::{Map, Value};
use sluice_core::{ErrorKind, GatewayError};

/// Fields every translation handles itself, or that change nothing there.
const HANDLED: [&str; 6] = [
    "response_format",
    "stream_options",
    "metadata",
    "store",
    "service_tier",
    "reasoning_effort",
];

/// `Err` for the first field of `rest` (the chat request's fields no
/// translation types) that `target` cannot honour.
pub fn check(rest: &Map<String, Value>, target: &str) -> Result<(), GatewayError> {
    for (key, v) in rest {
        if HANDLED.contains(&key.as_str()) || is_default(key, v) {
            continue;
        }
        return Err(GatewayError::new(
            ErrorKind::InvalidRequest,
            format!("'{key}' is not supported by {target} targets"),
        )
        .with_param(param(key)));
    }
    Ok(())
}

fn is_default(key: &str, v: &Value) -> bool {
    match (key, v) {
        (_, Value::Null) => true,
        ("n", n) => n.as_u64() == Some(1),
        ("logprobs", b) => b == &Value::Bool(false),
        ("top_logprobs", n) => n.as_u64() == Some(0),
        ("presence_penalty" | "frequency_penalty", x) => x.as_f64() == Some(0.0),
        ("logit_bias", Value::Object(m)) => m.is_empty(),
        ("modalities", Value::Array(a)) => a.iter().all(|m| m == "text"),
        _ => false,
    }
}

/// A known field's name as an error's `param` (static).
fn param(key: &str) -> &'static str {
    const KNOWN: [&str; 12] = [
        "n",
        "logprobs",
        "top_logprobs",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "seed",
        "modalities",
        "audio",
        "prediction",
        "web_search_options",
        "functions",
    ];
    KNOWN
        .iter()
        .find(|k| **k == key)
        .copied()
        .unwrap_or("request")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_pass_and_requests_for_more_are_refused_by_name() {
        let ok = json!({"n": 1, "logprobs": false, "presence_penalty": 0, "logit_bias": {},
                        "stream_options": {"include_usage": true}, "response_format": {"type": "text"},
                        "seed": null});
        assert!(check(ok.as_object().unwrap(), "Anthropic").is_ok());
        for (field, v) in [
            ("n", json!(2)),
            ("logprobs", json!(true)),
            ("seed", json!(7)),
            ("audio", json!({})),
            ("some_vendor_field", json!(1)),
        ] {
            let mut m = Map::new();
            m.insert(field.into(), v);
            let e = check(&m, "Anthropic").unwrap_err();
            assert_eq!(e.status(), 400);
            assert!(
                e.message.contains(field) && e.message.contains("Anthropic"),
                "{}",
                e.message
            );
        }
    }
}
