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
                SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(endpoint.clone())
                    .with_timeout(Duration::from_secs(10))
                    .with_metadata(md)
                    .build()
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
        // Batch on the gateway's own runtime; on a current-thread runtime the
        // processor gets a thread of its own so shutdown cannot deadlock.
        let builder = SdkTracerProvider::builder()
            .with_sampler(sampler)
            .with_resource(resource);
        let current_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread);
        use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
        let provider = if current_thread {
            builder
                .with_span_processor(
                    BatchSpanProcessor::builder(
                        exporter,
                        opentelemetry_sdk::runtime::TokioCurrentThread,
                    )
                    .build(),
                )
                .build()
        } else {
            builder
                .with_span_processor(
                    BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio)
                        .build(),
                )
                .build()
        };
        let tracer = provider.tracer("sluice");
        tracing::info!(%endpoint, protocol = ?cfg.protocol, ratio = cfg.sampling_ratio, "exporting traces over OTLP");
        Ok(Some(Self { tracer, provider }))
    }

    /// Flushes what is batched; call once at shutdown.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "trace exporter shutdown");
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
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    tracer
        .span_builder(route)
        .with_kind(SpanKind::Server)
        .with_attributes([
            KeyValue::new("http.request.method", "POST"),
            KeyValue::new("http.route", route),
        ])
        .start_with_context(tracer, &parent)
}

/// A client span for one upstream attempt, child of `parent`.
pub fn attempt_span(
    tracer: &SdkTracer,
    parent: &SpanContext,
    operation: &'static str,
    provider: &ProviderConfig,
    model: &str,
    attempt: u32,
) -> Span {
    let cx = Context::new().with_remote_span_context(parent.clone());
    let system = genai_provider(provider.kind, provider.preset);
    tracer
        .span_builder(format!("{operation} {model}"))
        .with_kind(SpanKind::Client)
        .with_attributes([
            KeyValue::new("gen_ai.operation.name", operation),
            KeyValue::new("gen_ai.provider.name", system),
            KeyValue::new("gen_ai.system", system),
            KeyValue::new("gen_ai.request.model", model.to_owned()),
            KeyValue::new("sluice.provider", provider.name.to_string()),
            KeyValue::new("sluice.attempt", i64::from(attempt)),
        ])
        .start_with_context(tracer, &cx)
}

/// The W3C `traceparent` for a span, to send upstream.
pub fn traceparent(span: &Span) -> Option<HeaderValue> {
    let sc = span.span_context();
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
