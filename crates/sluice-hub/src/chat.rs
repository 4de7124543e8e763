//! Chat completions over an agent's socket: the agent sends a `chat` frame
//! with an OpenAI chat request; the hub runs it through the normal request
//! path (keys, limits, routing, retries, metrics, audit) as a stream and
//! sends each chunk back as a `chat.chunk` frame, then `chat.done` — or
//! `chat.error` with the status and error body the HTTP API would give.

use std::sync::Arc;

use http_body_util::BodyExt;
use serde_json::{Value, json};

use super::{AgentHandle, Outbound};

/// The route label chat-over-socket requests carry in metrics and logs.
pub const ROUTE: &str = "/v1/agents/connect#chat";

pub fn start(
    gateway: Arc<dyn super::Gateway>,
    agent: Arc<AgentHandle>,
    id: String,
    request: Value,
    auth: Option<http::HeaderValue>,
) {
    tokio::spawn(async move {
        if let Err(e) = run(&*gateway, &agent, &id, request, auth).await {
            // The session is gone: nothing to tell. Dropping the response
            // body has cancelled the upstream request.
            tracing::debug!(agent = %agent.id, chat = %id, error = %e, "chat over socket ended early");
        }
    });
}

async fn send(agent: &AgentHandle, v: Value) -> Result<(), &'static str> {
    agent
        .tx
        .send(Outbound::text(v.to_string()))
        .await
        .map_err(|_| "the agent disconnected")
}

async fn run(
    gateway: &dyn super::Gateway,
    agent: &AgentHandle,
    id: &str,
    mut request: Value,
    auth: Option<http::HeaderValue>,
) -> Result<(), &'static str> {
    let Some(obj) = request.as_object_mut() else {
        return send(
            agent,
            json!({"type": "chat.error", "id": id, "status": 400,
                   "error": {"message": "request must be a JSON object", "type": "invalid_request_error", "code": "invalid_request"}}),
        )
        .await;
    };
    obj.insert("stream".into(), Value::Bool(true));
    let body = serde_json::to_vec(&request).expect("serializing to a Vec cannot fail");
    let resp = gateway.chat(body.into(), auth).await;
    let status = resp.status();
    let mut body = resp.into_body();
    if !status.is_success() {
        let bytes = http_body_util::Limited::new(body, 1 << 20)
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let error = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v.get("error").cloned())
            .unwrap_or(Value::Null);
        return send(
            agent,
            json!({"type": "chat.error", "id": id, "status": status.as_u16(), "error": error}),
        )
        .await;
    }
    let mut buf: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return send(agent, json!({"type": "chat.error", "id": id, "status": 502,
                "error": {"message": "the stream broke", "type": "upstream_error", "code": "upstream_protocol_error"}})).await;
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        while let Some(end) = memchr::memmem::find(&buf, b"\n\n") {
            let event: Vec<u8> = buf.drain(..end + 2).collect();
            for line in event.split(|b| *b == b'\n') {
                let Some(d) = line.strip_prefix(b"data:") else {
                    continue;
                };
                let d = d.trim_ascii();
                if d == b"[DONE]" {
                    return send(agent, json!({"type": "chat.done", "id": id})).await;
                }
                if let Ok(mut chunk) = serde_json::from_slice::<Value>(d) {
                    if let Some(error) = chunk.get_mut("error").map(Value::take) {
                        // The stream broke after it started (the gateway's
                        // closing error event): the chat failed.
                        return send(
                            agent,
                            json!({"type": "chat.error", "id": id, "status": 502, "error": error}),
                        )
                        .await;
                    }
                    send(
                        agent,
                        json!({"type": "chat.chunk", "id": id, "chunk": chunk}),
                    )
                    .await?;
                }
            }
        }
    }
    send(agent, json!({"type": "chat.error", "id": id, "status": 502,
        "error": {"message": "the stream ended before it was complete", "type": "upstream_error", "code": "upstream_protocol_error"}}))
    .await
}
