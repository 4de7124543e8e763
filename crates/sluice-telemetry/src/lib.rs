//! Traces over OTLP, following the OpenTelemetry GenAI semantic conventions.
//!
//! Off unless an endpoint is configured, and then off the hot path: requests
//! check one `Option` and build no span, attribute or string.
//! One server span per request, one client span per upstream attempt
//! (retries are visible), W3C `traceparent` taken from clients and passed
//! to upstreams.
//!
//! Spans are our own small records rather than the OpenTelemetry SDK's:
//! attributes are encoded to OTLP protobuf as they are set, and a finished
//! span is appended to the current batch as bytes ([`otlp`]). A batch task
//! sends the batches over OTLP/HTTP or gRPC ([`export`]). With the SDK,
//! exporting every request cost 0.65–0.74× the throughput of tracing off;
//! almost all of it was span bookkeeping and the conversion of each span
//! into owned proto structs.

mod export;

/// The `outcome` label of `sluice_trace_spans_total` (and of the gateway's
/// other outcome counters).
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}
pub mod otlp;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use sluice_core::config::TelemetryConfig;

pub use otlp::Kind;

/// A trace id as logs and backends show it: 32 lower-case hex digits.
pub struct TraceId(pub u128);

impl std::fmt::Display for TraceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// A span's identity, as carried by `traceparent`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: u128,
    pub span_id: u64,
    pub sampled: bool,
}

impl SpanContext {
    /// The W3C `traceparent` naming this span, to send upstream.
    pub fn traceparent(&self) -> HeaderValue {
        let mut buf = [0u8; 55];
        let text = format_traceparent(self, &mut buf);
        HeaderValue::from_bytes(text).expect("hex and dashes are a valid header value")
    }

    /// The parent named by a W3C `traceparent` header, when there is a
    /// valid one (<https://www.w3.org/TR/trace-context/#traceparent-header>).
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        let mut values = headers.get_all("traceparent").iter();
        let value = values.next()?;
        if values.next().is_some() {
            return None; // more than one: the spec says to ignore them
        }
        parse_traceparent(value.as_bytes())
    }
}

fn format_traceparent<'a>(cx: &SpanContext, buf: &'a mut [u8; 55]) -> &'a [u8] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    buf[..3].copy_from_slice(b"00-");
    for (i, b) in cx.trace_id.to_be_bytes().iter().enumerate() {
        buf[3 + 2 * i] = HEX[usize::from(b >> 4)];
        buf[4 + 2 * i] = HEX[usize::from(b & 15)];
    }
    buf[35] = b'-';
    for (i, b) in cx.span_id.to_be_bytes().iter().enumerate() {
        buf[36 + 2 * i] = HEX[usize::from(b >> 4)];
        buf[37 + 2 * i] = HEX[usize::from(b & 15)];
    }
    buf[52] = b'-';
    buf[53] = b'0';
    buf[54] = if cx.sampled { b'1' } else { b'0' };
    &buf[..]
}

fn parse_hex(s: &[u8]) -> Option<u128> {
    let mut v: u128 = 0;
    for &c in s {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None, // upper case is invalid too
        };
        v = (v << 4) | u128::from(d);
    }
    Some(v)
}

fn parse_traceparent(v: &[u8]) -> Option<SpanContext> {
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let version = parse_hex(&v[..2])?;
    // Version 00 is exactly 55 bytes; later versions may append "-...".
    if version == 0xff || (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    let trace_id = parse_hex(&v[3..35])?;
    let span_id = u64::try_from(parse_hex(&v[36..52])?).ok()?;
    let flags = parse_hex(&v[53..55])?;
    (trace_id != 0 && span_id != 0).then_some(SpanContext {
        trace_id,
        span_id,
        sampled: flags & 1 == 1,
    })
}

fn now_unix_nano() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A random id; all-zero ids are invalid in W3C trace context.
fn random_id<T>() -> T
where
    T: Default + PartialEq,
    rand::distr::StandardUniform: rand::distr::Distribution<T>,
{
    loop {
        let v: T = rand::random();
        if v != T::default() {
            return v;
        }
    }
}

/// A span. Unsampled spans still carry a context (for `traceparent`) but
/// record nothing; setters on them are no-ops. A recording span is sent
/// when it is ended or dropped.
pub struct Span {
    cx: SpanContext,
    /// The client's W3C `tracestate`, passed on upstream and recorded.
    trace_state: Option<HeaderValue>,
    rec: Option<Box<Recording>>,
}

/// The longest `tracestate` passed on (the W3C limit for propagation).
const MAX_TRACESTATE: usize = 512;

/// The `tracestate` that goes with a valid client `traceparent`: several
/// headers are joined with commas; an oversized one is dropped.
fn client_trace_state(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut values = headers.get_all("tracestate").iter();
    let first = values.next()?;
    let Some(second) = values.next() else {
        return (first.len() <= MAX_TRACESTATE && !first.is_empty()).then(|| first.clone());
    };
    let mut joined = first.as_bytes().to_vec();
    for v in std::iter::once(second).chain(values) {
        joined.push(b',');
        joined.extend_from_slice(v.as_bytes());
        if joined.len() > MAX_TRACESTATE {
            return None;
        }
    }
    HeaderValue::from_bytes(&joined).ok()
}

struct Recording {
    batch: Arc<export::Batch>,
    parent: Option<u64>,
    remote_parent: bool,
    kind: Kind,
    name: &'static str,
    name_suffix: Option<Arc<str>>,
    start: u64,
    /// Attributes, events and status, encoded as they are set.
    fields: Vec<u8>,
}

impl Span {
    pub fn context(&self) -> SpanContext {
        self.cx
    }

    /// The client's `tracestate`, to send upstream with [`SpanContext::traceparent`].
    pub fn trace_state(&self) -> Option<&HeaderValue> {
        self.trace_state.as_ref()
    }

    pub fn is_recording(&self) -> bool {
        self.rec.is_some()
    }

    /// Names the span "`name` `suffix`" (the GenAI "{operation} {model}").
    pub fn rename(&mut self, name: &'static str, suffix: &Arc<str>) {
        if let Some(r) = &mut self.rec {
            r.name = name;
            r.name_suffix = Some(suffix.clone());
        }
    }

    fn attr(&mut self, key: &str, v: &otlp::Value<'_>) {
        if let Some(r) = &mut self.rec {
            otlp::put_attr(&mut r.fields, 9, key, v);
        }
    }

    pub fn str(&mut self, key: &str, v: &str) {
        self.attr(key, &otlp::Value::Str(v));
    }

    pub fn int(&mut self, key: &str, v: i64) {
        self.attr(key, &otlp::Value::Int(v));
    }

    pub fn float(&mut self, key: &str, v: f64) {
        self.attr(key, &otlp::Value::F64(v));
    }

    pub fn flag(&mut self, key: &str, v: bool) {
        self.attr(key, &otlp::Value::Bool(v));
    }

    pub fn strs(&mut self, key: &str, v: &[String]) {
        self.attr(key, &otlp::Value::Strs(v));
    }

    /// An event at this instant.
    pub fn event(&mut self, name: &str) {
        if let Some(r) = &mut self.rec {
            otlp::put_event(&mut r.fields, now_unix_nano(), name);
        }
    }

    /// Marks the span failed: `error.type` and an ERROR status.
    pub fn fail(&mut self, error_type: &str, message: &str) {
        self.str("error.type", error_type);
        if let Some(r) = &mut self.rec {
            otlp::put_error(&mut r.fields, message);
        }
    }

    /// Ends the span now (dropping it does the same).
    pub fn end(self) {}
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some(r) = self.rec.take() {
            let mut flags = u32::from(self.cx.sampled);
            if r.parent.is_some() {
                flags |= otlp::FLAGS_HAS_IS_REMOTE;
                if r.remote_parent {
                    flags |= otlp::FLAGS_IS_REMOTE;
                }
            }
            let mut r = r;
            r.batch.submit(&otlp::SpanFields {
                trace_id: self.cx.trace_id,
                span_id: self.cx.span_id,
                parent_span_id: r.parent,
                trace_state: self.trace_state.as_ref().and_then(|v| v.to_str().ok()),
                flags,
                name: r.name,
                name_suffix: r.name_suffix.as_deref(),
                kind: r.kind,
                start_unix_nano: r.start,
                end_unix_nano: now_unix_nano(),
                fields: &r.fields,
            });
            give_back(std::mem::take(&mut r.fields));
        }
    }
}

// Span field buffers are reused, per thread: two fresh 1 KiB buffers per
// request were glibc "large" allocations, and each one made malloc
// consolidate its fast bins (a tenth of tracing's cost in profiles).
thread_local! {
    static BUFFERS: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Kept per thread at most; and buffers that grew past the size cap are
/// let go.
const POOLED_BUFFERS: usize = 256;
const POOLED_BUFFER_BYTES: usize = 8 << 10;

fn take_buffer() -> Vec<u8> {
    BUFFERS
        .with_borrow_mut(Vec::pop)
        .unwrap_or_else(|| Vec::with_capacity(1024))
}

fn give_back(mut buf: Vec<u8>) {
    if buf.capacity() <= POOLED_BUFFER_BYTES {
        buf.clear();
        BUFFERS.with_borrow_mut(|pool| {
            if pool.len() < POOLED_BUFFERS {
                pool.push(buf);
            }
        });
    }
}

/// A live trace pipeline.
pub struct Tracing {
    batch: Arc<export::Batch>,
    /// Root traces are sampled when the low 63 bits of the trace id, shifted
    /// right once, fall under this (the SDK's `TraceIdRatioBased`).
    ratio_bound: u64,
    /// Follow a client's sampled flag (ParentBased); else sample its trace
    /// id at the ratio too.
    parent_based: bool,
    exporter: export::Handle,
}

impl Tracing {
    /// Starts the exporter task; `None` when no endpoint is set. Needs a
    /// Tokio runtime.
    pub fn init(
        cfg: &TelemetryConfig,
        counts: Family<OutcomeLabels, Counter>,
    ) -> anyhow::Result<Option<Self>> {
        let Some(endpoint) = &cfg.otlp_endpoint else {
            return Ok(None);
        };
        let batch = Arc::new(export::Batch::new(cfg, counts));
        let exporter = export::start(cfg, endpoint, batch.clone())?;
        tracing::info!(%endpoint, protocol = ?cfg.protocol, ratio = cfg.sampling_ratio, "exporting traces over OTLP");
        Ok(Some(Self {
            batch,
            ratio_bound: (cfg.sampling_ratio.clamp(0.0, 1.0) * (1u64 << 63) as f64) as u64,
            parent_based: cfg.parent_based,
            exporter,
        }))
    }

    fn root_sampled(&self, trace_id: u128) -> bool {
        ((trace_id as u64) >> 1) < self.ratio_bound
    }

    fn recording(
        &self,
        parent: Option<u64>,
        remote_parent: bool,
        kind: Kind,
        name: &'static str,
        name_suffix: Option<Arc<str>>,
    ) -> Box<Recording> {
        Box::new(Recording {
            batch: self.batch.clone(),
            parent,
            remote_parent,
            kind,
            name,
            name_suffix,
            start: now_unix_nano(),
            fields: take_buffer(),
        })
    }

    /// The server span for a request: a child of the client's
    /// `traceparent` (sampled as it was, unless `parent_based` is off), or
    /// a new trace; traces are sampled by their id at the configured ratio.
    pub fn server_span(&self, headers: &HeaderMap, route: &'static str) -> Span {
        let parent = SpanContext::from_headers(headers);
        let cx = SpanContext {
            trace_id: parent.map_or_else(random_id, |p| p.trace_id),
            span_id: random_id(),
            sampled: false,
        };
        let sampled = match parent {
            Some(p) if self.parent_based => p.sampled,
            _ => self.root_sampled(cx.trace_id),
        };
        let cx = SpanContext { sampled, ..cx };
        let rec = sampled
            .then(|| self.recording(parent.map(|p| p.span_id), true, Kind::Server, route, None));
        let trace_state = parent.and_then(|_| client_trace_state(headers));
        let mut span = Span {
            cx,
            trace_state,
            rec,
        };
        span.str("http.request.method", "POST");
        span.str("http.route", route);
        span
    }

    /// A client span for one upstream attempt, child of `parent`; `None`
    /// when the parent is not sampled (the parent's context is then what
    /// goes upstream).
    pub fn attempt_span(
        &self,
        parent: &Span,
        operation: &'static str,
        // `gen_ai.provider.name` and the provider's configured name.
        (system, provider): (&'static str, &str),
        model: &Arc<str>,
        attempt: u32,
    ) -> Option<Span> {
        if !parent.cx.sampled {
            return None;
        }
        let cx = SpanContext {
            span_id: random_id(),
            ..parent.cx
        };
        let rec = self.recording(
            Some(parent.cx.span_id),
            false,
            Kind::Client,
            operation,
            Some(model.clone()),
        );
        let mut span = Span {
            cx,
            trace_state: parent.trace_state.clone(),
            rec: Some(rec),
        };
        span.str("gen_ai.operation.name", operation);
        span.str("gen_ai.provider.name", system);
        span.str("gen_ai.system", system);
        span.str("gen_ai.request.model", model);
        span.str("sluice.provider", provider);
        span.int("sluice.attempt", i64::from(attempt));
        Some(span)
    }

    /// An internal span for work the gateway does within a request (a
    /// part's conversion), child of `parent`; `None` when the parent is not
    /// sampled.
    pub fn internal_span(&self, parent: &Span, name: &'static str) -> Option<Span> {
        if !parent.cx.sampled {
            return None;
        }
        let cx = SpanContext {
            span_id: random_id(),
            ..parent.cx
        };
        let rec = self.recording(Some(parent.cx.span_id), false, Kind::Internal, name, None);
        Some(Span {
            cx,
            trace_state: parent.trace_state.clone(),
            rec: Some(rec),
        })
    }

    /// Sends what is batched; call once at shutdown.
    pub async fn shutdown(&self) {
        self.exporter.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("traceparent", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn traceparent_round_trips() {
        let cx = SpanContext {
            trace_id: 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
            span_id: 0x00f0_67aa_0ba9_02b7,
            sampled: true,
        };
        let v = cx.traceparent();
        assert_eq!(
            v.to_str().unwrap(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert_eq!(
            SpanContext::from_headers(&headers(&[v.to_str().unwrap()])),
            Some(cx)
        );
        let unsampled = SpanContext {
            sampled: false,
            ..cx
        };
        assert!(unsampled.traceparent().to_str().unwrap().ends_with("-00"));
    }

    #[test]
    fn invalid_traceparents_are_ignored() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(SpanContext::from_headers(&headers(&[ok])).is_some());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ] {
            assert_eq!(SpanContext::from_headers(&headers(&[bad])), None, "{bad}");
        }
        // A later version may append fields after a dash.
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what";
        assert!(SpanContext::from_headers(&headers(&[later])).is_some());
        // Two traceparent headers: neither is trusted.
        assert_eq!(SpanContext::from_headers(&headers(&[ok, ok])), None);
    }

    fn tracing(ratio: f64, parent_based: bool) -> (tokio::runtime::Runtime, Tracing) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let cfg = TelemetryConfig {
            otlp_endpoint: Some("http://127.0.0.1:9".into()),
            protocol: sluice_core::config::OtlpProtocol::HttpProtobuf,
            sampling_ratio: ratio,
            parent_based,
            ..TelemetryConfig::default()
        };
        let t = {
            let _guard = rt.enter();
            Tracing::init(&cfg, Family::default()).unwrap().unwrap()
        };
        (rt, t)
    }

    #[test]
    fn parent_based_sampling_follows_the_client_unless_turned_off() {
        let sampled = headers(&["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"]);
        let unsampled = headers(&["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"]);
        let none = HeaderMap::new();
        let route = "/v1/chat/completions";

        let (_rt, t) = tracing(0.0, true);
        let s = t.server_span(&sampled, route);
        assert!(s.is_recording(), "the client sampled it");
        assert_eq!(
            s.context().trace_id,
            0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736
        );
        assert!(!t.server_span(&none, route).is_recording(), "ratio 0");
        let (_rt, t) = tracing(1.0, true);
        assert!(
            !t.server_span(&unsampled, route).is_recording(),
            "the client did not"
        );
        assert!(t.server_span(&none, route).is_recording());

        // Not parent-based: the ratio decides, on the client's trace id too.
        let (_rt, t) = tracing(0.0, false);
        let s = t.server_span(&sampled, route);
        assert!(!s.is_recording());
        assert!(!s.context().sampled, "what goes upstream says so");
        let (_rt, t) = tracing(1.0, false);
        assert!(t.server_span(&unsampled, route).is_recording());
    }

    #[test]
    fn tracestate_comes_with_a_valid_traceparent_only() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut h = headers(&[tp]);
        h.append("tracestate", HeaderValue::from_static("congo=t61rcWkgMzE"));
        h.append(
            "tracestate",
            HeaderValue::from_static("rojo=00f067aa0ba902b7"),
        );
        let (_rt, t) = tracing(1.0, true);
        let s = t.server_span(&h, "/v1/chat/completions");
        assert_eq!(
            s.trace_state().unwrap(),
            "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
        );
        let model: Arc<str> = "m".into();
        let a = t
            .attempt_span(&s, "chat", ("openai", "p"), &model, 1)
            .unwrap();
        assert_eq!(a.trace_state(), s.trace_state(), "children carry it on");

        // Without a valid traceparent there is nothing to continue.
        let mut h = HeaderMap::new();
        h.append("tracestate", HeaderValue::from_static("congo=t61rcWkgMzE"));
        assert!(t.server_span(&h, "/r").trace_state().is_none());
        // Too long to pass on.
        let mut h = headers(&[tp]);
        let long = format!("k={}", "v".repeat(MAX_TRACESTATE));
        h.append("tracestate", HeaderValue::from_str(&long).unwrap());
        assert!(t.server_span(&h, "/r").trace_state().is_none());
    }

    #[test]
    fn the_sampling_ratio_splits_trace_ids() {
        // The tracer's own rule, on fresh trace ids.
        let sampled = |r: f64, n: u32| {
            let (_rt, t) = tracing(r, true);
            (0..n).filter(|_| t.root_sampled(random_id())).count()
        };
        assert_eq!(sampled(1.0, 10_000), 10_000);
        assert_eq!(sampled(0.0, 10_000), 0);
        let tenth = sampled(0.1, 100_000);
        assert!((9_000..11_000).contains(&tenth), "{tenth}");
    }
}
