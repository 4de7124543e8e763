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

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the first call in this process (monotonic).
pub fn now_nanos() -> u64 {
    nanos_at(Instant::now())
}

/// [`now_nanos`] as of `t`, a clock read the caller made already (a read
/// costs tens of nanoseconds, and a request path has several); 0 for a
/// time before the first call.
pub fn nanos_at(t: Instant) -> u64 {
    let epoch = *EPOCH.get_or_init(|| t);
    t.saturating_duration_since(epoch).as_nanos() as u64
}
