//! `[logging]` and `[telemetry]`: the access log and trace export, with the
//! standard `OTEL_*` variables where the file is silent.

use super::raw::{RawLogging, RawTelemetry};
use super::validate::{Collector, http_token, ms};
use super::{LogFormat, LoggingConfig, OtlpProtocol, Sampling, TelemetryConfig};
use crate::secret::Secret;

pub(super) fn logging(c: &mut Collector<'_>, l: &RawLogging) -> LoggingConfig {
    let format = match l.format.as_ref().map(|f| (f, f.get_ref().as_str())) {
        None | Some((_, "auto")) => LogFormat::Auto,
        Some((_, "json")) => LogFormat::Json,
        Some((_, "pretty")) => LogFormat::Pretty,
        Some((f, other)) => {
            c.at(
                f.span(),
                format!("unknown log format '{other}' (auto, json, pretty)"),
            );
            LogFormat::Auto
        }
    };
    let sampling = Sampling {
        ratio: c.float(l.sample_ratio.as_ref(), 1.0, 0.0..=1.0, "sample_ratio"),
        slow: ms(c.positive(l.slow_ms.as_ref(), 5_000, 86_400_000, "slow_ms")),
    };
    let routes = l
        .routes
        .iter()
        .map(|(route, r)| {
            let s = Sampling {
                ratio: c.float(
                    r.sample_ratio.as_ref(),
                    sampling.ratio,
                    0.0..=1.0,
                    "sample_ratio",
                ),
                slow: r.slow_ms.as_ref().map_or(sampling.slow, |v| {
                    ms(c.positive(Some(v), 5_000, 86_400_000, "slow_ms"))
                }),
            };
            (route.clone(), s)
        })
        .collect();
    LoggingConfig {
        level: l
            .level
            .as_ref()
            .map_or_else(|| "info".to_owned(), |v| v.get_ref().clone()),
        format,
        access_log: l.access_log.unwrap_or(true),
        sampling,
        routes,
    }
}

pub(super) fn telemetry(
    c: &mut Collector<'_>,
    t: &RawTelemetry,
    env: &dyn Fn(&str) -> Option<String>,
) -> TelemetryConfig {
    // The standard OTEL_* variables apply where the file is silent.
    let mut traces_url = false;
    let endpoint = match &t.otlp_endpoint {
        Some(v) => match c.interpolated(v, env) {
            Some(s) if s.is_empty() => None,
            Some(s) if s.starts_with("http://") || s.starts_with("https://") => Some(s),
            Some(_) => {
                c.at(v.span(), "otlp_endpoint must be an http:// or https:// URL");
                None
            }
            None => None,
        },
        None if env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) => None,
        // The signal-specific URL is used as it is; the general one is a
        // base that `/v1/traces` is added to (OTLP/HTTP).
        None => match env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").filter(|s| !s.is_empty()) {
            Some(url) => {
                traces_url = true;
                Some(url)
            }
            None => env("OTEL_EXPORTER_OTLP_ENDPOINT").filter(|s| !s.is_empty()),
        },
    };
    let protocol_text = t
        .otlp_protocol
        .as_ref()
        .map(|p| p.get_ref().clone())
        .or_else(|| env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"))
        .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|| "grpc".to_owned());
    let protocol = match protocol_text.as_str() {
        "grpc" => OtlpProtocol::Grpc,
        "http/protobuf" => OtlpProtocol::HttpProtobuf,
        other => {
            let span = t.otlp_protocol.as_ref().map_or(0..0, |p| p.span());
            c.at(
                span,
                format!("unknown otlp_protocol '{other}' (grpc, http/protobuf)"),
            );
            OtlpProtocol::Grpc
        }
    };
    let env_ratio = env("OTEL_TRACES_SAMPLER_ARG")
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|r| (0.0..=1.0).contains(r));
    // OTEL_TRACES_SAMPLER: whether a client's sampled flag is followed, and
    // the ratio for the rest; unknown names keep the default
    // (parentbased_traceidratio at OTEL_TRACES_SAMPLER_ARG, else 1.0).
    let (env_parent_based, env_ratio) = match env("OTEL_TRACES_SAMPLER").as_deref() {
        Some("always_on") => (false, Some(1.0)),
        Some("always_off") => (false, Some(0.0)),
        Some("traceidratio") => (false, env_ratio),
        Some("parentbased_always_on") => (true, Some(1.0)),
        Some("parentbased_always_off") => (true, Some(0.0)),
        _ => (true, env_ratio),
    };
    let sampling_ratio = match &t.sampling_ratio {
        Some(_) => c.float(t.sampling_ratio.as_ref(), 1.0, 0.0..=1.0, "sampling_ratio"),
        None => env_ratio.unwrap_or(1.0),
    };
    let parent_based = t
        .parent_based
        .as_ref()
        .map_or(env_parent_based, |v| *v.get_ref());
    let headers = if t.otlp_headers.is_empty() {
        env("OTEL_EXPORTER_OTLP_TRACES_HEADERS")
            .or_else(|| env("OTEL_EXPORTER_OTLP_HEADERS"))
            .map(|v| {
                otel_pairs(&v)
                    .into_iter()
                    .filter(|(k, _)| http_token(k))
                    .map(|(k, v)| (k.to_ascii_lowercase(), Secret::new(v)))
                    .collect()
            })
            .unwrap_or_default()
    } else {
        t.otlp_headers
            .iter()
            .filter_map(|(k, v)| {
                if !http_token(k) {
                    c.at(v.span(), format!("'{k}' is not a valid header name"));
                    return None;
                }
                c.interpolated(v, env).map(|s| (k.clone(), Secret::new(s)))
            })
            .collect()
    };
    let resource_attributes = if t.resource_attributes.is_empty() {
        env("OTEL_RESOURCE_ATTRIBUTES")
            .map(|v| otel_pairs(&v))
            .unwrap_or_default()
    } else {
        t.resource_attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.get_ref().clone()))
            .collect()
    };
    let d = TelemetryConfig::default();
    let max_queue_spans = c.positive(
        t.max_queue_spans.as_ref(),
        crate::cgroup::fit(d.max_queue_spans as u64, 1 << 10, 16, 1024),
        10_000_000,
        "max_queue_spans",
    ) as usize;
    let max_batch_spans = c.positive(
        t.max_batch_spans.as_ref(),
        d.max_batch_spans as u64,
        100_000,
        "max_batch_spans",
    ) as usize;
    TelemetryConfig {
        otlp_endpoint: endpoint,
        traces_url,
        protocol,
        headers,
        sampling_ratio,
        parent_based,
        // The file, then OTEL_SERVICE_NAME, then a `service.name` resource
        // attribute.
        service_name: t
            .service_name
            .as_ref()
            .map(|s| s.get_ref().clone())
            .or_else(|| env("OTEL_SERVICE_NAME"))
            .or_else(|| {
                resource_attributes
                    .iter()
                    .find(|(k, _)| k == "service.name")
                    .map(|(_, v)| v.clone())
            })
            .unwrap_or_else(|| "sluice".to_owned()),
        resource_attributes,
        max_queue_spans,
        max_batch_spans,
        export_interval: ms(c.positive(
            t.export_interval_ms.as_ref(),
            d.export_interval.as_millis() as u64,
            3_600_000,
            "export_interval_ms",
        )),
        export_timeout: ms(c.positive(
            t.export_timeout_ms.as_ref(),
            d.export_timeout.as_millis() as u64,
            3_600_000,
            "export_timeout_ms",
        )),
    }
}

/// `key1=value1,key2=value2` with percent-encoded values, as the
/// `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_EXPORTER_OTLP_HEADERS` variables
/// hold them; malformed members are skipped.
fn otel_pairs(v: &str) -> Vec<(String, String)> {
    v.split(',')
        .filter_map(|member| {
            let (k, v) = member.split_once('=')?;
            let k = k.trim();
            (!k.is_empty()).then(|| {
                let v = percent_encoding::percent_decode_str(v.trim()).decode_utf8_lossy();
                (k.to_owned(), v.into_owned())
            })
        })
        .collect()
}
