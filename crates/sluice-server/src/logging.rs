//! Access logs with dynamic sampling, and the run-time log level.
//!
//! Every request settles into at most one access-log line (target
//! `sluice::access`): errors and slow requests always, successes at the
//! route's sample ratio. Prompts and completions are never part of it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sluice_core::config::Sampling;

type Setter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Changes the process's log filter at run time (admin `PUT /log-level`).
pub struct LogControl {
    current: Mutex<String>,
    set: Setter,
}

impl LogControl {
    pub fn new(
        current: String,
        set: impl Fn(&str) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        Self {
            current: Mutex::new(current),
            set: Box::new(set),
        }
    }

    /// For tests and embedders that manage logging themselves.
    pub fn fixed() -> Self {
        Self::new("info".into(), |_| Err("log level is fixed".into()))
    }

    pub fn current(&self) -> String {
        self.current
            .lock()
            .expect("log level lock is never poisoned")
            .clone()
    }

    pub fn set(&self, directive: &str) -> Result<(), String> {
        (self.set)(directive)?;
        *self
            .current
            .lock()
            .expect("log level lock is never poisoned") = directive.to_owned();
        tracing::info!(level = directive, "log level changed");
        Ok(())
    }
}

/// Whether a finished request gets its access-log line.
pub fn should_log(s: Sampling, status: u16, elapsed: Duration, draw: u64) -> bool {
    if status >= 400 || elapsed >= s.slow {
        return true;
    }
    if s.ratio >= 1.0 {
        return true;
    }
    // `draw` is uniform over u64: compare against the ratio's share of it.
    (draw as f64) < s.ratio * u64::MAX as f64
}

/// A uniform 64-bit number per call (a scrambled counter).
pub fn draw() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    let mut z = N
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(ratio: f64) -> Sampling {
        Sampling {
            ratio,
            slow: Duration::from_secs(1),
        }
    }

    #[test]
    fn errors_and_slow_requests_are_always_logged() {
        for draw in [0, u64::MAX / 2, u64::MAX] {
            assert!(should_log(s(0.0), 500, Duration::ZERO, draw));
            assert!(should_log(s(0.0), 429, Duration::ZERO, draw));
            assert!(should_log(s(0.0), 200, Duration::from_secs(2), draw));
            assert!(!should_log(s(0.0), 200, Duration::ZERO, draw));
        }
    }

    #[test]
    fn successes_follow_the_ratio() {
        let logged = (0..10_000)
            .filter(|_| should_log(s(0.1), 200, Duration::ZERO, draw()))
            .count();
        assert!((900..1100).contains(&logged), "{logged}");
    }
}
