//! OpenTelemetry traces over OTLP, following the GenAI semantic conventions.
//!
//! Off unless an endpoint is configured, and then off the hot path: requests
//! check one `Option` and build no span, attribute or string.
//! One server span per request, one client span per upstream attempt
//! (retries are visible), W3C `traceparent` taken from clients and passed
//! to upstreams.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context as _;
use http::{HeaderMap, HeaderValue};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{SpanExporter, WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, Span};
use sluice_core::config::{OtlpProtocol, ProviderConfig, ProviderKind, TelemetryConfig};

/// A live trace pipeline.
pub struct Tracing {
    pub tracer: SdkTracer,
    provider: SdkTracerProvider,
}

/// The OTLP/HTTP exporter's client: hyper with rustls and the system's CA
/// roots, so `https://` collectors work (and `SSL_CERT_FILE` adds a CA).
#[derive(Debug)]
struct OtlpHttpClient(sluice_providers::transport::UpstreamClient);

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for OtlpHttpClient {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        use http_body_util::BodyExt;
        let (parts, body) = request.into_parts();
        let request = http::Request::from_parts(parts, http_body_util::Full::new(body));
        let response = tokio::time::timeout(Duration::from_secs(10), self.0.request(request))
            .await
            .map_err(|_| "OTLP export timed out")??;
        let (parts, body) = response.into_parts();
        let body = tokio::time::timeout(
            Duration::from_secs(10),
            http_body_util::Limited::new(body, 4 << 20).collect(),
        )
        .await
        .map_err(|_| "OTLP export timed out")??
        .to_bytes();
        Ok(http::Response::from_parts(parts, body))
    }
}

impl Tracing {
    /// Builds the exporter and provider; `None` when no endpoint is set.
    pub fn init(cfg: &TelemetryConfig) -> anyhow::Result<Option<Self>> {
        let Some(endpoint) = &cfg.otlp_endpoint else {
            return Ok(None);
        };
        let exporter = match cfg.protocol {
            OtlpProtocol::Grpc => {
                let mut md = tonic_metadata(&cfg.headers)?;
                let _ = &mut md;
                let mut builder = SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(endpoint.clone())
                    .with_timeout(Duration::from_secs(10))
                    .with_metadata(md);
                if endpoint.starts_with("https://") {
                    // The system's roots (and SSL_CERT_FILE / SSL_CERT_DIR).
                    builder = builder.with_tls_config(
                        opentelemetry_otlp::tonic_types::transport::ClientTlsConfig::new()
                            .with_native_roots(),
                    );
                }
                builder.build()
            }
            OtlpProtocol::HttpProtobuf => {
                let url = if endpoint.ends_with("/v1/traces") {
                    endpoint.clone()
                } else {
                    format!("{}/v1/traces", endpoint.trim_end_matches('/'))
                };
                let headers: HashMap<String, String> = cfg
                    .headers
                    .iter()
                    .map(|(k, v)| (k.clone(), v.expose().to_owned()))
                    .collect();
                SpanExporter::builder()
                    .with_http()
                    .with_http_client(OtlpHttpClient(sluice_providers::transport::https_client(
                        Duration::from_secs(5),
                    )))
                    .with_endpoint(url)
                    .with_timeout(Duration::from_secs(10))
                    .with_headers(headers)
                    .build()
            }
        }
        .context("building the OTLP span exporter")?;
        let sampler =
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(cfg.sampling_ratio)));
        let resource = Resource::builder()
            .with_service_name(cfg.service_name.clone())
            .build();
        // Batch on the gateway's own runtime, as a task: spans reach it
        // through a channel without waking another thread.
        use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
        let provider = SdkTracerProvider::builder()
            .with_sampler(sampler)
            .with_resource(resource)
            .with_span_processor(
                BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build(),
            )
            .build();
        let tracer = provider.tracer("sluice");
        tracing::info!(%endpoint, protocol = ?cfg.protocol, ratio = cfg.sampling_ratio, "exporting traces over OTLP");
        Ok(Some(Self { tracer, provider }))
    }

    /// Flushes what is batched; call once at shutdown. The flush blocks, and
    /// the batch task needs this runtime to run, so it waits on another thread.
    pub async fn shutdown(&self) {
        let provider = self.provider.clone();
        match tokio::task::spawn_blocking(move || provider.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "trace exporter shutdown"),
            Err(e) => tracing::warn!(error = %e, "trace exporter shutdown task"),
        }
    }
}

fn tonic_metadata(
    headers: &[(String, sluice_core::Secret)],
) -> anyhow::Result<opentelemetry_otlp::tonic_types::metadata::MetadataMap> {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.insert(
            http::HeaderName::try_from(k.as_str()).context("OTLP header name")?,
            HeaderValue::try_from(v.expose()).context("OTLP header value")?,
        );
    }
    Ok(opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(map))
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The server span for a request, child of the client's `traceparent`.
pub fn server_span(tracer: &SdkTracer, headers: &HeaderMap, route: &'static str) -> Span {
    let parent = if headers.contains_key("traceparent") {
        TraceContextPropagator::new().extract(&HeaderExtractor(headers))
    } else {
        Context::new()
    };
    let mut span = tracer
        .span_builder(route)
        .with_kind(SpanKind::Server)
        .start_with_context(tracer, &parent);
    // Attributes only for spans that will be exported (sampled).
    if span.is_recording() {
        span.set_attributes([
            KeyValue::new("http.request.method", "POST"),
            KeyValue::new("http.route", route),
        ]);
    }
    span
}

/// A client span for one upstream attempt, child of `parent`; `None` when
/// the parent is not sampled (its children would not be either, and the
/// parent's context is what goes upstream).
pub fn attempt_span(
    tracer: &SdkTracer,
    parent: &SpanContext,
    operation: &'static str,
    provider: &ProviderConfig,
    model: &std::sync::Arc<str>,
    attempt: u32,
) -> Option<Span> {
    if !parent.is_sampled() {
        return None;
    }
    let cx = Context::new().with_remote_span_context(parent.clone());
    let system = genai_provider(provider.kind, provider.preset);
    tracer
        .span_builder(format!("{operation} {model}"))
        .with_kind(SpanKind::Client)
        .with_attributes([
            KeyValue::new("gen_ai.operation.name", operation),
            KeyValue::new("gen_ai.provider.name", system),
            KeyValue::new("gen_ai.system", system),
            // Arc<str> values: no copy per span.
            KeyValue::new("gen_ai.request.model", model.clone()),
            KeyValue::new("sluice.provider", provider.name.clone()),
            KeyValue::new("sluice.attempt", i64::from(attempt)),
        ])
        .start_with_context(tracer, &cx)
        .into()
}

/// The W3C `traceparent` for a span context, to send upstream.
pub fn traceparent(sc: &SpanContext) -> Option<HeaderValue> {
    if !sc.is_valid() {
        return None;
    }
    HeaderValue::try_from(format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    ))
    .ok()
}

/// `gen_ai.provider.name` values from the semantic conventions.
pub fn genai_provider(kind: ProviderKind, preset: &'static str) -> &'static str {
    match kind {
        ProviderKind::Anthropic => "anthropic",
        ProviderKind::Gemini => "gcp.gemini",
        ProviderKind::Azure => "azure.ai.openai",
        ProviderKind::Mock => "sluice.mock",
        ProviderKind::OpenAi => match preset {
            "groq" => "groq",
            "mistral" => "mistral_ai",
            "deepseek" => "deepseek",
            "openai" => "openai",
            other => other,
        },
    }
}

pub fn fail(span: &mut Span, error_type: &'static str, message: String) {
    span.set_attribute(KeyValue::new("error.type", error_type));
    span.set_status(Status::error(message));
}
