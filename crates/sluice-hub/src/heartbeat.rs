//! Heartbeats for every session of a process from one task.
//!
//! A timer per session (an `Interval` in each session's task) costs the
//! runtime's timer wheel a cascade per level: every ~4 s the wheel moved
//! all the timers due in the next four seconds at once — 13–41 ms of one
//! replica's core with 19,000 agents, during which nothing else on it ran
//! (instructions waited; measured with `perf sched` in `bench/cluster.py`'s
//! 57,000-agent row). And as each session's ping was due on its own
//! millisecond, the process woke ~1,000 times a second to write one or two.
//!
//! Here sessions sit in [`SLOT`]-wide slots by session number, and one
//! task visits a slot per tick, so each agent is pinged once per
//! `heartbeat_ms` as before: the pings of a slot go out in one wake-up
//! (and their pongs come back together), the wheel holds one timer for
//! the whole hub, and a session's task holds none for heartbeats.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use sluice_core::resilience::now_nanos;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{AgentHandle, Hub, Kick, Outbound};

/// How far apart slots are visited: pings of the agents in one slot are
/// written in one wake-up.
const SLOT: Duration = Duration::from_millis(10);
/// At most this many slots (a long `heartbeat_ms` visits them further
/// apart instead of holding 360,000 slots for an hour's interval).
const MAX_SLOTS: u128 = 1024;

/// The sessions to ping, by slot.
pub(crate) struct Beats {
    slots: Vec<Mutex<Vec<Arc<AgentHandle>>>>,
    started: AtomicBool,
    /// A session went into an empty slot: the task, which sleeps past
    /// empty slots, plans again.
    filled: Arc<Notify>,
    /// Slots visited so far (each a wake-up of the task).
    visits: AtomicU64,
}

impl Beats {
    pub(crate) fn new(heartbeat: Duration) -> Self {
        let n = (heartbeat.as_millis() / SLOT.as_millis()).clamp(1, MAX_SLOTS) as usize;
        Self {
            slots: (0..n).map(|_| Mutex::new(Vec::new())).collect(),
            started: AtomicBool::new(false),
            filled: Arc::new(Notify::new()),
            visits: AtomicU64::new(0),
        }
    }

    fn slot(&self, session: u64) -> &Mutex<Vec<Arc<AgentHandle>>> {
        &self.slots[(session % self.slots.len() as u64) as usize]
    }

    pub(crate) fn add(&self, handle: &Arc<AgentHandle>) {
        let mut slot = self
            .slot(handle.session)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let was_empty = slot.is_empty();
        slot.push(handle.clone());
        drop(slot);
        if was_empty {
            self.filled.notify_one();
        }
    }

    fn is_empty(&self, slot: usize) -> bool {
        self.slots[slot]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    pub(crate) fn remove(&self, handle: &AgentHandle) {
        let mut slot = self
            .slot(handle.session)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(i) = slot.iter().position(|h| h.session == handle.session) {
            slot.swap_remove(i);
        }
    }

    /// Visits one slot: a session silent for longer than it may be is
    /// told to end (`Kick::Silent`); every other gets a ping queued. A
    /// session whose queue is full is not reading: its pending write
    /// evicts it (`write_limit`), a ping more would not help.
    fn visit(&self, slot: usize, allowed_silence: u64) {
        self.visits.fetch_add(1, Ordering::Relaxed);
        let now = now_nanos();
        let slot = self.slots[slot].lock().unwrap_or_else(|p| p.into_inner());
        for h in slot.iter() {
            let silent = now.saturating_sub(h.last_seen.load(Ordering::Relaxed));
            if silent > allowed_silence {
                let _ = h.kick.send(Kick::Silent);
                continue;
            }
            let _ = h.tx.try_send(Outbound::Ping);
        }
    }
}

impl Hub {
    /// Starts the hub's heartbeat task (once; it ends with the hub).
    pub(crate) fn start_heartbeats(self: &Arc<Self>) {
        if self.beats.started.swap(true, Ordering::AcqRel) {
            return;
        }
        tokio::spawn(run(Arc::downgrade(self)));
    }
}

/// Visits slot `t % n` at `start + t × period`, t = 0, 1, 2, …, sleeping
/// past empty slots (a hub with a few agents wakes a few times per
/// interval, not every 10 ms) — until a session goes into an empty slot.
async fn run(hub: Weak<Hub>) {
    let (period, n, allowed_silence, filled) = {
        let Some(h) = hub.upgrade() else { return };
        let n = h.beats.slots.len() as u64;
        let silence = h.cfg.heartbeat.as_nanos() as u64 * u64::from(h.cfg.missed_heartbeats);
        let period = (h.cfg.heartbeat.as_nanos() as u64 / n).max(1);
        (period, n, silence, h.beats.filled.clone())
    };
    let at = |start: Instant, t: u64| start + Duration::from_nanos(period.saturating_mul(t));
    let mut start = Instant::now();
    let mut t = 0u64;
    loop {
        // The next slot with sessions, at most one cycle ahead.
        let next = {
            let Some(h) = hub.upgrade() else { return };
            (t..t + n).find(|k| !h.beats.is_empty((k % n) as usize))
        };
        let k = next.unwrap_or(t + n);
        tokio::select! {
            _ = tokio::time::sleep_until(at(start, k)) => {}
            _ = filled.notified() => {
                // Plan again from the slot due now.
                let due = Instant::now().saturating_duration_since(start).as_nanos() as u64 / period;
                t = due.max(t);
                continue;
            }
        }
        if next.is_some() {
            let Some(h) = hub.upgrade() else { return };
            h.beats.visit((k % n) as usize, allowed_silence);
        }
        t = k + 1;
        // Late (the process stalled): the schedule moves, so the slots
        // missed are visited in turn, not in one burst.
        let now = Instant::now();
        if now > at(start, t) {
            start += now - at(start, t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_ten_ms_apart_and_bounded() {
        assert_eq!(Beats::new(Duration::from_millis(5000)).slots.len(), 500);
        assert_eq!(Beats::new(Duration::from_millis(200)).slots.len(), 20);
        assert_eq!(Beats::new(Duration::from_millis(3)).slots.len(), 1);
        let hour = Beats::new(Duration::from_secs(3600)).slots.len();
        assert_eq!(hour, MAX_SLOTS as usize);
    }

    #[tokio::test]
    async fn a_few_agents_wake_the_task_a_few_times_per_interval() {
        let h = crate::tests::hub_with("[agents]\nheartbeat_ms = 200\n");
        h.start_heartbeats();
        tokio::time::sleep(Duration::from_millis(50)).await;
        // 20 slots of 10 ms, all empty: the task sleeps through them.
        assert_eq!(h.beats.visits.load(Ordering::Relaxed), 0);
        let (a, mut rx, _kick) = h.register(Arc::from("a"), vec![], (vec![], vec![]));
        let t0 = tokio::time::Instant::now();
        let mut pings = 0;
        while t0.elapsed() < Duration::from_millis(650) {
            while let Ok(Outbound::Ping) = rx.try_recv() {
                pings += 1;
                a.last_seen.store(now_nanos(), Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // One slot holds the agent: ~3 visits in 650 ms, not ~65.
        let visits = h.beats.visits.load(Ordering::Relaxed);
        assert!((2..=5).contains(&visits), "{visits} visits");
        assert_eq!(pings, visits, "each visit pinged the agent");
    }
}
