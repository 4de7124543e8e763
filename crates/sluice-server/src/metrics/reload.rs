//! The configuration's series: reloads by outcome and the loaded file.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use sha2::{Digest, Sha256};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HashLabels {
    pub sha256: String,
}

/// `sluice_config_reloads_total{outcome}` and `sluice_config_info{sha256}`.
#[derive(Default)]
pub struct ReloadMetrics {
    pub reloads: Family<super::OutcomeLabels, Counter>,
    pub info: Family<HashLabels, Gauge>,
    current: std::sync::Mutex<Option<String>>,
}

impl ReloadMetrics {
    pub fn register(&self, registry: &mut Registry) {
        for outcome in ["ok", "failed"] {
            let _ = self
                .reloads
                .get_or_create(&super::OutcomeLabels { outcome });
        }
        registry.register(
            "config_reloads",
            "Configuration reloads (SIGHUP, POST /config/reload) by outcome",
            self.reloads.clone(),
        );
        registry.register(
            "config_info",
            "The loaded configuration file: 1, labelled with its SHA-256",
            self.info.clone(),
        );
    }

    /// Says which file is loaded now.
    pub fn loaded(&self, sha256: &str) {
        let mut cur = self
            .current
            .lock()
            .expect("config hash lock is never poisoned");
        if let Some(old) = cur.take() {
            self.info.remove(&HashLabels { sha256: old });
        }
        self.info
            .get_or_create(&HashLabels {
                sha256: sha256.to_owned(),
            })
            .set(1);
        *cur = Some(sha256.to_owned());
    }
}

/// The SHA-256 of a file's bytes, hex.
pub fn file_hash(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
