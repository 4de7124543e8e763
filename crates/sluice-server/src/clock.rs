//! The clocks the limiters run on.

use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Monotonic seconds, the clock the rate limiter runs on.
pub fn now_secs() -> f64 {
    sluice_core::resilience::now_nanos() as f64 / 1e9
}

/// [`now_secs`] as of `t`, a clock read the caller made already.
pub fn secs_at(t: tokio::time::Instant) -> f64 {
    sluice_core::resilience::nanos_at(t.into_std()) as f64 / 1e9
}
