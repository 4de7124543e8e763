//! Batches run by the gateway (for the mock files provider): each line of
//! the input file goes through the same request path as a client's request
//! — the creator's key, its limits, routing, metrics and audit — one after
//! another; the answers and the failures become the output and error files.

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::HeaderMap;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sluice_core::media::Media;
use sluice_core::request::Operation;
use sluice_core::{ErrorKind, GatewayError};

use super::FilesRequest;
use super::local::{keep_batch, not_found};
use crate::app::App;
use crate::clock::now_unix;
use crate::proxy::{Inbound, InboundBody};

/// Largest answer kept per batch line.
const ANSWER_LIMIT: usize = 8 << 20;

/// The endpoints a batch line may name, as the proxy serves them.
fn operation(url: &str) -> Option<(Operation, &'static str)> {
    Some(match url {
        "/v1/chat/completions" => (Operation::Chat, "/v1/chat/completions"),
        "/v1/embeddings" => (Operation::Embeddings, "/v1/embeddings"),
        "/v1/completions" => (Operation::Completions, "/v1/completions"),
        "/v1/responses" => (Operation::Responses, "/v1/responses"),
        "/v1/moderations" => (Operation::Media(Media::Moderation), "/v1/moderations"),
        _ => return None,
    })
}

/// `POST /v1/batches`: validated, kept, and started in the background.
pub(super) fn create(app: &Arc<App>, r: FilesRequest) -> Result<Response, GatewayError> {
    #[derive(serde::Deserialize)]
    struct CreateBatch {
        input_file_id: String,
        endpoint: String,
        completion_window: Option<String>,
        metadata: Option<Value>,
    }
    let req: CreateBatch = serde_json::from_slice(&r.body).map_err(|e| {
        GatewayError::new(ErrorKind::InvalidRequest, format!("invalid request: {e}"))
    })?;
    if operation(&req.endpoint).is_none() {
        return Err(GatewayError::new(
            ErrorKind::InvalidRequest,
            format!(
                "endpoint '{}' cannot be batched (/v1/chat/completions, /v1/embeddings, \
                 /v1/completions, /v1/responses, /v1/moderations)",
                req.endpoint
            ),
        )
        .with_param("endpoint"));
    }
    let input = app
        .local_files
        .inner
        .lock()
        .expect("files lock")
        .file_data(&req.input_file_id, &r.key)
        .ok_or_else(|| not_found("file", &req.input_file_id).with_param("input_file_id"))?;
    let now = now_unix();
    let object = json!({
        "id": "", "object": "batch", "endpoint": req.endpoint, "errors": null,
        "input_file_id": req.input_file_id,
        "completion_window": req.completion_window.unwrap_or_else(|| "24h".into()),
        "status": "validating", "output_file_id": null, "error_file_id": null,
        "created_at": now, "in_progress_at": null, "expires_at": now + 86_400,
        "finalizing_at": null, "completed_at": null, "failed_at": null, "expired_at": null,
        "cancelling_at": null, "cancelled_at": null,
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "metadata": req.metadata.unwrap_or(Value::Null),
    });
    let id = keep_batch(&app.local_files, object, r.key.clone());
    let mut headers = HeaderMap::new();
    for (n, v) in r.auth {
        headers.insert(n, v);
    }
    let shown = batch_object(app, &id);
    tokio::spawn(run(app.clone(), id, req.endpoint, input, headers, r.key));
    Ok(axum::Json(shown).into_response())
}

fn batch_object(app: &App, id: &str) -> Value {
    let mut s = app.local_files.inner.lock().expect("files lock");
    s.batch_mut(id)
        .map(|b| b.object.clone())
        .unwrap_or_default()
}

/// Changes a batch's object; `false` once it is to stop (cancelled).
fn update(app: &App, id: &str, f: impl FnOnce(&mut Value)) -> bool {
    let mut s = app.local_files.inner.lock().expect("files lock");
    match s.batch_mut(id) {
        Some(b) => {
            f(&mut b.object);
            !b.cancel
        }
        None => false,
    }
}

async fn run(
    app: Arc<App>,
    id: String,
    endpoint: String,
    input: Bytes,
    headers: HeaderMap,
    owner: Option<Arc<str>>,
) {
    let lines: Vec<&[u8]> = input
        .split(|b| *b == b'\n')
        .filter(|l| !l.trim_ascii().is_empty())
        .collect();
    if let Err(errors) = validate(&lines, &endpoint) {
        update(&app, &id, |o| {
            o["status"] = json!("failed");
            o["failed_at"] = json!(now_unix());
            o["errors"] = json!({"object": "list", "data": errors});
        });
        return;
    }
    let total = lines.len();
    if !update(&app, &id, |o| {
        o["status"] = json!("in_progress");
        o["in_progress_at"] = json!(now_unix());
        o["request_counts"]["total"] = json!(total);
    }) {
        return finish(&app, &id, Vec::new(), Vec::new(), &owner);
    }
    let (op, route) = operation(&endpoint).expect("validated");
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let v: Value = serde_json::from_slice(line).unwrap_or_default();
        let custom_id = v["custom_id"].clone();
        let body = Bytes::from(v["body"].to_string());
        let inbound = Inbound {
            op,
            route,
            headers: headers.clone(),
            body: InboundBody::Read(body),
            client: None,
        };
        let resp = crate::proxy::serve(app.clone(), inbound).await;
        let status = resp.status().as_u16();
        let request_id = resp.headers().get("x-request-id").cloned();
        let bytes = http_body_util::Limited::new(resp.into_body(), ANSWER_LIMIT)
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let line_id = format!("batch_req_{id}_{i}");
        let rid = request_id.and_then(|v| v.to_str().ok().map(str::to_owned));
        let record = json!({"id": line_id, "custom_id": custom_id,
            "response": {"status_code": status, "request_id": rid, "body": answer}, "error": null});
        let ok = (200..300).contains(&status);
        if ok {
            out.push(record);
        } else {
            errors.push(record);
        }
        let going = update(&app, &id, |o| {
            let field = if ok { "completed" } else { "failed" };
            let n = o["request_counts"][field].as_u64().unwrap_or(0);
            o["request_counts"][field] = json!(n + 1);
        });
        if !going {
            break;
        }
    }
    finish(&app, &id, out, errors, &owner);
}

/// Every line must be a request for the batch's endpoint.
fn validate(lines: &[&[u8]], endpoint: &str) -> Result<(), Vec<Value>> {
    let mut errors = Vec::new();
    if lines.is_empty() {
        errors.push(
            json!({"code": "empty_file", "message": "the input file has no requests",
            "param": null, "line": null}),
        );
    }
    for (i, l) in lines.iter().enumerate() {
        let v: Result<Value, _> = serde_json::from_slice(l);
        let problem = match &v {
            Err(e) => Some(format!("not JSON: {e}")),
            Ok(v) if !v["custom_id"].is_string() => Some("'custom_id' must be a string".into()),
            Ok(v) if v["url"] != endpoint => Some(format!(
                "'url' must be the batch's endpoint {endpoint}, not {}",
                v["url"]
            )),
            Ok(v) if !v["body"].is_object() => Some("'body' must be an object".into()),
            Ok(_) => None,
        };
        if let Some(message) = problem {
            errors.push(json!({"code": "invalid_request", "message": message,
                "param": null, "line": i + 1}));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Writes the output and error files and the batch's final state.
fn finish(app: &App, id: &str, out: Vec<Value>, errors: Vec<Value>, owner: &Option<Arc<str>>) {
    let jsonl = |lines: &[Value]| {
        let mut b = Vec::new();
        for l in lines {
            b.extend_from_slice(l.to_string().as_bytes());
            b.push(b'\n');
        }
        Bytes::from(b)
    };
    let mut s = app.local_files.inner.lock().expect("files lock");
    let mut keep = |name: &str, lines: &[Value]| -> Value {
        if lines.is_empty() {
            return Value::Null;
        }
        match s.add_file(name, "batch_output", jsonl(lines), owner.clone()) {
            Ok(meta) => meta["id"].clone(),
            Err(e) => {
                tracing::warn!(batch = %id, error = %e, "batch output not kept");
                Value::Null
            }
        }
    };
    let output = keep(&format!("{id}_output.jsonl"), &out);
    let error = keep(&format!("{id}_error.jsonl"), &errors);
    let Some(b) = s.batch_mut(id) else { return };
    let now = now_unix();
    let o = &mut b.object;
    o["output_file_id"] = output;
    o["error_file_id"] = error;
    o["finalizing_at"] = json!(now);
    if b.cancel {
        o["status"] = json!("cancelled");
        o["cancelled_at"] = json!(now);
    } else {
        o["status"] = json!("completed");
        o["completed_at"] = json!(now);
    }
}
