//! A target's live state: its breaker, adaptive weight, requests in flight,
//! latency estimate and provider-requested back-off.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::breaker::{Admission, Breaker, BreakerConfig, Outcome, Permit, Transition};

#[derive(Clone, Debug, PartialEq)]
pub struct WeightConfig {
    /// On success: `w = min(base, w × growth)`.
    pub growth: f64,
    /// When the breaker trips: `w = max(floor × base, w × trip_factor)`.
    pub trip_factor: f64,
    pub floor: f64,
    /// Consecutive successes after which `w = base` again.
    pub reset_after: u32,
}

impl Default for WeightConfig {
    fn default() -> Self {
        Self {
            growth: 1.05,
            trip_factor: 0.5,
            floor: 0.1,
            reset_after: 3,
        }
    }
}

/// Weights are kept in thousandths so they fit an atomic integer.
const SCALE: f64 = 1000.0;
/// EWMA smoothing for time to first byte.
const EWMA_ALPHA: f64 = 0.2;

#[derive(Debug)]
pub struct TargetState {
    pub breaker: Breaker,
    weights: WeightConfig,
    base_milli: u32,
    weight_milli: AtomicU32,
    consecutive_successes: AtomicU32,
    outstanding: AtomicU32,
    /// f64 bits of the EWMA of time to first byte in µs; 0 = no sample yet.
    ewma_ttfb_us: AtomicU64,
    /// Monotonic nanos until which the provider asked us to stay away.
    cooling_until: AtomicU64,
}

impl TargetState {
    pub fn new(base_weight: u32, breaker: BreakerConfig, weights: WeightConfig) -> Self {
        let base_milli = base_weight.saturating_mul(SCALE as u32).max(1);
        Self {
            breaker: Breaker::new(breaker),
            weights,
            base_milli,
            weight_milli: AtomicU32::new(base_milli),
            consecutive_successes: AtomicU32::new(0),
            outstanding: AtomicU32::new(0),
            ewma_ttfb_us: AtomicU64::new(0),
            cooling_until: AtomicU64::new(0),
        }
    }

    pub fn effective_weight(&self) -> f64 {
        f64::from(self.weight_milli.load(Ordering::Relaxed)) / SCALE
    }

    pub fn outstanding(&self) -> u32 {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// EWMA of time to first byte in µs; `None` before the first sample.
    pub fn ewma_ttfb_us(&self) -> Option<f64> {
        let v = f64::from_bits(self.ewma_ttfb_us.load(Ordering::Relaxed));
        (v > 0.0).then_some(v)
    }

    /// Can be picked now: not cooling down and the breaker would admit.
    pub fn available(&self, now: u64) -> bool {
        now >= self.cooling_until.load(Ordering::Relaxed) && self.breaker.admissible(now)
    }

    /// When this target may next be picked (monotonic nanos).
    pub fn available_at(&self, now: u64) -> u64 {
        self.breaker
            .admissible_at(now)
            .max(self.cooling_until.load(Ordering::Relaxed))
    }

    /// Takes a breaker slot; the returned guard counts the request as in flight.
    pub fn admit(&self, now: u64) -> Option<Permit> {
        match self.breaker.admit(now) {
            Admission::Allowed(p) | Admission::Probe(p) => {
                self.outstanding.fetch_add(1, Ordering::Relaxed);
                Some(p)
            }
            Admission::Rejected => None,
        }
    }

    /// Settles a permit from [`admit`](Self::admit). Call exactly once per permit.
    pub fn record(&self, permit: Permit, outcome: Outcome, now: u64) -> Transition {
        let transition = self.breaker.record(permit, outcome, now);
        self.adapt(outcome, transition)
    }

    /// A failure after the attempt was already recorded (a broken stream).
    pub fn note_failure(&self, now: u64) -> Transition {
        let transition = self.breaker.note_failure(now);
        self.adapt(Outcome::Failure, transition)
    }

    fn adapt(&self, outcome: Outcome, transition: Transition) -> Transition {
        match outcome {
            Outcome::Success => {
                let n = self.consecutive_successes.fetch_add(1, Ordering::Relaxed) + 1;
                if n >= self.weights.reset_after {
                    self.weight_milli.store(self.base_milli, Ordering::Relaxed);
                } else {
                    let (base, growth) = (self.base_milli, self.weights.growth);
                    self.update_weight(|w| (w * growth).min(f64::from(base)));
                }
            }
            Outcome::Failure => {
                self.consecutive_successes.store(0, Ordering::Relaxed);
            }
            Outcome::Neutral => {}
        }
        if transition == Transition::Tripped {
            let floor = self.weights.floor * f64::from(self.base_milli);
            let factor = self.weights.trip_factor;
            self.update_weight(|w| (w * factor).max(floor));
        }
        transition
    }

    /// Marks the request from `admit` as no longer in flight.
    pub fn release(&self) {
        self.outstanding.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn observe_ttfb(&self, micros: f64) {
        let _ = self
            .ewma_ttfb_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                let old = f64::from_bits(bits);
                let new = if old > 0.0 {
                    old + EWMA_ALPHA * (micros - old)
                } else {
                    micros.max(1.0)
                };
                Some(new.to_bits())
            });
    }

    /// Stay away until `until` (monotonic nanos), e.g. from `Retry-After`.
    pub fn cool_until(&self, until: u64) {
        self.cooling_until.fetch_max(until, Ordering::Relaxed);
    }

    fn update_weight(&self, f: impl Fn(f64) -> f64) {
        let _ = self
            .weight_milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
                Some(f(f64::from(w)).round().max(1.0) as u32)
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn state() -> TargetState {
        let breaker = BreakerConfig {
            consecutive_failures: 2,
            cooldown: Duration::from_millis(10),
            half_open_probes: 1,
            success_threshold: 1,
            ..BreakerConfig::default()
        };
        TargetState::new(4, breaker, WeightConfig::default())
    }

    fn run(t: &TargetState, outcome: Outcome, now: u64) -> Transition {
        let p = t.admit(now).expect("admitted");
        let tr = t.record(p, outcome, now);
        t.release();
        tr
    }

    #[test]
    fn weight_halves_on_trip_down_to_the_floor_and_recovers() {
        let t = state();
        assert_eq!(t.effective_weight(), 4.0);
        let mut now = 0;
        let mut weights = vec![];
        for _ in 0..6 {
            run(&t, Outcome::Failure, now);
            assert_eq!(run(&t, Outcome::Failure, now), Transition::Tripped);
            weights.push(t.effective_weight());
            now += 20_000_000; // past the cooldown: the next admit is a probe
            run(&t, Outcome::Success, now); // closes (success_threshold = 1)
            // one success grows it by 5%, capped at base
        }
        assert_eq!(weights[0], 2.0);
        // Each cycle: ×0.5 on trip, ×1.05 on the closing success; never below 0.4.
        assert!(weights.iter().all(|w| *w >= 0.4), "{weights:?}");
        assert_eq!(*weights.last().unwrap(), 0.4);
        // Three consecutive successes: back to base.
        run(&t, Outcome::Success, now);
        assert!(t.effective_weight() < 4.0);
        run(&t, Outcome::Success, now);
        assert_eq!(t.effective_weight(), 4.0);
    }

    #[test]
    fn success_growth_is_five_percent_capped() {
        let t = state();
        run(&t, Outcome::Failure, 0);
        run(&t, Outcome::Failure, 0); // trip: 4 → 2
        let now = 20_000_000;
        run(&t, Outcome::Success, now);
        assert!((t.effective_weight() - 2.1).abs() < 1e-9);
        run(&t, Outcome::Success, now);
        assert!((t.effective_weight() - 2.205).abs() < 1e-3);
    }

    #[test]
    fn outstanding_counts_admitted_until_released() {
        let t = state();
        let p = t.admit(0).unwrap();
        assert_eq!(t.outstanding(), 1);
        t.record(p, Outcome::Neutral, 0);
        t.release();
        assert_eq!(t.outstanding(), 0);
    }

    #[test]
    fn cooling_makes_it_unavailable_until_then() {
        let t0 = state();
        assert_eq!(t0.available_at(5), 5, "a fresh target is available now");
        t0.cool_until(1_000);
        assert_eq!(t0.available_at(5), 1_000);
        // An open breaker: available when its cooldown (10 ms) ends.
        let tripped = state();
        run(&tripped, Outcome::Failure, 100);
        assert_eq!(run(&tripped, Outcome::Failure, 100), Transition::Tripped);
        assert_eq!(tripped.available_at(200), 100 + 10_000_000);
        assert_eq!(tripped.available_at(20_000_000), 20_000_000);
        let t = state();
        t.cool_until(1_000);
        assert!(!t.available(999));
        assert!(t.available(1_000));
    }

    #[test]
    fn ewma_moves_toward_samples() {
        let t = state();
        assert_eq!(t.ewma_ttfb_us(), None);
        t.observe_ttfb(100.0);
        assert_eq!(t.ewma_ttfb_us(), Some(100.0));
        t.observe_ttfb(200.0);
        assert_eq!(t.ewma_ttfb_us(), Some(120.0));
    }
}
