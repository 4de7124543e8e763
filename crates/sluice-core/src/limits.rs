//! Request and token rate limits: token buckets refilled continuously, so a
//! key with `rpm = 600` may burst 600 requests and then gets 10 a second.
//!
//! Token limits reserve an estimate up front (prompt size + `max_tokens`)
//! and settle against the real usage when the response ends, so a stream
//! that turns out shorter gives its unused tokens back. Time is passed in
//! (seconds as f64 on a monotonic clock) so tests turn the clock.

// Looked up on every request by key and model name: foldhash, not std's
// SipHash (~150 instructions a lookup). The maps hold configured names
// only, so a chosen name cannot grow them.
use foldhash::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// One bucket: `capacity` units, refilled at `capacity / 60` per second.
#[derive(Debug)]
pub struct Bucket {
    capacity: f64,
    level: f64,
    updated: f64,
}

impl Bucket {
    pub fn per_minute(capacity: u64, now: f64) -> Self {
        Self {
            capacity: capacity as f64,
            level: capacity as f64,
            updated: now,
        }
    }

    fn refill(&mut self, now: f64) {
        let elapsed = (now - self.updated).max(0.0);
        self.level = (self.level + elapsed * self.capacity / 60.0).min(self.capacity);
        self.updated = now;
    }

    /// Takes `n` units if there are that many; otherwise the seconds until
    /// there will be.
    pub fn take(&mut self, n: f64, now: f64) -> Result<(), f64> {
        self.refill(now);
        if self.level >= n {
            self.level -= n;
            Ok(())
        } else {
            Err((n - self.level) * 60.0 / self.capacity)
        }
    }

    /// Returns (or, when negative, charges) units after the fact; the level
    /// may go below zero, which later requests then wait out.
    pub fn adjust(&mut self, n: f64, now: f64) {
        self.refill(now);
        self.level = (self.level + n).min(self.capacity);
    }

    pub fn limit(&self) -> u64 {
        self.capacity as u64
    }

    pub fn remaining(&self) -> u64 {
        self.level.max(0.0) as u64
    }
}

/// The requests and tokens buckets of one subject (a key or a model).
#[derive(Debug)]
pub struct Limits {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub requests: Option<Mutex<Bucket>>,
    pub tokens: Option<Mutex<Bucket>>,
}

fn lock(b: &Mutex<Bucket>) -> std::sync::MutexGuard<'_, Bucket> {
    b.lock().expect("a bucket lock is never poisoned")
}

/// What an admitted request holds: the tokens it reserved, to settle later.
#[derive(Debug, Clone)]
pub struct Reservation {
    pub limits: Arc<Limits>,
    pub tokens: f64,
}

/// Why a request was refused, and when to come back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Refusal {
    pub retry_after_secs: f64,
    pub what: &'static str,
}

/// Headers-worth of state after an admission.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub requests: Option<(u64, u64)>,
    pub tokens: Option<(u64, u64)>,
}

impl Limits {
    pub fn new(rpm: Option<u64>, tpm: Option<u64>, now: f64) -> Self {
        Self {
            rpm,
            tpm,
            requests: rpm.map(|n| Mutex::new(Bucket::per_minute(n, now))),
            tokens: tpm.map(|n| Mutex::new(Bucket::per_minute(n, now))),
        }
    }

    /// Takes one request and `tokens` reserved tokens, or neither.
    pub fn admit(
        self: &Arc<Self>,
        tokens: f64,
        now: f64,
    ) -> Result<(Reservation, Snapshot), Refusal> {
        let mut snap = Snapshot::default();
        if let Some(r) = &self.requests {
            lock(r).take(1.0, now).map_err(|s| Refusal {
                retry_after_secs: s,
                what: "requests",
            })?;
        }
        if let Some(t) = &self.tokens {
            let mut t = lock(t);
            if let Err(s) = t.take(tokens, now) {
                drop(t);
                if let Some(r) = &self.requests {
                    lock(r).adjust(1.0, now); // give the request back
                }
                return Err(Refusal {
                    retry_after_secs: s,
                    what: "tokens",
                });
            }
            snap.tokens = Some((t.limit(), t.remaining()));
        }
        if let Some(r) = &self.requests {
            let r = lock(r);
            snap.requests = Some((r.limit(), r.remaining()));
        }
        Ok((
            Reservation {
                limits: self.clone(),
                tokens,
            },
            snap,
        ))
    }
}

impl Reservation {
    /// Settles the reservation against the tokens really used.
    pub fn settle(&self, used: f64, now: f64) {
        if let Some(t) = &self.limits.tokens {
            lock(t).adjust(self.tokens - used, now);
        }
    }
}

/// The limits of every key and model, kept across configuration reloads.
#[derive(Debug, Default)]
pub struct Limiter {
    /// By key name. Looked up with the name itself: no string is built per request.
    pub keys: HashMap<Arc<str>, Arc<Limits>>,
    /// By model name, all keys together.
    pub models: HashMap<Arc<str>, Arc<Limits>>,
    /// Open streams allowed per key name.
    pub streams: HashMap<Arc<str>, Arc<StreamGate>>,
    /// Token budgets per key name.
    pub budgets: HashMap<Arc<str>, Arc<Budget>>,
    /// Cost budgets per key name, in millionths of a US dollar.
    pub cost_budgets: HashMap<Arc<str>, Arc<Budget>>,
}

/// The period a token budget covers, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetPeriod {
    Day,
    Month,
    Total,
}

impl BudgetPeriod {
    /// The window `unix` falls in: days since 1970, months since 1970, or 0.
    pub fn window(self, unix: u64) -> u64 {
        match self {
            BudgetPeriod::Day => unix / 86_400,
            BudgetPeriod::Month => {
                let (y, m, _) = crate::config::time::civil_from_days(unix / 86_400);
                (y - 1970) * 12 + (m - 1)
            }
            BudgetPeriod::Total => 0,
        }
    }

    /// Seconds a window's counter must outlive it (Redis expiry).
    pub fn ttl_secs(self) -> Option<u64> {
        match self {
            BudgetPeriod::Day => Some(2 * 86_400),
            BudgetPeriod::Month => Some(32 * 86_400),
            BudgetPeriod::Total => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            BudgetPeriod::Day => "day",
            BudgetPeriod::Month => "month",
            BudgetPeriod::Total => "total",
        }
    }
}

/// A key's token budget in this process: used tokens per window.
#[derive(Debug)]
pub struct Budget {
    pub limit: u64,
    pub period: BudgetPeriod,
    used: Mutex<(u64, u64)>,
}

impl Budget {
    pub fn new(limit: u64, period: BudgetPeriod) -> Self {
        Self {
            limit,
            period,
            used: Mutex::new((0, 0)),
        }
    }

    /// Tokens used in the window `unix` falls in.
    pub fn used(&self, unix: u64) -> u64 {
        let w = self.period.window(unix);
        let g = self.used.lock().unwrap_or_else(|p| p.into_inner());
        if g.0 == w { g.1 } else { 0 }
    }

    pub fn charge(&self, tokens: u64, unix: u64) {
        let w = self.period.window(unix);
        let mut g = self.used.lock().unwrap_or_else(|p| p.into_inner());
        if g.0 != w {
            *g = (w, 0);
        }
        g.1 = g.1.saturating_add(tokens);
    }
}

/// At most `max` streamed responses open at once.
#[derive(Debug)]
pub struct StreamGate {
    max: u32,
    open: AtomicU32,
}

/// One open stream; closing it (drop) makes room for the next.
#[derive(Debug)]
pub struct StreamPermit(Arc<StreamGate>);

impl StreamGate {
    pub fn new(max: u32) -> Self {
        Self {
            max,
            open: AtomicU32::new(0),
        }
    }

    pub fn max(&self) -> u32 {
        self.max
    }

    pub fn try_open(self: &Arc<Self>) -> Option<StreamPermit> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| StreamPermit(self.clone()))
    }

    pub fn open(&self) -> u32 {
        self.open.load(Ordering::Acquire)
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Tokens to reserve for a request: its prompt estimated at four bytes a
/// token, plus the completion it may ask for.
pub fn estimate_tokens(body_len: usize, max_tokens: Option<u64>, default_completion: u64) -> f64 {
    (body_len / 4) as f64 + max_tokens.unwrap_or(default_completion) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_refills_at_the_rate() {
        let mut b = Bucket::per_minute(60, 0.0);
        for _ in 0..60 {
            assert!(b.take(1.0, 0.0).is_ok());
        }
        let wait = b.take(1.0, 0.0).unwrap_err();
        assert!((wait - 1.0).abs() < 1e-9, "{wait}");
        assert!(b.take(1.0, 1.0).is_ok());
        assert!(b.take(1.0, 1.0).is_err());
        // Never above capacity, however long it waits.
        b.refill(10_000.0);
        assert_eq!(b.remaining(), 60);
    }

    #[test]
    fn token_refusal_gives_the_request_back() {
        let l = Arc::new(Limits::new(Some(10), Some(100), 0.0));
        let refused = l.admit(500.0, 0.0).unwrap_err();
        assert_eq!(refused.what, "tokens");
        assert!((refused.retry_after_secs - 240.0).abs() < 1e-6);
        let (_, snap) = l.admit(50.0, 0.0).unwrap();
        assert_eq!(
            snap.requests,
            Some((10, 9)),
            "the refused request was not counted"
        );
        assert_eq!(snap.tokens, Some((100, 50)));
    }

    #[test]
    fn settle_returns_unused_and_charges_overruns() {
        let l = Arc::new(Limits::new(None, Some(100), 0.0));
        let (r, _) = l.admit(80.0, 0.0).unwrap();
        r.settle(30.0, 0.0);
        let (r2, snap) = l.admit(10.0, 0.0).unwrap();
        assert_eq!(snap.tokens, Some((100, 60)));
        r2.settle(200.0, 0.0); // used far more than reserved
        assert!(l.admit(1.0, 0.0).is_err());
    }

    #[test]
    fn stream_gate_bounds_open_streams_across_threads() {
        let gate = Arc::new(StreamGate::new(3));
        let held: Vec<_> = (0..3).map(|_| gate.try_open().unwrap()).collect();
        assert!(gate.try_open().is_none());
        drop(held);
        assert_eq!(gate.open(), 0);
        let peak = Arc::new(AtomicU32::new(0));
        std::thread::scope(|s| {
            for _ in 0..4 {
                let (gate, peak) = (gate.clone(), peak.clone());
                s.spawn(move || {
                    for _ in 0..10_000 {
                        if let Some(p) = gate.try_open() {
                            peak.fetch_max(gate.open(), Ordering::AcqRel);
                            drop(p);
                        }
                    }
                });
            }
        });
        assert!(peak.load(Ordering::Acquire) <= 3);
        assert_eq!(gate.open(), 0);
    }

    #[test]
    fn budget_windows_reset_by_period() {
        let jan31 = 1_769_817_600; // 2026-01-31T00:00:00Z
        let feb1 = jan31 + 86_400;
        assert_eq!(
            BudgetPeriod::Month.window(jan31) + 1,
            BudgetPeriod::Month.window(feb1)
        );
        assert_eq!(
            BudgetPeriod::Month.window(jan31),
            BudgetPeriod::Month.window(jan31 - 20 * 86_400)
        );
        assert_eq!(BudgetPeriod::Month.window(0), 0);
        assert_eq!(BudgetPeriod::Month.window(951_782_400), 30 * 12 + 1); // 2000-02-29
        let b = Budget::new(100, BudgetPeriod::Day);
        b.charge(60, jan31);
        b.charge(50, jan31 + 100);
        assert_eq!(b.used(jan31 + 200), 110);
        assert_eq!(b.used(feb1), 0, "a new day starts empty");
        b.charge(5, feb1);
        assert_eq!(b.used(feb1), 5);
        let t = Budget::new(10, BudgetPeriod::Total);
        t.charge(7, 0);
        assert_eq!(t.used(4_000_000_000), 7);
    }

    #[test]
    fn estimate() {
        assert_eq!(estimate_tokens(400, Some(50), 1024), 150.0);
        assert_eq!(estimate_tokens(400, None, 1024), 1124.0);
    }
}
