//! `[[plugins]]`: proxy-wasm filters (`sluice-wasm`) on the API routes,
//! loaded at start and on every reload ([`load`]), run around the
//! handlers by [`run::filter`].

mod body;
pub(crate) mod run;

use std::sync::Arc;
use std::time::SystemTime;

use sluice_core::config::{Config, ConfigError, PluginConfig};
use sluice_wasm::Limits;
use sluice_wasm::filter::Filter;

use crate::metrics::plugins::PluginMetrics;

/// A loaded filter and what it was loaded from.
pub struct Loaded {
    pub config: PluginConfig,
    pub filter: Arc<Filter>,
    stamp: Option<(u64, SystemTime)>,
}

/// The filters, in file order.
#[derive(Default)]
pub struct Plugins {
    pub filters: Vec<Loaded>,
}

impl Plugins {
    /// The filters that apply to a request for `path`, in order.
    pub fn filters_for<'a>(&'a self, path: &'a str) -> impl Iterator<Item = &'a Loaded> + 'a {
        self.filters
            .iter()
            .filter(move |l| l.config.applies_to(path))
    }
}

fn stamp(p: &PluginConfig) -> Option<(u64, SystemTime)> {
    let m = std::fs::metadata(&p.path).ok()?;
    Some((m.len(), m.modified().ok()?))
}

/// Instances of a filter when the entry does not say: one per CPU (at
/// most 8), as Envoy runs one VM per worker thread.
fn default_instances() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().min(8))
}

fn load_one(p: &PluginConfig) -> Result<Arc<Filter>, String> {
    let wasm = std::fs::read(&p.path).map_err(|e| format!("cannot read the module: {e}"))?;
    let limits = Limits {
        max_memory_bytes: p.limits.max_memory_bytes,
        max_call: p.limits.max_call,
    };
    let instances = p.instances.unwrap_or_else(default_instances);
    Filter::load(&p.name, &wasm, p.config.as_bytes(), limits, instances)
}

/// Loads every filter, each failure located at its entry. On a reload
/// (`prev`), a filter whose entry and file did not change keeps running as
/// it is, its instances and their state too.
pub fn load(
    config: &Config,
    metrics: &PluginMetrics,
    prev: Option<&Plugins>,
) -> Result<Plugins, Vec<ConfigError>> {
    let mut out = Plugins::default();
    let mut errors = Vec::new();
    for p in &config.plugins {
        let stamp = stamp(p);
        let kept = prev.and_then(|prev| {
            prev.filters
                .iter()
                .find(|l| l.config.name == p.name)
                .filter(|l| same(&l.config, p) && l.stamp == stamp && stamp.is_some())
                .map(|l| l.filter.clone())
        });
        let filter = match kept {
            Some(f) => f,
            None => match load_one(p) {
                Ok(f) => {
                    tracing::info!(plugin = %p.name, path = %p.path.display(), "plugin loaded");
                    metrics.loaded(&p.name);
                    f
                }
                Err(e) => {
                    errors.push(p.error(format!("plugin '{}': {e}", p.name)));
                    continue;
                }
            },
        };
        out.filters.push(Loaded {
            config: p.clone(),
            filter,
            stamp,
        });
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// The same settings (its place in the file aside).
fn same(a: &PluginConfig, b: &PluginConfig) -> bool {
    (&a.path, &a.config, &a.routes, a.limits, a.instances)
        == (&b.path, &b.config, &b.routes, b.limits, b.instances)
}

/// `sluice check-config`: every module compiles, starts and takes its
/// configuration.
pub fn check(config: &Config) -> Vec<ConfigError> {
    config
        .plugins
        .iter()
        .filter_map(|p| {
            load_one(p)
                .err()
                .map(|e| p.error(format!("plugin '{}': {e}", p.name)))
        })
        .collect()
}
