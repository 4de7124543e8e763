//! Prometheus metrics for the admin listener.
//!
//! Labels are low-cardinality by construction: `model` and `provider` come
//! from the configuration (never from what a client sent), `route` is a static
//! string, and errors are labelled by their taxonomy code.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use sluice_core::request::Usage;
use sluice_core::resilience::Outcome;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    pub model: Arc<str>,
    pub provider: Arc<str>,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    pub model: Arc<str>,
    pub provider: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub model: Arc<str>,
    pub provider: Arc<str>,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    pub model: Arc<str>,
    pub provider: Arc<str>,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetGaugeLabels {
    pub model: Arc<str>,
    pub provider: Arc<str>,
    pub upstream_model: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub provider: Arc<str>,
    pub code: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: HistogramFamily<RequestLabels>,
    first_byte: HistogramFamily<TargetLabels>,
    tokens: Family<TokenLabels, Counter>,
    upstream_errors: Family<ErrorLabels, Counter>,
    cancelled: Family<TargetLabels, Counter>,
    attempts: Family<AttemptLabels, Counter>,
    breaker_state: Family<TargetGaugeLabels, Gauge>,
    effective_weight: Family<TargetGaugeLabels, Gauge<f64, AtomicU64>>,
    outstanding: Family<TargetGaugeLabels, Gauge>,
    pub active_requests: Gauge,
}

fn latency_histogram() -> Histogram {
    // 1 ms … ~131 s, doubling.
    Histogram::new(exponential_buckets(0.001, 2.0, 18))
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sluice");
        let requests = Family::<RequestLabels, Counter>::default();
        let duration: HistogramFamily<RequestLabels> =
            Family::new_with_constructor(latency_histogram);
        let first_byte: HistogramFamily<TargetLabels> =
            Family::new_with_constructor(latency_histogram);
        let tokens = Family::<TokenLabels, Counter>::default();
        let upstream_errors = Family::<ErrorLabels, Counter>::default();
        let cancelled = Family::<TargetLabels, Counter>::default();
        let active_requests = Gauge::default();
        let attempts = Family::<AttemptLabels, Counter>::default();
        let breaker_state = Family::<TargetGaugeLabels, Gauge>::default();
        let effective_weight = Family::<TargetGaugeLabels, Gauge<f64, AtomicU64>>::default();
        let outstanding = Family::<TargetGaugeLabels, Gauge>::default();
        registry.register(
            "upstream_attempts",
            "Upstream attempts by outcome (success, failure, neutral = the client's own error)",
            attempts.clone(),
        );
        registry.register(
            "target_breaker_state",
            "Circuit breaker state per target: 0 closed, 1 open, 2 half-open",
            breaker_state.clone(),
        );
        registry.register(
            "target_effective_weight",
            "Current adaptive routing weight per target",
            effective_weight.clone(),
        );
        registry.register(
            "target_outstanding_requests",
            "Requests in flight per target",
            outstanding.clone(),
        );
        registry.register(
            "requests",
            "Requests served, by route, model, provider and status",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request arrival to the last byte of the response",
            duration.clone(),
        );
        registry.register(
            "time_to_first_byte_seconds",
            "Time from request arrival to the first response body byte from the provider",
            first_byte.clone(),
        );
        registry.register(
            "tokens",
            "Tokens reported by providers, by kind (input, output)",
            tokens.clone(),
        );
        registry.register(
            "upstream_errors",
            "Upstream failures before a response, by provider and error code",
            upstream_errors.clone(),
        );
        registry.register(
            "requests_cancelled",
            "Responses abandoned before their end (client went away)",
            cancelled.clone(),
        );
        registry.register(
            "active_requests",
            "Requests in flight, streams included",
            active_requests.clone(),
        );
        Self {
            registry,
            requests,
            duration,
            first_byte,
            tokens,
            upstream_errors,
            cancelled,
            attempts,
            breaker_state,
            effective_weight,
            outstanding,
            active_requests,
        }
    }

    pub fn record_request(&self, labels: &RequestLabels, elapsed: Duration) {
        self.requests.get_or_create(labels).inc();
        self.duration
            .get_or_create(labels)
            .observe(elapsed.as_secs_f64());
    }

    pub fn record_first_byte(&self, model: &Arc<str>, provider: &Arc<str>, elapsed: Duration) {
        let labels = TargetLabels {
            model: model.clone(),
            provider: provider.clone(),
        };
        self.first_byte
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    pub fn record_usage(&self, model: &Arc<str>, provider: &Arc<str>, usage: Usage) {
        for (kind, n) in [
            ("input", usage.prompt_tokens),
            ("output", usage.completion_tokens),
        ] {
            let labels = TokenLabels {
                model: model.clone(),
                provider: provider.clone(),
                kind,
            };
            self.tokens.get_or_create(&labels).inc_by(n);
        }
    }

    pub fn record_upstream_error(&self, provider: &Arc<str>, code: &'static str) {
        let labels = ErrorLabels {
            provider: provider.clone(),
            code,
        };
        self.upstream_errors.get_or_create(&labels).inc();
    }

    pub fn record_cancel(&self, model: &Arc<str>, provider: &Arc<str>) {
        let labels = TargetLabels {
            model: model.clone(),
            provider: provider.clone(),
        };
        self.cancelled.get_or_create(&labels).inc();
    }

    pub fn record_attempt(&self, model: &Arc<str>, provider: &Arc<str>, outcome: Outcome) {
        let labels = AttemptLabels {
            model: model.clone(),
            provider: provider.clone(),
            outcome: match outcome {
                Outcome::Success => "success",
                Outcome::Failure => "failure",
                Outcome::Neutral => "neutral",
            },
        };
        self.attempts.get_or_create(&labels).inc();
    }

    /// Copies every target's live state into the gauges (before a scrape).
    pub fn refresh_targets(&self, snap: &crate::app::Snapshot) {
        for route in snap.routes.iter() {
            for (t, state) in route.targets.iter().zip(&route.states) {
                let labels = TargetGaugeLabels {
                    model: route.name.clone(),
                    provider: snap.config.providers[t.provider].name.clone(),
                    upstream_model: t.model.clone(),
                };
                self.breaker_state
                    .get_or_create(&labels)
                    .set(state.breaker.state().as_gauge());
                self.effective_weight
                    .get_or_create(&labels)
                    .set(state.effective_weight());
                self.outstanding
                    .get_or_create(&labels)
                    .set(i64::from(state.outstanding()));
            }
        }
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
