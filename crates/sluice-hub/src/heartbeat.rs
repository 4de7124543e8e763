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

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use sluice_core::resilience::now_nanos;

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
}

impl Beats {
    pub(crate) fn new(heartbeat: Duration) -> Self {
        let n = (heartbeat.as_millis() / SLOT.as_millis()).clamp(1, MAX_SLOTS) as usize;
        Self {
            slots: (0..n).map(|_| Mutex::new(Vec::new())).collect(),
            started: AtomicBool::new(false),
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
        slot.push(handle.clone());
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

async fn run(hub: Weak<Hub>) {
    let (period, n, allowed_silence) = {
        let Some(h) = hub.upgrade() else { return };
        let n = h.beats.slots.len();
        let silence = h.cfg.heartbeat.as_nanos() as u64 * u64::from(h.cfg.missed_heartbeats);
        (h.cfg.heartbeat / n as u32, n, silence)
    };
    let mut tick = tokio::time::interval(period);
    // Late (the process stalled): go on from where it was, do not visit
    // the slots missed in a burst.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut slot = 0;
    loop {
        tick.tick().await;
        let Some(h) = hub.upgrade() else { return };
        h.beats.visit(slot, allowed_silence);
        slot = (slot + 1) % n;
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
}
