//! Per-target health: a circuit breaker and an adaptive weight.
//!
//! Everything here is lock-free and takes the current time as an argument
//! (nanoseconds on a monotonic clock), so the state machines are plain data
//! driven by tests with a hand-turned clock — no sleeps.

mod breaker;
mod target;

pub use breaker::{Admission, Breaker, BreakerConfig, BreakerState, Outcome, Permit, Transition};
pub use target::{TargetState, WeightConfig};

use std::sync::OnceLock;
use std::time::Instant;

/// Nanoseconds since the first call in this process (monotonic).
pub fn now_nanos() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}
