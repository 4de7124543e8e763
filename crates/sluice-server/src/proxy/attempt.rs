//! Finding a target that answers: pick, try, and on a retryable failure try
//! another target (jittered back-off, honouring `Retry-After`), then the
//! model's fallbacks — all inside the request's deadline, and never once a
//! byte has gone to the client.
//!
//! "Peek before you commit": a 2xx is only passed on once its first body frame
//! has arrived (within the time-to-first-token limit for streams), so an
//! upstream that accepts and then fails or stalls can still be retried.

use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Frame;
use sluice_core::request::Usage;
use sluice_core::resilience::{Outcome, Transition, nanos_at, now_nanos};
use sluice_core::route::{Admitted, ModelRoute, TargetSet, backoff};
use sluice_core::{ErrorKind, GatewayError};
use sluice_providers::adapter::{Outgoing, Prepared};
use sluice_providers::translate::{self, Wire};
use sluice_providers::{BoxBody, transport};
use tokio::time::{Instant, timeout_at};

use super::call::{Call, deadline_error, retry_after};
use super::deliver::{deliver, relay_error};
use super::record::Recorder;
use crate::telemetry::Span;

/// A response that goes to the client.
struct Committed {
    head: http::response::Parts,
    body: BoxBody,
    first: Option<Frame<Bytes>>,
    outcome: Outcome,
    wire: Wire,
    /// Known without reading the body (in-process providers).
    usage: Option<Usage>,
    over_wire: bool,
}

enum Attempt {
    /// This response goes to the client (after conversion to its format).
    Commit(Committed),
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
            // One clock read for the deadline, the admission and the
            // attempt's start, unless a pause comes between them.
            let mut started = Instant::now();
            let remaining = call.deadline.saturating_duration_since(started);
            if remaining.is_zero() {
                last = Some(Failure::Error(deadline_error(call.budget)));
                break 'models;
            }
            let Some(mut adm) = model.admit(nanos_at(started.into_std()), &mut tried) else {
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
                rec.excluded += pause;
                started = Instant::now();
            }
            attempts += 1;
            rec.attempts = attempts;
            let target = &model.targets[adm.index];
            let provider = &call.snap.config.providers[target.provider];
            rec.model = model.name.clone();
            rec.provider = provider.name.clone();
            let (mut span, traceparent) =
                attempt_span(call, &rec, provider, &target.model, attempts);
            match attempt(call, model, adm.index, traceparent, started).await {
                Attempt::Commit(c) => {
                    let answered = Answered {
                        started,
                        span: span.take(),
                        idle: c.over_wire.then_some(provider.idle_timeout),
                        attempts,
                    };
                    return commit(call, rec, adm, c, answered).await;
                }
                Attempt::Reject(e) => {
                    if let Some(mut s) = span.take() {
                        s.fail(e.kind.code(), &e.message);
                        s.end();
                    }
                    note(&rec, &mut adm, Outcome::Neutral, now_nanos());
                    return rec.reply_error(&e);
                }
                Attempt::Retry {
                    failure,
                    retry_after,
                } => {
                    rec.excluded += started.elapsed();
                    failed(&rec, &mut adm, span.take(), &failure, provider);
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

    give_up(call, route, rec, last)
}

/// How the committed attempt went, for its delivery.
struct Answered {
    started: Instant,
    span: Option<Span>,
    /// The longest silence allowed between body frames (network upstreams).
    idle: Option<Duration>,
    attempts: u32,
}

/// Records the committed attempt and delivers its response.
async fn commit(
    call: &Call<'_>,
    mut rec: Recorder,
    mut adm: Admitted,
    c: Committed,
    a: Answered,
) -> Response<Body> {
    // One clock read for the breaker and the time to first byte.
    let now = Instant::now();
    note(&rec, &mut adm, c.outcome, nanos_at(now.into_std()));
    if c.outcome == Outcome::Success {
        adm.state
            .observe_ttfb(now.saturating_duration_since(a.started).as_secs_f64() * 1e6);
    }
    if let Some(u) = c.usage {
        rec.set_usage(u);
    }
    rec.upstream_started = Some(a.started);
    rec.set_status(c.head.status.as_u16());
    if let Some(mut s) = a.span {
        s.int(
            "http.response.status_code",
            i64::from(c.head.status.as_u16()),
        );
        rec.attempt_span = Some(s);
    }
    let mut out = deliver(call, c.head, c.body, c.first, c.wire, a.idle, rec, adm).await;
    if a.attempts > 1 {
        out.headers_mut()
            .insert("x-sluice-attempts", HeaderValue::from(a.attempts));
    }
    out
}

/// Nothing answered: the last upstream error relayed, the last error of
/// the gateway's own, or (no target could even be tried) when one will be
/// available again.
fn give_up(
    call: &Call<'_>,
    route: &ModelRoute,
    mut rec: Recorder,
    last: Option<Failure>,
) -> Response<Body> {
    match last {
        Some(Failure::Upstream { head, body, wire }) => {
            rec.set_status(head.status.as_u16());
            rec.finish();
            relay_error(call, head, body, wire)
        }
        Some(Failure::Error(e)) => rec.reply_error(&e),
        None => {
            rec.provider = rec.app().none_label.clone();
            // Say when a target will be back: the soonest of the chain's.
            let now = now_nanos();
            let back = std::iter::once(route)
                .chain(
                    route
                        .fallbacks
                        .iter()
                        .filter_map(|n| call.snap.routes.get(n)),
                )
                .filter_map(|m| m.next_available(now))
                .min();
            let mut out = rec.reply_error(&GatewayError::new(
                ErrorKind::NoHealthyTarget,
                format!(
                    "no healthy target for model '{}': every target is unavailable \
                     (circuit open or cooling down after the provider asked to wait)",
                    route.name
                ),
            ));
            if let Some(at) = back {
                // Whole seconds, rounded up, at least one.
                let secs = at.saturating_sub(now).div_ceil(1_000_000_000).max(1);
                out.headers_mut()
                    .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
            }
            out
        }
    }
}

/// The attempt's client span (sampled requests), and the trace context to
/// send upstream: the attempt's, or the request's when unsampled.
fn attempt_span(
    call: &Call<'_>,
    rec: &Recorder,
    provider: &sluice_core::config::ProviderConfig,
    model: &std::sync::Arc<str>,
    attempts: u32,
) -> (Option<Span>, Option<(HeaderValue, Option<HeaderValue>)>) {
    let span = match (&rec.app().tracing, &rec.span) {
        (Some(t), Some(parent)) => t.attempt_span(
            parent,
            super::call::operation_name(call.op),
            (
                sluice_providers::adapter::genai_provider(provider),
                &provider.name,
            ),
            model,
            attempts,
        ),
        _ => None,
    };
    let traceparent = match (&span, &rec.span) {
        (Some(s), _) | (None, Some(s)) => {
            Some((s.context().traceparent(), s.trace_state().cloned()))
        }
        (None, None) => None,
    };
    (span, traceparent)
}

/// A failed attempt: its span ended with the reason, the target's breaker
/// and the metrics told.
fn failed(
    rec: &Recorder,
    adm: &mut Admitted,
    span: Option<Span>,
    failure: &Failure,
    provider: &sluice_core::config::ProviderConfig,
) {
    if let Some(mut s) = span {
        let (kind, msg) = match failure {
            Failure::Error(e) => (e.kind.code(), e.message.to_string()),
            Failure::Upstream { head, .. } => (
                "upstream_status",
                format!("status {}", head.status.as_u16()),
            ),
        };
        if let Failure::Upstream { head, .. } = failure {
            s.int("http.response.status_code", i64::from(head.status.as_u16()));
        }
        s.fail(kind, &msg);
        s.end();
    }
    note(rec, adm, Outcome::Failure, now_nanos());
    if let Failure::Error(e) = failure {
        rec.app()
            .metrics
            .record_upstream_error(&provider.name, e.kind.code());
    }
}

/// Records the outcome on the target and in the attempt metrics.
/// `at` is [`now_nanos`], or the same read a caller made already.
fn note(rec: &Recorder, adm: &mut Admitted, outcome: Outcome, at: u64) {
    let transition = adm.record(outcome, at);
    let m = &rec.app().metrics;
    m.record_attempt(&rec.model, &rec.provider, outcome);
    let code = match outcome {
        Outcome::Success => 0,
        Outcome::Failure => 1,
        Outcome::Neutral => 2,
    };
    sluice_core::probes::upstream_attempt(&rec.model, &rec.provider, rec.attempts, code);
    if transition != Transition::None {
        sluice_core::probes::breaker(&rec.model, &rec.provider, transition == Transition::Tripped);
    }
    if transition == Transition::Tripped {
        tracing::warn!(model = %rec.model, provider = %rec.provider, "circuit opened");
    } else if transition == Transition::Closed {
        tracing::info!(model = %rec.model, provider = %rec.provider, "circuit closed");
    }
}

/// One try against one target.
async fn attempt(
    call: &Call<'_>,
    model: &ModelRoute,
    index: usize,
    // `traceparent` and the client's `tracestate`, to pass on.
    traceparent: Option<(HeaderValue, Option<HeaderValue>)>,
    // When it started: its deadlines count from then.
    started: Instant,
) -> Attempt {
    let target = &model.targets[index];
    let provider = &call.snap.config.providers[target.provider];
    let upstream = &call.snap.upstreams[target.provider];
    let whole;
    // Boxed (it is large, and rarely more than a check), and made in its
    // box rather than copied in.
    let before = Box::write(
        Box::new_uninit(),
        super::upload::before_attempt(call, upstream),
    );
    let (body, started) = match Box::into_pin(before).await {
        // Reading the upload was the client's time.
        Ok(Some(b)) => {
            whole = b;
            (&whole, Instant::now())
        }
        Ok(None) => (call.body, started),
        Err(e) => return Attempt::Reject(e),
    };
    let outgoing = Outgoing {
        op: call.op,
        body,
        peek: call.peek,
        native: call.native.clone(),
        request_id: call.request_id,
        content_type: call.content_type,
        untranslatable: call.untranslatable,
    };
    let req = match upstream
        .adapter
        .prepare(&outgoing, provider, &target.model)
        .await
    {
        Ok(Prepared::Http(req)) => req,
        Ok(Prepared::Local(resp, usage)) => {
            let (head, body) = resp.into_parts();
            return Attempt::Commit(Committed {
                head,
                body,
                first: None,
                outcome: Outcome::Success,
                wire: upstream.adapter.wire(call.op),
                usage: Some(usage),
                over_wire: false,
            });
        }
        Err(e) => return failure(e),
    };
    let wire = upstream.adapter.wire(call.op);
    let Some(client) = &upstream.client else {
        return Attempt::Reject(GatewayError::new(
            ErrorKind::Internal,
            format!("provider '{}' has no connection pool", provider.name),
        ));
    };
    let mut req = req;
    if let Some((tp, state)) = traceparent {
        let h = req.headers_mut();
        h.insert(http::HeaderName::from_static("traceparent"), tp);
        if let Some(state) = state {
            h.insert(http::HeaderName::from_static("tracestate"), state);
        }
    }
    let head_deadline = (started + provider.timeout).min(call.deadline);
    let send = async {
        match call.upload {
            Some(u) => Box::pin(super::upload::send(u, upstream, provider, req)).await,
            None => transport::send(client, req).await,
        }
    };
    let resp = match timeout_at(head_deadline, send).await {
        Err(_) if head_deadline >= call.deadline => return failure(deadline_error(call.budget)),
        Err(_) => {
            return failure(GatewayError::new(
                ErrorKind::UpstreamTimeout,
                format!(
                    "upstream did not respond within {} ms",
                    provider.timeout.as_millis()
                ),
            ));
        }
        Ok(Err(e)) => return failure(e),
        Ok(Ok(r)) => r,
    };
    let (head, incoming) = resp.into_parts();
    if head.status.is_success() {
        accepted(call, model, started, head, incoming, wire).await
    } else {
        refused(call, provider, head, incoming, wire).await
    }
}

/// A 2xx: committed once its first frame arrived in time and starts like
/// the kind of body asked for; otherwise a failure another target may not
/// repeat.
async fn accepted(
    call: &Call<'_>,
    model: &ModelRoute,
    started: Instant,
    head: http::response::Parts,
    mut incoming: transport::UpstreamBody,
    wire: Wire,
) -> Attempt {
    let first_deadline = if call.peek.stream {
        (started + model.ttft_timeout).min(call.deadline)
    } else {
        call.deadline
    };
    let first = match timeout_at(first_deadline, first_frame(&mut incoming)).await {
        Err(_) if first_deadline >= call.deadline => return failure(deadline_error(call.budget)),
        Err(_) => {
            return failure(GatewayError::new(
                ErrorKind::UpstreamTimeout,
                format!(
                    "no first token within {} ms",
                    model.ttft_timeout.as_millis()
                ),
            ));
        }
        Ok(Some(Err(e))) => {
            return failure(GatewayError::new(
                ErrorKind::UpstreamProtocol,
                format!("upstream failed before the first byte: {e}"),
            ));
        }
        Ok(Some(Ok(frame))) => Some(frame),
        Ok(None) => None,
    };
    // A 200 that is not the kind of body asked for (an HTML page from a
    // proxy, JSON for a stream, nothing) is the upstream's failure, and
    // another target may do better: nothing has reached the client yet.
    let start = first
        .as_ref()
        .and_then(Frame::data_ref)
        .map_or(&[][..], |b| &b[..]);
    let json = match call.op {
        sluice_core::request::Operation::Media(m) => m.answers_json(),
        _ => true,
    };
    let checked = if json {
        sluice_providers::check::body_start(call.peek.stream, start)
    } else {
        Ok(())
    };
    if let Err(m) = checked {
        return failure(GatewayError::new(ErrorKind::UpstreamProtocol, m));
    }
    Attempt::Commit(Committed {
        head,
        body: incoming.boxed_unsync(),
        first,
        outcome: Outcome::Success,
        wire,
        usage: None,
        over_wire: true,
    })
}

/// An upstream's refusal: relayed when it is about the request (another
/// target would say the same), retried when it is the upstream's state or
/// the gateway's credentials.
async fn refused(
    call: &Call<'_>,
    provider: &sluice_core::config::ProviderConfig,
    head: http::response::Parts,
    incoming: transport::UpstreamBody,
    wire: Wire,
) -> Attempt {
    let status = head.status;
    if !sluice_core::error::upstream_status_retryable(status.as_u16()) {
        // The upstream refused the request itself (400, 404, 422, …): another
        // target would say the same. Relay it.
        return Attempt::Commit(Committed {
            head,
            body: incoming.boxed_unsync(),
            first: None,
            outcome: Outcome::Neutral,
            wire,
            usage: None,
            over_wire: true,
        });
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
        return failure(GatewayError::new(
            ErrorKind::UpstreamAuth,
            format!(
                "provider '{}' rejected the gateway's credentials ({}): {}",
                provider.name,
                status.as_u16(),
                call.snap.scrubber.scrub(&said)
            ),
        ));
    }
    Attempt::Retry {
        failure: Failure::Upstream { head, body, wire },
        retry_after,
    }
}

/// The body's first frame with something in it: leading whitespace (which
/// some servers send to keep a slow non-streamed answer alive) is joined to
/// what follows, so the start of the body can be judged.
async fn first_frame(
    body: &mut transport::UpstreamBody,
) -> Option<Result<Frame<Bytes>, sluice_providers::BodyError>> {
    const MAX_HELD: usize = 64 * 1024;
    let mut held: Option<bytes::BytesMut> = None;
    loop {
        let data = match body.frame().await {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(d) => d,
                Err(frame) if held.is_none() => return Some(Ok(frame)),
                Err(_) => continue, // trailers after whitespace: nothing to keep
            },
            Some(Err(e)) => return Some(Err(e)),
            None => return held.map(|h| Ok(Frame::data(h.freeze()))),
        };
        let Some(h) = held.as_mut() else {
            if !data.trim_ascii().is_empty() {
                return Some(Ok(Frame::data(data)));
            }
            held = Some(bytes::BytesMut::from(&data[..]));
            continue;
        };
        h.extend_from_slice(&data);
        if !h.trim_ascii().is_empty() || h.len() > MAX_HELD {
            return held.map(|h| Ok(Frame::data(h.freeze())));
        }
    }
}

/// A failed attempt, retried or not by what kind of failure it is.
fn failure(e: GatewayError) -> Attempt {
    if e.kind.retryable() {
        Attempt::Retry {
            failure: Failure::Error(e),
            retry_after: None,
        }
    } else {
        Attempt::Reject(e)
    }
}

#[cfg(test)]
mod sizes {
    use std::mem::size_of;

    // The size of what an async fn returns, from its type alone: nothing
    // is called.
    fn ret2<A, B, R>(_: &impl FnOnce(A, B) -> R) -> usize {
        size_of::<R>()
    }
    fn ret3<A, B, C, R>(_: &impl FnOnce(A, B, C) -> R) -> usize {
        size_of::<R>()
    }
    fn ret5<A, B, C, D, E, R>(_: &impl FnOnce(A, B, C, D, E) -> R) -> usize {
        size_of::<R>()
    }

    /// What one in-flight request holds before anything it allocates: the
    /// state machines of the request path, nested. Printed for the bench
    /// notes (`--nocapture`), bounded so that growth is a decision.
    #[test]
    fn request_state_machines_stay_bounded() {
        let serve = ret2(&super::super::serve);
        let run = ret3(&super::run);
        let attempt = ret5(&super::attempt);
        let recorder = size_of::<super::Recorder>();
        eprintln!("bytes: serve {serve}, run {run}, attempt {attempt}, recorder {recorder}");
        // 11,040 bytes in a debug build while the recorder (768 bytes) was
        // held by value in four nested futures; 4,992 with it boxed.
        assert!(
            serve <= 6 * 1024,
            "the request future grew to {serve} bytes"
        );
        assert!(recorder <= 16, "the recorder is a pointer");
        assert!(run < serve && attempt < run);
    }
}
