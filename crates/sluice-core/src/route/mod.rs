//! Model name → targets, and the pick among them.
//!
//! Each target carries a [`TargetState`] (breaker, adaptive weight, requests in
//! flight, latency estimate). A pick skips targets that are excluded (already
//! tried by this request), cooling down after a `Retry-After`, or behind an
//! open breaker; then the model's strategy chooses. Everything is lock-free:
//! the only shared write on a pick is one counter increment.

// A model's route is looked up on every request: foldhash, not std's
// SipHash. The map holds configured names only.
use foldhash::{HashMap, HashMapExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::config::{Config, ModelConfig, RoutingConfig, Strategy, TargetConfig};
use crate::resilience::{Outcome, Permit, TargetState, Transition};

pub use crate::resilience::now_nanos;

/// A set of target indices (a model has at most 64 targets).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TargetSet(u64);

impl TargetSet {
    pub fn contains(self, i: usize) -> bool {
        self.0 & (1 << i) != 0
    }
    pub fn insert(&mut self, i: usize) {
        self.0 |= 1 << i;
    }
    pub fn remove(&mut self, i: usize) {
        self.0 &= !(1 << i);
    }
}

#[derive(Debug)]
pub struct ModelRoute {
    pub name: Arc<str>,
    pub targets: Vec<TargetConfig>,
    pub states: Vec<Arc<TargetState>>,
    pub strategy: Strategy,
    pub fallbacks: Vec<Arc<str>>,
    pub timeout: Duration,
    pub ttft_timeout: Duration,
    pub max_attempts: u32,
    /// US dollars per million (input, output) tokens, when configured.
    pub price: Option<(f64, f64)>,
    /// What the targets take natively, and how other parts become text.
    pub modalities: crate::config::Modalities,
    pub convert: Option<Arc<crate::config::ConvertConfig>>,
    counter: AtomicU64,
}

/// A target admitted by its breaker, counted in flight until dropped.
/// [`record`](Self::record) the attempt's outcome once it is known; a guard
/// dropped without one (a cancelled request) counts as neutral.
#[derive(Debug)]
pub struct Admitted {
    pub index: usize,
    pub state: Arc<TargetState>,
    permit: Option<Permit>,
}

impl Admitted {
    pub fn record(&mut self, outcome: Outcome, now: u64) -> Transition {
        match self.permit.take() {
            Some(p) => self.state.record(p, outcome, now),
            None if outcome == Outcome::Failure => self.state.note_failure(now),
            None => Transition::None,
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(p) = self.permit.take() {
            self.state
                .record(p, Outcome::Neutral, crate::resilience::now_nanos());
        }
        self.state.release();
    }
}

impl ModelRoute {
    pub fn new(m: &ModelConfig, routing: &RoutingConfig) -> Self {
        Self::with_states(m, routing, |_| None)
    }

    /// A route whose targets take the state `reuse` gives them (carried
    /// over from an earlier configuration), or a fresh one.
    fn with_states(
        m: &ModelConfig,
        routing: &RoutingConfig,
        mut reuse: impl FnMut(&TargetConfig) -> Option<Arc<TargetState>>,
    ) -> Self {
        assert!(!m.targets.is_empty(), "validation guarantees a target");
        let states = m
            .targets
            .iter()
            .map(|t| {
                reuse(t).unwrap_or_else(|| {
                    Arc::new(TargetState::new(
                        t.weight,
                        routing.breaker.clone(),
                        routing.weights.clone(),
                    ))
                })
            })
            .collect();
        Self {
            name: m.name.clone(),
            targets: m.targets.clone(),
            states,
            strategy: m.strategy,
            fallbacks: m.fallbacks.clone(),
            timeout: m.timeout,
            ttft_timeout: m.ttft_timeout,
            max_attempts: m.max_attempts,
            price: m.price,
            modalities: m.modalities,
            convert: m.convert.clone(),
            counter: AtomicU64::new(0),
        }
    }

    /// Picks an available target not in `exclude` and takes a breaker slot on
    /// it. Targets that refuse (a race with their breaker) join `exclude`.
    /// The soonest any target may be picked again (monotonic nanos).
    pub fn next_available(&self, now: u64) -> Option<u64> {
        self.states.iter().map(|s| s.available_at(now)).min()
    }

    pub fn admit(&self, now: u64, exclude: &mut TargetSet) -> Option<Admitted> {
        for _ in 0..self.targets.len() {
            let index = self.pick(now, *exclude)?;
            let state = &self.states[index];
            if let Some(permit) = state.admit(now) {
                return Some(Admitted {
                    index,
                    state: state.clone(),
                    permit: Some(permit),
                });
            }
            exclude.insert(index);
        }
        None
    }

    /// Whether any target could be admitted now (ignoring exclusions).
    pub fn any_available(&self, now: u64) -> bool {
        self.states.iter().any(|s| s.available(now))
    }

    /// The strategy's choice among available targets outside `exclude`.
    pub fn pick(&self, now: u64, exclude: TargetSet) -> Option<usize> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let usable = |i: usize| !exclude.contains(i) && self.states[i].available(now);
        if self.targets.len() == 1 {
            return usable(0).then_some(0);
        }
        match self.strategy {
            Strategy::Weighted => self.weighted(n, usable),
            Strategy::LeastOutstanding => {
                let start = (n as usize) % self.targets.len();
                (0..self.targets.len())
                    .map(|k| (start + k) % self.targets.len())
                    .filter(|&i| usable(i))
                    .min_by(|&a, &b| {
                        let score = |i: usize| {
                            let s = &self.states[i];
                            (f64::from(s.outstanding()) + 1.0) / s.effective_weight()
                        };
                        score(a).total_cmp(&score(b))
                    })
            }
            Strategy::LowestLatency => {
                // One pick in 16 explores by weight, so estimates stay fresh.
                if n % 16 == 15 {
                    return self.weighted(n, usable);
                }
                let candidates = (0..self.targets.len()).filter(|&i| usable(i));
                // Unmeasured targets (no sample yet) go first.
                candidates.min_by(|&a, &b| {
                    let l = |i: usize| self.states[i].ewma_ttfb_us().unwrap_or(0.0);
                    l(a).total_cmp(&l(b))
                })
            }
        }
    }

    fn weighted(&self, n: u64, usable: impl Fn(usize) -> bool) -> Option<usize> {
        let total: f64 = (0..self.targets.len())
            .filter(|&i| usable(i))
            .map(|i| self.states[i].effective_weight())
            .sum();
        if total <= 0.0 {
            return None;
        }
        let mut point = unit(splitmix64(n)) * total;
        let mut last = None;
        for i in (0..self.targets.len()).filter(|&i| usable(i)) {
            last = Some(i);
            point -= self.states[i].effective_weight();
            if point < 0.0 {
                return Some(i);
            }
        }
        last // rounding at the very end of the range
    }
}

/// A uniform number in [0, 1) from 53 random bits.
fn unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Backoff before attempt `attempt` (1-based retries): exponential from
/// `base`, capped at `max`, with full jitter drawn from `seed`.
pub fn backoff(base: Duration, max: Duration, attempt: u32, seed: u64) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.min(16)).min(max);
    exp.mul_f64(unit(splitmix64(seed)))
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
            by_name.insert(m.name.clone(), ModelRoute::new(m, &config.routing));
        }
        Self { by_name, names }
    }

    /// The table for `config` after a reload from `prev_config`: a target
    /// that is the same as before (model, provider, upstream model, weight,
    /// under unchanged breaker and weight settings) keeps its state —
    /// breaker, adaptive weight, latency estimate, requests in flight — so
    /// a reload does not close a tripped breaker or forget what it learnt.
    pub fn carrying(config: &Config, prev: &RouteTable, prev_config: &Config) -> Self {
        type Key = (Arc<str>, Arc<str>, Arc<str>, u32);
        let key = |c: &Config, model: &Arc<str>, t: &TargetConfig| -> Key {
            (
                model.clone(),
                c.providers[t.provider].name.clone(),
                t.model.clone(),
                t.weight,
            )
        };
        let same_rules = config.routing.breaker == prev_config.routing.breaker
            && config.routing.weights == prev_config.routing.weights;
        let mut old: HashMap<Key, Arc<TargetState>> = HashMap::new();
        if same_rules {
            for m in &prev_config.models {
                if let Some(r) = prev.get(&m.name) {
                    for (t, s) in r.targets.iter().zip(&r.states) {
                        old.insert(key(prev_config, &m.name, t), s.clone());
                    }
                }
            }
        }
        let mut by_name = HashMap::with_capacity(config.models.len());
        let mut names = Vec::with_capacity(config.models.len());
        for m in &config.models {
            names.push(m.name.clone());
            let route = ModelRoute::with_states(m, &config.routing, |t| {
                old.remove(&key(config, &m.name, t))
            });
            by_name.insert(m.name.clone(), route);
        }
        Self { by_name, names }
    }

    pub fn get(&self, model: &str) -> Option<&ModelRoute> {
        self.by_name.get(model)
    }

    pub fn iter(&self) -> impl Iterator<Item = &ModelRoute> {
        self.names.iter().filter_map(|n| self.by_name.get(n))
    }
}

#[cfg(test)]
mod tests;
