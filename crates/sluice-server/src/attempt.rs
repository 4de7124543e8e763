//! Finding a target that answers: pick, try, and on a retryable failure try
//! another target (jittered back-off, honouring `Retry-After`), then the
//! model's fallbacks — all inside the request's deadline, and never once a
//! byte has gone to the client.
//!
//! "Peek before you commit": a 2xx is only passed on once its first body frame
//! has arrived (within the time-to-first-token limit for streams), so an
//! upstream that accepts and then fails or stalls can still be retried.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, BodyStream, Full, Limited, StreamBody as FrameStream};
use hyper::body::Frame;
use sluice_core::config::ProviderKind;
use sluice_core::request::{self, Operation, RequestPeek, Usage};
use sluice_core::resilience::{Outcome, Transition, now_nanos};
use sluice_core::route::{Admitted, ModelRoute, TargetSet, backoff};
use sluice_core::{ErrorKind, GatewayError};
use sluice_providers::anthropic::{outbound, types as at};
use sluice_providers::openai::types::ChatRequest;
use sluice_providers::translate::{self, StreamBody, UsageCell, Wire};
use sluice_providers::{BoxBody, mock, transport};
use tokio::time::{Instant, timeout_at};

use crate::app::{Endpoint, Snapshot};
use crate::observe::{ObservedBody, Recorder, Watch};

/// Everything about one client request that every attempt needs.
pub struct Call<'a> {
    pub snap: &'a Snapshot,
    /// The operation in OpenAI terms (`Chat` for Anthropic clients too).
    pub op: Operation,
    /// The client's wire format.
    pub client: Wire,
    /// The request in the OpenAI shape (for Anthropic clients: translated).
    pub body: &'a Bytes,
    pub peek: &'a RequestPeek<'a>,
    /// An Anthropic client's own body and its `model` span, sent as-is (model
    /// rewritten) to Anthropic targets.
    pub native: Option<(&'a Bytes, Range<usize>)>,
    /// The model name as the client sent it.
    pub client_model: &'a str,
    /// Whether the client asked for the streamed usage chunk (OpenAI clients).
    pub include_usage: bool,
    pub request_id: &'a HeaderValue,
    pub deadline: Instant,
    pub budget: Duration,
}

enum Attempt {
    /// This response goes to the client (after conversion to its format).
    Commit {
        head: http::response::Parts,
        body: BoxBody,
        first: Option<Frame<Bytes>>,
        outcome: Outcome,
        wire: Wire,
        /// Known without reading the body (in-process providers).
        usage: Option<Usage>,
        over_wire: bool,
    },
    /// The client's own fault: answer now, try nothing else.
    Reject(GatewayError),
    /// A retryable failure (connect error, timeout, 5xx, 429, our key refused).
    Retry {
        failure: Failure,
        retry_after: Option<Duration>,
    },
}

enum Failure {
    Error(GatewayError),
    /// The upstream's own error answer, kept to relay if nothing else works.
    Upstream {
        head: http::response::Parts,
        body: Bytes,
        wire: Wire,
    },
}

/// Largest non-streamed response converted between formats in memory.
const CONVERT_LIMIT: usize = 32 << 20;
/// Largest upstream error body kept for relaying.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

pub async fn run(call: &Call<'_>, route: &ModelRoute, mut rec: Recorder) -> Response<Body> {
    let routing = &call.snap.config.routing;
    let max_attempts = route.max_attempts;
    let mut attempts = 0u32;
    let mut last: Option<Failure> = None;
    let chain = std::iter::once(route).chain(
        route
            .fallbacks
            .iter()
            .filter_map(|name| call.snap.routes.get(name)),
    );

    'models: for model in chain {
        let mut tried = TargetSet::default();
        // A target that asked us to come back later, and when.
        let mut comeback: Option<(usize, Duration)> = None;
        loop {
            if attempts >= max_attempts {
                break 'models;
            }
            let remaining = call.deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                last = Some(Failure::Error(deadline_error(call.budget)));
                break 'models;
            }
            let Some(mut adm) = model.admit(now_nanos(), &mut tried) else {
                match comeback.take() {
                    Some((index, wait)) if wait <= routing.max_retry_after && wait < remaining => {
                        tokio::time::sleep(wait).await;
                        tried.remove(index);
                        continue;
                    }
                    _ => break, // on to the next model in the chain
                }
            };
            tried.insert(adm.index);
            if attempts > 0 {
                let pause = backoff(
                    routing.backoff_base,
                    routing.backoff_max,
                    attempts - 1,
                    now_nanos(),
                )
                .min(remaining);
                tokio::time::sleep(pause).await;
            }
            attempts += 1;
            let target = &model.targets[adm.index];
            let provider = &call.snap.config.providers[target.provider];
            rec.model = model.name.clone();
            rec.provider = provider.name.clone();
            let started = Instant::now();

            match attempt(call, model, adm.index).await {
                Attempt::Commit {
                    head,
                    body,
                    first,
                    outcome,
                    wire,
                    usage,
                    over_wire,
                } => {
                    note(&rec, &mut adm, outcome);
                    if outcome == Outcome::Success {
                        adm.state
                            .observe_ttfb(started.elapsed().as_secs_f64() * 1e6);
                    }
                    if let Some(u) = usage {
                        rec.set_usage(u);
                    }
                    rec.set_status(head.status.as_u16());
                    let idle = over_wire.then_some(provider.idle_timeout);
                    let mut out = deliver(call, head, body, first, wire, idle, rec, adm).await;
                    if attempts > 1 {
                        out.headers_mut()
                            .insert("x-sluice-attempts", HeaderValue::from(attempts));
                    }
                    return out;
                }
                Attempt::Reject(e) => {
                    note(&rec, &mut adm, Outcome::Neutral);
                    return rec.reply_error(&e);
                }
                Attempt::Retry {
                    failure,
                    retry_after,
                } => {
                    note(&rec, &mut adm, Outcome::Failure);
                    if let Failure::Error(e) = &failure {
                        rec.app()
                            .metrics
                            .record_upstream_error(&provider.name, e.kind.code());
                    }
                    if let Some(wait) = retry_after {
                        adm.state
                            .cool_until(now_nanos().saturating_add(wait.as_nanos() as u64));
                        comeback = Some((adm.index, wait));
                    }
                    tracing::debug!(
                        model = %model.name, provider = %provider.name, attempt = attempts,
                        "upstream attempt failed; trying another target"
                    );
                    last = Some(failure);
                }
            }
        }
    }

    match last {
        Some(Failure::Upstream { head, body, wire }) => {
            rec.set_status(head.status.as_u16());
            rec.finish();
            relay_error(call, head, body, wire)
        }
        Some(Failure::Error(e)) => rec.reply_error(&e),
        None => {
            rec.provider = rec.app().none_label.clone();
            rec.reply_error(&GatewayError::new(
                ErrorKind::NoHealthyTarget,
                format!(
                    "no healthy target for model '{}': every target is unavailable \
                     (circuit open or cooling down after the provider asked to wait)",
                    route.name
                ),
            ))
        }
    }
}

/// Records the outcome on the target and in the attempt metrics.
fn note(rec: &Recorder, adm: &mut Admitted, outcome: Outcome) {
    let transition = adm.record(outcome, now_nanos());
    let m = &rec.app().metrics;
    m.record_attempt(&rec.model, &rec.provider, outcome);
    if transition == Transition::Tripped {
        tracing::warn!(model = %rec.model, provider = %rec.provider, "circuit opened");
    } else if transition == Transition::Closed {
        tracing::info!(model = %rec.model, provider = %rec.provider, "circuit closed");
    }
}

/// One try against one target.
async fn attempt(call: &Call<'_>, model: &ModelRoute, index: usize) -> Attempt {
    let target = &model.targets[index];
    let provider = &call.snap.config.providers[target.provider];
    let Some(upstream) = call.snap.upstreams[target.provider].as_ref() else {
        debug_assert_eq!(provider.kind, ProviderKind::Mock);
        return mock_attempt(call, provider, &target.model).await;
    };
    let (req, wire) = match &upstream.endpoint {
        Endpoint::OpenAi(e) => {
            let mut body = if *target.model == *call.peek.model {
                call.body.clone()
            } else {
                Bytes::from(request::rewrite_model(
                    call.body,
                    call.peek.model_span.clone(),
                    &target.model,
                ))
            };
            if call.peek.stream && !call.peek.include_usage {
                // Usage is always wanted for accounting; the client sees it
                // only if it asked (the response filter drops it otherwise).
                body = request::force_include_usage(&body);
            }
            (
                e.request(call.op, body, Some(call.request_id)),
                Wire::OpenAi,
            )
        }
        Endpoint::Anthropic(e) => {
            let body = match &call.native {
                Some((native, span)) => {
                    Bytes::from(request::rewrite_model(native, span.clone(), &target.model))
                }
                None => match serde_json::from_slice::<ChatRequest>(call.body) {
                    Ok(req) => Bytes::from(
                        serde_json::to_vec(&outbound::request(
                            req,
                            &target.model,
                            provider.default_max_tokens,
                        ))
                        .expect("serializing to a Vec cannot fail"),
                    ),
                    Err(err) => {
                        return Attempt::Reject(GatewayError::new(
                            ErrorKind::InvalidRequest,
                            format!("invalid request: {err}"),
                        ));
                    }
                },
            };
            if call.op == Operation::Embeddings {
                return Attempt::Reject(GatewayError::new(
                    ErrorKind::UnsupportedOperation,
                    format!(
                        "provider '{}' (anthropic) has no embeddings API",
                        provider.name
                    ),
                ));
            }
            (e.request(body, Some(call.request_id)), Wire::Anthropic)
        }
    };
    let started = Instant::now();
    let head_deadline = (started + provider.timeout).min(call.deadline);
    let resp = match timeout_at(head_deadline, transport::send(&upstream.client, req)).await {
        Err(_) if head_deadline >= call.deadline => return retry(deadline_error(call.budget)),
        Err(_) => {
            return retry(GatewayError::new(
                ErrorKind::UpstreamTimeout,
                format!(
                    "upstream did not respond within {} ms",
                    provider.timeout.as_millis()
                ),
            ));
        }
        Ok(Err(e)) => return retry(e),
        Ok(Ok(r)) => r,
    };
    let status = resp.status();
    let (head, mut incoming) = resp.into_parts();
    if status.is_success() {
        let first_deadline = if call.peek.stream {
            (started + model.ttft_timeout).min(call.deadline)
        } else {
            call.deadline
        };
        let first = match timeout_at(first_deadline, incoming.frame()).await {
            Err(_) if first_deadline >= call.deadline => return retry(deadline_error(call.budget)),
            Err(_) => {
                return retry(GatewayError::new(
                    ErrorKind::UpstreamTimeout,
                    format!(
                        "no first token within {} ms",
                        model.ttft_timeout.as_millis()
                    ),
                ));
            }
            Ok(Some(Err(e))) => {
                return retry(GatewayError::new(
                    ErrorKind::UpstreamProtocol,
                    format!("upstream failed before the first byte: {e}"),
                ));
            }
            Ok(Some(Ok(frame))) => Some(frame),
            Ok(None) => None,
        };
        return Attempt::Commit {
            head,
            body: incoming.map_err(box_err).boxed_unsync(),
            first,
            outcome: Outcome::Success,
            wire,
            usage: None,
            over_wire: true,
        };
    }
    let retryable = status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
        || status == StatusCode::UNAUTHORIZED
        || status == StatusCode::FORBIDDEN;
    if !retryable {
        // The upstream refused the request itself (400, 404, 422, …): another
        // target would say the same. Relay it.
        return Attempt::Commit {
            head,
            body: incoming.map_err(box_err).boxed_unsync(),
            first: None,
            outcome: Outcome::Neutral,
            wire,
            usage: None,
            over_wire: true,
        };
    }
    let retry_after = retry_after(&head.headers);
    let body = timeout_at(
        call.deadline,
        Limited::new(incoming, ERROR_BODY_LIMIT).collect(),
    )
    .await
    .ok()
    .and_then(Result::ok)
    .map(|c| c.to_bytes())
    .unwrap_or_default();
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        // Our credentials for this provider are wrong: not the client's 401,
        // and never with our key in it.
        let said = translate::error_message(wire, &body);
        let key = provider.api_key.as_ref().map(|k| k.expose());
        return retry(GatewayError::new(
            ErrorKind::UpstreamAuth,
            format!(
                "provider '{}' rejected the gateway's credentials ({}): {}",
                provider.name,
                status.as_u16(),
                redact_secrets(&said, key)
            ),
        ));
    }
    Attempt::Retry {
        failure: Failure::Upstream { head, body, wire },
        retry_after,
    }
}

/// The built-in mock: an OpenAI-format answer produced in process.
async fn mock_attempt(
    call: &Call<'_>,
    provider: &sluice_core::config::ProviderConfig,
    model: &str,
) -> Attempt {
    let cfg = &provider.mock;
    let resp = match call.op {
        Operation::Chat | Operation::Messages => match mock::chat_reply(cfg, call.body) {
            Ok(reply) => {
                let usage = reply.usage;
                // Always include the usage chunk: the client filter decides.
                let r = if call.peek.stream {
                    mock::chat_stream(cfg, model, reply, true)
                } else {
                    mock::chat_response(cfg, model, reply).await
                };
                Ok((r, usage))
            }
            Err(e) => Err(e),
        },
        Operation::Embeddings => mock::embeddings_response(cfg, model, call.body),
    };
    match resp {
        Ok((r, usage)) => {
            let (head, body) = r.into_parts();
            Attempt::Commit {
                head,
                body,
                first: None,
                outcome: Outcome::Success,
                wire: Wire::OpenAi,
                usage: Some(usage),
                over_wire: false,
            }
        }
        Err(e) => Attempt::Reject(e),
    }
}

/// Hands a committed response to the client in the client's format.
#[allow(clippy::too_many_arguments)]
async fn deliver(
    call: &Call<'_>,
    head: http::response::Parts,
    body: BoxBody,
    first: Option<Frame<Bytes>>,
    wire: Wire,
    idle: Option<Duration>,
    mut rec: Recorder,
    adm: Admitted,
) -> Response<Body> {
    let status = head.status;
    let mut headers = HeaderMap::new();
    copy_response_headers(&head.headers, &mut headers);
    let stream = call.peek.stream && status.is_success();
    let same_format = wire == call.client;
    let mut watch = Watch {
        usage_tail: false,
        idle,
        deadline: Some(call.deadline),
        sse: stream,
        wire: call.client,
        first: None,
        target: Some(adm),
        usage_cell: None,
    };

    let body: BoxBody = if stream {
        if same_format && wire == Wire::OpenAi && call.include_usage {
            // The pure passthrough: bytes as they come, usage read from the tail.
            watch.usage_tail = true;
            watch.first = first;
            body
        } else {
            let cell = Arc::new(UsageCell::default());
            watch.usage_cell = Some(cell.clone());
            StreamBody::new(
                prepend(first, body),
                wire,
                call.client,
                call.client_model,
                call.include_usage,
                unix_now(),
                cell,
            )
            .boxed_unsync()
        }
    } else if same_format && wire == Wire::OpenAi {
        watch.usage_tail = true;
        watch.first = first;
        body
    } else {
        // A whole JSON body to convert (or an Anthropic body to read usage from).
        let collected = timeout_at(
            call.deadline,
            collect_limited(prepend(first, body), CONVERT_LIMIT),
        )
        .await;
        let bytes = match collected {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                return rec.reply_error(&GatewayError::new(
                    ErrorKind::UpstreamProtocol,
                    format!("could not read the upstream response: {e}"),
                ));
            }
            Err(_) => return rec.reply_error(&deadline_error(call.budget)),
        };
        let converted = if !status.is_success() {
            Ok(
                translate::error_body(wire, call.client, status.as_u16(), &bytes)
                    .map(Bytes::from)
                    .unwrap_or(bytes),
            )
        } else if same_format {
            if let Ok(r) = serde_json::from_slice::<at::MessagesResponse>(&bytes) {
                rec.set_usage(Usage {
                    prompt_tokens: r.usage.prompt_tokens(),
                    completion_tokens: r.usage.output_tokens,
                });
            }
            Ok(bytes)
        } else {
            translate::json_response(wire, call.client, &bytes, call.client_model, unix_now()).map(
                |(out, usage)| {
                    if let Some(u) = usage {
                        rec.set_usage(u);
                    }
                    Bytes::from(out)
                },
            )
        };
        match converted {
            Ok(b) => Full::new(b).map_err(|never| match never {}).boxed_unsync(),
            Err(e) => {
                return rec.reply_error(&GatewayError::new(
                    ErrorKind::UpstreamProtocol,
                    format!("the upstream's response could not be read as {wire:?}: {e}"),
                ));
            }
        }
    };
    let mut out = Response::new(Body::new(ObservedBody::new(body, rec, watch)));
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    out
}

/// The last upstream error, restated in the client's format.
fn relay_error(
    call: &Call<'_>,
    head: http::response::Parts,
    body: Bytes,
    wire: Wire,
) -> Response<Body> {
    let body = translate::error_body(wire, call.client, head.status.as_u16(), &body)
        .map(Bytes::from)
        .unwrap_or(body);
    let mut out = Response::new(Body::from(body));
    *out.status_mut() = head.status;
    copy_response_headers(&head.headers, out.headers_mut());
    if wire != call.client {
        out.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    out
}

fn prepend(first: Option<Frame<Bytes>>, rest: BoxBody) -> BoxBody {
    match first {
        None => rest,
        Some(f) => {
            let head = futures_util::stream::iter([Ok::<_, sluice_providers::BodyError>(f)]);
            let stream = futures_util::StreamExt::chain(head, BodyStream::new(rest));
            FrameStream::new(stream).boxed_unsync()
        }
    }
}

/// A whole body, refusing more than `limit` bytes.
async fn collect_limited(mut body: BoxBody, limit: usize) -> Result<Bytes, String> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(format!("response larger than {limit} bytes"));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

fn box_err(e: hyper::Error) -> sluice_providers::BodyError {
    Box::new(e)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `said` with our key (and anything shaped like an API key) masked.
fn redact_secrets(said: &str, key: Option<&str>) -> String {
    let mut out = match key {
        Some(k) if k.len() >= 4 => said.replace(k, "[redacted]"),
        _ => said.to_owned(),
    };
    // Providers echo a masked key ("sk-abc***xyz"); mask those wholly too.
    let words: Vec<String> = out
        .split(' ')
        .map(|w| {
            if w.starts_with("sk-") || w.starts_with("sk_") || w.contains("***") {
                "[redacted]".to_owned()
            } else {
                w.to_owned()
            }
        })
        .collect();
    out = words.join(" ");
    out
}

fn retry(e: GatewayError) -> Attempt {
    Attempt::Retry {
        failure: Failure::Error(e),
        retry_after: None,
    }
}

fn deadline_error(budget: Duration) -> GatewayError {
    GatewayError::new(
        ErrorKind::UpstreamTimeout,
        format!("request deadline of {} ms exceeded", budget.as_millis()),
    )
}

/// `Retry-After` in seconds (the HTTP-date form is rare from model APIs and
/// is treated as absent), or OpenAI's `retry-after-ms`.
fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let num = |name: &str| {
        h.get(name)?
            .to_str()
            .ok()?
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0 && *v < 86_400_000.0)
    };
    num("retry-after-ms")
        .map(|ms| Duration::from_secs_f64(ms / 1000.0))
        .or_else(|| num("retry-after").map(Duration::from_secs_f64))
}

/// Relays the upstream's headers except hop-by-hop ones, the length (the body
/// states its own) and cookies (the upstream's session is not the client's).
pub fn copy_response_headers(from: &HeaderMap, to: &mut HeaderMap) {
    use http::header::{
        CONNECTION, CONTENT_LENGTH, PROXY_AUTHENTICATE, SET_COOKIE, TE, TRAILER, TRANSFER_ENCODING,
        UPGRADE,
    };
    to.reserve(from.len());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_from_upstream_messages() {
        let said = "Incorrect API key provided: sk-abc***wxyz. Also sk-live-123 and KEY9999.";
        let out = redact_secrets(said, Some("KEY9999."));
        assert!(!out.contains("sk-abc"));
        assert!(!out.contains("sk-live"));
        assert!(!out.contains("KEY9999"));
        assert!(out.starts_with("Incorrect API key provided: [redacted]"));
    }

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert("retry-after-ms", HeaderValue::from_static("250"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(250)));
        let mut h = HeaderMap::new();
        h.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), None);
    }
}
