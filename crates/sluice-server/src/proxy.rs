//! The request path for chat completions and embeddings: read the body within
//! its limit, peek the fields we act on, find the model's route and deadline,
//! then let [`crate::attempt`] find a target that answers.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HeaderName};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Limited};
use sluice_core::limits;
use sluice_core::request::{self, Operation};
use sluice_core::{ErrorKind, GatewayError};
use tokio::time::Instant;

use sluice_providers::anthropic::inbound;
use sluice_providers::translate::Wire;

use crate::admission;
use crate::app::App;
use crate::attempt::{self, Call};
use crate::observe::Recorder;

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The client's own deadline for the whole request, in seconds (e.g. `2.5`).
/// It can only narrow the route's timeout.
static REQUEST_TIMEOUT: HeaderName = HeaderName::from_static("x-request-timeout");

pub async fn handle(
    app: Arc<App>,
    op: Operation,
    route: &'static str,
    req: Request<Body>,
) -> Response<Body> {
    let started = Instant::now();
    let mut rec = Recorder::start(&app, route);
    let request_id = request_id(req.headers());
    rec.request_id = Some(request_id.clone());
    // The client's own id, kept apart in the audit event (it may be forged
    // or reused; the event's `id` is the gateway's).
    if app.audit.is_some() {
        rec.client_request_id = req
            .headers()
            .get(&REQUEST_ID)
            .filter(|v| v.len() <= 256)
            .cloned();
    }
    let durable = app.audit.as_ref().is_some_and(|a| a.is_sync()).then(|| {
        let slot = Arc::new(crate::audit::durable::AckSlot::default());
        rec.audit_ack = Some(slot.clone());
        slot
    });
    if let Some(t) = &app.tracing {
        let mut span = t.server_span(req.headers(), route);
        span.str("sluice.request_id", request_id.to_str().unwrap_or_default());
        rec.span = Some(span);
    }
    let mut limits = admission::RateInfo::default();
    let mut resp = proxy(&app, op, req, rec, &request_id, started, &mut limits).await;
    let h = resp.headers_mut();
    h.insert(REQUEST_ID.clone(), request_id);
    limits.write(h);
    match durable {
        Some(slot) => resp.map(|b| Body::new(crate::audit::durable::DurableBody::new(b, slot))),
        None => resp,
    }
}

async fn proxy(
    app: &Arc<App>,
    op: Operation,
    req: Request<Body>,
    mut rec: Recorder,
    request_id: &HeaderValue,
    started: Instant,
    limits: &mut admission::RateInfo,
) -> Response<Body> {
    let snap = app.snapshot.load_full();
    if op == Operation::Messages {
        rec.wire = Wire::Anthropic;
    }
    let access = app.access.load_full();
    let key = match crate::access::authenticate(&access, req.headers()) {
        Ok(k) => k,
        Err(e) => return rec.reply_error(&e),
    };
    rec.key = key.map(|k| k.name.clone());
    if let Err(e) = crate::extract::not_a_form(req.headers()) {
        return rec.reply_error(&e);
    }
    let client_timeout = match client_timeout(req.headers()) {
        Ok(t) => t,
        Err(e) => return rec.reply_error(&e),
    };
    let server = &snap.config.server;
    let body = match read_body(req, server.max_body_bytes, server.body_read_timeout).await {
        Ok(b) => b,
        Err(e) => return rec.reply_error(&e),
    };
    // Reading the client's body is the client's time, not the gateway's.
    rec.excluded = started.elapsed();
    if let Some(a) = app.audit.as_ref().filter(|a| a.wants_fields()) {
        rec.audit_fields = a.fields_of(&body);
    }
    // Prompts redacted before they go anywhere, when configured (the body
    // is checked first, for the precise error a malformed one deserves).
    let body = match redact_prompt(&snap, &body, op) {
        Ok(Some(b)) => b,
        Ok(None) => body,
        Err(e) => return rec.reply_error(&e),
    };
    let peek = match request::peek(&body, op) {
        Ok(p) => p,
        Err(e) => return rec.reply_error(&e),
    };
    rec.streamed = peek.stream;
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
    rec.model = route.name.clone();
    if let Some(k) = key
        && !k.allows(&route.name)
    {
        let e = GatewayError::new(
            ErrorKind::Forbidden,
            format!("API key '{}' may not use model '{}'", k.name, route.name),
        )
        .with_param("model");
        return rec.reply_error(&e);
    }
    if let Some(k) = key
        && let Err(e) = admission::check_budgets(app, &access, k, route.price, &mut rec).await
    {
        return rec.reply_error(&e);
    }
    let estimate = limits::estimate_tokens(body.len(), peek.max_tokens, 1024);
    if let Err(e) =
        admission::rate_limit(app, &access, key, &route.name, estimate, &mut rec, limits).await
    {
        return rec.reply_error(&e);
    }
    if peek.stream
        && let Some(k) = key
        && let Some(gate) = access.limiter.streams.get(&k.name)
    {
        match gate.try_open() {
            Some(p) => rec.stream_permit = Some(p),
            None => {
                app.metrics
                    .limited
                    .get_or_create(&crate::metrics::OutcomeLabels { outcome: "streams" })
                    .inc();
                let e = GatewayError::new(
                    ErrorKind::ConcurrencyLimited,
                    format!(
                        "key '{}' already has {} streams open, its limit; retry when one ends",
                        k.name,
                        gate.max()
                    ),
                );
                return rec.reply_error(&e);
            }
        }
    }
    if let Some(span) = rec.span.as_mut().filter(|s| s.is_recording()) {
        let operation = operation_name(op);
        span.rename(operation, &route.name);
        span.str("gen_ai.operation.name", operation);
        span.str("gen_ai.request.model", &route.name);
        span.flag("sluice.stream", peek.stream);
    }
    let budget = client_timeout.map_or(route.timeout, |t| t.min(route.timeout));

    // Anthropic clients: the request in the OpenAI shape for every target
    // that is not Anthropic; their own body for those that are.
    let canonical;
    let canonical_peek;
    let (op, body_ref, peek_ref, native) = if op == Operation::Messages {
        canonical = match inbound::canonical(&body) {
            Ok(b) => b,
            Err(e) => return rec.reply_error(&e),
        };
        canonical_peek = match request::peek(&canonical, Operation::Chat) {
            Ok(p) => p,
            Err(e) => return rec.reply_error(&e),
        };
        (
            Operation::Chat,
            &canonical,
            &canonical_peek,
            Some((&body, peek.model_span.clone())),
        )
    } else {
        (op, &body, &peek, None)
    };
    let call = Call {
        snap: &snap,
        op,
        client: rec.wire,
        body: body_ref,
        peek: peek_ref,
        native,
        client_model: &peek.model,
        include_usage: peek.include_usage,
        request_id,
        deadline: started + budget,
        budget,
    };
    attempt::run(&call, route, rec).await
}

/// The body with PII redacted from its prompt text, when prompt redaction
/// is on and there was something to redact.
fn redact_prompt(
    snap: &crate::app::Snapshot,
    body: &Bytes,
    op: Operation,
) -> Result<Option<Bytes>, GatewayError> {
    let r = &snap.config.redaction;
    let Some(redactor) = r.redactor.as_ref().filter(|_| r.prompts) else {
        return Ok(None);
    };
    request::peek(body, op)?;
    let mut v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| GatewayError::new(ErrorKind::InvalidJson, format!("invalid JSON: {e}")))?;
    if !sluice_core::pii::redact_request(&mut v, redactor) {
        return Ok(None);
    }
    Ok(Some(Bytes::from(
        serde_json::to_vec(&v).expect("serializing to a Vec cannot fail"),
    )))
}

/// `gen_ai.operation.name` for an endpoint.
pub fn operation_name(op: Operation) -> &'static str {
    match op {
        Operation::Chat | Operation::Messages => "chat",
        Operation::Embeddings => "embeddings",
    }
}

/// Reads the whole request body, refusing more than `max` bytes.
pub(crate) async fn read_body(
    req: Request<Body>,
    max: usize,
    timeout: Duration,
) -> Result<Bytes, GatewayError> {
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
    let Ok(read) = tokio::time::timeout(timeout, Limited::new(body, max).collect()).await else {
        return Err(GatewayError::new(
            ErrorKind::RequestTimeout,
            format!(
                "the request body did not arrive within {} ms",
                timeout.as_millis()
            ),
        ));
    };
    match read {
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

fn client_timeout(h: &HeaderMap) -> Result<Option<Duration>, GatewayError> {
    let Some(v) = h.get(&REQUEST_TIMEOUT) else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0 && *s <= 86_400.0)
        .map(|s| Some(Duration::from_secs_f64(s)))
        .ok_or_else(|| {
            GatewayError::new(
                ErrorKind::InvalidRequest,
                "x-request-timeout must be a number of seconds between 0 and 86400",
            )
        })
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
    // "req-" and 20 hex digits: 12 from the process seed, 8 from a counter.
    let id = (u128::from(seed & 0xffff_ffff_ffff) << 32)
        | u128::from(NEXT.fetch_add(1, Ordering::Relaxed) & 0xffff_ffff);
    let mut buf = *b"req-00000000000000000000";
    for (i, b) in buf[4..].iter_mut().rev().enumerate() {
        *b = b"0123456789abcdef"[((id >> (4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&buf).expect("hex is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_request_ids_are_unique_hex() {
        let h = HeaderMap::new();
        let a = request_id(&h);
        let b = request_id(&h);
        assert_ne!(a, b);
        let s = a.to_str().unwrap();
        assert_eq!(s.len(), 24);
        assert!(s.starts_with("req-"));
        assert!(s[4..].bytes().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn client_request_id_is_kept_when_sane() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("abc"));
        assert_eq!(request_id(&h), "abc");
        h.insert(
            "x-request-id",
            HeaderValue::from_str(&"x".repeat(200)).unwrap(),
        );
        assert_ne!(request_id(&h), "x".repeat(200).as_str());
    }

    #[test]
    fn client_timeout_header() {
        let mut h = HeaderMap::new();
        assert_eq!(client_timeout(&h).unwrap(), None);
        h.insert("x-request-timeout", HeaderValue::from_static("2.5"));
        assert_eq!(
            client_timeout(&h).unwrap(),
            Some(Duration::from_millis(2500))
        );
        for bad in ["0", "-1", "soon", "NaN", "1e9"] {
            h.insert("x-request-timeout", HeaderValue::from_static(bad));
            assert!(client_timeout(&h).is_err(), "{bad}");
        }
    }
}
