//! Settling a request's accounting, whatever way it ends.
//!
//! A [`Recorder`] is created when a request arrives and settles on drop: a
//! handler that returns, a stream that ends, and a client that goes away in
//! the middle are all counted, the last as a cancel (status 499). The
//! [`ObservedBody`] carries the recorder through a streamed response, reads
//! usage from its tail, and turns a broken or silent upstream into an error
//! the client can see.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::telemetry::Span;
use axum::body::Body;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body::{Body as _, Frame, SizeHint};
use sluice_core::config::Sampling;
use sluice_core::request::Usage;
use sluice_core::resilience::{Outcome, now_nanos};
use sluice_core::route::Admitted;
use sluice_core::{ErrorKind, GatewayError};
use sluice_providers::check::StreamCheck;
use sluice_providers::openai::UsageTail;
use sluice_providers::translate::{UsageCell, Wire};
use sluice_providers::{BodyError, BoxBody};
use tokio::time::{Instant, Sleep};

use crate::app::App;

/// nginx's convention for "the client closed the request".
pub const STATUS_CLIENT_CLOSED: u16 = 499;

pub struct Recorder {
    app: Arc<App>,
    route: &'static str,
    pub model: Arc<str>,
    pub provider: Arc<str>,
    status: u16,
    start: Instant,
    first_byte_seen: bool,
    first_byte_at: Option<Duration>,
    /// The client asked for a stream.
    pub streamed: bool,
    /// When the committed upstream attempt started.
    pub upstream_started: Option<Instant>,
    /// Time spent outside the gateway's own work before the committed
    /// attempt: reading the client's body, failed attempts, back-off waits.
    pub excluded: Duration,
    usage: Option<Usage>,
    finished: bool,
    /// The client's wire format, for error bodies.
    pub wire: Wire,
    pub request_id: Option<http::HeaderValue>,
    /// The client's own `x-request-id` (audit only).
    pub client_request_id: Option<http::HeaderValue>,
    /// With `[audit] durability = "sync"`: where the writer's answer goes,
    /// for the response body to wait on.
    pub audit_ack: Option<Arc<crate::audit::durable::AckSlot>>,
    /// The virtual key's name, when keys are configured.
    pub key: Option<Arc<str>>,
    /// Token reservations to settle against the real usage.
    pub reservations: Vec<sluice_core::limits::Reservation>,
    /// Upstream attempts made (for the access log).
    pub attempts: u32,
    sampling: Sampling,
    access_log: bool,
    /// The request's server span (tracing on only).
    pub span: Option<Span>,
    /// The client span of the attempt whose answer is being delivered.
    pub attempt_span: Option<Span>,
    /// The request's recorded fields, already encrypted or redacted
    /// (audit on only).
    pub audit_fields: Option<serde_json::Map<String, serde_json::Value>>,
    /// The gateway's error code, when it answered with one.
    error_code: Option<&'static str>,
    /// A committed stream broke: the answer failed though its status is 2xx.
    stream_failed: bool,
    /// The key's token budget, charged with the usage at the end.
    pub budget: Option<crate::shared_limits::BudgetCharge>,
    /// Tokens reserved in the shared (Redis) limiter, to settle.
    pub shared_reservation: Option<crate::shared_limits::SharedReservation>,
    /// Held while a streamed response is open (per-key stream limit).
    pub stream_permit: Option<sluice_core::limits::StreamPermit>,
}

impl Recorder {
    pub fn start(app: &Arc<App>, route: &'static str) -> Self {
        app.metrics.active_requests.inc();
        let logging = &app.snapshot.load().config.logging;
        let (sampling, access_log) = (logging.sampling_for(route), logging.access_log);
        Self {
            app: app.clone(),
            route,
            model: app.none_label.clone(),
            provider: app.none_label.clone(),
            status: STATUS_CLIENT_CLOSED,
            start: Instant::now(),
            first_byte_seen: false,
            first_byte_at: None,
            streamed: false,
            upstream_started: None,
            excluded: Duration::ZERO,
            usage: None,
            finished: false,
            wire: Wire::OpenAi,
            request_id: None,
            client_request_id: None,
            audit_ack: None,
            key: None,
            reservations: Vec::new(),
            attempts: 0,
            sampling,
            access_log,
            span: None,
            attempt_span: None,
            audit_fields: None,
            error_code: None,
            stream_failed: false,
            stream_permit: None,
            shared_reservation: None,
            budget: None,
        }
    }

    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    pub fn set_status(&mut self, status: u16) {
        self.status = status;
    }

    pub fn set_usage(&mut self, usage: Usage) {
        self.usage = Some(usage);
    }

    /// `gen_ai.response.model` and `gen_ai.response.finish_reasons` on the
    /// server span and the answering attempt's span.
    pub fn set_response_meta(&mut self, model: Option<String>, reasons: Vec<String>) {
        for span in [self.span.as_mut(), self.attempt_span.as_mut()]
            .into_iter()
            .flatten()
        {
            if let Some(m) = &model {
                span.str("gen_ai.response.model", m);
            }
            if !reasons.is_empty() {
                span.strs("gen_ai.response.finish_reasons", &reasons);
            }
        }
    }

    pub fn mark_first_byte(&mut self) {
        if !self.first_byte_seen {
            self.first_byte_seen = true;
            let at = self.start.elapsed();
            self.first_byte_at = Some(at);
            if let Some(span) = self.span.as_mut().filter(|s| s.is_recording()) {
                span.event("gen_ai.first_token");
                span.float("gen_ai.server.time_to_first_token", at.as_secs_f64());
            }
            if !self.provider.is_empty() {
                self.app.metrics.record_first_byte(
                    &self.model,
                    &self.provider,
                    self.start.elapsed(),
                );
            }
        }
    }

    /// Counts the request as answered with its current status.
    pub fn finish(mut self) {
        self.finished = true;
        // Drop settles.
    }

    /// A stream already committed with a 2xx broke with `e`: the request
    /// is recorded as failed (audit `error`, the span's status) all the same.
    pub fn stream_failed(&mut self, e: &GatewayError) {
        self.error_code = Some(e.kind.code());
        self.stream_failed = true;
    }

    /// Counts `e` as the answer and renders it as the OpenAI error body.
    pub fn reply_error(mut self, e: &GatewayError) -> Response<Body> {
        self.status = e.status();
        self.error_code = Some(e.kind.code());
        if e.kind.source() == sluice_core::error::Source::Upstream {
            self.app
                .metrics
                .record_upstream_error(&self.provider, e.kind.code());
        }
        let wire = self.wire;
        self.finish();
        error_response(e, wire)
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let m = &self.app.metrics;
        m.active_requests.dec();
        if !self.finished {
            self.status = STATUS_CLIENT_CLOSED;
            m.record_cancel(&self.model, &self.provider);
        }
        if let Some(u) = self.usage {
            m.record_usage(&self.model, &self.provider, u);
        }
        if !self.reservations.is_empty() {
            // Unknown usage keeps the whole reservation charged.
            let now = crate::app::now_secs();
            for r in &self.reservations {
                let used = self
                    .usage
                    .map_or(r.tokens, |u| (u.prompt_tokens + u.completion_tokens) as f64);
                r.settle(used, now);
            }
        }
        if let (Some(b), Some(u)) = (self.budget.take(), self.usage) {
            b.charge(u.prompt_tokens, u.completion_tokens);
        }
        if let Some(r) = self.shared_reservation.take() {
            r.settle(
                self.usage
                    .map(|u| (u.prompt_tokens + u.completion_tokens) as f64),
            );
        }
        let elapsed = self.start.elapsed();
        let labels = crate::metrics::RequestLabels {
            route: self.route,
            model: self.model.clone(),
            provider: self.provider.clone(),
            status: self.status,
        };
        m.record_request(&labels, elapsed);
        if !self.provider.is_empty() {
            let upstream = self.upstream_started.map(|t| t.elapsed());
            m.record_genai(&crate::metrics::GenAi {
                route: self.route,
                model: &self.model,
                provider: &self.provider,
                status: self.status,
                total: elapsed,
                upstream,
                overhead: upstream.map(|u| elapsed.saturating_sub(u).saturating_sub(self.excluded)),
                ttft: self.first_byte_at.filter(|_| self.streamed),
                usage: self.usage,
            });
        }
        // Logged with the access line: set whenever tracing is on, sampled
        // or not (the id also went upstream in `traceparent`).
        let trace_id = self.span.as_ref().map(|s| s.context().trace_id);
        self.end_spans();
        if self.app.audit.is_some() {
            self.audit(elapsed);
        }
        if self.access_log
            && crate::logging::should_log(
                self.sampling,
                self.status,
                elapsed,
                crate::logging::draw(),
            )
        {
            let (input, output) = self.usage.map_or((None, None), |u| {
                (Some(u.prompt_tokens), Some(u.completion_tokens))
            });
            tracing::info!(
                target: "sluice::access",
                request_id = self.request_id.as_ref().and_then(|v| v.to_str().ok()),
                trace_id = trace_id.map(|t| tracing::field::display(crate::telemetry::TraceId(t))),
                key = self.key.as_deref(),
                route = self.route,
                model = &*self.model,
                provider = &*self.provider,
                status = self.status,
                latency_ms = elapsed.as_secs_f64() * 1000.0,
                input_tokens = input,
                output_tokens = output,
                attempts = self.attempts,
                cancelled = !self.finished,
                "request"
            );
        }
    }
}

impl Recorder {
    /// Hands the request's audit event to the writer.
    fn audit(&mut self, elapsed: Duration) {
        let Some(auditor) = &self.app.audit else {
            return;
        };
        let fields = self.audit_fields.take();
        fn nonempty(s: &Arc<str>) -> Option<&str> {
            (!s.is_empty()).then_some(&**s)
        }
        let durable = auditor.record(&crate::audit::Event {
            id: crate::audit::Auditor::new_id(),
            client_request_id: self
                .client_request_id
                .as_ref()
                .and_then(|v| v.to_str().ok()),
            ts: sluice_core::config::time::format_rfc3339_millis(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
            ),
            request_id: self.request_id.as_ref().and_then(|v| v.to_str().ok()),
            key: self.key.as_deref(),
            route: self.route,
            model: nonempty(&self.model),
            provider: nonempty(&self.provider),
            status: self.status,
            latency_ms: elapsed.as_secs_f64() * 1000.0,
            stream: self.streamed,
            attempts: self.attempts,
            cancelled: !self.finished,
            input_tokens: self.usage.map(|u| u.prompt_tokens),
            output_tokens: self.usage.map(|u| u.completion_tokens),
            error: self.error_code,
            fields: fields.as_ref(),
        });
        if let (Some(rx), Some(slot)) = (durable, &self.audit_ack) {
            slot.put(rx);
        }
    }

    /// Ends the attempt and server spans with what the request came to.
    fn end_spans(&mut self) {
        let usage = |span: &mut Span, usage: Option<Usage>| {
            if let Some(u) = usage {
                span.int("gen_ai.usage.input_tokens", u.prompt_tokens as i64);
                span.int("gen_ai.usage.output_tokens", u.completion_tokens as i64);
            }
        };
        if let Some(mut span) = self.attempt_span.take() {
            usage(&mut span, self.usage);
            if !self.finished {
                span.flag("sluice.cancelled", true);
            }
            span.end();
        }
        if let Some(mut span) = self.span.take().filter(Span::is_recording) {
            span.int("http.response.status_code", i64::from(self.status));
            span.int("sluice.attempts", i64::from(self.attempts));
            if !self.provider.is_empty() {
                span.str("sluice.provider", &self.provider);
            }
            usage(&mut span, self.usage);
            if self.status >= 500 || self.stream_failed {
                let status = self.status.to_string();
                span.fail(
                    self.error_code.unwrap_or(&status),
                    &format!("status {status}"),
                );
            }
            span.end();
        }
    }
}

pub fn error_response(e: &GatewayError, wire: Wire) -> Response<Body> {
    let body = match wire {
        Wire::Anthropic => e.to_anthropic_json(),
        Wire::OpenAi | Wire::Gemini => e.to_openai_json(),
    };
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_GATEWAY);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// How a passed-through body is watched.
pub struct Watch {
    /// Read usage from the bytes (providers over the wire).
    pub usage_tail: bool,
    /// Longest silence allowed between frames.
    pub idle: Option<Duration>,
    /// The request's overall deadline.
    pub deadline: Option<Instant>,
    /// Failures become an SSE error event rather than a cut connection.
    pub sse: bool,
    /// The client's wire format, for that error event.
    pub wire: Wire,
    /// Where a translating body leaves the usage it read.
    pub usage_cell: Option<Arc<UsageCell>>,
    /// A frame already read (peeked) from `inner`, to send first.
    pub first: Option<Frame<Bytes>>,
    /// The target serving it: released when the body ends; told of failures.
    pub target: Option<Admitted>,
}

/// A response body passed through from a provider, observed on the way.
pub struct ObservedBody {
    inner: BoxBody,
    rec: Option<Recorder>,
    tail: Option<UsageTail>,
    timer: Option<Pin<Box<Sleep>>>,
    idle: Option<Duration>,
    deadline: Option<Instant>,
    sse: bool,
    wire: Wire,
    usage_cell: Option<Arc<UsageCell>>,
    first: Option<Frame<Bytes>>,
    target: Option<Admitted>,
    /// Counted in the active-streams gauge until settled or dropped.
    stream_counted: Option<Arc<App>>,
    done: bool,
    /// The tail of what the client got, kept only while a trace records
    /// it: for `gen_ai.response.model` and `gen_ai.response.finish_reasons`.
    meta_tail: Option<UsageTail>,
    /// An OpenAI stream passed through as bytes: checked to be whole JSON
    /// events ending in `[DONE]` (translated streams check themselves).
    check: Option<StreamCheck>,
    /// The passed-through stream ended badly after a good last frame.
    end_error: Option<GatewayError>,
}

impl ObservedBody {
    pub fn new(inner: BoxBody, rec: Recorder, w: Watch) -> Self {
        let tail = w.usage_tail.then(UsageTail::default);
        let recording = rec.span.as_ref().is_some_and(|s| s.is_recording());
        let meta_tail = (recording && tail.is_none()).then(UsageTail::default);
        let check = (w.usage_tail && w.sse).then(StreamCheck::default);
        let stream_counted = w.sse.then(|| {
            rec.app.metrics.active_streams.inc();
            rec.app.clone()
        });
        let mut this = Self {
            inner,
            rec: Some(rec),
            tail,
            timer: None,
            idle: w.idle,
            deadline: w.deadline,
            sse: w.sse,
            wire: w.wire,
            usage_cell: w.usage_cell,
            first: w.first,
            target: w.target,
            stream_counted,
            done: false,
            meta_tail,
            check,
            end_error: None,
        };
        if let Some(at) = this.next_wake() {
            this.timer = Some(Box::pin(tokio::time::sleep_until(at)));
        }
        this
    }

    fn next_wake(&self) -> Option<Instant> {
        let idle = self.idle.map(|d| Instant::now() + d);
        match (idle, self.deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn settle(&mut self) {
        if let Some(mut rec) = self.rec.take() {
            let found = self.tail.as_ref().and_then(UsageTail::usage);
            if let Some(u) = found.or_else(|| self.usage_cell.as_ref().and_then(|c| c.get())) {
                rec.set_usage(u);
            }
            if rec.span.as_ref().is_some_and(|s| s.is_recording())
                && let Some(t) = self.tail.as_ref().or(self.meta_tail.as_ref())
            {
                let (model, reasons) = t.response_meta();
                rec.set_response_meta(model, reasons);
            }
            rec.finish();
        }
        self.target = None; // releases the in-flight slot
        if let Some(app) = self.stream_counted.take() {
            app.metrics.active_streams.dec();
        }
    }

    fn fail(&mut self, mut e: GatewayError) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.done = true;
        if let Some(rec) = &mut self.rec {
            // The message may quote the upstream (its in-stream error).
            if let std::borrow::Cow::Owned(m) = rec.app.snapshot.load().scrubber.scrub(&e.message) {
                e.message = m.into();
            }
            rec.stream_failed(&e);
            rec.app
                .metrics
                .record_upstream_error(&rec.provider, e.kind.code());
        }
        if let Some(t) = &mut self.target {
            t.record(Outcome::Failure, now_nanos());
        }
        self.settle();
        if self.sse {
            let mut event = Vec::with_capacity(160);
            match self.wire {
                Wire::OpenAi | Wire::Gemini => {
                    event.extend_from_slice(b"data: ");
                    event.extend_from_slice(&e.to_openai_json());
                }
                Wire::Anthropic => {
                    event.extend_from_slice(b"event: error\ndata: ");
                    event.extend_from_slice(&e.to_anthropic_json());
                }
            }
            event.extend_from_slice(b"\n\n");
            Poll::Ready(Some(Ok(Frame::data(Bytes::from(event)))))
        } else {
            Poll::Ready(Some(Err(Box::new(e))))
        }
    }

    /// Checks a passed-through stream's next frame (`Err`: it is not to be
    /// passed on), and its end when this frame was its last (a bad end is
    /// kept in `end_error`: the frame goes out, then the error).
    fn check_frame(&mut self, frame: &Frame<Bytes>) -> Result<(), GatewayError> {
        let Some(check) = &mut self.check else {
            return Ok(());
        };
        let protocol = |m| GatewayError::new(ErrorKind::UpstreamProtocol, m);
        frame
            .data_ref()
            .map_or(Ok(()), |d| check.feed(d))
            .map_err(protocol)?;
        if self.inner.is_end_stream() {
            self.end_error = check.finish().err().map(protocol);
        }
        Ok(())
    }

    /// Passes `frame` on, observed; the end settles the request.
    fn pass(&mut self, frame: Frame<Bytes>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if let Err(e) = self.check_frame(&frame) {
            return self.fail(e);
        }
        if self.end_error.is_some() {
            self.observe(&frame); // the error follows on the next poll
        } else {
            self.on_frame(&frame);
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn on_frame(&mut self, frame: &Frame<Bytes>) {
        self.observe(frame);
        if self.inner.is_end_stream() {
            // A sized body may not be polled again once its last byte is out.
            self.done = true;
            self.settle();
        } else if self.idle.is_some()
            && let (Some(at), Some(timer)) = (self.next_wake(), &mut self.timer)
        {
            timer.as_mut().reset(at);
        }
    }

    fn observe(&mut self, frame: &Frame<Bytes>) {
        if let Some(data) = frame.data_ref() {
            if let Some(rec) = &mut self.rec {
                rec.mark_first_byte();
            }
            if let Some(t) = &mut self.tail {
                t.observe(data);
            }
            if let Some(t) = &mut self.meta_tail {
                t.observe(data);
            }
        }
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        // Fully sent but never polled to its end: still a completed response.
        if self.rec.is_some()
            && self.first.is_none()
            && self.end_error.is_none()
            && self.inner.is_end_stream()
        {
            self.settle();
        }
        if let Some(app) = self.stream_counted.take() {
            app.metrics.active_streams.dec();
        }
    }
}

impl http_body::Body for ObservedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(e) = this.end_error.take() {
            return this.fail(e);
        }
        if let Some(frame) = this.first.take() {
            return this.pass(frame);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => this.pass(frame),
            Poll::Ready(Some(Err(e))) => this.fail(GatewayError::new(
                ErrorKind::UpstreamProtocol,
                format!("upstream stream broke: {e}"),
            )),
            Poll::Ready(None) => {
                if let Some(Err(m)) = this.check.as_mut().map(StreamCheck::finish) {
                    return this.fail(GatewayError::new(ErrorKind::UpstreamProtocol, m));
                }
                this.done = true;
                this.settle();
                Poll::Ready(None)
            }
            Poll::Pending => {
                if let Some(timer) = &mut this.timer
                    && timer.as_mut().poll(cx).is_ready()
                {
                    let now = Instant::now();
                    let msg = match (this.deadline, this.idle) {
                        (Some(d), _) if now >= d => "request deadline exceeded".to_owned(),
                        (_, Some(idle)) => {
                            format!("upstream sent nothing for {} ms", idle.as_millis())
                        }
                        _ => "request deadline exceeded".to_owned(),
                    };
                    return this.fail(GatewayError::new(ErrorKind::UpstreamTimeout, msg));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        if self.done {
            return SizeHint::with_exact(0);
        }
        if self.sse {
            // A stream may end in an error event of our own: never promise
            // the upstream's length.
            return SizeHint::default();
        }
        let mut hint = self.inner.size_hint();
        if let Some(n) = self
            .first
            .as_ref()
            .and_then(Frame::data_ref)
            .map(Bytes::len)
        {
            let n = n as u64;
            // Raise the upper bound first: set_lower refuses to pass it.
            if let Some(upper) = hint.upper() {
                hint.set_upper(upper + n);
            }
            hint.set_lower(hint.lower() + n);
        }
        hint
    }
}
