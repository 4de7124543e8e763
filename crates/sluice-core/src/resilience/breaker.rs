//! A circuit breaker: Closed → Open after N consecutive failures or an error
//! rate over a window; Open → HalfOpen after a cooldown; HalfOpen admits a
//! bounded number of probes; M probe successes close it, a failure reopens it.
//!
//! The state, the probes in flight, the probe successes and a generation live
//! in one `AtomicU64`, so every transition is a single compare-and-swap and the
//! probe bound is exact. A permit remembers the generation it was issued in; a
//! result that arrives after the breaker moved on does not count twice.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

#[derive(Clone, Debug, PartialEq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub consecutive_failures: u32,
    /// Failure ratio over `window` that opens it (with at least `min_requests`).
    pub error_rate: f64,
    pub min_requests: u32,
    pub window: Duration,
    /// How long it stays open before letting probes through.
    pub cooldown: Duration,
    /// Probes admitted at once while half-open.
    pub half_open_probes: u32,
    /// Probe successes that close it.
    pub success_threshold: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            error_rate: 0.5,
            min_requests: 20,
            window: Duration::from_secs(10),
            cooldown: Duration::from_secs(5),
            half_open_probes: 1,
            success_threshold: 2,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    /// For the metrics gauge: 0 closed, 1 open, 2 half-open.
    pub fn as_gauge(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Closed: go ahead.
    Allowed(Permit),
    /// Half-open: go ahead as one of the bounded probes.
    Probe(Permit),
    Rejected,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Permit {
    generation: u32,
    probe: bool,
}

/// What an attempt came to, as far as the target's health goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Connect error, timeout, 5xx, 429.
    Failure,
    /// Neither (the client's own 4xx, a cancel): releases a probe slot only.
    Neutral,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    None,
    Tripped,
    Closed,
}

// Layout of the state word.
const STATE_BITS: u64 = 0b11;
const CLOSED: u64 = 0;
const OPEN: u64 = 1;
const HALF_OPEN: u64 = 2;
const PROBES_SHIFT: u32 = 2;
const SUCC_SHIFT: u32 = 18;
const GEN_SHIFT: u32 = 34;
const FIELD: u64 = 0xFFFF;

fn state_of(w: u64) -> u64 {
    w & STATE_BITS
}
fn probes_of(w: u64) -> u64 {
    (w >> PROBES_SHIFT) & FIELD
}
fn succ_of(w: u64) -> u64 {
    (w >> SUCC_SHIFT) & FIELD
}
fn gen_of(w: u64) -> u32 {
    (w >> GEN_SHIFT) as u32
}
fn pack(state: u64, probes: u64, succ: u64, generation: u32) -> u64 {
    state | (probes << PROBES_SHIFT) | (succ << SUCC_SHIFT) | (u64::from(generation) << GEN_SHIFT)
}

// Layout of the error-rate window word: [epoch:24][total:20][failures:20].
const COUNT_MASK: u64 = (1 << 20) - 1;

#[derive(Debug)]
pub struct Breaker {
    cfg: BreakerConfig,
    word: AtomicU64,
    opened_at: AtomicU64,
    consecutive_failures: AtomicU32,
    window: AtomicU64,
}

impl Breaker {
    pub fn new(cfg: BreakerConfig) -> Self {
        Self {
            cfg,
            word: AtomicU64::new(pack(CLOSED, 0, 0, 0)),
            opened_at: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            window: AtomicU64::new(0),
        }
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.cfg
    }

    pub fn state(&self) -> BreakerState {
        match state_of(self.word.load(Ordering::Acquire)) {
            CLOSED => BreakerState::Closed,
            OPEN => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }

    /// Whether `admit` could succeed now, without taking a slot (for picking).
    pub fn admissible(&self, now: u64) -> bool {
        let w = self.word.load(Ordering::Acquire);
        match state_of(w) {
            CLOSED => true,
            OPEN => now >= self.reopens_at(),
            _ => probes_of(w) < u64::from(self.cfg.half_open_probes),
        }
    }

    /// When `admit` may next succeed (monotonic nanos): now when closed,
    /// the end of the cooldown when open; for a half-open breaker whose
    /// probes are all out, a cooldown from now (the probes decide first).
    pub fn admissible_at(&self, now: u64) -> u64 {
        let w = self.word.load(Ordering::Acquire);
        match state_of(w) {
            CLOSED => now,
            OPEN => self.reopens_at().max(now),
            _ if probes_of(w) < u64::from(self.cfg.half_open_probes) => now,
            _ => now.saturating_add(self.cfg.cooldown.as_nanos() as u64),
        }
    }

    fn reopens_at(&self) -> u64 {
        self.opened_at
            .load(Ordering::Acquire)
            .saturating_add(self.cfg.cooldown.as_nanos() as u64)
    }

    pub fn admit(&self, now: u64) -> Admission {
        let mut w = self.word.load(Ordering::Acquire);
        loop {
            let generation = gen_of(w);
            let next = match state_of(w) {
                CLOSED => {
                    return Admission::Allowed(Permit {
                        generation,
                        probe: false,
                    });
                }
                OPEN if now < self.reopens_at() => return Admission::Rejected,
                // Cooldown over: become half-open with this caller as the first probe.
                OPEN => pack(HALF_OPEN, 1, 0, generation.wrapping_add(1)),
                _ => {
                    if probes_of(w) >= u64::from(self.cfg.half_open_probes) {
                        return Admission::Rejected;
                    }
                    pack(HALF_OPEN, probes_of(w) + 1, succ_of(w), generation)
                }
            };
            match self
                .word
                .compare_exchange_weak(w, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    return Admission::Probe(Permit {
                        generation: gen_of(next),
                        probe: true,
                    });
                }
                Err(actual) => w = actual,
            }
        }
    }

    pub fn record(&self, permit: Permit, outcome: Outcome, now: u64) -> Transition {
        if permit.probe {
            self.record_probe(permit, outcome, now)
        } else {
            self.record_closed(permit, outcome, now)
        }
    }

    /// Counts a failure seen outside any permit (a stream that broke after it
    /// was already counted a success). Only a closed breaker takes note.
    pub fn note_failure(&self, now: u64) -> Transition {
        let w = self.word.load(Ordering::Acquire);
        if state_of(w) != CLOSED {
            return Transition::None;
        }
        let permit = Permit {
            generation: gen_of(w),
            probe: false,
        };
        self.record_closed(permit, Outcome::Failure, now)
    }

    fn record_closed(&self, permit: Permit, outcome: Outcome, now: u64) -> Transition {
        let failed = match outcome {
            Outcome::Neutral => return Transition::None,
            Outcome::Success => {
                self.consecutive_failures.store(0, Ordering::Relaxed);
                false
            }
            Outcome::Failure => true,
        };
        let (total, failures) = self.count_in_window(failed, now);
        if !failed {
            return Transition::None;
        }
        let consecutive = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        let rate_exceeded = total >= u64::from(self.cfg.min_requests)
            && failures as f64 >= self.cfg.error_rate * total as f64;
        if consecutive >= self.cfg.consecutive_failures || rate_exceeded {
            self.trip(permit.generation, CLOSED, now)
        } else {
            Transition::None
        }
    }

    fn record_probe(&self, permit: Permit, outcome: Outcome, now: u64) -> Transition {
        let mut w = self.word.load(Ordering::Acquire);
        loop {
            if state_of(w) != HALF_OPEN || gen_of(w) != permit.generation {
                return Transition::None; // the breaker moved on without this probe
            }
            let probes = probes_of(w).saturating_sub(1);
            let (next, transition) = match outcome {
                Outcome::Neutral => (
                    pack(HALF_OPEN, probes, succ_of(w), permit.generation),
                    Transition::None,
                ),
                Outcome::Failure => return self.trip(permit.generation, HALF_OPEN, now),
                Outcome::Success => {
                    let succ = succ_of(w) + 1;
                    if succ >= u64::from(self.cfg.success_threshold) {
                        (
                            pack(CLOSED, 0, 0, permit.generation.wrapping_add(1)),
                            Transition::Closed,
                        )
                    } else {
                        (
                            pack(HALF_OPEN, probes, succ, permit.generation),
                            Transition::None,
                        )
                    }
                }
            };
            match self
                .word
                .compare_exchange_weak(w, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    if transition == Transition::Closed {
                        self.consecutive_failures.store(0, Ordering::Relaxed);
                        self.window.store(0, Ordering::Relaxed);
                    }
                    return transition;
                }
                Err(actual) => w = actual,
            }
        }
    }

    /// Opens the breaker if it is still in `from` at `generation`.
    fn trip(&self, generation: u32, from: u64, now: u64) -> Transition {
        let mut w = self.word.load(Ordering::Acquire);
        loop {
            if state_of(w) != from || gen_of(w) != generation {
                return Transition::None; // someone else moved it first
            }
            // Published before the state so that whoever sees OPEN sees this time.
            self.opened_at.store(now, Ordering::Release);
            let next = pack(OPEN, 0, 0, generation.wrapping_add(1));
            match self
                .word
                .compare_exchange_weak(w, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Transition::Tripped,
                Err(actual) => w = actual,
            }
        }
    }

    /// Adds one result to the tumbling window; returns (total, failures) in it.
    fn count_in_window(&self, failed: bool, now: u64) -> (u64, u64) {
        let window = self.cfg.window.as_nanos().max(1) as u64;
        let epoch = (now / window) & 0xFF_FFFF;
        let mut w = self.window.load(Ordering::Relaxed);
        loop {
            let (total, failures) = if w >> 40 == epoch {
                ((w >> 20) & COUNT_MASK, w & COUNT_MASK)
            } else {
                (0, 0)
            };
            let total = (total + 1).min(COUNT_MASK);
            let failures = (failures + u64::from(failed)).min(COUNT_MASK);
            let next = (epoch << 40) | (total << 20) | failures;
            match self
                .window
                .compare_exchange_weak(w, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return (total, failures),
                Err(actual) => w = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const MS: u64 = 1_000_000;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 3,
            error_rate: 0.5,
            min_requests: 10,
            window: Duration::from_secs(10),
            cooldown: Duration::from_millis(100),
            half_open_probes: 2,
            success_threshold: 2,
        }
    }

    fn permit(b: &Breaker, now: u64) -> Permit {
        match b.admit(now) {
            Admission::Allowed(p) | Admission::Probe(p) => p,
            Admission::Rejected => panic!("rejected at {now}"),
        }
    }

    #[test]
    fn opens_after_consecutive_failures_and_successes_reset_the_count() {
        let b = Breaker::new(cfg());
        for _ in 0..2 {
            assert_eq!(
                b.record(permit(&b, 0), Outcome::Failure, 0),
                Transition::None
            );
        }
        b.record(permit(&b, 0), Outcome::Success, 0);
        for _ in 0..2 {
            b.record(permit(&b, 0), Outcome::Failure, 0);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(
            b.record(permit(&b, 0), Outcome::Failure, 0),
            Transition::Tripped
        );
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.admit(50 * MS), Admission::Rejected);
        assert!(!b.admissible(50 * MS));
    }

    #[test]
    fn client_errors_do_not_count() {
        let b = Breaker::new(cfg());
        for _ in 0..100 {
            b.record(permit(&b, 0), Outcome::Neutral, 0);
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn opens_on_error_rate_over_window() {
        let mut c = cfg();
        c.consecutive_failures = 1000;
        // One in four failing stays under the 50% rate.
        let b = Breaker::new(c.clone());
        for i in 0..40 {
            let o = if i % 4 == 0 {
                Outcome::Failure
            } else {
                Outcome::Success
            };
            assert_eq!(b.record(permit(&b, 0), o, 0), Transition::None, "at {i}");
        }
        // Alternating never fails 3 in a row, but is 50% once min_requests is reached.
        let b = Breaker::new(c);
        for i in 0..9 {
            let o = if i % 2 == 0 {
                Outcome::Failure
            } else {
                Outcome::Success
            };
            assert_eq!(b.record(permit(&b, 0), o, 0), Transition::None, "at {i}");
        }
        assert_eq!(
            b.record(permit(&b, 0), Outcome::Failure, 0),
            Transition::Tripped
        );
    }

    #[test]
    fn window_tumbles() {
        let mut c = cfg();
        c.consecutive_failures = 1000;
        let b = Breaker::new(c);
        let second = 1_000 * MS;
        for i in 0..9u64 {
            let o = if i % 2 == 0 {
                Outcome::Failure
            } else {
                Outcome::Success
            };
            b.record(permit(&b, 0), o, 0);
        }
        // A new window starts from zero: 1 failure of 1 is under min_requests.
        assert_eq!(
            b.record(permit(&b, 11 * second), Outcome::Failure, 11 * second),
            Transition::None
        );
    }

    #[test]
    fn half_open_admits_bounded_probes_and_closes_after_successes() {
        let b = Breaker::new(cfg());
        for _ in 0..3 {
            b.record(permit(&b, 0), Outcome::Failure, 0);
        }
        let t = 100 * MS;
        assert!(b.admissible(t));
        let p1 = match b.admit(t) {
            Admission::Probe(p) => p,
            other => panic!("{other:?}"),
        };
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let p2 = match b.admit(t) {
            Admission::Probe(p) => p,
            other => panic!("{other:?}"),
        };
        assert_eq!(b.admit(t), Admission::Rejected, "only 2 probes at once");
        assert_eq!(b.record(p1, Outcome::Success, t), Transition::None);
        assert_eq!(b.record(p2, Outcome::Success, t), Transition::Closed);
        assert_eq!(b.state(), BreakerState::Closed);
        // Closed again with a clean slate: needs 3 fresh failures.
        for _ in 0..2 {
            b.record(permit(&b, t), Outcome::Failure, t);
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn probe_failure_reopens_and_restarts_cooldown() {
        let b = Breaker::new(cfg());
        for _ in 0..3 {
            b.record(permit(&b, 0), Outcome::Failure, 0);
        }
        let t = 150 * MS;
        let p = permit(&b, t);
        let late = permit(&b, t);
        assert_eq!(b.record(p, Outcome::Failure, t), Transition::Tripped);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.admit(t + 99 * MS), Admission::Rejected);
        // A probe from the previous half-open episode changes nothing now.
        assert_eq!(
            b.record(late, Outcome::Success, t + 10 * MS),
            Transition::None
        );
        assert_eq!(b.state(), BreakerState::Open);
        assert!(matches!(b.admit(t + 100 * MS), Admission::Probe(_)));
    }

    #[test]
    fn neutral_probe_frees_its_slot() {
        let mut c = cfg();
        c.half_open_probes = 1;
        let b = Breaker::new(c);
        for _ in 0..3 {
            b.record(permit(&b, 0), Outcome::Failure, 0);
        }
        let t = 100 * MS;
        let p = permit(&b, t);
        assert_eq!(b.admit(t), Admission::Rejected);
        b.record(p, Outcome::Neutral, t);
        assert!(matches!(b.admit(t), Admission::Probe(_)));
    }

    #[test]
    fn concurrent_hammering_keeps_the_probe_bound() {
        let b = Arc::new(Breaker::new(cfg()));
        for _ in 0..3 {
            b.record(permit(&b, 0), Outcome::Failure, 0);
        }
        let t = 200 * MS;
        let admitted = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (b, admitted) = (b.clone(), admitted.clone());
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        if let Admission::Probe(_) = b.admit(t) {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        assert_eq!(admitted.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn concurrent_failures_trip_exactly_once() {
        let b = Arc::new(Breaker::new(cfg()));
        let trips = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (b, trips) = (b.clone(), trips.clone());
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        if let Admission::Allowed(p) = b.admit(0)
                            && b.record(p, Outcome::Failure, 0) == Transition::Tripped
                        {
                            trips.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        assert_eq!(trips.load(Ordering::Relaxed), 1);
        assert_eq!(b.state(), BreakerState::Open);
    }
}
