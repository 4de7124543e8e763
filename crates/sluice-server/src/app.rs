//! The shared state: an immutable configuration snapshot behind an atomic
//! pointer, plus what lives across snapshots (metrics, readiness).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use sluice_core::config::{Config, ProviderKind};
use sluice_core::route::RouteTable;
use sluice_providers::transport::{self, UpstreamClient};

use crate::metrics::Metrics;

/// Everything a request needs from the configuration, compiled once.
/// A request takes one snapshot and uses it to its end.
pub struct Snapshot {
    pub config: Config,
    pub routes: RouteTable,
    /// Index-aligned with `config.providers`; `None` for in-process providers.
    pub clients: Vec<Option<UpstreamClient>>,
}

impl Snapshot {
    pub fn build(config: Config) -> Self {
        let routes = RouteTable::new(&config);
        let clients = config
            .providers
            .iter()
            .map(|p| match p.kind {
                ProviderKind::OpenAi => Some(transport::client_for(p)),
                ProviderKind::Mock => None,
            })
            .collect();
        Self {
            config,
            routes,
            clients,
        }
    }
}

pub struct App {
    pub snapshot: ArcSwap<Snapshot>,
    pub metrics: Metrics,
    pub ready: AtomicBool,
    /// The metric label for requests that never reached a route.
    pub none_label: Arc<str>,
    pub started_unix: u64,
}

impl App {
    pub fn new(config: Config) -> Arc<Self> {
        Arc::new(Self {
            snapshot: ArcSwap::from_pointee(Snapshot::build(config)),
            metrics: Metrics::new(),
            ready: AtomicBool::new(false),
            none_label: Arc::from(""),
            started_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        })
    }
}
