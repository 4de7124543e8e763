//! Multimodal conversions: how long each part's conversion took, by
//! modality, converter (the model or processor) and outcome (`ok`,
//! `error`, `timeout`, `cancelled`).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModalityLabels {
    pub modality: &'static str,
    pub converter: String,
    pub outcome: &'static str,
}

fn seconds() -> Histogram {
    // 5 ms … ~80 s, doubling.
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

pub struct ModalityMetrics {
    duration: Family<ModalityLabels, Histogram, fn() -> Histogram>,
}

impl Default for ModalityMetrics {
    fn default() -> Self {
        Self {
            duration: Family::new_with_constructor(seconds),
        }
    }
}

impl ModalityMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "modality_duration_seconds",
            "Time converting one request part to text, by modality, converter and outcome",
            self.duration.clone(),
        );
    }

    pub fn observe(
        &self,
        modality: &'static str,
        converter: &str,
        outcome: &'static str,
        took: Duration,
    ) {
        self.duration
            .get_or_create(&ModalityLabels {
                modality,
                converter: converter.to_owned(),
                outcome,
            })
            .observe(took.as_secs_f64());
    }
}
