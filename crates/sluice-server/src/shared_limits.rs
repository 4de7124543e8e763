//! Rate limits shared by every replica: the same token buckets as the local
//! limiter, kept in Redis and updated by one Lua script per request, so a
//! check-and-take is atomic however many replicas ask at once. Time is the
//! Redis server's (`TIME`), so replicas' clocks do not matter.
//!
//! A request's buckets (its key's and its model's, requests and tokens) go
//! in one script call: one round trip, all taken or none.

use std::sync::Arc;
use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;
use sluice_core::limits::{Refusal, Snapshot};

/// One script for both directions. KEYS: the buckets; ARGV: pairs of
/// (capacity per minute, amount), then the mode. `take`: takes every
/// bucket's amount or none, and returns {refused bucket (1-based, 0 =
/// admitted), milliseconds to wait, remaining per bucket…}. `adjust`: adds
/// the amounts back (negative = charges), returns {0, 0}.
const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local take = ARGV[#ARGV] == 'take'
local levels = {}
for i, key in ipairs(KEYS) do
  local cap = tonumber(ARGV[2 * i - 1])
  local n = tonumber(ARGV[2 * i])
  local b = redis.call('HMGET', key, 'l', 'u')
  local level = tonumber(b[1]) or cap
  local upd = tonumber(b[2]) or now
  level = math.min(cap, level + math.max(0, now - upd) * cap / 60)
  if take then
    if level < n then
      return {i, math.ceil((n - level) * 60000 / cap)}
    end
    levels[i] = level - n
  else
    levels[i] = math.min(cap, level + n)
  end
end
local out = {0, 0}
for i, key in ipairs(KEYS) do
  redis.call('HSET', key, 'l', tostring(levels[i]), 'u', tostring(now))
  redis.call('PEXPIRE', key, 120000)
  if take then
    out[#out + 1] = math.floor(math.max(0, levels[i]))
  end
end
return out
";

pub struct SharedLimiter {
    conn: ConnectionManager,
    script: Script,
    timeout: Duration,
    /// Monotonic nanoseconds until which Redis is treated as down: after a
    /// failure, requests do not each wait out the timeout against a Redis
    /// that is not answering; one probe goes through per back-off.
    down_until: std::sync::atomic::AtomicU64,
}

/// How long Redis is left alone after it failed to answer.
const DOWN_BACKOFF: Duration = Duration::from_secs(1);

/// One bucket of a request: its Redis key, capacity, and what it takes.
#[derive(Debug, Clone)]
pub struct Bucket {
    pub key: String,
    pub capacity: u64,
    pub amount: f64,
    /// `requests` or `tokens`.
    pub what: &'static str,
    /// Reported in the response's `x-ratelimit-*` headers (the key's own).
    pub report: bool,
}

/// Tokens to settle when the request ends.
pub struct SharedReservation {
    pub limiter: Arc<SharedLimiter>,
    /// (bucket key, capacity, tokens reserved)
    pub tokens: Vec<(String, u64, f64)>,
}

impl SharedLimiter {
    pub fn new(conn: ConnectionManager, timeout: Duration) -> Self {
        Self {
            conn,
            script: Script::new(SCRIPT),
            timeout,
            down_until: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Whether Redis may be asked now: always while it answers; after a
    /// failure, once per back-off (a probe).
    fn available(&self) -> bool {
        use std::sync::atomic::Ordering;
        let now = sluice_core::resilience::now_nanos();
        let until = self.down_until.load(Ordering::Relaxed);
        // Past the back-off: the first caller to move it on probes Redis,
        // the others keep counting locally until that probe answers.
        now >= until
            && self
                .down_until
                .compare_exchange(
                    until,
                    if until == 0 {
                        0
                    } else {
                        now + DOWN_BACKOFF.as_nanos() as u64
                    },
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    fn failed(&self) {
        use std::sync::atomic::Ordering;
        let until = sluice_core::resilience::now_nanos() + DOWN_BACKOFF.as_nanos() as u64;
        self.down_until.store(until, Ordering::Relaxed);
    }

    fn succeeded(&self) {
        use std::sync::atomic::Ordering;
        if self.down_until.load(Ordering::Relaxed) != 0 {
            self.down_until.store(0, Ordering::Relaxed);
            tracing::info!("shared rate limit: redis answers again");
        }
    }

    /// Redis key of a subject's bucket.
    pub fn bucket_key(kind: &str, name: &str, what: &str) -> String {
        format!("sluice:rl:{kind}:{name}:{what}")
    }

    /// Takes every bucket or none. A refusal names the bucket (its index
    /// in `buckets`) that refused; `Err(None)`: Redis could not answer.
    pub async fn admit(
        self: &Arc<Self>,
        buckets: &[Bucket],
    ) -> Result<(Snapshot, SharedReservation), Option<(Refusal, usize)>> {
        if !self.available() {
            return Err(None);
        }
        let mut inv = self.script.prepare_invoke();
        for b in buckets {
            inv.key(&b.key).arg(b.capacity).arg(b.amount);
        }
        inv.arg("take");
        let mut conn = self.conn.clone();
        let reply: Vec<i64> = match tokio::time::timeout(self.timeout, inv.invoke_async(&mut conn))
            .await
        {
            Ok(Ok(r)) => {
                self.succeeded();
                r
            }
            Ok(Err(e)) => {
                self.failed();
                tracing::warn!(error = %e, "shared rate limit: redis error; counting locally for {DOWN_BACKOFF:?}");
                return Err(None);
            }
            Err(_) => {
                self.failed();
                tracing::warn!(
                    "shared rate limit: redis timed out; counting locally for {DOWN_BACKOFF:?}"
                );
                return Err(None);
            }
        };
        let refused = reply.first().copied().unwrap_or(-1);
        if refused > 0 {
            let b = &buckets[(refused - 1) as usize];
            return Err(Some((
                Refusal {
                    retry_after_secs: reply.get(1).copied().unwrap_or(1000) as f64 / 1000.0,
                    what: b.what,
                },
                (refused - 1) as usize,
            )));
        }
        if refused < 0 || reply.len() != 2 + buckets.len() {
            return Err(None);
        }
        let mut snap = Snapshot::default();
        for (b, rem) in buckets.iter().zip(&reply[2..]) {
            if b.report {
                let v = Some((b.capacity, (*rem).max(0) as u64));
                match b.what {
                    "requests" => snap.requests = v,
                    _ => snap.tokens = v,
                }
            }
        }
        let tokens = buckets
            .iter()
            .filter(|b| b.what == "tokens")
            .map(|b| (b.key.clone(), b.capacity, b.amount))
            .collect();
        Ok((
            snap,
            SharedReservation {
                limiter: self.clone(),
                tokens,
            },
        ))
    }
}

/// One budget counter: this process's, or one in Redis.
pub enum Counter {
    Local(Arc<sluice_core::limits::Budget>),
    /// A Redis counter per key and window: `(limiter, counter key, ttl)`.
    Shared(Arc<SharedLimiter>, String, Option<u64>),
}

impl Counter {
    fn add(self, n: u64) {
        if n == 0 {
            return;
        }
        match self {
            Counter::Local(b) => b.charge(n, crate::clock::now_unix()),
            Counter::Shared(limiter, key, ttl) => {
                let Ok(rt) = tokio::runtime::Handle::try_current() else {
                    return;
                };
                rt.spawn(async move {
                    let mut pipe = redis::pipe();
                    pipe.cmd("INCRBY").arg(&key).arg(n).ignore();
                    if let Some(ttl) = ttl {
                        pipe.cmd("EXPIRE").arg(&key).arg(ttl).ignore();
                    }
                    let mut conn = limiter.conn.clone();
                    let r =
                        tokio::time::timeout(limiter.timeout, pipe.query_async::<()>(&mut conn))
                            .await;
                    if !matches!(r, Ok(Ok(()))) {
                        tracing::warn!(key = %key, n, "budget charge not recorded in redis");
                    }
                });
            }
        }
    }
}

/// What a request is charged when it ends: its tokens, and its cost
/// (millionths of a dollar at the model's prices per million tokens).
#[derive(Default)]
pub struct BudgetCharge {
    pub tokens: Option<Counter>,
    pub cost: Option<(Counter, (f64, f64))>,
}

impl BudgetCharge {
    pub fn charge(self, input: u64, output: u64) {
        if let Some(c) = self.tokens {
            c.add(input + output);
        }
        if let Some((c, (pin, pout))) = self.cost {
            // $/Mtok × tokens = millionths of a dollar.
            c.add((input as f64 * pin + output as f64 * pout).round() as u64);
        }
    }
}

impl SharedLimiter {
    /// Tokens used so far in a budget counter; `None` when Redis cannot say.
    pub async fn budget_used(&self, key: &str) -> Option<u64> {
        if !self.available() {
            return None;
        }
        let mut conn = self.conn.clone();
        let get = redis::cmd("GET").arg(key).to_owned();
        match tokio::time::timeout(self.timeout, get.query_async::<Option<u64>>(&mut conn)).await {
            Ok(Ok(v)) => {
                self.succeeded();
                Some(v.unwrap_or(0))
            }
            _ => {
                self.failed();
                None
            }
        }
    }

    /// `unit` is `tokens` or `usd` (counted in millionths).
    pub fn budget_key(
        name: &str,
        unit: &str,
        period: sluice_core::limits::BudgetPeriod,
        unix: u64,
    ) -> String {
        format!(
            "sluice:budget:{name}:{unit}:{}:{}",
            period.name(),
            period.window(unix)
        )
    }
}

impl SharedReservation {
    /// Settles against the tokens really used, in the background.
    pub fn settle(self, used: Option<f64>) {
        if self.tokens.is_empty() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            let mut inv = self.limiter.script.prepare_invoke();
            let mut any = false;
            for (key, cap, reserved) in &self.tokens {
                let give_back = used.map_or(0.0, |u| reserved - u);
                if give_back != 0.0 {
                    inv.key(key).arg(*cap).arg(give_back);
                    any = true;
                }
            }
            if any {
                inv.arg("adjust");
                let mut conn = self.limiter.conn.clone();
                let r =
                    tokio::time::timeout(self.limiter.timeout, inv.invoke_async::<i64>(&mut conn))
                        .await;
                if !matches!(r, Ok(Ok(_))) {
                    tracing::debug!("shared rate limit: settlement not recorded");
                }
            }
        });
    }
}
