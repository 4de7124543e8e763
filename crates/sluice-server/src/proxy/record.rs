//! Recording a request, whatever way it ends: metrics, spans, the audit
//! event and the access log (its limits settle in [`super::settle`]).
//!
//! A [`Recorder`] is created when a request arrives and settles on drop: a
//! handler that returns, a stream that ends, and a client that goes away in
//! the middle are all counted, the last as a cancel (status 499). The
//! [`ObservedBody`](crate::observed_body::ObservedBody) carries it through
//! a streamed response.

use std::sync::Arc;
use std::time::Duration;

use crate::telemetry::Span;
use axum::body::Body;
use http::Response;
use sluice_core::GatewayError;
use sluice_core::config::Sampling;
use sluice_core::request::Usage;
use sluice_providers::translate::Wire;
use tokio::time::Instant;

use crate::app::App;

/// nginx's convention for "the client closed the request".
pub const STATUS_CLIENT_CLOSED: u16 = 499;

/// A request's record. It lives on the heap: it travels by value through
/// the nested futures of the request path and into a streamed body, and
/// each of those would otherwise reserve room for its own ~770 bytes.
pub struct Recorder(Box<RecordState>);

impl std::ops::Deref for Recorder {
    type Target = RecordState;
    fn deref(&self) -> &RecordState {
        &self.0
    }
}

impl std::ops::DerefMut for Recorder {
    fn deref_mut(&mut self) -> &mut RecordState {
        &mut self.0
    }
}

/// What a [`Recorder`] knows about its request.
pub struct RecordState {
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
    /// Upstream attempts made (for the access log).
    pub attempts: u32,
    /// What admission took from the limits, settled at the end.
    pub accounting: super::settle::Accounting,
    sampling: Sampling,
    access_log: bool,
    /// The request's server span (tracing on only).
    pub span: Option<Span>,
    /// The client span of the attempt whose answer is being delivered.
    pub attempt_span: Option<Span>,
    /// The request's recorded fields, already encrypted or redacted
    /// (audit on only).
    pub audit_fields: Option<crate::audit::Fields>,
    /// The gateway's error code, when it answered with one.
    error_code: Option<&'static str>,
    /// Parts converted to text (audit on only).
    pub conversions: Option<serde_json::Value>,
    /// A committed stream broke: the answer failed though its status is 2xx.
    stream_failed: bool,
}

impl Recorder {
    pub fn start(app: &Arc<App>, route: &'static str) -> Self {
        Self::start_at(app, route, Instant::now())
    }

    /// [`start`](Self::start), the request having started at `start` (a
    /// clock read the caller has made already: each read costs 30–44 ns
    /// on the bench machine, and a request used to make sixteen).
    pub fn start_at(app: &Arc<App>, route: &'static str, start: Instant) -> Self {
        app.metrics.active_requests.inc();
        sluice_core::probes::request_start(route);
        let logging = &app.snapshot.load().config.logging;
        let (sampling, access_log) = (logging.sampling_for(route), logging.access_log);
        // Made in its box, not on the stack and copied in (~770 bytes).
        let boxed = Box::new_uninit();
        Self(Box::write(
            boxed,
            RecordState {
                app: app.clone(),
                route,
                model: app.none_label.clone(),
                provider: app.none_label.clone(),
                status: STATUS_CLIENT_CLOSED,
                start,
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
                attempts: 0,
                accounting: Default::default(),
                sampling,
                access_log,
                span: None,
                attempt_span: None,
                audit_fields: None,
                conversions: None,
                error_code: None,
                stream_failed: false,
            },
        ))
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
        let st = &mut *self.0;
        for span in [st.span.as_mut(), st.attempt_span.as_mut()]
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
                self.app
                    .metrics
                    .record_first_byte(&self.model, &self.provider, at);
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

    /// Counts `e` as the answer (its status and code), for a caller that
    /// renders its own body.
    pub fn set_error(&mut self, e: &GatewayError) {
        self.status = e.status();
        self.error_code = Some(e.kind.code());
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
        crate::reply::error_response(e, wire)
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.0.settle();
    }
}

impl RecordState {
    /// The request is over (its response sent, its stream ended, or its
    /// client gone): every record of it is made.
    fn settle(&mut self) {
        let m = &self.app.metrics;
        m.active_requests.dec();
        if !self.finished {
            self.status = STATUS_CLIENT_CLOSED;
            m.record_cancel(&self.model, &self.provider);
        }
        // One clock read for both spans and the limits' settling.
        let now = Instant::now();
        self.accounting
            .settle(self.usage, self.finished && self.status == 200, now);
        let elapsed = now.saturating_duration_since(self.start);
        sluice_core::probes::request_end(
            self.route,
            &self.model,
            self.status,
            elapsed.as_micros() as u64,
        );
        let upstream = self
            .upstream_started
            .map(|t| now.saturating_duration_since(t));
        m.record_finished(&crate::metrics::GenAi {
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

impl RecordState {
    /// Hands the request's audit event to the writer.
    fn audit(&mut self, elapsed: Duration) {
        let Some(auditor) = &self.app.audit else {
            return;
        };
        let fields = self.audit_fields.take();
        fn nonempty(s: &Arc<str>) -> Option<&str> {
            (!s.is_empty()).then_some(&**s)
        }
        // Both on the stack: the event line copies them.
        let (id, ts) = (
            crate::audit::Auditor::new_id(),
            sluice_core::config::time::rfc3339_millis(sluice_hub::unix_ms()),
        );
        let durable = auditor.record(&crate::audit::Event {
            id: id.as_str(),
            client_request_id: self
                .client_request_id
                .as_ref()
                .and_then(|v| v.to_str().ok()),
            ts: ts.as_str(),
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
            conversions: self.conversions.as_ref(),
            tool_call: None,
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
