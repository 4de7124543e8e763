//! The shared state: an immutable configuration snapshot behind an atomic
//! pointer, plus what lives across snapshots (metrics, readiness).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use sluice_core::GatewayError;
use sluice_core::config::Config;
use sluice_core::route::RouteTable;
use sluice_providers::adapter::Adapter;
use sluice_providers::transport::{self, ProviderClient};

use crate::metrics::Metrics;

/// Everything a request needs from the configuration, compiled once.
/// A request takes one snapshot and uses it to its end.
pub struct Snapshot {
    pub config: Config,
    pub routes: RouteTable,
    /// Index-aligned with `config.providers`.
    pub upstreams: Vec<Upstream>,
    /// Takes the providers' keys (and key-shaped text) out of every
    /// upstream body or message relayed to a client.
    pub scrubber: sluice_core::scrub::Scrubber,
}

/// A provider's adapter, and its pooled client when it is on the network.
pub struct Upstream {
    pub client: Option<ProviderClient>,
    pub adapter: Adapter,
    /// For uploads streamed through (made on the first one).
    pub upload_client: std::sync::OnceLock<transport::UploadClient>,
}

impl Snapshot {
    pub fn build(config: Config) -> Result<Self, GatewayError> {
        Self::build_from(config, None)
    }

    /// The snapshot for `config`, carrying over from `prev` (a reload) the
    /// targets' state and the connection pools of providers whose
    /// transport settings did not change.
    pub fn build_from(config: Config, prev: Option<&Snapshot>) -> Result<Self, GatewayError> {
        let routes = match prev {
            Some(p) => RouteTable::carrying(&config, &p.routes, &p.config),
            None => RouteTable::new(&config),
        };
        // A provider's pool is kept when everything but its credentials and
        // extra headers (which go in each request, not the pool) is the same.
        let transport = |p: &sluice_core::config::ProviderConfig| {
            format!(
                "{}|{:?}|{}|{:?}|{:?}|{}|{:?}",
                p.name,
                p.kind,
                p.base_url,
                p.connect_timeout,
                p.ca_file,
                p.max_idle_connections,
                p.timeout
            )
        };
        let pool_of = |p: &sluice_core::config::ProviderConfig| {
            let prev = prev?;
            let i = prev
                .config
                .providers
                .iter()
                .position(|q| transport(q) == transport(p))?;
            prev.upstreams[i].client.clone()
        };
        let upstreams = config
            .providers
            .iter()
            .map(|p| {
                let adapter = Adapter::new(p)?;
                let client = adapter
                    .over_network()
                    .then(|| pool_of(p).unwrap_or_else(|| transport::client_for(p)));
                Ok(Upstream {
                    client,
                    adapter,
                    upload_client: std::sync::OnceLock::new(),
                })
            })
            .collect::<Result<_, GatewayError>>()?;
        let scrubber = sluice_core::scrub::Scrubber::new(
            config
                .providers
                .iter()
                .filter_map(|p| p.api_key.as_ref().map(|k| k.expose())),
        );
        Ok(Self {
            config,
            routes,
            upstreams,
            scrubber,
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
    /// Keys and their limiters; swapped when keys are added or removed.
    pub access: ArcSwap<crate::access::Access>,
    /// The admin API's keys as written to `keys_file`; its lock
    /// serializes key changes.
    pub key_specs: tokio::sync::Mutex<Vec<crate::keys_file::KeySpec>>,
    /// Set when limits are shared through Redis.
    pub shared_limiter: Option<Arc<crate::shared_limits::SharedLimiter>>,
    /// The agent hub; `None` when `[agents] enabled = false`.
    pub hub: Option<Arc<crate::hub::Hub>>,
    /// `None` when no `[audit]` is configured.
    pub audit: Option<crate::audit::Auditor>,
    /// Stored Responses (`previous_response_id`, `GET /v1/responses/{id}`).
    pub responses: Arc<crate::responses_store::ResponseStore>,
    /// Local models (`[[predictors]]`), loaded at start and swapped on a
    /// reload.
    pub predictors: ArcSwap<crate::predict::Predictors>,
    /// proxy-wasm filters (`[[plugins]]`), loaded at start and swapped on a
    /// reload.
    pub plugins: ArcSwap<crate::plugins::Plugins>,
    /// Local processors (`[[processors]]`) and the image fetcher for
    /// multimodal conversions, loaded at start and swapped on a reload.
    pub converters: ArcSwap<crate::multimodal::processors::Converters>,
    /// Files and batches kept in memory when `[files]` names the mock.
    pub local_files: crate::files::LocalFiles,
    /// Where the configuration came from, for reloads.
    pub source: Source,
    /// The standard gRPC services (health, reflection).
    pub grpc: crate::grpc::Standard,
    /// The MCP gateway's upstream servers (`[[mcp_servers]]`), swapped on
    /// a reload (unchanged servers are kept).
    pub mcp: ArcSwap<sluice_mcp::Federation>,
    /// MCP clients' sessions (handshake revisions).
    pub mcp_sessions: crate::mcp::Sessions,
    /// `mcp_rpm` buckets.
    pub mcp_limits: crate::mcp::ToolLimits,
}

/// Where the running configuration came from, and what the command line
/// changed of it (kept on every reload).
pub struct Source {
    /// `None`: the embedded default, which has no file to reread.
    pub path: Option<std::path::PathBuf>,
    /// Listener addresses from the command line: a reload does not move them.
    pub listen: Option<std::net::SocketAddr>,
    pub admin_listen: Option<std::net::SocketAddr>,
    /// Where a reload sends the listeners it bound at moved addresses.
    pub moves: tokio::sync::mpsc::UnboundedSender<crate::listener::Moved>,
}

impl App {
    pub fn new(
        config: Config,
        log_control: crate::LogControl,
        // The keys from `[auth] keys_file`, loaded once by the caller.
        (key_specs, api_keys): (
            Vec<crate::keys_file::KeySpec>,
            Vec<sluice_core::config::KeyConfig>,
        ),
        source: Source,
    ) -> anyhow::Result<Arc<Self>> {
        let metrics = Metrics::new();
        let tracing =
            crate::telemetry::Tracing::init(&config.telemetry, metrics.trace_spans.clone())?;
        let audit = match &config.audit {
            Some(a) => Some(crate::audit::Auditor::start(
                a,
                config.redis.as_ref(),
                config.redaction.redactor.clone(),
                metrics.audit_events.clone(),
            )?),
            None => None,
        };
        let hub = config
            .agents
            .enabled
            .then(|| crate::hub::Hub::new(config.agents.clone(), metrics.hub.clone()));
        if let (Some(h), Some(r)) = (&hub, &config.redis) {
            let c = crate::hub::cluster::Cluster::start(h, r)?;
            let _ = h.cluster.set(c);
        }
        let shared_limiter = match (&config.redis, config.limits.backend) {
            (Some(r), sluice_core::config::LimitsBackend::Redis) => {
                Some(Arc::new(crate::shared_limits::SharedLimiter::new(
                    sluice_core::redis_conn::connect(r).map_err(anyhow::Error::msg)?,
                    r.timeout,
                )))
            }
            _ => None,
        };
        let access = crate::access::Access::build(&config, api_keys, None);
        if let Some(bytes) = source.path.as_ref().and_then(|p| std::fs::read(p).ok()) {
            metrics
                .reload
                .loaded(&crate::metrics::reload::file_hash(&bytes));
        }
        let mut responses = crate::responses_store::ResponseStore::new(
            config.responses.max_stored,
            config.responses.max_stored_bytes,
        );
        if let (true, Some(r)) = (config.responses.redis, &config.redis) {
            let conn = sluice_core::redis_conn::connect(r).map_err(anyhow::Error::msg)?;
            responses = responses.with_redis(conn, config.responses.ttl);
        }
        let responses = Arc::new(responses);
        let predictors =
            crate::predict::load(&config, metrics.predict.clone(), &metrics.plugins, None)
                .map_err(|errs| {
                    anyhow::anyhow!(sluice_core::config::ConfigErrors(errs).to_string())
                })?;
        let plugins = crate::plugins::load(&config, &metrics.plugins, None)
            .map_err(|errs| anyhow::anyhow!(sluice_core::config::ConfigErrors(errs).to_string()))?;
        let converters =
            crate::multimodal::processors::load(&config, None).map_err(anyhow::Error::msg)?;
        let mcp = sluice_mcp::Federation::start(&config.mcp, None);
        let mcp_sessions = match &config.redis {
            Some(r) => crate::mcp::Sessions::with_redis(
                sluice_core::redis_conn::connect(r).map_err(anyhow::Error::msg)?,
                r.timeout,
            ),
            None => crate::mcp::Sessions::default(),
        };
        let app = Arc::new(Self {
            mcp: ArcSwap::new(mcp),
            mcp_sessions,
            mcp_limits: crate::mcp::ToolLimits::default(),
            converters: ArcSwap::from_pointee(converters),
            predictors: ArcSwap::from_pointee(predictors),
            plugins: ArcSwap::from_pointee(plugins),
            responses,
            local_files: crate::files::LocalFiles::default(),
            source,
            grpc: crate::grpc::Standard::new()?,
            access: ArcSwap::from_pointee(access),
            key_specs: tokio::sync::Mutex::new(key_specs),
            audit,
            hub,
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
        });
        crate::mcp::watch_agents(&app);
        Ok(app)
    }
}
