//! The mock's moderation (keyword rules per category) and rerank (word
//! overlap with the query) answers: deterministic, so tests can assert them.

use serde::Deserialize;
use serde_json::{Map, Value, json};
use sluice_core::request::Usage;
use sluice_core::{ErrorKind, GatewayError};

use crate::BoxBody;
use crate::mock::{fnv1a, json_response};
use crate::mock_media::json_in;

/// OpenAI's moderation categories, and the words that flag each here.
const CATEGORIES: &[(&str, &[&str])] = &[
    ("harassment", &["idiot", "stupid", "loser"]),
    ("harassment/threatening", &["i will hurt you"]),
    ("hate", &["hate"]),
    ("hate/threatening", &[]),
    ("illicit", &["steal", "counterfeit"]),
    ("illicit/violent", &["build a bomb"]),
    ("self-harm", &["self-harm", "hurt myself"]),
    ("self-harm/intent", &["want to hurt myself"]),
    ("self-harm/instructions", &[]),
    ("sexual", &["explicit"]),
    ("sexual/minors", &[]),
    ("violence", &["kill", "attack", "bomb"]),
    ("violence/graphic", &["gore"]),
];

#[derive(Deserialize)]
struct ModerationIn {
    input: Value,
}

/// One result per input (a string, strings, or multimodal parts taken as one).
pub fn moderation(
    model: &str,
    body: &[u8],
) -> Result<(http::Response<BoxBody>, Usage), GatewayError> {
    let req: ModerationIn = json_in(body)?;
    let inputs: Vec<(String, bool)> = match &req.input {
        Value::String(s) => vec![(s.clone(), false)],
        Value::Array(items) if items.iter().all(Value::is_string) && !items.is_empty() => items
            .iter()
            .map(|v| (v.as_str().unwrap_or_default().to_owned(), false))
            .collect(),
        Value::Array(items) if !items.is_empty() => {
            let text: Vec<&str> = items.iter().filter_map(|p| p["text"].as_str()).collect();
            let image = items.iter().any(|p| p["type"] == "image_url");
            vec![(text.join(" "), image)]
        }
        _ => {
            return Err(GatewayError::new(
                ErrorKind::InvalidRequest,
                "'input' must be a string, an array of strings, or an array of text and image parts",
            )
            .with_param("input"));
        }
    };
    let mut tokens = 0u64;
    let results: Vec<Value> = inputs
        .iter()
        .map(|(text, image)| {
            tokens += text.split_whitespace().count() as u64;
            judge(&text.to_lowercase(), *image)
        })
        .collect();
    let id = format!("modr-mock-{:016x}", fnv1a(body));
    let out = json!({"id": id, "model": model, "results": results});
    let usage = Usage {
        prompt_tokens: tokens,
        completion_tokens: 0,
    };
    Ok((json_response(&out), usage))
}

fn judge(text: &str, image: bool) -> Value {
    let mut categories = Map::new();
    let mut scores = Map::new();
    let mut applied = Map::new();
    let mut flagged = false;
    for (name, words) in CATEGORIES {
        let hit = words.iter().any(|w| text.contains(w));
        flagged |= hit;
        categories.insert((*name).into(), hit.into());
        let score = if hit { 0.97 } else { 0.0001 };
        scores.insert((*name).into(), json!(score));
        let mut types = vec!["text"];
        if image
            && matches!(
                *name,
                "violence" | "violence/graphic" | "sexual" | "self-harm"
            )
        {
            types.push("image");
        }
        applied.insert((*name).into(), json!(types));
    }
    json!({
        "flagged": flagged,
        "categories": categories,
        "category_scores": scores,
        "category_applied_input_types": applied,
    })
}

#[derive(Deserialize)]
struct RerankIn {
    query: String,
    documents: Vec<Value>,
    top_n: Option<usize>,
    return_documents: Option<bool>,
}

/// Documents ordered by how many of the query's words they share (ties
/// keep their order), in the shape Cohere and Jina answer with.
pub fn rerank(model: &str, body: &[u8]) -> Result<(http::Response<BoxBody>, Usage), GatewayError> {
    let req: RerankIn = json_in(body)?;
    if req.documents.is_empty() || req.documents.len() > 10_000 {
        return Err(GatewayError::new(
            ErrorKind::InvalidRequest,
            "'documents' must hold 1 to 10000 documents",
        )
        .with_param("documents"));
    }
    let words = |s: &str| -> Vec<String> {
        s.split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect()
    };
    let query = words(&req.query);
    let mut tokens = query.len() as u64;
    let mut scored: Vec<(usize, f64, String)> = Vec::with_capacity(req.documents.len());
    for (i, d) in req.documents.iter().enumerate() {
        let text = match d {
            Value::String(s) => s.clone(),
            Value::Object(o) => o
                .get("text")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            _ => {
                return Err(GatewayError::new(
                    ErrorKind::InvalidRequest,
                    format!("documents[{i}] must be a string or an object with 'text'"),
                )
                .with_param("documents"));
            }
        };
        let doc = words(&text);
        tokens += doc.len() as u64;
        let shared = query.iter().filter(|w| doc.contains(w)).count();
        let score = if query.is_empty() {
            0.0
        } else {
            shared as f64 / query.len() as f64 * 0.9 + 0.05
        };
        scored.push((i, score, text));
    }
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    scored.truncate(req.top_n.unwrap_or(usize::MAX).max(1));
    let with_docs = req.return_documents.unwrap_or(true);
    let results: Vec<Value> = scored
        .into_iter()
        .map(|(index, score, text)| {
            let mut r = json!({"index": index, "relevance_score": score});
            if with_docs {
                r["document"] = json!({"text": text});
            }
            r
        })
        .collect();
    let out = json!({
        "id": format!("rerank-mock-{:016x}", fnv1a(body)),
        "model": model,
        "results": results,
        "usage": {"total_tokens": tokens},
        "meta": {"billed_units": {"search_units": 1}},
    });
    let usage = Usage {
        prompt_tokens: tokens,
        completion_tokens: 0,
    };
    Ok((json_response(&out), usage))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn json_of(r: http::Response<BoxBody>) -> Value {
        let b = r.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&b).unwrap()
    }

    #[tokio::test]
    async fn moderation_flags_by_category() {
        let (r, _) = moderation("m", br#"{"input":["I will kill it","hello"]}"#).unwrap();
        let v = json_of(r).await;
        assert_eq!(v["results"][0]["flagged"], true);
        assert_eq!(v["results"][0]["categories"]["violence"], true);
        assert_eq!(v["results"][1]["flagged"], false);
        assert_eq!(v["results"][1]["categories"].as_object().unwrap().len(), 13);
    }

    #[tokio::test]
    async fn rerank_orders_by_overlap() {
        let body = br#"{"query":"rust gateway","documents":["a cake recipe",{"text":"a gateway in rust"},"rust"],"top_n":2}"#;
        let (r, usage) = rerank("m", body).unwrap();
        let v = json_of(r).await;
        assert_eq!(v["results"][0]["index"], 1);
        assert_eq!(v["results"][1]["index"], 2);
        assert_eq!(v["results"].as_array().unwrap().len(), 2);
        assert_eq!(v["results"][0]["document"]["text"], "a gateway in rust");
        assert!(usage.prompt_tokens > 0);
    }
}
