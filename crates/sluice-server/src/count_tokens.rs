//! `POST /v1/messages/count_tokens` (Anthropic's token counting): exact from
//! an Anthropic target (forwarded), estimated with the `o200k_base`
//! encoding for every other target. `x-sluice-token-count` says which:
//! `exact`, or `estimated; encoding=o200k_base`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde_json::{Value, json};
use sluice_core::{ErrorKind, GatewayError};
use sluice_providers::translate::Wire;

use crate::app::App;
use crate::extract::ApiBody;
use crate::reply::error_response;

const HEADER: &str = "x-sluice-token-count";
/// Largest count answer relayed from an upstream.
const ANSWER_LIMIT: usize = 64 * 1024;

pub async fn count_tokens(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    ApiBody(body): ApiBody,
) -> Response {
    match count(&app, &headers, body).await {
        Ok(r) => r,
        Err(e) => error_response(&e, Wire::Anthropic),
    }
}

async fn count(app: &Arc<App>, headers: &HeaderMap, body: Bytes) -> Result<Response, GatewayError> {
    let access = app.access.load();
    let key = crate::access::authenticate(&access, headers)?;
    let req: Value = serde_json::from_slice(&body)
        .map_err(|e| GatewayError::new(ErrorKind::InvalidJson, format!("invalid JSON: {e}")))?;
    let model = req["model"].as_str().ok_or_else(|| {
        GatewayError::new(ErrorKind::InvalidRequest, "'model' is required").with_param("model")
    })?;
    let snap = app.snapshot.load_full();
    let route = snap.routes.get(model).ok_or_else(|| {
        GatewayError::new(
            ErrorKind::ModelNotFound,
            format!("The model '{model}' does not exist or is not served by this gateway"),
        )
        .with_param("model")
    })?;
    if let Some(k) = key.filter(|k| !k.allows(&route.name)) {
        return Err(GatewayError::new(
            ErrorKind::Forbidden,
            format!("API key '{}' may not use model '{}'", k.name, route.name),
        )
        .with_param("model"));
    }
    // The first target that can count exactly; the estimate otherwise (or
    // when it cannot be reached).
    for target in &route.targets {
        let upstream = &snap.upstreams[target.provider];
        let (Some(client), Some(mut native)) = (upstream.client.as_ref(), req.as_object().cloned())
        else {
            continue;
        };
        native.insert("model".into(), json!(&*target.model));
        let id = HeaderValue::from_static("count-tokens");
        let Some(up) = upstream
            .adapter
            .count_tokens(Bytes::from(Value::Object(native).to_string()), &id)
        else {
            continue;
        };
        match sluice_providers::transport::send(client, up).await {
            Ok(resp) => return Ok(relay(resp, &snap.scrubber).await),
            Err(e) => tracing::debug!(error = %e, "count_tokens upstream failed; estimating"),
        }
    }
    estimate(req)
}

async fn relay(
    resp: http::Response<sluice_providers::transport::UpstreamBody>,
    scrubber: &sluice_core::scrub::Scrubber,
) -> Response {
    let status = resp.status();
    let bytes = Limited::new(resp.into_body(), ANSWER_LIMIT)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let bytes = Bytes::from(scrubber.scrub_bytes(&bytes).into_owned());
    let mut out = Response::new(Body::from(bytes));
    *out.status_mut() = status;
    let h = out.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(HEADER, HeaderValue::from_static("exact"));
    out
}

fn estimate(mut req: Value) -> Result<Response, GatewayError> {
    // A count request has no max_tokens; the translation wants one.
    if req.get("max_tokens").is_none() {
        req["max_tokens"] = json!(1);
    }
    let chat = sluice_providers::anthropic::inbound::canonical(req.to_string().as_bytes())?;
    let chat: Value = serde_json::from_slice(&chat).unwrap_or(Value::Null);
    let n = sluice_tokens::estimate_chat(&chat);
    let mut out = (StatusCode::OK, axum::Json(json!({"input_tokens": n}))).into_response();
    let label = format!("estimated; encoding={}", sluice_tokens::ENCODING);
    if let Ok(v) = HeaderValue::from_str(&label) {
        out.headers_mut().insert(HEADER, v);
    }
    Ok(out)
}
