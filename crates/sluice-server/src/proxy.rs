//! The request path for chat completions and embeddings: read the body within
//! its limit, peek the fields we act on, pick a target, and hand the request
//! to the provider — as bytes on the same-format fast path.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderName};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Limited};
use sluice_core::config::ProviderKind;
use sluice_core::request::{self, Operation};
use sluice_core::{ErrorKind, GatewayError};
use sluice_providers::{mock, openai, transport};

use crate::app::App;
use crate::observe::{ObservedBody, Recorder};

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub async fn handle(
    app: Arc<App>,
    op: Operation,
    route: &'static str,
    req: Request<Body>,
) -> Response<Body> {
    let rec = Recorder::start(&app, route);
    let request_id = request_id(req.headers());
    let mut resp = proxy(&app, op, req, rec, &request_id).await;
    resp.headers_mut().insert(REQUEST_ID.clone(), request_id);
    resp
}

async fn proxy(
    app: &Arc<App>,
    op: Operation,
    req: Request<Body>,
    mut rec: Recorder,
    request_id: &HeaderValue,
) -> Response<Body> {
    let snap = app.snapshot.load_full();
    let max = snap.config.server.max_body_bytes;
    let body = match read_body(req, max).await {
        Ok(b) => b,
        Err(e) => return rec.reply_error(&e),
    };
    let peek = match request::peek(&body, op) {
        Ok(p) => p,
        Err(e) => return rec.reply_error(&e),
    };
    let Some(route) = snap.routes.get(&peek.model) else {
        let e = GatewayError::new(
            ErrorKind::ModelNotFound,
            format!(
                "The model '{}' does not exist or is not served by this gateway",
                peek.model
            ),
        )
        .with_param("model");
        return rec.reply_error(&e);
    };
    let target = route.pick();
    let provider = &snap.config.providers[target.provider];
    rec.model = route.name.clone();
    rec.provider = provider.name.clone();
    let (stream, include_usage) = (peek.stream, peek.include_usage);

    match provider.kind {
        ProviderKind::OpenAi => {
            let upstream_body = if *target.model == *peek.model {
                body.clone()
            } else {
                Bytes::from(request::rewrite_model(
                    &body,
                    peek.model_span.clone(),
                    &target.model,
                ))
            };
            let client = snap.clients[target.provider]
                .as_ref()
                .expect("snapshot builds a client for every network provider");
            let upstream_req =
                match openai::build_request(provider, op, upstream_body, Some(request_id)) {
                    Ok(r) => r,
                    Err(e) => return rec.reply_error(&e),
                };
            let resp = match transport::send(client, upstream_req, provider.timeout).await {
                Ok(r) => r,
                Err(e) => return rec.reply_error(&e),
            };
            let (parts, incoming) = resp.into_parts();
            rec.set_status(parts.status.as_u16());
            let sse = is_event_stream(&parts.headers);
            let observed = ObservedBody::new(
                incoming.map_err(Into::into).boxed_unsync(),
                rec,
                true,
                Some(provider.idle_timeout),
                sse,
            );
            let mut out = Response::new(Body::new(observed));
            *out.status_mut() = parts.status;
            copy_response_headers(&parts.headers, out.headers_mut());
            out
        }
        ProviderKind::Mock => {
            let cfg = &provider.mock;
            let result = match op {
                Operation::Chat => match mock::chat_reply(cfg, &body) {
                    Ok(reply) => {
                        rec.set_usage(reply.usage);
                        Ok(if stream {
                            mock::chat_stream(cfg, &target.model, reply, include_usage)
                        } else {
                            mock::chat_response(cfg, &target.model, reply).await
                        })
                    }
                    Err(e) => Err(e),
                },
                Operation::Embeddings => {
                    mock::embeddings_response(cfg, &target.model, &body).map(|(r, usage)| {
                        rec.set_usage(usage);
                        r
                    })
                }
            };
            match result {
                Ok(resp) => {
                    rec.set_status(resp.status().as_u16());
                    let (parts, body) = resp.into_parts();
                    let observed = ObservedBody::new(body, rec, false, None, stream);
                    Response::from_parts(parts, Body::new(observed))
                }
                Err(e) => rec.reply_error(&e),
            }
        }
    }
}

/// Reads the whole request body, refusing more than `max` bytes.
async fn read_body(req: Request<Body>, max: usize) -> Result<Bytes, GatewayError> {
    let too_large = || {
        GatewayError::new(
            ErrorKind::PayloadTooLarge,
            format!("request body exceeds the limit of {max} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let body = req.into_body();
    if declared.is_some_and(|n| n > max as u64) {
        drain(body, max).await;
        return Err(too_large());
    }
    match Limited::new(body, max).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(GatewayError::new(
            ErrorKind::InvalidRequest,
            format!("could not read the request body: {e}"),
        )),
    }
}

/// Reads and discards a refused body for a short while, so that a client
/// still sending it gets to read our 413 instead of a reset connection.
async fn drain(body: Body, max: usize) {
    let cap = max.saturating_mul(2).max(1 << 20);
    let _ = tokio::time::timeout(Duration::from_secs(2), Limited::new(body, cap).collect()).await;
}

fn is_event_stream(h: &HeaderMap) -> bool {
    h.get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

/// Relays the upstream's headers except hop-by-hop ones, the length (the body
/// states its own) and cookies (the upstream's session is not the client's).
fn copy_response_headers(from: &HeaderMap, to: &mut HeaderMap) {
    use http::header::{
        CONNECTION, PROXY_AUTHENTICATE, SET_COOKIE, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
    };
    for (name, value) in from {
        let skip = name == CONNECTION
            || name == CONTENT_LENGTH
            || name == TRANSFER_ENCODING
            || name == TE
            || name == TRAILER
            || name == UPGRADE
            || name == PROXY_AUTHENTICATE
            || name == SET_COOKIE
            || name == "keep-alive"
            || name == "proxy-connection";
        if !skip {
            to.append(name.clone(), value.clone());
        }
    }
}

/// The client's `x-request-id` when it is sane, else a fresh one.
fn request_id(h: &HeaderMap) -> HeaderValue {
    if let Some(v) = h.get(&REQUEST_ID)
        && !v.is_empty()
        && v.len() <= 128
    {
        return v.clone();
    }
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let seed = *SEED.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let id = format!("req-{:012x}{:08x}", seed & 0xffff_ffff_ffff, n as u32);
    HeaderValue::try_from(id).expect("hex is a valid header value")
}
