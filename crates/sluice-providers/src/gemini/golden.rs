//! Golden tests for the Gemini translation (fixtures in `tests/golden/`,
//! written from Gemini's public API reference).

use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::Value;

use super::translate as gt;
use crate::openai::types as ot;
use crate::translate::{StreamBody, UsageCell, Wire};

fn fixture(name: &str) -> (Value, Value) {
    let path = format!("{}/tests/golden/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    (v["input"].clone(), v["expected"].clone())
}

#[test]
fn openai_request_to_gemini() {
    let (input, expected) = fixture("openai_request_to_gemini");
    let req: ot::ChatRequest = serde_json::from_value(input).unwrap();
    assert_eq!(gt::request(req).unwrap(), expected);
}

#[test]
fn gemini_response_to_openai() {
    let (input, expected) = fixture("gemini_response_to_openai");
    let resp: gt::GenerateResponse = serde_json::from_value(input).unwrap();
    let out = gt::response(resp, "alias", 1_700_000_000);
    assert_eq!(serde_json::to_value(out).unwrap(), expected);
}

#[tokio::test]
async fn gemini_stream_to_openai() {
    let (input, expected) = fixture("gemini_stream_to_openai");
    let frames: Vec<_> = input
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            Ok::<_, crate::BodyError>(hyper::body::Frame::data(Bytes::from(
                f.as_str().unwrap().to_owned(),
            )))
        })
        .collect();
    let inner = http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync();
    let usage = std::sync::Arc::new(UsageCell::default());
    let body = StreamBody::new(
        inner,
        Wire::Gemini,
        Wire::OpenAi,
        "alias",
        true,
        1_700_000_000,
        usage.clone(),
        None,
    );
    let text = String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap();
    let got: Vec<Value> = text
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let d = e.strip_prefix("data: ").unwrap();
            if d == "[DONE]" {
                Value::String(d.into())
            } else {
                serde_json::from_str(d).unwrap()
            }
        })
        .collect();
    assert_eq!(Value::Array(got), expected);
    assert_eq!(usage.get().map(|u| u.completion_tokens), Some(3));
}
