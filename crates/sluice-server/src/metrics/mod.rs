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

/// The request-path label sets hash their fields with foldhash into one
/// word: prometheus-client's families key a std `HashMap` (SipHash), whose
/// cost is per byte and per `write`, ten lookups a request.
macro_rules! fast_hash {
    ($t:ty: $($f:ident),+) => {
        impl std::hash::Hash for $t {
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                use std::hash::BuildHasher;
                let mut h = foldhash::fast::FixedState::default().build_hasher();
                $(std::hash::Hash::hash(&self.$f, &mut h);)+
                state.write_u64(std::hash::Hasher::finish(&h));
            }
        }
    };
}
fast_hash!(RequestLabels: route, model, provider, status);
fast_hash!(TargetLabels: model, provider);
fast_hash!(TokenLabels: model, provider, kind);
fast_hash!(AttemptLabels: model, provider, outcome);
fast_hash!(GenAiLabels: gen_ai_operation_name, gen_ai_request_model, gen_ai_provider_name);
fast_hash!(TokenTypeLabels: gen_ai_operation_name, gen_ai_request_model, gen_ai_provider_name, gen_ai_token_type);

#[derive(Clone, Debug, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    pub model: Arc<str>,
    pub provider: Arc<str>,
    pub status: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    pub model: Arc<str>,
    pub provider: Arc<str>,
}

#[derive(Clone, Debug, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub model: Arc<str>,
    pub provider: Arc<str>,
    pub kind: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, EncodeLabelSet)]
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

#[derive(Clone, Debug, PartialEq, Eq, EncodeLabelSet)]
pub struct GenAiLabels {
    pub gen_ai_operation_name: &'static str,
    pub gen_ai_request_model: Arc<str>,
    pub gen_ai_provider_name: Arc<str>,
}

#[derive(Clone, Debug, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenTypeLabels {
    pub gen_ai_operation_name: &'static str,
    pub gen_ai_request_model: Arc<str>,
    pub gen_ai_provider_name: Arc<str>,
    pub gen_ai_token_type: &'static str,
}

pub mod cgroup;
mod handles;
pub mod mcp;
pub mod modality;
pub mod plugins;
pub mod predict;
pub mod redaction;
pub mod reload;
mod series;
mod target;

pub use sluice_telemetry::OutcomeLabels;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerLabels {
    pub worker: u32,
}

/// What a finished request tells the GenAI metrics.
pub struct GenAi<'a> {
    pub route: &'static str,
    pub model: &'a Arc<str>,
    pub provider: &'a Arc<str>,
    pub status: u16,
    /// Arrival to last byte.
    pub total: Duration,
    /// The committed upstream attempt, start to end.
    pub upstream: Option<Duration>,
    /// Time spent in Sluice itself.
    pub overhead: Option<Duration>,
    /// Time to first token (streams).
    pub ttft: Option<Duration>,
    pub usage: Option<Usage>,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn token_histogram() -> Histogram {
    // 1 … ~4M tokens, ×4.
    Histogram::new(exponential_buckets(1.0, 4.0, 12))
}

fn fine_histogram() -> Histogram {
    // 10 µs … ~5 s, doubling: for overhead and time per output token.
    Histogram::new(exponential_buckets(0.00001, 2.0, 20))
}

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
    token_usage: HistogramFamily<TokenTypeLabels>,
    operation_duration: HistogramFamily<GenAiLabels>,
    server_request_duration: HistogramFamily<GenAiLabels>,
    time_to_first_token: HistogramFamily<GenAiLabels>,
    time_per_output_token: HistogramFamily<GenAiLabels>,
    overhead: HistogramFamily<GenAiLabels>,
    /// The handles of the series above, by a finished request's labels.
    series: series::SeriesCache,
    /// The handles of `first_byte` and `attempts`, by (model, provider).
    targets: target::TargetCache,
    pub active_requests: Gauge,
    pub active_streams: Gauge,
    /// Audit events by outcome (written, buffered, lost).
    pub audit_events: sluice_audit::Counts,
    /// Finished trace spans: exported, dropped (queue full), failed (export error).
    pub trace_spans: Family<OutcomeLabels, Counter>,
    /// Rate-limit decisions the shared (Redis) backend could not make, by
    /// what happened instead (local, refused).
    pub limit_backend_errors: Family<OutcomeLabels, Counter>,
    /// Requests refused by a rate or concurrency limit, by limit.
    pub limited: Family<OutcomeLabels, Counter>,
    pub hub: crate::hub::HubMetrics,
    /// Client connections per listener, and those closed by the gateway.
    pub connections: crate::conn::ConnMetrics,
    /// Configuration reloads and the loaded file's hash.
    pub reload: reload::ReloadMetrics,
    /// `sluice_cgroup_*`, and the shedding flag requests read.
    pub cgroup: cgroup::CgroupMetrics,
    /// `sluice_redaction_cache_*`, read at scrape time.
    pub redaction: redaction::RedactionMetrics,
    /// Local inference (`/v1/predict`, `/v2/models/…/infer`).
    pub predict: std::sync::Arc<predict::PredictMetrics>,
    /// The MCP gateway (`/mcp`).
    pub mcp: mcp::McpMetrics,
    /// WASM plugins' failed calls.
    pub plugins: std::sync::Arc<plugins::PluginMetrics>,
    /// Multimodal parts' conversions.
    pub modality: modality::ModalityMetrics,
    pub agent_queue_depth: Gauge,
    process_rss: Gauge,
    process_cpu: Gauge<f64, AtomicU64>,
    process_fds: Gauge,
    tokio_workers: Gauge,
    tokio_alive_tasks: Gauge,
    tokio_queue_depth: Gauge,
    tokio_busy: Family<WorkerLabels, Gauge<f64, AtomicU64>>,
}

fn latency_histogram() -> Histogram {
    // 1 ms … ~131 s, doubling.
    Histogram::new(exponential_buckets(0.001, 2.0, 18))
}

impl Metrics {
    pub fn new() -> Self {
        // GenAI semantic-convention metrics keep their own names; the rest
        // live under `sluice_`.
        let mut root = Registry::default();
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
        let token_usage: HistogramFamily<TokenTypeLabels> =
            Family::new_with_constructor(token_histogram);
        let operation_duration: HistogramFamily<GenAiLabels> =
            Family::new_with_constructor(latency_histogram);
        let server_request_duration: HistogramFamily<GenAiLabels> =
            Family::new_with_constructor(latency_histogram);
        let time_to_first_token: HistogramFamily<GenAiLabels> =
            Family::new_with_constructor(latency_histogram);
        let time_per_output_token: HistogramFamily<GenAiLabels> =
            Family::new_with_constructor(fine_histogram);
        let overhead: HistogramFamily<GenAiLabels> = Family::new_with_constructor(fine_histogram);
        let active_streams = Gauge::default();
        let audit_events = sluice_audit::Counts::default();
        let trace_spans = Family::<OutcomeLabels, Counter>::default();
        let limit_backend_errors = Family::<OutcomeLabels, Counter>::default();
        let limited = Family::<OutcomeLabels, Counter>::default();
        let hub = crate::hub::HubMetrics::default();
        let connections = crate::conn::ConnMetrics::default();
        connections.precreate();
        let reload = reload::ReloadMetrics::default();
        let cgroup = cgroup::CgroupMetrics::default();
        let redaction = redaction::RedactionMetrics::default();
        let predict = std::sync::Arc::new(predict::PredictMetrics::default());
        let mcp = mcp::McpMetrics::default();
        let plugins = std::sync::Arc::new(plugins::PluginMetrics::default());
        let modality = modality::ModalityMetrics::default();
        // Series for every known outcome from the start, at zero: a rate()
        // over a series that appears later misses its first increments.
        for (family, outcomes) in [
            (&trace_spans, &["exported", "dropped", "failed"][..]),
            (&limited, &["requests", "tokens", "streams", "budget"][..]),
            (&limit_backend_errors, &["local", "refused"][..]),
        ] {
            for &outcome in outcomes {
                let _ = family.get_or_create(&OutcomeLabels { outcome });
            }
        }
        let agent_queue_depth = Gauge::default();
        let process_rss = Gauge::default();
        let process_cpu = Gauge::<f64, AtomicU64>::default();
        let process_fds = Gauge::default();
        let tokio_workers = Gauge::default();
        let tokio_alive_tasks = Gauge::default();
        let tokio_queue_depth = Gauge::default();
        let tokio_busy = Family::<WorkerLabels, Gauge<f64, AtomicU64>>::default();
        let genai = &mut root;
        genai.register(
            "gen_ai_client_token_usage",
            "Tokens per request by type (input, output)",
            token_usage.clone(),
        );
        genai.register(
            "gen_ai_client_operation_duration_seconds",
            "Duration of the upstream model call that answered",
            operation_duration.clone(),
        );
        genai.register(
            "gen_ai_server_request_duration_seconds",
            "Duration of the whole request at the gateway",
            server_request_duration.clone(),
        );
        genai.register(
            "gen_ai_server_time_to_first_token_seconds",
            "Time to the first streamed token",
            time_to_first_token.clone(),
        );
        genai.register(
            "gen_ai_server_time_per_output_token_seconds",
            "Time per output token after the first, for streams",
            time_per_output_token.clone(),
        );
        let registry = root.sub_registry_with_prefix("sluice");
        registry.register(
            "gateway_overhead_seconds",
            "Time spent in Sluice itself: the request's duration less the upstream call, failed attempts, back-off and reading the client's body",
            overhead.clone(),
        );
        connections.register(registry);
        reload.register(registry);
        cgroup.register(registry);
        redaction.register(registry);
        predict.register(registry);
        mcp.register(registry);
        plugins.register(registry);
        modality.register(registry);
        registry.register(
            "active_streams",
            "Streamed responses in flight",
            active_streams.clone(),
        );
        registry.register(
            "audit_events",
            "Audit events by outcome: written to the sink, buffered on disk while it is down, lost",
            audit_events.0.clone(),
        );
        registry.register(
            "trace_spans",
            "Finished trace spans by outcome: exported over OTLP, dropped (export queue full), failed (the export failed)",
            trace_spans.clone(),
        );
        registry.register(
            "rate_limit_backend_errors",
            "Rate-limit checks the shared Redis backend could not answer, by what was done instead",
            limit_backend_errors.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests refused by a limit (requests, tokens, streams)",
            limited.clone(),
        );
        registry.register(
            "agents_connected",
            "Agents connected to this replica",
            hub.connected.clone(),
        );
        registry.register(
            "agent_evictions",
            "Agents evicted for missing heartbeats",
            hub.evictions.clone(),
        );
        registry.register(
            "agent_instructions",
            "Instructions by outcome (queued, overflow, acked, completed, undelivered)",
            hub.instructions.clone(),
        );
        registry.register(
            "agent_queue_depth",
            "Frames waiting to be sent to agents, all agents together",
            agent_queue_depth.clone(),
        );
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
        // Process and runtime metrics keep their conventional unprefixed names.
        root.register(
            "process_resident_memory_bytes",
            "Resident set size",
            process_rss.clone(),
        );
        root.register(
            "process_cpu_seconds",
            "User and system CPU time consumed",
            process_cpu.clone(),
        );
        root.register(
            "process_open_fds",
            "Open file descriptors",
            process_fds.clone(),
        );
        root.register(
            "tokio_workers",
            "Runtime worker threads",
            tokio_workers.clone(),
        );
        root.register(
            "tokio_alive_tasks",
            "Tasks alive in the runtime",
            tokio_alive_tasks.clone(),
        );
        root.register(
            "tokio_global_queue_depth",
            "Tasks waiting in the runtime's global queue",
            tokio_queue_depth.clone(),
        );
        root.register(
            "tokio_worker_busy_seconds",
            "Time each worker spent busy",
            tokio_busy.clone(),
        );
        Self {
            registry: root,
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
            token_usage,
            operation_duration,
            server_request_duration,
            time_to_first_token,
            time_per_output_token,
            overhead,
            series: series::SeriesCache::default(),
            targets: target::TargetCache::default(),
            active_requests,
            active_streams,
            audit_events,
            trace_spans,
            limit_backend_errors,
            limited,
            hub,
            connections,
            reload,
            cgroup,
            redaction,
            predict,
            mcp,
            plugins,
            modality,
            agent_queue_depth,
            process_rss,
            process_cpu,
            process_fds,
            tokio_workers,
            tokio_alive_tasks,
            tokio_queue_depth,
            tokio_busy,
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

    /// Process and runtime gauges, read at scrape time.
    pub fn refresh_process(&self) {
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
            // Fields after the command name (which may hold spaces).
            && let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r)
        {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = 100.0; // USER_HZ on Linux
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            // utime and stime are fields 14 and 15 of stat (11 and 12 here).
            self.process_cpu.set((num(11) + num(12)) / ticks);
            // rss (field 24) is in pages.
            self.process_rss.set((num(21) * 4096.0) as i64);
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            self.process_fds.set(dir.count() as i64);
        }
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            let m = h.metrics();
            self.tokio_workers.set(m.num_workers() as i64);
            self.tokio_alive_tasks.set(m.num_alive_tasks() as i64);
            self.tokio_queue_depth.set(m.global_queue_depth() as i64);
            for w in 0..m.num_workers() {
                self.tokio_busy
                    .get_or_create(&WorkerLabels { worker: w as u32 })
                    .set(m.worker_total_busy_duration(w).as_secs_f64());
            }
        }
    }

    /// Copies every target's live state into the gauges (before a scrape).
    pub fn refresh_targets(
        &self,
        routes: &sluice_core::route::RouteTable,
        providers: &[sluice_core::config::ProviderConfig],
    ) {
        for route in routes.iter() {
            for (t, state) in route.targets.iter().zip(&route.states) {
                let labels = TargetGaugeLabels {
                    model: route.name.clone(),
                    provider: providers[t.provider].name.clone(),
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
