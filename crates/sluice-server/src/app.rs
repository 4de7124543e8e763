//! The shared state: an immutable configuration snapshot behind an atomic
//! pointer, plus what lives across snapshots (metrics, readiness).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use sluice_core::GatewayError;
use sluice_core::auth::KeyTable;
use sluice_core::config::{Config, ProviderKind};
use sluice_core::limits::{Limiter, Limits};
use sluice_core::route::RouteTable;
use sluice_providers::transport::{self, UpstreamClient};
use sluice_providers::{anthropic, gemini, openai};

use crate::metrics::Metrics;

/// Everything a request needs from the configuration, compiled once.
/// A request takes one snapshot and uses it to its end.
pub struct Snapshot {
    pub config: Config,
    pub routes: RouteTable,
    pub keys: KeyTable,
    /// Index-aligned with `config.providers`; `None` for in-process providers.
    pub upstreams: Vec<Option<Upstream>>,
}

/// A network provider's pooled client and request template.
pub struct Upstream {
    pub client: UpstreamClient,
    pub endpoint: Endpoint,
}

/// How requests to a provider are addressed, per wire format.
pub enum Endpoint {
    OpenAi(openai::Endpoint),
    Anthropic(anthropic::Endpoint),
    Gemini(gemini::Endpoint),
}

impl Snapshot {
    pub fn build(config: Config) -> Result<Self, GatewayError> {
        let routes = RouteTable::new(&config);
        let keys = KeyTable::new(&config);
        let upstreams = config
            .providers
            .iter()
            .map(|p| {
                let endpoint = match p.kind {
                    ProviderKind::OpenAi | ProviderKind::Azure => {
                        Endpoint::OpenAi(openai::Endpoint::new(p)?)
                    }
                    ProviderKind::Anthropic => Endpoint::Anthropic(anthropic::Endpoint::new(p)?),
                    ProviderKind::Gemini => Endpoint::Gemini(gemini::Endpoint::new(p)?),
                    ProviderKind::Mock => return Ok(None),
                };
                Ok(Some(Upstream {
                    client: transport::client_for(p),
                    endpoint,
                }))
            })
            .collect::<Result<_, GatewayError>>()?;
        Ok(Self {
            config,
            routes,
            keys,
            upstreams,
        })
    }
}

pub struct App {
    pub snapshot: ArcSwap<Snapshot>,
    pub metrics: Metrics,
    pub ready: AtomicBool,
    /// The metric label for requests that never reached a route.
    pub none_label: Arc<str>,
    pub started_unix: u64,
    pub log_control: crate::LogControl,
    /// `None` when no OTLP endpoint is configured: no span is ever built.
    pub tracing: Option<crate::telemetry::Tracing>,
    /// Rate-limit buckets per key (`key:NAME`) and model (`model:NAME`).
    pub limiter: Limiter,
    /// Set when limits are shared through Redis.
    pub shared_limiter: Option<Arc<crate::shared_limits::SharedLimiter>>,
    /// `None` when no `[audit]` is configured.
    pub audit: Option<crate::audit::Auditor>,
}

impl App {
    pub fn new(
        config: Config,
        log_control: crate::LogControl,
        tracing: Option<crate::telemetry::Tracing>,
    ) -> anyhow::Result<Arc<Self>> {
        let now = now_secs();
        let metrics = Metrics::new();
        let audit = match &config.audit {
            Some(a) => Some(crate::audit::Auditor::start(
                a,
                config.redis.as_ref(),
                config.redaction.redactor.clone(),
                crate::audit::Counts(metrics.audit_events.clone()),
            )?),
            None => None,
        };
        let shared_limiter = match (&config.redis, config.limits.backend) {
            (Some(r), sluice_core::config::LimitsBackend::Redis) => Some(Arc::new(
                crate::shared_limits::SharedLimiter::new(crate::redis_conn::connect(r)?, r.timeout),
            )),
            _ => None,
        };
        let mut limiter = Limiter::default();
        for k in config
            .keys
            .iter()
            .filter(|k| k.rpm.is_some() || k.tpm.is_some())
        {
            limiter
                .keys
                .insert(k.name.clone(), Arc::new(Limits::new(k.rpm, k.tpm, now)));
        }
        for k in &config.keys {
            if let Some((tokens, period)) = k.budget {
                limiter.budgets.insert(
                    k.name.clone(),
                    Arc::new(sluice_core::limits::Budget::new(tokens, period)),
                );
            }
            if let Some(n) = k.max_streams {
                limiter.streams.insert(
                    k.name.clone(),
                    Arc::new(sluice_core::limits::StreamGate::new(n)),
                );
            }
        }
        for m in config
            .models
            .iter()
            .filter(|m| m.rpm.is_some() || m.tpm.is_some())
        {
            limiter
                .models
                .insert(m.name.clone(), Arc::new(Limits::new(m.rpm, m.tpm, now)));
        }
        Ok(Arc::new(Self {
            limiter,
            audit,
            shared_limiter,
            snapshot: ArcSwap::from_pointee(Snapshot::build(config)?),
            metrics,
            ready: AtomicBool::new(false),
            none_label: Arc::from(""),
            started_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            log_control,
            tracing,
        }))
    }
}

/// The caller's key, when keys are configured: `Ok(None)` on an open API.
pub fn authenticate<'a>(
    snap: &'a Snapshot,
    headers: &http::HeaderMap,
) -> Result<Option<&'a sluice_core::config::KeyConfig>, GatewayError> {
    if snap.keys.is_open() {
        return Ok(None);
    }
    let bearer = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    let token = bearer.or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()));
    snap.keys.check(token.map(str::trim), now_unix()).map(Some)
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Monotonic seconds, the clock the rate limiter runs on.
pub fn now_secs() -> f64 {
    sluice_core::resilience::now_nanos() as f64 / 1e9
}
