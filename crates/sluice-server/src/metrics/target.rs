//! A target's per-attempt metrics, found with one lookup: its time to
//! first byte and its attempts by outcome.
//!
//! Each was a family lookup on every proxied request
//! (`bench/instructions.py`). As for [`super::series`], the handles of a
//! (model, provider) pair's series are kept under it
//! ([`super::handles::Handles`]), each made the first time it is needed,
//! so `/metrics` shows the same series it did and none before its first
//! value.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use sluice_core::resilience::Outcome;

use super::{AttemptLabels, Metrics, TargetLabels};

pub(super) type TargetCache = super::handles::Handles<TargetLabels, Target>;

/// One (model, provider) pair's handles.
#[derive(Default)]
pub(super) struct Target {
    first_byte: OnceLock<Histogram>,
    /// By outcome: success, failure, neutral.
    attempts: [OnceLock<Counter>; 3],
}

impl Metrics {
    pub fn record_first_byte(&self, model: &Arc<str>, provider: &Arc<str>, elapsed: Duration) {
        self.with_target(model, provider, |t, labels| {
            t.first_byte
                .get_or_init(|| self.first_byte.get_or_create(labels).clone())
                .observe(elapsed.as_secs_f64());
        });
    }

    pub fn record_attempt(&self, model: &Arc<str>, provider: &Arc<str>, outcome: Outcome) {
        let (i, name) = match outcome {
            Outcome::Success => (0, "success"),
            Outcome::Failure => (1, "failure"),
            Outcome::Neutral => (2, "neutral"),
        };
        self.with_target(model, provider, |t, l| {
            t.attempts[i]
                .get_or_init(|| {
                    let labels = AttemptLabels {
                        model: l.model.clone(),
                        provider: l.provider.clone(),
                        outcome: name,
                    };
                    self.attempts.get_or_create(&labels).clone()
                })
                .inc();
        });
    }

    /// `f` with the pair's handles (made empty the first time) and labels.
    fn with_target(
        &self,
        model: &Arc<str>,
        provider: &Arc<str>,
        f: impl FnOnce(&Target, &TargetLabels),
    ) {
        let labels = TargetLabels {
            model: model.clone(),
            provider: provider.clone(),
        };
        self.targets.with(labels, |_| Target::default(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(m: &Metrics) -> String {
        m.encode()
    }

    fn line<'a>(text: &'a str, start: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(start))
    }

    #[test]
    fn kept_handles_count_into_the_same_series() {
        let m = Metrics::new();
        let (a, b, p): (Arc<str>, Arc<str>, Arc<str>) = ("a".into(), "b".into(), "p".into());
        let attempts = |model: &str, outcome: &str| {
            format!(
                "sluice_upstream_attempts_total{{model=\"{model}\",provider=\"p\",outcome=\"{outcome}\"}}"
            )
        };
        // Nothing shows before its first value.
        assert!(line(&text(&m), "sluice_upstream_attempts_total{").is_none());
        for _ in 0..3 {
            m.record_attempt(&a, &p, Outcome::Success);
        }
        m.record_attempt(&a, &p, Outcome::Failure);
        m.record_attempt(&b, &p, Outcome::Neutral);
        m.record_first_byte(&a, &p, Duration::from_millis(5));
        m.record_first_byte(&a, &p, Duration::from_millis(7));
        let t = text(&m);
        assert_eq!(
            line(&t, &attempts("a", "success")),
            Some(&*format!("{} 3", attempts("a", "success")))
        );
        assert_eq!(
            line(&t, &attempts("a", "failure")),
            Some(&*format!("{} 1", attempts("a", "failure")))
        );
        assert_eq!(
            line(&t, &attempts("b", "neutral")),
            Some(&*format!("{} 1", attempts("b", "neutral")))
        );
        assert!(
            line(&t, &attempts("a", "neutral")).is_none(),
            "no series before its first value"
        );
        assert!(line(&t, &attempts("b", "success")).is_none());
        let ttfb = "sluice_time_to_first_byte_seconds_count{model=\"a\",provider=\"p\"}";
        assert_eq!(line(&t, ttfb), Some(&*format!("{ttfb} 2")));
        assert!(line(&t, "sluice_time_to_first_byte_seconds_count{model=\"b\"").is_none());
        // Counted again through the kept handle: the same series.
        m.record_attempt(&a, &p, Outcome::Success);
        assert_eq!(
            line(&text(&m), &attempts("a", "success")),
            Some(&*format!("{} 4", attempts("a", "success")))
        );
    }
}
