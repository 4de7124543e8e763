//! Batches of finished spans, and the task that sends them over OTLP.
//!
//! A finished span is appended, as protobuf bytes, to the current batch.
//! A batch is sealed at `max_batch_spans` spans (or 1 MiB) and then the
//! export task is woken; a partial batch is sealed every
//! `export_interval_ms`. Batches are sent one at a time, transient failures
//! retried within `export_timeout_ms` ([`export`]). At most
//! `max_queue_spans` spans wait (sealed, current and in flight); past that,
//! new spans are dropped and counted, so a slow or dead collector costs
//! bounded memory and no request ever waits on it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::{Buf as _, BufMut as _, Bytes};
use http::{HeaderMap, HeaderName, HeaderValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use sluice_core::config::{OtlpProtocol, TelemetryConfig};
use tokio::sync::{Notify, watch};

use super::otlp;
use crate::OutcomeLabels;

/// A batch is also sealed at this size, well under gRPC's default 4 MiB
/// message limit on receivers.
const BATCH_BYTES: usize = 1 << 20;

pub struct Batch {
    pending: Mutex<Pending>,
    kick: Notify,
    max_queue: usize,
    max_batch: usize,
    dropped: Counter,
    exported: Counter,
    failed: Counter,
}

#[derive(Default)]
struct Pending {
    current: Vec<u8>,
    spans: usize,
    sealed: VecDeque<(Vec<u8>, usize)>,
    /// Spans in `current`, `sealed` and the batch being sent.
    queued: usize,
    /// Emptied buffers, to reuse.
    spare: Vec<Vec<u8>>,
}

impl Pending {
    fn seal(&mut self) {
        let fresh = self.spare.pop().unwrap_or_default();
        let full = std::mem::replace(&mut self.current, fresh);
        self.sealed
            .push_back((full, std::mem::take(&mut self.spans)));
    }
}

impl Batch {
    pub fn new(cfg: &TelemetryConfig, counts: Family<OutcomeLabels, Counter>) -> Self {
        let counter = |outcome| counts.get_or_create(&OutcomeLabels { outcome }).clone();
        Self {
            pending: Mutex::default(),
            kick: Notify::new(),
            max_queue: cfg.max_queue_spans,
            max_batch: cfg.max_batch_spans,
            dropped: counter("dropped"),
            exported: counter("exported"),
            failed: counter("failed"),
        }
    }

    /// Appends a finished span, or drops it when the queue is full.
    pub fn submit(&self, span: &otlp::SpanFields<'_>) {
        let mut p = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if p.queued >= self.max_queue {
            drop(p);
            self.dropped.inc();
            return;
        }
        otlp::put_span(&mut p.current, span);
        p.spans += 1;
        p.queued += 1;
        if p.spans >= self.max_batch || p.current.len() >= BATCH_BYTES {
            p.seal();
            drop(p);
            self.kick.notify_one();
        }
    }

    /// The next sealed batch; with `seal`, the current one is sealed first
    /// when no sealed batch waits.
    fn take(&self, seal: bool) -> Option<(Vec<u8>, usize)> {
        let mut p = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if seal && p.sealed.is_empty() && p.spans > 0 {
            p.seal();
        }
        p.sealed.pop_front()
    }

    /// A batch's bytes are copied into its request: the buffer is kept
    /// for reuse (its spans still count until [`Batch::sent`]).
    fn recycle(&self, mut buf: Vec<u8>) {
        buf.clear();
        let mut p = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if p.spare.len() < 2 {
            p.spare.push(buf);
        }
    }

    /// A batch was sent, or its export failed: its spans leave the queue.
    fn sent(&self, spans: usize) {
        let mut p = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        p.queued -= spans;
    }
}

/// The running export task.
pub struct Handle {
    stop: watch::Sender<bool>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    timeout: Duration,
}

impl Handle {
    /// Seals and sends what is queued, then stops the task. Waits at most
    /// twice the export timeout in all; what is not sent by then is lost
    /// (and said so in the log).
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(t) = task
            && tokio::time::timeout(self.timeout * 2, t).await.is_err()
        {
            tracing::warn!("trace export did not finish at shutdown; spans lost");
        }
    }
}

pub fn start(cfg: &TelemetryConfig, endpoint: &str, batch: Arc<Batch>) -> anyhow::Result<Handle> {
    let sender = Sender::new(cfg, endpoint)?;
    let mut attrs = vec![
        ("service.name".to_owned(), cfg.service_name.clone()),
        ("telemetry.sdk.name".to_owned(), "sluice".to_owned()),
        ("telemetry.sdk.language".to_owned(), "rust".to_owned()),
        (
            "telemetry.sdk.version".to_owned(),
            env!("CARGO_PKG_VERSION").to_owned(),
        ),
    ];
    for (k, v) in &cfg.resource_attributes {
        match attrs.iter_mut().find(|(key, _)| key == k) {
            Some(slot) if k != "service.name" => slot.1 = v.clone(),
            Some(_) => {} // the configured service name wins
            None => attrs.push((k.clone(), v.clone())),
        }
    }
    let header = Header {
        resource: otlp::resource(&attrs),
        scope: otlp::scope("sluice", env!("CARGO_PKG_VERSION")),
    };
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(run(
        batch,
        sender,
        header,
        cfg.export_interval,
        cfg.export_timeout,
        stopped,
    ));
    Ok(Handle {
        stop,
        task: Mutex::new(Some(task)),
        timeout: cfg.export_timeout,
    })
}

struct Header {
    resource: Vec<u8>,
    scope: Vec<u8>,
}

/// Sends one batch. Failures the OTLP spec calls transient (connection
/// errors, time-outs, HTTP 429/502/503/504, gRPC UNAVAILABLE and the like)
/// are retried with back-off (100 ms, doubling, or the collector's
/// `Retry-After`), all within one `export_timeout` from the first try; not
/// while shutting down.
async fn export(
    sender: &mut Sender,
    body: Bytes,
    timeout: Duration,
    stopping: bool,
) -> Result<(), ExportError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut backoff = Duration::from_millis(100);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let e = match tokio::time::timeout(left, sender.send(body.clone())).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e,
            Err(_) => ExportError::transient("timed out".to_owned()),
        };
        let wait = e.retry_after.unwrap_or(backoff).min(Duration::from_secs(5));
        if !e.transient || stopping || tokio::time::Instant::now() + wait >= deadline {
            return Err(e);
        }
        tokio::time::sleep(wait).await;
        backoff *= 2;
    }
}

#[derive(Debug)]
struct ExportError {
    message: String,
    transient: bool,
    retry_after: Option<Duration>,
}

impl ExportError {
    fn transient(message: String) -> Self {
        Self {
            message,
            transient: true,
            retry_after: None,
        }
    }

    fn permanent(message: String) -> Self {
        Self {
            message,
            transient: false,
            retry_after: None,
        }
    }
}

impl std::fmt::Display for ExportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

async fn run(
    batch: Arc<Batch>,
    mut sender: Sender,
    header: Header,
    interval: Duration,
    timeout: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut last_warning: Option<Instant> = None;
    let mut failures_unreported = 0u64;
    loop {
        let (seal, stopping) = tokio::select! {
            () = batch.kick.notified() => (false, false),
            () = tokio::time::sleep(interval) => (true, false),
            _ = stop.changed() => (true, true),
        };
        let mut seal = seal;
        while let Some((spans, n)) = batch.take(seal) {
            // While stopping, keep sealing until nothing is left.
            seal = stopping;
            let mut body = Vec::new();
            otlp::request(&header.resource, &header.scope, &spans, &mut body);
            batch.recycle(spans);
            let result = export(&mut sender, Bytes::from(body), timeout, stopping).await;
            batch.sent(n);
            match result {
                Ok(()) => {
                    batch.exported.inc_by(n as u64);
                }
                Err(e) => {
                    batch.failed.inc_by(n as u64);
                    failures_unreported += 1;
                    // One warning per 10 s, however often it fails.
                    if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                        tracing::warn!(error = %e, failed_batches = failures_unreported, "trace export failed; spans lost");
                        last_warning = Some(Instant::now());
                        failures_unreported = 0;
                    }
                }
            }
        }
        if stopping {
            return;
        }
    }
}

/// One attempt at an export; [`export`] bounds its time.
enum Sender {
    Http {
        client: Box<sluice_providers::transport::UpstreamClient>,
        url: http::Uri,
        headers: HeaderMap,
    },
    Grpc {
        grpc: tonic::client::Grpc<tonic::transport::Channel>,
        metadata: tonic::metadata::MetadataMap,
    },
}

/// The configured headers (names already checked by the config), values
/// marked sensitive: they are usually credentials.
fn header_map(headers: &[(String, sluice_core::Secret)]) -> anyhow::Result<HeaderMap> {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        let mut value = HeaderValue::try_from(v.expose())
            .with_context(|| format!("the value of OTLP header '{k}'"))?;
        value.set_sensitive(true);
        map.insert(
            HeaderName::try_from(k.as_str()).context("OTLP header name")?,
            value,
        );
    }
    Ok(map)
}

impl Sender {
    fn new(cfg: &TelemetryConfig, endpoint: &str) -> anyhow::Result<Self> {
        let headers = header_map(&cfg.headers)?;
        let timeout = cfg.export_timeout;
        Ok(match cfg.protocol {
            OtlpProtocol::HttpProtobuf => {
                let url = if cfg.traces_url || endpoint.ends_with("/v1/traces") {
                    endpoint.to_owned()
                } else {
                    format!("{}/v1/traces", endpoint.trim_end_matches('/'))
                };
                Self::Http {
                    client: Box::new(sluice_providers::transport::https_client(
                        Duration::from_secs(5),
                    )),
                    url: url.parse().context("OTLP endpoint")?,
                    headers,
                }
            }
            OtlpProtocol::Grpc => {
                let mut ep = tonic::transport::Endpoint::from_shared(endpoint.to_owned())
                    .context("OTLP endpoint")?
                    .connect_timeout(Duration::from_secs(5))
                    .timeout(timeout);
                if endpoint.starts_with("https://") {
                    // The system's roots (and SSL_CERT_FILE / SSL_CERT_DIR).
                    ep = ep
                        .tls_config(
                            tonic::transport::ClientTlsConfig::new()
                                .with_native_roots()
                                .assume_http2(true),
                        )
                        .context("OTLP TLS")?;
                }
                Self::Grpc {
                    grpc: tonic::client::Grpc::new(ep.connect_lazy()),
                    metadata: tonic::metadata::MetadataMap::from_headers(headers),
                }
            }
        })
    }

    async fn send(&mut self, body: Bytes) -> Result<(), ExportError> {
        match self {
            Self::Http {
                client,
                url,
                headers,
            } => {
                use http_body_util::BodyExt as _;
                let mut req = http::Request::post(url.clone())
                    .header(http::header::CONTENT_TYPE, "application/x-protobuf")
                    .body(http_body_util::Full::new(body))
                    .map_err(|e| ExportError::permanent(e.to_string()))?;
                req.headers_mut()
                    .extend(headers.iter().map(|(k, v)| (k.clone(), v.clone())));
                let resp = client
                    .request(req)
                    .await
                    .map_err(|e| ExportError::transient(e.to_string()))?;
                let status = resp.status();
                let retry_after = resp
                    .headers()
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                // Read the answer (bounded) so the connection can be reused.
                let answer = http_body_util::Limited::new(resp.into_body(), 64 << 10)
                    .collect()
                    .await
                    .map_err(|e| ExportError::transient(e.to_string()))?
                    .to_bytes();
                if status.is_success() {
                    return Ok(());
                }
                let text = String::from_utf8_lossy(&answer[..answer.len().min(200)]);
                Err(ExportError {
                    message: format!("collector answered {status}: {text}"),
                    transient: matches!(status.as_u16(), 429 | 502 | 503 | 504),
                    retry_after,
                })
            }
            Self::Grpc { grpc, metadata } => {
                grpc.ready()
                    .await
                    .map_err(|e| ExportError::transient(e.to_string()))?;
                let mut req = tonic::Request::new(body);
                *req.metadata_mut() = metadata.clone();
                let path = http::uri::PathAndQuery::from_static(
                    "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                );
                match grpc.unary::<_, Bytes, _>(req, path, RawCodec).await {
                    Ok(_) => Ok(()),
                    Err(s) => {
                        use tonic::Code;
                        Err(ExportError {
                            message: format!("{:?}: {}", s.code(), s.message()),
                            transient: matches!(
                                s.code(),
                                Code::Cancelled
                                    | Code::DeadlineExceeded
                                    | Code::ResourceExhausted
                                    | Code::Aborted
                                    | Code::OutOfRange
                                    | Code::Unavailable
                                    | Code::DataLoss
                            ),
                            retry_after: None,
                        })
                    }
                }
            }
        }
    }
}

/// Messages that are already protobuf bytes: passed through as they are.
#[derive(Clone, Copy)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        *self
    }

    fn decoder(&mut self) -> Self::Decoder {
        *self
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), Self::Error> {
        dst.put(item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Bytes>, Self::Error> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(buf_id: u64) -> otlp::SpanFields<'static> {
        otlp::SpanFields {
            trace_id: 1,
            span_id: buf_id,
            parent_span_id: None,
            trace_state: None,
            flags: 1,
            name: "s",
            name_suffix: None,
            kind: otlp::Kind::Server,
            start_unix_nano: 1,
            end_unix_nano: 2,
            fields: &[],
        }
    }

    fn config(max_queue: usize, max_batch: usize) -> TelemetryConfig {
        TelemetryConfig {
            max_queue_spans: max_queue,
            max_batch_spans: max_batch,
            ..TelemetryConfig::default()
        }
    }

    #[test]
    fn batches_seal_at_their_size_and_the_queue_is_bounded() {
        let counts = Family::<OutcomeLabels, Counter>::default();
        let b = Batch::new(&config(5, 2), counts.clone());
        for i in 1..=7 {
            b.submit(&span(i));
        }
        // 5 queued: two sealed batches of 2 and one span in the current.
        let dropped = counts
            .get_or_create(&OutcomeLabels { outcome: "dropped" })
            .get();
        assert_eq!(dropped, 2);
        let (first, n) = b.take(false).unwrap();
        assert_eq!(n, 2);
        b.recycle(first);
        // Still in flight: no room yet.
        b.submit(&span(9));
        assert_eq!(
            counts
                .get_or_create(&OutcomeLabels { outcome: "dropped" })
                .get(),
            3
        );
        b.sent(n);
        let (second, n) = b.take(false).unwrap();
        assert_eq!(n, 2);
        assert!(
            b.take(false).is_none(),
            "the current batch waits for its timer"
        );
        // Room again once a batch has left the queue.
        b.submit(&span(8));
        assert_eq!(
            counts
                .get_or_create(&OutcomeLabels { outcome: "dropped" })
                .get(),
            3
        );
        b.recycle(second);
        b.sent(n);
        let (last, n) = b.take(true).unwrap();
        assert_eq!(n, 2, "spans 5 and 8, sealed at the batch size");
        let mut body = Vec::new();
        otlp::request(&[], &[], &last, &mut body);
        use prost::Message as _;
        let req =
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(
                body.as_slice(),
            )
            .unwrap();
        let ids: Vec<_> = req.resource_spans[0].scope_spans[0]
            .spans
            .iter()
            .map(|s| s.span_id.clone())
            .collect();
        assert_eq!(
            ids,
            [5u64.to_be_bytes().to_vec(), 8u64.to_be_bytes().to_vec()]
        );
        b.recycle(last);
        b.sent(n);
        assert!(b.take(true).is_none());
        assert_eq!(b.pending.lock().unwrap().queued, 0);
    }
}
