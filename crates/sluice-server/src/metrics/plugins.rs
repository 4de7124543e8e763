//! WASM plugins: failed calls by plugin and kind (`trap`, `timeout`,
//! `memory`, `view`, `error`, `abi`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginErrorLabels {
    pub plugin: String,
    pub kind: &'static str,
}

/// Every kind a failure can have, so each plugin's series exist from its
/// load on, at zero.
pub const KINDS: [&str; 6] = ["trap", "timeout", "memory", "view", "error", "abi"];

#[derive(Default)]
pub struct PluginMetrics {
    errors: Family<PluginErrorLabels, Counter>,
}

impl PluginMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "plugin_errors",
            "Failed calls into WASM plugins (filters and predictors), by plugin and kind",
            self.errors.clone(),
        );
    }

    pub fn failed(&self, plugin: &str, kind: &'static str) {
        self.errors
            .get_or_create(&PluginErrorLabels {
                plugin: plugin.to_owned(),
                kind,
            })
            .inc();
    }

    /// The series of a newly loaded plugin, at zero.
    pub fn loaded(&self, plugin: &str) {
        for kind in KINDS {
            let _ = self.errors.get_or_create(&PluginErrorLabels {
                plugin: plugin.to_owned(),
                kind,
            });
        }
    }
}
