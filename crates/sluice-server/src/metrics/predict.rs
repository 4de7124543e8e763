//! Local inference: batch sizes, requests waiting (the batcher's atomic
//! counter, read at scrape), time queued and time inferring, per model.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub model: String,
}

type HistogramFamily = Family<ModelLabels, Histogram, fn() -> Histogram>;

fn sizes() -> Histogram {
    // 1 … 4096 examples, doubling.
    Histogram::new(exponential_buckets(1.0, 2.0, 13))
}

fn seconds() -> Histogram {
    // 10 µs … ~5 s, doubling.
    Histogram::new(exponential_buckets(0.00001, 2.0, 20))
}

pub struct PredictMetrics {
    batch_size: HistogramFamily,
    pub pending: Family<ModelLabels, Gauge>,
    queue: HistogramFamily,
    inference: HistogramFamily,
}

impl Default for PredictMetrics {
    fn default() -> Self {
        Self {
            batch_size: Family::new_with_constructor(sizes),
            pending: Family::default(),
            queue: Family::new_with_constructor(seconds),
            inference: Family::new_with_constructor(seconds),
        }
    }
}

impl PredictMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "predict_batch_size",
            "Examples per local inference run, by model",
            self.batch_size.clone(),
        );
        registry.register(
            "predict_pending",
            "Predict requests waiting for a batch, by model",
            self.pending.clone(),
        );
        registry.register(
            "predict_queue_seconds",
            "Time a predict request waited for its batch, by model",
            self.queue.clone(),
        );
        registry.register(
            "predict_inference_seconds",
            "Time one local inference run took, by model",
            self.inference.clone(),
        );
    }
}

fn labels(model: &str) -> ModelLabels {
    ModelLabels {
        model: model.to_owned(),
    }
}

impl sluice_inference::Observer for PredictMetrics {
    fn batch(&self, model: &str, size: usize, took: Duration) {
        let l = labels(model);
        self.batch_size.get_or_create(&l).observe(size as f64);
        self.inference.get_or_create(&l).observe(took.as_secs_f64());
    }

    fn queued(&self, model: &str, waited: &mut dyn Iterator<Item = Duration>) {
        let h = self.queue.get_or_create(&labels(model));
        for w in waited {
            h.observe(w.as_secs_f64());
        }
    }
}
