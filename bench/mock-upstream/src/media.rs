//! The media endpoints of the mock upstream: answers that show what arrived
//! (path, model, bytes), so tests can see a request went through unchanged.

use hyper::Response;
use serde_json::{Value, json};

use crate::{Body, full, json_resp};

/// The answer to a media request, if `path` is a media endpoint.
pub(crate) fn answer(path: &str, parsed: &Value, body: &[u8]) -> Option<Response<Body>> {
    if path.starts_with("/v1/files") || path.starts_with("/v1/batches") {
        // Files and batches: an object saying what arrived.
        let object = if path.starts_with("/v1/files") {
            "file"
        } else {
            "batch"
        };
        return Some(json_resp(
            200,
            &json!({"id": format!("{object}-upstream"), "object": object, "path": path,
                "bytes": body.len(), "created_at": 1, "filename": "upstream.jsonl",
                "purpose": "batch", "status": "processed"}),
        ));
    }
    let model = parsed["model"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| form_field(body, "model"))
        .unwrap_or_default();
    let end = path.rsplit('/').next().unwrap_or_default();
    let r = match end {
        "speech" => {
            // Bytes that are plainly not JSON, as long as the input.
            let n = parsed["input"].as_str().map_or(0, str::len);
            let mut audio = b"ID3\x04\x00upstream-audio\xff\xfb".to_vec();
            audio.resize(audio.len() + n * 100, 0x55);
            let mut r = Response::new(full(audio));
            r.headers_mut().insert(
                "content-type",
                hyper::header::HeaderValue::from_static("audio/mpeg"),
            );
            r
        }
        "transcriptions" | "translations" => {
            let text = format!("upstream {end} by {model} of {} bytes", body.len());
            if form_field(body, "response_format").as_deref() == Some("text") {
                let mut r = Response::new(full(format!("{text}\n").into_bytes()));
                r.headers_mut().insert(
                    "content-type",
                    hyper::header::HeaderValue::from_static("text/plain"),
                );
                r
            } else {
                json_resp(200, &json!({"text": text}))
            }
        }
        "generations" | "edits" => json_resp(
            200,
            &json!({"created": 1, "data": [{"url": format!("https://upstream.invalid/{model}.png")}]}),
        ),
        "moderations" => json_resp(
            200,
            &json!({"id": "modr-upstream", "model": model, "results": [{"flagged": false,
                "categories": {"violence": false}, "category_scores": {"violence": 0.0}}]}),
        ),
        "rerank" => json_resp(
            200,
            &json!({"model": model, "results": [{"index": 0, "relevance_score": 0.5}],
                "usage": {"total_tokens": 3}}),
        ),
        _ => return None,
    };
    Some(r)
}

/// A text field of a multipart form, found by its name.
fn form_field(body: &[u8], name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\"");
    let at = find(body, marker.as_bytes())?;
    let value_start = at + find(&body[at..], b"\r\n\r\n")? + 4;
    let len = find(&body[value_start..], b"\r\n")?;
    String::from_utf8(body[value_start..value_start + len].to_vec()).ok()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
