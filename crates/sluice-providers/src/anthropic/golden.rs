//! Golden tests: fixtures written from the providers' public API docs in
//! `tests/golden/`, each an `input` and the `expected` translation.

use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::Value;

use super::{inbound, outbound, types as at};
use crate::openai::types as ot;
use crate::translate::{StreamBody, UsageCell, Wire};

fn fixture(name: &str) -> (Value, Value) {
    let path = format!("{}/tests/golden/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let v: Value = serde_json::from_str(&text).unwrap();
    (v["input"].clone(), v["expected"].clone())
}

#[test]
fn openai_request_to_anthropic() {
    let (input, expected) = fixture("openai_request_to_anthropic");
    let req: ot::ChatRequest = serde_json::from_value(input).unwrap();
    let out = outbound::request(req, "claude-3-5-haiku-latest", 4096).unwrap();
    assert_eq!(serde_json::to_value(out).unwrap(), expected);
}

#[test]
fn anthropic_response_to_openai() {
    let (input, expected) = fixture("anthropic_response_to_openai");
    let resp: at::MessagesResponse = serde_json::from_value(input).unwrap();
    assert_eq!(
        serde_json::to_value(outbound::response(resp, 1_700_000_000)).unwrap(),
        expected
    );
}

#[test]
fn anthropic_request_to_openai() {
    let (input, expected) = fixture("anthropic_request_to_openai");
    let req: at::MessagesRequest = serde_json::from_value(input).unwrap();
    assert_eq!(
        serde_json::to_value(inbound::request(req)).unwrap(),
        expected
    );
}

#[test]
fn openai_response_to_anthropic() {
    let (input, expected) = fixture("openai_response_to_anthropic");
    let resp: ot::ChatResponse = serde_json::from_value(input).unwrap();
    assert_eq!(
        serde_json::to_value(inbound::response(resp, "gpt-alias")).unwrap(),
        expected
    );
}

/// Runs SSE frames through a StreamBody and returns its output text.
async fn translate(
    frames: &[Value],
    upstream: Wire,
    client: Wire,
    include_usage: bool,
) -> (String, UsageCellView) {
    let frames: Vec<Result<hyper::body::Frame<Bytes>, crate::BodyError>> = frames
        .iter()
        .map(|f| {
            Ok(hyper::body::Frame::data(Bytes::from(
                f.as_str().unwrap().to_owned(),
            )))
        })
        .collect();
    let inner = http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync();
    let usage = std::sync::Arc::new(UsageCell::default());
    let body = StreamBody::new(
        inner,
        upstream,
        client,
        "gpt-alias",
        include_usage,
        1_700_000_000,
        usage.clone(),
        None,
    );
    let bytes = body.collect().await.unwrap().to_bytes();
    (
        String::from_utf8(bytes.to_vec()).unwrap(),
        UsageCellView(usage.get()),
    )
}

#[derive(Debug, PartialEq)]
struct UsageCellView(Option<sluice_core::request::Usage>);

fn data_lines(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let data = e.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
            if data == "[DONE]" {
                Value::String("[DONE]".into())
            } else {
                serde_json::from_str(data).unwrap()
            }
        })
        .collect()
}

#[tokio::test]
async fn anthropic_stream_to_openai() {
    let (input, expected) = fixture("anthropic_stream_to_openai");
    let (text, usage) = translate(
        input.as_array().unwrap(),
        Wire::Anthropic,
        Wire::OpenAi,
        true,
    )
    .await;
    assert_eq!(Value::Array(data_lines(&text)), expected);
    assert_eq!(
        usage.0.map(|u| (u.prompt_tokens, u.completion_tokens)),
        Some((25, 15))
    );
    // Without include_usage the usage chunk is held back, but still counted.
    let (text, usage) = translate(
        input.as_array().unwrap(),
        Wire::Anthropic,
        Wire::OpenAi,
        false,
    )
    .await;
    let lines = data_lines(&text);
    assert_eq!(lines.len(), expected.as_array().unwrap().len() - 1);
    assert!(lines.iter().all(|l| l.get("usage").is_none()));
    assert!(usage.0.is_some());
}

#[tokio::test]
async fn openai_stream_to_anthropic() {
    let (input, expected) = fixture("openai_stream_to_anthropic");
    let (text, usage) = translate(
        input.as_array().unwrap(),
        Wire::OpenAi,
        Wire::Anthropic,
        false,
    )
    .await;
    let events: Vec<Value> = text
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let mut lines = e.lines();
            let name = lines.next().unwrap().strip_prefix("event: ").unwrap();
            let data = lines.next().unwrap().strip_prefix("data: ").unwrap();
            serde_json::json!([name, serde_json::from_str::<Value>(data).unwrap()])
        })
        .collect();
    assert_eq!(Value::Array(events), expected);
    assert_eq!(usage.0.map(|u| u.completion_tokens), Some(4));
}

#[tokio::test]
async fn openai_passthrough_filter_strips_unrequested_usage_only() {
    let frames: Vec<Value> = [
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}],\"usage\":null}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}\n\ndata: [DONE]\n\n",
    ]
    .iter()
    .map(|s| Value::String((*s).into()))
    .collect();
    let (text, usage) = translate(&frames, Wire::OpenAi, Wire::OpenAi, false).await;
    assert_eq!(
        text,
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}],\"usage\":null}\n\ndata: [DONE]\n\n"
    );
    assert_eq!(usage.0.map(|u| u.prompt_tokens), Some(3));
    let (text, _) = translate(&frames, Wire::OpenAi, Wire::OpenAi, true).await;
    assert!(text.contains("\"prompt_tokens\":3"));
}

#[tokio::test]
async fn anthropic_error_event_becomes_a_stream_error() {
    let frames = [
        Value::String("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"c\",\"stop_reason\":null,\"usage\":{\"input_tokens\":1,\"output_tokens\":0}}}\n\n".into()),
        Value::String("event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n".into()),
    ];
    let frames: Vec<_> = frames
        .iter()
        .map(|f| {
            Ok::<_, crate::BodyError>(hyper::body::Frame::data(Bytes::from(
                f.as_str().unwrap().to_owned(),
            )))
        })
        .collect();
    let stream = futures_util::stream::iter(frames);
    let inner = http_body_util::StreamBody::new(stream).boxed_unsync();
    let mut body = StreamBody::new(
        inner,
        Wire::Anthropic,
        Wire::OpenAi,
        "x",
        false,
        1,
        Default::default(),
        None,
    );
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.data_ref().is_some(), "the role chunk comes first");
    let err = body.frame().await.unwrap().unwrap_err();
    assert!(err.to_string().contains("Overloaded"), "{err}");
}

#[test]
fn error_bodies_cross_formats() {
    use crate::translate::error_body;
    let oa = br#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#;
    let v: Value =
        serde_json::from_slice(&error_body(Wire::OpenAi, Wire::Anthropic, 429, oa).unwrap())
            .unwrap();
    assert_eq!(
        v,
        serde_json::json!({"type": "error", "error": {"type": "rate_limit_error", "message": "Rate limit reached"}})
    );
    let an = br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
    let v: Value =
        serde_json::from_slice(&error_body(Wire::Anthropic, Wire::OpenAi, 529, an).unwrap())
            .unwrap();
    assert_eq!(v["error"]["message"], "Overloaded");
    assert_eq!(v["error"]["code"], "upstream_529");
    assert!(error_body(Wire::OpenAi, Wire::OpenAi, 400, oa).is_none());
}
