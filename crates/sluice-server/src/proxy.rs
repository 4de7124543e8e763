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
use sluice_core::request::{self, Operation};
use sluice_core::{ErrorKind, GatewayError};
use tokio::time::Instant;

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
    let rec = Recorder::start(&app, route);
    let request_id = request_id(req.headers());
    let mut resp = proxy(&app, op, req, rec, &request_id, started).await;
    resp.headers_mut().insert(REQUEST_ID.clone(), request_id);
    resp
}

async fn proxy(
    app: &Arc<App>,
    op: Operation,
    req: Request<Body>,
    mut rec: Recorder,
    request_id: &HeaderValue,
    started: Instant,
) -> Response<Body> {
    let snap = app.snapshot.load_full();
    let client_timeout = match client_timeout(req.headers()) {
        Ok(t) => t,
        Err(e) => return rec.reply_error(&e),
    };
    let body = match read_body(req, snap.config.server.max_body_bytes).await {
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
    rec.model = route.name.clone();
    let budget = client_timeout.map_or(route.timeout, |t| t.min(route.timeout));
    let call = Call {
        snap: &snap,
        op,
        body: &body,
        peek: &peek,
        request_id,
        deadline: started + budget,
        budget,
    };
    attempt::run(&call, route, rec).await
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
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let id = format!("req-{:012x}{:08x}", seed & 0xffff_ffff_ffff, n as u32);
    HeaderValue::try_from(id).expect("hex is a valid header value")
}
