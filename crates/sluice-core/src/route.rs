//! Model name → targets, and the weighted pick among them.
//!
//! The pick is lock-free: a shared counter is scrambled (splitmix64) and mapped
//! onto the cumulative weights, which spreads requests in proportion to weight
//! without runs of the same target and without a random-number generator per
//! thread. Breaker-aware and adaptive picks build on this later.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::{Config, TargetConfig};

#[derive(Debug)]
pub struct ModelRoute {
    pub name: Arc<str>,
    pub targets: Vec<TargetConfig>,
    cumulative: Vec<u64>,
    counter: AtomicU64,
}

impl ModelRoute {
    pub fn new(name: Arc<str>, targets: Vec<TargetConfig>) -> Self {
        assert!(!targets.is_empty(), "validation guarantees a target");
        let mut sum = 0u64;
        let cumulative = targets
            .iter()
            .map(|t| {
                sum += u64::from(t.weight.max(1));
                sum
            })
            .collect();
        Self {
            name,
            targets,
            cumulative,
            counter: AtomicU64::new(0),
        }
    }

    pub fn pick(&self) -> &TargetConfig {
        if self.targets.len() == 1 {
            return &self.targets[0];
        }
        let total = *self.cumulative.last().expect("non-empty");
        let n = splitmix64(self.counter.fetch_add(1, Ordering::Relaxed)) % total;
        let i = self.cumulative.partition_point(|&c| c <= n);
        &self.targets[i]
    }
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[derive(Debug, Default)]
pub struct RouteTable {
    by_name: HashMap<Arc<str>, ModelRoute>,
    /// Model names in configuration order, for `GET /v1/models`.
    pub names: Vec<Arc<str>>,
}

impl RouteTable {
    pub fn new(config: &Config) -> Self {
        let mut by_name = HashMap::with_capacity(config.models.len());
        let mut names = Vec::with_capacity(config.models.len());
        for m in &config.models {
            names.push(m.name.clone());
            by_name.insert(
                m.name.clone(),
                ModelRoute::new(m.name.clone(), m.targets.clone()),
            );
        }
        Self { by_name, names }
    }

    pub fn get(&self, model: &str) -> Option<&ModelRoute> {
        self.by_name.get(model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(provider: usize, weight: u32) -> TargetConfig {
        TargetConfig {
            provider,
            model: Arc::from("m"),
            weight,
        }
    }

    #[test]
    fn pick_follows_weights() {
        let r = ModelRoute::new(
            Arc::from("m"),
            vec![target(0, 3), target(1, 1), target(2, 6)],
        );
        let mut counts = [0u32; 3];
        for _ in 0..100_000 {
            counts[r.pick().provider] += 1;
        }
        let share = |i: usize| f64::from(counts[i]) / 100_000.0;
        assert!((share(0) - 0.3).abs() < 0.01, "{counts:?}");
        assert!((share(1) - 0.1).abs() < 0.01, "{counts:?}");
        assert!((share(2) - 0.6).abs() < 0.01, "{counts:?}");
    }

    #[test]
    fn pick_interleaves_rather_than_runs() {
        let r = ModelRoute::new(Arc::from("m"), vec![target(0, 1), target(1, 1)]);
        let seq: Vec<usize> = (0..64).map(|_| r.pick().provider).collect();
        let longest = seq
            .chunk_by(|a, b| a == b)
            .map(<[usize]>::len)
            .max()
            .unwrap();
        assert!(longest < 10, "{seq:?}");
    }

    #[test]
    fn table_lookup() {
        let config = crate::config::embedded_default(&|_| None).unwrap();
        let t = RouteTable::new(&config);
        assert!(t.get("mock-1").is_some());
        assert!(t.get("nope").is_none());
        assert_eq!(&*t.names[0], "mock-1");
    }
}
